//! Reading JSON fields for the service config parser: each reader names
//! the JSON path of a value it rejects, and none panics on any input.

use std::time::Duration;

use serde_json::{Map, Value};
use tonic::Code;

use super::error::ConfigError;
use crate::classify::code_name;
use crate::policy::codes::CodeSet;

/// The largest duration proto3 accepts: 10 000 years, in seconds.
const MAX_DURATION_SECS: u64 = 315_576_000_000;

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
