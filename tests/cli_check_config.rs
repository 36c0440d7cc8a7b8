//! `tonic-retry check-config`: the crate's parser on a file, and what the
//! effective policy of each entry is.

mod cli_support;

use cli_support::{manifest_path, run, temp_dir, write};
use serde_json::json;

#[tokio::test]
async fn a_valid_config_shows_clamped_attempts_backoff_ranges_timeout_and_throttling() {
    let dir = temp_dir("check-valid");
    let file = write(
        &dir,
        "sc.json",
        r#"{"methodConfig": [
              {"name": [{"service": "pkg.Svc", "method": "M"}],
               "retryPolicy": {"maxAttempts": 7, "initialBackoff": "0.1s", "maxBackoff": "0.3s",
                               "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE", 10]}},
              {"name": [{"service": "pkg.Svc"}], "timeout": "2.5s",
               "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.05s",
                                 "nonFatalStatusCodes": ["UNAVAILABLE"]}},
              {"name": [], "timeout": "1s"},
              {"name": [{}], "timeout": "30s"}],
            "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#,
    );
    let out = run(&["check-config", &file]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let expected = format!(
        "{file}: valid
retryThrottling: maxTokens 10, tokenRatio 0.1: no retries while the bucket holds <= 5 tokens
methodConfig[0]: pkg.Svc/M
  timeout: none
  retryPolicy: maxAttempts 5 (configured 7, clamped); retryable ABORTED, UNAVAILABLE
    backoff: initial 100 ms, multiplier 2, max 300 ms, jitter ±20 %
    retry 1: 80–120 ms
    retry 2: 160–240 ms
    retry 3: 240–360 ms
    retry 4: 240–360 ms
methodConfig[1]: pkg.Svc
  timeout: 2500 ms (the whole call, every attempt and backoff)
  hedgingPolicy: maxAttempts 3; a new attempt every 50 ms; nonFatal UNAVAILABLE
methodConfig[3]: {{}} (default)
  timeout: 30 s (the whole call, every attempt and backoff)
  no retryPolicy or hedgingPolicy: failures are not retried
"
    );
    assert_eq!(out.stdout, expected);
}

#[tokio::test]
async fn the_method_flag_names_the_entry_it_resolves_to_and_how() {
    let dir = temp_dir("check-method");
    let file = write(
        &dir,
        "sc.json",
        r#"{"methodConfig": [
              {"name": [{"service": "pkg.Svc", "method": "M"}], "timeout": "1s"},
              {"name": [{"service": "pkg.Svc"}], "timeout": "2s"},
              {"name": [{}], "timeout": "3s"}]}"#,
    );
    let only_default = write(
        &dir,
        "default.json",
        r#"{"methodConfig": [{"name": [{"service": "a.B"}]}]}"#,
    );
    for (method, expected) in [
        (
            "pkg.Svc/M",
            "pkg.Svc/M -> methodConfig[0] (matched by method name)",
        ),
        (
            "/pkg.Svc/Other",
            "pkg.Svc/Other -> methodConfig[1] (matched by service name)",
        ),
        (
            "other.Svc.M",
            "other.Svc/M -> methodConfig[2] (matched by default name)",
        ),
    ] {
        let out = run(&["check-config", &file, "--method", method]).await;
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.stdout.lines().last(), Some(expected), "{}", out.stdout);
    }
    let out = run(&["check-config", &only_default, "--method", "x.Y/Z"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.ends_with(
            "x.Y/Z -> no entry: its calls pass straight through (no retries, no timeout)\n"
        ),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn json_output_carries_the_same_facts() {
    let out = run(&[
        "check-config",
        &manifest_path("examples/service-config.json"),
        "--method",
        "retry.test.v1.Echo/Unary",
        "--json",
    ])
    .await;
    let report = &out.ok_lines()[0];
    assert_eq!(report["valid"], true);
    assert_eq!(
        report["retry_throttling"],
        json!({"max_tokens": 10.0, "token_ratio": 0.1, "retries_stop_at_or_below": 5.0})
    );
    let retry = &report["method_configs"][0]["retry"];
    assert_eq!(retry["max_attempts"], 4);
    assert_eq!(
        retry["retryable_status_codes"],
        json!(["ABORTED", "UNAVAILABLE"])
    );
    let schedule = retry["schedule_ms"].as_array().unwrap();
    let close = |v: &serde_json::Value, x: f64| (v.as_f64().unwrap() - x).abs() < 1e-6;
    for (range, (low, high)) in schedule
        .iter()
        .zip([(40.0, 60.0), (80.0, 120.0), (160.0, 240.0)])
    {
        assert!(close(&range[0], low) && close(&range[1], high), "{range}");
    }
    assert_eq!(schedule.len(), 3);
    assert_eq!(report["method_configs"][1]["timeout_ms"], 10_000.0);
    assert_eq!(
        report["resolution"],
        json!({"method": "retry.test.v1.Echo/Unary", "entry": 0, "matched_by": "service"})
    );
}

#[tokio::test]
async fn an_invalid_config_prints_its_json_path_and_exits_2() {
    let dir = temp_dir("check-invalid");
    for (text, needle) in [
        (
            r#"{"methodConfig": [{"name": [{"service": "a.B"}], "retryPolicy": {"maxAttempts": 1}}]}"#,
            "methodConfig[0].retryPolicy.maxAttempts",
        ),
        (
            r#"{"methodConfig": [{"name": [{}], "timeout": "0s"}]}"#,
            "methodConfig[0].timeout",
        ),
        (
            r#"{"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}"#,
            "retryThrottling.maxTokens",
        ),
        ("{\"methodConfig\": [\n", "invalid JSON at line 2"),
    ] {
        let file = write(&dir, "bad.json", text);
        run(&["check-config", &file]).await.assert_rejected(needle);
    }
    let missing = dir.join("missing.json");
    run(&["check-config", missing.to_str().unwrap()])
        .await
        .assert_rejected("missing.json");
    let good = manifest_path("examples/service-config.json");
    run(&["check-config", &good, "--method", "NoSeparator"])
        .await
        .assert_rejected("NoSeparator");
}

#[tokio::test]
async fn every_subcommand_has_help_and_the_tool_a_version() {
    for sub in ["probe", "bench", "check-config", "list", "describe"] {
        let out = run(&[sub, "--help"]).await;
        assert_eq!(out.code, Some(0), "{sub}: {}", out.stderr);
        assert!(
            out.stdout.contains("Usage: tonic-retry"),
            "{sub}: {}",
            out.stdout
        );
    }
    let out = run(&["--version"]).await;
    assert_eq!(out.code, Some(0));
    assert_eq!(
        out.stdout.trim(),
        format!("tonic-retry {}", env!("CARGO_PKG_VERSION"))
    );
    // No subcommand: usage on stderr, status 2.
    let out = run(&[]).await;
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("Usage"), "{}", out.stderr);
    run(&["frobnicate"]).await.assert_rejected("frobnicate");
}
