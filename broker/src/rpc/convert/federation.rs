//! `allmende.v1.Federation` messages: the serving node's facts, the
//! caller's bound identity, peers met, the signed membership.

use crate::federation::peers::PeerRecord;
use crate::pki::Principal;
use crate::rpc::federation::ServerFacts;
use allmende_proto::v1 as pb;

/// The serving node, as it states itself.
pub fn node_info(facts: &ServerFacts, membership_version: u64) -> pb::NodeInfo {
    pb::NodeInfo {
        federation: facts.federation.clone(),
        organisation: facts.organisation.clone(),
        node: facts.node.clone(),
        software_version: crate::VERSION.to_owned(),
        membership_version,
    }
}

/// The caller's bound identity and the serving node.
pub fn who_am_i_response(caller: &Principal, server: pb::NodeInfo) -> pb::WhoAmIResponse {
    pb::WhoAmIResponse {
        principal: Some(pb::Principal::from(caller)),
        server: Some(server),
    }
}

/// The answer to a node's hello.
pub fn hello_response(caller: &Principal, server: pb::NodeInfo, hellos: u64) -> pb::HelloResponse {
    pb::HelloResponse {
        you: Some(pb::Principal::from(caller)),
        server: Some(server),
        hellos_recorded: hellos,
    }
}

/// The peers this node has met.
pub fn list_peers_response(peers: &[PeerRecord]) -> pb::ListPeersResponse {
    pb::ListPeersResponse {
        peers: peers.iter().map(pb::Peer::from).collect(),
    }
}

/// The signed membership document this node holds.
pub fn membership_response(signed_json: &[u8], version: u64) -> pb::GetMembershipResponse {
    pb::GetMembershipResponse {
        signed_membership: signed_json.to_vec(),
        version,
    }
}

/// The directory version after a member's removal.
pub fn remove_member_response(organisation: &str, version: u64) -> pb::RemoveMemberResponse {
    pb::RemoveMemberResponse {
        organisation: organisation.to_owned(),
        version,
    }
}

/// A created invitation: its facts and the file for the new organisation.
pub fn invite_response(
    file: &crate::invitations::InvitationFile,
) -> Result<pb::InviteResponse, crate::error::ApiError> {
    let invitation = serde_json::to_vec_pretty(file)
        .map_err(|e| crate::error::ApiError::Internal(e.to_string()))?;
    Ok(pb::InviteResponse {
        invitation_id: file.invitation.clone(),
        organisation: file.organisation.clone(),
        kind: super::vocab::org_kind(file.kind).into(),
        expires_unix: file.expires_at,
        invitation,
    })
}

/// What a joined organisation receives.
pub fn join_response(j: &crate::invitations::Joined) -> pb::JoinResponse {
    pb::JoinResponse {
        organisation: j.signed.member.org.clone(),
        kind: super::vocab::org_kind(j.signed.member.kind).into(),
        org_ca_cert_pem: j.signed.cert_pem.clone(),
        root_cert_pem: j.root_cert_pem.clone(),
        signed_membership: j.signed.signed_json.clone(),
        version: j.signed.version,
    }
}

/// A recorded node entry.
pub fn register_node_response(
    e: &crate::pki::membership::NodeEntry,
    version: u64,
) -> pb::RegisterNodeResponse {
    pb::RegisterNodeResponse {
        organisation: e.org.clone(),
        node: e.node.clone(),
        certificate_sha256: e.cert_sha256.clone(),
        version,
    }
}
