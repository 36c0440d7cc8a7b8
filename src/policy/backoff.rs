//! The gRFC A6 backoff schedule.
//!
//! Retry `n` (1 for the first retry) waits
//! `min(initial × multiplier^(n-1), max) × jitter`. A server pushback replaces
//! one computed delay and restarts `n` at 1, so the backoff after a pushback
//! begins again from `initial`.
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
}

impl Backoff {
    /// The delay before the next retry, randomised with `random` (a value
    /// uniform in `[0, 1)`).
    pub(crate) fn next_delay_with(&mut self, policy: &RetryPolicy, random: f64) -> Duration {
        self.retries = self.retries.saturating_add(1);
        let base = computed_backoff(policy, self.retries);
        apply_jitter(base, policy.jitter, random)
    }

    /// The delay before the next retry, with thread-local randomness.
    pub(crate) fn next_delay(&mut self, policy: &RetryPolicy) -> Duration {
        self.next_delay_with(policy, fastrand::f64())
    }

    /// A server pushback set the delay; the exponent starts again.
    #[allow(dead_code)] // used once pushback is honoured (overload-safety issue)
    pub(crate) fn reset(&mut self) {
        self.retries = 0;
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
    // `clamp` passes NaN through; a NaN random counts as 0.
    let random = if random.is_nan() {
        0.0
    } else {
        random.clamp(0.0, 1.0)
    };
    match jitter {
        Jitter::Proportional => scale(base, 0.8 + 0.4 * random),
        Jitter::Full => scale(base, random),
        Jitter::None => base,
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
            jitter in prop_oneof![Just(Jitter::Proportional), Just(Jitter::Full), Just(Jitter::None)],
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
                if jitter == Jitter::None {
                    prop_assert_eq!(delay, computed_backoff(&p, b.retries));
                }
                if n % 100 == 0 {
                    b.reset();
                }
            }
            let _ = computed_backoff(&p, u32::MAX);
        }
    }
}
