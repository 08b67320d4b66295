//! The release spec: what one anonymised release of a dataset publishes (`[[opendata.release]]`
//! in the owner's node config), parsed with serde (`deny_unknown_fields`) and validated against
//! the dataset's Arrow schema. Errors name the release, the key and the column in backticks.

use std::collections::HashSet;

use arrow::datatypes::{DataType, Schema, TimeUnit};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::SpecError;

/// The default minimum cell size.
pub const DEFAULT_K: u64 = 10;
/// The largest δ a spec may ask for.
pub const MAX_DELTA: f64 = 1e-3;
/// The most group-by columns one release may have (the engine's cell keys are fixed arrays).
pub const MAX_GROUP_BY: usize = 6;

/// One release of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    /// The dataset released (its catalog name).
    pub dataset: String,
    /// What the privacy unit is called in reports (`person`, `vehicle`, `household`, …).
    pub unit: String,
    /// The column identifying the unit; k counts distinct values of it, never rows.
    pub unit_column: String,
    /// Minimum number of distinct units per released cell (at least 2).
    #[serde(default = "default_k")]
    pub k: u64,
    /// Publish margins (every group-by column replaced by `*` in turn, and the grand total);
    /// only without differential privacy.
    #[serde(default)]
    pub totals: bool,
    /// The group-by columns with their generalisation.
    pub group_by: Vec<GroupBy>,
    /// The published measures.
    pub measures: Vec<Measure>,
    /// Differential privacy, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpSpec>,
    /// The ε budget the broker's ledger enforces (required with `dp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
}

fn default_k() -> u64 {
    DEFAULT_K
}

/// One group-by entry as written in TOML; [`GroupBy::kind`] tells which generalisation it is.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBy {
    /// The input column (time, bands, categorical).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The latitude and longitude columns (grid, regions), in that order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Timestamp truncation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeBucket>,
    /// Grid cell size in metres on the INSPIRE/EEA grid (EPSG:3035).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid_m: Option<i64>,
    /// A GeoJSON FeatureCollection of the regions (Polygon/MultiPolygon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<String>,
    /// The feature property naming a region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub property: Option<String>,
    /// Band lower bounds, strictly increasing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bands: Option<Vec<f64>>,
    /// Equal-width bands starting at 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band_width: Option<f64>,
    /// The output column's name (defaults to the input column's).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub as_name: Option<String>,
}

/// Timestamp truncation (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeBucket {
    /// `2026-11-30T14:00Z`
    Hour,
    /// `2026-11-30`
    Day,
    /// `2026-11`
    Month,
}

/// What a group-by entry does, after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupKind {
    /// A timestamp truncated to an hour, day or month (UTC).
    Time { column: String, bucket: TimeBucket },
    /// Coordinates to a cell of the EPSG:3035 grid of `size_m` metres.
    Grid {
        lat: String,
        lon: String,
        size_m: u32,
    },
    /// Coordinates to the region containing them (`outside` when none does).
    Regions {
        lat: String,
        lon: String,
        file: String,
        property: String,
    },
    /// A number to its band (`bounds` strictly increasing lower bounds).
    Bands { column: String, bounds: Vec<f64> },
    /// A number to its equal-width band starting at 0.
    BandWidth { column: String, width: f64 },
    /// A string as is.
    Categorical { column: String },
}

/// One published measure.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measure {
    /// The output column's name.
    pub name: String,
    /// Count rows or distinct units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<CountOf>,
    /// Sum of a numeric column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
    /// Mean of a numeric column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<String>,
    /// Clipping bounds `[lo, hi]` for sums and means (required with `dp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<[f64; 2]>,
}

/// What a count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CountOf {
    /// Rows (trips, readings).
    Rows,
    /// Distinct units (persons, vehicles).
    Units,
}

/// What a measure computes, after validation.
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureKind {
    /// Number of rows.
    Rows,
    /// Number of distinct units.
    Units,
    /// Sum of `column`, clipped to `clip` when given.
    Sum {
        column: String,
        clip: Option<(f64, f64)>,
    },
    /// Mean of `column`, clipped to `clip` when given.
    Mean {
        column: String,
        clip: Option<(f64, f64)>,
    },
}

/// Differential privacy for one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSpec {
    /// ε spent by one release (pure ε for Laplace; the (ε, δ) target for Gaussian).
    pub epsilon: f64,
    /// δ, in (0, 1e-3]: covers the data-dependent choice of released cells (and, for Gaussian,
    /// the zCDP conversion).
    pub delta: f64,
    /// The noise distribution.
    #[serde(default = "default_mechanism")]
    pub mechanism: Mechanism,
    /// Contribution bound l0: cells one unit may influence.
    pub max_cells_per_unit: u32,
    /// Contribution bound l∞: rows one unit may contribute to one cell.
    pub max_rows_per_cell: u32,
}

fn default_mechanism() -> Mechanism {
    Mechanism::Laplace
}

/// The noise mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// Discrete Laplace, pure ε-DP per measure (plus δ for the released cells).
    Laplace,
    /// Discrete Gaussian, accounted in zCDP and converted to (ε, δ).
    Gaussian,
}

impl Mechanism {
    /// The spelling used in specs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Laplace => "laplace",
            Mechanism::Gaussian => "gaussian",
        }
    }
}

/// The per-dataset ε budget (enforced by the broker's ledger; parsed and validated here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// ε available per period, per unit.
    pub epsilon: f64,
    /// The period after which the budget is available again.
    pub period: BudgetPeriod,
}

/// The period of an ε budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
    /// A UTC calendar year.
    Year,
}

impl GroupBy {
    /// The generalisation this entry asks for, or an error naming the key.
    pub fn kind(&self, release: &str, index: usize) -> Result<GroupKind, SpecError> {
        let key = |k: &str| format!("group_by[{index}].{k}");
        let err = |k: &str, message: String| SpecError::new(release, key(k), message);
        let coords = || -> Result<(String, String), SpecError> {
            match self.columns.as_deref() {
                Some([lat, lon]) => Ok((lat.clone(), lon.clone())),
                _ => Err(err(
                    "columns",
                    "expected two columns: latitude and longitude".into(),
                )),
            }
        };
        let single = || -> Result<String, SpecError> {
            match (&self.column, &self.columns) {
                (Some(c), None) => Ok(c.clone()),
                (None, _) => Err(err("column", "missing".into())),
                (Some(_), Some(_)) => Err(err(
                    "columns",
                    "only with `grid_m` or `regions`; use `column`".into(),
                )),
            }
        };
        let chosen = [
            self.time.is_some(),
            self.grid_m.is_some(),
            self.regions.is_some(),
            self.bands.is_some(),
            self.band_width.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if chosen > 1 {
            return Err(err(
                "",
                "choose one of `time`, `grid_m`, `regions`, `bands`, `band_width`".into(),
            )
            .trim_key());
        }
        if self.property.is_some() && self.regions.is_none() {
            return Err(err("property", "only with `regions`".into()));
        }
        if let Some(bucket) = self.time {
            return Ok(GroupKind::Time {
                column: single()?,
                bucket,
            });
        }
        if let Some(size) = self.grid_m {
            if self.column.is_some() {
                return Err(err("column", "a grid takes `columns = [lat, lon]`".into()));
            }
            let (lat, lon) = coords()?;
            if size <= 0 || size > 1_000_000 {
                return Err(err(
                    "grid_m",
                    format!("`{size}` is not a cell size in metres (1 to 1000000)"),
                ));
            }
            return Ok(GroupKind::Grid {
                lat,
                lon,
                size_m: u32::try_from(size).unwrap_or(1),
            });
        }
        if let Some(file) = &self.regions {
            if self.column.is_some() {
                return Err(err("column", "regions take `columns = [lat, lon]`".into()));
            }
            let (lat, lon) = coords()?;
            let property = self.property.clone().ok_or_else(|| {
                err(
                    "property",
                    "missing: the feature property naming a region".into(),
                )
            })?;
            return Ok(GroupKind::Regions {
                lat,
                lon,
                file: file.clone(),
                property,
            });
        }
        if let Some(bounds) = &self.bands {
            let column = single()?;
            if bounds.is_empty() {
                return Err(err("bands", "empty".into()));
            }
            if bounds.iter().any(|b| !b.is_finite()) {
                return Err(err("bands", "every bound must be a finite number".into()));
            }
            if bounds.windows(2).any(|w| w[0] >= w[1]) {
                return Err(err("bands", "bounds must be strictly increasing".into()));
            }
            return Ok(GroupKind::Bands {
                column,
                bounds: bounds.clone(),
            });
        }
        if let Some(width) = self.band_width {
            let column = single()?;
            if !(width.is_finite() && width > 0.0) {
                return Err(err(
                    "band_width",
                    format!("`{width}` is not a positive finite width"),
                ));
            }
            return Ok(GroupKind::BandWidth { column, width });
        }
        Ok(GroupKind::Categorical { column: single()? })
    }

    /// The output column's name.
    pub fn output_name(&self) -> String {
        if let Some(name) = &self.as_name {
            return name.clone();
        }
        if let Some(c) = &self.column {
            return c.clone();
        }
        self.columns
            .as_ref()
            .map(|c| c.join("_"))
            .unwrap_or_default()
    }
}

impl Measure {
    /// What this measure computes, or an error naming the key.
    pub fn kind(&self, release: &str, index: usize) -> Result<MeasureKind, SpecError> {
        let key = |k: &str| format!("measures[{index}].{k}");
        let err = |k: &str, message: String| SpecError::new(release, key(k), message);
        let chosen = [
            self.count.is_some(),
            self.sum.is_some(),
            self.mean.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if chosen != 1 {
            return Err(err("", "choose exactly one of `count`, `sum`, `mean`".into()).trim_key());
        }
        let clip = match self.clip {
            None => None,
            Some([lo, hi]) => {
                if !(lo.is_finite() && hi.is_finite()) {
                    return Err(err("clip", "bounds must be finite numbers".into()));
                }
                if lo > hi {
                    return Err(err(
                        "clip",
                        format!("lower bound `{lo}` above upper bound `{hi}`"),
                    ));
                }
                Some((lo, hi))
            }
        };
        match (self.count, &self.sum, &self.mean) {
            (Some(c), _, _) => {
                if clip.is_some() {
                    return Err(err("clip", "only for `sum` and `mean`".into()));
                }
                Ok(match c {
                    CountOf::Rows => MeasureKind::Rows,
                    CountOf::Units => MeasureKind::Units,
                })
            }
            (None, Some(column), _) => Ok(MeasureKind::Sum {
                column: column.clone(),
                clip,
            }),
            (None, None, Some(column)) => Ok(MeasureKind::Mean {
                column: column.clone(),
                clip,
            }),
            (None, None, None) => {
                Err(err("", "choose one of `count`, `sum`, `mean`".into()).trim_key())
            }
        }
    }
}

/// A spec checked against a schema: the typed group-by and measure kinds, with column indices.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The group-by kinds with their output names.
    pub groups: Vec<(GroupKind, String)>,
    /// The measure kinds with their output names.
    pub measures: Vec<(MeasureKind, String)>,
}

impl ReleaseSpec {
    /// ε one release spends (what the ledger charges), if the release uses differential privacy.
    pub fn epsilon_cost(&self) -> Option<f64> {
        self.dp.as_ref().map(|dp| dp.epsilon)
    }

    /// The sha256 of the spec's canonical JSON form (lowercase hex).
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(json))
    }

    /// Checks the numbers and shape of the spec without a schema.
    pub fn validate(&self) -> Result<Validated, SpecError> {
        let release = self.dataset.as_str();
        let err = |key: &str, message: String| SpecError::new(release, key.to_string(), message);
        if self.dataset.trim().is_empty() {
            return Err(err("dataset", "empty".into()));
        }
        if self.unit.trim().is_empty() {
            return Err(err("unit", "empty".into()));
        }
        if self.unit_column.trim().is_empty() {
            return Err(err("unit_column", "empty".into()));
        }
        if self.k < 2 {
            return Err(err("k", format!("`{}` is below the minimum 2", self.k)));
        }
        if self.group_by.is_empty() {
            return Err(err(
                "group_by",
                "at least one group-by column is required".into(),
            ));
        }
        if self.group_by.len() > MAX_GROUP_BY {
            return Err(err(
                "group_by",
                format!("at most {MAX_GROUP_BY} group-by columns"),
            ));
        }
        if self.measures.is_empty() {
            return Err(err("measures", "at least one measure is required".into()));
        }
        let mut names = HashSet::new();
        let mut groups = Vec::new();
        for (i, g) in self.group_by.iter().enumerate() {
            let kind = g.kind(release, i)?;
            let name = g.output_name();
            if name.is_empty() || !names.insert(name.clone()) {
                return Err(err(
                    &format!("group_by[{i}].as"),
                    format!("output column `{name}` is empty or used twice"),
                ));
            }
            groups.push((kind, name));
        }
        let mut measures = Vec::new();
        for (i, m) in self.measures.iter().enumerate() {
            let kind = m.kind(release, i)?;
            if m.name.is_empty() || m.name == SUPPRESSED_COLUMN || !names.insert(m.name.clone()) {
                return Err(err(
                    &format!("measures[{i}].name"),
                    format!(
                        "output column `{}` is empty, reserved or used twice",
                        m.name
                    ),
                ));
            }
            if self.dp.is_some()
                && let MeasureKind::Sum { clip: None, column }
                | MeasureKind::Mean { clip: None, column } = &kind
            {
                return Err(err(
                    &format!("measures[{i}].clip"),
                    format!("required for `{column}` with differential privacy"),
                ));
            }
            measures.push((kind, m.name.clone()));
        }
        if let Some(dp) = &self.dp {
            if !(dp.epsilon.is_finite() && dp.epsilon > 0.0) {
                return Err(err(
                    "dp.epsilon",
                    format!("`{}` is not a positive finite number", dp.epsilon),
                ));
            }
            if !(dp.delta.is_finite() && dp.delta > 0.0 && dp.delta <= MAX_DELTA) {
                return Err(err(
                    "dp.delta",
                    format!("`{}` is outside (0, {MAX_DELTA}]", dp.delta),
                ));
            }
            if dp.max_cells_per_unit == 0 {
                return Err(err("dp.max_cells_per_unit", "must be at least 1".into()));
            }
            if dp.max_rows_per_cell == 0 {
                return Err(err("dp.max_rows_per_cell", "must be at least 1".into()));
            }
            if self.totals {
                return Err(err(
                    "totals",
                    "margins are not released with differential privacy; remove `totals`".into(),
                ));
            }
            match &self.budget {
                None => {
                    return Err(err(
                        "budget",
                        "missing: a release with `dp` needs an ε budget".into(),
                    ));
                }
                Some(b) => {
                    if !(b.epsilon.is_finite() && b.epsilon > 0.0) {
                        return Err(err(
                            "budget.epsilon",
                            format!("`{}` is not a positive finite number", b.epsilon),
                        ));
                    }
                    if dp.epsilon > b.epsilon {
                        return Err(err(
                            "dp.epsilon",
                            format!(
                                "`{}` exceeds the budget's `{}` per period",
                                dp.epsilon, b.epsilon
                            ),
                        ));
                    }
                }
            }
        } else if self.budget.is_some() {
            return Err(err("budget", "only with `dp`".into()));
        }
        Ok(Validated { groups, measures })
    }

    /// Checks the spec against the dataset's Arrow schema: every named column exists with a
    /// usable type.
    pub fn validate_schema(&self, schema: &Schema) -> Result<Validated, SpecError> {
        let v = self.validate()?;
        let release = self.dataset.as_str();
        let check =
            |key: String, column: &str, ok: &dyn Fn(&DataType) -> bool, want: &str| match schema
                .field_with_name(column)
            {
                Err(_) => Err(SpecError::new(
                    release,
                    key,
                    format!("column `{column}` is not in the dataset"),
                )),
                Ok(f) if !ok(f.data_type()) => Err(SpecError::new(
                    release,
                    key,
                    format!(
                        "column `{column}` has type `{}`, expected {want}",
                        f.data_type()
                    ),
                )),
                Ok(_) => Ok(()),
            };
        let unit_ok = |t: &DataType| matches!(t, DataType::Utf8 | DataType::Int64);
        check(
            "unit_column".into(),
            &self.unit_column,
            &unit_ok,
            "string or int64",
        )?;
        let float = |t: &DataType| matches!(t, DataType::Float64);
        let number = |t: &DataType| matches!(t, DataType::Float64 | DataType::Int64);
        let time = |t: &DataType| matches!(t, DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if tz.as_ref() == "+00:00" || tz.as_ref() == "UTC");
        let utf8 = |t: &DataType| matches!(t, DataType::Utf8);
        for (i, (kind, _)) in v.groups.iter().enumerate() {
            match kind {
                GroupKind::Time { column, .. } => check(
                    format!("group_by[{i}].column"),
                    column,
                    &time,
                    "timestamp (microseconds, UTC)",
                )?,
                GroupKind::Grid { lat, lon, .. } | GroupKind::Regions { lat, lon, .. } => {
                    for c in [lat, lon] {
                        check(format!("group_by[{i}].columns"), c, &float, "float64")?;
                    }
                }
                GroupKind::Bands { column, .. } | GroupKind::BandWidth { column, .. } => check(
                    format!("group_by[{i}].column"),
                    column,
                    &number,
                    "int64 or float64",
                )?,
                GroupKind::Categorical { column } => {
                    check(format!("group_by[{i}].column"), column, &utf8, "string")?
                }
            }
        }
        for (i, (kind, _)) in v.measures.iter().enumerate() {
            match kind {
                MeasureKind::Sum { column, .. } => check(
                    format!("measures[{i}].sum"),
                    column,
                    &number,
                    "int64 or float64",
                )?,
                MeasureKind::Mean { column, .. } => check(
                    format!("measures[{i}].mean"),
                    column,
                    &number,
                    "int64 or float64",
                )?,
                MeasureKind::Rows | MeasureKind::Units => {}
            }
        }
        Ok(v)
    }
}

/// The name of the k-anonymity table's suppression-reason column.
pub const SUPPRESSED_COLUMN: &str = "suppressed";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::Field;

    use super::*;

    const FULL: &str = r#"
dataset = "scooter-trips"
unit = "vehicle"
unit_column = "device_id"
k = 10
group_by = [
  { column = "start_time", time = "hour" },
  { columns = ["start_lat", "start_lon"], grid_m = 500, as = "start_cell" },
  { columns = ["start_lat", "start_lon"], regions = "districts.geojson", property = "name", as = "district" },
  { column = "age", bands = [0, 18, 30, 45, 65], as = "age_band" },
  { column = "vehicle_type" },
]
measures = [
  { name = "trips", count = "rows" },
  { name = "vehicles", count = "units" },
  { name = "distance_m", sum = "distance", clip = [0, 20000] },
  { name = "mean_distance_m", mean = "distance", clip = [0, 20000] },
]
[dp]
epsilon = 1.0
delta = 1e-6
mechanism = "laplace"
max_cells_per_unit = 4
max_rows_per_cell = 3
[budget]
epsilon = 10.0
period = "month"
"#;

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new(
                "start_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("+00:00"))),
                true,
            ),
            Field::new("start_lat", DataType::Float64, true),
            Field::new("start_lon", DataType::Float64, true),
            Field::new("age", DataType::Int64, true),
            Field::new("vehicle_type", DataType::Utf8, true),
            Field::new("distance", DataType::Float64, true),
        ])
    }

    fn parse(text: &str) -> ReleaseSpec {
        toml::from_str(text).unwrap()
    }

    /// The error of `FULL` with `from` replaced by `to`.
    fn error(from: &str, to: &str) -> SpecError {
        assert!(FULL.contains(from), "{from}");
        parse(&FULL.replacen(from, to, 1))
            .validate_schema(&schema())
            .unwrap_err()
    }

    #[test]
    fn the_documented_spec_is_valid() {
        let s = parse(FULL);
        let v = s.validate_schema(&schema()).unwrap();
        assert_eq!(v.groups.len(), 5);
        assert_eq!(v.groups[1].1, "start_cell");
        assert_eq!(v.groups[4].1, "vehicle_type");
        assert_eq!(s.epsilon_cost(), Some(1.0));
        assert_eq!(s.fingerprint().len(), 64);
        let mut other = s.clone();
        other.k = 11;
        assert_ne!(other.fingerprint(), s.fingerprint());
        assert_eq!(parse(&FULL.replace("k = 10\n", "")).k, DEFAULT_K);
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        assert!(toml::from_str::<ReleaseSpec>(&FULL.replace("k = 10", "k = 10\nkk = 1")).is_err());
        assert!(toml::from_str::<ReleaseSpec>(&FULL.replace("\"month\"", "\"week\"")).is_err());
        assert!(toml::from_str::<ReleaseSpec>(&FULL.replace("\"hour\"", "\"minute\"")).is_err());
        assert!(
            toml::from_str::<ReleaseSpec>(
                &FULL.replace("grid_m = 500,", "grid_m = 500, cell = 1,")
            )
            .is_err()
        );
    }

    #[test]
    fn errors_name_the_key_and_the_column() {
        let cases: Vec<(&str, &str, &str, &str)> = vec![
            ("k = 10", "k = 1", "k", "below the minimum 2"),
            ("epsilon = 1.0", "epsilon = 0.0", "dp.epsilon", "`0`"),
            ("epsilon = 1.0", "epsilon = -3.0", "dp.epsilon", "`-3`"),
            ("epsilon = 1.0", "epsilon = nan", "dp.epsilon", "NaN"),
            (
                "epsilon = 1.0",
                "epsilon = 11.0",
                "dp.epsilon",
                "exceeds the budget",
            ),
            (
                "delta = 1e-6",
                "delta = 0.01",
                "dp.delta",
                "outside (0, 0.001]",
            ),
            ("delta = 1e-6", "delta = 0.0", "dp.delta", "outside"),
            ("grid_m = 500", "grid_m = 0", "group_by[1].grid_m", "`0`"),
            ("grid_m = 500", "grid_m = -5", "group_by[1].grid_m", "`-5`"),
            (
                "[0, 18, 30, 45, 65]",
                "[0, 30, 18]",
                "group_by[3].bands",
                "strictly increasing",
            ),
            (
                "clip = [0, 20000] },\n  { name = \"mean",
                "clip = [5, 1] },\n  { name = \"mean",
                "measures[2].clip",
                "`5`",
            ),
            (
                "\"device_id\"",
                "\"vehicle\"",
                "unit_column",
                "column `vehicle` is not in the dataset",
            ),
            (
                "column = \"start_time\"",
                "column = \"distance\"",
                "group_by[0].column",
                "column `distance` has type `Float64`",
            ),
            (
                "\"start_lat\", \"start_lon\"], grid",
                "\"start_lat\", \"age\"], grid",
                "group_by[1].columns",
                "column `age`",
            ),
            (
                "column = \"vehicle_type\"",
                "column = \"age\"",
                "group_by[4].column",
                "column `age` has type `Int64`, expected string",
            ),
            (
                "sum = \"distance\"",
                "sum = \"vehicle_type\"",
                "measures[2].sum",
                "column `vehicle_type`",
            ),
            (
                "mean = \"distance\"",
                "mean = \"nope\"",
                "measures[3].mean",
                "column `nope` is not in the dataset",
            ),
            (
                "mean = \"distance\", clip = [0, 20000]",
                "mean = \"distance\"",
                "measures[3].clip",
                "`distance`",
            ),
            (
                "[budget]\nepsilon = 10.0\nperiod = \"month\"\n",
                "",
                "budget",
                "missing",
            ),
            ("k = 10", "k = 10\ntotals = true", "totals", "margins"),
            (
                "{ name = \"trips\", count = \"rows\" }",
                "{ name = \"trips\", count = \"rows\", sum = \"distance\" }",
                "measures[0]",
                "exactly one",
            ),
            (
                "as = \"district\"",
                "as = \"start_cell\"",
                "group_by[2].as",
                "`start_cell`",
            ),
        ];
        for (from, to, key, text) in cases {
            let e = error(from, to);
            assert_eq!(e.key, key, "{from} → {to}: {e}");
            assert!(e.message.contains(text), "{from} → {to}: {e}");
            assert!(
                e.to_string().starts_with("release `scooter-trips`: `"),
                "{e}"
            );
        }
    }
}
