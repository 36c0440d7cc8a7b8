//! Overload safety against the real test server: pushback, RetryInfo, A6
//! throttling, retry budgets, the channel-wide buffer cap, transparent
//! retries and per-call options.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer};
use tonic_retry::{CallOptions, RetryBudget, RetryLayer, RetryPolicy, RetryThrottle};
use tower::ServiceBuilder;

fn unavailable() -> FaultAction {
    FaultAction::code(Code::Unavailable).message("overloaded")
}

/// Gaps between consecutive attempt arrivals at the server.
fn arrival_gaps(server: &TestServer, call_id: &str) -> Vec<Duration> {
    server
        .attempts(call_id)
        .windows(2)
        .map(|w| w[1].arrived - w[0].arrived)
        .collect()
}

fn layered(channel: tonic::transport::Channel, layer: RetryLayer) -> Client {
    EchoClient::new(ServiceBuilder::new().layer(layer).service(channel))
}

#[tokio::test]
async fn pushback_sets_the_exact_delay_then_the_backoff_restarts() {
    let server = TestServer::start().await.unwrap();
    // Without pushback the backoff would be 5 ms, then 10 ms.
    let policy = fast_policy().backoff_multiplier(2.0).build().unwrap();
    let mut client = client(&server, policy).await;
    let script = [
        unavailable().pushback("300"),
        unavailable(),
        FaultAction::ok(),
    ];
    client.unary(scripted("c", &script)).await.unwrap();
    let gaps = arrival_gaps(&server, "c");
    assert!(
        gaps[0] >= Duration::from_millis(300) && gaps[0] < Duration::from_millis(450),
        "{gaps:?}"
    );
    assert!(
        gaps[1] < Duration::from_millis(100),
        "backoff restarted: {gaps:?}"
    );
}

#[tokio::test]
async fn pushback_that_says_stop_ends_the_call() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    for (i, bad) in ["-1", "abc", "", "1.5", "99999999999"].iter().enumerate() {
        let id = format!("stop-{i}");
        let script = [unavailable().pushback(*bad), FaultAction::ok()];
        let status = client.unary(scripted(&id, &script)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "pushback {bad:?}");
        assert_eq!(server.attempts(&id).len(), 1, "pushback {bad:?} must stop");
    }
    // More than one value also means stop.
    let twice = unavailable()
        .raw_header("grpc-retry-pushback-ms", "1")
        .raw_header("grpc-retry-pushback-ms", "1");
    let status = client
        .unary(scripted("twice", &[twice, FaultAction::ok()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempts("twice").len(), 1);
}

#[tokio::test]
async fn pushback_never_retries_a_non_retryable_code_nor_passes_max_attempts() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().max_attempts(2).build().unwrap()).await;
    let script = [
        FaultAction::code(Code::NotFound).pushback("0"),
        FaultAction::ok(),
    ];
    let status = client.unary(scripted("final", &script)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(server.attempts("final").len(), 1);

    let status = client
        .unary(scripted("max", &[unavailable().pushback("0")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempts("max").len(), 2);
}

#[tokio::test]
async fn retry_info_sets_the_delay_when_there_is_no_pushback() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let script = [unavailable().retry_info_ms(250), FaultAction::ok()];
    client.unary(scripted("info", &script)).await.unwrap();
    let gap = arrival_gaps(&server, "info")[0];
    assert!(
        gap >= Duration::from_millis(250) && gap < Duration::from_millis(400),
        "{gap:?}"
    );

    // Pushback takes precedence over RetryInfo.
    let script = [
        unavailable().pushback("10").retry_info_ms(5_000),
        FaultAction::ok(),
    ];
    client.unary(scripted("both", &script)).await.unwrap();
    assert!(arrival_gaps(&server, "both")[0] < Duration::from_secs(1));
}

#[tokio::test]
async fn retry_info_can_be_turned_off() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy().use_retry_info(false).build().unwrap();
    let mut client = client(&server, policy).await;
    let script = [unavailable().retry_info_ms(5_000), FaultAction::ok()];
    let start = Instant::now();
    client.unary(scripted("c", &script)).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn throttling_follows_the_grpcio_test_vector() {
    // maxTokens 10, tokenRatio 0.1, maxAttempts 4, always UNAVAILABLE:
    // attempts per call are 4, 1, 1, 1, …
    let server = TestServer::start().await.unwrap();
    let layer = RetryLayer::builder(fast_policy().max_attempts(4).build().unwrap())
        .throttle(RetryThrottle::new(10_000, 100).unwrap())
        .build();
    let mut client = layered(channel(&server).await, layer.clone());
    let mut attempts = Vec::new();
    for i in 0..5 {
        let id = format!("call-{i}");
        let start = Instant::now();
        let status = client
            .unary(scripted(&id, &[unavailable()]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        attempts.push(server.attempts(&id).len());
        if i > 0 {
            assert!(
                start.elapsed() < Duration::from_millis(100),
                "a throttled failure is returned at once"
            );
        }
    }
    assert_eq!(attempts, vec![4, 1, 1, 1, 1]);
    // 10 → 6 after the first call, then one token per failed call.
    assert_eq!(layer.throttle().unwrap().milli_tokens(), 2_000);

    // Successes refill the bucket by tokenRatio each.
    for i in 0..30 {
        client
            .unary(scripted(&format!("ok-{i}"), &[FaultAction::ok()]))
            .await
            .unwrap();
    }
    assert_eq!(layer.throttle().unwrap().milli_tokens(), 5_000);
    client
        .unary(scripted("again", &[unavailable(), FaultAction::ok()]))
        .await
        .unwrap_err();
    assert_eq!(
        server.attempts("again").len(),
        1,
        "4 tokens: at or below half"
    );
    for i in 0..30 {
        client
            .unary(scripted(&format!("refill-{i}"), &[FaultAction::ok()]))
            .await
            .unwrap();
    }
    // 7 tokens: the failure leaves 6, above half, so it is retried.
    client
        .unary(scripted("recovered", &[unavailable(), FaultAction::ok()]))
        .await
        .unwrap();
    assert_eq!(server.attempts("recovered").len(), 2);
}

#[tokio::test]
async fn throttling_comes_from_the_service_config() {
    let server = TestServer::start().await.unwrap();
    let config = r#"{"methodConfig": [{"name": [{"service": "retry.test.v1.Echo"}],
        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.001s", "maxBackoff": "0.01s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#;
    let layer = RetryLayer::from_service_config(config.parse().unwrap());
    let mut client = layered(channel(&server).await, layer);
    let mut attempts = Vec::new();
    for i in 0..3 {
        let id = format!("call-{i}");
        client
            .unary(scripted(&id, &[unavailable()]))
            .await
            .unwrap_err();
        attempts.push(server.attempts(&id).len());
    }
    assert_eq!(attempts, vec![4, 1, 1]);
}

#[tokio::test]
async fn the_budget_caps_retries_to_a_share_of_requests() {
    let server = TestServer::start().await.unwrap();
    // No floor; 20 % of requests may be retried.
    let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
    let layer = RetryLayer::builder(fast_policy().max_attempts(4).build().unwrap())
        .budget(budget)
        .build();
    let mut client = layered(channel(&server).await, layer);
    let calls = 100;
    for i in 0..calls {
        client
            .unary(scripted(&format!("c{i}"), &[unavailable()]))
            .await
            .unwrap_err();
    }
    let attempts = server.total_attempts();
    let retries = attempts - calls;
    assert!(
        retries <= calls / 5 + 1,
        "{retries} retries for {calls} calls"
    );
    assert!(
        retries >= calls / 5 - 2,
        "the budget is spent, not hoarded: {retries}"
    );
}

#[tokio::test]
async fn transparent_retry_of_a_refused_stream_is_not_an_attempt() {
    const REFUSED_STREAM: u32 = 7;
    let server = TestServer::start().await.unwrap();
    // Even with retries disabled, a stream the server refused before its
    // application saw it is retried once.
    let policy = fast_policy().max_attempts(1).build().unwrap();
    let layer = RetryLayer::builder(policy)
        .throttle(RetryThrottle::new(10_000, 100).unwrap())
        .build();
    let mut client = layered(channel(&server).await, layer.clone());
    let script = [FaultAction::reset_with(REFUSED_STREAM), FaultAction::ok()];
    let response = client.unary(scripted("c", &script)).await.unwrap();
    assert_eq!(response.get_ref().attempt, 1, "the server saw two arrivals");
    assert_eq!(previous_attempts(response.metadata()), None, "one attempt");
    let arrivals = server.attempts("c");
    assert_eq!(
        arrivals[1].previous_rpc_attempts, None,
        "not sent on a transparent retry"
    );
    assert_eq!(
        layer.throttle().unwrap().milli_tokens(),
        10_000,
        "no token taken"
    );

    // Only once per call.
    let script = [FaultAction::reset_with(REFUSED_STREAM)];
    let status = client.unary(scripted("twice", &script)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempts("twice").len(), 2);

    // A reset with another reason is not transparent.
    let script = [FaultAction::reset(), FaultAction::ok()];
    let status = client
        .unary(scripted("internal", &script))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(server.attempts("internal").len(), 1);
}

#[tokio::test]
async fn per_call_options_narrow_the_policy() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().max_attempts(5).build().unwrap()).await;

    let mut request = scripted("two", &[unavailable()]);
    request
        .extensions_mut()
        .insert(CallOptions::new().max_attempts(2));
    client.unary(request).await.unwrap_err();
    assert_eq!(server.attempts("two").len(), 2);

    let mut request = scripted("cap", &[unavailable()]);
    request
        .extensions_mut()
        .insert(CallOptions::new().max_attempts(50));
    client.unary(request).await.unwrap_err();
    assert_eq!(server.attempts("cap").len(), 5, "the cap still applies");

    let mut request = scripted("none", &[unavailable(), FaultAction::ok()]);
    request
        .extensions_mut()
        .insert(CallOptions::new().no_retries());
    client.unary(request).await.unwrap_err();
    assert_eq!(server.attempts("none").len(), 1);

    let mut request = scripted("nonidem", &[unavailable(), FaultAction::ok()]);
    request
        .extensions_mut()
        .insert(CallOptions::new().non_idempotent());
    let status = client.unary(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        server.attempts("nonidem").len(),
        1,
        "the server may have processed it"
    );
}

#[tokio::test]
async fn a_non_idempotent_call_is_retried_when_it_never_reached_the_server() {
    let (addr, channel) = refused_address();
    let policy = RetryPolicy::builder()
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut client = client_over(channel, policy);
    let server_up = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(120)).await;
        TestServer::start_at(addr).await.unwrap()
    });
    let mut request = scripted("c", &[FaultAction::ok()]);
    request.set_timeout(Duration::from_secs(3));
    request
        .extensions_mut()
        .insert(CallOptions::new().non_idempotent());
    client.unary(request).await.unwrap();
    let server = server_up.await.unwrap();
    assert_eq!(server.attempts("c").len(), 1);
}

#[tokio::test]
async fn the_channel_buffer_cap_bounds_memory_across_thousands_of_calls() {
    let server = TestServer::start().await.unwrap();
    let cap = 64 * 1024;
    let layer = RetryLayer::builder(fast_policy().build().unwrap())
        .buffer_limit(cap)
        .build();
    let client = layered(channel(&server).await, layer.clone());
    let in_flight = 2_000;
    let payload = vec![3u8; 100];
    let watcher = {
        let layer = layer.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..400 {
                peak = peak.max(layer.buffered_bytes());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            peak
        })
    };
    let calls: Vec<_> = (0..in_flight)
        .map(|i| {
            let mut client = client.clone();
            let request = scripted_with(
                &format!("c{i}"),
                &[FaultAction::ok().delay_ms(300)],
                EchoRequest {
                    payload: payload.clone(),
                    text: String::new(),
                },
            );
            tokio::spawn(async move { client.unary(request).await })
        })
        .collect();
    server.wait_for_attempts("c1999", 1).await;
    let held = layer.buffered_bytes();
    assert!(held <= cap, "{held} > {cap}");
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // Sampled while the calls were in flight (a single instant can miss
    // it when spawning 2,000 calls takes longer than the server's delay).
    let peak = watcher.await.unwrap();
    assert!(peak <= cap, "peak {peak} > {cap}");
    assert!(peak > cap / 2, "the cap is used, not ignored: peak {peak}");
    assert_eq!(layer.buffered_bytes(), 0, "every reservation is returned");
}
