//! Allmende policy engine core: the Cedar schema and policies that encode the
//! Munich council resolution (consent, purpose binding, public access, research
//! access, DPO and audit, obligations, non-use), a strict loader, a typed
//! entity model with cached Cedar snapshots, and the [`Engine`] that decides
//! every request and explains its decision in German and English.
//!
//! The broker fills an [`EntityStore`] from its store, takes a snapshot, builds
//! a [`DecisionRequest`] from typed values and calls [`Engine::decide`]:
//!
//! ```
//! use allmende_policies::*;
//!
//! let engine = Engine::bundled()?;
//! let mut store = EntityStore::new();
//! store.upsert_organisation(Organisation::new("stadt", OrgKind::City));
//! store.upsert_dataset(Dataset {
//!     id: "air-quality".into(),
//!     owner: "stadt".into(),
//!     classification: Classification::Public,
//!     public_space_origin: true,
//!     contains_personal_data: false,
//!     legal_basis: LegalBasis::NotApplicable,
//!     allowed_purposes: Default::default(),
//!     anonymisation_required: false,
//! });
//! let snapshot = store.snapshot()?;
//! let request = DecisionRequest::new(
//!     Principal::Public,
//!     Action::Read,
//!     Resource::Dataset("air-quality".into()),
//!     1_750_000_000,
//! );
//! let decision = engine.decide(&request, &snapshot);
//! assert!(decision.allowed);
//! assert_eq!(decision.deciding_ids(), ["public-open-data"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod engine;
mod entities;
mod loader;
mod model;
mod prove;
mod prune;
mod world;

pub use engine::{
    DecidingPolicy, Decision, DecisionRequest, Engine, Principal, ReloadReport, Resource,
    decide_unpruned, decide_with_bundle, evaluated_policies,
};
pub use entities::{EntitySnapshot, EntityStore, ModelError, PUBLIC_ORG_ID, PUBLIC_PRINCIPAL_ID};
pub use loader::{
    DEFAULT_DENY_ID, EVALUATION_ERROR_ID, INVALID_REQUEST_ID, IssueKind, LoadError, LoadIssue,
    POLICY_SUBDIR, PolicyBundle, PolicyEffect, PolicyInfo, PolicySource, REQUIRED_ANNOTATIONS,
    RESERVED_IDS, SCHEMA_FILE, SourceFile, load_bundled, load_dir,
};
pub use model::{
    AccessRequest, Action, AuditLog, Classification, ConsentCoverage,
    DEFAULT_MAX_RAW_PERSONAL_GRANTS, DataSubject, Dataset, Federation, Grant, GrantState,
    LegalBasis, MAX_PERSONAL_GRANT_SECONDS, Node, Obligation, OrgKind, Organisation, Purpose,
    RequestState, Role, UnknownValue, User,
};
pub use prove::{
    Counterexample, Outcome, PROPERTY_SUBDIR, PolicyRef, ProofReport, Property, PropertyKind,
    PropertyResult, PropertySet, ProveError, ReloadError, bundled_property_files, load_proved,
    property_ids, prove, prove_blocking,
};
pub use world::{MUNICH_WORLD, World, WorldError, parse_principal, parse_resource};

/// Re-export of the Cedar crate the engine is built on.
pub use cedar_policy;
