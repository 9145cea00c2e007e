//! What the gossip tests share: one cluster CA per test binary, and member auth from it.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use kraken_transport::quic::tls::MemberCertAuth;
use kraken_transport::quic::tls::dev::DevCa;

/// The cluster CA every node of these tests is issued a certificate by.
pub fn ca() -> &'static DevCa {
    static CA: OnceLock<(tempfile::TempDir, DevCa)> = OnceLock::new();
    &CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        (dir, ca)
    })
    .1
}

/// Member auth with a fresh certificate of [`ca`] for `name`.
pub fn auth_for(name: &str) -> Arc<MemberCertAuth> {
    let identity = ca().issue_node_cert(name).unwrap();
    Arc::new(MemberCertAuth::new(&identity, &ca().cluster_ca()).unwrap())
}
