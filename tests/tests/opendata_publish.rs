//! Open-data releases at the owner's node: scooter-co's data steward
//! publishes an anonymised release of `scooter-trips` from the release spec
//! in its node config; the release directory holds the data (Parquet, CSV),
//! the report and the DCAT-AP.de metadata; every released cell has at least
//! k distinct vehicles; the release is audited. Whoever the policies do not
//! allow is refused and audited; releases beyond the ε budget are refused,
//! audited, write nothing, and the ledger survives a restart; a spec that
//! names a missing column is refused naming it, before any ε is spent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::opendata::publish::{BUDGET_REFUSAL, RELEASE_ACTION};
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, EntryKind, ReleaseOutcome};
use allmende_e2e::{audit_since, audit_size, connect_with, material};
use allmende_proto::v1 as pb;
use pb::open_data_client::OpenDataClient;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tonic::transport::Channel;

const DS: &str = "scooter-trips";
const NODE: &str = "scooter-co-1";
const K: usize = 10;

async fn federation() -> Sandbox {
    let sb = Sandbox::start(SandboxSpec::munich(), None, Arc::new(SystemClock))
        .await
        .unwrap();
    sb.register_demo_datasets().await.unwrap();
    sb
}

async fn client(sb: &Sandbox, org: &str, user: &str, node: &str) -> OpenDataClient<Channel> {
    let p = sb.profile(org, user).unwrap();
    OpenDataClient::new(
        connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
            .await
            .unwrap(),
    )
}

async fn steward(sb: &Sandbox) -> OpenDataClient<Channel> {
    client(sb, "scooter-co", "steward", NODE).await
}

async fn publish(
    c: &mut OpenDataClient<Channel>,
    dataset: &str,
) -> Result<pb::PublishReleaseResponse, tonic::Status> {
    c.publish(pb::PublishReleaseRequest {
        dataset: dataset.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn release_root(sb: &Sandbox) -> std::path::PathBuf {
    sb.node(NODE)
        .unwrap()
        .opendata
        .releases()
        .root()
        .to_path_buf()
}

/// Release directories on disk (hidden temporary ones included).
fn dirs_on_disk(sb: &Sandbox) -> BTreeSet<String> {
    match std::fs::read_dir(release_root(sb)) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The true number of distinct vehicles per (day, 2 km cell of the start
/// position) of the demo's trips, computed here from the generated rows.
fn true_units() -> BTreeMap<(String, String), BTreeSet<String>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
    let b = allmende_connectors::sample::scooter_trips(
        &allmende_connectors::sample::SampleSpec::default(),
    )
    .unwrap();
    let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
    let (dev, start, lat, lon) = (
        col("device_id"),
        col("start_time"),
        col("start_lat"),
        col("start_lon"),
    );
    let laea = allmende_opendata::Laea::epsg3035();
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for i in 0..b.num_rows() {
        let micros = start
            .as_primitive_opt::<TimestampMicrosecondType>()
            .map(|a| a.value(i))
            .unwrap_or_else(|| panic!("start_time is {:?}", start.data_type()));
        let day = time::OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000))
            .unwrap()
            .date()
            .to_string();
        let (e, n) = laea.forward(
            lat.as_primitive::<Float64Type>().value(i),
            lon.as_primitive::<Float64Type>().value(i),
        );
        let (c, r) = allmende_opendata::geo::grid_cell(e, n, 2000);
        let cell = allmende_opendata::geo::grid_cell_name(c, r, 2000);
        assert!(!dev.is_null(i));
        out.entry((day, cell))
            .or_default()
            .insert(dev.as_string::<i32>().value(i).to_owned());
    }
    out
}

/// The CSV's rows as header → value maps.
fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|l| {
            header
                .iter()
                .map(|h| (*h).to_owned())
                .zip(l.split(',').map(str::to_owned))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steward_publishes_an_anonymised_release_that_is_audited() {
    let sb = federation().await;
    let before = audit_size(&sb, NODE);
    let mut c = steward(&sb).await;
    let r = publish(&mut c, DS).await.unwrap();
    let rel = r.release.clone().unwrap();
    println!("{}", r.report_json);

    // The four files, named in the manifest, in the release directory.
    let dir = release_root(&sb).join(&rel.id);
    assert_eq!(std::path::PathBuf::from(&r.directory), dir);
    let names: BTreeSet<_> = rel.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["data.parquet", "data.csv", "report.json", "dcat.jsonld"])
    );
    for f in &rel.files {
        let bytes = std::fs::read(dir.join(&f.name)).unwrap();
        assert_eq!(bytes.len() as u64, f.bytes, "{}", f.name);
    }
    assert_eq!(rel.dataset, DS);
    assert_eq!(rel.owner, "scooter-co");
    assert_eq!(r.rows_read, 800);
    assert_eq!(r.k, K as u64);

    // Every released cell has at least k distinct vehicles (counted in the
    // generated rows here, not taken from the release).
    let truth = true_units();
    let csv = std::fs::read_to_string(dir.join("data.csv")).unwrap();
    let rows = csv_rows(&csv);
    assert_eq!(rows.len() as u64, r.cells_released, "{csv}");
    assert!(r.cells_released > 0, "a meaningful release: {csv}");
    for row in &rows {
        let key = (row["day"].clone(), row["cell"].clone());
        let units = truth.get(&key).map_or(0, BTreeSet::len);
        assert!(units >= K, "cell {key:?} has {units} vehicles: {row:?}");
    }
    // The Parquet file holds the same cells.
    let parquet = bytes::Bytes::from(std::fs::read(dir.join("data.parquet")).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(parquet)
        .unwrap()
        .build()
        .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, rows.len());

    // The report states the spec's ε and the budget after the release.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["release_id"], rel.id.as_str());
    assert_eq!(report["epsilon_spent"], "1");
    assert_eq!(report["engine"]["dp"]["epsilon"], 1.0);
    assert_eq!(report["engine"]["k"], 10);
    assert_eq!(report["budget"]["unit"], "vehicle");
    assert_eq!(report["budget"]["period"], "month");
    assert_eq!(report["budget"]["epsilon_remaining"], "9");
    assert_eq!(r.epsilon_spent_micro, 1_000_000);
    let b = r.budget.unwrap();
    assert_eq!((b.spent_micro, b.remaining_micro), (1_000_000, 9_000_000));

    // DCAT-AP.de: a dataset derived from the catalog's scooter-trips, two
    // distributions with size and checksum.
    let dcat = std::fs::read_to_string(dir.join("dcat.jsonld")).unwrap();
    assert!(
        dcat.contains("allmende://munich/scooter-co/dataset/scooter-trips"),
        "{dcat}"
    );
    assert!(
        dcat.contains("http://www.w3.org/ns/prov#wasDerivedFrom"),
        "{dcat}"
    );
    assert!(
        dcat.contains("http://spdx.org/rdf/terms#checksum"),
        "{dcat}"
    );
    let parquet_sha = &rel
        .files
        .iter()
        .find(|f| f.name == "data.parquet")
        .unwrap()
        .sha256;
    assert!(dcat.contains(parquet_sha.as_str()), "{dcat}");
    assert_eq!(dcat.matches("dcat:Distribution").count(), 2, "{dcat}");

    // Audited: the steward's allowed decision, then the release (intent
    // before the files became visible, completion with the cell counts).
    let entries = audit_since(&sb, NODE, before);
    let decisions: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "publish_open_data")
        .collect();
    assert_eq!(decisions.len(), 1, "{entries:#?}");
    assert_eq!(decisions[0].decision, Some(Decision::Allow));
    let release: Vec<_> = entries
        .iter()
        .filter(|e| e.action.starts_with(RELEASE_ACTION))
        .collect();
    assert_eq!(release.len(), 2, "{release:#?}");
    assert!(matches!(release[0].kind, EntryKind::ReleaseIntent));
    let EntryKind::ReleaseCompletion {
        rows_released,
        rows_filtered,
        outcome,
        ..
    } = release[1].kind
    else {
        panic!("{:?}", release[1].kind)
    };
    assert_eq!(outcome, ReleaseOutcome::Completed);
    assert_eq!(rows_released, r.cells_released);
    assert_eq!(
        rows_filtered,
        r.cells_suppressed_primary + r.cells_suppressed_secondary
    );
    for e in &release {
        assert_eq!(e.resource, DS);
        assert_eq!(e.request_id.as_deref(), Some(rel.id.as_str()));
        assert_eq!(e.action, format!("{RELEASE_ACTION} k=10 epsilon=1"));
        assert!(e.subjects.is_empty(), "no data subject in a release entry");
    }

    // Listed for anyone, e.g. the city's operator.
    let mut other = client(&sb, "stadt", "operator", NODE).await;
    let list = other
        .list_releases(pb::ListReleasesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.releases.len(), 1);
    assert_eq!(list.releases[0].id, rel.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_is_refused_to_whom_the_policies_do_not_allow() {
    let sb = federation().await;

    // scooter-co's operator is no data steward.
    let before = audit_size(&sb, NODE);
    let mut op = client(&sb, "scooter-co", "operator", NODE).await;
    let e = publish(&mut op, DS).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let e = op
        .budget(pb::ReleaseBudgetRequest { dataset: DS.into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let denied: Vec<_> = audit_since(&sb, NODE, before)
        .into_iter()
        .filter(|e| e.action == "publish_open_data" && e.decision == Some(Decision::Deny))
        .collect();
    assert_eq!(denied.len(), 2, "{denied:#?}");
    assert!(dirs_on_disk(&sb).is_empty());

    // SWM's steward may not publish smart-meter readings: personal data
    // that is not from public space; the reason is stated.
    let before = audit_size(&sb, "swm-1");
    let mut swm = client(&sb, "swm", "steward", "swm-1").await;
    let e = publish(&mut swm, "smart-meter-readings").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    println!("{}", e.message());
    assert!(e.message().contains("anonymisation"), "{}", e.message());
    let denied: Vec<_> = audit_since(&sb, "swm-1", before)
        .into_iter()
        .filter(|e| e.action == "publish_open_data" && e.decision == Some(Decision::Deny))
        .collect();
    assert_eq!(denied.len(), 1);

    // Another organisation's steward cannot publish scooter-co's dataset.
    let mut city = client(&sb, "stadt", "steward", NODE).await;
    let e = publish(&mut city, DS).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(dirs_on_disk(&sb).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_beyond_the_budget_are_refused_audited_and_the_ledger_survives_a_restart() {
    let mut sb = federation().await;
    let mut c = steward(&sb).await;
    for i in 1..=10u64 {
        let r = publish(&mut c, DS).await.unwrap();
        assert_eq!(r.budget.unwrap().spent_micro, i * 1_000_000);
    }
    let on_disk = dirs_on_disk(&sb);
    assert_eq!(on_disk.len(), 10);

    let before = audit_size(&sb, NODE);
    let e = publish(&mut c, DS).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    let m = e.message();
    assert!(m.contains("10 of 10 used"), "{m}");
    assert!(m.contains("per vehicle per month"), "{m}");
    assert!(m.contains("`scooter-trips`"), "{m}");
    // Nothing written, not even a temporary directory.
    assert_eq!(dirs_on_disk(&sb), on_disk);
    let entries = audit_since(&sb, NODE, before);
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e.action == RELEASE_ACTION && e.decision == Some(Decision::Deny))
        .collect();
    assert_eq!(refused.len(), 1, "{entries:#?}");
    assert_eq!(refused[0].policy_ids, vec![BUDGET_REFUSAL.to_owned()]);
    assert!(
        !entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::ReleaseIntent)),
        "no release was begun"
    );

    // The ledger survives a restart.
    sb.stop_node(NODE).await.unwrap();
    sb.start_node(NODE).await.unwrap();
    let mut c = steward(&sb).await;
    let b = c
        .budget(pb::ReleaseBudgetRequest { dataset: DS.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((b.spent_micro, b.remaining_micro), (10_000_000, 0));
    assert_eq!((b.unit.as_str(), b.period.as_str()), ("vehicle", "month"));
    assert_eq!(b.releases, 10);
    let e = publish(&mut c, DS).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert_eq!(dirs_on_disk(&sb), on_disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_naming_a_missing_column_is_refused_naming_it_before_any_epsilon_is_spent() {
    let mut sb = federation().await;
    let path = sb.node_config_path(NODE).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"start_lat\"", "\"start_latitude\"")).unwrap();
    sb.stop_node(NODE).await.unwrap();
    sb.start_node(NODE).await.unwrap();
    let mut c = steward(&sb).await;
    let e = publish(&mut c, DS).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("`start_latitude`"), "{}", e.message());
    let b = c
        .budget(pb::ReleaseBudgetRequest { dataset: DS.into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.spent_micro, 0);
    assert!(dirs_on_disk(&sb).is_empty());

    // A dataset without a spec is refused with a sentence too.
    let mut city = client(&sb, "stadt", "steward", "stadt-1").await;
    let e = publish(&mut city, "air-quality").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no release spec"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_publishes_lists_and_shows_the_budget_and_refuses_in_sentences() {
    use allmende::cli::opendata_cmd::{self, OpenDataCmd};
    let sb = federation().await;
    let profile = |org: &str, user: &str| {
        Some(
            sb.root
                .join(org)
                .join("users")
                .join(format!("{user}.profile.toml")),
        )
    };
    let out = opendata_cmd::output(
        OpenDataCmd::Publish {
            dataset: DS.into(),
            profile: profile("scooter-co", "steward"),
        },
        false,
    )
    .await
    .unwrap();
    println!("{out}");
    assert!(
        out.starts_with("published release `scooter-trips-"),
        "{out}"
    );
    for part in [
        "rows read: 800",
        "(k = 10)",
        "cells suppressed: ",
        "ε spent: 1; ε 1 of 10 spent, 9 remaining per vehicle per month",
        "data.parquet (application/vnd.apache.parquet, ",
        "data.csv (text/csv, ",
        "report.json",
        "dcat.jsonld",
    ] {
        assert!(out.contains(part), "`{part}` missing:\n{out}");
    }
    let json = opendata_cmd::output(
        OpenDataCmd::Publish {
            dataset: DS.into(),
            profile: profile("scooter-co", "steward"),
        },
        true,
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["epsilon_spent"], "1");
    assert_eq!(v["budget"]["epsilon_remaining"], "8");
    assert_eq!(v["release"]["files"].as_array().unwrap().len(), 4);

    let list = opendata_cmd::output(
        OpenDataCmd::Releases {
            dataset: String::new(),
            profile: profile("tum", "alice"),
        },
        false,
    )
    .await;
    // Alice's profile points at TUM's node, which has published nothing.
    assert_eq!(list.unwrap(), "no releases published\n");
    let budget = opendata_cmd::output(
        OpenDataCmd::Budget {
            dataset: DS.into(),
            profile: profile("scooter-co", "steward"),
        },
        false,
    )
    .await
    .unwrap();
    assert!(
        budget.starts_with("`scooter-trips`: ε 2 of 10 spent, 8 remaining per vehicle per month ("),
        "{budget}"
    );

    let err = opendata_cmd::output(
        OpenDataCmd::Publish {
            dataset: DS.into(),
            profile: profile("scooter-co", "operator"),
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, 5, "{}", err.message);
    assert!(
        err.message.starts_with("permission denied: "),
        "{}",
        err.message
    );
}
