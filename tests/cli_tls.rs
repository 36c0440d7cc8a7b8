//! `https://` targets: the test server serves TLS with certificates made at
//! test time (rcgen); the binary trusts a CA given with `--cacert`, checks
//! the name (`--authority` overrides it), and presents a client certificate
//! for mutual TLS (`--cert`/`--key`).
//!
//! A certificate the client does not trust is bad input: one line on
//! stderr naming rustls' reason, exit status 2, and no call is made.

mod cli_support;

use cli_support::{run, temp_dir, write};
use tonic_retry::testing::TestServer;
use tonic_retry::testing::tls::TestCa;

const METHOD: &str = "retry.test.v1.Echo/Unary";

/// A TLS test server with a certificate from `ca` for `names`; with
/// `client_ca`, it requires client certificates signed by it.
async fn tls_server(ca: &TestCa, names: &[&str], client_ca: Option<&TestCa>) -> TestServer {
    TestServer::builder()
        .tls(
            ca.issue(names).unwrap().identity(),
            client_ca.map(TestCa::certificate),
        )
        .start()
        .await
        .unwrap()
}

/// A leaf certificate and key from `ca`, PEM.
fn leaf(ca: &TestCa, names: &[&str]) -> (String, String) {
    let cert = ca.issue(names).unwrap();
    (cert.cert_pem, cert.key_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_the_given_ca_is_trusted() {
    let dir = temp_dir("tls-trusted");
    let ca = TestCa::new("test CA").unwrap();
    let ca_file = write(&dir, "ca.pem", ca.pem());
    let server = tls_server(&ca, &["127.0.0.1"], None).await;
    assert!(server.uri().starts_with("https://"));

    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "--cacert",
        &ca_file,
        "--data-hex",
        "0a026869",
        "-H",
        "x-call-id:tls",
        "--calls",
        "2",
    ])
    .await;
    let lines = out.ok_lines();
    assert_eq!(lines[0]["code"], "OK", "{}", out.stderr);
    assert_eq!(lines[1]["code"], "OK");
    assert_eq!(server.attempts("tls").len(), 2);
    assert_eq!(server.attempts("tls")[0].request_bytes, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_one_line_and_exit_2_with_no_call() {
    let dir = temp_dir("tls-untrusted");
    let ca = TestCa::new("the server's CA").unwrap();
    let other = TestCa::new("another CA").unwrap();
    let other_file = write(&dir, "other.pem", other.pem());
    let server = tls_server(&ca, &["127.0.0.1"], None).await;

    // Another CA; then the default roots (the platform's and Mozilla's),
    // which do not hold a CA made a moment ago either.
    let out = run(&["probe", &server.uri(), METHOD, "--cacert", &other_file]).await;
    out.assert_rejected("TLS handshake with");
    assert!(out.stderr.contains("UnknownIssuer"), "{}", out.stderr);
    run(&["probe", &server.uri(), METHOD])
        .await
        .assert_rejected("UnknownIssuer");
    run(&["list", &server.uri(), "--cacert", &other_file])
        .await
        .assert_rejected("UnknownIssuer");
    assert_eq!(server.total_attempts(), 0, "no call reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_flag_sets_the_name_the_certificate_is_checked_against() {
    let dir = temp_dir("tls-authority");
    let ca = TestCa::new("test CA").unwrap();
    let ca_file = write(&dir, "ca.pem", ca.pem());
    // A certificate for a DNS name only, served on 127.0.0.1.
    let server = tls_server(&ca, &["echo.test"], None).await;

    run(&["probe", &server.uri(), METHOD, "--cacert", &ca_file])
        .await
        .assert_rejected("not valid for name");
    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "--cacert",
        &ca_file,
        "--authority",
        "echo.test",
        "-H",
        "x-call-id:named",
    ])
    .await;
    assert_eq!(out.ok_lines()[0]["code"], "OK", "{}", out.stderr);
    assert_eq!(server.attempts("named").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_a_client_certificate_from_the_servers_client_ca() {
    let dir = temp_dir("tls-mutual");
    let ca = TestCa::new("server CA").unwrap();
    let clients = TestCa::new("client CA").unwrap();
    let ca_file = write(&dir, "ca.pem", ca.pem());
    let (cert, key) = leaf(&clients, &["client.test"]);
    let cert_file = write(&dir, "client.pem", &cert);
    let key_file = write(&dir, "client.key", &key);
    // A client certificate from a CA the server does not accept.
    let (stranger, stranger_key) = leaf(&ca, &["stranger.test"]);
    let stranger_file = write(&dir, "stranger.pem", &stranger);
    let stranger_key_file = write(&dir, "stranger.key", &stranger_key);
    let server = tls_server(&ca, &["127.0.0.1"], Some(&clients)).await;

    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "--cacert",
        &ca_file,
        "--cert",
        &cert_file,
        "--key",
        &key_file,
        "-H",
        "x-call-id:mtls",
    ])
    .await;
    assert_eq!(out.ok_lines()[0]["code"], "OK", "{}", out.stderr);
    assert_eq!(server.attempts("mtls").len(), 1);

    for extra in [
        vec![],
        vec!["--cert", &stranger_file, "--key", &stranger_key_file],
    ] {
        let uri = server.uri();
        let mut args = vec!["probe", &uri, METHOD, "--cacert", &ca_file];
        args.extend(extra.iter().copied());
        let out = run(&args).await;
        // TLS 1.3: the server checks the client's certificate after the
        // client has finished its side of the handshake, so the refusal (a
        // TLS alert) arrives as the connection fails: a failed call
        // (UNKNOWN or CANCELLED, depending on when the client notices), or
        // a handshake error; never an OK.
        match out.code {
            Some(0) => {
                let line = &out.json_lines()[0];
                assert_ne!(line["code"], "OK", "{extra:?}: {line}");
                assert!(line["cause"].is_string(), "{extra:?}: {line}");
            }
            _ => out.assert_rejected("TLS handshake"),
        }
    }
    assert_eq!(
        server.attempts("mtls").len(),
        1,
        "only the call with a good certificate"
    );
    assert_eq!(server.total_attempts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_works_over_tls() {
    let dir = temp_dir("tls-reflection");
    let ca = TestCa::new("test CA").unwrap();
    let ca_file = write(&dir, "ca.pem", ca.pem());
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_retry::testing::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let server = TestServer::builder()
        .tls(ca.issue(&["127.0.0.1"]).unwrap().identity(), None)
        .add_service(reflection)
        .start()
        .await
        .unwrap();
    let out = run(&["list", &server.uri(), "--cacert", &ca_file]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("retry.test.v1.Echo\n"),
        "{}",
        out.stdout
    );
    let out = run(&[
        "probe",
        &server.uri(),
        METHOD,
        "--cacert",
        &ca_file,
        "-d",
        r#"{"text":"t"}"#,
    ])
    .await;
    assert_eq!(out.ok_lines()[0]["response"]["text"], "t", "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_flags_that_cannot_apply_are_bad_input() {
    let dir = temp_dir("tls-bad-input");
    let not_pem = write(&dir, "not.pem", "this is not a certificate");
    let ca = TestCa::new("test CA").unwrap();
    let (cert, _) = leaf(&ca, &["x.test"]);
    let cert_file = write(&dir, "c.pem", &cert);
    run(&["probe", "http://127.0.0.1:1", METHOD, "--cacert", &not_pem])
        .await
        .assert_rejected("https://");
    run(&["probe", "https://127.0.0.1:1", METHOD, "--cert", &cert_file])
        .await
        .assert_rejected("--key");
    run(&["probe", "https://127.0.0.1:1", METHOD, "--cacert", &not_pem])
        .await
        .assert_rejected("no PEM certificate");
    run(&[
        "probe",
        "https://127.0.0.1:1",
        METHOD,
        "--cert",
        &cert_file,
        "--key",
        &not_pem,
    ])
    .await
    .assert_rejected("no PEM private key");
    let missing = dir.join("absent.pem");
    run(&[
        "probe",
        "https://127.0.0.1:1",
        METHOD,
        "--cacert",
        missing.to_str().unwrap(),
    ])
    .await
    .assert_rejected("absent.pem");
}
