//! The circuit breaker, over a mock inner service that answers every call
//! with a scripted trailers-only status (or error), under paused time.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_retry::{
    BoxError, BreakerConfig, BreakerError, BreakerState, CircuitBreaker, CircuitBreakerLayer,
    Jitter, RetryLayer, RetryPolicy,
};
use tower::{Layer, Service, ServiceExt};

/// What the mock backend answers.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// A trailers-only response with this `grpc-status` (0 for OK).
    Status(Code),
    /// `Err(Box<Status>)` with this code.
    Error(Code),
    /// A connection failure, which tonic reports as UNAVAILABLE.
    ConnectError,
}

/// A mock backend: counts the calls that reach it and answers each with the
/// current reply.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicUsize>,
    reply: Arc<Mutex<Reply>>,
}

impl Backend {
    fn new() -> Self {
        Backend {
            calls: Arc::default(),
            reply: Arc::new(Mutex::new(Reply::Status(Code::Ok))),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = BoxError,
        Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
    > + Clone
    + Send
    + 'static {
        let backend = self.clone();
        tower::service_fn(move |_request: Request<Body>| {
            // Counted and decided when the call is made, answered when polled.
            backend.calls.fetch_add(1, Ordering::SeqCst);
            let reply = *backend.reply.lock().unwrap();
            async move { respond(reply) }
        })
    }
}

fn respond(reply: Reply) -> Result<Response<Body>, BoxError> {
    match reply {
        Reply::Status(code) => Ok(Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", (code as i32).to_string())
            .body(Body::empty())
            .unwrap()),
        Reply::Error(code) => Err(Box::new(Status::new(code, "mock error"))),
        Reply::ConnectError => {
            let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
            Err(Box::new(tonic::ConnectError(Box::new(io))))
        }
    }
}

/// The code a generated client would report for this result.
fn code_of<R>(result: Result<Response<R>, BoxError>) -> Code {
    match result {
        Ok(response) => response
            .headers()
            .get("grpc-status")
            .map_or(Code::Ok, |v| Code::from_bytes(v.as_bytes())),
        Err(error) => error
            .downcast::<Status>()
            .expect("errors surface as a boxed Status")
            .code(),
    }
}

fn request() -> Request<Body> {
    Request::builder()
        .uri("http://test/pkg.Svc/Method")
        .body(Body::empty())
        .unwrap()
}

/// Makes one call through `svc` and returns the code the caller sees.
async fn call<S, R>(svc: &mut S) -> Code
where
    S: Service<Request<Body>, Response = Response<R>, Error = BoxError>,
{
    match svc.ready().await {
        Ok(svc) => code_of(svc.call(request()).await),
        Err(error) => code_of::<R>(Err(error)),
    }
}

/// Makes `n` calls, all answered with `reply`.
async fn calls<S, R>(svc: &mut S, backend: &Backend, reply: Reply, n: usize)
where
    S: Service<Request<Body>, Response = Response<R>, Error = BoxError>,
{
    backend.set(reply);
    for _ in 0..n {
        call(svc).await;
    }
}

const UNAVAILABLE: Reply = Reply::Status(Code::Unavailable);
const OK: Reply = Reply::Status(Code::Ok);

fn config() -> tonic_retry::BreakerConfigBuilder {
    BreakerConfig::builder()
        .failure_ratio(0.5)
        .minimum_calls(10)
        .window(Duration::from_secs(10))
        .break_duration(Duration::from_secs(5))
        .half_open_probes(3)
}

fn breaker(
    backend: &Backend,
    config: BreakerConfig,
) -> CircuitBreaker<impl Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone>
{
    CircuitBreakerLayer::new(config).layer(backend.service())
}

/// A breaker that has just opened.
async fn opened(
    backend: &Backend,
) -> CircuitBreaker<impl Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone>
{
    let mut svc = breaker(backend, config().build().unwrap());
    calls(&mut svc, backend, UNAVAILABLE, 10).await;
    assert_eq!(svc.state(), BreakerState::Open);
    svc
}

#[tokio::test(start_paused = true)]
async fn trips_once_failures_reach_the_ratio_with_minimum_calls() {
    let backend = Backend::new();
    let mut svc = breaker(&backend, config().build().unwrap());
    calls(&mut svc, &backend, OK, 5).await;
    calls(&mut svc, &backend, UNAVAILABLE, 4).await;
    assert_eq!(svc.state(), BreakerState::Closed, "9 calls, below minimum");
    // A connection failure counts too: tonic reports it as UNAVAILABLE.
    backend.set(Reply::ConnectError);
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(svc.state(), BreakerState::Open, "5 of 10 failed");
    assert_eq!(backend.calls(), 10);
}

#[tokio::test(start_paused = true)]
async fn status_errors_count_by_their_code() {
    let backend = Backend::new();
    let mut svc = breaker(&backend, config().minimum_calls(4).build().unwrap());
    calls(&mut svc, &backend, Reply::Error(Code::DeadlineExceeded), 2).await;
    calls(&mut svc, &backend, Reply::Error(Code::Aborted), 1).await;
    assert_eq!(svc.state(), BreakerState::Closed);
    backend.set(Reply::Error(Code::Unavailable));
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(svc.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn does_not_trip_below_minimum_calls() {
    let backend = Backend::new();
    let mut svc = breaker(&backend, config().build().unwrap());
    calls(&mut svc, &backend, UNAVAILABLE, 9).await;
    assert_eq!(
        svc.state(),
        BreakerState::Closed,
        "9 of 9 failed, minimum 10"
    );
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(svc.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn logic_errors_never_trip_it() {
    let backend = Backend::new();
    let mut svc = breaker(&backend, config().minimum_calls(1).build().unwrap());
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unauthenticated,
        Code::ResourceExhausted,
    ] {
        for reply in [Reply::Status(code), Reply::Error(code)] {
            backend.set(reply);
            for _ in 0..5 {
                assert_eq!(call(&mut svc).await, code, "surfaced unchanged");
            }
        }
    }
    assert_eq!(svc.state(), BreakerState::Closed);
    assert_eq!(backend.calls(), 100);
}

#[tokio::test(start_paused = true)]
async fn open_fails_fast_without_calling_the_inner_service() {
    let backend = Backend::new();
    let mut svc = opened(&backend).await;
    let before = backend.calls();
    backend.set(OK);
    for _ in 0..20 {
        let error = svc
            .ready()
            .await
            .unwrap()
            .call(request())
            .await
            .unwrap_err();
        let status = error.downcast::<Status>().unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().starts_with("circuit breaker open"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        backend.calls(),
        before,
        "the inner service was never called"
    );
    // Clones and the layer see the same breaker.
    assert_eq!(svc.clone().state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn stays_open_for_the_break_duration() {
    let backend = Backend::new();
    let mut svc = opened(&backend).await;
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(svc.state(), BreakerState::Open);
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(svc.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn half_open_allows_exactly_the_probes_and_closes_when_they_succeed() {
    let backend = Backend::new();
    let mut svc = opened(&backend).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let before = backend.calls();
    backend.set(OK);

    // Three trial calls are in flight (made, not yet answered).
    let mut probes = Vec::new();
    for _ in 0..3 {
        probes.push(svc.ready().await.unwrap().call(request()));
    }
    assert_eq!(backend.calls(), before + 3);
    // A fourth fails fast.
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(backend.calls(), before + 3);
    assert_eq!(svc.state(), BreakerState::HalfOpen);

    let last = probes.pop().unwrap();
    for probe in probes {
        assert_eq!(code_of(probe.await), Code::Ok);
    }
    assert_eq!(svc.state(), BreakerState::HalfOpen, "2 of 3 trials done");
    assert_eq!(code_of(last.await), Code::Ok);
    assert_eq!(svc.state(), BreakerState::Closed);

    // Closed again, with a fresh window: 9 failures are below the minimum.
    calls(&mut svc, &backend, UNAVAILABLE, 9).await;
    assert_eq!(svc.state(), BreakerState::Closed);
    calls(&mut svc, &backend, UNAVAILABLE, 1).await;
    assert_eq!(svc.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_for_another_break() {
    let backend = Backend::new();
    let mut svc = opened(&backend).await;
    tokio::time::advance(Duration::from_secs(5)).await;

    backend.set(OK);
    assert_eq!(call(&mut svc).await, Code::Ok);
    backend.set(UNAVAILABLE);
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(svc.state(), BreakerState::Open);

    let before = backend.calls();
    backend.set(OK);
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(backend.calls(), before, "open again: failing fast");
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(svc.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(svc.state(), BreakerState::HalfOpen);
    calls(&mut svc, &backend, OK, 3).await;
    assert_eq!(svc.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_counts_as_neither_and_frees_its_place() {
    let backend = Backend::new();
    let mut svc = opened(&backend).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let before = backend.calls();
    backend.set(OK);

    let probes: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(svc.ready().await.unwrap().call(request()));
        }
        v
    };
    drop(probes);
    assert_eq!(svc.state(), BreakerState::HalfOpen, "nothing recorded");
    // All three places are free again; three successes close it.
    calls(&mut svc, &backend, OK, 3).await;
    assert_eq!(backend.calls(), before + 6);
    assert_eq!(svc.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn calls_started_before_it_opened_do_not_count_afterwards() {
    let backend = Backend::new();
    let mut svc = breaker(&backend, config().build().unwrap());
    backend.set(UNAVAILABLE);
    let slow = svc.ready().await.unwrap().call(request());
    calls(&mut svc, &backend, UNAVAILABLE, 10).await;
    assert_eq!(svc.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(svc.state(), BreakerState::HalfOpen);
    // The slow call's failure belongs to the closed period that ended.
    assert_eq!(code_of(slow.await), Code::Unavailable);
    assert_eq!(svc.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn the_window_forgets_old_failures() {
    let config = config().minimum_calls(4).build().unwrap();

    // Within the window, old failures still count.
    let backend = Backend::new();
    let mut svc = breaker(&backend, config.clone());
    calls(&mut svc, &backend, UNAVAILABLE, 3).await;
    tokio::time::advance(Duration::from_secs(9)).await;
    calls(&mut svc, &backend, UNAVAILABLE, 1).await;
    assert_eq!(svc.state(), BreakerState::Open);

    // Once the window has passed, they do not.
    let backend = Backend::new();
    let mut svc = breaker(&backend, config);
    calls(&mut svc, &backend, UNAVAILABLE, 3).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    calls(&mut svc, &backend, UNAVAILABLE, 1).await;
    calls(&mut svc, &backend, OK, 3).await;
    assert_eq!(svc.state(), BreakerState::Closed, "1 of 4 failed");
}

#[tokio::test(start_paused = true)]
async fn outside_the_retry_layer_a_call_counts_once_after_its_retries() {
    let backend = Backend::new();
    backend.set(UNAVAILABLE);
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(10))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let layer = CircuitBreakerLayer::new(
        BreakerConfig::builder()
            .failure_ratio(1.0)
            .minimum_calls(3)
            .build()
            .unwrap(),
    );
    let mut svc = layer.layer(RetryLayer::new(policy).layer(backend.service()));

    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(backend.calls(), 3, "one call, three attempts");
    assert_eq!(
        layer.state(),
        BreakerState::Closed,
        "one failure, not three"
    );

    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(layer.state(), BreakerState::Closed);
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(backend.calls(), 9);
    assert_eq!(layer.state(), BreakerState::Open, "three failed calls");

    // Open: no attempts at all, let alone retries.
    assert_eq!(call(&mut svc).await, Code::Unavailable);
    assert_eq!(backend.calls(), 9);
}

#[tokio::test]
async fn a_generated_client_sees_the_refusal_as_unavailable() {
    use tonic_retry::testing::proto::{EchoClient, EchoRequest};
    use tonic_retry::testing::{FaultAction, TestServer, set_script};

    let server = TestServer::start().await.unwrap();
    let channel = tonic::transport::Endpoint::from_shared(server.uri())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let policy = RetryPolicy::builder()
        .max_attempts(2)
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(5))
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::builder()
            .failure_ratio(1.0)
            .minimum_calls(1)
            .build()
            .unwrap(),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(breaker.clone())
        .layer(RetryLayer::new(policy))
        .service(channel);
    let mut client = EchoClient::new(svc);
    let scripted = |call_id: &str| {
        let mut request = tonic::Request::new(EchoRequest::default());
        let unavailable = FaultAction::code(Code::Unavailable).message("down");
        set_script(&mut request, call_id, &[unavailable.clone(), unavailable]).unwrap();
        request
    };

    let status = client.unary(scripted("first")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "down")
    );
    assert_eq!(server.attempts("first").len(), 2);
    assert_eq!(breaker.state(), BreakerState::Open);

    let status = client.unary(scripted("second")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().starts_with("circuit breaker open"),
        "{}",
        status.message()
    );
    assert_eq!(server.attempts("second").len(), 0, "never sent");
}

#[test]
fn invalid_settings_are_typed_errors_naming_the_setting() {
    let cases = [
        (
            config().failure_ratio(0.0),
            BreakerError::FailureRatioInvalid(0.0),
        ),
        (
            config().failure_ratio(1.5),
            BreakerError::FailureRatioInvalid(1.5),
        ),
        (config().minimum_calls(0), BreakerError::MinimumCallsZero),
        (config().window(Duration::ZERO), BreakerError::WindowZero),
        (
            config().break_duration(Duration::ZERO),
            BreakerError::BreakDurationZero,
        ),
        (
            config().half_open_probes(0),
            BreakerError::HalfOpenProbesZero,
        ),
        (config().failure_codes([]), BreakerError::FailureCodesEmpty),
        (
            config().failure_codes([Code::Ok, Code::Unavailable]),
            BreakerError::FailureCodesContainOk,
        ),
    ];
    for (builder, expected) in cases {
        let err = builder.build().unwrap_err();
        assert_eq!(err, expected);
        assert!(
            err.to_string().starts_with(err.setting()),
            "{err} should name {}",
            err.setting()
        );
    }
    let nan = config().failure_ratio(f64::NAN).build().unwrap_err();
    assert_eq!(nan.setting(), "failure_ratio");
}

#[test]
fn defaults_match_the_documented_table() {
    let c = BreakerConfig::default();
    assert_eq!(c.failure_ratio(), 0.5);
    assert_eq!(c.minimum_calls(), 20);
    assert_eq!(c.window(), Duration::from_secs(10));
    assert_eq!(c.break_duration(), Duration::from_secs(5));
    assert_eq!(c.half_open_probes(), 3);
    let codes: Vec<Code> = c.failure_codes().iter().collect();
    assert_eq!(
        codes,
        vec![Code::DeadlineExceeded, Code::Aborted, Code::Unavailable]
    );
}
