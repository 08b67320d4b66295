//! The node's policy decision point: the Cedar engine of `allmende-policies`,
//! the entity data the node fills from what it knows (signed membership,
//! callers, datasets, grants, its audit log), and the one `authorize` path
//! every gRPC call that touches data or governance state goes through:
//! decide → audit the decision (fail closed) → allow or deny with reasons.
//!
//! Architecture invariant: the Cedar context is built here from the bound
//! principal, the node clock and the node's own state; nothing in it comes
//! from a request body except the declared purpose, which is parsed strictly.

use crate::audit::AuditError;
use crate::audit::{AuditLog, Draft};
use crate::clock::SharedClock;
use crate::denials::OverBudget;
use crate::error::{ApiError, DenyDetails};
use crate::locks;
use crate::pki::membership::MembershipDoc;
use crate::pki::{Principal, Subject};
use allmende_audit::{Decision as AuditDecision, EntryKind, Hash};
use allmende_policies as pol;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Why [`PolicyPoint::authorize`] did not allow a request.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    /// Denied by the policies; carries the deciding policies and reasons.
    #[error("denied: {}", .0.policies.iter().map(|p| p.reason_en.as_str()).collect::<Vec<_>>().join("; "))]
    Denied(Box<DenyDetails>),
    /// The caller is over its budget of denied requests.
    #[error(transparent)]
    OverBudget(#[from] OverBudget),
    /// The decision could not be audited, so it is not acted upon.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The name the lock helpers log for the entity data.
const ENTITIES: &str = "policy entities";

pub use pol::{Action, Decision, Purpose, Resource};

/// Where the node's policies come from.
#[derive(Debug, Clone)]
pub enum PolicyOrigin {
    /// The set compiled into the binary (`policies/` of this release).
    Bundled,
    /// A directory with `schema.cedarschema` and `*.cedar` files.
    Dir(PathBuf),
}

/// The decision point of one node.
#[derive(Debug)]
pub struct PolicyPoint {
    engine: pol::Engine,
    entities: RwLock<pol::EntityStore>,
    origin: PolicyOrigin,
    clock: SharedClock,
    federation: String,
    own_org: String,
    audit_log_id: String,
    /// Denials per caller: budget, aggregation (`crate::denials`).
    denials: crate::denials::Denials,
}

/// Entity id of a user: `<org>/<user>` (user ids are unique per organisation).
pub fn user_entity_id(org: &str, user: &str) -> String {
    format!("{org}/{user}")
}

impl PolicyPoint {
    /// Loads and strictly validates the policies; an invalid set refuses
    /// start-up with file, line and message.
    pub fn load(
        origin: PolicyOrigin,
        clock: SharedClock,
        federation: &str,
        own_org: &str,
        own_node: &str,
    ) -> Result<Self, pol::LoadError> {
        let engine = match &origin {
            PolicyOrigin::Bundled => pol::Engine::bundled()?,
            PolicyOrigin::Dir(d) => pol::Engine::from_dir(d)?,
        };
        let mut entities = pol::EntityStore::new();
        let audit_log_id = format!("{own_org}/{own_node}");
        entities.upsert_audit_log(pol::AuditLog {
            id: audit_log_id.clone(),
            owner: own_org.to_owned(),
        });
        Ok(Self {
            engine,
            entities: RwLock::new(entities),
            origin,
            clock,
            federation: federation.to_owned(),
            own_org: own_org.to_owned(),
            audit_log_id,
            denials: crate::denials::Denials::default(),
        })
    }

    /// The denial budget and aggregates of this node.
    pub fn denials(&self) -> &crate::denials::Denials {
        &self.denials
    }

    /// Audits a change of the policy set to `new_hash`, by `by` (a caller)
    /// or by the node itself (a reload on SIGHUP).
    pub async fn record_reload(
        &self,
        audit: &AuditLog,
        by: Option<&Principal>,
        new_hash: &str,
    ) -> Result<(), AuditError> {
        let resource = format!("policy-set/{new_hash}");
        let kind = EntryKind::PolicyChange {
            op: allmende_audit::PolicyOp::Updated,
        };
        let mut d = match by {
            Some(p) => Draft::by(p, "reload_policies", &resource, kind),
            None => Draft::new(self.own_org(), "reload_policies", &resource, kind),
        };
        d.policy_set_hash = Hash::from_hex(new_hash).ok();
        audit.append(d).await?;
        Ok(())
    }

    /// This node's organisation.
    pub fn own_org(&self) -> &str {
        &self.own_org
    }

    /// The id of this node's audit log entity.
    pub fn audit_log_id(&self) -> &str {
        &self.audit_log_id
    }

    /// The hash of the policy set in force.
    pub fn policy_set_hash(&self) -> String {
        self.engine.policy_set_hash()
    }

    /// The policies in force (id, title, effect, file).
    pub fn bundle(&self) -> std::sync::Arc<pol::PolicyBundle> {
        self.engine.current()
    }

    /// Re-reads the policy source; a bad set is refused and the old one
    /// keeps serving. A directory's set must also satisfy every property
    /// (`allmende_policies::load_proved`: the bundled properties and the
    /// directory's `properties/`); without cvc5 it cannot be proved and is
    /// refused (fail closed). The bundled set is the one this release's test
    /// suite proved, so reloading it needs no solver.
    pub async fn reload(&self) -> Result<pol::ReloadReport, pol::ReloadError> {
        match &self.origin {
            PolicyOrigin::Bundled => Ok(self.engine.reload(&pol::PolicySource::bundled())?),
            PolicyOrigin::Dir(d) => {
                let (bundle, report) = pol::load_proved(d).await?;
                tracing::info!(
                    properties = report.results.len(),
                    elapsed_ms = report.elapsed.as_millis() as u64,
                    "new policy set proved"
                );
                Ok(self.engine.swap(bundle))
            }
        }
    }

    /// Where the policies come from.
    pub fn origin(&self) -> &PolicyOrigin {
        &self.origin
    }

    /// Mirrors the signed membership into the entity data: organisations
    /// with their kinds, the federation.
    pub fn sync_membership(&self, doc: &MembershipDoc) {
        let Ok(mut e) = locks::write(&self.entities, ENTITIES) else {
            return;
        };
        for m in &doc.members {
            let kind = m.kind;
            let same = e.organisation(&m.org).is_some_and(|o| o.kind == kind);
            if !same {
                e.upsert_organisation(pol::Organisation::new(m.org.clone(), kind));
            }
        }
        let root = doc
            .members
            .iter()
            .find(|m| m.kind == crate::pki::OrgKind::City)
            .map(|m| m.org.clone())
            .unwrap_or_else(|| self.own_org.clone());
        if e.federation(&self.federation).is_none() {
            e.upsert_federation(pol::Federation {
                id: self.federation.clone(),
                root,
            });
        }
    }

    /// Changes the entity data (datasets, grants, subjects, …).
    pub fn with_entities<R>(&self, f: impl FnOnce(&mut pol::EntityStore) -> R) -> Option<R> {
        locks::write(&self.entities, ENTITIES)
            .ok()
            .map(|mut e| f(&mut e))
    }

    /// The Cedar principal for a bound caller: `Allmende::Public` for a
    /// certificate of an organisation whose kind in the signed membership is
    /// `public` (never anything in a request), else its user or node.
    fn principal(p: &Principal) -> pol::Principal {
        if p.organisation_kind == crate::pki::OrgKind::Public {
            return pol::Principal::Public;
        }
        match &p.subject {
            Subject::Node(n) => pol::Principal::Node(user_entity_id(&p.organisation, n)),
            Subject::User(u) => pol::Principal::User(user_entity_id(&p.organisation, u)),
        }
    }

    /// The resource of a call about data subject `subject` of this node's
    /// organisation (its controller). Its entity exists for the decision
    /// even when the node holds no record of the subject: account
    /// `<controller>/<subject>`, controller this organisation. A certificate
    /// of another organisation with the same user id is another principal.
    pub fn subject_resource(&self, subject: &str) -> Resource {
        Resource::DataSubject(user_entity_id(&self.own_org, subject))
    }

    /// The resource of a call about this node's organisation.
    pub fn own_org_resource(&self) -> Resource {
        Resource::Organisation(self.own_org.clone())
    }

    /// The entity snapshot for one decision by `caller`, taken under the
    /// entity lock so that nothing changes between binding and snapshot:
    /// - the caller's entity carries exactly the role of the certificate on
    ///   this connection (another certificate of the same user id with
    ///   another role cannot change this decision);
    /// - a data subject of this organisation named by the request exists
    ///   for this decision only, if the node does not know it otherwise.
    fn snapshot_for(
        &self,
        caller: Option<&Principal>,
        request: &pol::DecisionRequest,
    ) -> Result<std::sync::Arc<pol::EntitySnapshot>, String> {
        let mut e = locks::write(&self.entities, ENTITIES).map_err(|e| e.to_string())?;
        if let Some(caller) = caller.filter(|_| request.principal != pol::Principal::Public) {
            bind_principal(&mut e, caller);
        }
        let mut scratch_user = None;
        let mut scratch_subject = None;
        if let Resource::DataSubject(id) = &request.resource
            && e.subject(id).is_none()
            && id
                .strip_prefix(self.own_org.as_str())
                .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
        {
            if e.user(id).is_none() {
                e.upsert_user(pol::User::new(id.clone(), self.own_org.clone(), &[]));
                scratch_user = Some(id.clone());
            }
            e.upsert_subject(pol::DataSubject {
                id: id.clone(),
                account: id.clone(),
                controller: self.own_org.clone(),
            });
            scratch_subject = Some(id.clone());
        }
        let snapshot = e.snapshot().map_err(|err| err.to_string());
        if let Some(id) = scratch_subject {
            e.remove_subject(&id);
        }
        if let Some(id) = scratch_user {
            e.remove_user(&id);
        }
        snapshot
    }

    /// Decides without auditing (for `Policy.Explain`, a what-if, and the
    /// witness protocol).
    pub fn decide(&self, caller: &Principal, request: &pol::DecisionRequest) -> Decision {
        self.decide_bound(Some(caller), request)
    }

    /// [`PolicyPoint::decide`] for a caller of the release pipeline.
    pub fn decide_for(
        &self,
        caller: &crate::access::Caller,
        request: &pol::DecisionRequest,
    ) -> Decision {
        match caller {
            crate::access::Caller::Member(p) => self.decide_bound(Some(p), request),
            crate::access::Caller::Public(_) => self.decide_bound(None, request),
        }
    }

    fn decide_bound(&self, caller: Option<&Principal>, request: &pol::DecisionRequest) -> Decision {
        match self.snapshot_for(caller, request) {
            Ok(s) => self.engine.decide(request, &s),
            Err(e) => Decision {
                allowed: false,
                deciding: vec![pol::DecidingPolicy::evaluation_error()],
                errors: vec![e],
                policy_set_hash: self.policy_set_hash(),
                request: request.clone(),
            },
        }
    }

    /// A request for `caller`, built by the broker.
    pub fn request(
        &self,
        caller: &Principal,
        action: Action,
        resource: Resource,
        purpose: Option<Purpose>,
    ) -> pol::DecisionRequest {
        let mut r = pol::DecisionRequest::new(
            Self::principal(caller),
            action,
            resource,
            self.clock.now_unix_secs(),
        );
        r.purpose = purpose;
        r
    }

    /// [`PolicyPoint::request`] for a caller of the release pipeline: the
    /// public is decided as `Allmende::Public`.
    pub fn request_for(
        &self,
        caller: &crate::access::Caller,
        action: Action,
        resource: Resource,
        purpose: Option<Purpose>,
    ) -> pol::DecisionRequest {
        match caller {
            crate::access::Caller::Member(p) => self.request(p, action, resource, purpose),
            crate::access::Caller::Public(_) => {
                let mut r = pol::DecisionRequest::new(
                    pol::Principal::Public,
                    action,
                    resource,
                    self.clock.now_unix_secs(),
                );
                r.purpose = purpose;
                r
            }
        }
    }

    /// [`PolicyPoint::decide_audited`] for a caller that answers with an
    /// [`ApiError`]: a decision that cannot be audited fails the call with
    /// `UNAVAILABLE`, a deny is `PERMISSION_DENIED` with the deciding
    /// policies (classified in `error.rs`).
    pub async fn authorize(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        request: pol::DecisionRequest,
        resource_label: &str,
    ) -> Result<Decision, ApiError> {
        self.decide_audited(audit, caller, request, resource_label)
            .await
            .map_err(ApiError::from)
    }

    /// Decides `request` for `caller` and writes the decision to the audit
    /// log; the decision is acted upon only if it was written. A deny, a
    /// caller over its denial budget and an unwritten decision are
    /// [`AuthorizeError`]s.
    pub async fn decide_audited(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        request: pol::DecisionRequest,
        resource_label: &str,
    ) -> Result<Decision, AuthorizeError> {
        let caller = crate::access::Caller::of(caller, audit);
        self.decide_audited_for(audit, &caller, request, resource_label)
            .await
    }

    /// [`PolicyPoint::decide_audited`] for a caller of the release
    /// pipeline; a public caller is audited as `public/<pseudonym>`.
    pub async fn decide_audited_for(
        &self,
        audit: &AuditLog,
        caller: &crate::access::Caller,
        request: pol::DecisionRequest,
        resource_label: &str,
    ) -> Result<Decision, AuthorizeError> {
        use crate::access::Caller;
        let decision = self.decide_for(caller, &request);
        // A denial beyond the caller's budget is counted into an aggregate
        // entry instead (or refused); see `crate::denials`.
        let now_ms = self.clock.now_unix_ms();
        let action = request.action.as_str();
        let one_by_one = decision.allowed
            || match caller {
                Caller::Member(p) => self.denials.on_deny(p, action, now_ms)?,
                Caller::Public(c) => self.denials.on_deny_public(c, action, now_ms)?,
            };
        let mut d = caller.draft(action, resource_label, EntryKind::Decision);
        d.purpose = request.purpose.map(|p| p.as_str().to_owned());
        d.decision = Some(if decision.allowed {
            AuditDecision::Allow
        } else {
            AuditDecision::Deny
        });
        d.policy_ids = decision.deciding.iter().map(|p| p.id.clone()).collect();
        d.policy_set_hash = Hash::from_hex(&decision.policy_set_hash).ok();
        d.grant_id = request.grant.clone();
        tracing::Span::current().record("purpose", d.purpose.as_deref().unwrap_or(""));
        if one_by_one {
            audit.append(d).await?;
        }
        if decision.allowed {
            Ok(decision)
        } else {
            if one_by_one {
                tracing::info!(
                    org = %caller.organisation(),
                    action = request.action.as_str(),
                    resource = %resource_label,
                    policies = ?decision.deciding_ids(),
                    "denied"
                );
            }
            Err(AuthorizeError::Denied(Box::new(DenyDetails::from(
                &decision,
            ))))
        }
    }
}

/// Makes the caller's entity say exactly what its certificate says: a node
/// of its organisation, or a user of its organisation with this
/// certificate's role (and no other).
fn bind_principal(e: &mut pol::EntityStore, p: &Principal) {
    match &p.subject {
        Subject::Node(n) => {
            let id = user_entity_id(&p.organisation, n);
            if e.node(&id).is_none_or(|x| x.org != p.organisation) {
                e.upsert_node(pol::Node::new(id, p.organisation.clone()));
            }
        }
        Subject::User(u) => {
            let id = user_entity_id(&p.organisation, u);
            let roles: Vec<pol::Role> = p.role.into_iter().collect();
            let same = e.user(&id).is_some_and(|x| {
                x.org == p.organisation
                    && x.roles.len() == roles.len()
                    && roles.iter().all(|r| x.roles.contains(r))
            });
            if !same {
                e.upsert_user(pol::User::new(id, p.organisation.clone(), &roles));
            }
        }
    }
}

impl From<&Decision> for DenyDetails {
    fn from(d: &Decision) -> Self {
        DenyDetails {
            allowed: d.allowed,
            policies: d.deciding.clone(),
            errors: d.errors.clone(),
            policy_set_hash: d.policy_set_hash.clone(),
        }
    }
}

/// Validates a policy directory offline (`allmende policy validate`).
pub fn validate_dir(dir: &Path) -> Result<pol::PolicyBundle, pol::LoadError> {
    pol::load_dir(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::pki::{OrgKind, Role};
    use std::sync::Arc;

    fn point() -> PolicyPoint {
        let p = PolicyPoint::load(
            PolicyOrigin::Bundled,
            ManualClock::starting_now(),
            "munich",
            "swm",
            "swm-1",
        )
        .unwrap();
        p.with_entities(|e| {
            e.upsert_organisation(pol::Organisation::new("swm", pol::OrgKind::Utility));
        });
        p
    }

    fn user(id: &str, role: Role) -> Principal {
        Principal {
            federation: "munich".into(),
            organisation: "swm".into(),
            organisation_kind: OrgKind::Utility,
            subject: Subject::User(id.into()),
            role: Some(role),
            certificate_sha256: format!("{id}-{role:?}"),
            not_after: i64::MAX,
            issuer_ca_spki_sha256: "swm-ca".into(),
        }
    }

    /// Two certificates of one user id with different roles: each decision
    /// uses the role of the certificate it was made for, whatever the other
    /// certificate did in between.
    #[test]
    fn decisions_use_the_role_of_this_certificate() {
        let p = point();
        let steward = user("kim", Role::Steward);
        let citizen = user("kim", Role::Citizen);
        let list =
            |who: &Principal| p.request(who, Action::ListConnectors, p.own_org_resource(), None);
        let as_citizen = list(&citizen);
        let as_steward = list(&steward);
        assert!(p.decide(&steward, &as_steward).allowed);
        // The steward's certificate was seen last; the citizen's request is
        // still decided with the citizen's role.
        assert!(!p.decide(&citizen, &as_citizen).allowed);
        assert!(p.decide(&steward, &as_steward).allowed);
        let shared = Arc::new(p);
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let p = shared.clone();
                let (who, expect) = if i % 2 == 0 {
                    (steward.clone(), true)
                } else {
                    (citizen.clone(), false)
                };
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let r = p.request(&who, Action::ListConnectors, p.own_org_resource(), None);
                        assert_eq!(p.decide(&who, &r).allowed, expect);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    /// A data subject named by a request exists only for that decision.
    #[test]
    fn subjects_named_by_requests_are_not_kept() {
        let p = point();
        let dpo = user("dpo", Role::Dpo);
        let r = p.request(&dpo, Action::ReadConsent, p.subject_resource("HH-9"), None);
        assert!(p.decide(&dpo, &r).allowed);
        let kept = p
            .with_entities(|e| e.subject("swm/HH-9").is_some() || e.user("swm/HH-9").is_some())
            .unwrap();
        assert!(!kept);
    }
}
