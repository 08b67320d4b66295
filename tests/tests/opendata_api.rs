//! The public tier: a public-tier certificate (a user of an organisation of
//! kind `public` in the signed membership) reads open data without a grant,
//! is audited only under a keyed pseudonym (`public/p-…`, never its
//! certificate URI or fingerprint), is refused raw personal data with the
//! policy's reason (audited), and is rate-limited; a member is never decided
//! as the public. The HTTPS open-data listener (CKAN Action API subset,
//! `/catalog.jsonld`, downloads) is tested further down, with the real
//! `ckanapi` client where python3 has it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::sandbox::{PUBLIC_TIER_ORG, PUBLIC_TIER_USER, Sandbox};
use allmende_audit::{Decision, Entry, EntryKind};
use allmende_e2e::{audit_since, audit_size, connect_with, material, munich};
use allmende_proto::v1 as pb;
use pb::access_client::AccessClient;
use tonic::transport::Channel;

const AIR: &str = "air-quality";
const SCOOTER: &str = "scooter-trips";
const SMART_METER: &str = "smart-meter-readings";

async fn federation() -> Sandbox {
    let sb = munich().await;
    sb.register_demo_datasets().await.unwrap();
    sb
}

async fn channel(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

async fn public_at(sb: &Sandbox, node: &str) -> AccessClient<Channel> {
    AccessClient::new(channel(sb, PUBLIC_TIER_ORG, PUBLIC_TIER_USER, node).await)
}

/// Fetches `dataset` without purpose or grant; the number of rows.
async fn fetch_rows(c: &mut AccessClient<Channel>, dataset: &str) -> Result<usize, tonic::Status> {
    let mut s = c
        .fetch(pb::FetchRequest {
            dataset: dataset.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await? {
        bytes.extend(m.arrow_ipc);
    }
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
    Ok(reader.map(|b| b.unwrap().num_rows()).sum())
}

fn policy_ids(err: &tonic::Status) -> Vec<String> {
    use prost::Message as _;
    pb::DecisionDetails::decode(err.details())
        .map(|d| d.deciding.into_iter().map(|p| p.id).collect())
        .unwrap_or_default()
}

fn reasons(err: &tonic::Status) -> Vec<String> {
    use prost::Message as _;
    pb::DecisionDetails::decode(err.details())
        .map(|d| d.deciding.into_iter().map(|p| p.reason_en).collect())
        .unwrap_or_default()
}

/// The public-tier certificate's identity URI and fingerprint, as the node
/// bound them.
async fn public_identity(sb: &Sandbox, node: &str) -> (String, String) {
    let me = pb::federation_client::FederationClient::new(
        channel(sb, PUBLIC_TIER_ORG, PUBLIC_TIER_USER, node).await,
    )
    .who_am_i(pb::WhoAmIRequest {})
    .await
    .unwrap()
    .into_inner()
    .principal
    .unwrap();
    assert_eq!(me.organisation, PUBLIC_TIER_ORG);
    assert_eq!(me.organisation_kind, pb::OrgKind::Public as i32);
    (
        format!("allmende://munich/{PUBLIC_TIER_ORG}/user/{PUBLIC_TIER_USER}"),
        me.certificate_sha256,
    )
}

/// The entry carries the caller only as `public/p-<24 hex>`, and its
/// canonical bytes hold neither the certificate URI, the organisation or
/// user id of the certificate, nor its fingerprint.
fn assert_pseudonymous(e: &Entry, uri: &str, fingerprint: &str) {
    assert_eq!(e.principal.org, "public", "{e:?}");
    let user = e.principal.user.as_deref().unwrap();
    assert!(
        user.len() == 26 && user.starts_with("p-"),
        "pseudonym `{user}`"
    );
    let bytes = e.encode().unwrap();
    for clear in [
        uri.as_bytes(),
        fingerprint.as_bytes(),
        PUBLIC_TIER_ORG.as_bytes(),
        PUBLIC_TIER_USER.as_bytes(),
    ] {
        assert!(
            !bytes.windows(clear.len()).any(|w| w == clear),
            "entry holds `{}` in clear",
            String::from_utf8_lossy(clear)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_public_tier_certificate_reads_open_data_audited_under_a_pseudonym() {
    let sb = federation().await;
    let (uri, fingerprint) = public_identity(&sb, "stadt-1").await;
    let from = audit_size(&sb, "stadt-1");
    let mut c = public_at(&sb, "stadt-1").await;
    let rows = fetch_rows(&mut c, AIR).await.unwrap();
    assert!(rows > 0, "air quality rows");
    let entries = audit_since(&sb, "stadt-1", from);
    let decisions: Vec<&Entry> = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Decision) && e.resource == AIR)
        .collect();
    assert_eq!(decisions.len(), 1, "{entries:?}");
    let d = decisions[0];
    assert_eq!(d.decision, Some(Decision::Allow));
    assert_eq!(d.policy_ids, ["public-open-data"]);
    assert!(
        entries
            .iter()
            .any(|e| matches!(e.kind, EntryKind::ReleaseIntent)),
        "{entries:?}"
    );
    // Decision, intent and completion: the same pseudonym, nothing in clear.
    let pseudonym = d.principal.user.clone();
    for e in entries.iter().filter(|e| e.resource == AIR) {
        assert_pseudonymous(e, &uri, &fingerprint);
        assert_eq!(e.principal.user, pseudonym);
    }
    // The same certificate is the same pseudonym on the next read; another
    // node keys its pseudonyms with its own secret.
    let from = audit_size(&sb, "stadt-1");
    fetch_rows(&mut c, AIR).await.unwrap();
    let again = audit_since(&sb, "stadt-1", from);
    assert!(again.iter().all(|e| e.principal.user == pseudonym));
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_public_tier_certificate_gets_no_raw_personal_data() {
    let sb = federation().await;
    let (uri, fingerprint) = public_identity(&sb, "scooter-co-1").await;
    for (node, dataset) in [("scooter-co-1", SCOOTER), ("swm-1", SMART_METER)] {
        let from = audit_size(&sb, node);
        let mut c = public_at(&sb, node).await;
        let err = fetch_rows(&mut c, dataset).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{dataset}");
        assert!(
            policy_ids(&err).contains(&"public-no-raw-personal-data".to_owned()),
            "{dataset}: {:?}",
            policy_ids(&err)
        );
        assert!(
            reasons(&err)
                .iter()
                .any(|r| r.contains("Raw personal data is never released")),
            "{:?}",
            reasons(&err)
        );
        let entries = audit_since(&sb, node, from);
        let denied: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.resource == dataset && e.decision == Some(Decision::Deny))
            .collect();
        assert_eq!(denied.len(), 1, "{entries:?}");
        assert!(
            denied[0]
                .policy_ids
                .contains(&"public-no-raw-personal-data".to_owned())
        );
        assert_pseudonymous(denied[0], &uri, &fingerprint);
        // Nothing was released.
        assert!(
            !entries
                .iter()
                .any(|e| matches!(e.kind, EntryKind::ReleaseIntent))
        );
    }
    // Every other call decides the certificate as the public too (the
    // membership's kind, in `PolicyPoint`): a what-if names the same policy.
    let explained = pb::policy_client::PolicyClient::new(
        channel(&sb, PUBLIC_TIER_ORG, PUBLIC_TIER_USER, "scooter-co-1").await,
    )
    .explain(pb::ExplainRequest {
        action: "read".into(),
        resource_type: "dataset".into(),
        resource_id: SCOOTER.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .decision
    .unwrap();
    assert!(!explained.allowed);
    assert!(
        explained
            .deciding
            .iter()
            .any(|p| p.id == "public-no-raw-personal-data"),
        "{explained:?}"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_is_never_decided_as_the_public() {
    let sb = federation().await;
    // alice reads open data as herself: her organisation, her pseudonym.
    let from = audit_size(&sb, "stadt-1");
    let mut alice = AccessClient::new(channel(&sb, "tum", "alice", "stadt-1").await);
    assert!(fetch_rows(&mut alice, AIR).await.unwrap() > 0);
    let entries: Vec<Entry> = audit_since(&sb, "stadt-1", from)
        .into_iter()
        .filter(|e| e.resource == AIR)
        .collect();
    assert!(!entries.is_empty());
    for e in &entries {
        assert_eq!(e.principal.org, "tum", "{e:?}");
        assert!(e.principal.user.as_deref().unwrap().starts_with("u-"));
    }
    // Her raw read of scooter trips is refused, but not as the public's:
    // whatever her request says, she is a user of tum.
    let mut alice = AccessClient::new(channel(&sb, "tum", "alice", "scooter-co-1").await);
    for purpose in ["", "AcademicResearch"] {
        let mut s = alice
            .fetch(pb::FetchRequest {
                dataset: SCOOTER.into(),
                purpose: purpose.into(),
                request_id: "public".into(),
                ..Default::default()
            })
            .await;
        let err = match &mut s {
            Ok(r) => r.get_mut().message().await.unwrap_err(),
            Err(e) => e.clone(),
        };
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            !policy_ids(&err).contains(&"public-no-raw-personal-data".to_owned()),
            "{:?}",
            policy_ids(&err)
        );
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_public_caller_over_its_rate_is_refused() {
    let sb = federation().await;
    let mut c = public_at(&sb, "stadt-1").await;
    // The default: 120 requests per minute, burst 20.
    let mut allowed = 0;
    let mut refused = None;
    for _ in 0..200 {
        match fetch_rows(&mut c, AIR).await {
            Ok(_) => allowed += 1,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("refused within 200 requests");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("open-data requests"), "{err:?}");
    assert!(allowed >= 20, "{allowed} allowed");
    // A member is limited on its own budget, not the public's.
    let mut alice = AccessClient::new(channel(&sb, "tum", "alice", "stadt-1").await);
    assert!(fetch_rows(&mut alice, AIR).await.is_ok());
    sb.shutdown().await.unwrap();
}
