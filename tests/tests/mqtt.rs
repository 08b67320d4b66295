//! LoRaWAN sensor uplinks across real nodes: SWM registers an `mqtt` source on
//! a mosquitto of its own (The Things Stack v3 uplink JSON), the node buffers
//! the uplinks durably (deduplicated; hostile messages counted in
//! `allmende_mqtt_uplinks`), a TUM researcher reads them through
//! `Access.Fetch` — decided and audited like any dataset —, the node restarts
//! and keeps its buffer while uplinks published in the meantime arrive
//! through its persistent session, and a registration naming a broker host
//! the node does not allow is refused and audited. Needs the Debian
//! `mosquitto` and `mosquitto-clients` packages (scripts/test.sh installs
//! them); skipped, saying so, without them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, EntryKind};
use allmende_connectors::mqtt::{LocalMosquitto, MqttConfig, find_mosquitto};
use allmende_connectors::{FieldSpec, FieldType};
use allmende_e2e::{audit_since, connect_with, material};
use allmende_proto::v1 as pb;
use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use pb::access_client::AccessClient;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DATASET: &str = "air-sensors-lora";

fn description() -> allmende::catalog::DatasetDescription {
    let mut d = allmende::demo::munich::air_quality();
    d.id = DATASET.into();
    d.title = "LoRaWAN-Luftsensoren".into();
    d.schema.fields = vec![
        FieldSpec::required("seq", FieldType::Int64),
        FieldSpec::required("device_id", FieldType::String),
        FieldSpec::required("received_at", FieldType::Timestamp),
        FieldSpec::required("f_cnt", FieldType::Int64),
        FieldSpec::new("no2", FieldType::Float64),
    ];
    d.schema.subject_column = None;
    d.schema.identifier_columns = Vec::new();
    d
}

fn uplink(device: u32, f_cnt: u64) -> String {
    serde_json::json!({
        "end_device_ids": {"device_id": format!("lora-{device:02}"), "dev_eui": format!("70B3D57ED00500{device:02X}")},
        "received_at": format!("2025-05-01T10:{:02}:{:02}.5Z", f_cnt / 60 % 60, f_cnt % 60),
        "uplink_message": {"f_cnt": f_cnt, "decoded_payload": {"no2": 20.0 + f_cnt as f64}}
    })
    .to_string()
}

fn publish(b: &LocalMosquitto, device: u32, f_cnt: u64) {
    b.publish(
        &format!("v3/air@swm/devices/lora-{device:02}/up"),
        uplink(device, f_cnt).as_bytes(),
        1,
    )
    .unwrap();
}

async fn register(sb: &Sandbox, config: &MqttConfig) -> Result<(), tonic::Status> {
    let p = sb.profile("swm", "steward").unwrap();
    let ch = connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap();
    pb::connectors_client::ConnectorsClient::new(ch)
        .register(pb::RegisterConnectorRequest {
            dataset_json: serde_json::to_string(&description()).unwrap(),
            kind: "mqtt".into(),
            config_json: serde_json::to_string(config).unwrap(),
        })
        .await
        .map(|_| ())
}

/// The `f_cnt` column of everything alice may fetch, in order.
async fn fetch_frames(sb: &Sandbox) -> Vec<i64> {
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
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("fetch refused: {e:?}"))
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        bytes.extend(m.arrow_ipc);
    }
    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            b.column_by_name("f_cnt")
                .unwrap()
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Waits until the node's buffer of the dataset holds `n` uplinks.
async fn buffered(sb: &Sandbox, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served = sb.node("swm-1").unwrap().registry.served(DATASET).unwrap();
        let detail = served.connector.health().await.unwrap().detail;
        if detail == format!("{n} uplinks buffered") {
            return;
        }
        assert!(Instant::now() < deadline, "still {detail}, waiting for {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connected(sb: &Sandbox) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while sb.node("swm-1").unwrap().registry.mqtt_connected(DATASET) != Some(true) {
        assert!(
            Instant::now() < deadline,
            "the mqtt subscriber did not connect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The subscription follows the connect.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn metric(sb: &Sandbox, outcome: &str) -> u64 {
    let text = sb.node("swm-1").unwrap().metrics.encode();
    let needle = format!("outcome=\"{outcome}\"");
    text.lines()
        .find(|l| {
            l.starts_with("allmende_mqtt_uplinks_total")
                && l.contains(&needle)
                && l.contains(DATASET)
        })
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lorawan_uplinks_are_buffered_served_and_survive_a_node_restart() {
    if find_mosquitto().is_none() {
        eprintln!(
            "SKIPPED: mosquitto is not installed (Debian package `mosquitto`; scripts/test.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = LocalMosquitto::start(&dir.path().join("mosquitto")).unwrap();
    let mut spec = SandboxSpec::munich();
    spec.orgs.retain(|o| o.name == "swm" || o.name == "tum");
    let mut sb = Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap();

    let config = MqttConfig::new(&broker.url(), "v3/air@swm/devices/+/up", "swm-1-air");
    register(&sb, &config).await.unwrap();
    connected(&sb).await;
    for f in 1..=12 {
        publish(&broker, u32::try_from(f % 3).unwrap(), f);
    }
    publish(&broker, 1, 4); // a redelivery
    broker
        .publish("v3/air@swm/devices/x/up", b"{\"end_device_ids\": 5", 1)
        .unwrap();
    broker
        .publish("v3/air@swm/devices/x/up", b"{\"uplink_message\":{}}", 1)
        .unwrap();
    buffered(&sb, 12).await;

    let before = sb.node("swm-1").unwrap().audit.status().size;
    assert_eq!(fetch_frames(&sb).await, (1..=12).collect::<Vec<_>>());
    let entries = audit_since(&sb, "swm-1", before);
    assert!(
        entries.iter().any(|e| e.resource.ends_with(DATASET)
            && e.decision == Some(Decision::Allow)
            && e.kind == EntryKind::Decision),
        "{entries:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&sb, "missing-device-id") < 1 || metric(&sb, "malformed-json") < 1 {
        assert!(
            Instant::now() < deadline,
            "{}",
            sb.node("swm-1").unwrap().metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&sb, "stored"), 12);
    assert_eq!(metric(&sb, "duplicate"), 1);

    // The node stops; uplinks published meanwhile wait in its persistent session.
    sb.stop_node("swm-1").await.unwrap();
    for f in 13..=20 {
        publish(&broker, 7, f);
    }
    sb.start_node("swm-1").await.unwrap();
    buffered(&sb, 20).await;
    assert_eq!(fetch_frames(&sb).await, (1..=20).collect::<Vec<_>>());

    // A broker host the node does not allow: refused and audited.
    let before = sb.node("swm-1").unwrap().audit.status().size;
    let mut elsewhere = config.clone();
    elsewhere.broker = "mqtt://192.0.2.1:1883".into();
    let e = register(&sb, &elsewhere).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let refused = audit_since(&sb, "swm-1", before);
    assert!(
        refused
            .iter()
            .any(|e| e.action == allmende::registry::REFUSED_SOURCE_ACTION
                && e.policy_ids == vec!["source-confinement:mqtt-host-not-allowed".to_string()]),
        "{refused:?}"
    );
    // The refused registration left the served one alone.
    assert_eq!(fetch_frames(&sb).await.len(), 20);
    sb.shutdown().await.unwrap();
    drop(broker);
}
