//! The image step's image and client: an OCI image layout written directly (layers of
//! seeded random bytes in stored gzip, a config whose `diff_ids` match them, a manifest,
//! `index.json` naming it `v1`), and `skopeo copy` pushing it to a registry and pulling it
//! back into a fresh layout, whose layer files are then checked against their digests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use kraken_storage::Digest;
use serde_json::json;

use super::curl::ClientCost;
use super::janitor::Tracked;
use crate::bench::data::{GzipLayer, read_once, write_stored_gzip};
use crate::bench::procs::reaped_children_cpu;
use crate::bench::run::hash_path;

/// The tag every layout names its image by.
pub const TAG: &str = "v1";

/// An OCI layout on disk.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Its directory.
    pub dir: PathBuf,
    /// The layers, in order.
    pub layers: Vec<GzipLayer>,
}

impl Layout {
    /// Bytes of its layers.
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

/// Writes a JSON document as a blob; its descriptor.
fn put_json(
    dir: &Path,
    media_type: &str,
    doc: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let bytes = serde_json::to_vec(doc)?;
    let digest = Digest::sha256_of(&bytes);
    std::fs::write(blob_path(dir, &digest), &bytes)?;
    Ok(json!({"mediaType": media_type, "digest": digest.to_string(), "size": bytes.len()}))
}

/// Writes an image of `layers` layers of `layer_len` bytes each (seeds from `seed` on) as
/// an OCI layout at `dir`.
pub fn write_layout(
    dir: &Path,
    layers: usize,
    layer_len: u64,
    seed: u64,
) -> anyhow::Result<Layout> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs)?;
    let tmp = dir.join("layer.tmp");
    let mut written = Vec::with_capacity(layers);
    for i in 0..layers {
        let layer = write_stored_gzip(&tmp, layer_len, seed.wrapping_add(i as u64))?;
        let path = blob_path(dir, &layer.digest);
        std::fs::rename(&tmp, &path)?;
        read_once(&path)?;
        written.push(layer);
    }
    let diff_ids: Vec<String> = written.iter().map(|l| l.diff_id.to_string()).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = put_json(dir, "application/vnd.oci.image.config.v1+json", &config)?;
    let layer_descs: Vec<_> = written
        .iter()
        .map(|l| {
            json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": l.digest.to_string(),
                "size": l.size,
            })
        })
        .collect();
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config,
        "layers": layer_descs,
    });
    let mut manifest = put_json(dir, manifest_type, &manifest)?;
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": TAG});
    let index = json!({"schemaVersion": 2, "manifests": [manifest]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(Layout {
        dir: dir.to_path_buf(),
        layers: written,
    })
}

/// Checks that the layout at `dir` holds every layer of `image`, each hashing to its digest.
pub fn verify_layers(dir: &Path, image: &Layout) -> anyhow::Result<()> {
    for l in &image.layers {
        let path = blob_path(dir, &l.digest);
        if hash_path(&path) != Some(l.digest) {
            bail!("{} is missing or does not hash to its name", path.display());
        }
    }
    Ok(())
}

/// `skopeo copy` with an accept-anything policy in `policy_dir` (no system policy needed)
/// and its temporary files in `tmp`.
#[derive(Debug, Clone)]
pub struct Skopeo {
    policy: PathBuf,
    tmp: PathBuf,
}

impl Skopeo {
    /// Writes the policy into `dir` and keeps skopeo's temporary files there.
    pub fn new(dir: &Path) -> anyhow::Result<Skopeo> {
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        Ok(Skopeo {
            policy,
            tmp: dir.to_path_buf(),
        })
    }

    /// Pushes the layout to `registry` (`HOST:PORT`) as `repo:v1`, over plain HTTP.
    pub fn push(&self, image: &Layout, registry: &str, repo: &str) -> anyhow::Result<ClientCost> {
        self.copy(&[
            "--dest-tls-verify=false".into(),
            format!("oci:{}:{TAG}", image.dir.display()),
            format!("docker://{registry}/{repo}:{TAG}"),
        ])
    }

    /// Pulls `repo:v1` from `registry` into a new layout at `dir`.
    pub fn pull(&self, registry: &str, repo: &str, dir: &Path) -> anyhow::Result<ClientCost> {
        self.copy(&[
            "--src-tls-verify=false".into(),
            format!("docker://{registry}/{repo}:{TAG}"),
            format!("oci:{}:{TAG}", dir.display()),
        ])
    }

    /// One `skopeo copy`: its wall time and CPU.
    fn copy(&self, args: &[String]) -> anyhow::Result<ClientCost> {
        let cpu0 = reaped_children_cpu();
        let start = std::time::Instant::now();
        let mut cmd = Command::new("skopeo");
        cmd.arg("--policy")
            .arg(&self.policy)
            .args(["copy", "--quiet"])
            .args(args)
            .env("TMPDIR", &self.tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Tracked::spawn(&mut cmd)?;
        let mut err = String::new();
        if let Some(mut e) = proc.child_mut().stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        let status = proc.wait().context("waiting for skopeo")?;
        let secs = start.elapsed().as_secs_f64();
        if !status.success() {
            bail!("skopeo copy {}: {}", args.join(" "), err.trim());
        }
        Ok(ClientCost {
            secs,
            cpu_s: reaped_children_cpu() - cpu0,
            ttfb_s: None,
            downloaded: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_names_its_layers_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let img = write_layout(&dir.path().join("img"), 2, 10_000, 5).unwrap();
        assert_eq!(img.layers.len(), 2);
        assert_ne!(img.layers[0].digest, img.layers[1].digest);
        assert!(img.layer_bytes() > 20_000);
        verify_layers(&img.dir, &img).unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(img.dir.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], TAG);
        let md: Digest = m["digest"].as_str().unwrap().parse().unwrap();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob_path(&img.dir, &md)).unwrap()).unwrap();
        assert_eq!(
            manifest["layers"][1]["digest"],
            img.layers[1].digest.to_string()
        );
        std::fs::write(blob_path(&img.dir, &img.layers[0].digest), b"torn").unwrap();
        assert!(verify_layers(&img.dir, &img).is_err());
    }
}
