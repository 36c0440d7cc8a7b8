//! Randomised ("fuzz") tests: whatever a server sends, the layer never
//! panics.
//!
//! cargo-fuzz needs a nightly toolchain, which this project's machines do not
//! have, so these are deterministic, seeded, bounded random tests that run in
//! the normal suite: the parsers get raw random bytes and mutations of valid
//! inputs, and the whole layer gets random response heads and errors from an
//! in-memory inner service.

use std::convert::Infallible;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};
use tonic::body::Body;
use tonic_retry::deadline::parse_grpc_timeout;
use tonic_retry::pushback::{Pushback, retry_info_delay, server_pushback};
use tonic_retry::{RetryLayer, RetryPolicy, RetryThrottle};
use tower::{Layer, Service, ServiceExt};

const ITERATIONS: usize = 20_000;

fn random_bytes(rng: &mut fastrand::Rng, max_len: usize) -> Vec<u8> {
    let len = rng.usize(0..=max_len);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// Random bytes biased towards the characters the parsers care about.
fn plausible_bytes(rng: &mut fastrand::Rng, max_len: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"0123456789-+. HMSmunsx\\x00\\xff=/AZaz";
    let len = rng.usize(0..=max_len);
    (0..len)
        .map(|_| {
            if rng.u8(..) < 200 {
                ALPHABET[rng.usize(..ALPHABET.len())]
            } else {
                rng.u8(..)
            }
        })
        .collect()
}

#[test]
fn grpc_timeout_parser_never_panics_and_only_accepts_the_grammar() {
    let mut rng = fastrand::Rng::with_seed(1);
    for _ in 0..ITERATIONS {
        let input = if rng.bool() {
            random_bytes(&mut rng, 12)
        } else {
            plausible_bytes(&mut rng, 12)
        };
        if let Some(parsed) = parse_grpc_timeout(&input) {
            // Accepted inputs are 1-8 digits and a unit, and re-encode to at
            // most the same duration.
            let (unit, digits) = input.split_last().unwrap();
            assert!(b"HMSmun".contains(unit), "{input:?}");
            assert!((1..=8).contains(&digits.len()), "{input:?}");
            assert!(digits.iter().all(u8::is_ascii_digit), "{input:?}");
            let encoded = tonic_retry::deadline::encode_grpc_timeout(parsed);
            assert!(parse_grpc_timeout(encoded.as_bytes()).unwrap() <= parsed);
        }
    }
}

#[test]
fn pushback_parser_never_panics_and_only_delays_on_one_non_negative_integer() {
    let mut rng = fastrand::Rng::with_seed(2);
    for _ in 0..ITERATIONS {
        let mut headers = HeaderMap::new();
        let values = rng.usize(1..=2);
        let mut raw = Vec::new();
        for _ in 0..values {
            let bytes = plausible_bytes(&mut rng, 12);
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                headers.append("grpc-retry-pushback-ms", value);
                raw.push(bytes);
            }
        }
        match server_pushback(&headers) {
            Pushback::RetryAfter(delay) => {
                assert_eq!(raw.len(), 1);
                let text = std::str::from_utf8(&raw[0]).unwrap();
                let ms: i32 = text.parse().unwrap();
                assert_eq!(delay, Duration::from_millis(ms as u64));
            }
            Pushback::Stop => assert!(!raw.is_empty()),
            Pushback::Absent => assert!(raw.is_empty()),
        }
    }
}

#[test]
fn retry_info_parser_never_panics_on_random_details() {
    let mut rng = fastrand::Rng::with_seed(3);
    let engine = base64::engine::general_purpose::STANDARD;
    for _ in 0..ITERATIONS {
        let mut headers = HeaderMap::new();
        let value = if rng.bool() {
            engine.encode(random_bytes(&mut rng, 48))
        } else {
            String::from_utf8_lossy(&plausible_bytes(&mut rng, 48))
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .collect()
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("grpc-status-details-bin", value);
        }
        let _ = retry_info_delay(&headers);
    }
}

/// A random response head or error, as a hostile or broken server (or
/// proxy) might produce.
fn random_response(rng: &mut fastrand::Rng) -> Result<http::Response<Body>, std::io::Error> {
    if rng.u8(..) < 20 {
        return Err(std::io::Error::other("random transport failure"));
    }
    let status = [200u16, 200, 200, 400, 404, 429, 500, 502, 503, 504][rng.usize(..10)];
    let mut builder = http::Response::builder().status(status);
    let names = [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "grpc-retry-pushback-ms",
        "content-type",
    ];
    for _ in 0..rng.usize(0..6) {
        let name = names[rng.usize(..names.len())];
        let bytes = if name == "grpc-status" && rng.bool() {
            rng.u8(0..20).to_string().into_bytes()
        } else {
            plausible_bytes(rng, 16)
        };
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            builder = builder.header(name, value);
        }
    }
    Ok(builder.body(Body::empty()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn the_layer_never_panics_on_random_server_responses() {
    let seed = std::sync::Arc::new(std::sync::Mutex::new(fastrand::Rng::with_seed(4)));
    let inner = tower::service_fn(move |_req: http::Request<Body>| {
        let response = random_response(&mut seed.lock().unwrap());
        async move { Ok::<_, Infallible>(response) }
    })
    .map_err(|never: Infallible| -> tonic_retry::BoxError { match never {} });
    let inner = tower::service_fn(move |req| {
        let mut inner = inner.clone();
        async move {
            match inner.ready().await?.call(req).await? {
                Ok(response) => Ok(response),
                Err(io) => Err(tonic_retry::BoxError::from(io)),
            }
        }
    });
    let policy = RetryPolicy::builder()
        .initial_backoff(Duration::from_millis(1))
        .build()
        .unwrap();
    let layer = RetryLayer::builder(policy)
        .throttle(RetryThrottle::new(100_000, 1_000).unwrap())
        .build();
    let mut svc = layer.layer(inner);
    for i in 0..3_000 {
        let mut request = http::Request::builder()
            .uri("http://fuzz/pkg.Svc/Method")
            .body(Body::empty())
            .unwrap();
        if i % 3 == 0 {
            request
                .headers_mut()
                .insert("grpc-timeout", HeaderValue::from_static("50m"));
        }
        // Any result is fine; a panic would fail the test.
        match svc.ready().await.unwrap().call(request).await {
            Ok(response) => {
                // What reaches tonic's stub must not make it panic either.
                let _ = tonic::Status::from_header_map(response.headers());
            }
            Err(error) => {
                // Everything the layer surfaces as an error is a Status, so
                // the stub reports it unchanged.
                let status = error
                    .downcast_ref::<tonic::Status>()
                    .unwrap_or_else(|| panic!("not a Status: {error}"));
                assert_ne!(status.code(), tonic::Code::Ok);
            }
        }
    }
    assert_eq!(layer.buffered_bytes(), 0);
}
