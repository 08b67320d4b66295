//! Load generator: streaming about 1 GB of Arrow IPC over mTLS on loopback
//! through the node's faces, against a raw tonic+rustls stream of the same
//! bytes and against a pyarrow Flight server serving the same table, in the
//! same run.
//!
//! The dataset is the city's public `air-quality` (the demo's generator,
//! `allmende_connectors::sample::air_quality`: five stations, hourly NO₂,
//! PM10, PM2.5, run over many years): Parquet files of 99 960 rows each
//! (833 days), generated once into `target/bench-data/` and reused. Public
//! data, so every read is a Cedar decision (and its audit entries) without
//! grant, consent gate or pseudonyms. Its size is set in bytes of Arrow IPC
//! as the node releases it (`ALLMENDE_STREAM_MB`, default 1024 MiB).
//!
//! The node runs as a separate process, the `allmende` binary of this build
//! (`allmende node run --config …`), so that its peak memory (`VmHWM` of
//! `/proc/<pid>/status`) is its own. The sandbox onboards the federation
//! (stadt, tum) and is stopped; the city's node config gets the data
//! directory as a source root and `[limits]` raised for one caller's many
//! pages (`fetch_rate_per_caller`, `fetch_burst_per_caller`); the city's
//! steward registers the dataset at the running process.
//!
//! Faces (`ALLMENDE_STREAM_FACES`, default `fetch,flight,raw,pyarrow`), each read by
//! `tum/alice` over one mTLS connection of the same client stack:
//!
//! - `fetch`: `Access.Fetch` at the node process, page after page (one page
//!   per file: `max_rows` = the rows of a file, below the node's cap of
//!   100 000 released rows per response), following the resume cursors;
//!   each page is decided, its intent durable before it reads, its
//!   completion durable before its last message;
//!   with `ALLMENDE_STREAM_PAGE_ROWS=<n>` the node's config sets
//!   `[limits] fetch_rows_per_response = <n>` and the client asks for the
//!   node's cap (`max_rows` 0): pages of `n` rows, the whole dataset in one
//!   response when `n` is at least its rows;
//! - `raw`: a tonic server-streaming method with rustls (ring) in this
//!   process, the city node's certificate, client certificates required:
//!   the same Arrow IPC messages (read from the Parquet files into memory
//!   before the run, batches of the node's 4 096 rows) as protobuf
//!   `bytes` of field 1, the wire shape of a `FetchResponse` — the transport
//!   ceiling;
//! - `pyarrow`: `broker/benches/streaming_pyarrow_server.py`, pyarrow's
//!   `FlightServerBase` with mTLS, `do_get` answering a `RecordBatchStream`
//!   of the same table (read from the same files, cut into batches of the
//!   same size, held in memory); the client calls `DoGet` over gRPC;
//! - `flight`: our Flight face on the node process: `GetFlightInfo` for
//!   `air-quality` (a decided, audited call), then [`do_get`] of the sealed
//!   ticket on the node's endpoint — one release, one decision, no pages.
//!
//! Each face is warmed up (the first `ALLMENDE_STREAM_WARMUP_MB`, default
//! 64, then the stream is dropped), then every face streams the whole
//! dataset `ALLMENDE_STREAM_RUNS` times (default 2), interleaved. Every
//! full run is checked to deliver every row. Figures go to stdout as
//! markdown (`docs/benchmarks.md`).
//!
//! `cargo bench -p allmende --bench streaming`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "load generator"
)]

mod common;

use allmende::tls::ClientIdentity;
use allmende_connectors::sample::{self, SampleSpec};
use allmende_proto::v1 as pb;
use bytes::Bytes;
use common::loadavg;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::transport::Channel;

const NODE: &str = "stadt-1";
const DATASET: &str = "air-quality";
/// Days per file: 833 × 24 hours × 5 stations = 99 960 rows, below the
/// node's 100 000 released rows per response, so one page is one file.
const DAYS_PER_FILE: u32 = 833;
const ROWS_PER_FILE: u64 = 833 * 24 * 5;
/// The node's batch size (`FetchLimits::batch_rows`).
const BATCH_ROWS: usize = 4096;
const RAW_PATH: &str = "/allmende.bench.Raw/Stream";
const DO_GET_PATH: &str = "/arrow.flight.protocol.FlightService/DoGet";
const MIB: u64 = 1024 * 1024;

/// A number from the environment, `default` if unset.
fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// The dataset.

/// The cached dataset: its directory, files and rows.
struct Dataset {
    dir: PathBuf,
    files: usize,
    rows: u64,
}

/// Arrow IPC messages of `batches` as the node cuts them: the schema with
/// the first batch, one message per batch, the end marker with the last.
fn ipc_messages(batches: &[arrow::record_batch::RecordBatch]) -> Vec<Bytes> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let mut w = arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &first.schema()).unwrap();
    let mut pending = std::mem::take(w.get_mut());
    let mut out = Vec::new();
    for b in batches {
        w.write(b).unwrap();
        pending.extend(std::mem::take(w.get_mut()));
        out.push(std::mem::take(&mut pending));
    }
    w.finish().unwrap();
    if let Some(last) = out.last_mut() {
        last.extend(std::mem::take(w.get_mut()));
    }
    out.into_iter().map(Bytes::from).collect()
}

/// One file's rows in batches of the node's size.
fn file_batches(path: &Path) -> Vec<arrow::record_batch::RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .with_batch_size(BATCH_ROWS)
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Generates the dataset into the cache (once): as many files as needed for
/// `target` bytes of Arrow IPC.
fn dataset(target: u64) -> Dataset {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("bench-data");
    let dir = base.join(format!("air-quality-{}mib", target / MIB));
    let marker = dir.join("_complete");
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Some(files) = text.trim().parse::<usize>().ok()
    {
        return Dataset {
            dir: std::fs::canonicalize(&dir).unwrap(),
            files,
            rows: files as u64 * ROWS_PER_FILE,
        };
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let t = Instant::now();
    let spec = |i: usize| SampleSpec {
        seed: 0xA1A1_0000 + i as u64,
        days: DAYS_PER_FILE,
        start: 946_684_800 + i as i64 * i64::from(DAYS_PER_FILE) * 86_400, // from 2000-01-01
        ..Default::default()
    };
    let write = |i: usize| {
        let b = sample::air_quality(&spec(i)).unwrap();
        assert_eq!(b.num_rows() as u64, ROWS_PER_FILE);
        let path = dir.join(format!("part-{i:05}.parquet"));
        allmende_connectors::write::write_parquet(&path, &b.schema(), &[b]).unwrap();
        path
    };
    // The IPC size of one file sets how many are needed.
    let first = write(0);
    let per_file: u64 = ipc_messages(&file_batches(&first))
        .iter()
        .map(|m| m.len() as u64)
        .sum();
    let files = target.div_ceil(per_file).max(1) as usize;
    for i in 1..files {
        write(i);
    }
    std::fs::write(&marker, files.to_string()).unwrap();
    eprintln!(
        "generated {files} files ({} rows, {:.0} MiB of IPC) in {:.1} s",
        files as u64 * ROWS_PER_FILE,
        (files as u64 * per_file) as f64 / MIB as f64,
        t.elapsed().as_secs_f64()
    );
    Dataset {
        dir: std::fs::canonicalize(&dir).unwrap(),
        files,
        rows: files as u64 * ROWS_PER_FILE,
    }
}

// ---------------------------------------------------------------------------
// Processes.

/// A value of `/proc/<pid>/status` in KiB (`VmHWM`, `VmRSS`).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time a process has used (user + system, `/proc/<pid>/stat`).
fn cpu_of(pid: u32) -> Duration {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Spawns `cmd` and waits for a stdout line starting with `prefix`
    /// (returned); the rest of stdout is drained in a thread.
    fn spawn(mut cmd: Command, prefix: &str) -> (Self, String) {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("{cmd:?} ended before printing `{prefix}`");
            }
            if line.starts_with(prefix) {
                break;
            }
        }
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        (Self(child), line.trim().to_owned())
    }

    /// Asks the process to stop (SIGTERM) and waits up to 10 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The node's gRPC endpoint from the line it prints once it listens.
fn node_endpoint(line: &str) -> String {
    // `listening grpc=https://127.0.0.1:PORT admin=…`
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .unwrap()
        .to_owned()
}

// ---------------------------------------------------------------------------
// The client stack (the same for every face).

/// An mTLS channel of `id` to `endpoint`: as `allmende::tls::connect`, but
/// without a call deadline (a whole stream may take longer).
async fn connect(endpoint: &str, id: &ClientIdentity) -> Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&id.root_pem))
        .identity(Identity::from_pem(&id.chain_pem, &id.key_pem));
    Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {endpoint}: {e:?}"))
}

/// What a stream delivered.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    bytes: u64,
    rows: u64,
    messages: u64,
    /// Responses (pages) it took.
    calls: u64,
}

/// A bytes limit for warm-ups: stop (drop the stream) once reached.
fn over(t: &Tally, limit: Option<u64>) -> bool {
    limit.is_some_and(|l| t.bytes >= l)
}

/// The whole dataset (or `limit` bytes of it) through `Access.Fetch`, page
/// after page along the resume cursors.
async fn fetch_all(ch: Channel, max_rows: u64, limit: Option<u64>) -> Result<Tally, String> {
    let mut c = pb::access_client::AccessClient::new(ch).max_decoding_message_size(64 << 20);
    let mut t = Tally::default();
    let mut cursor = String::new();
    loop {
        let mut s = c
            .fetch(pb::FetchRequest {
                dataset: DATASET.into(),
                resume_cursor: std::mem::take(&mut cursor),
                max_rows,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("page {}: {e}", t.calls + 1))?
            .into_inner();
        t.calls += 1;
        let mut summary = None;
        while let Some(m) = s.message().await.map_err(|e| e.to_string())? {
            t.bytes += m.arrow_ipc.len() as u64;
            t.messages += 1;
            if let Some(sum) = m.summary {
                summary = Some(sum);
            }
            if over(&t, limit) {
                return Ok(t);
            }
        }
        let sum = summary.ok_or("a page without summary")?;
        t.rows += sum.rows;
        if sum.complete {
            return Ok(t);
        }
        cursor = sum.next_cursor;
    }
}

/// The raw stream's request (nothing) and message: bytes in field 1, the
/// wire shape of a `FetchResponse` without summary.
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
struct RawMessage {
    #[prost(bytes = "bytes", tag = "1")]
    arrow_ipc: Bytes,
}

/// The whole raw stream (or `limit` bytes of it); rows counted from the
/// batches the server sends (`rows_per_message`).
async fn raw_all(
    ch: Channel,
    rows_per_message: Arc<[u64]>,
    limit: Option<u64>,
) -> Result<Tally, String> {
    let mut c = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
    c.ready().await.map_err(|e| e.to_string())?;
    let mut s = c
        .server_streaming(
            tonic::Request::new(Empty {}),
            http::uri::PathAndQuery::from_static(RAW_PATH),
            tonic_prost::ProstCodec::<Empty, pb::FetchResponse>::default(),
        )
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut t = Tally {
        calls: 1,
        ..Default::default()
    };
    while let Some(m) = s.message().await.map_err(|e| e.to_string())? {
        t.bytes += m.arrow_ipc.len() as u64;
        t.rows += rows_per_message
            .get(t.messages as usize)
            .copied()
            .unwrap_or(0);
        t.messages += 1;
        if over(&t, limit) {
            break;
        }
    }
    Ok(t)
}

/// Arrow Flight's `Ticket` and `FlightData` (the fields read here; prost
/// skips the others).
#[derive(Clone, PartialEq, prost::Message)]
struct Ticket {
    #[prost(bytes = "vec", tag = "1")]
    ticket: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct FlightData {
    #[prost(bytes = "bytes", tag = "2")]
    data_header: Bytes,
    #[prost(bytes = "bytes", tag = "1000")]
    data_body: Bytes,
}

/// Flight `DoGet` of `ticket` (or `limit` bytes of it): bytes are the IPC
/// headers and bodies, rows are read from each record batch header.
async fn do_get(ch: Channel, ticket: Vec<u8>, limit: Option<u64>) -> Result<Tally, String> {
    let mut c = tonic::client::Grpc::new(ch).max_decoding_message_size(64 << 20);
    c.ready().await.map_err(|e| e.to_string())?;
    let mut s = c
        .server_streaming(
            tonic::Request::new(Ticket { ticket }),
            http::uri::PathAndQuery::from_static(DO_GET_PATH),
            tonic_prost::ProstCodec::<Ticket, FlightData>::default(),
        )
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut t = Tally {
        calls: 1,
        ..Default::default()
    };
    while let Some(m) = s.message().await.map_err(|e| e.to_string())? {
        t.bytes += (m.data_header.len() + m.data_body.len()) as u64;
        t.messages += 1;
        let msg = arrow::ipc::root_as_message(&m.data_header)
            .map_err(|e| format!("not an IPC message header: {e}"))?;
        if let Some(b) = msg.header_as_record_batch() {
            t.rows += u64::try_from(b.length()).unwrap_or(0);
        }
        if over(&t, limit) {
            break;
        }
    }
    Ok(t)
}

/// The sealed ticket of `GetFlightInfo` for the whole dataset (the node
/// decides and audits the call; `DoGet` decides again).
async fn flight_ticket(ch: Channel) -> Result<Vec<u8>, String> {
    let mut c = arrow_flight::flight_service_client::FlightServiceClient::new(ch);
    let info = c
        .get_flight_info(arrow_flight::FlightDescriptor::new_path(vec![
            DATASET.to_owned(),
        ]))
        .await
        .map_err(|e| e.message().to_owned())?
        .into_inner();
    info.endpoint
        .first()
        .and_then(|e| e.ticket.as_ref())
        .map(|t| t.ticket.to_vec())
        .ok_or_else(|| "the flight info has no ticket".to_owned())
}

// ---------------------------------------------------------------------------
// The raw server.

#[derive(Clone)]
struct Raw(Arc<[Bytes]>);

impl tonic::server::NamedService for Raw {
    const NAME: &'static str = "allmende.bench.Raw";
}

type RawStream =
    Pin<Box<dyn futures::Stream<Item = Result<RawMessage, tonic::Status>> + Send + 'static>>;

impl tonic::server::ServerStreamingService<Empty> for Raw {
    type Response = RawMessage;
    type ResponseStream = RawStream;
    type Future = BoxFuture<tonic::Response<RawStream>, tonic::Status>;
    fn call(&mut self, _request: tonic::Request<Empty>) -> Self::Future {
        let msgs = self.0.clone();
        Box::pin(async move {
            let s = futures::stream::iter((0..msgs.len()).map(move |i| {
                Ok(RawMessage {
                    arrow_ipc: msgs[i].clone(),
                })
            }));
            Ok(tonic::Response::new(Box::pin(s) as RawStream))
        })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Raw
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != RAW_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        let svc = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.server_streaming(svc, req).await)
        })
    }
}

/// Starts the raw server on a free loopback port with the node's
/// certificate, requiring client certificates of the federation.
async fn start_raw(node_dir: &Path, msgs: Arc<[Bytes]>) -> String {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let read = |f: &str| std::fs::read_to_string(node_dir.join(f)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("node.crt"), read("node.key")))
        .client_ca_root(Certificate::from_pem(read("root-ca.crt")));
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(Raw(msgs))
        .serve_with_incoming(incoming);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("raw server: {e}");
        }
    });
    format!("https://{addr}")
}

// ---------------------------------------------------------------------------
// Faces and measurements.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Face {
    Fetch,
    Flight,
    Raw,
    Pyarrow,
}

impl Face {
    fn parse(s: &str) -> Self {
        match s.trim() {
            "fetch" => Self::Fetch,
            "raw" => Self::Raw,
            "pyarrow" => Self::Pyarrow,
            "flight" => Self::Flight,
            other => panic!("unknown face `{other}` (fetch, flight, raw, pyarrow)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Fetch => "`Access.Fetch` (node process)",
            Self::Flight => "our Flight `DoGet` (node process)",
            Self::Raw => "raw tonic+rustls stream",
            Self::Pyarrow => "pyarrow Flight `do_get`",
        }
    }
}

/// Where the faces are served and what they need.
struct Targets {
    node: Channel,
    /// `max_rows` of each `Access.Fetch` request (0: the node's cap).
    max_rows: u64,
    raw: Option<(Channel, Arc<[u64]>)>,
    pyarrow: Option<Channel>,
}

impl Targets {
    async fn stream(&self, face: Face, limit: Option<u64>) -> Result<Tally, String> {
        match face {
            Face::Fetch => fetch_all(self.node.clone(), self.max_rows, limit).await,
            Face::Flight => {
                let ticket = flight_ticket(self.node.clone()).await?;
                do_get(self.node.clone(), ticket, limit).await
            }
            Face::Raw => {
                let (ch, rows) = self.raw.clone().ok_or("no raw server")?;
                raw_all(ch, rows, limit).await
            }
            Face::Pyarrow => {
                let ch = self.pyarrow.clone().ok_or("no pyarrow server")?;
                do_get(ch, b"air-quality".to_vec(), limit).await
            }
        }
    }
}

/// One measured stream.
struct Run {
    face: Face,
    run: u64,
    tally: Tally,
    secs: f64,
    node_cpu: Duration,
    bench_cpu: Duration,
    server_cpu: Option<Duration>,
    node_rss_max_kib: u64,
}

impl Run {
    fn mb_s(&self) -> f64 {
        self.tally.bytes as f64 / 1e6 / self.secs
    }
}

/// The largest `VmRSS` of `pid` while `f` runs, sampled every 20 ms.
async fn with_rss<T>(pid: u32, f: impl std::future::Future<Output = T>) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max) = (stop.clone(), max.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                max.fetch_max(status_kib(pid, "VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let out = f.await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    max.fetch_max(status_kib(pid, "VmRSS"), Ordering::Relaxed);
    (out, max.load(Ordering::Relaxed))
}

fn main() {
    let target = env_number("ALLMENDE_STREAM_MB", 1024).max(1) * MIB;
    let runs = env_number("ALLMENDE_STREAM_RUNS", 2).max(1);
    let warmup = env_number("ALLMENDE_STREAM_WARMUP_MB", 64) * MIB;
    let page_rows = std::env::var("ALLMENDE_STREAM_PAGE_ROWS").ok().map(|v| {
        v.parse::<u64>()
            .expect("ALLMENDE_STREAM_PAGE_ROWS is a number of rows")
    });
    let faces: Vec<Face> = std::env::var("ALLMENDE_STREAM_FACES")
        .unwrap_or_else(|_| "fetch,flight,raw,pyarrow".into())
        .split(',')
        .map(Face::parse)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(target, runs, warmup, faces, page_rows));
}

async fn run(target: u64, runs: u64, warmup: u64, faces: Vec<Face>, page_rows: Option<u64>) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load_start = loadavg();
    let data = tokio::task::spawn_blocking(move || dataset(target))
        .await
        .unwrap();
    let parquet_bytes: u64 = std::fs::read_dir(&data.dir)
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();

    // Onboarding through the sandbox; its nodes stop, the city's node runs
    // as a process of its own.
    let mut sb = common::federation(&["stadt", "tum"], &[]).await;
    let names: Vec<String> = sb.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &names {
        sb.stop_node(n).await.unwrap();
    }
    let cfg = sb.node_config_path(NODE).unwrap();
    let node_dir = cfg.parent().unwrap().to_path_buf();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replacen(
        "roots = [",
        &format!(
            "roots = [{}, ",
            toml::Value::String(data.dir.display().to_string())
        ),
        1,
    );
    text.push_str("\n[limits]\nfetch_rate_per_caller = 100000\nfetch_burst_per_caller = 100000\n");
    if let Some(n) = page_rows {
        text.push_str(&format!("fetch_rows_per_response = {n}\n"));
    }
    std::fs::write(&cfg, &text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_allmende"));
    cmd.args(["node", "run", "--config"])
        .arg(&cfg)
        .env("ALLMENDE_LOG_LEVEL", "warn");
    let (node, line) = Proc::spawn(cmd, "listening ");
    let endpoint = node_endpoint(&line);
    let node_pid = node.pid();
    let node_hwm_idle = status_kib(node_pid, "VmHWM");

    let steward = sb.profile("stadt", "steward").unwrap().identity().unwrap();
    let mut config = allmende_connectors::FileConnectorConfig::new(
        &data.dir,
        allmende_connectors::FileFormat::Parquet,
    );
    config.schema = Some(sample::air_quality_fields());
    pb::connectors_client::ConnectorsClient::new(connect(&endpoint, &steward).await)
        .register(pb::RegisterConnectorRequest {
            dataset_json: serde_json::to_string(&allmende::demo::munich::air_quality()).unwrap(),
            kind: "files".into(),
            config_json: serde_json::to_string(&config).unwrap(),
        })
        .await
        .unwrap();
    let node_hwm_registered = status_kib(node_pid, "VmHWM");

    let alice = sb.profile("tum", "alice").unwrap().identity().unwrap();
    let mut targets = Targets {
        node: connect(&endpoint, &alice).await,
        max_rows: if page_rows.is_some() {
            0
        } else {
            ROWS_PER_FILE
        },
        raw: None,
        pyarrow: None,
    };

    // The raw server's messages, read before the runs.
    let bench_rss_before_raw = common::rss_kib();
    if faces.contains(&Face::Raw) {
        let dir = data.dir.clone();
        let (msgs, rows) = tokio::task::spawn_blocking(move || {
            let mut msgs = Vec::new();
            let mut rows = Vec::new();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                .collect();
            files.sort();
            for f in files {
                let batches = file_batches(&f);
                rows.extend(batches.iter().map(|b| b.num_rows() as u64));
                msgs.extend(ipc_messages(&batches));
            }
            (msgs, rows)
        })
        .await
        .unwrap();
        let raw_endpoint = start_raw(&node_dir, msgs.into()).await;
        targets.raw = Some((connect(&raw_endpoint, &alice).await, rows.into()));
    }
    let bench_rss_raw_data = common::rss_kib().saturating_sub(bench_rss_before_raw);

    let mut pyarrow = None;
    if faces.contains(&Face::Pyarrow) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches")
            .join("streaming_pyarrow_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .arg("--data")
            .arg(&data.dir)
            .arg("--cert")
            .arg(node_dir.join("node.crt"))
            .arg("--key")
            .arg(node_dir.join("node.key"))
            .arg("--root")
            .arg(node_dir.join("root-ca.crt"))
            .arg("--batch-rows")
            .arg(BATCH_ROWS.to_string());
        let (p, line) = Proc::spawn(cmd, "listening ");
        let port = line.split_whitespace().nth(1).unwrap().to_owned();
        targets.pyarrow = Some(connect(&format!("https://127.0.0.1:{port}"), &alice).await);
        pyarrow = Some(p);
    }
    let pyarrow_pid = pyarrow.as_ref().map(Proc::pid);

    // Warm-up.
    for &face in &faces {
        let t = targets.stream(face, Some(warmup)).await;
        if let Err(e) = t {
            panic!("warm-up of {}: {e}", face.name());
        }
    }
    let load_before = loadavg();

    let mut results = Vec::new();
    for run in 1..=runs {
        for &face in &faces {
            let node_cpu = cpu_of(node_pid);
            let bench_cpu = common::cpu_time();
            let server_cpu = pyarrow_pid.map(cpu_of);
            let start = Instant::now();
            let (tally, rss) = with_rss(node_pid, targets.stream(face, None)).await;
            let secs = start.elapsed().as_secs_f64();
            let tally = tally.unwrap_or_else(|e| panic!("{} run {run}: {e}", face.name()));
            assert_eq!(
                tally.rows,
                data.rows,
                "{} run {run} delivered {} of {} rows",
                face.name(),
                tally.rows,
                data.rows
            );
            results.push(Run {
                face,
                run,
                tally,
                secs,
                node_cpu: cpu_of(node_pid).saturating_sub(node_cpu),
                bench_cpu: common::cpu_time().saturating_sub(bench_cpu),
                server_cpu: pyarrow_pid
                    .zip(server_cpu)
                    .filter(|_| face == Face::Pyarrow)
                    .map(|(p, c)| cpu_of(p).saturating_sub(c)),
                node_rss_max_kib: rss,
            });
        }
    }
    let load_after = loadavg();
    let node_hwm = status_kib(node_pid, "VmHWM");
    let pyarrow_hwm = pyarrow_pid.map(|p| status_kib(p, "VmHWM"));
    let bench_hwm = status_kib(std::process::id(), "VmHWM");

    // Report.
    let mean = |face: Face| {
        let r: Vec<&Run> = results.iter().filter(|r| r.face == face).collect();
        (!r.is_empty()).then(|| r.iter().map(|r| r.mb_s()).sum::<f64>() / r.len() as f64)
    };
    let raw_mean = mean(Face::Raw);
    let py_mean = mean(Face::Pyarrow);
    println!(
        "dataset `{DATASET}`: {} Parquet files of {ROWS_PER_FILE} rows, {} rows, {:.0} MiB of Parquet (snappy) in `{}`; batches of {BATCH_ROWS} rows; {cores} cores; load average (1/5/15 min) at start {load_start}, before the runs {load_before}, at the end {load_after}",
        data.files,
        data.rows,
        parquet_bytes as f64 / MIB as f64,
        data.dir.display()
    );
    println!();
    println!(
        "`Access.Fetch` pages: {}",
        match page_rows {
            Some(n) => format!(
                "the node's `[limits] fetch_rows_per_response = {n}`, requests with `max_rows` 0"
            ),
            None => format!(
                "the node's default cap (100 000 rows), requests with `max_rows` {ROWS_PER_FILE} (one file per page)"
            ),
        }
    );
    println!();
    println!(
        "| face | run | MB/s | rows/s | ÷ raw (mean) | ÷ pyarrow (mean) | seconds | IPC bytes | rows | messages | calls | node CPU | bench process CPU | pyarrow server CPU | node VmRSS max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ratio = |v: f64, base: Option<f64>| base.map_or("–".into(), |b| format!("{:.2}", v / b));
    for r in &results {
        println!(
            "| {} | {} | {:.0} | {:.0} | {} | {} | {:.2} | {} | {} | {} | {} | {:.2} s | {:.2} s | {} | {} MiB |",
            r.face.name(),
            r.run,
            r.mb_s(),
            r.tally.rows as f64 / r.secs,
            ratio(r.mb_s(), raw_mean),
            ratio(r.mb_s(), py_mean),
            r.secs,
            r.tally.bytes,
            r.tally.rows,
            r.tally.messages,
            r.tally.calls,
            r.node_cpu.as_secs_f64(),
            r.bench_cpu.as_secs_f64(),
            r.server_cpu
                .map_or("–".into(), |c| format!("{:.2} s", c.as_secs_f64())),
            r.node_rss_max_kib / 1024,
        );
    }
    println!();
    for (face, label) in [
        (Face::Fetch, "`Access.Fetch`"),
        (Face::Flight, "our Flight `DoGet`"),
    ] {
        let Some(f) = mean(face) else { continue };
        if let Some(raw) = raw_mean {
            let q = f / raw;
            println!(
                "{label} ÷ raw (means): {q:.2} (target ≥ 0.70: {})",
                if q >= 0.7 { "met" } else { "missed" }
            );
        }
        if let Some(py) = py_mean {
            println!(
                "{label} ÷ pyarrow Flight (means): {:.2} ({})",
                f / py,
                if f > py { "faster" } else { "slower" }
            );
        }
    }
    println!(
        "node process VmHWM: {} MiB (after start {} MiB, after registration {} MiB; target < 256 MiB: {})",
        node_hwm / 1024,
        node_hwm_idle / 1024,
        node_hwm_registered / 1024,
        if node_hwm < 256 * 1024 {
            "met"
        } else {
            "missed"
        }
    );
    if let Some(h) = pyarrow_hwm {
        println!(
            "pyarrow server VmHWM: {} MiB (the table held in memory)",
            h / 1024
        );
    }
    println!(
        "bench process VmHWM: {} MiB (client, raw server and its {} MiB of pre-read IPC messages)",
        bench_hwm / 1024,
        bench_rss_raw_data / 1024
    );
    node.stop();
    drop(pyarrow);
}
