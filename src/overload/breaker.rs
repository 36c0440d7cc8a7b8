//! [`CircuitBreakerLayer`]: stop calling a backend that keeps failing.
//!
//! Retries help with a failure that is brief; when a backend is down, they
//! only add load and make every caller wait through its backoffs. A circuit
//! breaker watches the calls' outcomes and, once too many fail, fails new
//! calls at once, without sending them, for a while:
//!
//! * **Closed** (normal): calls go through. Outcomes are counted in a sliding
//!   time window. Once the window holds at least `minimum_calls` outcomes and
//!   the share of failures reaches `failure_ratio`, the breaker opens.
//! * **Open**: calls fail at once with UNAVAILABLE, never reaching the inner
//!   service. After `break_duration` the breaker is half-open.
//! * **Half-open**: up to `half_open_probes` calls go through as trials; any
//!   others fail at once. If all the trials succeed the breaker closes, with
//!   an empty window; the first trial that fails opens it again for another
//!   `break_duration`.
//!
//! Only codes in `failure_codes` (system errors: UNAVAILABLE,
//! DEADLINE_EXCEEDED, ABORTED by default) count as failures. Anything else,
//! including logic errors such as INVALID_ARGUMENT, shows that the backend is
//! up and answering, so it counts as a success. A call that is dropped before
//! it ends counts as neither; a dropped trial call frees its place for
//! another.
//!
//! A call's outcome only counts toward the state in which the call started:
//! a slow call that was sent before the breaker opened does not count against
//! (or for) the trials that follow.
//!
//! # Cost
//!
//! Admitting a call while closed is one atomic load. Recording an outcome
//! takes a short `Mutex` (a few counter updates); so do every state change
//! and admission while half-open.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;
use crate::body::response::{OnEnd, ResponseBody, sealed};
use crate::classify::{self, ResponseKind};
use crate::policy::retry::CodeSet;

/// The codes that count as failures when none are configured: the transient
/// system errors, as for retries.
pub const DEFAULT_FAILURE_CODES: CodeSet = CodeSet::EMPTY
    .with(Code::Unavailable)
    .with(Code::DeadlineExceeded)
    .with(Code::Aborted);

/// The number of buckets in the sliding window; each covers `window / 10`.
const BUCKETS: usize = 10;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through and their outcomes are counted.
    Closed,
    /// Calls fail at once with UNAVAILABLE.
    Open,
    /// A limited number of trial calls go through; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half-open"`, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    fn to_bits(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_bits(bits: u64) -> BreakerState {
        match bits & 0b11 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An invalid [`BreakerConfig`] setting. Each variant names the setting.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BreakerError {
    /// `failure_ratio` must be a number in `(0, 1]`.
    FailureRatioInvalid(f64),
    /// `minimum_calls` must be at least 1.
    MinimumCallsZero,
    /// `window` must be greater than zero.
    WindowZero,
    /// `break_duration` must be greater than zero.
    BreakDurationZero,
    /// `half_open_probes` must be at least 1.
    HalfOpenProbesZero,
    /// `failure_codes` must not be empty.
    FailureCodesEmpty,
    /// `failure_codes` must not contain OK.
    FailureCodesContainOk,
}

impl BreakerError {
    /// The name of the builder setting that was rejected.
    pub fn setting(&self) -> &'static str {
        match self {
            BreakerError::FailureRatioInvalid(_) => "failure_ratio",
            BreakerError::MinimumCallsZero => "minimum_calls",
            BreakerError::WindowZero => "window",
            BreakerError::BreakDurationZero => "break_duration",
            BreakerError::HalfOpenProbesZero => "half_open_probes",
            BreakerError::FailureCodesEmpty | BreakerError::FailureCodesContainOk => {
                "failure_codes"
            }
        }
    }
}

impl fmt::Display for BreakerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match self {
            BreakerError::FailureRatioInvalid(r) => {
                format!("must be a number in (0, 1] (got {r})")
            }
            BreakerError::MinimumCallsZero | BreakerError::HalfOpenProbesZero => {
                "must be at least 1".to_string()
            }
            BreakerError::WindowZero | BreakerError::BreakDurationZero => {
                "must be greater than zero".to_string()
            }
            BreakerError::FailureCodesEmpty => "must not be empty".to_string(),
            BreakerError::FailureCodesContainOk => "must not contain OK".to_string(),
        };
        write!(f, "{}: {rule}", self.setting())
    }
}

impl std::error::Error for BreakerError {}

/// When a [`CircuitBreaker`] opens, for how long, and how it closes again.
///
/// Build one with [`BreakerConfig::builder`]; [`BreakerConfig::default`]
/// gives the defaults listed on [`BreakerConfigBuilder`].
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::BreakerConfig;
///
/// let config = BreakerConfig::builder()
///     .failure_ratio(0.25)
///     .minimum_calls(50)
///     .break_duration(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(config.minimum_calls(), 50);
/// # Ok::<(), tonic_retry::BreakerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    failure_ratio: f64,
    minimum_calls: u32,
    window: Duration,
    break_duration: Duration,
    half_open_probes: u32,
    failure_codes: CodeSet,
}

impl BreakerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder::default()
    }

    /// The share of failed calls in the window at which the breaker opens.
    pub fn failure_ratio(&self) -> f64 {
        self.failure_ratio
    }

    /// The fewest calls in the window for the breaker to open.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// The sliding window over which outcomes are counted while closed.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How long the breaker stays open before allowing trial calls.
    pub fn break_duration(&self) -> Duration {
        self.break_duration
    }

    /// How many trial calls are allowed while half-open.
    pub fn half_open_probes(&self) -> u32 {
        self.half_open_probes
    }

    /// The status codes that count as failures.
    pub fn failure_codes(&self) -> CodeSet {
        self.failure_codes
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfigBuilder::default()
            .build()
            .expect("the default settings are valid")
    }
}

/// Builds a [`BreakerConfig`]; [`build`](Self::build) validates every
/// setting.
///
/// Defaults:
///
/// | setting | default |
/// |---|---|
/// | `failure_ratio` | 0.5 |
/// | `minimum_calls` | 20 |
/// | `window` | 10 s |
/// | `break_duration` | 5 s |
/// | `half_open_probes` | 3 |
/// | `failure_codes` | UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED |
#[derive(Debug, Clone)]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
}

impl Default for BreakerConfigBuilder {
    fn default() -> Self {
        BreakerConfigBuilder {
            config: BreakerConfig {
                failure_ratio: 0.5,
                minimum_calls: 20,
                window: Duration::from_secs(10),
                break_duration: Duration::from_secs(5),
                half_open_probes: 3,
                failure_codes: DEFAULT_FAILURE_CODES,
            },
        }
    }
}

impl BreakerConfigBuilder {
    /// The breaker opens when failures are at least this share of the calls
    /// in the window. In `(0, 1]`; 1 means "only if every call failed".
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.config.failure_ratio = ratio;
        self
    }

    /// The breaker never opens while the window holds fewer calls than
    /// this, so a few early failures cannot open it. At least 1.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// How far back outcomes are counted. The window moves in steps of a
    /// tenth of it, so an outcome counts for between 90 % and 100 % of it.
    pub fn window(mut self, window: Duration) -> Self {
        self.config.window = window;
        self
    }

    /// How long the breaker stays open, each time it opens.
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.config.break_duration = duration;
        self
    }

    /// How many trial calls go through while half-open; they must all
    /// succeed for the breaker to close. At least 1.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// The status codes that count as failures; all others count as
    /// successes. Must be non-empty and must not contain OK.
    pub fn failure_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.config.failure_codes = codes.into_iter().collect();
        self
    }

    /// Validates the settings and builds the configuration.
    pub fn build(self) -> Result<BreakerConfig, BreakerError> {
        let c = self.config;
        if !(c.failure_ratio > 0.0 && c.failure_ratio <= 1.0) {
            return Err(BreakerError::FailureRatioInvalid(c.failure_ratio));
        }
        if c.minimum_calls == 0 {
            return Err(BreakerError::MinimumCallsZero);
        }
        if c.window.is_zero() {
            return Err(BreakerError::WindowZero);
        }
        if c.break_duration.is_zero() {
            return Err(BreakerError::BreakDurationZero);
        }
        if c.half_open_probes == 0 {
            return Err(BreakerError::HalfOpenProbesZero);
        }
        if c.failure_codes.is_empty() {
            return Err(BreakerError::FailureCodesEmpty);
        }
        if c.failure_codes.contains(Code::Ok) {
            return Err(BreakerError::FailureCodesContainOk);
        }
        Ok(c)
    }
}

/// A tower [`Layer`] that adds a circuit breaker (see the [module
/// documentation](self) for how it opens and closes).
///
/// # Composition
///
/// Put the breaker **outside** the [`RetryLayer`](crate::RetryLayer), that
/// is, before it in a `ServiceBuilder`:
///
/// ```no_run
/// use std::time::Duration;
/// use tonic::transport::Endpoint;
/// use tonic_retry::{BreakerConfig, CircuitBreakerLayer, RetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let breaker = CircuitBreakerLayer::new(
///     BreakerConfig::builder()
///         .failure_ratio(0.5)
///         .minimum_calls(20)
///         .break_duration(Duration::from_secs(5))
///         .build()?,
/// );
/// let svc = ServiceBuilder::new()
///     .layer(breaker.clone())
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(channel);
/// // let mut client = GreeterClient::new(svc);   // any generated client
/// println!("breaker is {}", breaker.state());
/// # let _ = svc;
/// # Ok(())
/// # }
/// ```
///
/// That way:
///
/// * A logical call counts once, with its final outcome after all its
///   retries. Inside the retry layer, every failed attempt would count, so
///   one call with 3 failed attempts would weigh as 3 failures, and a call
///   saved by its retry would still add failures.
/// * An open breaker fails the call at once. Inside the retry layer, its
///   UNAVAILABLE would be retried (with backoffs) against a breaker that is
///   still open.
///
/// # Sharing
///
/// A layer holds one breaker, and every service it wraps, and every clone of
/// those, shares it. Use one layer per backend; wrapping channels to
/// different backends with one layer would let one backend's failures stop
/// calls to another.
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    shared: Arc<Shared>,
}

impl CircuitBreakerLayer {
    /// A layer whose services all share one breaker configured by `config`.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreakerLayer {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The breaker's current state. An open breaker whose break has ended
    /// becomes half-open when this (or a call) observes it.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("config", &self.shared.config)
            .field("state", &self.shared.current())
            .finish()
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker {
            inner,
            shared: self.shared.clone(),
            admission: None,
        }
    }
}

/// Fails calls at once while its breaker is open; built by
/// [`CircuitBreakerLayer`].
///
/// It takes `http::Request<tonic::body::Body>` like a tonic `Channel`, so any
/// generated client accepts it. Its error type is [`BoxError`]: an inner
/// error is converted once into the [`tonic::Status`] that tonic would have
/// made of it, and a call refused by the breaker fails with UNAVAILABLE
/// ("circuit breaker open …"); both are boxed `Status` values, which the
/// generated client surfaces unchanged.
///
/// The breaker decides in `poll_ready`: a refused call is ready at once,
/// without the inner service being polled, and its `call` never reaches the
/// inner service. Clones share the breaker.
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
    /// The decision taken by `poll_ready` for the next `call`.
    admission: Option<Result<Permit, Status>>,
}

impl<S> CircuitBreaker<S> {
    /// Wraps `inner` in a breaker of its own. To share a breaker, build the
    /// services with one [`CircuitBreakerLayer`] instead.
    pub fn new(inner: S, config: BreakerConfig) -> Self {
        CircuitBreakerLayer::new(config).layer(inner)
    }

    /// The breaker's current state. An open breaker whose break has ended
    /// becomes half-open when this (or a call) observes it.
    pub fn state(&self) -> BreakerState {
        self.shared.state()
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone> Clone for CircuitBreaker<S> {
    fn clone(&self) -> Self {
        // A decision (and a trial slot) belongs to the instance that took it.
        CircuitBreaker {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            admission: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("state", &self.shared.current())
            .finish_non_exhaustive()
    }
}

impl<S, ResBody> Service<http::Request<Body>> for CircuitBreaker<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody<ResBody, BreakerEnd>>;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self.admission.get_or_insert_with(|| self.shared.admit());
        if admission.is_err() {
            // Fail fast: `call` returns the refusal without the inner service.
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                // The admitted call cannot be made: that is its outcome.
                let status = classify::status_from_error(error.into());
                if let Some(Ok(permit)) = self.admission.take() {
                    permit.settle(self.shared.config.failure_codes.contains(status.code()));
                }
                Poll::Ready(Err(Box::new(status)))
            }
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Without a `poll_ready` first (a caller bug), decide now.
        let admission = self.admission.take().unwrap_or_else(|| self.shared.admit());
        match admission {
            Ok(permit) => BreakerFuture {
                inner: Some(self.inner.call(request)),
                permit: Some(permit),
                refused: None,
            },
            Err(status) => BreakerFuture {
                inner: None,
                permit: None,
                refused: Some(status),
            },
        }
    }
}

pin_project! {
    /// The future returned by [`CircuitBreaker`]: the inner call's result,
    /// recorded as the breaker's outcome, or the breaker's refusal.
    ///
    /// Dropping it before it completes records nothing (a trial call gives
    /// its place back).
    pub struct BreakerFuture<F> {
        #[pin]
        inner: Option<F>,
        permit: Option<Permit>,
        refused: Option<Status>,
    }
}

impl<F, ResBody, E> Future for BreakerFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<ResponseBody<ResBody, BreakerEnd>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(status) = this.refused.take() {
            return Poll::Ready(Err(Box::new(status)));
        }
        let inner = this
            .inner
            .as_mut()
            .as_pin_mut()
            .expect("BreakerFuture polled after completion");
        let result = ready!(inner.poll(cx));
        this.inner.set(None);
        let permit = this.permit.take().expect("an admitted call holds a permit");
        let failure_codes = permit.shared.config.failure_codes;
        match result {
            Ok(mut response) => match classify::classify_response(&response) {
                // Committed: the outcome is the status its body ends with.
                ResponseKind::Commit => Poll::Ready(Ok(response.map(|body| {
                    ResponseBody::new(
                        body,
                        Some(BreakerEnd {
                            permit,
                            failure_codes,
                        }),
                    )
                }))),
                ResponseKind::Ok { check_details } => {
                    if check_details {
                        // tonic's stub would panic on undecodable details.
                        classify::strip_malformed_status_details(response.headers_mut());
                    }
                    permit.settle(false);
                    Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, None))))
                }
                ResponseKind::Failed(code) => {
                    permit.settle(failure_codes.contains(code));
                    let (mut parts, _body) = response.into_parts();
                    classify::make_trailers_only(&mut parts.headers, parts.status, code);
                    Poll::Ready(Ok(http::Response::from_parts(parts, ResponseBody::empty())))
                }
            },
            Err(error) => {
                // Converted once, so the code counted is the code surfaced.
                let status = classify::status_from_error(error.into());
                permit.settle(failure_codes.contains(status.code()));
                Poll::Ready(Err(Box::new(status)))
            }
        }
    }
}

impl<F> fmt::Debug for BreakerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerFuture")
            .field("refused", &self.refused.is_some())
            .finish_non_exhaustive()
    }
}

/// The outcome of a committed call for the breaker, settled when its
/// response ends: the [`OnEnd`] hook of the [`ResponseBody`] that
/// [`CircuitBreaker`] returns. The trailers' status counts, so a backend
/// that sends headers and then UNAVAILABLE opens the breaker; a body the
/// caller drops before its end counts as neither (a trial gives its place
/// back). Opaque.
pub struct BreakerEnd {
    permit: Permit,
    failure_codes: CodeSet,
}

impl sealed::Sealed for BreakerEnd {}

impl OnEnd for BreakerEnd {
    fn ended(self, code: Code, _trailers: &http::HeaderMap) {
        self.permit.settle(self.failure_codes.contains(code));
    }

    fn dropped(self) {
        // The permit's drop counts nothing.
    }
}

impl fmt::Debug for BreakerEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerEnd").finish_non_exhaustive()
    }
}

/// A call's admission: which state it was admitted in, so that its outcome
/// counts only toward that state.
struct Permit {
    shared: Arc<Shared>,
    generation: u64,
    /// A half-open trial call rather than an ordinary one.
    probe: bool,
    settled: bool,
}

impl Permit {
    fn settle(mut self, failed: bool) {
        self.settled = true;
        self.shared
            .record(self.generation, self.probe, Some(failed));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A dropped call counts as neither; only a trial's place is returned.
        if !self.settled && self.probe {
            self.shared.record(self.generation, true, None);
        }
    }
}

/// The breaker shared by a layer, its services and their clones.
struct Shared {
    config: BreakerConfig,
    start: Instant,
    /// The state in the low two bits and its generation above them, so the
    /// closed fast path is a single load. Written only under `core`'s lock.
    status: AtomicU64,
    /// While open: when the break ends, in nanoseconds since `start`.
    /// Written before `status`, so a reader that sees "open" sees its end.
    open_until: AtomicU64,
    core: Mutex<Core>,
}

/// The breaker's state proper; `Shared::status` mirrors `state` and
/// `generation`.
struct Core {
    state: BreakerState,
    /// Bumped on every state change; a call's outcome counts only if the
    /// generation it was admitted in is still the current one.
    generation: u64,
    /// Closed: outcomes in the sliding window.
    window: Window,
    /// Half-open: trial calls admitted and not yet ended.
    probes_in_flight: u32,
    /// Half-open: trial calls that succeeded.
    probes_passed: u32,
}

fn pack(state: BreakerState, generation: u64) -> u64 {
    (generation << 2) | state.to_bits()
}

impl Shared {
    fn new(config: BreakerConfig) -> Shared {
        Shared {
            config,
            start: Instant::now(),
            status: AtomicU64::new(pack(BreakerState::Closed, 0)),
            open_until: AtomicU64::new(0),
            core: Mutex::new(Core {
                state: BreakerState::Closed,
                generation: 0,
                window: Window::default(),
                probes_in_flight: 0,
                probes_passed: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // Nothing panics while holding the lock; if something did, the
        // counters are still consistent enough to go on with.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_nanos(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The state as last recorded, without noticing a break that has ended.
    fn current(&self) -> BreakerState {
        BreakerState::from_bits(self.status.load(Ordering::Acquire))
    }

    fn break_over(&self, now: u64) -> bool {
        now >= self.open_until.load(Ordering::Acquire)
    }

    fn state(&self) -> BreakerState {
        let state = self.current();
        if state == BreakerState::Open && self.break_over(self.now_nanos()) {
            let mut core = self.lock();
            self.end_break(&mut core, self.now_nanos());
            return core.state;
        }
        state
    }

    /// Admits a call, or refuses it with the status the caller gets.
    fn admit(self: &Arc<Self>) -> Result<Permit, Status> {
        let status = self.status.load(Ordering::Acquire);
        if BreakerState::from_bits(status) == BreakerState::Closed {
            return Ok(self.permit(status >> 2, false));
        }
        let now = self.now_nanos();
        if BreakerState::from_bits(status) == BreakerState::Open && !self.break_over(now) {
            return Err(self.refusal_while_open(now));
        }
        let mut core = self.lock();
        self.end_break(&mut core, now);
        match core.state {
            BreakerState::Closed => Ok(self.permit(core.generation, false)),
            BreakerState::Open => Err(self.refusal_while_open(now)),
            BreakerState::HalfOpen => {
                if core.probes_in_flight + core.probes_passed < self.config.half_open_probes {
                    core.probes_in_flight += 1;
                    Ok(self.permit(core.generation, true))
                } else {
                    Err(Status::unavailable(format!(
                        "circuit breaker open (half-open: all {} trial calls admitted); failing fast",
                        self.config.half_open_probes
                    )))
                }
            }
        }
    }

    fn permit(self: &Arc<Self>, generation: u64, probe: bool) -> Permit {
        Permit {
            shared: self.clone(),
            generation,
            probe,
            settled: false,
        }
    }

    fn refusal_while_open(&self, now: u64) -> Status {
        let left = self.open_until.load(Ordering::Acquire).saturating_sub(now);
        Status::unavailable(format!(
            "circuit breaker open; failing fast for another {:?}",
            Duration::from_nanos(left)
        ))
    }

    /// Open → half-open, once the break has ended.
    fn end_break(&self, core: &mut Core, now: u64) {
        if core.state == BreakerState::Open && self.break_over(now) {
            self.transition(core, BreakerState::HalfOpen, now);
        }
    }

    /// Records the outcome of a call admitted in `generation`: `Some(true)`
    /// failed, `Some(false)` succeeded, `None` dropped.
    fn record(&self, generation: u64, probe: bool, failed: Option<bool>) {
        let mut core = self.lock();
        if core.generation != generation {
            // The breaker has changed state since the call was admitted.
            return;
        }
        let now = self.now_nanos();
        if probe {
            core.probes_in_flight = core.probes_in_flight.saturating_sub(1);
            match failed {
                None => {}
                Some(true) => self.transition(&mut core, BreakerState::Open, now),
                Some(false) => {
                    core.probes_passed += 1;
                    if core.probes_passed >= self.config.half_open_probes {
                        self.transition(&mut core, BreakerState::Closed, now);
                    }
                }
            }
        } else if let Some(failed) = failed {
            let bucket = self.bucket(now);
            core.window.record(bucket, failed);
            let (calls, failures) = core.window.totals(bucket);
            // Division, not `failures >= ratio × calls`: the quotient of two
            // small integers rounds to the same f64 as the written ratio
            // (3/10 == 0.3), where 0.3 × 10 is 3.0000000000000004.
            if calls >= u64::from(self.config.minimum_calls)
                && failures as f64 / calls as f64 >= self.config.failure_ratio
            {
                self.transition(&mut core, BreakerState::Open, now);
            }
        }
    }

    /// The window bucket that `now` falls in.
    fn bucket(&self, now: u64) -> u64 {
        let number = u128::from(now) * BUCKETS as u128 / self.config.window.as_nanos();
        u64::try_from(number).unwrap_or(u64::MAX)
    }

    fn transition(&self, core: &mut Core, to: BreakerState, now: u64) {
        let from = core.state;
        core.state = to;
        core.generation += 1;
        core.window = Window::default();
        core.probes_in_flight = 0;
        core.probes_passed = 0;
        if to == BreakerState::Open {
            let pause = u64::try_from(self.config.break_duration.as_nanos()).unwrap_or(u64::MAX);
            self.open_until
                .store(now.saturating_add(pause), Ordering::Release);
        }
        self.status
            .store(pack(to, core.generation), Ordering::Release);
        tracing::debug!(
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker state changed"
        );
    }
}

/// Outcomes of the last `window`, in [`BUCKETS`] buckets of `window / 10`.
#[derive(Default)]
struct Window {
    buckets: [Bucket; BUCKETS],
}

/// The outcomes of one bucket; `number` says which one (since the breaker
/// was created), so a bucket from an earlier pass of the ring is ignored.
#[derive(Default, Clone, Copy)]
struct Bucket {
    number: u64,
    successes: u32,
    failures: u32,
}

impl Window {
    fn record(&mut self, number: u64, failed: bool) {
        let bucket = &mut self.buckets[(number % BUCKETS as u64) as usize];
        if bucket.number != number {
            *bucket = Bucket {
                number,
                ..Bucket::default()
            };
        }
        let count = if failed {
            &mut bucket.failures
        } else {
            &mut bucket.successes
        };
        *count = count.saturating_add(1);
    }

    /// (calls, failures) in the window ending with bucket `now`.
    fn totals(&self, now: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| b.number <= now && now - b.number < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (
                    calls + u64::from(b.successes) + u64::from(b.failures),
                    failures + u64::from(b.failures),
                )
            })
    }
}
