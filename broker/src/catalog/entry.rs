//! Dataset metadata as the catalog holds it, aligned with DCAT-AP.de 2.0, and
//! its validation.
//!
//! A [`DatasetDescription`] is what the registering steward states about a
//! dataset. The catalog wraps it in a [`CatalogEntry`] with the facts it sets
//! itself: owner organisation and node (from the node's certificate), the
//! publisher's display name (from the signed membership), version and time.
//! Closed vocabularies (themes, access rights, update frequency, licences) map
//! to the EU and dcat-ap.de controlled vocabularies in the DCAT export.

use allmende_connectors::{FieldSpec, FieldType};
pub use allmende_vocab::{AccessRights, Frequency, Theme, UnknownValue};
use allmende_vocab::{Classification, LegalBasis, Purpose};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

/// A licence the catalog knows: its short id (as CKAN portals such as
/// Munich's write it) and its concept in the dcat-ap.de licence vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Licence {
    /// Short id, e.g. `dl-de-by-2.0`.
    pub id: &'static str,
    /// Path below [`LICENCE_SCHEME`], e.g. `dl-by-de/2.0`.
    pub concept: &'static str,
    /// Whether the licence requires naming the publisher.
    pub attribution: bool,
    /// German title.
    pub title: &'static str,
}

/// The dcat-ap.de licence vocabulary.
pub const LICENCE_SCHEME: &str = "http://dcat-ap.de/def/licenses";

/// Licences an entry may name.
pub const LICENCES: &[Licence] = &[
    Licence {
        id: "dl-de-by-2.0",
        concept: "dl-by-de/2.0",
        attribution: true,
        title: "Datenlizenz Deutschland Namensnennung 2.0",
    },
    Licence {
        id: "dl-de-zero-2.0",
        concept: "dl-zero-de/2.0",
        attribution: false,
        title: "Datenlizenz Deutschland Zero 2.0",
    },
    Licence {
        id: "cc-by-4.0",
        concept: "cc-by/4.0",
        attribution: true,
        title: "Creative Commons Namensnennung 4.0 International",
    },
    Licence {
        id: "cc-by-sa-4.0",
        concept: "cc-by-sa/4.0",
        attribution: true,
        title: "Creative Commons Namensnennung - Weitergabe unter gleichen Bedingungen 4.0 International",
    },
    Licence {
        id: "cc-zero",
        concept: "cc-zero",
        attribution: false,
        title: "Creative Commons CC Zero License (cc-zero)",
    },
    Licence {
        id: "odbl",
        concept: "odbl",
        attribution: true,
        title: "Open Data Commons Open Database License (ODbL)",
    },
    Licence {
        id: "other-closed",
        concept: "other-closed",
        attribution: false,
        title: "Andere geschlossene Lizenz",
    },
    Licence {
        id: "other-commercial",
        concept: "other-commercial",
        attribution: false,
        title: "Andere kommerzielle Lizenz",
    },
];

impl Licence {
    /// The licence with short id `id`.
    pub fn find(id: &str) -> Option<&'static Licence> {
        LICENCES.iter().find(|l| l.id == id)
    }

    /// IRI of the licence concept.
    pub fn iri(&self) -> String {
        format!("{LICENCE_SCHEME}/{}", self.concept)
    }
}

/// Spatial coverage (`dct:spatial`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spatial {
    /// A place name, e.g. `München`.
    pub label: String,
    /// IRI of the place, e.g. the dcat-ap.de political geocoding of Munich
    /// (`http://dcat-ap.de/def/politicalGeocoding/municipalityKey/091620000`).
    #[serde(default)]
    pub iri: Option<String>,
}

/// Temporal coverage (`dct:temporal`), ISO dates `YYYY-MM-DD`; either end
/// may be open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Temporal {
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub end: Option<String>,
}

/// Contact point (`dcat:contactPoint`, a vCard organisation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactPoint {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

/// The dataset's columns: the same declaration a connector is checked
/// against (`allmende_connectors::schema::check_declared_schema`), plus which
/// columns identify people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSchema {
    pub fields: Vec<FieldSpec>,
    /// The data-subject column (consent filtering, pseudonymisation).
    #[serde(default)]
    pub subject_column: Option<String>,
    /// Other identifying columns (meter id, device id, …).
    #[serde(default)]
    pub identifier_columns: Vec<String>,
    /// Quasi-identifiers: columns that do not name a person but can single
    /// one out when a filter selects on them (district, timestamp, postcode,
    /// …). In a personal dataset a filter may name one only if the owner lists
    /// it in `filterable_columns`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quasi_identifier_columns: Vec<String>,
    /// The quasi-identifiers the owner allows filters on (by default none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filterable_columns: Vec<String>,
}

impl DatasetSchema {
    /// The data-subject column and every identifier column.
    pub fn identifying_columns(&self) -> Vec<&str> {
        self.subject_column
            .iter()
            .chain(self.identifier_columns.iter())
            .map(String::as_str)
            .collect()
    }
}

fn default_language() -> String {
    "de".to_owned()
}

/// What the registering organisation states about a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetDescription {
    /// Dataset id, unique within the owner organisation:
    /// `[a-z0-9][a-z0-9-]{0,62}`, e.g. `smart-meter-readings`.
    pub id: String,
    /// `dct:title` (mandatory in DCAT-AP.de).
    pub title: String,
    /// `dct:description` (mandatory in DCAT-AP.de).
    pub description: String,
    /// Language of title, description and keywords (`de`, `en`, …).
    #[serde(default = "default_language")]
    pub language: String,
    /// Short licence id from [`LICENCES`] (mandatory on the distribution).
    pub licence: String,
    #[serde(default)]
    pub themes: BTreeSet<Theme>,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub spatial: Option<Spatial>,
    #[serde(default)]
    pub temporal: Option<Temporal>,
    #[serde(default)]
    pub contact_point: Option<ContactPoint>,
    pub access_rights: AccessRights,
    pub legal_basis: LegalBasis,
    pub classification: Classification,
    pub contains_personal_data: bool,
    /// Generated in public space (street sensors, traffic counts): open data
    /// for everyone, anonymised where personal-derived.
    pub public_space_origin: bool,
    /// Purposes the owner allows at all (the policies decide per request).
    #[serde(default)]
    pub allowed_purposes: BTreeSet<Purpose>,
    /// Personal-derived data may leave only as anonymised aggregates.
    #[serde(default)]
    pub anonymisation_required: bool,
    pub update_frequency: Frequency,
    pub schema: DatasetSchema,
    /// Access URL of the distribution (`dcat:accessURL`, mandatory in
    /// DCAT-AP.de). `None`: the owner node's identity URI, where
    /// `Access.Fetch` serves it.
    #[serde(default)]
    pub access_url: Option<String>,
}

/// A dataset as the federated catalog carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// Owner (and publisher) organisation: the organisation of the node that
    /// signed the entry.
    pub owner: String,
    /// The node that holds the data and decides every read.
    pub owner_node: String,
    /// Display name of the owner from the signed membership (`foaf:name`).
    pub publisher_name: String,
    /// The owner node's catalog version at which this entry last changed.
    pub version: u64,
    /// Milliseconds since the Unix epoch (`dct:modified`).
    pub updated_at_ms: i64,
    pub dataset: DatasetDescription,
}

impl DatasetDescription {
    /// The dataset as the policy engine sees it, owned by organisation
    /// `owner`: the one conversion from a description to the policy model.
    pub fn policy_dataset(&self, owner: &str) -> allmende_policies::Dataset {
        allmende_policies::Dataset {
            id: self.id.clone(),
            owner: owner.to_owned(),
            classification: self.classification,
            public_space_origin: self.public_space_origin,
            contains_personal_data: self.contains_personal_data,
            legal_basis: self.legal_basis,
            allowed_purposes: self.allowed_purposes.clone(),
            anonymisation_required: self.anonymisation_required,
        }
    }

    /// The quasi-identifiers a filter may not name: for a personal dataset,
    /// every declared one the owner did not list as filterable; none for
    /// other datasets.
    pub fn unfilterable_columns(&self) -> Vec<&str> {
        if !self.contains_personal_data {
            return Vec::new();
        }
        let s = &self.schema;
        s.quasi_identifier_columns
            .iter()
            .filter(|c| !s.filterable_columns.contains(c))
            .map(String::as_str)
            .collect()
    }
}

impl CatalogEntry {
    /// The dataset id.
    pub fn id(&self) -> &str {
        &self.dataset.id
    }

    /// The dataset as the policy engine sees it.
    pub fn policy_dataset(&self) -> allmende_policies::Dataset {
        self.dataset.policy_dataset(&self.owner)
    }

    /// The distribution's access URL (stated, or the owner node's identity URI).
    pub fn access_url(&self, federation: &str) -> String {
        self.dataset.access_url.clone().unwrap_or_else(|| {
            format!(
                "allmende://{federation}/{}/node/{}",
                self.owner, self.owner_node
            )
        })
    }
}

/// Checks a dataset id: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_dataset_id(s: &str) -> bool {
    crate::pki::identity::valid_org_name(s)
}

const MAX_TITLE: usize = 300;
const MAX_DESCRIPTION: usize = 10_000;
const MAX_KEYWORDS: usize = 50;
const MAX_KEYWORD: usize = 100;
const MAX_FIELDS: usize = 1_000;

/// True for an absolute IRI we are willing to write into Turtle: a scheme,
/// a non-empty rest, no whitespace, controls or characters Turtle forbids in
/// IRIs.
pub fn valid_iri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    scheme_ok
        && !rest.is_empty()
        && s.len() <= 2_000
        && !s.chars().any(|c| {
            c.is_whitespace()
                || c.is_control()
                || matches!(c, '<' | '>' | '"' | '{' | '}' | '|' | '^' | '`' | '\\')
        })
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && s.len() <= 254
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@' | '%'))
        && s.matches('@').count() == 1
}

fn valid_date(s: &str) -> bool {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    s.len() == 10 && time::Date::parse(s, format).is_ok()
}

fn text_problem(what: &str, s: &str, max: usize, out: &mut Vec<String>) {
    if s.trim().is_empty() {
        out.push(format!("{what} is empty"));
    } else if s.chars().count() > max {
        out.push(format!("{what} is longer than {max} characters"));
    } else if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        out.push(format!("{what} contains control characters"));
    }
}

impl DatasetDescription {
    /// Every problem with this description; empty when it is valid.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !valid_dataset_id(&self.id) {
            p.push(format!(
                "dataset id `{}` must match [a-z0-9][a-z0-9-]{{0,62}}",
                crate::text::shown(&self.id, 100)
            ));
        }
        text_problem("title", &self.title, MAX_TITLE, &mut p);
        if self.title.contains('\n') {
            p.push("title spans several lines".into());
        }
        text_problem("description", &self.description, MAX_DESCRIPTION, &mut p);
        let lang_ok = (2..=3).contains(&self.language.len())
            && self.language.bytes().all(|b| b.is_ascii_lowercase());
        if !lang_ok {
            p.push(format!(
                "language `{}` must be a two- or three-letter lower-case code",
                crate::text::shown(&self.language, 20)
            ));
        }
        if Licence::find(&self.licence).is_none() {
            p.push(format!(
                "licence `{}` is unknown (expected one of: {})",
                crate::text::shown(&self.licence, 100),
                LICENCES.iter().map(|l| l.id).collect::<Vec<_>>().join(", ")
            ));
        }
        if self.keywords.len() > MAX_KEYWORDS {
            p.push(format!("more than {MAX_KEYWORDS} keywords"));
        }
        let mut seen = HashSet::new();
        for k in &self.keywords {
            text_problem("a keyword", k, MAX_KEYWORD, &mut p);
            if k.contains('\n') {
                p.push("a keyword spans several lines".into());
            }
            if !seen.insert(k.to_lowercase()) {
                p.push(format!("keyword `{k}` is repeated"));
            }
        }
        if let Some(s) = &self.spatial {
            text_problem("spatial label", &s.label, MAX_TITLE, &mut p);
            if let Some(iri) = &s.iri
                && !valid_iri(iri)
            {
                p.push(format!("spatial iri `{iri}` is not an absolute IRI"));
            }
        }
        if let Some(t) = &self.temporal {
            for (what, d) in [("start", &t.start), ("end", &t.end)] {
                if let Some(d) = d
                    && !valid_date(d)
                {
                    p.push(format!("temporal {what} `{d}` is not a date YYYY-MM-DD"));
                }
            }
            match (&t.start, &t.end) {
                (None, None) => p.push("temporal coverage has neither start nor end".into()),
                (Some(a), Some(b)) if valid_date(a) && valid_date(b) && a > b => {
                    p.push(format!("temporal start `{a}` lies after end `{b}`"));
                }
                _ => {}
            }
        }
        if let Some(c) = &self.contact_point {
            text_problem("contact point name", &c.name, MAX_TITLE, &mut p);
            if let Some(e) = &c.email
                && !valid_email(e)
            {
                p.push(format!("contact email `{e}` is not an e-mail address"));
            }
            if let Some(u) = &c.url
                && !(valid_iri(u) && (u.starts_with("https://") || u.starts_with("http://")))
            {
                p.push(format!("contact url `{u}` is not an http(s) URL"));
            }
        }
        if let Some(u) = &self.access_url
            && !valid_iri(u)
        {
            p.push(format!("access url `{u}` is not an absolute IRI"));
        }
        // Classification, personal data, legal basis and access must agree.
        let personal_class = matches!(
            self.classification,
            Classification::Personal | Classification::Special
        );
        if personal_class && !self.contains_personal_data {
            p.push(format!(
                "classification `{}` requires contains_personal_data",
                self.classification
            ));
        }
        if self.contains_personal_data && !personal_class {
            p.push(format!(
                "personal data must be classified `personal` or `special`, not `{}`",
                self.classification
            ));
        }
        if self.contains_personal_data && self.legal_basis == LegalBasis::NotApplicable {
            p.push("personal data needs a legal basis other than `NotApplicable`".into());
        }
        if self.contains_personal_data && self.access_rights == AccessRights::Public {
            p.push("personal data cannot have access rights `public`".into());
        }
        if self.classification == Classification::Public
            && self.access_rights != AccessRights::Public
        {
            p.push(format!(
                "classification `public` requires access rights `public`, not `{}`",
                self.access_rights
            ));
        }
        self.schema_problems(&mut p);
        p
    }

    fn schema_problems(&self, p: &mut Vec<String>) {
        let s = &self.schema;
        if s.fields.is_empty() {
            p.push("schema has no fields".into());
        }
        if s.fields.len() > MAX_FIELDS {
            p.push(format!("schema has more than {MAX_FIELDS} fields"));
        }
        let mut names = HashSet::new();
        for f in &s.fields {
            if f.name.trim().is_empty()
                || f.name.len() > 200
                || f.name.chars().any(char::is_control)
            {
                p.push(format!(
                    "schema field name `{}` is empty, too long or has control characters",
                    crate::text::shown(&f.name, 50)
                ));
            }
            if !names.insert(f.name.as_str()) {
                p.push(format!("schema field `{}` is declared twice", f.name));
            }
        }
        let role_column = |name: &str, role: &str, p: &mut Vec<String>| match s
            .fields
            .iter()
            .find(|f| f.name == name)
        {
            None => p.push(format!("{role} column `{name}` is not in the schema")),
            Some(f) if !matches!(f.field_type, FieldType::String | FieldType::Int64) => {
                p.push(format!(
                    "{role} column `{name}` must be string or int64, not {}",
                    f.field_type
                ))
            }
            Some(_) => {}
        };
        if let Some(subject) = &s.subject_column {
            role_column(subject, "data-subject", p);
        }
        let mut ids = HashSet::new();
        for id in &s.identifier_columns {
            role_column(id, "identifier", p);
            if Some(id) == s.subject_column.as_ref() {
                p.push(format!(
                    "column `{id}` is both the data-subject column and an identifier column"
                ));
            }
            if !ids.insert(id.as_str()) {
                p.push(format!("identifier column `{id}` is listed twice"));
            }
        }
        let identifying = s.identifying_columns();
        let mut quasi = HashSet::new();
        for q in &s.quasi_identifier_columns {
            if !s.fields.iter().any(|f| &f.name == q) {
                p.push(format!(
                    "quasi-identifier column `{q}` is not in the schema"
                ));
            }
            if identifying.contains(&q.as_str()) {
                p.push(format!(
                    "column `{q}` is identifying and also listed as a quasi-identifier (identifying columns are never filterable)"
                ));
            }
            if !quasi.insert(q.as_str()) {
                p.push(format!("quasi-identifier column `{q}` is listed twice"));
            }
        }
        let mut filterable = HashSet::new();
        for f in &s.filterable_columns {
            if !quasi.contains(f.as_str()) {
                p.push(format!(
                    "filterable column `{f}` is not a declared quasi-identifier (list only quasi-identifiers the owner allows filters on)"
                ));
            }
            if !filterable.insert(f.as_str()) {
                p.push(format!("filterable column `{f}` is listed twice"));
            }
        }
        if self.legal_basis == LegalBasis::Consent && s.subject_column.is_none() {
            p.push(
                "legal basis `Consent` needs a data-subject column (consent is enforced per subject)"
                    .into(),
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;

    /// The smart-meter readings of the brief: personal, consent-based.
    pub(crate) fn smart_meter() -> DatasetDescription {
        DatasetDescription {
            id: "smart-meter-readings".into(),
            title: "Smart-Meter-Messwerte der Haushalte".into(),
            description: "Viertelstündliche Stromverbrauchswerte der Münchner Haushalte.".into(),
            language: "de".into(),
            licence: "other-closed".into(),
            themes: [Theme::Energy].into(),
            keywords: vec![
                "Strom".into(),
                "Smart Meter".into(),
                "Energieverbrauch".into(),
            ],
            spatial: Some(Spatial {
                label: "München".into(),
                iri: Some(
                    "http://dcat-ap.de/def/politicalGeocoding/municipalityKey/091620000".into(),
                ),
            }),
            temporal: Some(Temporal {
                start: Some("2025-03-03".into()),
                end: None,
            }),
            contact_point: Some(ContactPoint {
                name: "SWM Datenschutz".into(),
                email: Some("datenschutz@swm.example".into()),
                url: None,
            }),
            access_rights: AccessRights::NonPublic,
            legal_basis: LegalBasis::Consent,
            classification: Classification::Personal,
            contains_personal_data: true,
            public_space_origin: false,
            allowed_purposes: [Purpose::AcademicResearch].into(),
            anonymisation_required: false,
            update_frequency: Frequency::Daily,
            schema: DatasetSchema {
                fields: vec![
                    FieldSpec::required("household_id", FieldType::String),
                    FieldSpec::required("meter_id", FieldType::String),
                    FieldSpec::required("timestamp", FieldType::Timestamp),
                    FieldSpec::required("kwh", FieldType::Float64),
                    FieldSpec::new("district", FieldType::String),
                ],
                subject_column: Some("household_id".into()),
                identifier_columns: vec!["meter_id".into()],
                quasi_identifier_columns: vec!["timestamp".into(), "district".into()],
                filterable_columns: vec!["timestamp".into()],
            },
            access_url: None,
        }
    }

    #[test]
    fn the_brief_datasets_are_valid() {
        assert_eq!(smart_meter().problems(), Vec::<String>::new());
    }

    #[test]
    fn quasi_identifiers_are_filterable_only_where_the_owner_allows() {
        let mut d = smart_meter();
        assert_eq!(d.unfilterable_columns(), vec!["district"]);
        d.schema.filterable_columns.clear();
        assert_eq!(d.unfilterable_columns(), vec!["timestamp", "district"]);
        // Only personal datasets restrict them.
        let mut open = d.clone();
        open.contains_personal_data = false;
        assert!(open.unfilterable_columns().is_empty());
        // Declarations are checked.
        d.schema.quasi_identifier_columns = vec!["nope".into(), "meter_id".into()];
        d.schema.filterable_columns = vec!["kwh".into()];
        let p = d.problems().join("; ");
        for needle in [
            "quasi-identifier column `nope` is not in the schema",
            "column `meter_id` is identifying and also listed as a quasi-identifier",
            "filterable column `kwh` is not a declared quasi-identifier",
        ] {
            assert!(p.contains(needle), "missing `{needle}` in: {p}");
        }
    }

    #[test]
    fn registrations_without_the_new_lists_load_and_serialise_as_before() {
        let json = r#"{"fields":[{"name":"a","type":"string"}],"subject_column":"a"}"#;
        let s: DatasetSchema = serde_json::from_str(json).unwrap();
        assert!(s.quasi_identifier_columns.is_empty() && s.filterable_columns.is_empty());
        let back = serde_json::to_string(&s).unwrap();
        assert!(
            !back.contains("quasi") && !back.contains("filterable"),
            "{back}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut d = smart_meter();
        d.id = "Smart Meter".into();
        d.title = " ".into();
        d.description = String::new();
        d.licence = "beerware".into();
        d.classification = Classification::Public;
        d.keywords.push("strom".into());
        d.schema.subject_column = Some("nope".into());
        d.temporal = Some(Temporal {
            start: Some("2025-13-01".into()),
            end: None,
        });
        let p = d.problems().join("; ");
        for needle in [
            "dataset id `Smart Meter`",
            "title is empty",
            "description is empty",
            "licence `beerware` is unknown (expected one of: dl-de-by-2.0",
            "personal data must be classified",
            "keyword `strom` is repeated",
            "data-subject column `nope` is not in the schema",
            "temporal start `2025-13-01`",
            "classification `public` requires access rights `public`",
        ] {
            assert!(p.contains(needle), "missing `{needle}` in: {p}");
        }
    }

    #[test]
    fn vocabularies_parse_strictly_and_map_to_iris() {
        assert_eq!("ENER".parse::<Theme>().unwrap(), Theme::Energy);
        assert!("ener".parse::<Theme>().is_err());
        assert_eq!(
            AccessRights::NonPublic.iri(),
            "http://publications.europa.eu/resource/authority/access-right/NON_PUBLIC"
        );
        assert_eq!(
            Licence::find("dl-de-by-2.0").unwrap().iri(),
            "http://dcat-ap.de/def/licenses/dl-by-de/2.0"
        );
        let err = "weekly-ish".parse::<Frequency>().unwrap_err().to_string();
        assert!(
            err.starts_with("unknown update frequency `weekly-ish`"),
            "{err}"
        );
        // Serde uses the same strict spelling.
        assert!(serde_json::from_str::<Theme>("\"TRAN\"").is_ok());
        assert!(serde_json::from_str::<Theme>("\"tran\"").is_err());
    }

    #[test]
    fn iris_and_emails_are_checked() {
        assert!(valid_iri("https://example.org/a?b=c"));
        assert!(valid_iri("allmende://munich/swm/node/swm-1"));
        for bad in [
            "",
            "no-scheme",
            "http://a b",
            "1http://x",
            "http://x>",
            "x:",
        ] {
            assert!(!valid_iri(bad), "{bad}");
        }
        assert!(valid_email("a.b@swm.example"));
        for bad in ["a@b", "@b.de", "a b@c.de", "a@@b.de", "a@b.de>"] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn the_policy_view_carries_the_policy_facts() {
        let e = CatalogEntry {
            owner: "swm".into(),
            owner_node: "swm-1".into(),
            publisher_name: "Stadtwerke München".into(),
            version: 1,
            updated_at_ms: 0,
            dataset: smart_meter(),
        };
        let d = e.policy_dataset();
        assert_eq!(d.owner, "swm");
        assert_eq!(d.classification, Classification::Personal);
        assert!(d.allowed_purposes.contains(&Purpose::AcademicResearch));
        assert_eq!(e.access_url("munich"), "allmende://munich/swm/node/swm-1");
    }
}
