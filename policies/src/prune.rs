//! Request-shape pruning: the policies that can still matter for a request
//! once everything about it that is fixed for a snapshot is known.
//!
//! Most of a request is stable between calls: the action, the principal's
//! entity type and organisation (and so its kind), the resource, the declared
//! purpose, the grant or obligation cited and whether they are present. What
//! changes from call to call is the caller's identity within its
//! organisation, the node's clock, the consent coverage and the accumulation
//! count. For every distinct stable part the engine asks Cedar's partial
//! evaluator once, with the changing parts as unknowns, which policies are
//! **false for every value of the unknowns** — and from then on evaluates only
//! the others, in full, with the real request.
//!
//! Why the decision cannot change: a policy left out evaluated to `false`
//! without error under partial evaluation, so every concrete request with
//! this stable part also evaluates it to `false` without error (Cedar's
//! partial evaluator keeps any expression that could error or that depends on
//! an unknown as a residual: `residual && false` stays a residual). Such a
//! policy can neither be satisfied nor produce an error, so it is neither a
//! reason nor an error in the full evaluation. The kept policies are the
//! original policies, not residuals, so their evaluation, reasons and errors
//! are exactly Cedar's. `tests/engine.rs` checks pruned against unpruned
//! decisions over the corpus and a sweep of generated requests.
//!
//! The cache lives in the [`crate::EntitySnapshot`] (a new snapshot starts
//! empty) and is keyed by the policy bundle's serial number (a reload starts
//! over). It is bounded; when full it is cleared.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    Authorizer, Context, EntityUid, Policy, PolicySet, Request, RestrictedExpression,
};
use serde_json::Value;

use crate::model::{Action, Purpose};

/// Context attributes the partial request leaves unknown.
const CONTEXT_UNKNOWNS: &[&str] = &["now", "consent", "raw_personal_grants_at_owner"];

/// At most this many request shapes are remembered per snapshot.
const MAX_SHAPES: usize = 1024;

/// The part of a request that is fixed for a snapshot and a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ShapeKey {
    pub(crate) bundle: u64,
    pub(crate) action: Action,
    /// Bit of the principal's entity type (see `Principal::bit`).
    pub(crate) principal_bit: u8,
    pub(crate) requester_org: EntityUid,
    pub(crate) resource: EntityUid,
    pub(crate) purpose: Option<Purpose>,
    pub(crate) grant: Option<EntityUid>,
    pub(crate) obligation: Option<EntityUid>,
}

/// Everything the partial request needs besides the key.
pub(crate) struct Shape<'a> {
    pub(crate) key: ShapeKey,
    pub(crate) principal_type: &'a cedar_policy::EntityTypeName,
    pub(crate) action_uid: &'a EntityUid,
    pub(crate) purpose_uid: Option<&'a EntityUid>,
    pub(crate) kind_uid: &'a EntityUid,
}

/// Pruned policy sets by request shape.
#[derive(Default)]
pub(crate) struct PruneCache {
    sets: RwLock<HashMap<ShapeKey, Arc<PolicySet>>>,
}

impl std::fmt::Debug for PruneCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shapes = self.sets.read().map_or(0, |s| s.len());
        f.debug_struct("PruneCache")
            .field("shapes", &shapes)
            .finish()
    }
}

impl PruneCache {
    /// The policies of `scoped` that can matter for requests of `shape`;
    /// `None` when pruning is not possible (the caller then evaluates
    /// `scoped` itself).
    pub(crate) fn get_or_prune(
        &self,
        authorizer: &Authorizer,
        scoped: &PolicySet,
        entities: &cedar_policy::Entities,
        shape: &Shape<'_>,
    ) -> Option<Arc<PolicySet>> {
        if let Ok(sets) = self.sets.read()
            && let Some(set) = sets.get(&shape.key)
        {
            return Some(Arc::clone(set));
        }
        let pruned = Arc::new(prune(authorizer, scoped, entities, shape)?);
        if let Ok(mut sets) = self.sets.write() {
            if sets.len() >= MAX_SHAPES {
                sets.clear();
            }
            sets.insert(shape.key.clone(), Arc::clone(&pruned));
        }
        Some(pruned)
    }

    /// Number of shapes remembered (for tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.sets.read().map_or(0, |s| s.len())
    }
}

/// Partially evaluates `scoped` for `shape` and keeps every policy that is
/// not definitely `false` without error.
fn prune(
    authorizer: &Authorizer,
    scoped: &PolicySet,
    entities: &cedar_policy::Entities,
    shape: &Shape<'_>,
) -> Option<PolicySet> {
    let key = &shape.key;
    let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(8);
    if let Some(p) = shape.purpose_uid {
        pairs.push((
            "purpose".to_owned(),
            RestrictedExpression::new_entity_uid(p.clone()),
        ));
    }
    pairs.push(("now".to_owned(), RestrictedExpression::new_unknown("now")));
    // (`consent` and `raw_personal_grants_at_owner` below are the other
    // CONTEXT_UNKNOWNS.)
    pairs.push((
        "requester_org".to_owned(),
        RestrictedExpression::new_entity_uid(key.requester_org.clone()),
    ));
    pairs.push((
        "requester_kind".to_owned(),
        RestrictedExpression::new_entity_uid(shape.kind_uid.clone()),
    ));
    if let Some(g) = &key.grant {
        pairs.push((
            "grant".to_owned(),
            RestrictedExpression::new_entity_uid(g.clone()),
        ));
    }
    if let Some(o) = &key.obligation {
        pairs.push((
            "obligation".to_owned(),
            RestrictedExpression::new_entity_uid(o.clone()),
        ));
    }
    pairs.push((
        "consent".to_owned(),
        RestrictedExpression::new_unknown("consent"),
    ));
    pairs.push((
        "raw_personal_grants_at_owner".to_owned(),
        RestrictedExpression::new_unknown("raw_personal_grants_at_owner"),
    ));
    let context = Context::from_pairs(pairs).ok()?;
    let request = Request::builder()
        .unknown_principal_with_type(shape.principal_type.clone())
        .action(shape.action_uid.clone())
        .resource(key.resource.clone())
        .context(context)
        .build();
    let response = authorizer.is_authorized_partial(&request, scoped, entities);
    let mut out: Vec<Policy> = Vec::new();
    // Policies true for every value of the unknowns, and residuals: Cedar's
    // own partial evaluation with the unknowns turned back into the request
    // variables they stand for. Errored ones stay as written.
    for residual in response
        .definitely_satisfied()
        .chain(response.nontrivial_residuals())
    {
        let original = scoped.policy(residual.id())?;
        out.push(specialise(&residual).unwrap_or_else(|| original.clone()));
    }
    for id in response.definitely_errored() {
        out.push(scoped.policy(id)?.clone());
    }
    PolicySet::from_policies(out).ok()
}

/// The residual as a policy over the concrete request: `unknown("principal")`
/// becomes `principal`, every other unknown `context.<name>`; `true && e`
/// and `e && true` become `e`. `None` when the residual holds anything else unknown.
fn specialise(residual: &Policy) -> Option<Policy> {
    let mut json = residual.to_json().ok()?;
    let body = json.get_mut("conditions")?;
    if !rewrite(body) {
        return None;
    }
    Policy::from_json(Some(residual.id().clone()), json).ok()
}

/// Rewrites unknowns in place; false if an unknown has an unexpected name.
fn rewrite(v: &mut Value) -> bool {
    match v {
        Value::Array(items) => items.iter_mut().all(rewrite),
        Value::Object(map) => {
            if let Some(Value::Array(args)) = map.get("unknown") {
                let name = match args.as_slice() {
                    [arg] => arg.get("Value").and_then(Value::as_str),
                    _ => None,
                };
                let replacement = match name {
                    Some("principal") => serde_json::json!({ "Var": "principal" }),
                    Some(n) if CONTEXT_UNKNOWNS.contains(&n) => {
                        serde_json::json!({ ".": { "left": { "Var": "context" }, "attr": n } })
                    }
                    _ => return false,
                };
                *v = replacement;
                return true;
            }
            // `true && e` and `e && true` are `e` (residuals are boolean).
            if let Some(Value::Object(and)) = map.get("&&") {
                let t = serde_json::json!({ "Value": true });
                let kept = if and.get("left") == Some(&t) {
                    and.get("right")
                } else if and.get("right") == Some(&t) {
                    and.get("left")
                } else {
                    None
                };
                if let Some(kept) = kept {
                    let mut kept = kept.clone();
                    if !rewrite(&mut kept) {
                        return false;
                    }
                    *v = kept;
                    return true;
                }
            }
            map.values_mut().all(rewrite)
        }
        _ => true,
    }
}
