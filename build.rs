//! Build script: compiles `proto/echo.proto` for the `testing` feature only.
//!
//! Uses `protox` (a pure-Rust protobuf compiler), so no system `protoc` is
//! needed. Without the `testing` feature this does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "testing")]
    compile_test_protos();
}

#[cfg(feature = "testing")]
fn compile_test_protos() {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/echo.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("tonic-retry build.rs: failed to parse proto/echo.proto: {e}"));
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(fds)
        .unwrap_or_else(|e| {
            panic!("tonic-retry build.rs: failed to generate code for proto/echo.proto: {e}")
        });
}
