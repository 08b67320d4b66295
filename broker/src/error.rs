//! The broker's request errors: [`ApiError`], and the one place that
//! classifies the domain modules' errors into it (`impl From<CatalogError>
//! for ApiError`, …). Domain modules return their own error enums and know
//! nothing of the wire; this module names no wire type either. The mapping
//! of an [`ApiError`] to a gRPC status lives in the wire layer
//! (`rpc::status`).

use crate::access::FetchError;
use crate::audit::AuditError;
use crate::audit::witness::PinError;
use crate::catalog::CatalogError;
use crate::consent::ConsentError;
use crate::denials::OverBudget;
use crate::grants::GrantsError;
use crate::locks::Poisoned;
use crate::policy::AuthorizeError;
use crate::registry::RegistryError;
use crate::store::StoreError;
use allmende_connectors::ConnectorError;

/// A policy that decided a denied request, with its plain-language texts
/// (the policy engine's own type, not a copy of it).
pub use allmende_policies::DecidingPolicy;

/// What a denied caller learns: the deciding policies and their reasons,
/// evaluation errors, and the policy set's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyDetails {
    pub allowed: bool,
    pub policies: Vec<DecidingPolicy>,
    pub errors: Vec<String>,
    pub policy_set_hash: String,
}

/// Why a request failed, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// Denied by the policies; carries the deciding policies and reasons.
    #[error("denied: {}", .0.policies.iter().map(|p| p.reason_en.as_str()).collect::<Vec<_>>().join("; "))]
    Denied(Box<DenyDetails>),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A dependency the request needs (store, audit log) is not available;
    /// nothing was done.
    #[error("{0}")]
    Unavailable(String),
    /// A method the node does not serve (Arrow Flight's upload and action
    /// calls), with a sentence saying so.
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected state; details go to the log, not the caller.
    #[error("internal error")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { .. } | StoreError::Encode { .. } => {
                ApiError::Internal(e.to_string())
            }
            _ => ApiError::Unavailable(format!("store unavailable: {e}")),
        }
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Invalid { .. } | CatalogError::Ambiguous { .. } => {
                ApiError::InvalidArgument(e.to_string())
            }
            CatalogError::NotFound(_) => ApiError::NotFound(e.to_string()),
            CatalogError::OwnedByOtherNode { .. } => ApiError::FailedPrecondition(e.to_string()),
            CatalogError::PeerRefused { .. } => ApiError::PermissionDenied(e.to_string()),
            CatalogError::Store(s) => ApiError::from(s),
            CatalogError::Key(k) => ApiError::Internal(k.to_string()),
            CatalogError::Poisoned(p) => ApiError::from(p),
        }
    }
}

impl From<ConsentError> for ApiError {
    fn from(e: ConsentError) -> Self {
        match e {
            ConsentError::Rows(_) => ApiError::InvalidArgument(e.summary(40)),
            ConsentError::Invalid(m) => ApiError::InvalidArgument(m),
            ConsentError::TooLarge { .. } => ApiError::ResourceExhausted(e.to_string()),
            ConsentError::Store(s) => ApiError::from(s),
            ConsentError::Audit(a) => ApiError::from(a),
            ConsentError::Poisoned(p) => ApiError::from(p),
            ConsentError::Receipt(r) => ApiError::Internal(r.to_string()),
            ConsentError::Erased { .. } => ApiError::FailedPrecondition(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Kind(_)
            | RegistryError::Config(_)
            | RegistryError::ConfigJson(_)
            | RegistryError::Dataset(_)
            | RegistryError::DatasetJson(_) => ApiError::InvalidArgument(e.to_string()),
            RegistryError::Connector(ref c) => match c {
                ConnectorError::Confined { .. } => ApiError::PermissionDenied(e.to_string()),
                ConnectorError::Unreachable { .. } => ApiError::FailedPrecondition(e.to_string()),
                ConnectorError::Internal(_) => ApiError::Internal(e.to_string()),
                _ => ApiError::InvalidArgument(e.to_string()),
            },
            RegistryError::Unknown(_) => ApiError::NotFound(e.to_string()),
            RegistryError::Disabled(_) => ApiError::FailedPrecondition(e.to_string()),
            // The catalog's own classification; the message is the catalog's.
            RegistryError::Catalog(c) => ApiError::from(c),
            RegistryError::Store(s) => ApiError::from(s),
            RegistryError::Audit(a) => ApiError::from(a),
            RegistryError::Poisoned(p) => ApiError::from(p),
        }
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::Unavailable(m) => ApiError::Unavailable(m),
            AuditError::Corrupt(m) => ApiError::Internal(m),
            AuditError::Invalid(m) => ApiError::InvalidArgument(m),
            AuditError::NotReady(m) => ApiError::FailedPrecondition(m),
        }
    }
}

impl From<PinError> for ApiError {
    fn from(e: PinError) -> Self {
        match e {
            PinError::KeyChanged => ApiError::PermissionDenied(e.to_string()),
            PinError::Store(s) => ApiError::from(s),
        }
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        use FetchError as F;
        match e {
            F::RateLimited | F::PublicRateLimited { .. } | F::CallerBusy(_) | F::NodeBusy(_) => {
                ApiError::ResourceExhausted(e.to_string())
            }
            F::Dataset(r) => ApiError::from(r),
            F::NotServed { .. } => ApiError::FailedPrecondition(e.to_string()),
            F::UnknownColumn { .. }
            | F::Filter(_)
            | F::Cursor(_)
            | F::StaleCursor(_)
            | F::Ticket(_) => ApiError::InvalidArgument(e.to_string()),
            F::QuasiIdentifier { .. } => ApiError::PermissionDenied(e.to_string()),
            F::SourceUnavailable { .. }
            | F::SourceRead(_)
            | F::EndedEarly
            | F::SourceChanged(_) => ApiError::Unavailable(e.to_string()),
            F::Decision(d) => ApiError::from(d),
            F::Audit(a) => ApiError::from(a),
            F::Poisoned(p) => ApiError::from(p),
            F::Pipeline(_) | F::Seal(_) | F::SealTicket(_) | F::Internal(_) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl From<crate::directory::DirectoryError> for ApiError {
    fn from(e: crate::directory::DirectoryError) -> Self {
        use crate::directory::DirectoryError as D;
        use crate::pki::ca::PkiError as P;
        match e {
            D::Pki(P::NotMember(_)) => ApiError::NotFound(e.to_string()),
            D::NotRoot | D::Pki(P::RootOrganisation(_)) | D::Pki(P::AlreadyMember(_)) => {
                ApiError::FailedPrecondition(e.to_string())
            }
            D::Pki(P::WrongOrganisation { .. }) => ApiError::PermissionDenied(e.to_string()),
            D::Pki(P::BadCsr { .. }) => ApiError::InvalidArgument(e.to_string()),
            D::Store(s) => ApiError::from(s),
            D::Refused(_) | D::Pki(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::invitations::InvitationError> for ApiError {
    fn from(e: crate::invitations::InvitationError) -> Self {
        use crate::invitations::InvitationError as I;
        match e {
            I::InvalidOrganisation(_)
            | I::InvalidDisplayName(_)
            | I::BadLifetime { .. }
            | I::BadRequest(_) => ApiError::InvalidArgument(e.to_string()),
            I::Unknown | I::BadSecret | I::WrongOrganisation { .. } => {
                ApiError::PermissionDenied(e.to_string())
            }
            I::NotRoot | I::AlreadyMember(_) | I::Used(_) | I::Expired { .. } => {
                ApiError::FailedPrecondition(e.to_string())
            }
            I::Directory(d) => ApiError::from(d),
            I::Store(s) => ApiError::from(s),
            I::Audit(a) => ApiError::from(a),
            I::Pki(_) | I::Random(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<GrantsError> for ApiError {
    fn from(e: GrantsError) -> Self {
        match e {
            GrantsError::Invalid(_) | GrantsError::TooLong { .. } => {
                ApiError::InvalidArgument(e.to_string())
            }
            GrantsError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            GrantsError::PublicDataset(_)
            | GrantsError::Changed { .. }
            | GrantsError::NotPending { .. }
            | GrantsError::NotActive { .. }
            | GrantsError::KeyReused { .. }
            | GrantsError::OverdueDuty { .. } => ApiError::FailedPrecondition(e.to_string()),
            GrantsError::ColumnsOutsideGrant { .. }
            | GrantsError::NoticeRefused(_)
            | GrantsError::NotYourDuty { .. } => ApiError::PermissionDenied(e.to_string()),
            GrantsError::Store(s) => ApiError::from(s),
            GrantsError::Audit(a) => ApiError::from(a),
            GrantsError::Signing(_) | GrantsError::Random(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::opendata::publish::PublishError> for ApiError {
    fn from(e: crate::opendata::publish::PublishError) -> Self {
        use crate::opendata::publish::PublishError as P;
        use crate::opendata::releases::ReleasesError as R;
        match e {
            P::NoSpec(_) | P::NotOwned(_) | P::Spec { .. } => {
                ApiError::FailedPrecondition(e.to_string())
            }
            // A quota that renews with the next period: the caller may
            // retry then, as with any exhausted quota.
            P::Budget(..) => ApiError::ResourceExhausted(e.to_string()),
            P::Source { .. } => ApiError::Unavailable(e.to_string()),
            P::Registry(r) => ApiError::from(r),
            P::Audit(a) => ApiError::from(a),
            P::Store(s) => ApiError::from(s),
            P::Releases(R::BadId(_)) => ApiError::InvalidArgument(e.to_string()),
            P::Engine { .. } => ApiError::FailedPrecondition(e.to_string()),
            P::Releases(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::obligations::ObligationsError> for ApiError {
    fn from(e: crate::obligations::ObligationsError) -> Self {
        use crate::obligations::ObligationsError as O;
        match e {
            O::NotObligable(_) | O::Ended(_) | O::Duplicate { .. } => {
                ApiError::FailedPrecondition(e.to_string())
            }
            O::BadName { .. } | O::BadTime(_) => ApiError::InvalidArgument(e.to_string()),
            O::Unknown(_) => ApiError::NotFound(e.to_string()),
            O::Store(e) => e.into(),
            O::Audit(e) => e.into(),
        }
    }
}

impl From<Poisoned> for ApiError {
    fn from(e: Poisoned) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

impl From<OverBudget> for ApiError {
    fn from(e: OverBudget) -> Self {
        ApiError::ResourceExhausted(e.to_string())
    }
}

impl From<AuthorizeError> for ApiError {
    fn from(e: AuthorizeError) -> Self {
        match e {
            AuthorizeError::Denied(d) => ApiError::Denied(d),
            AuthorizeError::OverBudget(o) => ApiError::from(o),
            AuthorizeError::Audit(a) => ApiError::from(a),
        }
    }
}

impl From<crate::relay::RelayError> for ApiError {
    fn from(e: crate::relay::RelayError) -> Self {
        use crate::relay::RelayError as R;
        match e {
            R::Assertion(crate::relay::assertion::AssertionError::Sign(_)) => {
                ApiError::Internal(e.to_string())
            }
            R::Assertion(_)
            | R::NotOwnUser(_)
            | R::NotHub
            | R::NotListedNode
            | R::KeyPackageSubstituted { .. }
            | R::OwnerCertificate(_) => ApiError::PermissionDenied(e.to_string()),
            R::UnknownNode { .. } => ApiError::NotFound(e.to_string()),
            R::NoKeyPackage { .. } | R::NoHub => ApiError::FailedPrecondition(e.to_string()),
            R::Mls(_) | R::Stream(_) | R::Truncated => ApiError::Unavailable(e.to_string()),
            R::Store(s) => ApiError::from(s),
            R::Lock(p) => ApiError::from(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: impl Into<ApiError>) -> &'static str {
        match e.into() {
            ApiError::Unauthenticated(_) => "unauthenticated",
            ApiError::PermissionDenied(_) => "permission-denied",
            ApiError::Denied(_) => "denied",
            ApiError::InvalidArgument(_) => "invalid-argument",
            ApiError::NotFound(_) => "not-found",
            ApiError::FailedPrecondition(_) => "failed-precondition",
            ApiError::ResourceExhausted(_) => "resource-exhausted",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Unimplemented(_) => "unimplemented",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Each domain error lands in the class a caller can act on; a store or
    /// audit failure behind a catalog or consent change is never blamed on
    /// the caller's input.
    #[test]
    fn domain_errors_are_classified_in_one_place() {
        let unavailable = || AuditError::Unavailable("writer stopped".into());
        {
            use crate::obligations::ObligationsError as O;
            assert_eq!(code(O::NotObligable("x".into())), "failed-precondition");
            assert_eq!(code(O::BadTime("x".into())), "invalid-argument");
            assert_eq!(code(O::Unknown("x".into())), "not-found");
            assert_eq!(code(O::Audit(unavailable())), "unavailable");
        }
        assert_eq!(code(CatalogError::NotFound("x".into())), "not-found");
        assert_eq!(
            code(CatalogError::OwnedByOtherNode {
                dataset: "x".into(),
                node: "n".into()
            }),
            "failed-precondition"
        );
        assert_eq!(
            code(RegistryError::Catalog(CatalogError::Poisoned(Poisoned(
                "catalog entries"
            )))),
            "unavailable"
        );
        assert_eq!(
            code(RegistryError::Catalog(CatalogError::Invalid {
                dataset: "x".into(),
                problems: vec!["title is empty".into()]
            })),
            "invalid-argument"
        );
        assert_eq!(code(ConsentError::Audit(unavailable())), "unavailable");
        assert_eq!(
            code(ConsentError::TooLarge { bytes: 1 }),
            "resource-exhausted"
        );
        assert_eq!(code(ConsentError::Rows(Vec::new())), "invalid-argument");
        assert_eq!(code(AuthorizeError::Audit(unavailable())), "unavailable");
        assert_eq!(
            code(AuthorizeError::OverBudget(OverBudget { interval_secs: 60 })),
            "resource-exhausted"
        );
        assert_eq!(code(Poisoned("x")), "unavailable");
        assert_eq!(code(FetchError::RateLimited), "resource-exhausted");
        assert_eq!(code(FetchError::NodeBusy(16)), "resource-exhausted");
        assert_eq!(
            code(FetchError::NotServed {
                dataset: "x".into(),
                reason: "r".into()
            }),
            "failed-precondition"
        );
        let quasi = FetchError::QuasiIdentifier {
            column: "age".into(),
            dataset: "x".into(),
            allowed: vec!["district".into()],
        };
        assert!(
            quasi
                .to_string()
                .ends_with("its owner allows filters on these quasi-identifiers only: `district`"),
            "{quasi}"
        );
        assert_eq!(code(quasi), "permission-denied");
        assert_eq!(code(FetchError::EndedEarly), "unavailable");
        assert_eq!(
            code(FetchError::Decision(AuthorizeError::Audit(unavailable()))),
            "unavailable"
        );
        assert_eq!(code(FetchError::Audit(unavailable())), "unavailable");
        assert_eq!(code(FetchError::Internal("bug")), "internal");
        // A stale cursor's connector detail (source paths) is not shown.
        let stale = ApiError::from(FetchError::StaleCursor(
            allmende_connectors::ConnectorError::Internal("/srv/data/a.csv".into()),
        ));
        assert!(matches!(stale, ApiError::InvalidArgument(_)), "{stale:?}");
        assert!(!stale.to_string().contains("/srv"), "{stale}");
        assert_eq!(code(PinError::KeyChanged), "permission-denied");
        assert_eq!(
            code(AuditError::NotReady("no checkpoint".into())),
            "failed-precondition"
        );
        assert_eq!(
            code(GrantsError::TooLong {
                days: 10_000,
                max: 365
            }),
            "invalid-argument"
        );
        assert_eq!(
            code(GrantsError::Changed {
                id: "r".into(),
                seen: "a".into(),
                current: "b".into()
            }),
            "failed-precondition"
        );
        assert_eq!(code(GrantsError::Audit(unavailable())), "unavailable");
        // The caller sees the domain's own message.
        let e = ApiError::from(RegistryError::Catalog(CatalogError::NotFound("ds".into())));
        assert_eq!(e.to_string(), "dataset `ds` is not in the catalog");
    }
}
