//! Generated protobuf messages and client for `retry.test.v1`
//! (`proto/echo.proto`).
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("retry.test.v1");

pub use echo_client::EchoClient;

/// The encoded `google.protobuf.FileDescriptorSet` of `proto/echo.proto`
/// (written by the build script), e.g. for a reflection service added with
/// [`TestServerBuilder::add_service`](super::TestServerBuilder::add_service).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/retry_test_v1_descriptor.bin"));
