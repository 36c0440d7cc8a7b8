//! The attempt loop: send, classify, then back off and resend, or surface.
//!
//! One call runs here from its first attempt to its final result:
//!
//! 1. The call's deadline is fixed once: the earliest of the request's
//!    `grpc-timeout` and the policy's timeout.
//! 2. Each attempt gets a [`ReplayBody`](crate::replay::ReplayBody) and a
//!    `grpc-timeout` rewritten to the time it may take, and is raced against
//!    its deadline and the call's cancellation token.
//! 3. The result is classified ([`crate::classify`]). A committed response
//!    ends the call; a failure is retried only while the policy allows it,
//!    attempts remain, the request is still replayable and the backoff ends
//!    before the deadline.
//! 4. The final result is surfaced unchanged, with the number of previous
//!    attempts added as `grpc-previous-rpc-attempts` metadata.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderValue, Method, Uri, Version, header::HeaderName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::ServiceExt;
use tower_service::Service;
use tracing::{Instrument, Span, debug, debug_span, field};

use crate::BoxError;
use crate::backoff::Backoff;
use crate::classify::{self, ResponseKind};
use crate::deadline;
use crate::policy::RetryPolicy;
use crate::replay::Replay;

/// `grpc-previous-rpc-attempts`: sent on attempt 2 and later, and added to
/// the metadata of the result the caller sees.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// Runs one call to completion. `inner` is ready for the first attempt
/// unless `first_ready` holds the error its readiness check returned.
pub(crate) async fn run<S, ResBody>(
    mut inner: S,
    first_ready: Result<(), BoxError>,
    policy: Arc<RetryPolicy>,
    request: http::Request<Body>,
    span: Span,
) -> Result<http::Response<ResBody>, BoxError>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let deadline = call_deadline(&parts.headers, policy.timeout, started);
    let cancel = parts.extensions.get::<CancellationToken>().cloned();
    let replay = Replay::new(body, policy.replay_limit);
    let template = RequestTemplate::new(&parts);
    let mut first_parts = Some(parts);
    let mut ready = first_ready.map(|()| true);
    let mut backoff = Backoff::default();
    let mut attempt: u32 = 0;

    loop {
        attempt += 1;
        let now = Instant::now();
        let attempt_deadline = earliest(deadline, policy.per_attempt_timeout.map(|t| now + t));

        let mut parts = first_parts.take().unwrap_or_else(|| template.parts());
        if attempt > 1 {
            parts
                .headers
                .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(attempt - 1));
        }
        if let Some(at) = attempt_deadline {
            deadline::set_request_timeout(&mut parts.headers, at.saturating_duration_since(now));
        }
        let request = http::Request::from_parts(parts, Body::new(replay.body()));

        let attempt_span = debug_span!(parent: &span, "grpc.attempt", attempt, code = field::Empty, backoff_ms = field::Empty);
        let send = send(
            &mut inner,
            std::mem::replace(&mut ready, Ok(false)),
            request,
        )
        .instrument(attempt_span.clone());
        let result = tokio::select! {
            biased;
            () = cancelled(cancel.as_ref()) => {
                return Err(surface_status(cancelled_status(), attempt, &span));
            }
            () = sleep_until(attempt_deadline) => Err(AttemptError::TimedOut),
            result = send => result.map_err(AttemptError::Failed),
        };

        // Classify. `failure` is what the caller gets if this attempt is final.
        let failure = match result {
            Ok(response) => match classify::classify_response(&response) {
                ResponseKind::Commit => {
                    replay.commit();
                    attempt_span.record("code", "committed");
                    span.record("outcome", "committed");
                    return Ok(surface_response(response, attempt, &span));
                }
                ResponseKind::Failed(code) => Failure::Response { code, response },
            },
            Err(AttemptError::TimedOut) if attempt_deadline == deadline => {
                return Err(surface_status(
                    Status::deadline_exceeded(format!(
                        "deadline exceeded during attempt {attempt} (call deadline {:?})",
                        deadline.map(|d| d - started).unwrap_or_default()
                    )),
                    attempt,
                    &span,
                ));
            }
            Err(AttemptError::TimedOut) => Failure::Status(Status::deadline_exceeded(format!(
                "per-attempt timeout of {:?} expired",
                policy.per_attempt_timeout.unwrap_or_default()
            ))),
            Err(AttemptError::Failed(error)) => Failure::Status(classify::status_from_error(error)),
        };
        let code = failure.code();
        attempt_span.record("code", classify::code_name(code));

        let retry = attempt < policy.max_attempts
            && policy.is_retryable(code, failure.headers())
            && replay.is_replayable();
        if !retry {
            debug!(parent: &span, attempt, code = classify::code_name(code), "final status");
            return failure.surface(attempt, &span);
        }

        let delay = backoff.next_delay(&policy);
        attempt_span.record("backoff_ms", delay.as_secs_f64() * 1e3);
        if let Some(deadline) = deadline
            && Instant::now() + delay >= deadline
        {
            let last = failure.describe();
            return Err(surface_status(
                Status::deadline_exceeded(format!(
                    "deadline would pass during the {delay:?} backoff after attempt {attempt}; last attempt: {last}"
                )),
                attempt,
                &span,
            ));
        }
        debug!(parent: &span, attempt, code = classify::code_name(code), delay_ms = delay.as_secs_f64() * 1e3, "retrying");
        // Release the failed attempt (and its connection resources) before waiting.
        drop(failure);
        tokio::select! {
            biased;
            () = cancelled(cancel.as_ref()) => {
                return Err(surface_status(cancelled_status(), attempt, &span));
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Readies the inner service if needed, then sends one attempt.
async fn send<S, ResBody>(
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

enum AttemptError {
    TimedOut,
    Failed(BoxError),
}

/// A failed attempt, kept as the caller would see it if it is final.
enum Failure<ResBody> {
    /// A trailers-only (or non-200) response, passed through unchanged.
    Response {
        code: Code,
        response: http::Response<ResBody>,
    },
    /// A transport error or timeout, as the Status tonic would surface.
    Status(Status),
}

impl<ResBody> Failure<ResBody> {
    fn code(&self) -> Code {
        match self {
            Failure::Response { code, .. } => *code,
            Failure::Status(status) => status.code(),
        }
    }

    fn headers(&self) -> &HeaderMap {
        match self {
            Failure::Response { response, .. } => response.headers(),
            Failure::Status(_) => classify::no_headers(),
        }
    }

    fn describe(&self) -> String {
        let message = match self {
            Failure::Response { response, .. } => response
                .headers()
                .get("grpc-message")
                .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                .unwrap_or_default(),
            Failure::Status(status) => status.message().to_owned(),
        };
        format!("{}: {message}", classify::code_name(self.code()))
    }

    fn surface(self, attempt: u32, span: &Span) -> Result<http::Response<ResBody>, BoxError> {
        match self {
            Failure::Response { mut response, .. } => {
                classify::strip_malformed_status_details(response.headers_mut());
                Ok(surface_response(response, attempt, span))
            }
            Failure::Status(status) => Err(surface_status(status, attempt, span)),
        }
    }
}

fn surface_response<B>(
    mut response: http::Response<B>,
    attempt: u32,
    span: &Span,
) -> http::Response<B> {
    span.record("attempts", attempt);
    if attempt > 1 {
        response
            .headers_mut()
            .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(attempt - 1));
    }
    response
}

fn surface_status(mut status: Status, attempt: u32, span: &Span) -> BoxError {
    span.record("attempts", attempt);
    span.record("outcome", classify::code_name(status.code()));
    if attempt > 1 {
        status
            .metadata_mut()
            .insert("grpc-previous-rpc-attempts", (attempt - 1).into());
    }
    Box::new(status)
}

fn cancelled_status() -> Status {
    Status::cancelled("call cancelled through its CancellationToken")
}

/// The call's deadline: the earliest of the request's `grpc-timeout` and the
/// policy's timeout, measured from the call's start.
fn call_deadline(
    headers: &HeaderMap,
    policy_timeout: Option<Duration>,
    start: Instant,
) -> Option<Instant> {
    let from_request = deadline::request_timeout(headers).and_then(|t| start.checked_add(t));
    let from_policy = policy_timeout.and_then(|t| start.checked_add(t));
    earliest(from_request, from_policy)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// What is needed to rebuild the request head for a retry, since the inner
/// service consumes each attempt's request.
struct RequestTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl RequestTemplate {
    fn new(parts: &Parts) -> Self {
        RequestTemplate {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        }
    }

    fn parts(&self) -> Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = self.headers.clone();
        parts.extensions = self.extensions.clone();
        parts
    }
}
