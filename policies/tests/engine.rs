//! Engine tests: hot reload keeps the old set on a bad one, evaluation errors
//! deny, story 6 is denied by the insurance rule itself, strict purposes on
//! the Cedar side, snapshot caching and model checks, explain output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;
use std::sync::Arc;

use allmende_policies::cedar_policy::{
    self, Authorizer, Context, EntityUid, Request, RestrictedExpression,
};
use allmende_policies::{
    Action, Classification, ConsentCoverage, DecisionRequest, Engine, EntityStore, Grant,
    GrantState, LegalBasis, ModelError, OrgKind, Organisation, POLICY_SUBDIR, PolicyEffect,
    PolicySource, Principal, Purpose, Resource, User, decide_with_bundle, load_bundled,
};

fn world_request(principal: &str, action: Action, resource: Resource) -> DecisionRequest {
    DecisionRequest::new(
        Principal::User(principal.to_owned()),
        action,
        resource,
        common::munich().now,
    )
}

fn researcher_read(grant: &str) -> DecisionRequest {
    world_request(
        "tum-alice",
        Action::Read,
        Resource::Dataset("smart-meter-readings".to_owned()),
    )
    .with_purpose(Purpose::AcademicResearch)
    .with_grant(grant)
    .with_consent(ConsentCoverage {
        purpose_covered: true,
        consenting_subjects: 120,
    })
    .with_raw_personal_grants_at_owner(1)
}

fn write_bundled(dir: &std::path::Path) {
    let src = PolicySource::bundled();
    std::fs::create_dir_all(dir.join(POLICY_SUBDIR)).unwrap();
    for f in std::iter::once(&src.schema).chain(&src.policies) {
        std::fs::write(dir.join(&f.name), &f.text).unwrap();
    }
}

#[test]
fn reload_with_a_bad_set_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    write_bundled(dir.path());
    let engine = Engine::from_dir(dir.path()).unwrap();
    let snapshot = common::munich().store().snapshot().unwrap();
    let public_read = DecisionRequest::new(
        Principal::Public,
        Action::Read,
        Resource::Dataset("air-quality".to_owned()),
        0,
    );
    let before = engine.decide(&public_read, &snapshot);
    assert!(before.allowed);
    let old_hash = engine.policy_set_hash();
    assert_eq!(before.policy_set_hash, old_hash);

    // Break the set: a syntax error in one file.
    let file = dir.path().join("policies/public-access.cedar");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, good.replace("permit (", "permit ((")).unwrap();
    let err = engine.reload_from(dir.path()).unwrap_err();
    assert!(err.to_string().contains("public-access.cedar:"), "{err}");
    assert_eq!(engine.policy_set_hash(), old_hash);
    let still = engine.decide(&public_read, &snapshot);
    assert!(still.allowed);
    assert_eq!(still.policy_set_hash, old_hash);

    // A valid change is swapped in and takes effect on the next decision.
    let start = good.find("@id(\"public-open-data\")").unwrap();
    let end = start + good[start..].find("};").unwrap() + 2;
    let without_open_data = format!("{}{}", &good[..start], &good[end..]);
    std::fs::write(&file, without_open_data).unwrap();
    let report = engine.reload_from(dir.path()).unwrap();
    assert!(report.changed);
    assert_eq!(report.previous_hash, old_hash);
    assert_eq!(report.hash, engine.policy_set_hash());
    let after = engine.decide(&public_read, &snapshot);
    assert!(!after.allowed);
    assert_eq!(after.deciding_ids(), ["default-deny"]);
    assert_eq!(after.policy_set_hash, report.hash);

    // Reloading the same files again reports no change.
    let again = engine.reload_from(dir.path()).unwrap();
    assert!(!again.changed);
}

/// A grant whose period overflows Cedar's 64-bit arithmetic makes the
/// open-ended-grant forbid error. Cedar skips an erroring policy, so bare
/// Cedar would ALLOW through `grant-permits-use`; the engine must deny.
#[test]
fn evaluation_error_in_a_forbid_is_a_deny() {
    let world = common::munich();
    let mut store = world.store();
    store.upsert_grant(common::overflow_grant());
    let snapshot = store.snapshot().unwrap();
    let engine = Engine::bundled().unwrap();
    let request = researcher_read("g-overflow");

    let cedar_request = engine.cedar_request(&request, &snapshot).unwrap();
    let bare = Authorizer::new().is_authorized(
        &cedar_request,
        engine.current().policy_set(),
        snapshot.entities(),
    );
    assert_eq!(
        bare.decision(),
        cedar_policy::Decision::Allow,
        "bare cedar skips the erroring forbid"
    );
    assert!(bare.diagnostics().errors().count() > 0);

    let decision = engine.decide(&request, &snapshot);
    assert!(!decision.allowed);
    assert_eq!(decision.deciding_ids(), ["evaluation-error"]);
    assert!(
        decision
            .errors
            .iter()
            .any(|e| e.contains("nonuse-open-ended-personal-grant") && e.contains("overflow")),
        "{:?}",
        decision.errors
    );
    assert!(decision.to_string().contains("errors:"));
}

/// Story 6 is denied by the insurance rule itself: with every other forbid
/// removed, on a dataset whose owner (wrongly) allows underwriting, with
/// consent and a matching, valid grant, the insurance rule alone denies —
/// and removing it too would let the request through.
#[test]
fn story_6_is_denied_by_the_insurance_rule_itself() {
    let world = common::munich();
    let mut store = world.store();
    let mut dataset = store.dataset("smart-meter-readings").unwrap().clone();
    dataset
        .allowed_purposes
        .insert(Purpose::InsuranceUnderwriting);
    store.upsert_dataset(dataset);
    let snapshot = store.snapshot().unwrap();
    let full = load_bundled().unwrap();
    let request = world_request(
        "vers-analyst",
        Action::ReadAggregate,
        Resource::Dataset("smart-meter-readings".to_owned()),
    )
    .with_purpose(Purpose::InsuranceUnderwriting)
    .with_grant("g-vers-smart-meter")
    .with_consent(ConsentCoverage {
        purpose_covered: true,
        consenting_subjects: 50,
    })
    .with_raw_personal_grants_at_owner(1);

    let other_forbids: Vec<&str> = full
        .policies()
        .into_iter()
        .filter(|p| p.effect == PolicyEffect::Forbid && p.id != "nonuse-insurance-risk-scoring")
        .map(|p| p.id.as_str())
        .collect::<Vec<_>>();
    assert!(other_forbids.contains(&"nonuse-no-raw-personal-to-companies"));
    let only_insurance = full.without_policies(&other_forbids).unwrap();
    let decision = decide_with_bundle(&only_insurance, &request, &snapshot);
    assert!(!decision.allowed);
    assert_eq!(decision.deciding_ids(), ["nonuse-insurance-risk-scoring"]);
    assert_ne!(decision.policy_set_hash, full.hash());

    // Raw read, with only the company rule removed, still denied by it.
    let raw = DecisionRequest {
        action: Action::Read,
        ..request.clone()
    };
    let without_company_rule = full
        .without_policies(&["nonuse-no-raw-personal-to-companies"])
        .unwrap();
    let decision = decide_with_bundle(&without_company_rule, &raw, &snapshot);
    assert!(!decision.allowed);
    assert_eq!(decision.deciding_ids(), ["nonuse-insurance-risk-scoring"]);

    // Control: without the insurance rule as well, the grant would permit.
    let mut all_forbids = other_forbids.clone();
    all_forbids.push("nonuse-insurance-risk-scoring");
    let nothing_forbids = full.without_policies(&all_forbids).unwrap();
    let decision = decide_with_bundle(&nothing_forbids, &request, &snapshot);
    assert!(decision.allowed, "{decision}");
    assert_eq!(decision.deciding_ids(), ["grant-permits-use"]);
}

/// The Cedar side of strict purposes: a context carrying a spelling variant
/// fails schema validation, so it can never reach a policy.
#[test]
fn cedar_refuses_unknown_purpose_values() {
    let bundle = load_bundled().unwrap();
    let schema = bundle.schema();
    let uid = |s: &str| EntityUid::from_str(s).unwrap();
    let context_with = |purpose: &str| {
        Context::from_pairs([
            (
                "purpose".to_owned(),
                RestrictedExpression::new_entity_uid(uid(&format!(
                    "Allmende::Purpose::\"{purpose}\""
                ))),
            ),
            ("now".to_owned(), RestrictedExpression::new_long(0)),
            (
                "requester_org".to_owned(),
                RestrictedExpression::new_entity_uid(uid("Allmende::Organisation::\"tum\"")),
            ),
            (
                "requester_kind".to_owned(),
                RestrictedExpression::new_entity_uid(uid("Allmende::OrgKind::\"university\"")),
            ),
            (
                "consent".to_owned(),
                RestrictedExpression::new_record([
                    (
                        "purpose_covered".to_owned(),
                        RestrictedExpression::new_bool(true),
                    ),
                    (
                        "consenting_subjects".to_owned(),
                        RestrictedExpression::new_long(1),
                    ),
                ])
                .unwrap(),
            ),
            (
                "raw_personal_grants_at_owner".to_owned(),
                RestrictedExpression::new_long(0),
            ),
        ])
        .unwrap()
    };
    let request = |purpose: &str| {
        Request::new(
            uid("Allmende::User::\"tum-alice\""),
            uid("Allmende::Action::\"read\""),
            uid("Allmende::Dataset::\"smart-meter-readings\""),
            context_with(purpose),
            Some(schema),
        )
        .map_err(|e| e.to_string())
    };
    assert!(request("AcademicResearch").is_ok());
    for variant in [
        "academicresearch",
        "ACADEMICRESEARCH",
        "Academic Research",
        "AcademicReserch",
    ] {
        let err = request(variant).unwrap_err();
        assert!(err.contains(variant), "{err}");
    }
}

#[test]
fn snapshots_are_cached_until_the_store_changes() {
    let mut store = common::munich().store();
    let a = store.snapshot().unwrap();
    let b = store.snapshot().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let generation = store.generation();
    store.upsert_user(User::new(
        "tum-dora",
        "tum",
        &[allmende_policies::Role::Researcher],
    ));
    assert!(store.generation() > generation);
    let c = store.snapshot().unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(c.generation(), store.generation());
    assert_eq!(c.len(), a.len() + 1);
    // Removing something unknown changes nothing.
    assert!(store.remove_user("nobody").is_none());
    assert!(Arc::ptr_eq(&c, &store.snapshot().unwrap()));
}

#[test]
fn withdrawn_data_takes_effect_on_the_next_snapshot() {
    let world = common::munich();
    let engine = Engine::bundled().unwrap();
    let mut store = world.store();
    let request = researcher_read("g-tum-smart-meter");
    assert!(engine.decide(&request, &store.snapshot().unwrap()).allowed);
    let mut grant = store.grant("g-tum-smart-meter").unwrap().clone();
    grant.state = GrantState::Revoked;
    store.upsert_grant(grant);
    let decision = engine.decide(&request, &store.snapshot().unwrap());
    assert!(!decision.allowed);
    assert_eq!(decision.deciding_ids(), ["grant-not-active"]);
}

#[test]
fn the_model_is_checked_when_building_a_snapshot() {
    let mut store = EntityStore::new();
    store.upsert_user(User::new("ghost", "nowhere", &[]));
    let err = store.snapshot().unwrap_err();
    assert!(matches!(err, ModelError::DanglingReference { .. }));
    assert_eq!(
        err.to_string(),
        "entity `User::\"ghost\"` refers to unknown organisation `nowhere` in field `org`"
    );

    let mut store = common::munich().store();
    let mut d = store.dataset("smart-meter-readings").unwrap().clone();
    d.contains_personal_data = false;
    store.upsert_dataset(d);
    assert!(matches!(
        store.snapshot().unwrap_err(),
        ModelError::Inconsistent { .. }
    ));

    let mut store = common::munich().store();
    let mut g = store.grant("g-tum-smart-meter").unwrap().clone();
    g.not_after = Some(g.not_before);
    store.upsert_grant(g);
    assert!(
        store
            .snapshot()
            .unwrap_err()
            .to_string()
            .contains("not_after")
    );

    let mut store = common::munich().store();
    store.upsert_organisation(Organisation::new("public", OrgKind::Company));
    assert!(store.snapshot().is_err());
}

#[test]
fn the_demo_snapshot_conforms_to_the_schema() {
    let engine = Engine::bundled().unwrap();
    let snapshot = common::munich().store().snapshot().unwrap();
    engine.check_snapshot(&snapshot).unwrap();
    let empty = EntityStore::new().snapshot().unwrap();
    engine.check_snapshot(&empty).unwrap();
    assert!(!empty.is_empty());
}

#[test]
fn accumulation_count_helper_counts_active_personal_grants_at_the_owner() {
    let world = common::munich();
    let store = world.store();
    // tum at swm, now: g-tum-smart-meter, -open, -400d, -aggregate(no: no raw
    // rows), -revoked(no), -expired(no), -future(no), district-heating (not
    // personal).
    assert_eq!(
        store.raw_personal_grants_at_owner("tum", "swm", world.now),
        3
    );
    assert_eq!(
        store.raw_personal_grants_at_owner("tum", "stadt", world.now),
        0
    );
    assert_eq!(
        store.raw_personal_grants_at_owner("scooter-co", "stadt", world.now),
        1
    );
}

#[test]
fn requests_outside_the_schema_are_invalid() {
    let engine = Engine::bundled().unwrap();
    let snapshot = common::munich().store().snapshot().unwrap();
    let request = DecisionRequest::new(
        Principal::Public,
        Action::ApproveRequest,
        Resource::AccessRequest("r-tum-smart-meter".to_owned()),
        0,
    );
    let decision = engine.decide(&request, &snapshot);
    assert!(!decision.allowed);
    assert_eq!(decision.deciding_ids(), ["invalid-request"]);
    assert!(
        decision.errors[0].contains("does not apply to principal Public"),
        "{:?}",
        decision.errors
    );

    let request = world_request(
        "swm-dpo",
        Action::Read,
        Resource::Grant("g-tum-smart-meter".to_owned()),
    );
    let decision = engine.decide(&request, &snapshot);
    assert_eq!(decision.deciding_ids(), ["invalid-request"]);
}

#[test]
fn explain_renders_text_and_json() {
    let engine = Engine::bundled().unwrap();
    let snapshot = common::munich().store().snapshot().unwrap();
    let request = researcher_read("g-tum-smart-meter-expired");
    let decision = engine.decide(&request, &snapshot);
    let text = decision.to_string();
    assert!(text.starts_with("decision:   DENY\n"), "{text}");
    assert!(text.contains("principal:  User::\"tum-alice\""), "{text}");
    assert!(text.contains("purpose:    AcademicResearch"), "{text}");
    assert!(
        text.contains("  - grant-expired (forbid): The grant has expired"),
        "{text}"
    );
    assert!(
        text.contains("      de: Die Berechtigung ist abgelaufen"),
        "{text}"
    );
    assert!(text.contains(&format!("policy set: sha256:{}", engine.policy_set_hash())));

    let json: serde_json::Value = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["allowed"], false);
    assert_eq!(json["deciding"][0]["id"], "grant-expired");
    assert_eq!(json["deciding"][0]["effect"], "forbid");
    assert_eq!(json["request"]["purpose"], "AcademicResearch");
    assert_eq!(json["request"]["principal"]["type"], "user");
    assert_eq!(json["policy_set_hash"], engine.policy_set_hash());

    let no_policy = engine.decide(
        &DecisionRequest::new(
            Principal::Public,
            Action::ReadAggregate,
            Resource::Dataset("parking-permits".to_owned()),
            0,
        ),
        &snapshot,
    );
    let text = no_policy.to_string();
    assert!(
        text.contains("default-deny (engine): No policy permits this"),
        "{text}"
    );
    assert!(text.contains("en: No policy permits this"), "{text}");
}

#[test]
fn non_personal_grants_need_an_expiry_but_no_consent() {
    let world = common::munich();
    let mut store = world.store();
    store.upsert_dataset(allmende_policies::Dataset {
        id: "bike-counters".to_owned(),
        owner: "stadt".to_owned(),
        classification: Classification::Internal,
        public_space_origin: true,
        contains_personal_data: false,
        legal_basis: LegalBasis::NotApplicable,
        allowed_purposes: [Purpose::AcademicResearch].into_iter().collect(),
        anonymisation_required: false,
    });
    let mut grant = Grant {
        id: "g-bikes".to_owned(),
        grantee: "tum".to_owned(),
        dataset: "bike-counters".to_owned(),
        purpose: Purpose::AcademicResearch,
        not_before: 0,
        not_after: None,
        state: GrantState::Active,
        aggregate_only: false,
    };
    store.upsert_grant(grant.clone());
    let engine = Engine::bundled().unwrap();
    let mut request = researcher_read("g-bikes");
    request.resource = Resource::Dataset("bike-counters".to_owned());
    request.consent = ConsentCoverage::default();
    // Open-ended: not a non-use violation (not personal), but the grant
    // permit requires an expiry, so nothing permits.
    let decision = engine.decide(&request, &store.snapshot().unwrap());
    assert!(!decision.allowed, "{decision}");
    assert_eq!(decision.deciding_ids(), ["default-deny"]);
    // With an expiry it permits, without any consent coverage.
    grant.not_after = Some(world.now + 1);
    store.upsert_grant(grant);
    let decision = engine.decide(&request, &store.snapshot().unwrap());
    assert!(decision.allowed, "{decision}");
    assert_eq!(decision.deciding_ids(), ["grant-permits-use"]);
}

/// The engine evaluates only the policies whose scope can match the
/// request's shape. Over every request shape of the Munich world, that must
/// give exactly the whole set's decision, reasons and errors.
#[test]
fn scoped_policy_sets_decide_exactly_like_the_whole_set() {
    let world = common::munich();
    let snapshot = world.store().snapshot().unwrap();
    let engine = Engine::bundled().unwrap();
    let bundle = engine.current();
    let authorizer = Authorizer::new();

    let principals = common::world_principals(&world);
    let resources = common::world_resources(&world);

    let (mut compared, mut smaller) = (0usize, 0usize);
    for &action in Action::ALL {
        for principal in &principals {
            for resource in &resources {
                for purpose in [
                    None,
                    Some(Purpose::AcademicResearch),
                    Some(Purpose::InsuranceUnderwriting),
                ] {
                    for grant in [None, Some("g-tum-smart-meter"), Some("g-vers-smart-meter")] {
                        let mut request = DecisionRequest::new(
                            principal.clone(),
                            action,
                            resource.clone(),
                            world.now,
                        )
                        .with_consent(ConsentCoverage {
                            purpose_covered: true,
                            consenting_subjects: 3,
                        })
                        .with_raw_personal_grants_at_owner(1);
                        request.purpose = purpose;
                        request.grant = grant.map(str::to_owned);
                        let decision = engine.decide(&request, &snapshot);
                        if decision.deciding_ids() == ["invalid-request"] {
                            continue;
                        }
                        let cedar_request = engine.cedar_request(&request, &snapshot).unwrap();
                        let scoped_set = bundle.scoped_policy_set(action, principal, resource);
                        if scoped_set.policies().count() < bundle.policy_set().policies().count() {
                            smaller += 1;
                        }
                        let whole = authorizer.is_authorized(
                            &cedar_request,
                            bundle.policy_set(),
                            snapshot.entities(),
                        );
                        let scoped = authorizer.is_authorized(
                            &cedar_request,
                            scoped_set,
                            snapshot.entities(),
                        );
                        let reasons = |r: &cedar_policy::Response| {
                            let mut v: Vec<String> =
                                r.diagnostics().reason().map(ToString::to_string).collect();
                            v.sort();
                            v
                        };
                        let errors = |r: &cedar_policy::Response| {
                            let mut v: Vec<String> =
                                r.diagnostics().errors().map(ToString::to_string).collect();
                            v.sort();
                            v
                        };
                        assert_eq!(whole.decision(), scoped.decision(), "{request:?}");
                        assert_eq!(reasons(&whole), reasons(&scoped), "{request:?}");
                        assert_eq!(errors(&whole), errors(&scoped), "{request:?}");
                        assert_eq!(
                            decision.allowed,
                            whole.decision() == cedar_policy::Decision::Allow
                                && errors(&whole).is_empty()
                        );
                        compared += 1;
                    }
                }
            }
        }
    }
    assert!(compared > 5_000, "compared only {compared} requests");
    assert_eq!(
        smaller, compared,
        "every request shape should skip some policies"
    );
}
