//! The demo's recorded LoRaWAN uplinks: SWM's environment sensors (temperature, humidity, PM10)
//! as The Things Stack v3 uplink JSON, one message per line in
//! `connectors/data/lorawan-uplinks.jsonl` (bundled into the binary).
//!
//! The file was made once by [`generate`] (deterministic; a test checks the bundled file is its
//! output, and `ALLMENDE_WRITE_RECORDING=1` rewrites it). The demo replays it through a local
//! mosquitto when one is installed ([`replay`]) or, without one, serves the same rows from a
//! JSON-lines file ([`write_rows`]) mapped by the same [`UplinkMapping`] the subscriber uses.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{LocalMosquitto, UplinkMapping};
use crate::error::ConnectorError;
use crate::schema::{FieldSpec, FieldType};

/// The recorded uplinks, one JSON message per line.
pub const RECORDED_UPLINKS: &str = include_str!("../../data/lorawan-uplinks.jsonl");
/// The application and tenant the uplinks belong to (topics `v3/<app>@<tenant>/devices/<id>/up`).
pub const APPLICATION: &str = "environment@swm";
/// The topic filter of every recorded device.
pub const TOPIC_FILTER: &str = "v3/environment@swm/devices/+/up";
/// The sequence (cursor) column.
pub const SEQUENCE_COLUMN: &str = "seq";

/// Sensors recorded.
const DEVICES: u32 = 5;
/// Uplinks per sensor (every 15 minutes for 12 hours).
const PER_DEVICE: u32 = 48;
/// 2025-03-03T06:00:00Z.
const START: i64 = 1_740_981_600;

/// The dataset's columns: the sequence column, then what the mapping takes from each uplink.
pub fn environment_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required(SEQUENCE_COLUMN, FieldType::Int64),
        FieldSpec::required("device_id", FieldType::String),
        FieldSpec::new("dev_eui", FieldType::String),
        FieldSpec::required("received_at", FieldType::Timestamp),
        FieldSpec::required("f_cnt", FieldType::Int64),
        FieldSpec::new("temperature", FieldType::Float64),
        FieldSpec::new("humidity", FieldType::Float64),
        FieldSpec::new("pm10", FieldType::Float64),
    ]
}

/// A small deterministic pseudo-random sequence (no dependency, same output everywhere).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 11) as f64) / ((1u64 << 53) as f64)
    }
}

/// The recording: every device's uplinks in receive order, one JSON message per line.
pub fn generate() -> String {
    let mut rng = Lcg(0x5357_4d4c_6f52_6157);
    let mut out = String::new();
    for k in 0..PER_DEVICE {
        for d in 0..DEVICES {
            let t = START + i64::from(k) * 900 + i64::from(d) * 7;
            let received = OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
            let hour = f64::from(k) / 4.0;
            let temperature = 4.0
                + 6.0 * (hour / 12.0 * std::f64::consts::PI).sin()
                + f64::from(d) * 0.4
                + rng.next()
                - 0.5;
            let humidity = 78.0 - 3.0 * hour + rng.next() * 4.0;
            let pm10 = 14.0 + f64::from(d) * 2.0 + rng.next() * 9.0;
            let round = |v: f64| (v * 10.0).round() / 10.0;
            let device = format!("env-{:02}", d + 1);
            let message = json!({
                "end_device_ids": {
                    "device_id": device,
                    "application_ids": { "application_id": "environment" },
                    "dev_eui": format!("70B3D57ED0060{:03X}", d + 1),
                    "dev_addr": format!("260B{:04X}", 0x4100 + d),
                },
                "correlation_ids": [format!("as:up:{:08X}{:04X}", t, k)],
                "received_at": received,
                "uplink_message": {
                    "f_port": 2,
                    "f_cnt": k + 1,
                    "decoded_payload": {
                        "temperature": round(temperature),
                        "humidity": round(humidity),
                        "pm10": round(pm10),
                    },
                    "rx_metadata": [{
                        "gateway_ids": { "gateway_id": "swm-gw-stachus" },
                        "rssi": -70 - i64::from(d) * 6,
                        "snr": 7.5,
                    }],
                    "settings": { "data_rate": { "lora": { "bandwidth": 125_000, "spreading_factor": 7 + d % 3 } } },
                },
            });
            out.push_str(&sorted(message).to_string());
            out.push('\n');
        }
    }
    out
}

/// `v` with every object's keys in sorted order, whether or not serde_json
/// keeps insertion order (its `preserve_order` feature, which another crate
/// in the build may turn on), so the recording is the same bytes either way.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let keys: BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(keys.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Each recorded uplink with the topic it is published on.
pub fn uplinks() -> impl Iterator<Item = (String, &'static str)> {
    RECORDED_UPLINKS.lines().filter(|l| !l.is_empty()).map(|l| {
        let device = serde_json::from_str::<Value>(l)
            .ok()
            .and_then(|v| {
                v.get("end_device_ids")?
                    .get("device_id")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown".into());
        (format!("v3/{APPLICATION}/devices/{device}/up"), l)
    })
}

/// Publishes every recorded uplink to `broker` (QoS 1, one `mosquitto_pub` per device);
/// returns how many.
pub fn replay(broker: &LocalMosquitto) -> Result<u64, ConnectorError> {
    let mut by_topic: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (topic, line) in uplinks() {
        by_topic.entry(topic).or_default().push(line);
    }
    let mut n = 0u64;
    for (topic, lines) in by_topic {
        broker.publish_lines(&topic, &lines, 1)?;
        n += lines.len() as u64;
    }
    Ok(n)
}

/// Writes the recorded uplinks as the rows the MQTT subscriber would store (mapped by
/// [`UplinkMapping`] onto [`environment_fields`], the sequence numbered from 1) to `path`, one
/// JSON object per line; returns how many.
pub fn write_rows(path: &Path) -> Result<u64, ConnectorError> {
    let fields = environment_fields();
    let mapping = UplinkMapping::new(&fields, SEQUENCE_COLUMN, &BTreeMap::new())?;
    let write_err = |e: std::io::Error| ConnectorError::Write {
        file: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(write_err)?);
    let mut seq = 0u64;
    for (_, line) in uplinks() {
        let Ok(uplink) = mapping.parse(line.as_bytes()) else {
            continue;
        };
        seq += 1;
        let mut row = uplink.values;
        for f in fields
            .iter()
            .filter(|f| f.field_type == FieldType::Timestamp)
        {
            if let Some(micros) = row.get(&f.name).and_then(Value::as_i64) {
                let text = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                    .ok()
                    .and_then(|t| t.format(&Rfc3339).ok())
                    .unwrap_or_default();
                row.insert(f.name.clone(), Value::String(text));
            }
        }
        row.insert(SEQUENCE_COLUMN.into(), Value::from(seq));
        writeln!(out, "{}", Value::Object(row)).map_err(write_err)?;
    }
    out.flush().map_err(write_err)?;
    Ok(seq)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_recording_is_the_generators_output() {
        let generated = generate();
        if std::env::var_os("ALLMENDE_WRITE_RECORDING").is_some() {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/lorawan-uplinks.jsonl");
            std::fs::write(path, &generated).unwrap();
            return;
        }
        assert_eq!(RECORDED_UPLINKS, generated);
        assert_eq!(uplinks().count(), (DEVICES * PER_DEVICE) as usize);
    }

    #[test]
    fn every_recorded_uplink_maps_onto_the_columns() {
        let mapping =
            UplinkMapping::new(&environment_fields(), SEQUENCE_COLUMN, &BTreeMap::new()).unwrap();
        for (topic, line) in uplinks() {
            assert!(
                topic.starts_with("v3/environment@swm/devices/env-0"),
                "{topic}"
            );
            let u = mapping.parse(line.as_bytes()).unwrap();
            assert!(u.values["temperature"].is_f64(), "{line}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        assert_eq!(write_rows(&path).unwrap(), u64::from(DEVICES * PER_DEVICE));
        let first = std::fs::read_to_string(&path).unwrap();
        let first: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert_eq!(first["seq"], 1);
        assert_eq!(first["device_id"], "env-01");
        assert_eq!(first["received_at"], "2025-03-03T06:00:00Z");
    }
}
