//! `allmende.v1.Catalog`: listing, search, lookup and DCAT-AP.de export of
//! the federated catalog, and `Notify`, which asks the replicator
//! (`federation::replicator`) to pull from the notifying peer.

use super::convert::catalog as convert;
use super::principal;
use crate::catalog::{Catalog, SearchQuery};
use crate::ctx::NodeCtx;
use crate::error::ApiError;
use crate::federation::replicator::PullTrigger;
use crate::pki::Subject;
use allmende_proto::v1 as pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Records per `Catalog.List` page.
pub const PAGE_RECORDS: usize = 256;
/// Bytes of records per page (before protobuf framing).
pub const PAGE_BYTES: usize = 2 * 1024 * 1024;

/// `allmende.v1.Catalog`.
#[derive(Debug, Clone)]
pub struct CatalogService {
    pub ctx: NodeCtx,
    pub catalog: Arc<Catalog>,
    pub trigger: PullTrigger,
    pub federation: String,
}

#[tonic::async_trait]
impl pb::catalog_server::Catalog for CatalogService {
    async fn list(
        &self,
        req: Request<pb::ListCatalogRequest>,
    ) -> Result<Response<pb::ListCatalogResponse>, Status> {
        // Metadata is federated to every member by design.
        let _p = principal(&req)?;
        let r = req.into_inner();
        let max = match r.max_records {
            0 => PAGE_RECORDS,
            n => usize::try_from(n).unwrap_or(PAGE_RECORDS).min(PAGE_RECORDS),
        };
        let listing = self.catalog.list_page(r.since_version, max, PAGE_BYTES);
        Ok(Response::new(pb::ListCatalogResponse::from(&listing)))
    }

    async fn notify(
        &self,
        req: Request<pb::NotifyCatalogRequest>,
    ) -> Result<Response<pb::NotifyCatalogResponse>, Status> {
        let p = principal(&req)?;
        super::federation::authorize_metadata(&self.ctx, &p, "notify_catalog").await?;
        let Subject::Node(node) = &p.subject else {
            return Err(
                ApiError::Internal("a catalog notice was allowed for a person".into()).into(),
            );
        };
        let announced = req.into_inner().catalog_version;
        let behind = self
            .catalog
            .peer_version(&p.organisation, node)
            .is_none_or(|v| v < announced);
        let scheduled = behind && self.trigger.request(&p.organisation, node);
        tracing::debug!(
            peer_org = %p.organisation,
            peer_node = %node,
            announced,
            scheduled,
            "catalog change notified"
        );
        Ok(Response::new(convert::notify_response(scheduled)))
    }

    async fn search(
        &self,
        req: Request<pb::SearchCatalogRequest>,
    ) -> Result<Response<pb::SearchCatalogResponse>, Status> {
        let _p = principal(&req)?;
        let r = req.get_ref();
        super::limits::check_len("query", &r.query, super::limits::MAX_TOKEN_BYTES)?;
        super::limits::check_id("owner", &r.owner)?;
        super::limits::check_id("theme", &r.theme)?;
        super::limits::check_id("classification", &r.classification)?;
        let q = SearchQuery::try_from(req.into_inner())?;
        let found = self.catalog.search(&q);
        Ok(Response::new(convert::search_response(&found, |e| {
            !self.catalog.is_local_entry(e)
        })))
    }

    async fn get(
        &self,
        req: Request<pb::GetCatalogEntryRequest>,
    ) -> Result<Response<pb::GetCatalogEntryResponse>, Status> {
        let _p = principal(&req)?;
        let r = req.into_inner();
        super::limits::check_id("dataset", &r.dataset)?;
        super::limits::check_id("owner", &r.owner)?;
        tracing::Span::current().record("dataset", tracing::field::display(&r.dataset));
        let owner = (!r.owner.is_empty()).then_some(r.owner.as_str());
        let entry = self
            .catalog
            .get(owner, &r.dataset)
            .map_err(ApiError::from)?;
        let dcat_turtle = if r.include_dcat {
            crate::catalog::dcat::to_turtle(&entry, &self.federation)
        } else {
            String::new()
        };
        let replica = !self.catalog.is_local_entry(&entry);
        Ok(Response::new(convert::get_response(
            &entry,
            replica,
            dcat_turtle,
        )))
    }

    async fn export(
        &self,
        req: Request<pb::ExportCatalogRequest>,
    ) -> Result<Response<pb::ExportCatalogResponse>, Status> {
        // Exempt like `Search`: the export holds exactly the metadata a
        // search without filters shows the caller, nothing more.
        let _p = principal(&req)?;
        let format = convert::export_format(req.get_ref().format)?;
        let entries = self.catalog.entries();
        let info = crate::catalog::dcat::CatalogInfo::from_membership(
            &self.ctx.trust.snapshot().doc,
            &self.ctx.organisation,
            &self.federation,
        );
        let document = crate::catalog::dcat::export(&entries, &info, format);
        Ok(Response::new(convert::export_response(
            document,
            format,
            entries.len(),
        )))
    }
}
