//! Importing a utility's consent CSV (the format
//! `allmende_connectors::sample` writes): all rows or none. Every bad row is
//! reported with its line number; with one bad row nothing is stored. A row
//! never overrides a newer decision already held (a re-imported old file
//! cannot undo a withdrawal).

use super::{
    CollectionMethod, ConsentError, ConsentRecord, ConsentStatus, ConsentStore, valid_subject_id,
};
use crate::store::WriteBatch;
use allmende_policies::Purpose;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The CSV columns, in the order the sample data writes them.
pub const CSV_COLUMNS: [&str; 8] = [
    "subject_id",
    "controller",
    "dataset",
    "purposes",
    "status",
    "given_at",
    "withdrawn_at",
    "expires_at",
];

/// The most rows one import takes.
pub const MAX_IMPORT_ROWS: usize = 1_000_000;

/// How far in the future a `given_at` may lie (clock skew between the
/// utility's systems and the node), in seconds.
pub const GIVEN_AT_SKEW_SECS: i64 = 300;

/// The largest consent CSV one import takes, in bytes.
pub const MAX_IMPORT_BYTES: usize = 32 * 1024 * 1024;

/// A bad CSV row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

pub(super) fn join_rows(rows: &[RowError], max: usize) -> String {
    let mut s: Vec<String> = rows.iter().take(max).map(|r| format!("  {r}")).collect();
    if rows.len() > max {
        s.push(format!("  … and {} more bad row(s)", rows.len() - max));
    }
    s.join("\n")
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows in the file.
    pub rows: usize,
    /// Records stored (new or changed).
    pub stored: usize,
    /// Rows equal to what was held.
    pub unchanged: usize,
    /// Rows older than a decision already held (kept the newer one).
    pub superseded: usize,
}

fn parse_time(s: &str) -> Result<i64, String> {
    crate::timefmt::parse(s).map(|t| t.unix_timestamp())
}

impl ConsentStore {
    /// Validates a CSV of consent records for `dataset` (every row must name
    /// it and this node's organisation as controller).
    pub fn parse_csv(
        &self,
        dataset: &str,
        csv: &[u8],
        now: i64,
    ) -> Result<Vec<(u64, ConsentRecord)>, ConsentError> {
        if !crate::catalog::entry::valid_dataset_id(dataset) {
            return Err(ConsentError::Invalid(format!(
                "dataset id `{}` must match [a-z0-9][a-z0-9-]{{0,62}}",
                crate::text::shown(dataset, 100)
            )));
        }
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(csv);
        let header = reader.byte_headers().map_err(|e| {
            ConsentError::Rows(vec![RowError {
                line: 1,
                message: format!("unreadable header: {e}"),
            }])
        })?;
        let mut cols: HashMap<&str, usize> = HashMap::new();
        let mut header_errors = Vec::new();
        for (i, name) in header.iter().enumerate() {
            let name = String::from_utf8_lossy(name)
                .trim_start_matches('\u{feff}')
                .to_owned();
            match CSV_COLUMNS.iter().find(|c| **c == name) {
                Some(c) => {
                    if cols.insert(c, i).is_some() {
                        header_errors.push(format!("column `{name}` appears twice"));
                    }
                }
                None => header_errors.push(format!(
                    "unknown column `{}`",
                    crate::text::shown(&name, 60)
                )),
            }
        }
        for c in CSV_COLUMNS {
            if !cols.contains_key(c) {
                header_errors.push(format!("column `{c}` is missing"));
            }
        }
        if !header_errors.is_empty() {
            return Err(ConsentError::Rows(vec![RowError {
                line: 1,
                message: format!(
                    "header: {} (expected columns: {})",
                    header_errors.join("; "),
                    CSV_COLUMNS.join(", ")
                ),
            }]));
        }
        let width = header.len();
        let col = |c: &str| cols.get(c).copied().unwrap_or(0);
        let (
            c_subject,
            c_controller,
            c_dataset,
            c_purposes,
            c_status,
            c_given,
            c_withdrawn,
            c_expires,
        ) = (
            col("subject_id"),
            col("controller"),
            col("dataset"),
            col("purposes"),
            col("status"),
            col("given_at"),
            col("withdrawn_at"),
            col("expires_at"),
        );

        let mut errors = Vec::new();
        let mut out = Vec::new();
        let mut seen: HashMap<String, u64> = HashMap::new();
        let stored_at_ms = self.clock.now_unix_ms();
        let mut record = csv::ByteRecord::new();
        let mut rows = 0usize;
        loop {
            let line_hint = reader.position().line();
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let line = e.position().map_or(line_hint, csv::Position::line);
                    errors.push(RowError {
                        line,
                        message: format!("unreadable record: {e}"),
                    });
                    // The reader cannot resynchronise reliably after this.
                    break;
                }
            }
            rows += 1;
            if rows > MAX_IMPORT_ROWS {
                return Err(ConsentError::Invalid(format!(
                    "more than {MAX_IMPORT_ROWS} rows in one import; split the file"
                )));
            }
            let line = record.position().map_or(line_hint, csv::Position::line);
            let mut problems: Vec<String> = Vec::new();
            if record.len() != width {
                errors.push(RowError {
                    line,
                    message: format!("expected {width} fields, found {}", record.len()),
                });
                continue;
            }
            let mut field = |i: usize, name: &str| -> Option<String> {
                match std::str::from_utf8(record.get(i).unwrap_or_default()) {
                    Ok(s) => Some(s.to_owned()),
                    Err(_) => {
                        problems.push(format!("`{name}` is not valid UTF-8"));
                        None
                    }
                }
            };
            let subject = field(c_subject, "subject_id").unwrap_or_default();
            let controller = field(c_controller, "controller").unwrap_or_default();
            let row_dataset = field(c_dataset, "dataset").unwrap_or_default();
            let purposes_text = field(c_purposes, "purposes").unwrap_or_default();
            let status_text = field(c_status, "status").unwrap_or_default();
            let given_text = field(c_given, "given_at").unwrap_or_default();
            let withdrawn_text = field(c_withdrawn, "withdrawn_at").unwrap_or_default();
            let expires_text = field(c_expires, "expires_at").unwrap_or_default();

            if !valid_subject_id(&subject) {
                problems.push(format!(
                    "subject_id `{}` must match [A-Za-z0-9._-]{{1,64}}",
                    crate::text::shown(&subject, 80)
                ));
            }
            if controller != self.controller {
                problems.push(format!(
                    "controller `{}` is not this node's organisation `{}`",
                    crate::text::shown(&controller, 80),
                    self.controller
                ));
            }
            if row_dataset != dataset {
                problems.push(format!(
                    "dataset `{}` is not the imported dataset `{dataset}`",
                    crate::text::shown(&row_dataset, 80)
                ));
            }
            let mut purposes = BTreeSet::new();
            if purposes_text.is_empty() {
                problems.push("purposes is empty".into());
            }
            for p in purposes_text
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                match p.parse::<Purpose>() {
                    Ok(p) => {
                        if !purposes.insert(p) {
                            problems.push(format!("purpose `{p}` is repeated"));
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            let status = status_text
                .parse::<ConsentStatus>()
                .map_err(|e| problems.push(e.to_string()))
                .ok();
            let given_at = if given_text.is_empty() {
                problems.push("given_at is empty".into());
                None
            } else {
                parse_time(&given_text)
                    .map_err(|e| problems.push(format!("given_at: {e}")))
                    .ok()
            };
            let opt_time = |text: &str, name: &str, problems: &mut Vec<String>| {
                if text.is_empty() {
                    None
                } else {
                    parse_time(text)
                        .map_err(|e| problems.push(format!("{name}: {e}")))
                        .ok()
                }
            };
            let withdrawn_at = opt_time(&withdrawn_text, "withdrawn_at", &mut problems);
            let expires_at = opt_time(&expires_text, "expires_at", &mut problems);
            if let Some(g) = given_at {
                if g > now + GIVEN_AT_SKEW_SECS {
                    problems.push(format!("given_at `{given_text}` lies in the future"));
                }
                if let Some(w) = withdrawn_at
                    && w < g
                {
                    problems.push(format!(
                        "withdrawn_at `{withdrawn_text}` lies before given_at"
                    ));
                }
                if let Some(e) = expires_at
                    && e <= g
                {
                    problems.push(format!("expires_at `{expires_text}` is not after given_at"));
                }
            }
            match (status, withdrawn_text.is_empty()) {
                (Some(ConsentStatus::Withdrawn), true) => {
                    problems.push("status `withdrawn` needs withdrawn_at".into());
                }
                (Some(s @ (ConsentStatus::Given | ConsentStatus::Refused)), false) => {
                    problems.push(format!("status `{s}` must not have withdrawn_at"));
                }
                _ => {}
            }
            if valid_subject_id(&subject) {
                if let Some(first) = seen.get(&subject) {
                    problems.push(format!(
                        "subject `{subject}` already appears on line {first}"
                    ));
                } else {
                    seen.insert(subject.clone(), line);
                }
            }
            match (problems.is_empty(), status, given_at) {
                (true, Some(status), Some(given_at)) => out.push((
                    line,
                    ConsentRecord {
                        record_id: String::new(),
                        collection_method: CollectionMethod::CsvImport,
                        subject_id: subject,
                        controller,
                        dataset: row_dataset,
                        purposes,
                        status,
                        given_at,
                        withdrawn_at,
                        expires_at,
                        withdrawn_purposes: BTreeMap::new(),
                        stored_at_ms,
                        source: "import".into(),
                    },
                )),
                _ => errors.push(RowError {
                    line,
                    message: problems.join("; "),
                }),
            }
        }
        if !errors.is_empty() {
            return Err(ConsentError::Rows(errors));
        }
        if out.is_empty() {
            return Err(ConsentError::Invalid(
                "the file holds no consent records".into(),
            ));
        }
        Ok(out)
    }

    /// Imports a CSV of consent records for `dataset`: all rows or none,
    /// durable before it returns.
    pub async fn import_csv(
        &self,
        dataset: &str,
        csv: &[u8],
    ) -> Result<ImportReport, ConsentError> {
        let now = self.clock.now_unix_secs();
        let rows = self.parse_csv(dataset, csv, now)?;
        let _w = self.write.lock().await;
        let mut report = ImportReport {
            rows: rows.len(),
            ..ImportReport::default()
        };
        let mut batch = WriteBatch::new();
        let mut changed = Vec::new();
        {
            let held = self.held()?;
            let current = held.get(dataset);
            for (_, mut rec) in rows {
                let old = current.and_then(|m| m.get(&rec.subject_id));
                rec.record_id = match old.map(|o| o.record_id.clone()) {
                    Some(id) if !id.is_empty() => id,
                    _ => super::new_record_id()?,
                };
                match old {
                    Some(old) if old.same_decision(&rec) => {
                        report.unchanged += 1;
                        continue;
                    }
                    Some(old) if old.decided_at() > rec.decided_at() => {
                        report.superseded += 1;
                        continue;
                    }
                    _ => {}
                }
                batch.put(
                    &self.table,
                    &(rec.dataset.clone(), rec.subject_id.clone()),
                    &rec,
                )?;
                changed.push(rec);
            }
        }
        report.stored = changed.len();
        self.store.commit_durable(batch).await?;
        {
            let mut held = self.held_mut()?;
            let m = held.entry(dataset.to_owned()).or_default();
            for rec in changed {
                m.insert(rec.subject_id.clone(), rec);
            }
        }
        tracing::info!(dataset = %dataset, report = ?report, "consent records imported");
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test")]
    use super::super::format_time;
    use super::super::tests::{DS, HEADER, NOW, open};
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn bad_rows_are_all_reported_with_lines_and_nothing_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), ManualClock::at_unix_ms(NOW * 1000));
        let csv = format!(
            "{HEADER}\
HH-000001,swm,{DS},AcademicResearch,given,2024-05-01T10:00:00Z,,\n\
HH-000002,swm,{DS},GridOperations,given,2024-05-01T10:00:00Z,,\n\
HH-000003,stadt,{DS},AcademicResearch,given,2024-05-01T10:00:00Z,,\n\
HH-000004,swm,{DS},AcademicResearch,maybe,yesterday,,\n\
HH-000005,swm,{DS},AcademicResearch,given\n\
HH-000001,swm,{DS},AcademicResearch,given,2024-05-01T10:00:00Z,,\n\
\"HH 7\",swm,other,AcademicResearch,withdrawn,2024-05-01T10:00:00Z,,\n\
HH-000008,swm,{DS},academicresearch,given,2030-01-01T00:00:00Z,,2020-01-01T00:00:00Z\n\
HH-000009,swm,{DS},AcademicResearch,given,2024-05-01T10:00:00Z,,\n"
        );
        let err = c.import_csv(DS, csv.as_bytes()).await.unwrap_err();
        let ConsentError::Rows(rows) = &err else {
            panic!("{err}");
        };
        let lines: Vec<u64> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9]);
        let text = err.to_string();
        for needle in [
            "line 3: unknown purpose `GridOperations`",
            "line 4: controller `stadt` is not this node's organisation `swm`",
            "line 5: unknown status `maybe`",
            "given_at: `yesterday` is not an RFC 3339 time",
            "line 6: expected 8 fields, found 5",
            "line 7: subject `HH-000001` already appears on line 2",
            "line 8: subject_id `HH 7`",
            "dataset `other` is not the imported dataset",
            "status `withdrawn` needs withdrawn_at",
            "line 9: unknown purpose `academicresearch`",
            "lies in the future",
            "is not after given_at",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
        }
        assert_eq!(c.count(DS), 0, "nothing half-imported");
        assert!(err.summary(2).contains("… and 5 more bad row(s)"));
    }

    #[tokio::test]
    async fn header_problems_are_line_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), ManualClock::at_unix_ms(NOW * 1000));
        let err = c
            .import_csv(
                DS,
                b"subject_id,controller,dataset,purposes,status,given_at,nope\n",
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 1: header: unknown column `nope`"),
            "{err}"
        );
        assert!(err.contains("column `withdrawn_at` is missing"), "{err}");
        let err = c
            .import_csv(DS, HEADER.as_bytes())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no consent records"), "{err}");
        let err = c
            .import_csv("Bad Id", HEADER.as_bytes())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("dataset id `Bad Id`"), "{err}");
    }

    #[tokio::test]
    async fn the_demo_consent_file_imports_whole() {
        let data = tempfile::tempdir().unwrap();
        let spec = allmende_connectors::sample::SampleSpec::default();
        let files = allmende_connectors::sample::write_demo_data(data.path(), &spec).unwrap();
        let csv = std::fs::read(&files.consent_csv).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let c = open(dir.path(), ManualClock::at_unix_ms(spec.start * 1000));
        let r = c.import_csv(DS, &csv).await.unwrap();
        assert_eq!((r.rows, r.stored), (files.consent_rows, files.consent_rows));
        // The fixed households of the stories.
        let research = c.permitted_subjects(DS, Purpose::AcademicResearch, spec.start);
        assert!(research.contains("HH-000001"));
        for (subject, status) in [
            ("HH-000002", Some(ConsentStatus::Refused)),
            ("HH-000003", Some(ConsentStatus::Withdrawn)),
            ("HH-000004", None),
        ] {
            assert!(!research.contains(subject), "{subject}");
            assert_eq!(c.record(DS, subject).map(|r| r.status), status, "{subject}");
        }
        // Roughly the documented mix (about 55 % for research).
        let share = research.len() * 100 / spec.households;
        assert!((35..=75).contains(&share), "{share} %");
    }

    #[test]
    fn the_sample_header_and_time_format_are_accepted() {
        let names: Vec<String> = allmende_connectors::sample::consent_fields()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, CSV_COLUMNS);
        // The sample writer's time format.
        assert_eq!(
            parse_time("2025-03-03T08:15:00+00:00").unwrap(),
            NOW + 8 * 3600 + 900
        );
        assert_eq!(format_time(NOW), "2025-03-03T00:00:00Z");
    }
}
