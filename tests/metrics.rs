//! The gRFC A96 retry metrics (feature `metrics`), read back through an
//! in-memory `DebuggingRecorder`.
//!
//! Each test installs its own recorder for the current thread only
//! (`metrics::with_local_recorder`) and runs its calls on a current-thread
//! runtime inside it, so every metric the layer emits lands in that
//! recorder and tests running in parallel do not see each other's.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use tonic::Code;
use tonic_retry::testing::FaultAction;
use tonic_retry::testing::TestServer;
use tonic_retry::{CodeSet, HedgingPolicy, Jitter, RetryBudget, RetryLayer, RetryThrottle};
use tower::ServiceBuilder;

const METHOD: &str = "retry.test.v1.Echo/Unary";

/// One metric as recorded: its kind, name and labels (sorted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Metric {
    kind: &'static str,
    name: String,
    labels: Vec<(String, String)>,
}

/// What the recorder holds: counters' totals and histograms' values.
#[derive(Debug, PartialEq)]
enum Value {
    Counter(u64),
    Histogram(Vec<f64>),
}

type Recorded = BTreeMap<Metric, Value>;

/// Runs `test` on a fresh current-thread runtime with a fresh recorder
/// installed for this thread, and returns everything recorded.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _unit, _description, value)| (metric(&key), value_of(value)))
        .collect()
}

fn metric(key: &CompositeKey) -> Metric {
    let kind = match key.kind() {
        MetricKind::Counter => "counter",
        MetricKind::Gauge => "gauge",
        MetricKind::Histogram => "histogram",
    };
    let mut labels: Vec<_> = key
        .key()
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    labels.sort();
    Metric {
        kind,
        name: key.key().name().to_owned(),
        labels,
    }
}

fn value_of(value: DebugValue) -> Value {
    match value {
        DebugValue::Counter(n) => Value::Counter(n),
        DebugValue::Gauge(g) => panic!("the layer records no gauges, got {g}"),
        DebugValue::Histogram(values) => {
            Value::Histogram(values.into_iter().map(|v| v.into_inner()).collect())
        }
    }
}

fn histogram(name: &str, status: &str) -> Metric {
    Metric {
        kind: "histogram",
        name: name.to_owned(),
        labels: vec![
            ("grpc.method".to_owned(), METHOD.to_owned()),
            ("grpc.status".to_owned(), status.to_owned()),
        ],
    }
}

fn counter(name: &str) -> Metric {
    Metric {
        kind: "counter",
        name: name.to_owned(),
        labels: vec![("grpc.method".to_owned(), METHOD.to_owned())],
    }
}

fn histogram_values<'a>(recorded: &'a Recorded, metric: &Metric) -> &'a [f64] {
    match recorded.get(metric) {
        Some(Value::Histogram(values)) => values,
        other => panic!("{metric:?}: expected a histogram, got {other:?}\nall: {recorded:#?}"),
    }
}

fn unavailable() -> FaultAction {
    FaultAction::code(Code::Unavailable).message("try again")
}

/// Backoffs of exactly 5 ms, then 10 ms, …: no jitter, so delays are exact.
fn exact_policy() -> tonic_retry::RetryPolicyBuilder {
    fast_policy().jitter(Jitter::None).backoff_multiplier(2.0)
}

fn layered(channel: tonic::transport::Channel, layer: RetryLayer) -> Client {
    tonic_retry::testing::proto::EchoClient::new(
        ServiceBuilder::new().layer(layer).service(channel),
    )
}

#[test]
fn retries_and_retry_delay_are_recorded_once_per_call() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = client(&server, exact_policy().build().unwrap()).await;
        let script = [unavailable(), unavailable(), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
    });

    // Labelled with the call's final status.
    let retries = histogram("grpc.client.call.retries", "OK");
    assert_eq!(histogram_values(&recorded, &retries), [2.0]);
    let delay = histogram("grpc.client.call.retry_delay", "OK");
    let delays = histogram_values(&recorded, &delay);
    assert_eq!(delays.len(), 1);
    // The time with no attempt in flight: at least the 5 ms + 10 ms of
    // backoff, plus scheduling and connection time.
    assert!(delays[0] >= 0.015 && delays[0] < 0.5, "{delays:?}");
    assert_eq!(recorded.len(), 2, "nothing else: {recorded:#?}");
}

#[test]
fn a_call_without_retries_records_nothing() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = client(&server, exact_policy().build().unwrap()).await;
        client
            .unary(scripted("ok", &[FaultAction::ok()]))
            .await
            .unwrap();
        // A final status on the first attempt is not a retry either.
        let status = client
            .unary(scripted("final", &[FaultAction::code(Code::NotFound)]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    });
    assert!(recorded.is_empty(), "{recorded:#?}");
}

#[test]
fn a_status_the_layer_makes_is_labelled_with_its_code() {
    let recorded = recorded(|| async {
        // Nothing listens here: every attempt is refused, which the layer
        // turns into UNAVAILABLE and surfaces itself after the last one.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut client = client_over(channel, exact_policy().max_attempts(3).build().unwrap());
        let status = client
            .unary(scripted("refused", &[FaultAction::ok()]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    });
    let retries = histogram("grpc.client.call.retries", "UNAVAILABLE");
    assert_eq!(histogram_values(&recorded, &retries), [2.0]);
    let delay = histogram("grpc.client.call.retry_delay", "UNAVAILABLE");
    let delays = histogram_values(&recorded, &delay);
    assert!(delays[0] >= 0.015 && delays[0] < 0.5, "{delays:?}");
}

#[test]
fn a_transparent_retry_is_recorded_apart_from_retries() {
    const REFUSED_STREAM: u32 = 7;
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = client(&server, exact_policy().build().unwrap()).await;
        let script = [FaultAction::reset_with(REFUSED_STREAM), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
    });
    let transparent = histogram("grpc.client.call.transparent_retries", "OK");
    assert_eq!(histogram_values(&recorded, &transparent), [1.0]);
    assert_eq!(recorded.len(), 1, "no retries, no delay: {recorded:#?}");
}

#[test]
fn hedges_are_recorded_apart_from_retries() {
    let recorded = recorded(|| async {
        // The first attempt's non-fatal UNAVAILABLE sends the second at
        // once, long before the hedging delay; the second answers OK.
        let server = TestServer::start().await.unwrap();
        let layer = RetryLayer::hedging(HedgingPolicy {
            max_attempts: 3,
            hedging_delay: Duration::from_secs(1),
            non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
            per_attempt_timeout: None,
        });
        let mut client = layered(channel(&server).await, layer);
        let script = [unavailable(), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
        assert_eq!(server.attempts("c").len(), 2);
    });
    let hedges = histogram("grpc.client.call.hedges", "OK");
    assert_eq!(histogram_values(&recorded, &hedges), [1.0]);
    assert_eq!(recorded.len(), 1, "no retries, no delay: {recorded:#?}");
}

#[test]
fn throttled_decisions_increment_tonic_retry_throttled() {
    let recorded = recorded(|| async {
        // The grpcio test vector: maxTokens 10, tokenRatio 0.1, maxAttempts
        // 4, always UNAVAILABLE. Call 1 makes 4 attempts (10 → 6 tokens);
        // calls 2 and 3 fail at 5 and 4 tokens, at or below half: throttled.
        let server = TestServer::start().await.unwrap();
        let layer = RetryLayer::builder(exact_policy().max_attempts(4).build().unwrap())
            .throttle(RetryThrottle::new(10_000, 100).unwrap())
            .build();
        let mut client = layered(channel(&server).await, layer);
        for i in 0..3 {
            let id = format!("c{i}");
            let status = client
                .unary(scripted(&id, &[unavailable()]))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::Unavailable);
        }
        assert_eq!(server.total_attempts(), 4 + 1 + 1);
    });
    assert_eq!(
        recorded.get(&counter("tonic_retry.throttled")),
        Some(&Value::Counter(2)),
        "{recorded:#?}"
    );
    // Only call 1 retried: its attempts ran out before the bucket did.
    let retries = histogram("grpc.client.call.retries", "UNAVAILABLE");
    assert_eq!(histogram_values(&recorded, &retries), [3.0]);
    let delay = histogram("grpc.client.call.retry_delay", "UNAVAILABLE");
    let delays = histogram_values(&recorded, &delay);
    assert!(
        delays[0] >= 0.035 && delays[0] < 0.5,
        "at least 5 + 10 + 20 ms: {delays:?}"
    );
    assert_eq!(recorded.len(), 3, "{recorded:#?}");
}

#[test]
fn budget_refusals_increment_tonic_retry_budget_exhausted() {
    let recorded = recorded(|| async {
        // No floor and 20 % of calls: the first call's retry is refused
        // (0.2 retries allowed), the fifth call's is allowed (1.0).
        let server = TestServer::start().await.unwrap();
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2).unwrap();
        let layer = RetryLayer::builder(exact_policy().max_attempts(2).build().unwrap())
            .budget(budget)
            .build();
        let mut client = layered(channel(&server).await, layer);
        for i in 0..5 {
            let id = format!("c{i}");
            client
                .unary(scripted(&id, &[unavailable()]))
                .await
                .unwrap_err();
        }
        assert_eq!(server.total_attempts(), 5 + 1);
    });
    assert_eq!(
        recorded.get(&counter("tonic_retry.budget_exhausted")),
        Some(&Value::Counter(4)),
        "{recorded:#?}"
    );
    // Only call 5 retried, and failed again.
    let retries = histogram("grpc.client.call.retries", "UNAVAILABLE");
    assert_eq!(histogram_values(&recorded, &retries), [1.0]);
}

#[test]
fn a_call_dropped_mid_backoff_is_recorded_as_cancelled() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let policy = exact_policy()
            .initial_backoff(Duration::from_secs(10))
            .max_backoff(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut client = layered(channel(&server).await, RetryLayer::new(policy));
        let call = client.unary(scripted("c", &[unavailable()]));
        // Let the layer see the failure and decide to retry, then drop the
        // call mid-backoff.
        tokio::select! {
            _ = call => panic!("the call is backing off for 10 s"),
            () = async {
                server.wait_for_attempts("c", 1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            } => {}
        }
    });
    let retries = histogram("grpc.client.call.retries", "CANCELLED");
    assert_eq!(histogram_values(&recorded, &retries), [1.0]);
}

#[test]
fn a_committed_call_is_recorded_with_the_status_its_trailers_carry() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = client(&server, exact_policy().build().unwrap()).await;
        // Retried once, then headers, a message and UNAVAILABLE in the
        // trailers: committed, and failed.
        let script = [unavailable(), FaultAction::ok().grpc_status_raw("14")];
        let status = client.unary(scripted("c", &script)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    });
    let retries = histogram("grpc.client.call.retries", "UNAVAILABLE");
    assert_eq!(histogram_values(&recorded, &retries), [1.0]);
    assert!(
        !recorded.contains_key(&histogram("grpc.client.call.retries", "OK")),
        "not counted as OK at commit: {recorded:#?}"
    );
}
