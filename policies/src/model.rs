//! Typed domain model: the closed vocabularies (organisation kinds, roles,
//! purposes, classifications, …), the actions, and the plain structs the broker
//! fills from its store. Every vocabulary parses strictly: an unknown value or
//! a case/spelling variant is refused, never matched loosely.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that is not part of one of the closed vocabularies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {vocabulary} `{value}` (expected one of: {expected})")]
pub struct UnknownValue {
    /// Which vocabulary was asked (`purpose`, `role`, …).
    pub vocabulary: &'static str,
    /// The refused input.
    pub value: String,
    /// The accepted spellings, comma separated.
    pub expected: String,
}

/// Defines a closed vocabulary: the enum, its exact spellings (which are also
/// the Cedar enum entity ids), strict `FromStr`, `Display` and serde.
macro_rules! closed_vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $vocab:literal, $cedar_type:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The Cedar entity type holding this vocabulary.
            pub const CEDAR_TYPE: &'static str = $cedar_type;

            /// The exact spelling (also the Cedar entity id).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            pub(crate) const fn index(self) -> usize {
                self as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue {
                        vocabulary: $vocab,
                        value: s.to_owned(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

closed_vocabulary! {
    /// Kind of a federation member. `Public` is the general public: citizens and
    /// the anonymous open-data caller.
    OrgKind, "organisation kind", "Allmende::OrgKind" {
        City => "city",
        Utility => "utility",
        University => "university",
        Company => "company",
        Public => "public",
    }
}

closed_vocabulary! {
    /// Role of a user inside their organisation.
    Role, "role", "Allmende::Role" {
        Researcher => "researcher",
        Dpo => "dpo",
        Steward => "steward",
        Citizen => "citizen",
        Operator => "operator",
    }
}

closed_vocabulary! {
    /// Processing purpose, from the W3C Data Privacy Vocabulary (`dpv:Purpose`).
    Purpose, "purpose", "Allmende::Purpose" {
        /// `dpv:AcademicResearch`
        AcademicResearch => "AcademicResearch",
        /// `dpv:CommercialResearch`
        CommercialResearch => "CommercialResearch",
        /// `dpv:ServiceProvision`
        ServiceProvision => "ServiceProvision",
        /// `dpv:PublicInterest` (a legal-basis concept used here as purpose of
        /// public bodies' tasks, e.g. the city reading obligation deliveries)
        PublicInterest => "PublicInterest",
        /// `dpv:Marketing`
        Marketing => "Marketing",
        /// `dpv:InsuranceUnderwriting` (DPV sector extension)
        InsuranceUnderwriting => "InsuranceUnderwriting",
        /// `dpv:RiskScoring` (DPV `dpv:CreditChecking`/scoring family)
        RiskScoring => "RiskScoring",
    }
}

closed_vocabulary! {
    /// Classification of a dataset.
    Classification, "classification", "Allmende::Classification" {
        Public => "public",
        Internal => "internal",
        Personal => "personal",
        /// Special categories of personal data (GDPR Art. 9).
        Special => "special",
    }
}

closed_vocabulary! {
    /// Legal basis of processing (`dpv:LegalBasis`, GDPR Art. 6).
    LegalBasis, "legal basis", "Allmende::LegalBasis" {
        Consent => "Consent",
        Contract => "Contract",
        LegalObligation => "LegalObligation",
        PublicTask => "PublicTask",
        LegitimateInterest => "LegitimateInterest",
        /// For data that is not personal.
        NotApplicable => "NotApplicable",
    }
}

closed_vocabulary! {
    /// State of a grant.
    GrantState, "grant state", "Allmende::GrantState" {
        Active => "active",
        Suspended => "suspended",
        Revoked => "revoked",
    }
}

closed_vocabulary! {
    /// State of an access request.
    RequestState, "request state", "Allmende::RequestState" {
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
        Withdrawn => "withdrawn",
    }
}

closed_vocabulary! {
    /// Every action the broker asks the policies about.
    Action, "action", "Allmende::Action" {
        /// Raw rows of a dataset.
        Read => "read",
        /// Anonymised aggregate of a dataset.
        ReadAggregate => "read_aggregate",
        /// Streaming subscription to a dataset.
        Subscribe => "subscribe",
        /// Bulk export of a dataset.
        Export => "export",
        RegisterConnector => "register_connector",
        PublishOpenData => "publish_open_data",
        RequestAccess => "request_access",
        ApproveRequest => "approve_request",
        Revoke => "revoke",
        RecordConsent => "record_consent",
        ReadAudit => "read_audit",
        ExportAudit => "export_audit",
        VerifyAudit => "verify_audit",
        CosignCheckpoint => "cosign_checkpoint",
        /// Delivery of data under an obligation.
        Deliver => "deliver",
        ReadCompliance => "read_compliance",
        ManageFederation => "manage_federation",
        /// Import a controller's consent records for a dataset.
        ImportConsent => "import_consent",
        /// Read a data subject's consent records.
        ReadConsent => "read_consent",
        /// List the connectors registered at an organisation's node, with
        /// their operational detail (kinds, problems, who registered).
        ListConnectors => "list_connectors",
        /// Node-to-node federation metadata: introductions (`Hello`) and
        /// catalog change notices.
        ExchangeMetadata => "exchange_metadata",
    }
}

impl Purpose {
    /// Which organisation kinds may declare this purpose. Mirrors the Cedar
    /// policy `purpose-bound-to-org-kind` (a test checks that both agree).
    pub fn allowed_for(self, kind: OrgKind) -> bool {
        use OrgKind::{City, Company, University, Utility};
        match self {
            Purpose::AcademicResearch => kind == University,
            Purpose::CommercialResearch | Purpose::Marketing => matches!(kind, Company | Utility),
            Purpose::ServiceProvision => matches!(kind, City | Utility | Company),
            Purpose::PublicInterest => matches!(kind, City | Utility),
            Purpose::InsuranceUnderwriting | Purpose::RiskScoring => kind == Company,
        }
    }
}

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn purposes_parse_strictly() {
        for p in Purpose::ALL {
            assert_eq!(p.as_str().parse::<Purpose>().unwrap(), *p);
        }
        for bad in [
            "academicresearch",
            "ACADEMICRESEARCH",
            "Academic Research",
            "AcademicResearch ",
            "academic_research",
            "AcademicReserch",
            "",
        ] {
            let err = bad.parse::<Purpose>().unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn serde_uses_the_strict_spelling() {
        let p: Purpose = serde_json::from_str("\"Marketing\"").unwrap();
        assert_eq!(p, Purpose::Marketing);
        assert!(serde_json::from_str::<Purpose>("\"marketing\"").is_err());
        assert_eq!(serde_json::to_string(&Role::Dpo).unwrap(), "\"dpo\"");
    }

    #[test]
    fn insurer_cannot_declare_academic_research() {
        assert!(!Purpose::AcademicResearch.allowed_for(OrgKind::Company));
        assert!(Purpose::AcademicResearch.allowed_for(OrgKind::University));
    }
}
