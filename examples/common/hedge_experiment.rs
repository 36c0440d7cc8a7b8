//! The hedging experiment shared by `examples/demo.rs` and
//! `benches/hedging.rs`: the test server answers 10 % of attempts after
//! 200 ms and the rest at once; unary calls run without hedging, then with
//! hedging (delay ≈ the unhedged p90, max attempts 2).
//!
//! Which attempts are slow is drawn per attempt from a seeded generator, so
//! both runs face the same first attempts.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic::transport::Channel;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer, set_script};
use tonic_retry::{HedgingPolicy, RetryLayer};
use tower::ServiceBuilder;

/// Latency quantiles and load of one run.
#[derive(Debug, Clone, Copy)]
pub struct TailReport {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Attempts the server received per call.
    pub load: f64,
}

pub const SLOW: Duration = Duration::from_millis(200);
const SLOW_PROBABILITY: f64 = 0.1;
const CONCURRENCY: usize = 32;

/// Runs `calls` unary calls, `CONCURRENCY` at a time, through `layer` (or
/// none) and reports latency quantiles and load.
pub async fn run(
    server: &TestServer,
    channel: &Channel,
    layer: Option<RetryLayer>,
    calls: usize,
    seed: u64,
    label: &str,
) -> TailReport {
    let mut rng = fastrand::Rng::with_seed(seed);
    // Two actions per call: the first attempt's and the hedge's.
    let scripts: Vec<[FaultAction; 2]> = (0..calls)
        .map(|_| {
            let mut action = || {
                if rng.f64() < SLOW_PROBABILITY {
                    FaultAction::ok().delay(SLOW)
                } else {
                    FaultAction::ok()
                }
            };
            [action(), action()]
        })
        .collect();
    let before = server.total_attempts();
    let mut latencies = Vec::with_capacity(calls);
    for chunk in scripts.chunks(CONCURRENCY).enumerate() {
        let (batch, scripts) = chunk;
        let tasks: Vec<_> = scripts
            .iter()
            .enumerate()
            .map(|(i, script)| {
                let channel = channel.clone();
                let layer = layer.clone();
                let mut request = tonic::Request::new(EchoRequest::default());
                let id = format!("{label}-{}", batch * CONCURRENCY + i);
                set_script(&mut request, &id, script).expect("ASCII call id");
                tokio::spawn(async move {
                    let start = Instant::now();
                    let result = match layer {
                        Some(layer) => {
                            EchoClient::new(ServiceBuilder::new().layer(layer).service(channel))
                                .unary(request)
                                .await
                        }
                        None => EchoClient::new(channel).unary(request).await,
                    };
                    // The whole status, not just its code: a rare failure
                    // under load should say what it was.
                    (start.elapsed(), result.map(drop))
                })
            })
            .collect();
        for task in tasks {
            let (elapsed, result) = task.await.expect("call task");
            if let Err(status) = result {
                panic!("every call succeeds, but {label} call failed: {status:?}");
            }
            latencies.push(elapsed);
        }
    }
    latencies.sort();
    let quantile = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1e3
    };
    TailReport {
        p50_ms: quantile(0.50),
        p90_ms: quantile(0.90),
        p99_ms: quantile(0.99),
        p999_ms: quantile(0.999),
        load: (server.total_attempts() - before) as f64 / calls as f64,
    }
}

/// The hedging delay for a run whose unhedged latencies gave `baseline`:
/// about its p90, but never inside the slow mode (when 10 % of calls are
/// slow, the empirical p90 can land on either side of the gap).
pub fn hedging_delay(baseline: &TailReport) -> Duration {
    let p90 = Duration::from_secs_f64(baseline.p90_ms / 1e3);
    if p90 < SLOW / 2 {
        p90.max(Duration::from_millis(1))
    } else {
        Duration::from_millis(5)
    }
}

/// The hedging layer for the experiment.
pub fn hedging_layer(delay: Duration) -> RetryLayer {
    RetryLayer::hedging(HedgingPolicy {
        max_attempts: 2,
        hedging_delay: delay,
        non_fatal_codes: [Code::Unavailable].into_iter().collect(),
        per_attempt_timeout: None,
    })
}

/// Runs both modes and prints a table; returns (without, with).
pub async fn compare(
    server: &TestServer,
    channel: &Channel,
    calls: usize,
) -> (TailReport, TailReport) {
    let without = run(server, channel, None, calls, 42, "nohedge").await;
    let delay = hedging_delay(&without);
    let with = run(
        server,
        channel,
        Some(hedging_layer(delay)),
        calls,
        42,
        "hedge",
    )
    .await;
    println!(
        "{:<32} {:>9} {:>9} {:>10} {:>7}",
        "", "p50 ms", "p99 ms", "p99.9 ms", "load"
    );
    for (name, r) in [
        ("without hedging".to_string(), without),
        (format!("hedging (2 attempts, {delay:?})"), with),
    ] {
        println!(
            "{name:<32} {:>9.2} {:>9.2} {:>10.2} {:>7.3}",
            r.p50_ms, r.p99_ms, r.p999_ms, r.load
        );
    }
    println!(
        "p99 improvement: {:.1}x at {:.3} attempts per call",
        without.p99_ms / with.p99_ms,
        with.load
    );
    (without, with)
}
