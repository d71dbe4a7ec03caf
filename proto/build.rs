//! Generates the Rust types and tonic services from the .proto files with
//! protox, a pure-Rust protobuf compiler, so no `protoc` is needed.

use std::path::Path;

const PROTOS: &[&str] = &[
    "alcor/schema/goalstateprovisioner.proto",
    "alcor/agent/control.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed={}", root.join("alcor").display());

    let descriptors = protox::compile(PROTOS, [root])?;
    tonic_prost_build::configure()
        // agentctl prints these with `--json`.
        .type_attribute(".alcor", "#[derive(serde::Serialize)]")
        .compile_fds(descriptors)?;
    Ok(())
}
