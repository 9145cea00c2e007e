//! A node's configuration: one TOML file, every key defaulted, validated at start.
//!
//! See `examples/*.toml` for a documented file per role. Sections: `[node]` (name, roles,
//! data directory, cluster id, logs), `[quic]`, `[tls]`, `[gossip]` (ring nodes),
//! `[view]` (agents), `[http]`, `[store]` (the CAS: quota, TTI, piece lengths),
//! `[swarm]` (the agent role's swarm settings), `[origin]` (with the origin role's swarm
//! settings in `[origin.swarm]`), `[tracker]`, `[agent]`, `[writeback_queue]` and the
//! ordered `[[backends]]` list (origins).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kraken_membership::Role;
use kraken_storage::backend::RouterConfig;
use kraken_storage::cas::CasConfig;
use kraken_storage::queue::QueueConfig;
use kraken_transport::swarm::handout::HandoutConfigError;
use kraken_transport::swarm::{SwarmConfig, SwarmConfigError};
use serde::{Deserialize, Serialize};

use crate::agent::AgentConfig;
use crate::buildindex::BuildIndexConfig;
use crate::origin::OriginConfig;
use crate::tracker::TrackerConfig;

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or settings contradict each other.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A section (or a value) is rejected by the part that owns it.
    #[error("invalid configuration: {section}: {source}")]
    Section {
        /// The section or key: `store`, `node.name`, ….
        section: &'static str,
        /// What is wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The swarm settings of a role are unusable.
    #[error("invalid configuration: {section}: {source}")]
    Swarm {
        /// Their section: `swarm` or `origin.swarm`.
        section: &'static str,
        /// What is wrong.
        source: SwarmConfigError,
    },
    /// The tracker's handout settings are unusable.
    #[error("invalid configuration: tracker.{0}")]
    Handout(#[source] HandoutConfigError),
    /// `[origin]` cannot work.
    #[error("invalid configuration: {0}")]
    Origin(#[from] crate::origin::OriginConfigError),
    /// `[build_index]` cannot work.
    #[error("invalid configuration: {0}")]
    BuildIndex(#[from] crate::buildindex::BuildIndexConfigError),
    /// `[agent]` cannot work.
    #[error("invalid configuration: {0}")]
    Agent(#[from] crate::agent::AgentConfigError),
    /// `[tracker]` cannot work.
    #[error("invalid configuration: {0}")]
    Tracker(#[from] crate::tracker::TrackerConfigError),
    /// `[[registry.upstreams]]` cannot work.
    #[error("invalid configuration: {0}")]
    Upstreams(#[from] crate::upstream::UpstreamError),
    /// `[registry.notifications]` cannot work.
    #[error("invalid configuration: {0}")]
    Notifications(#[from] crate::notify::NotificationsError),
}

/// A role a node process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Seeds and stores blobs.
    Origin,
    /// Hands out peers and metainfo.
    Tracker,
    /// Durable tags and their replication.
    BuildIndex,
    /// Pulls and seeds on a host.
    Agent,
    /// The push side of the registry API: uploads go to the origins, tags to the
    /// build-index.
    Proxy,
}

impl NodeRole {
    /// Its name in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Origin => "origin",
            NodeRole::Tracker => "tracker",
            NodeRole::BuildIndex => "build-index",
            NodeRole::Agent => "agent",
            NodeRole::Proxy => "proxy",
        }
    }

    /// The ring it joins, if any.
    pub fn ring(self) -> Option<Role> {
        match self {
            NodeRole::Origin => Some(Role::Origin),
            NodeRole::Tracker => Some(Role::Tracker),
            NodeRole::BuildIndex => Some(Role::BuildIndex),
            NodeRole::Agent | NodeRole::Proxy => None,
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[quic]`.
    pub quic: QuicSection,
    /// `[tls]`.
    pub tls: TlsSection,
    /// `[gossip]`.
    pub gossip: GossipSection,
    /// `[view]`.
    pub view: ViewSection,
    /// `[http]`.
    pub http: HttpSection,
    /// `[registry]`: the Docker Registry / OCI HTTP API (agents: pull; proxies: push).
    pub registry: RegistrySection,
    /// `[store]`: the CAS (its `root` defaults to `<data_dir>/cas`).
    pub store: Option<CasConfig>,
    /// `[swarm]`: the agent role's swarm settings (an origin's are `[origin.swarm]`).
    pub swarm: SwarmConfig,
    /// `[origin]`.
    pub origin: OriginConfig,
    /// `[tracker]`.
    pub tracker: TrackerConfig,
    /// `[agent]`.
    pub agent: AgentConfig,
    /// `[build_index]`.
    pub build_index: BuildIndexConfig,
    /// `[writeback_queue]`.
    pub writeback_queue: QueueConfig,
    /// `[[backends]]` (origins): namespace regex → backend, first match wins.
    pub backends: Vec<kraken_storage::backend::RouteConfig>,
    /// `[discovery]` (agents and origins): trackers, the DHT, or both.
    pub discovery: crate::discovery::DiscoveryConfig,
}

/// `[node]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name: its ring id (stable across restarts, unique in the cluster).
    pub name: String,
    /// Roles this process runs (the command line may add more).
    pub roles: Vec<NodeRole>,
    /// Where the node keeps its state.
    pub data_dir: PathBuf,
    /// The cluster's id; nodes of other clusters are refused.
    pub cluster_id: String,
    /// Logs as JSON lines instead of text.
    pub json_logs: bool,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: String::new(),
            roles: Vec::new(),
            data_dir: PathBuf::from("/var/lib/kraken"),
            cluster_id: "kraken".into(),
            json_logs: false,
        }
    }
}

/// `[quic]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicSection {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Address peers dial (default: `listen`; required when `listen` is unspecified).
    pub advertise: Option<SocketAddr>,
}

impl Default for QuicSection {
    fn default() -> Self {
        QuicSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 7600)),
            advertise: None,
        }
    }
}

/// `[tls]`: the cluster CA and this node's certificate (PEM files).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// CA certificate.
    pub ca: PathBuf,
    /// This node's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// `[gossip]` (ring nodes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipSection {
    /// UDP address for gossip.
    pub listen: SocketAddr,
    /// Address other ring nodes reach it at (default: `listen`).
    pub advertise: Option<SocketAddr>,
    /// Gossip addresses of other ring nodes (`host:port`); one is enough.
    pub seeds: Vec<String>,
    /// Gossip round interval, ms.
    pub interval_ms: u64,
    /// Highest ring weight a gossiped member may claim; higher claims are lowered to it
    /// (default 10).
    pub max_member_weight: u32,
}

impl Default for GossipSection {
    fn default() -> Self {
        GossipSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 7601)),
            advertise: None,
            seeds: Vec::new(),
            interval_ms: 1000,
            max_member_weight: kraken_membership::gossip::DEFAULT_MAX_MEMBER_WEIGHT,
        }
    }
}

/// `[view]` (agents): where to read the cluster view.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ViewSection {
    /// QUIC addresses of ring nodes (`host:port`); one is enough.
    pub seeds: Vec<String>,
    /// How often to refresh, seconds.
    pub refresh_secs: u64,
}

impl Default for ViewSection {
    fn default() -> Self {
        ViewSection {
            seeds: Vec::new(),
            refresh_secs: 10,
        }
    }
}

/// `[http]`: health, readiness and metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// TCP address.
    pub listen: SocketAddr,
    /// `[http.limits]`: connections and timeouts.
    pub limits: ListenerLimits,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7602)),
            limits: ListenerLimits::default(),
        }
    }
}

/// `[http.limits]` and `[registry.limits]`: what one HTTP listener holds for its clients
/// (see `kraken_registry_gateway::HttpLimits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// Connections served at once; past it a new one is answered `503` and closed.
    pub max_connections: usize,
    /// Longest time from a request head's first byte to its end, ms.
    pub header_read_timeout_ms: u64,
    /// A connection with no request in progress and nothing received (or a response
    /// the client does not read) for this long is closed, ms.
    pub idle_timeout_ms: u64,
    /// Longest wait for the next bytes of a request body, ms.
    pub body_read_timeout_ms: u64,
    /// Slowest request body accepted, bytes per second of waiting (after the first
    /// `body_read_timeout_ms` of waiting); 0: no minimum.
    pub body_min_rate: u64,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits::from(&kraken_registry_gateway::HttpLimits::default())
    }
}

impl From<&kraken_registry_gateway::HttpLimits> for ListenerLimits {
    fn from(l: &kraken_registry_gateway::HttpLimits) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ListenerLimits {
            max_connections: l.max_connections,
            header_read_timeout_ms: ms(l.header_read_timeout),
            idle_timeout_ms: ms(l.idle_timeout),
            body_read_timeout_ms: ms(l.body_read_timeout),
            body_min_rate: l.body_min_rate,
        }
    }
}

impl ListenerLimits {
    /// The listener's limits.
    pub fn http_limits(&self) -> kraken_registry_gateway::HttpLimits {
        kraken_registry_gateway::HttpLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_read_timeout_ms),
            body_min_rate: self.body_min_rate,
            ..kraken_registry_gateway::HttpLimits::default()
        }
    }
}

impl HttpSection {
    /// Where to serve, if at all.
    pub fn address(&self) -> Option<SocketAddr> {
        self.enabled.then_some(self.listen)
    }
}

/// `[registry]`: the registry HTTP API on agents (pull, as a containerd mirror) and
/// proxies (push).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySection {
    /// Serve the registry API (agents and proxies only).
    pub enabled: bool,
    /// TCP address.
    pub listen: SocketAddr,
    /// Where upload sessions are staged (proxies; default `<data_dir>/registry-uploads`).
    pub uploads_dir: Option<PathBuf>,
    /// Largest manifest accepted or served, bytes.
    pub max_manifest_len: u64,
    /// Largest page of a tag list or the catalog.
    pub page_limit: usize,
    /// Bearer tokens accepted for pushes (none and no users: pushes need no credentials).
    pub push_tokens: Vec<String>,
    /// `user:password` pairs accepted (HTTP basic) for pushes.
    pub push_users: Vec<String>,
    /// Serve HTTPS with this certificate chain (PEM); with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The HTTPS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Agents: registries to pass through to for repositories the cluster lacks
    /// (`[[registry.upstreams]] namespace = "<regex>", url = "https://…"`).
    pub upstreams: Vec<crate::upstream::UpstreamConfig>,
    /// Agents: serve blobs complete on this host from a zero-copy blob server (`sendfile`
    /// from the store), which blob `GET`s are redirected to. Plain HTTP only: off while
    /// `tls_cert` is set.
    pub blob_server: bool,
    /// The blob server's TCP address (default: `listen`'s IP, a port the OS picks; the
    /// redirect names whatever was bound).
    pub blob_listen: Option<SocketAddr>,
    /// Proxies: `[registry.notifications]`, preheating what a registry's push notifications
    /// and Harbor webhooks name (off without a token).
    pub notifications: crate::notify::NotificationsConfig,
    /// Proxies: serve pushes without credentials (no `push_tokens`, no `push_users`) on
    /// an address beyond loopback. Off: such a proxy refuses to start.
    pub allow_anonymous_push: bool,
    /// Proxies: spill what a streamed (monolithic) push has taken of its body to an
    /// unnamed, unsynced file in `uploads_dir`, so that the push moves to the next owner
    /// when its origin dies mid-body. Off: such a push fails (503) and the client sends it
    /// again. Costs one sequential write of each pushed byte to the proxy's disk (mostly
    /// page cache).
    pub spill_pushes: bool,
    /// Proxies: pass a chunked push's bytes (skopeo's, podman's, docker's) on to an
    /// origin while they arrive, as well as staging them in `uploads_dir`, so that the
    /// closing `PUT` commits them there instead of sending the blob again. Costs nothing
    /// when it cannot be used: the staged copy is sent as before.
    pub pass_on_chunks: bool,
    /// Proxies: open upload sessions, all clients together; past it `429`.
    pub max_upload_sessions: u64,
    /// Proxies: open upload sessions of one client address.
    pub max_upload_sessions_per_client: u64,
    /// Proxies: bytes staged in upload sessions, all clients together.
    pub max_staged_bytes: u64,
    /// Proxies: bytes staged in the upload sessions of one client address.
    pub max_staged_bytes_per_client: u64,
    /// Proxies: an upload session that received no byte this long after it started is
    /// removed, seconds.
    pub empty_upload_ttl_secs: u64,
    /// `[registry.limits]`: connections and timeouts of the registry API's listener.
    pub limits: ListenerLimits,
}

impl RegistrySection {
    /// The caps on upload sessions.
    pub fn upload_limits(&self) -> kraken_registry_gateway::UploadLimits {
        kraken_registry_gateway::UploadLimits {
            max_sessions: self.max_upload_sessions,
            max_sessions_per_client: self.max_upload_sessions_per_client,
            max_staged_bytes: self.max_staged_bytes,
            max_staged_bytes_per_client: self.max_staged_bytes_per_client,
            empty_ttl: Duration::from_secs(self.empty_upload_ttl_secs),
        }
    }

    /// Whether pushes need credentials.
    pub fn push_authenticated(&self) -> bool {
        !self.push_tokens.is_empty() || !self.push_users.is_empty()
    }

    /// Where the blob server listens, if this node runs one: agents with a plain-HTTP
    /// registry API and `blob_server` on.
    pub fn blob_address(&self) -> Option<SocketAddr> {
        (self.enabled && self.blob_server && self.tls_cert.is_none()).then(|| {
            self.blob_listen
                .unwrap_or_else(|| SocketAddr::new(self.listen.ip(), 0))
        })
    }
}

impl Default for RegistrySection {
    fn default() -> Self {
        let uploads = kraken_registry_gateway::UploadLimits::default();
        RegistrySection {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            uploads_dir: None,
            max_manifest_len: 4 << 20,
            page_limit: 1000,
            push_tokens: Vec::new(),
            push_users: Vec::new(),
            tls_cert: None,
            tls_key: None,
            upstreams: Vec::new(),
            blob_server: true,
            blob_listen: None,
            notifications: crate::notify::NotificationsConfig::default(),
            allow_anonymous_push: false,
            spill_pushes: true,
            pass_on_chunks: true,
            max_upload_sessions: uploads.max_sessions,
            max_upload_sessions_per_client: uploads.max_sessions_per_client,
            max_staged_bytes: uploads.max_staged_bytes,
            max_staged_bytes_per_client: uploads.max_staged_bytes_per_client,
            empty_upload_ttl_secs: uploads.empty_ttl.as_secs(),
            limits: ListenerLimits::default(),
        }
    }
}

impl ConfigError {
    fn section(section: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ConfigError::Section {
            section,
            source: Box::new(e),
        }
    }
}

impl NodeConfig {
    /// Reads and parses a file (call [`NodeConfig::validate`] once the command line has
    /// added its roles).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line_error(&text, &e),
        })?;
        Ok(config)
    }

    /// The CAS config, rooted under the data directory unless set.
    pub fn store_config(&self) -> CasConfig {
        match &self.store {
            Some(c) if c.root != CasConfig::default().root => c.clone(),
            Some(c) => CasConfig {
                root: self.node.data_dir.join("cas"),
                ..c.clone()
            },
            None => CasConfig::at(self.node.data_dir.join("cas")),
        }
    }

    /// The address peers dial.
    pub fn quic_advertise(&self) -> SocketAddr {
        self.quic.advertise.unwrap_or(self.quic.listen)
    }

    /// The swarm settings of this node's exchange, with a fresh random `rng_seed`: the
    /// origin role's on an origin, else the agent role's.
    pub fn swarm_config(&self) -> SwarmConfig {
        SwarmConfig {
            rng_seed: rand::random(),
            ..self.role_swarm().1.clone()
        }
    }

    /// The section and settings [`NodeConfig::swarm_config`] starts from.
    fn role_swarm(&self) -> (&'static str, &SwarmConfig) {
        if self.has(NodeRole::Origin) {
            ("origin.swarm", &self.origin.swarm)
        } else {
            ("swarm", &self.swarm)
        }
    }

    /// Whether the node runs `role`.
    pub fn has(&self, role: NodeRole) -> bool {
        self.node.roles.contains(&role)
    }

    /// Whether the node gossips (runs a ring role).
    pub fn is_ring_node(&self) -> bool {
        self.node.roles.iter().any(|r| r.ring().is_some())
    }

    /// Checks everything that can be checked before binding sockets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node.roles.is_empty() {
            return bad("no roles: set node.roles or name them on the command line".into());
        }
        if self.node.name.is_empty() {
            return bad("node.name is empty: every node needs a stable, unique name".into());
        }
        kraken_membership::NodeId::new(self.node.name.clone())
            .map_err(|e| ConfigError::section("node.name", e))?;
        kraken_membership::ClusterId::new(self.node.cluster_id.clone())
            .map_err(|e| ConfigError::section("node.cluster_id", e))?;
        if self.has(NodeRole::Origin) && self.has(NodeRole::Agent) {
            return bad("one process cannot be both origin and agent (each owns a store)".into());
        }
        if self.has(NodeRole::Proxy) && (self.has(NodeRole::Agent) || self.has(NodeRole::Origin)) {
            return bad(
                "a proxy runs apart from agents and origins (each serves its own registry API)"
                    .into(),
            );
        }
        crate::upstream::validate(&self.registry.upstreams)?;
        self.registry.notifications.validate()?;
        if self.registry.tls_cert.is_some() != self.registry.tls_key.is_some() {
            return bad("registry.tls_cert and registry.tls_key go together".into());
        }
        if self.registry.blob_listen.is_some() && self.registry.tls_cert.is_some() {
            return bad(
                "registry.blob_listen with registry.tls_cert: the blob server is plain HTTP \
                 and stays off behind TLS; remove blob_listen"
                    .into(),
            );
        }
        if let Some(bad_user) = self.registry.push_users.iter().find(|u| !u.contains(':')) {
            return bad(format!(
                "registry.push_users: {:?} is not user:password",
                bad_user.split(':').next().unwrap_or("")
            ));
        }
        if self.registry.page_limit == 0 || self.registry.max_manifest_len == 0 {
            return bad("registry.page_limit and registry.max_manifest_len must be above 0".into());
        }
        if let Err(e) = self.http.limits.http_limits().validate() {
            return bad(format!("http.limits: {e}"));
        }
        if let Err(e) = self.registry.limits.http_limits().validate() {
            return bad(format!("registry.limits: {e}"));
        }
        let r = &self.registry;
        if self.has(NodeRole::Proxy)
            && r.enabled
            && !r.push_authenticated()
            && !r.allow_anonymous_push
            && !r.listen.ip().is_loopback()
        {
            return bad(format!(
                "the proxy's registry API listens on {} (not loopback) with no push_tokens \
                 and no push_users: anyone reaching it could push, overwrite tags and \
                 delete; configure credentials or set registry.allow_anonymous_push = true",
                r.listen
            ));
        }
        if self.has(NodeRole::Proxy) && self.view.seeds.is_empty() && !self.is_ring_node() {
            return bad("a proxy needs view.seeds: the QUIC address of any ring node".into());
        }
        if self.quic_advertise().ip().is_unspecified() {
            return bad(format!(
                "quic.advertise is needed when quic.listen is {}: peers must know where to dial",
                self.quic.listen
            ));
        }
        if self.is_ring_node() && self.gossip.interval_ms == 0 {
            return bad("gossip.interval_ms must be above 0".into());
        }
        if self.is_ring_node() && self.gossip.max_member_weight == 0 {
            return bad("gossip.max_member_weight must be above 0".into());
        }
        if self.is_ring_node()
            && self.gossip.listen.ip().is_unspecified()
            && self.gossip.advertise.is_none()
        {
            return bad(format!(
                "gossip.advertise is needed when gossip.listen is {}: other ring nodes must know where to reach it",
                self.gossip.listen
            ));
        }
        if self.has(NodeRole::Agent) && !self.is_ring_node() && self.view.seeds.is_empty() {
            return bad("an agent needs view.seeds: the QUIC address of any ring node".into());
        }
        if self.view.refresh_secs == 0 {
            return bad("view.refresh_secs must be above 0".into());
        }
        for (name, path) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if path.as_os_str().is_empty() {
                return bad(format!("{name} is not set"));
            }
        }
        self.store_config()
            .validate()
            .map_err(|e| ConfigError::section("store", e))?;
        let (section, swarm) = self.role_swarm();
        swarm
            .validate()
            .map_err(|source| ConfigError::Swarm { section, source })?;
        self.writeback_queue
            .validate()
            .map_err(|e| ConfigError::section("writeback_queue", e))?;
        if self.has(NodeRole::Origin) {
            self.origin.validate()?;
        }
        if self.has(NodeRole::BuildIndex) {
            self.build_index.validate()?;
        }
        if self.has(NodeRole::Origin) || self.has(NodeRole::BuildIndex) {
            RouterConfig {
                backends: self.backends.clone(),
            }
            .validate()
            .map_err(|e| ConfigError::section("backends", e))?;
        }
        if self.has(NodeRole::Tracker) {
            self.tracker
                .handout
                .validate()
                .map_err(ConfigError::Handout)?;
            self.tracker.validate()?;
        }
        if self.has(NodeRole::Agent) {
            self.agent.validate()?;
        }
        if self.has(NodeRole::Agent) || self.has(NodeRole::Origin) {
            self.discovery
                .validate()
                .map_err(|e| ConfigError::section("discovery", e))?;
        }
        Ok(())
    }
}

/// A TOML error on one line: where, what, and the offending source line (which names the
/// key even when the parser's message does not).
fn one_line_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}: {message} (in `{source}`)")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn minimal() -> NodeConfig {
        toml::from_str(
            r#"
            [node]
            name = "origin-1"
            roles = ["origin", "tracker"]
            data_dir = "/tmp/x"
            [quic]
            listen = "127.0.0.1:7600"
            [gossip]
            listen = "127.0.0.1:7601"
            [tls]
            ca = "ca.crt"
            cert = "n.crt"
            key = "n.key"
            [[backends]]
            namespace = ".*"
            backend = { fs = { root = "/tmp/backend" } }
            "#,
        )
        .unwrap()
    }

    #[test]
    fn a_minimal_origin_config_is_valid_with_defaults() {
        let c = minimal();
        c.validate().unwrap();
        assert_eq!(c.store_config().root, PathBuf::from("/tmp/x/cas"));
        assert_eq!(c.origin, OriginConfig::default());
    }

    #[test]
    fn contradictions_are_named() {
        let mut c = minimal();
        c.node.roles.push(NodeRole::Agent);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("both origin and agent"), "{e}");

        let mut c = minimal();
        c.quic.listen = "0.0.0.0:7600".parse().unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("quic.advertise"), "{e}");

        let mut c = minimal();
        c.backends.clear();
        assert!(c.validate().unwrap_err().to_string().contains("backends"));

        let e = toml::from_str::<NodeConfig>("[node]\nnmae = \"x\"").unwrap_err();
        assert!(e.to_string().contains("nmae"), "{e}");
    }

    #[test]
    fn a_proxy_beyond_loopback_without_push_credentials_is_refused_unless_allowed() {
        let proxy = || {
            let mut c = minimal();
            c.node.roles = vec![NodeRole::Proxy];
            c.backends.clear();
            c.view.seeds = vec!["10.0.0.1:7600".into()];
            c.registry.listen = "0.0.0.0:5000".parse().unwrap();
            c
        };
        let e = proxy().validate().unwrap_err().to_string();
        assert!(e.contains("registry.allow_anonymous_push"), "{e}");
        let mut c = proxy();
        c.registry.allow_anonymous_push = true;
        c.validate().unwrap();
        let mut c = proxy();
        c.registry.push_tokens = vec!["t".into()];
        c.validate().unwrap();
        let mut c = proxy();
        c.registry.listen = "127.0.0.1:5000".parse().unwrap();
        c.validate().unwrap();

        let mut c = proxy();
        c.registry.allow_anonymous_push = true;
        c.registry.limits.max_connections = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("registry.limits: max_connections"), "{e}");
        let mut c = minimal();
        c.http.limits.idle_timeout_ms = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("http.limits: idle_timeout"), "{e}");
    }

    #[test]
    fn the_blob_server_runs_on_plain_http_registries_and_names_its_address() {
        let r: RegistrySection =
            toml::from_str("listen = \"10.0.0.3:5000\"\nenabled = true").unwrap();
        assert_eq!(r.blob_address(), Some("10.0.0.3:0".parse().unwrap()));
        let fixed: RegistrySection =
            toml::from_str("enabled = true\nblob_listen = \"0.0.0.0:5001\"").unwrap();
        assert_eq!(fixed.blob_address(), Some("0.0.0.0:5001".parse().unwrap()));
        let off: RegistrySection = toml::from_str("enabled = true\nblob_server = false").unwrap();
        assert_eq!(off.blob_address(), None);
        let tls = RegistrySection {
            tls_cert: Some("c.pem".into()),
            tls_key: Some("k.pem".into()),
            ..r
        };
        assert_eq!(tls.blob_address(), None);

        let mut c = minimal();
        c.registry = RegistrySection {
            blob_listen: Some("0.0.0.0:5001".parse().unwrap()),
            ..tls
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("registry.blob_listen with registry.tls_cert"),
            "{e}"
        );
    }

    /// What `SwarmSection::to_swarm_config` built before `[swarm]` was a `SwarmConfig`,
    /// field by field, for a file without `[swarm]`: an agent's (`origin` false) or an
    /// origin's.
    fn swarm_before(origin: bool) -> SwarmConfig {
        SwarmConfig {
            max_connections: if origin { 256 } else { 10 },
            max_origin_connections: 2,
            pipeline_to_agents: 3,
            pipeline_to_origins: 5,
            spare_origins: true,
            upload_slots: 8,
            new_pieces_first: origin,
            max_queued_requests_per_peer: 16,
            request_timeout_base: Duration::from_secs(4),
            min_transfer_rate: 1 << 20,
            endgame_pieces: 8,
            stall_strikes: 3,
            blacklist_bad_peer: Duration::from_secs(600),
            blacklist_unreachable: Duration::from_secs(30),
            blacklist_busy: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(60),
            seed_tti: Duration::from_secs(300),
            announce_interval: Duration::from_secs(3),
            rng_seed: 0,
        }
    }

    /// The node's swarm config without its random seed.
    fn swarm_of(c: &NodeConfig) -> SwarmConfig {
        let s = c.swarm_config();
        SwarmConfig { rng_seed: 0, ..s }
    }

    #[test]
    fn without_swarm_sections_each_role_runs_the_settings_it_ran_before() {
        let origin = minimal();
        assert_eq!(swarm_of(&origin), swarm_before(true));
        let mut agent = minimal();
        agent.node.roles = vec![NodeRole::Agent];
        assert_eq!(swarm_of(&agent), swarm_before(false));
        // The seed is drawn per exchange.
        assert_ne!(agent.swarm_config().rng_seed, agent.swarm_config().rng_seed);
    }

    #[test]
    fn swarm_sections_are_swarm_configs_with_role_defaults_and_old_keys_are_named() {
        let c: NodeConfig = toml::from_str(
            "[swarm]\nupload_slots = 4\nseed_tti_secs = 30\nannounce_interval_secs = 1.5\n\
             [origin.swarm]\nupload_slots = 16\n",
        )
        .unwrap();
        assert_eq!(c.swarm.upload_slots, 4);
        assert_eq!(c.swarm.seed_tti, Duration::from_secs(30));
        assert_eq!(c.swarm.announce_interval, Duration::from_millis(1500));
        assert_eq!(c.swarm.max_connections, 10);
        // Keys an origin's table leaves out are an origin's.
        assert_eq!(
            c.origin.swarm,
            SwarmConfig {
                upload_slots: 16,
                ..SwarmConfig::origin()
            }
        );
        let e = toml::from_str::<NodeConfig>("[swarm]\norigin_max_connections = 256")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `origin_max_connections`"), "{e}");

        let mut c = minimal();
        c.origin.swarm.upload_slots = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("origin.swarm: ") && e.contains("upload_slots"),
            "{e}"
        );
    }

    #[test]
    fn the_tracker_section_holds_the_handout_settings_directly() {
        let c: NodeConfig =
            toml::from_str("[tracker]\nmax_peers = 20\npeer_ttl_secs = 90\nmetainfo_wait_ms = 5")
                .unwrap();
        assert_eq!(c.tracker.handout.max_peers, 20);
        assert_eq!(c.tracker.peer_ttl_ms(), 90_000);
        assert_eq!(c.tracker.metainfo_wait_ms, 5);
        // The TTL the tracker used before it was a key: 20 intervals of 3 s.
        assert_eq!(NodeConfig::default().tracker.peer_ttl_ms(), 60_000);
        for old in ["peer_ttl_intervals = 20", "peer_ttl_s = 20", "max_peer = 3"] {
            let key = old.split(' ').next().unwrap();
            let e = toml::from_str::<NodeConfig>(&format!("[tracker]\n{old}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
        }
        let mut c = minimal();
        c.tracker.handout.max_peers = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tracker.max_peers must be at least 1"), "{e}");
    }
}
