//! Shared test support: the corpus world (`tests/corpus/world.toml`) loaded
//! into an [`EntityStore`], and parsers for the corpus' principal/resource
//! notation.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use allmende_policies::{
    ConsentCoverage, DecisionRequest, Grant, GrantState, Principal, Purpose, Resource,
};
use serde::Deserialize;

/// The crate's root (holds `schema.cedarschema` and `policies/`).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn corpus_dir() -> PathBuf {
    crate_dir().join("tests").join("corpus")
}

#[allow(unused_imports, reason = "each test binary uses a subset")]
pub use allmende_policies::{World, parse_principal, parse_resource};

/// Loads a world or fails the test.
pub fn load_world(path: &Path) -> World {
    World::load(path).unwrap_or_else(|e| panic!("{e}"))
}

/// The corpus world.
pub fn munich() -> World {
    load_world(&corpus_dir().join("world.toml"))
}

#[derive(Debug, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
    /// Refused by the Rust side before any decision (strict parsing).
    Refused,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub story: Option<u8>,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub purpose: Option<String>,
    pub now: Option<i64>,
    pub grant: Option<String>,
    pub obligation: Option<String>,
    pub consent: Option<ConsentCoverage>,
    #[serde(default)]
    pub raw_personal_grants_at_owner: i64,
    /// Policies removed from the set for this case.
    #[serde(default)]
    pub without: Vec<String>,
    pub expect: Expect,
    #[serde(default)]
    pub deciding: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub case: Vec<Case>,
}

pub fn load_cases() -> Vec<(String, Case)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "world.toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus case files");
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let parsed: CaseFile =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let fname = f.file_name().unwrap().to_string_lossy().into_owned();
        out.extend(parsed.case.into_iter().map(|c| (fname.clone(), c)));
    }
    out
}

/// The corpus cases that reach the engine (not refused by parsing, whole
/// policy set), as requests.
pub fn corpus_requests(world: &World) -> Vec<DecisionRequest> {
    load_cases()
        .into_iter()
        .filter(|(_, c)| c.expect != Expect::Refused && c.without.is_empty())
        .map(|(_, c)| {
            let mut r = DecisionRequest::new(
                parse_principal(&c.principal).unwrap(),
                c.action.parse().unwrap(),
                parse_resource(&c.resource).unwrap(),
                c.now.unwrap_or(world.now),
            );
            r.purpose = c.purpose.as_deref().map(|p| p.parse().unwrap());
            r.grant = c.grant.clone();
            r.obligation = c.obligation.clone();
            r.consent = c.consent.unwrap_or_default();
            r.raw_personal_grants_at_owner = c.raw_personal_grants_at_owner;
            r
        })
        .collect()
}

/// Every principal the world names: its users, its nodes, the public caller.
pub fn world_principals(world: &World) -> Vec<Principal> {
    let mut principals: Vec<Principal> = world
        .user
        .iter()
        .map(|u| Principal::User(u.id.clone()))
        .collect();
    principals.extend(world.node.iter().map(|n| Principal::Node(n.id.clone())));
    principals.push(Principal::Public);
    principals
}

/// Every resource the world names, of every resource type.
pub fn world_resources(world: &World) -> Vec<Resource> {
    let ids = |v: Vec<&String>, f: fn(String) -> Resource| -> Vec<Resource> {
        v.into_iter().map(|id| f(id.clone())).collect()
    };
    [
        ids(
            world.dataset.iter().map(|d| &d.id).collect(),
            Resource::Dataset,
        ),
        ids(world.grant.iter().map(|g| &g.id).collect(), Resource::Grant),
        ids(
            world.request.iter().map(|r| &r.id).collect(),
            Resource::AccessRequest,
        ),
        ids(
            world.subject.iter().map(|s| &s.id).collect(),
            Resource::DataSubject,
        ),
        ids(
            world.obligation.iter().map(|o| &o.id).collect(),
            Resource::Obligation,
        ),
        ids(
            world.audit_log.iter().map(|a| &a.id).collect(),
            Resource::AuditLog,
        ),
        ids(
            world.federation.iter().map(|f| &f.id).collect(),
            Resource::Federation,
        ),
    ]
    .concat()
}

/// TUM's grant on the smart-meter readings whose validity period overflows
/// Cedar's arithmetic (`not_after - not_before`): the open-ended-grant forbid
/// errors on it.
pub fn overflow_grant() -> Grant {
    Grant {
        id: "g-overflow".to_owned(),
        grantee: "tum".to_owned(),
        dataset: "smart-meter-readings".to_owned(),
        purpose: Purpose::AcademicResearch,
        not_before: -1,
        not_after: Some(i64::MAX),
        state: GrantState::Active,
        aggregate_only: false,
    }
}
