//! A real client against the gateway: skopeo pushes an OCI image (with credentials),
//! lists its tags, inspects it and pulls it back. Skipped when `skopeo` is not installed.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use kraken_registry_gateway::{BasicCredential, GatewayConfig, PushAuth};
use kraken_storage::Digest;
use serde_json::{Value, json};

fn skopeo_available() -> bool {
    Command::new("skopeo")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::sha256_of(bytes);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

/// An OCI image layout with one image tagged `latest`; returns the config's digest.
fn make_layout(layout: &Path) -> Digest {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    // A layer: a tar holding one small file, built by hand.
    let mut tar = vec![0u8; 512];
    let name = b"hello.txt";
    tar[..name.len()].copy_from_slice(name);
    let content = b"hello from the gateway\n".repeat(200);
    for (off, field) in [(100, "0000644\0"), (108, "0000000\0"), (116, "0000000\0")] {
        tar[off..off + 8].copy_from_slice(field.as_bytes());
    }
    tar[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    tar[136..148].copy_from_slice(b"00000000000\0");
    tar[156] = b'0';
    tar[257..263].copy_from_slice(b"ustar\0");
    tar[263..265].copy_from_slice(b"00");
    tar[148..156].copy_from_slice(b"        ");
    let sum: u32 = tar.iter().map(|&b| u32::from(b)).sum();
    tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(&content);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let layer = write_blob(layout, &tar);
    let config_bytes = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
        "config": {},
    }))
    .unwrap();
    let config = write_blob(layout, &config_bytes);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": tar.len()}],
    }))
    .unwrap();
    let md = write_blob(layout, &manifest);
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    config
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_lists_inspects_and_pulls() {
    if !skopeo_available() {
        eprintln!("skopeo not installed: skipping");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let config_digest = make_layout(&src);
    let config = GatewayConfig {
        auth: Some(PushAuth {
            bearer_tokens: Vec::new(),
            basic: vec![BasicCredential {
                username: "ci".into(),
                password: "pw".into(),
            }],
            realm: "kraken".into(),
        }),
        ..push_config(&uploads_dir(&tmp))
    };
    let s = Server::start(MemRegistry::new(), config).await;
    let host = s.base.trim_start_matches("http://").to_string();
    let dst = tmp.path().join("dst");
    let (src_s, dst_s) = (src.display().to_string(), dst.display().to_string());

    let host2 = host.clone();
    let registry = s.registry.clone();
    tokio::task::spawn_blocking(move || {
        let image = format!("docker://{host2}/test/app:v1");
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "ci:pw",
            &format!("oci:{src_s}:latest"),
            &image,
        ]);
        let tags: Value = serde_json::from_str(&skopeo(&[
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{host2}/test/app"),
        ]))
        .unwrap();
        assert_eq!(tags["Tags"], json!(["v1"]));
        // skopeo compresses the uncompressed layer on the way, so the pushed manifest is
        // a new one; it must be what the tag points at. (It prints a newline after it.)
        let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &image]);
        let raw = raw.strip_suffix('\n').unwrap_or(&raw);
        assert_eq!(
            Some(Digest::sha256_of(raw.as_bytes())),
            registry.tag_of("test/app", "v1")
        );
        let manifest: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(manifest["config"]["digest"], config_digest.to_string());
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &image,
            &format!("oci:{dst_s}:pulled"),
        ]);
        // Registry to registry: the blobs are already there (cross-repository mount).
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-creds",
            "ci:pw",
            &image,
            &format!("docker://{host2}/test/other:v2"),
        ]);
    })
    .await
    .unwrap();

    // Every blob pulled is byte for byte what the registry holds; the config is the source's.
    let mut pulled = 0;
    for entry in std::fs::read_dir(dst.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        let d = Digest::sha256_of(&bytes);
        assert_eq!(d.hex(), entry.file_name().to_str().unwrap());
        assert_eq!(s.registry.blob(&d).as_deref(), Some(bytes.as_slice()));
        pulled += 1;
    }
    assert_eq!(pulled, 3);
    assert_eq!(
        s.registry.tag_of("test/other", "v2"),
        s.registry.tag_of("test/app", "v1")
    );
    assert_eq!(
        std::fs::read(dst.join("blobs/sha256").join(config_digest.hex())).unwrap(),
        std::fs::read(src.join("blobs/sha256").join(config_digest.hex())).unwrap()
    );
    s.stop().await;
}
