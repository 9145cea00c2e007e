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
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use subtle::{Choice, ConstantTimeEq};

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

/// Why a [`PushAuth`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    /// Nobody could push.
    #[error("push auth has neither bearer tokens nor basic users")]
    NoCredentials,
    /// A token could not be sent in a header.
    #[error("bearer tokens must be non-empty printable ASCII without spaces")]
    BadBearerToken,
    /// A user name could not be told apart from its password.
    #[error("basic user names must be non-empty and contain no ':'")]
    BadUsername,
    /// The realm would break the quoted challenge.
    #[error("realm must be printable ASCII without quotes or backslashes")]
    BadRealm,
}

/// Why an `Authorization` value is not a credential this gateway can check.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthHeaderError {
    /// No space between the scheme and the credentials.
    #[error("authorization has no credentials after its scheme")]
    NoCredentials,
    /// Neither `Basic` nor `Bearer`.
    #[error("authorization scheme is neither Basic nor Bearer")]
    UnknownScheme,
    /// Basic credentials too long to be worth decoding.
    #[error("basic credentials are longer than {MAX_BASIC_LEN} characters")]
    TooLong,
    /// Basic credentials that are not base64.
    #[error("basic credentials are not base64")]
    Base64(#[from] base64::DecodeError),
    /// Basic credentials without the `:` between user and password.
    #[error("basic credentials have no ':' between user and password")]
    NoColon,
}

/// The longest base64 Basic credentials decoded (6 KiB of user and password).
const MAX_BASIC_LEN: usize = 8192;

/// A credential as a client presented it.
#[derive(Debug, PartialEq, Eq)]
enum Presented<'a> {
    /// `Bearer <token>`.
    Bearer(&'a str),
    /// `Basic <base64 user:password>`, decoded; the password may hold `:`.
    Basic {
        /// The user name.
        user: Vec<u8>,
        /// The password.
        password: Vec<u8>,
    },
}

/// Reads an `Authorization` value (scheme case-insensitive, RFC 7617 Basic with or
/// without padding).
fn parse_authorization(value: &str) -> Result<Presented<'_>, AuthHeaderError> {
    let (scheme, cred) = value
        .trim()
        .split_once(' ')
        .ok_or(AuthHeaderError::NoCredentials)?;
    let cred = cred.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Presented::Bearer(cred))
    } else if scheme.eq_ignore_ascii_case("basic") {
        if cred.len() > MAX_BASIC_LEN {
            return Err(AuthHeaderError::TooLong);
        }
        let mut user = STANDARD_PAD_INDIFFERENT.decode(cred)?;
        let colon = user
            .iter()
            .position(|&b| b == b':')
            .ok_or(AuthHeaderError::NoColon)?;
        let password = user.split_off(colon + 1);
        user.truncate(colon);
        Ok(Presented::Basic { user, password })
    } else {
        Err(AuthHeaderError::UnknownScheme)
    }
}

impl PushAuth {
    /// Rejects a configuration that would lock every writer out or break the challenge.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if self.bearer_tokens.is_empty() && self.basic.is_empty() {
            return Err(AuthConfigError::NoCredentials);
        }
        if self
            .bearer_tokens
            .iter()
            .any(|t| t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(AuthConfigError::BadBearerToken);
        }
        if self
            .basic
            .iter()
            .any(|c| c.username.is_empty() || c.username.contains(':'))
        {
            return Err(AuthConfigError::BadUsername);
        }
        if self.realm.is_empty()
            || !self
                .realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
        {
            return Err(AuthConfigError::BadRealm);
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

    /// Whether `value` is one of the configured credentials. Every credential is compared
    /// (in constant time) so the time does not say which, if any, matched.
    fn accepts(&self, value: &str) -> bool {
        let matched = match parse_authorization(value) {
            Ok(Presented::Bearer(token)) => {
                self.bearer_tokens.iter().fold(Choice::from(0), |ok, t| {
                    ok | t.as_bytes().ct_eq(token.as_bytes())
                })
            }
            Ok(Presented::Basic { user, password }) => {
                self.basic.iter().fold(Choice::from(0), |ok, c| {
                    ok | (c.username.as_bytes().ct_eq(&user)
                        & c.password.as_bytes().ct_eq(&password))
                })
            }
            Err(_) => Choice::from(0),
        };
        matched.into()
    }
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

    fn basic(user: &str, password: &str) -> Presented<'static> {
        Presented::Basic {
            user: user.as_bytes().to_vec(),
            password: password.as_bytes().to_vec(),
        }
    }

    #[test]
    fn parses_basic_and_bearer() {
        let p = |v| parse_authorization(v).unwrap();
        assert_eq!(p("Basic YWxpY2U6cHc="), basic("alice", "pw"));
        // Padding is optional, the scheme's case and surrounding spaces do not matter.
        assert_eq!(p("  basic   YWxpY2U6cHc "), basic("alice", "pw"));
        assert_eq!(p("Basic YWxpY2U6"), basic("alice", ""));
        assert_eq!(p("Basic OnB3"), basic("", "pw"));
        // Only the first ':' separates: passwords may hold more.
        assert_eq!(p("Basic YTpiOmM="), basic("a", "b:c"));
        assert_eq!(p("BEARER tok"), Presented::Bearer("tok"));
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let e = |v| parse_authorization(v).unwrap_err();
        assert!(matches!(e("Basic"), AuthHeaderError::NoCredentials));
        assert!(matches!(e(""), AuthHeaderError::NoCredentials));
        assert!(matches!(e("Digest abc"), AuthHeaderError::UnknownScheme));
        assert!(matches!(e("Basic Z"), AuthHeaderError::Base64(_)));
        assert!(matches!(e("Basic Z!=="), AuthHeaderError::Base64(_)));
        assert!(matches!(e("Basic YWxp Y2U="), AuthHeaderError::Base64(_)));
        // "alice", no ':'.
        assert!(matches!(e("Basic YWxpY2U="), AuthHeaderError::NoColon));
        assert!(matches!(e("Basic "), AuthHeaderError::NoCredentials));
        let long = format!("Basic {}", "A".repeat(MAX_BASIC_LEN + 4));
        assert!(matches!(e(&long), AuthHeaderError::TooLong));
        // The message never repeats the credentials.
        let msg = e("Basic c2VjcmV0").to_string();
        assert!(!msg.contains("c2VjcmV0"), "{msg}");
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
        assert!(a.check(&headers("Basic !!!")).is_err());
        assert!(a.check(&headers("Bearer")).is_err());
        assert!(a.check(&headers("Token s3cret")).is_err());
        assert!(a.check(&HeaderMap::new()).is_err());
        // One good header among bad ones is enough.
        let mut h = headers("Basic !!!");
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(a.check(&h).is_ok());
        assert_eq!(
            a.check(&HeaderMap::new()).unwrap_err().code(),
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn validation_and_redaction() {
        assert!(auth().validate().is_ok());
        assert_eq!(
            PushAuth::default().validate(),
            Err(AuthConfigError::NoCredentials)
        );
        let bad = |f: fn(&mut PushAuth)| {
            let mut a = auth();
            f(&mut a);
            a.validate().unwrap_err()
        };
        assert_eq!(
            bad(|a| a.bearer_tokens[0] = "a b".into()),
            AuthConfigError::BadBearerToken
        );
        assert_eq!(
            bad(|a| a.basic[0].username = "a:b".into()),
            AuthConfigError::BadUsername
        );
        assert_eq!(bad(|a| a.realm = "a\"b".into()), AuthConfigError::BadRealm);
        let dbg = format!("{:?}", auth());
        assert!(!dbg.contains("s3cret") && !dbg.contains("colons"), "{dbg}");
    }
}
