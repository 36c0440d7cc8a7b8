//! The fleet simulator's world, apart from the layer under test: the
//! scenario, the server model, the load generator and the per-bucket
//! record, with the arithmetic that turns a record into the figures the
//! bench reports.
//!
//! Everything here runs on tokio's clock, so under `tokio::time::pause()` a
//! simulated minute costs only the work of its events. `tests/storm_model.rs`
//! includes this file (`#[path]`) and checks its arithmetic: the server's
//! capacity and queueing, the load generator's Poisson rate, and the
//! summaries.
//!
//! The server model is a tower service, like a tonic `Channel`: each
//! attempt joins a FIFO queue in front of `workers` workers, holds a worker
//! for an exponentially distributed service time (whole milliseconds, the
//! resolution of tokio's timer) and is answered with a Trailers-Only OK; an
//! attempt that finds the queue full is answered UNAVAILABLE at once. Work
//! runs in tasks of its own, so by default it is done even when the caller
//! has given up (the attempt timed out): the wasted work that sustains a
//! real retry storm. `src/testing/capacity.rs` implements the same rule for
//! the real test server; the bench compares the two (the validation).
#![allow(dead_code)] // Each includer (the bench, the tests) uses its part.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;

/// One experiment: the fleet, the server, the load and the trigger.
///
/// `at_scale(s)` is `20 × s` clients against a server of `2 × s` workers and
/// a queue of `40 × s`: every client offers the same load at every scale,
/// and the queue holds the same time's worth of work (0.4 s at full
/// capacity), so the small real run and the fleet differ only in size.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Independent clients, each with its own layer.
    pub clients: usize,
    /// The server's workers at full capacity.
    pub workers: usize,
    /// Attempts that may wait for a worker; one more is refused.
    pub queue_limit: usize,
    /// The mean of the exponential service time.
    pub mean_service: Duration,
    /// Offered load, as a share of full capacity.
    pub load: f64,
    /// Each attempt's timeout (the policy's `per_attempt_timeout`).
    pub attempt_timeout: Duration,
    /// Each call's deadline (the policy's `timeout`).
    pub deadline: Duration,
    /// Arrivals run from 0 to this.
    pub duration: Duration,
    /// When the capacity drops.
    pub trigger_start: Duration,
    /// How long it stays down.
    pub trigger_len: Duration,
    /// The workers while it is down.
    pub trigger_workers: usize,
    /// The width of a record bucket.
    pub bucket: Duration,
    /// Finish the work of an attempt whose caller has gone.
    pub finish_abandoned: bool,
    /// Seed of the arrivals, the service times and the layers' jitter.
    pub seed: u64,
}

impl Scenario {
    /// `20 × scale` clients at 70 % of a `2 × scale`-worker server (20 ms
    /// mean service: 100 × scale calls/s), 200 ms attempt timeout, 1 s
    /// deadline, a simulated minute whose capacity halves from 10 s to 15 s.
    pub fn at_scale(scale: usize) -> Scenario {
        Scenario {
            clients: 20 * scale,
            workers: 2 * scale,
            queue_limit: 40 * scale,
            mean_service: Duration::from_millis(20),
            load: 0.7,
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(1),
            duration: Duration::from_secs(60),
            trigger_start: Duration::from_secs(10),
            trigger_len: Duration::from_secs(5),
            trigger_workers: scale,
            bucket: Duration::from_millis(250),
            finish_abandoned: true,
            seed: 1,
        }
    }

    /// Calls per second the server completes at full capacity.
    pub fn capacity(&self) -> f64 {
        self.workers as f64 / self.mean_service.as_secs_f64()
    }

    /// Calls per second offered, all clients together.
    pub fn rate(&self) -> f64 {
        self.load * self.capacity()
    }

    /// When the capacity returns.
    pub fn trigger_end(&self) -> Duration {
        self.trigger_start + self.trigger_len
    }

    /// The bucket that time `at` (since the start) falls in.
    pub fn bucket_of(&self, at: Duration) -> usize {
        (at.as_nanos() / self.bucket.as_nanos().max(1)) as usize
    }

    /// Buckets of arrivals: `duration` rounded up to whole buckets.
    pub fn arrival_buckets(&self) -> usize {
        self.bucket_of(self.duration.saturating_sub(Duration::from_nanos(1))) + 1
    }
}

/// One service time: exponential with `mean`, from `random` uniform in
/// `[0, 1)`, rounded to whole milliseconds (tokio's timer would round a
/// sleep up to the next millisecond; rounding the draw keeps the mean).
pub fn service_time(mean: Duration, random: f64) -> Duration {
    let u = random.clamp(0.0, 1.0 - f64::EPSILON);
    let ms = (-mean.as_secs_f64() * (1.0 - u).ln() * 1e3).round();
    Duration::from_millis(if ms.is_finite() { ms as u64 } else { 0 })
}

/// A call's arrival: when (since the start), and at which client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Time since the start of the run.
    pub at: Duration,
    /// The client that makes the call.
    pub client: usize,
}

/// Open-loop Poisson arrivals at `rate` per second over `[0, until)`, each
/// at a client drawn uniformly: the same as every client running its own
/// Poisson process at `rate / clients` (splitting a Poisson process at
/// random gives independent Poisson processes).
pub fn poisson_arrivals(rate: f64, until: Duration, clients: usize, seed: u64) -> Vec<Arrival> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity((rate * until.as_secs_f64() * 1.1) as usize + 16);
    // A rate that is NaN, zero or negative offers nothing.
    if rate.is_nan() || rate <= 0.0 || clients == 0 {
        return out;
    }
    let mut t = 0.0f64;
    let end = until.as_secs_f64();
    loop {
        // Exponential gaps: -ln(1 - u) / rate for u in [0, 1).
        t += -(1.0 - rng.f64()).ln() / rate;
        if t >= end {
            return out;
        }
        out.push(Arrival {
            at: Duration::from_secs_f64(t),
            client: rng.usize(..clients),
        });
    }
}

/// What the server saw in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerBucket {
    /// Attempts that arrived.
    pub arrived: u64,
    /// Of those, refused at once (queue full).
    pub rejected: u64,
    /// The longest the queue was.
    pub max_queue: usize,
    /// Work finished in this bucket.
    pub finished: u64,
    /// Of that, work whose caller had gone.
    pub wasted: u64,
}

/// The server model: `workers` workers, a FIFO queue of `queue_limit`, an
/// exponential service time; a tower service answering Trailers-Only
/// responses. Clones share one server.
#[derive(Clone)]
pub struct ServerModel {
    shared: Arc<ServerShared>,
}

struct ServerShared {
    start: Instant,
    bucket: Duration,
    mean_service: Duration,
    queue_limit: usize,
    finish_abandoned: bool,
    state: Mutex<ServerState>,
}

struct ServerState {
    workers: usize,
    busy: usize,
    /// Each queued attempt's answer; a closed one's caller has gone.
    queue: VecDeque<oneshot::Sender<()>>,
    rng: fastrand::Rng,
    buckets: Vec<ServerBucket>,
    busy_time: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ServerModel {
    /// The server of `scenario`, at full capacity, its buckets counted from
    /// now.
    pub fn new(scenario: &Scenario) -> ServerModel {
        ServerModel {
            shared: Arc::new(ServerShared {
                start: Instant::now(),
                bucket: scenario.bucket,
                mean_service: scenario.mean_service,
                queue_limit: scenario.queue_limit,
                finish_abandoned: scenario.finish_abandoned,
                state: Mutex::new(ServerState {
                    workers: scenario.workers,
                    busy: 0,
                    queue: VecDeque::new(),
                    // Not the arrivals' seed: the two streams stay apart.
                    rng: fastrand::Rng::with_seed(scenario.seed ^ 0x5eed_5e41),
                    buckets: Vec::new(),
                    busy_time: Duration::ZERO,
                }),
            }),
        }
    }

    /// Changes the number of workers from now on (work in service goes on).
    pub fn set_workers(&self, workers: usize) {
        let mut state = lock(&self.shared.state);
        state.workers = workers;
        dispatch(&self.shared, &mut state);
    }

    /// Attempts waiting now.
    pub fn queue_len(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    /// Attempts in service now.
    pub fn busy(&self) -> usize {
        lock(&self.shared.state).busy
    }

    /// The record so far, one entry per bucket since the start.
    pub fn buckets(&self) -> Vec<ServerBucket> {
        lock(&self.shared.state).buckets.clone()
    }

    /// Total time workers were busy.
    pub fn busy_time(&self) -> Duration {
        lock(&self.shared.state).busy_time
    }

    /// Takes a place in the queue: `None` if the queue is full (counted as
    /// refused), else the receiver of the answer.
    fn enqueue(&self) -> Option<oneshot::Receiver<()>> {
        let shared = &self.shared;
        let mut state = lock(&shared.state);
        let index = bucket_index(shared);
        let full = state.queue.len() >= shared.queue_limit && state.busy >= state.workers;
        {
            let b = bucket(&mut state.buckets, index);
            b.arrived += 1;
            if full {
                b.rejected += 1;
                return None;
            }
        }
        let (tx, rx) = oneshot::channel();
        state.queue.push_back(tx);
        dispatch(shared, &mut state);
        let queued = state.queue.len();
        let b = bucket(&mut state.buckets, index);
        b.max_queue = b.max_queue.max(queued);
        Some(rx)
    }
}

fn bucket_index(shared: &ServerShared) -> usize {
    let since = Instant::now().saturating_duration_since(shared.start);
    (since.as_nanos() / shared.bucket.as_nanos().max(1)) as usize
}

fn bucket(buckets: &mut Vec<ServerBucket>, index: usize) -> &mut ServerBucket {
    if buckets.len() <= index {
        buckets.resize(index + 1, ServerBucket::default());
    }
    &mut buckets[index]
}

/// Starts queued work on every idle worker, oldest first.
fn dispatch(shared: &Arc<ServerShared>, state: &mut ServerState) {
    while state.busy < state.workers {
        let Some(answer) = state.queue.pop_front() else {
            return;
        };
        if !shared.finish_abandoned && answer.is_closed() {
            continue;
        }
        state.busy += 1;
        let time = service_time(shared.mean_service, state.rng.f64());
        tokio::spawn(serve(shared.clone(), answer, time));
    }
}

/// One attempt's work: `time` on a worker (cut short when its caller has
/// gone, unless abandoned work is finished), then the next queued attempt.
async fn serve(shared: Arc<ServerShared>, mut answer: oneshot::Sender<()>, time: Duration) {
    let start = Instant::now();
    if shared.finish_abandoned {
        tokio::time::sleep(time).await;
    } else {
        tokio::select! {
            biased;
            () = tokio::time::sleep(time) => {}
            () = answer.closed() => {}
        }
    }
    let mut state = lock(&shared.state);
    state.busy -= 1;
    state.busy_time += start.elapsed();
    let index = bucket_index(&shared);
    let wasted = answer.is_closed();
    let b = bucket(&mut state.buckets, index);
    b.finished += 1;
    b.wasted += u64::from(wasted);
    dispatch(&shared, &mut state);
    drop(state);
    let _ = answer.send(());
}

/// A Trailers-Only response with `code`.
pub fn trailers_only(code: Code) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    response
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl tower::Service<http::Request<Body>> for ServerModel {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Answer {
        // The request is read at once: the model's work is the service time.
        drop(request);
        match self.enqueue() {
            None => Box::pin(std::future::ready(Ok(trailers_only(Code::Unavailable)))),
            Some(answer) => Box::pin(async move {
                Ok(match answer.await {
                    Ok(()) => trailers_only(Code::Ok),
                    // Only when the runtime drops the work at the end.
                    Err(_) => trailers_only(Code::Unavailable),
                })
            }),
        }
    }
}

/// What the clients saw in one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallBucket {
    /// Calls started in the bucket.
    pub offered: u64,
    /// Attempts sent in the bucket (what the server had to take).
    pub attempts: u64,
    /// Calls started in the bucket that succeeded.
    pub succeeded: u64,
    /// Calls started in the bucket that failed.
    pub failed: u64,
    /// Successes that completed in the bucket (goodput as a rate).
    pub completed_ok: u64,
}

/// The clients' record, per bucket; clones share it. Calls are counted in
/// the bucket they started in (so a bucket's success ratio is "of the calls
/// offered then, how many succeeded"); attempts in the bucket they were
/// sent in.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    bucket: Duration,
    buckets: Arc<Mutex<Vec<CallBucket>>>,
}

impl Recorder {
    /// An empty record whose bucket 0 starts now.
    pub fn new(bucket: Duration) -> Recorder {
        Recorder {
            start: Instant::now(),
            bucket,
            buckets: Arc::default(),
        }
    }

    /// When bucket 0 starts.
    pub fn start(&self) -> Instant {
        self.start
    }

    fn update(&self, at: Instant, f: impl FnOnce(&mut CallBucket)) {
        let since = at.saturating_duration_since(self.start);
        let index = (since.as_nanos() / self.bucket.as_nanos().max(1)) as usize;
        let mut buckets = lock(&self.buckets);
        if buckets.len() <= index {
            buckets.resize(index + 1, CallBucket::default());
        }
        f(&mut buckets[index]);
    }

    /// A call starts now.
    pub fn offered(&self) -> Instant {
        let now = Instant::now();
        self.update(now, |b| b.offered += 1);
        now
    }

    /// An attempt is sent now.
    pub fn attempt(&self) {
        self.update(Instant::now(), |b| b.attempts += 1);
    }

    /// The call that started at `started` ended now, successfully or not.
    pub fn finished(&self, started: Instant, ok: bool) {
        self.update(started, |b| {
            if ok {
                b.succeeded += 1;
            } else {
                b.failed += 1;
            }
        });
        if ok {
            self.update(Instant::now(), |b| b.completed_ok += 1);
        }
    }

    /// The record so far.
    pub fn buckets(&self) -> Vec<CallBucket> {
        lock(&self.buckets).clone()
    }
}

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Attempts ÷ offered calls, over the trigger.
    pub mean_amplification: f64,
    /// The highest bucket's attempts ÷ offered calls during the trigger.
    pub peak_amplification: f64,
    /// Attempts ÷ offered calls from the trigger's end to the last arrival.
    pub after_amplification: f64,
    /// Successful ÷ offered calls, of the calls offered during the trigger.
    pub goodput: f64,
    /// Successful ÷ offered calls before the trigger (the baseline).
    pub baseline_success: f64,
    /// Time from the trigger's end to the first bucket from which the
    /// calls succeed at least 95 % of the time for [`HOLD`]; `None` if that
    /// never happens before the last arrival.
    pub recovery: Option<Duration>,
}

/// The success ratio a bucket needs to count as recovered.
pub const RECOVERED: f64 = 0.95;

/// How long success must hold to count as recovered. Not "until the end of
/// the run": at 20 clients and two workers a queue at 70 % load fails a
/// few calls in a row now and then (0.3 % of them at random), and one such
/// bucket at the end of a run would otherwise undo a recovery that held
/// for seconds.
pub const HOLD: Duration = Duration::from_secs(3);

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The figures of `calls` (a record of `scenario`).
pub fn summarize(scenario: &Scenario, calls: &[CallBucket]) -> Summary {
    let at = |i: usize| calls.get(i).copied().unwrap_or_default();
    let first = scenario.bucket_of(scenario.trigger_start);
    let end = scenario.bucket_of(scenario.trigger_end());
    let last = scenario.arrival_buckets();
    let sum = |range: std::ops::Range<usize>| {
        range.fold(CallBucket::default(), |mut acc, i| {
            let b = at(i);
            acc.offered += b.offered;
            acc.attempts += b.attempts;
            acc.succeeded += b.succeeded;
            acc.failed += b.failed;
            acc
        })
    };
    let trigger = sum(first..end);
    let after = sum(end..last);
    let before = sum(0..first);
    let peak_amplification = (first..end)
        .map(|i| ratio(at(i).attempts, at(i).offered))
        .fold(0.0, f64::max);
    // The earliest bucket from which HOLD's worth of buckets (or all that
    // are left, if fewer) are recovered; an empty bucket (no call offered)
    // does not count against.
    let good = |i: usize| {
        let b = at(i);
        b.offered == 0 || ratio(b.succeeded, b.succeeded + b.failed) >= RECOVERED
    };
    let hold = (HOLD.as_nanos().div_ceil(scenario.bucket.as_nanos().max(1)) as usize)
        .clamp(1, last.saturating_sub(end).max(1));
    let recovery = (end..last.max(end + 1))
        .take_while(|&k| k + hold <= last.max(end + 1))
        .find(|&k| (k..k + hold).all(good))
        .map(|from| {
            (scenario.bucket * from as u32)
                .checked_sub(scenario.trigger_end())
                .unwrap_or_default()
        });
    Summary {
        mean_amplification: ratio(trigger.attempts, trigger.offered),
        peak_amplification,
        after_amplification: ratio(after.attempts, after.offered),
        goodput: ratio(trigger.succeeded, trigger.offered),
        baseline_success: ratio(before.succeeded, before.offered),
        recovery,
    }
}
