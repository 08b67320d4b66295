//! The demo data generator: deterministic, realistic mix, readable by the file connector.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use allmende_connectors::sample::{self, SampleSpec, write_demo_data};
use allmende_connectors::{Connector, FileConnectorConfig, FileFormat, ReadRequest};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use common::*;

fn files_under(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn the_same_seed_gives_identical_files_and_another_seed_different_ones() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let spec = small_spec();
    write_demo_data(a.path(), &spec).unwrap();
    write_demo_data(b.path(), &spec).unwrap();
    let other = SampleSpec {
        seed: spec.seed + 1,
        ..spec.clone()
    };
    write_demo_data(c.path(), &other).unwrap();
    let (fa, fb, fc) = (
        files_under(a.path()),
        files_under(b.path()),
        files_under(c.path()),
    );
    assert!(fa.len() >= 8, "{:?}", fa.keys());
    assert_eq!(fa, fb);
    let meter = PathBuf::from("smart-meter-readings/readings-2025-03-03.parquet");
    assert!(fa.contains_key(&meter));
    assert_ne!(fa[&meter], fc[&meter]);
    assert_ne!(
        fa[Path::new("consent-records.csv")],
        fc[Path::new("consent-records.csv")]
    );
}

#[tokio::test]
async fn smart_meter_readings_and_consent_records_fit_together() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SampleSpec {
        households: 200,
        days: 1,
        ..SampleSpec::default()
    };
    let files = write_demo_data(dir.path(), &spec).unwrap();
    let meter = files.dataset("smart-meter-readings").unwrap();
    assert_eq!(meter.rows, 200 * 96);
    let c = open(meter.config.clone());
    let d = c.describe();
    assert_eq!(d.subject_column.as_deref(), Some("household_id"));
    assert_eq!(d.identifier_columns, ["meter_id"]);
    let readings = read_all(&c, ReadRequest::new()).await.concat().unwrap();
    let hh = readings
        .column_by_name("household_id")
        .unwrap()
        .as_string::<i32>();
    let meters = readings
        .column_by_name("meter_id")
        .unwrap()
        .as_string::<i32>();
    let mut meter_of: HashMap<&str, &str> = HashMap::new();
    for i in 0..readings.num_rows() {
        let (h, m) = (hh.value(i), meters.value(i));
        assert!(h.len() == 9 && h.starts_with("HH-") && h[3..].bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(
            *meter_of.entry(h).or_insert(m),
            m,
            "one meter per household"
        );
    }
    assert_eq!(meter_of.len(), 200);
    assert_eq!(
        meter_of.values().collect::<HashSet<_>>().len(),
        200,
        "meter ids are unique"
    );
    let kwh = readings
        .column_by_name("kwh")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>();
    assert!(kwh.values().iter().all(|v| *v > 0.0 && *v < 2.0));

    // Consent records read back through the connector with their declared schema.
    let mut config = FileConnectorConfig::new(&files.consent_csv, FileFormat::Csv);
    config.schema = Some(sample::consent_fields());
    config.subject_column = Some("subject_id".into());
    let consent = read_all(&open(config), ReadRequest::new()).await;
    assert!(consent.broken.is_empty());
    assert_eq!(consent.num_rows(), files.consent_rows);
    let consent = consent.concat().unwrap();
    let subject = consent
        .column_by_name("subject_id")
        .unwrap()
        .as_string::<i32>();
    let status = consent.column_by_name("status").unwrap().as_string::<i32>();
    let purposes = consent
        .column_by_name("purposes")
        .unwrap()
        .as_string::<i32>();
    let withdrawn = consent.column_by_name("withdrawn_at").unwrap();
    let mut by_status: HashMap<&str, usize> = HashMap::new();
    let mut record = HashMap::new();
    for i in 0..consent.num_rows() {
        *by_status.entry(status.value(i)).or_default() += 1;
        record.insert(subject.value(i), (status.value(i), purposes.value(i)));
        assert!(
            meter_of.contains_key(subject.value(i)),
            "consent for a known household"
        );
        assert_eq!(withdrawn.is_valid(i), status.value(i) == "withdrawn");
    }
    let research_given = (0..consent.num_rows())
        .filter(|&i| status.value(i) == "given" && purposes.value(i).contains("AcademicResearch"))
        .count();
    assert!(
        (80..=140).contains(&research_given),
        "{by_status:?} {research_given}"
    );
    assert!(
        by_status["refused"] >= 20 && by_status["withdrawn"] >= 8,
        "{by_status:?}"
    );
    assert!(
        consent.num_rows() < 200,
        "some households have no record at all"
    );
    assert_eq!(record["HH-000001"].0, "given");
    assert!(record["HH-000001"].1.contains("AcademicResearch"));
    assert_eq!(record["HH-000002"].0, "refused");
    assert_eq!(record["HH-000003"].0, "withdrawn");
    assert!(!record.contains_key("HH-000004"));
}

#[tokio::test]
async fn public_and_mobility_datasets_look_like_munich() {
    let dir = tempfile::tempdir().unwrap();
    let spec = SampleSpec {
        households: 10,
        ..SampleSpec::default()
    };
    let files = write_demo_data(dir.path(), &spec).unwrap();

    let air = read_all(
        &open(files.dataset("air-quality").unwrap().config.clone()),
        ReadRequest::new(),
    )
    .await
    .concat()
    .unwrap();
    assert_eq!(air.num_rows(), 5 * 24 * 2);
    let stations: HashSet<&str> = air
        .column_by_name("station")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    assert!(stations.contains("München/Landshuter Allee"));

    let traffic_config = files.dataset("traffic-counts").unwrap().config.clone();
    let traffic = read_all(&open(traffic_config), ReadRequest::new())
        .await
        .concat()
        .unwrap();
    assert_eq!(traffic.num_rows(), 6 * 24 * 2);
    let geometry = traffic
        .column_by_name("geometry")
        .unwrap()
        .as_string::<i32>();
    assert_eq!(geometry.value(0), "POINT (11.586 48.1602)");
    let vehicles = traffic
        .column_by_name("vehicles")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert!(vehicles.values().iter().all(|v| *v >= 0));

    let trips_set = files.dataset("scooter-trips").unwrap();
    let hour_files = std::fs::read_dir(&trips_set.config.path).unwrap().count();
    assert!(hour_files > 10, "hourly delivery files: {hour_files}");
    let trips = read_all(&open(trips_set.config.clone()), ReadRequest::new())
        .await
        .concat()
        .unwrap();
    assert_eq!(trips.num_rows(), 800);
    let start = trips
        .column_by_name("start_time")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let end = trips
        .column_by_name("end_time")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let duration = trips
        .column_by_name("duration")
        .unwrap()
        .as_primitive::<Int64Type>();
    let cells = trips
        .column_by_name("start_cell")
        .unwrap()
        .as_string::<i32>();
    let mut per_cell: HashMap<&str, usize> = HashMap::new();
    for i in 0..trips.num_rows() {
        assert_eq!(
            (end.value(i) - start.value(i)) / 1_000_000,
            duration.value(i)
        );
        if i > 0 {
            assert!(
                end.value(i) >= end.value(i - 1),
                "trips are delivered in order of end time"
            );
        }
        *per_cell.entry(cells.value(i)).or_default() += 1;
    }
    // Hotspots make some cells dense and many sparse: what k-anonymity suppression needs.
    assert!(per_cell.values().any(|n| *n >= 10), "{per_cell:?}");
    assert!(
        per_cell.values().filter(|n| **n < 10).count() > 5,
        "{per_cell:?}"
    );
}
