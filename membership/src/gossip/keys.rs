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
//!
//! A node whose keys are missing (not fully propagated yet) or invalid is left out of the
//! view, never half-read.

use chitchat::{ChitchatId, NodeState};

use crate::member::{Member, NodeId, RoleSet};

pub(crate) const ROLES: &str = "kraken.roles";
pub(crate) const QUIC: &str = "kraken.quic";
pub(crate) const HTTP: &str = "kraken.http";
pub(crate) const VERSION: &str = "kraken.version";
pub(crate) const READY: &str = "kraken.ready";
pub(crate) const WEIGHT: &str = "kraken.weight";

/// The key-values that publish `m` (everything but id and generation).
pub(crate) fn to_key_values(m: &Member) -> Vec<(String, String)> {
    vec![
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
        let state = state_of(&to_key_values(&m));
        assert_eq!(
            from_node_state(&chitchat_id("origin-1"), &state),
            Ok(m.clone())
        );
        m.http_addr = Some("10.0.0.1:8080".parse().unwrap());
        let state = state_of(&to_key_values(&m));
        assert_eq!(from_node_state(&chitchat_id("origin-1"), &state), Ok(m));
    }

    #[test]
    fn incomplete_or_invalid_states_are_rejected() {
        let kvs = to_key_values(&member());
        for skip in 0..kvs.len() {
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
