//! Cluster identities and the rustls configurations of mutual TLS.
//!
//! Every node holds a [`NodeIdentity`]: a certificate chain signed by the cluster CA and its
//! private key. Both ends of every QUIC connection present their chain and verify the
//! other's against the [`ClusterCa`] — there are no anonymous clients.
//!
//! **Peer ids.** A node's [`PeerId`] is the BLAKE3 hash of the DER `SubjectPublicKeyInfo`
//! of its end-entity certificate ([`peer_id_of_cert`]). It depends on the key only, so a
//! certificate renewed for the same key keeps the id (swarm state, blacklists and tracker
//! entries survive renewals), and a new key is a new peer.
//!
//! **Server names are not checked.** Nodes dial each other by the IP address gossip or the
//! tracker handed out, not by a DNS name, and certificates would otherwise need every
//! address a node might ever have. The client therefore verifies the server's chain against
//! the cluster CA (signature, validity, `serverAuth` usage) and ignores the name; who the
//! server is comes from its [`PeerId`], which the caller compares with the id it expected
//! (see [`ConnectionPool`](super::ConnectionPool)). Being signed by the cluster CA is what
//! makes a node a member.
//!
//! **Crypto provider.** Every builder here is given `rustls::crypto::ring::default_provider()`
//! explicitly; nothing relies on a process-wide default, so a second provider compiled into
//! the binary (aws-lc-rs via another crate) cannot make these calls panic.
//!
//! **Member records.** Gossip is not TLS; ring nodes sign their gossiped member record with
//! the same identity and verify each other's against the same CA ([`MemberCertAuth`]).
//!
//! Files are PEM: certificates as `CERTIFICATE` blocks (end entity first), keys as PKCS#8,
//! SEC1 or PKCS#1 blocks.

pub mod dev;
mod records;
mod verify;

pub use records::MemberCertAuth;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

use crate::wire::{ALPN, PeerId};

/// Why an identity, a CA or a TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is missing from it.
        what: &'static str,
    },
    /// A PEM file's blocks do not parse.
    #[error("{path}: {what}: {source}")]
    PemSyntax {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// The parser's complaint.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate does not parse or is unusable.
    #[error("invalid certificate: {0}")]
    BadCertificate(#[source] rustls::Error),
    /// A certificate file holds a certificate that does not parse.
    #[error("{path}: invalid certificate: {source}")]
    BadCertificateFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// A CA certificate cannot serve as a trust anchor.
    #[error("unusable CA certificate: {0}")]
    BadCaCertificate(#[source] rustls::Error),
    /// No certificate where one is needed.
    #[error("{0} has no certificate")]
    NoCertificate(
        /// What: the certificate chain, or the cluster CA.
        &'static str,
    ),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate: {0}")]
    KeyMismatch(#[source] rustls::Error),
    /// Creating a certificate or key failed, or a key does not parse (dev CA).
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A key file does not hold a usable private key (dev CA).
    #[error("{path}: no usable private key: {source}")]
    BadKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rcgen::Error,
    },
    /// A key file does not belong to the certificate beside it (dev CA).
    #[error("{key} does not belong to {cert}")]
    KeyNotForCert {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A CA certificate whose issued certificates do not verify: not made by `DevCa`.
    #[error("{cert} was not made by DevCa: certificates issued with it do not verify ({source})")]
    NotDevCa {
        /// The CA certificate file.
        cert: PathBuf,
        /// The verifier's complaint.
        source: rustls::Error,
    },
    /// A generated key is not in PKCS#8 form (dev CA).
    #[error("certificate generation failed: expected a PKCS#8 key")]
    NotPkcs8,
    /// A node name that is not a DNS name or IP address (dev CA).
    #[error("node name {0:?} must be a DNS name or IP address (letters, digits, '-', '.')")]
    BadNodeName(String),
    /// `DevCa::create` found a CA already there.
    #[error("a CA already exists in {0}; load it instead of overwriting it")]
    CaExists(PathBuf),
    /// rustls rejected the configuration.
    #[error("tls configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The verifier of client certificates could not be built.
    #[error("tls configuration: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The connection carries no peer certificate (not a mutually authenticated
    /// connection of this crate).
    #[error("the connection has no peer certificate")]
    NoPeerCertificate,
}

/// The ring provider, passed to every builder (never the process default).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The [`PeerId`] of a certificate: BLAKE3 of its DER `SubjectPublicKeyInfo`.
///
/// The same key gives the same id whatever the certificate's names, validity or issuer.
pub fn peer_id_of_cert(cert: &CertificateDer<'_>) -> Result<PeerId, TlsError> {
    let parsed = ParsedCertificate::try_from(cert).map_err(TlsError::BadCertificate)?;
    let spki = parsed.subject_public_key_info();
    Ok(PeerId(*blake3::hash(spki.as_ref()).as_bytes()))
}

/// The [`PeerId`] the remote end of an established connection proved by its certificate.
pub fn peer_id_of_connection(conn: &quinn::Connection) -> Result<PeerId, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    let end_entity = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    peer_id_of_cert(end_entity)
}

/// A node's certificate chain, its private key and the [`PeerId`] they make.
pub struct NodeIdentity {
    /// End-entity certificate first, then any intermediates (not the root).
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The end-entity certificate's private key.
    pub key: PrivateKeyDer<'static>,
    /// BLAKE3 of the end-entity certificate's public key.
    pub peer_id: PeerId,
}

impl NodeIdentity {
    /// An identity from a chain (end entity first) and its key. Checks that the chain is
    /// non-empty, that its first certificate parses, and that the key matches it.
    pub fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let end_entity = cert_chain
            .first()
            .ok_or(TlsError::NoCertificate("the certificate chain"))?;
        let peer_id = peer_id_of_cert(end_entity)?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(TlsError::KeyMismatch)?;
        rustls::sign::CertifiedKey::new(cert_chain.clone(), signing_key)
            .keys_match()
            .map_err(TlsError::KeyMismatch)?;
        Ok(NodeIdentity {
            cert_chain,
            key,
            peer_id,
        })
    }

    /// Loads an identity from a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let chain = read_certs(cert_path)?;
        let key_pem = read_file(key_path)?;
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::PemSyntax {
                path: key_path.to_path_buf(),
                what: "no usable private key",
                source,
            })?;
        NodeIdentity::new(chain, key)
    }

    /// The rustls server configuration of this node: presents this identity, requires a
    /// client certificate signed by `ca`, TLS 1.3 only, ALPN `kraken/1`.
    pub fn server_config(&self, ca: &ClusterCa) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(ca.root_store()?),
            provider.clone(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The rustls client configuration of this node: presents this identity, verifies the
    /// server's chain against `ca` without checking its name (see the module docs), TLS 1.3
    /// only, ALPN `kraken/1`.
    pub fn client_config(&self, ca: &ClusterCa) -> Result<rustls::ClientConfig, TlsError> {
        let provider = provider();
        let verifier = verify::ClusterServerVerifier::new(ca.root_store()?, provider.clone());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.cert_chain.clone(), self.key.clone_key())
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        NodeIdentity {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            peer_id: self.peer_id,
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("NodeIdentity")
            .field("peer_id", &self.peer_id)
            .field("chain_len", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

/// The cluster's trust anchors: the CA certificate(s) that sign every node.
///
/// More than one certificate is allowed so that a CA can be rotated: trust old and new
/// while nodes are re-issued, then drop the old one.
#[derive(Debug, Clone)]
pub struct ClusterCa {
    roots: Vec<CertificateDer<'static>>,
}

impl ClusterCa {
    /// Trust anchors from DER certificates; each must be usable as a trust anchor.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if roots.is_empty() {
            return Err(TlsError::NoCertificate("a cluster CA"));
        }
        let ca = ClusterCa { roots };
        ca.root_store()?;
        Ok(ca)
    }

    /// Trust anchors from a PEM file of one or more certificates.
    pub fn from_pem_file(path: &Path) -> Result<Self, TlsError> {
        ClusterCa::new(read_certs(path)?)
    }

    /// The CA certificates.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    fn root_store(&self) -> Result<RootCertStore, TlsError> {
        let mut store = RootCertStore::empty();
        for cert in &self.roots {
            store
                .add(cert.clone())
                .map_err(TlsError::BadCaCertificate)?;
        }
        Ok(store)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::PemSyntax {
            path: path.to_path_buf(),
            what: "invalid certificate PEM",
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE block",
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::dev::DevCa;
    use super::*;

    #[test]
    fn identities_round_trip_through_pem_files_and_ids_survive_renewal() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let node = ca.write_node_cert("node-a").unwrap();
        let loaded = DevCa::load_node_cert(dir.path(), "node-a").unwrap();
        assert_eq!(loaded.peer_id, node.peer_id);
        assert_eq!(loaded.cert_chain, node.cert_chain);

        let renewed = ca.renew_node_cert("node-a-renamed", &node).unwrap();
        assert_ne!(renewed.cert_chain, node.cert_chain);
        assert_eq!(renewed.peer_id, node.peer_id);

        let other = ca.issue_node_cert("node-b").unwrap();
        assert_ne!(other.peer_id, node.peer_id);
    }

    #[test]
    fn a_key_from_another_identity_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let a = ca.issue_node_cert("a").unwrap();
        let b = ca.issue_node_cert("b").unwrap();
        assert!(matches!(
            NodeIdentity::new(a.cert_chain.clone(), b.key.clone_key()),
            Err(TlsError::KeyMismatch(_))
        ));
    }

    #[test]
    fn configs_build_with_the_ring_provider() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        let node = ca.issue_node_cert("node").unwrap();
        let server = node.server_config(&ca.cluster_ca()).unwrap();
        let client = node.client_config(&ca.cluster_ca()).unwrap();
        assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
        assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(peer_id_of_cert(&CertificateDer::from(vec![1, 2, 3])).is_err());
        assert!(ClusterCa::new(vec![]).is_err());
        assert!(ClusterCa::new(vec![CertificateDer::from(vec![0x30, 0])]).is_err());
    }
}
