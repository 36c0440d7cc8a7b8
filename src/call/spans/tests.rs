//! The spans of calls through the layer, read back from a subscriber that
//! keeps every span's name, parent and fields.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;
use tonic::body::Body;
use tower::{Layer, ServiceExt};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::{CodeSet, HedgingPolicy, Jitter, RetryLayer, RetryPolicy};

/// One span as the subscriber saw it: its name, its parent's name, and
/// every field given or recorded, as `name=value`, in order.
#[derive(Debug, Clone)]
struct Seen {
    name: &'static str,
    parent: Option<&'static str>,
    fields: Vec<String>,
}

impl Seen {
    /// The last value recorded for `key`.
    fn get(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.fields
            .iter()
            .rev()
            .find_map(|f| f.strip_prefix(prefix.as_str()))
    }
}

/// Every span seen, and where each live span's id points in that list.
#[derive(Default)]
struct SpansSeen {
    spans: Vec<Seen>,
    by_id: HashMap<u64, usize>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<SpansSeen>>);

struct Fields<'a>(&'a mut Vec<String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push(format!("{}={value}", field.name()));
    }
}

impl<S> tracing_subscriber::Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.name());
        let mut fields = Vec::new();
        attrs.record(&mut Fields(&mut fields));
        let mut seen = self.0.lock().unwrap();
        let index = seen.spans.len();
        seen.spans.push(Seen {
            name: attrs.metadata().name(),
            parent,
            fields,
        });
        // Ids are reused once a span closes; a record only ever goes to
        // the live span with that id.
        seen.by_id.insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some(&index) = seen.by_id.get(&id.into_u64()) {
            values.record(&mut Fields(&mut seen.spans[index].fields));
        }
    }
}

/// What the inner service answers each attempt: a Trailers-Only status,
/// or (`None`) nothing, ever.
type Script = Arc<Mutex<VecDeque<Option<Code>>>>;

fn trailers_only(code: Code) -> http::Response<Body> {
    let mut response = http::Response::new(Body::empty());
    let value = http::HeaderValue::from(code as i32);
    response.headers_mut().insert("grpc-status", value);
    response
}

/// One call to `/pkg.Svc/Method` through `layer`, over an in-memory
/// service that answers as `script` says, under a subscriber that sees
/// spans up to `level`, on a paused clock; returns the spans seen and the
/// call's code.
fn call_under(
    level: LevelFilter,
    layer: RetryLayer,
    script: &[Option<Code>],
    named: bool,
) -> (Vec<Seen>, Code) {
    call_with_timeout(level, layer, script, named, None)
}

/// As [`call_under`], with `grpc-timeout` set to `timeout`.
fn call_with_timeout(
    level: LevelFilter,
    layer: RetryLayer,
    script: &[Option<Code>],
    named: bool,
    timeout: Option<&'static str>,
) -> (Vec<Seen>, Code) {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone().with_filter(level));
    let script: Script = Arc::new(Mutex::new(script.iter().copied().collect()));
    let code = tracing::subscriber::with_default(subscriber, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let inner = tower::service_fn(move |_: http::Request<Body>| {
                let next = script.lock().unwrap().pop_front().flatten();
                async move {
                    match next {
                        Some(code) => Ok::<_, Infallible>(trailers_only(code)),
                        None => std::future::pending().await,
                    }
                }
            });
            let service = layer.layer(inner);
            let mut request = http::Request::new(Body::empty());
            *request.uri_mut() = http::Uri::from_static("/pkg.Svc/Method");
            if named {
                request
                    .extensions_mut()
                    .insert(tonic::GrpcMethod::new("pkg.Svc", "Method"));
            }
            if let Some(timeout) = timeout {
                let value = http::HeaderValue::from_static(timeout);
                request.headers_mut().insert("grpc-timeout", value);
            }
            match service.oneshot(request).await {
                Ok(response) => {
                    let status = response.headers()["grpc-status"].to_str().unwrap();
                    Code::from_i32(status.parse().unwrap())
                }
                Err(error) => error.downcast::<tonic::Status>().unwrap().code(),
            }
        })
    });
    let seen = spans.0.lock().unwrap().spans.clone();
    (seen, code)
}

fn retrying() -> RetryLayer {
    let policy = RetryPolicy::builder()
        .initial_backoff(Duration::from_millis(10))
        .jitter(Jitter::None)
        .build()
        .unwrap();
    RetryLayer::new(policy)
}

fn names(seen: &[Seen]) -> Vec<(&'static str, Option<&'static str>)> {
    seen.iter().map(|s| (s.name, s.parent)).collect()
}

#[test]
fn a_call_and_its_attempt_carry_opentelemetry_rpc_fields() {
    let (seen, code) = call_under(LevelFilter::DEBUG, retrying(), &[Some(Code::Ok)], true);
    assert_eq!(code, Code::Ok);
    assert_eq!(
        names(&seen),
        [("grpc.call", None), ("grpc.attempt", Some("grpc.call"))]
    );
    let (call, attempt) = (&seen[0], &seen[1]);
    for span in [call, attempt] {
        assert_eq!(span.get("otel.name"), Some("pkg.Svc/Method"), "{span:?}");
        assert_eq!(span.get("rpc.system"), Some("grpc"), "{span:?}");
        assert_eq!(span.get("rpc.service"), Some("pkg.Svc"), "{span:?}");
        assert_eq!(span.get("rpc.method"), Some("Method"), "{span:?}");
        assert_eq!(span.get("rpc.grpc.status_code"), Some("0"), "{span:?}");
        assert_eq!(span.get("otel.status_code"), None, "OK is no error");
    }
    assert_eq!(call.get("attempts"), Some("1"));
    assert_eq!(call.get("outcome"), Some("OK"));
    assert_eq!(call.get("otel.kind"), None);
    assert_eq!(attempt.get("otel.kind"), Some("client"));
    assert_eq!(attempt.get("attempt"), Some("1"));
    assert_eq!(attempt.get("transparent_retry"), Some("false"));
    assert_eq!(attempt.get("code"), Some("OK"));
    assert_eq!(attempt.get("backoff_ms"), None);
}

#[test]
fn each_retry_is_a_child_attempt_span_with_its_status_and_backoff() {
    let script = [Some(Code::Unavailable), Some(Code::Ok)];
    let (seen, code) = call_under(LevelFilter::DEBUG, retrying(), &script, false);
    assert_eq!(code, Code::Ok);
    assert_eq!(
        names(&seen),
        [
            ("grpc.call", None),
            ("grpc.attempt", Some("grpc.call")),
            ("grpc.attempt", Some("grpc.call")),
        ]
    );
    let (call, first, second) = (&seen[0], &seen[1], &seen[2]);
    // Without `GrpcMethod`, the names come from the path.
    assert_eq!(call.get("rpc.service"), Some("pkg.Svc"));
    assert_eq!(call.get("rpc.method"), Some("Method"));
    assert_eq!(call.get("attempts"), Some("2"));
    assert_eq!(call.get("rpc.grpc.status_code"), Some("0"));
    assert_eq!(first.get("attempt"), Some("1"));
    assert_eq!(first.get("rpc.grpc.status_code"), Some("14"));
    assert_eq!(first.get("code"), Some("UNAVAILABLE"));
    assert_eq!(first.get("otel.status_code"), Some("ERROR"));
    assert_eq!(first.get("backoff_ms"), Some("10.0"));
    assert_eq!(second.get("attempt"), Some("2"));
    assert_eq!(second.get("rpc.grpc.status_code"), Some("0"));
    assert_eq!(second.get("otel.status_code"), None);
}

#[test]
fn a_failed_call_is_an_error_span_with_its_final_code() {
    let script = [Some(Code::InvalidArgument)];
    let (seen, code) = call_under(LevelFilter::DEBUG, retrying(), &script, true);
    assert_eq!(code, Code::InvalidArgument);
    let call = &seen[0];
    assert_eq!(call.get("rpc.grpc.status_code"), Some("3"));
    assert_eq!(call.get("outcome"), Some("INVALID_ARGUMENT"));
    assert_eq!(call.get("otel.status_code"), Some("ERROR"));
    assert_eq!(seen[1].get("rpc.grpc.status_code"), Some("3"));
}

#[test]
fn a_hedge_that_loses_the_race_is_a_cancelled_attempt_span() {
    // Attempt 1 never answers; the hedge sent 10 ms later wins.
    let layer = RetryLayer::hedging(HedgingPolicy {
        max_attempts: 2,
        hedging_delay: Duration::from_millis(10),
        non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
        per_attempt_timeout: None,
    });
    let (seen, code) = call_under(LevelFilter::DEBUG, layer, &[None, Some(Code::Ok)], true);
    assert_eq!(code, Code::Ok);
    assert_eq!(
        names(&seen),
        [
            ("grpc.call", None),
            ("grpc.attempt", Some("grpc.call")),
            ("grpc.attempt", Some("grpc.call")),
        ]
    );
    assert_eq!(seen[1].get("attempt"), Some("1"));
    assert_eq!(seen[1].get("rpc.grpc.status_code"), Some("1"), "CANCELLED");
    assert_eq!(seen[2].get("attempt"), Some("2"));
    assert_eq!(seen[2].get("rpc.grpc.status_code"), Some("0"));
    assert_eq!(seen[0].get("attempts"), Some("2"));
}

#[test]
fn hedges_in_flight_at_the_deadline_end_deadline_exceeded() {
    // Neither attempt answers; the call's 50 ms deadline ends both.
    let layer = RetryLayer::hedging(HedgingPolicy {
        max_attempts: 2,
        hedging_delay: Duration::from_millis(10),
        non_fatal_codes: [Code::Unavailable].into_iter().collect::<CodeSet>(),
        per_attempt_timeout: None,
    });
    let (seen, code) =
        call_with_timeout(LevelFilter::DEBUG, layer, &[None, None], true, Some("50m"));
    assert_eq!(code, Code::DeadlineExceeded);
    assert_eq!(seen.len(), 3, "{seen:?}");
    for span in &seen {
        assert_eq!(span.get("rpc.grpc.status_code"), Some("4"), "{span:?}");
    }
}

#[test]
fn the_spans_are_at_debug_level_so_an_info_subscriber_sees_none() {
    let script = [Some(Code::Unavailable), Some(Code::Ok)];
    let (seen, code) = call_under(LevelFilter::INFO, retrying(), &script, true);
    assert_eq!(code, Code::Ok);
    assert!(seen.is_empty(), "{seen:?}");
}
