//! Memory the layer uses to replay requests.
//!
//! ```text
//! cargo bench --bench replay_memory
//! BENCH_QUICK=1 cargo bench --bench replay_memory
//! ```
//!
//! The in-process `TestServer` runs on a runtime of its own (one worker
//! thread); the client side (the generated `EchoClient`, the layer, the
//! `Channel` and its connection task) runs on a current-thread runtime on
//! the main thread. The counting allocator counts only the main thread, so
//! the server's allocations (it reads every attempt's 1 MiB) stay out of the
//! figures.
//!
//! (a) Bytes allocated by one retried call: a unary `EchoRequest` with a
//!     1 MiB payload, scripted `[UNAVAILABLE] * 3, OK`, through the layer
//!     (`max_attempts(4)`, `replay_limit(2 << 20)`, 1 ms backoff, no
//!     jitter), minus the bytes allocated by the same request through the
//!     raw `Channel` (scripted `OK`, one attempt). The difference is what the
//!     three retries cost the client: the replay of the body plus three more
//!     HTTP/2 streams. The same figure with a 1-byte payload isolates the
//!     per-retry transport cost, so (1 MiB − 1 byte) shows whether the body
//!     is copied for replay. Median over interleaved repetitions.
//!
//! (b) 10,000 calls in flight (1 KiB payload each, server delays each
//!     attempt 500 ms, no retry), four ways: the raw `Channel`; the layer
//!     with `replay_limit(0)`, which records nothing (its per-call state
//!     alone); the layer with its default channel-wide replay cap (16 MiB,
//!     above the ~10 MB those calls send); and the layer with a 4 MiB cap
//!     (below it). For each: the client's live-bytes high-water
//!     mark (real memory), and for the layers the peak of
//!     `RetryLayer::buffered_bytes()` (what the cap accounts), sampled every
//!     millisecond. The bench asserts that the sampled peak never passes
//!     `RetryLayer::buffer_limit()`. Each run also counts the attempts the
//!     server had received when the first answer came back: the figures
//!     hold all 10,000 calls only if every one was sent by then (on a
//!     loaded machine 200 ms was sometimes too short, and one such run's
//!     figures came out low), so the bench reports the lowest count and
//!     warns when it is short. The per-call state and the memory the
//!     buffers hold are read at that moment (every call in flight, no
//!     answer buffered yet): a high-water mark can fall in the flood of
//!     10,000 answers instead, whose size depends on timing.
//!
//! (c) The same 10,000 calls with 100-byte payloads, through a cap too
//!     large to fill and through `replay_limit(0)`: the bytes the cap is
//!     charged per small call (so how many replayable calls the default
//!     16 MiB hold) and the memory the buffers really hold against that
//!     count.
//!
//!     Live bytes above the `replay_limit(0)` layer are what the replay
//!     buffers really hold. They are compared with the accounted bytes
//!     because a recorded chunk is a
//!     `Bytes` that shares the allocation it was split from: tonic encodes
//!     each message into an 8 KiB buffer, so a 1 KiB message held for replay
//!     can keep the whole 8 KiB alive.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer, fault_header, set_script};
use tonic_retry::{Jitter, Retry, RetryLayer, RetryPolicy};
use tower::Layer;

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

const MIB: usize = 1 << 20;
const IN_FLIGHT: usize = 10_000;
/// How long the server holds each in-flight call: long enough for all of
/// them to be sent before the first answers.
const IN_FLIGHT_DELAY_MS: u64 = 500;
const IN_FLIGHT_PAYLOAD: usize = 1024;
/// The payload of the small requests of (c), like the issue's 100-byte
/// unary request.
const SMALL_PAYLOAD: usize = 100;
/// The channel-wide cap of the capped layer in (b): below the ~10 MB that
/// the in-flight calls send.
const CAPPED_LIMIT: usize = 4 * MIB;

fn echo(payload_len: usize) -> EchoRequest {
    EchoRequest {
        payload: vec![0x5a; payload_len],
        text: String::new(),
    }
}

/// Client-side bytes allocated by `f`, with the request built outside.
async fn bytes_allocated<F: std::future::Future<Output = ()>>(f: F) -> u64 {
    common::count_marked_threads();
    let before = common::snapshot();
    f.await;
    let used = common::snapshot() - before;
    common::stop_counting();
    used.bytes
}

struct Clients {
    raw: EchoClient<Channel>,
    layered: EchoClient<Retry<Channel>>,
}

/// (a): median over `reps` of (layered retried call − raw single call)
/// bytes, for a payload of `payload_len` bytes.
async fn retried_call_bytes(
    clients: &mut Clients,
    payload_len: usize,
    reps: usize,
    tag: &str,
) -> (f64, f64, f64) {
    let retried = [
        FaultAction::code(Code::Unavailable),
        FaultAction::code(Code::Unavailable),
        FaultAction::code(Code::Unavailable),
        FaultAction::ok(),
    ];
    let mut diffs = Vec::with_capacity(reps);
    let mut layer_bytes = Vec::with_capacity(reps);
    let mut raw_bytes = Vec::with_capacity(reps);
    // One unmeasured round first: connection buffers grow to their size.
    for rep in 0..=reps {
        let mut request = tonic::Request::new(echo(payload_len));
        set_script(&mut request, &format!("{tag}-layer-{rep}"), &retried).expect("script");
        let layered = &mut clients.layered;
        let l = bytes_allocated(async {
            let response = layered.unary(request).await.expect("retried call succeeds");
            assert_eq!(response.get_ref().attempt, 3, "three retries happened");
            drop(response);
        })
        .await;

        let mut request = tonic::Request::new(echo(payload_len));
        set_script(
            &mut request,
            &format!("{tag}-raw-{rep}"),
            &[FaultAction::ok()],
        )
        .expect("script");
        let raw = &mut clients.raw;
        let r = bytes_allocated(async {
            let response = raw.unary(request).await.expect("raw call succeeds");
            drop(response);
        })
        .await;
        if rep > 0 {
            diffs.push(l as f64 - r as f64);
            layer_bytes.push(l as f64);
            raw_bytes.push(r as f64);
        }
    }
    (
        common::median(&mut diffs),
        common::median(&mut layer_bytes),
        common::median(&mut raw_bytes),
    )
}

/// What one run of (b) saw.
#[derive(Clone, Copy, Default)]
struct InFlight {
    /// Client live-bytes high-water mark above its starting point.
    peak_live: f64,
    /// Highest `RetryLayer::buffered_bytes()` sampled (0 for raw).
    peak_buffered: f64,
    /// Attempts the server had received when the first call answered.
    arrived_at_first_answer: usize,
    /// Client live bytes above the starting point when the first call
    /// answered: every call in flight, and no flood of answers buffered
    /// yet (the high-water mark may fall in that flood, whose size
    /// depends on timing).
    live_at_first_answer: f64,
    /// `RetryLayer::buffered_bytes()` at that moment (0 for raw).
    buffered_at_first_answer: f64,
}

/// (b): `IN_FLIGHT` calls in flight through `client` at once. Everything the
/// calls allocate (requests, client clones, tasks) is allocated while
/// counting, for every variant alike. With `layer`, a sampler task reads its
/// buffered bytes every millisecond.
async fn in_flight<T>(
    client: &EchoClient<T>,
    layer: Option<&RetryLayer>,
    server: &TestServer,
    payload: usize,
) -> InFlight
where
    EchoClient<T>: Clone + 'static,
    T: tonic::client::GrpcService<tonic::body::Body> + 'static,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic_retry::BoxError> + Send,
    T::Error: Into<tonic_retry::BoxError>,
{
    let script = tonic::metadata::MetadataValue::try_from(fault_header(&[
        FaultAction::ok().delay_ms(IN_FLIGHT_DELAY_MS)
    ]))
    .expect("script header");
    let done = Rc::new(Cell::new(false));
    let sampler = layer.cloned().map(|layer| {
        let done = done.clone();
        tokio::task::spawn_local(async move {
            let mut peak = 0;
            while !done.get() {
                peak = peak.max(layer.buffered_bytes());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            peak
        })
    });

    let attempts_before = server.total_attempts();
    common::count_marked_threads();
    let start = common::live_bytes();
    common::reset_peak();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let mut client = client.clone();
        let script = script.clone();
        tasks.spawn_local(async move {
            let mut request = tonic::Request::new(echo(payload));
            request
                .metadata_mut()
                .insert(tonic_retry::testing::FAULT_HEADER, script);
            client
                .unary(request)
                .await
                .expect("in-flight call succeeds");
        });
    }
    let mut at_first_answer = None;
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
        at_first_answer.get_or_insert_with(|| {
            (
                server.total_attempts() - attempts_before,
                (common::live_bytes() - start) as f64,
                layer.map_or(0, RetryLayer::buffered_bytes) as f64,
            )
        });
    }
    let (arrived_at_first_answer, live_at_first_answer, buffered_at_first_answer) =
        at_first_answer.unwrap_or_default();
    drop(tasks);
    let peak_live = (common::peak_live_bytes() - start) as f64;
    common::stop_counting();

    done.set(true);
    let peak_buffered = match sampler {
        Some(sampler) => sampler.await.expect("sampler") as f64,
        None => 0.0,
    };
    if let Some(layer) = layer {
        assert!(
            peak_buffered <= layer.buffer_limit() as f64,
            "buffered bytes {peak_buffered} passed the channel-wide cap {}",
            layer.buffer_limit()
        );
        assert_eq!(layer.buffered_bytes(), 0, "every reservation was released");
    }
    InFlight {
        peak_live,
        peak_buffered,
        arrived_at_first_answer,
        live_at_first_answer,
        buffered_at_first_answer,
    }
}

/// The median of each field over runs.
fn median_of(runs: &[InFlight]) -> InFlight {
    let mut live: Vec<f64> = runs.iter().map(|r| r.peak_live).collect();
    let mut buffered: Vec<f64> = runs.iter().map(|r| r.peak_buffered).collect();
    let mut at_first: Vec<f64> = runs.iter().map(|r| r.live_at_first_answer).collect();
    let mut buffered_at_first: Vec<f64> = runs.iter().map(|r| r.buffered_at_first_answer).collect();
    InFlight {
        live_at_first_answer: common::median(&mut at_first),
        buffered_at_first_answer: common::median(&mut buffered_at_first),
        peak_live: common::median(&mut live),
        peak_buffered: common::median(&mut buffered),
        arrived_at_first_answer: runs
            .iter()
            .map(|r| r.arrived_at_first_answer)
            .min()
            .unwrap_or(0),
    }
}

fn main() {
    let quick = common::quick();
    let (reps, in_flight_reps) = if quick { (5, 1) } else { (15, 3) };
    println!(
        "replay_memory: {} mode; {}",
        if quick { "quick" } else { "full" },
        common::describe_machine()
    );

    // The server: its own runtime and thread, not counted.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let server = server_rt
        .block_on(TestServer::start())
        .expect("test server");

    // The client: the main thread, counted.
    common::mark_this_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let channel = common::channel_to(&server).await;
        let policy = RetryPolicy::builder()
            .max_attempts(4)
            .initial_backoff(Duration::from_millis(1))
            .max_backoff(Duration::from_millis(1))
            .jitter(Jitter::None)
            .replay_limit(2 << 20)
            .build()
            .expect("policy");
        let layer = RetryLayer::new(policy.clone());
        let capped_layer = RetryLayer::builder(policy.clone())
            .buffer_limit(CAPPED_LIMIT)
            .build();
        let unbuffered_layer = RetryLayer::new(
            RetryPolicy::builder()
                .max_attempts(4)
                .replay_limit(0)
                .build()
                .expect("policy"),
        );
        let mut clients = Clients {
            raw: EchoClient::new(channel.clone())
                .max_decoding_message_size(4 * MIB)
                .max_encoding_message_size(4 * MIB),
            layered: EchoClient::new(layer.layer(channel))
                .max_decoding_message_size(4 * MIB)
                .max_encoding_message_size(4 * MIB),
        };

        // (a)
        let (big, big_layer, big_raw) = retried_call_bytes(&mut clients, MIB, reps, "mib").await;
        let (small, small_layer, small_raw) =
            retried_call_bytes(&mut clients, 1, reps, "byte").await;
        let encoded = MIB + 5 + 4; // gRPC frame prefix + protobuf tag and length
        println!();
        println!("(a) one call retried 3 times, client-side bytes allocated (median of {reps}):");
        println!(
            "    1 MiB payload: layer {big_layer:.0}, raw single call {big_raw:.0}, difference {big:.0} \
             ({:.3} x the {encoded}-byte request)",
            big / encoded as f64
        );
        println!(
            "    1 B payload:   layer {small_layer:.0}, raw single call {small_raw:.0}, difference {small:.0} \
             (three extra attempts, no body to speak of)"
        );
        println!(
            "    size-dependent part (1 MiB − 1 B): {:.0} bytes",
            big - small
        );

        // (b)
        let mut raw_runs = Vec::new();
        let mut layer_runs = Vec::new();
        let mut capped_runs = Vec::new();
        let mut unbuffered_runs = Vec::new();
        // Every run gets a connection of its own: h2 servers count small
        // DATA frames per connection (flow control splits frames when 10,000
        // streams compete for the window) and answer GOAWAY
        // ENHANCE_YOUR_CALM once a connection has sent too many.
        for _ in 0..in_flight_reps {
            let raw_client = EchoClient::new(common::channel_to(&server).await);
            raw_runs.push(in_flight(&raw_client, None, &server, IN_FLIGHT_PAYLOAD).await);
            for (layer, runs) in [
                (&layer, &mut layer_runs),
                (&capped_layer, &mut capped_runs),
                (&unbuffered_layer, &mut unbuffered_runs),
            ] {
                let client = EchoClient::new(layer.layer(common::channel_to(&server).await));
                runs.push(in_flight(&client, Some(layer), &server, IN_FLIGHT_PAYLOAD).await);
            }
        }
        // (c) the same with small requests, through a cap too large to
        // fill (so every call is kept and charged) and through a layer that
        // keeps nothing.
        let uncapped_layer = RetryLayer::builder(policy.clone())
            .buffer_limit(1 << 40)
            .build();
        let mut small_runs = Vec::new();
        let mut small_unbuffered_runs = Vec::new();
        for _ in 0..in_flight_reps {
            for (layer, runs) in [
                (&uncapped_layer, &mut small_runs),
                (&unbuffered_layer, &mut small_unbuffered_runs),
            ] {
                let client = EchoClient::new(layer.layer(common::channel_to(&server).await));
                runs.push(in_flight(&client, Some(layer), &server, SMALL_PAYLOAD).await);
            }
        }
        let small_calls = median_of(&small_runs);
        let small_unbuffered = median_of(&small_unbuffered_runs);
        let raw_median = median_of(&raw_runs);
        let unbuffered_median = median_of(&unbuffered_runs);
        let raw = raw_median.peak_live;
        let full = median_of(&layer_runs);
        let capped = median_of(&capped_runs);
        let unbuffered = unbuffered_median.peak_live;
        // The layer's own state per call in flight, from the moment every
        // call is in flight and none answered.
        let unbuffered_at_first = unbuffered_median.live_at_first_answer;
        let per_call_state =
            (unbuffered_at_first - raw_median.live_at_first_answer) / IN_FLIGHT as f64;
        let in_flight_encoded = IN_FLIGHT_PAYLOAD + 3 + 5; // protobuf tag and length, gRPC frame prefix
        let mib = |b: f64| b / MIB as f64;
        // Every call was in flight at the peak only if all were sent before
        // the first answer came back.
        let all_runs = [&raw_runs, &layer_runs, &capped_runs, &unbuffered_runs];
        let arrived = all_runs
            .iter()
            .flat_map(|runs| runs.iter().map(|r| r.arrived_at_first_answer))
            .min()
            .unwrap_or(0);
        println!();
        println!(
            "(b) {IN_FLIGHT} calls in flight ({in_flight_encoded}-byte encoded requests, {:.1} MiB in all; \
             {IN_FLIGHT_DELAY_MS} ms server delay; median of {in_flight_reps}), client live-bytes high-water marks:",
            mib((IN_FLIGHT * in_flight_encoded) as f64)
        );
        println!(
            "    attempts at the server when the first call answered (lowest of all runs): {arrived}{}",
            if arrived < IN_FLIGHT {
                "  WARNING: not every call was in flight at once; the figures are low"
            } else {
                ""
            }
        );
        println!("    raw channel:                 {:6.1} MiB", mib(raw));
        println!(
            "    layer, replay_limit(0):      {:6.1} MiB  (+{:.1} MiB over raw; {:.0} bytes of per-call state, \
             measured when the first call answered)",
            mib(unbuffered),
            mib(unbuffered - raw),
            per_call_state
        );
        for (name, run, limit) in [
            ("layer, 16 MiB cap (default)", full, layer.buffer_limit()),
            ("layer, 4 MiB cap", capped, capped_layer.buffer_limit()),
        ] {
            let held = run.live_at_first_answer - unbuffered_at_first;
            println!(
                "    {name:<28} {:6.1} MiB peak; peak buffered_bytes() {:.2} MiB \
                 (cap {:.0} MiB); when the first call answered: {:.1} MiB more than replay_limit(0) \
                 for {:.2} MiB accounted, {:.3} x",
                mib(run.peak_live),
                mib(run.peak_buffered),
                mib(limit as f64),
                mib(held),
                mib(run.buffered_at_first_answer),
                held / run.buffered_at_first_answer.max(1.0),
            );
        }

        let small_accounted_per_call = small_calls.buffered_at_first_answer / IN_FLIGHT as f64;
        let small_held = small_calls.live_at_first_answer - small_unbuffered.live_at_first_answer;
        let small_calls_per_cap = layer.buffer_limit() as f64 / small_accounted_per_call.max(1.0);
        println!(
            "(c) {IN_FLIGHT} calls in flight with {SMALL_PAYLOAD}-byte payloads, every one kept: \
             {small_accounted_per_call:.0} bytes accounted per call, so {:.0} MiB keep {small_calls_per_cap:.0} \
             replayable calls; memory held {:.2} MiB for {:.2} MiB accounted, {:.3} x",
            mib(layer.buffer_limit() as f64),
            mib(small_held),
            mib(small_calls.buffered_at_first_answer),
            small_held / small_calls.buffered_at_first_answer.max(1.0),
        );

        println!();
        common::result("replay_small_accounted_bytes_per_call", small_accounted_per_call);
        common::result("replay_small_calls_per_16mib", small_calls_per_cap);
        common::result(
            "replay_small_buffer_memory_vs_accounted",
            small_held / small_calls.buffered_at_first_answer.max(1.0),
        );
        common::result(
            "replay_calls_per_16mib",
            layer.buffer_limit() as f64 / (full.buffered_at_first_answer / IN_FLIGHT as f64).max(1.0),
        );
        common::result("replay_bytes_per_retried_call", big);
        common::result("replay_bytes_per_retried_call_ratio_to_request", big / encoded as f64);
        common::result("replay_bytes_per_retried_call_1b_payload", small);
        common::result("replay_bytes_size_dependent", big - small);
        common::result("replay_in_flight_at_first_answer_min", arrived as f64);
        common::result("replay_peak_live_bytes_raw", raw);
        common::result("replay_peak_live_bytes_layer_no_replay", unbuffered);
        common::result("replay_peak_live_bytes_layer", full.peak_live);
        common::result("replay_per_call_state_bytes", per_call_state);
        common::result("replay_peak_buffered_bytes", full.peak_buffered);
        common::result(
            "replay_buffer_memory_bytes",
            full.live_at_first_answer - unbuffered_at_first,
        );
        common::result(
            "replay_buffer_memory_vs_accounted",
            (full.live_at_first_answer - unbuffered_at_first)
                / full.buffered_at_first_answer.max(1.0),
        );
        common::result("replay_buffer_limit", layer.buffer_limit() as f64);
        common::result("replay_capped_peak_live_bytes", capped.peak_live);
        common::result("replay_capped_peak_buffered_bytes", capped.peak_buffered);
        common::result("replay_capped_buffer_limit", capped_layer.buffer_limit() as f64);
        common::result(
            "replay_capped_peak_buffered_vs_limit",
            capped.peak_buffered / capped_layer.buffer_limit() as f64,
        );
        common::result(
            "replay_capped_buffer_memory_vs_accounted",
            (capped.live_at_first_answer - unbuffered_at_first)
                / capped.buffered_at_first_answer.max(1.0),
        );
    });
    drop(server);
    drop(server_rt);
}
