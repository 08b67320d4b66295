//! `Access.Fetch` orchestration: decide, audit the intent, stream through the
//! stages, complete the audit — one pipeline for every release.

use super::filter::Filter;
use super::pipeline::{self, ConsentGate, IpcEncoder, Pseudonymiser, Stages};
use super::ratelimit::RateLimiter;
use crate::audit::{AuditLog, Draft, ReleaseStats};
use crate::consent::ConsentStore;
use crate::error::ApiError;
use crate::pki::{Principal, Subject};
use crate::policy::{Action, PolicyPoint, Purpose, Resource};
use crate::registry::Registry;
use allmende_audit::{EntryKind, ReleaseOutcome};
use allmende_connectors::{Cursor, ReadItem, ReadRequest};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Limits of the release path.
#[derive(Debug, Clone, Copy)]
pub struct FetchLimits {
    /// Rows per response at most; the rest via the resume cursor.
    pub max_rows_per_response: u64,
    /// Rows per Arrow batch read from the connector.
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
        if let Ok(mut m) = self.running.lock()
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
            let mut m = self
                .running
                .lock()
                .map_err(|_| ApiError::Internal("fetch slots poisoned".into()))?;
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
                let mut d = Draft::new(
                    &caller.organisation,
                    "read",
                    &params.dataset,
                    EntryKind::Decision,
                );
                if let Subject::User(u) = &caller.subject {
                    d.user = Some(u.clone());
                }
                d.decision = Some(allmende_audit::Decision::Deny);
                d.policy_ids = vec!["unknown-dataset".into()];
                self.audit.append(d).await?;
                return Err(e.into());
            }
        };
        let reg = &served.registration;
        let desc = served.connector.describe().clone();
        let identifying: Vec<String> = desc
            .identifying_columns()
            .into_iter()
            .map(str::to_owned)
            .collect();
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
        }
        let cursor = match &params.resume_cursor {
            None => None,
            Some(c) => Some(
                c.parse::<Cursor>()
                    .map_err(|e| ApiError::InvalidArgument(format!("resume cursor: {e}")))?,
            ),
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
        let mut intent = Draft::new(
            &caller.organisation,
            "read",
            &reg.dataset.id,
            EntryKind::ReleaseIntent,
        );
        if let Subject::User(u) = &caller.subject {
            intent.user = Some(u.clone());
        } else {
            intent.peer_node = Some(caller.subject.name().to_owned());
        }
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
        let read = served
            .connector
            .read(
                ReadRequest::new()
                    .since(cursor)
                    .batch_size(self.limits.batch_rows)
                    .max_rows(max_rows),
            )
            .await;
        let mut stream = match read {
            Ok(s) => s,
            Err(e) => {
                let _ = guard
                    .complete(ReleaseStats::default(), ReleaseOutcome::Failed)
                    .await;
                return Err(match e {
                    allmende_connectors::ConnectorError::InvalidCursor { .. } => {
                        ApiError::InvalidArgument(e.to_string())
                    }
                    _ => ApiError::Unavailable(format!(
                        "source of `{}` unavailable: {e}",
                        reg.dataset.id
                    )),
                });
            }
        };
        let (tx, rx) = mpsc::channel(self.limits.channel_messages.max(1));
        let subject_column = desc.subject_column.clone();
        let dataset_id = reg.dataset.id.clone();
        let max_subjects = self.limits.max_audited_subjects;
        tokio::spawn(async move {
            let _slots = (slot, mine);
            let mut encoder = match IpcEncoder::new(&out_schema) {
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
            let mut stats = ReleaseStats::default();
            let mut subjects: BTreeSet<String> = BTreeSet::new();
            let mut pending = encoder.take();
            let mut outcome = ReleaseOutcome::Completed;
            let mut summary = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(ReadItem::Batch { batch, .. }) => {
                        let (out, st) =
                            match pipeline::run(batch, &stages, subject_column.as_deref()) {
                                Ok(x) => x,
                                Err(e) => {
                                    let _ = tx
                                        .send(FetchMessage::Failed(ApiError::Internal(
                                            e.to_string(),
                                        )))
                                        .await;
                                    outcome = ReleaseOutcome::Failed;
                                    break;
                                }
                            };
                        stats.rows_filtered += st.rows_without_consent;
                        if out.num_rows() == 0 {
                            continue;
                        }
                        if let Err(e) = encoder.write(&out) {
                            let _ = tx
                                .send(FetchMessage::Failed(ApiError::Internal(e.to_string())))
                                .await;
                            outcome = ReleaseOutcome::Failed;
                            break;
                        }
                        pending.extend(encoder.take());
                        let n = pending.len() as u64;
                        // The client's pace sets ours: this waits while the channel is full.
                        if tx
                            .send(FetchMessage::Ipc(std::mem::take(&mut pending)))
                            .await
                            .is_err()
                        {
                            outcome = ReleaseOutcome::Aborted;
                            break;
                        }
                        stats.rows_released += st.rows_out;
                        stats.bytes += n;
                        if subjects.len() < max_subjects {
                            subjects.extend(st.subjects);
                        }
                    }
                    Ok(ReadItem::Broken(b)) => {
                        tracing::warn!(dataset = %dataset_id, row = b.row, reason = %b.reason, "broken source row skipped");
                    }
                    Ok(ReadItem::End(s)) => {
                        summary = Some(s);
                        break;
                    }
                    Err(e) => {
                        let _ = tx
                            .send(FetchMessage::Failed(ApiError::Unavailable(format!(
                                "source read failed: {e}"
                            ))))
                            .await;
                        outcome = ReleaseOutcome::Failed;
                        break;
                    }
                }
            }
            if outcome == ReleaseOutcome::Completed {
                match (summary, encoder.finish()) {
                    (Some(s), Ok(tail)) => {
                        pending.extend(tail);
                        stats.bytes += pending.len() as u64;
                        let next_cursor = (!s.complete)
                            .then(|| s.cursor.map(|c| c.to_string()))
                            .flatten();
                        // The completion entry is written before the last
                        // message, so the caller can name it.
                        let rows = stats.rows_released;
                        let seq = guard.intent_sequence();
                        let done = FetchMessage::Done {
                            ipc: std::mem::take(&mut pending),
                            rows,
                            next_cursor,
                            complete: s.complete,
                            audit_sequence: seq,
                        };
                        if let Err(e) = guard
                            .complete_with_subjects(
                                stats,
                                ReleaseOutcome::Completed,
                                subjects.into_iter().collect(),
                            )
                            .await
                        {
                            let _ = tx.send(FetchMessage::Failed(e.into())).await;
                            return;
                        }
                        let _ = tx.send(done).await;
                        return;
                    }
                    (None, _) => {
                        // The stream ended without a summary: the client went away.
                        outcome = ReleaseOutcome::Aborted;
                    }
                    (_, Err(e)) => {
                        let _ = tx
                            .send(FetchMessage::Failed(ApiError::Internal(e.to_string())))
                            .await;
                        outcome = ReleaseOutcome::Failed;
                    }
                }
            }
            if let Err(e) = guard
                .complete_with_subjects(stats, outcome, subjects.into_iter().collect())
                .await
            {
                tracing::warn!(error = %e, "release completion not audited; the intent stays open");
            }
        });
        Ok(rx)
    }

    fn registry_owner(&self) -> String {
        self.policy.own_org().to_owned()
    }
}
