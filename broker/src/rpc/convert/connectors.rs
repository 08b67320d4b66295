//! `allmende.v1.Connectors` messages from registrations.

use crate::registry::Registration;
use allmende_proto::v1 as pb;

/// A registration and its current problem (if any) on the wire.
pub fn connector_info(r: &Registration, problem: Option<String>) -> pb::ConnectorInfo {
    pb::ConnectorInfo {
        dataset: r.dataset.id.clone(),
        kind: r.kind.clone(),
        enabled: r.enabled,
        registered_by: r.registered_by.clone(),
        registered_at_ms: r.registered_at_ms,
        problem: problem.unwrap_or_default(),
        columns: r
            .dataset
            .schema
            .fields
            .iter()
            .map(|f| f.name.clone())
            .collect(),
    }
}

/// The answer to a registration: the connector and the catalog version
/// that publishes it.
pub fn register_response(r: &Registration, catalog_version: u64) -> pb::RegisterConnectorResponse {
    pb::RegisterConnectorResponse {
        connector: Some(connector_info(r, None)),
        catalog_version,
    }
}

/// The answer to a removal.
pub fn remove_response(removed: bool) -> pb::RemoveConnectorResponse {
    pb::RemoveConnectorResponse { removed }
}

/// Every registration with its current problem.
pub fn list_response(list: &[(Registration, Option<String>)]) -> pb::ListConnectorsResponse {
    pb::ListConnectorsResponse {
        connectors: list
            .iter()
            .map(|(r, problem)| connector_info(r, problem.clone()))
            .collect(),
    }
}
