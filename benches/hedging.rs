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

mod common;
#[path = "../examples/common/hedge_experiment.rs"]
mod hedge_experiment;

fn main() {
    let calls = if common::quick() { 500 } else { 2_000 };
    common::loopback_runtime().block_on(async {
        let (server, channel) = common::server_and_channel().await;
        println!("hedging: {calls} unary calls per mode, 10 % of attempts answered after 200 ms");
        let (without, with) = hedge_experiment::compare(&server, &channel, calls).await;
        common::result("hedging_p50_ms_without", without.p50_ms);
        common::result("hedging_p99_ms_without", without.p99_ms);
        common::result("hedging_p999_ms_without", without.p999_ms);
        common::result("hedging_p50_ms_with", with.p50_ms);
        common::result("hedging_p99_ms_with", with.p99_ms);
        common::result("hedging_p999_ms_with", with.p999_ms);
        common::result("hedging_p99_improvement", without.p99_ms / with.p99_ms);
        common::result("hedging_load", with.load);
        server.shutdown().await;
    });
}
