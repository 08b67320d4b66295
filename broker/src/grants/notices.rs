//! Access notices: what the owner's node tells the grantee's home node about
//! a grant (created, data released, revoked, expired; later erasures), so
//! that both sides keep a record.
//!
//! - The owner writes a notice into its durable outbox in the same atomic
//!   batch as the change it reports (approval, revocation, expiry), or right
//!   after the release's completion entry is durable. Nothing is lost: a
//!   notice stays in the outbox until the receiver acknowledged it.
//! - A notice is signed by the owner node's key (the catalog key, with its
//!   own domain [`NOTICE_DOMAIN`]) when it is sent; its body travels as the
//!   exact bytes signed.
//! - The receiver ([`Grants::receive_notice`]) accepts a notice only from a
//!   node of the organisation the notice names as owner, addressed to
//!   itself, signed by the key it pinned for that node (pinned on first use
//!   from a node the mTLS handshake authenticated); it audits the notice
//!   (`GrantChange/notice_received`) before it stores it, and stores each
//!   notice once (a replay is acknowledged, nothing written).
//! - Refusals are audited (`GrantChange/notice_refused`).
//! - No personal identifier of a data subject is in a notice: an erasure
//!   names the subject only by a keyed reference (the audit's keyed subject
//!   hash or the grant's pseudonym).

use super::{Grants, GrantsError, Obligations, Row, random_id, short};
use crate::audit::{AuditLog, Draft};
use crate::catalog::NodeSigner;
use crate::pki::{Principal, Subject};
use crate::store::WriteBatch;
use allmende_audit::{EntryKind, GrantOp};
use serde::{Deserialize, Serialize};

/// Domain separation of a notice signature.
pub const NOTICE_DOMAIN: &[u8] = b"allmende access notice v1\n";

/// Largest notice body accepted, in bytes.
pub const MAX_NOTICE_BYTES: usize = 64 * 1024;

/// What a notice reports: a closed set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NoticeKind {
    /// A grant was approved.
    GrantCreated {
        not_before: i64,
        not_after: i64,
        /// Empty: every column.
        columns: Vec<String>,
        obligations: Option<Obligations>,
    },
    /// One release under the grant ended.
    DataReleased {
        rows: u64,
        columns: Vec<String>,
        /// `completed`, `aborted` or `failed`.
        outcome: String,
        /// Sequence of the completion entry in the owner's audit log.
        audit_sequence: u64,
    },
    /// The grant was revoked.
    GrantRevoked { reason: String },
    /// The grant reached its end.
    GrantExpired,
    /// A data subject's data must be erased by the recipient. The subject is
    /// named only by a keyed reference, never in clear.
    Erasure { subject_ref: String, due: i64 },
}

impl NoticeKind {
    /// The kind's name, as listed.
    pub fn name(&self) -> &'static str {
        match self {
            NoticeKind::GrantCreated { .. } => "grant_created",
            NoticeKind::DataReleased { .. } => "data_released",
            NoticeKind::GrantRevoked { .. } => "grant_revoked",
            NoticeKind::GrantExpired => "grant_expired",
            NoticeKind::Erasure { .. } => "erasure",
        }
    }
}

/// The signed part of a notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeBody {
    /// 128 random bits, hex; unique per owner.
    pub id: String,
    /// The owner organisation (the sender).
    pub owner: String,
    /// The organisation the notice is for.
    pub recipient: String,
    /// Empty for a notice not tied to a grant.
    pub grant_id: String,
    pub dataset: String,
    pub purpose: String,
    /// Identity URI of the grantee user; empty if none.
    pub grantee_user: String,
    /// Epoch seconds of the owner's clock.
    pub at: i64,
    pub kind: NoticeKind,
}

/// Which way a stored notice went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// In this node's outbox, for another organisation.
    Sent,
    /// Received from another organisation's node.
    Received,
    /// For this node's own DPO (`notify_on_use`).
    Own,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
            Direction::Own => "own",
        }
    }
}

/// A notice as stored, with its delivery state (sent) or its origin
/// (received).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredNotice {
    pub body: NoticeBody,
    pub direction: Direction,
    /// Sent: when the receiver acknowledged it.
    pub delivered_at: Option<i64>,
    /// Sent: failed delivery attempts so far.
    pub attempts: u32,
    /// Sent: the last delivery error; empty: none.
    pub last_error: String,
    /// Received: identity URI of the node that delivered it.
    pub from_node: String,
    /// Received: when this node stored it.
    pub received_at: Option<i64>,
    /// Received: hex signature and key it was verified with.
    pub signature: String,
    pub public_key: String,
    /// This node's order of storing (notices of the same second keep the
    /// order of the changes they report).
    #[serde(default)]
    pub order: u64,
}

impl StoredNotice {
    /// `delivered`, `pending` (sent), `received` or `own`.
    pub fn state(&self) -> &'static str {
        match self.direction {
            Direction::Sent if self.delivered_at.is_some() => "delivered",
            Direction::Sent => "pending",
            Direction::Received => "received",
            Direction::Own => "own",
        }
    }
}

/// A notice ready to be sent: its body's bytes, signature and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNotice {
    pub id: String,
    pub recipient: String,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
    pub public_key: Vec<u8>,
}

/// The bytes signed for a notice body.
pub fn notice_message(body: &[u8]) -> Vec<u8> {
    let mut m = NOTICE_DOMAIN.to_vec();
    m.extend_from_slice(body);
    m
}

/// Signs `body` with the node's key.
pub fn sign_notice(signer: &NodeSigner, body: &NoticeBody) -> Result<SignedNotice, GrantsError> {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| GrantsError::Invalid(format!("notice not encodable: {e}")))?;
    let signature = signer.sign_detached(&notice_message(&bytes))?;
    Ok(SignedNotice {
        id: body.id.clone(),
        recipient: body.recipient.clone(),
        body: bytes,
        signature,
        public_key: signer.public_key().to_vec(),
    })
}

/// Whether `signature` over `body` verifies with `public_key`.
pub fn verify_notice(body: &[u8], signature: &[u8], public_key: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(&notice_message(body), signature)
        .is_ok()
}

pub(super) fn notice_key(direction: Direction, owner: &str, id: &str) -> String {
    format!("notice/{}/{owner}/{id}", direction.as_str())
}

fn node_key_key(org: &str, node: &str) -> String {
    format!("nodekey/{org}/{node}")
}

/// Why a received notice was refused (each audited).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeRefusal {
    #[error("access notices are delivered by nodes, not by people")]
    NotANode,
    #[error("the notice is not a valid notice: {0}")]
    Malformed(String),
    #[error("the notice names owner `{claimed}`, but was delivered by a node of `{caller}`")]
    OtherOwner { claimed: String, caller: String },
    #[error("the notice is for `{0}`, not for this node's organisation")]
    OtherRecipient(String),
    #[error("the sending node's key changed: pinned `{pinned}`, presented `{presented}`")]
    KeyChanged { pinned: String, presented: String },
    #[error("the notice's signature does not verify with the sending node's key")]
    BadSignature,
}

impl NoticeBody {
    /// A new notice from `owner` to `recipient` at `at`.
    pub fn new(
        owner: &str,
        recipient: &str,
        grant: Option<&super::Grant>,
        dataset: &str,
        at: i64,
        kind: NoticeKind,
    ) -> Result<Self, GrantsError> {
        Ok(Self {
            id: random_id()?,
            owner: owner.to_owned(),
            recipient: recipient.to_owned(),
            grant_id: grant.map(|g| g.id.clone()).unwrap_or_default(),
            dataset: dataset.to_owned(),
            purpose: grant
                .map(|g| g.purpose.as_str().to_owned())
                .unwrap_or_default(),
            grantee_user: grant.map(|g| g.grantee_user.clone()).unwrap_or_default(),
            at,
            kind,
        })
    }
}

impl StoredNotice {
    fn outgoing(body: NoticeBody, direction: Direction, order: u64) -> Self {
        Self {
            order,
            body,
            direction,
            delivered_at: None,
            attempts: 0,
            last_error: String::new(),
            from_node: String::new(),
            received_at: None,
            signature: String::new(),
            public_key: String::new(),
        }
    }
}

impl Grants {
    /// The outbox row of `body` (for another organisation), to be committed
    /// in the batch of the change it reports.
    pub(super) fn outbox_row(&self, body: NoticeBody) -> (String, Row) {
        let key = notice_key(Direction::Sent, &body.owner, &body.id);
        (
            key,
            Row::Notice(Box::new(StoredNotice::outgoing(
                body,
                Direction::Sent,
                self.next_order(),
            ))),
        )
    }

    /// The rows a grant change on `g` sends: a notice to the grantee's
    /// organisation if that is not this node's own.
    pub(super) fn notice_rows(
        &self,
        g: &super::Grant,
        kind: NoticeKind,
    ) -> Result<Vec<(String, Row)>, GrantsError> {
        if g.grantee_org == self.owner {
            return Ok(Vec::new());
        }
        let body = NoticeBody::new(
            &self.owner,
            &g.grantee_org,
            Some(g),
            &g.dataset,
            self.clock.now_unix_secs(),
            kind,
        )?;
        Ok(vec![self.outbox_row(body)])
    }

    /// Records a completed (or ended) release under grant `grant_id` after
    /// its completion entry (sequence `audit_sequence`) is durable: a notice
    /// to the grantee's organisation, and one for this node's own DPO if the
    /// grant asks to be notified on use. Nothing for an unknown grant.
    pub async fn record_release(
        &self,
        grant_id: &str,
        rows: u64,
        columns: &[String],
        outcome: &str,
        audit_sequence: u64,
    ) -> Result<(), GrantsError> {
        let Some(g) = self.get_grant(grant_id)? else {
            return Ok(());
        };
        let kind = NoticeKind::DataReleased {
            rows,
            columns: columns.to_vec(),
            outcome: outcome.to_owned(),
            audit_sequence,
        };
        let mut rows = self.notice_rows(&g, kind.clone())?;
        if g.obligations.as_ref().is_some_and(|o| o.notify_on_use) {
            let body = NoticeBody::new(
                &self.owner,
                &self.owner,
                Some(&g),
                &g.dataset,
                self.clock.now_unix_secs(),
                kind,
            )?;
            rows.push((
                notice_key(Direction::Own, &self.owner, &body.id),
                Row::Notice(Box::new(StoredNotice::outgoing(
                    body,
                    Direction::Own,
                    self.next_order(),
                ))),
            ));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let sent = rows
            .iter()
            .any(|(_, r)| matches!(r, Row::Notice(n) if n.direction == Direction::Sent));
        self.commit(rows).await?;
        if sent {
            self.outbox.notify_one();
        }
        Ok(())
    }

    /// Commits `rows` in one durable batch.
    pub(super) async fn commit(&self, rows: Vec<(String, Row)>) -> Result<(), GrantsError> {
        let mut b = WriteBatch::new();
        for (k, v) in &rows {
            b.put(&self.table, k, v)?;
        }
        self.store.commit_durable(b).await?;
        Ok(())
    }

    /// Every stored notice, optionally of one direction, newest first.
    pub fn list_notices(
        &self,
        direction: Option<Direction>,
    ) -> Result<Vec<StoredNotice>, GrantsError> {
        let mut out = self.rows(|r| match r {
            Row::Notice(n) if direction.is_none_or(|d| n.direction == d) => Some(*n),
            _ => None,
        })?;
        out.sort_by(|a, b| b.body.at.cmp(&a.body.at).then(b.order.cmp(&a.order)));
        Ok(out)
    }

    /// The next storing order (one more than any stored).
    fn next_order(&self) -> u64 {
        self.order
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// One more than the largest stored order (at open).
    pub(super) fn first_order(
        table: &crate::store::Table<String, Row>,
    ) -> Result<u64, GrantsError> {
        Ok(table
            .entries()?
            .into_iter()
            .filter_map(|(_, r)| match r {
                Row::Notice(n) => Some(n.order),
                _ => None,
            })
            .max()
            .map_or(0, |m| m.saturating_add(1)))
    }

    /// Sent notices not yet acknowledged, oldest first.
    pub fn undelivered(&self) -> Result<Vec<StoredNotice>, GrantsError> {
        let mut out = self.list_notices(Some(Direction::Sent))?;
        out.retain(|n| n.delivered_at.is_none());
        out.reverse();
        Ok(out)
    }

    /// Signs an outbox notice for sending.
    pub fn signed(signer: &NodeSigner, n: &StoredNotice) -> Result<SignedNotice, GrantsError> {
        sign_notice(signer, &n.body)
    }

    /// Records the receiver's acknowledgement of notice `id` (durable).
    pub async fn mark_delivered(&self, id: &str) -> Result<(), GrantsError> {
        self.update_sent(id, |n, now| n.delivered_at = Some(now))
            .await
    }

    /// Records a failed delivery attempt of notice `id`.
    pub async fn mark_failed(&self, id: &str, error: &str) -> Result<(), GrantsError> {
        let error = crate::text::shown(error, 200);
        self.update_sent(id, move |n, _| {
            n.attempts = n.attempts.saturating_add(1);
            n.last_error = error;
        })
        .await
    }

    async fn update_sent(
        &self,
        id: &str,
        f: impl FnOnce(&mut StoredNotice, i64),
    ) -> Result<(), GrantsError> {
        let _w = self.write.lock().await;
        let key = notice_key(Direction::Sent, &self.owner, id);
        let Some(Row::Notice(mut n)) = self.table.get(&key)? else {
            return Err(GrantsError::NotFound {
                what: "notice",
                id: short(id),
            });
        };
        f(&mut n, self.clock.now_unix_secs());
        self.commit(vec![(key, Row::Notice(n))]).await
    }

    /// Wakes the delivery task: a notice is waiting.
    pub fn outbox_nudged(&self) -> &tokio::sync::Notify {
        &self.outbox
    }

    /// A notice delivered by `caller` (the node authenticated by mTLS):
    /// checked (sender organisation, recipient, pinned key, signature),
    /// audited, stored once. Returns the stored notice; a replay returns the
    /// stored one and writes nothing (the flag says it was a replay).
    /// `catalog_key` is the key the catalog pinned for that node, if any.
    pub async fn receive_notice(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        body: &[u8],
        signature: &[u8],
        public_key: &[u8],
        catalog_key: Option<&str>,
    ) -> Result<(StoredNotice, bool), GrantsError> {
        let _w = self.write.lock().await;
        let checked = self.check_notice(caller, body, signature, public_key, catalog_key);
        let (n, pin) = match checked {
            Ok(v) => v,
            Err(refusal) => {
                let mut d = Draft::by(
                    caller,
                    "receive_notice",
                    "access-notice",
                    EntryKind::GrantChange {
                        op: GrantOp::NoticeRefused,
                    },
                );
                d.decision = Some(allmende_audit::Decision::Deny);
                d.policy_ids = vec![format!("notice-{}", refusal_id(&refusal))];
                d.peer_node = Some(caller.uri());
                audit.append(d).await?;
                return Err(GrantsError::NoticeRefused(refusal));
            }
        };
        let key = notice_key(Direction::Received, &n.owner, &n.id);
        if let Some(Row::Notice(stored)) = self.table.get(&key)? {
            return Ok((*stored, true));
        }
        let mut d = Draft::by(
            caller,
            "receive_notice",
            &n.dataset,
            EntryKind::GrantChange {
                op: GrantOp::NoticeReceived,
            },
        );
        if !n.purpose.is_empty() {
            d.purpose = Some(n.purpose.clone());
        }
        if !n.grant_id.is_empty() {
            d.grant_id = Some(n.grant_id.clone());
        }
        d.peer_node = Some(caller.uri());
        audit.append(d).await?;
        let stored = StoredNotice {
            body: n,
            direction: Direction::Received,
            delivered_at: None,
            attempts: 0,
            last_error: String::new(),
            from_node: caller.uri(),
            received_at: Some(self.clock.now_unix_secs()),
            signature: hex::encode(signature),
            public_key: hex::encode(public_key),
            order: self.next_order(),
        };
        let mut rows = vec![(key, Row::Notice(Box::new(stored.clone())))];
        if let Some(pin) = pin {
            rows.push(pin);
        }
        self.commit(rows).await?;
        Ok((stored, false))
    }

    /// The checks of [`Grants::receive_notice`]; the key to pin, if new.
    #[allow(clippy::type_complexity, reason = "private helper")]
    fn check_notice(
        &self,
        caller: &Principal,
        body: &[u8],
        signature: &[u8],
        public_key: &[u8],
        catalog_key: Option<&str>,
    ) -> Result<(NoticeBody, Option<(String, Row)>), NoticeRefusal> {
        let Subject::Node(node) = &caller.subject else {
            return Err(NoticeRefusal::NotANode);
        };
        if body.len() > MAX_NOTICE_BYTES {
            return Err(NoticeRefusal::Malformed(format!(
                "longer than {MAX_NOTICE_BYTES} bytes"
            )));
        }
        let n: NoticeBody = serde_json::from_slice(body)
            .map_err(|e| NoticeRefusal::Malformed(crate::text::shown(&e.to_string(), 200)))?;
        if n.owner != caller.organisation {
            return Err(NoticeRefusal::OtherOwner {
                claimed: short(&n.owner),
                caller: caller.organisation.clone(),
            });
        }
        if n.recipient != self.owner {
            return Err(NoticeRefusal::OtherRecipient(short(&n.recipient)));
        }
        if n.id.len() != 32 || !n.id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(NoticeRefusal::Malformed("the id is not 128-bit hex".into()));
        }
        let presented = hex::encode(public_key);
        let pin_key = node_key_key(&caller.organisation, node);
        let pinned = match self.table.get(&pin_key) {
            Ok(Some(Row::NodeKey(k))) => Some(k),
            _ => catalog_key.map(str::to_owned),
        };
        if let Some(pinned) = &pinned
            && *pinned != presented
        {
            return Err(NoticeRefusal::KeyChanged {
                pinned: pinned.clone(),
                presented,
            });
        }
        if !verify_notice(body, signature, public_key) {
            return Err(NoticeRefusal::BadSignature);
        }
        let pin = match self.table.get(&pin_key) {
            Ok(Some(Row::NodeKey(_))) => None,
            _ => Some((pin_key, Row::NodeKey(presented))),
        };
        Ok((n, pin))
    }
}

/// The policy id a refusal is audited with.
fn refusal_id(r: &NoticeRefusal) -> &'static str {
    match r {
        NoticeRefusal::NotANode => "not-a-node",
        NoticeRefusal::Malformed(_) => "malformed",
        NoticeRefusal::OtherOwner { .. } => "other-owner",
        NoticeRefusal::OtherRecipient(_) => "other-recipient",
        NoticeRefusal::KeyChanged { .. } => "key-changed",
        NoticeRefusal::BadSignature => "bad-signature",
    }
}
