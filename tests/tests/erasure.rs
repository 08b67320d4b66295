//! Erasure of a data subject (GDPR Art. 17/19) end to end: a household
//! erases itself at SWM's node; its rows are absent from the next fetch
//! under an existing grant (at the stream); a later consent is refused and
//! changes nothing; TUM, which received the rows, gets a signed erasure
//! notice naming the subject only by the grant's pseudonym, and SWM holds a
//! deletion duty for TUM; TUM's DPO attests it; overdue, it blocks a new
//! approval for TUM. Erasure by another household or by TUM's DPO is refused
//! and audited. No entry names the subject in clear. Who accessed: the
//! household sees the release to TUM and its consent changes; another
//! household cannot.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::clock::ManualClock;
use allmende::pki::Role;
use allmende::sandbox::{Sandbox, SandboxSpec};
use allmende_audit::{Decision, Entry, EntryKind, GrantOp};
use allmende_e2e::{audit_since, audit_size, connect_with, material};
use allmende_proto::v1 as pb;
use arrow::array::{Array, StringArray};
use pb::consent_client::ConsentClient;
use pb::grants_client::GrantsClient;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::transport::Channel;

const DS: &str = "smart-meter-readings";
const SUBJECT: &str = "HH-000001";

async fn channel(sb: &Sandbox, node: &str, org: &str, user: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

async fn grants(sb: &Sandbox, node: &str, org: &str, user: &str) -> GrantsClient<Channel> {
    GrantsClient::new(channel(sb, node, org, user).await)
}

/// A research request by TUM's researcher (not yet approved).
async fn request(sb: &Sandbox, key: &str) -> pb::AccessRequestView {
    grants(sb, "swm-1", "tum", "alice")
        .await
        .request_access(pb::RequestAccessRequest {
            dataset: DS.into(),
            purpose: "AcademicResearch".into(),
            columns: vec!["household_id".into(), "kwh".into(), "timestamp".into()],
            justification: "load profiles".into(),
            idempotency_key: key.into(),
            days: 30,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn approve(sb: &Sandbox, r: &pb::AccessRequestView) -> Result<pb::GrantView, tonic::Status> {
    grants(sb, "swm-1", "swm", "dpo")
        .await
        .approve(pb::ApproveRequest {
            request_id: r.id.clone(),
            request_hash: r.request_hash.clone(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The household pseudonyms of one fetch under `grant`.
async fn fetched_households(sb: &Sandbox, grant: &str) -> Vec<String> {
    let mut s = pb::access_client::AccessClient::new(channel(sb, "swm-1", "tum", "alice").await)
        .fetch(pb::FetchRequest {
            dataset: DS.into(),
            purpose: "AcademicResearch".into(),
            grant_id: grant.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        bytes.extend(m.arrow_ipc);
    }
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    let mut out = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let col = b.column_by_name("household_id").unwrap();
        let ids = col.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..ids.len() {
            out.push(ids.value(i).to_owned());
        }
    }
    out
}

/// TUM's DPO's received erasure notices, waiting (up to about 30 s).
async fn erasure_notices(sb: &Sandbox) -> Vec<pb::NoticeView> {
    let mut tum_dpo = grants(sb, "tum-1", "tum", "dpo").await;
    for _ in 0..300 {
        let got: Vec<pb::NoticeView> = tum_dpo
            .list_notices(pb::ListNoticesRequest {
                direction: "received".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .notices
            .into_iter()
            .filter(|n| n.kind == "erasure")
            .collect();
        if !got.is_empty() {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tum received no erasure notice");
}

fn denied(entries: &[Entry], org: &str, action: &str) -> bool {
    entries
        .iter()
        .any(|e| e.principal.org == org && e.action == action && e.decision == Some(Decision::Deny))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_excludes_the_subject_and_tells_every_recipient() {
    let clock = ManualClock::starting_now();
    let mut spec = SandboxSpec::munich();
    for o in &mut spec.orgs {
        if o.name == "swm" {
            o.users.push(("HH-000002".into(), Role::Citizen));
        }
    }
    let mut sb = Sandbox::start(spec, None, clock.clone()).await.unwrap();
    sb.register_demo_datasets().await.unwrap();
    // Recipients have one day to delete.
    sb.stop_node("swm-1").await.unwrap();
    let path = sb.node_config_path("swm-1").unwrap();
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[limits]\nerasure_duty_days = 1\n");
    std::fs::write(&path, text).unwrap();
    sb.start_node("swm-1").await.unwrap();

    // TUM receives rows under a grant, the household's among them.
    let g = approve(&sb, &request(&sb, "k-1").await).await.unwrap();
    let before = fetched_households(&sb, &g.id).await;
    assert!(!before.is_empty());

    // Another household and TUM's DPO cannot erase the household: refused
    // and audited, nothing changes.
    let from = audit_size(&sb, "swm-1");
    let err = ConsentClient::new(channel(&sb, "swm-1", "swm", "HH-000002").await)
        .erase(pb::EraseSubjectRequest {
            subject_id: SUBJECT.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = ConsentClient::new(channel(&sb, "swm-1", "tum", "dpo").await)
        .erase(pb::EraseSubjectRequest {
            subject_id: SUBJECT.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let log = audit_since(&sb, "swm-1", from);
    assert!(denied(&log, "swm", "erase_subject"), "{log:?}");
    assert!(denied(&log, "tum", "erase_subject"), "{log:?}");
    assert_eq!(fetched_households(&sb, &g.id).await.len(), before.len());

    // The household erases itself.
    let from = audit_size(&sb, "swm-1");
    let mut household = ConsentClient::new(channel(&sb, "swm-1", "swm", SUBJECT).await);
    let e = household
        .erase(pb::EraseSubjectRequest {
            subject_id: SUBJECT.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .erasure
        .unwrap();
    assert_eq!(e.record_id.len(), 32);
    assert_eq!(e.requested_by, "allmende://munich/swm/user/HH-000001");
    assert_eq!(e.recipients.len(), 1, "{e:?}");
    let rcpt = &e.recipients[0];
    assert_eq!(
        (rcpt.org.as_str(), rcpt.grant_id.as_str()),
        ("tum", g.id.as_str())
    );

    // Its rows are absent from the next fetch under the same grant.
    let after = fetched_households(&sb, &g.id).await;
    assert!(
        after.len() < before.len(),
        "{} vs {}",
        after.len(),
        before.len()
    );

    // TUM's DPO lists the signed erasure notice: the grant and the
    // pseudonym TUM received, never the subject id.
    let notices = erasure_notices(&sb).await;
    assert_eq!(notices.len(), 1, "{notices:?}");
    let n = &notices[0];
    assert_eq!(
        (n.owner.as_str(), n.grant_id.as_str()),
        ("swm", g.id.as_str())
    );
    assert_eq!(n.id, rcpt.notice_id);
    assert_eq!(n.due_unix, rcpt.due_unix);
    assert!(
        before.contains(&n.subject_ref),
        "the pseudonym TUM received"
    );
    assert!(!after.contains(&n.subject_ref), "erased rows left");
    let gone: BTreeSet<&String> = before.iter().filter(|h| !after.contains(h)).collect();
    assert_eq!(gone, BTreeSet::from([&n.subject_ref]), "only the household");
    assert!(!n.body_json.contains(SUBJECT));

    // SWM audited the erasure (subject as keyed hash) and the duty; no
    // entry names the subject in clear.
    let log = audit_since(&sb, "swm-1", from);
    let hash = sb.node("swm-1").unwrap().audit.subject_hash(SUBJECT);
    let erased = log
        .iter()
        .find(|e| e.action == "erase_subject" && matches!(e.kind, EntryKind::ConsentChange { .. }))
        .expect("the erasure's entry");
    assert_eq!(erased.subjects, vec![hash]);
    assert!(log.iter().any(|e| {
        matches!(
            e.kind,
            EntryKind::GrantChange {
                op: GrantOp::DutyCreated
            }
        ) && e.grant_id.as_deref() == Some(g.id.as_str())
    }));
    let log_bytes = sb.node("swm-1").unwrap().audit.clone();
    for s in 0..log_bytes.status().size {
        let b = log_bytes.entry_bytes(s).unwrap().unwrap();
        assert!(
            !b.windows(SUBJECT.len()).any(|w| w == SUBJECT.as_bytes()),
            "entry {s} names the subject"
        );
    }

    // SWM holds a deletion duty for TUM.
    let mut swm_dpo = grants(&sb, "swm-1", "swm", "dpo").await;
    let duties = swm_dpo
        .list_duties(pb::ListDutiesRequest { org: "tum".into() })
        .await
        .unwrap()
        .into_inner()
        .duties;
    let duty = duties.iter().find(|d| d.reason == "erasure").unwrap();
    assert_eq!(
        (duty.id.as_str(), duty.grant_id.as_str()),
        (rcpt.duty_id.as_str(), g.id.as_str())
    );
    assert_eq!(duty.state, "open");

    // The erasure stands: a later consent is refused and re-includes nobody.
    let err = household
        .give(pb::GiveConsentRequest {
            subject_id: SUBJECT.into(),
            dataset: DS.into(),
            purposes: vec!["AcademicResearch".into()],
            expires_at_unix: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(fetched_households(&sb, &g.id).await.len(), after.len());
    // `consent list` shows it.
    let listed = household
        .get(pb::GetConsentRequest {
            subject_id: SUBJECT.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.erasures.len(), 1);
    assert_eq!(listed.erasures[0].recipients, e.recipients);

    // Who accessed my data: the release to TUM (organisation, purpose,
    // grant, rows) and the consent changes, in time order.
    let history = household
        .who_accessed(pb::WhoAccessedRequest {
            subject_id: SUBJECT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let releases: Vec<&pb::SubjectEvent> = history.iter().filter(|e| e.kind == "release").collect();
    assert!(!releases.is_empty(), "{history:?}");
    for r in &releases {
        assert_eq!(
            (
                r.org.as_str(),
                r.purpose.as_str(),
                r.grant_id.as_str(),
                r.dataset.as_str()
            ),
            ("tum", "AcademicResearch", g.id.as_str(), DS)
        );
        assert!(r.rows > 0);
        assert!(
            r.audit_sequence < erased.sequence,
            "no release after the erasure"
        );
    }
    let last = history.last().unwrap();
    assert_eq!((last.kind.as_str(), last.org.as_str()), ("erase", "swm"));
    assert!(
        history
            .windows(2)
            .all(|w| w[0].audit_sequence < w[1].audit_sequence)
    );
    // Another household cannot see it (refused, audited).
    let from = audit_size(&sb, "swm-1");
    let err = ConsentClient::new(channel(&sb, "swm-1", "swm", "HH-000002").await)
        .who_accessed(pb::WhoAccessedRequest {
            subject_id: SUBJECT.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(denied(
        &audit_since(&sb, "swm-1", from),
        "swm",
        "read_audit"
    ));

    // Overdue, the erasure duty blocks a new approval for TUM.
    clock.advance(Duration::from_secs(2 * 86_400));
    let r2 = request(&sb, "k-2").await;
    let err = approve(&sb, &r2).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains(&rcpt.duty_id), "{}", err.message());

    // Another organisation's DPO cannot attest it; TUM's DPO does, at
    // SWM's node, and the block is lifted.
    let err = grants(&sb, "swm-1", "stadt", "dpo")
        .await
        .attest_deletion(pb::AttestDeletionRequest {
            duty_id: rcpt.duty_id.clone(),
            note: "not ours".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let d = grants(&sb, "swm-1", "tum", "dpo")
        .await
        .attest_deletion(pb::AttestDeletionRequest {
            duty_id: rcpt.duty_id.clone(),
            note: "deleted from the analysis store".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.state, "attested");
    assert_eq!(d.attested_by, "allmende://munich/tum/user/dpo");
    approve(&sb, &r2).await.unwrap();
    sb.shutdown().await.unwrap();
}

/// The household's own commands: `consent who-accessed` (its profile's user
/// id as the subject) lists the release to TUM under the grant, another
/// household's history is refused with a sentence and the permission exit
/// code, and `consent erase` names the recipient it told; who-accessed
/// then shows the erasure after the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_household_reads_its_history_and_erases_itself_on_the_command_line() {
    use allmende::cli::consent_cmd::{ConsentCmd, output};
    let sb = Sandbox::start(SandboxSpec::munich(), None, ManualClock::starting_now())
        .await
        .unwrap();
    sb.register_demo_datasets().await.unwrap();
    let g = approve(&sb, &request(&sb, "k-cli").await).await.unwrap();
    assert!(!fetched_households(&sb, &g.id).await.is_empty());
    let household = Some(sb.root.join("swm/users/HH-000001.profile.toml"));

    let history = output(
        ConsentCmd::WhoAccessed {
            subject: None,
            profile: household.clone(),
        },
        true,
    )
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&history).unwrap();
    assert_eq!(v["subject"], SUBJECT);
    let releases: Vec<&serde_json::Value> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "release")
        .collect();
    assert_eq!(releases.len(), 1, "{history}");
    assert_eq!(releases[0]["org"], "tum");
    assert_eq!(releases[0]["purpose"], "AcademicResearch");
    assert_eq!(releases[0]["grant_id"], g.id.as_str());

    let refused = output(
        ConsentCmd::WhoAccessed {
            subject: Some("HH-000006".into()),
            profile: household.clone(),
        },
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(
        refused.code,
        allmende::cli::exit::REFUSED,
        "{}",
        refused.message
    );
    assert!(
        refused.message.starts_with("permission denied"),
        "{}",
        refused.message
    );

    let erased = output(
        ConsentCmd::Erase {
            subject: SUBJECT.into(),
            dataset: String::new(),
            profile: household.clone(),
        },
        false,
    )
    .await
    .unwrap();
    assert!(
        erased.contains("excluded from every later release"),
        "{erased}"
    );
    assert!(erased.contains("tum") && erased.contains(&g.id), "{erased}");

    let after = output(
        ConsentCmd::WhoAccessed {
            subject: None,
            profile: household,
        },
        false,
    )
    .await
    .unwrap();
    let release_at = after.find("release").unwrap();
    let erase_at = after.find("erase").unwrap();
    assert!(release_at < erase_at, "{after}");
    sb.shutdown().await.unwrap();
}
