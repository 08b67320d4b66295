//! Ends a response stream when its caller loses the right to be served.
//!
//! The auth layer re-checks the caller on every request; a long response
//! stream (a fetch) is one request. [`RecheckBody`] wraps every response body
//! and re-checks the caller against the current membership before each frame
//! and whenever the membership changes, so a revoked leaf or CA, a removed
//! organisation or an expired certificate ends the open stream with
//! `UNAUTHENTICATED` in the trailers, and the producer behind it is dropped.

use crate::error::ApiError;
use crate::pki::{Principal, Trust};
use bytes::Bytes;
use futures::Stream;
use http_body::Frame;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_stream::wrappers::WatchStream;

/// A response body that stops at the first frame after the caller's
/// certificate, its CA or its organisation stopped being trusted.
pub struct RecheckBody {
    inner: tonic::body::Body,
    trust: Arc<Trust>,
    principal: Arc<Principal>,
    changes: WatchStream<u64>,
    ended: bool,
}

impl std::fmt::Debug for RecheckBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecheckBody")
            .field("principal", &self.principal.uri())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl RecheckBody {
    pub fn new(inner: tonic::body::Body, trust: Arc<Trust>, principal: Arc<Principal>) -> Self {
        let changes = WatchStream::from_changes(trust.subscribe());
        Self {
            inner,
            trust,
            principal,
            changes,
            ended: false,
        }
    }

    /// The trailers that end the stream for a refused caller.
    fn refusal(&mut self, reason: &crate::pki::AuthError) -> Frame<Bytes> {
        self.ended = true;
        // Drop the producer: a fetch behind this body stops reading rows.
        self.inner = tonic::body::Body::empty();
        tracing::info!(
            org = %self.principal.organisation,
            reason = reason.label(),
            "open stream ended: caller no longer trusted"
        );
        let status =
            tonic::Status::from(ApiError::Unauthenticated(format!("stream ended: {reason}")));
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            // The message could not be encoded; the code alone still ends it.
            trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
        }
        Frame::trailers(trailers)
    }
}

impl http_body::Body for RecheckBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        // Drain membership change notices; this also registers the waker,
        // so a change wakes a stream that is waiting for its producer.
        while let Poll::Ready(Some(_)) = Pin::new(&mut self.changes).poll_next(cx) {}
        if let Err(e) = self.trust.recheck(&self.principal) {
            let frame = self.refusal(&e);
            return Poll::Ready(Some(Ok(frame)));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
