//! The fleet study: every client with its own layer (as separate processes
//! would have), the same scenario and seed under each protection mode; in
//! virtual time against the server model, or in real time against the real
//! test server over loopback sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tonic_retry::testing::{Capacity, CapacityConfig, ServiceTime, TestServer};
use tonic_retry::{
    BoxError, BreakerConfig, CircuitBreakerLayer, Jitter, RetryBudget, RetryLayer, RetryPolicy,
    RetryThrottle,
};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt};

use crate::model::{self, CallBucket, Recorder, Scenario, ServerBucket, ServerModel};

/// How the clients protect the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One attempt per call: the load the server would see without retries.
    None,
    /// Up to 4 attempts, nothing else.
    Naive,
    /// Up to 4 attempts and A6 throttling (maxTokens 10, tokenRatio 0.1).
    Throttling,
    /// Up to 4 attempts and a retry budget (20 % of requests, no floor).
    Budget,
    /// Throttling, and a circuit breaker outside the retry layer.
    Breaker,
    /// Up to 4 attempts and `RetryBudget::default()`: 20 %, but with a
    /// floor of 10 retries/s per client (an extra row: the floor is per
    /// layer, so a fleet's floor is the clients' sum).
    BudgetDefault,
}

impl Mode {
    /// Every mode, in the order of the tables.
    pub const ALL: [Mode; 5] = [
        Mode::None,
        Mode::Naive,
        Mode::Throttling,
        Mode::Budget,
        Mode::Breaker,
    ];

    /// Extra rows of the fleet table, outside the five modes compared.
    pub const EXTRA: [Mode; 1] = [Mode::BudgetDefault];

    /// The name in `RESULT` lines and tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Naive => "naive",
            Mode::Throttling => "throttling",
            Mode::Budget => "budget",
            Mode::Breaker => "breaker",
            Mode::BudgetDefault => "budget_default",
        }
    }

    /// What the mode configures, for the tables.
    pub fn describe(self) -> &'static str {
        match self {
            Mode::None => "max_attempts 1",
            Mode::Naive => "max_attempts 4, nothing else",
            Mode::Throttling => "+ RetryThrottle::new(10_000, 100) (A6: 10 tokens, ratio 0.1)",
            Mode::Budget => "+ RetryBudget::new(10 s, 0, 0.2)",
            Mode::Breaker => {
                "throttling + CircuitBreakerLayer (0.5 of >= 10 calls in 5 s; 1 s open; 3 probes)"
            }
            Mode::BudgetDefault => {
                "+ RetryBudget::default() (10 s, floor 10 retries/s per client, 0.2)"
            }
        }
    }
}

/// One client: the layers of `mode` over an inner service, answering with
/// the call's final gRPC code.
pub type Client = BoxCloneService<http::Request<Body>, Code, BoxError>;

/// The retry policy every retrying mode uses: 4 attempts, 100 ms initial
/// backoff doubling to 1 s, with `jitter` (A6's ±20 % unless a study says
/// otherwise), within the scenario's attempt timeout and deadline.
pub fn policy(scenario: &Scenario, attempts: u32, jitter: Jitter) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(attempts)
        .jitter(jitter)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_secs(1))
        .backoff_multiplier(2.0)
        .per_attempt_timeout(scenario.attempt_timeout)
        .timeout(scenario.deadline)
        .build()
        .expect("valid policy")
}

/// The breaker of the breaker mode. A client offers 3.5 calls/s, so a 5 s
/// window holds about 17 calls: 10 of them are enough to judge.
fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(
        BreakerConfig::builder()
            .failure_ratio(0.5)
            .minimum_calls(10)
            .window(Duration::from_secs(5))
            .break_duration(Duration::from_secs(1))
            .half_open_probes(3)
            .build()
            .expect("valid breaker"),
    )
}

/// A client of `mode` over `inner`; every attempt it sends is counted in
/// `recorder` (under the retry layer, so a call the breaker refuses sends
/// none).
pub fn client<S, B>(
    inner: S,
    mode: Mode,
    jitter: Jitter,
    scenario: &Scenario,
    recorder: &Recorder,
) -> Client
where
    S: Service<http::Request<Body>, Response = http::Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let attempts = recorder.clone();
    let counted = inner.map_request(move |request: http::Request<Body>| {
        attempts.attempt();
        request
    });
    let retry = match mode {
        Mode::None => RetryLayer::new(policy(scenario, 1, jitter)),
        Mode::Naive => RetryLayer::new(policy(scenario, 4, jitter)),
        Mode::Throttling | Mode::Breaker => RetryLayer::builder(policy(scenario, 4, jitter))
            .throttle(RetryThrottle::new(10_000, 100).expect("valid throttle"))
            .build(),
        Mode::Budget => RetryLayer::builder(policy(scenario, 4, jitter))
            .budget(RetryBudget::new(Duration::from_secs(10), 0, 0.2).expect("valid budget"))
            .build(),
        Mode::BudgetDefault => RetryLayer::builder(policy(scenario, 4, jitter))
            .budget(RetryBudget::default())
            .build(),
    }
    .layer(counted);
    match mode {
        Mode::Breaker => BoxCloneService::new(breaker().layer(retry).and_then(final_code)),
        _ => BoxCloneService::new(retry.and_then(final_code)),
    }
}

/// The final gRPC code of a response: its Trailers-Only `grpc-status`, or
/// the one in its trailers (the body is read to its end, as a stub would,
/// so that the layer records the outcome).
async fn final_code<B>(response: http::Response<B>) -> Result<Code, BoxError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if let Some(code) = grpc_status(response.headers()) {
        return Ok(code);
    }
    let collected = response.into_body().collect().await.map_err(Into::into)?;
    Ok(collected
        .trailers()
        .and_then(grpc_status)
        .unwrap_or(Code::Unknown))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// The request every call sends: `Echo/Unary` with an empty `EchoRequest`
/// (a 5-byte gRPC frame), as tonic's generated client builds it.
pub fn echo_request() -> http::Request<Body> {
    let frame = Bytes::from_static(&[0, 0, 0, 0, 0]);
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(frame)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static("/retry.test.v1.Echo/Unary");
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    request
}

/// Plays the scenario's arrivals (from `recorder`'s start) on `clients`,
/// calling `set_workers` at the trigger's start and end, and returns once
/// every call has ended.
async fn drive(
    scenario: &Scenario,
    arrivals: &[model::Arrival],
    // Owned: a `BoxCloneService` is `Send` but not `Sync`, so the future
    // must not hold a reference to one across an await.
    clients: Vec<Client>,
    recorder: &Recorder,
    set_workers: impl Fn(usize) + Send + 'static,
) {
    let start = recorder.start();
    let (low, full) = (scenario.trigger_workers, scenario.workers);
    let (down, up) = (
        start + scenario.trigger_start,
        start + scenario.trigger_end(),
    );
    let trigger = tokio::spawn(async move {
        tokio::time::sleep_until(down).await;
        set_workers(low);
        tokio::time::sleep_until(up).await;
        set_workers(full);
    });
    let open = Arc::new((AtomicUsize::new(0), Notify::new()));
    for arrival in arrivals {
        let at = start + arrival.at;
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        let Some(client) = clients.get(arrival.client) else {
            continue;
        };
        let client = client.clone();
        let recorder = recorder.clone();
        let open = open.clone();
        open.0.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let started = recorder.offered();
            let ok = matches!(client.oneshot(echo_request()).await, Ok(Code::Ok));
            recorder.finished(started, ok);
            if open.0.fetch_sub(1, Ordering::AcqRel) == 1 {
                open.1.notify_one();
            }
        });
    }
    let _ = trigger.await;
    // Every call ends by its deadline; the bound only guards against a bug.
    let _ = tokio::time::timeout(scenario.deadline * 10, async {
        while open.0.load(Ordering::Acquire) > 0 {
            open.1.notified().await;
        }
    })
    .await;
}

/// One mode's run: the clients' record and the server's.
#[derive(Debug, Clone)]
pub struct Run {
    /// The mode.
    pub mode: Mode,
    /// The clients' buckets.
    pub calls: Vec<CallBucket>,
    /// The server's buckets (the real server: only `max_queue`, sampled).
    pub server: Vec<ServerBucket>,
    /// The server's mean service time (busy time ÷ work done).
    pub measured_service: Duration,
    /// How late the real server's workers woke, on average per piece of
    /// work (zero in virtual time).
    pub late: Duration,
}

/// Runs `scenario` under `mode` in virtual time: a current-thread runtime
/// with its clock paused, so that tokio jumps from one event to the next.
pub fn simulate(scenario: &Scenario, mode: Mode) -> Run {
    simulate_with(scenario, mode, Jitter::Proportional)
}

/// [`simulate`] with another jitter.
pub fn simulate_with(scenario: &Scenario, mode: Mode, jitter: Jitter) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let arrivals = model::poisson_arrivals(
        scenario.rate(),
        scenario.duration,
        scenario.clients,
        scenario.seed,
    );
    runtime.block_on(async {
        // The layers' jitter draws from this thread's generator.
        fastrand::seed(scenario.seed);
        let server = ServerModel::new(scenario);
        let recorder = Recorder::new(scenario.bucket);
        let clients: Vec<Client> = (0..scenario.clients)
            .map(|_| client(server.clone(), mode, jitter, scenario, &recorder))
            .collect();
        let control = server.clone();
        drive(scenario, &arrivals, clients, &recorder, move |w| {
            control.set_workers(w)
        })
        .await;
        let finished: u64 = server.buckets().iter().map(|b| b.finished).sum();
        Run {
            mode,
            calls: recorder.buckets(),
            server: server.buckets(),
            measured_service: server.busy_time() / u32::try_from(finished.max(1)).unwrap_or(1),
            late: Duration::ZERO,
        }
    })
}

/// Runs `scenario` under every mode in `modes` at once, in real time: one
/// real test server per mode with the same capacity model, one tonic
/// `Channel` (its own TCP connection) per client.
pub fn real(scenario: &Scenario, modes: &[Mode]) -> Vec<Run> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let arrivals = model::poisson_arrivals(
        scenario.rate(),
        scenario.duration,
        scenario.clients,
        scenario.seed,
    );
    runtime.block_on(async {
        let mut servers = Vec::new();
        let mut setups = Vec::new();
        for &mode in modes {
            let capacity = Capacity::new(CapacityConfig {
                workers: scenario.workers,
                queue_limit: scenario.queue_limit,
                service_time: ServiceTime::Exponential {
                    mean: scenario.mean_service,
                },
                finish_abandoned: scenario.finish_abandoned,
                seed: scenario.seed ^ 0x5eed_5e41,
            });
            let server = TestServer::builder()
                .capacity(capacity.clone())
                .start()
                .await
                .expect("test server");
            let mut channels = Vec::new();
            for _ in 0..scenario.clients {
                let channel = tonic::transport::Endpoint::from_shared(server.uri())
                    .expect("uri")
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .expect("connect");
                channels.push(channel);
            }
            servers.push(server);
            setups.push((mode, capacity, channels));
        }
        // Every mode starts together, so that they share the machine alike.
        let mut runs = Vec::new();
        for (mode, capacity, channels) in setups {
            let scenario = scenario.clone();
            let arrivals = arrivals.clone();
            runs.push(tokio::spawn(async move {
                let recorder = Recorder::new(scenario.bucket);
                let clients: Vec<Client> = channels
                    .into_iter()
                    .map(|channel| {
                        client(channel, mode, Jitter::Proportional, &scenario, &recorder)
                    })
                    .collect();
                let sampler =
                    QueueSampler::start(capacity.clone(), recorder.start(), scenario.bucket);
                let control = capacity.clone();
                drive(&scenario, &arrivals, clients, &recorder, move |w| {
                    control.set_workers(w)
                })
                .await;
                let max_queue = sampler.stop();
                let stats = capacity.stats();
                Run {
                    mode,
                    calls: recorder.buckets(),
                    server: max_queue,
                    measured_service: stats.busy
                        / u32::try_from(stats.finished.max(1)).unwrap_or(1),
                    late: stats.late / u32::try_from(stats.finished.max(1)).unwrap_or(1),
                }
            }));
        }
        let mut out = Vec::new();
        for run in runs {
            out.push(run.await.expect("real run"));
        }
        for server in servers {
            server.shutdown().await;
        }
        out
    })
}

/// The real server's queue, sampled every 5 ms: the longest per bucket.
struct QueueSampler {
    task: tokio::task::JoinHandle<()>,
    samples: Arc<std::sync::Mutex<Vec<ServerBucket>>>,
}

impl QueueSampler {
    fn start(capacity: Capacity, start: Instant, bucket: Duration) -> QueueSampler {
        let samples = Arc::new(std::sync::Mutex::new(Vec::<ServerBucket>::new()));
        let into = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tick.tick().await;
                let index = (start.elapsed().as_nanos() / bucket.as_nanos().max(1)) as usize;
                let queued = capacity.queue_len();
                let mut samples = into.lock().unwrap_or_else(|e| e.into_inner());
                if samples.len() <= index {
                    samples.resize(index + 1, ServerBucket::default());
                }
                samples[index].max_queue = samples[index].max_queue.max(queued);
            }
        });
        QueueSampler { task, samples }
    }

    fn stop(self) -> Vec<ServerBucket> {
        self.task.abort();
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
