//! Entity store and snapshots: the broker keeps its typed model in an
//! [`EntityStore`]; [`EntityStore::snapshot`] converts it to
//! `cedar_policy::Entities` once and caches the result until the next change,
//! so no request parses entity JSON.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression, Schema,
};

use crate::model::{
    AccessRequest, Action, AuditLog, Classification, DataSubject, Dataset, Federation, Grant,
    GrantState, LegalBasis, Node, Obligation, OrgKind, Organisation, Purpose, RequestState, Role,
    User,
};
use crate::prune::PruneCache;

/// Id of the organisation standing for the general public: the anonymous
/// open-data caller acts on its behalf. Added with kind `public` when the
/// store has none.
pub const PUBLIC_ORG_ID: &str = "public";

/// Id of the single anonymous principal entity.
pub const PUBLIC_PRINCIPAL_ID: &str = "anonymous";

/// An inconsistency in the entity model, found when building a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// An entity refers to another entity that is not in the store.
    #[error("entity `{entity}` refers to unknown {target_type} `{target}` in field `{field}`")]
    DanglingReference {
        entity: String,
        field: &'static str,
        target_type: &'static str,
        target: String,
    },
    /// Two fields of an entity contradict each other.
    #[error("entity `{entity}` is inconsistent: {message}")]
    Inconsistent { entity: String, message: String },
    /// Cedar refused to build the entities.
    #[error("cannot build cedar entities: {0}")]
    Cedar(String),
    /// The entities do not conform to the schema.
    #[error("entities do not conform to the schema: {0}")]
    Schema(String),
}

/// Cedar entity type names and the uids of every closed-vocabulary value,
/// computed once per snapshot so that requests only clone them.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) organisation: EntityTypeName,
    pub(crate) user: EntityTypeName,
    pub(crate) node: EntityTypeName,
    pub(crate) public: EntityTypeName,
    pub(crate) federation: EntityTypeName,
    pub(crate) dataset: EntityTypeName,
    pub(crate) grant: EntityTypeName,
    pub(crate) access_request: EntityTypeName,
    pub(crate) data_subject: EntityTypeName,
    pub(crate) obligation: EntityTypeName,
    pub(crate) audit_log: EntityTypeName,
    pub(crate) purposes: Vec<EntityUid>,
    pub(crate) kinds: Vec<EntityUid>,
    pub(crate) roles: Vec<EntityUid>,
    pub(crate) classifications: Vec<EntityUid>,
    pub(crate) legal_bases: Vec<EntityUid>,
    pub(crate) grant_states: Vec<EntityUid>,
    pub(crate) request_states: Vec<EntityUid>,
    pub(crate) actions: Vec<EntityUid>,
    pub(crate) public_principal: EntityUid,
}

fn type_name(name: &str) -> Result<EntityTypeName, ModelError> {
    EntityTypeName::from_str(name)
        .map_err(|e| ModelError::Cedar(format!("bad entity type name `{name}`: {e}")))
}

fn vocabulary_uids<T: Copy + ToString>(
    cedar_type: &str,
    all: &[T],
) -> Result<Vec<EntityUid>, ModelError> {
    let t = type_name(cedar_type)?;
    Ok(all
        .iter()
        .map(|v| EntityUid::from_type_name_and_id(t.clone(), EntityId::new(v.to_string())))
        .collect())
}

impl Names {
    pub(crate) fn new() -> Result<Self, ModelError> {
        let public = type_name("Allmende::Public")?;
        Ok(Self {
            organisation: type_name("Allmende::Organisation")?,
            user: type_name("Allmende::User")?,
            node: type_name("Allmende::Node")?,
            public_principal: EntityUid::from_type_name_and_id(
                public.clone(),
                EntityId::new(PUBLIC_PRINCIPAL_ID),
            ),
            public,
            federation: type_name("Allmende::Federation")?,
            dataset: type_name("Allmende::Dataset")?,
            grant: type_name("Allmende::Grant")?,
            access_request: type_name("Allmende::AccessRequest")?,
            data_subject: type_name("Allmende::DataSubject")?,
            obligation: type_name("Allmende::Obligation")?,
            audit_log: type_name("Allmende::AuditLog")?,
            purposes: vocabulary_uids(Purpose::CEDAR_TYPE, Purpose::ALL)?,
            kinds: vocabulary_uids(OrgKind::CEDAR_TYPE, OrgKind::ALL)?,
            roles: vocabulary_uids(Role::CEDAR_TYPE, Role::ALL)?,
            classifications: vocabulary_uids(Classification::CEDAR_TYPE, Classification::ALL)?,
            legal_bases: vocabulary_uids(LegalBasis::CEDAR_TYPE, LegalBasis::ALL)?,
            grant_states: vocabulary_uids(GrantState::CEDAR_TYPE, GrantState::ALL)?,
            request_states: vocabulary_uids(RequestState::CEDAR_TYPE, RequestState::ALL)?,
            actions: vocabulary_uids(Action::CEDAR_TYPE, Action::ALL)?,
        })
    }

    fn uid(t: &EntityTypeName, id: &str) -> EntityUid {
        EntityUid::from_type_name_and_id(t.clone(), EntityId::new(id))
    }

    pub(crate) fn purpose(&self, p: Purpose) -> &EntityUid {
        &self.purposes[p.index()]
    }

    pub(crate) fn kind(&self, k: OrgKind) -> &EntityUid {
        &self.kinds[k.index()]
    }

    pub(crate) fn action(&self, a: Action) -> &EntityUid {
        &self.actions[a.index()]
    }
}

/// A principal as the policies see it: its uid, its organisation and kind
/// (from the signed membership, never from the client).
#[derive(Debug, Clone)]
pub(crate) struct PrincipalInfo {
    pub(crate) uid: EntityUid,
    pub(crate) org: EntityUid,
    pub(crate) kind: OrgKind,
}

/// An immutable Cedar view of the store at one generation.
#[derive(Debug)]
pub struct EntitySnapshot {
    generation: u64,
    pub(crate) entities: Entities,
    pub(crate) names: Names,
    pub(crate) users: HashMap<String, PrincipalInfo>,
    pub(crate) nodes: HashMap<String, PrincipalInfo>,
    pub(crate) public: PrincipalInfo,
    pub(crate) datasets: HashMap<String, EntityUid>,
    pub(crate) grants: HashMap<String, EntityUid>,
    pub(crate) requests: HashMap<String, EntityUid>,
    pub(crate) subjects: HashMap<String, EntityUid>,
    pub(crate) obligations: HashMap<String, EntityUid>,
    pub(crate) audit_logs: HashMap<String, EntityUid>,
    pub(crate) federations: HashMap<String, EntityUid>,
    pub(crate) organisations: HashMap<String, EntityUid>,
    /// Pruned policy sets by request shape (see [`crate::prune`]).
    pub(crate) prune: PruneCache,
}

impl EntitySnapshot {
    /// The store generation this snapshot was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The Cedar entities (for callers that need the raw Cedar view, e.g. the
    /// benchmark's bare baseline).
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// Number of request shapes whose pruned policy sets this snapshot
    /// remembers.
    pub fn pruned_shapes(&self) -> usize {
        self.prune.len()
    }

    /// Number of entities in the snapshot.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether the snapshot holds no entities (never true: the public
    /// organisation and principal are always present).
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    /// Checks every entity against `schema` (types, required attributes,
    /// enumerated values). The broker calls this after a policy reload that
    /// changed the schema; tests call it on the demo model.
    pub fn check_schema(&self, schema: &Schema) -> Result<(), ModelError> {
        Entities::from_entities(self.entities.iter().cloned(), Some(schema))
            .map(|_| ())
            .map_err(|e| ModelError::Schema(e.to_string()))
    }
}

macro_rules! store_accessors {
    ($($field:ident : $ty:ty => $upsert:ident, $remove:ident, $get:ident);+ $(;)?) => {
        $(
            #[doc = concat!("Inserts or replaces a `", stringify!($ty), "` (by id).")]
            pub fn $upsert(&mut self, value: $ty) {
                self.$field.insert(value.id.clone(), value);
                self.touch();
            }

            #[doc = concat!("Removes a `", stringify!($ty), "` by id.")]
            pub fn $remove(&mut self, id: &str) -> Option<$ty> {
                let removed = self.$field.remove(id);
                if removed.is_some() {
                    self.touch();
                }
                removed
            }

            #[doc = concat!("Looks up a `", stringify!($ty), "` by id.")]
            pub fn $get(&self, id: &str) -> Option<&$ty> {
                self.$field.get(id)
            }
        )+
    };
}

/// The broker's typed entity model. Mutations bump the generation and drop
/// the cached snapshot; [`EntityStore::snapshot`] rebuilds it on demand.
#[derive(Debug, Default)]
pub struct EntityStore {
    organisations: BTreeMap<String, Organisation>,
    users: BTreeMap<String, User>,
    nodes: BTreeMap<String, Node>,
    federations: BTreeMap<String, Federation>,
    datasets: BTreeMap<String, Dataset>,
    grants: BTreeMap<String, Grant>,
    requests: BTreeMap<String, AccessRequest>,
    subjects: BTreeMap<String, DataSubject>,
    obligations: BTreeMap<String, Obligation>,
    audit_logs: BTreeMap<String, AuditLog>,
    generation: u64,
    cache: Mutex<Option<Arc<EntitySnapshot>>>,
}

impl EntityStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    store_accessors! {
        organisations: Organisation => upsert_organisation, remove_organisation, organisation;
        users: User => upsert_user, remove_user, user;
        nodes: Node => upsert_node, remove_node, node;
        federations: Federation => upsert_federation, remove_federation, federation;
        datasets: Dataset => upsert_dataset, remove_dataset, dataset;
        grants: Grant => upsert_grant, remove_grant, grant;
        requests: AccessRequest => upsert_request, remove_request, request;
        subjects: DataSubject => upsert_subject, remove_subject, subject;
        obligations: Obligation => upsert_obligation, remove_obligation, obligation;
        audit_logs: AuditLog => upsert_audit_log, remove_audit_log, audit_log;
    }

    /// All grants (the broker uses them e.g. to compute the accumulation count).
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// Removes a dataset and the grants, access requests and obligations
    /// that name it, so that the entity data stays free of dangling
    /// references (a dangling one would fail every decision). Returns the
    /// removed dataset.
    pub fn remove_dataset_and_dependents(&mut self, id: &str) -> Option<Dataset> {
        let before = (
            self.grants.len(),
            self.requests.len(),
            self.obligations.len(),
        );
        self.grants.retain(|_, g| g.dataset != id);
        self.requests.retain(|_, r| r.dataset != id);
        self.obligations.retain(|_, o| o.dataset != id);
        let after = (
            self.grants.len(),
            self.requests.len(),
            self.obligations.len(),
        );
        if before != after {
            self.touch();
        }
        self.remove_dataset(id)
    }

    /// Monotonic change counter.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn touch(&mut self) {
        self.generation += 1;
        match self.cache.get_mut() {
            Ok(cache) => *cache = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
    }

    /// Active grants on personal datasets of `owner` held by organisation
    /// `org` at time `now` that allow raw rows (not aggregate-only): the
    /// anti-accumulation count the broker puts into
    /// [`crate::DecisionRequest::raw_personal_grants_at_owner`].
    pub fn raw_personal_grants_at_owner(&self, org: &str, owner: &str, now: i64) -> i64 {
        let count = self
            .grants
            .values()
            .filter(|g| {
                g.grantee == org
                    && !g.aggregate_only
                    && g.state == GrantState::Active
                    && g.not_before <= now
                    && g.not_after.is_none_or(|end| now < end)
            })
            .filter(|g| {
                self.datasets
                    .get(&g.dataset)
                    .is_some_and(|d| d.owner == owner && d.contains_personal_data)
            })
            .count();
        i64::try_from(count).unwrap_or(i64::MAX)
    }

    /// The Cedar snapshot of the current generation, built on first use after
    /// a change and shared afterwards.
    pub fn snapshot(&self) -> Result<Arc<EntitySnapshot>, ModelError> {
        let mut cache = match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(snapshot) = cache.as_ref() {
            return Ok(Arc::clone(snapshot));
        }
        let snapshot = Arc::new(self.build()?);
        *cache = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }

    fn build(&self) -> Result<EntitySnapshot, ModelError> {
        let names = Names::new()?;
        let mut b = Builder {
            entities: Vec::new(),
        };

        // Organisations, including the implicit public organisation.
        let mut orgs: HashMap<&str, (EntityUid, OrgKind)> = HashMap::new();
        let implicit_public = Organisation::new(PUBLIC_ORG_ID, OrgKind::Public);
        let public_org = self
            .organisations
            .get(PUBLIC_ORG_ID)
            .unwrap_or(&implicit_public);
        if public_org.kind != OrgKind::Public {
            return Err(ModelError::Inconsistent {
                entity: format!("Organisation::\"{PUBLIC_ORG_ID}\""),
                message: format!(
                    "the reserved organisation must have kind `public`, not `{}`",
                    public_org.kind
                ),
            });
        }
        let all_orgs = self
            .organisations
            .values()
            .chain((!self.organisations.contains_key(PUBLIC_ORG_ID)).then_some(&implicit_public));
        for o in all_orgs {
            if o.max_raw_personal_grants < 0 {
                return Err(ModelError::Inconsistent {
                    entity: format!("Organisation::\"{}\"", o.id),
                    message: "`max_raw_personal_grants` must not be negative".to_owned(),
                });
            }
            let uid = Names::uid(&names.organisation, &o.id);
            b.push(
                &uid,
                vec![
                    (
                        "kind",
                        RestrictedExpression::new_entity_uid(names.kind(o.kind).clone()),
                    ),
                    (
                        "max_raw_personal_grants",
                        RestrictedExpression::new_long(o.max_raw_personal_grants),
                    ),
                ],
                HashSet::new(),
            )?;
            orgs.insert(o.id.as_str(), (uid, o.kind));
        }
        let org_ref = |entity: &dyn Fn() -> String, field: &'static str, id: &str| {
            orgs.get(id)
                .cloned()
                .ok_or_else(|| ModelError::DanglingReference {
                    entity: entity(),
                    field,
                    target_type: "organisation",
                    target: id.to_owned(),
                })
        };

        let mut users = HashMap::new();
        for u in self.users.values() {
            let name = || format!("User::\"{}\"", u.id);
            let (org, kind) = org_ref(&name, "org", &u.org)?;
            let uid = Names::uid(&names.user, &u.id);
            let roles = u
                .roles
                .iter()
                .map(|r| RestrictedExpression::new_entity_uid(names.roles[r.index()].clone()));
            b.push(
                &uid,
                vec![
                    ("org", RestrictedExpression::new_entity_uid(org.clone())),
                    ("roles", RestrictedExpression::new_set(roles)),
                ],
                HashSet::from([org.clone()]),
            )?;
            users.insert(u.id.clone(), PrincipalInfo { uid, org, kind });
        }

        let mut nodes = HashMap::new();
        for n in self.nodes.values() {
            let name = || format!("Node::\"{}\"", n.id);
            let (org, kind) = org_ref(&name, "org", &n.org)?;
            let uid = Names::uid(&names.node, &n.id);
            b.push(
                &uid,
                vec![("org", RestrictedExpression::new_entity_uid(org.clone()))],
                HashSet::from([org.clone()]),
            )?;
            nodes.insert(n.id.clone(), PrincipalInfo { uid, org, kind });
        }

        let public = PrincipalInfo {
            uid: names.public_principal.clone(),
            org: Names::uid(&names.organisation, PUBLIC_ORG_ID),
            kind: OrgKind::Public,
        };
        b.entities
            .push(Entity::new_no_attrs(public.uid.clone(), HashSet::new()));

        let mut federations = HashMap::new();
        for f in self.federations.values() {
            let name = || format!("Federation::\"{}\"", f.id);
            let (root, _) = org_ref(&name, "root", &f.root)?;
            let uid = Names::uid(&names.federation, &f.id);
            b.push(
                &uid,
                vec![("root", RestrictedExpression::new_entity_uid(root))],
                HashSet::new(),
            )?;
            federations.insert(f.id.clone(), uid);
        }

        let mut datasets = HashMap::new();
        for d in self.datasets.values() {
            let name = || format!("Dataset::\"{}\"", d.id);
            let (owner, _) = org_ref(&name, "owner", &d.owner)?;
            let personal_class = matches!(
                d.classification,
                Classification::Personal | Classification::Special
            );
            if personal_class && !d.contains_personal_data {
                return Err(ModelError::Inconsistent {
                    entity: name(),
                    message: format!(
                        "classification `{}` requires `contains_personal_data`",
                        d.classification
                    ),
                });
            }
            if d.contains_personal_data && d.classification == Classification::Public {
                return Err(ModelError::Inconsistent {
                    entity: name(),
                    message: "personal data cannot be classified `public`".to_owned(),
                });
            }
            let uid = Names::uid(&names.dataset, &d.id);
            let purposes = d
                .allowed_purposes
                .iter()
                .map(|p| RestrictedExpression::new_entity_uid(names.purpose(*p).clone()));
            b.push(
                &uid,
                vec![
                    ("owner", RestrictedExpression::new_entity_uid(owner)),
                    (
                        "classification",
                        RestrictedExpression::new_entity_uid(
                            names.classifications[d.classification.index()].clone(),
                        ),
                    ),
                    (
                        "public_space_origin",
                        RestrictedExpression::new_bool(d.public_space_origin),
                    ),
                    (
                        "contains_personal_data",
                        RestrictedExpression::new_bool(d.contains_personal_data),
                    ),
                    (
                        "legal_basis",
                        RestrictedExpression::new_entity_uid(
                            names.legal_bases[d.legal_basis.index()].clone(),
                        ),
                    ),
                    ("allowed_purposes", RestrictedExpression::new_set(purposes)),
                    (
                        "anonymisation_required",
                        RestrictedExpression::new_bool(d.anonymisation_required),
                    ),
                ],
                HashSet::new(),
            )?;
            datasets.insert(d.id.clone(), uid);
        }
        let dataset_ref = |entity: &dyn Fn() -> String, field: &'static str, id: &str| {
            datasets
                .get(id)
                .cloned()
                .ok_or_else(|| ModelError::DanglingReference {
                    entity: entity(),
                    field,
                    target_type: "dataset",
                    target: id.to_owned(),
                })
        };

        let mut grants = HashMap::new();
        for g in self.grants.values() {
            let name = || format!("Grant::\"{}\"", g.id);
            let (grantee, _) = org_ref(&name, "grantee", &g.grantee)?;
            let dataset = dataset_ref(&name, "dataset", &g.dataset)?;
            check_period(&name, g.not_before, g.not_after)?;
            let uid = Names::uid(&names.grant, &g.id);
            let mut attrs = vec![
                ("grantee", RestrictedExpression::new_entity_uid(grantee)),
                ("dataset", RestrictedExpression::new_entity_uid(dataset)),
                (
                    "purpose",
                    RestrictedExpression::new_entity_uid(names.purpose(g.purpose).clone()),
                ),
                ("not_before", RestrictedExpression::new_long(g.not_before)),
                (
                    "state",
                    RestrictedExpression::new_entity_uid(
                        names.grant_states[g.state.index()].clone(),
                    ),
                ),
            ];
            if let Some(end) = g.not_after {
                attrs.push(("not_after", RestrictedExpression::new_long(end)));
            }
            if g.aggregate_only {
                attrs.push(("aggregate_only", RestrictedExpression::new_bool(true)));
            }
            b.push(&uid, attrs, HashSet::new())?;
            grants.insert(g.id.clone(), uid);
        }

        let mut requests = HashMap::new();
        for r in self.requests.values() {
            let name = || format!("AccessRequest::\"{}\"", r.id);
            let (requester_org, _) = org_ref(&name, "requester_org", &r.requester_org)?;
            let requester =
                users
                    .get(&r.requester)
                    .ok_or_else(|| ModelError::DanglingReference {
                        entity: name(),
                        field: "requester",
                        target_type: "user",
                        target: r.requester.clone(),
                    })?;
            if requester.org != requester_org {
                return Err(ModelError::Inconsistent {
                    entity: name(),
                    message: format!(
                        "requester `{}` does not belong to `{}`",
                        r.requester, r.requester_org
                    ),
                });
            }
            let dataset = dataset_ref(&name, "dataset", &r.dataset)?;
            check_period(&name, r.not_before, r.not_after)?;
            let uid = Names::uid(&names.access_request, &r.id);
            let mut attrs = vec![
                (
                    "requester",
                    RestrictedExpression::new_entity_uid(requester.uid.clone()),
                ),
                (
                    "requester_org",
                    RestrictedExpression::new_entity_uid(requester_org),
                ),
                ("dataset", RestrictedExpression::new_entity_uid(dataset)),
                (
                    "purpose",
                    RestrictedExpression::new_entity_uid(names.purpose(r.purpose).clone()),
                ),
                ("not_before", RestrictedExpression::new_long(r.not_before)),
                (
                    "state",
                    RestrictedExpression::new_entity_uid(
                        names.request_states[r.state.index()].clone(),
                    ),
                ),
            ];
            if let Some(end) = r.not_after {
                attrs.push(("not_after", RestrictedExpression::new_long(end)));
            }
            b.push(&uid, attrs, HashSet::new())?;
            requests.insert(r.id.clone(), uid);
        }

        let mut subjects = HashMap::new();
        for s in self.subjects.values() {
            let name = || format!("DataSubject::\"{}\"", s.id);
            let (controller, _) = org_ref(&name, "controller", &s.controller)?;
            let account = users
                .get(&s.account)
                .ok_or_else(|| ModelError::DanglingReference {
                    entity: name(),
                    field: "account",
                    target_type: "user",
                    target: s.account.clone(),
                })?;
            let uid = Names::uid(&names.data_subject, &s.id);
            b.push(
                &uid,
                vec![
                    (
                        "account",
                        RestrictedExpression::new_entity_uid(account.uid.clone()),
                    ),
                    (
                        "controller",
                        RestrictedExpression::new_entity_uid(controller),
                    ),
                ],
                HashSet::new(),
            )?;
            subjects.insert(s.id.clone(), uid);
        }

        let mut obligations = HashMap::new();
        for o in self.obligations.values() {
            let name = || format!("Obligation::\"{}\"", o.id);
            let (obligor, _) = org_ref(&name, "obligor", &o.obligor)?;
            let (beneficiary, _) = org_ref(&name, "beneficiary", &o.beneficiary)?;
            let dataset = dataset_ref(&name, "dataset", &o.dataset)?;
            let uid = Names::uid(&names.obligation, &o.id);
            b.push(
                &uid,
                vec![
                    ("obligor", RestrictedExpression::new_entity_uid(obligor)),
                    (
                        "beneficiary",
                        RestrictedExpression::new_entity_uid(beneficiary),
                    ),
                    ("dataset", RestrictedExpression::new_entity_uid(dataset)),
                    ("active", RestrictedExpression::new_bool(o.active)),
                ],
                HashSet::new(),
            )?;
            obligations.insert(o.id.clone(), uid);
        }

        let mut audit_logs = HashMap::new();
        for a in self.audit_logs.values() {
            let name = || format!("AuditLog::\"{}\"", a.id);
            let (owner, _) = org_ref(&name, "owner", &a.owner)?;
            let uid = Names::uid(&names.audit_log, &a.id);
            b.push(
                &uid,
                vec![("owner", RestrictedExpression::new_entity_uid(owner))],
                HashSet::new(),
            )?;
            audit_logs.insert(a.id.clone(), uid);
        }

        let entities = Entities::from_entities(b.entities, None)
            .map_err(|e| ModelError::Cedar(e.to_string()))?;
        Ok(EntitySnapshot {
            generation: self.generation,
            entities,
            names,
            users,
            nodes,
            public,
            datasets,
            grants,
            requests,
            subjects,
            obligations,
            audit_logs,
            federations,
            organisations: orgs
                .iter()
                .map(|(id, (uid, _))| ((*id).to_owned(), uid.clone()))
                .collect(),
            prune: PruneCache::default(),
        })
    }
}

fn check_period(
    entity: &dyn Fn() -> String,
    not_before: i64,
    not_after: Option<i64>,
) -> Result<(), ModelError> {
    match not_after {
        Some(end) if end <= not_before => Err(ModelError::Inconsistent {
            entity: entity(),
            message: format!("`not_after` ({end}) must be later than `not_before` ({not_before})"),
        }),
        _ => Ok(()),
    }
}

struct Builder {
    entities: Vec<Entity>,
}

impl Builder {
    fn push(
        &mut self,
        uid: &EntityUid,
        attrs: Vec<(&str, RestrictedExpression)>,
        parents: HashSet<EntityUid>,
    ) -> Result<(), ModelError> {
        let attrs = attrs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<HashMap<_, _>>();
        let entity = Entity::new(uid.clone(), attrs, parents)
            .map_err(|e| ModelError::Cedar(format!("{uid}: {e}")))?;
        self.entities.push(entity);
        Ok(())
    }
}
