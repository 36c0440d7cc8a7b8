//! Streaming requests replayed across commit, against the real test server
//! over loopback with HTTP/2's protocol-default 64 KiB stream window, so a
//! slow or stalled reader really stalls the request stream.
//!
//! Every request message carries its index, so "sent once, in order" is
//! checked message by message on what the server received.

mod common;

use std::time::{Duration, Instant};

use futures_util::Stream;
use tonic::Code;
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{FaultAction, TestServer};
use tonic_retry::{CodeSet, HedgingPolicy, RetryLayer};
use tower::ServiceBuilder;

use common::{channel, client, fast_policy, scripted_with};

/// HTTP/2's initial window (RFC 9113 §6.9.2): a 200 KiB stream cannot be
/// sent in full until the server reads.
const WINDOW: u32 = 65_535;
const MESSAGES: u32 = 200;
const MESSAGE_BYTES: usize = 1024;

async fn small_window_server() -> TestServer {
    TestServer::builder()
        .stream_window(WINDOW)
        .start()
        .await
        .unwrap()
}

fn message(i: u32) -> EchoRequest {
    let mut payload = vec![(i % 251) as u8; MESSAGE_BYTES];
    payload[..4].copy_from_slice(&i.to_be_bytes());
    EchoRequest {
        payload,
        text: String::new(),
    }
}

/// 200 messages of 1 KiB, each its own chunk.
fn messages() -> impl Stream<Item = EchoRequest> + Send + 'static {
    yielding(MESSAGES)
}

/// `count` messages; the stream yields to the runtime before each, as a
/// producer would, so tonic's encoder flushes each one on its own and the
/// request is a stream from its start.
fn yielding(count: u32) -> impl Stream<Item = EchoRequest> + Send + 'static {
    futures_util::stream::unfold(0, move |i| async move {
        if i == count {
            return None;
        }
        tokio::task::yield_now().await;
        Some((message(i), i + 1))
    })
}

/// The payloads the server echoed are every message once, in order.
fn assert_every_message_once_in_order(payload: &[u8]) {
    let indices: Vec<u32> = payload
        .chunks(MESSAGE_BYTES)
        .map(|m| u32::from_be_bytes(m[..4].try_into().unwrap()))
        .collect();
    assert_eq!(indices, (0..MESSAGES).collect::<Vec<_>>());
    for (i, m) in payload.chunks(MESSAGE_BYTES).enumerate() {
        assert_eq!(m, message(i as u32).payload, "message {i} intact");
    }
}

fn unavailable() -> FaultAction {
    FaultAction::code(Code::Unavailable)
}

/// Attempt 1 reads `read_first` messages and fails; attempt 2 sends its
/// response headers before reading anything (the call commits at once,
/// while the replay is far behind), then reads one message per
/// millisecond.
fn fail_then_commit_early(read_first: u32) -> [FaultAction; 2] {
    [
        unavailable().fail_after_messages(read_first),
        FaultAction::ok().headers_first().read_delay_ms(1),
    ]
}

async fn client_stream_survives_commit(read_first: u32) {
    let server = small_window_server().await;
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let call = "c";
    let request = scripted_with(call, &fail_then_commit_early(read_first), messages());
    let response = client.client_stream(request).await.unwrap().into_inner();
    assert_eq!(response.attempt, 1);
    assert_eq!(response.request_messages, MESSAGES);
    assert_every_message_once_in_order(&response.payload);
    let attempts = server.attempts(call);
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].request_messages, read_first);
}

async fn bidi_survives_commit(read_first: u32) {
    let server = small_window_server().await;
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let request = scripted_with("c", &fail_then_commit_early(read_first), messages());
    let mut replies = client.bidi(request).await.unwrap().into_inner();
    let mut payload = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.attempt, 1);
        payload.extend_from_slice(&reply.payload);
    }
    assert_every_message_once_in_order(&payload);
    assert_eq!(server.attempts("c")[1].request_messages, MESSAGES);
}

#[tokio::test]
async fn committed_client_stream_is_sent_once_after_commit_when_the_first_attempt_failed_late() {
    // 150 messages recorded; the commit arrives while the retry has
    // re-sent at most a window's worth of them.
    client_stream_survives_commit(150).await;
}

#[tokio::test]
async fn committed_client_stream_is_sent_once_after_commit_when_the_first_attempt_failed_early() {
    client_stream_survives_commit(10).await;
}

#[tokio::test]
async fn committed_bidi_stream_is_sent_once_after_commit_when_the_first_attempt_failed_late() {
    bidi_survives_commit(150).await;
}

#[tokio::test]
async fn committed_bidi_stream_is_sent_once_after_commit_when_the_first_attempt_failed_early() {
    bidi_survives_commit(10).await;
}

fn hedged_client(
    channel: tonic::transport::Channel,
    delay_ms: u64,
) -> EchoClient<tonic_retry::Retry<tonic::transport::Channel>> {
    EchoClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::hedging(HedgingPolicy {
                max_attempts: 2,
                hedging_delay: Duration::from_millis(delay_ms),
                non_fatal_codes: CodeSet::EMPTY.with(Code::Unavailable),
                per_attempt_timeout: None,
            }))
            .service(channel),
    )
}

#[tokio::test]
async fn a_hedge_whose_winner_is_behind_sends_the_whole_stream_once() {
    // Attempt 1 reads the whole request (so it is all recorded) and then
    // holds its answer; the hedge commits at once, before reading, and is
    // then far behind attempt 1.
    let server = small_window_server().await;
    let mut client = hedged_client(channel(&server).await, 100);
    let script = [
        FaultAction::ok().delay_ms(5_000),
        FaultAction::ok().headers_first().read_delay_ms(1),
    ];
    let start = Instant::now();
    let response = client
        .client_stream(scripted_with("h", &script, messages()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.attempt, 1, "the hedge won");
    assert_every_message_once_in_order(&response.payload);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the hedge did not wait for attempt 1"
    );
    let attempts = server.attempts("h");
    assert_eq!(
        attempts[0].request_messages, MESSAGES,
        "attempt 1 had read it all"
    );
}

#[tokio::test]
async fn a_hedge_does_not_wait_for_an_attempt_stalled_by_flow_control() {
    // Attempt 1's server reads nothing for two seconds: its stream stalls
    // once the 64 KiB window is full. The hedge must read the rest of the
    // caller's stream itself rather than wait for attempt 1.
    const STALL_MS: u64 = 2_000;
    let server = small_window_server().await;
    let mut client = hedged_client(channel(&server).await, 50);
    let script = [FaultAction::ok().stall_ms(STALL_MS), FaultAction::ok()];
    let start = Instant::now();
    let response = client
        .client_stream(scripted_with("s", &script, messages()))
        .await
        .unwrap()
        .into_inner();
    let elapsed = start.elapsed();
    assert_eq!(response.attempt, 1, "the hedge won");
    assert_every_message_once_in_order(&response.payload);
    assert!(
        elapsed < Duration::from_millis(STALL_MS / 2),
        "the hedge took {elapsed:?}, in step with the stalled attempt"
    );
}

#[tokio::test]
async fn a_replayed_stream_gets_no_content_length_the_original_lacked() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let few = yielding(3);
    let script = [unavailable().fail_after_messages(3), FaultAction::ok()];
    let response = client
        .client_stream(scripted_with("n", &script, few))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.request_messages, 3);
    for attempt in server.attempts("n") {
        assert!(
            !attempt.headers.contains_key("content-length"),
            "attempt {} had a content-length",
            attempt.attempt
        );
    }
}

#[tokio::test]
async fn the_per_attempt_timeout_applies_to_every_hedge() {
    let server = TestServer::start().await.unwrap();
    let mut client = EchoClient::new(
        ServiceBuilder::new()
            .layer(RetryLayer::hedging(HedgingPolicy {
                max_attempts: 3,
                hedging_delay: Duration::from_millis(20),
                non_fatal_codes: CodeSet::EMPTY.with(Code::DeadlineExceeded),
                per_attempt_timeout: Some(Duration::from_millis(100)),
            }))
            .service(channel(&server).await),
    );
    // Every attempt is slow: each is cut at 100 ms (its grpc-timeout says
    // so too), and the call ends with the last one's DEADLINE_EXCEEDED.
    let slow = FaultAction::ok().delay_ms(2_000);
    let start = Instant::now();
    let status = client
        .unary(scripted_with("t", &[slow], EchoRequest::default()))
        .await
        .unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let attempts = server.attempts("t");
    assert_eq!(attempts.len(), 3);
    for attempt in &attempts {
        let timeout = attempt
            .grpc_timeout_parsed
            .expect("each hedge carries grpc-timeout");
        assert!(timeout <= Duration::from_millis(100), "{timeout:?}");
    }
}

#[tokio::test]
async fn a_hedge_cut_off_by_the_replay_limit_does_not_end_the_call() {
    // Both attempts start at once; the request (300 KiB) passes the replay
    // limit (256 KiB) while one of them reads it, which commits the call to
    // that one and cuts the other off. The cut-off attempt's failure is the
    // layer's doing and says nothing about the request: the call ends with
    // the other attempt's OK.
    let server = small_window_server().await;
    let mut client = hedged_client(channel(&server).await, 0);
    let script = [FaultAction::ok().delay_ms(200)];
    let response = client
        .client_stream(scripted_with("l", &script, yielding(300)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.request_messages, 300);
    let indices: Vec<u32> = response
        .payload
        .chunks(MESSAGE_BYTES)
        .map(|m| u32::from_be_bytes(m[..4].try_into().unwrap()))
        .collect();
    assert_eq!(indices, (0..300).collect::<Vec<_>>());
    assert_eq!(server.attempts("l").len(), 2, "both attempts were sent");
}
