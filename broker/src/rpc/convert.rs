//! Conversion between domain types and `allmende.v1` protobuf messages.
//!
//! Architecture invariant: the only module that maps broker domain types
//! to and from generated protobuf types.

use crate::peers::PeerRecord;
use crate::pki::{OrgKind, Principal, Role, Subject};
use allmende_proto::v1 as pb;

impl From<OrgKind> for pb::OrgKind {
    fn from(k: OrgKind) -> Self {
        match k {
            OrgKind::City => pb::OrgKind::City,
            OrgKind::Utility => pb::OrgKind::Utility,
            OrgKind::University => pb::OrgKind::University,
            OrgKind::Company => pb::OrgKind::Company,
            OrgKind::Public => pb::OrgKind::Public,
        }
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Dpo => pb::Role::Dpo,
            Role::Steward => pb::Role::Steward,
            Role::Researcher => pb::Role::Researcher,
            Role::Citizen => pb::Role::Citizen,
            Role::Operator => pb::Role::Operator,
        }
    }
}

impl From<&Principal> for pb::Principal {
    fn from(p: &Principal) -> Self {
        pb::Principal {
            federation: p.federation.clone(),
            organisation: p.organisation.clone(),
            organisation_kind: pb::OrgKind::from(p.organisation_kind).into(),
            kind: match p.subject {
                Subject::Node(_) => pb::PrincipalKind::Node,
                Subject::User(_) => pb::PrincipalKind::User,
            }
            .into(),
            name: p.subject.name().to_owned(),
            role: p.role.map_or(pb::Role::Unspecified, pb::Role::from).into(),
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
