//! Hedging benchmark (issue: hedging): 2,000 unary calls against the test
//! server, which answers 10 % of attempts after 200 ms and the rest at once,
//! without hedging and with hedging (delay ≈ p90, max attempts 2).
//!
//! ```text
//! cargo bench --bench hedging            # 2,000 calls per mode
//! BENCH_QUICK=1 cargo bench --bench hedging
//! ```
//!
//! Goal: p99 drops at least 5x while extra load stays at or below 1.15.

#[path = "../examples/common/hedge_experiment.rs"]
mod hedge_experiment;

use tonic::transport::Endpoint;
use tonic_retry::testing::TestServer;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let calls = if quick { 500 } else { 2_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let server = TestServer::start().await.expect("test server");
        let channel = Endpoint::from_shared(server.uri())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        println!("hedging: {calls} unary calls per mode, 10 % of attempts answered after 200 ms");
        let (without, with) = hedge_experiment::compare(&server, &channel, calls).await;
        println!("RESULT hedging_p50_ms_without={:.3}", without.p50_ms);
        println!("RESULT hedging_p99_ms_without={:.3}", without.p99_ms);
        println!("RESULT hedging_p999_ms_without={:.3}", without.p999_ms);
        println!("RESULT hedging_p50_ms_with={:.3}", with.p50_ms);
        println!("RESULT hedging_p99_ms_with={:.3}", with.p99_ms);
        println!("RESULT hedging_p999_ms_with={:.3}", with.p999_ms);
        println!(
            "RESULT hedging_p99_improvement={:.3}",
            without.p99_ms / with.p99_ms
        );
        println!("RESULT hedging_load={:.4}", with.load);
        server.shutdown().await;
    });
}
