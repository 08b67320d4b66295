//! Conversion between domain types and `allmende.v1` protobuf messages.
//!
//! Architecture invariant: the only module that maps broker domain types
//! to and from generated protobuf types.

use crate::peers::PeerRecord;
use crate::pki::{OrgKind, Principal, Role, Subject};
use allmende_proto::v1 as pb;

mod audit;
pub use audit::{
    checkpoint_response, cosignature_response, status_response, verify_response, witnessed_response,
};

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

// ---- Catalog and consent (issue 5) ----

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

impl From<&crate::consent::ConsentRecord> for pb::ConsentRecord {
    fn from(r: &crate::consent::ConsentRecord) -> Self {
        pb::ConsentRecord {
            subject_id: r.subject_id.clone(),
            controller: r.controller.clone(),
            dataset: r.dataset.clone(),
            purposes: r.purposes.iter().map(|p| p.as_str().to_owned()).collect(),
            status: r.status.as_str().to_owned(),
            given_at_unix: r.given_at,
            withdrawn_at_unix: r.withdrawn_at,
            expires_at_unix: r.expires_at,
            withdrawn_purposes: r
                .withdrawn_purposes
                .iter()
                .map(|(p, at)| pb::ConsentPurposeWithdrawal {
                    purpose: p.as_str().to_owned(),
                    withdrawn_at_unix: *at,
                })
                .collect(),
        }
    }
}

impl From<&crate::consent::ImportReport> for pb::ImportConsentResponse {
    fn from(r: &crate::consent::ImportReport) -> Self {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        pb::ImportConsentResponse {
            rows: n(r.rows),
            stored: n(r.stored),
            unchanged: n(r.unchanged),
            superseded: n(r.superseded),
        }
    }
}

/// A fetch request from the wire, parsed strictly.
pub fn fetch_params(
    r: pb::FetchRequest,
) -> Result<crate::access::FetchParams, crate::error::ApiError> {
    use crate::error::ApiError;
    let filter = match r.filter {
        None => None,
        Some(f) => Some(filter(f, 0)?),
    };
    if r.dataset.is_empty() {
        return Err(ApiError::InvalidArgument("`dataset` is empty".into()));
    }
    if r.columns.len() > 1000 {
        return Err(ApiError::InvalidArgument("too many columns".into()));
    }
    Ok(crate::access::FetchParams {
        dataset: r.dataset,
        purpose: crate::rpc::parse_purpose(&r.purpose)?,
        columns: r.columns,
        filter,
        resume_cursor: (!r.resume_cursor.is_empty()).then_some(r.resume_cursor),
        max_rows: r.max_rows,
        grant_id: (!r.grant_id.is_empty()).then_some(r.grant_id),
        request_id: (!r.request_id.is_empty()).then(|| r.request_id.chars().take(128).collect()),
    })
}

fn filter(f: pb::Filter, depth: usize) -> Result<crate::access::Filter, crate::error::ApiError> {
    use crate::access::{CompareOp, Filter, FilterValue};
    use crate::error::ApiError;
    if depth > 16 {
        return Err(ApiError::InvalidArgument(
            "filter is nested too deeply".into(),
        ));
    }
    Ok(match f.expr {
        None => return Err(ApiError::InvalidArgument("empty filter".into())),
        Some(pb::filter::Expr::All(l)) => Filter::All(
            l.filters
                .into_iter()
                .map(|f| filter(f, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(pb::filter::Expr::Any(l)) => Filter::Any(
            l.filters
                .into_iter()
                .map(|f| filter(f, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Some(pb::filter::Expr::Comparison(c)) => {
            let op = match pb::CompareOp::try_from(c.op) {
                Ok(pb::CompareOp::Eq) => CompareOp::Eq,
                Ok(pb::CompareOp::Ne) => CompareOp::Ne,
                Ok(pb::CompareOp::Lt) => CompareOp::Lt,
                Ok(pb::CompareOp::Le) => CompareOp::Le,
                Ok(pb::CompareOp::Gt) => CompareOp::Gt,
                Ok(pb::CompareOp::Ge) => CompareOp::Ge,
                _ => {
                    return Err(ApiError::InvalidArgument(
                        "comparison without operator".into(),
                    ));
                }
            };
            let value = match c.value.and_then(|v| v.kind) {
                Some(pb::value::Kind::StringValue(s)) => FilterValue::String(s),
                Some(pb::value::Kind::IntValue(i)) => FilterValue::Int(i),
                Some(pb::value::Kind::FloatValue(x)) => FilterValue::Float(x),
                Some(pb::value::Kind::BoolValue(b)) => FilterValue::Bool(b),
                Some(pb::value::Kind::TimestampMs(t)) => FilterValue::TimestampMs(t),
                None => return Err(ApiError::InvalidArgument("comparison without value".into())),
            };
            Filter::Compare {
                column: c.column,
                op,
                value,
            }
        }
    })
}
