//! `allmende.v1.Access`: the release pipeline on the wire.

use super::principal;
use crate::access::fetch::FetchMessage;
use crate::access::{FetchParams, Fetcher};
use allmende_proto::v1 as pb;
use futures::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Debug)]
pub struct AccessService {
    pub fetcher: Arc<Fetcher>,
    /// A read under a grant names only the grant's columns.
    pub grants: Arc<crate::grants::Grants>,
    /// A fetch whose client takes no message for this long is ended (its
    /// release aborted and audited, its reader and fetch slot freed).
    pub idle_timeout: std::time::Duration,
}

/// Refuses over-long identifiers anywhere in a fetch request.
pub(super) fn check_request(r: &pb::FetchRequest) -> Result<(), Status> {
    use super::limits::{MAX_TOKEN_BYTES, check_id, check_ids, check_len};
    check_id("dataset", &r.dataset)?;
    check_id("purpose", &r.purpose)?;
    check_id("grant_id", &r.grant_id)?;
    check_id("request_id", &r.request_id)?;
    check_ids("columns", &r.columns)?;
    check_len("resume_cursor", &r.resume_cursor, MAX_TOKEN_BYTES)?;
    if let Some(f) = &r.filter {
        check_filter(f)?;
    }
    Ok(())
}

fn check_filter(f: &pb::Filter) -> Result<(), Status> {
    use super::limits::check_id;
    match &f.expr {
        Some(pb::filter::Expr::All(l) | pb::filter::Expr::Any(l)) => {
            l.filters.iter().try_for_each(check_filter)
        }
        Some(pb::filter::Expr::Comparison(c)) => {
            check_id("filter.column", &c.column)?;
            if let Some(pb::value::Kind::StringValue(v)) =
                c.value.as_ref().and_then(|v| v.kind.as_ref())
            {
                check_id("filter.value", v)?;
            }
            Ok(())
        }
        None => Ok(()),
    }
}

type FetchStream = BoxStream<pb::FetchResponse>;

/// A response stream of a face of the release pipeline.
pub(super) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::access_server::Access for AccessService {
    type FetchStream = FetchStream;

    async fn fetch(
        &self,
        req: Request<pb::FetchRequest>,
    ) -> Result<Response<Self::FetchStream>, Status> {
        let p = principal(&req)?;
        check_request(req.get_ref())?;
        let mut params = super::convert::fetch_params(req.into_inner())?;
        grant_columns(&self.grants, &self.fetcher, &p, &mut params).await?;
        let grant = params.grant_id.clone();
        let rx = self
            .fetcher
            .start(&p, params)
            .await
            .map_err(crate::error::ApiError::from)?;
        Ok(Response::new(release_stream(
            rx,
            self.idle_timeout,
            grant.map(|g| (self.grants.clone(), g)),
            super::convert::access::fetch_response,
        )))
    }
}

/// A read under a grant names only the grant's columns (none named: the
/// grant's); checked and audited by the grants, for every face.
pub(super) async fn grant_columns(
    grants: &crate::grants::Grants,
    fetcher: &Fetcher,
    caller: &crate::pki::Principal,
    params: &mut FetchParams,
) -> Result<(), Status> {
    if let Some(g) = &params.grant_id {
        params.columns = grants
            .columns_for_read_audited(&fetcher.audit, caller, g, &params.columns)
            .await
            .map_err(crate::error::ApiError::from)?;
    }
    Ok(())
}

/// The response stream of a started release, for every face: each message
/// of the release task is turned into the face's message by `map`; a
/// revocation of `revoked`'s grant ends the stream (`PERMISSION_DENIED`),
/// and so does a client that takes no message for `idle`. Dropping the
/// release's receiver aborts the release (its completion is audited as
/// aborted).
pub(super) fn release_stream<O, T, F>(
    mut rx: tokio::sync::mpsc::Receiver<FetchMessage<O>>,
    idle: std::time::Duration,
    revoked: Option<(Arc<crate::grants::Grants>, String)>,
    map: F,
) -> BoxStream<T>
where
    O: Send + 'static,
    T: Send + 'static,
    F: Fn(FetchMessage<O>) -> Result<T, crate::error::ApiError> + Send + 'static,
{
    let revoked = revoked.map(|(grants, g)| async move {
        grants.until_revoked(&g).await;
        g
    });
    async_stream(idle, move |tx, ended_idle| async move {
        let revoked = async move {
            match revoked {
                Some(r) => r.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(revoked);
        loop {
            let m = tokio::select! {
                biased;
                g = &mut revoked => {
                    drop(rx);
                    let e = crate::error::ApiError::PermissionDenied(format!(
                        "grant `{g}` was revoked; the stream ended"
                    ));
                    let _ = tokio::time::timeout(idle, tx.send(Err(Status::from(e)))).await;
                    return;
                }
                m = rx.recv() => m,
            };
            let Some(m) = m else { return };
            let item = map(m).map_err(Status::from);
            match tokio::time::timeout(idle, tx.send(item)).await {
                Ok(Ok(())) => {}
                // The client went away.
                Ok(Err(_)) => return,
                // The client stopped reading: end the release (dropping
                // `rx` aborts it) rather than hold its reader.
                Err(_) => {
                    tracing::info!(idle_secs = idle.as_secs(), "fetch stream idle, ended");
                    ended_idle.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    })
}

/// A stream fed by a task through a channel of one message: the producer
/// waits while the client does not read (backpressure end to end). When the
/// task ended it because the client took no message for `idle`, the stream
/// ends with `RESOURCE_EXHAUSTED` after what was already queued.
fn async_stream<T, F, Fut>(idle: std::time::Duration, f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>, Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let ended_idle = Arc::new(AtomicBool::new(false));
    tokio::spawn(f(tx, ended_idle.clone()));
    let tail = futures::stream::once(async move {
        ended_idle.load(Ordering::SeqCst).then(|| {
            Err(Status::from(crate::error::ApiError::ResourceExhausted(
                format!(
                    "fetch stream ended: the client took no message for `{}` s; resume with the last cursor",
                    idle.as_secs()
                ),
            )))
        })
    })
    .filter_map(std::future::ready);
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).chain(tail))
}
