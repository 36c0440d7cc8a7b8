//! `tonic-retry bench`: the interleaved rounds it promises reach the server,
//! the layer side really runs under the layer, and the report carries every
//! side at every concurrency. (Its figures are measured in the README and
//! BENCHMARKS.md, not asserted here: a test machine's timing proves
//! nothing.)

mod cli_support;

use cli_support::{manifest_path, run};
use serde_json::Value;
use tonic_retry::testing::{FaultAction, TestServer, fault_header};

const METHOD: &str = "retry.test.v1.Echo/Unary";

fn check_side(side: &Value, calls: u64) {
    assert_eq!(side["calls"], calls, "{side}");
    assert_eq!(side["errors"], 0, "{side}");
    let (p50, p99, mean, rate) = (
        side["p50_us"].as_f64().unwrap(),
        side["p99_us"].as_f64().unwrap(),
        side["mean_us"].as_f64().unwrap(),
        side["calls_per_s"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{side}");
    assert!(mean > 0.0 && rate > 0.0, "{side}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_round_reaches_the_server_and_the_layer_side_runs_under_the_layer() {
    let server = TestServer::start().await.unwrap();
    let dir = cli_support::temp_dir("bench-rounds");
    // A timeout makes the layer send grpc-timeout on every attempt; the raw
    // clients send none. So the server can tell the sides apart.
    let config = cli_support::write(
        &dir,
        "sc.json",
        r#"{"methodConfig": [{"name": [{}], "timeout": "30s"}]}"#,
    );
    let out = run(&[
        "bench",
        &server.uri(),
        METHOD,
        "--data-hex",
        "0a026869",
        "--service-config",
        &config,
        "--calls",
        "40",
        "--rounds",
        "2",
        "--concurrency",
        "1,4",
        "--json",
    ])
    .await;
    let report = &out.ok_lines()[0];
    assert_eq!(report["method"], "/retry.test.v1.Echo/Unary");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for (level, concurrency) in results.iter().zip([1, 4]) {
        assert_eq!(level["concurrency"], concurrency);
        assert_eq!(level["rounds"], 2);
        assert_eq!(level["calls_per_round"], 20);
        for side in ["raw", "layer", "control"] {
            check_side(&level[side], 40);
        }
        for ratio in ["ratio", "control_ratio"] {
            let r = &level[ratio];
            let (p10, median, p90) = (
                r["p10"].as_f64().unwrap(),
                r["median"].as_f64().unwrap(),
                r["p90"].as_f64().unwrap(),
            );
            assert!(0.0 < p10 && p10 <= median && median <= p90, "{ratio}: {r}");
        }
    }

    // 5 warm-up rounds and 2 timed ones at each concurrency. Concurrency 1:
    // one block of 20 timed calls per side per round, after one untimed
    // call; concurrency 4: batches of 20 per side. Plus the first call,
    // which checks that the server answers at all.
    let c1_per_side = 7 * 21;
    let c4_per_side = 7 * 20;
    let attempts = server.all_attempts();
    assert_eq!(attempts.len(), 1 + 3 * (c1_per_side + c4_per_side));
    let layered = attempts.iter().filter(|a| a.grpc_timeout.is_some()).count();
    assert_eq!(layered, c1_per_side + c4_per_side);
    assert!(attempts.iter().all(|a| a.request_bytes == 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_has_each_side_and_both_ratios_and_plain_progress_lines() {
    let server = TestServer::start().await.unwrap();
    let out = run(&[
        "bench",
        &server.uri(),
        METHOD,
        "--proto",
        &manifest_path("proto/echo.proto"),
        "-d",
        r#"{"text": "x"}"#,
        "--calls",
        "20",
        "--rounds",
        "1",
        "--concurrency",
        "2",
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("layer: the default RetryPolicy"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("concurrency 2: 1 rounds of 20 calls per side"),
        "{}",
        out.stdout
    );
    for label in [
        "raw ",
        "layer ",
        "control ",
        "layer ÷ raw ",
        "control ÷ raw ",
    ] {
        assert!(
            out.stdout.contains(&format!("  {label}")),
            "{label}: {}",
            out.stdout
        );
    }
    // stderr is not a terminal here: plain progress lines, no bar.
    assert!(
        out.stderr
            .contains("tonic-retry bench: concurrency 2: 5 warm-up + 1 rounds"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\r'), "{:?}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_are_counted_per_side() {
    let server = TestServer::start().await.unwrap();
    // One call id for every call: the first attempt (the bench's check)
    // succeeds, every later one fails with a code no policy retries.
    let script = fault_header(&[
        FaultAction::ok(),
        FaultAction::code(tonic::Code::InvalidArgument).message("nope"),
    ]);
    let fault = format!("x-fault:{script}");
    let out = run(&[
        "bench",
        &server.uri(),
        METHOD,
        "-H",
        &fault,
        "-H",
        "x-call-id:one",
        "--calls",
        "20",
        "--rounds",
        "1",
        "--concurrency",
        "1",
        "--json",
    ])
    .await;
    let level = &out.ok_lines()[0]["results"][0];
    for side in ["raw", "layer", "control"] {
        assert_eq!(level[side]["calls"], 20, "{side}");
        assert_eq!(level[side]["errors"], 20, "{side}");
        assert_eq!(
            level[side]["first_error"], "INVALID_ARGUMENT: nope",
            "{side}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_call_that_fails_stops_the_bench_with_status_1() {
    let server = TestServer::start().await.unwrap();
    let fault = format!(
        "x-fault:{}",
        fault_header(&[FaultAction::code(tonic::Code::Unavailable)])
    );
    let out = run(&[
        "bench",
        &server.uri(),
        METHOD,
        "-H",
        &fault,
        "--calls",
        "20",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("the first call failed: UNAVAILABLE"),
        "{}",
        out.stderr
    );
    assert_eq!(server.total_attempts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bench_input_exits_2() {
    for (extra, needle) in [
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "1,x"], "--concurrency"),
        (["--calls", "0"], "--calls"),
        (["--rounds", "0"], "--rounds"),
    ] {
        let mut args = vec!["bench", "http://127.0.0.1:1", METHOD];
        args.extend(extra);
        run(&args).await.assert_rejected(needle);
    }
}
