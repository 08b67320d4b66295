//! The federation layer's one peer client across real nodes: a node takes a
//! peer for the member node its server certificate proves (not for what the
//! endpoint or a response says), calls over that connection work, and a peer
//! whose node certificate is on the membership's deny list is refused before
//! any call, as soon as the dialling node holds that membership.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test"
)]

use allmende::federation::client::{PeerError, connect_peer, peer_client_config};
use allmende::pki::ca;
use allmende::tls::TlsMaterial;
use allmende_e2e::munich;
use allmende_e2e::unix_now as now;
use allmende_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_what_its_certificate_proves_and_is_refused_once_revoked() {
    let sb = munich().await;
    let stadt = sb.node("stadt-1").unwrap();
    let dir = sb.root.join("stadt/nodes/stadt-1");
    let cert = dir.join("node.crt");
    let m = TlsMaterial::load(&cert, &dir.join("node.key"), &sb.federation.root_cert()).unwrap();
    let tls = peer_client_config(&m, &cert).unwrap();
    let tum = sb.node("tum-1").unwrap().grpc_endpoint();

    let peer = connect_peer(&tum, tls.clone(), &stadt.trust).await.unwrap();
    assert_eq!(
        (peer.organisation.as_str(), peer.node.as_str()),
        ("tum", "tum-1")
    );
    // The server sees this node's own certificate.
    let me = pb::federation_client::FederationClient::new(peer.channel)
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    let me = me.principal.unwrap();
    assert_eq!(
        (me.organisation.as_str(), me.name.as_str()),
        ("stadt", "stadt-1"),
        "{me:?}"
    );

    // Only https:// endpoints are dialled.
    let plain = tum.replacen("https://", "http://", 1);
    let err = connect_peer(&plain, tls.clone(), &stadt.trust)
        .await
        .unwrap_err();
    assert!(matches!(err, PeerError::Endpoint(_)), "{err}");

    // The city puts tum-1's node certificate on the deny list; once stadt-1
    // holds that membership, tum-1 is no acceptable peer, although its
    // certificate still chains to the root.
    ca::revoke(
        &sb.federation,
        &sb.root.join("tum/nodes/tum-1/node.crt"),
        "key compromised",
        now(),
    )
    .unwrap();
    sb.publish_membership().unwrap();
    let err = connect_peer(&tum, tls, &stadt.trust).await.unwrap_err();
    assert!(
        matches!(&err, PeerError::Identity { message, .. } if message.contains("deny list")),
        "{err}"
    );
    sb.shutdown().await.unwrap();
}
