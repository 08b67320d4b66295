//! The release stages, each a pure function over a record batch, tested one
//! by one: row filter → consent filter → pseudonymise → project → encode.

use super::filter::{Filter, FilterError};
use arrow::array::{Array, ArrayRef, BooleanArray, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// A failure inside the pipeline (never a panic).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("release stage failed: {0}")]
    Arrow(String),
}

fn arrow_err(e: arrow::error::ArrowError) -> PipelineError {
    PipelineError::Arrow(e.to_string())
}

/// Rows of subjects without valid consent for the purpose never leave.
#[derive(Debug, Clone)]
pub struct ConsentGate {
    pub subject_column: String,
    pub permitted: HashSet<String>,
}

/// The label the node's pseudonym key is derived under for a read: per
/// grant, or per caller without one. The release pipeline and an erasure's
/// notice (the pseudonym a recipient holds) both use it.
pub fn pseudonym_key_label(grant_id: Option<&str>, caller: &str) -> String {
    match grant_id {
        Some(g) => format!("grant:{g}"),
        None => format!("caller:{caller}"),
    }
}

/// Replaces identifying values by keyed pseudonyms (HMAC-SHA-256, keyed per
/// grant or per caller): the same subject gets the same pseudonym within one
/// grant, and different ones across grants.
#[derive(Clone)]
pub struct Pseudonymiser {
    key: ring::hmac::Key,
    pub columns: Vec<String>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymiser")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl Pseudonymiser {
    pub fn new(key: [u8; 32], columns: Vec<String>) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
            columns,
        }
    }

    /// The pseudonym of one value of column `column`.
    pub fn pseudonym(&self, column: &str, value: &str) -> String {
        let mut out = [0u8; PSEUDONYM_LEN];
        pseudonym_of(self.column_mac(column), value, &mut out).to_owned()
    }

    /// The MAC state after the column's name: cloned for each of its values.
    fn column_mac(&self, column: &str) -> ring::hmac::Context {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(column.as_bytes());
        ctx.update(&[0]);
        ctx
    }
}

/// `p-` and 24 hex digits.
const PSEUDONYM_LEN: usize = 26;

/// The pseudonym of `value` under the MAC state of its column, written into `out`.
fn pseudonym_of<'a>(
    mut ctx: ring::hmac::Context,
    value: &str,
    out: &'a mut [u8; PSEUDONYM_LEN],
) -> &'a str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    ctx.update(value.as_bytes());
    let tag = ctx.sign();
    out[0] = b'p';
    out[1] = b'-';
    for (i, b) in tag.as_ref().iter().take(12).enumerate() {
        out[2 + 2 * i] = HEX[usize::from(b >> 4)];
        out[3 + 2 * i] = HEX[usize::from(b & 0x0f)];
    }
    // Only ASCII was written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// Everything the stages need, fixed per request.
#[derive(Debug, Clone)]
pub struct Stages {
    pub filter: Option<Filter>,
    pub consent: Option<ConsentGate>,
    pub pseudonymiser: Pseudonymiser,
    /// Columns to return, in order; `None` = all.
    pub projection: Option<Vec<String>>,
}

/// What one batch went through.
#[derive(Debug, Default, Clone)]
pub struct StageStats {
    pub rows_in: u64,
    pub rows_out: u64,
    /// Withheld for missing consent (audit only; never told to the caller).
    pub rows_without_consent: u64,
    /// Distinct subjects whose rows were released (clear; hashed by the audit log).
    pub subjects: BTreeSet<String>,
}

/// Keeps the rows where `mask` is true (null = false).
pub fn keep(batch: &RecordBatch, mask: &BooleanArray) -> Result<RecordBatch, PipelineError> {
    arrow::compute::filter_record_batch(batch, mask).map_err(arrow_err)
}

/// Stage: the caller's row filter.
pub fn row_filter(
    batch: RecordBatch,
    filter: Option<&Filter>,
) -> Result<RecordBatch, PipelineError> {
    match filter {
        None => Ok(batch),
        Some(f) => {
            let mask = f.evaluate(&batch)?;
            keep(&batch, &mask)
        }
    }
}

fn as_strings(col: &ArrayRef) -> Result<StringArray, PipelineError> {
    let s = arrow::compute::cast(col, &DataType::Utf8).map_err(arrow_err)?;
    s.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| PipelineError::Arrow("cast to string failed".into()))
}

/// Stage: consent. Returns the kept rows and how many were withheld. A row
/// whose subject is null is withheld (no subject, no consent).
pub fn consent_filter(
    batch: RecordBatch,
    gate: Option<&ConsentGate>,
) -> Result<(RecordBatch, u64), PipelineError> {
    let Some(g) = gate else {
        return Ok((batch, 0));
    };
    let col = batch.column_by_name(&g.subject_column).ok_or_else(|| {
        PipelineError::Arrow(format!("subject column `{}` missing", g.subject_column))
    })?;
    let subjects = as_strings(col)?;
    let mask: BooleanArray = subjects
        .iter()
        .map(|s| Some(s.is_some_and(|s| g.permitted.contains(s))))
        .collect();
    let before = batch.num_rows();
    let kept = keep(&batch, &mask)?;
    let withheld = u64::try_from(before - kept.num_rows()).unwrap_or(0);
    Ok((kept, withheld))
}

/// The distinct values of the subject column (before pseudonymisation).
pub fn subjects_of(
    batch: &RecordBatch,
    column: Option<&str>,
) -> Result<BTreeSet<String>, PipelineError> {
    let Some(c) = column.and_then(|c| batch.column_by_name(c)) else {
        return Ok(BTreeSet::new());
    };
    Ok(as_strings(c)?.iter().flatten().map(str::to_owned).collect())
}

/// Stage: pseudonymise every identifying column (values become strings).
pub fn pseudonymise(batch: RecordBatch, p: &Pseudonymiser) -> Result<RecordBatch, PipelineError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        if p.columns.iter().any(|c| c == field.name()) {
            let values = as_strings(col)?;
            let mac = p.column_mac(field.name());
            let mut buf = [0u8; PSEUDONYM_LEN];
            let mut out = StringBuilder::with_capacity(values.len(), values.len() * PSEUDONYM_LEN);
            for v in values.iter() {
                match v {
                    Some(v) => out.append_value(pseudonym_of(mac.clone(), v, &mut buf)),
                    None => out.append_null(),
                }
            }
            let out = out.finish();
            fields.push(
                Field::new(field.name(), DataType::Utf8, field.is_nullable())
                    .with_metadata(field.metadata().clone()),
            );
            columns.push(Arc::new(out));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(col.clone());
        }
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    RecordBatch::try_new(schema, columns).map_err(arrow_err)
}

/// Stage: keep the requested columns, in the requested order.
pub fn project(
    batch: RecordBatch,
    columns: Option<&[String]>,
) -> Result<RecordBatch, PipelineError> {
    let Some(cols) = columns else {
        return Ok(batch);
    };
    let schema = batch.schema();
    let idx: Vec<usize> = cols
        .iter()
        .map(|c| {
            schema
                .index_of(c)
                .map_err(|_| PipelineError::Arrow(format!("column `{c}` missing")))
        })
        .collect::<Result<_, _>>()?;
    batch.project(&idx).map_err(arrow_err)
}

/// Which rows of a batch the row filter and the consent gate release (`true`
/// = released; a null is never released), and how many of the rows the row
/// filter kept were withheld for missing consent.
pub fn release_mask(
    batch: &RecordBatch,
    stages: &Stages,
) -> Result<(BooleanArray, u64), PipelineError> {
    let n = batch.num_rows();
    let filtered: BooleanArray = match &stages.filter {
        None => BooleanArray::from(vec![true; n]),
        Some(f) => f
            .evaluate(batch)?
            .iter()
            .map(|v| Some(v == Some(true)))
            .collect(),
    };
    let Some(g) = &stages.consent else {
        return Ok((filtered, 0));
    };
    let col = batch.column_by_name(&g.subject_column).ok_or_else(|| {
        PipelineError::Arrow(format!("subject column `{}` missing", g.subject_column))
    })?;
    let subjects = as_strings(col)?;
    let mut withheld = 0u64;
    let mask: BooleanArray = subjects
        .iter()
        .zip(filtered.iter())
        .map(|(s, kept)| {
            let kept = kept == Some(true);
            let consented = s.is_some_and(|s| g.permitted.contains(s));
            if kept && !consented {
                withheld += 1;
            }
            Some(kept && consented)
        })
        .collect();
    Ok((mask, withheld))
}

/// Index of the row at which `mask` has its `n`-th `true` (1-based `n`).
pub fn nth_released(mask: &BooleanArray, n: u64) -> Option<usize> {
    let mut seen = 0u64;
    for (i, v) in mask.iter().enumerate() {
        if v == Some(true) {
            seen += 1;
            if seen == n {
                return Some(i);
            }
        }
    }
    None
}

/// Runs every stage over one batch.
pub fn run(
    batch: RecordBatch,
    stages: &Stages,
    subject_column: Option<&str>,
) -> Result<(RecordBatch, StageStats), PipelineError> {
    let (mask, withheld) = release_mask(&batch, stages)?;
    run_masked(batch, &mask, withheld, stages, subject_column)
}

/// Runs the stages after the release decision over one batch whose
/// released rows `mask` (from [`release_mask`]) marks.
pub fn run_masked(
    batch: RecordBatch,
    mask: &BooleanArray,
    withheld: u64,
    stages: &Stages,
    subject_column: Option<&str>,
) -> Result<(RecordBatch, StageStats), PipelineError> {
    let mut stats = StageStats {
        rows_in: u64::try_from(batch.num_rows()).unwrap_or(0),
        rows_without_consent: withheld,
        ..Default::default()
    };
    let b = keep(&batch, mask)?;
    stats.subjects = subjects_of(&b, subject_column)?;
    let b = pseudonymise(b, &stages.pseudonymiser)?;
    let b = project(b, stages.projection.as_deref())?;
    stats.rows_out = u64::try_from(b.num_rows()).unwrap_or(0);
    Ok((b, stats))
}

/// Cuts released rows into batches of exactly `rows` rows (the last one of a
/// response may be shorter), so that the batch boundaries a caller sees depend
/// only on the released rows, not on how the source's batches fell or how
/// many of their rows were withheld. Holds fewer than `rows` rows between
/// calls.
#[derive(Debug)]
pub struct Rebatcher {
    rows: usize,
    held: Vec<RecordBatch>,
    held_rows: usize,
}

impl Rebatcher {
    pub fn new(rows: usize) -> Self {
        Self {
            rows: rows.max(1),
            held: Vec::new(),
            held_rows: 0,
        }
    }

    /// Adds released rows; returns the batches that are full.
    pub fn push(&mut self, batch: RecordBatch) -> Result<Vec<RecordBatch>, PipelineError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        self.held_rows += batch.num_rows();
        self.held.push(batch);
        let mut out = Vec::new();
        if self.held_rows < self.rows {
            return Ok(out);
        }
        let schema = self.held[0].schema();
        let all = arrow::compute::concat_batches(&schema, &self.held).map_err(arrow_err)?;
        self.held.clear();
        let mut at = 0;
        while all.num_rows() - at >= self.rows {
            out.push(all.slice(at, self.rows));
            at += self.rows;
        }
        self.held_rows = all.num_rows() - at;
        if self.held_rows > 0 {
            self.held.push(all.slice(at, self.held_rows));
        }
        Ok(out)
    }

    /// The rows still held, as one batch; nothing is held afterwards.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, PipelineError> {
        let held = std::mem::take(&mut self.held);
        self.held_rows = 0;
        let Some(first) = held.first() else {
            return Ok(None);
        };
        let schema = first.schema();
        arrow::compute::concat_batches(&schema, &held)
            .map(Some)
            .map_err(arrow_err)
    }
}

/// The schema the caller receives (for the IPC stream header).
pub fn output_schema(input: &SchemaRef, stages: &Stages) -> Result<SchemaRef, PipelineError> {
    let empty = RecordBatch::new_empty(input.clone());
    let (b, _) = run(
        empty,
        &Stages {
            consent: None,
            ..stages.clone()
        },
        None,
    )?;
    Ok(b.schema())
}

/// Encodes batches as one Arrow IPC stream, handing out the bytes as they
/// are produced (so nothing accumulates).
pub struct IpcEncoder {
    writer: arrow::ipc::writer::StreamWriter<Vec<u8>>,
}

impl std::fmt::Debug for IpcEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcEncoder").finish_non_exhaustive()
    }
}

impl IpcEncoder {
    /// Starts a stream with `schema`; [`IpcEncoder::take`] returns its header.
    pub fn new(schema: &Schema) -> Result<Self, PipelineError> {
        Ok(Self {
            writer: arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)
                .map_err(arrow_err)?,
        })
    }

    /// Encodes one batch.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), PipelineError> {
        self.writer.write(batch).map_err(arrow_err)
    }

    /// The bytes encoded since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(self.writer.get_mut())
    }

    /// Ends the stream; returns the last bytes.
    pub fn finish(&mut self) -> Result<Vec<u8>, PipelineError> {
        self.writer.finish().map_err(arrow_err)?;
        Ok(self.take())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use crate::access::filter::{CompareOp, FilterValue};
    use arrow::array::Float64Array;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("household_id", DataType::Utf8, true),
            Field::new("meter_id", DataType::Utf8, false),
            Field::new("kwh", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("HH-1"),
                    Some("HH-2"),
                    None,
                    Some("HH-1"),
                ])),
                Arc::new(StringArray::from(vec!["M-1", "M-2", "M-3", "M-1"])),
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])),
            ],
        )
        .unwrap()
    }

    fn stages(permitted: &[&str]) -> Stages {
        Stages {
            filter: None,
            consent: Some(ConsentGate {
                subject_column: "household_id".into(),
                permitted: permitted.iter().map(|s| (*s).to_owned()).collect(),
            }),
            pseudonymiser: Pseudonymiser::new(
                [7; 32],
                vec!["household_id".into(), "meter_id".into()],
            ),
            projection: None,
        }
    }

    #[test]
    fn consent_keeps_only_permitted_subjects_and_drops_null_subjects() {
        let (b, withheld) = consent_filter(batch(), stages(&["HH-1"]).consent.as_ref()).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(withheld, 2);
    }

    #[test]
    fn pseudonyms_are_the_truncated_hmac_of_column_and_value() {
        // The released form must not change across versions: a grant's
        // pseudonyms stay linkable between its reads.
        let key = [7u8; 32];
        let p = Pseudonymiser::new(key, vec!["household_id".into()]);
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
        let tag = ring::hmac::sign(&k, b"household_id\0HH-1");
        let want = format!("p-{}", hex::encode(&tag.as_ref()[..12]));
        assert_eq!(p.pseudonym("household_id", "HH-1"), want);
        let (b, _) = run(batch(), &stages(&["HH-1"]), None).unwrap();
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.value(0), want);
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_hide_the_value() {
        let s = stages(&["HH-1", "HH-2"]);
        let (b, stats) = run(batch(), &s, Some("household_id")).unwrap();
        assert_eq!(stats.rows_out, 3);
        assert_eq!(stats.subjects.len(), 2);
        let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(ids.value(0), ids.value(2), "same subject, same pseudonym");
        assert_ne!(ids.value(0), ids.value(1));
        let mut enc = IpcEncoder::new(&b.schema()).unwrap();
        enc.write(&b).unwrap();
        let mut bytes = enc.take();
        bytes.extend(enc.finish().unwrap());
        for raw in [&b"HH-1"[..], b"HH-2", b"M-1", b"M-2"] {
            assert!(
                !bytes.windows(raw.len()).any(|w| w == raw),
                "raw identifier leaked"
            );
        }
        // Another key (another grant) gives other pseudonyms.
        let other = Pseudonymiser::new([8; 32], vec!["household_id".into()]);
        assert_ne!(other.pseudonym("household_id", "HH-1"), ids.value(0));
        // The stream decodes.
        let reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 3);
    }

    #[test]
    fn the_release_mask_is_the_row_filter_and_the_consent_gate() {
        let mut s = stages(&["HH-1"]);
        s.filter = Some(Filter::Compare {
            column: "kwh".into(),
            op: CompareOp::Gt,
            value: FilterValue::Float(1.5),
        });
        let (mask, withheld) = release_mask(&batch(), &s).unwrap();
        // Rows: HH-1 1.0 (filtered), HH-2 2.0 (no consent), null 3.0 (no
        // subject), HH-1 4.0 (released).
        assert_eq!(
            mask.iter().collect::<Vec<_>>(),
            vec![Some(false), Some(false), Some(false), Some(true)]
        );
        assert_eq!(withheld, 2, "only rows the filter kept count as withheld");
        assert_eq!(nth_released(&mask, 1), Some(3));
        assert_eq!(nth_released(&mask, 2), None);
        let (b, stats) = run_masked(batch(), &mask, withheld, &s, Some("household_id")).unwrap();
        assert_eq!(b.num_rows(), 1);
        assert_eq!(stats.rows_without_consent, 2);
        assert_eq!(stats.subjects.len(), 1);
    }

    #[test]
    fn the_rebatcher_cuts_fixed_size_batches_whatever_came_in() {
        let rows = |n: usize| {
            let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Float64, false)]));
            RecordBatch::try_new(
                schema,
                vec![Arc::new(Float64Array::from(
                    (0..n).map(|i| i as f64).collect::<Vec<_>>(),
                ))],
            )
            .unwrap()
        };
        // The same 23 rows arriving in different pieces give the same batches.
        let mut shapes = Vec::new();
        for pieces in [vec![23], vec![1; 23], vec![5, 0, 9, 2, 7], vec![0, 22, 1]] {
            let mut r = Rebatcher::new(4);
            let mut out = Vec::new();
            for p in pieces {
                out.extend(r.push(rows(p)).unwrap().iter().map(RecordBatch::num_rows));
            }
            out.extend(r.finish().unwrap().map(|b| b.num_rows()));
            assert!(r.finish().unwrap().is_none());
            shapes.push(out);
        }
        assert_eq!(shapes[0], vec![4, 4, 4, 4, 4, 3]);
        assert!(shapes.iter().all(|s| s == &shapes[0]), "{shapes:?}");
    }

    #[test]
    fn filter_then_project_in_request_order() {
        let mut s = stages(&["HH-1", "HH-2"]);
        s.filter = Some(Filter::Compare {
            column: "kwh".into(),
            op: CompareOp::Gt,
            value: FilterValue::Float(1.5),
        });
        s.projection = Some(vec!["kwh".into(), "household_id".into()]);
        let (b, stats) = run(batch(), &s, Some("household_id")).unwrap();
        assert_eq!(b.schema().field(0).name(), "kwh");
        assert_eq!(b.num_rows(), 2, "HH-2 at 2.0 and HH-1 at 4.0");
        assert_eq!(stats.rows_without_consent, 1, "the null subject at 3.0");
        let out = output_schema(&batch().schema(), &s).unwrap();
        assert_eq!(out.field(1).data_type(), &DataType::Utf8);
    }
}
