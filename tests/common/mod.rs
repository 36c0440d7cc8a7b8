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

/// An address on 127.0.0.1 where nothing listens (connections are refused),
/// and a lazy channel to it.
pub fn refused_address() -> (std::net::SocketAddr, Channel) {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    (addr, channel)
}

/// Polls `condition` every 5 ms until it holds, failing with `what` after
/// `limit`.
pub async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(limit, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

/// Waits until the runtime has no more live tasks than `baseline`: nothing
/// a dropped call started outlives it.
pub async fn no_task_outlives_the_call(baseline: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    eventually(Duration::from_secs(2), "no task outlives the call", || {
        metrics.num_alive_tasks() <= baseline
    })
    .await;
}
