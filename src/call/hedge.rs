//! Hedging (gRFC A6 `hedgingPolicy`): several copies of one call in flight.
//!
//! The first attempt goes out at once. Each `hedging_delay` that passes
//! without a final answer sends another, up to `max_attempts`; a delay of
//! zero sends them all at once. A non-fatal failure sends the next hedge at
//! once. The first OK (or committed) response, or the first fatal status,
//! wins, and every other attempt is cancelled: their futures are dropped,
//! which resets their HTTP/2 streams.
//!
//! Everything a retried call has applies to the hedges together: one
//! deadline, one cancellation token, one replay buffer (every attempt replays
//! the same recorded chunks; the request is never copied per hedge), and
//! the layer's throttling, budget and buffer cap. Server pushback steers the
//! schedule: "stop" sends no more hedges, N ms moves the next one N ms out,
//! and N ms above the default `max_server_delay` (30 s) sends no more.
//!
//! The attempts run inside the call's own future (no task is spawned), so
//! dropping the call cancels every hedge.

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_service::Service;
use tracing::{Instrument, debug};

use super::Call;
use super::attempt::{AttemptError, Failure, Outcome, cancelled_status, outcome, send};
use super::heads::RequestHeads;
use super::spans::AttemptSpan;
use super::wait::{cancelled, instant_after, sleep_until};
use crate::BoxError;
use crate::body::replay::{BodyId, Replay};
use crate::body::response::ResponseBody;
use crate::call::end::CallEnd;
use crate::classify::code_name;
use crate::metrics::{AttemptId, AttemptKind};
use crate::policy::config::HedgingPolicy;
use crate::policy::pushback::Pushback;

impl Call {
    /// Runs a hedged call to completion.
    pub(crate) async fn run_hedged<S, ResBody>(
        &mut self,
        inner: S,
        first_ready: Result<(), BoxError>,
        first_deadline: Option<Instant>,
        replay: &Replay<Body>,
        heads: &mut RequestHeads,
        first: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody<ResBody, CallEnd>>, BoxError>
    where
        S: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone,
        S::Error: Into<BoxError>,
    {
        // Copied out: the loop below updates `self` while it reads these.
        let hedging = self.policy().hedging.cloned().unwrap_or(HedgingPolicy {
            max_attempts: 1,
            hedging_delay: std::time::Duration::ZERO,
            non_fatal_codes: crate::CodeSet::EMPTY,
            per_attempt_timeout: None,
        });
        let mut first = Some(first);
        // Hedges after the first need their own service (each is readied
        // separately); the first uses the one `poll_ready` readied.
        let spare = inner.clone();
        let mut first_service = Some((inner, first_ready.map(|()| true)));

        let mut in_flight = FuturesUnordered::new();
        // The closure owns `spare`, `first_service` and the heads (a service
        // need not be `Sync`) and borrows the replay buffer.
        // Attempt `n`, whose span will be `spans[k]`: the span stays with
        // the loop, which ends it with the attempt's status, also for the
        // attempts still in flight when the call ends (a lost race, the
        // deadline, a cancellation).
        let mut launch = move |n: u32, k: usize, id: AttemptId, transparent: bool, this: &Call| {
            // The call's deadline covers every hedge, and so does the
            // per-attempt timeout; `grpc-timeout` carries the earlier.
            let (request, body, deadline) = match first.take() {
                Some(first) => (first, BodyId::FIRST, first_deadline),
                None => {
                    let mut parts = heads.next(n);
                    let deadline = this.attempt_deadline(&mut parts.headers);
                    let body = replay.body();
                    let id = body.id();
                    (
                        http::Request::from_parts(parts, body.into_tonic()),
                        id,
                        deadline,
                    )
                }
            };
            let (mut service, ready) = first_service
                .take()
                .unwrap_or_else(|| (spare.clone(), Ok(false)));
            let span = AttemptSpan::new(None, request.uri(), request.extensions(), n, transparent);
            let attempt = async move {
                let result = tokio::select! {
                    biased;
                    result = send(&mut service, ready, request) => result.map_err(AttemptError::Failed),
                    () = sleep_until(deadline) => Err(AttemptError::TimedOut),
                };
                (n, body, result, id, k)
            }
            .instrument(span.span().clone());
            (attempt, span)
        };
        let mut spans: Vec<AttemptSpan> = Vec::new();

        // The first attempt started with the call.
        let (attempt, span) = launch(1, spans.len(), AttemptId::FIRST, false, self);
        spans.push(span);
        in_flight.push(attempt);
        let mut sent: u32 = 1;
        let delay = hedging.hedging_delay;
        // `None` is "no timed hedge": none left, or a delay too long to time
        // (a non-fatal failure still sends the next one at once).
        let mut next_hedge = if sent < self.max_attempts {
            instant_after(Instant::now(), delay)
        } else {
            None
        };
        let mut stopped = false;
        let mut transparent_retry_used = false;
        let mut last_failure: Option<(u32, Failure<ResBody>)> = None;

        loop {
            let can_hedge = !stopped && sent < self.max_attempts && next_hedge.is_some();
            if in_flight.is_empty() {
                if !can_hedge {
                    let Some((n, failure)) = last_failure else {
                        // Every attempt that leaves `in_flight` either ends
                        // the call or becomes `last_failure`; should that
                        // ever break, fail the call rather than panic.
                        let status = Status::internal("hedged call ended without a result");
                        return Err(self.surface_status(status, sent));
                    };
                    debug!(
                        attempt = n,
                        code = code_name(failure.code()),
                        "final status of a hedged call"
                    );
                    return self.surface_failure(failure, n);
                }
                if let (Some(deadline), Some(at)) = (self.deadline, next_hedge)
                    && at >= deadline
                {
                    let last = last_failure
                        .as_ref()
                        .map(|(_, f)| f.describe())
                        .unwrap_or_default();
                    let status = Status::deadline_exceeded(format!(
                        "deadline would pass before the next hedge; last attempt: {last}"
                    ));
                    return Err(self.surface_status(status, sent));
                }
            }
            tokio::select! {
                biased;
                () = cancelled(self.cancel.as_ref()) => {
                    end_all(&mut spans, Code::Cancelled);
                    return Err(self.surface_status(cancelled_status(), sent));
                }
                () = sleep_until(self.deadline) => {
                    end_all(&mut spans, Code::DeadlineExceeded);
                    let status = Status::deadline_exceeded(format!(
                        "call deadline exceeded with {} of {sent} hedged attempts in flight",
                        in_flight.len()
                    ));
                    return Err(self.surface_status(status, sent));
                }
                Some((n, body, result, id, k)) = in_flight.next(), if !in_flight.is_empty() => {
                    let mut span = spans.get_mut(k).map(std::mem::take).unwrap_or_default();
                    let result = match result {
                        Ok(response) => Ok(response),
                        Err(AttemptError::Failed(error)) => Err(error),
                        Err(AttemptError::TimedOut) => {
                            Err(Box::new(Status::deadline_exceeded(format!(
                                "per-attempt timeout of {:?} expired",
                                hedging.per_attempt_timeout.unwrap_or_default()
                            ))) as BoxError)
                        }
                    };
                    let failure = match outcome(result) {
                        Outcome::Commit(response, ended) if replay.can_commit(body) => {
                            // The winner. Dropping `in_flight` on return
                            // cancels every other attempt: they lost.
                            self.metrics.end_other_attempts(id, Code::Cancelled);
                            end_all(&mut spans, Code::Cancelled);
                            return Ok(self.commit(replay, body, response, n, span, ended));
                        }
                        Outcome::Commit(..) => {
                            // Its server answered before the request, but the
                            // request passed a buffer limit while another
                            // attempt was sending it: this one can never send
                            // it whole. Drop it (resetting its stream).
                            debug!(attempt = n, "hedge answered after losing its replay buffer");
                            replay.abandon(body);
                            span.ended(Code::Cancelled);
                            self.metrics.attempt_ended(id, Code::Cancelled);
                            continue;
                        }
                        Outcome::Refused(error) if !transparent_retry_used && replay.is_replayable() => {
                            replay.abandon(body);
                            debug!(attempt = n, %error, "transparent retry of a refused hedge");
                            transparent_retry_used = true;
                            span.ended(Code::Unavailable);
                            self.metrics.attempt_ended(id, Code::Unavailable);
                            let id = self.metrics.attempt_started(AttemptKind::Transparent);
                            let (attempt, span) = launch(n, spans.len(), id, true, self);
                            spans.push(span);
                            in_flight.push(attempt);
                            continue;
                        }
                        Outcome::Refused(error) => Failure::from_error(error),
                        Outcome::Failed(failure) => failure,
                    };
                    let code = failure.code();
                    span.ended(code);
                    self.metrics.attempt_ended(id, code);
                    let lost_replay = replay.is_cut_off(body);
                    replay.abandon(body);
                    if !hedging.non_fatal_codes.contains(code) {
                        if lost_replay && (!in_flight.is_empty() || last_failure.is_some()) {
                            // The layer cut this attempt's request short (the
                            // request passed a buffer limit while another
                            // attempt was sending it): its failure says
                            // nothing about the request. The attempt still
                            // sending it goes on (or the last real failure
                            // stands); no more are sent.
                            debug!(attempt = n, code = code_name(code), "hedge lost its replay buffer");
                            stopped = true;
                            continue;
                        }
                        debug!(attempt = n, code = code_name(code), "fatal status ends the hedged call");
                        // The hedges still in flight lost to it.
                        self.metrics.end_other_attempts(AttemptId::UNTRACKED, Code::Cancelled);
                        end_all(&mut spans, Code::Cancelled);
                        return self.surface_failure(failure, n);
                    }
                    // Non-fatal: it costs a throttling token, and the next
                    // hedge goes out now, or when the server asks.
                    if let Some(throttle) = &self.state.throttle {
                        throttle.record_failure();
                    }
                    match failure.pushback() {
                        Pushback::Stop => {
                            debug!(attempt = n, "server pushback stops further hedges");
                            stopped = true;
                        }
                        Pushback::RetryAfter(after) if after > self.policy().retry.max_server_delay => {
                            debug!(attempt = n, ?after, "server pushback above max_server_delay stops further hedges");
                            stopped = true;
                        }
                        Pushback::RetryAfter(after) => next_hedge = instant_after(Instant::now(), after),
                        Pushback::Absent => next_hedge = Some(Instant::now()),
                    }
                    last_failure = Some((n, failure));
                }
                () = sleep_until(next_hedge), if can_hedge => {
                    if self.may_hedge(replay) {
                        sent += 1;
                        debug!(attempt = sent, "sending a hedge");
                        let id = self.metrics.attempt_started(AttemptKind::Hedge);
                        let (attempt, span) = launch(sent, spans.len(), id, false, self);
                        spans.push(span);
                        in_flight.push(attempt);
                        next_hedge = if sent < self.max_attempts {
                            instant_after(Instant::now(), delay)
                        } else {
                            None
                        };
                    } else {
                        stopped = true;
                    }
                }
            }
        }
    }

    /// Whether another hedge may go out: the request is still replayable
    /// and throttling and the budget allow it.
    fn may_hedge<B>(&mut self, replay: &Replay<B>) -> bool {
        if !replay.is_replayable() {
            debug!("no more hedges: the request is not replayable");
            return false;
        }
        if let Some(throttle) = &self.state.throttle
            && !throttle.allows_retry()
        {
            debug!("no more hedges: throttled");
            self.metrics.throttled();
            return false;
        }
        if let Some(budget) = &self.state.budget
            && !budget.try_withdraw()
        {
            debug!("no more hedges: retry budget exhausted");
            self.metrics.budget_exhausted();
            return false;
        }
        true
    }
}

/// Ends the span of every attempt still in flight with `code`.
fn end_all(spans: &mut [AttemptSpan], code: Code) {
    for span in spans {
        span.ended(code);
    }
}
