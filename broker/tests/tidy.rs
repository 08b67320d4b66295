//! Tidy checks over the workspace sources: every Rust module starts with a
//! `//!` doc comment, and no placeholder macro (`todo`, `unimplemented`) is left in
//! shipped code; and the architecture invariants `ARCHITECTURE.md` states about
//! `broker/src` (who names sled, who builds a `Principal`, who reads the system
//! time, who prints, which way the layers point, who dials other nodes), and
//! that every closed vocabulary and the vocabulary macro are defined once in
//! the workspace (in `allmende-vocab`). A broken rule fails with the file and
//! line.

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
    let files = workspace_files();
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        if !first.starts_with("//!") {
            bad.push(format!("{}: does not start with `//!`", f.display()));
        }
        bad.extend(issue_references(&text).map(|line| {
            format!(
                "{}:{line}: a comment names an issue number; say what it refers to",
                f.display()
            )
        }));
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

/// Lines (1-based) whose comment names an issue by its number (a hash
/// and digits, or the word and digits): the numbers mean nothing to a
/// reader of the code.
fn issue_references(text: &str) -> impl Iterator<Item = usize> + '_ {
    text.lines().enumerate().filter_map(|(i, line)| {
        let comment = &line[line.find("//")?..];
        let lower = comment.to_lowercase();
        let by_hash = lower.match_indices('#').any(|(at, _)| {
            lower[at + 1..].starts_with(|c: char| c.is_ascii_digit())
                && !lower[..at].ends_with("pkcs")
        });
        let by_word = lower
            .match_indices("issue ")
            .any(|(at, _)| lower[at + 6..].starts_with(|c: char| c.is_ascii_digit()));
        (by_hash || by_word).then_some(i + 1)
    })
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
        f.starts_with("cli/") || f.starts_with("demo/") || f == "main.rs"
    });
    assert!(
        bad.is_empty(),
        "printing outside the CLI (use tracing):\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_server_assembly_reaches_into_rpc() {
    // Layers point one way: `rpc` (the gRPC server) uses the domain modules
    // and `federation`, never the reverse; `node` assembles the server.
    let bad = offenders(&[concat!("crate::", "rpc")], |f| {
        f.starts_with("rpc/") || f == "node/server.rs"
    });
    assert!(
        bad.is_empty(),
        "`crate::rpc` used outside `rpc/` and `node`:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_federation_layer_dials_other_nodes() {
    // One peer TLS client: a rustls client configuration, a TLS connector or
    // a hand-made connection under a tonic channel only in `federation/`
    // (the CLI's user-side channel in `tls` is tonic's own TLS, checked by
    // name against the root). The demo's HTTPS GET is no node: it is the
    // anonymous citizen of story 5, without a client certificate, talking
    // to the open-data listener.
    let bad = offenders(
        &[
            concat!("rustls::", "ClientConfig"),
            concat!("TlsConn", "ector"),
            concat!("connect_with", "_connector"),
        ],
        |f| f.starts_with("federation/") || f == "demo/https.rs",
    );
    assert!(
        bad.is_empty(),
        "node-to-node TLS client outside `federation/`:\n{}",
        bad.join("\n")
    );
    let demo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/demo/https.rs"))
            .unwrap_or_default();
    assert!(
        demo.contains(".with_no_client_auth()")
            && !demo.contains(concat!("with_client_", "auth_cert")),
        "the demo's HTTPS client presents no certificate"
    );
    // Generated gRPC clients: the node calls out only from `federation/`;
    // the user side (CLI, demo, sandbox) calls as a person.
    let bad: Vec<String> = grpc_clients(|f| {
        f.starts_with("federation/")
            || f.starts_with("cli/")
            || f == "client.rs"
            || f.starts_with("demo/")
            || f == "sandbox.rs"
    });
    assert!(
        bad.is_empty(),
        "a gRPC client outside `federation/` and the user side:\n{}",
        bad.join("\n")
    );
}

/// Lines naming a generated gRPC client module (`<service>_client::`) in
/// files `allowed` does not accept.
fn grpc_clients(allowed: impl Fn(&str) -> bool) -> Vec<String> {
    offenders(&[concat!("_client", "::")], allowed)
        .into_iter()
        .filter(|l| !l.contains("prometheus_client"))
        .collect()
}

#[test]
fn the_peer_list_is_defined_once() {
    let bad = offenders(&[concat!("PeerConfig", ">>")], |f| {
        f == "federation/peers.rs"
    });
    assert!(
        bad.is_empty(),
        "a peer list outside `federation::peers::SharedPeers`:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    assert!(!offenders(&[concat!("ton", "ic")], |_| false).is_empty());
    assert!(
        wire_literals(&["rpc/status.rs"])
            .iter()
            .any(|l| l.contains(concat!("Status", "::")))
    );
    assert_eq!(
        // Spelled in parts so that this file does not match itself.
        issue_references(concat!(
            "a\n// built by #",
            "5\n/// see issue ",
            "12\n// PKCS#8 key\n"
        ))
        .collect::<Vec<_>>(),
        vec![2, 3]
    );
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
    assert!(!offenders(&[concat!("crate::", "rpc")], |_| false).is_empty());
    assert!(!offenders(&[concat!("TlsConn", "ector")], |_| false).is_empty());
    assert!(
        grpc_clients(|_| false)
            .iter()
            .any(|l| l.starts_with("broker/src/federation/"))
    );
    assert!(!offenders(&[concat!("PeerConfig", ">>")], |_| false).is_empty());
    // Every domain entry names a file or directory that exists.
    let sources = broker_sources();
    for d in DOMAIN {
        assert!(
            sources
                .iter()
                .any(|(f, _)| in_domain(f) && f.starts_with(d)),
            "`{d}` matches no file in broker/src"
        );
    }
    assert!(
        principal_literals(|_| false)
            .iter()
            .any(|l| l.starts_with("broker/src/pki/verifier.rs"))
    );
}

/// Every `.rs` file of the workspace's crates (sources, tests, benches),
/// sorted.
fn workspace_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in [
        "proto",
        "broker",
        "connectors",
        "policies",
        "audit",
        "vocab",
        "tests",
    ] {
        for sub in ["src", "tests", "benches"] {
            rust_files(&root.join(krate).join(sub), &mut files);
        }
    }
    files.sort();
    files
}

/// Every `.rs` file of the workspace's crates (sources, tests, benches) but
/// this one, relative to the workspace root, with its whole text (a test
/// module defining a vocabulary of its own is a second definition too).
fn workspace_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    workspace_files()
        .into_iter()
        .filter(|f| !f.ends_with("broker/tests/tidy.rs"))
        .map(|f| {
            let rel = f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

const VOCAB_FILE: &str = "vocab/src/lib.rs";
// Spelled in parts so that this file does not match itself.
const VOCAB_MACRO: &str = concat!("vocabulary", "! {");
const MACRO_RULES: &str = concat!("macro", "_rules! ");

/// The vocabulary a `vocabulary! {` invocation starting at `lines[0]`
/// defines: the identifier before the first comma on its first line that is
/// not a doc comment or attribute (`None` for the macro's own recursion,
/// whose first line is a `$` fragment).
fn invoked_name(lines: &[&str]) -> Option<String> {
    let head = lines[1..].iter().find(|l| {
        let t = l.trim();
        !(t.starts_with("//") || t.starts_with("#[") || t.is_empty())
    })?;
    let (name, _) = head.trim().split_once(',')?;
    let name = name.trim();
    name.chars()
        .all(|c| c.is_alphanumeric() || c == '_')
        .then(|| name.to_owned())
}

/// True if `code` contains `keyword name` with `name` ending there (not a
/// prefix of a longer identifier).
fn declares(code: &str, keyword: &str, name: &str) -> bool {
    let needle = format!("{keyword} {name}");
    code.match_indices(&needle).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Every place that defines vocabulary `name`: an `enum`, `struct` or type
/// alias of that name anywhere, or its `vocabulary!` invocation; as
/// `file:line: text`.
fn vocabulary_definitions(
    name: &str,
    sources: &[(String, String)],
    invocations: &[(String, usize, String)],
) -> Vec<String> {
    let mut out: Vec<String> = invocations
        .iter()
        .filter(|(_, _, n)| n == name)
        .map(|(f, l, n)| format!("{f}:{l}: vocabulary `{n}`"))
        .collect();
    for (rel, text) in sources {
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if ["enum", "struct", "type"]
                .iter()
                .any(|k| declares(code, k, name))
            {
                out.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

/// Every `vocabulary!` invocation in the workspace: file, line, name.
fn vocabulary_invocations(sources: &[(String, String)]) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    for (rel, text) in sources {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() == VOCAB_MACRO
                && let Some(name) = invoked_name(&lines[i..])
            {
                out.push((rel.clone(), i + 1, name));
            }
        }
    }
    out
}

/// Every `macro_rules!` that generates a closed vocabulary (its body
/// implements `FromStr` for the type it defines), as `file:line: text`.
fn vocabulary_macros(sources: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in sources {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !code.contains(MACRO_RULES) {
                continue;
            }
            // The macro's body: up to the brace that closes the first one.
            let mut depth = 0i64;
            let mut opened = false;
            let mut body = String::new();
            for l in &lines[i..] {
                body.push_str(l);
                body.push('\n');
                for c in l.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if opened && depth <= 0 {
                    break;
                }
            }
            if body.contains(concat!("FromStr", " for $")) {
                out.push(format!("{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

#[test]
fn each_closed_vocabulary_and_its_macro_are_defined_once() {
    let sources = workspace_sources();
    let invocations = vocabulary_invocations(&sources);
    let names: Vec<String> = invocations
        .iter()
        .filter(|(f, _, _)| f == VOCAB_FILE)
        .map(|(_, _, n)| n.clone())
        .collect();
    // The check must see the vocabularies it is about.
    for expected in [
        "OrgKind",
        "Role",
        "Purpose",
        "Classification",
        "LegalBasis",
        "ConsentStatus",
        "Theme",
        "AccessRights",
        "Frequency",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "`{expected}` is not defined by `vocabulary!` in {VOCAB_FILE} (found: {names:?})"
        );
    }
    let mut bad = Vec::new();
    for name in &names {
        let defs = vocabulary_definitions(name, &sources, &invocations);
        if defs.len() != 1 || !defs[0].starts_with(VOCAB_FILE) {
            bad.push(format!(
                "`{name}` must be defined once, in {VOCAB_FILE}; defined at:\n  {}",
                defs.join("\n  ")
            ));
        }
    }
    let macros = vocabulary_macros(&sources);
    if macros.len() != 1 || !macros[0].starts_with(VOCAB_FILE) {
        bad.push(format!(
            "the vocabulary macro must be defined once, in {VOCAB_FILE}; defined at:\n  {}",
            macros.join("\n  ")
        ));
    }
    assert!(
        bad.is_empty(),
        "closed vocabularies are defined in `allmende-vocab` only (use or re-export them):\n{}",
        bad.join("\n")
    );
}

// Domain errors and the wire layer (the domain-errors part of the
// architecture issue).

/// The domain modules (by module name: `m.rs` or `m/`, or one file of a
/// module: the open-data publisher, ledger and release directory, whose
/// sibling `opendata/http` is a wire layer of its own), `error` (which
/// classifies their errors into `ApiError`) and `ctx`: they name no wire
/// type; `rpc/` maps their types and errors to the wire.
const DOMAIN: &[&str] = &[
    "error",
    "locks",
    "audit",
    "catalog",
    "consent",
    "registry",
    "policy",
    "access",
    "denials",
    "directory",
    "pki",
    "store",
    "config",
    "ctx",
    "grants",
    "invitations",
    "mls",
    "opendata/publish",
    "opendata/ledger",
    "opendata/releases",
];

fn in_domain(f: &str) -> bool {
    DOMAIN
        .iter()
        .any(|m| f == format!("{m}.rs") || f.starts_with(&format!("{m}/")))
}

#[test]
fn error_and_the_domain_modules_name_no_wire_type() {
    let bad = offenders(
        &[
            concat!("ton", "ic"),
            concat!("allmende", "_proto"),
            concat!("crate::", "rpc"),
            concat!("pb", "::"),
        ],
        |f| !in_domain(f),
    );
    assert!(
        bad.is_empty(),
        "a wire type in `error` or a domain module (classify in `error.rs`, map to a status in `rpc/status.rs`):\n{}",
        bad.join("\n")
    );
}

/// Where `ApiError` may be named in shipped code: `error.rs` (it defines
/// it and classifies the domain errors into it), the wire layer (`rpc/`),
/// and the two helpers the handlers call with it: `policy` (`authorize`,
/// `decide_audited` answered as an `ApiError`) and `ctx`.
fn may_name_api_error(f: &str) -> bool {
    f == "error.rs" || f.starts_with("rpc/") || f == "policy.rs" || f == "ctx.rs"
}

#[test]
fn the_domain_modules_return_their_own_errors() {
    let bad = offenders(&[concat!("Api", "Error")], may_name_api_error);
    assert!(
        bad.is_empty(),
        "an `ApiError` outside `error.rs` and the wire layer (return the module's own error enum, with sources, and classify it in `error.rs` with `impl From<…> for ApiError`):\n{}",
        bad.join("\n")
    );
}

/// The rpc handlers: every file of `rpc/` but the conversions
/// (`rpc/convert/`) and the status mapping (`rpc/status.rs`). They build
/// their protobuf messages in `rpc/convert/<area>.rs` and statuses only
/// from an `ApiError`.
fn thin_handlers() -> Vec<String> {
    broker_sources()
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| f.starts_with("rpc/") && !f.starts_with("rpc/convert/") && f != "rpc/status.rs")
        .collect()
}

/// Lines of `files` that build a protobuf struct (`pb::Name {` outside a
/// signature or an `impl` header) or a `tonic::Status` other than from an
/// `ApiError` (`Status::new`, `Status::with_details`, `Status::not_found(`,
/// …; `Status::from(` is the allowed way).
fn wire_literals(files: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in broker_sources() {
        if !files.contains(&rel.as_str()) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let literal = code.match_indices(concat!("pb", "::")).any(|(at, _)| {
                let rest = &code[at + 4..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let last = name.rsplit("::").next().unwrap_or("");
                last.starts_with(|c: char| c.is_ascii_uppercase())
                    && rest[name.len()..].starts_with(" {")
                    && !code.contains("->")
                    && !code.trim_start().starts_with("impl")
            });
            let status = code.match_indices(concat!("Status", "::")).any(|(at, _)| {
                let rest = &code[at + 8..];
                let call: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                rest[call.len()..].starts_with('(')
                    && call.starts_with(|c: char| c.is_ascii_lowercase())
                    && call != "from"
            });
            if literal || status {
                out.push(format!("broker/src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

#[test]
fn thin_handlers_build_messages_in_convert_and_statuses_from_api_error() {
    let handlers = thin_handlers();
    assert!(
        handlers.iter().any(|f| f == "rpc/access.rs"),
        "{handlers:?}"
    );
    let handlers: Vec<&str> = handlers.iter().map(String::as_str).collect();
    let bad = wire_literals(&handlers);
    assert!(
        bad.is_empty(),
        "a protobuf literal or a hand-built status in a handler (build it in `rpc/convert/<area>.rs`; a status only as `Status::from(ApiError)`, mapped in `rpc/status.rs`):\n{}",
        bad.join("\n")
    );
}

/// Lines that take a `std::sync` lock directly or handle a poisoned one
/// (`.lock()`, `.read()`, `.write()` not awaited, `PoisonError`,
/// `into_inner` on a lock result) outside `locks.rs`.
fn direct_locks(allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for (rel, text) in broker_sources() {
        if allowed(&rel) {
            continue;
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let next = lines.get(i + 1).map_or("", |l| l.trim_start());
            let direct = [
                concat!(".lo", "ck()"),
                concat!(".re", "ad()"),
                concat!(".wr", "ite()"),
            ]
            .iter()
            .any(|n| {
                code.match_indices(n).any(|(at, _)| {
                    let after = &code[at + n.len()..];
                    // tokio's locks are awaited, never poisoned.
                    !(after.starts_with(".await")
                        || (after.trim().is_empty() && next.starts_with(".await")))
                })
            });
            if direct || code.contains(concat!("Poison", "Error")) {
                out.push(format!("broker/src/{rel}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

#[test]
fn locks_are_taken_one_way_and_a_poisoned_one_is_never_used() {
    let bad = direct_locks(|f| f == "locks.rs");
    assert!(
        bad.is_empty(),
        "a lock taken outside `crate::locks` (use `locks::lock`/`read`/`write`; a poisoned lock is refused, never recovered):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_domain_checks_see_what_they_look_for() {
    assert!(
        offenders(&[concat!("ton", "ic")], in_domain)
            .iter()
            .any(|l| l.starts_with("broker/src/rpc/status.rs"))
    );
    assert!(
        wire_literals(&["rpc/convert/consent.rs", "rpc/status.rs"]).len() >= 2,
        "the literal check finds the conversions and the status mapping"
    );
    assert!(
        offenders(&[concat!("Api", "Error")], |f| f != "error.rs")
            .iter()
            .any(|l| l.starts_with("broker/src/error.rs"))
    );
    assert!(
        direct_locks(|f| f != "locks.rs")
            .iter()
            .any(|l| l.starts_with("broker/src/locks.rs"))
    );
}

/// The wire layers: the gRPC server (`rpc/`, assembled in `node/server.rs`),
/// node-to-node clients (`federation/`), the transport (`tls`), and the
/// user side (`client`, `cli/`, `demo/`, `sandbox`).
fn in_wire_layer(f: &str) -> bool {
    ["rpc/", "federation/", "cli/", "demo/"]
        .iter()
        .any(|d| f.starts_with(d))
        || ["tls.rs", "node/server.rs", "client.rs", "sandbox.rs"].contains(&f)
}

#[test]
fn only_the_wire_layers_name_tonic_or_protobuf_types() {
    let bad = offenders(&[concat!("ton", "ic")], in_wire_layer);
    assert!(
        bad.is_empty(),
        "tonic named outside the wire layers (`rpc/`, `federation/`, `tls`, `node/server`, `client`, `cli/`, `demo/`, `sandbox`):\n{}",
        bad.join("\n")
    );
    // Protobuf types: the same layers but `tls` and `client`, which move
    // bytes and certificates, not messages.
    let bad = offenders(&[concat!("allmende", "_proto"), concat!("pb", "::")], |f| {
        in_wire_layer(f) && f != "tls.rs" && f != "client.rs"
    });
    assert!(
        bad.is_empty(),
        "a protobuf type named outside the wire layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_the_status_mapping_builds_a_status() {
    // A `tonic::Status` is built in one place, `rpc/status.rs`, from an
    // `ApiError`; everywhere else a status is `Status::from(ApiError)` or
    // one received from a peer.
    let all: Vec<String> = broker_sources()
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| f != "rpc/status.rs")
        .collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let bad: Vec<String> = wire_literals(&all)
        .into_iter()
        .filter(|l| l.contains(concat!("Status", "::")))
        .collect();
    assert!(
        bad.is_empty(),
        "a `tonic::Status` built outside `rpc/status.rs` (return an `ApiError`):\n{}",
        bad.join("\n")
    );
}

#[test]
fn user_text_is_shortened_one_way() {
    // `text::shown` is the one way user-supplied text is shortened for a
    // message, a log field or an audit label; the CLI's own column widths
    // are display, not echo.
    let bad = offenders(&[concat!(".chars()", ".take(")], |f| {
        f == "text.rs" || f.starts_with("cli/")
    });
    assert!(
        bad.is_empty(),
        "text shortened by hand (use `crate::text::shown`):\n{}",
        bad.join("\n")
    );
}

// Open data: every aggregate that leaves a node comes from a release spec.

#[test]
fn only_the_publisher_runs_the_release_engine() {
    // The engine (`allmende-opendata`'s `Releaser`) is driven by
    // `opendata/publish.rs` alone, after the decision, the spec check and
    // the ε debit; no other path computes aggregates over a dataset's rows.
    let needles = [
        concat!("Relea", "ser"),
        concat!("allmende_open", "data::engine"),
    ];
    assert!(!offenders(&needles, |_| false).is_empty());
    let bad = offenders(&needles, |f| f == "opendata/publish.rs");
    assert!(
        bad.is_empty(),
        "the release engine used outside the publisher (aggregates leave only through a release spec):\n{}",
        bad.join("\n")
    );
}
