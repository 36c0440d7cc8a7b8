//! `examples/probe.rs` end to end: the example binary, run as a child process
//! against the in-process scripted server, with `examples/service-config.json`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::Command;
use tonic::Code;
use tonic_retry::testing::{FaultAction, TestServer, fault_header};

const METHOD: &str = "/retry.test.v1.Echo/Unary";
/// How long one probe run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Builds the example once per test binary (debug, or release when the tests
/// are, with the features the tests were built with) and returns its path.
fn probe_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut features = vec!["testing"];
        if cfg!(feature = "metrics") {
            features.push("metrics");
        }
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--example", "probe"])
            .args(["--message-format", "json"])
            .arg(format!("--features={}", features.join(",")))
            .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            cargo.arg("--release");
        }
        let output = cargo.output().expect("run cargo build --example probe");
        assert!(
            output.status.success(),
            "cargo build --example probe failed"
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "probe")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the probe executable")
    })
}

/// What one probe run printed.
struct Run {
    code: Option<i32>,
    lines: Vec<Value>,
    stderr: String,
}

impl Run {
    /// The per-call lines (everything but the summary).
    fn calls(&self) -> &[Value] {
        &self.lines[..self.lines.len() - 1]
    }

    fn summary(&self) -> &Value {
        &self.lines.last().expect("a summary line")["summary"]
    }
}

async fn probe(args: &[&str]) -> Run {
    let binary = tokio::task::spawn_blocking(probe_binary).await.unwrap();
    let child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .unwrap_or_else(|_| panic!("probe {args:?} ran longer than {RUN_LIMIT:?}"))
        .expect("spawn the probe");
    let stdout = String::from_utf8(stdout).expect("UTF-8 stdout");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    Run {
        code: status.code(),
        lines,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn sample_config() -> String {
    format!(
        "{}/examples/service-config.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Probe arguments for `calls` scripted calls with the sample config.
fn scripted_args(server: &TestServer, script: &[FaultAction], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--target",
        &server.uri(),
        "--method",
        METHOD,
        "--service-config",
        &sample_config(),
        "-H",
        &format!("x-fault:{}", fault_header(script)),
        "-H",
        "x-call-id:c{call}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

async fn probe_scripted(server: &TestServer, script: &[FaultAction], extra: &[&str]) -> Run {
    let args = scripted_args(server, script, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = probe(&args).await;
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    run
}

fn unavailable() -> FaultAction {
    FaultAction::code(Code::Unavailable).message("node draining")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_then_ok() {
    let server = TestServer::start().await.unwrap();
    let run = probe_scripted(&server, &[unavailable(), FaultAction::ok()], &[]).await;

    assert_eq!(run.lines.len(), 2, "{:?}", run.lines);
    let call = &run.calls()[0];
    assert_eq!(call["call"], 0);
    assert_eq!(call["code"], "OK");
    assert_eq!(call["message"], "");
    assert_eq!(call["attempts"], 2);
    assert!(call["elapsed_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(server.attempts("c0").len(), 2);
    // The second attempt told the server about the first.
    assert_eq!(
        server.attempts("c0")[1].previous_rpc_attempts.as_deref(),
        Some("1")
    );
    let summary = run.summary();
    assert_eq!(summary["calls"], 1);
    assert_eq!(summary["codes"], json!({"OK": 1}));
    assert_eq!(summary["attempts_histogram"], json!({"2": 1}));
    assert_eq!(summary["latency_ms"]["p50"], call["elapsed_ms"]);
    assert_eq!(summary["latency_ms"]["p99"], call["elapsed_ms"]);
    // Human text goes to stderr.
    assert!(
        run.stderr.contains("retryPolicy maxAttempts 4"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_unavailable_exhausts_max_attempts() {
    let server = TestServer::start().await.unwrap();
    let run = probe_scripted(&server, &[unavailable()], &[]).await;

    let call = &run.calls()[0];
    assert_eq!(call["code"], "UNAVAILABLE");
    assert_eq!(call["message"], "node draining");
    assert_eq!(call["attempts"], 4);
    assert_eq!(server.attempts("c0").len(), 4);
    assert_eq!(run.summary()["codes"], json!({"UNAVAILABLE": 1}));
    assert_eq!(run.summary()["attempts_histogram"], json!({"4": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushback_minus_one_stops_after_one_attempt() {
    let server = TestServer::start().await.unwrap();
    let script = [unavailable().pushback("-1"), FaultAction::ok()];
    let run = probe_scripted(&server, &script, &[]).await;

    let call = &run.calls()[0];
    assert_eq!(call["code"], "UNAVAILABLE");
    assert_eq!(call["attempts"], 1);
    assert_eq!(server.attempts("c0").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_gets_its_index_in_place_of_the_placeholder() {
    let server = TestServer::start().await.unwrap();
    let script = [unavailable(), FaultAction::ok()];
    let run = probe_scripted(&server, &script, &["--calls", "3", "--concurrency", "3"]).await;

    assert_eq!(run.lines.len(), 4, "{:?}", run.lines);
    for (i, call) in run.calls().iter().enumerate() {
        assert_eq!(call["call"], i, "lines come in call order");
        assert_eq!(call["code"], "OK");
        assert_eq!(call["attempts"], 2);
        assert_eq!(server.attempts(&format!("c{i}")).len(), 2, "call c{i}");
    }
    assert_eq!(server.total_attempts(), 6);
    let summary = run.summary();
    assert_eq!(summary["calls"], 3);
    assert_eq!(summary["codes"], json!({"OK": 3}));
    assert_eq!(summary["attempts_histogram"], json!({"2": 3}));
    let (p50, p99) = (
        summary["latency_ms"]["p50"].as_f64().unwrap(),
        summary["latency_ms"]["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_service_config_calls_pass_straight_through() {
    let server = TestServer::start().await.unwrap();
    let target = server.uri();
    let fault = format!(
        "x-fault:{}",
        fault_header(&[unavailable(), FaultAction::ok()])
    );
    let run = probe(&[
        "--target",
        &target,
        "--method",
        METHOD,
        "-H",
        &fault,
        "-H",
        "x-call-id: solo",
        "--data-hex",
        "0a026869", // EchoRequest { payload: "hi" }
    ])
    .await;

    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.calls()[0]["code"], "UNAVAILABLE");
    assert_eq!(run.calls()[0]["attempts"], 1);
    let attempts = server.attempts("solo");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].request_bytes, 4);
    assert_eq!(attempts[0].grpc_timeout, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_flag_is_each_calls_deadline() {
    let server = TestServer::start().await.unwrap();
    let run = probe_scripted(
        &server,
        &[FaultAction::ok().delay_ms(2_000)],
        &["--timeout", "200ms"],
    )
    .await;

    let call = &run.calls()[0];
    assert_eq!(call["code"], "DEADLINE_EXCEEDED", "{call}");
    assert_eq!(call["attempts"], 1);
    assert!(call["elapsed_ms"].as_f64().unwrap() < 1_500.0, "{call}");
    let sent = server.attempts("c0")[0].grpc_timeout_parsed.unwrap();
    assert!(sent <= Duration::from_millis(200), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_connect_is_a_result_not_an_error() {
    // A port nobody listens on (bound, then closed).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let target = format!("http://{addr}");
    let run = probe(&["--target", &target, "--method", METHOD, "--timeout", "5s"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.calls()[0]["code"], "UNAVAILABLE");
}

/// Runs the probe with bad input: exit status 2, one line on stderr,
/// nothing on stdout.
async fn rejected(args: &[&str], needle: &str) {
    let run = probe(args).await;
    assert_eq!(run.code, Some(2), "{args:?}: {}", run.stderr);
    assert!(run.lines.is_empty(), "{args:?}: stdout {:?}", run.lines);
    assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {:?}", run.stderr);
    assert!(
        run.stderr.contains(needle),
        "{args:?}: {:?} should mention {needle:?}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_with_status_2_and_one_line() {
    let target = "http://127.0.0.1:1";
    let dir = std::env::temp_dir().join(format!("tonic-retry-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let not_json = dir.join("not-json.json");
    std::fs::write(&not_json, "{\"methodConfig\": [\n").unwrap();
    let invalid = dir.join("invalid.json");
    std::fs::write(
        &invalid,
        r#"{"methodConfig": [{"name": [{}], "timeout": "0s"}]}"#,
    )
    .unwrap();
    let not_json = not_json.to_str().unwrap();
    let invalid = invalid.to_str().unwrap();
    let missing = dir.join("missing.json");
    let missing = missing.to_str().unwrap();

    let base = ["--target", target, "--method", METHOD];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        base.iter().chain(extra.iter()).copied().collect()
    };
    rejected(&with(&["--data-hex", "0g"]), "--data-hex").await;
    rejected(&with(&["--data-hex", "abc"]), "odd number").await;
    rejected(&["--method", METHOD], "missing required flag --target").await;
    rejected(&["--target", target], "missing required flag --method").await;
    rejected(&["--target", target, "--method", "Echo/Unary"], "--method").await;
    rejected(&["--target", target, "--method", "/Echo"], "--method").await;
    rejected(&with(&["--timeout", "10"]), "--timeout").await;
    rejected(&with(&["--timeout", "0s"]), "--timeout").await;
    rejected(&with(&["--calls", "0"]), "--calls").await;
    rejected(&with(&["-H", "no-colon"]), "-H").await;
    rejected(&with(&["-H", "x-bad\u{1}:v"]), "-H").await;
    rejected(&with(&["--bogus"]), "unknown flag --bogus").await;
    rejected(&with(&["--calls"]), "--calls needs a value").await;

    let cfg = |path: &str| -> Vec<String> {
        [&base[..], &["--service-config", path]]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    for (file, needle) in [
        (not_json, "invalid JSON at line 2"),
        (invalid, "methodConfig[0].timeout"),
        (missing, "missing.json"),
    ] {
        let args = cfg(file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rejected(&args, needle).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_goes_to_stdout_with_status_0() {
    let binary = tokio::task::spawn_blocking(probe_binary).await.unwrap();
    let output = Command::new(binary)
        .arg("--help")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, output)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--target",
        "--method",
        "--service-config",
        "--data-hex",
        "--data-file",
        "-H",
        "--calls",
        "--concurrency",
        "--timeout",
    ] {
        assert!(help.contains(flag), "help mentions {flag}");
    }
}
