//! `grpc-timeout`: reading the caller's deadline and writing each attempt's.
//!
//! tonic's `Request::set_timeout` only writes the header, and the `Channel`
//! enforces it per HTTP request. Since one call becomes several HTTP requests
//! here, the layer owns the call's deadline: it reads the header once, then
//! rewrites it on every attempt to the time that is left.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header::HeaderName};

/// The `grpc-timeout` request header.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits followed by one unit,
/// `H`, `M`, `S`, `m`, `u` or `n`. Anything else is `None`.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::deadline::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout(b"150m"), Some(Duration::from_millis(150)));
/// assert_eq!(parse_grpc_timeout(b"1x"), None);
/// assert_eq!(parse_grpc_timeout(b"123456789S"), None); // more than 8 digits
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 99_999_999, so no overflow in u64 even in hours (× 3600).
    let n = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` in the most precise unit whose value fits in 8 digits.
/// The value is rounded down, so the server never waits past our deadline.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::deadline::encode_grpc_timeout;
///
/// assert_eq!(encode_grpc_timeout(Duration::from_millis(50)), "50000000n");
/// assert_eq!(encode_grpc_timeout(Duration::from_secs(30)), "30000000u");
/// ```
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let candidates = [
        (timeout.as_nanos(), 'n'),
        (timeout.as_micros(), 'u'),
        (timeout.as_millis(), 'm'),
        (u128::from(timeout.as_secs()), 'S'),
        (u128::from(timeout.as_secs() / 60), 'M'),
    ];
    for (value, unit) in candidates {
        if value <= MAX {
            return format!("{value}{unit}");
        }
    }
    // Hours: clamp rather than fail; 99,999,999 hours is over 11,000 years.
    format!("{}H", u128::from(timeout.as_secs() / 3600).min(MAX))
}

/// Writes `timeout` as the request's `grpc-timeout`.
pub(crate) fn set_request_timeout(headers: &mut HeaderMap, timeout: Duration) {
    let value = HeaderValue::try_from(encode_grpc_timeout(timeout))
        .expect("digits and a unit letter are a valid header value");
    headers.insert(GRPC_TIMEOUT, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        let cases: [(&[u8], Duration); 6] = [
            (b"2H", Duration::from_secs(7200)),
            (b"3M", Duration::from_secs(180)),
            (b"4S", Duration::from_secs(4)),
            (b"5m", Duration::from_millis(5)),
            (b"6u", Duration::from_micros(6)),
            (b"99999999n", Duration::from_nanos(99_999_999)),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_grpc_timeout(raw), Some(want));
        }
        assert_eq!(
            parse_grpc_timeout(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn malformed_timeouts_are_none_never_a_panic() {
        let bad: [&[u8]; 11] = [
            b"",
            b"m",
            b"10",
            b"10x",
            b"-5m",
            b"1.5S",
            b" 5m",
            b"5m ",
            b"123456789m",
            b"\xff\xfem",
            b"5mm",
        ];
        for raw in bad {
            assert_eq!(parse_grpc_timeout(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn encoding_round_trips_and_never_overstates() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(99),
            Duration::from_millis(100),
            Duration::from_secs(99),
            Duration::from_secs(100),
            Duration::from_secs(86_400 * 365),
            Duration::from_nanos(123_456_789_123),
        ] {
            let enc = encode_grpc_timeout(d);
            let back = parse_grpc_timeout(enc.as_bytes()).unwrap();
            assert!(back <= d, "{d:?} encoded as {enc} reads back as {back:?}");
            assert!(d - back < d / 1000 + Duration::from_nanos(1), "{d:?} {enc}");
        }
        assert_eq!(encode_grpc_timeout(Duration::MAX), "99999999H");
    }
}
