//! Unit tests of the obligations book: records with history, flags once
//! (also after a reopen), the monitor driven by a manual clock.

use super::*;
use crate::clock::ManualClock;
use crate::pki::Role;
use crate::store::StoreOptions;

const W: i64 = 1_796_032_800_000; // 2026-11-30T10:00Z
const GRACE: i64 = 15 * 60_000;

fn operator() -> Principal {
    Principal {
        federation: "munich".into(),
        organisation: "stadt".into(),
        organisation_kind: OrgKind::City,
        subject: Subject::User("olga".into()),
        role: Some(Role::Operator),
        certificate_sha256: "stadt-olga".into(),
        not_after: i64::MAX,
        issuer_ca_spki_sha256: "stadt-ca".into(),
    }
}

fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> Obligations {
    let store = Store::open(path, &StoreOptions { cache_bytes: 1 << 20 }).unwrap();
    let d = Deliveries::open(store.clone()).unwrap();
    Obligations::open(store, d, clock, "stadt").unwrap()
}

fn new(org: &str) -> NewObligation {
    NewObligation {
        organisation: org.into(),
        dataset: "scooter-trips".into(),
        grace_ms: GRACE,
        from_ms: Some(W),
        until_ms: None,
    }
}

async fn deliver(o: &Obligations, window: i64, at: i64, outcome: Outcome) {
    o.deliveries()
        .record(&Delivery {
            organisation: "scooter-co".into(),
            dataset: "scooter-trips".into(),
            window_start_ms: window,
            at_ms: at,
            outcome,
        })
        .await
        .unwrap();
}

fn accepted() -> Outcome {
    Outcome::Accepted {
        rows: vec![("trips".into(), 2)],
    }
}

#[tokio::test]
async fn only_companies_and_utilities_are_obliged_and_names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_unix_ms(W - 60_000);
    let (audit, _s, _tx) = crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
    let o = open(&dir.path().join("o"), clock);
    for kind in [None, Some(OrgKind::City), Some(OrgKind::University), Some(OrgKind::Public)] {
        let e = o.record(&audit, &operator(), kind, new("x")).await.unwrap_err();
        assert!(matches!(e, ObligationsError::NotObligable(_)), "{e}");
    }
    let mut bad = new("scooter-co");
    bad.dataset = "a\nb".into();
    assert!(matches!(
        o.record(&audit, &operator(), Some(OrgKind::Company), bad)
            .await
            .unwrap_err(),
        ObligationsError::BadName { .. }
    ));
    let mut off = new("scooter-co");
    off.from_ms = Some(W + 1);
    assert!(matches!(
        o.record(&audit, &operator(), Some(OrgKind::Company), off)
            .await
            .unwrap_err(),
        ObligationsError::BadTime(_)
    ));
    let v = o
        .record(&audit, &operator(), Some(OrgKind::Company), new("scooter-co"))
        .await
        .unwrap();
    assert_eq!((v.id.as_str(), v.version, v.from_ms), ("obl-1", 1, W));
    assert!(v.recorded_by.starts_with("stadt/") && !v.recorded_by.contains("olga"));
    let dup = o
        .record(&audit, &operator(), Some(OrgKind::Company), new("scooter-co"))
        .await
        .unwrap_err();
    assert!(matches!(dup, ObligationsError::Duplicate { .. }), "{dup}");
    assert!(
        o.record(&audit, &operator(), Some(OrgKind::Utility), new("swm"))
            .await
            .is_ok()
    );
    assert_eq!(o.list().unwrap().len(), 2);
}

#[tokio::test]
async fn each_non_compliant_window_is_flagged_once_also_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_unix_ms(W - 60_000);
    let (audit, _s, _tx) = crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
    let path = dir.path().join("o");
    {
        let o = open(&path, clock.clone());
        o.record(&audit, &operator(), Some(OrgKind::Company), new("scooter-co"))
            .await
            .unwrap();
        // 10:00 delivered on time, 11:00 rejected, 12:00 nothing, 13:00
        // accepted late.
        deliver(&o, W, W + HOUR_MS + 60_000, accepted()).await;
        deliver(
            &o,
            W + HOUR_MS,
            W + 2 * HOUR_MS + 1,
            Outcome::Rejected {
                reasons: vec!["trip `t1` ends before it starts".into()],
                kept_as: Some("b1".into()),
            },
        )
        .await;
        // Nothing is due yet: the first deadline is 11:15.
        let (flags, next) = o.flag_due(&audit).await.unwrap();
        assert!(flags.is_empty());
        assert_eq!(next, Some(W + HOUR_MS + GRACE));
        clock.set_unix_ms(W + 3 * HOUR_MS + GRACE + 1); // past 12:00's deadline
        let before = audit.size();
        let (flags, next) = o.flag_due(&audit).await.unwrap();
        let got: Vec<(i64, Status)> = flags.iter().map(|f| (f.window_start_ms, f.status)).collect();
        assert_eq!(
            got,
            vec![(W + HOUR_MS, Status::Invalid), (W + 2 * HOUR_MS, Status::Missing)]
        );
        assert_eq!(flags[0].reasons, vec!["trip `t1` ends before it starts"]);
        assert_eq!(audit.size(), before + 2, "one entry per flag");
        assert_eq!(next, Some(W + 4 * HOUR_MS + GRACE));
        // Again: nothing new.
        assert!(o.flag_due(&audit).await.unwrap().0.is_empty());
        // 13:00 delivered late.
        deliver(&o, W + 3 * HOUR_MS, W + 4 * HOUR_MS + GRACE + 5, accepted()).await;
    }
    clock.set_unix_ms(W + 4 * HOUR_MS + GRACE + 10);
    let o = open(&path, clock.clone());
    let before = audit.size();
    let (flags, _) = o.flag_due(&audit).await.unwrap();
    assert_eq!(
        flags.iter().map(|f| (f.window_start_ms, f.status)).collect::<Vec<_>>(),
        vec![(W + 3 * HOUR_MS, Status::Late)]
    );
    assert_eq!(audit.size(), before + 1);
    // The flags are remembered: forgetting the judged mark does not flag
    // again.
    let mut b = WriteBatch::new();
    b.remove(&o.table, &judged_key("obl-1"));
    o.store.commit_durable(b).await.unwrap();
    assert!(o.flag_due(&audit).await.unwrap().0.is_empty());
    assert_eq!(audit.size(), before + 1);
    let entry = allmende_audit::Entry::decode(
        &audit.entry_bytes(flags[0].audit_sequence).unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(entry.action, FLAG_ACTION);
    assert_eq!(entry.resource, "scooter-trips@scooter-co/2026-11-30T13:00:00Z");
    assert_eq!(entry.policy_ids, vec!["status:late".to_owned()]);
    // Status shows all four windows (and the running one as pending).
    let rows = o
        .status(&StatusFilter {
            from_ms: Some(W),
            to_ms: Some(W + 5 * HOUR_MS),
            ..StatusFilter::default()
        })
        .unwrap();
    let got: Vec<(Status, Option<Status>)> =
        rows.iter().map(|r| (r.judgement.status, r.flagged)).collect();
    assert_eq!(
        got,
        vec![
            (Status::Delivered, None),
            (Status::Invalid, Some(Status::Invalid)),
            (Status::Missing, Some(Status::Missing)),
            (Status::Late, Some(Status::Late)),
            (Status::Pending, None),
        ]
    );
}

#[tokio::test]
async fn a_change_keeps_past_windows_under_the_old_version_and_an_end_stops_flags() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_unix_ms(W - 60_000);
    let (audit, _s, _tx) = crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
    let o = open(&dir.path().join("o"), clock.clone());
    o.record(&audit, &operator(), Some(OrgKind::Company), new("scooter-co"))
        .await
        .unwrap();
    // Accepted at 11:10: on time under 15 minutes of grace.
    deliver(&o, W, W + HOUR_MS + 10 * 60_000, accepted()).await;
    clock.set_unix_ms(W + HOUR_MS + 20 * 60_000);
    let v2 = o
        .change(
            &audit,
            &operator(),
            "obl-1",
            Change {
                grace_ms: Some(0),
                until_ms: None,
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!((v2.version, v2.effective_ms), (2, W + 2 * HOUR_MS));
    // Ending before the next window would rewrite the past: refused.
    let e = o
        .change(
            &audit,
            &operator(),
            "obl-1",
            Change {
                grace_ms: None,
                until_ms: Some(W + HOUR_MS),
            },
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ObligationsError::BadTime(_)), "{e}");
    let v3 = o
        .change(&audit, &operator(), "obl-1", Change::default(), true)
        .await
        .unwrap();
    assert_eq!((v3.version, v3.until_ms, v3.ended), (3, Some(W + 2 * HOUR_MS), true));
    assert!(matches!(
        o.change(&audit, &operator(), "obl-1", Change::default(), true)
            .await
            .unwrap_err(),
        ObligationsError::Ended(_)
    ));
    clock.set_unix_ms(W + 10 * HOUR_MS);
    let (flags, next) = o.flag_due(&audit).await.unwrap();
    // 10:00 delivered under the old grace; 11:00 missing; nothing after the end.
    assert_eq!(
        flags.iter().map(|f| (f.window_start_ms, f.version)).collect::<Vec<_>>(),
        vec![(W + HOUR_MS, 1)]
    );
    assert_eq!(next, None);
    assert_eq!(o.get("obl-1").unwrap().unwrap().versions.len(), 3);
}

/// The monitor flags at the deadline when the manual clock moves and the
/// node nudges it, without polling.
#[tokio::test]
async fn the_monitor_flags_when_the_clock_passes_a_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at_unix_ms(W - 60_000);
    let (audit, _s, _tx) = crate::audit::open_test_log(&dir.path().join("a"), clock.clone()).await;
    let o = Arc::new(open(&dir.path().join("o"), clock.clone()));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(o.clone().run(audit.clone(), rx));
    o.record(&audit, &operator(), Some(OrgKind::Company), new("scooter-co"))
        .await
        .unwrap();
    clock.set_unix_ms(W + HOUR_MS + GRACE + 1);
    o.nudge();
    let mut flagged = Vec::new();
    for _ in 0..200 {
        flagged = o.flags("obl-1").unwrap();
        if !flagged.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(flagged.len(), 1);
    assert_eq!(flagged[0].status, Status::Missing);
    stop.send(true).unwrap();
    task.await.unwrap();
}
