//! Credentials for an upstream registry: what the config gives ([`Credentials`]), what
//! the registry asks for ([`Challenge`], parsed from `WWW-Authenticate`), and the bearer
//! tokens it hands out ([`TokenCache`]: one per scope, kept until shortly before they
//! expire, fetched once however many requests need one at the same moment).
//!
//! Secrets live in [`Secret`], whose `Debug` prints nothing of them.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::super::BackendError;

/// A password or token. `Debug` is redacted; the text is only read to build a header.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Secret(Arc<str>);

impl Secret {
    pub(super) fn new(text: &str) -> Secret {
        Secret(text.into())
    }

    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the config gives to authenticate with.
#[derive(Debug, Clone)]
pub(super) enum Credentials {
    /// Nothing: bearer challenges are answered with anonymous tokens.
    Anonymous,
    /// A user and password: sent to a basic challenge, and with the token request of a
    /// bearer one.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// A ready bearer token, sent with every request.
    Token(Secret),
}

/// An authentication challenge (`WWW-Authenticate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    /// `Bearer realm="…",service="…",scope="…"`: get a token from `realm`.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The service the token is for.
        service: Option<String>,
        /// The access the token should grant.
        scope: Option<String>,
    },
    /// `Basic realm="…"`: send basic credentials.
    Basic,
}

impl Challenge {
    /// Parses the first challenge of a `WWW-Authenticate` value; `None` for schemes we do
    /// not answer, and a bearer challenge without a realm.
    pub(super) fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim_start();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let params = auth_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("bearer") {
            Some(Challenge::Bearer {
                realm: get("realm")?,
                service: get("service"),
                scope: get("scope"),
            })
        } else if scheme.eq_ignore_ascii_case("basic") {
            Some(Challenge::Basic)
        } else {
            None
        }
    }
}

/// `key=value` and `key="quoted, value"` pairs, comma-separated (RFC 7235 auth-params).
/// Stops at anything else, which is where a second challenge would begin.
fn auth_params(mut s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t', ',']);
        let Some((key, rest)) = s.split_once('=') else {
            return out;
        };
        let key = key.trim();
        if key.is_empty() || key.contains([' ', '"', ',']) {
            return out;
        }
        let rest = rest.trim_start();
        let (value, rest) = match rest.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end..])
            }
            None => {
                let end = rest.find(',').unwrap_or(rest.len());
                (rest[..end].trim().to_string(), &rest[end..])
            }
        };
        out.push((key.to_string(), value));
        s = rest;
    }
}

/// How long a token whose answer gives no `expires_in` lives (the token spec's default).
pub(super) const DEFAULT_TOKEN_SECS: u64 = 60;

/// The part of a token's life given up, so a token is never sent just as it expires:
/// a tenth of it, at least a second and at most 30 s.
fn margin(lifetime: u64) -> u64 {
    (lifetime / 10).clamp(1, 30)
}

/// A token and when it stops being used.
#[derive(Debug, Clone)]
struct Cached {
    token: Secret,
    until: Instant,
}

/// One slot per scope. Its async lock is held while its token is fetched, so the
/// requests that need it meanwhile wait for that one fetch (single flight).
type Slot = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Bearer tokens by scope, for one registry.
#[derive(Default)]
pub(super) struct TokenCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scopes = self.slots.lock().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("TokenCache")
            .field("scopes", &scopes)
            .finish()
    }
}

impl TokenCache {
    fn slot(&self, scope: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(scope) {
            return slot.clone();
        }
        // Expired tokens of other scopes go when a new scope arrives, so the map holds
        // about the scopes in use.
        let now = Instant::now();
        slots.retain(|_, slot| {
            slot.try_lock()
                .map_or(true, |c| c.as_ref().is_some_and(|c| c.until > now))
        });
        slots.entry(scope.to_string()).or_default().clone()
    }

    /// The valid token of `scope`, if one is cached and not being fetched right now.
    pub(super) fn peek(&self, scope: &str) -> Option<Secret> {
        let slot = self.slot(scope);
        let cached = slot.try_lock().ok()?;
        cached
            .as_ref()
            .filter(|c| c.until > Instant::now())
            .map(|c| c.token.clone())
    }

    /// The token of `scope`: the cached one if it is valid and is not `refused` (a
    /// token the registry just rejected), else a fresh one from `fetch`, which returns
    /// the token and its lifetime in seconds. Concurrent callers share one fetch; a
    /// failed fetch is not cached.
    pub(super) async fn get<F, Fut>(
        &self,
        scope: &str,
        refused: Option<&Secret>,
        fetch: F,
    ) -> Result<Secret, BackendError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, u64), BackendError>>,
    {
        let slot = self.slot(scope);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && c.until > Instant::now()
            && Some(&c.token) != refused
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = fetch().await?;
        let keep = lifetime.saturating_sub(margin(lifetime));
        *cached = Some(Cached {
            token: token.clone(),
            until: Instant::now() + Duration::from_secs(keep),
        });
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn bearer_and_basic_challenges_parse_with_quoted_commas() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull,push".into()),
            })
        );
        let c = Challenge::parse(r#"bearer realm=http://a/t , error="invalid_token""#);
        assert!(
            matches!(c, Some(Challenge::Bearer { realm, service: None, scope: None }) if realm == "http://a/t")
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Basic"), Some(Challenge::Basic));
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
        assert_eq!(Challenge::parse(r#"Negotiate abc"#), None);
        assert_eq!(
            auth_params(r#"a="x\"y", b=2"#),
            vec![("a".into(), "x\"y".into()), ("b".into(), "2".into())]
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials::Basic {
            username: "u".into(),
            password: Secret::new("hunter2"),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Token(Secret::new("tok-123"))).contains("tok-123"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_serves_concurrent_callers_until_the_token_expires() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = |lifetime: u64| {
            let fetches = fetches.clone();
            move || async move {
                let n = fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok((Secret::new(&format!("t{n}")), lifetime))
            }
        };
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                let f = fetch(60);
                tokio::spawn(async move { cache.get("s", None, f).await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().expose(), "t0");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(cache.peek("s").unwrap().expose(), "t0");
        assert!(cache.peek("other").is_none());

        // A refused token is replaced once; the replacement is then shared.
        let t0 = Secret::new("t0");
        let t1 = cache.get("s", Some(&t0), fetch(60)).await.unwrap();
        assert_eq!(t1.expose(), "t1");
        let again = cache.get("s", Some(&t0), fetch(60)).await.unwrap();
        assert_eq!((again.expose(), fetches.load(Ordering::SeqCst)), ("t1", 2));

        // A 1 s token is given up at once (its margin is a second): never sent stale.
        cache.get("short", None, fetch(1)).await.unwrap();
        assert!(cache.peek("short").is_none());
        let failed = cache
            .get("e", None, || async {
                Err(BackendError::Config("no token".into()))
            })
            .await;
        assert!(failed.is_err());
        assert!(cache.peek("e").is_none());
    }
}
