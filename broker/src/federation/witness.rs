//! The witness loop: each node fetches its peers' latest checkpoints,
//! cosigns what is consistent with what it cosigned before, and hands the
//! cosignature back. A peer that shows two inconsistent checkpoints is
//! reported (split view). At start a node asks its witnesses what they
//! cosigned of its own log and reports a rollback (e.g. an old backup
//! restored) instead of silently continuing.
//!
//! This is the network side only: the checks, the pinned keys and the
//! records are `audit::witness`'s. Connections are [`connect_peer`]'s, and
//! the pins are bound to the identity the peer's certificate proves.

use super::client::connect_peer;
use super::peers::{SharedPeers, snapshot};
use crate::audit::witness::{OwnWitnessed, PeerWitness, ServedCheckpoint, WitnessError};
use crate::ctx::NodeCtx;
use crate::store::StoreError;
use allmende_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often a node witnesses its peers.
pub const WITNESS_INTERVAL: Duration = Duration::from_secs(1);

type AuditClient = pb::audit_client::AuditClient<tonic::transport::Channel>;

/// Runs the witness loop until shutdown.
pub async fn run(
    ctx: NodeCtx,
    peers: SharedPeers,
    tls: Arc<rustls::ClientConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Peers by configured name → (verified identity `<org>/<node>`, channel).
    let mut channels: HashMap<String, (String, tonic::transport::Channel)> = HashMap::new();
    let mut rollback_checked: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(WITNESS_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for peer in snapshot(&peers) {
            let (who, ch) = match channels.get(&peer.name) {
                Some(c) => c.clone(),
                None => {
                    // The server's certificate must identify a node of a
                    // member organisation; pins are bound to that identity.
                    match connect_peer(&peer.endpoint, tls.clone(), &ctx.trust).await {
                        Ok(v) => {
                            let who = format!("{}/{}", v.organisation, v.node);
                            if v.organisation == ctx.organisation && v.node == ctx.node {
                                continue;
                            }
                            channels.insert(peer.name.clone(), (who.clone(), v.channel.clone()));
                            (who, v.channel)
                        }
                        Err(e) => {
                            tracing::debug!(peer = %peer.name, error = %e, "peer unreachable");
                            continue;
                        }
                    }
                }
            };
            let mut client = pb::audit_client::AuditClient::new(ch);
            if !rollback_checked.contains(&who) && check_own_rollback(&ctx, &who, &mut client).await
            {
                rollback_checked.insert(who.clone());
            }
            if let Err(e) = witness_peer(&ctx, &who, &mut client).await {
                tracing::debug!(peer = %peer.name, error = %e, "witnessing failed");
                if matches!(e, WitnessFailure::Transport(_)) {
                    channels.remove(&peer.name);
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum WitnessFailure {
    #[error("transport: {0}")]
    Transport(String),
    #[error("{0}")]
    Other(String),
}

impl From<tonic::Status> for WitnessFailure {
    fn from(s: tonic::Status) -> Self {
        if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) {
            WitnessFailure::Transport(s.message().to_owned())
        } else {
            WitnessFailure::Other(format!("{:?}: {}", s.code(), s.message()))
        }
    }
}

impl From<StoreError> for WitnessFailure {
    fn from(e: StoreError) -> Self {
        WitnessFailure::Other(e.to_string())
    }
}

impl From<WitnessError> for WitnessFailure {
    fn from(e: WitnessError) -> Self {
        WitnessFailure::Other(e.to_string())
    }
}

/// Fetches `peer`'s checkpoint since what this node cosigned, and hands back
/// the cosignature `audit::witness` makes of it.
async fn witness_peer(
    ctx: &NodeCtx,
    peer: &str,
    client: &mut AuditClient,
) -> Result<(), WitnessFailure> {
    let state = PeerWitness::load(&ctx.audit, &ctx.store, peer)?;
    let resp = match client
        .get_checkpoint(pb::GetCheckpointRequest {
            since_size: state.cosigned_size(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            state.report_shrunk();
            return Ok(());
        }
        Err(s) => return Err(s.into()),
    };
    let now = u64::try_from(ctx.clock.now_unix_secs()).unwrap_or(0);
    let served = ServedCheckpoint {
        size: resp.size,
        note: &resp.note,
        log_vkey: &resp.log_vkey,
        consistency_proof: &resp.consistency_proof,
    };
    let Some(c) = state.cosign(served, now).await? else {
        return Ok(());
    };
    client
        .add_cosignature(pb::AddCosignatureRequest {
            size: c.size,
            cosignature_line: c.cosignature_line,
            witness_vkey: c.witness_vkey,
        })
        .await?;
    Ok(())
}

/// Asks a witness what it cosigned of this node's log; returns true once the
/// peer answered.
async fn check_own_rollback(ctx: &NodeCtx, peer: &str, client: &mut AuditClient) -> bool {
    let origin = ctx.audit.origin().to_owned();
    let Ok(resp) = client
        .get_witnessed(pb::GetWitnessedRequest { origin })
        .await
    else {
        return false;
    };
    let w = resp.into_inner();
    crate::audit::witness::check_own_rollback(
        &ctx.audit,
        peer,
        OwnWitnessed {
            known: w.known,
            size: w.size,
            root_hex: &w.root_hex,
        },
    );
    true
}
