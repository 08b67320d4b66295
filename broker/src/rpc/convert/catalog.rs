//! `allmende.v1.Catalog` messages from the federated catalog's domain
//! types, and search requests into a query.

use crate::catalog::{CatalogEntry, SearchResult};
use allmende_proto::v1 as pb;

/// A catalog entry on the wire; `replica` says whether the serving node
/// holds it as a copy of a peer's entry.
pub fn catalog_entry(e: &CatalogEntry, replica: bool) -> pb::CatalogEntry {
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
            text: crate::text::shown(&r.query, 1_000),
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

/// The answer to `Catalog.Notify`.
pub fn notify_response(pull_scheduled: bool) -> pb::NotifyCatalogResponse {
    pb::NotifyCatalogResponse { pull_scheduled }
}

/// The answer to `Catalog.Search`; `replica` tells entries the serving node
/// holds as copies of peers' entries.
pub fn search_response(
    found: &SearchResult,
    replica: impl Fn(&CatalogEntry) -> bool,
) -> pb::SearchCatalogResponse {
    pb::SearchCatalogResponse {
        entries: found
            .entries
            .iter()
            .map(|e| catalog_entry(e, replica(e)))
            .collect(),
        total: u64::try_from(found.total).unwrap_or(u64::MAX),
    }
}

/// The answer to `Catalog.Get`, with the entry as DCAT-AP.de Turtle if asked.
pub fn get_response(
    entry: &CatalogEntry,
    replica: bool,
    dcat_turtle: String,
) -> pb::GetCatalogEntryResponse {
    pb::GetCatalogEntryResponse {
        entry: Some(catalog_entry(entry, replica)),
        dcat_turtle,
    }
}

/// The format a `Catalog.Export` asks for.
pub fn export_format(
    format: i32,
) -> Result<crate::catalog::dcat::ExportFormat, crate::error::ApiError> {
    use crate::catalog::dcat::ExportFormat;
    match pb::CatalogFormat::try_from(format) {
        Ok(pb::CatalogFormat::Turtle) => Ok(ExportFormat::Turtle),
        Ok(pb::CatalogFormat::JsonLd) => Ok(ExportFormat::JsonLd),
        Ok(pb::CatalogFormat::Unspecified) | Err(_) => {
            Err(crate::error::ApiError::InvalidArgument(format!(
                "catalog format `{format}` is not one of: turtle, jsonld"
            )))
        }
    }
}

/// The answer to `Catalog.Export`.
pub fn export_response(
    document: String,
    format: crate::catalog::dcat::ExportFormat,
    datasets: usize,
) -> pb::ExportCatalogResponse {
    pb::ExportCatalogResponse {
        document,
        media_type: format.media_type().to_owned(),
        datasets: u32::try_from(datasets).unwrap_or(u32::MAX),
    }
}
