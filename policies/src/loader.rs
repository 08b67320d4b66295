//! Loading a policy directory: read the schema and every `*.cedar` file in a
//! deterministic order, parse, rename each policy to its `@id`, check the
//! annotations, and validate strictly against the schema. Every problem is
//! reported with file, line, column and message; nothing half-valid loads.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, Effect, EntityId, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, ResourceConstraint, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::Action;

/// Name of the schema file inside a policy directory.
pub const SCHEMA_FILE: &str = "schema.cedarschema";
/// Sub-directory of a policy directory holding the `*.cedar` files.
pub const POLICY_SUBDIR: &str = "policies";

/// Pseudo-policy reported when no policy permits a request.
pub const DEFAULT_DENY_ID: &str = "default-deny";
/// Pseudo-policy reported when a policy could not be evaluated (fail closed).
pub const EVALUATION_ERROR_ID: &str = "evaluation-error";
/// Pseudo-policy reported when the request names an unknown entity.
pub const INVALID_REQUEST_ID: &str = "invalid-request";

/// Ids no policy file may use.
pub const RESERVED_IDS: &[&str] = &[DEFAULT_DENY_ID, EVALUATION_ERROR_ID, INVALID_REQUEST_ID];

/// Annotations every policy must carry (besides `@id`).
pub const REQUIRED_ANNOTATIONS: &[&str] = &["title", "reason_de", "reason_en"];

/// One file of a policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// Name relative to the policy directory, `/`-separated
    /// (`schema.cedarschema`, `policies/non-use.cedar`); hashed.
    pub name: String,
    /// Where it came from, for error messages (a filesystem path, or
    /// `bundled:` + name).
    pub origin: String,
    pub text: String,
}

/// The files of a policy set: one schema and the policy files, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    pub schema: SourceFile,
    pub policies: Vec<SourceFile>,
}

macro_rules! bundled_files {
    ($($name:literal),+ $(,)?) => {
        &[$(($name, include_str!(concat!("../policies/", $name)))),+]
    };
}

/// The policy files compiled into the crate (`policies/policies/*.cedar`).
/// A test checks that this list matches the directory.
pub(crate) const BUNDLED_POLICIES: &[(&str, &str)] = bundled_files![
    "consent.cedar",
    "dpo-audit.cedar",
    "governance.cedar",
    "non-use.cedar",
    "obligations.cedar",
    "public-access.cedar",
    "purpose-binding.cedar",
    "research-access.cedar",
];

const BUNDLED_SCHEMA: &str = include_str!("../schema.cedarschema");

impl PolicySource {
    /// A source from files; the policy files are sorted by name.
    pub fn new(schema: SourceFile, mut policies: Vec<SourceFile>) -> Self {
        policies.sort_by(|a, b| a.name.cmp(&b.name));
        Self { schema, policies }
    }

    /// The schema and policies shipped with this crate (the broker's default
    /// policy set and the demo's).
    pub fn bundled() -> Self {
        let file = |name: String, text: &str| SourceFile {
            origin: format!("bundled:{name}"),
            name,
            text: text.to_owned(),
        };
        Self::new(
            file(SCHEMA_FILE.to_owned(), BUNDLED_SCHEMA),
            BUNDLED_POLICIES
                .iter()
                .map(|(name, text)| file(format!("{POLICY_SUBDIR}/{name}"), text))
                .collect(),
        )
    }

    /// Reads `DIR/schema.cedarschema` and every `DIR/policies/*.cedar`.
    pub fn from_dir(dir: &Path) -> Result<Self, LoadError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|e| LoadError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        };
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = SourceFile {
            name: SCHEMA_FILE.to_owned(),
            origin: schema_path.display().to_string(),
            text: read(&schema_path)?,
        };
        let policy_dir = dir.join(POLICY_SUBDIR);
        let entries = std::fs::read_dir(&policy_dir).map_err(|e| LoadError::Io {
            path: policy_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let mut policies = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LoadError::Io {
                path: policy_dir.display().to_string(),
                message: e.to_string(),
            })?;
            let path = entry.path();
            let is_cedar = path.extension().is_some_and(|ext| ext == "cedar");
            if !is_cedar || !path.is_file() {
                continue;
            }
            let file_name = entry.file_name().to_string_lossy().into_owned();
            policies.push(SourceFile {
                name: format!("{POLICY_SUBDIR}/{file_name}"),
                origin: path.display().to_string(),
                text: read(&path)?,
            });
        }
        if policies.is_empty() {
            return Err(LoadError::NoPolicyFiles {
                dir: policy_dir.display().to_string(),
            });
        }
        Ok(Self::new(schema, policies))
    }

    /// Hex sha256 over the canonical form of the set: for every file sorted
    /// by name, its name, a NUL byte, its length as 8 big-endian bytes, and
    /// its contents. Independent of where the files live.
    pub fn hash(&self) -> String {
        let mut files: Vec<&SourceFile> = std::iter::once(&self.schema)
            .chain(&self.policies)
            .collect();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut hasher = Sha256::new();
        for f in files {
            hasher.update(f.name.as_bytes());
            hasher.update([0u8]);
            hasher.update((f.text.len() as u64).to_be_bytes());
            hasher.update(f.text.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

/// What kind of problem a [`LoadIssue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// The schema does not parse or is inconsistent.
    Schema,
    /// A policy file does not parse.
    Syntax,
    /// Strict validation against the schema failed.
    Validation,
    /// A policy has no `@id`.
    MissingId,
    /// Two policies share an `@id`.
    DuplicateId,
    /// An `@id` is malformed or reserved.
    InvalidId,
    /// A required annotation is missing or empty.
    MissingAnnotation,
    /// A template was found (grants are entities, templates are not used).
    Template,
}

/// One problem found while loading, with its location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadIssue {
    pub kind: IssueKind,
    /// The file's origin (path or `bundled:` name).
    pub file: String,
    /// 1-based line, if the problem has a location.
    pub line: Option<usize>,
    /// 1-based column (in characters), if the problem has a location.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            (Some(line), None) => write!(f, "{}:{line}: {}", self.file, self.message),
            _ => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Why a policy set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("cannot read `{path}`: {message}")]
    Io { path: String, message: String },
    /// The policy directory holds no `*.cedar` file.
    #[error("no policy files (`*.cedar`) in `{dir}`")]
    NoPolicyFiles { dir: String },
    /// The files were read but the set is invalid.
    #[error("invalid policy set ({} problem(s)):\n{}", issues.len(), render_issues(issues))]
    Invalid { issues: Vec<LoadIssue> },
}

impl LoadError {
    /// The located problems (empty for I/O errors).
    pub fn issues(&self) -> &[LoadIssue] {
        match self {
            LoadError::Invalid { issues } => issues,
            _ => &[],
        }
    }
}

fn render_issues(issues: &[LoadIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Effect of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyEffect {
    Permit,
    Forbid,
}

impl fmt::Display for PolicyEffect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyEffect::Permit => "permit",
            PolicyEffect::Forbid => "forbid",
        })
    }
}

/// A loaded policy's identity and plain-language texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyInfo {
    pub id: String,
    pub effect: PolicyEffect,
    pub title: String,
    pub reason_de: String,
    pub reason_en: String,
    /// Origin of the file that defines it.
    pub file: String,
    /// 1-based line of the policy's first token.
    pub line: usize,
}

/// A validated policy set: schema, policies renamed to their `@id`, their
/// texts, and the hash of the files.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    pub(crate) schema: Schema,
    pub(crate) policy_set: PolicySet,
    pub(crate) hash: String,
    pub(crate) infos: HashMap<PolicyId, PolicyInfo>,
    /// Per action (by [`Action`] index): bit masks of the principal and
    /// resource kinds the schema lets it apply to.
    pub(crate) applies: Vec<(u8, u8)>,
    /// Per (action, principal kind, resource kind): the policies whose scope
    /// can match such a request; `None` = use the whole set. See
    /// [`PolicyBundle::scoped_policy_set`].
    pub(crate) scoped: Vec<Option<PolicySet>>,
    /// Unique per loaded set in this process: keys the engine's caches.
    pub(crate) serial: u64,
}

fn next_serial() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

const PRINCIPAL_KINDS: usize = 3;
const RESOURCE_KINDS: usize = 8;

fn scoped_index(action: Action, principal_bit: u8, resource_bit: u8) -> usize {
    let p = principal_bit.trailing_zeros() as usize;
    let r = resource_bit.trailing_zeros() as usize;
    (action.index() * PRINCIPAL_KINDS + p) * RESOURCE_KINDS + r
}

/// Splits the set by scope: for every (action, principal kind, resource kind)
/// the schema allows, the policies whose action scope can include the action
/// and whose `is` scopes (if any) name those kinds. A policy left out has a
/// scope that is false for every such request — Cedar evaluates the scope
/// before the conditions, so it could neither be satisfied nor error. The
/// decision is the same as with the whole set; only the per-policy overhead
/// of the authorizer is saved. On any problem the whole set is used.
fn scope_policy_sets(
    set: &PolicySet,
    schema: &Schema,
    applies: &[(u8, u8)],
) -> Vec<Option<PolicySet>> {
    let size = Action::ALL.len() * PRINCIPAL_KINDS * RESOURCE_KINDS;
    let mut out: Vec<Option<PolicySet>> = vec![None; size];
    let Ok(action_entities) = schema.action_entities() else {
        return out;
    };
    let Ok(action_type) = EntityTypeName::from_str(Action::CEDAR_TYPE) else {
        return out;
    };
    for (action, &(principals, resources)) in Action::ALL.iter().zip(applies) {
        let uid =
            EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(action.as_str()));
        let mut lineage: Vec<EntityUid> = vec![uid.clone()];
        if let Some(ancestors) = action_entities.ancestors(&uid) {
            lineage.extend(ancestors.cloned());
        }
        let action_matches = |p: &Policy| match p.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => a == uid,
            ActionConstraint::In(list) => list.iter().any(|a| lineage.contains(a)),
        };
        for p_bit in (0..PRINCIPAL_KINDS)
            .map(|i| 1u8 << i)
            .filter(|b| principals & b != 0)
        {
            for r_bit in (0..RESOURCE_KINDS)
                .map(|i| 1u8 << i)
                .filter(|b| resources & b != 0)
            {
                let matching = set.policies().filter(|p| {
                    let principal_ok = match p.principal_constraint() {
                        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => {
                            principal_bit(&t.to_string()) == p_bit
                        }
                        _ => true,
                    };
                    let resource_ok = match p.resource_constraint() {
                        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => {
                            resource_bit(&t.to_string()) == r_bit
                        }
                        _ => true,
                    };
                    principal_ok && resource_ok && action_matches(p)
                });
                if let Ok(subset) = PolicySet::from_policies(matching.cloned()) {
                    out[scoped_index(*action, p_bit, r_bit)] = Some(subset);
                }
            }
        }
    }
    out
}

/// Bit of a principal entity type in [`PolicyBundle::applies`].
pub(crate) fn principal_bit(type_name: &str) -> u8 {
    match type_name {
        "Allmende::User" => 1,
        "Allmende::Node" => 2,
        "Allmende::Public" => 4,
        _ => 0,
    }
}

/// Bit of a resource entity type in [`PolicyBundle::applies`].
pub(crate) fn resource_bit(type_name: &str) -> u8 {
    match type_name {
        "Allmende::Dataset" => 1,
        "Allmende::Grant" => 2,
        "Allmende::AccessRequest" => 4,
        "Allmende::DataSubject" => 8,
        "Allmende::Obligation" => 16,
        "Allmende::AuditLog" => 32,
        "Allmende::Federation" => 64,
        "Allmende::Organisation" => 128,
        _ => 0,
    }
}

/// What each engine action applies to according to `schema`; a missing
/// action is an issue (the engine would ask about it).
fn action_applicability(
    schema: &Schema,
    file: &SourceFile,
) -> Result<Vec<(u8, u8)>, Vec<LoadIssue>> {
    let action_type = EntityTypeName::from_str(Action::CEDAR_TYPE).map_err(|e| {
        vec![LoadIssue {
            kind: IssueKind::Schema,
            file: file.origin.clone(),
            line: None,
            column: None,
            message: format!("bad action type name: {e}"),
        }]
    })?;
    let mut out = Vec::with_capacity(Action::ALL.len());
    let mut issues = Vec::new();
    for action in Action::ALL {
        let uid =
            EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(action.as_str()));
        match (
            schema.principals_for_action(&uid),
            schema.resources_for_action(&uid),
        ) {
            (Some(principals), Some(resources)) => {
                let p = principals.fold(0u8, |m, t| m | principal_bit(&t.to_string()));
                let r = resources.fold(0u8, |m, t| m | resource_bit(&t.to_string()));
                out.push((p, r));
            }
            _ => issues.push(LoadIssue {
                kind: IssueKind::Schema,
                file: file.origin.clone(),
                line: None,
                column: None,
                message: format!(
                    "the schema does not declare action `{action}`, which the engine uses"
                ),
            }),
        }
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

/// Loads and validates `DIR/schema.cedarschema` + `DIR/policies/*.cedar`.
pub fn load_dir(dir: &Path) -> Result<PolicyBundle, LoadError> {
    PolicyBundle::load(&PolicySource::from_dir(dir)?)
}

/// Loads the bundled policy set.
pub fn load_bundled() -> Result<PolicyBundle, LoadError> {
    PolicyBundle::load(&PolicySource::bundled())
}

impl PolicyBundle {
    /// Parses, renames, checks and strictly validates a policy source.
    pub fn load(source: &PolicySource) -> Result<Self, LoadError> {
        let mut issues = Vec::new();

        let schema = match Schema::from_cedarschema_str(&source.schema.text) {
            Ok((schema, warnings)) => {
                for w in warnings {
                    issues.extend(diagnostic_issues(
                        IssueKind::Schema,
                        &source.schema,
                        &w,
                        None,
                    ));
                }
                Some(schema)
            }
            Err(e) => {
                issues.extend(diagnostic_issues(
                    IssueKind::Schema,
                    &source.schema,
                    &e,
                    None,
                ));
                None
            }
        };

        // Parse each file, rename by @id, check annotations.
        let mut policies: Vec<Policy> = Vec::new();
        let mut infos: HashMap<PolicyId, PolicyInfo> = HashMap::new();
        let mut first_seen: BTreeMap<String, (String, usize)> = BTreeMap::new();
        // policy id -> (file index, statement start offset)
        let mut locations: HashMap<PolicyId, (usize, usize)> = HashMap::new();
        for (file_index, file) in source.policies.iter().enumerate() {
            let pset = match PolicySet::from_str(&file.text) {
                Ok(p) => p,
                Err(e) => {
                    issues.extend(diagnostic_issues(IssueKind::Syntax, file, &e, None));
                    continue;
                }
            };
            let starts = statement_starts(&file.text);
            let start_of = |id: &PolicyId| -> usize {
                id.to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|n| starts.get(n).copied())
                    .unwrap_or(0)
            };
            for t in pset.templates() {
                let (line, column) = line_col(&file.text, start_of(t.id()));
                issues.push(LoadIssue {
                    kind: IssueKind::Template,
                    file: file.origin.clone(),
                    line: Some(line),
                    column: Some(column),
                    message: "templates are not used (grants are entities); remove the `?principal`/`?resource` slots".to_owned(),
                });
            }
            let mut file_policies: Vec<&Policy> = pset.policies().collect();
            file_policies.sort_by_key(|p| start_of(p.id()));
            for p in file_policies {
                let offset = start_of(p.id());
                let (line, column) = line_col(&file.text, offset);
                let issue = |kind, message: String| LoadIssue {
                    kind,
                    file: file.origin.clone(),
                    line: Some(line),
                    column: Some(column),
                    message,
                };
                let Some(id) = p.annotation("id") else {
                    issues.push(issue(
                        IssueKind::MissingId,
                        "policy has no `@id` annotation".to_owned(),
                    ));
                    continue;
                };
                if !valid_id(id) {
                    issues.push(issue(
                        IssueKind::InvalidId,
                        format!("policy id `{id}` must be non-empty lowercase ascii letters, digits and `-`"),
                    ));
                    continue;
                }
                if RESERVED_IDS.contains(&id) {
                    issues.push(issue(
                        IssueKind::InvalidId,
                        format!("policy id `{id}` is reserved for the engine"),
                    ));
                    continue;
                }
                if let Some((other_file, other_line)) = first_seen.get(id) {
                    issues.push(issue(
                        IssueKind::DuplicateId,
                        format!("duplicate policy id `{id}` (first defined at {other_file}:{other_line})"),
                    ));
                    continue;
                }
                first_seen.insert(id.to_owned(), (file.origin.clone(), line));
                let mut texts = Vec::new();
                for key in REQUIRED_ANNOTATIONS {
                    match p.annotation(key).map(str::trim) {
                        Some(text) if !text.is_empty() => texts.push(text.to_owned()),
                        _ => issues.push(issue(
                            IssueKind::MissingAnnotation,
                            format!("policy `{id}` has no non-empty `@{key}` annotation"),
                        )),
                    }
                }
                let [title, reason_de, reason_en] =
                    <[String; 3]>::try_from(texts).unwrap_or_default();
                let new_id = PolicyId::new(id);
                let renamed = p.new_id(new_id.clone());
                locations.insert(new_id.clone(), (file_index, offset));
                infos.insert(
                    new_id,
                    PolicyInfo {
                        id: id.to_owned(),
                        effect: match p.effect() {
                            Effect::Permit => PolicyEffect::Permit,
                            Effect::Forbid => PolicyEffect::Forbid,
                        },
                        title,
                        reason_de,
                        reason_en,
                        file: file.origin.clone(),
                        line,
                    },
                );
                policies.push(renamed);
            }
        }

        let Some(schema) = schema else {
            return Err(LoadError::Invalid { issues });
        };
        let applies = match action_applicability(&schema, &source.schema) {
            Ok(a) => a,
            Err(more) => {
                issues.extend(more);
                Vec::new()
            }
        };
        if !issues.is_empty() {
            return Err(LoadError::Invalid { issues });
        }

        let policy_set = match PolicySet::from_policies(policies) {
            Ok(set) => set,
            Err(e) => {
                return Err(LoadError::Invalid {
                    issues: vec![LoadIssue {
                        kind: IssueKind::DuplicateId,
                        file: source.schema.origin.clone(),
                        line: None,
                        column: None,
                        message: e.to_string(),
                    }],
                });
            }
        };

        let validator = Validator::new(schema.clone());
        let result = validator.validate(&policy_set, ValidationMode::Strict);
        let locate = |id: &PolicyId| locations.get(id).map(|(f, o)| (&source.policies[*f], *o));
        for e in result.validation_errors() {
            if let Some((file, offset)) = locate(e.policy_id()) {
                issues.extend(diagnostic_issues(
                    IssueKind::Validation,
                    file,
                    e,
                    Some(offset),
                ));
            }
        }
        for w in result.validation_warnings() {
            if let Some((file, offset)) = locate(w.policy_id()) {
                issues.extend(diagnostic_issues(
                    IssueKind::Validation,
                    file,
                    w,
                    Some(offset),
                ));
            }
        }
        if !issues.is_empty() {
            issues.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
            return Err(LoadError::Invalid { issues });
        }

        let scoped = scope_policy_sets(&policy_set, &schema, &applies);
        Ok(Self {
            schema,
            policy_set,
            hash: source.hash(),
            infos,
            applies,
            scoped,
            serial: next_serial(),
        })
    }

    /// Hex sha256 of the files this set was loaded from.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The validated schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The Cedar policy set (policies renamed to their `@id`).
    pub fn policy_set(&self) -> &PolicySet {
        &self.policy_set
    }

    /// The policies that can apply to a request of this shape (the engine
    /// evaluates only these; the decision equals the whole set's). Falls
    /// back to the whole set.
    pub fn scoped_policy_set(
        &self,
        action: Action,
        principal: &crate::Principal,
        resource: &crate::Resource,
    ) -> &PolicySet {
        self.scoped
            .get(scoped_index(action, principal.bit(), resource.bit()))
            .and_then(Option::as_ref)
            .unwrap_or(&self.policy_set)
    }

    /// Every policy's identity and texts, sorted by id.
    pub fn policies(&self) -> Vec<&PolicyInfo> {
        let mut v: Vec<&PolicyInfo> = self.infos.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Looks up a policy by its `@id`.
    pub fn policy(&self, id: &str) -> Option<&PolicyInfo> {
        self.infos.get(&PolicyId::new(id))
    }

    /// The same set without the named policies (for what-if analysis and
    /// tests). The hash becomes the hash of the original set plus the removed
    /// ids, so decisions never claim to come from the full set.
    pub fn without_policies(&self, ids: &[&str]) -> Result<Self, LoadError> {
        let mut set = self.policy_set.clone();
        let mut infos = self.infos.clone();
        let mut removed: Vec<&str> = ids.to_vec();
        removed.sort_unstable();
        for id in &removed {
            let pid = PolicyId::new(id);
            set.remove_static(pid.clone())
                .map_err(|e| LoadError::Invalid {
                    issues: vec![LoadIssue {
                        kind: IssueKind::InvalidId,
                        file: "<without_policies>".to_owned(),
                        line: None,
                        column: None,
                        message: format!("cannot remove `{id}`: {e}"),
                    }],
                })?;
            infos.remove(&pid);
        }
        let mut hasher = Sha256::new();
        hasher.update(self.hash.as_bytes());
        for id in &removed {
            hasher.update(b"\0without\0");
            hasher.update(id.as_bytes());
        }
        let scoped = scope_policy_sets(&set, &self.schema, &self.applies);
        Ok(Self {
            schema: self.schema.clone(),
            policy_set: set,
            hash: hex::encode(hasher.finalize()),
            infos,
            applies: self.applies.clone(),
            scoped,
            serial: next_serial(),
        })
    }
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Turns a (possibly nested) diagnostic into located issues. `fallback` is
/// the offset used when the diagnostic carries no label.
fn diagnostic_issues(
    kind: IssueKind,
    file: &SourceFile,
    diag: &dyn Diagnostic,
    fallback: Option<usize>,
) -> Vec<LoadIssue> {
    let mut out = Vec::new();
    let mut message = diag.to_string();
    if let Some(help) = diag.help() {
        message.push_str(&format!(" (help: {help})"));
    }
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset())
        .or(fallback);
    let (line, column) = match offset {
        Some(o) => {
            let (l, c) = line_col(&file.text, o);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    out.push(LoadIssue {
        kind,
        file: file.origin.clone(),
        line,
        column,
        message,
    });
    if let Some(related) = diag.related() {
        for r in related {
            out.extend(diagnostic_issues(kind, file, r, fallback));
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Byte offsets of the first token of every top-level statement (policy or
/// template) in a Cedar file, in order. Statements end with `;` outside
/// string literals and `//` comments. Used to locate policies, which the
/// parser numbers `policy0`, `policy1`, … in source order.
pub(crate) fn statement_starts(text: &str) -> Vec<usize> {
    let bytes = text.as_bytes();
    let mut starts = Vec::new();
    let mut in_statement = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if !in_statement {
            starts.push(i);
            in_statement = true;
        }
        match b {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b';' => {
                in_statement = false;
                i += 1;
            }
            _ => i += 1,
        }
    }
    starts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn statement_starts_skip_comments_and_strings() {
        let text = "// a; comment\n@id(\"x;y\")\npermit(principal, action, resource);\n\n  forbid(principal, action, resource) when { \"a\\\";\" == \"b\" };\n";
        let starts = statement_starts(text);
        assert_eq!(starts.len(), 2);
        assert_eq!(line_col(text, starts[0]), (2, 1));
        assert_eq!(line_col(text, starts[1]), (5, 3));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("äb\ncd", 5), (2, 2));
        assert_eq!(line_col("äb", 1), (1, 1));
    }
}
