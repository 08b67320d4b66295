//! Obligations across real nodes with a manual clock:
//! - only the city's operator records an obligation at the city's node;
//!   scooter-co's operator and the city's DPO are refused, and each refusal
//!   is audited;
//! - deliveries recorded through the node's `Deliveries` give delivered,
//!   invalid, missing and late windows;
//! - each non-compliant window is flagged in the audit log exactly once,
//!   also across a restart of the city's node;
//! - the obliged company sees its own windows, never another company's;
//!   the city's DPO sees every company's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::{Clock, ManualClock};
use allmende::obligations::{Delivery, HOUR_MS, Outcome};
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, Entry};
use allmende_e2e::{audit_since, audit_size, connect_with, material};
use allmende_proto::v1 as pb;
use pb::obligations_client::ObligationsClient;
use tonic::transport::Channel;

const CITY: &str = "stadt-1";
const GRACE_S: u64 = 15 * 60;
const GRACE: i64 = 15 * 60_000;

async fn client(sb: &Sandbox, org: &str, user: &str) -> ObligationsClient<Channel> {
    let p = sb.profile(org, user).unwrap();
    let ch = connect_with(&sb.node(CITY).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap();
    ObligationsClient::new(ch)
}

fn rfc(ms: i64) -> String {
    allmende::timefmt::format_unix_ms(ms)
}

fn record(org: &str, dataset: &str, from: i64) -> pb::RecordObligationRequest {
    pb::RecordObligationRequest {
        organisation: org.into(),
        dataset: dataset.into(),
        cadence: "hour".into(),
        grace_seconds: GRACE_S,
        from: rfc(from),
        until: String::new(),
    }
}

async fn deliver(sb: &Sandbox, window: i64, at: i64, outcome: Outcome) {
    sb.node(CITY)
        .unwrap()
        .obligations
        .deliveries()
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
        rows: vec![("trips".into(), 12)],
    }
}

/// The flags in the city's whole audit log for `org`: (resource, policy ids).
fn flags(sb: &Sandbox, org: &str) -> Vec<(String, Vec<String>)> {
    audit_since(sb, CITY, 0)
        .into_iter()
        .filter(|e| e.action == "flag_obligation" && e.resource.contains(&format!("@{org}/")))
        .map(|e| (e.resource, e.policy_ids))
        .collect()
}

/// Waits until `id` has `n` flags at the city's node.
async fn flagged(sb: &Sandbox, id: &str, n: usize) {
    for _ in 0..500 {
        if sb.node(CITY).unwrap().obligations.flags(id).unwrap().len() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("`{id}` never had {n} flags");
}

fn denied(entries: &[Entry], org: &str, action: &str) -> bool {
    entries
        .iter()
        .any(|e| e.principal.org == org && e.action == action && e.decision == Some(Decision::Deny))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_city_obliges_scooter_co_and_flags_each_missed_window_once() {
    let clock = ManualClock::starting_now();
    let mut sb = Sandbox::start(SandboxSpec::munich(), None, clock.clone())
        .await
        .unwrap();
    let now = clock.now_unix_ms();
    let w = now - now.rem_euclid(HOUR_MS) + HOUR_MS; // the next UTC hour

    // Only the city's operator records.
    let before = audit_size(&sb, CITY);
    for (org, user) in [("scooter-co", "operator"), ("stadt", "dpo")] {
        let err = client(&sb, org, user)
            .await
            .record(record("scooter-co", "scooter-trips", w))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{org}/{user}");
    }
    let entries = audit_since(&sb, CITY, before);
    assert!(denied(&entries, "scooter-co", "manage_obligations"));
    assert!(denied(&entries, "stadt", "manage_obligations"));
    let mut city = client(&sb, "stadt", "operator").await;
    let o = city
        .record(record("scooter-co", "scooter-trips", w))
        .await
        .unwrap()
        .into_inner();
    let id = o.current.unwrap().id;
    // A university cannot be obliged.
    let err = city.record(record("tum", "papers", w)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("`tum`"), "{}", err.message());
    let other = city
        .record(record("versicherung-ag", "claims", w))
        .await
        .unwrap()
        .into_inner()
        .current
        .unwrap()
        .id;

    // Deliveries: 10:00 on time, 11:00 rejected, 12:00 only unavailable,
    // 13:00 accepted after its deadline.
    deliver(&sb, w, w + HOUR_MS + 60_000, accepted()).await;
    deliver(
        &sb,
        w + HOUR_MS,
        w + 2 * HOUR_MS + 60_000,
        Outcome::Rejected {
            reasons: vec!["trip `t-17` ends before it starts".into()],
            kept_as: Some("batch-1".into()),
        },
    )
    .await;
    deliver(
        &sb,
        w + 2 * HOUR_MS,
        w + 3 * HOUR_MS,
        Outcome::Unavailable {
            reason: "503 from the provider endpoint".into(),
        },
    )
    .await;
    clock.set_unix_ms(w + 3 * HOUR_MS + GRACE + 1_000);
    sb.node(CITY).unwrap().obligations.nudge();
    flagged(&sb, &id, 2).await;
    deliver(
        &sb,
        w + 3 * HOUR_MS,
        w + 4 * HOUR_MS + GRACE + 5_000,
        accepted(),
    )
    .await;
    clock.set_unix_ms(w + 4 * HOUR_MS + GRACE + 10_000);
    sb.node(CITY).unwrap().obligations.nudge();
    flagged(&sb, &id, 3).await;

    let expect = vec![
        (
            format!("scooter-trips@scooter-co/{}", rfc(w + HOUR_MS)),
            vec![
                "status:invalid".to_owned(),
                "reason:trip `t-17` ends before it starts".to_owned(),
            ],
        ),
        (
            format!("scooter-trips@scooter-co/{}", rfc(w + 2 * HOUR_MS)),
            vec![
                "status:missing".to_owned(),
                "reason:503 from the provider endpoint".to_owned(),
            ],
        ),
        (
            format!("scooter-trips@scooter-co/{}", rfc(w + 3 * HOUR_MS)),
            vec!["status:late".to_owned()],
        ),
    ];
    assert_eq!(flags(&sb, "scooter-co"), expect);
    // The other company delivered nothing: four missing windows.
    flagged(&sb, &other, 4).await;
    assert_eq!(flags(&sb, "versicherung-ag").len(), 4);

    // A restart of the city's node flags nothing again.
    sb.stop_node(CITY).await.unwrap();
    sb.start_node(CITY).await.unwrap();
    let node = sb.node(CITY).unwrap();
    let (again, _) = node.obligations.flag_due(&node.audit).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(flags(&sb, "scooter-co"), expect);
    assert_eq!(flags(&sb, "versicherung-ag").len(), 4);

    // scooter-co sees its own windows, not another company's.
    let status = |org: &str| pb::ObligationStatusRequest {
        organisation: org.into(),
        from: rfc(w),
        to: rfc(w + 5 * HOUR_MS),
        ..Default::default()
    };
    let mine = client(&sb, "scooter-co", "operator")
        .await
        .status(status(""))
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(&str, &str, &str)> = mine
        .windows
        .iter()
        .map(|x| {
            (
                x.organisation.as_str(),
                x.status.as_str(),
                x.flagged.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("scooter-co", "delivered", ""),
            ("scooter-co", "invalid", "invalid"),
            ("scooter-co", "missing", "missing"),
            ("scooter-co", "late", "late"),
            ("scooter-co", "pending", ""),
        ]
    );
    assert_eq!(
        mine.windows[1].reasons,
        vec!["trip `t-17` ends before it starts"]
    );
    let before = audit_size(&sb, CITY);
    let err = client(&sb, "scooter-co", "operator")
        .await
        .status(status("versicherung-ag"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(denied(
        &audit_since(&sb, CITY, before),
        "scooter-co",
        "read_compliance"
    ));
    let listed = client(&sb, "scooter-co", "operator")
        .await
        .list(pb::ListObligationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.obligations.len(), 1);
    // The city's DPO sees both companies; its steward nothing.
    let all = client(&sb, "stadt", "dpo")
        .await
        .status(status(""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.windows.len(), 10);
    let err = client(&sb, "stadt", "steward")
        .await
        .status(status(""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    sb.shutdown().await.unwrap();
}
