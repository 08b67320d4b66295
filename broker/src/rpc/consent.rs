//! `allmende.v1.Consent`: import a utility's consent CSV, withdraw consent,
//! read a subject's records.
//!
//! Who may call (until these decisions move under Cedar): stewards and DPOs
//! of this node's organisation for everything; a citizen of this
//! organisation for their own subject only — a citizen's certificate user id
//! is their subject id.

use super::principal;
use crate::consent::ConsentStore;
use crate::error::ApiError;
use crate::pki::{Principal, Role, Subject};
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
    /// Every consent change is written to the node's audit log before it
    /// takes effect; if it cannot be written, nothing changes.
    pub audit: crate::audit::AuditLog,
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
        let mut d = crate::audit::Draft::new(
            &p.organisation,
            action,
            resource,
            allmende_audit::EntryKind::ConsentChange { status },
        );
        if let crate::pki::Subject::User(u) = &p.subject {
            d.user = Some(u.clone());
        }
        d.subjects = subjects;
        self.audit.append(d).await?;
        Ok(())
    }
}

impl ConsentService {
    /// The gRPC server, with a message limit that fits a large CSV.
    pub fn server(self) -> pb::consent_server::ConsentServer<Self> {
        pb::consent_server::ConsentServer::new(self)
            .max_decoding_message_size(MAX_IMPORT_BYTES + 64 * 1024)
    }

    fn is_officer(&self, p: &Principal) -> bool {
        p.organisation == self.consent.controller()
            && matches!(p.subject, Subject::User(_))
            && matches!(p.role, Some(Role::Steward | Role::Dpo))
    }

    /// Stewards and DPOs of the controller for any subject; a citizen of the
    /// controller for their own.
    fn may_act_for(&self, p: &Principal, subject: &str) -> Result<(), ApiError> {
        if self.is_officer(p) {
            return Ok(());
        }
        if p.organisation == self.consent.controller()
            && p.role == Some(Role::Citizen)
            && matches!(&p.subject, Subject::User(u) if u == subject)
        {
            return Ok(());
        }
        Err(ApiError::PermissionDenied(format!(
            "`{}` may not act on consent of subject `{}`: only the subject themself or a steward or DPO of `{}`",
            p.uri(),
            subject.chars().take(64).collect::<String>(),
            self.consent.controller()
        )))
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
        if !self.is_officer(&p) {
            return Err(ApiError::PermissionDenied(format!(
                "`{}` may not import consent records: only stewards and DPOs of `{}`",
                p.uri(),
                self.consent.controller()
            ))
            .into());
        }
        let r = req.into_inner();
        tracing::Span::current().record("dataset", tracing::field::display(&r.dataset));
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
        self.may_act_for(&p, &r.subject_id)?;
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
        self.may_act_for(&p, &r.subject_id)?;
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
