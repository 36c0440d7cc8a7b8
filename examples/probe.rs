//! `probe`: try a retry policy against any live gRPC server, grpcurl-style.
//!
//! It sends raw protobuf request bytes (so it needs no `.proto` file) through
//! one [`RetryLayer`] built from a gRPC service config, and prints one JSON
//! line per call — its final code, message, how many attempts the layer
//! made and how long it took — then a summary line.
//!
//! ```text
//! cargo run --example probe -- --target http://127.0.0.1:50051 \
//!     --method /retry.test.v1.Echo/Unary \
//!     --service-config examples/service-config.json --calls 10 --concurrency 4
//! ```
//!
//! Run with `--help` for every flag. Bad input exits with status 2; a call
//! that fails is a result, not an error (exit status 0).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::client::Grpc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, BinaryMetadataValue,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, GrpcMethod, Request, Status};
use tonic_retry::{GRPC_PREVIOUS_RPC_ATTEMPTS, Retry, RetryLayer, ServiceConfig, code_name};
use tower::ServiceBuilder;

const USAGE: &str = "\
probe: send raw gRPC unary calls through a tonic-retry layer and report what it did

USAGE:
    cargo run --example probe -- --target URI --method /pkg.Service/Method [OPTIONS]

REQUIRED:
    --target URI             the server, e.g. http://127.0.0.1:50051 (plaintext HTTP/2;
                             a bare host:port means http://host:port)
    --method PATH            the full method path, e.g. /pkg.Service/Method

OPTIONS:
    --service-config FILE    gRPC service-config JSON (methodConfig, retryThrottling);
                             without it every call passes straight through (no retries)
    --data-hex HEX           the request message: protobuf bytes as hex
    --data-file FILE         the request message: the raw protobuf bytes in FILE
                             (default: an empty message)
    -H, --header KEY:VALUE   request metadata, repeatable; \"{call}\" in VALUE becomes the
                             call index; a KEY ending in -bin takes a base64 VALUE
    --calls N                how many calls to make (default 1)
    --concurrency C          how many calls are in flight at once (default 1: sequential)
    --timeout DURATION       each call's deadline, e.g. 1.5s, 300ms, 2m (default: none)
    -h, --help               print this help

All calls share one channel and one layer, so retry throttling is shared too.

OUTPUT:
    stdout  one JSON object per call, in call order:
              {\"call\":0,\"code\":\"OK\",\"message\":\"\",\"attempts\":2,\"elapsed_ms\":61.4}
            then {\"summary\":{\"calls\":N,\"codes\":{..},\"attempts_histogram\":{..},
                               \"latency_ms\":{\"p50\":..,\"p99\":..}}}
    stderr  what is being probed, and errors
    exit    0 when the calls ran, whatever their status; 2 on bad input";

/// Where a call's `{call}` index goes in a header value.
const CALL_PLACEHOLDER: &str = "{call}";

// ---------------------------------------------------------------------------
// Command line.

/// What the command line asks for.
enum Command {
    Help,
    Run(Box<Options>),
}

/// A validated command line: files read, hex decoded, headers parsed.
struct Options {
    endpoint: Endpoint,
    target: String,
    path: PathAndQuery,
    service: &'static str,
    method: &'static str,
    config: Option<(String, ServiceConfig)>,
    data: Bytes,
    headers: Vec<Header>,
    calls: usize,
    concurrency: usize,
    timeout: Option<Duration>,
}

/// One `-H` flag.
enum Header {
    /// An ASCII value, possibly with `{call}` placeholders.
    Ascii(AsciiMetadataKey, String),
    /// A `-bin` key with its decoded value.
    Binary(BinaryMetadataKey, BinaryMetadataValue),
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut target = None;
    let mut method = None;
    let mut config_file = None;
    let mut data_hex = None;
    let mut data_file = None;
    let mut headers = Vec::new();
    let mut calls = None;
    let mut concurrency = None;
    let mut timeout = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // `--flag=value` is the same as `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--target" => &mut target,
            "--method" => &mut method,
            "--service-config" => &mut config_file,
            "--data-hex" => &mut data_hex,
            "--data-file" => &mut data_file,
            "--calls" => &mut calls,
            "--concurrency" => &mut concurrency,
            "--timeout" => &mut timeout,
            "-H" | "--header" => {
                let value = flag_value(&flag, inline, &mut args)?;
                headers.push(parse_header(&value)?);
                continue;
            }
            _ if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown flag {flag}"));
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        };
        let value = flag_value(&flag, inline, &mut args)?;
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given more than once"));
        }
    }

    let target = target.ok_or("missing required flag --target")?;
    let (endpoint, target) = parse_target(&target)?;
    let method = method.ok_or("missing required flag --method")?;
    let (path, service, method) = parse_method(&method)?;
    let config = match config_file {
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("--service-config {file}: {e}"))?;
            let config = ServiceConfig::from_json(&text)
                .map_err(|e| format!("--service-config {file}: {e}"))?;
            Some((file, config))
        }
        None => None,
    };
    let data = match (data_hex, data_file) {
        (Some(_), Some(_)) => return Err("--data-hex and --data-file are exclusive".into()),
        (Some(hex), None) => parse_hex(&hex).map_err(|e| format!("--data-hex: {e}"))?,
        (None, Some(file)) => std::fs::read(&file)
            .map_err(|e| format!("--data-file {file}: {e}"))?
            .into(),
        (None, None) => Bytes::new(),
    };
    let calls = match calls {
        Some(n) => parse_count("--calls", &n)?,
        None => 1,
    };
    let concurrency = match concurrency {
        Some(n) => parse_count("--concurrency", &n)?,
        None => 1,
    };
    let timeout = match timeout {
        Some(t) => Some(parse_timeout(&t).map_err(|e| format!("--timeout: {e}"))?),
        None => None,
    };
    Ok(Command::Run(Box::new(Options {
        endpoint,
        target,
        path,
        service,
        method,
        config,
        data,
        headers,
        calls,
        concurrency,
        timeout,
    })))
}

fn flag_value(
    flag: &str,
    inline: Option<String>,
    rest: &mut impl Iterator<Item = String>,
) -> Result<String, String> {
    inline
        .or_else(|| rest.next())
        .ok_or_else(|| format!("{flag} needs a value"))
}

/// The endpoint and its canonical URI; a bare `host:port` means plaintext.
fn parse_target(target: &str) -> Result<(Endpoint, String), String> {
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| format!("--target {target:?}: {e}"))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "--target {target:?}: TLS is not supported (this example's tonic has no TLS feature)"
            ));
        }
        _ => return Err(format!("--target {target:?}: the scheme must be http")),
    }
    if parsed.authority().is_none() {
        return Err(format!("--target {target:?}: no host"));
    }
    let endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("--target {target:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    Ok((endpoint, uri))
}

/// `/pkg.Service/Method` → its path, service and method. The names are
/// leaked once, as `GrpcMethod<'static>` (what the layer looks up) needs.
fn parse_method(path: &str) -> Result<(PathAndQuery, &'static str, &'static str), String> {
    let bad = |why: &str| format!("--method {path:?}: {why} (expected /pkg.Service/Method)");
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with '/'"))?;
    let (service, method) = rest
        .split_once('/')
        .ok_or_else(|| bad("no '/' between service and method"))?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return Err(bad("needs exactly a service and a method"));
    }
    if path.contains(['?', '#']) || path.contains(char::is_whitespace) {
        return Err(bad("invalid character"));
    }
    let parsed = PathAndQuery::try_from(path).map_err(|e| bad(&e.to_string()))?;
    let service: &'static str = Box::leak(service.to_owned().into_boxed_str());
    let method: &'static str = Box::leak(method.to_owned().into_boxed_str());
    Ok((parsed, service, method))
}

/// `key:value` (spaces after the colon are ignored, as in `-H 'key: value'`).
fn parse_header(header: &str) -> Result<Header, String> {
    let bad = |why: String| format!("-H {header:?}: {why} (expected KEY:VALUE)");
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

fn parse_hex(hex: &str) -> Result<Bytes, String> {
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

fn parse_count(flag: &str, n: &str) -> Result<usize, String> {
    match n.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} {n:?}: expected a positive integer")),
    }
}

/// A positive decimal number and a unit: `ns`, `us`, `ms`, `s`, `m` or `h`.
fn parse_timeout(text: &str) -> Result<Duration, String> {
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

// ---------------------------------------------------------------------------
// A codec for raw message bytes.

/// Sends and receives message bodies as opaque bytes: no protobuf schema.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// ---------------------------------------------------------------------------
// Calls and output.

/// One call's outcome, as printed.
#[derive(Debug, Serialize)]
struct CallLine {
    call: usize,
    code: &'static str,
    message: String,
    attempts: u32,
    elapsed_ms: f64,
}

#[derive(Serialize)]
struct SummaryLine {
    summary: Summary,
}

#[derive(Serialize)]
struct Summary {
    calls: usize,
    codes: BTreeMap<&'static str, usize>,
    attempts_histogram: BTreeMap<u32, usize>,
    latency_ms: Latency,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p99: f64,
}

type Client = Grpc<Retry<Channel>>;

/// What every call sends.
struct Job {
    path: PathAndQuery,
    service: &'static str,
    method: &'static str,
    data: Bytes,
    headers: Vec<Header>,
    timeout: Option<Duration>,
}

async fn one_call(client: &mut Client, job: &Job, index: usize) -> CallLine {
    let mut request = Request::new(job.data.clone());
    let index_text = index.to_string();
    for header in &job.headers {
        match header {
            Header::Ascii(key, template) => {
                let value = template.replace(CALL_PLACEHOLDER, &index_text);
                let value = AsciiMetadataValue::try_from(value)
                    .expect("validated with a numeric index when parsed");
                request.metadata_mut().append(key.clone(), value);
            }
            Header::Binary(key, value) => {
                request
                    .metadata_mut()
                    .append_bin(key.clone(), value.clone());
            }
        }
    }
    if let Some(timeout) = job.timeout {
        request.set_timeout(timeout);
    }
    // What generated clients do, so that per-method configs match by name.
    request
        .extensions_mut()
        .insert(GrpcMethod::new(job.service, job.method));

    let start = Instant::now();
    let result = match client.ready().await {
        Ok(()) => client.unary(request, job.path.clone(), RawCodec).await,
        Err(e) => Err(Status::from_error(e)),
    };
    let elapsed = start.elapsed();

    let (code, message, metadata) = match &result {
        Ok(response) => (Code::Ok, String::new(), response.metadata()),
        Err(status) => (
            status.code(),
            status.message().to_owned(),
            status.metadata(),
        ),
    };
    // The layer adds `grpc-previous-rpc-attempts` when it made more than one.
    let previous = metadata
        .get(GRPC_PREVIOUS_RPC_ATTEMPTS.as_str())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(0);
    CallLine {
        call: index,
        code: code_name(code),
        message,
        attempts: previous.saturating_add(1),
        elapsed_ms: round_ms(elapsed.as_secs_f64() * 1000.0),
    }
}

/// Milliseconds to one decimal.
fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(lines: &[CallLine]) -> SummaryLine {
    let mut codes = BTreeMap::new();
    let mut attempts_histogram = BTreeMap::new();
    for line in lines {
        *codes.entry(line.code).or_insert(0) += 1;
        *attempts_histogram.entry(line.attempts).or_insert(0) += 1;
    }
    let mut latencies: Vec<f64> = lines.iter().map(|l| l.elapsed_ms).collect();
    latencies.sort_by(f64::total_cmp);
    SummaryLine {
        summary: Summary {
            calls: lines.len(),
            codes,
            attempts_histogram,
            latency_ms: Latency {
                p50: percentile(&latencies, 50.0),
                p99: percentile(&latencies, 99.0),
            },
        },
    }
}

fn print_json(value: &impl Serialize) -> std::io::Result<()> {
    let line = serde_json::to_string(value).map_err(std::io::Error::other)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

/// A human description of what the config does for the probed method.
fn describe(options: &Options) -> String {
    let Some((file, config)) = &options.config else {
        return "no service config: calls pass straight through".into();
    };
    let mut text = format!("service config {file}: ");
    match config.method_config(options.service, options.method) {
        None => text.push_str("no entry for this method (passes straight through)"),
        Some(m) => {
            match (&m.retry, &m.hedging) {
                (Some(retry), _) => {
                    let _ = write!(text, "retryPolicy maxAttempts {}", retry.max_attempts());
                }
                (None, Some(hedging)) => {
                    let _ = write!(text, "hedgingPolicy maxAttempts {}", hedging.max_attempts);
                }
                (None, None) => text.push_str("no retry policy"),
            }
            if let Some(timeout) = m.timeout {
                let _ = write!(text, ", timeout {timeout:?}");
            }
        }
    }
    match config.retry_throttling() {
        Some(t) => {
            let _ = write!(
                text,
                "; throttling maxTokens {} tokenRatio {}",
                f64::from(t.max_milli_tokens) / 1000.0,
                f64::from(t.token_ratio_milli) / 1000.0
            );
        }
        None => text.push_str("; no throttling"),
    }
    text
}

async fn run(options: Options) -> std::io::Result<()> {
    eprintln!(
        "probe: {} {}: {} call(s), concurrency {}, timeout {}; {}",
        options.target,
        options.path,
        options.calls,
        options.concurrency,
        options
            .timeout
            .map_or_else(|| "none".to_owned(), |t| format!("{t:?}")),
        describe(&options),
    );

    // One channel and one layer for every call: throttling state is shared.
    let config = match options.config {
        Some((_, config)) => config,
        None => ServiceConfig::from_json("{}").expect("the empty config is valid"),
    };
    let layer = RetryLayer::from_service_config(config);
    let channel = options.endpoint.connect_lazy();
    let client: Client = Grpc::new(ServiceBuilder::new().layer(layer).service(channel));

    let calls = options.calls;
    let job = Arc::new(Job {
        path: options.path,
        service: options.service,
        method: options.method,
        data: options.data,
        headers: options.headers,
        timeout: options.timeout,
    });
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..options.concurrency.min(calls) {
        let (mut client, job, next, tx) = (client.clone(), job.clone(), next.clone(), tx.clone());
        tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= calls {
                    break;
                }
                let line = one_call(&mut client, &job, index).await;
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    // Print in call order as soon as each next line is known.
    let mut pending = BTreeMap::new();
    let mut printed = Vec::with_capacity(calls);
    while let Some(line) = rx.recv().await {
        pending.insert(line.call, line);
        while let Some(line) = pending.remove(&printed.len()) {
            print_json(&line)?;
            printed.push(line);
        }
    }
    print_json(&summarize(&printed))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(options)) => *options,
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, whatever the underlying error printed.
            let e = e.replace(['\r', '\n'], " ");
            eprintln!("probe: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probe: writing the results: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "1", "s", "-1s", "0s", "1x", "1.2.3s", "ms"] {
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
    }
}
