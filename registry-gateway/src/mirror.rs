//! Mirror requests: containerd asks a mirror for an image of registry `R` with `?ns=R` on
//! every `/v2/<name>/…` request, so one gateway can mirror several registries. The
//! repository the cluster sees is `<prefix of R>/<name>`, where the prefix is
//! [`prefix`]`(R)`; `[[backends]]` routes such names to the upstream (with
//! `strip_prefix = "<prefix>/"`).
//!
//! Docker Hub's rules apply: `docker.io`, `index.docker.io` and `registry-1.docker.io` are
//! one registry, `docker.io`, and a name of one component there is an official image,
//! `library/<name>`. Registry hosts are case-insensitive, so the prefix is lowercase; a
//! port, which the name grammar has no `:` for, is joined with `_` (no host name holds
//! one): `ns=localhost:5000` gives `localhost_5000/<name>`. The result is validated like
//! any repository name by the handlers.
//!
//! Pure functions: the gateway's dispatch calls [`repository`] before any handler runs,
//! and other tools (preheat, `kraken dev --upstream-ns`) use [`prefix`] to name routes the
//! same way.

/// Docker Hub's canonical name, and the other hosts that mean it.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// Longest `ns` accepted (a DNS name is at most 253 characters, plus a port).
const MAX_NS_LEN: usize = 253 + 6;

/// Why an `ns` parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// `ns` is not `host` or `host:port` (a DNS name or an IPv4 address, and a port of
    /// 1-65535).
    #[error("invalid ns {0:?}: expected a registry host, host[:port]")]
    Namespace(String),
}

/// The cluster's repository prefix for registry host `ns` (`docker.io` for Docker Hub's
/// aliases, lowercase, a port joined with `_`).
pub fn prefix(ns: &str) -> Result<String, MirrorError> {
    let bad = || MirrorError::Namespace(ns.chars().take(300).collect());
    if ns.len() > MAX_NS_LEN {
        return Err(bad());
    }
    let lower = ns.to_ascii_lowercase();
    let (host, port) = match lower.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (lower.as_str(), None),
    };
    if !valid_host(host) {
        return Err(bad());
    }
    if DOCKER_HUB_ALIASES.contains(&host) && port.is_none() {
        return Ok(DOCKER_HUB.to_string());
    }
    match port {
        None => Ok(host.to_string()),
        Some(p) if valid_port(p) => Ok(format!("{host}_{p}")),
        Some(_) => Err(bad()),
    }
}

/// The cluster repository of `name` asked with `?ns=<ns>`; `name` unchanged without `ns`.
pub fn repository(ns: Option<&str>, name: &str) -> Result<String, MirrorError> {
    let Some(ns) = ns else {
        return Ok(name.to_string());
    };
    let prefix = prefix(ns)?;
    if prefix == DOCKER_HUB && !name.contains('/') {
        return Ok(format!("{prefix}/library/{name}"));
    }
    Ok(format!("{prefix}/{name}"))
}

/// A request that came with `?ns=`: the name the client used, the cluster repository it
/// maps to, and the `ns` to carry on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mirrored {
    ns: String,
    client: String,
    cluster: String,
}

impl Mirrored {
    /// Maps `name` (as the client sent it) for `ns`; `None` without `ns`.
    pub(crate) fn new(ns: Option<&str>, name: &str) -> Result<Option<Mirrored>, MirrorError> {
        let Some(ns) = ns else { return Ok(None) };
        Ok(Some(Mirrored {
            ns: ns.to_string(),
            client: name.to_string(),
            cluster: repository(Some(ns), name)?,
        }))
    }

    /// The cluster repository.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// A `Location` the handlers wrote for the cluster repository
    /// (`/v2/<cluster>/…`), rewritten to the client's own path with the same `ns`, so the
    /// client's next request (an upload's `PATCH`, whether or not its client adds `ns`
    /// again) names the same repository. `None` for any other location: the blob
    /// server's absolute redirect keeps the cluster name, which needs no `ns` (the blob
    /// server drops queries when it sends a client back).
    pub(crate) fn location(&self, location: &str) -> Option<String> {
        let rest = location
            .strip_prefix("/v2/")?
            .strip_prefix(self.cluster.as_str())?
            .strip_prefix('/')?;
        let join = if rest.contains('?') { '&' } else { '?' };
        Some(format!("/v2/{}/{rest}{join}ns={}", self.client, self.ns))
    }
}

/// DNS labels (letters, digits, inner `-`) joined by `.`; an IPv4 address is such a name.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u32>().is_ok_and(|n| (1..=65535).contains(&n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::validate_name;

    #[test]
    fn without_ns_the_name_is_used_as_is() {
        assert_eq!(
            repository(None, "library/ubuntu").unwrap(),
            "library/ubuntu"
        );
        assert_eq!(repository(None, "ubuntu").unwrap(), "ubuntu");
    }

    #[test]
    fn docker_hub_aliases_and_official_images() {
        for ns in [
            "docker.io",
            "index.docker.io",
            "registry-1.docker.io",
            "Docker.IO",
        ] {
            assert_eq!(
                repository(Some(ns), "library/ubuntu").unwrap(),
                "docker.io/library/ubuntu",
                "{ns}"
            );
            assert_eq!(
                repository(Some(ns), "ubuntu").unwrap(),
                "docker.io/library/ubuntu",
                "{ns}"
            );
        }
        assert_eq!(
            repository(Some("docker.io"), "grafana/grafana").unwrap(),
            "docker.io/grafana/grafana"
        );
    }

    #[test]
    fn other_registries_keep_their_names_whole() {
        assert_eq!(
            repository(Some("ghcr.io"), "org/app").unwrap(),
            "ghcr.io/org/app"
        );
        // `library/` is Docker Hub's rule only.
        assert_eq!(repository(Some("quay.io"), "app").unwrap(), "quay.io/app");
        assert_eq!(
            repository(Some("registry.k8s.io"), "pause").unwrap(),
            "registry.k8s.io/pause"
        );
    }

    #[test]
    fn a_port_is_joined_with_an_underscore_so_the_name_stays_valid() {
        let name = repository(Some("127.0.0.1:5000"), "library/x").unwrap();
        assert_eq!(name, "127.0.0.1_5000/library/x");
        validate_name(&name).unwrap();
        assert_eq!(prefix("Registry.Local:443").unwrap(), "registry.local_443");
        // A port makes it another registry than Docker Hub.
        assert_eq!(
            repository(Some("docker.io:443"), "ubuntu").unwrap(),
            "docker.io_443/ubuntu"
        );
    }

    #[test]
    fn a_bad_ns_is_refused() {
        for ns in [
            "",
            ":5000",
            "host:",
            "host:0",
            "host:65536",
            "host:12a",
            "a/b",
            "a..b",
            "-a.b",
            "a-.b",
            "[::1]:5000",
            "user@host",
            "host:1:2",
            "a b",
            &"a".repeat(300),
        ] {
            assert!(
                matches!(prefix(ns), Err(MirrorError::Namespace(_))),
                "{ns:?}"
            );
            assert!(repository(Some(ns), "x").is_err(), "{ns:?}");
        }
    }

    #[test]
    fn locations_keep_the_clients_path_and_ns() {
        let m = Mirrored::new(Some("docker.io"), "ubuntu").unwrap().unwrap();
        assert_eq!(m.cluster(), "docker.io/library/ubuntu");
        assert_eq!(
            m.location("/v2/docker.io/library/ubuntu/blobs/uploads/abc")
                .as_deref(),
            Some("/v2/ubuntu/blobs/uploads/abc?ns=docker.io")
        );
        assert_eq!(
            m.location("/v2/docker.io/library/ubuntu/manifests/sha256:00?x=1")
                .as_deref(),
            Some("/v2/ubuntu/manifests/sha256:00?x=1&ns=docker.io")
        );
        // Not a path under the cluster repository: left alone.
        assert_eq!(
            m.location("http://127.0.0.1:5001/v2/docker.io/library/ubuntu/blobs/d"),
            None
        );
        assert_eq!(m.location("/v2/docker.io/library/ubuntux/blobs/d"), None);
        assert_eq!(Mirrored::new(None, "ubuntu").unwrap(), None);
        assert!(Mirrored::new(Some("a/b"), "ubuntu").is_err());
    }

    #[test]
    fn every_accepted_prefix_makes_a_valid_repository_name() {
        for ns in ["docker.io", "ghcr.io", "10.0.0.1:5000", "a-b.example.com:1"] {
            validate_name(&repository(Some(ns), "x/y").unwrap()).unwrap();
        }
    }
}
