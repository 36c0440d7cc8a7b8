//! Exact backoff and deadline schedules, checked under `tokio::time::pause()`
//! against an in-memory inner service that fails in a scripted way. Paused
//! time makes every gap exact, so these tests assert bounds, not averages.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tonic_retry::{Jitter, RetryLayer, RetryPolicy};
use tower::{Layer, Service, ServiceExt};

type Arrivals = Arc<Mutex<Vec<Instant>>>;

/// An inner service that answers every attempt with a trailers-only status
/// `code`, and the log of when each attempt arrived.
fn failing_service(
    code: Code,
) -> (
    impl Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static,
    Arrivals,
) {
    let arrivals = Arrivals::default();
    let log = arrivals.clone();
    let svc = tower::service_fn(move |_req: http::Request<Body>| {
        log.lock().unwrap().push(Instant::now());
        async move {
            Ok::<_, Infallible>(
                http::Response::builder()
                    .header("grpc-status", (code as i32).to_string())
                    .header("grpc-message", "scripted")
                    .body(Body::empty())
                    .unwrap(),
            )
        }
    });
    (svc, arrivals)
}

fn request() -> http::Request<Body> {
    http::Request::builder()
        .uri("http://test/pkg.Svc/Method")
        .body(Body::empty())
        .unwrap()
}

fn gaps(arrivals: &[Instant]) -> Vec<Duration> {
    arrivals.windows(2).map(|w| w[1] - w[0]).collect()
}

/// tokio's timer wheel has millisecond resolution: a sleep ends up to 1 ms late.
const TIMER_SLACK: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn every_backoff_gap_lies_within_twenty_percent_of_the_a6_schedule() {
    let policy = RetryPolicy::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(1000))
        .backoff_multiplier(3.0)
        .build()
        .unwrap();
    let expected_base = [100u64, 300, 900, 1000].map(Duration::from_millis);
    let mut all_gaps = Vec::new();
    for _ in 0..40 {
        let (inner, arrivals) = failing_service(Code::Unavailable);
        let mut svc = RetryLayer::new(policy.clone()).layer(inner);
        let response = svc.ready().await.unwrap().call(request()).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "14");
        let arrivals = arrivals.lock().unwrap().clone();
        assert_eq!(arrivals.len(), 5, "max_attempts counts the original");
        for (gap, base) in gaps(&arrivals).into_iter().zip(expected_base) {
            assert!(
                gap >= base.mul_f64(0.8) && gap <= base.mul_f64(1.2) + TIMER_SLACK,
                "gap {gap:?} outside [0.8, 1.2] x {base:?}"
            );
            all_gaps.push(gap.as_secs_f64() / base.as_secs_f64());
        }
    }
    // The jitter is really random: ratios spread over the band.
    let min = all_gaps.iter().cloned().fold(f64::MAX, f64::min);
    let max = all_gaps.iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        min < 0.9 && max > 1.1,
        "jitter ratios did not spread: {min}..{max}"
    );
}

#[tokio::test(start_paused = true)]
async fn full_jitter_gaps_lie_between_zero_and_the_computed_backoff() {
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(200))
        .max_backoff(Duration::from_millis(500))
        .backoff_multiplier(2.0)
        .jitter(Jitter::Full)
        .build()
        .unwrap();
    let expected_base = [200u64, 400, 500].map(Duration::from_millis);
    for _ in 0..20 {
        let (inner, arrivals) = failing_service(Code::Aborted);
        let mut svc = RetryLayer::new(policy.clone()).layer(inner);
        svc.ready().await.unwrap().call(request()).await.unwrap();
        let arrivals = arrivals.lock().unwrap().clone();
        assert_eq!(arrivals.len(), 4);
        for (gap, base) in gaps(&arrivals).into_iter().zip(expected_base) {
            assert!(gap <= base + TIMER_SLACK, "gap {gap:?} above {base:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn without_jitter_the_schedule_is_exact() {
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(120))
        .backoff_multiplier(2.0)
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let (inner, arrivals) = failing_service(Code::Unavailable);
    let mut svc = RetryLayer::new(policy).layer(inner);
    svc.ready().await.unwrap().call(request()).await.unwrap();
    let got = gaps(&arrivals.lock().unwrap());
    let want = [50u64, 100, 120].map(Duration::from_millis);
    for (gap, want) in got.iter().zip(want) {
        assert!(*gap >= want && *gap <= want + TIMER_SLACK, "{got:?}");
    }
    assert_eq!(got.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn fails_at_once_when_the_next_backoff_would_pass_the_deadline() {
    // Attempts at 0 ms and 100 ms; the next backoff (200 ms) would end at
    // 300 ms, past the 250 ms deadline, so the call fails at 100 ms.
    let policy = RetryPolicy::builder()
        .max_attempts(5)
        .initial_backoff(Duration::from_millis(100))
        .backoff_multiplier(2.0)
        .jitter(Jitter::None)
        .timeout(Duration::from_millis(250))
        .build()
        .unwrap();
    let (inner, arrivals) = failing_service(Code::Unavailable);
    let mut svc = RetryLayer::new(policy).layer(inner);
    let start = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap_err();
    let status = err.downcast::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(
        status.message().contains("UNAVAILABLE: scripted"),
        "the message names the last attempt's status: {}",
        status.message()
    );
    assert_eq!(Instant::now() - start, Duration::from_millis(100));
    assert_eq!(arrivals.lock().unwrap().len(), 2);
    assert_eq!(
        status.metadata().get("grpc-previous-rpc-attempts").unwrap(),
        "1"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_interrupts_a_slow_attempt_exactly_on_time() {
    let policy = RetryPolicy::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let inner = tower::service_fn(|_req: http::Request<Body>| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<http::Response<Body>, Infallible>(http::Response::new(Body::empty()))
    });
    let mut svc = RetryLayer::new(policy).layer(inner);
    let start = Instant::now();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap_err();
    let status = err.downcast::<tonic::Status>().unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    let elapsed = Instant::now() - start;
    assert!(
        elapsed >= Duration::from_millis(300)
            && elapsed <= Duration::from_millis(300) + TIMER_SLACK,
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_gaps_are_the_scheduled_backoffs_in_virtual_time_even_when_attempts_take_real_time()
{
    // Each attempt does real work between polls (it yields until 3 ms of
    // real time have passed) while the paused clock stands still. A wait
    // timed against the real clock would end at once, at zero virtual
    // time; on tokio's timer it ends exactly on the virtual schedule.
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(1))
        .max_backoff(Duration::from_millis(100))
        .backoff_multiplier(2.0)
        .jitter(Jitter::None)
        .build()
        .unwrap();
    let arrivals = Arrivals::default();
    let log = arrivals.clone();
    let inner = tower::service_fn(move |_req: http::Request<Body>| {
        log.lock().unwrap().push(Instant::now());
        async move {
            let busy_until = std::time::Instant::now() + Duration::from_millis(3);
            while std::time::Instant::now() < busy_until {
                tokio::task::yield_now().await;
            }
            Ok::<_, Infallible>(
                http::Response::builder()
                    .header("grpc-status", (Code::Unavailable as i32).to_string())
                    .body(Body::empty())
                    .unwrap(),
            )
        }
    });
    let mut svc = RetryLayer::new(policy).layer(inner);
    let response = svc.ready().await.unwrap().call(request()).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    let got = gaps(&arrivals.lock().unwrap());
    let want = [1u64, 2, 4].map(Duration::from_millis);
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (gap, want) in got.iter().zip(want) {
        assert!(
            *gap >= want && *gap <= want + TIMER_SLACK,
            "gap {gap:?} should be the scheduled {want:?} (all: {got:?})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn equal_jitter_gaps_lie_between_half_the_computed_backoff_and_all_of_it() {
    let policy = RetryPolicy::builder()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(200))
        .max_backoff(Duration::from_millis(500))
        .backoff_multiplier(2.0)
        .jitter(Jitter::Equal)
        .build()
        .unwrap();
    let expected_base = [200u64, 400, 500].map(Duration::from_millis);
    let mut ratios = Vec::new();
    for _ in 0..20 {
        let (inner, arrivals) = failing_service(Code::Aborted);
        let mut svc = RetryLayer::new(policy.clone()).layer(inner);
        svc.ready().await.unwrap().call(request()).await.unwrap();
        let arrivals = arrivals.lock().unwrap().clone();
        assert_eq!(arrivals.len(), 4);
        for (gap, base) in gaps(&arrivals).into_iter().zip(expected_base) {
            assert!(
                gap >= base / 2 && gap <= base + TIMER_SLACK,
                "gap {gap:?} outside [{base:?}/2, {base:?}]"
            );
            ratios.push(gap.as_secs_f64() / base.as_secs_f64());
        }
    }
    // Spread over the band, not pinned to one end of it.
    let min = ratios.iter().cloned().fold(f64::MAX, f64::min);
    let max = ratios.iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        min < 0.65 && max > 0.85,
        "equal jitter did not spread: {min}..{max}"
    );
}

#[tokio::test(start_paused = true)]
async fn decorrelated_gaps_lie_between_initial_and_three_times_the_previous_gap() {
    // AWS's decorrelated jitter: each wait U[initial, 3 × previous wait),
    // capped; the first previous wait is `initial`. The multiplier (10 here)
    // is not used: a per-retry schedule would wait 5, 50, 500 ms.
    let initial = Duration::from_millis(5);
    let cap = Duration::from_millis(60);
    let policy = RetryPolicy::builder()
        .max_attempts(8)
        .max_attempts_cap(8)
        .initial_backoff(initial)
        .max_backoff(cap)
        .backoff_multiplier(10.0)
        .jitter(Jitter::Decorrelated)
        .build()
        .unwrap();
    let mut above_per_retry_band = false;
    for _ in 0..40 {
        let (inner, arrivals) = failing_service(Code::Aborted);
        let mut svc = RetryLayer::new(policy.clone()).layer(inner);
        svc.ready().await.unwrap().call(request()).await.unwrap();
        let arrivals = arrivals.lock().unwrap().clone();
        assert_eq!(arrivals.len(), 8);
        let mut previous = initial;
        for gap in gaps(&arrivals) {
            let top = (previous * 3).min(cap);
            assert!(
                gap >= initial && gap <= top + TIMER_SLACK,
                "gap {gap:?} outside [{initial:?}, {top:?}] after {previous:?}"
            );
            // A gap that a per-retry schedule from `initial` (×1..3) could
            // not reach on the first retry shows the wait grows from the
            // previous one.
            above_per_retry_band |= gap > initial * 3 + TIMER_SLACK;
            // The timer ends a wait up to 1 ms late; the next draw used the
            // wait as drawn, which lies within that slack below the gap.
            previous = gap;
        }
    }
    assert!(
        above_per_retry_band,
        "decorrelated waits never grew past 3 × initial"
    );
}
