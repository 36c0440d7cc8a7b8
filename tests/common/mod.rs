//! Shared set-up for the integration tests: a real tonic server on
//! 127.0.0.1 port 0, and a stock generated client over a real `Channel`
//! wrapped in the retry layer.
#![allow(dead_code)]

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer, set_script};
use tonic_retry::{Retry, RetryLayer, RetryPolicy};
use tower::ServiceBuilder;

pub type Client = EchoClient<Retry<Channel>>;

/// A fast policy for tests: short backoffs, no jitter surprises.
pub fn fast_policy() -> tonic_retry::RetryPolicyBuilder {
    RetryPolicy::builder()
        .initial_backoff(Duration::from_millis(5))
        .max_backoff(Duration::from_millis(20))
}

pub async fn channel(server: &TestServer) -> Channel {
    Endpoint::from_shared(server.uri())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

pub async fn client(server: &TestServer, policy: RetryPolicy) -> Client {
    client_over(channel(server).await, policy)
}

pub fn client_over(channel: Channel, policy: RetryPolicy) -> Client {
    EchoClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .service(channel),
    )
}

/// A unary request scripted with `actions` under `call_id`.
pub fn scripted(call_id: &str, actions: &[FaultAction]) -> tonic::Request<EchoRequest> {
    scripted_with(
        call_id,
        actions,
        EchoRequest {
            payload: b"ping".to_vec(),
            text: "hello".into(),
        },
    )
}

pub fn scripted_with<T>(call_id: &str, actions: &[FaultAction], message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    set_script(&mut request, call_id, actions).unwrap();
    request
}

/// `grpc-previous-rpc-attempts` from response or status metadata.
pub fn previous_attempts(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get("grpc-previous-rpc-attempts")
        .map(|v| v.to_str().unwrap().to_owned())
}
