//! Access requests and grants, kept durably at the node that owns the data.
//!
//! - A member's user asks for access to one dataset for a declared purpose,
//!   some columns and some days ([`Grants::request`]). The request is stored
//!   with a hash over its canonical encoding ([`request_hash`]); the same
//!   requester with the same idempotency key gets the same request back.
//! - The owner's DPO or steward approves the exact request it saw, named by
//!   that hash ([`Grants::approve`]); the approval creates a grant, signed by
//!   the owner node over (request hash, approver, time). A replayed approval
//!   returns the same grant.
//! - States: a request is `pending`, then `approved` or `rejected`; a grant
//!   is `active`, then `revoked`, or expired at its `not_after` (recorded by
//!   [`Grants::expire`], but a read after `not_after` is refused by the
//!   policies whether or not the expiry was recorded yet).
//! - Decide → audit → act: who may ask, approve or revoke is decided by the
//!   node's Cedar policies before these functions run (the handler calls
//!   `PolicyPoint::authorize`); each change writes its audit entry
//!   (`GrantChange`) and only then commits its effects in one atomic, durable
//!   batch, so a node stopped in between comes back with the request and its
//!   grant agreeing (both changed or neither).
//! - The policy decision point sees requests and grants as entities
//!   ([`Grants::mirror_all`] at start, and after each change).
//!
//! - Obligations set at approval ([`Obligations`]: delete-after,
//!   notify-on-use, aggregate-only) are part of the grant and of the signed
//!   approval; deletion duties live in [`duties`], access notices to the
//!   grantee's home node (and their outbox) in [`notices`].
//!
//! Ids are 128 random bits in hex. Times are Unix seconds of the node clock.
//! See `docs/access-workflow.md`.

use crate::audit::{AuditError, AuditLog, Draft};
use crate::catalog::{KeyError, NodeSigner};
use crate::clock::SharedClock;
use crate::pki::{Principal, Subject};
use crate::policy::{PolicyPoint, user_entity_id};
use crate::store::{Store, StoreError, Table, TableName};
use allmende_audit::{EntryKind, GrantOp};
use allmende_policies::{self as pol, GrantState, Purpose, RequestState};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Arc;

pub mod duties;
pub mod notices;

pub use duties::{Attestation, Duty, DutyReason};
pub use notices::{Direction, NoticeBody, NoticeKind, NoticeRefusal, SignedNotice, StoredNotice};

/// Seconds in a day.
pub const DAY_SECS: i64 = 24 * 60 * 60;

/// The default longest grant in days (`[limits] max_grant_days`).
pub const DEFAULT_MAX_GRANT_DAYS: u32 = 365;

/// Longest justification, idempotency key, note or reason, in bytes.
pub const MAX_TEXT_BYTES: usize = 2048;

/// Most columns one request may name.
pub const MAX_COLUMNS: usize = 256;

/// How long the expiry timer waits before it retries a failed record.
pub const EXPIRY_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Domain separation of the owner node's approval signature.
const APPROVAL_DOMAIN: &[u8] = b"allmende grant approval v1\n";

/// Domain separation of an approval that carries obligations.
const APPROVAL_DOMAIN_V2: &[u8] = b"allmende grant approval v2\n";

/// Why an access request or grant operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    /// A field of the request is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// More days than the node grants.
    #[error("a grant lasts at most {max} days on this node; `{days}` days were asked for")]
    TooLong { days: u32, max: u32 },
    /// The dataset is public: nobody needs a grant for it.
    #[error("dataset `{0}` is public: no request is needed, read it directly (nothing was stored)")]
    PublicDataset(String),
    /// No such request or grant.
    #[error("no {what} `{id}` on this node")]
    NotFound { what: &'static str, id: String },
    /// The request changed since the approver saw it.
    #[error(
        "the request changed: request `{id}` now has hash `{current}`, not `{seen}`; show it again and decide on what it asks now"
    )]
    Changed {
        id: String,
        seen: String,
        current: String,
    },
    /// The request is already decided.
    #[error("request `{id}` is {state}, not pending")]
    NotPending { id: String, state: &'static str },
    /// The grant is no longer active.
    #[error("grant `{id}` is {state}, not active")]
    NotActive { id: String, state: &'static str },
    /// The same idempotency key was used by this caller for another request.
    #[error(
        "idempotency key `{key}` was already used by you for request `{id}`, which asks for something else; use a new key"
    )]
    KeyReused { key: String, id: String },
    /// Columns asked for on a read that the grant does not cover.
    #[error("grant `{grant}` does not cover column(s) {columns}")]
    ColumnsOutsideGrant { grant: String, columns: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("approval signature: {0}")]
    Signing(#[from] KeyError),
    #[error("no random id: {0}")]
    Random(String),
    /// A delivered access notice was refused (audited).
    #[error("access notice refused: {0}")]
    NoticeRefused(NoticeRefusal),
    /// A user of another organisation tried to attest a duty.
    #[error("deletion duty `{id}` is owed by `{org}`; only its users attest it")]
    NotYourDuty { id: String, org: String },
    /// The grantee organisation has an overdue deletion duty.
    #[error(
        "organisation `{org}` has an overdue deletion duty `{duty}` (due {due}); no new grant until it attests the deletion"
    )]
    OverdueDuty {
        org: String,
        duty: String,
        due: String,
    },
}

/// Obligations a grant carries, set at approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligations {
    /// Epoch seconds by which the grantee deletes what it received
    /// (at or after `not_after`).
    pub delete_after: i64,
    /// Every release under the grant also notifies the owner's DPO.
    pub notify_on_use: bool,
    /// Raw reads under the grant are refused; aggregates only.
    pub aggregate_only: bool,
}

/// The obligations an approver asks for; unset `delete_after`: the grant's
/// `not_after`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObligationsAsked {
    pub delete_after: Option<i64>,
    pub notify_on_use: bool,
    pub aggregate_only: bool,
}

impl ObligationsAsked {
    /// The obligations of a grant ending at `not_after`.
    pub fn resolve(&self, not_after: i64) -> Result<Obligations, GrantsError> {
        let delete_after = self.delete_after.unwrap_or(not_after);
        if delete_after < not_after {
            return Err(GrantsError::Invalid(format!(
                "delete-after ({}) must not be before the grant's end ({})",
                crate::timefmt::format_unix_secs(delete_after),
                crate::timefmt::format_unix_secs(not_after)
            )));
        }
        Ok(Obligations {
            delete_after,
            notify_on_use: self.notify_on_use,
            aggregate_only: self.aggregate_only,
        })
    }
}

/// An access request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub id: String,
    pub owner: String,
    pub dataset: String,
    pub purpose: Purpose,
    /// Sorted, without duplicates; empty: every column.
    pub columns: Vec<String>,
    pub days: u32,
    pub justification: String,
    /// Identity URI of the requesting user.
    pub requester: String,
    pub requester_org: String,
    /// The requester's user id (the policy entity is `<org>/<user>`).
    pub requester_user: String,
    pub idempotency_key: String,
    /// Hex SHA-256 of [`request_hash`].
    pub hash: String,
    pub state: RequestState,
    pub requested_at: i64,
    /// The approval or rejection, once made.
    pub decision: Option<Decided>,
    pub grant_id: Option<String>,
}

/// Who ended a request's or a grant's waiting state, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decided {
    /// Epoch seconds.
    pub at: i64,
    /// Identity URI of the deciding user.
    pub by: String,
    /// The note or reason given; empty: none.
    pub note: String,
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub id: String,
    pub request_id: String,
    pub request_hash: String,
    pub owner: String,
    pub dataset: String,
    pub purpose: Purpose,
    /// Sorted; empty: every column.
    pub columns: Vec<String>,
    pub grantee_org: String,
    /// Identity URI of the requesting user.
    pub grantee_user: String,
    pub not_before: i64,
    pub not_after: i64,
    /// Identity URI of the approver.
    pub approved_by: String,
    pub approved_at: i64,
    /// Hex Ed25519 signature over [`approval_message`].
    pub signature: String,
    /// Hex public key of the signing node.
    pub signer_public_key: String,
    pub state: GrantState,
    /// The revocation, once made.
    pub revocation: Option<Decided>,
    pub expired_at: Option<i64>,
    /// Set at approval; none for grants approved before obligations
    /// existed (their approval signature is of the first format).
    #[serde(default)]
    pub obligations: Option<Obligations>,
}

impl Grant {
    /// When the grantee must have deleted what it received.
    pub fn delete_after(&self) -> i64 {
        self.obligations.map_or(self.not_after, |o| o.delete_after)
    }

    /// `active`, `revoked` or `expired` at `now`.
    pub fn state_at(&self, now: i64) -> &'static str {
        match self.state {
            GrantState::Active if self.expired_at.is_some() || now >= self.not_after => "expired",
            s => s.as_str(),
        }
    }

    /// The policy entity of this grant.
    pub fn entity(&self) -> pol::Grant {
        pol::Grant {
            id: self.id.clone(),
            grantee: self.grantee_org.clone(),
            dataset: self.dataset.clone(),
            purpose: self.purpose,
            not_before: self.not_before,
            not_after: Some(self.not_after),
            state: self.state,
            aggregate_only: self.obligations.is_some_and(|o| o.aggregate_only),
        }
    }
}

impl AccessRequest {
    /// The policy entity of this request.
    pub fn entity(&self) -> pol::AccessRequest {
        pol::AccessRequest {
            id: self.id.clone(),
            requester: user_entity_id(&self.requester_org, &self.requester_user),
            requester_org: self.requester_org.clone(),
            dataset: self.dataset.clone(),
            purpose: self.purpose,
            not_before: self.requested_at,
            not_after: Some(self.requested_at + i64::from(self.days) * DAY_SECS),
            state: self.state,
        }
    }
}

/// One row of the grants table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
enum Row {
    Request(Box<AccessRequest>),
    Grant(Box<Grant>),
    /// An idempotency key's request id.
    Key(String),
    /// A deletion duty.
    Duty(Box<Duty>),
    /// An access notice (sent, received or for the own DPO).
    Notice(Box<StoredNotice>),
    /// A peer node's notice key, pinned on first use (hex).
    NodeKey(String),
}

/// What a caller asks for (checked by [`Grants::request`]).
#[derive(Debug, Clone, Default)]
pub struct NewRequest {
    pub dataset: String,
    pub purpose: Option<Purpose>,
    pub columns: Vec<String>,
    pub days: u32,
    pub justification: String,
    pub idempotency_key: String,
}

/// The dataset facts a request is checked against.
#[derive(Debug, Clone)]
pub struct DatasetFacts {
    pub id: String,
    pub public: bool,
    pub columns: BTreeSet<String>,
}

/// SHA-256 over the canonical encoding of what an approval approves: owner
/// organisation, dataset, purpose, sorted columns, duration in days, and the
/// requester's identity URI; each field length-prefixed (u32, big-endian).
pub fn request_hash(
    owner: &str,
    dataset: &str,
    purpose: Purpose,
    columns: &[String],
    days: u32,
    requester: &str,
) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u32).to_be_bytes());
        h.update(b);
    };
    field(b"allmende access request v1");
    field(owner.as_bytes());
    field(dataset.as_bytes());
    field(purpose.as_str().as_bytes());
    let mut sorted: Vec<&String> = columns.iter().collect();
    sorted.sort();
    sorted.dedup();
    field(&(sorted.len() as u32).to_be_bytes());
    for c in sorted {
        field(c.as_bytes());
    }
    field(&days.to_be_bytes());
    field(requester.as_bytes());
    hex::encode(h.finalize())
}

/// The bytes the owner node signs for an approval.
pub fn approval_message(request_hash: &str, approver: &str, at: i64) -> Vec<u8> {
    let mut m = APPROVAL_DOMAIN.to_vec();
    for part in [request_hash, approver, &at.to_string()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m
}

/// The bytes the owner node signs for an approval with obligations: the
/// first format's fields, then delete-after and the two flags.
pub fn approval_message_v2(
    request_hash: &str,
    approver: &str,
    at: i64,
    o: &Obligations,
) -> Vec<u8> {
    let mut m = APPROVAL_DOMAIN_V2.to_vec();
    let flags = format!(
        "notify_on_use={} aggregate_only={}",
        o.notify_on_use, o.aggregate_only
    );
    for part in [
        request_hash,
        approver,
        &at.to_string(),
        &o.delete_after.to_string(),
        &flags,
    ] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m
}

/// The approval message of `g` in its format.
fn grant_message(g: &Grant) -> Vec<u8> {
    match &g.obligations {
        Some(o) => approval_message_v2(&g.request_hash, &g.approved_by, g.approved_at, o),
        None => approval_message(&g.request_hash, &g.approved_by, g.approved_at),
    }
}

/// Verifies a grant's approval signature with the owner node's public key.
pub fn verify_approval(g: &Grant) -> bool {
    let (Ok(key), Ok(sig)) = (hex::decode(&g.signer_public_key), hex::decode(&g.signature)) else {
        return false;
    };
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&grant_message(g), &sig)
        .is_ok()
}

/// 128 random bits, hex.
fn random_id() -> Result<String, GrantsError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| GrantsError::Random("the system random source failed".into()))?;
    Ok(hex::encode(b))
}

fn text(field: &str, v: &str) -> Result<(), GrantsError> {
    if v.len() > MAX_TEXT_BYTES {
        return Err(GrantsError::Invalid(format!(
            "{field} is longer than {MAX_TEXT_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The `GrantChange` entry of `op` on request `r` by `caller`.
fn change(
    caller: &Principal,
    action: &str,
    op: GrantOp,
    r: &AccessRequest,
    grant: Option<&str>,
) -> Draft {
    let mut d = Draft::by(caller, action, &r.dataset, EntryKind::GrantChange { op });
    d.purpose = Some(r.purpose.as_str().to_owned());
    d.request_id = Some(r.id.clone());
    d.grant_id = grant.map(str::to_owned);
    d
}

/// `d` naming grant `g` (its purpose, id and request).
fn grant_entry(mut d: Draft, g: &Grant) -> Draft {
    d.purpose = Some(g.purpose.as_str().to_owned());
    d.grant_id = Some(g.id.clone());
    d.request_id = Some(g.request_id.clone());
    d
}

fn revoked() -> EntryKind {
    EntryKind::GrantChange {
        op: GrantOp::Revoked,
    }
}

/// A refused change by `caller`, audited as a denial by `policy`.
fn refusal(caller: &Principal, action: &str, dataset: &str, policy: &str) -> Draft {
    let mut d = Draft::by(caller, action, dataset, EntryKind::Decision);
    d.decision = Some(allmende_audit::Decision::Deny);
    d.policy_ids = vec![policy.to_owned()];
    d
}

/// User text cut for a message ([`crate::audit::bound_label`]).
fn short(s: &str) -> String {
    let mut s = s.to_owned();
    crate::audit::bound_label(&mut s);
    s
}

fn req_key(id: &str) -> String {
    format!("req/{id}")
}

fn grant_key(id: &str) -> String {
    format!("grant/{id}")
}

/// The key of `requester`'s idempotency key (hashed: keys are caller text).
fn idem_key(requester: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(requester.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!("key/{}", hex::encode(h.finalize()))
}

/// The access requests and grants of one node.
#[derive(Debug)]
pub struct Grants {
    store: Store,
    table: Table<String, Row>,
    clock: SharedClock,
    policy: Arc<PolicyPoint>,
    owner: String,
    max_days: u32,
    /// One change at a time (read, check, audit, commit).
    write: tokio::sync::Mutex<()>,
    /// Counts grant changes (approval, revocation, expiry): streams reading
    /// under a grant and the expiry timer watch it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Nudged when a notice enters the outbox (the delivery task waits on
    /// it).
    outbox: tokio::sync::Notify,
    /// The next notice's storing order.
    order: std::sync::atomic::AtomicU64,
}

impl Grants {
    /// Opens the table and mirrors every request and grant into the policy
    /// entities.
    pub fn open(
        store: Store,
        clock: SharedClock,
        policy: Arc<PolicyPoint>,
        max_days: u32,
    ) -> Result<Self, GrantsError> {
        let table = store.table(TableName::AccessGrants)?;
        let owner = policy.own_org().to_owned();
        let g = Self {
            store,
            table,
            clock,
            policy,
            owner,
            max_days,
            write: tokio::sync::Mutex::new(()),
            changes: tokio::sync::watch::channel(0).0,
            outbox: tokio::sync::Notify::new(),
            order: std::sync::atomic::AtomicU64::new(0),
        };
        g.order.store(
            Self::first_order(&g.table)?,
            std::sync::atomic::Ordering::Relaxed,
        );
        g.mirror_all()?;
        Ok(g)
    }

    /// The longest grant in days.
    pub fn max_days(&self) -> u32 {
        self.max_days
    }

    /// Puts every stored request and grant into the policy entities (at
    /// start; the datasets must be mirrored before).
    pub fn mirror_all(&self) -> Result<(), GrantsError> {
        for (_, row) in self.table.entries()? {
            match row {
                Row::Request(r) => self.mirror_request(&r),
                Row::Grant(g) => self.mirror_grant(&g),
                Row::Key(_) | Row::Duty(_) | Row::Notice(_) | Row::NodeKey(_) => {}
            }
        }
        Ok(())
    }

    /// Mirrors one request. The requester's user entity is added (without
    /// roles) if the node does not know it, so that decisions about the
    /// request can name it; a caller's own certificate binds its roles.
    /// A request or grant whose dataset is not registered is not mirrored
    /// (decisions about it are then denied: unknown entity).
    fn mirror_request(&self, r: &AccessRequest) {
        let e = r.entity();
        self.policy.with_entities(|s| {
            if s.dataset(&r.dataset).is_none() {
                return;
            }
            if s.user(&e.requester).is_none() {
                s.upsert_user(pol::User::new(
                    e.requester.clone(),
                    r.requester_org.clone(),
                    &[],
                ));
            }
            s.upsert_request(e);
        });
    }

    fn mirror_grant(&self, g: &Grant) {
        self.policy.with_entities(|s| {
            if s.dataset(&g.dataset).is_some() {
                s.upsert_grant(g.entity());
            }
        });
    }

    /// One request.
    pub fn get_request(&self, id: &str) -> Result<Option<AccessRequest>, GrantsError> {
        Ok(match self.table.get(&req_key(id))? {
            Some(Row::Request(r)) => Some(*r),
            _ => None,
        })
    }

    /// One grant.
    pub fn get_grant(&self, id: &str) -> Result<Option<Grant>, GrantsError> {
        Ok(match self.table.get(&grant_key(id))? {
            Some(Row::Grant(g)) => Some(*g),
            _ => None,
        })
    }

    /// The stored rows `pick` takes, in key order.
    fn rows<T>(&self, pick: impl Fn(Row) -> Option<T>) -> Result<Vec<T>, GrantsError> {
        Ok(self
            .table
            .entries()?
            .into_iter()
            .filter_map(|(_, r)| pick(r))
            .collect())
    }

    /// Every request, optionally of one state, newest first.
    pub fn list_requests(
        &self,
        state: Option<RequestState>,
    ) -> Result<Vec<AccessRequest>, GrantsError> {
        let mut out = self.rows(|r| match r {
            Row::Request(r) if state.is_none_or(|s| r.state == s) => Some(*r),
            _ => None,
        })?;
        out.sort_by(|a, b| b.requested_at.cmp(&a.requested_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Every grant whose state at `now` is `state` (or every grant), newest
    /// first.
    pub fn list_grants(&self, state: Option<&str>) -> Result<Vec<Grant>, GrantsError> {
        let now = self.clock.now_unix_secs();
        let mut out = self.rows(|r| match r {
            Row::Grant(g) if state.is_none_or(|s| g.state_at(now) == s) => Some(*g),
            _ => None,
        })?;
        out.sort_by(|a, b| b.approved_at.cmp(&a.approved_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Checks `new` against the node's limits and the dataset, without
    /// storing anything: the canonical columns, or why not.
    pub fn check(&self, new: &NewRequest, ds: &DatasetFacts) -> Result<Vec<String>, GrantsError> {
        if ds.public {
            return Err(GrantsError::PublicDataset(ds.id.clone()));
        }
        if new.purpose.is_none() {
            return Err(GrantsError::Invalid(
                "a request needs a purpose (e.g. `AcademicResearch`)".into(),
            ));
        }
        if new.days == 0 {
            return Err(GrantsError::Invalid(
                "a request needs a duration of at least 1 day".into(),
            ));
        }
        if new.days > self.max_days {
            return Err(GrantsError::TooLong {
                days: new.days,
                max: self.max_days,
            });
        }
        if new.idempotency_key.is_empty() {
            return Err(GrantsError::Invalid(
                "a request needs an idempotency key (the CLI makes one)".into(),
            ));
        }
        text("the idempotency key", &new.idempotency_key)?;
        text("the justification", &new.justification)?;
        if new.columns.len() > MAX_COLUMNS {
            return Err(GrantsError::Invalid(format!(
                "a request names at most {MAX_COLUMNS} columns"
            )));
        }
        let unknown: Vec<String> = new
            .columns
            .iter()
            .filter(|c| !ds.columns.contains(*c))
            .map(|c| format!("`{}`", short(c)))
            .collect();
        if !unknown.is_empty() {
            return Err(GrantsError::Invalid(format!(
                "dataset `{}` has no column(s) {}",
                ds.id,
                unknown.join(", ")
            )));
        }
        let mut cols = new.columns.clone();
        cols.sort();
        cols.dedup();
        Ok(cols)
    }

    /// The request `caller` already made with this idempotency key, if any.
    pub fn replayed_request(
        &self,
        caller: &Principal,
        key: &str,
    ) -> Result<Option<AccessRequest>, GrantsError> {
        match self.table.get(&idem_key(&caller.uri(), key))? {
            Some(Row::Key(id)) => self.get_request(&id),
            _ => Ok(None),
        }
    }

    /// Stores `new` by `caller` (decided before): checked, audited, then
    /// stored durably with its idempotency key. A replay (same caller, same
    /// key, same request) returns the stored request.
    pub async fn request(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        new: &NewRequest,
        ds: &DatasetFacts,
    ) -> Result<AccessRequest, GrantsError> {
        let columns = self.check(new, ds)?;
        let Some(purpose) = new.purpose else {
            return Err(GrantsError::Invalid("a request needs a purpose".into()));
        };
        let Subject::User(user) = &caller.subject else {
            return Err(GrantsError::Invalid(
                "access is requested by a person with a user certificate, not by a node".into(),
            ));
        };
        let requester = caller.uri();
        let hash = request_hash(&self.owner, &ds.id, purpose, &columns, new.days, &requester);
        let _w = self.write.lock().await;
        if let Some(r) = self.replayed_request(caller, &new.idempotency_key)? {
            return if r.hash == hash {
                Ok(r)
            } else {
                Err(GrantsError::KeyReused {
                    key: short(&new.idempotency_key),
                    id: r.id,
                })
            };
        }
        let r = AccessRequest {
            id: random_id()?,
            owner: self.owner.clone(),
            dataset: ds.id.clone(),
            purpose,
            columns,
            days: new.days,
            justification: new.justification.clone(),
            requester: requester.clone(),
            requester_org: caller.organisation.clone(),
            requester_user: user.clone(),
            idempotency_key: new.idempotency_key.clone(),
            hash,
            state: RequestState::Pending,
            requested_at: self.clock.now_unix_secs(),
            decision: None,
            grant_id: None,
        };
        let entry = change(caller, "request_access", GrantOp::Requested, &r, None);
        let rows = vec![
            (req_key(&r.id), Row::Request(Box::new(r.clone()))),
            (
                idem_key(&requester, &new.idempotency_key),
                Row::Key(r.id.clone()),
            ),
        ];
        self.record(audit, entry, rows).await?;
        self.mirror_request(&r);
        Ok(r)
    }

    /// The grant an approval by `caller` of request `id` with `hash` already
    /// created (a replayed approval), if any.
    pub fn replayed_approval(
        &self,
        caller: &Principal,
        id: &str,
        hash: &str,
    ) -> Result<Option<Grant>, GrantsError> {
        let Some(r) = self.get_request(id)? else {
            return Ok(None);
        };
        if r.state != RequestState::Approved
            || r.hash != hash
            || r.decision.as_ref().map(|d| d.by.as_str()) != Some(caller.uri().as_str())
        {
            return Ok(None);
        }
        match &r.grant_id {
            Some(g) => self.get_grant(g),
            None => Ok(None),
        }
    }

    /// Loads a pending request and checks the hash the approver saw.
    fn pending(&self, id: &str, seen: &str) -> Result<AccessRequest, GrantsError> {
        let r = self.get_request(id)?.ok_or_else(|| GrantsError::NotFound {
            what: "access request",
            id: short(id),
        })?;
        if r.hash != seen {
            return Err(GrantsError::Changed {
                id: r.id,
                seen: short(seen),
                current: r.hash,
            });
        }
        if r.state != RequestState::Pending {
            return Err(GrantsError::NotPending {
                id: r.id,
                state: r.state.as_str(),
            });
        }
        Ok(r)
    }

    /// [`Grants::pending`], with a changed request's refusal audited (a
    /// deny of `action` by `caller`, policy id `request-changed`).
    async fn pending_audited(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        action: &str,
        id: &str,
        seen: &str,
    ) -> Result<AccessRequest, GrantsError> {
        let err = match self.pending(id, seen) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if let GrantsError::Changed { id, .. } = &err {
            let dataset = self
                .get_request(id)?
                .map_or_else(|| id.clone(), |r| r.dataset);
            let mut d = refusal(caller, action, &dataset, "request-changed");
            d.request_id = Some(id.clone());
            audit.append(d).await?;
        }
        Err(err)
    }

    /// Approves request `id`, whose hash `caller` saw as `seen` (decided
    /// before): the approval entry is written, then the request's new state
    /// and the signed grant are committed in one batch.
    pub async fn approve(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        signer: &NodeSigner,
        id: &str,
        seen: &str,
        note: &str,
    ) -> Result<Grant, GrantsError> {
        self.approve_with(
            audit,
            caller,
            signer,
            id,
            seen,
            note,
            ObligationsAsked::default(),
        )
        .await
    }

    /// [`Grants::approve`] with obligations. The approval is refused while
    /// the requesting organisation has an overdue deletion duty
    /// (`FAILED_PRECONDITION`, audited as a deny with policy id
    /// `overdue-deletion-duty`). A grant over personal data creates the
    /// grantee's deletion duty, and a notice to the grantee's node enters
    /// the outbox, in the approval's batch.
    #[allow(clippy::too_many_arguments, reason = "the approval's inputs")]
    pub async fn approve_with(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        signer: &NodeSigner,
        id: &str,
        seen: &str,
        note: &str,
        asked: ObligationsAsked,
    ) -> Result<Grant, GrantsError> {
        text("the note", note)?;
        let _w = self.write.lock().await;
        if let Some(g) = self.replayed_approval(caller, id, seen)? {
            return Ok(g);
        }
        let mut r = self
            .pending_audited(audit, caller, "approve_request", id, seen)
            .await?;
        if let Some(d) = self.overdue_duties(&r.requester_org)?.first() {
            let mut refused = refusal(
                caller,
                "approve_request",
                &r.dataset,
                "overdue-deletion-duty",
            );
            refused.request_id = Some(r.id.clone());
            audit.append(refused).await?;
            return Err(GrantsError::OverdueDuty {
                org: d.org.clone(),
                duty: d.id.clone(),
                due: crate::timefmt::format_unix_secs(d.due),
            });
        }
        let now = self.clock.now_unix_secs();
        let approver = caller.uri();
        let not_after = now.saturating_add(i64::from(r.days) * DAY_SECS);
        let obligations = asked.resolve(not_after)?;
        let sig =
            signer.sign_detached(&approval_message_v2(&r.hash, &approver, now, &obligations))?;
        let g = Grant {
            id: random_id()?,
            request_id: r.id.clone(),
            request_hash: r.hash.clone(),
            owner: r.owner.clone(),
            dataset: r.dataset.clone(),
            purpose: r.purpose,
            columns: r.columns.clone(),
            grantee_org: r.requester_org.clone(),
            grantee_user: r.requester.clone(),
            not_before: now,
            not_after,
            approved_by: approver.clone(),
            approved_at: now,
            signature: hex::encode(sig),
            signer_public_key: hex::encode(signer.public_key()),
            state: GrantState::Active,
            revocation: None,
            expired_at: None,
            obligations: Some(obligations),
        };
        let entry = change(
            caller,
            "approve_request",
            GrantOp::Approved,
            &r,
            Some(&g.id),
        );
        r.state = RequestState::Approved;
        r.decision = Some(Decided {
            at: now,
            by: approver,
            note: note.to_owned(),
        });
        r.grant_id = Some(g.id.clone());
        let mut rows = vec![
            (req_key(&r.id), Row::Request(Box::new(r.clone()))),
            (grant_key(&g.id), Row::Grant(Box::new(g.clone()))),
        ];
        if self.personal(&g.dataset) {
            let duty = self.new_duty(
                DutyReason::Grant {
                    grant_id: g.id.clone(),
                },
                &g.grantee_org,
                &g.dataset,
                obligations.delete_after,
            )?;
            rows.push((duties::duty_key(&duty.id), Row::Duty(Box::new(duty))));
        }
        let notices = self.notice_rows(
            &g,
            NoticeKind::GrantCreated {
                not_before: g.not_before,
                not_after: g.not_after,
                columns: g.columns.clone(),
                obligations: g.obligations,
            },
        )?;
        let notify = !notices.is_empty();
        rows.extend(notices);
        self.record(audit, entry, rows).await?;
        self.mirror_request(&r);
        self.mirror_grant(&g);
        self.changed();
        if notify {
            self.outbox.notify_one();
        }
        Ok(g)
    }

    /// Whether `dataset` holds personal data (unknown: yes, the careful
    /// answer: the duty is created).
    fn personal(&self, dataset: &str) -> bool {
        self.policy
            .with_entities(|e| e.dataset(dataset).map(|d| d.contains_personal_data))
            .flatten()
            .unwrap_or(true)
    }

    /// A decision by `caller` now, with `note`.
    fn decided(&self, caller: &Principal, note: &str) -> Decided {
        Decided {
            at: self.clock.now_unix_secs(),
            by: caller.uri(),
            note: note.to_owned(),
        }
    }

    /// Rejects request `id` (decided before): audited, then stored.
    pub async fn reject(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        id: &str,
        seen: &str,
        reason: &str,
    ) -> Result<AccessRequest, GrantsError> {
        text("the reason", reason)?;
        let _w = self.write.lock().await;
        let mut r = self
            .pending_audited(audit, caller, "reject_request", id, seen)
            .await?;
        let entry = change(caller, "reject_request", GrantOp::Rejected, &r, None);
        r.state = RequestState::Rejected;
        r.decision = Some(self.decided(caller, reason));
        let rows = vec![(req_key(&r.id), Row::Request(Box::new(r.clone())))];
        self.record(audit, entry, rows).await?;
        self.mirror_request(&r);
        Ok(r)
    }

    /// Revokes grant `id` (decided before): audited, then stored; the next
    /// decision under it is denied (`grant-not-active`).
    pub async fn revoke(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        id: &str,
        reason: &str,
    ) -> Result<Grant, GrantsError> {
        text("the reason", reason)?;
        let _w = self.write.lock().await;
        let mut g = self.get_grant(id)?.ok_or_else(|| GrantsError::NotFound {
            what: "grant",
            id: short(id),
        })?;
        if g.state != GrantState::Active {
            return Err(GrantsError::NotActive {
                id: g.id,
                state: g.state.as_str(),
            });
        }
        let entry = grant_entry(Draft::by(caller, "revoke", &g.dataset, revoked()), &g);
        g.state = GrantState::Revoked;
        g.revocation = Some(self.decided(caller, reason));
        let mut rows = vec![(grant_key(&g.id), Row::Grant(Box::new(g.clone())))];
        rows.extend(self.notice_rows(
            &g,
            NoticeKind::GrantRevoked {
                reason: reason.to_owned(),
            },
        )?);
        self.record(audit, entry, rows).await?;
        self.mirror_grant(&g);
        self.changed();
        self.outbox.notify_one();
        Ok(g)
    }

    /// Resolves once grant `id` is revoked (at once if it already is); never
    /// for an unknown grant. A stream reading under the grant ends then.
    pub async fn until_revoked(&self, id: &str) {
        let mut changes = self.changes.subscribe();
        loop {
            let revoked = matches!(
                self.get_grant(id),
                Ok(Some(g)) if g.state == GrantState::Revoked
            );
            if revoked {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Records the expiry of grant `id` if it is active and past its
    /// `not_after` (by this node: audited, then stored). Returns whether it
    /// recorded one.
    pub async fn expire(&self, audit: &AuditLog, id: &str) -> Result<bool, GrantsError> {
        let _w = self.write.lock().await;
        let Some(mut g) = self.get_grant(id)? else {
            return Ok(false);
        };
        let now = self.clock.now_unix_secs();
        if g.state != GrantState::Active || g.expired_at.is_some() || now < g.not_after {
            return Ok(false);
        }
        let entry = grant_entry(
            Draft::new(
                &self.owner,
                "expire_grant",
                &g.dataset,
                EntryKind::GrantChange {
                    op: GrantOp::Expired,
                },
            ),
            &g,
        );
        g.expired_at = Some(now);
        let mut rows = vec![(grant_key(&g.id), Row::Grant(Box::new(g.clone())))];
        rows.extend(self.notice_rows(&g, NoticeKind::GrantExpired)?);
        self.record(audit, entry, rows).await?;
        self.changed();
        self.outbox.notify_one();
        Ok(true)
    }

    /// Writes `entry`, then commits `rows` in one atomic, durable batch: no
    /// entry, no change; a stop in between leaves every row as it was.
    async fn record(
        &self,
        audit: &AuditLog,
        entry: Draft,
        rows: Vec<(String, Row)>,
    ) -> Result<(), GrantsError> {
        audit.append(entry).await?;
        self.commit(rows).await
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Active grants past their end whose expiry is not recorded, and the
    /// earliest end (ms) of the others.
    fn due(&self) -> Result<(Vec<String>, Option<i64>), GrantsError> {
        let now_ms = self.clock.now_unix_ms();
        let mut due = Vec::new();
        let mut next: Option<i64> = None;
        for (_, row) in self.table.entries()? {
            let Row::Grant(g) = row else { continue };
            if g.state != GrantState::Active || g.expired_at.is_some() {
                continue;
            }
            let end_ms = g.not_after.saturating_mul(1000);
            if end_ms <= now_ms {
                due.push(g.id);
            } else {
                next = Some(next.map_or(end_ms, |n| n.min(end_ms)));
            }
        }
        Ok((due, next))
    }

    /// The expiry timer: sleeps until the next grant's end (or a grant
    /// change), records the expiry of each grant past its end (audited),
    /// until `shutdown`. No polling: with no active grant it waits for a
    /// change. A failed record is retried after [`EXPIRY_RETRY`].
    pub async fn run_expiry(
        self: Arc<Self>,
        audit: AuditLog,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut changes = self.changes.subscribe();
        loop {
            let mut wait = None;
            match self.due() {
                Ok((due, next)) => {
                    for id in due {
                        if let Err(e) = self.expire(&audit, &id).await {
                            tracing::warn!(grant = %id, error = %e, "grant expiry not recorded; retrying");
                            wait = Some(EXPIRY_RETRY);
                        }
                    }
                    if wait.is_none() {
                        wait = next.map(|end| {
                            let ms = end.saturating_sub(self.clock.now_unix_ms()).max(0);
                            std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "grant table unreadable; retrying expiry");
                    wait = Some(EXPIRY_RETRY);
                }
            }
            let sleep = crate::clock::sleep_or_forever(wait);
            tokio::select! {
                () = sleep => {}
                r = changes.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Wakes the expiry timer after the node clock jumped (a manual clock:
    /// the demo's stories and the tests).
    pub fn nudge(&self) {
        self.changed();
    }

    /// [`Grants::columns_for_read`], with a refusal audited (a deny of
    /// `read` by `caller`, policy id `grant-columns`).
    pub async fn columns_for_read_audited(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        id: &str,
        asked: &[String],
    ) -> Result<Vec<String>, GrantsError> {
        let err = match self.columns_for_read(caller, id, asked) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        if let GrantsError::ColumnsOutsideGrant { .. } = &err
            && let Some(g) = self.get_grant(id)?
        {
            let mut d = refusal(caller, "read", &g.dataset, "grant-columns");
            d.grant_id = Some(g.id);
            audit.append(d).await?;
        }
        Err(err)
    }

    /// The columns a read under grant `id` by `caller` may name: `asked`
    /// if the grant covers them all, the grant's columns if `asked` is
    /// empty. An unknown grant or one of another organisation returns
    /// `asked` unchanged: the policies refuse that read (and audit it).
    pub fn columns_for_read(
        &self,
        caller: &Principal,
        id: &str,
        asked: &[String],
    ) -> Result<Vec<String>, GrantsError> {
        let Some(g) = self.get_grant(id)? else {
            return Ok(asked.to_vec());
        };
        if g.grantee_org != caller.organisation || g.columns.is_empty() {
            return Ok(asked.to_vec());
        }
        if asked.is_empty() {
            return Ok(g.columns.clone());
        }
        let outside: Vec<String> = asked
            .iter()
            .filter(|c| g.columns.binary_search(c).is_err())
            .map(|c| format!("`{}`", short(c)))
            .collect();
        if outside.is_empty() {
            Ok(asked.to_vec())
        } else {
            Err(GrantsError::ColumnsOutsideGrant {
                grant: g.id,
                columns: outside.join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use crate::clock::ManualClock;
    use crate::pki::{OrgKind, Role};
    use crate::policy::PolicyOrigin;
    use crate::store::StoreOptions;
    use std::path::Path;

    const NOW: i64 = 1_780_000_000;
    const DS: &str = "smart-meter-readings";

    fn person(org: &str, user: &str, role: Role) -> Principal {
        Principal {
            federation: "munich".into(),
            organisation: org.into(),
            organisation_kind: if org == "tum" {
                OrgKind::University
            } else {
                OrgKind::Utility
            },
            subject: Subject::User(user.into()),
            role: Some(role),
            certificate_sha256: format!("{org}-{user}"),
            not_after: i64::MAX,
            issuer_ca_spki_sha256: format!("{org}-ca"),
        }
    }

    fn researcher() -> Principal {
        person("tum", "alice", Role::Researcher)
    }

    fn dpo() -> Principal {
        person("swm", "dpo", Role::Dpo)
    }

    fn facts() -> DatasetFacts {
        DatasetFacts {
            id: DS.into(),
            public: false,
            columns: ["household_id", "kwh", "ts"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }

    fn ask(key: &str) -> NewRequest {
        NewRequest {
            dataset: DS.into(),
            purpose: Some(Purpose::AcademicResearch),
            columns: vec!["kwh".into(), "household_id".into()],
            days: 90,
            justification: "load profiles".into(),
            idempotency_key: key.into(),
        }
    }

    fn policy(clock: SharedClock) -> Arc<PolicyPoint> {
        let p = PolicyPoint::load(PolicyOrigin::Bundled, clock, "munich", "swm", "swm-1").unwrap();
        p.with_entities(|e| {
            e.upsert_organisation(pol::Organisation::new("swm", pol::OrgKind::Utility));
            e.upsert_organisation(pol::Organisation::new("tum", pol::OrgKind::University));
            e.upsert_dataset(pol::Dataset {
                id: DS.into(),
                owner: "swm".into(),
                classification: pol::Classification::Personal,
                public_space_origin: false,
                contains_personal_data: true,
                legal_basis: pol::LegalBasis::Consent,
                allowed_purposes: [Purpose::AcademicResearch].into_iter().collect(),
                anonymisation_required: false,
            });
        });
        Arc::new(p)
    }

    fn store(dir: &Path) -> Store {
        Store::open(
            dir,
            &StoreOptions {
                cache_bytes: 1 << 20,
            },
        )
        .unwrap()
    }

    struct World {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        audit: AuditLog,
        audit_store: Store,
        _audit_tx: tokio::sync::watch::Sender<bool>,
        signer: NodeSigner,
    }

    async fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::at_unix_ms(NOW * 1000);
        let (audit, audit_store, tx) =
            crate::audit::open_test_log(&dir.path().join("audit"), clock.clone()).await;
        World {
            clock,
            audit,
            audit_store,
            _audit_tx: tx,
            signer: NodeSigner::generate().unwrap().0,
            _dir: dir,
        }
    }

    impl World {
        /// A request by the researcher with idempotency key `key`.
        async fn requested(&self, g: &Grants, key: &str) -> AccessRequest {
            g.request(&self.audit, &researcher(), &ask(key), &facts())
                .await
                .unwrap()
        }

        /// `r` approved by SWM's DPO with the hash it was shown.
        async fn approved(&self, g: &Grants, r: &AccessRequest) -> Grant {
            g.approve(&self.audit, &dpo(), &self.signer, &r.id, &r.hash, "")
                .await
                .unwrap()
        }

        fn grants_path(&self) -> std::path::PathBuf {
            self._dir.path().join("grants")
        }
        fn open(&self) -> (Grants, Arc<PolicyPoint>) {
            let p = policy(self.clock.clone());
            let g = Grants::open(
                store(&self.grants_path()),
                self.clock.clone(),
                p.clone(),
                DEFAULT_MAX_GRANT_DAYS,
            )
            .unwrap();
            (g, p)
        }
    }

    /// The hash covers exactly what an approval approves: column order and
    /// duplicates do not matter, every field does.
    #[test]
    fn the_request_hash_covers_what_is_approved() {
        let cols = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let uri = "allmende://munich/tum/user/alice";
        let p = Purpose::AcademicResearch;
        let base = request_hash("swm", DS, p, &cols(&["a", "b"]), 90, uri);
        assert_eq!(
            base,
            request_hash("swm", DS, p, &cols(&["b", "a", "a"]), 90, uri)
        );
        for other in [
            request_hash("stadt", DS, p, &cols(&["a", "b"]), 90, uri),
            request_hash("swm", "x", p, &cols(&["a", "b"]), 90, uri),
            request_hash("swm", DS, Purpose::Marketing, &cols(&["a", "b"]), 90, uri),
            request_hash("swm", DS, p, &cols(&["a"]), 90, uri),
            request_hash("swm", DS, p, &cols(&["ab"]), 90, uri),
            request_hash("swm", DS, p, &cols(&["a", "b"]), 91, uri),
            request_hash(
                "swm",
                DS,
                p,
                &cols(&["a", "b"]),
                90,
                "allmende://munich/tum/user/bob",
            ),
        ] {
            assert_ne!(base, other);
        }
    }

    /// Same caller and key: the same request, stored once; the key reused
    /// for something else is refused; another caller with the same key gets
    /// a request of its own. Ids are 128-bit hex.
    #[tokio::test]
    async fn requests_are_idempotent_per_caller_and_key() {
        let w = world().await;
        let (g, _) = w.open();
        let a = w.requested(&g, "k1").await;
        let size = w.audit.status().size;
        let again = w.requested(&g, "k1").await;
        assert_eq!(a, again);
        assert_eq!(w.audit.status().size, size, "a replay writes nothing");
        assert_eq!(g.list_requests(None).unwrap().len(), 1);
        assert_eq!(a.id.len(), 32);
        assert!(a.id.chars().all(|c| c.is_ascii_hexdigit()));

        let mut changed = ask("k1");
        changed.days = 30;
        let err = g
            .request(&w.audit, &researcher(), &changed, &facts())
            .await
            .unwrap_err();
        assert!(matches!(err, GrantsError::KeyReused { .. }), "{err}");

        let bob = person("tum", "bob", Role::Researcher);
        let b = g
            .request(&w.audit, &bob, &ask("k1"), &facts())
            .await
            .unwrap();
        assert_ne!(a.id, b.id);
    }

    /// More days than the maximum, a public dataset, unknown columns: refused
    /// with the reason, nothing stored.
    #[tokio::test]
    async fn bad_requests_are_refused_and_not_stored() {
        let w = world().await;
        let (g, _) = w.open();
        let mut long = ask("k");
        long.days = 10_000;
        let err = g
            .request(&w.audit, &researcher(), &long, &facts())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a grant lasts at most 365 days on this node; `10000` days were asked for"
        );
        let mut public = facts();
        public.public = true;
        let err = g
            .request(&w.audit, &researcher(), &ask("k"), &public)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no request is needed"), "{err}");
        let mut cols = ask("k");
        cols.columns.push("iban".into());
        let err = g
            .request(&w.audit, &researcher(), &cols, &facts())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("`iban`"), "{err}");
        assert!(g.list_requests(None).unwrap().is_empty());
    }

    /// Approval names the hash it saw: a different hash is refused as a
    /// changed request; the grant is signed by the node over (hash,
    /// approver, time); a replay returns the same grant; a decided request
    /// is not approved again.
    #[tokio::test]
    async fn approval_binds_the_hash_and_replays_return_the_same_grant() {
        let w = world().await;
        let (g, p) = w.open();
        let r = w.requested(&g, "k").await;
        let other = request_hash("swm", DS, Purpose::AcademicResearch, &[], 90, &r.requester);
        let err = g
            .approve(&w.audit, &dpo(), &w.signer, &r.id, &other, "")
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("the request changed"), "{err}");

        let grant = g
            .approve(&w.audit, &dpo(), &w.signer, &r.id, &r.hash, "ok")
            .await
            .unwrap();
        assert!(verify_approval(&grant));
        let mut forged = grant.clone();
        forged.approved_by = "allmende://munich/swm/user/mallory".into();
        assert!(!verify_approval(&forged));
        assert_eq!(grant.not_after - grant.not_before, 90 * DAY_SECS);
        assert_eq!(grant.columns, vec!["household_id", "kwh"]);

        let again = g
            .approve(&w.audit, &dpo(), &w.signer, &r.id, &r.hash, "ok")
            .await
            .unwrap();
        assert_eq!(grant, again);
        assert_eq!(g.list_grants(None).unwrap().len(), 1);
        let other_dpo = person("swm", "dpo-2", Role::Dpo);
        let err = g
            .approve(&w.audit, &other_dpo, &w.signer, &r.id, &r.hash, "")
            .await
            .unwrap_err();
        assert!(matches!(err, GrantsError::NotPending { .. }), "{err}");
        // The policy entities know the grant and the decided request.
        let (req_state, entity) = p
            .with_entities(|e| {
                (
                    e.request(&r.id).map(|x| x.state),
                    e.grant(&grant.id).cloned(),
                )
            })
            .unwrap();
        assert_eq!(req_state, Some(RequestState::Approved));
        assert_eq!(entity, Some(grant.entity()));
    }

    /// A node stopped after the approval entry but before the batch comes
    /// back with the request pending and no grant (never one without the
    /// other); approving again then works, and a restart keeps both.
    #[tokio::test]
    async fn approval_and_grant_are_committed_together() {
        let w = world().await;
        let (g, _) = w.open();
        let r = w.requested(&g, "k").await;
        g.store.fail_writes(true);
        let err = g
            .approve(&w.audit, &dpo(), &w.signer, &r.id, &r.hash, "")
            .await
            .unwrap_err();
        assert!(matches!(err, GrantsError::Store(_)), "{err}");
        drop(g);

        let (g, _) = w.open();
        let back = g.get_request(&r.id).unwrap().unwrap();
        assert_eq!(back.state, RequestState::Pending);
        assert!(back.grant_id.is_none());
        assert!(g.list_grants(None).unwrap().is_empty());
        let grant = w.approved(&g, &r).await;
        drop(g);

        let (g, p) = w.open();
        let back = g.get_request(&r.id).unwrap().unwrap();
        assert_eq!(back.state, RequestState::Approved);
        assert_eq!(back.grant_id.as_deref(), Some(grant.id.as_str()));
        assert_eq!(g.get_grant(&grant.id).unwrap(), Some(grant.clone()));
        // Mirrored again at start.
        assert!(p.with_entities(|e| e.grant(&grant.id).is_some()).unwrap());
        assert!(p.with_entities(|e| e.request(&r.id).is_some()).unwrap());
    }

    /// No audit entry, no change: with the audit log refusing writes,
    /// neither a request, an approval nor a revocation changes anything.
    #[tokio::test]
    async fn a_change_that_cannot_be_audited_is_not_made() {
        let w = world().await;
        let (g, _) = w.open();
        let r = w.requested(&g, "k").await;
        w.audit_store.fail_writes(true);
        assert!(matches!(
            g.request(&w.audit, &researcher(), &ask("k2"), &facts())
                .await,
            Err(GrantsError::Audit(_))
        ));
        assert!(matches!(
            g.approve(&w.audit, &dpo(), &w.signer, &r.id, &r.hash, "")
                .await,
            Err(GrantsError::Audit(_))
        ));
        assert_eq!(g.list_requests(None).unwrap().len(), 1);
        assert!(g.list_grants(None).unwrap().is_empty());
        assert_eq!(
            g.get_request(&r.id).unwrap().unwrap().state,
            RequestState::Pending
        );
        w.audit_store.fail_writes(false);
        let grant = w.approved(&g, &r).await;
        w.audit_store.fail_writes(true);
        assert!(matches!(
            g.revoke(&w.audit, &dpo(), &grant.id, "").await,
            Err(GrantsError::Audit(_))
        ));
        assert_eq!(
            g.get_grant(&grant.id).unwrap().unwrap().state,
            GrantState::Active
        );
    }

    /// The expiry timer records a grant's expiry at its end, audited,
    /// without polling: it wakes on the end or on a change.
    #[tokio::test]
    async fn the_expiry_timer_records_expiry_at_the_end() {
        let w = world().await;
        let (g, _) = w.open();
        let g = Arc::new(g);
        let r = w.requested(&g, "k").await;
        let grant = w.approved(&g, &r).await;
        let (stop, rx) = tokio::sync::watch::channel(false);
        let timer = tokio::spawn(g.clone().run_expiry(w.audit.clone(), rx));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            g.get_grant(&grant.id)
                .unwrap()
                .unwrap()
                .expired_at
                .is_none()
        );
        let size = w.audit.status().size;
        w.clock
            .advance(std::time::Duration::from_secs(90 * DAY_SECS as u64));
        g.nudge();
        let mut expired = None;
        for _ in 0..100 {
            expired = g.get_grant(&grant.id).unwrap().unwrap().expired_at;
            if expired.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(expired, Some(grant.not_after));
        assert_eq!(
            w.audit.status().size,
            size + 1,
            "the expiry is audited once"
        );
        stop.send(true).unwrap();
        timer.await.unwrap();
    }

    fn node(org: &str, name: &str) -> Principal {
        let mut p = person(org, name, Role::Dpo);
        p.subject = Subject::Node(name.into());
        p.role = None;
        p
    }

    /// TUM's home node: a grants table whose own organisation is `tum`.
    fn open_tum(w: &World) -> Grants {
        let p = PolicyPoint::load(
            PolicyOrigin::Bundled,
            w.clock.clone(),
            "munich",
            "tum",
            "tum-1",
        )
        .unwrap();
        Grants::open(
            store(&w._dir.path().join("tum-grants")),
            w.clock.clone(),
            Arc::new(p),
            DEFAULT_MAX_GRANT_DAYS,
        )
        .unwrap()
    }

    /// Obligations are set at approval and signed: delete-after defaults
    /// to the grant's end and may not precede it; changing any obligation
    /// breaks the signature; a grant stored before obligations existed
    /// still reads and verifies with the first format.
    #[tokio::test]
    async fn obligations_are_signed_and_old_grants_stay_readable() {
        let w = world().await;
        let (g, _) = w.open();
        let r = w.requested(&g, "k").await;
        let early = ObligationsAsked {
            delete_after: Some(NOW + DAY_SECS),
            ..Default::default()
        };
        let err = g
            .approve_with(&w.audit, &dpo(), &w.signer, &r.id, &r.hash, "", early)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must not be before"), "{err}");
        let asked = ObligationsAsked {
            delete_after: Some(NOW + 120 * DAY_SECS),
            notify_on_use: true,
            aggregate_only: true,
        };
        let grant = g
            .approve_with(&w.audit, &dpo(), &w.signer, &r.id, &r.hash, "", asked)
            .await
            .unwrap();
        let o = grant.obligations.unwrap();
        assert_eq!(o.delete_after, NOW + 120 * DAY_SECS);
        assert!(o.notify_on_use && o.aggregate_only);
        assert!(verify_approval(&grant));
        for change in [
            |o: &mut Obligations| o.delete_after += 1,
            |o: &mut Obligations| o.notify_on_use = false,
            |o: &mut Obligations| o.aggregate_only = false,
        ] {
            let mut forged = grant.clone();
            change(forged.obligations.as_mut().unwrap());
            assert!(!verify_approval(&forged));
        }
        let r2 = w.requested(&g, "k2").await;
        let plain = w.approved(&g, &r2).await;
        assert_eq!(plain.delete_after(), plain.not_after);

        // A grant row written before obligations existed.
        let mut old = grant.clone();
        old.obligations = None;
        old.signature = hex::encode(
            w.signer
                .sign_detached(&approval_message(
                    &old.request_hash,
                    &old.approved_by,
                    old.approved_at,
                ))
                .unwrap(),
        );
        let mut json = serde_json::to_value(Row::Grant(Box::new(old.clone()))).unwrap();
        json["Grant"].as_object_mut().unwrap().remove("obligations");
        let back: Row = serde_json::from_value(json).unwrap();
        let Row::Grant(back) = back else {
            unreachable!("a grant row")
        };
        assert_eq!(*back, old);
        assert!(verify_approval(&back));
        assert_eq!(back.delete_after(), back.not_after);
    }

    /// A personal-data grant creates the grantee's deletion duty, due at
    /// delete-after. Only a user of the grantee organisation attests it
    /// (another organisation's user is refused and audited); overdue, it
    /// blocks new approvals for that organisation only, audited.
    #[tokio::test]
    async fn deletion_duties_block_new_grants_when_overdue() {
        let w = world().await;
        let (g, p) = w.open();
        p.with_entities(|e| {
            e.upsert_organisation(pol::Organisation::new("lmu", pol::OrgKind::University))
        });
        let r = w.requested(&g, "k").await;
        let grant = w.approved(&g, &r).await;
        let duties = g.list_duties(Some("tum")).unwrap();
        assert_eq!(duties.len(), 1);
        let duty = &duties[0];
        assert_eq!(duty.grant_id(), Some(grant.id.as_str()));
        assert_eq!(duty.due, grant.not_after);
        assert_eq!(duty.state_at(NOW), "open");

        // Past due, not attested: overdue, and tum gets no new grant.
        w.clock
            .advance(std::time::Duration::from_secs(91 * DAY_SECS as u64));
        assert_eq!(g.overdue_duties("tum").unwrap().len(), 1);
        let r2 = w.requested(&g, "k2").await;
        let size = w.audit.status().size;
        let err = g
            .approve(&w.audit, &dpo(), &w.signer, &r2.id, &r2.hash, "")
            .await
            .unwrap_err();
        assert!(matches!(err, GrantsError::OverdueDuty { .. }), "{err}");
        assert!(err.to_string().contains(&duty.id), "{err}");
        assert_eq!(w.audit.status().size, size + 1, "the refusal is audited");
        // Another organisation is not blocked.
        let carol = person("lmu", "carol", Role::Researcher);
        let r3 = g
            .request(&w.audit, &carol, &ask("k3"), &facts())
            .await
            .unwrap();
        w.approved(&g, &r3).await;

        // Another organisation cannot attest tum's duty.
        let size = w.audit.status().size;
        let err = g
            .attest_deletion(&w.audit, &carol, &grant.id, "")
            .await
            .unwrap_err();
        assert!(matches!(err, GrantsError::NotYourDuty { .. }), "{err}");
        assert_eq!(w.audit.status().size, size + 1, "the refusal is audited");
        // Nor can tum's node (a person attests).
        assert!(
            g.attest_deletion(&w.audit, &node("tum", "tum-1"), &grant.id, "")
                .await
                .is_err()
        );
        let done = g
            .attest_deletion(&w.audit, &researcher(), &grant.id, "wiped")
            .await
            .unwrap();
        assert_eq!(done.state_at(NOW + 365 * DAY_SECS), "attested");
        assert_eq!(
            done.attestation.as_ref().unwrap().by,
            "allmende://munich/tum/user/alice"
        );
        assert!(g.overdue_duties("tum").unwrap().is_empty());
        w.approved(&g, &r2).await;
    }

    /// A duty not tied to a grant (an erasure) is created audited, listed,
    /// attested by id, and blocks when overdue like the others.
    #[tokio::test]
    async fn erasure_duties_are_added_without_a_grant() {
        let w = world().await;
        let (g, _) = w.open();
        let size = w.audit.status().size;
        let duty = g
            .add_duty(
                &w.audit,
                DutyReason::Erasure {
                    subject_ref: "hmac:abc".into(),
                    grant_id: String::new(),
                },
                "tum",
                DS,
                NOW + DAY_SECS,
            )
            .await
            .unwrap();
        assert_eq!(w.audit.status().size, size + 1);
        assert_eq!(duty.grant_id(), None);
        assert_eq!(g.list_duties(Some("tum")).unwrap(), vec![duty.clone()]);
        assert!(g.list_duties(Some("lmu")).unwrap().is_empty());
        w.clock
            .advance(std::time::Duration::from_secs(2 * DAY_SECS as u64));
        assert_eq!(g.overdue_duties("tum").unwrap().len(), 1);
        g.attest_deletion(&w.audit, &researcher(), &duty.id, "")
            .await
            .unwrap();
        assert!(g.overdue_duties("tum").unwrap().is_empty());
    }

    /// An erasure told to a recipient is told once: asking again (or
    /// retrying one that stopped half-way) returns the same duty and notice.
    #[tokio::test]
    async fn an_erasure_is_told_to_each_recipient_once() {
        let w = world().await;
        let (g, _) = w.open();
        let r = w.requested(&g, "k").await;
        let grant = w.approved(&g, &r).await;
        let before = g.undelivered().unwrap().len();
        let first = g
            .erasure_at_recipient(&w.audit, &grant.id, "p-abc", NOW + DAY_SECS)
            .await
            .unwrap()
            .unwrap();
        assert!(!first.1.is_empty());
        let size = w.audit.status().size;
        let again = g
            .erasure_at_recipient(&w.audit, &grant.id, "p-abc", NOW + 2 * DAY_SECS)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(w.audit.status().size, size, "nothing new to audit");
        assert_eq!(g.undelivered().unwrap().len(), before + 1);
        let erasure_duties = g
            .list_duties(Some("tum"))
            .unwrap()
            .into_iter()
            .filter(|d| matches!(d.reason, DutyReason::Erasure { .. }))
            .count();
        assert_eq!(erasure_duties, 1);
        // Another subject at the same recipient is a duty of its own.
        let other = g
            .erasure_at_recipient(&w.audit, &grant.id, "p-def", NOW + DAY_SECS)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(other.0.id, first.0.id);
    }

    /// Approval, revocation and expiry each put one notice for the grantee's
    /// organisation into the outbox, in their batch; the receiver (tum)
    /// accepts a notice signed by swm's node key from a node of swm,
    /// audits and stores it once; a replay writes nothing.
    #[tokio::test]
    async fn grant_changes_send_notices_received_once() {
        let w = world().await;
        let (g, _) = w.open();
        let r = w.requested(&g, "k").await;
        let grant = w.approved(&g, &r).await;
        let out = g.undelivered().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body.kind.name(), "grant_created");
        assert_eq!(out[0].body.recipient, "tum");
        assert_eq!(out[0].state(), "pending");
        g.revoke(&w.audit, &dpo(), &grant.id, "misuse")
            .await
            .unwrap();
        let out = g.undelivered().unwrap();
        assert_eq!(
            out.iter().map(|n| n.body.kind.name()).collect::<Vec<_>>(),
            vec!["grant_created", "grant_revoked"]
        );
        // Durable: a reopened table has the same outbox.
        drop(g);
        let (g, _) = w.open();
        assert_eq!(g.undelivered().unwrap(), out);

        let tum = open_tum(&w);
        let swm_node = node("swm", "swm-1");
        let signed = Grants::signed(&w.signer, &out[0]).unwrap();
        let size = w.audit.status().size;
        let (got, replay) = tum
            .receive_notice(
                &w.audit,
                &swm_node,
                &signed.body,
                &signed.signature,
                &signed.public_key,
                None,
            )
            .await
            .unwrap();
        assert!(!replay);
        assert_eq!(got.body, out[0].body);
        assert_eq!(got.state(), "received");
        assert_eq!(w.audit.status().size, size + 1, "received and audited");
        let (again, replay) = tum
            .receive_notice(
                &w.audit,
                &swm_node,
                &signed.body,
                &signed.signature,
                &signed.public_key,
                None,
            )
            .await
            .unwrap();
        assert_eq!(again, got);
        assert!(replay);
        assert_eq!(w.audit.status().size, size + 1, "a replay writes nothing");
        assert_eq!(
            tum.list_notices(Some(Direction::Received)).unwrap().len(),
            1
        );

        g.mark_delivered(&out[0].body.id).await.unwrap();
        assert_eq!(g.undelivered().unwrap().len(), 1);
        assert_eq!(
            g.list_notices(Some(Direction::Sent)).unwrap()[1].state(),
            "delivered"
        );
    }

    /// Forged notices are refused and audited: a bad signature, a user
    /// certificate, a node of another organisation claiming to be swm, a
    /// notice for another organisation, and a key other than the one pinned.
    #[tokio::test]
    async fn forged_notices_are_refused_and_audited() {
        let w = world().await;
        let (g, _) = w.open();
        let r = w.requested(&g, "k").await;
        w.approved(&g, &r).await;
        let n = g.undelivered().unwrap().remove(0);
        let signed = Grants::signed(&w.signer, &n).unwrap();
        let tum = open_tum(&w);
        let swm_node = node("swm", "swm-1");
        let refused = |caller: Principal, body: Vec<u8>, sig: Vec<u8>, key: Vec<u8>| {
            let tum = &tum;
            let audit = w.audit.clone();
            async move {
                let size = audit.status().size;
                let err = tum
                    .receive_notice(&audit, &caller, &body, &sig, &key, None)
                    .await
                    .unwrap_err();
                assert!(matches!(err, GrantsError::NoticeRefused(_)), "{err}");
                assert_eq!(audit.status().size, size + 1, "refusal audited: {err}");
                err
            }
        };
        let mut bad = signed.signature.clone();
        bad[0] ^= 1;
        let e = refused(
            swm_node.clone(),
            signed.body.clone(),
            bad,
            signed.public_key.clone(),
        )
        .await;
        assert!(e.to_string().contains("signature"), "{e}");
        let e = refused(
            person("swm", "dpo", Role::Dpo),
            signed.body.clone(),
            signed.signature.clone(),
            signed.public_key.clone(),
        )
        .await;
        assert!(e.to_string().contains("by nodes"), "{e}");
        // A node of lmu, signing with its own key, claiming swm.
        let lmu_key = NodeSigner::generate().unwrap().0;
        let forged = Grants::signed(&lmu_key, &n).unwrap();
        let e = refused(
            node("lmu", "lmu-1"),
            forged.body.clone(),
            forged.signature.clone(),
            forged.public_key.clone(),
        )
        .await;
        assert!(e.to_string().contains("names owner `swm`"), "{e}");
        // For another organisation.
        let mut other = n.clone();
        other.body.recipient = "lmu".into();
        let s = Grants::signed(&w.signer, &other).unwrap();
        let e = refused(swm_node.clone(), s.body, s.signature, s.public_key).await;
        assert!(e.to_string().contains("is for `lmu`"), "{e}");
        // Pinned on first use; another key of "swm-1" later is refused.
        tum.receive_notice(
            &w.audit,
            &swm_node,
            &signed.body,
            &signed.signature,
            &signed.public_key,
            None,
        )
        .await
        .unwrap();
        let mut later = n.clone();
        later.body.id = "0".repeat(32);
        let s = Grants::signed(&lmu_key, &later).unwrap();
        let e = refused(swm_node.clone(), s.body, s.signature, s.public_key).await;
        assert!(e.to_string().contains("key changed"), "{e}");
        assert_eq!(tum.list_notices(None).unwrap().len(), 1);
    }

    /// A release under a grant sends a data-released notice to the grantee,
    /// and one to the owner's own DPO if the grant says notify-on-use.
    #[tokio::test]
    async fn releases_notify_the_grantee_and_on_use_the_owner() {
        let w = world().await;
        let (g, _) = w.open();
        let r = w.requested(&g, "k").await;
        let asked = ObligationsAsked {
            notify_on_use: true,
            ..Default::default()
        };
        let grant = g
            .approve_with(&w.audit, &dpo(), &w.signer, &r.id, &r.hash, "", asked)
            .await
            .unwrap();
        g.record_release(&grant.id, 10, &["kwh".into()], "completed", 42)
            .await
            .unwrap();
        let sent = g.list_notices(Some(Direction::Sent)).unwrap();
        assert_eq!(sent.len(), 2);
        let own = g.list_notices(Some(Direction::Own)).unwrap();
        assert_eq!(own.len(), 1);
        assert_eq!(
            own[0].body.kind,
            NoticeKind::DataReleased {
                rows: 10,
                columns: vec!["kwh".into()],
                outcome: "completed".into(),
                audit_sequence: 42
            }
        );
        g.record_release("nope", 1, &[], "completed", 1)
            .await
            .unwrap();
        assert_eq!(g.list_notices(None).unwrap().len(), 3);
    }

    /// Revocation and expiry are recorded once; reads name only the
    /// grant's columns.
    #[tokio::test]
    async fn revocation_expiry_and_columns() {
        let w = world().await;
        let (g, p) = w.open();
        let r = w.requested(&g, "k").await;
        let grant = w.approved(&g, &r).await;
        let me = researcher();
        assert_eq!(
            g.columns_for_read(&me, &grant.id, &[]).unwrap(),
            vec!["household_id", "kwh"]
        );
        assert_eq!(
            g.columns_for_read(&me, &grant.id, &["kwh".into()]).unwrap(),
            vec!["kwh"]
        );
        let err = g
            .columns_for_read(&me, &grant.id, &["kwh".into(), "ts".into()])
            .unwrap_err();
        assert!(err.to_string().contains("`ts`"), "{err}");

        assert!(!g.expire(&w.audit, &grant.id).await.unwrap(), "not yet");
        w.clock
            .advance(std::time::Duration::from_secs(90 * DAY_SECS as u64));
        assert_eq!(
            g.get_grant(&grant.id)
                .unwrap()
                .unwrap()
                .state_at(crate::clock::Clock::now_unix_secs(&*w.clock)),
            "expired"
        );
        assert!(g.expire(&w.audit, &grant.id).await.unwrap());
        assert!(!g.expire(&w.audit, &grant.id).await.unwrap(), "once");

        let r2 = w.requested(&g, "k2").await;
        let g2 = g
            .approve(&w.audit, &dpo(), &w.signer, &r2.id, &r2.hash, "")
            .await
            .unwrap();
        let revoked = g.revoke(&w.audit, &dpo(), &g2.id, "misuse").await.unwrap();
        assert_eq!(revoked.state, GrantState::Revoked);
        assert!(matches!(
            g.revoke(&w.audit, &dpo(), &g2.id, "").await,
            Err(GrantsError::NotActive { .. })
        ));
        let state = p
            .with_entities(|e| e.grant(&g2.id).map(|x| x.state))
            .unwrap();
        assert_eq!(state, Some(GrantState::Revoked));
    }
}
