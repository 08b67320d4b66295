//! Request-shape pruning never changes a decision: over the whole corpus
//! world, every sampled request is decided twice — once with the pruned
//! policy set the engine uses, once with every policy of the scoped set —
//! and the two decisions (allow/deny, deciding policies, errors) must be
//! identical. The sample is every corpus case, variations of each in one or
//! two fields, and random requests over everything the world names. Also
//! checks that pruning actually removes policies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use allmende_policies::{
    Action, ConsentCoverage, DecisionRequest, Engine, Principal, Purpose, Resource,
    decide_unpruned, evaluated_policies, load_bundled,
};

/// xorshift64*: a deterministic sample without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

fn sample_requests(
    world: &allmende_policies::World,
    bases: &[DecisionRequest],
    n: usize,
    seed: u64,
) -> Vec<DecisionRequest> {
    let mut principals = common::world_principals(world);
    principals.push(Principal::User("nobody-known".into()));
    let mut resources = common::world_resources(world);
    resources.push(Resource::Dataset("no-such-dataset".into()));

    let grants: Vec<String> = world.grant.iter().map(|g| g.id.clone()).collect();
    let obligations: Vec<String> = world.obligation.iter().map(|o| o.id.clone()).collect();
    // Times around every grant's validity window, and the world's default.
    let mut times: Vec<i64> = vec![world.now, 0, i64::MAX / 2];
    for g in &world.grant {
        for t in [g.not_before].into_iter().chain(g.not_after) {
            times.extend([t.saturating_sub(1), t, t.saturating_add(1)]);
        }
    }

    let mut rng = Rng(seed);
    let random_purpose = |rng: &mut Rng| {
        if rng.chance(85) {
            Some(*rng.pick(Purpose::ALL))
        } else {
            None
        }
    };
    let mut out = Vec::with_capacity(n + bases.len() * 8);
    // Every corpus case, and variations of it in one or two fields (most
    // corpus cases sit right at a rule's boundary).
    for base in bases {
        out.push(base.clone());
        for _ in 0..8 {
            let mut r = base.clone();
            for _ in 0..=(rng.next() % 2) {
                match rng.next() % 9 {
                    0 => r.principal = rng.pick(&principals).clone(),
                    1 => r.resource = rng.pick(&resources).clone(),
                    2 => r.action = *rng.pick(Action::ALL),
                    3 => r.purpose = random_purpose(&mut rng),
                    4 => r.now = *rng.pick(&times),
                    5 => {
                        r.grant = (rng.chance(70) && !grants.is_empty())
                            .then(|| rng.pick(&grants).clone())
                    }
                    6 => {
                        r.obligation = (rng.chance(70) && !obligations.is_empty())
                            .then(|| rng.pick(&obligations).clone())
                    }
                    7 => {
                        r.consent = ConsentCoverage {
                            purpose_covered: rng.chance(50),
                            consenting_subjects: *rng.pick(&[0, 1, 120, -1]),
                        }
                    }
                    _ => r.raw_personal_grants_at_owner = *rng.pick(&[0, 1, 3, 4, 10]),
                }
            }
            out.push(r);
        }
    }
    // Requests drawn at random from everything the world names.
    for _ in 0..n {
        let mut r = DecisionRequest::new(
            rng.pick(&principals).clone(),
            *rng.pick(Action::ALL),
            rng.pick(&resources).clone(),
            *rng.pick(&times),
        );
        r.purpose = random_purpose(&mut rng);
        if !grants.is_empty() && rng.chance(50) {
            r.grant = Some(rng.pick(&grants).clone());
        }
        if !obligations.is_empty() && rng.chance(20) {
            r.obligation = Some(rng.pick(&obligations).clone());
        }
        r.consent = ConsentCoverage {
            purpose_covered: rng.chance(50),
            consenting_subjects: *rng.pick(&[0, 1, 120, -1]),
        };
        r.raw_personal_grants_at_owner = *rng.pick(&[0, 1, 3, 4, 10]);
        out.push(r);
    }
    out
}

#[test]
fn pruned_decisions_equal_unpruned_decisions() {
    let world = common::munich();
    let mut store = world.store();
    // A grant whose validity arithmetic overflows: a policy that errors in
    // the part the pruning evaluates (it must be kept, and error).
    store.upsert_grant(common::overflow_grant());
    let snapshot = store.snapshot().unwrap();
    let bundle = load_bundled().unwrap();
    let engine = Engine::new(bundle.clone());
    let mut world = world;
    world.grant.extend(store.grant("g-overflow").cloned());
    let bases = common::corpus_requests(&world);
    assert!(bases.len() > 50);
    let requests = sample_requests(&world, &bases, 4_000, 0x0A11_3E4D_E000_0001);
    let (mut allowed, mut errored, mut differ) = (0usize, 0usize, Vec::new());
    // The shape cache is cleared when full (1024 shapes), so remember its peak.
    let mut peak_shapes = 0;
    for r in &requests {
        let pruned = engine.decide(r, &snapshot);
        peak_shapes = peak_shapes.max(snapshot.pruned_shapes());
        let full = decide_unpruned(&engine.current(), r, &snapshot);
        if pruned != full {
            differ.push(format!(
                "{r:?}\n  pruned: {} {:?} {:?}\n  full:   {} {:?} {:?}",
                pruned.allowed,
                pruned.deciding_ids(),
                pruned.errors,
                full.allowed,
                full.deciding_ids(),
                full.errors
            ));
        }
        allowed += usize::from(full.allowed);
        errored += usize::from(!full.errors.is_empty());
    }
    assert!(
        differ.is_empty(),
        "{} of {} decisions differ, first: {}",
        differ.len(),
        requests.len(),
        differ[0]
    );
    // The sample reaches both outcomes often enough to mean something.
    assert!(allowed > 120, "only {allowed} allows in the sample");
    assert!(requests.len() - allowed > 1_000);
    assert!(errored > 0, "no request reached the erroring policy");
    assert!(peak_shapes > 50, "{peak_shapes}");
}

#[test]
fn pruning_keeps_only_what_can_decide_story_2() {
    let world = common::munich();
    let store = world.store();
    let snapshot = store.snapshot().unwrap();
    let bundle = load_bundled().unwrap();
    let request = DecisionRequest::new(
        Principal::User("tum-alice".to_owned()),
        Action::Read,
        Resource::Dataset("smart-meter-readings".to_owned()),
        world.now,
    )
    .with_purpose(Purpose::AcademicResearch)
    .with_grant("g-tum-smart-meter");
    let evaluated = evaluated_policies(&bundle, &request, &snapshot);
    let ids: Vec<&str> = evaluated.iter().map(|(id, _)| id.as_str()).collect();
    let scoped = bundle
        .scoped_policy_set(request.action, &request.principal, &request.resource)
        .policies()
        .count();
    // What can still decide: the grant's time window, consent, accumulation.
    for id in [
        "grant-permits-use",
        "grant-expired",
        "grant-not-yet-valid",
        "consent-basis-missing",
        "nonuse-anti-accumulation",
    ] {
        assert!(ids.contains(&id), "{id} pruned: {ids:?}");
    }
    // What cannot: other datasets' rules, other kinds' purposes, open data.
    for id in [
        "public-open-data",
        "purpose-bound-to-org-kind",
        "nonuse-insurance-risk-scoring",
        "nonuse-no-raw-personal-to-companies",
        "obligation-beneficiary-reads",
        "owner-uses-own-data",
    ] {
        assert!(!ids.contains(&id), "{id} kept: {ids:?}");
    }
    assert!(ids.len() * 2 < scoped, "{} of {scoped} kept", ids.len());
    // Kept policies are specialised to the shape: the grant's dataset,
    // grantee, state and purpose are settled, only the clock is left.
    let (_, permit) = evaluated
        .iter()
        .find(|(id, _)| id == "grant-permits-use")
        .unwrap();
    assert!(permit.contains("context.now"), "{permit}");
    assert!(!permit.contains("grant.dataset"), "{permit}");
    assert!(!permit.contains("unknown("), "{permit}");
}

#[test]
fn a_new_bundle_or_snapshot_starts_a_new_cache() {
    let world = common::munich();
    let mut store = world.store();
    let snapshot = store.snapshot().unwrap();
    let engine = Engine::bundled().unwrap();
    let request = DecisionRequest::new(
        Principal::Public,
        Action::Read,
        Resource::Dataset("air-quality".to_owned()),
        world.now,
    );
    assert!(engine.decide(&request, &snapshot).allowed);
    assert_eq!(snapshot.pruned_shapes(), 1);
    // Reclassifying the dataset changes the snapshot; the new one prunes anew.
    let mut air = store.dataset("air-quality").unwrap().clone();
    air.classification = allmende_policies::Classification::Internal;
    store.upsert_dataset(air);
    let changed = store.snapshot().unwrap();
    assert_eq!(changed.pruned_shapes(), 0);
    let d = engine.decide(&request, &changed);
    assert!(!d.allowed, "{d}");
    assert_eq!(d, decide_unpruned(&engine.current(), &request, &changed));
}
