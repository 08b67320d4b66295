//! Stories 2, 3, 4 and 6 of the brief end to end, each on its own fresh
//! federation: the same steps `allmende demo --story N` runs (with their
//! own checks), then this file's assertions on the audit entries the nodes
//! hold, read from the logs themselves.
//!
//! The grantee's home node (TUM) records what its researchers received
//! through SWM's signed access notices; each test asserts TUM's audit
//! entries of their receipt as well.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::demo::stories::{
    self, ARCHIVE, HOUSEHOLD, INSURANCE_NON_USE, SMART_METER, federation,
};
use allmende::sandbox::Sandbox;
use allmende_audit::{Decision, Entry, EntryKind, GrantOp, ReleaseOutcome};
use allmende_e2e::{audit_since, audit_size};

fn grant_change<'a>(log: &'a [Entry], op: GrantOp, grant: &str) -> Option<&'a Entry> {
    log.iter().find(|e| {
        matches!(&e.kind, EntryKind::GrantChange { op: o } if *o == op)
            && e.grant_id.as_deref() == Some(grant)
    })
}

fn completions<'a>(log: &'a [Entry], grant: &str) -> Vec<&'a Entry> {
    log.iter()
        .filter(|e| {
            matches!(
                e.kind,
                EntryKind::ReleaseCompletion {
                    outcome: ReleaseOutcome::Completed,
                    ..
                }
            ) && e.grant_id.as_deref() == Some(grant)
        })
        .collect()
}

fn rows_released(e: &Entry) -> u64 {
    match e.kind {
        EntryKind::ReleaseCompletion { rows_released, .. } => rows_released,
        _ => panic!("not a completion: {e:?}"),
    }
}

fn denial<'a>(
    log: &'a [Entry],
    org: &str,
    action: &str,
    grant: Option<&str>,
    policy: &str,
) -> Option<&'a Entry> {
    log.iter().find(|e| {
        e.principal.org == org
            && e.action == action
            && e.decision == Some(Decision::Deny)
            && e.grant_id.as_deref() == grant
            && e.policy_ids.iter().any(|p| p == policy)
    })
}

/// TUM's audit entries recording notices received for `grant`, waited for
/// (up to about 30 s) until there are `n`: delivery is asynchronous.
async fn received_at_tum(sb: &Sandbox, from: u64, grant: &str, n: usize) -> Vec<Entry> {
    let mut got = Vec::new();
    for _ in 0..300 {
        got = audit_since(sb, "tum-1", from)
            .into_iter()
            .filter(|e| {
                matches!(
                    e.kind,
                    EntryKind::GrantChange {
                        op: GrantOp::NoticeReceived
                    }
                ) && e.grant_id.as_deref() == Some(grant)
            })
            .collect();
        if got.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Each was sent by SWM's node, about SWM's dataset.
    assert!(
        got.iter()
            .all(|e| e.principal.org == "swm" && e.resource == SMART_METER),
        "{got:?}"
    );
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_2_research_request_approval_and_pseudonymised_read() {
    let (sb, clock) = federation().await.unwrap();
    let from = audit_size(&sb, "swm-1");
    let tum_from = audit_size(&sb, "tum-1");
    let s = stories::story_2(&sb, &clock).await.unwrap();
    let g = &s.granted.grant;
    assert_eq!(s.release.rows, s.expected.rows);
    assert!(s.expected.households.contains(HOUSEHOLD));
    assert!(s.release.subjects.iter().all(|p| p.starts_with("p-")));

    // SWM's log, read from the store: request by tum, approval by swm's
    // DPO, the release to tum under the grant with its rows and subjects.
    let log = audit_since(&sb, "swm-1", from);
    let requested = log
        .iter()
        .find(|e| {
            matches!(
                &e.kind,
                EntryKind::GrantChange {
                    op: GrantOp::Requested
                }
            ) && e.request_id.as_deref() == Some(s.granted.request.id.as_str())
        })
        .unwrap();
    assert_eq!(requested.principal.org, "tum");
    assert_eq!(requested.resource, SMART_METER);
    assert_eq!(requested.purpose.as_deref(), Some("AcademicResearch"));
    let approved = grant_change(&log, GrantOp::Approved, &g.id).unwrap();
    assert_eq!(approved.principal.org, "swm");
    assert!(approved.sequence > requested.sequence);
    let done = completions(&log, &g.id);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].principal.org, "tum");
    assert_eq!(rows_released(done[0]), s.release.rows as u64);
    assert_eq!(done[0].subjects.len(), s.expected.households.len());
    assert!(done[0].sequence > approved.sequence);
    // The audit log keeps subjects only as keyed hashes.
    let swm = sb.node("swm-1").unwrap();
    for e in &log {
        assert!(!e.principal.user.as_deref().unwrap_or("").contains("alice"));
    }
    let hashed = swm.audit.subject_hash(HOUSEHOLD);
    assert!(done[0].subjects.contains(&hashed));
    // TUM's node received and audited the grant's creation and the release;
    // the release notice names SWM's completion entry.
    assert_eq!(received_at_tum(&sb, tum_from, &g.id, 2).await.len(), 2);
    let released = s
        .tum
        .notices
        .iter()
        .find(|n| n.kind == "data_released")
        .unwrap();
    assert_eq!(released.audit_sequence, done[0].sequence);
    assert_eq!(released.rows, s.release.rows as u64);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_3_wrong_purpose_other_dataset_and_expired_grant_are_denied() {
    let (sb, clock) = federation().await.unwrap();
    let from = audit_size(&sb, "swm-1");
    let tum_from = audit_size(&sb, "tum-1");
    let s = stories::story_3(&sb, &clock).await.unwrap();
    let g = s.grant.id.as_str();
    let log = audit_since(&sb, "swm-1", from);
    let purpose = denial(&log, "tum", "read", Some(g), "purpose-grant-mismatch").unwrap();
    assert_eq!(purpose.purpose.as_deref(), Some("Marketing"));
    assert_eq!(purpose.resource, SMART_METER);
    let other = denial(&log, "tum", "read", Some(g), "grant-other-dataset").unwrap();
    assert_eq!(other.resource, ARCHIVE);
    let expired = denial(&log, "tum", "read", Some(g), "grant-expired").unwrap();
    let recorded = grant_change(&log, GrantOp::Expired, g).unwrap();
    assert!(expired.time_ms > purpose.time_ms + 86_400_000);
    assert!(recorded.time_ms >= expired.time_ms - 1000);
    // Only the one read for the grant's purpose before its end released rows.
    assert_eq!(completions(&log, g).len(), 1);
    // TUM's node received and audited the grant's creation, the one
    // release and the expiry; no notice for the denied reads.
    assert_eq!(received_at_tum(&sb, tum_from, g, 3).await.len(), 3);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_4_withdrawal_excludes_the_household_and_it_sees_past_accesses() {
    let (sb, clock) = federation().await.unwrap();
    let from = audit_size(&sb, "swm-1");
    let tum_from = audit_size(&sb, "tum-1");
    let s = stories::story_4(&sb, &clock).await.unwrap();
    let g = s.granted.grant.id.as_str();
    let swm = sb.node("swm-1").unwrap();
    let hashed = swm.audit.subject_hash(HOUSEHOLD);
    let log = audit_since(&sb, "swm-1", from);
    let done = completions(&log, g);
    assert_eq!(done.len(), 2);
    assert!(done[0].subjects.contains(&hashed), "first release had it");
    assert!(!done[1].subjects.contains(&hashed), "second release had it");
    assert_eq!(
        rows_released(done[0]) - rows_released(done[1]),
        (s.before.rows - s.after.rows) as u64
    );
    // The withdrawal is audited between the two releases.
    let withdrawal = log
        .iter()
        .find(|e| {
            matches!(e.kind, EntryKind::ConsentChange { .. }) && e.action == "withdraw_consent"
        })
        .unwrap();
    assert!(done[0].sequence < withdrawal.sequence && withdrawal.sequence < done[1].sequence);
    // The household's history names the first release (org, purpose, grant).
    let listed: Vec<_> = s
        .history
        .iter()
        .filter(|e| e.kind == "release_completion" && e.grant_id == g)
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].sequence, done[0].sequence);
    assert_eq!(listed[0].organisation, "tum");
    assert_eq!(listed[0].purpose, "AcademicResearch");
    // TUM's node received and audited the grant's creation and both
    // releases.
    assert_eq!(received_at_tum(&sb, tum_from, g, 3).await.len(), 3);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_6_insurer_is_refused_even_with_a_grant() {
    let (sb, clock) = federation().await.unwrap();
    let from = audit_size(&sb, "swm-1");
    let forced = stories::story_6(&sb, &clock).await.unwrap();
    let log = audit_since(&sb, "swm-1", from);
    let asked = denial(
        &log,
        "versicherung-ag",
        "request_access",
        None,
        INSURANCE_NON_USE,
    )
    .unwrap();
    assert_eq!(asked.purpose.as_deref(), Some("InsuranceUnderwriting"));
    denial(
        &log,
        "versicherung-ag",
        "read",
        Some(forced.as_str()),
        INSURANCE_NON_USE,
    )
    .unwrap();
    // Nothing requested, approved or released for the insurer.
    assert!(!log.iter().any(|e| e.principal.org == "versicherung-ag"
        && matches!(
            e.kind,
            EntryKind::GrantChange { .. }
                | EntryKind::ReleaseIntent
                | EntryKind::ReleaseCompletion { .. }
        )));
    sb.shutdown().await.unwrap();
}
