//! Decision latency: [`Engine::decide`] including the cached entity-snapshot
//! lookup, the requester lookup, context and request construction, the
//! request-shape lookup and the explanation, against a bare
//! `Authorizer::is_authorized` on the same, prepared Cedar request, in the
//! same run — once with the whole policy set (what a plain integration would
//! call) and once with the scope-filtered subset. Prints p50/p90/p99 of single
//! calls and the ratios after the criterion groups, and the cost of the first
//! request of a shape on a new snapshot (when the engine prunes).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use allmende_policies::cedar_policy::Authorizer;
use allmende_policies::{
    Action, ConsentCoverage, DecisionRequest, Engine, EntityStore, Principal, Purpose, Resource,
    evaluated_policies,
};
use criterion::Criterion;

struct Scenario {
    name: &'static str,
    request: DecisionRequest,
    allowed: bool,
}

fn scenarios(now: i64) -> Vec<Scenario> {
    let story2 = DecisionRequest::new(
        Principal::User("tum-alice".to_owned()),
        Action::Read,
        Resource::Dataset("smart-meter-readings".to_owned()),
        now,
    )
    .with_purpose(Purpose::AcademicResearch)
    .with_grant("g-tum-smart-meter")
    .with_consent(ConsentCoverage {
        purpose_covered: true,
        consenting_subjects: 120,
    })
    .with_raw_personal_grants_at_owner(1);
    let story6 = DecisionRequest::new(
        Principal::User("vers-analyst".to_owned()),
        Action::Read,
        Resource::Dataset("smart-meter-readings".to_owned()),
        now,
    )
    .with_purpose(Purpose::InsuranceUnderwriting)
    .with_grant("g-vers-smart-meter")
    .with_raw_personal_grants_at_owner(1);
    let story5 = DecisionRequest::new(
        Principal::Public,
        Action::Read,
        Resource::Dataset("air-quality".to_owned()),
        now,
    );
    vec![
        Scenario {
            name: "story2-grant-allow",
            request: story2,
            allowed: true,
        },
        Scenario {
            name: "story6-insurer-deny",
            request: story6,
            allowed: false,
        },
        Scenario {
            name: "story5-public-allow",
            request: story5,
            allowed: true,
        },
    ]
}

fn decide_full(engine: &Engine, store: &EntityStore, request: &DecisionRequest) -> bool {
    let snapshot = store.snapshot().unwrap();
    engine.decide(request, &snapshot).allowed
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    (at(0.50), at(0.90), at(0.99))
}

fn main() {
    let world = common::munich();
    let store = world.store();
    let engine = Engine::bundled().unwrap();
    let bundle = engine.current();
    let authorizer = Authorizer::new();
    let snapshot = store.snapshot().unwrap();
    let scenarios = scenarios(world.now);
    for s in &scenarios {
        assert_eq!(
            decide_full(&engine, &store, &s.request),
            s.allowed,
            "{}",
            s.name
        );
    }

    let mut criterion = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for s in &scenarios {
        let prepared = engine.cedar_request(&s.request, &snapshot).unwrap();
        let scoped =
            bundle.scoped_policy_set(s.request.action, &s.request.principal, &s.request.resource);
        let mut group = criterion.benchmark_group(s.name);
        group.bench_function("engine-decide", |b| {
            b.iter(|| decide_full(&engine, &store, black_box(&s.request)))
        });
        group.bench_function("bare-whole-set", |b| {
            b.iter(|| {
                authorizer.is_authorized(
                    black_box(&prepared),
                    bundle.policy_set(),
                    snapshot.entities(),
                )
            })
        });
        group.bench_function("bare-scoped-set", |b| {
            b.iter(|| authorizer.is_authorized(black_box(&prepared), scoped, snapshot.entities()))
        });
        group.finish();
    }
    criterion.final_summary();

    // Single-call percentiles, interleaved so all see the same conditions.
    const N: usize = 20_000;
    println!();
    println!(
        "single-call latency, µs, over {N} interleaved calls each ({} policies, {} entities)",
        bundle.policy_set().policies().count(),
        snapshot.len()
    );
    println!(
        "{:<21} {:>20} {:>20} {:>23} {:>9} {:>10} {:>6}",
        "scenario",
        "engine p50/p90/p99",
        "bare whole set",
        "bare scoped set (n)",
        "eng/whole",
        "eng/scoped",
        "pruned"
    );
    for s in &scenarios {
        let prepared = engine.cedar_request(&s.request, &snapshot).unwrap();
        let scoped =
            bundle.scoped_policy_set(s.request.action, &s.request.principal, &s.request.resource);
        let whole = bundle.policy_set();
        let entities = snapshot.entities();
        let (mut full, mut bare, mut bare_scoped) = (
            Vec::with_capacity(N),
            Vec::with_capacity(N),
            Vec::with_capacity(N),
        );
        for _ in 0..1_000 {
            black_box(decide_full(&engine, &store, &s.request));
            black_box(authorizer.is_authorized(&prepared, whole, entities));
            black_box(authorizer.is_authorized(&prepared, scoped, entities));
        }
        for _ in 0..N {
            let t = Instant::now();
            black_box(decide_full(&engine, &store, black_box(&s.request)));
            full.push(t.elapsed());
            let t = Instant::now();
            black_box(authorizer.is_authorized(black_box(&prepared), whole, entities));
            bare.push(t.elapsed());
            let t = Instant::now();
            black_box(authorizer.is_authorized(black_box(&prepared), scoped, entities));
            bare_scoped.push(t.elapsed());
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let (f50, f90, f99) = percentiles(full);
        let (b50, b90, b99) = percentiles(bare);
        let (s50, s90, s99) = percentiles(bare_scoped);
        println!(
            "{:<21} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} {:>6.1} ({:>2}) {:>8.2}x {:>9.2}x {:>6}",
            s.name,
            us(f50),
            us(f90),
            us(f99),
            us(b50),
            us(b90),
            us(b99),
            us(s50),
            us(s90),
            us(s99),
            scoped.policies().count(),
            us(f50) / us(b50),
            us(f50) / us(s50),
            evaluated_policies(&bundle, &s.request, &snapshot).len()
        );
    }

    // The first request of a shape on a new snapshot: the engine partially
    // evaluates the scoped set once, then decides. Every sample builds a new
    // snapshot (untimed) so that no shape is cached.
    const COLD: usize = 2_000;
    println!();
    println!("first request of a shape on a new snapshot, µs, {COLD} samples each");
    let mut store = world.store();
    for s in &scenarios {
        let mut cold = Vec::with_capacity(COLD);
        for _ in 0..COLD {
            let d = store.dataset("air-quality").unwrap().clone();
            store.upsert_dataset(d);
            let fresh = store.snapshot().unwrap();
            let t = Instant::now();
            black_box(engine.decide(black_box(&s.request), &fresh));
            cold.push(t.elapsed());
        }
        let (c50, c90, c99) = percentiles(cold);
        println!(
            "{:<21} p50 {:>6.1}  p90 {:>6.1}  p99 {:>6.1}",
            s.name,
            c50.as_secs_f64() * 1e6,
            c90.as_secs_f64() * 1e6,
            c99.as_secs_f64() * 1e6
        );
    }
}
