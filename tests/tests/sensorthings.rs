//! An OGC SensorThings service across real nodes: SWM registers a
//! `sensorthings` source on a SensorThings-shaped server started by the test
//! (two datastreams, paged), a TUM researcher reads it through `Access.Fetch`
//! — decided by Cedar and audited, the time range pushed down as `$filter` —,
//! a server error in the middle of a read fails the fetch and the release is
//! audited as failed (never completed), and a registration naming a host
//! outside `sources.http_hosts` is refused and audited.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, EntryKind, ReleaseOutcome};
use allmende_connectors::sensorthings::{
    EntityId, Fault, SensorThingsServer, ServerDatastream, ServerObservation,
};
use allmende_connectors::{FieldSpec, FieldType, SensorThingsConfig};
use allmende_e2e::{audit_since, connect_with, material};
use allmende_proto::v1 as pb;
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use pb::access_client::AccessClient;
use serde_json::json;
use std::sync::Arc;

const DATASET: &str = "air-quality-sta";
/// 2025-03-03T00:00:00Z in milliseconds.
const T0_MS: i64 = 1_740_960_000_000;

fn description() -> allmende::catalog::DatasetDescription {
    let mut d = allmende::demo::munich::air_quality();
    d.id = DATASET.into();
    d.title = "Luftqualität (SensorThings)".into();
    d.schema.fields = vec![
        FieldSpec::required("datastream_id", FieldType::Int64),
        FieldSpec::new("station", FieldType::String),
        FieldSpec::required("observation_id", FieldType::Int64),
        FieldSpec::required("timestamp", FieldType::Timestamp),
        FieldSpec::required("value", FieldType::Float64),
    ];
    d.schema.subject_column = None;
    d.schema.identifier_columns = Vec::new();
    d
}

fn datastream(id: i64, n: i64) -> ServerDatastream {
    let at = |k: i64| {
        time::OffsetDateTime::from_unix_timestamp(T0_MS / 1000 + k * 600)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    ServerDatastream {
        id,
        name: format!("NO2 {id}"),
        unit: "µg/m³".into(),
        thing: json!({ "name": format!("Station {id}") }),
        sensor: json!({ "name": "NO2 sensor" }),
        observations: (0..n)
            .map(|k| ServerObservation {
                id: id * 1000 + k,
                phenomenon_time: at(k),
                result_time: None,
                result: json!(20.0 + k as f64),
            })
            .collect(),
    }
}

fn config(server: &SensorThingsServer) -> SensorThingsConfig {
    let columns = [
        ("datastream_id", "datastream.@iot.id"),
        ("station", "thing.name"),
        ("observation_id", "observation.@iot.id"),
        ("timestamp", "observation.phenomenonTime"),
        ("value", "observation.result"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let mut c = SensorThingsConfig::new(
        &server.service_url(),
        vec![EntityId::Int(1), EntityId::Int(2)],
        columns,
        "timestamp",
    );
    c.page_size = 10;
    c
}

async fn register(sb: &Sandbox, config: &SensorThingsConfig) -> Result<(), tonic::Status> {
    let p = sb.profile("swm", "steward").unwrap();
    let ch = connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap();
    pb::connectors_client::ConnectorsClient::new(ch)
        .register(pb::RegisterConnectorRequest {
            dataset_json: serde_json::to_string(&description()).unwrap(),
            kind: "sensorthings".into(),
            config_json: serde_json::to_string(config).unwrap(),
        })
        .await
        .map(|_| ())
}

/// Alice's fetch: the `observation_id`s, or the status that ended it.
async fn fetch(sb: &Sandbox, filter: Option<pb::Filter>) -> Result<Vec<i64>, tonic::Status> {
    let p = sb.profile("tum", "alice").unwrap();
    let mut c = AccessClient::new(
        connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
            .await
            .unwrap(),
    );
    let mut s = c
        .fetch(pb::FetchRequest {
            dataset: DATASET.into(),
            purpose: "AcademicResearch".into(),
            filter,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await? {
        bytes.extend(m.arrow_ipc);
    }
    Ok(
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .unwrap()
            .flat_map(|b| {
                b.unwrap()
                    .column_by_name("observation_id")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sensorthings_service_is_served_through_fetch_decided_audited_and_filtered() {
    let server = SensorThingsServer::start(
        "/FROST-Server/v1.1",
        vec![datastream(1, 36), datastream(2, 24)],
    )
    .unwrap();
    let mut spec = SandboxSpec::munich();
    spec.orgs.retain(|o| o.name == "swm" || o.name == "tum");
    let sb = Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap();
    register(&sb, &config(&server)).await.unwrap();

    // Everything, merged by time: at equal times datastream 1 before 2.
    let before = sb.node("swm-1").unwrap().audit.status().size;
    let pages = server.pages_served();
    let ids = fetch(&sb, None).await.unwrap();
    assert_eq!(ids.len(), 60);
    assert_eq!(&ids[..4], &[1000, 2000, 1001, 2001]);
    assert_eq!(server.pages_served() - pages, 4 + 3, "paged by `$top`");
    let entries = audit_since(&sb, "swm-1", before);
    assert!(
        entries.iter().any(|e| e.resource.ends_with(DATASET)
            && e.decision == Some(Decision::Allow)
            && e.kind == EntryKind::Decision),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| matches!(
            e.kind,
            EntryKind::ReleaseCompletion {
                rows_released: 60,
                outcome: ReleaseOutcome::Completed,
                ..
            }
        )),
        "{entries:?}"
    );

    // A time range: pushed down as `$filter`, one page per datastream.
    let filter = pb::Filter {
        expr: Some(pb::filter::Expr::Comparison(pb::Comparison {
            column: "timestamp".into(),
            op: pb::CompareOp::Ge as i32,
            value: Some(pb::Value {
                kind: Some(pb::value::Kind::TimestampMs(T0_MS + 30 * 600_000)),
            }),
        })),
    };
    let pages = server.pages_served();
    let ids = fetch(&sb, Some(filter)).await.unwrap();
    assert_eq!(ids, (1030..1036).collect::<Vec<_>>());
    assert_eq!(server.pages_served() - pages, 2);

    // The service fails in the middle: the fetch fails, the release is
    // audited as failed, never as completed.
    server.set_fault(Fault::ErrorOnPage(3));
    let before = sb.node("swm-1").unwrap().audit.status().size;
    let e = fetch(&sb, None).await.unwrap_err();
    assert!(
        e.message().contains("page 3") || e.code() == tonic::Code::Unavailable,
        "{e:?}"
    );
    // The completion is written right after the error is sent.
    let failed = |entries: &[allmende_audit::Entry]| {
        entries.iter().any(|e| {
            matches!(
                e.kind,
                EntryKind::ReleaseCompletion {
                    outcome: ReleaseOutcome::Failed,
                    ..
                }
            )
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut entries = audit_since(&sb, "swm-1", before);
    while !failed(&entries) {
        assert!(std::time::Instant::now() < deadline, "{entries:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        entries = audit_since(&sb, "swm-1", before);
    }
    assert!(
        !entries.iter().any(|e| matches!(
            e.kind,
            EntryKind::ReleaseCompletion {
                outcome: ReleaseOutcome::Completed,
                ..
            }
        )),
        "{entries:?}"
    );
    server.set_fault(Fault::None);
    assert_eq!(fetch(&sb, None).await.unwrap().len(), 60);

    // A host the node does not allow: refused and audited.
    let before = sb.node("swm-1").unwrap().audit.status().size;
    let mut elsewhere = config(&server);
    elsewhere.service = "http://192.0.2.1:8080/FROST-Server/v1.1".into();
    let e = register(&sb, &elsewhere).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let refused = audit_since(&sb, "swm-1", before);
    assert!(
        refused
            .iter()
            .any(|e| e.action == allmende::registry::REFUSED_SOURCE_ACTION
                && e.policy_ids == vec!["source-confinement:http-host-not-allowed".to_string()]),
        "{refused:?}"
    );
    // The refused registration left the served one alone.
    assert_eq!(fetch(&sb, None).await.unwrap().len(), 60);
    sb.shutdown().await.unwrap();
}
