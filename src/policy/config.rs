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

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Map, Value};
use tonic::Code;

use crate::classify::code_name;
use crate::policy::retry::{CodeSet, DEFAULT_MAX_ATTEMPTS_CAP, RetryPolicy};

/// The largest duration proto3 accepts: 10 000 years, in seconds.
const MAX_DURATION_SECS: u64 = 315_576_000_000;

/// The upper bound of `retryThrottling.maxTokens` (A6).
const MAX_TOKENS: f64 = 1000.0;

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
    /// Parses and validates a service config from its JSON text.
    ///
    /// A JSON syntax error carries its line and column; every other error
    /// names the JSON path of the value it rejects.
    pub fn from_json(json: &str) -> Result<ServiceConfig, ConfigError> {
        let value: Value = serde_json::from_str(json).map_err(ConfigError::syntax)?;
        ServiceConfig::from_value(&value)
    }

    /// Validates a service config that has already been parsed as JSON.
    pub fn from_value(value: &Value) -> Result<ServiceConfig, ConfigError> {
        let root = value.as_object().ok_or_else(|| {
            ConfigError::new(
                "",
                format!(
                    "the service config must be a JSON object, got {}",
                    describe(value)
                ),
            )
        })?;
        let mut config = ServiceConfig {
            method_configs: Vec::new(),
            services: HashMap::new(),
            default: None,
            retry_throttling: None,
        };

        if let Some(list) = field(root, "methodConfig") {
            let list = list.as_array().ok_or_else(|| {
                ConfigError::new(
                    "methodConfig",
                    format!("must be an array, got {}", describe(list)),
                )
            })?;
            // Where each name was first declared, to report duplicates.
            let mut declared: HashMap<(String, String), String> = HashMap::new();
            for (i, entry) in list.iter().enumerate() {
                let path = format!("methodConfig[{i}]");
                let method_config = parse_method_config(&path, entry)?;
                if method_config.names.is_empty() {
                    // A6: a methodConfig without names applies to nothing.
                    continue;
                }
                let index = config.method_configs.len();
                for (j, (service, method)) in method_config.names.iter().enumerate() {
                    let name_path = format!("{path}.name[{j}]");
                    match declared.entry((service.clone(), method.clone())) {
                        Entry::Occupied(first) => {
                            return Err(ConfigError::new(
                                name_path,
                                format!(
                                    "{} is listed twice (first at {})",
                                    display_name(service, method),
                                    first.get()
                                ),
                            ));
                        }
                        Entry::Vacant(slot) => {
                            slot.insert(name_path);
                        }
                    }
                    if service.is_empty() {
                        config.default = Some(index);
                    } else {
                        let entry = config.services.entry(service.clone()).or_default();
                        if method.is_empty() {
                            entry.service_level = Some(index);
                        } else {
                            entry.methods.insert(method.clone(), index);
                        }
                    }
                }
                config.method_configs.push(method_config);
            }
        }

        if let Some(throttling) = field(root, "retryThrottling") {
            config.retry_throttling = Some(parse_throttling("retryThrottling", throttling)?);
        }
        Ok(config)
    }

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

/// Why a service config was rejected.
///
/// Its [`Display`](fmt::Display) form is `path: rule`, e.g.
/// `methodConfig[1].retryPolicy.initialBackoff: "0s" must be > 0`, or, for
/// text that is not JSON at all,
/// `invalid JSON at line L column C: <parser message>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    path: String,
    message: String,
    /// Line and column (both 1-based) of a JSON syntax error.
    position: Option<(usize, usize)>,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
            position: None,
        }
    }

    fn syntax(err: serde_json::Error) -> ConfigError {
        let (line, column) = (err.line(), err.column());
        let full = err.to_string();
        let suffix = format!(" at line {line} column {column}");
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        ConfigError {
            path: String::new(),
            message,
            position: Some((line, column)),
        }
    }

    /// The JSON path of the rejected value, e.g.
    /// `methodConfig[0].retryPolicy.retryableStatusCodes[2]`. Empty when the
    /// document as a whole is rejected (not JSON, or not an object).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The 1-based line of a JSON syntax error; `None` for other errors.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }

    /// The 1-based column of a JSON syntax error; `None` for other errors.
    pub fn column(&self) -> Option<usize> {
        self.position.map(|(_, column)| column)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, column)) => write!(
                f,
                "invalid JSON at line {line} column {column}: {}",
                self.message
            ),
            None if self.path.is_empty() => f.write_str(&self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a proto3 JSON duration: decimal seconds followed by `s`.
///
/// The number is unsigned, has digits before and/or after an optional `.`
/// (at most 9 after it), and nothing else: `"2s"`, `"0.1s"`, `".5s"` and
/// `"1.000000001s"` are accepted; `"1ms"`, `"-1s"`, `"1.s"`, `"s"`, `""`,
/// `" 1s"` and `"1.0000000001s"` are not. Values above proto3's limit of
/// 315 576 000 000 s (10 000 years) are rejected too.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::config::parse_duration;
///
/// assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
/// assert!(parse_duration("100ms").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = |why: &str| {
        format!(
            "{} is not a valid duration: {why} (expected decimal seconds with an \"s\" suffix, e.g. \"0.1s\")",
            quote(s)
        )
    };
    if s.starts_with('-') {
        return Err(invalid("it is negative"));
    }
    let Some(number) = s.strip_suffix('s') else {
        return Err(invalid("it does not end in \"s\""));
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    if !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("the seconds are not a plain decimal number"));
    }
    let mut nanos = 0u32;
    if let Some(fraction) = fraction {
        if fraction.is_empty() {
            return Err(invalid("a \".\" must be followed by digits"));
        }
        if !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the fraction is not a plain decimal number"));
        }
        if fraction.len() > 9 {
            return Err(invalid("it has more than 9 fractional digits"));
        }
        for k in 0..9 {
            let digit = fraction.as_bytes().get(k).map_or(0, |b| b - b'0');
            nanos = nanos * 10 + u32::from(digit);
        }
    } else if whole.is_empty() {
        return Err(invalid("it has no digits"));
    }
    let mut secs = 0u64;
    for b in whole.bytes() {
        secs = secs
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .filter(|v| *v <= MAX_DURATION_SECS)
            .ok_or_else(|| invalid("it is longer than 315576000000s (10000 years)"))?;
    }
    if secs == MAX_DURATION_SECS && nanos > 0 {
        return Err(invalid("it is longer than 315576000000s (10000 years)"));
    }
    Ok(Duration::new(secs, nanos))
}

/// Parses a status code as A6 writes it: an integer `0..=16`, or a canonical
/// name in any case (`"UNAVAILABLE"`, `"unavailable"`, `"Unavailable"`).
///
/// An integral float such as `14.0` counts as an integer (JSON does not
/// distinguish them). Strings holding digits (`"14"`), other names, other
/// numbers and other JSON types are rejected.
///
/// ```
/// use serde_json::json;
/// use tonic::Code;
/// use tonic_retry::config::parse_code;
///
/// assert_eq!(parse_code(&json!(14)), Ok(Code::Unavailable));
/// assert_eq!(parse_code(&json!("deadline_exceeded")), Ok(Code::DeadlineExceeded));
/// assert!(parse_code(&json!("NOPE")).is_err());
/// ```
pub fn parse_code(v: &Value) -> Result<Code, String> {
    match v {
        Value::Number(n) => {
            let integer = match n.as_u64() {
                Some(u) => Some(u),
                None => n
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=16.0).contains(f))
                    .map(|f| f as u64),
            };
            match integer {
                Some(code @ 0..=16) => Ok(Code::from_i32(code as i32)),
                _ => Err(format!(
                    "status code {n} is not an integer from 0 to 16"
                )),
            }
        }
        Value::String(name) => (0..=16)
            .map(Code::from_i32)
            .find(|code| code_name(*code).eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "unknown status code name {}; expected a canonical name such as \"UNAVAILABLE\" (any case) or an integer from 0 to 16",
                    quote(name)
                )
            }),
        other => Err(format!(
            "expected a status code (an integer from 0 to 16 or a name such as \"UNAVAILABLE\"), got {}",
            describe(other)
        )),
    }
}

// ---------------------------------------------------------------------------
// The parts of the document.

fn parse_method_config(path: &str, value: &Value) -> Result<MethodConfig, ConfigError> {
    let obj = object(path, value)?;
    let names = match field(obj, "name") {
        Some(names) => parse_names(&join(path, "name"), names)?,
        None => Vec::new(),
    };
    let timeout = match duration_field(obj, path, "timeout", false)? {
        Some((raw, timeout)) if timeout.is_zero() => {
            return Err(ConfigError::new(
                join(path, "timeout"),
                format!(
                    "{} must be > 0 (a zero timeout would fail every call at once)",
                    quote(raw)
                ),
            ));
        }
        other => other.map(|(_, timeout)| timeout),
    };
    let retry = field(obj, "retryPolicy")
        .map(|v| parse_retry(&join(path, "retryPolicy"), v))
        .transpose()?;
    let hedging = field(obj, "hedgingPolicy")
        .map(|v| parse_hedging(&join(path, "hedgingPolicy"), v))
        .transpose()?;
    if retry.is_some() && hedging.is_some() {
        return Err(ConfigError::new(
            join(path, "hedgingPolicy"),
            "a method may have a retryPolicy or a hedgingPolicy, not both",
        ));
    }
    Ok(MethodConfig {
        timeout,
        retry,
        hedging,
        names,
    })
}

fn parse_names(path: &str, value: &Value) -> Result<Vec<(String, String)>, ConfigError> {
    let list = value.as_array().ok_or_else(|| {
        ConfigError::new(
            path,
            format!(
                "must be an array of {{\"service\", \"method\"}} objects, got {}",
                describe(value)
            ),
        )
    })?;
    let mut names = Vec::with_capacity(list.len());
    for (j, name) in list.iter().enumerate() {
        let name_path = format!("{path}[{j}]");
        let obj = object(&name_path, name)?;
        let service = string_field(obj, &name_path, "service")?.unwrap_or("");
        let method = string_field(obj, &name_path, "method")?.unwrap_or("");
        if service.is_empty() && !method.is_empty() {
            return Err(ConfigError::new(
                name_path,
                format!("method {} is given without a service", quote(method)),
            ));
        }
        // Duplicates are checked across the whole config by the caller.
        names.push((service.to_owned(), method.to_owned()));
    }
    Ok(names)
}

fn parse_retry(path: &str, value: &Value) -> Result<RetryPolicy, ConfigError> {
    let obj = object(path, value)?;
    let max_attempts = attempts_field(obj, path)?;
    let initial_backoff = positive_duration_field(obj, path, "initialBackoff")?;
    let max_backoff = positive_duration_field(obj, path, "maxBackoff")?;
    let multiplier_path = join(path, "backoffMultiplier");
    let multiplier = match field(obj, "backoffMultiplier") {
        None => return Err(required(multiplier_path)),
        Some(v) => match v.as_f64() {
            Some(m) if m.is_finite() && m > 0.0 => m,
            _ => {
                return Err(ConfigError::new(
                    multiplier_path,
                    format!("must be a number > 0, got {}", describe(v)),
                ));
            }
        },
    };
    let codes = code_list_field(
        obj,
        path,
        "retryableStatusCodes",
        true,
        "OK is not a failure, so it cannot be retried",
    )?
    .unwrap_or_default();
    // Everything else (jitter, replay limit, timeouts) keeps the builder's
    // defaults; the builder clamps `max_attempts` to its default cap of 5.
    RetryPolicy::builder()
        .max_attempts(max_attempts)
        .initial_backoff(initial_backoff)
        .max_backoff(max_backoff)
        .backoff_multiplier(multiplier)
        .retryable_codes(codes.iter())
        .build()
        .map_err(|err| ConfigError::new(path, err.to_string()))
}

fn parse_hedging(path: &str, value: &Value) -> Result<HedgingPolicy, ConfigError> {
    let obj = object(path, value)?;
    let max_attempts = attempts_field(obj, path)?.min(DEFAULT_MAX_ATTEMPTS_CAP);
    let hedging_delay = duration_field(obj, path, "hedgingDelay", false)?
        .map_or(Duration::ZERO, |(_, delay)| delay);
    let non_fatal_codes = code_list_field(
        obj,
        path,
        "nonFatalStatusCodes",
        false,
        "OK is not a failure; an OK answer always ends a hedged call",
    )?
    .unwrap_or_default();
    Ok(HedgingPolicy {
        max_attempts,
        hedging_delay,
        non_fatal_codes,
        per_attempt_timeout: None,
    })
}

fn parse_throttling(path: &str, value: &Value) -> Result<RetryThrottling, ConfigError> {
    let obj = object(path, value)?;

    let tokens_path = join(path, "maxTokens");
    let tokens = field(obj, "maxTokens").ok_or_else(|| required(tokens_path.clone()))?;
    let max_milli_tokens = match tokens.as_f64() {
        Some(t) if t > 0.0 && t <= MAX_TOKENS => milli(t),
        _ => {
            return Err(ConfigError::new(
                tokens_path,
                format!(
                    "must be a number greater than 0 and at most 1000, got {}",
                    describe(tokens)
                ),
            ));
        }
    };
    if max_milli_tokens == 0 {
        return Err(ConfigError::new(
            tokens_path,
            format!("{tokens} is 0 once truncated to 3 decimal places; it must be > 0"),
        ));
    }

    let ratio_path = join(path, "tokenRatio");
    let ratio = field(obj, "tokenRatio").ok_or_else(|| required(ratio_path.clone()))?;
    let token_ratio_milli = match ratio.as_f64() {
        Some(r) if r.is_finite() && r > 0.0 => milli(r),
        _ => {
            return Err(ConfigError::new(
                ratio_path,
                format!("must be a number > 0, got {}", describe(ratio)),
            ));
        }
    };
    if token_ratio_milli == 0 {
        return Err(ConfigError::new(
            ratio_path,
            format!("{ratio} is 0 once truncated to 3 decimal places; it must be > 0"),
        ));
    }
    Ok(RetryThrottling {
        max_milli_tokens,
        token_ratio_milli,
    })
}

// ---------------------------------------------------------------------------
// Field helpers. Each error names the full JSON path of the value.

/// `obj[key]`, with JSON `null` treated as absent (as in proto3 JSON).
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn required(path: String) -> ConfigError {
    ConfigError::new(path, "is required")
}

fn object<'a>(path: &str, value: &'a Value) -> Result<&'a Map<String, Value>, ConfigError> {
    value.as_object().ok_or_else(|| {
        ConfigError::new(path, format!("must be an object, got {}", describe(value)))
    })
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<&'a str>, ConfigError> {
    match field(obj, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ConfigError::new(
            join(path, key),
            format!("must be a string, got {}", describe(other)),
        )),
    }
}

/// A duration field, with its raw text (for messages).
fn duration_field<'a>(
    obj: &'a Map<String, Value>,
    path: &str,
    key: &str,
    is_required: bool,
) -> Result<Option<(&'a str, Duration)>, ConfigError> {
    let raw = match field(obj, key) {
        None if is_required => return Err(required(join(path, key))),
        None => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ConfigError::new(
                join(path, key),
                format!(
                    "must be a duration string such as \"1.5s\", got {}",
                    describe(other)
                ),
            ));
        }
    };
    let duration = parse_duration(raw).map_err(|why| ConfigError::new(join(path, key), why))?;
    Ok(Some((raw, duration)))
}

fn positive_duration_field(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Duration, ConfigError> {
    match duration_field(obj, path, key, true)? {
        Some((_, duration)) if !duration.is_zero() => Ok(duration),
        Some((raw, _)) => Err(ConfigError::new(
            join(path, key),
            format!("{} must be > 0", quote(raw)),
        )),
        None => Err(required(join(path, key))),
    }
}

/// `maxAttempts`: an integer > 1. An integral float (`4.0`) counts as an
/// integer; huge values saturate (and are clamped by the caller).
fn attempts_field(obj: &Map<String, Value>, path: &str) -> Result<u32, ConfigError> {
    let attempts_path = join(path, "maxAttempts");
    let value = field(obj, "maxAttempts").ok_or_else(|| required(attempts_path.clone()))?;
    match value.as_f64() {
        // `as` saturates: anything above u32::MAX becomes u32::MAX.
        Some(n) if n.fract() == 0.0 && n > 1.0 => Ok(n as u32),
        _ => Err(ConfigError::new(
            attempts_path,
            format!("must be an integer > 1, got {}", describe(value)),
        )),
    }
}

/// A list of status codes; OK is rejected with `ok_reason`.
fn code_list_field(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
    non_empty: bool,
    ok_reason: &str,
) -> Result<Option<CodeSet>, ConfigError> {
    let list_path = join(path, key);
    let list = match field(obj, key) {
        None if non_empty => return Err(required(list_path)),
        None => return Ok(None),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(ConfigError::new(
                list_path,
                format!("must be an array of status codes, got {}", describe(other)),
            ));
        }
    };
    if non_empty && list.is_empty() {
        return Err(ConfigError::new(
            list_path,
            "must not be empty (to disable retries, leave out the retryPolicy)",
        ));
    }
    let mut codes = CodeSet::EMPTY;
    for (i, item) in list.iter().enumerate() {
        let code =
            parse_code(item).map_err(|why| ConfigError::new(format!("{list_path}[{i}]"), why))?;
        if code == Code::Ok {
            return Err(ConfigError::new(format!("{list_path}[{i}]"), ok_reason));
        }
        codes.insert(code);
    }
    Ok(Some(codes))
}

/// `x` (finite, > 0) × 1000, with decimals beyond the third truncated.
///
/// The JSON number has already become an `f64`, so `0.1234` may be stored as
/// `0.12339999…`. Rounding to 9 decimal places first (far finer than the
/// milli unit, far coarser than the representation error) recovers the
/// decimal the config was written with before truncating.
fn milli(x: f64) -> u32 {
    let text = format!("{x:.9}");
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let digits = whole
        .bytes()
        .chain(fraction.bytes().chain(std::iter::repeat(b'0')).take(3));
    let mut value = 0u64;
    for b in digits {
        // `{:.9}` of a positive finite number prints only digits and one '.'.
        value = value
            .saturating_mul(10)
            .saturating_add(u64::from(b.saturating_sub(b'0')));
    }
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// A short description of a JSON value, for "got ..." in messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {}", quote(s)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// `s` quoted and escaped, shortened if it is long.
fn quote(s: &str) -> String {
    const LIMIT: usize = 64;
    match s.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{:?}…", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// A method name as users write it, for messages.
fn display_name(service: &str, method: &str) -> String {
    match (service.is_empty(), method.is_empty()) {
        (true, _) => "the default name {}".to_owned(),
        (false, true) => format!("service {}", quote(service)),
        (false, false) => format!("method {}", quote(&format!("{service}/{method}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milli_truncates_beyond_the_third_decimal_exactly() {
        assert_eq!(milli(0.1), 100);
        assert_eq!(milli(0.1234), 123);
        assert_eq!(milli(0.1239), 123);
        assert_eq!(milli(0.0004), 0);
        assert_eq!(milli(0.001), 1);
        assert_eq!(milli(1.0), 1000);
        assert_eq!(milli(10.0), 10_000);
        assert_eq!(milli(1000.0), 1_000_000);
        // 1.001 × 1000 is 1000.999… in binary floating point.
        assert!(std::hint::black_box(1.001_f64) * 1000.0 < 1001.0);
        assert_eq!(milli(1.001), 1001);
        assert_eq!(milli(4.35), 4350);
        assert_eq!(milli(0.29), 290);
        assert_eq!(milli(1e300), u32::MAX);
    }

    #[test]
    fn quote_shortens_long_strings() {
        assert_eq!(quote("0s"), "\"0s\"");
        let long = "x".repeat(100);
        let quoted = quote(&long);
        assert!(quoted.ends_with('…'));
        assert_eq!(quoted.chars().filter(|c| *c == 'x').count(), 64);
        // Multi-byte characters are never split.
        let _ = quote(&"é".repeat(100));
    }

    #[test]
    fn lookup_structures_are_indices_into_method_configs() {
        let config = ServiceConfig::from_json(
            r#"{"methodConfig": [
                {"name": [{"service": "a", "method": "m"}, {"service": "a"}], "timeout": "1s"},
                {"name": [{}], "timeout": "2s"}]}"#,
        )
        .unwrap();
        assert_eq!(config.default, Some(1));
        let entry = &config.services["a"];
        assert_eq!(entry.service_level, Some(0));
        assert_eq!(entry.methods.get("m"), Some(&0));
        assert_eq!(entry.methods.len(), 1);
        assert_eq!(config.services.len(), 1);
    }
}
