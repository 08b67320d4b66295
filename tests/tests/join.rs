//! Joining the federation over the network: a city operator invites a new
//! organisation at the city node (decided, audited); the organisation joins
//! with the invitation file alone — its CA key made locally, the request
//! signed by the city over mTLS with the invitation's onboarding
//! certificate —, records its node's directory entry with the node's own
//! certificate, starts that node from the returned files, and is seen by
//! the other nodes through the directory; its user reads a public dataset.
//! Refused, each with its status and an audit entry at the city: a
//! replayed, expired, tampered or other organisation's invitation, the
//! onboarding certificate on any other call, a non-operator inviting.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::cli::join::{self, NodeRequest};
use allmende::config::NodeConfig;
use allmende::invitations::InvitationFile;
use allmende::pki::{OrgKind, Role, ca};
use allmende::sandbox::Sandbox;
use allmende::tls::TlsMaterial;
use allmende_audit::{Decision, Entry};
use allmende_e2e::{audit_since, audit_size, connect_with, material, unix_now};
use allmende_proto::v1 as pb;
use pb::federation_client::FederationClient;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const REFRESH: Duration = Duration::from_secs(1);

async fn channel(sb: &Sandbox, org: &str, user: &str, node: &str) -> Channel {
    let p = sb.profile(org, user).unwrap();
    connect_with(&sb.node(node).unwrap().grpc_endpoint(), &material(&p))
        .await
        .unwrap()
}

/// Invites `org` at the city node as stadt's operator; the file as the
/// CLI writes it.
async fn invite(sb: &Sandbox, org: &str, kind: &str, valid_secs: u64) -> InvitationFile {
    let r = FederationClient::new(channel(sb, "stadt", "operator", "stadt-1").await)
        .invite(pb::InviteRequest {
            organisation: org.into(),
            kind: kind.into(),
            display_name: format!("{org} e.V."),
            valid_secs,
        })
        .await
        .unwrap()
        .into_inner();
    let mut file: InvitationFile = serde_json::from_slice(&r.invitation).unwrap();
    assert_eq!(file.invitation, r.invitation_id);
    file.city_endpoint = sb.city_node().unwrap().grpc_endpoint();
    file
}

fn onboarding(file: &InvitationFile) -> TlsMaterial {
    TlsMaterial {
        chain_pem: file.onboarding_cert_pem.clone(),
        key_pem: file.onboarding_key_pem.clone(),
        root_pem: file.root_cert_pem.clone(),
    }
}

/// The join call made by hand with the invitation's onboarding
/// certificate, a secret and a request.
async fn join_rpc(
    file: &InvitationFile,
    secret: &str,
    csr_pem: String,
) -> Result<pb::JoinResponse, tonic::Status> {
    let ch = connect_with(&file.city_endpoint, &onboarding(file))
        .await
        .unwrap();
    FederationClient::new(ch)
        .join(pb::JoinRequest {
            secret: secret.into(),
            csr_pem,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn csr(dir: &std::path::Path, org: &str) -> String {
    std::fs::read_to_string(ca::org_request(dir, "munich", org).unwrap()).unwrap()
}

/// The city's audited join decision about `org` with `reason`.
fn join_entry(entries: &[Entry], org: &str, decision: Decision, reason: &str) -> bool {
    entries.iter().any(|e| {
        e.principal.org == org
            && e.action == "manage_federation"
            && e.decision == Some(decision)
            && e.policy_ids.iter().any(|p| p == reason)
    })
}

/// A join that must be refused: `err` has `code` and a message containing
/// `text`, and the city audited a deny of `org`'s join with `reason` since
/// audit entry `before`.
fn refused_join(
    sb: &Sandbox,
    before: u64,
    err: &tonic::Status,
    code: tonic::Code,
    text: &str,
    org: &str,
    reason: &str,
) {
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(err.message().contains(text), "{}", err.message());
    assert!(
        join_entry(
            &audit_since(sb, "stadt-1", before),
            org,
            Decision::Deny,
            reason
        ),
        "no audited deny `{reason}` for `{org}`"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invited_organisation_joins_over_the_network_and_its_node_serves() {
    let sb = allmende_e2e::munich().await;
    allmende_e2e::register_sample_dataset(&sb, "air-quality").await;
    sb.use_directory(REFRESH).await.unwrap();
    let city = sb.city_node().unwrap();
    let before = audit_size(&sb, "stadt-1");
    let v0 = city.trust.snapshot().doc.version;

    let file = invite(&sb, "fz", "university", 0).await;
    assert_eq!(file.kind, OrgKind::University);
    assert!(file.expires_at > unix_now() + 23 * 3600);

    // The organisation joins with the file alone; its CA key stays in its
    // directory. Its node's entry is recorded with the node's certificate.
    let dir = tempfile::tempdir().unwrap();
    let org_dir = dir.path().join("fz");
    let port = free_port();
    let endpoint = format!("https://127.0.0.1:{port}");
    let out = join::join(
        &file,
        &org_dir,
        Some(&NodeRequest {
            name: "fz-1".into(),
            endpoint: endpoint.clone(),
            dns: vec!["localhost".into()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        }),
        unix_now(),
    )
    .await
    .unwrap();
    assert_eq!(
        (out.organisation.as_str(), out.kind),
        ("fz", OrgKind::University)
    );
    assert!(out.version > v0);
    for f in [ca::ORG_KEY, ca::ORG_CERT, ca::ROOT_CERT, ca::MEMBERSHIP] {
        assert!(org_dir.join(f).exists(), "{f}");
    }
    // The city holds the new member with the invited kind, and the node.
    let doc = city.trust.snapshot().doc.clone();
    assert_eq!(doc.member("fz").unwrap().kind, OrgKind::University);
    let (node_dir, _) = out.node.clone().unwrap();
    let node_cert = std::fs::read_to_string(node_dir.join("node.crt")).unwrap();
    let node_sha = ca::cert_facts_from_pem(&node_dir, &node_cert)
        .unwrap()
        .sha256;
    let entry = doc.nodes.iter().find(|n| n.node == "fz-1").unwrap();
    assert_eq!(
        (entry.endpoint.as_str(), entry.cert_sha256.as_str()),
        (endpoint.as_str(), node_sha.as_str())
    );
    // The join was audited at the city: the invitation allowed, the
    // invite decided for the operator.
    let entries = audit_since(&sb, "stadt-1", before);
    assert!(join_entry(
        &entries,
        "fz",
        Decision::Allow,
        "invitation:valid"
    ));
    assert!(entries.iter().any(|e| e.principal.org == "stadt"
        && e.action == "manage_federation"
        && e.decision == Some(Decision::Allow)
        && e.resource.ends_with("/invite/fz")));

    // Another node fetches the directory and finds fz's node.
    let t0 = Instant::now();
    let swm = sb.node("swm-1").unwrap();
    while !swm
        .trust
        .snapshot()
        .doc
        .nodes
        .iter()
        .any(|n| n.node == "fz-1")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "swm-1 never saw fz-1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // fz's node starts from the returned files and follows the city.
    let text = NodeConfig::render(
        "fz-1",
        &node_dir.join("data"),
        format!("127.0.0.1:{port}").parse().unwrap(),
        None,
        &node_dir,
        &[],
    );
    let cfg_path = node_dir.join("node.toml");
    std::fs::write(&cfg_path, text).unwrap();
    let node = allmende::node::start(
        NodeConfig::load(&cfg_path).unwrap(),
        Arc::new(allmende::clock::SystemClock),
    )
    .await
    .unwrap();
    assert_eq!(node.grpc_endpoint(), endpoint);
    // A member node greets it: it is known, with the kind the city chose.
    let swm_node = sb.node_profile("swm", "swm-1", &endpoint);
    let hello = FederationClient::new(connect_with(&endpoint, &material(&swm_node)).await.unwrap())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hello.server.unwrap().organisation, "fz");

    // A researcher of fz, issued from the joined CA, reads a public
    // dataset at the city's node.
    let users = dir.path().join("users");
    let user = ca::OrgCa::load(&org_dir)
        .unwrap()
        .issue_user("ada", Role::Researcher, 30, &users, unix_now())
        .unwrap();
    let m = TlsMaterial::load(&user.chain, &user.key, &org_dir.join(ca::ROOT_CERT)).unwrap();
    let ch = connect_with(&city.grpc_endpoint(), &m).await.unwrap();
    let who = FederationClient::new(ch.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        who.principal.unwrap().organisation_kind(),
        pb::OrgKind::University
    );
    let mut s = pb::access_client::AccessClient::new(ch)
        .fetch(pb::FetchRequest {
            dataset: "air-quality".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut pages = 0;
    while let Some(_page) = s.message().await.unwrap() {
        pages += 1;
    }
    assert!(pages > 0);

    node.shutdown().await.unwrap();
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invitations_are_single_use_expire_and_bind_their_organisation() {
    let sb = allmende_e2e::munich().await;
    let dir = tempfile::tempdir().unwrap();

    // A tampered secret: refused, audited, and the invitation stays good.
    let file = invite(&sb, "fz", "company", 0).await;
    let before = audit_size(&sb, "stadt-1");
    let err = join_rpc(&file, "not-the-secret", csr(&dir.path().join("a"), "fz"))
        .await
        .unwrap_err();
    refused_join(
        &sb,
        before,
        &err,
        tonic::Code::PermissionDenied,
        "secret does not match",
        "fz",
        "invitation:secret",
    );

    // Another organisation's request under fz's invitation: refused.
    let before = audit_size(&sb, "stadt-1");
    let err = join_rpc(&file, &file.secret, csr(&dir.path().join("b"), "other"))
        .await
        .unwrap_err();
    refused_join(
        &sb,
        before,
        &err,
        tonic::Code::PermissionDenied,
        "invitation is for `munich/fz`",
        "fz",
        "invitation:organisation",
    );
    assert!(
        sb.city_node()
            .unwrap()
            .trust
            .snapshot()
            .doc
            .member("other")
            .is_none()
    );

    // The right secret and request: joined, with the kind the city chose.
    let r = join_rpc(&file, &file.secret, csr(&dir.path().join("c"), "fz"))
        .await
        .unwrap();
    assert_eq!(r.kind(), pb::OrgKind::Company);

    // Replayed: refused as used, audited; no second CA for fz.
    let before = audit_size(&sb, "stadt-1");
    let ca_before = sb
        .city_node()
        .unwrap()
        .trust
        .snapshot()
        .doc
        .member("fz")
        .unwrap()
        .ca_cert_sha256
        .clone();
    let err = join_rpc(&file, &file.secret, csr(&dir.path().join("d"), "fz"))
        .await
        .unwrap_err();
    refused_join(
        &sb,
        before,
        &err,
        tonic::Code::FailedPrecondition,
        "already used",
        "fz",
        "invitation:used",
    );
    assert_eq!(
        sb.city_node()
            .unwrap()
            .trust
            .snapshot()
            .doc
            .member("fz")
            .unwrap()
            .ca_cert_sha256,
        ca_before
    );

    // Expired: refused with its reason (the onboarding certificate still
    // opens the connection), audited.
    let late = invite(&sb, "late", "company", 1).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = audit_size(&sb, "stadt-1");
    let err = join_rpc(&late, &late.secret, csr(&dir.path().join("e"), "late"))
        .await
        .unwrap_err();
    refused_join(
        &sb,
        before,
        &err,
        tonic::Code::FailedPrecondition,
        "expired",
        "late",
        "invitation:expired",
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_onboarding_certificate_opens_the_join_call_only_and_only_operators_invite() {
    let sb = allmende_e2e::munich().await;
    let file = invite(&sb, "fz", "company", 0).await;
    let ch = connect_with(&file.city_endpoint, &onboarding(&file))
        .await
        .unwrap();

    // Every other call on the onboarding connection: refused, audited.
    let before = audit_size(&sb, "stadt-1");
    let who = FederationClient::new(ch.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        who.code(),
        tonic::Code::PermissionDenied,
        "{}",
        who.message()
    );
    assert!(
        who.message().contains("`Federation.Join` only"),
        "{}",
        who.message()
    );
    let membership = FederationClient::new(ch.clone())
        .get_membership(pb::GetMembershipRequest {})
        .await
        .unwrap_err();
    assert_eq!(membership.code(), tonic::Code::PermissionDenied);
    let list = pb::catalog_client::CatalogClient::new(ch.clone())
        .list(pb::ListCatalogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(list.code(), tonic::Code::PermissionDenied);
    let invite_again = FederationClient::new(ch.clone())
        .invite(pb::InviteRequest {
            organisation: "fz2".into(),
            kind: "city".into(),
            display_name: "x".into(),
            valid_secs: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(invite_again.code(), tonic::Code::PermissionDenied);
    let refused = audit_since(&sb, "stadt-1", before);
    assert!(
        refused
            .iter()
            .filter(|e| join_entry(
                std::slice::from_ref(e),
                "fz",
                Decision::Deny,
                "onboarding:join-only"
            ))
            .count()
            >= 4,
        "{refused:?}"
    );

    // Beyond a bound per certificate, refusals are counted, not written:
    // an invitation's holder cannot grow the audit log.
    for _ in 0..allmende::rpc::ONBOARDING_AUDITED_REFUSALS {
        let _ = FederationClient::new(ch.clone())
            .list_peers(pb::ListPeersRequest {})
            .await
            .unwrap_err();
    }
    let size = audit_size(&sb, "stadt-1");
    for _ in 0..10 {
        let err = FederationClient::new(ch.clone())
            .list_peers(pb::ListPeersRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    let later = audit_since(&sb, "stadt-1", size);
    assert!(!later.iter().any(|e| e.principal.org == "fz"), "{later:?}");

    // A node that does not hold the root refuses it in the handshake.
    let swm = sb.node("swm-1").unwrap().grpc_endpoint();
    let at_swm = match connect_with(&swm, &onboarding(&file)).await {
        Err(_) => true,
        Ok(ch) => FederationClient::new(ch)
            .join(pb::JoinRequest::default())
            .await
            .is_err_and(|s| {
                s.code() != tonic::Code::PermissionDenied
                    && s.code() != tonic::Code::FailedPrecondition
            }),
    };
    assert!(at_swm, "swm-1 took an onboarding certificate");

    // Only the root's operators invite: stadt's steward and scooter-co's
    // operator are refused and audited.
    for (org, user) in [("stadt", "steward"), ("scooter-co", "operator")] {
        let before = audit_size(&sb, "stadt-1");
        let p = sb.profile(org, user).unwrap();
        let ch = connect_with(&sb.city_node().unwrap().grpc_endpoint(), &material(&p))
            .await
            .unwrap();
        let err = FederationClient::new(ch)
            .invite(pb::InviteRequest {
                organisation: "fz3".into(),
                kind: "city".into(),
                display_name: "x".into(),
                valid_secs: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{org}/{user}");
        assert!(
            audit_since(&sb, "stadt-1", before)
                .iter()
                .any(|e| e.principal.org == org
                    && e.action == "manage_federation"
                    && e.decision == Some(Decision::Deny))
        );
    }
    // A person cannot record a node entry: nodes only.
    let err = FederationClient::new(channel(&sb, "stadt", "operator", "stadt-1").await)
        .register_node(pb::RegisterNodeRequest {
            endpoint: "https://127.0.0.1:9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    sb.shutdown().await.unwrap();
}
