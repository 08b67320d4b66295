//! `allmende.v1.Obligations`: a city's operators record, change and end
//! obligations at the city's node; its operators and DPO read every
//! window's compliance, an obliged organisation what is held against it.
//! Every call is decided and audited before anything is read or changed.

use super::convert::obligations as convert;
use super::principal;
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::mds::MdsBatches;
use crate::obligations::{Change, NewObligation, Obligations, Outcome, StatusFilter};
use crate::pki::Principal;
use crate::policy::{Action, Resource};
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct ObligationsService {
    pub ctx: NodeCtx,
    pub obligations: Arc<Obligations>,
    /// Where the node's `mds` sources keep rejected batches.
    pub batches: MdsBatches,
}

fn non_empty(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

impl ObligationsService {
    /// Decides `manage_obligations` on this node's organisation.
    async fn decide_manage(&self, p: &Principal, label: &str) -> Result<(), ApiError> {
        self.ctx
            .authorize(
                p,
                Action::ManageObligations,
                self.ctx.policy.own_org_resource(),
                &format!("obligations/{label}"),
            )
            .await
    }

    /// Decides `read_compliance` and returns the organisation whose windows
    /// the caller may see (`None`: all of them). A member of this node's
    /// organisation is decided on it (its officers see everything); anyone
    /// else on the organisation asked about, their own by default — the
    /// policies allow only one's own.
    async fn decide_read(
        &self,
        p: &Principal,
        asked: Option<&str>,
    ) -> Result<Option<String>, ApiError> {
        let own = p.organisation == self.ctx.organisation;
        let resource_org = if own {
            self.ctx.organisation.clone()
        } else {
            asked.unwrap_or(&p.organisation).to_owned()
        };
        self.ctx
            .authorize(
                p,
                Action::ReadCompliance,
                Resource::Organisation(resource_org.clone()),
                &format!("obligations/{}", asked.unwrap_or("*")),
            )
            .await?;
        Ok(if own {
            asked.map(str::to_owned)
        } else {
            Some(resource_org)
        })
    }
}

impl ObligationsService {
    /// Checks a status-like request's names and times, decides
    /// `read_compliance` ([`Self::decide_read`]) and returns the windows the
    /// caller may see.
    async fn decide_windows(
        &self,
        p: &Principal,
        organisation: String,
        dataset: String,
        from: &str,
        to: &str,
    ) -> Result<StatusFilter, ApiError> {
        super::limits::check_id("organisation", &organisation)?;
        super::limits::check_id("dataset", &dataset)?;
        let asked = non_empty(organisation);
        let visible = self.decide_read(p, asked.as_deref()).await?;
        Ok(StatusFilter {
            organisation: visible,
            dataset: non_empty(dataset),
            from_ms: convert::time("from", from)?,
            to_ms: convert::time("to", to)?,
        })
    }
}

#[tonic::async_trait]
impl pb::obligations_server::Obligations for ObligationsService {
    async fn record(
        &self,
        req: Request<pb::RecordObligationRequest>,
    ) -> Result<Response<pb::ObligationInfo>, Status> {
        super::limits::check_id("organisation", &req.get_ref().organisation)?;
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        let label = format!("{}@{}", r.dataset, r.organisation);
        self.decide_manage(&p, &label).await?;
        if !matches!(r.cadence.as_str(), "" | "hour") {
            return Err(ApiError::InvalidArgument(format!(
                "cadence `{}` is not supported (expected `hour`)",
                crate::text::shown(&r.cadence, 20)
            ))
            .into());
        }
        let kind = self
            .ctx
            .trust
            .snapshot()
            .doc
            .member(&r.organisation)
            .map(|m| m.kind);
        let new = NewObligation {
            grace_ms: convert::seconds("grace_seconds", r.grace_seconds)?,
            from_ms: convert::time("from", &r.from)?,
            until_ms: convert::time("until", &r.until)?,
            organisation: r.organisation,
            dataset: r.dataset,
        };
        let v = self
            .obligations
            .record(&self.ctx.audit, &p, kind, new)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::changed(None, &v)))
    }

    async fn change(
        &self,
        req: Request<pb::ChangeObligationRequest>,
    ) -> Result<Response<pb::ObligationInfo>, Status> {
        super::limits::check_id("id", &req.get_ref().id)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        self.decide_manage(&p, &r.id).await?;
        let change = Change {
            grace_ms: r
                .grace_seconds
                .map(|g| convert::seconds("grace_seconds", g))
                .transpose()?,
            until_ms: convert::time("until", &r.until)?,
        };
        let v = self
            .obligations
            .change(&self.ctx.audit, &p, &r.id, change, r.end)
            .await
            .map_err(ApiError::from)?;
        let o = self.obligations.get(&v.id).map_err(ApiError::from)?;
        Ok(Response::new(convert::changed(o.as_ref(), &v)))
    }

    async fn list(
        &self,
        req: Request<pb::ListObligationsRequest>,
    ) -> Result<Response<pb::ListObligationsResponse>, Status> {
        super::limits::check_id("organisation", &req.get_ref().organisation)?;
        let p = principal(&req)?;
        let asked = non_empty(req.into_inner().organisation);
        let visible = self.decide_read(&p, asked.as_deref()).await?;
        let mut all = self.obligations.list().map_err(ApiError::from)?;
        if let Some(org) = visible {
            all.retain(|o| o.current().is_some_and(|v| v.organisation == org));
        }
        Ok(Response::new(convert::list(&all)))
    }

    async fn status(
        &self,
        req: Request<pb::ObligationStatusRequest>,
    ) -> Result<Response<pb::ObligationStatusResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let filter = self
            .decide_windows(
                &p,
                r.organisation.clone(),
                r.dataset.clone(),
                &r.from,
                &r.to,
            )
            .await?;
        let now = self.ctx.clock.now_unix_ms();
        let rows = self.obligations.status(&filter).map_err(ApiError::from)?;
        Ok(Response::new(convert::status(&rows, now)))
    }

    async fn rejected(
        &self,
        req: Request<pb::RejectedBatchesRequest>,
    ) -> Result<Response<pb::RejectedBatchesResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let filter = self
            .decide_windows(
                &p,
                r.organisation.clone(),
                r.dataset.clone(),
                &r.from,
                &r.to,
            )
            .await?;
        let mut attempts = self.obligations.rejected(&filter).map_err(ApiError::from)?;
        let one = !r.id.is_empty();
        if one {
            // Only a batch of a window the caller may see.
            attempts.retain(|d| {
                matches!(&d.outcome, Outcome::Rejected { kept_as: Some(id), .. } if *id == r.id)
            });
            if attempts.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "no rejected batch `{}` in the windows you may see (from `{}` to `{}`)",
                    crate::text::shown(&r.id, 80),
                    if r.from.is_empty() {
                        "24 hours ago"
                    } else {
                        &r.from
                    },
                    if r.to.is_empty() { "now" } else { &r.to },
                ))
                .into());
            }
        }
        let mut found = Vec::with_capacity(attempts.len());
        for d in attempts {
            let kept = match &d.outcome {
                Outcome::Rejected {
                    kept_as: Some(id), ..
                } => self
                    .batches
                    .kept(id, d.window_start_ms)
                    .map_err(|e| ApiError::from(crate::obligations::ObligationsError::from(e)))?,
                _ => None,
            };
            found.push((d, kept));
        }
        Ok(Response::new(convert::rejected(&found, one)))
    }
}
