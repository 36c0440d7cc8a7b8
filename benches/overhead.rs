//! Per-call cost of the retry layer on the happy path, in isolation.
//!
//! ```text
//! cargo bench --bench overhead            # full run
//! BENCH_QUICK=1 cargo bench --bench overhead
//! ```
//!
//! The inner service is a ready in-memory tower service that drains the
//! request body (as a transport would) and answers at once with a
//! Trailers-Only OK (`grpc-status: 0`, empty body). Four variants wrap it:
//!
//! * `raw`: the inner service alone, the baseline;
//! * `tonic-retry`: `RetryLayer::new(RetryPolicy::default())`;
//! * `tower-retry-naive`: `tower::retry::Retry` with the approach users write
//!   today: the body is collected into `Bytes` first (an async step in front
//!   of the retry, boxed), so that the policy's `clone_request` can clone the
//!   `http::Request<Bytes>`, and each attempt turns it back into a
//!   `tonic::body::Body`;
//! * `tower-resilience`: `tower_resilience::retry::RetryLayer` built as its
//!   docs show (`builder().max_attempts().exponential_backoff()
//!   .retry_on_response()`), over the same collect-then-clone adapter, since
//!   it too needs `Req: Clone`.
//!
//! Every call builds the same request (`/pkg.Svc/Method`, `te: trailers`,
//! `content-type: application/grpc`, the `GrpcMethod` extension, a small
//! `Full` body holding the front of an 8 KiB buffer, as tonic's generated
//! client and encoder make them), readies the
//! service, calls it and polls the future once with `Waker::noop()` inside a
//! tokio runtime context; the happy path must complete on that first poll
//! (asserted). Timing and allocation counting are separate passes.
//!
//! Variants run interleaved: every round times each variant once (rotating
//! which goes first), and the added cost of a variant is the median over
//! rounds of (variant − raw) within the round, so drift in machine load
//! cancels out. Criterion cannot interleave variants or count allocations,
//! hence this custom harness (`harness = false`).
//!
//! `OVERHEAD_PROFILE=<variant>` (with `OVERHEAD_PROFILE_CALLS=<n>`) runs one
//! variant alone, for a profiler; see BENCHMARKS.md.
//!
//! Prints `RESULT` lines and writes the chart `benches/overhead.svg` (full
//! mode) or `$CARGO_TARGET_TMPDIR/overhead-quick.svg` (quick mode).

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, TE};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use tonic::body::Body;
use tower::{Layer, Service};

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// A small gRPC message: the 5-byte frame prefix and 11 bytes of payload.
const BODY: &[u8] = b"\0\0\0\0\x0b\x0a\x09hello rpc";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// tonic's encoder writes each message into the front of a fresh 8 KiB
/// buffer and sends that slice; the request body here is made the same way,
/// so every variant handles the chunk a real call carries.
const ENCODE_BUFFER: usize = 8 * 1024;

fn build_request() -> http::Request<Body> {
    let mut encoded = bytes::BytesMut::with_capacity(ENCODE_BUFFER);
    encoded.extend_from_slice(BODY);
    let message = encoded.split().freeze();
    drop(encoded);
    let mut request = http::Request::new(Body::new(Full::new(message)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static("/pkg.Svc/Method");
    let headers = request.headers_mut();
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("pkg.Svc", "Method"));
    request
}

/// The ready in-memory inner service.
#[derive(Clone, Copy, Debug)]
struct Inner;

impl Service<http::Request<Body>> for Inner {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Read the request body to its end, as a transport sends it.
        let mut body = request.into_body();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match std::pin::Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => drop(black_box(frame)),
                Poll::Ready(None) => break,
                Poll::Ready(Some(Err(e))) => panic!("request body failed: {e}"),
                Poll::Pending => panic!("request body was not ready"),
            }
        }
        let mut response = http::Response::new(Body::empty());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        std::future::ready(Ok(response))
    }
}

// ---------------------------------------------------------------------------
// The naive adapters: collect the body into Bytes so the request is Clone.

/// Collects the request body into `Bytes` and passes an
/// `http::Request<Bytes>` on: the step users put in front of a retry
/// middleware that needs `Req: Clone`.
#[derive(Clone, Debug)]
struct CollectBody<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for CollectBody<S>
where
    S: Service<http::Request<Bytes>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await?.to_bytes();
            inner
                .call(http::Request::from_parts(parts, bytes))
                .await
                .map_err(Into::into)
        })
    }
}

/// Each attempt: the buffered request back into a `tonic::body::Body`.
fn to_body(request: http::Request<Bytes>) -> http::Request<Body> {
    request.map(|bytes| Body::new(Full::new(bytes)))
}

type ToBody<S> = tower::util::MapRequest<S, fn(http::Request<Bytes>) -> http::Request<Body>>;

fn to_body_layer<S>(inner: S) -> ToBody<S> {
    tower::util::MapRequest::new(inner, to_body as fn(_) -> _)
}

/// The `tower::retry::Policy` users write: clone the buffered request,
/// retry UNAVAILABLE (from the Trailers-Only `grpc-status`) or a transport
/// error, with exponential backoff.
#[derive(Clone, Debug)]
struct NaivePolicy {
    retries_left: u32,
    backoff: Duration,
}

impl<E> tower::retry::Policy<http::Request<Bytes>, http::Response<Body>, E> for NaivePolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut http::Request<Bytes>,
        result: &mut Result<http::Response<Body>, E>,
    ) -> Option<Self::Future> {
        let retryable = match result {
            Ok(response) => response
                .headers()
                .get(GRPC_STATUS)
                .is_some_and(|status| status.as_bytes() == b"14"),
            Err(_) => true,
        };
        if !retryable || self.retries_left == 0 {
            return None;
        }
        self.retries_left -= 1;
        let delay = self.backoff;
        self.backoff *= 2;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, request: &http::Request<Bytes>) -> Option<http::Request<Bytes>> {
        Some(request.clone())
    }
}

fn is_unavailable(response: &http::Response<Body>) -> bool {
    response
        .headers()
        .get(GRPC_STATUS)
        .is_some_and(|status| status.as_bytes() == b"14")
}

// ---------------------------------------------------------------------------
// The harness.

/// One variant under test, type-erased so the rounds can loop over them.
trait Variant {
    fn name(&self) -> &'static str;
    /// Runs `calls` calls; returns the elapsed time.
    fn run(&mut self, calls: u64) -> Duration;
}

struct Bench<S> {
    name: &'static str,
    service: S,
}

impl<S, R> Variant for Bench<S>
where
    S: Service<http::Request<Body>, Response = http::Response<R>>,
    S::Error: std::fmt::Debug,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&mut self, calls: u64) -> Duration {
        let mut cx = Context::from_waker(Waker::noop());
        let start = Instant::now();
        for _ in 0..calls {
            let request = build_request();
            match self.service.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {}
                other => panic!("{}: not ready: {other:?}", self.name),
            }
            let future = pin!(self.service.call(request));
            match future.poll(&mut cx) {
                Poll::Ready(Ok(response)) => drop(black_box(response)),
                Poll::Ready(Err(e)) => panic!("{}: call failed: {e:?}", self.name),
                Poll::Pending => panic!(
                    "{}: the happy path did not complete on first poll",
                    self.name
                ),
            }
        }
        start.elapsed()
    }
}

fn variants() -> Vec<Box<dyn Variant>> {
    let tonic_retry =
        tonic_retry::RetryLayer::new(tonic_retry::RetryPolicy::default()).layer(Inner);

    let tower_naive = CollectBody {
        inner: tower::retry::Retry::new(
            NaivePolicy {
                retries_left: 4,
                backoff: Duration::from_millis(100),
            },
            to_body_layer(Inner),
        ),
    };

    let resilience = tower_resilience::retry::RetryLayer::<
        http::Request<Bytes>,
        http::Response<Body>,
        Infallible,
    >::builder()
    .max_attempts(5)
    .exponential_backoff(Duration::from_millis(100))
    .retry_on_response(is_unavailable)
    .build();
    let tower_resilience = CollectBody {
        inner: resilience.layer(to_body_layer(Inner)),
    };

    vec![
        Box::new(Bench {
            name: "raw",
            service: Inner,
        }),
        Box::new(Bench {
            name: "tonic-retry",
            service: tonic_retry,
        }),
        Box::new(Bench {
            name: "tower-retry-naive",
            service: tower_naive,
        }),
        Box::new(Bench {
            name: "tower-resilience",
            service: tower_resilience,
        }),
    ]
}

struct Figures {
    name: &'static str,
    /// Median ns per call over rounds.
    ns: f64,
    /// Median over rounds of (this − raw) ns per call.
    added_ns: f64,
    /// Lowest and highest (this − raw) over rounds.
    added_range: (f64, f64),
    /// Allocations per call added to raw's.
    allocs: f64,
    /// Allocations per call, all told (raw's included).
    allocs_total: f64,
    alloc_bytes: f64,
}

fn main() {
    let quick = common::quick();
    let (rounds, calls, warmup, alloc_calls) = if quick {
        (11, 20_000, 20_000, 10_000)
    } else {
        (31, 200_000, 200_000, 100_000)
    };
    println!(
        "overhead: {} mode, {rounds} rounds x {calls} calls per variant; {}",
        if quick { "quick" } else { "full" },
        common::describe_machine()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();

    let mut variants = variants();
    let n = variants.len();

    // Profiling mode: run one variant only, for callgrind or perf, e.g.
    // OVERHEAD_PROFILE=tonic-retry valgrind --tool=callgrind <bench binary>
    if let Ok(name) = std::env::var("OVERHEAD_PROFILE") {
        let variant = variants
            .iter_mut()
            .find(|v| v.name() == name)
            .unwrap_or_else(|| panic!("OVERHEAD_PROFILE: no variant named {name:?}"));
        let calls = std::env::var("OVERHEAD_PROFILE_CALLS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(100_000);
        variant.run(1_000);
        let elapsed = variant.run(calls);
        println!(
            "{name}: {calls} calls, {:.1} ns/call",
            elapsed.as_nanos() as f64 / calls as f64
        );
        return;
    }
    // Pair mode, for comparing two builds of the layer: one variant against
    // raw only, in many short interleaved rounds, e.g.
    // OVERHEAD_PAIR=tonic-retry <bench binary>; prints the median added ns.
    if let Ok(name) = std::env::var("OVERHEAD_PAIR") {
        let i = variants
            .iter()
            .position(|v| v.name() == name)
            .unwrap_or_else(|| panic!("OVERHEAD_PAIR: no variant named {name:?}"));
        let (pair_rounds, pair_calls) = (201, 20_000);
        variants[0].run(warmup);
        variants[i].run(warmup);
        let mut added = Vec::with_capacity(pair_rounds);
        for round in 0..pair_rounds {
            let order = if round % 2 == 0 { [0, i] } else { [i, 0] };
            let mut per_call = [0.0; 2];
            for k in order {
                let elapsed = variants[k].run(pair_calls);
                per_call[usize::from(k != 0)] = elapsed.as_nanos() as f64 / pair_calls as f64;
            }
            added.push(per_call[1] - per_call[0]);
        }
        println!(
            "{name}: added {:.1} ns/call (median of {pair_rounds} paired rounds)",
            common::median(&mut added)
        );
        return;
    }
    for v in &mut variants {
        v.run(warmup);
    }

    // Timing: interleaved rounds, rotating the order.
    let mut ns = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            let elapsed = variants[i].run(calls);
            ns[i].push(elapsed.as_nanos() as f64 / calls as f64);
        }
    }

    // Allocations: a separate pass with the counting allocator on.
    let mut allocs = Vec::with_capacity(n);
    for v in &mut variants {
        common::count_all_threads();
        let before = common::snapshot();
        v.run(alloc_calls);
        let used = common::snapshot() - before;
        common::stop_counting();
        allocs.push((
            used.allocs as f64 / alloc_calls as f64,
            used.bytes as f64 / alloc_calls as f64,
        ));
    }

    let figures: Vec<Figures> = (0..n)
        .map(|i| {
            let mut added: Vec<f64> = ns[i].iter().zip(&ns[0]).map(|(v, r)| v - r).collect();
            let lo = added.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = added.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Figures {
                name: variants[i].name(),
                ns: common::median(&mut ns[i].clone()),
                added_ns: common::median(&mut added),
                added_range: (lo, hi),
                allocs: allocs[i].0 - allocs[0].0,
                allocs_total: allocs[i].0,
                alloc_bytes: allocs[i].1 - allocs[0].1,
            }
        })
        .collect();

    println!();
    println!(
        "{:<20} {:>12} {:>14} {:>22} {:>14} {:>14}",
        "variant",
        "ns/call",
        "added ns/call",
        "added range (rounds)",
        "added allocs",
        "added bytes"
    );
    for f in &figures {
        println!(
            "{:<20} {:>12.1} {:>14.1} {:>10.1} .. {:<9.1} {:>14.2} {:>14.1}",
            f.name, f.ns, f.added_ns, f.added_range.0, f.added_range.1, f.allocs, f.alloc_bytes
        );
    }
    println!(
        "raw itself: {:.2} allocations, {:.1} bytes per call (request, response, headers)",
        allocs[0].0, allocs[0].1
    );

    let chart = if quick {
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("overhead-quick.svg")
    } else {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/overhead.svg")
    };
    match draw_chart(&chart, &figures, quick) {
        Ok(()) => println!("chart: {}", chart.display()),
        Err(e) => eprintln!("could not write {}: {e}", chart.display()),
    }

    // The same four variants through criterion, for its statistics and
    // history (`target/criterion`). The figures above stay the reference:
    // criterion runs variants one after another, not interleaved.
    if !quick {
        let mut criterion = criterion::Criterion::default()
            .configure_from_args()
            .sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let mut group = criterion.benchmark_group("overhead_per_call");
        for variant in &mut variants {
            let name = variant.name();
            group.bench_function(name, |b| b.iter_custom(|iters| variant.run(iters)));
        }
        group.finish();
    }

    println!();
    let [raw, retry, naive, resilience] = &figures[..] else {
        unreachable!("four variants")
    };
    common::result("overhead_ns_per_call", retry.added_ns);
    common::result("overhead_allocs_per_call", retry.allocs);
    common::result("overhead_ns_tower_retry_naive", naive.added_ns);
    common::result("overhead_ns_tower_resilience", resilience.added_ns);
    common::result("overhead_allocs_tower_retry_naive", naive.allocs);
    common::result("overhead_allocs_tower_resilience", resilience.allocs);
    common::result("overhead_bytes_per_call", retry.alloc_bytes);
    common::result("overhead_ns_raw", raw.ns);
    common::result("overhead_ns_ratio_tonic_retry_vs_raw", retry.ns / raw.ns);
    common::result(
        "overhead_ns_ratio_tonic_retry_vs_tower_retry_naive",
        retry.ns / naive.ns,
    );
    common::result(
        "overhead_ns_ratio_tonic_retry_vs_tower_resilience",
        retry.ns / resilience.ns,
    );
}

/// A bar chart of ns per call for every variant (the raw service included),
/// each bar labelled with what it adds to raw.
fn draw_chart(
    path: &std::path::Path,
    figures: &[Figures],
    quick: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let top = figures.iter().map(|f| f.ns).fold(0.0, f64::max) * 1.3;
    let root = SVGBackend::new(path, (820, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!(
        "Happy-path cost per call, ns (median of interleaved rounds{})",
        if quick { ", QUICK mode" } else { "" }
    );
    let last = figures.len() as u32 - 1;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((0u32..last).into_segmented(), 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .y_desc("ns per call")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_labels(figures.len())
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => figures
                .get(*i as usize)
                .map_or_else(String::new, |f| f.name.to_owned()),
            SegmentValue::Last => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()?;
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
    ];
    let centered = Pos::new(HPos::Center, VPos::Bottom);
    for (i, f) in figures.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart.draw_series(
            Histogram::vertical(&chart)
                .style(color.filled())
                .margin(30)
                .data([(i as u32, f.ns)]),
        )?;
        let at = |dy: f64| (SegmentValue::CenterOf(i as u32), f.ns + top * dy);
        chart.draw_series(std::iter::once(Text::new(
            format!("{:.0} ns", f.ns),
            at(0.075),
            ("sans-serif", 16).into_font().color(&BLACK).pos(centered),
        )))?;
        let added = if i == 0 {
            format!("{:.0} allocations", f.allocs_total)
        } else {
            format!("+{:.0} ns, +{:.0} allocations", f.added_ns, f.allocs)
        };
        chart.draw_series(std::iter::once(Text::new(
            added,
            at(0.02),
            ("sans-serif", 13).into_font().color(&BLACK).pos(centered),
        )))?;
    }
    root.present()?;
    Ok(())
}
