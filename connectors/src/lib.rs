//! Allmende data-source connectors.
//!
//! A [`Connector`] describes its schema (with the data-subject column and other identifier
//! columns), streams rows as Arrow record batches with a resume cursor, reports broken rows
//! instead of dropping them, and checks its health. [`FileConnector`] reads CSV, JSON lines,
//! GeoJSON and Parquet, only below the directories a [`SourceRoots`] allows;
//! [`PostgresConnector`] reads a PostgreSQL table or view, only on the hosts it allows;
//! [`MqttBufferConnector`] serves sensor uplinks an MQTT subscriber buffered durably; [`mds`]
//! pulls, validates and serves hourly MDS 2.0 batches of an obliged mobility provider;
//! [`SensorThingsConnector`] reads observations of an OGC SensorThings API service. The `conformance` feature exposes the suite every connector must pass;
//! [`sample`] generates the Munich demo data. See `README.md` for the semantics.

pub mod confine;
pub mod connector;
pub mod error;
pub mod files;
pub mod mds;
pub mod mqtt;
pub mod postgres;
pub mod sample;
pub mod schema;
pub mod sensorthings;
pub mod write;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use confine::{Refusal, SourceRoots};
pub use connector::{
    BrokenRow, Cancelled, CollectedRead, Connector, ConnectorDescription, Cursor, CursorValue,
    DEFAULT_BATCH_SIZE, ErrorHook, HealthReport, MAX_BATCH_SIZE, Predicate, PredicateOp,
    PredicateValue, READ_QUEUE_CAPACITY, ReadItem, ReadProgress, ReadRequest, ReadSink, ReadStream,
    ReadSummary, spawn_reader,
};
pub use error::ConnectorError;
pub use files::{
    CsvOptions, FileConnector, FileConnectorConfig, FileFormat, GeoJsonOptions, GeometryEncoding,
};
pub use mqtt::{MqttBufferConnector, MqttConfig};
pub use postgres::{PostgresConfig, PostgresConnector, TlsMode};
pub use schema::{FieldSpec, FieldType};
pub use sensorthings::{SensorThingsConfig, SensorThingsConnector};
