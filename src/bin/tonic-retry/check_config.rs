//! `tonic-retry check-config`: validate a service config with the crate's
//! own parser and show what it means.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use serde_json::Value;
use tonic_retry::{CodeSet, HedgingPolicy, Jitter, MethodConfig, RetryPolicy, ServiceConfig};

use crate::Failure;
use crate::args::parse_method;

/// Validate a gRPC service-config file (gRFC A6) with tonic-retry's own
/// parser.
///
/// On success prints, for every methodConfig entry, the effective policy:
/// the clamped maxAttempts, each retry's backoff range, timeout, hedging;
/// and the retry throttling. On error prints the JSON path and the rule
/// broken, and exits with status 2.
#[derive(Args, Debug)]
pub(crate) struct CheckConfigArgs {
    /// The service-config JSON file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Also say which entry this method resolves to (pkg.Service/Method).
    #[arg(long, value_name = "METHOD")]
    method: Option<String>,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The effective settings, as printed.
#[derive(Serialize, Debug)]
struct Report {
    file: String,
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_throttling: Option<Throttling>,
    method_configs: Vec<Entry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolution: Option<Resolution>,
}

#[derive(Serialize, Debug)]
struct Throttling {
    max_tokens: f64,
    token_ratio: f64,
    /// Retries stop while the bucket holds this many tokens or fewer.
    retries_stop_at_or_below: f64,
}

#[derive(Serialize, Debug)]
struct Entry {
    /// The index in the file's `methodConfig` array.
    index: usize,
    names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<Retry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hedging: Option<Hedging>,
}

#[derive(Serialize, Debug)]
struct Retry {
    /// As written in the file.
    max_attempts_configured: Option<u64>,
    /// After clamping: what the layer uses.
    max_attempts: u32,
    initial_backoff_ms: f64,
    max_backoff_ms: f64,
    backoff_multiplier: f64,
    jitter: &'static str,
    retryable_status_codes: Vec<&'static str>,
    /// The wait before each retry: `[low, high)` in milliseconds.
    schedule_ms: Vec<[f64; 2]>,
}

#[derive(Serialize, Debug)]
struct Hedging {
    max_attempts_configured: Option<u64>,
    max_attempts: u32,
    hedging_delay_ms: f64,
    non_fatal_status_codes: Vec<&'static str>,
}

#[derive(Serialize, Debug)]
struct Resolution {
    method: String,
    /// The `methodConfig` index, or none.
    entry: Option<usize>,
    /// "method", "service" or "default".
    matched_by: Option<&'static str>,
}

pub(crate) fn run(args: &CheckConfigArgs) -> Result<(), Failure> {
    let file = args.file.display().to_string();
    let text =
        std::fs::read_to_string(&args.file).map_err(|e| Failure::input(format!("{file}: {e}")))?;
    let config =
        ServiceConfig::from_json(&text).map_err(|e| Failure::input(format!("{file}: {e}")))?;
    let method = match &args.method {
        Some(m) => Some(parse_method(m)?),
        None => None,
    };
    // Valid, hence JSON: read again only for what the parsed config no
    // longer shows (maxAttempts before clamping, entry indices).
    let raw: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let raw_entries = named_entries(&raw);

    let mut entries = Vec::new();
    for (k, entry) in config.method_configs().iter().enumerate() {
        let (index, raw_entry) = raw_entries.get(k).cloned().unwrap_or((k, Value::Null));
        entries.push(describe_entry(index, entry, &raw_entry));
    }
    let resolution = method.map(|m| {
        let found = config.method_config(m.service, m.method);
        let position = found.and_then(|found| {
            config
                .method_configs()
                .iter()
                .position(|e| std::ptr::eq(e, found))
        });
        let matched_by = found.map(|found| {
            let names: Vec<(&str, &str)> = found.names().collect();
            if names.contains(&(m.service, m.method)) {
                "method"
            } else if names.contains(&(m.service, "")) {
                "service"
            } else {
                "default"
            }
        });
        Resolution {
            method: m.path.as_str()[1..].to_owned(),
            entry: position.map(|p| entries[p].index),
            matched_by,
        }
    });
    let report = Report {
        file,
        valid: true,
        retry_throttling: config.retry_throttling().map(|t| {
            let max_tokens = f64::from(t.max_milli_tokens) / 1000.0;
            Throttling {
                max_tokens,
                token_ratio: f64::from(t.token_ratio_milli) / 1000.0,
                retries_stop_at_or_below: max_tokens / 2.0,
            }
        }),
        method_configs: entries,
        resolution,
    };
    let out = if args.json {
        serde_json::to_string(&report).map_err(std::io::Error::other)? + "\n"
    } else {
        render(&report)
    };
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// The raw `methodConfig` entries that have names, with their indices: the
/// ones [`ServiceConfig::method_configs`] keeps, in the same order.
fn named_entries(raw: &Value) -> Vec<(usize, Value)> {
    let Some(list) = raw.get("methodConfig").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .filter(|(_, e)| {
            e.get("name")
                .and_then(Value::as_array)
                .is_some_and(|names| !names.is_empty())
        })
        .map(|(i, e)| (i, e.clone()))
        .collect()
}

fn describe_entry(index: usize, entry: &MethodConfig, raw: &Value) -> Entry {
    let configured = |policy: &str| {
        raw.get(policy)
            .and_then(|p| p.get("maxAttempts"))
            .and_then(Value::as_f64)
            .map(|n| n as u64)
    };
    Entry {
        index,
        names: entry
            .names()
            .map(|(service, method)| match (service, method) {
                ("", _) => "{} (default)".to_owned(),
                (s, "") => s.to_owned(),
                (s, m) => format!("{s}/{m}"),
            })
            .collect(),
        timeout_ms: entry.timeout.map(ms),
        retry: entry
            .retry
            .as_ref()
            .map(|p| describe_retry(p, configured("retryPolicy"))),
        hedging: entry
            .hedging
            .as_ref()
            .map(|h| describe_hedging(h, configured("hedgingPolicy"))),
    }
}

fn describe_retry(policy: &RetryPolicy, configured: Option<u64>) -> Retry {
    Retry {
        max_attempts_configured: configured,
        max_attempts: policy.max_attempts(),
        initial_backoff_ms: ms(policy.initial_backoff()),
        max_backoff_ms: ms(policy.max_backoff()),
        backoff_multiplier: policy.backoff_multiplier(),
        jitter: match policy.jitter() {
            Jitter::Proportional => "±20 %",
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::Decorrelated => "decorrelated",
            Jitter::None => "none",
            _ => "other",
        },
        retryable_status_codes: names(policy.retryable_codes()),
        schedule_ms: schedule(policy),
    }
}

fn describe_hedging(policy: &HedgingPolicy, configured: Option<u64>) -> Hedging {
    Hedging {
        max_attempts_configured: configured,
        max_attempts: policy.max_attempts,
        hedging_delay_ms: ms(policy.hedging_delay),
        non_fatal_status_codes: names(policy.non_fatal_codes),
    }
}

fn names(codes: CodeSet) -> Vec<&'static str> {
    codes.iter().map(tonic_retry::code_name).collect()
}

/// Each retry's wait, `[low, high)` in milliseconds: A6's
/// `min(initial × multiplier^(n-1), max)` times the jitter's range
/// (`[0.8, 1.2)` by default).
fn schedule(policy: &RetryPolicy) -> Vec<[f64; 2]> {
    let initial = policy.initial_backoff().as_secs_f64();
    let max = policy.max_backoff().as_secs_f64();
    let (low, high) = match policy.jitter() {
        Jitter::Proportional => (0.8, 1.2),
        Jitter::Full => (0.0, 1.0),
        Jitter::Equal => (0.5, 1.0),
        Jitter::Decorrelated => {
            // Each wait is U[initial, 3 × the previous wait), capped: its
            // range grows by 3× a retry, whatever the multiplier.
            return (1..policy.max_attempts())
                .map(|n| {
                    let exponent = i32::try_from(n).unwrap_or(i32::MAX);
                    let high = (initial * 3f64.powi(exponent)).min(max);
                    [initial.min(max) * 1000.0, high * 1000.0]
                })
                .collect();
        }
        // None, and any kind added later: the schedule itself.
        _ => (1.0, 1.0),
    };
    (1..policy.max_attempts())
        .map(|n| {
            let exponent = i32::try_from(n - 1).unwrap_or(i32::MAX);
            let base = (initial * policy.backoff_multiplier().powi(exponent)).min(max);
            [base * low * 1000.0, base * high * 1000.0]
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Milliseconds for people: at most three decimals, no trailing zeros; whole
/// seconds from 10 s on.
fn human_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        return format!("{} s", trim(ms / 1000.0));
    }
    format!("{} ms", trim(ms))
}

fn trim(x: f64) -> String {
    let text = format!("{x:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

/// A range of milliseconds: `80–120 ms`.
fn human_range([low, high]: [f64; 2]) -> String {
    if low == high {
        return human_ms(low);
    }
    if high >= 10_000.0 {
        return format!("{}–{} s", trim(low / 1000.0), trim(high / 1000.0));
    }
    format!("{}–{} ms", trim(low), trim(high))
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: valid", report.file);
    match &report.retry_throttling {
        Some(t) => {
            let _ = writeln!(
                out,
                "retryThrottling: maxTokens {}, tokenRatio {}: no retries while the bucket holds <= {} tokens",
                trim(t.max_tokens),
                trim(t.token_ratio),
                trim(t.retries_stop_at_or_below)
            );
        }
        None => out.push_str("retryThrottling: none\n"),
    }
    if report.method_configs.is_empty() {
        out.push_str("no named methodConfig entries: every call passes straight through\n");
    }
    for entry in &report.method_configs {
        let _ = writeln!(
            out,
            "methodConfig[{}]: {}",
            entry.index,
            entry.names.join(", ")
        );
        match entry.timeout_ms {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "  timeout: {} (the whole call, every attempt and backoff)",
                    human_ms(t)
                );
            }
            None => out.push_str("  timeout: none\n"),
        }
        if let Some(r) = &entry.retry {
            let clamped = match r.max_attempts_configured {
                Some(n) if n != u64::from(r.max_attempts) => format!(" (configured {n}, clamped)"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  retryPolicy: maxAttempts {}{clamped}; retryable {}",
                r.max_attempts,
                r.retryable_status_codes.join(", ")
            );
            let _ = writeln!(
                out,
                "    backoff: initial {}, multiplier {}, max {}, jitter {}",
                human_ms(r.initial_backoff_ms),
                trim(r.backoff_multiplier),
                human_ms(r.max_backoff_ms),
                r.jitter
            );
            for (n, range) in r.schedule_ms.iter().enumerate() {
                let _ = writeln!(out, "    retry {}: {}", n + 1, human_range(*range));
            }
        }
        if let Some(h) = &entry.hedging {
            let clamped = match h.max_attempts_configured {
                Some(n) if n != u64::from(h.max_attempts) => format!(" (configured {n}, clamped)"),
                _ => String::new(),
            };
            let non_fatal = if h.non_fatal_status_codes.is_empty() {
                "none".to_owned()
            } else {
                h.non_fatal_status_codes.join(", ")
            };
            let _ = writeln!(
                out,
                "  hedgingPolicy: maxAttempts {}{clamped}; a new attempt every {}; nonFatal {non_fatal}",
                h.max_attempts,
                human_ms(h.hedging_delay_ms)
            );
        }
        if entry.retry.is_none() && entry.hedging.is_none() {
            out.push_str("  no retryPolicy or hedgingPolicy: failures are not retried\n");
        }
    }
    if let Some(r) = &report.resolution {
        match (r.entry, r.matched_by) {
            (Some(entry), Some(by)) => {
                let _ = writeln!(
                    out,
                    "{} -> methodConfig[{entry}] (matched by {by} name)",
                    r.method
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{} -> no entry: its calls pass straight through (no retries, no timeout)",
                    r.method
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a6s_with_twenty_percent_jitter() {
        let policy = RetryPolicy::builder()
            .max_attempts(5)
            .initial_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(300))
            .backoff_multiplier(2.0)
            .build()
            .unwrap();
        let ranges: Vec<String> = schedule(&policy).into_iter().map(human_range).collect();
        assert_eq!(
            ranges,
            ["80–120 ms", "160–240 ms", "240–360 ms", "240–360 ms"]
        );
    }

    #[test]
    fn numbers_for_people() {
        assert_eq!(human_ms(50.0), "50 ms");
        assert_eq!(human_ms(0.5), "0.5 ms");
        assert_eq!(human_ms(10_000.0), "10 s");
        assert_eq!(trim(0.1), "0.1");
    }
}
