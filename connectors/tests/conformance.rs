//! The conformance suite run against the file connector, for every format and layout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_connectors::conformance::{Expectations, run_all};
use allmende_connectors::sample::{self, write_demo_data};
use allmende_connectors::write::{write_csv, write_geojson_points, write_jsonl, write_parquet};
use allmende_connectors::{FileConnectorConfig, FileFormat};
use common::*;

async fn conforms(config: FileConnectorConfig, rows: u64, broken: u64) {
    let connector = open(config);
    let expect = Expectations {
        rows: Some(rows),
        broken: Some(broken),
    };
    match run_all(&connector, &expect).await {
        Ok(report) => {
            assert_eq!(report.passed.len(), 8, "{report:?}");
            assert_eq!((report.rows, report.broken), (rows, broken));
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn csv_with_broken_rows_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("{READINGS_HEADER}\n");
    let mut broken = 0;
    for i in 0..300 {
        match i % 50 {
            10 => {
                text.push_str("HH-000001,1EMH0000000001,2025-03-03T00:00:00Z\n");
                broken += 1;
            }
            20 => {
                text.push_str("HH-000001,1EMH0000000001,2025-03-03T00:00:00Z,zwölf\n");
                broken += 1;
            }
            30 => {
                text.push_str(",1EMH0000000001,2025-03-03T00:00:00Z,1.5\n");
                broken += 1;
            }
            _ => text.push_str(&format!("{}\n", readings_line(i))),
        }
    }
    let path = write(&dir.path().join("readings.csv"), &text);
    conforms(
        readings_config(&path, FileFormat::Csv),
        300 - broken,
        broken,
    )
    .await;
}

#[tokio::test]
async fn jsonl_with_broken_rows_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    let mut broken = 0;
    for i in 0..250 {
        match i % 40 {
            5 => {
                text.push_str("{\"household_id\": \"HH-000001\", \"kwh\": \n");
                broken += 1;
            }
            6 => {
                text.push_str("[1, 2, 3]\n\n");
                broken += 1;
            }
            7 => {
                text.push_str("{\"household_id\":\"HH-000002\",\"meter_id\":\"m\",\"timestamp\":\"2025-03-03T00:00:00Z\",\"kwh\":\"1.5\"}\n");
                broken += 1;
            }
            _ => text.push_str(&format!(
                "{{\"household_id\":\"HH-{:06}\",\"meter_id\":\"1EMH{:010}\",\"timestamp\":\"2025-03-03T{:02}:00:00Z\",\"kwh\":{}.25}}\n",
                i % 9 + 1,
                i % 9 + 1,
                i % 24,
                i % 4
            )),
        }
    }
    let path = write(&dir.path().join("readings.jsonl"), &text);
    conforms(
        readings_config(&path, FileFormat::Jsonl),
        250 - broken,
        broken,
    )
    .await;
}

#[tokio::test]
async fn geojson_with_wrong_geometries_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    let traffic = sample::traffic_counts(&spec).unwrap();
    let path = dir.path().join("traffic.geojson");
    write_geojson_points(&path, std::slice::from_ref(&traffic), "lon", "lat").unwrap();
    // Replace three geometries with wrong ones.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let wrong = [
        "{\"type\":\"Point\",\"coordinates\":[11.5]}",
        "null",
        "{\"type\":\"Polygon\",\"coordinates\":[[[11,48],[11.1,48],[11.1,48.1],[11,48.1]]]}",
    ];
    for (k, geometry) in wrong.iter().enumerate() {
        let line = &mut lines[10 + 40 * k];
        let start = line.find("\"geometry\":").unwrap() + "\"geometry\":".len();
        let end = line.find(",\"properties\"").unwrap();
        line.replace_range(start..end, geometry);
    }
    std::fs::write(&path, lines.join("\n")).unwrap();
    let mut config = FileConnectorConfig::new(&path, FileFormat::Geojson);
    config.schema = Some(sample::traffic_counts_geojson_fields());
    let rows = traffic.num_rows() as u64;
    conforms(config, rows - 3, 3).await;
}

#[tokio::test]
async fn parquet_file_and_directory_conform() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    let day0 = sample::smart_meter_readings_day(&spec, 0).unwrap();
    let day1 = sample::smart_meter_readings_day(&spec, 1).unwrap();
    let single = dir.path().join("one/readings.parquet");
    write_parquet(&single, &day0.schema(), std::slice::from_ref(&day0)).unwrap();
    let mut config = FileConnectorConfig::new(&single, FileFormat::Parquet);
    config.schema = Some(sample::smart_meter_fields());
    config.subject_column = Some("household_id".into());
    config.identifier_columns = vec!["meter_id".into()];
    conforms(config.clone(), day0.num_rows() as u64, 0).await;

    let many = dir.path().join("many");
    write_parquet(
        &many.join("b-2025-03-04.parquet"),
        &day1.schema(),
        std::slice::from_ref(&day1),
    )
    .unwrap();
    write_parquet(
        &many.join("a-2025-03-03.parquet"),
        &day0.schema(),
        std::slice::from_ref(&day0),
    )
    .unwrap();
    write(&many.join("_SUCCESS"), "");
    config.path = many;
    conforms(config, (day0.num_rows() + day1.num_rows()) as u64, 0).await;
}

#[tokio::test]
async fn csv_directory_with_a_column_cursor_conforms() {
    // Five stations share each timestamp: the cursor must resume inside a run of equal values.
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    let air = sample::air_quality(&spec).unwrap();
    let half = air.num_rows() / 2;
    let root = dir.path().join("air");
    write_csv(
        &root.join("part-1.csv"),
        &air.schema(),
        &[air.slice(0, half)],
    )
    .unwrap();
    write_csv(
        &root.join("part-2.csv"),
        &air.schema(),
        &[air.slice(half, air.num_rows() - half)],
    )
    .unwrap();
    let mut config = FileConnectorConfig::new(&root, FileFormat::Csv);
    config.schema = Some(sample::air_quality_fields());
    config.cursor_column = Some("timestamp".into());
    conforms(config, air.num_rows() as u64, 0).await;
}

#[tokio::test]
async fn jsonl_directory_and_inferred_schemas_conform() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    let trips = sample::scooter_trips(&spec).unwrap();
    let root = dir.path().join("trips");
    let third = trips.num_rows() / 3;
    for (i, (offset, len)) in [
        (0, third),
        (third, third),
        (2 * third, trips.num_rows() - 2 * third),
    ]
    .into_iter()
    .enumerate()
    {
        write_jsonl(
            &root.join(format!("h{i}/trips.jsonl")),
            &[trips.slice(offset, len)],
        )
        .unwrap();
    }
    let mut config = FileConnectorConfig::new(&root, FileFormat::Jsonl);
    config.identifier_columns = vec!["device_id".into()];
    conforms(config, trips.num_rows() as u64, 0).await;

    // Inferred CSV schema.
    let air = sample::air_quality(&spec).unwrap();
    let path = dir.path().join("air.csv");
    write_csv(&path, &air.schema(), std::slice::from_ref(&air)).unwrap();
    conforms(
        FileConnectorConfig::new(&path, FileFormat::Csv),
        air.num_rows() as u64,
        0,
    )
    .await;
}

#[tokio::test]
async fn every_demo_dataset_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_demo_data(dir.path(), &small_spec()).unwrap();
    assert_eq!(files.datasets.len(), 4);
    for d in &files.datasets {
        conforms(d.config.clone(), d.rows as u64, 0).await;
    }
}
