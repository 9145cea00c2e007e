//! A cluster CA held in a directory: one self-signed ECDSA P-256 CA, and node certificates
//! signed by it. A [`CaKind::Dev`] CA serves tests and `kraken dev`; a
//! [`CaKind::Cluster`] CA is what `kraken ca init` makes for production (clusters may as
//! well bring their own CA and load identities with [`NodeIdentity::from_pem_files`]).
//!
//! Layout of the directory:
//! - `ca.crt`, `ca.key`: the CA (the key is written with mode 0600 on Unix);
//! - `<name>.crt`, `<name>.key`: node identities written by [`DevCa::write_node_cert`].
//!
//! Dev certificates do not expire in practice (valid 1975–4096): a dev cluster should
//! not stop working after a year. Cluster CAs and the certificates issued with
//! [`CertRequest::days`] are valid from an hour ago (clock skew) for the days asked. The CA
//! may sign only end-entity certificates (path length 0). Node certificates carry the node
//! name as their common name and as a DNS or IP SAN, and allow both `serverAuth` and
//! `clientAuth`, since every node is both; client-only certificates (operators' tools)
//! allow `clientAuth` alone, so they can call nodes but can never join a ring (member
//! records are checked as server certificates).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::ParsedCertificate;

use super::{ClusterCa, NodeIdentity, TlsError, provider, read_certs, read_file};

/// File name of the CA certificate in a dev CA directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key in a dev CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// What a CA is for; its common name (from which the issuer name of everything it signs
/// is rebuilt) and its validity follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaKind {
    /// Tests and `kraken dev`: never expires in practice.
    Dev,
    /// A production cluster CA (`kraken ca init`), valid for the days it was made for.
    Cluster,
}

impl CaKind {
    fn label(self) -> &'static str {
        match self {
            CaKind::Dev => "dev",
            CaKind::Cluster => "cluster",
        }
    }
}

/// One certificate to issue with [`DevCa::issue`].
#[derive(Debug, Clone, Copy)]
pub struct CertRequest<'a> {
    /// The common name; also the first SAN. Nodes use their `[node] name`.
    pub name: &'a str,
    /// More SANs (DNS names or IP addresses).
    pub sans: &'a [&'a str],
    /// Validity in days from now; `None` is the dev CA's "never expires".
    pub days: Option<u32>,
    /// `clientAuth` only (an operator's certificate): it can call nodes, not be one.
    pub client_only: bool,
    /// The organizational unit of the subject (e.g. the node's role), for people reading
    /// the certificate; nothing checks it.
    pub unit: Option<&'a str>,
    /// The PKCS#8/SEC1 PEM of a key to certify again (a renewal keeps the peer id);
    /// `None` generates a new key.
    pub key_pem: Option<&'a str>,
}

impl<'a> CertRequest<'a> {
    /// A node certificate for `name` with `name` as its only SAN, never expiring.
    pub fn node(name: &'a str) -> Self {
        CertRequest {
            name,
            sans: &[],
            days: None,
            client_only: false,
            unit: None,
            key_pem: None,
        }
    }
}

/// A CA held in a directory (dev or cluster, see [`CaKind`]).
pub struct DevCa {
    dir: PathBuf,
    cert: CertificateDer<'static>,
    key: KeyPair,
    kind: CaKind,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Creates a new CA in `dir` (created if missing). Refuses to overwrite an existing
    /// CA: every node of a cluster must trust the same one.
    pub fn create(dir: &Path) -> Result<Self, TlsError> {
        DevCa::create_kind(dir, CaKind::Dev, None)
    }

    /// Creates a production cluster CA in `dir` valid for `days` from now (refusing to
    /// overwrite one, as [`DevCa::create`]).
    pub fn create_cluster(dir: &Path, days: u32) -> Result<Self, TlsError> {
        DevCa::create_kind(dir, CaKind::Cluster, Some(days))
    }

    fn create_kind(dir: &Path, kind: CaKind, days: Option<u32>) -> Result<Self, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        if dir.join(CA_CERT_FILE).exists() || dir.join(CA_KEY_FILE).exists() {
            return Err(TlsError::CaExists(dir.to_path_buf()));
        }
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
        let mut params = ca_params(&key, kind);
        if let Some(days) = days {
            set_validity(&mut params, days);
        }
        let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
        write_new(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes(), true)?;
        write_new(&dir.join(CA_CERT_FILE), cert.pem().as_bytes(), false)?;
        Ok(DevCa {
            dir: dir.to_path_buf(),
            cert: cert.der().clone(),
            key,
            kind,
        })
    }

    /// Loads the CA that [`DevCa::create`] wrote to `dir`, checking that the key belongs to
    /// the certificate and that certificates it issues chain to it.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert = read_certs(&cert_path)?.swap_remove(0);
        let key_pem = String::from_utf8(read_file(&key_path)?).map_err(|_| TlsError::Pem {
            path: key_path.clone(),
            what: "not UTF-8 text",
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::BadKeyFile {
            path: key_path.clone(),
            source,
        })?;
        let parsed =
            ParsedCertificate::try_from(&cert).map_err(|source| TlsError::BadCertificateFile {
                path: cert_path.clone(),
                source,
            })?;
        if parsed.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice() {
            return Err(TlsError::KeyNotForCert {
                key: key_path,
                cert: cert_path,
            });
        }
        let mut ca = DevCa {
            dir: dir.to_path_buf(),
            cert,
            key,
            kind: CaKind::Dev,
        };
        // The issuer name is rebuilt from the key and the kind, so a CA made elsewhere would
        // sign certificates that do not chain to it: find out now, not at the first
        // handshake. The kind is whichever makes a probe chain.
        let mut refusal = None;
        for kind in [CaKind::Dev, CaKind::Cluster] {
            ca.kind = kind;
            match ca.probe() {
                Ok(()) => return Ok(ca),
                Err(e) => refusal = Some(e),
            }
        }
        match refusal {
            Some(TlsError::BadCertificate(source)) => Err(TlsError::NotDevCa {
                cert: cert_path,
                source,
            }),
            Some(e) => Err(e),
            None => unreachable!("two kinds were tried"),
        }
    }

    /// Whether a certificate this CA issues chains to its certificate.
    fn probe(&self) -> Result<(), TlsError> {
        let probe = self.issue_node_cert("probe.invalid")?;
        let probe_cert =
            ParsedCertificate::try_from(&probe.cert_chain[0]).map_err(TlsError::BadCertificate)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &probe_cert,
            &self.cluster_ca().root_store()?,
            &[],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(TlsError::BadCertificate)
    }

    /// What this CA is for.
    pub fn kind(&self) -> CaKind {
        self.kind
    }

    /// Loads the CA in `dir`, creating it first if there is none.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        if dir.join(CA_CERT_FILE).exists() {
            DevCa::load(dir)
        } else {
            DevCa::create(dir)
        }
    }

    /// The directory holding the CA.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The trust anchors every node of this cluster uses.
    pub fn cluster_ca(&self) -> ClusterCa {
        ClusterCa {
            roots: vec![self.cert.clone()],
        }
    }

    /// A new key and a certificate for node `name`, with `name` as its only SAN (a DNS
    /// name or an IP address: ASCII letters, digits, `-` and `.`).
    pub fn issue_node_cert(&self, name: &str) -> Result<NodeIdentity, TlsError> {
        self.issue_node_cert_with_sans(name, &[name])
    }

    /// A new key and a certificate for node `name` with the given SANs (DNS names or IP
    /// addresses).
    pub fn issue_node_cert_with_sans(
        &self,
        name: &str,
        sans: &[&str],
    ) -> Result<NodeIdentity, TlsError> {
        self.issue(&CertRequest {
            sans,
            ..CertRequest::node(name)
        })
    }

    /// A certificate as `request` asks, for a new key or the one it names.
    pub fn issue(&self, request: &CertRequest<'_>) -> Result<NodeIdentity, TlsError> {
        let key = match request.key_pem {
            Some(pem) => KeyPair::from_pem(pem).map_err(TlsError::Generate)?,
            None => {
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?
            }
        };
        self.sign(request, key)
    }

    /// A new certificate for the key of `identity` (e.g. to renew it); the [`PeerId`]
    /// stays the same.
    ///
    /// [`PeerId`]: crate::wire::PeerId
    pub fn renew_node_cert(
        &self,
        name: &str,
        identity: &NodeIdentity,
    ) -> Result<NodeIdentity, TlsError> {
        let key = KeyPair::try_from(&identity.key).map_err(TlsError::Generate)?;
        self.sign(&CertRequest::node(name), key)
    }

    /// Issues a certificate for `name` and writes `<dir>/<name>.crt` and `<dir>/<name>.key`
    /// (refusing to overwrite them).
    pub fn write_node_cert(&self, name: &str) -> Result<NodeIdentity, TlsError> {
        check_name(name)?;
        let identity = self.issue_node_cert(name)?;
        write_identity(&self.dir, name, &identity, true)?;
        Ok(identity)
    }

    /// Loads the identity [`DevCa::write_node_cert`] wrote for `name` in `dir`.
    pub fn load_node_cert(dir: &Path, name: &str) -> Result<NodeIdentity, TlsError> {
        check_name(name)?;
        let (cert_path, key_path) = node_paths(dir, name);
        NodeIdentity::from_pem_files(&cert_path, &key_path)
    }

    fn sign(&self, request: &CertRequest<'_>, key: KeyPair) -> Result<NodeIdentity, TlsError> {
        let name = request.name;
        check_name(name)?;
        let mut sans = vec![name.to_string()];
        // rcgen takes what parses as an IP address as one, the rest as DNS names.
        for san in request.sans {
            if !sans.iter().any(|s| s == san) {
                sans.push(san.to_string());
            }
        }
        let mut params = CertificateParams::new(sans).map_err(TlsError::Generate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(unit) = request.unit {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, unit);
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if request.client_only {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        };
        if let Some(days) = request.days {
            set_validity(&mut params, days);
        }
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let issuer = Issuer::new(ca_params(&self.key, self.kind), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(TlsError::Generate)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        NodeIdentity::new(vec![cert.der().clone()], key)
    }
}

/// Writes `<dir>/<name>.crt` and, if `with_key`, `<dir>/<name>.key` (mode 0600), refusing to
/// overwrite either. The certificate file holds the whole chain.
pub fn write_identity(
    dir: &Path,
    name: &str,
    identity: &NodeIdentity,
    with_key: bool,
) -> Result<(PathBuf, PathBuf), TlsError> {
    check_name(name)?;
    let (cert_path, key_path) = node_paths(dir, name);
    // Both paths are checked first, so a refusal writes nothing.
    for path in [&cert_path, &key_path]
        .into_iter()
        .take(1 + usize::from(with_key))
    {
        if path.exists() {
            return Err(TlsError::Io {
                op: "create",
                path: path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            });
        }
    }
    if with_key {
        let key_der = match &identity.key {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
            _ => return Err(TlsError::NotPkcs8),
        };
        write_new(&key_path, pem("PRIVATE KEY", key_der).as_bytes(), true)?;
    }
    let chain: String = identity
        .cert_chain
        .iter()
        .map(|c| pem("CERTIFICATE", c))
        .collect();
    write_new(&cert_path, chain.as_bytes(), false)?;
    Ok((cert_path, key_path))
}

/// Valid from an hour ago (clocks differ) for `days` days from now.
fn set_validity(params: &mut CertificateParams, days: u32) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
}

/// The CA's parameters, derived from its key and kind alone so that [`DevCa::load`] can
/// rebuild the issuer without parsing the certificate. The common name carries a short
/// hash of the key, so two clusters' CAs have different names.
fn ca_params(key: &KeyPair, kind: CaKind) -> CertificateParams {
    let spki_hash = blake3::hash(&key.subject_public_key_info());
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kraken");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("kraken {} CA {}", kind.label(), &spki_hash.to_hex()[..16]),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// 64 random bits (twice) from std's randomly keyed hasher: serials need uniqueness, not
/// secrecy.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and no leading zero byte to strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['.', '-'])
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadNodeName(name.to_string()))
    }
}

fn node_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

/// PEM-encodes one DER block (64-column base64, as RFC 7468 asks).
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        // Base64 output is ASCII.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a new file (never overwrites); keys get mode 0600 on Unix.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), TlsError> {
    let io_err = |op, source| TlsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| io_err("create", e))?;
    file.write_all(bytes).map_err(|e| io_err("write", e))?;
    file.sync_all().map_err(|e| io_err("sync", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::time::Duration;

    #[test]
    fn pem_encoding_round_trips() {
        for len in 0..70 {
            let der: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = pem("CERTIFICATE", &der);
            let back = CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice(), "length {len}");
        }
    }

    #[test]
    fn a_ca_loads_back_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        assert!(matches!(
            DevCa::create(dir.path()),
            Err(TlsError::CaExists(_))
        ));
        let loaded = DevCa::load(dir.path()).unwrap();
        assert_eq!(loaded.certificate(), ca.certificate());
        let again = DevCa::load_or_create(dir.path()).unwrap();
        assert_eq!(again.certificate(), ca.certificate());
        ca.write_node_cert("node-1").unwrap();
        assert!(ca.write_node_cert("node-1").is_err());
    }

    #[test]
    fn a_ca_with_someone_elses_key_is_rejected() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        DevCa::create(a.path()).unwrap();
        DevCa::create(b.path()).unwrap();
        std::fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
        assert!(matches!(
            DevCa::load(a.path()),
            Err(TlsError::KeyNotForCert { .. })
        ));
    }

    /// Whether `cert` verifies as a server certificate of `ca` at `at`.
    fn verifies(ca: &DevCa, cert: &CertificateDer<'_>, at: UnixTime) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(cert)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &ca.cluster_ca().root_store().unwrap(),
            &[],
            at,
            provider().signature_verification_algorithms.all,
        )
    }

    #[test]
    fn a_cluster_ca_loads_back_as_one_and_its_certificates_expire() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create_cluster(dir.path(), 10).unwrap();
        assert!(matches!(
            DevCa::create_cluster(dir.path(), 10),
            Err(TlsError::CaExists(_))
        ));
        let ca = {
            drop(ca);
            DevCa::load(dir.path()).unwrap()
        };
        assert_eq!(ca.kind(), CaKind::Cluster);
        let dev = tempfile::tempdir().unwrap();
        DevCa::create(dev.path()).unwrap();
        assert_eq!(DevCa::load(dev.path()).unwrap().kind(), CaKind::Dev);

        let id = ca
            .issue(&CertRequest {
                sans: &["10.0.0.7", "origin-1.example.com"],
                days: Some(30),
                unit: Some("origin"),
                ..CertRequest::node("origin-1")
            })
            .unwrap();
        let cert = &id.cert_chain[0];
        verifies(&ca, cert, UnixTime::now()).unwrap();
        let day = Duration::from_secs(86_400);
        let later = |d: Duration| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            UnixTime::since_unix_epoch(now + d)
        };
        verifies(&ca, cert, later(29 * day)).unwrap();
        assert!(matches!(
            verifies(&ca, cert, later(31 * day)),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        ));
        // A renewal certifies the same key: the same peer id.
        let key_pem = match &id.key {
            PrivateKeyDer::Pkcs8(k) => pem("PRIVATE KEY", k.secret_pkcs8_der()),
            other => panic!("{other:?}"),
        };
        let renewed = ca
            .issue(&CertRequest {
                key_pem: Some(&key_pem),
                days: Some(30),
                ..CertRequest::node("origin-1")
            })
            .unwrap();
        assert_eq!(renewed.peer_id, id.peer_id);
        assert_ne!(renewed.cert_chain, id.cert_chain);
    }

    #[test]
    fn a_client_only_certificate_is_no_server() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create_cluster(dir.path(), 10).unwrap();
        let admin = ca
            .issue(&CertRequest {
                client_only: true,
                days: Some(1),
                ..CertRequest::node("admin")
            })
            .unwrap();
        assert!(verifies(&ca, &admin.cert_chain[0], UnixTime::now()).is_err());
        let out = tempfile::tempdir().unwrap();
        let (cert, key) = write_identity(out.path(), "admin", &admin, true).unwrap();
        let back = NodeIdentity::from_pem_files(&cert, &key).unwrap();
        assert_eq!(back.peer_id, admin.peer_id);
        // Never overwritten.
        assert!(write_identity(out.path(), "admin", &admin, true).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn node_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::create(dir.path()).unwrap();
        for bad in ["", "../x", "a b", "-a", "a/b"] {
            assert!(ca.issue_node_cert(bad).is_err(), "{bad:?}");
        }
        ca.issue_node_cert("10.0.0.7").unwrap();
        ca.issue_node_cert_with_sans("origin-1", &["origin-1", "127.0.0.1", "::1"])
            .unwrap();
    }
}
