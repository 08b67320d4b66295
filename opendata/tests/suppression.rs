//! k-anonymity on generated tables, checked by an independent reader of the released table:
//! every released cell (margins included) has at least k distinct units, and with margins no
//! suppressed cell is recoverable by subtracting published cells from a published total — every
//! line (one column varying, the other fixed, with its total) has zero or at least two
//! suppressed entries.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use allmende_opendata::{
    CountOf, GroupBy, Measure, OpenDpNoise, ReleaseSpec, Releaser, STAR_LABEL, SUPPRESSED_COLUMN,
};
use arrow::array::{Array, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

/// A small deterministic generator (SplitMix64); only the test data depends on it.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("unit", DataType::Utf8, false),
        Field::new("r", DataType::Utf8, false),
        Field::new("c", DataType::Utf8, false),
        Field::new("x", DataType::Float64, false),
    ])
}

/// One generated row: unit, row label, column label, value.
type Row = (String, String, String, f64);
/// A cell of the table: (row label, column label).
type Key = (String, String);

struct Data {
    rows: Vec<Row>,
}

/// A table of `nr` × `nc` cells; most cells have many units, some only a few; units sometimes
/// appear in several cells of their row, with several rows each.
fn generate(seed: u64, nr: u64, nc: u64, k: u64) -> Data {
    let mut g = Gen(seed);
    let mut rows = Vec::new();
    let mut next_unit = 0u64;
    for r in 0..nr {
        for c in 0..nc {
            let units = match g.below(10) {
                0 => 0,
                1..=3 => 1 + g.below(k - 1),
                _ => k + g.below(3 * k),
            };
            for _ in 0..units {
                let u = if g.below(4) == 0 && next_unit > 0 {
                    g.below(next_unit)
                } else {
                    next_unit += 1;
                    next_unit - 1
                };
                for _ in 0..1 + g.below(4) {
                    rows.push((
                        format!("u{u}"),
                        format!("r{r}"),
                        format!("c{c}"),
                        g.below(100) as f64,
                    ));
                }
            }
        }
    }
    Data { rows }
}

fn batch(d: &Data) -> RecordBatch {
    let col =
        |f: &dyn Fn(&Row) -> &str| -> StringArray { d.rows.iter().map(|r| Some(f(r))).collect() };
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(col(&|r| &r.0)),
            Arc::new(col(&|r| &r.1)),
            Arc::new(col(&|r| &r.2)),
            Arc::new(Float64Array::from(
                d.rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn spec(k: u64, totals: bool) -> ReleaseSpec {
    let g = |c: &str| GroupBy {
        column: Some(c.into()),
        ..GroupBy::default()
    };
    ReleaseSpec {
        dataset: "grid".into(),
        unit: "person".into(),
        unit_column: "unit".into(),
        k,
        totals,
        group_by: vec![g("r"), g("c")],
        measures: vec![
            Measure {
                name: "rows".into(),
                count: Some(CountOf::Rows),
                ..Measure::default()
            },
            Measure {
                name: "x_sum".into(),
                sum: Some("x".into()),
                ..Measure::default()
            },
        ],
        dp: None,
        budget: None,
    }
}

/// One released row as the checker reads it.
#[derive(Debug, Clone)]
struct Cell {
    rows: Option<i64>,
    sum: Option<f64>,
    reason: Option<String>,
}

fn read(table: &RecordBatch) -> BTreeMap<(String, String), Cell> {
    let s = |n: &str| {
        table
            .column_by_name(n)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone()
    };
    let (r, c, why) = (s("r"), s("c"), s(SUPPRESSED_COLUMN));
    let rows = table
        .column_by_name("rows")
        .unwrap()
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap();
    let sum = table
        .column_by_name("x_sum")
        .unwrap()
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    (0..table.num_rows())
        .map(|i| {
            let cell = Cell {
                rows: (!rows.is_null(i)).then(|| rows.value(i)),
                sum: (!sum.is_null(i)).then(|| sum.value(i)),
                reason: (!why.is_null(i)).then(|| why.value(i).to_string()),
            };
            assert_eq!(
                cell.rows.is_none(),
                cell.reason.is_some(),
                "null values without a reason"
            );
            assert_eq!(cell.sum.is_none(), cell.reason.is_some());
            ((r.value(i).to_string(), c.value(i).to_string()), cell)
        })
        .collect()
}

/// Distinct units per cell and margin, computed from the raw rows.
fn true_units(d: &Data) -> HashMap<(String, String), usize> {
    let mut sets: HashMap<(String, String), HashSet<&str>> = HashMap::new();
    let star = STAR_LABEL.to_string();
    for (u, r, c, _) in &d.rows {
        for key in [
            (r.clone(), c.clone()),
            (r.clone(), star.clone()),
            (star.clone(), c.clone()),
            (star.clone(), star.clone()),
        ] {
            sets.entry(key).or_default().insert(u);
        }
    }
    sets.into_iter().map(|(k, v)| (k, v.len())).collect()
}

/// The lines of a two-column table with margins: (entries, total).
fn lines(cells: &BTreeMap<(String, String), Cell>) -> Vec<(Vec<Key>, Key)> {
    let star = STAR_LABEL.to_string();
    let mut by_row: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut by_col: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (r, c) in cells.keys() {
        if *c != star {
            by_row
                .entry(r.clone())
                .or_default()
                .push((r.clone(), c.clone()));
        }
        if *r != star {
            by_col
                .entry(c.clone())
                .or_default()
                .push((r.clone(), c.clone()));
        }
    }
    let mut out = Vec::new();
    for (r, entries) in by_row {
        out.push((entries, (r, star.clone())));
    }
    for (c, entries) in by_col {
        out.push((entries, (star.clone(), c)));
    }
    out
}

fn release(d: &Data, k: u64, totals: bool) -> RecordBatch {
    let mut r = Releaser::new(spec(k, totals), &schema(), OpenDpNoise).unwrap();
    r.push(&batch(d)).unwrap();
    r.finish("2026-11-30T00:00:00Z").unwrap().table
}

#[test]
fn released_cells_have_k_units_and_no_suppression_is_recoverable_from_totals() {
    let k = 5;
    let mut naive_leaks = 0;
    for seed in 0..30 {
        let (nr, nc) = (2 + seed % 5, 2 + (seed / 5) % 5);
        let d = generate(seed, nr, nc, k);
        if d.rows.is_empty() {
            continue;
        }
        let truth = true_units(&d);
        let cells = read(&release(&d, k, true));
        assert_eq!(cells.len(), truth.len(), "seed {seed}: cells and margins");
        for (key, cell) in &cells {
            if cell.reason.is_none() {
                assert!(
                    truth[key] >= k as usize,
                    "seed {seed}: {key:?} released with {} units",
                    truth[key]
                );
            } else if truth[key] < k as usize {
                assert_eq!(
                    cell.reason.as_deref(),
                    Some("primary"),
                    "seed {seed}: {key:?}"
                );
            }
        }
        for (entries, total) in lines(&cells) {
            let suppressed = entries
                .iter()
                .filter(|e| cells[*e].reason.is_some())
                .count()
                + usize::from(cells[&total].reason.is_some());
            assert_ne!(
                suppressed, 1,
                "seed {seed}: line of {total:?} gives its one suppressed entry away"
            );
            // Published lines add up: the totals really are margins.
            if suppressed == 0 {
                let sum: i64 = entries.iter().map(|e| cells[e].rows.unwrap()).sum();
                assert_eq!(Some(sum), cells[&total].rows);
                let xs: f64 = entries.iter().map(|e| cells[e].sum.unwrap()).sum();
                assert_eq!(Some(xs), cells[&total].sum);
            }
        }
        // Without secondary suppression (primary only) some line would give a cell away.
        for (entries, total) in lines(&cells) {
            let primary = entries.iter().filter(|e| truth[*e] < k as usize).count()
                + usize::from(truth[&total] < k as usize);
            if primary == 1 {
                naive_leaks += 1;
            }
        }
    }
    assert!(
        naive_leaks > 10,
        "the generated tables do not exercise secondary suppression"
    );
}

#[test]
fn without_totals_only_primary_suppression() {
    let d = generate(7, 4, 4, 5);
    let truth = true_units(&d);
    let cells = read(&release(&d, 5, false));
    assert!(
        cells
            .keys()
            .all(|(r, c)| r != STAR_LABEL && c != STAR_LABEL)
    );
    for (key, cell) in &cells {
        assert_eq!(cell.reason.is_some(), truth[key] < 5, "{key:?}");
    }
}
