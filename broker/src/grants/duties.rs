//! Deletion duties: what a recipient organisation must delete, and by when.
//!
//! - Every grant over personal data creates a duty for the grantee
//!   organisation, due at the grant's `delete_after`, in the approval's
//!   batch. An erasure creates duties not tied to a grant
//!   ([`Grants::add_duty`] with [`DutyReason::Erasure`]).
//! - A user of the obligated organisation attests the deletion
//!   ([`Grants::attest_deletion`]): audited (`GrantChange/deletion_attested`),
//!   then stored with the caller's identity URI (signed by nobody but that
//!   certificate's holder on the mTLS connection).
//! - A duty past its due time and not attested is overdue
//!   ([`Grants::overdue_duties`]); approvals of new grants for that
//!   organisation are refused while one is (decided at approval time, no
//!   timer needed).

use super::{Grants, GrantsError, Row, random_id, short};
use crate::audit::{AuditLog, Draft};
use crate::pki::Principal;
use allmende_audit::{EntryKind, GrantOp};
use serde::{Deserialize, Serialize};

/// Why a duty exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case", deny_unknown_fields)]
pub enum DutyReason {
    /// Data received under a grant, to be deleted at its `delete_after`.
    Grant { grant_id: String },
    /// A data subject's erasure; the subject only as a keyed reference
    /// (the pseudonym the recipient received under `grant_id`).
    Erasure {
        subject_ref: String,
        /// The grant the recipient received the subject's rows under;
        /// empty if none (duties stored before it was recorded).
        #[serde(default)]
        grant_id: String,
    },
}

/// An attestation of deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    pub at: i64,
    /// Identity URI of the attesting user.
    pub by: String,
    pub note: String,
}

/// A deletion duty of one organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Duty {
    pub id: String,
    /// The obligated organisation.
    pub org: String,
    pub dataset: String,
    pub reason: DutyReason,
    /// Epoch seconds.
    pub due: i64,
    pub created_at: i64,
    pub attestation: Option<Attestation>,
}

impl Duty {
    /// `attested`, `overdue` or `open` at `now`.
    pub fn state_at(&self, now: i64) -> &'static str {
        if self.attestation.is_some() {
            "attested"
        } else if now > self.due {
            "overdue"
        } else {
            "open"
        }
    }

    /// The grant the duty comes from, if any.
    pub fn grant_id(&self) -> Option<&str> {
        match &self.reason {
            DutyReason::Grant { grant_id } => Some(grant_id),
            DutyReason::Erasure { .. } => None,
        }
    }

    /// The grant an attestation is decided on: the grant the duty comes
    /// from, or the one an erasure's recipient received the rows under.
    pub fn decided_on(&self) -> Option<&str> {
        match &self.reason {
            DutyReason::Grant { grant_id } => Some(grant_id),
            DutyReason::Erasure { grant_id, .. } => {
                (!grant_id.is_empty()).then_some(grant_id.as_str())
            }
        }
    }
}

pub(super) fn duty_key(id: &str) -> String {
    format!("duty/{id}")
}

impl Grants {
    /// A new duty row (not stored).
    pub(super) fn new_duty(
        &self,
        reason: DutyReason,
        org: &str,
        dataset: &str,
        due: i64,
    ) -> Result<Duty, GrantsError> {
        Ok(Duty {
            id: random_id()?,
            org: org.to_owned(),
            dataset: dataset.to_owned(),
            reason,
            due,
            created_at: self.clock.now_unix_secs(),
            attestation: None,
        })
    }

    /// The `GrantChange/duty_created` entry of a duty on `dataset`, by
    /// this node, naming `grant` if any.
    fn duty_created(&self, dataset: &str, grant: Option<&str>) -> Draft {
        let mut d = Draft::new(
            &self.owner,
            "create_duty",
            dataset,
            EntryKind::GrantChange {
                op: GrantOp::DutyCreated,
            },
        );
        d.grant_id = grant.map(str::to_owned);
        d
    }

    /// Creates a deletion duty for `org` on `dataset` due at `due` (epoch
    /// seconds), not tied to a grant (e.g. an erasure): audited
    /// (`GrantChange/duty_created` by this node), then stored.
    pub async fn add_duty(
        &self,
        audit: &AuditLog,
        reason: DutyReason,
        org: &str,
        dataset: &str,
        due: i64,
    ) -> Result<Duty, GrantsError> {
        let _w = self.write.lock().await;
        let duty = self.new_duty(reason, org, dataset, due)?;
        audit
            .append(self.duty_created(dataset, duty.grant_id()))
            .await?;
        self.save_duty(duty).await
    }

    /// Stores `duty` durably (after its audit entry) and returns it.
    async fn save_duty(&self, duty: Duty) -> Result<Duty, GrantsError> {
        self.commit(vec![(
            duty_key(&duty.id),
            Row::Duty(Box::new(duty.clone())),
        )])
        .await?;
        Ok(duty)
    }

    /// A data subject's erasure at one recipient: the subject's rows
    /// released under grant `grant_id` must be deleted by `due`. Audited
    /// (`GrantChange/duty_created`, naming the grant), then the deletion
    /// duty of the grantee organisation and the signed `Erasure` notice to
    /// its node are committed in one batch. `subject_ref` is the pseudonym
    /// the grantee received, never the subject id. None for an unknown
    /// grant or one of this node's own organisation.
    pub async fn erasure_at_recipient(
        &self,
        audit: &AuditLog,
        grant_id: &str,
        subject_ref: &str,
        due: i64,
    ) -> Result<Option<(Duty, String)>, GrantsError> {
        let Some(g) = self.get_grant(grant_id)? else {
            return Ok(None);
        };
        if g.grantee_org == self.owner {
            return Ok(None);
        }
        let _w = self.write.lock().await;
        let reason = DutyReason::Erasure {
            subject_ref: subject_ref.to_owned(),
            grant_id: g.id.clone(),
        };
        // A recipient already told (an erasure asked again, or one that
        // stopped half-way and is retried) is not told twice.
        if let Some(told) = self.erasure_told(&reason)? {
            return Ok(Some(told));
        }
        let duty = self.new_duty(reason, &g.grantee_org, &g.dataset, due)?;
        let mut rows = self.notice_rows(
            &g,
            super::notices::NoticeKind::Erasure {
                subject_ref: subject_ref.to_owned(),
                due,
            },
        )?;
        let notice_id = match rows.first() {
            Some((_, Row::Notice(n))) => n.body.id.clone(),
            _ => String::new(),
        };
        audit
            .append(self.duty_created(&g.dataset, Some(&g.id)))
            .await?;
        rows.push((duty_key(&duty.id), Row::Duty(Box::new(duty.clone()))));
        self.commit(rows).await?;
        self.outbox.notify_one();
        Ok(Some((duty, notice_id)))
    }

    /// The duty and the notice id of an erasure already told to its
    /// recipient (same subject reference, same grant).
    fn erasure_told(&self, reason: &DutyReason) -> Result<Option<(Duty, String)>, GrantsError> {
        let DutyReason::Erasure {
            subject_ref,
            grant_id,
        } = reason
        else {
            return Ok(None);
        };
        let Some(duty) = self
            .list_duties(None)?
            .into_iter()
            .find(|d| &d.reason == reason)
        else {
            return Ok(None);
        };
        let notice_id = self
            .rows(|r| match r {
                Row::Notice(n)
                    if n.direction == super::notices::Direction::Sent
                        && &n.body.grant_id == grant_id
                        && matches!(&n.body.kind,
                            super::notices::NoticeKind::Erasure { subject_ref: s, .. }
                                if s == subject_ref) =>
                {
                    Some(n.body.id.clone())
                }
                _ => None,
            })?
            .into_iter()
            .next()
            .unwrap_or_default();
        Ok(Some((duty, notice_id)))
    }

    /// Every duty, optionally of one organisation, by due time.
    pub fn list_duties(&self, org: Option<&str>) -> Result<Vec<Duty>, GrantsError> {
        let mut out = self.rows(|r| match r {
            Row::Duty(d) if org.is_none_or(|o| d.org == o) => Some(*d),
            _ => None,
        })?;
        out.sort_by(|a, b| a.due.cmp(&b.due).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The duties of `org` overdue now.
    pub fn overdue_duties(&self, org: &str) -> Result<Vec<Duty>, GrantsError> {
        let now = self.clock.now_unix_secs();
        let mut out = self.list_duties(Some(org))?;
        out.retain(|d| d.state_at(now) == "overdue");
        Ok(out)
    }

    /// The duty named by `id`: a duty id, or the grant id it comes from.
    pub fn find_duty(&self, id: &str) -> Result<Option<Duty>, GrantsError> {
        if let Some(Row::Duty(d)) = self.table.get(&duty_key(id))? {
            return Ok(Some(*d));
        }
        Ok(self
            .list_duties(None)?
            .into_iter()
            .find(|d| d.grant_id() == Some(id)))
    }

    /// `caller` attests the deletion its organisation owes under duty `id`
    /// (a duty id or a grant id; decided before). Only a user of the
    /// obligated organisation attests — for a grant's duty its DPO or the
    /// grantee user — (else `PERMISSION_DENIED`, audited with policy id
    /// `duty-other-org`); an attested duty is not attested again (the
    /// stored attestation is returned).
    pub async fn attest_deletion(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        id: &str,
        note: &str,
    ) -> Result<Duty, GrantsError> {
        super::text("the note", note)?;
        let _w = self.write.lock().await;
        let mut duty = self.find_duty(id)?.ok_or_else(|| GrantsError::NotFound {
            what: "deletion duty",
            id: short(id),
        })?;
        let mut entry = Draft::by(
            caller,
            "attest_deletion",
            &duty.dataset,
            EntryKind::GrantChange {
                op: GrantOp::DeletionAttested,
            },
        );
        entry.grant_id = duty.grant_id().map(str::to_owned);
        // A user of the obligated organisation; for a grant's duty, its DPO
        // or the grantee user who received the data.
        let grantee_user = match duty.decided_on() {
            Some(g) => self.get_grant(g)?.map(|g| g.grantee_user),
            None => None,
        };
        let allowed = caller.organisation == duty.org
            && matches!(caller.subject, crate::pki::Subject::User(_))
            && (caller.role == Some(crate::pki::Role::Dpo)
                || grantee_user.is_none_or(|u| u == caller.uri()));
        if !allowed {
            entry.kind = EntryKind::Decision;
            entry.decision = Some(allmende_audit::Decision::Deny);
            entry.policy_ids = vec!["duty-other-org".into()];
            audit.append(entry).await?;
            return Err(GrantsError::NotYourDuty {
                id: duty.id,
                org: duty.org,
            });
        }
        if duty.attestation.is_some() {
            return Ok(duty);
        }
        duty.attestation = Some(Attestation {
            at: self.clock.now_unix_secs(),
            by: caller.uri(),
            note: note.to_owned(),
        });
        audit.append(entry).await?;
        self.save_duty(duty).await
    }
}
