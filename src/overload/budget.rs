//! [`RetryBudget`]: retries as a share of recent traffic, after Finagle's
//! retry budget and the Google SRE book's "retry budget".
//!
//! A per-call attempt limit does not stop a retry storm: when a backend
//! fails, every call still makes all of its attempts, multiplying the load
//! on the backend exactly when it can least take it. A budget caps retries
//! across all calls instead. Within a sliding window of `ttl`:
//!
//! ```text
//! allowed retries = min_retries_per_sec × ttl + retry_ratio × requests − retries
//! ```
//!
//! The floor (`min_retries_per_sec × ttl`) lets a client with little traffic
//! still retry; the ratio bounds the extra load that retries add to a busy
//! one (0.2: at most 20 % more requests).
//!
//! # Concurrency
//!
//! [`deposit`](RetryBudget::deposit) runs on every call, so the budget takes
//! no lock. Counts live in a ring of [`SLOTS`] time slots of `ttl / SLOTS`
//! each; a slot word packs the slot's generation (which pass of the ring it
//! belongs to) with its count, so that reusing a slot for a new generation
//! and counting into it are one compare-and-swap and no update is lost.
//! [`try_withdraw`](RetryBudget::try_withdraw) counts the retry first and
//! takes it back if that overdrew the budget, so concurrent withdrawals never
//! spend more than the budget allows (some may be refused that a strictly
//! sequential order would have allowed, while others are being taken back).
//!
//! Approximations, all at slot boundaries:
//!
//! * The window moves a slot at a time, so a request counts for between
//!   `ttl − ttl / SLOTS` and `ttl` (exactly `ttl` for one made at the start of
//!   a slot).
//! * A withdrawal reads the slots one after the other, not as one snapshot;
//!   a slot that expires or is reused meanwhile may or may not be counted.
//! * A thread that reads the clock and is then suspended for about a whole
//!   `ttl` before counting may reset a slot that has already been reused,
//!   dropping that slot's counts.
//! * A slot's generation is stored modulo 2³², so a slot left untouched for
//!   exactly a multiple of 2³² passes of the ring (136 years at the default
//!   ttl) would be mistaken for a live one, for one slot's duration.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The number of time slots in a budget's sliding window.
pub const SLOTS: usize = 10;

/// The longest accepted `ttl`, after Finagle's limit.
pub const MAX_BUDGET_TTL: Duration = Duration::from_secs(60);

/// The largest accepted `retry_ratio`, after Finagle's limit.
pub const MAX_RETRY_RATIO: f64 = 1000.0;

/// Budget arithmetic is done in millionths of a retry, so that a ratio such
/// as 0.2 is exact (in `f64`, 0.29 × 100 is 28.999…).
const MICROS: u128 = 1_000_000;

/// An invalid [`RetryBudget`] setting. Each variant names the setting.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BudgetError {
    /// `ttl` must be greater than zero.
    TtlZero,
    /// `ttl` must be at most [`MAX_BUDGET_TTL`] (60 s).
    TtlTooLong(Duration),
    /// `retry_ratio` must be a finite number in `[0, 1000]`.
    RetryRatioInvalid(f64),
}

impl BudgetError {
    /// The name of the setting that was rejected.
    pub fn setting(&self) -> &'static str {
        match self {
            BudgetError::TtlZero | BudgetError::TtlTooLong(_) => "ttl",
            BudgetError::RetryRatioInvalid(_) => "retry_ratio",
        }
    }
}

impl fmt::Display for BudgetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetError::TtlZero => write!(f, "ttl: must be greater than zero"),
            BudgetError::TtlTooLong(ttl) => {
                write!(f, "ttl: must be at most {MAX_BUDGET_TTL:?} (got {ttl:?})")
            }
            BudgetError::RetryRatioInvalid(r) => write!(
                f,
                "retry_ratio: must be a finite number in [0, {MAX_RETRY_RATIO}] (got {r})"
            ),
        }
    }
}

impl std::error::Error for BudgetError {}

/// A retry budget shared by every call through a layer: retries may be at
/// most `retry_ratio` × the requests of the last `ttl`, plus a floor of
/// `min_retries_per_sec`.
///
/// Call [`deposit`](Self::deposit) once per call (on its first attempt) and
/// [`try_withdraw`](Self::try_withdraw) before each retry or hedge; a refusal
/// means the call must not make that attempt. See the [module
/// documentation](self) for the exact rule and its approximations.
///
/// Cloning is cheap: clones share one budget (the counters sit behind an
/// `Arc`), so clone it into every service that should draw on it.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::RetryBudget;
///
/// // Floor of 1 retry/s over 10 s, plus 10 % of requests.
/// let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.1)?;
/// for _ in 0..100 {
///     budget.deposit();
/// }
/// assert_eq!(budget.remaining(), 10 + 10);
/// assert!(budget.try_withdraw());
/// # Ok::<(), tonic_retry::BudgetError>(())
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    ttl: Duration,
    min_retries_per_sec: u32,
    retry_ratio: f64,
    /// `min_retries_per_sec × ttl`, in millionths of a retry.
    reserve_micros: u128,
    /// What one request adds, in millionths of a retry.
    ratio_micros: u128,
    /// Slot `n` covers `[start + n·ttl/SLOTS, start + (n+1)·ttl/SLOTS)`.
    start: Instant,
    deposits: [Counter; SLOTS],
    withdrawals: [Counter; SLOTS],
}

impl RetryBudget {
    /// A budget allowing, within any `ttl`, `min_retries_per_sec × ttl`
    /// retries plus `retry_ratio` retries per request.
    ///
    /// `ttl` must be in `(0, 60 s]`; `retry_ratio` must be finite and in
    /// `[0, 1000]` (it is used to six decimal places). `min_retries_per_sec`
    /// may be 0, leaving only the ratio.
    pub fn new(
        ttl: Duration,
        min_retries_per_sec: u32,
        retry_ratio: f64,
    ) -> Result<RetryBudget, BudgetError> {
        if ttl.is_zero() {
            return Err(BudgetError::TtlZero);
        }
        if ttl > MAX_BUDGET_TTL {
            return Err(BudgetError::TtlTooLong(ttl));
        }
        if !(retry_ratio.is_finite() && (0.0..=MAX_RETRY_RATIO).contains(&retry_ratio)) {
            return Err(BudgetError::RetryRatioInvalid(retry_ratio));
        }
        // Whole nanoseconds × retries/s = 1e-9 retries; ÷1000 gives micros.
        // Exact for every ttl that is a whole number of microseconds.
        let reserve_micros = u128::from(min_retries_per_sec) * ttl.as_nanos() / 1000;
        // In range: retry_ratio ≤ 1000, so this is at most 1e9.
        let ratio_micros = (retry_ratio * MICROS as f64).round() as u128;
        Ok(RetryBudget {
            inner: Arc::new(Inner {
                ttl,
                min_retries_per_sec,
                retry_ratio,
                reserve_micros,
                ratio_micros,
                start: Instant::now(),
                deposits: Default::default(),
                withdrawals: Default::default(),
            }),
        })
    }

    /// The sliding window over which requests and retries are counted.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The retries per second allowed regardless of traffic.
    pub fn min_retries_per_sec(&self) -> u32 {
        self.inner.min_retries_per_sec
    }

    /// The retries allowed per request, on top of the floor.
    pub fn retry_ratio(&self) -> f64 {
        self.inner.retry_ratio
    }

    /// Records one request. Call it once per call, on its first attempt
    /// only: retries and hedges are not deposits.
    pub fn deposit(&self) {
        let slot = self.inner.slot_now();
        // A full slot (2³² requests in ttl/10) stops counting, which only
        // makes the budget stricter.
        let _ = self.inner.deposits[slot.index].increment(slot.generation);
    }

    /// Takes one retry from the budget. `false` means the budget is spent:
    /// do not retry (or hedge). A `true` is final; a retry that is then not
    /// made is not given back.
    pub fn try_withdraw(&self) -> bool {
        let inner = &*self.inner;
        let slot = inner.slot_now();
        let counter = &inner.withdrawals[slot.index];
        let Some(in_slot) = counter.increment(slot.generation) else {
            return false;
        };
        // Count first, check after: of concurrent withdrawals, the last one
        // to count sees all the others, so together they cannot overdraw.
        let withdrawn = u128::from(in_slot) + inner.sum(&inner.withdrawals, slot, false);
        let deposited = inner.sum(&inner.deposits, slot, true);
        if withdrawn * MICROS <= inner.allowed_micros(deposited) {
            true
        } else {
            counter.decrement(slot.generation);
            false
        }
    }

    /// How many retries the budget would allow now, if nothing else
    /// happened meanwhile. For metrics and tests.
    pub fn remaining(&self) -> u64 {
        let inner = &*self.inner;
        let slot = inner.slot_now();
        let deposited = inner.sum(&inner.deposits, slot, true);
        let withdrawn = inner.sum(&inner.withdrawals, slot, true);
        let allowed = inner.allowed_micros(deposited) / MICROS;
        u64::try_from(allowed.saturating_sub(withdrawn)).unwrap_or(u64::MAX)
    }
}

impl Default for RetryBudget {
    /// ttl 10 s, a floor of 10 retries/s, and retries up to 20 % of requests.
    fn default() -> Self {
        RetryBudget::new(Duration::from_secs(10), 10, 0.2).expect("the default settings are valid")
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ttl", &self.inner.ttl)
            .field("min_retries_per_sec", &self.inner.min_retries_per_sec)
            .field("retry_ratio", &self.inner.retry_ratio)
            .field("remaining", &self.remaining())
            .finish()
    }
}

/// Where "now" falls in the ring.
#[derive(Clone, Copy)]
struct Slot {
    /// The slot's number since the budget was created.
    number: u64,
    /// `number % SLOTS`: where it sits in the ring.
    index: usize,
    /// `number / SLOTS`, truncated: which pass of the ring it belongs to.
    generation: u32,
}

impl Slot {
    fn new(number: u64) -> Slot {
        Slot {
            number,
            index: (number % SLOTS as u64) as usize,
            generation: (number / SLOTS as u64) as u32,
        }
    }
}

impl Inner {
    fn slot_now(&self) -> Slot {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        let number = elapsed.as_nanos() * SLOTS as u128 / self.ttl.as_nanos();
        Slot::new(u64::try_from(number).unwrap_or(u64::MAX))
    }

    /// The counts of the window ending with `now`'s slot, which is included
    /// only if `include_now`.
    fn sum(&self, counters: &[Counter; SLOTS], now: Slot, include_now: bool) -> u128 {
        let skip = usize::from(!include_now);
        (0..now.number.min(SLOTS as u64 - 1) + 1)
            .skip(skip)
            .map(|age| {
                let slot = Slot::new(now.number - age);
                u128::from(counters[slot.index].count(slot.generation))
            })
            .sum()
    }

    fn allowed_micros(&self, deposited: u128) -> u128 {
        self.reserve_micros + self.ratio_micros * deposited
    }
}

/// One slot's count, packed with the generation it belongs to: the
/// generation in the high 32 bits, the count in the low 32. A word whose
/// generation is not the one asked for holds a count from an earlier pass of
/// the ring, which reads as zero and is replaced on the next increment.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn pack(generation: u32, count: u32) -> u64 {
        (u64::from(generation) << 32) | u64::from(count)
    }

    fn unpack(word: u64) -> (u32, u32) {
        ((word >> 32) as u32, word as u32)
    }

    fn count(&self, generation: u32) -> u32 {
        match Self::unpack(self.0.load(Ordering::Acquire)) {
            (g, count) if g == generation => count,
            _ => 0,
        }
    }

    /// Adds one in `generation` (starting it at 1 if the slot held an older
    /// one), returning the new count, or `None` if the count is at its
    /// maximum.
    fn increment(&self, generation: u32) -> Option<u32> {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let next = match Self::unpack(word) {
                (g, count) if g == generation => count.checked_add(1)?,
                _ => 1,
            };
            match self.0.compare_exchange_weak(
                word,
                Self::pack(generation, next),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(next),
                Err(actual) => word = actual,
            }
        }
    }

    /// Takes back an increment made in `generation`. If the slot has since
    /// moved to another generation, the increment went with it.
    fn decrement(&self, generation: u32) {
        let _ = self.0.fetch_update(
            Ordering::AcqRel,
            Ordering::Relaxed,
            |word| match Self::unpack(word) {
                (g, count) if g == generation && count > 0 => {
                    Some(Self::pack(generation, count - 1))
                }
                _ => None,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn withdraw_all(budget: &RetryBudget) -> u32 {
        let mut n = 0;
        while budget.try_withdraw() {
            n += 1;
            assert!(n <= 1_000_000, "budget never ran out");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn floor_alone_allows_min_times_ttl_then_refuses() {
        let budget = RetryBudget::new(secs(10), 10, 0.0).unwrap();
        assert_eq!(budget.remaining(), 100);
        assert_eq!(withdraw_all(&budget), 100);
        assert!(!budget.try_withdraw());
        assert_eq!(budget.remaining(), 0);
        // Refusals are not counted: nothing is owed once the retries expire.
        tokio::time::advance(secs(10)).await;
        assert_eq!(budget.remaining(), 100);
        assert_eq!(withdraw_all(&budget), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_allows_its_share_of_deposits() {
        let budget = RetryBudget::new(secs(10), 0, 0.2).unwrap();
        assert!(!budget.try_withdraw(), "no requests, no floor: no retries");
        for _ in 0..4 {
            budget.deposit();
        }
        assert!(!budget.try_withdraw(), "0.8 of a retry is not a retry");
        budget.deposit();
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        for _ in 0..45 {
            budget.deposit();
        }
        // 50 requests × 0.2 = 10 retries, one already taken.
        assert_eq!(withdraw_all(&budget), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_is_exact_where_floating_point_is_not() {
        // 0.29 × 100 is 28.999… in f64.
        let budget = RetryBudget::new(secs(10), 0, 0.29).unwrap();
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(withdraw_all(&budget), 29);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_and_ratio_add_up() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(budget.remaining(), 100 + 20);
        assert_eq!(withdraw_all(&budget), 120);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_ttl() {
        let budget = RetryBudget::new(secs(10), 0, 1.0).unwrap();
        for _ in 0..5 {
            budget.deposit();
        }
        tokio::time::advance(secs(5)).await;
        for _ in 0..3 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert_eq!(budget.remaining(), 8, "all still within 10 s");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(budget.remaining(), 3, "the first five are 10 s old");
        tokio::time::advance(secs(5)).await;
        assert_eq!(budget.remaining(), 0);
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_with_their_slot_and_slots_are_reused() {
        let budget = RetryBudget::new(secs(1), 0, 1.0).unwrap();
        for pass in 0..25 {
            // Many passes round the ring, each slot reused several times.
            budget.deposit();
            budget.deposit();
            assert_eq!(withdraw_all(&budget), 2, "pass {pass}");
            tokio::time::advance(Duration::from_millis(1_000)).await;
        }
        // Old withdrawals still in the window keep counting.
        budget.deposit();
        budget.deposit();
        assert!(budget.try_withdraw());
        tokio::time::advance(Duration::from_millis(500)).await;
        budget.deposit();
        assert_eq!(withdraw_all(&budget), 2);
        tokio::time::advance(Duration::from_millis(500)).await;
        // The first two deposits and the first withdrawal are gone: one
        // deposit against two withdrawals leaves nothing.
        assert_eq!(budget.remaining(), 0);
        budget.deposit();
        budget.deposit();
        assert_eq!(budget.remaining(), 1);
    }

    #[test]
    fn concurrent_use_never_overdraws() {
        // Real time, no runtime: 60 s is far longer than the test runs, so
        // nothing expires and the bound is exact arithmetic.
        const THREADS: u32 = 4;
        const ROUNDS: u32 = 5_000;
        let budget = RetryBudget::new(secs(60), 1, 0.1).unwrap();
        let granted = AtomicU32::new(0);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (budget, granted) = (budget.clone(), &granted);
                scope.spawn(move || {
                    for i in 0..ROUNDS {
                        budget.deposit();
                        // Withdraw in bursts so that withdrawals race.
                        if (i + t) % 4 == 0 {
                            for _ in 0..3 {
                                if budget.try_withdraw() {
                                    granted.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                });
            }
        });
        let bound = 60 + THREADS * ROUNDS / 10;
        let granted = granted.into_inner();
        assert!(granted <= bound, "{granted} retries granted, bound {bound}");
        // Every refused withdrawal was taken back: what is left is exact.
        assert_eq!(budget.remaining(), u64::from(bound - granted));
        assert_eq!(granted + withdraw_all(&budget), bound);
    }

    #[test]
    fn invalid_settings_are_typed_errors_naming_the_setting() {
        let cases = [
            (Duration::ZERO, 0.2, BudgetError::TtlZero),
            (secs(61), 0.2, BudgetError::TtlTooLong(secs(61))),
            (secs(10), -0.1, BudgetError::RetryRatioInvalid(-0.1)),
            (secs(10), 1000.5, BudgetError::RetryRatioInvalid(1000.5)),
            (
                secs(10),
                f64::INFINITY,
                BudgetError::RetryRatioInvalid(f64::INFINITY),
            ),
        ];
        for (ttl, ratio, expected) in cases {
            let err = RetryBudget::new(ttl, 10, ratio).unwrap_err();
            assert_eq!(err, expected);
            assert!(
                err.to_string().starts_with(err.setting()),
                "{err} should name {}",
                err.setting()
            );
        }
        let nan = RetryBudget::new(secs(10), 10, f64::NAN).unwrap_err();
        assert_eq!(nan.setting(), "retry_ratio");
        // The limits themselves are accepted.
        assert!(RetryBudget::new(MAX_BUDGET_TTL, 0, MAX_RETRY_RATIO).is_ok());
        assert!(RetryBudget::new(Duration::from_nanos(1), u32::MAX, 0.0).is_ok());
    }

    #[test]
    fn clones_share_one_budget() {
        let a = RetryBudget::new(secs(10), 0, 1.0).unwrap();
        let b = a.clone();
        a.deposit();
        assert!(b.try_withdraw());
        assert!(!a.try_withdraw());
    }
}
