//! Uplink messages to rows: The Things Stack v3 uplink JSON (`tts-v3`) mapped onto the declared
//! columns.
//!
//! Every column but the sequence column takes its value from a dotted path into the uplink
//! JSON: by default `device_id` → `end_device_ids.device_id`, `dev_eui` →
//! `end_device_ids.dev_eui`, `received_at` → `received_at`, `f_cnt` → `uplink_message.f_cnt`,
//! any other column `c` → `uplink_message.decoded_payload.c`; a configuration may name other
//! paths. Values are taken strictly by the column's type (a string is no number); a timestamp is
//! an RFC 3339 string. The Things Stack leaves zero values out of its JSON, so a missing
//! `uplink_message.f_cnt` is 0.
//!
//! A message that cannot become a row is skipped with a reason code ([`Skip::code`]): it is
//! counted and logged without its payload, never stored, never a panic.
//!
//! Deduplication: QoS 1 delivers a message again when its acknowledgement was lost (and The
//! Things Stack may publish an uplink again), so each uplink carries a key: SHA-256 over the
//! device id, DevEUI, frame counter and `received_at` (the network server's receive time:
//! frame counters restart when a device rejoins, the receive time tells those frames apart).
//! An uplink without `received_at` is keyed by the SHA-256 of its payload bytes, which catches
//! exact redeliveries.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ConnectorError;
use crate::schema::{FieldSpec, FieldType};

/// Why an uplink message was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The payload is not JSON (or nested too deep).
    MalformedJson,
    /// The payload is JSON but not an object.
    NotAnObject,
    /// `end_device_ids.device_id` is missing, empty or not a string.
    MissingDeviceId,
    /// A value has the wrong JSON type for its column.
    WrongType(String),
    /// A required column has no value.
    MissingValue(String),
    /// A timestamp column's value is not an RFC 3339 time.
    BadTimestamp(String),
}

impl Skip {
    /// A short stable code (metrics label, logs).
    pub fn code(&self) -> &'static str {
        match self {
            Skip::MalformedJson => "malformed-json",
            Skip::NotAnObject => "not-an-object",
            Skip::MissingDeviceId => "missing-device-id",
            Skip::WrongType(_) => "wrong-type",
            Skip::MissingValue(_) => "missing-value",
            Skip::BadTimestamp(_) => "bad-timestamp",
        }
    }

    /// The column concerned, if any (a declared name, never a value).
    pub fn column(&self) -> Option<&str> {
        match self {
            Skip::WrongType(c) | Skip::MissingValue(c) | Skip::BadTimestamp(c) => Some(c),
            _ => None,
        }
    }
}

/// An uplink ready for the buffer: its deduplication key and its values by column.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUplink {
    /// Deduplication key (see the module docs).
    pub dedupe: [u8; 32],
    /// Values by column name (timestamps as microseconds since the epoch).
    pub values: Map<String, Value>,
}

/// One mapped column.
#[derive(Debug, Clone)]
struct Column {
    name: String,
    field_type: FieldType,
    nullable: bool,
    path: Vec<String>,
}

/// How uplinks become rows for one schema.
#[derive(Debug, Clone)]
pub struct UplinkMapping {
    columns: Vec<Column>,
}

const F_CNT_PATH: [&str; 2] = ["uplink_message", "f_cnt"];

/// The default path of a column.
fn default_path(column: &str) -> Vec<String> {
    let parts: Vec<&str> = match column {
        "device_id" => vec!["end_device_ids", "device_id"],
        "dev_eui" => vec!["end_device_ids", "dev_eui"],
        "received_at" => vec!["received_at"],
        "f_cnt" => F_CNT_PATH.to_vec(),
        other => vec!["uplink_message", "decoded_payload", other],
    };
    parts.into_iter().map(str::to_owned).collect()
}

impl UplinkMapping {
    /// The mapping of `fields` (the sequence column left out), with explicit `paths` for some
    /// columns (dotted, e.g. `uplink_message.decoded_payload.temp`).
    pub fn new(
        fields: &[FieldSpec],
        sequence_column: &str,
        paths: &BTreeMap<String, String>,
    ) -> Result<Self, ConnectorError> {
        for name in paths.keys() {
            if name == sequence_column || !fields.iter().any(|f| &f.name == name) {
                return Err(ConnectorError::Config(format!(
                    "`columns` names `{}`, which is not a mapped column of the schema",
                    crate::error::snippet(name)
                )));
            }
        }
        let mut columns = Vec::new();
        for f in fields.iter().filter(|f| f.name != sequence_column) {
            let path = match paths.get(&f.name) {
                Some(p) => {
                    let parts: Vec<String> = p.split('.').map(str::to_owned).collect();
                    if parts.iter().any(String::is_empty) {
                        return Err(ConnectorError::Config(format!(
                            "the path `{}` of column `{}` has an empty part",
                            crate::error::snippet(p),
                            f.name
                        )));
                    }
                    parts
                }
                None => default_path(&f.name),
            };
            columns.push(Column {
                name: f.name.clone(),
                field_type: f.field_type,
                nullable: f.nullable,
                path,
            });
        }
        Ok(Self { columns })
    }

    /// Maps one message payload.
    pub fn parse(&self, payload: &[u8]) -> Result<NewUplink, Skip> {
        let doc: Value = serde_json::from_slice(payload).map_err(|_| Skip::MalformedJson)?;
        if !doc.is_object() {
            return Err(Skip::NotAnObject);
        }
        let device_id = match lookup(&doc, &["end_device_ids", "device_id"]) {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            _ => return Err(Skip::MissingDeviceId),
        };
        let zero = Value::from(0u8);
        let mut values = Map::new();
        for c in &self.columns {
            let path: Vec<&str> = c.path.iter().map(String::as_str).collect();
            let raw = match lookup(&doc, &path) {
                None if path == F_CNT_PATH => Some(&zero),
                other => other,
            };
            let value = match raw {
                None | Some(Value::Null) if c.nullable => Value::Null,
                None | Some(Value::Null) => return Err(Skip::MissingValue(c.name.clone())),
                Some(v) => convert(v, c)?,
            };
            values.insert(c.name.clone(), value);
        }
        let dedupe = match lookup(&doc, &["received_at"]) {
            Some(Value::String(received_at)) => {
                let dev_eui = match lookup(&doc, &["end_device_ids", "dev_eui"]) {
                    Some(Value::String(s)) => s.as_str(),
                    _ => "",
                };
                let f_cnt = match lookup(&doc, &F_CNT_PATH) {
                    Some(Value::Number(n)) => n.to_string(),
                    _ => "0".into(),
                };
                let mut h = Sha256::new();
                for part in ["tts-v3", device_id, dev_eui, &f_cnt, received_at] {
                    h.update(part.as_bytes());
                    h.update([0u8]);
                }
                h.finalize().into()
            }
            _ => Sha256::digest(payload).into(),
        };
        Ok(NewUplink { dedupe, values })
    }
}

fn lookup<'a>(doc: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut at = doc;
    for part in path {
        at = at.as_object()?.get(*part)?;
    }
    Some(at)
}

/// A JSON value as a value of the column's type.
fn convert(v: &Value, c: &Column) -> Result<Value, Skip> {
    let wrong = || Skip::WrongType(c.name.clone());
    Ok(match c.field_type {
        FieldType::String => match v {
            Value::String(_) => v.clone(),
            _ => return Err(wrong()),
        },
        FieldType::Int64 => match v.as_i64() {
            Some(i) => Value::from(i),
            None => return Err(wrong()),
        },
        FieldType::Float64 => match v.as_f64() {
            Some(f) if v.is_number() => Value::from(f),
            _ => return Err(wrong()),
        },
        FieldType::Bool => match v {
            Value::Bool(_) => v.clone(),
            _ => return Err(wrong()),
        },
        FieldType::Timestamp => {
            let Value::String(s) = v else {
                return Err(wrong());
            };
            let t = OffsetDateTime::parse(s, &Rfc3339)
                .map_err(|_| Skip::BadTimestamp(c.name.clone()))?;
            let micros = t.unix_timestamp_nanos() / 1000;
            match i64::try_from(micros) {
                Ok(m) => Value::from(m),
                Err(_) => return Err(Skip::BadTimestamp(c.name.clone())),
            }
        }
    })
}
