//! The probe is now a subcommand of the `tonic-retry` binary (feature
//! `cli`), with every flag this example had:
//!
//! ```text
//! cargo run --features cli -- probe --target http://127.0.0.1:50051 \
//!     --method /retry.test.v1.Echo/Unary --service-config examples/service-config.json
//! cargo install tonic-retry --features cli && tonic-retry probe --help
//! ```
//!
//! This example only says so, and exits with status 2.

fn main() -> std::process::ExitCode {
    eprintln!(
        "the probe example moved: run `cargo run --features cli -- probe ARGS` \
         (or `tonic-retry probe ARGS` once installed with `cargo install tonic-retry --features cli`)"
    );
    std::process::ExitCode::from(2)
}
