//! Writing record batches to files: CSV, JSON lines, Parquet and GeoJSON points. Used for the
//! sample data and usable for exports (`allmende fetch … -o out.parquet`).
//! Timestamps are written as RFC 3339 text, e.g. `2025-03-03T08:15:00+00:00`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::{Map, Value};

use crate::error::ConnectorError;
use crate::files::FileFormat;

const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.f%:z";

fn write_error(path: &Path, e: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Write {
        file: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, ConnectorError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| write_error(path, e))?;
    }
    File::create(path)
        .map(|f| BufWriter::with_capacity(64 * 1024, f))
        .map_err(|e| write_error(path, e))
}

/// Writes CSV with a header line (also when there are no rows).
pub fn write_csv(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ConnectorError> {
    let mut out = create(path)?;
    if batches.iter().all(|b| b.num_rows() == 0) {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        writeln!(out, "{}", names.join(",")).map_err(|e| write_error(path, e))?;
        return out.flush().map_err(|e| write_error(path, e));
    }
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .with_timestamp_tz_format(TIMESTAMP_FORMAT.into())
        .build(out);
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        writer.write(b).map_err(|e| write_error(path, e))?;
    }
    writer
        .into_inner()
        .flush()
        .map_err(|e| write_error(path, e))
}

/// Writes one JSON object per row and line (nulls are left out).
pub fn write_jsonl(path: &Path, batches: &[RecordBatch]) -> Result<(), ConnectorError> {
    let out = create(path)?;
    let mut writer = arrow::json::WriterBuilder::new()
        .with_timestamp_tz_format(TIMESTAMP_FORMAT.into())
        .build::<_, arrow::json::writer::LineDelimited>(out);
    for b in batches {
        writer.write(b).map_err(|e| write_error(path, e))?;
    }
    writer.finish().map_err(|e| write_error(path, e))?;
    writer
        .into_inner()
        .flush()
        .map_err(|e| write_error(path, e))
}

/// Writes a Parquet file (Snappy-compressed).
pub fn write_parquet(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ConnectorError> {
    let out = create(path)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer =
        ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| write_error(path, e))?;
    for b in batches {
        writer.write(b).map_err(|e| write_error(path, e))?;
    }
    writer.close().map_err(|e| write_error(path, e))?;
    Ok(())
}

/// Writes a GeoJSON `FeatureCollection` with one `Point` feature per row, taken from the
/// `lon_column` and `lat_column` columns; the other columns become properties.
pub fn write_geojson_points(
    path: &Path,
    batches: &[RecordBatch],
    lon_column: &str,
    lat_column: &str,
) -> Result<(), ConnectorError> {
    let mut out = create(path)?;
    out.write_all(b"{\"type\":\"FeatureCollection\",\"features\":[")
        .map_err(|e| write_error(path, e))?;
    let mut first = true;
    for b in batches {
        let mut buf = Vec::new();
        let mut writer = arrow::json::WriterBuilder::new()
            .with_timestamp_tz_format(TIMESTAMP_FORMAT.into())
            .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
        writer.write(b).map_err(|e| write_error(path, e))?;
        writer.finish().map_err(|e| write_error(path, e))?;
        drop(writer);
        for line in buf.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            let mut properties: Map<String, Value> =
                serde_json::from_slice(line).map_err(|e| write_error(path, e))?;
            let lon = properties.remove(lon_column);
            let lat = properties.remove(lat_column);
            let geometry = match (lon, lat) {
                (Some(lon), Some(lat)) => {
                    serde_json::json!({"type": "Point", "coordinates": [lon, lat]})
                }
                _ => Value::Null,
            };
            let feature = serde_json::json!({
                "type": "Feature",
                "geometry": geometry,
                "properties": properties,
            });
            if !first {
                out.write_all(b",").map_err(|e| write_error(path, e))?;
            }
            first = false;
            out.write_all(b"\n").map_err(|e| write_error(path, e))?;
            serde_json::to_writer(&mut out, &feature).map_err(|e| write_error(path, e))?;
        }
    }
    out.write_all(b"\n]}\n").map_err(|e| write_error(path, e))?;
    out.flush().map_err(|e| write_error(path, e))
}

/// Writes batches in a tabular format (CSV, JSON lines or Parquet).
pub fn write_batches(
    path: &Path,
    format: FileFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ConnectorError> {
    match format {
        FileFormat::Csv => write_csv(path, schema, batches),
        FileFormat::Jsonl => write_jsonl(path, batches),
        FileFormat::Parquet => write_parquet(path, schema, batches),
        FileFormat::Geojson => Err(write_error(
            path,
            "use write_geojson_points for GeoJSON, it needs the coordinate columns",
        )),
    }
}
