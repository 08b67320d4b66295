//! JSON lines: one JSON object per line; blank lines are ignored. A line that is not a JSON
//! object, or whose values do not fit the declared types, is a broken row. Lines longer than
//! `max_record_bytes` are broken rows too and are skipped without being held in memory.

use std::fs::File;
use std::io::{BufRead, BufReader};

use serde_json::{Map, Value};

use super::rows::{JsonRows, JsonSample, check_json_sample, infer_json_fields};
use super::{
    Chunk, ChunkSink, FileConnectorConfig, FileCtx, FileRef, Flow, Layout, open_file, past_end,
};
use crate::connector::BrokenRow;
use crate::error::ConnectorError;
use crate::schema::FieldSpec;

/// A line-by-line reader with a bound on the line length.
struct Lines {
    reader: BufReader<File>,
    line_no: u64,
    limit: u64,
    buf: Vec<u8>,
}

/// One non-blank line.
enum Line {
    /// The line's text is in `Lines::buf`.
    Text(u64),
    /// The line was longer than the limit and was skipped.
    TooLong(u64),
}

impl Lines {
    fn open(config: &FileConnectorConfig, file: &FileRef) -> Result<Self, ConnectorError> {
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, open_file(file)?),
            line_no: 0,
            limit: config.max_record_bytes,
            buf: Vec::new(),
        })
    }

    fn next(&mut self, file: &FileRef) -> Result<Option<Line>, ConnectorError> {
        let io_err = |e: std::io::Error, line: u64| {
            ConnectorError::source(&file.name, format!("read error at line {line}: {e}"))
        };
        loop {
            self.buf.clear();
            self.line_no += 1;
            let start = self.line_no;
            let mut too_long = false;
            let mut any = false;
            loop {
                let available = self.reader.fill_buf().map_err(|e| io_err(e, start))?;
                if available.is_empty() {
                    break;
                }
                any = true;
                let (take, newline) = match available.iter().position(|&b| b == b'\n') {
                    Some(i) => (i, true),
                    None => (available.len(), false),
                };
                if !too_long {
                    self.buf.extend_from_slice(&available[..take]);
                    if self.buf.len() as u64 > self.limit {
                        too_long = true;
                        self.buf.clear();
                    }
                }
                self.reader.consume(take + usize::from(newline));
                if newline {
                    break;
                }
            }
            if !any {
                return Ok(None);
            }
            if too_long {
                return Ok(Some(Line::TooLong(start)));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Line::Text(start)));
        }
    }

    fn object(&self) -> Result<Map<String, Value>, String> {
        serde_json::from_slice::<Map<String, Value>>(&self.buf)
            .map_err(|e| format!("not a JSON object: {e}"))
    }
}

fn sample(config: &FileConnectorConfig, file: &FileRef) -> Result<JsonSample, ConnectorError> {
    let mut lines = Lines::open(config, file)?;
    let mut out = Vec::new();
    while out.len() < config.sample_rows {
        match lines.next(file)? {
            None => break,
            Some(Line::TooLong(_)) => {}
            Some(Line::Text(line)) => {
                if let Ok(object) = lines.object() {
                    out.push((format!("line {line}"), object));
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn infer(
    config: &FileConnectorConfig,
    file: &FileRef,
) -> Result<Vec<FieldSpec>, ConnectorError> {
    infer_json_fields(&file.name, &sample(config, file)?)
}

pub(crate) fn validate(
    config: &FileConnectorConfig,
    layout: &Layout,
    file: &FileRef,
    with_sample: bool,
) -> Result<(), ConnectorError> {
    if !with_sample {
        open_file(file)?;
        return Ok(());
    }
    check_json_sample(
        &file.name,
        &layout.fields,
        &sample(config, file)?,
        config.ignore_extra_columns,
    )
}

pub(crate) fn read(
    ctx: &FileCtx<'_>,
    file: &FileRef,
    skip: u64,
    sink: &mut ChunkSink<'_>,
) -> Result<(), ConnectorError> {
    let layout = ctx.layout;
    let mut lines = Lines::open(ctx.config, file)?;
    let mut ordinal = 0u64;
    while ordinal < skip {
        if lines.next(file)?.is_none() {
            return Err(past_end(file, skip, ordinal));
        }
        ordinal += 1;
    }
    let mut rows = JsonRows::new(&layout.fields)?;
    loop {
        let mut ordinals = Vec::new();
        let mut line_numbers = Vec::new();
        let mut broken = Vec::new();
        let mut records = 0usize;
        let mut eof = false;
        while records < ctx.batch_size {
            let Some(line) = lines.next(file)? else {
                eof = true;
                break;
            };
            ordinal += 1;
            records += 1;
            let (line_no, outcome) = match line {
                Line::TooLong(n) => (
                    n,
                    Err(format!(
                        "line is longer than {} bytes",
                        ctx.config.max_record_bytes
                    )),
                ),
                Line::Text(n) => (n, lines.object().and_then(|o| rows.push(&o))),
            };
            match outcome {
                Ok(()) => {
                    ordinals.push(ordinal);
                    line_numbers.push(line_no);
                }
                Err(reason) => broken.push(BrokenRow {
                    file: file.name.clone(),
                    row: ordinal,
                    line: Some(line_no),
                    reason,
                }),
            }
        }
        if records == 0 {
            return Ok(());
        }
        let chunk = Chunk {
            batch: rows.finish(&layout.work_schema)?,
            ordinals,
            lines: Some(line_numbers),
            broken,
            end_ordinal: ordinal,
        };
        if sink(chunk)? == Flow::Stop || eof {
            return Ok(());
        }
    }
}
