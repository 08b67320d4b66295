//! Bounded resources under hostile load: metrics labels only for served
//! methods, caps on streams (per connection and node-wide), fetches,
//! handshakes, the per-caller fetch rate, idle fetch streams ended, denied
//! requests rate-limited per caller and audited in aggregate, identifier
//! length limits, and a short load test (stalled streams, unknown methods,
//! denied requests in a loop) in which memory stays bounded and an honest
//! client is still served.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_e2e::{connect_with, material};
use allmende_proto::v1 as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// City, utility and university: enough for every scenario here.
async fn small() -> Sandbox {
    let mut spec = SandboxSpec::munich();
    spec.orgs
        .retain(|o| ["stadt", "swm", "tum"].contains(&o.name.as_str()));
    Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// Restarts `node` with `[limits]` keys appended to its config file, as an
/// operator would.
async fn restart_with_limits(sb: &mut Sandbox, node: &str, limits: &str) {
    sb.stop_node(node).await.unwrap();
    let path = sb.node_config_path(node).unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[limits]\n");
    text.push_str(limits);
    std::fs::write(&path, text).unwrap();
    sb.start_node(node).await.unwrap();
}

async fn channel(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

/// Registers a public traffic-counts dataset large enough (144 000 rows)
/// that a client which does not read stalls its release.
async fn register_big_public_dataset(sb: &Sandbox) {
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
}

fn traffic() -> pb::FetchRequest {
    pb::FetchRequest {
        dataset: "traffic-counts".into(),
        ..Default::default()
    }
}

/// A raw unary call to any path (what a hostile client can send).
async fn call_path(ch: Channel, path: &str) -> tonic::Status {
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().unwrap();
    let r: Result<tonic::Response<pb::WhoAmIResponse>, _> = g
        .unary(
            tonic::Request::new(pb::WhoAmIRequest {}),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await;
    r.expect_err("unknown method answered")
}

fn count_lines(metrics: &str, needle: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("allmende_rpc_requests_total") && l.contains(needle))
        .count()
}

fn metric_value(metrics: &str, line_contains: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && line_contains.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_methods_share_one_metrics_label() {
    let sb = small().await;
    let ch = channel(&sb, "tum", "alice", "swm-1").await;
    for i in 0..40 {
        let s = call_path(ch.clone(), &format!("/x.Y/Z{i:08x}")).await;
        assert_eq!(s.code(), tonic::Code::Unimplemented);
    }
    // A served method keeps its own label.
    pb::federation_client::FederationClient::new(ch.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    let m = sb.node("swm-1").unwrap().metrics.encode();
    assert!(
        !m.contains("x.Y"),
        "a caller-chosen path became a label:\n{m}"
    );
    assert_eq!(count_lines(&m, "method=\"unknown\""), 1, "{m}");
    assert_eq!(
        metric_value(&m, &["allmende_rpc_requests_total", "method=\"unknown\""]),
        40
    );
    assert_eq!(
        count_lines(&m, "method=\"/allmende.v1.Federation/WhoAmI\""),
        1,
        "{m}"
    );
    sb.shutdown().await.unwrap();
}

fn register_request(id: &str) -> pb::RegisterConnectorRequest {
    let mut desc = allmende::demo::munich::datasets()
        .into_iter()
        .find(|(_, d)| d.id == "smart-meter-readings")
        .unwrap()
        .1;
    desc.id = id.to_owned();
    pb::RegisterConnectorRequest {
        dataset_json: serde_json::to_string(&desc).unwrap(),
        kind: "files".into(),
        config_json: "{}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denied_requests_are_audited_in_aggregate_and_throttled_per_caller() {
    let mut sb = small().await;
    restart_with_limits(
        &mut sb,
        "swm-1",
        "denials_audited = 5\ndenials_refused_after = 20\ndenials_interval_secs = 2\n",
    )
    .await;
    let swm = sb.node("swm-1").unwrap();
    let mut c =
        pb::connectors_client::ConnectorsClient::new(channel(&sb, "tum", "alice", "swm-1").await);

    // A 64 KiB identifier is refused before anything is decided or written.
    let before = swm.audit.size();
    let e = c
        .register(register_request(&"r".repeat(64 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 200, "{}", e.message());
    assert_eq!(swm.audit.size(), before);

    // A researcher of another organisation may not register here.
    let before = swm.audit.size();
    let mut codes = Vec::new();
    for i in 0..40 {
        let e = c
            .register(register_request(&format!("probe-{i}")))
            .await
            .unwrap_err();
        codes.push(e.code());
    }
    let denied = codes
        .iter()
        .filter(|c| **c == tonic::Code::PermissionDenied)
        .count();
    let exhausted = codes
        .iter()
        .filter(|c| **c == tonic::Code::ResourceExhausted)
        .count();
    assert_eq!((denied, exhausted), (20, 20), "{codes:?}");
    assert!(
        codes[20..]
            .iter()
            .all(|c| *c == tonic::Code::ResourceExhausted)
    );
    // Only the first five were written one by one.
    let written = swm.audit.size() - before;
    assert!(written <= 6, "{written} entries for 40 denials");

    // Another caller has its own budget.
    let mut other =
        pb::connectors_client::ConnectorsClient::new(channel(&sb, "stadt", "dpo", "swm-1").await);
    let e = other
        .register(register_request("probe-x"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // Within an interval or two, one aggregate entry counts the other 35.
    let mut found = None;
    for _ in 0..100 {
        let page = swm
            .audit
            .query(&allmende::audit::QueryFilter {
                decision: Some(allmende_audit::Decision::Deny),
                limit: 1000,
                ..Default::default()
            })
            .unwrap();
        found = page
            .entries
            .into_iter()
            .find(|e| e.policy_ids == [allmende::denials::AGGREGATE_POLICY]);
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agg = found.expect("no aggregate entry written");
    assert!(agg.resource.starts_with("denials/35/"), "{}", agg.resource);
    assert_eq!(agg.principal.org, "tum");
    let m = swm.metrics.encode();
    assert_eq!(
        metric_value(&m, &["allmende_denials_aggregated_total"]),
        35,
        "{m}"
    );

    // The next interval brings a fresh budget.
    let e = c
        .register(register_request("probe-late"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_long_identifiers_are_refused_everywhere() {
    let sb = small().await;
    let ch = channel(&sb, "tum", "alice", "stadt-1").await;
    let long = "d".repeat(300);
    let check = |r: Result<(), tonic::Status>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
        assert!(
            e.message().contains("at most 256"),
            "{what}: {}",
            e.message()
        );
    };
    let mut a = pb::access_client::AccessClient::new(ch.clone());
    check(
        a.fetch(pb::FetchRequest {
            dataset: long.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "fetch dataset",
    );
    check(
        a.fetch(pb::FetchRequest {
            dataset: "air-quality".into(),
            filter: Some(pb::Filter {
                expr: Some(pb::filter::Expr::Comparison(pb::Comparison {
                    column: "station".into(),
                    op: pb::CompareOp::Eq as i32,
                    value: Some(pb::Value {
                        kind: Some(pb::value::Kind::StringValue(long.clone())),
                    }),
                })),
            }),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "fetch filter value",
    );
    let mut p = pb::policy_client::PolicyClient::new(ch.clone());
    check(
        p.explain(pb::ExplainRequest {
            action: "read".into(),
            resource_type: "dataset".into(),
            resource_id: long.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "explain resource",
    );
    let mut cat = pb::catalog_client::CatalogClient::new(ch.clone());
    check(
        cat.get(pb::GetCatalogEntryRequest {
            dataset: long.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "catalog get",
    );
    let mut cons = pb::consent_client::ConsentClient::new(ch.clone());
    check(
        cons.get(pb::GetConsentRequest {
            subject_id: long.clone(),
        })
        .await
        .map(|_| ()),
        "consent get",
    );
    let mut aud = pb::audit_client::AuditClient::new(ch.clone());
    check(
        aud.query(pb::AuditQueryRequest {
            dataset: long.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "audit query",
    );
    sb.shutdown().await.unwrap();
}

/// Opens a fetch and never reads it.
/// Releases audited as aborted at a node.
fn aborted_releases(audit: &allmende::audit::AuditLog) -> usize {
    (0..audit.size())
        .filter_map(|seq| audit.entry_bytes(seq).unwrap())
        .map(|b| allmende_audit::Entry::decode(&b).unwrap())
        .filter(|e| {
            matches!(
                e.kind,
                allmende_audit::EntryKind::ReleaseCompletion {
                    outcome: allmende_audit::ReleaseOutcome::Aborted,
                    ..
                }
            )
        })
        .count()
}

async fn stalled_fetch(ch: Channel) -> Result<tonic::Streaming<pb::FetchResponse>, tonic::Status> {
    pb::access_client::AccessClient::new(ch)
        .fetch(traffic())
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_caller_fetch_rate_is_configured() {
    let mut sb = small().await;
    register_big_public_dataset(&sb).await;
    restart_with_limits(
        &mut sb,
        "stadt-1",
        "fetch_rate_per_caller = 1\nfetch_burst_per_caller = 2\n",
    )
    .await;
    let a = channel(&sb, "tum", "alice", "stadt-1").await;
    // The burst of two, each stream given up at once (its slots freed).
    for _ in 0..2 {
        drop(stalled_fetch(a.clone()).await.unwrap());
    }
    let e = stalled_fetch(a.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too many fetches"), "{}", e.message());
    // Another caller has its own budget.
    let b = channel(&sb, "swm", "steward", "stadt-1").await;
    drop(stalled_fetch(b).await.unwrap());
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetches_are_capped_and_idle_fetch_streams_end() {
    let mut sb = small().await;
    register_big_public_dataset(&sb).await;
    restart_with_limits(
        &mut sb,
        "stadt-1",
        "fetches = 3\nfetches_per_caller = 2\nstream_idle_secs = 2\n",
    )
    .await;
    let a = channel(&sb, "tum", "alice", "stadt-1").await;
    let b = channel(&sb, "swm", "steward", "stadt-1").await;
    let c = channel(&sb, "stadt", "dpo", "stadt-1").await;
    let mut s1 = stalled_fetch(a.clone()).await.unwrap();
    let _s2 = stalled_fetch(a.clone()).await.unwrap();
    // One caller gets at most its share.
    let e = stalled_fetch(a.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("caller has `2` fetches"),
        "{}",
        e.message()
    );
    let _s3 = stalled_fetch(b.clone()).await.unwrap();
    // The node-wide cap holds for every caller.
    let e = stalled_fetch(c.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("`3` fetches"), "{}", e.message());

    // After the idle timeout every stalled fetch is ended: its release
    // aborted and audited as such. Each stream's timeout starts when its own
    // send blocks (once the buffers towards the client are full), so the
    // three end at different times; wait for all three before reading any,
    // or a stream whose timeout has not yet run would simply be served.
    let stadt = sb.node("stadt-1").unwrap();
    let start = Instant::now();
    while aborted_releases(&stadt.audit) < 3 && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        aborted_releases(&stadt.audit),
        3,
        "stalled releases not ended"
    );
    assert!(start.elapsed() >= Duration::from_millis(1500));
    // Their slots are free again (given back right after the audit entry).
    let mut served = None;
    for _ in 0..50 {
        if let Ok(mut s) = stalled_fetch(c.clone()).await {
            s.message().await.unwrap().unwrap();
            served = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _s4 = served.expect("slots never freed");
    // The stalled client learns, once it reads, that its stream was ended.
    let mut err = None;
    for _ in 0..100 {
        match s1.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("stalled stream ended without an error");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(
        err.message().contains("took no message"),
        "{}",
        err.message()
    );
    tokio::time::timeout(Duration::from_secs(30), sb.shutdown())
        .await
        .expect("a stalled stream held the shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_are_capped_per_connection_and_node_wide() {
    let mut sb = small().await;
    register_big_public_dataset(&sb).await;
    restart_with_limits(
        &mut sb,
        "stadt-1",
        "streams_per_connection = 2\nstreams = 3\nstreams_per_caller = 2\nfetches = 8\n",
    )
    .await;
    let a = channel(&sb, "tum", "alice", "stadt-1").await;
    let _s1 = stalled_fetch(a.clone()).await.unwrap();
    let _s2 = stalled_fetch(a.clone()).await.unwrap();
    // A third stream on the same connection waits for a free one.
    let third = tokio::time::timeout(Duration::from_millis(1500), stalled_fetch(a.clone())).await;
    assert!(third.is_err(), "a third concurrent stream was opened");
    // The same caller on another connection: refused, it holds its two.
    let a2 = channel(&sb, "tum", "alice", "stadt-1").await;
    let e = pb::federation_client::FederationClient::new(a2)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("caller has `2` streams"),
        "{}",
        e.message()
    );
    // Another connection gets the node's last stream. The peers witness
    // this node's audit log every second, and each such call holds a slot
    // while it runs: retry while one of them has the last slot.
    let b = channel(&sb, "swm", "steward", "stadt-1").await;
    let mut s3 = None;
    for _ in 0..50 {
        match stalled_fetch(b.clone()).await {
            Ok(s) => {
                s3 = Some(s);
                break;
            }
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let _s3 = s3.expect("the node's last stream slot never came free");
    // Node-wide, no stream is left: refused at once, not queued.
    let c = channel(&sb, "stadt", "dpo", "stadt-1").await;
    let e = pb::federation_client::FederationClient::new(c.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("`3` streams"), "{}", e.message());
    let m = sb.node("stadt-1").unwrap().metrics.encode();
    assert!(
        metric_value(&m, &["allmende_streams_refused_total"]) >= 1,
        "{m}"
    );
    // Ended streams give their slot back.
    drop(_s3);
    let mut ok = false;
    for _ in 0..50 {
        if pb::federation_client::FederationClient::new(c.clone())
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "slot not returned");
    // Two streams are still stalled: shutdown closes their connection after
    // its grace instead of waiting forever.
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), sb.shutdown())
        .await
        .expect("stalled streams held the shutdown")
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handshakes_are_capped_and_time_out() {
    use tokio::io::AsyncReadExt;
    let mut sb = small().await;
    restart_with_limits(&mut sb, "swm-1", "handshakes = 2\nhandshake_secs = 2\n").await;
    let addr = sb.node("swm-1").unwrap().grpc_addr;
    let p = sb.profile("tum", "alice").unwrap();
    let endpoint = sb.node("swm-1").unwrap().grpc_endpoint();
    // Two silent connections take both handshake slots.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let blocked = tokio::time::timeout(
        Duration::from_millis(1000),
        connect_with(&endpoint, &material(&p)),
    )
    .await;
    assert!(
        blocked.is_err(),
        "an honest handshake went through while the cap was taken"
    );
    // The node closes silent connections after the handshake timeout.
    for s in &mut silent {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("silent connection not closed")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    assert!(t0.elapsed() < Duration::from_secs(4));
    // Then an honest client gets through.
    let ch = connect_with(&endpoint, &material(&p)).await.unwrap();
    pb::federation_client::FederationClient::new(ch)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    let m = sb.node("swm-1").unwrap().metrics.encode();
    assert!(
        metric_value(&m, &["reason=\"handshake_timeout\""]) >= 2,
        "{m}"
    );
    sb.shutdown().await.unwrap();
}

/// VmRSS of this process (nodes and clients), KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Median latency of `n` honest `Catalog.Search` calls.
async fn honest_latency(ch: &Channel, n: usize) -> Duration {
    let mut c = pb::catalog_client::CatalogClient::new(ch.clone());
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        c.search(pb::SearchCatalogRequest {
            query: "verkehr".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        v.push(t.elapsed());
    }
    v.sort();
    v[v.len() / 2]
}

/// One round of hostile load for `dur`: stalled fetches on fresh
/// connections, unknown methods and denied requests in loops.
async fn attack(sb: &Sandbox, node: &str, dur: Duration) -> (u64, u64, usize) {
    let deadline = Instant::now() + dur;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let ch = channel(sb, "tum", "alice", node).await;
        for _ in 0..4 {
            if let Ok(s) = stalled_fetch(ch.clone()).await {
                stalled.push(s);
            }
        }
    }
    let unknown = {
        let ch = channel(sb, "tum", "alice", node).await;
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let _ = call_path(ch.clone(), &format!("/evil.S{n}/M{n}")).await;
                n += 1;
            }
            n
        })
    };
    let denied = {
        let ch = channel(sb, "tum", "alice", node).await;
        tokio::spawn(async move {
            let mut c = pb::connectors_client::ConnectorsClient::new(ch);
            let mut n = 0u64;
            while Instant::now() < deadline {
                let _ = c
                    .register(register_request(&format!("probe-{n}-{}", "p".repeat(200))))
                    .await;
                n += 1;
            }
            n
        })
    };
    let (u, d) = (unknown.await.unwrap(), denied.await.unwrap());
    let held = stalled.len();
    drop(stalled);
    (u, d, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_hostile_load_memory_stays_bounded_and_honest_clients_are_served() {
    let mut sb = small().await;
    register_big_public_dataset(&sb).await;
    restart_with_limits(
        &mut sb,
        "stadt-1",
        "fetches = 8\nstream_idle_secs = 1\ndenials_audited = 5\ndenials_interval_secs = 1\n",
    )
    .await;
    let honest = channel(&sb, "swm", "steward", "stadt-1").await;
    let idle = honest_latency(&honest, 20).await;
    let audit_before = sb.node("stadt-1").unwrap().audit.size();
    let t_attack = Instant::now();

    // Warm-up round, then two measured rounds: the second must not need
    // more memory than the first.
    attack(&sb, "stadt-1", Duration::from_secs(2)).await;
    let rss0 = rss_kib();
    let mut sent = (0, 0);
    let mut under_attack = Duration::ZERO;
    for round in 0..2 {
        let load = {
            // Honest calls while the attack runs.
            let honest = honest.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                honest_latency(&honest, 20).await
            })
        };
        let (u, d, _held) = attack(&sb, "stadt-1", Duration::from_secs(3)).await;
        sent.0 += u;
        sent.1 += d;
        let l = load.await.unwrap();
        if round == 1 {
            under_attack = l;
        }
    }
    let rss1 = rss_kib();
    let node = sb.node("stadt-1").unwrap();
    let m = node.metrics.encode();
    // Metrics: one label for every unknown method, however many were sent.
    assert!(!m.contains("evil."), "unknown paths became labels");
    let labels = m
        .lines()
        .filter(|l| l.starts_with("allmende_rpc_requests_total"))
        .count();
    assert!(labels < 40, "{labels} rpc label sets");
    // Audit: the denied requests cost at most the budget (5) and one
    // aggregate per caller and one-second interval, not one entry each.
    let secs = t_attack.elapsed().as_secs() + 2;
    let written = node
        .audit
        .query(&allmende::audit::QueryFilter {
            decision: Some(allmende_audit::Decision::Deny),
            after: audit_before.checked_sub(1),
            limit: 1000,
            ..Default::default()
        })
        .unwrap()
        .entries
        .len() as u64;
    assert!(
        written <= 6 * secs && written < sent.1,
        "{written} deny entries for {} denied requests in {secs} s",
        sent.1
    );
    // Memory: a further round of the same attack grows the process by
    // less than 64 MiB (nodes and attacking clients together).
    let growth = rss1.saturating_sub(rss0);
    assert!(growth < 64 * 1024, "rss grew by {growth} KiB");
    // The honest client is served, within a bound.
    assert!(
        under_attack < Duration::from_secs(1),
        "honest median {under_attack:?} under attack (idle {idle:?})"
    );
    eprintln!(
        "load: unknown {} denied {} rss0 {rss0} KiB rss1 {rss1} KiB honest idle {idle:?} under attack {under_attack:?} audit entries {written}",
        sent.0, sent.1
    );
    sb.shutdown().await.unwrap();
}
