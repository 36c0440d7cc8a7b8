//! The tonic-retry tour: an in-process scripted server, a stock generated
//! client wrapped in the retry layer, and one call per retry rule.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! Every scenario scripts the server's answer to each attempt through request
//! metadata (`x-fault`); the attempts column is what the server received.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer, set_script};
use tonic_retry::{Retry, RetryBudget, RetryLayer, RetryPolicy, RetryThrottle, code_name};
use tower::ServiceBuilder;

#[path = "common/hedge_experiment.rs"]
mod hedge_experiment;

type Client = EchoClient<Retry<Channel>>;

struct Scenario {
    name: &'static str,
    script: Vec<FaultAction>,
    timeout: Option<Duration>,
    cancel_after: Option<Duration>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = TestServer::start().await?;
    let channel = Endpoint::from_shared(server.uri())?.connect().await?;
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(500))
        .backoff_multiplier(2.0)
        .build()?;
    let mut client: Client = EchoClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .service(channel.clone()),
    );

    let unavailable = || FaultAction::code(Code::Unavailable).message("node draining");
    let scenarios = vec![
        Scenario {
            name: "transient failures, then OK",
            script: vec![unavailable(), unavailable(), FaultAction::ok()],
            timeout: None,
            cancel_after: None,
        },
        Scenario {
            name: "non-retryable (INVALID_ARGUMENT)",
            script: vec![FaultAction::code(Code::InvalidArgument).message("bad field")],
            timeout: None,
            cancel_after: None,
        },
        Scenario {
            name: "exhausted (always UNAVAILABLE)",
            script: vec![unavailable()],
            timeout: None,
            cancel_after: None,
        },
        Scenario {
            name: "committed: error after headers",
            script: vec![unavailable().headers_first(), FaultAction::ok()],
            timeout: None,
            cancel_after: None,
        },
        Scenario {
            name: "deadline (250 ms) during backoff",
            script: vec![unavailable().delay_ms(80)],
            timeout: Some(Duration::from_millis(250)),
            cancel_after: None,
        },
        Scenario {
            name: "server pushback: retry in 300 ms",
            script: vec![unavailable().pushback("300"), FaultAction::ok()],
            timeout: None,
            cancel_after: None,
        },
        Scenario {
            name: "server pushback: stop (-1)",
            script: vec![unavailable().pushback("-1"), FaultAction::ok()],
            timeout: None,
            cancel_after: None,
        },
        Scenario {
            name: "cancelled by token after 100 ms",
            script: vec![FaultAction::ok().delay_ms(5_000)],
            timeout: None,
            cancel_after: Some(Duration::from_millis(100)),
        },
    ];

    println!(
        "{:<36} {:>8}  {:<18} {:>10}",
        "scenario", "attempts", "final code", "elapsed"
    );
    println!("{}", "-".repeat(76));
    for (i, scenario) in scenarios.into_iter().enumerate() {
        let call_id = format!("demo-{i}");
        let mut request = tonic::Request::new(EchoRequest {
            payload: b"hello".to_vec(),
            text: scenario.name.into(),
        });
        set_script(&mut request, &call_id, &scenario.script)?;
        if let Some(timeout) = scenario.timeout {
            request.set_timeout(timeout);
        }
        let token = CancellationToken::new();
        if let Some(after) = scenario.cancel_after {
            request.extensions_mut().insert(token.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                token.cancel();
            });
        }
        let start = Instant::now();
        let code = match client.unary(request).await {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        let elapsed = start.elapsed();
        println!(
            "{:<36} {:>8}  {:<18} {:>7.1} ms",
            scenario.name,
            server.attempts(&call_id).len(),
            code_name(code),
            elapsed.as_secs_f64() * 1e3
        );
    }

    outage(&server, &channel).await?;

    println!();
    println!("hedging: 1,000 unary calls, 10 % of attempts answered after 200 ms");
    hedge_experiment::compare(&server, &channel, 1_000).await;

    overhead(&channel, &mut client).await?;
    server.shutdown().await;
    Ok(())
}

/// A full outage: every attempt fails with UNAVAILABLE. A naive policy
/// multiplies the load by `max_attempts`; A6 throttling and a retry budget
/// keep it close to one attempt per call.
async fn outage(server: &TestServer, channel: &Channel) -> Result<(), Box<dyn std::error::Error>> {
    const CALLS: usize = 300;
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(5))
        .build()?;
    let layers = [
        ("no throttling, no budget", RetryLayer::new(policy.clone())),
        (
            "A6 throttling (maxTokens 10, tokenRatio 0.1)",
            RetryLayer::builder(policy.clone())
                .throttle(RetryThrottle::new(10_000, 100)?)
                .build(),
        ),
        (
            "retry budget (20 %, no floor)",
            RetryLayer::builder(policy)
                .budget(RetryBudget::new(Duration::from_secs(10), 0, 0.2)?)
                .build(),
        ),
    ];
    println!();
    println!("outage: {CALLS} calls, every attempt UNAVAILABLE, max_attempts 4");
    for (name, layer) in layers {
        let mut client: Client =
            EchoClient::new(ServiceBuilder::new().layer(layer).service(channel.clone()));
        let before = server.total_attempts();
        let script = [FaultAction::code(Code::Unavailable)];
        for i in 0..CALLS {
            let mut request = tonic::Request::new(EchoRequest::default());
            set_script(&mut request, &format!("outage-{name}-{i}"), &script)?;
            let _ = client.unary(request).await;
        }
        let attempts = server.total_attempts() - before;
        println!(
            "  {name:<46} {:.2} attempts per call",
            attempts as f64 / CALLS as f64
        );
    }
    Ok(())
}

/// A quick happy-path overhead check: unary calls through a raw `Channel`
/// and through the layer, interleaved in rounds so that drift in machine
/// load affects both alike. `cargo bench` measures this properly.
async fn overhead(
    channel: &Channel,
    layered: &mut Client,
) -> Result<(), Box<dyn std::error::Error>> {
    const ROUNDS: usize = 6;
    const CALLS_PER_ROUND: usize = 500;
    let mut raw = EchoClient::new(channel.clone());
    let request = || EchoRequest {
        payload: vec![1; 64],
        text: String::new(),
    };
    // Warm both paths.
    for _ in 0..200 {
        raw.unary(request()).await?;
        layered.unary(request()).await?;
    }
    let mut ratios = Vec::with_capacity(ROUNDS);
    let mut raw_total = Duration::ZERO;
    let mut layered_total = Duration::ZERO;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..CALLS_PER_ROUND {
            raw.unary(request()).await?;
        }
        let raw_time = start.elapsed();
        let start = Instant::now();
        for _ in 0..CALLS_PER_ROUND {
            layered.unary(request()).await?;
        }
        let layered_time = start.elapsed();
        ratios.push(layered_time.as_secs_f64() / raw_time.as_secs_f64());
        raw_total += raw_time;
        layered_total += layered_time;
    }
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[ROUNDS / 2 - 1] + ratios[ROUNDS / 2]) / 2.0;
    let calls = (ROUNDS * CALLS_PER_ROUND) as f64;
    println!();
    println!(
        "happy-path overhead over {} sequential unary calls on loopback:",
        ROUNDS * CALLS_PER_ROUND
    );
    println!(
        "  raw Channel {:.1} µs/call, with RetryLayer {:.1} µs/call, ratio layer/raw = {median:.3} (median of {ROUNDS} interleaved rounds)",
        raw_total.as_secs_f64() * 1e6 / calls,
        layered_total.as_secs_f64() * 1e6 / calls,
    );
    Ok(())
}
