//! Arrow Flight on a node's gRPC port, through the real mTLS client side:
//! `GetFlightInfo` + `DoGet` release exactly what `Access.Fetch` releases for
//! the same request (same rows, same pseudonyms within a grant); a ticket is
//! no capability — another caller presenting it is decided for themselves
//! and audited as themselves; altered, truncated and other nodes' tickets are
//! refused with a clear message and audited; a revocation ends a `DoGet` in
//! flight; `ListFlights` lists only what the caller may read; `GetSchema`
//! answers the schema after projection and pseudonymisation; the upload and
//! action calls answer `UNIMPLEMENTED`. `pyarrow_reads_a_dataframe_over_mtls`
//! runs the real pyarrow client (when python3 has pyarrow).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::ManualClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, Entry, EntryKind};
use allmende_e2e::{connect_with, material};
use allmende_proto::v1 as pb;
use arrow::record_batch::RecordBatch;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Criteria, FlightDescriptor, FlightInfo, Ticket};
use futures::TryStreamExt;
use pb::access_client::AccessClient;
use pb::grants_client::GrantsClient;
use std::time::Duration;
use tonic::transport::Channel;

const SMART_METER: &str = "smart-meter-readings";

async fn federation() -> Sandbox {
    let mut spec = SandboxSpec::munich();
    for o in &mut spec.orgs {
        if o.name == "tum" {
            o.users
                .push(("bob".into(), allmende::pki::Role::Researcher));
        }
    }
    let sb = Sandbox::start(spec, None, ManualClock::starting_now())
        .await
        .unwrap();
    sb.register_demo_datasets().await.unwrap();
    sb
}

async fn channel_at(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

async fn flight(sb: &Sandbox, org: &str, user: &str) -> FlightServiceClient<Channel> {
    FlightServiceClient::new(channel_at(sb, org, user, "swm-1").await)
}

fn entries_since(sb: &Sandbox, from: u64) -> Vec<Entry> {
    let log = &sb.node("swm-1").unwrap().audit;
    (from..log.status().size)
        .filter_map(|s| log.entry_bytes(s).unwrap())
        .map(|b| Entry::decode(&b).unwrap())
        .collect()
}

fn size(sb: &Sandbox) -> u64 {
    sb.node("swm-1").unwrap().audit.status().size
}

/// Alice's research grant on the smart-meter readings, approved by SWM's DPO.
async fn alice_grant(sb: &Sandbox) -> String {
    let r = GrantsClient::new(channel_at(sb, "tum", "alice", "swm-1").await)
        .request_access(pb::RequestAccessRequest {
            dataset: SMART_METER.into(),
            purpose: "AcademicResearch".into(),
            columns: vec!["household_id".into(), "kwh".into(), "timestamp".into()],
            days: 90,
            justification: "load profiles of consenting households".into(),
            idempotency_key: "flight".into(),
        })
        .await
        .unwrap()
        .into_inner();
    GrantsClient::new(channel_at(sb, "swm", "dpo", "swm-1").await)
        .approve(pb::ApproveRequest {
            request_id: r.id.clone(),
            request_hash: r.request_hash.clone(),
            note: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

fn command(grant: &str) -> FlightDescriptor {
    FlightDescriptor::new_cmd(
        serde_json::json!({
            "dataset": SMART_METER,
            "purpose": "AcademicResearch",
            "grant": grant,
        })
        .to_string(),
    )
}

async fn info(
    c: &mut FlightServiceClient<Channel>,
    d: FlightDescriptor,
) -> Result<FlightInfo, tonic::Status> {
    c.get_flight_info(d).await.map(tonic::Response::into_inner)
}

fn ticket_of(info: &FlightInfo) -> Ticket {
    assert_eq!(info.endpoint.len(), 1);
    assert!(info.endpoint[0].location.is_empty(), "same server");
    info.endpoint[0].ticket.clone().unwrap()
}

/// The batches of a `DoGet`, decoded by arrow-flight's own decoder.
async fn do_get(
    c: &mut FlightServiceClient<Channel>,
    t: Ticket,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    let s = c.do_get(t).await?.into_inner();
    let decoded = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
        s.map_err(arrow_flight::error::FlightError::from),
    );
    decoded.try_collect().await.map_err(|e| match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::internal(other.to_string()),
    })
}

/// The rows of an `Access.Fetch` (one page).
async fn fetch(sb: &Sandbox, org: &str, user: &str, req: pb::FetchRequest) -> Vec<RecordBatch> {
    let mut s = AccessClient::new(channel_at(sb, org, user, "swm-1").await)
        .fetch(req)
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        if let Some(sum) = &m.summary {
            assert!(sum.complete, "one page");
        }
        bytes.extend(m.arrow_ipc);
    }
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// What `Access.Fetch` releases to TUM's alice under `grant`, as one batch.
async fn alice_fetches_under(sb: &Sandbox, grant: &str) -> RecordBatch {
    let req = pb::FetchRequest {
        dataset: SMART_METER.into(),
        purpose: "AcademicResearch".into(),
        grant_id: grant.to_owned(),
        ..Default::default()
    };
    concat(&fetch(sb, "tum", "alice", req).await)
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

fn names(schema: &arrow::datatypes::Schema) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// The principal (keyed pseudonym) SWM's audit log records for a caller: the
/// one of the entry a denied `Access.Fetch` by them leaves.
async fn audited_principal(sb: &Sandbox, org: &str, user: &str) -> allmende_audit::Principal {
    let before = size(sb);
    let err = AccessClient::new(channel_at(sb, org, user, "swm-1").await)
        .fetch(pb::FetchRequest {
            dataset: SMART_METER.into(),
            purpose: "Marketing".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    entries_since(sb, before)
        .into_iter()
        .find(|e| e.decision == Some(Decision::Deny))
        .unwrap()
        .principal
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flight_releases_what_fetch_releases_and_tickets_are_judged_per_caller() {
    let sb = federation().await;
    let grant = alice_grant(&sb).await;
    let mut alice = flight(&sb, "tum", "alice").await;

    // GetFlightInfo decides for alice (audited) and answers the schema after
    // projection (the grant's columns) and pseudonymisation.
    let before = size(&sb);
    let fi = info(&mut alice, command(&grant)).await.unwrap();
    let entries = entries_since(&sb, before);
    assert!(
        entries.iter().any(|e| e.action == "read"
            && e.decision == Some(Decision::Allow)
            && matches!(e.kind, EntryKind::Decision)),
        "GetFlightInfo's decision is not audited: {entries:?}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::ReleaseIntent)),
        "GetFlightInfo released nothing"
    );
    let schema = fi.clone().try_decode_schema().unwrap();
    assert_eq!(names(&schema), ["household_id", "kwh", "timestamp"]);
    // GetSchema: the same schema.
    let sr = alice
        .get_schema(command(&grant))
        .await
        .unwrap()
        .into_inner();
    let same: arrow::datatypes::Schema = (&sr).try_into().unwrap();
    assert_eq!(same, schema);

    // DoGet releases the same rows as Access.Fetch under the same grant,
    // with the same pseudonyms.
    let ticket = ticket_of(&fi);
    let before = size(&sb);
    let got = concat(&do_get(&mut alice, ticket.clone()).await.unwrap());
    let entries = entries_since(&sb, before);
    for kind in ["intent", "completion"] {
        assert!(
            entries.iter().any(|e| match (&e.kind, kind) {
                (EntryKind::ReleaseIntent, "intent") => e.grant_id.as_deref() == Some(&grant),
                (EntryKind::ReleaseCompletion { .. }, "completion") => true,
                _ => false,
            }),
            "DoGet's release {kind} is not audited"
        );
    }
    let fetched = alice_fetches_under(&sb, &grant).await;
    assert!(got.num_rows() > 0);
    assert_eq!(
        got, fetched,
        "Flight and Access.Fetch released different rows"
    );
    let ids = got
        .column_by_name("household_id")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert!(
        ids.iter().flatten().all(|id| !id.starts_with("HH-")),
        "subject ids left in clear"
    );

    // A ticket is judged for whoever presents it. Bob is a researcher of
    // TUM, the grantee organisation: decided for bob, allowed, the release
    // audited as bob's, pseudonyms as in every read under the grant.
    let bob_principal = audited_principal(&sb, "tum", "bob").await;
    let mut bob = flight(&sb, "tum", "bob").await;
    let before = size(&sb);
    let bobs = concat(&do_get(&mut bob, ticket.clone()).await.unwrap());
    assert_eq!(bobs, got);
    assert!(
        entries_since(&sb, before)
            .iter()
            .any(|e| matches!(e.kind, EntryKind::ReleaseIntent) && e.principal == bob_principal),
        "bob's release is not audited as bob's"
    );
    // The insurer's analyst holds no grant: alice's ticket is denied for
    // them with the plain reason, audited as theirs; nothing released.
    let insurer_principal = audited_principal(&sb, "versicherung-ag", "analyst").await;
    let mut insurer = flight(&sb, "versicherung-ag", "analyst").await;
    let before = size(&sb);
    let err = do_get(&mut insurer, ticket.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().starts_with("denied: "), "{}", err.message());
    let entries = entries_since(&sb, before);
    assert!(
        entries
            .iter()
            .any(|e| e.decision == Some(Decision::Deny) && e.principal == insurer_principal),
        "the refusal is not audited as the insurer's: {entries:?}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::ReleaseIntent)),
        "a release started for the insurer"
    );

    // Altered (one character flipped), truncated, garbage and another
    // node's tickets are refused with a clear message, each audited.
    let t = ticket.ticket.to_vec();
    let mut altered = t.clone();
    let mid = altered.len() / 2;
    altered[mid] = if altered[mid] == b'A' { b'B' } else { b'A' };
    let stadt = {
        let mut c = FlightServiceClient::new(channel_at(&sb, "tum", "alice", "stadt-1").await);
        let listed: Vec<FlightInfo> = c
            .list_flights(Criteria::default())
            .await
            .unwrap()
            .into_inner()
            .try_collect()
            .await
            .unwrap();
        assert!(!listed.is_empty(), "the city lists its public datasets");
        ticket_of(&listed[0]).ticket.to_vec()
    };
    for (what, bad, says) in [
        ("altered", altered, "not valid"),
        ("truncated", t[..t.len() - 8].to_vec(), "ticket"),
        ("garbage", b"give me everything".to_vec(), "unknown format"),
        ("another node's", stadt, "not valid"),
    ] {
        let before = size(&sb);
        let err = do_get(&mut alice, Ticket::new(bad)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("flight ticket") && err.message().contains(says),
            "{what}: {}",
            err.message()
        );
        let entries = entries_since(&sb, before);
        assert!(
            entries.iter().any(|e| e.decision == Some(Decision::Deny)
                && e.policy_ids.iter().any(|p| p == "invalid-flight-ticket")),
            "{what}: the refusal is not audited"
        );
        assert!(
            !entries
                .iter()
                .any(|e| matches!(e.kind, EntryKind::ReleaseIntent)),
            "{what}: released"
        );
    }

    // GetFlightInfo denied for the insurer's purpose: the plain reason.
    let err = info(
        &mut insurer,
        FlightDescriptor::new_cmd(
            serde_json::json!({"dataset": SMART_METER, "purpose": "InsuranceUnderwriting"})
                .to_string(),
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(err.message().starts_with("denied: "), "{}", err.message());
    // A malformed command: a clear INVALID_ARGUMENT.
    let err = info(&mut alice, FlightDescriptor::new_cmd("{\"dataset\": 3}"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("flight descriptor command"),
        "{}",
        err.message()
    );

    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_flights_shows_only_readable_datasets_and_unserved_calls_are_unimplemented() {
    let sb = federation().await;
    let grant = alice_grant(&sb).await;
    let list = |mut c: FlightServiceClient<Channel>, criteria: serde_json::Value| async move {
        let expression = if criteria.is_null() {
            Vec::new()
        } else {
            criteria.to_string().into_bytes()
        };
        c.list_flights(Criteria {
            expression: expression.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .try_collect::<Vec<FlightInfo>>()
        .await
        .unwrap()
    };
    let dataset = |i: &FlightInfo| i.flight_descriptor.as_ref().unwrap().path[0].clone();
    let alice = list(
        flight(&sb, "tum", "alice").await,
        serde_json::json!({"purpose": "AcademicResearch", "grant": grant}),
    )
    .await;
    let mine: Vec<String> = alice.iter().map(dataset).collect();
    assert!(mine.contains(&SMART_METER.to_owned()), "{mine:?}");
    let smart = alice.iter().find(|i| dataset(i) == SMART_METER).unwrap();
    assert_eq!(
        names(&smart.clone().try_decode_schema().unwrap()),
        ["household_id", "kwh", "timestamp"],
        "ListFlights shows the schema a release would have"
    );
    // Bob has no grant: the personal dataset is not listed; whatever is
    // listed, bob can read with the listed ticket.
    let bob = list(flight(&sb, "tum", "bob").await, serde_json::Value::Null).await;
    let theirs: Vec<String> = bob.iter().map(dataset).collect();
    assert!(!theirs.contains(&SMART_METER.to_owned()), "{theirs:?}");
    let mut c = flight(&sb, "tum", "bob").await;
    for i in &bob {
        do_get(&mut c, ticket_of(i))
            .await
            .unwrap_or_else(|e| panic!("listed `{}` not readable: {e:?}", dataset(i)));
    }
    // Listing audits nothing (no decision acted upon, no row read).
    let before = size(&sb);
    list(
        flight(&sb, "versicherung-ag", "analyst").await,
        serde_json::Value::Null,
    )
    .await;
    assert!(entries_since(&sb, before).is_empty());

    // The calls a node does not serve say so.
    let mut c = flight(&sb, "tum", "alice").await;
    let mut errs = vec![
        c.do_action(arrow_flight::Action::new("drop", "x"))
            .await
            .map(|_| ())
            .unwrap_err(),
        c.list_actions(arrow_flight::Empty {})
            .await
            .map(|_| ())
            .unwrap_err(),
        c.poll_flight_info(command(&grant))
            .await
            .map(|_| ())
            .unwrap_err(),
        c.handshake(futures::stream::iter(vec![
            arrow_flight::HandshakeRequest::default(),
        ]))
        .await
        .map(|_| ())
        .unwrap_err(),
    ];
    let put = c
        .do_put(futures::stream::iter(vec![
            arrow_flight::FlightData::default(),
        ]))
        .await;
    errs.push(match put {
        Err(e) => e,
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
    });
    let exchange = c
        .do_exchange(futures::stream::iter(vec![
            arrow_flight::FlightData::default(),
        ]))
        .await;
    errs.push(match exchange {
        Err(e) => e,
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
    });
    for e in errs {
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
        assert!(e.message().contains("is not served"), "{}", e.message());
    }
    sb.shutdown().await.unwrap();
}

/// Revoking the grant ends a `DoGet` in flight with the reason, and the
/// release's completion is audited as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_ends_a_do_get_in_flight() {
    let sb = federation().await;
    sb.register_sample(
        SMART_METER,
        &allmende_connectors::sample::SampleSpec {
            days: 10,
            ..Default::default()
        },
        "big",
    )
    .await
    .unwrap();
    let grant = alice_grant(&sb).await;
    let mut alice = flight(&sb, "tum", "alice").await;
    let t = ticket_of(&info(&mut alice, command(&grant)).await.unwrap());
    let before = size(&sb);
    let mut s = alice.do_get(t).await.unwrap().into_inner();
    // The schema and a first batch.
    s.message().await.unwrap().unwrap();
    s.message().await.unwrap().unwrap();
    GrantsClient::new(channel_at(&sb, "swm", "dpo", "swm-1").await)
        .revoke(pb::RevokeRequest {
            grant_id: grant.clone(),
            reason: "stop".into(),
        })
        .await
        .unwrap();
    let mut messages = 0;
    let err = loop {
        match s.message().await {
            Ok(Some(_)) => messages += 1,
            Ok(None) => panic!("the stream ended without an error after {messages} messages"),
            Err(e) => break e,
        }
    };
    assert!(messages < 10, "{messages} messages after revocation");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{}", err.message());
    let mut aborted = false;
    for _ in 0..100 {
        aborted = entries_since(&sb, before).iter().any(|e| {
            matches!(
                e.kind,
                EntryKind::ReleaseCompletion {
                    outcome: allmende_audit::ReleaseOutcome::Aborted,
                    ..
                }
            ) && e.grant_id.as_deref() == Some(grant.as_str())
        });
        if aborted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(aborted, "no aborted completion audited");
    sb.shutdown().await.unwrap();
}

/// The real pyarrow client over mTLS: a DataFrame's worth of rows under the
/// grant, and a denial surfacing as a Flight error carrying the plain
/// reason. Skipped (with a note) where python3 has no pyarrow; the test
/// command (`scripts/test.sh`) installs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyarrow_reads_a_dataframe_over_mtls() {
    let has_pyarrow = std::process::Command::new("python3")
        .args(["-c", "import pyarrow.flight"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_pyarrow {
        if std::env::var_os("CI").is_some() {
            panic!("python3 has no pyarrow in CI: scripts/test.sh installs it");
        }
        eprintln!("skipped: python3 has no pyarrow.flight (scripts/test.sh installs it)");
        return;
    }
    let sb = federation().await;
    let grant = alice_grant(&sb).await;
    let alice = sb.profile("tum", "alice").unwrap();
    let insurer = sb.profile("versicherung-ag", "analyst").unwrap();
    let script = sb.root.join("flight.py");
    std::fs::write(&script, include_str!("flight.py")).unwrap();
    let port = sb.node("swm-1").unwrap().grpc_addr.port();
    let expected = alice_fetches_under(&sb, &grant).await.num_rows();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script)
        .arg(port.to_string())
        .arg(&alice.root_ca)
        .arg(&alice.cert)
        .arg(&alice.key)
        .arg(&insurer.cert)
        .arg(&insurer.key)
        .arg(&grant);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pyarrow failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("rows {expected}\n")),
        "expected {expected} rows:\n{stdout}"
    );
    assert!(
        stdout.contains("columns household_id,kwh,timestamp\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("denied FlightUnauthorizedError"),
        "{stdout}"
    );
    assert!(
        stdout.contains("denied: ")
            && stdout.contains("Personal data is never used for insurance underwriting"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("dataframe {expected}\n")) || stdout.contains("no pandas"),
        "{stdout}"
    );
    sb.shutdown().await.unwrap();
}
