//! Writing a release: the table as Parquet or CSV (with header) to any `Write`, the report as
//! JSON.

use std::io::Write;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::engine::Release;
use crate::error::ReleaseError;

/// Writes the release table as one Parquet file (zstd).
pub fn write_parquet<W: Write + Send>(release: &Release, out: W) -> Result<(), ReleaseError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut w = ArrowWriter::try_new(out, release.table.schema(), Some(props))?;
    w.write(&release.table)?;
    w.close()?;
    Ok(())
}

/// Writes the release table as CSV with a header row (suppressed values are empty fields).
pub fn write_csv<W: Write>(release: &Release, out: W) -> Result<(), ReleaseError> {
    let mut w = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(out);
    w.write(&release.table)?;
    Ok(())
}

/// Writes the release report as pretty JSON.
pub fn write_report<W: Write>(release: &Release, out: W) -> Result<(), ReleaseError> {
    serde_json::to_writer_pretty(out, &release.report)
        .map_err(|e| ReleaseError::Output(e.to_string()))
}
