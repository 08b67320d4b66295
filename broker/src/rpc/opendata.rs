//! `allmende.v1.OpenData`: the owner's data stewards publish anonymised
//! releases of their datasets; anyone lists the published releases; the
//! stewards see the ε budget.

use super::convert::opendata as convert;
use super::principal;
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::opendata::publish::Publisher;
use crate::policy::{Action, Resource};
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct OpenDataService {
    pub ctx: NodeCtx,
    pub publisher: Arc<Publisher>,
}

impl OpenDataService {
    /// Decides `publish_open_data` on `dataset` for the caller and audits it.
    async fn decide(&self, p: &crate::pki::Principal, dataset: &str) -> Result<(), ApiError> {
        tracing::Span::current().record("dataset", dataset);
        self.ctx
            .authorize(
                p,
                Action::PublishOpenData,
                Resource::Dataset(dataset.to_owned()),
                dataset,
            )
            .await
    }
}

#[tonic::async_trait]
impl pb::open_data_server::OpenData for OpenDataService {
    async fn publish(
        &self,
        req: Request<pb::PublishReleaseRequest>,
    ) -> Result<Response<pb::PublishReleaseResponse>, Status> {
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let p = principal(&req)?;
        let dataset = req.into_inner().dataset;
        // Decide first: a caller who may not publish learns nothing more.
        self.decide(&p, &dataset).await?;
        let published = self
            .publisher
            .publish(&p, &dataset)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::published(&published)))
    }

    async fn list_releases(
        &self,
        req: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let dataset = req.into_inner().dataset;
        let all = self
            .publisher
            .list(Some(dataset.as_str()).filter(|d| !d.is_empty()))
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::releases(&all)))
    }

    async fn budget(
        &self,
        req: Request<pb::ReleaseBudgetRequest>,
    ) -> Result<Response<pb::ReleaseBudget>, Status> {
        super::limits::check_id("dataset", &req.get_ref().dataset)?;
        let p = principal(&req)?;
        let dataset = req.into_inner().dataset;
        self.decide(&p, &dataset).await?;
        let state = self
            .publisher
            .budget(&dataset)
            .map_err(ApiError::from)?
            .ok_or_else(|| {
                ApiError::FailedPrecondition(format!(
                    "the release spec of `{}` uses no differential privacy, so it has no ε budget",
                    crate::text::shown(&dataset, 100)
                ))
            })?;
        Ok(Response::new(convert::budget(&state)))
    }
}
