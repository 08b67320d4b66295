//! The conformance suite every [`Connector`] implementation must pass (feature `conformance`).
//!
//! Each check reads through the public trait only and returns a [`ConformanceFailure`] naming
//! the check and what was wrong; [`run_all`] runs them all. The checks:
//! - **description**: subject and identifier columns exist and carry their role metadata;
//! - **schema matches rows**: every batch has exactly the described schema, required columns
//!   hold no nulls, the summary is the last item and its counts match the items;
//! - **broken rows counted**: every broken row is reported once, with a location and a reason,
//!   and the summary counts them;
//! - **projection**: projected reads return the projected schema and the same values;
//! - **cursor resumes exactly**: paging with `max_rows`, stopping mid-stream and resuming from a
//!   batch cursor, and resuming from the final cursor give exactly the rows of one full read;
//! - **cancellation releases the source**: a stalled consumer keeps the reader bounded, and
//!   dropping the stream releases the source;
//! - **invalid requests**: bad batch size, unknown column and a cursor of the wrong kind are
//!   refused with typed errors;
//! - **health**: the health check passes.

use std::collections::HashSet;
use std::time::Duration;

use arrow::array::{Array, RecordBatch};
use futures::StreamExt;

use crate::connector::{
    CollectedRead, Connector, Cursor, CursorValue, READ_QUEUE_CAPACITY, ReadItem, ReadRequest,
};
use crate::error::ConnectorError;
use crate::schema::{ROLE_IDENTIFIER, ROLE_METADATA_KEY, ROLE_SUBJECT};

/// What the caller knows about the source (`None`: not checked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expectations {
    /// Good rows in the source.
    pub rows: Option<u64>,
    /// Broken rows in the source.
    pub broken: Option<u64>,
}

/// A failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conformance check `{check}` failed: {detail}")]
pub struct ConformanceFailure {
    /// The check.
    pub check: &'static str,
    /// What was wrong.
    pub detail: String,
}

/// The checks that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceReport {
    /// Names of the passed checks, in order.
    pub passed: Vec<&'static str>,
    /// Rows of a full read.
    pub rows: u64,
    /// Broken rows of a full read.
    pub broken: u64,
}

fn fail(check: &'static str, detail: impl Into<String>) -> ConformanceFailure {
    ConformanceFailure {
        check,
        detail: detail.into(),
    }
}

fn ensure(
    check: &'static str,
    ok: bool,
    detail: impl FnOnce() -> String,
) -> Result<(), ConformanceFailure> {
    if ok {
        Ok(())
    } else {
        Err(fail(check, detail()))
    }
}

async fn collect(
    check: &'static str,
    connector: &dyn Connector,
    request: ReadRequest,
) -> Result<CollectedRead, ConformanceFailure> {
    let stream = connector
        .read(request)
        .await
        .map_err(|e| fail(check, format!("read failed: {e}")))?;
    let collected = stream
        .collect_all()
        .await
        .map_err(|e| fail(check, format!("stream failed: {e}")))?;
    ensure(check, collected.summary.is_some(), || {
        "the stream ended without a summary".into()
    })?;
    Ok(collected)
}

fn concat(check: &'static str, read: &CollectedRead) -> Result<RecordBatch, ConformanceFailure> {
    read.concat().map_err(|e| fail(check, e.to_string()))
}

/// Runs every check.
pub async fn run_all(
    connector: &dyn Connector,
    expect: &Expectations,
) -> Result<ConformanceReport, ConformanceFailure> {
    let mut passed = Vec::new();
    check_description(connector)?;
    passed.push("description");
    let full = check_schema_matches_rows(connector, expect).await?;
    passed.push("schema matches rows");
    check_broken_rows_counted(&full, expect)?;
    passed.push("broken rows counted");
    check_projection(connector, &full).await?;
    passed.push("projection");
    check_cursor_resumes_exactly(connector, &full).await?;
    passed.push("cursor resumes exactly");
    check_cancellation_releases_source(connector).await?;
    passed.push("cancellation releases the source");
    check_invalid_requests(connector).await?;
    passed.push("invalid requests");
    check_health(connector).await?;
    passed.push("health");
    Ok(ConformanceReport {
        passed,
        rows: full.num_rows() as u64,
        broken: full.broken.len() as u64,
    })
}

/// The subject and identifier columns exist and carry their role.
pub fn check_description(connector: &dyn Connector) -> Result<(), ConformanceFailure> {
    const CHECK: &str = "description";
    let d = connector.describe();
    let role = |name: &str| {
        d.schema
            .field_with_name(name)
            .ok()
            .map(|f| f.metadata().get(ROLE_METADATA_KEY).cloned())
    };
    if let Some(subject) = &d.subject_column {
        ensure(
            CHECK,
            role(subject) == Some(Some(ROLE_SUBJECT.into())),
            || format!("subject column `{subject}` is missing or lacks its role"),
        )?;
    }
    for id in &d.identifier_columns {
        ensure(
            CHECK,
            role(id) == Some(Some(ROLE_IDENTIFIER.into())),
            || format!("identifier column `{id}` is missing or lacks its role"),
        )?;
    }
    if let Some(cursor) = &d.cursor_column {
        ensure(CHECK, d.schema.field_with_name(cursor).is_ok(), || {
            format!("cursor column `{cursor}` is not in the schema")
        })?;
    }
    Ok(())
}

/// A full read: batches match the schema, required columns are filled, the summary is last and
/// counts right. Returns the read for the other checks.
pub async fn check_schema_matches_rows(
    connector: &dyn Connector,
    expect: &Expectations,
) -> Result<CollectedRead, ConformanceFailure> {
    const CHECK: &str = "schema matches rows";
    const BATCH: usize = 64;
    let d = connector.describe();
    let mut stream = connector
        .read(ReadRequest::new().batch_size(BATCH))
        .await
        .map_err(|e| fail(CHECK, format!("read failed: {e}")))?;
    ensure(CHECK, stream.schema() == d.schema, || {
        "the stream's schema differs from the described schema".into()
    })?;
    let mut out = CollectedRead {
        schema: d.schema.clone(),
        batches: Vec::new(),
        broken: Vec::new(),
        summary: None,
    };
    while let Some(item) = stream.next().await {
        let item = item.map_err(|e| fail(CHECK, format!("stream failed: {e}")))?;
        ensure(CHECK, out.summary.is_none(), || {
            "an item followed the summary".into()
        })?;
        match item {
            ReadItem::Batch { batch, cursor } => {
                ensure(CHECK, batch.schema() == d.schema, || {
                    format!(
                        "batch {} has schema {:?}, described {:?}",
                        out.batches.len(),
                        batch.schema(),
                        d.schema
                    )
                })?;
                ensure(
                    CHECK,
                    batch.num_rows() > 0 && batch.num_rows() <= BATCH,
                    || format!("a batch has {} rows (batch size {BATCH})", batch.num_rows()),
                )?;
                for (i, field) in d.schema.fields().iter().enumerate() {
                    let required = !field.is_nullable()
                        || d.subject_column.as_deref() == Some(field.name().as_str());
                    ensure(
                        CHECK,
                        !required || batch.column(i).null_count() == 0,
                        || format!("required column `{}` holds nulls", field.name()),
                    )?;
                }
                out.batches.push((batch, cursor));
            }
            ReadItem::Broken(b) => out.broken.push(b),
            ReadItem::End(summary) => out.summary = Some(summary),
        }
    }
    let Some(summary) = &out.summary else {
        return Err(fail(CHECK, "the stream ended without a summary"));
    };
    let rows = out.num_rows() as u64;
    ensure(CHECK, summary.rows_read == rows, || {
        format!(
            "summary says {} rows, batches hold {rows}",
            summary.rows_read
        )
    })?;
    ensure(CHECK, summary.complete, || {
        "an unlimited read is not complete".into()
    })?;
    if let Some(want) = expect.rows {
        ensure(CHECK, rows == want, || {
            format!("read {rows} rows, expected {want}")
        })?;
    }
    if rows > 0 {
        ensure(CHECK, summary.cursor.is_some(), || {
            "a read with rows has no final cursor".into()
        })?;
    }
    Ok(out)
}

/// Broken rows are each reported once with a location and a reason, and counted.
pub fn check_broken_rows_counted(
    full: &CollectedRead,
    expect: &Expectations,
) -> Result<(), ConformanceFailure> {
    const CHECK: &str = "broken rows counted";
    let Some(summary) = &full.summary else {
        return Err(fail(CHECK, "no summary"));
    };
    let reported = full.broken.len() as u64;
    ensure(CHECK, summary.rows_broken == reported, || {
        format!(
            "summary counts {} broken rows, {reported} were reported",
            summary.rows_broken
        )
    })?;
    let mut seen = HashSet::new();
    for b in &full.broken {
        ensure(CHECK, b.row >= 1 && !b.reason.trim().is_empty(), || {
            format!("broken row without location or reason: {b}")
        })?;
        ensure(CHECK, seen.insert((b.file.clone(), b.row)), || {
            format!("broken row reported twice: {b}")
        })?;
    }
    if let Some(want) = expect.broken {
        ensure(CHECK, reported == want, || {
            format!("{reported} broken rows reported, expected {want}")
        })?;
    }
    Ok(())
}

/// A projected read returns the projected schema and the same values.
pub async fn check_projection(
    connector: &dyn Connector,
    full: &CollectedRead,
) -> Result<(), ConformanceFailure> {
    const CHECK: &str = "projection";
    let schema = &connector.describe().schema;
    let n = schema.fields().len();
    let indices: Vec<usize> = if n >= 2 { vec![n - 1, 0] } else { vec![0] };
    let names: Vec<String> = indices
        .iter()
        .map(|&i| schema.field(i).name().clone())
        .collect();
    let read = collect(CHECK, connector, ReadRequest::new().project(names)).await?;
    let want_schema = schema
        .project(&indices)
        .map_err(|e| fail(CHECK, e.to_string()))?;
    ensure(CHECK, read.schema.as_ref() == &want_schema, || {
        "the projected stream has another schema".into()
    })?;
    let got = concat(CHECK, &read)?;
    let want = concat(CHECK, full)?
        .project(&indices)
        .map_err(|e| fail(CHECK, e.to_string()))?;
    ensure(CHECK, got == want, || {
        "projected values differ from the full read".into()
    })
}

/// Paging, stopping mid-stream and resuming give exactly the rows of one full read.
pub async fn check_cursor_resumes_exactly(
    connector: &dyn Connector,
    full: &CollectedRead,
) -> Result<(), ConformanceFailure> {
    const CHECK: &str = "cursor resumes exactly";
    let reference = concat(CHECK, full)?;
    let total = reference.num_rows() as u64;
    let position_mode = connector.describe().cursor_column.is_none();

    // 1. Paging with max_rows.
    for page in [total / 3 + 1, 7] {
        let mut cursor: Option<Cursor> = None;
        let mut pages = Vec::new();
        let mut broken = 0usize;
        let mut rounds = 0u64;
        loop {
            rounds += 1;
            ensure(CHECK, rounds <= total / page + 3, || {
                format!("paging by {page} rows does not finish")
            })?;
            let read = collect(
                CHECK,
                connector,
                ReadRequest::new()
                    .since(cursor.clone())
                    .max_rows(page)
                    .batch_size(5),
            )
            .await?;
            let n = read.num_rows() as u64;
            ensure(CHECK, n <= page, || {
                format!("a page of max {page} rows returned {n}")
            })?;
            broken += read.broken.len();
            pages.push(concat(CHECK, &read)?);
            let Some(summary) = read.summary else {
                return Err(fail(CHECK, "no summary"));
            };
            cursor = summary.cursor;
            if summary.complete {
                break;
            }
            ensure(CHECK, n == page, || {
                format!("an incomplete page returned {n} of {page} rows")
            })?;
        }
        let joined = arrow::compute::concat_batches(&reference.schema(), &pages)
            .map_err(|e| fail(CHECK, e.to_string()))?;
        ensure(CHECK, joined == reference, || {
            format!(
                "paging by {page} rows returned {} rows that differ from the {total} of a full read",
                joined.num_rows()
            )
        })?;
        if position_mode {
            ensure(CHECK, broken == full.broken.len(), || {
                format!(
                    "paging by {page} rows reported {broken} broken rows, a full read {}",
                    full.broken.len()
                )
            })?;
        } else {
            ensure(CHECK, broken >= full.broken.len(), || {
                format!("paging by {page} rows lost broken-row reports")
            })?;
        }
    }

    // 2. Stop mid-stream after the second batch and resume from its cursor.
    let batch_size = usize::try_from(total / 5).unwrap_or(1).max(1);
    let mut stream = connector
        .read(ReadRequest::new().batch_size(batch_size))
        .await
        .map_err(|e| fail(CHECK, format!("read failed: {e}")))?;
    let mut before = Vec::new();
    let mut cursor = None;
    while let Some(item) = stream.next().await {
        match item.map_err(|e| fail(CHECK, e.to_string()))? {
            ReadItem::Batch { batch, cursor: c } => {
                before.push(batch);
                cursor = Some(c);
                if before.len() == 2 {
                    break;
                }
            }
            ReadItem::Broken(_) => {}
            ReadItem::End(s) => {
                cursor = s.cursor;
                break;
            }
        }
    }
    drop(stream);
    let rest = collect(CHECK, connector, ReadRequest::new().since(cursor)).await?;
    before.extend(rest.batches.into_iter().map(|(b, _)| b));
    let joined = arrow::compute::concat_batches(&reference.schema(), &before)
        .map_err(|e| fail(CHECK, e.to_string()))?;
    ensure(CHECK, joined == reference, || {
        format!(
            "stopping after two batches and resuming returned {} rows that differ from the {total} of a full read",
            joined.num_rows()
        )
    })?;

    // 3. Resuming from the final cursor returns nothing new.
    let final_cursor = full.summary.as_ref().and_then(|s| s.cursor.clone());
    if final_cursor.is_some() {
        let after = collect(CHECK, connector, ReadRequest::new().since(final_cursor)).await?;
        ensure(CHECK, after.num_rows() == 0, || {
            format!(
                "resuming from the final cursor returned {} rows",
                after.num_rows()
            )
        })?;
    }
    Ok(())
}

/// A stalled consumer keeps the reader bounded; dropping the stream releases the source.
pub async fn check_cancellation_releases_source(
    connector: &dyn Connector,
) -> Result<(), ConformanceFailure> {
    const CHECK: &str = "cancellation releases the source";
    let mut stream = connector
        .read(ReadRequest::new().batch_size(1))
        .await
        .map_err(|e| fail(CHECK, format!("read failed: {e}")))?;
    let progress = stream.progress();
    let first = stream.next().await;
    ensure(CHECK, first.is_some(), || {
        "the stream yielded nothing".into()
    })?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let bound = (READ_QUEUE_CAPACITY as u64 + 3) * 2 + 16;
    let scanned = progress.records_scanned();
    ensure(CHECK, scanned <= bound, || {
        format!("with a stalled consumer the reader took {scanned} records (bound {bound})")
    })?;
    drop(stream);
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        while !progress.source_released() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    ensure(CHECK, released.is_ok(), || {
        "the source was not released within 5 s of dropping the stream".into()
    })
}

async fn read_error(connector: &dyn Connector, request: ReadRequest) -> Option<ConnectorError> {
    match connector.read(request).await {
        Err(e) => Some(e),
        Ok(stream) => stream.collect_all().await.err(),
    }
}

/// Bad batch size, unknown column and a cursor of the wrong kind are refused.
pub async fn check_invalid_requests(connector: &dyn Connector) -> Result<(), ConformanceFailure> {
    const CHECK: &str = "invalid requests";
    let e = read_error(connector, ReadRequest::new().batch_size(0)).await;
    ensure(
        CHECK,
        matches!(e, Some(ConnectorError::InvalidRequest(_))),
        || format!("batch size 0 gave {e:?}"),
    )?;
    let e = read_error(
        connector,
        ReadRequest::new().project(["no such column \u{1F6AB}"]),
    )
    .await;
    ensure(
        CHECK,
        matches!(e, Some(ConnectorError::InvalidRequest(_))),
        || format!("an unknown column gave {e:?}"),
    )?;
    let foreign = match &connector.describe().cursor_column {
        None => Cursor::Column {
            column: "x".into(),
            value: CursorValue::Int(0),
            count: 1,
        },
        Some(_) => Cursor::Position {
            file: "x".into(),
            row: 1,
        },
    };
    let e = read_error(connector, ReadRequest::new().since(Some(foreign))).await;
    ensure(
        CHECK,
        matches!(e, Some(ConnectorError::InvalidCursor(_))),
        || format!("a cursor of the wrong kind gave {e:?}"),
    )
}

/// The health check passes.
pub async fn check_health(connector: &dyn Connector) -> Result<(), ConformanceFailure> {
    connector
        .health()
        .await
        .map(|_| ())
        .map_err(|e| fail("health", e.to_string()))
}
