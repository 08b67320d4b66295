//! Parquet files through arrow-rs's `ParquetRecordBatchReader`. The footer is read (and the
//! schema checked) when the connector is built and again on every read, so a truncated file is a
//! clear error before any row of it is delivered; corrupt pages stop the read with an error.
//! Stored types are converted to connector types (see [`crate::schema::FieldType::accepts`]).

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::Schema;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{
    Chunk, ChunkSink, FileConnectorConfig, FileCtx, FileRef, Flow, Layout, open_file, past_end,
};
use crate::error::{ConnectorError, snippet};
use crate::schema::{FieldSpec, FieldType};

type Builder = ParquetRecordBatchReaderBuilder<std::fs::File>;

fn builder(file: &FileRef) -> Result<Builder, ConnectorError> {
    let f = open_file(file)?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| {
        ConnectorError::source(&file.name, format!("not a readable parquet file: {e}"))
    })
}

/// Index of each declared column in the file's schema.
fn mapping(
    config: &FileConnectorConfig,
    fields: &[FieldSpec],
    schema: &Schema,
    file: &FileRef,
) -> Result<Vec<usize>, ConnectorError> {
    let names = || {
        let all: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        snippet(&all.join(", "))
    };
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let Ok(idx) = schema.index_of(&f.name) else {
            return Err(ConnectorError::mismatch(
                &file.name,
                &f.name,
                format!(
                    "declared {}, but the file has no such column (it has: {})",
                    f.field_type,
                    names()
                ),
            ));
        };
        let stored = schema.field(idx).data_type();
        if !f.field_type.accepts(stored) {
            return Err(ConnectorError::mismatch(
                &file.name,
                &f.name,
                format!("declared {}, found {stored}", f.field_type),
            ));
        }
        out.push(idx);
    }
    if !config.ignore_extra_columns
        && let Some(extra) = schema
            .fields()
            .iter()
            .find(|s| !fields.iter().any(|f| &f.name == s.name()))
    {
        return Err(ConnectorError::mismatch(
            &file.name,
            extra.name(),
            "in the file but not declared (set `ignore_extra_columns` to skip it)",
        ));
    }
    Ok(out)
}

pub(crate) fn infer(
    _config: &FileConnectorConfig,
    file: &FileRef,
) -> Result<Vec<FieldSpec>, ConnectorError> {
    let b = builder(file)?;
    b.schema()
        .fields()
        .iter()
        .map(|f| match FieldType::canonical_for(f.data_type()) {
            Some(t) => Ok(FieldSpec {
                name: f.name().clone(),
                field_type: t,
                nullable: f.is_nullable(),
            }),
            None => Err(ConnectorError::mismatch(
                &file.name,
                f.name(),
                format!(
                    "holds {} values, which connectors do not expose; declare the schema and set `ignore_extra_columns` to leave it out",
                    f.data_type()
                ),
            )),
        })
        .collect()
}

pub(crate) fn validate(
    config: &FileConnectorConfig,
    layout: &Layout,
    file: &FileRef,
) -> Result<(), ConnectorError> {
    let b = builder(file)?;
    mapping(config, &layout.fields, b.schema(), file).map(|_| ())
}

pub(crate) fn read(
    ctx: &FileCtx<'_>,
    file: &FileRef,
    skip: u64,
    sink: &mut ChunkSink<'_>,
) -> Result<(), ConnectorError> {
    let layout = ctx.layout;
    let b = builder(file)?;
    let indices = mapping(ctx.config, &layout.fields, b.schema(), file)?;
    let total = u64::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0);
    if skip > total {
        return Err(past_end(file, skip, total));
    }
    if skip == total {
        return Ok(());
    }
    let mask = ProjectionMask::roots(b.parquet_schema(), indices.iter().copied());
    let mut b = b.with_batch_size(ctx.batch_size).with_projection(mask);
    if skip > 0 {
        let offset = usize::try_from(skip)
            .map_err(|_| ConnectorError::InvalidCursor(format!("record {skip} is out of range")))?;
        b = b.with_offset(offset);
    }
    let reader = b
        .build()
        .map_err(|e| ConnectorError::source(&file.name, format!("cannot start reading: {e}")))?;
    let cast_options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut ordinal = skip;
    for batch in reader {
        let batch = batch.map_err(|e| {
            ConnectorError::source(
                &file.name,
                format!("corrupt data after record {ordinal}: {e}"),
            )
        })?;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(layout.fields.len());
        for f in &layout.fields {
            let column = batch.column_by_name(&f.name).ok_or_else(|| {
                ConnectorError::Internal(format!("projected column `{}` is missing", f.name))
            })?;
            let want = f.field_type.data_type();
            if column.data_type() == &want {
                columns.push(column.clone());
            } else {
                columns.push(
                    cast_with_options(column, &want, &cast_options).map_err(|e| {
                        ConnectorError::source(
                            &file.name,
                            format!(
                                "column `{}` does not convert to {}: {e}",
                                f.name, f.field_type
                            ),
                        )
                    })?,
                );
            }
        }
        let n = batch.num_rows() as u64;
        let batch = RecordBatch::try_new(layout.work_schema.clone(), columns)
            .map_err(|e| ConnectorError::Internal(format!("cannot build a batch: {e}")))?;
        let chunk = Chunk {
            batch,
            ordinals: (ordinal + 1..=ordinal + n).collect(),
            lines: None,
            broken: Vec::new(),
            end_ordinal: ordinal + n,
        };
        ordinal += n;
        if sink(chunk)? == Flow::Stop {
            return Ok(());
        }
    }
    if ordinal != total {
        return Err(ConnectorError::source(
            &file.name,
            format!("the footer announces {total} records, but {ordinal} were read"),
        ));
    }
    Ok(())
}
