//! Where to connect and with which certificate: flags, environment, `cluster.json` and the
//! config file, merged into [`Settings`].
//!
//! Sources, strongest first (each key is taken from the first source that has it):
//!
//! 1. flags (`--seed`, `--ca`, `--cert`, `--key`) and their environment variables
//!    (`KRAKEN_SEED`, `KRAKEN_CA`, `KRAKEN_CERT`, `KRAKEN_KEY`);
//! 2. the `cluster.json` named by `--cluster` (or `KRAKEN_CLUSTER`), as `kraken dev` writes
//!    it: its CA, admin certificate and key, and its ring nodes as seeds;
//! 3. the config file (`--config`, `KRAKENCTL_CONFIG`, else `$XDG_CONFIG_HOME/krakenctl.toml`
//!    or `~/.config/krakenctl.toml` if it exists), a TOML file with the keys `seed`, `ca`,
//!    `cert`, `key` and `cluster` (relative paths are relative to the file);
//! 4. the `cluster.json` named by the config file's `cluster` key.
//!
//! Seeds are all-or-nothing per source: an explicit `--seed` is the only address tried;
//! from a `cluster.json` every origin and tracker is tried in turn until one answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kraken_client::cluster_file::ClusterFile;
use serde::Deserialize;

use crate::error::CtlError;

/// The connection flags, shared by every command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// A `cluster.json` as `kraken dev --data-dir DIR` writes it (CA, admin certificate,
    /// nodes).
    #[arg(long, global = true, env = "KRAKEN_CLUSTER", value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Any ring node (origin, tracker): HOST:PORT of its QUIC endpoint.
    #[arg(long, global = true, env = "KRAKEN_SEED", value_name = "HOST:PORT")]
    pub seed: Option<String>,
    /// The cluster CA certificate (PEM).
    #[arg(long, global = true, env = "KRAKEN_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The client certificate (PEM), signed by the cluster CA.
    #[arg(long, global = true, env = "KRAKEN_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "KRAKEN_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A TOML file with `seed`, `ca`, `cert`, `key` and `cluster` [default:
    /// ~/.config/krakenctl.toml if it exists].
    #[arg(long, global = true, env = "KRAKENCTL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `krakenctl.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// A ring node's QUIC address.
    pub seed: Option<String>,
    /// The cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
    /// A `cluster.json`.
    pub cluster: Option<PathBuf>,
}

impl ConfigFile {
    /// Reads and parses `path`; relative paths in it become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, CtlError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CtlError::BadArgument(format!("cannot read {}: {e}", path.display())))?;
        let mut file: ConfigFile = toml::from_str(&text)
            .map_err(|e| CtlError::BadArgument(format!("bad config {}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut file.ca,
            &mut file.cert,
            &mut file.key,
            &mut file.cluster,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(file)
    }
}

/// A node named in `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownNode {
    /// Its name.
    pub name: String,
    /// Its roles, by name.
    pub roles: Vec<String>,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its HTTP (health, metrics) address.
    pub http: Option<SocketAddr>,
}

/// Everything needed to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Addresses (`host:port`) to ask for the cluster view, in order.
    pub seeds: Vec<String>,
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The cluster id, when a `cluster.json` names it (the view must match).
    pub cluster_id: Option<String>,
    /// Every node of the `cluster.json`, agents included (agents do not gossip, so the
    /// cluster view lacks them).
    pub known_nodes: Vec<KnownNode>,
}

#[derive(Default)]
struct Layer {
    seeds: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cluster_id: Option<String>,
    known: Vec<KnownNode>,
}

/// Reads a `cluster.json`.
pub fn load_cluster_file(path: &Path) -> Result<ClusterFile, CtlError> {
    let text = std::fs::read(path)
        .map_err(|e| CtlError::BadArgument(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| CtlError::BadArgument(format!("bad cluster file {}: {e}", path.display())))
}

/// A path from `cluster.json`: `kraken dev` writes them relative to its working directory
/// when its `--data-dir` is relative, so a relative path that does not exist from here is
/// looked for next to the file (`DIR/ca/…`).
fn cluster_path(file: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    if let Some(name) = p.file_name() {
        for candidate in [dir.join("ca").join(name), dir.join(name)] {
            if candidate.exists() {
                return candidate;
            }
        }
    }
    p.to_path_buf()
}

fn cluster_layer(path: &Path) -> Result<Layer, CtlError> {
    let file = load_cluster_file(path)?;
    let ring_first = |n: &&kraken_client::cluster_file::ClusterFileNode| {
        !n.roles
            .iter()
            .any(|r| r == "origin" || r == "tracker" || r == "build-index")
    };
    let mut ring: Vec<_> = file.nodes.iter().collect();
    ring.sort_by_key(ring_first);
    Ok(Layer {
        seeds: ring
            .iter()
            .filter(|n| !ring_first(n))
            .map(|n| n.quic.to_string())
            .collect(),
        ca: Some(cluster_path(path, &file.ca)),
        cert: Some(cluster_path(path, &file.admin_cert)),
        key: Some(cluster_path(path, &file.admin_key)),
        cluster_id: Some(file.cluster_id.clone()),
        known: file
            .nodes
            .iter()
            .map(|n| KnownNode {
                name: n.name.clone(),
                roles: n.roles.clone(),
                quic: n.quic,
                http: n.http,
            })
            .collect(),
    })
}

/// The default config file, if it exists.
fn default_config() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    let path = base.join("krakenctl.toml");
    path.is_file().then_some(path)
}

impl Settings {
    /// Merges the sources (see the module docs).
    pub fn resolve(args: &ConnectArgs) -> Result<Settings, CtlError> {
        let mut layers = vec![Layer {
            seeds: args.seed.iter().cloned().collect(),
            ca: args.ca.clone(),
            cert: args.cert.clone(),
            key: args.key.clone(),
            ..Layer::default()
        }];
        if let Some(path) = &args.cluster {
            layers.push(cluster_layer(path)?);
        }
        let config = match &args.config {
            Some(p) => Some(ConfigFile::load(p)?),
            None => default_config().map(|p| ConfigFile::load(&p)).transpose()?,
        };
        if let Some(config) = config {
            layers.push(Layer {
                seeds: config.seed.iter().cloned().collect(),
                ca: config.ca.clone(),
                cert: config.cert.clone(),
                key: config.key.clone(),
                ..Layer::default()
            });
            if let Some(path) = &config.cluster {
                layers.push(cluster_layer(path)?);
            }
        }
        let pick = |f: fn(&Layer) -> Option<PathBuf>, what: &str, flag: &str| {
            layers.iter().find_map(f).ok_or_else(|| {
                CtlError::Usage(format!(
                    "no {what}: give --cluster, or {flag} (or `{}` in krakenctl.toml)",
                    flag.trim_start_matches('-')
                ))
            })
        };
        let ca = pick(|l| l.ca.clone(), "cluster CA", "--ca")?;
        let cert = pick(|l| l.cert.clone(), "client certificate", "--cert")?;
        let key = pick(|l| l.key.clone(), "client key", "--key")?;
        let seeds = layers
            .iter()
            .find(|l| !l.seeds.is_empty())
            .map(|l| l.seeds.clone())
            .ok_or_else(|| {
                CtlError::Usage(
                    "no seed: give --cluster, or --seed HOST:PORT (or KRAKEN_SEED, or `seed` \
                     in krakenctl.toml)"
                        .into(),
                )
            })?;
        Ok(Settings {
            seeds,
            ca,
            cert,
            key,
            cluster_id: layers.iter().find_map(|l| l.cluster_id.clone()),
            known_nodes: layers
                .iter()
                .find(|l| !l.known.is_empty())
                .map(|l| l.known.clone())
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write_cluster(dir: &Path) -> PathBuf {
        let json = r#"{
          "cluster_id": "kraken-dev",
          "ca": "/x/ca/ca.crt",
          "admin_cert": "/x/ca/admin.crt",
          "admin_key": "/x/ca/admin.key",
          "nodes": [
            {"name": "agent-1", "roles": ["agent"], "quic": "127.0.0.1:9001", "http": null, "gossip": null},
            {"name": "origin-1", "roles": ["origin"], "quic": "127.0.0.1:9002", "http": null, "gossip": null},
            {"name": "tracker-1", "roles": ["tracker"], "quic": "127.0.0.1:9003", "http": null, "gossip": null}
          ]
        }"#;
        let path = dir.join("cluster.json");
        std::fs::write(&path, json).unwrap();
        path
    }

    #[test]
    fn the_cluster_file_gives_certificates_and_ring_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let args = ConnectArgs {
            cluster: Some(write_cluster(dir.path())),
            config: Some(dir.path().join("none.toml")),
            ..ConnectArgs::default()
        };
        // A named config file that does not exist is an error …
        assert_eq!(
            Settings::resolve(&args).unwrap_err().exit_code(),
            crate::error::exit::BAD_ARGUMENT
        );
        std::fs::write(dir.path().join("none.toml"), "").unwrap();
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.seeds, ["127.0.0.1:9002", "127.0.0.1:9003"]);
        assert_eq!(s.ca, PathBuf::from("/x/ca/ca.crt"));
        assert_eq!(s.cluster_id.as_deref(), Some("kraken-dev"));
        assert_eq!(s.known_nodes.len(), 3);
    }

    #[test]
    fn flags_win_over_the_cluster_file_and_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("krakenctl.toml");
        std::fs::write(
            &config,
            "seed = \"10.0.0.1:7000\"\nca = \"conf-ca.crt\"\ncert = \"c.crt\"\nkey = \"c.key\"\n",
        )
        .unwrap();
        let args = ConnectArgs {
            seed: Some("127.0.0.1:1".into()),
            cert: Some("/flag.crt".into()),
            cluster: Some(write_cluster(dir.path())),
            config: Some(config.clone()),
            ..ConnectArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.seeds, ["127.0.0.1:1"]);
        assert_eq!(s.cert, PathBuf::from("/flag.crt"));
        assert_eq!(s.ca, PathBuf::from("/x/ca/ca.crt"));
        // Without the cluster file the config file fills in, relative to itself.
        let args = ConnectArgs {
            config: Some(config),
            ..ConnectArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.seeds, ["10.0.0.1:7000"]);
        assert_eq!(s.ca, dir.path().join("conf-ca.crt"));
    }

    #[test]
    fn nothing_to_connect_with_is_a_usage_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.toml"), "").unwrap();
        let args = ConnectArgs {
            seed: Some("127.0.0.1:1".into()),
            config: Some(dir.path().join("empty.toml")),
            ..ConnectArgs::default()
        };
        let e = Settings::resolve(&args).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::exit::USAGE);
        assert!(e.to_string().contains("--ca"), "{e}");
    }
}
