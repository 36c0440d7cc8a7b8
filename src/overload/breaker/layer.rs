//! The breaker as a tower layer: [`CircuitBreakerLayer`], its service, its
//! future, and [`BreakerEnd`], which settles a committed call when its
//! response ends.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use super::config::BreakerConfig;
use super::state::{BreakerState, Permit, Shared};
use crate::BoxError;
use crate::body::response::{OnEnd, ResponseBody, sealed};
use crate::classify::{self, ResponseKind};
use crate::policy::codes::CodeSet;

/// A tower [`Layer`] that adds a circuit breaker (see the [module
/// documentation](crate::breaker) for how it opens and closes).
///
/// # Composition
///
/// Put the breaker **outside** the [`RetryLayer`](crate::RetryLayer), that
/// is, before it in a `ServiceBuilder`:
///
/// ```no_run
/// use std::time::Duration;
/// use tonic::transport::Endpoint;
/// use tonic_retry::{BreakerConfig, CircuitBreakerLayer, RetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let breaker = CircuitBreakerLayer::new(
///     BreakerConfig::builder()
///         .failure_ratio(0.5)
///         .minimum_calls(20)
///         .break_duration(Duration::from_secs(5))
///         .build()?,
/// );
/// let svc = ServiceBuilder::new()
///     .layer(breaker.clone())
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(channel);
/// // let mut client = GreeterClient::new(svc);   // any generated client
/// println!("breaker is {}", breaker.state());
/// # let _ = svc;
/// # Ok(())
/// # }
/// ```
///
/// That way:
///
/// * A logical call counts once, with its final outcome after all its
///   retries. Inside the retry layer, every failed attempt would count, so
///   one call with 3 failed attempts would weigh as 3 failures, and a call
///   saved by its retry would still add failures.
/// * An open breaker fails the call at once. Inside the retry layer, its
///   UNAVAILABLE would be retried (with backoffs) against a breaker that is
///   still open.
///
/// # Sharing
///
/// A layer holds one breaker, and every service it wraps, and every clone of
/// those, shares it. Use one layer per backend; wrapping channels to
/// different backends with one layer would let one backend's failures stop
/// calls to another.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    /// A layer whose services all share one breaker configured by `config`.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreakerLayer {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The breaker's current state. An open breaker whose break has ended
    /// becomes half-open when this (or a call) observes it.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.shared.config)
            .field("state", &self.shared.current())
            .finish()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
            admission: None,
        }
    }
}

/// Fails calls at once while its breaker is open; built by
/// [`CircuitBreakerLayer`].
///
/// It takes `http::Request<tonic::body::Body>` like a tonic `Channel`, so any
/// generated client accepts it. Its error type is [`BoxError`]: an inner
/// error is converted once into the [`tonic::Status`] that tonic would have
/// made of it, and a call refused by the breaker fails with UNAVAILABLE
/// ("circuit breaker open …"); both are boxed `Status` values, which the
/// generated client surfaces unchanged.
///
/// The breaker decides in `poll_ready`: a refused call is ready at once,
/// without the inner service being polled, and its `call` never reaches the
/// inner service. Clones share the breaker.
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The decision taken by `poll_ready` for the next `call`.
    admission: Option<Result<Permit, Status>>,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` in a breaker of its own. To share a breaker, build the
    /// services with one [`CircuitBreakerLayer`] instead.
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        CircuitBreakerLayer::new(config).layer(inner)
    }

    /// The breaker's current state. An open breaker whose break has ended
    /// becomes half-open when this (or a call) observes it.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    fn clone(&self) -> Self {
        // A decision (and a trial slot) belongs to the instance that took it.
        CircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            admission: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("state", &self.shared.current())
            .finish_non_exhaustive()
    }
}

impl<S, ResBody> Service<http::Request<Body>> for CircuitBreaker<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody<ResBody, BreakerEnd>>;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self.admission.get_or_insert_with(|| self.shared.admit());
        if admission.is_err() {
            // Fail fast: `call` returns the refusal without the inner service.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                // The admitted call cannot be made: that is its outcome.
                let status = classify::status_from_error(error.into());
                if let Some(Ok(permit)) = self.admission.take() {
                    permit.settle(self.shared.config.failure_codes().contains(status.code()));
                }
                Poll::Ready(Err(Box::new(status)))
            }
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Without a `poll_ready` first (a caller bug), decide now.
        let admission = self.admission.take().unwrap_or_else(|| self.shared.admit());
        match admission {
            Ok(permit) => BreakerFuture {
                inner: Some(self.inner.call(request)),
                permit: Some(permit),
                refused: None,
            },
            Err(status) => BreakerFuture {
                inner: None,
                permit: None,
                refused: Some(status),
            },
        }
    }
}

pin_project! {
    /// The future returned by [`CircuitBreaker`]: the inner call's result,
    /// recorded as the breaker's outcome, or the breaker's refusal.
    ///
    /// Dropping it before it completes records nothing (a trial call gives
    /// its place back).
    pub struct BreakerFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<Permit>,
        refused: Option<Status>,
    }
}

impl<F, ResBody, E> Future for BreakerFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<ResponseBody<ResBody, BreakerEnd>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(status) = this.refused.take() {
            return Poll::Ready(Err(Box::new(status)));
        }
        let inner = this
            .inner
            .as_mut()
            .as_pin_mut()
            .expect("BreakerFuture polled after completion");
        let result = ready!(inner.poll(cx));
        this.inner.set(None);
        let permit = this.permit.take().expect("an admitted call holds a permit");
        let failure_codes = permit.shared.config.failure_codes();
        match result {
            Ok(mut response) => match classify::classify_response(&response) {
                // Committed: the outcome is the status its body ends with.
                ResponseKind::Commit => Poll::Ready(Ok(response.map(|body| {
                    ResponseBody::new(
                        body,
                        Some(BreakerEnd {
                            permit,
                            failure_codes,
                        }),
                    )
                }))),
                ResponseKind::Ok { check_details } => {
                    if check_details {
                        // tonic's stub would panic on undecodable details.
                        classify::strip_malformed_status_details(response.headers_mut());
                    }
                    permit.settle(false);
                    Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, None))))
                }
                ResponseKind::Failed(code) => {
                    permit.settle(failure_codes.contains(code));
                    let (mut parts, _body) = response.into_parts();
                    classify::make_trailers_only(&mut parts.headers, parts.status, code);
                    Poll::Ready(Ok(http::Response::from_parts(parts, ResponseBody::empty())))
                }
            },
            Err(error) => {
                // Converted once, so the code counted is the code surfaced.
                let status = classify::status_from_error(error.into());
                permit.settle(failure_codes.contains(status.code()));
                Poll::Ready(Err(Box::new(status)))
            }
        }
    }
}

impl<F> fmt::Debug for BreakerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerFuture")
            .field("refused", &self.refused.is_some())
            .finish_non_exhaustive()
    }
}

/// The outcome of a committed call for the breaker, settled when its
/// response ends: the [`OnEnd`] hook of the [`ResponseBody`] that
/// [`CircuitBreaker`] returns. The trailers' status counts, so a backend
/// that sends headers and then UNAVAILABLE opens the breaker; a body the
/// caller drops before its end counts as neither (a trial gives its place
/// back). Opaque.
pub struct BreakerEnd {
    permit: Permit,
    failure_codes: CodeSet,
}

impl sealed::Sealed for BreakerEnd {}

impl OnEnd for BreakerEnd {
    fn ended(self, code: Code, _trailers: &http::HeaderMap) {
        self.permit.settle(self.failure_codes.contains(code));
    }

    fn dropped(self) {
        // The permit's drop counts nothing.
    }
}

impl fmt::Debug for BreakerEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerEnd").finish_non_exhaustive()
    }
}
