//! DCAT-AP.de 2.0 export of a catalog entry, as Turtle.
//!
//! The dataset is a `dcat:Dataset` with one `dcat:Distribution` (the owner
//! node's `Access.Fetch`, or the stated access URL) carrying the licence.
//! Controlled vocabularies are the ones DCAT-AP.de names: EU data themes,
//! access rights and frequencies, and the dcat-ap.de licence list. For every
//! concept it uses, the export states the concept's scheme
//! (`skos:inScheme`), so that a validator without the EU authority tables
//! can still check vocabulary membership. Allmende's own facts
//! (classification, legal basis, purposes, schema) use the `allm:`
//! namespace (`urn:allmende:vocab:`), which DCAT-AP.de leaves open.
//!
//! IRIs: dataset `allmende://<federation>/<owner>/dataset/<id>`, publisher
//! `allmende://<federation>/<owner>` (the organisation CA's identity URI).

use super::entry::{CatalogEntry, Licence};
use std::fmt::Write as _;

/// The namespace of Allmende's own terms.
pub const ALLMENDE_NS: &str = "urn:allmende:vocab:";

const PREFIXES: &str = "@prefix dcat: <http://www.w3.org/ns/dcat#> .
@prefix dct: <http://purl.org/dc/terms/> .
@prefix dcatde: <http://dcat-ap.de/def/dcatde/> .
@prefix foaf: <http://xmlns.com/foaf/0.1/> .
@prefix vcard: <http://www.w3.org/2006/vcard/ns#> .
@prefix skos: <http://www.w3.org/2004/02/skos/core#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
@prefix allm: <urn:allmende:vocab:> .
";

/// A Turtle string literal (with escapes).
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A language-tagged literal.
fn text(s: &str, lang: &str) -> String {
    format!("{}@{lang}", lit(s))
}

/// An IRI reference. Entries are validated, so IRIs hold no character that
/// needs escaping; anything unexpected is percent-encoded all the same.
fn iri(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('<');
    for c in s.chars() {
        if c.is_whitespace()
            || c.is_control()
            || matches!(c, '<' | '>' | '"' | '{' | '}' | '|' | '^' | '`' | '\\')
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out.push('>');
    out
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

/// The entry as a DCAT-AP.de Turtle document.
pub fn to_turtle(entry: &CatalogEntry, federation: &str) -> String {
    let d = &entry.dataset;
    let lang = d.language.as_str();
    let ds = dataset_iri(entry, federation);
    let dist = format!("{ds}#distribution");
    let publisher = format!("allmende://{federation}/{}", entry.owner);
    let mut t = String::from(PREFIXES);
    t.push('\n');

    // The dataset.
    let mut p: Vec<String> = vec![
        "a dcat:Dataset".into(),
        format!("dct:identifier {}", lit(&d.id)),
        format!("dct:title {}", text(&d.title, lang)),
        format!("dct:description {}", text(&d.description, lang)),
        format!("dct:publisher {}", iri(&publisher)),
        format!(
            "dct:modified {}^^xsd:dateTime",
            lit(&rfc3339_ms(entry.updated_at_ms))
        ),
        format!("dcat:distribution {}", iri(&dist)),
        format!("dct:accessRights {}", iri(&d.access_rights.iri())),
        format!("dct:accrualPeriodicity {}", iri(&d.update_frequency.iri())),
        format!("owl:versionInfo {}", lit(&entry.version.to_string())),
    ];
    for k in &d.keywords {
        p.push(format!("dcat:keyword {}", text(k, lang)));
    }
    for th in &d.themes {
        p.push(format!("dcat:theme {}", iri(&th.iri())));
    }
    if let Some(s) = &d.spatial {
        match &s.iri {
            Some(i) => p.push(format!("dct:spatial {}", iri(i))),
            None => p.push(format!(
                "dct:spatial [ a dct:Location ; skos:prefLabel {} ]",
                text(&s.label, lang)
            )),
        }
    }
    if let Some(tm) = &d.temporal {
        let mut period = vec!["a dct:PeriodOfTime".to_owned()];
        if let Some(s) = &tm.start {
            period.push(format!("dcat:startDate {}^^xsd:date", lit(s)));
        }
        if let Some(e) = &tm.end {
            period.push(format!("dcat:endDate {}^^xsd:date", lit(e)));
        }
        p.push(format!("dct:temporal [ {} ]", period.join(" ; ")));
    }
    if let Some(c) = &d.contact_point {
        let mut v = vec![
            "a vcard:Organization".to_owned(),
            format!("vcard:fn {}", lit(&c.name)),
        ];
        if let Some(e) = &c.email {
            v.push(format!("vcard:hasEmail {}", iri(&format!("mailto:{e}"))));
        }
        if let Some(u) = &c.url {
            v.push(format!("vcard:hasURL {}", iri(u)));
        }
        p.push(format!("dcat:contactPoint [ {} ]", v.join(" ; ")));
    }
    // Allmende's facts.
    p.push(format!(
        "allm:classification {}",
        lit(d.classification.as_str())
    ));
    p.push(format!("allm:legalBasis {}", lit(d.legal_basis.as_str())));
    p.push(format!(
        "allm:containsPersonalData {}",
        d.contains_personal_data
    ));
    p.push(format!("allm:publicSpaceOrigin {}", d.public_space_origin));
    p.push(format!(
        "allm:anonymisationRequired {}",
        d.anonymisation_required
    ));
    for purpose in &d.allowed_purposes {
        p.push(format!("allm:allowedPurpose {}", lit(purpose.as_str())));
    }
    p.push(format!("allm:ownerNode {}", lit(&entry.owner_node)));
    for f in &d.schema.fields {
        let role = if d.schema.subject_column.as_ref() == Some(&f.name) {
            "subject"
        } else if d.schema.identifier_columns.contains(&f.name) {
            "identifier"
        } else {
            "value"
        };
        p.push(format!(
            "allm:field [ allm:name {} ; allm:type {} ; allm:nullable {} ; allm:role {} ]",
            lit(&f.name),
            lit(f.field_type.name()),
            f.nullable,
            lit(role)
        ));
    }
    let _ = writeln!(t, "{}\n    {} .\n", iri(&ds), p.join(" ;\n    "));

    // The publisher.
    let _ = writeln!(
        t,
        "{} a foaf:Organization, foaf:Agent ;\n    foaf:name {} .\n",
        iri(&publisher),
        lit(&entry.publisher_name)
    );

    // The distribution.
    let mut dp = vec![
        "a dcat:Distribution".to_owned(),
        format!(
            "dct:title {}",
            text(&format!("{} (Allmende)", d.title), lang)
        ),
        format!("dcat:accessURL {}", iri(&entry.access_url(federation))),
    ];
    if let Some(l) = Licence::find(&d.licence) {
        dp.push(format!("dct:license {}", iri(&l.iri())));
        if l.attribution {
            dp.push(format!(
                "dcatde:licenseAttributionByText {}",
                lit(&entry.publisher_name)
            ));
        }
        let _ = writeln!(
            t,
            "{} a dct:LicenseDocument, skos:Concept ;\n    skos:prefLabel {} ;\n    skos:inScheme {} .\n",
            iri(&l.iri()),
            text(l.title, "de"),
            iri(super::entry::LICENCE_SCHEME)
        );
    }
    let _ = writeln!(t, "{}\n    {} .\n", iri(&dist), dp.join(" ;\n    "));

    // Concepts of the controlled vocabularies used above.
    for th in &d.themes {
        let _ = writeln!(
            t,
            "{} a skos:Concept ;\n    skos:inScheme {} .\n",
            iri(&th.iri()),
            iri(super::entry::Theme::SCHEME)
        );
    }
    let _ = writeln!(
        t,
        "{} a dct:RightsStatement, skos:Concept ;\n    skos:inScheme {} .\n",
        iri(&d.access_rights.iri()),
        iri(super::entry::AccessRights::SCHEME)
    );
    let _ = writeln!(
        t,
        "{} a dct:Frequency, skos:Concept ;\n    skos:inScheme {} .\n",
        iri(&d.update_frequency.iri()),
        iri(super::entry::Frequency::SCHEME)
    );
    if let Some(s) = &d.spatial
        && let Some(i) = &s.iri
    {
        let _ = writeln!(
            t,
            "{} a dct:Location ;\n    skos:prefLabel {} .\n",
            iri(i),
            text(&s.label, lang)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use crate::catalog::entry::tests::smart_meter;

    #[test]
    fn literals_and_iris_are_escaped() {
        assert_eq!(lit("a \"b\"\n\\"), r#""a \"b\"\n\\""#);
        assert_eq!(iri("http://x/a b>"), "<http://x/a%20b%3E>");
    }

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
}
