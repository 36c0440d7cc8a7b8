//! The storm bench's models, checked for their own arithmetic: the server
//! model's capacity and queueing, the load generator's Poisson rate, the
//! figures computed from a record, and AWS's contention race. The bench
//! (`cargo bench --bench storm`) is only as good as these.
//!
//! Everything runs under `tokio::time::pause()`, so simulated seconds cost
//! microseconds.

#[path = "../benches/storm/model.rs"]
mod model;

#[path = "../benches/storm/occ.rs"]
mod occ;

use std::time::Duration;

use model::{CallBucket, Recorder, Scenario, ServerModel};
use tokio::time::Instant;
use tonic::Code;
use tonic::body::Body;
use tower::ServiceExt;

fn request() -> http::Request<Body> {
    http::Request::new(Body::empty())
}

fn code(response: &http::Response<Body>) -> Code {
    let value = response.headers()["grpc-status"].to_str().unwrap();
    Code::from_i32(value.parse().unwrap())
}

/// A scenario for a server alone: `workers`, a queue of `queue_limit`, a
/// mean service time of `mean_ms`.
fn server(workers: usize, queue_limit: usize, mean_ms: u64) -> Scenario {
    Scenario {
        workers,
        queue_limit,
        mean_service: Duration::from_millis(mean_ms),
        bucket: Duration::from_secs(1),
        ..Scenario::at_scale(1)
    }
}

#[test]
fn poisson_arrivals_come_at_the_configured_rate_with_exponential_gaps() {
    let (rate, until) = (3500.0, Duration::from_secs(60));
    let arrivals = model::poisson_arrivals(rate, until, 1000, 42);
    // 210,000 expected; a Poisson count's sd is sqrt(210,000) ≈ 458.
    let n = arrivals.len() as f64;
    assert!((n - 210_000.0).abs() < 4.0 * 458.0, "{n} arrivals");
    assert!(arrivals.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(arrivals.iter().all(|a| a.at < until && a.client < 1000));
    // Exponential gaps: mean 1/rate, coefficient of variation 1.
    let gaps: Vec<f64> = arrivals
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    assert!((mean * rate - 1.0).abs() < 0.01, "mean gap {mean}");
    assert!(
        (var.sqrt() / mean - 1.0).abs() < 0.02,
        "cv {}",
        var.sqrt() / mean
    );
    // Counts in 100 ms windows: variance = mean (index of dispersion 1).
    let mut counts = vec![0f64; 600];
    for a in &arrivals {
        counts[(a.at.as_millis() / 100) as usize] += 1.0;
    }
    let m = counts.iter().sum::<f64>() / 600.0;
    let v = counts.iter().map(|c| (c - m).powi(2)).sum::<f64>() / 599.0;
    assert!((v / m - 1.0).abs() < 0.15, "dispersion {}", v / m);
    // Every client gets its share (each a Poisson process of 210 calls).
    let mut per_client = vec![0u32; 1000];
    for a in &arrivals {
        per_client[a.client] += 1;
    }
    assert!(per_client.iter().all(|&c| (130..=290).contains(&c)));
}

#[test]
fn arrivals_repeat_with_their_seed_and_differ_with_another() {
    let a = model::poisson_arrivals(100.0, Duration::from_secs(5), 20, 1);
    let b = model::poisson_arrivals(100.0, Duration::from_secs(5), 20, 1);
    let c = model::poisson_arrivals(100.0, Duration::from_secs(5), 20, 2);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(model::poisson_arrivals(0.0, Duration::from_secs(5), 20, 1).is_empty());
}

#[test]
fn service_times_are_exponential_whole_milliseconds_with_the_mean() {
    let mean = Duration::from_millis(20);
    let mut rng = fastrand::Rng::with_seed(3);
    let draws: Vec<Duration> = (0..200_000)
        .map(|_| model::service_time(mean, rng.f64()))
        .collect();
    assert!(draws.iter().all(|d| d.subsec_nanos() % 1_000_000 == 0));
    let avg = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / draws.len() as f64;
    assert!((avg / 0.020 - 1.0).abs() < 0.01, "mean {avg}");
    // P(S > mean) = 1/e for an exponential.
    let above = draws.iter().filter(|d| **d > mean).count() as f64 / draws.len() as f64;
    assert!(
        (above - (-1f64).exp()).abs() < 0.01,
        "P(S > mean) = {above}"
    );
}

#[test]
fn scenario_scales_clients_workers_and_queue_together() {
    let small = Scenario::at_scale(1);
    let fleet = Scenario::at_scale(50);
    assert_eq!(
        (fleet.clients, fleet.workers, fleet.queue_limit),
        (1000, 100, 2000)
    );
    assert_eq!(small.capacity(), 100.0);
    assert_eq!(fleet.capacity(), 5000.0);
    assert!((fleet.rate() - 3500.0).abs() < 1e-9);
    // Each client offers the same load at both scales.
    assert_eq!(
        small.rate() / small.clients as f64,
        fleet.rate() / fleet.clients as f64
    );
    assert_eq!(fleet.arrival_buckets(), 240);
    assert_eq!(fleet.bucket_of(Duration::from_millis(10_249)), 40);
}

#[tokio::test(start_paused = true)]
async fn a_saturated_server_finishes_workers_over_the_mean_service_time_per_second() {
    let scenario = server(4, 100_000, 20);
    let model = ServerModel::new(&scenario);
    let mut calls = Vec::new();
    for _ in 0..5000 {
        calls.push(tokio::spawn(model.clone().oneshot(request())));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let finished: u64 = model.buckets().iter().map(|b| b.finished).sum();
    // 4 / 20 ms = 200 per second; over 10 s the sum of ~2000 exponential
    // service times has an sd of about 2.2 %.
    assert!((finished as f64 / 2000.0 - 1.0).abs() < 0.07, "{finished}");
    assert_eq!(model.busy(), 4, "every worker stays busy");
    // Half the workers, half the rate.
    model.set_workers(2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before: u64 = model.buckets().iter().map(|b| b.finished).sum();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after: u64 = model.buckets().iter().map(|b| b.finished).sum();
    let rate = (after - before) as f64 / 10.0;
    assert!((rate / 100.0 - 1.0).abs() < 0.1, "{rate} per second");
    for call in calls {
        call.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_with_unavailable_at_once_and_serves_the_rest_in_order() {
    let scenario = server(1, 3, 20);
    let model = ServerModel::new(&scenario);
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..6 {
        let call = model.clone().oneshot(request());
        calls.push(tokio::spawn(async move {
            let response = call.await.unwrap();
            (i, code(&response), start.elapsed())
        }));
    }
    let mut done = Vec::new();
    for call in calls {
        done.push(call.await.unwrap());
    }
    // One in service, three queued, two refused at once.
    let refused: Vec<_> = done.iter().filter(|d| d.1 == Code::Unavailable).collect();
    assert_eq!(refused.len(), 2);
    assert!(refused.iter().all(|d| d.2 == Duration::ZERO && d.0 >= 4));
    // The others finish in the order they came (FIFO), one after another.
    let mut served: Vec<_> = done.iter().filter(|d| d.1 == Code::Ok).collect();
    served.sort_by_key(|d| d.2);
    assert_eq!(
        served.iter().map(|d| d.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let b = model.buckets()[0];
    assert_eq!((b.arrived, b.rejected, b.max_queue), (6, 2, 3));
}

#[tokio::test(start_paused = true)]
async fn the_work_of_callers_that_gave_up_is_done_by_default_and_dropped_on_request() {
    for finish_abandoned in [true, false] {
        let mut scenario = server(1, 100, 20);
        scenario.finish_abandoned = finish_abandoned;
        let model = ServerModel::new(&scenario);
        // Twenty callers give up after 1 ms; one more waits its turn.
        let mut quitters = Vec::new();
        for _ in 0..20 {
            let call = model.clone().oneshot(request());
            quitters.push(tokio::spawn(tokio::time::timeout(
                Duration::from_millis(1),
                call,
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        let start = Instant::now();
        let response = model.clone().oneshot(request()).await.unwrap();
        assert_eq!(code(&response), Code::Ok);
        let waited = start.elapsed();
        let wasted: u64 = model.buckets().iter().map(|b| b.wasted).sum();
        if finish_abandoned {
            // 20 × 20 ms of work nobody wants comes first.
            assert_eq!(wasted, 20);
            assert!(waited > Duration::from_millis(200), "{waited:?}");
        } else {
            // At most the one in service when its caller left.
            assert!(wasted <= 1, "{wasted}");
            assert!(waited < Duration::from_millis(200), "{waited:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_recorder_counts_calls_by_start_and_attempts_by_sending_time() {
    let recorder = Recorder::new(Duration::from_secs(1));
    let started = recorder.offered();
    recorder.attempt();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    recorder.attempt();
    recorder.finished(started, true);
    let other = recorder.offered();
    recorder.finished(other, false);
    let b = recorder.buckets();
    assert_eq!(
        b[0],
        CallBucket {
            offered: 1,
            attempts: 1,
            succeeded: 1,
            failed: 0,
            completed_ok: 0
        }
    );
    assert_eq!(
        b[1],
        CallBucket {
            offered: 1,
            attempts: 1,
            succeeded: 0,
            failed: 1,
            completed_ok: 1
        }
    );
}

fn bucket(offered: u64, attempts: u64, succeeded: u64) -> CallBucket {
    CallBucket {
        offered,
        attempts,
        succeeded,
        failed: offered - succeeded,
        completed_ok: succeeded,
    }
}

/// A trigger from 2 s to 4 s, arrivals to 10 s, 1 s buckets.
fn short_scenario() -> Scenario {
    Scenario {
        bucket: Duration::from_secs(1),
        trigger_start: Duration::from_secs(2),
        trigger_len: Duration::from_secs(2),
        duration: Duration::from_secs(10),
        ..Scenario::at_scale(1)
    }
}

#[test]
fn summaries_take_amplification_and_goodput_over_the_trigger() {
    let scenario = short_scenario();
    let calls = [
        bucket(10, 10, 10),
        bucket(10, 10, 9),
        bucket(10, 30, 2), // trigger
        bucket(10, 20, 0), // trigger
        bucket(10, 15, 5),
        bucket(10, 10, 10),
        bucket(10, 10, 9), // 90 %: not yet recovered
        bucket(10, 10, 10),
        bucket(10, 10, 10),
        bucket(10, 10, 10),
    ];
    let s = model::summarize(&scenario, &calls);
    assert_eq!(s.mean_amplification, 2.5);
    assert_eq!(s.peak_amplification, 3.0);
    assert_eq!(s.goodput, 0.1);
    assert_eq!(s.baseline_success, 0.95);
    assert_eq!(s.after_amplification, 65.0 / 60.0);
    // From 7 s on the calls succeed >= 95 % for 3 s: 3 s after the trigger.
    assert_eq!(s.recovery, Some(Duration::from_secs(3)));
}

#[test]
fn recovery_needs_success_held_for_three_seconds_before_the_last_arrival() {
    let scenario = short_scenario();
    let mut calls = vec![bucket(10, 10, 10); 10];
    assert_eq!(
        model::summarize(&scenario, &calls).recovery,
        Some(Duration::ZERO)
    );
    // A dip after the trigger delays recovery past it.
    calls[5] = bucket(10, 40, 9);
    assert_eq!(
        model::summarize(&scenario, &calls).recovery,
        Some(Duration::from_secs(2))
    );
    // Success that starts too late to hold 3 s is no recovery.
    calls[7] = bucket(10, 40, 0);
    assert_eq!(model::summarize(&scenario, &calls).recovery, None);
    // A late dip after 3 s of success does not undo it.
    let mut calls = vec![bucket(10, 10, 10); 10];
    calls[9] = bucket(10, 10, 5);
    assert_eq!(
        model::summarize(&scenario, &calls).recovery,
        Some(Duration::ZERO)
    );
    // A bucket nobody offered a call in does not count against.
    calls[4] = bucket(0, 0, 0);
    calls[9] = bucket(10, 10, 10);
    assert_eq!(
        model::summarize(&scenario, &calls).recovery,
        Some(Duration::ZERO)
    );
    // Never recovering: every bucket after the trigger fails.
    let mut calls = vec![bucket(10, 10, 10); 10];
    for b in &mut calls[4..] {
        *b = bucket(10, 40, 1);
    }
    assert_eq!(model::summarize(&scenario, &calls).recovery, None);
}

#[test]
fn the_aws_message_delay_is_ten_milliseconds_give_or_take_two() {
    let mut rng = fastrand::Rng::with_seed(9);
    let draws: Vec<f64> = (0..100_000)
        .map(|_| occ::to_model_ms(occ::Delay::AWS.draw(&mut rng)))
        .collect();
    let mean = draws.iter().sum::<f64>() / draws.len() as f64;
    let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64).sqrt();
    // |N(10, 2)|: the fold at 0 is 5 sd away and changes nothing visible.
    assert!(
        (mean - 10.0).abs() < 0.05 && (sd - 2.0).abs() < 0.05,
        "{mean} ± {sd}"
    );
    assert!(draws.iter().all(|d| *d >= 0.0));
    assert_eq!(occ::to_model_ms(occ::Delay::Fixed(7.0).draw(&mut rng)), 7.0);
}

#[tokio::test(start_paused = true)]
async fn a_lone_client_writes_once_in_four_message_delays() {
    let policy = occ::Kind::A6.policy();
    let race = occ::race(1, &policy, occ::Delay::Fixed(10.0), 1).await;
    assert_eq!((race.calls, race.written, race.failed), (1, 1, 0));
    assert!(
        (race.completion_ms - 40.0).abs() < 0.01,
        "{}",
        race.completion_ms
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_write_is_aborted_and_the_retry_starts_with_a_fresh_read() {
    // Both read version 0 at 10 ms and write at 30 ms: one wins, the other
    // is ABORTED (reply at 40 ms), retries at once, reads version 1 at
    // 50 ms and writes at 70 ms; its reply comes at 80 ms.
    let policy = occ::Kind::NoBackoff.policy();
    let race = occ::race(2, &policy, occ::Delay::Fixed(10.0), 1).await;
    assert_eq!((race.calls, race.written, race.failed), (3, 2, 0));
    // "No backoff" is the shortest wait tokio times: 1 µs of model time.
    assert!(
        (race.completion_ms - 80.0).abs() < 0.01,
        "{}",
        race.completion_ms
    );
}

#[tokio::test(start_paused = true)]
async fn every_client_writes_exactly_once_under_every_backoff() {
    for kind in occ::Kind::ALL {
        let race = occ::race(10, &kind.policy(), occ::Delay::AWS, 3).await;
        assert_eq!(race.written, 10, "{}", kind.name());
        assert_eq!(race.failed, 0, "{}", kind.name());
        assert!(race.calls >= 10, "{}", kind.name());
        assert!(race.completion_ms > 30.0, "{}", kind.name());
    }
}

#[test]
fn the_studied_policies_follow_the_aws_schedule_in_scaled_time() {
    use tonic_retry::Jitter;
    let ms = occ::model_ms;
    for kind in occ::Kind::ALL {
        let p = kind.policy();
        assert_eq!(p.max_attempts(), u32::MAX, "no client gives up");
        let (initial, max, jitter) = match kind {
            occ::Kind::NoBackoff => (
                Duration::from_nanos(1),
                Duration::from_nanos(1),
                Jitter::None,
            ),
            occ::Kind::Exponential => (ms(10.0), ms(2000.0), Jitter::None),
            occ::Kind::A6 => (ms(10.0), ms(2000.0), Jitter::Proportional),
            occ::Kind::Equal => (ms(10.0), ms(2000.0), Jitter::Equal),
            occ::Kind::Full => (ms(10.0), ms(2000.0), Jitter::Full),
            occ::Kind::Decorrelated => (ms(5.0), ms(2000.0), Jitter::Decorrelated),
        };
        assert_eq!(
            (p.initial_backoff(), p.max_backoff(), p.jitter()),
            (initial, max, jitter),
            "{}",
            kind.name()
        );
    }
    assert_eq!(occ::to_model_ms(ms(10.0)), 10.0);
}
