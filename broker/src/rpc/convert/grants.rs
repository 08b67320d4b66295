//! `allmende.v1.Grants` messages from access requests and grants.

use crate::grants::{AccessRequest, Grant, NewRequest};
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
