//! `tonic-retry bench`: the layer's overhead against a live server, by the
//! method of the crate's `benches/e2e.rs`.
//!
//! Three clients share one connected channel: `raw` (the channel alone),
//! `layer` (the channel under `RetryLayer`) and `control` (a second raw
//! client, the A/A control whose ratio to raw shows how far from 1.000 the
//! method itself lands). At each concurrency:
//!
//! * concurrency 1: the sides take turns in blocks of 20 calls, the first
//!   side rotating, the first call of each block untimed; a round's time per
//!   side is the sum of its call times. Short blocks put every side under
//!   the same drift of the machine.
//! * concurrency C > 1: each round times a batch of calls through each
//!   client back to back (C tasks, each with its own clone), the order
//!   rotating, so the layer's CPU time cannot slow the raw calls.
//!
//! Five untimed rounds warm every path first. The ratio is the median over
//! rounds of layer time ÷ raw time (above 1: the layer is slower), with its
//! 10th and 90th percentiles as the spread.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic::{GrpcMethod, Request, Status};
use tonic_retry::{Retry, RetryLayer, RetryPolicy, code_name};
use tower::Layer as _;

use crate::Failure;
use crate::args::{
    CallTarget, Header, MethodName, RequestArgs, SchemaArgs, TlsArgs, apply_headers, parse_count,
    parse_counts, percentile,
};
use crate::codec::RawCodec;
use crate::probe::{Prepared, describe, prepare};

/// Measure the retry layer's overhead on your own server: the same unary
/// calls through a raw channel and through the channel under the layer, in
/// interleaved rounds, with an A/A control (raw ÷ raw) as the noise floor.
///
/// Reports per side calls/s and p50, p99 and mean latency, and the median
/// ratio layer ÷ raw over rounds with its p10–p90 spread. The layer uses
/// --service-config, or the default RetryPolicy. Every call should succeed:
/// failed calls are counted and reported, and the bench stops if the first
/// call fails. Point it only at a server you own.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    target: CallTarget,
    /// gRPC service-config JSON for the layer (default: the default
    /// RetryPolicy for every method).
    #[arg(long, value_name = "FILE")]
    service_config: Option<PathBuf>,
    #[command(flatten)]
    request: RequestArgs,
    /// Timed calls per side at each concurrency (after the warm-up).
    #[arg(long, value_name = "N", default_value = "20000", value_parser = parse_count)]
    calls: usize,
    /// The concurrencies to measure, comma separated.
    #[arg(long, value_name = "C,C..", default_value = "1,64", value_parser = parse_concurrencies)]
    concurrency: Concurrencies,
    /// Rounds per concurrency (default: 200 calls per round at concurrency
    /// 1, 20 per task above it, as benches/e2e.rs does).
    #[arg(long, value_name = "R", value_parser = parse_count)]
    rounds: Option<usize>,
    /// Print the result as one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    schema: SchemaArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// `--concurrency 1,64`.
#[derive(Debug, Clone)]
pub(crate) struct Concurrencies(Vec<usize>);

fn parse_concurrencies(text: &str) -> Result<Concurrencies, String> {
    parse_counts(text).map(Concurrencies)
}

/// Calls per block per side at concurrency 1.
const C1_BLOCK: usize = 20;
/// Untimed rounds before the timed ones.
const WARMUP_ROUNDS: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Raw = 0,
    Layer = 1,
    Control = 2,
}

const SIDES: [Side; 3] = [Side::Raw, Side::Layer, Side::Control];

/// The three clients; the enum keeps one code path for all of them (the
/// match costs the same on every side).
#[derive(Clone)]
enum Client {
    Raw(Grpc<Channel>),
    Layer(Grpc<Retry<Channel>>),
}

/// What every call sends.
struct Job {
    method: MethodName,
    data: Bytes,
    headers: Vec<Header>,
    timeout: Option<Duration>,
}

impl Client {
    /// One call, timed; `false` when it did not end OK.
    async fn call(&mut self, job: &Job) -> (Duration, Result<(), Status>) {
        let mut request = Request::new(job.data.clone());
        apply_headers(request.metadata_mut(), &job.headers, 0);
        if let Some(timeout) = job.timeout {
            request.set_timeout(timeout);
        }
        // What generated clients do, on every side alike.
        request
            .extensions_mut()
            .insert(GrpcMethod::new(job.method.service, job.method.method));
        let path = job.method.path.clone();
        let start = Instant::now();
        let result = match self {
            Client::Raw(grpc) => match grpc.ready().await {
                Ok(()) => grpc.unary(request, path, RawCodec).await.map(drop),
                Err(e) => Err(Status::from_error(e.into())),
            },
            Client::Layer(grpc) => match grpc.ready().await {
                Ok(()) => grpc.unary(request, path, RawCodec).await.map(drop),
                Err(e) => Err(Status::from_error(e)),
            },
        };
        (start.elapsed(), result)
    }
}

/// One side's measurements at one concurrency.
#[derive(Default)]
struct Samples {
    /// Per timed call, µs.
    latencies: Vec<f64>,
    /// Per round, seconds: call times summed (c1) or batch wall time.
    round_times: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

impl Samples {
    fn record(&mut self, took: Duration, result: &Result<(), Status>) {
        self.latencies.push(took.as_secs_f64() * 1e6);
        if let Err(status) = result {
            self.errors += 1;
            self.first_error.get_or_insert_with(|| {
                format!("{}: {}", code_name(status.code()), status.message())
            });
        }
    }
}

#[derive(Serialize, Debug)]
struct Report {
    target: String,
    method: String,
    layer: String,
    results: Vec<LevelReport>,
}

#[derive(Serialize, Debug)]
struct LevelReport {
    concurrency: usize,
    rounds: usize,
    calls_per_round: usize,
    raw: SideReport,
    layer: SideReport,
    control: SideReport,
    /// Layer time ÷ raw time, over rounds.
    ratio: Spread,
    /// Control time ÷ raw time, over rounds: the noise floor.
    control_ratio: Spread,
}

#[derive(Serialize, Debug)]
struct SideReport {
    calls: usize,
    calls_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
    errors: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
}

#[derive(Serialize, Debug)]
struct Spread {
    median: f64,
    p10: f64,
    p90: f64,
}

fn spread(mut values: Vec<f64>) -> Spread {
    values.sort_by(f64::total_cmp);
    let median = if values.is_empty() {
        0.0
    } else if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    Spread {
        median,
        p10: percentile(&values, 10.0),
        p90: percentile(&values, 90.0),
    }
}

fn side_report(samples: Samples) -> SideReport {
    let Samples {
        mut latencies,
        round_times,
        errors,
        first_error,
    } = samples;
    latencies.sort_by(f64::total_cmp);
    let total: f64 = round_times.iter().sum();
    let calls = latencies.len();
    let mean = if calls == 0 {
        0.0
    } else {
        latencies.iter().sum::<f64>() / calls as f64
    };
    SideReport {
        calls,
        calls_per_s: if total > 0.0 {
            calls as f64 / total
        } else {
            0.0
        },
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        mean_us: mean,
        errors,
        first_error,
    }
}

/// Progress on stderr: a bar on a terminal, plain lines otherwise.
enum Progress {
    Bar(ProgressBar),
    Lines,
}

impl Progress {
    fn new(total_rounds: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let bar = ProgressBar::new(total_rounds);
        if let Ok(style) =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rounds {msg} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress::Bar(bar)
    }

    fn level(&self, concurrency: usize, rounds: usize, calls_per_round: usize) {
        match self {
            Progress::Bar(bar) => bar.set_prefix(format!("concurrency {concurrency}")),
            Progress::Lines => eprintln!(
                "tonic-retry bench: concurrency {concurrency}: {WARMUP_ROUNDS} warm-up + {rounds} rounds of {calls_per_round} calls per side"
            ),
        }
    }

    fn round(&self, warmup: bool) {
        if let Progress::Bar(bar) = self {
            bar.set_message(if warmup { "warming up" } else { "" });
            bar.inc(1);
        }
    }

    fn done(&self, concurrency: usize, ratio: f64, control: f64) {
        match self {
            Progress::Bar(_) => {}
            Progress::Lines => eprintln!(
                "tonic-retry bench: concurrency {concurrency}: layer ÷ raw {ratio:.4}, control ÷ raw {control:.4}"
            ),
        }
    }

    fn finish(self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Rounds and calls per round (per side) at `concurrency`.
fn plan(args: &BenchArgs, concurrency: usize) -> (usize, usize) {
    let default_per_round = if concurrency == 1 {
        200
    } else {
        20 * concurrency
    };
    let rounds = args
        .rounds
        .unwrap_or_else(|| args.calls.div_ceil(default_per_round).max(3));
    let mut per_round = args.calls.div_ceil(rounds).max(1);
    if concurrency == 1 {
        per_round = per_round.div_ceil(C1_BLOCK) * C1_BLOCK;
    } else {
        per_round = per_round.div_ceil(concurrency) * concurrency;
    }
    (rounds, per_round)
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), Failure> {
    let Prepared {
        target,
        method,
        config,
        channel,
        data,
        ..
    } = prepare(
        &args.target,
        &args.tls,
        args.service_config.as_ref(),
        &args.request,
        &args.schema,
    )
    .await?;
    let (layer, layer_text) = match &config {
        Some((_, c)) => (
            RetryLayer::from_service_config(c.clone()),
            describe(config.as_ref(), &method),
        ),
        None => (
            RetryLayer::new(RetryPolicy::default()),
            "the default RetryPolicy".to_owned(),
        ),
    };
    let job = Arc::new(Job {
        method,
        data,
        headers: args.request.headers.clone(),
        timeout: args.request.timeout,
    });
    // One connection for all three clients, as in benches/e2e.rs.
    let raw = Client::Raw(Grpc::new(channel.clone()));
    let control = Client::Raw(Grpc::new(channel.clone()));
    let layered = Client::Layer(Grpc::new(layer.layer(channel)));

    let (_, first) = raw.clone().call(&job).await;
    if let Err(status) = first {
        return Err(Failure::Run(format!(
            "bench: the first call failed: {}: {} (every call should succeed)",
            code_name(status.code()),
            status.message()
        )));
    }

    let levels = &args.concurrency.0;
    let total: usize = levels
        .iter()
        .map(|&c| plan(&args, c).0 + WARMUP_ROUNDS)
        .sum();
    let progress = Progress::new(total as u64);
    let clients = [raw, layered, control];
    let mut results = Vec::new();
    for &concurrency in levels {
        let (rounds, per_round) = plan(&args, concurrency);
        progress.level(concurrency, rounds, per_round);
        let mut samples: [Samples; 3] = Default::default();
        let mut ratios = Vec::with_capacity(rounds);
        let mut control_ratios = Vec::with_capacity(rounds);
        for round in 0..WARMUP_ROUNDS + rounds {
            let warmup = round < WARMUP_ROUNDS;
            let mut scratch: [Samples; 3] = Default::default();
            let times = if concurrency == 1 {
                c1_round(&clients, &job, per_round, round, &mut scratch).await
            } else {
                batch_round(&clients, &job, concurrency, per_round, round, &mut scratch).await
            };
            progress.round(warmup);
            if warmup {
                continue;
            }
            ratios.push(times[Side::Layer as usize] / times[Side::Raw as usize]);
            control_ratios.push(times[Side::Control as usize] / times[Side::Raw as usize]);
            for (side, round_samples) in SIDES.iter().zip(scratch) {
                let s = &mut samples[*side as usize];
                s.latencies.extend(round_samples.latencies);
                s.round_times.push(times[*side as usize]);
                s.errors += round_samples.errors;
                if s.first_error.is_none() {
                    s.first_error = round_samples.first_error;
                }
            }
        }
        let ratio = spread(ratios);
        let control_ratio = spread(control_ratios);
        progress.done(concurrency, ratio.median, control_ratio.median);
        let [raw, layer, control] = samples.map(side_report);
        results.push(LevelReport {
            concurrency,
            rounds,
            calls_per_round: per_round,
            raw,
            layer,
            control,
            ratio,
            control_ratio,
        });
    }
    progress.finish();

    let report = Report {
        target: target.uri.clone(),
        method: job.method.path.to_string(),
        layer: layer_text,
        results,
    };
    let text = if args.json {
        serde_json::to_string(&report).map_err(std::io::Error::other)? + "\n"
    } else {
        render(&report)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// One round at concurrency 1: the sides take turns in blocks of
/// [`C1_BLOCK`] calls, the first side rotating; each block starts with one
/// untimed call, so every timed call follows one through the same client
/// (a call right after another client's runs with colder caches, a penalty
/// that would land on the layer alone). Returns each side's summed call
/// time, seconds.
async fn c1_round(
    clients: &[Client; 3],
    job: &Job,
    calls: usize,
    round: usize,
    samples: &mut [Samples; 3],
) -> [f64; 3] {
    let mut clients = clients.clone();
    let mut times = [Duration::ZERO; 3];
    for block in 0..calls.div_ceil(C1_BLOCK) {
        for k in 0..3 {
            let side = SIDES[(round + block + k) % 3] as usize;
            for timed in [false].into_iter().chain([true; C1_BLOCK]) {
                let (took, result) = clients[side].call(job).await;
                if timed {
                    times[side] += took;
                    samples[side].record(took, &result);
                }
            }
        }
    }
    times.map(|t| t.as_secs_f64())
}

/// One round above concurrency 1: a batch of `calls` calls through each
/// client in turn, the order rotating with `round`. Returns each batch's
/// wall time, seconds.
async fn batch_round(
    clients: &[Client; 3],
    job: &Arc<Job>,
    concurrency: usize,
    calls: usize,
    round: usize,
    samples: &mut [Samples; 3],
) -> [f64; 3] {
    let mut times = [0.0; 3];
    for k in 0..3 {
        let side = SIDES[(round + k) % 3] as usize;
        let per_task = calls / concurrency;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (mut client, job) = (clients[side].clone(), job.clone());
            tasks.spawn(async move {
                let mut done = Samples {
                    latencies: Vec::with_capacity(per_task),
                    ..Samples::default()
                };
                for _ in 0..per_task {
                    let (took, result) = client.call(&job).await;
                    done.record(took, &result);
                }
                done
            });
        }
        let mut joined = Vec::with_capacity(concurrency);
        while let Some(task) = tasks.join_next().await {
            match task {
                Ok(done) => joined.push(done),
                // A task that panicked: its calls count as failed.
                Err(e) => {
                    samples[side].errors += per_task;
                    samples[side]
                        .first_error
                        .get_or_insert_with(|| format!("a bench task failed: {e}"));
                }
            }
        }
        times[side] = start.elapsed().as_secs_f64();
        for done in joined {
            samples[side].latencies.extend(done.latencies);
            samples[side].errors += done.errors;
            if samples[side].first_error.is_none() {
                samples[side].first_error = done.first_error;
            }
        }
    }
    times
}

fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "tonic-retry bench: {} {}; layer: {}\n",
        report.target, report.method, report.layer
    );
    for level in &report.results {
        let _ = writeln!(
            out,
            "\nconcurrency {}: {} rounds of {} calls per side (after {WARMUP_ROUNDS} warm-up rounds)",
            level.concurrency, level.rounds, level.calls_per_round
        );
        for (name, side) in [
            ("raw", &level.raw),
            ("layer", &level.layer),
            ("control", &level.control),
        ] {
            let _ = write!(
                out,
                "  {name:<8} {:>9.0} calls/s   p50 {:>8.1} µs   p99 {:>8.1} µs   mean {:>8.1} µs",
                side.calls_per_s, side.p50_us, side.p99_us, side.mean_us
            );
            if side.errors > 0 {
                let _ = write!(
                    out,
                    "   {} failed ({})",
                    side.errors,
                    side.first_error.as_deref().unwrap_or("")
                );
            }
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "  layer ÷ raw    {:.4}  (p10 {:.4}, p90 {:.4})",
            level.ratio.median, level.ratio.p10, level.ratio.p90
        );
        let _ = writeln!(
            out,
            "  control ÷ raw  {:.4}  (p10 {:.4}, p90 {:.4})  the noise floor (A/A)",
            level.control_ratio.median, level.control_ratio.p10, level.control_ratio.p90
        );
    }
    out
}
