//! Typed domain model: the closed vocabularies (organisation kinds, roles,
//! purposes, classifications, …, defined once in `allmende-vocab`), the
//! actions, and the plain structs the broker fills from its store. Every
//! vocabulary parses strictly: an unknown value or a case/spelling variant is
//! refused, never matched loosely.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

pub use allmende_vocab::{
    Action, Classification, GrantState, LegalBasis, OrgKind, Purpose, RequestState, Role,
    UnknownValue,
};

/// Default anti-accumulation limit N of an owner.
pub const DEFAULT_MAX_RAW_PERSONAL_GRANTS: i64 = 3;

/// Maximum lifetime of a grant on personal data (365 days), in seconds.
pub const MAX_PERSONAL_GRANT_SECONDS: i64 = 365 * 24 * 60 * 60;

/// A federation member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Organisation {
    pub id: String,
    pub kind: OrgKind,
    /// Anti-accumulation limit N (default [`DEFAULT_MAX_RAW_PERSONAL_GRANTS`]).
    #[serde(default = "default_max_raw_personal_grants")]
    pub max_raw_personal_grants: i64,
}

fn default_max_raw_personal_grants() -> i64 {
    DEFAULT_MAX_RAW_PERSONAL_GRANTS
}

impl Organisation {
    /// An organisation with the default anti-accumulation limit.
    pub fn new(id: impl Into<String>, kind: OrgKind) -> Self {
        Self {
            id: id.into(),
            kind,
            max_raw_personal_grants: DEFAULT_MAX_RAW_PERSONAL_GRANTS,
        }
    }
}

/// A person with roles inside one organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: String,
    /// Id of the organisation the user belongs to.
    pub org: String,
    pub roles: BTreeSet<Role>,
}

impl User {
    pub fn new(id: impl Into<String>, org: impl Into<String>, roles: &[Role]) -> Self {
        Self {
            id: id.into(),
            org: org.into(),
            roles: roles.iter().copied().collect(),
        }
    }
}

/// A broker node of an organisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: String,
    pub org: String,
}

impl Node {
    pub fn new(id: impl Into<String>, org: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            org: org.into(),
        }
    }
}

/// The federation itself (resource of `manage_federation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    pub id: String,
    /// The root of trust's organisation.
    pub root: String,
}

/// A dataset in the federated catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    pub id: String,
    /// Id of the owning organisation.
    pub owner: String,
    pub classification: Classification,
    pub public_space_origin: bool,
    pub contains_personal_data: bool,
    pub legal_basis: LegalBasis,
    pub allowed_purposes: BTreeSet<Purpose>,
    /// Personal-derived data may leave only as anonymised aggregates.
    pub anonymisation_required: bool,
}

/// An approved, time-bound access (grants are entities, not templates).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub id: String,
    /// Id of the organisation the grant was issued to.
    pub grantee: String,
    pub dataset: String,
    pub purpose: Purpose,
    /// Epoch seconds.
    pub not_before: i64,
    /// Epoch seconds; `None` = open-ended.
    pub not_after: Option<i64>,
    pub state: GrantState,
    /// Obligation set at approval: raw reads under the grant are refused.
    #[serde(default)]
    pub aggregate_only: bool,
}

/// A request for access, decided by `approve_request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub id: String,
    /// Id of the requesting user.
    pub requester: String,
    /// Id of the requesting user's organisation.
    pub requester_org: String,
    pub dataset: String,
    pub purpose: Purpose,
    pub not_before: i64,
    pub not_after: Option<i64>,
    pub state: RequestState,
}

/// A data subject (e.g. a household) with an account at a controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSubject {
    pub id: String,
    /// Id of the subject's user account.
    pub account: String,
    /// Id of the controller organisation.
    pub controller: String,
}

/// A disclosure obligation: `obligor` delivers `dataset` to `beneficiary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Obligation {
    pub id: String,
    pub obligor: String,
    pub beneficiary: String,
    pub dataset: String,
    pub active: bool,
}

/// The audit log of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditLog {
    pub id: String,
    pub owner: String,
}

/// Consent coverage for one request, computed by the broker from the consent
/// records: does the collected consent cover the declared purpose, and how
/// many subjects currently consent to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentCoverage {
    pub purpose_covered: bool,
    pub consenting_subjects: i64,
}
