//! `DIR/cluster.json`: every node of a `kraken dev` cluster with its roles and addresses,
//! and the CA and admin certificate tools connect with. `kraken dev` writes it;
//! `krakenctl --cluster` and scripts read it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `DIR/cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster's id.
    pub cluster_id: String,
    /// The dev CA certificate.
    pub ca: PathBuf,
    /// A client certificate and key for tools.
    pub admin_cert: PathBuf,
    /// Its key.
    pub admin_key: PathBuf,
    /// Every node.
    pub nodes: Vec<ClusterFileNode>,
}

/// One node in `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFileNode {
    /// Its name.
    pub name: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// QUIC address.
    pub quic: SocketAddr,
    /// HTTP (health, metrics) address.
    pub http: Option<SocketAddr>,
    /// Gossip address (ring nodes).
    pub gossip: Option<SocketAddr>,
    /// Registry API (agents: pull; the proxy: push).
    #[serde(default)]
    pub registry: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_from_before_the_registry_field_still_parse() {
        let json = r#"{"cluster_id":"kraken-dev","ca":"ca/ca.crt","admin_cert":"ca/admin.crt",
            "admin_key":"ca/admin.key","nodes":[{"name":"origin-1","roles":["origin"],
            "quic":"127.0.0.1:7000","http":null,"gossip":"127.0.0.1:7001"}]}"#;
        let file: ClusterFile = serde_json::from_str(json).unwrap();
        assert_eq!(file.nodes[0].registry, None);
        let again: ClusterFile =
            serde_json::from_str(&serde_json::to_string(&file).unwrap()).unwrap();
        assert_eq!(again, file);
    }
}
