//! The layer's metrics (feature `metrics`): gRFC A66's per-attempt and
//! per-call metrics and gRFC A96's retry metrics, read back through an
//! in-memory `DebuggingRecorder`: every name, unit, label and value.
//!
//! Each test installs its own recorder for the current thread only
//! (`metrics::with_local_recorder`) and runs its calls on a current-thread
//! runtime inside it, so every metric the layer emits lands in that
//! recorder and tests running in parallel do not see each other's.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_retry::metrics as names;
use tonic_retry::testing::proto::{EchoClient, EchoRequest, EchoResponse};
use tonic_retry::testing::{FaultAction, TestServer};
use tonic_retry::{CodeSet, HedgingPolicy, Jitter, RetryBudget, RetryLayer, RetryThrottle};
use tower::ServiceBuilder;

const METHOD: &str = "retry.test.v1.Echo/Unary";
const TARGET: &str = "dns:///echo.test:443";
const REFUSED_STREAM: u32 = 7;

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

/// Everything recorded, and the unit and description of every name.
struct Recorded {
    values: BTreeMap<Metric, Value>,
    described: BTreeMap<String, (Option<Unit>, Option<String>)>,
}

/// Runs `test` on a fresh current-thread runtime with a fresh recorder
/// installed for this thread, and returns everything recorded.
fn recorded<F: Future<Output = ()>>(test: impl FnOnce() -> F) -> Recorded {
    recorded_through(|recorder| recorder, test)
}

/// As [`recorded`], with the recorder wrapped by `wrap` first.
fn recorded_through<R: Recorder, F: Future<Output = ()>>(
    wrap: impl FnOnce(DebuggingRecorder) -> R,
    test: impl FnOnce() -> F,
) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let recorder = wrap(recorder);
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test());
    });
    let mut values = BTreeMap::new();
    let mut described = BTreeMap::new();
    for (key, unit, description, value) in snapshotter.snapshot().into_vec() {
        let metric = metric(&key);
        described.insert(
            metric.name.clone(),
            (unit, description.map(|d| d.to_string())),
        );
        values.insert(metric, value_of(value));
    }
    Recorded { values, described }
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

fn labels(method: &str, target: &str, status: Option<&str>) -> Vec<(String, String)> {
    let mut labels = vec![
        ("grpc.method".to_owned(), method.to_owned()),
        ("grpc.target".to_owned(), target.to_owned()),
    ];
    if let Some(status) = status {
        labels.push(("grpc.status".to_owned(), status.to_owned()));
    }
    // As `metric` sorts them.
    labels.sort();
    labels
}

/// A histogram of [`METHOD`] through a layer with [`TARGET`]; `status`
/// only for the two durations.
fn histogram(name: &str, status: Option<&str>) -> Metric {
    Metric {
        kind: "histogram",
        name: name.to_owned(),
        labels: labels(METHOD, TARGET, status),
    }
}

fn counter(name: &str) -> Metric {
    Metric {
        kind: "counter",
        name: name.to_owned(),
        labels: labels(METHOD, TARGET, None),
    }
}

fn attempt_duration(status: &str) -> Metric {
    histogram("grpc.client.attempt.duration", Some(status))
}

fn call_duration(status: &str) -> Metric {
    histogram("grpc.client.call.duration", Some(status))
}

fn retries() -> Metric {
    histogram("grpc.client.call.retries", None)
}

fn transparent_retries() -> Metric {
    histogram("grpc.client.call.transparent_retries", None)
}

fn hedges() -> Metric {
    histogram("grpc.client.call.hedges", None)
}

fn retry_delay() -> Metric {
    histogram("grpc.client.call.retry_delay", None)
}

fn attempts_started() -> Metric {
    counter("grpc.client.attempt.started")
}

impl Recorded {
    fn histogram(&self, metric: &Metric) -> &[f64] {
        match self.values.get(metric) {
            Some(Value::Histogram(values)) => values,
            other => panic!("{metric:?}: expected a histogram, got {other:?}\n{self:#?}"),
        }
    }

    fn counter(&self, metric: &Metric) -> u64 {
        match self.values.get(metric) {
            Some(Value::Counter(n)) => *n,
            other => panic!("{metric:?}: expected a counter, got {other:?}\n{self:#?}"),
        }
    }

    /// Exactly these metrics were recorded, no others.
    fn assert_only(&self, expected: &[Metric]) {
        let mut expected: Vec<_> = expected.to_vec();
        expected.sort();
        let recorded: Vec<_> = self.values.keys().cloned().collect();
        assert_eq!(recorded, expected, "{self:#?}");
    }
}

impl std::fmt::Debug for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.values.iter()).finish()
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
    EchoClient::new(ServiceBuilder::new().layer(layer).service(channel))
}

/// A stock client through a layer with [`TARGET`] and `policy`.
async fn targeted(server: &TestServer, policy: tonic_retry::RetryPolicyBuilder) -> Client {
    let layer = RetryLayer::builder(policy.build().unwrap())
        .target(TARGET)
        .build();
    layered(channel(server).await, layer)
}

fn hedging(max_attempts: u32, delay: Duration) -> tonic_retry::RetryLayerBuilder {
    RetryLayer::hedging_builder(HedgingPolicy {
        max_attempts,
        hedging_delay: delay,
        non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
        per_attempt_timeout: None,
    })
    .target(TARGET)
}

#[test]
fn a_call_that_succeeds_at_once_records_a66_metrics_and_a_zero_delay_but_no_a96_counts() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        let ok = FaultAction::ok();
        client.unary(scripted("ok", &[ok])).await.unwrap();
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("OK"),
        call_duration("OK"),
        retry_delay(),
    ]);
    assert_eq!(recorded.counter(&attempts_started()), 1);
    let attempt = recorded.histogram(&attempt_duration("OK"));
    let call = recorded.histogram(&call_duration("OK"));
    assert_eq!((attempt.len(), call.len()), (1, 1));
    assert!(
        attempt[0] > 0.0 && attempt[0] <= call[0],
        "{attempt:?} {call:?}"
    );
    // A96 makes no exception for the delay: 0 s, recorded.
    assert_eq!(recorded.histogram(&retry_delay()), [0.0]);
}

#[test]
fn retries_are_counted_per_call_with_their_delay_and_each_attempt_s_status() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        let script = [unavailable(), unavailable(), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("UNAVAILABLE"),
        attempt_duration("OK"),
        call_duration("OK"),
        retries(),
        retry_delay(),
    ]);
    assert_eq!(recorded.counter(&attempts_started()), 3);
    assert_eq!(
        recorded.histogram(&attempt_duration("UNAVAILABLE")).len(),
        2
    );
    assert_eq!(recorded.histogram(&attempt_duration("OK")).len(), 1);
    assert_eq!(recorded.histogram(&retries()), [2.0]);
    // The time with no attempt in flight: at least the 5 ms + 10 ms of
    // backoff, plus scheduling and connection time.
    let delays = recorded.histogram(&retry_delay());
    assert!(
        delays.len() == 1 && delays[0] >= 0.015 && delays[0] < 0.5,
        "{delays:?}"
    );
    let call = recorded.histogram(&call_duration("OK"));
    assert!(
        call[0] > delays[0],
        "the call outlasts its delays: {call:?}"
    );
}

#[test]
fn the_first_attempt_s_duration_ends_with_its_response_body_not_its_headers() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        // Headers at once, the message and trailers 100 ms later: the fast
        // path commits at the headers, the attempt ends with the trailers.
        let script = [FaultAction::ok().body_delay_ms(100)];
        client.unary(scripted("c", &script)).await.unwrap();
    });
    let attempt = recorded.histogram(&attempt_duration("OK"));
    let call = recorded.histogram(&call_duration("OK"));
    assert!(attempt[0] >= 0.1, "{attempt:?}");
    assert!(call[0] >= attempt[0], "{call:?} {attempt:?}");
}

#[test]
fn a_committed_call_and_its_attempt_end_with_the_status_its_trailers_carry() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        // Retried once, then headers, a message and UNAVAILABLE in the
        // trailers: committed, and failed.
        let script = [unavailable(), FaultAction::ok().grpc_status_raw("14")];
        let status = client.unary(scripted("c", &script)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("UNAVAILABLE"),
        call_duration("UNAVAILABLE"),
        retries(),
        retry_delay(),
    ]);
    assert_eq!(
        recorded.histogram(&attempt_duration("UNAVAILABLE")).len(),
        2
    );
    assert_eq!(recorded.histogram(&retries()), [1.0]);
}

#[test]
fn a_transparent_retry_is_an_attempt_counted_apart_from_retries() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        let script = [FaultAction::reset_with(REFUSED_STREAM), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("UNAVAILABLE"),
        attempt_duration("OK"),
        call_duration("OK"),
        transparent_retries(),
        retry_delay(),
    ]);
    assert_eq!(recorded.counter(&attempts_started()), 2);
    assert_eq!(recorded.histogram(&transparent_retries()), [1.0]);
}

#[test]
fn hedges_are_counted_apart_from_retries() {
    let recorded = recorded(|| async {
        // The first attempt's non-fatal UNAVAILABLE sends the second at
        // once, long before the hedging delay; the second answers OK.
        let server = TestServer::start().await.unwrap();
        let layer = hedging(3, Duration::from_secs(1)).build();
        let mut client = layered(channel(&server).await, layer);
        let script = [unavailable(), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
        assert_eq!(server.attempts("c").len(), 2);
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("UNAVAILABLE"),
        attempt_duration("OK"),
        call_duration("OK"),
        hedges(),
        retry_delay(),
    ]);
    assert_eq!(recorded.counter(&attempts_started()), 2);
    assert_eq!(recorded.histogram(&hedges()), [1.0]);
}

#[test]
fn a_hedge_that_loses_the_race_ends_cancelled() {
    let recorded = recorded(|| async {
        // Attempt 1 answers after 2 s; the hedge sent 20 ms later answers
        // at once and wins.
        let server = TestServer::start().await.unwrap();
        let layer = hedging(2, Duration::from_millis(20)).build();
        let mut client = layered(channel(&server).await, layer);
        let script = [FaultAction::ok().delay_ms(2_000), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("CANCELLED"),
        attempt_duration("OK"),
        call_duration("OK"),
        hedges(),
        retry_delay(),
    ]);
    assert_eq!(recorded.histogram(&hedges()), [1.0]);
    let lost = recorded.histogram(&attempt_duration("CANCELLED"));
    assert!(lost[0] >= 0.02 && lost[0] < 1.0, "{lost:?}");
    // Attempts overlapped from start to end: no delay.
    assert_eq!(recorded.histogram(&retry_delay()), [0.0]);
}

#[test]
fn an_attempt_past_its_per_attempt_timeout_ends_deadline_exceeded() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let policy = exact_policy().per_attempt_timeout(Duration::from_millis(30));
        let mut client = targeted(&server, policy).await;
        let script = [FaultAction::ok().delay_ms(2_000), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
    });
    let timed_out = recorded.histogram(&attempt_duration("DEADLINE_EXCEEDED"));
    assert!(
        timed_out.len() == 1 && timed_out[0] >= 0.03,
        "{timed_out:?}"
    );
    assert_eq!(recorded.histogram(&attempt_duration("OK")).len(), 1);
    assert_eq!(recorded.histogram(&retries()), [1.0]);
}

#[test]
fn an_attempt_past_the_call_s_deadline_ends_deadline_exceeded() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        let mut request = scripted("c", &[FaultAction::ok().delay_ms(2_000)]);
        request.set_timeout(Duration::from_millis(50));
        let status = client.unary(request).await.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("DEADLINE_EXCEEDED"),
        call_duration("DEADLINE_EXCEEDED"),
        retry_delay(),
    ]);
    let attempt = recorded.histogram(&attempt_duration("DEADLINE_EXCEEDED"));
    assert!(attempt[0] >= 0.05 && attempt[0] < 1.0, "{attempt:?}");
}

#[test]
fn an_attempt_reset_by_the_server_ends_with_the_reset_s_code() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        // Reset before any response (INTERNAL_ERROR: tonic says INTERNAL,
        // not retryable), and reset after the headers (committed).
        for (id, reset) in [
            ("before", FaultAction::reset()),
            ("after", FaultAction::reset().headers_first()),
        ] {
            let status = client.unary(scripted(id, &[reset])).await.unwrap_err();
            assert_eq!(status.code(), Code::Internal, "{id}");
        }
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("INTERNAL"),
        call_duration("INTERNAL"),
        retry_delay(),
    ]);
    assert_eq!(recorded.histogram(&attempt_duration("INTERNAL")).len(), 2);
    assert_eq!(recorded.histogram(&call_duration("INTERNAL")).len(), 2);
}

#[test]
fn an_unnamed_method_is_recorded_as_other_unless_raw_names_are_asked_for() {
    /// One call over tonic's `Grpc` client with a raw path: no
    /// `GrpcMethod` extension, as a proxy or a probe sends it.
    async fn raw_call(server: &TestServer, layer: RetryLayer) {
        let service = ServiceBuilder::new()
            .layer(layer)
            .service(channel(server).await);
        let mut grpc = tonic::client::Grpc::new(service);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
        let path = http::uri::PathAndQuery::from_static("/retry.test.v1.Echo/Unary");
        let request = scripted("raw", &[FaultAction::ok()]);
        grpc.unary(request, path, codec).await.unwrap();
    }
    let other = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let layer = RetryLayer::builder(exact_policy().build().unwrap())
            .target(TARGET)
            .build();
        raw_call(&server, layer).await;
    });
    let raw = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let layer = RetryLayer::builder(exact_policy().build().unwrap())
            .target(TARGET)
            .generic_method_names(true)
            .build();
        raw_call(&server, layer).await;
    });
    for (recorded, method) in [(other, "other"), (raw, METHOD)] {
        let metric = |name: &str, status: Option<&str>| Metric {
            kind: if name.ends_with("started") {
                "counter"
            } else {
                "histogram"
            },
            name: name.to_owned(),
            labels: labels(method, TARGET, status),
        };
        recorded.assert_only(&[
            metric("grpc.client.attempt.started", None),
            metric("grpc.client.attempt.duration", Some("OK")),
            metric("grpc.client.call.duration", Some("OK")),
            metric("grpc.client.call.retry_delay", None),
        ]);
    }
}

#[test]
fn a_layer_without_a_target_labels_its_calls_unknown() {
    let recorded = recorded(|| async {
        // Nothing listens here: every attempt is refused, which the layer
        // turns into UNAVAILABLE and surfaces itself after the last one.
        let (_, channel) = refused_address();
        let mut client = client_over(channel, exact_policy().max_attempts(3).build().unwrap());
        let status = client
            .unary(scripted("refused", &[FaultAction::ok()]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    });
    let unknown = |name: &str, status: Option<&str>| Metric {
        kind: "histogram",
        name: name.to_owned(),
        labels: labels(METHOD, "unknown", status),
    };
    let attempts = unknown("grpc.client.attempt.duration", Some("UNAVAILABLE"));
    assert_eq!(recorded.histogram(&attempts).len(), 3);
    let call = unknown("grpc.client.call.duration", Some("UNAVAILABLE"));
    assert_eq!(recorded.histogram(&call).len(), 1);
    let retries = unknown("grpc.client.call.retries", None);
    assert_eq!(recorded.histogram(&retries), [2.0]);
}

#[test]
fn calls_through_two_layers_on_one_thread_keep_their_own_targets() {
    const OTHER: &str = "dns:///other.test:443";
    let recorded = recorded(|| async {
        // One thread, so both layers' calls go through the same pooled
        // call state, alternately.
        let server = TestServer::start().await.unwrap();
        let mut first = targeted(&server, exact_policy()).await;
        let layer = RetryLayer::builder(exact_policy().build().unwrap())
            .target(OTHER)
            .build();
        let mut second = layered(channel(&server).await, layer);
        for i in 0..3 {
            let ok = [FaultAction::ok()];
            first.unary(scripted(&format!("a{i}"), &ok)).await.unwrap();
            second.unary(scripted(&format!("b{i}"), &ok)).await.unwrap();
        }
    });
    let other = Metric {
        labels: labels(METHOD, OTHER, None),
        ..attempts_started()
    };
    assert_eq!(recorded.counter(&attempts_started()), 3);
    assert_eq!(recorded.counter(&other), 3);
}

#[test]
fn a_call_dropped_mid_backoff_is_recorded_as_cancelled_with_its_wait_as_delay() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let policy = exact_policy()
            .initial_backoff(Duration::from_secs(10))
            .max_backoff(Duration::from_secs(10));
        let mut client = targeted(&server, policy).await;
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
    // The retry was never sent: no retries to report.
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("UNAVAILABLE"),
        call_duration("CANCELLED"),
        retry_delay(),
    ]);
    let delay = recorded.histogram(&retry_delay());
    assert!(delay[0] >= 0.04 && delay[0] < 1.0, "{delay:?}");
}

#[test]
fn a_call_cancelled_during_an_attempt_ends_that_attempt_cancelled() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        let token = CancellationToken::new();
        let mut request = scripted("c", &[FaultAction::ok().delay_ms(2_000)]);
        request.extensions_mut().insert(token.clone());
        let (status, ()) = tokio::join!(client.unary(request), async {
            server.wait_for_attempts("c", 1).await;
            token.cancel();
        });
        assert_eq!(status.unwrap_err().code(), Code::Cancelled);
    });
    recorded.assert_only(&[
        attempts_started(),
        attempt_duration("CANCELLED"),
        call_duration("CANCELLED"),
        retry_delay(),
    ]);
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
            .target(TARGET)
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
    assert_eq!(recorded.counter(&counter("tonic_retry.throttled")), 2);
    // Only call 1 retried: its attempts ran out before the bucket did.
    assert_eq!(recorded.histogram(&retries()), [3.0]);
    assert_eq!(recorded.counter(&attempts_started()), 6);
    assert_eq!(recorded.histogram(&call_duration("UNAVAILABLE")).len(), 3);
    let delays = recorded.histogram(&retry_delay());
    assert_eq!(delays.len(), 3, "one per call: {delays:?}");
    assert!(
        delays.iter().any(|d| *d >= 0.035 && *d < 0.5),
        "call 1 waited at least 5 + 10 + 20 ms: {delays:?}"
    );
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
            .target(TARGET)
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
        recorded.counter(&counter("tonic_retry.budget_exhausted")),
        4
    );
    // Only call 5 retried, and failed again.
    assert_eq!(recorded.histogram(&retries()), [1.0]);
}

#[test]
fn every_metric_is_described_with_its_unit() {
    let recorded = recorded(|| async {
        let server = TestServer::start().await.unwrap();
        let mut client = targeted(&server, exact_policy()).await;
        let script = [unavailable(), FaultAction::ok()];
        client.unary(scripted("c", &script)).await.unwrap();
    });
    // The `metrics` facade has no annotated units: counts are `Count`, and
    // their OpenTelemetry unit opens the description.
    let expected = [
        (
            "grpc.client.attempt.started",
            Unit::Count,
            Some("{attempt}"),
        ),
        ("grpc.client.attempt.duration", Unit::Seconds, None),
        ("grpc.client.call.duration", Unit::Seconds, None),
        ("grpc.client.call.retries", Unit::Count, Some("{retry}")),
        ("grpc.client.call.retry_delay", Unit::Seconds, None),
    ];
    for (name, unit, annotation) in expected {
        let (got_unit, description) = &recorded.described[name];
        assert_eq!(*got_unit, Some(unit), "{name}");
        let description = description.as_deref().unwrap_or_default();
        if let Some(annotation) = annotation {
            assert!(description.starts_with(annotation), "{name}: {description}");
        }
        assert!(description.len() > 20, "{name}: {description}");
    }
    assert_eq!(names::UNIT_TRANSPARENT_RETRY, "{transparent_retry}");
    assert_eq!(names::UNIT_HEDGE, "{hedge}");
    assert_eq!(names::UNIT_SECONDS, "s");
}

#[test]
fn the_recommended_buckets_are_a96_s_and_a66_s() {
    use names::*;
    assert_eq!(RETRY_BUCKETS, [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(HEDGE_BUCKETS, [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(TRANSPARENT_RETRY_BUCKETS, [1.0, 2.0, 3.0, 4.0, 5.0, 10.0]);
    // A66's latency buckets: 41 boundaries from 0 to 100 s.
    assert_eq!(LATENCY_BUCKETS.len(), 41);
    assert_eq!(LATENCY_BUCKETS[..4], [0.0, 0.00001, 0.00005, 0.0001]);
    assert_eq!(LATENCY_BUCKETS[40], 100.0);
    assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    let bucketed: BTreeMap<_, _> = HISTOGRAM_BUCKETS.iter().copied().collect();
    let expected: BTreeMap<&str, &[f64]> = [
        (CLIENT_ATTEMPT_DURATION, LATENCY_BUCKETS),
        (CLIENT_CALL_DURATION, LATENCY_BUCKETS),
        (CLIENT_CALL_RETRIES, RETRY_BUCKETS),
        (CLIENT_CALL_TRANSPARENT_RETRIES, TRANSPARENT_RETRY_BUCKETS),
        (CLIENT_CALL_HEDGES, HEDGE_BUCKETS),
        (CLIENT_CALL_RETRY_DELAY, LATENCY_BUCKETS),
    ]
    .into_iter()
    .collect();
    assert_eq!(bucketed, expected, "every histogram, and only those");
}

#[test]
fn the_buckets_apply_to_a_prometheus_exporter_under_the_sanitized_names() {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in names::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            .unwrap();
    }
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let server = TestServer::start().await.unwrap();
                let mut client = targeted(&server, exact_policy()).await;
                let script = [unavailable(), FaultAction::ok()];
                client.unary(scripted("c", &script)).await.unwrap();
            });
    });
    let text = handle.render();
    let labels = format!(r#"grpc_method="{METHOD}",grpc_target="{TARGET}""#);
    for line in [
        format!(r#"grpc_client_call_retries_bucket{{{labels},le="5"}} 1"#),
        format!(r#"grpc_client_call_retries_bucket{{{labels},le="1"}} 1"#),
        format!(r#"grpc_client_call_retry_delay_bucket{{{labels},le="0.0008"}}"#),
        format!(
            r#"grpc_client_attempt_duration_bucket{{{labels},grpc_status="UNAVAILABLE",le="100"}} 1"#
        ),
        format!(r#"grpc_client_attempt_started{{{labels}}} 2"#),
    ] {
        assert!(text.contains(&line), "{line}\nnot in:\n{text}");
    }
}

/// Counts the handles registered through it.
struct CountingRegistrations {
    inner: DebuggingRecorder,
    registered: Arc<AtomicUsize>,
}

impl Recorder for CountingRegistrations {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.registered.fetch_add(1, Ordering::Relaxed);
        self.inner.register_counter(key, metadata)
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.registered.fetch_add(1, Ordering::Relaxed);
        self.inner.register_gauge(key, metadata)
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.registered.fetch_add(1, Ordering::Relaxed);
        self.inner.register_histogram(key, metadata)
    }
}

#[test]
fn handles_are_registered_once_per_method_not_per_call() {
    let registered = Arc::new(AtomicUsize::new(0));
    let count = registered.clone();
    let recorded = recorded_through(
        |inner| CountingRegistrations {
            inner,
            registered: count,
        },
        || async {
            let server = TestServer::start().await.unwrap();
            let mut client = targeted(&server, exact_policy()).await;
            for i in 0..20 {
                let id = format!("c{i}");
                let script = [unavailable(), FaultAction::ok()];
                client.unary(scripted(&id, &script)).await.unwrap();
            }
        },
    );
    assert_eq!(recorded.counter(&attempts_started()), 40);
    assert_eq!(recorded.histogram(&retries()).len(), 20);
    // One method, and only what it recorded: attempt.started, retry_delay
    // and retries, then one handle per status seen: attempt.duration OK
    // and UNAVAILABLE, call.duration OK.
    assert_eq!(registered.load(Ordering::Relaxed), 3 + 3);
}
