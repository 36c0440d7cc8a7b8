//! Build script: compiles `proto/echo.proto` for the `testing` feature only.
//!
//! Uses `protox` (a pure-Rust protobuf compiler), so no system `protoc` is
//! needed. Without the `testing` feature this does nothing.
//!
//! Besides the generated code it writes the encoded `FileDescriptorSet`
//! (`retry_test_v1_descriptor.bin` in `OUT_DIR`), which
//! `testing::proto::FILE_DESCRIPTOR_SET` embeds so that a test server can
//! register a reflection service for `retry.test.v1`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "testing")]
    compile_test_protos();
}

#[cfg(feature = "testing")]
fn compile_test_protos() {
    println!("cargo:rerun-if-changed=proto");
    // What `protox::compile` does, kept as a `Compiler` so that the same
    // compilation also gives the encoded descriptor set.
    let mut compiler = protox::Compiler::new(["proto"])
        .unwrap_or_else(|e| panic!("tonic-retry build.rs: bad include path proto: {e}"));
    compiler.include_source_info(true).include_imports(true);
    compiler
        .open_files(["proto/echo.proto"])
        .unwrap_or_else(|e| panic!("tonic-retry build.rs: failed to parse proto/echo.proto: {e}"));
    let out_dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    let descriptor = std::path::Path::new(&out_dir).join("retry_test_v1_descriptor.bin");
    std::fs::write(&descriptor, compiler.encode_file_descriptor_set()).unwrap_or_else(|e| {
        panic!(
            "tonic-retry build.rs: failed to write {}: {e}",
            descriptor.display()
        )
    });
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())
        .unwrap_or_else(|e| {
            panic!("tonic-retry build.rs: failed to generate code for proto/echo.proto: {e}")
        });
}
