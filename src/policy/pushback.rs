//! Server-chosen retry delays: `grpc-retry-pushback-ms` (gRFC A6) and
//! `google.rpc.RetryInfo` (AIP-194).
//!
//! Both arrive in a trailers-only response's headers, so a server that
//! knows when it will recover (or that it will not) can say so. Neither can
//! make a non-retryable code retryable or raise `maxAttempts`: they only
//! choose the delay, or, for a pushback, forbid the retry.
//!
//! Everything here is parsed from bytes the server controls, so nothing may
//! panic: garbage is a "stop" for pushback (as in grpc-go) and is ignored
//! for `RetryInfo`.

use std::time::Duration;

use http::HeaderMap;
use http::header::HeaderName;
use prost::Message;

use crate::classify::{GRPC_STATUS_DETAILS, decode_status_details};

/// The `grpc-retry-pushback-ms` trailer.
pub const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

const RETRY_INFO_TYPE: &str = "google.rpc.RetryInfo";

/// What the server's pushback says about the next retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushback {
    /// No pushback: the policy's backoff applies.
    Absent,
    /// Retry after exactly this long (no jitter); the backoff restarts.
    RetryAfter(Duration),
    /// Do not retry: a negative, unparseable or repeated value.
    Stop,
}

/// Reads `grpc-retry-pushback-ms`: one ASCII signed 32-bit integer.
///
/// ```
/// use http::HeaderMap;
/// use std::time::Duration;
/// use tonic_retry::pushback::{Pushback, server_pushback};
///
/// let mut headers = HeaderMap::new();
/// assert_eq!(server_pushback(&headers), Pushback::Absent);
/// headers.insert("grpc-retry-pushback-ms", "250".parse().unwrap());
/// assert_eq!(server_pushback(&headers), Pushback::RetryAfter(Duration::from_millis(250)));
/// headers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
/// assert_eq!(server_pushback(&headers), Pushback::Stop);
/// ```
pub fn server_pushback(headers: &HeaderMap) -> Pushback {
    let mut values = headers.get_all(&GRPC_RETRY_PUSHBACK_MS).iter();
    let Some(value) = values.next() else {
        return Pushback::Absent;
    };
    if values.next().is_some() {
        // grpc-go: more than one value means "do not retry".
        return Pushback::Stop;
    }
    let parsed = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.parse::<i32>().ok());
    match parsed {
        Some(ms) if ms >= 0 => Pushback::RetryAfter(Duration::from_millis(ms as u64)),
        _ => Pushback::Stop,
    }
}

/// The delay of a `google.rpc.RetryInfo` inside `grpc-status-details-bin`,
/// if there is a valid, non-negative one. Malformed details (bad base64, bad
/// protobuf, a negative or out-of-range delay) are ignored, with a debug
/// event.
pub fn retry_info_delay(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(&GRPC_STATUS_DETAILS)?;
    let Some(bytes) = decode_status_details(value.as_bytes()) else {
        tracing::debug!("ignoring grpc-status-details-bin: not base64");
        return None;
    };
    let status = match tonic_types::pb::Status::decode(bytes.as_slice()) {
        Ok(status) => status,
        Err(error) => {
            tracing::debug!(%error, "ignoring grpc-status-details-bin: not a google.rpc.Status");
            return None;
        }
    };
    let detail = status.details.iter().find(|any| {
        any.type_url
            .rsplit('/')
            .next()
            .is_some_and(|name| name == RETRY_INFO_TYPE)
    })?;
    let info = match tonic_types::pb::RetryInfo::decode(detail.value.as_slice()) {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "ignoring a RetryInfo that does not decode");
            return None;
        }
    };
    let delay = info.retry_delay?;
    let (Ok(seconds), Ok(nanos)) = (u64::try_from(delay.seconds), u32::try_from(delay.nanos))
    else {
        tracing::debug!(?delay, "ignoring a negative RetryInfo delay");
        return None;
    };
    if nanos >= 1_000_000_000 {
        tracing::debug!(?delay, "ignoring a RetryInfo delay with out-of-range nanos");
        return None;
    }
    Some(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD_NO_PAD;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&GRPC_RETRY_PUSHBACK_MS, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn valid_pushback_is_an_exact_delay() {
        assert_eq!(
            server_pushback(&headers(&["0"])),
            Pushback::RetryAfter(Duration::ZERO)
        );
        assert_eq!(
            server_pushback(&headers(&["2147483647"])),
            Pushback::RetryAfter(Duration::from_millis(i32::MAX as u64))
        );
    }

    #[test]
    fn garbage_negative_or_repeated_pushback_means_stop() {
        for bad in [
            "-1",
            "-2147483648",
            "abc",
            "",
            "1.5",
            " 5",
            "5 ",
            "2147483648",
            "0x10",
            "1e3",
        ] {
            assert_eq!(server_pushback(&headers(&[bad])), Pushback::Stop, "{bad:?}");
        }
        assert_eq!(server_pushback(&headers(&["10", "10"])), Pushback::Stop);
        let mut h = HeaderMap::new();
        h.insert(
            &GRPC_RETRY_PUSHBACK_MS,
            http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(server_pushback(&h), Pushback::Stop);
    }

    fn details_header(status: &tonic_types::pb::Status) -> HeaderMap {
        let mut h = HeaderMap::new();
        let encoded = STANDARD_NO_PAD.encode(status.encode_to_vec());
        h.insert(&GRPC_STATUS_DETAILS, encoded.parse().unwrap());
        h
    }

    fn retry_info(seconds: i64, nanos: i32) -> prost_types::Any {
        let info = tonic_types::pb::RetryInfo {
            retry_delay: Some(prost_types::Duration { seconds, nanos }),
        };
        prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }
    }

    fn status_with(details: Vec<prost_types::Any>) -> tonic_types::pb::Status {
        tonic_types::pb::Status {
            code: 14,
            message: "later".into(),
            details,
        }
    }

    #[test]
    fn retry_info_delay_is_read_from_the_details() {
        let h = details_header(&status_with(vec![retry_info(1, 500_000_000)]));
        assert_eq!(retry_info_delay(&h), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn retry_info_is_found_among_other_details() {
        let other = prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.DebugInfo".into(),
            value: vec![1, 2, 3],
        };
        let h = details_header(&status_with(vec![other, retry_info(0, 1_000_000)]));
        assert_eq!(retry_info_delay(&h), Some(Duration::from_millis(1)));
    }

    #[test]
    fn malformed_retry_info_is_ignored_never_a_panic() {
        let mut h = HeaderMap::new();
        for garbage in ["!!!", "AAAA", "////", "CAU"] {
            h.insert(&GRPC_STATUS_DETAILS, garbage.parse().unwrap());
            assert_eq!(retry_info_delay(&h), None, "{garbage}");
        }
        let bad_value = prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert_eq!(
            retry_info_delay(&details_header(&status_with(vec![bad_value]))),
            None
        );
        for (s, n) in [(-1, 0), (0, -5), (0, 1_000_000_000), (i64::MIN, i32::MIN)] {
            let h = details_header(&status_with(vec![retry_info(s, n)]));
            assert_eq!(retry_info_delay(&h), None, "{s}s {n}ns");
        }
        assert_eq!(
            retry_info_delay(&details_header(&status_with(vec![]))),
            None
        );
        assert_eq!(retry_info_delay(&HeaderMap::new()), None);
    }

    #[test]
    fn random_bytes_in_the_details_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut h = HeaderMap::new();
        for _ in 0..5000 {
            let len = rng.usize(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let encoded = STANDARD_NO_PAD.encode(&bytes);
            h.insert(&GRPC_STATUS_DETAILS, encoded.parse().unwrap());
            let _ = retry_info_delay(&h);
        }
    }
}
