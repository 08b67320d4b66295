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

use super::caller::{Caller, PublicCaller};
use super::cursor::{Binding, CursorSealer};
use super::error::FetchError;
use super::filter::Filter;
use super::pipeline::{
    self, ConsentGate, Encode, IpcEncoder, Pseudonymiser, Rebatcher, StageStats, Stages,
};
use super::ratelimit::RateLimiter;
use super::ticket::TicketSealer;
use crate::audit::{AuditLog, ReleaseGuard, ReleaseStats};
use crate::consent::ConsentStore;
use crate::pki::Principal;
use crate::policy::{Action, Decision, PolicyPoint, Purpose, Resource};
use crate::registry::{Registry, Served};
use allmende_audit::{EntryKind, ReleaseOutcome};
use allmende_connectors::{
    Connector, ConnectorDescription, ConnectorError, Cursor, ReadItem, ReadRequest, ReadStream,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The name the lock helpers log for the running fetches per caller.
const RUNNING: &str = "running fetches per caller";

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
    /// Open-data requests per minute of one public caller (a public-tier
    /// certificate, an address on the open-data listener), and burst.
    pub public_per_minute: u32,
    pub public_burst: u32,
}

impl FetchLimits {
    /// Seconds until a public caller over its rate has a request again.
    pub fn public_retry_after_secs(&self) -> u64 {
        60u64.div_ceil(u64::from(self.public_per_minute.max(1)))
    }
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
            public_per_minute: 120,
            public_burst: 20,
        }
    }
}

/// Label of the node-secret-derived key that seals resume cursors.
const CURSOR_KEY_LABEL: &str = "resume-cursor:c1";

/// A fetch request in domain terms. Serialised (sealed in an Arrow Flight
/// ticket, `super::ticket`): what a request names, not where a page
/// resumes, how long it is or the caller's request id.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchParams {
    pub dataset: String,
    pub purpose: Option<Purpose>,
    pub columns: Vec<String>,
    pub filter: Option<Filter>,
    #[serde(skip)]
    pub resume_cursor: Option<String>,
    #[serde(skip)]
    pub max_rows: u64,
    #[serde(rename = "grant")]
    pub grant_id: Option<String>,
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// One message towards the client, in the face's encoding `O` (Arrow IPC
/// bytes for `Access.Fetch`).
#[derive(Debug)]
pub enum FetchMessage<O = Vec<u8>> {
    Ipc(O),
    Done {
        ipc: O,
        rows: u64,
        next_cursor: Option<String>,
        complete: bool,
        audit_sequence: u64,
    },
    Failed(FetchError),
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
    /// Open-data requests per public caller (pseudonym).
    public_limiter: RateLimiter,
    cursors: Arc<CursorSealer>,
    tickets: TicketSealer,
    /// One permit per running fetch (`limits.max_concurrent`).
    slots: Arc<tokio::sync::Semaphore>,
    /// Running fetches per principal (`limits.max_concurrent_per_principal`).
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// Where a release under a grant is reported (its access notice).
    grants: Option<Arc<crate::grants::Grants>>,
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
            public_limiter: RateLimiter::new(
                f64::from(limits.public_per_minute) / 60.0,
                f64::from(limits.public_burst),
            ),
            cursors: Arc::new(CursorSealer::new(audit.derive_key(CURSOR_KEY_LABEL))),
            tickets: TicketSealer::new(audit.derive_key(super::ticket::KEY_LABEL)),
            slots: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent.max(1))),
            running: Arc::default(),
            policy,
            audit,
            consent,
            registry,
            clock,
            limits,
            grants: None,
        }
    }

    /// Reports each release under a grant to `grants` once its completion
    /// entry is durable (the grantee's access notice).
    #[must_use]
    pub fn with_grants(mut self, grants: Arc<crate::grants::Grants>) -> Self {
        self.grants = Some(grants);
        self
    }

    /// The schema a release of `params` would have for `caller` (after
    /// projection and pseudonymisation), decided and audited like a read
    /// (Arrow Flight's `GetFlightInfo` and `GetSchema`): the same checks and
    /// the same decision as [`Fetcher::start`], no intent, no row read.
    pub async fn describe(
        &self,
        caller: &Principal,
        params: &FetchParams,
    ) -> Result<SchemaRef, FetchError> {
        let caller = &Caller::of(caller, &self.audit);
        let who = caller.key();
        self.rate(caller)?;
        tracing::Span::current().record("dataset", params.dataset.as_str());
        let ds = self.resolve(caller, params).await?;
        let now = self.clock.now_unix_secs();
        self.decide(caller, params, &ds, now).await?;
        let stages = self.stages(params, &ds, &who, now, false);
        Ok(pipeline::output_schema(&ds.desc.schema, &stages)?)
    }

    /// The served datasets `caller` may read for `purpose` (under `grant`,
    /// naming `columns`), each with the schema a release would have:
    /// decided by the same rules as a read, without auditing (no row is
    /// read, nothing is released; like `Policy.Explain`). A dataset without
    /// one of `columns` is left out. Arrow Flight's `ListFlights`.
    pub fn readable(
        &self,
        caller: &Principal,
        purpose: Option<Purpose>,
        grant: Option<&str>,
        columns: &[String],
    ) -> Result<Vec<(FetchParams, SchemaRef)>, FetchError> {
        let caller = &Caller::of(caller, &self.audit);
        let who = caller.key();
        let now = self.clock.now_unix_secs();
        let mut out = Vec::new();
        for (registration, _) in self.registry.list()? {
            let Ok(served) = self.registry.served(&registration.dataset.id) else {
                continue;
            };
            let Ok((desc, identifying)) = prepare(&served) else {
                continue;
            };
            if columns
                .iter()
                .any(|c| desc.schema.field_with_name(c).is_err())
            {
                continue;
            }
            let params = FetchParams {
                dataset: registration.dataset.id.clone(),
                purpose,
                grant_id: grant.map(str::to_owned),
                columns: columns.to_vec(),
                ..FetchParams::default()
            };
            let ds = Resolved {
                binding: OwnedBinding {
                    caller: caller.binding(),
                    dataset: params.dataset.clone(),
                    purpose: None,
                    grant: None,
                },
                served,
                desc,
                identifying,
                cursor: None,
            };
            let request = self.decision_request(caller, &params, &ds, now);
            if !self.policy.decide_for(caller, &request).allowed {
                continue;
            }
            let stages = self.stages(&params, &ds, &who, now, false);
            let schema = pipeline::output_schema(&ds.desc.schema, &stages)?;
            out.push((params, schema));
        }
        out.sort_by(|a, b| a.0.dataset.cmp(&b.0.dataset));
        Ok(out)
    }

    /// The sealed Arrow Flight ticket naming `params` (dataset, purpose,
    /// columns, filter, grant).
    pub fn seal_ticket(&self, params: &FetchParams) -> Result<Vec<u8>, FetchError> {
        self.tickets.seal(params).map_err(FetchError::SealTicket)
    }

    /// The request a presented ticket names. A refused ticket is audited
    /// (as a refused read by `caller`, without the ticket) like a refused
    /// resume cursor. Whoever presents a ticket is decided on their own
    /// certificate when the release starts: a ticket grants nothing.
    pub async fn open_ticket(
        &self,
        caller: &Principal,
        ticket: &[u8],
    ) -> Result<FetchParams, FetchError> {
        match self.tickets.open(ticket) {
            Ok(t) => Ok(t),
            Err(e) => {
                self.audit_refusal(
                    &Caller::of(caller, &self.audit),
                    &FetchParams::default(),
                    "flight-ticket",
                    "invalid-flight-ticket",
                )
                .await?;
                Err(FetchError::Ticket(e))
            }
        }
    }

    /// Decides and starts a release. On success the rows flow through the
    /// returned channel; the last message is `Done` or `Failed`. Everything
    /// that can be refused is refused here, before any row is read: the
    /// steps run in this order, and each fails closed — decide (audited),
    /// then the durable intent, then the source is opened.
    pub async fn start(
        &self,
        caller: &Principal,
        params: FetchParams,
    ) -> Result<mpsc::Receiver<FetchMessage>, FetchError> {
        self.start_with::<IpcEncoder>(caller, params).await
    }

    /// [`Fetcher::start`] for a face that encodes with `E`: the same steps,
    /// the same decision, audit and stages; only the encoding of the
    /// released batches differs. A face that is not paged (`E::PAGED`
    /// false) gets the whole release in one stream and no resume cursor.
    pub async fn start_with<E: Encode>(
        &self,
        caller: &Principal,
        params: FetchParams,
    ) -> Result<mpsc::Receiver<FetchMessage<E::Out>>, FetchError> {
        self.start_for::<E>(&Caller::of(caller, &self.audit), params, None)
            .await
    }

    /// [`Fetcher::start`] for a request relayed through the hub on behalf
    /// of `caller` (the user of the verified on-behalf-of assertion): the
    /// same steps, decision and audit; the intent entry also names the
    /// forwarding node and the hub (`via`; `docs/relay.md`).
    pub async fn start_relayed(
        &self,
        caller: &Principal,
        params: FetchParams,
        via: String,
    ) -> Result<mpsc::Receiver<FetchMessage>, FetchError> {
        self.start_for::<IpcEncoder>(&Caller::of(caller, &self.audit), params, Some(via))
            .await
    }

    /// [`Fetcher::start_with`] for an anonymous public caller (the open-data
    /// HTTP listener): decided as `Allmende::Public`, audited under its
    /// pseudonym, limited by the open-data request rate.
    pub async fn start_public<E: Encode>(
        &self,
        caller: &PublicCaller,
        params: FetchParams,
    ) -> Result<mpsc::Receiver<FetchMessage<E::Out>>, FetchError> {
        self.start_for::<E>(&Caller::Public(caller.clone()), params, None)
            .await
    }

    /// Takes one open-data request of a public caller from its rate budget
    /// (the open-data HTTP listener, for requests that release no rows).
    pub fn admit_public(&self, caller: &PublicCaller) -> Result<(), FetchError> {
        self.rate(&Caller::Public(caller.clone()))
    }

    /// The caller's request rate: a member's fetch rate, or a public
    /// caller's open-data rate (per pseudonym).
    fn rate(&self, caller: &Caller) -> Result<(), FetchError> {
        match caller {
            Caller::Member(_) if !self.limiter.allow(&caller.key()) => Err(FetchError::RateLimited),
            Caller::Public(_) if !self.public_limiter.allow(&caller.key()) => {
                Err(FetchError::PublicRateLimited {
                    retry_after_secs: self.limits.public_retry_after_secs(),
                })
            }
            _ => Ok(()),
        }
    }

    async fn start_for<E: Encode>(
        &self,
        caller: &Caller,
        params: FetchParams,
        via: Option<String>,
    ) -> Result<mpsc::Receiver<FetchMessage<E::Out>>, FetchError> {
        let (who, slots) = self.admit(caller)?;
        tracing::Span::current().record("dataset", params.dataset.as_str());
        let ds = self.resolve(caller, &params).await?;
        let now = self.clock.now_unix_secs();
        let decision = self.decide(caller, &params, &ds, now).await?;
        let stages = self.stages(&params, &ds, &who, now, true);
        let out_schema = pipeline::output_schema(&ds.desc.schema, &stages)?;
        let guard = self
            .write_intent(caller, &params, &ds, &decision, via)
            .await?;
        let (stream, guard) = self.open_source(&ds, guard).await?;
        let max_rows = match (E::PAGED, params.max_rows) {
            (false, _) => u64::MAX,
            (true, 0) => self.limits.max_rows_per_response,
            (true, n) => n.min(self.limits.max_rows_per_response),
        };
        let (tx, rx) = mpsc::channel(self.limits.channel_messages.max(1));
        let page = Page {
            connector: ds.served.connector.clone(),
            since: ds.cursor,
            stages,
            subject_column: ds.desc.subject_column.clone(),
            dataset_id: ds.served.registration.dataset.id.clone(),
            target: max_rows,
            batch_rows: self.limits.batch_rows,
            max_subjects: self.limits.max_audited_subjects,
            sealer: self.cursors.clone(),
            binding: ds.binding,
            grants: self.grants.clone(),
        };
        tokio::spawn(async move {
            // The caller's and the node-wide fetch slots end with the release.
            let _slots = slots;
            page.serve::<E>(stream, out_schema, guard, tx).await;
        });
        Ok(rx)
    }

    /// Admits the caller under its fetch rate and takes a slot under the
    /// caller's and the node-wide cap, held until the release ends.
    fn admit(&self, caller: &Caller) -> Result<(String, Slots), FetchError> {
        let who = caller.key();
        self.rate(caller)?;
        let mine = {
            let mut m = crate::locks::lock(&self.running, RUNNING)?;
            let n = m.entry(who.clone()).or_insert(0);
            if *n >= self.limits.max_concurrent_per_principal.max(1) {
                return Err(FetchError::CallerBusy(
                    self.limits.max_concurrent_per_principal.max(1),
                ));
            }
            *n += 1;
            PrincipalSlot {
                running: self.running.clone(),
                who: who.clone(),
            }
        };
        let slot = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| FetchError::NodeBusy(self.limits.max_concurrent.max(1)))?;
        Ok((who, (slot, mine)))
    }

    /// The served dataset, the request checked against its schema and the
    /// resume cursor opened; refusals a caller could probe with are audited.
    async fn resolve(&self, caller: &Caller, params: &FetchParams) -> Result<Resolved, FetchError> {
        let served = match self.registry.served(&params.dataset) {
            Ok(s) => s,
            Err(e) => {
                // Unknown or unavailable datasets are answered, and noted.
                self.audit_refusal(caller, params, &params.dataset, "unknown-dataset")
                    .await?;
                return Err(e.into());
            }
        };
        let (desc, identifying) = prepare(&served)?;
        let dataset = &served.registration.dataset;
        self.check_request(caller, params, &served, &desc, &identifying)
            .await?;
        let binding = OwnedBinding {
            caller: caller.binding(),
            dataset: dataset.id.clone(),
            purpose: params.purpose.map(|p| p.as_str().to_owned()),
            grant: params.grant_id.clone(),
        };
        let cursor = self.open_cursor(caller, params, &binding).await?;
        // The source may apply what the filter requires (the pipeline still evaluates it all).
        let mut served = served;
        served.connector = super::pushdown::with_filter(served.connector, params.filter.as_ref());
        Ok(Resolved {
            served,
            desc,
            identifying,
            binding,
            cursor,
        })
    }

    /// Validates the request against the schema before deciding: the
    /// columns exist, the filter is well-formed and names only
    /// quasi-identifiers the owner allows filters on.
    async fn check_request(
        &self,
        caller: &Caller,
        params: &FetchParams,
        served: &Served,
        desc: &ConnectorDescription,
        identifying: &[String],
    ) -> Result<(), FetchError> {
        let dataset = &served.registration.dataset;
        for c in &params.columns {
            if desc.schema.field_with_name(c).is_err() {
                return Err(FetchError::UnknownColumn {
                    dataset: dataset.id.clone(),
                    column: crate::text::shown(c, 100),
                });
            }
        }
        let Some(f) = &params.filter else {
            return Ok(());
        };
        f.check(&desc.schema, identifying)?;
        // Quasi-identifiers of personal data only where the owner allows.
        let refused = dataset.unfilterable_columns();
        if let Some(col) = f.columns().into_iter().find(|c| refused.contains(c)) {
            self.audit_refusal(caller, params, &dataset.id, "filter-on-quasi-identifier")
                .await?;
            return Err(FetchError::QuasiIdentifier {
                column: col.to_owned(),
                dataset: dataset.id.clone(),
                allowed: dataset.schema.filterable_columns.clone(),
            });
        }
        Ok(())
    }

    /// Opens the presented resume cursor for this request's binding; a
    /// refused one is audited without the token (the node's ciphertext).
    async fn open_cursor(
        &self,
        caller: &Caller,
        params: &FetchParams,
        binding: &OwnedBinding,
    ) -> Result<Option<Cursor>, FetchError> {
        let Some(token) = &params.resume_cursor else {
            return Ok(None);
        };
        match self.cursors.open(token, &binding.borrow()) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                self.audit_refusal(caller, params, &binding.dataset, "invalid-resume-cursor")
                    .await?;
                Err(FetchError::Cursor(e))
            }
        }
    }

    /// The decision, with a context the broker builds (consent coverage,
    /// the caller's raw personal grants at this owner), written to the
    /// audit log before it is acted upon.
    async fn decide(
        &self,
        caller: &Caller,
        params: &FetchParams,
        ds: &Resolved,
        now: i64,
    ) -> Result<Decision, FetchError> {
        let request = self.decision_request(caller, params, ds, now);
        let dataset = &ds.served.registration.dataset;
        Ok(self
            .policy
            .decide_audited_for(&self.audit, caller, request, &dataset.id)
            .await?)
    }

    /// The request to decide for a read of `ds`, with the context the
    /// broker builds.
    fn decision_request(
        &self,
        caller: &Caller,
        params: &FetchParams,
        ds: &Resolved,
        now: i64,
    ) -> allmende_policies::DecisionRequest {
        let dataset = &ds.served.registration.dataset;
        let mut request = self.policy.request_for(
            caller,
            Action::Read,
            Resource::Dataset(dataset.id.clone()),
            params.purpose,
        );
        request.grant = params.grant_id.clone();
        if let Some(p) = params.purpose
            && ds.consent_based()
        {
            request.consent = self.consent.coverage(&dataset.id, p, now);
        }
        let owner = self.registry_owner();
        request.raw_personal_grants_at_owner = self
            .policy
            .with_entities(|e| e.raw_personal_grants_at_owner(caller.organisation(), &owner, now))
            .unwrap_or(i64::MAX);
        request
    }

    /// The release stages: the filter, the consent gate (rows of subjects
    /// without valid consent never leave), pseudonymisation keyed per grant
    /// or caller, the projection.
    /// Without `with_consent` the consent gate is left out (for a schema:
    /// the gate drops rows, it does not change the columns).
    fn stages(
        &self,
        params: &FetchParams,
        ds: &Resolved,
        who: &str,
        now: i64,
        with_consent: bool,
    ) -> Stages {
        let dataset = &ds.served.registration.dataset;
        let consent = match (&ds.desc.subject_column, ds.consent_based()) {
            (Some(col), true) if with_consent => Some(ConsentGate {
                subject_column: col.clone(),
                permitted: match params.purpose {
                    Some(p) => self.consent.permitted_subjects(&dataset.id, p, now),
                    None => Default::default(),
                },
            }),
            _ => None,
        };
        let key_label =
            crate::access::pipeline::pseudonym_key_label(params.grant_id.as_deref(), who);
        Stages {
            filter: params.filter.clone(),
            consent,
            pseudonymiser: Pseudonymiser::new(
                self.audit.derive_key(&key_label),
                ds.identifying.clone(),
            ),
            projection: (!params.columns.is_empty()).then(|| params.columns.clone()),
        }
    }

    /// The durable intent, written before anything is read or sent (fail
    /// closed): the guard it yields is the only way to rows.
    async fn write_intent(
        &self,
        caller: &Caller,
        params: &FetchParams,
        ds: &Resolved,
        decision: &Decision,
        via: Option<String>,
    ) -> Result<ReleaseGuard, FetchError> {
        let dataset = &ds.served.registration.dataset;
        let mut intent = caller.draft("read", &dataset.id, EntryKind::ReleaseIntent);
        if via.is_some() {
            intent.peer_node = via;
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
        Ok(self.audit.begin_release(intent).await?)
    }

    /// Opens the source at the cursor, with no row limit (the page is cut
    /// after `max_rows` released rows, wherever they lie). If it cannot be
    /// opened, the release is completed as failed.
    async fn open_source(
        &self,
        ds: &Resolved,
        guard: ReleaseGuard,
    ) -> Result<(ReadStream, ReleaseGuard), FetchError> {
        let read = ds
            .served
            .connector
            .read(
                ReadRequest::new()
                    .since(ds.cursor.clone())
                    .batch_size(self.limits.batch_rows),
            )
            .await;
        let e = match read {
            Ok(stream) => return Ok((stream, guard)),
            Err(e) => e,
        };
        let _ = guard
            .complete(ReleaseStats::default(), ReleaseOutcome::Failed)
            .await;
        let dataset = &ds.served.registration.dataset.id;
        Err(match e {
            ConnectorError::InvalidCursor { .. } => {
                // The detail names source files: for the log only.
                tracing::warn!(dataset = %dataset, error = %e, "resume cursor does not fit the source");
                FetchError::StaleCursor(e)
            }
            _ => FetchError::SourceUnavailable {
                dataset: dataset.clone(),
                source: e,
            },
        })
    }

    /// Writes a refused request to the audit log (no data follows).
    async fn audit_refusal(
        &self,
        caller: &Caller,
        params: &FetchParams,
        resource: &str,
        reason: &str,
    ) -> Result<(), FetchError> {
        let mut d = caller.draft("read", resource, EntryKind::Decision);
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

/// The description of a served dataset and its identifying columns (the
/// connector's and the dataset description's); a registration from before
/// the identifying-cursor check is not served.
fn prepare(served: &Served) -> Result<(ConnectorDescription, Vec<String>), FetchError> {
    let desc = served.connector.describe().clone();
    let dataset = &served.registration.dataset;
    let mut identifying: Vec<String> = desc
        .identifying_columns()
        .into_iter()
        .map(str::to_owned)
        .collect();
    for c in dataset.schema.identifying_columns() {
        if !identifying.iter().any(|i| i == c) {
            identifying.push(c.to_owned());
        }
    }
    let ids: Vec<&str> = identifying.iter().map(String::as_str).collect();
    super::cursor::identifying_cursor_column(desc.cursor_column.as_deref(), &ids).map_err(
        |reason| FetchError::NotServed {
            dataset: dataset.id.clone(),
            reason,
        },
    )?;
    Ok((desc, identifying))
}

/// The caller's and the node-wide fetch slots, held until a release ends.
type Slots = (tokio::sync::OwnedSemaphorePermit, PrincipalSlot);

/// The dataset a request names, as served, with the request checked
/// against it.
struct Resolved {
    served: Served,
    desc: ConnectorDescription,
    /// The identifying columns of the connector and of the description.
    identifying: Vec<String>,
    binding: OwnedBinding,
    cursor: Option<Cursor>,
}

impl Resolved {
    /// Released under consent: the consent gate and coverage apply.
    fn consent_based(&self) -> bool {
        self.served.registration.dataset.legal_basis == allmende_policies::LegalBasis::Consent
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
    Failed(FetchError),
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
    grants: Option<Arc<crate::grants::Grants>>,
}

/// What a page has produced so far.
struct Output<E: Encode> {
    encoder: E,
    rebatcher: Rebatcher,
    pending: E::Out,
    stats: ReleaseStats,
    subjects: BTreeSet<String>,
}

impl<E: Encode> Output<E> {
    /// Counts the released rows of one batch and sends them on, re-cut into
    /// batches of the fixed size.
    async fn release(
        &mut self,
        rows: RecordBatch,
        st: StageStats,
        max_subjects: usize,
        tx: &mpsc::Sender<FetchMessage<E::Out>>,
    ) -> Result<(), Stop> {
        self.stats.rows_filtered += st.rows_without_consent;
        self.stats.rows_released += st.rows_out;
        if self.subjects.len() < max_subjects {
            self.subjects.extend(st.subjects);
        }
        for b in self.rebatcher.push(rows).map_err(internal)? {
            self.encoder
                .write(&b, &mut self.pending)
                .map_err(internal)?;
            let bytes = std::mem::take(&mut self.pending);
            self.stats.bytes += E::size(&bytes);
            // The client's pace sets ours: this waits while the channel is full.
            if tx.send(FetchMessage::Ipc(bytes)).await.is_err() {
                return Err(Stop::Aborted);
            }
        }
        Ok(())
    }
}

fn internal(e: impl Into<FetchError>) -> Stop {
    Stop::Failed(e.into())
}

impl Page {
    async fn serve<E: Encode>(
        self,
        stream: ReadStream,
        out_schema: SchemaRef,
        guard: ReleaseGuard,
        tx: mpsc::Sender<FetchMessage<E::Out>>,
    ) {
        let mut pending = E::Out::default();
        let encoder = match E::start(&out_schema, &mut pending) {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.send(FetchMessage::Failed(e.into())).await;
                let _ = guard
                    .complete(ReleaseStats::default(), ReleaseOutcome::Failed)
                    .await;
                return;
            }
        };
        let mut out = Output {
            pending,
            encoder,
            rebatcher: Rebatcher::new(self.batch_rows),
            stats: ReleaseStats::default(),
            subjects: BTreeSet::new(),
        };
        let result = self.pump(stream, &mut out, &tx).await;
        let result = match result {
            Ok(end) => self.finish(end, &mut out, guard.intent_sequence()),
            Err(e) => Err(e),
        };
        let subjects: Vec<String> = std::mem::take(&mut out.subjects).into_iter().collect();
        let columns: Vec<String> = out_schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let rows = out.stats.rows_released;
        match result {
            Ok(done) => {
                // The completion entry is written before the last message, so
                // the caller can name it.
                let seq = match guard
                    .complete_with_subjects(out.stats, ReleaseOutcome::Completed, subjects)
                    .await
                {
                    Ok(seq) => seq,
                    Err(e) => {
                        let _ = tx.send(FetchMessage::Failed(e.into())).await;
                        return;
                    }
                };
                self.notice(rows, &columns, "completed", seq).await;
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
                match guard
                    .complete_with_subjects(out.stats, outcome, subjects)
                    .await
                {
                    Ok(seq) => {
                        let name = match outcome {
                            ReleaseOutcome::Aborted => "aborted",
                            _ => "failed",
                        };
                        self.notice(rows, &columns, name, seq).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "release completion not audited; the intent stays open");
                    }
                }
            }
        }
    }

    /// Puts the access notice of this release under a grant (if any) into
    /// the outbox, after its completion entry `seq` is durable.
    async fn notice(&self, rows: u64, columns: &[String], outcome: &str, seq: u64) {
        let (Some(grants), Some(grant)) = (&self.grants, &self.binding.grant) else {
            return;
        };
        if let Err(e) = grants
            .record_release(grant, rows, columns, outcome, seq)
            .await
        {
            tracing::warn!(grant = %grant, error = %e, "access notice of a release not recorded");
        }
    }

    /// Reads until `target` rows are released and the next released row (or
    /// the end of the source) is found.
    async fn pump<E: Encode>(
        &self,
        mut stream: ReadStream,
        out: &mut Output<E>,
        tx: &mpsc::Sender<FetchMessage<E::Out>>,
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
                Err(e) => return Err(Stop::Failed(FetchError::SourceRead(e))),
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
                    .ok_or(Stop::Failed(FetchError::Internal("released row not found")))?;
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
            out.release(rows, st, self.max_subjects, tx).await?;
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
        Err(Stop::Failed(FetchError::EndedEarly))
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
            .map_err(|source| {
                Stop::Failed(FetchError::SourceUnavailable {
                    dataset: self.dataset_id.clone(),
                    source,
                })
            })?;
        let mut batches = Vec::new();
        let mut summary = None;
        while let Some(item) = again.next().await {
            match item {
                Ok(ReadItem::Batch { batch, .. }) => batches.push(batch),
                Ok(ReadItem::Broken(_)) => {}
                Ok(ReadItem::End(s)) => summary = Some(s),
                Err(e) => return Err(Stop::Failed(FetchError::SourceRead(e))),
            }
        }
        let same =
            arrow::compute::concat_batches(&head.schema(), &batches).is_ok_and(|b| b == *head);
        match summary.and_then(|s| s.cursor) {
            Some(c) if same => Ok(c),
            _ => Err(Stop::Failed(FetchError::SourceChanged(
                self.dataset_id.clone(),
            ))),
        }
    }

    /// The last message: the rows still held, the end of the IPC stream and
    /// the summary.
    fn finish<E: Encode>(
        &self,
        end: PageEnd,
        out: &mut Output<E>,
        audit_sequence: u64,
    ) -> Result<FetchMessage<E::Out>, Stop> {
        if let Some(b) = out.rebatcher.finish().map_err(internal)? {
            out.encoder.write(&b, &mut out.pending).map_err(internal)?;
        }
        out.encoder.finish(&mut out.pending).map_err(internal)?;
        out.stats.bytes += E::size(&out.pending);
        let next_cursor = match (end.more, end.next) {
            (false, _) => None,
            (true, Some(c)) => Some(
                self.sealer
                    .seal(&c, &self.binding.borrow())
                    .map_err(|e| internal(FetchError::Seal(e)))?,
            ),
            (true, None) => {
                return Err(internal(FetchError::Internal(
                    "no resume position after a partial page",
                )));
            }
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
