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
