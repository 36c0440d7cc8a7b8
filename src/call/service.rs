//! [`Retry`]: the service that runs each call through the attempt loop.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::attempt::{FirstAttempt, SharedService, clone_shared};
use super::spans::{self, AttemptSpan};
use crate::BoxError;
use crate::body::response::ResponseBody;
use crate::call::end::CallEnd;
use crate::call::future::{ResponseFuture, into_loop};
use crate::call::kit::{self, KitBox};
use crate::state::LayerState;

/// Retries the gRPC calls sent through it; built by
/// [`RetryLayer`](crate::RetryLayer).
///
/// It takes `http::Request<tonic::body::Body>` like a tonic `Channel`, so any
/// generated client accepts it. Its error type is [`BoxError`]: errors that
/// the layer produces itself (DEADLINE_EXCEEDED, CANCELLED) are boxed
/// [`tonic::Status`] values, which the generated client surfaces unchanged.
///
/// # Readiness errors
///
/// When the inner service's `poll_ready` fails, `poll_ready` still returns
/// `Ok`, and the next call's first attempt fails with that error, so the
/// policy decides on it (the stub would otherwise report UNKNOWN "Service
/// was not ready"). Tower's contract says a service whose `poll_ready`
/// failed must not be used again, and it is not: the failed instance is
/// dropped at once and replaced by a fresh clone of the spare, so it is
/// never polled or called again. Retries go out on fresh clones too. The
/// error is classified like any transport error (a connect failure is
/// UNAVAILABLE; a [`tonic::Status`] keeps its code), so only a retryable
/// code (e.g. UNAVAILABLE) is retried; anything else surfaces as it is.
pub struct Retry<S> {
    inner: S,
    /// A clone of the inner service that retries (and hedges) are sent on.
    /// Sharing it means a call clones the inner service only when it
    /// actually retries; the first attempt uses `inner`, as a client
    /// without the layer would.
    spare: SharedService<S>,
    state: Arc<LayerState>,
    /// An error from the inner service's readiness check. It becomes the
    /// first attempt's failure, so the policy sees (and may retry) it instead
    /// of the stub reporting UNKNOWN "Service was not ready".
    ready_error: Option<BoxError>,
}

impl<S: Clone> Retry<S> {
    pub(crate) fn new(inner: S, state: Arc<LayerState>) -> Self {
        Retry {
            spare: Arc::new(std::sync::Mutex::new(inner.clone())),
            inner,
            state,
            ready_error: None,
        }
    }
}

impl<S> Retry<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for Retry<S> {
    fn clone(&self) -> Self {
        // A readiness error belongs to the instance that observed it.
        Retry {
            inner: self.inner.clone(),
            spare: self.spare.clone(),
            state: self.state.clone(),
            ready_error: None,
        }
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
    type Response = http::Response<ResponseBody<ResBody, CallEnd>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.ready_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                // Tower: a service whose readiness failed must not be used
                // again. Drop it now; the next readiness check polls a clone.
                self.inner = clone_shared(&self.spare);
                self.ready_error = Some(error.into());
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let Some(policy_ref) = self.state.resolve(&request) else {
            tracing::trace!(
                method = request.uri().path(),
                "no retry policy for this method: passing through"
            );
            return ResponseFuture::pass_through(self.send_first(request));
        };
        let mut kit = kit::take(&self.state);
        // An emptied kit holds no span; one is made only when DEBUG spans
        // may be on (a static and a relaxed load, where building a disabled
        // span and moving it in costs a stall of its own).
        let traced = tracing::level_enabled!(tracing::Level::DEBUG);
        if traced {
            kit.as_mut().project().call.span = spans::call_span(&request);
        }
        kit.as_mut().start(policy_ref, &mut request);
        if kit.call.policy().hedging.is_some() {
            return self.hedged(kit, request);
        }
        if traced {
            let call = kit.as_mut().project().call;
            call.first_span = AttemptSpan::new(
                Some(&call.span),
                request.uri(),
                request.extensions(),
                1,
                false,
            );
        }
        // The first attempt goes out now, on the service `poll_ready`
        // readied, exactly as it would without the layer.
        match self.ready_error.take() {
            None => {
                // Cloned first, so that nothing runs between the inner call
                // and the future it returns being written into ours.
                let spare = self.spare.clone();
                // Sent inside its span, so that a layer beneath sees it
                // (e.g. to propagate the trace context).
                let inner = &mut self.inner;
                let sent = kit.call.first_span.span().in_scope(|| inner.call(request));
                ResponseFuture::first(sent, kit, spare)
            }
            Some(error) => ResponseFuture::looping(into_loop(
                kit,
                FirstAttempt::<S>::InFlight(Err(error)),
                self.spare.clone(),
            )),
        }
    }
}

impl<S, ResBody> Retry<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    /// A hedged call: the hedging loop sends every attempt itself, so it
    /// takes the readied service and leaves a clone for the next call.
    #[cold]
    fn hedged(
        &mut self,
        mut kit: KitBox,
        request: http::Request<Body>,
    ) -> ResponseFuture<S, ResBody> {
        let first_ready = self.ready_error.take().map_or(Ok(()), Err);
        let inner = std::mem::replace(&mut self.inner, clone_shared(&self.spare));
        kit.as_mut().first_attempt_over();
        let span = kit.call.span.clone();
        ResponseFuture::looping(Box::pin(
            async move {
                let parts = kit.as_mut().project();
                let result = parts
                    .call
                    .run_hedged(
                        inner,
                        first_ready,
                        *parts.first_deadline,
                        parts.replay,
                        parts.heads,
                        request,
                    )
                    .await;
                kit::recycle(kit);
                result
            }
            .instrument(span),
        ))
    }
}

impl<S> Retry<S>
where
    S: Service<http::Request<Body>>,
    S::Error: Into<BoxError>,
{
    /// Sends `request` on the readied inner service, unless readiness failed.
    fn send_first(&mut self, request: http::Request<Body>) -> Result<S::Future, BoxError> {
        match self.ready_error.take() {
            Some(error) => Err(error),
            None => Ok(self.inner.call(request)),
        }
    }
}
