//! Load generator: authorised small reads against a plain tonic+rustls echo,
//! in the same run, on loopback, with the same mTLS client stack.
//!
//! Setup (story 2's path): SWM registers a 10-row `smart-meter-readings`
//! dataset (one household, which consented to `AcademicResearch`); TUM's
//! researcher `alice` asks for access for `AcademicResearch`; SWM's DPO
//! approves the exact request. Then `ALLMENDE_BENCH_CLIENTS` client tasks
//! (default 64), each on its own mTLS connection, call in a loop for
//! `ALLMENDE_BENCH_SECS` (default 10, after `ALLMENDE_BENCH_WARMUP` s of
//! warm-up, default 2):
//!
//! 1. `Access.Fetch` under the grant at SWM's node: every call is a Cedar
//!    decision with the grant in the context, an audited decision, a
//!    durable release intent, the consent gate, per-grant pseudonyms, and a
//!    durable completion — and 10 rows back (checked on every call);
//! 2. a unary echo on a tonic server with rustls (ring) and the same
//!    certificates (SWM's node certificate, clients verified against the
//!    federation root) and nothing else: no decision, no audit, no limits;
//! 3. `Federation.WhoAmI` at SWM's node (its whole server stack — the
//!    certificate check, limits, metrics — but no decision and no audit),
//!    to show where the time between 1 and 2 goes;
//! 4. the three audit entries of a read alone (decision, intent, completion
//!    naming the subject), appended in-process to SWM's log by as many
//!    tasks: the audit's share of a read.
//!
//! The node's per-caller fetch caps are raised (`[limits]`) so that they do
//! not cap the figure: the bench measures the cost of the read path.
//! Figures go to stdout as markdown (`docs/benchmarks.md`).
//!
//! `cargo bench -p allmende --bench authorised_reads`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "load generator"
)]

mod common;

use allmende_proto::v1 as pb;
use common::{channel, cpu_time, loadavg, percentile};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::transport::Channel;

const NODE: &str = "swm-1";
const DATASET: &str = "smart-meter-readings";
const ROWS: u64 = 10;
const ECHO_PATH: &str = "/allmende.bench.Echo/Echo";

/// A number from the environment, `default` if unset, within `1..=max`.
fn env_number(name: &str, default: u64, max: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

/// The echo's message: bytes, returned as received.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoMessage {
    #[prost(bytes = "vec", tag = "1")]
    payload: Vec<u8>,
}

/// The echo service, written as tonic's code generator would write it
/// (no build script for one method).
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "allmende.bench.Echo";
}

struct EchoUnary;

impl tonic::server::UnaryService<EchoMessage> for EchoUnary {
    type Response = EchoMessage;
    type Future = BoxFuture<tonic::Response<EchoMessage>, tonic::Status>;
    fn call(&mut self, request: tonic::Request<EchoMessage>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Echo
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
        if req.uri().path() != ECHO_PATH {
            return Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(EchoUnary, req).await)
        })
    }
}

/// Starts the echo on a free loopback port with SWM's node certificate,
/// requiring client certificates of the federation; returns its endpoint.
async fn start_echo(sb: &allmende::sandbox::Sandbox) -> String {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let dir = sb.root.join("swm").join("nodes").join(NODE);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("node.crt"), read("node.key")))
        .client_ca_root(Certificate::from_pem(read("root-ca.crt")));
    // As the node's listener: no Nagle delay on small responses.
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().unwrap();
    let server = Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_service(Echo)
        .serve_with_incoming(incoming);
    tokio::spawn(async move {
        if let Err(e) = server.await {
            eprintln!("echo server: {e}");
        }
    });
    format!("https://{addr}")
}

/// The 10-row dataset (one consenting household) with its consent record,
/// registered by SWM's steward; a grant to `tum`/`alice` approved by SWM's
/// DPO. Returns the grant id.
async fn setup(sb: &allmende::sandbox::Sandbox) -> String {
    use allmende_connectors::sample::{self, SampleSpec};
    let spec = SampleSpec {
        households: 1,
        days: 1,
        trips_per_day: 1,
        ..Default::default()
    };
    let dir = sb
        .root
        .join(allmende::sandbox::SAMPLE_DATA_DIR)
        .join("bench");
    let files = sample::write_demo_data(&dir, &spec).unwrap();
    let meter = files
        .datasets
        .iter()
        .find(|d| d.name == DATASET)
        .unwrap()
        .config
        .clone();
    // The day's 96 readings cut to the first 10.
    let meter_dir = dir.join(DATASET);
    for f in std::fs::read_dir(&meter_dir).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let day = sample::smart_meter_readings_day(&spec, 0)
        .unwrap()
        .slice(0, ROWS as usize);
    allmende_connectors::write::write_parquet(
        &meter_dir.join("readings.parquet"),
        &day.schema(),
        &[day],
    )
    .unwrap();
    let steward = sb
        .register_dataset(
            "swm",
            "steward",
            &allmende::demo::munich::smart_meter_readings(),
            &meter,
        )
        .await
        .unwrap();
    pb::consent_client::ConsentClient::new(steward)
        .import(pb::ImportConsentRequest {
            dataset: DATASET.into(),
            csv: std::fs::read(&files.consent_csv).unwrap(),
        })
        .await
        .unwrap();
    let r = pb::grants_client::GrantsClient::new(channel(sb, "tum", "alice", NODE).await)
        .request_access(pb::RequestAccessRequest {
            dataset: DATASET.into(),
            purpose: "AcademicResearch".into(),
            columns: vec!["household_id".into(), "kwh".into(), "timestamp".into()],
            days: 90,
            justification: "load profiles of consenting households".into(),
            idempotency_key: "bench-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    pb::grants_client::GrantsClient::new(channel(sb, "swm", "dpo", NODE).await)
        .approve(pb::ApproveRequest {
            request_id: r.id,
            request_hash: r.request_hash,
            note: "bench".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

fn fetch_request(grant: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        dataset: DATASET.into(),
        purpose: "AcademicResearch".into(),
        grant_id: grant.into(),
        ..Default::default()
    }
}

/// One read under the grant: the response bytes, or why it failed (also
/// when it did not release exactly 10 rows).
async fn read(
    client: &mut pb::access_client::AccessClient<Channel>,
    grant: &str,
) -> Result<usize, String> {
    let mut s = client
        .fetch(fetch_request(grant))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut bytes = 0;
    let mut rows = None;
    while let Some(m) = s.message().await.map_err(|e| e.to_string())? {
        bytes += m.arrow_ipc.len();
        if let Some(sum) = m.summary {
            rows = Some(sum.rows);
        }
    }
    match rows {
        Some(ROWS) => Ok(bytes),
        other => Err(format!("released {other:?} rows, not {ROWS}")),
    }
}

async fn echo(client: &mut tonic::client::Grpc<Channel>, payload: &[u8]) -> Result<usize, String> {
    client.ready().await.map_err(|e| e.to_string())?;
    let r: tonic::Response<EchoMessage> = client
        .unary(
            tonic::Request::new(EchoMessage {
                payload: payload.to_vec(),
            }),
            http::uri::PathAndQuery::from_static(ECHO_PATH),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let n = r.into_inner().payload.len();
    if n == payload.len() {
        Ok(n)
    } else {
        Err(format!("echoed {n} bytes of {}", payload.len()))
    }
}

async fn who_am_i(
    client: &mut pb::federation_client::FederationClient<Channel>,
) -> Result<usize, String> {
    let r = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map_err(|e| e.to_string())?;
    match r.into_inner().principal {
        Some(p) if p.organisation == "tum" => Ok(0),
        other => Err(format!("unexpected principal {other:?}")),
    }
}

/// A read's three audit entries alone, in-process on the node's log, as
/// the release path writes them: the decision, the durable intent, the
/// durable completion naming the released subject.
async fn audit_only(log: &allmende::audit::AuditLog, grant: &str) -> Result<usize, String> {
    use allmende::audit::{Draft, ReleaseStats};
    use allmende_audit::{Decision, EntryKind, ReleaseOutcome};
    let draft = |kind| {
        let mut d = Draft::new("tum", "read", DATASET, kind);
        d.user = Some("alice".into());
        d.purpose = Some("AcademicResearch".into());
        d.decision = Some(Decision::Allow);
        d.policy_ids = vec!["grant-permits-use".into()];
        d.grant_id = Some(grant.to_owned());
        d
    };
    let e = |e: allmende::audit::AuditError| e.to_string();
    log.append(draft(EntryKind::Decision)).await.map_err(e)?;
    let guard = log
        .begin_release(draft(EntryKind::ReleaseIntent))
        .await
        .map_err(e)?;
    let stats = ReleaseStats {
        rows_released: ROWS,
        rows_filtered: 0,
        bytes: 1288,
    };
    guard
        .complete_with_subjects(stats, ReleaseOutcome::Completed, vec!["HH-000001".into()])
        .await
        .map_err(e)?;
    Ok(0)
}

/// One client task's connection and what it calls.
enum Client {
    Read(pb::access_client::AccessClient<Channel>, Arc<str>),
    Echo(tonic::client::Grpc<Channel>, Arc<[u8]>),
    WhoAmI(pb::federation_client::FederationClient<Channel>),
    Audit(allmende::audit::AuditLog, Arc<str>),
}

impl Client {
    async fn call(&mut self) -> Result<usize, String> {
        match self {
            Self::Read(c, grant) => read(c, grant).await,
            Self::Echo(c, payload) => echo(c, payload).await,
            Self::WhoAmI(c) => who_am_i(c).await,
            Self::Audit(log, grant) => audit_only(log, grant).await,
        }
    }
}

/// What one workload measured.
struct Run {
    name: &'static str,
    latencies: Vec<Duration>,
    failures: u64,
    first_failure: Option<String>,
    secs: f64,
    bytes: usize,
    /// Successful calls, warm-up included.
    all_ok: u64,
    /// CPU time of the whole process (nodes, echo and clients) in the
    /// measured part.
    cpu: Duration,
}

impl Run {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.secs
    }
}

/// Runs every client in a loop for `warmup`, then for `secs`, recording
/// the latency of each call that started in the measured part and
/// succeeded.
async fn measure(
    name: &'static str,
    clients: Vec<Client>,
    warmup: Duration,
    secs: Duration,
) -> Run {
    let start = Instant::now() + warmup;
    let end = start + secs;
    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failures = 0u64;
            let mut first = None;
            let mut bytes = 0;
            let mut all_ok = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let r = c.call().await;
                all_ok += u64::from(r.is_ok());
                if t < start {
                    continue;
                }
                match r {
                    Ok(n) => {
                        lat.push(t.elapsed());
                        bytes = n;
                    }
                    Err(e) => {
                        failures += 1;
                        first.get_or_insert(e);
                    }
                }
            }
            (lat, failures, first, bytes, all_ok)
        }));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = cpu_time();
    tokio::time::sleep_until(end.into()).await;
    let cpu = cpu_time().saturating_sub(cpu_start);
    let mut run = Run {
        name,
        latencies: Vec::new(),
        failures: 0,
        first_failure: None,
        secs: secs.as_secs_f64(),
        bytes: 0,
        all_ok: 0,
        cpu,
    };
    for t in tasks {
        let (mut lat, f, first, bytes, all_ok) = t.await.unwrap();
        run.all_ok += all_ok;
        run.latencies.append(&mut lat);
        run.failures += f;
        if run.first_failure.is_none() {
            run.first_failure = first;
        }
        run.bytes = run.bytes.max(bytes);
    }
    run.latencies.sort_unstable();
    run
}

fn main() {
    let secs = env_number("ALLMENDE_BENCH_SECS", 10, 120);
    let warmup = env_number("ALLMENDE_BENCH_WARMUP", 2, 120);
    let clients = env_number("ALLMENDE_BENCH_CLIENTS", 64, 1000) as usize;
    // `ALLMENDE_BENCH_ONLY=read`: measure the reads and stop (for a profile).
    let reads_only = std::env::var("ALLMENDE_BENCH_ONLY").is_ok_and(|v| v == "read");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(
        clients,
        reads_only,
        Duration::from_secs(warmup),
        Duration::from_secs(secs),
    ));
}

async fn run(n: usize, reads_only: bool, warmup: Duration, secs: Duration) {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load_start = loadavg();
    let mut sb = common::federation(&["stadt", "swm", "tum"], &[]).await;
    let grant: Arc<str> = setup(&sb).await.into();
    // The per-caller caps are for hostile callers; here one researcher is
    // every client, so they are raised to let the read path set the pace
    // (the node restarts with them; dataset, consent and grant are kept).
    let cfg = sb.node_config_path(NODE).unwrap();
    sb.stop_node(NODE).await.unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[limits]\nfetches = {m}\nfetches_per_caller = {m}\nstreams_per_caller = {s}\nfetch_rate_per_caller = 1000000\nfetch_burst_per_caller = 1000000\n",
        m = n.max(16),
        s = (2 * n).max(128)
    ));
    std::fs::write(&cfg, text).unwrap();
    sb.start_node(NODE).await.unwrap();
    let echo_endpoint = start_echo(&sb).await;
    let alice = sb.profile("tum", "alice").unwrap().identity().unwrap();

    // Each client its own connection (its own TLS session).
    let mut readers = Vec::new();
    let mut echoes = Vec::new();
    let mut whoami = Vec::new();
    use prost::Message as _;
    let payload: Arc<[u8]> = fetch_request(&grant).encode_to_vec().into();
    for _ in 0..n {
        let ch = channel(&sb, "tum", "alice", NODE).await;
        readers.push(Client::Read(
            pb::access_client::AccessClient::new(ch.clone()),
            grant.clone(),
        ));
        whoami.push(Client::WhoAmI(
            pb::federation_client::FederationClient::new(ch),
        ));
        let ch = allmende::tls::connect(&echo_endpoint, &alice)
            .await
            .unwrap();
        echoes.push(Client::Echo(tonic::client::Grpc::new(ch), payload.clone()));
    }
    let audit = &sb.node(NODE).unwrap().audit;
    let load_before = loadavg();

    let audit_before = audit.status().size;
    let groups_before = audit.group_stats();
    let reads = measure("authorised 10-row `Access.Fetch`", readers, warmup, secs).await;
    let audit_written = audit.status().size - audit_before;
    let groups_after = audit.group_stats();
    let load_after_reads = loadavg();
    if reads_only {
        // For a profile of the release path alone (`perf record`).
        let mut l = reads.latencies.clone();
        println!(
            "reads only: {} calls, {:.0} calls/s, p99 {:.2} ms, {} failed, {:.0} µs process CPU per call",
            l.len(),
            reads.throughput(),
            percentile(&mut l, 0.99).as_secs_f64() * 1000.0,
            reads.failures,
            reads.cpu.as_secs_f64() * 1e6 / l.len().max(1) as f64,
        );
        if let Some(e) = &reads.first_failure {
            println!("first failure: {e}");
        }
        sb.shutdown().await.unwrap();
        return;
    }
    let echo = measure("tonic+rustls unary echo", echoes, warmup, secs).await;
    let load_after_echo = loadavg();
    let who = measure("`Federation.WhoAmI` at the node", whoami, warmup, secs).await;
    let log = sb.node(NODE).unwrap().audit.clone();
    let alone = (0..n)
        .map(|_| Client::Audit(log.clone(), grant.clone()))
        .collect();
    let audit_alone = measure(
        "the read's 3 audit entries alone (in-process)",
        alone,
        warmup,
        secs,
    )
    .await;
    let load_after = loadavg();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{n} clients (one mTLS connection each, one researcher's certificate), {} s measured after {} s warm-up per workload, {cores} cores; load average (1/5/15 min) at start {load_start}, before the reads {load_before}, after the reads {load_after_reads}, after the echo {load_after_echo}, at the end {load_after}",
        secs.as_secs(),
        warmup.as_secs()
    );
    println!();
    println!(
        "| workload | calls | calls/s | p50 | p99 | max | failed | response bytes | process CPU per call |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in [&reads, &echo, &who, &audit_alone] {
        let mut l = r.latencies.clone();
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} | {} | {:.0} µs ({:.0} % of {cores} cores) |",
            r.name,
            l.len(),
            r.throughput(),
            ms(percentile(&mut l, 0.5)),
            ms(percentile(&mut l, 0.99)),
            ms(l.last().copied().unwrap_or_default()),
            r.failures,
            r.bytes,
            r.cpu.as_secs_f64() * 1e6 / l.len().max(1) as f64,
            r.cpu.as_secs_f64() * 100.0 / (r.secs * cores.max(1) as f64),
        );
    }
    let p99 = |r: &Run| ms(percentile(&mut r.latencies.clone(), 0.99));
    let tput_ratio = reads.throughput() / echo.throughput().max(f64::MIN_POSITIVE);
    let p99_ratio = p99(&reads) / p99(&echo).max(f64::MIN_POSITIVE);
    println!();
    println!(
        "reads ÷ echo: throughput {tput_ratio:.2} (target ≥ 0.50: {}), p99 {p99_ratio:.2} (target ≤ 2.00: {})",
        if tput_ratio >= 0.5 { "met" } else { "missed" },
        if p99_ratio <= 2.0 { "met" } else { "missed" },
    );
    println!(
        "audit entries written at SWM's node during the reads: {audit_written} for {} successful reads (warm-up included), {:.2} per read",
        reads.all_ok,
        audit_written as f64 / reads.all_ok.max(1) as f64
    );
    let groups = groups_after.0 - groups_before.0;
    println!(
        "audit group commits during the reads: {groups} (one durable flush each), {:.1} entries per group",
        (groups_after.1 - groups_before.1) as f64 / groups.max(1) as f64
    );
    for r in [&reads, &echo, &who, &audit_alone] {
        if let Some(e) = &r.first_failure {
            println!("first failure of {}: {e}", r.name);
        }
    }
    sb.shutdown().await.unwrap();
}
