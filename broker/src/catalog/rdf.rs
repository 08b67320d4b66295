//! A small RDF graph model and its two serialisations, Turtle and JSON-LD,
//! for the DCAT-AP.de export (`catalog::dcat`).
//!
//! The export builds one [`Graph`] and writes it in either form, so the two
//! documents cannot disagree. Both are deterministic: triples are kept
//! sorted, blank nodes are labelled in the order the builder made them.
//! Every term is made safe where it is constructed: IRIs are
//! percent-encoded where Turtle forbids a character in an IRI reference,
//! language tags that are not well formed are dropped (the literal stays a
//! plain string), and literals are escaped by each serialiser (Turtle:
//! quotes, backslashes, line breaks and control characters; JSON: by
//! `serde_json`). The JSON-LD carries its `@context` inline, so nothing
//! needs to be fetched to read it; a prefix is left out of the context when
//! an IRI of the document uses the prefix's name as its scheme (a JSON-LD
//! processor would otherwise expand that IRI as a compact IRI).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// `rdf:type`.
pub const RDF_TYPE: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type";
/// The XML Schema namespace (datatypes).
pub const XSD: &str = "http://www.w3.org/2001/XMLSchema#";

/// Prefixes both serialisations use, sorted by name.
pub const PREFIXES: [(&str, &str); 10] = [
    ("allm", "urn:allmende:vocab:"),
    ("dcat", "http://www.w3.org/ns/dcat#"),
    ("dcatde", "http://dcat-ap.de/def/dcatde/"),
    ("dct", "http://purl.org/dc/terms/"),
    ("foaf", "http://xmlns.com/foaf/0.1/"),
    ("owl", "http://www.w3.org/2002/07/owl#"),
    ("rdf", "http://www.w3.org/1999/02/22-rdf-syntax-ns#"),
    ("skos", "http://www.w3.org/2004/02/skos/core#"),
    ("vcard", "http://www.w3.org/2006/vcard/ns#"),
    ("xsd", XSD),
];

/// What a literal is besides its lexical form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum LiteralKind {
    /// `xsd:string`.
    Plain,
    /// A language-tagged string (`rdf:langString`), tag well formed.
    Lang(String),
    /// A typed literal: the datatype IRI.
    Typed(String),
}

/// An RDF term.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Term {
    /// An absolute IRI, already safe to write (see [`Term::iri`]).
    Iri(String),
    /// A blank node label (`[A-Za-z0-9]+`).
    Blank(String),
    Literal {
        lexical: String,
        kind: LiteralKind,
    },
}

/// True for characters an IRI reference in Turtle may not hold (and which
/// no IRI should).
fn iri_forbidden(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, '<' | '>' | '"' | '{' | '}' | '|' | '^' | '`' | '\\')
}

/// True for a well-formed language tag (`[a-zA-Z]{1,8}(-[a-zA-Z0-9]{1,8})*`).
fn valid_lang(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let first_ok = parts
        .next()
        .is_some_and(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    first_ok
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl Term {
    /// An IRI; characters Turtle forbids in an IRI reference are
    /// percent-encoded (callers pass validated IRIs, so this is the second
    /// line of defence).
    pub fn iri(s: &str) -> Term {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if iri_forbidden(c) {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            } else {
                out.push(c);
            }
        }
        Term::Iri(out)
    }

    /// A plain string literal.
    pub fn lit(s: &str) -> Term {
        Term::Literal {
            lexical: s.to_owned(),
            kind: LiteralKind::Plain,
        }
    }

    /// A language-tagged literal; a malformed tag leaves a plain literal.
    pub fn text(s: &str, lang: &str) -> Term {
        let kind = if valid_lang(lang) {
            LiteralKind::Lang(lang.to_ascii_lowercase())
        } else {
            LiteralKind::Plain
        };
        Term::Literal {
            lexical: s.to_owned(),
            kind,
        }
    }

    /// A literal of an XML Schema datatype (`date`, `dateTime`, `boolean`).
    pub fn xsd(s: &str, datatype: &str) -> Term {
        Term::Literal {
            lexical: s.to_owned(),
            kind: LiteralKind::Typed(format!("{XSD}{datatype}")),
        }
    }

    /// An `xsd:boolean`.
    pub fn boolean(b: bool) -> Term {
        Term::xsd(if b { "true" } else { "false" }, "boolean")
    }
}

/// A subject's predicates, each with its objects.
type Properties<'a> = Vec<(&'a str, Vec<&'a Term>)>;

/// A set of triples; subjects are IRIs or blank nodes, predicates IRIs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Graph {
    triples: BTreeSet<(Term, String, Term)>,
    blanks: u32,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh blank node.
    pub fn blank(&mut self) -> Term {
        let t = Term::Blank(format!("b{}", self.blanks));
        self.blanks += 1;
        t
    }

    /// Adds a triple (a repeated one is kept once).
    pub fn add(&mut self, s: &Term, p: &str, o: Term) {
        self.triples.insert((s.clone(), p.to_owned(), o));
    }

    /// Adds `s rdf:type class` for each class.
    pub fn types(&mut self, s: &Term, classes: &[&str]) {
        for c in classes {
            self.add(s, RDF_TYPE, Term::Iri((*c).to_owned()));
        }
    }

    pub fn len(&self) -> usize {
        self.triples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.triples.is_empty()
    }

    /// Subjects with their predicates and objects, `rdf:type` first, the
    /// rest sorted.
    fn by_subject(&self) -> Vec<(&Term, Properties<'_>)> {
        let mut subjects: BTreeMap<&Term, BTreeMap<(bool, &str), Vec<&Term>>> = BTreeMap::new();
        for (s, p, o) in &self.triples {
            subjects
                .entry(s)
                .or_default()
                .entry((p != RDF_TYPE, p.as_str()))
                .or_default()
                .push(o);
        }
        subjects
            .into_iter()
            .map(|(s, ps)| (s, ps.into_iter().map(|((_, p), os)| (p, os)).collect()))
            .collect()
    }

    /// The graph as Turtle.
    pub fn to_turtle(&self) -> String {
        let mut t = String::new();
        for (name, ns) in PREFIXES {
            let _ = writeln!(t, "@prefix {name}: <{ns}> .");
        }
        for (s, ps) in self.by_subject() {
            t.push('\n');
            t.push_str(&turtle_term(s));
            let n = ps.len();
            for (i, (p, os)) in ps.into_iter().enumerate() {
                let pred = if p == RDF_TYPE {
                    "a".to_owned()
                } else {
                    turtle_iri(p)
                };
                let objects: Vec<String> = os.into_iter().map(turtle_term).collect();
                let end = if i + 1 == n { " ." } else { " ;" };
                let _ = write!(t, "\n    {pred} {}{end}", objects.join(", "));
            }
            t.push('\n');
        }
        t
    }

    /// The graph as JSON-LD (one `@graph` of node objects, the `@context`
    /// inline).
    pub fn to_json_ld(&self) -> String {
        // Prefix names that are some IRI's scheme cannot be in the context.
        let mut schemes = BTreeSet::new();
        for (s, p, o) in &self.triples {
            for iri in [Some(p.as_str()), iri_of(s), iri_of(o), datatype_of(o)]
                .into_iter()
                .flatten()
            {
                if let Some((scheme, rest)) = iri.split_once(':')
                    && !rest.starts_with("//")
                {
                    schemes.insert(scheme.to_owned());
                }
            }
        }
        let prefixes: Vec<(&str, &str)> = PREFIXES
            .iter()
            .filter(|(name, _)| !schemes.contains(*name))
            .copied()
            .collect();
        let compact = |iri: &str| compact_iri(iri, &prefixes).unwrap_or_else(|| iri.to_owned());
        let mut context = serde_json::Map::new();
        for (name, ns) in &prefixes {
            context.insert((*name).to_owned(), serde_json::Value::from(*ns));
        }
        let mut nodes = Vec::new();
        for (s, ps) in self.by_subject() {
            let mut node = serde_json::Map::new();
            node.insert("@id".into(), serde_json::Value::from(json_id(s)));
            for (p, os) in ps {
                if p == RDF_TYPE && os.iter().all(|o| matches!(o, Term::Iri(_))) {
                    let types: Vec<serde_json::Value> = os
                        .iter()
                        .filter_map(|o| iri_of(o))
                        .map(|i| serde_json::Value::from(compact(i)))
                        .collect();
                    node.insert("@type".into(), serde_json::Value::Array(types));
                    continue;
                }
                let values: Vec<serde_json::Value> =
                    os.into_iter().map(|o| json_value(o, &compact)).collect();
                node.insert(compact(p), serde_json::Value::Array(values));
            }
            nodes.push(serde_json::Value::Object(node));
        }
        let mut doc = serde_json::Map::new();
        doc.insert("@context".into(), serde_json::Value::Object(context));
        doc.insert("@graph".into(), serde_json::Value::Array(nodes));
        let mut out = serde_json::to_string_pretty(&serde_json::Value::Object(doc))
            .unwrap_or_else(|_| String::from("{}"));
        out.push('\n');
        out
    }
}

fn iri_of(t: &Term) -> Option<&str> {
    match t {
        Term::Iri(i) => Some(i),
        _ => None,
    }
}

fn datatype_of(t: &Term) -> Option<&str> {
    match t {
        Term::Literal {
            kind: LiteralKind::Typed(d),
            ..
        } => Some(d),
        _ => None,
    }
}

/// `prefix:local` when the IRI lies in a namespace and its local part needs
/// no escaping in either syntax.
fn compact_iri(iri: &str, prefixes: &[(&str, &str)]) -> Option<String> {
    prefixes.iter().find_map(|(name, ns)| {
        let local = iri.strip_prefix(ns)?;
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-');
        (local.starts_with(|c: char| c.is_ascii_alphabetic()) && local.chars().all(name_char))
            .then(|| format!("{name}:{local}"))
    })
}

fn turtle_iri(iri: &str) -> String {
    compact_iri(iri, &PREFIXES).unwrap_or_else(|| format!("<{iri}>"))
}

/// A Turtle string (`"…"` with escapes).
fn turtle_string(s: &str) -> String {
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

fn turtle_term(t: &Term) -> String {
    match t {
        Term::Iri(i) => turtle_iri(i),
        Term::Blank(b) => format!("_:{b}"),
        Term::Literal { lexical, kind } => match kind {
            LiteralKind::Plain => turtle_string(lexical),
            LiteralKind::Lang(l) => format!("{}@{l}", turtle_string(lexical)),
            LiteralKind::Typed(d) => {
                if d.strip_prefix(XSD) == Some("boolean")
                    && matches!(lexical.as_str(), "true" | "false")
                {
                    lexical.clone()
                } else {
                    format!("{}^^{}", turtle_string(lexical), turtle_iri(d))
                }
            }
        },
    }
}

fn json_id(t: &Term) -> String {
    match t {
        Term::Iri(i) => i.clone(),
        Term::Blank(b) => format!("_:{b}"),
        Term::Literal { lexical, .. } => lexical.clone(),
    }
}

fn json_value(t: &Term, compact: &impl Fn(&str) -> String) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    match t {
        Term::Iri(_) | Term::Blank(_) => {
            v.insert("@id".into(), serde_json::Value::from(json_id(t)));
        }
        Term::Literal { lexical, kind } => {
            v.insert("@value".into(), serde_json::Value::from(lexical.as_str()));
            match kind {
                LiteralKind::Plain => {}
                LiteralKind::Lang(l) => {
                    v.insert("@language".into(), serde_json::Value::from(l.as_str()));
                }
                LiteralKind::Typed(d) => {
                    v.insert("@type".into(), serde_json::Value::from(compact(d)));
                }
            }
        }
    }
    serde_json::Value::Object(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    fn sample() -> Graph {
        let mut g = Graph::new();
        let ds = Term::iri("allmende://munich/swm/dataset/x");
        g.types(&ds, &["http://www.w3.org/ns/dcat#Dataset"]);
        g.add(
            &ds,
            "http://purl.org/dc/terms/title",
            Term::text("Titel \"\"\" mit > und \\ und\nZeile, München", "de"),
        );
        g.add(&ds, "urn:allmende:vocab:flag", Term::boolean(true));
        let b = g.blank();
        g.add(&ds, "http://purl.org/dc/terms/temporal", b.clone());
        g.add(
            &b,
            "http://www.w3.org/ns/dcat#startDate",
            Term::xsd("2024-01-01", "date"),
        );
        g
    }

    #[test]
    fn turtle_escapes_literals_and_iris() {
        assert_eq!(turtle_string("a \"b\"\n\\"), r#""a \"b\"\n\\""#);
        assert_eq!(
            Term::iri("http://x/a b>"),
            Term::Iri("http://x/a%20b%3E".into())
        );
        let t = sample().to_turtle();
        for needle in [
            r#"dct:title "Titel \"\"\" mit > und \\ und\nZeile, München"@de"#,
            "<allmende://munich/swm/dataset/x>\n    a dcat:Dataset ;",
            "allm:flag true",
            "_:b0\n    dcat:startDate \"2024-01-01\"^^xsd:date .",
        ] {
            assert!(t.contains(needle), "missing `{needle}` in\n{t}");
        }
    }

    #[test]
    fn json_ld_holds_the_same_terms() {
        let j: serde_json::Value = serde_json::from_str(&sample().to_json_ld()).unwrap();
        assert_eq!(j["@context"]["dcat"], "http://www.w3.org/ns/dcat#");
        let ds = &j["@graph"][0];
        assert_eq!(ds["@id"], "allmende://munich/swm/dataset/x");
        assert_eq!(ds["@type"][0], "dcat:Dataset");
        assert_eq!(
            ds["dct:title"][0]["@value"],
            "Titel \"\"\" mit > und \\ und\nZeile, München"
        );
        assert_eq!(ds["dct:title"][0]["@language"], "de");
        assert_eq!(ds["allm:flag"][0]["@type"], "xsd:boolean");
        assert_eq!(ds["dct:temporal"][0]["@id"], "_:b0");
    }

    #[test]
    fn a_scheme_named_like_a_prefix_drops_the_prefix_from_the_context() {
        let mut g = sample();
        g.add(
            &Term::iri("allmende://munich/swm/dataset/x"),
            "http://purl.org/dc/terms/spatial",
            Term::iri("dcat:Dataset"),
        );
        let j: serde_json::Value = serde_json::from_str(&g.to_json_ld()).unwrap();
        assert!(j["@context"].get("dcat").is_none(), "{j}");
        assert_eq!(
            j["@graph"][0]["@type"][0],
            "http://www.w3.org/ns/dcat#Dataset"
        );
        assert_eq!(j["@graph"][0]["dct:spatial"][0]["@id"], "dcat:Dataset");
    }

    #[test]
    fn malformed_language_tags_leave_plain_literals() {
        assert_eq!(Term::text("x", "de\"@"), Term::lit("x"));
        assert_eq!(
            Term::text("x", "de-DE"),
            Term::Literal {
                lexical: "x".into(),
                kind: LiteralKind::Lang("de-de".into())
            }
        );
    }

    #[test]
    fn output_is_deterministic() {
        assert_eq!(sample().to_turtle(), sample().to_turtle());
        assert_eq!(sample().to_json_ld(), sample().to_json_ld());
    }
}
