//! Proving properties of a policy set with Cedar's symbolic compiler
//! (`cedar-policy-symcc`) and the SMT solver cvc5.
//!
//! A *property* is a `forbid` policy in `properties/*.cedar` that describes
//! requests the policy set must never allow (a non-use thesis, a role rule).
//! An *assumption* (`@kind("assumption")`) is a `forbid … unless { invariant }`
//! stating what the broker guarantees about every request (the caller belongs
//! to `requester_org`, …). For every request environment of the schema
//! (principal type, action, resource type) the prover asks the solver for a
//! request and entity store that the policy set allows, that breaks no
//! assumption and that the property matches; none means the property is
//! proved for *every* request and entity store the schema allows.
//!
//! The engine denies any request on which a policy errors (Cedar itself
//! skips an erroring policy). The prover models that: for every policy that
//! can raise an arithmetic overflow it adds a guard `forbid` that matches
//! exactly when the policy errors (see [`error_condition`]), so a
//! counterexample is a request the engine allows. Each counterexample is
//! replayed through Cedar's authorizer and reported with the policies that
//! allowed it; one the engine would still deny is reported as such.
//!
//! Proofs need the `cvc5` executable (`CVC5` names its path, else `PATH`);
//! without it [`prove`] fails with [`ProveError::SolverUnavailable`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{
    ActionConstraint, Authorizer, Decision as CedarDecision, Effect, EntityTypeName, Policy,
    PolicyId, PolicySet, PrincipalConstraint, RequestEnv, ResourceConstraint, Schema,
    ValidationMode, Validator,
};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet, Env};
use serde::Serialize;
use serde_json::{Value, json};

use crate::loader::{
    IssueKind, LoadError, LoadIssue, PolicyBundle, REQUIRED_ANNOTATIONS, SourceFile, line_col,
    statement_starts,
};

/// Sub-directory of a policy directory holding the property files.
pub const PROPERTY_SUBDIR: &str = "properties";

/// The property files compiled into the crate (`policies/properties/*.cedar`).
/// A test checks that this list matches the directory.
pub(crate) const BUNDLED_PROPERTIES: &[(&str, &str)] = &[
    (
        "assumptions.cedar",
        include_str!("../properties/assumptions.cedar"),
    ),
    ("grants.cedar", include_str!("../properties/grants.cedar")),
    ("non-use.cedar", include_str!("../properties/non-use.cedar")),
    ("roles.cedar", include_str!("../properties/roles.cedar")),
];

/// Whether a property file entry is a property to prove or an assumption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PropertyKind {
    /// Requests the policy set must never allow.
    Property,
    /// Requests that never reach the engine (a broker invariant).
    Assumption,
}

/// One property or assumption with its texts.
#[derive(Debug, Clone)]
pub struct Property {
    pub id: String,
    pub kind: PropertyKind,
    pub title: String,
    pub reason_de: String,
    pub reason_en: String,
    /// Origin of the defining file (a path or `bundled:` + name).
    pub file: String,
    /// 1-based line of the property's first token.
    pub line: usize,
    policy: Policy,
}

impl Property {
    /// The property as Cedar text.
    pub fn text(&self) -> String {
        self.policy.to_string()
    }
}

/// The properties and assumptions a policy set is proved against.
#[derive(Debug, Clone)]
pub struct PropertySet {
    entries: Vec<Property>,
    files: Vec<SourceFile>,
}

impl PropertySet {
    /// The bundled properties (the resolution's theses and the role, consent
    /// and grant rules).
    pub fn bundled() -> Result<Self, LoadError> {
        Self::parse(bundled_files())
    }

    /// The bundled properties plus `DIR/properties/*.cedar` if that directory
    /// exists. A file there with the name of a bundled file must be identical
    /// to it: the bundled properties cannot be weakened by a policy directory.
    pub fn for_dir(dir: &Path) -> Result<Self, LoadError> {
        let mut files: BTreeMap<String, SourceFile> = bundled_files()
            .into_iter()
            .map(|f| (f.name.clone(), f))
            .collect();
        let prop_dir = dir.join(PROPERTY_SUBDIR);
        if prop_dir.is_dir() {
            let io = |path: &Path, e: std::io::Error| LoadError::Io {
                path: path.display().to_string(),
                message: e.to_string(),
            };
            let entries = std::fs::read_dir(&prop_dir).map_err(|e| io(&prop_dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io(&prop_dir, e))?;
                let path = entry.path();
                if !path.is_file() || path.extension().is_none_or(|x| x != "cedar") {
                    continue;
                }
                let name = format!("{PROPERTY_SUBDIR}/{}", entry.file_name().to_string_lossy());
                let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
                match files.get(&name) {
                    Some(bundled) if bundled.text == text => {}
                    Some(_) => {
                        return Err(LoadError::Invalid {
                            issues: vec![LoadIssue {
                                kind: IssueKind::Validation,
                                file: path.display().to_string(),
                                line: None,
                                column: None,
                                message: format!(
                                    "`{name}` differs from the bundled property file of that name; the bundled properties cannot be changed (add a new file instead)"
                                ),
                            }],
                        });
                    }
                    None => {
                        files.insert(
                            name.clone(),
                            SourceFile {
                                name,
                                origin: path.display().to_string(),
                                text,
                            },
                        );
                    }
                }
            }
        }
        Self::parse(files.into_values().collect())
    }

    /// Parses property files; every entry needs `@id`, `@title`,
    /// `@reason_de`, `@reason_en`, must be a `forbid`, and `@kind` (if given)
    /// is `property` or `assumption`.
    pub fn parse(mut files: Vec<SourceFile>) -> Result<Self, LoadError> {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let mut issues = Vec::new();
        let mut entries = Vec::new();
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for file in &files {
            let set = match PolicySet::from_str(&file.text) {
                Ok(s) => s,
                Err(e) => {
                    issues.push(LoadIssue {
                        kind: IssueKind::Syntax,
                        file: file.origin.clone(),
                        line: None,
                        column: None,
                        message: e.to_string(),
                    });
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
            if set.templates().next().is_some() {
                issues.push(LoadIssue {
                    kind: IssueKind::Template,
                    file: file.origin.clone(),
                    line: None,
                    column: None,
                    message: "properties cannot be templates".to_owned(),
                });
            }
            let mut policies: Vec<&Policy> = set.policies().collect();
            policies.sort_by_key(|p| start_of(p.id()));
            for p in policies {
                let (line, column) = line_col(&file.text, start_of(p.id()));
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
                        "property has no `@id` annotation".to_owned(),
                    ));
                    continue;
                };
                if !crate::loader::valid_id(id) {
                    issues.push(issue(
                        IssueKind::InvalidId,
                        format!(
                            "property id `{id}` must be lowercase ascii letters, digits and `-`"
                        ),
                    ));
                    continue;
                }
                if let Some(other) = seen.insert(id.to_owned(), file.origin.clone()) {
                    issues.push(issue(
                        IssueKind::DuplicateId,
                        format!("duplicate property id `{id}` (also in {other})"),
                    ));
                    continue;
                }
                if p.effect() != Effect::Forbid {
                    issues.push(issue(
                        IssueKind::Validation,
                        format!("property `{id}` must be a `forbid`: it describes what must never be allowed"),
                    ));
                    continue;
                }
                let kind = match p.annotation("kind") {
                    None | Some("property") => PropertyKind::Property,
                    Some("assumption") => PropertyKind::Assumption,
                    Some(other) => {
                        issues.push(issue(
                            IssueKind::Validation,
                            format!("property `{id}`: `@kind(\"{other}\")` must be `property` or `assumption`"),
                        ));
                        continue;
                    }
                };
                let mut texts = Vec::new();
                for key in REQUIRED_ANNOTATIONS {
                    match p.annotation(key).map(str::trim) {
                        Some(t) if !t.is_empty() => texts.push(t.to_owned()),
                        _ => issues.push(issue(
                            IssueKind::MissingAnnotation,
                            format!("property `{id}` has no non-empty `@{key}` annotation"),
                        )),
                    }
                }
                let [title, reason_de, reason_en] =
                    <[String; 3]>::try_from(texts).unwrap_or_default();
                entries.push(Property {
                    id: id.to_owned(),
                    kind,
                    title,
                    reason_de,
                    reason_en,
                    file: file.origin.clone(),
                    line,
                    policy: p.new_id(PolicyId::new(format!("property:{id}"))),
                });
            }
        }
        if !issues.is_empty() {
            return Err(LoadError::Invalid { issues });
        }
        Ok(Self { entries, files })
    }

    /// The properties to prove.
    pub fn properties(&self) -> impl Iterator<Item = &Property> {
        self.entries
            .iter()
            .filter(|p| p.kind == PropertyKind::Property)
    }

    /// The assumptions every property is proved under.
    pub fn assumptions(&self) -> impl Iterator<Item = &Property> {
        self.entries
            .iter()
            .filter(|p| p.kind == PropertyKind::Assumption)
    }

    /// The files the set was parsed from.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// A copy with only the named properties (and every assumption).
    pub fn only(&self, ids: &[&str]) -> Self {
        Self {
            entries: self
                .entries
                .iter()
                .filter(|p| p.kind == PropertyKind::Assumption || ids.contains(&p.id.as_str()))
                .cloned()
                .collect(),
            files: self.files.clone(),
        }
    }

    /// A copy without the named properties (tests, what-if).
    pub fn without(&self, ids: &[&str]) -> Self {
        Self {
            entries: self
                .entries
                .iter()
                .filter(|p| !ids.contains(&p.id.as_str()))
                .cloned()
                .collect(),
            files: self.files.clone(),
        }
    }

    /// Strict validation of every entry against `schema`.
    fn validate(&self, schema: &Schema) -> Result<(), LoadError> {
        let set = PolicySet::from_policies(self.entries.iter().map(|p| p.policy.clone()))
            .map_err(|e| invalid("<properties>", e.to_string()))?;
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        let mut issues = Vec::new();
        let by_id: BTreeMap<String, &Property> = self
            .entries
            .iter()
            .map(|p| (p.policy.id().to_string(), p))
            .collect();
        let located = |id: &PolicyId, message: String| {
            let p = by_id.get(&id.to_string());
            LoadIssue {
                kind: IssueKind::Validation,
                file: p.map_or_else(|| "<properties>".to_owned(), |p| p.file.clone()),
                line: p.map(|p| p.line),
                column: None,
                message,
            }
        };
        for e in result.validation_errors() {
            issues.push(located(e.policy_id(), e.to_string()));
        }
        for w in result.validation_warnings() {
            issues.push(located(w.policy_id(), w.to_string()));
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(LoadError::Invalid { issues })
        }
    }
}

fn bundled_files() -> Vec<SourceFile> {
    BUNDLED_PROPERTIES
        .iter()
        .map(|(name, text)| {
            let name = format!("{PROPERTY_SUBDIR}/{name}");
            SourceFile {
                origin: format!("bundled:{name}"),
                name,
                text: (*text).to_owned(),
            }
        })
        .collect()
}

fn invalid(file: &str, message: String) -> LoadError {
    LoadError::Invalid {
        issues: vec![LoadIssue {
            kind: IssueKind::Validation,
            file: file.to_owned(),
            line: None,
            column: None,
            message,
        }],
    }
}

/// Why a proof could not be carried out (a failed property is not an error:
/// it is a [`ProofReport`] that does not hold).
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// cvc5 could not be started.
    #[error(
        "cannot start the SMT solver cvc5 ({0}); install it (`apt-get install cvc5`) or set `CVC5` to the path of its executable"
    )]
    SolverUnavailable(String),
    /// The properties do not parse or do not validate against the schema.
    #[error("properties refused:\n{0}")]
    Properties(LoadError),
    /// The symbolic compiler or the solver failed.
    #[error("symbolic compiler: {0}")]
    Symcc(String),
}

/// A policy as named in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyRef {
    pub id: String,
    pub effect: String,
    pub title: String,
}

/// A request and entity store that break a property.
#[derive(Debug, Clone, Serialize)]
pub struct Counterexample {
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub context: String,
    /// One line per entity: uid, parents, attributes.
    pub entities: Vec<String>,
    /// The permits that allow it (empty when the property itself errors).
    pub allowed_by: Vec<PolicyRef>,
    /// Whether the engine allows it when replayed (no policy errors).
    pub engine_allows: bool,
    /// Evaluation errors on replay (the engine denies such a request).
    pub errors: Vec<String>,
}

/// What the prover found for one property.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// No request and entity store the schema allows breaks it.
    Proved,
    /// The policy set allows a request the property forbids.
    Counterexample(Counterexample),
    /// The property itself can raise an evaluation error (then it would not
    /// be checked on that request): rewrite it.
    PropertyErrors(Counterexample),
}

/// The result for one property.
#[derive(Debug, Clone, Serialize)]
pub struct PropertyResult {
    pub id: String,
    pub title: String,
    pub reason_de: String,
    pub reason_en: String,
    pub file: String,
    pub line: usize,
    pub outcome: Outcome,
    /// Request environments (principal type, action, resource type) checked.
    pub environments: usize,
    /// Solver time for this property (compiling the policy set per
    /// environment is shared and counted only in the total).
    #[serde(serialize_with = "ser_ms")]
    pub elapsed: Duration,
}

impl PropertyResult {
    /// Whether the property was proved.
    pub fn holds(&self) -> bool {
        matches!(self.outcome, Outcome::Proved)
    }
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The result of proving a property set against a policy set.
#[derive(Debug, Clone, Serialize)]
pub struct ProofReport {
    pub policy_set_hash: String,
    pub policies: usize,
    /// Ids of the assumptions every property was proved under.
    pub assumptions: Vec<String>,
    /// Policies whose evaluation errors are modelled as denials.
    pub error_guards: Vec<String>,
    pub results: Vec<PropertyResult>,
    #[serde(serialize_with = "ser_ms")]
    pub elapsed: Duration,
}

impl ProofReport {
    /// Whether every property was proved.
    pub fn holds(&self) -> bool {
        self.results.iter().all(PropertyResult::holds)
    }

    /// The properties that failed.
    pub fn failed(&self) -> impl Iterator<Item = &PropertyResult> {
        self.results.iter().filter(|r| !r.holds())
    }
}

impl fmt::Display for ProofReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "policy set sha256:{} ({} policies), {} properties",
            self.policy_set_hash,
            self.policies,
            self.results.len()
        )?;
        writeln!(f, "assuming: {}", self.assumptions.join(", "))?;
        if !self.error_guards.is_empty() {
            writeln!(
                f,
                "evaluation errors (denied by the engine) modelled for: {}",
                self.error_guards.join(", ")
            )?;
        }
        for r in &self.results {
            let ms = r.elapsed.as_secs_f64() * 1000.0;
            match &r.outcome {
                Outcome::Proved => writeln!(f, "  proved   {} ({ms:.0} ms): {}", r.id, r.title)?,
                Outcome::Counterexample(c) => {
                    writeln!(f, "  FAILED   {} ({ms:.0} ms): {}", r.id, r.title)?;
                    writeln!(f, "           defined at {}:{}", r.file, r.line)?;
                    if c.engine_allows {
                        writeln!(
                            f,
                            "    the policy set allows this request, which the property forbids:"
                        )?;
                    } else {
                        writeln!(
                            f,
                            "    Cedar allows this request, which the property forbids; the engine denies it only because a policy errors on it (make that policy error-free):"
                        )?;
                    }
                    write_cex(f, c)?;
                }
                Outcome::PropertyErrors(c) => {
                    writeln!(f, "  FAILED   {} ({ms:.0} ms): {}", r.id, r.title)?;
                    writeln!(f, "           defined at {}:{}", r.file, r.line)?;
                    writeln!(
                        f,
                        "    the property itself can raise an evaluation error (e.g. an overflow), so it would not be checked on this request; rewrite it:"
                    )?;
                    write_cex(f, c)?;
                }
            }
        }
        let failed = self.failed().count();
        write!(
            f,
            "{} of {} properties proved in {:.2} s",
            self.results.len() - failed,
            self.results.len(),
            self.elapsed.as_secs_f64()
        )?;
        if failed > 0 {
            write!(f, "; {failed} FAILED")?;
        }
        writeln!(f)
    }
}

fn write_cex(f: &mut fmt::Formatter<'_>, c: &Counterexample) -> fmt::Result {
    writeln!(f, "      principal: {}", c.principal)?;
    writeln!(f, "      action:    {}", c.action)?;
    writeln!(f, "      resource:  {}", c.resource)?;
    writeln!(f, "      context:   {}", c.context)?;
    writeln!(
        f,
        "      entities (ids chosen by the solver; \"\" is an id too):"
    )?;
    for e in &c.entities {
        writeln!(f, "        {e}")?;
    }
    if !c.allowed_by.is_empty() {
        writeln!(f, "      allowed by:")?;
        for p in &c.allowed_by {
            writeln!(f, "        - {} ({}): {}", p.id, p.effect, p.title)?;
        }
    }
    for e in &c.errors {
        writeln!(f, "      error: {e}")?;
    }
    Ok(())
}

/// Proves every property of `properties` against `bundle`. Needs cvc5.
pub async fn prove(
    bundle: &PolicyBundle,
    properties: &PropertySet,
) -> Result<ProofReport, ProveError> {
    let started = Instant::now();
    let schema = bundle.schema();
    properties
        .validate(schema)
        .map_err(ProveError::Properties)?;

    // The set the solver sees: the policies, the assumptions (as forbids),
    // and a guard forbid for every policy that can raise an evaluation error.
    let mut extended: Vec<Policy> = bundle.policy_set().policies().cloned().collect();
    extended.extend(properties.assumptions().map(|a| a.policy.clone()));
    let mut error_guards = Vec::new();
    let mut ids: Vec<&PolicyId> = bundle.policy_set().policies().map(Policy::id).collect();
    ids.sort_by_key(|id| id.to_string());
    for id in ids {
        let Some(policy) = bundle.policy_set().policy(id) else {
            continue;
        };
        if let Some(guard) = error_guard(policy).map_err(ProveError::Symcc)? {
            error_guards.push(id.to_string());
            extended.push(guard);
        }
    }
    let extended = PolicySet::from_policies(extended)
        .map_err(|e| ProveError::Symcc(format!("cannot combine policies and assumptions: {e}")))?;

    let props: Vec<&Property> = properties.properties().collect();
    let permits: Vec<Policy> = props
        .iter()
        .map(|p| as_permit(&p.policy))
        .collect::<Result<_, _>>()
        .map_err(ProveError::Symcc)?;

    let may_raise: Vec<bool> = props
        .iter()
        .map(|p| {
            p.policy.to_json().map_or(true, |j| {
                conditions_error(j["conditions"].as_array().map_or(&[][..], Vec::as_slice))
                    .is_some()
            })
        })
        .collect();
    let solver = LocalSolver::cvc5().map_err(|e| ProveError::SolverUnavailable(e.to_string()))?;
    let mut compiler =
        CedarSymCompiler::new(solver).map_err(|e| ProveError::Symcc(e.to_string()))?;

    let mut outcomes: Vec<Option<Outcome>> = vec![None; props.len()];
    let mut environments = vec![0usize; props.len()];
    let mut elapsed = vec![Duration::ZERO; props.len()];
    let symcc = |e: cedar_policy_symcc::err::Error| ProveError::Symcc(e.to_string());
    for env in schema.request_envs() {
        let relevant: Vec<usize> = (0..props.len())
            .filter(|&i| outcomes[i].is_none() && may_apply(&permits[i], &env))
            .collect();
        if relevant.is_empty() {
            continue;
        }
        let compiled = CompiledPolicySet::compile(&extended, &env, schema).map_err(symcc)?;
        for i in relevant {
            let t = Instant::now();
            environments[i] += 1;
            let property = CompiledPolicy::compile(&permits[i], &env, schema).map_err(symcc)?;
            // Only a property with arithmetic can error: ask the solver then.
            let may_error = if may_raise[i] {
                compiler
                    .check_never_errors_with_counterexample_opt(&property)
                    .await
                    .map_err(symcc)?
            } else {
                None
            };
            if let Some(cex) = may_error {
                let c = replay(bundle, &cex);
                outcomes[i] = Some(Outcome::PropertyErrors(c));
            } else if let Some(cex) = compiler
                .check_disjoint_with_counterexample_opt(
                    &compiled,
                    &property.into_compiled_policyset(),
                )
                .await
                .map_err(symcc)?
            {
                outcomes[i] = Some(Outcome::Counterexample(replay(bundle, &cex)));
            }
            elapsed[i] += t.elapsed();
        }
    }

    let results = props
        .iter()
        .enumerate()
        .map(|(i, p)| PropertyResult {
            id: p.id.clone(),
            title: p.title.clone(),
            reason_de: p.reason_de.clone(),
            reason_en: p.reason_en.clone(),
            file: p.file.clone(),
            line: p.line,
            outcome: outcomes[i].take().unwrap_or(Outcome::Proved),
            environments: environments[i],
            elapsed: elapsed[i],
        })
        .collect();
    Ok(ProofReport {
        policy_set_hash: bundle.hash().to_owned(),
        policies: bundle.policy_set().policies().count(),
        assumptions: properties.assumptions().map(|a| a.id.clone()).collect(),
        error_guards,
        results,
        elapsed: started.elapsed(),
    })
}

/// Why a policy directory was refused for a reload.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The files do not load (syntax, strict validation, annotations).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The set loads but breaks a property.
    #[error("the policy set breaks {} propert{}:\n{report}", report.failed().count(), if report.failed().count() == 1 { "y" } else { "ies" })]
    Unproved { report: Box<ProofReport> },
    /// The properties could not be checked (fail closed: no proof, no reload).
    #[error("the policy set cannot be proved, so it is refused: {0}")]
    Prover(#[from] ProveError),
}

/// Loads the policy set in `dir` and proves it against the bundled
/// properties and `dir/properties/*.cedar`: the set a reload may swap in.
/// Refused when a file is invalid, a property fails, or cvc5 is missing.
pub async fn load_proved(dir: &Path) -> Result<(PolicyBundle, ProofReport), ReloadError> {
    let bundle = crate::loader::load_dir(dir)?;
    let properties = PropertySet::for_dir(dir).map_err(ProveError::Properties)?;
    let report = prove(&bundle, &properties).await?;
    if report.holds() {
        Ok((bundle, report))
    } else {
        Err(ReloadError::Unproved {
            report: Box::new(report),
        })
    }
}

/// [`prove`] on a fresh single-threaded runtime, for callers outside tokio
/// (tests, benchmarks). Do not call it from async code.
pub fn prove_blocking(
    bundle: &PolicyBundle,
    properties: &PropertySet,
) -> Result<ProofReport, ProveError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ProveError::Symcc(format!("cannot start a runtime: {e}")))?;
    rt.block_on(prove(bundle, properties))
}

/// Replays a counterexample through Cedar's authorizer with the policy set
/// as loaded (engine semantics: allowed only without evaluation errors).
fn replay(bundle: &PolicyBundle, cex: &Env) -> Counterexample {
    let req = &cex.request;
    let show = |v: Option<String>| v.unwrap_or_else(|| "(unknown)".to_owned());
    let response = Authorizer::new().is_authorized(req, bundle.policy_set(), &cex.entities);
    let diagnostics = response.diagnostics();
    let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
    let mut allowed_by: Vec<PolicyRef> = if response.decision() == CedarDecision::Allow {
        diagnostics
            .reason()
            .map(|id| match bundle.policy(id.as_ref()) {
                Some(info) => PolicyRef {
                    id: info.id.clone(),
                    effect: info.effect.to_string(),
                    title: info.title.clone(),
                },
                None => PolicyRef {
                    id: id.to_string(),
                    effect: String::new(),
                    title: String::new(),
                },
            })
            .collect()
    } else {
        Vec::new()
    };
    allowed_by.sort_by(|a, b| a.id.cmp(&b.id));
    let mut entities: Vec<String> = cex
        .entities
        .iter()
        .filter(|e| !VOCABULARY_TYPES.contains(&e.uid().type_name().to_string().as_str()))
        .map(|e| {
            let uid = e.uid();
            let parents: Vec<String> = cex
                .entities
                .ancestors(&uid)
                .map(|a| a.map(ToString::to_string).collect())
                .unwrap_or_default();
            let mut attrs: Vec<String> = e
                .attrs()
                .map(|(k, v)| match v {
                    Ok(v) => format!("{k}: {v}"),
                    Err(e) => format!("{k}: <{e}>"),
                })
                .collect();
            attrs.sort();
            let parents = if parents.is_empty() {
                String::new()
            } else {
                format!(" in [{}]", parents.join(", "))
            };
            format!("{uid}{parents} {{ {} }}", attrs.join(", "))
        })
        .collect();
    entities.sort();
    Counterexample {
        principal: show(req.principal().map(ToString::to_string)),
        action: show(req.action().map(ToString::to_string)),
        resource: show(req.resource().map(ToString::to_string)),
        context: show(req.context().map(ToString::to_string)),
        entities,
        engine_allows: response.decision() == CedarDecision::Allow && errors.is_empty(),
        allowed_by,
        errors,
    }
}

/// The actions and closed vocabularies (enumerated entity types): listed in
/// no counterexample, their values are fixed by the schema.
const VOCABULARY_TYPES: &[&str] = &[
    "Allmende::Action",
    "Allmende::OrgKind",
    "Allmende::Role",
    "Allmende::Purpose",
    "Allmende::Classification",
    "Allmende::LegalBasis",
    "Allmende::GrantState",
    "Allmende::RequestState",
];

/// Whether a policy's scope can match requests of this environment.
fn may_apply(policy: &Policy, env: &RequestEnv) -> bool {
    let action_ok = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == env.action(),
        // `in` a group: we have no action groups; compare by uid.
        ActionConstraint::In(list) => list.iter().any(|a| a == env.action()),
    };
    let type_ok = |t: Option<&EntityTypeName>, want: &EntityTypeName| t.is_none_or(|t| t == want);
    let principal_ok = match policy.principal_constraint() {
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => {
            type_ok(Some(&t), env.principal())
        }
        PrincipalConstraint::Eq(uid) => uid.type_name() == env.principal(),
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
    };
    let resource_ok = match policy.resource_constraint() {
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => {
            type_ok(Some(&t), env.resource())
        }
        ResourceConstraint::Eq(uid) => uid.type_name() == env.resource(),
        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
    };
    action_ok && principal_ok && resource_ok
}

/// The property as a `permit` with the same scope and conditions: the policy
/// set breaks the property iff it allows a request this permit allows.
fn as_permit(policy: &Policy) -> Result<Policy, String> {
    let mut json = policy
        .to_json()
        .map_err(|e| format!("cannot convert `{}`: {e}", policy.id()))?;
    json["effect"] = json!("permit");
    Policy::from_json(Some(policy.id().clone()), json)
        .map_err(|e| format!("cannot convert `{}`: {e}", policy.id()))
}

/// For a policy that can raise an evaluation error, a `forbid` with its
/// scope that matches exactly the requests on which its conditions error
/// (the engine denies those). `None` for a policy that cannot error.
fn error_guard(policy: &Policy) -> Result<Option<Policy>, String> {
    let json = policy
        .to_json()
        .map_err(|e| format!("cannot convert `{}`: {e}", policy.id()))?;
    let conditions = json["conditions"].as_array().cloned().unwrap_or_default();
    let Some(err) = conditions_error(&conditions) else {
        return Ok(None);
    };
    let mut guard = json.clone();
    guard["effect"] = json!("forbid");
    guard["conditions"] = json!([{ "kind": "when", "body": err }]);
    guard["annotations"] = json!({});
    let id = PolicyId::new(format!("error-guard:{}", policy.id()));
    Policy::from_json(Some(id), guard)
        .map(Some)
        .map_err(|e| format!("cannot build the error guard of `{}`: {e}", policy.id()))
}

/// Error condition of a policy's conditions, evaluated in order: condition
/// `k` is only evaluated when conditions `0..k` held.
fn conditions_error(conditions: &[Value]) -> Option<Value> {
    let mut acc: Option<Value> = None;
    let mut held: Option<Value> = None;
    for c in conditions {
        let body = &c["body"];
        let effective = if c["kind"] == "unless" {
            not(body.clone())
        } else {
            body.clone()
        };
        if let Some(e) = error_condition(body) {
            let e = match &held {
                Some(h) => and(h.clone(), e),
                None => e,
            };
            acc = Some(match acc {
                Some(a) => or(a, e),
                None => e,
            });
        }
        held = Some(match held {
            Some(h) => and(h, effective),
            None => effective,
        });
    }
    acc
}

fn op1(op: &str, arg: Value) -> Value {
    json!({ op: { "arg": arg } })
}

fn op2(op: &str, left: Value, right: Value) -> Value {
    json!({ op: { "left": left, "right": right } })
}

fn and(l: Value, r: Value) -> Value {
    op2("&&", l, r)
}

fn or(l: Value, r: Value) -> Value {
    op2("||", l, r)
}

fn not(e: Value) -> Value {
    op1("!", e)
}

fn long(n: i64) -> Value {
    json!({ "Value": n })
}

fn or_all(parts: impl IntoIterator<Item = Option<Value>>) -> Option<Value> {
    parts.into_iter().flatten().reduce(or)
}

fn literal_long(e: &Value) -> Option<i64> {
    e.get("Value").and_then(Value::as_i64)
}

/// A Cedar expression (EST JSON) that is true exactly when `e` raises an
/// evaluation error, and never errors itself (each test runs only after the
/// sub-expressions it uses were found error-free, by `||`/`&&`
/// short-circuiting). `None` when `e` cannot error. Modelled: overflow of
/// `+`, `-`, `neg`, and `*` by a constant, with Cedar's order of evaluation
/// (`&&`, `||`, `if` evaluate lazily). Strict validation already rules out
/// type errors and missing attributes, and the broker's entity store has
/// every entity a request or an attribute names. Anything else (e.g. an
/// extension function) is treated as error-free: then the proof is still
/// sound, and a counterexample relying on such an error is reported as one
/// the engine denies.
pub(crate) fn error_condition(e: &Value) -> Option<Value> {
    let obj = e.as_object()?;
    let (op, body) = obj.iter().next()?;
    let arg = || &body["arg"];
    let left = || &body["left"];
    let right = || &body["right"];
    match op.as_str() {
        "Value" | "Var" | "Slot" | "Unknown" => None,
        "!" | "isEmpty" => error_condition(arg()),
        "neg" => or_all([
            error_condition(arg()),
            Some(op2("==", arg().clone(), long(i64::MIN))),
        ]),
        "&&" => {
            let l = error_condition(left());
            let r = error_condition(right()).map(|r| and(left().clone(), r));
            or_all([l, r])
        }
        "||" => {
            let l = error_condition(left());
            let r = error_condition(right()).map(|r| and(not(left().clone()), r));
            or_all([l, r])
        }
        "if-then-else" => {
            let c = &body["if"];
            let t = error_condition(&body["then"]);
            let f = error_condition(&body["else"]);
            let branch = match (t, f) {
                (None, None) => None,
                (t, f) => Some(json!({ "if-then-else": {
                    "if": c,
                    "then": t.unwrap_or_else(|| json!({"Value": false})),
                    "else": f.unwrap_or_else(|| json!({"Value": false})),
                }})),
            };
            or_all([error_condition(c), branch])
        }
        "+" | "-" | "*" => {
            let (l, r) = (left().clone(), right().clone());
            let overflow = match op.as_str() {
                // l + r overflows iff r > 0 && l > MAX - r, or r < 0 && l < MIN - r.
                "+" => Some(or(
                    and(
                        op2(">", r.clone(), long(0)),
                        op2(">", l.clone(), op2("-", long(i64::MAX), r.clone())),
                    ),
                    and(
                        op2("<", r.clone(), long(0)),
                        op2("<", l, op2("-", long(i64::MIN), r)),
                    ),
                )),
                // l - r overflows iff r < 0 && l > MAX + r, or r > 0 && l < MIN + r.
                "-" => Some(or(
                    and(
                        op2("<", r.clone(), long(0)),
                        op2(">", l.clone(), op2("+", long(i64::MAX), r.clone())),
                    ),
                    and(
                        op2(">", r.clone(), long(0)),
                        op2("<", l, op2("+", long(i64::MIN), r)),
                    ),
                )),
                _ => multiplication_overflow(&l, &r),
            };
            or_all([error_condition(left()), error_condition(right()), overflow])
        }
        "." | "has" | "like" => error_condition(left()),
        "is" => or_all([
            error_condition(left()),
            body.get("in").and_then(error_condition),
        ]),
        "Set" => or_all(
            body.as_array()
                .map(|a| a.iter().map(error_condition).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
        "Record" => or_all(
            body.as_object()
                .map(|m| m.values().map(error_condition).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
        "==" | "!=" | "in" | "<" | "<=" | ">" | ">=" | "contains" | "containsAll"
        | "containsAny" | "hasTag" | "getTag" => {
            or_all([error_condition(left()), error_condition(right())])
        }
        // Extension function calls: their arguments.
        _ => or_all(
            body.as_array()
                .map(|a| a.iter().map(error_condition).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    }
}

/// Overflow of `l * r` when one side is a constant `k`.
fn multiplication_overflow(l: &Value, r: &Value) -> Option<Value> {
    let (x, k) = match (literal_long(l), literal_long(r)) {
        (Some(a), Some(b)) => {
            return a.checked_mul(b).is_none().then(|| json!({"Value": true}));
        }
        (None, Some(k)) => (l, k),
        (Some(k), None) => (r, k),
        (None, None) => return None,
    };
    match k {
        0 | 1 => None,
        -1 => Some(op2("==", x.clone(), long(i64::MIN))),
        k if k > 0 => Some(or(
            op2(">", x.clone(), long(i64::MAX / k)),
            op2("<", x.clone(), long(i64::MIN / k)),
        )),
        k => Some(or(
            op2("<", x.clone(), long(i64::MAX / k)),
            op2(">", x.clone(), long(i64::MIN / k)),
        )),
    }
}

/// Ids of the bundled property files, for the test that compares them with
/// the directory.
#[doc(hidden)]
pub fn bundled_property_files() -> Vec<&'static str> {
    BUNDLED_PROPERTIES.iter().map(|(n, _)| *n).collect()
}

/// Ids of every property and assumption in `set`, for tests.
#[doc(hidden)]
pub fn property_ids(set: &PropertySet) -> BTreeSet<String> {
    set.entries.iter().map(|p| p.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use cedar_policy::{Context, Entities, EntityUid, Request};

    fn decide(policy: &Policy, a: i64, b: i64) -> (bool, usize) {
        let allow = Policy::parse(
            Some(PolicyId::new("allow")),
            "permit(principal, action, resource);",
        )
        .unwrap();
        let set = PolicySet::from_policies([allow, policy.clone()]).unwrap();
        let uid = |t: &str| EntityUid::from_str(&format!("{t}::\"x\"")).unwrap();
        let context = Context::from_json_value(json!({"a": a, "b": b}), None).unwrap();
        let request = Request::new(uid("P"), uid("Action"), uid("R"), context, None).unwrap();
        let r = Authorizer::new().is_authorized(&request, &set, &Entities::empty());
        let errors = r.diagnostics().errors().count();
        (r.decision() == CedarDecision::Deny, errors)
    }

    /// The error guard of a policy matches exactly the requests on which the
    /// policy errors, and never errors itself (checked against Cedar's own
    /// evaluator on the edges of 64-bit arithmetic).
    #[test]
    fn error_guards_match_exactly_the_erroring_requests() {
        let sources = [
            "forbid(principal, action, resource) when { context.a - context.b > 5 };",
            "forbid(principal, action, resource) when { context.a + context.b > 5 };",
            "forbid(principal, action, resource) when { context.a > 0 && context.a * 3 > context.b };",
            "forbid(principal, action, resource) when { context.a * -7 > 1 || -context.b > 1 };",
            "forbid(principal, action, resource) unless { context.b == 0 } when { if context.a > 0 then context.a + context.b > 0 else false };",
        ];
        let values = [
            i64::MIN,
            i64::MIN + 1,
            i64::MIN / 3,
            i64::MIN / 7,
            -1_317_624_576_693_539_401,
            -5,
            -1,
            0,
            1,
            5,
            1_317_624_576_693_539_401,
            i64::MAX / 7,
            i64::MAX / 3,
            i64::MAX - 1,
            i64::MAX,
        ];
        for src in sources {
            let policy = Policy::from_str(src).unwrap();
            let guard = error_guard(&policy).unwrap().expect("arithmetic can error");
            let mut errored = 0;
            for &a in &values {
                for &b in &values {
                    let (_, policy_errors) = decide(&policy, a, b);
                    let (guard_denies, guard_errors) = decide(&guard, a, b);
                    assert_eq!(guard_errors, 0, "{src}: guard errors for a={a} b={b}");
                    assert_eq!(
                        guard_denies,
                        policy_errors > 0,
                        "{src}: a={a} b={b}: guard {guard_denies}, policy errors {policy_errors}"
                    );
                    errored += usize::from(policy_errors > 0);
                }
            }
            assert!(errored > 0, "{src}: no value pair errors");
        }
        let safe = Policy::from_str(
            "forbid(principal, action, resource) when { context.a > 1 && [1, 2].contains(context.b) };",
        )
        .unwrap();
        assert!(error_guard(&safe).unwrap().is_none());
    }
}
