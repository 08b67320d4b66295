//! The MDS 2.0 data models as JSON Schema validators.
//!
//! The files under `models/` are byte-identical copies of the ones this connector needs from
//! `mds-openapi/models` (Open Mobility Foundation, CC BY 4.0; revision in `models/NOTICE.md`),
//! embedded in the binary: JSON Schema written in YAML, referring to each other by relative
//! `$ref` paths, which the [`Retriever`] resolves from the embedded files only (nothing is
//! fetched). Two adjustments are made in memory when a file is loaded, never to the files:
//! - the upstream mode files write `contains: [a, b, …]` (a list, which is not a schema in
//!   JSON Schema 2020-12); it is read as the evident `contains: {enum: [a, b, …]}`;
//! - `trip.yaml` and `event.yaml` end in a `oneOf` over the four modes. A mode-neutral record
//!   (every event without mode-specific fields) matches several modes, so `oneOf` would refuse
//!   every such event; the provider's mode is known from the obligation, so the `oneOf` keeps
//!   only that mode (micromobility for scooters).
//!
//! The validators are compiled once per process ([`Models::get`]).

use std::sync::OnceLock;

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

/// The base the embedded files are known under.
const BASE: &str = "file:///mds-openapi/models/";

/// The mode the records are validated as.
pub const MODE: &str = "micromobility";

/// The embedded model files, by their path below `models/`.
pub const FILES: [(&str, &str); 20] = [
    ("trip.yaml", include_str!("models/trip.yaml")),
    ("event.yaml", include_str!("models/event.yaml")),
    (
        "vehicle-status.yaml",
        include_str!("models/vehicle-status.yaml"),
    ),
    ("telemetry.yaml", include_str!("models/telemetry.yaml")),
    (
        "response/version.yaml",
        include_str!("models/response/version.yaml"),
    ),
    (
        "data-types/currency-cost.yaml",
        include_str!("models/data-types/currency-cost.yaml"),
    ),
    (
        "data-types/currency.yaml",
        include_str!("models/data-types/currency.yaml"),
    ),
    (
        "data-types/event-type-array.yaml",
        include_str!("models/data-types/event-type-array.yaml"),
    ),
    (
        "data-types/event-type.yaml",
        include_str!("models/data-types/event-type.yaml"),
    ),
    (
        "data-types/gps.yaml",
        include_str!("models/data-types/gps.yaml"),
    ),
    (
        "data-types/integer-positive.yaml",
        include_str!("models/data-types/integer-positive.yaml"),
    ),
    (
        "data-types/string.yaml",
        include_str!("models/data-types/string.yaml"),
    ),
    (
        "data-types/timestamp.yaml",
        include_str!("models/data-types/timestamp.yaml"),
    ),
    (
        "data-types/uuid-array.yaml",
        include_str!("models/data-types/uuid-array.yaml"),
    ),
    (
        "data-types/uuid.yaml",
        include_str!("models/data-types/uuid.yaml"),
    ),
    (
        "data-types/vehicle-state.yaml",
        include_str!("models/data-types/vehicle-state.yaml"),
    ),
    (
        "data-types/version.yaml",
        include_str!("models/data-types/version.yaml"),
    ),
    (
        "modes/micromobility/accessibility-attributes.yaml",
        include_str!("models/modes/micromobility/accessibility-attributes.yaml"),
    ),
    (
        "modes/micromobility/event.yaml",
        include_str!("models/modes/micromobility/event.yaml"),
    ),
    (
        "modes/micromobility/trip.yaml",
        include_str!("models/modes/micromobility/trip.yaml"),
    ),
];

/// One embedded model, parsed and adjusted (see the module docs).
pub fn load(path: &str) -> Result<Value, String> {
    let text = FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("no embedded mds model `{path}`"))?;
    let mut v: Value =
        serde_yaml_ng::from_str(text).map_err(|e| format!("mds model `{path}`: {e}"))?;
    contains_lists_as_enums(&mut v);
    if path == "trip.yaml" || path == "event.yaml" {
        keep_mode(&mut v, MODE);
    }
    Ok(v)
}

fn contains_lists_as_enums(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "contains" && x.is_array() {
                    let list = x.take();
                    *x = serde_json::json!({ "enum": list });
                } else {
                    contains_lists_as_enums(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(contains_lists_as_enums),
        _ => {}
    }
}

fn keep_mode(v: &mut Value, mode: &str) {
    let Some(all) = v.get_mut("allOf").and_then(Value::as_array_mut) else {
        return;
    };
    for part in all {
        let Some(one) = part.get_mut("oneOf").and_then(Value::as_array_mut) else {
            continue;
        };
        let is_mode_ref = |o: &Value| {
            o.get("$ref")
                .and_then(Value::as_str)
                .is_some_and(|r| r.starts_with("./modes/"))
        };
        if !one.is_empty() && one.iter().all(is_mode_ref) {
            one.retain(|o| {
                o.get("$ref")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.starts_with(&format!("./modes/{mode}/")))
            });
        }
    }
}

/// Resolves `$ref`s to the embedded files only.
struct Retriever;

impl Retrieve for Retriever {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let path = uri
            .as_str()
            .strip_prefix(BASE)
            .ok_or_else(|| format!("`{}` is not an embedded mds model", uri.as_str()))?;
        Ok(load(path)?)
    }
}

/// The compiled validators.
pub struct Models {
    /// One trip (`trip.yaml`).
    pub trip: Validator,
    /// One event (`event.yaml`).
    pub event: Validator,
    /// One vehicle status (`vehicle-status.yaml`).
    pub vehicle_status: Validator,
    /// An answer's `version` (`response/version.yaml`).
    pub version: Validator,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models").finish_non_exhaustive()
    }
}

fn compile(path: &str) -> Result<Validator, String> {
    let schema = load(path)?;
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_base_uri(format!("{BASE}{path}"))
        .with_retriever(Retriever)
        .build(&schema)
        .map_err(|e| format!("mds model `{path}` does not compile: {e}"))
}

impl Models {
    /// The validators, compiled on first use.
    pub fn get() -> Result<&'static Models, String> {
        static MODELS: OnceLock<Result<Models, String>> = OnceLock::new();
        MODELS
            .get_or_init(|| {
                Ok(Models {
                    trip: compile("trip.yaml")?,
                    event: compile("event.yaml")?,
                    vehicle_status: compile("vehicle-status.yaml")?,
                    version: compile("response/version.yaml")?,
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]
    use super::*;
    use serde_json::json;
    use std::path::Path;

    #[test]
    fn the_copies_are_byte_identical_to_the_vendored_models() {
        let vendored =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vendor/mds-openapi/models");
        if !vendored.is_dir() {
            eprintln!("{} not here; skipped", vendored.display());
            return;
        }
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/mds/models");
        for (path, text) in FILES {
            let upstream = std::fs::read(vendored.join(path)).expect(path);
            assert_eq!(text.as_bytes(), upstream.as_slice(), "{path} differs");
            assert_eq!(std::fs::read(here.join(path)).unwrap(), upstream, "{path}");
        }
    }

    #[test]
    fn the_models_compile_and_separate_good_from_bad_records() {
        let m = Models::get().unwrap();
        let p = "3c9604d6-b5ee-11e8-96f8-529269fb1459";
        let d = "1c9604d6-b5ee-11e8-96f8-529269fb1459";
        let t = "2c9604d6-b5ee-11e8-96f8-529269fb1459";
        let trip = json!({
            "provider_id": p, "device_id": d, "trip_id": t,
            "start_time": 1_764_547_200_000i64, "end_time": 1_764_547_500_000i64,
            "start_location": {"lat": 48.1, "lng": 11.5},
            "end_location": {"lat": 48.11, "lng": 11.51},
            "duration": 300, "distance": 900, "trip_type": ["rider"]
        });
        assert!(m.trip.is_valid(&trip));
        let mut bad = trip.clone();
        bad["device_id"] = json!("not-a-uuid");
        assert!(!m.trip.is_valid(&bad));
        let mut bad = trip.clone();
        bad["start_location"]["lat"] = json!(91.0);
        assert!(!m.trip.is_valid(&bad));
        let mut bad = trip.clone();
        bad.as_object_mut().unwrap().remove("distance");
        assert!(!m.trip.is_valid(&bad));
        // A car-share trip type is not a micromobility trip.
        let mut bad = trip.clone();
        bad["trip_type"] = json!(["private"]);
        assert!(!m.trip.is_valid(&bad));

        let event = json!({
            "device_id": d, "provider_id": p, "event_id": t,
            "vehicle_state": "available", "event_types": ["trip_end"],
            "timestamp": 1_764_547_500_000i64, "location": {"lat": 48.1, "lng": 11.5},
            "trip_ids": [t]
        });
        assert!(m.event.is_valid(&event));
        let mut bad = event.clone();
        bad["vehicle_state"] = json!("on_trip"); // trip_end does not lead to on_trip
        assert!(!m.event.is_valid(&bad));
        let mut bad = event.clone();
        bad["event_types"] = json!(["teleported"]);
        assert!(!m.event.is_valid(&bad));

        let status = json!({
            "device_id": d, "provider_id": p, "last_event": event,
            "last_telemetry": {
                "device_id": d, "provider_id": p, "telemetry_id": t,
                "timestamp": 1_764_547_500_000i64, "trip_ids": null, "journey_id": null,
                "location": {"lat": 48.1, "lng": 11.5}
            }
        });
        assert!(m.vehicle_status.is_valid(&status));
        assert!(m.version.is_valid(&json!({"version": "2.0.0"})));
        assert!(!m.version.is_valid(&json!({"version": "1.2.0"})));
        assert!(!m.version.is_valid(&json!({})));
    }

    #[test]
    fn the_upstream_contains_lists_would_not_compile_as_they_are() {
        // The adjustment is needed: the raw mode file is not a valid 2020-12 schema.
        let raw: Value = serde_yaml_ng::from_str(FILES[18].1).unwrap();
        assert_eq!(FILES[18].0, "modes/micromobility/event.yaml");
        assert!(
            jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .build(&raw)
                .is_err()
        );
    }
}
