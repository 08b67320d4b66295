//! Tests that spawn the real `allmende` binary: the demo, the PKI onboarding
//! flow on the command line, `node run` with signals and `kill -9`, config
//! errors and exit codes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

mod common;

use common::*;
use std::path::Path;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn demo_starts_five_nodes_answers_health_and_stops_on_sigterm() {
    // As README runs it: the default, relative directory under the current one.
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("allmende-demo");
    let (mut child, lines) = spawn_demo_in(dir.path());
    let banner = lines.join("\n");
    for org in ["stadt", "swm", "tum", "scooter-co", "versicherung-ag"] {
        assert!(banner.contains(&format!("{org}-1")), "{banner}");
    }
    // Health of each node through the CLI, each with a user of that organisation.
    for (org, user) in [
        ("stadt", "dpo"),
        ("swm", "steward"),
        ("tum", "alice"),
        ("scooter-co", "operator"),
        ("versicherung-ag", "analyst"),
    ] {
        let profile = demo_dir
            .join(org)
            .join("users")
            .join(format!("{user}.profile.toml"));
        let out = run(&["health", "--profile", profile.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "{org}: {}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["serving"], true);
        assert_eq!(v["node"], format!("{org}-1"));
        assert_eq!(v["you"]["organisation"], org);
        assert_eq!(v["you"]["name"], user);
    }
    // scooter-co's MDS feed: the last six hours delivered to the city; the
    // obligation the demo recorded judges the hours from the current one.
    assert!(
        banner.contains("scooter-trips (scooter-co → stadt)")
            && banner.contains("(6 of 6 delivered so far)"),
        "{banner}"
    );
    let operator = demo_dir.join("stadt/users/operator.profile.toml");
    let out = run(&[
        "obligations",
        "status",
        "--profile",
        operator.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let windows = v["windows"].as_array().unwrap();
    assert!(!windows.is_empty(), "{v}");
    assert!(
        windows.iter().all(|w| w["organisation"] == "scooter-co"
            && (w["status"] == "pending" || w["status"] == "delivered")),
        "{v}"
    );
    // The delivered trips, read by the city's steward.
    let steward = demo_dir.join("stadt/users/steward.profile.toml");
    let trips = dir.path().join("trips.csv");
    let out = run(&[
        "fetch",
        "mds-scooter-trips",
        "--purpose",
        "PublicInterest",
        "--profile",
        steward.to_str().unwrap(),
        "--out",
        trips.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = std::fs::read_to_string(&trips).unwrap().lines().count();
    assert!(rows > 100, "{rows} lines");
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, 30);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn an_unknown_story_is_a_usage_error() {
    for n in ["0", "11"] {
        let out = run(&["demo", "--story", n]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains(&format!(
                "story {n} does not exist; stories are numbered 1 to 10"
            )),
            "{}",
            stderr(&out)
        );
    }
}

/// The onboarding flow exactly as an operator types it; returns the node config.
fn onboard(dir: &Path, grpc: u16, admin: u16) -> std::path::PathBuf {
    let d = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let ok = |args: &[&str]| {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    ok(&[
        "pki",
        "init-federation",
        "--federation",
        "munich",
        "--dir",
        &d("city"),
    ]);
    ok(&[
        "pki",
        "org-request",
        "--federation",
        "munich",
        "--org",
        "swm",
        "--dir",
        &d("swm"),
    ]);
    ok(&[
        "pki",
        "org-sign",
        "--federation-dir",
        &d("city"),
        "--csr",
        &d("swm/org-ca.csr"),
        "--kind",
        "utility",
        "--display-name",
        "Stadtwerke München",
        "--out",
        &d("swm/org-ca.crt"),
    ]);
    for n in ["swm-1", "swm-2"] {
        ok(&[
            "pki",
            "issue-node",
            "--org-dir",
            &d("swm"),
            "--name",
            n,
            "--out",
            &d(&format!("nodes/{n}")),
        ]);
    }
    ok(&[
        "pki",
        "issue-user",
        "--org-dir",
        &d("swm"),
        "--id",
        "steward",
        "--role",
        "steward",
        "--out",
        &d("users"),
    ]);
    ok(&[
        "pki",
        "issue-user",
        "--org-dir",
        &d("swm"),
        "--id",
        "dpo",
        "--role",
        "dpo",
        "--out",
        &d("users"),
    ]);
    // Keys are private, certificates public.
    for key in [
        "city/root-ca.key",
        "swm/org-ca.key",
        "nodes/swm-1/node.key",
        "users/steward.key",
    ] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    // The membership says what kind swm is.
    let o = ok(&[
        "--json",
        "pki",
        "membership",
        "--federation-dir",
        &d("city"),
    ]);
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(m["members"][0]["org"], "swm");
    assert_eq!(m["members"][0]["kind"], "utility");
    // Re-running a step never overwrites key material.
    let o = run(&[
        "pki",
        "org-request",
        "--federation",
        "munich",
        "--org",
        "swm",
        "--dir",
        &d("swm"),
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        stderr(&o).contains("refusing to overwrite"),
        "{}",
        stderr(&o)
    );

    let cfg = dir.join("nodes/swm-1/node.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"swm-1\"\ndata_dir = \"data\"\n[listen]\ngrpc = \"127.0.0.1:{grpc}\"\nadmin = \"127.0.0.1:{admin}\"\n[tls]\nroot_ca = \"../../city/root-ca.crt\"\ncert = \"node.crt\"\nkey = \"node.key\"\nmembership = \"../../city/membership.json\"\n[store]\ncache_mb = 8\n"
        ),
    )
    .unwrap();
    cfg
}

fn profile_for(dir: &Path, who: &str, grpc: u16) -> std::path::PathBuf {
    let (cert, key) = match who {
        "swm-2" => ("nodes/swm-2/node.crt", "nodes/swm-2/node.key"),
        "dpo" => ("users/dpo.crt", "users/dpo.key"),
        _ => ("users/steward.crt", "users/steward.key"),
    };
    let p = dir.join(format!("{who}.profile.toml"));
    std::fs::write(
        &p,
        format!(
            "endpoint = \"https://127.0.0.1:{grpc}\"\nroot_ca = \"city/root-ca.crt\"\ncert = \"{cert}\"\nkey = \"{key}\"\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn onboarding_on_the_command_line_then_node_run_health_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let cfg = onboard(dir.path(), base, base + 100);
    let (mut child, _) = spawn_until(
        &["node", "run", "--config", cfg.to_str().unwrap()],
        "listening",
        &[],
    );
    let profile = profile_for(dir.path(), "steward", base);
    let out = run(&["health", "--profile", profile.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SERVING") && text.contains("swm-1") && text.contains("steward"),
        "{text}"
    );
    // Revocation on the command line reaches the running node through its
    // membership file, without restart.
    let o = run(&[
        "pki",
        "revoke",
        "--federation-dir",
        dir.path().join("city").to_str().unwrap(),
        "--cert",
        dir.path().join("users/steward.crt").to_str().unwrap(),
        "--reason",
        "test",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut refused = None;
    for _ in 0..50 {
        let out = run(&["health", "--profile", profile.to_str().unwrap()]);
        if !out.status.success() {
            let e = stderr(&out);
            eprintln!("refused: {e}");
            // A sentence for people, never tonic's debug form.
            assert!(!e.contains("code: '") && !e.contains("Status {"), "{e}");
            refused = out.status.code();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        matches!(refused, Some(4) | Some(5)),
        "revoked user still served: {refused:?}"
    );
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, 30).code(), Some(0));
    // Logs written to a pipe carry no colour codes.
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(!logs.trim().is_empty(), "the node logged nothing");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in piped logs: {logs:?}"
    );
}

#[test]
fn config_errors_name_file_and_key_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[node]\nname = \"n\"\ndata_dir = \"d\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = run(&["node", "run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let e = stderr(&out);
    assert!(
        e.contains("node.toml") && e.contains("unknown field `colour`"),
        "{e}"
    );
    let out = run(&[
        "node",
        "run",
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("missing.toml"));
    // A usable file with missing TLS material names the file.
    let base = free_base_port();
    let cfg = onboard(dir.path(), base, base + 100);
    std::fs::remove_file(dir.path().join("nodes/swm-1/node.key")).unwrap();
    let out = run(&["node", "run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("node.key"), "{}", stderr(&out));
    // Environment overrides are validated too.
    let out = bin()
        .args(["node", "run", "--config", cfg.to_str().unwrap()])
        .env("ALLMENDE_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("log.format"), "{}", stderr(&out));
}

#[test]
fn missing_profile_is_a_clear_error() {
    let out = bin()
        .args(["health"])
        .env_remove("ALLMENDE_PROFILE")
        .env_remove("ALLMENDE_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no client profile"));
    let out = bin()
        .args(["health", "--profile", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    use allmende_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let cfg = onboard(dir.path(), base, base + 100);
    let peer = profile_for(dir.path(), "swm-2", base);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = allmende::client::ClientProfile::load(&peer).unwrap();
    for round in 0..2 {
        let (mut child, _) = spawn_until(
            &["node", "run", "--config", cfg.to_str().unwrap()],
            "listening",
            &[],
        );
        // Four concurrent writers say hello as fast as they can; every
        // acknowledged count is durable by contract.
        let acked = rt.block_on(async {
            let ch = p.connect().await.unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let max = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let mut c = pb::federation_client::FederationClient::new(ch.clone());
                let (stop, max) = (stop.clone(), max.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        match c.hello(pb::HelloRequest::default()).await {
                            Ok(r) => {
                                max.fetch_max(
                                    r.into_inner().hellos_recorded,
                                    std::sync::atomic::Ordering::SeqCst,
                                );
                            }
                            Err(_) => break,
                        }
                    }
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(400 + round * 300)).await;
            signal(&child, "-KILL");
            let acked = max.load(std::sync::atomic::Ordering::SeqCst);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            for t in tasks {
                let _ = t.await;
            }
            acked
        });
        let status = wait_exit(&mut child, 10);
        assert_eq!(status.code(), None, "killed by signal");
        assert!(acked > 0, "no write was acknowledged before the kill");
        // Restart and read back.
        let (mut child, _) = spawn_until(
            &["node", "run", "--config", cfg.to_str().unwrap()],
            "listening",
            &[],
        );
        let recorded = rt.block_on(async {
            let ch = p.connect().await.unwrap();
            let peers = pb::federation_client::FederationClient::new(ch)
                .list_peers(pb::ListPeersRequest {})
                .await
                .unwrap()
                .into_inner()
                .peers;
            peers
                .iter()
                .find(|x| x.node == "swm-2")
                .map(|x| x.hellos)
                .unwrap_or(0)
        });
        assert!(
            recorded >= acked,
            "round {round}: acknowledged {acked} hellos, only {recorded} survived"
        );
        signal(&child, "-TERM");
        assert_eq!(wait_exit(&mut child, 30).code(), Some(0));
    }
}

#[test]
fn story_8_passes_in_the_demo_harness() {
    let out = run(&["demo", "--story", "8"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("story 8 passed"), "{text}");
    assert!(text.contains("names entry #1 as modified"), "{text}");
}

#[test]
fn audit_entries_acknowledged_before_kill_9_survive_and_the_tree_verifies() {
    use allmende_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let cfg = onboard(dir.path(), base, base + 100);
    let dpo = profile_for(dir.path(), "dpo", base);
    let p = allmende::client::ClientProfile::load(&dpo).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (child, _) = spawn_until(
        &["node", "run", "--config", cfg.to_str().unwrap()],
        "listening",
        &[],
    );
    // Every answered audit query has its own decision entry durably in the
    // log (fail closed): count the answers of 16 concurrent DPO clients.
    let acked = rt.block_on(async {
        let ch = p.connect().await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let mut c = pb::audit_client::AuditClient::new(ch.clone());
            let (stop, count) = (stop.clone(), count.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match c
                        .query(pb::AuditQueryRequest {
                            limit: 1,
                            ..Default::default()
                        })
                        .await
                    {
                        Ok(_) => {
                            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        signal(&child, "-KILL");
        let acked = count.load(std::sync::atomic::Ordering::SeqCst);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in tasks {
            let _ = t.await;
        }
        acked
    });
    let mut child = child;
    assert_eq!(wait_exit(&mut child, 10).code(), None);
    assert!(acked > 10, "only {acked} queries answered before the kill");
    let (mut child, _) = spawn_until(
        &["node", "run", "--config", cfg.to_str().unwrap()],
        "listening",
        &[],
    );
    let out = run(&[
        "--json",
        "audit",
        "status",
        "--profile",
        dpo.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = v["size"].as_u64().unwrap();
    assert!(
        size >= acked,
        "acknowledged {acked} audited reads, only {size} entries survived"
    );
    let out = run(&["audit", "verify-log", "--profile", dpo.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, 30).code(), Some(0));
}

#[test]
fn story_3_passes_in_the_demo_harness_with_reasons_in_german_and_english() {
    let out = run(&["demo", "--story", "3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("story 3 passed"), "{text}");
    // Each denial names its deciding policy with the annotations' reasons.
    for (policy, de, en) in [
        (
            "purpose-grant-mismatch",
            "Der angegebene Zweck stimmt nicht mit dem Zweck der Berechtigung überein",
            "The declared purpose differs from the grant's purpose",
        ),
        (
            "grant-other-dataset",
            "Die vorgelegte Berechtigung gilt für einen anderen Datensatz",
            "The grant presented is for another dataset",
        ),
        (
            "grant-expired",
            "Die Berechtigung ist abgelaufen",
            "The grant has expired",
        ),
    ] {
        assert!(
            text.contains(&format!("policy {policy}:")),
            "{policy}: {text}"
        );
        assert!(text.contains(&format!("de: {de}")), "{policy}: {text}");
        assert!(text.contains(&format!("en: {en}")), "{policy}: {text}");
    }
    // SWM's audit log as its DPO reads it: the denials and the expiry.
    assert!(text.contains("-> deny [grant-expired]"), "{text}");
    assert!(text.contains("grant_change/Expired"), "{text}");
}

#[test]
fn story_1_passes_in_the_demo_harness() {
    let out = run(&["demo", "--story", "1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("story 1 passed"), "{text}");
}

#[test]
fn story_5_passes_in_the_demo_harness() {
    let out = run(&["demo", "--story", "5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("story 5 passed"), "{text}");
    // The anonymous download and the refusal as the caller saw them.
    assert!(text.contains("200 OK, 240 rows"), "{text}");
    assert!(
        text.contains("403: Access denied: Raw personal data"),
        "{text}"
    );
}

#[test]
fn a_killed_demo_leaves_no_mosquitto_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_demo_in(dir.path());
    let banner = lines.join("\n");
    if allmende_connectors::mqtt::find_mosquitto().is_none() {
        eprintln!("skipped: mosquitto is not installed (scripts/test.sh installs it)");
        return;
    }
    let port = banner
        .split("through a local mosquitto on mqtt://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no mosquitto port in the banner:\n{banner}"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // SIGKILL: the demo cannot stop its broker itself.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo's mosquitto on port {port} outlived the demo"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `allmende demo --story N`; passes if it exits 0 saying so and
/// printed each of `said`.
fn story_passes(n: &str, said: &[&str]) {
    let out = run(&["demo", "--story", n]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains(&format!("story {n} passed")), "{text}");
    for s in said {
        assert!(text.contains(s), "`{s}` not in: {text}");
    }
}

#[test]
fn story_7_passes_in_the_demo_harness() {
    // The missed hour as the city's DPO saw it, and the flag in the audit.
    story_passes(
        "7",
        &["is missing and flagged non-compliant", "flag_obligation"],
    );
}

#[test]
fn story_9_passes_in_the_demo_harness() {
    story_passes(
        "9",
        &[
            "TUM's saved state does not open it",
            "TUM's node certificate is refused",
        ],
    );
}

#[test]
fn story_10_passes_in_the_demo_harness() {
    story_passes("10", &["files of the hub's store holds the marker"]);
}

#[test]
fn policy_validate_and_offline_explain() {
    // The bundled set's properties are proved by the policies crate's tests.
    let out = run(&["policy", "validate", "--no-prove"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A broken copy is refused with file and line.
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    let f = dir.path().join("policies/non-use.cedar");
    let text = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, text.replacen("forbid (", "forbid ((", 1)).unwrap();
    let out = run(&["policy", "validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let e = stderr(&out);
    assert!(e.contains("non-use.cedar:"), "{e}");
    assert!(!e.contains("prove"), "refused before proving: {e}");
    // Story 6 offline: the insurer is refused by the non-use rule even with a grant.
    let out = run(&[
        "--json",
        "policy",
        "explain",
        "--principal",
        "user:vers-analyst",
        "--action",
        "read",
        "--resource",
        "smart-meter-readings",
        "--purpose",
        "InsuranceUnderwriting",
        "--grant",
        "g-vers-smart-meter",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], false);
    let ids: Vec<&str> = v["deciding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"nonuse-insurance-risk-scoring"), "{ids:?}");
}

/// An onboarded node whose policies are served from a directory the
/// operator edits: its base port, config file and policy directory.
fn onboard_with_policy_dir(dir: &Path) -> (u16, std::path::PathBuf, std::path::PathBuf) {
    let base = free_base_port();
    let cfg = onboard(dir, base, base + 100);
    let pdir = dir.join("policy");
    copy_policies(&pdir);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("[policy]\ndir = \"{}\"\n", pdir.display()));
    std::fs::write(&cfg, text).unwrap();
    (base, cfg, pdir)
}

#[test]
fn sighup_reload_refuses_a_bad_set_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (base, cfg, pdir) = onboard_with_policy_dir(dir.path());
    let (mut child, _) = spawn_until(
        &["node", "run", "--config", cfg.to_str().unwrap()],
        "listening",
        &[],
    );
    let dpo = profile_for(dir.path(), "dpo", base);
    let hash = |p: &std::path::Path| {
        let out = run(&["--json", "policy", "list", "--profile", p.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["policy_set_hash"].as_str().unwrap().to_owned()
    };
    let before = hash(&dpo);
    // A broken edit: SIGHUP is refused, the old set keeps serving.
    let f = pdir.join("policies/consent.cedar");
    let good = std::fs::read_to_string(&f).unwrap();
    std::fs::write(
        &f,
        format!("{good}\npermit (principal, action, resource) when {{ nonsense }};\n"),
    )
    .unwrap();
    signal(&child, "-HUP");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(hash(&dpo), before);
    // A set that loads but breaks a property (the owner rule before roles:
    // citizens read personal rows) is refused as well: it is never served,
    // not even while the next reload is being proved.
    let research = pdir.join("policies/research-access.cedar");
    let research_good = std::fs::read_to_string(&research).unwrap();
    std::fs::write(&f, &good).unwrap();
    std::fs::write(&research, BEFORE_ROLES).unwrap();
    let broken = offline_hash(&pdir);
    signal(&child, "-HUP");
    std::thread::sleep(std::time::Duration::from_secs(2));
    // A valid edit (a comment) is taken, after it is proved.
    std::fs::write(&research, &research_good).unwrap();
    std::fs::write(&f, format!("{good}\n// reviewed\n")).unwrap();
    let valid = offline_hash(&pdir);
    signal(&child, "-HUP");
    let mut changed = false;
    for _ in 0..900 {
        let now = hash(&dpo);
        assert_ne!(now, broken, "a set breaking a property was loaded");
        if now == valid {
            changed = true;
            break;
        }
        assert_eq!(now, before);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(changed, "valid policy change not loaded on SIGHUP");
    // A shutdown does not wait for a reload that is still being proved.
    std::fs::write(&f, format!("{good}\n// reviewed twice\n")).unwrap();
    signal(&child, "-HUP");
    std::thread::sleep(std::time::Duration::from_millis(500));
    signal(&child, "-TERM");
    let t = std::time::Instant::now();
    assert_eq!(wait_exit(&mut child, 30).code(), Some(0));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "shutdown waited {:?} for the proof",
        t.elapsed()
    );
}

/// Without cvc5 nothing can be proved: `policy prove` fails (exit 1) naming
/// how to install it, and a node refuses a reload (fail closed) and keeps
/// serving the old set.
#[test]
fn without_cvc5_prove_fails_and_reload_is_refused() {
    let no_solver = [("CVC5", "/nonexistent/cvc5")];
    let out = bin()
        .args(["policy", "prove"])
        .envs(no_solver)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("apt-get install cvc5"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let (base, cfg, pdir) = onboard_with_policy_dir(dir.path());
    let (mut child, _) = spawn_until(
        &["node", "run", "--config", cfg.to_str().unwrap()],
        "listening",
        &no_solver,
    );
    let dpo = profile_for(dir.path(), "dpo", base);
    let hash = || {
        let out = run(&[
            "--json",
            "policy",
            "list",
            "--profile",
            dpo.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["policy_set_hash"].as_str().unwrap().to_owned()
    };
    let before = hash();
    let f = pdir.join("policies/consent.cedar");
    let good = std::fs::read_to_string(&f).unwrap();
    std::fs::write(&f, format!("{good}\n// reviewed\n")).unwrap();
    signal(&child, "-HUP");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(hash(), before);
    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, 30).code(), Some(0));
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("policy reload refused"), "{log}");
    assert!(log.contains("cannot start the SMT solver cvc5"), "{log}");
}

/// `research-access.cedar` before the owner rule was split by role: every
/// member of the owner, citizens included, read its personal data.
const BEFORE_ROLES: &str =
    include_str!("../../policies/tests/fixtures/research-access-before-roles.cedar");

/// The hash of a policy directory, without proving it.
fn offline_hash(dir: &Path) -> String {
    let out = run(&[
        "--json",
        "policy",
        "validate",
        "--no-prove",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["policy_set_hash"].as_str().unwrap().to_owned()
}

/// `policy prove` and `policy validate` name the property a set breaks, the
/// counterexample and the policy that allowed it; exit code 6.
#[test]
fn policy_prove_and_validate_name_the_broken_property() {
    let dir = tempfile::tempdir().unwrap();
    copy_policies(dir.path());
    std::fs::write(
        dir.path().join("policies/research-access.cedar"),
        BEFORE_ROLES,
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        &["policy", "prove", "--dir", d][..],
        &["policy", "validate", d][..],
    ] {
        let out = run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(6),
            "{args:?}: {text}{}",
            stderr(&out)
        );
        assert!(
            text.contains("FAILED   never-citizen-reads-personal-rows"),
            "{text}"
        );
        assert!(text.contains("principal: Allmende::User::"), "{text}");
        assert!(text.contains("owner-uses-own-data (permit)"), "{text}");
        assert!(
            stderr(&out).contains("never-citizen-reads-personal-rows"),
            "{}",
            stderr(&out)
        );
    }
}

/// Copies the repository's policy directory (schema + `policies/*.cedar`) to `dest`.
fn copy_policies(dest: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    std::fs::create_dir_all(dest.join("policies")).unwrap();
    std::fs::copy(
        src.join("schema.cedarschema"),
        dest.join("schema.cedarschema"),
    )
    .unwrap();
    for e in std::fs::read_dir(src.join("policies")).unwrap().flatten() {
        std::fs::copy(e.path(), dest.join("policies").join(e.file_name())).unwrap();
    }
}

/// `consent receipt-verify` needs no network and no profile: a receipt that
/// is not one exits 1 naming the file, a missing root certificate exits 3.
#[test]
fn consent_receipt_verify_is_offline_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let city = dir.path().join("city");
    let out = run(&[
        "pki",
        "init-federation",
        "--federation",
        "munich",
        "--dir",
        city.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = city.join("root-ca.crt");
    let receipt = dir.path().join("receipt.json");
    std::fs::write(
        &receipt,
        r#"{"payload":"{}","signature":"00","signer_public_key":"00","node":"x","key_binding_signature":"00","certificate_chain_pem":""}"#,
    )
    .unwrap();
    let out = run(&[
        "consent",
        "receipt-verify",
        "--receipt",
        receipt.to_str().unwrap(),
        "--federation-root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    let out = run(&[
        "consent",
        "receipt-verify",
        "--receipt",
        receipt.to_str().unwrap(),
        "--federation-root",
        dir.path().join("missing.pem").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

/// A sandbox user's profile aimed at the city's node, written to `dir`.
fn profile_at_city(
    sb: &allmende::sandbox::Sandbox,
    dir: &Path,
    org: &str,
    user: &str,
) -> std::path::PathBuf {
    let mut p = sb.profile(org, user).unwrap();
    p.endpoint = sb.node("stadt-1").unwrap().grpc_endpoint();
    let path = dir.join(format!("{org}-{user}.profile.toml"));
    std::fs::write(&path, p.to_toml()).unwrap();
    path
}

async fn allmende(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_allmende"))
        .args(args)
        .output()
        .await
        .unwrap()
}

/// `obligations status` shows one block per company with each window's
/// status, `--json` the same windows machine-readably; recording as the
/// obliged company is refused with a sentence and exit code 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obligations_status_table_json_and_a_refusal() {
    use allmende::clock::{Clock, ManualClock};
    use allmende::obligations::{Delivery, HOUR_MS, Outcome};
    let clock = ManualClock::starting_now();
    let sb = allmende::sandbox::Sandbox::start(
        allmende::sandbox::SandboxSpec::munich(),
        None,
        clock.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let operator = profile_at_city(&sb, dir.path(), "stadt", "operator");
    let company = profile_at_city(&sb, dir.path(), "scooter-co", "operator");
    let now = clock.now_unix_ms();
    let w = now - now.rem_euclid(HOUR_MS) + HOUR_MS;
    let hour = |ms: i64| allmende::timefmt::format_unix_ms(ms)[..13].to_owned();
    let from = hour(w);
    let out = allmende(&[
        "obligations",
        "record",
        "--organisation",
        "scooter-co",
        "--dataset",
        "scooter-trips",
        "--grace",
        "15m",
        "--from",
        &from,
        "--profile",
        operator.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.starts_with(
            "recorded obl-1 v1: `scooter-co` delivers `scooter-trips` per hour within 15m"
        ),
        "{text}"
    );
    // The obliged company may not record (or change) obligations.
    let out = allmende(&[
        "obligations",
        "record",
        "--organisation",
        "scooter-co",
        "--dataset",
        "other",
        "--grace",
        "1h",
        "--profile",
        company.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("denied"), "{}", stderr(&out));
    // A bad grace is an input error, before any call.
    let out = allmende(&[
        "obligations",
        "record",
        "--organisation",
        "scooter-co",
        "--dataset",
        "x",
        "--grace",
        "15 minutes",
        "--profile",
        operator.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("grace `15 minutes` is not a duration"));

    let deliveries = sb.node("stadt-1").unwrap().obligations.deliveries().clone();
    let d = |window: i64, at: i64, outcome: Outcome| Delivery {
        organisation: "scooter-co".into(),
        dataset: "scooter-trips".into(),
        window_start_ms: window,
        at_ms: at,
        outcome,
    };
    deliveries
        .record(&d(
            w,
            w + HOUR_MS + 60_000,
            Outcome::Accepted {
                rows: vec![("trips".into(), 4)],
            },
        ))
        .await
        .unwrap();
    deliveries
        .record(&d(
            w + HOUR_MS,
            w + 2 * HOUR_MS,
            Outcome::Rejected {
                reasons: vec!["trip `t-3` ends before it starts".into()],
                kept_as: None,
            },
        ))
        .await
        .unwrap();
    clock.set_unix_ms(w + 3 * HOUR_MS + 16 * 60_000);
    let to = hour(w + 3 * HOUR_MS);
    let args = |json: bool| {
        let mut a = vec![
            "obligations",
            "status",
            "--from",
            &from,
            "--to",
            &to,
            "--profile",
            company.to_str().unwrap(),
        ];
        if json {
            a.insert(0, "--json");
        }
        a
    };
    let out = allmende(&args(false)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines.contains(&"scooter-co"), "{table}");
    let row = |status: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!(" {status} ")))
            .unwrap_or_else(|| panic!("no `{status}` row in\n{table}"))
            .to_string()
    };
    assert!(row("delivered").contains(&allmende::timefmt::format_unix_ms(w)));
    assert!(row("invalid").contains("trip `t-3` ends before it starts"));
    assert!(row("missing").contains(&allmende::timefmt::format_unix_ms(w + 2 * HOUR_MS)));
    let out = allmende(&args(true)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<&str> = v["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["delivered", "invalid", "missing"]);
    assert_eq!(v["windows"][0]["organisation"], "scooter-co");
    assert_eq!(v["windows"][0]["rejected_at"], serde_json::Value::Null);
    assert_eq!(
        v["windows"][1]["reasons"][0],
        "trip `t-3` ends before it starts"
    );
    // Another company's windows are refused.
    let out = allmende(&[
        "obligations",
        "status",
        "--organisation",
        "versicherung-ag",
        "--profile",
        company.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    sb.shutdown().await.unwrap();
}

/// `federation invite` and `federation join` exactly as the city operator
/// and the new organisation type them: the city node signs, the new
/// organisation gets its files over the network; replays, strangers and
/// bad input are refused with sentences and exit codes.
#[test]
fn invite_and_join_on_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
    let ok = |args: &[&str]| {
        let o = run(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };
    let grpc = free_base_port();
    ok(&[
        "pki",
        "init-federation",
        "--federation",
        "munich",
        "--dir",
        &d("city"),
    ]);
    ok(&[
        "pki",
        "org-request",
        "--federation",
        "munich",
        "--org",
        "stadt",
        "--dir",
        &d("stadt"),
    ]);
    ok(&[
        "pki",
        "org-sign",
        "--federation-dir",
        &d("city"),
        "--csr",
        &d("stadt/org-ca.csr"),
        "--kind",
        "city",
        "--display-name",
        "Stadt",
        "--out",
        &d("stadt/org-ca.crt"),
    ]);
    ok(&[
        "pki",
        "issue-node",
        "--org-dir",
        &d("stadt"),
        "--name",
        "stadt-1",
        "--out",
        &d("nodes/stadt-1"),
    ]);
    for (id, role) in [("operator", "operator"), ("steward", "steward")] {
        ok(&[
            "pki",
            "issue-user",
            "--org-dir",
            &d("stadt"),
            "--id",
            id,
            "--role",
            role,
            "--out",
            &d("users"),
        ]);
        std::fs::write(
            dir.path().join(format!("{id}.profile.toml")),
            format!(
                "endpoint = \"https://127.0.0.1:{grpc}\"\nroot_ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                d("city/root-ca.crt"),
                d(&format!("users/{id}.crt")),
                d(&format!("users/{id}.key"))
            ),
        )
        .unwrap();
    }
    let cfg = dir.path().join("nodes/stadt-1/node.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 1\n[node]\nname = \"stadt-1\"\ndata_dir = \"data\"\n[listen]\ngrpc = \"127.0.0.1:{grpc}\"\n[tls]\nroot_ca = \"../../city/root-ca.crt\"\ncert = \"node.crt\"\nkey = \"node.key\"\nmembership = \"../../city/membership.json\"\n[store]\ncache_mb = 8\n[federation]\nroot_dir = \"{}\"\n",
            d("city")
        ),
    )
    .unwrap();
    let (mut child, _) = spawn_until(
        &["node", "run", "--config", cfg.to_str().unwrap()],
        "listening",
        &[],
    );
    let operator = d("operator.profile.toml");

    // A steward may not invite: refused (exit 5), in a sentence.
    let o = run(&[
        "federation",
        "invite",
        "--organisation",
        "fz",
        "--kind",
        "university",
        "--name",
        "FZ",
        "--out",
        &d("x.json"),
        "--profile",
        &d("steward.profile.toml"),
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));
    assert!(!dir.path().join("x.json").exists());
    // An unknown kind is bad input (exit 3).
    let o = run(&[
        "federation",
        "invite",
        "--organisation",
        "fz",
        "--kind",
        "research",
        "--name",
        "FZ",
        "--out",
        &d("x.json"),
        "--profile",
        &operator,
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("`research`"), "{}", stderr(&o));

    // The operator invites; the file is private.
    let o = ok(&[
        "--json",
        "federation",
        "invite",
        "--organisation",
        "fz",
        "--kind",
        "university",
        "--name",
        "Forschungszentrum",
        "--out",
        &d("fz-invitation.json"),
        "--profile",
        &operator,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "university");
    assert_eq!(mode(&dir.path().join("fz-invitation.json")), 0o600);

    // `--node` without `--endpoint` is a usage error.
    let o = run(&[
        "federation",
        "join",
        "--invitation",
        &d("fz-invitation.json"),
        "--dir",
        &d("fz"),
        "--node",
        "fz-1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A missing or garbled invitation is bad input.
    let o = run(&[
        "federation",
        "join",
        "--invitation",
        &d("none.json"),
        "--dir",
        &d("fz"),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot read invitation"),
        "{}",
        stderr(&o)
    );

    // The organisation joins, with a node.
    let node_port = free_base_port();
    let o = ok(&[
        "--json",
        "federation",
        "join",
        "--invitation",
        &d("fz-invitation.json"),
        "--dir",
        &d("fz"),
        "--node",
        "fz-1",
        "--endpoint",
        &format!("https://127.0.0.1:{node_port}"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["organisation"].as_str(), v["kind"].as_str()),
        (Some("fz"), Some("university"))
    );
    assert_eq!(mode(&dir.path().join("fz/org-ca.key")), 0o600);
    for f in [
        "fz/org-ca.crt",
        "fz/root-ca.crt",
        "fz/membership.json",
        "fz/nodes/fz-1/node.crt",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    // The city's membership lists fz as a university, with its node.
    let o = ok(&[
        "--json",
        "pki",
        "membership",
        "--federation-dir",
        &d("city"),
    ]);
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        m["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["org"] == "fz" && x["kind"] == "university")
    );
    assert!(
        m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["node"] == "fz-1")
    );
    // The same invitation again: refused as used, in a sentence (exit 1).
    let o = run(&[
        "federation",
        "join",
        "--invitation",
        &d("fz-invitation.json"),
        "--dir",
        &d("fz-again"),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("was already used"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Status {"), "{}", stderr(&o));

    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, 30).code(), Some(0));
}
