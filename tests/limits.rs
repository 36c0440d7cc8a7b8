//! No server can crash, stall or miscount the client, and no setting can
//! make it panic: server-chosen delays are bounded, every duration a
//! builder accepts is safe, the retry budget pays only for attempts that
//! are sent, a failed readiness check never reuses its service, and a
//! stream refused twice surfaces UNAVAILABLE.
//!
//! The server-facing rules run against the real scripted test server over
//! loopback; the pure-logic ones against in-memory inner services under
//! tokio's paused clock.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_retry::testing::proto::EchoClient;
use tonic_retry::testing::{FaultAction, TestServer};
use tonic_retry::{
    BoxError, BreakerConfig, CircuitBreakerLayer, CodeSet, HedgingPolicy, Jitter, RetryBudget,
    RetryLayer, RetryPolicy, RetryThrottle, ServiceConfig,
};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

// ---------------------------------------------------------------------------
// Server-chosen delays, through the real test server.

/// "Promptly": far below any delay the server asks for, and well under a
/// second on a loaded two-core machine.
const PROMPT: Duration = Duration::from_millis(500);

/// A test that would otherwise hang on a stalled call fails after this.
const STALL_LIMIT: Duration = Duration::from_secs(5);

/// Calls once with `first` scripted for the first attempt (an OK echo
/// after it, so a retry would succeed), optionally with a call deadline.
/// Returns the status, how long the call took, and the attempts the
/// server saw.
async fn call_after(
    first: FaultAction,
    deadline: Option<Duration>,
    policy: RetryPolicy,
) -> (Status, Duration, usize) {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, policy).await;
    let mut request = scripted("c", &[first, FaultAction::ok()]);
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    let start = std::time::Instant::now();
    let result = tokio::time::timeout(STALL_LIMIT, client.unary(request))
        .await
        .expect("the call must not stall on a server-chosen delay");
    let elapsed = start.elapsed();
    let status = result.expect_err("the failure is surfaced, not retried");
    (status, elapsed, server.attempts("c").len())
}

fn unavailable_with_retry_info(seconds: i64) -> FaultAction {
    FaultAction::code(Code::Unavailable)
        .message("come-back-later")
        .retry_info_raw(seconds, 0)
}

/// Without a deadline, a server delay above the ceiling surfaces the
/// server's own status at once.
async fn surfaces_the_server_status_at_once(first: FaultAction) {
    let (status, elapsed, attempts) = call_after(first, None, fast_policy().build().unwrap()).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "come-back-later");
    assert!(elapsed < PROMPT, "took {elapsed:?}");
    assert_eq!(attempts, 1, "no retry after a delay above the ceiling");
}

/// With a deadline shorter than the delay, the deadline wins, as for any
/// backoff: DEADLINE_EXCEEDED at once, naming the server's status.
async fn surfaces_deadline_exceeded_at_once(first: FaultAction) {
    let (status, elapsed, attempts) = call_after(
        first,
        Some(Duration::from_secs(10)),
        fast_policy().build().unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("UNAVAILABLE: come-back-later"),
        "{}",
        status.message()
    );
    assert!(elapsed < PROMPT, "took {elapsed:?}");
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn retry_info_of_i64_max_seconds_surfaces_at_once_without_panic() {
    surfaces_the_server_status_at_once(unavailable_with_retry_info(i64::MAX)).await;
}

#[tokio::test]
async fn retry_info_of_i64_max_seconds_under_a_deadline_is_deadline_exceeded_at_once() {
    surfaces_deadline_exceeded_at_once(unavailable_with_retry_info(i64::MAX)).await;
}

#[tokio::test]
async fn retry_info_of_a_trillion_seconds_surfaces_at_once() {
    surfaces_the_server_status_at_once(unavailable_with_retry_info(1_000_000_000_000)).await;
}

#[tokio::test]
async fn retry_info_of_a_trillion_seconds_under_a_deadline_is_deadline_exceeded_at_once() {
    surfaces_deadline_exceeded_at_once(unavailable_with_retry_info(1_000_000_000_000)).await;
}

#[tokio::test]
async fn retry_info_of_an_hour_surfaces_at_once() {
    surfaces_the_server_status_at_once(unavailable_with_retry_info(3_600)).await;
}

#[tokio::test]
async fn retry_info_of_an_hour_under_a_shorter_deadline_is_deadline_exceeded_at_once() {
    surfaces_deadline_exceeded_at_once(unavailable_with_retry_info(3_600)).await;
}

#[tokio::test]
async fn retry_info_of_an_hour_under_a_longer_deadline_surfaces_the_server_status_at_once() {
    // The deadline (two hours) would not pass: the ceiling decides.
    let (status, elapsed, attempts) = call_after(
        unavailable_with_retry_info(3_600),
        Some(Duration::from_secs(7_200)),
        fast_policy().build().unwrap(),
    )
    .await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(elapsed < PROMPT, "took {elapsed:?}");
    assert_eq!(attempts, 1);
}

fn unavailable_with_max_pushback() -> FaultAction {
    FaultAction::code(Code::Unavailable)
        .message("come-back-later")
        .pushback("2147483647")
}

#[tokio::test]
async fn pushback_of_i32_max_ms_surfaces_at_once() {
    surfaces_the_server_status_at_once(unavailable_with_max_pushback()).await;
}

#[tokio::test]
async fn pushback_of_i32_max_ms_under_a_deadline_is_deadline_exceeded_at_once() {
    surfaces_deadline_exceeded_at_once(unavailable_with_max_pushback()).await;
}

#[tokio::test]
async fn server_delays_up_to_max_server_delay_are_honoured_and_longer_ones_surfaced() {
    let policy = || {
        fast_policy()
            .max_server_delay(Duration::from_millis(200))
            .build()
            .unwrap()
    };
    assert_eq!(policy().max_server_delay(), Duration::from_millis(200));
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, policy()).await;

    let within = FaultAction::code(Code::Unavailable).retry_info_raw(0, 50_000_000);
    let start = std::time::Instant::now();
    let response = client
        .unary(scripted("within", &[within, FaultAction::ok()]))
        .await
        .expect("a 50 ms RetryInfo under a 200 ms ceiling is waited for");
    assert_eq!(response.get_ref().attempt, 1);
    assert!(start.elapsed() >= Duration::from_millis(50));

    for (id, above) in [
        (
            "retry-info",
            FaultAction::code(Code::Unavailable).retry_info_raw(0, 300_000_000),
        ),
        (
            "pushback",
            FaultAction::code(Code::Unavailable).pushback("300"),
        ),
    ] {
        let start = std::time::Instant::now();
        let status = client
            .unary(scripted(id, &[above, FaultAction::ok()]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{id}");
        assert!(start.elapsed() < Duration::from_millis(300), "{id}");
        assert_eq!(server.attempts(id).len(), 1, "{id}");
    }
}

#[tokio::test]
async fn hedging_pushback_above_max_server_delay_stops_further_hedges() {
    let server = TestServer::start().await.unwrap();
    let layer = RetryLayer::hedging(HedgingPolicy {
        max_attempts: 3,
        // Only the pushback could schedule the next hedge.
        hedging_delay: Duration::from_secs(3_600),
        non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
        per_attempt_timeout: None,
    });
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(channel(&server).await),
    );
    let start = std::time::Instant::now();
    let script = [unavailable_with_max_pushback(), FaultAction::ok()];
    let status = tokio::time::timeout(STALL_LIMIT, client.unary(scripted("h", &script)))
        .await
        .expect("the hedged call must not wait 24 days for its next hedge")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    assert_eq!(server.attempts("h").len(), 1, "no further hedge");
}

// ---------------------------------------------------------------------------
// In-memory inner services, for the pure-logic rules.

fn request() -> http::Request<Body> {
    http::Request::builder()
        .uri("http://test/pkg.Svc/Method")
        .body(Body::empty())
        .unwrap()
}

fn request_with_timeout(grpc_timeout: &'static str) -> http::Request<Body> {
    let mut request = request();
    request
        .headers_mut()
        .insert("grpc-timeout", http::HeaderValue::from_static(grpc_timeout));
    request
}

fn trailers_only(code: Code, extra: Option<(&'static str, &'static str)>) -> http::Response<Body> {
    let mut response = http::Response::builder()
        .header("grpc-status", (code as i32).to_string())
        .header("grpc-message", "scripted");
    if let Some((name, value)) = extra {
        response = response.header(name, value);
    }
    response.body(Body::empty()).unwrap()
}

/// An inner service answering every attempt with `code` (and `extra`
/// header) after `delay`, counting the attempts.
fn scripted_service(
    code: Code,
    extra: Option<(&'static str, &'static str)>,
    delay: Duration,
) -> (
    impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let attempts = Arc::new(AtomicUsize::new(0));
    let count = attempts.clone();
    let service = tower::service_fn(move |_: http::Request<Body>| {
        count.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(trailers_only(code, extra))
        }
    });
    (service, attempts)
}

fn status_of(error: BoxError) -> Status {
    *error
        .downcast::<Status>()
        .expect("the layer's errors are Status")
}

// ---------------------------------------------------------------------------
// Every duration setting at its extreme.

#[test]
fn every_duration_setting_accepts_duration_max_or_rejects_it_with_a_typed_error() {
    let policy = RetryPolicy::builder()
        .initial_backoff(Duration::MAX)
        .max_backoff(Duration::MAX)
        .per_attempt_timeout(Duration::MAX)
        .timeout(Duration::MAX)
        .max_server_delay(Duration::MAX)
        .build()
        .expect("every duration of a policy may be Duration::MAX");
    assert_eq!(policy.max_backoff(), Duration::MAX);
    let err = RetryBudget::new(Duration::MAX, 1, 0.1).unwrap_err();
    assert_eq!(err.setting(), "ttl");
    let breaker = BreakerConfig::builder()
        .window(Duration::MAX)
        .break_duration(Duration::MAX)
        .build()
        .expect("the breaker's durations may be Duration::MAX");
    assert_eq!(breaker.break_duration(), Duration::MAX);
}

fn policy_of_maximal_durations() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_backoff(Duration::MAX)
        .max_backoff(Duration::MAX)
        .per_attempt_timeout(Duration::MAX)
        .timeout(Duration::MAX)
        .max_server_delay(Duration::MAX)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_backoff_of_duration_max_under_a_deadline_is_deadline_exceeded_at_once() {
    let (inner, attempts) = scripted_service(Code::Unavailable, None, Duration::ZERO);
    let svc = RetryLayer::new(policy_of_maximal_durations()).layer(inner);
    let start = tokio::time::Instant::now();
    let status = status_of(
        svc.oneshot(request_with_timeout("1S"))
            .await
            .expect_err("the backoff would pass the deadline"),
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(tokio::time::Instant::now(), start, "at once");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_backoff_of_duration_max_without_a_deadline_waits_without_panic() {
    let (inner, attempts) = scripted_service(Code::Unavailable, None, Duration::ZERO);
    let svc = RetryLayer::new(policy_of_maximal_durations()).layer(inner);
    let call = tokio::spawn(svc.oneshot(request()));
    // A thousand years of virtual time: the wait is "never", not a panic.
    tokio::time::sleep(Duration::from_secs(1_000 * 365 * 24 * 3600)).await;
    assert!(!call.is_finished(), "still waiting for its backoff");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled(), "it never panicked");
}

#[tokio::test]
async fn retry_info_of_i64_max_seconds_under_a_ceiling_of_duration_max_ends_at_the_deadline() {
    // The ceiling lets any server delay through, so the wait is "never"
    // (not an overflow), and the call's deadline ends it at once.
    let policy = fast_policy()
        .max_server_delay(Duration::MAX)
        .build()
        .unwrap();
    let (status, elapsed, attempts) = call_after(
        unavailable_with_retry_info(i64::MAX),
        Some(Duration::from_secs(10)),
        policy,
    )
    .await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed < PROMPT, "took {elapsed:?}");
    assert_eq!(attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedging_delay_of_duration_max_sends_no_timed_hedge_and_never_panics() {
    let layer = RetryLayer::hedging(HedgingPolicy {
        max_attempts: 3,
        hedging_delay: Duration::MAX,
        non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
        per_attempt_timeout: None,
    });
    // A slow OK: no timed hedge joins it.
    let (inner, attempts) = scripted_service(Code::Ok, None, Duration::from_secs(60));
    let response = layer.layer(inner).oneshot(request()).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    // Non-fatal failures still send the next hedge at once.
    let (inner, attempts) = scripted_service(Code::Unavailable, None, Duration::ZERO);
    let response = layer.layer(inner).oneshot(request()).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_open_for_duration_max_fails_fast_without_panic() {
    let config = BreakerConfig::builder()
        .window(Duration::MAX)
        .break_duration(Duration::MAX)
        .minimum_calls(1)
        .failure_ratio(1.0)
        .build()
        .unwrap();
    let (inner, attempts) = scripted_service(Code::Unavailable, None, Duration::ZERO);
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(config))
        .service(inner);
    let first = svc.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.headers()["grpc-status"], "14");
    tokio::time::sleep(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    let refused = svc.oneshot(request()).await.unwrap_err();
    let status = status_of(refused);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "the open breaker sent nothing"
    );
}

// ---------------------------------------------------------------------------
// The retry budget pays only for attempts that are sent.

fn small_budget() -> RetryBudget {
    // A floor of 1 retry/s over 10 s, nothing per request: 10 retries.
    RetryBudget::new(Duration::from_secs(10), 1, 0.0).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_retry_abandoned_because_the_backoff_would_pass_the_deadline_spends_no_budget() {
    let budget = small_budget();
    assert_eq!(budget.remaining(), 10);
    let policy = RetryPolicy::builder()
        .initial_backoff(Duration::from_secs(1))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let layer = RetryLayer::builder(policy).budget(budget.clone()).build();
    let (inner, attempts) = scripted_service(Code::Unavailable, None, Duration::ZERO);
    let status = status_of(
        layer
            .layer(inner)
            .oneshot(request_with_timeout("100m"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        budget.remaining(),
        10,
        "no retry was sent, none was paid for"
    );

    // The control: retries that are sent are paid for, one each.
    let (inner, attempts) = scripted_service(Code::Unavailable, None, Duration::ZERO);
    let status = status_of(
        layer
            .layer(inner)
            .oneshot(request_with_timeout("2500m"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::DeadlineExceeded);
    // Backoffs of 1 s (max_backoff): attempts at 0, 1 and 2 s; the next
    // would start at 3 s, past the 2.5 s deadline.
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(budget.remaining(), 8, "two retries sent, two paid for");
}

#[tokio::test(start_paused = true)]
async fn a_retry_refused_for_a_server_delay_above_the_ceiling_spends_no_budget() {
    let budget = small_budget();
    let layer = RetryLayer::builder(RetryPolicy::default())
        .budget(budget.clone())
        .build();
    let (inner, attempts) = scripted_service(
        Code::Unavailable,
        Some(("grpc-retry-pushback-ms", "60000")),
        Duration::ZERO,
    );
    let start = tokio::time::Instant::now();
    let response = layer.layer(inner).oneshot(request()).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    // At once: the budget's 10 s window still holds anything drawn.
    assert_eq!(tokio::time::Instant::now(), start);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(budget.remaining(), 10);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_not_sent_because_the_deadline_would_pass_spends_no_budget() {
    let budget = small_budget();
    let hedging = |delay| HedgingPolicy {
        max_attempts: 3,
        hedging_delay: delay,
        non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
        per_attempt_timeout: None,
    };

    // The next hedge is due after the deadline, with the first still in
    // flight.
    let layer = RetryLayer::hedging_builder(hedging(Duration::from_millis(200)))
        .budget(budget.clone())
        .build();
    let (inner, attempts) = scripted_service(Code::Ok, None, Duration::from_secs(10));
    let status = status_of(
        layer
            .layer(inner)
            .oneshot(request_with_timeout("100m"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(budget.remaining(), 10);

    // Nothing in flight, and the server pushes the next hedge past the
    // deadline.
    let layer = RetryLayer::hedging_builder(hedging(Duration::from_secs(3_600)))
        .budget(budget.clone())
        .build();
    let (inner, attempts) = scripted_service(
        Code::Unavailable,
        Some(("grpc-retry-pushback-ms", "500")),
        Duration::ZERO,
    );
    let status = status_of(
        layer
            .layer(inner)
            .oneshot(request_with_timeout("100m"))
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(budget.remaining(), 10);
}

// ---------------------------------------------------------------------------
// Readiness errors.

/// What happened to which instance of [`Flaky`].
#[derive(Default)]
struct Instances {
    next_id: AtomicUsize,
    events: Mutex<Vec<(usize, &'static str)>>,
}

/// An inner service whose original instance (id 0) fails its first
/// readiness check with `fail_ready`; every clone is a new instance, always
/// ready, answering OK.
struct Flaky {
    id: usize,
    fail_ready: Option<Status>,
    log: Arc<Instances>,
}

impl Flaky {
    fn new(fail_ready: Status) -> (Flaky, Arc<Instances>) {
        let log = Arc::new(Instances::default());
        log.next_id.store(1, Ordering::SeqCst);
        let flaky = Flaky {
            id: 0,
            fail_ready: Some(fail_ready),
            log: log.clone(),
        };
        (flaky, log)
    }

    fn record(&self, what: &'static str) {
        self.log.events.lock().unwrap().push((self.id, what));
    }
}

impl Clone for Flaky {
    fn clone(&self) -> Self {
        Flaky {
            id: self.log.next_id.fetch_add(1, Ordering::SeqCst),
            fail_ready: None,
            log: self.log.clone(),
        }
    }
}

impl Service<http::Request<Body>> for Flaky {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.record("poll_ready");
        match self.fail_ready.take() {
            Some(status) => Poll::Ready(Err(Box::new(status))),
            None => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, _: http::Request<Body>) -> Self::Future {
        self.record("call");
        std::future::ready(Ok(trailers_only(Code::Ok, None)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_is_retried_on_a_fresh_clone_and_the_failed_instance_is_never_used_again()
{
    let (inner, log) = Flaky::new(Status::unavailable("connection refused"));
    let mut svc = RetryLayer::new(RetryPolicy::default()).layer(inner);
    for call in 0..2 {
        let response = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "0", "call {call}");
        if call == 0 {
            assert_eq!(
                response.headers()["grpc-previous-rpc-attempts"],
                "1",
                "the readiness failure was attempt 1"
            );
        }
    }
    let events = log.events.lock().unwrap().clone();
    let of_failed: Vec<_> = events.iter().filter(|(id, _)| *id == 0).collect();
    assert_eq!(
        of_failed,
        [&(0, "poll_ready")],
        "the failed instance is never polled or called again: {events:?}"
    );
    assert_eq!(
        events.iter().filter(|(_, what)| *what == "call").count(),
        2,
        "each call was answered once, on other instances: {events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_non_retryable_readiness_error_surfaces_its_own_status() {
    let (inner, log) = Flaky::new(Status::permission_denied("no credentials"));
    let mut svc = RetryLayer::new(RetryPolicy::default()).layer(inner);
    let error = svc
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap_err();
    let status = status_of(error);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "no credentials");
    let events = log.events.lock().unwrap().clone();
    assert!(
        events.iter().all(|(_, what)| *what != "call"),
        "nothing was sent: {events:?}"
    );
}

// ---------------------------------------------------------------------------
// A stream refused twice.

#[tokio::test]
async fn a_stream_refused_twice_with_refused_stream_surfaces_unavailable() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy().max_attempts(1).build().unwrap();
    let mut client = client(&server, policy).await;
    let status = client
        .unary(scripted("c", &[FaultAction::reset_with(7)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        server.attempts("c").len(),
        2,
        "one transparent retry, then the refusal surfaces"
    );
}

/// A bare HTTP/2 server that refuses every stream with a graceful `GOAWAY`
/// (`NO_ERROR`, last stream id 0: no stream was processed), as a server
/// that is shutting down does. Returns its URI and the number of request
/// streams it has refused.
async fn goaway_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    let refused = Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(refuse_every_stream(socket, count.clone()));
        }
    });
    (uri, refused)
}

/// One HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

async fn refuse_every_stream(
    mut socket: TcpStream,
    refused: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut preface = [0; 24];
    socket.read_exact(&mut preface).await?;
    socket.write_all(&frame(SETTINGS, 0, &[])).await?;
    loop {
        let mut head = [0; 9];
        socket.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        socket.read_exact(&mut payload).await?;
        match head[3] {
            SETTINGS if head[4] & ACK == 0 => socket.write_all(&frame(SETTINGS, ACK, &[])).await?,
            HEADERS => {
                refused.fetch_add(1, Ordering::SeqCst);
                // Last stream id 0, error code NO_ERROR (0).
                socket.write_all(&frame(GOAWAY, 0, &[0; 8])).await?;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_stream_refused_twice_by_goaway_surfaces_unavailable_not_internal() {
    let (uri, refused) = goaway_server().await;
    let channel = tonic::transport::Endpoint::from_shared(uri)
        .unwrap()
        .connect_lazy();
    let policy = fast_policy().max_attempts(1).build().unwrap();
    let mut client = client_over(channel, policy);
    let status = tokio::time::timeout(STALL_LIMIT, client.unary(scripted("c", &[])))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        refused.load(Ordering::SeqCst),
        2,
        "one transparent retry after the first GOAWAY: {status:?}"
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

// ---------------------------------------------------------------------------
// Properties: no public builder, config or encoding panics on any input.

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_millis(1)),
        Just(Duration::MAX),
        Just(Duration::from_secs(i64::MAX as u64)),
        Just(Duration::from_secs(100 * 365 * 24 * 3600)),
        any::<u64>().prop_map(Duration::from_nanos),
        (0..10_000u64).prop_map(Duration::from_millis),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-0.0),
        Just(-1.0),
        Just(f64::MIN_POSITIVE),
        Just(f64::MAX),
        Just(1e-30),
        any::<f64>(),
        0.0..10.0f64,
    ]
}

fn any_attempts() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), Just(u32::MAX), 0..10u32, any::<u32>()]
}

/// Runs one call through `layer` on a paused runtime against a service
/// that always fails with UNAVAILABLE (pushing back `pushback` ms, if set),
/// under a one-second deadline: it must end without a panic.
fn one_call_under_a_deadline(layer: &RetryLayer, pushback: Option<&'static str>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let (inner, _) = scripted_service(
            Code::Unavailable,
            pushback.map(|p| ("grpc-retry-pushback-ms", p)),
            Duration::ZERO,
        );
        let _ = layer.layer(inner).oneshot(request_with_timeout("1S")).await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn retry_policies_built_from_any_settings_never_panic_in_a_call(
        max_attempts in any_attempts(),
        cap in any_attempts(),
        initial in any_duration(),
        max in any_duration(),
        multiplier in any_f64(),
        per_attempt in any_duration(),
        timeout in any_duration(),
        ceiling in any_duration(),
        pushback in prop_oneof![Just(None), Just(Some("0")), Just(Some("2147483647")), Just(Some("-1"))],
    ) {
        let built = RetryPolicy::builder()
            .max_attempts(max_attempts)
            .max_attempts_cap(cap)
            .initial_backoff(initial)
            .max_backoff(max)
            .backoff_multiplier(multiplier)
            .jitter(Jitter::None)
            .per_attempt_timeout(per_attempt)
            .timeout(timeout)
            .max_server_delay(ceiling)
            .build();
        // A near-zero backoff with billions of attempts is a busy loop that
        // paused time never ends (the deadline never comes): call only
        // through policies with a few attempts.
        if let Ok(policy) = built
            && policy.max_attempts() <= 16
        {
            one_call_under_a_deadline(&RetryLayer::new(policy), pushback);
        }
    }

    #[test]
    fn throttles_budgets_breakers_and_hedging_policies_never_panic(
        max_tokens in any::<u32>(),
        ratio_milli in any::<u32>(),
        ttl in any_duration(),
        min_per_sec in any::<u32>(),
        retry_ratio in any_f64(),
        failure_ratio in any_f64(),
        minimum_calls in any_attempts(),
        window in any_duration(),
        break_duration in any_duration(),
        probes in any_attempts(),
        hedge_attempts in any_attempts(),
        hedging_delay in any_duration(),
        hedge_timeout in proptest::option::of(any_duration()),
    ) {
        let throttle = RetryThrottle::new(max_tokens, ratio_milli);
        let budget = RetryBudget::new(ttl, min_per_sec, retry_ratio);
        if let Ok(budget) = &budget {
            budget.deposit();
            let _ = budget.try_withdraw();
            let _ = budget.remaining();
        }
        let _ = BreakerConfig::builder()
            .failure_ratio(failure_ratio)
            .minimum_calls(minimum_calls)
            .window(window)
            .break_duration(break_duration)
            .half_open_probes(probes)
            .build();
        let mut builder = RetryLayer::hedging_builder(HedgingPolicy {
            max_attempts: hedge_attempts,
            hedging_delay,
            non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
            per_attempt_timeout: hedge_timeout,
        });
        if let Ok(throttle) = throttle {
            builder = builder.throttle(throttle);
        }
        if let Ok(budget) = budget {
            builder = builder.budget(budget);
        }
        one_call_under_a_deadline(&builder.build(), Some("2147483647"));
    }

    #[test]
    fn grpc_timeout_encoding_of_any_duration_never_panics(timeout in any_duration()) {
        let encoded = tonic_retry::deadline::encode_grpc_timeout(timeout);
        let back = tonic_retry::deadline::parse_grpc_timeout(encoded.as_bytes());
        prop_assert!(back.is_some_and(|back| back <= timeout), "{timeout:?} as {encoded}");
    }

    #[test]
    fn service_configs_with_extreme_numbers_never_panic(
        max_attempts in or_valid("4", extreme_number()),
        initial in or_valid("\"0.1s\"", extreme_duration()),
        max in or_valid("\"1s\"", extreme_duration()),
        multiplier in or_valid("2", extreme_number()),
        timeout in or_valid("\"2s\"", extreme_duration()),
        hedging_delay in or_valid("\"0.05s\"", extreme_duration()),
        max_tokens in or_valid("10", extreme_number()),
        token_ratio in or_valid("0.1", extreme_number()),
        hedged in any::<bool>(),
    ) {
        let policy = if hedged {
            format!(r#""hedgingPolicy": {{"maxAttempts": {max_attempts}, "hedgingDelay": {hedging_delay},
                                          "nonFatalStatusCodes": ["UNAVAILABLE"]}}"#)
        } else {
            format!(r#""retryPolicy": {{"maxAttempts": {max_attempts}, "initialBackoff": {initial},
                                        "maxBackoff": {max}, "backoffMultiplier": {multiplier},
                                        "retryableStatusCodes": ["UNAVAILABLE"]}}"#)
        };
        let json = format!(
            r#"{{"methodConfig": [{{"name": [{{"service": "pkg.Svc"}}], "timeout": {timeout}, {policy}}}],
                "retryThrottling": {{"maxTokens": {max_tokens}, "tokenRatio": {token_ratio}}}}}"#
        );
        if let Ok(config) = ServiceConfig::from_json(&json) {
            one_call_under_a_deadline(&RetryLayer::from_service_config(config), Some("2147483647"));
        }
    }
}

/// Mostly `valid`, so that a config often parses with one or two extreme
/// values in it (and then carries a call), sometimes `extreme`.
fn or_valid(
    valid: &'static str,
    extreme: impl Strategy<Value = String>,
) -> impl Strategy<Value = String> {
    prop_oneof![2 => Just(valid.to_owned()), 1 => extreme]
}

/// JSON numbers (and a few non-numbers) at and past every limit.
fn extreme_number() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1e30",
            "-1e30",
            "1e-30",
            "1e308",
            "-1e308",
            "1e400",
            "-0",
            "0",
            "2",
            "5",
            "4.0",
            "4.5",
            "18446744073709551616",
            "99999999999999999999",
            "-9223372036854775809",
            "0.0005",
            "0.001",
            "1000",
            "1000.0001",
            "NaN",
            "Infinity",
            "\"4\"",
            "null",
        ])
        .prop_map(str::to_owned),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ]
}

/// proto3 JSON duration strings (and near misses) at and past every limit.
fn extreme_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1e400s",
            "-0s",
            "0s",
            "0.000000001s",
            "12345678901234567890s",
            "99999999999999999999.999999999s",
            "315576000000s",
            "315576000000.000000001s",
            "9223372036854775807s",
            "18446744073709551615s",
            ".5s",
            "5.s",
            "s",
            "-1s",
            "NaNs",
            "infs",
            "1.0000000001s",
            "0.1s",
            "3600s",
        ])
        .prop_map(|s| format!("\"{s}\"")),
        any::<u64>().prop_map(|n| format!("\"{n}s\"")),
        (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| format!("\"{s}.{n:09}s\"")),
        Just("1".to_owned()),
    ]
}
