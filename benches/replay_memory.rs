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
//! (b) Peak live bytes with 10,000 calls in flight (1 KiB payload each,
//!     server delays each attempt 200 ms, no retry): the client's live-bytes
//!     high-water mark through the layer and through the raw `Channel`;
//!     their difference is what the layer holds while the calls are in
//!     flight (mostly each call's recorded request body, kept until the call
//!     commits).

mod common;

use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer, fault_header, set_script};
use tonic_retry::{Jitter, Retry, RetryLayer, RetryPolicy};
use tower::Layer;

#[global_allocator]
static ALLOC: common::CountingAlloc = common::CountingAlloc;

const MIB: usize = 1 << 20;
const IN_FLIGHT: usize = 10_000;
const IN_FLIGHT_PAYLOAD: usize = 1024;

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

/// (b): the client's live-bytes high-water mark above its starting point
/// while `IN_FLIGHT` calls are in flight through `client`. Everything the
/// calls allocate (requests, client clones, tasks) is allocated while
/// counting, for both variants alike.
async fn peak_in_flight<T>(client: &EchoClient<T>) -> i64
where
    EchoClient<T>: Clone + 'static,
    T: tonic::client::GrpcService<tonic::body::Body> + 'static,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic_retry::BoxError> + Send,
    T::Error: Into<tonic_retry::BoxError>,
{
    let script =
        tonic::metadata::MetadataValue::try_from(fault_header(&[FaultAction::ok().delay_ms(200)]))
            .expect("script header");

    common::count_marked_threads();
    let start = common::live_bytes();
    common::reset_peak();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let mut client = client.clone();
        let script = script.clone();
        tasks.spawn_local(async move {
            let mut request = tonic::Request::new(echo(IN_FLIGHT_PAYLOAD));
            request
                .metadata_mut()
                .insert(tonic_retry::testing::FAULT_HEADER, script);
            client
                .unary(request)
                .await
                .expect("in-flight call succeeds");
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }
    drop(tasks);
    let peak = common::peak_live_bytes() - start;
    common::stop_counting();
    peak
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
        let channel = Endpoint::from_shared(server.uri())
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        let policy = RetryPolicy::builder()
            .max_attempts(4)
            .initial_backoff(Duration::from_millis(1))
            .max_backoff(Duration::from_millis(1))
            .jitter(Jitter::None)
            .replay_limit(2 << 20)
            .build()
            .expect("policy");
        let mut clients = Clients {
            raw: EchoClient::new(channel.clone())
                .max_decoding_message_size(4 * MIB)
                .max_encoding_message_size(4 * MIB),
            layered: EchoClient::new(RetryLayer::new(policy).layer(channel))
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
        let mut layer_peaks = Vec::new();
        let mut raw_peaks = Vec::new();
        for _ in 0..in_flight_reps {
            raw_peaks.push(peak_in_flight(&clients.raw).await as f64);
            layer_peaks.push(peak_in_flight(&clients.layered).await as f64);
        }
        let raw_peak = common::median(&mut raw_peaks);
        let layer_peak = common::median(&mut layer_peaks);
        let extra = layer_peak - raw_peak;
        println!();
        println!(
            "(b) {IN_FLIGHT} calls in flight ({IN_FLIGHT_PAYLOAD}-byte payloads, 200 ms server delay), \
             client live-bytes high-water mark: layer {:.1} MiB, raw {:.1} MiB, layer − raw {:.1} MiB \
             = {:.0} bytes per in-flight call",
            layer_peak / MIB as f64,
            raw_peak / MIB as f64,
            extra / MIB as f64,
            extra / IN_FLIGHT as f64
        );
        // TODO(channel-wide cap): once `RetryLayer` exposes the channel-wide
        // replay buffer cap, build the layer with a cap below
        // IN_FLIGHT * IN_FLIGHT_PAYLOAD and assert here that the layer's
        // buffered bytes (`extra`, or the cap's own gauge if it has one)
        // never exceed it, e.g.
        //     assert!(extra <= cap as f64 + IN_FLIGHT as f64 * PER_CALL_STATE);
        // and report `RESULT replay_peak_vs_cap=<extra / cap>`.

        println!();
        common::result("replay_bytes_per_retried_call", big);
        common::result("replay_bytes_per_retried_call_ratio_to_request", big / encoded as f64);
        common::result("replay_bytes_per_retried_call_1b_payload", small);
        common::result("replay_bytes_size_dependent", big - small);
        common::result("replay_peak_live_bytes_layer", layer_peak);
        common::result("replay_peak_live_bytes_raw", raw_peak);
        common::result("replay_peak_extra_bytes", extra);
        common::result("replay_peak_extra_bytes_per_in_flight_call", extra / IN_FLIGHT as f64);
    });
    drop(server);
    drop(server_rt);
}
