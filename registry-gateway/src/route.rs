//! Which endpoint a request path names, parsed from the right.
//!
//! Repository names contain slashes (and may even contain components such as `blobs` or
//! `manifests`), so the path after `/v2/` is split on `/` and recognised by its last
//! segments: `…/manifests/<ref>`, `…/blobs/<digest>`, `…/blobs/uploads/[<id>]`,
//! `…/tags/list`, `…/referrers/<digest>`. Everything before is the name. Parsing only
//! splits: the name, reference, digest and upload id are validated by the handlers, so a
//! bad one gets the specification's error code rather than a bare 404.

/// An endpoint of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/v2/`: the version check.
    Base,
    /// `/v2/_catalog`.
    Catalog,
    /// `/v2/<name>/tags/list`.
    Tags {
        /// Repository name.
        name: String,
    },
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository name.
        name: String,
        /// Tag or digest.
        reference: String,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository name.
        name: String,
        /// The digest, unparsed.
        digest: String,
    },
    /// `/v2/<name>/blobs/uploads/`.
    UploadStart {
        /// Repository name.
        name: String,
    },
    /// `/v2/<name>/blobs/uploads/<id>`.
    Upload {
        /// Repository name.
        name: String,
        /// The session id, unparsed.
        id: String,
    },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        /// Repository name.
        name: String,
        /// The subject digest, unparsed.
        digest: String,
    },
}

impl Route {
    /// Parses a request path (percent-encoded, as on the wire). `None` if it names no
    /// endpoint.
    pub(crate) fn parse(path: &str) -> Option<Route> {
        let rest = match path.strip_prefix("/v2") {
            Some("") | Some("/") => return Some(Route::Base),
            Some(r) => r.strip_prefix('/')?,
            None => return None,
        };
        // Split first, then decode: an escaped '/' stays inside its segment.
        let decoded: Vec<String> = rest.split('/').map(percent_decode).collect::<Option<_>>()?;
        let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
        if segs == ["_catalog"] {
            return Some(Route::Catalog);
        }
        let n = segs.len();
        let name_of = |k: usize| -> Option<String> {
            // The name is everything but the last k segments; it must be non-empty.
            (n > k).then(|| segs[..n - k].join("/"))
        };
        let seg = |back: usize| -> Option<&str> { n.checked_sub(back).map(|i| segs[i]) };
        match (seg(3), seg(2), seg(1)) {
            (_, Some("tags"), Some("list")) => Some(Route::Tags { name: name_of(2)? }),
            (_, Some("blobs"), Some("uploads")) => Some(Route::UploadStart { name: name_of(2)? }),
            (Some("blobs"), Some("uploads"), Some("")) => {
                Some(Route::UploadStart { name: name_of(3)? })
            }
            (Some("blobs"), Some("uploads"), Some(id)) => Some(Route::Upload {
                name: name_of(3)?,
                id: id.to_string(),
            }),
            (_, Some("manifests"), Some(reference)) => Some(Route::Manifest {
                name: name_of(2)?,
                reference: reference.to_string(),
            }),
            (_, Some("blobs"), Some(digest)) => Some(Route::Blob {
                name: name_of(2)?,
                digest: digest.to_string(),
            }),
            (_, Some("referrers"), Some(digest)) => Some(Route::Referrers {
                name: name_of(2)?,
                digest: digest.to_string(),
            }),
            _ => None,
        }
    }
}

impl Route {
    /// The repository name the route names, if any (every `/v2/<name>/…` endpoint).
    pub(crate) fn name_mut(&mut self) -> Option<&mut String> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. } => Some(name),
        }
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex_val(*b.get(i + 1)?)?;
            let lo = hex_val(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> String {
        x.to_string()
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(Route::parse("/v2/"), Some(Route::Base));
        assert_eq!(Route::parse("/v2"), Some(Route::Base));
        assert_eq!(Route::parse("/v2/_catalog"), Some(Route::Catalog));
        assert_eq!(
            Route::parse("/v2/library/ubuntu/tags/list"),
            Some(Route::Tags {
                name: s("library/ubuntu")
            })
        );
        assert_eq!(
            Route::parse("/v2/a/b/manifests/latest"),
            Some(Route::Manifest {
                name: s("a/b"),
                reference: s("latest")
            })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/sha256%3Aab"),
            Some(Route::Blob {
                name: s("a"),
                digest: s("sha256:ab")
            })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/"),
            Some(Route::UploadStart { name: s("a") })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads"),
            Some(Route::UploadStart { name: s("a") })
        );
        assert_eq!(
            Route::parse("/v2/a/b/blobs/uploads/0123"),
            Some(Route::Upload {
                name: s("a/b"),
                id: s("0123")
            })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/..%2F..%2Fetc"),
            Some(Route::Upload {
                name: s("a"),
                id: s("../../etc")
            })
        );
        assert_eq!(
            Route::parse("/v2/a/referrers/sha256:00"),
            Some(Route::Referrers {
                name: s("a"),
                digest: s("sha256:00")
            })
        );
    }

    #[test]
    fn every_repository_endpoint_exposes_its_name() {
        for p in [
            "/v2/a/tags/list",
            "/v2/a/manifests/x",
            "/v2/a/blobs/d",
            "/v2/a/blobs/uploads/",
            "/v2/a/blobs/uploads/id",
            "/v2/a/referrers/d",
        ] {
            let mut route = Route::parse(p).unwrap();
            *route.name_mut().unwrap() = s("b");
            assert_eq!(route.name_mut().map(|n| n.as_str()), Some("b"), "{p}");
        }
        assert_eq!(Route::Base.name_mut(), None);
        assert_eq!(Route::Catalog.name_mut(), None);
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        assert_eq!(
            Route::parse("/v2/x/manifests/y/manifests/v1"),
            Some(Route::Manifest {
                name: s("x/manifests/y"),
                reference: s("v1")
            })
        );
        assert_eq!(
            Route::parse("/v2/x/blobs/blobs/uploads/"),
            Some(Route::UploadStart { name: s("x/blobs") })
        );
        assert_eq!(
            Route::parse("/v2/blobs/uploads/blobs/d"),
            Some(Route::Blob {
                name: s("blobs/uploads"),
                digest: s("d")
            })
        );
    }

    #[test]
    fn rejects_non_endpoints() {
        for p in [
            "/",
            "/v1/",
            "/v2x",
            "/v2/manifests/latest",
            "/v2/a",
            "/v2/a/b",
            "/v2/%zz",
            "/v2/a/blobs/uploads/x/y",
            "/v2/tags/list",
        ] {
            assert_eq!(Route::parse(p), None, "{p}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(p in ".{0,200}") {
            let _ = Route::parse(&p);
        }

        #[test]
        fn never_panics_on_pathy_input(p in "(/|v2|blobs|uploads|manifests|tags|list|referrers|%3A|%|a|_catalog){0,12}") {
            let _ = Route::parse(&p);
        }
    }
}
