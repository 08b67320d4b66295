//! The decision corpus: every `tests/corpus/*.toml` case file (all but
//! `world.toml`) is decided against the bundled policy set and the Munich
//! world. Fails on any mismatch, and if any policy `@id` (or the
//! `default-deny` / `invalid-request` pseudo-policies) decides no case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use allmende_policies::{
    Action, DEFAULT_DENY_ID, DecisionRequest, Engine, INVALID_REQUEST_ID, OrgKind, PolicyBundle,
    Principal, Purpose, Resource, decide_with_bundle, load_bundled,
};
use common::{Expect, load_cases, parse_principal, parse_resource};

#[test]
fn corpus_decides_as_expected_and_covers_every_policy() {
    let world = common::munich();
    let store = world.store();
    let snapshot = store.snapshot().unwrap();
    let full = load_bundled().unwrap();
    snapshot.check_schema(full.schema()).unwrap();

    let cases = load_cases();
    let mut failures = Vec::new();
    let mut covered: BTreeMap<String, usize> = BTreeMap::new();
    let mut stories: BTreeSet<u8> = BTreeSet::new();
    let mut variants: BTreeMap<Vec<String>, PolicyBundle> = BTreeMap::new();
    let (mut allows, mut denies, mut refusals) = (0, 0, 0);

    for (file, case) in &cases {
        let label = format!("{file}: {}", case.name);
        if let Some(s) = case.story {
            stories.insert(s);
        }
        let principal = parse_principal(&case.principal).unwrap_or_else(|e| panic!("{label}: {e}"));
        let resource = parse_resource(&case.resource).unwrap_or_else(|e| panic!("{label}: {e}"));
        let action: Action = case
            .action
            .parse()
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let purpose = case
            .purpose
            .as_deref()
            .map(str::parse::<Purpose>)
            .transpose();

        if case.expect == Expect::Refused {
            refusals += 1;
            assert!(
                case.deciding.is_empty(),
                "{label}: a refused case has no deciding policies"
            );
            match purpose {
                Err(e) => {
                    let raw = case.purpose.as_deref().unwrap_or_default();
                    assert!(e.to_string().contains(&format!("`{raw}`")), "{label}: {e}");
                }
                Ok(p) => {
                    failures.push(format!("{label}: expected the purpose {p:?} to be refused"))
                }
            }
            continue;
        }
        let purpose = purpose.unwrap_or_else(|e| panic!("{label}: {e}"));

        let mut request =
            DecisionRequest::new(principal, action, resource, case.now.unwrap_or(world.now));
        request.purpose = purpose;
        request.grant = case.grant.clone();
        request.obligation = case.obligation.clone();
        request.consent = case.consent.unwrap_or_default();
        request.raw_personal_grants_at_owner = case.raw_personal_grants_at_owner;

        let mut without = case.without.clone();
        without.sort();
        let bundle = if without.is_empty() {
            &full
        } else {
            variants.entry(without.clone()).or_insert_with(|| {
                let ids: Vec<&str> = without.iter().map(String::as_str).collect();
                full.without_policies(&ids).unwrap()
            })
        };
        let decision = decide_with_bundle(bundle, &request, &snapshot);
        assert_eq!(decision.policy_set_hash, bundle.hash(), "{label}");
        assert!(!decision.deciding.is_empty(), "{label}: no deciding policy");
        let rendered = decision.to_string();
        for d in &decision.deciding {
            assert!(
                rendered.contains(&d.id) && rendered.contains(&d.reason_de),
                "{label}"
            );
        }

        let got: Vec<&str> = decision.deciding_ids();
        let mut want: Vec<&str> = case.deciding.iter().map(String::as_str).collect();
        want.sort_unstable();
        let expected_allow = case.expect == Expect::Allow;
        if decision.allowed != expected_allow || got != want {
            failures.push(format!(
                "{label}: expected {} by {want:?}, got {} by {got:?} (errors: {:?})",
                if expected_allow { "allow" } else { "deny" },
                if decision.allowed { "allow" } else { "deny" },
                decision.errors
            ));
        }
        if decision.allowed {
            allows += 1;
        } else {
            denies += 1;
        }
        if without.is_empty() {
            for id in got {
                *covered.entry(id.to_owned()).or_default() += 1;
            }
        }
    }

    let mut uncovered: Vec<String> = full
        .policies()
        .iter()
        .map(|p| p.id.clone())
        .chain([DEFAULT_DENY_ID.to_owned(), INVALID_REQUEST_ID.to_owned()])
        .filter(|id| !covered.contains_key(id))
        .collect();
    uncovered.sort();
    for id in &uncovered {
        failures.push(format!("policy `{id}` decides no corpus case"));
    }
    for story in [1u8, 2, 3, 4, 5, 6, 7, 8] {
        if !stories.contains(&story) {
            failures.push(format!("no corpus case for acceptance story {story}"));
        }
    }

    println!(
        "corpus: {} cases ({allows} allow, {denies} deny, {refusals} refused), {} policies covered",
        cases.len(),
        covered.len()
    );
    assert!(
        failures.is_empty(),
        "{} corpus failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The purpose/organisation-kind binding is written twice: as the Cedar
/// policy `purpose-bound-to-org-kind` and as `Purpose::allowed_for` (used by
/// the broker to explain refusals early). Both must agree on every pair.
#[test]
fn purpose_kind_binding_matches_the_rust_table() {
    let world = common::munich();
    let snapshot = world.store().snapshot().unwrap();
    let engine = Engine::bundled().unwrap();
    let member_of_kind = |kind: OrgKind| match kind {
        OrgKind::City => "stadt-steward",
        OrgKind::Utility => "swm-steward",
        OrgKind::University => "tum-alice",
        OrgKind::Company => "scooter-ops",
        OrgKind::Public => "citizen-anna",
    };
    let mut checked = 0;
    for &purpose in Purpose::ALL {
        for &kind in OrgKind::ALL {
            let request = DecisionRequest::new(
                Principal::User(member_of_kind(kind).to_owned()),
                Action::RequestAccess,
                Resource::Dataset("smart-meter-readings".to_owned()),
                world.now,
            )
            .with_purpose(purpose);
            let decision = engine.decide(&request, &snapshot);
            let cedar_forbids = decision
                .deciding_ids()
                .contains(&"purpose-bound-to-org-kind");
            assert_eq!(
                cedar_forbids,
                !purpose.allowed_for(kind),
                "{purpose} for {kind}: cedar and Purpose::allowed_for disagree"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, Purpose::ALL.len() * OrgKind::ALL.len());
}
