//! `allmende.v1.Grants`: access requests, their approval by the owner's DPO
//! or steward, grants and their revocation.
//!
//! Every call is decided by Cedar through `PolicyPoint::authorize` (and so
//! audited, fail closed) before anything changes: `request_access` on the
//! dataset with the declared purpose, `approve_request` on the access request
//! (Approve and Reject), `revoke` on the grant, and `read_audit` on this
//! node's audit log for the DPO's views (ListRequests, GetRequest,
//! ListGrants). A replayed request or approval returns what the first one
//! stored without a new decision. The state changes themselves live in
//! `crate::grants` (audit, then one atomic commit).

use super::convert::grants as convert;
use super::principal;
use crate::catalog::Catalog;
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::grants::{AccessRequest, DatasetFacts, Grants};
use crate::pki::Principal;
use crate::policy::{Action, Resource};
use crate::registry::Registry;
use allmende_policies::{Classification, RequestState};
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `allmende.v1.Grants`.
#[derive(Debug, Clone)]
pub struct GrantsService {
    pub ctx: NodeCtx,
    pub grants: Arc<Grants>,
    pub registry: Arc<Registry>,
    /// Holds the node's signing key (approvals are signed with it).
    pub catalog: Arc<Catalog>,
}

impl GrantsService {
    /// The dataset facts a request is checked against.
    fn facts(&self, dataset: &str) -> Result<DatasetFacts, ApiError> {
        let reg = self.registry.registration(dataset)?.ok_or_else(|| {
            ApiError::NotFound(format!(
                "dataset `{}` is not served by this node; ask its owner's node",
                short(dataset)
            ))
        })?;
        let d = reg.dataset;
        Ok(DatasetFacts {
            public: d.classification == Classification::Public,
            columns: d.schema.fields.iter().map(|f| f.name.clone()).collect(),
            id: d.id,
        })
    }

    /// The DPO's views: `read_audit` on this node's audit log.
    async fn authorize_view(&self, p: &Principal, what: &str) -> Result<(), ApiError> {
        let log = self.ctx.policy.audit_log_id().to_owned();
        self.ctx
            .authorize(p, Action::ReadAudit, Resource::AuditLog(log), what)
            .await
    }

    /// Whether Cedar lets `p` see request `id` (not audited: a filter).
    fn may_view(&self, p: &Principal, id: &str) -> bool {
        let q = self.ctx.policy.request(
            p,
            Action::ViewRequest,
            Resource::AccessRequest(id.to_owned()),
            None,
        );
        self.ctx.policy.decide(p, &q).allowed
    }

    /// Decides `view_request` on this node's organisation for `p`, audited:
    /// its officers see the list of requests (even empty), nobody else.
    async fn authorize_request_list(&self, p: &Principal, label: &str) -> Result<(), ApiError> {
        let request = self.ctx.policy.request(
            p,
            Action::ViewRequest,
            self.ctx.policy.own_org_resource(),
            None,
        );
        self.ctx
            .policy
            .authorize(&self.ctx.audit, p, request, label)
            .await
            .map(|_| ())
    }

    /// Decides `view_request` on request `r` for `p`, audited.
    async fn authorize_view_request(
        &self,
        p: &Principal,
        r: &AccessRequest,
    ) -> Result<(), ApiError> {
        let request = self.ctx.policy.request(
            p,
            Action::ViewRequest,
            Resource::AccessRequest(r.id.clone()),
            None,
        );
        self.ctx
            .policy
            .authorize(&self.ctx.audit, p, request, &r.dataset)
            .await
            .map(|_| ())
    }

    /// Decides `approve_request` on request `id` for `p` (Approve, Reject).
    async fn authorize_decision(&self, p: &Principal, id: &str) -> Result<(), ApiError> {
        let label = match self.grants.get_request(id)? {
            Some(r) => r.dataset,
            None => format!("access-request/{}", short(id)),
        };
        let mut request = self.ctx.policy.request(
            p,
            Action::ApproveRequest,
            Resource::AccessRequest(id.to_owned()),
            None,
        );
        request.raw_personal_grants_at_owner = self.grants_at_owner(id);
        self.ctx
            .policy
            .authorize(&self.ctx.audit, p, request, &label)
            .await
            .map(|_| ())
    }

    /// Active raw personal grants the requesting organisation of request
    /// `id` holds at this owner (what `approve_request` is decided with).
    fn grants_at_owner(&self, id: &str) -> i64 {
        let Ok(Some(r)) = self.grants.get_request(id) else {
            return 0;
        };
        let now = self.ctx.clock.now_unix_secs();
        let owner = self.ctx.policy.own_org().to_owned();
        self.ctx
            .policy
            .with_entities(|e| e.raw_personal_grants_at_owner(&r.requester_org, &owner, now))
            .unwrap_or(i64::MAX)
    }

    /// A request with what the node says about approving it, for `p`.
    fn explained(&self, p: &Principal, r: &AccessRequest) -> pb::AccessRequestView {
        let personal = self
            .ctx
            .policy
            .with_entities(|e| e.dataset(&r.dataset).map(|d| d.contains_personal_data))
            .flatten();
        let mut approver = match personal {
            Some(true) => format!(
                "the data protection officer of `{}`: the dataset holds personal data",
                r.owner
            ),
            Some(false) => format!(
                "a data steward or the data protection officer of `{}`",
                r.owner
            ),
            None => "nobody: the dataset is no longer served".to_owned(),
        };
        if r.state == RequestState::Pending
            && let Ok(overdue) = self.grants.overdue_duties(&r.requester_org)
            && let Some(d) = overdue.first()
        {
            approver.push_str(&format!(
                "; blocked: `{}` has an overdue deletion duty `{}` (due {}), no new grant until it attests the deletion",
                d.org,
                d.id,
                crate::timefmt::format_unix_secs(d.due)
            ));
        }
        let decision = (r.state == RequestState::Pending).then(|| {
            let mut q = self.ctx.policy.request(
                p,
                Action::ApproveRequest,
                Resource::AccessRequest(r.id.clone()),
                None,
            );
            q.raw_personal_grants_at_owner = self.grants_at_owner(&r.id);
            self.ctx.policy.decide(p, &q)
        });
        let columns = if r.columns.is_empty() {
            "every column".to_owned()
        } else {
            r.columns
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let grant_would_allow = format!(
            "`{}` reads {columns} of `{}` for `{}` during {} days from approval; rows of data subjects without consent for that purpose never leave, subject and identifier columns are pseudonymised per grant",
            r.requester_org,
            r.dataset,
            r.purpose.as_str(),
            r.days
        );
        convert::request_view(
            r,
            Some(convert::Explanation {
                approver,
                decision,
                grant_would_allow,
            }),
        )
    }
}

/// User text cut for a message.
fn short(s: &str) -> String {
    let mut s = s.to_owned();
    crate::audit::bound_label(&mut s);
    s
}

fn check_request(r: &pb::RequestAccessRequest) -> Result<(), ApiError> {
    use super::limits::{MAX_TOKEN_BYTES, check_id, check_ids, check_len};
    check_id("dataset", &r.dataset)?;
    check_id("purpose", &r.purpose)?;
    check_ids("columns", &r.columns)?;
    check_id("idempotency_key", &r.idempotency_key)?;
    check_len("justification", &r.justification, MAX_TOKEN_BYTES)
}

fn request_state(s: &str) -> Result<Option<RequestState>, ApiError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<RequestState>()
        .map(Some)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

fn grant_state(s: &str) -> Result<Option<String>, ApiError> {
    match s {
        "" => Ok(None),
        "active" | "revoked" | "expired" => Ok(Some(s.to_owned())),
        other => Err(ApiError::InvalidArgument(format!(
            "unknown grant state `{}`; expected one of: active, revoked, expired",
            short(other)
        ))),
    }
}

#[tonic::async_trait]
impl pb::grants_server::Grants for GrantsService {
    async fn request_access(
        &self,
        req: Request<pb::RequestAccessRequest>,
    ) -> Result<Response<pb::AccessRequestView>, Status> {
        let p = principal(&req)?;
        check_request(req.get_ref())?;
        let new = convert::new_request(req.into_inner())?;
        let facts = self.facts(&new.dataset)?;
        self.grants.check(&new, &facts).map_err(ApiError::from)?;
        // A replay returns the stored request without a new decision.
        if self
            .grants
            .replayed_request(&p, &new.idempotency_key)
            .map_err(ApiError::from)?
            .is_none()
        {
            let request = self.ctx.policy.request(
                &p,
                Action::RequestAccess,
                Resource::Dataset(facts.id.clone()),
                new.purpose,
            );
            self.ctx
                .policy
                .authorize(&self.ctx.audit, &p, request, &facts.id)
                .await?;
        }
        let r = self
            .grants
            .request(&self.ctx.audit, &p, &new, &facts)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::request_view(&r, None)))
    }

    async fn list_requests(
        &self,
        req: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        let p = principal(&req)?;
        let state = request_state(&req.get_ref().state)?;
        let all = self.grants.list_requests(state).map_err(ApiError::from)?;
        // Each request is listed only if Cedar lets the caller see it
        // (`view_request`: the owner's DPO, a steward for non-personal
        // data, the requester); each one shown is an audited decision.
        let mut list = Vec::new();
        for r in &all {
            if self.may_view(&p, &r.id) {
                self.authorize_view_request(&p, r).await?;
                list.push(self.explained(&p, r));
            }
        }
        if list.is_empty() {
            // Nothing to show: the node's officers get an empty list, anyone
            // else a denial (both audited).
            self.authorize_request_list(&p, "access-requests").await?;
        }
        Ok(Response::new(convert::requests(list)))
    }

    async fn get_request(
        &self,
        req: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::AccessRequestView>, Status> {
        let p = principal(&req)?;
        let id = &req.get_ref().request_id;
        super::limits::check_id("request_id", id)?;
        let Some(r) = self.grants.get_request(id).map_err(ApiError::from)? else {
            // Whether a request exists is for the node's officers to learn;
            // anyone else is denied.
            self.authorize_request_list(&p, &format!("access-request/{}", short(id)))
                .await?;
            return Err(
                ApiError::NotFound(format!("no access request `{id}` on this node")).into(),
            );
        };
        self.authorize_view_request(&p, &r).await?;
        Ok(Response::new(self.explained(&p, &r)))
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::GrantView>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        super::limits::check_id("request_id", &r.request_id)?;
        super::limits::check_id("request_hash", &r.request_hash)?;
        let replay = self
            .grants
            .replayed_approval(&p, &r.request_id, &r.request_hash)
            .map_err(ApiError::from)?;
        let g = match replay {
            Some(g) => g,
            None => {
                self.authorize_decision(&p, &r.request_id).await?;
                self.grants
                    .approve_with(
                        &self.ctx.audit,
                        &p,
                        self.catalog.signer(),
                        &r.request_id,
                        &r.request_hash,
                        &r.note,
                        convert::obligations(&r),
                    )
                    .await
                    .map_err(ApiError::from)?
            }
        };
        Ok(Response::new(convert::grant_view(
            &g,
            self.ctx.clock.now_unix_secs(),
        )))
    }

    async fn reject(
        &self,
        req: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::AccessRequestView>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        super::limits::check_id("request_id", &r.request_id)?;
        super::limits::check_id("request_hash", &r.request_hash)?;
        self.authorize_decision(&p, &r.request_id).await?;
        let out = self
            .grants
            .reject(
                &self.ctx.audit,
                &p,
                &r.request_id,
                &r.request_hash,
                &r.reason,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::request_view(&out, None)))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::GrantView>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        super::limits::check_id("grant_id", &r.grant_id)?;
        let label = match self.grants.get_grant(&r.grant_id).map_err(ApiError::from)? {
            Some(g) => g.dataset,
            None => format!("grant/{}", r.grant_id),
        };
        self.ctx
            .authorize(
                &p,
                Action::Revoke,
                Resource::Grant(r.grant_id.clone()),
                &label,
            )
            .await?;
        let g = self
            .grants
            .revoke(&self.ctx.audit, &p, &r.grant_id, &r.reason)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::grant_view(
            &g,
            self.ctx.clock.now_unix_secs(),
        )))
    }

    async fn list_grants(
        &self,
        req: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let p = principal(&req)?;
        let state = grant_state(&req.get_ref().state)?;
        self.authorize_view(&p, "grants").await?;
        let list = self
            .grants
            .list_grants(state.as_deref())
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::grants(
            &list,
            self.ctx.clock.now_unix_secs(),
        )))
    }

    async fn list_notices(
        &self,
        req: Request<pb::ListNoticesRequest>,
    ) -> Result<Response<pb::ListNoticesResponse>, Status> {
        let p = principal(&req)?;
        let direction = convert::direction(&req.get_ref().direction)?;
        self.authorize_view(&p, "access-notices").await?;
        let list = self
            .grants
            .list_notices(direction)
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::notices(&list)))
    }

    async fn deliver_notice(
        &self,
        req: Request<pb::DeliverNoticeRequest>,
    ) -> Result<Response<pb::DeliverNoticeResponse>, Status> {
        let p = principal(&req)?;
        super::federation::authorize_metadata(&self.ctx, &p, "deliver-notice").await?;
        let r = req.into_inner();
        // The key the catalog pinned for the sending node, if it met it.
        let pinned = self
            .catalog
            .peers()
            .into_iter()
            .find(|s| s.organisation == p.organisation && s.node == p.subject.name())
            .map(|s| s.public_key_hex);
        let (n, replay) = self
            .grants
            .receive_notice(
                &self.ctx.audit,
                &p,
                &r.body,
                &r.signature,
                &r.public_key,
                pinned.as_deref(),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::delivered(&n.body.id, replay)))
    }

    async fn list_duties(
        &self,
        req: Request<pb::ListDutiesRequest>,
    ) -> Result<Response<pb::ListDutiesResponse>, Status> {
        let p = principal(&req)?;
        let org = req.get_ref().org.clone();
        if !org.is_empty() {
            super::limits::check_id("org", &org)?;
        }
        self.authorize_view(&p, "deletion-duties").await?;
        let list = self
            .grants
            .list_duties((!org.is_empty()).then_some(org.as_str()))
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::duties(
            &list,
            self.ctx.clock.now_unix_secs(),
        )))
    }

    async fn attest_deletion(
        &self,
        req: Request<pb::AttestDeletionRequest>,
    ) -> Result<Response<pb::DutyView>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        super::limits::check_id("duty_id", &r.duty_id)?;
        // Decided on the grant the duty comes from, or for an erasure's
        // duty the grant the recipient received the rows under (an unknown
        // id on a grant of that name, which the policies deny: unknown
        // entity).
        let duty = self.grants.find_duty(&r.duty_id).map_err(ApiError::from)?;
        let grant = match &duty {
            Some(d) => d.decided_on().map(str::to_owned).ok_or_else(|| {
                ApiError::FailedPrecondition(format!(
                    "duty `{}` names no grant to decide its attestation on",
                    d.id
                ))
            })?,
            None => r.duty_id.clone(),
        };
        let label = duty
            .as_ref()
            .map_or_else(|| format!("grant/{grant}"), |d| d.dataset.clone());
        self.ctx
            .authorize(&p, Action::AttestDeletion, Resource::Grant(grant), &label)
            .await?;
        let d = self
            .grants
            .attest_deletion(&self.ctx.audit, &p, &r.duty_id, &r.note)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::duty_view(
            &d,
            self.ctx.clock.now_unix_secs(),
        )))
    }
}
