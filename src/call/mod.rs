//! One call, from its first attempt to its final result.
//!
//! The request's path through this folder:
//!
//! 1. [`service`]: `Retry::call` resolves the call's policy once (a method
//!    a service config does not match passes straight through), takes a
//!    [`kit`] for the call's state (its deadline fixed once: the earliest of
//!    the request's `grpc-timeout`, the config's `timeout` and the
//!    policy's), and sends the first attempt on the readied service.
//! 2. [`future`]: the response future polls that first attempt; a commit
//!    returns at once.
//! 3. Otherwise the attempt loop takes over ([`run`], or [`hedge`] for a
//!    hedged call). Each attempt gets a replay body and a `grpc-timeout`
//!    rewritten to the time it may take ([`heads`]), and is raced against
//!    its deadline and the call's cancellation token ([`wait`]).
//! 4. Its result is classified ([`attempt`]). A committed response ends the
//!    call. A failure is retried only if the policy calls it retryable, the
//!    server does not push back with "stop", attempts remain, the request
//!    is still replayable, throttling and the budget allow it, and the
//!    backoff ends before the deadline. A stream the server refused before
//!    its application saw it is retried once, transparently.
//! 5. The final result is surfaced unchanged (this module), with the number
//!    of previous attempts added as `grpc-previous-rpc-attempts` metadata;
//!    a committed call's outcome is recorded when its response ends
//!    ([`end`]).

mod attempt;
pub(crate) mod end;
pub(crate) mod future;
mod heads;
mod hedge;
pub(crate) mod kit;
mod run;
pub mod service;
mod spans;
mod wait;

use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Span;

use self::attempt::Failure;
use self::end::CallEnd;
pub use self::heads::GRPC_PREVIOUS_RPC_ATTEMPTS;
use self::spans::AttemptSpan;
use self::wait::{earliest, instant_after};
use crate::BoxError;
use crate::body::replay::{BodyId, Replay};
use crate::body::response::{OnEnd, ResponseBody};
use crate::classify;
use crate::deadline;
use crate::metrics::CallMetrics;
use crate::policy::backoff::Backoff;
use crate::state::{CallPolicy, LayerState, PolicyRef};

/// What one call decides with: its policy and limits, resolved at its start.
/// It owns (a handle on) the layer's state, so it can live in the call's
/// future.
pub(crate) struct Call {
    pub(crate) state: Arc<LayerState>,
    pub(crate) policy_ref: PolicyRef,
    pub(crate) max_attempts: u32,
    pub(crate) non_idempotent: bool,
    pub(crate) deadline: Option<Instant>,
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) backoff: Backoff,
    pub(crate) metrics: CallMetrics,
    pub(crate) span: Span,
    /// The first attempt's span, while the response future polls it.
    pub(crate) first_span: AttemptSpan,
}

impl Call {
    /// The policy this call resolved to.
    #[inline]
    pub(crate) fn policy(&self) -> CallPolicy<'_> {
        self.state.policy(self.policy_ref)
    }

    /// The first attempt's span, taken out of the call (moved only if
    /// there is one).
    #[inline]
    pub(crate) fn take_first_span(&mut self) -> AttemptSpan {
        if self.first_span.is_none() {
            AttemptSpan::none()
        } else {
            std::mem::take(&mut self.first_span)
        }
    }

    /// Writes the attempt's `grpc-timeout` and returns when it must end.
    /// The clock is read only when the call has a deadline or per-attempt
    /// timeout.
    #[inline]
    pub(crate) fn attempt_deadline(&self, headers: &mut HeaderMap) -> Option<Instant> {
        let per_attempt = self.policy().per_attempt_timeout();
        if self.deadline.is_none() && per_attempt.is_none() {
            return None;
        }
        let now = Instant::now();
        let at = earliest(
            self.deadline,
            per_attempt.and_then(|t| instant_after(now, t)),
        )?;
        deadline::set_request_timeout(headers, at.saturating_duration_since(now));
        Some(at)
    }

    /// Ends the call with a committed response from `attempt` (whose span
    /// is `attempt_span`), whose request body is `body`: the replay stops
    /// recording (the body goes on sending what it has not sent yet), and
    /// the response is returned.
    #[inline]
    pub(crate) fn commit<B, R>(
        &mut self,
        replay: &Replay<B>,
        body: BodyId,
        response: http::Response<R>,
        attempt: u32,
        attempt_span: AttemptSpan,
        ended: bool,
    ) -> http::Response<ResponseBody<R, CallEnd>> {
        replay.commit(body);
        self.committed(response, attempt, attempt_span, ended)
    }

    /// The committed response of `attempt`, returned to the caller. Its
    /// outcome is recorded (throttling, the call's and the attempt's spans,
    /// metrics) when it ends: now, if it `ended` already (a Trailers-Only
    /// OK), else when its body ends. The attempt ends with it, as A66 ends
    /// an attempt when its trailing status arrives.
    #[inline]
    pub(crate) fn committed<R>(
        &mut self,
        mut response: http::Response<R>,
        attempt: u32,
        attempt_span: AttemptSpan,
        ended: bool,
    ) -> http::Response<ResponseBody<R, CallEnd>> {
        if !self.span.is_none() {
            self.span.record("attempts", attempt);
        }
        if attempt > 1 {
            response
                .headers_mut()
                .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(attempt - 1));
        }
        let end = CallEnd::new(
            &self.state,
            self.policy_ref,
            std::mem::replace(&mut self.metrics, CallMetrics::inactive()),
            std::mem::replace(&mut self.span, Span::none()),
            attempt_span,
        )
        .if_needed();
        let end = match end {
            Some(end) if ended => {
                end.ended(Code::Ok, response.headers());
                None
            }
            end => end,
        };
        response.map(|body| ResponseBody::new(body, end))
    }

    /// A failed attempt's Trailers-Only response, which ends the call with
    /// `code`. Its body is dropped: a Trailers-Only response has none, and
    /// what a response that is not gRPC carries (a proxy's error page) is
    /// not a message; `grpc-status` is added if it had none.
    pub(crate) fn surface_response<B>(
        &mut self,
        response: http::Response<B>,
        attempt: u32,
        code: Code,
    ) -> http::Response<ResponseBody<B, CallEnd>> {
        self.finish(attempt, code);
        let (mut parts, _body) = response.into_parts();
        classify::make_trailers_only(&mut parts.headers, parts.status, code);
        if attempt > 1 {
            parts
                .headers
                .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(attempt - 1));
        }
        http::Response::from_parts(parts, ResponseBody::empty())
    }

    /// A final status the layer surfaces as an error (a transport error as
    /// tonic would report it, or one the layer made: DEADLINE_EXCEEDED,
    /// CANCELLED).
    pub(crate) fn surface_status(&mut self, mut status: Status, attempt: u32) -> BoxError {
        self.finish(attempt, status.code());
        if attempt > 1 {
            status
                .metadata_mut()
                .insert("grpc-previous-rpc-attempts", (attempt - 1).into());
        }
        Box::new(status)
    }

    /// The call ends with `code` after `attempt` attempts; an attempt
    /// still in flight ends with it.
    fn finish(&mut self, attempt: u32, code: Code) {
        self.first_span.ended(code);
        spans::call_ended(&self.span, Some(attempt), code);
        self.metrics.finish(code);
    }

    /// A final failure, surfaced: a Trailers-Only response, or a `Status`.
    pub(crate) fn surface_failure<R>(
        &mut self,
        failure: Failure<R>,
        attempt: u32,
    ) -> Result<http::Response<ResponseBody<R, CallEnd>>, BoxError> {
        match failure {
            Failure::Response { response, code } => {
                Ok(self.surface_response(response, attempt, code))
            }
            Failure::Status { status, .. } => Err(self.surface_status(status, attempt)),
        }
    }
}
