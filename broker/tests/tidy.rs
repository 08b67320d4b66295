//! Tidy checks over the workspace sources: every Rust module starts with a
//! `//!` doc comment, and no placeholder macro (`todo`, `unimplemented`) is left in
//! shipped code; and the architecture invariants `ARCHITECTURE.md` states about
//! `broker/src` (who names sled, who builds a `Principal`, who reads the system
//! time, who prints). A broken rule fails with the file and line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment_and_nothing_is_left_undone() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in [
        "proto",
        "broker",
        "connectors",
        "policies",
        "audit",
        "tests",
    ] {
        for sub in ["src", "tests", "benches"] {
            rust_files(&root.join(krate).join(sub), &mut files);
        }
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            bad.push(format!("{}: does not start with `//!`", f.display()));
        }
        let shipped = f.components().any(|c| c.as_os_str() == "src");
        // Spelled in two parts so that this file does not match itself.
        for needle in [concat!("todo", "!("), concat!("unimplemented", "!(")] {
            if shipped && text.contains(needle) {
                bad.push(format!("{}: contains {needle}", f.display()));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The shipped part of a source file: everything before its first
/// `#[cfg(test)]` (unit tests may name what shipped code may not).
fn shipped(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
}

/// `broker/src` files relative to it, with their shipped text.
fn broker_sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&f).unwrap();
            (rel, shipped(&text).to_owned())
        })
        .collect()
}

/// Every line of shipped `broker/src` code that contains one of `needles`
/// in a file that `allowed` does not accept, as `file:line: text`.
fn offenders(needles: &[&str], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in broker_sources() {
        if allowed(&rel) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|n| code.contains(n)) {
                out.push(format!("broker/src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

// Needles are spelled in parts so that this file does not match itself.

#[test]
fn only_the_store_names_sled() {
    let bad = offenders(&[concat!("sled", "::")], |f| f.starts_with("store/"));
    assert!(bad.is_empty(), "sled outside `store`:\n{}", bad.join("\n"));
}

/// Modules of the crate that `store` may name: infrastructure without a
/// data format of its own.
const STORE_MAY_NAME: &[&str] = &["store", "clock", "timefmt", "telemetry", "metrics"];

/// `crate::<module>` for every module of `broker/src/lib.rs` that `store`
/// may not name, and the domain crates.
fn domain_names() -> Vec<String> {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let mut names: Vec<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_owned())
        .filter(|m| !STORE_MAY_NAME.contains(&m.as_str()))
        .map(|m| format!("crate::{m}"))
        .collect();
    for c in ["allmende_audit", "allmende_policies", "allmende_connectors"] {
        names.push(c.to_owned());
    }
    names
}

/// The storage layer knows no domain format: a migration that rewrites a
/// domain module's data is a `MigrationStep` that module supplies.
#[test]
fn the_store_names_no_domain_module() {
    let names = domain_names();
    assert!(names.iter().any(|n| n == "crate::audit"), "{names:?}");
    let needles: Vec<&str> = names.iter().map(String::as_str).collect();
    let bad = offenders(&needles, |f| !f.starts_with("store/"));
    assert!(
        bad.is_empty(),
        "`store` names a domain module (supply a `MigrationStep` instead):\n{}",
        bad.join("\n")
    );
}

/// Handler files whose protobuf messages are built in `rpc/convert/` only
/// and whose errors go through `ApiError`. Checked so far: the audit
/// handlers (the other handlers follow with their own conversion files).
const THIN_HANDLERS: &[&str] = &["rpc/audit.rs"];

/// Lines of shipped code in `files` that build a protobuf struct
/// (`pb::Name {`) or a `tonic::Status` value (`Status::`).
fn wire_literals(files: &[&str]) -> Vec<String> {
    let status = concat!("Status", "::");
    let mut out = Vec::new();
    for (rel, text) in broker_sources() {
        if !files.contains(&rel.as_str()) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let literal = code.match_indices(concat!("pb", "::")).any(|(at, m)| {
                let rest = &code[at + m.len()..];
                let name_end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                name_end > 0 && rest[name_end..].trim_start().starts_with('{')
            });
            if literal || code.contains(status) {
                out.push(format!("broker/src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

#[test]
fn thin_handlers_build_no_protobuf_message_and_no_status() {
    let bad = wire_literals(THIN_HANDLERS);
    assert!(
        bad.is_empty(),
        "a protobuf literal or `Status` value in a handler (build it in `rpc/convert/`, \
         return `ApiError`):\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_verifier_constructs_a_principal() {
    let bad = principal_literals(|f| f == "pki/verifier.rs");
    assert!(
        bad.is_empty(),
        "a `Principal` built outside `pki::verifier`:\n{}",
        bad.join("\n")
    );
}

/// Struct literals of the broker's `Principal` in files `allowed` does not
/// accept.
fn principal_literals(allowed: impl Fn(&str) -> bool) -> Vec<String> {
    offenders(&[concat!("Principal", " {")], allowed)
        .into_iter()
        // The definition, and types of the same name in other crates.
        .filter(|l| {
            !l.contains("struct Principal")
                && !l.contains("pb::Principal")
                && !l.contains("audit::Principal")
                && !l.contains("pol::Principal")
                && !l.contains("impl")
        })
        .collect()
}

#[test]
fn only_the_clock_reads_the_system_time() {
    let bad = offenders(
        &[
            concat!("SystemTime", "::now"),
            concat!("OffsetDateTime", "::now"),
            concat!("UNIX", "_EPOCH.elapsed"),
        ],
        |f| f == "clock.rs",
    );
    assert!(
        bad.is_empty(),
        "system time read outside `clock`:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_command_line_prints() {
    let bad = offenders(&[concat!("println", "!("), concat!("print", "!(")], |f| {
        f.starts_with("cli/") || f == "demo.rs" || f == "main.rs"
    });
    assert!(
        bad.is_empty(),
        "printing outside the CLI (use tracing):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // A check that finds nothing anywhere would pass vacuously.
    assert!(!offenders(&[concat!("sled", "::")], |_| false).is_empty());
    assert!(
        wire_literals(&["rpc/convert/audit.rs"])
            .iter()
            .any(|l| l.contains("AuditExportResponse"))
    );
    assert!(!offenders(&[concat!("crate::", "audit")], |_| false).is_empty());
    assert!(!offenders(&[concat!("println", "!(")], |_| false).is_empty());
    assert!(!offenders(&[concat!("SystemTime", "::now")], |_| false).is_empty());
    assert!(
        principal_literals(|_| false)
            .iter()
            .any(|l| l.starts_with("broker/src/pki/verifier.rs"))
    );
}
