//! What an attempt produced: a response that ends the call, or a status that
//! the policy may retry.
//!
//! Only the response *head* is inspected. A gRPC server reports an early
//! failure as "Trailers-Only": `grpc-status` sits in the response headers and
//! the body is empty. Any other response head means the server has started
//! answering, which commits the call (A6): it is passed through untouched,
//! even if its trailers later carry an error.
//!
//! `tonic::Status::from_header_map` panics on a malformed
//! `grpc-status-details-bin`, and a server controls those bytes, so the few
//! bytes of `grpc-status` are parsed here instead.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use http::{HeaderMap, HeaderValue, StatusCode, header::HeaderName};
use tonic::{Code, Status};

use crate::BoxError;

/// The `grpc-status` header.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The `grpc-status-details-bin` header: a base64 `google.rpc.Status`.
pub(crate) const GRPC_STATUS_DETAILS: HeaderName =
    HeaderName::from_static("grpc-status-details-bin");

/// Standard base64 with optional padding: what gRPC peers send and what
/// tonic accepts.
const STATUS_DETAILS_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes `grpc-status-details-bin`, or `None` if it is not valid base64.
pub(crate) fn decode_status_details(value: &[u8]) -> Option<Vec<u8>> {
    STATUS_DETAILS_BASE64.decode(value).ok()
}

/// Removes a `grpc-status-details-bin` that is not valid base64 from a
/// trailers-only response (OK or not) about to be surfaced, or from a
/// committed response's trailers.
///
/// tonic's client decodes it with `expect` (`Status::from_header_map`), so a
/// server sending garbage there would otherwise panic the caller's task.
/// Dropping undecodable details is what grpc-go does too.
pub(crate) fn strip_malformed_status_details(headers: &mut HeaderMap) {
    let malformed = headers
        .get_all(&GRPC_STATUS_DETAILS)
        .iter()
        .any(|v| decode_status_details(v.as_bytes()).is_none());
    if malformed {
        tracing::debug!("dropping a malformed grpc-status-details-bin");
        headers.remove(&GRPC_STATUS_DETAILS);
    }
}

/// What the head of a response means for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseKind {
    /// A trailers-only OK: the call is over, successfully. `check_details`
    /// is set when it carries `grpc-status-details-bin`, which tonic's
    /// client will decode.
    Ok { check_details: bool },
    /// Normal response headers: the call commits; its status comes in the
    /// trailers.
    Commit,
    /// An uncommitted failure: trailers-only `grpc-status`, or a response
    /// that is not gRPC at all (an HTTP error status, typically from a
    /// proxy, or a 200 whose content type is not gRPC), whose code is what
    /// gRPC's HTTP mapping gives.
    Failed(Code),
}

/// Classifies a response by its head.
pub(crate) fn classify_response<B>(response: &http::Response<B>) -> ResponseKind {
    let (status, has_details) = status_headers(response.headers());
    match status {
        Some(value) => match parse_grpc_status(value.as_bytes()) {
            Code::Ok => ResponseKind::Ok {
                check_details: has_details,
            },
            code => ResponseKind::Failed(code),
        },
        None if response.status() == StatusCode::OK => {
            if is_grpc_content_type(response.headers()) {
                ResponseKind::Commit
            } else {
                ResponseKind::Failed(Code::Unknown)
            }
        }
        None => ResponseKind::Failed(code_from_http_status(response.status())),
    }
}

/// Whether a response's content type is gRPC's (`application/grpc`, alone or
/// followed by `+format` or `;parameters`). A missing one is let through,
/// as tonic's client does: only a content type that is there and says
/// something else (an HTML error page from a proxy) marks a response as not
/// gRPC.
fn is_grpc_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(http::header::CONTENT_TYPE) else {
        return true;
    };
    let value = value.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// Turns a failed response head into the Trailers-Only status that tonic's
/// client reads: when it has no `grpc-status` (a response that is not
/// gRPC), `grpc-status: code` and a `grpc-message` saying why are added,
/// and any malformed `grpc-status-details-bin` is removed. The response's
/// body must then be dropped, not decoded: for a response that is not gRPC
/// it is not a gRPC message (tonic would report INTERNAL "invalid
/// compression flag" for an HTML page), and a Trailers-Only response has
/// none.
pub(crate) fn make_trailers_only(headers: &mut HeaderMap, http_status: StatusCode, code: Code) {
    if !headers.contains_key(GRPC_STATUS) {
        let message = match headers.get(http::header::CONTENT_TYPE) {
            Some(content_type) if http_status == StatusCode::OK => format!(
                "response is not gRPC: content-type {}",
                String::from_utf8_lossy(content_type.as_bytes())
            ),
            _ => format!(
                "grpc-status header missing, mapped from HTTP status code {}",
                http_status.as_u16()
            ),
        };
        headers.insert(GRPC_STATUS, HeaderValue::from(code as i32));
        if let Ok(message) = HeaderValue::from_str(
            &percent_encoding::percent_encode(message.as_bytes(), GRPC_MESSAGE_ENCODE).to_string(),
        ) {
            headers.insert(GRPC_MESSAGE, message);
        }
    }
    strip_malformed_status_details(headers);
}

/// The `grpc-message` header.
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// What gRPC percent-encodes in `grpc-message`: every byte outside
/// printable ASCII (the crate encodes non-ASCII bytes itself), and `%`.
const GRPC_MESSAGE_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The final status of a committed call, from its trailers: their
/// `grpc-status`, or UNKNOWN when they have none (gRPC requires one; tonic's
/// client reports its absence as UNKNOWN too).
pub(crate) fn trailers_code(trailers: &HeaderMap) -> Code {
    trailers
        .get(GRPC_STATUS)
        .map_or(Code::Unknown, |value| parse_grpc_status(value.as_bytes()))
}

/// The code tonic's client would give a response body error: a `Status`
/// in its chain is taken as it is, an HTTP/2 reset maps as gRPC's protocol
/// document says (and tonic does), a timed-out connection is UNAVAILABLE,
/// and anything else is UNKNOWN.
pub(crate) fn body_error_code(error: &(dyn std::error::Error + 'static)) -> Code {
    for e in error_chain(error) {
        if let Some(status) = e.downcast_ref::<Status>() {
            return status.code();
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return code_from_h2(h2);
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_timeout() {
                return Code::Unavailable;
            }
            if hyper.is_canceled() {
                return Code::Cancelled;
            }
        }
    }
    Code::Unknown
}

/// gRPC's mapping of HTTP/2 error codes (PROTOCOL-HTTP2.md, "Errors"), as
/// tonic applies it.
fn code_from_h2(error: &h2::Error) -> Code {
    match error.reason() {
        Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
        Some(h2::Reason::CANCEL) => Code::Cancelled,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
        Some(
            h2::Reason::NO_ERROR
            | h2::Reason::PROTOCOL_ERROR
            | h2::Reason::INTERNAL_ERROR
            | h2::Reason::FLOW_CONTROL_ERROR
            | h2::Reason::SETTINGS_TIMEOUT
            | h2::Reason::FRAME_SIZE_ERROR
            | h2::Reason::COMPRESSION_ERROR
            | h2::Reason::CONNECT_ERROR,
        ) => Code::Internal,
        _ => Code::Unknown,
    }
}

/// Response heads with at most this many values are scanned rather than
/// looked up.
const SCAN_LIMIT: usize = 8;

/// The first `grpc-status` value, and whether `grpc-status-details-bin` is
/// present. Every response is classified, so this is on the happy path: a
/// small head (the usual case) is scanned once, which is cheaper than two
/// hashed lookups; a large one is looked up.
#[inline]
fn status_headers(headers: &HeaderMap) -> (Option<&HeaderValue>, bool) {
    if headers.len() > SCAN_LIMIT {
        return (
            headers.get(GRPC_STATUS),
            headers.contains_key(GRPC_STATUS_DETAILS),
        );
    }
    let mut status = None;
    let mut has_details = false;
    for (name, value) in headers {
        // Names compare as names: a standard one (`content-type`) differs
        // by its kind alone, with no string to look up.
        if *name == GRPC_STATUS {
            // The first value, as `HeaderMap::get` (and tonic) would take.
            status.get_or_insert(value);
        } else if *name == GRPC_STATUS_DETAILS {
            has_details = true;
        }
    }
    (status, has_details)
}

/// Parses a `grpc-status` value exactly as tonic's client will when it
/// surfaces the response, so the layer and the stub never disagree on a code.
/// Anything that is not a known code in canonical ASCII decimal is UNKNOWN.
pub(crate) fn parse_grpc_status(value: &[u8]) -> Code {
    // `Code::from_bytes` only matches byte patterns; it cannot panic.
    Code::from_bytes(value)
}

/// The gRPC code for an HTTP status that arrived without `grpc-status`, per
/// gRPC's http-grpc-status-mapping document (and tonic's own mapping).
pub(crate) fn code_from_http_status(status: StatusCode) -> Code {
    match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// Converts an error from the inner service into the `Status` that tonic's
/// client would have produced from it, so that surfacing the converted
/// status is indistinguishable from surfacing the error.
///
/// Connection failures (`tonic::ConnectError`) become UNAVAILABLE, as tonic
/// and grpc core do, which lets the policy retry them. tonic reports an
/// expired `grpc-timeout` as CANCELLED ("Timeout expired"); since the layer
/// owns the deadline, that is reported as DEADLINE_EXCEEDED instead.
pub(crate) fn status_from_error(error: BoxError) -> Status {
    let timed_out = error_chain(&*error).any(|e| e.is::<tonic::TimeoutExpired>());
    let unsent = error_chain(&*error).any(is_unsent_request);
    let status = Status::from_error(error);
    if timed_out && status.code() == Code::Cancelled {
        return Status::deadline_exceeded(status.message().to_owned());
    }
    if unsent && status.code() == Code::Cancelled {
        // tonic calls this CANCELLED, but nobody cancelled anything: the
        // connection closed (e.g. the server shut down gracefully) before
        // the request was written. Like a failed connect, it is UNAVAILABLE.
        return Status::unavailable(format!(
            "connection closed before the request was sent: {}",
            status.message()
        ));
    }
    status
}

/// hyper fails a request it dropped before ever writing it (the connection
/// closed while it was queued) with `is_canceled()`; hyper documents this
/// kind as "a pending item was dropped before ever being processed".
fn is_unsent_request(error: &(dyn std::error::Error + 'static)) -> bool {
    error
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_canceled)
}

/// Whether the attempt certainly never reached the server: the connection
/// could not be established, so no request bytes were sent.
pub(crate) fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    error_chain(error).any(|e| e.is::<tonic::ConnectError>() || is_unsent_request(e))
}

/// Whether the server's application certainly never saw the request, which
/// A6 lets the client retry transparently: it never left the client (hyper
/// dropped it, unsent, when the connection closed), or the server refused
/// the stream (HTTP/2 `REFUSED_STREAM`, or a graceful `GOAWAY` whose last
/// stream id is below this stream's: h2 fails exactly those streams with the
/// remote `GOAWAY` error).
pub(crate) fn refused_before_processing(error: &(dyn std::error::Error + 'static)) -> bool {
    error_chain(error).any(|e| {
        is_unsent_request(e)
            || e.downcast_ref::<h2::Error>().is_some_and(|h2| {
                h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                    || (h2.is_go_away()
                        && h2.is_remote()
                        && h2.reason() == Some(h2::Reason::NO_ERROR))
            })
    })
}

fn error_chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source())
}

/// The canonical UPPERCASE name of a status code, as used in service
/// configs, logs and gRPC's documentation.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An empty header map, for classifying failures that have no headers.
pub(crate) fn no_headers() -> &'static HeaderMap {
    static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    EMPTY.get_or_init(HeaderMap::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, grpc_status: Option<&'static [u8]>) -> http::Response<()> {
        let mut r = http::Response::builder().status(status);
        if let Some(v) = grpc_status {
            r = r.header("grpc-status", http::HeaderValue::from_bytes(v).unwrap());
        }
        r.body(()).unwrap()
    }

    #[test]
    fn normal_headers_commit() {
        assert_eq!(
            classify_response(&response(200, None)),
            ResponseKind::Commit
        );
        let mut grpc = response(200, None);
        for content_type in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
            "Application/GRPC",
        ] {
            grpc.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            assert_eq!(
                classify_response(&grpc),
                ResponseKind::Commit,
                "{content_type}"
            );
        }
    }

    #[test]
    fn a_200_whose_content_type_is_not_grpc_is_unknown_not_a_commit() {
        for content_type in ["text/html", "application/grpc-web", "application/json", ""] {
            let mut html = response(200, None);
            html.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            assert_eq!(
                classify_response(&html),
                ResponseKind::Failed(Code::Unknown),
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn trailers_only_ok_ends_the_call() {
        assert_eq!(
            classify_response(&response(200, Some(b"0"))),
            ResponseKind::Ok {
                check_details: false
            }
        );
    }

    #[test]
    fn status_details_on_a_trailers_only_ok_are_flagged_for_checking() {
        let mut ok = response(200, Some(b"0"));
        ok.headers_mut()
            .insert(GRPC_STATUS_DETAILS, http::HeaderValue::from_static("!!"));
        assert_eq!(
            classify_response(&ok),
            ResponseKind::Ok {
                check_details: true
            }
        );
    }

    #[test]
    fn a_response_that_is_not_grpc_becomes_a_trailers_only_status() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html"),
        );
        make_trailers_only(
            &mut headers,
            StatusCode::SERVICE_UNAVAILABLE,
            Code::Unavailable,
        );
        assert_eq!(headers[GRPC_STATUS], "14");
        assert_eq!(
            headers[GRPC_MESSAGE],
            "grpc-status header missing, mapped from HTTP status code 503"
        );
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::Unavailable);

        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_bytes(b"text/html; x=\xff%").unwrap(),
        );
        make_trailers_only(&mut headers, StatusCode::OK, Code::Unknown);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::Unknown);
        assert!(
            status
                .message()
                .starts_with("response is not gRPC: content-type text/html; x=")
        );

        // A real Trailers-Only status is kept as it is, its bad details
        // dropped.
        let mut headers = http::HeaderMap::new();
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("8"));
        headers.insert(GRPC_STATUS_DETAILS, http::HeaderValue::from_static("!!"));
        make_trailers_only(&mut headers, StatusCode::OK, Code::Unknown);
        assert_eq!(headers[GRPC_STATUS], "8");
        assert!(!headers.contains_key(GRPC_STATUS_DETAILS));
        assert!(!headers.contains_key(GRPC_MESSAGE));
    }

    #[test]
    fn trailers_without_grpc_status_are_unknown() {
        let mut trailers = http::HeaderMap::new();
        assert_eq!(trailers_code(&trailers), Code::Unknown);
        trailers.insert(GRPC_STATUS, http::HeaderValue::from_static("14"));
        assert_eq!(trailers_code(&trailers), Code::Unavailable);
        trailers.insert(GRPC_STATUS, http::HeaderValue::from_static("x"));
        assert_eq!(trailers_code(&trailers), Code::Unknown);
    }

    #[test]
    fn body_errors_take_the_code_tonic_would_give_them() {
        let status: BoxError = Box::new(Status::unavailable("gone"));
        assert_eq!(body_error_code(&*status), Code::Unavailable);
        for (reason, code) in [
            (h2::Reason::REFUSED_STREAM, Code::Unavailable),
            (h2::Reason::CANCEL, Code::Cancelled),
            (h2::Reason::INTERNAL_ERROR, Code::Internal),
            (h2::Reason::NO_ERROR, Code::Internal),
            (h2::Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
        ] {
            let error: BoxError = Box::new(h2::Error::from(reason));
            assert_eq!(body_error_code(&*error), code, "{reason:?}");
            // And as tonic itself maps it.
            assert_eq!(Status::from_error(error).code(), code, "{reason:?}");
        }
        let other: BoxError = "something else".into();
        assert_eq!(body_error_code(&*other), Code::Unknown);
    }

    #[test]
    fn large_and_small_heads_are_read_alike() {
        // Scanned (few headers) or looked up (many), the first grpc-status
        // value decides, and details are found either way.
        for extra in [0, 20] {
            let mut r = response(200, None);
            let headers = r.headers_mut();
            for i in 0..extra {
                headers.insert(
                    HeaderName::try_from(format!("x-pad-{i}")).unwrap(),
                    http::HeaderValue::from_static("v"),
                );
            }
            headers.append(GRPC_STATUS, http::HeaderValue::from_static("14"));
            headers.append(GRPC_STATUS, http::HeaderValue::from_static("0"));
            headers.insert(GRPC_STATUS_DETAILS, http::HeaderValue::from_static("AA"));
            assert_eq!(status_headers(headers).0.unwrap(), "14", "{extra}");
            assert!(status_headers(headers).1, "{extra}");
            assert_eq!(
                classify_response(&r),
                ResponseKind::Failed(Code::Unavailable),
                "{extra}"
            );
        }
    }

    #[test]
    fn trailers_only_error_is_a_failure_with_its_code() {
        assert_eq!(
            classify_response(&response(200, Some(b"14"))),
            ResponseKind::Failed(Code::Unavailable)
        );
        // grpc-status wins over the HTTP status.
        assert_eq!(
            classify_response(&response(503, Some(b"5"))),
            ResponseKind::Failed(Code::NotFound)
        );
    }

    #[test]
    fn http_errors_without_grpc_status_map_like_grpc() {
        let cases = [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
            (302, Code::Unknown),
        ];
        for (http, code) in cases {
            assert_eq!(
                classify_response(&response(http, None)),
                ResponseKind::Failed(code),
                "{http}"
            );
        }
    }

    #[test]
    fn malformed_grpc_status_is_unknown_never_a_panic() {
        let bad: [&[u8]; 10] = [
            b"", b"abc", b"-1", b"17", b"99", b"1 4", b"014", b"01", b"\xff", b"+1",
        ];
        for raw in bad {
            assert_eq!(parse_grpc_status(raw), Code::Unknown, "{raw:?}");
        }
        for n in 0..=16 {
            assert_eq!(
                parse_grpc_status(n.to_string().as_bytes()),
                Code::from_i32(n)
            );
        }
    }

    #[test]
    fn malformed_status_details_are_stripped_valid_ones_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS_DETAILS, "CAU".parse().unwrap()); // unpadded, valid
        strip_malformed_status_details(&mut headers);
        assert_eq!(headers.get(GRPC_STATUS_DETAILS).unwrap(), "CAU");
        for garbage in ["!!!", "a", "CAU=x", "%%%"] {
            headers.insert(GRPC_STATUS_DETAILS, garbage.parse().unwrap());
            strip_malformed_status_details(&mut headers);
            assert!(headers.get(GRPC_STATUS_DETAILS).is_none(), "{garbage}");
        }
    }

    #[test]
    fn refused_streams_are_recognised_through_the_error_chain() {
        #[derive(Debug)]
        struct Wrapper(h2::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrapper(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert!(refused_before_processing(&refused));
        let internal = Wrapper(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        assert!(!refused_before_processing(&internal));
        let io = std::io::Error::other("x");
        assert!(!refused_before_processing(&io));
        let connect = tonic::ConnectError(Box::new(io));
        assert!(never_sent(&connect));
        assert!(!never_sent(&refused));
    }

    #[test]
    fn connect_errors_are_unavailable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err: BoxError = Box::new(tonic::ConnectError(Box::new(io)));
        assert_eq!(status_from_error(err).code(), Code::Unavailable);
    }

    #[test]
    fn channel_timeouts_are_deadline_exceeded_not_cancelled() {
        let err: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(status_from_error(err).code(), Code::DeadlineExceeded);
    }

    #[test]
    fn a_status_error_surfaces_unchanged() {
        let mut original = Status::with_details(Code::Aborted, "boom", "details".into());
        original.metadata_mut().insert("k", "v".parse().unwrap());
        let got = status_from_error(Box::new(original));
        assert_eq!(got.code(), Code::Aborted);
        assert_eq!(got.message(), "boom");
        assert_eq!(got.details(), b"details");
        assert_eq!(got.metadata().get("k").unwrap(), "v");
    }
}
