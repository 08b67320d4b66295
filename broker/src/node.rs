//! A running broker node: store, trust, mTLS gRPC server, admin listener,
//! membership watcher, and graceful shutdown.

use crate::admin::{self, AdminState};
use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::config::NodeConfig;
use crate::ctx::NodeCtx;
use crate::federation::peers::{Peers, SharedPeers};
use crate::metrics::NodeMetrics;
use crate::pki::{Subject, Trust};
use crate::policy::{PolicyOrigin, PolicyPoint};
use crate::rpc::{AuditService, PolicyService};
use crate::rpc::{AuthLayer, FederationService};
use crate::store::{Store, StoreError, StoreOptions, Table, TableName, WriteBatch};
use crate::tls::{self, TlsMaterial};
use allmende_proto::v1 as pb;
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

const MEMBERSHIP_KEY: &str = "current";

/// Writes the refused authentications noted since `since` to the audit log,
/// one entry per source.
async fn write_refusals(metrics: &NodeMetrics, audit: &AuditLog, node: &str, since: i64, now: i64) {
    let agg = metrics.drain_refusals();
    for (source, (count, first, last, reasons)) in agg.by_source {
        let reasons: Vec<String> = reasons.into_iter().collect();
        let d = crate::audit::Draft::new(
            "unauthenticated",
            "authenticate",
            &format!("node/{node}"),
            allmende_audit::EntryKind::RefusedAuthentication {
                source: format!("{source} ({})", reasons.join(",")),
                interval_start_ms: u64::try_from(first.min(since)).unwrap_or(0),
                interval_end_ms: u64::try_from(last.max(now)).unwrap_or(0),
                count,
            },
        );
        if let Err(e) = audit.append(d).await {
            tracing::warn!(error = %e, "refused authentications not audited");
        }
    }
}

/// Largest request message a node decodes (data requests are small; rows
/// only flow out). Larger ones are refused by tonic with `OUT_OF_RANGE`.
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

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    pub name: String,
    pub federation: String,
    pub organisation: String,
    pub grpc_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub trust: Arc<Trust>,
    pub metrics: Arc<NodeMetrics>,
    pub store: Store,
    pub audit: AuditLog,
    pub policy: Arc<PolicyPoint>,
    pub ctx: NodeCtx,
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
    peers: SharedPeers,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), NodeError>>>,
}

impl NodeHandle {
    /// `https://<addr>` of the gRPC listener.
    pub fn grpc_endpoint(&self) -> String {
        format!("https://{}", self.grpc_addr)
    }

    /// Replaces the peers this node talks to (witnessing, replication).
    pub fn set_peers(&self, peers: Vec<crate::config::PeerConfig>) {
        if let Ok(mut p) = self.peers.write() {
            *p = peers;
        }
    }

    /// The peers this node talks to.
    pub fn peers(&self) -> Vec<crate::config::PeerConfig> {
        crate::federation::peers::snapshot(&self.peers)
    }

    /// Writes the refused authentications noted so far to the audit log now
    /// (the node does this every [`REFUSAL_INTERVAL`]).
    pub async fn audit_refusals_now(&self) {
        let now = self.ctx.clock.now_unix_ms();
        write_refusals(&self.metrics, &self.audit, &self.name, now, now).await;
    }

    /// Re-reads the policies (SIGHUP); a bad set is refused and the old one
    /// keeps serving. The change is audited.
    pub async fn reload_policies(&self) -> Result<String, NodeError> {
        let report = self
            .policy
            .reload()
            .await
            .map_err(|e| NodeError::Policy(e.to_string()))?;
        crate::rpc::record_reload(&self.ctx, None, &report.hash)
            .await
            .map_err(|e| NodeError::Policy(e.to_string()))?;
        Ok(report.hash)
    }

    /// Stops accepting, drains in-flight requests, flushes the store.
    pub async fn shutdown(self) -> Result<(), NodeError> {
        let _ = self.shutdown.send(true);
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
        self.audit.closed().await;
        self.store.flush().await?;
        tracing::info!(node = %self.name, "node stopped");
        first_err.map_or(Ok(()), Err)
    }
}

/// Starts a node from its configuration.
pub async fn start(config: NodeConfig, clock: SharedClock) -> Result<NodeHandle, NodeError> {
    let material = TlsMaterial::load(&config.cert, &config.key, &config.root_ca)?;
    let root_der = material.root_der(&config.root_ca)?;
    let membership_file =
        std::fs::read(&config.membership).map_err(|source| tls::TlsError::Read {
            path: config.membership.clone(),
            source,
        })?;
    let trust = Trust::new(root_der, &membership_file, clock.clone())?;

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
    // Never go back to an older membership than one accepted before.
    let memberships: Table<String, String> = store.table(TableName::Membership)?;
    if let Some(stored) = memberships.get(&MEMBERSHIP_KEY.to_owned())?
        && let Err(e) = trust.install_membership(stored.as_bytes())
    {
        tracing::warn!(error = %e, "stored membership not installed");
    }
    persist_membership(&store, &memberships, &trust).await?;

    // The node's own certificate must identify a node of a member organisation.
    let own = {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(material.chain_pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
        let own_err = |reason: String| NodeError::OwnCert {
            path: config.cert.clone(),
            reason,
        };
        let (leaf, rest) = chain
            .split_first()
            .ok_or_else(|| own_err("no certificate".into()))?;
        trust
            .authenticate(leaf, rest)
            .map_err(|e| own_err(e.to_string()))?
    };
    if !matches!(&own.subject, Subject::Node(n) if *n == config.name) {
        return Err(NodeError::OwnCert {
            path: config.cert.clone(),
            reason: format!(
                "certificate identifies `{}`, config names node `{}`",
                own.uri(),
                config.name
            ),
        });
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let audit = AuditLog::open(
        store.clone(),
        &own.federation,
        &own.organisation,
        &config.name,
        clock.clone(),
        shutdown_rx.clone(),
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
    // docs/consent.md). The replicator pulls peers' catalogs over connections
    // whose server certificate the trust authenticates.
    let catalog = Arc::new(
        crate::catalog::Catalog::open(
            store.clone(),
            clock.clone(),
            crate::catalog::CatalogIdentity {
                organisation: own.organisation.clone(),
                node: config.name.clone(),
                publisher_name: trust
                    .snapshot()
                    .doc
                    .member(&own.organisation)
                    .map_or_else(|| own.organisation.clone(), |m| m.display_name.clone()),
            },
        )
        .await?,
    );
    let consent = Arc::new(crate::consent::ConsentStore::open(
        store.clone(),
        clock.clone(),
        &own.organisation,
    )?);
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
    let fetcher = Arc::new(crate::access::Fetcher::new(
        policy.clone(),
        audit.clone(),
        consent.clone(),
        registry.clone(),
        clock.clone(),
        crate::access::FetchLimits {
            max_concurrent: usize::try_from(config.limits.fetches).unwrap_or(usize::MAX),
            max_concurrent_per_principal: usize::try_from(config.limits.fetches_per_caller)
                .unwrap_or(usize::MAX),
            ..Default::default()
        },
    ));
    policy
        .denials()
        .configure(crate::denials::DenialLimits::from(&config.limits));
    let replicator = crate::federation::replicator::CatalogReplicator::new(
        catalog.clone(),
        trust.clone(),
        &material,
        &config.cert,
        peer_list.clone(),
        crate::federation::replicator::PULL_INTERVAL,
    )?;

    let metrics = NodeMetrics::new(&config.name);
    metrics
        .membership_version
        .set(i64::try_from(trust.snapshot().doc.version).unwrap_or(i64::MAX));
    let server_cfg = tls::server_config(trust.clone(), &material, metrics.clone(), &config.cert)?;
    let listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.grpc_listen,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| NodeError::Bind {
        addr: config.grpc_listen,
        source,
    })?;
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    // Admin listener.
    let admin_addr = match config.admin_listen {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| NodeError::Bind { addr, source })?;
            let bound = l
                .local_addr()
                .map_err(|source| NodeError::Bind { addr, source })?;
            let app = admin::router(AdminState {
                metrics: metrics.clone(),
                ready: ready.clone(),
            });
            let mut rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.wait_for(|s| *s).await;
                    })
                    .await
                    .map_err(|e| NodeError::Serve(e.to_string()))
            }));
            Some(bound)
        }
    };

    // gRPC services.
    let peers = Arc::new(Peers::open(store.clone(), clock.clone())?);
    let federation = FederationService {
        ctx: ctx.clone(),
        trust: trust.clone(),
        peers,
        facts: crate::rpc::federation_facts(&own),
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::federation_server::FederationServer<FederationService>>()
        .await;
    health_reporter
        .set_serving::<pb::policy_server::PolicyServer<PolicyService>>()
        .await;
    health_reporter
        .set_serving::<pb::audit_server::AuditServer<AuditService>>()
        .await;
    health_reporter
        .set_serving::<pb::access_server::AccessServer<crate::rpc::AccessService>>()
        .await;
    health_reporter
        .set_serving::<pb::connectors_server::ConnectorsServer<crate::rpc::ConnectorsService>>()
        .await;
    health_reporter
        .set_serving::<pb::catalog_server::CatalogServer<crate::rpc::CatalogService>>()
        .await;
    health_reporter
        .set_serving::<pb::consent_server::ConsentServer<crate::rpc::ConsentService>>()
        .await;
    health_reporter
        .set_serving::<pb::grants_server::GrantsServer<crate::rpc::GrantsService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(allmende_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Advertise what is served, not every service in the contract.
            .with_service_name("allmende.v1.Federation")
            .with_service_name("allmende.v1.Policy")
            .with_service_name("allmende.v1.Audit")
            .with_service_name("allmende.v1.Access")
            .with_service_name("allmende.v1.Connectors")
            .with_service_name("allmende.v1.Catalog")
            .with_service_name("allmende.v1.Consent")
            .with_service_name("allmende.v1.Grants")
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| NodeError::Reflection(e.to_string()))?;
    let limits = config.limits;
    // Closes every connection still open `SHUTDOWN_GRACE` after shutdown
    // began: a client that never reads cannot hold the drain forever.
    let (close_all_tx, close_all_rx) = watch::channel(false);
    let incoming = tls::incoming_with(
        listener,
        server_cfg,
        trust.clone(),
        metrics.clone(),
        tls::AcceptLimits::from(&limits),
        close_all_rx,
    );
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits.streams_per_connection)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .layer(AuthLayer {
            trust: trust.clone(),
            metrics: metrics.clone(),
        })
        .layer(crate::rpc::limits::StreamLimitLayer::new(
            usize::try_from(limits.streams).unwrap_or(usize::MAX),
            usize::try_from(limits.streams_per_caller).unwrap_or(usize::MAX),
            metrics.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::federation_server::FederationServer::new(federation))
        .add_service(pb::policy_server::PolicyServer::new(PolicyService {
            ctx: ctx.clone(),
        }))
        .add_service(pb::audit_server::AuditServer::new(AuditService {
            ctx: ctx.clone(),
        }))
        .add_service(
            pb::access_server::AccessServer::new(crate::rpc::AccessService {
                fetcher: fetcher.clone(),
                grants: grants.clone(),
                idle_timeout: std::time::Duration::from_secs(limits.stream_idle_secs),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::connectors_server::ConnectorsServer::new(crate::rpc::ConnectorsService {
                ctx: ctx.clone(),
                registry: registry.clone(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(pb::catalog_server::CatalogServer::new(
            crate::rpc::CatalogService {
                ctx: ctx.clone(),
                catalog: catalog.clone(),
                trigger: replicator.trigger(),
                federation: own.federation.clone(),
            },
        ))
        .add_service(
            crate::rpc::ConsentService {
                consent: consent.clone(),
                ctx: ctx.clone(),
            }
            .server(),
        )
        .add_service(
            pb::grants_server::GrantsServer::new(crate::rpc::GrantsService {
                ctx: ctx.clone(),
                grants: grants.clone(),
                registry: registry.clone(),
                catalog: catalog.clone(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    let mut rx = shutdown_rx.clone();
    let mut force_rx = shutdown_rx.clone();
    let hr = health_reporter.clone();
    tasks.push(tokio::spawn(async move {
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            let _ = rx.wait_for(|s| *s).await;
            hr.set_not_serving::<pb::federation_server::FederationServer<FederationService>>()
                .await;
        });
        let force = async move {
            let _ = force_rx.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::info!("drain took too long, closing the remaining connections");
            let _ = close_all_tx.send(true);
            std::future::pending::<()>().await;
        };
        tokio::select! {
            r = serve => r.map_err(|e| NodeError::Serve(e.to_string())),
            () = force => Ok(()),
        }
    }));

    // Grant expiry: recorded (and audited) at each grant's end.
    tasks.push(tokio::spawn({
        let grants = grants.clone();
        let audit = audit.clone();
        let rx = shutdown_rx.clone();
        async move {
            grants.run_expiry(audit, rx).await;
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

    // Refused authentications go to the audit log in aggregate: one entry
    // per source and interval, never one durable write per handshake.
    tasks.push(tokio::spawn({
        let metrics = metrics.clone();
        let audit = audit.clone();
        let node = config.name.clone();
        let clock = clock.clone();
        let mut rx = shutdown_rx.clone();
        async move {
            let mut tick = tokio::time::interval(REFUSAL_INTERVAL);
            let mut since = clock.now_unix_ms();
            loop {
                let stop = tokio::select! {
                    _ = tick.tick() => false,
                    _ = rx.wait_for(|s| *s) => true,
                };
                let now = clock.now_unix_ms();
                write_refusals(&metrics, &audit, &node, since, now).await;
                since = now;
                if stop {
                    return Ok(());
                }
            }
        }
    }));

    // Denied requests beyond each caller's budget go to the audit log in
    // aggregate: one entry per caller and interval (`crate::denials`).
    tasks.push(tokio::spawn({
        let metrics = metrics.clone();
        let audit = audit.clone();
        let policy = policy.clone();
        let clock = clock.clone();
        let mut rx = shutdown_rx.clone();
        let every = std::time::Duration::from_secs(limits.denials_interval_secs);
        async move {
            let mut tick = tokio::time::interval(every);
            loop {
                let stop = tokio::select! {
                    _ = tick.tick() => false,
                    _ = rx.wait_for(|s| *s) => true,
                };
                let n = policy
                    .denials()
                    .flush(&audit, clock.now_unix_ms(), stop)
                    .await;
                metrics.denials_aggregated.inc_by(n);
                if stop {
                    return Ok(());
                }
            }
        }
    }));

    // Audit retention (when configured): summarise and prune old entry bodies.
    if let Some(days) = config.audit_retention_days {
        let audit = audit.clone();
        let clock = clock.clone();
        let mut rx = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(RETENTION_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|s| *s) => return Ok(()),
                }
                let cutoff = clock.now_unix_ms() - i64::from(days) * 86_400_000;
                if let Err(e) = audit
                    .apply_retention(u64::try_from(cutoff).unwrap_or(0))
                    .await
                {
                    tracing::warn!(error = %e, "audit retention not applied");
                }
            }
        }));
    }

    // Witnessing of peers' audit logs.
    tasks.push(tokio::spawn({
        let ctx = ctx.clone();
        let peers = peer_list.clone();
        let tls = crate::federation::client::peer_client_config(&material, &config.cert)?;
        let rx = shutdown_rx.clone();
        async move {
            crate::federation::witness::run(ctx, peers, tls, rx).await;
            Ok(())
        }
    }));

    // Membership watcher: picks up a re-signed membership (e.g. a revocation)
    // without restart.
    {
        let policy = policy.clone();
        let trust = trust.clone();
        let metrics = metrics.clone();
        let store = store.clone();
        let path = config.membership.clone();
        let mut rx = shutdown_rx.clone();
        let mut last = membership_file;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::pki::verifier::MEMBERSHIP_POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.wait_for(|s| *s) => return Ok(()),
                }
                let Ok(bytes) = tokio::fs::read(&path).await else {
                    continue;
                };
                if bytes == last {
                    continue;
                }
                last = bytes.clone();
                match trust.install_membership(&bytes) {
                    Ok(v) => {
                        policy.sync_membership(&trust.snapshot().doc);
                        metrics.membership_version.set(i64::try_from(v).unwrap_or(i64::MAX));
                        if let Ok(t) = store.table::<String, String>(TableName::Membership)
                            && let Err(e) = persist_membership(&store, &t, &trust).await
                        {
                            tracing::warn!(error = %e, "membership not persisted");
                        }
                    }
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "membership file refused"),
                }
            }
        }));
    }

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
        trust,
        metrics,
        store,
        audit,
        policy,
        ctx,
        catalog,
        consent,
        registry,
        fetcher,
        grants,
        peers: peer_list,
        shutdown: shutdown_tx,
        tasks,
    })
}

async fn persist_membership(
    store: &Store,
    table: &Table<String, String>,
    trust: &Trust,
) -> Result<(), StoreError> {
    let snap = trust.snapshot();
    let text = String::from_utf8_lossy(&snap.signed_json).into_owned();
    if table.get(&MEMBERSHIP_KEY.to_owned())?.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    let mut b = WriteBatch::new();
    b.put(table, &MEMBERSHIP_KEY.to_owned(), &text)?;
    store.commit_durable(b).await
}
