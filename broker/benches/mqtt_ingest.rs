//! MQTT ingest: sustained uplinks per second buffered durably by the node, against what the same
//! mosquitto delivers from `mosquitto_pub` to a plain `mosquitto_sub` in the same run.
//!
//! One local mosquitto (loopback, persistence on). Each workload publishes the same number of
//! distinct The Things Stack v3 uplinks (same size) with one `mosquitto_pub -l -q 1` process
//! (one message per stdin line) and times from the publisher's start until the receiver has
//! them all:
//! - **mosquitto_sub**: a plain `mosquitto_sub -q 1 -C N` (MQTT 5) writing to /dev/null;
//! - **node, durable**: the node's MQTT subscriber (rumqttc, QoS 1, manual acks) writing into the
//!   node's store (`mqtt_uplinks`), each group of messages flushed to disk before it is
//!   acknowledged (`Store::commit_durable`);
//! - **node, memory**: the same subscriber into a volatile buffer (no store, no flush): the
//!   client's own ceiling.
//!
//! `ALLMENDE_MQTT_MESSAGES` sets the count (default 20000); `ALLMENDE_MQTT_ROUNDS` the rounds
//! (default 3). Loopback only; stops by itself. Not part of CI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "bench"
)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use allmende::clock::SystemClock;
use allmende::store::{Store, StoreOptions};
use allmende::uplinks::Uplinks;
use allmende_connectors::mqtt::{
    IngestCounters, LocalMosquitto, MemoryBuffer, MqttConfig, UplinkBuffer, find_mosquitto,
    spawn_ingest,
};
use allmende_connectors::{FieldSpec, FieldType, SourceRoots};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` distinct uplinks, one JSON document per line, tagged `round` so rounds never repeat.
fn uplink_lines(n: usize, round: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    let mut size = 0;
    for i in 0..n {
        let line = serde_json::json!({
            "end_device_ids": {
                "device_id": format!("air-{:03}", i % 200),
                "application_ids": {"application_id": "air"},
                "dev_eui": format!("70B3D57ED005{:04X}", i % 200),
                "dev_addr": "260B1234"
            },
            "correlation_ids": [format!("as:up:{round:02}{i:010}")],
            "received_at": format!("2025-05-{:02}T{:02}:{:02}:{:02}.{:09}Z", 1 + round, (i / 3600) % 24, (i / 60) % 60, i % 60, i),
            "uplink_message": {
                "f_port": 1,
                "f_cnt": i,
                "frm_payload": "AQIDBAUGBwg=",
                "decoded_payload": {"temperature": 20.0 + (i % 100) as f64 / 10.0, "humidity": 40.5, "no2": 21.25},
                "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-1"}, "rssi": -80, "snr": 7.5}],
                "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}}, "frequency": "868100000"}
            }
        })
        .to_string();
        size = size.max(line.len());
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    (out, size)
}

/// Runs `mosquitto_pub -l` on `lines` to `topic` and returns when it has published them all.
fn publish(port: u16, topic: &str, lines: &[u8]) {
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-V",
            "5",
            "-q",
            "1",
        ])
        .args(["-t", topic, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_pub (Debian package mosquitto-clients)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines)
        .expect("write to mosquitto_pub");
    let status = child.wait().expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub: {status}");
}

fn schema() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("seq", FieldType::Int64),
        FieldSpec::required("device_id", FieldType::String),
        FieldSpec::new("dev_eui", FieldType::String),
        FieldSpec::required("received_at", FieldType::Timestamp),
        FieldSpec::required("f_cnt", FieldType::Int64),
        FieldSpec::new("temperature", FieldType::Float64),
        FieldSpec::new("humidity", FieldType::Float64),
        FieldSpec::new("no2", FieldType::Float64),
    ]
}

/// Publishes `lines` to the node's subscriber writing into `buffer`; returns the seconds until
/// the buffer holds `n` more uplinks.
async fn node_round(
    broker: &LocalMosquitto,
    buffer: Arc<dyn UplinkBuffer>,
    client_id: &str,
    lines: &[u8],
    n: usize,
) -> f64 {
    let mut config = MqttConfig::new(&broker.url(), "v3/air@munich/devices/+/up", client_id);
    config.schema = Some(schema());
    // The session ends with the round: no workload queues messages for another's absent client.
    config.session_expiry_secs = 0;
    let counters = Arc::new(IngestCounters::default());
    let handle = spawn_ingest(
        &config,
        &SourceRoots::anywhere(),
        buffer.clone(),
        counters.clone(),
        "bench",
    )
    .expect("subscriber");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handle.status().connected() {
        assert!(Instant::now() < deadline, "no connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the subscription
    let before = buffer.buffered().expect("len");
    let start = Instant::now();
    let port = broker.port();
    let lines = lines.to_vec();
    let publisher = tokio::task::spawn_blocking(move || {
        publish(port, "v3/air@munich/devices/air-001/up", &lines)
    });
    let deadline = Instant::now() + Duration::from_secs(600);
    while buffer.buffered().expect("len") < before + n as u64 {
        assert!(
            Instant::now() < deadline,
            "the node did not get every uplink"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    publisher.await.expect("publisher");
    assert_eq!(counters.get("duplicate"), 0);
    drop(handle);
    secs
}

/// Publishes `lines` to a plain `mosquitto_sub -C n`; returns the seconds until it exits.
fn sub_round(broker: &LocalMosquitto, lines: &[u8], n: usize) -> f64 {
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-V",
            "5",
            "-q",
            "1",
        ])
        .args(["-t", "bench/plain", "-C", &n.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients)");
    std::thread::sleep(Duration::from_millis(300)); // the subscription
    let start = Instant::now();
    publish(broker.port(), "bench/plain", lines);
    let status = sub.wait().expect("mosquitto_sub");
    assert!(status.success(), "mosquitto_sub: {status}");
    start.elapsed().as_secs_f64()
}

fn main() {
    if find_mosquitto().is_none() {
        eprintln!(
            "SKIPPED: mosquitto is not installed (Debian packages mosquitto, mosquitto-clients)"
        );
        return;
    }
    let n = env_usize("ALLMENDE_MQTT_MESSAGES", 20_000);
    let rounds = env_usize("ALLMENDE_MQTT_ROUNDS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = LocalMosquitto::start(&dir.path().join("mosquitto")).expect("mosquitto");
    let store = Store::open(&dir.path().join("store"), &StoreOptions::default()).expect("store");
    let uplinks = Uplinks::open(store, Arc::new(SystemClock)).expect("uplinks");
    println!("mqtt ingest: {n} uplinks per workload, {rounds} rounds, one local mosquitto");
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("mosquitto_pub -> mosquitto_sub", Vec::new()),
        ("node, durable (store, flush before ack)", Vec::new()),
        ("node, memory buffer (no flush)", Vec::new()),
    ];
    let mut size = 0;
    for round in 0..rounds {
        let (lines, s) = uplink_lines(n, round);
        size = s;
        results[0].1.push(sub_round(&broker, &lines, n));
        let durable: Arc<dyn UplinkBuffer> = Arc::new(uplinks.dataset("bench"));
        results[1].1.push(rt.block_on(node_round(
            &broker,
            durable,
            &format!("bench-durable-{round}"),
            &lines,
            n,
        )));
        let memory: Arc<dyn UplinkBuffer> = Arc::new(MemoryBuffer::new());
        results[2].1.push(rt.block_on(node_round(
            &broker,
            memory,
            &format!("bench-memory-{round}"),
            &lines,
            n,
        )));
        println!(
            "round {}: sub {:.0}/s, durable {:.0}/s, memory {:.0}/s",
            round + 1,
            n as f64 / results[0].1[round],
            n as f64 / results[1].1[round],
            n as f64 / results[2].1[round]
        );
    }
    println!("largest uplink: {size} bytes");
    let base = {
        let mut v: Vec<f64> = results[0].1.iter().map(|s| n as f64 / s).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("| workload | uplinks/s (median) | min | max | of mosquitto_sub |");
    println!("|---|---|---|---|---|");
    for (name, secs) in &results {
        let mut rates: Vec<f64> = secs.iter().map(|s| n as f64 / s).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!(
            "| {name} | {median:.0} | {:.0} | {:.0} | {:.2} |",
            rates[0],
            rates[rates.len() - 1],
            median / base
        );
    }
}
