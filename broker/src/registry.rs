//! Registered connectors: which local source serves which dataset of this
//! node's organisation. Registrations are persisted in the store; on start
//! the node reopens every enabled connector. Registering validates that the
//! source is reachable and that its schema agrees with the dataset's declared
//! schema, publishes the dataset's metadata to the federated catalog, and
//! mirrors the dataset into the policy entities. The rows never leave the
//! node through the registry; they leave only through `access`.
//!
//! Every local source is read through the node's [`SourceRoots`] (built from
//! `sources.roots` in the node config): at registration, when a connector is
//! reopened at start or enabled, and on every file open of every read. A
//! refused source is written to the audit log (`read_source`, deny,
//! `source-confinement:<reason>`; no path in the entry).
//!
//! Two kinds of source: `files` ([`FileConnector`]) and `postgres`
//! ([`PostgresConnector`]: a table or view; its connection-string secret file
//! is read through the same roots, and it connects only to the hosts in
//! `sources.postgres_hosts`; a refused host is audited like a refused path).
//!
//! A third kind, `mqtt` ([`MqttBufferConnector`]): sensor uplinks an MQTT
//! subscriber buffers durably in the node's store (`crate::uplinks`); the
//! broker's host must be in `sources.mqtt_hosts` (refused and audited like a
//! postgres host otherwise). The subscriber runs while the dataset is served:
//! started when it is registered, enabled or reopened at start, stopped when
//! it is disabled, replaced or removed (removal also drops its buffer).
//!
//! A fourth kind, `mds` (`allmende_connectors::mds`): the hourly MDS batches an
//! obliged company's provider endpoint delivers; the provider's host must be
//! in `sources.mds_hosts` (refused and audited otherwise), its token and CA
//! files are read through the roots. A puller (`crate::mds::puller`) runs
//! while the dataset is served, like an mqtt subscriber; the served rows are
//! the imported trips (`crate::mds::batches`), dropped with the registration.
//! A fifth kind, `sensorthings` ([`SensorThingsConnector`]): observations of
//! an OGC SensorThings API service over HTTP(S), fetched on every read; its
//! host must be in `sources.http_hosts` (refused and audited like a postgres
//! host otherwise), its CA file is read through the roots.

use crate::audit::{AuditLog, Draft};
use crate::catalog::{Catalog, CatalogEntry, CatalogError, DatasetDescription};
use crate::clock::SharedClock;
use crate::locks::{self, Poisoned};
use crate::mds::{MdsBatches, PullHandle, Pulls};
use crate::metrics::NodeMetrics;
use crate::pki::{Principal, Subject};
use crate::policy::PolicyPoint;
use crate::store::{Store, StoreError, Table, TableName, WriteBatch};
use crate::uplinks::{UplinkMetrics, Uplinks};
use allmende_connectors::mds::MdsConfig;
use allmende_connectors::mqtt::{IngestHandle, MqttBufferConnector, MqttConfig};
use allmende_connectors::{
    Connector, ConnectorDescription, ConnectorError, FieldSpec, FileConnector, FileConnectorConfig,
    HealthReport, PostgresConfig, PostgresConnector, ReadRequest, ReadStream, Refusal,
    SensorThingsConfig, SensorThingsConnector, SourceRoots,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// The names the lock helpers log for the registry's state.
const LIVE: &str = "live connectors";
const PROBLEMS: &str = "connector problems";
const INGESTS: &str = "mqtt subscribers";
const PULLERS: &str = "mds pullers";

/// The connector kinds a registration may name.
pub const KINDS: [&str; 5] = ["files", "postgres", "mqtt", "mds", "sensorthings"];

/// A registration's source configuration, stored as the kind's own JSON
/// object (untagged: registrations stored before there was more than one
/// kind hold a bare files configuration and still load).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SourceConfig {
    /// Local files (`kind = "files"`).
    Files(FileConnectorConfig),
    /// A PostgreSQL table or view (`kind = "postgres"`).
    Postgres(PostgresConfig),
    /// MQTT sensor uplinks, buffered by the node (`kind = "mqtt"`).
    Mqtt(MqttConfig),
    /// Hourly MDS batches pulled from an obliged provider (`kind = "mds"`).
    Mds(MdsConfig),
    /// Observations of an OGC SensorThings API service (`kind = "sensorthings"`).
    SensorThings(SensorThingsConfig),
}

impl SourceConfig {
    /// The connector kind.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Files(_) => "files",
            SourceConfig::Postgres(_) => "postgres",
            SourceConfig::Mqtt(_) => "mqtt",
            SourceConfig::Mds(_) => "mds",
            SourceConfig::SensorThings(_) => "sensorthings",
        }
    }

    /// Parses the configuration JSON of `kind`.
    pub fn parse(kind: &str, json: &str) -> Result<Self, RegistryError> {
        match kind {
            "files" => Ok(SourceConfig::Files(parse_config(json)?)),
            "postgres" => Ok(SourceConfig::Postgres(
                serde_json::from_str(json).map_err(RegistryError::ConfigJson)?,
            )),
            "mqtt" => Ok(SourceConfig::Mqtt(
                serde_json::from_str(json).map_err(RegistryError::ConfigJson)?,
            )),
            "mds" => Ok(SourceConfig::Mds(
                serde_json::from_str(json).map_err(RegistryError::ConfigJson)?,
            )),
            "sensorthings" => Ok(SourceConfig::SensorThings(
                serde_json::from_str(json).map_err(RegistryError::ConfigJson)?,
            )),
            other => Err(RegistryError::Kind(crate::text::shown(other, 40))),
        }
    }

    /// The declared columns, the subject column, the identifier columns
    /// and the cursor column, to be completed from the dataset.
    fn columns_mut(&mut self) -> ColumnsMut<'_> {
        match self {
            SourceConfig::Files(c) => (
                &mut c.schema,
                &mut c.subject_column,
                &mut c.identifier_columns,
                &c.cursor_column,
            ),
            SourceConfig::Postgres(c) => (
                &mut c.schema,
                &mut c.subject_column,
                &mut c.identifier_columns,
                &c.cursor_column,
            ),
            SourceConfig::Mqtt(c) => (
                &mut c.schema,
                &mut c.subject_column,
                &mut c.identifier_columns,
                &c.cursor_column,
            ),
            SourceConfig::Mds(c) => (
                &mut c.schema,
                &mut c.subject_column,
                &mut c.identifier_columns,
                &c.cursor_column,
            ),
            SourceConfig::SensorThings(c) => (
                &mut c.schema,
                &mut c.subject_column,
                &mut c.identifier_columns,
                &c.cursor_column,
            ),
        }
    }

    /// Opens the source of `dataset`, confined by `roots` (an mqtt source
    /// serves its buffer in `uplinks`, an mds source its imported trips in
    /// `batches`; subscriber and puller are started apart).
    async fn open(
        &self,
        roots: SourceRoots,
        uplinks: &Uplinks,
        batches: &MdsBatches,
        dataset: &str,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        Ok(match self {
            SourceConfig::Files(c) => Arc::new(FileConnector::open_async(c.clone(), roots).await?),
            SourceConfig::Postgres(c) => Arc::new(PostgresConnector::open(c.clone(), roots).await?),
            SourceConfig::Mqtt(c) => Arc::new(MqttBufferConnector::open(
                c,
                &roots,
                Arc::new(uplinks.dataset(dataset)),
                dataset,
            )?),
            SourceConfig::Mds(c) => Arc::new(allmende_connectors::mds::open_connector(
                c,
                &roots,
                Arc::new(batches.dataset(dataset)),
                dataset,
            )?),
            SourceConfig::SensorThings(c) => {
                Arc::new(SensorThingsConnector::open(c.clone(), roots).await?)
            }
        })
    }
}

/// The columns of a source configuration the dataset completes: declared
/// schema, subject column, identifier columns, and the cursor column.
type ColumnsMut<'a> = (
    &'a mut Option<Vec<FieldSpec>>,
    &'a mut Option<String>,
    &'a mut Vec<String>,
    &'a Option<String>,
);

/// A stored registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub dataset: DatasetDescription,
    pub kind: String,
    pub config: SourceConfig,
    pub enabled: bool,
    /// `<org>/<user>` or `<org>/node/<name>` of who registered it.
    pub registered_by: String,
    pub registered_at_ms: i64,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "unknown connector kind `{0}`, expected `files`, `postgres`, `mqtt`, `mds` or `sensorthings`"
    )]
    Kind(String),
    #[error("invalid connector configuration: {0}")]
    Config(String),
    #[error("invalid dataset description: {0}")]
    Dataset(String),
    #[error("invalid dataset description: {0}")]
    DatasetJson(#[source] serde_json::Error),
    #[error("invalid connector configuration: {0}")]
    ConfigJson(#[source] serde_json::Error),
    #[error("connector refused: {0}")]
    Connector(#[from] ConnectorError),
    #[error("no connector is registered for dataset `{0}`")]
    Unknown(String),
    #[error("dataset `{0}` is disabled by its owner")]
    Disabled(String),
    #[error("catalog: {0}")]
    Catalog(#[source] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
}

/// A live, enabled dataset: its registration and open connector.
#[derive(Clone)]
pub struct Served {
    pub registration: Registration,
    pub connector: Arc<dyn Connector>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("dataset", &self.registration.dataset.id)
            .finish_non_exhaustive()
    }
}

/// The registry of one node.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    table: Table<String, Registration>,
    live: RwLock<BTreeMap<String, Served>>,
    problems: RwLock<BTreeMap<String, String>>,
    catalog: Arc<Catalog>,
    policy: Arc<PolicyPoint>,
    clock: SharedClock,
    write: tokio::sync::Mutex<()>,
    roots: SourceRoots,
    audit: AuditLog,
    /// The buffers of mqtt sources.
    uplinks: Uplinks,
    metrics: Arc<NodeMetrics>,
    /// The running subscribers of served mqtt sources, by dataset.
    ingests: std::sync::Mutex<BTreeMap<String, IngestHandle>>,
    /// What the pullers of mds sources share (their imported batches too).
    pulls: Arc<Pulls>,
    /// The running pullers of served mds sources, by dataset.
    pullers: std::sync::Mutex<BTreeMap<String, PullHandle>>,
}

/// The action of a refused source in the audit log.
pub const REFUSED_SOURCE_ACTION: &str = "read_source";

/// The policy id a refused source is recorded with: `source-confinement:<reason code>`.
pub fn refusal_policy_id(reason: Refusal) -> String {
    format!("source-confinement:{}", reason.code())
}

/// The audit entry of a refused source: who tried (a user, or the node
/// itself), which dataset, why (a reason code; never the path).
fn refusal_draft(org: &str, actor: &Subject, dataset: &str, reason: Refusal) -> Draft {
    let mut d = Draft::acting(
        org,
        actor,
        REFUSED_SOURCE_ACTION,
        dataset,
        allmende_audit::EntryKind::Decision,
    );
    d.decision = Some(allmende_audit::Decision::Deny);
    d.policy_ids = vec![refusal_policy_id(reason)];
    d
}

/// The refusal inside a connector error, if it is one.
fn refusal_of(e: &ConnectorError) -> Option<Refusal> {
    match e {
        ConnectorError::Confined { reason, .. } => Some(*reason),
        _ => None,
    }
}

/// A served connector whose refused opens (a link swapped in after
/// registration, a file moved into the node's own directories) are audited
/// before the error reaches the caller.
struct AuditedSource {
    inner: Arc<dyn Connector>,
    dataset: String,
    org: String,
    node: String,
    audit: AuditLog,
}

impl AuditedSource {
    /// Audits a refusal, logs its detail for the operator, and names only the
    /// dataset to the caller (a reader of another organisation learns no path).
    async fn audited<T>(&self, r: Result<T, ConnectorError>) -> Result<T, ConnectorError> {
        let Err(e) = r else { return r };
        let Some(reason) = refusal_of(&e) else {
            return Err(e);
        };
        tracing::warn!(dataset = %self.dataset, error = %e, "source refused");
        let d = refusal_draft(
            &self.org,
            &Subject::Node(self.node.clone()),
            &self.dataset,
            reason,
        );
        if let Err(a) = self.audit.append(d).await {
            tracing::warn!(dataset = %self.dataset, error = %a, "refused source not audited");
        }
        Err(ConnectorError::Confined {
            path: self.dataset.clone(),
            reason,
        })
    }
}

impl Connector for AuditedSource {
    fn describe(&self) -> &ConnectorDescription {
        self.inner.describe()
    }

    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<ReadStream, ConnectorError>> {
        Box::pin(async move {
            let stream = self.audited(self.inner.read(request).await).await?;
            // A file refused in the middle of the read ends it; audit that too.
            let (audit, org, node, dataset) = (
                self.audit.clone(),
                self.org.clone(),
                self.node.clone(),
                self.dataset.clone(),
            );
            Ok(stream.on_error(Box::new(move |e| {
                if let Some(reason) = refusal_of(e) {
                    let d = refusal_draft(&org, &Subject::Node(node.clone()), &dataset, reason);
                    let audit = audit.clone();
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            if let Err(a) = audit.append(d).await {
                                tracing::warn!(error = %a, "refused source not audited");
                            }
                        });
                    }
                }
            })))
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<HealthReport, ConnectorError>> {
        Box::pin(async move { self.audited(self.inner.health().await).await })
    }
}

fn parse_dataset(json: &str) -> Result<DatasetDescription, RegistryError> {
    serde_json::from_str(json).map_err(RegistryError::DatasetJson)
}

/// Parses a `files` connector configuration (JSON).
pub fn parse_config(json: &str) -> Result<FileConnectorConfig, RegistryError> {
    serde_json::from_str(json).map_err(RegistryError::ConfigJson)
}

impl Registry {
    /// Opens the registry and reopens every enabled connector. A connector
    /// whose source is gone is kept registered, not served, and reported.
    /// Every source is read only where `roots` allows; refusals go to `audit`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the node's parts a registry serves sources with"
    )]
    pub async fn open(
        store: Store,
        catalog: Arc<Catalog>,
        policy: Arc<PolicyPoint>,
        clock: SharedClock,
        roots: SourceRoots,
        audit: AuditLog,
        metrics: Arc<NodeMetrics>,
        mds_identity: Option<crate::tls::ClientIdentity>,
    ) -> Result<Self, RegistryError> {
        let table: Table<String, Registration> = store.table(TableName::Connectors)?;
        let uplinks = Uplinks::open(store.clone(), clock.clone())?;
        let id = catalog.identity();
        let pulls = Arc::new(Pulls {
            batches: MdsBatches::open(store.clone())?,
            deliveries: crate::obligations::Deliveries::open(store.clone())?,
            audit: audit.clone(),
            clock: clock.clone(),
            roots: roots.clone(),
            organisation: id.organisation.clone(),
            node: id.node.clone(),
            identity: mds_identity,
            write: tokio::sync::Mutex::new(()),
        });
        let reg = Self {
            store,
            table,
            live: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(BTreeMap::new()),
            catalog,
            policy,
            clock,
            write: tokio::sync::Mutex::new(()),
            roots,
            audit,
            uplinks,
            metrics,
            ingests: std::sync::Mutex::new(BTreeMap::new()),
            pulls,
            pullers: std::sync::Mutex::new(BTreeMap::new()),
        };
        for (id, r) in reg.table.entries()? {
            reg.mirror_policy(&r);
            if !r.enabled {
                continue;
            }
            match reg.reopen(&r).await {
                Ok(c) => {
                    let served = reg.served_for(r, c);
                    reg.set_live(&id, Some(served));
                }
                Err(e) => {
                    tracing::warn!(dataset = %id, error = %e, "connector not served");
                    reg.set_problem(&id, Some(e.to_string()));
                }
            }
        }
        Ok(reg)
    }

    /// Opens a stored registration's source again (at start, on enable): a
    /// refusal is audited with the node as the actor.
    async fn reopen(&self, r: &Registration) -> Result<Arc<dyn Connector>, ConnectorError> {
        let opened = r
            .config
            .open(
                self.roots.clone(),
                &self.uplinks,
                &self.pulls.batches,
                &r.dataset.id,
            )
            .await;
        if let Err(e) = &opened
            && let Some(reason) = refusal_of(e)
        {
            let id = self.catalog.identity();
            let d = refusal_draft(
                &id.organisation,
                &Subject::Node(id.node.clone()),
                &r.dataset.id,
                reason,
            );
            if let Err(a) = self.audit.append(d).await {
                tracing::warn!(dataset = %r.dataset.id, error = %a, "refused source not audited");
            }
        }
        opened
    }

    fn served_for(&self, registration: Registration, connector: Arc<dyn Connector>) -> Served {
        let id = self.catalog.identity();
        Served {
            connector: Arc::new(AuditedSource {
                inner: connector,
                dataset: registration.dataset.id.clone(),
                org: id.organisation.clone(),
                node: id.node.clone(),
                audit: self.audit.clone(),
            }),
            registration,
        }
    }

    /// Where this node reads sources from.
    pub fn source_roots(&self) -> &SourceRoots {
        &self.roots
    }

    fn set_live(&self, id: &str, served: Option<Served>) {
        self.set_ingest(id, served.as_ref().map(|s| &s.registration.config));
        self.set_pull(id, served.as_ref().map(|s| &s.registration.config));
        if let Ok(mut l) = locks::write(&self.live, LIVE) {
            match served {
                Some(s) => {
                    l.insert(id.to_owned(), s);
                }
                None => {
                    l.remove(id);
                }
            }
        }
    }

    /// Stops the subscriber of `id`, if one runs, and starts the one of
    /// `config` if it is an mqtt source (a subscriber that cannot start is
    /// the dataset's problem; its buffer is still served).
    fn set_ingest(&self, id: &str, config: Option<&SourceConfig>) {
        let Ok(mut ingests) = locks::lock(&self.ingests, INGESTS) else {
            return;
        };
        // The old subscriber stops before the new one connects with the same client id.
        drop(ingests.remove(id));
        let Some(SourceConfig::Mqtt(c)) = config else {
            return;
        };
        let started = allmende_connectors::mqtt::spawn_ingest(
            c,
            &self.roots,
            Arc::new(self.uplinks.dataset(id)),
            Arc::new(UplinkMetrics::new(self.metrics.clone(), id)),
            id,
        );
        match started {
            Ok(handle) => {
                ingests.insert(id.to_owned(), handle);
            }
            Err(e) => {
                tracing::warn!(dataset = %id, error = %e, "mqtt subscriber not started");
                drop(ingests);
                self.set_problem(id, Some(format!("mqtt subscriber not started: {e}")));
            }
        }
    }

    /// Stops the puller of `id`, if one runs, and starts the one of
    /// `config` if it is an mds source (a puller that cannot start is the
    /// dataset's problem; what it imported is still served).
    fn set_pull(&self, id: &str, config: Option<&SourceConfig>) {
        let Ok(mut pullers) = locks::lock(&self.pullers, PULLERS) else {
            return;
        };
        drop(pullers.remove(id));
        let Some(SourceConfig::Mds(c)) = config else {
            return;
        };
        match crate::mds::puller::spawn(self.pulls.clone(), c, id) {
            Ok(handle) => {
                pullers.insert(id.to_owned(), handle);
            }
            Err(e) => {
                tracing::warn!(dataset = %id, error = %e, "mds puller not started");
                drop(pullers);
                self.set_problem(id, Some(format!("mds puller not started: {e}")));
            }
        }
    }

    /// The batches mds sources imported (the rejected ones kept too).
    pub fn mds_batches(&self) -> &MdsBatches {
        &self.pulls.batches
    }

    /// Stops every mqtt subscriber and mds puller (the node is stopping).
    pub fn stop_subscribers(&self) {
        if let Ok(mut ingests) = locks::lock(&self.ingests, INGESTS) {
            ingests.clear();
        }
        if let Ok(mut pullers) = locks::lock(&self.pullers, PULLERS) {
            pullers.clear();
        }
    }

    /// Whether the mqtt subscriber of `dataset` is connected to its broker
    /// (`None`: no subscriber runs).
    pub fn mqtt_connected(&self, dataset: &str) -> Option<bool> {
        locks::lock(&self.ingests, INGESTS)
            .ok()?
            .get(dataset)
            .map(|h| h.status().connected())
    }

    fn set_problem(&self, id: &str, problem: Option<String>) {
        if let Ok(mut p) = locks::write(&self.problems, PROBLEMS) {
            match problem {
                Some(m) => {
                    p.insert(id.to_owned(), m);
                }
                None => {
                    p.remove(id);
                }
            }
        }
    }

    fn mirror_policy(&self, r: &Registration) {
        let owner = self.catalog.identity().organisation.clone();
        let dataset = r.dataset.policy_dataset(&owner);
        self.policy.with_entities(|e| e.upsert_dataset(dataset));
    }

    /// Validates a registration by `caller` without changing anything: the
    /// dataset description, the connector kind and config, the source's
    /// confinement (a refusal is audited), reachability, and schema agreement.
    /// Returns the opened connector.
    pub async fn validate(
        &self,
        caller: &Principal,
        dataset_json: &str,
        kind: &str,
        config_json: &str,
    ) -> Result<(DatasetDescription, SourceConfig, Arc<dyn Connector>), RegistryError> {
        if !KINDS.contains(&kind) {
            return Err(RegistryError::Kind(crate::text::shown(kind, 40)));
        }
        let dataset = parse_dataset(dataset_json)?;
        let problems = dataset.problems();
        if !problems.is_empty() {
            return Err(RegistryError::Dataset(problems.join("; ")));
        }
        let mut config = SourceConfig::parse(kind, config_json)?;
        let (schema, subject_column, identifier_columns, cursor_column) = config.columns_mut();
        // The dataset's declared schema and identifying columns govern.
        if schema.is_none() {
            *schema = Some(dataset.schema.fields.clone());
        }
        if subject_column.is_none() {
            subject_column.clone_from(&dataset.schema.subject_column);
        }
        if identifier_columns.is_empty() {
            identifier_columns.clone_from(&dataset.schema.identifier_columns);
        }
        if *subject_column != dataset.schema.subject_column {
            return Err(RegistryError::Config(format!(
                "connector subject column `{}` differs from the dataset's `{}`",
                subject_column.as_deref().unwrap_or("-"),
                dataset.schema.subject_column.as_deref().unwrap_or("-")
            )));
        }
        // A resume cursor never follows an identifying column.
        let mut identifying = dataset.schema.identifying_columns();
        identifying.extend(subject_column.iter().map(String::as_str));
        identifying.extend(identifier_columns.iter().map(String::as_str));
        crate::access::cursor::identifying_cursor_column(cursor_column.as_deref(), &identifying)
            .map_err(RegistryError::Config)?;
        let connector = match config
            .open(
                self.roots.clone(),
                &self.uplinks,
                &self.pulls.batches,
                &dataset.id,
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if let Some(reason) = refusal_of(&e) {
                    let d =
                        refusal_draft(&caller.organisation, &caller.subject, &dataset.id, reason);
                    // A refusal that cannot be audited fails the call (`UNAVAILABLE`).
                    self.audit.append(d).await?;
                }
                return Err(e.into());
            }
        };
        allmende_connectors::schema::check_declared_schema(
            &dataset.schema.fields,
            &connector.describe().schema,
        )?;
        Ok((dataset, config, connector))
    }

    /// Registers (or replaces) a dataset's connector and publishes its
    /// metadata. The caller has authorized it.
    pub async fn register(
        &self,
        dataset: DatasetDescription,
        config: SourceConfig,
        connector: Arc<dyn Connector>,
        registered_by: &str,
    ) -> Result<CatalogEntry, RegistryError> {
        let _w = self.write.lock().await;
        let r = Registration {
            dataset: dataset.clone(),
            kind: config.kind().into(),
            config,
            enabled: true,
            registered_by: registered_by.to_owned(),
            registered_at_ms: self.clock.now_unix_ms(),
        };
        let mut b = WriteBatch::new();
        b.put(&self.table, &dataset.id, &r)?;
        self.store.commit_durable(b).await?;
        let entry = self
            .catalog
            .upsert_local(dataset.clone())
            .await
            .map_err(RegistryError::Catalog)?;
        self.mirror_policy(&r);
        self.set_problem(&dataset.id, None);
        let served = self.served_for(r, connector);
        self.set_live(&dataset.id, Some(served));
        Ok(entry)
    }

    /// Enables or disables serving a dataset.
    pub async fn set_enabled(
        &self,
        dataset: &str,
        enabled: bool,
    ) -> Result<Registration, RegistryError> {
        let _w = self.write.lock().await;
        let mut r = self
            .table
            .get(&dataset.to_owned())?
            .ok_or_else(|| RegistryError::Unknown(crate::text::shown(dataset, 100)))?;
        r.enabled = enabled;
        let mut b = WriteBatch::new();
        b.put(&self.table, &r.dataset.id, &r)?;
        self.store.commit_durable(b).await?;
        if enabled {
            let c = self.reopen(&r).await?;
            let served = self.served_for(r.clone(), c);
            self.set_live(dataset, Some(served));
        } else {
            self.set_live(dataset, None);
        }
        Ok(r)
    }

    /// Removes a registration and its catalog entry.
    pub async fn remove(&self, dataset: &str) -> Result<bool, RegistryError> {
        let _w = self.write.lock().await;
        if self.table.get(&dataset.to_owned())?.is_none() {
            return Ok(false);
        }
        let mut b = WriteBatch::new();
        b.remove(&self.table, &dataset.to_owned());
        self.store.commit_durable(b).await?;
        self.set_live(dataset, None);
        // An mqtt source's buffered uplinks go with it, an mds source's
        // imported batches too (its delivery records stay).
        self.uplinks.dataset(dataset).purge().await?;
        self.pulls.batches.dataset(dataset).purge().await?;
        self.catalog
            .remove_local(dataset)
            .await
            .map_err(RegistryError::Catalog)?;
        // Grants and requests naming the dataset leave the entity data with
        // it (the stored ones stay; they are mirrored again at the next
        // start if the dataset is registered again).
        self.policy.with_entities(|e| {
            e.remove_dataset_and_dependents(dataset);
        });
        Ok(true)
    }

    /// The stored registration of a dataset.
    pub fn registration(&self, dataset: &str) -> Result<Option<Registration>, RegistryError> {
        Ok(self.table.get(&dataset.to_owned())?)
    }

    /// Every registration with its current problem (if any).
    pub fn list(&self) -> Result<Vec<(Registration, Option<String>)>, RegistryError> {
        let problems = locks::read(&self.problems, PROBLEMS)?.clone();
        Ok(self
            .table
            .entries()?
            .into_iter()
            .map(|(id, r)| {
                let p = problems.get(&id).cloned();
                (r, p)
            })
            .collect())
    }

    /// The live connector of an enabled dataset.
    pub fn served(&self, dataset: &str) -> Result<Served, RegistryError> {
        if let Some(s) = locks::read(&self.live, LIVE)?.get(dataset).cloned() {
            return Ok(s);
        }
        match self.table.get(&dataset.to_owned())? {
            Some(r) if !r.enabled => Err(RegistryError::Disabled(r.dataset.id)),
            Some(r) => Err(RegistryError::Connector(ConnectorError::Unreachable {
                path: r.dataset.id,
                reason: locks::read(&self.problems, PROBLEMS)?
                    .get(dataset)
                    .cloned()
                    .unwrap_or_else(|| "not open".into()),
            })),
            None => Err(RegistryError::Unknown(crate::text::shown(dataset, 100))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use allmende_connectors::FileFormat;

    /// A registration as stored before there was more than one kind: the
    /// `config` field held a files configuration.
    #[derive(Serialize)]
    struct OldRegistration {
        dataset: DatasetDescription,
        kind: String,
        config: FileConnectorConfig,
        enabled: bool,
        registered_by: String,
        registered_at_ms: i64,
    }

    #[test]
    fn registrations_stored_in_the_old_format_still_load() {
        let mut files = FileConnectorConfig::new("/srv/sources/readings.csv", FileFormat::Csv);
        files.cursor_column = Some("timestamp".into());
        let old = OldRegistration {
            dataset: crate::demo::munich::smart_meter_readings(),
            kind: "files".into(),
            config: files.clone(),
            enabled: true,
            registered_by: "swm/steward".into(),
            registered_at_ms: 1,
        };
        let stored = serde_json::to_vec(&old).unwrap();
        let r: Registration = serde_json::from_slice(&stored).unwrap();
        assert_eq!(r.config, SourceConfig::Files(files));
        assert_eq!(r.config.kind(), "files");
        // And the files configuration is stored exactly as before.
        assert_eq!(serde_json::to_vec(&r).unwrap(), stored);

        let pg = PostgresConfig::new("/srv/sources/pg.secret", "public", "readings", "ts");
        let r = Registration {
            config: SourceConfig::Postgres(pg.clone()),
            kind: "postgres".into(),
            ..r
        };
        let back: Registration = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.config, SourceConfig::Postgres(pg));

        // An mqtt registration round-trips as its own kind (untagged: by its fields).
        let mqtt = MqttConfig::new("mqtt://127.0.0.1:1883", "v3/air@munich/devices/+/up", "n");
        let r = Registration {
            config: SourceConfig::Mqtt(mqtt.clone()),
            kind: "mqtt".into(),
            ..back
        };
        let back: Registration = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.config, SourceConfig::Mqtt(mqtt));
    }

    #[test]
    fn configurations_parse_by_kind() {
        let pg = r#"{"secret_file":"/s/pg.secret","relation":"readings","cursor_column":"ts"}"#;
        assert!(matches!(
            SourceConfig::parse("postgres", pg).unwrap(),
            SourceConfig::Postgres(_)
        ));
        // A postgres configuration is not a files one, nor the other way round.
        assert!(SourceConfig::parse("files", pg).is_err());
        let files = r#"{"path":"/s/a.csv","format":"csv"}"#;
        assert!(SourceConfig::parse("postgres", files).is_err());
        let e = SourceConfig::parse("mysql", files).unwrap_err();
        assert!(
            e.to_string()
                .contains("`files`, `postgres`, `mqtt`, `mds` or `sensorthings`"),
            "{e}"
        );
        let mqtt =
            r#"{"broker":"mqtt://127.0.0.1:1883","topic":"v3/a@t/devices/+/up","client_id":"n"}"#;
        let parsed = SourceConfig::parse("mqtt", mqtt).unwrap();
        assert!(matches!(parsed, SourceConfig::Mqtt(_)));
        assert_eq!(parsed.kind(), "mqtt");
        assert!(SourceConfig::parse("mqtt", files).is_err());
        assert!(SourceConfig::parse("files", mqtt).is_err());
        assert!(SourceConfig::parse("postgres", mqtt).is_err());
        let mds = r#"{"provider":"https://127.0.0.1:7800","organisation":"scooter-co","obligation_dataset":"scooter-trips","token_file":"/s/t","ca_file":"/s/ca.pem","start":"2026-11-30T10"}"#;
        let parsed = SourceConfig::parse("mds", mds).unwrap();
        assert_eq!(parsed.kind(), "mds");
        for other in ["files", "postgres", "mqtt"] {
            assert!(SourceConfig::parse(other, mds).is_err(), "{other}");
        }
        assert!(SourceConfig::parse("mds", mqtt).is_err());
        let back: SourceConfig =
            serde_json::from_slice(&serde_json::to_vec(&parsed).unwrap()).unwrap();
        assert_eq!(back, parsed);
        let sta = r#"{"service":"http://127.0.0.1:8080/v1.1","datastreams":[1,"a"],"columns":{"t":"observation.phenomenonTime"},"cursor_column":"t"}"#;
        let parsed = SourceConfig::parse("sensorthings", sta).unwrap();
        assert!(matches!(parsed, SourceConfig::SensorThings(_)));
        assert_eq!(parsed.kind(), "sensorthings");
        assert!(SourceConfig::parse("mqtt", sta).is_err());
        assert!(SourceConfig::parse("sensorthings", mqtt).is_err());
        assert!(SourceConfig::parse("sensorthings", files).is_err());
        // Stored untagged, read back as its own kind.
        let back: SourceConfig =
            serde_json::from_slice(&serde_json::to_vec(&parsed).unwrap()).unwrap();
        assert_eq!(back, parsed);
    }
}
