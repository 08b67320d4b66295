//! Witnessing: each node fetches its peers' latest checkpoints, checks them
//! for consistency with what it cosigned before, cosigns, and hands the
//! cosignature back. A peer that shows two inconsistent checkpoints is
//! reported (split view). At start a node asks its witnesses what they
//! cosigned of its own log and reports a rollback (e.g. an old backup
//! restored) instead of silently continuing.
//!
//! Keys: a peer's log key and witness key are pinned to the peer (by its
//! configured name, resp. its certificate identity) on first use and must
//! not change afterwards.

use super::AuditLog;
use crate::config::PeerConfig;
use crate::error::ApiError;
use crate::pki::Principal;
use crate::rpc::ctx::NodeCtx;
use crate::store::{StoreError, Table, TableName, WriteBatch};
use allmende_audit::{Hash, TreeHead, VerifierKey, WitnessState};
use allmende_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often a node witnesses its peers.
pub const WITNESS_INTERVAL: Duration = Duration::from_secs(1);

/// What this node last cosigned of a peer's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessRecord {
    pub origin: String,
    pub size: u64,
    pub root_hex: String,
    pub note: String,
}

fn table(ctx_store: &crate::store::Store) -> Result<Table<String, WitnessRecord>, StoreError> {
    ctx_store.table(TableName::WitnessState)
}

fn pins(ctx_store: &crate::store::Store) -> Result<Table<String, String>, StoreError> {
    ctx_store.table(TableName::WitnessState)
}

/// The witness state this node keeps for the log `origin`.
pub fn witnessed(ctx: &NodeCtx, origin: &str) -> Result<Option<WitnessRecord>, StoreError> {
    table(&ctx.store)?.get(&format!("state:{origin}"))
}

/// Witness keys pinned for the peers that cosign this node's log.
pub fn pinned_witness_keys(ctx: &NodeCtx) -> Result<Vec<String>, StoreError> {
    // The tree also holds witness states (other value types): scan by prefix.
    let raw: crate::store::RawTable<Vec<u8>> = ctx.store.raw_table(TableName::WitnessState)?;
    raw.scan_prefix(b"pin-witness:")?
        .into_iter()
        .map(|(_, v)| {
            serde_json::from_slice::<String>(&v).map_err(|e| StoreError::Corrupt {
                table: "witness_state",
                reason: e.to_string(),
            })
        })
        .collect()
}

/// Findings of this node's audit log (split views seen, own rollback).
pub fn findings(log: &AuditLog) -> Vec<String> {
    log.findings()
}

/// Pins a witness key to the calling node on first use; a different key
/// later is refused.
pub async fn pin_witness_key(
    ctx: &NodeCtx,
    p: &Principal,
    key: &VerifierKey,
) -> Result<(), ApiError> {
    let t = pins(&ctx.store)?;
    let k = format!("pin-witness:{}/{}", p.organisation, p.subject.name());
    let vkey = key.to_vkey();
    match t.get(&k)? {
        Some(pinned) if pinned == vkey => Ok(()),
        Some(_) => Err(ApiError::PermissionDenied(
            "this node presented another witness key before; refusing the new one".into(),
        )),
        None => {
            let mut b = WriteBatch::new();
            b.put(&t, &k, &vkey)?;
            ctx.store.commit_durable(b).await?;
            Ok(())
        }
    }
}

/// The peers a node witnesses; can change at run time.
pub type SharedPeers = Arc<RwLock<Vec<PeerConfig>>>;

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
        let list = peers.read().map(|p| p.clone()).unwrap_or_default();
        for peer in list {
            let (who, ch) = match channels.get(&peer.name) {
                Some(c) => c.clone(),
                None => {
                    // The server's certificate must identify a node of a
                    // member organisation; pins are bound to that identity.
                    match crate::rpc::catalog::connect_peer(&peer.endpoint, tls.clone(), &ctx.trust)
                        .await
                    {
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

async fn witness_peer(
    ctx: &NodeCtx,
    peer: &str,
    client: &mut pb::audit_client::AuditClient<tonic::transport::Channel>,
) -> Result<(), WitnessFailure> {
    let pins = pins(&ctx.store)?;
    let states = table(&ctx.store)?;
    let origin_key = format!("origin:{peer}");
    let known_origin = pins.get(&origin_key)?;
    let last: Option<WitnessRecord> = match &known_origin {
        Some(o) => states.get(&format!("state:{o}"))?,
        None => None,
    };
    let since = last.as_ref().map_or(0, |l| l.size);
    let resp = match client
        .get_checkpoint(pb::GetCheckpointRequest { since_size: since })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            ctx.audit.report_finding(format!(
                "peer `{peer}` shows a log smaller than the size {since} this node cosigned: rolled back or forked"
            ));
            return Ok(());
        }
        Err(s) => return Err(s.into()),
    };
    if last.as_ref().is_some_and(|l| l.size == resp.size) {
        return Ok(());
    }
    let key = VerifierKey::parse(&resp.log_vkey)
        .map_err(|e| WitnessFailure::Other(format!("log key: {e}")))?;
    let pin_key = format!("pin-log:{peer}");
    match pins.get(&pin_key)? {
        Some(p) if p != key.to_vkey() => {
            ctx.audit.report_finding(format!(
                "peer `{peer}` presented a different log key than before"
            ));
            return Ok(());
        }
        _ => {}
    }
    let proof: Vec<Hash> = resp
        .consistency_proof
        .iter()
        .filter_map(|b| Hash::from_slice(b).ok())
        .collect();
    let last_state = last.as_ref().and_then(|l| {
        Some(WitnessState {
            origin: l.origin.clone(),
            head: TreeHead {
                size: l.size,
                root: Hash::from_hex(&l.root_hex).ok()?,
            },
            note: l.note.clone(),
        })
    });
    let now = u64::try_from(ctx.clock.now_unix_secs()).unwrap_or(0);
    let cosigned = match allmende_audit::witness_checkpoint(
        ctx.audit.witness_signer(),
        std::slice::from_ref(&key),
        last_state.as_ref(),
        resp.note.as_bytes(),
        &proof,
        now,
    ) {
        Ok(c) => c,
        Err(allmende_audit::WitnessError::SplitView(ev)) => {
            ctx.audit.report_finding(format!(
                "split view: peer `{peer}` signed two inconsistent checkpoints ({ev:?})"
            ));
            return Ok(());
        }
        Err(e) => {
            ctx.audit
                .report_finding(format!("peer `{peer}` checkpoint refused: {e}"));
            return Ok(());
        }
    };
    // Persist before releasing the cosignature.
    let rec = WitnessRecord {
        origin: cosigned.state.origin.clone(),
        size: cosigned.state.head.size,
        root_hex: cosigned.state.head.root.to_hex(),
        note: cosigned.state.note.clone(),
    };
    let mut b = WriteBatch::new();
    b.put(&states, &format!("state:{}", rec.origin), &rec)?;
    b.put(&pins, &origin_key, &rec.origin)?;
    b.put(&pins, &pin_key, &key.to_vkey())?;
    ctx.store
        .commit_durable(b)
        .await
        .map_err(WitnessFailure::from)?;
    client
        .add_cosignature(pb::AddCosignatureRequest {
            size: rec.size,
            cosignature_line: cosigned.cosignature.to_line(),
            witness_vkey: ctx.audit.witness_vkey(),
        })
        .await?;
    Ok(())
}

/// Asks a witness what it cosigned of this node's log; returns true once the
/// peer answered.
async fn check_own_rollback(
    ctx: &NodeCtx,
    peer: &str,
    client: &mut pb::audit_client::AuditClient<tonic::transport::Channel>,
) -> bool {
    let origin = ctx.audit.origin().to_owned();
    let Ok(resp) = client
        .get_witnessed(pb::GetWitnessedRequest { origin })
        .await
    else {
        return false;
    };
    let w = resp.into_inner();
    if !w.known {
        return true;
    }
    let Ok(root) = Hash::from_hex(&w.root_hex) else {
        return true;
    };
    match allmende_audit::check_rollback(
        ctx.audit.hash_store(),
        ctx.audit.size(),
        &[(peer.to_owned(), TreeHead { size: w.size, root })],
    ) {
        Ok(findings) => {
            for f in findings {
                ctx.audit.report_finding(format!("rollback: {f:?}"));
            }
        }
        Err(e) => ctx
            .audit
            .report_finding(format!("rollback check against `{peer}` failed: {e}")),
    }
    true
}
