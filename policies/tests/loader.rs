//! Loader tests: the bundled set equals the directory, and every kind of bad
//! policy set is refused with file, line and message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use allmende_policies::{
    IssueKind, LoadError, LoadIssue, POLICY_SUBDIR, PolicySource, SCHEMA_FILE, load_dir,
};
use common::crate_dir;

/// Writes the bundled set into `dir`, with `edit` applied to the file texts
/// (keyed by their relative name).
fn write_set(dir: &Path, edit: impl Fn(&str, String) -> String) {
    let src = PolicySource::bundled();
    std::fs::create_dir_all(dir.join(POLICY_SUBDIR)).unwrap();
    for f in std::iter::once(&src.schema).chain(&src.policies) {
        std::fs::write(dir.join(&f.name), edit(&f.name, f.text.clone())).unwrap();
    }
}

fn line_count(text: &str) -> usize {
    text.lines().count()
}

fn issues_of(err: &LoadError) -> Vec<LoadIssue> {
    let issues = err.issues().to_vec();
    assert!(!issues.is_empty(), "expected located issues, got {err}");
    issues
}

const GOOD_POLICY: &str = r#"
@id("extra")
@title("Extra")
@reason_de("Zusatz")
@reason_en("Extra")
permit (principal, action == Allmende::Action::"read", resource)
when { resource.public_space_origin };
"#;

#[test]
fn bundled_set_equals_the_directory() {
    let bundled = PolicySource::bundled();
    let from_dir = PolicySource::from_dir(&crate_dir()).unwrap();
    let names = |s: &PolicySource| {
        s.policies
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&bundled),
        names(&from_dir),
        "update BUNDLED_POLICIES in loader.rs"
    );
    for (a, b) in bundled.policies.iter().zip(&from_dir.policies) {
        assert_eq!(a.text, b.text, "{}", a.name);
    }
    assert_eq!(bundled.schema.text, from_dir.schema.text);
    assert_eq!(bundled.hash(), from_dir.hash());
    let loaded = load_dir(&crate_dir()).unwrap();
    assert_eq!(loaded.hash(), bundled.hash());
    assert_eq!(loaded.hash().len(), 64);
    assert!(loaded.policies().len() >= 40);
    // Every policy carries its texts and a location.
    for p in loaded.policies() {
        assert!(!p.title.is_empty() && !p.reason_de.is_empty() && !p.reason_en.is_empty());
        assert!(p.file.ends_with(".cedar") && p.line > 0, "{p:?}");
    }
}

#[test]
fn hash_changes_with_any_byte_and_ignores_location() {
    let a = PolicySource::bundled();
    let mut b = a.clone();
    b.policies[0].text.push(' ');
    assert_ne!(a.hash(), b.hash());
    let mut c = a.clone();
    c.schema.origin = "/elsewhere/schema.cedarschema".to_owned();
    assert_eq!(a.hash(), c.hash());
}

#[test]
fn syntax_error_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut broken_line = 0;
    let original = PolicySource::bundled();
    let consent = original
        .policies
        .iter()
        .find(|f| f.name.ends_with("consent.cedar"))
        .unwrap();
    broken_line = broken_line.max(line_count(&consent.text) + 3);
    write_set(dir.path(), |name, text| {
        if name.ends_with("consent.cedar") {
            // line_count+1: blank, +2: @id, +3: the broken permit
            format!(
                "{text}\n@id(\"broken\")\npermit (principal, action, resource) when {{ principal. }};\n"
            )
        } else {
            text
        }
    });
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    let issue = &issues[0];
    assert_eq!(issue.kind, IssueKind::Syntax);
    assert!(issue.file.ends_with("consent.cedar"), "{issue}");
    assert_eq!(issue.line, Some(broken_line), "{issue}");
    assert!(issue.column.is_some());
    let rendered = err.to_string();
    assert!(
        rendered.contains(&format!("consent.cedar:{broken_line}:")),
        "{rendered}"
    );
}

#[test]
fn schema_violation_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected_line = 0;
    for f in &PolicySource::bundled().policies {
        if f.name.ends_with("obligations.cedar") {
            expected_line = line_count(&f.text) + 7;
        }
    }
    write_set(dir.path(), |name, text| {
        if name.ends_with("obligations.cedar") {
            format!(
                "{text}\n@id(\"typo\")\n@title(\"t\")\n@reason_de(\"d\")\n@reason_en(\"e\")\npermit (principal, action == Allmende::Action::\"read\", resource)\nwhen {{ resource.contains_personal_dta }};\n"
            )
        } else {
            text
        }
    });
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    assert!(
        issues.iter().all(|i| i.kind == IssueKind::Validation),
        "{err}"
    );
    let issue = &issues[0];
    assert!(issue.file.ends_with("obligations.cedar"), "{issue}");
    assert_eq!(issue.line, Some(expected_line), "{issue}");
    assert!(issue.message.contains("contains_personal_dta"), "{issue}");
    assert!(issue.message.contains("`typo`"), "{issue}");
}

#[test]
fn purpose_spelling_variant_in_a_policy_fails_validation() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |name, text| {
        if name.ends_with("purpose-binding.cedar") {
            format!(
                "{text}\n@id(\"variant\")\n@title(\"t\")\n@reason_de(\"d\")\n@reason_en(\"e\")\npermit (principal, action == Allmende::Action::\"read\", resource)\nwhen {{ context has purpose && context.purpose == Allmende::Purpose::\"academicResearch\" }};\n"
            )
        } else {
            text
        }
    });
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    assert!(
        issues
            .iter()
            .any(|i| i.kind == IssueKind::Validation && i.message.contains("academicResearch")),
        "{err}"
    );
}

#[test]
fn duplicate_id_is_refused_with_both_locations() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |_, text| text);
    let dup = GOOD_POLICY.replace("\"extra\"", "\"grant-expired\"");
    std::fs::write(dir.path().join("policies/zz-extra.cedar"), dup).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    assert_eq!(issues.len(), 1, "{err}");
    assert_eq!(issues[0].kind, IssueKind::DuplicateId);
    assert!(issues[0].file.ends_with("zz-extra.cedar"));
    assert_eq!(issues[0].line, Some(2));
    assert!(
        issues[0].message.contains("research-access.cedar:"),
        "{}",
        issues[0]
    );
}

#[test]
fn missing_id_and_annotations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |_, text| text);
    let no_id = GOOD_POLICY.replace("@id(\"extra\")\n", "");
    let no_reason = GOOD_POLICY
        .replace("\"extra\"", "\"extra-two\"")
        .replace("@reason_en(\"Extra\")\n", "");
    let empty_title = GOOD_POLICY
        .replace("\"extra\"", "\"extra-three\"")
        .replace("@title(\"Extra\")", "@title(\"  \")");
    std::fs::write(
        dir.path().join("policies/zz-extra.cedar"),
        format!("{no_id}{no_reason}{empty_title}"),
    )
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    let kinds: Vec<(IssueKind, Option<usize>)> = issues.iter().map(|i| (i.kind, i.line)).collect();
    let lines_per_policy = line_count(GOOD_POLICY);
    assert_eq!(
        kinds,
        vec![
            (IssueKind::MissingId, Some(2)),
            (IssueKind::MissingAnnotation, Some(lines_per_policy - 1 + 2)),
            (
                IssueKind::MissingAnnotation,
                Some(2 * lines_per_policy - 2 + 2)
            ),
        ],
        "{err}"
    );
    assert!(issues[1].message.contains("@reason_en"));
    assert!(issues[2].message.contains("@title"));
}

#[test]
fn reserved_and_malformed_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |_, text| text);
    let reserved = GOOD_POLICY.replace("\"extra\"", "\"default-deny\"");
    let malformed = GOOD_POLICY.replace("\"extra\"", "\"Extra Policy\"");
    std::fs::write(
        dir.path().join("policies/zz-extra.cedar"),
        format!("{reserved}{malformed}"),
    )
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    assert_eq!(issues.len(), 2, "{err}");
    assert!(issues.iter().all(|i| i.kind == IssueKind::InvalidId));
    assert!(issues[0].message.contains("reserved"));
}

#[test]
fn templates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |_, text| text);
    let template = GOOD_POLICY.replace("permit (principal,", "permit (principal == ?principal,");
    std::fs::write(dir.path().join("policies/zz-extra.cedar"), template).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    assert_eq!(issues[0].kind, IssueKind::Template, "{err}");
    assert_eq!(issues[0].line, Some(2));
}

#[test]
fn schema_errors_are_located() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |name, text| {
        if name == SCHEMA_FILE {
            text.replacen("entity Public;", "entity Public = {", 1)
        } else {
            text
        }
    });
    let err = load_dir(dir.path()).unwrap_err();
    let issues = issues_of(&err);
    assert_eq!(issues[0].kind, IssueKind::Schema, "{err}");
    assert!(issues[0].file.ends_with(SCHEMA_FILE));
    assert!(issues[0].line.is_some(), "{err}");
}

#[test]
fn schema_without_an_engine_action_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |name, text| {
        if name == SCHEMA_FILE {
            text.replace("action manage_federation appliesTo {\n    principal: [User, Node],\n    resource: [Federation],\n    context: RequestContext,\n  };", "")
        } else if name.ends_with("governance.cedar") {
            let start = text.find("@id(\"federation-managed-by-root\")").unwrap();
            text[..start].to_owned()
        } else {
            text
        }
    });
    let err = load_dir(dir.path()).unwrap_err();
    assert!(
        err.issues()
            .iter()
            .any(|i| i.kind == IssueKind::Schema && i.message.contains("`manage_federation`")),
        "{err}"
    );
}

#[test]
fn unreadable_or_empty_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
    assert!(err.to_string().starts_with("cannot read `"), "{err}");

    write_set(dir.path(), |_, text| text);
    for f in std::fs::read_dir(dir.path().join(POLICY_SUBDIR)).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let err = load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, LoadError::NoPolicyFiles { .. }), "{err}");
}

#[test]
fn files_load_in_a_deterministic_order() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), |_, text| text);
    std::fs::write(dir.path().join("policies/zz-extra.cedar"), GOOD_POLICY).unwrap();
    std::fs::write(dir.path().join("policies/notes.txt"), "not a policy").unwrap();
    let a = PolicySource::from_dir(dir.path()).unwrap();
    let names: Vec<&str> = a.policies.iter().map(|f| f.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert!(names.contains(&"policies/zz-extra.cedar"));
    assert!(!names.iter().any(|n| n.ends_with(".txt")));
    let bundle = load_dir(dir.path()).unwrap();
    assert!(bundle.policy("extra").is_some());
    assert_ne!(bundle.hash(), PolicySource::bundled().hash());
}
