//! The one tower service shape the node's request layers share: a layer
//! ([`Around`]) runs around the inner service for each request, taking the
//! service that was driven to readiness.

use std::pin::Pin;
use std::task::{Context, Poll};

/// A boxed response future.
pub type BoxFut<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

/// A service the node's request layers wrap: gRPC over HTTP, movable
/// between tasks.
pub trait Inner<B>:
    tower::Service<
        http::Request<B>,
        Response = http::Response<tonic::body::Body>,
        Future: Send + 'static,
    > + Send
    + 'static
{
}

impl<S, B> Inner<B> for S where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Future: Send + 'static,
        > + Send
        + 'static
{
}

/// What a request layer does around the inner service `inner` for `req`.
pub trait Around<S: Inner<B>, B>: Clone + Send + 'static {
    fn around(&self, inner: S, req: http::Request<B>) -> BoxFut<S::Response, S::Error>;
}

/// The service of a layer `A` in front of `S`.
#[derive(Debug, Clone)]
pub struct Layered<S, A> {
    pub(super) inner: S,
    pub(super) layer: A,
}

impl<S, B, A> tower::Service<http::Request<B>> for Layered<S, A>
where
    S: Inner<B> + Clone,
    B: Send + 'static,
    A: Around<S, B>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFut<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Take the service that was driven to readiness.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        self.layer.around(inner, req)
    }
}
