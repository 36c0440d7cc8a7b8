//! The future returned by [`Retry`](crate::Retry).
//!
//! Most calls succeed on their first attempt, so that path is written by
//! hand: the future polls the first attempt (already sent by
//! `Retry::call`), its deadline and its cancellation token, and returns a
//! committed response directly. Only when the first attempt fails does it
//! box the attempt loop (an `async fn`, far easier to read than a hand-made
//! state machine) and hand over to it. The call's own state stays in its
//! pooled `CallKit`, which the future points to, so the happy path
//! allocates no future and moves no large state. Measured against the
//! plain form (every call an `async` block in a `Box`), the hand-written
//! first attempt saves ~120 ns and one allocation per call (BENCHMARKS.md,
//! "Mechanisms").

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tonic::body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::attempt::{
    AttemptError, FirstAttempt, SharedService, cancelled_status, commits, pass_through_response,
};
use crate::BoxError;
use crate::body::replay::BodyId;
use crate::body::response::ResponseBody;
use crate::call::end::CallEnd;
use crate::call::kit::{self, KitBox};

type BoxedLoop<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

pin_project! {
    /// Resolves to the call's final result.
    ///
    /// Dropping it cancels the call: the in-flight attempt's stream is reset
    /// and any backoff sleep ends. Everything runs inside this future, never
    /// in a spawned task, so nothing outlives it.
    pub struct ResponseFuture<S, ResBody>
    where
        S: Service<http::Request<Body>>,
    {
        #[pin]
        state: State<S, ResBody>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ResBody>
    where
        S: Service<http::Request<Body>>,
    {
        /// No policy applies: the inner service's own future.
        PassThrough { #[pin] response: S::Future },
        /// The first attempt of a retried call, polled by hand.
        First {
            #[pin]
            attempt: S::Future,
            // Taken when the call ends or moves on to the attempt loop.
            kit: Option<KitBox>,
            service: SharedService<S>,
        },
        /// The attempt loop, after a failed first attempt (or for a hedged
        /// call, or when the inner service failed to become ready).
        Looping { future: BoxedLoop<http::Response<ResponseBody<ResBody, CallEnd>>> },
        /// An error to return at once.
        Failed { error: Option<BoxError> },
        /// The first attempt committed and its response was returned.
        Done,
    }
}

impl<S, ResBody> ResponseFuture<S, ResBody>
where
    S: Service<http::Request<Body>>,
{
    pub(crate) fn pass_through(response: Result<S::Future, BoxError>) -> Self {
        let state = match response {
            Ok(response) => State::PassThrough { response },
            Err(error) => State::Failed { error: Some(error) },
        };
        ResponseFuture { state }
    }

    pub(crate) fn looping(
        future: BoxedLoop<http::Response<ResponseBody<ResBody, CallEnd>>>,
    ) -> Self {
        ResponseFuture {
            state: State::Looping { future },
        }
    }

    /// A retried call whose first attempt, `attempt`, is in flight.
    #[inline]
    pub(crate) fn first(attempt: S::Future, kit: KitBox, service: SharedService<S>) -> Self {
        ResponseFuture {
            state: State::First {
                attempt,
                kit: Some(kit),
                service,
            },
        }
    }
}

impl<S, ResBody> Future for ResponseFuture<S, ResBody>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Output = Result<http::Response<ResponseBody<ResBody, CallEnd>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::PassThrough { response } => {
                    return response
                        .poll(cx)
                        .map_ok(pass_through_response)
                        .map_err(Into::into);
                }
                StateProj::Looping { future } => return future.as_mut().poll(cx),
                StateProj::Failed { error } => {
                    let error = error.take().unwrap_or_else(polled_after_completion);
                    return Poll::Ready(Err(error));
                }
                StateProj::Done => {
                    return Poll::Ready(Err(polled_after_completion()));
                }
                StateProj::First {
                    attempt,
                    kit,
                    service,
                } => {
                    let Some(kit_box) = kit.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let parts = kit_box.as_mut().project();
                    if let Some(cancelled) = parts.cancelled.as_pin_mut()
                        && cancelled.poll(cx).is_ready()
                    {
                        let error = cancelled_first(kit.take());
                        self.as_mut().project().state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                    // Inside the attempt's span, if there is one (entering
                    // no span is one test).
                    let polled = parts.call.first_span.span().in_scope(|| attempt.poll(cx));
                    let result = match polled {
                        Poll::Ready(Ok(mut response)) => {
                            if let Ok(ended) = commits(&mut response) {
                                // The happy path: commit, and return the
                                // kit to the pool (no move of the call's
                                // state, the response moved once). A
                                // streaming request goes on sending.
                                parts.replay.commit_mut(BodyId::FIRST);
                                let span = parts.call.take_first_span();
                                let response = parts.call.committed(response, 1, span, ended);
                                if let Some(kit) = kit.take() {
                                    kit::recycle(kit);
                                }
                                self.as_mut().project().state.set(State::Done);
                                return Poll::Ready(Ok(response));
                            }
                            Ok(response)
                        }
                        Poll::Ready(Err(error)) => Err(AttemptError::Failed(error.into())),
                        Poll::Pending => {
                            let Some(at) = *parts.first_deadline else {
                                return Poll::Pending;
                            };
                            let mut timer = parts.timer;
                            if timer.is_none() {
                                start_timer(timer.as_mut(), at);
                            }
                            if let Some(timer) = timer.as_pin_mut()
                                && timer.poll(cx).is_pending()
                            {
                                return Poll::Pending;
                            }
                            Err(AttemptError::TimedOut)
                        }
                    };
                    let Some(kit) = kit.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    State::Looping {
                        future: into_loop(kit, FirstAttempt::Finished(result), service.clone()),
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// The caller cancelled the call during its first attempt.
#[cold]
#[inline(never)]
fn cancelled_first(kit: Option<KitBox>) -> BoxError {
    let Some(mut kit) = kit else {
        return polled_after_completion();
    };
    let error = kit
        .as_mut()
        .project()
        .call
        .surface_status(cancelled_status(), 1);
    kit::recycle(kit);
    error
}

/// The first attempt has a deadline and did not answer at once. Out of
/// line, like the other rare steps, so the code of the common ones stays
/// together.
#[cold]
#[inline(never)]
fn start_timer(mut timer: Pin<&mut Option<tokio::time::Sleep>>, at: tokio::time::Instant) {
    timer.set(Some(tokio::time::sleep_until(at)));
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> BoxError {
    "ResponseFuture polled after completion".into()
}

/// The first attempt did not commit (or timed out, or was never sent):
/// the attempt loop takes the call from here, in the call's kit.
#[cold]
#[inline(never)]
pub(crate) fn into_loop<S, ResBody>(
    mut kit: KitBox,
    first: FirstAttempt<S>,
    service: SharedService<S>,
) -> BoxedLoop<http::Response<ResponseBody<ResBody, CallEnd>>>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    kit.as_mut().first_attempt_over();
    let span = kit.call.span.clone();
    Box::pin(
        async move {
            let parts = kit.as_mut().project();
            let result = parts
                .call
                .run(
                    first,
                    *parts.first_deadline,
                    service,
                    parts.replay,
                    parts.heads,
                )
                .await;
            kit::recycle(kit);
            result
        }
        .instrument(span),
    )
}

impl<S, ResBody> fmt::Debug for ResponseFuture<S, ResBody>
where
    S: Service<http::Request<Body>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::pin;
    use std::task::Waker;

    use bytes::Bytes;
    use http_body_util::Full;
    use tower::{Layer, Service, ServiceExt};

    use super::*;
    use crate::{RetryLayer, RetryPolicy};

    /// An inner service that drains nothing and answers a Trailers-Only OK
    /// at once.
    fn ok_at_once() -> impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = std::future::Ready<Result<http::Response<Body>, Infallible>>,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(|_request: http::Request<Body>| {
            let mut response = http::Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("0"));
            std::future::ready(Ok::<_, Infallible>(response))
        })
    }

    #[tokio::test]
    async fn a_first_attempt_that_commits_releases_its_buffer_and_ends_the_future() {
        let layer = RetryLayer::new(RetryPolicy::default());
        let mut service = layer.layer(ok_at_once());
        service.ready().await.unwrap();
        let request = http::Request::new(Body::new(Full::new(Bytes::from_static(b"payload"))));
        let mut future = pin!(service.call(request));
        let mut cx = Context::from_waker(Waker::noop());
        let response = match future.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(response)) => response,
            _ => panic!("a ready OK commits on the first poll"),
        };
        assert_eq!(response.headers()["grpc-status"], "0");
        assert!(
            !response
                .headers()
                .contains_key("grpc-previous-rpc-attempts"),
            "one attempt: nothing to report"
        );
        assert_eq!(layer.buffered_bytes(), 0, "the commit released the buffer");
        // Polled again, it reports an error instead of panicking or
        // polling the finished attempt.
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(Err(error)) => assert!(error.to_string().contains("after completion")),
            _ => panic!("a finished future answers with an error"),
        }
    }
}
