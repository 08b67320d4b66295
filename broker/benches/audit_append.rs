//! Audit log load generator (`cargo bench -p allmende --bench audit_append`).
//!
//! Measures, in one run on one machine:
//! - durable appends/s through `AuditLog::append` (group commit: one sled
//!   batch + one `flush_async` per group) with 1, 16 and 256 concurrent
//!   writers, against the minimal durable cost of the same data in the same
//!   run: raw sled writing the log's own entry bytes, one key per entry, in
//!   batches of the group size the log achieved, one `apply_batch` and one
//!   flush per batch (no tree hashes, no index); and, for comparison, the
//!   format-1 layout (two more 32-byte hash keys per entry, in a
//!   transaction over two trees);
//! - time from append to a signed checkpoint covering it (provable);
//! - how far the query indexes lag behind the durable log after a burst;
//! - proof generation and resident memory with 1M entries in the log.
//!
//! Set `AUDIT_BENCH_SECS` (default 5), `AUDIT_BENCH_MILLION=0` to skip
//! the 1M-entry part, and `AUDIT_BENCH_WRITERS` (e.g. `256`) to run only
//! some writer counts (profiling).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "benchmark"
)]

use allmende::audit::{AuditLog, Draft};
use allmende::clock::SystemClock;
use allmende::store::{Store, StoreOptions};
use allmende_audit::{Decision, EntryKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn draft(i: u64) -> Draft {
    let mut d = Draft::new("tum", "read", "smart-meter-readings", EntryKind::Decision);
    d.user = Some("alice".into());
    d.purpose = Some("AcademicResearch".into());
    d.decision = Some(Decision::Allow);
    d.policy_ids = vec![
        "research-read-with-grant".into(),
        "consent-covers-purpose".into(),
    ];
    d.grant_id = Some(format!("grant-{}", i % 17));
    d.subjects = vec![format!("HH-{:06}", i % 5000)];
    d
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn open(dir: &std::path::Path) -> (AuditLog, Store, tokio::sync::watch::Sender<bool>) {
    let store = Store::open(
        dir,
        &StoreOptions {
            cache_bytes: 256 << 20,
        },
    )
    .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let log = AuditLog::open(
        store.clone(),
        "munich",
        "swm",
        "swm-1",
        Arc::new(SystemClock),
        rx,
    )
    .await
    .unwrap();
    (log, store, tx)
}

/// What one run of the log measured.
struct LogRun {
    entries: u64,
    secs: f64,
    index_lag: f64,
    mean_group: f64,
    /// Up to `BASELINE_ENTRIES` of the entries the log wrote (raw bytes).
    sample: Vec<Vec<u8>>,
}

/// Entries the baselines write (at least 20 batches).
const BASELINE_ENTRIES: u64 = 200_000;

/// Runs `writers` concurrent appenders for `secs`.
async fn run_log(writers: usize, secs: f64) -> LogRun {
    let dir = tempfile::tempdir().unwrap();
    let (log, _store, stop_log) = open(dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (log, stop, done) = (log.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w as u64;
            while !stop.load(Ordering::Relaxed) {
                log.append(draft(i)).await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
                i += writers as u64;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::SeqCst);
    let (groups, grouped) = log.group_stats();
    let mean_group = grouped as f64 / groups.max(1) as f64;
    // Index lag: how long until the indexes cover everything written.
    let t = Instant::now();
    while log.status().indexed < log.size() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lag = t.elapsed().as_secs_f64();
    let sample = log
        .entry_range(0, n.min(BASELINE_ENTRIES))
        .unwrap()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let _ = stop_log.send(true);
    log.closed().await;
    LogRun {
        entries: n,
        secs: elapsed,
        index_lag: lag,
        mean_group,
        sample,
    }
}

fn open_sled(dir: &std::path::Path) -> sled::Db {
    sled::Config::new()
        .path(dir)
        .cache_capacity(256 << 20)
        .open()
        .unwrap()
}

/// The minimal durable cost of the same data: the log's own entry bytes
/// (cycled), one key per entry, in batches of `batch`, one `apply_batch`
/// and one flush per batch, written by one thread.
fn run_sled_entries(entries: u64, sample: &[Vec<u8>], batch: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = open_sled(dir.path());
    let tree = db.open_tree("entries").unwrap();
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < entries {
        let mut b = sled::Batch::default();
        for _ in 0..batch.max(1) {
            let value = &sample[(seq % sample.len() as u64) as usize];
            b.insert(&seq.to_be_bytes(), value.as_slice());
            seq += 1;
        }
        tree.apply_batch(b).unwrap();
        db.flush().unwrap();
    }
    seq as f64 / start.elapsed().as_secs_f64()
}

/// The format-1 layout for comparison: the same entries plus two 32-byte
/// tree-hash keys each, one two-tree transaction and one flush per batch.
fn run_sled_three_keys(entries: u64, sample: &[Vec<u8>], batch: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = open_sled(dir.path());
    let tree = db.open_tree("entries").unwrap();
    let hashes = db.open_tree("hashes").unwrap();
    let start = Instant::now();
    let mut seq = 0u64;
    while seq < entries {
        let mut b = sled::Batch::default();
        let mut h = sled::Batch::default();
        for _ in 0..batch.max(1) {
            let value = &sample[(seq % sample.len() as u64) as usize];
            b.insert(&seq.to_be_bytes(), value.as_slice());
            // about two tree-hash writes per entry, as the Merkle tree does
            h.insert([&[0u8][..], &seq.to_be_bytes()].concat(), vec![0u8; 32]);
            h.insert([&[1u8][..], &seq.to_be_bytes()].concat(), vec![0u8; 32]);
            seq += 1;
        }
        (&tree, &hashes)
            .transaction(|(t, hs)| {
                t.apply_batch(&b)?;
                hs.apply_batch(&h)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .unwrap();
        db.flush().unwrap();
    }
    seq as f64 / start.elapsed().as_secs_f64()
}

use sled::Transactional;

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let secs: f64 = std::env::var("AUDIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let million = std::env::var("AUDIT_BENCH_MILLION").map_or(true, |v| v != "0");
    let writer_counts: Vec<usize> = std::env::var("AUDIT_BENCH_WRITERS").map_or_else(
        |_| vec![1, 16, 256],
        |v| v.split(',').filter_map(|w| w.trim().parse().ok()).collect(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "audit append benchmark ({secs} s per point, {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| writers | durable entries/s (AuditLog) | mean group | raw sled: same entries, 1 key each, same batches, 1 flush each | ratio | raw sled, format-1 layout (3 keys/entry) | index lag after burst |"
    );
    println!("|---|---|---|---|---|---|---|");
    for writers in writer_counts {
        let run = rt.block_on(run_log(writers, secs));
        let rate = run.entries as f64 / run.secs;
        // The baselines write batches of the group size the log achieved.
        let group = (run.mean_group.round() as u64).max(1);
        let n = run.entries.min(BASELINE_ENTRIES).max(group * 20);
        let sled_rate = run_sled_entries(n, &run.sample, group);
        let three_keys = run_sled_three_keys(n, &run.sample, group);
        println!(
            "| {writers} | {rate:.0} | {:.1} | {sled_rate:.0} | {:.2} | {three_keys:.0} | {:.0} ms |",
            run.mean_group,
            rate / sled_rate,
            run.index_lag * 1000.0
        );
    }

    // Time from append to a signed checkpoint covering it.
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (log, _s, stop) = open(dir.path()).await;
        let mut samples = Vec::new();
        for i in 0..20 {
            let t = Instant::now();
            let seq = log.append(draft(i)).await.unwrap();
            assert!(log.wait_provable(seq, Duration::from_secs(5)).await);
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(37)).await;
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        println!(
            "\ntime to provable (append -> signed checkpoint): p50 {:.0} ms, max {:.0} ms (20 samples)",
            samples[10],
            samples[19]
        );
        let _ = stop.send(true);
        log.closed().await;
    });

    if million {
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (log, _s, stop) = open(dir.path()).await;
            let rss0 = rss_mib();
            let t = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..256u64 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let mut i = w;
                    while i < 1_000_000 {
                        log.append(draft(i)).await.unwrap();
                        i += 256;
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let fill = t.elapsed().as_secs_f64();
            let size = log.size();
            let mut inc = Vec::new();
            for k in 0..200u64 {
                let idx = (k * 4999) % size;
                let t = Instant::now();
                let p = allmende_audit::inclusion_proof(log.hash_store(), idx, size).unwrap();
                inc.push(t.elapsed().as_secs_f64() * 1e6);
                assert!(!p.is_empty());
            }
            inc.sort_by(|a, b| a.total_cmp(b));
            let t = Instant::now();
            let c = allmende_audit::consistency_proof(log.hash_store(), size / 3, size).unwrap();
            let cons = t.elapsed().as_secs_f64() * 1e6;
            assert!(!c.is_empty());
            // Wait for the index, then the node's full store check.
            let t = Instant::now();
            while log.status().indexed < size {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let lag = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let report = log.verify_store().unwrap();
            let check = t.elapsed().as_secs_f64();
            assert!(report.is_ok());
            println!(
                "\n1M entries: filled in {fill:.1} s ({:.0}/s, 256 writers); inclusion proof p50 {:.0} us (from the store), consistency proof {:.0} us; process RSS {:.0} MiB (was {:.0} MiB before the fill; sled cache 256 MiB)",
                size as f64 / fill,
                inc[100],
                cons,
                rss_mib(),
                rss0
            );
            println!(
                "1M entries: index complete {:.0} ms after the proofs; store check (verify_store: every leaf and node) {check:.1} s",
                lag * 1000.0
            );
            let _ = stop.send(true);
            log.closed().await;
        });
    }
}
