//! `kraken ca init` and `kraken cert issue`: a production cluster CA and the node and admin
//! certificates it signs, on top of the CA directory of
//! [`kraken_transport::quic::tls::dev`].
//!
//! What the cluster checks, and so what a certificate must carry: a chain to a CA in every
//! node's `[tls] ca` file (QUIC, both directions), `serverAuth` for nodes (member records
//! and QUIC servers are checked as servers), and the node's `[node] name` as a DNS or IP
//! SAN (gossip refuses a ring node whose certificate does not name it). Server names are
//! never checked against addresses, so addresses need no SAN. An `admin` certificate (for
//! `krakenctl`) allows `clientAuth` only: it may call every node and can never be one. The
//! role is written as the subject's organizational unit, for people; nothing checks it.

use std::path::{Path, PathBuf};

use kraken_transport::quic::tls::TlsError;
use kraken_transport::quic::tls::dev::{
    CA_CERT_FILE, CA_KEY_FILE, CertRequest, DevCa, write_identity,
};

/// Default validity of a cluster CA: ten years (rolling a CA means touching every node).
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default validity of node and admin certificates: a year.
pub const DEFAULT_CERT_DAYS: u32 = 365;

/// Why a CA or a certificate was not made; nothing is written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// `--role` names no role.
    #[error("unknown role {0:?} (origin, agent, tracker, build-index, proxy, admin)")]
    UnknownRole(String),
    /// `--days 0`.
    #[error("--days must be at least 1")]
    ZeroDays,
    /// `kraken ca init` found a CA already there.
    #[error(
        "a CA already exists in {0}; refusing to overwrite it (every node trusts it): use it, or give another --dir"
    )]
    CaExists(PathBuf),
    /// `--ca` holds no CA.
    #[error(
        "no CA in {0}: it has no {CA_CERT_FILE} and {CA_KEY_FILE}; create one with `kraken ca init --dir {0}`"
    )]
    NoCa(PathBuf),
    /// `--key` could not be read.
    #[error("failed to read {path}: {source}")]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CA or certificate layer refused (existing files, bad names, bad keys).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// A node of that role (`serverAuth` and `clientAuth`).
    Origin,
    /// An agent.
    Agent,
    /// A tracker.
    Tracker,
    /// A build-index.
    BuildIndex,
    /// A proxy.
    Proxy,
    /// An operator's tool such as `krakenctl` (`clientAuth` only).
    Admin,
}

impl CertRole {
    /// Parses `--role`.
    pub fn parse(s: &str) -> Result<CertRole, CertError> {
        Ok(match s {
            "origin" => CertRole::Origin,
            "agent" => CertRole::Agent,
            "tracker" => CertRole::Tracker,
            "build-index" => CertRole::BuildIndex,
            "proxy" => CertRole::Proxy,
            "admin" => CertRole::Admin,
            other => return Err(CertError::UnknownRole(other.to_string())),
        })
    }

    /// The name `--role` takes.
    pub fn name(self) -> &'static str {
        match self {
            CertRole::Origin => "origin",
            CertRole::Agent => "agent",
            CertRole::Tracker => "tracker",
            CertRole::BuildIndex => "build-index",
            CertRole::Proxy => "proxy",
            CertRole::Admin => "admin",
        }
    }
}

/// `kraken ca init`: creates a cluster CA in `dir` valid for `days`; refuses to overwrite
/// one. Returns the CA certificate's path.
pub fn init_ca(dir: &Path, days: u32) -> Result<PathBuf, CertError> {
    if days == 0 {
        return Err(CertError::ZeroDays);
    }
    match DevCa::create_cluster(dir, days) {
        Ok(ca) => Ok(ca.dir().join(CA_CERT_FILE)),
        Err(TlsError::CaExists(dir)) => Err(CertError::CaExists(dir)),
        Err(e) => Err(e.into()),
    }
}

/// `kraken cert issue`'s arguments.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    /// The CA directory.
    pub ca: PathBuf,
    /// The certificate's name: a node's `[node] name`.
    pub name: String,
    /// What it is for.
    pub role: CertRole,
    /// More SANs (DNS names or IP addresses).
    pub sans: Vec<String>,
    /// Validity in days.
    pub days: u32,
    /// Where `<name>.crt` and `<name>.key` go.
    pub out: PathBuf,
    /// An existing key to certify again (a renewal keeping the peer id); only the
    /// certificate is written then.
    pub key: Option<PathBuf>,
}

/// What [`issue`] wrote.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file (the one given with `--key` for a renewal).
    pub key: PathBuf,
}

/// `kraken cert issue`: signs a certificate with the CA in `opts.ca` and writes it (and a new
/// key) under `opts.out`, refusing to overwrite anything.
pub fn issue(opts: &IssueOptions) -> Result<Issued, CertError> {
    if opts.days == 0 {
        return Err(CertError::ZeroDays);
    }
    if !opts.ca.join(CA_CERT_FILE).is_file() || !opts.ca.join(CA_KEY_FILE).is_file() {
        return Err(CertError::NoCa(opts.ca.clone()));
    }
    let ca = DevCa::load(&opts.ca)?;
    let key_pem = match &opts.key {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| CertError::ReadKey {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let sans: Vec<&str> = opts.sans.iter().map(String::as_str).collect();
    let identity = ca.issue(&CertRequest {
        name: &opts.name,
        sans: &sans,
        days: Some(opts.days),
        client_only: opts.role == CertRole::Admin,
        unit: Some(opts.role.name()),
        key_pem: key_pem.as_deref(),
    })?;
    std::fs::create_dir_all(&opts.out).map_err(|source| TlsError::Io {
        op: "create",
        path: opts.out.clone(),
        source,
    })?;
    let (cert, key) = write_identity(&opts.out, &opts.name, &identity, opts.key.is_none())?;
    Ok(Issued {
        cert,
        key: opts.key.clone().unwrap_or(key),
    })
}

/// The UTC calendar date `days` days from now, as `YYYY-MM-DD`, for the messages.
pub fn date_in(days: u32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    civil_date(now / 86_400 + u64::from(days))
}

/// The date of a day number since 1970-01-01 as `YYYY-MM-DD`.
fn civil_date(days: u64) -> String {
    let (year, month, day) = kraken_storage::time::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(59), "1970-03-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_454), "2026-01-01");
    }

    #[test]
    fn roles_round_trip_and_unknown_ones_are_named() {
        for r in [
            CertRole::Origin,
            CertRole::Agent,
            CertRole::Tracker,
            CertRole::BuildIndex,
            CertRole::Proxy,
            CertRole::Admin,
        ] {
            assert_eq!(CertRole::parse(r.name()).unwrap(), r);
        }
        let e = CertRole::parse("ops").unwrap_err().to_string();
        assert!(e.contains("\"ops\"") && e.contains("build-index"), "{e}");
    }

    #[test]
    fn nothing_is_written_for_a_refused_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca, 10).unwrap();
        assert!(matches!(init_ca(&ca, 10), Err(CertError::CaExists(_))));
        let opts = IssueOptions {
            ca: ca.clone(),
            name: "origin-1".into(),
            role: CertRole::Origin,
            sans: vec!["10.0.0.11".into()],
            days: 30,
            out: dir.path().join("out"),
            key: None,
        };
        let first = issue(&opts).unwrap();
        let before = std::fs::read(&first.cert).unwrap();
        assert!(issue(&opts).is_err());
        assert_eq!(std::fs::read(&first.cert).unwrap(), before);
        // A renewal for the same key keeps the peer id.
        let renewed = issue(&IssueOptions {
            key: Some(first.key.clone()),
            out: dir.path().join("renewed"),
            ..opts.clone()
        })
        .unwrap();
        assert_eq!(renewed.key, first.key);
        let a =
            kraken_transport::quic::NodeIdentity::from_pem_files(&first.cert, &first.key).unwrap();
        let b = kraken_transport::quic::NodeIdentity::from_pem_files(&renewed.cert, &renewed.key)
            .unwrap();
        assert_eq!(a.peer_id, b.peer_id);
        let missing = issue(&IssueOptions {
            ca: dir.path().join("nowhere"),
            ..opts
        })
        .unwrap_err();
        assert!(matches!(missing, CertError::NoCa(_)), "{missing}");
    }
}
