//! The layer's metrics as a Prometheus scrape shows them: gRFC A66's
//! per-attempt and per-call metrics and gRFC A96's retry metrics, with the
//! buckets the gRFCs recommend.
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```
//!
//! Installs `metrics-exporter-prometheus` (rendered in-process, no HTTP
//! listener) with [`tonic_retry::metrics::HISTOGRAM_BUCKETS`] applied,
//! runs a few calls against the crate's scripted test server (an OK call,
//! a retried one, a failed one, a transparent retry, two hedged calls, one
//! of whose hedges loses the race), and prints the scrape. Prometheus names
//! cannot hold dots, so the exporter writes `grpc.client.call.retries` as
//! `grpc_client_call_retries` (OpenTelemetry's Prometheus exporter does the
//! same).

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tonic::Code;
use tonic::transport::Endpoint;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer, set_script};
use tonic_retry::{HedgingPolicy, Jitter, RetryLayer, RetryPolicy};
use tower::ServiceBuilder;

fn request(call_id: &str, script: &[FaultAction]) -> tonic::Request<EchoRequest> {
    let mut request = tonic::Request::new(EchoRequest {
        payload: b"ping".to_vec(),
        text: "hello".into(),
    });
    set_script(&mut request, call_id, script).expect("a valid script");
    request
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: metric handles registered before it is installed
    // record nothing.
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in tonic_retry::metrics::HISTOGRAM_BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)?;
    }
    let prometheus = builder.install_recorder()?;

    let server = TestServer::start().await?;
    let channel = Endpoint::from_shared(server.uri())?.connect().await?;
    // The channel's target in A66's canonical form: an IP address is
    // `ipv4:ADDRESS:PORT`; a name resolved through DNS would be
    // `dns:///api.example.com:443`.
    let target = format!("ipv4:{}", server.addr());

    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .initial_backoff(Duration::from_millis(20))
        .jitter(Jitter::None)
        .build()?;
    let retrying = RetryLayer::builder(policy).target(&target).build();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(retrying)
            .service(channel.clone()),
    );
    let unavailable = || FaultAction::code(Code::Unavailable).message("node draining");
    const REFUSED_STREAM: u32 = 7;
    let calls = [
        ("ok", vec![FaultAction::ok()]),
        (
            "retried",
            vec![unavailable(), unavailable(), FaultAction::ok()],
        ),
        ("failed", vec![unavailable(); 3]),
        (
            "refused",
            vec![FaultAction::reset_with(REFUSED_STREAM), FaultAction::ok()],
        ),
    ];
    for (id, script) in calls {
        let result = client.unary(request(id, &script)).await;
        let code = result.map_or_else(|status| status.code(), |_| Code::Ok);
        eprintln!(
            "{id:>8}: {code:?} after {} attempts",
            server.attempts(id).len()
        );
    }

    let hedging = RetryLayer::hedging_builder(HedgingPolicy {
        max_attempts: 2,
        hedging_delay: Duration::from_millis(20),
        non_fatal_codes: [Code::Unavailable].into_iter().collect(),
        per_attempt_timeout: None,
    })
    .target(&target)
    .build();
    let mut hedged = EchoClient::new(ServiceBuilder::new().layer(hedging).service(channel));
    let calls = [
        // A non-fatal failure sends the hedge at once.
        ("hedged", vec![unavailable(), FaultAction::ok()]),
        // The first attempt is slow; the hedge 20 ms later wins, and the
        // first is cancelled.
        (
            "raced",
            vec![FaultAction::ok().delay_ms(500), FaultAction::ok()],
        ),
    ];
    for (id, script) in calls {
        let result = hedged.unary(request(id, &script)).await;
        let code = result.map_or_else(|status| status.code(), |_| Code::Ok);
        eprintln!(
            "{id:>8}: {code:?} after {} attempts",
            server.attempts(id).len()
        );
    }

    print!("{}", prometheus.render());
    Ok(())
}
