//! End to end over loopback: the generated `EchoClient` on a raw `Channel`
//! versus the same `Channel` under `RetryLayer`, against the in-process
//! `TestServer`, on the happy path (no retry happens).
//!
//! ```text
//! cargo bench --bench e2e
//! BENCH_QUICK=1 cargo bench --bench e2e
//! ```
//!
//! Unary calls with a 64-byte payload at concurrency 1 (one task calling in
//! a loop) and 64 (64 tasks sharing clones of one client). Both clients use
//! clones of one connected `Channel`, so they share the connection. Each
//! round times a batch of calls through both clients, raw and layered
//! back to back, alternating which goes first (raw, layer, layer, raw, ...)
//! so that drift in load hits both alike; the figure is the median over
//! rounds of layer ÷ raw.

mod common;

use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic_retry::testing::TestServer;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::{Retry, RetryLayer, RetryPolicy};
use tower::Layer;

fn request() -> EchoRequest {
    EchoRequest {
        payload: vec![7; 64],
        text: String::new(),
    }
}

/// Runs `calls` unary calls spread over `concurrency` tasks, each with its
/// own clone of `client`; returns the wall time.
async fn batch<T>(client: &EchoClient<T>, concurrency: usize, calls: usize) -> Duration
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic_retry::BoxError> + Send,
    T::Error: Into<tonic_retry::BoxError>,
{
    let per_task = calls / concurrency;
    let start = Instant::now();
    if concurrency == 1 {
        let mut client = client.clone();
        for _ in 0..per_task {
            client.unary(request()).await.expect("unary call");
        }
    } else {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let mut client = client.clone();
            tasks.spawn(async move {
                for _ in 0..per_task {
                    client.unary(request()).await.expect("unary call");
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.expect("task");
        }
    }
    start.elapsed()
}

struct Outcome {
    ratio: f64,
    ratios: Vec<f64>,
    raw_us: f64,
    layer_us: f64,
}

async fn compare(
    raw: &EchoClient<Channel>,
    layered: &EchoClient<Retry<Channel>>,
    concurrency: usize,
    rounds: usize,
    calls: usize,
) -> Outcome {
    // Warm both paths (connection windows, allocator, caches).
    batch(raw, concurrency, calls / 2).await;
    batch(layered, concurrency, calls / 2).await;

    let mut ratios = Vec::with_capacity(rounds);
    let mut raw_times = Vec::with_capacity(rounds);
    let mut layer_times = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (r, l) = if round % 2 == 0 {
            let r = batch(raw, concurrency, calls).await;
            (r, batch(layered, concurrency, calls).await)
        } else {
            let l = batch(layered, concurrency, calls).await;
            (batch(raw, concurrency, calls).await, l)
        };
        ratios.push(l.as_secs_f64() / r.as_secs_f64());
        raw_times.push(r.as_secs_f64() * 1e6 / calls as f64);
        layer_times.push(l.as_secs_f64() * 1e6 / calls as f64);
    }
    Outcome {
        ratio: common::median(&mut ratios.clone()),
        ratios,
        raw_us: common::median(&mut raw_times),
        layer_us: common::median(&mut layer_times),
    }
}

fn main() {
    let quick = common::quick();
    // (rounds, calls per batch) for concurrency 1 and 64.
    let ((rounds_c1, calls_c1), (rounds_c64, calls_c64)) = if quick {
        ((7, 1_000), (7, 6_400))
    } else {
        ((21, 3_000), (21, 19_200))
    };
    println!(
        "e2e: {} mode; {}",
        if quick { "quick" } else { "full" },
        common::describe_machine()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let server = TestServer::start().await.expect("test server");
        let channel = Endpoint::from_shared(server.uri())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let raw = EchoClient::new(channel.clone());
        let layered = EchoClient::new(RetryLayer::new(RetryPolicy::default()).layer(channel));

        let c1 = compare(&raw, &layered, 1, rounds_c1, calls_c1).await;
        let c64 = compare(&raw, &layered, 64, rounds_c64, calls_c64).await;

        println!();
        for (name, o, calls) in [("c1", &c1, calls_c1), ("c64", &c64, calls_c64)] {
            let lo = o.ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = o.ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "{name:>4}: raw {:.2} µs/call, layer {:.2} µs/call (medians over {} rounds of {calls} calls); \
                 layer/raw median {:.4}, range {lo:.4} .. {hi:.4}",
                o.raw_us,
                o.layer_us,
                o.ratios.len(),
                o.ratio,
            );
        }
        println!();
        common::result("e2e_ratio_c1", c1.ratio);
        common::result("e2e_ratio_c64", c64.ratio);
        common::result("e2e_raw_us_per_call_c1", c1.raw_us);
        common::result("e2e_layer_us_per_call_c1", c1.layer_us);
        common::result("e2e_raw_us_per_call_c64", c64.raw_us);
        common::result("e2e_layer_us_per_call_c64", c64.layer_us);
        server.shutdown().await;
    });
}
