//! A "world": entity data written down as TOML (organisations, users,
//! nodes, datasets, grants, …), used by the policy corpus and by
//! `allmende policy explain --world FILE` to explain decisions offline.

use crate::engine::{Principal, Resource};
use crate::entities::EntityStore;
use crate::model::{
    AccessRequest, AuditLog, DataSubject, Dataset, Federation, Grant, Node, Obligation,
    Organisation, User,
};
use serde::Deserialize;
use std::path::Path;

/// The Munich example world of the policy corpus.
pub const MUNICH_WORLD: &str = include_str!("../tests/corpus/world.toml");

/// Entity data plus a default request time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct World {
    /// Default request time, epoch seconds.
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

/// A world file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("cannot read world `{path}`: {message}")]
    Read { path: String, message: String },
    #[error("world `{path}`: {message}")]
    Parse { path: String, message: String },
}

impl World {
    /// Parses world TOML; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<World, WorldError> {
        toml::from_str(text).map_err(|e| WorldError::Parse {
            path: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })
    }

    /// Reads a world file.
    pub fn load(path: &Path) -> Result<World, WorldError> {
        let text = std::fs::read_to_string(path).map_err(|e| WorldError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// The Munich example world.
    pub fn munich() -> Result<World, WorldError> {
        Self::parse("bundled munich world", MUNICH_WORLD)
    }

    /// The entity store holding this world.
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
/// `audit:ID`, `federation:ID` or `organisation:ID`.
pub fn parse_resource(s: &str) -> Result<Resource, String> {
    let (kind, id) = s
        .split_once(':')
        .ok_or_else(|| format!("bad resource `{s}` (KIND:ID)"))?;
    let id = id.to_owned();
    Ok(match kind {
        "dataset" => Resource::Dataset(id),
        "grant" => Resource::Grant(id),
        "request" => Resource::AccessRequest(id),
        "subject" => Resource::DataSubject(id),
        "obligation" => Resource::Obligation(id),
        "audit" => Resource::AuditLog(id),
        "federation" => Resource::Federation(id),
        "organisation" => Resource::Organisation(id),
        _ => return Err(format!("bad resource kind `{kind}` in `{s}`")),
    })
}
