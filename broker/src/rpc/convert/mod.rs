//! Conversion between domain types and `allmende.v1` protobuf messages.
//!
//! Architecture invariant: the only module that maps broker domain types
//! to and from generated protobuf types.

pub mod access;
pub mod connectors;
pub mod consent;
pub mod federation;
pub mod flight;
pub mod grants;
pub mod obligations;
pub mod opendata;
pub mod policy;
pub mod relay;

pub use access::fetch_params;

use crate::federation::peers::PeerRecord;
use crate::pki::{Principal, Subject};
use allmende_proto::v1 as pb;

mod audit;
pub mod catalog;
mod vocab;
pub use audit::{
    checkpoint_response, cosignature_response, status_response, verify_response, witnessed_response,
};

impl From<&Principal> for pb::Principal {
    fn from(p: &Principal) -> Self {
        pb::Principal {
            federation: p.federation.clone(),
            organisation: p.organisation.clone(),
            organisation_kind: vocab::org_kind(p.organisation_kind).into(),
            kind: match p.subject {
                Subject::Node(_) => pb::PrincipalKind::Node,
                Subject::User(_) => pb::PrincipalKind::User,
            }
            .into(),
            name: p.subject.name().to_owned(),
            role: p.role.map_or(pb::Role::Unspecified, vocab::role).into(),
            certificate_sha256: p.certificate_sha256.clone(),
            certificate_not_after: p.not_after,
        }
    }
}

impl From<&PeerRecord> for pb::Peer {
    fn from(p: &PeerRecord) -> Self {
        pb::Peer {
            organisation: p.organisation.clone(),
            node: p.node.clone(),
            certificate_sha256: p.certificate_sha256.clone(),
            first_seen_unix_ms: p.first_seen_unix_ms,
            last_seen_unix_ms: p.last_seen_unix_ms,
            hellos: p.hellos,
            software_version: p.software_version.clone(),
        }
    }
}

/// The encoded `allmende.v1.DecisionDetails` of a denial (status details).
pub fn decision_details_bytes(d: &crate::error::DenyDetails) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::DecisionDetails::from(d))
}

impl From<&crate::error::DenyDetails> for pb::DecisionDetails {
    fn from(d: &crate::error::DenyDetails) -> Self {
        pb::DecisionDetails {
            allowed: d.allowed,
            deciding: d
                .policies
                .iter()
                .map(|p| pb::DecidingPolicy {
                    id: p.id.clone(),
                    title: p.title.clone(),
                    reason_de: p.reason_de.clone(),
                    reason_en: p.reason_en.clone(),
                })
                .collect(),
            errors: d.errors.clone(),
            policy_set_hash: d.policy_set_hash.clone(),
        }
    }
}

/// An audit entry on the wire (user and subjects stay pseudonymous).
pub fn audit_entry(e: &allmende_audit::Entry) -> pb::AuditEntry {
    {
        use allmende_audit::EntryKind as K;
        let (kind, detail) = match &e.kind {
            K::Decision => ("decision", String::new()),
            K::ReleaseIntent => ("release_intent", String::new()),
            K::ReleaseCompletion {
                intent_sequence,
                rows_released,
                rows_filtered,
                bytes,
                outcome,
            } => (
                "release_completion",
                format!(
                    "intent={intent_sequence} rows_released={rows_released} rows_filtered={rows_filtered} bytes={bytes} outcome={outcome:?}"
                ),
            ),
            K::GrantChange { op } => ("grant_change", format!("{op:?}")),
            K::ConsentChange { status } => ("consent_change", format!("{status:?}")),
            K::PolicyChange { op } => ("policy_change", format!("{op:?}")),
            K::FederationChange { op } => ("federation_change", format!("{op:?}")),
            K::RefusedAuthentication {
                source,
                interval_start_ms,
                interval_end_ms,
                count,
            } => (
                "refused_authentication",
                format!(
                    "source={source} count={count} from_ms={interval_start_ms} to_ms={interval_end_ms}"
                ),
            ),
            K::Retention {
                cutoff_ms,
                pruned_count,
                ..
            } => (
                "retention",
                format!("cutoff_ms={cutoff_ms} pruned={pruned_count}"),
            ),
        };
        pb::AuditEntry {
            sequence: e.sequence,
            time_ms: e.time_ms,
            node: e.node.clone(),
            organisation: e.principal.org.clone(),
            user_pseudonym: e.principal.user.clone().unwrap_or_default(),
            action: e.action.clone(),
            resource: e.resource.clone(),
            purpose: e.purpose.clone().unwrap_or_default(),
            decision: match e.decision {
                Some(allmende_audit::Decision::Allow) => "allow".into(),
                Some(allmende_audit::Decision::Deny) => "deny".into(),
                None => String::new(),
            },
            policy_ids: e.policy_ids.clone(),
            policy_set_hash: e.policy_set_hash.map(|h| h.to_hex()).unwrap_or_default(),
            grant_id: e.grant_id.clone().unwrap_or_default(),
            request_id: e.request_id.clone().unwrap_or_default(),
            peer_node: e.peer_node.clone().unwrap_or_default(),
            kind: kind.into(),
            detail,
            subjects: u32::try_from(e.subjects.len()).unwrap_or(u32::MAX),
        }
    }
}

/// A policy decision on the wire.
pub fn decision_details(d: &allmende_policies::Decision) -> pb::DecisionDetails {
    pb::DecisionDetails::from(&crate::error::DenyDetails::from(d))
}
