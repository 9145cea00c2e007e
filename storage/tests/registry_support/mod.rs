//! Test support for `registry_backend`: Debian's `docker-registry` on a loopback port
//! (open, htpasswd or token auth), a tiny HTTP server answering what a test tells it
//! (a token issuer signing ES256 JWTs, a rate-limiting or odd upstream), and pushes.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kraken_storage::Digest;

/// The registry binary.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A user and password of [`Auth::Htpasswd`] registries.
pub const USER: &str = "puller";
/// `USER`'s password.
pub const PASSWORD: &str = "sesame-42";
/// bcrypt of [`PASSWORD`] (libxcrypt: `perl -e 'print crypt("sesame-42", "$2b$05$abcdefghijklmnopqrstuu")'`).
const PASSWORD_BCRYPT: &str = "$2b$05$abcdefghijklmnopqrstuu9wSHF4IRUKGnY4NITof623lxGVf/o1G";

/// The token service and issuer names of [`Auth::Token`] registries.
pub const SERVICE: &str = "test-registry";
const ISSUER: &str = "test-issuer";

/// How a registry authenticates.
pub enum Auth<'a> {
    /// Not at all.
    Open,
    /// Basic, with [`USER`] / [`PASSWORD`].
    Htpasswd,
    /// Bearer tokens from this issuer.
    Token(&'a Issuer),
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts a registry with `auth`; waits until `/v2/` answers.
    pub fn start(auth: Auth<'_>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let auth_yaml = match auth {
            Auth::Open => String::new(),
            Auth::Htpasswd => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                    path.display()
                )
            }
            Auth::Token(issuer) => {
                let path = dir.path().join("root.pem");
                std::fs::write(&path, &issuer.cert_pem).unwrap();
                format!(
                    "auth:\n  token:\n    realm: {}/token\n    service: {SERVICE}\n    \
                     issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    issuer.server.url,
                    path.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n{auth_yaml}\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry runs");
        let registry = Registry {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                std::fs::read_to_string(registry.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    /// Where its files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A request a [`TinyServer`] saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a [`TinyServer`] answers. `content_length: false` leaves the header out (the body
/// then ends with the connection).
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub content_length: bool,
}

impl Reply {
    /// `status` with a body and its length.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.into(),
            content_length: true,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// An HTTP/1.1 server on a loopback port: one thread per connection, one request per
/// connection, no request bodies. Lives until the test process ends.
pub struct TinyServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TinyServer {
    /// Starts answering every request with `handler`.
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> TinyServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (handler, log) = (handler.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &*handler, &log));
            }
        });
        TinyServer { url, seen }
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Seen>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_lowercase(), v.trim().to_string()));
        }
    }
    let seen = Seen {
        method,
        target,
        headers,
    };
    let reply = handler(&seen);
    let is_head = seen.method == "HEAD";
    log.lock().unwrap().push(seen);
    let mut out = format!("HTTP/1.1 {} X\r\nconnection: close\r\n", reply.status);
    for (n, v) in &reply.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if reply.content_length {
        out.push_str(&format!("content-length: {}\r\n", reply.body.len()));
    }
    out.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(out.as_bytes());
    if !is_head {
        let _ = stream.write_all(&reply.body);
    }
}

/// A token issuer for [`Auth::Token`] registries: `GET /token?scope=…&service=…`
/// answers an ES256 JWT signed by a key whose self-signed certificate is the registry's
/// root bundle, granting pull and push on the scope's repository.
pub struct Issuer {
    /// The HTTP server (its `seen` counts token requests).
    pub server: TinyServer,
    cert_pem: String,
    signer: Arc<Signer>,
    /// `expires_in` of the answers, seconds.
    pub expires_in: Arc<AtomicU64>,
}

struct Signer {
    key: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    jti: AtomicUsize,
}

impl Signer {
    /// A JWT granting pull and push on `repository`.
    fn token(&self, repository: &str) -> String {
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": "tester", "aud": SERVICE,
            "exp": now + 600, "nbf": now - 10, "iat": now,
            "jti": format!("jti-{}", self.jti.fetch_add(1, Ordering::SeqCst)),
            "access": [{"type": "repository", "name": repository, "actions": ["pull", "push"]}],
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = ring::rand::SystemRandom::new();
        let sig = self.key.sign(&rng, signing_input.as_bytes()).unwrap();
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// The repository of a `repository:<name>:<actions>` scope.
fn scope_repository(scope: &str) -> &str {
    let rest = scope.strip_prefix("repository:").unwrap_or(scope);
    rest.rsplit_once(':').map_or(rest, |(name, _)| name)
}

/// The value of query parameter `name` in `target`, percent-decoded.
fn query_param(target: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://x{target}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl Issuer {
    /// Starts an issuer with a fresh P-256 key and certificate.
    pub fn start() -> Issuer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["token-issuer".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let rng = ring::rand::SystemRandom::new();
        let signer = Arc::new(Signer {
            key: ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &rng,
            )
            .unwrap(),
            cert_der: cert.der().to_vec(),
            jti: AtomicUsize::new(0),
        });
        let expires_in = Arc::new(AtomicU64::new(300));
        let (s, e) = (signer.clone(), expires_in.clone());
        let server = TinyServer::start(move |req| {
            let scope = query_param(&req.target, "scope").unwrap_or_default();
            let body = serde_json::json!({
                "token": s.token(scope_repository(&scope)),
                "expires_in": e.load(Ordering::SeqCst),
            });
            Reply::new(200, body.to_string()).header("content-type", "application/json")
        });
        Issuer {
            server,
            cert_pem: cert.pem(),
            signer,
            expires_in,
        }
    }

    /// A token for pushing to `repository` (minted directly, not counted as a request).
    pub fn push_token(&self, repository: &str) -> String {
        self.signer.token(repository)
    }

    /// Token requests served so far.
    pub fn requests(&self) -> usize {
        self.server.seen().len()
    }
}

/// Pushes to a registry with `authorization` (a whole header value) if given.
pub struct Pusher<'a> {
    pub url: &'a str,
    pub authorization: Option<String>,
    pub http: reqwest::Client,
}

impl Pusher<'_> {
    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(a) => r.header("authorization", a),
            None => r,
        }
    }

    /// Pushes a blob (POST then PUT), returns its digest.
    pub async fn blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let r = self
            .auth(
                self.http
                    .post(format!("{}/v2/{repo}/blobs/uploads/", self.url)),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "start upload: {:?}", r.text().await);
        let location = r.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.url)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let r = self
            .auth(self.http.put(format!("{location}{sep}digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "finish upload: {:?}", r.text().await);
        digest
    }

    /// Pushes a manifest of `media_type` under `reference`, returns its digest.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Digest {
        let r = self
            .auth(
                self.http
                    .put(format!("{}/v2/{repo}/manifests/{reference}", self.url)),
            )
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "put manifest: {:?}", r.text().await);
        Digest::sha256_of(body)
    }
}

/// A temp file path under `dir`.
pub fn file_in(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}
