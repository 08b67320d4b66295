//! `allmende.v1.Consent`: import a utility's consent CSV, withdraw consent,
//! read a subject's records.
//!
//! Every call is decided by Cedar through `PolicyPoint::authorize` (and so
//! audited, fail closed): `import_consent` on the dataset, `record_consent`
//! and `read_consent` on the data subject `<this org>/<subject id>`. A person
//! acts as a subject only with a citizen certificate of this node's
//! organisation for exactly that id; the controller's stewards and DPO act
//! for any of its subjects.

use super::principal;
use crate::consent::erasure::{Recipient, released_grants};
use crate::consent::{ConsentStore, Give, MAX_IMPORT_BYTES, ReceiptSigner};
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::grants::Grants;
use crate::pki::Principal;
use crate::policy::{Action, Resource};
use crate::registry::Registry;
use allmende_policies::Purpose;
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// `allmende.v1.Consent`.
#[derive(Debug, Clone)]
pub struct ConsentService {
    pub consent: Arc<ConsentStore>,
    /// Decisions and every consent change go to the node's audit log before
    /// they take effect (`consent::apply`); if they cannot be written,
    /// nothing changes.
    pub ctx: NodeCtx,
    /// Signs the receipts returned for consent given and withdrawn.
    pub receipts: Arc<ReceiptSigner>,
    /// Grants: an erasure's recipients get a deletion duty and a notice.
    pub grants: Arc<Grants>,
    /// Registered connectors: the subject column a grant's pseudonyms are
    /// keyed on.
    pub registry: Arc<Registry>,
    /// Days a recipient has to delete after an erasure.
    pub erasure_duty_days: u32,
}

impl ConsentService {
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
    /// The pseudonym of `subject` the grantee of `grant_id` received for
    /// dataset `dataset` (the release pipeline's per-grant key on the
    /// dataset's subject column).
    fn subject_ref(&self, grant_id: &str, dataset: &str, subject: &str) -> String {
        let column = self
            .registry
            .served(dataset)
            .ok()
            .and_then(|s| s.connector.describe().subject_column.clone())
            .unwrap_or_default();
        crate::access::pipeline::Pseudonymiser::new(
            self.ctx
                .audit
                .derive_key(&crate::access::pipeline::pseudonym_key_label(
                    Some(grant_id),
                    "",
                )),
            Vec::new(),
        )
        .pseudonym(&column, subject)
    }

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
        // Checked and validated whole, then audited, then applied.
        let report = self
            .consent
            .import_audited(&self.ctx.audit, &p, &r.dataset, &r.csv)
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
        let (report, receipts) = self
            .consent
            .withdraw_receipted(
                &self.ctx.audit,
                &self.receipts,
                &p,
                &r.subject_id,
                dataset,
                purpose,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(super::convert::consent::withdraw_response(
            &report, &receipts,
        )))
    }

    async fn give(
        &self,
        req: Request<pb::GiveConsentRequest>,
    ) -> Result<Response<pb::GiveConsentResponse>, Status> {
        super::limits::check_id("subject_id", &req.get_ref().subject_id)?;
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        if req.get_ref().purposes.len() > Purpose::ALL.len() {
            return Err(ApiError::InvalidArgument(format!(
                "{} purposes given; there are only {}",
                req.get_ref().purposes.len(),
                Purpose::ALL.len()
            ))
            .into());
        }
        for pp in &req.get_ref().purposes {
            super::limits::check_id("purpose", pp)?;
        }
        let p = principal(&req)?;
        let r = req.into_inner();
        self.authorize_subject(&p, Action::RecordConsent, &r.subject_id)
            .await?;
        tracing::Span::current().record("dataset", tracing::field::display(&r.dataset));
        let own = self.ctx.policy.own_org().to_owned();
        let consent_based = self.ctx.policy.with_entities(|e| {
            e.dataset(&r.dataset).is_some_and(|d| {
                d.owner == own && d.legal_basis == allmende_policies::LegalBasis::Consent
            })
        });
        if consent_based != Some(true) {
            return Err(ApiError::InvalidArgument(format!(
                "dataset `{}` is not a dataset of `{own}` released under consent",
                crate::text::shown(&r.dataset, 80)
            ))
            .into());
        }
        let mut purposes = std::collections::BTreeSet::new();
        for text in &r.purposes {
            if let Some(pp) = purpose(text)? {
                purposes.insert(pp);
            }
        }
        let give = Give {
            subject: r.subject_id,
            dataset: r.dataset,
            purposes,
            expires_at: (r.expires_at_unix != 0).then_some(r.expires_at_unix),
            method: crate::consent::CollectionMethod::CitizenSelfService,
        };
        let (record, receipt) = self
            .consent
            .give_receipted(&self.ctx.audit, &self.receipts, &p, &give)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(super::convert::consent::give_response(
            &record, &receipt,
        )))
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
        let records = self
            .consent
            .records_of(&r.subject_id)
            .map_err(ApiError::from)?;
        let erasures = self
            .consent
            .erasures_of(&r.subject_id)
            .map_err(ApiError::from)?;
        Ok(Response::new(super::convert::consent::get_response(
            &records, &erasures,
        )))
    }

    async fn who_accessed(
        &self,
        req: Request<pb::WhoAccessedRequest>,
    ) -> Result<Response<pb::WhoAccessedResponse>, Status> {
        super::limits::check_id("subject_id", &req.get_ref().subject_id)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        // Decided like `Audit.MyAccesses`: the subject themself (citizen
        // certificate of this organisation for exactly that id) or the
        // controller's DPO.
        self.authorize_subject(&p, Action::ReadAudit, &r.subject_id)
            .await?;
        let events = crate::consent::history::history(&self.ctx.audit, &r.subject_id)
            .map_err(ApiError::from)?;
        Ok(Response::new(
            super::convert::consent::who_accessed_response(&events),
        ))
    }

    async fn erase(
        &self,
        req: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        super::limits::check_id("subject_id", &req.get_ref().subject_id)?;
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        self.authorize_subject(&p, Action::EraseSubject, &r.subject_id)
            .await?;
        let dataset = (!r.dataset.is_empty()).then_some(r.dataset.as_str());
        if let Some(d) = dataset {
            tracing::Span::current().record("dataset", tracing::field::display(d));
        }
        // Decided, then the erasure's entry and record (from here on the
        // subject is excluded), then each recipient told.
        let erasure = self
            .consent
            .erase_audited(&self.ctx.audit, &p, &r.subject_id, dataset)
            .await
            .map_err(ApiError::from)?;
        let due = self
            .ctx
            .clock
            .now_unix_secs()
            .saturating_add(i64::from(self.erasure_duty_days).saturating_mul(86_400));
        let mut recipients = Vec::new();
        for (grant_id, ds) in
            released_grants(&self.ctx.audit, &r.subject_id, dataset).map_err(ApiError::from)?
        {
            let subject_ref = self.subject_ref(&grant_id, &ds, &r.subject_id);
            let told = self
                .grants
                .erasure_at_recipient(&self.ctx.audit, &grant_id, &subject_ref, due)
                .await
                .map_err(ApiError::from)?;
            if let Some((duty, notice_id)) = told {
                recipients.push(Recipient {
                    org: duty.org,
                    grant_id,
                    dataset: duty.dataset,
                    duty_id: duty.id,
                    due: duty.due,
                    notice_id,
                });
            }
        }
        let erasure = self
            .consent
            .set_recipients(&erasure, recipients)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(super::convert::consent::erase_response(
            &erasure,
        )))
    }
}
