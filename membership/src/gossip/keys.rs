//! How a [`Member`] is published as chitchat key-values, and read back.
//!
//! The node id and generation are chitchat's own `ChitchatId { node_id, generation_id }`;
//! the rest are string keys under the `kraken.` prefix:
//!
//! | key | value |
//! |---|---|
//! | `kraken.roles` | `origin,tracker` |
//! | `kraken.quic` | `10.0.0.1:4000` |
//! | `kraken.http` | `10.0.0.1:8080`, or empty |
//! | `kraken.version` | `0.1.0` |
//! | `kraken.ready` | `true` / `false` |
//! | `kraken.weight` | `1` |
//! | `kraken.cert` | the certificate chain: base64 DER, end entity first, comma-separated |
//! | `kraken.sig` | base64 signature over the record (see `auth::signed_record`) |
//!
//! The certificate and signature are published first, so a state still propagating lacks
//! record keys (incomplete: ignored) rather than its signature. A node whose keys are
//! missing or invalid is left out of the view, never half-read.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chitchat::{ChitchatId, NodeState};

use crate::member::{Member, NodeId, RoleSet};

pub(crate) const ROLES: &str = "kraken.roles";
pub(crate) const QUIC: &str = "kraken.quic";
pub(crate) const HTTP: &str = "kraken.http";
pub(crate) const VERSION: &str = "kraken.version";
pub(crate) const READY: &str = "kraken.ready";
pub(crate) const WEIGHT: &str = "kraken.weight";
/// The keys of the record itself (not its certificate and signature).
pub(crate) const RECORD_KEYS: [&str; 6] = [ROLES, QUIC, HTTP, VERSION, READY, WEIGHT];
pub(crate) const CERT: &str = "kraken.cert";
pub(crate) const SIG: &str = "kraken.sig";

/// Most certificates accepted in a published chain.
const MAX_CHAIN_LEN: usize = 4;
/// Longest accepted `kraken.cert` value, in bytes.
const MAX_CERT_VALUE_LEN: usize = 32 * 1024;
/// Longest accepted `kraken.sig` value, in bytes.
const MAX_SIG_VALUE_LEN: usize = 2048;

/// The `kraken.cert` value of `chain`.
pub(crate) fn encode_chain(chain: &[Vec<u8>]) -> String {
    chain
        .iter()
        .map(|c| BASE64.encode(c))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `kraken.sig` value of `signature`.
pub(crate) fn encode_signature(signature: &[u8]) -> String {
    BASE64.encode(signature)
}

/// The key-values that publish `m` (everything but id and generation), with its
/// certificate chain and signature first.
pub(crate) fn to_key_values(
    m: &Member,
    chain: &[Vec<u8>],
    signature: &[u8],
) -> Vec<(String, String)> {
    vec![
        (CERT.into(), encode_chain(chain)),
        (SIG.into(), encode_signature(signature)),
        (ROLES.into(), m.roles.to_string()),
        (QUIC.into(), m.quic_addr.to_string()),
        (
            HTTP.into(),
            m.http_addr.map(|a| a.to_string()).unwrap_or_default(),
        ),
        (VERSION.into(), m.version.clone()),
        (READY.into(), m.ready.to_string()),
        (WEIGHT.into(), m.weight.to_string()),
    ]
}

/// Why a gossiped node state is not a member (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// A key is absent (the node state may still be propagating).
    Missing(&'static str),
    /// A key or the node id has an invalid value.
    Invalid(&'static str, String),
}

/// Reads the certificate chain and signature of a gossiped node state.
pub(crate) fn signature_of(state: &NodeState) -> Result<(Vec<Vec<u8>>, Vec<u8>), ParseError> {
    let cert = state.get(CERT).ok_or(ParseError::Missing(CERT))?;
    let sig = state.get(SIG).ok_or(ParseError::Missing(SIG))?;
    let invalid = |key: &'static str, what: &str| ParseError::Invalid(key, what.to_owned());
    if cert.len() > MAX_CERT_VALUE_LEN {
        return Err(invalid(CERT, "too long"));
    }
    if sig.len() > MAX_SIG_VALUE_LEN {
        return Err(invalid(SIG, "too long"));
    }
    let chain = cert
        .split(',')
        .take(MAX_CHAIN_LEN + 1)
        .map(|c| BASE64.decode(c).map_err(|_| invalid(CERT, "not base64")))
        .collect::<Result<Vec<_>, _>>()?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(invalid(CERT, "too many certificates"));
    }
    if chain.iter().any(Vec::is_empty) {
        return Err(invalid(CERT, "empty certificate"));
    }
    let sig = BASE64.decode(sig).map_err(|_| invalid(SIG, "not base64"))?;
    Ok((chain, sig))
}

/// Reads a member from a gossiped node state.
pub(crate) fn from_node_state(id: &ChitchatId, state: &NodeState) -> Result<Member, ParseError> {
    let get = |key: &'static str| state.get(key).ok_or(ParseError::Missing(key));
    let invalid = |key: &'static str, e: &dyn std::fmt::Display| {
        ParseError::Invalid(key, e.to_string().chars().take(120).collect())
    };
    let node_id = NodeId::new(&*id.node_id).map_err(|e| invalid("node_id", &e))?;
    let roles: RoleSet = get(ROLES)?.parse().map_err(|e| invalid(ROLES, &e))?;
    let quic_addr = get(QUIC)?.parse().map_err(|e| invalid(QUIC, &e))?;
    let http_addr = match get(HTTP)? {
        "" => None,
        s => Some(s.parse().map_err(|e| invalid(HTTP, &e))?),
    };
    let version = get(VERSION)?.to_owned();
    let ready = get(READY)?.parse().map_err(|e| invalid(READY, &e))?;
    let weight = get(WEIGHT)?.parse().map_err(|e| invalid(WEIGHT, &e))?;
    let member = Member {
        id: node_id,
        roles,
        quic_addr,
        http_addr,
        generation: id.generation_id,
        version,
        ready,
        weight,
    };
    member.validate().map_err(|e| invalid("member", &e))?;
    Ok(member)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::Role;

    fn member() -> Member {
        let mut m = Member::new(
            NodeId::new("origin-1").unwrap(),
            RoleSet::of(&[Role::Origin, Role::BuildIndex]),
            "10.0.0.1:4000".parse().unwrap(),
        );
        m.generation = 9;
        m.weight = 3;
        m.ready = false;
        m
    }

    fn chitchat_id(node_id: &str) -> ChitchatId {
        ChitchatId::new(node_id, 9, "10.0.0.1:7000".parse().unwrap())
    }

    fn state_of(kvs: &[(String, String)]) -> NodeState {
        let mut state = NodeState::for_test();
        for (k, v) in kvs {
            state.set(k, v);
        }
        state
    }

    #[test]
    fn round_trip_with_and_without_http() {
        let mut m = member();
        let state = state_of(&kvs(&m));
        assert_eq!(
            from_node_state(&chitchat_id("origin-1"), &state),
            Ok(m.clone())
        );
        m.http_addr = Some("10.0.0.1:8080".parse().unwrap());
        let state = state_of(&kvs(&m));
        assert_eq!(from_node_state(&chitchat_id("origin-1"), &state), Ok(m));
        assert_eq!(
            signature_of(&state),
            Ok((vec![vec![1, 2, 3], vec![4]], vec![9; 64]))
        );
    }

    fn kvs(m: &Member) -> Vec<(String, String)> {
        to_key_values(m, &[vec![1, 2, 3], vec![4]], &[9; 64])
    }

    #[test]
    fn bad_certificates_and_signatures_are_rejected() {
        let kvs = kvs(&member());
        for (key, value) in [
            (CERT, "not base64!"),
            (CERT, ""),
            (CERT, "AQ==,,AQ=="),
            (CERT, "AQ==,AQ==,AQ==,AQ==,AQ=="),
            (SIG, "%%"),
        ] {
            let mut state = state_of(&kvs);
            state.set(key, value);
            assert!(
                matches!(signature_of(&state), Err(ParseError::Invalid(..))),
                "{key}={value}"
            );
        }
        let long = "A".repeat(MAX_CERT_VALUE_LEN + 4);
        let mut state = state_of(&kvs);
        state.set(CERT, &long);
        assert!(matches!(signature_of(&state), Err(ParseError::Invalid(..))));
        let partial: Vec<_> = kvs.iter().filter(|(k, _)| k != SIG).cloned().collect();
        assert_eq!(
            signature_of(&state_of(&partial)),
            Err(ParseError::Missing(SIG))
        );
    }

    #[test]
    fn incomplete_or_invalid_states_are_rejected() {
        let kvs = kvs(&member());
        for skip in 2..kvs.len() {
            let partial: Vec<_> = kvs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, kv)| kv.clone())
                .collect();
            assert!(matches!(
                from_node_state(&chitchat_id("origin-1"), &state_of(&partial)),
                Err(ParseError::Missing(_))
            ));
        }
        let state = state_of(&kvs);
        assert!(matches!(
            from_node_state(&chitchat_id("bad id"), &state),
            Err(ParseError::Invalid("node_id", _))
        ));
        for (key, value) in [
            (ROLES, "agent"),
            (ROLES, ""),
            (QUIC, "nowhere"),
            (QUIC, "0.0.0.0:4000"),
            (HTTP, "x"),
            (READY, "yes"),
            (WEIGHT, "-1"),
            (VERSION, "has space"),
        ] {
            let mut state = state_of(&kvs);
            state.set(key, value);
            assert!(
                matches!(
                    from_node_state(&chitchat_id("origin-1"), &state),
                    Err(ParseError::Invalid(..))
                ),
                "{key}={value}"
            );
        }
    }
}
