//! `tonic-retry probe`: calls through one `RetryLayer`, one JSON line each.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use clap::Args;
use prost_reflect::MessageDescriptor;
use serde::Serialize;
use tokio::sync::mpsc;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic::{Code, GrpcMethod, Request, Status};
use tonic_retry::{GRPC_PREVIOUS_RPC_ATTEMPTS, Retry, RetryLayer, ServiceConfig, code_name};
use tower::ServiceBuilder;

use crate::Failure;
use crate::args::{
    CallTarget, Header, MethodName, RequestArgs, RequestData, SchemaArgs, TlsArgs, apply_headers,
    parse_count, parse_method, percentile, round_ms,
};
use crate::codec::RawCodec;
use crate::connect;
use crate::schema;

/// Send unary calls through one RetryLayer and report what it did.
///
/// stdout: one JSON object per call, in call order,
/// {"call":0,"code":"OK","message":"","attempts":2,"elapsed_ms":61.4,"response":{..}},
/// then {"summary":{"calls":N,"codes":{..},"attempts_histogram":{..},"latency_ms":{"p50":..,"p99":..}}}.
/// "response" is the response message as JSON when its schema is known
/// (--proto, or reflection for -d), else "response_base64" holds its bytes.
/// stderr: what is being probed, and errors. All calls share one channel and
/// one layer, so retry throttling is shared too. Exit status 0 when the calls
/// ran, whatever their status; 2 on bad input.
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub(crate) struct ProbeArgs {
    #[command(flatten)]
    target: CallTarget,
    /// gRPC service-config JSON (methodConfig, retryThrottling); without it
    /// every call passes straight through (no retries).
    #[arg(long, value_name = "FILE")]
    service_config: Option<PathBuf>,
    #[command(flatten)]
    request: RequestArgs,
    /// How many calls to make.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_count)]
    calls: usize,
    /// How many calls are in flight at once (1: one after another).
    #[arg(long, value_name = "C", default_value = "1", value_parser = parse_count)]
    concurrency: usize,
    #[command(flatten)]
    schema: SchemaArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// What `probe` and `bench` need before their first call, every input
/// checked: the target and its channel, the method, the service config,
/// the request bytes and, when a schema is known, the response type.
pub(crate) struct Prepared {
    pub(crate) target: connect::Target,
    pub(crate) method: MethodName,
    pub(crate) config: Option<(PathBuf, ServiceConfig)>,
    pub(crate) channel: Channel,
    pub(crate) data: Bytes,
    pub(crate) response_type: Option<MessageDescriptor>,
}

/// Checks a call subcommand's input and connects.
pub(crate) async fn prepare(
    target: &CallTarget,
    tls: &TlsArgs,
    service_config: Option<&PathBuf>,
    request: &RequestArgs,
    schema: &SchemaArgs,
) -> Result<Prepared, Failure> {
    let (target_text, method_text) = target.resolve()?;
    let target = connect::target(&target_text, tls)?;
    let method = parse_method(&method_text)?;
    let config = match service_config {
        Some(file) => Some((file.clone(), read_service_config(file)?)),
        None => None,
    };
    let data = request.data()?;
    let channel = connect::channel(&target).await?;
    let (data, response_type) = prepare_request(data, schema, &channel, &method).await?;
    Ok(Prepared {
        target,
        method,
        config,
        channel,
        data,
        response_type,
    })
}

/// Reads a service config file with the crate's parser.
pub(crate) fn read_service_config(file: &PathBuf) -> Result<ServiceConfig, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::input(format!("--service-config {}: {e}", file.display())))?;
    ServiceConfig::from_json(&text)
        .map_err(|e| Failure::input(format!("--service-config {}: {e}", file.display())))
}

/// The request bytes and, when a schema is known, the response type. A
/// schema is loaded when `--proto` is given, or when `-d` JSON needs one
/// (then from the server's reflection service); raw bytes need none.
pub(crate) async fn prepare_request(
    data: RequestData,
    schema_args: &SchemaArgs,
    channel: &Channel,
    method: &MethodName,
) -> Result<(Bytes, Option<MessageDescriptor>), Failure> {
    let needs_schema = !schema_args.protos.is_empty() || matches!(data, RequestData::Json { .. });
    if !needs_schema {
        let bytes = match data {
            RequestData::Raw(bytes) => bytes,
            _ => Bytes::new(),
        };
        return Ok((bytes, None));
    }
    let schema = schema::load(schema_args, channel, &[method.service]).await?;
    let descriptor = schema.unary_method(method)?;
    let bytes = match data {
        RequestData::Json { source, text } => {
            schema::encode_json(&descriptor.input(), &source, &text)?
        }
        RequestData::Raw(bytes) => bytes,
        RequestData::Empty => Bytes::new(),
    };
    Ok((bytes, Some(descriptor.output())))
}

/// One call's outcome, as printed.
#[derive(Debug, Serialize)]
struct CallLine {
    call: usize,
    code: &'static str,
    message: String,
    attempts: u32,
    elapsed_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_base64: Option<String>,
    /// Why a response did not decode with the schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_error: Option<String>,
    /// The error behind a failed call's status, when the status carries
    /// one (e.g. a TLS alert behind "transport error").
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<String>,
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
    method: MethodName,
    data: Bytes,
    headers: Vec<Header>,
    timeout: Option<Duration>,
    response_type: Option<MessageDescriptor>,
}

async fn one_call(client: &mut Client, job: &Job, index: usize) -> CallLine {
    let mut request = Request::new(job.data.clone());
    apply_headers(request.metadata_mut(), &job.headers, index);
    if let Some(timeout) = job.timeout {
        request.set_timeout(timeout);
    }
    // What generated clients do, so that per-method configs match by name.
    request
        .extensions_mut()
        .insert(GrpcMethod::new(job.method.service, job.method.method));

    let start = Instant::now();
    let result = match client.ready().await {
        Ok(()) => {
            client
                .unary(request, job.method.path.clone(), RawCodec)
                .await
        }
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
    let mut line = CallLine {
        call: index,
        code: code_name(code),
        message,
        attempts: previous.saturating_add(1),
        elapsed_ms: round_ms(elapsed.as_secs_f64() * 1000.0),
        response: None,
        response_base64: None,
        decode_error: None,
        cause: None,
    };
    if let Err(status) = &result
        && let Some(source) = std::error::Error::source(status)
    {
        line.cause = Some(connect::error_chain(source));
    }
    if let Ok(response) = result {
        let bytes = response.into_inner();
        match &job.response_type {
            Some(desc) => match schema::decode_json(desc, &bytes) {
                Ok(json) => line.response = Some(json),
                Err(e) => {
                    line.decode_error = Some(e);
                    line.response_base64 = Some(base64_text(&bytes));
                }
            },
            None => line.response_base64 = Some(base64_text(&bytes)),
        }
    }
    line
}

fn base64_text(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
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

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let line = serde_json::to_string(value).map_err(std::io::Error::other)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// A human description of what the config does for the probed method.
pub(crate) fn describe(config: Option<&(PathBuf, ServiceConfig)>, method: &MethodName) -> String {
    let Some((file, config)) = config else {
        return "no service config: calls pass straight through".into();
    };
    let mut text = format!("service config {}: ", file.display());
    match config.method_config(method.service, method.method) {
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

pub(crate) async fn run(args: ProbeArgs) -> Result<(), Failure> {
    // Everything that can be wrong with the input is found before any call.
    let Prepared {
        target,
        method,
        config,
        channel,
        data,
        response_type,
    } = prepare(
        &args.target,
        &args.tls,
        args.service_config.as_ref(),
        &args.request,
        &args.schema,
    )
    .await?;

    eprintln!(
        "tonic-retry probe: {} {}: {} call(s), concurrency {}, timeout {}; {}",
        target.uri,
        method.path,
        args.calls,
        args.concurrency,
        args.request
            .timeout
            .map_or_else(|| "none".to_owned(), |t| format!("{t:?}")),
        describe(config.as_ref(), &method),
    );

    // One channel and one layer for every call: throttling state is shared.
    let layer = match config {
        Some((_, config)) => RetryLayer::from_service_config(config),
        // The empty config: no entry, so every call passes straight through.
        None => RetryLayer::from_service_config(
            ServiceConfig::from_json("{}").map_err(|e| Failure::Run(e.to_string()))?,
        ),
    };
    let client: Client = Grpc::new(ServiceBuilder::new().layer(layer).service(channel));

    let calls = args.calls;
    let job = Arc::new(Job {
        method,
        data,
        headers: args.request.headers,
        timeout: args.request.timeout,
        response_type,
    });
    let next = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..args.concurrency.min(calls) {
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
            // The summary needs no response bodies: keep memory flat.
            printed.push(CallLine {
                response: None,
                response_base64: None,
                decode_error: None,
                cause: None,
                ..line
            });
        }
    }
    print_json(&summarize(&printed))
}
