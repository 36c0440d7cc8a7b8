//! The per-attempt script: [`FaultAction`] and the `x-fault` header format.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Code;

/// Metadata key grouping the attempts of one logical call.
pub const CALL_ID_HEADER: &str = "x-call-id";

/// Metadata key holding the JSON script (see [`fault_header`]).
pub const FAULT_HEADER: &str = "x-fault";

/// What the test server does with one attempt of a call.
///
/// Every field is optional in JSON and defaults to "normal": the default
/// action is a successful echo (`{}`). See the [module docs](super) for the
/// header format and the order in which fields are applied.
///
/// Build actions with the helpers, e.g.
/// `FaultAction::code(Code::Unavailable).pushback("100")`, and turn a script
/// into a header value with [`fault_header`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultAction {
    /// gRPC status code of the response, as an integer `0..=16` in JSON.
    /// Default `0` (OK: echo the request).
    #[serde(with = "code_as_int", skip_serializing_if = "is_ok")]
    pub code: Code,
    /// Status message (`grpc-message`, percent-encoded by the server).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Raw value of a `grpc-retry-pushback-ms` header sent with the status.
    /// Raw so that tests can send garbage such as `"abc"` or `"-1"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pushback: Option<String>,
    /// For error codes: send normal response headers (HTTP 200,
    /// `content-type: application/grpc`) first and the status in trailers,
    /// instead of a Trailers-Only response. The client then sees a committed
    /// call. For an OK `Unary` or `ClientStream` echo: send the response
    /// headers at once, before reading the request, and read it while the
    /// response body is polled (the echo follows the request's end).
    #[serde(skip_serializing_if = "is_false")]
    pub headers_first: bool,
    /// Sleep this long (with `tokio::time::sleep`) before responding at all.
    #[serde(skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
    /// Sleep this long after the response headers have been sent, before the
    /// rest of the response. Only applies to responses that send headers
    /// first (OK responses and `headers_first` errors). For `ServerStream`
    /// the first response message is sent before the pause; for `Bidi` the
    /// pause comes after the request stream ended, before the trailers.
    #[serde(skip_serializing_if = "is_zero")]
    pub body_delay_ms: u64,
    /// Attach a `google.rpc.Status` whose details hold a
    /// `google.rpc.RetryInfo { retry_delay }` of this many milliseconds, as
    /// the `grpc-status-details-bin` header (base64 without padding, as
    /// tonic emits it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_info_ms: Option<u64>,
    /// Attach a `google.rpc.RetryInfo` whose `retry_delay` is exactly these
    /// raw `(seconds, nanos)`, unchecked, so tests can send what no
    /// well-behaved server would: `i64::MAX` seconds, negative values, nanos
    /// out of range. Replaces `retry_info_ms` when both are set. JSON: a
    /// two-element array, e.g. `[9223372036854775807, 0]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_info_raw: Option<(i64, i32)>,
    /// Extra `(name, value)` headers appended verbatim to the status block
    /// (the Trailers-Only headers, or the trailers). Appended, so duplicates
    /// of headers the server already sent are possible. Invalid names or
    /// values are skipped. JSON: an array of two-element arrays.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub raw_headers: Vec<(String, String)>,
    /// Replace the `grpc-status` value verbatim (e.g. `"abc"`, `"99"`,
    /// `""`). Skipped if it is not a valid header value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status_raw: Option<String>,
    /// Respond with this HTTP status and no `grpc-status` at all, like a
    /// proxy's `503`. `pushback` and `raw_headers` are still added. A value
    /// that is not a valid HTTP status (outside `100..=999`) becomes `500`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// With `http_status`: send this as the response body (an HTML error
    /// page, say), which is not a gRPC message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_body: Option<String>,
    /// With `http_status`: this `content-type` instead of `text/plain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Reset the HTTP/2 stream (`RST_STREAM`, error code `reset_reason`)
    /// instead of responding; with the default `INTERNAL_ERROR` tonic
    /// clients see `Code::Internal`. With `headers_first`, the response
    /// headers are sent first and the stream is reset afterwards (after
    /// `body_delay_ms`).
    #[serde(skip_serializing_if = "is_false")]
    pub reset: bool,
    /// HTTP/2 error code of the `reset`: default 2 (`INTERNAL_ERROR`);
    /// e.g. 7 (`REFUSED_STREAM`, tonic: `UNAVAILABLE`), 8 (`CANCEL`),
    /// 11 (`ENHANCE_YOUR_CALM`). Ignored unless `reset` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_reason: Option<u32>,
    /// Respond without reading the request body (the attempt records 0
    /// request bytes), so the response can arrive before the client has
    /// finished streaming. `Bidi` never waits for the request body anyway.
    #[serde(skip_serializing_if = "is_false")]
    pub early: bool,
    /// Sleep this long before doing anything else with the attempt: no
    /// request bytes are read and no response is sent meanwhile, so the
    /// request stream stalls once the HTTP/2 window is full.
    #[serde(skip_serializing_if = "is_zero")]
    pub stall_ms: u64,
    /// Sleep this long before reading each request message: a slow reader,
    /// whose stream the HTTP/2 window throttles.
    #[serde(skip_serializing_if = "is_zero")]
    pub read_delay_ms: u64,
    /// Read this many request messages (fewer if the request ends first),
    /// then respond at once with this action's status, Trailers-Only (or
    /// its reset), leaving the rest of the request unread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail_after_messages: Option<u32>,
}

impl Default for FaultAction {
    fn default() -> Self {
        Self {
            code: Code::Ok,
            message: String::new(),
            pushback: None,
            headers_first: false,
            delay_ms: 0,
            body_delay_ms: 0,
            retry_info_ms: None,
            retry_info_raw: None,
            raw_headers: Vec::new(),
            grpc_status_raw: None,
            http_status: None,
            http_body: None,
            content_type: None,
            reset: false,
            reset_reason: None,
            early: false,
            stall_ms: 0,
            read_delay_ms: 0,
            fail_after_messages: None,
        }
    }
}

impl FaultAction {
    /// The default action: a successful echo.
    pub fn ok() -> Self {
        Self::default()
    }

    /// An action answering with status `code` (an echo if `code` is OK).
    pub fn code(code: Code) -> Self {
        Self {
            code,
            ..Self::default()
        }
    }

    /// An action that resets the stream instead of responding.
    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::default()
        }
    }

    /// An action that resets the stream with HTTP/2 error code `reason`
    /// (e.g. 7, `REFUSED_STREAM`).
    pub fn reset_with(reason: u32) -> Self {
        Self {
            reset: true,
            reset_reason: Some(reason),
            ..Self::default()
        }
    }

    /// An action answering with HTTP `status` and no `grpc-status`.
    pub fn http_status(status: u16) -> Self {
        Self {
            http_status: Some(status),
            ..Self::default()
        }
    }

    /// With `http_status`: a response body, e.g. an HTML error page.
    pub fn http_body(mut self, body: impl Into<String>) -> Self {
        self.http_body = Some(body.into());
        self
    }

    /// With `http_status`: the response's `content-type`.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the status message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Sets the raw `grpc-retry-pushback-ms` value.
    pub fn pushback(mut self, value: impl Into<String>) -> Self {
        self.pushback = Some(value.into());
        self
    }

    /// Sends the response headers before the error status (see
    /// [`FaultAction::headers_first`](struct@FaultAction#structfield.headers_first)).
    pub fn headers_first(mut self) -> Self {
        self.headers_first = true;
        self
    }

    /// Sleeps `ms` milliseconds before responding.
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = ms;
        self
    }

    /// Sleeps `delay` (whole milliseconds) before responding.
    pub fn delay(self, delay: Duration) -> Self {
        self.delay_ms(duration_ms(delay))
    }

    /// Sleeps `ms` milliseconds after the response headers were sent.
    pub fn body_delay_ms(mut self, ms: u64) -> Self {
        self.body_delay_ms = ms;
        self
    }

    /// Attaches a `google.rpc.RetryInfo` detail with a delay of `ms`.
    pub fn retry_info_ms(mut self, ms: u64) -> Self {
        self.retry_info_ms = Some(ms);
        self
    }

    /// Attaches a `google.rpc.RetryInfo` detail whose delay is the raw,
    /// unchecked `seconds` and `nanos` (see
    /// [`FaultAction::retry_info_raw`](struct@FaultAction#structfield.retry_info_raw)).
    pub fn retry_info_raw(mut self, seconds: i64, nanos: i32) -> Self {
        self.retry_info_raw = Some((seconds, nanos));
        self
    }

    /// Appends a raw header to the status block.
    pub fn raw_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.raw_headers.push((name.into(), value.into()));
        self
    }

    /// Replaces the `grpc-status` value verbatim.
    pub fn grpc_status_raw(mut self, value: impl Into<String>) -> Self {
        self.grpc_status_raw = Some(value.into());
        self
    }

    /// Responds without reading the request body.
    pub fn early(mut self) -> Self {
        self.early = true;
        self
    }

    /// Stalls `ms` before reading or answering anything.
    pub fn stall_ms(mut self, ms: u64) -> Self {
        self.stall_ms = ms;
        self
    }

    /// Waits `ms` before reading each request message.
    pub fn read_delay_ms(mut self, ms: u64) -> Self {
        self.read_delay_ms = ms;
        self
    }

    /// Reads `messages` request messages, then answers with this action's
    /// status (Trailers-Only).
    pub fn fail_after_messages(mut self, messages: u32) -> Self {
        self.fail_after_messages = Some(messages);
        self
    }

    /// Whether this action produces a normal echo (status OK, no reset, no
    /// bare HTTP status).
    pub(crate) fn is_echo(&self) -> bool {
        self.code == Code::Ok && !self.reset && self.http_status.is_none()
    }
}

/// Serializes a script into the value of the `x-fault` header: a JSON
/// array of [`FaultAction`]s, fields at their defaults left out, any
/// character outside printable ASCII escaped as `\uXXXX` so the result is
/// always a valid header value.
pub fn fault_header(actions: &[FaultAction]) -> String {
    let json = serde_json::to_string(actions).unwrap_or_else(|_| String::from("[]"));
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Parses an `x-fault` header value. Empty (or whitespace) means "no script".
pub(crate) fn parse_script(value: &[u8]) -> Result<Vec<FaultAction>, String> {
    let text = std::str::from_utf8(value).map_err(|e| format!("x-fault is not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| format!("invalid x-fault header: {e}"))
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn is_ok(code: &Code) -> bool {
    *code == Code::Ok
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

mod code_as_int {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use tonic::Code;

    pub(super) fn serialize<S: Serializer>(code: &Code, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(*code as i32)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Code, D::Error> {
        let n = i64::deserialize(d)?;
        if (0..=16).contains(&n) {
            // In range, so the cast is lossless.
            Ok(Code::from_i32(n as i32))
        } else {
            Err(D::Error::custom(format!(
                "status code {n} out of range 0..=16 (use grpc_status_raw for other values)"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_serializes_empty() {
        assert_eq!(fault_header(&[FaultAction::ok()]), "[{}]");
    }

    #[test]
    fn round_trip() {
        let actions = vec![
            FaultAction::code(Code::Unavailable)
                .pushback("100")
                .raw_header("x-a", "b")
                .retry_info_ms(5),
            FaultAction::reset().headers_first().early().delay_ms(3),
            FaultAction::reset_with(7),
            FaultAction::code(Code::Unavailable).retry_info_raw(i64::MAX, -1),
            FaultAction::http_status(503)
                .grpc_status_raw("abc")
                .message("é"),
        ];
        let header = fault_header(&actions);
        assert!(header.is_ascii());
        assert!(header.starts_with(
            r#"[{"code":14,"pushback":"100","retry_info_ms":5,"raw_headers":[["x-a","b"]]}"#
        ));
        assert_eq!(parse_script(header.as_bytes()).unwrap(), actions);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse_script(br#"[{"code":17}]"#).is_err());
        assert!(parse_script(br#"[{"code":-1}]"#).is_err());
        assert!(parse_script(br#"[{"bogus":1}]"#).is_err());
        assert!(parse_script(b"{").is_err());
        assert!(parse_script(b"\xff").is_err());
        assert_eq!(parse_script(b"").unwrap(), vec![]);
        assert_eq!(parse_script(b"[]").unwrap(), vec![]);
    }
}
