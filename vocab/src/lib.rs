//! The closed vocabularies of Allmende, each defined once, by one macro:
//! organisation kinds, roles, purposes, classifications, legal bases, grant
//! and request states, the policy actions, consent status, and the DCAT
//! terms of the catalog (themes, access rights, update frequency).
//!
//! Every vocabulary parses strictly: an unknown value or a case/spelling
//! variant is refused with an [`UnknownValue`] that names the accepted
//! spellings, never matched loosely. The spelling is what files,
//! certificates, Cedar entity ids, catalog entries and serde use; the
//! audit log's canonical encoding (`allmende-audit`) and the protobuf
//! enums (`allmende::rpc::convert`) map the enums explicitly and do not
//! depend on declaration order.
//!
//! Its own crate because both `allmende-policies` and `allmende-audit` use
//! it and neither may depend on the other (the offline audit verifier must
//! not pull in Cedar; the policy engine has no business with the audit
//! format). It depends on nothing but serde and thiserror.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// The longest prefix of a refused input that an [`UnknownValue`] repeats.
pub const MAX_ECHOED_CHARS: usize = 100;

/// A value that is not part of one of the closed vocabularies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {vocabulary} `{value}` (expected one of: {expected})")]
pub struct UnknownValue {
    /// Which vocabulary was asked (`purpose`, `role`, …).
    pub vocabulary: &'static str,
    /// The refused input (at most [`MAX_ECHOED_CHARS`] characters of it).
    pub value: String,
    /// The accepted spellings, comma separated.
    pub expected: String,
}

/// Defines a closed vocabulary: the enum, `ALL`, its exact spellings, strict
/// `FromStr`, `Display` and serde as the spelling. Optional: `cedar = "…"`,
/// the Cedar enumerated entity type holding it (`CEDAR_TYPE`); or
/// `scheme = "…"` with a `(spelling, code)` pair per value, the controlled
/// vocabulary (`SCHEME`) and each concept's IRI (`iri()`).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $name:ident, $vocab:literal, scheme = $scheme:literal {
            $( $(#[$vmeta:meta])* $variant:ident => ($text:literal, $code:literal) ),+ $(,)?
        }
    ) => {
        vocabulary! {
            $(#[$meta])*
            $name, $vocab {
                $( $(#[$vmeta])* $variant => $text ),+
            }
        }

        impl $name {
            /// IRI of the controlled vocabulary (concept scheme).
            pub const SCHEME: &'static str = $scheme;

            /// IRI of the concept in [`Self::SCHEME`].
            pub fn iri(self) -> String {
                let code = match self {
                    $($name::$variant => $code),+
                };
                format!("{}/{}", Self::SCHEME, code)
            }
        }
    };
    (
        $(#[$meta:meta])*
        $name:ident, $vocab:literal $(, cedar = $cedar_type:literal)? {
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
            $(
            /// The Cedar entity type holding this vocabulary.
            pub const CEDAR_TYPE: &'static str = $cedar_type;
            )?

            /// The exact spelling (for Cedar vocabularies also the entity id).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Position in [`Self::ALL`] (for tables indexed by value; never
            /// part of a stored or signed format).
            pub const fn index(self) -> usize {
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
                        value: s.chars().take(MAX_ECHOED_CHARS).collect(),
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

vocabulary! {
    /// Kind of a federation member. Comes only from the signed membership.
    /// `Public` is the general public: citizens and the anonymous open-data
    /// caller.
    OrgKind, "organisation kind", cedar = "Allmende::OrgKind" {
        City => "city",
        Utility => "utility",
        University => "university",
        Company => "company",
        Public => "public",
    }
}

vocabulary! {
    /// Role of a user inside their organisation. Comes only from their
    /// certificate (the subject's OU).
    Role, "role", cedar = "Allmende::Role" {
        Researcher => "researcher",
        Dpo => "dpo",
        Steward => "steward",
        Citizen => "citizen",
        Operator => "operator",
    }
}

vocabulary! {
    /// Processing purpose, from the W3C Data Privacy Vocabulary (`dpv:Purpose`).
    Purpose, "purpose", cedar = "Allmende::Purpose" {
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

vocabulary! {
    /// Classification of a dataset.
    Classification, "classification", cedar = "Allmende::Classification" {
        Public => "public",
        Internal => "internal",
        Personal => "personal",
        /// Special categories of personal data (GDPR Art. 9).
        Special => "special",
    }
}

vocabulary! {
    /// Legal basis of processing (`dpv:LegalBasis`, GDPR Art. 6).
    LegalBasis, "legal basis", cedar = "Allmende::LegalBasis" {
        Consent => "Consent",
        Contract => "Contract",
        LegalObligation => "LegalObligation",
        PublicTask => "PublicTask",
        LegitimateInterest => "LegitimateInterest",
        /// For data that is not personal.
        NotApplicable => "NotApplicable",
    }
}

vocabulary! {
    /// State of a grant.
    GrantState, "grant state", cedar = "Allmende::GrantState" {
        Active => "active",
        Suspended => "suspended",
        Revoked => "revoked",
    }
}

vocabulary! {
    /// State of an access request.
    RequestState, "request state", cedar = "Allmende::RequestState" {
        Pending => "pending",
        Approved => "approved",
        Rejected => "rejected",
        Withdrawn => "withdrawn",
    }
}

vocabulary! {
    /// Every action the broker asks the policies about.
    Action, "action", cedar = "Allmende::Action" {
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
        /// See one access request: its requester, the owner's officers.
        ViewRequest => "view_request",
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
        /// The grantee organisation attests the deletion a duty asks for.
        AttestDeletion => "attest_deletion",
        /// A data subject's erasure (GDPR Art. 17): excluded from every
        /// later release, recipients notified.
        EraseSubject => "erase_subject",
        /// An obliged organisation's node answers the entitled body's pull
        /// of a dataset it must deliver (the MDS provider endpoint).
        DeliverObligation => "deliver_obligation",
        /// Record, change or end the obligations a node holds.
        ManageObligations => "manage_obligations",
    }
}

vocabulary! {
    /// A data subject's consent decision (DPV / ISO/IEC TS 27560 terms), as
    /// written in consent CSV files and the consent store.
    ConsentStatus, "status" {
        /// Consent given.
        Given => "given",
        /// Consent refused.
        Refused => "refused",
        /// Consent withdrawn.
        Withdrawn => "withdrawn",
    }
}

vocabulary! {
    /// How a consent record reached the controller (ISO/IEC TS 27560's
    /// collection method), stored with each consent record.
    CollectionMethod, "collection method" {
        /// Imported from the controller's consent CSV.
        CsvImport => "csv-import",
        /// Given or withdrawn by the data subject with their citizen
        /// certificate.
        CitizenSelfService => "citizen-self-service",
        /// Recorded by the controller's steward or DPO for the subject (a
        /// decision that reached them another way, e.g. on paper).
        RecordedByController => "recorded-by-controller",
    }
}

vocabulary! {
    /// Data theme (`dcat:theme`), the EU data-theme vocabulary that DCAT-AP.de uses.
    Theme, "theme", scheme = "http://publications.europa.eu/resource/authority/data-theme" {
        Agriculture => ("AGRI", "AGRI"),
        Economy => ("ECON", "ECON"),
        Education => ("EDUC", "EDUC"),
        Energy => ("ENER", "ENER"),
        Environment => ("ENVI", "ENVI"),
        Government => ("GOVE", "GOVE"),
        Health => ("HEAL", "HEAL"),
        International => ("INTR", "INTR"),
        Justice => ("JUST", "JUST"),
        Regions => ("REGI", "REGI"),
        Society => ("SOCI", "SOCI"),
        Science => ("TECH", "TECH"),
        Transport => ("TRAN", "TRAN"),
    }
}

vocabulary! {
    /// Access rights (`dct:accessRights`), the EU access-right vocabulary.
    AccessRights, "access rights", scheme = "http://publications.europa.eu/resource/authority/access-right" {
        Public => ("public", "PUBLIC"),
        Restricted => ("restricted", "RESTRICTED"),
        NonPublic => ("non-public", "NON_PUBLIC"),
    }
}

vocabulary! {
    /// Update frequency (`dct:accrualPeriodicity`), the EU frequency vocabulary.
    Frequency, "update frequency", scheme = "http://publications.europa.eu/resource/authority/frequency" {
        Continuous => ("continuous", "UPDATE_CONT"),
        Hourly => ("hourly", "HOURLY"),
        Daily => ("daily", "DAILY"),
        Weekly => ("weekly", "WEEKLY"),
        Monthly => ("monthly", "MONTHLY"),
        Quarterly => ("quarterly", "QUARTERLY"),
        Annual => ("annual", "ANNUAL"),
        Irregular => ("irregular", "IRREG"),
        Never => ("never", "NEVER"),
        Unknown => ("unknown", "UNKNOWN"),
    }
}

impl Purpose {
    /// Which organisation kinds may declare this purpose. Mirrors the Cedar
    /// policy `purpose-bound-to-org-kind` (a test in `allmende-policies`
    /// checks that both agree).
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    /// Every vocabulary: each value's spelling round-trips through
    /// `FromStr`, `Display` and serde, and a case variant is refused with
    /// an error naming the vocabulary and every accepted spelling.
    fn strict<T>(vocabulary: &str)
    where
        T: Copy + Eq + fmt::Debug + fmt::Display + FromStr<Err = UnknownValue>,
        T: Serialize + for<'de> Deserialize<'de>,
        T: 'static,
        T: AllValues,
    {
        let all = T::all();
        let spellings: Vec<String> = all.iter().map(T::to_string).collect();
        for (v, s) in all.iter().zip(&spellings) {
            assert_eq!(s.parse::<T>().unwrap(), *v);
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *v);
            for variant in [s.to_uppercase(), s.to_lowercase(), format!("{s} ")] {
                if variant == *s {
                    continue;
                }
                let err = variant.parse::<T>().unwrap_err();
                assert_eq!(err.vocabulary, vocabulary);
                assert_eq!(err.expected, spellings.join(", "));
                assert!(serde_json::from_str::<T>(&format!("\"{variant}\"")).is_err());
            }
        }
    }

    trait AllValues: Sized + 'static {
        fn all() -> &'static [Self];
    }

    macro_rules! all_values {
        ($($t:ident),+) => {
            $(impl AllValues for $t {
                fn all() -> &'static [Self] {
                    $t::ALL
                }
            })+
        };
    }
    all_values!(
        OrgKind,
        Role,
        Purpose,
        Classification,
        LegalBasis,
        GrantState,
        RequestState,
        Action,
        ConsentStatus,
        CollectionMethod,
        Theme,
        AccessRights,
        Frequency
    );

    #[test]
    fn every_vocabulary_parses_strictly() {
        strict::<OrgKind>("organisation kind");
        strict::<Role>("role");
        strict::<Purpose>("purpose");
        strict::<Classification>("classification");
        strict::<LegalBasis>("legal basis");
        strict::<GrantState>("grant state");
        strict::<RequestState>("request state");
        strict::<Action>("action");
        strict::<ConsentStatus>("status");
        strict::<CollectionMethod>("collection method");
        strict::<Theme>("theme");
        strict::<AccessRights>("access rights");
        strict::<Frequency>("update frequency");
    }

    /// The spellings are the stored and signed forms: files, certificates,
    /// Cedar entity ids and signed catalog entries hold them, so a changed
    /// spelling would break stored data. Pinned here value by value.
    #[test]
    fn spellings_are_pinned() {
        fn spellings<T: Copy + fmt::Display>(all: &[T]) -> String {
            all.iter().map(T::to_string).collect::<Vec<_>>().join(",")
        }
        let pinned = [
            (
                spellings(OrgKind::ALL),
                "city,utility,university,company,public",
            ),
            (
                spellings(Role::ALL),
                "researcher,dpo,steward,citizen,operator",
            ),
            (
                spellings(Purpose::ALL),
                "AcademicResearch,CommercialResearch,ServiceProvision,PublicInterest,\
                 Marketing,InsuranceUnderwriting,RiskScoring",
            ),
            (
                spellings(Classification::ALL),
                "public,internal,personal,special",
            ),
            (
                spellings(LegalBasis::ALL),
                "Consent,Contract,LegalObligation,PublicTask,LegitimateInterest,NotApplicable",
            ),
            (spellings(GrantState::ALL), "active,suspended,revoked"),
            (
                spellings(RequestState::ALL),
                "pending,approved,rejected,withdrawn",
            ),
            (
                spellings(Action::ALL),
                "read,read_aggregate,subscribe,export,register_connector,publish_open_data,\
                 request_access,approve_request,view_request,revoke,record_consent,read_audit,export_audit,\
                 verify_audit,cosign_checkpoint,deliver,read_compliance,manage_federation,\
                 import_consent,read_consent,list_connectors,exchange_metadata,attest_deletion,erase_subject,\
                 deliver_obligation,manage_obligations",
            ),
            (spellings(ConsentStatus::ALL), "given,refused,withdrawn"),
            (
                spellings(CollectionMethod::ALL),
                "csv-import,citizen-self-service,recorded-by-controller",
            ),
            (
                spellings(Theme::ALL),
                "AGRI,ECON,EDUC,ENER,ENVI,GOVE,HEAL,INTR,JUST,REGI,SOCI,TECH,TRAN",
            ),
            (spellings(AccessRights::ALL), "public,restricted,non-public"),
            (
                spellings(Frequency::ALL),
                "continuous,hourly,daily,weekly,monthly,quarterly,annual,irregular,never,unknown",
            ),
        ];
        for (got, want) in pinned {
            assert_eq!(got, want);
        }
        assert_eq!(
            "maybe".parse::<ConsentStatus>().unwrap_err().to_string(),
            "unknown status `maybe` (expected one of: given, refused, withdrawn)"
        );
        assert_eq!(
            "admin".parse::<Role>().unwrap_err().to_string(),
            "unknown role `admin` (expected one of: researcher, dpo, steward, citizen, operator)"
        );
    }

    #[test]
    fn refused_input_is_echoed_only_in_part() {
        let long = "x".repeat(10_000);
        let err = long.parse::<Purpose>().unwrap_err();
        assert_eq!(err.value.chars().count(), MAX_ECHOED_CHARS);
    }

    #[test]
    fn cedar_types_and_iris() {
        assert_eq!(Purpose::CEDAR_TYPE, "Allmende::Purpose");
        assert_eq!(Action::CEDAR_TYPE, "Allmende::Action");
        assert_eq!(
            AccessRights::NonPublic.iri(),
            "http://publications.europa.eu/resource/authority/access-right/NON_PUBLIC"
        );
        assert_eq!(
            Frequency::Continuous.iri(),
            "http://publications.europa.eu/resource/authority/frequency/UPDATE_CONT"
        );
        for (i, a) in Action::ALL.iter().enumerate() {
            assert_eq!(a.index(), i);
        }
    }

    #[test]
    fn purposes_parse_strictly() {
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
        assert!(serde_json::from_str::<Purpose>("\"marketing\"").is_err());
    }

    #[test]
    fn insurer_cannot_declare_academic_research() {
        assert!(!Purpose::AcademicResearch.allowed_for(OrgKind::Company));
        assert!(Purpose::AcademicResearch.allowed_for(OrgKind::University));
    }
}
