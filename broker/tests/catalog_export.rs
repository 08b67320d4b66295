//! `allmende catalog export` with the real binary against the demo
//! federation: the whole federated catalog written to a file as DCAT-AP.de
//! Turtle and JSON-LD, and a bad `--format` refused as a usage error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

mod common;

use common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_bad_format_is_a_usage_error() {
    let out = run(&["catalog", "export", "--format", "rdfxml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("`rdfxml`") || e.contains("'rdfxml'"), "{e}");
    assert!(e.contains("jsonld") && e.contains("turtle"), "{e}");
}

#[test]
fn catalog_export_writes_the_federated_catalog_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _) = spawn_demo_in(dir.path());
    let profile = dir
        .path()
        .join("allmende-demo/tum/users/alice.profile.toml");
    let profile = profile.to_str().unwrap();
    let ttl = dir.path().join("catalog.ttl");
    // tum-1 holds no dataset of its own: everything it exports is a
    // verified replica, which arrives shortly after the demo started.
    let mut summary = String::new();
    for _ in 0..100 {
        let out = run(&[
            "catalog",
            "export",
            "--format",
            "turtle",
            "--output",
            ttl.to_str().unwrap(),
            "--profile",
            profile,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        summary = String::from_utf8_lossy(&out.stdout).into_owned();
        if summary.starts_with("wrote 6 datasets") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        summary.starts_with("wrote 6 datasets (text/turtle, "),
        "{summary}"
    );
    let doc = std::fs::read_to_string(&ttl).unwrap();
    assert!(doc.contains("a dcat:Catalog ;"), "{doc}");
    for ds in [
        "swm/dataset/smart-meter-readings",
        "stadt/dataset/air-quality",
        "stadt/dataset/traffic-counts",
        "scooter-co/dataset/scooter-trips",
        "swm/dataset/lorawan-environment",
        "stadt/dataset/mds-scooter-trips",
    ] {
        assert!(
            doc.contains(&format!("dcat:dataset <allmende://munich/{ds}>"))
                || doc.contains(&format!(", <allmende://munich/{ds}>")),
            "{ds} not listed in the catalog:\n{doc}"
        );
    }

    // JSON-LD to standard output, with its context inline.
    let out = run(&[
        "catalog",
        "export",
        "--format",
        "jsonld",
        "--profile",
        profile,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["@context"]["dct"], "http://purl.org/dc/terms/");
    assert!(j["@graph"].as_array().unwrap().len() > 10, "{j}");

    // A file that cannot be written is an input error naming the file.
    let out = run(&[
        "catalog",
        "export",
        "--output",
        dir.path().join("missing/catalog.ttl").to_str().unwrap(),
        "--profile",
        profile,
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing/catalog.ttl"),
        "{}",
        stderr(&out)
    );

    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child, 30).code(), Some(0));
}
