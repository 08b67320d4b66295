//! Helpers for Allmende's in-process multi-node end-to-end tests (the tests
//! themselves live in `tests/tests/`).

use allmende::client::ClientProfile;
use allmende::clock::SystemClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende::tls::TlsMaterial;
use std::sync::Arc;

/// Starts the Munich federation on free loopback ports in a temp dir.
pub async fn munich() -> Sandbox {
    match Sandbox::start(SandboxSpec::munich(), None, Arc::new(SystemClock)).await {
        Ok(s) => s,
        Err(e) => unreachable_start(&e),
    }
}

#[allow(
    clippy::panic,
    reason = "test helper: a sandbox that cannot start fails the test"
)]
fn unreachable_start(e: &dyn std::error::Error) -> ! {
    panic!(
        "sandbox did not start: {}",
        allmende::client::error_chain(e)
    )
}

/// Connects with explicit material (which may be deliberately bad).
pub async fn connect_with(
    endpoint: &str,
    material: &TlsMaterial,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    allmende::tls::connect(endpoint, material).await
}

/// The material of a profile.
pub fn material(p: &ClientProfile) -> TlsMaterial {
    match p.identity() {
        Ok(m) => m,
        Err(e) => unreachable_start(&e),
    }
}

/// Registers one of the brief's datasets (bundled sample data, written under
/// the sandbox root) at its owner's node, by its steward or operator, without
/// importing any consent records.
pub async fn register_sample_dataset(sb: &Sandbox, dataset: &str) {
    let spec = allmende_connectors::sample::SampleSpec::default();
    if let Err(e) = sb.register_sample(dataset, &spec, "").await {
        unreachable_start(&e);
    }
}

/// Every file below `dir`, in every subdirectory (a store's `blobs/` too).
pub fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        unreachable_start(&std::io::Error::other(format!(
            "cannot read `{}`",
            dir.display()
        )))
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Seconds since the Unix epoch now (certificates minted by a test are
/// valid from the real time).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The size of `node`'s audit log: the sequence its next entry gets.
#[allow(
    clippy::panic,
    reason = "test helper: asking for a node the sandbox does not run fails the test"
)]
pub fn audit_size(sb: &Sandbox, node: &str) -> u64 {
    match sb.node(node) {
        Some(n) => n.audit.status().size,
        None => panic!("`{node}` is not running"),
    }
}

/// Every entry of `node`'s audit log from sequence `from` on, decoded from
/// the store's bytes.
#[allow(
    clippy::panic,
    reason = "test helper: an unreadable or undecodable entry fails the test"
)]
pub fn audit_since(sb: &Sandbox, node: &str, from: u64) -> Vec<allmende_audit::Entry> {
    let Some(n) = sb.node(node) else {
        panic!("`{node}` is not running")
    };
    let log = &n.audit;
    (from..log.status().size)
        .filter_map(|s| match log.entry_bytes(s) {
            Ok(b) => b,
            Err(e) => panic!("entry {s} of `{node}`: {e}"),
        })
        .map(|b| match allmende_audit::Entry::decode(&b) {
            Ok(e) => e,
            Err(e) => panic!("an entry of `{node}` does not decode: {e}"),
        })
        .collect()
}
