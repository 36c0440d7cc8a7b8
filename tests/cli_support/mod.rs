//! Shared by the tests of the `tonic-retry` binary: run it as a child
//! process (built by cargo with the test's features, `CARGO_BIN_EXE_*`),
//! bounded by a timeout, and read what it printed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use tonic_retry::testing::TestServer;
use tonic_retry::testing::proto::FILE_DESCRIPTOR_SET;

/// How long one run of the binary may take before the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tonic-retry")
}

/// What one run printed.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout, one JSON value per line.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
            .collect()
    }

    /// Asserts exit status 0 and returns the JSON lines.
    pub fn ok_lines(&self) -> Vec<Value> {
        assert_eq!(self.code, Some(0), "stderr: {}", self.stderr);
        self.json_lines()
    }

    /// Asserts bad input: status 2, one line on stderr mentioning
    /// `needle`, nothing on stdout.
    pub fn assert_rejected(&self, needle: &str) {
        assert_eq!(self.code, Some(2), "stderr: {}", self.stderr);
        assert!(self.stdout.is_empty(), "stdout: {:?}", self.stdout);
        assert_eq!(self.stderr.lines().count(), 1, "{:?}", self.stderr);
        assert!(
            self.stderr.contains(needle),
            "{:?} should mention {needle:?}",
            self.stderr
        );
    }
}

/// Runs the binary with `args`.
pub async fn run(args: &[&str]) -> Run {
    run_with_stdin(args, None).await
}

/// Runs the binary with `args` and `stdin` as its standard input.
pub async fn run_with_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(binary())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tonic-retry");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("tonic-retry {args:?} ran longer than {RUN_LIMIT:?}"))
        .expect("wait for tonic-retry");
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tonic-retry-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Writes `text` to `dir/name` and returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path.to_str().expect("UTF-8 temp path").to_owned()
}

/// The crate's own files.
pub fn manifest_path(relative: &str) -> String {
    format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// Which reflection service a test server registers.
#[derive(Clone, Copy, Debug)]
pub enum Reflection {
    V1,
    V1Alpha,
}

/// The test server with a reflection service for `retry.test.v1`.
pub async fn server_with_reflection(version: Reflection) -> TestServer {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET);
    let server = TestServer::builder();
    let server = match version {
        Reflection::V1 => server.add_service(builder.build_v1().expect("reflection v1")),
        Reflection::V1Alpha => {
            server.add_service(builder.build_v1alpha().expect("reflection v1alpha"))
        }
    };
    server.start().await.expect("test server")
}
