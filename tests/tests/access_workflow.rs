//! The access workflow across real nodes: a TUM researcher asks SWM's node
//! for research access, SWM's DPO approves the exact request (by its hash),
//! the researcher reads under the grant (story 2); reads under it for
//! another purpose, after expiry or for another dataset are denied with the
//! deciding policies (story 3); hostile requests and approvals are refused
//! and audited; replays are idempotent; a restart keeps requests and grants.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::ManualClock;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, Entry, EntryKind, GrantOp};
use allmende_e2e::{connect_with, material};
use allmende_proto::v1 as pb;
use pb::access_client::AccessClient;
use pb::grants_client::GrantsClient;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const SMART_METER: &str = "smart-meter-readings";
const OTHER: &str = "smart-meter-readings-2024";
const PUBLIC: &str = "swm-environment-sensors";

async fn federation(clock: Arc<ManualClock>) -> Sandbox {
    let mut spec = SandboxSpec::munich();
    for o in &mut spec.orgs {
        match o.name.as_str() {
            "tum" => {
                o.users
                    .push(("bob".into(), allmende::pki::Role::Researcher));
            }
            "swm" => o
                .users
                .push(("carol".into(), allmende::pki::Role::Researcher)),
            _ => {}
        }
    }
    let sb = Sandbox::start(spec, None, clock).await.unwrap();
    sb.register_demo_datasets().await.unwrap();
    // Two more datasets at SWM: a second personal one (for "a grant of
    // another dataset") and a public one (which needs no request).
    let files = allmende_connectors::sample::write_demo_data(
        &sb.root.join("sample-data").join("more"),
        &allmende_connectors::sample::SampleSpec::default(),
    )
    .unwrap();
    let config = |name: &str| {
        files
            .datasets
            .iter()
            .find(|d| d.name == name)
            .unwrap()
            .config
            .clone()
    };
    let mut copy = allmende::demo::munich::smart_meter_readings();
    copy.id = OTHER.into();
    sb.register_dataset("swm", "steward", &copy, &config(SMART_METER))
        .await
        .unwrap();
    let mut public = allmende::demo::munich::air_quality();
    public.id = PUBLIC.into();
    sb.register_dataset("swm", "steward", &public, &config("air-quality"))
        .await
        .unwrap();
    sb
}

async fn channel(sb: &Sandbox, org: &str, user: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node("swm-1").unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

async fn grants(sb: &Sandbox, org: &str, user: &str) -> GrantsClient<Channel> {
    GrantsClient::new(channel(sb, org, user).await)
}

fn ask(key: &str) -> pb::RequestAccessRequest {
    pb::RequestAccessRequest {
        dataset: SMART_METER.into(),
        purpose: "AcademicResearch".into(),
        columns: vec!["household_id".into(), "kwh".into(), "timestamp".into()],
        days: 90,
        justification: "load profiles of consenting households".into(),
        idempotency_key: key.into(),
    }
}

fn entries_since(sb: &Sandbox, from: u64) -> Vec<Entry> {
    let log = &sb.node("swm-1").unwrap().audit;
    (from..log.status().size)
        .filter_map(|s| log.entry_bytes(s).unwrap())
        .map(|b| Entry::decode(&b).unwrap())
        .collect()
}

/// Waits (up to about 5 s) until SWM's audit log holds, after sequence
/// `from`, an entry for which `found` is true.
async fn audited_soon(sb: &Sandbox, from: u64, found: impl Fn(&Entry) -> bool) -> bool {
    for _ in 0..100 {
        if entries_since(sb, from).iter().any(&found) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn size(sb: &Sandbox) -> u64 {
    sb.node("swm-1").unwrap().audit.status().size
}

fn denied(entries: &[Entry], org: &str, action: &str) -> bool {
    entries
        .iter()
        .any(|e| e.principal.org == org && e.action == action && e.decision == Some(Decision::Deny))
}

fn grant_change(entries: &[Entry], op: GrantOp) -> Option<&Entry> {
    entries
        .iter()
        .find(|e| matches!(&e.kind, EntryKind::GrantChange { op: o } if *o == op))
}

struct Read {
    rows: usize,
    ids: BTreeSet<String>,
    columns: Vec<String>,
}

async fn read(
    sb: &Sandbox,
    org: &str,
    user: &str,
    req: pb::FetchRequest,
) -> Result<Read, tonic::Status> {
    let mut s = AccessClient::new(channel(sb, org, user).await)
        .fetch(req)
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await? {
        bytes.extend(m.arrow_ipc);
    }
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let columns = reader
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut rows = 0;
    let mut ids = BTreeSet::new();
    for b in reader {
        let b = b.unwrap();
        rows += b.num_rows();
        if let Some(c) = b.column_by_name("household_id") {
            let c = c
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            ids.extend(c.iter().flatten().map(str::to_owned));
        }
    }
    Ok(Read { rows, ids, columns })
}

fn under(grant: &str, purpose: &str) -> pb::FetchRequest {
    pb::FetchRequest {
        dataset: SMART_METER.into(),
        purpose: purpose.into(),
        grant_id: grant.into(),
        ..Default::default()
    }
}

fn policy_ids(err: &tonic::Status) -> Vec<String> {
    use prost::Message as _;
    pb::DecisionDetails::decode(err.details())
        .map(|d| d.deciding.into_iter().map(|p| p.id).collect())
        .unwrap_or_default()
}

/// Approves request `r` as SWM's DPO with the hash shown.
async fn approve(sb: &Sandbox, r: &pb::AccessRequestView) -> pb::GrantView {
    grants(sb, "swm", "dpo")
        .await
        .approve(pb::ApproveRequest {
            request_id: r.id.clone(),
            request_hash: r.request_hash.clone(),
            note: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_2_request_approval_and_read_story_3_denials() {
    let clock = ManualClock::starting_now();
    let sb = federation(clock.clone()).await;
    let from = size(&sb);

    // The researcher asks; the request is stored pending, with its hash.
    let mut alice = grants(&sb, "tum", "alice").await;
    let r = alice.request_access(ask("k-1")).await.unwrap().into_inner();
    assert_eq!(r.state, "pending");
    assert_eq!(r.request_hash.len(), 64);
    assert_eq!(r.requester, "allmende://munich/tum/user/alice");
    // Replayed: the same request, not a second one.
    let again = alice.request_access(ask("k-1")).await.unwrap().into_inner();
    assert_eq!(again.id, r.id);

    // SWM's DPO sees it pending, with what the grant would allow and who
    // may approve.
    let mut dpo = grants(&sb, "swm", "dpo").await;
    let pending = dpo
        .list_requests(pb::ListRequestsRequest {
            state: "pending".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(pending.len(), 1);
    let x = pending[0].explanation.clone().unwrap();
    assert!(x.may_approve, "{x:?}");
    assert!(
        x.policies
            .iter()
            .any(|p| p.id == "dpo-approves-own-org-requests"),
        "{x:?}"
    );
    assert!(x.approver.contains("data protection officer of `swm`"));
    assert!(x.grant_would_allow.contains("`tum` reads"));

    // Approved with the hash seen: a grant, signed by SWM's node.
    let g = approve(&sb, &pending[0]).await;
    assert_eq!(g.state, "active");
    assert_eq!(g.grantee_org, "tum");
    assert_eq!(g.not_after_unix - g.not_before_unix, 90 * 86_400);
    let key: String = sb
        .node("swm-1")
        .unwrap()
        .catalog
        .public_key()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(g.signer_public_key, key);
    // Replayed approval: the same grant.
    assert_eq!(approve(&sb, &pending[0]).await.id, g.id);
    assert_eq!(
        dpo.list_grants(pb::ListGrantsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .grants
            .len(),
        1
    );

    // The researcher reads under the grant: consenting households only,
    // pseudonymised, only the granted columns.
    let f = read(&sb, "tum", "alice", under(&g.id, "AcademicResearch"))
        .await
        .unwrap();
    let swm = sb.node("swm-1").unwrap();
    let permitted = swm.consent.permitted_subjects(
        SMART_METER,
        allmende_policies::Purpose::AcademicResearch,
        allmende::clock::Clock::now_unix_secs(&*clock),
    );
    assert!(f.rows > 0);
    assert!(f.ids.len() <= permitted.len());
    assert!(f.ids.iter().all(|i| i.starts_with("p-")), "{:?}", f.ids);
    assert_eq!(f.columns, vec!["household_id", "kwh", "timestamp"]);
    // A column outside the grant is refused, and audited.
    let before = size(&sb);
    let mut wider = under(&g.id, "AcademicResearch");
    wider.columns = vec!["kwh".into(), "district".into()];
    let err = read(&sb, "tum", "alice", wider).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("`district`"), "{}", err.message());
    assert!(denied(&entries_since(&sb, before), "tum", "read"));

    // SWM's audit log holds the request, the approval and the release.
    let log = entries_since(&sb, from);
    let requested = grant_change(&log, GrantOp::Requested).unwrap();
    assert_eq!(requested.principal.org, "tum");
    assert_eq!(requested.request_id.as_deref(), Some(r.id.as_str()));
    let approved = grant_change(&log, GrantOp::Approved).unwrap();
    assert_eq!(approved.principal.org, "swm");
    assert_eq!(approved.grant_id.as_deref(), Some(g.id.as_str()));
    assert!(log.iter().any(|e| {
        e.action == "request_access"
            && e.decision == Some(Decision::Allow)
            && e.policy_ids
                .contains(&"request-access-declared-purpose".to_owned())
    }));
    assert!(
        log.iter()
            .any(|e| matches!(e.kind, EntryKind::ReleaseIntent)
                && e.grant_id.as_deref() == Some(g.id.as_str()))
    );

    // Story 3: another purpose, another dataset, after expiry — denied with
    // the deciding policies.
    let err = read(&sb, "tum", "alice", under(&g.id, "Marketing"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        policy_ids(&err).contains(&"purpose-grant-mismatch".to_owned()),
        "{:?}",
        policy_ids(&err)
    );
    let mut other = under(&g.id, "AcademicResearch");
    other.dataset = OTHER.into();
    let err = read(&sb, "tum", "alice", other).await.err().unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        policy_ids(&err).contains(&"grant-other-dataset".to_owned()),
        "{:?}",
        policy_ids(&err)
    );
    // A one-day grant, read after its day (certificates last 30 days).
    let mut short = ask("k-short");
    short.days = 1;
    let s = alice.request_access(short).await.unwrap().into_inner();
    let short = approve(&sb, &s).await;
    read(&sb, "tum", "alice", under(&short.id, "AcademicResearch"))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(86_400 + 60));
    let err = read(&sb, "tum", "alice", under(&short.id, "AcademicResearch"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        policy_ids(&err).contains(&"grant-expired".to_owned()),
        "{:?}",
        policy_ids(&err)
    );
    // The expiry timer records the expiry, audited (woken here because the
    // manual clock jumped; a real clock wakes it at the grant's end).
    let before = size(&sb);
    sb.node("swm-1").unwrap().grants.nudge();
    let recorded = audited_soon(&sb, before, |e| {
        matches!(
            &e.kind,
            EntryKind::GrantChange {
                op: GrantOp::Expired
            }
        ) && e.grant_id.as_deref() == Some(short.id.as_str())
    })
    .await;
    assert!(recorded, "no audited expiry");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_and_approvals_are_refused_and_audited() {
    let clock = ManualClock::starting_now();
    let sb = federation(clock).await;
    let mut alice = grants(&sb, "tum", "alice").await;
    let r = alice.request_access(ask("k-1")).await.unwrap().into_inner();

    // 10 000 days: the maximum is named.
    let mut long = ask("k-long");
    long.days = 10_000;
    let err = alice.request_access(long).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("at most 365 days"),
        "{}",
        err.message()
    );
    // A public dataset needs no request; nothing is stored.
    let mut public = ask("k-public");
    public.dataset = PUBLIC.into();
    public.columns.clear();
    let err = alice.request_access(public).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("no request is needed"),
        "{}",
        err.message()
    );
    // The same key for something else.
    let mut changed = ask("k-1");
    changed.days = 30;
    let err = alice.request_access(changed).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let approve_as = |org: &'static str, user: &'static str, id: String, hash: String| {
        let sb = &sb;
        async move {
            grants(sb, org, user)
                .await
                .approve(pb::ApproveRequest {
                    request_id: id,
                    request_hash: hash,
                    note: String::new(),
                    ..Default::default()
                })
                .await
        }
    };
    // A request that does not exist.
    let before = size(&sb);
    let err = approve_as("swm", "dpo", "00".repeat(16), r.request_hash.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(denied(
        &entries_since(&sb, before),
        "swm",
        "approve_request"
    ));
    // TUM's DPO approving SWM's request (another org's officer).
    let before = size(&sb);
    let err = approve_as("tum", "dpo", r.id.clone(), r.request_hash.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        policy_ids(&err).contains(&"approval-only-by-owner".to_owned()),
        "{:?}",
        policy_ids(&err)
    );
    assert!(denied(
        &entries_since(&sb, before),
        "tum",
        "approve_request"
    ));
    // An SWM researcher (not the DPO) approving personal data.
    let err = approve_as("swm", "carol", r.id.clone(), r.request_hash.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // The requester approving its own request.
    let err = approve_as("tum", "alice", r.id.clone(), r.request_hash.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // An altered request: the hash differs from what is stored.
    let before = size(&sb);
    let mut altered = r.request_hash.clone();
    altered.replace_range(0..1, if altered.starts_with('0') { "1" } else { "0" });
    let err = approve_as("swm", "dpo", r.id.clone(), altered)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("the request changed"),
        "{}",
        err.message()
    );
    let after = entries_since(&sb, before);
    assert!(after.iter().any(|e| e.action == "approve_request"
        && e.decision == Some(Decision::Deny)
        && e.policy_ids == ["request-changed"]));
    assert!(grant_change(&after, GrantOp::Approved).is_none());

    // Approved properly; then guessed grant ids and another grantee.
    let g = approve(&sb, &r).await;
    let err = read(
        &sb,
        "tum",
        "alice",
        under(&"ab".repeat(16), "AcademicResearch"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = read(
        &sb,
        "versicherung-ag",
        "analyst",
        under(&g.id, "AcademicResearch"),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // Revoked: the next read is denied.
    let mut dpo = grants(&sb, "swm", "dpo").await;
    let err = grants(&sb, "tum", "dpo")
        .await
        .revoke(pb::RevokeRequest {
            grant_id: g.id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let revoked = dpo
        .revoke(pb::RevokeRequest {
            grant_id: g.id.clone(),
            reason: "end of project".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, "revoked");
    let err = read(&sb, "tum", "alice", under(&g.id, "AcademicResearch"))
        .await
        .err()
        .unwrap();
    assert!(
        policy_ids(&err).contains(&"grant-not-active".to_owned()),
        "{:?}",
        policy_ids(&err)
    );
    sb.shutdown().await.unwrap();
}

/// Two grants over the same rows give disjoint pseudonyms: they cannot be
/// joined on the subject column.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_grants_over_the_same_rows_give_disjoint_pseudonyms() {
    let sb = federation(ManualClock::starting_now()).await;
    let mut alice = grants(&sb, "tum", "alice").await;
    let mut bob = grants(&sb, "tum", "bob").await;
    let a = alice.request_access(ask("a")).await.unwrap().into_inner();
    let b = bob.request_access(ask("b")).await.unwrap().into_inner();
    let ga = approve(&sb, &a).await;
    let gb = approve(&sb, &b).await;
    let ra = read(&sb, "tum", "alice", under(&ga.id, "AcademicResearch"))
        .await
        .unwrap();
    let rb = read(&sb, "tum", "bob", under(&gb.id, "AcademicResearch"))
        .await
        .unwrap();
    assert_eq!(ra.rows, rb.rows);
    assert_eq!(ra.ids.len(), rb.ids.len());
    assert!(!ra.ids.is_empty());
    assert!(
        ra.ids.is_disjoint(&rb.ids),
        "pseudonyms shared across grants"
    );
    sb.shutdown().await.unwrap();
}

/// A restart keeps requests and grants, and reads under the grant work
/// again (the grant is mirrored into the policy entities at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_keeps_requests_and_grants() {
    let mut sb = federation(ManualClock::starting_now()).await;
    let mut alice = grants(&sb, "tum", "alice").await;
    let r = alice.request_access(ask("k")).await.unwrap().into_inner();
    let mut other = ask("k2");
    other.days = 30;
    alice.request_access(other).await.unwrap();
    let g = approve(&sb, &r).await;
    sb.stop_node("swm-1").await.unwrap();
    sb.start_node("swm-1").await.unwrap();
    sb.register_demo_datasets().await.ok();
    let mut dpo = grants(&sb, "swm", "dpo").await;
    let back = dpo
        .get_request(pb::GetRequestRequest {
            request_id: r.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.state, "approved");
    assert_eq!(back.grant_id, g.id);
    let list = dpo
        .list_requests(pb::ListRequestsRequest {
            state: "pending".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(list.len(), 1, "the other request is still pending");
    let f = read(&sb, "tum", "alice", under(&g.id, "AcademicResearch"))
        .await
        .unwrap();
    assert!(f.rows > 0);
    // The replayed approval after the restart: the same grant.
    assert_eq!(approve(&sb, &r).await.id, g.id);
    sb.shutdown().await.unwrap();
}

/// Revoking a grant ends the streams reading under it with an error, and
/// the release's completion is audited as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_ends_a_stream_in_flight() {
    let sb = federation(ManualClock::starting_now()).await;
    // More rows of the same households (their consent records hold), so
    // that the page spans many messages.
    sb.register_sample(
        SMART_METER,
        &allmende_connectors::sample::SampleSpec {
            days: 10,
            ..Default::default()
        },
        "big",
    )
    .await
    .unwrap();
    let mut alice = grants(&sb, "tum", "alice").await;
    let r = alice.request_access(ask("k")).await.unwrap().into_inner();
    let g = approve(&sb, &r).await;
    let before = size(&sb);
    let mut s = AccessClient::new(channel(&sb, "tum", "alice").await)
        .fetch(under(&g.id, "AcademicResearch"))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert!(
        first.summary.is_none(),
        "the page is longer than one message"
    );
    grants(&sb, "swm", "dpo")
        .await
        .revoke(pb::RevokeRequest {
            grant_id: g.id.clone(),
            reason: "stop".into(),
        })
        .await
        .unwrap();
    let mut messages = 1;
    let err = loop {
        match s.message().await {
            Ok(Some(m)) => {
                assert!(m.summary.is_none(), "the page completed despite revocation");
                messages += 1;
            }
            Ok(None) => panic!("the stream ended without an error"),
            Err(e) => break e,
        }
    };
    assert!(messages < 10, "{messages} messages after revocation");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("revoked"), "{}", err.message());
    // The completion is audited as aborted.
    let aborted = audited_soon(&sb, before, |e| {
        matches!(
            e.kind,
            EntryKind::ReleaseCompletion {
                outcome: allmende_audit::ReleaseOutcome::Aborted,
                ..
            }
        ) && e.grant_id.as_deref() == Some(g.id.as_str())
    })
    .await;
    assert!(aborted, "no aborted completion audited");
    sb.shutdown().await.unwrap();
}

/// The command line: the researcher asks SWM's node, SWM's DPO sees it
/// pending with its explanation, approves what was shown, lists the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_command_line_requests_shows_and_approves() {
    use allmende::cli::access_cmd::{AccessCmd, Target, output};
    let sb = federation(ManualClock::starting_now()).await;
    let profile = |org: &str, user: &str| {
        Some(
            sb.root
                .join(org)
                .join("users")
                .join(format!("{user}.profile.toml")),
        )
    };
    let swm = sb.node("swm-1").unwrap().grpc_endpoint();
    let at = |org: &str, user: &str| Target {
        profile: profile(org, user),
        endpoint: Some(swm.clone()),
    };
    let out = output(
        AccessCmd::Request {
            dataset: SMART_METER.into(),
            purpose: "AcademicResearch".into(),
            days: 90,
            columns: vec!["household_id".into(), "kwh".into()],
            justification: "load profiles".into(),
            idempotency_key: None,
            target: at("tum", "alice"),
        },
        true,
    )
    .await
    .unwrap();
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["state"], "pending");

    let pending = output(
        AccessCmd::Pending {
            all: false,
            target: at("swm", "dpo"),
        },
        false,
    )
    .await
    .unwrap();
    assert!(pending.contains(&id), "{pending}");
    assert!(pending.contains("you may approve it"), "{pending}");
    assert!(
        pending.contains("dpo-approves-own-org-requests"),
        "{pending}"
    );

    let approved = output(
        AccessCmd::Approve {
            request_id: id.clone(),
            note: String::new(),
            delete_after: Some("2099-01-01".into()),
            notify_on_use: true,
            aggregate_only: false,
            target: at("swm", "dpo"),
        },
        false,
    )
    .await
    .unwrap();
    assert!(approved.starts_with("approved:"), "{approved}");
    assert!(
        approved.contains("obligations: delete by 2099-01-01")
            && approved.contains("notify the owner's DPO on use")
            && !approved.contains("aggregates only"),
        "{approved}"
    );
    // The DPO's views of the duty the grant created and its notice.
    let duties = output(
        AccessCmd::Duties {
            org: "tum".into(),
            target: at("swm", "dpo"),
        },
        false,
    )
    .await
    .unwrap();
    assert!(
        duties.contains("(open)") && duties.contains("`tum` deletes `smart-meter-readings`"),
        "{duties}"
    );
    let notices = output(
        AccessCmd::Notices {
            direction: "sent".into(),
            target: at("swm", "dpo"),
        },
        false,
    )
    .await
    .unwrap();
    assert!(notices.contains("sent grant_created"), "{notices}");
    assert!(approved.contains("`tum`"), "{approved}");

    // Not the DPO: refused, as a sentence with the refusal exit code.
    let err = output(
        AccessCmd::Revoke {
            grant_id: "00".repeat(16),
            reason: "x".into(),
            target: at("tum", "alice"),
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, allmende::cli::exit::REFUSED, "{}", err.message);

    let grants = output(
        AccessCmd::Grants {
            state: "active".into(),
            target: at("swm", "dpo"),
        },
        true,
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&grants).unwrap();
    assert_eq!(v["grants"].as_array().unwrap().len(), 1);
    sb.shutdown().await.unwrap();
}

/// Removing a dataset that has requests and grants leaves the node's other
/// decisions intact (the policy entities stay consistent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_granted_dataset_keeps_other_decisions_working() {
    let sb = federation(ManualClock::starting_now()).await;
    let mut alice = grants(&sb, "tum", "alice").await;
    let r = alice.request_access(ask("k")).await.unwrap().into_inner();
    approve(&sb, &r).await;
    alice.request_access(ask("k2")).await.unwrap();
    pb::connectors_client::ConnectorsClient::new(channel(&sb, "swm", "steward").await)
        .remove(pb::RemoveConnectorRequest {
            dataset: SMART_METER.into(),
        })
        .await
        .unwrap();
    let mut other = ask("k3");
    other.dataset = OTHER.into();
    let r = alice.request_access(other).await;
    assert!(r.is_ok(), "{r:?}");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_visible_to_their_requester_and_the_officers_who_decide() {
    let sb = federation(ManualClock::starting_now()).await;
    // An internal (non-personal) dataset at SWM: its steward decides.
    let files = allmende_connectors::sample::write_demo_data(
        &sb.root.join("sample-data").join("internal"),
        &allmende_connectors::sample::SampleSpec::default(),
    )
    .unwrap();
    let config = files
        .datasets
        .iter()
        .find(|d| d.name == "air-quality")
        .unwrap()
        .config
        .clone();
    let mut internal = allmende::demo::munich::air_quality();
    internal.id = "district-heating-load".into();
    internal.classification = allmende_policies::Classification::Internal;
    internal.access_rights = allmende::catalog::entry::AccessRights::NonPublic;
    internal.public_space_origin = false;
    internal
        .allowed_purposes
        .insert(allmende_policies::Purpose::AcademicResearch);
    sb.register_dataset("swm", "steward", &internal, &config)
        .await
        .unwrap();

    let mut alice = grants(&sb, "tum", "alice").await;
    let personal = alice.request_access(ask("v-1")).await.unwrap().into_inner();
    let mut heating = ask("v-2");
    heating.dataset = "district-heating-load".into();
    heating.columns = vec![];
    let heating = alice.request_access(heating).await.unwrap().into_inner();

    // The steward sees (and may approve) only the request for internal data.
    let mut steward = grants(&sb, "swm", "steward").await;
    let seen = steward
        .list_requests(pb::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .requests;
    let ids: Vec<&str> = seen.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec![heating.id.as_str()], "{seen:?}");
    let err = steward
        .get_request(pb::GetRequestRequest {
            request_id: personal.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let granted = steward
        .approve(pb::ApproveRequest {
            request_id: heating.id.clone(),
            request_hash: heating.request_hash.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(granted.dataset, "district-heating-load");

    // The DPO sees both; the requester sees her own, with their states.
    let dpo_seen = grants(&sb, "swm", "dpo")
        .await
        .list_requests(pb::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(dpo_seen.len(), 2);
    let mine = alice
        .list_requests(pb::ListRequestsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(mine.len(), 2);
    let own = alice
        .get_request(pb::GetRequestRequest {
            request_id: heating.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.state, "approved");

    // Another researcher of the same university, SWM's operator and an
    // unknown id asked by a non-officer: refused and audited.
    let from = size(&sb);
    let mut bob = grants(&sb, "tum", "bob").await;
    let err = bob
        .list_requests(pb::ListRequestsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = bob
        .get_request(pb::GetRequestRequest {
            request_id: personal.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = grants(&sb, "swm", "carol")
        .await
        .get_request(pb::GetRequestRequest {
            request_id: "0123456789abcdef0123456789abcdef".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        audited_soon(&sb, from, |e| e.principal.org == "tum"
            && e.action == "view_request"
            && e.decision == Some(allmende_audit::Decision::Deny))
        .await
    );
    sb.shutdown().await.unwrap();
}
