//! Retry rules, checked against a real tonic server over loopback. The
//! server's behaviour for each attempt is scripted through request metadata
//! (see `tonic_retry::testing`), and it records every attempt it receives.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_retry::RetryPolicy;
use tonic_retry::testing::proto::EchoRequest;
use tonic_retry::testing::{FaultAction, TestServer};

fn unavailable() -> FaultAction {
    FaultAction::code(Code::Unavailable).message("try again")
}

#[tokio::test]
async fn retries_then_succeeds() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let script = [unavailable(), unavailable(), FaultAction::ok()];

    let response = client.unary(scripted("c", &script)).await.unwrap();

    assert_eq!(response.get_ref().attempt, 2, "the third attempt answered");
    assert_eq!(server.attempts("c").len(), 3);
    assert_eq!(previous_attempts(response.metadata()).as_deref(), Some("2"));
}

#[tokio::test]
async fn success_on_the_first_attempt_adds_no_metadata() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let response = client
        .unary(scripted("c", &[FaultAction::ok()]))
        .await
        .unwrap();
    assert_eq!(previous_attempts(response.metadata()), None);
    assert_eq!(server.attempts("c").len(), 1);
}

#[tokio::test]
async fn non_retryable_code_is_final() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    for code in [
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::Unimplemented,
        Code::ResourceExhausted,
        Code::Internal,
    ] {
        let id = format!("{code:?}");
        let script = [
            FaultAction::code(code).message("logic error"),
            FaultAction::ok(),
        ];
        let status = client.unary(scripted(&id, &script)).await.unwrap_err();
        assert_eq!(status.code(), code);
        assert_eq!(status.message(), "logic error");
        assert_eq!(
            server.attempts(&id).len(),
            1,
            "{code:?} must not be retried"
        );
        assert_eq!(previous_attempts(status.metadata()), None);
    }
}

#[tokio::test]
async fn exhausted_attempts_return_the_last_status_unchanged() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy().max_attempts(3).build().unwrap();
    let mut client = client(&server, policy).await;
    let last = FaultAction::code(Code::Unavailable)
        .message("third: ünïcode % message")
        .raw_header("x-server-detail", "kept")
        .retry_info_ms(50);
    let script = [
        FaultAction::code(Code::Unavailable).message("first"),
        FaultAction::code(Code::Aborted).message("second"),
        last,
    ];

    let status = client.unary(scripted("c", &script)).await.unwrap_err();

    assert_eq!(server.attempts("c").len(), 3);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "third: ünïcode % message");
    assert_eq!(status.metadata().get("x-server-detail").unwrap(), "kept");
    assert!(!status.details().is_empty(), "details pass through");
    assert_eq!(previous_attempts(status.metadata()).as_deref(), Some("2"));

    // The same script without the layer yields the same details bytes.
    let mut raw = tonic_retry::testing::proto::EchoClient::new(channel(&server).await);
    let direct = raw
        .unary(scripted("direct", &script[2..]))
        .await
        .unwrap_err();
    assert_eq!(direct.details(), status.details());
}

#[tokio::test]
async fn max_attempts_is_capped_at_five() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy().max_attempts(10).build().unwrap();
    assert_eq!(policy.max_attempts(), 5);
    let mut client = client(&server, policy).await;
    let status = client
        .unary(scripted("c", &[unavailable()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempts("c").len(), 5);
}

#[tokio::test]
async fn max_attempts_one_never_retries() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy().max_attempts(1).build().unwrap();
    let mut client = client(&server, policy).await;
    let status = client
        .unary(scripted("c", &[unavailable()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(server.attempts("c").len(), 1);
}

#[tokio::test]
async fn commits_after_response_headers() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let script = [
        FaultAction::code(Code::Unavailable)
            .message("after headers")
            .headers_first(),
        FaultAction::ok(),
    ];
    let status = client.unary(scripted("c", &script)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "after headers");
    assert_eq!(
        server.attempts("c").len(),
        1,
        "committed calls are never retried"
    );
}

#[tokio::test]
async fn trailers_only_ok_on_server_streaming_is_a_success() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let mut stream = client
        .server_stream(scripted("c", &[unavailable(), FaultAction::ok()]))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(message) = stream.message().await.unwrap() {
        assert_eq!(message.attempt, 1);
        n += 1;
    }
    assert_eq!(n, tonic_retry::testing::SERVER_STREAM_RESPONSES);
}

#[tokio::test]
async fn one_deadline_covers_all_attempts() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy().max_attempts(5).build().unwrap();
    let mut client = client(&server, policy).await;
    // Each attempt takes 120 ms: five would need 600 ms, the deadline is 300.
    let mut request = scripted("c", &[unavailable().delay_ms(120)]);
    request.set_timeout(Duration::from_millis(300));

    let start = Instant::now();
    let status = client.unary(request).await.unwrap_err();
    let elapsed = start.elapsed();

    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(450), "{elapsed:?}");
    let attempts = server.attempts("c").len();
    assert!((2..=3).contains(&attempts), "{attempts} attempts");
}

#[tokio::test]
async fn the_policy_timeout_and_the_request_timeout_take_the_earlier() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let mut client = client(&server, policy).await;
    let mut request = scripted("c", &[FaultAction::ok().delay_ms(5000)]);
    request.set_timeout(Duration::from_secs(10));
    let start = Instant::now();
    let status = client.unary(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(start.elapsed() < Duration::from_millis(400));
    let sent = server.attempts("c")[0].grpc_timeout_parsed.unwrap();
    assert!(sent <= Duration::from_millis(200), "{sent:?}");
}

#[tokio::test]
async fn grpc_timeout_is_rewritten_to_the_time_left_on_each_attempt() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy().build().unwrap();
    let mut client = client(&server, policy).await;
    let mut request = scripted(
        "c",
        &[
            unavailable().delay_ms(40),
            unavailable().delay_ms(40),
            FaultAction::ok(),
        ],
    );
    request.set_timeout(Duration::from_secs(2));
    client.unary(request).await.unwrap();

    let sent: Vec<Duration> = server
        .attempts("c")
        .iter()
        .map(|a| {
            a.grpc_timeout_parsed
                .expect("every attempt carries grpc-timeout")
        })
        .collect();
    assert_eq!(sent.len(), 3);
    assert!(sent[0] <= Duration::from_secs(2) && sent[0] > Duration::from_millis(1900));
    for pair in sent.windows(2) {
        // At least the 40 ms the previous attempt took has been used up.
        assert!(pair[1] + Duration::from_millis(40) <= pair[0], "{sent:?}");
    }
}

#[tokio::test]
async fn per_attempt_timeout_counts_as_deadline_exceeded_and_is_retried() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy()
        .per_attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut client = client(&server, policy).await;
    let mut request = scripted("c", &[FaultAction::ok().delay_ms(5000), FaultAction::ok()]);
    request.set_timeout(Duration::from_secs(5));

    let start = Instant::now();
    let response = client.unary(request).await.unwrap();

    assert_eq!(response.get_ref().attempt, 1);
    assert!(start.elapsed() < Duration::from_secs(2));
    let attempts = server.attempts("c");
    assert!(attempts[0].grpc_timeout_parsed.unwrap() <= Duration::from_millis(100));
    // The slow attempt was abandoned, and the server saw its stream reset.
    eventually(
        Duration::from_secs(2),
        "the timed-out attempt is cancelled at the server",
        || server.attempts("c")[0].cancelled,
    )
    .await;
}

#[tokio::test]
async fn per_attempt_timeouts_exhausted_surface_deadline_exceeded() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy()
        .max_attempts(2)
        .per_attempt_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut client = client(&server, policy).await;
    let status = client
        .unary(scripted("c", &[FaultAction::ok().delay_ms(5000)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(server.attempts("c").len(), 2);
}

#[tokio::test]
async fn dropping_the_call_mid_backoff_stops_it_and_leaves_nothing_behind() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy()
        .initial_backoff(Duration::from_millis(300))
        .max_backoff(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut client = client(&server, policy).await;
    // Warm the connection so its tasks exist before we count.
    client
        .unary(scripted("warm", &[FaultAction::ok()]))
        .await
        .unwrap();
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    // A client stream whose sender tells us when the layer drops the body.
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    tx.send(EchoRequest::default()).await.unwrap();
    drop(tx.clone());
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let request = scripted_with("c", &[unavailable().early()], stream);
    let call = client.client_stream(request);
    tokio::select! {
        _ = call => panic!("the call must still be backing off"),
        () = async {
            server.wait_for_attempts("c", 1).await;
            // Well inside the 300 ms backoff (240..360 ms with jitter).
            tokio::time::sleep(Duration::from_millis(100)).await;
        } => {}
    }
    // The call future is dropped here, mid-backoff.

    tokio::time::timeout(Duration::from_secs(2), tx.closed())
        .await
        .expect("the request body (and its replay buffer) was dropped");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.attempts("c").len(), 1, "no retry after the drop");
    no_task_outlives_the_call(baseline).await;
}

#[tokio::test]
async fn a_cancellation_token_ends_the_call_with_cancelled() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let token = CancellationToken::new();
    let mut request = scripted("c", &[FaultAction::ok().delay_ms(5000)]);
    request.extensions_mut().insert(token.clone());

    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        token.cancel();
    });
    let start = Instant::now();
    let status = client.unary(request).await.unwrap_err();
    canceller.await.unwrap();

    assert_eq!(status.code(), Code::Cancelled);
    assert!(start.elapsed() < Duration::from_secs(2));
    eventually(
        Duration::from_secs(2),
        "the in-flight attempt is reset at the server",
        || server.attempts("c")[0].cancelled,
    )
    .await;
}

#[tokio::test]
async fn a_token_cancelled_during_backoff_ends_the_call_at_once() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy()
        .initial_backoff(Duration::from_secs(10))
        .max_backoff(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut client = client(&server, policy).await;
    let token = CancellationToken::new();
    let mut request = scripted("c", &[unavailable()]);
    request.extensions_mut().insert(token.clone());
    let start = Instant::now();
    let (result, ()) = tokio::join!(client.unary(request), async {
        server.wait_for_attempts("c", 1).await;
        token.cancel();
    });
    assert_eq!(result.unwrap_err().code(), Code::Cancelled);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(server.attempts("c").len(), 1);
}

#[tokio::test]
async fn client_streaming_requests_are_replayed_in_full() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let messages: Vec<EchoRequest> = ["a", "bb", "ccc"]
        .iter()
        .map(|p| EchoRequest {
            payload: p.as_bytes().to_vec(),
            text: String::new(),
        })
        .collect();
    let encoded: u64 = messages
        .iter()
        .map(|m| prost::Message::encoded_len(m) as u64)
        .sum();
    let request = scripted_with(
        "c",
        &[unavailable(), unavailable(), FaultAction::ok()],
        tokio_stream::iter(messages),
    );
    let response = client.client_stream(request).await.unwrap().into_inner();
    assert_eq!(response.payload, b"abbccc");
    assert_eq!(response.request_messages, 3);
    let attempts = server.attempts("c");
    assert_eq!(attempts.len(), 3);
    for a in &attempts {
        assert_eq!((a.request_bytes, a.request_messages), (encoded, 3), "{a:?}");
    }
}

#[tokio::test]
async fn a_retry_after_an_early_response_resends_the_stream_exactly_once() {
    // The server fails attempt 1 before the client has finished streaming.
    // The retry must send every message once, in order: the recorded prefix
    // and then the rest of the caller's stream.
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    let message = |p: &str| EchoRequest {
        payload: p.as_bytes().to_vec(),
        text: String::new(),
    };
    tx.send(message("a")).await.unwrap();
    let request = scripted_with(
        "c",
        &[unavailable().early(), FaultAction::ok()],
        tokio_stream::wrappers::ReceiverStream::new(rx),
    );
    let feeder = async {
        server.wait_for_attempts("c", 2).await;
        tx.send(message("b")).await.unwrap();
        tx.send(message("c")).await.unwrap();
        drop(tx);
    };
    let (response, ()) = tokio::join!(client.client_stream(request), feeder);
    let response = response.unwrap().into_inner();
    assert_eq!(response.payload, b"abc");
    assert_eq!(response.request_messages, 3);
}

#[tokio::test]
async fn bidi_streams_are_replayed_while_uncommitted() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let messages: Vec<EchoRequest> = (0..3)
        .map(|i| EchoRequest {
            payload: vec![b'x'; i + 1],
            text: String::new(),
        })
        .collect();
    let request = scripted_with(
        "c",
        &[unavailable(), FaultAction::ok()],
        tokio_stream::iter(messages),
    );
    let mut stream = client.bidi(request).await.unwrap().into_inner();
    let mut sizes = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.attempt, 1);
        sizes.push(reply.payload.len());
    }
    assert_eq!(sizes, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_request_over_the_replay_limit_is_sent_but_not_retried() {
    let server = TestServer::start().await.unwrap();
    let big = EchoRequest {
        payload: vec![7; 4096],
        text: String::new(),
    };
    let script = [unavailable(), FaultAction::ok()];

    let policy = fast_policy().replay_limit(1024).build().unwrap();
    let mut client = client(&server, policy).await;
    let status = client
        .unary(scripted_with("over", &script, big.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let attempts = server.attempts("over");
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        attempts[0].request_bytes,
        prost::Message::encoded_len(&big) as u64,
        "the request was sent in full"
    );

    // Under a limit that fits it, the same request is retried.
    let policy = fast_policy().replay_limit(8192).build().unwrap();
    let mut roomy = common::client(&server, policy).await;
    let response = roomy
        .unary(scripted_with("under", &script, big))
        .await
        .unwrap();
    assert_eq!(response.get_ref().payload.len(), 4096);
    assert_eq!(server.attempts("under").len(), 2);
}

#[tokio::test]
async fn connection_refused_is_retried_until_the_server_comes_up() {
    // Find a free port, then leave it closed so connections are refused.
    let (addr, channel) = refused_address();
    let policy = RetryPolicy::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(400))
        .build()
        .unwrap();
    let mut client = client_over(channel, policy);
    let server_up = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        TestServer::start_at(addr).await.unwrap()
    });
    let mut request = scripted("c", &[FaultAction::ok()]);
    request.set_timeout(Duration::from_secs(3));

    let start = Instant::now();
    let response = client.unary(request).await.unwrap();
    let server = server_up.await.unwrap();

    assert!(start.elapsed() < Duration::from_secs(3));
    let previous: u32 = previous_attempts(response.metadata())
        .unwrap()
        .parse()
        .unwrap();
    assert!(previous >= 1, "at least one attempt was refused");
    assert_eq!(
        server.attempts("c").len(),
        1,
        "refused attempts never arrived"
    );
}

#[tokio::test]
async fn connection_refused_exhausted_surfaces_unavailable() {
    let (_, channel) = refused_address();
    let mut client = client_over(channel, fast_policy().max_attempts(3).build().unwrap());
    let status = client
        .unary(tonic::Request::new(EchoRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(previous_attempts(status.metadata()).as_deref(), Some("2"));
}

#[tokio::test]
async fn grpc_previous_rpc_attempts_counts_up_from_the_second_attempt() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    let script = [
        unavailable(),
        unavailable(),
        unavailable(),
        FaultAction::ok(),
    ];
    client.unary(scripted("c", &script)).await.unwrap();
    let sent: Vec<Option<String>> = server
        .attempts("c")
        .into_iter()
        .map(|a| a.previous_rpc_attempts)
        .collect();
    assert_eq!(
        sent,
        vec![None, Some("1".into()), Some("2".into()), Some("3".into())]
    );
}

#[tokio::test]
async fn http_errors_without_grpc_status_are_classified_like_grpc() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().build().unwrap()).await;
    // A proxy's 503 maps to UNAVAILABLE and is retried.
    let script = [FaultAction::http_status(503), FaultAction::ok()];
    client.unary(scripted("proxy", &script)).await.unwrap();
    assert_eq!(server.attempts("proxy").len(), 2);
    // A 404 maps to UNIMPLEMENTED: final.
    let script = [FaultAction::http_status(404), FaultAction::ok()];
    let status = client
        .unary(scripted("missing", &script))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(server.attempts("missing").len(), 1);
}

#[tokio::test]
async fn the_custom_classifier_decides_from_code_and_headers() {
    let server = TestServer::start().await.unwrap();
    let policy = fast_policy()
        .classifier(|code, headers| {
            code == Code::ResourceExhausted && headers.contains_key("x-transient")
        })
        .build()
        .unwrap();
    let mut client = client(&server, policy).await;
    let transient = FaultAction::code(Code::ResourceExhausted).raw_header("x-transient", "1");
    client
        .unary(scripted("t", &[transient, FaultAction::ok()]))
        .await
        .unwrap();
    assert_eq!(server.attempts("t").len(), 2);
    let status = client
        .unary(scripted(
            "p",
            &[
                FaultAction::code(Code::ResourceExhausted),
                FaultAction::ok(),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(server.attempts("p").len(), 1);
}

#[tokio::test]
async fn malformed_status_headers_never_panic_the_caller() {
    let server = TestServer::start().await.unwrap();
    let mut client = client(&server, fast_policy().max_attempts(2).build().unwrap()).await;
    // Garbage details would make tonic's stub panic (it decodes them with
    // `expect`); the layer drops them and keeps code and message.
    let bad_details = FaultAction::code(Code::Unavailable)
        .message("bad details")
        .raw_header("grpc-status-details-bin", "!!!not base64!!!");
    let status = client
        .unary(scripted("details", &[bad_details]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "bad details");
    assert!(status.details().is_empty());
    assert_eq!(server.attempts("details").len(), 2);

    // The same garbage on a trailers-only OK (found by tests/fuzz.rs): tonic
    // parses those headers as a status too, so the layer must strip them.
    let ok_with_bad_details = FaultAction::code(Code::Unavailable)
        .grpc_status_raw("0")
        .raw_header("grpc-status-details-bin", "!!!not base64!!!");
    let mut stream = client
        .server_stream(scripted("ok-details", &[ok_with_bad_details]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stream.message().await.unwrap().is_none(),
        "an empty OK stream"
    );

    // A grpc-status that is not a code is UNKNOWN, which is final.
    for raw in ["abc", "99", "", "-1", "014"] {
        let id = format!("status-{raw}");
        let action = FaultAction::code(Code::Unavailable).grpc_status_raw(raw);
        let status = client.unary(scripted(&id, &[action])).await.unwrap_err();
        assert_eq!(status.code(), Code::Unknown, "grpc-status {raw:?}");
        assert_eq!(server.attempts(&id).len(), 1);
    }
}

#[tokio::test]
async fn an_inner_service_that_is_send_but_not_sync_is_accepted() {
    // tower's BoxCloneService is Send but not Sync; users put such services
    // under the layer.
    let server = TestServer::start().await.unwrap();
    let boxed: tower::util::BoxCloneService<
        http::Request<tonic::body::Body>,
        http::Response<tonic::body::Body>,
        tonic::transport::Error,
    > = tower::util::BoxCloneService::new(channel(&server).await);
    let mut client = tonic_retry::testing::proto::EchoClient::new(
        tower::ServiceBuilder::new()
            .layer(tonic_retry::RetryLayer::new(fast_policy().build().unwrap()))
            .service(boxed),
    );
    let script = [unavailable(), FaultAction::ok()];
    let response = client.unary(scripted("c", &script)).await.unwrap();
    assert_eq!(response.get_ref().attempt, 1);
    assert_eq!(server.attempts("c").len(), 2);
}
