//! The SensorThings connector against the SensorThings-shaped test server on loopback:
//! paging through `@iot.nextLink`, the merged order of several datastreams, `$filter` from the
//! pushed-down comparisons and the resume cursor, exact resumption (also at ties across
//! datastreams), the conformance suite, the host allow-list, HTTPS with the CA file, and every
//! hostile server (error in the middle, a page linking to itself, links forever, oversized and
//! endless pages, a link to another host, malformed JSON, observations out of order, results of
//! the wrong type).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use allmende_connectors::conformance::{Expectations, run_all};
use allmende_connectors::sensorthings::{
    EntityId, Fault, SensorThingsServer, ServerDatastream, ServerObservation,
};
use allmende_connectors::{
    CollectedRead, Connector, ConnectorError, Cursor, CursorValue, FieldSpec, FieldType, Predicate,
    PredicateOp, PredicateValue, ReadRequest, Refusal, SensorThingsConfig, SensorThingsConnector,
    SourceRoots,
};
use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use futures::StreamExt;
use serde_json::{Value, json};

/// 2025-03-03T00:00:00Z in microseconds.
const T0: i64 = 1_740_960_000_000_000;

fn at(minutes: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(T0 / 1_000_000 + minutes * 60).unwrap();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Datastream `id` with `n` observations every `step` minutes from minute `from`; ids
/// `id * 1000 + k`.
fn datastream(id: i64, name: &str, n: i64, from: i64, step: i64) -> ServerDatastream {
    ServerDatastream {
        id,
        name: name.into(),
        unit: "µg/m³".into(),
        thing: json!({ "@iot.id": id, "name": format!("Station {id}"), "properties": { "district": "Maxvorstadt" } }),
        sensor: json!({ "@iot.id": 100 + id, "name": format!("{name} sensor") }),
        observations: (0..n)
            .map(|k| ServerObservation {
                id: id * 1000 + k,
                phenomenon_time: at(from + k * step),
                result_time: Some(at(from + k * step + 1)),
                result: json!(10.0 + k as f64 / 4.0),
            })
            .collect(),
    }
}

/// Two datastreams on the same 5-minute grid (ties on every common time) and a third offset.
fn streams() -> Vec<ServerDatastream> {
    vec![
        datastream(1, "NO2", 40, 0, 5),
        datastream(2, "PM10", 30, 0, 5),
        datastream(3, "O3", 7, 2, 30),
    ]
}

const TOTAL: u64 = 40 + 30 + 7;

fn schema() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("datastream_id", FieldType::Int64),
        FieldSpec::new("datastream", FieldType::String),
        FieldSpec::new("station", FieldType::String),
        FieldSpec::new("district", FieldType::String),
        FieldSpec::new("sensor", FieldType::String),
        FieldSpec::new("unit", FieldType::String),
        FieldSpec::required("observation_id", FieldType::Int64),
        FieldSpec::required("phenomenon_time", FieldType::Timestamp),
        FieldSpec::new("result_time", FieldType::Timestamp),
        FieldSpec::required("result", FieldType::Float64),
    ]
}

fn columns() -> BTreeMap<String, String> {
    [
        ("datastream_id", "datastream.@iot.id"),
        ("datastream", "datastream.name"),
        ("station", "thing.name"),
        ("district", "thing.properties.district"),
        ("sensor", "sensor.name"),
        ("unit", "datastream.unitOfMeasurement.symbol"),
        ("observation_id", "observation.@iot.id"),
        ("phenomenon_time", "observation.phenomenonTime"),
        ("result_time", "observation.resultTime"),
        ("result", "observation.result"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

fn config(server: &SensorThingsServer) -> SensorThingsConfig {
    let mut c = SensorThingsConfig::new(
        &server.service_url(),
        vec![EntityId::Int(1), EntityId::Int(2), EntityId::Int(3)],
        columns(),
        "phenomenon_time",
    );
    c.schema = Some(schema());
    c.page_size = 7;
    c.max_page_bytes = 1 << 20;
    c.timeout_secs = 10;
    c
}

fn start() -> SensorThingsServer {
    SensorThingsServer::start("/FROST-Server/v1.1", streams()).unwrap()
}

async fn open(config: SensorThingsConfig) -> SensorThingsConnector {
    SensorThingsConnector::open(config, SourceRoots::anywhere())
        .await
        .unwrap()
}

/// A read that must end within 20 s (a hostile server must not make it hang).
async fn read(c: &SensorThingsConnector, r: ReadRequest) -> Result<CollectedRead, ConnectorError> {
    tokio::time::timeout(Duration::from_secs(20), async {
        c.read(r).await?.collect_all().await
    })
    .await
    .expect("the read hung")
}

/// `(phenomenon_time, datastream_id, observation_id)` of every row.
fn keys(r: &CollectedRead) -> Vec<(i64, i64, i64)> {
    let b = r.concat().unwrap();
    let s = b.schema();
    let t = b
        .column(s.index_of("phenomenon_time").unwrap())
        .as_primitive::<TimestampMicrosecondType>();
    let d = b
        .column(s.index_of("datastream_id").unwrap())
        .as_primitive::<Int64Type>();
    let o = b
        .column(s.index_of("observation_id").unwrap())
        .as_primitive::<Int64Type>();
    (0..b.num_rows())
        .map(|i| (t.value(i), d.value(i), o.value(i)))
        .collect()
}

#[tokio::test]
async fn pages_are_followed_and_datastreams_merged_in_time_order() {
    let server = start();
    let c = open(config(&server)).await;
    let all = read(&c, ReadRequest::new()).await.unwrap();
    let s = all.summary.clone().unwrap();
    assert_eq!((s.rows_read, s.rows_broken, s.complete), (TOTAL, 0, true));
    // 40/7 + 30/7 + 7/7 pages, rounded up.
    assert_eq!(server.pages_served(), 6 + 5 + 1);
    let k = keys(&all);
    let mut sorted = k.clone();
    sorted.sort();
    assert_eq!(k, sorted, "merged by time, ties in configuration order");
    assert_eq!(k[0], (T0, 1, 1000));
    assert_eq!(k[1], (T0, 2, 2000));
    // Thing, Sensor and Datastream fields are mapped onto every row.
    let b = all.concat().unwrap();
    let station = b.column(2).as_string::<i32>();
    let district = b.column(3).as_string::<i32>();
    let sensor = b.column(4).as_string::<i32>();
    assert_eq!(station.value(0), "Station 1");
    assert_eq!(district.value(1), "Maxvorstadt");
    assert_eq!(sensor.value(1), "PM10 sensor");
    assert_eq!(b.column(5).as_string::<i32>().value(0), "µg/m³");
    let result = b.column(9).as_primitive::<Float64Type>();
    assert_eq!(result.value(0), 10.0);
    let rt = b.column(8).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(rt.value(0), T0 + 60_000_000);
}

#[tokio::test]
async fn the_connector_passes_the_conformance_suite() {
    let server = start();
    let c = open(config(&server)).await;
    let report = run_all(
        &c,
        &Expectations {
            rows: Some(TOTAL),
            broken: Some(0),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.rows, TOTAL);
}

#[tokio::test]
async fn reads_resume_exactly_also_inside_a_tie() {
    let server = start();
    let c = open(config(&server)).await;
    let all = keys(&read(&c, ReadRequest::new()).await.unwrap());
    // Stop after 1, 2, 3 … rows (ties of datastreams 1 and 2 at every 5 minutes) and resume.
    for cut in [1u64, 2, 3, 13, 50, 76] {
        let head = read(&c, ReadRequest::new().max_rows(cut).batch_size(4))
            .await
            .unwrap();
        let s = head.summary.clone().unwrap();
        assert!(!s.complete, "cut {cut}");
        let cursor = s.cursor.clone().unwrap();
        let tail = read(&c, ReadRequest::new().since(Some(cursor.clone())))
            .await
            .unwrap();
        let mut got = keys(&head);
        got.extend(keys(&tail));
        assert_eq!(got, all, "cut at {cut}, cursor {cursor}");
    }
    // The resumed read asks the service only from the cursor's time on.
    let before = server.pages_served();
    let cursor = Cursor::Column {
        column: "phenomenon_time".into(),
        value: CursorValue::Int(T0 + 190 * 60_000_000),
        count: 1,
    };
    let tail = read(&c, ReadRequest::new().since(Some(cursor)))
        .await
        .unwrap();
    assert_eq!(server.pages_served() - before, 3, "one page per datastream");
    assert_eq!(keys(&tail)[0], (T0 + 195 * 60_000_000, 1, 1039));
}

#[tokio::test]
async fn pushed_down_time_ranges_become_the_filter() {
    let server = start();
    let c = open(config(&server)).await;
    let from = T0 + 60 * 60_000_000;
    let to = T0 + 90 * 60_000_000;
    let r = ReadRequest::new().pushdown(vec![
        Predicate {
            column: "phenomenon_time".into(),
            op: PredicateOp::Ge,
            value: PredicateValue::TimestampMicros(from),
        },
        Predicate {
            column: "phenomenon_time".into(),
            op: PredicateOp::Lt,
            value: PredicateValue::TimestampMicros(to),
        },
        // Not on the cursor column: left to the caller.
        Predicate {
            column: "result".into(),
            op: PredicateOp::Gt,
            value: PredicateValue::Float(1e9),
        },
    ]);
    let got = read(&c, r).await.unwrap();
    let k = keys(&got);
    // 6 times × 2 datastreams + datastream 3 at minute 62.
    assert_eq!(k.len(), 13);
    assert!(k.iter().all(|(t, _, _)| *t >= from && *t < to), "{k:?}");
    assert_eq!(server.pages_served(), 3, "one page per datastream");
}

#[tokio::test]
async fn a_server_error_in_the_middle_fails_the_read_naming_the_page() {
    let server = start();
    let c = open(config(&server)).await;
    server.set_fault(Fault::ErrorOnPage(3));
    let mut stream = c.read(ReadRequest::new().batch_size(5)).await.unwrap();
    let mut rows = 0;
    let error = loop {
        match stream
            .next()
            .await
            .expect("the stream ended without an error")
        {
            Ok(allmende_connectors::ReadItem::Batch { batch, .. }) => rows += batch.num_rows(),
            Ok(allmende_connectors::ReadItem::End(s)) => panic!("completed: {s:?}"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    let msg = error.to_string();
    assert!(
        msg.contains("Datastreams(1)/Observations page 3") && msg.contains("500"),
        "{msg}"
    );
    // Rows of the pages before it may have been streamed, never all of them.
    assert!(rows < TOTAL as usize, "{rows}");
    assert!(stream.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn hostile_servers_are_stopped_with_a_clear_error() {
    let server = start();
    let mut cfg = config(&server);
    cfg.max_pages = 25;
    let c = open(cfg).await;
    let cases: [(Fault, &str); 7] = [
        (Fault::SelfLink, "page already read"),
        (Fault::LinkForever, "past 25 pages"),
        (Fault::LargePage(2 << 20), "larger than 1048576 bytes"),
        (Fault::EndlessPage, "larger than 1048576 bytes"),
        (Fault::ForeignLink, "leaves the configured service"),
        (Fault::MalformedJson, "the page is not JSON"),
        (Fault::OutOfOrder, "out of `phenomenonTime` order"),
    ];
    for (fault, expected) in cases {
        server.set_fault(fault);
        let before = server.pages_served();
        let e = read(&c, ReadRequest::new()).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(expected), "{fault:?}: {msg}");
        assert!(msg.contains("Datastreams("), "{fault:?}: {msg}");
        // Bounded: the read stopped, it did not fetch on.
        assert!(server.pages_served() - before <= 3 * 26, "{fault:?}");
    }
    server.set_fault(Fault::None);
    assert_eq!(
        read(&c, ReadRequest::new()).await.unwrap().num_rows() as u64,
        TOTAL
    );
}

#[tokio::test]
async fn observations_that_do_not_fit_are_counted_skips() {
    let mut data = streams();
    let obs = &mut data[1].observations;
    obs[3].result = json!("n/a");
    obs[4].result = Value::Null;
    obs[5].phenomenon_time = "not a time".into();
    let server = SensorThingsServer::start("/sta", data).unwrap();
    let c = open(config(&server)).await;
    let got = read(&c, ReadRequest::new()).await.unwrap();
    let s = got.summary.clone().unwrap();
    // The unreadable time is not served (the service cannot filter it either).
    assert_eq!((s.rows_read, s.rows_broken), (TOTAL - 3, 2));
    let reasons: Vec<String> = got.broken.iter().map(ToString::to_string).collect();
    assert!(
        reasons[0].contains("Datastreams(2)") && reasons[0].contains("2003"),
        "{reasons:?}"
    );
    assert!(reasons[0].contains("expected float64"), "{reasons:?}");
    assert!(
        reasons[1].contains("column `result` has no value"),
        "{reasons:?}"
    );
    let report = run_all(
        &c,
        &Expectations {
            rows: Some(TOTAL - 3),
            broken: Some(2),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.broken, 2);
}

#[tokio::test]
async fn the_host_must_be_allowed() {
    let server = start();
    let none = SourceRoots::new(Vec::<std::path::PathBuf>::new());
    let e = SensorThingsConnector::open(config(&server), none.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ConnectorError::Confined {
                reason: Refusal::HttpHostNotAllowed,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(Refusal::HttpHostNotAllowed.code(), "http-host-not-allowed");
    let other = none.clone().allow_http_hosts(["sta.swm.example"]);
    assert!(
        SensorThingsConnector::open(config(&server), other)
            .await
            .is_err()
    );
    let allowed = none.allow_http_hosts(["127.0.0.1"]);
    let c = SensorThingsConnector::open(config(&server), allowed)
        .await
        .unwrap();
    assert_eq!(
        read(&c, ReadRequest::new()).await.unwrap().num_rows() as u64,
        TOTAL
    );
}

#[tokio::test]
async fn configurations_are_checked() {
    let server = start();
    let base = config(&server);
    let refused = |mutate: &dyn Fn(&mut SensorThingsConfig), expected: &str| {
        let mut c = base.clone();
        mutate(&mut c);
        let e = SensorThingsConnector::configure(c, SourceRoots::anywhere()).unwrap_err();
        assert!(e.to_string().contains(expected), "{expected}: {e}");
    };
    refused(
        &|c| {
            c.columns.remove("unit");
        },
        "declared column `unit` is not mapped",
    );
    refused(
        &|c| {
            c.columns.insert("extra".into(), "thing.name".into());
        },
        "mapped column `extra` is not declared",
    );
    refused(
        &|c| {
            c.columns.insert("unit".into(), "elsewhere.x".into());
        },
        "must start with",
    );
    refused(
        &|c| c.cursor_column = Some("result_time".into()),
        "must be a timestamp mapped to",
    );
    refused(
        &|c| c.service = "https://127.0.0.1/x".into(),
        "needs `ca_file`",
    );
    refused(
        &|c| c.service = "http://127.0.0.1/x?$top=1".into(),
        "must not carry a query",
    );
    refused(
        &|c| c.service = "ftp://127.0.0.1/x".into(),
        "must start with",
    );
    refused(&|c| c.datastreams.clear(), "1 to 256 datastreams");
    refused(&|c| c.datastreams.push(EntityId::Int(1)), "named twice");
    refused(&|c| c.page_size = 0, "`page_size`");
    refused(&|c| c.max_page_bytes = 10, "`max_page_bytes`");
    // A datastream the service does not have: refused when opened.
    let mut c = base.clone();
    c.datastreams.push(EntityId::Int(9));
    let e = SensorThingsConnector::open(c, SourceRoots::anywhere())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("Datastreams(9)") && e.to_string().contains("404"),
        "{e}"
    );
    // The configuration JSON refuses unknown fields.
    let mut json = serde_json::to_value(&base).unwrap();
    json["surprise"] = json!(1);
    assert!(serde_json::from_value::<SensorThingsConfig>(json).is_err());
}

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

#[tokio::test]
async fn https_services_are_verified_against_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert();
    let server =
        SensorThingsServer::start_tls("/v1.1", streams(), cert.as_bytes(), key.as_bytes()).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let mut cfg = config(&server);
    cfg.ca_file = Some(ca_file);
    assert!(cfg.service.starts_with("https://"));
    let c = open(cfg.clone()).await;
    assert_eq!(
        read(&c, ReadRequest::new()).await.unwrap().num_rows() as u64,
        TOTAL
    );
    // By name too.
    let mut by_name = cfg.clone();
    by_name.service = server.service_url_localhost();
    open(by_name).await;
    // Another CA: refused at the handshake, saying so.
    let (other_ca, _, _) = ca_and_server_cert();
    let wrong = dir.path().join("other-ca.pem");
    std::fs::write(&wrong, &other_ca).unwrap();
    let mut bad = cfg.clone();
    bad.ca_file = Some(wrong);
    let e = SensorThingsConnector::open(bad, SourceRoots::anywhere())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("tls handshake failed"), "{e}");
    // The CA file is read through the source roots.
    let confined = SourceRoots::new([dir.path().join("elsewhere")]).allow_http_hosts(["127.0.0.1"]);
    let e = SensorThingsConnector::open(cfg, confined)
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Confined { .. }), "{e}");
}
