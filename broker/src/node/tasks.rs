//! The node's admin listener and its background loops: refused
//! authentications and denials written to the audit log in aggregate,
//! audit retention, witnessing peers' logs, and the membership watcher.

use super::{NodeError, REFUSAL_INTERVAL, RETENTION_INTERVAL};
use crate::admin::{self, AdminState};
use crate::audit::AuditLog;
use crate::config::NodeConfig;
use crate::ctx::NodeCtx;
use crate::federation::peers::SharedPeers;
use crate::metrics::NodeMetrics;
use crate::tls::TlsMaterial;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Task = JoinHandle<Result<(), NodeError>>;

/// Binds the admin listener (`/metrics`, `/healthz`, `/readyz`) and serves
/// it until shutdown.
pub(super) async fn serve_admin(
    addr: SocketAddr,
    metrics: Arc<NodeMetrics>,
    ready: Arc<AtomicBool>,
    mut shutdown_rx: watch::Receiver<bool>,
) -> Result<(SocketAddr, Task), NodeError> {
    let l = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let bound = l
        .local_addr()
        .map_err(|source| NodeError::Bind { addr, source })?;
    let app = admin::router(AdminState { metrics, ready });
    let task = tokio::spawn(async move {
        axum::serve(l, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| NodeError::Serve(e.to_string()))
    });
    Ok((bound, task))
}

/// Starts the background loops; each ends when shutdown begins.
pub(super) fn spawn_background(
    config: &NodeConfig,
    ctx: &NodeCtx,
    peers: &SharedPeers,
    metrics: &Arc<NodeMetrics>,
    material: &TlsMaterial,
    shutdown_rx: &watch::Receiver<bool>,
) -> Result<Vec<Task>, NodeError> {
    let mut tasks = vec![
        refusals(ctx, metrics, &config.name, shutdown_rx.clone()),
        denials(
            ctx,
            metrics,
            config.limits.denials_interval_secs,
            shutdown_rx.clone(),
        ),
    ];
    if let Some(days) = config.audit_retention_days {
        tasks.push(retention(ctx, days, shutdown_rx.clone()));
    }
    // Witnessing of peers' audit logs.
    tasks.push(tokio::spawn({
        let ctx = ctx.clone();
        let peers = peers.clone();
        let tls = crate::federation::client::peer_client_config(material, &config.cert)?;
        let rx = shutdown_rx.clone();
        async move {
            crate::federation::witness::run(ctx, peers, tls, rx).await;
            Ok(())
        }
    }));
    Ok(tasks)
}

/// Writes the refused authentications noted since `since` to the audit log,
/// one entry per source.
pub(super) async fn write_refusals(
    metrics: &NodeMetrics,
    audit: &AuditLog,
    node: &str,
    since: i64,
    now: i64,
) {
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

/// Refused authentications go to the audit log in aggregate: one entry per
/// source and interval, never one durable write per handshake.
fn refusals(
    ctx: &NodeCtx,
    metrics: &Arc<NodeMetrics>,
    node: &str,
    mut rx: watch::Receiver<bool>,
) -> Task {
    let metrics = metrics.clone();
    let audit = ctx.audit.clone();
    let node = node.to_owned();
    let clock = ctx.clock.clone();
    tokio::spawn(async move {
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
    })
}

/// Denied requests beyond each caller's budget go to the audit log in
/// aggregate: one entry per caller and interval (`crate::denials`).
fn denials(
    ctx: &NodeCtx,
    metrics: &Arc<NodeMetrics>,
    interval_secs: u64,
    mut rx: watch::Receiver<bool>,
) -> Task {
    let metrics = metrics.clone();
    let audit = ctx.audit.clone();
    let policy = ctx.policy.clone();
    let clock = ctx.clock.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(interval_secs));
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
    })
}

/// Audit retention: summarise and prune entry bodies older than `days`.
fn retention(ctx: &NodeCtx, days: u32, mut rx: watch::Receiver<bool>) -> Task {
    let audit = ctx.audit.clone();
    let clock = ctx.clock.clone();
    tokio::spawn(async move {
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
    })
}

/// Picks up a re-signed membership (e.g. a revocation) from the membership
/// file without a restart; the directory installs it (verified, rollback
/// refused, kept in the store, grants of removed members revoked).
pub(super) fn membership_watcher(
    directory: &Arc<crate::directory::Directory>,
    path: std::path::PathBuf,
    mut last: Vec<u8>,
    mut rx: watch::Receiver<bool>,
) -> Task {
    let directory = directory.clone();
    tokio::spawn(async move {
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
            if let Err(e) = directory.install(&bytes, "membership file").await {
                tracing::warn!(path = %path.display(), error = %e, "membership file refused");
            }
        }
    })
}
