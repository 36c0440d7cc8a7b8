//! [`Retry`]: the service that runs each call through the attempt loop.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tower_service::Service;

use crate::BoxError;
use crate::attempt;
use crate::future::ResponseFuture;
use crate::layer::LayerState;

/// Retries the gRPC calls sent through it; built by
/// [`RetryLayer`](crate::RetryLayer).
///
/// It takes `http::Request<tonic::body::Body>` like a tonic `Channel`, so any
/// generated client accepts it. Its error type is [`BoxError`]: errors that
/// the layer produces itself (DEADLINE_EXCEEDED, CANCELLED) are boxed
/// [`tonic::Status`] values, which the generated client surfaces unchanged.
pub struct Retry<S> {
    inner: S,
    state: Arc<LayerState>,
    /// An error from the inner service's readiness check. It becomes the
    /// first attempt's failure, so the policy sees (and may retry) it instead
    /// of the stub reporting UNKNOWN "Service was not ready".
    ready_error: Option<BoxError>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, state: Arc<LayerState>) -> Self {
        Retry {
            inner,
            state,
            ready_error: None,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        // A readiness error belongs to the instance that observed it.
        Retry::new(self.inner.clone(), self.state.clone())
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ResBody> Service<http::Request<Body>> for Retry<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<http::Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                self.ready_error = Some(error.into());
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The readied service goes to this call; the clone waits for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let first_ready = self.ready_error.take().map_or(Ok(()), Err);
        ResponseFuture::new(attempt::run(
            inner,
            first_ready,
            self.state.clone(),
            request,
        ))
    }
}
