//! `Access.Fetch` orchestration: decide, audit the intent, stream through the
//! stages, complete the audit — one pipeline for every release.
//!
//! What a caller sees is a function of the released rows only: `max_rows`
//! counts released rows (after the row filter and the consent gate), a page
//! ends right after its last released row — reading on past withheld rows to
//! the next released row or the end of the source, so neither the page's size
//! nor `complete` depends on withheld rows —, the rows are re-cut into batches
//! of a fixed size, and the resume cursor is sealed by the node
//! ([`super::cursor`]).

use super::cursor::{Binding, CursorSealer};
use super::filter::Filter;
use super::pipeline::{self, ConsentGate, IpcEncoder, Pseudonymiser, Rebatcher, Stages};
use super::ratelimit::RateLimiter;
use crate::audit::{AuditLog, Draft, ReleaseGuard, ReleaseStats};
use crate::consent::ConsentStore;
use crate::error::ApiError;
use crate::pki::Principal;
use crate::policy::{Action, PolicyPoint, Purpose, Resource};
use crate::registry::Registry;
use allmende_audit::{EntryKind, ReleaseOutcome};
use allmende_connectors::{Connector, ConnectorError, Cursor, ReadItem, ReadRequest, ReadStream};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;

/// The name the lock helpers log for the running fetches per caller.
const RUNNING: &str = "running fetches per caller";
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Limits of the release path.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Released rows per response at most; the rest via the resume cursor.
    pub max_rows_per_response: u64,
    /// Rows per Arrow batch read from the connector, and released rows per
    /// Arrow batch sent to the caller.
    pub batch_rows: usize,
    /// Messages buffered towards a client (backpressure beyond that).
    pub channel_messages: usize,
    /// Fetches per second per principal, and burst.
    pub per_principal_per_second: f64,
    pub per_principal_burst: f64,
    /// Released subjects recorded in one completion entry at most.
    pub max_audited_subjects: usize,
    /// Fetches running at once node-wide (each holds a reader); beyond
    /// that a fetch is refused with `RESOURCE_EXHAUSTED`.
    pub max_concurrent: usize,
    /// Fetches running at once per principal (so that one caller cannot
    /// take every slot).
    pub max_concurrent_per_principal: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            max_rows_per_response: 100_000,
            batch_rows: 4096,
            channel_messages: 2,
            per_principal_per_second: 5.0,
            per_principal_burst: 20.0,
            max_audited_subjects: 100_000,
            max_concurrent: 16,
            max_concurrent_per_principal: 4,
        }
    }
}

/// Label of the node-secret-derived key that seals resume cursors.
const CURSOR_KEY_LABEL: &str = "resume-cursor:c1";

/// A fetch request in domain terms.
#[derive(Debug, Clone, Default)]
pub struct FetchParams {
    pub dataset: String,
    pub purpose: Option<Purpose>,
    pub columns: Vec<String>,
    pub filter: Option<Filter>,
    pub resume_cursor: Option<String>,
    pub max_rows: u64,
    pub grant_id: Option<String>,
    pub request_id: Option<String>,
}

/// One message towards the client.
#[derive(Debug)]
pub enum FetchMessage {
    Ipc(Vec<u8>),
    Done {
        ipc: Vec<u8>,
        rows: u64,
        next_cursor: Option<String>,
        complete: bool,
        audit_sequence: u64,
    },
    Failed(ApiError),
}

/// The release path of one node.
#[derive(Debug)]
pub struct Fetcher {
    pub policy: Arc<PolicyPoint>,
    pub audit: AuditLog,
    pub consent: Arc<ConsentStore>,
    pub registry: Arc<Registry>,
    pub clock: crate::clock::SharedClock,
    pub limits: FetchLimits,
    limiter: RateLimiter,
    cursors: Arc<CursorSealer>,
    /// One permit per running fetch (`limits.max_concurrent`).
    slots: Arc<tokio::sync::Semaphore>,
    /// Running fetches per principal (`limits.max_concurrent_per_principal`).
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// One running fetch of one principal; given back on drop.
struct PrincipalSlot {
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    who: String,
}

impl Drop for PrincipalSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = crate::locks::lock(&self.running, RUNNING)
            && let Some(n) = m.get_mut(&self.who)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.who);
            }
        }
    }
}

impl Fetcher {
    pub fn new(
        policy: Arc<PolicyPoint>,
        audit: AuditLog,
        consent: Arc<ConsentStore>,
        registry: Arc<Registry>,
        clock: crate::clock::SharedClock,
        limits: FetchLimits,
    ) -> Self {
        Self {
            limiter: RateLimiter::new(limits.per_principal_per_second, limits.per_principal_burst),
            cursors: Arc::new(CursorSealer::new(audit.derive_key(CURSOR_KEY_LABEL))),
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            running: Arc::default(),
            policy,
            audit,
            consent,
            registry,
            clock,
            limits,
        }
    }

    /// Decides and starts a release. On success the rows flow through the
    /// returned channel; the last message is `Done` or `Failed`. Everything
    /// that can be refused is refused here, before any row is read.
    pub async fn start(
        &self,
        caller: &Principal,
        params: FetchParams,
    ) -> Result<mpsc::Receiver<FetchMessage>, ApiError> {
        let who = crate::policy::user_entity_id(&caller.organisation, caller.subject.name());
        if !self.limiter.allow(&who) {
            return Err(ApiError::ResourceExhausted(
                "too many fetches; slow down and retry".into(),
            ));
        }
        // A slot under the caller's and the node-wide cap, held until the
        // release ends.
        let mine = {
            let mut m = crate::locks::lock(&self.running, RUNNING)?;
            let n = m.entry(who.clone()).or_insert(0);
            if *n >= self.limits.max_concurrent_per_principal.max(1) {
                return Err(ApiError::ResourceExhausted(format!(
                    "caller has `{}` fetches running, the most one caller may; retry later",
                    self.limits.max_concurrent_per_principal.max(1)
                )));
            }
            *n += 1;
            PrincipalSlot {
                running: self.running.clone(),
                who: who.clone(),
            }
        };
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::ResourceExhausted(format!(
                "node is serving `{}` fetches, the most it allows; retry later",
                self.limits.max_concurrent.max(1)
            ))
        })?;
        tracing::Span::current().record("dataset", params.dataset.as_str());
        let served = match self.registry.served(&params.dataset) {
            Ok(s) => s,
            Err(e) => {
                // Unknown or unavailable datasets are answered, and noted.
                self.audit_refusal(caller, &params, &params.dataset, "unknown-dataset")
                    .await?;
                return Err(e.into());
            }
        };
        let reg = &served.registration;
        let desc = served.connector.describe().clone();
        // Identifying: what the connector and the dataset's description name.
        let mut identifying: Vec<String> = desc
            .identifying_columns()
            .into_iter()
            .map(str::to_owned)
            .collect();
        for c in reg.dataset.schema.identifying_columns() {
            if !identifying.iter().any(|i| i == c) {
                identifying.push(c.to_owned());
            }
        }
        {
            let ids: Vec<&str> = identifying.iter().map(String::as_str).collect();
            // A registration from before this check: not served.
            super::cursor::identifying_cursor_column(desc.cursor_column.as_deref(), &ids).map_err(
                |m| {
                    ApiError::FailedPrecondition(format!(
                        "dataset `{}` is not served: {m}; its owner must register it again",
                        reg.dataset.id
                    ))
                },
            )?;
        }
        // Validate the request against the schema before deciding.
        for c in &params.columns {
            if desc.schema.field_with_name(c).is_err() {
                return Err(ApiError::InvalidArgument(format!(
                    "dataset `{}` has no column `{}`",
                    reg.dataset.id,
                    c.chars().take(100).collect::<String>()
                )));
            }
        }
        if let Some(f) = &params.filter {
            f.check(&desc.schema, &identifying)
                .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
            // Quasi-identifiers of personal data only where the owner allows.
            let refused = reg.dataset.unfilterable_columns();
            if let Some(col) = f.columns().into_iter().find(|c| refused.contains(c)) {
                self.audit_refusal(
                    caller,
                    &params,
                    &reg.dataset.id,
                    "filter-on-quasi-identifier",
                )
                .await?;
                let allowed = &reg.dataset.schema.filterable_columns;
                return Err(ApiError::PermissionDenied(format!(
                    "filter on column `{col}` refused: it is a quasi-identifier of personal dataset `{}` and could single people out; its owner allows filters on {}",
                    reg.dataset.id,
                    if allowed.is_empty() {
                        "none of its quasi-identifiers".to_owned()
                    } else {
                        format!(
                            "these quasi-identifiers only: {}",
                            allowed
                                .iter()
                                .map(|c| format!("`{c}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                )));
            }
        }
        let caller_uri = caller.uri();
        let purpose_text = params.purpose.map(|p| p.as_str().to_owned());
        let binding = OwnedBinding {
            caller: caller_uri,
            dataset: reg.dataset.id.clone(),
            purpose: purpose_text,
            grant: params.grant_id.clone(),
        };
        let cursor = match &params.resume_cursor {
            None => None,
            Some(token) => match self.cursors.open(token, &binding.borrow()) {
                Ok(c) => Some(c),
                Err(e) => {
                    // Audited without the token: it is the node's ciphertext.
                    self.audit_refusal(caller, &params, &reg.dataset.id, "invalid-resume-cursor")
                        .await?;
                    return Err(ApiError::InvalidArgument(e.to_string()));
                }
            },
        };

        // The decision, with a context the broker builds.
        let now = self.clock.now_unix_secs();
        let mut request = self.policy.request(
            caller,
            Action::Read,
            Resource::Dataset(reg.dataset.id.clone()),
            params.purpose,
        );
        request.grant = params.grant_id.clone();
        let consent_based = reg.dataset.legal_basis == allmende_policies::LegalBasis::Consent;
        if let Some(p) = params.purpose
            && consent_based
        {
            request.consent = self.consent.coverage(&reg.dataset.id, p, now);
        }
        let owner = self.registry_owner();
        request.raw_personal_grants_at_owner = self
            .policy
            .with_entities(|e| e.raw_personal_grants_at_owner(&caller.organisation, &owner, now))
            .unwrap_or(i64::MAX);
        let decision = self
            .policy
            .authorize(&self.audit, caller, request, &reg.dataset.id)
            .await?;

        // Consent gate: rows of subjects without valid consent never leave.
        let consent = match (&desc.subject_column, consent_based) {
            (Some(col), true) => Some(ConsentGate {
                subject_column: col.clone(),
                permitted: match params.purpose {
                    Some(p) => self.consent.permitted_subjects(&reg.dataset.id, p, now),
                    None => Default::default(),
                },
            }),
            _ => None,
        };
        let key_label = match &params.grant_id {
            Some(g) => format!("grant:{g}"),
            None => format!("caller:{who}"),
        };
        let stages = Stages {
            filter: params.filter.clone(),
            consent,
            pseudonymiser: Pseudonymiser::new(self.audit.derive_key(&key_label), identifying),
            projection: (!params.columns.is_empty()).then(|| params.columns.clone()),
        };
        let out_schema = pipeline::output_schema(&desc.schema, &stages)
            .map_err(|e| ApiError::Internal(e.to_string()))?;

        // Durable intent before anything is read or sent (fail closed).
        let mut intent = Draft::by(caller, "read", &reg.dataset.id, EntryKind::ReleaseIntent);
        intent.purpose = params.purpose.map(|p| p.as_str().to_owned());
        intent.decision = Some(allmende_audit::Decision::Allow);
        intent.policy_ids = decision
            .deciding_ids()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        intent.policy_set_hash = allmende_audit::Hash::from_hex(&decision.policy_set_hash).ok();
        intent.grant_id = params.grant_id.clone();
        intent.request_id = params.request_id.clone();
        let guard = self.audit.begin_release(intent).await?;

        let max_rows = match params.max_rows {
            0 => self.limits.max_rows_per_response,
            n => n.min(self.limits.max_rows_per_response),
        };
        // No row limit at the source: the page is cut after `max_rows`
        // released rows, wherever they lie.
        let read = served
            .connector
            .read(
                ReadRequest::new()
                    .since(cursor.clone())
                    .batch_size(self.limits.batch_rows),
            )
            .await;
        let stream = match read {
            Ok(s) => s,
            Err(e) => {
                let _ = guard
                    .complete(ReleaseStats::default(), ReleaseOutcome::Failed)
                    .await;
                return Err(match e {
                    ConnectorError::InvalidCursor { .. } => {
                        // The detail names source files: for the log only.
                        tracing::warn!(dataset = %reg.dataset.id, error = %e, "resume cursor does not fit the source");
                        ApiError::InvalidArgument(
                            "resume cursor no longer fits the dataset's source (it was registered again); fetch again without a cursor".into(),
                        )
                    }
                    _ => ApiError::Unavailable(format!(
                        "source of `{}` unavailable: {e}",
                        reg.dataset.id
                    )),
                });
            }
        };
        let (tx, rx) = mpsc::channel(self.limits.channel_messages.max(1));
        let page = Page {
            connector: served.connector.clone(),
            since: cursor,
            stages,
            subject_column: desc.subject_column.clone(),
            dataset_id: reg.dataset.id.clone(),
            target: max_rows,
            batch_rows: self.limits.batch_rows,
            max_subjects: self.limits.max_audited_subjects,
            sealer: self.cursors.clone(),
            binding,
        };
        tokio::spawn(async move {
            // The caller's and the node-wide fetch slots end with the release.
            let _slots = (slot, mine);
            page.serve(stream, out_schema, guard, tx).await;
        });
        Ok(rx)
    }

    /// Writes a refused request to the audit log (no data follows).
    async fn audit_refusal(
        &self,
        caller: &Principal,
        params: &FetchParams,
        resource: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        let mut d = Draft::by(caller, "read", resource, EntryKind::Decision);
        d.purpose = params.purpose.map(|p| p.as_str().to_owned());
        d.decision = Some(allmende_audit::Decision::Deny);
        d.policy_ids = vec![reason.into()];
        d.grant_id = params.grant_id.clone();
        d.request_id = params.request_id.clone();
        self.audit.append(d).await?;
        Ok(())
    }

    fn registry_owner(&self) -> String {
        self.policy.own_org().to_owned()
    }
}

/// What a resume cursor is bound to, owned by the release task.
#[derive(Debug, Clone)]
struct OwnedBinding {
    caller: String,
    dataset: String,
    purpose: Option<String>,
    grant: Option<String>,
}

impl OwnedBinding {
    fn borrow(&self) -> Binding<'_> {
        Binding {
            caller: &self.caller,
            dataset: &self.dataset,
            purpose: self.purpose.as_deref(),
            grant: self.grant.as_deref(),
        }
    }
}

/// Why a page stopped early.
enum Stop {
    /// The client went away.
    Aborted,
    Failed(ApiError),
}

/// How a page's read ended.
struct PageEnd {
    /// More released rows follow; the next page starts at `next`.
    more: bool,
    next: Option<Cursor>,
}

/// One response: reads from the source, releases at most `target` rows.
struct Page {
    connector: Arc<dyn Connector>,
    since: Option<Cursor>,
    stages: Stages,
    subject_column: Option<String>,
    dataset_id: String,
    target: u64,
    batch_rows: usize,
    max_subjects: usize,
    sealer: Arc<CursorSealer>,
    binding: OwnedBinding,
}

/// What a page has produced so far.
struct Output {
    encoder: IpcEncoder,
    rebatcher: Rebatcher,
    pending: Vec<u8>,
    stats: ReleaseStats,
    subjects: BTreeSet<String>,
}

fn internal(e: impl std::fmt::Display) -> Stop {
    Stop::Failed(ApiError::Internal(e.to_string()))
}

impl Page {
    async fn serve(
        self,
        stream: ReadStream,
        out_schema: SchemaRef,
        guard: ReleaseGuard,
        tx: mpsc::Sender<FetchMessage>,
    ) {
        let encoder = match IpcEncoder::new(&out_schema) {
            Ok(e) => e,
            Err(e) => {
                let _ = tx
                    .send(FetchMessage::Failed(ApiError::Internal(e.to_string())))
                    .await;
                let _ = guard
                    .complete(ReleaseStats::default(), ReleaseOutcome::Failed)
                    .await;
                return;
            }
        };
        let mut out = Output {
            pending: Vec::new(),
            encoder,
            rebatcher: Rebatcher::new(self.batch_rows),
            stats: ReleaseStats::default(),
            subjects: BTreeSet::new(),
        };
        out.pending = out.encoder.take();
        let result = self.pump(stream, &mut out, &tx).await;
        let result = match result {
            Ok(end) => self.finish(end, &mut out, guard.intent_sequence()),
            Err(e) => Err(e),
        };
        let subjects: Vec<String> = std::mem::take(&mut out.subjects).into_iter().collect();
        match result {
            Ok(done) => {
                // The completion entry is written before the last message, so
                // the caller can name it.
                if let Err(e) = guard
                    .complete_with_subjects(out.stats, ReleaseOutcome::Completed, subjects)
                    .await
                {
                    let _ = tx.send(FetchMessage::Failed(e.into())).await;
                    return;
                }
                let _ = tx.send(done).await;
            }
            Err(stop) => {
                let outcome = match stop {
                    Stop::Aborted => ReleaseOutcome::Aborted,
                    Stop::Failed(e) => {
                        let _ = tx.send(FetchMessage::Failed(e)).await;
                        ReleaseOutcome::Failed
                    }
                };
                if let Err(e) = guard
                    .complete_with_subjects(out.stats, outcome, subjects)
                    .await
                {
                    tracing::warn!(error = %e, "release completion not audited; the intent stays open");
                }
            }
        }
    }

    /// Reads until `target` rows are released and the next released row (or
    /// the end of the source) is found.
    async fn pump(
        &self,
        mut stream: ReadStream,
        out: &mut Output,
        tx: &mpsc::Sender<FetchMessage>,
    ) -> Result<PageEnd, Stop> {
        let mut released = 0u64;
        // Source position before the batch at hand.
        let mut before = self.since.clone();
        // Where the next page starts, once `target` rows are released.
        let mut next: Option<Cursor> = None;
        while let Some(item) = stream.next().await {
            let (batch, cursor) = match item {
                Ok(ReadItem::Batch { batch, cursor }) => (batch, cursor),
                Ok(ReadItem::Broken(b)) => {
                    tracing::warn!(dataset = %self.dataset_id, row = b.row, reason = %b.reason, "broken source row skipped");
                    continue;
                }
                Ok(ReadItem::End(_)) => return Ok(PageEnd { more: false, next }),
                Err(e) => {
                    return Err(Stop::Failed(ApiError::Unavailable(format!(
                        "source read failed: {e}"
                    ))));
                }
            };
            let (mask, withheld) =
                pipeline::release_mask(&batch, &self.stages).map_err(internal)?;
            let n = mask.true_count() as u64;
            if released >= self.target {
                // Looking ahead: is there another released row?
                if n > 0 {
                    return Ok(PageEnd { more: true, next });
                }
                // Only withheld rows: the next page may start after them.
                out.stats.rows_filtered += withheld;
                next = Some(cursor.clone());
                before = Some(cursor);
                continue;
            }
            let remaining = self.target - released;
            let (head, mask, withheld, cut_inside) = if n <= remaining {
                (batch, mask, withheld, false)
            } else {
                let j = pipeline::nth_released(&mask, remaining)
                    .ok_or_else(|| internal("released row not found"))?;
                let head = batch.slice(0, j + 1);
                let (m, w) = pipeline::release_mask(&head, &self.stages).map_err(internal)?;
                (head, m, w, true)
            };
            let (rows, st) = pipeline::run_masked(
                head.clone(),
                &mask,
                withheld,
                &self.stages,
                self.subject_column.as_deref(),
            )
            .map_err(internal)?;
            released += st.rows_out;
            out.stats.rows_filtered += st.rows_without_consent;
            out.stats.rows_released += st.rows_out;
            if out.subjects.len() < self.max_subjects {
                out.subjects.extend(st.subjects);
            }
            for b in out.rebatcher.push(rows).map_err(internal)? {
                out.encoder.write(&b).map_err(internal)?;
                out.pending.extend(out.encoder.take());
                let bytes = std::mem::take(&mut out.pending);
                out.stats.bytes += bytes.len() as u64;
                // The client's pace sets ours: this waits while the channel is full.
                if tx.send(FetchMessage::Ipc(bytes)).await.is_err() {
                    return Err(Stop::Aborted);
                }
            }
            if cut_inside {
                // The page ends inside this batch, and another released row
                // follows in it.
                drop(stream);
                let at = self.position_after(before, &head).await?;
                return Ok(PageEnd {
                    more: true,
                    next: Some(at),
                });
            }
            if released >= self.target {
                next = Some(cursor.clone());
            }
            before = Some(cursor);
        }
        // The connector ends every good read with `End`.
        Err(Stop::Failed(ApiError::Unavailable(
            "source read ended early".into(),
        )))
    }

    /// The source position right after the last row of `head`, which starts
    /// at `since`: read those rows again, check they are the same, and take
    /// the connector's cursor after them.
    async fn position_after(
        &self,
        since: Option<Cursor>,
        head: &RecordBatch,
    ) -> Result<Cursor, Stop> {
        let rows = head.num_rows();
        let mut again = self
            .connector
            .read(
                ReadRequest::new()
                    .since(since)
                    .batch_size(rows.clamp(1, allmende_connectors::MAX_BATCH_SIZE))
                    .max_rows(rows as u64),
            )
            .await
            .map_err(|e| {
                Stop::Failed(ApiError::Unavailable(format!(
                    "source of `{}` unavailable: {e}",
                    self.dataset_id
                )))
            })?;
        let mut batches = Vec::new();
        let mut summary = None;
        while let Some(item) = again.next().await {
            match item {
                Ok(ReadItem::Batch { batch, .. }) => batches.push(batch),
                Ok(ReadItem::Broken(_)) => {}
                Ok(ReadItem::End(s)) => summary = Some(s),
                Err(e) => {
                    return Err(Stop::Failed(ApiError::Unavailable(format!(
                        "source read failed: {e}"
                    ))));
                }
            }
        }
        let same =
            arrow::compute::concat_batches(&head.schema(), &batches).is_ok_and(|b| b == *head);
        match summary.and_then(|s| s.cursor) {
            Some(c) if same => Ok(c),
            _ => Err(Stop::Failed(ApiError::Unavailable(format!(
                "the source of `{}` changed during the read; fetch this page again",
                self.dataset_id
            )))),
        }
    }

    /// The last message: the rows still held, the end of the IPC stream and
    /// the summary.
    fn finish(
        &self,
        end: PageEnd,
        out: &mut Output,
        audit_sequence: u64,
    ) -> Result<FetchMessage, Stop> {
        if let Some(b) = out.rebatcher.finish().map_err(internal)? {
            out.encoder.write(&b).map_err(internal)?;
            out.pending.extend(out.encoder.take());
        }
        let tail = out.encoder.finish().map_err(internal)?;
        out.pending.extend(tail);
        out.stats.bytes += out.pending.len() as u64;
        let next_cursor = match (end.more, end.next) {
            (false, _) => None,
            (true, Some(c)) => Some(
                self.sealer
                    .seal(&c, &self.binding.borrow())
                    .map_err(internal)?,
            ),
            (true, None) => return Err(internal("no resume position after a partial page")),
        };
        Ok(FetchMessage::Done {
            ipc: std::mem::take(&mut out.pending),
            rows: out.stats.rows_released,
            complete: !end.more,
            next_cursor,
            audit_sequence,
        })
    }
}
