//! Generated protobuf messages and client for `retry.test.v1`
//! (`proto/echo.proto`).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("retry.test.v1");

pub use echo_client::EchoClient;
