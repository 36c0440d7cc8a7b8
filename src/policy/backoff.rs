//! The gRFC A6 backoff schedule.
//!
//! Retry `n` (1 for the first retry) waits
//! `min(initial × multiplier^(n-1), max) × jitter`. A server pushback replaces
//! one computed delay and restarts `n` at 1, so the backoff after a pushback
//! begins again from `initial`.
//!
//! [`Jitter::Decorrelated`] is the exception: each wait is drawn from the
//! previous one (`min(max, U[initial, 3 × previous))`), so the state keeps
//! the previous wait; a pushback restarts it from `initial` too.
//!
//! This is implemented here rather than with a backoff crate because A6's
//! jitter (±20 %) and its pushback reset are specific to gRPC.

use std::time::Duration;

use crate::policy::retry::{Jitter, RetryPolicy};

/// Tracks where a call is in its backoff sequence.
#[derive(Debug, Default, Clone)]
pub(crate) struct Backoff {
    /// Computed backoffs since the start of the call or the last pushback.
    retries: u32,
    /// The last wait drawn by [`Jitter::Decorrelated`] since the start of
    /// the call or the last pushback; `None` stands for `initial_backoff`.
    previous: Option<Duration>,
}

impl Backoff {
    /// The delay before the next retry, randomised with `random` (a value
    /// uniform in `[0, 1)`).
    pub(crate) fn next_delay_with(&mut self, policy: &RetryPolicy, random: f64) -> Duration {
        self.retries = self.retries.saturating_add(1);
        if policy.jitter == Jitter::Decorrelated {
            let previous = self.previous.unwrap_or(policy.initial_backoff);
            let delay = decorrelated(policy, previous, random);
            self.previous = Some(delay);
            return delay;
        }
        let base = computed_backoff(policy, self.retries);
        apply_jitter(base, policy.jitter, random)
    }

    /// The delay before the next retry, with thread-local randomness.
    pub(crate) fn next_delay(&mut self, policy: &RetryPolicy) -> Duration {
        self.next_delay_with(policy, fastrand::f64())
    }

    /// A server pushback set the delay; the exponent starts again.
    pub(crate) fn reset(&mut self) {
        self.retries = 0;
        self.previous = None;
    }
}

/// AWS's decorrelated jitter: `min(max, U[initial, 3 × previous))` for a
/// `random` in `[0, 1]`. In `f64` seconds, so that `3 × previous` cannot
/// overflow a `Duration`; a `previous` below `initial` (only possible when
/// `max_backoff < initial_backoff`) draws `initial` itself, before the cap.
fn decorrelated(policy: &RetryPolicy, previous: Duration, random: f64) -> Duration {
    let random = unit(random);
    let floor = policy.initial_backoff.as_secs_f64();
    let top = (3.0 * previous.as_secs_f64()).max(floor);
    let secs = floor + random * (top - floor);
    let cap = policy.max_backoff;
    if secs.is_nan() || secs >= cap.as_secs_f64() {
        return cap;
    }
    // `secs` is below the cap's `f64` value, which may round above the cap.
    Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
}

/// `random` clamped to `[0, 1]`, a NaN counting as 0 (`clamp` passes NaN
/// through).
fn unit(random: f64) -> f64 {
    if random.is_nan() {
        0.0
    } else {
        random.clamp(0.0, 1.0)
    }
}

/// `min(initial × multiplier^(n-1), max)` before jitter, for retry `n ≥ 1`.
pub(crate) fn computed_backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let exponent = i32::try_from(n.saturating_sub(1)).unwrap_or(i32::MAX);
    let secs = policy.initial_backoff.as_secs_f64() * policy.backoff_multiplier.powi(exponent);
    // `secs` may be inf (huge exponent) or underflow to 0 (multiplier < 1);
    // both are valid inputs to `min`, and the conversion below cannot fail
    // for a finite, non-negative value no larger than `max_backoff`.
    if secs.is_nan() || secs >= policy.max_backoff.as_secs_f64() {
        return policy.max_backoff;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(policy.max_backoff)
}

fn apply_jitter(base: Duration, jitter: Jitter, random: f64) -> Duration {
    let random = unit(random);
    match jitter {
        Jitter::Proportional => scale(base, 0.8 + 0.4 * random),
        Jitter::Full => scale(base, random),
        Jitter::Equal => scale(base, 0.5 + 0.5 * random),
        // Drawn from the previous wait in `Backoff::next_delay_with`; the
        // computed backoff stands if it ever gets here.
        Jitter::Decorrelated | Jitter::None => base,
    }
}

/// `base × factor` for a factor in `[0, 1.2]`, saturating at
/// [`Duration::MAX`]: `Duration::mul_f64` (the same arithmetic) panics when
/// a `max_backoff` near `Duration::MAX` is scaled up by the jitter.
fn scale(base: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy(initial_ms: u64, max_ms: u64, mult: f64, jitter: Jitter) -> RetryPolicy {
        RetryPolicy::builder()
            .initial_backoff(Duration::from_millis(initial_ms))
            .max_backoff(Duration::from_millis(max_ms))
            .backoff_multiplier(mult)
            .jitter(jitter)
            .build()
            .unwrap()
    }

    #[test]
    fn computed_backoff_grows_geometrically_then_caps() {
        let p = policy(100, 1000, 2.0, Jitter::None);
        let got: Vec<u64> = (1..=6)
            .map(|n| computed_backoff(&p, n).as_millis() as u64)
            .collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn computed_backoff_survives_extreme_inputs() {
        let p = policy(1, 5, 1e300, Jitter::None);
        assert_eq!(computed_backoff(&p, u32::MAX), Duration::from_millis(5));
        let p = policy(1000, 5000, 1e-300, Jitter::None);
        assert_eq!(computed_backoff(&p, 3), Duration::ZERO);
        assert_eq!(computed_backoff(&p, 1), Duration::from_secs(1));
    }

    #[test]
    fn proportional_jitter_stays_within_twenty_percent() {
        let p = policy(100, 10_000, 2.0, Jitter::Proportional);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_with(&p, 0.0), Duration::from_millis(80));
        let d = b.next_delay_with(&p, 0.999_999);
        assert!(d < Duration::from_millis(240) && d > Duration::from_millis(239));
        for n in 3..200 {
            let base = computed_backoff(&p, n);
            let d = b.next_delay(&p);
            assert!(d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2), "{d:?}");
        }
    }

    #[test]
    fn full_jitter_spans_zero_to_base() {
        let p = policy(100, 10_000, 2.0, Jitter::Full);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_with(&p, 0.0), Duration::ZERO);
        assert_eq!(b.next_delay_with(&p, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn equal_jitter_spans_half_the_backoff_to_the_backoff() {
        let p = policy(100, 10_000, 2.0, Jitter::Equal);
        let mut b = Backoff::default();
        // v/2 + U[0, v/2) for v = 100, 200, 400 ms.
        assert_eq!(b.next_delay_with(&p, 0.0), Duration::from_millis(50));
        assert_eq!(b.next_delay_with(&p, 0.5), Duration::from_millis(150));
        assert_eq!(b.next_delay_with(&p, 1.0), Duration::from_millis(400));
        for n in 4..200 {
            let base = computed_backoff(&p, n);
            let d = b.next_delay(&p);
            assert!(
                d >= base / 2 && d <= base,
                "retry {n}: {d:?} outside [{base:?}/2, {base:?}]"
            );
        }
    }

    #[test]
    fn decorrelated_jitter_draws_between_initial_and_three_times_the_previous_wait() {
        let p = policy(5, 2000, 2.0, Jitter::Decorrelated);
        let mut b = Backoff::default();
        // The first "previous wait" is initial: U[5, 15) ms.
        assert_eq!(b.next_delay_with(&p, 0.0), Duration::from_millis(5));
        assert_eq!(b.next_delay_with(&p, 1.0), Duration::from_millis(15));
        // Then U[5, 45) ms from the 15 ms drawn.
        assert_eq!(b.next_delay_with(&p, 0.5), Duration::from_millis(25));
        // And U[5, 75) from 25: the top is capped at max_backoff.
        assert_eq!(b.next_delay_with(&p, 1.0), Duration::from_millis(75));
    }

    #[test]
    fn decorrelated_jitter_never_leaves_initial_to_max_and_does_not_use_the_multiplier() {
        // The multiplier would make the computed backoff 1 ms × 100^n.
        let p = policy(1, 50, 100.0, Jitter::Decorrelated);
        let mut b = Backoff::default();
        let mut previous = Duration::from_millis(1);
        for _ in 0..500 {
            let d = b.next_delay(&p);
            let top = (previous * 3).min(Duration::from_millis(50));
            assert!(
                d >= Duration::from_millis(1) && d <= top,
                "{d:?} outside [1 ms, {top:?}]"
            );
            previous = d;
        }
        assert_eq!(
            b.next_delay_with(&p, 1.0),
            Duration::from_millis(50).min(previous * 3)
        );
    }

    #[test]
    fn decorrelated_jitter_restarts_from_initial_after_a_pushback() {
        let p = policy(10, 10_000, 2.0, Jitter::Decorrelated);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_with(&p, 1.0), Duration::from_millis(30));
        assert_eq!(b.next_delay_with(&p, 1.0), Duration::from_millis(90));
        b.reset();
        assert_eq!(b.next_delay_with(&p, 1.0), Duration::from_millis(30));
    }

    #[test]
    fn decorrelated_jitter_with_max_below_initial_waits_max() {
        let p = policy(100, 40, 2.0, Jitter::Decorrelated);
        let mut b = Backoff::default();
        for random in [0.0, 0.5, 1.0] {
            assert_eq!(b.next_delay_with(&p, random), Duration::from_millis(40));
        }
    }

    #[test]
    fn reset_after_pushback_restarts_from_initial() {
        let p = policy(100, 10_000, 3.0, Jitter::None);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(&p), Duration::from_millis(100));
        assert_eq!(b.next_delay(&p), Duration::from_millis(300));
        b.reset();
        assert_eq!(b.next_delay(&p), Duration::from_millis(100));
    }

    #[test]
    fn random_outside_unit_interval_is_clamped() {
        let p = policy(100, 1000, 2.0, Jitter::Proportional);
        let mut b = Backoff::default();
        assert_eq!(b.next_delay_with(&p, -5.0), Duration::from_millis(80));
        assert_eq!(b.next_delay_with(&p, f64::NAN), Duration::from_millis(160));
    }

    #[test]
    fn jitter_on_a_backoff_near_duration_max_saturates_instead_of_panicking() {
        let p = RetryPolicy::builder()
            .initial_backoff(Duration::MAX)
            .max_backoff(Duration::MAX)
            .build()
            .unwrap();
        let mut b = Backoff::default();
        // 1.2 × Duration::MAX does not fit: `mul_f64` would panic here.
        assert_eq!(b.next_delay_with(&p, 1.0), Duration::MAX);
        assert!(b.next_delay_with(&p, 0.0) >= Duration::MAX.mul_f64(0.79));
    }

    /// Durations from zero to `Duration::MAX`, weighted towards the edges.
    fn any_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            Just(Duration::ZERO),
            Just(Duration::from_nanos(1)),
            Just(Duration::MAX),
            Just(Duration::from_secs(i64::MAX as u64)),
            any::<u64>().prop_map(Duration::from_nanos),
            (any::<u64>(), 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    /// Any `f64`, with the awkward ones (NaN, infinities, extremes) made
    /// likely.
    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(0.0),
            Just(-1.0),
            Just(f64::MIN_POSITIVE),
            Just(f64::MAX),
            Just(1e-300),
            any::<f64>(),
            0.0..10.0f64,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_policy_that_builds_computes_a_thousand_backoffs_without_panic(
            initial in any_duration(),
            max in any_duration(),
            multiplier in any_f64(),
            jitter in prop_oneof![
                Just(Jitter::Proportional),
                Just(Jitter::Full),
                Just(Jitter::Equal),
                Just(Jitter::Decorrelated),
                Just(Jitter::None),
            ],
            random in any_f64(),
        ) {
            let Ok(p) = RetryPolicy::builder()
                .initial_backoff(initial)
                .max_backoff(max)
                .backoff_multiplier(multiplier)
                .jitter(jitter)
                .build()
            else {
                return Ok(());
            };
            let mut b = Backoff::default();
            for n in 1..=1000u32 {
                let base = computed_backoff(&p, n);
                prop_assert!(base <= p.max_backoff());
                let delay = b.next_delay_with(&p, random);
                let computed = computed_backoff(&p, b.retries);
                match jitter {
                    Jitter::None => prop_assert_eq!(delay, computed),
                    // Within the rounding of a `Duration` through `f64`.
                    Jitter::Full | Jitter::Equal => prop_assert!(
                        delay.as_secs_f64() <= computed.as_secs_f64() * (1.0 + 1e-12)
                    ),
                    Jitter::Decorrelated => prop_assert!(delay <= p.max_backoff()),
                    Jitter::Proportional => {}
                }
                if n % 100 == 0 {
                    b.reset();
                }
            }
            let _ = computed_backoff(&p, u32::MAX);
        }
    }
}
