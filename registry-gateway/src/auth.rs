//! Credentials for writes: static bearer tokens and/or HTTP Basic users.
//!
//! Reads stay open (agents serve localhost); when [`PushAuth`] is configured, every write
//! (uploads, manifest PUT, tag DELETE) needs `Authorization: Bearer <token>` or
//! `Authorization: Basic <base64 user:password>` matching one configured credential.
//! Otherwise the answer is 401 `UNAUTHORIZED` with one `WWW-Authenticate` challenge per
//! configured scheme (Basic first: clients use the first one they understand, and a
//! Bearer realm here is not a token service). The version check `GET /v2/` is
//! challenged too, since clients learn from it whether to send credentials at all.
//! Secrets are compared in constant time and never printed.

use std::fmt;

use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};

use crate::error::{ApiError, ErrorCode};

/// A user allowed to push with HTTP Basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredential {
    /// The user name (no `:`).
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredential")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Who may push: any of the bearer tokens or Basic users.
#[derive(Clone, PartialEq, Eq)]
pub struct PushAuth {
    /// Accepted `Authorization: Bearer` tokens.
    pub bearer_tokens: Vec<String>,
    /// Accepted Basic users.
    pub basic: Vec<BasicCredential>,
    /// The realm named in challenges.
    pub realm: String,
}

impl Default for PushAuth {
    /// No credentials (so [`PushAuth::validate`] refuses it until some are added); realm
    /// `kraken`.
    fn default() -> Self {
        PushAuth {
            bearer_tokens: Vec::new(),
            basic: Vec::new(),
            realm: "kraken".into(),
        }
    }
}

impl fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushAuth")
            .field(
                "bearer_tokens",
                &format_args!("<{} redacted>", self.bearer_tokens.len()),
            )
            .field("basic", &self.basic)
            .field("realm", &self.realm)
            .finish()
    }
}

impl PushAuth {
    /// Rejects a configuration that would lock every writer out or break the challenge.
    pub fn validate(&self) -> Result<(), String> {
        if self.bearer_tokens.is_empty() && self.basic.is_empty() {
            return Err("push auth has neither bearer tokens nor basic users".into());
        }
        if self
            .bearer_tokens
            .iter()
            .any(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err("bearer tokens must be non-empty printable ASCII without spaces".into());
        }
        if self
            .basic
            .iter()
            .any(|c| c.username.is_empty() || c.username.contains(':'))
        {
            return Err("basic user names must be non-empty and contain no ':'".into());
        }
        if self.realm.is_empty()
            || !self
                .realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            return Err("realm must be printable ASCII without quotes or backslashes".into());
        }
        Ok(())
    }

    /// Whether `headers` carry an accepted credential; the 401 to send if not.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = headers
            .get_all(AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| self.accepts(v));
        if presented {
            return Ok(());
        }
        let mut err = ApiError::new(ErrorCode::Unauthorized, "authentication required to push");
        if !self.basic.is_empty() {
            err = err.with_header(WWW_AUTHENTICATE, &format!("Basic realm=\"{}\"", self.realm));
        }
        if !self.bearer_tokens.is_empty() {
            err = err.with_header(
                WWW_AUTHENTICATE,
                &format!("Bearer realm=\"{}\"", self.realm),
            );
        }
        Err(err)
    }

    fn accepts(&self, value: &str) -> bool {
        let (scheme, cred) = match value.trim().split_once(' ') {
            Some(p) => p,
            None => return false,
        };
        let cred = cred.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            // Check every token so the time does not say which matched.
            self.bearer_tokens
                .iter()
                .fold(false, |ok, t| ct_eq(t.as_bytes(), cred.as_bytes()) | ok)
        } else if scheme.eq_ignore_ascii_case("basic") {
            let Some(decoded) = base64_decode(cred) else {
                return false;
            };
            let Some(colon) = decoded.iter().position(|&b| b == b':') else {
                return false;
            };
            let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
            self.basic.iter().fold(false, |ok, c| {
                (ct_eq(c.username.as_bytes(), user) & ct_eq(c.password.as_bytes(), pass)) | ok
            })
        } else {
            false
        }
    }
}

/// Equality whose time depends only on the lengths.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Standard base64 with optional padding; `None` on anything malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 || s.len() > 8192 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth() -> PushAuth {
        PushAuth {
            bearer_tokens: vec!["s3cret".into()],
            basic: vec![BasicCredential {
                username: "alice".into(),
                password: "pw:with:colons".into(),
            }],
            realm: "kraken".into(),
        }
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("YWxpY2U6cHc=").unwrap(), b"alice:pw");
        assert_eq!(base64_decode("YWxpY2U6cHc").unwrap(), b"alice:pw");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert!(base64_decode("Z").is_none());
        assert!(base64_decode("Z!==").is_none());
    }

    #[test]
    fn accepts_configured_credentials_only() {
        let a = auth();
        assert!(a.check(&headers("Bearer s3cret")).is_ok());
        assert!(a.check(&headers("bearer s3cret")).is_ok());
        assert!(a.check(&headers("Bearer s3cre")).is_err());
        // alice:pw:with:colons
        assert!(
            a.check(&headers("Basic YWxpY2U6cHc6d2l0aDpjb2xvbnM="))
                .is_ok()
        );
        assert!(a.check(&headers("Basic YWxpY2U6cHc=")).is_err());
        assert!(a.check(&HeaderMap::new()).is_err());
        assert_eq!(
            a.check(&HeaderMap::new()).unwrap_err().code(),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn validation_and_redaction() {
        assert!(auth().validate().is_ok());
        assert!(PushAuth::default().validate().is_err());
        let dbg = format!("{:?}", auth());
        assert!(!dbg.contains("s3cret") && !dbg.contains("colons"), "{dbg}");
    }
}
