//! Conversion between domain types and `allmende.v1` protobuf messages.
//!
//! Architecture invariant: the only module that maps broker domain types
//! to and from generated protobuf types.

pub mod access;
pub mod connectors;
pub mod consent;
pub mod federation;
pub mod policy;

pub use access::fetch_params;

use crate::federation::peers::PeerRecord;
use crate::pki::{Principal, Subject};
use allmende_proto::v1 as pb;

mod vocab;
mod audit;
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

// ---- Catalog ----

/// A catalog entry on the wire; `replica` says whether the serving node
/// holds it as a copy of a peer's entry.
pub fn catalog_entry(e: &crate::catalog::CatalogEntry, replica: bool) -> pb::CatalogEntry {
    let d = &e.dataset;
    pb::CatalogEntry {
        dataset: d.id.clone(),
        owner: e.owner.clone(),
        owner_node: e.owner_node.clone(),
        publisher_name: e.publisher_name.clone(),
        version: e.version,
        updated_at_unix_ms: e.updated_at_ms,
        title: d.title.clone(),
        description: d.description.clone(),
        language: d.language.clone(),
        licence: d.licence.clone(),
        themes: d.themes.iter().map(|t| t.as_str().to_owned()).collect(),
        keywords: d.keywords.clone(),
        spatial: d.spatial.as_ref().map(|s| pb::CatalogSpatial {
            label: s.label.clone(),
            iri: s.iri.clone().unwrap_or_default(),
        }),
        temporal: d.temporal.as_ref().map(|t| pb::CatalogTemporal {
            start: t.start.clone().unwrap_or_default(),
            end: t.end.clone().unwrap_or_default(),
        }),
        contact_point: d.contact_point.as_ref().map(|c| pb::CatalogContactPoint {
            name: c.name.clone(),
            email: c.email.clone().unwrap_or_default(),
            url: c.url.clone().unwrap_or_default(),
        }),
        access_rights: d.access_rights.as_str().to_owned(),
        legal_basis: d.legal_basis.as_str().to_owned(),
        classification: d.classification.as_str().to_owned(),
        contains_personal_data: d.contains_personal_data,
        public_space_origin: d.public_space_origin,
        allowed_purposes: d
            .allowed_purposes
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        anonymisation_required: d.anonymisation_required,
        update_frequency: d.update_frequency.as_str().to_owned(),
        fields: d
            .schema
            .fields
            .iter()
            .map(|f| pb::CatalogField {
                name: f.name.clone(),
                r#type: f.field_type.name().to_owned(),
                nullable: f.nullable,
            })
            .collect(),
        subject_column: d.schema.subject_column.clone().unwrap_or_default(),
        identifier_columns: d.schema.identifier_columns.clone(),
        access_url: e.dataset.access_url.clone().unwrap_or_default(),
        replica,
    }
}

impl From<&crate::catalog::PeerListing> for pb::ListCatalogResponse {
    fn from(l: &crate::catalog::PeerListing) -> Self {
        pb::ListCatalogResponse {
            organisation: l.organisation.clone(),
            node: l.node.clone(),
            catalog_version: l.catalog_version,
            public_key: l.public_key.clone(),
            records: l
                .records
                .iter()
                .map(|r| pb::SignedCatalogRecord {
                    payload: r.payload.as_bytes().to_vec(),
                    // Stored hex by this node itself; an undecodable value
                    // sends an empty signature, which every receiver refuses.
                    signature: hex::decode(&r.signature).unwrap_or_default(),
                })
                .collect(),
            more: l.more,
        }
    }
}

impl TryFrom<pb::ListCatalogResponse> for crate::catalog::PeerListing {
    type Error = crate::error::ApiError;
    fn try_from(r: pb::ListCatalogResponse) -> Result<Self, Self::Error> {
        let records = r
            .records
            .into_iter()
            .enumerate()
            .map(|(i, rec)| {
                Ok(crate::catalog::SignedRecord {
                    payload: String::from_utf8(rec.payload).map_err(|_| {
                        crate::error::ApiError::InvalidArgument(format!(
                            "catalog record {i} is not UTF-8"
                        ))
                    })?,
                    signature: hex::encode(rec.signature),
                })
            })
            .collect::<Result<Vec<_>, crate::error::ApiError>>()?;
        Ok(crate::catalog::PeerListing {
            organisation: r.organisation,
            node: r.node,
            catalog_version: r.catalog_version,
            public_key: r.public_key,
            records,
            more: r.more,
        })
    }
}

impl TryFrom<pb::SearchCatalogRequest> for crate::catalog::SearchQuery {
    type Error = crate::error::ApiError;
    fn try_from(r: pb::SearchCatalogRequest) -> Result<Self, Self::Error> {
        let invalid =
            |e: &dyn std::fmt::Display| crate::error::ApiError::InvalidArgument(e.to_string());
        Ok(crate::catalog::SearchQuery {
            text: r.query.chars().take(1_000).collect(),
            owner: (!r.owner.is_empty()).then_some(r.owner),
            theme: match r.theme.as_str() {
                "" => None,
                t => Some(t.parse().map_err(|e| invalid(&e))?),
            },
            classification: match r.classification.as_str() {
                "" => None,
                c => Some(c.parse().map_err(|e| invalid(&e))?),
            },
            limit: (r.limit > 0).then(|| usize::try_from(r.limit).unwrap_or(usize::MAX)),
        })
    }
}
