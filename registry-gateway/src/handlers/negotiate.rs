//! `Accept` negotiation for manifest pulls, after distribution's.
//!
//! A client that lists manifest media types gets a stored manifest only if its type is
//! among them; otherwise 404 `MANIFEST_UNKNOWN` (what distribution answers for an OCI
//! manifest or index a client does not accept). One exception, also distribution's: a
//! Docker manifest list fetched by tag by a client that does not accept lists is answered
//! with its linux/amd64 entry, if the client accepts that one's type (old Docker clients
//! that know only single manifests).
//!
//! Unlike distribution, which answers an OCI manifest only to a client that names its type,
//! no `Accept`, `*/*`, `application/*`, or a list that names no manifest type at all (such
//! as `application/json`) accepts everything: `curl` and scripts keep working.

use axum::http::header::ACCEPT;

use super::Ctx;
use crate::media::{
    ChildRole, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_SCHEMA1_SIGNED, OCI_INDEX,
    OCI_MANIFEST, children,
};
use kraken_storage::Digest;

/// The manifest media types whose presence in `Accept` makes it a restriction.
const MANIFEST_TYPES: [&str; 6] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    "application/vnd.docker.distribution.manifest.v1+json",
];

/// What a request accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Accept {
    /// Any manifest.
    Anything,
    /// Only these media types (lower case).
    Only(Vec<String>),
}

impl Accept {
    /// Reads every `Accept` header of the request (`q` parameters are ignored).
    pub(crate) fn of(ctx: &Ctx) -> Accept {
        let listed: Vec<String> = ctx
            .headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|t| !t.is_empty())
            .collect();
        let wildcard = listed.iter().any(|t| t == "*/*" || t == "application/*");
        let names_a_manifest = listed.iter().any(|t| MANIFEST_TYPES.iter().any(|m| m == t));
        if wildcard || !names_a_manifest {
            Accept::Anything
        } else {
            Accept::Only(listed)
        }
    }

    /// Whether a manifest of `media_type` may be answered.
    pub(crate) fn accepts(&self, media_type: &str) -> bool {
        match self {
            Accept::Anything => true,
            Accept::Only(types) => types.iter().any(|t| t.eq_ignore_ascii_case(media_type)),
        }
    }
}

/// The linux/amd64 entry of a Docker manifest list, for a client that does not accept
/// lists.
pub(crate) fn default_platform_child(list: &[u8]) -> Option<Digest> {
    children(list)
        .ok()
        .flatten()?
        .into_iter()
        .find(|c| {
            c.role == ChildRole::Manifest
                && c.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .map(|c| c.digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn ctx(accepts: &[&str]) -> Ctx {
        let mut headers = HeaderMap::new();
        for a in accepts {
            headers.append(ACCEPT, HeaderValue::from_str(a).unwrap());
        }
        Ctx {
            headers,
            query: Default::default(),
            head: false,
            client: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    #[test]
    fn generic_or_missing_accepts_everything() {
        for a in [
            &[][..],
            &["*/*"],
            &["application/*"],
            &["application/json"],
            &[DOCKER_MANIFEST, "*/*"],
        ] {
            assert_eq!(Accept::of(&ctx(a)), Accept::Anything, "{a:?}");
        }
    }

    #[test]
    fn a_list_of_manifest_types_restricts() {
        let a = Accept::of(&ctx(&[
            "application/vnd.docker.distribution.manifest.v2+json; q=0.9",
            "application/vnd.docker.distribution.manifest.list.v2+json, application/json",
        ]));
        assert!(a.accepts(DOCKER_MANIFEST));
        assert!(a.accepts(DOCKER_MANIFEST_LIST));
        assert!(!a.accepts(OCI_MANIFEST));
        assert!(!a.accepts(OCI_INDEX));
    }

    #[test]
    fn the_default_platform_is_linux_amd64() {
        let (arm, amd) = (Digest::sha256_of(b"arm"), Digest::sha256_of(b"amd"));
        let list = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
              {{"digest":"{arm}","platform":{{"os":"linux","architecture":"arm64"}}}},
              {{"digest":"{amd}","platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
        );
        assert_eq!(default_platform_child(list.as_bytes()), Some(amd));
        assert_eq!(default_platform_child(b"{}"), None);
    }
}
