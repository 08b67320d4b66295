//! `allmende.v1.Audit`: DPO queries and exports, citizens' own accesses,
//! log verification, and the witness protocol between nodes.

use super::convert;
use super::principal;
use crate::audit::QueryFilter;
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::pki::{Principal, Subject};
use crate::policy::{Action, Resource};
use allmende_audit::{Decision, SignedNote, VerifierKey};
use allmende_proto::v1 as pb;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct AuditService {
    pub ctx: NodeCtx,
}

impl AuditService {
    async fn authorize_log(&self, p: &Principal, action: Action) -> Result<(), ApiError> {
        let id = self.ctx.policy.audit_log_id().to_owned();
        let label = format!("audit-log/{id}");
        self.ctx
            .authorize(p, action, Resource::AuditLog(id), &label)
            .await
    }

    /// Witness protocol calls are decided on every call but, when allowed,
    /// not written one by one: each entry would need a new checkpoint to be
    /// witnessed, and the log would never come to rest. Denials are audited
    /// (through `authorize`, so a denial that cannot be audited is
    /// `UNAVAILABLE`, like every other call).
    async fn authorize_witness(&self, p: &Principal, action: Action) -> Result<(), ApiError> {
        let ctx = &self.ctx;
        let id = ctx.policy.audit_log_id().to_owned();
        let request = ctx
            .policy
            .request(p, action, Resource::AuditLog(id.clone()), None);
        if ctx.policy.decide(p, &request).allowed {
            return Ok(());
        }
        ctx.policy
            .authorize(&ctx.audit, p, request, &format!("audit-log/{id}"))
            .await
            .map(|_| ())
    }
}

fn page(limit: u32) -> usize {
    if limit == 0 {
        100
    } else {
        limit.min(1000) as usize
    }
}

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    async fn query(
        &self,
        req: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<pb::AuditQueryResponse>, Status> {
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        super::limits::check_id("organisation", &req.get_ref().organisation)?;
        super::limits::check_id("user", &req.get_ref().user)?;
        super::limits::check_id("purpose", &req.get_ref().purpose)?;
        super::limits::check_id("decision", &req.get_ref().decision)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        let decision = match r.decision.as_str() {
            "" => None,
            "allow" => Some(Decision::Allow),
            "deny" => Some(Decision::Deny),
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "decision `{other}` is not `allow` or `deny`"
                ))
                .into());
            }
        };
        let user = if r.user.is_empty() {
            None
        } else {
            let (org, u) = r.user.split_once('/').ok_or_else(|| {
                ApiError::InvalidArgument(format!("user `{}` is not `<org>/<user>`", r.user))
            })?;
            Some((org.to_owned(), u.to_owned()))
        };
        if !r.purpose.is_empty() {
            super::policy::parse_purpose(&r.purpose)?;
        }
        self.authorize_log(&p, Action::ReadAudit).await?;
        let nonempty = |s: String| (!s.is_empty()).then_some(s);
        let filter = QueryFilter {
            dataset: nonempty(r.dataset),
            org: nonempty(r.organisation),
            user,
            purpose: nonempty(r.purpose),
            decision,
            subject: None,
            from_ms: (r.from_ms > 0).then_some(r.from_ms),
            to_ms: (r.to_ms > 0).then_some(r.to_ms),
            after: r.page_after,
            limit: page(r.limit),
        };
        let result = self.ctx.audit.query(&filter).map_err(ApiError::from)?;
        Ok(Response::new(result.into()))
    }

    async fn my_accesses(
        &self,
        req: Request<pb::MyAccessesRequest>,
    ) -> Result<Response<pb::AuditQueryResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let Subject::User(user) = &p.subject else {
            return Err(
                ApiError::PermissionDenied("only people have an access history".into()).into(),
            );
        };
        // A person is data subject `user` of this node's organisation only
        // with a citizen certificate of this organisation for exactly that
        // id: Cedar decides on the subject entity `<this org>/<user>`, whose
        // account a certificate of another organisation never is.
        let ctx = &self.ctx;
        ctx.authorize(
            &p,
            Action::ReadAudit,
            ctx.policy.subject_resource(user),
            &format!(
                "data-subject/{}",
                ctx.audit.pseudonym(&p.organisation, user)
            ),
        )
        .await?;
        let filter = QueryFilter {
            subject: Some(user.clone()),
            after: r.page_after,
            limit: page(r.limit),
            ..Default::default()
        };
        let result = ctx.audit.query(&filter).map_err(ApiError::from)?;
        Ok(Response::new(result.into()))
    }

    async fn export(
        &self,
        req: Request<pb::AuditExportRequest>,
    ) -> Result<Response<pb::AuditExportResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        if r.to_ms != 0 && r.to_ms <= r.from_ms {
            return Err(ApiError::InvalidArgument("`to` must be after `from`".into()).into());
        }
        self.authorize_log(&p, Action::ExportAudit).await?;
        // Covers everything written so far, including this export's decision.
        let export = self
            .ctx
            .audit
            .export(r.from_ms, (r.to_ms != 0).then_some(r.to_ms))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(export.into()))
    }

    async fn status(
        &self,
        req: Request<pb::AuditStatusRequest>,
    ) -> Result<Response<pb::AuditStatusResponse>, Status> {
        let p = principal(&req)?;
        if p.is_node() {
            self.authorize_witness(&p, Action::VerifyAudit).await?;
        } else {
            self.authorize_log(&p, Action::VerifyAudit).await?;
        }
        let s = self.ctx.audit.status();
        let cosigs = self
            .ctx
            .audit
            .latest_checkpoint()
            .map_err(ApiError::from)?
            .map_or(0, |c| c.cosignatures.len());
        Ok(Response::new(convert::status_response(
            s,
            cosigs,
            crate::audit::witness::findings(&self.ctx.audit).map_err(ApiError::from)?,
            crate::audit::witness::pinned_witness_keys(&self.ctx.store).map_err(ApiError::from)?,
        )))
    }

    async fn verify_log(
        &self,
        req: Request<pb::VerifyLogRequest>,
    ) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let p = principal(&req)?;
        self.authorize_log(&p, Action::VerifyAudit).await?;
        let report = self.ctx.audit.verify_store().map_err(ApiError::from)?;
        Ok(Response::new(convert::verify_response(&report)))
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        let p = principal(&req)?;
        self.authorize_witness(&p, Action::VerifyAudit).await?;
        let since = req.into_inner().since_size;
        let log = &self.ctx.audit;
        let cp = log
            .latest_checkpoint()
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound("no checkpoint yet".into()))?;
        if since > cp.size {
            return Err(ApiError::FailedPrecondition(format!(
                "you saw size {since}, the latest checkpoint has {}",
                cp.size
            ))
            .into());
        }
        let proof = if since == 0 || since == cp.size {
            Vec::new()
        } else {
            allmende_audit::consistency_proof(log.hash_store(), since, cp.size)
                .map_err(|e| ApiError::Internal(e.to_string()))?
        };
        Ok(Response::new(convert::checkpoint_response(
            cp,
            &proof,
            log.log_vkey(),
        )))
    }

    async fn add_cosignature(
        &self,
        req: Request<pb::AddCosignatureRequest>,
    ) -> Result<Response<pb::AddCosignatureResponse>, Status> {
        super::limits::check_len(
            "cosignature_line",
            &req.get_ref().cosignature_line,
            super::limits::MAX_TOKEN_BYTES,
        )?;
        super::limits::check_len(
            "witness_vkey",
            &req.get_ref().witness_vkey,
            super::limits::MAX_TOKEN_BYTES,
        )?;
        let p = principal(&req)?;
        self.authorize_witness(&p, Action::CosignCheckpoint).await?;
        let r = req.into_inner();
        let key = VerifierKey::parse(&r.witness_vkey)
            .map_err(|e| ApiError::InvalidArgument(format!("witness key: {e}")))?;
        // The witness key is pinned to the calling node on first use.
        crate::audit::witness::pin_witness_key(&self.ctx.store, &p, &key)
            .await
            .map_err(ApiError::from)?;
        let sig = crate::audit::parse_sig_line(&r.cosignature_line)
            .ok_or_else(|| ApiError::InvalidArgument("malformed cosignature line".into()))?;
        let cp = self
            .ctx
            .audit
            .checkpoints()
            .map_err(ApiError::from)?
            .into_iter()
            .find(|c| c.size == r.size)
            .ok_or_else(|| ApiError::NotFound(format!("no checkpoint of size {}", r.size)))?;
        let text = SignedNote::parse(cp.note.as_bytes())
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .text()
            .to_owned();
        if allmende_audit::verify_cosignature(&key, &text, &sig).is_none() {
            return Err(ApiError::InvalidArgument("cosignature does not verify".into()).into());
        }
        let stored = self
            .ctx
            .audit
            .add_cosignature(r.size, sig.to_line())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::cosignature_response(stored)))
    }

    async fn get_witnessed(
        &self,
        req: Request<pb::GetWitnessedRequest>,
    ) -> Result<Response<pb::GetWitnessedResponse>, Status> {
        super::limits::check_id("origin", &req.get_ref().origin)?;
        let p = principal(&req)?;
        self.authorize_witness(&p, Action::VerifyAudit).await?;
        let origin = req.into_inner().origin;
        let Subject::Node(n) = &p.subject else {
            return Err(ApiError::PermissionDenied("nodes only".into()).into());
        };
        if origin != format!("allmende.{}.{}.{n}", p.federation, p.organisation) {
            return Err(
                ApiError::PermissionDenied("a node may ask only about its own log".into()).into(),
            );
        }
        let state =
            crate::audit::witness::witnessed(&self.ctx.store, &origin).map_err(ApiError::from)?;
        Ok(Response::new(convert::witnessed_response(state)))
    }
}
