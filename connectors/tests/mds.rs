//! The MDS trips connector over a buffer of imported trips: the conformance suite, the served
//! columns, and its configuration checks.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::sync::Arc;

use allmende_connectors::conformance::{Expectations, run_all};
use allmende_connectors::mds::sample::{PROVIDER_ID, hourly_batches};
use allmende_connectors::mds::{MdsConfig, open_connector, trip_fields, trip_row};
use allmende_connectors::mqtt::{MemoryBuffer, NewUplink, UplinkBuffer};
use allmende_connectors::sample::SampleSpec;
use allmende_connectors::{Connector, ConnectorError, ReadRequest, Refusal, SourceRoots};
use sha2::Digest;

fn files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let token = dir.join("token");
    std::fs::write(&token, "t0k3n\n").unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["mds.scooter.example".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (token, ca_file)
}

fn config(dir: &std::path::Path) -> MdsConfig {
    let (token, ca) = files(dir);
    let mut c = MdsConfig::new(
        "https://mds.scooter.example:8443",
        "scooter-co",
        "scooter-trips",
        token,
        ca,
        "2025-03-03T00",
    );
    c.schema = Some(trip_fields());
    c.identifier_columns = vec!["device_id".into()];
    c
}

async fn imported() -> (Arc<dyn UplinkBuffer>, usize) {
    let spec = SampleSpec {
        days: 1,
        trips_per_day: 80,
        ..SampleSpec::default()
    };
    let mut rows = Vec::new();
    for batch in hourly_batches(&spec, PROVIDER_ID).values() {
        for t in batch["trips"].as_array().unwrap() {
            let id = t["trip_id"].as_str().unwrap();
            rows.push(NewUplink {
                dedupe: sha2::Sha256::digest(id.as_bytes()).into(),
                values: trip_row(t, "scooter"),
            });
        }
    }
    let buffer = Arc::new(MemoryBuffer::new());
    buffer.append(&rows).await.unwrap();
    (buffer, rows.len())
}

#[tokio::test]
async fn imported_trips_pass_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let roots = SourceRoots::new([dir.path()]).allow_mds_hosts(["mds.scooter.example"]);
    let (buffer, n) = imported().await;
    let c = open_connector(&config(dir.path()), &roots, buffer, "scooter-trips").unwrap();
    let report = run_all(
        &c,
        &Expectations {
            rows: Some(n as u64),
            broken: Some(0),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 80);
    assert_eq!(c.describe().kind, "mds");
    let all = c
        .read(ReadRequest::new())
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap()
        .concat()
        .unwrap();
    // The demo's scooter-trips columns, then the import sequence.
    let names: Vec<_> = all
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let expected: Vec<_> = trip_fields().into_iter().map(|f| f.name).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn configurations_are_checked_through_the_roots() {
    let dir = tempfile::tempdir().unwrap();
    let buffer: Arc<dyn UplinkBuffer> = Arc::new(MemoryBuffer::new());
    let c = config(dir.path());
    // A host the operator did not allow.
    let e = open_connector(&c, &SourceRoots::new([dir.path()]), buffer.clone(), "d").unwrap_err();
    assert!(
        matches!(
            e,
            ConnectorError::Confined {
                reason: Refusal::MdsHostNotAllowed,
                ..
            }
        ),
        "{e}"
    );
    // A token file outside the roots.
    let other = tempfile::tempdir().unwrap();
    let roots = SourceRoots::new([other.path()]).allow_mds_hosts(["mds.scooter.example"]);
    let e = open_connector(&c, &roots, buffer.clone(), "d").unwrap_err();
    assert!(matches!(e, ConnectorError::Confined { .. }), "{e}");
    // An empty token.
    let roots = SourceRoots::new([dir.path()]).allow_mds_hosts(["mds.scooter.example"]);
    std::fs::write(&c.token_file, "\n").unwrap();
    let e = open_connector(&c, &roots, buffer, "d").unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
}
