//! Shared test support: the corpus world (`tests/corpus/world.toml`) loaded
//! into an [`EntityStore`], and parsers for the corpus' principal/resource
//! notation.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use allmende_policies::{
    AccessRequest, AuditLog, DataSubject, Dataset, EntityStore, Federation, Grant, Node,
    Obligation, Organisation, Principal, Resource, User,
};
use serde::Deserialize;

/// The crate's root (holds `schema.cedarschema` and `policies/`).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn corpus_dir() -> PathBuf {
    crate_dir().join("tests").join("corpus")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    pub now: i64,
    #[serde(default)]
    pub organisation: Vec<Organisation>,
    #[serde(default)]
    pub user: Vec<User>,
    #[serde(default)]
    pub node: Vec<Node>,
    #[serde(default)]
    pub federation: Vec<Federation>,
    #[serde(default)]
    pub dataset: Vec<Dataset>,
    #[serde(default)]
    pub grant: Vec<Grant>,
    #[serde(default)]
    pub request: Vec<AccessRequest>,
    #[serde(default)]
    pub subject: Vec<DataSubject>,
    #[serde(default)]
    pub obligation: Vec<Obligation>,
    #[serde(default)]
    pub audit_log: Vec<AuditLog>,
}

impl World {
    pub fn load(path: &Path) -> World {
        let text = std::fs::read_to_string(path).unwrap();
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn munich() -> World {
        World::load(&corpus_dir().join("world.toml"))
    }

    pub fn store(&self) -> EntityStore {
        let mut s = EntityStore::new();
        self.organisation
            .iter()
            .cloned()
            .for_each(|v| s.upsert_organisation(v));
        self.user.iter().cloned().for_each(|v| s.upsert_user(v));
        self.node.iter().cloned().for_each(|v| s.upsert_node(v));
        self.federation
            .iter()
            .cloned()
            .for_each(|v| s.upsert_federation(v));
        self.dataset
            .iter()
            .cloned()
            .for_each(|v| s.upsert_dataset(v));
        self.grant.iter().cloned().for_each(|v| s.upsert_grant(v));
        self.request
            .iter()
            .cloned()
            .for_each(|v| s.upsert_request(v));
        self.subject
            .iter()
            .cloned()
            .for_each(|v| s.upsert_subject(v));
        self.obligation
            .iter()
            .cloned()
            .for_each(|v| s.upsert_obligation(v));
        self.audit_log
            .iter()
            .cloned()
            .for_each(|v| s.upsert_audit_log(v));
        s
    }
}

/// `user:ID`, `node:ID` or `public`.
pub fn parse_principal(s: &str) -> Result<Principal, String> {
    match s.split_once(':') {
        Some(("user", id)) => Ok(Principal::User(id.to_owned())),
        Some(("node", id)) => Ok(Principal::Node(id.to_owned())),
        None if s == "public" => Ok(Principal::Public),
        _ => Err(format!("bad principal `{s}` (user:ID, node:ID or public)")),
    }
}

/// `dataset:ID`, `grant:ID`, `request:ID`, `subject:ID`, `obligation:ID`,
/// `audit:ID` or `federation:ID`.
pub fn parse_resource(s: &str) -> Result<Resource, String> {
    let (kind, id) = s
        .split_once(':')
        .ok_or_else(|| format!("bad resource `{s}`"))?;
    let id = id.to_owned();
    Ok(match kind {
        "dataset" => Resource::Dataset(id),
        "grant" => Resource::Grant(id),
        "request" => Resource::AccessRequest(id),
        "subject" => Resource::DataSubject(id),
        "obligation" => Resource::Obligation(id),
        "audit" => Resource::AuditLog(id),
        "federation" => Resource::Federation(id),
        _ => return Err(format!("bad resource kind `{kind}` in `{s}`")),
    })
}
