//! `tonic-retry`: try gRFC A6 retry policies against live gRPC servers.
//!
//! ```text
//! tonic-retry check-config service-config.json
//! tonic-retry probe https://api.example.com:443 pkg.Svc/Method -d '{"name":"x"}' \
//!     --service-config sc.json --calls 100 --concurrency 8
//! tonic-retry bench http://127.0.0.1:50051 pkg.Svc/Method --proto api.proto -d @req.json \
//!     --calls 20000 --concurrency 1,64
//! tonic-retry list 127.0.0.1:50051
//! tonic-retry describe 127.0.0.1:50051 pkg.Svc
//! ```
//!
//! Built only with the `cli` feature; it uses the library's public API
//! alone. Exit status: 0 when the command ran (a call that fails is a
//! result, not an error), 2 on bad input (flags, files, configs, schemas,
//! a TLS certificate the server is not trusted by), 1 when the output
//! cannot be written or a bench cannot run.

mod args;
mod bench;
mod check_config;
mod codec;
mod connect;
mod inspect;
mod probe;
mod schema;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// What stops a command, and the exit status it gives.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad input: exit status 2.
    Input(String),
    /// The command could not do its work (e.g. writing the output): 1.
    Run(String),
    /// Whoever read stdout closed it (e.g. `| head`): stop quietly, 0.
    Closed,
}

impl Failure {
    /// Bad input, as a one-line message.
    pub(crate) fn input(message: impl Into<String>) -> Failure {
        Failure::Input(message.into())
    }

    fn exit(self) -> ExitCode {
        let (status, message) = match self {
            Failure::Input(m) => (2, m),
            Failure::Run(m) => (1, m),
            Failure::Closed => return ExitCode::SUCCESS,
        };
        // One line, whatever the underlying errors printed.
        let message = message.replace(['\r', '\n'], " ");
        eprintln!("tonic-retry: {message}");
        ExitCode::from(status)
    }
}

impl From<std::io::Error> for Failure {
    /// Writing the results failed.
    fn from(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Failure::Closed;
        }
        Failure::Run(format!("writing the results: {e}"))
    }
}

/// Try gRFC A6 retry policies (a tonic-retry RetryLayer) against live gRPC
/// servers.
///
/// Exit status: 0 when the command ran, whatever the status of its calls; 2
/// on bad input; 1 when the results cannot be written or a bench cannot run.
#[derive(Parser, Debug)]
#[command(name = "tonic-retry", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send calls through one RetryLayer and print one JSON line per call
    /// (code, message, attempts, elapsed_ms, response), then a summary.
    Probe(probe::ProbeArgs),
    /// Measure the layer's overhead: the same calls through a raw channel
    /// and through the channel under the layer, in interleaved rounds, with
    /// an A/A control.
    Bench(bench::BenchArgs),
    /// Validate a gRPC service-config file and print the effective policy of
    /// every entry.
    CheckConfig(check_config::CheckConfigArgs),
    /// List the services of a server (by reflection or --proto), or the
    /// methods of one service.
    List(inspect::ListArgs),
    /// Describe a service, method, message or enum (by reflection or
    /// --proto).
    Describe(inspect::DescribeArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    // check-config needs no runtime; the others do their I/O on tokio.
    let outcome = match cli.command {
        Command::CheckConfig(args) => check_config::run(&args),
        command => match runtime() {
            Ok(rt) => rt.block_on(async move {
                match command {
                    Command::Probe(args) => probe::run(args).await,
                    Command::Bench(args) => bench::run(args).await,
                    Command::List(args) => inspect::list(args).await,
                    Command::Describe(args) => inspect::describe(args).await,
                    Command::CheckConfig(_) => unreachable_command(),
                }
            }),
            Err(e) => Err(Failure::Run(format!("starting the tokio runtime: {e}"))),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}

/// `check-config` is handled before the runtime starts; this arm only
/// completes the match.
fn unreachable_command() -> Result<(), Failure> {
    Err(Failure::Run("internal: command dispatched twice".into()))
}

/// A multi-threaded runtime with one worker per core: the calls of `probe`
/// and `bench` run concurrently, as in a real client.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Help and version go to stdout with status 0; a usage error is one line
/// on stderr with status 2 (clap's full message also shows the usage, which
/// scripts that read stderr do not want).
fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            // The error's own lines, without the usage and tips that follow.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            Failure::input(format!("{message} (see --help)")).exit()
        }
    }
}
