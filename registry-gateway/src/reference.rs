//! Path parameters, validated before anything reaches the cluster: repository names (by
//! [`crate::names`]), digests (sha256 or sha512) and manifest references (a tag or a digest).

use kraken_storage::Digest;

use crate::error::{ApiError, ErrorCode, clip};
use crate::names::{validate_name, validate_tag};

/// Checks a repository name (400 `NAME_INVALID`).
pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    validate_name(name).map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.to_string()))
}

/// Checks a tag (400 `TAG_INVALID`).
pub(crate) fn check_tag(tag: &str) -> Result<(), ApiError> {
    validate_tag(tag).map_err(|e| ApiError::new(ErrorCode::TagInvalid, e.to_string()))
}

/// Parses a digest (400 `DIGEST_INVALID`).
pub(crate) fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::new(ErrorCode::DigestInvalid, format!("{}: {e}", clip(s))))
}

/// What a `manifests/<reference>` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl Reference {
    /// A digest if it has a `:` (tags cannot), else a tag.
    pub(crate) fn parse(s: &str) -> Result<Reference, ApiError> {
        if s.contains(':') {
            parse_digest(s).map(Reference::Digest)
        } else {
            check_tag(s)?;
            Ok(Reference::Tag(s.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            Reference::parse("latest").unwrap(),
            Reference::Tag("latest".into())
        );
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            Reference::parse(&d.to_string()).unwrap(),
            Reference::Digest(d)
        );
        assert_eq!(
            Reference::parse("sha256:zz").unwrap_err().code(),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            Reference::parse("md5:00").unwrap_err().code(),
            ErrorCode::DigestInvalid
        );
        assert_eq!(
            Reference::parse(".bad").unwrap_err().code(),
            ErrorCode::TagInvalid
        );
        assert_eq!(check_name("A").unwrap_err().code(), ErrorCode::NameInvalid);
    }
}
