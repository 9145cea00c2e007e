//! HTTPS: `serve_tls` with PEM files from disk, spoken to by a rustls client; blobs are
//! streamed over TLS, never redirected to the plain-HTTP blob server.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use common::*;
use kraken_registry_gateway::{serve_tls, tls_config_from_pem};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn serves_the_api_over_tls_from_pem_files() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).unwrap();
    let tls = tls_config_from_pem(&cert_path, &key_path).unwrap();
    assert!(tls_config_from_pem(&key_path, &key_path).is_err());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // A blob complete in the host's store, and a blob server configured: over TLS the
    // GET still streams it (a redirect to plain HTTP would downgrade the client).
    let registry = MemRegistry::new();
    let cas =
        kraken_storage::cas::Cas::open(kraken_storage::cas::CasConfig::at(tmp.path().join("cas")))
            .unwrap();
    let blob = b"a blob held here";
    let digest = registry.insert_blob(blob);
    cas.ingest(&digest, Some(blob.len() as u64), &blob[..])
        .unwrap();
    registry.cas.set(cas).ok().unwrap();
    let config = kraken_registry_gateway::GatewayConfig {
        blob_server: Some("127.0.0.1:9".parse().unwrap()),
        ..pull_config(&uploads_dir(&tmp))
    };
    let server = tokio::spawn(serve_tls(listener, registry, config, tls, async move {
        let _ = stopped.await;
    }));

    // A client that never handshakes does not block others.
    let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let get = |path: String| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            tls.write_all(request.as_bytes()).await.unwrap();
            let mut response = Vec::new();
            tls.read_to_end(&mut response).await.unwrap();
            String::from_utf8_lossy(&response).to_lowercase()
        }
    };
    let text = get("/v2/".into()).await;
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains("docker-distribution-api-version: registry/2.0"),
        "{text}"
    );
    assert!(text.ends_with("{}"), "{text}");
    let text = get(format!("/v2/library/app/blobs/{digest}")).await;
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.ends_with("a blob held here"), "{text}");

    stop.send(()).unwrap();
    drop(_idle);
    server.await.unwrap().unwrap();
}
