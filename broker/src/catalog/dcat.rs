//! DCAT-AP.de 2.0 export: one catalog entry (`catalog show --dcat`) or the
//! whole federated catalog a node knows (`catalog export`), as Turtle or
//! JSON-LD.
//!
//! Both formats are written from one graph ([`super::rdf::Graph`]), so they
//! hold the same triples. A dataset is a `dcat:Dataset` with one
//! `dcat:Distribution` (the owner node's `Access.Fetch`, or the stated
//! access URL) carrying the licence; each owner organisation is one
//! `foaf:Agent` (its name from the signed membership when the exporting
//! node knows it, else from the signed entry). The whole catalog is one
//! `dcat:Catalog` published by the federation's city, listing every
//! dataset. Controlled vocabularies are the ones DCAT-AP.de names: EU data
//! themes, access rights, frequencies and languages, and the dcat-ap.de
//! licence list. For every concept it uses, the export states the concept's
//! scheme (`skos:inScheme`) and class, so that a validator without the EU
//! authority tables can still check vocabulary membership. Allmende's own
//! facts (classification, legal basis, purposes, schema) use the `allm:`
//! namespace (`urn:allmende:vocab:`), which DCAT-AP.de leaves open.
//!
//! IRIs: catalog `allmende://<federation>/catalog`, dataset
//! `allmende://<federation>/<owner>/dataset/<id>`, publisher
//! `allmende://<federation>/<owner>` (the organisation CA's identity URI).

use super::entry::{CatalogEntry, Licence};
use super::rdf::{Graph, Term};
use std::collections::BTreeMap;

/// The namespace of Allmende's own terms.
pub const ALLMENDE_NS: &str = "urn:allmende:vocab:";

const DCAT: &str = "http://www.w3.org/ns/dcat#";
const DCT: &str = "http://purl.org/dc/terms/";
const DCATDE: &str = "http://dcat-ap.de/def/dcatde/";
const FOAF: &str = "http://xmlns.com/foaf/0.1/";
const VCARD: &str = "http://www.w3.org/2006/vcard/ns#";
const SKOS: &str = "http://www.w3.org/2004/02/skos/core#";
const OWL: &str = "http://www.w3.org/2002/07/owl#";

/// The EU language vocabulary DCAT-AP.de prescribes for `dct:language`.
pub const LANGUAGE_SCHEME: &str = "http://publications.europa.eu/resource/authority/language";

/// ISO 639-1 codes an entry may state, with their concept in
/// [`LANGUAGE_SCHEME`]; other languages are left out of `dct:language`.
const LANGUAGES: &[(&str, &str)] = &[
    ("cs", "CES"),
    ("da", "DAN"),
    ("de", "DEU"),
    ("el", "ELL"),
    ("en", "ENG"),
    ("es", "SPA"),
    ("fr", "FRA"),
    ("it", "ITA"),
    ("nl", "NLD"),
    ("pl", "POL"),
    ("pt", "POR"),
    ("tr", "TUR"),
    ("uk", "UKR"),
];

fn ns(namespace: &str, local: &str) -> String {
    format!("{namespace}{local}")
}

fn rfc3339_ms(ms: i64) -> String {
    crate::timefmt::format_unix_ms(ms)
}

/// The dataset IRI.
pub fn dataset_iri(entry: &CatalogEntry, federation: &str) -> String {
    format!(
        "allmende://{federation}/{}/dataset/{}",
        entry.owner, entry.dataset.id
    )
}

/// An organisation's IRI (its CA's identity URI).
pub fn organisation_iri(federation: &str, org: &str) -> String {
    format!("allmende://{federation}/{org}")
}

/// The federated catalog's IRI.
pub fn catalog_iri(federation: &str) -> String {
    format!("allmende://{federation}/catalog")
}

/// The document formats of the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Turtle,
    JsonLd,
}

impl ExportFormat {
    /// The media type a harvester expects for the document.
    pub fn media_type(self) -> &'static str {
        match self {
            ExportFormat::Turtle => "text/turtle",
            ExportFormat::JsonLd => "application/ld+json",
        }
    }

    /// The name on the command line and in docs.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Turtle => "turtle",
            ExportFormat::JsonLd => "jsonld",
        }
    }
}

/// Who the exported catalog belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogInfo {
    pub federation: String,
    /// The catalog's publisher: the federation's city (organisation and
    /// display name from the signed membership).
    pub publisher: (String, String),
    /// Display names of the member organisations (signed membership).
    pub names: BTreeMap<String, String>,
}

impl CatalogInfo {
    /// Who publishes the exported catalog: the federation's city from the
    /// signed membership (else the exporting node's organisation `own_org`),
    /// and every member's display name.
    pub fn from_membership(
        doc: &crate::pki::membership::MembershipDoc,
        own_org: &str,
        federation: &str,
    ) -> Self {
        let names = doc
            .members
            .iter()
            .map(|m| (m.org.clone(), m.display_name.clone()))
            .collect();
        let publisher = doc
            .members
            .iter()
            .find(|m| m.kind == crate::pki::OrgKind::City)
            .map(|m| (m.org.clone(), m.display_name.clone()))
            .unwrap_or_else(|| (own_org.to_owned(), own_org.to_owned()));
        Self {
            federation: federation.to_owned(),
            publisher,
            names,
        }
    }
}

/// Adds a concept of a controlled vocabulary with its scheme and classes.
fn concept(g: &mut Graph, iri: &str, classes: &[&str], scheme: &str) -> Term {
    let c = Term::iri(iri);
    g.types(&c, classes);
    g.add(&c, &ns(SKOS, "inScheme"), Term::iri(scheme));
    c
}

fn language(g: &mut Graph, code: &str) -> Option<Term> {
    let (_, eu) = LANGUAGES.iter().find(|(iso, _)| *iso == code)?;
    Some(concept(
        g,
        &format!("{LANGUAGE_SCHEME}/{eu}"),
        &[&ns(DCT, "LinguisticSystem"), &ns(SKOS, "Concept")],
        LANGUAGE_SCHEME,
    ))
}

fn agent(g: &mut Graph, federation: &str, org: &str, name: &str) -> Term {
    let a = Term::iri(&organisation_iri(federation, org));
    g.types(&a, &[&ns(FOAF, "Agent"), &ns(FOAF, "Organization")]);
    g.add(&a, &ns(FOAF, "name"), Term::lit(name));
    a
}

/// A `dcat:Dataset` with its identifier, title, description (in `lang`)
/// and publisher.
fn dataset_head(
    g: &mut Graph,
    ds: &Term,
    [id, title, description]: [&str; 3],
    lang: &str,
    publisher: Term,
) {
    g.types(ds, &[&ns(DCAT, "Dataset")]);
    g.add(ds, &ns(DCT, "identifier"), Term::lit(id));
    g.add(ds, &ns(DCT, "title"), Term::text(title, lang));
    g.add(ds, &ns(DCT, "description"), Term::text(description, lang));
    g.add(ds, &ns(DCT, "publisher"), publisher);
}

/// The dataset's `dct:spatial` and `dct:temporal` coverage, if stated.
fn place_and_period(g: &mut Graph, ds: &Term, d: &super::entry::DatasetDescription, lang: &str) {
    if let Some(s) = &d.spatial {
        let place = match &s.iri {
            Some(i) => Term::iri(i),
            None => g.blank(),
        };
        g.types(&place, &[&ns(DCT, "Location")]);
        g.add(&place, &ns(SKOS, "prefLabel"), Term::text(&s.label, lang));
        g.add(ds, &ns(DCT, "spatial"), place);
    }
    if let Some(tm) = &d.temporal {
        let period = g.blank();
        g.types(&period, &[&ns(DCT, "PeriodOfTime")]);
        if let Some(s) = &tm.start {
            g.add(&period, &ns(DCAT, "startDate"), Term::xsd(s, "date"));
        }
        if let Some(e) = &tm.end {
            g.add(&period, &ns(DCAT, "endDate"), Term::xsd(e, "date"));
        }
        g.add(ds, &ns(DCT, "temporal"), period);
    }
}

/// Adds one entry (dataset, distribution, publisher, concepts) to `g`;
/// `publisher_name` names the owner organisation. Returns the dataset.
fn add_entry(g: &mut Graph, entry: &CatalogEntry, federation: &str, publisher_name: &str) -> Term {
    let d = &entry.dataset;
    let lang = d.language.as_str();
    let ds_iri = dataset_iri(entry, federation);
    let ds = Term::iri(&ds_iri);
    let dist = Term::iri(&format!("{ds_iri}#distribution"));
    let publisher = agent(g, federation, &entry.owner, publisher_name);

    dataset_head(g, &ds, [&d.id, &d.title, &d.description], lang, publisher);
    g.add(
        &ds,
        &ns(DCT, "modified"),
        Term::xsd(&rfc3339_ms(entry.updated_at_ms), "dateTime"),
    );
    g.add(&ds, &ns(DCAT, "distribution"), dist.clone());
    if let Some(l) = language(g, lang) {
        g.add(&ds, &ns(DCT, "language"), l);
    }
    let rights = concept(
        g,
        &d.access_rights.iri(),
        &[&ns(DCT, "RightsStatement"), &ns(SKOS, "Concept")],
        super::entry::AccessRights::SCHEME,
    );
    g.add(&ds, &ns(DCT, "accessRights"), rights);
    let frequency = concept(
        g,
        &d.update_frequency.iri(),
        &[&ns(DCT, "Frequency"), &ns(SKOS, "Concept")],
        super::entry::Frequency::SCHEME,
    );
    g.add(&ds, &ns(DCT, "accrualPeriodicity"), frequency);
    g.add(
        &ds,
        &ns(OWL, "versionInfo"),
        Term::lit(&entry.version.to_string()),
    );
    for k in &d.keywords {
        g.add(&ds, &ns(DCAT, "keyword"), Term::text(k, lang));
    }
    for th in &d.themes {
        let t = concept(
            g,
            &th.iri(),
            &[&ns(SKOS, "Concept")],
            super::entry::Theme::SCHEME,
        );
        g.add(&ds, &ns(DCAT, "theme"), t);
    }
    place_and_period(g, &ds, d, lang);
    if let Some(c) = &d.contact_point {
        let v = g.blank();
        g.types(&v, &[&ns(VCARD, "Organization")]);
        g.add(&v, &ns(VCARD, "fn"), Term::lit(&c.name));
        if let Some(e) = &c.email {
            g.add(
                &v,
                &ns(VCARD, "hasEmail"),
                Term::iri(&format!("mailto:{e}")),
            );
        }
        if let Some(u) = &c.url {
            g.add(&v, &ns(VCARD, "hasURL"), Term::iri(u));
        }
        g.add(&ds, &ns(DCAT, "contactPoint"), v);
    }
    // Allmende's facts.
    let allm = |local: &str| ns(ALLMENDE_NS, local);
    g.add(
        &ds,
        &allm("classification"),
        Term::lit(d.classification.as_str()),
    );
    g.add(&ds, &allm("legalBasis"), Term::lit(d.legal_basis.as_str()));
    g.add(
        &ds,
        &allm("containsPersonalData"),
        Term::boolean(d.contains_personal_data),
    );
    g.add(
        &ds,
        &allm("publicSpaceOrigin"),
        Term::boolean(d.public_space_origin),
    );
    g.add(
        &ds,
        &allm("anonymisationRequired"),
        Term::boolean(d.anonymisation_required),
    );
    for purpose in &d.allowed_purposes {
        g.add(&ds, &allm("allowedPurpose"), Term::lit(purpose.as_str()));
    }
    g.add(&ds, &allm("ownerNode"), Term::lit(&entry.owner_node));
    for f in &d.schema.fields {
        let role = if d.schema.subject_column.as_ref() == Some(&f.name) {
            "subject"
        } else if d.schema.identifier_columns.contains(&f.name) {
            "identifier"
        } else {
            "value"
        };
        let field = g.blank();
        g.add(&field, &allm("name"), Term::lit(&f.name));
        g.add(&field, &allm("type"), Term::lit(f.field_type.name()));
        g.add(&field, &allm("nullable"), Term::boolean(f.nullable));
        g.add(&field, &allm("role"), Term::lit(role));
        g.add(&ds, &allm("field"), field);
    }

    // The distribution.
    g.types(&dist, &[&ns(DCAT, "Distribution")]);
    g.add(
        &dist,
        &ns(DCT, "title"),
        Term::text(&format!("{} (Allmende)", d.title), lang),
    );
    g.add(
        &dist,
        &ns(DCAT, "accessURL"),
        Term::iri(&entry.access_url(federation)),
    );
    if let Some(l) = Licence::find(&d.licence) {
        let licence = concept(
            g,
            &l.iri(),
            &[&ns(DCT, "LicenseDocument"), &ns(SKOS, "Concept")],
            super::entry::LICENCE_SCHEME,
        );
        g.add(&licence, &ns(SKOS, "prefLabel"), Term::text(l.title, "de"));
        g.add(&dist, &ns(DCT, "license"), licence);
        if l.attribution {
            g.add(
                &dist,
                &ns(DCATDE, "licenseAttributionByText"),
                Term::lit(publisher_name),
            );
        }
    }
    ds
}

/// One entry as a DCAT-AP.de graph.
pub fn entry_graph(entry: &CatalogEntry, federation: &str) -> Graph {
    let mut g = Graph::new();
    add_entry(&mut g, entry, federation, &entry.publisher_name);
    g
}

/// The entry as a DCAT-AP.de Turtle document.
pub fn to_turtle(entry: &CatalogEntry, federation: &str) -> String {
    entry_graph(entry, federation).to_turtle()
}

/// The whole catalog (`entries`: own and replicated) as one DCAT-AP.de
/// graph: a `dcat:Catalog` listing every dataset.
pub fn catalog_graph(entries: &[CatalogEntry], info: &CatalogInfo) -> Graph {
    let fed = info.federation.as_str();
    let mut g = Graph::new();
    let cat = Term::iri(&catalog_iri(fed));
    let (city, city_name) = &info.publisher;
    g.types(&cat, &[&ns(DCAT, "Catalog")]);
    g.add(
        &cat,
        &ns(DCT, "title"),
        Term::text(
            &format!("Allmende: föderierter Datenkatalog – {city_name}"),
            "de",
        ),
    );
    g.add(
        &cat,
        &ns(DCT, "title"),
        Term::text(
            &format!("Allmende: federated data catalog – {city_name}"),
            "en",
        ),
    );
    g.add(
        &cat,
        &ns(DCT, "description"),
        Term::text(
            &format!(
                "Metadaten aller Datensätze der Allmende-Föderation „{fed}“: die Einträge jeder \
                 Mitgliedsorganisation, von ihrem Knoten signiert. Die Daten bleiben bei der \
                 Organisation, die sie hält; jeder Zugriff wird dort entschieden und protokolliert."
            ),
            "de",
        ),
    );
    g.add(
        &cat,
        &ns(DCT, "description"),
        Term::text(
            &format!(
                "Metadata of every dataset of the Allmende federation `{fed}`: each member \
                 organisation's entries, signed by its node. The data stays with the organisation \
                 that holds it; every access is decided and audited there."
            ),
            "en",
        ),
    );
    let publisher = agent(&mut g, fed, city, city_name);
    g.add(&cat, &ns(DCT, "publisher"), publisher);
    if let Some(de) = language(&mut g, "de") {
        g.add(&cat, &ns(DCT, "language"), de);
    }
    let themes = Term::iri(super::entry::Theme::SCHEME);
    g.types(&themes, &[&ns(SKOS, "ConceptScheme")]);
    g.add(&cat, &ns(DCAT, "themeTaxonomy"), themes);
    if let Some(latest) = entries.iter().map(|e| e.updated_at_ms).max() {
        g.add(
            &cat,
            &ns(DCT, "modified"),
            Term::xsd(&rfc3339_ms(latest), "dateTime"),
        );
    }
    for e in entries {
        let name = info
            .names
            .get(&e.owner)
            .map_or(e.publisher_name.as_str(), String::as_str);
        let ds = add_entry(&mut g, e, fed, name);
        g.add(&cat, &ns(DCAT, "dataset"), ds);
    }
    g
}

/// The whole catalog as one DCAT-AP.de document.
pub fn export(entries: &[CatalogEntry], info: &CatalogInfo, format: ExportFormat) -> String {
    let g = catalog_graph(entries, info);
    match format {
        ExportFormat::Turtle => g.to_turtle(),
        ExportFormat::JsonLd => g.to_json_ld(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use crate::catalog::entry::tests::smart_meter;

    #[test]
    fn export_names_the_mandatory_properties() {
        let mut d = smart_meter();
        d.title = "Titel mit \"Zitat\"".into();
        let e = CatalogEntry {
            owner: "swm".into(),
            owner_node: "swm-1".into(),
            publisher_name: "Stadtwerke München".into(),
            version: 4,
            updated_at_ms: 1_741_000_000_000,
            dataset: d,
        };
        let t = to_turtle(&e, "munich");
        for needle in [
            "<allmende://munich/swm/dataset/smart-meter-readings>\n    a dcat:Dataset",
            r#"dct:title "Titel mit \"Zitat\""@de"#,
            "dct:publisher <allmende://munich/swm>",
            "foaf:name \"Stadtwerke München\"",
            "dcat:accessURL <allmende://munich/swm/node/swm-1>",
            "dct:license <http://dcat-ap.de/def/licenses/other-closed>",
            "dct:modified \"2025-03-03T11:06:40Z\"^^xsd:dateTime",
            "allm:role \"subject\"",
            "@prefix owl:",
        ] {
            assert!(t.contains(needle), "missing `{needle}` in\n{t}");
        }
    }

    #[test]
    fn a_release_is_derived_from_its_dataset_with_download_urls_and_checksums() {
        let e = CatalogEntry {
            owner: "swm".into(),
            owner_node: "swm-1".into(),
            publisher_name: "Stadtwerke München".into(),
            version: 4,
            updated_at_ms: 1_741_000_000_000,
            dataset: smart_meter(),
        };
        let file = |name: &str, media: &str| ReleaseFileDescription {
            name: name.into(),
            media_type: media.into(),
            bytes: 42,
            sha256: "ab".repeat(32),
        };
        let mut r = ReleaseDescription {
            id: "r-1".into(),
            title: "Anonymisiert".into(),
            description: "je Tag".into(),
            issued: "2025-03-03T00:00:00Z".into(),
            files: vec![
                file("data.csv", "text/csv"),
                file("data.parquet", "application/vnd.apache.parquet"),
            ],
            download_base: Some("https://open.example/download/release/r-1/".into()),
        };
        let t = release_graph(&e, "munich", &r).to_turtle();
        for needle in [
            "<allmende://munich/swm/release/r-1>\n    a dcat:Dataset",
            "<http://www.w3.org/ns/prov#wasDerivedFrom> <allmende://munich/swm/dataset/smart-meter-readings>",
            "dcat:downloadURL <https://open.example/download/release/r-1/data.csv>",
            "dcat:downloadURL <https://open.example/download/release/r-1/data.parquet>",
            "dcat:mediaType <https://www.iana.org/assignments/media-types/text/csv>",
            "dcat:byteSize \"42\"^^xsd:nonNegativeInteger",
            "<http://spdx.org/rdf/terms#checksumValue> \"abab",
            "dct:accessRights <http://publications.europa.eu/resource/authority/access-right/PUBLIC>",
            "dct:publisher <allmende://munich/swm>",
        ] {
            assert!(t.contains(needle), "missing `{needle}` in\n{t}");
        }
        assert_eq!(t.matches("a dcat:Distribution").count(), 2, "{t}");
        // Without a public URL there is no download URL to state.
        r.download_base = None;
        let t = release_graph(&e, "munich", &r).to_turtle();
        assert!(!t.contains("downloadURL"), "{t}");
        assert!(
            t.contains("dcat:accessURL <allmende://munich/swm/release/r-1/data.csv>"),
            "{t}"
        );
    }

    fn info() -> CatalogInfo {
        CatalogInfo {
            federation: "munich".into(),
            publisher: ("stadt".into(), "Landeshauptstadt München".into()),
            names: [("swm".to_owned(), "Stadtwerke München GmbH".to_owned())].into(),
        }
    }

    #[test]
    fn the_catalog_lists_every_dataset_and_each_publisher_once() {
        let mut a = smart_meter();
        a.id = "a".into();
        let mut b = smart_meter();
        b.id = "b".into();
        let entries: Vec<CatalogEntry> = [a, b]
            .into_iter()
            .enumerate()
            .map(|(i, d)| CatalogEntry {
                owner: "swm".into(),
                owner_node: "swm-1".into(),
                // A stale name in an older entry: the membership's wins.
                publisher_name: format!("SWM {i}"),
                version: 1,
                updated_at_ms: 1_741_000_000_000 + i as i64 * 1000,
                dataset: d,
            })
            .collect();
        let t = export(&entries, &info(), ExportFormat::Turtle);
        assert!(
            t.contains("<allmende://munich/catalog>\n    a dcat:Catalog ;"),
            "{t}"
        );
        assert!(
            t.contains(
                "dcat:dataset <allmende://munich/swm/dataset/a>, <allmende://munich/swm/dataset/b>"
            ),
            "{t}"
        );
        assert_eq!(
            t.matches("foaf:name \"Stadtwerke München GmbH\"").count(),
            1,
            "{t}"
        );
        assert!(!t.contains("SWM 0"), "{t}");
        assert!(t.contains("foaf:name \"Landeshauptstadt München\""), "{t}");
        // The catalog's modification time is its newest entry's.
        assert!(
            t.contains("dct:modified \"2025-03-03T11:06:41Z\"^^xsd:dateTime"),
            "{t}"
        );
        assert_eq!(t, export(&entries, &info(), ExportFormat::Turtle));
        let j: serde_json::Value =
            serde_json::from_str(&export(&entries, &info(), ExportFormat::JsonLd)).unwrap();
        assert_eq!(j["@graph"][0]["@id"], "allmende://munich/catalog");
        assert_eq!(j["@graph"][0]["dcat:dataset"].as_array().unwrap().len(), 2);
        // An empty catalog is still a catalog.
        let empty = export(&[], &info(), ExportFormat::Turtle);
        assert!(empty.contains("a dcat:Catalog"), "{empty}");
        assert!(!empty.contains("dcat:dataset"), "{empty}");
    }
}

const PROV: &str = "http://www.w3.org/ns/prov#";
const SPDX: &str = "http://spdx.org/rdf/terms#";
const IANA_MEDIA_TYPES: &str = "https://www.iana.org/assignments/media-types/";

/// One file of an open-data release, described as a `dcat:Distribution`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseFileDescription {
    pub name: String,
    pub media_type: String,
    pub bytes: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// An anonymised open-data release of a catalog entry's dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDescription {
    pub id: String,
    pub title: String,
    pub description: String,
    /// When it was published, RFC 3339 UTC (`dct:issued`).
    pub issued: String,
    /// The data files (`dcat:Distribution`s).
    pub files: Vec<ReleaseFileDescription>,
    /// `<public_url>/download/release/<id>` when the node's open-data API is public:
    /// each file's `dcat:downloadURL` is `<base>/<file>`.
    pub download_base: Option<String>,
}

/// A release's IRI.
pub fn release_iri(federation: &str, owner: &str, id: &str) -> String {
    format!("allmende://{federation}/{owner}/release/{id}")
}

/// The DCAT-AP.de graph of `release`: a `dcat:Dataset` derived from
/// `source`'s dataset (`prov:wasDerivedFrom` its catalog IRI), published by
/// the owner with the source's licence, themes, spatial and temporal
/// coverage, public access rights, and one `dcat:Distribution` per file with
/// media type, byte size, `spdx:checksum` and, with a public URL, its
/// `dcat:downloadURL`.
pub fn release_graph(
    source: &CatalogEntry,
    federation: &str,
    release: &ReleaseDescription,
) -> Graph {
    let mut g = Graph::new();
    let d = &source.dataset;
    let lang = d.language.as_str();
    let iri = release_iri(federation, &source.owner, &release.id);
    let ds = Term::iri(&iri);
    let publisher = agent(&mut g, federation, &source.owner, &source.publisher_name);
    dataset_head(
        &mut g,
        &ds,
        [&release.id, &release.title, &release.description],
        lang,
        publisher,
    );
    g.add(
        &ds,
        &ns(DCT, "issued"),
        Term::xsd(&release.issued, "dateTime"),
    );
    g.add(
        &ds,
        &ns(PROV, "wasDerivedFrom"),
        Term::iri(&dataset_iri(source, federation)),
    );
    if let Some(l) = language(&mut g, lang) {
        g.add(&ds, &ns(DCT, "language"), l);
    }
    let rights = concept(
        &mut g,
        &super::entry::AccessRights::Public.iri(),
        &[&ns(DCT, "RightsStatement"), &ns(SKOS, "Concept")],
        super::entry::AccessRights::SCHEME,
    );
    g.add(&ds, &ns(DCT, "accessRights"), rights);
    for th in &d.themes {
        let t = concept(
            &mut g,
            &th.iri(),
            &[&ns(SKOS, "Concept")],
            super::entry::Theme::SCHEME,
        );
        g.add(&ds, &ns(DCAT, "theme"), t);
    }
    for k in &d.keywords {
        g.add(&ds, &ns(DCAT, "keyword"), Term::text(k, lang));
    }
    place_and_period(&mut g, &ds, d, lang);
    let licence = Licence::find(&d.licence).map(|l| {
        let t = concept(
            &mut g,
            &l.iri(),
            &[&ns(DCT, "LicenseDocument"), &ns(SKOS, "Concept")],
            super::entry::LICENCE_SCHEME,
        );
        g.add(&t, &ns(SKOS, "prefLabel"), Term::text(l.title, "de"));
        (t, l.attribution)
    });
    for f in &release.files {
        let dist = Term::iri(&format!("{iri}/{}", f.name));
        g.add(&ds, &ns(DCAT, "distribution"), dist.clone());
        g.types(&dist, &[&ns(DCAT, "Distribution")]);
        g.add(&dist, &ns(DCT, "title"), Term::text(&f.name, lang));
        let media = Term::iri(&format!("{IANA_MEDIA_TYPES}{}", f.media_type));
        g.types(&media, &[&ns(DCT, "MediaType")]);
        g.add(&dist, &ns(DCAT, "mediaType"), media);
        g.add(
            &dist,
            &ns(DCAT, "byteSize"),
            Term::xsd(&f.bytes.to_string(), "nonNegativeInteger"),
        );
        let sum = g.blank();
        g.types(&sum, &[&ns(SPDX, "Checksum")]);
        g.add(
            &sum,
            &ns(SPDX, "algorithm"),
            Term::iri(&ns(SPDX, "checksumAlgorithm_sha256")),
        );
        g.add(
            &sum,
            &ns(SPDX, "checksumValue"),
            Term::xsd(&f.sha256, "hexBinary"),
        );
        g.add(&dist, &ns(SPDX, "checksum"), sum);
        match &release.download_base {
            Some(base) => {
                let url = Term::iri(&format!("{}/{}", base.trim_end_matches('/'), f.name));
                g.add(&dist, &ns(DCAT, "accessURL"), url.clone());
                g.add(&dist, &ns(DCAT, "downloadURL"), url);
            }
            None => g.add(&dist, &ns(DCAT, "accessURL"), dist.clone()),
        }
        if let Some((l, attribution)) = &licence {
            g.add(&dist, &ns(DCT, "license"), l.clone());
            if *attribution {
                g.add(
                    &dist,
                    &ns(DCATDE, "licenseAttributionByText"),
                    Term::lit(&source.publisher_name),
                );
            }
        }
    }
    g
}
