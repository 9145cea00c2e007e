//! `NamespaceRouter`: picks the backend for a namespace (a repository name such as
//! `library/ubuntu`) from an ordered `[[backends]]` list; the first entry whose pattern
//! matches wins.
//!
//! ```toml
//! [[backends]]
//! namespace = "library/.*"
//! name = "docker-hub-mirror"          # optional; default "backends[<index>]"
//! backend.s3 = { bucket = "hub", region = "us-east-1" }
//!
//! [[backends]]
//! namespace = ".*"                    # everything else
//! backend.layout = "plain"
//! backend.fs = { root = "/var/lib/kraken/blobs" }
//! ```
//!
//! Patterns are anchored to the whole namespace: `library/.*` matches `library/ubuntu` but
//! not `mylibrary/ubuntu`, and `team` matches only `team`. A config is a routing table, so
//! a pattern that silently matched in the middle of a name would send blobs to the wrong
//! bucket; write `.*foo.*` to match anywhere.
//!
//! Every entry is checked when the router is built (pattern, service settings, compiled-in
//! services); errors name the entry's index and pattern.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::error::RouteProblem;
use super::{Backend, BackendConfig, BackendError};

/// One `[[backends]]` entry: namespaces matching `namespace` are stored in `backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Regex over the whole namespace (anchored; see the module docs).
    pub namespace: String,
    /// Name used in errors and logs; default `backends[<index>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The backend.
    pub backend: BackendConfig,
}

/// The ordered `[[backends]]` list of a node's config.
///
/// The default is empty, which [`RouterConfig::validate`] rejects: a node that reads
/// through to a backend must say which.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterConfig {
    /// Routes in priority order.
    #[serde(default)]
    pub backends: Vec<RouteConfig>,
}

impl RouterConfig {
    /// Parses the `backends` array of a TOML document (other top-level keys are ignored,
    /// so a node can pass its whole config file) and validates it. Errors name the entry.
    pub fn from_toml_str(text: &str) -> Result<RouterConfig, BackendError> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            backends: Vec<toml::Table>,
        }
        let raw: Raw = toml::from_str(text).map_err(|e| BackendError::toml(text, e))?;
        let mut backends = Vec::with_capacity(raw.backends.len());
        for (index, table) in raw.backends.into_iter().enumerate() {
            let namespace = table
                .get("namespace")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string();
            let route: RouteConfig =
                table
                    .try_into()
                    .map_err(|e: toml::de::Error| BackendError::InvalidRoute {
                        index,
                        namespace,
                        problem: RouteProblem::Toml(Box::new(e)),
                    })?;
            backends.push(route);
        }
        let config = RouterConfig { backends };
        config.validate()?;
        Ok(config)
    }

    /// Rejects an empty list, patterns that do not compile and invalid backends, naming
    /// the first bad entry.
    pub fn validate(&self) -> Result<(), BackendError> {
        self.compile().map(|_| ())
    }

    /// Compiles every pattern and validates every backend config.
    fn compile(&self) -> Result<Vec<Regex>, BackendError> {
        if self.backends.is_empty() {
            return Err(BackendError::NoRoutes);
        }
        self.backends
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let invalid = |problem| BackendError::InvalidRoute {
                    index,
                    namespace: route.namespace.clone(),
                    problem,
                };
                let regex = Regex::new(&format!("^(?:{})$", route.namespace))
                    .map_err(|e| invalid(RouteProblem::Regex(e)))?;
                route
                    .backend
                    .validate()
                    .map_err(|e| invalid(RouteProblem::Backend(Box::new(e))))?;
                Ok(regex)
            })
            .collect()
    }
}

/// Routes namespaces to backends; see the module docs.
#[derive(Debug, Clone)]
pub struct NamespaceRouter {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    pattern: String,
    regex: Regex,
    backend: Backend,
}

impl NamespaceRouter {
    /// Validates `config` and builds every backend, all sharing the `http` client.
    pub fn new(config: &RouterConfig, http: reqwest::Client) -> Result<Self, BackendError> {
        let regexes = config.compile()?;
        let routes = config
            .backends
            .iter()
            .zip(regexes)
            .enumerate()
            .map(|(index, (route, regex))| {
                let name = route
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("backends[{index}]"));
                let backend = Backend::new(name, &route.backend, http.clone()).map_err(|e| {
                    BackendError::InvalidRoute {
                        index,
                        namespace: route.namespace.clone(),
                        problem: RouteProblem::Backend(Box::new(e)),
                    }
                })?;
                Ok(Route {
                    pattern: route.namespace.clone(),
                    regex,
                    backend,
                })
            })
            .collect::<Result<_, BackendError>>()?;
        Ok(NamespaceRouter { routes })
    }

    /// The backend of the first route whose pattern matches all of `namespace`.
    pub fn route(&self, namespace: &str) -> Result<&Backend, BackendError> {
        self.routes
            .iter()
            .find(|route| route.regex.is_match(namespace))
            .map(|route| &route.backend)
            .ok_or_else(|| BackendError::NoRoute(namespace.to_string()))
    }

    /// Every route's pattern and backend, in priority order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &Backend)> {
        self.routes
            .iter()
            .map(|route| (route.pattern.as_str(), &route.backend))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(text: &str) -> Result<NamespaceRouter, BackendError> {
        let config = RouterConfig::from_toml_str(text)?;
        NamespaceRouter::new(&config, super::super::default_http_client()?)
    }

    const TWO_ROUTES: &str = r#"
        [[backends]]
        namespace = "library/.*"
        name = "hub"
        backend.memory = {}

        [[backends]]
        namespace = ".*"
        backend.layout = "plain"
        backend.memory = {}
    "#;

    #[test]
    fn first_match_wins_and_patterns_are_anchored() {
        let r = router(TWO_ROUTES).expect("valid config");
        assert_eq!(r.route("library/ubuntu").expect("routed").name(), "hub");
        assert_eq!(
            r.route("mylibrary/ubuntu").expect("routed").name(),
            "backends[1]"
        );
        assert_eq!(r.route("").expect("routed").name(), "backends[1]");
        let patterns: Vec<_> = r.routes().map(|(p, _)| p).collect();
        assert_eq!(patterns, ["library/.*", ".*"]);
    }

    #[test]
    fn unmatched_namespace_is_no_route() {
        let r = router("[[backends]]\nnamespace = \"team\"\nbackend.memory = {}")
            .expect("valid config");
        assert!(r.route("team").is_ok());
        let err = r.route("team/app").expect_err("anchored");
        assert!(matches!(&err, BackendError::NoRoute(ns) if ns == "team/app"));
        assert_eq!(
            err.to_string(),
            "no backend is configured for namespace \"team/app\""
        );
    }

    #[test]
    fn empty_list_is_rejected() {
        assert_eq!(
            router("").expect_err("empty").to_string(),
            "no backends configured: the [[backends]] list is empty"
        );
        let err = router("backends = 3").expect_err("not a list");
        assert!(
            matches!(err, BackendError::Toml { line: Some(1), .. }),
            "{err:?}"
        );
    }
}
