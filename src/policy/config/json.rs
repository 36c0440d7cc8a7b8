//! Reading JSON fields for the service config parser: each reader names
//! the JSON path of a value it rejects, and none panics on any input.

use std::time::Duration;

use serde_json::{Map, Value};
use tonic::Code;

use super::ConfigError;
use super::parse::{parse_code, parse_duration};
use crate::policy::codes::CodeSet;

/// `obj[key]`, with JSON `null` treated as absent (as in proto3 JSON).
pub(super) fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn required(path: String) -> ConfigError {
    ConfigError::new(path, "is required")
}

pub(super) fn object<'a>(
    path: &str,
    value: &'a Value,
) -> Result<&'a Map<String, Value>, ConfigError> {
    value.as_object().ok_or_else(|| {
        ConfigError::new(path, format!("must be an object, got {}", describe(value)))
    })
}

pub(super) fn string_field<'a>(
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
pub(super) fn duration_field<'a>(
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

pub(super) fn positive_duration_field(
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
pub(super) fn attempts_field(obj: &Map<String, Value>, path: &str) -> Result<u32, ConfigError> {
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
pub(super) fn code_list_field(
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
pub(super) fn milli(x: f64) -> u32 {
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
pub(super) fn describe(value: &Value) -> String {
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
pub(super) fn quote(s: &str) -> String {
    const LIMIT: usize = 64;
    match s.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{:?}…", &s[..end]),
        None => format!("{s:?}"),
    }
}

/// A method name as users write it, for messages.
pub(super) fn display_name(service: &str, method: &str) -> String {
    match (service.is_empty(), method.is_empty()) {
        (true, _) => "the default name {}".to_owned(),
        (false, true) => format!("service {}", quote(service)),
        (false, false) => format!("method {}", quote(&format!("{service}/{method}"))),
    }
}
