//! The audit log's core: opening it (keys, frontier), the append path
//! (group commit), the fail-closed release guard and store verification.
//! Checkpoints, indexes, queries and retention live in their own files.

use super::checkpoint::{CheckpointRecord, checkpointer};
use super::index::{INDEXED_KEY, indexer};
use super::tree::{SledHashStore, encode_node_group};
use crate::clock::SharedClock;
use crate::locks::Poisoned;
use crate::pki::{Principal, Subject};
use crate::store::{RawTable, Store, StoreError, Table, TableName, WriteBatch};
use allmende_audit::{
    Decision, Ed25519Signer, Entry, EntryKind, Frontier, Hash, ReleaseOutcome, SignatureType,
    SubjectHash, SubjectHasher, TreeHead, leaf_hash,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot, watch};

/// The names the lock helpers log for the audit log's in-memory state.
const FINDINGS: &str = "audit findings";
const TASKS: &str = "audit log tasks";

/// How many pending appends one group commit takes at most.
const MAX_GROUP: usize = 4096;
/// Scheduler turns the writer waits for more appends before committing.
const LINGER_TURNS: u32 = 3;

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be written; nothing that depends on it may happen.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    #[error("audit log corrupt: {0}")]
    Corrupt(String),
    #[error("audit entry rejected: {0}")]
    Invalid(String),
    /// What was asked for does not exist yet (e.g. no checkpoint signed).
    #[error("{0}")]
    NotReady(String),
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => AuditError::Corrupt(e.to_string()),
            other => AuditError::Unavailable(other.to_string()),
        }
    }
}

/// An entry before the log assigns its sequence number, time and node.
#[derive(Debug, Clone)]
pub struct Draft {
    pub org: String,
    /// Clear user id; the log stores only its keyed hash.
    pub user: Option<String>,
    pub action: String,
    pub resource: String,
    pub purpose: Option<String>,
    pub decision: Option<Decision>,
    pub policy_ids: Vec<String>,
    pub policy_set_hash: Option<Hash>,
    pub grant_id: Option<String>,
    pub request_id: Option<String>,
    pub peer_node: Option<String>,
    pub kind: EntryKind,
    /// Clear data-subject ids; the log stores only their keyed hashes.
    pub subjects: Vec<String>,
    /// A public caller's keyed pseudonym, stored as it is (set only by
    /// [`Draft::by_public`]; `user` is `None` then).
    public_pseudonym: Option<String>,
}

/// Longest label (resource, action, purpose, grant, request id, peer node,
/// policy id) an entry stores, in bytes. A longer one — e.g. a
/// caller-chosen resource string of a denied request — is cut and tagged
/// with a hash of the whole, so the log's growth per entry stays bounded.
pub const MAX_LABEL_BYTES: usize = 256;

/// Cuts `s` to at most [`MAX_LABEL_BYTES`]: a prefix on a character
/// boundary, `…#`, and the first 16 hex digits of the SHA-256 of the whole.
pub fn bound_label(s: &mut String) {
    if s.len() <= MAX_LABEL_BYTES {
        return;
    }
    use sha2::Digest as _;
    let tag = hex::encode(&sha2::Sha256::digest(s.as_bytes())[..8]);
    // `…` is 3 bytes, `#` 1, the tag 16.
    let mut cut = MAX_LABEL_BYTES - 20;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.push_str("…#");
    s.push_str(&tag);
}

impl Draft {
    /// Bounds every label of the draft ([`bound_label`]).
    fn bound_labels(&mut self) {
        bound_label(&mut self.org);
        bound_label(&mut self.action);
        bound_label(&mut self.resource);
        for s in [
            &mut self.purpose,
            &mut self.grant_id,
            &mut self.request_id,
            &mut self.peer_node,
        ]
        .into_iter()
        .flatten()
        {
            bound_label(s);
        }
        self.policy_ids.truncate(64);
        self.policy_ids.iter_mut().for_each(bound_label);
    }

    /// A draft of `kind` by `caller`: the one way a caller becomes an
    /// entry's principal — its organisation, and its user id (a person,
    /// stored as a pseudonym) or its node name (a node, as `peer_node`).
    pub fn by(caller: &Principal, action: &str, resource: &str, kind: EntryKind) -> Self {
        Self::acting(
            &caller.organisation,
            &caller.subject,
            action,
            resource,
            kind,
        )
    }

    /// A draft of `kind` by `actor` of `org` (a caller's subject, or this
    /// node acting itself), set like [`Draft::by`].
    pub fn acting(
        org: &str,
        actor: &Subject,
        action: &str,
        resource: &str,
        kind: EntryKind,
    ) -> Self {
        let mut d = Self::new(org, action, resource, kind);
        match actor {
            Subject::User(u) => d.user = Some(u.clone()),
            Subject::Node(n) => d.peer_node = Some(n.clone()),
        }
        d
    }

    /// A draft of `kind` by a public caller (a public-tier certificate or an
    /// anonymous open-data caller): the one way the public becomes an
    /// entry's principal, `public/<pseudonym>` — the keyed pseudonym only,
    /// never a certificate, its fingerprint or an IP address.
    pub fn by_public(
        caller: &crate::access::PublicCaller,
        action: &str,
        resource: &str,
        kind: EntryKind,
    ) -> Self {
        let mut d = Self::new(allmende_policies::PUBLIC_ORG_ID, action, resource, kind);
        d.public_pseudonym = Some(caller.pseudonym().to_owned());
        d
    }

    /// A draft of `kind` by `org` with no user or node (the node's own
    /// housekeeping, or refusals before anyone is authenticated).
    pub fn new(org: &str, action: &str, resource: &str, kind: EntryKind) -> Self {
        Self {
            org: org.to_owned(),
            user: None,
            action: action.to_owned(),
            resource: resource.to_owned(),
            purpose: None,
            decision: None,
            policy_ids: Vec::new(),
            policy_set_hash: None,
            grant_id: None,
            request_id: None,
            peer_node: None,
            kind,
            subjects: Vec::new(),
            public_pseudonym: None,
        }
    }
}

struct Pending {
    draft: Draft,
    /// The user's pseudonym and the subjects' keyed hashes, computed by the
    /// appending task (HMACs run on every core, not in the one writer).
    user: Option<String>,
    subjects: Vec<SubjectHash>,
    reply: oneshot::Sender<Result<u64, AuditError>>,
}

/// A stored checkpoint with the cosignatures received for it.

#[derive(Debug, Serialize, Deserialize)]
struct Keys {
    log_pkcs8_b64: String,
    witness_pkcs8_b64: String,
    subject_secret_b64: String,
}

/// Log health for the DPO and the operator.
#[derive(Debug, Clone, Serialize)]
pub struct AuditStatus {
    pub size: u64,
    pub checkpoint_size: u64,
    pub indexed: u64,
    pub log_vkey: String,
    pub witness_vkey: String,
    pub origin: String,
}

pub(super) struct Inner {
    pub(super) store: Store,
    pub(super) entries: RawTable<u64>,
    pub(super) hashes: SledHashStore,
    pub(super) checkpoints: Table<u64, CheckpointRecord>,
    pub(super) state: Table<String, u64>,
    pub(super) index: RawTable<Vec<u8>>,
    tx: mpsc::Sender<Pending>,
    pub(super) log_signer: Ed25519Signer,
    pub(super) witness_signer: Ed25519Signer,
    pub(super) subjects: SubjectHasher,
    pub(super) node: String,
    pub(super) org: String,
    pub(super) origin: String,
    pub(super) clock: SharedClock,
    pub(super) committed: watch::Receiver<u64>,
    pub(super) checkpoint_size: AtomicU64,
    pub(super) indexed: AtomicU64,
    pub(super) tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(super) findings: std::sync::Mutex<Vec<String>>,
    pub(super) groups: AtomicU64,
    pub(super) grouped_entries: AtomicU64,
}

impl Inner {
    /// Records a finding once (see [`AuditLog::report_finding`]).
    pub(super) fn report_finding(&self, finding: String) {
        match crate::locks::lock(&self.findings, FINDINGS) {
            Ok(mut f) => {
                if !f.contains(&finding) {
                    tracing::error!(finding = %finding, "audit finding");
                    f.push(finding);
                }
            }
            // Not kept (the list is unusable), but never lost: logged.
            Err(_) => tracing::error!(finding = %finding, "audit finding"),
        }
    }
}

/// The audit log of one node. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

const SIZE_KEY: &str = "size";
const KEYS_KEY: &str = "keys";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl AuditLog {
    /// Opens the log of node `node` (of `federation`/`org`) and starts its
    /// writer, checkpointer and indexer tasks; they stop when `shutdown` is set.
    pub async fn open(
        store: Store,
        federation: &str,
        org: &str,
        node: &str,
        clock: SharedClock,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, AuditError> {
        use base64::Engine;
        let entries: RawTable<u64> = store.raw_table(TableName::AuditEntries)?;
        let hashes = SledHashStore {
            tree: store.raw_table(TableName::AuditTree)?,
        };
        let state: Table<String, u64> = store.table(TableName::AuditState)?;
        let keys_table: Table<String, Keys> = store.table(TableName::AuditState)?;
        let checkpoints: Table<u64, CheckpointRecord> = store.table(TableName::AuditCheckpoints)?;
        let index: RawTable<Vec<u8>> = store.raw_table(TableName::AuditIndex)?;

        // Keys: created once, kept in the node's store.
        let keys = match keys_table.get(&KEYS_KEY.to_owned())? {
            Some(k) => k,
            None => {
                let new_key = || {
                    allmende_audit::generate_pkcs8()
                        .map_err(|e| AuditError::Unavailable(format!("key generation: {e}")))
                };
                let mut secret = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
                    .map_err(|_| AuditError::Unavailable("no randomness".into()))?;
                let k = Keys {
                    log_pkcs8_b64: b64().encode(new_key()?),
                    witness_pkcs8_b64: b64().encode(new_key()?),
                    subject_secret_b64: b64().encode(secret),
                };
                let mut b = WriteBatch::new();
                b.put(&keys_table, &KEYS_KEY.to_owned(), &k)?;
                store.commit_durable(b).await?;
                k
            }
        };
        let dec = |s: &str| {
            b64()
                .decode(s)
                .map_err(|e| AuditError::Corrupt(format!("stored audit key: {e}")))
        };
        let origin = format!("allmende.{federation}.{org}.{node}");
        let log_signer =
            Ed25519Signer::from_pkcs8(&origin, SignatureType::Ed25519, &dec(&keys.log_pkcs8_b64)?)
                .map_err(|e| AuditError::Corrupt(e.to_string()))?;
        let witness_signer = Ed25519Signer::from_pkcs8(
            &format!("{origin}.witness"),
            SignatureType::CosignatureV1,
            &dec(&keys.witness_pkcs8_b64)?,
        )
        .map_err(|e| AuditError::Corrupt(e.to_string()))?;
        let subjects = SubjectHasher::new(&dec(&keys.subject_secret_b64)?)
            .map_err(|e| AuditError::Corrupt(e.to_string()))?;

        let size = state.get(&SIZE_KEY.to_owned())?.unwrap_or(0);
        let frontier = Frontier::load(&hashes, size)
            .map_err(|e| AuditError::Corrupt(format!("cannot load tree frontier: {e}")))?;
        // Entry times never decrease along the log (queries and exports
        // binary-search them): new entries start from the last one's time.
        let mut findings = Vec::new();
        let last_time = match entries.last()? {
            Some((seq, bytes)) => match Entry::decode(&bytes) {
                Ok(e) => e.time_ms,
                Err(e) => {
                    // Corrupt, not "time 0": named in the log and as a
                    // finding (`Audit.Status`); new entries take the clock.
                    tracing::error!(sequence = seq, error = %e, "last audit entry undecodable");
                    findings.push(format!("entry {seq} (the last) is undecodable: {e}"));
                    0
                }
            },
            None => 0,
        };
        let checkpoint_size = checkpoints.entries()?.last().map(|(s, _)| *s).unwrap_or(0);
        let indexed = index
            .get(&INDEXED_KEY.to_vec())?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes);

        let (tx, rx) = mpsc::channel::<Pending>(65_536);
        let (committed_tx, committed_rx) = watch::channel(size);
        let inner = Arc::new(Inner {
            store,
            entries,
            hashes,
            checkpoints,
            state,
            index,
            tx,
            log_signer,
            witness_signer,
            subjects,
            node: node.to_owned(),
            org: org.to_owned(),
            origin,
            clock,
            committed: committed_rx,
            checkpoint_size: AtomicU64::new(checkpoint_size),
            indexed: AtomicU64::new(indexed),
            tasks: std::sync::Mutex::new(Vec::new()),
            findings: std::sync::Mutex::new(findings),
            groups: AtomicU64::new(0),
            grouped_entries: AtomicU64::new(0),
        });
        let handles = vec![
            tokio::spawn(writer(
                inner.clone(),
                rx,
                frontier,
                last_time,
                committed_tx,
                shutdown.clone(),
            )),
            tokio::spawn(checkpointer(inner.clone(), shutdown.clone())),
            tokio::spawn(indexer(inner.clone(), shutdown)),
        ];
        // A poisoned list (never: it was made above) leaves the tasks
        // running unawaited; `closed` then waits for none.
        if let Ok(mut t) = crate::locks::lock(&inner.tasks, TASKS) {
            t.extend(handles);
        }
        Ok(Self { inner })
    }

    /// Waits for the log's tasks after the shutdown signal: pending appends
    /// are committed (or failed), a last checkpoint is signed.
    pub async fn closed(&self) {
        // Nobody waits on a poisoned list: there is nothing to await.
        let handles: Vec<_> = match crate::locks::lock(&self.inner.tasks, TASKS) {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for h in handles {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "audit task ended abnormally");
            }
        }
    }

    /// Appends an entry; returns its sequence number once it is durable.
    pub async fn append(&self, mut draft: Draft) -> Result<u64, AuditError> {
        draft.bound_labels();
        let (reply, rx) = oneshot::channel();
        let user = match draft.public_pseudonym.take() {
            Some(p) => Some(p),
            None => draft.user.as_ref().map(|u| self.pseudonym(&draft.org, u)),
        };
        let subjects = std::mem::take(&mut draft.subjects)
            .iter()
            .map(|s| self.inner.subjects.hash(s))
            .collect();
        self.inner
            .tx
            .send(Pending {
                draft,
                user,
                subjects,
                reply,
            })
            .await
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?;
        rx.await
            .map_err(|_| AuditError::Unavailable("audit writer stopped".into()))?
    }

    /// Writes the durable intent entry of a release and returns the guard
    /// that data-releasing code must hold. Fails (and nothing may be sent)
    /// when the log cannot be written.
    pub async fn begin_release(&self, mut draft: Draft) -> Result<ReleaseGuard, AuditError> {
        draft.kind = EntryKind::ReleaseIntent;
        let template = draft.clone();
        let seq = self.append(draft).await?;
        Ok(ReleaseGuard {
            log: self.clone(),
            intent_sequence: seq,
            template: Some(template),
        })
    }

    /// The keyed hash of a data subject or user id (never stored in clear).
    pub fn subject_hash(&self, id: &str) -> SubjectHash {
        self.inner.subjects.hash(id)
    }

    /// A 32-byte key derived from the node secret for `label` (e.g. the
    /// pseudonymisation key of one grant).
    pub fn derive_key(&self, label: &str) -> [u8; 32] {
        let h = self.inner.subjects.hash(&format!("derive:{label}"));
        h.0
    }

    /// The pseudonymous form of a user id as it appears in entries.
    pub fn pseudonym(&self, org: &str, user: &str) -> String {
        let h = self.inner.subjects.hash(&format!("user:{org}/{user}"));
        format!("u-{}", &h.to_hex()[..24])
    }

    /// Number of durable entries.
    pub fn size(&self) -> u64 {
        *self.inner.committed.borrow()
    }

    /// The log's checkpoint origin (also its key name).
    pub fn origin(&self) -> &str {
        &self.inner.origin
    }

    /// The log's verifier key (`name+keyid+base64`).
    pub fn log_vkey(&self) -> String {
        self.inner.log_signer.verifier_key().to_vkey()
    }

    /// This node's witness verifier key.
    pub fn witness_vkey(&self) -> String {
        self.inner.witness_signer.verifier_key().to_vkey()
    }

    /// The witness signer (for cosigning peers' checkpoints).
    pub fn witness_signer(&self) -> &Ed25519Signer {
        &self.inner.witness_signer
    }

    /// The Merkle tree's stored hashes.
    pub fn hash_store(&self) -> &SledHashStore {
        &self.inner.hashes
    }

    /// One stored entry body (raw canonical bytes).
    pub fn entry_bytes(&self, seq: u64) -> Result<Option<Vec<u8>>, AuditError> {
        Ok(self.inner.entries.get(&seq)?)
    }

    /// Entry bodies in `[from, to)`.
    pub fn entry_range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        Ok(self.inner.entries.range(&from, &to)?)
    }

    /// Records a witness finding (split view of a peer, rollback of this
    /// node's own log, …); shown by `Audit.Status`.
    pub fn report_finding(&self, finding: String) {
        self.inner.report_finding(finding);
    }

    /// Findings so far; refused rather than shown empty when the list is
    /// unusable (an empty list would hide a split view).
    pub fn findings(&self) -> Result<Vec<String>, Poisoned> {
        crate::locks::lock(&self.inner.findings, FINDINGS).map(|f| f.clone())
    }

    /// The store the log lives in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Group commits so far and the entries they carried.
    pub fn group_stats(&self) -> (u64, u64) {
        (
            self.inner.groups.load(Ordering::Relaxed),
            self.inner.grouped_entries.load(Ordering::Relaxed),
        )
    }

    /// Status for operators and the DPO.
    pub fn status(&self) -> AuditStatus {
        AuditStatus {
            size: self.size(),
            checkpoint_size: self.inner.checkpoint_size.load(Ordering::SeqCst),
            indexed: self.inner.indexed.load(Ordering::SeqCst),
            log_vkey: self.log_vkey(),
            witness_vkey: self.witness_vkey(),
            origin: self.inner.origin.clone(),
        }
    }

    /// Recomputes every leaf from the stored bodies and checks the stored
    /// tree and the signed checkpoints; names every mismatching entry.
    pub fn verify_store(&self) -> Result<allmende_audit::StoreReport, AuditError> {
        let size = self.size();
        let heads: Vec<TreeHead> = self
            .checkpoints()?
            .iter()
            .map(|c| {
                // A checkpoint whose root cannot be read cannot be checked:
                // corruption, not a checkpoint to leave out.
                let root = Hash::from_hex(&c.root_hex).map_err(|e| {
                    AuditError::Corrupt(format!("checkpoint {}: root: {e}", c.size))
                })?;
                Ok(TreeHead { size: c.size, root })
            })
            .collect::<Result<_, AuditError>>()?;
        let mut audit = allmende_audit::StoreAudit::new(&self.inner.hashes, size, &heads);
        let mut from = 0u64;
        while from < size {
            let to = size.min(from + 4096);
            for (seq, body) in self.entry_range(from, to)? {
                // An empty body is an entry pruned by retention (hash kept).
                let body = (!body.is_empty()).then_some(body.as_slice());
                audit
                    .feed(seq, body)
                    .map_err(|e| AuditError::Corrupt(e.to_string()))?;
            }
            from = to;
        }
        audit
            .finish()
            .map_err(|e| AuditError::Corrupt(e.to_string()))
    }
}

/// Statistics of a finished release.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseStats {
    pub rows_released: u64,
    pub rows_filtered: u64,
    pub bytes: u64,
}

/// Proof that a release's intent entry is durable. Complete it with the
/// release's statistics; dropping it unfinished records an aborted release.
#[derive(Debug)]
pub struct ReleaseGuard {
    log: AuditLog,
    intent_sequence: u64,
    template: Option<Draft>,
}

impl ReleaseGuard {
    /// The intent entry's sequence number.
    pub fn intent_sequence(&self) -> u64 {
        self.intent_sequence
    }

    /// Writes the completion entry.
    pub async fn complete(
        self,
        stats: ReleaseStats,
        outcome: ReleaseOutcome,
    ) -> Result<u64, AuditError> {
        self.complete_with_subjects(stats, outcome, Vec::new())
            .await
    }

    /// Writes the completion entry naming the data subjects whose rows were
    /// released (stored as keyed hashes), so that each can later list the
    /// accesses that included their data.
    pub async fn complete_with_subjects(
        mut self,
        stats: ReleaseStats,
        outcome: ReleaseOutcome,
        subjects: Vec<String>,
    ) -> Result<u64, AuditError> {
        let Some(mut d) = self.template.take() else {
            return Err(AuditError::Invalid("release already completed".into()));
        };
        d.subjects = subjects;
        d.kind = EntryKind::ReleaseCompletion {
            intent_sequence: self.intent_sequence,
            rows_released: stats.rows_released,
            rows_filtered: stats.rows_filtered,
            bytes: stats.bytes,
            outcome,
        };
        self.log.append(d).await
    }
}

impl Drop for ReleaseGuard {
    fn drop(&mut self) {
        if let Some(mut d) = self.template.take() {
            d.kind = EntryKind::ReleaseCompletion {
                intent_sequence: self.intent_sequence,
                rows_released: 0,
                rows_filtered: 0,
                bytes: 0,
                outcome: ReleaseOutcome::Aborted,
            };
            let log = self.log.clone();
            let intent = self.intent_sequence;
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(async move {
                        if let Err(e) = log.append(d).await {
                            tracing::warn!(intent_sequence = intent, error = %e, "aborted release not recorded; the intent stays open");
                        }
                    });
                }
                Err(_) => tracing::warn!(
                    intent_sequence = intent,
                    "aborted release not recorded outside a runtime; the intent stays open"
                ),
            }
        }
    }
}

async fn writer(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Pending>,
    mut frontier: Frontier,
    mut last_time: u64,
    committed: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut closing = false;
    loop {
        let first = if closing {
            match rx.try_recv() {
                Ok(p) => p,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = shutdown.wait_for(|s| *s) => {
                    // Take no new appends; commit what is queued, then stop.
                    rx.close();
                    closing = true;
                    continue;
                }
            }
        };
        let mut group = vec![first];
        // Writers that were just answered are about to append again: give
        // them a few scheduler turns to join this group (one flush for all)
        // instead of flushing for each alone. No timer: an idle log commits
        // at once.
        let mut idle_turns = 0;
        while group.len() < MAX_GROUP && idle_turns < LINGER_TURNS {
            match rx.try_recv() {
                Ok(p) => {
                    group.push(p);
                    idle_turns = 0;
                }
                Err(_) => {
                    idle_turns += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        let mut next = frontier.clone();
        let first = next.size();
        let mut batch = WriteBatch::new();
        let mut writes = Vec::new();
        let mut accepted: Vec<(oneshot::Sender<Result<u64, AuditError>>, u64)> = Vec::new();
        let now = u64::try_from(inner.clock.now_unix_ms()).unwrap_or(0);
        let time_ms = now.max(last_time);
        for p in group {
            let seq = next.size();
            let d = p.draft;
            let entry = Entry {
                sequence: seq,
                time_ms,
                node: inner.node.clone(),
                principal: allmende_audit::Principal {
                    org: d.org,
                    user: p.user,
                },
                action: d.action,
                resource: d.resource,
                purpose: d.purpose,
                decision: d.decision,
                policy_ids: d.policy_ids,
                policy_set_hash: d.policy_set_hash,
                grant_id: d.grant_id,
                request_id: d.request_id,
                peer_node: d.peer_node,
                kind: d.kind,
                subjects: p.subjects,
            };
            let bytes = match entry.encode() {
                Ok(b) => b,
                Err(e) => {
                    let _ = p.reply.send(Err(AuditError::Invalid(e.to_string())));
                    continue;
                }
            };
            if let Err(e) = next.append(leaf_hash(&bytes), &mut writes) {
                let _ = p.reply.send(Err(AuditError::Corrupt(e.to_string())));
                continue;
            }
            batch.put_raw(&inner.entries, &seq, bytes);
            accepted.push((p.reply, seq));
        }
        if accepted.is_empty() {
            continue;
        }
        // Every hash this group adds, in one value under its first sequence.
        batch.put_raw(&inner.hashes.tree, &first, encode_node_group(&mut writes));
        let size = next.size();
        if let Err(e) = batch.put(&inner.state, &SIZE_KEY.to_owned(), &size) {
            for (r, _) in accepted {
                let _ = r.send(Err(AuditError::Unavailable(e.to_string())));
            }
            continue;
        }
        inner.groups.fetch_add(1, Ordering::Relaxed);
        inner
            .grouped_entries
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        match inner.store.commit_durable(batch).await {
            Ok(()) => {
                frontier = next;
                last_time = time_ms;
                let _ = committed.send(size);
                for (r, seq) in accepted {
                    let _ = r.send(Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit append failed; requests that need it fail closed");
                for (r, _) in accepted {
                    let _ = r.send(Err(AuditError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::audit::QueryFilter;
    use crate::clock::ManualClock;
    use crate::store::StoreOptions;
    use std::time::Duration;

    pub(crate) async fn open(dir: &std::path::Path) -> (AuditLog, Store, watch::Sender<bool>) {
        open_with_clock(dir, ManualClock::at_unix_ms(1_800_000_000_000)).await
    }

    pub(crate) async fn open_with_clock(
        dir: &std::path::Path,
        clock: Arc<ManualClock>,
    ) -> (AuditLog, Store, watch::Sender<bool>) {
        open_as(dir, "swm", "swm-1", clock).await
    }

    /// A log of node `node` of organisation `org` in `dir`.
    pub(crate) async fn open_as(
        dir: &std::path::Path,
        org: &str,
        node: &str,
        clock: Arc<ManualClock>,
    ) -> (AuditLog, Store, watch::Sender<bool>) {
        let store = Store::open(
            dir,
            &StoreOptions {
                cache_bytes: 1 << 22,
            },
        )
        .unwrap();
        let (tx, rx) = watch::channel(false);
        let log = AuditLog::open(store.clone(), "munich", org, node, clock, rx)
            .await
            .unwrap();
        (log, store, tx)
    }

    pub(crate) fn draft(dataset: &str, user: &str, subject: &str) -> Draft {
        let mut d = Draft::new("tum", "read", dataset, EntryKind::Decision);
        d.user = Some(user.into());
        d.purpose = Some("AcademicResearch".into());
        d.decision = Some(Decision::Allow);
        d.policy_ids = vec!["research-read".into()];
        d.subjects = vec![subject.into()];
        d
    }

    fn caller(subject: Subject) -> Principal {
        Principal {
            federation: "munich".into(),
            organisation: "tum".into(),
            organisation_kind: crate::pki::OrgKind::University,
            role: matches!(subject, Subject::User(_)).then_some(crate::pki::Role::Researcher),
            subject,
            certificate_sha256: "ab".into(),
            not_after: i64::MAX,
            issuer_ca_spki_sha256: "tum-ca".into(),
        }
    }

    /// A node caller's draft names the node, a person's names the person;
    /// neither names the other, and both carry the caller's organisation.
    #[test]
    fn a_draft_by_a_caller_carries_its_node_or_its_user() {
        let node = caller(Subject::Node("tum-1".into()));
        let d = Draft::by(&node, "read", "air-quality", EntryKind::Decision);
        assert_eq!(d.org, "tum");
        assert_eq!(d.peer_node.as_deref(), Some("tum-1"));
        assert_eq!(d.user, None);
        let person = caller(Subject::User("alice".into()));
        let d = Draft::by(&person, "read", "air-quality", EntryKind::Decision);
        assert_eq!(d.org, "tum");
        assert_eq!(d.user.as_deref(), Some("alice"));
        assert_eq!(d.peer_node, None);
    }

    /// A findings list poisoned by a panic is refused (`UNAVAILABLE`), not
    /// shown empty: an empty list would hide a split view. A new finding is
    /// still logged.
    #[tokio::test]
    async fn poisoned_findings_are_refused_not_shown_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _store, _tx) = open(dir.path()).await;
        log.report_finding("split view: x".into());
        assert_eq!(log.findings().unwrap(), ["split view: x"]);
        let inner = log.inner.clone();
        let _ = std::thread::spawn(move || {
            let _g = inner.findings.lock();
            std::panic::resume_unwind(Box::new("poison the findings"));
        })
        .join();
        log.report_finding("rollback: y".into());
        let e = crate::error::ApiError::from(log.findings().unwrap_err());
        assert!(matches!(e, crate::error::ApiError::Unavailable(_)), "{e:?}");
    }

    #[tokio::test]
    async fn over_long_labels_never_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _s, _stop) = open(dir.path()).await;
        let huge = "r".repeat(64 * 1024);
        let mut d = draft(&huge, "mallory", "HH-1");
        d.action = "ä".repeat(40_000);
        d.grant_id = Some(huge.clone());
        d.request_id = Some(huge.clone());
        d.purpose = Some(huge.clone());
        let seq = log.append(d).await.unwrap();
        let bytes = log.entry_bytes(seq).unwrap().unwrap();
        assert!(bytes.len() < 4096, "entry of {} bytes", bytes.len());
        let page = log
            .query(&QueryFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        let e = &page.entries[0];
        assert!(e.resource.len() <= MAX_LABEL_BYTES, "{}", e.resource.len());
        assert!(e.resource.starts_with("rrrr") && e.resource.contains("…#"));
        assert!(e.action.len() <= MAX_LABEL_BYTES);
        // Two long labels that differ only at the end stay distinguishable.
        let mut a = huge.clone();
        let mut b = huge.clone();
        b.push('x');
        bound_label(&mut a);
        bound_label(&mut b);
        assert_ne!(a, b);
        let mut short = "smart-meter-readings".to_owned();
        bound_label(&mut short);
        assert_eq!(short, "smart-meter-readings");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_distinct_sequences_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store, stop) = open(dir.path()).await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(draft(
                    "smart-meter-readings",
                    "alice",
                    &format!("HH-{i:06}"),
                ))
                .await
                .unwrap()
            }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (0..200).collect::<Vec<_>>());
        assert!(
            log.wait_provable(199, Duration::from_secs(2)).await,
            "no checkpoint within 2 s"
        );
        let report = log.verify_store().unwrap();
        assert!(report.is_ok(), "{report:?}");
        stop.send(true).unwrap();
        log.closed().await;
        drop(log);
        drop(store);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (log, _store, _stop) = open(dir.path()).await;
        assert_eq!(log.size(), 200);
        assert_eq!(log.append(draft("x", "bob", "HH-1")).await.unwrap(), 200);
        assert!(log.verify_store().unwrap().is_ok());
    }

    #[tokio::test]
    async fn no_personal_identifier_is_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _s, _stop) = open(dir.path()).await;
        let seq = log
            .append(draft("ds", "alice.researcher", "HH-SECRET-42"))
            .await
            .unwrap();
        let bytes = log.entry_bytes(seq).unwrap().unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("alice.researcher"));
        assert!(!text.contains("HH-SECRET-42"));
        // But the DPO and the citizen can still find it by keyed hash.
        let page = log
            .query(&QueryFilter {
                subject: Some("HH-SECRET-42".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.entries.len(), 1);
        let page = log
            .query(&QueryFilter {
                user: Some(("tum".into(), "alice.researcher".into())),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.entries.len(), 1);
    }

    #[tokio::test]
    async fn release_guard_fails_closed_when_the_log_cannot_be_written() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store, _stop) = open(dir.path()).await;
        store.fail_writes(true);
        let err = log
            .begin_release(draft("smart-meter-readings", "alice", "HH-1"))
            .await
            .unwrap_err();
        assert!(matches!(err, AuditError::Unavailable(_)), "{err}");
        let status: tonic::Status = crate::error::ApiError::from(err).into();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(log.size(), 0);
        store.fail_writes(false);
        let guard = log
            .begin_release(draft("smart-meter-readings", "alice", "HH-1"))
            .await
            .unwrap();
        assert_eq!(guard.intent_sequence(), 0);
        let done = guard
            .complete(
                ReleaseStats {
                    rows_released: 10,
                    rows_filtered: 3,
                    bytes: 999,
                },
                ReleaseOutcome::Completed,
            )
            .await
            .unwrap();
        let e = Entry::decode(&log.entry_bytes(done).unwrap().unwrap()).unwrap();
        assert!(matches!(
            e.kind,
            EntryKind::ReleaseCompletion {
                intent_sequence: 0,
                rows_released: 10,
                rows_filtered: 3,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_dropped_guard_records_an_aborted_release() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _s, _stop) = open(dir.path()).await;
        drop(log.begin_release(draft("ds", "a", "s")).await.unwrap());
        for _ in 0..100 {
            if log.size() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let e = Entry::decode(&log.entry_bytes(1).unwrap().unwrap()).unwrap();
        assert!(matches!(
            e.kind,
            EntryKind::ReleaseCompletion {
                outcome: ReleaseOutcome::Aborted,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn an_edited_entry_in_the_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (log, store, _stop) = open(dir.path()).await;
        for i in 0..10 {
            log.append(draft("ds", "a", &format!("s{i}")))
                .await
                .unwrap();
        }
        log.checkpoint_now().await.unwrap();
        let mut bytes = log.entry_bytes(6).unwrap().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        let t: RawTable<u64> = store.raw_table(TableName::AuditEntries).unwrap();
        let mut b = WriteBatch::new();
        b.put_raw(&t, &6, bytes);
        store.commit_durable(b).await.unwrap();
        let report = log.verify_store().unwrap();
        assert!(!report.is_ok());
        let text = format!("{report:?}");
        assert!(text.contains("sequence: 6"), "{text}");
    }
}
