//! The release pipeline across real nodes: story 1 (registration, federated
//! metadata, rows stay at the owner), consent filtering and withdrawal,
//! pseudonymisation, fail-closed audit, hostile requests, resume cursors,
//! clients that stop reading, rate limits.

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

/// Every file below `dir`, in every subdirectory.
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

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
