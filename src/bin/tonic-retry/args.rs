//! Flags shared by several subcommands, and their parsers.

use std::io::Read as _;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use http::uri::PathAndQuery;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue, MetadataMap,
};

use crate::Failure;

/// Where a call's `{call}` index goes in a header value.
pub(crate) const CALL_PLACEHOLDER: &str = "{call}";

/// The server and method of `probe` and `bench`: positional, as in grpcurl,
/// or as the flags the first `probe` example had.
#[derive(Args, Debug)]
pub(crate) struct CallTarget {
    /// The server: http://host:port (plaintext HTTP/2), https://host:port
    /// (TLS), or host:port (plaintext).
    #[arg(value_name = "TARGET")]
    target: Option<String>,
    /// The method: pkg.Service/Method, /pkg.Service/Method or
    /// pkg.Service.Method.
    #[arg(value_name = "METHOD")]
    method: Option<String>,
    /// The server, instead of the positional TARGET.
    #[arg(long = "target", value_name = "URI")]
    target_flag: Option<String>,
    /// The method, instead of the positional METHOD.
    #[arg(long = "method", value_name = "PATH")]
    method_flag: Option<String>,
}

impl CallTarget {
    /// `(target, method)`, from the flags or the positional arguments in
    /// order (a positional argument fills whichever the flags left out).
    pub(crate) fn resolve(&self) -> Result<(String, String), Failure> {
        let mut positional = [&self.target, &self.method]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter();
        let target = match &self.target_flag {
            Some(t) => t.clone(),
            None => positional
                .next()
                .ok_or_else(|| Failure::input("missing the target: give TARGET or --target"))?,
        };
        let method = match &self.method_flag {
            Some(m) => m.clone(),
            None => positional
                .next()
                .ok_or_else(|| Failure::input("missing the method: give METHOD or --method"))?,
        };
        if let Some(extra) = positional.next() {
            return Err(Failure::input(format!("unexpected argument {extra:?}")));
        }
        Ok((target, method))
    }
}

/// TLS settings, used with `https://` targets.
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct TlsArgs {
    /// Trust only this CA certificate (PEM) for the server's certificate,
    /// instead of the platform's roots and Mozilla's.
    #[arg(long, value_name = "FILE")]
    pub(crate) cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// The server name to verify the certificate against and send as SNI
    /// and :authority, instead of the target's host.
    #[arg(long, value_name = "NAME")]
    pub(crate) authority: Option<String>,
}

/// Where message schemas come from.
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct SchemaArgs {
    /// A .proto file to compile at run time (no protoc needed), repeatable;
    /// without it the server's reflection service is asked when a schema is
    /// needed.
    #[arg(long = "proto", value_name = "FILE")]
    pub(crate) protos: Vec<PathBuf>,
    /// A directory to resolve --proto files and their imports in,
    /// repeatable (default: each --proto file's own directory).
    #[arg(long = "import-path", short = 'I', value_name = "DIR")]
    pub(crate) import_paths: Vec<PathBuf>,
}

/// What each call sends.
#[derive(Args, Debug)]
pub(crate) struct RequestArgs {
    /// The request message as JSON; @FILE reads it from FILE, @- from stdin.
    /// Needs a schema: --proto, or the server's reflection service.
    #[arg(short = 'd', long = "data", value_name = "JSON", conflicts_with_all = ["data_hex", "data_file"])]
    data: Option<String>,
    /// The request message as raw protobuf bytes, in hex.
    #[arg(long, value_name = "HEX", conflicts_with = "data_file")]
    data_hex: Option<String>,
    /// The request message: the raw protobuf bytes in FILE.
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// Request metadata KEY:VALUE, repeatable. "{call}" in VALUE becomes the
    /// call index; a KEY ending in -bin takes a base64 VALUE.
    #[arg(short = 'H', long = "header", value_name = "KEY:VALUE", value_parser = parse_header)]
    pub(crate) headers: Vec<Header>,
    /// Each call's deadline, e.g. 1.5s, 300ms, 2m (default: none).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub(crate) timeout: Option<Duration>,
}

/// The request message, as given.
#[derive(Debug, Clone)]
pub(crate) enum RequestData {
    /// No flag: the empty message (valid for every message type).
    Empty,
    /// Raw protobuf bytes (`--data-hex`, `--data-file`).
    Raw(Bytes),
    /// JSON text (`-d`), to encode with a schema.
    Json {
        /// Where it came from, for error messages.
        source: String,
        /// The JSON.
        text: String,
    },
}

impl RequestArgs {
    /// Reads the request message's flags (files and stdin included).
    pub(crate) fn data(&self) -> Result<RequestData, Failure> {
        if let Some(hex) = &self.data_hex {
            return parse_hex(hex)
                .map(RequestData::Raw)
                .map_err(|e| Failure::input(format!("--data-hex: {e}")));
        }
        if let Some(file) = &self.data_file {
            return std::fs::read(file)
                .map(|b| RequestData::Raw(b.into()))
                .map_err(|e| Failure::input(format!("--data-file {}: {e}", file.display())));
        }
        let Some(data) = &self.data else {
            return Ok(RequestData::Empty);
        };
        let Some(file) = data.strip_prefix('@') else {
            return Ok(RequestData::Json {
                source: "-d".into(),
                text: data.clone(),
            });
        };
        let text = if file.is_empty() || file == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::input(format!("-d @-: reading stdin: {e}")))?;
            text
        } else {
            std::fs::read_to_string(file).map_err(|e| Failure::input(format!("-d @{file}: {e}")))?
        };
        Ok(RequestData::Json {
            source: format!("-d {data}"),
            text,
        })
    }
}

/// One `-H` flag.
#[derive(Debug, Clone)]
pub(crate) enum Header {
    /// An ASCII value, possibly with `{call}` placeholders.
    Ascii(AsciiMetadataKey, String),
    /// A `-bin` key with its decoded value.
    Binary(BinaryMetadataKey, BinaryMetadataValue),
}

/// Adds `headers` to `metadata`, `{call}` replaced by `index`.
pub(crate) fn apply_headers(metadata: &mut MetadataMap, headers: &[Header], index: usize) {
    let index_text = index.to_string();
    for header in headers {
        match header {
            Header::Ascii(key, template) => {
                let value = template.replace(CALL_PLACEHOLDER, &index_text);
                // Validated with a numeric index when parsed, so this always
                // holds; a value that somehow fails is left out, not a panic.
                if let Ok(value) = AsciiMetadataValue::try_from(value) {
                    metadata.append(key.clone(), value);
                }
            }
            Header::Binary(key, value) => {
                metadata.append_bin(key.clone(), value.clone());
            }
        }
    }
}

/// A gRPC method: its path and the names a `GrpcMethod` needs.
#[derive(Debug, Clone)]
pub(crate) struct MethodName {
    /// `/pkg.Service/Method`.
    pub(crate) path: PathAndQuery,
    /// `pkg.Service`, leaked once: `GrpcMethod<'static>` (what the layer
    /// looks up per call) needs it for the whole run.
    pub(crate) service: &'static str,
    /// `Method`, leaked likewise.
    pub(crate) method: &'static str,
}

/// `pkg.Service/Method`, `/pkg.Service/Method` or `pkg.Service.Method`.
pub(crate) fn parse_method(text: &str) -> Result<MethodName, Failure> {
    let bad = |why: &str| {
        Failure::input(format!(
            "method {text:?}: {why} (expected pkg.Service/Method)"
        ))
    };
    if text.contains(['?', '#']) || text.contains(char::is_whitespace) {
        return Err(bad("invalid character"));
    }
    let rest = text.strip_prefix('/').unwrap_or(text);
    let (service, method) = match rest.split_once('/') {
        Some(pair) => pair,
        // grpcurl's spelling: the last dot separates the method.
        None if !text.starts_with('/') => rest
            .rsplit_once('.')
            .ok_or_else(|| bad("no '/' between service and method"))?,
        None => return Err(bad("no '/' between service and method")),
    };
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return Err(bad("needs exactly a service and a method"));
    }
    let path =
        PathAndQuery::try_from(format!("/{service}/{method}")).map_err(|e| bad(&e.to_string()))?;
    Ok(MethodName {
        path,
        service: Box::leak(service.to_owned().into_boxed_str()),
        method: Box::leak(method.to_owned().into_boxed_str()),
    })
}

/// `key:value` (spaces after the colon are ignored, as in `-H 'key: value'`).
pub(crate) fn parse_header(header: &str) -> Result<Header, String> {
    let bad = |why: String| format!("{header:?}: {why} (expected KEY:VALUE)");
    let (key, value) = header.split_once(':').ok_or_else(|| bad("no ':'".into()))?;
    let value = value.trim_start();
    if key.is_empty() {
        return Err(bad("empty key".into()));
    }
    if key.to_ascii_lowercase().ends_with("-bin") {
        let key = BinaryMetadataKey::from_bytes(key.as_bytes())
            .map_err(|e| bad(format!("invalid key: {e}")))?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(value.trim_end_matches('='))
            .map_err(|e| bad(format!("a -bin value must be base64: {e}")))?;
        Ok(Header::Binary(key, BinaryMetadataValue::from_bytes(&bytes)))
    } else {
        let key = AsciiMetadataKey::from_bytes(key.as_bytes())
            .map_err(|e| bad(format!("invalid key: {e}")))?;
        // Validate now, with an index in place of the placeholders.
        AsciiMetadataValue::try_from(value.replace(CALL_PLACEHOLDER, "0"))
            .map_err(|e| bad(format!("invalid value: {e}")))?;
        Ok(Header::Ascii(key, value.to_owned()))
    }
}

/// Hex digits (whitespace ignored) to bytes.
///
/// Not the `hex` crate: it rejects the whitespace the first `probe`
/// accepted (`0a 02 6869`), and this is a dozen lines.
pub(crate) fn parse_hex(hex: &str) -> Result<Bytes, String> {
    let digits: Vec<u8> = hex
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            b'A'..=b'F' => Ok(b - b'A' + 10),
            _ => Err(format!("{:?} is not a hex digit", char::from(b))),
        })
        .collect::<Result<_, _>>()?;
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", digits.len()));
    }
    Ok(digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
}

/// A positive integer.
pub(crate) fn parse_count(n: &str) -> Result<usize, String> {
    match n.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{n:?}: expected a positive integer")),
    }
}

/// A comma-separated list of positive integers, e.g. `1,64`.
pub(crate) fn parse_counts(list: &str) -> Result<Vec<usize>, String> {
    list.split(',').map(|n| parse_count(n.trim())).collect()
}

/// A positive decimal number and a unit: `ns`, `us`, `ms`, `s`, `m` or `h`.
///
/// Not humantime or the like: this grammar (decimals, `µs`, no spaces) is
/// the one the first `probe` accepted, and it is ten lines.
pub(crate) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("{text:?}: {why} (expected e.g. 1.5s, 300ms, 2m)");
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| bad("no unit"))?;
    let (number, unit) = text.split_at(split);
    let seconds_per_unit = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad("unknown unit")),
    };
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let duration =
        Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| bad("out of range"))?;
    if duration.is_zero() {
        return Err(bad("must be > 0"));
    }
    Ok(duration)
}

/// Milliseconds to one decimal.
pub(crate) fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// The nearest-rank percentile of sorted values (0 for none).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "1", "s", "-1s", "0s", "1x", "1.2.3s", "ms", "1e400s"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hex() {
        assert_eq!(
            parse_hex("0a 02 6869").unwrap(),
            Bytes::from_static(b"\n\x02hi")
        );
        assert_eq!(parse_hex("").unwrap(), Bytes::new());
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn method_spellings() {
        for text in ["pkg.Svc/M", "/pkg.Svc/M", "pkg.Svc.M"] {
            let m = parse_method(text).unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(
                (m.path.as_str(), m.service, m.method),
                ("/pkg.Svc/M", "pkg.Svc", "M")
            );
        }
        for bad in ["Echo", "/Echo", "a/b/c", "/a/", "a b/c", "/.M", ""] {
            assert!(parse_method(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts() {
        assert_eq!(parse_counts("1,64"), Ok(vec![1, 64]));
        assert_eq!(parse_counts(" 8 "), Ok(vec![8]));
        assert!(parse_counts("1,,2").is_err());
        assert!(parse_counts("0").is_err());
    }
}
