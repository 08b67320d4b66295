//! Cursor semantics: appends are picked up exactly once, rewritten sources are detected,
//! `max_rows` pages cut exactly, column cursors resume inside runs of equal values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_connectors::{
    Connector, ConnectorError, Cursor, CursorValue, FieldSpec, FieldType, FileConnectorConfig,
    FileFormat, ReadRequest,
};
use arrow::array::{Array, AsArray};
use common::*;

fn ids(read: &allmende_connectors::CollectedRead) -> Vec<String> {
    let b = read.concat().unwrap();
    b.column_by_name("household_id")
        .unwrap()
        .as_string::<i32>()
        .iter()
        .map(|v| v.unwrap().to_string())
        .collect()
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[tokio::test]
async fn appended_rows_are_read_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir.path().join("r.csv"),
        "household_id,meter_id,timestamp,kwh\nHH-1,M,2025-03-03T00:00:00Z,1\nHH-2,M,2025-03-03T00:00:00Z,2\n",
    );
    let c = open(readings_config(&path, FileFormat::Csv));
    let first = read_all(&c, ReadRequest::new()).await;
    assert_eq!(ids(&first), ["HH-1", "HH-2"]);
    let cursor = first.summary.unwrap().cursor.unwrap();
    assert_eq!(
        cursor,
        Cursor::Position {
            file: "r.csv".into(),
            row: 2
        }
    );
    // Nothing new yet.
    let again = read_all(&c, ReadRequest::new().since(Some(cursor.clone()))).await;
    assert_eq!(again.num_rows(), 0);
    assert_eq!(again.summary.unwrap().cursor, Some(cursor.clone()));

    append(
        &path,
        "HH-3,M,2025-03-03T00:15:00Z,3\nHH-4,M,broken,4\nHH-5,M,2025-03-03T00:30:00Z,5\n",
    );
    let token = cursor.to_string();
    let resumed = read_all(&c, ReadRequest::new().since(Some(token.parse().unwrap()))).await;
    assert_eq!(ids(&resumed), ["HH-3", "HH-5"]);
    assert_eq!(resumed.broken.len(), 1);
    assert_eq!(
        (resumed.broken[0].row, resumed.broken[0].line),
        (4, Some(5))
    );
    assert_eq!(
        resumed.summary.unwrap().cursor,
        Some(Cursor::Position {
            file: "r.csv".into(),
            row: 5
        })
    );
}

#[tokio::test]
async fn new_delivery_files_are_picked_up_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let line = |id: &str| {
        format!(
            "{{\"household_id\":\"{id}\",\"meter_id\":\"M\",\"timestamp\":\"2025-03-03T00:00:00Z\",\"kwh\":1}}\n"
        )
    };
    write(
        &dir.path().join("2025-03-03T08.jsonl"),
        &(line("A") + &line("B")),
    );
    write(&dir.path().join("2025-03-03T09.jsonl"), &line("C"));
    let c = open(readings_config(dir.path(), FileFormat::Jsonl));
    let first = read_all(&c, ReadRequest::new()).await;
    assert_eq!(ids(&first), ["A", "B", "C"]);
    write(
        &dir.path().join("2025-03-03T10.jsonl"),
        &(line("D") + &line("E")),
    );
    append(&dir.path().join("2025-03-03T09.jsonl"), &line("C2"));
    let resumed = read_all(&c, ReadRequest::new().since(first.summary.unwrap().cursor)).await;
    assert_eq!(ids(&resumed), ["C2", "D", "E"]);
}

#[tokio::test]
async fn a_rewritten_file_invalidates_the_cursor_instead_of_losing_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = format!("{READINGS_HEADER}\n");
    for i in 0..10 {
        text.push_str(&format!("{}\n", readings_line(i)));
    }
    let path = write(&dir.path().join("r.csv"), &text);
    let c = open(readings_config(&path, FileFormat::Csv));
    let cursor = read_all(&c, ReadRequest::new())
        .await
        .summary
        .unwrap()
        .cursor;
    let mut shorter = format!("{READINGS_HEADER}\n");
    for i in 0..5 {
        shorter.push_str(&format!("{}\n", readings_line(i)));
    }
    std::fs::write(&path, shorter).unwrap();
    let err = c
        .read(ReadRequest::new().since(cursor))
        .await
        .unwrap()
        .collect_all()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid cursor: the cursor is at record 10 of `r.csv`, but the file now has only 5 records; it was rewritten"
    );
    let foreign = Cursor::Position {
        file: "other.csv".into(),
        row: 1,
    };
    let err = c
        .read(ReadRequest::new().since(Some(foreign)))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidCursor(_)), "{err}");
}

#[tokio::test]
async fn max_rows_cuts_exactly_and_defers_later_broken_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir.path().join("r.csv"),
        "household_id,meter_id,timestamp,kwh\nHH-1,M,2025-03-03T00:00:00Z,1\nHH-2,M,2025-03-03T00:00:00Z,2\nHH-3,M,bad,3\nHH-4,M,2025-03-03T00:00:00Z,4\n",
    );
    let c = open(readings_config(&path, FileFormat::Csv));
    let page1 = read_all(&c, ReadRequest::new().max_rows(2)).await;
    assert_eq!(ids(&page1), ["HH-1", "HH-2"]);
    assert!(page1.broken.is_empty(), "the broken row lies after the cut");
    let s1 = page1.summary.unwrap();
    assert!(!s1.complete);
    assert_eq!(
        s1.cursor,
        Some(Cursor::Position {
            file: "r.csv".into(),
            row: 2
        })
    );
    let page2 = read_all(&c, ReadRequest::new().since(s1.cursor).max_rows(2)).await;
    assert_eq!(ids(&page2), ["HH-4"]);
    assert_eq!(page2.broken.len(), 1);
    assert!(page2.summary.unwrap().complete);
    let none = read_all(&c, ReadRequest::new().max_rows(0)).await;
    assert_eq!(none.num_rows(), 0);
    assert!(!none.summary.unwrap().complete);
}

fn ts_config(path: &std::path::Path) -> FileConnectorConfig {
    let mut config = FileConnectorConfig::new(path, FileFormat::Csv);
    config.schema = Some(vec![
        FieldSpec::required("household_id", FieldType::String),
        FieldSpec::required("t", FieldType::Int64),
    ]);
    config.subject_column = Some("household_id".into());
    config.cursor_column = Some("t".into());
    config
}

#[tokio::test]
async fn column_cursor_resumes_inside_equal_values_and_reports_late_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir.path().join("t.csv"),
        "household_id,t\nA,1\nB,2\nC,2\nD,1\nE,2\nF,3\n",
    );
    let c = open(ts_config(&path));
    let full = read_all(&c, ReadRequest::new()).await;
    assert_eq!(ids(&full), ["A", "B", "C", "E", "F"]);
    assert_eq!(full.broken.len(), 1);
    assert_eq!(
        full.broken[0].reason,
        "cursor column `t` goes backwards: `1` after `2`"
    );
    assert_eq!(
        full.summary.clone().unwrap().cursor,
        Some(Cursor::Column {
            column: "t".into(),
            value: CursorValue::Int(3),
            count: 1
        })
    );
    // Cut between the two rows with t = 2.
    let page = read_all(&c, ReadRequest::new().max_rows(2)).await;
    assert_eq!(ids(&page), ["A", "B"]);
    let cursor = page.summary.unwrap().cursor;
    assert_eq!(
        cursor,
        Some(Cursor::Column {
            column: "t".into(),
            value: CursorValue::Int(2),
            count: 1
        })
    );
    let rest = read_all(&c, ReadRequest::new().since(cursor)).await;
    assert_eq!(ids(&rest), ["C", "E", "F"]);
    assert_eq!(
        rest.broken.len(),
        1,
        "the late row after the cut is reported"
    );

    // New rows: later ones are read, a late one is reported, not silently lost.
    append(&path, "G,3\nH,2\nI,4\n");
    let newer = read_all(&c, ReadRequest::new().since(full.summary.unwrap().cursor)).await;
    assert_eq!(ids(&newer), ["G", "I"]);
    assert_eq!(newer.broken.len(), 1);
    assert_eq!(
        newer.broken[0].reason,
        "cursor column `t` goes backwards: `2` after `3`"
    );

    let wrong = Cursor::Column {
        column: "t".into(),
        value: CursorValue::Text("x".into()),
        count: 1,
    };
    let err = c
        .read(ReadRequest::new().since(Some(wrong)))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidCursor(_)), "{err}");
}

#[tokio::test]
async fn projection_keeps_roles_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir.path().join("r.csv"),
        &format!("{READINGS_HEADER}\n{}\n", readings_line(3)),
    );
    let c = open(readings_config(&path, FileFormat::Csv));
    let d = c.describe();
    assert_eq!(d.identifying_columns(), ["household_id", "meter_id"]);
    let read = read_all(&c, ReadRequest::new().project(["kwh", "meter_id"])).await;
    let b = read.concat().unwrap();
    assert_eq!(b.schema().field(0).name(), "kwh");
    assert_eq!(
        b.schema()
            .field(1)
            .metadata()
            .get("allmende.role")
            .map(String::as_str),
        Some("identifier")
    );
    assert_eq!(b.column(1).len(), 1);
    let err = c
        .read(ReadRequest::new().project(["kwh", "kwh"]))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectorError::InvalidRequest(_)));
}
