//! The federation directory across real nodes: the city node signs it,
//! every other node fetches it over mTLS and takes a new one within one
//! refresh; a rolled-back or tampered document is refused, counted, and the
//! node keeps its own; a member removed by the city's operators is refused
//! in every node's TLS verifier, its open streams end, its grants are
//! revoked and audited on the owner node; nobody else can remove a member.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::metrics::ReasonLabel;
use allmende::sandbox::Sandbox;
use allmende_audit::{Decision, EntryKind, GrantOp};
use allmende_e2e::{audit_since, audit_size, connect_with, material};
use allmende_proto::v1 as pb;
use pb::federation_client::FederationClient;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The refresh interval the tests run the directory with.
const REFRESH: Duration = Duration::from_secs(1);
/// One refresh, plus the time a fetch takes on a loaded machine.
const ONE_REFRESH: Duration = Duration::from_millis(2500);

async fn channel(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

fn version(sb: &Sandbox, node: &str) -> u64 {
    sb.node(node).unwrap().trust.snapshot().doc.version
}

/// Waits up to `limit` for `node` to hold directory version `v`; returns
/// how long it took.
async fn reaches(sb: &Sandbox, node: &str, v: u64, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if version(sb, node) >= v {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn refused(sb: &Sandbox, node: &str, reason: &str) -> u64 {
    sb.node(node)
        .unwrap()
        .metrics
        .directory_refused
        .get_or_create(&ReasonLabel {
            reason: reason.into(),
        })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_take_the_city_directory_within_one_refresh() {
    let sb = allmende_e2e::munich().await;
    let file = sb.root.join("swm/nodes/swm-1/membership.json");
    let file_before = std::fs::read(&file).unwrap();
    let v1 = sb.use_directory(REFRESH).await.unwrap();
    for n in ["swm-1", "tum-1", "scooter-co-1", "versicherung-ag-1"] {
        assert!(
            reaches(&sb, n, v1, ONE_REFRESH).await.is_some(),
            "{n} did not take directory {v1}"
        );
    }
    // What swm-1 holds is the city's directory: every node with its
    // endpoint and certificate fingerprint (and an MLS slot, which each
    // node's relay task fills with a key package: docs/relay.md).
    let doc = sb.node("swm-1").unwrap().trust.snapshot().doc.clone();
    assert_eq!(doc.nodes.len(), 5, "{:?}", doc.nodes);
    let tum = doc.nodes.iter().find(|n| n.node == "tum-1").unwrap();
    assert_eq!(tum.endpoint, sb.node("tum-1").unwrap().grpc_endpoint());
    assert_eq!(tum.cert_sha256.len(), 64);
    // It came over the network: the node's membership file is unchanged,
    // and the store keeps it for a restart. (The nodes publish key
    // packages meanwhile, so a newer version may land between the two
    // reads: compare once they agree.)
    assert_eq!(std::fs::read(&file).unwrap(), file_before);
    let swm = sb.node("swm-1").unwrap();
    let mut same = false;
    for _ in 0..200 {
        let held = swm.trust.snapshot().signed_json.clone();
        let stored = allmende::directory::stored_membership(&swm.store)
            .unwrap()
            .unwrap();
        if stored.as_bytes() == held.as_slice() {
            same = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(same, "swm-1's store never held the directory in force");

    // A later change at the city reaches the nodes within one refresh.
    let city = sb.city_node().unwrap();
    let v2 = city.directory.set_nodes(&[]).await.unwrap();
    assert!(v2 > v1);
    let took = reaches(&sb, "swm-1", v2, ONE_REFRESH).await;
    assert!(took.is_some(), "swm-1 did not take directory {v2}");
    println!("directory v{v2} reached swm-1 after {:?}", took.unwrap());
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_or_tampered_directory_is_refused_and_the_old_one_kept() {
    let sb = allmende_e2e::munich().await;
    let swm = sb.node("swm-1").unwrap();
    let old = swm.trust.snapshot().signed_json.clone();
    // Only swm-1 follows the city; tum-1 keeps the older directory.
    let city = sb.city_node().unwrap();
    let v1 = city.directory.set_nodes(&[]).await.unwrap();
    swm.set_directory_source(Some(city.grpc_endpoint()), REFRESH);
    assert!(reaches(&sb, "swm-1", v1, ONE_REFRESH).await.is_some());
    let current = swm.trust.snapshot().signed_json.clone();
    assert!(version(&sb, "tum-1") < v1);

    // A node serving an older (validly signed) directory: refused as a
    // rollback, counted, the newer one stays.
    swm.set_directory_source(Some(sb.node("tum-1").unwrap().grpc_endpoint()), REFRESH);
    let t0 = Instant::now();
    while refused(&sb, "swm-1", "rollback") == 0 && t0.elapsed() < ONE_REFRESH {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused(&sb, "swm-1", "rollback") >= 1,
        "no rollback refusal counted"
    );
    assert_eq!(version(&sb, "swm-1"), v1);
    assert_eq!(swm.trust.snapshot().signed_json, current);
    // Directly, too: the old document is refused, the new one kept.
    assert!(swm.directory.install(&old, "test").await.is_err());
    assert_eq!(version(&sb, "swm-1"), v1);

    // A tampered directory (payload changed, signature kept) through the
    // membership file: refused on its signature, counted, the node keeps
    // its directory.
    use allmende::pki::membership::SignedMembership;
    let real = SignedMembership::from_json(&current).unwrap();
    let mut forged_doc = swm.trust.snapshot().doc.clone();
    forged_doc.version = v1 + 10;
    forged_doc.denied.clear();
    let other_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = forged_doc.sign(&other_key.serialize_der()).unwrap();
    // The forged payload under the root's real signature.
    let tampered = SignedMembership {
        payload: forged.payload.clone(),
        signature: real.signature.clone(),
    }
    .to_json();
    // Signed by another key: refused through the directory, too.
    assert!(
        swm.directory
            .install(&forged.to_json(), "test")
            .await
            .is_err()
    );
    std::fs::write(sb.root.join("swm/nodes/swm-1/membership.json"), &tampered).unwrap();
    let t0 = Instant::now();
    while refused(&sb, "swm-1", "signature") == 0 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused(&sb, "swm-1", "signature") >= 1);
    assert_eq!(version(&sb, "swm-1"), v1);
    assert_eq!(swm.trust.snapshot().signed_json, current);
    sb.shutdown().await.unwrap();
}

/// Registers the demo datasets, and at SWM a large public one (SWM's
/// steward) that takes many messages to stream.
async fn datasets(sb: &Sandbox) -> String {
    sb.register_demo_datasets().await.unwrap();
    let dir = sb.root.join("sample-data/air-quality-large");
    let tmp = tempfile::tempdir().unwrap();
    let spec = allmende_connectors::sample::SampleSpec {
        days: 10,
        ..Default::default()
    };
    let files = allmende_connectors::sample::write_demo_data(tmp.path(), &spec).unwrap();
    let air = files
        .datasets
        .iter()
        .find(|d| d.name == "air-quality")
        .unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..100 {
        std::fs::copy(&air.config.path, dir.join(format!("part-{i:03}.csv"))).unwrap();
    }
    let mut config = air.config.clone();
    config.path = dir;
    let mut desc = allmende::demo::munich::datasets()
        .into_iter()
        .find(|(_, d)| d.id == "air-quality")
        .unwrap()
        .1;
    desc.id = "swm-air-quality-large".into();
    sb.register_dataset("swm", "steward", &desc, &config)
        .await
        .unwrap();
    desc.id
}

/// TUM's researcher asks SWM for research access; SWM's DPO approves.
async fn tum_grant(sb: &Sandbox) -> String {
    let mut g = pb::grants_client::GrantsClient::new(channel(sb, "tum", "alice", "swm-1").await);
    let r = g
        .request_access(pb::RequestAccessRequest {
            dataset: "smart-meter-readings".into(),
            purpose: "AcademicResearch".into(),
            columns: vec!["household_id".into(), "kwh".into(), "timestamp".into()],
            days: 90,
            justification: "load profiles of consenting households".into(),
            idempotency_key: "directory-test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    pb::grants_client::GrantsClient::new(channel(sb, "swm", "dpo", "swm-1").await)
        .approve(pb::ApproveRequest {
            request_id: r.id.clone(),
            request_hash: r.request_hash.clone(),
            note: "ok".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_member_is_refused_cut_off_and_its_grants_revoked_within_one_refresh() {
    let sb = allmende_e2e::munich().await;
    let dataset = datasets(&sb).await;
    let grant = tum_grant(&sb).await;
    let v1 = sb.use_directory(REFRESH).await.unwrap();
    for n in ["swm-1", "tum-1", "scooter-co-1", "versicherung-ag-1"] {
        assert!(reaches(&sb, n, v1, ONE_REFRESH).await.is_some(), "{n}");
    }

    // Alice (TUM) has an open connection and an open stream at SWM's node.
    let alice = channel(&sb, "tum", "alice", "swm-1").await;
    FederationClient::new(alice.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap();
    let mut stream = pb::access_client::AccessClient::new(alice.clone())
        .fetch(pb::FetchRequest {
            dataset,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().unwrap().summary.is_none());
    let swm_audit = audit_size(&sb, "swm-1");
    let city_audit = audit_size(&sb, "stadt-1");

    // The city's operator removes TUM at the city node.
    let removed = FederationClient::new(channel(&sb, "stadt", "operator", "stadt-1").await)
        .remove_member(pb::RemoveMemberRequest {
            organisation: "tum".into(),
            reason: "left the federation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.version > v1);
    let took = reaches(&sb, "swm-1", removed.version, ONE_REFRESH).await;
    assert!(took.is_some(), "swm-1 did not take the removal");
    println!(
        "removal (v{}) in force at swm-1 after {:?}",
        removed.version,
        took.unwrap()
    );

    // The open stream ends with UNAUTHENTICATED instead of delivering the rest.
    let e = loop {
        match stream.message().await {
            Ok(Some(m)) => assert!(m.summary.is_none(), "the whole dataset was delivered"),
            Ok(None) => panic!("the stream ended without an error after the removal"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{}", e.message());
    // The open connection is refused on its next request.
    let err = FederationClient::new(alice)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // New handshakes of TUM's user and node certificates fail at SWM's node.
    let swm_endpoint = sb.node("swm-1").unwrap().grpc_endpoint();
    let p = sb.profile("tum", "alice").unwrap();
    let user = match connect_with(&swm_endpoint, &material(&p)).await {
        Err(_) => true,
        Ok(ch) => FederationClient::new(ch)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err(),
    };
    assert!(user, "TUM's user handshake succeeded after the removal");
    let node = sb.node_profile("tum", "tum-1", &swm_endpoint);
    let node = match connect_with(&swm_endpoint, &material(&node)).await {
        Err(_) => true,
        Ok(ch) => FederationClient::new(ch)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .is_err(),
    };
    assert!(node, "TUM's node handshake succeeded after the removal");
    assert!(
        sb.node("swm-1")
            .unwrap()
            .metrics
            .handshakes_refused
            .get_or_create(&ReasonLabel {
                reason: "not_a_member_ca".into()
            })
            .get()
            >= 2
    );

    // TUM's grant at SWM is revoked, audited by SWM's node.
    let t0 = Instant::now();
    let g = loop {
        let g = sb
            .node("swm-1")
            .unwrap()
            .grants
            .get_grant(&grant)
            .unwrap()
            .unwrap();
        if g.state == allmende_policies::GrantState::Revoked || t0.elapsed() > ONE_REFRESH {
            break g;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(g.state, allmende_policies::GrantState::Revoked);
    assert_eq!(
        g.revocation.as_ref().unwrap().note,
        allmende::directory::REMOVED_REASON
    );
    let entries = audit_since(&sb, "swm-1", swm_audit);
    assert!(
        entries.iter().any(|e| matches!(
            e.kind,
            EntryKind::GrantChange {
                op: GrantOp::Revoked
            }
        ) && e.grant_id.as_deref() == Some(grant.as_str())
            && e.principal.org == "swm"),
        "the revocation is not audited at SWM's node"
    );
    // The removal was decided and audited at the city node.
    let city = audit_since(&sb, "stadt-1", city_audit);
    assert!(city.iter().any(|e| e.action == "manage_federation"
        && e.principal.org == "stadt"
        && e.decision == Some(Decision::Allow)));
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_city_operators_remove_members_at_the_city_node() {
    let sb = allmende_e2e::munich().await;
    let v0 = version(&sb, "stadt-1");
    let remove = |org: &'static str| pb::RemoveMemberRequest {
        organisation: org.into(),
        reason: String::new(),
    };
    // Another organisation's operator, the city's steward: refused and
    // audited at the city node; nothing changes.
    for (org, user) in [
        ("scooter-co", "operator"),
        ("stadt", "steward"),
        ("swm", "dpo"),
    ] {
        let from = audit_size(&sb, "stadt-1");
        let err = FederationClient::new(channel(&sb, org, user, "stadt-1").await)
            .remove_member(remove("versicherung-ag"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{org}/{user}");
        let entries = audit_since(&sb, "stadt-1", from);
        assert!(
            entries.iter().any(|e| e.action == "manage_federation"
                && e.principal.org == org
                && e.decision == Some(Decision::Deny)),
            "{org}/{user}'s refusal is not audited"
        );
    }
    assert_eq!(version(&sb, "stadt-1"), v0);
    let mut op = FederationClient::new(channel(&sb, "stadt", "operator", "stadt-1").await);
    // The city itself cannot be removed; an unknown organisation is not found.
    let err = op.remove_member(remove("stadt")).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    let err = op.remove_member(remove("nobody")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    // A node without the root (SWM's) cannot sign a removal.
    let err = FederationClient::new(channel(&sb, "stadt", "operator", "swm-1").await)
        .remove_member(remove("versicherung-ag"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    assert_eq!(version(&sb, "stadt-1"), v0);
    assert_eq!(version(&sb, "swm-1"), v0);
    sb.shutdown().await.unwrap();
}
