//! The demo's MDS feed of `scooter-co`: hourly batch files in MDS 2.0 shape made from the
//! generated scooter trips ([`crate::sample`]), as a company would export them for its provider
//! endpoint. One file per UTC hour, named `YYYY-MM-DDTHH.json`, holding
//! `{"version": "2.0.0", "trips": [...], "events": [...]}`: the trips that ended in the hour
//! and the vehicle events (`trip_start`, `trip_end`) that happened in it. An hour may be left
//! out (the demo's missed delivery): its file is simply not written.
//!
//! [`vehicles_status`] derives the `/vehicles/status` snapshot from a batch: the last known
//! event of each vehicle, with its position as the last telemetry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{HOUR_MS, VERSION, format_hour};
use crate::error::ConnectorError;
use crate::sample::{SampleSpec, trips};

/// `scooter-co`'s MDS `provider_id` in the demo.
pub const PROVIDER_ID: &str = "5f7114d1-4091-46ee-b492-e55875f7de00";

/// The file name of the batch of the hour starting at `hour_ms`.
pub fn batch_file_name(hour_ms: i64) -> Result<String, ConnectorError> {
    Ok(format!("{}.json", format_hour(hour_ms)?))
}

/// A UUID-shaped id derived from `seed` (deterministic, version-4 layout).
pub fn derived_uuid(seed: &str) -> String {
    let h = Sha256::digest(seed.as_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &x[0..8],
        &x[8..12],
        &x[13..16],
        (u8::from_str_radix(&x[16..17], 16).unwrap_or(0) & 0x3) | 0x8,
        &x[17..20],
        &x[20..32]
    )
}

fn gps(p: (f64, f64)) -> Value {
    json!({ "lat": p.0, "lng": p.1 })
}

/// Every hour of `spec` (from its first day for `spec.days` days, plus any hour a generated trip
/// ends in) with its batch, in MDS 2.0 shape.
pub fn hourly_batches(spec: &SampleSpec, provider_id: &str) -> BTreeMap<i64, Value> {
    let first = spec.start * 1000;
    let mut hours: BTreeMap<i64, (Vec<Value>, Vec<Value>)> = (0..i64::from(spec.days) * 24)
        .map(|h| (first + h * HOUR_MS, (Vec::new(), Vec::new())))
        .collect();
    let hour_of = |ms: i64| ms - ms.rem_euclid(HOUR_MS);
    for t in trips(spec) {
        let (start, end) = (t.start * 1000, t.end * 1000);
        hours.entry(hour_of(end)).or_default().0.push(json!({
            "provider_id": provider_id,
            "device_id": t.device,
            "trip_id": t.id,
            "start_time": start,
            "end_time": end,
            "start_location": gps(t.from),
            "end_location": gps(t.to),
            "duration": t.end - t.start,
            "distance": t.distance,
            "trip_type": ["rider"],
        }));
        for (kind, state, at, place) in [
            ("trip_start", "on_trip", start, t.from),
            ("trip_end", "available", end, t.to),
        ] {
            hours.entry(hour_of(at)).or_default().1.push(json!({
                "device_id": t.device,
                "provider_id": provider_id,
                "event_id": derived_uuid(&format!("{}/{kind}", t.id)),
                "vehicle_state": state,
                "event_types": [kind],
                "timestamp": at,
                "location": gps(place),
                "trip_ids": [t.id],
            }));
        }
    }
    hours
        .into_iter()
        .map(|(h, (trips, mut events))| {
            events.sort_by_key(|e| e["timestamp"].as_i64().unwrap_or(0));
            (
                h,
                json!({ "version": VERSION, "trips": trips, "events": events }),
            )
        })
        .collect()
}

/// Writes the hourly batch files of `spec` into `dir`, leaving out the hours starting at the
/// times in `missed` (unix ms). Returns the files written, by hour.
pub fn write_batches(
    dir: &Path,
    spec: &SampleSpec,
    provider_id: &str,
    missed: &[i64],
) -> Result<Vec<(i64, PathBuf)>, ConnectorError> {
    std::fs::create_dir_all(dir).map_err(|e| ConnectorError::Write {
        file: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut out = Vec::new();
    for (hour, batch) in hourly_batches(spec, provider_id) {
        if missed.contains(&hour) {
            continue;
        }
        let path = dir.join(batch_file_name(hour)?);
        let bytes = serde_json::to_vec(&batch).map_err(|e| ConnectorError::Write {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, bytes).map_err(|e| ConnectorError::Write {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        out.push((hour, path));
    }
    Ok(out)
}

/// The `/vehicles/status` records of a batch: per vehicle its last event and, as its last
/// telemetry, that event's time and place.
pub fn vehicles_status(batch: &Value) -> Vec<Value> {
    let mut last: BTreeMap<String, &Value> = BTreeMap::new();
    for e in batch
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(device), Some(at)) = (
            e.get("device_id").and_then(Value::as_str),
            e.get("timestamp").and_then(Value::as_i64),
        ) else {
            continue;
        };
        let newer = last.get(device).is_none_or(|p| {
            p.get("timestamp")
                .and_then(Value::as_i64)
                .unwrap_or(i64::MIN)
                <= at
        });
        if newer {
            last.insert(device.to_owned(), e);
        }
    }
    last.into_iter()
        .map(|(device, e)| {
            let on_trip = e.get("vehicle_state").and_then(Value::as_str) == Some("on_trip");
            let event_id = e.get("event_id").and_then(Value::as_str).unwrap_or("");
            json!({
                "device_id": device,
                "provider_id": e.get("provider_id").cloned().unwrap_or(Value::Null),
                "last_event": e,
                "last_telemetry": {
                    "device_id": device,
                    "provider_id": e.get("provider_id").cloned().unwrap_or(Value::Null),
                    "telemetry_id": derived_uuid(&format!("{event_id}/telemetry")),
                    "timestamp": e.get("timestamp").cloned().unwrap_or(Value::Null),
                    "trip_ids": if on_trip { e.get("trip_ids").cloned().unwrap_or(Value::Null) } else { Value::Null },
                    "journey_id": Value::Null,
                    "location": e.get("location").cloned().unwrap_or(Value::Null),
                },
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        reason = "test"
    )]
    use super::*;
    use crate::mds::Part;
    use crate::mds::validate::{check_batch, is_uuid};

    fn small() -> SampleSpec {
        SampleSpec {
            days: 1,
            trips_per_day: 60,
            ..SampleSpec::default()
        }
    }

    #[test]
    fn every_generated_hour_is_a_valid_mds_batch() {
        let batches = hourly_batches(&small(), PROVIDER_ID);
        assert!(batches.len() >= 24);
        let mut trips = 0;
        for (hour, b) in &batches {
            let status = json!({"version": VERSION, "vehicles_status": vehicles_status(b)});
            let ok = check_batch(
                *hour,
                &[
                    (Part::Trips, b.clone()),
                    (Part::Events, b.clone()),
                    (Part::Vehicles, status),
                ],
                Some(PROVIDER_ID),
            )
            .unwrap_or_else(|e| panic!("{}: {e:?}", format_hour(*hour).unwrap()));
            trips += ok.trips.len();
        }
        assert_eq!(trips, 60);
        assert!(is_uuid(&derived_uuid("x")));
    }

    #[test]
    fn missed_hours_get_no_file_and_the_rest_are_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let spec = small();
        let missed = spec.start * 1000 + 10 * HOUR_MS;
        let written = write_batches(dir.path(), &spec, PROVIDER_ID, &[missed]).unwrap();
        assert_eq!(written.len(), hourly_batches(&spec, PROVIDER_ID).len() - 1);
        assert!(!dir.path().join(batch_file_name(missed).unwrap()).exists());
        let first = std::fs::read(&written[0].1).unwrap();
        let again = tempfile::tempdir().unwrap();
        let w2 = write_batches(again.path(), &spec, PROVIDER_ID, &[]).unwrap();
        assert_eq!(std::fs::read(&w2[0].1).unwrap(), first);
        assert_eq!(
            written[0].1.file_name().unwrap().to_str().unwrap(),
            "2025-03-03T00.json"
        );
    }
}
