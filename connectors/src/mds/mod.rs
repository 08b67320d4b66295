//! The MDS connector: hourly batches of the Mobility Data Specification 2.0 provider API
//! (`/trips?end_time=YYYY-MM-DDTHH`, `/events/historical?event_time=YYYY-MM-DDTHH`,
//! `/vehicles/status`) pulled from an obliged company's HTTPS endpoint with a bearer token,
//! validated against the MDS 2.0 JSON Schemas, and served as a dataset by the node that took
//! them.
//!
//! Parts:
//! - [`models`]: the MDS 2.0 models (a copy of the vendored `mds-openapi/models` files this
//!   connector needs, CC BY 4.0 Open Mobility Foundation), compiled once into JSON Schema
//!   validators, every `$ref` resolved offline from the embedded files;
//! - [`validate`]: a whole batch checked against the models and by the semantic checks the
//!   schemas cannot express (a trip ending before it starts, a record outside the requested
//!   hour, duplicate ids, another provider's records); reasons name the record and field,
//!   never a value;
//! - [`client`]: the HTTPS client (hyper, rustls with ring) with a bounded response size and
//!   time limits;
//! - [`sample`]: the demo's hourly MDS batch files for `scooter-co`, from the generated trips.
//!
//! The provider's host must be one the node allows (`sources.mds_hosts`, checked by
//! [`SourceRoots::check_mds_host`]); the token and CA files are read through the node's source
//! roots and never shown.

pub mod client;
pub mod models;
pub mod sample;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::confine::SourceRoots;
use crate::error::{ConnectorError, snippet};
use crate::mqtt::{Columns, MqttBufferConnector, UplinkBuffer};
use crate::schema::{FieldSpec, FieldType};

/// One UTC hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;
/// The MDS media type of requests and answers.
pub const MEDIA_TYPE: &str = "application/vnd.mds+json";
/// The MDS version this connector speaks and the sample writes.
pub const VERSION: &str = "2.0.0";
/// Largest token file read.
pub const MAX_TOKEN_BYTES: u64 = 16 << 10;
/// Largest CA file read.
pub const MAX_CA_BYTES: u64 = 1 << 20;
/// Default bound of one response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// Largest configurable bound of one response body.
pub const MAX_RESPONSE_LIMIT: u64 = 1 << 30;

/// The parts of a provider's feed a source pulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// `/trips?end_time=…`: the trips that ended in the hour.
    Trips,
    /// `/events/historical?event_time=…`: the vehicle events of the hour.
    Events,
    /// `/vehicles/status`: the last known state of each vehicle (a snapshot).
    Vehicles,
}

impl Part {
    /// The name used in counts and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Trips => "trips",
            Part::Events => "events",
            Part::Vehicles => "vehicles",
        }
    }

    /// The path and query of this part for the hour starting at `hour_ms`.
    pub fn path_and_query(self, hour_ms: i64) -> Result<String, ConnectorError> {
        Ok(match self {
            Part::Trips => format!("/trips?end_time={}", format_hour(hour_ms)?),
            Part::Events => format!("/events/historical?event_time={}", format_hour(hour_ms)?),
            Part::Vehicles => "/vehicles/status".to_owned(),
        })
    }

    /// The array an answer of this part carries its records in.
    pub fn field(self) -> &'static str {
        match self {
            Part::Trips => "trips",
            Part::Events => "events",
            Part::Vehicles => "vehicles_status",
        }
    }
}

fn default_parts() -> Vec<Part> {
    vec![Part::Trips, Part::Events, Part::Vehicles]
}
fn default_max_response() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}
fn default_timeout() -> u64 {
    60
}
fn default_retry() -> u64 {
    60
}
fn default_vehicle_type() -> String {
    "scooter".into()
}
fn default_sequence_column() -> Option<String> {
    Some("seq".into())
}
fn yes() -> bool {
    true
}

/// Configuration of an MDS source (JSON in a registration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MdsConfig {
    /// The provider API's base URL, `https://host[:port][/path]`; the host must be in the
    /// node's `sources.mds_hosts`.
    pub provider: String,
    /// The obliged organisation (as in the federation, e.g. `scooter-co`).
    pub organisation: String,
    /// The dataset the obligation names (e.g. `scooter-trips`).
    pub obligation_dataset: String,
    /// The file holding the bearer token (first line). Read through the node's source roots;
    /// never shown.
    pub token_file: PathBuf,
    /// CA certificates (PEM) the provider's server certificate is verified against (no system
    /// trust store is used). Read through the node's source roots.
    pub ca_file: PathBuf,
    /// Present the node's own certificate to the provider (mutual TLS).
    #[serde(default = "yes")]
    pub client_certificate: bool,
    /// The first UTC hour pulled, `YYYY-MM-DDTHH`.
    pub start: String,
    /// The parts pulled.
    #[serde(default = "default_parts")]
    pub parts: Vec<Part>,
    /// The provider's MDS `provider_id` (a UUID); every record must carry it. Unset: every
    /// record of one batch must carry the same one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// The `vehicle_type` column of the served trips (MDS 2.0 trips do not carry it).
    #[serde(default = "default_vehicle_type")]
    pub vehicle_type: String,
    /// Largest response body accepted, bytes.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: u64,
    /// Time limit of one request (connect, answer and body), seconds.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Wait before an hour that was not ready or failed is asked again, seconds (doubling up
    /// to an hour).
    #[serde(default = "default_retry")]
    pub retry_secs: u64,
    /// Declared columns (the dataset's, by default), including the sequence column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<FieldSpec>>,
    /// Column holding the data-subject id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_column: Option<String>,
    /// Other identifying columns (e.g. `device_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifier_columns: Vec<String>,
    /// The `int64` column holding the node's import sequence number; reads are ordered and
    /// resumed by it (`seq` unless set).
    #[serde(default = "default_sequence_column")]
    pub cursor_column: Option<String>,
}

impl MdsConfig {
    /// A configuration pulling every part of `provider` from `start` on.
    pub fn new(
        provider: &str,
        organisation: &str,
        obligation_dataset: &str,
        token_file: impl Into<PathBuf>,
        ca_file: impl Into<PathBuf>,
        start: &str,
    ) -> Self {
        Self {
            provider: provider.into(),
            organisation: organisation.into(),
            obligation_dataset: obligation_dataset.into(),
            token_file: token_file.into(),
            ca_file: ca_file.into(),
            client_certificate: true,
            start: start.into(),
            parts: default_parts(),
            provider_id: None,
            vehicle_type: default_vehicle_type(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            timeout_secs: default_timeout(),
            retry_secs: default_retry(),
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
                "an mds source needs its sequence column (`cursor_column`)".into(),
            )
        })
    }

    /// The first hour pulled, unix ms.
    pub fn start_ms(&self) -> Result<i64, ConnectorError> {
        parse_hour(&self.start).map_err(|e| ConnectorError::Config(format!("`start`: {e}")))
    }

    /// Checks what can be checked without the network and returns the provider's address.
    pub fn check(&self, roots: &SourceRoots) -> Result<Endpoint, ConnectorError> {
        let endpoint = Endpoint::parse(&self.provider)?;
        roots.check_mds_host(&endpoint.host)?;
        for (what, name) in [
            ("organisation", &self.organisation),
            ("obligation_dataset", &self.obligation_dataset),
        ] {
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
                return Err(ConnectorError::Config(format!(
                    "`{what}` must be 1 to 128 bytes without control characters"
                )));
            }
        }
        self.start_ms()?;
        if self.parts.is_empty() {
            return Err(ConnectorError::Config(
                "`parts` names no part (`trips`, `events`, `vehicles`)".into(),
            ));
        }
        if let Some(p) = &self.provider_id
            && !validate::is_uuid(p)
        {
            return Err(ConnectorError::Config(format!(
                "`provider_id` `{}` is not a lowercase UUID",
                snippet(p)
            )));
        }
        if self.max_response_bytes < 1024 || self.max_response_bytes > MAX_RESPONSE_LIMIT {
            return Err(ConnectorError::Config(format!(
                "`max_response_bytes` must be between 1024 and {MAX_RESPONSE_LIMIT}, not {}",
                self.max_response_bytes
            )));
        }
        if self.timeout_secs == 0 || self.timeout_secs > 3600 {
            return Err(ConnectorError::Config(
                "`timeout_secs` must be between 1 and 3600".into(),
            ));
        }
        if self.retry_secs == 0 || self.retry_secs > 3600 {
            return Err(ConnectorError::Config(
                "`retry_secs` must be between 1 and 3600".into(),
            ));
        }
        self.sequence_column()?;
        Ok(endpoint)
    }

    /// The bearer token, read through `roots` (its first line, trimmed).
    pub fn token(&self, roots: &SourceRoots) -> Result<String, ConnectorError> {
        read_token(roots, &self.token_file)
    }

    /// The CA certificates (PEM), read through `roots`.
    pub fn ca_pem(&self, roots: &SourceRoots) -> Result<Vec<u8>, ConnectorError> {
        roots.read_small(&self.ca_file, "CA file", MAX_CA_BYTES)
    }
}

/// The columns of the trips an mds source serves: the demo's `scooter-trips` columns
/// ([`crate::sample::scooter_trip_fields`]) and the node's import sequence `seq` (the cursor:
/// hours may arrive out of order, a late hour after later ones, so reads resume by import
/// order, not by trip time).
pub fn trip_fields() -> Vec<FieldSpec> {
    let mut f = crate::sample::scooter_trip_fields();
    f.push(FieldSpec::required("seq", FieldType::Int64));
    f
}

/// The served row of one validated MDS trip: times in microseconds, positions split into
/// columns, the grid cells of both ends; `seq` is filled by the buffer.
pub fn trip_row(trip: &Value, vehicle_type: &str) -> Map<String, Value> {
    let mut row = Map::new();
    for f in [
        "trip_id",
        "provider_id",
        "device_id",
        "duration",
        "distance",
    ] {
        if let Some(v) = trip.get(f) {
            row.insert(f.into(), v.clone());
        }
    }
    row.insert("vehicle_type".into(), Value::from(vehicle_type));
    for f in ["start_time", "end_time"] {
        if let Some(ms) = trip.get(f).and_then(Value::as_f64) {
            row.insert(f.into(), Value::from((ms as i64).saturating_mul(1000)));
        }
    }
    for (end, loc) in [("start", "start_location"), ("end", "end_location")] {
        let lat = trip
            .get(loc)
            .and_then(|l| l.get("lat"))
            .and_then(Value::as_f64);
        let lng = trip
            .get(loc)
            .and_then(|l| l.get("lng"))
            .and_then(Value::as_f64);
        if let (Some(lat), Some(lng)) = (lat, lng) {
            row.insert(format!("{end}_lat"), Value::from(lat));
            row.insert(format!("{end}_lon"), Value::from(lng));
            row.insert(
                format!("{end}_cell"),
                Value::from(crate::sample::cell_id(lat, lng)),
            );
        }
    }
    row
}

/// The connector serving the trips an mds source imported into `buffer` (`label`: the
/// dataset). Checks the configuration (provider host allowed, token and CA files readable
/// through `roots`, a declared schema with an `int64` sequence column); does not connect: the
/// node's puller takes the deliveries.
pub fn open_connector(
    config: &MdsConfig,
    roots: &SourceRoots,
    buffer: Arc<dyn UplinkBuffer>,
    label: &str,
) -> Result<MqttBufferConnector, ConnectorError> {
    config.check(roots)?;
    config.token(roots)?;
    client::tls_config(&config.ca_pem(roots)?, None)?;
    let fields = config
        .schema
        .as_ref()
        .ok_or_else(|| ConnectorError::Config("an mds source needs its declared schema".into()))?;
    MqttBufferConnector::serving(
        Columns {
            fields,
            subject_column: config.subject_column.as_deref(),
            identifier_columns: &config.identifier_columns,
            sequence_column: config.sequence_column()?,
        },
        "mds",
        format!(
            "mds trips of `{}` delivered to `{label}`",
            snippet(&config.organisation)
        ),
        buffer,
        label,
    )
}

/// Reads a bearer token file through `roots`: its first line, trimmed, printable ASCII.
pub fn read_token(roots: &SourceRoots, path: &std::path::Path) -> Result<String, ConnectorError> {
    let bytes = roots.read_small(path, "token file", MAX_TOKEN_BYTES)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConnectorError::Config("the token file is not UTF-8".into()))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConnectorError::Config(
            "the token file must hold the token (printable ASCII) on its first line".into(),
        ));
    }
    Ok(token)
}

/// A provider's base address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path prefix without a trailing `/` (empty for the root).
    pub prefix: String,
}

impl Endpoint {
    /// Parses `https://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Self, ConnectorError> {
        let bad = |why: &str| ConnectorError::Config(format!("provider `{}` {why}", snippet(url)));
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| bad("must start with `https://`"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains(['@', '?', '#']) || path.contains(['?', '#']) {
            return Err(bad("must be only a host, a port and a path"));
        }
        if path.split('/').any(|s| s == ".." || s == ".") || path.chars().any(char::is_control) {
            return Err(bad("has an invalid path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed `[`"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("names no host"));
        }
        let port = match port {
            None => 443,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| bad("has an invalid port"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Formats the UTC hour starting at `ms` as `YYYY-MM-DDTHH`.
pub fn format_hour(ms: i64) -> Result<String, ConnectorError> {
    if ms.rem_euclid(HOUR_MS) != 0 {
        return Err(ConnectorError::Config(format!(
            "`{ms}` is not the start of a UTC hour"
        )));
    }
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map_err(|e| ConnectorError::Config(format!("hour `{ms}` out of range: {e}")))?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour()
    ))
}

/// Why an hour is not `YYYY-MM-DDTHH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a UTC hour of the form `YYYY-MM-DDTHH`")]
pub struct BadHour(pub String);

/// Parses `YYYY-MM-DDTHH` (UTC) strictly into unix ms.
pub fn parse_hour(s: &str) -> Result<i64, BadHour> {
    let bad = || BadHour(snippet(s));
    let b = s.as_bytes();
    if b.len() != 13
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || ![0, 1, 2, 3, 5, 6, 8, 9, 11, 12]
            .iter()
            .all(|i| b[*i].is_ascii_digit())
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().map_err(|_| bad());
    let year = i32::try_from(num(0..4)?).map_err(|_| bad())?;
    let month = u8::try_from(num(5..7)?)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
        .ok_or_else(bad)?;
    let day = u8::try_from(num(8..10)?).map_err(|_| bad())?;
    let hour = u8::try_from(num(11..13)?).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    let t = date.with_hms(hour, 0, 0).map_err(|_| bad())?.assume_utc();
    Ok(t.unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]
    use super::*;

    #[test]
    fn hours_parse_strictly_and_round_trip() {
        let ms = parse_hour("2026-11-30T10").unwrap();
        assert_eq!(ms, 1_796_032_800_000);
        assert_eq!(format_hour(ms).unwrap(), "2026-11-30T10");
        for bad in [
            "2026-11-30T24",
            "2026-02-30T10",
            "2026-11-30 10",
            "2026-11-30T1",
            "2026-11-30T100",
            "+026-11-30T10",
            "2026-11-30T10Z",
            "",
        ] {
            assert!(parse_hour(bad).is_err(), "{bad}");
        }
        assert!(format_hour(ms + 1).is_err());
    }

    #[test]
    fn endpoints_are_https_hosts_with_an_optional_path() {
        let e = Endpoint::parse("https://127.0.0.1:8443/mds/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("127.0.0.1", 8443, "/mds")
        );
        assert_eq!(
            Endpoint::parse("https://[::1]").unwrap().authority(),
            "[::1]:443"
        );
        for bad in [
            "http://a",
            "https://",
            "https://u@a",
            "https://a:0",
            "https://a/../b",
            "https://a/?x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_provider_host_must_be_allowed() {
        let c = MdsConfig::new(
            "https://mds.scooter.example",
            "scooter-co",
            "scooter-trips",
            "/s/token",
            "/s/ca.pem",
            "2026-11-30T10",
        );
        let none = SourceRoots::new(["/s"]);
        let e = c.check(&none).unwrap_err();
        assert!(
            matches!(
                e,
                ConnectorError::Confined {
                    reason: crate::confine::Refusal::MdsHostNotAllowed,
                    ..
                }
            ),
            "{e}"
        );
        let allowed = SourceRoots::new(["/s"]).allow_mds_hosts(["mds.scooter.example"]);
        assert_eq!(c.check(&allowed).unwrap().port, 443);
        let mut bad = c.clone();
        bad.start = "yesterday".into();
        assert!(bad.check(&allowed).is_err());
    }
}
