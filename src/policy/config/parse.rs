//! Reading a service config's JSON: every field validated as A6 says, and
//! every error naming the JSON path of the value it rejects.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use serde_json::Value;

use super::error::ConfigError;
use super::json::{
    attempts_field, code_list_field, describe, display_name, duration_field, field, join, milli,
    object, positive_duration_field, quote, required, string_field,
};
use super::{HedgingPolicy, MethodConfig, RetryThrottling, ServiceConfig};
use crate::policy::retry::{DEFAULT_MAX_ATTEMPTS_CAP, RetryPolicy};

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
