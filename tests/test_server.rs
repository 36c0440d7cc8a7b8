//! Smoke tests of the scripted test server alone (no retry layer), through a
//! plain tonic `Channel`.

use std::time::Duration;

use prost::Message as _;
use tokio::time::timeout;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_retry::testing::proto::{EchoClient, EchoRequest};
use tonic_retry::testing::{
    FAULT_HEADER, FaultAction, SERVER_STREAM_RESPONSES, TestServer, set_script,
};
use tonic_types::StatusExt as _;

/// Upper bound for any single step of a test.
const STEP: Duration = Duration::from_secs(10);

async fn setup() -> (TestServer, EchoClient<Channel>) {
    let server = TestServer::start().await.expect("start test server");
    let client = timeout(STEP, EchoClient::connect(server.uri()))
        .await
        .expect("connect timed out")
        .expect("connect");
    (server, client)
}

fn req(payload: &[u8], text: &str) -> EchoRequest {
    EchoRequest {
        payload: payload.to_vec(),
        text: text.to_owned(),
    }
}

fn scripted<T>(message: T, call_id: &str, actions: &[FaultAction]) -> Request<T> {
    let mut request = Request::new(message);
    set_script(&mut request, call_id, actions).expect("valid script metadata");
    request
}

/// Polls `cond` every 10ms for up to `STEP`.
async fn eventually(mut cond: impl FnMut() -> bool) {
    timeout(STEP, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

#[tokio::test]
async fn ok_echo_counts_attempts() {
    let (server, mut client) = setup().await;
    let message = req(b"abc", "hello");
    let encoded_len = message.encoded_len() as u64;

    for expected_attempt in 0..2u32 {
        let response = client
            .unary(scripted(message.clone(), "ok", &[]))
            .await
            .expect("unary ok")
            .into_inner();
        assert_eq!(response.payload, b"abc");
        assert_eq!(response.text, "hello");
        assert_eq!(response.attempt, expected_attempt);
        assert_eq!(response.request_messages, 1);
        assert_eq!(response.request_bytes, encoded_len);
    }

    let records = server.attempts("ok");
    assert_eq!(records.len(), 2);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.attempt, i);
        assert_eq!(r.call_id, "ok");
        assert_eq!(r.method, "/retry.test.v1.Echo/Unary");
        assert_eq!(r.request_bytes, encoded_len);
        assert_eq!(r.request_messages, 1);
        assert!(r.completed && !r.cancelled, "{r:?}");
        assert_eq!(r.previous_rpc_attempts, None);
        assert_eq!(r.grpc_timeout, None);
    }
    assert!(records[0].arrived <= records[1].arrived);
    assert_eq!(server.total_attempts(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn missing_call_id_is_attempt_zero_under_empty_key() {
    let (server, mut client) = setup().await;
    for _ in 0..2 {
        let mut request = Request::new(req(b"", ""));
        let header = tonic_retry::testing::fault_header(&[
            FaultAction::code(Code::Aborted),
            FaultAction::ok(),
        ]);
        request
            .metadata_mut()
            .insert(FAULT_HEADER, header.parse().unwrap());
        let status = client.unary(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Aborted);
    }
    let response = client.unary(req(b"x", "")).await.unwrap().into_inner();
    assert_eq!(response.attempt, 0);
    let records = server.attempts("");
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.attempt == 0));
}

#[tokio::test]
async fn fault_sequence_then_last_action_repeats() {
    let (server, mut client) = setup().await;
    let script = [
        FaultAction::code(Code::Unavailable).message("go away"),
        FaultAction::ok(),
    ];
    let status = client
        .unary(scripted(req(b"1", ""), "seq", &script))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "go away");

    for attempt in 1..3 {
        let response = client
            .unary(scripted(req(b"1", ""), "seq", &script))
            .await
            .expect("ok after the fault")
            .into_inner();
        assert_eq!(response.attempt, attempt);
    }
    let records = server.attempts("seq");
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].action.as_ref().unwrap().code, Code::Unavailable);
    assert_eq!(records[2].action.as_ref().unwrap().code, Code::Ok);
}

#[tokio::test]
async fn pushback_and_raw_headers_reach_status_metadata() {
    let (_server, mut client) = setup().await;
    let action = FaultAction::code(Code::Unavailable)
        .pushback("100")
        .raw_header("grpc-retry-pushback-ms", "abc")
        .raw_header("x-extra", "yes")
        .raw_header("bad header name", "skipped")
        .raw_header("x-bad-value", "line\nbreak");
    let status = client
        .unary(scripted(req(b"", ""), "pb", &[action]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let pushback: Vec<_> = status
        .metadata()
        .get_all("grpc-retry-pushback-ms")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(pushback, ["100", "abc"]);
    assert_eq!(status.metadata().get("x-extra").unwrap(), "yes");
    assert!(status.metadata().get("x-bad-value").is_none());
}

#[tokio::test]
async fn headers_first_error_is_reported_by_the_stream() {
    let (server, mut client) = setup().await;
    // Unary: an error either way.
    let action = FaultAction::code(Code::Unavailable)
        .headers_first()
        .pushback("5");
    let status = client
        .unary(scripted(
            req(b"", ""),
            "hf-unary",
            std::slice::from_ref(&action),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "5"
    );

    // Server streaming: the call itself succeeds (headers arrived), the
    // error comes from the stream.
    let mut stream = client
        .server_stream(scripted(req(b"", ""), "hf-stream", &[action]))
        .await
        .expect("headers first: the call is established")
        .into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    // Without headers_first it is Trailers-Only: the call itself fails.
    let status = client
        .server_stream(scripted(
            req(b"", ""),
            "to-stream",
            &[FaultAction::code(Code::Unavailable)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(server.attempts("hf-stream")[0].completed);
}

#[tokio::test]
async fn server_stream_sends_three_responses_after_body_delay() {
    let (_server, mut client) = setup().await;
    let action = FaultAction::ok().body_delay_ms(50);
    let mut stream = client
        .server_stream(scripted(req(b"p", "t"), "ss", &[action]))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(response) = stream.message().await.unwrap() {
        assert_eq!(response.payload, b"p");
        n += 1;
    }
    assert_eq!(n, SERVER_STREAM_RESPONSES);
}

#[tokio::test]
async fn retry_info_details_decode() {
    let (_server, mut client) = setup().await;
    let action = FaultAction::code(Code::ResourceExhausted).retry_info_ms(250);
    let status = client
        .unary(scripted(req(b"", ""), "ri", &[action]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let info = status.get_details_retry_info().expect("RetryInfo detail");
    assert_eq!(info.retry_delay, Some(Duration::from_millis(250)));
}

#[tokio::test]
async fn client_stream_records_request_size() {
    let (server, mut client) = setup().await;
    let messages = vec![req(b"aa", "x"), req(b"bbb", "y"), req(b"", "z")];
    let total: u64 = messages.iter().map(|m| m.encoded_len() as u64).sum();
    let request = scripted(tokio_stream::iter(messages), "cs", &[]);
    let response = client.client_stream(request).await.unwrap().into_inner();
    assert_eq!(response.payload, b"aabbb");
    assert_eq!(response.text, "xyz");
    assert_eq!(response.request_messages, 3);
    assert_eq!(response.request_bytes, total);
    let record = &server.attempts("cs")[0];
    assert_eq!(record.request_messages, 3);
    assert_eq!(record.request_bytes, total);
    assert_eq!(record.method, "/retry.test.v1.Echo/ClientStream");
}

#[tokio::test]
async fn early_response_before_request_stream_ends() {
    let (server, mut client) = setup().await;
    // A request stream that never finishes.
    let requests = tokio_stream::iter(vec![req(b"aa", "")]).chain(tokio_stream::pending());
    let request = scripted(requests, "early", &[FaultAction::ok().early()]);
    let response = timeout(STEP, client.client_stream(request))
        .await
        .expect("early response arrived")
        .unwrap()
        .into_inner();
    assert_eq!(response.request_messages, 0);
    assert_eq!(server.attempts("early")[0].request_bytes, 0);

    let requests = tokio_stream::iter(vec![req(b"aa", "")]).chain(tokio_stream::pending());
    let request = scripted(
        requests,
        "early-err",
        &[FaultAction::code(Code::Unavailable).early()],
    );
    let status = timeout(STEP, client.client_stream(request))
        .await
        .expect("early error arrived")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn bidi_echoes_each_message_as_it_arrives() {
    let (server, mut client) = setup().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let request = scripted(ReceiverStream::new(rx), "bidi", &[]);
    tx.send(req(b"one", "1")).await.unwrap();
    let mut responses = timeout(STEP, client.bidi(request))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let first = timeout(STEP, responses.message())
        .await
        .expect("first reply before the second request was sent")
        .unwrap()
        .unwrap();
    assert_eq!(first.payload, b"one");
    assert_eq!(first.request_messages, 1);
    tx.send(req(b"two", "2")).await.unwrap();
    let second = timeout(STEP, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.payload, b"two");
    assert_eq!(second.text, "2");
    assert_eq!(second.request_messages, 2);
    drop(tx);
    assert!(
        timeout(STEP, responses.message())
            .await
            .unwrap()
            .unwrap()
            .is_none()
    );
    let record = &server.attempts("bidi")[0];
    assert_eq!(record.request_messages, 2);
    assert!(record.completed);

    // An error action answers at once, without waiting for requests.
    let (_tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let request = scripted(
        ReceiverStream::new(rx),
        "bidi-err",
        &[FaultAction::code(Code::Unavailable)],
    );
    let status = timeout(STEP, client.bidi(request))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn invalid_fault_json_is_invalid_argument() {
    let (server, mut client) = setup().await;
    for bad in ["{not json", r#"[{"code":99}]"#, r#"[{"colour":1}]"#] {
        let mut request = Request::new(req(b"", ""));
        request
            .metadata_mut()
            .insert(FAULT_HEADER, bad.parse().unwrap());
        let status = client.unary(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(status.message().contains("x-fault"), "{status:?}");
    }
    assert!(server.attempts("").iter().all(|r| r.action.is_none()));
}

#[tokio::test]
async fn grpc_timeout_is_recorded() {
    let (server, mut client) = setup().await;
    let mut request = scripted(req(b"", ""), "deadline", &[]);
    request.set_timeout(Duration::from_secs(5));
    client.unary(request).await.unwrap();
    let record = &server.attempts("deadline")[0];
    assert!(record.grpc_timeout.is_some());
    assert_eq!(record.grpc_timeout_parsed, Some(Duration::from_secs(5)));
}

#[tokio::test]
async fn cancelled_attempt_is_recorded() {
    let (server, mut client) = setup().await;
    let mut request = scripted(req(b"", ""), "cancel", &[FaultAction::ok().delay_ms(5_000)]);
    request.set_timeout(Duration::from_millis(100));
    let status = timeout(STEP, client.unary(request))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{status:?}"
    );
    eventually(|| server.attempts("cancel")[0].cancelled).await;
    assert!(!server.attempts("cancel")[0].completed);
}

#[tokio::test]
async fn http_503_without_grpc_status_is_unavailable() {
    let (_server, mut client) = setup().await;
    let status = client
        .unary(scripted(
            req(b"", ""),
            "503",
            &[FaultAction::http_status(503)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn malformed_grpc_status_is_unknown() {
    let (_server, mut client) = setup().await;
    for raw in ["abc", "99", ""] {
        let action = FaultAction::code(Code::Unavailable).grpc_status_raw(raw);
        let status = client
            .unary(scripted(req(b"", ""), "raw", &[action]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unknown, "{raw:?}: {status:?}");
    }
}

#[tokio::test]
async fn reset_stream_is_internal() {
    let (server, mut client) = setup().await;
    let status = client
        .unary(scripted(req(b"", ""), "reset", &[FaultAction::reset()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");

    let status = client
        .unary(scripted(
            req(b"", ""),
            "reset-late",
            &[FaultAction::reset().headers_first()],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let status = client
        .unary(scripted(
            req(b"", ""),
            "refused",
            &[FaultAction::reset_with(7)],
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unavailable,
        "REFUSED_STREAM: {status:?}"
    );
    assert!(server.attempts("reset")[0].completed);
    assert!(server.attempts("reset-late")[0].completed);

    // The connection survives a stream reset.
    client.unary(req(b"", "")).await.unwrap();
}

#[tokio::test]
async fn restart_on_the_same_address() {
    let (server, mut client) = setup().await;
    let addr = server.addr();
    let service = server.service().clone();
    client
        .unary(scripted(req(b"", ""), "r", &[]))
        .await
        .unwrap();
    server.shutdown().await;

    let status = client
        .unary(scripted(req(b"", ""), "r", &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let server = TestServer::start_with(addr, service)
        .await
        .expect("restart");
    let response = timeout(STEP, async {
        loop {
            match client.unary(scripted(req(b"", ""), "r", &[])).await {
                Ok(r) => break r.into_inner(),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("reconnected");
    assert!(response.attempt >= 1);
    timeout(STEP, server.wait_for_attempts("r", 2))
        .await
        .unwrap();
}

#[tokio::test]
async fn with_capacity_the_server_queues_then_sheds_with_unavailable() {
    use tonic_retry::testing::{Capacity, CapacityConfig, ServiceTime};
    // One worker, one place in the queue, 300 ms of work each: of three
    // calls sent together, two are served one after the other and the
    // third is refused at once.
    let server = TestServer::builder()
        .capacity(Capacity::new(CapacityConfig {
            workers: 1,
            queue_limit: 1,
            service_time: ServiceTime::Fixed(Duration::from_millis(300)),
            ..CapacityConfig::default()
        }))
        .start()
        .await
        .expect("start test server");
    let client = timeout(STEP, EchoClient::connect(server.uri()))
        .await
        .expect("connect timed out")
        .expect("connect");
    let start = tokio::time::Instant::now();
    let mut calls = Vec::new();
    for i in 0..3 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            let result = client.unary(req(b"x", &i.to_string())).await;
            (result.map(|_| ()).map_err(|s| s.code()), start.elapsed())
        }));
        // In order: the server sees them one after the other.
        eventually(|| server.capacity().unwrap().stats().arrived > i).await;
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(timeout(STEP, call).await.unwrap().unwrap());
    }
    assert_eq!(results[2].0, Err(Code::Unavailable), "the queue was full");
    assert!(results[2].1 < Duration::from_millis(300), "refused at once");
    assert_eq!(results[0].0, Ok(()));
    assert_eq!(results[1].0, Ok(()));
    assert!(
        results[1].1 >= Duration::from_millis(600),
        "served after the first"
    );
    let stats = server.capacity().unwrap().stats();
    assert_eq!((stats.arrived, stats.rejected, stats.finished), (3, 1, 2));
    assert_eq!(server.total_attempts(), 3, "every attempt is recorded");
}
