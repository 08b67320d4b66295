//! Proofs of the properties (`policies/properties/*.cedar`) with Cedar's
//! symbolic compiler and cvc5: the bundled policy set satisfies every
//! property, and sets that break one yield a counterexample naming the
//! policy that allowed it. Needs `cvc5` (scripts/test.sh installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use allmende_policies::{
    Outcome, PolicyBundle, PolicySource, ProofReport, PropertySet, bundled_property_files,
    load_bundled, prove_blocking,
};

fn failure<'a>(report: &'a ProofReport, id: &str) -> &'a Outcome {
    let r = report
        .results
        .iter()
        .find(|r| r.id == id)
        .unwrap_or_else(|| panic!("no property `{id}`"));
    &r.outcome
}

fn allowed_by(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Counterexample(c) => {
            assert!(c.engine_allows, "{c:?}");
            c.allowed_by.iter().map(|p| p.id.clone()).collect()
        }
        other => panic!("expected a counterexample, got {other:?}"),
    }
}

#[test]
fn bundled_policies_satisfy_every_property() {
    let bundle = load_bundled().unwrap();
    let properties = PropertySet::bundled().unwrap();
    let report = prove_blocking(&bundle, &properties).unwrap();
    println!("{report}");
    assert!(report.holds(), "{report}");
    assert!(report.results.len() >= 22, "{}", report.results.len());
    for r in &report.results {
        assert!(r.environments > 0, "{} was checked in no environment", r.id);
    }
    // The overflowing subtraction of the open-ended-grant rule is modelled.
    assert_eq!(report.error_guards, ["nonuse-open-ended-personal-grant"]);
}

/// Today's (before this change) owner rule let every member of the owning
/// organisation read its personal data, citizens included: the proof finds
/// that hole and names the rule.
#[test]
fn the_old_owner_rule_lets_citizens_read_and_the_proof_names_it() {
    let mut source = PolicySource::bundled();
    let file = source
        .policies
        .iter_mut()
        .find(|f| f.name == "policies/research-access.cedar")
        .unwrap();
    file.text = include_str!("fixtures/research-access-before-roles.cedar").to_owned();
    let bundle = PolicyBundle::load(&source).unwrap();
    let properties = PropertySet::bundled().unwrap().only(&[
        "never-citizen-reads-personal-rows",
        "owner-raw-personal-data-by-role",
    ]);
    let report = prove_blocking(&bundle, &properties).unwrap();
    println!("{report}");
    assert!(!report.holds());
    for id in [
        "never-citizen-reads-personal-rows",
        "owner-raw-personal-data-by-role",
    ] {
        let outcome = failure(&report, id);
        assert_eq!(allowed_by(outcome), ["owner-uses-own-data"], "{id}");
        let Outcome::Counterexample(c) = outcome else {
            unreachable!()
        };
        assert!(
            ["read", "subscribe", "export"]
                .iter()
                .any(|a| c.action == format!("Allmende::Action::\"{a}\"")),
            "{c:?}"
        );
        if id == "never-citizen-reads-personal-rows" {
            assert!(c.principal.starts_with("Allmende::User::"), "{c:?}");
            assert!(
                c.entities.iter().any(|e| e.starts_with("Allmende::User::")
                    && e.contains("Allmende::Role::\"citizen\"")),
                "{c:?}"
            );
        }
    }
    let text = report.to_string();
    assert!(
        text.contains("FAILED   never-citizen-reads-personal-rows"),
        "{text}"
    );
    assert!(text.contains("owner-uses-own-data (permit)"), "{text}");
    assert!(text.contains("citizen"), "{text}");
}

/// Each thesis depends on the forbid that implements it: without that
/// forbid, the proof finds a request some permit allows.
#[test]
fn removing_the_rule_behind_a_property_yields_a_counterexample() {
    let full = load_bundled().unwrap();
    let cases = [
        (
            "nonuse-insurance-risk-scoring",
            "never-insurance-or-scoring-on-personal-data",
        ),
        (
            "nonuse-no-raw-personal-to-companies",
            "never-personal-data-to-other-companies",
        ),
        ("consent-basis-missing", "never-consent-data-beyond-consent"),
        (
            "nonuse-open-ended-personal-grant",
            "never-open-ended-grant-on-personal-data",
        ),
        (
            "citizens-no-raw-personal-data",
            "never-citizen-reads-personal-rows",
        ),
        ("grant-expired", "grant-never-used-outside-its-period"),
        (
            "grant-not-active",
            "grant-never-used-when-revoked-or-suspended",
        ),
        (
            "purpose-grant-mismatch",
            "grant-never-used-for-another-purpose",
        ),
        ("grant-other-dataset", "grant-never-used-on-another-dataset"),
        (
            "grant-other-grantee",
            "grant-never-used-by-another-organisation",
        ),
    ];
    let properties = PropertySet::bundled().unwrap();
    let mut missed = Vec::new();
    for (rule, property) in cases {
        let bundle = full.without_policies(&[rule]).unwrap();
        let report = prove_blocking(&bundle, &properties.only(&[property])).unwrap();
        match failure(&report, property) {
            Outcome::Counterexample(c) if c.engine_allows && !c.allowed_by.is_empty() => {}
            other => missed.push(format!("without {rule}: {property}: {other:?}")),
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

/// The role rules hold because the permits are narrow and the forbids back
/// them up: with the forbid removed and a careless permit for the action
/// added, the proof finds a request the careless permit allows.
#[test]
fn a_careless_permit_breaks_the_role_properties() {
    let cases = [
        (
            "approve_request",
            "approval-personal-requires-dpo",
            "approval-personal-only-by-dpo",
        ),
        (
            "approve_request",
            "approval-no-self-approval",
            "approval-never-own-or-closed-request",
        ),
        (
            "approve_request",
            "approval-only-by-owner",
            "approval-only-by-owner-dpo-or-steward",
        ),
        (
            "read_audit",
            "audit-log-dpo-only",
            "audit-log-only-for-owner-dpo",
        ),
        (
            "record_consent",
            "consent-only-own",
            "consent-recorded-only-by-the-subject-or-controller-officers",
        ),
        (
            "read_consent",
            "consent-records-private",
            "consent-records-read-only-by-subject-or-controller-officers",
        ),
        (
            "import_consent",
            "consent-import-only-by-controller",
            "consent-imported-only-by-controller-officers",
        ),
        (
            "read_audit",
            "audit-subject-only-own",
            "subject-history-only-for-subject-or-controller-dpo",
        ),
        (
            "register_connector",
            "connector-only-owner",
            "connector-only-by-owner-steward-operator-or-node",
        ),
    ];
    let properties = PropertySet::bundled().unwrap();
    let mut missed = Vec::new();
    for (action, rule, property) in cases {
        let mut source = PolicySource::bundled();
        source.policies.push(allmende_policies::SourceFile {
            name: "policies/zz-careless.cedar".to_owned(),
            origin: "test:careless".to_owned(),
            text: format!(
                "@id(\"careless\")\n@title(\"t\")\n@reason_de(\"d\")\n@reason_en(\"e\")\npermit (principal, action == Allmende::Action::\"{action}\", resource);\n"
            ),
        });
        let bundle = PolicyBundle::load(&source)
            .unwrap()
            .without_policies(&[rule])
            .unwrap();
        let report = prove_blocking(&bundle, &properties.only(&[property])).unwrap();
        match failure(&report, property) {
            Outcome::Counterexample(c)
                if c.engine_allows && c.allowed_by.iter().any(|p| p.id == "careless") => {}
            other => missed.push(format!("without {rule}: {property}: {other:?}")),
        }
    }
    assert!(missed.is_empty(), "{missed:#?}");
}

/// The bundled property files are exactly the directory's.
#[test]
fn bundled_properties_equal_the_directory() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("properties");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cedar"))
        .collect();
    on_disk.sort();
    let mut bundled = bundled_property_files();
    bundled.sort_unstable();
    assert_eq!(on_disk, bundled);
}

/// A policy directory may add properties but not change a bundled one.
#[test]
fn a_policy_directory_cannot_weaken_a_bundled_property() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("properties")).unwrap();
    let roles = include_str!("../properties/roles.cedar");
    std::fs::write(dir.path().join("properties/roles.cedar"), roles).unwrap();
    let extra = "@id(\"never-marketing\")\n@title(\"t\")\n@reason_de(\"d\")\n@reason_en(\"e\")\nforbid (principal, action, resource is Allmende::Dataset) when { context has purpose && context.purpose == Allmende::Purpose::\"Marketing\" };\n";
    std::fs::write(dir.path().join("properties/local.cedar"), extra).unwrap();
    let set = PropertySet::for_dir(dir.path()).unwrap();
    assert!(allmende_policies::property_ids(&set).contains("never-marketing"));
    let weakened = roles.replace(
        "principal.roles.contains(Allmende::Role::\"citizen\")",
        "false",
    );
    std::fs::write(dir.path().join("properties/roles.cedar"), weakened).unwrap();
    let e = PropertySet::for_dir(dir.path()).unwrap_err().to_string();
    assert!(e.contains("differs from the bundled property file"), "{e}");
}
