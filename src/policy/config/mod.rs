//! The standard gRPC service config (gRFC A6): its JSON form, parsed and
//! validated into per-method [`MethodConfig`]s and the channel-wide
//! [`RetryThrottling`] settings.
//!
//! Only the parts that concern calls are read: `methodConfig` (names,
//! `timeout`, `retryPolicy`, `hedgingPolicy`) and `retryThrottling`. Every
//! other field (`loadBalancingConfig`, `healthCheckConfig`, `waitForReady`,
//! `maxRequestMessageBytes`, ...) is ignored without error, as are fields this
//! crate does not know. A field whose value is JSON `null` counts as absent,
//! as in proto3 JSON.
//!
//! An invalid config is rejected as a whole, and the [`ConfigError`] names the
//! JSON path of the offending value, e.g.
//! `methodConfig[1].retryPolicy.initialBackoff: "0s" must be > 0`.

mod error;
mod json;
mod parse;

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

pub use self::error::ConfigError;
pub use self::json::{parse_code, parse_duration};
use crate::policy::codes::CodeSet;
use crate::policy::retry::RetryPolicy;

/// A parsed and validated gRPC service config (gRFC A6).
///
/// Build one with [`ServiceConfig::from_json`] (or [`str::parse`], or serde:
/// it implements [`Deserialize`](serde::Deserialize), so it can sit inside
/// your own configuration file). Look up the settings of a call with
/// [`method_config`](Self::method_config).
///
/// ```
/// use std::time::Duration;
/// use tonic::Code;
/// use tonic_retry::ServiceConfig;
///
/// let config = ServiceConfig::from_json(r#"
///     {"methodConfig": [{"name": [{"service": "pkg.Svc", "method": "M"}],
///                        "timeout": "2s",
///                        "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
///                                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
///      "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
/// "#)?;
///
/// let method = config.method_config("pkg.Svc", "M").expect("configured");
/// assert_eq!(method.timeout, Some(Duration::from_secs(2)));
/// let retry = method.retry.as_ref().expect("has a retry policy");
/// assert_eq!(retry.max_attempts(), 4);
/// assert_eq!(retry.initial_backoff(), Duration::from_millis(100));
/// assert!(retry.retryable_codes().contains(Code::Unavailable));
///
/// // No service-level or default entry, so other methods are unconfigured.
/// assert!(config.method_config("pkg.Svc", "Other").is_none());
///
/// let throttling = config.retry_throttling().expect("throttled");
/// assert_eq!(throttling.max_milli_tokens, 10_000);
/// assert_eq!(throttling.token_ratio_milli, 100);
///
/// // Invalid configs are rejected as a whole, naming the JSON path.
/// let err = ServiceConfig::from_json(r#"{"methodConfig": [{"timeout": "0s"}]}"#).unwrap_err();
/// assert_eq!(err.to_string(), r#"methodConfig[0].timeout: "0s" must be > 0 (a zero timeout would fail every call at once)"#);
/// # Ok::<(), tonic_retry::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct ServiceConfig {
    /// The method configs that have at least one name, in declaration order.
    method_configs: Vec<MethodConfig>,
    /// Service name → its service-level and method-level entries.
    services: HashMap<String, ServiceEntry>,
    /// The index of the default (`{}`) entry.
    default: Option<usize>,
    retry_throttling: Option<RetryThrottling>,
}

/// The entries of one service, as indices into `method_configs`.
#[derive(Clone, Default)]
struct ServiceEntry {
    /// The entry named by the service alone (method empty or absent).
    service_level: Option<usize>,
    /// The entries named by service and method, keyed by method.
    methods: HashMap<String, usize>,
}

impl ServiceConfig {
    /// The config that applies to a call of `service`/`method` (as in the
    /// path `/service/method`): the most specific match wins.
    ///
    /// 1. the entry naming both `service` and `method`;
    /// 2. the entry naming `service` alone (method empty or absent);
    /// 3. the default entry (`{}`, or service empty);
    ///
    /// and `None` when nothing matches. This never allocates.
    pub fn method_config(&self, service: &str, method: &str) -> Option<&MethodConfig> {
        self.method_config_index(service, method)
            .map(|i| &self.method_configs[i])
    }

    /// Like [`method_config`](Self::method_config), as an index into
    /// [`method_configs`](Self::method_configs): what a call keeps to find
    /// its policy again without a second lookup.
    pub(crate) fn method_config_index(&self, service: &str, method: &str) -> Option<usize> {
        match self.services.get(service) {
            Some(entry) => entry
                .methods
                .get(method)
                .copied()
                .or(entry.service_level)
                .or(self.default),
            None => self.default,
        }
    }

    /// The channel-wide retry throttling settings, if the config has them.
    pub fn retry_throttling(&self) -> Option<&RetryThrottling> {
        self.retry_throttling.as_ref()
    }

    /// Every method config that has at least one name, in declaration order.
    /// (A `methodConfig` whose `name` is absent or empty applies to nothing
    /// and is left out.)
    pub fn method_configs(&self) -> &[MethodConfig] {
        &self.method_configs
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("method_configs", &self.method_configs)
            .field("retry_throttling", &self.retry_throttling)
            .finish()
    }
}

impl FromStr for ServiceConfig {
    type Err = ConfigError;

    /// The same as [`ServiceConfig::from_json`].
    fn from_str(json: &str) -> Result<Self, Self::Err> {
        ServiceConfig::from_json(json)
    }
}

impl<'de> serde::Deserialize<'de> for ServiceConfig {
    /// Reads any self-describing value and validates it exactly as
    /// [`ServiceConfig::from_json`] does; a [`ConfigError`] becomes the
    /// deserializer's custom error, with its JSON path in the message.
    fn deserialize<D>(deserializer: D) -> Result<Self, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        let value = Value::deserialize(deserializer)?;
        ServiceConfig::from_value(&value).map_err(serde::de::Error::custom)
    }
}

/// The settings for the calls one `methodConfig` entry names.
#[derive(Debug, Clone)]
pub struct MethodConfig {
    /// The time limit of the whole call (A6 `timeout`), all attempts and
    /// backoffs included. The call's deadline is the earlier of this and the
    /// application's own deadline.
    pub timeout: Option<Duration>,
    /// The retry policy (A6 `retryPolicy`). It holds only the A6 settings;
    /// everything else (jitter, replay limit, timeouts) keeps the
    /// [`RetryPolicyBuilder`](crate::RetryPolicyBuilder) defaults.
    pub retry: Option<RetryPolicy>,
    /// The hedging policy (A6 `hedgingPolicy`). Never set together with
    /// `retry`.
    pub hedging: Option<HedgingPolicy>,
    /// The `(service, method)` names this entry was declared with; an empty
    /// string stands for an absent field.
    names: Vec<(String, String)>,
}

impl MethodConfig {
    /// The `(service, method)` names this entry was declared with, in order.
    /// An empty string stands for an empty or absent field: `("pkg.Svc", "")`
    /// is a service-level name and `("", "")` the default.
    pub fn names(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.names.iter().map(|(s, m)| (s.as_str(), m.as_str()))
    }
}

/// A6 `hedgingPolicy`: send up to `max_attempts` copies of a call,
/// `hedging_delay` apart, and keep the first OK (or fatal) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HedgingPolicy {
    /// Total attempts including the first, clamped to 5 (the A6 cap).
    pub max_attempts: u32,
    /// The time between hedges; zero (also the value when absent) sends every
    /// attempt at once.
    pub hedging_delay: Duration,
    /// Codes after which the next hedge is sent at once instead of failing
    /// the call. May be empty.
    pub non_fatal_codes: CodeSet,
    /// How long each hedge may take, like a retry policy's
    /// `per_attempt_timeout` (not part of A6's JSON: set it in code). A
    /// hedge that runs out counts as DEADLINE_EXCEEDED, which is then
    /// fatal unless `non_fatal_codes` lists it. `None`: only the call's
    /// deadline applies.
    pub per_attempt_timeout: Option<Duration>,
}

/// A6 `retryThrottling`: a per-channel token bucket, counted in integer
/// milli-tokens (as grpc-java and grpc core do) so that arithmetic is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryThrottling {
    /// `maxTokens` × 1000, in `1..=1_000_000`. The bucket starts full.
    pub max_milli_tokens: u32,
    /// `tokenRatio` × 1000, at least 1; decimals beyond the third are
    /// truncated. Added to the bucket on every successful call.
    pub token_ratio_milli: u32,
}
