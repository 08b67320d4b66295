//! `allmende.v1.Connectors`: stewards register their datasets' sources.

use super::convert::connectors as convert;
use super::principal;
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::pki::Subject;
use crate::policy::{Action, Resource};
use crate::registry::Registry;
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct ConnectorsService {
    pub ctx: NodeCtx,
    pub registry: Arc<Registry>,
}

impl ConnectorsService {
    /// Decides `register_connector` on the dataset (as this node's
    /// organisation's dataset) and audits it.
    async fn authorize(
        &self,
        p: &crate::pki::Principal,
        dataset: &allmende_policies::Dataset,
    ) -> Result<(), ApiError> {
        let known = self
            .ctx
            .policy
            .with_entities(|e| e.dataset(&dataset.id).is_some())
            .unwrap_or(false);
        if !known {
            // A new dataset: decide on what it would be, then keep it only if allowed.
            self.ctx
                .policy
                .with_entities(|e| e.upsert_dataset(dataset.clone()));
        }
        let request = self.ctx.policy.request(
            p,
            Action::RegisterConnector,
            Resource::Dataset(dataset.id.clone()),
            None,
        );
        let r = self
            .ctx
            .policy
            .authorize(&self.ctx.audit, p, request, &dataset.id)
            .await;
        if r.is_err() && !known {
            self.ctx
                .policy
                .with_entities(|e| e.remove_dataset(&dataset.id));
        }
        r.map(|_| ())
    }

    fn policy_dataset(&self, d: &crate::catalog::DatasetDescription) -> allmende_policies::Dataset {
        d.policy_dataset(&self.ctx.organisation)
    }

    async fn existing(
        &self,
        p: &crate::pki::Principal,
        dataset: &str,
    ) -> Result<crate::registry::Registration, ApiError> {
        let r = self
            .registry
            .registration(dataset)
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no connector is registered for `{}`",
                    crate::text::shown(dataset, 100)
                ))
            })?;
        self.authorize(p, &self.policy_dataset(&r.dataset)).await?;
        Ok(r)
    }
}

#[tonic::async_trait]
impl pb::connectors_server::Connectors for ConnectorsService {
    async fn register(
        &self,
        req: Request<pb::RegisterConnectorRequest>,
    ) -> Result<Response<pb::RegisterConnectorResponse>, Status> {
        super::limits::check_id("kind", &req.get_ref().kind)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        let dataset: crate::catalog::DatasetDescription = serde_json::from_str(&r.dataset_json)
            .map_err(|e| ApiError::InvalidArgument(format!("dataset description: {e}")))?;
        super::limits::check_id("dataset_json.id", &dataset.id)?;
        // Decide first: a caller who may not register learns nothing about sources.
        self.authorize(&p, &self.policy_dataset(&dataset)).await?;
        let (dataset, config, connector) = self
            .registry
            .validate(&p, &r.dataset_json, &r.kind, &r.config_json)
            .await
            .map_err(ApiError::from)?;
        let by = match &p.subject {
            Subject::User(u) => format!("{}/{u}", p.organisation),
            Subject::Node(n) => format!("{}/node/{n}", p.organisation),
        };
        let entry = self
            .registry
            .register(dataset, config, connector, &by)
            .await
            .map_err(ApiError::from)?;
        let reg = self
            .registry
            .registration(entry.id())
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::Internal("registration vanished".into()))?;
        tracing::info!(dataset = %entry.id(), by = %by, "connector registered");
        Ok(Response::new(convert::register_response(
            &reg,
            entry.version,
        )))
    }

    async fn set_enabled(
        &self,
        req: Request<pb::SetConnectorEnabledRequest>,
    ) -> Result<Response<pb::ConnectorInfo>, Status> {
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        self.existing(&p, &r.dataset).await?;
        let reg = self
            .registry
            .set_enabled(&r.dataset, r.enabled)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::connector_info(&reg, None)))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveConnectorRequest>,
    ) -> Result<Response<pb::RemoveConnectorResponse>, Status> {
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let p = principal(&req)?;
        let r = req.into_inner();
        self.existing(&p, &r.dataset).await?;
        let removed = self
            .registry
            .remove(&r.dataset)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::remove_response(removed)))
    }

    async fn list(
        &self,
        req: Request<pb::ListConnectorsRequest>,
    ) -> Result<Response<pb::ListConnectorsResponse>, Status> {
        let p = principal(&req)?;
        // Operational detail (kinds, problems, who registered) is for the
        // organisation's operators, stewards and node; everyone else reads
        // the federated catalog.
        let ctx = &self.ctx;
        ctx.authorize(
            &p,
            Action::ListConnectors,
            ctx.policy.own_org_resource(),
            &format!("connectors/{}", ctx.organisation),
        )
        .await?;
        let list = self.registry.list().map_err(ApiError::from)?;
        Ok(Response::new(convert::list_response(&list)))
    }
}
