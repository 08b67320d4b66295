//! Load generator: hostile load against in-process nodes on loopback,
//! bounded in time (`ALLMENDE_LOAD_SECS`, default 20, at most 120).
//!
//! One run measures an honest client (a steward of another organisation:
//! `Catalog.Search` and a 1 000-row `Access.Fetch`) and the process's
//! memory while the node is idle, then the same while an attacker with a
//! valid certificate opens many streams that never read (stalled fetches,
//! reflection streams that never send) and, with a second certificate,
//! calls made-up methods and sends denied `Connectors.Register` requests in
//! loops, all under the default `[limits]`. Figures go to stdout as markdown (`docs/benchmarks.md`).
//!
//! `cargo bench -p allmende --bench hostile_load`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "load generator"
)]

mod common;

use allmende_proto::v1 as pb;
use common::{channel, percentile, rss_kib};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

struct Honest {
    search: Vec<Duration>,
    fetch: Vec<Duration>,
    failures: u64,
}

/// `n` honest searches and `n / 20` small fetches (the per-caller fetch
/// rate limit allows 5/s), one after another.
async fn honest_round(ch: &Channel, n: usize) -> Honest {
    let mut c = pb::catalog_client::CatalogClient::new(ch.clone());
    let mut a = pb::access_client::AccessClient::new(ch.clone());
    let mut h = Honest {
        search: Vec::new(),
        fetch: Vec::new(),
        failures: 0,
    };
    for i in 0..n {
        let t = Instant::now();
        let ok = c
            .search(pb::SearchCatalogRequest {
                query: "verkehr".into(),
                ..Default::default()
            })
            .await
            .is_ok();
        if ok {
            h.search.push(t.elapsed());
        } else {
            h.failures += 1;
        }
        if i % 20 == 0 {
            let t = Instant::now();
            let r = async {
                let mut s = a
                    .fetch(pb::FetchRequest {
                        dataset: "traffic-counts".into(),
                        max_rows: 1000,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            }
            .await;
            match r {
                Ok(()) => h.fetch.push(t.elapsed()),
                Err(_) => h.failures += 1,
            }
        }
    }
    h
}

fn register_request(i: u64) -> pb::RegisterConnectorRequest {
    let mut desc = allmende::demo::munich::datasets()
        .into_iter()
        .find(|(_, d)| d.id == "smart-meter-readings")
        .unwrap()
        .1;
    desc.id = format!("probe-{i}-{}", "p".repeat(200));
    pb::RegisterConnectorRequest {
        dataset_json: serde_json::to_string(&desc).unwrap(),
        kind: "files".into(),
        config_json: "{}".into(),
    }
}

async fn unknown_call(ch: Channel, path: String) {
    let mut g = tonic::client::Grpc::new(ch);
    if g.ready().await.is_err() {
        return;
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_maybe_shared(path).unwrap();
    let _: Result<tonic::Response<pb::WhoAmIResponse>, _> = g
        .unary(
            tonic::Request::new(pb::WhoAmIRequest {}),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await;
}

/// A stream that never sends: held open until `stop`.
async fn silent_stream(ch: Channel, stop: Arc<AtomicBool>) -> bool {
    let mut g = tonic::client::Grpc::new(ch);
    if g.ready().await.is_err() {
        return false;
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    );
    let never = futures::stream::pending::<pb::WhoAmIRequest>();
    let r: Result<tonic::Response<tonic::Streaming<pb::WhoAmIResponse>>, _> = g
        .streaming(
            tonic::Request::new(never),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await;
    let held = r.is_ok();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(r);
    held
}

fn main() {
    let secs: u64 = std::env::var("ALLMENDE_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .clamp(5, 120);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(secs));
}

async fn run(secs: u64) {
    let sb = common::federation(&["stadt", "swm", "tum"], &[]).await;
    // A public dataset large enough that a client which does not read
    // stalls its release (144 000 rows).
    sb.register_sample(
        "traffic-counts",
        &allmende_connectors::sample::SampleSpec {
            households: 1,
            days: 1000,
            trips_per_day: 1,
            ..Default::default()
        },
        "big-sample",
    )
    .await
    .unwrap();
    let node = "stadt-1";
    let honest = channel(&sb, "swm", "steward", node).await;

    // Baseline.
    honest_round(&honest, 20).await;
    let rss_idle = rss_kib();
    let mut base = honest_round(&honest, 200).await;
    let audit_before = sb.node(node).unwrap().audit.size();

    // Attack.
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let mut stalled = Vec::new();
    let stalled_ok = Arc::new(AtomicU64::new(0));
    for _ in 0..8 {
        let ch = channel(&sb, "tum", "alice", node).await;
        for _ in 0..8 {
            let mut a = pb::access_client::AccessClient::new(ch.clone());
            if let Ok(r) = a
                .fetch(pb::FetchRequest {
                    dataset: "traffic-counts".into(),
                    ..Default::default()
                })
                .await
            {
                stalled_ok.fetch_add(1, Ordering::SeqCst);
                stalled.push(r.into_inner());
            }
        }
        for _ in 0..64 {
            tasks.push(tokio::spawn(silent_stream(ch.clone(), stop.clone())));
        }
    }
    let unknown_sent = Arc::new(AtomicU64::new(0));
    let denied_sent = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    // Unknown methods and denied requests come from a second identity of
    // the attacker (a citizen certificate): the first one has used up its
    // stream share with the stalled streams.
    for w in 0..2u64 {
        let ch = channel(&sb, "swm", "HH-000001", node).await;
        let n = unknown_sent.clone();
        loops.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = n.fetch_add(1, Ordering::SeqCst);
                unknown_call(ch.clone(), format!("/evil{w}.S{i}/M{i}")).await;
            }
        }));
        let ch = channel(&sb, "swm", "HH-000001", node).await;
        let n = denied_sent.clone();
        loops.push(tokio::spawn(async move {
            let mut c = pb::connectors_client::ConnectorsClient::new(ch);
            while Instant::now() < deadline {
                let i = n.fetch_add(1, Ordering::SeqCst);
                let _ = c.register(register_request(i)).await;
            }
        }));
    }
    // Honest client and memory while the attack runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rss_max = 0;
    let mut attacked = Honest {
        search: Vec::new(),
        fetch: Vec::new(),
        failures: 0,
    };
    let mut rss_samples = Vec::new();
    while Instant::now() + Duration::from_secs(1) < deadline {
        let mut h = honest_round(&honest, 20).await;
        attacked.search.append(&mut h.search);
        attacked.fetch.append(&mut h.fetch);
        attacked.failures += h.failures;
        let r = rss_kib();
        rss_max = rss_max.max(r);
        rss_samples.push(r);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for l in loops {
        l.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let mut silent_held = 0;
    for t in tasks {
        if t.await.unwrap() {
            silent_held += 1;
        }
    }
    drop(stalled);
    let n = sb.node(node).unwrap();
    let metrics = n.metrics.encode();
    let labels = metrics
        .lines()
        .filter(|l| l.starts_with("allmende_rpc_requests_total"))
        .count();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let written = n.audit.size() - audit_before;
    let half = rss_samples.len() / 2;
    let first_half = rss_samples[..half].iter().copied().max().unwrap_or(0);
    let second_half = rss_samples[half..].iter().copied().max().unwrap_or(0);

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (bs50, bs99) = (
        percentile(&mut base.search, 0.5),
        percentile(&mut base.search, 0.99),
    );
    let (as50, as99) = (
        percentile(&mut attacked.search, 0.5),
        percentile(&mut attacked.search, 0.99),
    );
    let bf50 = percentile(&mut base.fetch, 0.5);
    let af50 = percentile(&mut attacked.fetch, 0.5);
    println!(
        "attack: {secs} s; stalled fetches held {}/64, silent streams held {silent_held}/512, unknown-method calls {}, denied registers {}",
        stalled_ok.load(Ordering::SeqCst),
        unknown_sent.load(Ordering::SeqCst),
        denied_sent.load(Ordering::SeqCst)
    );
    println!();
    println!("| figure | idle | under attack | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| honest `Catalog.Search` median | {:.2} ms | {:.2} ms | {:.2} |",
        ms(bs50),
        ms(as50),
        ms(as50) / ms(bs50)
    );
    println!(
        "| honest `Catalog.Search` p99 | {:.2} ms | {:.2} ms | {:.2} |",
        ms(bs99),
        ms(as99),
        ms(as99) / ms(bs99)
    );
    println!(
        "| honest 1 000-row `Access.Fetch` median | {:.2} ms | {:.2} ms | {:.2} |",
        ms(bf50),
        ms(af50),
        ms(af50) / ms(bf50)
    );
    println!(
        "| honest calls failed | {} | {} | |",
        base.failures, attacked.failures
    );
    println!(
        "| process VmRSS (nodes + clients) | {} MiB | max {} MiB (1st half {} MiB, 2nd half {} MiB) | {:.2} |",
        rss_idle / 1024,
        rss_max / 1024,
        first_half / 1024,
        second_half / 1024,
        rss_max as f64 / rss_idle.max(1) as f64
    );
    println!();
    println!(
        "node after the attack: {labels} `rpc_requests` label sets; {written} audit entries (all kinds) for {} denied requests; streams refused {}; denials aggregated {}",
        denied_sent.load(Ordering::SeqCst),
        value("allmende_streams_refused_total"),
        value("allmende_denials_aggregated_total"),
    );
    sb.shutdown().await.unwrap();
}
