//! What to retry and how: [`RetryPolicy`] and its validating builder.
//!
//! A policy is immutable once built and is shared by every call through a
//! layer (it sits behind an `Arc`), so building it is where all validation
//! happens: a [`RetryPolicy`] that exists is always usable, and nothing on the
//! request path can fail because of a bad setting.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tonic::Code;

use super::codes::CodeSet;

/// gRFC A6 caps `maxAttempts` at 5; larger values are clamped, not rejected.
pub const DEFAULT_MAX_ATTEMPTS_CAP: u32 = 5;

/// Per-call replay buffer limit; grpc-go and grpc core use 256 KiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 256 * 1024;

/// The longest server-chosen delay (`grpc-retry-pushback-ms` or
/// `google.rpc.RetryInfo`) a call waits for by default; see
/// [`RetryPolicyBuilder::max_server_delay`].
pub const DEFAULT_MAX_SERVER_DELAY: Duration = Duration::from_secs(30);

/// The codes retried when none are configured: the transient system errors.
pub const DEFAULT_RETRYABLE_CODES: CodeSet = CodeSet::EMPTY
    .with(Code::Unavailable)
    .with(Code::DeadlineExceeded)
    .with(Code::Aborted);

/// How the computed backoff is randomised.
///
/// Randomisation spreads the retries of many clients that failed at the same
/// moment, so that they do not hit a recovering server in lock-step.
///
/// Which to choose depends on why calls fail (measured in BENCHMARKS.md,
/// "Which jitter"):
///
/// * **Contention** (ABORTED from optimistic concurrency, lock conflicts):
///   the clients that collided retry into each other unless their waits
///   are spread wide. [`Full`](Jitter::Full) and
///   [`Decorrelated`](Jitter::Decorrelated) finish soonest with the fewest
///   calls; ±20 % keeps the losers nearly in step.
/// * **Outages** (UNAVAILABLE from a server that is down or shedding load):
///   the wait is there to let the server recover, and a short random wait
///   only adds load early. [`Proportional`](Jitter::Proportional) (A6's
///   default) keeps every wait close to the schedule; what protects an
///   overloaded server is throttling or a budget, not the jitter.
///
/// Every kind is computed from the same schedule: retry `n` has the computed
/// backoff `v = min(initial_backoff × backoff_multiplier^(n-1), max_backoff)`
/// (except [`Decorrelated`](Jitter::Decorrelated), which grows from its own
/// previous wait). A server pushback replaces one wait and restarts the
/// schedule, for every kind.
///
/// More kinds may be added: the enum is `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// Uniform in `[0.8, 1.2)` × the computed backoff: the current gRFC A6
    /// text, and what grpc-go, grpc-java and grpc core do.
    #[default]
    Proportional,
    /// Uniform in `[0, 1)` × the computed backoff ("full jitter"), as in the
    /// pre-2024 A6 text and the `service_config.proto` comment.
    Full,
    /// `v/2 + U[0, v/2)` for the computed backoff `v` ("equal jitter", from
    /// AWS's "Exponential Backoff And Jitter"): never less than half the
    /// schedule, so a retry never comes straight back, with half the spread
    /// of [`Full`](Jitter::Full).
    Equal,
    /// AWS's "decorrelated jitter": each wait is
    /// `min(max_backoff, U[initial_backoff, 3 × previous wait))`, the first
    /// "previous wait" being `initial_backoff`. Each wait grows from the last
    /// one drawn rather than from the retry number, so clients that failed
    /// together drift apart faster than with any per-retry jitter.
    /// `backoff_multiplier` is not used (a wait grows by up to 3× per
    /// retry, about 1.5× on average); `initial_backoff` is both the floor
    /// of every wait and the first "previous wait"; `max_backoff` caps
    /// every wait.
    Decorrelated,
    /// No randomisation. Useful for tests; not recommended in production.
    None,
}

/// A user-supplied decision on whether a failed attempt may be retried.
///
/// It is called with the attempt's status code and, for a trailers-only
/// response, its headers (for a transport error the map is empty). It replaces
/// the retryable-code check; everything else (attempt limits, deadline,
/// commit, replay limit) still applies, so a classifier cannot make a
/// committed call retry.
pub type Classifier = Arc<dyn Fn(Code, &HeaderMap) -> bool + Send + Sync>;

/// An invalid [`RetryPolicy`] setting. Each variant names the setting.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` must be at least 1 (1 means "never retry").
    MaxAttemptsZero,
    /// `max_attempts_cap` must be at least 1.
    MaxAttemptsCapZero,
    /// `initial_backoff` must be greater than zero.
    InitialBackoffZero,
    /// `max_backoff` must be greater than zero.
    MaxBackoffZero,
    /// `backoff_multiplier` must be a finite number greater than zero.
    BackoffMultiplierInvalid(f64),
    /// `retryable_codes` must not be empty (use `max_attempts(1)` to disable retries).
    RetryableCodesEmpty,
    /// `retryable_codes` must not contain OK.
    RetryableCodesContainOk,
    /// `per_attempt_timeout` must be greater than zero.
    PerAttemptTimeoutZero,
    /// `timeout` must be greater than zero.
    TimeoutZero,
    /// `max_server_delay` must be greater than zero (use
    /// `use_retry_info(false)` to ignore `RetryInfo`).
    MaxServerDelayZero,
}

impl PolicyError {
    /// The name of the builder setting that was rejected.
    pub fn setting(&self) -> &'static str {
        match self {
            PolicyError::MaxAttemptsZero => "max_attempts",
            PolicyError::MaxAttemptsCapZero => "max_attempts_cap",
            PolicyError::InitialBackoffZero => "initial_backoff",
            PolicyError::MaxBackoffZero => "max_backoff",
            PolicyError::BackoffMultiplierInvalid(_) => "backoff_multiplier",
            PolicyError::RetryableCodesEmpty | PolicyError::RetryableCodesContainOk => {
                "retryable_codes"
            }
            PolicyError::PerAttemptTimeoutZero => "per_attempt_timeout",
            PolicyError::TimeoutZero => "timeout",
            PolicyError::MaxServerDelayZero => "max_server_delay",
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match self {
            PolicyError::MaxAttemptsZero | PolicyError::MaxAttemptsCapZero => {
                "must be at least 1".to_string()
            }
            PolicyError::InitialBackoffZero
            | PolicyError::MaxBackoffZero
            | PolicyError::PerAttemptTimeoutZero
            | PolicyError::TimeoutZero
            | PolicyError::MaxServerDelayZero => "must be greater than zero".to_string(),
            PolicyError::BackoffMultiplierInvalid(m) => {
                format!("must be a finite number greater than zero (got {m})")
            }
            PolicyError::RetryableCodesEmpty => "must not be empty".to_string(),
            PolicyError::RetryableCodesContainOk => "must not contain OK".to_string(),
        };
        write!(f, "{}: {rule}", self.setting())
    }
}

impl std::error::Error for PolicyError {}

/// How a call is retried: attempt limits, backoff, which statuses are
/// retryable, timeouts and the replay limit.
///
/// Build one with [`RetryPolicy::builder`]; [`RetryPolicy::default`] gives the
/// defaults listed on [`RetryPolicyBuilder`].
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::RetryPolicy;
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(4)
///     .initial_backoff(Duration::from_millis(100))
///     .max_backoff(Duration::from_secs(1))
///     .backoff_multiplier(2.0)
///     .build()?;
/// assert_eq!(policy.max_attempts(), 4);
/// # Ok::<(), tonic_retry::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) max_attempts_cap: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) backoff_multiplier: f64,
    pub(crate) jitter: Jitter,
    pub(crate) retryable_codes: CodeSet,
    pub(crate) classifier: Option<Classifier>,
    pub(crate) per_attempt_timeout: Option<Duration>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) replay_limit: usize,
    pub(crate) use_retry_info: bool,
    pub(crate) max_server_delay: Duration,
}

impl RetryPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder::default()
    }

    /// The effective maximum number of attempts, original included, after
    /// clamping to the cap.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff before the first retry.
    pub fn initial_backoff(&self) -> Duration {
        self.initial_backoff
    }

    /// The largest computed backoff (before jitter).
    pub fn max_backoff(&self) -> Duration {
        self.max_backoff
    }

    /// The factor by which the backoff grows after each retry.
    pub fn backoff_multiplier(&self) -> f64 {
        self.backoff_multiplier
    }

    /// How the backoff is randomised.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The retryable status codes (ignored when a classifier is set).
    pub fn retryable_codes(&self) -> CodeSet {
        self.retryable_codes
    }

    /// The time limit of each attempt, if any.
    pub fn per_attempt_timeout(&self) -> Option<Duration> {
        self.per_attempt_timeout
    }

    /// The time limit of the whole call, all attempts and backoffs included.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The largest request, in bytes, that is kept for replay.
    pub fn replay_limit(&self) -> usize {
        self.replay_limit
    }

    /// The ceiling on attempts, which per-call overrides cannot pass either.
    pub fn max_attempts_cap(&self) -> u32 {
        self.max_attempts_cap
    }

    /// Whether a `google.rpc.RetryInfo` delay in the status details is
    /// honoured when the server sends no pushback.
    pub fn use_retry_info(&self) -> bool {
        self.use_retry_info
    }

    /// The longest server-chosen delay a retry waits for; a longer one
    /// surfaces the failure at once.
    pub fn max_server_delay(&self) -> Duration {
        self.max_server_delay
    }

    /// Whether a failed attempt with `code` (and, for trailers-only
    /// responses, these `headers`) may be retried.
    pub(crate) fn is_retryable(&self, code: Code, headers: &HeaderMap) -> bool {
        match &self.classifier {
            Some(classify) => code != Code::Ok && classify(code, headers),
            None => self.retryable_codes.contains(code),
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicyBuilder::default()
            .build()
            .expect("the default settings are valid")
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("backoff_multiplier", &self.backoff_multiplier)
            .field("jitter", &self.jitter)
            .field("retryable_codes", &self.retryable_codes)
            .field("classifier", &self.classifier.as_ref().map(|_| "custom"))
            .field("per_attempt_timeout", &self.per_attempt_timeout)
            .field("timeout", &self.timeout)
            .field("replay_limit", &self.replay_limit)
            .field("use_retry_info", &self.use_retry_info)
            .field("max_server_delay", &self.max_server_delay)
            .finish()
    }
}

/// Builds a [`RetryPolicy`]; [`build`](Self::build) validates every setting.
///
/// Defaults:
///
/// | setting | default |
/// |---|---|
/// | `max_attempts` | 5 (the A6 cap) |
/// | `max_attempts_cap` | 5 |
/// | `initial_backoff` | 100 ms |
/// | `max_backoff` | 1 s |
/// | `backoff_multiplier` | 2.0 |
/// | `jitter` | [`Jitter::Proportional`] (±20 %); see [`Jitter`] for which to use |
/// | `retryable_codes` | UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED |
/// | `per_attempt_timeout` | none |
/// | `timeout` | none (the request's `grpc-timeout`, if any, still applies) |
/// | `replay_limit` | 256 KiB |
/// | `use_retry_info` | true |
/// | `max_server_delay` | 30 s ([`DEFAULT_MAX_SERVER_DELAY`]) |
///
/// Every duration is accepted up to [`Duration::MAX`] (zero is rejected
/// where noted): a wait too long to be timed (beyond a century, or past
/// what the clock can represent) means "never", so no setting can make a
/// call panic.
#[derive(Clone)]
pub struct RetryPolicyBuilder {
    max_attempts: u32,
    max_attempts_cap: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    backoff_multiplier: f64,
    jitter: Jitter,
    retryable_codes: CodeSet,
    classifier: Option<Classifier>,
    per_attempt_timeout: Option<Duration>,
    timeout: Option<Duration>,
    replay_limit: usize,
    use_retry_info: bool,
    max_server_delay: Duration,
}

impl Default for RetryPolicyBuilder {
    fn default() -> Self {
        RetryPolicyBuilder {
            max_attempts: DEFAULT_MAX_ATTEMPTS_CAP,
            max_attempts_cap: DEFAULT_MAX_ATTEMPTS_CAP,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            jitter: Jitter::Proportional,
            retryable_codes: DEFAULT_RETRYABLE_CODES,
            classifier: None,
            per_attempt_timeout: None,
            timeout: None,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            use_retry_info: true,
            max_server_delay: DEFAULT_MAX_SERVER_DELAY,
        }
    }
}

impl RetryPolicyBuilder {
    /// Total attempts including the original: 4 means 1 original + 3 retries.
    /// Values above [`max_attempts_cap`](Self::max_attempts_cap) are clamped
    /// to it, as A6 specifies. 0 is rejected.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The ceiling applied to `max_attempts` (A6: 5). Raise it deliberately,
    /// like grpc-go's `WithMaxCallAttempts`.
    pub fn max_attempts_cap(mut self, cap: u32) -> Self {
        self.max_attempts_cap = cap;
        self
    }

    /// The backoff before the first retry (before jitter).
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// The ceiling of the computed backoff (before jitter).
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// Growth factor: retry `n` waits `min(initial × multiplier^(n-1), max)`.
    pub fn backoff_multiplier(mut self, multiplier: f64) -> Self {
        self.backoff_multiplier = multiplier;
        self
    }

    /// How the computed backoff is randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The status codes that may be retried. Must be non-empty and must not
    /// contain OK.
    pub fn retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable_codes = codes.into_iter().collect();
        self
    }

    /// Decide retryability yourself from the code and the trailers-only
    /// headers, instead of the retryable-code set.
    ///
    /// ```
    /// use tonic::Code;
    /// use tonic_retry::RetryPolicy;
    ///
    /// // Retry RESOURCE_EXHAUSTED only when the server marks it transient.
    /// let policy = RetryPolicy::builder()
    ///     .classifier(|code, headers| match code {
    ///         Code::Unavailable => true,
    ///         Code::ResourceExhausted => headers.contains_key("x-transient"),
    ///         _ => false,
    ///     })
    ///     .build()?;
    /// # Ok::<(), tonic_retry::PolicyError>(())
    /// ```
    pub fn classifier<F>(mut self, classify: F) -> Self
    where
        F: Fn(Code, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        self.classifier = Some(Arc::new(classify));
        self
    }

    /// A time limit for each attempt. An attempt that runs out counts as
    /// DEADLINE_EXCEEDED and is retried if that code is retryable and the
    /// call's deadline leaves time.
    pub fn per_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.per_attempt_timeout = Some(timeout);
        self
    }

    /// A time limit for the whole call. The call's deadline is the earlier of
    /// this and the request's own `grpc-timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The largest request, in bytes, kept for replay. A larger request is
    /// still sent, but never retried.
    pub fn replay_limit(mut self, bytes: usize) -> Self {
        self.replay_limit = bytes;
        self
    }

    /// Whether to honour a `google.rpc.RetryInfo` delay (AIP-194) found in
    /// a failed attempt's `grpc-status-details-bin` when the server sent no
    /// `grpc-retry-pushback-ms`. Like pushback, it sets the delay exactly
    /// and restarts the backoff; it never makes a code retryable.
    pub fn use_retry_info(mut self, enabled: bool) -> Self {
        self.use_retry_info = enabled;
        self
    }

    /// The longest server-chosen delay (a `grpc-retry-pushback-ms` or
    /// `google.rpc.RetryInfo` delay) that a retry waits for. A server may
    /// send any delay up to about 24.8 days (pushback) or 292 billion years
    /// (RetryInfo); above this ceiling the failed attempt's status is
    /// surfaced at once instead, so no server can stall a call. A call's
    /// deadline still comes first: a delay that would pass it ends the call
    /// with DEADLINE_EXCEEDED, as any backoff does. Hedged calls use the
    /// default (30 s): a pushback above it stops further hedges.
    pub fn max_server_delay(mut self, ceiling: Duration) -> Self {
        self.max_server_delay = ceiling;
        self
    }

    /// Validates the settings and builds the policy.
    pub fn build(self) -> Result<RetryPolicy, PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::MaxAttemptsZero);
        }
        if self.max_attempts_cap == 0 {
            return Err(PolicyError::MaxAttemptsCapZero);
        }
        if self.initial_backoff.is_zero() {
            return Err(PolicyError::InitialBackoffZero);
        }
        if self.max_backoff.is_zero() {
            return Err(PolicyError::MaxBackoffZero);
        }
        let m = self.backoff_multiplier;
        if !(m.is_finite() && m > 0.0) {
            return Err(PolicyError::BackoffMultiplierInvalid(m));
        }
        if self.classifier.is_none() {
            if self.retryable_codes.is_empty() {
                return Err(PolicyError::RetryableCodesEmpty);
            }
            if self.retryable_codes.contains(Code::Ok) {
                return Err(PolicyError::RetryableCodesContainOk);
            }
        }
        if self.per_attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(PolicyError::PerAttemptTimeoutZero);
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(PolicyError::TimeoutZero);
        }
        if self.max_server_delay.is_zero() {
            return Err(PolicyError::MaxServerDelayZero);
        }
        Ok(RetryPolicy {
            max_attempts: self.max_attempts.min(self.max_attempts_cap),
            max_attempts_cap: self.max_attempts_cap,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            backoff_multiplier: self.backoff_multiplier,
            jitter: self.jitter,
            retryable_codes: self.retryable_codes,
            classifier: self.classifier,
            per_attempt_timeout: self.per_attempt_timeout,
            timeout: self.timeout,
            replay_limit: self.replay_limit,
            use_retry_info: self.use_retry_info,
            max_server_delay: self.max_server_delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_table() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 5);
        assert_eq!(p.initial_backoff(), Duration::from_millis(100));
        assert_eq!(p.max_backoff(), Duration::from_secs(1));
        assert_eq!(p.backoff_multiplier(), 2.0);
        assert_eq!(p.jitter(), Jitter::Proportional);
        let codes: Vec<Code> = p.retryable_codes().iter().collect();
        assert_eq!(
            codes,
            vec![Code::DeadlineExceeded, Code::Aborted, Code::Unavailable]
        );
        assert_eq!(p.replay_limit(), 256 * 1024);
        assert_eq!(p.timeout(), None);
        assert_eq!(p.per_attempt_timeout(), None);
        assert!(p.use_retry_info());
        assert_eq!(p.max_server_delay(), Duration::from_secs(30));
    }

    #[test]
    fn max_attempts_above_cap_is_clamped_not_rejected() {
        let p = RetryPolicy::builder().max_attempts(10).build().unwrap();
        assert_eq!(p.max_attempts(), 5);
        let p = RetryPolicy::builder()
            .max_attempts(10)
            .max_attempts_cap(8)
            .build()
            .unwrap();
        assert_eq!(p.max_attempts(), 8);
    }

    #[test]
    fn invalid_settings_are_typed_errors_naming_the_setting() {
        let cases: Vec<(RetryPolicyBuilder, PolicyError)> = vec![
            (
                RetryPolicy::builder().max_attempts(0),
                PolicyError::MaxAttemptsZero,
            ),
            (
                RetryPolicy::builder().max_attempts_cap(0),
                PolicyError::MaxAttemptsCapZero,
            ),
            (
                RetryPolicy::builder().initial_backoff(Duration::ZERO),
                PolicyError::InitialBackoffZero,
            ),
            (
                RetryPolicy::builder().max_backoff(Duration::ZERO),
                PolicyError::MaxBackoffZero,
            ),
            (
                RetryPolicy::builder().backoff_multiplier(0.0),
                PolicyError::BackoffMultiplierInvalid(0.0),
            ),
            (
                RetryPolicy::builder().backoff_multiplier(-1.5),
                PolicyError::BackoffMultiplierInvalid(-1.5),
            ),
            (
                RetryPolicy::builder().backoff_multiplier(f64::INFINITY),
                PolicyError::BackoffMultiplierInvalid(f64::INFINITY),
            ),
            (
                RetryPolicy::builder().retryable_codes([]),
                PolicyError::RetryableCodesEmpty,
            ),
            (
                RetryPolicy::builder().retryable_codes([Code::Ok]),
                PolicyError::RetryableCodesContainOk,
            ),
            (
                RetryPolicy::builder().per_attempt_timeout(Duration::ZERO),
                PolicyError::PerAttemptTimeoutZero,
            ),
            (
                RetryPolicy::builder().timeout(Duration::ZERO),
                PolicyError::TimeoutZero,
            ),
            (
                RetryPolicy::builder().max_server_delay(Duration::ZERO),
                PolicyError::MaxServerDelayZero,
            ),
        ];
        for (builder, expected) in cases {
            let err = builder.build().unwrap_err();
            assert_eq!(err, expected);
            assert!(
                err.to_string().starts_with(err.setting()),
                "{err} should name {}",
                err.setting()
            );
        }
        assert!(
            RetryPolicy::builder()
                .backoff_multiplier(f64::NAN)
                .build()
                .is_err()
        );
    }

    #[test]
    fn classifier_replaces_the_code_set_but_never_retries_ok() {
        let p = RetryPolicy::builder()
            .classifier(|code, _| code == Code::Internal || code == Code::Ok)
            .build()
            .unwrap();
        let h = HeaderMap::new();
        assert!(p.is_retryable(Code::Internal, &h));
        assert!(!p.is_retryable(Code::Unavailable, &h));
        assert!(!p.is_retryable(Code::Ok, &h));
    }

    #[test]
    fn code_set_holds_every_code() {
        let all: CodeSet = (0..=16).map(Code::from_i32).collect();
        assert_eq!(all.iter().count(), 17);
        assert!(!CodeSet::EMPTY.contains(Code::Ok));
    }
}
