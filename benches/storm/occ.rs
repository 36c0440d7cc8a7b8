//! Which jitter, on contention: AWS's "Exponential Backoff And Jitter"
//! model, in virtual time, with the real layer doing the backoff.
//!
//! One row with a version number. `N` clients all start at t = 0; each
//! reads the version, then writes it back conditionally, once: a write whose
//! version is stale fails with ABORTED, and the client backs off and starts
//! again with a fresh read. Every message (read request, read reply, write
//! request, write reply) takes `|N(10 ms, 2 ms)|` one way. One attempt
//! through the layer is the whole read-then-write exchange, played by the
//! mock inner service [`Store`], so the layer's retry is the fresh start.
//! Retry `n` waits `min(2 s, 5 ms × 2^n)` under the jitter studied
//! (`initial_backoff` 10 ms, multiplier 2, `max_backoff` 2 s);
//! decorrelated starts from a previous wait of 5 ms. The attempt cap is
//! raised so no client gives up. "Server calls" counts conditional writes;
//! a run ends when the last client has its write's reply.
//!
//! Time is scaled: one model millisecond is [`SCALE`] / 1000 virtual
//! seconds. tokio's timer rounds every wait up to a whole millisecond; at
//! 10 ms per message that would bunch the messages onto 1 ms ticks and
//! create ties the continuous model does not have. Scaled, a tick is a
//! microsecond of model time. The layer's arithmetic is the same at any
//! scale (the policy below is scaled with it), and a paused clock makes
//! virtual seconds free.
#![allow(dead_code)] // Each includer (the bench, the tests) uses its part.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tonic_retry::{Jitter, RetryLayer, RetryPolicy};
use tower::{Layer, Service, ServiceExt};

/// Virtual milliseconds per model millisecond.
pub const SCALE: u32 = 1000;

/// A model duration of `ms` milliseconds, in virtual time.
pub fn model_ms(ms: f64) -> Duration {
    Duration::from_secs_f64(ms * 1e-3 * f64::from(SCALE))
}

/// A virtual duration, in model milliseconds.
pub fn to_model_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3 / f64::from(SCALE)
}

/// The backoff studied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Retry at once.
    NoBackoff,
    /// `min(2 s, 5 ms × 2^n)`, no jitter.
    Exponential,
    /// The same, × U[0.8, 1.2) (gRFC A6).
    A6,
    /// The same, `v/2 + U[0, v/2)`.
    Equal,
    /// The same, × U[0, 1).
    Full,
    /// `min(2 s, U[5 ms, 3 × previous))`, from a previous wait of 5 ms.
    Decorrelated,
}

impl Kind {
    /// Every kind, in the order of the tables.
    pub const ALL: [Kind; 6] = [
        Kind::NoBackoff,
        Kind::Exponential,
        Kind::A6,
        Kind::Equal,
        Kind::Full,
        Kind::Decorrelated,
    ];

    /// The name in `RESULT` lines and tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NoBackoff => "none",
            Kind::Exponential => "exponential",
            Kind::A6 => "a6",
            Kind::Equal => "equal",
            Kind::Full => "full",
            Kind::Decorrelated => "decorrelated",
        }
    }

    /// The layer's policy for this kind, in virtual time.
    pub fn policy(self) -> RetryPolicy {
        let builder = RetryPolicy::builder()
            // No client gives up.
            .max_attempts(u32::MAX)
            .max_attempts_cap(u32::MAX)
            .backoff_multiplier(2.0)
            .initial_backoff(model_ms(10.0))
            .max_backoff(model_ms(2000.0));
        let builder = match self {
            // The shortest wait a policy can hold (1 ns of virtual time,
            // which tokio's timer makes 1 µs of model time): no backoff.
            Kind::NoBackoff => builder
                .initial_backoff(Duration::from_nanos(1))
                .max_backoff(Duration::from_nanos(1))
                .backoff_multiplier(1.0)
                .jitter(Jitter::None),
            Kind::Exponential => builder.jitter(Jitter::None),
            Kind::A6 => builder.jitter(Jitter::Proportional),
            Kind::Equal => builder.jitter(Jitter::Equal),
            Kind::Full => builder.jitter(Jitter::Full),
            Kind::Decorrelated => builder
                .initial_backoff(model_ms(5.0))
                .jitter(Jitter::Decorrelated),
        };
        builder.build().expect("valid policy")
    }
}

/// How long one message takes, one way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delay {
    /// `|N(mean, sd)|` model milliseconds: the AWS model.
    Normal {
        /// The mean, in model milliseconds.
        mean: f64,
        /// The standard deviation, in model milliseconds.
        sd: f64,
    },
    /// Always this many model milliseconds (for tests).
    Fixed(f64),
}

impl Delay {
    /// The AWS model's delay: `|N(10 ms, 2 ms)|`.
    pub const AWS: Delay = Delay::Normal {
        mean: 10.0,
        sd: 2.0,
    };

    /// One delay, in virtual time, from `rng`.
    pub fn draw(self, rng: &mut fastrand::Rng) -> Duration {
        match self {
            Delay::Fixed(ms) => model_ms(ms),
            Delay::Normal { mean, sd } => {
                // Box–Muller: one standard normal from two uniforms.
                let (u1, u2) = (rng.f64(), rng.f64());
                let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                model_ms((mean + sd * z).abs())
            }
        }
    }
}

/// The row and its counters, shared by every client of a run.
pub struct Row {
    version: AtomicU64,
    writes: AtomicU64,
    delay: Delay,
    rng: Mutex<fastrand::Rng>,
}

impl Row {
    /// A row at version 0, whose messages take `delay`, drawn from `seed`.
    pub fn new(delay: Delay, seed: u64) -> Arc<Row> {
        Arc::new(Row {
            version: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            delay,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        })
    }

    /// The version: how many writes succeeded.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Conditional writes made ("server calls").
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    fn delay(&self) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        self.delay.draw(&mut rng)
    }
}

/// One client's view of the row, as the layer's inner service: each call
/// is a whole read-then-conditional-write exchange, answered Trailers-Only
/// OK (written) or ABORTED (stale).
#[derive(Clone)]
pub struct Store {
    row: Arc<Row>,
}

impl Store {
    /// A client of `row`.
    pub fn new(row: Arc<Row>) -> Store {
        Store { row }
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl Service<http::Request<Body>> for Store {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<Body>) -> Answer {
        let row = self.row.clone();
        Box::pin(async move {
            // Read request out, then the server reads the version.
            tokio::time::sleep(row.delay()).await;
            let seen = row.version();
            // Read reply back, then the write request out.
            let (back, out) = (row.delay(), row.delay());
            tokio::time::sleep(back + out).await;
            row.writes.fetch_add(1, Ordering::AcqRel);
            let written = row
                .version
                .compare_exchange(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            // Write reply back.
            tokio::time::sleep(row.delay()).await;
            let code = if written { Code::Ok } else { Code::Aborted };
            let mut response = http::Response::new(Body::empty());
            response
                .headers_mut()
                .insert("grpc-status", HeaderValue::from(code as i32));
            Ok(response)
        })
    }
}

/// One run's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Race {
    /// When the last client had its write's reply, in model milliseconds.
    pub completion_ms: f64,
    /// Conditional writes made.
    pub calls: u64,
    /// Writes that succeeded: the row's final version.
    pub written: u64,
    /// Clients whose call did not end OK (0 unless a client gave up).
    pub failed: usize,
}

/// One run: `n` clients, each with its own layer of `policy`, race to
/// write the row once. Call it on a runtime whose clock is paused.
pub async fn race(n: usize, policy: &RetryPolicy, delay: Delay, seed: u64) -> Race {
    // The layers' jitter draws from this thread's generator.
    fastrand::seed(seed);
    let row = Row::new(delay, seed ^ 0x0cc0_0cc0);
    let start = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = RetryLayer::new(policy.clone()).layer(Store::new(row.clone()));
        clients.spawn(async move {
            let request = http::Request::new(Body::empty());
            let ok = match client.oneshot(request).await {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|v| v == "0"),
                Err(_) => false,
            };
            (ok, Instant::now())
        });
    }
    let mut end = start;
    let mut failed = 0;
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok((ok, at)) => {
                end = end.max(at);
                failed += usize::from(!ok);
            }
            Err(_) => failed += 1,
        }
    }
    Race {
        completion_ms: to_model_ms(end - start),
        calls: row.writes(),
        written: row.version(),
        failed,
    }
}

/// The means over a batch of races.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mean {
    /// Mean completion time, model milliseconds.
    pub completion_ms: f64,
    /// Mean conditional writes.
    pub calls: f64,
    /// Clients that did not write, all runs together (0 unless one gave up).
    pub failed: usize,
}

/// The mean of `runs` races of `n` clients under `kind` (each run its own
/// seed), on a current-thread runtime with its clock paused.
pub fn mean_of_runs(kind: Kind, n: usize, runs: u64) -> Mean {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("tokio runtime");
    let policy = kind.policy();
    let (mut completion, mut calls, mut failed) = (0.0, 0u64, 0);
    for run in 1..=runs {
        let race = runtime.block_on(race(n, &policy, Delay::AWS, run * 7919 + n as u64));
        completion += race.completion_ms;
        calls += race.calls;
        failed += race.failed;
    }
    let runs = runs.max(1) as f64;
    Mean {
        completion_ms: completion / runs,
        calls: calls as f64 / runs,
        failed,
    }
}
