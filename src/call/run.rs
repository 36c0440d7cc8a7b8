//! The retry loop of a call: send, classify, then back off and resend, or
//! surface; and [`Call::decide`], whether a failed attempt is retried.

use std::time::Duration;

use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service;
use tracing::{Instrument, debug};

use super::Call;
use super::attempt::{
    AttemptError, Failure, FirstAttempt, Sending, SharedService, cancelled_status, response_outcome,
};
use super::end::CallEnd;
use super::heads::RequestHeads;
use super::spans::AttemptSpan;
use super::wait::{cancelled, instant_after, sleep_until};
use crate::BoxError;
use crate::body::replay::{BodyId, Replay};
use crate::body::response::ResponseBody;
use crate::classify::{self, code_name};
use crate::metrics::{AttemptId, AttemptKind};
use crate::policy::pushback::{self, Pushback};

impl Call {
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
        // Whether the next attempt is the transparent retry.
        let mut transparent_next = false;
        // The replay body of the attempt in flight.
        let mut body_id = BodyId::FIRST;

        loop {
            attempt += 1;
            let (sending, attempt_deadline, id, mut attempt_span) = match first.take() {
                // The first attempt started with the call.
                Some(FirstAttempt::InFlight(first)) => (
                    Sending::First(first),
                    first_deadline,
                    AttemptId::FIRST,
                    self.take_first_span(),
                ),
                Some(FirstAttempt::Finished(result)) => (
                    Sending::Finished(result),
                    first_deadline,
                    AttemptId::FIRST,
                    self.take_first_span(),
                ),
                None => {
                    let kind = if transparent_next {
                        AttemptKind::Transparent
                    } else {
                        AttemptKind::Retry
                    };
                    let id = self.metrics.attempt_started(kind);
                    let mut parts = heads.next(attempt);
                    let deadline = self.attempt_deadline(&mut parts.headers);
                    let span = AttemptSpan::new(
                        None,
                        &parts.uri,
                        &parts.extensions,
                        attempt,
                        transparent_next,
                    );
                    let body = replay.body();
                    body_id = body.id();
                    let request = http::Request::from_parts(parts, body.into_tonic());
                    let sending = Sending::Later(service.clone(), Box::new(request));
                    (sending, deadline, id, span)
                }
            };
            transparent_next = false;
            let result = match sending {
                Sending::Finished(result) => result,
                sending => {
                    let send = sending.send().instrument(attempt_span.span().clone());
                    tokio::select! {
                        biased;
                        () = cancelled(self.cancel.as_ref()) => {
                            attempt_span.ended(Code::Cancelled);
                            return Err(self.surface_status(cancelled_status(), attempt));
                        }
                        () = sleep_until(attempt_deadline) => Err(AttemptError::TimedOut),
                        result = send => result.map_err(AttemptError::Failed),
                    }
                }
            };

            let failure = match result {
                Err(AttemptError::TimedOut) if attempt_deadline == self.deadline => {
                    attempt_span.ended(Code::DeadlineExceeded);
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
                    // taking a token. The refused attempt is still one for
                    // the metrics and spans (A66), ended as grpc core
                    // reports a refused stream: UNAVAILABLE.
                    debug!(attempt, %error, "transparent retry of a refused stream");
                    replay.abandon(body_id);
                    attempt_span.ended(Code::Unavailable);
                    self.metrics.attempt_ended(id, Code::Unavailable);
                    transparent_retry_used = true;
                    transparent_next = true;
                    attempt -= 1;
                    continue;
                }
                Err(AttemptError::Failed(error)) => Failure::from_error(error),
                Ok(response) => match response_outcome(response) {
                    Ok((response, ended)) => {
                        return Ok(self.commit(
                            replay,
                            body_id,
                            response,
                            attempt,
                            attempt_span,
                            ended,
                        ));
                    }
                    Err((code, response)) => Failure::Response { code, response },
                },
            };
            // The attempt is over: its body stops, so a transport still
            // pumping it lets go.
            replay.abandon(body_id);
            let code = failure.code();
            attempt_span.ended(code);
            self.metrics.attempt_ended(id, code);

            let (delay, wake) = match self.decide(&failure, attempt, replay) {
                Verdict::Final(reason) => {
                    debug!(attempt, code = code_name(code), reason, "final status");
                    return self.surface_failure(failure, attempt);
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
            attempt_span.backoff(delay);
            debug!(
                attempt,
                code = code_name(code),
                delay_ms = delay.as_secs_f64() * 1e3,
                "retrying"
            );
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
