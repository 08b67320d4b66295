//! Generalisation of one group-by column: each row's value becomes an `i64` cell key (computed
//! per row without allocating), and each key a label once, when the release is built.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};

use crate::geo::{Laea, OUTSIDE, Regions, grid_cell, grid_cell_name};
use crate::spec::{GroupKind, TimeBucket};

/// The key of a margin (`*`): the group-by column summed over.
pub const STAR: i64 = i64::MIN;
/// The label of a margin in the released table.
pub const STAR_LABEL: &str = "*";

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const HOURS_PER_DAY: i64 = 24;

/// One group-by column's generalisation, bound to column indices of the dataset schema.
#[derive(Debug)]
pub(crate) enum Dim {
    Time {
        col: usize,
        bucket: TimeBucket,
    },
    Grid {
        lat: usize,
        lon: usize,
        size_m: u32,
        laea: Laea,
    },
    Regions {
        lat: usize,
        lon: usize,
        regions: Arc<Regions>,
    },
    Bands {
        col: usize,
        bounds: Vec<f64>,
    },
    BandWidth {
        col: usize,
        width: f64,
    },
    Categorical {
        col: usize,
        ids: HashMap<Box<str>, i64>,
        labels: Vec<String>,
    },
}

/// Typed views of the columns one dimension reads in one batch.
pub(crate) enum DimArrays<'a> {
    Time(&'a TimestampMicrosecondArray),
    Coords(&'a Float64Array, &'a Float64Array),
    Float(&'a Float64Array),
    Int(&'a Int64Array),
    Str(&'a StringArray),
}

fn as_f64(a: &ArrayRef) -> Option<&Float64Array> {
    a.as_any().downcast_ref::<Float64Array>()
}

impl Dim {
    pub(crate) fn new(
        kind: &GroupKind,
        index: impl Fn(&str) -> usize,
        regions: Option<Arc<Regions>>,
    ) -> Dim {
        match kind {
            GroupKind::Time { column, bucket } => Dim::Time {
                col: index(column),
                bucket: *bucket,
            },
            GroupKind::Grid { lat, lon, size_m } => Dim::Grid {
                lat: index(lat),
                lon: index(lon),
                size_m: *size_m,
                laea: Laea::epsg3035(),
            },
            GroupKind::Regions { lat, lon, .. } => Dim::Regions {
                lat: index(lat),
                lon: index(lon),
                regions: regions.unwrap_or_default(),
            },
            GroupKind::Bands { column, bounds } => Dim::Bands {
                col: index(column),
                bounds: bounds.clone(),
            },
            GroupKind::BandWidth { column, width } => Dim::BandWidth {
                col: index(column),
                width: *width,
            },
            GroupKind::Categorical { column } => Dim::Categorical {
                col: index(column),
                ids: HashMap::new(),
                labels: Vec::new(),
            },
        }
    }

    /// Why a row is skipped when this dimension has no key for it.
    pub(crate) fn skip_reason(&self, kind: &GroupKind) -> String {
        match kind {
            GroupKind::Time { column, .. } => format!("null `{column}`"),
            GroupKind::Grid { lat, lon, .. } | GroupKind::Regions { lat, lon, .. } => {
                format!("missing or non-finite `{lat}`/`{lon}`")
            }
            GroupKind::Bands { column, .. } => {
                format!("null, non-finite or below the first band in `{column}`")
            }
            GroupKind::BandWidth { column, .. } => format!("null or non-finite `{column}`"),
            GroupKind::Categorical { column } => format!("null `{column}`"),
        }
    }

    /// The typed arrays this dimension reads from a batch's columns, `None` on a type mismatch.
    pub(crate) fn arrays<'a>(&self, columns: &'a [ArrayRef]) -> Option<DimArrays<'a>> {
        match self {
            Dim::Time { col, .. } => columns
                .get(*col)?
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .map(DimArrays::Time),
            Dim::Grid { lat, lon, .. } | Dim::Regions { lat, lon, .. } => Some(DimArrays::Coords(
                as_f64(columns.get(*lat)?)?,
                as_f64(columns.get(*lon)?)?,
            )),
            Dim::Bands { col, .. } | Dim::BandWidth { col, .. } => {
                let a = columns.get(*col)?;
                if let Some(f) = as_f64(a) {
                    Some(DimArrays::Float(f))
                } else {
                    a.as_any().downcast_ref::<Int64Array>().map(DimArrays::Int)
                }
            }
            Dim::Categorical { col, .. } => columns
                .get(*col)?
                .as_any()
                .downcast_ref::<StringArray>()
                .map(DimArrays::Str),
        }
    }

    /// The key of row `row`, or `None` when the row has no usable value.
    pub(crate) fn key(&mut self, arrays: &DimArrays<'_>, row: usize) -> Option<i64> {
        match (self, arrays) {
            (Dim::Time { bucket, .. }, DimArrays::Time(a)) => {
                if a.is_null(row) {
                    return None;
                }
                let hour = a.value(row).div_euclid(MICROS_PER_HOUR);
                Some(match bucket {
                    TimeBucket::Hour => hour,
                    TimeBucket::Day => hour.div_euclid(HOURS_PER_DAY),
                    TimeBucket::Month => {
                        let (y, m, _) = civil_from_days(hour.div_euclid(HOURS_PER_DAY));
                        y * 12 + (m - 1)
                    }
                })
            }
            (Dim::Grid { size_m, laea, .. }, DimArrays::Coords(lat, lon)) => {
                let (la, lo) = coords(lat, lon, row)?;
                let (e, n) = laea.forward(la, lo);
                let (c, r) = grid_cell(e, n, *size_m);
                Some((c << 32) | i64::from(r as u32))
            }
            (Dim::Regions { regions, .. }, DimArrays::Coords(lat, lon)) => {
                let (la, lo) = coords(lat, lon, row)?;
                Some(regions.locate(la, lo).map_or(-1, |i| i as i64))
            }
            (Dim::Bands { bounds, .. }, a) => {
                let x = number(a, row)?;
                let i = bounds.partition_point(|b| *b <= x);
                if i == 0 { None } else { Some(i as i64 - 1) }
            }
            (Dim::BandWidth { width, .. }, a) => {
                let x = number(a, row)?;
                let b = (x / *width).floor();
                if b.is_finite() && b.abs() < 9.0e15 {
                    Some(b as i64)
                } else {
                    None
                }
            }
            (Dim::Categorical { ids, labels, .. }, DimArrays::Str(a)) => {
                if a.is_null(row) {
                    return None;
                }
                let s = a.value(row);
                if let Some(id) = ids.get(s) {
                    return Some(*id);
                }
                let id = labels.len() as i64;
                labels.push(s.to_string());
                ids.insert(s.into(), id);
                Some(id)
            }
            _ => None,
        }
    }

    /// The released label of a key.
    pub(crate) fn label(&self, key: i64) -> String {
        if key == STAR {
            return STAR_LABEL.to_string();
        }
        match self {
            Dim::Time { bucket, .. } => match bucket {
                TimeBucket::Hour => {
                    let (y, m, d) = civil_from_days(key.div_euclid(HOURS_PER_DAY));
                    format!(
                        "{y:04}-{m:02}-{d:02}T{:02}:00Z",
                        key.rem_euclid(HOURS_PER_DAY)
                    )
                }
                TimeBucket::Day => {
                    let (y, m, d) = civil_from_days(key);
                    format!("{y:04}-{m:02}-{d:02}")
                }
                TimeBucket::Month => {
                    format!("{:04}-{:02}", key.div_euclid(12), key.rem_euclid(12) + 1)
                }
            },
            Dim::Grid { size_m, .. } => grid_cell_name(key >> 32, i64::from(key as i32), *size_m),
            Dim::Regions { regions, .. } => usize::try_from(key)
                .ok()
                .and_then(|i| regions.names().get(i))
                .cloned()
                .unwrap_or_else(|| OUTSIDE.to_string()),
            Dim::Bands { bounds, .. } => {
                let i = usize::try_from(key).unwrap_or(0);
                match (bounds.get(i), bounds.get(i + 1)) {
                    (Some(lo), Some(hi)) => format!("{lo}-{hi}"),
                    (Some(lo), None) => format!("{lo}+"),
                    _ => String::new(),
                }
            }
            Dim::BandWidth { width, .. } => {
                let lo = key as f64 * width;
                format!("{}-{}", lo, lo + width)
            }
            Dim::Categorical { labels, .. } => usize::try_from(key)
                .ok()
                .and_then(|i| labels.get(i))
                .cloned()
                .unwrap_or_default(),
        }
    }
}

fn coords(lat: &Float64Array, lon: &Float64Array, row: usize) -> Option<(f64, f64)> {
    if lat.is_null(row) || lon.is_null(row) {
        return None;
    }
    let (la, lo) = (lat.value(row), lon.value(row));
    if la.is_finite() && lo.is_finite() && la.abs() <= 90.0 && lo.abs() <= 180.0 {
        Some((la, lo))
    } else {
        None
    }
}

fn number(a: &DimArrays<'_>, row: usize) -> Option<f64> {
    let x = match a {
        DimArrays::Float(f) if !f.is_null(row) => f.value(row),
        DimArrays::Int(i) if !i.is_null(row) => i.value(row) as f64,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// Year, month (1–12) and day of a day count since 1970-01-01 (proleptic Gregorian; H. Hinnant's
/// `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn time_labels() {
        let t = TimestampMicrosecondArray::from(vec![Some(1_764_511_200_000_000 + 1_234), None]);
        let a = DimArrays::Time(&t);
        for (bucket, want) in [
            (TimeBucket::Hour, "2025-11-30T14:00Z"),
            (TimeBucket::Day, "2025-11-30"),
            (TimeBucket::Month, "2025-11"),
        ] {
            let mut d = Dim::Time { col: 0, bucket };
            let k = d.key(&a, 0).unwrap();
            assert_eq!(d.label(k), want);
            assert_eq!(d.key(&a, 1), None);
        }
    }

    #[test]
    fn bands_are_half_open() {
        let v = Float64Array::from(vec![-1.0, 0.0, 17.9, 18.0, 70.0, f64::NAN]);
        let a = DimArrays::Float(&v);
        let mut d = Dim::Bands {
            col: 0,
            bounds: vec![0.0, 18.0, 30.0, 45.0, 65.0],
        };
        let keys: Vec<_> = (0..6).map(|r| d.key(&a, r)).collect();
        assert_eq!(keys, vec![None, Some(0), Some(0), Some(1), Some(4), None]);
        assert_eq!(d.label(0), "0-18");
        assert_eq!(d.label(4), "65+");
    }
}
