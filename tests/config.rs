//! The gRFC A6 service-config JSON: every validation rule in its accepted and
//! rejected form, name matching, error formatting, and a fuzz-like robustness
//! check.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use tonic_retry::config::{parse_code, parse_duration};
use tonic_retry::{
    CodeSet, ConfigError, DEFAULT_REPLAY_LIMIT, HedgingPolicy, Jitter, RetryThrottling,
    ServiceConfig,
};

// ---------------------------------------------------------------------------
// Helpers.

const SAMPLE: &str = r#"
{"methodConfig": [{"name": [{"service": "pkg.Svc", "method": "M"}],
                   "timeout": "2s",
                   "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
                                   "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
 "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}
"#;

fn ok(value: Value) -> ServiceConfig {
    let text = value.to_string();
    ServiceConfig::from_json(&text).unwrap_or_else(|e| panic!("{text} should be valid: {e}"))
}

/// Asserts that `value` is rejected at `path` with a message containing
/// `needle`.
fn rejected(value: Value, path: &str, needle: &str) -> ConfigError {
    let text = value.to_string();
    let err = ServiceConfig::from_json(&text).expect_err(&text);
    assert_eq!(err.path(), path, "{text}: {err}");
    assert!(
        err.message().contains(needle),
        "{text}: message {:?} should contain {needle:?}",
        err.message()
    );
    assert!(err.line().is_none() && err.column().is_none());
    if !path.is_empty() {
        assert_eq!(err.to_string(), format!("{path}: {}", err.message()));
    }
    err
}

/// A config with one methodConfig (named `pkg.Svc/M`) built from `fields`.
fn with_method(mut fields: Value) -> Value {
    fields["name"] = json!([{"service": "pkg.Svc", "method": "M"}]);
    json!({ "methodConfig": [fields] })
}

fn retry_policy() -> Value {
    json!({"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
           "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]})
}

/// The sample retry policy with `key` set to `value` (or removed if `None`).
fn retry_with(key: &str, value: Option<Value>) -> Value {
    let mut policy = retry_policy();
    match value {
        Some(v) => policy[key] = v,
        None => {
            policy.as_object_mut().unwrap().remove(key);
        }
    }
    with_method(json!({ "retryPolicy": policy }))
}

fn hedging_with(key: &str, value: Option<Value>) -> Value {
    let mut policy = json!({"maxAttempts": 3, "hedgingDelay": "0.5s",
                            "nonFatalStatusCodes": ["UNAVAILABLE"]});
    match value {
        Some(v) => policy[key] = v,
        None => {
            policy.as_object_mut().unwrap().remove(key);
        }
    }
    with_method(json!({ "hedgingPolicy": policy }))
}

fn throttling_with(key: &str, value: Option<Value>) -> Value {
    let mut throttling = json!({"maxTokens": 10, "tokenRatio": 0.1});
    match value {
        Some(v) => throttling[key] = v,
        None => {
            throttling.as_object_mut().unwrap().remove(key);
        }
    }
    json!({ "retryThrottling": throttling })
}

fn the_method(config: &ServiceConfig) -> &tonic_retry::MethodConfig {
    config.method_config("pkg.Svc", "M").expect("pkg.Svc/M")
}

// ---------------------------------------------------------------------------
// The sample, and the ways in.

#[test]
fn the_sample_parses_into_the_documented_values() {
    let config = ServiceConfig::from_json(SAMPLE).unwrap();
    assert_eq!(config.method_configs().len(), 1);
    let method = the_method(&config);
    assert_eq!(method.timeout, Some(Duration::from_secs(2)));
    assert!(method.hedging.is_none());
    assert_eq!(method.names().collect::<Vec<_>>(), vec![("pkg.Svc", "M")]);

    let retry = method.retry.as_ref().unwrap();
    assert_eq!(retry.max_attempts(), 4);
    assert_eq!(retry.initial_backoff(), Duration::from_millis(100));
    assert_eq!(retry.max_backoff(), Duration::from_secs(1));
    assert_eq!(retry.backoff_multiplier(), 2.0);
    assert_eq!(
        retry.retryable_codes(),
        CodeSet::EMPTY.with(Code::Unavailable)
    );
    // Everything A6 does not set keeps the builder defaults; the method
    // timeout is not copied into the policy.
    assert_eq!(retry.jitter(), Jitter::Proportional);
    assert_eq!(retry.replay_limit(), DEFAULT_REPLAY_LIMIT);
    assert_eq!(retry.timeout(), None);
    assert_eq!(retry.per_attempt_timeout(), None);

    assert_eq!(
        config.retry_throttling(),
        Some(&RetryThrottling {
            max_milli_tokens: 10_000,
            token_ratio_milli: 100
        })
    );
    // Debug works and mentions the names.
    assert!(format!("{config:?}").contains("pkg.Svc"));
}

#[test]
fn from_str_and_serde_deserialize_validate_the_same_way() {
    let parsed: ServiceConfig = SAMPLE.parse().unwrap();
    assert_eq!(the_method(&parsed).timeout, Some(Duration::from_secs(2)));
    assert!("[]".parse::<ServiceConfig>().is_err());

    #[derive(serde::Deserialize)]
    struct AppConfig {
        endpoint: String,
        grpc: ServiceConfig,
    }
    let app: AppConfig =
        serde_json::from_str(&format!(r#"{{"endpoint": "http://x", "grpc": {SAMPLE}}}"#)).unwrap();
    assert_eq!(app.endpoint, "http://x");
    assert!(app.grpc.method_config("pkg.Svc", "M").is_some());
    assert_eq!(app.grpc.retry_throttling().unwrap().token_ratio_milli, 100);

    let err = serde_json::from_str::<AppConfig>(
        r#"{"endpoint": "x", "grpc": {"methodConfig": [{"timeout": "0s"}]}}"#,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("methodConfig[0].timeout"), "{err}");

    let value: Value = serde_json::from_str(SAMPLE).unwrap();
    assert!(ServiceConfig::from_value(&value).is_ok());
}

// ---------------------------------------------------------------------------
// Errors: format, syntax errors.

#[test]
fn error_display_is_path_colon_rule() {
    let err = ServiceConfig::from_json(
        r#"{"methodConfig": [
            {"name": [{"service": "a"}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "1s",
              "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": [14]}},
            {"name": [{"service": "b"}], "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0s",
              "maxBackoff": "1s", "backoffMultiplier": 2, "retryableStatusCodes": [14]}}]}"#,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"methodConfig[1].retryPolicy.initialBackoff: "0s" must be > 0"#
    );
    assert_eq!(err.path(), "methodConfig[1].retryPolicy.initialBackoff");
    assert_eq!(err.message(), r#""0s" must be > 0"#);
    let boxed: Box<dyn std::error::Error> = Box::new(err.clone());
    assert_eq!(boxed.to_string(), err.to_string());
}

#[test]
fn malformed_json_reports_the_parser_position() {
    let err = ServiceConfig::from_json("{\"methodConfig\": [}").unwrap_err();
    assert_eq!(err.line(), Some(1));
    // The unexpected `}` is the 19th character.
    assert_eq!(err.column(), Some(19));
    assert_eq!(err.path(), "");
    assert!(
        err.to_string()
            .starts_with("invalid JSON at line 1 column 19: "),
        "{err}"
    );
    // The position is not repeated at the end of the message.
    assert!(!err.message().contains("at line"), "{}", err.message());

    let err =
        ServiceConfig::from_json("{\n  \"methodConfig\": [\n    {\"name\": [}]\n}").unwrap_err();
    assert_eq!(err.line(), Some(3));
    assert!(
        err.to_string()
            .starts_with("invalid JSON at line 3 column ")
    );

    for text in ["", "   ", "{", "{\"a\": }", "{} x", "{\"a\": 1,}", "nul"] {
        let err = ServiceConfig::from_json(text).unwrap_err();
        assert!(err.line().is_some(), "{text:?}: {err}");
        assert!(
            err.to_string().starts_with("invalid JSON at line "),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------
// Top level.

#[test]
fn top_level_must_be_an_object() {
    assert!(ok(json!({})).method_configs().is_empty());
    assert!(ok(json!({})).retry_throttling().is_none());
    for value in [json!([]), json!("x"), json!(null), json!(1), json!(true)] {
        let err = rejected(value, "", "must be a JSON object");
        assert_eq!(err.to_string(), err.message());
    }
}

#[test]
fn method_config_must_be_an_array() {
    assert!(ok(json!({"methodConfig": []})).method_configs().is_empty());
    assert!(
        ok(json!({"methodConfig": null}))
            .method_configs()
            .is_empty()
    );
    rejected(
        json!({"methodConfig": {}}),
        "methodConfig",
        "must be an array",
    );
    rejected(
        json!({"methodConfig": "x"}),
        "methodConfig",
        "must be an array",
    );
    rejected(
        json!({"methodConfig": [1]}),
        "methodConfig[0]",
        "must be an object",
    );
}

#[test]
fn retry_throttling_must_be_an_object() {
    assert!(
        ok(json!({"retryThrottling": null}))
            .retry_throttling()
            .is_none()
    );
    rejected(
        json!({"retryThrottling": []}),
        "retryThrottling",
        "must be an object",
    );
    rejected(
        json!({"retryThrottling": 10}),
        "retryThrottling",
        "must be an object",
    );
}

#[test]
fn unknown_and_unrelated_fields_are_ignored() {
    let config = ok(json!({
        "loadBalancingConfig": [{"round_robin": {}}],
        "loadBalancingPolicy": "round_robin",
        "healthCheckConfig": {"serviceName": "x"},
        "somethingNew": 42,
        "methodConfig": [{
            "name": [{"service": "pkg.Svc", "method": "M", "extra": true}],
            "waitForReady": true,
            "maxRequestMessageBytes": 1024,
            "maxResponseMessageBytes": "2048",
            "retryPolicy": {"maxAttempts": 3, "initialBackoff": "1s", "maxBackoff": "2s",
                            "backoffMultiplier": 1.5, "retryableStatusCodes": [14],
                            "perAttemptRecvTimeout": "1s"}
        }],
        "retryThrottling": {"maxTokens": 5, "tokenRatio": 1, "future": "x"}
    }));
    assert_eq!(
        the_method(&config).retry.as_ref().unwrap().max_attempts(),
        3
    );
    assert_eq!(config.retry_throttling().unwrap().max_milli_tokens, 5000);
}

// ---------------------------------------------------------------------------
// Names.

#[test]
fn method_configs_without_names_are_skipped() {
    for entry in [
        json!({"timeout": "1s"}),
        json!({"name": [], "timeout": "1s"}),
        json!({"name": null, "timeout": "1s"}),
    ] {
        let config = ok(json!({ "methodConfig": [entry] }));
        assert!(config.method_configs().is_empty());
        assert!(config.method_config("", "").is_none());
        assert!(config.method_config("pkg.Svc", "M").is_none());
    }
    // A skipped entry is still validated: the config is rejected as a whole.
    rejected(
        json!({"methodConfig": [{"timeout": "soon"}]}),
        "methodConfig[0].timeout",
        "not a valid duration",
    );
    // Skipped entries do not disturb the indices of the others.
    let config = ok(json!({"methodConfig": [
        {"timeout": "1s"},
        {"name": [{"service": "a"}], "timeout": "2s"}]}));
    assert_eq!(config.method_configs().len(), 1);
    assert_eq!(
        config.method_config("a", "x").unwrap().timeout,
        Some(Duration::from_secs(2))
    );
}

#[test]
fn names_must_be_an_array_of_objects_with_string_fields() {
    ok(with_method(json!({})));
    rejected(
        json!({"methodConfig": [{"name": {"service": "a"}}]}),
        "methodConfig[0].name",
        "must be an array",
    );
    rejected(
        json!({"methodConfig": [{"name": ["pkg.Svc/M"]}]}),
        "methodConfig[0].name[0]",
        "must be an object",
    );
    rejected(
        json!({"methodConfig": [{"name": [{"service": 1}]}]}),
        "methodConfig[0].name[0].service",
        "must be a string",
    );
    rejected(
        json!({"methodConfig": [{"name": [{"service": "a", "method": ["M"]}]}]}),
        "methodConfig[0].name[0].method",
        "must be a string",
    );
}

#[test]
fn a_method_needs_a_service() {
    ok(json!({"methodConfig": [{"name": [{"service": "a", "method": "M"}]}]}));
    rejected(
        json!({"methodConfig": [{"name": [{"method": "M"}]}]}),
        "methodConfig[0].name[0]",
        "without a service",
    );
    rejected(
        json!({"methodConfig": [{"name": [{"service": "a"}, {"service": "", "method": "M"}]}]}),
        "methodConfig[0].name[1]",
        "without a service",
    );
}

#[test]
fn a_name_listed_twice_is_an_error() {
    ok(json!({"methodConfig": [
        {"name": [{"service": "a", "method": "M"}, {"service": "a"}, {}]},
        {"name": [{"service": "a", "method": "N"}, {"service": "b"}]}]}));

    // Within one methodConfig.
    let err = rejected(
        json!({"methodConfig": [{"name": [{"service": "a", "method": "M"},
                                          {"service": "a", "method": "M"}]}]}),
        "methodConfig[0].name[1]",
        "listed twice",
    );
    assert!(err.message().contains("\"a/M\""), "{err}");
    assert!(err.message().contains("methodConfig[0].name[0]"), "{err}");

    // Across methodConfigs.
    let err = rejected(
        json!({"methodConfig": [
            {"name": [{"service": "x"}, {"service": "a", "method": "M"}]},
            {"name": [{"service": "a", "method": "M"}]}]}),
        "methodConfig[1].name[0]",
        "listed twice",
    );
    assert!(err.message().contains("methodConfig[0].name[1]"), "{err}");

    // Absent and empty method are the same name; so are the default forms.
    rejected(
        json!({"methodConfig": [{"name": [{"service": "a"}]},
                                {"name": [{"service": "a", "method": ""}]}]}),
        "methodConfig[1].name[0]",
        "service \"a\" is listed twice",
    );
    rejected(
        json!({"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]}),
        "methodConfig[1].name[0]",
        "default name",
    );
    rejected(
        json!({"methodConfig": [{"name": [{}, {"service": "", "method": ""}]}]}),
        "methodConfig[0].name[1]",
        "default name",
    );
}

#[test]
fn the_most_specific_name_wins() {
    let config = ok(json!({"methodConfig": [
        {"name": [{}], "timeout": "1s"},
        {"name": [{"service": "pkg.Svc"}], "timeout": "2s"},
        {"name": [{"service": "pkg.Svc", "method": "M"}], "timeout": "3s"},
        {"name": [{"service": "other.Svc", "method": "X"}], "timeout": "4s"}]}));
    let timeout = |s: &str, m: &str| config.method_config(s, m).unwrap().timeout.unwrap();
    assert_eq!(timeout("pkg.Svc", "M"), Duration::from_secs(3));
    assert_eq!(timeout("pkg.Svc", "N"), Duration::from_secs(2));
    assert_eq!(timeout("pkg.Svc", ""), Duration::from_secs(2));
    assert_eq!(timeout("other.Svc", "X"), Duration::from_secs(4));
    // A service with method-level entries only falls back to the default.
    assert_eq!(timeout("other.Svc", "Y"), Duration::from_secs(1));
    assert_eq!(timeout("unknown.Svc", "M"), Duration::from_secs(1));
    assert_eq!(timeout("", ""), Duration::from_secs(1));
    // Matching is exact and case-sensitive.
    assert_eq!(timeout("pkg.svc", "M"), Duration::from_secs(1));
    assert_eq!(timeout("pkg.Svc", "m"), Duration::from_secs(2));

    // The order of declaration does not matter.
    let reversed = ok(json!({"methodConfig": [
        {"name": [{"service": "pkg.Svc", "method": "M"}], "timeout": "3s"},
        {"name": [{"service": "pkg.Svc"}], "timeout": "2s"},
        {"name": [{"service": ""}], "timeout": "1s"}]}));
    let timeout = |s: &str, m: &str| reversed.method_config(s, m).unwrap().timeout.unwrap();
    assert_eq!(timeout("pkg.Svc", "M"), Duration::from_secs(3));
    assert_eq!(timeout("pkg.Svc", "N"), Duration::from_secs(2));
    assert_eq!(timeout("x", "y"), Duration::from_secs(1));
}

#[test]
fn without_a_default_unmatched_methods_get_none() {
    let config = ok(json!({"methodConfig": [
        {"name": [{"service": "pkg.Svc", "method": "M"}], "timeout": "3s"},
        {"name": [{"service": "svc.Only"}], "timeout": "2s"}]}));
    assert!(config.method_config("pkg.Svc", "N").is_none());
    assert!(config.method_config("pkg.Svc", "").is_none());
    assert!(config.method_config("other", "M").is_none());
    assert!(config.method_config("", "").is_none());
    assert!(config.method_config("svc.Only", "Anything").is_some());
}

#[test]
fn one_entry_may_carry_several_names() {
    let config = ok(json!({"methodConfig": [
        {"name": [{"service": "a", "method": "M"}, {"service": "b"}], "timeout": "3s"}]}));
    let a = config.method_config("a", "M").unwrap();
    let b = config.method_config("b", "Z").unwrap();
    assert!(std::ptr::eq(a, b));
    assert_eq!(a.names().collect::<Vec<_>>(), vec![("a", "M"), ("b", "")]);
}

// ---------------------------------------------------------------------------
// timeout.

#[test]
fn timeout_is_a_positive_duration() {
    let t = |v: Value| the_method(&ok(with_method(json!({ "timeout": v })))).timeout;
    assert_eq!(t(json!("2s")), Some(Duration::from_secs(2)));
    assert_eq!(t(json!(".5s")), Some(Duration::from_millis(500)));
    assert_eq!(t(json!("0.000000001s")), Some(Duration::from_nanos(1)));
    assert_eq!(t(json!(null)), None);
    assert_eq!(the_method(&ok(with_method(json!({})))).timeout, None);

    let path = "methodConfig[0].timeout";
    let err = rejected(with_method(json!({"timeout": "0s"})), path, "must be > 0");
    assert_eq!(
        err.message(),
        "\"0s\" must be > 0 (a zero timeout would fail every call at once)"
    );
    rejected(
        with_method(json!({"timeout": "0.000s"})),
        path,
        "must be > 0",
    );
    rejected(
        with_method(json!({"timeout": 2})),
        path,
        "must be a duration string",
    );
    rejected(
        with_method(json!({"timeout": "1ms"})),
        path,
        "not a valid duration",
    );
    rejected(with_method(json!({"timeout": "-1s"})), path, "negative");
}

// ---------------------------------------------------------------------------
// retryPolicy.

#[test]
fn retry_max_attempts_is_an_integer_above_one_clamped_to_five() {
    let attempts = |v: Value| {
        the_method(&ok(retry_with("maxAttempts", Some(v))))
            .retry
            .as_ref()
            .unwrap()
            .max_attempts()
    };
    assert_eq!(attempts(json!(2)), 2);
    assert_eq!(attempts(json!(5)), 5);
    assert_eq!(attempts(json!(4.0)), 4);
    assert_eq!(attempts(json!(6)), 5);
    assert_eq!(attempts(json!(10)), 5);
    assert_eq!(attempts(json!(1e3)), 5);
    assert_eq!(attempts(json!(u64::MAX)), 5);

    let path = "methodConfig[0].retryPolicy.maxAttempts";
    for bad in [
        json!(1),
        json!(0),
        json!(-1),
        json!(2.5),
        json!("4"),
        json!(true),
        json!([4]),
    ] {
        rejected(
            retry_with("maxAttempts", Some(bad)),
            path,
            "must be an integer > 1",
        );
    }
    rejected(retry_with("maxAttempts", None), path, "is required");
    rejected(
        retry_with("maxAttempts", Some(Value::Null)),
        path,
        "is required",
    );
}

#[test]
fn retry_backoffs_are_required_positive_durations() {
    for key in ["initialBackoff", "maxBackoff"] {
        let policy = the_method(&ok(retry_with(key, Some(json!("0.25s")))))
            .retry
            .clone()
            .unwrap();
        let got = if key == "initialBackoff" {
            policy.initial_backoff()
        } else {
            policy.max_backoff()
        };
        assert_eq!(got, Duration::from_millis(250));

        let path = format!("methodConfig[0].retryPolicy.{key}");
        let err = rejected(retry_with(key, Some(json!("0s"))), &path, "must be > 0");
        assert_eq!(err.message(), "\"0s\" must be > 0");
        rejected(retry_with(key, Some(json!("0.0s"))), &path, "must be > 0");
        rejected(retry_with(key, None), &path, "is required");
        rejected(
            retry_with(key, Some(json!(1))),
            &path,
            "must be a duration string",
        );
        rejected(
            retry_with(key, Some(json!("1"))),
            &path,
            "does not end in \"s\"",
        );
        rejected(
            retry_with(key, Some(json!("100ms"))),
            &path,
            "not a valid duration",
        );
    }
    // A6 does not order the two; maxBackoff < initialBackoff simply caps it.
    let mut policy = retry_policy();
    policy["initialBackoff"] = json!("2s");
    policy["maxBackoff"] = json!("1s");
    ok(with_method(json!({ "retryPolicy": policy })));
}

#[test]
fn retry_backoff_multiplier_is_a_required_positive_number() {
    let multiplier = |v: Value| {
        the_method(&ok(retry_with("backoffMultiplier", Some(v))))
            .retry
            .as_ref()
            .unwrap()
            .backoff_multiplier()
    };
    assert_eq!(multiplier(json!(1)), 1.0);
    assert_eq!(multiplier(json!(1.5)), 1.5);
    assert_eq!(multiplier(json!(0.5)), 0.5);

    let path = "methodConfig[0].retryPolicy.backoffMultiplier";
    for bad in [json!(0), json!(0.0), json!(-1), json!("2"), json!(false)] {
        rejected(
            retry_with("backoffMultiplier", Some(bad)),
            path,
            "must be a number > 0",
        );
    }
    rejected(retry_with("backoffMultiplier", None), path, "is required");
}

#[test]
fn retryable_status_codes_accept_integers_and_names_in_any_case() {
    let codes = |v: Value| {
        the_method(&ok(retry_with("retryableStatusCodes", Some(v))))
            .retry
            .as_ref()
            .unwrap()
            .retryable_codes()
    };
    let unavailable = CodeSet::EMPTY.with(Code::Unavailable);
    assert_eq!(codes(json!(["UNAVAILABLE"])), unavailable);
    assert_eq!(codes(json!(["unavailable"])), unavailable);
    assert_eq!(codes(json!(["Unavailable"])), unavailable);
    assert_eq!(codes(json!([14])), unavailable);
    assert_eq!(codes(json!([14, "UNAVAILABLE"])), unavailable);
    assert_eq!(
        codes(json!(["resource_exhausted", 10, "DATA_LOSS"])),
        CodeSet::EMPTY
            .with(Code::ResourceExhausted)
            .with(Code::Aborted)
            .with(Code::DataLoss)
    );
}

#[test]
fn retryable_status_codes_reject_bad_lists_and_codes() {
    let path = "methodConfig[0].retryPolicy.retryableStatusCodes";
    rejected(
        retry_with("retryableStatusCodes", None),
        path,
        "is required",
    );
    rejected(
        retry_with("retryableStatusCodes", Some(json!([]))),
        path,
        "must not be empty",
    );
    rejected(
        retry_with("retryableStatusCodes", Some(json!("UNAVAILABLE"))),
        path,
        "must be an array",
    );
    let err = rejected(
        retry_with("retryableStatusCodes", Some(json!(["UNAVAILABLE", "FOO"]))),
        &format!("{path}[1]"),
        "unknown status code name \"FOO\"",
    );
    assert!(err.to_string().starts_with(&format!("{path}[1]: ")));
    for bad in [
        json!(17),
        json!(-1),
        json!(2.5),
        json!("14"),
        json!(true),
        json!(null),
        json!("DeadlineExceeded"),
        json!("UNAVAILABLE "),
    ] {
        rejected(
            retry_with("retryableStatusCodes", Some(json!([14, bad]))),
            &format!("{path}[1]"),
            "",
        );
    }
    for ok_code in [json!("OK"), json!("ok"), json!(0)] {
        rejected(
            retry_with("retryableStatusCodes", Some(json!([14, ok_code]))),
            &format!("{path}[1]"),
            "OK is not a failure",
        );
    }
}

#[test]
fn retry_policy_must_be_an_object() {
    assert!(
        the_method(&ok(with_method(json!({"retryPolicy": null}))))
            .retry
            .is_none()
    );
    rejected(
        with_method(json!({"retryPolicy": []})),
        "methodConfig[0].retryPolicy",
        "must be an object",
    );
}

// ---------------------------------------------------------------------------
// hedgingPolicy.

#[test]
fn hedging_policy_parses_with_defaults_for_optional_fields() {
    let hedging = |v: Value| the_method(&ok(v)).hedging.clone().unwrap();
    assert_eq!(
        hedging(hedging_with("maxAttempts", Some(json!(3)))),
        HedgingPolicy {
            max_attempts: 3,
            hedging_delay: Duration::from_millis(500),
            non_fatal_codes: CodeSet::EMPTY.with(Code::Unavailable),
            per_attempt_timeout: None,
        }
    );
    assert_eq!(
        hedging(hedging_with("maxAttempts", Some(json!(7)))).max_attempts,
        5
    );
    assert_eq!(
        hedging(hedging_with("maxAttempts", Some(json!(2.0)))).max_attempts,
        2
    );
    assert_eq!(
        hedging(hedging_with("hedgingDelay", None)).hedging_delay,
        Duration::ZERO
    );
    assert_eq!(
        hedging(hedging_with("hedgingDelay", Some(json!("0s")))).hedging_delay,
        Duration::ZERO
    );
    assert!(
        hedging(hedging_with("nonFatalStatusCodes", None))
            .non_fatal_codes
            .is_empty()
    );
    assert!(
        hedging(hedging_with("nonFatalStatusCodes", Some(json!([]))))
            .non_fatal_codes
            .is_empty()
    );
    assert_eq!(
        hedging(hedging_with(
            "nonFatalStatusCodes",
            Some(json!(["aborted", 14]))
        ))
        .non_fatal_codes,
        CodeSet::EMPTY.with(Code::Aborted).with(Code::Unavailable)
    );
    assert!(
        the_method(&ok(hedging_with("maxAttempts", Some(json!(2)))))
            .retry
            .is_none()
    );
}

#[test]
fn hedging_policy_rejects_bad_values() {
    let base = "methodConfig[0].hedgingPolicy";
    let path = format!("{base}.maxAttempts");
    for bad in [json!(1), json!(0), json!(2.5), json!("3")] {
        rejected(
            hedging_with("maxAttempts", Some(bad)),
            &path,
            "must be an integer > 1",
        );
    }
    rejected(hedging_with("maxAttempts", None), &path, "is required");

    let path = format!("{base}.hedgingDelay");
    rejected(
        hedging_with("hedgingDelay", Some(json!("-1s"))),
        &path,
        "negative",
    );
    rejected(
        hedging_with("hedgingDelay", Some(json!(0))),
        &path,
        "duration string",
    );

    let path = format!("{base}.nonFatalStatusCodes");
    rejected(
        hedging_with("nonFatalStatusCodes", Some(json!(14))),
        &path,
        "must be an array",
    );
    rejected(
        hedging_with("nonFatalStatusCodes", Some(json!([14, "NOPE"]))),
        &format!("{path}[1]"),
        "unknown status code name",
    );
    rejected(
        hedging_with("nonFatalStatusCodes", Some(json!(["OK"]))),
        &format!("{path}[0]"),
        "OK is not a failure",
    );
    rejected(
        with_method(json!({"hedgingPolicy": "fast"})),
        base,
        "must be an object",
    );
}

#[test]
fn retry_and_hedging_are_mutually_exclusive() {
    let err = rejected(
        with_method(json!({
            "retryPolicy": retry_policy(),
            "hedgingPolicy": {"maxAttempts": 3}
        })),
        "methodConfig[0].hedgingPolicy",
        "not both",
    );
    assert!(err.message().contains("retryPolicy"));
    // Either one alone is fine (and a null one counts as absent).
    ok(with_method(
        json!({"retryPolicy": retry_policy(), "hedgingPolicy": null}),
    ));
    ok(with_method(json!({"hedgingPolicy": {"maxAttempts": 3}})));
}

// ---------------------------------------------------------------------------
// retryThrottling.

#[test]
fn max_tokens_is_a_number_in_zero_to_one_thousand() {
    let milli = |v: Value| {
        ok(throttling_with("maxTokens", Some(v)))
            .retry_throttling()
            .unwrap()
            .max_milli_tokens
    };
    assert_eq!(milli(json!(10)), 10_000);
    assert_eq!(milli(json!(1)), 1_000);
    assert_eq!(milli(json!(1000)), 1_000_000);
    assert_eq!(milli(json!(1000.0)), 1_000_000);
    assert_eq!(milli(json!(0.5)), 500);
    assert_eq!(milli(json!(10.5678)), 10_567);

    let path = "retryThrottling.maxTokens";
    for bad in [
        json!(0),
        json!(-1),
        json!(1000.5),
        json!(1001),
        json!("10"),
        json!([]),
    ] {
        rejected(
            throttling_with("maxTokens", Some(bad)),
            path,
            "greater than 0 and at most 1000",
        );
    }
    rejected(
        throttling_with("maxTokens", Some(json!(0.0004))),
        path,
        "truncated",
    );
    rejected(throttling_with("maxTokens", None), path, "is required");
}

#[test]
fn token_ratio_is_positive_and_truncated_to_three_decimals() {
    let milli = |v: Value| {
        ok(throttling_with("tokenRatio", Some(v)))
            .retry_throttling()
            .unwrap()
            .token_ratio_milli
    };
    assert_eq!(milli(json!(0.1)), 100);
    assert_eq!(milli(json!(0.1234)), 123);
    assert_eq!(milli(json!(0.1239)), 123);
    assert_eq!(milli(json!(0.001)), 1);
    assert_eq!(milli(json!(1)), 1000);
    // 1.001 × 1000 is 1000.999… in binary floating point.
    assert_eq!(milli(json!(1.001)), 1001);
    assert_eq!(milli(json!(4.35)), 4350);
    assert_eq!(milli(json!(2000)), 2_000_000);

    let path = "retryThrottling.tokenRatio";
    let err = rejected(
        throttling_with("tokenRatio", Some(json!(0.0004))),
        path,
        "truncated",
    );
    assert!(err.message().contains("0.0004"), "{err}");
    for bad in [json!(0), json!(-0.1), json!("0.1"), json!({})] {
        rejected(
            throttling_with("tokenRatio", Some(bad)),
            path,
            "must be a number > 0",
        );
    }
    rejected(throttling_with("tokenRatio", None), path, "is required");
}

// ---------------------------------------------------------------------------
// parse_duration and parse_code.

#[test]
fn parse_duration_accepts_proto3_json_durations() {
    let cases = [
        ("0s", Duration::ZERO),
        ("2s", Duration::from_secs(2)),
        ("0.1s", Duration::from_millis(100)),
        (".5s", Duration::from_millis(500)),
        (".01s", Duration::from_millis(10)),
        ("1.000000001s", Duration::new(1, 1)),
        ("0.999999999s", Duration::new(0, 999_999_999)),
        ("007s", Duration::from_secs(7)),
        ("315576000000s", Duration::from_secs(315_576_000_000)),
        (
            "315576000000.000000000s",
            Duration::from_secs(315_576_000_000),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
}

#[test]
fn parse_duration_rejects_everything_else_without_panicking() {
    for text in [
        "",
        "s",
        ".s",
        "1.s",
        "1",
        "1ms",
        "1m",
        "1S",
        "-1s",
        "+1s",
        " 1s",
        "1s ",
        "1 s",
        "1.0000000001s",
        "1e3s",
        "0x10s",
        "1.2.3s",
        "１s",
        "1.５s",
        "--1s",
        "inf s",
        "NaNs",
        "315576000000.000000001s",
        "315576000001s",
        "18446744073709551616s",
        "99999999999999999999999999999999999999s",
    ] {
        let err = parse_duration(text).expect_err(text);
        assert!(err.contains("not a valid duration"), "{text:?}: {err}");
    }
}

#[test]
fn parse_code_accepts_integers_and_case_insensitive_names() {
    for i in 0..=16 {
        let code = Code::from_i32(i);
        assert_eq!(parse_code(&json!(i)), Ok(code));
        let name = tonic_retry::code_name(code);
        assert_eq!(parse_code(&json!(name)), Ok(code));
        assert_eq!(parse_code(&json!(name.to_lowercase())), Ok(code));
    }
    assert_eq!(parse_code(&json!("Unavailable")), Ok(Code::Unavailable));
    assert_eq!(
        parse_code(&json!("dEaDlInE_eXcEeDeD")),
        Ok(Code::DeadlineExceeded)
    );
    assert_eq!(parse_code(&json!(14.0)), Ok(Code::Unavailable));
    for bad in [
        json!(17),
        json!(-1),
        json!(14.5),
        json!(1e10),
        json!("14"),
        json!(""),
        json!("FOO"),
        json!("DeadlineExceeded"),
        json!(null),
        json!(true),
        json!([14]),
        json!({"code": 14}),
    ] {
        assert!(parse_code(&bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------
// method_config never allocates.

struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; it only
// counts allocations made by the current thread.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

#[test]
fn method_config_lookup_does_not_allocate() {
    let config = ok(json!({"methodConfig": [
        {"name": [{}], "timeout": "1s"},
        {"name": [{"service": "pkg.Svc"}], "timeout": "2s"},
        {"name": [{"service": "pkg.Svc", "method": "M"}], "timeout": "3s"}]}));
    let lookups = [("pkg.Svc", "M"), ("pkg.Svc", "N"), ("other", "M"), ("", "")];
    // The counter works: an allocation on this thread is seen.
    let before = ALLOCATIONS.with(Cell::get);
    drop(std::hint::black_box(vec![0u8; 16]));
    assert!(ALLOCATIONS.with(Cell::get) > before);

    let before = ALLOCATIONS.with(Cell::get);
    let mut found = 0;
    for _ in 0..100 {
        for (service, method) in lookups {
            found += usize::from(config.method_config(service, method).is_some());
        }
    }
    let after = ALLOCATIONS.with(Cell::get);
    assert_eq!(found, 400);
    assert_eq!(after - before, 0, "method_config allocated");
}

// ---------------------------------------------------------------------------
// Fuzz-like robustness: random and mutated documents never panic.

const KEYS: &[&str] = &[
    "methodConfig",
    "retryThrottling",
    "name",
    "service",
    "method",
    "timeout",
    "retryPolicy",
    "hedgingPolicy",
    "maxAttempts",
    "initialBackoff",
    "maxBackoff",
    "backoffMultiplier",
    "retryableStatusCodes",
    "hedgingDelay",
    "nonFatalStatusCodes",
    "maxTokens",
    "tokenRatio",
    "waitForReady",
    "x",
];

fn random_scalar(rng: &mut fastrand::Rng) -> Value {
    const STRINGS: &[&str] = &[
        "",
        "s",
        "0s",
        "1s",
        ".5s",
        "1.s",
        "-1s",
        "1.0000000001s",
        "99999999999999999999s",
        "315576000000.5s",
        "UNAVAILABLE",
        "ok",
        "OK",
        "unavailable",
        "FOO",
        "pkg.Svc",
        "M",
        "é",
        "\u{0}",
        "14",
    ];
    match rng.u8(0..10) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => json!(rng.i64(-3..20)),
        3 => json!(rng.u64(..)),
        4 => json!(rng.i64(..)),
        5 => json!((rng.f64() - 0.5) * 10f64.powi(rng.i32(-6..12))),
        6 => json!([0.0004, 1000.0, 1000.0001, 0.1234, 1e300, -0.0, 2.5, 4.0][rng.usize(..8)]),
        _ => json!(STRINGS[rng.usize(..STRINGS.len())]),
    }
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    if depth == 0 || rng.u8(0..3) == 0 {
        return random_scalar(rng);
    }
    if rng.bool() {
        let len = rng.usize(0..4);
        Value::Array((0..len).map(|_| random_value(rng, depth - 1)).collect())
    } else {
        let len = rng.usize(0..6);
        Value::Object(
            (0..len)
                .map(|_| {
                    let key = KEYS[rng.usize(..KEYS.len())].to_owned();
                    (key, random_value(rng, depth - 1))
                })
                .collect(),
        )
    }
}

/// A mostly valid config with some leaves replaced by random values.
fn perturbed_sample(rng: &mut fastrand::Rng) -> Value {
    fn walk(value: &mut Value, rng: &mut fastrand::Rng) {
        if rng.u8(0..12) == 0 {
            *value = random_value(rng, 2);
            return;
        }
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, rng)),
            Value::Object(map) => map.values_mut().for_each(|v| walk(v, rng)),
            _ => {}
        }
    }
    let mut value = json!({"methodConfig": [
        {"name": [{"service": "pkg.Svc", "method": "M"}, {"service": "pkg.Svc"}, {}],
         "timeout": "2s", "retryPolicy": retry_policy()},
        {"name": [{"service": "b"}],
         "hedgingPolicy": {"maxAttempts": 3, "hedgingDelay": "0.5s", "nonFatalStatusCodes": [14]}}],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}});
    walk(&mut value, rng);
    value
}

/// Byte-level mutations of valid JSON text (may produce invalid UTF-8, which
/// is replaced lossily).
fn mutated_text(rng: &mut fastrand::Rng, seed: &str) -> String {
    const TOKENS: &[&str] = &[
        "{", "}", "[", "]", ",", ":", "\"", "\\", "0", "-", ".", "e", "1e999", "null", "s",
        "\"s\"", "\u{7f}", "\u{fffd}", " ", "\n",
    ];
    let mut bytes = seed.as_bytes().to_vec();
    for _ in 0..rng.usize(1..6) {
        let at = rng.usize(..=bytes.len());
        match rng.u8(0..4) {
            0 if !bytes.is_empty() => {
                let end = (at + rng.usize(1..8)).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            1 => {
                let token = TOKENS[rng.usize(..TOKENS.len())].as_bytes();
                bytes.splice(at..at, token.iter().copied());
            }
            2 if at < bytes.len() => bytes[at] = rng.u8(..),
            _ => {
                let dup_end = (at + rng.usize(0..16)).min(bytes.len());
                let chunk = bytes[at..dup_end].to_vec();
                bytes.splice(at..at, chunk);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn exercise(text: &str) -> bool {
    match ServiceConfig::from_json(text) {
        Ok(config) => {
            for (service, method) in [("pkg.Svc", "M"), ("pkg.Svc", "N"), ("b", ""), ("", "")] {
                let _ = config.method_config(service, method);
            }
            let _ = format!("{config:?}");
            for method in config.method_configs() {
                assert!(!(method.retry.is_some() && method.hedging.is_some()));
                if let Some(retry) = &method.retry {
                    assert!((2..=5).contains(&retry.max_attempts()));
                }
                if let Some(hedging) = &method.hedging {
                    assert!((2..=5).contains(&hedging.max_attempts));
                }
            }
            if let Some(t) = config.retry_throttling() {
                assert!((1..=1_000_000).contains(&t.max_milli_tokens));
                assert!(t.token_ratio_milli >= 1);
            }
            true
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            false
        }
    }
}

#[test]
fn random_and_mutated_documents_never_panic() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_00a6);
    let mut accepted = 0;
    let mut total = 0;
    let seeds = [
        SAMPLE.to_owned(),
        perturbed_sample(&mut rng.clone()).to_string(),
    ];
    for _ in 0..2000 {
        let value = perturbed_sample(&mut rng);
        accepted += usize::from(exercise(&value.to_string()));
        total += 1;
    }
    for _ in 0..1500 {
        let value = random_value(&mut rng, 5);
        accepted += usize::from(exercise(&value.to_string()));
        total += 1;
    }
    for i in 0..2500 {
        let text = mutated_text(&mut rng, &seeds[i % seeds.len()]);
        accepted += usize::from(exercise(&text));
        total += 1;
    }
    // Deep nesting hits serde_json's recursion limit, which is an error.
    let deep = "[".repeat(10_000);
    assert!(!exercise(&deep));
    // The generators reach both outcomes.
    assert!(accepted > 0 && accepted < total, "{accepted} of {total}");
}
