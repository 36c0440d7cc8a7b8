//! What a hostile or broken server sends after committing, or instead of
//! gRPC, against the real test server over loopback and the stock
//! generated client: no panic, the right code for the caller, and the real
//! outcome counted by throttling and the breaker.

mod common;

use std::time::Duration;

use tonic::Code;
use tonic_retry::testing::proto::EchoClient;
use tonic_retry::testing::{FaultAction, TestServer};
use tonic_retry::{BreakerConfig, BreakerState, CircuitBreakerLayer, RetryLayer, RetryThrottle};
use tower::ServiceBuilder;

use common::{channel, client, fast_policy, scripted};

/// Response headers, the echo message, then trailers whose `grpc-status`
/// is `status` (the call commits on the headers).
fn message_then_status(status: &str) -> FaultAction {
    FaultAction::ok().grpc_status_raw(status)
}

/// Not valid base64: tonic 0.14's `Status::from_header_map` panics on it.
const MALFORMED_DETAILS: &str = "@@not*base64@@";

#[tokio::test]
async fn malformed_status_details_in_ok_trailers_are_dropped_not_a_panic() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let script = [FaultAction::ok().raw_header("grpc-status-details-bin", MALFORMED_DETAILS)];
    let response = client.unary(scripted("ok", &script)).await.unwrap();
    assert_eq!(response.get_ref().payload, b"ping");
}

#[tokio::test]
async fn malformed_status_details_in_unavailable_trailers_are_dropped_not_a_panic() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let script =
        [message_then_status("14").raw_header("grpc-status-details-bin", MALFORMED_DETAILS)];
    let status = client.unary(scripted("u", &script)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempts("u").len(), 1, "committed: never retried");
}

#[tokio::test]
async fn a_raw_channel_panics_on_malformed_trailer_details_and_the_layer_does_not() {
    // Why the guard exists: the same response panics a stock client over a
    // raw Channel (tonic 0.14's `expect` on the base64).
    let server = TestServer::start().await.unwrap();
    let script = [FaultAction::ok().raw_header("grpc-status-details-bin", MALFORMED_DETAILS)];
    let mut raw = EchoClient::new(channel(&server).await);
    let raw_script = script.clone();
    let raw_call =
        tokio::spawn(async move { raw.unary(scripted("raw", &raw_script)).await.map(drop) });
    let joined = raw_call.await;
    assert!(
        joined.as_ref().is_err_and(|e| e.is_panic()),
        "tonic no longer panics here: {joined:?}; the guard may be revisited"
    );
    let mut layered = client(&server, fast_policy().build().unwrap()).await;
    let layered_call =
        tokio::spawn(async move { layered.unary(scripted("layer", &script)).await.map(drop) });
    assert!(layered_call.await.unwrap().is_ok());
}

/// A layer with A6 throttling (maxTokens 10, tokenRatio 0.1).
fn throttled_layer() -> RetryLayer {
    RetryLayer::builder(fast_policy().max_attempts(3).build().unwrap())
        .throttle(RetryThrottle::new(10_000, 100).unwrap())
        .build()
}

#[tokio::test]
async fn throttling_tokens_drain_under_an_outage_that_sends_headers_then_unavailable() {
    // grpc core: a retryable final status takes a token even after commit;
    // only OK adds tokenRatio.
    let server = TestServer::start().await.unwrap();
    let layer = throttled_layer();
    let tokens = || layer.throttle().unwrap().milli_tokens();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(channel(&server).await),
    );
    let outage = [message_then_status("14")];
    let mut expected = 10_000;
    for call in 0..4 {
        let status = client
            .unary(scripted(&format!("o{call}"), &outage))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        expected -= 1_000;
        assert_eq!(tokens(), expected, "after call {call}");
    }
    // A committed OK adds tokenRatio; a committed non-retryable code
    // counts for nothing.
    client
        .unary(scripted("ok", &[FaultAction::ok()]))
        .await
        .unwrap();
    assert_eq!(tokens(), expected + 100);
    let status = client
        .unary(scripted("nf", &[message_then_status("5")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(tokens(), expected + 100);
}

#[tokio::test]
async fn the_breaker_opens_under_an_outage_that_sends_headers_then_unavailable() {
    let server = TestServer::start().await.unwrap();
    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::builder()
            .failure_ratio(0.5)
            .minimum_calls(5)
            .window(Duration::from_secs(60))
            .break_duration(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(breaker.clone())
            .layer(RetryLayer::new(fast_policy().build().unwrap()))
            .service(channel(&server).await),
    );
    for call in 0..5 {
        let status = client
            .unary(scripted(&format!("b{call}"), &[message_then_status("14")]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let refused = client
        .unary(scripted("after", &[FaultAction::ok()]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        server.attempts("after").is_empty(),
        "refused without a call"
    );
}

const HTML: &str =
    "<html><body><h1>503 Service Unavailable</h1>upstream connect error</body></html>";

/// One call answered by a "proxy" with `http_status`, `content_type` and
/// `body` on every attempt: the caller's code and the attempts made.
async fn proxy_answer(http_status: u16, content_type: &str, body: &str) -> (tonic::Status, usize) {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().max_attempts(2).build().unwrap()).await;
    let script = [FaultAction::http_status(http_status)
        .content_type(content_type)
        .http_body(body)];
    let status = client.unary(scripted("p", &script)).await.unwrap_err();
    (status, server.attempts("p").len())
}

#[tokio::test]
async fn an_http_503_with_an_html_body_is_unavailable_and_retried() {
    let (status, attempts) = proxy_answer(503, "text/html", HTML).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("503"), "{status:?}");
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn an_http_429_with_a_body_is_unavailable_and_retried() {
    let (status, attempts) = proxy_answer(429, "text/plain", "slow down").await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn an_http_401_is_unauthenticated() {
    let (status, attempts) = proxy_answer(401, "text/html", HTML).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn an_http_404_is_unimplemented() {
    let (status, attempts) = proxy_answer(404, "text/html", HTML).await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn an_http_200_that_is_html_is_unknown_not_a_decoded_message() {
    let (status, attempts) = proxy_answer(200, "text/html", HTML).await;
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert!(status.message().contains("text/html"), "{status:?}");
    assert_eq!(attempts, 1);
}
