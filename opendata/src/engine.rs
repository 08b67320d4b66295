//! The streaming release engine: [`Releaser::new`] binds a validated spec to the dataset schema,
//! [`Releaser::push`] folds each record batch into per-(unit, cell) accumulators (memory bounded
//! by the number of such pairs, not rows), and [`Releaser::finish`] builds the [`Release`]:
//! k-anonymity with primary and secondary suppression, or differential privacy with contribution
//! bounding, exact discrete noise and thresholding on noisy distinct-unit counts.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, Int64Array, Int64Builder, StringArray,
    StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::dp::{self, NoisyQuantity, Plan, Slots};
use crate::error::{ReleaseError, SpecError};
use crate::generalise::{Dim, DimArrays, STAR};
use crate::geo::Regions;
use crate::noise::{Noise, scale_to_rbig};
use crate::spec::{
    GroupKind, MAX_GROUP_BY, MeasureKind, Mechanism, ReleaseSpec, SUPPRESSED_COLUMN, Validated,
};
use crate::suppress::{self, Status};

/// A cell key: one generalised key per group-by column (unused positions 0; [`STAR`] = margin).
pub(crate) type CellKey = [i64; MAX_GROUP_BY];

/// One computed release: the table to publish and its report.
#[derive(Debug, Clone)]
pub struct Release {
    /// Group columns (Utf8; margins `*`), one column per measure (nullable: null = suppressed),
    /// and in k-anonymity mode the `suppressed` reason column (`primary`, `secondary` or null).
    pub table: RecordBatch,
    /// The machine-readable release report (published with the table).
    pub report: ReleaseReport,
    /// Exact counts for the owner's own records (never published: in DP mode they are not DP).
    pub diagnostics: Diagnostics,
}

/// The published report of one release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseReport {
    /// The released dataset.
    pub dataset: String,
    /// sha256 of the spec's canonical JSON.
    pub spec_fingerprint: String,
    /// What the privacy unit is called.
    pub unit: String,
    /// The column identifying the unit.
    pub unit_column: String,
    /// Minimum distinct units per released cell.
    pub k: u64,
    /// `k-anonymity` or `differential-privacy`.
    pub method: String,
    /// The group-by output columns.
    pub group_by: Vec<String>,
    /// The measure output columns.
    pub measures: Vec<String>,
    /// Whether margins (`*`) are published.
    pub margins: bool,
    /// Rows read (k-anonymity mode only: exact counts are not DP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_read: Option<u64>,
    /// Rows skipped, by reason (k-anonymity mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_skipped: Option<BTreeMap<String, u64>>,
    /// Distinct units seen (k-anonymity mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<u64>,
    /// Non-empty cells including margins (k-anonymity mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<u64>,
    /// Cells published with values.
    pub cells_released: u64,
    /// Cells suppressed for having fewer than k units (k-anonymity mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_primary: Option<u64>,
    /// Cells suppressed so that no primary suppression can be recovered from a margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_secondary: Option<u64>,
    /// The differential-privacy parameters, when used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpReport>,
    /// When the release was made (given by the caller).
    pub generated_at: String,
}

/// The differential-privacy block of a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpReport {
    /// `laplace` or `gaussian`.
    pub mechanism: String,
    /// ε spent by this release, per unit.
    pub epsilon: f64,
    /// δ of the release.
    pub delta: f64,
    /// ρ (zCDP) for the Gaussian mechanism.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// Cells are released when their noisy distinct-unit count is at least this.
    pub threshold: i64,
    /// The part of δ that pays for the threshold.
    pub threshold_delta: f64,
    /// Contribution bound l0.
    pub max_cells_per_unit: u32,
    /// Contribution bound l∞.
    pub max_rows_per_cell: u32,
    /// The noise on each quantity.
    pub noise: Vec<NoisyQuantity>,
    /// How the numbers are made: sums of clipped values rounded to integers, means as noisy sum
    /// over noisy rows, clamped to the clip bounds.
    pub notes: Vec<String>,
}

/// Exact counts kept for the data owner (audit, diagnostics); not part of the published report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Rows read.
    pub rows_read: u64,
    /// Rows skipped, by reason.
    pub rows_skipped: BTreeMap<String, u64>,
    /// Distinct units.
    pub units: u64,
    /// Non-empty cells before suppression (without margins).
    pub cells: u64,
    /// DP: units that touched more than l0 cells.
    pub units_bounded: u64,
    /// DP: (unit, cell) pairs dropped by the l0 bound.
    pub pairs_dropped: u64,
    /// DP: rows dropped by the l0 and l∞ bounds.
    pub rows_dropped: u64,
    /// DP: cells whose noisy unit count stayed below the threshold.
    pub cells_below_threshold: u64,
}

/// A fast multiplicative hasher for the engine's internal keys (interned ids and generalised
/// cell keys, which the data cannot choose freely); unit strings keep std's SipHash.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        // Final avalanche so that the low bits hashbrown uses depend on every input bit.
        let mut z = self.0;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }
}

/// A map keyed by internal ids.
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

enum Units {
    Str(HashMap<Box<str>, u32>),
    Int(HashMap<i64, u32>),
}

struct SumSlot {
    col: usize,
    clip: Option<(f64, f64)>,
    reason: usize,
}

/// Streams record batches into a release.
pub struct Releaser<N: Noise> {
    spec: ReleaseSpec,
    validated: Validated,
    noise: N,
    dims: Vec<Dim>,
    dim_reasons: Vec<usize>,
    unit_col: usize,
    sums: Vec<SumSlot>,
    reasons: Vec<(String, u64)>,
    units: Units,
    unit_count: u32,
    cells: IdMap<CellKey, u32>,
    cell_keys: Vec<CellKey>,
    pairs: IdMap<u64, u32>,
    pair_unit: Vec<u32>,
    pair_cell: Vec<u32>,
    pair_rows: Vec<u32>,
    pair_sums: Vec<f64>,
    rows_read: u64,
}

impl<N: Noise> std::fmt::Debug for Releaser<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Releaser")
            .field("dataset", &self.spec.dataset)
            .field("rows_read", &self.rows_read)
            .field("pairs", &self.pair_unit.len())
            .finish()
    }
}

const REASON_UNIT: usize = 0;

impl<N: Noise> Releaser<N> {
    /// A releaser for `spec` over batches of `schema`; regions files are read relative to the
    /// current directory (absolute paths as given).
    pub fn new(spec: ReleaseSpec, schema: &Schema, noise: N) -> Result<Releaser<N>, ReleaseError> {
        Self::new_in(spec, schema, noise, None)
    }

    /// Like [`Releaser::new`], reading relative regions paths below `base`.
    pub fn new_in(
        spec: ReleaseSpec,
        schema: &Schema,
        noise: N,
        base: Option<&Path>,
    ) -> Result<Releaser<N>, ReleaseError> {
        let validated = spec.validate_schema(schema)?;
        let mut regions = HashMap::new();
        for (kind, _) in &validated.groups {
            if let GroupKind::Regions { file, property, .. } = kind {
                let path = match base {
                    Some(b) => b.join(file),
                    None => Path::new(file).to_path_buf(),
                };
                let text = std::fs::read_to_string(&path).map_err(|e| ReleaseError::Regions {
                    file: file.clone(),
                    message: e.to_string(),
                })?;
                let r = Regions::from_geojson(&text, property).map_err(|message| {
                    ReleaseError::Regions {
                        file: file.clone(),
                        message,
                    }
                })?;
                regions.insert((file.clone(), property.clone()), Arc::new(r));
            }
        }
        Self::with_regions(spec, validated, schema, noise, regions)
    }

    /// A releaser whose regions are given (keyed by the spec's file and property).
    pub fn with_loaded_regions(
        spec: ReleaseSpec,
        schema: &Schema,
        noise: N,
        regions: HashMap<(String, String), Arc<Regions>>,
    ) -> Result<Releaser<N>, ReleaseError> {
        let validated = spec.validate_schema(schema)?;
        Self::with_regions(spec, validated, schema, noise, regions)
    }

    fn with_regions(
        spec: ReleaseSpec,
        validated: Validated,
        schema: &Schema,
        noise: N,
        regions: HashMap<(String, String), Arc<Regions>>,
    ) -> Result<Releaser<N>, ReleaseError> {
        let index = |c: &str| schema.index_of(c).unwrap_or(usize::MAX);
        let mut reasons = vec![(format!("null `{}`", spec.unit_column), 0u64)];
        let mut reason = |name: String| -> usize {
            if let Some(i) = reasons.iter().position(|(n, _)| *n == name) {
                return i;
            }
            reasons.push((name, 0));
            reasons.len() - 1
        };
        let mut dims = Vec::new();
        let mut dim_reasons = Vec::new();
        for (kind, _) in &validated.groups {
            let r = match kind {
                GroupKind::Regions { file, property, .. } => Some(
                    regions
                        .get(&(file.clone(), property.clone()))
                        .cloned()
                        .ok_or_else(|| ReleaseError::Regions {
                            file: file.clone(),
                            message: "not loaded".into(),
                        })?,
                ),
                _ => None,
            };
            let dim = Dim::new(kind, index, r);
            dim_reasons.push(reason(dim.skip_reason(kind)));
            dims.push(dim);
        }
        let mut sums = Vec::new();
        for (kind, _) in &validated.measures {
            if let MeasureKind::Sum { column, clip } | MeasureKind::Mean { column, clip } = kind {
                sums.push(SumSlot {
                    col: index(column),
                    clip: *clip,
                    reason: reason(format!("null or non-finite `{column}`")),
                });
            }
        }
        let unit_col = index(&spec.unit_column);
        let units = match schema.field(unit_col).data_type() {
            DataType::Int64 => Units::Int(HashMap::new()),
            _ => Units::Str(HashMap::new()),
        };
        Ok(Releaser {
            spec,
            validated,
            noise,
            dims,
            dim_reasons,
            unit_col,
            sums,
            reasons,
            units,
            unit_count: 0,
            cells: IdMap::default(),
            cell_keys: Vec::new(),
            pairs: IdMap::default(),
            pair_unit: Vec::new(),
            pair_cell: Vec::new(),
            pair_rows: Vec::new(),
            pair_sums: Vec::new(),
            rows_read: 0,
        })
    }

    /// Folds one batch of the dataset into the release.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<(), ReleaseError> {
        let columns = batch.columns();
        let mismatch = |what: &str| {
            ReleaseError::Batch(format!("column for {what} missing or of another type"))
        };
        let dim_arrays: Vec<DimArrays<'_>> = self
            .dims
            .iter()
            .map(|d| d.arrays(columns))
            .collect::<Option<_>>()
            .ok_or_else(|| mismatch("a group-by"))?;
        let mut sum_arrays = Vec::with_capacity(self.sums.len());
        for s in &self.sums {
            let a = columns.get(s.col).ok_or_else(|| mismatch("a measure"))?;
            sum_arrays.push(NumArray::of(a).ok_or_else(|| mismatch("a measure"))?);
        }
        let unit_array = columns
            .get(self.unit_col)
            .ok_or_else(|| mismatch("the unit"))?;
        let unit_str = unit_array.as_any().downcast_ref::<StringArray>();
        let unit_int = unit_array.as_any().downcast_ref::<Int64Array>();
        let bound = self.spec.dp.as_ref().map(|d| d.max_rows_per_cell);
        let dp = self.spec.dp.is_some();
        let nsums = self.sums.len();
        let mut values = vec![0f64; nsums];
        'rows: for row in 0..batch.num_rows() {
            self.rows_read += 1;
            let unit = match (&mut self.units, unit_str, unit_int) {
                (Units::Str(map), Some(a), _) => {
                    if a.is_null(row) {
                        self.reasons[REASON_UNIT].1 += 1;
                        continue;
                    }
                    let s = a.value(row);
                    match map.get(s) {
                        Some(u) => *u,
                        None => {
                            let u = self.unit_count;
                            map.insert(s.into(), u);
                            self.unit_count += 1;
                            u
                        }
                    }
                }
                (Units::Int(map), _, Some(a)) => {
                    if a.is_null(row) {
                        self.reasons[REASON_UNIT].1 += 1;
                        continue;
                    }
                    let next = self.unit_count;
                    let u = *map.entry(a.value(row)).or_insert(next);
                    if u == next {
                        self.unit_count += 1;
                    }
                    u
                }
                _ => return Err(mismatch("the unit")),
            };
            let mut key: CellKey = [0; MAX_GROUP_BY];
            for (d, dim) in self.dims.iter_mut().enumerate() {
                match dim.key(&dim_arrays[d], row) {
                    Some(k) => key[d] = k,
                    None => {
                        self.reasons[self.dim_reasons[d]].1 += 1;
                        continue 'rows;
                    }
                }
            }
            for (i, (s, a)) in self.sums.iter().zip(&sum_arrays).enumerate() {
                match a.value(row) {
                    Some(x) => {
                        let x = match s.clip {
                            Some((lo, hi)) => x.clamp(lo, hi),
                            None => x,
                        };
                        values[i] = if dp { x.round() } else { x };
                    }
                    None => {
                        self.reasons[s.reason].1 += 1;
                        continue 'rows;
                    }
                }
            }
            let cell = match self.cells.get(&key) {
                Some(c) => *c,
                None => {
                    let c = self.cell_keys.len() as u32;
                    self.cells.insert(key, c);
                    self.cell_keys.push(key);
                    c
                }
            };
            let pk = (u64::from(unit) << 32) | u64::from(cell);
            let p = match self.pairs.get(&pk) {
                Some(p) => *p as usize,
                None => {
                    let p = self.pair_unit.len();
                    self.pairs.insert(pk, p as u32);
                    self.pair_unit.push(unit);
                    self.pair_cell.push(cell);
                    self.pair_rows.push(0);
                    self.pair_sums.extend(std::iter::repeat_n(0.0, nsums));
                    p
                }
            };
            self.pair_rows[p] = self.pair_rows[p].saturating_add(1);
            // With DP only the first l∞ rows of a unit in a cell contribute.
            if bound.is_none_or(|b| self.pair_rows[p] <= b) {
                for (i, v) in values.iter().enumerate() {
                    self.pair_sums[p * nsums + i] += v;
                }
            }
        }
        Ok(())
    }

    /// Builds the release. `generated_at` is the caller's timestamp for the report.
    pub fn finish(self, generated_at: &str) -> Result<Release, ReleaseError> {
        let mut diagnostics = Diagnostics {
            rows_read: self.rows_read,
            rows_skipped: self
                .reasons
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.clone(), *n))
                .collect(),
            units: u64::from(self.unit_count),
            cells: self.cell_keys.len() as u64,
            ..Diagnostics::default()
        };
        let report = ReleaseReport {
            dataset: self.spec.dataset.clone(),
            spec_fingerprint: self.spec.fingerprint(),
            unit: self.spec.unit.clone(),
            unit_column: self.spec.unit_column.clone(),
            k: self.spec.k,
            method: if self.spec.dp.is_some() {
                "differential-privacy".into()
            } else {
                "k-anonymity".into()
            },
            group_by: self
                .validated
                .groups
                .iter()
                .map(|(_, n)| n.clone())
                .collect(),
            measures: self
                .validated
                .measures
                .iter()
                .map(|(_, n)| n.clone())
                .collect(),
            margins: self.spec.totals,
            rows_read: None,
            rows_skipped: None,
            units: None,
            cells: None,
            cells_released: 0,
            suppressed_primary: None,
            suppressed_secondary: None,
            dp: None,
            generated_at: generated_at.to_string(),
        };
        if self.spec.dp.is_some() {
            self.finish_dp(report, diagnostics)
        } else {
            let mut report = report;
            report.rows_read = Some(diagnostics.rows_read);
            report.rows_skipped = Some(diagnostics.rows_skipped.clone());
            report.units = Some(diagnostics.units);
            let out = self.finish_kanon(report)?;
            diagnostics.cells = out.1;
            Ok(Release {
                table: out.0.table,
                report: out.0.report,
                diagnostics,
            })
        }
    }

    fn ndims(&self) -> usize {
        self.dims.len()
    }

    /// k-anonymity: the cube of cells (and margins), primary and secondary suppression.
    fn finish_kanon(self, mut report: ReleaseReport) -> Result<(Release, u64), ReleaseError> {
        let d = self.ndims();
        let nsums = self.sums.len();
        let masks: Vec<u32> = if self.spec.totals {
            (0..(1u32 << d)).collect()
        } else {
            vec![0]
        };
        // The observed cells keep their ids; margins are added behind them.
        let mut cells: Vec<Agg> = self.cell_keys.iter().map(|k| Agg::new(*k, nsums)).collect();
        for p in 0..self.pair_unit.len() {
            // A (unit, cell) pair is one distinct unit of its cell.
            let agg = &mut cells[self.pair_cell[p] as usize];
            agg.units += 1;
            agg.rows += u64::from(self.pair_rows[p]);
            for s in 0..nsums {
                agg.sums[s] += self.pair_sums[p * nsums + s];
            }
        }
        if masks.len() > 1 {
            let mut cube: IdMap<CellKey, usize> = IdMap::default();
            // Pair indices sorted by unit, so each unit counts once per margin cell.
            let mut order: Vec<u32> = (0..self.pair_unit.len() as u32).collect();
            order.sort_unstable_by_key(|p| self.pair_unit[*p as usize]);
            let mut touched: Vec<usize> = Vec::new();
            let mut i = 0;
            while i < order.len() {
                let unit = self.pair_unit[order[i] as usize];
                touched.clear();
                while i < order.len() && self.pair_unit[order[i] as usize] == unit {
                    let p = order[i] as usize;
                    let base = self.cell_keys[self.pair_cell[p] as usize];
                    for &m in &masks[1..] {
                        let mut key = base;
                        for (j, k) in key.iter_mut().enumerate().take(d) {
                            if m & (1 << j) != 0 {
                                *k = STAR;
                            }
                        }
                        let c = *cube.entry(key).or_insert_with(|| {
                            cells.push(Agg::new(key, nsums));
                            cells.len() - 1
                        });
                        let agg = &mut cells[c];
                        agg.rows += u64::from(self.pair_rows[p]);
                        for s in 0..nsums {
                            agg.sums[s] += self.pair_sums[p * nsums + s];
                        }
                        touched.push(c);
                    }
                    i += 1;
                }
                touched.sort_unstable();
                touched.dedup();
                for &c in &touched {
                    cells[c].units += 1;
                }
            }
        }
        let k = self.spec.k;
        let mut status: Vec<Status> = cells
            .iter()
            .map(|c| {
                if c.units < k {
                    Status::Primary
                } else {
                    Status::Released
                }
            })
            .collect();
        if self.spec.totals {
            let keys: Vec<CellKey> = cells.iter().map(|c| c.key).collect();
            let size: Vec<(u64, u64)> = cells.iter().map(|c| (c.units, c.rows)).collect();
            suppress::secondary(&keys, d, &size, &mut status);
        }
        let mut idx: Vec<usize> = (0..cells.len()).collect();
        idx.sort_unstable_by(|a, b| sort_key(&cells[*a].key, d).cmp(&sort_key(&cells[*b].key, d)));
        let primary = status.iter().filter(|s| **s == Status::Primary).count() as u64;
        let secondary = status.iter().filter(|s| **s == Status::Secondary).count() as u64;
        report.cells = Some(cells.len() as u64);
        report.cells_released = cells.len() as u64 - primary - secondary;
        report.suppressed_primary = Some(primary);
        report.suppressed_secondary = Some(secondary);
        let rows: Vec<OutRow> = idx
            .iter()
            .map(|&c| {
                let agg = &cells[c];
                let released = status[c] == Status::Released;
                OutRow {
                    key: agg.key,
                    values: self.measure_values(agg, released),
                    reason: match status[c] {
                        Status::Released => None,
                        Status::Primary => Some("primary"),
                        Status::Secondary => Some("secondary"),
                    },
                }
            })
            .collect();
        let ncells = self.cell_keys.len() as u64;
        let table = self.table(&rows, true)?;
        Ok((
            Release {
                table,
                report,
                diagnostics: Diagnostics::default(),
            },
            ncells,
        ))
    }

    fn measure_values(&self, agg: &Agg, released: bool) -> Vec<Value> {
        let mut s = 0;
        self.validated
            .measures
            .iter()
            .map(|(kind, _)| {
                if !released {
                    if matches!(kind, MeasureKind::Sum { .. } | MeasureKind::Mean { .. }) {
                        s += 1;
                    }
                    return Value::Null;
                }
                match kind {
                    MeasureKind::Rows => Value::Int(agg.rows as i64),
                    MeasureKind::Units => Value::Int(agg.units as i64),
                    MeasureKind::Sum { .. } => {
                        s += 1;
                        Value::Float(agg.sums[s - 1])
                    }
                    MeasureKind::Mean { .. } => {
                        s += 1;
                        if agg.rows == 0 {
                            Value::Null
                        } else {
                            Value::Float(agg.sums[s - 1] / agg.rows as f64)
                        }
                    }
                }
            })
            .collect()
    }

    /// Differential privacy: bounding, noise, thresholding on noisy unit counts.
    fn finish_dp(
        mut self,
        mut report: ReleaseReport,
        mut diagnostics: Diagnostics,
    ) -> Result<Release, ReleaseError> {
        let Some(dpspec) = self.spec.dp.clone() else {
            return Err(ReleaseError::Spec(SpecError::new(
                &self.spec.dataset,
                "dp".into(),
                "missing".into(),
            )));
        };
        let l0 = dpspec.max_cells_per_unit as usize;
        let linf = dpspec.max_rows_per_cell;
        let nsums = self.sums.len();
        let noise_err = |e: crate::noise::NoiseError| ReleaseError::Noise(e.0);
        // l0: each unit keeps a CSPRNG-chosen subset of at most l0 of its cells.
        let mut order: Vec<u32> = (0..self.pair_unit.len() as u32).collect();
        order.sort_unstable_by_key(|p| (self.pair_unit[*p as usize], self.pair_cell[*p as usize]));
        let mut keep = vec![true; self.pair_unit.len()];
        let mut i = 0;
        while i < order.len() {
            let unit = self.pair_unit[order[i] as usize];
            let start = i;
            while i < order.len() && self.pair_unit[order[i] as usize] == unit {
                i += 1;
            }
            let group = &mut order[start..i];
            if group.len() > l0 {
                diagnostics.units_bounded += 1;
                // Partial Fisher–Yates: the first l0 positions become a uniform random subset.
                for j in 0..l0 {
                    let r = j + self
                        .noise
                        .below((group.len() - j) as u64)
                        .map_err(noise_err)? as usize;
                    group.swap(j, r);
                }
                for &p in &group[l0..] {
                    keep[p as usize] = false;
                    diagnostics.pairs_dropped += 1;
                    diagnostics.rows_dropped += u64::from(self.pair_rows[p as usize]);
                }
            }
        }
        let nd = self.ndims();
        let mut cells: Vec<Agg> = self.cell_keys.iter().map(|k| Agg::new(*k, nsums)).collect();
        for p in 0..self.pair_unit.len() {
            if !keep[p] {
                continue;
            }
            let rows = self.pair_rows[p];
            let kept = rows.min(linf);
            diagnostics.rows_dropped += u64::from(rows - kept);
            let agg = &mut cells[self.pair_cell[p] as usize];
            agg.units += 1;
            agg.rows += u64::from(kept);
            for s in 0..nsums {
                agg.sums[s] += self.pair_sums[p * nsums + s];
            }
        }
        let (quantities, slots) = dp::slots(&self.validated.measures);
        let plan = dp::plan(&dpspec, self.spec.k, &quantities);
        let scales = plan
            .quantities
            .iter()
            .map(|q| scale_to_rbig(q.scale))
            .collect::<Result<Vec<_>, _>>()
            .map_err(noise_err)?;
        let mut idx: Vec<usize> = (0..cells.len()).filter(|c| cells[*c].units > 0).collect();
        idx.sort_unstable_by(|a, b| {
            sort_key(&cells[*a].key, nd).cmp(&sort_key(&cells[*b].key, nd))
        });
        // The unit-count noise of every non-empty cell first (in parallel when the source can
        // fork), then the other quantities of the cells released.
        let unit_noise = unit_noise(&mut self.noise, dpspec.mechanism, &scales[0], idx.len())?;
        let mut rows = Vec::new();
        for (n, c) in idx.into_iter().enumerate() {
            let agg = &cells[c];
            let draw = |q: usize, noise: &mut N| -> Result<i64, ReleaseError> {
                match dpspec.mechanism {
                    Mechanism::Laplace => noise.discrete_laplace(&scales[q]),
                    Mechanism::Gaussian => noise.discrete_gaussian(&scales[q]),
                }
                .map_err(noise_err)
            };
            let noisy_units = (agg.units as i64).saturating_add(unit_noise[n]);
            // Suppression looks at the noisy count only.
            if noisy_units < plan.threshold {
                diagnostics.cells_below_threshold += 1;
                continue;
            }
            let noisy_rows = match slots.rows {
                Some(q) => Some((agg.rows as i64).saturating_add(draw(q, &mut self.noise)?)),
                None => None,
            };
            let mut values = Vec::new();
            let mut s = 0;
            for (m, (kind, _)) in self.validated.measures.iter().enumerate() {
                let v = match kind {
                    MeasureKind::Units => Value::Int(noisy_units.max(0)),
                    MeasureKind::Rows => Value::Int(noisy_rows.unwrap_or(0).max(0)),
                    MeasureKind::Sum { clip, .. } | MeasureKind::Mean { clip, .. } => {
                        let q = slot(&slots, m)?;
                        let noisy_sum = agg.sums[s].round() as i64 + draw(q, &mut self.noise)?;
                        s += 1;
                        if let MeasureKind::Mean { .. } = kind {
                            match (noisy_rows, clip) {
                                (Some(n), Some((lo, hi))) if n > 0 => {
                                    Value::Float((noisy_sum as f64 / n as f64).clamp(*lo, *hi))
                                }
                                _ => Value::Null,
                            }
                        } else {
                            Value::Float(noisy_sum as f64)
                        }
                    }
                };
                values.push(v);
            }
            rows.push(OutRow {
                key: agg.key,
                values,
                reason: None,
            });
        }
        report.cells_released = rows.len() as u64;
        report.dp = Some(dp_report(&dpspec, &plan));
        let table = self.table(&rows, false)?;
        Ok(Release {
            table,
            report,
            diagnostics,
        })
    }

    fn table(&self, rows: &[OutRow], with_reason: bool) -> Result<RecordBatch, ReleaseError> {
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (d, (_, name)) in self.validated.groups.iter().enumerate() {
            let mut b = StringBuilder::new();
            // Each distinct key is labelled once.
            let mut labels: IdMap<i64, String> = IdMap::default();
            for r in rows {
                let key = r.key[d];
                let label = labels.entry(key).or_insert_with(|| self.dims[d].label(key));
                b.append_value(label.as_str());
            }
            fields.push(Field::new(name, DataType::Utf8, false));
            columns.push(Arc::new(b.finish()));
        }
        for (m, (kind, name)) in self.validated.measures.iter().enumerate() {
            match kind {
                MeasureKind::Rows | MeasureKind::Units => {
                    let mut b = Int64Builder::new();
                    for r in rows {
                        match r.values[m] {
                            Value::Int(v) => b.append_value(v),
                            _ => b.append_null(),
                        }
                    }
                    fields.push(Field::new(name, DataType::Int64, true));
                    columns.push(Arc::new(b.finish()));
                }
                MeasureKind::Sum { .. } | MeasureKind::Mean { .. } => {
                    let mut b = Float64Builder::new();
                    for r in rows {
                        match r.values[m] {
                            Value::Float(v) => b.append_value(v),
                            _ => b.append_null(),
                        }
                    }
                    fields.push(Field::new(name, DataType::Float64, true));
                    columns.push(Arc::new(b.finish()));
                }
            }
        }
        if with_reason {
            let a: StringArray = rows.iter().map(|r| r.reason).collect();
            fields.push(Field::new(SUPPRESSED_COLUMN, DataType::Utf8, true));
            columns.push(Arc::new(a));
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

/// Cells per thread below which the unit-count noise is drawn on one thread.
const PARALLEL_MIN: usize = 4096;

/// `n` draws of the unit-count noise: split over threads, each with its own forked source, when
/// the source forks and `n` is large; otherwise in order from `noise`.
fn unit_noise<N: Noise>(
    noise: &mut N,
    mechanism: Mechanism,
    scale: &dashu::rational::RBig,
    n: usize,
) -> Result<Vec<i64>, ReleaseError> {
    fn one(
        noise: &mut (impl Noise + ?Sized),
        m: Mechanism,
        scale: &dashu::rational::RBig,
    ) -> Result<i64, ReleaseError> {
        match m {
            Mechanism::Laplace => noise.discrete_laplace(scale),
            Mechanism::Gaussian => noise.discrete_gaussian(scale),
        }
        .map_err(|e| ReleaseError::Noise(e.0))
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(8);
    let forks: Option<Vec<Box<dyn Noise + Send>>> = if threads > 1 && n >= 2 * PARALLEL_MIN {
        (0..threads).map(|_| noise.fork()).collect()
    } else {
        None
    };
    let Some(forks) = forks else {
        return (0..n).map(|_| one(noise, mechanism, scale)).collect();
    };
    let chunk = n.div_ceil(forks.len());
    let parts: Vec<Result<Vec<i64>, ReleaseError>> = std::thread::scope(|s| {
        let handles: Vec<_> = forks
            .into_iter()
            .enumerate()
            .map(|(t, mut f)| {
                let len = chunk.min(n.saturating_sub(t * chunk));
                s.spawn(move || {
                    (0..len)
                        .map(|_| one(f.as_mut(), mechanism, scale))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(ReleaseError::Noise("noise thread failed".into())))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

fn slot(slots: &Slots, measure: usize) -> Result<usize, ReleaseError> {
    slots
        .sums
        .get(measure)
        .copied()
        .flatten()
        .ok_or_else(|| ReleaseError::Output("measure without a noise slot".into()))
}

fn dp_report(dp: &crate::spec::DpSpec, plan: &Plan) -> DpReport {
    DpReport {
        mechanism: dp.mechanism.as_str().into(),
        epsilon: dp.epsilon,
        delta: dp.delta,
        rho: plan.rho,
        threshold: plan.threshold,
        threshold_delta: plan.threshold_delta,
        max_cells_per_unit: dp.max_cells_per_unit,
        max_rows_per_cell: dp.max_rows_per_cell,
        noise: plan.quantities.clone(),
        notes: vec![
            "each unit keeps a uniformly random subset (OpenSSL CSPRNG) of at most max_cells_per_unit cells and its first max_rows_per_cell rows per cell".into(),
            "summed values are clipped to the measure's bounds and rounded to integers before noise".into(),
            "a mean is the noisy sum over the noisy row count, clamped to the clip bounds (post-processing)".into(),
            "a cell is released only when its noisy distinct-unit count reaches the threshold; other cells are omitted".into(),
            "no margins are released in differential-privacy mode".into(),
        ],
    }
}

/// Sort order of released rows: by key, margins (`*`) after the values of their column.
fn sort_key(key: &CellKey, d: usize) -> [(bool, i64); MAX_GROUP_BY] {
    let mut out = [(false, 0); MAX_GROUP_BY];
    for j in 0..d {
        out[j] = (key[j] == STAR, key[j]);
    }
    out
}

struct Agg {
    key: CellKey,
    units: u64,
    rows: u64,
    sums: Vec<f64>,
}

impl Agg {
    fn new(key: CellKey, nsums: usize) -> Agg {
        Agg {
            key,
            units: 0,
            rows: 0,
            sums: vec![0.0; nsums],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Null,
    Int(i64),
    Float(f64),
}

struct OutRow {
    key: CellKey,
    values: Vec<Value>,
    reason: Option<&'static str>,
}

enum NumArray<'a> {
    F(&'a Float64Array),
    I(&'a Int64Array),
}

impl<'a> NumArray<'a> {
    fn of(a: &'a ArrayRef) -> Option<NumArray<'a>> {
        if let Some(f) = a.as_any().downcast_ref::<Float64Array>() {
            return Some(NumArray::F(f));
        }
        a.as_any().downcast_ref::<Int64Array>().map(NumArray::I)
    }

    fn value(&self, row: usize) -> Option<f64> {
        let x = match self {
            NumArray::F(a) if !a.is_null(row) => a.value(row),
            NumArray::I(a) if !a.is_null(row) => a.value(row) as f64,
            _ => return None,
        };
        x.is_finite().then_some(x)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::VecDeque;

    use arrow::array::{StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::TimeUnit;
    use dashu::rational::RBig;

    use super::*;
    use crate::noise::NoiseError;
    use crate::spec::{BudgetPeriod, BudgetSpec, CountOf, DpSpec, GroupBy, Measure};

    /// Noise scripted by the test: Laplace/Gaussian draws from a queue (0 when empty), random
    /// bits from a fixed linear congruential sequence.
    struct Scripted {
        draws: VecDeque<i64>,
        state: u64,
    }

    impl Scripted {
        fn new(draws: &[i64]) -> Scripted {
            Scripted {
                draws: draws.iter().copied().collect(),
                state: 42,
            }
        }
    }

    impl Noise for Scripted {
        fn discrete_laplace(&mut self, _: &RBig) -> Result<i64, NoiseError> {
            Ok(self.draws.pop_front().unwrap_or(0))
        }
        fn discrete_gaussian(&mut self, _: &RBig) -> Result<i64, NoiseError> {
            Ok(self.draws.pop_front().unwrap_or(0))
        }
        fn random_u64(&mut self) -> Result<u64, NoiseError> {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            Ok(self.state >> 11)
        }
    }

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("device_id", DataType::Utf8, true),
            Field::new("zone", DataType::Utf8, true),
            Field::new(
                "start_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new("distance", DataType::Float64, true),
        ])
    }

    /// A batch of (unit, zone, distance) rows, all at the same start time.
    fn batch(rows: &[(&str, &str, f64)]) -> RecordBatch {
        let units: StringArray = rows.iter().map(|r| Some(r.0)).collect();
        let zones: StringArray = rows.iter().map(|r| Some(r.1)).collect();
        let t = TimestampMicrosecondArray::from(vec![1_764_511_200_000_000; rows.len()])
            .with_timezone("+00:00");
        let d = Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
        RecordBatch::try_new(
            Arc::new(schema()),
            vec![Arc::new(units), Arc::new(zones), Arc::new(t), Arc::new(d)],
        )
        .unwrap()
    }

    fn spec(k: u64) -> ReleaseSpec {
        ReleaseSpec {
            dataset: "trips".into(),
            unit: "vehicle".into(),
            unit_column: "device_id".into(),
            k,
            totals: false,
            group_by: vec![GroupBy {
                column: Some("zone".into()),
                ..GroupBy::default()
            }],
            measures: vec![
                Measure {
                    name: "trips".into(),
                    count: Some(CountOf::Rows),
                    ..Measure::default()
                },
                Measure {
                    name: "vehicles".into(),
                    count: Some(CountOf::Units),
                    ..Measure::default()
                },
            ],
            dp: None,
            budget: None,
        }
    }

    fn dp_spec(k: u64, l0: u32) -> ReleaseSpec {
        let mut s = spec(k);
        s.measures.remove(0);
        s.dp = Some(DpSpec {
            epsilon: 10.0,
            delta: 1e-3,
            mechanism: Mechanism::Laplace,
            max_cells_per_unit: l0,
            max_rows_per_cell: 1,
        });
        s.budget = Some(BudgetSpec {
            epsilon: 10.0,
            period: BudgetPeriod::Month,
        });
        s
    }

    fn run(spec: ReleaseSpec, rows: &[(&str, &str, f64)], noise: Scripted) -> Release {
        let mut r = Releaser::new(spec, &schema(), noise).unwrap();
        r.push(&batch(rows)).unwrap();
        r.finish("2026-11-30T21:00:00Z").unwrap()
    }

    fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
        b.column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<T>()
            .unwrap()
    }

    #[test]
    fn k_counts_distinct_units_not_rows() {
        let mut rows = Vec::new();
        // Zone `a`: one vehicle with 50 trips. Zone `b`: three vehicles. Zone `c`: three too.
        for _ in 0..50 {
            rows.push(("v1", "a", 1.0));
        }
        for u in ["v1", "v2", "v3"] {
            rows.push((u, "b", 1.0));
            rows.push((u, "c", 1.0));
        }
        let rel = run(spec(3), &rows, Scripted::new(&[]));
        let zone = column::<StringArray>(&rel.table, "zone");
        let trips = column::<Int64Array>(&rel.table, "trips");
        let units = column::<Int64Array>(&rel.table, "vehicles");
        let why = column::<StringArray>(&rel.table, SUPPRESSED_COLUMN);
        assert_eq!(zone.value(0), "a");
        assert!(
            trips.is_null(0) && units.is_null(0),
            "50 rows of one unit released"
        );
        assert_eq!(why.value(0), "primary");
        assert_eq!((trips.value(1), units.value(1)), (3, 3));
        assert!(why.is_null(1));
        assert_eq!(rel.report.suppressed_primary, Some(1));
        assert_eq!(rel.report.cells_released, 2);
        assert_eq!(rel.report.units, Some(3));
        assert_eq!(rel.report.rows_read, Some(56));
    }

    #[test]
    fn dp_thresholds_on_noisy_counts() {
        let mut rows = Vec::new();
        for i in 0..7 {
            rows.push((format!("a{i}"), "a"));
        }
        for i in 0..12 {
            rows.push((format!("b{i}"), "b"));
        }
        let rows: Vec<(&str, &str, f64)> =
            rows.iter().map(|(u, z)| (u.as_str(), *z, 1.0)).collect();
        // Cells in key order: `a` (7 units) draws +5, `b` (12 units) draws −5; k = 10.
        let rel = run(dp_spec(10, 1), &rows, Scripted::new(&[5, -5]));
        let dp = rel.report.dp.clone().unwrap();
        assert_eq!(dp.threshold, 10, "k dominates τ here");
        let zone = column::<StringArray>(&rel.table, "zone");
        let units = column::<Int64Array>(&rel.table, "vehicles");
        assert_eq!(rel.table.num_rows(), 1);
        assert_eq!((zone.value(0), units.value(0)), ("a", 12));
        assert!(rel.table.column_by_name(SUPPRESSED_COLUMN).is_none());
        assert_eq!(rel.diagnostics.cells_below_threshold, 1);
        // The published report carries no exact data-dependent counts in DP mode.
        assert_eq!(rel.report.units, None);
        assert_eq!(rel.report.rows_read, None);
    }

    #[test]
    fn contribution_bounding_limits_cells_per_unit() {
        // 20 zones with 10 background vehicles each; vehicle `x` rides in all 20.
        let mut owned = Vec::new();
        for z in 0..20 {
            for u in 0..10 {
                owned.push((format!("bg{z}-{u}"), format!("z{z:02}")));
            }
            owned.push(("x".to_string(), format!("z{z:02}")));
            owned.push(("x".to_string(), format!("z{z:02}")));
        }
        let rows: Vec<(&str, &str, f64)> = owned
            .iter()
            .map(|(u, z)| (u.as_str(), z.as_str(), 1.0))
            .collect();
        let rel = run(dp_spec(2, 4), &rows, Scripted::new(&[]));
        let units = column::<Int64Array>(&rel.table, "vehicles");
        assert_eq!(rel.table.num_rows(), 20);
        let touched = (0..20).filter(|i| units.value(*i) == 11).count();
        assert_eq!(touched, 4, "x influenced {touched} cells");
        assert_eq!(rel.diagnostics.units_bounded, 1);
        assert_eq!(rel.diagnostics.pairs_dropped, 16);
        // 16 dropped pairs with 2 rows each, plus one row over l∞ = 1 in each of the 4 kept.
        assert_eq!(rel.diagnostics.rows_dropped, 36);
    }

    #[test]
    fn released_values_are_noisy_sums_and_means() {
        let mut s = dp_spec(2, 1);
        s.measures = vec![
            Measure {
                name: "trips".into(),
                count: Some(CountOf::Rows),
                ..Measure::default()
            },
            Measure {
                name: "mean_d".into(),
                mean: Some("distance".into()),
                clip: Some([0.0, 100.0]),
                ..Measure::default()
            },
        ];
        let rows: Vec<(String, &str, f64)> =
            (0..20).map(|i| (format!("u{i}"), "a", 250.0)).collect();
        let rows: Vec<(&str, &str, f64)> =
            rows.iter().map(|(u, z, d)| (u.as_str(), *z, *d)).collect();
        // Draws: units +0, rows +5, sum −100.
        let rel = run(s, &rows, Scripted::new(&[0, 5, -100]));
        let trips = column::<Int64Array>(&rel.table, "trips");
        let mean = column::<Float64Array>(&rel.table, "mean_d");
        assert_eq!(trips.value(0), 25);
        // Clipped to 100 each: 2000, minus 100 noise, over 25 noisy rows.
        assert_eq!(mean.value(0), 1900.0 / 25.0);
        assert_eq!(rel.report.dp.unwrap().noise.len(), 3);
    }
}
