//! JSON requests and responses: schemas from the server's reflection service
//! (v1, falling back to v1alpha) or from `--proto` files compiled at run
//! time; `list` and `describe`; and the one-line errors when a schema is
//! missing or does not fit.

mod cli_support;

use cli_support::{
    Reflection, manifest_path, run, run_with_stdin, server_with_reflection, temp_dir, write,
};
use prost::Message as _;
use serde_json::json;
use tonic_retry::testing::TestServer;

const METHOD: &str = "retry.test.v1.Echo/Unary";

/// The JSON request used throughout: payload "hi" (base64 "aGk="), text.
const REQUEST: &str = r#"{"payload": "aGk=", "text": "hello"}"#;

/// The response the server sends for [`REQUEST`] on a call's first attempt:
/// the echo, and the request's size (4 + 7 bytes, as proto3 JSON's string
/// for a uint64). Default values (attempt 0) are left out.
fn echoed() -> serde_json::Value {
    json!({"payload": "aGk=", "text": "hello", "requestBytes": "11", "requestMessages": 1})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_in_and_out_through_reflection_v1() {
    let server = server_with_reflection(Reflection::V1).await;
    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "-d",
        REQUEST,
        "-H",
        "x-call-id:r1",
    ])
    .await;
    let lines = out.ok_lines();
    assert_eq!(lines[0]["code"], "OK", "{}", out.stderr);
    assert_eq!(lines[0]["response"], echoed());
    // The JSON became the right protobuf bytes on the wire.
    assert_eq!(server.attempts("r1")[0].request_bytes, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_falls_back_to_v1alpha() {
    let server = server_with_reflection(Reflection::V1Alpha).await;
    let out = run(&["probe", &server.uri(), METHOD, "-d", REQUEST]).await;
    assert_eq!(out.ok_lines()[0]["response"], echoed(), "{}", out.stderr);
    let out = run(&["list", &server.uri()]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.lines().any(|l| l == "retry.test.v1.Echo"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proto_file_needs_no_reflection_and_decodes_responses() {
    // A server without reflection: every request it sees is a call.
    let server = TestServer::start().await.unwrap();
    let proto = manifest_path("proto/echo.proto");
    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "--proto",
        &proto,
        "-d",
        REQUEST,
        "--calls",
        "2",
    ])
    .await;
    let lines = out.ok_lines();
    assert_eq!(lines[0]["response"], echoed());
    assert_eq!(lines[1]["response"], echoed());
    assert_eq!(
        server.total_attempts(),
        2,
        "no reflection request reached the server"
    );

    // Raw bytes in, JSON out: the schema decodes the response alone.
    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "--proto",
        &proto,
        "--data-hex",
        "0a026869",
    ])
    .await;
    assert_eq!(
        out.ok_lines()[0]["response"],
        json!({"payload": "aGk=", "requestBytes": "4", "requestMessages": 1})
    );

    // --import-path: the file named relative to it.
    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "--proto",
        "echo.proto",
        "-I",
        &manifest_path("proto"),
        "-d",
        REQUEST,
    ])
    .await;
    assert_eq!(out.ok_lines()[0]["response"], echoed(), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_from_a_file_and_from_stdin() {
    let server = server_with_reflection(Reflection::V1).await;
    let dir = temp_dir("schema-data-file");
    let file = write(&dir, "req.json", REQUEST);
    let out = run(&["probe", &server.uri(), METHOD, "-d", &format!("@{file}")]).await;
    assert_eq!(out.ok_lines()[0]["response"], echoed(), "{}", out.stderr);
    let out = run_with_stdin(&["probe", &server.uri(), METHOD, "-d", "@-"], Some(REQUEST)).await;
    assert_eq!(out.ok_lines()[0]["response"], echoed(), "{}", out.stderr);
    let missing = dir.join("none.json");
    run(&[
        "probe",
        &server.uri(),
        METHOD,
        "-d",
        &format!("@{}", missing.display()),
    ])
    .await
    .assert_rejected("none.json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_without_a_schema_source_is_a_one_line_error() {
    let server = TestServer::start().await.unwrap();
    run(&["probe", &server.uri(), METHOD, "-d", REQUEST])
        .await
        .assert_rejected("no reflection service");
    run(&["list", &server.uri()])
        .await
        .assert_rejected("no reflection service");
    // Nothing but the two reflection attempts (v1, then v1alpha) per run.
    assert!(
        server
            .all_attempts()
            .iter()
            .all(|a| a.method.contains("grpc.reflection"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_is_a_one_line_error() {
    let server = server_with_reflection(Reflection::V1).await;
    let proto = manifest_path("proto/echo.proto");
    let uri = server.uri();
    run(&["probe", &uri, "retry.test.v1.Echo/Nope", "-d", "{}"])
        .await
        .assert_rejected("has no method Nope");
    run(&["probe", &uri, "retry.test.v1.Nope/Unary", "-d", "{}"])
        .await
        .assert_rejected("does not know the symbol retry.test.v1.Nope");
    run(&["probe", &uri, "retry.test.v1.Nope/Unary", "--proto", &proto])
        .await
        .assert_rejected("has no service retry.test.v1.Nope");
    run(&["probe", &uri, "retry.test.v1.Echo/Bidi", "--proto", &proto])
        .await
        .assert_rejected("streaming");
    assert_eq!(server.total_attempts(), 0, "no call was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_does_not_match_the_message_is_a_one_line_error() {
    let server = server_with_reflection(Reflection::V1).await;
    let uri = server.uri();
    for (data, needle) in [
        (r#"{"nope": 1}"#, "unrecognized field name 'nope'"),
        (r#"{"text": 5}"#, "invalid type"),
        (r#"{"payload": "not base64!"}"#, "retry.test.v1.EchoRequest"),
        (r#"{"text": "a"} trailing"#, "trailing characters"),
        ("[1, 2]", "retry.test.v1.EchoRequest"),
    ] {
        run(&["probe", &uri, METHOD, "-d", data])
            .await
            .assert_rejected(needle);
    }
    assert_eq!(server.total_attempts(), 0, "no call was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_field_type_is_a_one_line_error() {
    let dir = temp_dir("schema-missing-type");
    let proto = write(
        &dir,
        "broken.proto",
        "syntax = \"proto3\";\npackage b;\nmessage Req { Missing m = 1; }\nservice S { rpc M(Req) returns (Req); }\n",
    );
    run(&["probe", "http://127.0.0.1:1", "b.S/M", "--proto", &proto])
        .await
        .assert_rejected("Missing");
    let importing = write(
        &dir,
        "importing.proto",
        "syntax = \"proto3\";\npackage b;\nimport \"absent.proto\";\n",
    );
    run(&["list", "--proto", &importing])
        .await
        .assert_rejected("absent.proto");

    // A server whose reflection service sends a file that imports one it
    // cannot send: the field's type stays unknown.
    let file = prost_types::FileDescriptorProto {
        name: Some("holey.proto".into()),
        package: Some("h".into()),
        dependency: vec!["gone.proto".into()],
        message_type: vec![prost_types::DescriptorProto {
            name: Some("Req".into()),
            field: vec![prost_types::FieldDescriptorProto {
                name: Some("g".into()),
                number: Some(1),
                label: Some(prost_types::field_descriptor_proto::Label::Optional as i32),
                r#type: Some(prost_types::field_descriptor_proto::Type::Message as i32),
                type_name: Some(".gone.Thing".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        service: vec![prost_types::ServiceDescriptorProto {
            name: Some("S".into()),
            method: vec![prost_types::MethodDescriptorProto {
                name: Some("M".into()),
                input_type: Some(".h.Req".into()),
                output_type: Some(".h.Req".into()),
                ..Default::default()
            }],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    };
    let set = prost_types::FileDescriptorSet { file: vec![file] }.encode_to_vec();
    let set: &'static [u8] = Box::leak(set.into_boxed_slice());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(set)
        .build_v1()
        .unwrap();
    let server = TestServer::builder()
        .add_service(reflection)
        .start()
        .await
        .unwrap();
    run(&["probe", &server.uri(), "h.S/M", "-d", "{}"])
        .await
        .assert_rejected("gone.proto");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_describe_by_reflection_and_by_proto_file() {
    let server = server_with_reflection(Reflection::V1).await;
    let uri = server.uri();
    let proto = manifest_path("proto/echo.proto");

    let out = run(&["list", &uri]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "grpc.reflection.v1.ServerReflection\nretry.test.v1.Echo\n"
    );
    let methods = "retry.test.v1.Echo.Unary\nretry.test.v1.Echo.ClientStream\n\
                   retry.test.v1.Echo.ServerStream\nretry.test.v1.Echo.Bidi\n";
    for args in [
        vec!["list", &uri, "retry.test.v1.Echo"],
        vec!["list", "--proto", &proto, "retry.test.v1.Echo"],
    ] {
        let out = run(&args).await;
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, methods, "{args:?}");
    }
    let out = run(&["list", "--proto", &proto]).await;
    assert_eq!(out.stdout, "retry.test.v1.Echo\n", "{}", out.stderr);

    let message = "retry.test.v1.EchoRequest is a message:\nmessage EchoRequest {\n  bytes payload = 1;\n  string text = 2;\n}\n";
    for args in [
        vec!["describe", &uri, "retry.test.v1.EchoRequest"],
        vec!["describe", "--proto", &proto, "retry.test.v1.EchoRequest"],
    ] {
        let out = run(&args).await;
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, message, "{args:?}");
    }
    let out = run(&["describe", &uri, "retry.test.v1.Echo/Bidi"]).await;
    assert_eq!(
        out.stdout,
        "retry.test.v1.Echo.Bidi is a method:\nrpc Bidi(stream .retry.test.v1.EchoRequest) returns (stream .retry.test.v1.EchoResponse);\n",
        "{}",
        out.stderr
    );
    let out = run(&["describe", &uri, "retry.test.v1.Echo"]).await;
    assert!(
        out.stdout
            .starts_with("retry.test.v1.Echo is a service:\nservice Echo {\n  rpc Unary("),
        "{}",
        out.stdout
    );
    run(&["describe", &uri, "retry.test.v1.Nothing"])
        .await
        .assert_rejected("retry.test.v1.Nothing");
    run(&["describe", "--proto", &proto, "retry.test.v1.Nothing"])
        .await
        .assert_rejected("no service, method, message or enum retry.test.v1.Nothing");
}
