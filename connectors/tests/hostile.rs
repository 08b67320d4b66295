//! Hostile input: broken rows, truncated files, wrong geometries, schema mismatches,
//! unreachable sources, stalled consumers. Each must be a clear error or a counted skip,
//! never a panic and never a wrong row.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use allmende_connectors::SourceRoots;
use allmende_connectors::sample;
use allmende_connectors::write::write_parquet;
use allmende_connectors::{
    Connector, ConnectorError, FieldSpec, FieldType, FileConnector, FileConnectorConfig,
    FileFormat, ReadItem, ReadRequest,
};
use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, TimestampMicrosecondType};
use common::*;
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    batch
        .column_by_name(name)
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or("<null>").to_string())
        .collect()
}

// ---------------------------------------------------------------- CSV

#[tokio::test]
async fn csv_broken_rows_are_counted_reported_with_lines_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\u{feff}household_id,meter_id,timestamp,kwh\n\
        HH-000001,M1,2025-03-03T00:00:00Z,0.125\n\
        HH-000002,M2,2025-03-03T00:00:00Z\n\
        HH-000003,M3,2025-03-03T00:00:00Z,1.5,extra\n\
        HH-000004,M4,2025-03-03T00:00:00Z,zwölf\n\
        HH-000005,\"M5\nsecond line\",2025-03-03 00:15:00, 2.5 \n\
        HH-000006,M6,yesterday,1\n\
        ,M7,2025-03-03T00:00:00Z,1\n\
        HH-000008,M8,2025-03-03T00:30:00+01:00,\n\
        \n\
        HH-000009,M9,2025-03-03T01:00:00Z,3\n";
    let path = write(&dir.path().join("r.csv"), text);
    let c = open(readings_config(&path, FileFormat::Csv));
    let read = read_all(&c, ReadRequest::new()).await;
    let broken: Vec<(u64, Option<u64>, String)> = read
        .broken
        .iter()
        .map(|b| (b.row, b.line, b.reason.clone()))
        .collect();
    assert_eq!(
        broken,
        vec![
            (2, Some(3), "expected 4 fields, found 3".to_string()),
            (3, Some(4), "expected 4 fields, found 5".to_string()),
            (
                4,
                Some(5),
                "column `kwh`: cannot read `zwölf` as float64".to_string()
            ),
            (
                6,
                Some(8),
                "column `timestamp`: cannot read `yesterday` as timestamp".to_string()
            ),
            (
                7,
                Some(9),
                "data-subject column `household_id` is empty".to_string()
            ),
        ]
    );
    let summary = read.summary.clone().unwrap();
    assert_eq!((summary.rows_read, summary.rows_broken), (4, 5));
    let rows = read.concat().unwrap();
    assert_eq!(
        strings(&rows, "household_id"),
        ["HH-000001", "HH-000005", "HH-000008", "HH-000009"]
    );
    assert_eq!(strings(&rows, "meter_id")[1], "M5\nsecond line");
    let kwh: &Float64Array = rows.column_by_name("kwh").unwrap().as_primitive();
    assert_eq!(kwh.value(0), 0.125);
    assert_eq!(kwh.value(1), 2.5);
    assert!(kwh.is_null(2), "an empty value is a null, not 0");
    let ts = rows
        .column_by_name("timestamp")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let base = 1_740_960_000_000_000i64;
    assert_eq!(ts.value(0), base);
    assert_eq!(
        ts.value(1),
        base + 15 * 60 * 1_000_000,
        "naive times are UTC"
    );
    assert_eq!(
        ts.value(2),
        base - 30 * 60 * 1_000_000,
        "offsets are honoured"
    );
    assert_eq!(
        read.broken[0].to_string(),
        "`r.csv` line 3 (record 2): expected 4 fields, found 3"
    );
}

#[tokio::test]
async fn csv_never_truncates_numbers_and_honours_the_delimiter() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir.path().join("c.csv"),
        "id;count\nA;1\nB;1,5\nC;2.0\nD;9223372036854775808\nE;-4\nF;7\nG;8\n",
    );
    let mut config = FileConnectorConfig::new(&path, FileFormat::Csv);
    config.csv.delimiter = ';';
    config.schema = Some(vec![
        FieldSpec::required("id", FieldType::String),
        FieldSpec::new("count", FieldType::Int64),
    ]);
    let c = open(config);
    let read = read_all(&c, ReadRequest::new()).await;
    let rows = read.concat().unwrap();
    assert_eq!(strings(&rows, "id"), ["A", "E", "F", "G"]);
    let counts: &Int64Array = rows.column(1).as_primitive();
    assert_eq!(counts.values().to_vec(), vec![1, -4, 7, 8]);
    let reasons: Vec<&str> = read.broken.iter().map(|b| b.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "column `count`: cannot read `1,5` as int64",
            "column `count`: cannot read `2.0` as int64",
            "column `count`: cannot read `9223372036854775808` as int64",
        ]
    );
}

#[tokio::test]
async fn csv_with_an_unbalanced_quote_stops_with_a_clear_error_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("{READINGS_HEADER}\n{}\nHH-000002,\"M2,", readings_line(1));
    for i in 0..20_000 {
        text.push_str(&format!("{}\n", readings_line(i)));
    }
    let path = write(&dir.path().join("q.csv"), &text);
    let mut config = readings_config(&path, FileFormat::Csv);
    config.max_record_bytes = 64 * 1024;
    config.sample_rows = 1;
    let c = open(config);
    let mut stream = c.read(ReadRequest::new()).await.unwrap();
    let mut rows = 0;
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(ReadItem::Batch { batch, .. }) => rows += batch.num_rows(),
            Ok(_) => {}
            Err(e) => error = Some(e),
        }
    }
    assert_eq!(
        rows, 0,
        "the first good row was not yet sent when the read failed"
    );
    let error = error.expect("the read fails");
    assert_eq!(
        error.to_string(),
        "cannot read `q.csv`: a record after line 2 is larger than 65536 bytes (unbalanced quote?)"
    );
}

// ---------------------------------------------------------------- JSON lines

#[tokio::test]
async fn jsonl_rejects_lossy_values_and_oversized_lines_as_broken_rows() {
    let dir = tempfile::tempdir().unwrap();
    let huge = format!("{{\"id\":\"{}\"}}", "x".repeat(5000));
    let text = format!(
        "{{\"id\":\"a\",\"n\":1}}\n{{\"id\":\"b\",\"n\":1.5}}\n{huge}\n{{\"id\":\"c\",\"n\":\"2\"}}\n\
         not json\n{{\"id\":\"d\",\"n\":4,\"other\":true}}\n{{\"id\":\"e\"}}\n"
    );
    let path = write(&dir.path().join("n.jsonl"), &text);
    let mut config = FileConnectorConfig::new(&path, FileFormat::Jsonl);
    config.schema = Some(vec![
        FieldSpec::required("id", FieldType::String),
        FieldSpec::new("n", FieldType::Int64),
    ]);
    config.ignore_extra_columns = true;
    config.max_record_bytes = 4096;
    let c = open(config);
    let read = read_all(&c, ReadRequest::new()).await;
    let rows = read.concat().unwrap();
    assert_eq!(strings(&rows, "id"), ["a", "d", "e"]);
    let n: &Int64Array = rows.column(1).as_primitive();
    assert_eq!((n.value(0), n.value(1), n.is_null(2)), (1, 4, true));
    let broken: Vec<(Option<u64>, &str)> = read
        .broken
        .iter()
        .map(|b| (b.line, b.reason.as_str()))
        .collect();
    assert_eq!(broken.len(), 4, "{broken:?}");
    assert_eq!(
        broken[0],
        (Some(2), "column `n`: expected int64, found number `1.5`")
    );
    assert_eq!(broken[1], (Some(3), "line is longer than 4096 bytes"));
    assert_eq!(
        broken[2],
        (Some(4), "column `n`: expected int64, found string `\"2\"`")
    );
    assert_eq!(broken[3].0, Some(5));
    assert!(broken[3].1.starts_with("not a JSON object: "), "{broken:?}");
}

// ---------------------------------------------------------------- GeoJSON

fn feature(geometry: &str, props: &str) -> String {
    format!("{{\"type\":\"Feature\",\"geometry\":{geometry},\"properties\":{props}}}")
}

#[tokio::test]
async fn geojson_wrong_geometries_are_broken_rows_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let p = |id: &str| format!("{{\"counter_id\":\"{id}\",\"vehicles\":5}}");
    let features = [
        feature(
            "{\"type\":\"Point\",\"coordinates\":[11.5755,48.1374]}",
            &p("ok-1"),
        ),
        "{\"type\":\"Feature\",\"properties\":{\"counter_id\":\"no-geometry\"}}".to_string(),
        feature("null", &p("null-geometry")),
        feature("{\"type\":\"Point\",\"coordinates\":[11.5]}", &p("short")),
        feature(
            "{\"type\":\"Circle\",\"coordinates\":[11.5,48.1]}",
            &p("circle"),
        ),
        feature(
            "{\"type\":\"Polygon\",\"coordinates\":[[[11,48],[11.1,48],[11.1,48.1],[11,48.1]]]}",
            &p("open-ring"),
        ),
        feature(
            "{\"type\":\"Point\",\"coordinates\":[691000,5334000]}",
            &p("utm"),
        ),
        feature("{\"type\":\"Point\",\"coordinates\":[11.6,48.2]}", "[1,2]"),
        "{\"type\":\"Point\",\"coordinates\":[11.6,48.2]}".to_string(),
        feature(
            "{\"type\":\"LineString\",\"coordinates\":[[11.5,48.1],[11.6,48.2]]}",
            &p("ok-2"),
        ),
        feature(
            "{\"type\":\"Point\",\"coordinates\":[11.6,48.2]}",
            "{\"counter_id\":\"bad-type\",\"vehicles\":\"many\"}",
        ),
    ];
    let text = format!(
        "{{\"type\":\"FeatureCollection\",\"name\":\"x\",\"features\":[\n{}\n]}}",
        features.join(",\n")
    );
    let path = write(&dir.path().join("g.geojson"), &text);
    let mut config = FileConnectorConfig::new(&path, FileFormat::Geojson);
    config.schema = Some(vec![
        FieldSpec::required("counter_id", FieldType::String),
        FieldSpec::new("vehicles", FieldType::Int64),
    ]);
    let c = open(config);
    let read = read_all(&c, ReadRequest::new()).await;
    let rows = read.concat().unwrap();
    assert_eq!(strings(&rows, "counter_id"), ["ok-1", "ok-2"]);
    assert_eq!(
        strings(&rows, "geometry"),
        [
            "POINT (11.5755 48.1374)",
            "LINESTRING (11.5 48.1, 11.6 48.2)"
        ]
    );
    let broken: Vec<(u64, &str)> = read
        .broken
        .iter()
        .map(|b| (b.row, b.reason.as_str()))
        .collect();
    assert_eq!(
        broken,
        [
            (2, "the feature has no geometry"),
            (3, "the feature has no geometry"),
            (4, "a position has 1 numbers, expected 2 or 3"),
            (5, "unknown geometry type `Circle`"),
            (
                6,
                "Polygon ring 1 is not closed (first and last position differ)"
            ),
            (
                7,
                "position [691000,5334000] is outside WGS 84 (longitude -180..180, latitude -90..90)"
            ),
            (8, "`properties` is an array, not an object"),
            (9, "feature `type` is \"Point\", expected `Feature`"),
            (
                11,
                "column `vehicles`: expected int64, found string `\"many\"`"
            ),
        ]
    );
    assert_eq!(read.summary.unwrap().rows_broken, 9);
}

#[tokio::test]
async fn geojson_documents_that_are_not_feature_collections_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let fields = vec![FieldSpec::new("a", FieldType::String)];
    let cases = [
        (
            "{\"type\":\"Feature\",\"features\":[]}",
            "top-level `type` is \"Feature\"",
        ),
        ("{\"type\":\"FeatureCollection\"}", "no `features` array"),
        ("[1,2]", "invalid GeoJSON"),
        (
            "{\"type\":\"FeatureCollection\",\"features\":{}}",
            "invalid GeoJSON",
        ),
        (
            "{\"type\":\"FeatureCollection\",\"features\":[]} trailing",
            "invalid GeoJSON",
        ),
    ];
    for (i, (text, reason)) in cases.into_iter().enumerate() {
        let path = write(&dir.path().join(format!("{i}.geojson")), text);
        let mut config = FileConnectorConfig::new(&path, FileFormat::Geojson);
        config.schema = Some(fields.clone());
        let err = FileConnector::open(config, SourceRoots::anywhere()).unwrap_err();
        assert!(
            matches!(&err, ConnectorError::Source { reason: r, .. } if r.contains(reason)),
            "{text}: {err}"
        );
    }
    // Deeply nested input is refused by the parser's recursion limit, not a stack overflow.
    let deep = format!(
        "{{\"type\":\"FeatureCollection\",\"features\":[{}",
        "[".repeat(100_000)
    );
    let path = write(&dir.path().join("deep.geojson"), &deep);
    let mut config = FileConnectorConfig::new(&path, FileFormat::Geojson);
    config.schema = Some(fields.clone());
    let err = FileConnector::open(config, SourceRoots::anywhere()).unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
}

#[tokio::test]
async fn geojson_truncated_mid_document_delivers_only_complete_features_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    let traffic = sample::traffic_counts(&spec).unwrap();
    let path = dir.path().join("t.geojson");
    allmende_connectors::write::write_geojson_points(
        &path,
        std::slice::from_ref(&traffic),
        "lon",
        "lat",
    )
    .unwrap();
    let mut config = FileConnectorConfig::new(&path, FileFormat::Geojson);
    config.schema = Some(sample::traffic_counts_geojson_fields());
    let c = open(config);
    let full = read_all(&c, ReadRequest::new()).await.concat().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let mut stream = c.read(ReadRequest::new().batch_size(10)).await.unwrap();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(ReadItem::Batch { batch, .. }) => got.push(batch),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => error = Some(e),
        }
    }
    let error = error.expect("truncation is an error");
    assert!(
        error.to_string().contains("invalid GeoJSON: EOF"),
        "{error}"
    );
    let got = arrow::compute::concat_batches(&full.schema(), &got).unwrap();
    assert!(got.num_rows() > 0 && got.num_rows() < full.num_rows());
    assert_eq!(
        got,
        full.slice(0, got.num_rows()),
        "delivered rows are exact"
    );
}

// ---------------------------------------------------------------- Parquet

fn write_row_groups(path: &std::path::Path, batch: &RecordBatch, rows_per_group: usize) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn meter_parquet_config(path: &std::path::Path) -> FileConnectorConfig {
    let mut config = FileConnectorConfig::new(path, FileFormat::Parquet);
    config.schema = Some(sample::smart_meter_fields());
    config.subject_column = Some("household_id".into());
    config.identifier_columns = vec!["meter_id".into()];
    config
}

#[tokio::test]
async fn parquet_truncated_in_the_middle_is_refused_at_registration() {
    let dir = tempfile::tempdir().unwrap();
    let batch = sample::smart_meter_readings_day(&small_spec(), 0).unwrap();
    let path = dir.path().join("r.parquet");
    write_row_groups(&path, &batch, 200);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err =
        FileConnector::open(meter_parquet_config(&path), SourceRoots::anywhere()).unwrap_err();
    match &err {
        ConnectorError::Source { file, reason } => {
            assert_eq!(file, "r.parquet");
            assert!(
                reason.starts_with("not a readable parquet file"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
    // In a directory, the truncated file is named.
    let root = dir.path().join("dir");
    std::fs::create_dir(&root).unwrap();
    write_row_groups(&root.join("a.parquet"), &batch, 200);
    std::fs::write(root.join("b.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    let err =
        FileConnector::open(meter_parquet_config(&root), SourceRoots::anywhere()).unwrap_err();
    assert!(
        err.to_string().starts_with("cannot read `b.parquet`"),
        "{err}"
    );
}

#[tokio::test]
async fn parquet_truncated_after_registration_fails_the_read_without_wrong_rows() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    let day0 = sample::smart_meter_readings_day(&spec, 0).unwrap();
    let day1 = sample::smart_meter_readings_day(&spec, 1).unwrap();
    write_row_groups(&dir.path().join("a.parquet"), &day0, 300);
    let b = dir.path().join("b.parquet");
    write_row_groups(&b, &day1, 300);
    let c = open(meter_parquet_config(dir.path()));
    let bytes = std::fs::read(&b).unwrap();
    std::fs::write(&b, &bytes[..bytes.len() / 2]).unwrap();

    let mut stream = c.read(ReadRequest::new().batch_size(100)).await.unwrap();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(ReadItem::Batch { batch, .. }) => got.push(batch),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => error = Some(e),
        }
    }
    let got = arrow::compute::concat_batches(&c.describe().schema, &got).unwrap();
    let want = RecordBatch::try_new(c.describe().schema.clone(), day0.columns().to_vec()).unwrap();
    assert_eq!(got, want, "exactly the intact file's rows");
    let error = error.expect("the truncated file fails the read");
    assert!(
        error
            .to_string()
            .starts_with("cannot read `b.parquet`: not a readable parquet file"),
        "{error}"
    );
    let health = c.health().await.unwrap_err();
    assert!(health.to_string().contains("b.parquet"), "{health}");
}

#[tokio::test]
async fn parquet_with_corrupted_pages_errors_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let batch = sample::smart_meter_readings_day(&small_spec(), 0).unwrap();
    let path = dir.path().join("r.parquet");
    write_row_groups(&path, &batch, 100);
    let c = open(meter_parquet_config(&path));
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 3..n / 2] {
        *b = 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();
    let result = c
        .read(ReadRequest::new())
        .await
        .unwrap()
        .collect_all()
        .await;
    let err = result.expect_err("corrupt pages fail the read");
    assert!(
        matches!(
            err,
            ConnectorError::Source { .. } | ConnectorError::Internal(_)
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------- schema mismatch

#[tokio::test]
async fn schema_mismatches_are_refused_at_registration_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // CSV: a float column declared int64.
    let mut text = format!("{READINGS_HEADER}\n");
    for i in 0..20 {
        text.push_str(&format!("{}\n", readings_line(i)));
    }
    let path = write(&dir.path().join("r.csv"), &text);
    let mut config = readings_config(&path, FileFormat::Csv);
    config.schema.as_mut().unwrap()[3].field_type = FieldType::Int64;
    let err = FileConnector::open(config, SourceRoots::anywhere()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "schema mismatch in `r.csv`: column `kwh`: declared int64, but 20 of 20 sampled values do not parse, e.g. `0.000` at line 2"
    );
    // CSV: a declared column missing from the header; an undeclared extra column.
    let mut config = readings_config(&path, FileFormat::Csv);
    config
        .schema
        .as_mut()
        .unwrap()
        .push(FieldSpec::new("tariff", FieldType::String));
    let err = FileConnector::open(config, SourceRoots::anywhere()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "schema mismatch in `r.csv`: column `tariff`: declared string, but the header has no such column (it has: household_id, meter_id, timestamp, kwh)"
    );
    let mut config = readings_config(&path, FileFormat::Csv);
    config.schema.as_mut().unwrap().pop();
    let err = FileConnector::open(config.clone(), SourceRoots::anywhere()).unwrap_err();
    assert!(
        err.to_string()
            .contains("column `kwh`: in the header but not declared"),
        "{err}"
    );
    config.ignore_extra_columns = true;
    let c = open(config);
    assert_eq!(c.describe().schema.fields().len(), 3);

    // Parquet: stored strings declared float64.
    let schema = Arc::new(Schema::new(vec![
        Field::new("household_id", DataType::Utf8, false),
        Field::new("kwh", DataType::Utf8, true),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["HH-000001"])),
            Arc::new(StringArray::from(vec!["1.5"])),
        ],
    )
    .unwrap();
    let pq = dir.path().join("s.parquet");
    write_parquet(&pq, &schema, &[b]).unwrap();
    let mut config = FileConnectorConfig::new(&pq, FileFormat::Parquet);
    config.schema = Some(vec![
        FieldSpec::required("household_id", FieldType::String),
        FieldSpec::new("kwh", FieldType::Float64),
    ]);
    let err = FileConnector::open(config, SourceRoots::anywhere()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "schema mismatch in `s.parquet`: column `kwh`: declared float64, found Utf8"
    );

    // JSON lines: most values of the wrong type; a required field never present.
    let jl = write(
        &dir.path().join("j.jsonl"),
        "{\"id\":\"a\",\"n\":1.5}\n{\"id\":\"b\",\"n\":2.5}\n{\"id\":\"c\",\"n\":3}\n",
    );
    let mut config = FileConnectorConfig::new(&jl, FileFormat::Jsonl);
    config.schema = Some(vec![
        FieldSpec::required("id", FieldType::String),
        FieldSpec::new("n", FieldType::Int64),
    ]);
    let err = FileConnector::open(config.clone(), SourceRoots::anywhere()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "schema mismatch in `j.jsonl`: column `n`: declared int64, but 2 of 3 sampled values do not fit (expected int64, found number `1.5` at line 1)"
    );
    config.schema = Some(vec![
        FieldSpec::required("id", FieldType::String),
        FieldSpec::new("n", FieldType::Float64),
        FieldSpec::required("unit", FieldType::String),
    ]);
    let err = FileConnector::open(config, SourceRoots::anywhere()).unwrap_err();
    assert!(
        err.to_string().contains(
            "column `unit`: declared non-nullable string, but none of the first 3 records has it"
        ),
        "{err}"
    );
}

#[test]
fn bad_configs_are_refused_before_touching_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir.path().join("r.csv"),
        &format!("{READINGS_HEADER}\n{}\n", readings_line(1)),
    );
    let mut config = readings_config(&path, FileFormat::Csv);
    config.subject_column = Some("kwh".into());
    let err = FileConnector::open(config, SourceRoots::anywhere()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid connector config: data-subject column `kwh` must be string or int64, not float64"
    );
    let mut config = readings_config(&path, FileFormat::Csv);
    config.identifier_columns = vec!["nope".into()];
    assert!(
        FileConnector::open(config, SourceRoots::anywhere())
            .unwrap_err()
            .to_string()
            .contains("`nope`")
    );
    let mut config = readings_config(&path, FileFormat::Csv);
    config.cursor_column = Some("kwh".into());
    assert!(
        FileConnector::open(config, SourceRoots::anywhere())
            .unwrap_err()
            .to_string()
            .contains("int64, timestamp or string")
    );
    let mut config = readings_config(&path, FileFormat::Csv);
    config.csv.delimiter = 'ä';
    assert!(matches!(
        FileConnector::open(config, SourceRoots::anywhere()),
        Err(ConnectorError::Config(_))
    ));
    let mut config = readings_config(&path, FileFormat::Csv);
    config.csv.header = false;
    config.schema = None;
    assert!(matches!(
        FileConnector::open(config, SourceRoots::anywhere()),
        Err(ConnectorError::Config(_))
    ));

    // Unknown fields in a config are refused when it is parsed.
    let json = format!(
        r#"{{"path": "{}", "format": "csv", "subject_colum": "household_id"}}"#,
        path.display()
    );
    let err = serde_json::from_str::<FileConnectorConfig>(&json).unwrap_err();
    assert!(
        err.to_string().contains("unknown field `subject_colum`"),
        "{err}"
    );
    let json = format!(
        r#"{{"path": "{}", "format": "csv", "schema": [{{"name": "a", "type": "decimal"}}]}}"#,
        path.display()
    );
    assert!(serde_json::from_str::<FileConnectorConfig>(&json).is_err());
}

// ---------------------------------------------------------------- unreachable

#[tokio::test]
async fn unreachable_sources_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere/readings.csv");
    let err = FileConnector::open(
        readings_config(&missing, FileFormat::Csv),
        SourceRoots::anywhere(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ConnectorError::Unreachable { reason, .. } if reason.contains("No such file")),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("source `{}` is unreachable", missing.display()))
    );

    let err = FileConnector::open_async(
        readings_config(&missing, FileFormat::Csv),
        SourceRoots::anywhere(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ConnectorError::Unreachable { .. }), "{err}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    write(&empty.join("notes.txt"), "not csv");
    let err = FileConnector::open(
        FileConnectorConfig::new(&empty, FileFormat::Csv),
        SourceRoots::anywhere(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("no csv files to infer the schema from"),
        "{err}"
    );
    // With a declared schema an empty delivery directory is fine.
    let c = open(readings_config(&empty, FileFormat::Csv));
    let read = read_all(&c, ReadRequest::new()).await;
    assert_eq!(read.num_rows(), 0);
    assert_eq!(read.summary.unwrap().cursor, None);

    // A source that disappears after registration.
    let path = write(
        &dir.path().join("r.csv"),
        &format!("{READINGS_HEADER}\n{}\n", readings_line(1)),
    );
    let c = open(readings_config(&path, FileFormat::Csv));
    assert!(c.health().await.is_ok());
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        c.health().await,
        Err(ConnectorError::Unreachable { .. })
    ));
    let err = c.read(ReadRequest::new()).await.unwrap_err();
    assert!(matches!(err, ConnectorError::Unreachable { .. }), "{err}");
    assert_eq!(c.active_reads(), 0);
}

// ---------------------------------------------------------------- slow consumer

#[tokio::test]
async fn a_stalled_consumer_bounds_the_reader_and_dropping_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("{READINGS_HEADER}\n");
    for i in 0..200_000 {
        text.push_str(&readings_line(i));
        text.push('\n');
    }
    let path = write(&dir.path().join("big.csv"), &text);
    let c = open(readings_config(&path, FileFormat::Csv));
    assert_eq!(open_fds_to(&path), 0, "construction leaves no file open");

    let mut stream = c.read(ReadRequest::new().batch_size(1000)).await.unwrap();
    let progress = stream.progress();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, ReadItem::Batch { .. }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scanned = progress.records_scanned();
    assert!(
        scanned <= 5 * 1000,
        "the reader ran ahead of a stalled consumer: {scanned} of 200000 records"
    );
    assert_eq!(open_fds_to(&path), 1);
    assert_eq!(c.active_reads(), 1);
    assert!(!progress.source_released());

    drop(stream);
    for _ in 0..500 {
        if progress.source_released() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(progress.source_released());
    assert_eq!(open_fds_to(&path), 0, "the file is closed");
    assert_eq!(c.active_reads(), 0);
    assert!(progress.records_scanned() < 200_000);
}

#[tokio::test]
async fn dropping_a_pending_parquet_read_closes_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = small_spec();
    for day in 0..2 {
        let b = sample::smart_meter_readings_day(&spec, day).unwrap();
        write_row_groups(&dir.path().join(format!("d{day}.parquet")), &b, 100);
    }
    let c = open(meter_parquet_config(dir.path()));
    let mut stream = c.read(ReadRequest::new().batch_size(10)).await.unwrap();
    let progress = stream.progress();
    stream.next().await.unwrap().unwrap();
    assert_eq!(open_fds_to(&dir.path().join("d0.parquet")), 1);
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !progress.source_released() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(open_fds_to(&dir.path().join("d0.parquet")), 0);
    assert_eq!(open_fds_to(&dir.path().join("d1.parquet")), 0);
}
