//! `allmende.v1.Access`: the release pipeline on the wire.

use super::principal;
use crate::access::{Fetcher, fetch::FetchMessage};
use allmende_proto::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct AccessService {
    pub fetcher: Arc<Fetcher>,
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::access_server::Access for AccessService {
    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let p = principal(&req)?;
        let params = super::convert::fetch_params(req.into_inner())?;
        let mut rx = self.fetcher.start(&p, params).await?;
        let stream = async_stream(move |tx| async move {
            while let Some(m) = rx.recv().await {
                let item = match m {
                    FetchMessage::Ipc(bytes) => Ok(pb::FetchResponse {
                        arrow_ipc: bytes,
                        summary: None,
                    }),
                    FetchMessage::Done {
                        ipc,
                        rows,
                        next_cursor,
                        complete,
                        audit_sequence,
                    } => Ok(pb::FetchResponse {
                        arrow_ipc: ipc,
                        summary: Some(pb::FetchSummary {
                            rows,
                            next_cursor: next_cursor.unwrap_or_default(),
                            complete,
                            audit_sequence,
                        }),
                    }),
                    FetchMessage::Failed(e) => Err(Status::from(e)),
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a channel of one message: the producer
/// waits while the client does not read (backpressure end to end).
fn async_stream<F, Fut>(f: F) -> FetchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::FetchResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
