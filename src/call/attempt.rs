//! One attempt: sending it, and what its result means for the call.

use std::sync::Arc;

use http::HeaderMap;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::ServiceExt;
use tower_service::Service;

use super::end::CallEnd;
use crate::BoxError;
use crate::body::response::ResponseBody;
use crate::classify::{self, ResponseKind, code_name};
use crate::policy::pushback::{self, Pushback};

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
pub(crate) enum Sending<S: Service<http::Request<Body>>> {
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
    pub(crate) async fn send(self) -> Result<http::Response<ResBody>, BoxError> {
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
}

pub(crate) fn cancelled_status() -> Status {
    Status::cancelled("call cancelled through its CancellationToken")
}
