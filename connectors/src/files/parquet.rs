//! Parquet files through arrow-rs's `ParquetRecordBatchReader`. The footer is read (and the
//! schema checked) when the connector is built and again on every read, so a truncated file is a
//! clear error before any row of it is delivered; corrupt pages stop the read with an error.
//! Stored types are converted to connector types (see [`crate::schema::FieldType::accepts`]).
//!
//! A read parses the footer again only when the file changed: the parsed footer is kept per
//! connector ([`Footers`]), keyed by the identity and version of the *opened* file (device,
//! inode, size, modification and change times from `fstat` on the descriptor), and looked up
//! only after that open passed the confinement checks of [`crate::confine::SourceRoots`].
//! A file rewritten, truncated or replaced has another key, so its footer is read again.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::Schema;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use std::collections::HashMap;
use std::sync::Mutex;

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

/// Parsed footers at most kept per connector; beyond that the cache starts over.
const MAX_FOOTERS: usize = 64;

/// What identifies one version of an opened file: device, inode, size, modification and change
/// time (seconds and nanoseconds). The change time cannot be set by a writer, so a rewrite of
/// the same size within the same modification time still changes the key.
type FooterKey = (u64, u64, u64, i64, i64, i64, i64);

#[cfg(unix)]
fn footer_key(f: &std::fs::File) -> Option<FooterKey> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

#[cfg(not(unix))]
fn footer_key(_f: &std::fs::File) -> Option<FooterKey> {
    None
}

/// Parsed Parquet footers of one connector's files (see the module docs).
#[derive(Default)]
pub(crate) struct Footers {
    parsed: Mutex<HashMap<FooterKey, ArrowReaderMetadata>>,
    /// Footers parsed from the file (not taken from the cache), for tests.
    #[cfg(test)]
    loads: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Footers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.parsed.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("Footers").field("kept", &n).finish()
    }
}

impl Footers {
    /// The footer of `f`, an already opened and confinement-checked file: kept from an earlier
    /// read of the same file version, or parsed now (and kept).
    fn of(&self, f: &std::fs::File, file: &FileRef) -> Result<ArrowReaderMetadata, ConnectorError> {
        let key = footer_key(f);
        if let Some(k) = &key
            && let Ok(m) = self.parsed.lock()
            && let Some(meta) = m.get(k)
        {
            return Ok(meta.clone());
        }
        #[cfg(test)]
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let meta = ArrowReaderMetadata::load(f, ArrowReaderOptions::default()).map_err(|e| {
            ConnectorError::source(&file.name, format!("not a readable parquet file: {e}"))
        })?;
        // A poisoned cache is only not used again: reads parse their footers.
        if let Some(k) = key
            && let Ok(mut m) = self.parsed.lock()
        {
            if m.len() >= MAX_FOOTERS {
                m.clear();
            }
            m.insert(k, meta.clone());
        }
        Ok(meta)
    }

    #[cfg(test)]
    pub(crate) fn loads(&self) -> usize {
        self.loads.load(std::sync::atomic::Ordering::Relaxed)
    }
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
    // The confinement checks run on this open; only then is the kept footer looked up.
    let f = open_file(file)?;
    let meta = ctx.footers.of(&f, file)?;
    let b = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta);
    let indices = mapping(ctx.config, &layout.fields, b.schema(), file)?;
    let total = u64::try_from(b.metadata().file_metadata().num_rows()).unwrap_or(0);
    if skip > total {
        return Err(past_end(file, skip, total));
    }
    if skip == total {
        return Ok(());
    }
    let mask = ProjectionMask::roots(b.parquet_schema(), indices.iter().copied());
    // Buffers are sized for a batch: no larger than the rows left in the file.
    let rows_left = usize::try_from(total - skip).unwrap_or(usize::MAX);
    let mut b = b
        .with_batch_size(ctx.batch_size.min(rows_left).max(1))
        .with_projection(mask);
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use crate::files::{FileConnector, FileConnectorConfig, FileFormat};
    use crate::{Connector, ConnectorError, ReadRequest, SourceRoots};
    use arrow::array::{AsArray, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use std::path::Path;
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    fn write(path: &Path, values: Vec<i64>) {
        let b = RecordBatch::try_new(schema(), vec![Arc::new(Int64Array::from(values))]).unwrap();
        crate::write::write_parquet(path, &schema(), &[b]).unwrap();
    }

    async fn values(c: &FileConnector) -> Result<Vec<i64>, ConnectorError> {
        let all = c.read(ReadRequest::new()).await?.collect_all().await?;
        let b = all.concat()?;
        Ok(b.column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec())
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        src: std::path::PathBuf,
        outside: std::path::PathBuf,
        roots: SourceRoots,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        let src = base.join("root/src");
        std::fs::create_dir_all(&src).unwrap();
        let outside = base.join("outside.parquet");
        Fixture {
            roots: SourceRoots::new([base.join("root")]),
            _dir: dir,
            src,
            outside,
        }
    }

    #[tokio::test]
    async fn a_footer_is_parsed_once_per_file_version() {
        let f = fixture();
        let path = f.src.join("a.parquet");
        write(&path, vec![1, 2, 3]);
        let c = FileConnector::open_async(
            FileConnectorConfig::new(&f.src, FileFormat::Parquet),
            f.roots.clone(),
        )
        .await
        .unwrap();
        assert_eq!(values(&c).await.unwrap(), [1, 2, 3]);
        assert_eq!(values(&c).await.unwrap(), [1, 2, 3]);
        assert_eq!(
            c.inner.footers.loads(),
            1,
            "the second read used the kept footer"
        );

        // Rewritten (another size): parsed again, and the new rows are read.
        write(&path, vec![4, 5, 6, 7]);
        assert_eq!(values(&c).await.unwrap(), [4, 5, 6, 7]);
        assert_eq!(c.inner.footers.loads(), 2);

        // Rewritten with the same size and modification time: the change time differs.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&path, vec![8, 9, 10, 11]);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(values(&c).await.unwrap(), [8, 9, 10, 11]);
        assert_eq!(c.inner.footers.loads(), 3);

        // Truncated after its footer was kept: a clear error, no rows.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = values(&c).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read `a.parquet`: not a readable parquet file"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_kept_footer_does_not_skip_the_confinement_checks() {
        let f = fixture();
        let path = f.src.join("a.parquet");
        write(&path, vec![1, 2, 3]);
        let c = FileConnector::open_async(
            FileConnectorConfig::new(&f.src, FileFormat::Parquet),
            f.roots.clone(),
        )
        .await
        .unwrap();
        assert_eq!(values(&c).await.unwrap(), [1, 2, 3]);
        // The very file (same inode, same footer) moved outside the roots, and a link to it
        // in its place.
        std::fs::rename(&path, &f.outside).unwrap();
        std::os::unix::fs::symlink(&f.outside, &path).unwrap();
        let err = values(&c).await.unwrap_err();
        assert!(matches!(err, ConnectorError::Confined { .. }), "{err}");
        // A hard link to it inside the roots is confined, and read.
        std::fs::remove_file(&path).unwrap();
        std::fs::hard_link(&f.outside, &path).unwrap();
        assert_eq!(values(&c).await.unwrap(), [1, 2, 3]);
    }
}
