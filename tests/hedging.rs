//! Hedging (gRFC A6 `hedgingPolicy`) against the real test server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer};
use tonic_retry::{CodeSet, HedgingPolicy, RetryLayer, RetryThrottle};
use tower::ServiceBuilder;

fn hedging(max_attempts: u32, delay_ms: u64) -> HedgingPolicy {
    HedgingPolicy {
        max_attempts,
        hedging_delay: Duration::from_millis(delay_ms),
        non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
        per_attempt_timeout: None,
    }
}

async fn hedged_client(server: &TestServer, layer: RetryLayer) -> Client {
    EchoClient::new(
        ServiceBuilder::new()
            .layer(layer)
            .service(channel(server).await),
    )
}

/// Waits until at least `expected` attempts of `call_id` are cancelled at
/// the server.
async fn eventually_cancelled(server: &TestServer, call_id: &str, expected: usize) {
    eventually(
        Duration::from_secs(3),
        &format!("{expected} attempts of {call_id} should be cancelled"),
        || {
            server
                .attempts(call_id)
                .iter()
                .filter(|a| a.cancelled)
                .count()
                >= expected
        },
    )
    .await;
}

#[tokio::test]
async fn the_slow_first_attempt_is_beaten_by_the_hedge() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(2, 50))).await;
    let script = [FaultAction::ok().delay_ms(3_000), FaultAction::ok()];
    let start = Instant::now();
    let response = client.unary(scripted("c", &script)).await.unwrap();
    assert_eq!(response.get_ref().attempt, 1, "the hedge answered");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(previous_attempts(response.metadata()).as_deref(), Some("1"));
    eventually_cancelled(&server, "c", 1).await;
}

#[tokio::test]
async fn a_fast_first_attempt_sends_no_hedge() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 200))).await;
    client
        .unary(scripted("c", &[FaultAction::ok()]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.attempts("c").len(), 1);
}

#[tokio::test]
async fn a_non_fatal_failure_sends_the_next_hedge_at_once() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 5_000))).await;
    let script = [FaultAction::code(Code::Unavailable), FaultAction::ok()];
    let start = Instant::now();
    let response = client.unary(scripted("c", &script)).await.unwrap();
    assert_eq!(response.get_ref().attempt, 1);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "did not wait for the delay"
    );
}

#[tokio::test]
async fn non_fatal_failures_exhausted_return_the_last_one() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 5_000))).await;
    let script = [FaultAction::code(Code::Unavailable).message("still down")];
    let status = client.unary(scripted("c", &script)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "still down");
    assert_eq!(server.attempts("c").len(), 3);
}

#[tokio::test]
async fn a_fatal_status_stops_everything() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 30))).await;
    let script = [
        FaultAction::ok().delay_ms(3_000),
        FaultAction::code(Code::InvalidArgument).message("bad"),
        FaultAction::ok(),
    ];
    let start = Instant::now();
    let status = client.unary(scripted("c", &script)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(start.elapsed() < Duration::from_secs(1));
    eventually_cancelled(&server, "c", 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        server.attempts("c").len(),
        2,
        "no hedge after a fatal status"
    );
}

#[tokio::test]
async fn losers_are_cancelled_at_the_server() {
    let server = TestServer::start().await.unwrap();
    // All three at once; the second to arrive answers at once.
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 0))).await;
    let script = [
        FaultAction::ok().delay_ms(3_000),
        FaultAction::ok(),
        FaultAction::ok().delay_ms(3_000),
    ];
    let response = client.unary(scripted("c", &script)).await.unwrap();
    assert_eq!(response.get_ref().attempt, 1);
    // A hedge reset before the server's handler started is never recorded,
    // so check the attempts that were: one completed, the rest cancelled.
    eventually(Duration::from_secs(3), "every loser is cancelled", || {
        let attempts = server.attempts("c");
        attempts.len() >= 2 && attempts.iter().filter(|a| a.cancelled).count() == attempts.len() - 1
    })
    .await;
    let attempts = server.attempts("c");
    assert_eq!(attempts.iter().filter(|a| a.completed).count(), 1);
}

#[tokio::test]
async fn each_hedge_carries_its_index() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 20))).await;
    let script = vec![FaultAction::ok().delay_ms(3_000); 3];
    let mut request = scripted("c", &script);
    request.set_timeout(Duration::from_millis(300));
    let status = client.unary(request).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "one deadline for all hedges"
    );
    let mut sent: Vec<Option<String>> = server
        .attempts("c")
        .into_iter()
        .map(|a| a.previous_rpc_attempts)
        .collect();
    sent.sort();
    assert_eq!(sent, vec![None, Some("1".into()), Some("2".into())]);
    eventually_cancelled(&server, "c", 3).await;
}

#[tokio::test]
async fn pushback_stop_sends_no_more_hedges() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 5_000))).await;
    let script = [
        FaultAction::code(Code::Unavailable).pushback("-1"),
        FaultAction::ok(),
    ];
    let start = Instant::now();
    let status = client.unary(scripted("c", &script)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(server.attempts("c").len(), 1);
}

#[tokio::test]
async fn pushback_schedules_the_next_hedge() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 5_000))).await;
    let script = [
        FaultAction::code(Code::Unavailable).pushback("200"),
        FaultAction::ok(),
    ];
    client.unary(scripted("c", &script)).await.unwrap();
    let attempts = server.attempts("c");
    let gap = attempts[1].arrived - attempts[0].arrived;
    assert!(
        gap >= Duration::from_millis(200) && gap < Duration::from_millis(400),
        "{gap:?}"
    );
}

#[tokio::test]
async fn throttling_stops_hedges() {
    let server = TestServer::start().await.unwrap();
    let layer = RetryLayer::hedging_builder(hedging(3, 20))
        .throttle(RetryThrottle::new(4_000, 100).unwrap())
        .build();
    // Two failures leave 2 of 4 tokens: at half, no hedges.
    let throttle = layer.throttle().unwrap();
    throttle.record_failure();
    throttle.record_failure();
    let mut client = hedged_client(&server, layer.clone()).await;
    client
        .unary(scripted("c", &[FaultAction::ok().delay_ms(200)]))
        .await
        .unwrap();
    assert_eq!(server.attempts("c").len(), 1);
}

#[tokio::test]
async fn hedges_take_tokens_for_non_fatal_failures() {
    let server = TestServer::start().await.unwrap();
    let layer = RetryLayer::hedging_builder(hedging(5, 5_000))
        .throttle(RetryThrottle::new(10_000, 100).unwrap())
        .build();
    let mut client = hedged_client(&server, layer.clone()).await;
    // Always UNAVAILABLE: each failure takes a token and sends the next hedge
    // until the bucket reaches half (10 → 9 → 8 → 7 → 6 → 5).
    client
        .unary(scripted("c", &[FaultAction::code(Code::Unavailable)]))
        .await
        .unwrap_err();
    assert_eq!(server.attempts("c").len(), 5);
    assert_eq!(layer.throttle().unwrap().milli_tokens(), 5_000);
    client
        .unary(scripted("d", &[FaultAction::code(Code::Unavailable)]))
        .await
        .unwrap_err();
    assert_eq!(server.attempts("d").len(), 1, "throttled: no hedges");
}

#[tokio::test]
async fn max_attempts_is_capped_at_five() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(10, 0))).await;
    let mut request = scripted("c", &[FaultAction::ok().delay_ms(400)]);
    request.set_timeout(Duration::from_millis(200));
    client.unary(request).await.unwrap_err();
    assert_eq!(server.attempts("c").len(), 5);
}

#[tokio::test]
async fn a_client_streaming_request_is_hedged_from_the_shared_buffer() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(2, 30))).await;
    let messages: Vec<EchoRequest> = ["a", "bb", "ccc"]
        .iter()
        .map(|p| EchoRequest {
            payload: p.as_bytes().to_vec(),
            text: String::new(),
        })
        .collect();
    let request = scripted_with(
        "c",
        &[FaultAction::ok().delay_ms(3_000), FaultAction::ok()],
        tokio_stream::iter(messages),
    );
    let response = client.client_stream(request).await.unwrap().into_inner();
    assert_eq!(response.attempt, 1);
    assert_eq!(response.payload, b"abbccc");
    let attempts = server.attempts("c");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].request_bytes, attempts[1].request_bytes);
    assert_eq!(attempts[1].request_messages, 3);
}

#[tokio::test]
async fn dropping_the_call_cancels_every_hedge() {
    let server = TestServer::start().await.unwrap();
    let mut client = hedged_client(&server, RetryLayer::hedging(hedging(3, 0))).await;
    client
        .unary(scripted("warm", &[FaultAction::ok()]))
        .await
        .unwrap();
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let call = client.unary(scripted("c", &[FaultAction::ok().delay_ms(5_000)]));
    tokio::select! {
        _ = call => panic!("the hedges are all slow"),
        () = server.wait_for_attempts("c", 3) => {}
    }
    // The call is dropped here.
    eventually_cancelled(&server, "c", 3).await;
    no_task_outlives_the_call(baseline).await;
}

#[tokio::test]
async fn hedging_comes_from_the_service_config() {
    let server = TestServer::start().await.unwrap();
    let config = r#"{"methodConfig": [{"name": [{"service": "retry.test.v1.Echo"}],
        "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "0.05s",
                          "nonFatalStatusCodes": ["UNAVAILABLE"]}}]}"#;
    let layer = RetryLayer::from_service_config(config.parse().unwrap());
    let mut client = hedged_client(&server, layer).await;
    let script = [FaultAction::ok().delay_ms(3_000), FaultAction::ok()];
    let start = Instant::now();
    let response = client.unary(scripted("c", &script)).await.unwrap();
    assert_eq!(response.get_ref().attempt, 1);
    assert!(start.elapsed() < Duration::from_secs(1));
}
