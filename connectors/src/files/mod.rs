//! The file connector: CSV, JSON lines, GeoJSON and Parquet, from one file or a directory.
//!
//! Construction ([`FileConnector::open`]) lists the source, settles the schema (declared or
//! inferred) and checks every file against it: a source that cannot be reached or whose data
//! disagrees with the declared schema is refused with the reason. Reads run on a reader thread
//! (see [`crate::connector::spawn_reader`]); each format turns records into chunks and the
//! shared pipeline here applies null checks, the cursor, `max_rows` and the projection.

mod csv;
mod geojson;
mod jsonl;
mod parquet;
pub(crate) mod rows;

use std::cell::Cell;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{Field, Schema, SchemaRef};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::confine::SourceRoots;
use crate::connector::{
    BrokenRow, Connector, ConnectorDescription, Cursor, CursorValue, HealthReport, ReadItem,
    ReadProgress, ReadRequest, ReadSink, ReadStream, ReadSummary, run_blocking, spawn_reader,
};
use crate::error::{ConnectorError, guard};
use crate::schema::{FieldSpec, FieldType, build_schema};

/// Default number of records sampled to infer or check a schema.
pub const DEFAULT_SAMPLE_ROWS: usize = 1000;
/// Default limit on the size of one record (CSV record, JSON line, GeoJSON feature).
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 16 << 20;

/// File format of a [`FileConnectorConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Comma (or otherwise) separated values with a header line.
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// A GeoJSON `FeatureCollection`.
    Geojson,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// Lowercase name (`csv`, `jsonl`, `geojson`, `parquet`).
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Csv => "csv",
            FileFormat::Jsonl => "jsonl",
            FileFormat::Geojson => "geojson",
            FileFormat::Parquet => "parquet",
        }
    }

    /// File extensions picked up when the source is a directory.
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileFormat::Csv => &["csv"],
            FileFormat::Jsonl => &["jsonl", "ndjson", "json"],
            FileFormat::Geojson => &["geojson", "json"],
            FileFormat::Parquet => &["parquet", "parq"],
        }
    }
}

fn default_delimiter() -> char {
    ','
}

fn yes() -> bool {
    true
}

/// CSV options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvOptions {
    /// Field delimiter, one ASCII character (default `,`; German exports often use `;`).
    #[serde(default = "default_delimiter")]
    pub delimiter: char,
    /// Whether the first line names the columns (default `true`). Without a header the columns
    /// are the declared schema, in order.
    #[serde(default = "yes")]
    pub header: bool,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            delimiter: default_delimiter(),
            header: true,
        }
    }
}

/// How the geometry column encodes a GeoJSON geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeometryEncoding {
    /// Well-known text, e.g. `POINT (11.575 48.137)`.
    #[default]
    Wkt,
    /// The geometry object as compact GeoJSON text.
    Geojson,
}

fn default_geometry_column() -> String {
    "geometry".into()
}

/// GeoJSON options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoJsonOptions {
    /// Name of the (non-nullable string) column the geometry is written to; it is appended to
    /// the property columns and must not be declared.
    #[serde(default = "default_geometry_column")]
    pub geometry_column: String,
    /// Geometry encoding (default `wkt`).
    #[serde(default)]
    pub geometry_encoding: GeometryEncoding,
    /// Reject coordinates outside WGS 84 longitude/latitude ranges (RFC 7946; default `true`).
    #[serde(default = "yes")]
    pub require_wgs84: bool,
}

impl Default for GeoJsonOptions {
    fn default() -> Self {
        Self {
            geometry_column: default_geometry_column(),
            geometry_encoding: GeometryEncoding::default(),
            require_wgs84: true,
        }
    }
}

fn default_sample_rows() -> usize {
    DEFAULT_SAMPLE_ROWS
}

fn default_max_record_bytes() -> u64 {
    DEFAULT_MAX_RECORD_BYTES
}

/// Configuration of a [`FileConnector`] (e.g. the `--config` of `allmende connector register
/// --kind files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnectorConfig {
    /// A file, or a directory whose files with the format's extensions are read (recursively,
    /// skipping names starting with `.` or `_`, in byte-wise order of their relative path).
    pub path: PathBuf,
    /// File format.
    pub format: FileFormat,
    /// Declared columns; omit to infer them from the first file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// Column holding the data-subject id (string or int64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_column: Option<String>,
    /// Other identifying columns (string or int64), e.g. a meter id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier_columns: Vec<String>,
    /// Column the cursor follows (int64, timestamp or string; rows must be in non-decreasing
    /// order of it). Omit for position cursors (file and record number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_column: Option<String>,
    /// Accept source columns the schema does not declare (they are not read); default `false`.
    #[serde(default)]
    pub ignore_extra_columns: bool,
    /// CSV options.
    #[serde(default)]
    pub csv: CsvOptions,
    /// GeoJSON options.
    #[serde(default)]
    pub geojson: GeoJsonOptions,
    /// Records sampled to infer or check the schema (default 1000).
    #[serde(default = "default_sample_rows")]
    pub sample_rows: usize,
    /// Largest accepted record in bytes (default 16 MiB); larger JSON lines are broken rows,
    /// a larger CSV record or GeoJSON feature stops the read with an error.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u64,
}

impl FileConnectorConfig {
    /// A config with defaults: schema inferred, no subject, position cursors.
    pub fn new(path: impl Into<PathBuf>, format: FileFormat) -> Self {
        Self {
            path: path.into(),
            format,
            schema: None,
            subject_column: None,
            identifier_columns: Vec::new(),
            cursor_column: None,
            ignore_extra_columns: false,
            csv: CsvOptions::default(),
            geojson: GeoJsonOptions::default(),
            sample_rows: DEFAULT_SAMPLE_ROWS,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    fn check(&self) -> Result<(), ConnectorError> {
        let d = self.csv.delimiter;
        if !d.is_ascii() || matches!(d, '"' | '\n' | '\r') {
            return Err(ConnectorError::Config(format!(
                "csv delimiter `{}` must be one ASCII character other than a quote or line break",
                d.escape_default()
            )));
        }
        if self.sample_rows == 0 || self.sample_rows > 1_000_000 {
            return Err(ConnectorError::Config(format!(
                "sample_rows must be between 1 and 1000000, not {}",
                self.sample_rows
            )));
        }
        if self.max_record_bytes < 1024 {
            return Err(ConnectorError::Config(format!(
                "max_record_bytes must be at least 1024, not {}",
                self.max_record_bytes
            )));
        }
        if self.format == FileFormat::Geojson {
            let g = &self.geojson.geometry_column;
            if g.is_empty() {
                return Err(ConnectorError::Config(
                    "geometry_column must not be empty".into(),
                ));
            }
            if let Some(declared) = &self.schema
                && declared.iter().any(|f| &f.name == g)
            {
                return Err(ConnectorError::Config(format!(
                    "do not declare the geometry column `{g}`; the connector adds it"
                )));
            }
        }
        if self.format != FileFormat::Csv || self.csv.header {
            return Ok(());
        }
        if self.schema.is_none() {
            return Err(ConnectorError::Config(
                "a csv source without a header needs a declared schema".into(),
            ));
        }
        Ok(())
    }

    fn display_path(&self) -> String {
        self.path.display().to_string()
    }
}

/// One file of the source.
#[derive(Debug, Clone)]
pub(crate) struct FileRef {
    pub path: PathBuf,
    /// Path relative to the source with `/` separators; the file name for a single file.
    pub name: String,
    /// Every open of the file is checked against these.
    pub roots: SourceRoots,
}

/// The settled schema of a source.
#[derive(Debug)]
pub(crate) struct Layout {
    pub fields: Vec<FieldSpec>,
    /// What connectors expose (roles, nullability).
    pub schema: SchemaRef,
    /// Same columns, all nullable and without metadata: what format readers build.
    pub work_schema: SchemaRef,
    /// Columns a row must have a value in: non-nullable ones and the subject column.
    pub required: Vec<usize>,
}

impl Layout {
    fn new(fields: Vec<FieldSpec>, schema: SchemaRef, subject: Option<&str>) -> Self {
        let work_schema = Arc::new(Schema::new(
            fields
                .iter()
                .map(|f| Field::new(&f.name, f.field_type.data_type(), true))
                .collect::<Vec<_>>(),
        ));
        let required = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.nullable || Some(f.name.as_str()) == subject)
            .map(|(i, _)| i)
            .collect();
        Self {
            fields,
            schema,
            work_schema,
            required,
        }
    }
}

/// Records of one file, as read by a format reader.
#[derive(Debug)]
pub(crate) struct Chunk {
    /// Rows that decoded, in `Layout::work_schema`.
    pub batch: RecordBatch,
    /// 1-based record number of each row.
    pub ordinals: Vec<u64>,
    /// Line each row starts on (line-based formats).
    pub lines: Option<Vec<u64>>,
    /// Records that did not decode, in order.
    pub broken: Vec<BrokenRow>,
    /// Records of the file consumed once this chunk is processed.
    pub end_ordinal: u64,
}

/// Whether a format reader should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

pub(crate) type ChunkSink<'a> = dyn FnMut(Chunk) -> Result<Flow, ConnectorError> + 'a;

/// What format readers need.
pub(crate) struct FileCtx<'a> {
    pub config: &'a FileConnectorConfig,
    pub layout: &'a Layout,
    pub batch_size: usize,
    /// Parsed Parquet footers kept between reads.
    pub footers: &'a parquet::Footers,
}

/// A reader that fails once more than a limit was read since the last reset: keeps a single
/// record (an unbalanced CSV quote, a huge GeoJSON feature) from growing without bound.
pub(crate) struct LimitedReader<R> {
    inner: R,
    since_reset: Rc<Cell<u64>>,
    limit: u64,
}

/// Marker message of a [`LimitedReader`] error.
pub(crate) const RECORD_TOO_LARGE: &str = "record too large";

impl<R> LimitedReader<R> {
    pub fn new(inner: R, limit: u64) -> (Self, Rc<Cell<u64>>) {
        let counter = Rc::new(Cell::new(0));
        (
            Self {
                inner,
                since_reset: counter.clone(),
                limit,
            },
            counter,
        )
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.since_reset.get() > self.limit {
            return Err(io::Error::other(RECORD_TOO_LARGE));
        }
        let n = self.inner.read(buf)?;
        self.since_reset.set(self.since_reset.get() + n as u64);
        Ok(n)
    }
}

pub(crate) fn is_too_large(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Other && e.to_string() == RECORD_TOO_LARGE
}

/// Opens a file for reading with a readable error, checked against the source roots (again on
/// every open: a link swapped in after registration is refused).
pub(crate) fn open_file(file: &FileRef) -> Result<fs::File, ConnectorError> {
    file.roots.open(&file.path, &file.name)
}

pub(crate) fn past_end(file: &FileRef, skip: u64, found: u64) -> ConnectorError {
    ConnectorError::InvalidCursor(format!(
        "the cursor is at record {skip} of `{}`, but the file now has only {found} records; it was rewritten",
        file.name
    ))
}

/// Lists the files of the source, in read order. The source path, every directory descended
/// into and every file listed are checked against `roots`, whose canonical forms are taken once
/// for the listing and the opens of its files ([`SourceRoots::pinned`]).
pub(crate) fn list_files(
    config: &FileConnectorConfig,
    roots: &SourceRoots,
) -> Result<Vec<FileRef>, ConnectorError> {
    let roots = &roots.pinned();
    let shown = config.display_path();
    let checked = roots.check(&config.path, &shown)?;
    let meta =
        fs::metadata(&checked).map_err(|e| ConnectorError::unreachable(&shown, e.to_string()))?;
    if meta.is_file() {
        let name = config
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| shown.clone());
        return Ok(vec![FileRef {
            path: config.path.clone(),
            name,
            roots: roots.clone(),
        }]);
    }
    if !meta.is_dir() {
        return Err(ConnectorError::unreachable(
            &shown,
            "neither a file nor a directory",
        ));
    }
    let mut out = Vec::new();
    let mut walker = Walk {
        format: config.format,
        roots,
        shown: &shown,
        out: &mut out,
    };
    walker.walk(&config.path, "", 0)?;
    out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(out)
}

struct Walk<'a> {
    format: FileFormat,
    roots: &'a SourceRoots,
    shown: &'a str,
    out: &'a mut Vec<FileRef>,
}

impl Walk<'_> {
    fn walk(&mut self, dir: &Path, prefix: &str, depth: usize) -> Result<(), ConnectorError> {
        const MAX_DEPTH: usize = 8;
        let shown = self.shown;
        let io = |e: io::Error| ConnectorError::unreachable(shown, e.to_string());
        let entries = fs::read_dir(dir).map_err(io)?;
        for entry in entries {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let path = entry.path();
            let rel = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let meta = fs::metadata(&path).map_err(io)?;
            if meta.is_dir() {
                if depth < MAX_DEPTH {
                    self.roots.check(&path, &path.display().to_string())?;
                    self.walk(&path, &rel, depth + 1)?;
                }
            } else if meta.is_file() {
                let ext = Path::new(&name)
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase());
                if ext.is_some_and(|e| self.format.extensions().contains(&e.as_str())) {
                    self.roots.check(&path, &path.display().to_string())?;
                    self.out.push(FileRef {
                        path,
                        name: rel,
                        roots: self.roots.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn infer(config: &FileConnectorConfig, file: &FileRef) -> Result<Vec<FieldSpec>, ConnectorError> {
    match config.format {
        FileFormat::Csv => csv::infer(config, file),
        FileFormat::Jsonl => jsonl::infer(config, file),
        FileFormat::Geojson => geojson::infer(config, file),
        FileFormat::Parquet => parquet::infer(config, file),
    }
}

/// Checks one file against the layout; `sample` also checks values, not only structure.
fn validate(
    config: &FileConnectorConfig,
    layout: &Layout,
    file: &FileRef,
    sample: bool,
) -> Result<(), ConnectorError> {
    match config.format {
        FileFormat::Csv => csv::validate(config, layout, file, sample),
        FileFormat::Jsonl => jsonl::validate(config, layout, file, sample),
        FileFormat::Geojson => geojson::validate(config, layout, file, sample),
        FileFormat::Parquet => parquet::validate(config, layout, file),
    }
}

fn read_file(
    ctx: &FileCtx<'_>,
    file: &FileRef,
    skip: u64,
    sink: &mut ChunkSink<'_>,
) -> Result<(), ConnectorError> {
    match ctx.config.format {
        FileFormat::Csv => csv::read(ctx, file, skip, sink),
        FileFormat::Jsonl => jsonl::read(ctx, file, skip, sink),
        FileFormat::Geojson => geojson::read(ctx, file, skip, sink),
        FileFormat::Parquet => parquet::read(ctx, file, skip, sink),
    }
}

#[derive(Debug)]
struct Inner {
    config: FileConnectorConfig,
    layout: Layout,
    description: ConnectorDescription,
    /// Column index and type of the cursor column.
    cursor_column: Option<(usize, FieldType)>,
    active_reads: Arc<AtomicUsize>,
    /// Where files may be read from; checked on every listing and every open.
    roots: SourceRoots,
    /// Parsed Parquet footers, by opened file version.
    footers: parquet::Footers,
}

/// A connector reading CSV, JSON lines, GeoJSON or Parquet files.
#[derive(Debug, Clone)]
pub struct FileConnector {
    inner: Arc<Inner>,
}

impl FileConnector {
    /// Builds the connector: lists the source, settles the schema and checks every file against
    /// it (values are sampled from the first file). Blocking; call it from a blocking context.
    ///
    /// Every file is read only if `roots` allows it, checked now and again on every open.
    pub fn open(config: FileConnectorConfig, roots: SourceRoots) -> Result<Self, ConnectorError> {
        guard("opening the source", || Self::open_inner(config, roots))
    }

    /// [`FileConnector::open`] on a helper thread, for async callers.
    pub async fn open_async(
        config: FileConnectorConfig,
        roots: SourceRoots,
    ) -> Result<Self, ConnectorError> {
        run_blocking("opening the source", move || {
            Self::open_inner(config, roots)
        })
        .await
    }

    fn open_inner(config: FileConnectorConfig, roots: SourceRoots) -> Result<Self, ConnectorError> {
        config.check()?;
        let files = list_files(&config, &roots)?;
        let mut fields = match &config.schema {
            Some(declared) => declared.clone(),
            None => {
                let first = files.first().ok_or_else(|| {
                    ConnectorError::unreachable(
                        config.display_path(),
                        format!(
                            "no {} files to infer the schema from; declare the schema",
                            config.format.name()
                        ),
                    )
                })?;
                infer(&config, first)?
            }
        };
        if config.format == FileFormat::Geojson {
            fields.push(FieldSpec::required(
                config.geojson.geometry_column.clone(),
                FieldType::String,
            ));
        }
        let schema = build_schema(
            &fields,
            config.subject_column.as_deref(),
            &config.identifier_columns,
        )?;
        let cursor_column = match &config.cursor_column {
            None => None,
            Some(name) => {
                let idx = fields.iter().position(|f| &f.name == name).ok_or_else(|| {
                    ConnectorError::Config(format!("cursor column `{name}` is not in the schema"))
                })?;
                let t = fields[idx].field_type;
                if !matches!(
                    t,
                    FieldType::Int64 | FieldType::Timestamp | FieldType::String
                ) {
                    return Err(ConnectorError::Config(format!(
                        "cursor column `{name}` must be int64, timestamp or string, not {t}"
                    )));
                }
                Some((idx, t))
            }
        };
        let layout = Layout::new(fields, schema.clone(), config.subject_column.as_deref());
        for (i, file) in files.iter().enumerate() {
            validate(&config, &layout, file, i == 0)?;
        }
        let source = format!(
            "{} {} `{}`",
            config.format.name(),
            if files.len() == 1 && fs::metadata(&config.path).is_ok_and(|m| m.is_file()) {
                "file"
            } else {
                "directory"
            },
            config.display_path()
        );
        let description = ConnectorDescription {
            kind: "files".into(),
            source,
            schema,
            subject_column: config.subject_column.clone(),
            identifier_columns: config.identifier_columns.clone(),
            cursor_column: config.cursor_column.clone(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                layout,
                description,
                cursor_column,
                active_reads: Arc::new(AtomicUsize::new(0)),
                roots,
                footers: parquet::Footers::default(),
            }),
        })
    }

    /// The configuration the connector was built from.
    pub fn config(&self) -> &FileConnectorConfig {
        &self.inner.config
    }

    /// Reads whose source is still open (reader thread running).
    pub fn active_reads(&self) -> usize {
        self.inner.active_reads.load(Ordering::Acquire)
    }

    fn check_since(&self, since: &Option<Cursor>) -> Result<(), ConnectorError> {
        let Some(cursor) = since else { return Ok(()) };
        match (
            cursor,
            &self.inner.cursor_column,
            &self.inner.config.cursor_column,
        ) {
            (Cursor::Position { .. }, None, _) => Ok(()),
            (Cursor::Column { column, value, .. }, Some((_, t)), Some(name)) => {
                if column != name {
                    return Err(ConnectorError::InvalidCursor(format!(
                        "the cursor follows column `{column}`, this source follows `{name}`"
                    )));
                }
                let fits = matches!(
                    (value, t),
                    (CursorValue::Text(_), FieldType::String)
                        | (CursorValue::Int(_), FieldType::Int64 | FieldType::Timestamp)
                );
                if fits {
                    Ok(())
                } else {
                    Err(ConnectorError::InvalidCursor(format!(
                        "the cursor value does not fit cursor column `{name}` of type {t}"
                    )))
                }
            }
            (Cursor::Position { .. }, Some(_), Some(name)) => Err(ConnectorError::InvalidCursor(
                format!("this source resumes by column `{name}`, not by file position"),
            )),
            _ => Err(ConnectorError::InvalidCursor(
                "this source resumes by file position, not by column".into(),
            )),
        }
    }
}

impl Connector for FileConnector {
    fn describe(&self) -> &ConnectorDescription {
        &self.inner.description
    }

    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<ReadStream, ConnectorError>> {
        Box::pin(async move {
            let (out_schema, indices) = request.resolve(&self.inner.layout.schema)?;
            self.check_since(&request.since)?;
            let inner = self.inner.clone();
            let out_schema_for_stream = out_schema.clone();
            let active = ActiveRead::new(inner.active_reads.clone());
            let open = move |_: &ReadProgress| {
                let plan = ReadPlan::new(inner, request, out_schema, indices, active)?;
                Ok(plan)
            };
            spawn_reader(out_schema_for_stream, open, ReadPlan::run).await
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<HealthReport, ConnectorError>> {
        let inner = self.inner.clone();
        Box::pin(run_blocking("health check", move || {
            let files = list_files(&inner.config, &inner.roots)?;
            let mut bytes = 0u64;
            for file in &files {
                validate(&inner.config, &inner.layout, file, false)?;
                bytes += fs::metadata(&file.path).map(|m| m.len()).unwrap_or(0);
            }
            Ok(HealthReport {
                detail: format!(
                    "{} {} file{}, {bytes} bytes",
                    files.len(),
                    inner.config.format.name(),
                    if files.len() == 1 { "" } else { "s" }
                ),
            })
        }))
    }
}

/// Counts a read as active until dropped (on the reader thread, after the files are closed).
#[derive(Debug)]
struct ActiveRead(Arc<AtomicUsize>);

impl ActiveRead {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for ActiveRead {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where the cursor stands during a read.
#[derive(Debug)]
enum Tracker {
    Position {
        at: Option<(String, u64)>,
    },
    Column {
        idx: usize,
        name: String,
        state: Option<(CursorValue, u64)>,
        since: Option<(CursorValue, u64)>,
    },
}

/// What the cursor makes of a decoded row.
enum Admit {
    Emit,
    Skip,
    Broken(String),
}

impl Tracker {
    fn cursor(&self) -> Option<Cursor> {
        match self {
            Tracker::Position { at } => at.as_ref().map(|(file, row)| Cursor::Position {
                file: file.clone(),
                row: *row,
            }),
            Tracker::Column {
                name, state, since, ..
            } => state
                .as_ref()
                .or(since.as_ref())
                .map(|(value, count)| Cursor::Column {
                    column: name.clone(),
                    value: value.clone(),
                    count: *count,
                }),
        }
    }

    /// Whether a broken row at the current point lies after the `since` cursor (position
    /// reads start after it physically; column reads rescan from the start).
    fn reports_broken(&self) -> bool {
        match self {
            Tracker::Position { .. } => true,
            Tracker::Column { state, since, .. } => match (since, state) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(s), Some(st)) => st >= s,
            },
        }
    }

    fn record_consumed(&mut self, file: &str, ordinal: u64) {
        if let Tracker::Position { at } = self {
            // Called for every row: the file's name is copied only when
            // the read moves on to another file.
            match at {
                Some((f, n)) if f == file => *n = ordinal,
                _ => *at = Some((file.to_owned(), ordinal)),
            }
        }
    }

    fn admit(&mut self, batch: &RecordBatch, row: usize) -> Admit {
        let Tracker::Column {
            idx,
            name,
            state,
            since,
        } = self
        else {
            return Admit::Emit;
        };
        let Some(value) = rows::cursor_value(batch.column(*idx).as_ref(), row) else {
            return Admit::Broken(format!("cursor column `{name}` is empty"));
        };
        let next = match state.as_ref() {
            Some((max, _)) if &value < max => {
                return Admit::Broken(format!(
                    "cursor column `{name}` goes backwards: `{value}` after `{max}`"
                ));
            }
            Some((max, count)) if &value == max => (value, count + 1),
            _ => (value, 1),
        };
        let emit = since.as_ref().is_none_or(|s| &next > s);
        *state = Some(next);
        if emit { Admit::Emit } else { Admit::Skip }
    }
}

/// One read: the files to go through and the state of the cursor.
struct ReadPlan {
    inner: Arc<Inner>,
    files: Vec<FileRef>,
    first_skip: u64,
    tracker: Tracker,
    out_schema: SchemaRef,
    indices: Vec<usize>,
    batch_size: usize,
    max_rows: Option<u64>,
    emitted: u64,
    broken: u64,
    _active: ActiveRead,
}

impl ReadPlan {
    fn new(
        inner: Arc<Inner>,
        request: ReadRequest,
        out_schema: SchemaRef,
        indices: Vec<usize>,
        active: ActiveRead,
    ) -> Result<Self, ConnectorError> {
        let mut files = list_files(&inner.config, &inner.roots)?;
        let mut first_skip = 0;
        let tracker = match (&inner.cursor_column, request.since) {
            (Some((idx, _)), since) => Tracker::Column {
                idx: *idx,
                name: inner.config.cursor_column.clone().unwrap_or_default(),
                state: None,
                since: match since {
                    Some(Cursor::Column { value, count, .. }) => Some((value, count)),
                    _ => None,
                },
            },
            (None, Some(Cursor::Position { file, row })) => {
                let single = fs::metadata(&inner.config.path).is_ok_and(|m| m.is_file());
                if single && files.first().is_none_or(|f| f.name != file) {
                    return Err(ConnectorError::InvalidCursor(format!(
                        "the cursor belongs to file `{file}`, not to this source"
                    )));
                }
                files.retain(|f| f.name.as_bytes() >= file.as_bytes());
                if files.first().is_some_and(|f| f.name == file) {
                    first_skip = row;
                }
                Tracker::Position {
                    at: Some((file, row)),
                }
            }
            (None, _) => Tracker::Position { at: None },
        };
        Ok(Self {
            inner,
            files,
            first_skip,
            tracker,
            out_schema,
            indices,
            batch_size: request.batch_size,
            max_rows: request.max_rows,
            emitted: 0,
            broken: 0,
            _active: active,
        })
    }

    fn run(mut self, sink: &ReadSink) -> Result<ReadSummary, ConnectorError> {
        let files = std::mem::take(&mut self.files);
        let inner = self.inner.clone();
        let ctx = FileCtx {
            config: &inner.config,
            layout: &inner.layout,
            batch_size: self.batch_size,
            footers: &inner.footers,
        };
        let mut stopped = self.max_rows == Some(0);
        for (i, file) in files.iter().enumerate() {
            if stopped {
                break;
            }
            let skip = if i == 0 { self.first_skip } else { 0 };
            let mut on_chunk = |chunk: Chunk| {
                let flow = self.process(file, chunk, sink)?;
                if flow == Flow::Stop {
                    stopped = true;
                }
                Ok(flow)
            };
            if let Err(e) = read_file(&ctx, file, skip, &mut on_chunk) {
                tracing::warn!(source = %inner.description.source, file = %file.name, error = %e, "read failed");
                return Err(e);
            }
        }
        tracing::debug!(
            source = %inner.description.source,
            rows = self.emitted,
            broken = self.broken,
            complete = !stopped,
            "read finished"
        );
        Ok(ReadSummary {
            rows_read: self.emitted,
            rows_broken: self.broken,
            cursor: self.tracker.cursor(),
            complete: !stopped,
        })
    }

    fn hit_limit(&self) -> bool {
        self.max_rows.is_some_and(|m| self.emitted >= m)
    }

    /// Applies null checks, the cursor and `max_rows` to a chunk and sends the result.
    fn process(
        &mut self,
        file: &FileRef,
        chunk: Chunk,
        sink: &ReadSink,
    ) -> Result<Flow, ConnectorError> {
        let Chunk {
            batch,
            ordinals,
            lines,
            broken,
            end_ordinal,
        } = chunk;
        sink.progress()
            .add_scanned((ordinals.len() + broken.len()) as u64);
        let missing = rows::missing_required(&batch, &self.inner.layout);
        let mut keep: Vec<u32> = Vec::new();
        let mut out_broken: Vec<BrokenRow> = Vec::new();
        let mut cut = false;
        let mut pending = broken.into_iter().peekable();
        for (row, &ordinal) in ordinals.iter().enumerate() {
            while let Some(b) = pending.next_if(|b| b.row < ordinal) {
                let at = b.row;
                if self.tracker.reports_broken() {
                    out_broken.push(b);
                }
                self.tracker.record_consumed(&file.name, at);
            }
            let line = lines.as_ref().and_then(|l| l.get(row).copied());
            let verdict = match &missing[row] {
                Some(reason) => Admit::Broken(reason.clone()),
                None => self.tracker.admit(&batch, row),
            };
            match verdict {
                Admit::Emit => {
                    keep.push(row as u32);
                    self.emitted += 1;
                }
                Admit::Skip => {}
                Admit::Broken(reason) => {
                    if self.tracker.reports_broken() {
                        out_broken.push(BrokenRow {
                            file: file.name.clone(),
                            row: ordinal,
                            line,
                            reason,
                        });
                    }
                }
            }
            self.tracker.record_consumed(&file.name, ordinal);
            if self.hit_limit() {
                cut = true;
                break;
            }
        }
        if !cut {
            for b in pending {
                if self.tracker.reports_broken() {
                    out_broken.push(b);
                }
            }
            self.tracker.record_consumed(&file.name, end_ordinal);
        }
        self.broken += out_broken.len() as u64;
        for b in out_broken {
            if sink.send(ReadItem::Broken(b)).is_err() {
                return Ok(Flow::Stop);
            }
        }
        if !keep.is_empty() {
            let out = self.output_batch(&batch, &keep)?;
            let cursor = self
                .tracker
                .cursor()
                .ok_or_else(|| ConnectorError::Internal("no cursor after a batch".into()))?;
            if sink.send(ReadItem::Batch { batch: out, cursor }).is_err() {
                return Ok(Flow::Stop);
            }
        }
        Ok(if cut || sink.is_cancelled() {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn output_batch(
        &self,
        batch: &RecordBatch,
        keep: &[u32],
    ) -> Result<RecordBatch, ConnectorError> {
        let internal = |e: arrow::error::ArrowError| {
            ConnectorError::Internal(format!("cannot assemble a batch: {e}"))
        };
        let columns: Vec<ArrayRef> = if keep.len() == batch.num_rows() {
            self.indices
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect()
        } else {
            let take = UInt32Array::from(keep.to_vec());
            self.indices
                .iter()
                .map(|&i| arrow::compute::take(batch.column(i).as_ref(), &take, None))
                .collect::<Result<_, _>>()
                .map_err(internal)?
        };
        debug_assert!(columns.iter().all(|c| c.len() == keep.len()));
        RecordBatch::try_new(self.out_schema.clone(), columns).map_err(internal)
    }
}
