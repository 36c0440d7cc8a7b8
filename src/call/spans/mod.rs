//! The call's and its attempts' tracing spans, with OpenTelemetry's RPC
//! conventions.
//!
//! A `grpc.call` span covers the call; each attempt is a `grpc.attempt`
//! span inside it, so with `tracing-opentelemetry` retries and hedges show
//! up as child spans of the call. Both carry the fields OpenTelemetry's RPC
//! conventions name, which `tracing-opentelemetry` turns into attributes as
//! they are: `rpc.system = "grpc"`, `rpc.service`, `rpc.method`, and when
//! they end `rpc.grpc.status_code` (the number) and `otel.status_code =
//! "ERROR"` for any code but OK, as the conventions ask of client spans.
//! `otel.name` names them `pkg.Service/Method` there, and `otel.kind`
//! marks each attempt as the client span (one per request sent, as for
//! HTTP resends). For people reading logs, the call also records its
//! `attempts` and `outcome` (the code's name), and each attempt its
//! `attempt` number, `code`, whether it is a `transparent_retry`, and the
//! `backoff_ms` that followed it.
//!
//! All are DEBUG spans, made only when DEBUG is enabled: the caller checks
//! first, so that the happy path never builds a disabled span.

use http::{Extensions, Uri};
use tonic::Code;
use tracing::{Span, debug_span, field};

use crate::classify::code_name;
use crate::state::service_and_method as names;

/// The `grpc.call` span of `request`.
pub(crate) fn call_span<B>(request: &http::Request<B>) -> Span {
    let (service, method) = names(request.uri(), request.extensions());
    debug_span!(
        "grpc.call",
        otel.name = request.uri().path().trim_start_matches('/'),
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = field::Empty,
        otel.status_code = field::Empty,
        attempts = field::Empty,
        outcome = field::Empty,
    )
}

/// Records how the call ended, after `attempts` attempts.
pub(crate) fn call_ended(span: &Span, attempts: Option<u32>, code: Code) {
    if span.is_none() {
        return;
    }
    if let Some(attempts) = attempts {
        span.record("attempts", attempts);
    }
    span.record("outcome", code_name(code));
    record_status(span, code);
}

fn record_status(span: &Span, code: Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if code != Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}

/// One attempt's span. Dropped before it is ended, the attempt was
/// abandoned (it lost a hedge race, or the call was dropped): CANCELLED.
pub(crate) struct AttemptSpan {
    span: Span,
    ended: bool,
}

impl AttemptSpan {
    /// No span.
    pub(crate) const fn none() -> Self {
        AttemptSpan {
            span: Span::none(),
            ended: true,
        }
    }

    /// The span of attempt `attempt` of the request with `uri` and
    /// `extensions`, a child of `parent` (`None`: the current span).
    pub(crate) fn new(
        parent: Option<&Span>,
        uri: &Uri,
        extensions: &Extensions,
        attempt: u32,
        transparent_retry: bool,
    ) -> Self {
        if !tracing::level_enabled!(tracing::Level::DEBUG) {
            return AttemptSpan::none();
        }
        let (service, method) = names(uri, extensions);
        let parent = parent.and_then(Span::id);
        let span = debug_span!(
            parent: parent.or_else(|| Span::current().id()),
            "grpc.attempt",
            otel.name = uri.path().trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = field::Empty,
            otel.status_code = field::Empty,
            attempt,
            transparent_retry,
            code = field::Empty,
            backoff_ms = field::Empty,
        );
        AttemptSpan {
            ended: span.is_none(),
            span,
        }
    }

    /// The span itself, to instrument the attempt with.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    pub(crate) fn is_none(&self) -> bool {
        self.span.is_none()
    }

    /// The attempt ended with `code`.
    pub(crate) fn ended(&mut self, code: Code) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.span.record("code", code_name(code));
        record_status(&self.span, code);
    }

    /// A retry follows the attempt after `delay`.
    pub(crate) fn backoff(&self, delay: std::time::Duration) {
        self.span.record("backoff_ms", delay.as_secs_f64() * 1e3);
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        self.ended(Code::Cancelled);
    }
}

impl Default for AttemptSpan {
    fn default() -> Self {
        AttemptSpan::none()
    }
}

#[cfg(test)]
mod tests;
