//! The demo's LoRaWAN environment sensors (`lorawan-environment` at SWM):
//! fed through a local mosquitto (the recorded The Things Stack uplinks
//! replayed into it, subscribed by the `mqtt` connector) and, as without
//! mosquitto, from the recorded uplink file (the files connector) — the
//! same rows either way, read through `Access.Fetch`. The mosquitto half is
//! skipped, saying so, when mosquitto is not installed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::SystemClock;
use allmende::demo::lorawan::{self, DATASET, Feed};
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_connectors::mqtt::{find_mosquitto, find_mosquitto_pub};
use allmende_e2e::{connect_with, material};
use allmende_proto::v1 as pb;
use pb::access_client::AccessClient;
use std::sync::Arc;

async fn swm_and_tum() -> Sandbox {
    let mut spec = SandboxSpec::munich();
    spec.orgs.retain(|o| o.name == "swm" || o.name == "tum");
    Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// Alice's fetch as CSV-like lines `device_id,received_at,f_cnt,temperature`, sorted.
async fn rows(sb: &Sandbox) -> Vec<String> {
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
            columns: ["device_id", "received_at", "f_cnt", "temperature"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("fetch refused: {e:?}"))
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        bytes.extend(m.arrow_ipc);
    }
    let mut out = Vec::new();
    for b in arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap() {
        let b = b.unwrap();
        for i in 0..b.num_rows() {
            let cells: Vec<String> = (0..b.num_columns())
                .map(|j| arrow::util::display::array_value_to_string(b.column(j), i).unwrap())
                .collect();
            out.push(cells.join(","));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_demo_sensors_serve_the_recording_through_mosquitto_or_the_file() {
    let sb = swm_and_tum().await;
    lorawan::register_with(&sb, Feed::Recording).await.unwrap();
    let l = sb.lorawan.get().unwrap();
    assert!(!l.through_mosquitto());
    assert!(
        l.line.contains("from the recorded uplink file"),
        "{}",
        l.line
    );
    let from_file = rows(&sb).await;
    assert_eq!(from_file.len(), 240);
    assert!(
        from_file[0].starts_with("env-01,2025-03-03T06:00:00"),
        "{}",
        from_file[0]
    );
    sb.shutdown().await.unwrap();

    if find_mosquitto().is_none() || find_mosquitto_pub().is_none() {
        eprintln!(
            "SKIPPED (half): mosquitto is not installed (Debian packages `mosquitto`, `mosquitto-clients`)"
        );
        return;
    }
    let sb = swm_and_tum().await;
    lorawan::register(&sb).await.unwrap();
    let l = sb.lorawan.get().unwrap();
    assert!(l.through_mosquitto(), "{}", l.line);
    assert!(l.line.contains("240 uplinks buffered"), "{}", l.line);
    assert_eq!(rows(&sb).await, from_file);
    sb.shutdown().await.unwrap();
}
