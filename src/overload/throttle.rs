//! gRFC A6 retry throttling: a token bucket per channel.
//!
//! The bucket starts full. Every failed attempt (a retryable code, or a
//! pushback that says "stop") takes one token; every successful call puts
//! back `tokenRatio`. While the bucket holds no more than half its capacity,
//! nothing is retried: failures are returned at once. Under a real outage
//! this caps retries at a small multiple of successes, instead of the
//! `maxAttempts`-fold load a naive retry loop adds.
//!
//! Like grpc-java and grpc core, the arithmetic is in integer milli-tokens,
//! so results are exact and match the spec's test vectors.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

/// One token, in milli-tokens.
const TOKEN: u32 = 1000;

/// The A6 retry-throttling token bucket, shared by all calls of a layer.
///
/// ```
/// use tonic_retry::RetryThrottle;
///
/// // maxTokens 10, tokenRatio 0.1
/// let bucket = RetryThrottle::new(10_000, 100).unwrap();
/// assert!(bucket.record_failure());   // 10 → 9 tokens: above 5, may retry
/// # for _ in 0..3 { bucket.record_failure(); }
/// assert!(!bucket.record_failure());  // 6 → 5 tokens: at half, no retry
/// bucket.record_success();            // + 0.1
/// ```
pub struct RetryThrottle {
    milli_tokens: AtomicU32,
    max_milli_tokens: u32,
    token_ratio_milli: u32,
}

/// Invalid throttling settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ThrottleError {
    /// `maxTokens` must be in (0, 1000].
    MaxTokens(u32),
    /// `tokenRatio` must be greater than 0 (after truncation to 3 decimals).
    TokenRatio,
}

impl fmt::Display for ThrottleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleError::MaxTokens(m) => write!(
                f,
                "maxTokens: must be in (0, 1000] (got {} milli-tokens)",
                m
            ),
            ThrottleError::TokenRatio => f.write_str("tokenRatio: must be greater than 0"),
        }
    }
}

impl std::error::Error for ThrottleError {}

impl RetryThrottle {
    /// A full bucket of `max_milli_tokens` (maxTokens × 1000, in (0, 1 000 000])
    /// refilled by `token_ratio_milli` (tokenRatio × 1000, > 0) per success.
    pub fn new(max_milli_tokens: u32, token_ratio_milli: u32) -> Result<Self, ThrottleError> {
        if max_milli_tokens == 0 || max_milli_tokens > 1000 * TOKEN {
            return Err(ThrottleError::MaxTokens(max_milli_tokens));
        }
        if token_ratio_milli == 0 {
            return Err(ThrottleError::TokenRatio);
        }
        Ok(RetryThrottle {
            milli_tokens: AtomicU32::new(max_milli_tokens),
            max_milli_tokens,
            token_ratio_milli,
        })
    }

    /// Records a failed attempt (one token, floored at zero) and returns
    /// whether retries are still allowed: more than half the tokens remain.
    pub fn record_failure(&self) -> bool {
        let previous = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(TOKEN))
            })
            .unwrap_or_else(|t| t);
        previous.saturating_sub(TOKEN) > self.max_milli_tokens / 2
    }

    /// Records a successful call: `tokenRatio` back, capped at the maximum.
    pub fn record_success(&self) {
        // Skip the read-modify-write when full: the common case under no
        // failures, and it keeps the cache line shared between cores.
        if self.milli_tokens.load(Ordering::Relaxed) >= self.max_milli_tokens {
            return;
        }
        let max = self.max_milli_tokens;
        let ratio = self.token_ratio_milli;
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(ratio).min(max))
            });
    }

    /// Whether a retry is allowed now, without recording anything.
    pub fn allows_retry(&self) -> bool {
        self.milli_tokens.load(Ordering::Acquire) > self.max_milli_tokens / 2
    }

    /// The current number of milli-tokens.
    pub fn milli_tokens(&self) -> u32 {
        self.milli_tokens.load(Ordering::Acquire)
    }
}

impl fmt::Debug for RetryThrottle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryThrottle")
            .field("milli_tokens", &self.milli_tokens())
            .field("max_milli_tokens", &self.max_milli_tokens)
            .field("token_ratio_milli", &self.token_ratio_milli)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts per call for a policy of `max_attempts` against a server that
    /// always fails, following the bucket's decisions.
    fn attempts_per_call(bucket: &RetryThrottle, max_attempts: u32, calls: usize) -> Vec<u32> {
        (0..calls)
            .map(|_| {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let may_retry = bucket.record_failure();
                    if !may_retry || attempts == max_attempts {
                        break attempts;
                    }
                }
            })
            .collect()
    }

    #[test]
    fn grpcio_test_vector_gives_four_then_ones() {
        // maxTokens 10, tokenRatio 0.1, maxAttempts 4, always UNAVAILABLE.
        let bucket = RetryThrottle::new(10_000, 100).unwrap();
        let got = attempts_per_call(&bucket, 4, 6);
        assert_eq!(got, vec![4, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn tokens_after_the_first_call_are_six() {
        let bucket = RetryThrottle::new(10_000, 100).unwrap();
        attempts_per_call(&bucket, 4, 1);
        assert_eq!(bucket.milli_tokens(), 6_000);
        // The next failure leaves 5 = half: no retry.
        assert!(!bucket.record_failure());
        assert_eq!(bucket.milli_tokens(), 5_000);
    }

    #[test]
    fn successes_refill_by_the_ratio_up_to_the_maximum() {
        let bucket = RetryThrottle::new(10_000, 100).unwrap();
        for _ in 0..5 {
            bucket.record_failure();
        }
        assert_eq!(bucket.milli_tokens(), 5_000);
        assert!(!bucket.allows_retry());
        bucket.record_success();
        assert_eq!(bucket.milli_tokens(), 5_100);
        assert!(bucket.allows_retry());
        for _ in 0..1000 {
            bucket.record_success();
        }
        assert_eq!(bucket.milli_tokens(), 10_000);
    }

    #[test]
    fn failures_floor_at_zero() {
        let bucket = RetryThrottle::new(2_500, 1).unwrap();
        for _ in 0..10 {
            assert!(!bucket.record_failure() || bucket.milli_tokens() > 1_250);
        }
        assert_eq!(bucket.milli_tokens(), 0);
        bucket.record_success();
        assert_eq!(bucket.milli_tokens(), 1);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert_eq!(
            RetryThrottle::new(0, 100).unwrap_err(),
            ThrottleError::MaxTokens(0)
        );
        assert!(RetryThrottle::new(1_000_001, 100).is_err());
        assert!(RetryThrottle::new(1_000_000, 100).is_ok());
        assert_eq!(
            RetryThrottle::new(10_000, 0).unwrap_err(),
            ThrottleError::TokenRatio
        );
    }

    #[test]
    fn concurrent_updates_never_lose_tokens() {
        let bucket = std::sync::Arc::new(RetryThrottle::new(1_000_000, 1000).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = bucket.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        b.record_failure();
                        b.record_success();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Each failure takes exactly what each success returns.
        assert_eq!(bucket.milli_tokens(), 1_000_000);
    }
}
