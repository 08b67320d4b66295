//! `arrow.flight.protocol.FlightService`: the release pipeline's Arrow
//! Flight face, on the node's gRPC port behind the same mTLS and layers.
//!
//! `GetFlightInfo` and `GetSchema` decide (audited) for the caller and
//! answer the schema after projection and pseudonymisation; `GetFlightInfo`
//! adds a ticket sealed by the node (`access::ticket`). `DoGet` opens the
//! ticket and runs the whole release pipeline for the presenting caller —
//! decide, durable intent, stream, audited completion — exactly as
//! `Access.Fetch` does; only the encoding differs (`FlightData`). A ticket is
//! no capability: another caller presenting it is decided for themselves.
//! `ListFlights` lists what the caller may read, decided by the same rules
//! without auditing. The upload, exchange and action calls are refused
//! with `UNIMPLEMENTED`.

use super::access::{BoxStream, grant_columns, release_stream};
use super::convert::flight as conv;
use super::principal;
use crate::access::Fetcher;
use crate::error::ApiError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::StreamExt;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug)]
pub struct FlightFace {
    pub fetcher: Arc<Fetcher>,
    /// A read under a grant names only the grant's columns, and ends when
    /// the grant is revoked.
    pub grants: Arc<crate::grants::Grants>,
    /// A stream whose client takes no message for this long is ended.
    pub idle_timeout: std::time::Duration,
}

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::from(ApiError::Unimplemented(what.to_owned())))
}

impl FlightFace {
    /// The release parameters of a descriptor, with a grant's columns, and
    /// the schema decided (audited) for `req`'s caller.
    async fn decided(
        &self,
        req: &Request<FlightDescriptor>,
    ) -> Result<(crate::access::FetchParams, arrow::datatypes::SchemaRef), Status> {
        let p = principal(req)?;
        let mut params = conv::descriptor_params(req.get_ref())?;
        grant_columns(&self.grants, &self.fetcher, &p, &mut params).await?;
        let schema = self
            .fetcher
            .describe(&p, &params)
            .await
            .map_err(ApiError::from)?;
        Ok((params, schema))
    }
}

#[tonic::async_trait]
impl FlightService for FlightFace {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn handshake(
        &self,
        _req: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented(
            "`Handshake` is not served: callers are authenticated by their mTLS client certificate, no token is needed",
        )
    }

    async fn list_flights(
        &self,
        req: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let p = principal(&req)?;
        let (purpose, grant) = conv::criteria(req.get_ref())?;
        // Under a grant: its columns (as a read under it names them).
        let columns = match &grant {
            Some(g) => self
                .grants
                .columns_for_read(&p, g, &[])
                .map_err(ApiError::from)?,
            None => Vec::new(),
        };
        let readable = self
            .fetcher
            .readable(&p, purpose, grant.as_deref(), &columns)
            .map_err(ApiError::from)?;
        let mut infos = Vec::with_capacity(readable.len());
        for (params, schema) in readable {
            let ticket = self.fetcher.seal_ticket(&params).map_err(ApiError::from)?;
            infos.push(Ok(conv::flight_info(
                conv::dataset_descriptor(&params.dataset),
                &schema,
                ticket,
            )?));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (params, schema) = self.decided(&req).await?;
        let ticket = self.fetcher.seal_ticket(&params).map_err(ApiError::from)?;
        Ok(Response::new(conv::flight_info(
            req.into_inner(),
            &schema,
            ticket,
        )?))
    }

    async fn poll_flight_info(
        &self,
        _req: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented(
            "`PollFlightInfo` is not served: `GetFlightInfo` answers at once; use it instead",
        )
    }

    async fn get_schema(
        &self,
        req: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let (_, schema) = self.decided(&req).await?;
        Ok(Response::new(conv::schema_result(&schema)?))
    }

    async fn do_get(&self, req: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        let p = principal(&req)?;
        let mut params = self
            .fetcher
            .open_ticket(&p, &req.get_ref().ticket)
            .await
            .map_err(ApiError::from)?;
        grant_columns(&self.grants, &self.fetcher, &p, &mut params).await?;
        let grant = params.grant_id.clone();
        let rx = self
            .fetcher
            .start_with::<conv::FlightEncoder>(&p, params)
            .await
            .map_err(ApiError::from)?;
        let batches = release_stream(
            rx,
            self.idle_timeout,
            grant.map(|g| (self.grants.clone(), g)),
            conv::flight_data,
        );
        let messages = batches.flat_map(|m| {
            futures::stream::iter(match m {
                Ok(data) => data.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn do_put(
        &self,
        _req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        unimplemented(
            "`DoPut` is not served: a node takes no uploads over Arrow Flight; data enters through a registered connector",
        )
    }

    async fn do_exchange(
        &self,
        _req: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented(
            "`DoExchange` is not served: a node only releases data, through `GetFlightInfo` and `DoGet`",
        )
    }

    async fn do_action(
        &self,
        _req: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unimplemented("`DoAction` is not served: a node offers no Flight actions")
    }

    async fn list_actions(
        &self,
        _req: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unimplemented("`ListActions` is not served: a node offers no Flight actions")
    }
}
