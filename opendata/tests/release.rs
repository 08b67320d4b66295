//! A release end to end through the public API: coordinates to EPSG:3035 grid cells and to
//! regions (with `outside`), hours, the Gaussian mechanism, and the Parquet, CSV and JSON outputs
//! read back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use allmende_opendata::{
    BudgetPeriod, BudgetSpec, CountOf, DpSpec, GroupBy, Measure, Mechanism, OUTSIDE, OpenDpNoise,
    ReleaseReport, ReleaseSpec, Releaser, TimeBucket, write_csv, write_parquet, write_report,
};
use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A square district around Munich's centre with a hole in the middle (a park).
const DISTRICTS: &str = r#"{"type":"FeatureCollection","features":[
  {"type":"Feature","properties":{"name":"Altstadt"},"geometry":{"type":"Polygon","coordinates":[
    [[11.55,48.12],[11.60,48.12],[11.60,48.15],[11.55,48.15],[11.55,48.12]],
    [[11.57,48.13],[11.58,48.13],[11.58,48.14],[11.57,48.14],[11.57,48.13]]]}}]}"#;

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("device_id", DataType::Utf8, true),
        Field::new(
            "start_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            true,
        ),
        Field::new("start_lat", DataType::Float64, true),
        Field::new("start_lon", DataType::Float64, true),
        Field::new("distance", DataType::Float64, true),
    ])
}

/// 12 vehicles at a point in the district, 12 in its hole, 3 far outside, one row without
/// coordinates; all in the same hour.
fn batch() -> RecordBatch {
    let mut ids = Vec::new();
    let mut lat = Vec::new();
    let mut lon = Vec::new();
    for i in 0..12 {
        ids.push(format!("in{i}"));
        lat.push(Some(48.125));
        lon.push(Some(11.555));
        ids.push(format!("hole{i}"));
        lat.push(Some(48.135));
        lon.push(Some(11.575));
    }
    for i in 0..3 {
        ids.push(format!("far{i}"));
        lat.push(Some(48.30));
        lon.push(Some(11.80));
    }
    ids.push("nowhere".into());
    lat.push(None);
    lon.push(Some(11.0));
    let n = ids.len();
    let t = 1_764_511_200_000_000i64;
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(
                TimestampMicrosecondArray::from(vec![t + 60_000_000; n]).with_timezone("+00:00"),
            ),
            Arc::new(Float64Array::from(lat)),
            Arc::new(Float64Array::from(lon)),
            Arc::new(Float64Array::from(vec![1000.0; n])),
        ],
    )
    .unwrap()
}

fn spec(group: GroupBy) -> ReleaseSpec {
    ReleaseSpec {
        dataset: "scooter-trips".into(),
        unit: "vehicle".into(),
        unit_column: "device_id".into(),
        k: 10,
        totals: false,
        group_by: vec![
            GroupBy {
                column: Some("start_time".into()),
                time: Some(TimeBucket::Hour),
                as_name: Some("hour".into()),
                ..GroupBy::default()
            },
            group,
        ],
        measures: vec![
            Measure {
                name: "trips".into(),
                count: Some(CountOf::Rows),
                ..Measure::default()
            },
            Measure {
                name: "vehicles".into(),
                count: Some(CountOf::Units),
                ..Measure::default()
            },
        ],
        dp: None,
        budget: None,
    }
}

fn strings(b: &RecordBatch, name: &str) -> Vec<String> {
    let a = b
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                String::new()
            } else {
                a.value(i).to_string()
            }
        })
        .collect()
}

#[test]
fn regions_with_holes_and_outside_through_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("districts.geojson"), DISTRICTS).unwrap();
    let s = spec(GroupBy {
        columns: Some(vec!["start_lat".into(), "start_lon".into()]),
        regions: Some("districts.geojson".into()),
        property: Some("name".into()),
        as_name: Some("district".into()),
        ..GroupBy::default()
    });
    let mut r = Releaser::new_in(s, &schema(), OpenDpNoise, Some(dir.path())).unwrap();
    r.push(&batch()).unwrap();
    let rel = r.finish("2026-11-30T21:00:00Z").unwrap();
    // `outside` has key −1 and sorts first.
    assert_eq!(strings(&rel.table, "district"), vec![OUTSIDE, "Altstadt"]);
    assert_eq!(
        strings(&rel.table, "hour"),
        vec!["2025-11-30T14:00Z", "2025-11-30T14:00Z"]
    );
    let units = rel
        .table
        .column_by_name("vehicles")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    // The hole's 12 vehicles and the 3 far away are `outside` together: 15 ≥ k.
    assert_eq!((units.value(0), units.value(1)), (15, 12));
    let skipped = rel.report.rows_skipped.clone().unwrap();
    assert_eq!(
        skipped.get("missing or non-finite `start_lat`/`start_lon`"),
        Some(&1)
    );

    // A missing regions file is an error naming it.
    let s = spec(GroupBy {
        columns: Some(vec!["start_lat".into(), "start_lon".into()]),
        regions: Some("missing.geojson".into()),
        property: Some("name".into()),
        ..GroupBy::default()
    });
    let e = Releaser::new_in(s, &schema(), OpenDpNoise, Some(dir.path())).unwrap_err();
    assert!(e.to_string().contains("`missing.geojson`"), "{e}");
}

#[test]
fn grid_cells_and_outputs_read_back() {
    let s = spec(GroupBy {
        columns: Some(vec!["start_lat".into(), "start_lon".into()]),
        grid_m: Some(1000),
        as_name: Some("cell".into()),
        ..GroupBy::default()
    });
    let mut r = Releaser::new(s, &schema(), OpenDpNoise).unwrap();
    r.push(&batch()).unwrap();
    let rel = r.finish("2026-11-30T21:00:00Z").unwrap();
    let cells = strings(&rel.table, "cell");
    assert_eq!(cells.len(), 3, "{cells:?}");
    assert!(
        cells
            .iter()
            .all(|c| c.starts_with("CRS3035RES1000mN") && c.contains('E')),
        "{cells:?}"
    );
    assert_eq!(strings(&rel.table, "suppressed"), vec!["", "", "primary"]);

    let mut pq = Vec::new();
    write_parquet(&rel, &mut pq).unwrap();
    let back: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(pq))
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0], rel.table);

    let mut csv = Vec::new();
    write_csv(&rel, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "hour,cell,trips,vehicles,suppressed");
    assert!(lines[3].ends_with(",,,primary"), "{}", lines[3]);

    let mut json = Vec::new();
    write_report(&rel, &mut json).unwrap();
    let report: ReleaseReport = serde_json::from_slice(&json).unwrap();
    assert_eq!(report, rel.report);
    assert_eq!(report.suppressed_primary, Some(1));
    assert_eq!(report.generated_at, "2026-11-30T21:00:00Z");
}

#[test]
fn gaussian_release_reports_its_accounting() {
    let mut s = spec(GroupBy {
        columns: Some(vec!["start_lat".into(), "start_lon".into()]),
        grid_m: Some(1000),
        ..GroupBy::default()
    });
    s.k = 2;
    s.dp = Some(DpSpec {
        epsilon: 2.0,
        delta: 1e-5,
        mechanism: Mechanism::Gaussian,
        max_cells_per_unit: 1,
        max_rows_per_cell: 1,
    });
    s.budget = Some(BudgetSpec {
        epsilon: 4.0,
        period: BudgetPeriod::Day,
    });
    let mut r = Releaser::new(s, &schema(), OpenDpNoise).unwrap();
    r.push(&batch()).unwrap();
    let rel = r.finish("2026-11-30T21:00:00Z").unwrap();
    let dp = rel.report.dp.clone().unwrap();
    assert_eq!(dp.mechanism, "gaussian");
    let rho = dp.rho.unwrap();
    assert!((rho + 2.0 * (rho * (2.0f64 / 1e-5).ln()).sqrt() - 2.0).abs() < 1e-9);
    assert_eq!(dp.noise.len(), 2, "units and rows");
    assert!(dp.threshold >= 2);
    // Every released cell's noisy unit count reached the threshold.
    let units = rel
        .table
        .column_by_name("vehicles")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    for i in 0..units.len() {
        assert!(units.value(i) >= dp.threshold);
    }
    assert!(rel.report.units.is_none() && rel.report.cells.is_none());
    assert_eq!(rel.diagnostics.units, 28);
}
