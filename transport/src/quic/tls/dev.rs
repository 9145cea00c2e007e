//! A development cluster CA: one self-signed ECDSA P-256 CA in a directory, and node
//! certificates signed by it. For tests and `kraken dev`; production clusters bring their
//! own CA and load identities with [`NodeIdentity::from_pem_files`].
//!
//! Layout of the directory:
//! - `ca.crt`, `ca.key`: the CA (the key is written with mode 0600 on Unix);
//! - `<name>.crt`, `<name>.key`: node identities written by [`DevCa::write_node_cert`].
//!
//! Certificates made here do not expire in practice (valid 1975–4096): a dev cluster should
//! not stop working after a year. The CA may sign only end-entity certificates (path length
//! 0). Node certificates carry the node name as their common name and as a DNS or IP SAN,
//! and allow both `serverAuth` and `clientAuth`, since every node is both.

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

/// A development CA held in a directory.
pub struct DevCa {
    dir: PathBuf,
    cert: CertificateDer<'static>,
    key: KeyPair,
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
        let cert = ca_params(&key)
            .self_signed(&key)
            .map_err(TlsError::Generate)?;
        write_new(&dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes(), true)?;
        write_new(&dir.join(CA_CERT_FILE), cert.pem().as_bytes(), false)?;
        Ok(DevCa {
            dir: dir.to_path_buf(),
            cert: cert.der().clone(),
            key,
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
        let ca = DevCa {
            dir: dir.to_path_buf(),
            cert,
            key,
        };
        // The issuer name is rebuilt from the key, so a CA made elsewhere would sign
        // certificates that do not chain to it: find out now, not at the first handshake.
        let probe = ca.issue_node_cert("probe.invalid")?;
        let probe_cert =
            ParsedCertificate::try_from(&probe.cert_chain[0]).map_err(TlsError::BadCertificate)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &probe_cert,
            &ca.cluster_ca().root_store()?,
            &[],
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
        .map_err(|source| TlsError::NotDevCa {
            cert: cert_path,
            source,
        })?;
        Ok(ca)
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
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
        self.sign(name, sans, key)
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
        self.sign(name, &[name], key)
    }

    /// Issues a certificate for `name` and writes `<dir>/<name>.crt` and `<dir>/<name>.key`
    /// (refusing to overwrite them).
    pub fn write_node_cert(&self, name: &str) -> Result<NodeIdentity, TlsError> {
        check_name(name)?;
        let identity = self.issue_node_cert(name)?;
        let (cert_path, key_path) = node_paths(&self.dir, name);
        let key_der = match &identity.key {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
            _ => return Err(TlsError::NotPkcs8),
        };
        write_new(&key_path, pem("PRIVATE KEY", key_der).as_bytes(), true)?;
        write_new(
            &cert_path,
            pem("CERTIFICATE", &identity.cert_chain[0]).as_bytes(),
            false,
        )?;
        Ok(identity)
    }

    /// Loads the identity [`DevCa::write_node_cert`] wrote for `name` in `dir`.
    pub fn load_node_cert(dir: &Path, name: &str) -> Result<NodeIdentity, TlsError> {
        check_name(name)?;
        let (cert_path, key_path) = node_paths(dir, name);
        NodeIdentity::from_pem_files(&cert_path, &key_path)
    }

    fn sign(&self, name: &str, sans: &[&str], key: KeyPair) -> Result<NodeIdentity, TlsError> {
        check_name(name)?;
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(TlsError::Generate)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let issuer = Issuer::new(ca_params(&self.key), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(TlsError::Generate)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        NodeIdentity::new(vec![cert.der().clone()], key)
    }
}

/// The CA's parameters, derived from its key alone so that [`DevCa::load`] can rebuild the
/// issuer without parsing the certificate. The common name carries a short hash of the
/// key, so two dev clusters' CAs have different names.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let spki_hash = blake3::hash(&key.subject_public_key_info());
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "kraken");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("kraken dev CA {}", &spki_hash.to_hex()[..16]),
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
