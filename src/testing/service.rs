//! The hand-written, scripted `retry.test.v1.Echo` service.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use prost::Message as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Status;
use tonic::body::Body;
use tonic_types::{ErrorDetails, StatusExt as _};

use super::body::{BidiBody, BidiState, ScriptedBody, Step};
use super::capacity::Capacity;
use super::fault::{CALL_ID_HEADER, FAULT_HEADER, FaultAction, parse_script};
use super::frame::{FrameDecoder, FrameError, encode_frame};
use super::proto::{EchoRequest, EchoResponse};
use super::record::{AttemptGuard, AttemptRecord, Record, ResetStream, lock};
use crate::deadline::parse_grpc_timeout;

const GRPC_CONTENT_TYPE: &str = "application/grpc";
const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// Number of responses `ServerStream` sends on success.
pub const SERVER_STREAM_RESPONSES: usize = 3;

#[derive(Default)]
struct Calls {
    by_id: HashMap<String, Vec<Record>>,
    in_order: Vec<Record>,
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Calls>,
    arrivals: Notify,
}

/// The scripted echo service: a `tower::Service` over raw
/// `http::Request<tonic::body::Body>`, so it controls every header.
///
/// [`TestServer`](super::TestServer) serves it over TCP; it can also be
/// called in-process as a tower service (then `grpc-timeout` is recorded but
/// not enforced, and [`ResetStream`] surfaces as the service error).
/// Clones share their records.
///
/// It cannot be mounted in a tonic `Router`, which requires an infallible
/// service: its error type is [`ResetStream`].
#[derive(Clone, Default)]
pub struct EchoService {
    shared: Arc<Shared>,
    /// Limits how much work is done at once; `None` serves every attempt
    /// at once.
    capacity: Option<Capacity>,
}

impl fmt::Debug for EchoService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EchoService")
            .field("total_attempts", &self.total_attempts())
            .finish()
    }
}

impl EchoService {
    /// A service with no recorded attempts.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same service (its records shared) with a capacity model: every
    /// attempt first waits for a worker (see [`Capacity`]).
    pub fn with_capacity(mut self, capacity: Capacity) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// The capacity model, if any.
    pub fn capacity(&self) -> Option<&Capacity> {
        self.capacity.as_ref()
    }

    /// Snapshots of the attempts of call `call_id`, in arrival order.
    pub fn attempts(&self, call_id: &str) -> Vec<AttemptRecord> {
        let calls = lock(&self.shared.calls);
        calls
            .by_id
            .get(call_id)
            .map(|records| records.iter().map(|r| lock(r).clone()).collect())
            .unwrap_or_default()
    }

    /// Snapshots of all attempts of all calls, in arrival order.
    pub fn all_attempts(&self) -> Vec<AttemptRecord> {
        let calls = lock(&self.shared.calls);
        calls.in_order.iter().map(|r| lock(r).clone()).collect()
    }

    /// Number of attempts received, all calls together.
    pub fn total_attempts(&self) -> usize {
        lock(&self.shared.calls).in_order.len()
    }

    /// Waits until call `call_id` has at least `n` attempts (no timeout of
    /// its own: wrap it in `tokio::time::timeout`).
    pub async fn wait_for_attempts(&self, call_id: &str, n: usize) {
        loop {
            let notified = self.shared.arrivals.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let have = lock(&self.shared.calls)
                .by_id
                .get(call_id)
                .map_or(0, Vec::len);
            if have >= n {
                return;
            }
            notified.await;
        }
    }

    /// Records a new attempt and picks its action.
    fn register(
        &self,
        call_id: Option<String>,
        method: String,
        headers: &HeaderMap,
        script: &Result<Vec<FaultAction>, String>,
    ) -> (Record, usize, Option<FaultAction>) {
        let raw = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let grpc_timeout = raw("grpc-timeout");
        let grpc_timeout_parsed = grpc_timeout
            .as_deref()
            .and_then(|t| parse_grpc_timeout(t.as_bytes()));
        let mut calls = lock(&self.shared.calls);
        // Without a call id every request is a call of its own (attempt 0),
        // recorded under "".
        let counted = call_id.is_some();
        let call_id = call_id.unwrap_or_default();
        let attempts = calls.by_id.entry(call_id.clone()).or_default();
        let attempt = if counted { attempts.len() } else { 0 };
        let action = match script {
            Ok(actions) => Some(
                actions
                    .get(attempt.min(actions.len().saturating_sub(1)))
                    .cloned()
                    .unwrap_or_default(),
            ),
            Err(_) => None,
        };
        let record = Arc::new(Mutex::new(AttemptRecord {
            call_id,
            attempt,
            method,
            arrived: Instant::now(),
            previous_rpc_attempts: raw("grpc-previous-rpc-attempts"),
            grpc_timeout,
            grpc_timeout_parsed,
            request_bytes: 0,
            request_messages: 0,
            completed: false,
            cancelled: false,
            action: action.clone(),
            headers: headers.clone(),
        }));
        attempts.push(record.clone());
        calls.in_order.push(record.clone());
        drop(calls);
        self.shared.arrivals.notify_waiters();
        (record, attempt, action)
    }
}

impl tonic::server::NamedService for EchoService {
    const NAME: &'static str = "retry.test.v1.Echo";
}

impl tower_service::Service<Request<Body>> for EchoService {
    type Response = Response<Body>;
    type Error = ResetStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ResetStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        Box::pin(handle(self.clone(), req))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Unary,
    ClientStream,
    ServerStream,
    Bidi,
}

impl Method {
    fn from_path(path: &str) -> Option<Method> {
        match path.strip_prefix("/retry.test.v1.Echo/")? {
            "Unary" => Some(Method::Unary),
            "ClientStream" => Some(Method::ClientStream),
            "ServerStream" => Some(Method::ServerStream),
            "Bidi" => Some(Method::Bidi),
            _ => None,
        }
    }
}

async fn handle(service: EchoService, req: Request<Body>) -> Result<Response<Body>, ResetStream> {
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let call_id = parts
        .headers
        .get(CALL_ID_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let script = match parts.headers.get(FAULT_HEADER) {
        Some(v) => parse_script(v.as_bytes()),
        None => Ok(Vec::new()),
    };
    let (record, attempt, action) =
        service.register(call_id, path.clone(), &parts.headers, &script);
    let guard = AttemptGuard {
        record,
        done: false,
    };

    let action = match script {
        Ok(_) => action.unwrap_or_default(),
        Err(message) => {
            guard.complete();
            return Ok(trailers_only(&Status::invalid_argument(message)));
        }
    };
    let Some(method) = Method::from_path(&path) else {
        guard.complete();
        return Ok(trailers_only(&Status::unimplemented(format!(
            "test server has no method {path}"
        ))));
    };

    if let Some(capacity) = &service.capacity
        && let Err(status) = capacity.work().await
    {
        guard.complete();
        return Ok(trailers_only(&status));
    }
    sleep_ms(action.stall_ms).await;
    let read_delay = Duration::from_millis(action.read_delay_ms);
    if let Some(limit) = action.fail_after_messages {
        // Reads part of the request, then fails before any response header.
        let _ = read_messages(&mut body, &guard, Some(limit), read_delay).await;
        sleep_ms(action.delay_ms).await;
        return respond_fault(&action, guard);
    }

    let streamed = method == Method::Bidi
        || (action.headers_first
            && action.is_echo()
            && !action.early
            && method != Method::ServerStream);
    if streamed {
        sleep_ms(action.delay_ms).await;
        if !action.is_echo() {
            return respond_fault(&action, guard);
        }
        // Bidi answers each message; the others answer once, at the end.
        let collected = (method != Method::Bidi).then(|| EchoResponse {
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            ..EchoResponse::default()
        });
        let body = BidiBody {
            request: body,
            decoder: FrameDecoder::default(),
            attempt,
            state: BidiState::Reading,
            trailers: Some(status_block(&action)),
            body_delay: Duration::from_millis(action.body_delay_ms),
            read_delay,
            sleep: None,
            read_sleep: None,
            collected,
            guard: Some(guard),
        };
        return Ok(with_headers(Body::new(body)));
    }

    let mut messages = Vec::new();
    if !action.early {
        match read_messages(&mut body, &guard, None, read_delay).await {
            Ok(m) => messages = m,
            Err(status) => {
                guard.complete();
                return Ok(trailers_only(&status));
            }
        }
    }
    sleep_ms(action.delay_ms).await;
    if !action.is_echo() {
        return respond_fault(&action, guard);
    }

    let mut response = EchoResponse {
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        ..EchoResponse::default()
    };
    for msg in &messages {
        let request = match EchoRequest::decode(msg.clone()) {
            Ok(r) => r,
            Err(e) => {
                guard.complete();
                return Ok(trailers_only(&Status::internal(format!(
                    "test server could not decode EchoRequest: {e}"
                ))));
            }
        };
        response.payload.extend_from_slice(&request.payload);
        response.text.push_str(&request.text);
        response.request_bytes = response
            .request_bytes
            .saturating_add(u64::try_from(msg.len()).unwrap_or(u64::MAX));
        response.request_messages = response.request_messages.saturating_add(1);
    }
    let frame = encode_frame(&response);
    let pause = Step::Sleep(Duration::from_millis(action.body_delay_ms));
    let mut steps = VecDeque::new();
    if method == Method::ServerStream {
        steps.push_back(Step::Data(frame.clone()));
        steps.push_back(pause);
        for _ in 1..SERVER_STREAM_RESPONSES {
            steps.push_back(Step::Data(frame.clone()));
        }
    } else {
        steps.push_back(pause);
        steps.push_back(Step::Data(frame));
    }
    steps.push_back(Step::Trailers(status_block(&action)));
    Ok(with_headers(Body::new(ScriptedBody::new(steps, guard))))
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

/// Reads the request body (to its end, or up to `limit` messages),
/// recording messages as they arrive, waiting `read_delay` before each.
async fn read_messages(
    body: &mut Body,
    guard: &AttemptGuard,
    limit: Option<u32>,
    read_delay: Duration,
) -> Result<Vec<Bytes>, Status> {
    let mut decoder = FrameDecoder::default();
    let mut messages = Vec::new();
    let limit = limit.map_or(usize::MAX, |n| n as usize);
    loop {
        if messages.len() >= limit {
            return Ok(messages);
        }
        if !read_delay.is_zero() {
            tokio::time::sleep(read_delay).await;
        }
        if let Some(msg) = decoder.next_message().map_err(FrameError::into_status)? {
            guard.add_message(msg.len());
            messages.push(msg);
            continue;
        }
        match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    decoder.push(&data);
                    // Messages are taken one at a time above, each after
                    // its read delay.
                }
            }
            Some(Err(e)) => {
                return Err(Status::cancelled(format!("request body failed: {e}")));
            }
            None => break,
        }
    }
    if decoder.has_partial() {
        return Err(Status::internal("request ended inside a gRPC frame"));
    }
    Ok(messages)
}

/// Responds to a non-echo action (error status, bare HTTP status or reset).
fn respond_fault(action: &FaultAction, guard: AttemptGuard) -> Result<Response<Body>, ResetStream> {
    if action.reset {
        if action.headers_first {
            let steps = VecDeque::from([
                Step::Sleep(Duration::from_millis(action.body_delay_ms)),
                Step::Reset(reset_reason(action)),
            ]);
            return Ok(with_headers(Body::new(ScriptedBody::new(steps, guard))));
        }
        guard.complete();
        return Err(ResetStream::new(reset_reason(action)));
    }
    if let Some(code) = action.http_status {
        let body = match &action.http_body {
            Some(text) => Body::new(http_body_util::Full::new(Bytes::from(text.clone()))),
            None => Body::empty(),
        };
        let mut response = Response::new(body);
        *response.status_mut() =
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        let content_type = action
            .content_type
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
            .unwrap_or(HeaderValue::from_static("text/plain"));
        headers.insert(CONTENT_TYPE, content_type);
        append_extra(headers, action);
        guard.complete();
        return Ok(response);
    }
    let block = status_block(action);
    if action.headers_first {
        let steps = VecDeque::from([
            Step::Sleep(Duration::from_millis(action.body_delay_ms)),
            Step::Trailers(block),
        ]);
        return Ok(with_headers(Body::new(ScriptedBody::new(steps, guard))));
    }
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    for (name, value) in &block {
        response.headers_mut().append(name, value.clone());
    }
    guard.complete();
    Ok(response)
}

/// HTTP/2 `INTERNAL_ERROR`.
const INTERNAL_ERROR: u32 = 2;

fn reset_reason(action: &FaultAction) -> u32 {
    action.reset_reason.unwrap_or(INTERNAL_ERROR)
}

/// A Trailers-Only response carrying `status`.
fn trailers_only(status: &Status) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    if status.add_header(response.headers_mut()).is_err() {
        response
            .headers_mut()
            .insert("grpc-status", HeaderValue::from(status.code() as i32));
    }
    response
}

/// HTTP 200 `application/grpc` headers with `body` to follow.
fn with_headers(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    response
}

/// The status headers of `action`: `grpc-status`, `grpc-message`,
/// `grpc-status-details-bin`, then `grpc_status_raw`, `pushback` and
/// `raw_headers` applied in that order.
fn status_block(action: &FaultAction) -> HeaderMap {
    let status = match (action.retry_info_raw, action.retry_info_ms) {
        (Some((seconds, nanos)), _) => Status::with_details(
            action.code,
            action.message.clone(),
            raw_retry_info_details(action, seconds, nanos),
        ),
        (None, Some(ms)) => Status::with_error_details(
            action.code,
            action.message.clone(),
            ErrorDetails::with_retry_info(Some(Duration::from_millis(ms))),
        ),
        (None, None) => Status::new(action.code, action.message.clone()),
    };
    let mut headers = HeaderMap::new();
    if status.add_header(&mut headers).is_err() {
        headers.insert("grpc-status", HeaderValue::from(action.code as i32));
    }
    if let Some(raw) = &action.grpc_status_raw
        && let Ok(value) = HeaderValue::from_str(raw)
    {
        headers.insert("grpc-status", value);
    }
    append_extra(&mut headers, action);
    headers
}

/// An encoded `google.rpc.Status` whose one detail is a `RetryInfo` of
/// exactly `seconds` and `nanos`. Built field by field: `ErrorDetails` takes
/// a `std::time::Duration`, which cannot hold a negative or over-long delay.
fn raw_retry_info_details(action: &FaultAction, seconds: i64, nanos: i32) -> Bytes {
    let mut info = tonic_types::pb::RetryInfo {
        retry_delay: Some(Default::default()),
    };
    if let Some(delay) = info.retry_delay.as_mut() {
        delay.seconds = seconds;
        delay.nanos = nanos;
    }
    let mut status = tonic_types::pb::Status {
        code: action.code as i32,
        message: action.message.clone(),
        details: vec![Default::default()],
    };
    status.details[0].type_url = "type.googleapis.com/google.rpc.RetryInfo".into();
    status.details[0].value = info.encode_to_vec();
    Bytes::from(status.encode_to_vec())
}

/// Appends `pushback` and `raw_headers`, skipping invalid ones.
fn append_extra(headers: &mut HeaderMap, action: &FaultAction) {
    if let Some(pushback) = &action.pushback
        && let Ok(value) = HeaderValue::from_str(pushback)
    {
        headers.append(PUSHBACK_HEADER, value);
    }
    for (name, value) in &action.raw_headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}
