//! Both sides keep a record: SWM's node (the owner) sends TUM's node (the
//! grantee's home) signed access notices for a grant's creation, each
//! release, its revocation; TUM audits and stores them and its DPO lists
//! them. Notices survive a stopped receiver and a restarted sender; forged
//! notices are refused and audited. Obligations (notify-on-use,
//! aggregate-only) and deletion duties (attest, overdue blocks approvals).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::catalog::NodeSigner;
use allmende::clock::ManualClock;
use allmende::grants::{Direction, Grants};
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, Entry, EntryKind, GrantOp};
use allmende_e2e::{audit_since, audit_size, connect_with, material};
use allmende_proto::v1 as pb;
use pb::grants_client::GrantsClient;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const SMART_METER: &str = "smart-meter-readings";

async fn federation(clock: Arc<ManualClock>) -> Sandbox {
    let sb = Sandbox::start(SandboxSpec::munich(), None, clock)
        .await
        .unwrap();
    sb.register_demo_datasets().await.unwrap();
    sb
}

/// A user's channel to `node`.
async fn channel(sb: &Sandbox, node: &str, org: &str, user: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

async fn grants(sb: &Sandbox, node: &str, org: &str, user: &str) -> GrantsClient<Channel> {
    GrantsClient::new(channel(sb, node, org, user).await)
}

/// A node's own certificate, dialling `to`.
async fn as_node(sb: &Sandbox, org: &str, node: &str, to: &str) -> GrantsClient<Channel> {
    let endpoint = sb.node(to).unwrap().grpc_endpoint();
    let p = sb.node_profile(org, node, &endpoint);
    GrantsClient::new(connect_with(&endpoint, &material(&p)).await.unwrap())
}

fn op_count(entries: &[Entry], op: GrantOp) -> usize {
    entries
        .iter()
        .filter(|e| matches!(&e.kind, EntryKind::GrantChange { op: o } if *o == op))
        .count()
}

/// A request by TUM's researcher, approved by SWM's DPO with `obligations`.
async fn granted(sb: &Sandbox, key: &str, obligations: pb::ApproveRequest) -> pb::GrantView {
    granted_for(sb, key, 90, obligations).await
}

/// [`granted`] for `days`.
async fn granted_for(
    sb: &Sandbox,
    key: &str,
    days: u32,
    obligations: pb::ApproveRequest,
) -> pb::GrantView {
    let r = grants(sb, "swm-1", "tum", "alice")
        .await
        .request_access(pb::RequestAccessRequest {
            dataset: SMART_METER.into(),
            purpose: "AcademicResearch".into(),
            columns: vec!["household_id".into(), "kwh".into(), "timestamp".into()],
            justification: "load profiles".into(),
            idempotency_key: key.into(),
            days,
        })
        .await
        .unwrap()
        .into_inner();
    grants(sb, "swm-1", "swm", "dpo")
        .await
        .approve(pb::ApproveRequest {
            request_id: r.id,
            request_hash: r.request_hash,
            ..obligations
        })
        .await
        .unwrap()
        .into_inner()
}

async fn read(sb: &Sandbox, grant: &str) -> Result<u64, tonic::Status> {
    let mut s = pb::access_client::AccessClient::new(channel(sb, "swm-1", "tum", "alice").await)
        .fetch(pb::FetchRequest {
            dataset: SMART_METER.into(),
            purpose: "AcademicResearch".into(),
            grant_id: grant.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut seq = 0;
    while let Some(m) = s.message().await? {
        if let Some(summary) = m.summary {
            seq = summary.audit_sequence;
        }
    }
    Ok(seq)
}

/// TUM's DPO's list of received notices.
async fn received(sb: &Sandbox) -> Vec<pb::NoticeView> {
    grants(sb, "tum-1", "tum", "dpo")
        .await
        .list_notices(pb::ListNoticesRequest {
            direction: "received".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notices
}

/// Waits (up to about 30 s) until TUM's DPO sees `n` received notices.
async fn received_soon(sb: &Sandbox, n: usize) -> Vec<pb::NoticeView> {
    for _ in 0..300 {
        let got = received(sb).await;
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    received(sb).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn story_2_is_recorded_on_both_nodes() {
    let clock = ManualClock::starting_now();
    let sb = federation(clock).await;
    let swm_from = audit_size(&sb, "swm-1");
    let tum_from = audit_size(&sb, "tum-1");

    let g = granted(
        &sb,
        "k-1",
        pb::ApproveRequest {
            notify_on_use: true,
            ..Default::default()
        },
    )
    .await;
    assert!(g.notify_on_use && !g.aggregate_only);
    assert_eq!(g.delete_after_unix, g.not_after_unix);
    let seq = read(&sb, &g.id).await.unwrap();

    // TUM received the grant's creation and the release, and audited both.
    let got = received_soon(&sb, 2).await;
    let mut kinds: Vec<&str> = got.iter().map(|n| n.kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, vec!["data_released", "grant_created"], "{got:?}");
    let released = got.iter().find(|n| n.kind == "data_released").unwrap();
    assert_eq!(released.grant_id, g.id);
    assert_eq!(released.owner, "swm");
    assert_eq!(released.outcome, "completed");
    assert!(released.rows > 0);
    assert_eq!(released.columns, vec!["household_id", "kwh", "timestamp"]);
    assert!(released.from_node.ends_with("/swm/node/swm-1"));
    let tum_log = audit_since(&sb, "tum-1", tum_from);
    assert_eq!(op_count(&tum_log, GrantOp::NoticeReceived), 2);
    assert!(tum_log.iter().all(|e| {
        !matches!(
            e.kind,
            EntryKind::GrantChange {
                op: GrantOp::NoticeReceived
            }
        ) || (e.principal.org == "swm" && e.grant_id.as_deref() == Some(g.id.as_str()))
    }));
    // The audit sequence named is the release's completion on SWM's node.
    let swm_log = audit_since(&sb, "swm-1", swm_from);
    let completion = swm_log
        .iter()
        .find(|e| matches!(e.kind, EntryKind::ReleaseCompletion { .. }))
        .unwrap();
    assert_eq!(released.audit_sequence, completion.sequence);
    assert!(seq > 0);
    assert!(op_count(&swm_log, GrantOp::Approved) == 1);

    // SWM's DPO sees the sent notices delivered, and the notify-on-use one.
    let mut swm_dpo = grants(&sb, "swm-1", "swm", "dpo").await;
    let sent = swm_dpo
        .list_notices(pb::ListNoticesRequest {
            direction: "sent".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notices;
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|n| n.state == "delivered"), "{sent:?}");
    let own = swm_dpo
        .list_notices(pb::ListNoticesRequest {
            direction: "own".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .notices;
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].kind, "data_released");

    // Only a DPO lists notices: TUM's researcher is refused.
    let err = grants(&sb, "tum-1", "tum", "alice")
        .await
        .list_notices(pb::ListNoticesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Revocation reaches TUM too.
    swm_dpo
        .revoke(pb::RevokeRequest {
            grant_id: g.id.clone(),
            reason: "study ended".into(),
        })
        .await
        .unwrap();
    let got = received_soon(&sb, 3).await;
    let revoked = got.iter().find(|n| n.kind == "grant_revoked").unwrap();
    assert_eq!(revoked.reason, "study ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notice_for_a_stopped_node_is_delivered_after_restarts() {
    let clock = ManualClock::starting_now();
    let mut sb = federation(clock).await;
    sb.stop_node("tum-1").await.unwrap();
    let g = granted(&sb, "k-1", pb::ApproveRequest::default()).await;
    let swm = sb.node("swm-1").unwrap();
    let waiting = swm.grants.undelivered().unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].body.grant_id, g.id);

    // The sender restarts with the notice still in its outbox.
    sb.stop_node("swm-1").await.unwrap();
    sb.start_node("swm-1").await.unwrap();
    assert_eq!(
        sb.node("swm-1")
            .unwrap()
            .grants
            .undelivered()
            .unwrap()
            .len(),
        1
    );
    // The receiver comes back: the notice arrives, once.
    sb.start_node("tum-1").await.unwrap();
    let got = received_soon(&sb, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].grant_id, g.id);
    assert_eq!(got[0].kind, "grant_created");
    for _ in 0..100 {
        if sb
            .node("swm-1")
            .unwrap()
            .grants
            .undelivered()
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sb.node("swm-1")
            .unwrap()
            .grants
            .undelivered()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_notices_are_refused_and_audited_and_replays_are_idempotent() {
    let clock = ManualClock::starting_now();
    let sb = federation(clock).await;
    granted(&sb, "k-1", pb::ApproveRequest::default()).await;
    received_soon(&sb, 1).await;
    let swm = sb.node("swm-1").unwrap();
    let genuine = swm
        .grants
        .list_notices(Some(Direction::Sent))
        .unwrap()
        .remove(0);
    let signed = Grants::signed(swm.catalog.signer(), &genuine).unwrap();
    let request =
        |body: Vec<u8>, signature: Vec<u8>, public_key: Vec<u8>| pb::DeliverNoticeRequest {
            body,
            signature,
            public_key,
        };

    // A replay of the genuine notice: acknowledged, nothing written.
    let before = audit_size(&sb, "tum-1");
    let ack = as_node(&sb, "swm", "swm-1", "tum-1")
        .await
        .deliver_notice(request(
            signed.body.clone(),
            signed.signature.clone(),
            signed.public_key.clone(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.already_stored);
    let log = audit_since(&sb, "tum-1", before);
    assert_eq!(op_count(&log, GrantOp::NoticeReceived), 0, "{log:?}");
    assert_eq!(received(&sb).await.len(), 1);

    let refused = |client: GrantsClient<Channel>, req: pb::DeliverNoticeRequest| {
        let sb = &sb;
        async move {
            let mut client = client;
            let before = audit_size(sb, "tum-1");
            let err = client.deliver_notice(req).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
            let log = audit_since(sb, "tum-1", before);
            assert!(
                log.iter().any(|e| e.decision == Some(Decision::Deny)),
                "refusal audited: {log:?}"
            );
            err
        }
    };
    // A bad signature from SWM's node.
    let mut bad = signed.signature.clone();
    bad[0] ^= 1;
    let e = refused(
        as_node(&sb, "swm", "swm-1", "tum-1").await,
        request(signed.body.clone(), bad, signed.public_key.clone()),
    )
    .await;
    assert!(
        e.message().contains("signature") || e.message().contains("key"),
        "{e:?}"
    );
    // A person's certificate: refused by the policies.
    let e = refused(
        grants(&sb, "tum-1", "swm", "dpo").await,
        request(
            signed.body.clone(),
            signed.signature.clone(),
            signed.public_key.clone(),
        ),
    )
    .await;
    assert!(e.message().contains("denied"), "{e:?}");
    // A node of another organisation claiming to be SWM, with its own key.
    let (key, _) = NodeSigner::generate().unwrap();
    let mut claimed = genuine.clone();
    claimed.body.id = "ab".repeat(16);
    let forged = Grants::signed(&key, &claimed).unwrap();
    let e = refused(
        as_node(&sb, "scooter-co", "scooter-co-1", "tum-1").await,
        request(forged.body, forged.signature, forged.public_key),
    )
    .await;
    assert!(e.message().contains("names owner `swm`"), "{e:?}");
    assert_eq!(received(&sb).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duties_are_attested_by_the_grantee_and_overdue_ones_block_approvals() {
    let clock = ManualClock::starting_now();
    let sb = federation(clock.clone()).await;
    // One day (user certificates last 30 days: the clock moves 2 days).
    let g = granted_for(&sb, "k-1", 1, pb::ApproveRequest::default()).await;
    let mut swm_dpo = grants(&sb, "swm-1", "swm", "dpo").await;
    let duties = swm_dpo
        .list_duties(pb::ListDutiesRequest { org: "tum".into() })
        .await
        .unwrap()
        .into_inner()
        .duties;
    assert_eq!(duties.len(), 1);
    assert_eq!(duties[0].grant_id, g.id);
    assert_eq!(duties[0].state, "open");
    assert_eq!(duties[0].due_unix, g.delete_after_unix);

    // Past delete-after: overdue; a new request by tum is shown blocked and
    // its approval refused, naming the duty.
    clock.advance(Duration::from_secs(2 * 86_400));
    let r = grants(&sb, "swm-1", "tum", "alice")
        .await
        .request_access(pb::RequestAccessRequest {
            dataset: SMART_METER.into(),
            purpose: "AcademicResearch".into(),
            days: 30,
            idempotency_key: "k-2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let shown = swm_dpo
        .get_request(pb::GetRequestRequest {
            request_id: r.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        shown
            .explanation
            .unwrap()
            .approver
            .contains("overdue deletion duty"),
    );
    let before = audit_size(&sb, "swm-1");
    let err = swm_dpo
        .approve(pb::ApproveRequest {
            request_id: r.id.clone(),
            request_hash: r.request_hash.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&duties[0].id), "{err:?}");
    assert!(audit_since(&sb, "swm-1", before).iter().any(|e| {
        e.decision == Some(Decision::Deny)
            && e.policy_ids.contains(&"overdue-deletion-duty".to_owned())
    }));

    // Another organisation cannot attest tum's duty (the policies deny it).
    let before = audit_size(&sb, "swm-1");
    let err = grants(&sb, "swm-1", "versicherung-ag", "analyst")
        .await
        .attest_deletion(pb::AttestDeletionRequest {
            duty_id: g.id.clone(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        audit_since(&sb, "swm-1", before)
            .iter()
            .any(|e| e.action == "attest_deletion" && e.decision == Some(Decision::Deny))
    );
    // TUM's DPO attests at SWM's node; the block is lifted.
    let d = grants(&sb, "swm-1", "tum", "dpo")
        .await
        .attest_deletion(pb::AttestDeletionRequest {
            duty_id: g.id.clone(),
            note: "deleted from the cluster".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, "attested");
    assert_eq!(d.attested_by, "allmende://munich/tum/user/dpo");
    let ok = swm_dpo
        .approve(pb::ApproveRequest {
            request_id: r.id,
            request_hash: r.request_hash,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().state, "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aggregate_only_grant_refuses_raw_reads() {
    let clock = ManualClock::starting_now();
    let sb = federation(clock).await;
    let g = granted(
        &sb,
        "k-1",
        pb::ApproveRequest {
            aggregate_only: true,
            ..Default::default()
        },
    )
    .await;
    assert!(g.aggregate_only);
    let err = read(&sb, &g.id).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    use prost::Message as _;
    let ids: Vec<String> = pb::DecisionDetails::decode(err.details())
        .map(|d| d.deciding.into_iter().map(|p| p.id).collect())
        .unwrap_or_default();
    assert!(ids.contains(&"grant-aggregate-only".to_owned()), "{ids:?}");
}
