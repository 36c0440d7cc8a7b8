//! `tonic-retry probe` end to end: the binary (feature `cli`), run as a
//! child process against the in-process scripted server, with
//! `examples/service-config.json`. These are the tests of the former
//! `examples/probe.rs`, whose flags the subcommand keeps.

mod cli_support;

use std::time::Duration;

use base64::Engine as _;

use serde_json::{Value, json};
use tonic::Code;
use tonic_retry::testing::{FaultAction, TestServer, fault_header};

const METHOD: &str = "/retry.test.v1.Echo/Unary";

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

/// `tonic-retry probe ARGS`.
async fn probe(args: &[&str]) -> Run {
    let args: Vec<&str> = ["probe"].iter().chain(args).copied().collect();
    let run = cli_support::run(&args).await;
    Run {
        code: run.code,
        lines: run.json_lines(),
        stderr: run.stderr,
    }
}

fn sample_config() -> String {
    cli_support::manifest_path("examples/service-config.json")
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
    let args: Vec<&str> = ["probe"].iter().chain(args).copied().collect();
    cli_support::run(&args).await.assert_rejected(needle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_with_status_2_and_one_line() {
    let target = "http://127.0.0.1:1";
    let dir = cli_support::temp_dir("probe-bad-input");
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
    rejected(&["--method", METHOD], "--target").await;
    rejected(&["--target", target], "--method").await;
    rejected(&["--target", target, "--method", "Echo"], "Echo").await;
    rejected(&["--target", target, "--method", "/Echo"], "/Echo").await;
    rejected(&["--target", target, "--method", "/a/b/c"], "/a/b/c").await;
    rejected(&["ftp://127.0.0.1:1", METHOD], "scheme").await;
    rejected(&with(&["--timeout", "10"]), "--timeout").await;
    rejected(&with(&["--timeout", "0s"]), "--timeout").await;
    rejected(&with(&["--calls", "0"]), "--calls").await;
    rejected(&with(&["-H", "no-colon"]), "--header").await;
    rejected(&with(&["-H", "x-bad\u{1}:v"]), "--header").await;
    rejected(&with(&["--bogus"]), "--bogus").await;
    rejected(&with(&["--calls"]), "--calls").await;
    rejected(&with(&["--data-hex", "00", "--data-file", "x"]), "--data").await;

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
    let run = cli_support::run(&["probe", "--help"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
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
        "--data",
        "--proto",
        "--import-path",
        "--cacert",
        "--cert",
        "--key",
        "--authority",
    ] {
        assert!(run.stdout.contains(flag), "help mentions {flag}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_target_and_method_in_every_spelling() {
    let server = TestServer::start().await.unwrap();
    let bare = server.addr().to_string();
    for (target, method) in [
        (server.uri(), "retry.test.v1.Echo/Unary"),
        (bare.clone(), "/retry.test.v1.Echo/Unary"),
        (bare, "retry.test.v1.Echo.Unary"),
    ] {
        let id = format!("x-call-id:{method}");
        let run = probe(&[&target, method, "-H", &id, "--data-hex", "0a026869"]).await;
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        assert_eq!(run.calls()[0]["code"], "OK", "{target} {method}");
        // No schema: the response as base64. The server echoes the payload
        // (field 1, "hi") and reports 4 request bytes (field 4).
        let response = run.calls()[0]["response_base64"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response)
            .unwrap();
        assert!(bytes.starts_with(b"\x0a\x02hi"), "{bytes:?}");
        assert!(bytes.ends_with(b"\x20\x04\x28\x01"), "{bytes:?}");
        let attempts = server.attempts(method);
        assert_eq!(attempts.len(), 1, "{method}");
        assert_eq!(attempts[0].method, METHOD);
        assert_eq!(attempts[0].request_bytes, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_flag_and_a_positional_method_mix() {
    let server = TestServer::start().await.unwrap();
    let run = probe(&["--target", &server.uri(), METHOD, "-H", "x-call-id:mixed"]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(server.attempts("mixed").len(), 1);
    let run = probe(&[&server.uri(), METHOD, "extra"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}
