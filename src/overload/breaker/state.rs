//! The breaker's state machine, shared by a layer's services: admission,
//! outcomes in a sliding window, and the transitions between closed, open
//! and half-open.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use super::config::BreakerConfig;

/// The number of buckets in the sliding window; each covers `window / 10`.
const BUCKETS: usize = 10;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through and their outcomes are counted.
    Closed,
    /// Calls fail at once with UNAVAILABLE.
    Open,
    /// A limited number of trial calls go through; the others fail at once.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half-open"`, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    fn to_bits(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_bits(bits: u64) -> BreakerState {
        match bits & 0b11 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call's admission: which state it was admitted in, so that its outcome
/// counts only toward that state.
pub(super) struct Permit {
    pub(super) shared: Arc<Shared>,
    generation: u64,
    /// A half-open trial call rather than an ordinary one.
    probe: bool,
    settled: bool,
}

impl Permit {
    pub(super) fn settle(mut self, failed: bool) {
        self.settled = true;
        self.shared
            .record(self.generation, self.probe, Some(failed));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // A dropped call counts as neither; only a trial's place is returned.
        if !self.settled && self.probe {
            self.shared.record(self.generation, true, None);
        }
    }
}

/// The breaker shared by a layer, its services and their clones.
pub(super) struct Shared {
    pub(super) config: BreakerConfig,
    start: Instant,
    /// The state in the low two bits and its generation above them, so the
    /// closed fast path is a single load. Written only under `core`'s lock.
    status: AtomicU64,
    /// While open: when the break ends, in nanoseconds since `start`.
    /// Written before `status`, so a reader that sees "open" sees its end.
    open_until: AtomicU64,
    core: Mutex<Core>,
}

/// The breaker's state proper; `Shared::status` mirrors `state` and
/// `generation`.
struct Core {
    state: BreakerState,
    /// Bumped on every state change; a call's outcome counts only if the
    /// generation it was admitted in is still the current one.
    generation: u64,
    /// Closed: outcomes in the sliding window.
    window: Window,
    /// Half-open: trial calls admitted and not yet ended.
    probes_in_flight: u32,
    /// Half-open: trial calls that succeeded.
    probes_passed: u32,
}

fn pack(state: BreakerState, generation: u64) -> u64 {
    (generation << 2) | state.to_bits()
}

impl Shared {
    pub(super) fn new(config: BreakerConfig) -> Shared {
        Shared {
            config,
            start: Instant::now(),
            status: AtomicU64::new(pack(BreakerState::Closed, 0)),
            open_until: AtomicU64::new(0),
            core: Mutex::new(Core {
                state: BreakerState::Closed,
                generation: 0,
                window: Window::default(),
                probes_in_flight: 0,
                probes_passed: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // Nothing panics while holding the lock; if something did, the
        // counters are still consistent enough to go on with.
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_nanos(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The state as last recorded, without noticing a break that has ended.
    pub(super) fn current(&self) -> BreakerState {
        BreakerState::from_bits(self.status.load(Ordering::Acquire))
    }

    fn break_over(&self, now: u64) -> bool {
        now >= self.open_until.load(Ordering::Acquire)
    }

    pub(super) fn state(&self) -> BreakerState {
        let state = self.current();
        if state == BreakerState::Open && self.break_over(self.now_nanos()) {
            let mut core = self.lock();
            self.end_break(&mut core, self.now_nanos());
            return core.state;
        }
        state
    }

    /// Admits a call, or refuses it with the status the caller gets.
    pub(super) fn admit(self: &Arc<Self>) -> Result<Permit, Status> {
        let status = self.status.load(Ordering::Acquire);
        if BreakerState::from_bits(status) == BreakerState::Closed {
            return Ok(self.permit(status >> 2, false));
        }
        let now = self.now_nanos();
        if BreakerState::from_bits(status) == BreakerState::Open && !self.break_over(now) {
            return Err(self.refusal_while_open(now));
        }
        let mut core = self.lock();
        self.end_break(&mut core, now);
        match core.state {
            BreakerState::Closed => Ok(self.permit(core.generation, false)),
            BreakerState::Open => Err(self.refusal_while_open(now)),
            BreakerState::HalfOpen => {
                if core.probes_in_flight + core.probes_passed < self.config.half_open_probes() {
                    core.probes_in_flight += 1;
                    Ok(self.permit(core.generation, true))
                } else {
                    Err(Status::unavailable(format!(
                        "circuit breaker open (half-open: all {} trial calls admitted); failing fast",
                        self.config.half_open_probes()
                    )))
                }
            }
        }
    }

    fn permit(self: &Arc<Self>, generation: u64, probe: bool) -> Permit {
        Permit {
            shared: self.clone(),
            generation,
            probe,
            settled: false,
        }
    }

    fn refusal_while_open(&self, now: u64) -> Status {
        let left = self.open_until.load(Ordering::Acquire).saturating_sub(now);
        Status::unavailable(format!(
            "circuit breaker open; failing fast for another {:?}",
            Duration::from_nanos(left)
        ))
    }

    /// Open → half-open, once the break has ended.
    fn end_break(&self, core: &mut Core, now: u64) {
        if core.state == BreakerState::Open && self.break_over(now) {
            self.transition(core, BreakerState::HalfOpen, now);
        }
    }

    /// Records the outcome of a call admitted in `generation`: `Some(true)`
    /// failed, `Some(false)` succeeded, `None` dropped.
    pub(super) fn record(&self, generation: u64, probe: bool, failed: Option<bool>) {
        let mut core = self.lock();
        if core.generation != generation {
            // The breaker has changed state since the call was admitted.
            return;
        }
        let now = self.now_nanos();
        if probe {
            core.probes_in_flight = core.probes_in_flight.saturating_sub(1);
            match failed {
                None => {}
                Some(true) => self.transition(&mut core, BreakerState::Open, now),
                Some(false) => {
                    core.probes_passed += 1;
                    if core.probes_passed >= self.config.half_open_probes() {
                        self.transition(&mut core, BreakerState::Closed, now);
                    }
                }
            }
        } else if let Some(failed) = failed {
            let bucket = self.bucket(now);
            core.window.record(bucket, failed);
            let (calls, failures) = core.window.totals(bucket);
            // Division, not `failures >= ratio × calls`: the quotient of two
            // small integers rounds to the same f64 as the written ratio
            // (3/10 == 0.3), where 0.3 × 10 is 3.0000000000000004.
            if calls >= u64::from(self.config.minimum_calls())
                && failures as f64 / calls as f64 >= self.config.failure_ratio()
            {
                self.transition(&mut core, BreakerState::Open, now);
            }
        }
    }

    /// The window bucket that `now` falls in.
    fn bucket(&self, now: u64) -> u64 {
        let number = u128::from(now) * BUCKETS as u128 / self.config.window().as_nanos();
        u64::try_from(number).unwrap_or(u64::MAX)
    }

    fn transition(&self, core: &mut Core, to: BreakerState, now: u64) {
        let from = core.state;
        core.state = to;
        core.generation += 1;
        core.window = Window::default();
        core.probes_in_flight = 0;
        core.probes_passed = 0;
        if to == BreakerState::Open {
            let pause = u64::try_from(self.config.break_duration().as_nanos()).unwrap_or(u64::MAX);
            self.open_until
                .store(now.saturating_add(pause), Ordering::Release);
        }
        self.status
            .store(pack(to, core.generation), Ordering::Release);
        tracing::debug!(
            from = from.as_str(),
            to = to.as_str(),
            "circuit breaker state changed"
        );
    }
}

/// Outcomes of the last `window`, in [`BUCKETS`] buckets of `window / 10`.
#[derive(Default)]
struct Window {
    buckets: [Bucket; BUCKETS],
}

/// The outcomes of one bucket; `number` says which one (since the breaker
/// was created), so a bucket from an earlier pass of the ring is ignored.
#[derive(Default, Clone, Copy)]
struct Bucket {
    number: u64,
    successes: u32,
    failures: u32,
}

impl Window {
    pub(super) fn record(&mut self, number: u64, failed: bool) {
        let bucket = &mut self.buckets[(number % BUCKETS as u64) as usize];
        if bucket.number != number {
            *bucket = Bucket {
                number,
                ..Bucket::default()
            };
        }
        let count = if failed {
            &mut bucket.failures
        } else {
            &mut bucket.successes
        };
        *count = count.saturating_add(1);
    }

    /// (calls, failures) in the window ending with bucket `now`.
    fn totals(&self, now: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|b| b.number <= now && now - b.number < BUCKETS as u64)
            .fold((0, 0), |(calls, failures), b| {
                (
                    calls + u64::from(b.successes) + u64::from(b.failures),
                    failures + u64::from(b.failures),
                )
            })
    }
}
