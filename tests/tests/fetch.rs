//! The release pipeline across real nodes: story 1 (registration, federated
//! metadata, rows stay at the owner), consent filtering and withdrawal,
//! pseudonymisation, fail-closed audit, hostile requests, resume cursors
//! (sealed, bound to the request, pages a function of the released rows),
//! quasi-identifier filters, clients that stop reading, rate limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::sandbox::Sandbox;
use allmende_e2e::{connect_with, material, munich};
use allmende_proto::v1 as pb;
use pb::access_client::AccessClient;
use std::time::Duration;

async fn federation() -> Sandbox {
    let sb = munich().await;
    sb.register_demo_datasets().await.unwrap();
    sb
}

/// A client of `org`/`user` talking to `node`.
async fn access(
    sb: &Sandbox,
    org: &str,
    user: &str,
    node: &str,
) -> AccessClient<tonic::transport::Channel> {
    let p = sb.profile(org, user).unwrap();
    AccessClient::new(
        connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
            .await
            .unwrap(),
    )
}

fn grant_tum_research(sb: &Sandbox, id: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    sb.node("swm-1").unwrap().policy.with_entities(|e| {
        e.upsert_grant(allmende_policies::Grant {
            id: id.into(),
            grantee: "tum".into(),
            dataset: "smart-meter-readings".into(),
            purpose: allmende_policies::Purpose::AcademicResearch,
            not_before: now - 60,
            not_after: Some(now + 90 * 86_400),
            state: allmende_policies::GrantState::Active,
            aggregate_only: false,
        })
    });
}

struct Fetched {
    bytes: Vec<u8>,
    batches: Vec<arrow::record_batch::RecordBatch>,
    summary: pb::FetchSummary,
}

async fn fetch(
    c: &mut AccessClient<tonic::transport::Channel>,
    req: pb::FetchRequest,
) -> Result<Fetched, tonic::Status> {
    let mut s = c.fetch(req).await?.into_inner();
    let mut bytes = Vec::new();
    let mut summary = None;
    while let Some(m) = s.message().await? {
        bytes.extend(m.arrow_ipc);
        if m.summary.is_some() {
            summary = m.summary;
        }
    }
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.clone()), None)
            .unwrap();
    let batches = reader.map(|b| b.unwrap()).collect();
    Ok(Fetched {
        bytes,
        batches,
        summary: summary.expect("summary"),
    })
}

fn smart_meter(grant: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        dataset: "smart-meter-readings".into(),
        purpose: "AcademicResearch".into(),
        grant_id: grant.into(),
        ..Default::default()
    }
}

use allmende_e2e::files_below;

fn file_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    let b = std::fs::read(path).unwrap();
    b.windows(needle.len()).any(|w| w == needle)
}

/// How many files of a node's store (blobs included) contain `needle`.
fn store_files_containing(n: &allmende::node::NodeHandle, needle: &[u8]) -> usize {
    let files = files_below(n.store.path());
    assert!(!files.is_empty(), "{} has store files", n.name);
    files.iter().filter(|f| file_contains(f, needle)).count()
}

fn rows(f: &Fetched) -> usize {
    f.batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_1_metadata_everywhere_rows_stay_at_the_owner() {
    let sb = federation().await;
    // Every node's replica lists SWM's dataset, owned by swm at swm-1.
    for n in &sb.nodes {
        let mut found = false;
        for _ in 0..100 {
            if n.catalog.get(Some("swm"), "smart-meter-readings").is_ok() {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            found,
            "{} has no catalog entry for smart-meter-readings",
            n.name
        );
    }
    // The rows are served only by the owner: elsewhere the dataset is unknown.
    let mut at_city = access(&sb, "stadt", "dpo", "stadt-1").await;
    let err = fetch(&mut at_city, smart_meter("")).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // No other node's store holds a subject id of the data: every file of
    // the store is searched, `blobs/` (sled's large values) included.
    let id = b"HH-000001";
    let consent_csv = sb.root.join("sample-data").join("consent-records.csv");
    assert!(
        file_contains(&consent_csv, id),
        "the id is in the source data"
    );
    let swm = sb.node("swm-1").unwrap();
    assert!(
        store_files_containing(swm, id) > 0,
        "the owner's consent store holds it: the search finds what is stored"
    );
    for n in sb.nodes.iter().filter(|n| n.name != "swm-1") {
        assert_eq!(
            store_files_containing(n, id),
            0,
            "{} stores a household id",
            n.name
        );
    }
    // The search sees large values too (sled keeps them apart in `blobs/`):
    // one planted at TUM's node is found.
    let tum = sb.node("tum-1").unwrap();
    let planted: allmende::store::RawTable<u64> = tum
        .store
        .raw_table(allmende::store::TableName::Peers)
        .unwrap();
    let mut big = vec![b'x'; 256 * 1024];
    big[128 * 1024..128 * 1024 + id.len()].copy_from_slice(id);
    let mut b = allmende::store::WriteBatch::new();
    b.put_raw(&planted, &u64::MAX, big);
    tum.store.commit_durable(b).await.unwrap();
    assert!(store_files_containing(tum, id) > 0, "a planted id is found");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_filters_rows_pseudonymises_and_withdrawal_applies_next_fetch() {
    let sb = federation().await;
    let swm = sb.node("swm-1").unwrap();
    grant_tum_research(&sb, "g-1");
    let mut tum = access(&sb, "tum", "alice", "swm-1").await;
    // Without the grant: denied with the deciding policy named.
    let err = fetch(&mut tum, smart_meter("")).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let f = fetch(&mut tum, smart_meter("g-1")).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let permitted = swm.consent.permitted_subjects(
        "smart-meter-readings",
        allmende_policies::Purpose::AcademicResearch,
        now,
    );
    assert!(permitted.contains("HH-000001") && !permitted.contains("HH-000002"));
    // Every released row is of a consenting household: count them at the source.
    let served = swm.registry.served("smart-meter-readings").unwrap();
    let all = served
        .connector
        .read(allmende_connectors::ReadRequest::new())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let expected: usize = all
        .batches
        .iter()
        .map(|b| {
            let ids = arrow::compute::cast(
                b.0.column_by_name("household_id").unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let ids = ids
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .clone();
            ids.iter()
                .filter(|v| v.is_some_and(|v| permitted.contains(v)))
                .count()
        })
        .sum();
    assert!(expected > 0 && expected < all.batches.iter().map(|b| b.0.num_rows()).sum::<usize>());
    assert_eq!(rows(&f), expected);
    assert_eq!(f.summary.rows as usize, expected);
    // No raw identifier value in the released stream.
    for marker in [&b"HH-0000"[..], b"1EMH0"] {
        assert!(
            !f.bytes.windows(marker.len()).any(|w| w == marker),
            "raw identifier in the stream"
        );
    }
    let ids = f.batches[0].column_by_name("household_id").unwrap();
    let ids = ids
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    assert!(ids.value(0).starts_with("p-"));

    // HH-000001 withdraws; the next fetch excludes its rows.
    let p = sb.profile("swm", "HH-000001").unwrap();
    let ch = connect_with(&swm.grpc_endpoint(), &material(&p))
        .await
        .unwrap();
    pb::consent_client::ConsentClient::new(ch)
        .withdraw(pb::WithdrawConsentRequest {
            subject_id: "HH-000001".into(),
            dataset: "smart-meter-readings".into(),
            purpose: String::new(),
        })
        .await
        .unwrap();
    let g = fetch(&mut tum, smart_meter("g-1")).await.unwrap();
    assert!(rows(&g) < rows(&f), "withdrawal did not reduce the rows");
    let mut pseudo_before = std::collections::BTreeSet::new();
    for b in &f.batches {
        let c = b.column_by_name("household_id").unwrap();
        let c = c
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        pseudo_before.extend(c.iter().flatten().map(str::to_owned));
    }
    let mut pseudo_after = std::collections::BTreeSet::new();
    for b in &g.batches {
        let c = b.column_by_name("household_id").unwrap();
        let c = c
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        pseudo_after.extend(c.iter().flatten().map(str::to_owned));
    }
    assert_eq!(
        pseudo_before.len() - pseudo_after.len(),
        1,
        "exactly one household less"
    );
    // The household lists the accesses that included its data.
    let mine = pb::audit_client::AuditClient::new(
        connect_with(&swm.grpc_endpoint(), &material(&p))
            .await
            .unwrap(),
    )
    .my_accesses(pb::MyAccessesRequest::default())
    .await
    .unwrap()
    .into_inner();
    let releases: Vec<_> = mine
        .entries
        .iter()
        .filter(|e| e.kind == "release_completion")
        .collect();
    assert_eq!(releases.len(), 1, "the first fetch only: {mine:?}");
    assert!(
        mine.entries
            .iter()
            .any(|e| e.kind == "consent_change" && e.action == "withdraw_consent"),
        "the withdrawal itself is in the household's view: {mine:?}"
    );
    assert_eq!(releases[0].organisation, "tum");
    assert_eq!(releases[0].purpose, "AcademicResearch");
    // The audit log has the filtered count; the client never saw it.
    assert!(releases[0].detail.contains("rows_filtered="));
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unwritable_audit_log_means_unavailable_and_zero_bytes() {
    let sb = federation().await;
    let stadt = sb.node("stadt-1").unwrap();
    let mut c = access(&sb, "tum", "alice", "stadt-1").await;
    let req = pb::FetchRequest {
        dataset: "air-quality".into(),
        ..Default::default()
    };
    assert!(rows(&fetch(&mut c, req.clone()).await.unwrap()) > 0);
    stadt.store.fail_writes(true);
    let r = c.fetch(req.clone()).await;
    let err = match r {
        Err(e) => e,
        Ok(s) => {
            let mut s = s.into_inner();
            let first = s.message().await;
            match first {
                Err(e) => e,
                Ok(m) => panic!("data left the node although the log is unwritable: {m:?}"),
            }
        }
    };
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    stadt.store.fail_writes(false);
    assert!(rows(&fetch(&mut c, req).await.unwrap()) > 0);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_get_clear_errors() {
    let sb = federation().await;
    grant_tum_research(&sb, "g-1");
    let mut c = access(&sb, "tum", "alice", "swm-1").await;
    let cmp = |column: &str, v: pb::value::Kind| pb::Filter {
        expr: Some(pb::filter::Expr::Comparison(pb::Comparison {
            column: column.into(),
            op: pb::CompareOp::Eq.into(),
            value: Some(pb::Value { kind: Some(v) }),
        })),
    };
    let cases: Vec<(pb::FetchRequest, tonic::Code, &str)> = vec![
        (
            pb::FetchRequest {
                filter: Some(cmp(
                    "household_id",
                    pb::value::Kind::StringValue("HH-000001".into()),
                )),
                ..smart_meter("g-1")
            },
            tonic::Code::InvalidArgument,
            "single people out",
        ),
        (
            pb::FetchRequest {
                filter: Some(cmp("meter_id", pb::value::Kind::StringValue("x".into()))),
                ..smart_meter("g-1")
            },
            tonic::Code::InvalidArgument,
            "identifying",
        ),
        (
            pb::FetchRequest {
                filter: Some(cmp("nope", pb::value::Kind::IntValue(1))),
                ..smart_meter("g-1")
            },
            tonic::Code::InvalidArgument,
            "does not have",
        ),
        (
            pb::FetchRequest {
                columns: vec!["nope".into()],
                ..smart_meter("g-1")
            },
            tonic::Code::InvalidArgument,
            "no column",
        ),
        (
            pb::FetchRequest {
                purpose: "academicresearch".into(),
                ..smart_meter("g-1")
            },
            tonic::Code::InvalidArgument,
            "unknown purpose",
        ),
        (
            pb::FetchRequest {
                dataset: "no-such-data".into(),
                ..Default::default()
            },
            tonic::Code::NotFound,
            "no connector",
        ),
        (
            pb::FetchRequest {
                resume_cursor: "garbage".into(),
                ..smart_meter("g-1")
            },
            tonic::Code::InvalidArgument,
            "cursor",
        ),
        (
            pb::FetchRequest {
                purpose: "Marketing".into(),
                ..smart_meter("g-1")
            },
            tonic::Code::PermissionDenied,
            "",
        ),
    ];
    for (req, code, text) in cases {
        let err = fetch(&mut c, req.clone())
            .await
            .err()
            .unwrap_or_else(|| panic!("{req:?} was served"));
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(err.message().contains(text), "{req:?}: {}", err.message());
    }
    // An oversized request is refused, not decoded.
    let big = pb::FetchRequest {
        columns: vec!["x".repeat(1024); 2048],
        ..smart_meter("g-1")
    };
    let err = fetch(&mut c, big).await.err().unwrap();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{err:?}"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_cursor_returns_the_rest_exactly() {
    let sb = federation().await;
    let mut c = access(&sb, "tum", "alice", "stadt-1").await;
    let req = pb::FetchRequest {
        dataset: "air-quality".into(),
        ..Default::default()
    };
    let all = fetch(&mut c, req.clone()).await.unwrap();
    let n = rows(&all);
    let first = fetch(
        &mut c,
        pb::FetchRequest {
            max_rows: 100,
            ..req.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(rows(&first), 100);
    assert!(!first.summary.complete);
    let rest = fetch(
        &mut c,
        pb::FetchRequest {
            resume_cursor: first.summary.next_cursor.clone(),
            ..req
        },
    )
    .await
    .unwrap();
    assert!(rest.summary.complete);
    assert_eq!(rows(&first) + rows(&rest), n);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_releases_the_source_and_is_audited_as_aborted() {
    let sb = federation().await;
    let swm = sb.node("swm-1").unwrap();
    grant_tum_research(&sb, "g-1");
    // More released rows than the channels and HTTP/2 windows buffer.
    let spec = allmende_connectors::sample::SampleSpec::default();
    let days: Vec<_> = (0..16)
        .map(|d| allmende_connectors::sample::smart_meter_readings_day(&spec, d).unwrap())
        .collect();
    replace_meter_source(&sb, "many-days", &days, None).await;
    let mut c = access(&sb, "tum", "alice", "swm-1").await;
    let mut s = c.fetch(smart_meter("g-1")).await.unwrap().into_inner();
    let _first = s.message().await.unwrap().unwrap();
    drop(s);
    drop(c);
    let mut aborted = false;
    for _ in 0..100 {
        let size = swm.audit.size();
        for seq in (0..size).rev().take(5) {
            let e = allmende_audit::Entry::decode(&swm.audit.entry_bytes(seq).unwrap().unwrap())
                .unwrap();
            if matches!(
                e.kind,
                allmende_audit::EntryKind::ReleaseCompletion {
                    outcome: allmende_audit::ReleaseOutcome::Aborted,
                    ..
                }
            ) {
                aborted = true;
            }
        }
        if aborted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(aborted, "no aborted completion recorded");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_principal_rate_limit() {
    let sb = federation().await;
    let mut c = access(&sb, "tum", "alice", "stadt-1").await;
    let req = pb::FetchRequest {
        dataset: "air-quality".into(),
        max_rows: 1,
        ..Default::default()
    };
    let mut exhausted = false;
    for _ in 0..40 {
        if let Err(e) = fetch(&mut c, req.clone()).await {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted);
            exhausted = true;
            break;
        }
    }
    assert!(exhausted, "no rate limit after 40 fetches");
    // Another principal is not affected.
    let mut other = access(&sb, "stadt", "dpo", "stadt-1").await;
    assert!(fetch(&mut other, req).await.is_ok());
    sb.shutdown().await.unwrap();
}

/// Replaces the source of `smart-meter-readings` at `swm-1` by a directory
/// with one Parquet file per batch (the connector reads each file in its own
/// batches), registered by SWM's steward through the real flow.
async fn replace_meter_source(
    sb: &Sandbox,
    name: &str,
    files: &[arrow::record_batch::RecordBatch],
    cursor_column: Option<&str>,
) {
    let path = sb.root.join("sample-data").join(name);
    let mut config = meter_config(&path);
    config.cursor_column = cursor_column.map(str::to_owned);
    for (i, b) in files.iter().enumerate() {
        let file = path.join(format!("part-{i:04}.parquet"));
        allmende_connectors::write::write_parquet(&file, &b.schema(), std::slice::from_ref(b))
            .unwrap();
    }
    sb.register_dataset(
        "swm",
        "steward",
        &allmende::demo::munich::smart_meter_readings(),
        &config,
    )
    .await
    .unwrap();
}

fn meter_config(path: &std::path::Path) -> allmende_connectors::FileConnectorConfig {
    let mut config = allmende_connectors::FileConnectorConfig::new(
        path,
        allmende_connectors::FileFormat::Parquet,
    );
    config.schema = Some(allmende_connectors::sample::smart_meter_fields());
    config.subject_column = Some("household_id".into());
    config.identifier_columns = vec!["meter_id".into()];
    config
}

/// Fetches, waiting out the per-principal rate limit.
async fn fetch_patiently(
    c: &mut AccessClient<tonic::transport::Channel>,
    req: pb::FetchRequest,
) -> Result<Fetched, tonic::Status> {
    for _ in 0..50 {
        match fetch(c, req.clone()).await {
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => return other,
        }
    }
    panic!("rate limited for too long");
}

/// What a caller sees of one page.
#[derive(Debug, PartialEq)]
struct Seen {
    rows: u64,
    complete: bool,
    cursor_len: usize,
    batch_rows: Vec<usize>,
    data: Option<arrow::record_batch::RecordBatch>,
}

/// Pages through `smart-meter-readings` with `max_rows`, at most `pages` pages.
async fn pages(
    c: &mut AccessClient<tonic::transport::Channel>,
    max_rows: u64,
    pages: usize,
) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    for _ in 0..pages {
        let f = fetch_patiently(
            c,
            pb::FetchRequest {
                max_rows,
                resume_cursor: cursor.clone(),
                ..smart_meter("g-1")
            },
        )
        .await
        .unwrap();
        let data = (!f.batches.is_empty())
            .then(|| arrow::compute::concat_batches(&f.batches[0].schema(), &f.batches).unwrap());
        out.push(Seen {
            rows: f.summary.rows,
            complete: f.summary.complete,
            cursor_len: f.summary.next_cursor.len(),
            batch_rows: f.batches.iter().map(|b| b.num_rows()).collect(),
            data,
        });
        if f.summary.complete {
            break;
        }
        cursor = f.summary.next_cursor;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_are_a_function_of_the_released_rows_only() {
    released_rows_only(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_by_a_timestamp_cursor_are_a_function_of_the_released_rows_only() {
    released_rows_only(true).await;
}

/// Registers the same released rows with different withheld rows around
/// them and checks that the caller sees the same pages. `by_time`: sources in
/// time order that resume by the timestamp column (a column cursor: value and
/// count within a run of equal values); otherwise position cursors.
async fn released_rows_only(by_time: bool) {
    let sb = federation().await;
    let swm = sb.node("swm-1").unwrap();
    grant_tum_research(&sb, "g-1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let permitted = swm.consent.permitted_subjects(
        "smart-meter-readings",
        allmende_policies::Purpose::AcademicResearch,
        now,
    );
    // Six quarter-hours of the sample: rows of consenting and of other
    // households, interleaved.
    let day = allmende_connectors::sample::smart_meter_readings_day(
        &allmende_connectors::sample::SampleSpec::default(),
        0,
    )
    .unwrap();
    let day = day.slice(0, 6 * 120);
    let ids = arrow::compute::cast(
        day.column_by_name("household_id").unwrap(),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let ids = ids
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap();
    let (released, withheld): (Vec<u32>, Vec<u32>) =
        (0..day.num_rows() as u32).partition(|&i| permitted.contains(ids.value(i as usize)));
    assert!(released.len() > 60 && !withheld.is_empty());
    let take = |idx: &[u32]| {
        let idx = arrow::array::UInt32Array::from(idx.to_vec());
        arrow::compute::take_record_batch(&day, &idx).unwrap()
    };
    // The same released rows in the same order, with the withheld rows
    // (a) where the sample has them, (b) in other places and numbers — in
    // front, in runs between released rows, after them — and (c) not at all;
    // in one file (pages end inside a source batch) or in many (pages also
    // end at batch ends, followed by files of withheld rows only).
    let mut other: Vec<u32> = withheld.clone();
    for (n, r) in released.iter().enumerate() {
        other.push(*r);
        let run = n % 4;
        other.extend(withheld.iter().cycle().skip(n).take(run));
    }
    other.extend(withheld.iter().take(30));
    let chunks = |b: arrow::record_batch::RecordBatch, n: usize| {
        (0..b.num_rows())
            .step_by(n)
            .map(|at| b.slice(at, n.min(b.num_rows() - at)))
            .collect::<Vec<_>>()
    };
    let mut gaps = Vec::new();
    for part in released.chunks(50) {
        gaps.push(take(part));
        gaps.push(take(&withheld[..20]));
    }
    let layouts = if by_time {
        // Only layouts in time order: the sample's, split or without the
        // withheld rows.
        let t = Some("timestamp");
        vec![
            ("sample-by-time", vec![day.clone()], t),
            ("sample-in-files-of-7-by-time", chunks(day.clone(), 7), t),
            ("none-by-time", vec![take(&released)], t),
            (
                "none-in-files-of-25-by-time",
                chunks(take(&released), 25),
                t,
            ),
        ]
    } else {
        vec![
            ("sample", vec![day.clone()], None),
            ("moved", vec![take(&other)], None),
            ("moved-in-files-of-7", chunks(take(&other), 7), None),
            ("none", vec![take(&released)], None),
            ("none-in-files-of-25", chunks(take(&released), 25), None),
            ("withheld-files-between-pages", gaps, None),
        ]
    };
    let mut tum = access(&sb, "tum", "alice", "swm-1").await;
    let mut seen = Vec::new();
    for (name, batches, cursor_column) in &layouts {
        replace_meter_source(&sb, &format!("layout-{name}"), batches, *cursor_column).await;
        let by_50 = pages(&mut tum, 50, 10).await;
        let by_1 = pages(&mut tum, 1, 4).await;
        // Exactly all released rows: one complete page, even when withheld
        // rows follow the last released one.
        let by_all = pages(&mut tum, released.len() as u64, 3).await;
        seen.push((name, by_50, by_1, by_all));
    }
    let (_, by_50, by_1, by_all) = &seen[0];
    // Full pages of released rows until the last one; no empty page.
    let total = released.len() as u64;
    assert_eq!(by_all.len(), 1, "{by_all:?}");
    assert!(by_all[0].complete && by_all[0].rows == total);
    assert_eq!(by_50.len() as u64, total.div_ceil(50), "{by_50:?}");
    for (i, p) in by_50.iter().enumerate() {
        let last = i + 1 == by_50.len();
        assert_eq!(p.complete, last, "page {i}");
        let expected = if last { total - 50 * i as u64 } else { 50 };
        assert_eq!(p.rows, expected, "page {i} of {by_50:?}");
        assert_eq!(p.batch_rows.iter().sum::<usize>() as u64, p.rows);
    }
    assert!(by_1.iter().all(|p| p.rows == 1 && !p.complete), "{by_1:?}");
    // Every cursor has the same length.
    let lens: std::collections::BTreeSet<usize> = by_50
        .iter()
        .chain(by_1.iter())
        .filter(|p| !p.complete)
        .map(|p| p.cursor_len)
        .collect();
    assert_eq!(lens.len(), 1, "{lens:?}");
    // Wherever the withheld rows lie, the caller sees the same pages.
    for (name, other_50, other_1, other_all) in &seen[1..] {
        assert_eq!(other_50, by_50, "layout `{name}`, pages of 50");
        assert_eq!(other_1, by_1, "layout `{name}`, pages of 1");
        assert_eq!(other_all, by_all, "layout `{name}`, one page");
    }
    sb.shutdown().await.unwrap();
}

/// The refusals of resume cursors in `node`'s audit log.
fn cursor_refusals(node: &allmende::node::NodeHandle) -> Vec<allmende_audit::Entry> {
    (0..node.audit.size())
        .map(|seq| {
            allmende_audit::Entry::decode(&node.audit.entry_bytes(seq).unwrap().unwrap()).unwrap()
        })
        .filter(|e| e.policy_ids == ["invalid-resume-cursor"])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_cursors_are_sealed_and_bound_to_caller_dataset_purpose_and_grant() {
    let sb = federation().await;
    let swm = sb.node("swm-1").unwrap();
    grant_tum_research(&sb, "g-1");
    grant_tum_research(&sb, "g-2");
    let mut tum = access(&sb, "tum", "alice", "swm-1").await;
    let first = fetch(
        &mut tum,
        pb::FetchRequest {
            max_rows: 10,
            ..smart_meter("g-1")
        },
    )
    .await
    .unwrap();
    assert!(!first.summary.complete);
    let token = first.summary.next_cursor.clone();
    // Opaque: no file, no record number, no column value.
    assert!(token.starts_with("c1."), "{token}");
    for clear in ["readings", "parquet", "row", "position", "{"] {
        assert!(!token.contains(clear), "{token}");
    }
    // The honest continuation works.
    let next = fetch(
        &mut tum,
        pb::FetchRequest {
            max_rows: 10,
            resume_cursor: token.clone(),
            ..smart_meter("g-1")
        },
    )
    .await
    .unwrap();
    assert_eq!(next.summary.rows, 10);

    let mut altered = token.clone().into_bytes();
    let mid = altered.len() / 2;
    altered[mid] = if altered[mid] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let raw_position = allmende_connectors::Cursor::Position {
        file: "readings-2025-03-03.parquet".into(),
        row: 2,
    }
    .to_string();
    let with = |cursor: &str, req: pb::FetchRequest| pb::FetchRequest {
        resume_cursor: cursor.into(),
        ..req
    };
    let cases = [
        (
            "a hand-made source position",
            with(&raw_position, smart_meter("g-1")),
        ),
        ("an altered token", with(&altered, smart_meter("g-1"))),
        (
            "a truncated token",
            with(&token[..token.len() - 8], smart_meter("g-1")),
        ),
        ("another grant", with(&token, smart_meter("g-2"))),
        ("no grant", with(&token, smart_meter(""))),
        (
            "another purpose",
            with(
                &token,
                pb::FetchRequest {
                    purpose: "ServiceProvision".into(),
                    ..smart_meter("g-1")
                },
            ),
        ),
    ];
    for (what, req) in cases {
        let err = fetch(&mut tum, req).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains("resume cursor"),
            "{what}: {}",
            err.message()
        );
        assert!(
            !err.message().contains("readings"),
            "{what}: {}",
            err.message()
        );
    }
    // Another caller with the same request.
    let mut insurer = access(&sb, "versicherung-ag", "analyst", "swm-1").await;
    let err = fetch(&mut insurer, with(&token, smart_meter("g-1")))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // Another node and dataset.
    let mut at_city = access(&sb, "tum", "alice", "stadt-1").await;
    let err = fetch(
        &mut at_city,
        pb::FetchRequest {
            dataset: "air-quality".into(),
            resume_cursor: token.clone(),
            ..Default::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // Every refusal is audited where it happened, naming the caller, never
    // the token.
    let refused = cursor_refusals(swm);
    assert_eq!(refused.len(), 7, "{refused:?}");
    assert!(refused.iter().all(|e| e.resource == "smart-meter-readings"
        && e.decision == Some(allmende_audit::Decision::Deny)));
    assert_eq!(
        refused
            .iter()
            .filter(|e| e.principal.org == "versicherung-ag")
            .count(),
        1
    );
    assert_eq!(cursor_refusals(sb.node("stadt-1").unwrap()).len(), 1);
    for seq in 0..swm.audit.size() {
        let bytes = swm.audit.entry_bytes(seq).unwrap().unwrap();
        let body = &token[3..40];
        assert!(
            !bytes.windows(body.len()).any(|w| w == body.as_bytes()),
            "the token is in audit entry {seq}"
        );
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_on_an_identifying_column_is_refused_at_registration() {
    let sb = federation().await;
    let path = sb
        .root
        .join("sample-data")
        .join("smart-meter-readings")
        .join("readings-2025-03-03.parquet");
    assert!(path.exists(), "{}", path.display());
    for column in ["household_id", "meter_id"] {
        let mut config = meter_config(&path);
        config.cursor_column = Some(column.into());
        let err = sb
            .register_dataset(
                "swm",
                "steward",
                &allmende::demo::munich::smart_meter_readings(),
                &config,
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("cursor column `{column}` was accepted"));
        let msg = allmende::client::error_chain(&err);
        assert!(
            msg.contains(&format!("cursor column `{column}` is identifying")),
            "{msg}"
        );
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_on_quasi_identifiers_only_where_the_owner_allows() {
    let sb = federation().await;
    let swm = sb.node("swm-1").unwrap();
    grant_tum_research(&sb, "g-1");
    let mut tum = access(&sb, "tum", "alice", "swm-1").await;
    let cmp = |column: &str, op: pb::CompareOp, v: pb::value::Kind| pb::Filter {
        expr: Some(pb::filter::Expr::Comparison(pb::Comparison {
            column: column.into(),
            op: op.into(),
            value: Some(pb::Value { kind: Some(v) }),
        })),
    };
    let district = cmp(
        "district",
        pb::CompareOp::Eq,
        pb::value::Kind::StringValue("Maxvorstadt".into()),
    );
    // Alone, or hidden in a combination: refused, naming the column.
    let hidden = pb::Filter {
        expr: Some(pb::filter::Expr::All(pb::FilterList {
            filters: vec![
                cmp("kwh", pb::CompareOp::Ge, pb::value::Kind::FloatValue(0.0)),
                pb::Filter {
                    expr: Some(pb::filter::Expr::Any(pb::FilterList {
                        filters: vec![district.clone()],
                    })),
                },
            ],
        })),
    };
    for f in [district, hidden] {
        let err = fetch(
            &mut tum,
            pb::FetchRequest {
                filter: Some(f),
                ..smart_meter("g-1")
            },
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(err.message().contains("`district`"), "{}", err.message());
    }
    let audited = (0..swm.audit.size())
        .map(|seq| {
            allmende_audit::Entry::decode(&swm.audit.entry_bytes(seq).unwrap().unwrap()).unwrap()
        })
        .filter(|e| e.policy_ids == ["filter-on-quasi-identifier"])
        .count();
    assert_eq!(audited, 2);
    // The owner allows time ranges; other columns are not quasi-identifiers.
    for f in [
        cmp(
            "timestamp",
            pb::CompareOp::Ge,
            pb::value::Kind::StringValue("2025-03-04T00:00:00Z".into()),
        ),
        cmp("kwh", pb::CompareOp::Ge, pb::value::Kind::FloatValue(0.1)),
    ] {
        let f = fetch(
            &mut tum,
            pb::FetchRequest {
                filter: Some(f),
                ..smart_meter("g-1")
            },
        )
        .await
        .unwrap();
        assert!(rows(&f) > 0);
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_response_carries_at_most_the_configured_rows() {
    let mut sb = federation().await;
    let cfg = sb.node_config_path("stadt-1").unwrap();
    sb.stop_node("stadt-1").await.unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[limits]\nfetch_rows_per_response = 7\n");
    std::fs::write(&cfg, text).unwrap();
    sb.start_node("stadt-1").await.unwrap();
    let mut c = access(&sb, "tum", "alice", "stadt-1").await;
    let req = |max_rows| pb::FetchRequest {
        dataset: "air-quality".into(),
        max_rows,
        ..Default::default()
    };
    // The node's cap, whatever the request asks for above it.
    for max_rows in [0, 8, 1000] {
        let f = fetch(&mut c, req(max_rows)).await.unwrap();
        assert_eq!(rows(&f), 7, "max_rows {max_rows}");
        assert_eq!(f.summary.rows, 7);
        assert!(!f.summary.complete);
        assert!(!f.summary.next_cursor.is_empty());
    }
    // A request may ask for fewer.
    let f = fetch(&mut c, req(3)).await.unwrap();
    assert_eq!((rows(&f), f.summary.rows), (3, 3));
    sb.shutdown().await.unwrap();
}
