//! The append path (group commit), checkpoints, indexes and queries.

use super::tree::{SledHashStore, encode_node_group};
use crate::clock::SharedClock;
use crate::store::{RawTable, Store, StoreError, Table, TableName, WriteBatch};
use allmende_audit::{
    Checkpoint, Decision, Ed25519Signer, Entry, EntryKind, Frontier, Hash, ReleaseOutcome,
    SignatureType, SubjectHash, SubjectHasher, TreeHead, leaf_hash,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How many pending appends one group commit takes at most.
const MAX_GROUP: usize = 4096;
/// Scheduler turns the writer waits for more appends before committing.
const LINGER_TURNS: u32 = 3;
/// How often the checkpointer looks for new entries (≤ 1 s to provable).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

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
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } => AuditError::Corrupt(e.to_string()),
            other => AuditError::Unavailable(other.to_string()),
        }
    }
}

impl From<AuditError> for crate::error::ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Unavailable(m) => crate::error::ApiError::Unavailable(m),
            AuditError::Corrupt(m) => crate::error::ApiError::Internal(m),
            AuditError::Invalid(m) => crate::error::ApiError::InvalidArgument(m),
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

    /// A draft of `kind` by `org`.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub size: u64,
    pub root_hex: String,
    /// The signed note (log signature only).
    pub note: String,
    /// Cosignature lines received from witnesses (`— name base64`).
    pub cosignatures: Vec<String>,
    pub signed_at_ms: i64,
}

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

struct Inner {
    store: Store,
    entries: RawTable<u64>,
    hashes: SledHashStore,
    checkpoints: Table<u64, CheckpointRecord>,
    state: Table<String, u64>,
    index: RawTable<Vec<u8>>,
    tx: mpsc::Sender<Pending>,
    log_signer: Ed25519Signer,
    witness_signer: Ed25519Signer,
    subjects: SubjectHasher,
    node: String,
    org: String,
    origin: String,
    clock: SharedClock,
    committed: watch::Receiver<u64>,
    checkpoint_size: AtomicU64,
    indexed: AtomicU64,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    findings: std::sync::Mutex<Vec<String>>,
    groups: AtomicU64,
    grouped_entries: AtomicU64,
}

/// The audit log of one node. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

const SIZE_KEY: &str = "size";
/// Key of the indexer's progress inside the index tree (sorts after every
/// index key, whose first byte is a lower-case letter).
const INDEXED_KEY: &[u8] = b"\xffindexed";
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
        let last_time = match entries.last()? {
            Some((_, bytes)) => Entry::decode(&bytes).map(|e| e.time_ms).unwrap_or(0),
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
            findings: std::sync::Mutex::new(Vec::new()),
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
        if let Ok(mut t) = inner.tasks.lock() {
            t.extend(handles);
        }
        Ok(Self { inner })
    }

    /// Waits for the log's tasks after the shutdown signal: pending appends
    /// are committed (or failed), a last checkpoint is signed.
    pub async fn closed(&self) {
        let handles: Vec<_> = match self.inner.tasks.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for h in handles {
            let _ = h.await;
        }
    }

    /// Appends an entry; returns its sequence number once it is durable.
    pub async fn append(&self, mut draft: Draft) -> Result<u64, AuditError> {
        draft.bound_labels();
        let (reply, rx) = oneshot::channel();
        let user = draft.user.as_ref().map(|u| self.pseudonym(&draft.org, u));
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

    /// The latest checkpoint, if one was signed.
    pub fn latest_checkpoint(&self) -> Result<Option<CheckpointRecord>, AuditError> {
        let size = self.inner.checkpoint_size.load(Ordering::SeqCst);
        if size == 0 {
            return Ok(None);
        }
        Ok(self.inner.checkpoints.get(&size)?)
    }

    /// Every stored checkpoint (oldest first).
    pub fn checkpoints(&self) -> Result<Vec<CheckpointRecord>, AuditError> {
        Ok(self
            .inner
            .checkpoints
            .entries()?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Signs a checkpoint for the current size now (normally the
    /// checkpointer does this within [`CHECKPOINT_INTERVAL`]).
    pub async fn checkpoint_now(&self) -> Result<Option<CheckpointRecord>, AuditError> {
        sign_checkpoint(&self.inner).await
    }

    /// Waits until a checkpoint covers `seq` (or the timeout passes).
    pub async fn wait_provable(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.inner.checkpoint_size.load(Ordering::SeqCst) > seq {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Waits (bounded) until the checkpoint of `size` carries at least `min`
    /// cosignatures; returns it as it is then.
    pub async fn wait_cosigned(
        &self,
        size: u64,
        min: usize,
        timeout: Duration,
    ) -> Result<Option<CheckpointRecord>, AuditError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self.inner.checkpoints.get(&size)?;
            let enough = rec.as_ref().is_some_and(|r| r.cosignatures.len() >= min);
            if enough || tokio::time::Instant::now() >= deadline {
                return Ok(rec);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stores a verified cosignature line for the checkpoint of `size`.
    pub async fn add_cosignature(&self, size: u64, line: String) -> Result<bool, AuditError> {
        let Some(mut rec) = self.inner.checkpoints.get(&size)? else {
            return Ok(false);
        };
        if rec.cosignatures.contains(&line) {
            return Ok(true);
        }
        rec.cosignatures.push(line);
        let mut b = WriteBatch::new();
        b.put(&self.inner.checkpoints, &size, &rec)?;
        self.inner.store.commit_durable(b).await?;
        Ok(true)
    }

    /// Records a witness finding (split view of a peer, rollback of this
    /// node's own log, …); shown by `Audit.Status`.
    pub fn report_finding(&self, finding: String) {
        if let Ok(mut f) = self.inner.findings.lock()
            && !f.contains(&finding)
        {
            tracing::error!(finding = %finding, "audit finding");
            f.push(finding);
        }
    }

    /// Findings so far.
    pub fn findings(&self) -> Vec<String> {
        self.inner
            .findings
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// The store the log lives in.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Retention: entries older than `cutoff_ms` are summarised (counts per
    /// dataset and purpose, kept in the store and bound by hash into a
    /// retention entry of the log) and their bodies deleted. Leaf and tree
    /// hashes stay, so the tree, proofs and bundles keep verifying.
    pub async fn apply_retention(
        &self,
        cutoff_ms: u64,
    ) -> Result<Option<(u64, allmende_audit::RetentionSummary)>, AuditError> {
        let size = self.size();
        let mut old = Vec::new();
        let mut from = 0u64;
        'scan: while from < size {
            let to = size.min(from + 4096);
            for (_, bytes) in self.entry_range(from, to)? {
                if bytes.is_empty() {
                    continue;
                }
                let e = Entry::decode(&bytes).map_err(|e| AuditError::Corrupt(e.to_string()))?;
                if e.time_ms >= cutoff_ms {
                    break 'scan;
                }
                old.push(e);
            }
            from = to;
        }
        // Never prune retention entries themselves.
        old.retain(|e| !matches!(e.kind, EntryKind::Retention { .. }));
        let plan = allmende_audit::plan_retention(old.iter(), cutoff_ms);
        let kind = plan
            .summary
            .to_entry_kind()
            .map_err(|e| AuditError::Invalid(e.to_string()))?;
        let Some(kind) = kind else {
            return Ok(None);
        };
        let encoded = plan
            .summary
            .encode()
            .map_err(|e| AuditError::Invalid(e.to_string()))?;
        // First the retention entry (durable), then the deletion.
        let seq = self
            .append(Draft::new(&self.inner.org, "retention", "audit-log", kind))
            .await?;
        let summaries: RawTable<u64> = self.inner.store.raw_table(TableName::AuditRetention)?;
        let mut b = WriteBatch::new();
        b.put_raw(&summaries, &seq, encoded);
        for p in &plan.prunable {
            b.put_raw(&self.inner.entries, p, Vec::new());
        }
        self.inner.store.commit_durable(b).await?;
        tracing::info!(
            pruned = plan.prunable.len(),
            retention_entry = seq,
            "audit retention applied"
        );
        Ok(Some((seq, plan.summary)))
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
            .filter_map(|c| {
                Some(TreeHead {
                    size: c.size,
                    root: Hash::from_hex(&c.root_hex).ok()?,
                })
            })
            .collect();
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

    /// Runs a query over the log (DPO tools). Uses the most selective index
    /// and filters the rest on decoded entries; pages by sequence.
    /// The first sequence below `end` whose entry's time is `>= time_ms`
    /// (`end` if none). Entry times never decrease along the log; entries
    /// pruned by retention (the oldest) count as older than any time.
    fn first_at_or_after(&self, time_ms: u64, end: u64) -> Result<u64, AuditError> {
        let (mut lo, mut hi) = (0u64, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let time = match self.inner.entries.get(&mid)? {
                Some(bytes) if !bytes.is_empty() => {
                    Entry::decode(&bytes)
                        .map_err(|err| AuditError::Corrupt(format!("entry {mid}: {err}")))?
                        .time_ms
                }
                _ => 0,
            };
            if time < time_ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    pub fn query(&self, filter: &QueryFilter) -> Result<QueryPage, AuditError> {
        let limit = filter.limit.clamp(1, 1000);
        let mut start = filter.after.map_or(0, |a| a.saturating_add(1));
        let mut end = self.size();
        // Entry times never decrease along the log: a time range is a
        // sequence range, found by binary search.
        if let Some(from) = filter.from_ms {
            start = start.max(self.first_at_or_after(from, end)?);
        }
        if let Some(to) = filter.to_ms {
            end = end.min(self.first_at_or_after(to, end)?);
        }
        // Candidate sequences from an index, when the filter names one.
        let user_key = filter.user.as_ref().map(|(org, u)| self.pseudonym(org, u));
        let subject = filter.subject.as_ref().map(|s| self.subject_hash(s));
        let subject_key = subject.as_ref().map(SubjectHash::to_hex);
        let index_prefix = if let Some(s) = &subject {
            posting_prefix(FIELD_SUBJECT, &s.0[..1])
        } else if let Some(d) = &filter.dataset {
            posting_prefix(FIELD_DATASET, d.as_bytes())
        } else if let Some(u) = &user_key {
            posting_prefix(FIELD_USER, u.as_bytes())
        } else if let Some(o) = &filter.org {
            posting_prefix(FIELD_ORG, o.as_bytes())
        } else if let Some(p) = &filter.purpose {
            posting_prefix(FIELD_PURPOSE, p.as_bytes())
        } else {
            filter
                .decision
                .and_then(|d| posting_prefix(FIELD_DECISION, decision_term(d)))
        };
        let indexed = self.inner.indexed.load(Ordering::SeqCst).min(end);
        let mut out = Vec::new();
        let mut next_after = None;
        let mut consider = |seq: u64, bytes: &[u8]| -> Result<bool, AuditError> {
            if bytes.is_empty() {
                // Pruned by retention.
                return Ok(false);
            }
            let e = Entry::decode(bytes)
                .map_err(|err| AuditError::Corrupt(format!("entry {seq}: {err}")))?;
            if filter.matches(&e, user_key.as_deref(), subject_key.as_deref()) {
                out.push(e);
            }
            next_after = Some(seq);
            Ok(out.len() >= limit)
        };
        match index_prefix {
            Some(prefix) if indexed > start => {
                // Indexed part first (the term's posting lists in range
                // order, from the last one that can hold `start`), then the
                // unindexed tail by scan.
                const PAGE: usize = 64;
                let mut from_key = posting_key(&prefix, start.saturating_sub(INDEX_SPAN - 1));
                let to_key = posting_key(&prefix, indexed);
                let mut done = false;
                'lists: loop {
                    let lists = self.inner.index.range_limit(&from_key, &to_key, PAGE)?;
                    let Some((last, _)) = lists.last() else {
                        break;
                    };
                    let more = lists.len() == PAGE;
                    from_key = last.clone();
                    from_key.push(0);
                    for (k, v) in lists {
                        let Some(first) = k
                            .get(k.len().saturating_sub(8)..)
                            .and_then(|b| <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes))
                        else {
                            continue;
                        };
                        for seq in postings_of(first, &v, subject.as_ref().map(|s| &s.0)) {
                            if seq < start {
                                continue;
                            }
                            if seq >= indexed {
                                break;
                            }
                            if let Some(bytes) = self.inner.entries.get(&seq)?
                                && consider(seq, &bytes)?
                            {
                                done = true;
                                break 'lists;
                            }
                        }
                    }
                    if !more {
                        break;
                    }
                }
                if !done {
                    for (seq, bytes) in self.entry_range(indexed.max(start), end)? {
                        if consider(seq, &bytes)? {
                            break;
                        }
                    }
                }
            }
            _ => {
                let mut from = start;
                'scan: while from < end {
                    let to = end.min(from + 1024);
                    for (seq, bytes) in self.entry_range(from, to)? {
                        if consider(seq, &bytes)? {
                            break 'scan;
                        }
                    }
                    from = to;
                }
            }
        }
        let more = out.len() >= limit;
        Ok(QueryPage {
            entries: out,
            next_after: if more { next_after } else { None },
        })
    }
}

/// Filters of an audit query. `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    pub dataset: Option<String>,
    pub org: Option<String>,
    /// (organisation, user id) in clear; matched through its pseudonym.
    pub user: Option<(String, String)>,
    pub purpose: Option<String>,
    pub decision: Option<Decision>,
    /// Data subject in clear; matched through its keyed hash.
    pub subject: Option<String>,
    pub from_ms: Option<u64>,
    pub to_ms: Option<u64>,
    /// Page after this sequence number.
    pub after: Option<u64>,
    pub limit: usize,
}

impl QueryFilter {
    fn matches(&self, e: &Entry, user_key: Option<&str>, subject_key: Option<&str>) -> bool {
        self.dataset.as_ref().is_none_or(|d| &e.resource == d)
            && self.org.as_ref().is_none_or(|o| &e.principal.org == o)
            && user_key.is_none_or(|u| e.principal.user.as_deref() == Some(u))
            && self
                .purpose
                .as_ref()
                .is_none_or(|p| e.purpose.as_deref() == Some(p.as_str()))
            && self.decision.is_none_or(|d| e.decision == Some(d))
            && subject_key.is_none_or(|s| e.subjects.iter().any(|h| h.to_hex() == s))
            && self.from_ms.is_none_or(|f| e.time_ms >= f)
            && self.to_ms.is_none_or(|t| e.time_ms < t)
    }
}

/// One page of query results.
#[derive(Debug, Clone)]
pub struct QueryPage {
    pub entries: Vec<Entry>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next_after: Option<u64>,
}

/// Index fields (the first byte of a posting-list key).
const FIELD_DATASET: u8 = b'd';
const FIELD_ORG: u8 = b'o';
const FIELD_USER: u8 = b'u';
const FIELD_SUBJECT: u8 = b's';
const FIELD_PURPOSE: u8 = b'p';
const FIELD_DECISION: u8 = b'c';

fn decision_term(d: Decision) -> &'static [u8] {
    match d {
        Decision::Allow => b"allow",
        Decision::Deny => b"deny",
    }
}
/// Sequences one index range (and so one posting list) spans at most.
const INDEX_SPAN: u64 = 4096;
/// How long the indexer lets a range fill before it indexes what is there.
const INDEX_DELAY: Duration = Duration::from_millis(200);

/// `field ‖ u16 BE length ‖ term`: the prefix of a term's posting lists.
/// `None` for a term longer than `u16::MAX` bytes (not indexed).
fn posting_prefix(field: u8, term: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(term.len()).ok()?;
    let mut k = Vec::with_capacity(3 + term.len() + 8);
    k.push(field);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(term);
    Some(k)
}

/// The key of a term's posting list for the range starting at `first`.
fn posting_key(prefix: &[u8], first: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a varint at `*pos`; `None` if malformed or truncated.
fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Appends ascending sequences (all `>= first`) as LEB128 varint deltas,
/// the first relative to `first`.
fn encode_postings(first: u64, seqs: &[u64], out: &mut Vec<u8>) {
    let mut prev = first;
    for &seq in seqs {
        put_varint(out, seq.saturating_sub(prev));
        prev = seq;
    }
}

/// Decodes up to `count` postings written by [`encode_postings`] from
/// `*pos`; stops at the first malformed varint.
fn decode_postings(first: u64, bytes: &[u8], pos: &mut usize, count: usize, out: &mut Vec<u64>) {
    let mut prev = first;
    for _ in 0..count {
        if *pos >= bytes.len() {
            return;
        }
        let Some(seq) = get_varint(bytes, pos).and_then(|d| prev.checked_add(d)) else {
            return;
        };
        out.push(seq);
        prev = seq;
    }
}

/// The postings of one index value: a whole posting list, or for a
/// subject bucket the record of `subject` (none if it has no record).
fn postings_of(first: u64, value: &[u8], subject: Option<&[u8; 32]>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    match subject {
        None => decode_postings(first, value, &mut pos, usize::MAX, &mut out),
        Some(want) => {
            while let Some(hash) = value.get(pos..pos + 32) {
                pos += 32;
                let Some(count) = get_varint(value, &mut pos) else {
                    break;
                };
                let count = usize::try_from(count).unwrap_or(usize::MAX);
                if hash == want.as_slice() {
                    decode_postings(first, value, &mut pos, count, &mut out);
                    break;
                }
                // Skip this record's postings.
                for _ in 0..count {
                    if get_varint(value, &mut pos).is_none() {
                        return out;
                    }
                }
            }
        }
    }
    out
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
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    if let Err(e) = log.append(d).await {
                        tracing::warn!(error = %e, "aborted release not recorded; the intent stays open");
                    }
                });
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

async fn sign_checkpoint(inner: &Inner) -> Result<Option<CheckpointRecord>, AuditError> {
    let size = *inner.committed.borrow();
    if size == 0 || size <= inner.checkpoint_size.load(Ordering::SeqCst) {
        return Ok(None);
    }
    let root = allmende_audit::root_at(&inner.hashes, size)
        .map_err(|e| AuditError::Corrupt(e.to_string()))?;
    let cp = Checkpoint::new(&inner.origin, size, root)
        .map_err(|e| AuditError::Corrupt(e.to_string()))?;
    let note = allmende_audit::sign_checkpoint(&inner.log_signer, &cp)
        .map_err(|e| AuditError::Corrupt(e.to_string()))?;
    let rec = CheckpointRecord {
        size,
        root_hex: root.to_hex(),
        note,
        cosignatures: Vec::new(),
        signed_at_ms: inner.clock.now_unix_ms(),
    };
    let mut b = WriteBatch::new();
    b.put(&inner.checkpoints, &size, &rec)?;
    inner.store.commit_durable(b).await?;
    inner.checkpoint_size.fetch_max(size, Ordering::SeqCst);
    Ok(Some(rec))
}

async fn checkpointer(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.wait_for(|s| *s) => true,
        };
        if stop {
            // Let the writer finish its queue, then cover it with a checkpoint.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Err(e) = sign_checkpoint(&inner).await {
                tracing::warn!(error = %e, "final checkpoint not signed");
            }
            return;
        }
        if let Err(e) = sign_checkpoint(&inner).await {
            tracing::warn!(error = %e, "checkpoint not signed");
        }
    }
}

/// Derives the query indexes from the log, behind the durable append.
///
/// Indexes in ranges of up to [`INDEX_SPAN`] entries: it lets a range fill
/// for at most [`INDEX_DELAY`] (so the index lags at most that plus the
/// work), then writes it on a blocking thread, off the async workers.
async fn indexer(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut committed = inner.committed.clone();
    loop {
        // Wait for something to index.
        while *committed.borrow_and_update() <= inner.indexed.load(Ordering::SeqCst) {
            tokio::select! {
                r = committed.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        // Let a range fill, for a bounded time.
        let deadline = tokio::time::Instant::now() + INDEX_DELAY;
        loop {
            let size = *committed.borrow_and_update();
            if size.saturating_sub(inner.indexed.load(Ordering::SeqCst)) >= INDEX_SPAN {
                break;
            }
            tokio::select! {
                r = committed.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        let size = *committed.borrow();
        let work = inner.clone();
        let stop = shutdown.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut from = work.indexed.load(Ordering::SeqCst);
            // A long rebuild (after a migration) stops between ranges at
            // shutdown and goes on from its marker after the restart.
            while from < size && !*stop.borrow() {
                let to = size.min(from + INDEX_SPAN);
                index_range(&work, from, to)?;
                work.indexed.store(to, Ordering::SeqCst);
                from = to;
            }
            Ok::<(), AuditError>(())
        })
        .await;
        if *shutdown.borrow() {
            return;
        }
        let failed = match done {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            tracing::warn!(error = %e, "audit index lags");
            // Retry after new entries or a pause, not in a tight loop.
            tokio::select! {
                _ = tokio::time::sleep(INDEX_DELAY) => {},
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Indexes the entries `[from, to)` (at most [`INDEX_SPAN`]): one posting
/// list per distinct dataset, organisation, user, purpose and decision, one
/// per subject-hash bucket, and the progress marker, in one batch.
fn index_range(inner: &Inner, from: u64, to: u64) -> Result<(), AuditError> {
    let mut lists: std::collections::HashMap<(u8, Vec<u8>), Vec<u64>> =
        std::collections::HashMap::new();
    let mut subjects: std::collections::BTreeMap<[u8; 32], Vec<u64>> =
        std::collections::BTreeMap::new();
    // Sequences arrive ascending; an entry naming a term twice is listed once.
    let push = |list: &mut Vec<u64>, seq: u64| {
        if list.last() != Some(&seq) {
            list.push(seq);
        }
    };
    for (seq, bytes) in inner.entries.range(&from, &to)? {
        let Ok(e) = Entry::decode(&bytes) else {
            continue;
        };
        let mut add = |field: u8, term: &[u8]| {
            push(lists.entry((field, term.to_vec())).or_default(), seq);
        };
        add(FIELD_DATASET, e.resource.as_bytes());
        add(FIELD_ORG, e.principal.org.as_bytes());
        if let Some(u) = &e.principal.user {
            add(FIELD_USER, u.as_bytes());
        }
        if let Some(p) = &e.purpose {
            add(FIELD_PURPOSE, p.as_bytes());
        }
        if let Some(d) = e.decision {
            add(FIELD_DECISION, decision_term(d));
        }
        for s in &e.subjects {
            push(subjects.entry(s.0).or_default(), seq);
        }
    }
    let mut b = WriteBatch::new();
    for ((field, term), seqs) in lists {
        // A term too long for the key is not indexed; queries for it scan.
        if let Some(prefix) = posting_prefix(field, &term) {
            let mut value = Vec::with_capacity(seqs.len() * 2);
            encode_postings(from, &seqs, &mut value);
            b.put_raw(&inner.index, &posting_key(&prefix, from), value);
        }
    }
    // Subject hashes are nearly all distinct: one list per hash would be
    // one (randomly placed) key per entry. One value per bucket (first hash
    // byte) and range instead holds `hash ‖ count ‖ postings` records,
    // sorted by hash.
    let mut bucket: Option<(u8, Vec<u8>)> = None;
    for (hash, seqs) in subjects {
        if bucket.as_ref().is_some_and(|(b0, _)| *b0 != hash[0])
            && let Some((b0, value)) = bucket.take()
        {
            put_subject_bucket(inner, &mut b, b0, from, value);
        }
        let (_, value) = bucket.get_or_insert_with(|| (hash[0], Vec::new()));
        value.extend_from_slice(&hash);
        put_varint(value, seqs.len() as u64);
        encode_postings(from, &seqs, value);
    }
    if let Some((b0, value)) = bucket {
        put_subject_bucket(inner, &mut b, b0, from, value);
    }
    // The progress marker lives in the index tree itself: one tree, one batch.
    b.put_raw(
        &inner.index,
        &INDEXED_KEY.to_vec(),
        to.to_be_bytes().to_vec(),
    );
    inner.store.commit_volatile(b)?;
    Ok(())
}

fn put_subject_bucket(inner: &Inner, b: &mut WriteBatch, bucket: u8, from: u64, value: Vec<u8>) {
    if let Some(prefix) = posting_prefix(FIELD_SUBJECT, &[bucket]) {
        b.put_raw(&inner.index, &posting_key(&prefix, from), value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::store::StoreOptions;

    async fn open(dir: &std::path::Path) -> (AuditLog, Store, watch::Sender<bool>) {
        open_with_clock(dir, ManualClock::at_unix_ms(1_800_000_000_000)).await
    }

    async fn open_with_clock(
        dir: &std::path::Path,
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
        let log = AuditLog::open(store.clone(), "munich", "swm", "swm-1", clock, rx)
            .await
            .unwrap();
        (log, store, tx)
    }

    fn draft(dataset: &str, user: &str, subject: &str) -> Draft {
        let mut d = Draft::new("tum", "read", dataset, EntryKind::Decision);
        d.user = Some(user.into());
        d.purpose = Some("AcademicResearch".into());
        d.decision = Some(Decision::Allow);
        d.policy_ids = vec!["research-read".into()];
        d.subjects = vec![subject.into()];
        d
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

    #[tokio::test]
    async fn retention_prunes_bodies_keeps_the_tree_and_records_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            &StoreOptions {
                cache_bytes: 1 << 22,
            },
        )
        .unwrap();
        let (_tx, rx) = watch::channel(false);
        let clock = ManualClock::at_unix_ms(1_800_000_000_000);
        let log = AuditLog::open(store.clone(), "munich", "swm", "swm-1", clock.clone(), rx)
            .await
            .unwrap();
        for i in 0..10 {
            log.append(draft("smart-meter-readings", "alice", &format!("s{i}")))
                .await
                .unwrap();
        }
        clock.advance(Duration::from_secs(40 * 86_400));
        for i in 0..5 {
            log.append(draft("air-quality", "bob", &format!("t{i}")))
                .await
                .unwrap();
        }
        log.checkpoint_now().await.unwrap();
        let cutoff = u64::try_from(clock.now_unix_ms()).unwrap() - 30 * 86_400_000;
        let (seq, summary) = log.apply_retention(cutoff).await.unwrap().unwrap();
        assert_eq!(seq, 15);
        assert_eq!(summary.pruned, 10);
        let g = summary
            .groups
            .get(&(
                "smart-meter-readings".to_owned(),
                Some("AcademicResearch".to_owned()),
            ))
            .unwrap();
        assert_eq!((g.entries, g.allowed), (10, 10));
        for s in 0..10 {
            assert_eq!(
                log.entry_bytes(s).unwrap(),
                Some(Vec::new()),
                "body {s} pruned"
            );
        }
        // The tree and the signed checkpoints still verify; pruned is not tampered.
        let report = log.verify_store().unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.entries_pruned, 10);
        // Queries see what is left; the retention entry is itself in the log.
        let page = log
            .query(&QueryFilter {
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(page.entries.len(), 6);
        assert!(matches!(
            page.entries.last().unwrap().kind,
            EntryKind::Retention {
                pruned_count: 10,
                ..
            }
        ));
        // Idempotent: nothing more to prune.
        assert!(log.apply_retention(cutoff).await.unwrap().is_none());
    }

    #[test]
    fn posting_lists_round_trip() {
        let seqs = [4096u64, 4097, 4200, 8191, 1 << 40];
        let mut v = Vec::new();
        encode_postings(4096, &seqs, &mut v);
        assert_eq!(postings_of(4096, &v, None), seqs);
        // Subject buckets: records sorted by hash, each with its postings.
        let (a, b) = ([7u8; 32], [7u8; 32].map(|x| x + 1));
        let mut v = Vec::new();
        for (h, list) in [(a, &[5u64, 9][..]), (b, &[6u64][..])] {
            v.extend_from_slice(&h);
            put_varint(&mut v, list.len() as u64);
            encode_postings(0, list, &mut v);
        }
        assert_eq!(postings_of(0, &v, Some(&a)), vec![5, 9]);
        assert_eq!(postings_of(0, &v, Some(&b)), vec![6]);
        assert!(postings_of(0, &v, Some(&[1u8; 32])).is_empty());
        // Malformed values end the list instead of failing the query.
        assert_eq!(postings_of(0, &[0x80], None), Vec::<u64>::new());
        assert!(postings_of(0, &v[..40], Some(&b)).is_empty());
    }

    /// Index-backed queries (several ranges, subjects sharing hash buckets,
    /// an unindexed tail, paging) return exactly what a scan of the log
    /// finds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn indexed_queries_equal_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(1_800_000_000_000);
        let (log, _s, _stop) = open_with_clock(dir.path(), clock.clone()).await;
        // Appends in rounds of 100, one second apart (entry times step).
        let append_all = |from: u64, to: u64| {
            let (log, clock) = (log.clone(), clock.clone());
            async move {
                for round in (from..to).step_by(100) {
                    let mut tasks = Vec::new();
                    for i in round..to.min(round + 100) {
                        let log = log.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut d = draft(
                                ["air-quality", "smart-meter-readings", "x"][(i % 3) as usize],
                                &format!("user-{}", i % 5),
                                &format!("HH-{}", i % 700),
                            );
                            if i % 11 == 0 {
                                // Twice the same subject, and a second one.
                                d.subjects.push(format!("HH-{}", i % 700));
                                d.subjects.push("HH-shared".into());
                            }
                            if i % 4 == 0 {
                                d.purpose = Some("PublicInterest".into());
                            }
                            if i % 6 == 0 {
                                d.decision = Some(Decision::Deny);
                            }
                            if i % 13 == 0 {
                                d.purpose = None;
                                d.decision = None;
                            }
                            log.append(d).await.unwrap()
                        }));
                    }
                    for t in tasks {
                        t.await.unwrap();
                    }
                    clock.advance(Duration::from_secs(1));
                }
            }
        };
        let wait_indexed = |n: u64| {
            let log = log.clone();
            async move {
                for _ in 0..300 {
                    if log.status().indexed >= n {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                assert!(log.status().indexed >= n, "index did not reach {n}");
            }
        };
        let filters = || {
            let mut v = vec![
                QueryFilter {
                    subject: Some("HH-shared".into()),
                    ..Default::default()
                },
                QueryFilter {
                    dataset: Some("air-quality".into()),
                    ..Default::default()
                },
                QueryFilter {
                    user: Some(("tum".into(), "user-3".into())),
                    ..Default::default()
                },
                QueryFilter {
                    org: Some("tum".into()),
                    ..Default::default()
                },
                QueryFilter {
                    subject: Some("nobody".into()),
                    ..Default::default()
                },
            ];
            for h in [0, 1, 7, 350, 699] {
                v.push(QueryFilter {
                    subject: Some(format!("HH-{h}")),
                    ..Default::default()
                });
            }
            v.push(QueryFilter {
                purpose: Some("PublicInterest".into()),
                ..Default::default()
            });
            v.push(QueryFilter {
                decision: Some(Decision::Deny),
                ..Default::default()
            });
            v.push(QueryFilter {
                purpose: Some("AcademicResearch".into()),
                decision: Some(Decision::Allow),
                ..Default::default()
            });
            // Time ranges: before everything, inside, on round boundaries,
            // after everything; alone and with an indexed filter.
            let t0 = 1_800_000_000_000u64;
            for (from, to) in [
                (None, Some(t0)),
                (Some(t0 + 3_000), Some(t0 + 5_000)),
                (Some(t0 + 2_500), None),
                (None, Some(t0 + 9_000)),
                (Some(t0 + 14_000), None),
                (Some(t0 + 60_000), None),
                // Reversed and extreme bounds: empty, no panic.
                (Some(t0 + 5_000), Some(t0 + 3_000)),
                (Some(u64::MAX), Some(0)),
                (Some(0), Some(u64::MAX)),
            ] {
                v.push(QueryFilter {
                    from_ms: from,
                    to_ms: to,
                    ..Default::default()
                });
                v.push(QueryFilter {
                    dataset: Some("air-quality".into()),
                    from_ms: from,
                    to_ms: to,
                    ..Default::default()
                });
                v.push(QueryFilter {
                    decision: Some(Decision::Deny),
                    from_ms: from,
                    to_ms: to,
                    ..Default::default()
                });
            }
            v
        };
        let check = |log: &AuditLog| {
            let mut time_filters_hit = 0;
            let size = log.size();
            let all: Vec<Entry> = log
                .entry_range(0, size)
                .unwrap()
                .iter()
                .map(|(_, b)| Entry::decode(b).unwrap())
                .collect();
            for mut f in filters() {
                let user_key = f.user.as_ref().map(|(o, u)| log.pseudonym(o, u));
                let subject_key = f.subject.as_ref().map(|s| log.subject_hash(s).to_hex());
                let want: Vec<u64> = all
                    .iter()
                    .filter(|e| f.matches(e, user_key.as_deref(), subject_key.as_deref()))
                    .map(|e| e.sequence)
                    .collect();
                if f.from_ms.is_some() || f.to_ms.is_some() {
                    time_filters_hit += usize::from(!want.is_empty());
                }
                let mut got = Vec::new();
                f.limit = 7;
                loop {
                    let page = log.query(&f).unwrap();
                    got.extend(page.entries.iter().map(|e| e.sequence));
                    match page.next_after {
                        Some(a) => f.after = Some(a),
                        None => break,
                    }
                }
                assert_eq!(got, want, "{f:?}");
            }
            assert!(time_filters_hit >= 9, "time filters matched too little");
        };
        append_all(0, 700).await;
        wait_indexed(700).await;
        append_all(700, 1500).await;
        // Part indexed, part not yet.
        check(&log);
        wait_indexed(1500).await;
        check(&log);
    }

    #[tokio::test]
    async fn queries_filter_and_page() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _s, _stop) = open(dir.path()).await;
        for i in 0..30 {
            let ds = if i % 3 == 0 {
                "air-quality"
            } else {
                "smart-meter-readings"
            };
            log.append(draft(ds, "alice", "s")).await.unwrap();
        }
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = log
                .query(&QueryFilter {
                    dataset: Some("air-quality".into()),
                    after,
                    limit: 4,
                    ..Default::default()
                })
                .unwrap();
            all.extend(page.entries.iter().map(|e| e.sequence));
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        assert_eq!(all, (0..30).step_by(3).collect::<Vec<_>>());
        let none = log
            .query(&QueryFilter {
                decision: Some(Decision::Deny),
                limit: 100,
                ..Default::default()
            })
            .unwrap();
        assert!(none.entries.is_empty());
    }
}
