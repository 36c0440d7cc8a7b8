//! Runs the crate's scripted test server on its own, so you can point
//! `tonic-retry probe` (or any gRPC client) at it.
//!
//! ```text
//! cargo run --example serve -- 127.0.0.1:50051
//! cargo run --example serve -- 127.0.0.1:50051 --reflection
//! ```
//!
//! Script each attempt's answer with the `x-call-id` and `x-fault` request
//! metadata (see `tonic_retry::testing`). `--reflection` also serves
//! `grpc.reflection.v1` and `v1alpha` for `retry.test.v1`, so that
//! `tonic-retry probe -d JSON`, `list` and `describe` need no `--proto`.
//! Without it only the echo service is served, as the benches serve it.
//! Stops on Ctrl-C.

use std::net::SocketAddr;

use tonic_retry::testing::TestServer;
use tonic_retry::testing::proto::FILE_DESCRIPTOR_SET;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr: SocketAddr = "127.0.0.1:50051".parse()?;
    let mut reflection = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--reflection" => reflection = true,
            other => addr = other.parse()?,
        }
    }
    let mut builder = TestServer::builder().addr(addr);
    if reflection {
        let services = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        };
        builder = builder
            .add_service(services().build_v1()?)
            .add_service(services().build_v1alpha()?);
    }
    let server = builder.start().await?;
    eprintln!(
        "serving retry.test.v1.Echo{} on {}",
        if reflection { " and reflection" } else { "" },
        server.uri()
    );
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
