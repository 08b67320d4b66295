//! Deterministic Munich-like sample data for the demo and the tests (no network, no `rand`).
//!
//! Everything is derived from [`SampleSpec::seed`] with a xorshift generator, so the same spec
//! always yields byte-identical files. Datasets:
//! - `smart-meter-readings` (personal): 15-minute kWh per household (`HH-000123`) and meter,
//!   one Parquet file per day;
//! - `air-quality` (public space): hourly NO₂, PM10, PM2.5 per measuring station, CSV;
//! - `traffic-counts` (public space): hourly vehicles per counting point, GeoJSON points;
//! - `scooter-trips` (MDS-like, from `scooter-co`): completed trips, one JSON-lines file per
//!   hour of delivery;
//! - consent records for the smart-meter households, CSV (see [`consent_fields`]).
//!
//! Fixed households for the stories: `HH-000001` consented to `AcademicResearch`, `HH-000002`
//! refused, `HH-000003` withdrew, `HH-000004` has no consent record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;

use crate::error::ConnectorError;
use crate::files::{FileConnectorConfig, FileFormat};
use crate::schema::{FieldSpec, FieldType, TIMESTAMP_TIMEZONE, build_schema};
use crate::write::{write_csv, write_geojson_points, write_jsonl, write_parquet};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Smart-meter households (and consent records).
    pub households: usize,
    /// Days of data.
    pub days: u32,
    /// First day, as Unix seconds at midnight UTC.
    pub start: i64,
    /// Scooter trips per day.
    pub trips_per_day: usize,
}

impl Default for SampleSpec {
    fn default() -> Self {
        Self {
            seed: 0x4D55_4E43_4845_4E21,
            households: 120,
            days: 2,
            start: 1_740_960_000, // 2025-03-03T00:00:00Z, a Monday
            trips_per_day: 400,
        }
    }
}

/// Small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator; seed 0 is replaced by a fixed non-zero value.
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Roughly normal with mean 0 and standard deviation 1 (Irwin–Hall).
    pub fn gauss(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }

    /// A random UUID-shaped id.
    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

const MICROS: i64 = 1_000_000;
const HOUR: i64 = 3600;

/// Relative load by hour of day (1.0 = average).
fn day_profile(hour: i64) -> f64 {
    match hour {
        0..=5 => 0.45,
        6..=8 => 1.35,
        9..=16 => 0.9,
        17..=21 => 1.7,
        _ => 0.8,
    }
}

/// Relative road traffic by hour of day.
fn traffic_profile(hour: i64) -> f64 {
    match hour {
        0..=4 => 0.12,
        5 => 0.4,
        6..=9 => 1.6,
        10..=14 => 1.0,
        15..=18 => 1.7,
        19..=21 => 0.8,
        _ => 0.35,
    }
}

fn schema_of(
    fields: &[FieldSpec],
    subject: Option<&str>,
    ids: &[&str],
) -> Result<SchemaRef, ConnectorError> {
    let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    build_schema(fields, subject, &ids)
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch, ConnectorError> {
    RecordBatch::try_new(schema, columns)
        .map_err(|e| ConnectorError::Internal(format!("sample batch: {e}")))
}

fn ts_builder() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone(TIMESTAMP_TIMEZONE)
}

const DISTRICTS: [&str; 12] = [
    "Altstadt-Lehel",
    "Ludwigsvorstadt-Isarvorstadt",
    "Maxvorstadt",
    "Schwabing-West",
    "Au-Haidhausen",
    "Sendling",
    "Schwanthalerhöhe",
    "Neuhausen-Nymphenburg",
    "Bogenhausen",
    "Obergiesing-Fasangarten",
    "Pasing-Obermenzing",
    "Milbertshofen-Am Hart",
];

/// The data-subject id of household `n` (1-based), e.g. `HH-000123`.
pub fn household_id(n: usize) -> String {
    format!("HH-{n:06}")
}

/// Columns of `smart-meter-readings`.
pub fn smart_meter_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("household_id", FieldType::String),
        FieldSpec::required("meter_id", FieldType::String),
        FieldSpec::required("timestamp", FieldType::Timestamp),
        FieldSpec::required("kwh", FieldType::Float64),
        FieldSpec::new("district", FieldType::String),
    ]
}

/// Smart-meter readings for one day (`day` counted from `spec.start`), 15-minute intervals,
/// ordered by time, then household.
pub fn smart_meter_readings_day(
    spec: &SampleSpec,
    day: u32,
) -> Result<RecordBatch, ConnectorError> {
    let schema = schema_of(&smart_meter_fields(), Some("household_id"), &["meter_id"])?;
    // Per-household parameters come from a generator that does not depend on the day.
    let mut setup = Xorshift::new(spec.seed ^ 0x5EED_0001);
    let households: Vec<(String, String, f64, &str)> = (1..=spec.households)
        .map(|n| {
            let annual_kwh = setup.range(1200.0, 4800.0);
            let district = setup.pick(&DISTRICTS).copied().unwrap_or("Maxvorstadt");
            let meter = 1_000_000_000 + (n as u64 * 7_919_821) % 8_999_999_999;
            (
                household_id(n),
                format!("1EMH{meter:010}"),
                annual_kwh,
                district,
            )
        })
        .collect();
    let mut rng = Xorshift::new(spec.seed ^ (0xDA7A_0000 + u64::from(day)));
    let rows = households.len() * 96;
    let mut hh = StringBuilder::with_capacity(rows, rows * 9);
    let mut meter = StringBuilder::with_capacity(rows, rows * 14);
    let mut ts = ts_builder();
    let mut kwh = Float64Builder::with_capacity(rows);
    let mut district = StringBuilder::with_capacity(rows, rows * 12);
    let day_start = spec.start + i64::from(day) * 24 * HOUR;
    for slot in 0..96i64 {
        let t = day_start + slot * 900;
        let hour = slot / 4;
        for (id, meter_id, annual, d) in &households {
            let mean = annual / 35_040.0 * day_profile(hour);
            let value = (mean * (1.0 + 0.3 * rng.gauss())).max(0.002);
            hh.append_value(id);
            meter.append_value(meter_id);
            ts.append_value(t * MICROS);
            kwh.append_value((value * 1000.0).round() / 1000.0);
            district.append_value(d);
        }
    }
    batch(
        schema,
        vec![
            Arc::new(hh.finish()),
            Arc::new(meter.finish()),
            Arc::new(ts.finish()),
            Arc::new(kwh.finish()),
            Arc::new(district.finish()),
        ],
    )
}

const STATIONS: [(&str, &str, f64); 5] = [
    ("DEBY115", "München/Landshuter Allee", 52.0),
    ("DEBY037", "München/Stachus", 40.0),
    ("DEBY039", "München/Lothstraße", 29.0),
    ("DEBY089", "München/Johanneskirchen", 19.0),
    ("DEBY189", "München/Allach", 23.0),
];

/// Columns of `air-quality` (µg/m³; a missing value means the sensor had an outage).
pub fn air_quality_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("station_id", FieldType::String),
        FieldSpec::required("station", FieldType::String),
        FieldSpec::required("timestamp", FieldType::Timestamp),
        FieldSpec::new("no2", FieldType::Float64),
        FieldSpec::new("pm10", FieldType::Float64),
        FieldSpec::new("pm25", FieldType::Float64),
    ]
}

/// Hourly air-quality measurements, ordered by time, then station.
pub fn air_quality(spec: &SampleSpec) -> Result<RecordBatch, ConnectorError> {
    let schema = schema_of(&air_quality_fields(), None, &[])?;
    let mut rng = Xorshift::new(spec.seed ^ 0xA1A1_0002);
    let mut id = StringBuilder::new();
    let mut name = StringBuilder::new();
    let mut ts = ts_builder();
    let mut no2 = Float64Builder::new();
    let mut pm10 = Float64Builder::new();
    let mut pm25 = Float64Builder::new();
    let maybe = |b: &mut Float64Builder, rng: &mut Xorshift, v: f64| {
        if rng.unit() < 0.01 {
            b.append_null();
        } else {
            b.append_value((v.max(0.5) * 10.0).round() / 10.0);
        }
    };
    for h in 0..i64::from(spec.days) * 24 {
        let t = spec.start + h * HOUR;
        let traffic = traffic_profile(h % 24);
        for (sid, sname, base) in STATIONS {
            id.append_value(sid);
            name.append_value(sname);
            ts.append_value(t * MICROS);
            let n = base * (0.55 + 0.45 * traffic) * (1.0 + 0.15 * rng.gauss());
            maybe(&mut no2, &mut rng, n);
            let p10 = 14.0 + 0.25 * n + 3.0 * rng.gauss();
            maybe(&mut pm10, &mut rng, p10);
            let p25 = 0.62 * p10 + 1.5 * rng.gauss();
            maybe(&mut pm25, &mut rng, p25);
        }
    }
    batch(
        schema,
        vec![
            Arc::new(id.finish()),
            Arc::new(name.finish()),
            Arc::new(ts.finish()),
            Arc::new(no2.finish()),
            Arc::new(pm10.finish()),
            Arc::new(pm25.finish()),
        ],
    )
}

const COUNTERS: [(&str, &str, f64, f64, f64); 6] = [
    ("MUC-KFZ-001", "Leopoldstraße", 48.1602, 11.5860, 1600.0),
    ("MUC-KFZ-002", "Lindwurmstraße", 48.1276, 11.5530, 1300.0),
    (
        "MUC-KFZ-003",
        "Rosenheimer Straße",
        48.1287,
        11.5958,
        1450.0,
    ),
    (
        "MUC-KFZ-004",
        "Donnersbergerbrücke",
        48.1423,
        11.5365,
        2600.0,
    ),
    ("MUC-KFZ-005", "Ludwigstraße", 48.1480, 11.5785, 900.0),
    ("MUC-KFZ-006", "Fraunhoferstraße", 48.1310, 11.5725, 700.0),
];

/// Columns of `traffic-counts` as a table (the GeoJSON file turns `lon`/`lat` into the
/// geometry, see [`traffic_counts_geojson_fields`]).
pub fn traffic_counts_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("counter_id", FieldType::String),
        FieldSpec::required("location", FieldType::String),
        FieldSpec::required("timestamp", FieldType::Timestamp),
        FieldSpec::required("vehicles", FieldType::Int64),
        FieldSpec::required("lat", FieldType::Float64),
        FieldSpec::required("lon", FieldType::Float64),
    ]
}

/// Property columns of the `traffic-counts` GeoJSON (the geometry column is added by the
/// connector).
pub fn traffic_counts_geojson_fields() -> Vec<FieldSpec> {
    traffic_counts_fields()
        .into_iter()
        .filter(|f| f.name != "lat" && f.name != "lon")
        .collect()
}

/// Hourly vehicle counts, ordered by time, then counter.
pub fn traffic_counts(spec: &SampleSpec) -> Result<RecordBatch, ConnectorError> {
    let schema = schema_of(&traffic_counts_fields(), None, &[])?;
    let mut rng = Xorshift::new(spec.seed ^ 0x7AFF_0003);
    let mut id = StringBuilder::new();
    let mut loc = StringBuilder::new();
    let mut ts = ts_builder();
    let mut vehicles = Int64Builder::new();
    let mut lat = Float64Builder::new();
    let mut lon = Float64Builder::new();
    for h in 0..i64::from(spec.days) * 24 {
        let t = spec.start + h * HOUR;
        for (cid, name, la, lo, base) in COUNTERS {
            id.append_value(cid);
            loc.append_value(name);
            ts.append_value(t * MICROS);
            let v = base * traffic_profile(h % 24) * (1.0 + 0.12 * rng.gauss());
            vehicles.append_value(v.max(0.0).round() as i64);
            lat.append_value(la);
            lon.append_value(lo);
        }
    }
    batch(
        schema,
        vec![
            Arc::new(id.finish()),
            Arc::new(loc.finish()),
            Arc::new(ts.finish()),
            Arc::new(vehicles.finish()),
            Arc::new(lat.finish()),
            Arc::new(lon.finish()),
        ],
    )
}

const HOTSPOTS: [(f64, f64); 6] = [
    (48.1374, 11.5755), // Marienplatz
    (48.1402, 11.5600), // Hauptbahnhof
    (48.1339, 11.5670), // Sendlinger Tor
    (48.1614, 11.5862), // Münchner Freiheit
    (48.1426, 11.5776), // Odeonsplatz
    (48.1497, 11.5676), // Maxvorstadt / TU
];

/// Grid-cell id (about 500 m × 500 m) of a position, e.g. `N030E041`.
pub fn cell_id(lat: f64, lon: f64) -> String {
    let row = ((lat - 48.0) / 0.0045).floor().max(0.0) as i64;
    let col = ((lon - 11.3) / 0.00675).floor().max(0.0) as i64;
    format!("N{row:03}E{col:03}")
}

/// Columns of `scooter-trips` (MDS-like; durations in seconds, distances in metres).
pub fn scooter_trip_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("trip_id", FieldType::String),
        FieldSpec::required("provider_id", FieldType::String),
        FieldSpec::required("device_id", FieldType::String),
        FieldSpec::required("vehicle_type", FieldType::String),
        FieldSpec::required("start_time", FieldType::Timestamp),
        FieldSpec::required("end_time", FieldType::Timestamp),
        FieldSpec::required("duration", FieldType::Int64),
        FieldSpec::required("distance", FieldType::Int64),
        FieldSpec::required("start_lat", FieldType::Float64),
        FieldSpec::required("start_lon", FieldType::Float64),
        FieldSpec::required("end_lat", FieldType::Float64),
        FieldSpec::required("end_lon", FieldType::Float64),
        FieldSpec::required("start_cell", FieldType::String),
        FieldSpec::required("end_cell", FieldType::String),
    ]
}

/// One generated trip (times in Unix seconds; also the source of the MDS batches in
/// [`crate::mds::sample`]).
pub(crate) struct Trip {
    pub(crate) id: String,
    pub(crate) device: String,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) distance: i64,
    pub(crate) from: (f64, f64),
    pub(crate) to: (f64, f64),
}

pub(crate) fn trips(spec: &SampleSpec) -> Vec<Trip> {
    let mut rng = Xorshift::new(spec.seed ^ 0x5C00_7004);
    let devices: Vec<String> = (0..150).map(|_| rng.uuid()).collect();
    let mut out = Vec::new();
    for day in 0..i64::from(spec.days) {
        for _ in 0..spec.trips_per_day {
            // Daytime-weighted start: draw hours until one is accepted by the profile.
            let mut hour = 12;
            for _ in 0..16 {
                let h = rng.below(24) as i64;
                if rng.unit() * 1.7 < traffic_profile(h) {
                    hour = h;
                    break;
                }
            }
            let start = spec.start + day * 24 * HOUR + hour * HOUR + rng.below(3600) as i64;
            let duration = 120 + rng.below(1500) as i64;
            let speed = rng.range(2.0, 4.2); // m/s
            let distance = (duration as f64 * speed).round() as i64;
            let from = if rng.unit() < 0.8 {
                let (la, lo) = rng.pick(&HOTSPOTS).copied().unwrap_or(HOTSPOTS[0]);
                (la + 0.0022 * rng.gauss(), lo + 0.0033 * rng.gauss())
            } else {
                (rng.range(48.07, 48.23), rng.range(11.40, 11.70))
            };
            let bearing = rng.range(0.0, std::f64::consts::TAU);
            let straight = distance as f64 * rng.range(0.55, 0.9);
            let to = (
                from.0 + straight * bearing.cos() / 111_320.0,
                from.1 + straight * bearing.sin() / (111_320.0 * from.0.to_radians().cos()),
            );
            let round6 = |v: f64| (v * 1e6).round() / 1e6;
            out.push(Trip {
                id: rng.uuid(),
                device: rng.pick(&devices).cloned().unwrap_or_default(),
                start,
                end: start + duration,
                distance,
                from: (round6(from.0), round6(from.1)),
                to: (round6(to.0), round6(to.1)),
            });
        }
    }
    out.sort_by(|a, b| a.end.cmp(&b.end).then_with(|| a.id.cmp(&b.id)));
    out
}

fn trips_batch(trips: &[Trip]) -> Result<RecordBatch, ConnectorError> {
    let schema = schema_of(&scooter_trip_fields(), None, &["device_id"])?;
    let mut id = StringBuilder::new();
    let mut provider = StringBuilder::new();
    let mut device = StringBuilder::new();
    let mut vtype = StringBuilder::new();
    let mut start = ts_builder();
    let mut end = ts_builder();
    let mut duration = Int64Builder::new();
    let mut distance = Int64Builder::new();
    let (mut sla, mut slo, mut ela, mut elo) = (
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
    );
    let mut scell = StringBuilder::new();
    let mut ecell = StringBuilder::new();
    for t in trips {
        id.append_value(&t.id);
        provider.append_value("scooter-co");
        device.append_value(&t.device);
        vtype.append_value("scooter");
        start.append_value(t.start * MICROS);
        end.append_value(t.end * MICROS);
        duration.append_value(t.end - t.start);
        distance.append_value(t.distance);
        sla.append_value(t.from.0);
        slo.append_value(t.from.1);
        ela.append_value(t.to.0);
        elo.append_value(t.to.1);
        scell.append_value(cell_id(t.from.0, t.from.1));
        ecell.append_value(cell_id(t.to.0, t.to.1));
    }
    batch(
        schema,
        vec![
            Arc::new(id.finish()),
            Arc::new(provider.finish()),
            Arc::new(device.finish()),
            Arc::new(vtype.finish()),
            Arc::new(start.finish()),
            Arc::new(end.finish()),
            Arc::new(duration.finish()),
            Arc::new(distance.finish()),
            Arc::new(sla.finish()),
            Arc::new(slo.finish()),
            Arc::new(ela.finish()),
            Arc::new(elo.finish()),
            Arc::new(scell.finish()),
            Arc::new(ecell.finish()),
        ],
    )
}

/// All scooter trips, ordered by end time.
pub fn scooter_trips(spec: &SampleSpec) -> Result<RecordBatch, ConnectorError> {
    trips_batch(&trips(spec))
}

/// Columns of the consent-records CSV: `purposes` is a `;`-separated list; `status` is `given`,
/// `refused` or `withdrawn`; `given_at` is when the decision was recorded.
pub fn consent_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::required("subject_id", FieldType::String),
        FieldSpec::required("controller", FieldType::String),
        FieldSpec::required("dataset", FieldType::String),
        FieldSpec::required("purposes", FieldType::String),
        FieldSpec::required("status", FieldType::String),
        FieldSpec::required("given_at", FieldType::Timestamp),
        FieldSpec::new("withdrawn_at", FieldType::Timestamp),
        FieldSpec::new("expires_at", FieldType::Timestamp),
    ]
}

/// How long a dated consent of the sample lasts.
const CONSENT_YEARS: i64 = 5;

/// Consent records of the smart-meter households: about 55 % consent to `AcademicResearch`,
/// 10 % only to `ServiceProvision`, 20 % refused, 10 % withdrew, 5 % have no record (plus the
/// fixed households `HH-000001`..`HH-000004`, see the module docs).
pub fn consent_records(spec: &SampleSpec) -> Result<RecordBatch, ConnectorError> {
    let schema = schema_of(&consent_fields(), Some("subject_id"), &[])?;
    let mut rng = Xorshift::new(spec.seed ^ 0xC0_05E7_0005);
    let year_2024 = 1_704_067_200i64;
    let mut subject = StringBuilder::new();
    let mut controller = StringBuilder::new();
    let mut dataset = StringBuilder::new();
    let mut purposes = StringBuilder::new();
    let mut status = StringBuilder::new();
    let mut given = ts_builder();
    let mut withdrawn = ts_builder();
    let mut expires = ts_builder();
    for n in 1..=spec.households {
        let r = rng.unit();
        let extra = rng.unit() < 0.4;
        let given_at = year_2024 + rng.below(330 * 24) as i64 * HOUR;
        let kind = match n {
            1 => 0.0,
            2 => 0.7,
            3 => 0.9,
            4 => 0.99,
            _ => r,
        };
        let (p, s) = if kind < 0.55 {
            if extra {
                ("AcademicResearch;ServiceProvision", "given")
            } else {
                ("AcademicResearch", "given")
            }
        } else if kind < 0.65 {
            ("ServiceProvision", "given")
        } else if kind < 0.85 {
            ("AcademicResearch", "refused")
        } else if kind < 0.95 {
            ("AcademicResearch", "withdrawn")
        } else {
            continue; // no record at all
        };
        subject.append_value(household_id(n));
        controller.append_value("swm");
        dataset.append_value("smart-meter-readings");
        purposes.append_value(p);
        status.append_value(s);
        given.append_value(given_at * MICROS);
        if s == "withdrawn" {
            let at = given_at + (24 + rng.below(60 * 24) as i64) * HOUR;
            withdrawn.append_value(at.min(spec.start - HOUR) * MICROS);
        } else {
            withdrawn.append_null();
        }
        if s == "given" && rng.unit() < 0.7 {
            // Five years, so the bundled demo keeps its consenting
            // households for years after the sample was made.
            expires.append_value((given_at + CONSENT_YEARS * 365 * 24 * HOUR) * MICROS);
        } else {
            expires.append_null();
        }
    }
    batch(
        schema,
        vec![
            Arc::new(subject.finish()),
            Arc::new(controller.finish()),
            Arc::new(dataset.finish()),
            Arc::new(purposes.finish()),
            Arc::new(status.finish()),
            Arc::new(given.finish()),
            Arc::new(withdrawn.finish()),
            Arc::new(expires.finish()),
        ],
    )
}

/// A generated dataset and the connector config that reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleDataset {
    /// Dataset name (`smart-meter-readings`, …).
    pub name: String,
    /// Ready-to-register file connector config (declared schema, subject and identifiers).
    pub config: FileConnectorConfig,
    /// Rows written.
    pub rows: usize,
}

/// Everything [`write_demo_data`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleFiles {
    /// The datasets, in the order smart-meter readings, air quality, traffic counts, scooter
    /// trips.
    pub datasets: Vec<SampleDataset>,
    /// Consent records CSV of the smart-meter households (columns: [`consent_fields`]).
    pub consent_csv: PathBuf,
    /// Consent records written.
    pub consent_rows: usize,
}

impl SampleFiles {
    /// The dataset called `name`.
    pub fn dataset(&self, name: &str) -> Option<&SampleDataset> {
        self.datasets.iter().find(|d| d.name == name)
    }
}

fn format_day(unix: i64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Writes the demo datasets and consent records under `dir` and returns connector configs for
/// them.
pub fn write_demo_data(dir: &Path, spec: &SampleSpec) -> Result<SampleFiles, ConnectorError> {
    let mut datasets = Vec::new();

    let meter_dir = dir.join("smart-meter-readings");
    let mut meter_rows = 0;
    for day in 0..spec.days {
        let b = smart_meter_readings_day(spec, day)?;
        meter_rows += b.num_rows();
        let name = format!(
            "readings-{}.parquet",
            format_day(spec.start + i64::from(day) * 86_400)
        );
        write_parquet(&meter_dir.join(name), &b.schema(), &[b])?;
    }
    let mut meter = FileConnectorConfig::new(&meter_dir, FileFormat::Parquet);
    meter.schema = Some(smart_meter_fields());
    meter.subject_column = Some("household_id".into());
    meter.identifier_columns = vec!["meter_id".into()];
    datasets.push(SampleDataset {
        name: "smart-meter-readings".into(),
        config: meter,
        rows: meter_rows,
    });

    let air = air_quality(spec)?;
    let air_path = dir.join("air-quality.csv");
    write_csv(&air_path, &air.schema(), std::slice::from_ref(&air))?;
    let mut air_config = FileConnectorConfig::new(&air_path, FileFormat::Csv);
    air_config.schema = Some(air_quality_fields());
    datasets.push(SampleDataset {
        name: "air-quality".into(),
        config: air_config,
        rows: air.num_rows(),
    });

    let traffic = traffic_counts(spec)?;
    let traffic_path = dir.join("traffic-counts.geojson");
    write_geojson_points(&traffic_path, std::slice::from_ref(&traffic), "lon", "lat")?;
    let mut traffic_config = FileConnectorConfig::new(&traffic_path, FileFormat::Geojson);
    traffic_config.schema = Some(traffic_counts_geojson_fields());
    datasets.push(SampleDataset {
        name: "traffic-counts".into(),
        config: traffic_config,
        rows: traffic.num_rows(),
    });

    let all_trips = trips(spec);
    let trips_dir = dir.join("scooter-trips");
    let mut hour_start = 0;
    while hour_start < all_trips.len() {
        let hour = all_trips[hour_start].end.div_euclid(HOUR);
        let hour_end = all_trips[hour_start..]
            .iter()
            .position(|t| t.end.div_euclid(HOUR) != hour)
            .map_or(all_trips.len(), |i| hour_start + i);
        let b = trips_batch(&all_trips[hour_start..hour_end])?;
        let name = format!(
            "trips-{}T{:02}.jsonl",
            format_day(hour * HOUR),
            hour.rem_euclid(24)
        );
        write_jsonl(&trips_dir.join(name), &[b])?;
        hour_start = hour_end;
    }
    let mut trips_config = FileConnectorConfig::new(&trips_dir, FileFormat::Jsonl);
    trips_config.schema = Some(scooter_trip_fields());
    trips_config.identifier_columns = vec!["device_id".into()];
    datasets.push(SampleDataset {
        name: "scooter-trips".into(),
        config: trips_config,
        rows: all_trips.len(),
    });

    let consent = consent_records(spec)?;
    let consent_csv = dir.join("consent-records.csv");
    write_csv(
        &consent_csv,
        &consent.schema(),
        std::slice::from_ref(&consent),
    )?;
    Ok(SampleFiles {
        datasets,
        consent_csv,
        consent_rows: consent.num_rows(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(1_740_960_000), "2025-03-03");
        assert_eq!(format_day(1_709_164_800), "2024-02-29");
    }

    #[test]
    fn generator_is_deterministic_and_seed_dependent() {
        let mut a = Xorshift::new(7);
        let mut b = Xorshift::new(7);
        let mut c = Xorshift::new(8);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(xs, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());
        let u = Xorshift::new(1).uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn sample_consents_outlast_the_demo_years() {
        use arrow::array::{Array, TimestampMicrosecondArray};
        let b = consent_records(&SampleSpec::default()).unwrap();
        let expires = b
            .column_by_name("expires_at")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        let dated: Vec<i64> = expires.iter().flatten().collect();
        assert!(!dated.is_empty(), "the sample has dated consents");
        // 2029-01-01: the bundled demo keeps its consenting households.
        let earliest = dated.iter().min().copied().unwrap() / MICROS;
        assert!(
            earliest >= 1_861_920_000,
            "a sample consent ends at {earliest}"
        );
    }
}
