//! `allmende connector template`: a commented, valid starting file for
//! `allmende connector register`, and the local check of such a file (its own
//! line and column on error, before anything is sent to a node).

use super::Failure;
use super::exit;
use crate::catalog::{DatasetDescription, DatasetSchema};
use allmende_connectors::{FieldSpec, FieldType, FileConnectorConfig, FileFormat};
use std::path::Path;

/// What the CLI sends for one registration: the dataset's metadata and the
/// connector's configuration, both as JSON.
#[derive(Debug)]
pub struct RegistrationFile {
    pub dataset: DatasetDescription,
    pub dataset_json: String,
    pub connector_json: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    dataset: DatasetDescription,
    connector: toml::Value,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonShape {
    dataset: DatasetDescription,
    connector: serde_json::Value,
}

/// Reads and checks a registration file (TOML, or JSON by extension): every
/// problem names the file and, for syntax and field errors, its line and
/// column; the dataset's metadata is checked as the node will check it.
pub fn load(path: &Path) -> Result<RegistrationFile, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            exit::INPUT,
            format!("cannot read `{}`: {e}", path.display()),
        )
    })?;
    let (dataset, connector_json) = if path.extension().is_some_and(|e| e == "json") {
        let f: JsonShape = serde_json::from_str(&text)
            .map_err(|e| Failure::new(exit::INPUT, format!("`{}`: {e}", path.display())))?;
        (f.dataset, f.connector.to_string())
    } else {
        let f: FileShape = toml::from_str(&text)
            .map_err(|e| Failure::new(exit::INPUT, format!("`{}`: {e}", path.display())))?;
        let json = serde_json::to_string(&f.connector)
            .map_err(|e| Failure::new(exit::INPUT, format!("`{}`: {e}", path.display())))?;
        (f.dataset, json)
    };
    let problems = dataset.problems();
    if !problems.is_empty() {
        return Err(Failure::new(
            exit::INPUT,
            format!(
                "`{}`: the `[dataset]` table is not valid: {}",
                path.display(),
                problems.join("; ")
            ),
        ));
    }
    serde_json::from_str::<FileConnectorConfig>(&connector_json).map_err(|e| {
        Failure::new(
            exit::INPUT,
            format!("`{}`: the `[connector]` table: {e}", path.display()),
        )
    })?;
    let dataset_json = serde_json::to_string(&dataset)
        .map_err(|e| Failure::new(exit::INPUT, format!("`{}`: {e}", path.display())))?;
    Ok(RegistrationFile {
        dataset,
        dataset_json,
        connector_json,
    })
}

fn one_of<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> String {
    all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", ")
}

/// What each key of the `[dataset]` table means (shown above the key); the
/// lists come from the vocabularies the node checks against.
fn dataset_help(key: &str) -> Option<String> {
    use crate::catalog::{AccessRights, Frequency, Theme};
    use allmende_policies::{Classification, LegalBasis, Purpose};
    Some(match key {
        "id" => "Dataset id, unique in your organisation: lowercase letters, digits, `-`.".into(),
        "title" => "Title in the catalog (dct:title, mandatory in DCAT-AP.de).".into(),
        "description" => "What the data is (dct:description, mandatory).".into(),
        "language" => "Language of title, description and keywords (de, en, ...).".into(),
        "licence" => {
            "Licence short id from the dcat-ap.de list, e.g. dl-de-by-2.0, dl-de-zero-2.0, cc-by-4.0."
                .into()
        }
        "themes" => format!("EU data themes, any of: {}.", one_of(Theme::ALL, Theme::as_str)),
        "keywords" => "Free keywords for search.".into(),
        "access_rights" => format!(
            "One of: {}.",
            one_of(AccessRights::ALL, AccessRights::as_str)
        ),
        "legal_basis" => format!("One of: {}.", one_of(LegalBasis::ALL, LegalBasis::as_str)),
        "classification" => format!(
            "One of: {} (special: GDPR Art. 9).",
            one_of(Classification::ALL, Classification::as_str)
        ),
        "contains_personal_data" => {
            "true if any row is about a person (then classification personal or special).".into()
        }
        "public_space_origin" => {
            "true for data collected in public space (street sensors, counts).".into()
        }
        "allowed_purposes" => format!(
            "Purposes you allow at all (the policies decide each request), any of: {}.",
            one_of(Purpose::ALL, Purpose::as_str)
        ),
        "anonymisation_required" => {
            "true: personal-derived data leaves only as anonymised aggregates.".into()
        }
        "update_frequency" => format!(
            "How often it changes, one of: {}.",
            one_of(Frequency::ALL, Frequency::as_str)
        ),
        _ => return None,
    })
}

/// The example registration for `format`.
fn example(format: FileFormat) -> (DatasetDescription, FileConnectorConfig) {
    let ext = format.name();
    let mut dataset = crate::demo::munich::air_quality();
    dataset.id = "my-dataset".into();
    dataset.title = "Titel des Datensatzes".into();
    dataset.description =
        "Was die Daten beschreiben, woher sie kommen, wie oft sie sich ändern.".into();
    dataset.keywords = vec!["Stichwort".into()];
    dataset.schema = DatasetSchema {
        fields: vec![
            FieldSpec::required("station", FieldType::String),
            FieldSpec::required("timestamp", FieldType::Timestamp),
            FieldSpec::new("no2_ugm3", FieldType::Float64),
        ],
        subject_column: None,
        identifier_columns: vec![],
        quasi_identifier_columns: vec![],
        filterable_columns: vec![],
    };
    let mut connector = FileConnectorConfig::new(
        format!("/var/lib/allmende/sources/my-dataset.{ext}"),
        format,
    );
    connector.schema = None;
    (dataset, connector)
}

/// A commented, valid registration file for a dataset served from files of
/// `format`.
pub fn template(format: FileFormat) -> Result<String, Failure> {
    let (dataset, connector) = example(format);
    #[derive(serde::Serialize)]
    struct Out<'a> {
        dataset: &'a DatasetDescription,
        connector: &'a FileConnectorConfig,
    }
    let body = toml::to_string_pretty(&Out {
        dataset: &dataset,
        connector: &connector,
    })
    .map_err(|e| Failure::new(exit::FAILED, format!("cannot render the template: {e}")))?;
    let mut out = String::from(
        "# Registration file for `allmende connector register --dataset my-dataset --config FILE`.\n\
         # Edit every value; `allmende connector register` checks this file locally\n\
         # (naming its line) before it asks your node. Metadata: docs/catalog.md;\n\
         # connector options: connectors/README.md. The node reads sources only below\n\
         # the directories its operator allowed in the node config.\n\n",
    );
    let mut table = "";
    for line in body.lines() {
        if line.starts_with('[') {
            table = line;
            match line {
                "[dataset]" => {
                    out.push_str("# Catalog metadata (DCAT-AP.de), published to every node.\n")
                }
                "[dataset.schema]" => out.push_str(
                    "# The columns, exactly as in the source. Mark the column naming a person in\n\
                     # `subject_column` and other identifying columns in `identifier_columns`;\n\
                     # for personal data, list columns that could single people out (district,\n\
                     # timestamp) in `quasi_identifier_columns`, and those of them grants may\n\
                     # filter on in `filterable_columns` (docs/access.md).\n",
                ),
                "[connector]" => out.push_str(&format!(
                    "# Where the rows are: a {} file, or a directory of them.\n",
                    format.name()
                )),
                _ => {}
            }
        } else if table == "[dataset]"
            && let Some((key, _)) = line.split_once(" = ")
            && let Some(help) = dataset_help(key.trim())
        {
            out.push_str("# ");
            out.push_str(&help);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "test")]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_a_valid_registration_file() {
        for format in [
            FileFormat::Csv,
            FileFormat::Jsonl,
            FileFormat::Geojson,
            FileFormat::Parquet,
        ] {
            let text = template(format).unwrap();
            assert!(text.contains("# Licence short id"), "{text}");
            assert!(
                text.contains("ENVI, GOVE") || text.contains("ENER, ENVI"),
                "{text}"
            );
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("my-dataset.toml");
            std::fs::write(&path, &text).unwrap();
            let f = load(&path).unwrap_or_else(|e| panic!("{format:?}: {}", e.message));
            assert_eq!(f.dataset.id, "my-dataset");
            let c: FileConnectorConfig = serde_json::from_str(&f.connector_json).unwrap();
            assert_eq!(c.format, format);
        }
    }

    #[test]
    fn a_bad_file_names_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let text = template(FileFormat::Csv).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("update_frequency"))
            .unwrap();
        let broken: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(&path, broken).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(e.code, 3);
        assert!(e.message.contains("update_frequency"), "{}", e.message);
        assert!(e.message.contains("line"), "{}", e.message);
        assert!(!e.message.contains("column 233"), "{}", e.message);
    }
}
