//! Per-method policies from a gRPC service config, against the real test
//! server: name precedence, pass-through for unmatched methods, the config
//! `timeout` joining the call's deadline, and timeout-only entries.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer};
use tonic_retry::{RetryLayer, ServiceConfig};
use tower::ServiceBuilder;

const SERVICE: &str = "retry.test.v1.Echo";

/// A fast retry policy with `max_attempts`, retrying UNAVAILABLE.
fn retry_policy(max_attempts: u32) -> Value {
    json!({"maxAttempts": max_attempts, "initialBackoff": "0.005s", "maxBackoff": "0.02s",
           "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]})
}

fn config(value: Value) -> ServiceConfig {
    ServiceConfig::from_value(&value).unwrap_or_else(|e| panic!("{value} should be valid: {e}"))
}

async fn config_client(server: &TestServer, config: ServiceConfig) -> Client {
    EchoClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::from_service_config(config))
            .service(channel(server).await),
    )
}

fn unavailable() -> FaultAction {
    FaultAction::code(Code::Unavailable).message("try again")
}

/// A stream of `n` request messages.
fn messages(n: usize) -> impl tokio_stream::Stream<Item = EchoRequest> + Send + 'static {
    tokio_stream::iter((0..n).map(|i| EchoRequest {
        payload: vec![i as u8],
        text: format!("m{i}"),
    }))
}

/// Calls each of the four methods once with `script` under `<prefix>-<method>`
/// and returns the final codes in the order Unary, ClientStream,
/// ServerStream, Bidi.
async fn call_every_method(client: &mut Client, prefix: &str, script: &[FaultAction]) -> [Code; 4] {
    let id = |method: &str| format!("{prefix}-{method}");
    let unary = client
        .unary(scripted(&id("unary"), script))
        .await
        .map(|_| ());
    let client_stream = client
        .client_stream(scripted_with(&id("client"), script, messages(2)))
        .await
        .map(|_| ());
    let server_stream = match client.server_stream(scripted(&id("server"), script)).await {
        Ok(response) => drain(response.into_inner()).await,
        Err(status) => Err(status),
    };
    let bidi = match client
        .bidi(scripted_with(&id("bidi"), script, messages(2)))
        .await
    {
        Ok(response) => drain(response.into_inner()).await,
        Err(status) => Err(status),
    };
    [unary, client_stream, server_stream, bidi].map(|r| match r {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    })
}

async fn drain(
    mut stream: tonic::Streaming<tonic_retry::testing::proto::EchoResponse>,
) -> Result<(), tonic::Status> {
    while let Some(message) = stream.next().await {
        message?;
    }
    Ok(())
}

/// How many attempts the server saw for each method's call.
fn attempt_counts(server: &TestServer, prefix: &str) -> [usize; 4] {
    ["unary", "client", "server", "bidi"].map(|m| server.attempts(&format!("{prefix}-{m}")).len())
}

#[tokio::test]
async fn the_method_entry_beats_the_service_entry_beats_the_default() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{}], "retryPolicy": retry_policy(4)},
        {"name": [{"service": SERVICE}], "retryPolicy": retry_policy(3)},
        {"name": [{"service": SERVICE, "method": "Unary"}], "retryPolicy": retry_policy(2)},
    ]}));
    let mut client = config_client(&server, config).await;

    let codes = call_every_method(&mut client, "always", &[unavailable()]).await;
    assert_eq!(codes, [Code::Unavailable; 4]);
    // Unary has its own entry; the other three methods use the service's.
    assert_eq!(attempt_counts(&server, "always"), [2, 3, 3, 3]);

    // And they succeed once a retry gets through.
    let codes =
        call_every_method(&mut client, "then-ok", &[unavailable(), FaultAction::ok()]).await;
    assert_eq!(codes, [Code::Ok; 4]);
    assert_eq!(attempt_counts(&server, "then-ok"), [2, 2, 2, 2]);
}

#[tokio::test]
async fn the_default_entry_covers_every_unnamed_method() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{}], "retryPolicy": retry_policy(4)},
        // Another service's entries do not apply to Echo.
        {"name": [{"service": "other.v1.Svc"}], "retryPolicy": retry_policy(2)},
        {"name": [{"service": "other.v1.Svc", "method": "Unary"}], "retryPolicy": retry_policy(3)},
    ]}));
    let mut client = config_client(&server, config).await;

    let codes = call_every_method(&mut client, "default", &[unavailable()]).await;
    assert_eq!(codes, [Code::Unavailable; 4]);
    assert_eq!(attempt_counts(&server, "default"), [4, 4, 4, 4]);
}

#[tokio::test]
async fn a_method_entry_matches_only_that_method() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{"service": SERVICE, "method": "ServerStream"}], "retryPolicy": retry_policy(3)},
    ]}));
    let mut client = config_client(&server, config).await;
    let codes = call_every_method(&mut client, "only-server", &[unavailable()]).await;
    assert_eq!(codes, [Code::Unavailable; 4]);
    assert_eq!(attempt_counts(&server, "only-server"), [1, 1, 3, 1]);
}

#[tokio::test]
async fn an_unmatched_method_passes_straight_through() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{"service": SERVICE, "method": "ServerStream"}],
         "timeout": "1s", "retryPolicy": retry_policy(4)},
    ]}));
    let mut client = config_client(&server, config).await;

    // No retry, and no grpc-previous-rpc-attempts on the result.
    let status = client
        .unary(scripted("plain", &[unavailable(), FaultAction::ok()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "try again");
    assert_eq!(previous_attempts(status.metadata()), None);
    let attempts = server.attempts("plain");
    assert_eq!(attempts.len(), 1);
    // The config's timeout is not applied: no deadline was added ...
    assert_eq!(attempts[0].grpc_timeout, None);
    assert_eq!(attempts[0].previous_rpc_attempts, None);

    // ... and the request's own grpc-timeout reaches the server as tonic
    // wrote it, not rewritten to the time left.
    let mut request = scripted("timed", &[FaultAction::ok()]);
    request.set_timeout(Duration::from_secs(5));
    client.unary(request).await.unwrap();
    assert_eq!(
        server.attempts("timed")[0].grpc_timeout.as_deref(),
        Some("5000000u")
    );
}

#[tokio::test]
async fn a_shorter_config_timeout_bounds_the_call() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{"service": SERVICE}], "timeout": "0.2s", "retryPolicy": retry_policy(4)},
    ]}));
    let mut client = config_client(&server, config).await;

    let mut request = scripted("c", &[FaultAction::ok().delay_ms(2_000)]);
    request.set_timeout(Duration::from_secs(10));
    let start = Instant::now();
    let status = client.unary(request).await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        elapsed >= Duration::from_millis(190) && elapsed < Duration::from_millis(1_000),
        "{elapsed:?}"
    );
    let attempts = server.attempts("c");
    assert_eq!(attempts.len(), 1);
    let sent = attempts[0].grpc_timeout_parsed.expect("a grpc-timeout");
    assert!(sent <= Duration::from_millis(200), "{sent:?}");
    assert!(sent >= Duration::from_millis(100), "{sent:?}");
}

#[tokio::test]
async fn a_shorter_request_timeout_bounds_the_call() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{"service": SERVICE}], "timeout": "10s", "retryPolicy": retry_policy(4)},
    ]}));
    let mut client = config_client(&server, config).await;

    let mut request = scripted("c", &[FaultAction::ok().delay_ms(2_000)]);
    request.set_timeout(Duration::from_millis(100));
    let start = Instant::now();
    let status = client.unary(request).await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed < Duration::from_millis(1_000), "{elapsed:?}");
    let sent = server.attempts("c")[0]
        .grpc_timeout_parsed
        .expect("a grpc-timeout");
    assert!(sent <= Duration::from_millis(100), "{sent:?}");
}

#[tokio::test]
async fn the_config_timeout_applies_without_a_request_timeout() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{"service": SERVICE}], "timeout": "0.3s", "retryPolicy": retry_policy(4)},
    ]}));
    let mut client = config_client(&server, config).await;

    let status = client
        .unary(scripted("c", &[FaultAction::ok().delay_ms(2_000)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let sent = server.attempts("c")[0]
        .grpc_timeout_parsed
        .expect("the config timeout is sent as grpc-timeout");
    assert!(sent <= Duration::from_millis(300), "{sent:?}");
}

#[tokio::test]
async fn a_timeout_only_entry_is_not_retried() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{"service": SERVICE, "method": "Unary"}], "timeout": "5s"},
        {"name": [{}], "retryPolicy": retry_policy(4)},
    ]}));
    let mut client = config_client(&server, config).await;

    let status = client
        .unary(scripted("c", &[unavailable(), FaultAction::ok()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(previous_attempts(status.metadata()), None);
    let attempts = server.attempts("c");
    assert_eq!(attempts.len(), 1, "a timeout-only method is not retried");
    // Its timeout still sets the deadline.
    let sent = attempts[0].grpc_timeout_parsed.expect("a grpc-timeout");
    assert!(
        sent <= Duration::from_secs(5) && sent > Duration::from_secs(4),
        "{sent:?}"
    );

    // The default entry's retries do not leak into it; other methods get them.
    let status = client
        .server_stream(scripted("s", &[unavailable()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempts("s").len(), 4);
    assert_eq!(previous_attempts(status.metadata()).as_deref(), Some("3"));
}

#[tokio::test]
async fn clones_of_a_configured_client_share_its_policies() {
    let server = TestServer::start().await.unwrap();
    let config = config(json!({"methodConfig": [
        {"name": [{"service": SERVICE, "method": "Unary"}], "retryPolicy": retry_policy(3)},
    ]}));
    let layer = RetryLayer::from_service_config(config);
    let channel: Channel = channel(&server).await;
    let a: Client = EchoClient::new(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(channel.clone()),
    );
    let mut b = a.clone();
    let mut a = a;
    let (ra, rb) = tokio::join!(
        a.unary(scripted("a", &[unavailable()])),
        b.unary(scripted("b", &[unavailable(), FaultAction::ok()])),
    );
    assert_eq!(ra.unwrap_err().code(), Code::Unavailable);
    assert_eq!(rb.unwrap().into_inner().attempt, 1);
    assert_eq!(server.attempts("a").len(), 3);
    assert_eq!(server.attempts("b").len(), 2);
}
