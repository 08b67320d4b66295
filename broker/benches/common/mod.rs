//! Setup shared by the load generators (`hostile_load`, `authorised_reads`):
//! an in-process Munich federation on loopback, users' mTLS channels,
//! percentiles and the process's memory.

#![allow(dead_code, reason = "each load generator uses a part of this module")]

use allmende::clock::SystemClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Starts the Munich federation with only the organisations named (one node
/// each), on free loopback ports, with the real clock. `users` adds users
/// to an organisation before it is onboarded.
pub async fn federation(orgs: &[&str], users: &[(&str, &str, allmende::pki::Role)]) -> Sandbox {
    let mut spec = SandboxSpec::munich();
    spec.orgs.retain(|o| orgs.contains(&o.name.as_str()));
    for (org, user, role) in users {
        if let Some(o) = spec.orgs.iter_mut().find(|o| o.name == *org) {
            o.users.push(((*user).to_owned(), *role));
        }
    }
    Sandbox::start(spec, None, Arc::new(SystemClock))
        .await
        .unwrap()
}

/// A new mTLS connection of `org`/`user` to `node`.
pub async fn channel(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    allmende::tls::connect(
        &sb.node(node).unwrap().grpc_endpoint(),
        &p.identity().unwrap(),
    )
    .await
    .unwrap()
}

/// The `p` quantile (0..=1) of `v` (sorted in place); zero if empty.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// The process's resident memory in KiB (`/proc/self/status`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU time this process has used so far (user + system, `/proc/self/stat`).
pub fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces).
            let rest = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}
