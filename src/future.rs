//! The future returned by [`Retry`](crate::Retry).
//!
//! Most calls succeed on their first attempt, so that path is written by
//! hand: the future polls the first attempt (already sent by
//! `Retry::call`), its deadline and its cancellation token, and returns a
//! committed response directly. Only when the first attempt fails does it
//! box the attempt loop (an `async fn`, far easier to read than a hand-made
//! state machine) and hand over to it. The happy path thus allocates no
//! future and copies no large state.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::BoxError;
use crate::attempt::{
    AttemptError, Call, FirstAttempt, RequestHeads, SharedService, cancelled_status,
    response_outcome,
};
use crate::replay::Replay;

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
            // Created on first poll (a `Sleep` needs the runtime), only if
            // the attempt has a deadline.
            #[pin]
            timer: Option<Sleep>,
            deadline: Option<Instant>,
            cancel: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
            context: Option<FirstContext<S>>,
        },
        /// The attempt loop, after a failed first attempt (or for a hedged
        /// call, or when the inner service failed to become ready).
        Looping { future: BoxedLoop<http::Response<ResBody>> },
        /// An error to return at once.
        Failed { error: Option<BoxError> },
    }
}

/// What the attempt loop needs if the first attempt fails.
pub(crate) struct FirstContext<S> {
    pub(crate) call: Call,
    pub(crate) replay: Replay<Body>,
    pub(crate) heads: RequestHeads,
    pub(crate) service: SharedService<S>,
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

    pub(crate) fn looping(future: BoxedLoop<http::Response<ResBody>>) -> Self {
        ResponseFuture {
            state: State::Looping { future },
        }
    }

    #[inline]
    pub(crate) fn first(
        attempt: S::Future,
        deadline: Option<Instant>,
        context: FirstContext<S>,
    ) -> Self {
        let cancel = context
            .call
            .cancel
            .clone()
            .map(|token| Box::pin(token.cancelled_owned()));
        ResponseFuture {
            state: State::First {
                attempt,
                timer: None,
                deadline,
                cancel,
                context: Some(context),
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
    type Output = Result<http::Response<ResBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::PassThrough { response } => {
                    return response.poll(cx).map_err(Into::into);
                }
                StateProj::Looping { future } => return future.as_mut().poll(cx),
                StateProj::Failed { error } => {
                    let error = error
                        .take()
                        .unwrap_or_else(|| "ResponseFuture polled after completion".into());
                    return Poll::Ready(Err(error));
                }
                StateProj::First {
                    attempt,
                    mut timer,
                    deadline,
                    cancel,
                    context,
                } => {
                    if let Some(cancel) = cancel
                        && cancel.as_mut().poll(cx).is_ready()
                        && let Some(context) = context.take()
                    {
                        let status = context.call.surface_status(cancelled_status(), 1);
                        return Poll::Ready(Err(status));
                    }
                    let result = match attempt.poll(cx) {
                        Poll::Ready(result) => result.map_err(|e| AttemptError::Failed(e.into())),
                        Poll::Pending => {
                            if let Some(at) = *deadline {
                                if timer.is_none() {
                                    timer.set(Some(tokio::time::sleep_until(at)));
                                }
                                if let Some(timer) = timer.as_pin_mut()
                                    && timer.poll(cx).is_pending()
                                {
                                    return Poll::Pending;
                                }
                                Err(AttemptError::TimedOut)
                            } else {
                                return Poll::Pending;
                            }
                        }
                    };
                    let Some(context) = context.take() else {
                        return Poll::Ready(Err("ResponseFuture polled after completion".into()));
                    };
                    match finish_first(result, *deadline, context) {
                        Ok(done) => return Poll::Ready(done),
                        Err(looping) => State::Looping { future: looping },
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// The first attempt finished: a commit ends the call here; anything else
/// goes to the attempt loop.
#[allow(clippy::type_complexity)]
#[inline]
fn finish_first<S, ResBody>(
    result: Result<http::Response<ResBody>, AttemptError>,
    first_deadline: Option<Instant>,
    context: FirstContext<S>,
) -> Result<Result<http::Response<ResBody>, BoxError>, BoxedLoop<http::Response<ResBody>>>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    let FirstContext {
        call,
        replay,
        heads,
        service,
    } = context;
    let span = call.span.clone();
    let result = match result {
        Ok(response) => match response_outcome(response) {
            Ok(response) => return Ok(Ok(call.commit(&replay, response, 1))),
            // A failure: the attempt loop takes it from here.
            Err((_, response)) => Ok(response),
        },
        Err(error) => Err(error),
    };
    Err(Box::pin(
        call.run(
            FirstAttempt::<S>::Finished(result),
            first_deadline,
            service,
            replay,
            heads,
        )
        .instrument(span),
    ))
}

impl<S, ResBody> fmt::Debug for ResponseFuture<S, ResBody>
where
    S: Service<http::Request<Body>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
