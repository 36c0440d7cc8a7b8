//! Runs the crate's scripted test server on its own, so you can point the
//! `probe` example (or any gRPC client) at it.
//!
//! ```text
//! cargo run --example serve -- 127.0.0.1:50051
//! ```
//!
//! Script each attempt's answer with the `x-call-id` and `x-fault` request
//! metadata (see `tonic_retry::testing`). Stops on Ctrl-C.

use std::net::SocketAddr;

use tonic_retry::testing::TestServer;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned())
        .parse()?;
    let server = TestServer::start_at(addr).await?;
    eprintln!("serving retry.test.v1.Echo on {}", server.uri());
    tokio::signal::ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}
