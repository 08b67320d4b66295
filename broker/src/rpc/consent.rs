//! `allmende.v1.Consent`: import a utility's consent CSV, withdraw consent,
//! read a subject's records.
//!
//! Every call is decided by Cedar through `PolicyPoint::authorize` (and so
//! audited, fail closed): `import_consent` on the dataset, `record_consent`
//! and `read_consent` on the data subject `<this org>/<subject id>`. A person
//! acts as a subject only with a citizen certificate of this node's
//! organisation for exactly that id; the controller's stewards and DPO act
//! for any of its subjects.

use super::ctx::NodeCtx;
use super::principal;
use crate::consent::ConsentStore;
use crate::error::ApiError;
use crate::pki::Principal;
use crate::policy::{Action, Resource};
use allmende_policies::Purpose;
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The largest consent CSV one `Import` takes.
pub const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;

/// `allmende.v1.Consent`.
#[derive(Debug, Clone)]
pub struct ConsentService {
    pub consent: Arc<ConsentStore>,
    /// Decisions and every consent change go to the node's audit log before
    /// they take effect; if they cannot be written, nothing changes.
    pub ctx: NodeCtx,
}

impl ConsentService {
    async fn record(
        &self,
        p: &crate::pki::Principal,
        action: &str,
        resource: &str,
        status: allmende_audit::ConsentStatus,
        subjects: Vec<String>,
    ) -> Result<(), ApiError> {
        let mut d = crate::audit::Draft::by(
            p,
            action,
            resource,
            allmende_audit::EntryKind::ConsentChange { status },
        );
        d.subjects = subjects;
        self.ctx.audit.append(d).await?;
        Ok(())
    }

    /// Decides `action` on `resource` for `p` and audits the decision.
    async fn authorize(
        &self,
        p: &Principal,
        action: Action,
        resource: Resource,
        label: &str,
    ) -> Result<(), ApiError> {
        self.ctx.authorize(p, action, resource, label).await
    }

    /// Decides a call about data subject `subject` of this organisation.
    async fn authorize_subject(
        &self,
        p: &Principal,
        action: Action,
        subject: &str,
    ) -> Result<(), ApiError> {
        if subject.is_empty() {
            return Err(ApiError::InvalidArgument("`subject_id` is empty".into()));
        }
        // The audit log names subjects only as keyed hashes.
        let label = format!(
            "data-subject/{}",
            self.ctx.audit.pseudonym(self.ctx.policy.own_org(), subject)
        );
        let resource = self.ctx.policy.subject_resource(subject);
        self.authorize(p, action, resource, &label).await
    }
}

impl ConsentService {
    /// The gRPC server, with a message limit that fits a large CSV.
    pub fn server(self) -> pb::consent_server::ConsentServer<Self> {
        pb::consent_server::ConsentServer::new(self)
            .max_decoding_message_size(MAX_IMPORT_BYTES + 64 * 1024)
    }
}

fn purpose(text: &str) -> Result<Option<Purpose>, ApiError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<Purpose>()
        .map(Some)
        .map_err(|e| ApiError::InvalidArgument(e.to_string()))
}

#[tonic::async_trait]
impl pb::consent_server::Consent for ConsentService {
    async fn import(
        &self,
        req: Request<pb::ImportConsentRequest>,
    ) -> Result<Response<pb::ImportConsentResponse>, Status> {
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        tracing::Span::current().record("dataset", tracing::field::display(&r.dataset));
        if r.dataset.is_empty() {
            return Err(ApiError::InvalidArgument("`dataset` is empty".into()).into());
        }
        self.authorize(
            &p,
            Action::ImportConsent,
            Resource::Dataset(r.dataset.clone()),
            &r.dataset,
        )
        .await?;
        if r.csv.len() > MAX_IMPORT_BYTES {
            return Err(ApiError::ResourceExhausted(format!(
                "consent file of {} bytes exceeds {MAX_IMPORT_BYTES} bytes; split it",
                r.csv.len()
            ))
            .into());
        }
        // Validate the whole file first: a refused file changes nothing and
        // is not a consent change.
        let now = self.consent.now();
        self.consent
            .parse_csv(&r.dataset, &r.csv, now)
            .map_err(ApiError::from)?;
        self.record(
            &p,
            "import_consent",
            &r.dataset,
            allmende_audit::ConsentStatus::Given,
            Vec::new(),
        )
        .await?;
        let report = self
            .consent
            .import_csv(&r.dataset, &r.csv)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ImportConsentResponse::from(&report)))
    }

    async fn withdraw(
        &self,
        req: Request<pb::WithdrawConsentRequest>,
    ) -> Result<Response<pb::WithdrawConsentResponse>, Status> {
        super::limits::check_id("subject_id", &req.get_ref().subject_id)?;
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        super::limits::check_id("purpose", &req.get_ref().purpose)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        self.authorize_subject(&p, Action::RecordConsent, &r.subject_id)
            .await?;
        let dataset = (!r.dataset.is_empty()).then_some(r.dataset.as_str());
        if let Some(d) = dataset {
            tracing::Span::current().record("dataset", tracing::field::display(d));
        }
        let purpose = purpose(&r.purpose)?;
        if let Some(pp) = purpose {
            tracing::Span::current().record("purpose", tracing::field::display(pp));
        }
        self.record(
            &p,
            "withdraw_consent",
            dataset.unwrap_or("*"),
            allmende_audit::ConsentStatus::Withdrawn,
            vec![r.subject_id.clone()],
        )
        .await?;
        let report = self
            .consent
            .withdraw(&r.subject_id, dataset, purpose, &p.uri())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::WithdrawConsentResponse {
            records_changed: u64::try_from(report.changed).unwrap_or(u64::MAX),
            withdrawn_at_unix: report.withdrawn_at,
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetConsentRequest>,
    ) -> Result<Response<pb::GetConsentResponse>, Status> {
        super::limits::check_id("subject_id", &req.get_ref().subject_id)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        self.authorize_subject(&p, Action::ReadConsent, &r.subject_id)
            .await?;
        Ok(Response::new(pb::GetConsentResponse {
            records: self
                .consent
                .records_of(&r.subject_id)
                .iter()
                .map(pb::ConsentRecord::from)
                .collect(),
        }))
    }
}
