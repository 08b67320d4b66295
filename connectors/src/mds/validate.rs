//! A whole hourly batch checked before anything of it is imported: every answer's envelope
//! (`version`, the records array), every record against the MDS 2.0 models
//! ([`super::models`]), and what the schemas cannot express:
//! - a trip whose `end_time` precedes its `start_time`;
//! - a trip whose `end_time`, or an event whose `timestamp`, lies outside the requested hour;
//! - a `trip_id`, `event_id` or vehicle `device_id` that repeats within the batch;
//! - a record whose `provider_id` is not the provider's (the configured one, or else the
//!   first one of the batch).
//!
//! Reasons are lowercase sentences naming the part, the record index and the field, never a
//! value (no device id or position reaches a reason, so reasons may be audited); at most
//! [`MAX_REASONS`] are kept, followed by a count of the rest.

use std::collections::HashMap;

use serde_json::Value;

use super::models::Models;
use super::{HOUR_MS, Part};
use crate::error::snippet;

/// Reasons kept at most per batch.
pub const MAX_REASONS: usize = 20;
/// Schema errors reported per record at most.
const PER_RECORD: usize = 3;

/// The records of a valid batch, by part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checked {
    pub trips: Vec<Value>,
    pub events: Vec<Value>,
    pub vehicles: Vec<Value>,
}

impl Checked {
    /// Records per part, for the parts given.
    pub fn counts(&self, parts: &[Part]) -> Vec<(String, u64)> {
        parts
            .iter()
            .map(|p| {
                let n = match p {
                    Part::Trips => self.trips.len(),
                    Part::Events => self.events.len(),
                    Part::Vehicles => self.vehicles.len(),
                };
                (p.as_str().to_owned(), n as u64)
            })
            .collect()
    }
}

/// Whether `s` is a lowercase UUID as the MDS models write it.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

/// The reasons found so far, capped.
#[derive(Debug, Default)]
struct Reasons {
    kept: Vec<String>,
    more: usize,
}

impl Reasons {
    fn push(&mut self, r: String) {
        if self.kept.len() < MAX_REASONS {
            self.kept.push(r);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.kept
                .push(format!("and {} more problems not listed", self.more));
        }
        self.kept
    }
}

/// The singular a part's records are named by in reasons.
fn record_name(part: Part) -> &'static str {
    match part {
        Part::Trips => "trip",
        Part::Events => "event",
        Part::Vehicles => "vehicle status",
    }
}

/// Checks the answers of one hour (`hour_ms`, the start of a UTC hour); `Ok` with the
/// records of a valid batch, or every reason it is not (capped).
pub fn check_batch(
    hour_ms: i64,
    answers: &[(Part, Value)],
    provider_id: Option<&str>,
) -> Result<Checked, Vec<String>> {
    let models = match Models::get() {
        Ok(m) => m,
        Err(e) => return Err(vec![format!("the mds models are unusable: {e}")]),
    };
    let mut reasons = Reasons::default();
    let mut provider: Option<String> = provider_id.map(str::to_owned);
    let mut out = Checked::default();
    for (part, answer) in answers {
        let part = *part;
        let name = part.as_str();
        if !answer.is_object() {
            reasons.push(format!("the {name} answer is not a JSON object"));
            continue;
        }
        if !models.version.is_valid(answer) {
            reasons.push(format!("the {name} answer has no `version` of MDS 2.x"));
        }
        let Some(records) = answer.get(part.field()).and_then(Value::as_array) else {
            reasons.push(format!("the {name} answer has no `{}` array", part.field()));
            continue;
        };
        let validator = match part {
            Part::Trips => &models.trip,
            Part::Events => &models.event,
            Part::Vehicles => &models.vehicle_status,
        };
        let what = record_name(part);
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let mut schema_ok = true;
            for e in validator.iter_errors(r).take(PER_RECORD) {
                schema_ok = false;
                let path = e.instance_path().as_str();
                let keyword = e
                    .schema_path()
                    .as_str()
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_owned();
                reasons.push(format!(
                    "{what} {i}: `{}` does not satisfy `{}` of the mds 2.0 model",
                    snippet(if path.is_empty() { "/" } else { path }),
                    snippet(&keyword)
                ));
            }
            if !schema_ok {
                continue;
            }
            // Provider.
            if let Some(p) = r.get("provider_id").and_then(Value::as_str) {
                match &provider {
                    Some(expected) if expected != p => {
                        reasons.push(format!("{what} {i}: `provider_id` is not the provider's"))
                    }
                    Some(_) => {}
                    None => provider = Some(p.to_owned()),
                }
            }
            // Identity within the batch.
            let id_field = match part {
                Part::Trips => "trip_id",
                Part::Events => "event_id",
                Part::Vehicles => "device_id",
            };
            if let Some(id) = r.get(id_field).and_then(Value::as_str) {
                if let Some(first) = seen.get(id) {
                    reasons.push(format!("{what} {i}: `{id_field}` repeats {what} {first}"));
                } else {
                    seen.insert(id, i);
                }
            }
            // Time.
            let ms = |f: &str| r.get(f).and_then(Value::as_f64);
            let in_hour = |t: f64| t >= hour_ms as f64 && t < (hour_ms + HOUR_MS) as f64;
            match part {
                Part::Trips => {
                    if let (Some(s), Some(e)) = (ms("start_time"), ms("end_time")) {
                        if e < s {
                            reasons.push(format!("{what} {i}: `end_time` precedes `start_time`"));
                        }
                        if !in_hour(e) {
                            reasons.push(format!(
                                "{what} {i}: `end_time` lies outside the requested hour"
                            ));
                        }
                    }
                }
                Part::Events => {
                    if let Some(t) = ms("timestamp")
                        && !in_hour(t)
                    {
                        reasons.push(format!(
                            "{what} {i}: `timestamp` lies outside the requested hour"
                        ));
                    }
                }
                Part::Vehicles => {}
            }
        }
        let list = match part {
            Part::Trips => &mut out.trips,
            Part::Events => &mut out.events,
            Part::Vehicles => &mut out.vehicles,
        };
        list.clone_from(records);
    }
    let reasons = reasons.finish();
    if reasons.is_empty() {
        Ok(out)
    } else {
        Err(reasons)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;
    use serde_json::json;

    const P: &str = "3c9604d6-b5ee-11e8-96f8-529269fb1459";
    const HOUR: i64 = 1_764_547_200_000;

    fn trip(id: u32, start: i64, end: i64) -> Value {
        json!({
            "provider_id": P,
            "device_id": "1c9604d6-b5ee-11e8-96f8-529269fb1459",
            "trip_id": format!("2c9604d6-b5ee-11e8-96f8-{id:012x}"),
            "start_time": start, "end_time": end,
            "start_location": {"lat": 48.1, "lng": 11.5},
            "end_location": {"lat": 48.11, "lng": 11.51},
            "duration": (end - start).max(0) / 1000, "distance": 900, "trip_type": ["rider"]
        })
    }

    fn trips(list: Vec<Value>) -> Vec<(Part, Value)> {
        vec![(Part::Trips, json!({"version": "2.0.0", "trips": list}))]
    }

    #[test]
    fn a_valid_hour_passes_with_its_records() {
        let ok = check_batch(
            HOUR,
            &trips(vec![
                trip(1, HOUR - 60_000, HOUR + 1_000),
                trip(2, HOUR, HOUR + 9_000),
            ]),
            Some(P),
        )
        .unwrap();
        assert_eq!(ok.trips.len(), 2);
        assert_eq!(ok.counts(&[Part::Trips]), vec![("trips".to_owned(), 2)]);
        // An empty hour is a valid hour.
        assert!(check_batch(HOUR, &trips(vec![]), Some(P)).is_ok());
    }

    #[test]
    fn a_trip_ending_before_it_starts_rejects_the_batch_with_a_reason() {
        let e = check_batch(
            HOUR,
            &trips(vec![
                trip(1, HOUR, HOUR + 1_000),
                trip(2, HOUR + 9_000, HOUR + 2_000),
            ]),
            Some(P),
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec!["trip 1: `end_time` precedes `start_time`".to_owned()]
        );
    }

    #[test]
    fn semantic_and_schema_problems_are_named_without_values() {
        let mut bad_uuid = trip(3, HOUR, HOUR + 1);
        bad_uuid["device_id"] = json!("device-of-alice");
        let mut other = trip(4, HOUR, HOUR + 1);
        other["provider_id"] = json!("9c9604d6-b5ee-11e8-96f8-529269fb1459");
        let e = check_batch(
            HOUR,
            &trips(vec![
                trip(1, HOUR, HOUR + 1),
                trip(1, HOUR, HOUR + 2),
                trip(2, HOUR, HOUR + HOUR_MS),
                bad_uuid,
                other,
            ]),
            None,
        )
        .unwrap_err();
        assert_eq!(e[0], "trip 1: `trip_id` repeats trip 0");
        assert_eq!(e[1], "trip 2: `end_time` lies outside the requested hour");
        assert!(
            e[2].starts_with("trip 3: `/device_id` does not satisfy"),
            "{e:?}"
        );
        assert_eq!(e[3], "trip 4: `provider_id` is not the provider's");
        assert!(e.iter().all(|r| !r.contains("alice")));
    }

    #[test]
    fn envelopes_are_checked_and_reasons_capped() {
        let e = check_batch(
            HOUR,
            &[
                (Part::Trips, json!({"version": "1.2.0", "trips": []})),
                (Part::Events, json!({"version": "2.0.0"})),
                (Part::Vehicles, json!([])),
            ],
            None,
        )
        .unwrap_err();
        assert_eq!(
            e,
            vec![
                "the trips answer has no `version` of MDS 2.x",
                "the events answer has no `events` array",
                "the vehicles answer is not a JSON object",
            ]
        );
        let many: Vec<Value> = (0..50)
            .map(|i| trip(i, HOUR + 5_000, HOUR + 1_000))
            .collect();
        let e = check_batch(HOUR, &trips(many), Some(P)).unwrap_err();
        assert_eq!(e.len(), MAX_REASONS + 1);
        assert_eq!(e[MAX_REASONS], "and 30 more problems not listed");
    }

    #[test]
    fn uuids_are_lowercase_and_shaped() {
        assert!(is_uuid(P));
        assert!(!is_uuid(&P.to_uppercase()));
        assert!(!is_uuid("3c9604d6b5ee11e896f8529269fb1459"));
    }
}
