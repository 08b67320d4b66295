//! The MQTT connector: the uplink mapping and its hostile inputs, the buffer connector through
//! the conformance suite, and the subscriber against a real mosquitto (the Debian package,
//! started on loopback with persistence for each test): ingest, deduplication, broker restarts
//! mid-stream with messages published while the node was away, an oversized message, and host
//! confinement, and a subscription over `mqtts://` to mosquitto's TLS listener (certificates made
//! by the test; a wrong CA refused). The live tests are skipped, saying so, when mosquitto is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allmende_connectors::conformance::{Expectations, run_all};
use allmende_connectors::mqtt::{
    IngestCounters, LocalMosquitto, MemoryBuffer, MqttBufferConnector, MqttConfig, Skip,
    UplinkBuffer, UplinkMapping, find_mosquitto, spawn_ingest,
};
use allmende_connectors::{
    Connector, ConnectorError, FieldSpec, FieldType, ReadRequest, Refusal, SourceRoots,
};
use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};

const TOPIC: &str = "v3/air@munich/devices/+/up";

fn schema() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("seq", FieldType::Int64),
        FieldSpec::required("device_id", FieldType::String),
        FieldSpec::new("dev_eui", FieldType::String),
        FieldSpec::required("received_at", FieldType::Timestamp),
        FieldSpec::required("f_cnt", FieldType::Int64),
        FieldSpec::new("temperature", FieldType::Float64),
        FieldSpec::new("humidity", FieldType::Float64),
    ]
}

fn config(broker: &str, client_id: &str) -> MqttConfig {
    let mut c = MqttConfig::new(broker, TOPIC, client_id);
    c.schema = Some(schema());
    c.identifier_columns = vec!["device_id".into(), "dev_eui".into()];
    c
}

/// A The Things Stack v3 uplink message.
fn uplink(device: u32, f_cnt: u64, second: u32, temperature: f64) -> String {
    serde_json::json!({
        "end_device_ids": {
            "device_id": format!("air-{device:03}"),
            "application_ids": {"application_id": "air"},
            "dev_eui": format!("70B3D57ED005{device:04X}"),
            "dev_addr": "260B1234"
        },
        "correlation_ids": ["as:up:01H"],
        "received_at": format!("2025-05-01T10:{:02}:{:02}.123456789Z", second / 60, second % 60),
        "uplink_message": {
            "f_port": 1,
            "f_cnt": f_cnt,
            "frm_payload": "AQI=",
            "decoded_payload": {"temperature": temperature, "humidity": 40.5},
            "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-1"}, "rssi": -80}],
            "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}}}
        }
    })
    .to_string()
}

fn topic(device: u32) -> String {
    format!("v3/air@munich/devices/air-{device:03}/up")
}

fn mapping() -> UplinkMapping {
    UplinkMapping::new(&schema(), "seq", &BTreeMap::new()).unwrap()
}

#[test]
fn uplinks_map_onto_the_declared_columns() {
    let u = mapping().parse(uplink(7, 42, 5, 21.5).as_bytes()).unwrap();
    assert_eq!(u.values["device_id"], "air-007");
    assert_eq!(u.values["dev_eui"], "70B3D57ED0050007");
    assert_eq!(u.values["f_cnt"], 42);
    assert_eq!(u.values["temperature"], 21.5);
    // 2025-05-01T10:00:05.123456Z in microseconds (nanoseconds cut).
    assert_eq!(u.values["received_at"], 1_746_093_605_123_456i64);
    assert!(!u.values.contains_key("seq"));

    // The Things Stack leaves out a zero frame counter.
    let mut doc: serde_json::Value = serde_json::from_str(&uplink(7, 0, 5, 1.0)).unwrap();
    doc["uplink_message"]
        .as_object_mut()
        .unwrap()
        .remove("f_cnt");
    let u0 = mapping().parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(u0.values["f_cnt"], 0);

    // The same uplink re-serialised (other metadata order) is the same uplink; another frame
    // counter or receive time is another one.
    let again = mapping().parse(uplink(7, 42, 5, 21.5).as_bytes()).unwrap();
    assert_eq!(again.dedupe, u.dedupe);
    let mut reordered: serde_json::Value = serde_json::from_str(&uplink(7, 42, 5, 21.5)).unwrap();
    reordered["uplink_message"]["rx_metadata"] = serde_json::json!([]);
    assert_eq!(
        mapping()
            .parse(reordered.to_string().as_bytes())
            .unwrap()
            .dedupe,
        u.dedupe
    );
    assert_ne!(
        mapping()
            .parse(uplink(7, 43, 5, 21.5).as_bytes())
            .unwrap()
            .dedupe,
        u.dedupe
    );
    assert_ne!(
        mapping()
            .parse(uplink(7, 42, 6, 21.5).as_bytes())
            .unwrap()
            .dedupe,
        u.dedupe
    );

    // Explicit paths.
    let paths = BTreeMap::from([(
        "temperature".to_string(),
        "uplink_message.rx_metadata".to_string(),
    )]);
    let m = UplinkMapping::new(&schema(), "seq", &paths).unwrap();
    assert!(matches!(
        m.parse(uplink(1, 1, 1, 1.0).as_bytes()),
        Err(Skip::WrongType(c)) if c == "temperature"
    ));
    let bad = BTreeMap::from([("nope".to_string(), "a.b".to_string())]);
    assert!(UplinkMapping::new(&schema(), "seq", &bad).is_err());
}

#[test]
fn hostile_uplinks_are_skipped_with_a_reason() {
    let m = mapping();
    let good: serde_json::Value = serde_json::from_str(&uplink(1, 1, 1, 20.0)).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut d = good.clone();
        f(&mut d);
        d.to_string().into_bytes()
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed-json"),
        (vec![0xff, 0xfe, 0x00], "malformed-json"),
        (Vec::new(), "malformed-json"),
        (deep.into_bytes(), "malformed-json"),
        (b"[1,2,3]".to_vec(), "not-an-object"),
        (b"\"air-001\"".to_vec(), "not-an-object"),
        (
            with(&|d| {
                d["end_device_ids"]
                    .as_object_mut()
                    .unwrap()
                    .remove("device_id");
            }),
            "missing-device-id",
        ),
        (
            with(&|d| d["end_device_ids"]["device_id"] = 17.into()),
            "missing-device-id",
        ),
        (
            with(&|d| d["end_device_ids"]["device_id"] = "".into()),
            "missing-device-id",
        ),
        (
            with(&|d| d["end_device_ids"] = "x".into()),
            "missing-device-id",
        ),
        (
            with(&|d| d["uplink_message"]["decoded_payload"]["temperature"] = "hot".into()),
            "wrong-type",
        ),
        (
            with(&|d| d["uplink_message"]["f_cnt"] = 1.5.into()),
            "wrong-type",
        ),
        (
            with(&|d| d["received_at"] = "yesterday".into()),
            "bad-timestamp",
        ),
        (with(&|d| d["received_at"] = 5.into()), "wrong-type"),
        (
            with(&|d| {
                d.as_object_mut().unwrap().remove("received_at");
            }),
            "missing-value",
        ),
    ];
    for (payload, code) in cases {
        match m.parse(&payload) {
            Err(skip) => assert_eq!(
                skip.code(),
                code,
                "{}",
                String::from_utf8_lossy(&payload)
                    .chars()
                    .take(80)
                    .collect::<String>()
            ),
            Ok(u) => panic!("accepted {u:?}, expected {code}"),
        }
    }
    // A nullable column may be missing or null.
    let no_humidity =
        with(&|d| d["uplink_message"]["decoded_payload"]["humidity"] = serde_json::Value::Null);
    assert!(m.parse(&no_humidity).unwrap().values["humidity"].is_null());
}

async fn filled(n: u32) -> Arc<MemoryBuffer> {
    let buffer = Arc::new(MemoryBuffer::new());
    let m = mapping();
    let rows: Vec<_> = (0..n)
        .map(|i| {
            m.parse(uplink(i % 7, u64::from(i), i, f64::from(i) / 4.0).as_bytes())
                .unwrap()
        })
        .collect();
    let a = buffer.append(&rows).await.unwrap();
    assert_eq!((a.stored, a.duplicates), (u64::from(n), 0));
    buffer
}

#[tokio::test]
async fn the_buffer_passes_the_conformance_suite() {
    let buffer = filled(53).await;
    let c = MqttBufferConnector::open(
        &config("mqtt://127.0.0.1:1883", "conformance"),
        &SourceRoots::anywhere(),
        buffer,
        "air-quality",
    )
    .unwrap();
    let report = run_all(
        &c,
        &Expectations {
            rows: Some(53),
            broken: Some(0),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 53);
    assert_eq!(c.describe().cursor_column.as_deref(), Some("seq"));
    // Reads resume after the sequence number in the cursor.
    let all = c
        .read(ReadRequest::new())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let seqs: Vec<i64> = all
        .concat()
        .unwrap()
        .column(0)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    assert_eq!(seqs, (1..=53).collect::<Vec<_>>());
}

#[tokio::test]
async fn configurations_are_checked_before_anything_connects() {
    let dir = tempfile::tempdir().unwrap();
    let roots = SourceRoots::new([dir.path()]).allow_mqtt_hosts(["mqtt.city.example"]);
    let buffer: Arc<dyn UplinkBuffer> = Arc::new(MemoryBuffer::new());
    let open = |c: &MqttConfig| MqttBufferConnector::open(c, &roots, buffer.clone(), "d");

    // A host the operator did not allow is refused, naming the reason.
    let e = open(&config("mqtt://127.0.0.1:1883", "a")).unwrap_err();
    assert!(
        matches!(
            e,
            ConnectorError::Confined {
                reason: Refusal::MqttHostNotAllowed,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(Refusal::MqttHostNotAllowed.code(), "mqtt-host-not-allowed");
    assert!(open(&config("mqtt://MQTT.city.example", "a")).is_ok());
    // Nor may a postgres allowance open the door for mqtt, nor an mqtt source start without
    // the node naming any host.
    let pg_only = SourceRoots::new([dir.path()]).allow_postgres_hosts(["127.0.0.1"]);
    assert!(
        MqttBufferConnector::open(
            &config("mqtt://127.0.0.1", "a"),
            &pg_only,
            buffer.clone(),
            "d"
        )
        .is_err()
    );

    for bad in [
        "http://mqtt.city.example",
        "mqtt://",
        "mqtt://mqtt.city.example:0",
        "mqtt://u:p@mqtt.city.example",
        "mqtt://mqtt.city.example/x",
    ] {
        assert!(open(&config(bad, "a")).is_err(), "{bad}");
    }
    // TLS needs a CA file, read through the roots.
    assert!(open(&config("mqtts://mqtt.city.example", "a")).is_err());
    let mut tls = config("mqtts://mqtt.city.example", "a");
    tls.ca_file = Some("/etc/ssl/certs/ca-certificates.crt".into());
    let e = open(&tls).unwrap_err();
    assert!(
        matches!(
            e,
            ConnectorError::Confined {
                reason: Refusal::OutsideRoots,
                ..
            }
        ),
        "{e}"
    );
    // Credentials: two lines, read through the roots.
    let creds = dir.path().join("mqtt.secret");
    std::fs::write(&creds, "only-a-user\n").unwrap();
    let mut c = config("mqtt://mqtt.city.example", "a");
    c.credentials_file = Some(creds.clone());
    let e = open(&c).unwrap_err();
    assert!(!e.to_string().contains("only-a-user"), "{e}");
    std::fs::write(&creds, "sensor-node\nhunter2\n").unwrap();
    assert!(open(&c).is_ok());
    // The sequence column is int64 and identifies no one; oversize limits are bounded.
    let mut c = config("mqtt://mqtt.city.example", "a");
    c.cursor_column = Some("device_id".into());
    assert!(open(&c).is_err());
    let mut c = config("mqtt://mqtt.city.example", "a");
    c.max_payload_bytes = 64 << 20;
    assert!(open(&c).is_err());
    // Unknown fields are refused (the registry tells kinds apart by their fields).
    let json = r#"{"broker":"mqtt://h","topic":"t","client_id":"c","path":"/x"}"#;
    assert!(serde_json::from_str::<MqttConfig>(json).is_err());
}

// ---- against a real mosquitto ----

/// A broker in a fresh directory, or `None` (the test is skipped, saying so).
fn broker() -> Option<(LocalMosquitto, tempfile::TempDir)> {
    if find_mosquitto().is_none() {
        eprintln!(
            "SKIPPED: mosquitto is not installed (Debian package `mosquitto`; scripts/test.sh installs it)"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let b = LocalMosquitto::start(&dir.path().join("mosquitto")).unwrap();
    Some((b, dir))
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn publish(b: &LocalMosquitto, device: u32, f_cnt: u64, second: u32) {
    b.publish(
        &topic(device),
        uplink(device, f_cnt, second, 20.0).as_bytes(),
        1,
    )
    .unwrap();
}

/// The frame counters in the buffer, in sequence order.
fn frames(buffer: &MemoryBuffer) -> Vec<i64> {
    buffer
        .scan(0, 100_000)
        .unwrap()
        .iter()
        .map(|r| r.values["f_cnt"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_are_buffered_once_and_served() {
    let Some((b, _dir)) = broker() else { return };
    let buffer = Arc::new(MemoryBuffer::new());
    let counters = Arc::new(IngestCounters::default());
    let cfg = config(&b.url(), "node-a");
    let roots = SourceRoots::anywhere();
    let handle = spawn_ingest(&cfg, &roots, buffer.clone(), counters.clone(), "air").unwrap();
    wait_for("connect", 10, || handle.status().connected()).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the subscription
    for i in 1..=10 {
        publish(&b, 1, i, i as u32);
    }
    // The same uplinks again (a QoS 1 redelivery or a republish): stored once.
    for i in 1..=5 {
        publish(&b, 1, i, i as u32);
    }
    // Hostile ones: counted, skipped, the stream goes on.
    b.publish(&topic(9), b"{\"end_device_ids\":", 1).unwrap();
    b.publish(&topic(9), b"{\"uplink_message\":{}}", 1).unwrap();
    publish(&b, 2, 11, 11);
    wait_for("all messages handled", 20, || {
        counters.get("stored")
            + counters.get("duplicate")
            + counters.get("malformed-json")
            + counters.get("missing-device-id")
            >= 18
    })
    .await;
    assert_eq!(counters.get("stored"), 11);
    assert_eq!(counters.get("duplicate"), 5);
    assert_eq!(counters.get("malformed-json"), 1);
    assert_eq!(counters.get("missing-device-id"), 1);
    assert_eq!(frames(&buffer), (1..=11).collect::<Vec<_>>());
    wait_for("acknowledgements", 10, || {
        handle.status().acknowledged() >= 18
    })
    .await;

    let c = MqttBufferConnector::open(&cfg, &roots, buffer.clone(), "air").unwrap();
    let read = c
        .read(ReadRequest::new())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap();
    let batch = read.concat().unwrap();
    assert_eq!(batch.num_rows(), 11);
    let temps = batch.column(5).as_primitive::<Float64Type>();
    assert!(temps.values().iter().all(|t| (*t - 20.0).abs() < 1e-9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarts_lose_and_double_nothing() {
    let Some((mut b, _dir)) = broker() else {
        return;
    };
    let buffer = Arc::new(MemoryBuffer::new());
    let counters = Arc::new(IngestCounters::default());
    let cfg = config(&b.url(), "node-restart");
    let roots = SourceRoots::anywhere();
    let handle = spawn_ingest(&cfg, &roots, buffer.clone(), counters.clone(), "air").unwrap();
    wait_for("connect", 10, || handle.status().connected()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=10 {
        publish(&b, 3, i, i as u32);
    }
    wait_for("the first 10", 20, || buffer.buffered().unwrap() == 10).await;

    // The broker restarts mid-stream; the node reconnects on its own, and what is published
    // before it is back is queued in its persistent session.
    b.restart().unwrap();
    for i in 11..=20 {
        publish(&b, 3, i, i as u32);
    }
    wait_for("the next 10 after the restart", 30, || {
        buffer.buffered().unwrap() == 20
    })
    .await;
    assert!(
        handle.status().connects() >= 2,
        "the client did not reconnect"
    );

    // Killed outright (SIGKILL) and started again on the same port with the same database: the
    // node reconnects and subscribes again, whatever of its session the broker had saved.
    let connects = handle.status().connects();
    b.kill();
    b.restart().unwrap();
    wait_for("a reconnect after the kill", 30, || {
        handle.status().connects() > connects
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 21..=25 {
        publish(&b, 3, i, i as u32);
    }
    wait_for("the 5 after the kill", 30, || {
        buffer.buffered().unwrap() == 25
    })
    .await;

    // The node goes away; messages published meanwhile, and a broker restart on top.
    drop(handle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 26..=35 {
        publish(&b, 3, i, i as u32);
    }
    b.restart().unwrap();
    for i in 36..=40 {
        publish(&b, 3, i, i as u32);
    }
    let handle = spawn_ingest(&cfg, &roots, buffer.clone(), counters.clone(), "air").unwrap();
    wait_for("the 15 published while the node was away", 30, || {
        buffer.buffered().unwrap() >= 40
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        frames(&buffer),
        (1..=40).collect::<Vec<_>>(),
        "lost or doubled"
    );
    drop(handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_and_later_ones_arrive() {
    let Some((b, _dir)) = broker() else { return };
    let buffer = Arc::new(MemoryBuffer::new());
    let counters = Arc::new(IngestCounters::default());
    let cfg = config(&b.url(), "node-big");
    assert_eq!(cfg.max_payload_bytes, 256 << 10);
    let roots = SourceRoots::anywhere();
    let handle = spawn_ingest(&cfg, &roots, buffer.clone(), counters.clone(), "air").unwrap();
    wait_for("connect", 10, || handle.status().connected()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&b, 4, 1, 1);
    // 10 MB: a valid uplink padded with a huge string.
    let mut doc: serde_json::Value = serde_json::from_str(&uplink(4, 2, 2, 1.0)).unwrap();
    doc["padding"] = "x".repeat(10 << 20).into();
    b.publish(&topic(4), doc.to_string().as_bytes(), 1).unwrap();
    for i in 3..=5 {
        publish(&b, 4, i, i as u32);
    }
    wait_for("the messages after the big one", 20, || {
        buffer.buffered().unwrap() == 4
    })
    .await;
    assert_eq!(frames(&buffer), vec![1, 3, 4, 5]);
    assert!(handle.status().connected());
    // The broker dropped it (MQTT 5 maximum packet size): the connection never broke.
    assert_eq!(handle.status().connects(), 1);
}

/// A buffer whose durable writes fail while `failing` is set.
#[derive(Debug, Default)]
struct FlakyBuffer {
    inner: MemoryBuffer,
    failing: std::sync::atomic::AtomicBool,
    attempts: std::sync::atomic::AtomicU64,
}

impl UplinkBuffer for FlakyBuffer {
    fn append<'a>(
        &'a self,
        uplinks: &'a [allmende_connectors::mqtt::NewUplink],
    ) -> futures::future::BoxFuture<'a, Result<allmende_connectors::mqtt::Appended, ConnectorError>>
    {
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async { Err(ConnectorError::Internal("disk full".into())) });
        }
        self.inner.append(uplinks)
    }
    fn scan(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<allmende_connectors::mqtt::StoredUplink>, ConnectorError> {
        self.inner.scan(after, limit)
    }
    fn sweep(
        &self,
        retention: Duration,
    ) -> futures::future::BoxFuture<'_, Result<u64, ConnectorError>> {
        self.inner.sweep(retention)
    }
    fn buffered(&self) -> Result<u64, ConnectorError> {
        self.inner.buffered()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_acknowledged_before_it_is_stored() {
    let Some((b, _dir)) = broker() else { return };
    let flaky = Arc::new(FlakyBuffer::default());
    flaky
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let cfg = config(&b.url(), "node-flaky");
    let roots = SourceRoots::anywhere();
    let counters = Arc::new(IngestCounters::default());
    let handle = spawn_ingest(&cfg, &roots, flaky.clone(), counters.clone(), "air").unwrap();
    wait_for("connect", 10, || handle.status().connected()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=5 {
        publish(&b, 5, i, i as u32);
    }
    wait_for("a failed write", 10, || {
        flaky.attempts.load(std::sync::atomic::Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        handle.status().acknowledged(),
        0,
        "acknowledged what was not stored"
    );
    assert_eq!(flaky.buffered().unwrap(), 0);
    // The node dies with the messages unstored; the next start gets every one of them.
    drop(handle);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let buffer = Arc::new(MemoryBuffer::new());
    let handle = spawn_ingest(&cfg, &roots, buffer.clone(), counters, "air").unwrap();
    wait_for("the unacknowledged messages again", 20, || {
        buffer.buffered().unwrap() == 5
    })
    .await;
    assert_eq!(frames(&buffer), vec![1, 2, 3, 4, 5]);
    wait_for("acknowledgements", 10, || {
        handle.status().acknowledged() == 5
    })
    .await;
}

/// A CA and a server certificate for 127.0.0.1 and `localhost` signed by it (PEM: CA, server
/// certificate, server key).
fn ca_and_server_cert() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uplinks_arrive_over_mqtts_and_a_wrong_ca_is_refused() {
    if find_mosquitto().is_none() {
        eprintln!(
            "SKIPPED: mosquitto is not installed (Debian package `mosquitto`; scripts/test.sh installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert();
    let b = LocalMosquitto::start_tls(&dir.path().join("mosquitto"), &cert, &key).unwrap();
    let url = b.tls_url().unwrap();
    assert!(url.starts_with("mqtts://127.0.0.1:"), "{url}");
    // The CA file is read through the source roots.
    let sources = dir.path().join("sources");
    std::fs::create_dir_all(&sources).unwrap();
    let ca_file = sources.join("broker-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let roots = SourceRoots::new([sources.clone()]).allow_mqtt_hosts(["127.0.0.1", "localhost"]);

    let buffer = Arc::new(MemoryBuffer::new());
    let counters = Arc::new(IngestCounters::default());
    let mut cfg = config(&url, "node-tls");
    cfg.ca_file = Some(ca_file.clone());
    let handle = spawn_ingest(&cfg, &roots, buffer.clone(), counters.clone(), "air").unwrap();
    wait_for("a TLS connect", 15, || handle.status().connected()).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // the subscription
    // Published on the plain listener of the same broker, received over TLS.
    for i in 1..=6 {
        publish(&b, 3, i, i as u32);
    }
    wait_for("6 uplinks stored", 20, || counters.get("stored") >= 6).await;
    assert_eq!(frames(&buffer), (1..=6).collect::<Vec<_>>());
    wait_for("acknowledgements", 10, || {
        handle.status().acknowledged() >= 6
    })
    .await;
    drop(handle);

    // By name too (the certificate names `localhost`).
    let mut by_name = cfg.clone();
    by_name.broker = url.replace("127.0.0.1", "localhost");
    by_name.client_id = "node-tls-name".into();
    let named = spawn_ingest(
        &by_name,
        &roots,
        Arc::new(MemoryBuffer::new()),
        counters.clone(),
        "air",
    )
    .unwrap();
    wait_for("a TLS connect by name", 15, || named.status().connected()).await;
    drop(named);

    // Another CA: the handshake is refused, the subscriber never connects and says why.
    let (other_ca, _, _) = ca_and_server_cert();
    let wrong = sources.join("other-ca.pem");
    std::fs::write(&wrong, &other_ca).unwrap();
    let mut bad = cfg.clone();
    bad.ca_file = Some(wrong);
    bad.client_id = "node-wrong-ca".into();
    let refused = spawn_ingest(
        &bad,
        &roots,
        Arc::new(MemoryBuffer::new()),
        counters.clone(),
        "air",
    )
    .unwrap();
    wait_for("the refusal", 15, || {
        refused.status().last_error().is_some()
    })
    .await;
    let why = refused.status().last_error().unwrap();
    assert!(!refused.status().connected());
    assert_eq!(refused.status().connects(), 0);
    assert!(
        why.contains("UnknownIssuer") || why.contains("certificate"),
        "{why}"
    );
    drop(refused);
    // A CA file outside the roots is refused before anything connects.
    let outside = dir.path().join("ca-outside.pem");
    std::fs::write(&outside, &ca).unwrap();
    let mut confined = cfg.clone();
    confined.ca_file = Some(outside);
    let e = spawn_ingest(
        &confined,
        &roots,
        Arc::new(MemoryBuffer::new()),
        counters,
        "air",
    )
    .unwrap_err();
    assert!(matches!(e, ConnectorError::Confined { .. }), "{e}");
}
