//! Signed member records: what a ring node signs, and the [`MemberAuth`] trait that signs and
//! verifies them.
//!
//! Gossip itself is unauthenticated UDP; what makes a gossiped member trustworthy is its
//! record, signed with the key of the node's cluster certificate and published with that
//! certificate. The signed bytes ([`signed_record`]) are a domain-separated canonical
//! encoding of everything the node publishes: cluster id, node id, generation, roles, QUIC,
//! HTTP and gossip addresses, version, readiness and weight. A record copied to another
//! generation, another address, another cluster or another node id no longer verifies.
//!
//! This crate knows no X.509: [`MemberAuth`] is implemented by the transport crate
//! (`kraken_transport::quic::tls::MemberCertAuth`) from the node's identity and the cluster CA.

use std::fmt;
use std::net::SocketAddr;

use serde::Serialize;

use crate::member::{Member, NodeId};
use crate::view::ClusterId;

/// Domain separation: these bytes start every signed record, so a record signature can be
/// mistaken for no other signature made with a node's key (TLS handshakes included).
pub const RECORD_DOMAIN: &[u8] = b"kraken-member-v1\0";

/// Signs this node's record and verifies others'. Implemented over the node's TLS identity
/// and the cluster CA by `kraken_transport::quic::tls::MemberCertAuth`.
pub trait MemberAuth: Send + Sync + 'static {
    /// This node's certificate chain, DER, end entity first (published beside the record).
    fn certificate_chain(&self) -> Vec<Vec<u8>>;

    /// Signs `message` with this node's private key. The signature is opaque to this crate
    /// (it may carry its algorithm).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError>;

    /// Checks that `chain` (end entity first) chains to the cluster CA now, that
    /// `signature` over `message` verifies with the end entity's key, and that the
    /// certificate names `node_id`.
    fn verify(
        &self,
        chain: &[Vec<u8>],
        message: &[u8],
        signature: &[u8],
        node_id: &NodeId,
    ) -> Result<(), RecordError>;
}

/// Signing this node's record failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot sign the member record: {0}")]
pub struct SignError(pub String);

/// Why a member record is not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No certificate or no signature published.
    #[error("unsigned member record (no certificate or signature)")]
    Unsigned,
    /// The record's keys, certificate or signature do not decode.
    #[error("malformed member record: {0}")]
    Malformed(String),
    /// The certificate does not parse, does not chain to the cluster CA, or is not valid
    /// now.
    #[error("certificate not trusted: {0}")]
    UntrustedCertificate(String),
    /// The signature does not verify with the certificate's key (forged, or a record
    /// altered or copied to another generation, address or cluster).
    #[error("signature does not verify: {0}")]
    BadSignature(String),
    /// The certificate does not name the node id the record claims.
    #[error("certificate names {names:?}, not the claimed node id {claimed}")]
    NameMismatch {
        /// The node id claimed.
        claimed: NodeId,
        /// The certificate's DNS (and IP) names.
        names: Vec<String>,
    },
    /// A verified record with a lower generation than one already admitted for the same
    /// node id (a replay of an old record).
    #[error("generation {generation} is older than the admitted generation {admitted}")]
    StaleGeneration {
        /// The record's generation.
        generation: u64,
        /// The highest generation admitted for the node id.
        admitted: u64,
    },
}

impl RecordError {
    /// The reason, for counters and rate-limited logs.
    pub fn reason(&self) -> RejectReason {
        match self {
            RecordError::Unsigned => RejectReason::Unsigned,
            RecordError::Malformed(_) => RejectReason::Malformed,
            RecordError::UntrustedCertificate(_) => RejectReason::UntrustedCertificate,
            RecordError::BadSignature(_) => RejectReason::BadSignature,
            RecordError::NameMismatch { .. } => RejectReason::NameMismatch,
            RecordError::StaleGeneration { .. } => RejectReason::StaleGeneration,
        }
    }
}

/// The kinds of [`RecordError`], as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// [`RecordError::Unsigned`].
    Unsigned,
    /// [`RecordError::Malformed`].
    Malformed,
    /// [`RecordError::UntrustedCertificate`].
    UntrustedCertificate,
    /// [`RecordError::BadSignature`].
    BadSignature,
    /// [`RecordError::NameMismatch`].
    NameMismatch,
    /// [`RecordError::StaleGeneration`].
    StaleGeneration,
}

impl RejectReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RejectReason; 6] = [
        RejectReason::Unsigned,
        RejectReason::Malformed,
        RejectReason::UntrustedCertificate,
        RejectReason::BadSignature,
        RejectReason::NameMismatch,
        RejectReason::StaleGeneration,
    ];

    /// The metric label: `unsigned`, `malformed`, `untrusted-certificate`,
    /// `bad-signature`, `name-mismatch`, `stale-generation`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Unsigned => "unsigned",
            RejectReason::Malformed => "malformed",
            RejectReason::UntrustedCertificate => "untrusted-certificate",
            RejectReason::BadSignature => "bad-signature",
            RejectReason::NameMismatch => "name-mismatch",
            RejectReason::StaleGeneration => "stale-generation",
        }
    }

    #[cfg_attr(not(feature = "gossip"), allow(dead_code))]
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The canonical record, version 1 (postcard after [`RECORD_DOMAIN`]).
#[derive(Serialize)]
struct RecordV1<'a> {
    cluster_id: &'a str,
    node_id: &'a str,
    generation: u64,
    roles: u8,
    quic_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    gossip_addr: SocketAddr,
    version: &'a str,
    ready: bool,
    weight: u32,
}

/// The bytes a node signs for `member` in `cluster`, gossiping at `gossip_addr`.
pub fn signed_record(cluster: &ClusterId, gossip_addr: SocketAddr, member: &Member) -> Vec<u8> {
    let record = RecordV1 {
        cluster_id: cluster.as_str(),
        node_id: member.id.as_str(),
        generation: member.generation,
        roles: member.roles.into(),
        quic_addr: member.quic_addr,
        http_addr: member.http_addr,
        gossip_addr,
        version: &member.version,
        ready: member.ready,
        weight: member.weight,
    };
    let mut out = RECORD_DOMAIN.to_vec();
    // Serializing plain data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(&record).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{Role, RoleSet};

    #[test]
    fn every_published_field_changes_the_signed_bytes() {
        let cluster = ClusterId::new("c").unwrap();
        let gossip: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let mut m = Member::new(
            NodeId::new("origin-1").unwrap(),
            RoleSet::of(&[Role::Origin]),
            "10.0.0.1:4000".parse().unwrap(),
        );
        m.generation = 5;
        let base = signed_record(&cluster, gossip, &m);
        assert!(base.starts_with(RECORD_DOMAIN));
        assert_eq!(base, signed_record(&cluster, gossip, &m), "deterministic");
        type Change = Box<dyn Fn(&mut Member)>;
        let changes: Vec<(&str, Change)> = vec![
            ("id", Box::new(|m| m.id = NodeId::new("origin-2").unwrap())),
            ("generation", Box::new(|m| m.generation += 1)),
            ("roles", Box::new(|m| m.roles.insert(Role::Tracker))),
            ("quic", Box::new(|m| m.quic_addr.set_port(4001))),
            (
                "http",
                Box::new(|m| m.http_addr = Some("10.0.0.1:80".parse().unwrap())),
            ),
            ("version", Box::new(|m| m.version = "9.9.9".into())),
            ("ready", Box::new(|m| m.ready = !m.ready)),
            ("weight", Box::new(|m| m.weight = 2)),
        ];
        for (what, change) in changes {
            let mut other = m.clone();
            change(&mut other);
            assert_ne!(signed_record(&cluster, gossip, &other), base, "{what}");
        }
        let other_cluster = ClusterId::new("d").unwrap();
        assert_ne!(signed_record(&other_cluster, gossip, &m), base);
        assert_ne!(
            signed_record(&cluster, "10.0.0.1:7947".parse().unwrap(), &m),
            base
        );
    }

    #[test]
    fn reasons_have_distinct_labels() {
        let labels: std::collections::BTreeSet<_> =
            RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RejectReason::ALL.len());
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
