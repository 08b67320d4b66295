//! A running broker node: store, trust, mTLS gRPC server, admin listener,
//! membership watcher, and graceful shutdown. `start` runs the steps;
//! `server` assembles the gRPC server (the only user of `crate::rpc`
//! outside it), `tasks` the admin listener and the background loops.

mod server;
mod tasks;

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::config::NodeConfig;
use crate::ctx::NodeCtx;
use crate::federation::peers::SharedPeers;
use crate::metrics::NodeMetrics;
use crate::pki::{Principal, Subject, Trust};
use crate::policy::{PolicyOrigin, PolicyPoint};
use crate::store::{Store, StoreError, StoreOptions};
use crate::tls::{self, TlsMaterial};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("trust: {0}")]
    Trust(#[from] crate::pki::verifier::TrustError),
    #[error("own certificate `{path}` is not usable in this federation: {reason}")]
    OwnCert { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on `{addr}`: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("grpc server: {0}")]
    Serve(String),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("policies refused: {0}")]
    Policy(String),
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("consent store: {0}")]
    Consent(#[from] crate::consent::ConsentError),
}

/// Largest request message a node decodes (data requests are small; rows
/// only flow out). Larger ones are refused by the gRPC server with
/// `OUT_OF_RANGE`.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// How often audit retention runs (when configured).
pub const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// HTTP/2 PING interval towards clients, and how long a PING may go
/// unanswered before the connection is closed (dead peers free their slots).
pub const HTTP2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
pub const HTTP2_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// How long shutdown waits for open streams to finish before it closes
/// their connections.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often refused authentications are written to the audit log.
pub const REFUSAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's domain services, which its handlers share.
#[derive(Debug, Clone)]
pub struct Services {
    /// The federated catalog: own entries and the peers' replica.
    pub catalog: Arc<crate::catalog::Catalog>,
    /// The consent store.
    pub consent: Arc<crate::consent::ConsentStore>,
    /// Registered connectors.
    pub registry: Arc<crate::registry::Registry>,
    /// The release pipeline.
    pub fetcher: Arc<crate::access::Fetcher>,
    /// Access requests and grants.
    pub grants: Arc<crate::grants::Grants>,
    /// Signs consent receipts with the node's key, bound to its certificate.
    pub receipts: Arc<crate::consent::ReceiptSigner>,
    /// Open-data releases: specs, ε ledger, release directory.
    pub opendata: Arc<crate::opendata::publish::Publisher>,
    /// Obligations this node holds, their deliveries (`obligations.deliveries()`,
    /// the one handle takers record through) and compliance.
    pub obligations: Arc<crate::obligations::Obligations>,
    /// The federation directory in force (`crate::directory`).
    pub directory: Arc<crate::directory::Directory>,
    /// Relayed access through the hub: assertions, MLS (`crate::relay`).
    pub relay: Arc<crate::relay::Relay>,
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub name: String,
    pub federation: String,
    pub organisation: String,
    pub grpc_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The HTTPS open-data listener (`[opendata] listen`), if on.
    pub opendata_addr: Option<SocketAddr>,
    /// The MDS provider endpoint (`[mds_provider] listen`), if on.
    pub mds_provider_addr: Option<SocketAddr>,
    pub trust: Arc<Trust>,
    pub metrics: Arc<NodeMetrics>,
    pub store: Store,
    pub audit: AuditLog,
    pub policy: Arc<PolicyPoint>,
    pub ctx: NodeCtx,
    /// The domain services (`handle.catalog`, … through `Deref`).
    services: Services,
    peers: SharedPeers,
    /// Where the directory is fetched from (`[federation] directory`).
    directory_source: watch::Sender<crate::federation::directory::DirectorySource>,
    shutdown: watch::Sender<bool>,
    /// Stops the audit log's tasks, after every other task has ended.
    audit_stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), NodeError>>>,
}

impl std::ops::Deref for NodeHandle {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

impl NodeHandle {
    /// `https://<addr>` of the gRPC listener.
    pub fn grpc_endpoint(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// Replaces the peers this node talks to (witnessing, replication).
    pub fn set_peers(&self, peers: Vec<crate::config::PeerConfig>) {
        if let Ok(mut p) = crate::locks::write(&self.peers, "peer list") {
            *p = peers;
        }
        // A recipient of a waiting access notice may be reachable now.
        self.services.grants.outbox_nudged().notify_one();
    }

    /// Fetches the federation directory from `endpoint` (the city node)
    /// every `refresh` from now on (`None`: stop fetching); the first fetch
    /// runs at once.
    pub fn set_directory_source(&self, endpoint: Option<String>, refresh: std::time::Duration) {
        // The city node serving the directory is the hub relays go through.
        self.services.relay.set_hub(endpoint.clone());
        self.directory_source
            .send_replace(crate::federation::directory::DirectorySource { endpoint, refresh });
    }

    /// The peers this node talks to.
    pub fn peers(&self) -> Vec<crate::config::PeerConfig> {
        crate::federation::peers::snapshot(&self.peers)
    }

    /// Writes the refused authentications noted so far to the audit log now
    /// (the node does this every [`REFUSAL_INTERVAL`]).
    pub async fn audit_refusals_now(&self) {
        let now = self.ctx.clock.now_unix_ms();
        tasks::write_refusals(&self.metrics, &self.audit, &self.name, now, now).await;
    }

    /// Re-reads the policies (SIGHUP); a bad set is refused and the old one
    /// keeps serving. The change is audited.
    pub async fn reload_policies(&self) -> Result<String, NodeError> {
        let report = self
            .policy
            .reload()
            .await
            .map_err(|e| NodeError::Policy(e.to_string()))?;
        self.policy
            .record_reload(&self.audit, None, &report.hash)
            .await
            .map_err(|e| NodeError::Policy(e.to_string()))?;
        Ok(report.hash)
    }

    /// Stops accepting, drains in-flight requests, flushes the store.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
        // MQTT subscribers stop first: what they have not acknowledged the
        // broker delivers again to the next start.
        self.services.registry.stop_subscribers();
        let mut first_err = None;
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(NodeError::Serve(e.to_string()));
                }
            }
        }
        // The audit log stops last: what the tasks wrote while they ended
        // (completions of drained streams, the last refused
        // authentications) is in it.
        let _ = self.audit_stop.send(true);
        self.audit.closed().await;
        self.store.flush().await?;
        tracing::info!(node = %self.name, "node stopped");
        first_err.map_or(Ok(()), Err)
    }
}

/// Starts a node from its configuration, in named steps: trust, store,
/// own identity, the node's domain parts, then the listeners and the
/// background tasks.
pub async fn start(config: NodeConfig, clock: SharedClock) -> Result<NodeHandle, NodeError> {
    let material = TlsMaterial::load(&config.cert, &config.key, &config.root_ca)?;
    let (trust, membership_file) = load_trust(&config, &material, &clock)?;
    let store = open_store(&config, &trust).await?;
    let own = own_identity(&config, &material, &trust)?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (audit_stop, audit_stop_rx) = watch::channel(false);
    let parts = Parts::open(
        &config,
        &own,
        &trust,
        &store,
        &clock,
        &material,
        &audit_stop_rx,
    )
    .await?;

    // The city node lists itself: the hub the other nodes' relay checks
    // know (`[federation] endpoint`; the others register over the network).
    if let Some(endpoint) = &config.federation.endpoint {
        match parts
            .services
            .directory
            .record_own_entry(&own, endpoint)
            .await
        {
            Ok(Some(version)) => {
                tracing::info!(endpoint = %endpoint, version, "own directory entry recorded")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(endpoint = %endpoint, error = %e, "own directory entry not recorded")
            }
        }
    }

    let metrics = parts.metrics.clone();
    metrics
        .membership_version
        .set(i64::try_from(trust.snapshot().doc.version).unwrap_or(i64::MAX));
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let admin_addr = match config.admin_listen {
        None => None,
        Some(addr) => {
            let (bound, task) =
                tasks::serve_admin(addr, metrics.clone(), ready.clone(), shutdown_rx.clone())
                    .await?;
            tasks.push(task);
            Some(bound)
        }
    };
    let (grpc_addr, grpc_task) = server::serve_grpc(
        &config,
        &own,
        &parts,
        &metrics,
        &material,
        shutdown_rx.clone(),
    )
    .await?;
    tasks.push(grpc_task);
    let opendata_addr = match config.opendata.listen {
        None => None,
        Some(addr) => {
            let (bound, task) =
                serve_opendata(addr, &config, &own, &parts, &material, shutdown_rx.clone()).await?;
            tasks.push(task);
            Some(bound)
        }
    };
    let mds_provider_addr = match &config.mds_provider {
        None => None,
        Some(p) => {
            let (bound, task) = serve_mds_provider(
                p,
                &config,
                &own,
                &parts,
                &metrics,
                &material,
                shutdown_rx.clone(),
            )
            .await?;
            tasks.push(task);
            Some(bound)
        }
    };
    let replicator = parts.replicator;
    // Grant expiry: recorded (and audited) at each grant's end.
    tasks.push(tokio::spawn({
        let grants = parts.services.grants.clone();
        let audit = parts.ctx.audit.clone();
        let rx = shutdown_rx.clone();
        async move {
            grants.run_expiry(audit, rx).await;
            Ok(())
        }
    }));
    // Obligations: each window judged at its deadline, non-compliant ones
    // flagged (audited) once.
    tasks.push(tokio::spawn({
        let obligations = parts.services.obligations.clone();
        let audit = parts.ctx.audit.clone();
        let rx = shutdown_rx.clone();
        async move {
            obligations.run(audit, rx).await;
            Ok(())
        }
    }));
    // Access notices: the outbox delivered to the recipients' nodes.
    tasks.push(tokio::spawn({
        let delivery = crate::federation::notices::NoticeDelivery::new(
            parts.services.grants.clone(),
            parts.services.catalog.clone(),
            parts.ctx.trust.clone(),
            &material,
            &config.cert,
            parts.peer_list.clone(),
        )?;
        let rx = shutdown_rx.clone();
        async move {
            delivery.run(rx).await;
            Ok(())
        }
    }));
    // Catalog replication: pull peers on a schedule and on notification,
    // notify peers of local changes.
    tasks.push(tokio::spawn({
        let rx = shutdown_rx.clone();
        async move {
            replicator.run(rx).await;
            Ok(())
        }
    }));
    tasks.extend(tasks::spawn_background(
        &config,
        &parts.ctx,
        &parts.peer_list,
        &metrics,
        &material,
        &shutdown_rx,
    )?);
    // The membership file, re-read every second.
    tasks.push(tasks::membership_watcher(
        &parts.services.directory,
        config.membership.clone(),
        membership_file,
        shutdown_rx.clone(),
    ));
    // The federation directory fetched from the city node
    // (`[federation] directory`, or set at run time).
    let (directory_source, source_rx) =
        watch::channel(crate::federation::directory::DirectorySource {
            endpoint: config.federation.directory.clone(),
            refresh: config.federation.directory_refresh,
        });
    tasks.push(tokio::spawn({
        let fetcher = crate::federation::directory::DirectoryFetcher {
            directory: parts.services.directory.clone(),
            trust: parts.ctx.trust.clone(),
            tls: crate::federation::client::peer_client_config(&material, &config.cert)?,
            metrics: metrics.clone(),
        };
        let rx = shutdown_rx.clone();
        async move {
            fetcher.run(source_rx, rx).await;
            Ok(())
        }
    }));

    // The relay: removals committed in the pairs' MLS groups on every
    // directory change, this node's key package replenished.
    tasks.push(tokio::spawn({
        let relay = parts.services.relay.clone();
        let dialer = crate::federation::relay::Dialer::new(
            &material,
            &config.cert,
            parts.ctx.trust.clone(),
        )?;
        let refresh = config.federation.directory_refresh;
        let endpoint = config.federation.endpoint.clone();
        let rx = shutdown_rx.clone();
        async move {
            crate::federation::relay::run(relay, dialer, endpoint, refresh, rx).await;
            Ok(())
        }
    }));

    ready.store(true, Ordering::SeqCst);
    tracing::info!(
        node = %config.name,
        org = %own.organisation,
        grpc = %grpc_addr,
        admin = ?admin_addr,
        "node started"
    );
    Ok(NodeHandle {
        name: config.name,
        federation: own.federation.clone(),
        organisation: own.organisation.clone(),
        grpc_addr,
        admin_addr,
        opendata_addr,
        mds_provider_addr,
        trust,
        metrics,
        store,
        audit: parts.ctx.audit.clone(),
        policy: parts.ctx.policy.clone(),
        ctx: parts.ctx,
        services: parts.services,
        peers: parts.peer_list,
        directory_source,
        shutdown: shutdown_tx,
        audit_stop,
        tasks,
    })
}

/// Binds the HTTPS open-data listener (no client certificate; the node's
/// own certificate) and serves it until shutdown (`crate::opendata::http`).
async fn serve_opendata(
    addr: SocketAddr,
    config: &NodeConfig,
    own: &Principal,
    parts: &Parts,
    material: &TlsMaterial,
    shutdown_rx: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<Result<(), NodeError>>), NodeError> {
    use crate::opendata::http;
    let tls = http::server_config(material, &config.cert)?;
    let (listener, bound) = http::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let state = Arc::new(http::OpenData {
        fetcher: parts.services.fetcher.clone(),
        catalog: parts.services.catalog.clone(),
        policy: parts.ctx.policy.clone(),
        audit: parts.ctx.audit.clone(),
        trust: parts.ctx.trust.clone(),
        releases: crate::opendata::releases::Releases::new(
            config.data_dir.join(crate::opendata::releases::DEFAULT_DIR),
        ),
        public_url: config
            .opendata
            .public_url
            .clone()
            .unwrap_or_else(|| format!("https://{bound}")),
        federation: own.federation.clone(),
        organisation: own.organisation.clone(),
    });
    let task = tokio::spawn(async move {
        http::serve(listener, tls, state, shutdown_rx).await;
        Ok(())
    });
    Ok((bound, task))
}

/// Binds the MDS provider endpoint (HTTPS, the node's certificate, a
/// federation client certificate and the bearer token required) and serves
/// it until shutdown (`crate::mds::provider`).
async fn serve_mds_provider(
    p: &crate::config::MdsProviderConfig,
    config: &NodeConfig,
    own: &Principal,
    parts: &Parts,
    metrics: &Arc<NodeMetrics>,
    material: &TlsMaterial,
    shutdown_rx: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<Result<(), NodeError>>), NodeError> {
    use crate::mds::provider;
    let tls = provider::server_config(
        parts.ctx.trust.clone(),
        material,
        metrics.clone(),
        &config.cert,
    )?;
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: p.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: p.listen,
        source,
    })?;
    let state = Arc::new(provider::Provider {
        policy: parts.ctx.policy.clone(),
        audit: parts.ctx.audit.clone(),
        trust: parts.ctx.trust.clone(),
        metrics: metrics.clone(),
        clock: parts.ctx.clock.clone(),
        roots: config.source_roots(),
        dir: p.dir.clone(),
        token_file: p.token_file.clone(),
        recipients: p.recipients.clone(),
        dataset: p.dataset.clone(),
        organisation: own.organisation.clone(),
    });
    let limits = tls::AcceptLimits::from(&config.limits);
    let task = tokio::spawn(async move {
        provider::serve(listener, tls, state, limits, shutdown_rx).await;
        Ok(())
    });
    Ok((bound, task))
}

/// The federation's trust from the root certificate and the membership
/// file, and the file's bytes (the watcher compares later reads to them).
fn load_trust(
    config: &NodeConfig,
    material: &TlsMaterial,
    clock: &SharedClock,
) -> Result<(Arc<Trust>, Vec<u8>), NodeError> {
    let root_der = material.root_der(&config.root_ca)?;
    let membership_file =
        std::fs::read(&config.membership).map_err(|source| tls::TlsError::Read {
            path: config.membership.clone(),
            source,
        })?;
    let trust = Trust::new(root_der, &membership_file, clock.clone())?;
    Ok((trust, membership_file))
}

/// Opens (and migrates) the node's store, and makes the trust hold the
/// newest membership ever accepted: never an older one after a restart.
async fn open_store(config: &NodeConfig, trust: &Trust) -> Result<Store, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| StoreError::Migration {
        from: 0,
        reason: format!("cannot create `{}`: {e}", config.data_dir.display()),
    })?;
    let store = Store::open_with(
        &config.data_dir.join("store"),
        &StoreOptions {
            cache_bytes: config.store_cache_bytes,
        },
        crate::audit::STORE_MIGRATIONS,
    )?;
    if let Some(stored) = crate::directory::stored_membership(&store)?
        && let Err(e) = trust.install_membership(stored.as_bytes())
    {
        tracing::warn!(error = %e, "stored membership not installed");
    }
    crate::directory::persist_membership(&store, trust).await?;
    Ok(store)
}

/// The node's own certificate, authenticated like a caller's: it must
/// identify node `config.name` of a member organisation.
fn own_identity(
    config: &NodeConfig,
    material: &TlsMaterial,
    trust: &Trust,
) -> Result<Principal, NodeError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let own_err = |reason: String| NodeError::OwnCert {
        path: config.cert.clone(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(material.chain_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| own_err("no certificate".into()))?;
    let own = trust
        .authenticate(leaf, rest)
        .map_err(|e| own_err(e.to_string()))?;
    if !matches!(&own.subject, Subject::Node(n) if *n == config.name) {
        return Err(own_err(format!(
            "certificate identifies `{}`, config names node `{}`",
            own.uri(),
            config.name
        )));
    }
    Ok(own)
}

/// The node's domain parts, opened from its store: audit log, policy
/// decision point, catalog, consent store, connector registry, release
/// pipeline, and the catalog replicator with the peers it dials.
pub(crate) struct Parts {
    pub ctx: NodeCtx,
    pub services: Services,
    pub replicator: crate::federation::replicator::CatalogReplicator,
    pub peer_list: SharedPeers,
    /// The node's metrics (the registry's MQTT subscribers count into them).
    pub metrics: Arc<NodeMetrics>,
}

impl Parts {
    async fn open(
        config: &NodeConfig,
        own: &Principal,
        trust: &Arc<Trust>,
        store: &Store,
        clock: &SharedClock,
        material: &TlsMaterial,
        audit_stop: &watch::Receiver<bool>,
    ) -> Result<Self, NodeError> {
        let metrics = NodeMetrics::new(&config.name);
        let audit = AuditLog::open(
            store.clone(),
            &own.federation,
            &own.organisation,
            &config.name,
            clock.clone(),
            audit_stop.clone(),
        )
        .await?;
        let origin = match &config.policy_dir {
            Some(d) => PolicyOrigin::Dir(d.clone()),
            None => PolicyOrigin::Bundled,
        };
        let policy = Arc::new(
            PolicyPoint::load(
                origin,
                clock.clone(),
                &own.federation,
                &own.organisation,
                &config.name,
            )
            .map_err(|e| NodeError::Policy(e.to_string()))?,
        );
        policy.sync_membership(&trust.snapshot().doc);
        policy
            .denials()
            .configure(crate::denials::DenialLimits::from(&config.limits));
        let ctx = NodeCtx {
            trust: trust.clone(),
            audit: audit.clone(),
            policy: policy.clone(),
            clock: clock.clone(),
            store: store.clone(),
            federation: own.federation.clone(),
            organisation: own.organisation.clone(),
            node: config.name.clone(),
        };
        let peer_list: SharedPeers = Arc::new(std::sync::RwLock::new(config.peers.clone()));

        // Federated catalog and consent store (docs/catalog.md,
        // docs/consent.md).
        let publisher_name = trust
            .snapshot()
            .doc
            .member(&own.organisation)
            .map_or_else(|| own.organisation.clone(), |m| m.display_name.clone());
        let catalog = Arc::new(
            crate::catalog::Catalog::open(
                store.clone(),
                clock.clone(),
                crate::catalog::CatalogIdentity {
                    organisation: own.organisation.clone(),
                    node: config.name.clone(),
                    publisher_name,
                },
            )
            .await?,
        );
        let consent = Arc::new(crate::consent::ConsentStore::open(
            store.clone(),
            clock.clone(),
            &own.organisation,
        )?);
        let receipts = Arc::new(
            crate::consent::ReceiptSigner::new(
                catalog.clone(),
                &crate::pki::identity::LeafIdentity {
                    federation: own.federation.clone(),
                    organisation: own.organisation.clone(),
                    subject: Subject::Node(config.name.clone()),
                },
                &material.key_pem,
                &material.chain_pem,
            )
            .map_err(|e| NodeError::Policy(e.to_string()))?,
        );
        // Registered connectors and the release pipeline (docs/access.md).
        // Sources are read only below `sources.roots` (docs/configuration.md).
        let source_roots = config.source_roots();
        for (root, what) in source_roots.overlaps() {
            tracing::warn!(root = %root.display(), place = what, "source root lies in the node's own place; nothing below it is readable");
        }
        let registry = Arc::new(
            crate::registry::Registry::open(
                store.clone(),
                catalog.clone(),
                policy.clone(),
                clock.clone(),
                source_roots,
                audit.clone(),
                metrics.clone(),
                Some(material.clone()),
            )
            .await
            .map_err(|e| NodeError::Policy(format!("connector registry: {e}")))?,
        );
        // Access requests and grants, mirrored into the policy entities after
        // the datasets they name (docs/access-workflow.md).
        let grants = Arc::new(
            crate::grants::Grants::open(
                store.clone(),
                clock.clone(),
                policy.clone(),
                config.limits.max_grant_days,
            )
            .map_err(|e| NodeError::Policy(format!("access grants: {e}")))?,
        );
        let fetcher = Arc::new(
            crate::access::Fetcher::new(
                policy.clone(),
                audit.clone(),
                consent.clone(),
                registry.clone(),
                clock.clone(),
                crate::access::FetchLimits {
                    max_concurrent: usize::try_from(config.limits.fetches).unwrap_or(usize::MAX),
                    max_concurrent_per_principal: usize::try_from(config.limits.fetches_per_caller)
                        .unwrap_or(usize::MAX),
                    per_principal_per_second: f64::from(config.limits.fetch_rate_per_caller),
                    per_principal_burst: f64::from(config.limits.fetch_burst_per_caller),
                    max_rows_per_response: config.limits.fetch_rows_per_response,
                    public_per_minute: config.opendata.requests_per_minute,
                    public_burst: config.opendata.burst,
                    ..Default::default()
                },
            )
            .with_grants(grants.clone()),
        );
        // The replicator pulls peers' catalogs over connections whose server
        // certificate the trust authenticates.
        let replicator = crate::federation::replicator::CatalogReplicator::new(
            catalog.clone(),
            trust.clone(),
            material,
            &config.cert,
            peer_list.clone(),
            crate::federation::replicator::PULL_INTERVAL,
        )?;
        // Open-data releases (docs/opendata.md): the specs from the config,
        // the ε ledger in the store, the release directory.
        let opendata = Arc::new(
            crate::opendata::publish::Publisher::open(
                crate::opendata::publish::PublisherParts {
                    specs: config.opendata_releases.clone(),
                    public_url: config.opendata.public_url.clone(),
                    spec_base: config.source.parent().map(std::path::Path::to_path_buf),
                    releases: crate::opendata::releases::Releases::new(
                        config.data_dir.join(crate::opendata::releases::DEFAULT_DIR),
                    ),
                    registry: registry.clone(),
                    catalog: catalog.clone(),
                    audit: audit.clone(),
                    clock: clock.clone(),
                    federation: own.federation.clone(),
                },
                store.clone(),
            )
            .map_err(|e| NodeError::Policy(format!("open-data publisher: {e}")))?,
        );
        // Obligations and their deliveries (docs/obligations.md).
        let obligations = Arc::new(crate::obligations::Obligations::open(
            store.clone(),
            crate::obligations::Deliveries::open(store.clone())?,
            clock.clone(),
            &own.organisation,
        )?);
        // The federation directory: every new membership is installed
        // through it (`docs/federation.md`).
        let directory = Arc::new(crate::directory::Directory::new(
            crate::directory::DirectoryParts {
                trust: trust.clone(),
                policy: policy.clone(),
                store: store.clone(),
                audit: audit.clone(),
                grants: grants.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
                own: own.clone(),
                root: config
                    .federation
                    .root_dir
                    .clone()
                    .map(crate::pki::ca::FederationDir),
            },
        ));
        // Grants of organisations removed while this node was down.
        directory.revoke_non_members().await;
        // Relayed access through the hub (`docs/relay.md`).
        let relay = Arc::new(
            crate::relay::Relay::open_pem(
                store,
                trust.clone(),
                clock.clone(),
                &material.chain_pem,
                &material.key_pem,
                config.federation.directory.clone(),
            )
            .await
            .map_err(|e| NodeError::Policy(format!("relay: {e}")))?,
        );
        Ok(Self {
            ctx,
            services: Services {
                catalog,
                consent,
                registry,
                fetcher,
                grants,
                receipts,
                opendata,
                obligations,
                directory,
                relay,
            },
            replicator,
            peer_list,
            metrics,
        })
    }
}
