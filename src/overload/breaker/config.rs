//! [`BreakerConfig`]: when a breaker opens, for how long, and how it
//! closes again; validated by its builder.

use std::fmt;
use std::time::Duration;

use tonic::Code;

use crate::policy::codes::CodeSet;

/// The codes that count as failures when none are configured: the transient
/// system errors, as for retries.
pub const DEFAULT_FAILURE_CODES: CodeSet = CodeSet::EMPTY
    .with(Code::Unavailable)
    .with(Code::DeadlineExceeded)
    .with(Code::Aborted);

/// An invalid [`BreakerConfig`] setting. Each variant names the setting.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BreakerError {
    /// `failure_ratio` must be a number in `(0, 1]`.
    FailureRatioInvalid(f64),
    /// `minimum_calls` must be at least 1.
    MinimumCallsZero,
    /// `window` must be greater than zero.
    WindowZero,
    /// `break_duration` must be greater than zero.
    BreakDurationZero,
    /// `half_open_probes` must be at least 1.
    HalfOpenProbesZero,
    /// `failure_codes` must not be empty.
    FailureCodesEmpty,
    /// `failure_codes` must not contain OK.
    FailureCodesContainOk,
}

impl BreakerError {
    /// The name of the builder setting that was rejected.
    pub fn setting(&self) -> &'static str {
        match self {
            BreakerError::FailureRatioInvalid(_) => "failure_ratio",
            BreakerError::MinimumCallsZero => "minimum_calls",
            BreakerError::WindowZero => "window",
            BreakerError::BreakDurationZero => "break_duration",
            BreakerError::HalfOpenProbesZero => "half_open_probes",
            BreakerError::FailureCodesEmpty | BreakerError::FailureCodesContainOk => {
                "failure_codes"
            }
        }
    }
}

impl fmt::Display for BreakerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = match self {
            BreakerError::FailureRatioInvalid(r) => {
                format!("must be a number in (0, 1] (got {r})")
            }
            BreakerError::MinimumCallsZero | BreakerError::HalfOpenProbesZero => {
                "must be at least 1".to_string()
            }
            BreakerError::WindowZero | BreakerError::BreakDurationZero => {
                "must be greater than zero".to_string()
            }
            BreakerError::FailureCodesEmpty => "must not be empty".to_string(),
            BreakerError::FailureCodesContainOk => "must not contain OK".to_string(),
        };
        write!(f, "{}: {rule}", self.setting())
    }
}

impl std::error::Error for BreakerError {}

/// When a [`CircuitBreaker`](crate::CircuitBreaker) opens, for how long, and how it closes again.
///
/// Build one with [`BreakerConfig::builder`]; [`BreakerConfig::default`]
/// gives the defaults listed on [`BreakerConfigBuilder`].
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::BreakerConfig;
///
/// let config = BreakerConfig::builder()
///     .failure_ratio(0.25)
///     .minimum_calls(50)
///     .break_duration(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(config.minimum_calls(), 50);
/// # Ok::<(), tonic_retry::BreakerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    failure_ratio: f64,
    minimum_calls: u32,
    window: Duration,
    break_duration: Duration,
    half_open_probes: u32,
    failure_codes: CodeSet,
}

impl BreakerConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder::default()
    }

    /// The share of failed calls in the window at which the breaker opens.
    pub fn failure_ratio(&self) -> f64 {
        self.failure_ratio
    }

    /// The fewest calls in the window for the breaker to open.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }

    /// The sliding window over which outcomes are counted while closed.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How long the breaker stays open before allowing trial calls.
    pub fn break_duration(&self) -> Duration {
        self.break_duration
    }

    /// How many trial calls are allowed while half-open.
    pub fn half_open_probes(&self) -> u32 {
        self.half_open_probes
    }

    /// The status codes that count as failures.
    pub fn failure_codes(&self) -> CodeSet {
        self.failure_codes
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfigBuilder::default()
            .build()
            .expect("the default settings are valid")
    }
}

/// Builds a [`BreakerConfig`]; [`build`](Self::build) validates every
/// setting.
///
/// Defaults:
///
/// | setting | default |
/// |---|---|
/// | `failure_ratio` | 0.5 |
/// | `minimum_calls` | 20 |
/// | `window` | 10 s |
/// | `break_duration` | 5 s |
/// | `half_open_probes` | 3 |
/// | `failure_codes` | UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED |
#[derive(Debug, Clone)]
pub struct BreakerConfigBuilder {
    config: BreakerConfig,
}

impl Default for BreakerConfigBuilder {
    fn default() -> Self {
        BreakerConfigBuilder {
            config: BreakerConfig {
                failure_ratio: 0.5,
                minimum_calls: 20,
                window: Duration::from_secs(10),
                break_duration: Duration::from_secs(5),
                half_open_probes: 3,
                failure_codes: DEFAULT_FAILURE_CODES,
            },
        }
    }
}

impl BreakerConfigBuilder {
    /// The breaker opens when failures are at least this share of the calls
    /// in the window. In `(0, 1]`; 1 means "only if every call failed".
    pub fn failure_ratio(mut self, ratio: f64) -> Self {
        self.config.failure_ratio = ratio;
        self
    }

    /// The breaker never opens while the window holds fewer calls than
    /// this, so a few early failures cannot open it. At least 1.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.config.minimum_calls = calls;
        self
    }

    /// How far back outcomes are counted. The window moves in steps of a
    /// tenth of it, so an outcome counts for between 90 % and 100 % of it.
    pub fn window(mut self, window: Duration) -> Self {
        self.config.window = window;
        self
    }

    /// How long the breaker stays open, each time it opens.
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.config.break_duration = duration;
        self
    }

    /// How many trial calls go through while half-open; they must all
    /// succeed for the breaker to close. At least 1.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.config.half_open_probes = probes;
        self
    }

    /// The status codes that count as failures; all others count as
    /// successes. Must be non-empty and must not contain OK.
    pub fn failure_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.config.failure_codes = codes.into_iter().collect();
        self
    }

    /// Validates the settings and builds the configuration.
    pub fn build(self) -> Result<BreakerConfig, BreakerError> {
        let c = self.config;
        if !(c.failure_ratio > 0.0 && c.failure_ratio <= 1.0) {
            return Err(BreakerError::FailureRatioInvalid(c.failure_ratio));
        }
        if c.minimum_calls == 0 {
            return Err(BreakerError::MinimumCallsZero);
        }
        if c.window.is_zero() {
            return Err(BreakerError::WindowZero);
        }
        if c.break_duration.is_zero() {
            return Err(BreakerError::BreakDurationZero);
        }
        if c.half_open_probes == 0 {
            return Err(BreakerError::HalfOpenProbesZero);
        }
        if c.failure_codes.is_empty() {
            return Err(BreakerError::FailureCodesEmpty);
        }
        if c.failure_codes.contains(Code::Ok) {
            return Err(BreakerError::FailureCodesContainOk);
        }
        Ok(c)
    }
}
