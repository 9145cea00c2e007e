//! The redirects between the registry API and the blob server, both ways.
//!
//! - [`to_blob_server`]: the registry API's blob `GET` answers `307` to the blob server
//!   when the registry holds the blob complete on this host ([`Registry::local_blob`]).
//! - [`back_to_registry`]: the blob server answers `307` back to the registry API, with
//!   [`STAY`] in the query so it streams rather than redirects again, for a blob it no
//!   longer holds and for connections beyond its cap.
//!
//! A `Location` names the host the client used (its `Host` field) when the target listens
//! on every address, and the target's own address otherwise, so a client on another
//! interface than loopback is sent where it can connect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::header::HOST;
use axum::response::Response;
use kraken_storage::Digest;

use super::response::redirect;
use crate::handlers::Ctx;
use crate::registry::Registry;
use crate::server::Gateway;

/// The query parameter that keeps the registry API from redirecting a blob `GET`.
pub(crate) const STAY: &str = "kraken-local";

/// The registry API's hook: `307` to the blob server if `digest` is complete on this host
/// and this is a `GET` the blob server has not sent back.
pub(crate) async fn to_blob_server<R: Registry>(
    gw: &Gateway<R>,
    ctx: &Ctx,
    name: &str,
    digest: &Digest,
) -> Option<Response> {
    let server = gw.config.blob_server?;
    if ctx.head || ctx.query(STAY).is_some() {
        return None;
    }
    // Only asked, not opened: the blob server opens it (and sends the client back here if
    // it is gone by then).
    if !gw.registry.holds_local_blob(digest).await {
        return None;
    }
    let authority = authority(server, ctx.header(HOST));
    Some(redirect(&format!(
        "http://{authority}/v2/{name}/blobs/{digest}"
    )))
}

/// Where the blob server sends a request back to: the registry API's blob URL with
/// [`STAY`].
pub(crate) fn back_to_registry(
    registry: SocketAddr,
    host: Option<&str>,
    name: &str,
    digest: &Digest,
) -> Response {
    let authority = authority(registry, host);
    redirect(&format!(
        "http://{authority}/v2/{name}/blobs/{digest}?{STAY}=0"
    ))
}

/// `host:port` of a URL to `target`, for a client that sent `host`.
pub(crate) fn authority(target: SocketAddr, host: Option<&str>) -> String {
    let ip = target.ip();
    let name = if ip.is_unspecified() {
        match host.and_then(host_name) {
            Some(name) => name.to_string(),
            None => bracketed(loopback(ip)),
        }
    } else {
        bracketed(ip)
    };
    format!("{name}:{}", target.port())
}

fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn bracketed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The host name of a `Host` field (`name`, `name:port`, `[v6]`, `[v6]:port`); `None` if
/// it holds anything a host name or an IP literal cannot.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        let inner = &name[1..name.len() - 1];
        if inner.parse::<Ipv6Addr>().is_err() {
            return None;
        }
        (
            name,
            rest.strip_prefix(':').or(rest.is_empty().then_some(""))?,
        )
    } else {
        let (name, port) = host.split_once(':').unwrap_or((host, ""));
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
        if !name.chars().all(ok) {
            return None;
        }
        (name, port)
    };
    (!name.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_host_the_client_used_only_for_a_wildcard_listener() {
        let any: SocketAddr = "0.0.0.0:5001".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let any6: SocketAddr = "[::]:5001".parse().unwrap();
        assert_eq!(
            authority(any, Some("node-7.example:5000")),
            "node-7.example:5001"
        );
        assert_eq!(authority(any, Some("10.0.0.3")), "10.0.0.3:5001");
        assert_eq!(authority(any6, Some("[fe80::1]:5000")), "[fe80::1]:5001");
        assert_eq!(authority(lo, Some("elsewhere:5000")), "127.0.0.1:5001");
        assert_eq!(authority(any, None), "127.0.0.1:5001");
        assert_eq!(authority(any6, None), "[::1]:5001");
        for bad in [
            "a/b", "x@y:1", "h:port", "[::1", "[nope]:1", "", "a b", "[::1]x",
        ] {
            assert_eq!(authority(any, Some(bad)), "127.0.0.1:5001", "{bad:?}");
        }
        let v6: SocketAddr = "[::1]:7".parse().unwrap();
        assert_eq!(authority(v6, Some("x")), "[::1]:7");
    }
}
