//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use allmende_connectors::SourceRoots;
use allmende_connectors::sample::SampleSpec;
use allmende_connectors::{
    CollectedRead, Connector, FieldSpec, FieldType, FileConnector, FileConnectorConfig, FileFormat,
    ReadRequest,
};

pub fn small_spec() -> SampleSpec {
    SampleSpec {
        households: 12,
        days: 2,
        trips_per_day: 60,
        ..SampleSpec::default()
    }
}

pub fn open(config: FileConnectorConfig) -> FileConnector {
    match FileConnector::open(config, SourceRoots::anywhere()) {
        Ok(c) => c,
        Err(e) => panic!("connector refused: {e}"),
    }
}

pub async fn read_all(c: &dyn Connector, request: ReadRequest) -> CollectedRead {
    c.read(request)
        .await
        .expect("read starts")
        .collect_all()
        .await
        .expect("read completes")
}

/// A small CSV of meter readings with a declared schema.
pub const READINGS_HEADER: &str = "household_id,meter_id,timestamp,kwh";

pub fn readings_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("household_id", FieldType::String),
        FieldSpec::required("meter_id", FieldType::String),
        FieldSpec::required("timestamp", FieldType::Timestamp),
        FieldSpec::new("kwh", FieldType::Float64),
    ]
}

pub fn readings_line(i: usize) -> String {
    format!(
        "HH-{:06},1EMH{:010},2025-03-03T{:02}:{:02}:00Z,{}.{:03}",
        i % 7 + 1,
        i % 7 + 1,
        (i / 4) % 24,
        (i % 4) * 15,
        i % 3,
        i % 1000
    )
}

pub fn readings_config(path: &Path, format: FileFormat) -> FileConnectorConfig {
    let mut c = FileConnectorConfig::new(path, format);
    c.schema = Some(readings_fields());
    c.subject_column = Some("household_id".into());
    c.identifier_columns = vec!["meter_id".into()];
    c
}

pub fn write(path: &Path, text: &str) -> PathBuf {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Open file descriptors of this process that point at `path` (Linux).
pub fn open_fds_to(path: &Path) -> usize {
    let target = std::fs::canonicalize(path).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|link| link == &target)
                .count()
        })
        .unwrap_or(0)
}
