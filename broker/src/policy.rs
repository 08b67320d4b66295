//! The node's policy decision point: the Cedar engine of `allmende-policies`,
//! the entity data the node fills from what it knows (signed membership,
//! callers, datasets, grants, its audit log), and the one `authorize` path
//! every gRPC call that touches data or governance state goes through:
//! decide → audit the decision (fail closed) → allow or deny with reasons.
//!
//! Architecture invariant: the Cedar context is built here from the bound
//! principal, the node clock and the node's own state; nothing in it comes
//! from a request body except the declared purpose, which is parsed strictly.

use crate::audit::{AuditLog, Draft};
use crate::clock::SharedClock;
use crate::error::{ApiError, DenyDetails};
use crate::pki::membership::MembershipDoc;
use crate::pki::{Principal, Subject};
use allmende_audit::{Decision as AuditDecision, EntryKind, Hash};
use allmende_policies as pol;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

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
        })
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
        let Ok(mut e) = self.entities.write() else {
            return;
        };
        for m in &doc.members {
            let kind = match m.kind {
                crate::pki::OrgKind::City => pol::OrgKind::City,
                crate::pki::OrgKind::Utility => pol::OrgKind::Utility,
                crate::pki::OrgKind::University => pol::OrgKind::University,
                crate::pki::OrgKind::Company => pol::OrgKind::Company,
                crate::pki::OrgKind::Public => pol::OrgKind::Public,
            };
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
        self.entities.write().ok().map(|mut e| f(&mut e))
    }

    /// The Cedar principal for a bound caller; registers users and nodes in
    /// the entity data on first sight (roles come from their certificate).
    fn principal(&self, p: &Principal) -> pol::Principal {
        let (id, is_node) = match &p.subject {
            Subject::Node(n) => (user_entity_id(&p.organisation, n), true),
            Subject::User(u) => (user_entity_id(&p.organisation, u), false),
        };
        let known = self.entities.read().ok().is_some_and(|e| {
            if is_node {
                e.node(&id).is_some()
            } else {
                e.user(&id)
                    .is_some_and(|u| p.role.is_some_and(|r| u.roles.contains(&role(r))))
            }
        });
        if !known && let Ok(mut e) = self.entities.write() {
            if is_node {
                e.upsert_node(pol::Node::new(id.clone(), p.organisation.clone()));
            } else {
                let roles: Vec<pol::Role> = p.role.map(role).into_iter().collect();
                e.upsert_user(pol::User::new(id.clone(), p.organisation.clone(), &roles));
            }
        }
        if is_node {
            pol::Principal::Node(id)
        } else {
            pol::Principal::User(id)
        }
    }

    /// Decides without auditing (for `Policy.Explain`, a what-if).
    pub fn decide(&self, request: &pol::DecisionRequest) -> Decision {
        let snapshot = self.entities.read().ok().and_then(|e| e.snapshot().ok());
        match snapshot {
            Some(s) => self.engine.decide(request, &s),
            None => Decision {
                allowed: false,
                deciding: vec![pol::DecidingPolicy::evaluation_error()],
                errors: vec!["entity data unavailable".into()],
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
            self.principal(caller),
            action,
            resource,
            self.clock.now_unix_secs(),
        );
        r.purpose = purpose;
        r
    }

    /// Decides `request` for `caller`, writes the decision to the audit log
    /// (a decision that cannot be audited fails the call with `UNAVAILABLE`),
    /// and turns a deny into `PERMISSION_DENIED` with the deciding policies.
    pub async fn authorize(
        &self,
        audit: &AuditLog,
        caller: &Principal,
        request: pol::DecisionRequest,
        resource_label: &str,
    ) -> Result<Decision, ApiError> {
        let decision = self.decide(&request);
        let mut d = Draft::new(
            &caller.organisation,
            request.action.as_str(),
            resource_label,
            EntryKind::Decision,
        );
        match &caller.subject {
            Subject::User(u) => d.user = Some(u.clone()),
            Subject::Node(n) => d.peer_node = Some(n.clone()),
        }
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
        audit.append(d).await?;
        if decision.allowed {
            Ok(decision)
        } else {
            tracing::info!(
                org = %caller.organisation,
                action = request.action.as_str(),
                resource = %resource_label,
                policies = ?decision.deciding_ids(),
                "denied"
            );
            Err(ApiError::Denied(Box::new(DenyDetails::from(&decision))))
        }
    }
}

fn role(r: crate::pki::Role) -> pol::Role {
    match r {
        crate::pki::Role::Dpo => pol::Role::Dpo,
        crate::pki::Role::Steward => pol::Role::Steward,
        crate::pki::Role::Researcher => pol::Role::Researcher,
        crate::pki::Role::Citizen => pol::Role::Citizen,
        crate::pki::Role::Operator => pol::Role::Operator,
    }
}

impl From<&Decision> for DenyDetails {
    fn from(d: &Decision) -> Self {
        DenyDetails {
            allowed: d.allowed,
            policies: d
                .deciding
                .iter()
                .map(|p| crate::error::DecidingPolicy {
                    id: p.id.clone(),
                    title: p.title.clone(),
                    reason_de: p.reason_de.clone(),
                    reason_en: p.reason_en.clone(),
                })
                .collect(),
            errors: d.errors.clone(),
            policy_set_hash: d.policy_set_hash.clone(),
        }
    }
}

/// Validates a policy directory offline (`allmende policy validate`).
pub fn validate_dir(dir: &Path) -> Result<pol::PolicyBundle, pol::LoadError> {
    pol::load_dir(dir)
}
