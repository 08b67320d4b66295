//! `allmende.v1.Policy`: explain decisions, reload, list the policies.

use super::convert::policy as convert;
use super::limits::check_id;
use super::principal;
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::policy::{Action, Purpose, Resource};
use allmende_proto::v1 as pb;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct PolicyService {
    pub ctx: NodeCtx,
}

/// Parses a resource named on the wire.
pub fn parse_resource(kind: &str, id: &str) -> Result<Resource, ApiError> {
    if id.is_empty() && kind != "federation" {
        return Err(ApiError::InvalidArgument("`resource_id` is empty".into()));
    }
    Ok(match kind {
        "dataset" => Resource::Dataset(id.into()),
        "grant" => Resource::Grant(id.into()),
        "access_request" => Resource::AccessRequest(id.into()),
        "data_subject" => Resource::DataSubject(id.into()),
        "obligation" => Resource::Obligation(id.into()),
        "audit_log" => Resource::AuditLog(id.into()),
        "federation" => Resource::Federation(id.into()),
        other => {
            return Err(ApiError::InvalidArgument(format!(
                "unknown resource type `{other}`, expected one of dataset, grant, access_request, data_subject, obligation, audit_log, federation"
            )));
        }
    })
}

/// Parses a declared purpose strictly (no case or spelling variants).
pub fn parse_purpose(s: &str) -> Result<Option<Purpose>, ApiError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<Purpose>()
        .map(Some)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

/// Parses an action name strictly.
pub fn parse_action(s: &str) -> Result<Action, ApiError> {
    s.parse::<Action>()
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

#[tonic::async_trait]
impl pb::policy_server::Policy for PolicyService {
    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        check_id("action", &r.action)?;
        check_id("resource_type", &r.resource_type)?;
        check_id("resource_id", &r.resource_id)?;
        check_id("purpose", &r.purpose)?;
        check_id("grant_id", &r.grant_id)?;
        let action = parse_action(&r.action)?;
        let mut resource_id = r.resource_id.clone();
        if r.resource_type == "federation" && resource_id.is_empty() {
            resource_id = self.ctx.federation.clone();
        }
        let resource = parse_resource(&r.resource_type, &resource_id)?;
        let purpose = parse_purpose(&r.purpose)?;
        let mut request = self.ctx.policy.request(&p, action, resource, purpose);
        if !r.grant_id.is_empty() {
            request.grant = Some(r.grant_id);
        }
        let d = self.ctx.policy.decide(&p, &request);
        Ok(Response::new(convert::explain_response(&d)))
    }

    async fn reload(
        &self,
        req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let p = principal(&req)?;
        let ctx = &self.ctx;
        ctx.authorize(
            &p,
            Action::ManageFederation,
            Resource::Federation(ctx.federation.clone()),
            &format!("federation/{}", ctx.federation),
        )
        .await?;
        let report = ctx.policy.reload().await.map_err(|e| {
            ApiError::FailedPrecondition(format!(
                "policy set refused, the old one keeps serving: {e}"
            ))
        })?;
        ctx.policy
            .record_reload(&ctx.audit, Some(&p), &report.hash)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::reload_response(report)))
    }

    async fn get_policy_set(
        &self,
        req: Request<pb::GetPolicySetRequest>,
    ) -> Result<Response<pb::GetPolicySetResponse>, Status> {
        let _p = principal(&req)?;
        let bundle = self.ctx.policy.bundle();
        Ok(Response::new(convert::policy_set_response(
            &bundle,
            self.ctx.policy.origin(),
        )))
    }
}
