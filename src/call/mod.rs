//! The attempt loop: send, classify, then back off and resend, or surface.
//!
//! One call runs here from its first attempt to its final result:
//!
//! 1. Its policy is resolved once (a method a service config does not match
//!    passes straight through), and its deadline fixed once: the earliest of
//!    the request's `grpc-timeout`, the config's `timeout` and the policy's.
//! 2. Each attempt gets a [`ReplayBody`](crate::replay::ReplayBody) and a
//!    `grpc-timeout` rewritten to the time it may take, and is raced against
//!    its deadline and the call's cancellation token.
//! 3. The result is classified ([`crate::classify`]). A committed response
//!    ends the call. A failure is retried only if the policy calls it
//!    retryable, the server does not push back with "stop", attempts remain,
//!    the request is still replayable, throttling and the budget allow it,
//!    and the backoff ends before the deadline. A stream the server refused
//!    before its application saw it is retried once, transparently.
//! 4. The final result is surfaced unchanged, with the number of previous
//!    attempts added as `grpc-previous-rpc-attempts` metadata.

pub(crate) mod end;
pub(crate) mod future;
mod hedge;
pub(crate) mod kit;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName, TE};
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderValue, Method, Uri, Version};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::ServiceExt;
use tower_service::Service;
use tracing::{Instrument, Span, debug, debug_span, field};

use crate::BoxError;
use crate::body::replay::{BodyId, Replay};
use crate::body::response::{OnEnd, ResponseBody};
use crate::call::end::CallEnd;
use crate::classify::{self, ResponseKind, code_name};
use crate::deadline;
use crate::metrics::CallMetrics;
use crate::policy::backoff::Backoff;
use crate::policy::pushback::{self, Pushback};
use crate::state::{CallPolicy, LayerState, PolicyRef};

/// `grpc-previous-rpc-attempts`: sent on attempt 2 and later, and added to
/// the metadata of the result the caller sees.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

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
}

impl Call {
    /// The policy this call resolved to.
    #[inline]
    pub(crate) fn policy(&self) -> CallPolicy<'_> {
        self.state.policy(self.policy_ref)
    }

    /// Runs a retried call to completion. `first` is the first attempt,
    /// already sent on the service `poll_ready` readied (or the error that
    /// readiness returned), possibly already answered; later attempts go out
    /// on clones of `service`.
    pub(crate) async fn run<S, ResBody>(
        &mut self,
        first: FirstAttempt<S>,
        first_deadline: Option<Instant>,
        service: SharedService<S>,
        replay: &Replay<Body>,
        heads: &mut RequestHeads,
    ) -> Result<http::Response<ResponseBody<ResBody, CallEnd>>, BoxError>
    where
        S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone,
        S::Error: Into<BoxError>,
    {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        let mut transparent_retry_used = false;
        // The replay body of the attempt in flight.
        let mut body_id = BodyId::FIRST;

        loop {
            attempt += 1;
            self.metrics.attempt_started();
            let (sending, attempt_deadline) = match first.take() {
                Some(FirstAttempt::InFlight(first)) => (Sending::First(first), first_deadline),
                Some(FirstAttempt::Finished(result)) => (Sending::Finished(result), first_deadline),
                None => {
                    let (parts, deadline) = heads.next(attempt, self);
                    let body = replay.body();
                    body_id = body.id();
                    let request = http::Request::from_parts(parts, body.into_tonic());
                    (Sending::Later(service.clone(), Box::new(request)), deadline)
                }
            };
            let attempt_span = debug_span!(
                "grpc.attempt",
                attempt,
                code = field::Empty,
                backoff_ms = field::Empty
            );
            let result = match sending {
                Sending::Finished(result) => result,
                sending => {
                    let send = sending.send().instrument(attempt_span.clone());
                    tokio::select! {
                        biased;
                        () = cancelled(self.cancel.as_ref()) => {
                            return Err(self.surface_status(cancelled_status(), attempt));
                        }
                        () = sleep_until(attempt_deadline) => Err(AttemptError::TimedOut),
                        result = send => result.map_err(AttemptError::Failed),
                    }
                }
            };

            if result.is_err() {
                // The attempt is over: its body stops, so a transport still
                // pumping it lets go.
                replay.abandon(body_id);
            }
            let failure = match result {
                Err(AttemptError::TimedOut) if attempt_deadline == self.deadline => {
                    let status = Status::deadline_exceeded(format!(
                        "call deadline exceeded during attempt {attempt}"
                    ));
                    return Err(self.surface_status(status, attempt));
                }
                Err(AttemptError::TimedOut) => Failure::Status {
                    status: Status::deadline_exceeded(format!(
                        "per-attempt timeout of {:?} expired",
                        self.policy().retry.per_attempt_timeout.unwrap_or_default()
                    )),
                    never_sent: false,
                },
                Err(AttemptError::Failed(error))
                    if !transparent_retry_used
                        && classify::refused_before_processing(&*error)
                        && replay.is_replayable() =>
                {
                    // A6: the server's application never saw this stream.
                    // Retry once, at once, without counting an attempt or
                    // taking a token.
                    debug!(attempt, %error, "transparent retry of a refused stream");
                    transparent_retry_used = true;
                    self.metrics.transparent_retry();
                    attempt -= 1;
                    continue;
                }
                Err(AttemptError::Failed(error)) => Failure::from_error(error),
                Ok(response) => match response_outcome(response) {
                    Ok((response, ended)) => {
                        attempt_span.record("code", "committed");
                        return Ok(self.commit(replay, body_id, response, attempt, ended));
                    }
                    Err((code, response)) => {
                        replay.abandon(body_id);
                        Failure::Response { code, response }
                    }
                },
            };
            let code = failure.code();
            attempt_span.record("code", code_name(code));

            let (delay, wake) = match self.decide(&failure, attempt, replay) {
                Verdict::Final(reason) => {
                    debug!(attempt, code = code_name(code), reason, "final status");
                    return failure.surface(self, attempt);
                }
                Verdict::PastDeadline(delay) => {
                    let status = Status::deadline_exceeded(format!(
                        "deadline would pass during the {delay:?} backoff after attempt {attempt}; last attempt: {}",
                        failure.describe()
                    ));
                    return Err(self.surface_status(status, attempt));
                }
                Verdict::RetryAt { delay, wake } => (delay, wake),
            };
            attempt_span.record("backoff_ms", delay.as_secs_f64() * 1e3);
            debug!(
                attempt,
                code = code_name(code),
                delay_ms = delay.as_secs_f64() * 1e3,
                "retrying"
            );
            self.metrics.retry_scheduled(delay);
            // Release the failed attempt (and its stream) before waiting.
            drop(failure);
            tokio::select! {
                biased;
                () = cancelled(self.cancel.as_ref()) => {
                    return Err(self.surface_status(cancelled_status(), attempt));
                }
                // `None` (a wait too long to time, with no deadline to
                // end it) waits until the call is cancelled or dropped.
                () = sleep_until(wake) => {}
            }
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

    /// Whether (and after how long) to retry a failed attempt.
    ///
    /// The order matters: A6 charges a throttling token for every retryable
    /// failure (and every "stop" pushback) whether or not a retry follows,
    /// and the budget is drawn on last, only for a retry that will be sent:
    /// after the deadline and the server-delay ceiling have been checked
    /// (a withdrawal is never given back).
    fn decide<ResBody, B>(
        &mut self,
        failure: &Failure<ResBody>,
        attempt: u32,
        replay: &Replay<B>,
    ) -> Verdict {
        let code = failure.code();
        let headers = failure.headers();
        let retryable = self.policy().retry.is_retryable(code, headers);
        let pushback = failure.pushback();
        let throttled = match &self.state.throttle {
            Some(throttle) if retryable || pushback == Pushback::Stop => !throttle.record_failure(),
            _ => false,
        };
        if !retryable {
            return Verdict::Final("status is not retryable");
        }
        if pushback == Pushback::Stop {
            return Verdict::Final("server pushback says do not retry");
        }
        if attempt >= self.max_attempts {
            return Verdict::Final("attempts exhausted");
        }
        if self.non_idempotent && !failure.never_sent() {
            return Verdict::Final("non-idempotent call may have reached the server");
        }
        if !replay.is_replayable() {
            return Verdict::Final("request is not replayable (over a buffer limit)");
        }
        if throttled {
            self.metrics.throttled();
            debug!(attempt, "retry throttled: token bucket at or below half");
            return Verdict::Final("retry throttled");
        }
        let server_delay = match pushback {
            Pushback::RetryAfter(delay) => Some(delay),
            _ if self.policy().retry.use_retry_info => pushback::retry_info_delay(headers),
            _ => None,
        };
        let delay = match server_delay {
            Some(delay) => delay,
            None => {
                let policy = self.state.policy(self.policy_ref).retry;
                self.backoff.next_delay(policy)
            }
        };
        // The deadline comes first: a wait that would outlast it ends the
        // call now, with DEADLINE_EXCEEDED, whoever chose the wait.
        let wake = instant_after(Instant::now(), delay);
        if let Some(deadline) = self.deadline
            && wake.is_none_or(|wake| wake >= deadline)
        {
            return Verdict::PastDeadline(delay);
        }
        if let Some(delay) = server_delay {
            let ceiling = self.policy().retry.max_server_delay;
            if delay > ceiling {
                debug!(
                    attempt,
                    ?delay,
                    ?ceiling,
                    "server-chosen delay above max_server_delay"
                );
                return Verdict::Final("server-chosen delay above max_server_delay");
            }
            // A6: after a server-chosen delay the backoff starts again.
            self.backoff.reset();
        }
        if let Some(budget) = &self.state.budget
            && !budget.try_withdraw()
        {
            self.metrics.budget_exhausted();
            debug!(attempt, "retry budget exhausted");
            return Verdict::Final("retry budget exhausted");
        }
        Verdict::RetryAt { delay, wake }
    }

    /// Ends the call with a committed response from `attempt`, whose
    /// request body is `body`: the replay stops recording (the body goes on
    /// sending what it has not sent yet), and the response is returned.
    #[inline]
    pub(crate) fn commit<B, R>(
        &mut self,
        replay: &Replay<B>,
        body: BodyId,
        response: http::Response<R>,
        attempt: u32,
        ended: bool,
    ) -> http::Response<ResponseBody<R, CallEnd>> {
        replay.commit(body);
        self.committed(response, attempt, ended)
    }

    /// The committed response of `attempt`, returned to the caller. Its
    /// outcome is recorded (throttling, span, metrics) when it ends: now,
    /// if it `ended` already (a Trailers-Only OK), else when its body ends.
    #[inline]
    pub(crate) fn committed<R>(
        &mut self,
        mut response: http::Response<R>,
        attempt: u32,
        ended: bool,
    ) -> http::Response<ResponseBody<R, CallEnd>> {
        self.span.record("attempts", attempt);
        if attempt > 1 {
            response
                .headers_mut()
                .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(attempt - 1));
        }
        let end = CallEnd::new(
            &self.state,
            self.policy_ref,
            std::mem::replace(&mut self.metrics, CallMetrics::new("")),
            std::mem::replace(&mut self.span, Span::none()),
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
        &self,
        response: http::Response<B>,
        attempt: u32,
        code: Code,
    ) -> http::Response<ResponseBody<B, CallEnd>> {
        self.finish(attempt, code_name(code));
        let (mut parts, _body) = response.into_parts();
        classify::make_trailers_only(&mut parts.headers, parts.status, code);
        if attempt > 1 {
            parts
                .headers
                .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(attempt - 1));
        }
        http::Response::from_parts(parts, ResponseBody::empty())
    }

    pub(crate) fn surface_status(&self, mut status: Status, attempt: u32) -> BoxError {
        self.finish(attempt, code_name(status.code()));
        if attempt > 1 {
            status
                .metadata_mut()
                .insert("grpc-previous-rpc-attempts", (attempt - 1).into());
        }
        Box::new(status)
    }

    fn finish(&self, attempt: u32, outcome: &'static str) {
        self.span.record("attempts", attempt);
        self.span.record("outcome", outcome);
        self.metrics.finish(outcome);
    }
}

/// What [`Call::decide`] says about a failed attempt.
pub(crate) enum Verdict {
    /// Retry after `delay`, at `wake` (`None`: a wait too long to be timed,
    /// only possible without a deadline).
    RetryAt {
        delay: Duration,
        wake: Option<Instant>,
    },
    /// The `delay` before the retry would pass the call's deadline.
    PastDeadline(Duration),
    /// Surface the failure, for this reason.
    Final(&'static str),
}

/// The clone of the inner service that retries and hedges are sent on,
/// shared by every call of a `Retry`. The mutex is taken only to clone it,
/// on a retry, so the inner service need only be `Send`, not `Sync`.
pub(crate) type SharedService<S> = Arc<std::sync::Mutex<S>>;

/// A fresh clone of the shared service (for a retry or a hedge).
pub(crate) fn clone_shared<S: Clone>(service: &SharedService<S>) -> S {
    service
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The first attempt of a retried call, as the loop receives it.
pub(crate) enum FirstAttempt<S: Service<http::Request<Body>>> {
    /// Sent in `Retry::call` (or failed to, if readiness failed).
    InFlight(Result<S::Future, BoxError>),
    /// Already answered: the response future's fast path polled it and it
    /// did not commit.
    Finished(Result<S::Response, AttemptError>),
}

/// One attempt of a retried call, to be awaited.
enum Sending<S: Service<http::Request<Body>>> {
    /// The first attempt: already sent in `Retry::call`.
    First(Result<S::Future, BoxError>),
    /// The first attempt, already answered.
    Finished(Result<S::Response, AttemptError>),
    /// A retry: a clone of the service (retries alone pay for it) and the
    /// request, boxed to keep every call's future small.
    Later(SharedService<S>, Box<http::Request<Body>>),
}

impl<S, ResBody> Sending<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    async fn send(self) -> Result<http::Response<ResBody>, BoxError> {
        match self {
            Sending::First(Ok(response)) => response.await.map_err(Into::into),
            Sending::First(Err(error)) => Err(error),
            Sending::Finished(_) => unreachable!("a finished attempt is not sent"),
            Sending::Later(service, request) => {
                let mut service = clone_shared(&service);
                send(&mut service, Ok(false), *request).await
            }
        }
    }
}

/// Readies the inner service if needed, then sends one attempt.
pub(crate) async fn send<S, ResBody>(
    inner: &mut S,
    ready: Result<bool, BoxError>,
    request: http::Request<Body>,
) -> Result<http::Response<ResBody>, BoxError>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    if !ready? {
        inner.ready().await.map_err(Into::into)?;
    }
    inner.call(request).await.map_err(Into::into)
}

/// Why an attempt produced no response.
pub(crate) enum AttemptError {
    /// Its deadline (the call's, or the per-attempt timeout) passed.
    TimedOut,
    /// The inner service failed.
    Failed(BoxError),
}

/// What one attempt's result means for the call.
pub(crate) enum Outcome<ResBody> {
    /// OK or normal headers: this response is the call's result. `true`
    /// for a Trailers-Only OK, which has already ended.
    Commit(http::Response<ResBody>, bool),
    /// A failure the policy decides on.
    Failed(Failure<ResBody>),
    /// The server refused the stream before its application saw it.
    Refused(BoxError),
}

/// Classifies an attempt's result.
pub(crate) fn outcome<ResBody>(
    result: Result<http::Response<ResBody>, BoxError>,
) -> Outcome<ResBody> {
    match result {
        Ok(response) => match response_outcome(response) {
            Ok((response, ended)) => Outcome::Commit(response, ended),
            Err((code, response)) => Outcome::Failed(Failure::Response { code, response }),
        },
        Err(error) if classify::refused_before_processing(&*error) => Outcome::Refused(error),
        Err(error) => Outcome::Failed(Failure::from_error(error)),
    }
}

/// What a response means: `Ok` to commit it (with whether it has already
/// ended, as a Trailers-Only OK; undecodable status details stripped from
/// one, which tonic's stub would panic on), or the failure code it reports,
/// with the response.
#[allow(clippy::type_complexity)]
pub(crate) fn response_outcome<ResBody>(
    mut response: http::Response<ResBody>,
) -> Result<(http::Response<ResBody>, bool), (Code, http::Response<ResBody>)> {
    match commits(&mut response) {
        Ok(ended) => Ok((response, ended)),
        Err(code) => Err((code, response)),
    }
}

/// [`response_outcome`] in place: `Ok` if `response` commits the call
/// (`true` if it has already ended, as a Trailers-Only OK, its undecodable
/// status details stripped), else the failure code. The happy path uses
/// this form, which never moves the response.
#[inline]
pub(crate) fn commits<ResBody>(response: &mut http::Response<ResBody>) -> Result<bool, Code> {
    match classify::classify_response(response) {
        ResponseKind::Commit => Ok(false),
        ResponseKind::Ok { check_details } => {
            if check_details {
                classify::strip_malformed_status_details(response.headers_mut());
            }
            Ok(true)
        }
        ResponseKind::Failed(code) => Err(code),
    }
}

/// The response of a call no policy applies to, guarded like any other: a
/// response that is not gRPC becomes the Trailers-Only status gRPC's HTTP
/// mapping gives, with its body dropped, and malformed status details are
/// removed (from the headers here, from the trailers by the body).
pub(crate) fn pass_through_response<R>(
    mut response: http::Response<R>,
) -> http::Response<ResponseBody<R, CallEnd>> {
    match commits(&mut response) {
        Ok(_) => response.map(|body| ResponseBody::new(body, None)),
        Err(code) => {
            let (mut parts, _body) = response.into_parts();
            classify::make_trailers_only(&mut parts.headers, parts.status, code);
            http::Response::from_parts(parts, ResponseBody::empty())
        }
    }
}

/// A failed attempt, kept as the caller would see it if it is final.
pub(crate) enum Failure<ResBody> {
    /// A trailers-only (or non-200) response, passed through unchanged.
    Response {
        code: Code,
        response: http::Response<ResBody>,
    },
    /// A transport error or timeout, as the Status tonic would surface.
    Status { status: Status, never_sent: bool },
}

impl<ResBody> Failure<ResBody> {
    /// A transport error, as the Status tonic would surface; except that a
    /// stream refused before the server's application saw it (which ends
    /// up here once its one transparent retry is used) is UNAVAILABLE, as
    /// grpc core reports it: tonic calls a `GOAWAY` with `NO_ERROR` INTERNAL,
    /// which is neither retryable nor true.
    pub(crate) fn from_error(error: BoxError) -> Self {
        let refused = classify::refused_before_processing(&*error);
        let never_sent = classify::never_sent(&*error);
        let mut status = classify::status_from_error(error);
        if refused && status.code() != Code::Unavailable {
            status = Status::unavailable(status.message().to_owned());
        }
        Failure::Status { status, never_sent }
    }

    pub(crate) fn code(&self) -> Code {
        match self {
            Failure::Response { code, .. } => *code,
            Failure::Status { status, .. } => status.code(),
        }
    }

    /// The trailers-only headers; empty for transport errors.
    pub(crate) fn headers(&self) -> &HeaderMap {
        match self {
            Failure::Response { response, .. } => response.headers(),
            Failure::Status { .. } => classify::no_headers(),
        }
    }

    pub(crate) fn pushback(&self) -> Pushback {
        match self {
            Failure::Response { response, .. } => pushback::server_pushback(response.headers()),
            Failure::Status { .. } => Pushback::Absent,
        }
    }

    /// Whether the attempt certainly never reached the server.
    pub(crate) fn never_sent(&self) -> bool {
        matches!(
            self,
            Failure::Status {
                never_sent: true,
                ..
            }
        )
    }

    pub(crate) fn describe(&self) -> String {
        let message = match self {
            Failure::Response { response, .. } => response
                .headers()
                .get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default(),
            Failure::Status { status, .. } => status.message().to_owned(),
        };
        format!("{}: {message}", code_name(self.code()))
    }

    pub(crate) fn surface(
        self,
        call: &Call,
        attempt: u32,
    ) -> Result<http::Response<ResponseBody<ResBody, CallEnd>>, BoxError> {
        match self {
            Failure::Response { response, code } => {
                Ok(call.surface_response(response, attempt, code))
            }
            Failure::Status { status, .. } => Err(call.surface_status(status, attempt)),
        }
    }
}

pub(crate) fn cancelled_status() -> Status {
    Status::cancelled("call cancelled through its CancellationToken")
}

/// The shorter of two time limits. A limit beyond [`HORIZON`] is no limit:
/// its instant could not be timed (see [`instant_after`]).
#[inline]
pub(crate) fn earliest_duration(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    let timed = |d: Option<Duration>| d.filter(|d| *d <= HORIZON);
    match (timed(a), timed(b)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The longest wait that is timed: about a century. tokio rounds a timer's
/// instant up by adding just under a millisecond to it, which panics for an
/// instant at the very end of the clock's range, and no call has any use
/// for a wait this long; so anything longer means "never".
pub(crate) const HORIZON: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// When a wait of `delay` from `now` ends: `None` (never) if the wait is
/// longer than [`HORIZON`]. Every wait the layer times (backoffs,
/// server-chosen delays, hedges, per-attempt timeouts) goes through here,
/// so no value a setting or a server supplies can overflow `Instant`.
#[inline]
pub(crate) fn instant_after(now: Instant, delay: Duration) -> Option<Instant> {
    if delay > HORIZON {
        None
    } else {
        now.checked_add(delay)
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `deadline` on tokio's timer, so a paused or simulated
/// clock drives every wait; `None` never ends.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The request heads of attempts after the first: copies of the caller's
/// head, with the attempt's metadata written in.
///
/// It lives in a pooled [`CallKit`](crate::kit::CallKit) and is refilled
/// call after call; its lists keep their room, so keeping a request's head
/// hashes nothing and allocates nothing. The two headers tonic puts in
/// every request (`te: trailers`, `content-type: application/grpc`) are
/// kept as one-byte marks; every other header is a clone of its (shared or
/// static) name and value. A `HeaderMap` is built only for a retry.
pub(crate) struct RequestHeads {
    method: Method,
    uri: Uri,
    version: Version,
    /// The request's headers, in order.
    order: Vec<KeptHeader>,
    /// The values of the `KeptHeader::Other` entries, in order.
    others: Vec<(HeaderName, HeaderValue)>,
    extensions: SavedExtensions,
}

/// One header of a kept head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeptHeader {
    /// `te: trailers`
    TeTrailers,
    /// `content-type: application/grpc`
    ContentTypeGrpc,
    /// The next entry of `RequestHeads::others`.
    Other,
}

impl KeptHeader {
    /// Which mark keeps this header. Comparing a few bytes costs less than
    /// cloning a shared value (an indirect call whose result the processor
    /// must reload, stalling) and copying it into a list, on every header
    /// of every call.
    #[inline]
    fn of(name: &HeaderName, value: &HeaderValue) -> Self {
        if value.is_sensitive() {
            KeptHeader::Other
        } else if *name == TE && value.as_bytes() == b"trailers" {
            KeptHeader::TeTrailers
        } else if *name == CONTENT_TYPE && value.as_bytes() == b"application/grpc" {
            KeptHeader::ContentTypeGrpc
        } else {
            KeptHeader::Other
        }
    }
}

/// The longest header list a pooled kit keeps room for.
const KEPT_HEADER_ROOM: usize = 64;

impl RequestHeads {
    /// Holds no request yet.
    pub(crate) fn empty() -> Self {
        RequestHeads {
            method: Method::POST,
            uri: Uri::default(),
            version: Version::default(),
            order: Vec::new(),
            others: Vec::new(),
            extensions: SavedExtensions::Empty,
        }
    }

    /// Keeps `request`'s head for retries, and returns the request's own
    /// timeout from its `grpc-timeout` header, found in the kept list
    /// (saving a hashed lookup). A malformed value counts as absent, as the
    /// tonic `Channel` treats it.
    #[inline]
    pub(crate) fn fill<B>(&mut self, request: &http::Request<B>) -> Option<Duration> {
        // Calls through one client repeat the method and URI, and the kit
        // kept the last call's: comparing bytes is cheaper than cloning
        // the URI's three shared strings (each an indirect call).
        if self.method != *request.method() {
            self.method = request.method().clone();
        }
        if !same_uri(&self.uri, request.uri()) {
            self.uri = request.uri().clone();
        }
        self.version = request.version();
        self.extensions.keep(request.extensions());
        for (name, value) in request.headers() {
            let kept = KeptHeader::of(name, value);
            if kept == KeptHeader::Other {
                self.others.push((name.clone(), value.clone()));
            }
            self.order.push(kept);
        }
        let (_, timeout) = self
            .others
            .iter()
            .find(|(name, _)| *name == deadline::GRPC_TIMEOUT)?;
        deadline::parse_grpc_timeout(timeout.as_bytes())
    }

    /// Drops the kept head's values (the URI and method, small and
    /// holding no resource, are overwritten by the next call). A very long
    /// list gives its room back.
    #[inline]
    pub(crate) fn clear(&mut self) {
        if self.order.capacity() > KEPT_HEADER_ROOM {
            self.order = Vec::new();
        } else {
            self.order.clear();
        }
        if self.others.capacity() > KEPT_HEADER_ROOM {
            self.others = Vec::new();
        } else {
            self.others.clear();
        }
        self.extensions = SavedExtensions::Empty;
    }

    /// Whether the request had extensions besides tonic's `GrpcMethod`
    /// (which the caller's `CallOptions` or `CancellationToken` may be).
    pub(crate) fn has_other_extensions(&self) -> bool {
        matches!(self.extensions, SavedExtensions::Other(_))
    }

    /// Whether no header is kept.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty() && self.others.is_empty()
    }

    /// The head of attempt `n` (1-based; a transparent retry resends
    /// attempt 1) and when that attempt must end.
    pub(crate) fn next(&mut self, n: u32, call: &Call) -> (Parts, Option<Instant>) {
        let mut parts = self.parts();
        if n > 1 {
            parts
                .headers
                .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(n - 1));
        }
        let deadline = call.attempt_deadline(&mut parts.headers);
        (parts, deadline)
    }

    /// A new head for a retry (allocating: only retries pay for it).
    fn parts(&self) -> Parts {
        const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
        const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = HeaderMap::with_capacity(self.order.len());
        let mut others = self.others.iter();
        for kept in &self.order {
            match kept {
                KeptHeader::TeTrailers => parts.headers.append(TE, TRAILERS),
                KeptHeader::ContentTypeGrpc => parts.headers.append(CONTENT_TYPE, APPLICATION_GRPC),
                KeptHeader::Other => match others.next() {
                    Some((name, value)) => parts.headers.append(name.clone(), value.clone()),
                    // `fill` pushes one entry per mark; nothing to append
                    // if that were ever not so.
                    None => false,
                },
            };
        }
        parts.extensions = self.extensions.restore();
        parts
    }
}

/// Whether two URIs are the same bytes (`Uri`'s own equality ignores the
/// case of the host, and a retry must resend exactly what the caller sent).
#[inline]
fn same_uri(a: &Uri, b: &Uri) -> bool {
    a.scheme_str() == b.scheme_str()
        && same_part(
            a.authority().map(|a| a.as_str()),
            b.authority().map(|b| b.as_str()),
        )
        && same_part(
            a.path_and_query().map(|p| p.as_str()),
            b.path_and_query().map(|p| p.as_str()),
        )
}

/// Whether two parts of URIs are the same bytes. A generated client's path
/// is the same static string on every call, so the same address and length
/// settle it without comparing the bytes.
#[inline]
fn same_part(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The request's extensions, kept for retries. tonic's generated clients
/// put exactly one, `GrpcMethod`, into every request; keeping just that
/// value avoids cloning the extension map (three allocations) per call.
enum SavedExtensions {
    Empty,
    GrpcMethod(tonic::GrpcMethod<'static>),
    Other(Extensions),
}

impl SavedExtensions {
    /// Keeps `extensions` in place of what an emptied kit holds (nothing):
    /// written where it lies, and not at all when there is nothing to keep.
    #[inline]
    fn keep(&mut self, extensions: &Extensions) {
        if extensions.is_empty() {
            if !matches!(self, SavedExtensions::Empty) {
                *self = SavedExtensions::Empty;
            }
            return;
        }
        if extensions.len() == 1
            && let Some(method) = extensions.get::<tonic::GrpcMethod<'static>>()
        {
            *self = SavedExtensions::GrpcMethod(method.clone());
            return;
        }
        self.keep_other(extensions);
    }

    #[cold]
    #[inline(never)]
    fn keep_other(&mut self, extensions: &Extensions) {
        *self = SavedExtensions::Other(extensions.clone());
    }

    fn restore(&self) -> Extensions {
        match self {
            SavedExtensions::Empty => Extensions::new(),
            SavedExtensions::GrpcMethod(method) => {
                let mut extensions = Extensions::new();
                extensions.insert(method.clone());
                extensions
            }
            SavedExtensions::Other(extensions) => extensions.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::options::CallOptions;

    fn request_with(headers: HeaderMap) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.headers_mut() = headers;
        request
    }

    #[test]
    fn refilled_heads_keep_every_value_in_order() {
        let mut original = HeaderMap::new();
        original.append("x-a", HeaderValue::from_static("1"));
        original.append("x-a", HeaderValue::from_static("2"));
        original.insert("te", HeaderValue::from_static("trailers"));
        let mut heads = RequestHeads::empty();
        for _ in 0..3 {
            let timeout = heads.fill(&request_with(original.clone()));
            assert_eq!(timeout, None);
            assert_eq!(heads.parts().headers, original);
            heads.clear();
            assert!(heads.is_empty());
        }
        let mut big = HeaderMap::new();
        for i in 0..200 {
            big.insert(
                http::header::HeaderName::try_from(format!("x-{i}")).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        heads.fill(&request_with(big));
        assert_eq!(heads.others.len(), 200);
        heads.clear();
        assert!(
            heads.others.capacity() <= KEPT_HEADER_ROOM
                && heads.order.capacity() <= KEPT_HEADER_ROOM,
            "a very long list gives its room back"
        );
    }

    #[test]
    fn headers_kept_as_marks_come_back_in_order_with_their_flags() {
        let mut original = HeaderMap::new();
        original.append("x-first", HeaderValue::from_static("1"));
        original.append(TE, HeaderValue::from_static("trailers"));
        original.append("x-middle", HeaderValue::from_static("2"));
        original.append(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        // Near misses are kept as they are.
        original.append(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let mut sensitive = HeaderValue::from_static("trailers");
        sensitive.set_sensitive(true);
        original.append(TE, sensitive);
        original.append("x-last", HeaderValue::from_static("3"));
        let mut heads = RequestHeads::empty();
        heads.fill(&request_with(original.clone()));
        assert_eq!(
            heads
                .order
                .iter()
                .filter(|k| **k != KeptHeader::Other)
                .count(),
            2,
            "only the two exact, non-sensitive pairs become marks"
        );
        let rebuilt = heads.parts().headers;
        let pairs = |map: &HeaderMap| -> Vec<(String, Vec<u8>, bool)> {
            map.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(pairs(&rebuilt), pairs(&original));
    }

    #[test]
    fn the_header_copy_finds_the_request_timeout() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert(deadline::GRPC_TIMEOUT, HeaderValue::from_static("250m"));
        let mut heads = RequestHeads::empty();
        let timeout = heads.fill(&request_with(headers.clone()));
        assert_eq!(timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            heads.others.len(),
            2,
            "grpc-timeout is kept for retries too"
        );
        heads.clear();
        // A malformed value counts as absent, as the tonic Channel treats it.
        headers.insert(deadline::GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        assert_eq!(heads.fill(&request_with(headers)), None);
    }

    #[test]
    fn extensions_survive_for_retries() {
        let mut request = http::Request::new(());
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new("pkg.Svc", "M"));
        let mut heads = RequestHeads::empty();
        heads.fill(&request);
        assert!(matches!(heads.extensions, SavedExtensions::GrpcMethod(_)));
        let restored = heads.parts().extensions;
        let method = restored.get::<tonic::GrpcMethod<'static>>().unwrap();
        assert_eq!((method.service(), method.method()), ("pkg.Svc", "M"));

        request
            .extensions_mut()
            .insert(CallOptions::new().max_attempts(2));
        heads.clear();
        heads.fill(&request);
        assert!(matches!(heads.extensions, SavedExtensions::Other(_)));
        let restored = heads.parts().extensions;
        assert!(restored.get::<tonic::GrpcMethod<'static>>().is_some());
        assert_eq!(
            restored.get::<CallOptions>(),
            Some(&CallOptions::new().max_attempts(2))
        );
    }

    #[test]
    fn a_kept_uri_is_replaced_unless_byte_for_byte_the_same() {
        let mut heads = RequestHeads::empty();
        for uri in [
            "http://Host:50051/pkg.Svc/M",
            // Equal as a `Uri` (hosts compare without case), not as bytes.
            "http://host:50051/pkg.Svc/M",
            "http://host:50051/pkg.Svc/N",
            "https://host:50051/pkg.Svc/N",
            "/pkg.Svc/N",
        ] {
            let mut request = http::Request::new(());
            *request.uri_mut() = Uri::from_static(uri);
            heads.fill(&request);
            assert_eq!(heads.parts().uri.to_string(), uri);
            heads.clear();
        }
    }

    #[test]
    fn uri_parts_match_by_address_or_by_bytes_never_by_prefix() {
        let path = "/pkg.Svc/Method";
        let copy = String::from(path);
        assert!(same_part(Some(path), Some(path)), "the same static string");
        assert!(same_part(Some(path), Some(&copy)), "same bytes elsewhere");
        // Same address, shorter: a prefix is not the same part.
        assert!(!same_part(Some(path), Some(&path[..4])));
        assert!(!same_part(Some(path), Some("/pkg.Svc/Methox")));
        assert!(!same_part(Some(path), None));
        assert!(!same_part(None, Some(path)));
        assert!(same_part(None, None));
    }

    #[test]
    fn the_kept_head_rebuilds_method_uri_and_version() {
        let mut request = http::Request::new(());
        *request.method_mut() = Method::PUT;
        *request.uri_mut() = Uri::from_static("http://h/pkg.Svc/M");
        *request.version_mut() = Version::HTTP_2;
        let mut heads = RequestHeads::empty();
        heads.fill(&request);
        let parts = heads.parts();
        assert_eq!(parts.method, Method::PUT);
        assert_eq!(parts.uri, "http://h/pkg.Svc/M");
        assert_eq!(parts.version, Version::HTTP_2);
    }
}
