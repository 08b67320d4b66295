//! The [`Connector`] trait and the types of a read: requests, cursors, stream items, summaries.
//!
//! A read is a stream of [`ReadItem`]s: record batches (each with the cursor after it), reports of
//! broken rows, and — as the very last item of a successful read — a [`ReadSummary`]. An `Err`
//! item is terminal. The stream is fed by a reader thread through a bounded channel
//! ([`spawn_reader`]), so a slow consumer stalls the reader instead of making it buffer the
//! source; dropping the stream stops the thread and closes the source.

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use futures::Stream;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{ConnectorError, panic_message, snippet};
use crate::schema::{FieldSpec, field_specs};

/// Default number of rows per batch.
pub const DEFAULT_BATCH_SIZE: usize = 8192;
/// Largest accepted batch size.
pub const MAX_BATCH_SIZE: usize = 1 << 20;
/// Items (batches or broken-row reports) buffered between the reader thread and the consumer.
pub const READ_QUEUE_CAPACITY: usize = 2;

/// A data source the broker reads datasets from.
///
/// Object safe: the broker keeps `Arc<dyn Connector>`. Implementations must never panic on bad
/// source data, must report (not silently drop) broken rows, and must pass the conformance
/// suite (`allmende_connectors::conformance`, feature `conformance`).
pub trait Connector: Send + Sync {
    /// Schema, data-subject column, identifier columns and cursor kind. Fixed at construction.
    fn describe(&self) -> &ConnectorDescription;

    /// Starts a read. Resolves once the source is open (or with the reason it cannot be read);
    /// the rows then arrive through the returned stream.
    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<ReadStream, ConnectorError>>;

    /// Checks that the source is reachable and still matches the schema.
    fn health(&self) -> BoxFuture<'_, Result<HealthReport, ConnectorError>>;
}

/// What a connector exposes.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorDescription {
    /// Connector kind (`files`).
    pub kind: String,
    /// Human-readable source description (format and path); stays on the owner's node.
    pub source: String,
    /// Schema of every batch of an unprojected read (subject and identifier columns carry their
    /// role in field metadata, see [`crate::schema::ROLE_METADATA_KEY`]).
    pub schema: SchemaRef,
    /// Column holding the data-subject id, if the data is personal.
    pub subject_column: Option<String>,
    /// Other columns that identify people or their devices (meter id, device id, …).
    pub identifier_columns: Vec<String>,
    /// Column the cursor follows; `None` means position cursors (file and record number).
    pub cursor_column: Option<String>,
}

impl ConnectorDescription {
    /// The subject column followed by every identifier column: the columns that must be
    /// pseudonymised on release and may not be filtered on.
    pub fn identifying_columns(&self) -> Vec<&str> {
        self.subject_column
            .iter()
            .map(String::as_str)
            .chain(self.identifier_columns.iter().map(String::as_str))
            .collect()
    }

    /// The schema as declared columns.
    pub fn field_specs(&self) -> Result<Vec<FieldSpec>, ConnectorError> {
        field_specs(&self.schema)
    }
}

/// A value of a cursor column.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CursorValue {
    /// An `int64` value or a `timestamp` in microseconds.
    Int(i64),
    /// A `string` value (compared byte-wise).
    Text(String),
}

impl fmt::Display for CursorValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CursorValue::Int(v) => write!(f, "{v}"),
            CursorValue::Text(v) => write!(f, "{}", snippet(v)),
        }
    }
}

/// Where a read stopped; pass it as [`ReadRequest::since`] to resume exactly there (no row twice,
/// none lost). Serialise it with `to_string()` and parse it back with `str::parse`; treat the
/// token as opaque.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Cursor {
    /// `row` records (good and broken) of `file` have been consumed; files are read in
    /// byte-wise order of their path relative to the source.
    Position {
        /// File path relative to the source (the file name for a single-file source).
        file: String,
        /// Records of that file consumed so far.
        row: u64,
    },
    /// Rows are ordered by `column`: the greatest value so far is `value`, and `count` in-order
    /// rows carried it.
    Column {
        /// The cursor column.
        column: String,
        /// Greatest value seen so far.
        value: CursorValue,
        /// In-order rows that carried `value` so far.
        count: u64,
    },
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl FromStr for Cursor {
    type Err = ConnectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s).map_err(|e| {
            ConnectorError::InvalidCursor(format!("`{}` is not a cursor token: {e}", snippet(s)))
        })
    }
}

/// What to read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadRequest {
    /// Resume after this cursor; `None` reads from the start.
    pub since: Option<Cursor>,
    /// Columns to return, in this order; `None` returns every column.
    pub projection: Option<Vec<String>>,
    /// Rows per batch (1 ..= [`MAX_BATCH_SIZE`]).
    pub batch_size: usize,
    /// Stop after this many rows; the summary's cursor then resumes exactly after the last one.
    pub max_rows: Option<u64>,
    /// Comparisons (all must hold) a connector MAY apply at the source to read fewer rows. An
    /// optimisation only: the caller still evaluates its whole filter on what the connector
    /// returns, so a connector that ignores some or all of them stays correct. A connector that
    /// applies them must apply them to the resumed reads of the same request too.
    pub pushdown: Vec<Predicate>,
}

/// A comparison operator of a pushed-down [`Predicate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PredicateOp {
    /// `=`
    Eq,
    /// `<>` (a missing value counts as different)
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// The literal of a pushed-down [`Predicate`]; typed like the connector's columns.
#[derive(Debug, Clone, PartialEq)]
pub enum PredicateValue {
    /// Compared with a `string` column (byte-wise).
    Text(String),
    /// Compared with an `int64` column.
    Int(i64),
    /// Compared with a `float64` column.
    Float(f64),
    /// Compared with a `bool` column.
    Bool(bool),
    /// Compared with a `timestamp` column: microseconds since the epoch, UTC.
    TimestampMicros(i64),
}

/// `column op value`: one conjunct of [`ReadRequest::pushdown`].
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// The column compared.
    pub column: String,
    /// The comparison.
    pub op: PredicateOp,
    /// The literal.
    pub value: PredicateValue,
}

impl Default for ReadRequest {
    fn default() -> Self {
        Self {
            since: None,
            projection: None,
            batch_size: DEFAULT_BATCH_SIZE,
            max_rows: None,
            pushdown: Vec::new(),
        }
    }
}

impl ReadRequest {
    /// Reads everything, [`DEFAULT_BATCH_SIZE`] rows per batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resumes after `cursor`.
    pub fn since(mut self, cursor: Option<Cursor>) -> Self {
        self.since = cursor;
        self
    }

    /// Returns only these columns.
    pub fn project<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.projection = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the batch size.
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows;
        self
    }

    /// Stops after `rows` rows.
    pub fn max_rows(mut self, rows: u64) -> Self {
        self.max_rows = Some(rows);
        self
    }

    /// Offers these comparisons to the connector (see [`ReadRequest::pushdown`]).
    pub fn pushdown(mut self, predicates: Vec<Predicate>) -> Self {
        self.pushdown = predicates;
        self
    }

    /// Validates the request against a connector schema and returns the projected schema and the
    /// indices of the projected columns.
    pub fn resolve(&self, schema: &SchemaRef) -> Result<(SchemaRef, Vec<usize>), ConnectorError> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(ConnectorError::InvalidRequest(format!(
                "batch size must be between 1 and {MAX_BATCH_SIZE}, not {}",
                self.batch_size
            )));
        }
        let Some(projection) = &self.projection else {
            let all = (0..schema.fields().len()).collect();
            return Ok((schema.clone(), all));
        };
        if projection.is_empty() {
            return Err(ConnectorError::InvalidRequest(
                "the projection names no column".into(),
            ));
        }
        let mut indices = Vec::with_capacity(projection.len());
        for name in projection {
            let idx = schema.index_of(name).map_err(|_| {
                ConnectorError::InvalidRequest(format!("unknown column `{}`", snippet(name)))
            })?;
            if indices.contains(&idx) {
                return Err(ConnectorError::InvalidRequest(format!(
                    "column `{name}` is projected twice"
                )));
            }
            indices.push(idx);
        }
        let projected = schema
            .project(&indices)
            .map_err(|e| ConnectorError::InvalidRequest(e.to_string()))?;
        Ok((Arc::new(projected), indices))
    }
}

/// A row that could not be read; it is skipped, counted and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenRow {
    /// File path relative to the source.
    pub file: String,
    /// 1-based record number within the file (the header does not count; broken records do).
    pub row: u64,
    /// 1-based line the record starts on, for line-based formats.
    pub line: Option<u64>,
    /// Why the row is broken.
    pub reason: String,
}

impl fmt::Display for BrokenRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "`{}` line {line} (record {}): {}",
                self.file, self.row, self.reason
            ),
            None => write!(f, "`{}` record {}: {}", self.file, self.row, self.reason),
        }
    }
}

/// The outcome of a complete read; always the last item of a successful stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSummary {
    /// Rows delivered in batches.
    pub rows_read: u64,
    /// Broken rows reported (and skipped).
    pub rows_broken: u64,
    /// Resume point covering everything this read consumed (also trailing broken rows).
    /// `None` only if the source was empty and no `since` cursor was given.
    pub cursor: Option<Cursor>,
    /// `false` when the read stopped at `max_rows` (more rows may follow from `cursor`).
    pub complete: bool,
}

/// One item of a read.
#[derive(Debug, Clone)]
pub enum ReadItem {
    /// Rows, with the cursor right after the batch's last row.
    Batch {
        /// The rows; the schema equals the (projected) connector schema.
        batch: RecordBatch,
        /// Resume point after this batch.
        cursor: Cursor,
    },
    /// A row that was skipped; reported before the batch that follows it.
    Broken(BrokenRow),
    /// The read finished; nothing follows.
    End(ReadSummary),
}

/// Result of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// What was checked (e.g. `3 parquet files, 1234567 bytes`).
    pub detail: String,
}

/// Live counters of one read, shared between the reader thread and the consumer.
#[derive(Debug, Default)]
pub struct ReadProgress {
    records_scanned: AtomicU64,
    rows_read: AtomicU64,
    rows_broken: AtomicU64,
    released: AtomicBool,
}

impl ReadProgress {
    /// Records the reader has taken from the source so far (good, broken and skipped).
    pub fn records_scanned(&self) -> u64 {
        self.records_scanned.load(Ordering::Acquire)
    }

    /// Rows handed to the stream so far.
    pub fn rows_read(&self) -> u64 {
        self.rows_read.load(Ordering::Acquire)
    }

    /// Broken rows reported so far.
    pub fn rows_broken(&self) -> u64 {
        self.rows_broken.load(Ordering::Acquire)
    }

    /// Whether the reader has finished and closed the source (files closed, thread ending).
    pub fn source_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// For implementations: count records taken from the source.
    pub fn add_scanned(&self, records: u64) {
        self.records_scanned.fetch_add(records, Ordering::AcqRel);
    }
}

/// The sending half a reader thread writes items into (see [`spawn_reader`]).
#[derive(Debug)]
pub struct ReadSink {
    tx: mpsc::Sender<Result<ReadItem, ConnectorError>>,
    progress: Arc<ReadProgress>,
}

/// The consumer dropped the stream; the reader must stop and release the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl ReadSink {
    /// Sends an item, blocking while the consumer is behind. Fails once the consumer is gone.
    pub fn send(&self, item: ReadItem) -> Result<(), Cancelled> {
        match &item {
            ReadItem::Batch { batch, .. } => {
                self.progress
                    .rows_read
                    .fetch_add(batch.num_rows() as u64, Ordering::AcqRel);
            }
            ReadItem::Broken(_) => {
                self.progress.rows_broken.fetch_add(1, Ordering::AcqRel);
            }
            ReadItem::End(_) => {}
        }
        self.tx.blocking_send(Ok(item)).map_err(|_| Cancelled)
    }

    /// Whether the consumer has dropped the stream.
    pub fn is_cancelled(&self) -> bool {
        self.tx.is_closed()
    }

    /// The read's counters.
    pub fn progress(&self) -> &ReadProgress {
        &self.progress
    }

    fn fail(&self, error: ConnectorError) {
        // The consumer may be gone already; then nobody is left to tell.
        let _ = self.tx.blocking_send(Err(error));
    }
}

/// Marks the source released when the reader thread is done with it.
struct ReleaseOnDrop(Arc<ReadProgress>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.released.store(true, Ordering::Release);
    }
}

/// Runs a blocking reader on a blocking thread (see `start_blocking`) and returns the stream it feeds.
///
/// `open` runs first on the thread (list and open the source, validate the cursor); its error is
/// returned from this function. Then `run` produces items into the [`ReadSink`] and returns the
/// summary, which becomes the stream's last item. `run` must return promptly once
/// [`ReadSink::send`] reports [`Cancelled`]. Whatever `open` returned is dropped before the
/// progress reports the source as released. A panic on the thread becomes
/// [`ConnectorError::Internal`].
pub async fn spawn_reader<S, O, R>(
    schema: SchemaRef,
    open: O,
    run: R,
) -> Result<ReadStream, ConnectorError>
where
    O: FnOnce(&ReadProgress) -> Result<S, ConnectorError> + Send + 'static,
    R: FnOnce(S, &ReadSink) -> Result<ReadSummary, ConnectorError> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READ_QUEUE_CAPACITY);
    let progress = Arc::new(ReadProgress::default());
    let (ready_tx, ready_rx) = futures::channel::oneshot::channel::<Result<(), ConnectorError>>();
    let sink = ReadSink {
        tx,
        progress: progress.clone(),
    };
    let thread_progress = progress.clone();
    start_blocking("allmende-read", move || {
        let _release = ReleaseOnDrop(thread_progress.clone());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let state = match open(&thread_progress) {
                Ok(state) => state,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            if ready_tx.send(Ok(())).is_err() {
                return; // the read future was dropped
            }
            match run(state, &sink) {
                Ok(summary) => {
                    let _ = sink.send(ReadItem::End(summary));
                }
                Err(e) => sink.fail(e),
            }
        }));
        if let Err(payload) = outcome {
            sink.fail(ConnectorError::Internal(format!(
                "reader panicked: {}",
                panic_message(payload.as_ref())
            )));
        }
    })
    .map_err(|e| ConnectorError::Internal(format!("cannot start reader thread: {e}")))?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(ReadStream {
            schema,
            rx,
            progress,
            done: false,
            on_error: None,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ConnectorError::Internal(
            "reader thread stopped before the source was opened".into(),
        )),
    }
}

/// Runs blocking work off the async threads: on the runtime's blocking pool when called inside
/// a tokio runtime (its threads are reused, so a read does not pay for a new OS thread), else on
/// a thread of its own named `name`.
fn start_blocking(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            // Not awaited: the work reports through its own channels.
            drop(rt.spawn_blocking(f));
            Ok(())
        }
        Err(_) => std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map(drop),
    }
}

/// Called with the error that ends a read (see [`ReadStream::on_error`]).
pub type ErrorHook = Box<dyn Fn(&ConnectorError) + Send + Sync>;

/// The stream of a read. Dropping it cancels the read and releases the source.
pub struct ReadStream {
    schema: SchemaRef,
    rx: mpsc::Receiver<Result<ReadItem, ConnectorError>>,
    progress: Arc<ReadProgress>,
    done: bool,
    on_error: Option<ErrorHook>,
}

impl fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadStream")
            .field("schema", &self.schema)
            .field("progress", &self.progress)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ReadStream {
    /// Schema of every batch of this read (projected).
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The read's live counters; keep a clone to watch the reader after dropping the stream.
    pub fn progress(&self) -> Arc<ReadProgress> {
        self.progress.clone()
    }

    /// Calls `hook` with the error that ends the read, if one does (e.g. to audit a source
    /// refused in the middle of a read). Replaces an earlier hook.
    pub fn on_error(mut self, hook: ErrorHook) -> Self {
        self.on_error = Some(hook);
        self
    }

    /// Reads the whole stream into memory (tests, small sources).
    pub async fn collect_all(mut self) -> Result<CollectedRead, ConnectorError> {
        use futures::StreamExt;
        let mut out = CollectedRead {
            schema: self.schema.clone(),
            batches: Vec::new(),
            broken: Vec::new(),
            summary: None,
        };
        while let Some(item) = self.next().await {
            match item? {
                ReadItem::Batch { batch, cursor } => out.batches.push((batch, cursor)),
                ReadItem::Broken(b) => out.broken.push(b),
                ReadItem::End(s) => out.summary = Some(s),
            }
        }
        Ok(out)
    }
}

impl Stream for ReadStream {
    type Item = Result<ReadItem, ConnectorError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(ReadItem::End(summary)))) => {
                this.done = true;
                Poll::Ready(Some(Ok(ReadItem::End(summary))))
            }
            Poll::Ready(Some(Ok(item))) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                if let Some(hook) = &this.on_error {
                    hook(&e);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(Some(Err(ConnectorError::Internal(
                    "reader stopped before the end of the source".into(),
                ))))
            }
        }
    }
}

/// A whole read held in memory (see [`ReadStream::collect_all`]).
#[derive(Debug, Clone)]
pub struct CollectedRead {
    /// Schema of the batches.
    pub schema: SchemaRef,
    /// Batches with the cursor after each.
    pub batches: Vec<(RecordBatch, Cursor)>,
    /// Broken rows, in order.
    pub broken: Vec<BrokenRow>,
    /// The summary (`None` is impossible for a stream that ended without error).
    pub summary: Option<ReadSummary>,
}

impl CollectedRead {
    /// All rows as one batch.
    pub fn concat(&self) -> Result<RecordBatch, ConnectorError> {
        arrow::compute::concat_batches(&self.schema, self.batches.iter().map(|(b, _)| b))
            .map_err(|e| ConnectorError::Internal(format!("cannot concatenate batches: {e}")))
    }

    /// Rows delivered.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|(b, _)| b.num_rows()).sum()
    }
}

/// Runs blocking work (health checks) off the async runtime.
pub(crate) async fn run_blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, ConnectorError> + Send + 'static,
) -> Result<T, ConnectorError> {
    let (tx, rx) = futures::channel::oneshot::channel();
    start_blocking("allmende-connector", move || {
        let _ = tx.send(crate::error::guard(what, f));
    })
    .map_err(|e| ConnectorError::Internal(format!("cannot start {what} thread: {e}")))?;
    rx.await
        .map_err(|_| ConnectorError::Internal(format!("{what} thread stopped")))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_api_fits_an_async_broker() {
        fn send_static<T: Send + Sync + 'static>() {}
        fn stream<T: Stream + Send + Unpin + 'static>() {}
        send_static::<std::sync::Arc<dyn Connector>>();
        send_static::<ConnectorError>();
        stream::<ReadStream>();
        let _as_trait_object = |c: crate::files::FileConnector| -> std::sync::Arc<dyn Connector> {
            std::sync::Arc::new(c)
        };
    }

    #[test]
    fn cursor_tokens_round_trip() {
        let cursors = [
            Cursor::Position {
                file: "2025/01/a:b.parquet".into(),
                row: 12,
            },
            Cursor::Column {
                column: "timestamp".into(),
                value: CursorValue::Int(-5),
                count: 3,
            },
            Cursor::Column {
                column: "k".into(),
                value: CursorValue::Text("x\"y".into()),
                count: 1,
            },
        ];
        for c in cursors {
            let token = c.to_string();
            assert_eq!(token.parse::<Cursor>().unwrap(), c);
        }
        let err = "garbage".parse::<Cursor>().unwrap_err();
        assert!(matches!(err, ConnectorError::InvalidCursor(_)), "{err}");
        assert!(r#"{"position":{"file":"a","row":1,"extra":2}}"#.parse::<Cursor>().is_err());
    }
}
