//! The decision engine: holds the current policy set behind an atomic swap,
//! builds the Cedar request and context from typed values (never from client
//! JSON), evaluates, and turns the answer into a [`Decision`] that names the
//! deciding policies with their plain-language reasons. Default deny; any
//! evaluation error is a deny.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Decision as CedarDecision, EntityUid, PolicyId, PolicySet, Request,
    RestrictedExpression,
};
use serde::Serialize;

use crate::entities::{EntitySnapshot, ModelError, PrincipalInfo};
use crate::loader::{
    DEFAULT_DENY_ID, EVALUATION_ERROR_ID, INVALID_REQUEST_ID, LoadError, PolicyBundle,
    PolicyEffect, PolicySource,
};
use crate::model::{Action, ConsentCoverage, Purpose};
use crate::prune::{Shape, ShapeKey};

/// Who asks: a user or node (identity from the certificate and the signed
/// membership) or the anonymous open-data caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Principal {
    User(String),
    Node(String),
    Public,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User(id) => write!(f, "User::{id:?}"),
            Principal::Node(id) => write!(f, "Node::{id:?}"),
            Principal::Public => f.write_str("Public"),
        }
    }
}

/// What is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Resource {
    Dataset(String),
    Grant(String),
    AccessRequest(String),
    DataSubject(String),
    Obligation(String),
    AuditLog(String),
    Federation(String),
    /// A member organisation (resource of `list_connectors`).
    Organisation(String),
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, id) = match self {
            Resource::Dataset(id) => ("Dataset", id),
            Resource::Grant(id) => ("Grant", id),
            Resource::AccessRequest(id) => ("AccessRequest", id),
            Resource::DataSubject(id) => ("DataSubject", id),
            Resource::Obligation(id) => ("Obligation", id),
            Resource::AuditLog(id) => ("AuditLog", id),
            Resource::Federation(id) => ("Federation", id),
            Resource::Organisation(id) => ("Organisation", id),
        };
        write!(f, "{t}::{id:?}")
    }
}

/// A request for a decision, built by the broker from typed values. The
/// engine derives the requester's organisation and kind from the snapshot
/// and builds the Cedar context itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionRequest {
    pub principal: Principal,
    pub action: Action,
    pub resource: Resource,
    /// The purpose the caller declared (already parsed strictly).
    pub purpose: Option<Purpose>,
    /// Epoch seconds from the node's clock.
    pub now: i64,
    /// Id of the grant the caller presents, if any.
    pub grant: Option<String>,
    /// Id of the obligation the caller cites, if any.
    pub obligation: Option<String>,
    /// Consent coverage for the declared purpose (computed by the broker).
    pub consent: ConsentCoverage,
    /// Active grants on personal datasets of the resource's owner held by the
    /// requesting organisation (for `approve_request`: by the requesting
    /// organisation of the access request), computed by the broker.
    pub raw_personal_grants_at_owner: i64,
}

impl DecisionRequest {
    /// A request without purpose, grant, obligation or consent.
    pub fn new(principal: Principal, action: Action, resource: Resource, now: i64) -> Self {
        Self {
            principal,
            action,
            resource,
            purpose: None,
            now,
            grant: None,
            obligation: None,
            consent: ConsentCoverage::default(),
            raw_personal_grants_at_owner: 0,
        }
    }

    /// Sets the declared purpose.
    pub fn with_purpose(mut self, purpose: Purpose) -> Self {
        self.purpose = Some(purpose);
        self
    }

    /// Sets the grant presented.
    pub fn with_grant(mut self, grant: impl Into<String>) -> Self {
        self.grant = Some(grant.into());
        self
    }

    /// Sets the obligation cited.
    pub fn with_obligation(mut self, obligation: impl Into<String>) -> Self {
        self.obligation = Some(obligation.into());
        self
    }

    /// Sets the consent coverage.
    pub fn with_consent(mut self, consent: ConsentCoverage) -> Self {
        self.consent = consent;
        self
    }

    /// Sets the anti-accumulation count.
    pub fn with_raw_personal_grants_at_owner(mut self, count: i64) -> Self {
        self.raw_personal_grants_at_owner = count;
        self
    }
}

/// A policy that decided a request, with its plain-language texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecidingPolicy {
    pub id: String,
    /// `permit`/`forbid`; `None` for the engine's pseudo-policies.
    pub effect: Option<PolicyEffect>,
    pub title: String,
    pub reason_de: String,
    pub reason_en: String,
}

impl DecidingPolicy {
    fn pseudo(id: &str, title: &str, reason_de: &str, reason_en: &str) -> Self {
        Self {
            id: id.to_owned(),
            effect: None,
            title: title.to_owned(),
            reason_de: reason_de.to_owned(),
            reason_en: reason_en.to_owned(),
        }
    }

    /// "No policy permits this."
    pub fn default_deny() -> Self {
        Self::pseudo(
            DEFAULT_DENY_ID,
            "No policy permits this",
            "Keine Regel erlaubt diesen Zugriff; ohne ausdrückliche Erlaubnis wird abgelehnt.",
            "No policy permits this; without an explicit permission the request is denied.",
        )
    }

    /// A policy could not be evaluated, so the request is denied.
    pub fn evaluation_error() -> Self {
        Self::pseudo(
            EVALUATION_ERROR_ID,
            "A policy could not be evaluated",
            "Eine Regel konnte nicht ausgewertet werden; im Zweifel wird abgelehnt.",
            "A policy could not be evaluated; when in doubt the request is denied.",
        )
    }

    /// The request names something this node does not know.
    pub fn invalid_request() -> Self {
        Self::pseudo(
            INVALID_REQUEST_ID,
            "The request refers to something unknown",
            "Die Anfrage nennt eine Person, einen Knoten, einen Datensatz oder eine Berechtigung, die hier nicht bekannt ist; sie wird abgelehnt.",
            "The request names a person, node, dataset or grant unknown here; it is denied.",
        )
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// For an allow: the permitting policies. For a deny: the forbidding
    /// policies, or a pseudo-policy (`default-deny`, `evaluation-error`,
    /// `invalid-request`). Sorted by id, never empty.
    pub deciding: Vec<DecidingPolicy>,
    /// Evaluation or request errors (any error makes the decision a deny).
    pub errors: Vec<String>,
    /// Hash of the policy set that decided.
    pub policy_set_hash: String,
    /// The request as decided.
    pub request: DecisionRequest,
}

impl Decision {
    /// Ids of the deciding policies.
    pub fn deciding_ids(&self) -> Vec<&str> {
        self.deciding.iter().map(|d| d.id.as_str()).collect()
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.request;
        writeln!(
            f,
            "decision:   {}",
            if self.allowed { "ALLOW" } else { "DENY" }
        )?;
        writeln!(f, "principal:  {}", r.principal)?;
        writeln!(f, "action:     {}", r.action)?;
        writeln!(f, "resource:   {}", r.resource)?;
        writeln!(
            f,
            "purpose:    {}",
            r.purpose.map_or("(none)", Purpose::as_str)
        )?;
        if let Some(g) = &r.grant {
            writeln!(f, "grant:      {g}")?;
        }
        if let Some(o) = &r.obligation {
            writeln!(f, "obligation: {o}")?;
        }
        writeln!(f, "time:       {}", r.now)?;
        writeln!(f, "policy set: sha256:{}", self.policy_set_hash)?;
        writeln!(f, "deciding policies:")?;
        for d in &self.deciding {
            let effect = d
                .effect
                .map_or_else(|| "engine".to_owned(), |e| e.to_string());
            writeln!(f, "  - {} ({effect}): {}", d.id, d.title)?;
            writeln!(f, "      de: {}", d.reason_de)?;
            writeln!(f, "      en: {}", d.reason_en)?;
        }
        if !self.errors.is_empty() {
            writeln!(f, "errors:")?;
            for e in &self.errors {
                writeln!(f, "  - {e}")?;
            }
        }
        Ok(())
    }
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub previous_hash: String,
    pub hash: String,
    /// Number of policies in the new set.
    pub policies: usize,
    /// Whether the files differ from the previous set.
    pub changed: bool,
}

/// The policy engine. Cheap to share (`&Engine` across threads); decisions
/// read the current set lock-free while a reload swaps it atomically.
pub struct Engine {
    current: ArcSwap<PolicyBundle>,
    authorizer: Authorizer,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("policy_set_hash", &self.current.load().hash())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine serving `bundle`.
    pub fn new(bundle: PolicyBundle) -> Self {
        Self {
            current: ArcSwap::from_pointee(bundle),
            authorizer: Authorizer::new(),
        }
    }

    /// An engine serving the bundled policy set.
    pub fn bundled() -> Result<Self, LoadError> {
        Ok(Self::new(PolicyBundle::load(&PolicySource::bundled())?))
    }

    /// An engine serving the policy set in `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        Ok(Self::new(crate::loader::load_dir(dir)?))
    }

    /// The set currently serving.
    pub fn current(&self) -> Arc<PolicyBundle> {
        self.current.load_full()
    }

    /// Hash of the set currently serving.
    pub fn policy_set_hash(&self) -> String {
        self.current.load().hash().to_owned()
    }

    /// Validates the set in `dir` and, only if it is valid, swaps it in. A
    /// bad set is refused and the old one keeps serving.
    pub fn reload_from(&self, dir: &Path) -> Result<ReloadReport, LoadError> {
        self.reload(&PolicySource::from_dir(dir)?)
    }

    /// Like [`Engine::reload_from`] for an in-memory source.
    pub fn reload(&self, source: &PolicySource) -> Result<ReloadReport, LoadError> {
        let bundle = PolicyBundle::load(source)?;
        Ok(self.swap(bundle))
    }

    /// Swaps in an already validated bundle.
    pub fn swap(&self, bundle: PolicyBundle) -> ReloadReport {
        let hash = bundle.hash().to_owned();
        let policies = bundle.policy_set().policies().count();
        let previous = self.current.swap(Arc::new(bundle));
        let previous_hash = previous.hash().to_owned();
        ReloadReport {
            changed: previous_hash != hash,
            previous_hash,
            hash,
            policies,
        }
    }

    /// Checks a snapshot against the current schema (after a reload that
    /// changed the schema, or at start-up).
    pub fn check_snapshot(&self, snapshot: &EntitySnapshot) -> Result<(), ModelError> {
        snapshot.check_schema(self.current.load().schema())
    }

    /// Decides one request against the current policy set.
    pub fn decide(&self, request: &DecisionRequest, snapshot: &EntitySnapshot) -> Decision {
        let bundle = self.current.load();
        decide_with(&self.authorizer, &bundle, request, snapshot)
    }

    /// Builds the Cedar request exactly as [`Engine::decide`] does (for the
    /// benchmark's bare baseline and for debugging).
    pub fn cedar_request(
        &self,
        request: &DecisionRequest,
        snapshot: &EntitySnapshot,
    ) -> Result<Request, String> {
        let resolved = resolve(request, snapshot)?;
        build_request(request, &resolved, snapshot)
    }
}

/// Decides one request against an explicit bundle (e.g. a what-if set from
/// [`PolicyBundle::without_policies`]).
pub fn decide_with_bundle(
    bundle: &PolicyBundle,
    request: &DecisionRequest,
    snapshot: &EntitySnapshot,
) -> Decision {
    decide_with(&Authorizer::new(), bundle, request, snapshot)
}

fn decide_with(
    authorizer: &Authorizer,
    bundle: &PolicyBundle,
    request: &DecisionRequest,
    snapshot: &EntitySnapshot,
) -> Decision {
    decide_inner(authorizer, bundle, request, snapshot, true)
}

/// Decides without request-shape pruning: every policy of the scoped set is
/// evaluated. For the equivalence tests and the benchmark.
#[doc(hidden)]
pub fn decide_unpruned(
    bundle: &PolicyBundle,
    request: &DecisionRequest,
    snapshot: &EntitySnapshot,
) -> Decision {
    decide_inner(&Authorizer::new(), bundle, request, snapshot, false)
}

/// The policies [`Engine::decide`] evaluates for `request` after scope
/// filtering and request-shape pruning, as (id, Cedar text) sorted by id;
/// empty when the request is refused before evaluation. For tests and the
/// benchmark.
#[doc(hidden)]
pub fn evaluated_policies(
    bundle: &PolicyBundle,
    request: &DecisionRequest,
    snapshot: &EntitySnapshot,
) -> Vec<(String, String)> {
    let Ok(resolved) = check_applies(bundle, request).and_then(|()| resolve(request, snapshot))
    else {
        return Vec::new();
    };
    let scoped = bundle.scoped_policy_set(request.action, &request.principal, &request.resource);
    let shape = shape(bundle, request, &resolved, snapshot);
    let pruned =
        snapshot
            .prune
            .get_or_prune(&Authorizer::new(), scoped, &snapshot.entities, &shape);
    let set: &PolicySet = pruned.as_deref().unwrap_or(scoped);
    let mut policies: Vec<(String, String)> = set
        .policies()
        .map(|p| (p.id().to_string(), p.to_string()))
        .collect();
    policies.sort();
    policies
}

fn decide_inner(
    authorizer: &Authorizer,
    bundle: &PolicyBundle,
    request: &DecisionRequest,
    snapshot: &EntitySnapshot,
    prune: bool,
) -> Decision {
    let prepared = check_applies(bundle, request)
        .and_then(|()| resolve(request, snapshot))
        .and_then(|r| build_request(request, &r, snapshot).map(|c| (r, c)));
    let (resolved, cedar_request) = match prepared {
        Ok(p) => p,
        Err(error) => {
            return Decision {
                allowed: false,
                deciding: vec![DecidingPolicy::invalid_request()],
                errors: vec![error],
                policy_set_hash: bundle.hash().to_owned(),
                request: request.clone(),
            };
        }
    };
    let scoped = bundle.scoped_policy_set(request.action, &request.principal, &request.resource);
    let pruned = if prune {
        let shape = shape(bundle, request, &resolved, snapshot);
        snapshot
            .prune
            .get_or_prune(authorizer, scoped, &snapshot.entities, &shape)
    } else {
        None
    };
    let policies: &PolicySet = pruned.as_deref().unwrap_or(scoped);
    let response = authorizer.is_authorized(&cedar_request, policies, &snapshot.entities);
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
    let allowed = response.decision() == CedarDecision::Allow && errors.is_empty();

    let mut deciding: Vec<DecidingPolicy> = Vec::new();
    if allowed {
        deciding.extend(diagnostics.reason().filter_map(|id| lookup(bundle, id)));
    } else {
        if response.decision() == CedarDecision::Deny {
            // On a deny Cedar's reasons are the satisfied forbids.
            deciding.extend(diagnostics.reason().filter_map(|id| lookup(bundle, id)));
        }
        if !errors.is_empty() {
            deciding.push(DecidingPolicy::evaluation_error());
        }
        if deciding.is_empty() {
            deciding.push(DecidingPolicy::default_deny());
        }
    }
    deciding.sort_by(|a, b| a.id.cmp(&b.id));
    Decision {
        allowed,
        deciding,
        errors,
        policy_set_hash: bundle.hash().to_owned(),
        request: request.clone(),
    }
}

fn lookup(bundle: &PolicyBundle, id: &PolicyId) -> Option<DecidingPolicy> {
    bundle.infos.get(id).map(|info| DecidingPolicy {
        id: info.id.clone(),
        effect: Some(info.effect),
        title: info.title.clone(),
        reason_de: info.reason_de.clone(),
        reason_en: info.reason_en.clone(),
    })
}

fn unknown(what: &str, id: &str) -> String {
    format!("unknown {what} `{id}`")
}

fn resource_uid(resource: &Resource, s: &EntitySnapshot) -> Result<EntityUid, String> {
    let (map, what, id) = match resource {
        Resource::Dataset(id) => (&s.datasets, "dataset", id),
        Resource::Grant(id) => (&s.grants, "grant", id),
        Resource::AccessRequest(id) => (&s.requests, "access request", id),
        Resource::DataSubject(id) => (&s.subjects, "data subject", id),
        Resource::Obligation(id) => (&s.obligations, "obligation", id),
        Resource::AuditLog(id) => (&s.audit_logs, "audit log", id),
        Resource::Federation(id) => (&s.federations, "federation", id),
        Resource::Organisation(id) => (&s.organisations, "organisation", id),
    };
    map.get(id.as_str())
        .cloned()
        .ok_or_else(|| unknown(what, id))
}

impl Principal {
    pub(crate) fn bit(&self) -> u8 {
        match self {
            Principal::User(_) => 1,
            Principal::Node(_) => 2,
            Principal::Public => 4,
        }
    }
}

impl Resource {
    pub(crate) fn bit(&self) -> u8 {
        match self {
            Resource::Dataset(_) => 1,
            Resource::Grant(_) => 2,
            Resource::AccessRequest(_) => 4,
            Resource::DataSubject(_) => 8,
            Resource::Obligation(_) => 16,
            Resource::AuditLog(_) => 32,
            Resource::Federation(_) => 64,
            Resource::Organisation(_) => 128,
        }
    }
}

/// Refuses principal/resource kinds the schema does not allow for the action.
fn check_applies(bundle: &PolicyBundle, request: &DecisionRequest) -> Result<(), String> {
    let (principals, resources) = bundle
        .applies
        .get(request.action.index())
        .copied()
        .unwrap_or((0, 0));
    if principals & request.principal.bit() == 0 {
        return Err(format!(
            "action `{}` does not apply to principal {}",
            request.action, request.principal
        ));
    }
    if resources & request.resource.bit() == 0 {
        return Err(format!(
            "action `{}` does not apply to resource {}",
            request.action, request.resource
        ));
    }
    Ok(())
}

/// The entities a request names, looked up in the snapshot.
struct Resolved<'s> {
    principal: &'s PrincipalInfo,
    resource: EntityUid,
    grant: Option<&'s EntityUid>,
    obligation: Option<&'s EntityUid>,
}

fn resolve<'s>(request: &DecisionRequest, s: &'s EntitySnapshot) -> Result<Resolved<'s>, String> {
    let principal: &PrincipalInfo = match &request.principal {
        Principal::User(id) => s
            .users
            .get(id.as_str())
            .ok_or_else(|| unknown("user", id))?,
        Principal::Node(id) => s
            .nodes
            .get(id.as_str())
            .ok_or_else(|| unknown("node", id))?,
        Principal::Public => &s.public,
    };
    let resource = resource_uid(&request.resource, s)?;
    let grant = match &request.grant {
        Some(g) => Some(
            s.grants
                .get(g.as_str())
                .ok_or_else(|| unknown("grant", g))?,
        ),
        None => None,
    };
    let obligation = match &request.obligation {
        Some(o) => Some(
            s.obligations
                .get(o.as_str())
                .ok_or_else(|| unknown("obligation", o))?,
        ),
        None => None,
    };
    Ok(Resolved {
        principal,
        resource,
        grant,
        obligation,
    })
}

/// The stable part of a request, for [`crate::prune`].
fn shape<'s>(
    bundle: &PolicyBundle,
    request: &DecisionRequest,
    r: &Resolved<'_>,
    s: &'s EntitySnapshot,
) -> Shape<'s> {
    let names = &s.names;
    let principal_type = match &request.principal {
        Principal::User(_) => &names.user,
        Principal::Node(_) => &names.node,
        Principal::Public => &names.public,
    };
    Shape {
        key: ShapeKey {
            bundle: bundle.serial,
            action: request.action,
            principal_bit: request.principal.bit(),
            requester_org: r.principal.org.clone(),
            resource: r.resource.clone(),
            purpose: request.purpose,
            grant: r.grant.cloned(),
            obligation: r.obligation.cloned(),
        },
        principal_type,
        action_uid: names.action(request.action),
        purpose_uid: request.purpose.map(|p| names.purpose(p)),
        kind_uid: names.kind(r.principal.kind),
    }
}

fn build_request(
    request: &DecisionRequest,
    r: &Resolved<'_>,
    s: &EntitySnapshot,
) -> Result<Request, String> {
    let names = &s.names;
    let principal = r.principal;
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(8);
    if let Some(p) = request.purpose {
        pairs.push((
            "purpose".to_owned(),
            RestrictedExpression::new_entity_uid(names.purpose(p).clone()),
        ));
    }
    pairs.push((
        "now".to_owned(),
        RestrictedExpression::new_long(request.now),
    ));
    pairs.push((
        "requester_org".to_owned(),
        RestrictedExpression::new_entity_uid(principal.org.clone()),
    ));
    pairs.push((
        "requester_kind".to_owned(),
        RestrictedExpression::new_entity_uid(names.kind(principal.kind).clone()),
    ));
    if let Some(uid) = r.grant {
        pairs.push((
            "grant".to_owned(),
            RestrictedExpression::new_entity_uid(uid.clone()),
        ));
    }
    if let Some(uid) = r.obligation {
        pairs.push((
            "obligation".to_owned(),
            RestrictedExpression::new_entity_uid(uid.clone()),
        ));
    }
    let consent = RestrictedExpression::new_record([
        (
            "purpose_covered".to_owned(),
            RestrictedExpression::new_bool(request.consent.purpose_covered),
        ),
        (
            "consenting_subjects".to_owned(),
            RestrictedExpression::new_long(request.consent.consenting_subjects),
        ),
    ])
    .map_err(|e| format!("cannot build the consent record: {e}"))?;
    pairs.push(("consent".to_owned(), consent));
    pairs.push((
        "raw_personal_grants_at_owner".to_owned(),
        RestrictedExpression::new_long(request.raw_personal_grants_at_owner),
    ));
    let context =
        Context::from_pairs(pairs).map_err(|e| format!("cannot build the context: {e}"))?;
    Request::new(
        principal.uid.clone(),
        names.action(request.action).clone(),
        r.resource.clone(),
        context,
        None,
    )
    .map_err(|e| format!("cannot build the request: {e}"))
}
