//! `allmende.v1.Grants` messages from access requests and grants.

use crate::grants::{
    AccessRequest, Direction, Duty, DutyReason, Grant, NewRequest, NoticeKind, ObligationsAsked,
    StoredNotice,
};
use allmende_policies::{Decision, Purpose};
use allmende_proto::v1 as pb;

/// A request for access in domain terms (the purpose parsed strictly).
pub fn new_request(r: pb::RequestAccessRequest) -> Result<NewRequest, crate::error::ApiError> {
    let purpose = if r.purpose.is_empty() {
        None
    } else {
        Some(
            r.purpose
                .parse::<Purpose>()
                .map_err(|e| crate::error::ApiError::InvalidArgument(e.to_string()))?,
        )
    };
    Ok(NewRequest {
        dataset: r.dataset,
        purpose,
        columns: r.columns,
        days: r.days,
        justification: r.justification,
        idempotency_key: r.idempotency_key,
    })
}

/// What the node says about approving a request: who must approve, whether
/// the caller may (the decision and its policies), what the grant allows.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub approver: String,
    pub decision: Option<Decision>,
    pub grant_would_allow: String,
}

/// The view of a request, with the explanation if there is one.
pub fn request_view(r: &AccessRequest, explanation: Option<Explanation>) -> pb::AccessRequestView {
    pb::AccessRequestView {
        id: r.id.clone(),
        state: r.state.as_str().to_owned(),
        request_hash: r.hash.clone(),
        owner: r.owner.clone(),
        dataset: r.dataset.clone(),
        purpose: r.purpose.as_str().to_owned(),
        columns: r.columns.clone(),
        days: r.days,
        justification: r.justification.clone(),
        requester: r.requester.clone(),
        requester_org: r.requester_org.clone(),
        requested_at_unix: r.requested_at,
        decided_at_unix: r.decision.as_ref().map_or(0, |d| d.at),
        decided_by: r
            .decision
            .as_ref()
            .map(|d| d.by.clone())
            .unwrap_or_default(),
        decision_note: r
            .decision
            .as_ref()
            .map(|d| d.note.clone())
            .unwrap_or_default(),
        grant_id: r.grant_id.clone().unwrap_or_default(),
        explanation: explanation.map(|x| pb::PolicyExplanation {
            approver: x.approver,
            may_approve: x.decision.as_ref().is_some_and(|d| d.allowed),
            policies: x
                .decision
                .iter()
                .flat_map(|d| d.deciding.iter())
                .map(|p| pb::ExplainedPolicy {
                    id: p.id.clone(),
                    reason_en: p.reason_en.clone(),
                    reason_de: p.reason_de.clone(),
                })
                .collect(),
            grant_would_allow: x.grant_would_allow,
        }),
    }
}

/// The view of a grant at `now`.
pub fn grant_view(g: &Grant, now: i64) -> pb::GrantView {
    pb::GrantView {
        id: g.id.clone(),
        state: g.state_at(now).to_owned(),
        request_id: g.request_id.clone(),
        request_hash: g.request_hash.clone(),
        dataset: g.dataset.clone(),
        owner: g.owner.clone(),
        purpose: g.purpose.as_str().to_owned(),
        columns: g.columns.clone(),
        grantee_org: g.grantee_org.clone(),
        grantee_user: g.grantee_user.clone(),
        not_before_unix: g.not_before,
        not_after_unix: g.not_after,
        approved_by: g.approved_by.clone(),
        approved_at_unix: g.approved_at,
        approval_signature: g.signature.clone(),
        signer_public_key: g.signer_public_key.clone(),
        revoked_at_unix: g.revocation.as_ref().map_or(0, |d| d.at),
        revoked_by: g
            .revocation
            .as_ref()
            .map(|d| d.by.clone())
            .unwrap_or_default(),
        revocation_reason: g
            .revocation
            .as_ref()
            .map(|d| d.note.clone())
            .unwrap_or_default(),
        expired_at_unix: g.expired_at.unwrap_or_default(),
        delete_after_unix: g.delete_after(),
        notify_on_use: g.obligations.is_some_and(|o| o.notify_on_use),
        aggregate_only: g.obligations.is_some_and(|o| o.aggregate_only),
    }
}

/// The obligations an approver asks for.
pub fn obligations(r: &pb::ApproveRequest) -> ObligationsAsked {
    ObligationsAsked {
        delete_after: (r.delete_after_unix != 0).then_some(r.delete_after_unix),
        notify_on_use: r.notify_on_use,
        aggregate_only: r.aggregate_only,
    }
}

/// A notice's direction filter (empty: every direction).
pub fn direction(s: &str) -> Result<Option<Direction>, crate::error::ApiError> {
    match s {
        "" => Ok(None),
        "sent" => Ok(Some(Direction::Sent)),
        "received" => Ok(Some(Direction::Received)),
        "own" => Ok(Some(Direction::Own)),
        other => Err(crate::error::ApiError::InvalidArgument(format!(
            "unknown notice direction `{}`; expected one of: sent, received, own",
            crate::text::shown(other, 64)
        ))),
    }
}

/// The view of a stored notice.
pub fn notice_view(n: &StoredNotice) -> pb::NoticeView {
    let b = &n.body;
    let mut v = pb::NoticeView {
        id: b.id.clone(),
        direction: n.direction.as_str().to_owned(),
        state: n.state().to_owned(),
        kind: b.kind.name().to_owned(),
        owner: b.owner.clone(),
        recipient: b.recipient.clone(),
        grant_id: b.grant_id.clone(),
        dataset: b.dataset.clone(),
        purpose: b.purpose.clone(),
        grantee_user: b.grantee_user.clone(),
        at_unix: b.at,
        attempts: n.attempts,
        last_error: n.last_error.clone(),
        delivered_at_unix: n.delivered_at.unwrap_or_default(),
        from_node: n.from_node.clone(),
        body_json: serde_json::to_string(b).unwrap_or_default(),
        ..Default::default()
    };
    match &b.kind {
        NoticeKind::DataReleased {
            rows,
            columns,
            outcome,
            audit_sequence,
        } => {
            v.rows = *rows;
            v.columns = columns.clone();
            v.outcome = outcome.clone();
            v.audit_sequence = *audit_sequence;
        }
        NoticeKind::GrantCreated { columns, .. } => v.columns = columns.clone(),
        NoticeKind::GrantRevoked { reason } => v.reason = reason.clone(),
        NoticeKind::Erasure { subject_ref, due } => {
            v.subject_ref = subject_ref.clone();
            v.due_unix = *due;
        }
        NoticeKind::GrantExpired => {}
    }
    v
}

/// A list of notices.
pub fn notices(list: &[StoredNotice]) -> pb::ListNoticesResponse {
    pb::ListNoticesResponse {
        notices: list.iter().map(notice_view).collect(),
    }
}

/// The receiver's acknowledgement.
pub fn delivered(id: &str, already_stored: bool) -> pb::DeliverNoticeResponse {
    pb::DeliverNoticeResponse {
        notice_id: id.to_owned(),
        already_stored,
    }
}

/// The view of a duty at `now`.
pub fn duty_view(d: &Duty, now: i64) -> pb::DutyView {
    let (reason, grant_id) = match &d.reason {
        DutyReason::Grant { grant_id } => ("grant", grant_id.clone()),
        DutyReason::Erasure { grant_id, .. } => ("erasure", grant_id.clone()),
    };
    pb::DutyView {
        id: d.id.clone(),
        org: d.org.clone(),
        dataset: d.dataset.clone(),
        reason: reason.to_owned(),
        grant_id,
        due_unix: d.due,
        state: d.state_at(now).to_owned(),
        attested_at_unix: d.attestation.as_ref().map_or(0, |a| a.at),
        attested_by: d
            .attestation
            .as_ref()
            .map(|a| a.by.clone())
            .unwrap_or_default(),
        note: d
            .attestation
            .as_ref()
            .map(|a| a.note.clone())
            .unwrap_or_default(),
    }
}

/// A list of duties at `now`.
pub fn duties(list: &[Duty], now: i64) -> pb::ListDutiesResponse {
    pb::ListDutiesResponse {
        duties: list.iter().map(|d| duty_view(d, now)).collect(),
    }
}

/// A list of requests.
pub fn requests(list: Vec<pb::AccessRequestView>) -> pb::ListRequestsResponse {
    pb::ListRequestsResponse { requests: list }
}

/// A list of grants at `now`.
pub fn grants(list: &[Grant], now: i64) -> pb::ListGrantsResponse {
    pb::ListGrantsResponse {
        grants: list.iter().map(|g| grant_view(g, now)).collect(),
    }
}
