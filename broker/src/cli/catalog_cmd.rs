//! `allmende catalog …`: search the federated catalog, show one dataset and
//! export the whole catalog. Answers come from the node's replica; human
//! tables by default, `--json` for machines, `--dcat` for one entry's
//! DCAT-AP.de Turtle, `export` for the whole catalog as one DCAT-AP.de
//! document (Turtle or JSON-LD).

use super::{Answer, Failure};
use crate::client::ClientProfile;
use allmende_proto::v1 as pb;
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

/// The document format of `catalog export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormatArg {
    /// Turtle (text/turtle).
    Turtle,
    /// JSON-LD with its @context inline (application/ld+json).
    Jsonld,
}

/// A catalog export is one message; allow large federations.
const MAX_EXPORT_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Subcommand)]
pub enum CatalogCmd {
    /// Search titles, descriptions and keywords (every word must match;
    /// case and umlaut spelling do not matter).
    Search {
        /// Words to look for; none lists every entry.
        query: Vec<String>,
        /// Only entries of this organisation.
        #[arg(long, default_value = "")]
        owner: String,
        /// Only entries with this EU data theme (e.g. ENER, ENVI, TRAN).
        #[arg(long, default_value = "")]
        theme: String,
        /// Only entries of this classification (public, internal, personal, special).
        #[arg(long, default_value = "")]
        classification: String,
        /// At most this many results (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Show one dataset's metadata.
    Show {
        dataset: String,
        /// The owner, when several organisations publish the same id.
        #[arg(long, default_value = "")]
        owner: String,
        /// Print the DCAT-AP.de 2.0 export (Turtle) instead.
        #[arg(long)]
        dcat: bool,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
    /// Export the whole federated catalog the node knows (its own entries
    /// and its peers' verified entries) as one DCAT-AP.de 2.0 document, for
    /// open-data portals to harvest.
    Export {
        /// Document format.
        #[arg(long, value_enum, default_value = "turtle")]
        format: ExportFormatArg,
        /// Write the document to this file instead of standard output.
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long, env = "ALLMENDE_PROFILE")]
        profile: Option<PathBuf>,
    },
}

/// Runs a catalog command and prints its output.
pub async fn run(cmd: CatalogCmd, json: bool) -> Result<(), Failure> {
    let out = output(cmd, json).await?;
    print!("{out}");
    Ok(())
}

/// Runs a catalog command and returns what it would print.
pub async fn output(cmd: CatalogCmd, json: bool) -> Result<String, Failure> {
    match cmd {
        CatalogCmd::Search {
            query,
            owner,
            theme,
            classification,
            limit,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let resp = pb::catalog_client::CatalogClient::new(p.connect().await?)
                .search(pb::SearchCatalogRequest {
                    query: query.join(" "),
                    owner,
                    theme: theme.to_uppercase(),
                    classification: classification.to_lowercase(),
                    limit,
                })
                .await
                .answer()?;
            Ok(render_search(&resp, json))
        }
        CatalogCmd::Show {
            dataset,
            owner,
            dcat,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let resp = pb::catalog_client::CatalogClient::new(p.connect().await?)
                .get(pb::GetCatalogEntryRequest {
                    dataset,
                    owner,
                    include_dcat: dcat,
                })
                .await
                .answer()?;
            if dcat {
                return Ok(resp.dcat_turtle);
            }
            let entry = resp.entry.unwrap_or_default();
            Ok(if json {
                format!("{}\n", entry_json(&entry))
            } else {
                render_entry(&entry)
            })
        }
        CatalogCmd::Export {
            format,
            output,
            profile,
        } => {
            let p = ClientProfile::resolve(profile.as_deref())?;
            let format = match format {
                ExportFormatArg::Turtle => pb::CatalogFormat::Turtle,
                ExportFormatArg::Jsonld => pb::CatalogFormat::JsonLd,
            };
            let resp = pb::catalog_client::CatalogClient::new(p.connect().await?)
                .max_decoding_message_size(MAX_EXPORT_BYTES)
                .export(pb::ExportCatalogRequest {
                    format: format.into(),
                })
                .await
                .answer()?;
            let Some(path) = output else {
                return Ok(resp.document);
            };
            std::fs::write(&path, &resp.document).map_err(|e| {
                Failure::new(
                    super::exit::INPUT,
                    format!("cannot write `{}`: {e}", path.display()),
                )
            })?;
            let summary = format!(
                "wrote {} datasets ({}, {} bytes) to `{}`",
                resp.datasets,
                resp.media_type,
                resp.document.len(),
                path.display()
            );
            Ok(if json {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "datasets": resp.datasets,
                        "media_type": resp.media_type,
                        "bytes": resp.document.len(),
                        "output": path.display().to_string(),
                    })
                )
            } else {
                format!("{summary}\n")
            })
        }
    }
}

fn fmt_ms(ms: i64) -> String {
    crate::timefmt::format_unix_ms(ms)
}

/// An entry as JSON.
pub fn entry_json(e: &pb::CatalogEntry) -> serde_json::Value {
    let spatial = e.spatial.as_ref().map(
        |s| serde_json::json!({ "label": s.label, "iri": (!s.iri.is_empty()).then_some(&s.iri) }),
    );
    let temporal = e.temporal.as_ref().map(|t| {
        serde_json::json!({
            "start": (!t.start.is_empty()).then_some(&t.start),
            "end": (!t.end.is_empty()).then_some(&t.end),
        })
    });
    let contact = e.contact_point.as_ref().map(|c| {
        serde_json::json!({
            "name": c.name,
            "email": (!c.email.is_empty()).then_some(&c.email),
            "url": (!c.url.is_empty()).then_some(&c.url),
        })
    });
    serde_json::json!({
        "dataset": e.dataset,
        "owner": e.owner,
        "owner_node": e.owner_node,
        "publisher_name": e.publisher_name,
        "version": e.version,
        "updated_at": fmt_ms(e.updated_at_unix_ms),
        "title": e.title,
        "description": e.description,
        "language": e.language,
        "licence": e.licence,
        "themes": e.themes,
        "keywords": e.keywords,
        "spatial": spatial,
        "temporal": temporal,
        "contact_point": contact,
        "access_rights": e.access_rights,
        "legal_basis": e.legal_basis,
        "classification": e.classification,
        "contains_personal_data": e.contains_personal_data,
        "public_space_origin": e.public_space_origin,
        "allowed_purposes": e.allowed_purposes,
        "anonymisation_required": e.anonymisation_required,
        "update_frequency": e.update_frequency,
        "schema": {
            "fields": e.fields.iter().map(|f| serde_json::json!({
                "name": f.name, "type": f.r#type, "nullable": f.nullable,
            })).collect::<Vec<_>>(),
            "subject_column": (!e.subject_column.is_empty()).then_some(&e.subject_column),
            "identifier_columns": e.identifier_columns,
        },
        "access_url": (!e.access_url.is_empty()).then_some(&e.access_url),
        "replica": e.replica,
    })
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(width.saturating_sub(n)))
}

/// A search answer as a table (or JSON).
pub fn render_search(r: &pb::SearchCatalogResponse, json: bool) -> String {
    if json {
        return format!(
            "{}\n",
            serde_json::json!({
                "total": r.total,
                "entries": r.entries.iter().map(entry_json).collect::<Vec<_>>(),
            })
        );
    }
    let rows: Vec<[String; 5]> = r
        .entries
        .iter()
        .map(|e| {
            [
                e.dataset.clone(),
                e.owner.clone(),
                e.classification.clone(),
                e.themes.join(","),
                clip(&e.title, 60),
            ]
        })
        .collect();
    let header = ["DATASET", "OWNER", "CLASSIFICATION", "THEMES", "TITLE"];
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s: Vec<String> = cells.iter().zip(widths).map(|(c, w)| pad(c, w)).collect();
        if let Some(last) = s.last_mut() {
            *last = last.trim_end().to_owned();
        }
        s.join("  ")
    };
    let mut out = String::new();
    out.push_str(&line(&header.map(str::to_owned)));
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out.push_str(&format!(
        "{} of {} matching entr{}\n",
        r.entries.len(),
        r.total,
        if r.total == 1 { "y" } else { "ies" }
    ));
    out
}

/// One entry, human-readable.
pub fn render_entry(e: &pb::CatalogEntry) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("dataset".into(), e.dataset.clone()),
        ("title".into(), e.title.clone()),
        (
            "owner".into(),
            format!(
                "{} ({}), node {}{}",
                e.owner,
                e.publisher_name,
                e.owner_node,
                if e.replica { ", replica" } else { "" }
            ),
        ),
        (
            "classification".into(),
            format!(
                "{}{}{}",
                e.classification,
                if e.contains_personal_data {
                    ", personal data"
                } else {
                    ""
                },
                if e.public_space_origin {
                    ", from public space"
                } else {
                    ""
                }
            ),
        ),
        ("legal basis".into(), e.legal_basis.clone()),
        ("purposes".into(), e.allowed_purposes.join(", ")),
        (
            "anonymised".into(),
            if e.anonymisation_required {
                "required (aggregates only)".into()
            } else {
                "not required".into()
            },
        ),
        ("access rights".into(), e.access_rights.clone()),
        ("licence".into(), e.licence.clone()),
        ("themes".into(), e.themes.join(", ")),
        ("keywords".into(), e.keywords.join(", ")),
        ("updates".into(), e.update_frequency.clone()),
    ];
    if let Some(s) = &e.spatial {
        let iri = if s.iri.is_empty() {
            String::new()
        } else {
            format!(" <{}>", s.iri)
        };
        lines.push(("spatial".into(), format!("{}{iri}", s.label)));
    }
    if let Some(t) = &e.temporal {
        let span = match (t.start.is_empty(), t.end.is_empty()) {
            (false, true) => format!("from {}", t.start),
            (true, false) => format!("until {}", t.end),
            _ => format!("{} – {}", t.start, t.end),
        };
        lines.push(("temporal".into(), span));
    }
    if let Some(c) = &e.contact_point {
        let mut v = c.name.clone();
        for extra in [&c.email, &c.url] {
            if !extra.is_empty() {
                v.push_str(&format!(" <{extra}>"));
            }
        }
        lines.push(("contact".into(), v));
    }
    if !e.access_url.is_empty() {
        lines.push(("access url".into(), e.access_url.clone()));
    }
    lines.push((
        "version".into(),
        format!("{}, updated {}", e.version, fmt_ms(e.updated_at_unix_ms)),
    ));
    let mut out = String::new();
    for (k, v) in &lines {
        out.push_str(&format!("{}{v}\n", pad(k, 16)));
    }
    out.push_str("columns:\n");
    let width = e
        .fields
        .iter()
        .map(|f| f.name.chars().count())
        .max()
        .unwrap_or(0);
    for f in &e.fields {
        let role = if f.name == e.subject_column {
            "  data subject"
        } else if e.identifier_columns.contains(&f.name) {
            "  identifier"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {}  {}  {}{role}\n",
            pad(&f.name, width),
            pad(&f.r#type, 9),
            if f.nullable { "nullable" } else { "required" }
        ));
    }
    out.push_str("description:\n");
    for l in e.description.lines() {
        out.push_str(&format!("  {l}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> pb::CatalogEntry {
        pb::CatalogEntry {
            dataset: "air-quality".into(),
            owner: "stadt".into(),
            owner_node: "stadt-1".into(),
            publisher_name: "Landeshauptstadt München".into(),
            title: "Luftqualität an den LÜB-Stationen".into(),
            classification: "public".into(),
            themes: vec!["ENVI".into()],
            fields: vec![pb::CatalogField {
                name: "station_id".into(),
                r#type: "string".into(),
                nullable: false,
            }],
            description: "Stündliche Werte.\nZweite Zeile.".into(),
            replica: true,
            ..Default::default()
        }
    }

    #[test]
    fn search_table_aligns_columns_and_counts() {
        let r = pb::SearchCatalogResponse {
            entries: vec![entry()],
            total: 3,
        };
        let t = render_search(&r, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].starts_with("DATASET      OWNER  CLASSIFICATION  THEMES  TITLE"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("air-quality  stadt  public          ENVI    Luftqualität"),
            "{t}"
        );
        assert_eq!(lines[2], "1 of 3 matching entries");
        let j: serde_json::Value =
            serde_json::from_str(&render_search(&r, true)).unwrap_or_default();
        assert_eq!(j["entries"][0]["owner"], "stadt");
        assert_eq!(j["total"], 3);
    }

    #[test]
    fn entry_view_names_owner_columns_and_description() {
        let t = render_entry(&entry());
        assert!(
            t.contains("owner           stadt (Landeshauptstadt München), node stadt-1, replica"),
            "{t}"
        );
        assert!(t.contains("  station_id  string     required\n"), "{t}");
        assert!(
            t.contains("description:\n  Stündliche Werte.\n  Zweite Zeile.\n"),
            "{t}"
        );
    }
}
