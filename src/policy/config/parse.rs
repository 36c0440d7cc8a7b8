//! Reading a service config's JSON: every field validated as A6 says, and
//! every error naming the JSON path of the value it rejects.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use serde_json::Value;
use tonic::Code;

use super::json::{
    attempts_field, code_list_field, describe, display_name, duration_field, field, join, milli,
    object, positive_duration_field, quote, required, string_field,
};
use super::{ConfigError, HedgingPolicy, MethodConfig, RetryThrottling, ServiceConfig};
use crate::classify::code_name;
use crate::policy::retry::{DEFAULT_MAX_ATTEMPTS_CAP, RetryPolicy};

/// The largest duration proto3 accepts: 10 000 years, in seconds.
const MAX_DURATION_SECS: u64 = 315_576_000_000;

/// The upper bound of `retryThrottling.maxTokens` (A6).
const MAX_TOKENS: f64 = 1000.0;

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
}

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
