//! [`Retry`]: the service that runs each call through the attempt loop.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tower_service::Service;
use tracing::{Instrument, debug_span, field};

use super::attempt::{FirstAttempt, SharedService, clone_shared};
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
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            kit.as_mut().project().call.span = debug_span!(
                "grpc.call",
                method = request.uri().path(),
                attempts = field::Empty,
                outcome = field::Empty,
            );
        }
        kit.as_mut().start(policy_ref, &mut request);
        if kit.call.policy().hedging.is_some() {
            return self.hedged(kit, request);
        }
        // The first attempt goes out now, on the service `poll_ready`
        // readied, exactly as it would without the layer.
        match self.ready_error.take() {
            None => {
                // Cloned first, so that nothing runs between the inner call
                // and the future it returns being written into ours.
                let spare = self.spare.clone();
                ResponseFuture::first(self.inner.call(request), kit, spare)
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use tower::{Layer, ServiceExt};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;
    use crate::{RetryLayer, RetryPolicy};

    /// Every field recorded on a `grpc.call` span, as `name=value`.
    #[derive(Clone, Default)]
    struct CallSpans(Arc<Mutex<Vec<String>>>);

    struct Fields<'a>(&'a mut Vec<String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push(format!("{}={value:?}", field.name()));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push(format!("{}={value}", field.name()));
        }
    }

    impl<S> tracing_subscriber::Layer<S> for CallSpans
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
            if attrs.metadata().name() == "grpc.call" {
                let mut seen = self.0.lock().unwrap();
                seen.push("new".to_owned());
                attrs.record(&mut Fields(&mut seen));
            }
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            if ctx.span(id).is_some_and(|s| s.name() == "grpc.call") {
                values.record(&mut Fields(&mut self.0.lock().unwrap()));
            }
        }
    }

    /// One call through the layer to a service that answers OK at once,
    /// under a subscriber that sees spans up to `level`.
    fn call_under(level: LevelFilter) -> Vec<String> {
        let spans = CallSpans::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone().with_filter(level));
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let inner = tower::service_fn(|_: http::Request<Body>| async {
                    let mut response = http::Response::new(Body::empty());
                    response
                        .headers_mut()
                        .insert("grpc-status", http::HeaderValue::from_static("0"));
                    Ok::<_, Infallible>(response)
                });
                let service = RetryLayer::new(RetryPolicy::default()).layer(inner);
                let mut request = http::Request::new(Body::empty());
                *request.uri_mut() = http::Uri::from_static("/pkg.Svc/Method");
                let response = service.oneshot(request).await.unwrap();
                assert_eq!(response.headers()["grpc-status"], "0");
            });
        });
        spans.0.lock().unwrap().clone()
    }

    #[test]
    fn a_call_records_its_attempts_and_outcome_on_a_debug_span() {
        let seen = call_under(LevelFilter::DEBUG);
        assert_eq!(
            seen,
            ["new", "method=/pkg.Svc/Method", "attempts=1", "outcome=OK"],
        );
    }

    #[test]
    fn the_call_span_is_at_debug_level_so_an_info_subscriber_sees_none() {
        assert!(call_under(LevelFilter::INFO).is_empty());
    }
}
