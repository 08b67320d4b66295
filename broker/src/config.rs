//! Node configuration: a versioned TOML file with `deny_unknown_fields`,
//! relative paths resolved against the file's directory, and environment
//! overrides for the usual knobs.
//!
//! ```toml
//! version = 1
//! [node]
//! name = "swm-1"
//! data_dir = "data"
//! [listen]
//! grpc = "127.0.0.1:7443"
//! admin = "127.0.0.1:9443"   # plain HTTP, no client certificates: keep on loopback
//! [tls]
//! root_ca = "root-ca.crt"
//! cert = "node.crt"          # leaf + organisation CA
//! key = "node.key"
//! membership = "membership.json"
//! [store]
//! cache_mb = 64
//! [log]
//! format = "human"           # or "json"
//! level = "info"
//! [[peers]]
//! name = "stadt-1"
//! endpoint = "https://127.0.0.1:7401"
//! [sources]
//! roots = ["/srv/allmende/sources"]   # connectors read local files only below these
//! postgres_hosts = ["db.swm.example"] # PostgreSQL sources connect only to these (default none)
//! mqtt_hosts = ["mqtt.swm.example"]     # MQTT sources subscribe only on these brokers (default none)
//! mds_hosts = ["mds.scooter.example"]   # MDS sources pull only from these providers (default none)
//! [mds_provider]                         # this organisation's MDS provider endpoint (docs/mds.md)
//! listen = "0.0.0.0:7800"
//! dir = "/srv/allmende/sources/mds"      # hourly batch files, below `sources.roots`
//! token_file = "/srv/allmende/sources/mds.token"
//! recipients = ["stadt"]
//! dataset = "scooter-trips"
//! http_hosts = ["sta.swm.example"]      # SensorThings (HTTP) sources fetch only from these (default none)
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The config format this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// A config problem, naming the file, the key and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config `{path}`: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    node: RawNode,
    listen: RawListen,
    tls: RawTls,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    peers: Vec<PeerConfig>,
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    sources: Option<RawSources>,
    #[serde(default)]
    opendata: Option<RawOpenData>,
    #[serde(default)]
    mds_provider: Option<RawMdsProvider>,
    #[serde(default)]
    federation: Option<RawFederation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMdsProvider {
    listen: String,
    dir: PathBuf,
    token_file: PathBuf,
    recipients: Vec<String>,
    dataset: String,
}

/// This organisation's MDS provider endpoint (`[mds_provider]`;
/// `docs/mds.md`): HTTPS with the node's certificate, a federation client
/// certificate and the bearer token required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdsProviderConfig {
    pub listen: SocketAddr,
    /// The directory of hourly batch files `YYYY-MM-DDTHH.json`, read
    /// through the source roots.
    pub dir: PathBuf,
    /// The bearer token's secret (first line), read through the source roots.
    pub token_file: PathBuf,
    /// Organisations whose nodes may pull.
    pub recipients: Vec<String>,
    /// The registered dataset the feed delivers (the policy's resource).
    pub dataset: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFederation {
    /// The city node's gRPC endpoint to fetch the directory from (absent:
    /// the membership file only).
    directory: Option<String>,
    /// Seconds between directory fetches.
    directory_refresh_secs: Option<u64>,
    /// `https://host:port` other nodes and the hub reach this node at:
    /// recorded in the directory by the node itself.
    endpoint: Option<String>,
    /// The city node only: the federation directory (root key, root
    /// certificate, `membership.json`) it signs the directory with.
    root_dir: Option<PathBuf>,
}

/// The federation directory (`[federation]`; `docs/federation.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// `https://…` of the city node to fetch the directory from.
    pub directory: Option<String>,
    /// Time between directory fetches.
    pub directory_refresh: std::time::Duration,
    /// Where other nodes reach this node (`https://host:port`): the node
    /// records its directory entry at the city node with it
    /// (`Federation.RegisterNode`), and again when it changes.
    pub endpoint: Option<String>,
    /// The city node's federation directory (root key): it signs
    /// directory changes (`federation remove`).
    pub root_dir: Option<PathBuf>,
}

/// Default seconds between directory fetches.
pub const DEFAULT_DIRECTORY_REFRESH_SECS: u64 = 5;

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            directory: None,
            directory_refresh: std::time::Duration::from_secs(DEFAULT_DIRECTORY_REFRESH_SECS),
            endpoint: None,
            root_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenData {
    /// Address of the HTTPS open-data listener (absent: off).
    listen: Option<String>,
    /// Base URL of download links (default `https://<listen>`).
    public_url: Option<String>,
    /// Open-data requests per minute of one public caller.
    requests_per_minute: Option<u32>,
    /// Requests a public caller may make at once before the rate applies.
    burst: Option<u32>,
    /// Release specs of this node's datasets (`[[opendata.release]]`,
    /// `docs/opendata.md`).
    #[serde(default)]
    release: Vec<allmende_opendata::ReleaseSpec>,
}

/// The public tier and the HTTPS open-data listener (`[opendata]`;
/// `docs/opendata-api.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenDataConfig {
    /// The HTTPS open-data listener (`None`: off).
    pub listen: Option<SocketAddr>,
    /// Base URL of download links, without a trailing `/`.
    pub public_url: Option<String>,
    /// Requests per minute of one public caller (pseudonym; on HTTP per
    /// address), gRPC and HTTP alike.
    pub requests_per_minute: u32,
    /// Burst of one public caller.
    pub burst: u32,
}

impl Default for OpenDataConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public_url: None,
            requests_per_minute: 120,
            burst: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSources {
    /// Directories connectors may read local files from.
    roots: Vec<PathBuf>,
    /// Hosts (names, addresses, unix-socket directories) PostgreSQL sources may connect to.
    #[serde(default)]
    postgres_hosts: Vec<String>,
    /// Hosts (names, addresses) of the MQTT brokers MQTT sources may subscribe on.
    #[serde(default)]
    mqtt_hosts: Vec<String>,
    /// Hosts (names, addresses) of the MDS providers MDS sources may pull from.
    #[serde(default)]
    mds_hosts: Vec<String>,
    /// Hosts (names, addresses) SensorThings (HTTP/HTTPS) sources may fetch from.
    #[serde(default)]
    http_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    /// Entries older than this many days are summarised and their bodies
    /// deleted (leaf hashes stay). Absent: keep everything.
    retention_days: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    data_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    grpc: String,
    admin: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    root_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    membership: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_cache_mb")]
    cache_mb: u64,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            cache_mb: default_cache_mb(),
        }
    }
}

fn default_cache_mb() -> u64 {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default = "default_format")]
    format: String,
    #[serde(default = "default_level")]
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: default_format(),
            level: default_level(),
        }
    }
}

fn default_format() -> String {
    "human".into()
}
fn default_level() -> String {
    "info".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: PathBuf,
}

/// Resource limits of a node under hostile load (`[limits]`, every key
/// optional; see `docs/configuration.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub streams_per_connection: u32,
    /// Concurrent streams (requests in flight, open response streams) node-wide;
    /// beyond that a request gets `RESOURCE_EXHAUSTED`.
    pub streams: u32,
    /// Concurrent streams of one caller (certificate identity) node-wide.
    pub streams_per_caller: u32,
    /// Concurrent fetches node-wide (each holds a reader thread); beyond
    /// that `Access.Fetch` gets `RESOURCE_EXHAUSTED`.
    pub fetches: u32,
    /// Concurrent fetches of one caller.
    pub fetches_per_caller: u32,
    /// Fetches one caller may start per second (sustained rate).
    pub fetch_rate_per_caller: u32,
    /// Fetches one caller may start in a burst above that rate.
    pub fetch_burst_per_caller: u32,
    /// A fetch whose client takes no message for this many seconds is ended.
    pub stream_idle_secs: u64,
    /// Seconds a client has to complete the TLS handshake.
    pub handshake_secs: u64,
    /// Concurrent TLS handshakes; further connections wait in the kernel's
    /// accept queue.
    pub handshakes: u32,
    /// Open authenticated connections; beyond that new ones are closed
    /// after the handshake.
    pub connections: u32,
    /// Denied requests per caller and interval written to the audit log one
    /// by one; further denials are counted and written as one aggregate entry.
    pub denials_audited: u32,
    /// Denied requests per caller and interval after which the caller gets
    /// `RESOURCE_EXHAUSTED` instead of a decision.
    pub denials_refused_after: u32,
    /// The denial interval in seconds (also how often aggregates are written).
    pub denials_interval_secs: u64,
    /// The longest grant, in days, an access request may ask for; a longer
    /// request is refused with `INVALID_ARGUMENT` naming this maximum.
    pub max_grant_days: u32,
    /// Days a recipient has to delete a data subject's rows after the
    /// subject's erasure (the deletion duty's due date).
    pub erasure_duty_days: u32,
    /// Released rows one `Access.Fetch` response carries at most; the rest
    /// follows through its resume cursor (each response decided and audited).
    pub fetch_rows_per_response: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_connection: 64,
            streams: 1024,
            streams_per_caller: 128,
            fetches: 16,
            fetches_per_caller: 4,
            fetch_rate_per_caller: 5,
            fetch_burst_per_caller: 20,
            stream_idle_secs: 60,
            handshake_secs: 10,
            handshakes: 64,
            connections: 1024,
            denials_audited: 20,
            denials_refused_after: 100,
            denials_interval_secs: 10,
            max_grant_days: crate::grants::DEFAULT_MAX_GRANT_DAYS,
            erasure_duty_days: crate::consent::erasure::DEFAULT_ERASURE_DUTY_DAYS,
            fetch_rows_per_response: crate::access::FetchLimits::default().max_rows_per_response,
        }
    }
}

impl Limits {
    fn check(&self, invalid: impl Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let positive = [
            (
                "limits.streams_per_connection",
                u64::from(self.streams_per_connection),
            ),
            ("limits.streams", u64::from(self.streams)),
            (
                "limits.streams_per_caller",
                u64::from(self.streams_per_caller),
            ),
            ("limits.fetches", u64::from(self.fetches)),
            (
                "limits.fetches_per_caller",
                u64::from(self.fetches_per_caller),
            ),
            (
                "limits.fetch_rate_per_caller",
                u64::from(self.fetch_rate_per_caller),
            ),
            (
                "limits.fetch_burst_per_caller",
                u64::from(self.fetch_burst_per_caller),
            ),
            ("limits.stream_idle_secs", self.stream_idle_secs),
            ("limits.handshake_secs", self.handshake_secs),
            ("limits.handshakes", u64::from(self.handshakes)),
            ("limits.connections", u64::from(self.connections)),
            (
                "limits.denials_refused_after",
                u64::from(self.denials_refused_after),
            ),
            ("limits.denials_interval_secs", self.denials_interval_secs),
            ("limits.max_grant_days", u64::from(self.max_grant_days)),
            (
                "limits.erasure_duty_days",
                u64::from(self.erasure_duty_days),
            ),
            (
                "limits.fetch_rows_per_response",
                self.fetch_rows_per_response,
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(invalid(
                    key,
                    "`0` would refuse everything; use at least 1".into(),
                ));
            }
        }
        if self.denials_audited > self.denials_refused_after {
            return Err(invalid(
                "limits.denials_audited",
                format!(
                    "`{}` is above `limits.denials_refused_after` (`{}`)",
                    self.denials_audited, self.denials_refused_after
                ),
            ));
        }
        Ok(())
    }
}

/// Checks the release specs' structure (numbers, keys, one spec per
/// dataset); an error names `opendata.release[<i>].<key>`.
fn check_release_specs(
    specs: &[allmende_opendata::ReleaseSpec],
    invalid: impl Fn(&str, String) -> ConfigError,
) -> Result<Vec<allmende_opendata::ReleaseSpec>, ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, spec) in specs.iter().enumerate() {
        if let Err(e) = spec.validate() {
            return Err(invalid(
                &format!("opendata.release[{i}].{}", e.key),
                e.message,
            ));
        }
        if !seen.insert(spec.dataset.as_str()) {
            return Err(invalid(
                &format!("opendata.release[{i}].dataset"),
                format!("`{}` has a release spec already", spec.dataset),
            ));
        }
    }
    Ok(specs.to_vec())
}

/// A peer node this node talks to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub endpoint: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// A validated node configuration with absolute paths.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub source: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub grpc_listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub root_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub membership: PathBuf,
    pub store_cache_bytes: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    pub peers: Vec<PeerConfig>,
    pub policy_dir: Option<PathBuf>,
    /// Audit retention in days (`None`: keep every entry body).
    pub audit_retention_days: Option<u32>,
    /// Resource limits (`[limits]`).
    pub limits: Limits,
    /// Directories connectors may read local files from (absolute; default
    /// `<data_dir>/sources`). See [`NodeConfig::source_roots`].
    pub source_roots: Vec<PathBuf>,
    /// Hosts PostgreSQL sources may connect to (`sources.postgres_hosts`;
    /// default none).
    pub postgres_hosts: Vec<String>,
    /// Hosts of the MQTT brokers MQTT sources may subscribe on
    /// (`sources.mqtt_hosts`; default none).
    pub mqtt_hosts: Vec<String>,
    /// Hosts of the MDS providers MDS sources may pull from
    /// (`sources.mds_hosts`; default none).
    pub mds_hosts: Vec<String>,
    /// This organisation's MDS provider endpoint (`[mds_provider]`; off
    /// when absent).
    pub mds_provider: Option<MdsProviderConfig>,
    /// Hosts SensorThings (HTTP/HTTPS) sources may fetch from
    /// (`sources.http_hosts`; default none).
    pub http_hosts: Vec<String>,
    /// The public tier and the open-data listener (`[opendata]`).
    pub opendata: OpenDataConfig,
    /// Release specs of this node's datasets (`[[opendata.release]]`),
    /// validated without a schema; checked against the dataset's schema at
    /// each publish.
    pub opendata_releases: Vec<allmende_opendata::ReleaseSpec>,
    /// The federation directory: where it is fetched, how often, and (the
    /// city) the root it is signed with (`[federation]`).
    pub federation: FederationConfig,
}

/// A `<key> = [hosts]` line of the `[sources]` table.
fn hosts_line(key: &str, hosts: &[&str]) -> String {
    let list: Vec<String> = hosts
        .iter()
        .map(|h| toml::Value::String((*h).to_owned()).to_string())
        .collect();
    format!("{key} = [{}]\n", list.join(", "))
}

/// The source directory under `node.data_dir` when `sources.roots` is absent.
pub const DEFAULT_SOURCES_DIR: &str = "sources";

/// Environment variables that override config keys.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("ALLMENDE_GRPC_LISTEN", "listen.grpc"),
    ("ALLMENDE_ADMIN_LISTEN", "listen.admin"),
    ("ALLMENDE_DATA_DIR", "node.data_dir"),
    ("ALLMENDE_STORE_CACHE_MB", "store.cache_mb"),
    ("ALLMENDE_LOG_FORMAT", "log.format"),
    ("ALLMENDE_LOG_LEVEL", "log.level"),
    ("ALLMENDE_AUDIT_RETENTION_DAYS", "audit.retention_days"),
];

impl NodeConfig {
    /// Loads a config file, applying overrides from the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text, |k| std::env::var(k).ok())
    }

    /// Parses config text; `env` supplies overrides (injectable for tests).
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_owned(),
            message,
        };
        if raw.version != CONFIG_VERSION {
            return Err(invalid(
                "version",
                format!(
                    "unsupported config version `{}`, this build reads version {CONFIG_VERSION}",
                    raw.version
                ),
            ));
        }
        if !crate::pki::identity::valid_leaf_name(&raw.node.name) {
            return Err(invalid(
                "node.name",
                format!("`{}` is not a valid node name", raw.node.name),
            ));
        }
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let grpc = env("ALLMENDE_GRPC_LISTEN").unwrap_or(raw.listen.grpc);
        let grpc_listen: SocketAddr = grpc
            .parse()
            .map_err(|_| invalid("listen.grpc", format!("`{grpc}` is not a socket address")))?;
        let admin = env("ALLMENDE_ADMIN_LISTEN").or(raw.listen.admin);
        let admin_listen =
            match admin.as_deref() {
                None | Some("") | Some("off") => None,
                Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                    invalid("listen.admin", format!("`{a}` is not a socket address"))
                })?),
            };
        let data_dir = env("ALLMENDE_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or(raw.node.data_dir);
        let cache_mb = match env("ALLMENDE_STORE_CACHE_MB") {
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| invalid("store.cache_mb", format!("`{v}` is not a whole number")))?,
            None => raw.store.cache_mb,
        };
        if !(1..=65_536).contains(&cache_mb) {
            return Err(invalid(
                "store.cache_mb",
                format!("`{cache_mb}` is out of range 1..=65536"),
            ));
        }
        let format = env("ALLMENDE_LOG_FORMAT").unwrap_or(raw.log.format);
        let log_format = match format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}` is not `human` or `json`"),
                ));
            }
        };
        let log_level = env("ALLMENDE_LOG_LEVEL").unwrap_or(raw.log.level);
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{log_level}` is not a log filter"),
            ));
        }
        for (i, p) in raw.peers.iter().enumerate() {
            if !p.endpoint.starts_with("https://") {
                return Err(invalid(
                    &format!("peers[{i}].endpoint"),
                    format!("`{}` must be an https:// URL (mTLS only)", p.endpoint),
                ));
            }
        }
        let audit_retention_days = match env("ALLMENDE_AUDIT_RETENTION_DAYS") {
            Some(v) => Some(v.parse::<u32>().map_err(|_| {
                invalid(
                    "audit.retention_days",
                    format!("`{v}` is not a whole number of days"),
                )
            })?),
            None => raw.audit.and_then(|a| a.retention_days),
        };
        if audit_retention_days == Some(0) {
            return Err(invalid(
                "audit.retention_days",
                "`0` would delete every entry body at once; use at least 1".into(),
            ));
        }
        raw.limits.check(invalid)?;
        let data_dir = abs(&data_dir);
        let http_hosts = raw
            .sources
            .as_ref()
            .map(|s| s.http_hosts.clone())
            .unwrap_or_default();
        let (source_roots, postgres_hosts, mqtt_hosts, mds_hosts) = match raw.sources {
            Some(s) => (
                s.roots.iter().map(|r| abs(r)).collect(),
                s.postgres_hosts,
                s.mqtt_hosts,
                s.mds_hosts,
            ),
            None => (
                vec![data_dir.join(DEFAULT_SOURCES_DIR)],
                Vec::new(),
                Vec::new(),
                Vec::new(),
            ),
        };
        let mds_provider = match raw.mds_provider {
            None => None,
            Some(m) => {
                let listen = m.listen.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "mds_provider.listen",
                        format!("`{}` is not a socket address", m.listen),
                    )
                })?;
                if m.recipients.is_empty() {
                    return Err(invalid(
                        "mds_provider.recipients",
                        "name at least one organisation".into(),
                    ));
                }
                if m.dataset.is_empty() {
                    return Err(invalid(
                        "mds_provider.dataset",
                        "name the registered dataset the feed delivers".into(),
                    ));
                }
                Some(MdsProviderConfig {
                    listen,
                    dir: abs(&m.dir),
                    token_file: abs(&m.token_file),
                    recipients: m.recipients,
                    dataset: m.dataset,
                })
            }
        };
        let opendata_releases = match &raw.opendata {
            None => Vec::new(),
            Some(o) => check_release_specs(&o.release, invalid)?,
        };
        let opendata = match raw.opendata {
            None => OpenDataConfig::default(),
            Some(o) => {
                let d = OpenDataConfig::default();
                let listen = match o.listen.as_deref() {
                    None | Some("") | Some("off") => None,
                    Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                        invalid("opendata.listen", format!("`{a}` is not a socket address"))
                    })?),
                };
                if let Some(u) = &o.public_url
                    && !u.starts_with("https://")
                {
                    return Err(invalid(
                        "opendata.public_url",
                        format!("`{u}` must be an https:// URL"),
                    ));
                }
                let requests_per_minute = o.requests_per_minute.unwrap_or(d.requests_per_minute);
                let burst = o.burst.unwrap_or(d.burst);
                if requests_per_minute == 0 || burst == 0 {
                    return Err(invalid(
                        "opendata.requests_per_minute",
                        "the rate and the burst must be at least 1".into(),
                    ));
                }
                OpenDataConfig {
                    listen,
                    public_url: o.public_url.map(|u| u.trim_end_matches('/').to_owned()),
                    requests_per_minute,
                    burst,
                }
            }
        };
        let federation = match raw.federation {
            None => FederationConfig::default(),
            Some(f) => {
                if let Some(d) = &f.directory
                    && !d.starts_with("https://")
                {
                    return Err(invalid(
                        "federation.directory",
                        format!("`{d}` is not an https:// URL"),
                    ));
                }
                let secs = f
                    .directory_refresh_secs
                    .unwrap_or(DEFAULT_DIRECTORY_REFRESH_SECS);
                if !(1..=3600).contains(&secs) {
                    return Err(invalid(
                        "federation.directory_refresh_secs",
                        format!("must be between 1 and 3600, got {secs}"),
                    ));
                }
                if let Some(e) = &f.endpoint {
                    crate::pki::membership::check_node_endpoint(e)
                        .map_err(|why| invalid("federation.endpoint", why))?;
                    if f.directory.is_none() && f.root_dir.is_none() {
                        return Err(invalid(
                            "federation.endpoint",
                            "the node records its endpoint at the city node, so set `federation.directory` to the city node's endpoint (at the city node itself: `federation.root_dir`)".into(),
                        ));
                    }
                }
                FederationConfig {
                    directory: f.directory,
                    directory_refresh: std::time::Duration::from_secs(secs),
                    endpoint: f.endpoint,
                    root_dir: f.root_dir.map(|d| abs(&d)),
                }
            }
        };
        Ok(Self {
            federation,
            opendata,
            opendata_releases,
            limits: raw.limits,
            audit_retention_days,
            source_roots,
            postgres_hosts,
            mqtt_hosts,
            mds_hosts,
            mds_provider,
            http_hosts,
            source: path.to_path_buf(),
            name: raw.node.name,
            data_dir,
            grpc_listen,
            admin_listen,
            root_ca: abs(&raw.tls.root_ca),
            cert: abs(&raw.tls.cert),
            key: abs(&raw.tls.key),
            membership: abs(&raw.tls.membership),
            store_cache_bytes: cache_mb * 1024 * 1024,
            log_format,
            log_level,
            peers: raw.peers,
            policy_dir: raw.policy.map(|p| abs(&p.dir)),
        })
    }

    /// Where connectors may read local files: below `sources.roots`, never in
    /// the node's key directory (and key file), store directory, or config
    /// directory (and config file), even when a root contains them.
    pub fn source_roots(&self) -> allmende_connectors::SourceRoots {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut roots = allmende_connectors::SourceRoots::new(self.source_roots.clone())
            .allow_postgres_hosts(self.postgres_hosts.iter().cloned())
            .allow_mqtt_hosts(self.mqtt_hosts.iter().cloned())
            .allow_mds_hosts(self.mds_hosts.iter().cloned())
            .allow_http_hosts(self.http_hosts.iter().cloned())
            .reserve(absolute(&self.key), "key file")
            .reserve(absolute(&self.data_dir.join("store")), "store directory")
            .reserve(absolute(&self.source), "config file");
        if let Some(d) = self.key.parent() {
            roots = roots.reserve(absolute(d), "key directory");
        }
        if let Some(d) = absolute(&self.source).parent() {
            roots = roots.reserve(d.to_path_buf(), "config directory");
        }
        roots
    }

    /// The `[sources]` table naming `roots` (appended to a rendered config).
    pub fn render_sources(roots: &[PathBuf]) -> String {
        let list: Vec<String> = roots
            .iter()
            .map(|r| toml::Value::String(r.display().to_string()).to_string())
            .collect();
        format!("\n[sources]\nroots = [{}]\n", list.join(", "))
    }

    /// A `[federation]` table naming the federation directory the city node
    /// signs the directory with.
    pub fn render_federation_root(root_dir: &Path) -> String {
        format!(
            "\n[federation]\nroot_dir = {}\n",
            toml::Value::String(root_dir.display().to_string())
        )
    }

    /// An `[opendata]` table with the open-data listener on `listen`.
    pub fn render_opendata(listen: SocketAddr) -> String {
        format!("\n[opendata]\nlisten = \"{listen}\"\n")
    }

    /// A `postgres_hosts` line for the `[sources]` table that
    /// [`NodeConfig::render_sources`] ends a config with.
    pub fn render_postgres_hosts(hosts: &[&str]) -> String {
        hosts_line("postgres_hosts", hosts)
    }

    /// An `mqtt_hosts` line for the `[sources]` table that
    /// [`NodeConfig::render_sources`] ends a config with.
    pub fn render_mqtt_hosts(hosts: &[&str]) -> String {
        hosts_line("mqtt_hosts", hosts)
    }

    /// An `mds_hosts` line for the `[sources]` table that
    /// [`NodeConfig::render_sources`] ends a config with.
    pub fn render_mds_hosts(hosts: &[&str]) -> String {
        hosts_line("mds_hosts", hosts)
    }

    /// An `[mds_provider]` table (appended to a rendered config).
    pub fn render_mds_provider(p: &MdsProviderConfig) -> String {
        let s = |v: &str| toml::Value::String(v.to_owned()).to_string();
        let recipients: Vec<String> = p.recipients.iter().map(|r| s(r)).collect();
        format!(
            "\n[mds_provider]\nlisten = {}\ndir = {}\ntoken_file = {}\nrecipients = [{}]\ndataset = {}\n",
            s(&p.listen.to_string()),
            s(&p.dir.display().to_string()),
            s(&p.token_file.display().to_string()),
            recipients.join(", "),
            s(&p.dataset)
        )
    }

    /// An `http_hosts` line for the `[sources]` table that
    /// [`NodeConfig::render_sources`] ends a config with.
    pub fn render_http_hosts(hosts: &[&str]) -> String {
        let list: Vec<String> = hosts
            .iter()
            .map(|h| toml::Value::String((*h).to_owned()).to_string())
            .collect();
        format!("http_hosts = [{}]\n", list.join(", "))
    }

    /// Renders a config file for the given settings (used by the sandbox and
    /// the demo, so what they run is what an operator would write).
    pub fn render(
        name: &str,
        data_dir: &Path,
        grpc: SocketAddr,
        admin: Option<SocketAddr>,
        tls_dir: &Path,
        peers: &[PeerConfig],
    ) -> String {
        let mut s = format!(
            "version = 1\n\n[node]\nname = \"{name}\"\ndata_dir = \"{}\"\n\n[listen]\ngrpc = \"{grpc}\"\n",
            data_dir.display()
        );
        if let Some(a) = admin {
            s.push_str(&format!("admin = \"{a}\"\n"));
        }
        s.push_str(&format!(
            "\n[tls]\nroot_ca = \"{d}/root-ca.crt\"\ncert = \"{d}/node.crt\"\nkey = \"{d}/node.key\"\nmembership = \"{d}/membership.json\"\n\n[store]\ncache_mb = 16\n",
            d = tls_dir.display()
        ));
        for p in peers {
            s.push_str(&format!(
                "\n[[peers]]\nname = \"{}\"\nendpoint = \"{}\"\n",
                p.name, p.endpoint
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    const GOOD: &str = r#"
version = 1
[node]
name = "swm-1"
data_dir = "data"
[listen]
grpc = "127.0.0.1:7443"
[tls]
root_ca = "root-ca.crt"
cert = "node.crt"
key = "/abs/node.key"
membership = "membership.json"
"#;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(Path::new("/etc/allmende/node.toml"), text, |_| None)
    }

    #[test]
    fn federation_directory_settings_are_checked() {
        let p = Path::new("/etc/allmende/node.toml");
        let c = NodeConfig::parse(p, GOOD, |_| None).unwrap();
        assert_eq!(c.federation, FederationConfig::default());
        let text = format!(
            "{GOOD}\n[federation]\ndirectory = \"https://127.0.0.1:7401\"\ndirectory_refresh_secs = 2\nroot_dir = \"fed\"\n"
        );
        let c = NodeConfig::parse(p, &text, |_| None).unwrap();
        assert_eq!(
            c.federation.directory.as_deref(),
            Some("https://127.0.0.1:7401")
        );
        assert_eq!(
            c.federation.directory_refresh,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(
            c.federation.root_dir,
            Some(PathBuf::from("/etc/allmende/fed"))
        );
        let bad = format!("{GOOD}\n[federation]\ndirectory = \"http://x\"\n");
        let err = NodeConfig::parse(p, &bad, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("federation.directory"), "{err}");
        let bad = format!("{GOOD}\n[federation]\ndirectory_refresh_secs = 0\n");
        let err = NodeConfig::parse(p, &bad, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("federation.directory_refresh_secs"), "{err}");
        let alone = format!("{GOOD}\n[federation]\nendpoint = \"https://10.77.0.2:7400\"\n");
        let err = NodeConfig::parse(p, &alone, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("set `federation.directory`"), "{err}");
        let good = format!(
            "{GOOD}\n[federation]\ndirectory = \"https://10.77.0.1:7400\"\nendpoint = \"https://10.77.0.2:7400\"\n"
        );
        let c = NodeConfig::parse(p, &good, |_| None).unwrap();
        assert_eq!(
            c.federation.endpoint.as_deref(),
            Some("https://10.77.0.2:7400")
        );
        for e in [
            "http://10.77.0.2:7400",
            "https://node",
            "https://node:0/x",
            "https://a b:1",
        ] {
            let bad = format!("{GOOD}\n[federation]\nroot_dir = \"fed\"\nendpoint = \"{e}\"\n");
            let err = NodeConfig::parse(p, &bad, |_| None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("federation.endpoint") && err.contains("https://host:port"),
                "{e}: {err}"
            );
        }
    }

    #[test]
    fn good_config_resolves_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.data_dir, Path::new("/etc/allmende/data"));
        assert_eq!(c.key, Path::new("/abs/node.key"));
        assert_eq!(c.store_cache_bytes, 64 << 20);
        assert_eq!(c.admin_listen, None);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse(&GOOD.replace("[listen]", "[listen]\ngrcp = \"x\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/allmende/node.toml"), "{err}");
        assert!(err.contains("unknown field `grcp`"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn release_specs_parse_and_structural_errors_name_file_and_key() {
        let c = parse(&format!("{GOOD}{}", crate::sandbox::SCOOTER_TRIPS_RELEASE)).unwrap();
        assert_eq!(c.opendata_releases.len(), 1);
        assert_eq!(c.opendata_releases[0].dataset, "scooter-trips");
        let release = crate::sandbox::SCOOTER_TRIPS_RELEASE;
        let err = parse(&format!("{GOOD}{}", release.replace("k = 10", "k = 1")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/allmende/node.toml"), "{err}");
        assert!(err.contains("key `opendata.release[0].k`"), "{err}");
        let err = parse(&format!(
            "{GOOD}{}",
            release.replace("grid_m", "grid_metres")
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `grid_metres`"), "{err}");
        let err = parse(&format!("{GOOD}{release}{release}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `opendata.release[1].dataset`"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = parse(&GOOD.replace("127.0.0.1:7443", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `listen.grpc`"), "{err}");
        assert!(err.contains("`localhost` is not a socket address"), "{err}");
        let err = parse(&GOOD.replace("version = 1", "version = 7"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `version`"), "{err}");
        let err = parse(&format!(
            "{GOOD}\n[[peers]]\nname = \"a\"\nendpoint = \"http://x\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("peers[0].endpoint"), "{err}");
    }

    #[test]
    fn env_overrides_apply_and_are_validated() {
        let c = NodeConfig::parse(Path::new("n.toml"), GOOD, |k| match k {
            "ALLMENDE_GRPC_LISTEN" => Some("127.0.0.1:9000".into()),
            "ALLMENDE_LOG_FORMAT" => Some("json".into()),
            "ALLMENDE_STORE_CACHE_MB" => Some("8".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.grpc_listen.port(), 9000);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.store_cache_bytes, 8 << 20);
        let err = NodeConfig::parse(Path::new("n.toml"), GOOD, |k| {
            (k == "ALLMENDE_STORE_CACHE_MB").then(|| "lots".into())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("store.cache_mb"), "{err}");
    }

    #[test]
    fn limits_default_and_parse() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = parse(&format!(
            "{GOOD}\n[limits]\nfetches = 2\nstream_idle_secs = 5\n"
        ))
        .unwrap();
        assert_eq!(c.limits.fetches, 2);
        assert_eq!(c.limits.stream_idle_secs, 5);
        assert_eq!(c.limits.streams, Limits::default().streams);
        let c = parse(&format!(
            "{GOOD}\n[limits]\nfetch_rows_per_response = 20000000\n"
        ))
        .unwrap();
        assert_eq!(c.limits.fetch_rows_per_response, 20_000_000);
        assert_eq!(Limits::default().fetch_rows_per_response, 100_000);
        let err = parse(&format!("{GOOD}\n[limits]\nfetch_rows_per_response = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.fetch_rows_per_response"), "{err}");
        let c = parse(&format!(
            "{GOOD}\n[limits]\nfetch_rate_per_caller = 500\nfetch_burst_per_caller = 600\n"
        ))
        .unwrap();
        assert_eq!(
            (
                c.limits.fetch_rate_per_caller,
                c.limits.fetch_burst_per_caller
            ),
            (500, 600)
        );
        let err = parse(&format!("{GOOD}\n[limits]\nfetchez = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `fetchez`"), "{err}");
        let err = parse(&format!("{GOOD}\n[limits]\nhandshakes = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("key `limits.handshakes`"), "{err}");
    }

    #[test]
    fn source_roots_default_under_data_dir_and_resolve_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(
            c.source_roots,
            vec![PathBuf::from("/etc/allmende/data/sources")]
        );
        assert!(c.postgres_hosts.is_empty());
        let c = parse(&format!("{GOOD}\n[sources]\nroots = [\"/srv/a\", \"b\"]\n")).unwrap();
        assert_eq!(
            c.source_roots,
            vec![PathBuf::from("/srv/a"), PathBuf::from("/etc/allmende/b")]
        );
        let err = parse(&format!("{GOOD}\n[sources]\nroot = \"/srv\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `root`"), "{err}");
        // The node's own places are reserved even inside an allowed root.
        let c = parse(&format!("{GOOD}\n[sources]\nroots = [\"/\"]\n")).unwrap();
        let roots = c.source_roots();
        for own in [
            "/abs/node.key",
            "/etc/allmende/node.toml",
            "/etc/allmende/data/store/db",
        ] {
            let err = roots.check(Path::new(own), own).unwrap_err();
            assert!(
                matches!(err, allmende_connectors::ConnectorError::Confined { .. }),
                "{own}: {err}"
            );
        }
    }

    #[test]
    fn rendered_config_parses() {
        let text = NodeConfig::render(
            "stadt-1",
            Path::new("/tmp/d"),
            "127.0.0.1:1".parse().unwrap(),
            Some("127.0.0.1:2".parse().unwrap()),
            Path::new("/tmp/tls"),
            &[PeerConfig {
                name: "swm-1".into(),
                endpoint: "https://127.0.0.1:3".into(),
            }],
        );
        let text = format!(
            "{text}{}",
            NodeConfig::render_sources(&[PathBuf::from("/tmp/with \"quote\"")])
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.source_roots, vec![PathBuf::from("/tmp/with \"quote\"")]);
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.cert, Path::new("/tmp/tls/node.crt"));
    }
}
