//! The MQTT connector: sensor uplinks (LoRaWAN through The Things Stack, `tts-v3` JSON) taken
//! from an MQTT broker, buffered durably by the node, and served as a dataset.
//!
//! Three parts:
//! - [`ingest`]: the subscriber. MQTT 5 over TCP or TLS (rustls with ring), QoS 1, a persistent
//!   session (clean start off, a session expiry), and manual acknowledgements: a message is
//!   acknowledged to the broker only after its row was committed durably by the
//!   [`UplinkBuffer`], so neither a broker nor a node restart loses an acknowledged message.
//!   Messages received together are committed in one durable write and then acknowledged
//!   together (group commit). It reconnects with backoff.
//! - [`UplinkBuffer`]: where uplinks are kept, in receive order (a sequence number per
//!   dataset), deduplicated, pruned by a retention window. The node implements it on its store;
//!   [`MemoryBuffer`] is a volatile one for tests.
//! - [`MqttBufferConnector`]: the buffer as a [`Connector`]: rows in sequence order, the
//!   sequence number in the declared sequence column (the cursor column), so reads resume
//!   exactly.
//!
//! The broker's host must be one the node allows (`sources.mqtt_hosts`, checked by
//! [`SourceRoots::check_mqtt_host`]); the optional credentials and CA files are read through
//! the node's source roots like any local source and never shown.

mod buffer;
pub mod ingest;
pub mod recorded;
mod server;
pub mod uplink;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use buffer::{Appended, MemoryBuffer, StoredUplink, UplinkBuffer};
pub use ingest::{IngestCounters, IngestHandle, IngestObserver, IngestStatus, spawn_ingest};
pub use server::{LocalMosquitto, find_mosquitto, find_mosquitto_pub};
pub use uplink::{NewUplink, Skip, UplinkMapping};

use crate::confine::SourceRoots;
use crate::connector::{
    BrokenRow, Connector, ConnectorDescription, Cursor, CursorValue, HealthReport, ReadItem,
    ReadRequest, ReadStream, ReadSummary, spawn_reader,
};
use crate::error::{ConnectorError, snippet};
use crate::schema::{FieldSpec, FieldType, TIMESTAMP_TIMEZONE, build_schema};

/// Largest credentials file read.
const MAX_SECRET_BYTES: u64 = 64 << 10;
/// Largest CA file read.
const MAX_CA_BYTES: u64 = 1 << 20;
/// Largest accepted `max_payload_bytes`.
pub const MAX_PAYLOAD_LIMIT: u32 = 16 << 20;

/// The uplink formats understood.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UplinkFormat {
    /// The Things Stack v3 uplink message JSON.
    #[default]
    TtsV3,
}

fn default_sequence_column() -> Option<String> {
    Some("seq".into())
}
fn default_retention_hours() -> u64 {
    24 * 7
}
fn default_max_payload() -> u32 {
    256 << 10
}
fn default_session_expiry() -> u32 {
    7 * 24 * 3600
}

/// Configuration of an MQTT source (JSON in a registration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (plain TCP, port 1883 by default) or `mqtts://host[:port]` (TLS,
    /// 8883); the host must be in the node's `sources.mqtt_hosts`.
    pub broker: String,
    /// The topic filter subscribed to (QoS 1), e.g. `v3/app@tenant/devices/+/up`.
    pub topic: String,
    /// The MQTT client id; the persistent session on the broker belongs to it.
    pub client_id: String,
    /// The uplink format.
    #[serde(default)]
    pub format: UplinkFormat,
    /// CA certificates (PEM) the broker is verified against (required with `mqtts://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the user name on its first line and the password on its second. Read
    /// through the node's source roots; never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// Uplinks older than this (by the node's receive time) are removed by the retention sweep.
    #[serde(default = "default_retention_hours")]
    pub retention_hours: u64,
    /// Largest MQTT packet accepted (sent to the broker as the MQTT 5 maximum packet size, so
    /// the broker drops larger messages instead of sending them).
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: u32,
    /// How long the broker keeps the session (and queues QoS 1 messages) while the node is
    /// away, in seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// Explicit dotted paths into the uplink JSON by column (see [`uplink`] for the defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Declared columns (the dataset's, by default), including the sequence column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// Column holding the data-subject id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_column: Option<String>,
    /// Other identifying columns (e.g. `device_id`, `dev_eui`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier_columns: Vec<String>,
    /// The `int64` column holding the node's receive sequence number; reads are ordered and
    /// resumed by it (`seq` unless set).
    #[serde(default = "default_sequence_column")]
    pub cursor_column: Option<String>,
}

impl MqttConfig {
    /// A configuration subscribing `client_id` to `topic` on `broker`.
    pub fn new(broker: &str, topic: &str, client_id: &str) -> Self {
        Self {
            broker: broker.into(),
            topic: topic.into(),
            client_id: client_id.into(),
            format: UplinkFormat::TtsV3,
            ca_file: None,
            credentials_file: None,
            retention_hours: default_retention_hours(),
            max_payload_bytes: default_max_payload(),
            session_expiry_secs: default_session_expiry(),
            columns: BTreeMap::new(),
            schema: None,
            subject_column: None,
            identifier_columns: Vec::new(),
            cursor_column: default_sequence_column(),
        }
    }

    /// The sequence (cursor) column.
    pub fn sequence_column(&self) -> Result<&str, ConnectorError> {
        self.cursor_column.as_deref().ok_or_else(|| {
            ConnectorError::Config(
                "an mqtt source needs its sequence column (`cursor_column`)".into(),
            )
        })
    }

    /// The retention window.
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.retention_hours.saturating_mul(3600))
    }

    /// Checks what can be checked without the network and returns the broker's address.
    pub fn check(&self, roots: &SourceRoots) -> Result<Endpoint, ConnectorError> {
        let endpoint = Endpoint::parse(&self.broker)?;
        roots.check_mqtt_host(&endpoint.host)?;
        if self.topic.is_empty() || self.topic.len() > 1024 || self.topic.contains('\0') {
            return Err(ConnectorError::Config(
                "the topic filter must be 1 to 1024 bytes without NUL".into(),
            ));
        }
        if self.client_id.is_empty()
            || self.client_id.len() > 128
            || self.client_id.chars().any(char::is_control)
        {
            return Err(ConnectorError::Config(
                "the client id must be 1 to 128 bytes without control characters".into(),
            ));
        }
        if self.max_payload_bytes < 1024 || self.max_payload_bytes > MAX_PAYLOAD_LIMIT {
            return Err(ConnectorError::Config(format!(
                "`max_payload_bytes` must be between 1024 and {MAX_PAYLOAD_LIMIT}, not {}",
                self.max_payload_bytes
            )));
        }
        if self.retention_hours == 0 {
            return Err(ConnectorError::Config(
                "`retention_hours` must be at least 1".into(),
            ));
        }
        if endpoint.tls && self.ca_file.is_none() {
            return Err(ConnectorError::Config(
                "an `mqtts://` broker needs `ca_file`".into(),
            ));
        }
        if !endpoint.tls && self.ca_file.is_some() {
            return Err(ConnectorError::Config(
                "`ca_file` is only used with an `mqtts://` broker".into(),
            ));
        }
        Ok(endpoint)
    }

    /// The credentials (user name, password), read through `roots`.
    fn credentials(&self, roots: &SourceRoots) -> Result<Option<(String, String)>, ConnectorError> {
        let Some(path) = &self.credentials_file else {
            return Ok(None);
        };
        let text = roots.read_small(path, "credentials file", MAX_SECRET_BYTES)?;
        let text = String::from_utf8(text)
            .map_err(|_| ConnectorError::Config("the credentials file is not UTF-8".into()))?;
        let mut lines = text.lines();
        match (lines.next(), lines.next()) {
            (Some(user), Some(password)) if !user.is_empty() => {
                Ok(Some((user.to_owned(), password.to_owned())))
            }
            _ => Err(ConnectorError::Config(
                "the credentials file must hold the user name and the password on two lines".into(),
            )),
        }
    }

    /// The TLS client configuration (ring), if the broker is `mqtts://`.
    fn tls(
        &self,
        roots: &SourceRoots,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, ConnectorError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem = roots.read_small(path, "CA file", MAX_CA_BYTES)?;
        crate::postgres::tls::client_config(&pem).map(Some)
    }
}

/// A broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS.
    pub tls: bool,
}

impl Endpoint {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub fn parse(url: &str) -> Result<Self, ConnectorError> {
        let bad = |why: &str| ConnectorError::Config(format!("broker `{}` {why}", snippet(url)));
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(bad("must start with `mqtt://` or `mqtts://`"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(bad("must be only a host and a port"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed `[`"))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("names no host"));
        }
        let port = match port {
            None => {
                if tls {
                    8883
                } else {
                    1883
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has an invalid port"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// The declared columns of a buffer served by [`MqttBufferConnector::serving`].
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// Every column, the sequence column included.
    pub fields: &'a [FieldSpec],
    /// The data-subject column, if any.
    pub subject_column: Option<&'a str>,
    /// Other identifying columns.
    pub identifier_columns: &'a [String],
    /// The `int64` sequence (cursor) column.
    pub sequence_column: &'a str,
}

/// A dataset's uplink buffer as a [`Connector`].
#[derive(Clone)]
pub struct MqttBufferConnector {
    description: ConnectorDescription,
    buffer: Arc<dyn UplinkBuffer>,
    /// Index of the sequence column in the schema.
    sequence: usize,
    /// The dataset the buffer belongs to (broken-row locations).
    label: String,
}

impl std::fmt::Debug for MqttBufferConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBufferConnector")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl MqttBufferConnector {
    /// The connector of `config`'s buffer (`label`: the dataset). Checks the configuration
    /// (host allowed, secrets readable through `roots`, schema with an `int64` sequence column);
    /// does not connect: the subscriber is started separately ([`spawn_ingest`]).
    pub fn open(
        config: &MqttConfig,
        roots: &SourceRoots,
        buffer: Arc<dyn UplinkBuffer>,
        label: &str,
    ) -> Result<Self, ConnectorError> {
        config.check(roots)?;
        config.credentials(roots)?;
        config.tls(roots)?;
        let fields = config.schema.as_ref().ok_or_else(|| {
            ConnectorError::Config("an mqtt source needs its declared schema".into())
        })?;
        let sequence_column = config.sequence_column()?;
        UplinkMapping::new(fields, sequence_column, &config.columns)?;
        Self::serving(
            Columns {
                fields,
                subject_column: config.subject_column.as_deref(),
                identifier_columns: &config.identifier_columns,
                sequence_column,
            },
            "mqtt",
            format!(
                "mqtt uplinks of `{label}` (topic `{}`)",
                snippet(&config.topic)
            ),
            buffer,
            label,
        )
    }

    /// A connector serving any buffer of rows numbered by a sequence (the uplinks of an mqtt
    /// source, the trips an mds source imported): `columns` declare the schema, the `int64`
    /// sequence column is the cursor column; `kind` and `source` describe it.
    pub fn serving(
        columns: Columns<'_>,
        kind: &str,
        source: String,
        buffer: Arc<dyn UplinkBuffer>,
        label: &str,
    ) -> Result<Self, ConnectorError> {
        let Columns {
            fields,
            subject_column,
            identifier_columns,
            sequence_column,
        } = columns;
        let schema = build_schema(fields, subject_column, identifier_columns)?;
        let sequence = schema.index_of(sequence_column).map_err(|_| {
            ConnectorError::Config(format!(
                "sequence column `{}` is not in the schema",
                snippet(sequence_column)
            ))
        })?;
        if fields[sequence].field_type != FieldType::Int64 {
            return Err(ConnectorError::Config(format!(
                "sequence column `{sequence_column}` must be int64"
            )));
        }
        if subject_column == Some(sequence_column)
            || identifier_columns.iter().any(|c| c == sequence_column)
        {
            return Err(ConnectorError::Config(format!(
                "sequence column `{sequence_column}` cannot identify anyone"
            )));
        }
        Ok(Self {
            description: ConnectorDescription {
                kind: kind.into(),
                source,
                schema,
                subject_column: subject_column.map(str::to_owned),
                identifier_columns: identifier_columns.to_vec(),
                cursor_column: Some(sequence_column.to_owned()),
            },
            buffer,
            sequence,
            label: label.to_owned(),
        })
    }

    /// The buffer read.
    pub fn buffer(&self) -> &Arc<dyn UplinkBuffer> {
        &self.buffer
    }

    /// The sequence number a cursor resumes after.
    fn resume_after(&self, since: Option<&Cursor>) -> Result<u64, ConnectorError> {
        let column = self.description.schema.field(self.sequence).name();
        match since {
            None => Ok(0),
            Some(Cursor::Column {
                column: c,
                value: CursorValue::Int(v),
                ..
            }) if c == column && *v >= 0 => Ok(u64::try_from(*v).unwrap_or(0)),
            Some(other) => Err(ConnectorError::InvalidCursor(format!(
                "`{}` is not a cursor of this mqtt source (it resumes by `{column}`)",
                snippet(&other.to_string())
            ))),
        }
    }
}

/// Builds one batch of `rows` with the projected columns; rows whose stored values no longer
/// fit the schema are returned as broken instead.
/// A row's non-null value of `column`.
fn value<'a>(row: &'a StoredUplink, column: &str) -> Option<&'a Value> {
    row.values.get(column).filter(|v| !v.is_null())
}

fn build_batch(
    schema: &SchemaRef,
    full: &SchemaRef,
    indices: &[usize],
    sequence: usize,
    rows: &[StoredUplink],
) -> Result<RecordBatch, ConnectorError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(indices.len());
    for &i in indices {
        let field = full.field(i);
        let t = FieldType::from_data_type(field.data_type()).ok_or_else(|| {
            ConnectorError::Internal(format!("column `{}` has no connector type", field.name()))
        })?;
        let name = field.name();
        let array: ArrayRef = if i == sequence {
            let mut b = Int64Builder::with_capacity(rows.len());
            for r in rows {
                b.append_value(i64::try_from(r.seq).unwrap_or(i64::MAX));
            }
            Arc::new(b.finish())
        } else {
            match t {
                FieldType::String => {
                    let mut b = StringBuilder::new();
                    for r in rows {
                        b.append_option(value(r, name).and_then(Value::as_str));
                    }
                    Arc::new(b.finish())
                }
                FieldType::Int64 => {
                    let mut b = Int64Builder::with_capacity(rows.len());
                    for r in rows {
                        b.append_option(value(r, name).and_then(Value::as_i64));
                    }
                    Arc::new(b.finish())
                }
                FieldType::Float64 => {
                    let mut b = Float64Builder::with_capacity(rows.len());
                    for r in rows {
                        b.append_option(value(r, name).and_then(Value::as_f64));
                    }
                    Arc::new(b.finish())
                }
                FieldType::Bool => {
                    let mut b = BooleanBuilder::with_capacity(rows.len());
                    for r in rows {
                        b.append_option(value(r, name).and_then(Value::as_bool));
                    }
                    Arc::new(b.finish())
                }
                FieldType::Timestamp => {
                    let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len())
                        .with_timezone(TIMESTAMP_TIMEZONE);
                    for r in rows {
                        b.append_option(value(r, name).and_then(Value::as_i64));
                    }
                    Arc::new(b.finish())
                }
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| ConnectorError::Internal(format!("cannot build a batch: {e}")))
}

/// Why a stored uplink no longer fits the schema (a registration changed its columns).
fn misfit(full: &SchemaRef, sequence: usize, row: &StoredUplink) -> Option<String> {
    for (i, field) in full.fields().iter().enumerate() {
        if i == sequence {
            continue;
        }
        let v = row.values.get(field.name()).filter(|v| !v.is_null());
        let Some(v) = v else {
            if field.is_nullable() {
                continue;
            }
            return Some(format!("required column `{}` has no value", field.name()));
        };
        let fits = match FieldType::from_data_type(field.data_type()) {
            Some(FieldType::String) => v.is_string(),
            Some(FieldType::Int64 | FieldType::Timestamp) => v.as_i64().is_some(),
            Some(FieldType::Float64) => v.is_number(),
            Some(FieldType::Bool) => v.is_boolean(),
            None => false,
        };
        if !fits {
            return Some(format!(
                "column `{}` holds a value of another type",
                field.name()
            ));
        }
    }
    None
}

impl Connector for MqttBufferConnector {
    fn describe(&self) -> &ConnectorDescription {
        &self.description
    }

    fn read(&self, request: ReadRequest) -> BoxFuture<'_, Result<ReadStream, ConnectorError>> {
        Box::pin(async move {
            let (schema, indices) = request.resolve(&self.description.schema)?;
            let after = self.resume_after(request.since.as_ref())?;
            let this = self.clone();
            let out_schema = schema.clone();
            spawn_reader(
                schema,
                |_| Ok(()),
                move |(), sink| {
                    let full = this.description.schema.clone();
                    let column = full.field(this.sequence).name().clone();
                    let cursor_at = |seq: u64| Cursor::Column {
                        column: column.clone(),
                        value: CursorValue::Int(i64::try_from(seq).unwrap_or(i64::MAX)),
                        count: 1,
                    };
                    let mut last = after;
                    let mut rows_read = 0u64;
                    let mut rows_broken = 0u64;
                    loop {
                        let room = request.max_rows.map_or(request.batch_size as u64, |m| {
                            (m - rows_read).min(request.batch_size as u64)
                        });
                        if room == 0 {
                            let more = !this.buffer.scan(last, 1)?.is_empty();
                            return Ok(ReadSummary {
                                rows_read,
                                rows_broken,
                                cursor: (last > 0 || request.since.is_some())
                                    .then(|| cursor_at(last)),
                                complete: !more,
                            });
                        }
                        let chunk = this.buffer.scan(last, usize::try_from(room).unwrap_or(1))?;
                        if chunk.is_empty() {
                            return Ok(ReadSummary {
                                rows_read,
                                rows_broken,
                                cursor: (last > 0 || request.since.is_some())
                                    .then(|| cursor_at(last)),
                                complete: true,
                            });
                        }
                        sink.progress().add_scanned(chunk.len() as u64);
                        let mut good = Vec::with_capacity(chunk.len());
                        for row in chunk {
                            if let Some(reason) = misfit(&full, this.sequence, &row) {
                                // Rows before it go out first, so the cursor stays exact.
                                if !good.is_empty() {
                                    let batch = build_batch(
                                        &out_schema,
                                        &full,
                                        &indices,
                                        this.sequence,
                                        &good,
                                    )?;
                                    rows_read += good.len() as u64;
                                    if sink
                                        .send(ReadItem::Batch {
                                            batch,
                                            cursor: cursor_at(last),
                                        })
                                        .is_err()
                                    {
                                        return Err(ConnectorError::Internal(
                                            "the read was cancelled".into(),
                                        ));
                                    }
                                    good.clear();
                                }
                                last = row.seq;
                                rows_broken += 1;
                                let broken = BrokenRow {
                                    file: this.label.clone(),
                                    row: row.seq,
                                    line: None,
                                    reason,
                                };
                                if sink.send(ReadItem::Broken(broken)).is_err() {
                                    return Err(ConnectorError::Internal(
                                        "the read was cancelled".into(),
                                    ));
                                }
                                continue;
                            }
                            last = row.seq;
                            good.push(row);
                        }
                        if !good.is_empty() {
                            let batch =
                                build_batch(&out_schema, &full, &indices, this.sequence, &good)?;
                            rows_read += good.len() as u64;
                            if sink
                                .send(ReadItem::Batch {
                                    batch,
                                    cursor: cursor_at(last),
                                })
                                .is_err()
                            {
                                return Err(ConnectorError::Internal(
                                    "the read was cancelled".into(),
                                ));
                            }
                        }
                    }
                },
            )
            .await
        })
    }

    fn health(&self) -> BoxFuture<'_, Result<HealthReport, ConnectorError>> {
        Box::pin(async move {
            let n = self.buffer.buffered()?;
            Ok(HealthReport {
                detail: format!("{n} uplinks buffered"),
            })
        })
    }
}
