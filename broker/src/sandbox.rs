//! An in-process federation: N real nodes on loopback ports in one process,
//! onboarded through the real PKI flow into a fresh directory. Used by the
//! demo and by every end-to-end test.
//!
//! Layout under the sandbox root:
//! ```text
//! federation/                 root-ca.key, root-ca.crt, membership.json (the city's)
//! <org>/ca/                   org-ca.key, org-ca.csr, org-ca.crt
//! <org>/nodes/<node>/         node.key, node.crt, root-ca.crt, membership.json, node.toml, data/
//! <org>/users/<id>.{key,crt,profile.toml}
//! ```

use crate::client::ClientProfile;
use crate::clock::SharedClock;
use crate::config::{NodeConfig, PeerConfig};
use crate::node::{self, NodeError, NodeHandle};
use crate::pki::ca::{self, FederationDir, OrgCa, PkiError};
use crate::pki::{OrgKind, Role};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The directory under the sandbox root with the sample data; the nodes'
/// only allowed source root (`sources.roots`).
pub const SAMPLE_DATA_DIR: &str = "sample-data";

/// The Munich federation's public-tier organisation (kind `public`, no
/// node) and its one user, whose certificate is a public-tier certificate.
pub const PUBLIC_TIER_ORG: &str = "oeffentlichkeit";
pub const PUBLIC_TIER_USER: &str = "portal";

/// One organisation of a sandbox federation.
#[derive(Debug, Clone)]
pub struct OrgSpec {
    pub name: String,
    pub kind: OrgKind,
    pub display_name: String,
    pub nodes: Vec<String>,
    pub users: Vec<(String, Role)>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub federation: String,
    pub orgs: Vec<OrgSpec>,
    /// Fixed ports from here (node i: grpc base+i, admin base+100+i), with
    /// peers configured; `None` picks free ports and leaves peers empty.
    pub base_port: Option<u16>,
    /// Start admin listeners.
    pub admin: bool,
    /// Serve the smart-meter readings from a PostgreSQL started in the
    /// sandbox directory when PostgreSQL is installed (the demo), else
    /// from files.
    pub postgres_smart_meter: bool,
}

fn org(name: &str, kind: OrgKind, display: &str, users: &[(&str, Role)]) -> OrgSpec {
    OrgSpec {
        name: name.into(),
        kind,
        display_name: display.into(),
        nodes: vec![format!("{name}-1")],
        users: users.iter().map(|(u, r)| ((*u).to_owned(), *r)).collect(),
    }
}

/// The release spec of `scooter-trips` in scooter-co's node config:
/// distinct vehicles per day and 2 km grid cell of the start position, with
/// differential privacy (discrete Laplace, ε = 1 per release, each vehicle
/// counted in at most 2 cells), a cell released only when its noisy vehicle
/// count reaches the threshold (at least k = 10), at most ε = 10 per vehicle
/// per month. The demo's 150 vehicles make about 4 released cells a release:
/// 1 km cells, hours or a second measure raise the threshold above what
/// so few vehicles reach.
pub const SCOOTER_TRIPS_RELEASE: &str = r#"
[[opendata.release]]
dataset = "scooter-trips"
unit = "vehicle"
unit_column = "device_id"
k = 10

[[opendata.release.group_by]]
column = "start_time"
time = "day"
as = "day"

[[opendata.release.group_by]]
columns = ["start_lat", "start_lon"]
grid_m = 2000
as = "cell"

[[opendata.release.measures]]
name = "vehicles"
count = "units"

[opendata.release.dp]
epsilon = 1.0
delta = 1e-5
mechanism = "laplace"
max_cells_per_unit = 2
max_rows_per_cell = 3

[opendata.release.budget]
epsilon = 10.0
period = "month"
"#;

/// The `[[opendata.release]]` tables of an organisation's node config.
fn opendata_releases(org: &str) -> Option<&'static str> {
    (org == "scooter-co").then_some(SCOOTER_TRIPS_RELEASE)
}

impl SandboxSpec {
    /// The Munich federation of the brief.
    pub fn munich() -> Self {
        Self {
            federation: "munich".into(),
            orgs: vec![
                org(
                    "stadt",
                    OrgKind::City,
                    "Landeshauptstadt München",
                    &[
                        ("dpo", Role::Dpo),
                        ("operator", Role::Operator),
                        ("steward", Role::Steward),
                    ],
                ),
                org(
                    "swm",
                    OrgKind::Utility,
                    "Stadtwerke München",
                    &[
                        ("steward", Role::Steward),
                        ("dpo", Role::Dpo),
                        ("HH-000001", Role::Citizen),
                    ],
                ),
                org(
                    "tum",
                    OrgKind::University,
                    "Technische Universität München",
                    &[("alice", Role::Researcher), ("dpo", Role::Dpo)],
                ),
                org(
                    "scooter-co",
                    OrgKind::Company,
                    "Scooter Co. GmbH",
                    &[
                        ("operator", Role::Operator),
                        ("steward", Role::Steward),
                        ("dpo", Role::Dpo),
                    ],
                ),
                org(
                    "versicherung-ag",
                    OrgKind::Company,
                    "Versicherung AG",
                    &[("analyst", Role::Researcher)],
                ),
                // The public tier: certificates for citizens' apps and
                // portals, no node of its own (the five nodes stay).
                OrgSpec {
                    nodes: Vec::new(),
                    ..org(
                        PUBLIC_TIER_ORG,
                        OrgKind::Public,
                        "Öffentlichkeit / Open-Data-Zugang",
                        &[(PUBLIC_TIER_USER, Role::Citizen)],
                    )
                },
            ],
            base_port: None,
            admin: true,
            postgres_smart_meter: false,
        }
    }
}

/// Errors starting a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("demo data: {0}")]
    Demo(String),
    #[error("sandbox i/o at `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A running sandbox federation.
#[derive(Debug)]
pub struct Sandbox {
    pub root: PathBuf,
    pub federation: FederationDir,
    pub spec: SandboxSpec,
    pub nodes: Vec<NodeHandle>,
    pub clock: SharedClock,
    /// The PostgreSQL serving the smart-meter readings, if one was started
    /// (stopped when the sandbox is dropped, before its directory goes).
    postgres: std::sync::OnceLock<allmende_connectors::postgres::LocalServer>,
    /// Why the smart-meter readings are not served from PostgreSQL although
    /// it is installed.
    postgres_problem: std::sync::OnceLock<String>,
    /// The demo's LoRaWAN environment sensors (their mosquitto, if one was
    /// started, is stopped when the sandbox is dropped).
    pub lorawan: std::sync::OnceLock<crate::demo::lorawan::Lorawan>,
    /// The demo's MDS feed from scooter-co (its export task ends when the
    /// sandbox is dropped).
    pub scooter: std::sync::OnceLock<crate::demo::scooter::Feed>,
    _tempdir: Option<tempfile::TempDir>,
}

impl Sandbox {
    /// Onboards the federation into `dir` (a fresh temporary directory when
    /// `None`) and starts every node.
    pub async fn start(
        spec: SandboxSpec,
        dir: Option<PathBuf>,
        clock: SharedClock,
    ) -> Result<Self, SandboxError> {
        let (root, tempdir) = match dir {
            // Config files name absolute paths, so a relative directory
            // (the demo's default) does not resolve twice.
            Some(d) => (std::path::absolute(&d).map_err(io_err(&d))?, None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("allmende-sandbox-")
                    .tempdir()
                    .map_err(io_err(Path::new("/tmp")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let now = clock.now_unix_secs();
        let fed = ca::init_federation(&root.join("federation"), &spec.federation, now)?;

        // Ports.
        let mut addrs = Vec::new();
        let total: usize = spec.orgs.iter().map(|o| o.nodes.len()).sum();
        for i in 0..total {
            let (g, a) = match spec.base_port {
                Some(b) => {
                    let i = u16::try_from(i).unwrap_or(u16::MAX);
                    (b.saturating_add(i), b.saturating_add(100).saturating_add(i))
                }
                None => (0, 0),
            };
            addrs.push((
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), g),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a),
            ));
        }
        let all_nodes: Vec<String> = spec.orgs.iter().flat_map(|o| o.nodes.clone()).collect();

        // Onboarding: each organisation makes its key and request locally;
        // the city signs; keys never leave their directory.
        let mut configs = Vec::new();
        let mut idx = 0;
        for o in &spec.orgs {
            let org_dir = root.join(&o.name).join("ca");
            let csr = ca::org_request(&org_dir, &spec.federation, &o.name)?;
            ca::org_sign(
                &fed,
                &csr,
                o.kind,
                &o.display_name,
                &org_dir.join(ca::ORG_CERT),
                now,
            )?;
        }
        for o in &spec.orgs {
            let org_ca = OrgCa::load(&root.join(&o.name).join("ca"))?;
            for n in &o.nodes {
                let nd = root.join(&o.name).join("nodes").join(n);
                org_ca.issue_node(
                    n,
                    &["localhost".to_owned()],
                    &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                    ca::NODE_DAYS,
                    &nd,
                    now,
                )?;
                let (grpc, admin) = addrs[idx];
                let peers: Vec<PeerConfig> = if spec.base_port.is_some() {
                    all_nodes
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != idx)
                        .map(|(j, name)| PeerConfig {
                            name: name.clone(),
                            endpoint: format!("https://{}", addrs[j].0),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let mut text = NodeConfig::render(
                    n,
                    &nd.join("data"),
                    grpc,
                    spec.admin.then_some(admin),
                    &nd,
                    &peers,
                );
                // Connectors read sample data only (`register_demo_datasets`).
                text.push_str(&NodeConfig::render_sources(&[root.join(SAMPLE_DATA_DIR)]));
                // PostgreSQL sources only on this machine's loopback (tests, the demo).
                text.push_str(&NodeConfig::render_postgres_hosts(&["127.0.0.1"]));
                // MQTT brokers likewise (a test's own mosquitto).
                text.push_str(&NodeConfig::render_mqtt_hosts(&["127.0.0.1"]));
                // MDS providers likewise (a test's or the demo's provider node).
                text.push_str(&NodeConfig::render_mds_hosts(&["127.0.0.1"]));
                // SensorThings services likewise (a test's own server).
                text.push_str(&NodeConfig::render_http_hosts(&["127.0.0.1"]));
                // The HTTPS open-data listener: base+200+i (7601… in the
                // demo), or a free port.
                let opendata_port = spec.base_port.map_or(0, |b| {
                    b.saturating_add(200)
                        .saturating_add(u16::try_from(idx).unwrap_or(u16::MAX))
                });
                text.push_str(&NodeConfig::render_opendata(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    opendata_port,
                )));
                // The owner's release specs (docs/opendata.md).
                if let Some(releases) = opendata_releases(&o.name) {
                    text.push_str(releases);
                }
                // The city's node signs directory changes with the root
                // (`federation remove`; docs/federation.md).
                if o.kind == OrgKind::City {
                    text.push_str(&NodeConfig::render_federation_root(
                        &root.join("federation"),
                    ));
                }
                let cfg_path = nd.join("node.toml");
                std::fs::write(&cfg_path, text).map_err(io_err(&cfg_path))?;
                configs.push(cfg_path);
                idx += 1;
            }
            for (id, role) in &o.users {
                org_ca.issue_user(
                    id,
                    *role,
                    ca::USER_DAYS,
                    &root.join(&o.name).join("users"),
                    now,
                )?;
            }
        }
        let mut sandbox = Self {
            root: root.clone(),
            federation: fed,
            spec,
            nodes: Vec::new(),
            clock: clock.clone(),
            postgres: std::sync::OnceLock::new(),
            postgres_problem: std::sync::OnceLock::new(),
            lorawan: std::sync::OnceLock::new(),
            scooter: std::sync::OnceLock::new(),
            _tempdir: tempdir,
        };
        // Every node gets the root certificate and the final membership.
        sandbox.publish_membership()?;
        for cfg in configs {
            let c = NodeConfig::load(&cfg)?;
            sandbox.nodes.push(node::start(c, clock.clone()).await?);
        }
        // With free ports, peers are known only now: tell every node.
        sandbox.spread_peers();
        // User profiles point at their organisation's first node (users of
        // an organisation without a node, the public tier, at the first
        // node of the federation).
        let first_node = sandbox
            .spec
            .orgs
            .iter()
            .find_map(|o| o.nodes.first().cloned());
        for o in &sandbox.spec.orgs {
            let Some(first) = o.nodes.first().or(first_node.as_ref()) else {
                continue;
            };
            let Some(endpoint) = sandbox.node(first).map(NodeHandle::grpc_endpoint) else {
                continue;
            };
            for (id, _) in &o.users {
                let udir = root.join(&o.name).join("users");
                let p = ClientProfile {
                    endpoint: endpoint.clone(),
                    root_ca: sandbox.federation.root_cert(),
                    cert: udir.join(format!("{id}.crt")),
                    key: udir.join(format!("{id}.key")),
                };
                let path = udir.join(format!("{id}.profile.toml"));
                std::fs::write(&path, p.to_toml()).map_err(io_err(&path))?;
            }
        }
        Ok(sandbox)
    }

    /// Copies the city's current membership (and root) to every node
    /// directory, as an operator's distribution would, and installs it in
    /// running nodes right away.
    pub fn publish_membership(&self) -> Result<(), SandboxError> {
        let bytes = std::fs::read(self.federation.membership())
            .map_err(io_err(&self.federation.membership()))?;
        let root = std::fs::read(self.federation.root_cert())
            .map_err(io_err(&self.federation.root_cert()))?;
        for o in &self.spec.orgs {
            for n in &o.nodes {
                let nd = self.root.join(&o.name).join("nodes").join(n);
                ca::write_public(&nd.join(ca::MEMBERSHIP), &bytes)?;
                ca::write_public(&nd.join(ca::ROOT_CERT), &root)?;
            }
        }
        for n in &self.nodes {
            if let Err(e) = n.trust.install_membership(&bytes) {
                tracing::warn!(node = %n.name, error = %e, "membership not installed");
            }
        }
        Ok(())
    }

    /// Writes the bundled sample data (generated, no network) and registers
    /// the brief's datasets through the real flow: each owner's steward (or
    /// operator) registers the connector over mTLS at its own node, decided by
    /// Cedar and audited; SWM imports its households' consent records.
    pub async fn register_demo_datasets(&self) -> Result<Vec<String>, SandboxError> {
        use allmende_proto::v1 as pb;
        let data_dir = self.root.join(SAMPLE_DATA_DIR);
        let files = allmende_connectors::sample::write_demo_data(
            &data_dir,
            &allmende_connectors::sample::SampleSpec::default(),
        )
        .map_err(|e| SandboxError::Demo(format!("sample data: {e}")))?;
        let mut registered = Vec::new();
        for (org, desc) in crate::demo::munich::datasets() {
            if !self.spec.orgs.iter().any(|o| o.name == org) {
                continue;
            }
            let sample = files
                .datasets
                .iter()
                .find(|d| d.name == desc.id)
                .ok_or_else(|| SandboxError::Demo(format!("no sample data for `{}`", desc.id)))?;
            let user = self.registering_user(org)?;
            let use_postgres = desc.id == "smart-meter-readings"
                && self.spec.postgres_smart_meter
                && allmende_connectors::postgres::find_binaries().is_some();
            let in_postgres = if use_postgres {
                match self
                    .smart_meter_in_postgres(&data_dir, &sample.config)
                    .await
                {
                    Ok(json) => Some(json),
                    Err(e) => {
                        // Served from files then; the demo says why.
                        tracing::warn!(error = %e, "smart-meter readings not in postgresql");
                        let _ = self.postgres_problem.set(e.to_string());
                        None
                    }
                }
            } else {
                None
            };
            let (kind, config_json) = if let Some(json) = in_postgres {
                ("postgres", json)
            } else {
                (
                    "files",
                    serde_json::to_string(&sample.config)
                        .map_err(|e| SandboxError::Demo(e.to_string()))?,
                )
            };
            let ch = self
                .register_source(org, &user, &desc, kind, &config_json)
                .await?;
            if desc.id == "smart-meter-readings" {
                let csv = std::fs::read(&files.consent_csv).map_err(io_err(&files.consent_csv))?;
                pb::consent_client::ConsentClient::new(ch)
                    .import(pb::ImportConsentRequest {
                        dataset: desc.id.clone(),
                        csv,
                    })
                    .await
                    .map_err(|e| SandboxError::Demo(format!("consent import: {}", e.message())))?;
            }
            registered.push(desc.id.clone());
        }
        Ok(registered)
    }

    /// Where the smart-meter readings are served from: `PostgreSQL` or `files`.
    pub fn smart_meter_backend(&self) -> &'static str {
        if self.postgres.get().is_some() {
            "PostgreSQL"
        } else {
            "files"
        }
    }

    /// Why PostgreSQL, although installed, could not serve the smart-meter
    /// readings (then files do).
    pub fn postgres_problem(&self) -> Option<&str> {
        self.postgres_problem.get().map(String::as_str)
    }

    /// Starts a PostgreSQL in `<root>/postgresql`, loads the sample
    /// smart-meter readings into table `smart_meter_readings` and returns the
    /// postgres connector configuration reading it (the connection string,
    /// with a fresh password, in a secret file below the source roots).
    async fn smart_meter_in_postgres(
        &self,
        data_dir: &Path,
        files: &allmende_connectors::FileConnectorConfig,
    ) -> Result<String, SandboxError> {
        use allmende_connectors::Connector;
        let demo = |e: &dyn std::fmt::Display| SandboxError::Demo(format!("postgresql: {e}"));
        let server =
            allmende_connectors::postgres::LocalServer::start(&self.root.join("postgresql"))
                .map_err(|e| demo(&e))?;
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| SandboxError::Demo("postgresql: no randomness".into()))?;
        let password = format!("p{}", hex::encode(secret));
        let conn = server
            .create_reader("swm_reader", &password)
            .await
            .map_err(|e| demo(&e))?;
        let source = allmende_connectors::FileConnector::open_async(
            files.clone(),
            allmende_connectors::SourceRoots::new([data_dir.to_path_buf()]),
        )
        .await
        .map_err(|e| demo(&e))?;
        let read = source
            .read(allmende_connectors::ReadRequest::new())
            .await
            .map_err(|e| demo(&e))?
            .collect_all()
            .await
            .map_err(|e| demo(&e))?;
        let batches: Vec<_> = read.batches.into_iter().map(|(b, _)| b).collect();
        server
            .load("smart_meter_readings", &read.schema, &batches)
            .await
            .map_err(|e| demo(&e))?;
        let secret_file = data_dir.join("smart-meter-readings.pgpass");
        std::fs::write(&secret_file, conn).map_err(io_err(&secret_file))?;
        let _ = self.postgres.set(server);
        let config = allmende_connectors::PostgresConfig::new(
            &secret_file,
            "public",
            "smart_meter_readings",
            "timestamp",
        );
        serde_json::to_string(&config).map_err(|e| SandboxError::Demo(e.to_string()))
    }

    /// The first steward or operator of `org`: who registers its datasets.
    fn registering_user(&self, org: &str) -> Result<String, SandboxError> {
        self.spec
            .orgs
            .iter()
            .find(|o| o.name == org)
            .and_then(|o| {
                o.users
                    .iter()
                    .find(|(_, r)| matches!(r, Role::Steward | Role::Operator))
            })
            .map(|(u, _)| u.clone())
            .ok_or_else(|| SandboxError::Demo(format!("`{org}` has no steward")))
    }

    /// Writes the bundled sample data of `spec` under
    /// `<root>/sample-data/<subdir>` (inside the nodes' allowed source
    /// directory) and registers the brief's dataset `dataset` from it at its
    /// owner's node, by the owner's first steward or operator, without
    /// importing consent records.
    pub async fn register_sample(
        &self,
        dataset: &str,
        spec: &allmende_connectors::sample::SampleSpec,
        subdir: &str,
    ) -> Result<(), SandboxError> {
        let dir = self.root.join("sample-data").join(subdir);
        let files = allmende_connectors::sample::write_demo_data(&dir, spec)
            .map_err(|e| SandboxError::Demo(format!("sample data: {e}")))?;
        let (org, desc) = crate::demo::munich::datasets()
            .into_iter()
            .find(|(_, d)| d.id == dataset)
            .ok_or_else(|| SandboxError::Demo(format!("no dataset `{dataset}` in the brief")))?;
        let sample = files
            .datasets
            .iter()
            .find(|d| d.name == dataset)
            .ok_or_else(|| SandboxError::Demo(format!("no sample data for `{dataset}`")))?;
        let user = self.registering_user(org)?;
        self.register_dataset(org, &user, &desc, &sample.config)
            .await
            .map(|_| ())
    }

    /// Registers one dataset's connector as `org`/`user` at the
    /// organisation's first node (over mTLS, decided and audited there).
    /// Returns the channel for further calls.
    pub async fn register_dataset(
        &self,
        org: &str,
        user: &str,
        desc: &crate::catalog::DatasetDescription,
        config: &allmende_connectors::FileConnectorConfig,
    ) -> Result<tonic::transport::Channel, SandboxError> {
        let config_json =
            serde_json::to_string(config).map_err(|e| SandboxError::Demo(e.to_string()))?;
        self.register_source(org, user, desc, "files", &config_json)
            .await
    }

    /// Registers one dataset's connector of `kind` (`files`, `postgres`)
    /// with its JSON configuration, as [`Sandbox::register_dataset`] does.
    pub async fn register_source(
        &self,
        org: &str,
        user: &str,
        desc: &crate::catalog::DatasetDescription,
        kind: &str,
        config_json: &str,
    ) -> Result<tonic::transport::Channel, SandboxError> {
        use allmende_proto::v1 as pb;
        let p = self
            .profile(org, user)
            .map_err(|e| SandboxError::Demo(e.to_string()))?;
        let ch = p
            .connect()
            .await
            .map_err(|e| SandboxError::Demo(e.to_string()))?;
        let dataset_json =
            serde_json::to_string(desc).map_err(|e| SandboxError::Demo(e.to_string()))?;
        pb::connectors_client::ConnectorsClient::new(ch.clone())
            .register(pb::RegisterConnectorRequest {
                dataset_json,
                kind: kind.into(),
                config_json: config_json.into(),
            })
            .await
            .map_err(|e| SandboxError::Demo(format!("register `{}`: {}", desc.id, e.message())))?;
        Ok(ch)
    }

    /// The config file of a node.
    pub fn node_config_path(&self, name: &str) -> Option<PathBuf> {
        self.spec.orgs.iter().find_map(|o| {
            o.nodes.iter().any(|n| n == name).then(|| {
                self.root
                    .join(&o.name)
                    .join("nodes")
                    .join(name)
                    .join("node.toml")
            })
        })
    }

    /// Stops one node (drain, flush); it can be started again with
    /// [`Sandbox::start_node`].
    pub async fn stop_node(&mut self, name: &str) -> Result<(), SandboxError> {
        if let Some(i) = self.nodes.iter().position(|n| n.name == name) {
            let n = self.nodes.remove(i);
            n.shutdown().await?;
        }
        Ok(())
    }

    /// Starts a stopped node again from its config (same ports if fixed,
    /// a fresh port otherwise); peers are told its new endpoint.
    pub async fn start_node(&mut self, name: &str) -> Result<&NodeHandle, SandboxError> {
        let path = self
            .node_config_path(name)
            .ok_or_else(|| SandboxError::Io {
                path: PathBuf::from(name),
                source: std::io::Error::other("no such node in the sandbox"),
            })?;
        let cfg = NodeConfig::load(&path)?;
        let handle = node::start(cfg, self.clock.clone()).await?;
        self.nodes.push(handle);
        self.spread_peers();
        self.nodes.last().ok_or_else(|| SandboxError::Io {
            path: PathBuf::from(name),
            source: std::io::Error::other("node vanished"),
        })
    }

    /// With free ports, tells every node the current endpoints of the others.
    fn spread_peers(&self) {
        if self.spec.base_port.is_some() {
            return;
        }
        for n in &self.nodes {
            let peers = self
                .nodes
                .iter()
                .filter(|m| m.name != n.name)
                .map(|m| PeerConfig {
                    name: m.name.clone(),
                    endpoint: m.grpc_endpoint(),
                })
                .collect();
            n.set_peers(peers);
        }
    }

    /// The running node of the organisation of kind city (it holds the
    /// federation root and publishes the directory).
    pub fn city_node(&self) -> Option<&NodeHandle> {
        let city = self.spec.orgs.iter().find(|o| o.kind == OrgKind::City)?;
        self.nodes.iter().find(|n| city.nodes.contains(&n.name))
    }

    /// Switches the federation to the network directory: the city node
    /// records every running node (endpoint, certificate fingerprint) in
    /// the directory and re-signs it; every other node fetches it from the
    /// city node every `refresh` from now on (no file is copied). Returns
    /// the directory's version at the city node.
    pub async fn use_directory(&self, refresh: std::time::Duration) -> Result<u64, SandboxError> {
        let city = self
            .city_node()
            .ok_or_else(|| SandboxError::Demo("the sandbox has no running city node".into()))?;
        let mut entries = Vec::new();
        for o in &self.spec.orgs {
            for name in &o.nodes {
                let Some(n) = self.node(name) else { continue };
                let cert = self
                    .root
                    .join(&o.name)
                    .join("nodes")
                    .join(name)
                    .join("node.crt");
                let pem = std::fs::read_to_string(&cert).map_err(io_err(&cert))?;
                let facts = ca::cert_facts_from_pem(&cert, &pem)?;
                entries.push(crate::pki::membership::NodeEntry {
                    org: o.name.clone(),
                    node: name.clone(),
                    endpoint: n.grpc_endpoint(),
                    cert_sha256: facts.sha256,
                    mls_key_package: String::new(),
                });
            }
        }
        let version = city
            .directory
            .set_nodes(&entries)
            .await
            .map_err(|e| SandboxError::Demo(format!("directory: {e}")))?;
        for n in &self.nodes {
            if n.name != city.name {
                n.set_directory_source(Some(city.grpc_endpoint()), refresh);
            }
        }
        Ok(version)
    }

    /// Relayed access through the city hub (`docs/relay.md`): the network
    /// directory ([`Sandbox::use_directory`]; the city node is every
    /// node's hub), then waits until every node published an MLS key
    /// package in its directory slot (each node's relay task does so once
    /// it holds a directory listing it) and every node holds the city's
    /// directory with them. Returns that version.
    pub async fn use_relay(&self, refresh: std::time::Duration) -> Result<u64, SandboxError> {
        self.use_directory(refresh).await?;
        let city = self
            .city_node()
            .ok_or_else(|| SandboxError::Demo("the sandbox has no running city node".into()))?;
        let t0 = std::time::Instant::now();
        loop {
            let doc = city.trust.snapshot().doc.clone();
            let missing: Vec<&str> = doc
                .nodes
                .iter()
                .filter(|n| n.node != city.name && n.mls_key_package.is_empty())
                .map(|n| n.node.as_str())
                .collect();
            let behind = self
                .nodes
                .iter()
                .filter(|n| n.trust.snapshot().doc.version < doc.version)
                .count();
            if missing.is_empty() && behind == 0 {
                return Ok(doc.version);
            }
            if t0.elapsed() > std::time::Duration::from_secs(60) {
                return Err(SandboxError::Demo(format!(
                    "no key package published by {missing:?}; {behind} nodes behind the city's directory"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// A running node by name.
    pub fn node(&self, name: &str) -> Option<&NodeHandle> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The directory of an organisation's CA.
    pub fn org_dir(&self, org: &str) -> PathBuf {
        self.root.join(org).join("ca")
    }

    /// The profile of a sandbox user (`<org>/users/<id>.profile.toml`).
    pub fn profile(
        &self,
        org: &str,
        user: &str,
    ) -> Result<ClientProfile, crate::client::ProfileError> {
        ClientProfile::load(
            &self
                .root
                .join(org)
                .join("users")
                .join(format!("{user}.profile.toml")),
        )
    }

    /// A node's own identity as a client profile aimed at `endpoint` (for
    /// node-to-node calls).
    pub fn node_profile(&self, org: &str, node: &str, endpoint: &str) -> ClientProfile {
        let nd = self.root.join(org).join("nodes").join(node);
        ClientProfile {
            endpoint: endpoint.to_owned(),
            root_ca: nd.join(ca::ROOT_CERT),
            cert: nd.join("node.crt"),
            key: nd.join("node.key"),
        }
    }

    /// Stops every node (drain, flush).
    pub async fn shutdown(self) -> Result<(), SandboxError> {
        let mut first = None;
        for n in self.nodes {
            if let Err(e) = n.shutdown().await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }
}
