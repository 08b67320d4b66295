//! CSV files: records are split by the `csv` crate (so a record with the wrong number of fields
//! is a broken row, not a failed batch) and typed column by column with Arrow's cast kernels
//! (so a value that does not parse is a broken row, never a silently wrong value).
//! Empty fields are nulls; values of non-string columns are trimmed before parsing.

use std::cell::Cell;
use std::fs::File;
use std::rc::Rc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, StringBuilder};
use arrow::compute::filter_record_batch;

use super::rows::{cast_strings, count_failures, infer_text_type};
use super::{
    Chunk, ChunkSink, FileConnectorConfig, FileCtx, FileRef, Flow, Layout, LimitedReader,
    is_too_large, open_file, past_end,
};
use crate::connector::BrokenRow;
use crate::error::{ConnectorError, snippet};
use crate::schema::{FieldSpec, FieldType};

type Reader = csv::Reader<LimitedReader<File>>;

struct Opened {
    reader: Reader,
    counter: Rc<Cell<u64>>,
    limit: u64,
    /// Line of the last record read, for error messages.
    last_line: u64,
}

impl Opened {
    fn open(config: &FileConnectorConfig, file: &FileRef) -> Result<Self, ConnectorError> {
        let (limited, counter) = LimitedReader::new(open_file(file)?, config.max_record_bytes);
        let reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(config.csv.delimiter as u8)
            .buffer_capacity(64 * 1024)
            .from_reader(limited);
        Ok(Self {
            reader,
            counter,
            limit: config.max_record_bytes,
            last_line: 0,
        })
    }

    /// Reads the next record; `Ok(false)` at the end of the file.
    fn next(
        &mut self,
        file: &FileRef,
        record: &mut csv::ByteRecord,
    ) -> Result<bool, ConnectorError> {
        self.counter.set(0);
        match self.reader.read_byte_record(record) {
            Ok(more) => {
                if let Some(p) = record.position() {
                    self.last_line = p.line();
                }
                Ok(more)
            }
            Err(e) => {
                let reason = match e.kind() {
                    csv::ErrorKind::Io(io) if is_too_large(io) => format!(
                        "a record after line {} is larger than {} bytes (unbalanced quote?)",
                        self.last_line, self.limit
                    ),
                    csv::ErrorKind::Io(io) => {
                        format!("read error after line {}: {io}", self.last_line)
                    }
                    _ => format!("after line {}: {e}", self.last_line),
                };
                Err(ConnectorError::source(&file.name, reason))
            }
        }
    }

    fn header(&mut self, file: &FileRef) -> Result<Vec<String>, ConnectorError> {
        let mut record = csv::ByteRecord::new();
        if !self.next(file, &mut record)? {
            return Err(ConnectorError::source(
                &file.name,
                "the file is empty: no header line",
            ));
        }
        let mut names = Vec::with_capacity(record.len());
        for (i, raw) in record.iter().enumerate() {
            let text = std::str::from_utf8(raw).map_err(|_| {
                ConnectorError::source(
                    &file.name,
                    format!("header field {} is not valid UTF-8", i + 1),
                )
            })?;
            let text = if i == 0 {
                text.trim_start_matches('\u{feff}')
            } else {
                text
            };
            let name = text.trim().to_string();
            if name.is_empty() {
                return Err(ConnectorError::source(
                    &file.name,
                    format!("header field {} has no name", i + 1),
                ));
            }
            if names.contains(&name) {
                return Err(ConnectorError::source(
                    &file.name,
                    format!("column `{name}` appears twice in the header"),
                ));
            }
            names.push(name);
        }
        Ok(names)
    }
}

/// Where each declared column is in a record, and how many fields a record has.
fn map_columns(
    config: &FileConnectorConfig,
    fields: &[FieldSpec],
    header: Option<&[String]>,
    file: &FileRef,
) -> Result<(Vec<usize>, usize), ConnectorError> {
    let Some(header) = header else {
        return Ok(((0..fields.len()).collect(), fields.len()));
    };
    let mut mapping = Vec::with_capacity(fields.len());
    for f in fields {
        let idx = header.iter().position(|h| h == &f.name).ok_or_else(|| {
            ConnectorError::mismatch(
                &file.name,
                &f.name,
                format!(
                    "declared {}, but the header has no such column (it has: {})",
                    f.field_type,
                    snippet(&header.join(", "))
                ),
            )
        })?;
        mapping.push(idx);
    }
    if !config.ignore_extra_columns
        && let Some(extra) = header
            .iter()
            .find(|h| !fields.iter().any(|f| &f.name == *h))
    {
        return Err(ConnectorError::mismatch(
            &file.name,
            extra,
            "in the header but not declared (set `ignore_extra_columns` to skip it)",
        ));
    }
    Ok((mapping, header.len()))
}

/// The first `n` well-formed records: line number and fields.
fn sample(
    opened: &mut Opened,
    file: &FileRef,
    n: usize,
    width: usize,
) -> Result<Vec<(u64, Vec<String>)>, ConnectorError> {
    let mut out = Vec::new();
    let mut record = csv::ByteRecord::new();
    while out.len() < n && opened.next(file, &mut record)? {
        if record.len() != width {
            continue;
        }
        let fields: Option<Vec<String>> = record
            .iter()
            .map(|f| std::str::from_utf8(f).ok().map(str::to_string))
            .collect();
        if let Some(fields) = fields {
            out.push((opened.last_line, fields));
        }
    }
    Ok(out)
}

pub(crate) fn infer(
    config: &FileConnectorConfig,
    file: &FileRef,
) -> Result<Vec<FieldSpec>, ConnectorError> {
    let mut opened = Opened::open(config, file)?;
    let header = opened.header(file)?;
    let rows = sample(&mut opened, file, config.sample_rows, header.len())?;
    header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let values: Vec<&str> = rows
                .iter()
                .map(|(_, r)| r[i].trim())
                .filter(|v| !v.is_empty())
                .collect();
            Ok(FieldSpec::new(name.clone(), infer_text_type(&values)?))
        })
        .collect()
}

pub(crate) fn validate(
    config: &FileConnectorConfig,
    layout: &Layout,
    file: &FileRef,
    with_sample: bool,
) -> Result<(), ConnectorError> {
    let mut opened = Opened::open(config, file)?;
    let header = if config.csv.header {
        Some(opened.header(file)?)
    } else {
        None
    };
    let (mapping, width) = map_columns(config, &layout.fields, header.as_deref(), file)?;
    if !with_sample {
        return Ok(());
    }
    let rows = sample(&mut opened, file, config.sample_rows, width)?;
    for (f, &idx) in layout.fields.iter().zip(&mapping) {
        if f.field_type == FieldType::String {
            continue;
        }
        let present: Vec<(u64, &str)> = rows
            .iter()
            .map(|(line, r)| (*line, r[idx].trim()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let values: Vec<&str> = present.iter().map(|(_, v)| *v).collect();
        let (failures, first) = count_failures(&values, f.field_type)?;
        if failures * 2 > values.len() {
            let example = first
                .and_then(|i| present.get(i))
                .map(|(line, v)| format!(", e.g. `{}` at line {line}", snippet(v)))
                .unwrap_or_default();
            return Err(ConnectorError::mismatch(
                &file.name,
                &f.name,
                format!(
                    "declared {}, but {failures} of {} sampled values do not parse{example}",
                    f.field_type,
                    values.len()
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn read(
    ctx: &FileCtx<'_>,
    file: &FileRef,
    skip: u64,
    sink: &mut ChunkSink<'_>,
) -> Result<(), ConnectorError> {
    let config = ctx.config;
    let layout = ctx.layout;
    let mut opened = Opened::open(config, file)?;
    let header = if config.csv.header {
        Some(opened.header(file)?)
    } else {
        None
    };
    let (mapping, width) = map_columns(config, &layout.fields, header.as_deref(), file)?;
    let mut record = csv::ByteRecord::new();
    let mut ordinal = 0u64;
    while ordinal < skip {
        if !opened.next(file, &mut record)? {
            return Err(past_end(file, skip, ordinal));
        }
        ordinal += 1;
    }
    let trims: Vec<bool> = layout
        .fields
        .iter()
        .map(|f| f.field_type != FieldType::String)
        .collect();
    loop {
        let mut builders: Vec<StringBuilder> =
            layout.fields.iter().map(|_| StringBuilder::new()).collect();
        let mut ordinals = Vec::new();
        let mut lines = Vec::new();
        let mut broken = Vec::new();
        let mut records = 0usize;
        let mut eof = false;
        while records < ctx.batch_size {
            if !opened.next(file, &mut record)? {
                eof = true;
                break;
            }
            ordinal += 1;
            records += 1;
            let line = opened.last_line;
            let broken_row = |reason: String| BrokenRow {
                file: file.name.clone(),
                row: ordinal,
                line: Some(line),
                reason,
            };
            if record.len() != width {
                broken.push(broken_row(format!(
                    "expected {width} fields, found {}",
                    record.len()
                )));
                continue;
            }
            let mut values: Vec<&str> = Vec::with_capacity(mapping.len());
            let mut bad_utf8 = None;
            for (j, &idx) in mapping.iter().enumerate() {
                match record.get(idx).map(std::str::from_utf8) {
                    Some(Ok(v)) => values.push(if trims[j] { v.trim() } else { v }),
                    _ => {
                        bad_utf8 = Some(j);
                        break;
                    }
                }
            }
            if let Some(j) = bad_utf8 {
                broken.push(broken_row(format!(
                    "column `{}` is not valid UTF-8",
                    layout.fields[j].name
                )));
                continue;
            }
            for (b, v) in builders.iter_mut().zip(&values) {
                if v.is_empty() {
                    b.append_null();
                } else {
                    b.append_value(v);
                }
            }
            ordinals.push(ordinal);
            lines.push(line);
        }
        if records == 0 {
            return Ok(());
        }
        let chunk = typed_chunk(layout, file, builders, ordinals, lines, broken, ordinal)?;
        if sink(chunk)? == Flow::Stop || eof {
            return Ok(());
        }
    }
}

/// Types the string columns of a chunk; values that do not parse make their row broken.
fn typed_chunk(
    layout: &Layout,
    file: &FileRef,
    builders: Vec<StringBuilder>,
    ordinals: Vec<u64>,
    lines: Vec<u64>,
    mut broken: Vec<BrokenRow>,
    end_ordinal: u64,
) -> Result<Chunk, ConnectorError> {
    let mut reasons: Vec<Option<String>> = vec![None; ordinals.len()];
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(builders.len());
    for (f, mut b) in layout.fields.iter().zip(builders) {
        let strings: StringArray = b.finish();
        let (typed, failed) = cast_strings(&strings, f.field_type)?;
        for (row, failed) in failed.into_iter().enumerate() {
            if failed && reasons[row].is_none() {
                reasons[row] = Some(format!(
                    "column `{}`: cannot read `{}` as {}",
                    f.name,
                    snippet(strings.value(row)),
                    f.field_type
                ));
            }
        }
        columns.push(typed);
    }
    let batch = RecordBatch::try_new(layout.work_schema.clone(), columns)
        .map_err(|e| ConnectorError::Internal(format!("cannot build a batch: {e}")))?;
    if reasons.iter().all(Option::is_none) {
        return Ok(Chunk {
            batch,
            ordinals,
            lines: Some(lines),
            broken,
            end_ordinal,
        });
    }
    let keep: Vec<bool> = reasons.iter().map(Option::is_none).collect();
    let batch = filter_record_batch(&batch, &BooleanArray::from(keep.clone()))
        .map_err(|e| ConnectorError::Internal(format!("cannot filter a batch: {e}")))?;
    let mut kept_ordinals = Vec::with_capacity(batch.num_rows());
    let mut kept_lines = Vec::with_capacity(batch.num_rows());
    for ((ordinal, line), reason) in ordinals.into_iter().zip(lines).zip(reasons) {
        match reason {
            None => {
                kept_ordinals.push(ordinal);
                kept_lines.push(line);
            }
            Some(reason) => broken.push(BrokenRow {
                file: file.name.clone(),
                row: ordinal,
                line: Some(line),
                reason,
            }),
        }
    }
    broken.sort_by_key(|b| b.row);
    Ok(Chunk {
        batch,
        ordinals: kept_ordinals,
        lines: Some(kept_lines),
        broken,
        end_ordinal,
    })
}
