//! The CKAN Action API 3 subset of the open-data listener: packages in
//! CKAN's shape, `package_search`'s `q`/`fq`/`rows`/`start`, and CKAN's
//! response envelope and error shapes (pure functions; the listener in
//! `super` gathers the packages and answers).

use crate::catalog::CatalogEntry;
use crate::opendata::releases::{FileRole, Manifest};
use serde_json::{Value, json};

/// Most rows one `package_search` returns (CKAN's default cap).
pub const MAX_ROWS: usize = 1000;

/// Rows of a `package_search` without `rows`.
pub const DEFAULT_ROWS: usize = 10;

/// A package (dataset or release) with what searching needs.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub title: String,
    pub notes: String,
    pub organization: String,
    pub tags: Vec<String>,
    pub formats: Vec<String>,
    /// The package in CKAN's shape.
    pub json: Value,
}

/// An organisation's name and display title.
#[derive(Debug, Clone)]
pub struct Org {
    pub name: String,
    pub title: String,
}

fn organization(org: &Org) -> Value {
    json!({
        "id": org.name,
        "name": org.name,
        "title": org.title,
        "display_name": org.title,
        "type": "organization",
        "state": "active",
        "is_organization": true,
        "approval_status": "approved",
    })
}

/// An organisation as `organization_list?all_fields=true` shows it.
pub fn organization_dict(org: &Org, package_count: usize) -> Value {
    let mut v = organization(org);
    v["package_count"] = json!(package_count);
    v
}

fn tags(names: &[String]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|t| json!({"name": t, "display_name": t, "state": "active"}))
            .collect(),
    )
}

/// A local public dataset as a CKAN package: its one resource is the CSV
/// download through the release pipeline.
pub fn dataset_package(e: &CatalogEntry, org: &Org, base: &str) -> Package {
    let d = &e.dataset;
    let modified = crate::timefmt::format_unix_ms(e.updated_at_ms);
    let url = format!("{base}/download/dataset/{}.csv", d.id);
    let resource = json!({
        "id": format!("{}.csv", d.id),
        "package_id": d.id,
        "name": format!("{} (CSV)", d.title),
        "description": "Alle Zeilen als CSV, bei jedem Abruf entschieden und protokolliert.",
        "url": url,
        "format": "CSV",
        "mimetype": "text/csv",
        "size": Value::Null,
        "hash": "",
        "state": "active",
        "last_modified": modified,
        "created": modified,
    });
    let json = json!({
        "id": d.id,
        "name": d.id,
        "title": d.title,
        "notes": d.description,
        "license_id": d.licence,
        "license_title": d.licence,
        "organization": organization(org),
        "owner_org": org.name,
        "tags": tags(&d.keywords),
        "num_tags": d.keywords.len(),
        "resources": [resource],
        "num_resources": 1,
        "metadata_created": modified,
        "metadata_modified": modified,
        "state": "active",
        "private": false,
        "type": "dataset",
        "isopen": true,
        "language": d.language,
        "url": url,
    });
    Package {
        name: d.id.clone(),
        title: d.title.clone(),
        notes: d.description.clone(),
        organization: org.name.clone(),
        tags: d.keywords.clone(),
        formats: vec!["CSV".to_owned()],
        json,
    }
}

/// CKAN's format name of a media type.
fn format_of(media_type: &str) -> &str {
    match media_type {
        "text/csv" => "CSV",
        "application/vnd.apache.parquet" | "application/x-parquet" => "Parquet",
        "application/json" => "JSON",
        "application/ld+json" => "JSON-LD",
        "text/turtle" => "Turtle",
        other => other,
    }
}

/// A published release as a CKAN package: its resources are its files.
pub fn release_package(m: &Manifest, org: &Org, base: &str) -> Package {
    let resources: Vec<Value> = m
        .files
        .iter()
        .map(|f| {
            json!({
                "id": format!("{}/{}", m.id, f.name),
                "package_id": m.id,
                "name": f.name,
                "description": match f.role {
                    FileRole::Data => "anonymisierte Daten",
                    FileRole::Report => "Bericht der Anonymisierung (k, unterdrückte Zellen, ε)",
                    FileRole::Metadata => "DCAT-AP.de-Metadaten",
                },
                "url": format!("{base}/download/release/{}/{}", m.id, f.name),
                "format": format_of(&f.media_type),
                "mimetype": f.media_type,
                "size": f.bytes,
                "hash": format!("sha256:{}", f.sha256),
                "state": "active",
                "created": m.published_at,
                "last_modified": m.published_at,
            })
        })
        .collect();
    let formats: Vec<String> = m
        .files
        .iter()
        .map(|f| format_of(&f.media_type).to_owned())
        .collect();
    let tag_names = vec![m.dataset.clone(), "anonymisiert".to_owned()];
    let json = json!({
        "id": m.id,
        "name": m.id,
        "title": m.title,
        "notes": m.description,
        "license_id": m.licence,
        "license_title": m.licence,
        "organization": organization(org),
        "owner_org": org.name,
        "tags": tags(&tag_names),
        "num_tags": tag_names.len(),
        "num_resources": resources.len(),
        "resources": resources,
        "metadata_created": m.published_at,
        "metadata_modified": m.published_at,
        "state": "active",
        "private": false,
        "type": "dataset",
        "isopen": true,
        "extras": [{"key": "source_dataset", "value": m.dataset}],
    });
    Package {
        name: m.id.clone(),
        title: m.title.clone(),
        notes: m.description.clone(),
        organization: org.name.clone(),
        tags: tag_names,
        formats,
        json,
    }
}

/// Why a search request is refused (CKAN's `Validation Error`, 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("`{param}` must be a whole number from 0 to {max}, not `{value}`")]
    Number {
        param: &'static str,
        value: String,
        max: usize,
    },
    #[error("fq field `{0}` is not supported; use `organization:`, `tags:` or `res_format:`")]
    Field(String),
    #[error("fq term `{0}` is not `field:value`")]
    Term(String),
}

/// A `package_search` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Search {
    /// Lower-cased words that must each occur in title, notes or tags.
    pub words: Vec<String>,
    /// `fq` filters, all required: (field, value).
    pub filters: Vec<(Field, String)>,
    pub rows: usize,
    pub start: usize,
}

/// The `fq` fields supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Organization,
    Tags,
    ResFormat,
}

/// A whole number from 0 to `max` (`None`: absent).
pub fn number(
    param: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<usize>, SearchError> {
    let Some(v) = value else {
        return Ok(None);
    };
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= max)
        .map(Some)
        .ok_or_else(|| SearchError::Number {
            param,
            value: crate::text::shown(v, 40),
            max,
        })
}

/// Splits an `fq` string into terms: whitespace-separated, a leading `+`
/// dropped, values in double quotes may hold spaces.
fn fq_terms(fq: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in fq.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    terms.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        terms.push(cur);
    }
    terms
        .into_iter()
        .map(|t| t.trim_start_matches('+').to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

impl Search {
    /// Parses `q`, `fq`, `rows` and `start`.
    pub fn parse(
        q: Option<&str>,
        fq: Option<&str>,
        rows: Option<&str>,
        start: Option<&str>,
    ) -> Result<Self, SearchError> {
        let rows = number("rows", rows, MAX_ROWS)?.unwrap_or(DEFAULT_ROWS);
        let start = number("start", start, usize::MAX)?.unwrap_or(0);
        let q = q.unwrap_or("").trim();
        let words = if q == "*:*" || q == "*" {
            Vec::new()
        } else {
            q.split_whitespace().map(str::to_lowercase).collect()
        };
        let mut filters = Vec::new();
        for t in fq_terms(fq.unwrap_or("")) {
            let Some((field, value)) = t.split_once(':') else {
                return Err(SearchError::Term(crate::text::shown(&t, 60)));
            };
            let field = match field {
                "organization" => Field::Organization,
                "tags" => Field::Tags,
                "res_format" => Field::ResFormat,
                other => return Err(SearchError::Field(crate::text::shown(other, 40))),
            };
            filters.push((field, value.to_owned()));
        }
        Ok(Self {
            words,
            filters,
            rows,
            start,
        })
    }

    fn matches(&self, p: &Package) -> bool {
        let text = format!("{} {} {}", p.title, p.notes, p.tags.join(" ")).to_lowercase();
        self.words.iter().all(|w| text.contains(w.as_str()))
            && self.filters.iter().all(|(f, v)| match f {
                Field::Organization => p.organization == *v,
                Field::Tags => p.tags.iter().any(|t| t == v),
                Field::ResFormat => p.formats.iter().any(|x| x.eq_ignore_ascii_case(v)),
            })
    }

    /// CKAN's `package_search` result over `packages`.
    pub fn run(&self, packages: &[Package]) -> Value {
        let hits: Vec<&Package> = packages.iter().filter(|p| self.matches(p)).collect();
        let results: Vec<Value> = hits
            .iter()
            .skip(self.start)
            .take(self.rows)
            .map(|p| p.json.clone())
            .collect();
        json!({
            "count": hits.len(),
            "results": results,
            "facets": {},
            "search_facets": {},
            "sort": "score desc, metadata_modified desc",
        })
    }
}

/// CKAN's success envelope.
pub fn success(help: &str, result: Value) -> Value {
    json!({"help": help, "success": true, "result": result})
}

/// CKAN's error envelope: `__type` such as `Not Found Error`.
pub fn failure(help: &str, kind: &str, message: &str) -> Value {
    json!({
        "help": help,
        "success": false,
        "error": {"__type": kind, "message": message},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "test")]
mod tests {
    use super::*;

    fn pkg(name: &str, org: &str, tags: &[&str], formats: &[&str]) -> Package {
        Package {
            name: name.into(),
            title: format!("Titel {name}"),
            notes: "Stündliche Messwerte".into(),
            organization: org.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            formats: formats.iter().map(|t| (*t).to_owned()).collect(),
            json: json!({"name": name}),
        }
    }

    #[test]
    fn search_filters_pages_and_refuses_what_it_does_not_know() {
        let ps = vec![
            pkg("air-quality", "stadt", &["Luft", "NO2"], &["CSV"]),
            pkg("traffic-counts", "stadt", &["Verkehr"], &["CSV"]),
            pkg(
                "scooter-2025",
                "scooter-co",
                &["scooter-trips"],
                &["CSV", "Parquet"],
            ),
        ];
        let all = Search::parse(None, None, None, None).unwrap().run(&ps);
        assert_eq!(all["count"], 3);
        let s = Search::parse(Some("stündliche luft"), None, None, None).unwrap();
        assert_eq!(s.run(&ps)["results"][0]["name"], "air-quality");
        assert_eq!(s.run(&ps)["count"], 1);
        let s = Search::parse(None, Some("organization:stadt +tags:Verkehr"), None, None).unwrap();
        assert_eq!(s.run(&ps)["results"][0]["name"], "traffic-counts");
        let s = Search::parse(None, Some("res_format:parquet"), None, None).unwrap();
        assert_eq!(s.run(&ps)["count"], 1);
        let page = Search::parse(Some("*:*"), None, Some("1"), Some("1"))
            .unwrap()
            .run(&ps);
        assert_eq!(page["count"], 3);
        assert_eq!(page["results"].as_array().unwrap().len(), 1);
        assert_eq!(page["results"][0]["name"], "traffic-counts");
        let past = Search::parse(None, None, None, Some("99"))
            .unwrap()
            .run(&ps);
        assert_eq!(past["results"].as_array().unwrap().len(), 0);
        for (rows, start) in [
            ("1001", "0"),
            ("-1", "0"),
            ("1", "-5"),
            ("x", "0"),
            ("99999999999999999999999", "0"),
        ] {
            assert!(
                matches!(
                    Search::parse(None, None, Some(rows), Some(start)),
                    Err(SearchError::Number { .. })
                ),
                "{rows} {start}"
            );
        }
        assert_eq!(
            Search::parse(None, Some("license_id:cc-by"), None, None),
            Err(SearchError::Field("license_id".into()))
        );
        assert!(matches!(
            Search::parse(None, Some("nofield"), None, None),
            Err(SearchError::Term(_))
        ));
    }
}
