//! Story 7's delivery path across real nodes: scooter-co's node serves its
//! hourly MDS batches on its provider endpoint (`[mds_provider]`: mTLS with a
//! federation certificate, a bearer token, each answer decided as
//! `deliver_obligation` and audited); the city registers an `mds` source and
//! its puller takes every ended hour: a valid hour is imported and read by
//! the city through `Access.Fetch`; a missed hour (no file) is recorded
//! `Unavailable`, asked again and delivered once the file appears; a batch
//! with one trip ending before it starts is rejected with the reason, kept,
//! and nothing of it imported; a restart imports nothing twice. The
//! provider refuses a wrong token, and the right token with another
//! organisation's node certificate or a city user's certificate; a provider
//! host the city does not allow is refused and audited. Time passes on a
//! `ManualClock`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::{Clock, ManualClock};
use allmende::config::{MdsProviderConfig, NodeConfig};
use allmende::obligations::{Deliveries, Outcome};
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::Decision;
use allmende_connectors::mds::client::{FetchError, Fetched, MdsClient, tls_config};
use allmende_connectors::mds::sample::{PROVIDER_ID, batch_file_name, hourly_batches};
use allmende_connectors::mds::{Endpoint, HOUR_MS, MdsConfig, format_hour, trip_fields};
use allmende_connectors::sample::SampleSpec;
use allmende_e2e::{audit_since, connect_with, material};
use allmende_proto::v1 as pb;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CITY_DATASET: &str = "mds-scooter-trips";
const TOKEN: &str = "scooter-co-mds-token-0123456789";

/// The city's description of the delivered trips: owned by the city,
/// personal (device ids), read for the public interest.
fn description() -> allmende::catalog::DatasetDescription {
    let mut d = allmende::demo::munich::scooter_trips();
    d.id = CITY_DATASET.into();
    d.title = "E-Scooter-Fahrten (MDS-Lieferungen)".into();
    d.schema.fields = trip_fields();
    d.allowed_purposes = [allmende::policy::Purpose::PublicInterest].into();
    d.anonymisation_required = false;
    d
}

struct World {
    sb: Sandbox,
    clock: Arc<ManualClock>,
    /// The sandbox's sample-data directory (the nodes' source root).
    data: PathBuf,
    /// The first hour pulled.
    first: i64,
    provider: String,
}

fn node_dir(sb: &Sandbox, node: &str) -> PathBuf {
    sb.node_config_path(node)
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

fn write(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec(v).unwrap()).unwrap();
}

async fn world() -> World {
    let clock = ManualClock::starting_now();
    let mut spec = SandboxSpec::munich();
    spec.orgs
        .retain(|o| ["stadt", "scooter-co", "tum"].contains(&o.name.as_str()));
    let mut sb = Sandbox::start(spec, None, clock.clone()).await.unwrap();
    // scooter-co's dataset (the policy's resource at its node).
    allmende_e2e::register_sample_dataset(&sb, "scooter-trips").await;
    let root = node_dir(&sb, "stadt-1")
        .ancestors()
        .nth(3)
        .unwrap()
        .to_path_buf();
    let data = root.join(allmende::sandbox::SAMPLE_DATA_DIR);
    std::fs::create_dir_all(data.join("mds")).unwrap();
    std::fs::write(data.join("mds.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::copy(sb.federation.root_cert(), data.join("federation-root.pem")).unwrap();

    // Yesterday's last four hours: 20 and 22 valid, 21 missed, 23 with a bad trip.
    let now = clock.now_unix_ms();
    let yesterday = (now / 86_400_000 - 1) * 86_400;
    let first = yesterday * 1000 + 20 * HOUR_MS;
    let batches = hourly_batches(
        &SampleSpec {
            start: yesterday,
            days: 1,
            trips_per_day: 300,
            ..SampleSpec::default()
        },
        PROVIDER_ID,
    );
    for h in [first, first + 2 * HOUR_MS] {
        write(
            &data.join("mds").join(batch_file_name(h).unwrap()),
            &batches[&h],
        );
    }
    let mut bad = batches[&(first + 3 * HOUR_MS)].clone();
    let trip = &mut bad["trips"][0];
    let end = trip["end_time"].as_i64().unwrap();
    trip["start_time"] = Value::from(end + 60_000);
    write(
        &data
            .join("mds")
            .join(batch_file_name(first + 3 * HOUR_MS).unwrap()),
        &bad,
    );

    // scooter-co turns its provider endpoint on.
    sb.stop_node("scooter-co-1").await.unwrap();
    let cfg = sb.node_config_path("scooter-co-1").unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&NodeConfig::render_mds_provider(&MdsProviderConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: data.join("mds"),
        token_file: data.join("mds.token"),
        recipients: vec!["stadt".into()],
        dataset: "scooter-trips".into(),
    }));
    std::fs::write(&cfg, text).unwrap();
    let addr = sb
        .start_node("scooter-co-1")
        .await
        .unwrap()
        .mds_provider_addr
        .unwrap();
    World {
        sb,
        clock,
        data,
        first,
        provider: format!("https://{addr}"),
    }
}

fn config(w: &World) -> MdsConfig {
    let mut c = MdsConfig::new(
        &w.provider,
        "scooter-co",
        "scooter-trips",
        w.data.join("mds.token"),
        w.data.join("federation-root.pem"),
        &format_hour(w.first).unwrap(),
    );
    c.provider_id = Some(PROVIDER_ID.into());
    c.retry_secs = 1;
    c
}

async fn register(w: &World, c: &MdsConfig) -> Result<(), String> {
    w.sb.register_source(
        "stadt",
        "steward",
        &description(),
        "mds",
        &serde_json::to_string(c).unwrap(),
    )
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn deliveries(w: &World) -> Deliveries {
    Deliveries::open(w.sb.node("stadt-1").unwrap().store.clone()).unwrap()
}

/// Waits until `cond` holds for the city's delivery records of the four hours.
async fn until(w: &World, what: &str, cond: impl Fn(&[allmende::obligations::Delivery]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = deliveries(w)
            .range(
                "scooter-co",
                "scooter-trips",
                w.first,
                w.first + 4 * HOUR_MS,
            )
            .unwrap();
        if cond(&d) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {d:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn accepted(d: &[allmende::obligations::Delivery], hour: i64) -> usize {
    d.iter()
        .filter(|x| x.window_start_ms == hour && matches!(x.outcome, Outcome::Accepted { .. }))
        .count()
}

/// The trip ids the city's steward reads from the delivered dataset.
async fn city_reads(w: &World) -> Vec<String> {
    let p = w.sb.profile("stadt", "steward").unwrap();
    let mut c = pb::access_client::AccessClient::new(
        connect_with(
            &w.sb.node("stadt-1").unwrap().grpc_endpoint(),
            &material(&p),
        )
        .await
        .unwrap(),
    );
    let mut s = c
        .fetch(pb::FetchRequest {
            dataset: CITY_DATASET.into(),
            purpose: "PublicInterest".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("fetch refused: {e:?}"))
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        bytes.extend(m.arrow_ipc);
    }
    use arrow::array::AsArray;
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            b.column_by_name("trip_id")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn trips_of(w: &World, hour: i64) -> usize {
    let v: Value = serde_json::from_slice(
        &std::fs::read(w.data.join("mds").join(batch_file_name(hour).unwrap())).unwrap(),
    )
    .unwrap();
    v["trips"].as_array().unwrap().len()
}

/// A client of the provider presenting `cert`'s node or user certificate.
fn client(w: &World, chain: &Path, key: &Path, token: &str) -> MdsClient {
    let ca = std::fs::read(w.data.join("federation-root.pem")).unwrap();
    let chain = std::fs::read_to_string(chain).unwrap();
    let key = std::fs::read_to_string(key).unwrap();
    MdsClient::new(
        Endpoint::parse(&w.provider).unwrap(),
        tls_config(&ca, Some((&chain, &key))).unwrap(),
        token.into(),
        1 << 20,
        Duration::from_secs(10),
    )
}

async fn obligations_as(
    w: &World,
    org: &str,
    user: &str,
) -> pb::obligations_client::ObligationsClient<tonic::transport::Channel> {
    let p = w.sb.profile(org, user).unwrap();
    let ch = connect_with(
        &w.sb.node("stadt-1").unwrap().grpc_endpoint(),
        &material(&p),
    )
    .await
    .unwrap();
    pb::obligations_client::ObligationsClient::new(ch).max_decoding_message_size(8 << 20)
}

/// The rejected batch is inspected through `Obligations.Rejected`: listed
/// with its reasons for the city's DPO and for scooter-co itself, its raw
/// answers by id; another organisation is refused, and an id outside the
/// caller's windows is not found.
async fn inspect_rejected(w: &World, first: i64, bad: i64, kept: &allmende::mds::Kept) {
    let rfc = |ms: i64| allmende::timefmt::format_unix_ms(ms);
    let mut operator = obligations_as(w, "stadt", "operator").await;
    operator
        .record(pb::RecordObligationRequest {
            organisation: "scooter-co".into(),
            dataset: "scooter-trips".into(),
            cadence: "hour".into(),
            grace_seconds: 900,
            from: rfc(first),
            until: String::new(),
        })
        .await
        .unwrap();
    let range = |id: &str| pb::RejectedBatchesRequest {
        from: rfc(first),
        to: rfc(first + 4 * HOUR_MS),
        id: id.into(),
        ..Default::default()
    };
    for (org, user) in [("stadt", "dpo"), ("scooter-co", "operator")] {
        let listed = obligations_as(w, org, user)
            .await
            .rejected(range(""))
            .await
            .unwrap()
            .into_inner()
            .batches;
        assert_eq!(listed.len(), 1, "{org}: {listed:?}");
        let b = &listed[0];
        assert_eq!(b.id, kept.id);
        assert_eq!(b.window_start, rfc(bad));
        assert_eq!(
            b.reasons,
            vec!["trip 0: `end_time` precedes `start_time`".to_owned()]
        );
        assert_eq!(b.answers.len(), kept.answers.len());
        assert!(b.answers.iter().all(|a| a.body.is_empty() && a.bytes > 0));
    }
    let one = obligations_as(w, "stadt", "dpo")
        .await
        .rejected(range(&kept.id))
        .await
        .unwrap()
        .into_inner()
        .batches;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].answers[0].part, "trips");
    assert_eq!(one[0].answers[0].body, kept.answers[0].1);
    // Another organisation may not look; an id outside the range is unknown.
    let refused = obligations_as(w, "tum", "alice")
        .await
        .rejected(pb::RejectedBatchesRequest {
            organisation: "scooter-co".into(),
            ..range("")
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let outside = obligations_as(w, "stadt", "dpo")
        .await
        .rejected(pb::RejectedBatchesRequest {
            to: rfc(bad),
            ..range(&kept.id)
        })
        .await
        .unwrap_err();
    assert_eq!(outside.code(), tonic::Code::NotFound, "{outside:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hourly_batches_are_pulled_validated_and_read_by_the_city() {
    let mut w = world().await;
    let (first, missed, bad) = (w.first, w.first + HOUR_MS, w.first + 3 * HOUR_MS);
    let provider_before = w.sb.node("scooter-co-1").unwrap().audit.status().size;
    let city_before = w.sb.node("stadt-1").unwrap().audit.status().size;
    register(&w, &config(&w)).await.unwrap();

    // Hours 20 and 22 imported; 21 unavailable; 23 rejected with the reason.
    until(&w, "first pass", |d| {
        accepted(d, first) == 1
            && accepted(d, first + 2 * HOUR_MS) == 1
            && d.iter().any(|x| x.window_start_ms == missed
                && matches!(&x.outcome, Outcome::Unavailable { reason } if reason.contains("http 202")))
            && d.iter().any(|x| x.window_start_ms == bad && matches!(x.outcome, Outcome::Rejected { .. }))
    })
    .await;
    let d = deliveries(&w)
        .window("scooter-co", "scooter-trips", bad)
        .unwrap();
    let Outcome::Rejected { reasons, kept_as } = &d[0].outcome else {
        panic!("{d:?}")
    };
    assert_eq!(
        reasons,
        &vec!["trip 0: `end_time` precedes `start_time`".to_owned()]
    );
    let kept =
        w.sb.node("stadt-1")
            .unwrap()
            .registry
            .mds_batches()
            .dataset(CITY_DATASET)
            .rejected(bad, bad + HOUR_MS)
            .unwrap();
    assert_eq!(Some(&kept[0].id), kept_as.as_ref());
    assert_eq!(kept[0].answers[0].0, "trips");
    assert!(kept[0].answers[0].1.contains("\"trips\""));
    inspect_rejected(&w, first, bad, &kept[0]).await;

    // The city reads exactly the valid hours; nothing of the rejected one.
    let read = city_reads(&w).await;
    assert_eq!(
        read.len(),
        trips_of(&w, first) + trips_of(&w, first + 2 * HOUR_MS)
    );
    let bad_file: Value = serde_json::from_slice(
        &std::fs::read(w.data.join("mds").join(batch_file_name(bad).unwrap())).unwrap(),
    )
    .unwrap();
    for t in bad_file["trips"].as_array().unwrap() {
        assert!(!read.contains(&t["trip_id"].as_str().unwrap().to_owned()));
    }

    // The provider decided and audited each answer for the city's node.
    let entries = audit_since(&w.sb, "scooter-co-1", provider_before);
    assert!(
        entries.iter().any(|e| e.action == "deliver_obligation"
            && e.decision == Some(Decision::Allow)
            && e.policy_ids == vec!["obligation-city-node-pulls".to_owned()]),
        "{entries:?}"
    );
    // The city audited each accepted and rejected delivery, metadata only.
    let entries = audit_since(&w.sb, "stadt-1", city_before);
    let delivered: Vec<_> = entries
        .iter()
        .filter(|e| e.action == allmende::mds::puller::DELIVERY_ACTION)
        .collect();
    assert!(delivered.iter().any(|e| e.decision == Some(Decision::Allow)
        && e.resource == format!("scooter-co/scooter-trips@{}", format_hour(first).unwrap())
        && e.policy_ids[0] == "outcome:accepted"));
    assert!(delivered.iter().any(|e| e.decision == Some(Decision::Deny)
        && e.policy_ids
            == vec![
                "outcome:rejected".to_owned(),
                "reason:trip 0: `end_time` precedes `start_time`".to_owned()
            ]));
    for e in &delivered {
        for t in bad_file["trips"].as_array().unwrap() {
            let device = t["device_id"].as_str().unwrap();
            assert!(e.policy_ids.iter().all(|l| !l.contains(device)), "{e:?}");
        }
    }

    // The missed hour's file appears, the bad hour is corrected: both arrive.
    let batches = hourly_batches(
        &SampleSpec {
            start: (first - 20 * HOUR_MS) / 1000,
            days: 1,
            trips_per_day: 300,
            ..SampleSpec::default()
        },
        PROVIDER_ID,
    );
    write(
        &w.data.join("mds").join(batch_file_name(missed).unwrap()),
        &batches[&missed],
    );
    write(
        &w.data.join("mds").join(batch_file_name(bad).unwrap()),
        &batches[&bad],
    );
    until(&w, "late delivery", |d| {
        accepted(d, missed) == 1 && accepted(d, bad) == 1
    })
    .await;
    let all: usize = (0..4).map(|i| trips_of(&w, first + i * HOUR_MS)).sum();
    assert_eq!(city_reads(&w).await.len(), all);

    // A restart imports nothing twice; the clock moving on asks for the next
    // hour, which has no file.
    w.sb.stop_node("stadt-1").await.unwrap();
    w.sb.start_node("stadt-1").await.unwrap();
    w.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = deliveries(&w)
        .range("scooter-co", "scooter-trips", first, first + 4 * HOUR_MS)
        .unwrap();
    for i in 0..4 {
        assert_eq!(accepted(&d, first + i * HOUR_MS), 1, "hour {i}: {d:#?}");
    }
    assert_eq!(city_reads(&w).await.len(), all);

    w.sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_provider_refuses_wrong_tokens_other_organisations_and_disallowed_hosts() {
    let w = world().await;
    let hour = format_hour(w.first).unwrap();
    let path = format!("/trips?end_time={hour}");
    let stadt = node_dir(&w.sb, "stadt-1");
    let tum = node_dir(&w.sb, "tum-1");
    let users = node_dir(&w.sb, "stadt-1")
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("users");

    // The city's node with the token: served.
    let ok = client(&w, &stadt.join("node.crt"), &stadt.join("node.key"), TOKEN);
    let Fetched::Body(v) = ok.get(&path).await.unwrap() else {
        panic!("not served")
    };
    assert_eq!(v["version"], "2.0.0");
    assert_eq!(v["trips"].as_array().unwrap().len(), trips_of(&w, w.first));

    // Wrong or no token: 401, counted (aggregated), nothing decided.
    let before = w.sb.node("scooter-co-1").unwrap().audit.status().size;
    let wrong = client(
        &w,
        &stadt.join("node.crt"),
        &stadt.join("node.key"),
        "guess",
    );
    assert_eq!(wrong.get(&path).await, Err(FetchError::Status(401)));
    let almost = client(
        &w,
        &stadt.join("node.crt"),
        &stadt.join("node.key"),
        &format!("{TOKEN}x"),
    );
    assert_eq!(almost.get(&path).await, Err(FetchError::Status(401)));
    let metrics = w.sb.node("scooter-co-1").unwrap().metrics.encode();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("mds_token") && l.ends_with(" 2")),
        "{metrics}"
    );
    assert!(
        audit_since(&w.sb, "scooter-co-1", before)
            .iter()
            .all(|e| e.action != "deliver_obligation")
    );

    // Another organisation's node with the right token: refused and audited.
    let other = client(&w, &tum.join("node.crt"), &tum.join("node.key"), TOKEN);
    assert_eq!(other.get(&path).await, Err(FetchError::Status(403)));
    let refused = audit_since(&w.sb, "scooter-co-1", before);
    assert!(
        refused.iter().any(|e| e.action == "deliver_obligation"
            && e.decision == Some(Decision::Deny)
            && e.policy_ids == vec![allmende::mds::provider::NOT_A_RECIPIENT.to_owned()]),
        "{refused:?}"
    );
    // A city user's certificate with the right token: only the city's node pulls.
    let user = client(
        &w,
        &users.join("steward.crt"),
        &users.join("steward.key"),
        TOKEN,
    );
    assert_eq!(user.get(&path).await, Err(FetchError::Status(403)));
    let refused = audit_since(&w.sb, "scooter-co-1", before);
    assert!(
        refused.iter().any(|e| e.action == "deliver_obligation"
            && e.decision == Some(Decision::Deny)
            && e.policy_ids == vec!["default-deny".to_owned()]),
        "{refused:?}"
    );

    // Bad requests are told apart.
    assert_eq!(
        ok.get("/trips?end_time=yesterday").await,
        Err(FetchError::Status(400))
    );
    assert_eq!(ok.get("/trips").await, Err(FetchError::Status(400)));
    assert_eq!(ok.get("/nope").await, Ok(Fetched::NotReady { status: 404 }));
    // An hour not yet past: 404; an hour without a file: 202.
    let future = format_hour(w.first + 3 * 24 * HOUR_MS).unwrap();
    assert_eq!(
        ok.get(&format!("/trips?end_time={future}")).await,
        Ok(Fetched::NotReady { status: 404 })
    );
    let missed = format_hour(w.first + HOUR_MS).unwrap();
    assert_eq!(
        ok.get(&format!("/events/historical?event_time={missed}"))
            .await,
        Ok(Fetched::NotReady { status: 202 })
    );
    let Fetched::Body(v) = ok.get("/vehicles/status").await.unwrap() else {
        panic!("no vehicles")
    };
    assert!(!v["vehicles_status"].as_array().unwrap().is_empty());

    // A provider host the city does not allow: refused and audited.
    let before = w.sb.node("stadt-1").unwrap().audit.status().size;
    let mut elsewhere = config(&w);
    elsewhere.provider = w.provider.replace("127.0.0.1", "localhost");
    let e = register(&w, &elsewhere).await.unwrap_err();
    assert!(e.contains("mds_hosts"), "{e}");
    let refused = audit_since(&w.sb, "stadt-1", before);
    assert!(
        refused
            .iter()
            .any(|e| e.action == allmende::registry::REFUSED_SOURCE_ACTION
                && e.policy_ids == vec!["source-confinement:mds-host-not-allowed".to_owned()]),
        "{refused:?}"
    );
    w.sb.shutdown().await.unwrap();
}
