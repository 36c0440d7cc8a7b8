//! [`Capacity`]: a server that can do only so much work at once (workers,
//! a FIFO queue, UNAVAILABLE when the queue is full). The rule is described
//! on the type, which is public; this module is not.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::Status;

use super::record::lock;

/// How long one attempt holds a worker.
///
/// Every draw is rounded to whole milliseconds, the resolution of tokio's
/// timer, so that the work done is the work drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceTime {
    /// Always this long.
    Fixed(Duration),
    /// Exponentially distributed with this mean (an M/M/c server).
    Exponential {
        /// The mean service time.
        mean: Duration,
    },
}

impl ServiceTime {
    /// One service time, from `random` uniform in `[0, 1)`.
    pub fn draw(self, random: f64) -> Duration {
        let secs = match self {
            ServiceTime::Fixed(d) => d.as_secs_f64(),
            ServiceTime::Exponential { mean } => {
                // Inverse transform: -mean × ln(1 - u) for u in [0, 1).
                let u = if random.is_nan() {
                    0.0
                } else {
                    random.clamp(0.0, 1.0 - f64::EPSILON)
                };
                -mean.as_secs_f64() * (1.0 - u).ln()
            }
        };
        let ms = (secs * 1e3).round();
        // A draw far beyond any test's length is cut to an hour.
        Duration::from_millis(if ms.is_finite() {
            ms.min(3.6e6) as u64
        } else {
            0
        })
    }
}

/// The settings of a [`Capacity`].
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityConfig {
    /// How many attempts are served at once (at first; see
    /// [`Capacity::set_workers`]).
    pub workers: usize,
    /// How many attempts may wait for a worker; one more is answered
    /// UNAVAILABLE at once.
    pub queue_limit: usize,
    /// How long each attempt holds its worker.
    pub service_time: ServiceTime,
    /// Do the work of an attempt whose caller has gone (the default, `true`:
    /// a handler that does not watch for cancellation), or skip it while
    /// queued and stop it while in service (`false`).
    pub finish_abandoned: bool,
    /// Seed of the service-time draws, so that runs repeat.
    pub seed: u64,
}

impl Default for CapacityConfig {
    /// One worker, no queue, 10 ms of fixed service time, abandoned work
    /// finished, seed 0.
    fn default() -> Self {
        CapacityConfig {
            workers: 1,
            queue_limit: 0,
            service_time: ServiceTime::Fixed(Duration::from_millis(10)),
            finish_abandoned: true,
            seed: 0,
        }
    }
}

/// What a [`Capacity`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapacityStats {
    /// Attempts that asked for work.
    pub arrived: u64,
    /// Attempts answered UNAVAILABLE at once because the queue was full.
    pub rejected: u64,
    /// Attempts that got a worker.
    pub started: u64,
    /// Attempts whose work ended (finished, or stopped because the caller
    /// had gone, with `finish_abandoned: false`).
    pub finished: u64,
    /// Of those, work finished or stopped after its caller had gone: the
    /// wasted work.
    pub abandoned: u64,
    /// Queued attempts skipped without work because their caller had gone
    /// (only with `finish_abandoned: false`).
    pub skipped: u64,
    /// The total time workers were busy, on their schedule: the sum of the
    /// service times of finished work (and of the part done of work
    /// stopped early).
    pub busy: Duration,
    /// The total time by which workers woke after their work's scheduled
    /// end (timer rounding and scheduling delays; zero under a paused
    /// clock).
    pub late: Duration,
}

/// Workers and a FIFO queue in front of them. Clones share the same
/// workers and queue.
///
/// Retry storms are a property of a server under load, not of one call: a
/// server with a fixed number of workers and a queue in front of them
/// answers slowly once the queue fills, callers time out and retry, and
/// the work done for a caller that has already given up is wasted while the
/// retry waits in the queue behind it. This models exactly that, so that
/// overload protection can be tested against a real server on loopback:
///
/// * `workers` attempts are served at once; each holds its worker for one
///   service time (a [`ServiceTime`] draw), then answers;
/// * the others wait in one FIFO queue of at most `queue_limit` attempts;
/// * an attempt that finds the queue full is answered UNAVAILABLE at once
///   (a load-shedding server), without waiting for a worker;
/// * by default the work is done even when its caller has gone (the client
///   timed out or reset the stream): the server cannot tell, as with a
///   handler that does not watch for cancellation. `finish_abandoned:
///   false` models one that does: queued work whose caller has gone is
///   skipped, and work in service stops.
///
/// The number of workers can change while the server runs
/// ([`Capacity::set_workers`]), e.g. to halve the capacity for a few seconds
/// as a failing replica would. Work runs in tasks of its own on tokio's
/// clock, so `tokio::time::pause()` drives it too.
///
/// Workers keep to their schedule: a worker whose timer fires late (tokio
/// rounds every sleep up to the next millisecond, and a busy machine wakes
/// it later still) starts its next queued attempt at the moment the last
/// one should have ended, not when it woke. Otherwise every service time
/// would be a millisecond or two longer, and a server of 20 ms service times
/// would lose 5–10 % of its capacity to the timer (measured on loopback:
/// 21.4 ms instead of 20). Lateness still delays each answer; it no longer
/// accumulates. [`CapacityStats::late`] says how late the workers woke.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::testing::{Capacity, CapacityConfig, ServiceTime};
///
/// # async fn f() {
/// let capacity = Capacity::new(CapacityConfig {
///     workers: 2,
///     queue_limit: 40,
///     service_time: ServiceTime::Exponential { mean: Duration::from_millis(20) },
///     ..CapacityConfig::default()
/// });
/// capacity.work().await.unwrap(); // waits for a worker, then ~20 ms
/// capacity.set_workers(1);        // half the capacity from now on
/// # }
/// ```
#[derive(Clone)]
pub struct Capacity {
    shared: Arc<Shared>,
}

struct Shared {
    config: CapacityConfig,
    state: Mutex<State>,
}

struct State {
    workers: usize,
    busy: usize,
    queue: VecDeque<Job>,
    rng: fastrand::Rng,
    stats: CapacityStats,
}

/// A queued attempt: dropping `done`'s receiver means its caller has gone.
struct Job {
    done: oneshot::Sender<()>,
    /// When it joined the queue: it cannot start earlier.
    queued: Instant,
}

impl Capacity {
    /// A capacity model with these settings, all workers idle.
    pub fn new(config: CapacityConfig) -> Capacity {
        let state = State {
            workers: config.workers,
            busy: 0,
            queue: VecDeque::new(),
            rng: fastrand::Rng::with_seed(config.seed),
            stats: CapacityStats::default(),
        };
        Capacity {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(state),
            }),
        }
    }

    /// The settings it was made with.
    pub fn config(&self) -> &CapacityConfig {
        &self.shared.config
    }

    /// Takes a place in the queue, waits for a worker, and holds it for one
    /// service time. Fails at once with UNAVAILABLE when the queue is full.
    ///
    /// The work runs in a task of its own (a `tokio::spawn` on the current
    /// runtime): dropping this future does not stop it, unless the config
    /// says `finish_abandoned: false`.
    pub async fn work(&self) -> Result<(), Status> {
        let receiver = {
            let mut state = lock(&self.shared.state);
            state.stats.arrived += 1;
            if state.queue.len() >= self.shared.config.queue_limit && state.busy >= state.workers {
                state.stats.rejected += 1;
                return Err(Status::unavailable(format!(
                    "test server overloaded: {} waiting, {} in service",
                    state.queue.len(),
                    state.busy
                )));
            }
            let (done, receiver) = oneshot::channel();
            let now = Instant::now();
            state.queue.push_back(Job { done, queued: now });
            dispatch(&self.shared, &mut state, now);
            receiver
        };
        // An error means the work task was dropped with its runtime.
        receiver
            .await
            .map_err(|_| Status::unavailable("test server shut down during the work"))
    }

    /// Changes the number of workers from now on. Work in service goes on;
    /// fewer workers take new work only once enough of it has ended.
    pub fn set_workers(&self, workers: usize) {
        let mut state = lock(&self.shared.state);
        state.workers = workers;
        dispatch(&self.shared, &mut state, Instant::now());
    }

    /// The current number of workers.
    pub fn workers(&self) -> usize {
        lock(&self.shared.state).workers
    }

    /// Attempts waiting for a worker now.
    pub fn queue_len(&self) -> usize {
        lock(&self.shared.state).queue.len()
    }

    /// Attempts being served now.
    pub fn in_service(&self) -> usize {
        lock(&self.shared.state).busy
    }

    /// The counts so far.
    pub fn stats(&self) -> CapacityStats {
        lock(&self.shared.state).stats
    }
}

impl fmt::Debug for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.shared.state);
        f.debug_struct("Capacity")
            .field("config", &self.shared.config)
            .field("workers", &state.workers)
            .field("busy", &state.busy)
            .field("queued", &state.queue.len())
            .field("stats", &state.stats)
            .finish()
    }
}

/// Starts queued work on every idle worker, oldest first. `free_at` is when
/// the workers became free: now, or the scheduled end of the work that
/// freed one (which a late timer may have passed).
fn dispatch(shared: &Arc<Shared>, state: &mut State, free_at: Instant) {
    while state.busy < state.workers {
        let Some(job) = state.queue.pop_front() else {
            return;
        };
        if !shared.config.finish_abandoned && job.done.is_closed() {
            state.stats.skipped += 1;
            continue;
        }
        state.busy += 1;
        state.stats.started += 1;
        let time = shared.config.service_time.draw(state.rng.f64());
        let start = free_at.max(job.queued);
        tokio::spawn(serve(shared.clone(), job, start, time));
    }
}

/// One attempt's work on its worker, from `start` for `time` (cut short
/// when its caller has gone, unless abandoned work is finished), then the
/// next queued attempt, from the scheduled end.
async fn serve(shared: Arc<Shared>, mut job: Job, start: Instant, time: Duration) {
    let end = start + time;
    let stopped = if shared.config.finish_abandoned {
        tokio::time::sleep_until(end).await;
        false
    } else {
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(end) => false,
            () = job.done.closed() => true,
        }
    };
    let now = Instant::now();
    // Stopped work frees its worker now; finished work at its scheduled end.
    let free_at = if stopped { now } else { end };
    let mut state = lock(&shared.state);
    state.busy -= 1;
    state.stats.finished += 1;
    state.stats.busy += free_at.saturating_duration_since(start);
    state.stats.late += now.saturating_duration_since(free_at);
    if job.done.is_closed() {
        state.stats.abandoned += 1;
    }
    dispatch(&shared, &mut state, free_at);
    drop(state);
    let _ = job.done.send(());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(workers: usize, queue_limit: usize, ms: u64) -> Capacity {
        Capacity::new(CapacityConfig {
            workers,
            queue_limit,
            service_time: ServiceTime::Fixed(Duration::from_millis(ms)),
            ..CapacityConfig::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn workers_plus_queue_are_admitted_and_the_rest_rejected_at_once() {
        let capacity = fixed(2, 3, 100);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = capacity.clone();
            tasks.push(tokio::spawn(async move {
                let result = c.work().await;
                (result.map_err(|s| s.code()), start.elapsed())
            }));
            tokio::task::yield_now().await;
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let ms = |r: &(Result<(), tonic::Code>, Duration)| r.1.as_millis();
        // 2 served at once, 3 queued behind them (FIFO: 2 then 1 more round).
        let done: Vec<u128> = results.iter().filter(|r| r.0.is_ok()).map(ms).collect();
        assert_eq!(done, vec![100, 100, 200, 200, 300]);
        let rejected: Vec<u128> = results.iter().filter(|r| r.0.is_err()).map(ms).collect();
        assert_eq!(
            rejected,
            vec![0, 0, 0],
            "the queue full: UNAVAILABLE at once"
        );
        assert!(
            results
                .iter()
                .filter_map(|r| r.0.err())
                .all(|c| c == tonic::Code::Unavailable)
        );
        let stats = capacity.stats();
        assert_eq!((stats.arrived, stats.rejected, stats.finished), (8, 3, 5));
        assert_eq!(stats.busy, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn saturated_workers_finish_workers_over_service_time_per_second() {
        let capacity = fixed(4, 1000, 20);
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let c = capacity.clone();
            tasks.push(tokio::spawn(async move { c.work().await }));
        }
        tokio::time::sleep(Duration::from_millis(1010)).await;
        // 4 workers / 20 ms = 200 per second.
        assert_eq!(capacity.stats().finished, 200);
        capacity.set_workers(2);
        // The 4 attempts in service finish (at 1020 ms); then only 2 start.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = capacity.stats().finished;
        assert_eq!(before, 204);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            capacity.stats().finished - before,
            100,
            "half the workers, half the rate"
        );
        assert_eq!(capacity.in_service(), 2);
        for t in tasks {
            t.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_work_is_done_by_default_and_skipped_when_configured() {
        for finish_abandoned in [true, false] {
            let capacity = Capacity::new(CapacityConfig {
                workers: 1,
                queue_limit: 10,
                service_time: ServiceTime::Fixed(Duration::from_millis(100)),
                finish_abandoned,
                ..CapacityConfig::default()
            });
            // Five callers give up after 50 ms; a sixth waits for its turn.
            for _ in 0..5 {
                let c = capacity.clone();
                let _ = tokio::time::timeout(Duration::from_millis(50), c.work()).await;
            }
            let start = Instant::now();
            capacity.work().await.unwrap();
            let stats = capacity.stats();
            if finish_abandoned {
                // We arrive at 250 ms. The first caller's job ran 0–100 ms
                // (it left at 50), the second's 100–200, the third's
                // 200–300; the fourth's and fifth's are still queued, so
                // ours starts at 500 ms: 350 ms of waiting for work no
                // caller wants.
                assert_eq!(start.elapsed(), Duration::from_millis(350));
                assert_eq!((stats.abandoned, stats.skipped), (5, 0));
            } else {
                // Each caller is gone before its turn: its work stops.
                assert_eq!(start.elapsed(), Duration::from_millis(100));
                assert_eq!(stats.skipped + stats.abandoned, 5);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_wakes_late_keeps_to_its_schedule() {
        let capacity = fixed(1, 100, 5);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let c = capacity.clone();
            tasks.push(tokio::spawn(async move { c.work().await }));
        }
        tokio::task::yield_now().await;
        // The clock jumps 12 ms at once: the first job (due at 5 ms) wakes
        // 7 ms late, the second (5–10 ms) is already due, the third runs
        // 10–15 ms as scheduled.
        tokio::time::advance(Duration::from_millis(12)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(capacity.stats().finished, 2);
        tokio::time::sleep(Duration::from_millis(39)).await;
        // Ten jobs of 5 ms done by 51 ms (the last one ended at 50 ms): the
        // lateness did not cost capacity. Without the schedule the second
        // would have started at 12 ms, and the tenth ended at 57 ms.
        let stats = capacity.stats();
        assert_eq!(stats.finished, 10);
        assert_eq!(stats.busy, Duration::from_millis(50));
        assert_eq!(stats.late, Duration::from_millis(7 + 2));
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
    }

    #[test]
    fn exponential_draws_have_the_configured_mean_in_whole_milliseconds() {
        let time = ServiceTime::Exponential {
            mean: Duration::from_millis(20),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let draws: Vec<Duration> = (0..100_000).map(|_| time.draw(rng.f64())).collect();
        assert!(draws.iter().all(|d| d.subsec_nanos() % 1_000_000 == 0));
        let mean = draws.iter().map(Duration::as_secs_f64).sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.020).abs() < 0.0004, "mean {mean}");
        assert_eq!(time.draw(f64::NAN), Duration::ZERO);
        assert_eq!(time.draw(1.0), Duration::from_millis(721));
    }
}
