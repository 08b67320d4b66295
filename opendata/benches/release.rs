//! The open-data release benchmark: 1M synthetic scooter trips (about 5 000 vehicles, Munich
//! coordinates, one month of start times) in a temporary Parquet file, released by hour of
//! `start_time` × 500 m EPSG:3035 grid cell with k = 10 — with DP counts (discrete Laplace from
//! OpenDP) and, for the like-for-like comparison, k-anonymity only — timed as the median of five
//! runs including the Parquet read, against `release_pandas.py` (pandas groupby + nunique + size
//! + primary suppression; pandas has no exact DP sampler) on the same file in the same run.
//!
//! Run: `cargo bench -p allmende-opendata --bench release`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use allmende_opendata::{
    BudgetPeriod, BudgetSpec, CountOf, DpSpec, GroupBy, Measure, Mechanism, OpenDpNoise, Release,
    ReleaseSpec, Releaser, TimeBucket,
};
use arrow::array::{Float64Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const ROWS: usize = 1_000_000;
const VEHICLES: u64 = 5_000;
const BATCH: usize = 65_536;
const RUNS: usize = 5;
/// 2026-11-01T00:00:00Z in microseconds.
const MONTH_START: i64 = 1_793_491_200_000_000;
const MONTH_MICROS: u64 = 30 * 24 * 3_600_000_000;

/// SplitMix64: synthetic data only.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of four uniforms), mean 0, standard deviation 1.
    fn normalish(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3f64.sqrt()
    }
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new(
            "start_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            false,
        ),
        Field::new("start_lat", DataType::Float64, false),
        Field::new("start_lon", DataType::Float64, false),
        Field::new("distance", DataType::Float64, false),
    ])
}

fn write_trips(path: &std::path::Path) {
    let schema = Arc::new(schema());
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema.clone(), None).unwrap();
    let mut g = Gen(2026);
    // Trips cluster around a few Munich hot spots (Marienplatz, Hauptbahnhof, Schwabing, …).
    let spots = [
        (48.137, 11.575),
        (48.140, 11.558),
        (48.160, 11.585),
        (48.130, 11.600),
        (48.110, 11.540),
    ];
    let mut done = 0;
    while done < ROWS {
        let n = BATCH.min(ROWS - done);
        let mut ids = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut lats = Vec::with_capacity(n);
        let mut lons = Vec::with_capacity(n);
        let mut dist = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(format!("veh-{:05}", g.next() % VEHICLES));
            times.push(MONTH_START + (g.next() % MONTH_MICROS) as i64);
            let (la, lo) = spots[(g.next() % spots.len() as u64) as usize];
            lats.push(la + 0.02 * g.normalish());
            lons.push(lo + 0.03 * g.normalish());
            dist.push(200.0 + 4_000.0 * g.unit());
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("+00:00")),
                Arc::new(Float64Array::from(lats)),
                Arc::new(Float64Array::from(lons)),
                Arc::new(Float64Array::from(dist)),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
        done += n;
    }
    w.close().unwrap();
}

fn spec(dp: bool) -> ReleaseSpec {
    ReleaseSpec {
        dataset: "scooter-trips".into(),
        unit: "vehicle".into(),
        unit_column: "device_id".into(),
        k: 10,
        totals: false,
        group_by: vec![
            GroupBy {
                column: Some("start_time".into()),
                time: Some(TimeBucket::Hour),
                ..GroupBy::default()
            },
            GroupBy {
                columns: Some(vec!["start_lat".into(), "start_lon".into()]),
                grid_m: Some(500),
                as_name: Some("start_cell".into()),
                ..GroupBy::default()
            },
        ],
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
        dp: dp.then_some(DpSpec {
            epsilon: 1.0,
            delta: 1e-6,
            mechanism: Mechanism::Laplace,
            max_cells_per_unit: 10,
            max_rows_per_cell: 1,
        }),
        budget: dp.then_some(BudgetSpec {
            epsilon: 10.0,
            period: BudgetPeriod::Month,
        }),
    }
}

fn release(path: &std::path::Path, dp: bool) -> Release {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .with_batch_size(BATCH)
        .build()
        .unwrap();
    let mut r = Releaser::new(spec(dp), &schema(), OpenDpNoise).unwrap();
    for batch in reader {
        r.push(&batch.unwrap()).unwrap();
    }
    r.finish("2026-11-30T00:00:00Z").unwrap()
}

/// Reads the file without releasing (the floor under both release runs).
fn read_only(path: &std::path::Path) -> usize {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .with_batch_size(BATCH)
        .build()
        .unwrap();
    reader.map(|b| b.unwrap().num_rows()).sum()
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trips.parquet");
    write_trips(&path);
    let read = median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(read_only(&path), ROWS);
                t.elapsed()
            })
            .collect(),
    );
    let mut rows = Vec::new();
    for dp in [true, false] {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..RUNS {
            let t = Instant::now();
            let rel = release(&path, dp);
            times.push(t.elapsed());
            last = Some(rel);
        }
        let rel = last.unwrap();
        rows.push((dp, median(times), rel));
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/release_pandas.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&path)
        .arg("3")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let pandas = text
        .lines()
        .find_map(|l| l.strip_prefix("seconds="))
        .and_then(|s| s.trim().parse::<f64>().ok());
    let pandas_cells = text
        .lines()
        .find(|l| l.starts_with("cells="))
        .unwrap_or("")
        .to_string();
    if pandas.is_none() {
        eprintln!(
            "pandas run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("open-data release, {ROWS} rows, {VEHICLES} vehicles, hour × 500 m cell, k = 10");
    println!(
        "{:<44} {:>10} {:>12} {:>10}",
        "run", "median s", "vs pandas", "released"
    );
    println!(
        "{:<44} {:>10.3}",
        "rust: parquet read only",
        read.as_secs_f64()
    );
    for (dp, t, rel) in &rows {
        let name = if *dp {
            "rust: parquet read + DP counts (laplace)"
        } else {
            "rust: parquet read + k-anonymity"
        };
        let ratio = pandas.map_or("-".to_string(), |p| format!("{:.2}×", t.as_secs_f64() / p));
        println!(
            "{:<44} {:>10.3} {:>12} {:>10}",
            name,
            t.as_secs_f64(),
            ratio,
            rel.report.cells_released
        );
        if *dp {
            let d = &rel.diagnostics;
            let dpr = rel.report.dp.as_ref().unwrap();
            println!(
                "    cells {} · threshold τ {} · below τ {} · units bounded {} · rows dropped {}",
                d.cells, dpr.threshold, d.cells_below_threshold, d.units_bounded, d.rows_dropped
            );
        } else {
            println!(
                "    cells {} · suppressed {}",
                rel.report.cells.unwrap_or(0),
                rel.report.suppressed_primary.unwrap_or(0)
            );
        }
    }
    match pandas {
        Some(p) => println!(
            "{:<44} {:>10.3} {:>12} {:>10}",
            "pandas: read + groupby nunique/size + suppress", p, "1.00×", pandas_cells
        ),
        None => println!("pandas: not run"),
    }
}
