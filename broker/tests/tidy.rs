//! Tidy checks over the workspace sources: every Rust module starts with a
//! `//!` doc comment, and no placeholder macro (`todo`, `unimplemented`) is left in
//! shipped code.

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
