//! Repository names and tags, validated by the OCI distribution specification's grammar.
//!
//! - name: path components separated by `/`, each `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`,
//!   at most [`MAX_NAME_LEN`] characters in all;
//! - tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
//!
//! Hand-written matchers (no regex engine): linear time on any input, never a panic.

/// Longest repository name accepted (the spec suggests clients keep to 255).
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag (from the grammar).
pub const MAX_TAG_LEN: usize = 128;

/// Why a name or tag is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The repository name breaks the grammar.
    #[error(
        "invalid repository name {0:?}: components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'"
    )]
    Name(String),
    /// The name is too long.
    #[error("repository name is {0} characters; at most 255 are allowed")]
    NameTooLong(usize),
    /// The tag breaks the grammar.
    #[error("invalid tag {0:?}: 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    Tag(String),
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_component(c: &[u8]) -> bool {
    // alnum+ (separator alnum+)*, separator = '.' | '_' | '__' | '-'+
    let mut i = 0;
    loop {
        let start = i;
        while i < c.len() && is_alnum(c[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == c.len() {
            return true;
        }
        match c[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if c.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while c.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Checks a repository name.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::NameTooLong(name.len()));
    }
    if name.is_empty() || !name.as_bytes().split(|&b| b == b'/').all(valid_component) {
        return Err(NameError::Name(name.chars().take(300).collect()));
    }
    Ok(())
}

/// Checks a tag.
pub fn validate_tag(tag: &str) -> Result<(), NameError> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Tag(tag.chars().take(200).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "ubuntu",
            "library/ubuntu",
            "a/b/c",
            "foo.bar",
            "foo_bar",
            "foo__bar",
            "foo---bar",
            "a0/1b",
        ] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "", "Ubuntu", "/a", "a/", "a//b", "a___b", "a.-b", ".a", "a-", "a b", "a:b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(
            validate_name(&"a".repeat(256)),
            Err(NameError::NameTooLong(256))
        ));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "A-b_c.d", &"a".repeat(128)] {
            validate_tag(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?} accepted");
        }
    }
}
