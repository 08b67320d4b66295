//! `allmende.v1.Relay` messages (`docs/relay.md`).

use allmende_proto::v1 as pb;

/// The request the forwarding node sends the hub, and the hub the owner.
pub fn relayed_request(
    target_organisation: &str,
    target_node: &str,
    assertion: Vec<u8>,
    request: Vec<u8>,
) -> pb::RelayedRequest {
    pb::RelayedRequest {
        target_organisation: target_organisation.to_owned(),
        target_node: target_node.to_owned(),
        assertion,
        request,
    }
}

/// The first frame of a relayed stream, or (without the header) any
/// later one.
pub fn frame(sealed: Vec<u8>, header: Option<FrameHeader>) -> pb::RelayFrame {
    match header {
        Some(h) => pb::RelayFrame {
            welcome: h.welcome.unwrap_or_default(),
            owner_certificate: h.owner_certificate,
            group_id: h.group_id,
            stream_id: h.stream_id,
            sealed,
        },
        None => pb::RelayFrame {
            sealed,
            ..Default::default()
        },
    }
}

/// What the first frame of a relayed stream carries besides its chunk.
#[derive(Debug, Clone)]
pub struct FrameHeader {
    pub welcome: Option<Vec<u8>>,
    pub owner_certificate: Vec<u8>,
    pub group_id: Vec<u8>,
    pub stream_id: String,
}

/// The answer to a key package publication.
pub fn published(directory_version: u64) -> pb::PublishKeyPackageResponse {
    pb::PublishKeyPackageResponse { directory_version }
}
