//! The node's gRPC server: the mTLS listener, the authentication and
//! stream-limit layers, every service, health and reflection (advertising
//! only what is served), and the drain on shutdown.

use super::{
    HTTP2_KEEPALIVE, HTTP2_KEEPALIVE_TIMEOUT, MAX_REQUEST_BYTES, NodeError, Parts, SHUTDOWN_GRACE,
};
use crate::config::NodeConfig;
use crate::federation::peers::Peers;
use crate::metrics::NodeMetrics;
use crate::pki::Principal;
use crate::rpc::{
    AccessService, AuditService, AuthLayer, CatalogService, ConnectorsService, ConsentService,
    FederationService, FlightFace, GrantsService, ObligationsService, OpenDataService,
    PolicyService, RelayService,
};
use crate::tls;
use allmende_proto::v1 as pb;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Binds the gRPC listener and serves every service on it until shutdown;
/// returns the bound address and the serving task.
pub(super) async fn serve_grpc(
    config: &NodeConfig,
    own: &Principal,
    parts: &Parts,
    metrics: &Arc<NodeMetrics>,
    material: &tls::TlsMaterial,
    shutdown_rx: watch::Receiver<bool>,
) -> Result<(SocketAddr, JoinHandle<Result<(), NodeError>>), NodeError> {
    let ctx = &parts.ctx;
    let trust = &ctx.trust;
    // The node holding the root accepts invitations' onboarding
    // certificates (for `Federation.Join` only).
    let server_cfg = tls::server_config_with_onboarding(
        trust.clone(),
        material,
        metrics.clone(),
        &config.cert,
        config.federation.root_dir.is_some(),
    )?;
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

    let federation = FederationService {
        ctx: ctx.clone(),
        trust: trust.clone(),
        peers: Arc::new(Peers::open(ctx.store.clone(), ctx.clock.clone())?),
        facts: crate::rpc::federation_facts(own),
        directory: parts.services.directory.clone(),
        invitations: Arc::new(crate::invitations::Invitations::open(
            ctx.store.clone(),
            ctx.audit.clone(),
            ctx.clock.clone(),
            parts.services.directory.clone(),
            &ctx.federation,
        )?),
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
        .set_serving::<pb::access_server::AccessServer<AccessService>>()
        .await;
    health_reporter
        .set_serving::<pb::connectors_server::ConnectorsServer<ConnectorsService>>()
        .await;
    health_reporter
        .set_serving::<pb::catalog_server::CatalogServer<CatalogService>>()
        .await;
    health_reporter
        .set_serving::<pb::consent_server::ConsentServer<ConsentService>>()
        .await;
    health_reporter
        .set_serving::<pb::grants_server::GrantsServer<GrantsService>>()
        .await;
    health_reporter
        .set_serving::<arrow_flight::flight_service_server::FlightServiceServer<FlightFace>>()
        .await;
    health_reporter
        .set_serving::<pb::open_data_server::OpenDataServer<OpenDataService>>()
        .await;
    health_reporter
        .set_serving::<pb::obligations_server::ObligationsServer<ObligationsService>>()
        .await;
    health_reporter
        .set_serving::<pb::relay_server::RelayServer<RelayService>>()
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
            .with_service_name("allmende.v1.OpenData")
            .with_service_name("allmende.v1.Obligations")
            .with_service_name("allmende.v1.Relay")
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
            audit: ctx.audit.clone(),
            onboarding_refusals: crate::rpc::OnboardingRefusals::default(),
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
            pb::relay_server::RelayServer::new(RelayService {
                ctx: ctx.clone(),
                relay: parts.services.relay.clone(),
                fetcher: parts.services.fetcher.clone(),
                grants: parts.services.grants.clone(),
                directory: parts.services.directory.clone(),
                dialer: crate::federation::relay::Dialer::new(
                    material,
                    &config.cert,
                    trust.clone(),
                )?,
                idle_timeout: std::time::Duration::from_secs(limits.stream_idle_secs),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::access_server::AccessServer::new(AccessService {
                fetcher: parts.services.fetcher.clone(),
                grants: parts.services.grants.clone(),
                idle_timeout: std::time::Duration::from_secs(limits.stream_idle_secs),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::connectors_server::ConnectorsServer::new(ConnectorsService {
                ctx: ctx.clone(),
                registry: parts.services.registry.clone(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(pb::catalog_server::CatalogServer::new(CatalogService {
            ctx: ctx.clone(),
            catalog: parts.services.catalog.clone(),
            trigger: parts.replicator.trigger(),
            federation: own.federation.clone(),
        }))
        .add_service(
            ConsentService {
                consent: parts.services.consent.clone(),
                ctx: ctx.clone(),
                receipts: parts.services.receipts.clone(),
                grants: parts.services.grants.clone(),
                registry: parts.services.registry.clone(),
                erasure_duty_days: limits.erasure_duty_days,
            }
            .server(),
        )
        // Arrow Flight on the same port, behind the same layers: the
        // release pipeline's second face.
        .add_service(
            arrow_flight::flight_service_server::FlightServiceServer::new(FlightFace {
                fetcher: parts.services.fetcher.clone(),
                grants: parts.services.grants.clone(),
                idle_timeout: std::time::Duration::from_secs(limits.stream_idle_secs),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::grants_server::GrantsServer::new(GrantsService {
                ctx: ctx.clone(),
                grants: parts.services.grants.clone(),
                registry: parts.services.registry.clone(),
                catalog: parts.services.catalog.clone(),
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(pb::open_data_server::OpenDataServer::new(OpenDataService {
            ctx: ctx.clone(),
            publisher: parts.services.opendata.clone(),
        }))
        .add_service(pb::obligations_server::ObligationsServer::new(
            ObligationsService {
                ctx: ctx.clone(),
                obligations: parts.services.obligations.clone(),
                batches: parts.services.registry.mds_batches().clone(),
            },
        ));
    let mut rx = shutdown_rx.clone();
    let mut force_rx = shutdown_rx;
    let hr = health_reporter.clone();
    let task = tokio::spawn(async move {
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
    });
    Ok((grpc_addr, task))
}
