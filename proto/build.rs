//! Generates the Rust types and tonic services from the .proto files with
//! protox, a pure-Rust protobuf compiler, so no `protoc` is needed; and,
//! with pbjson, their canonical protobuf JSON form (enums as names), which
//! agentctl prints with `--json`.

use std::{env, path::Path};

use prost::Message;

const PROTOS: &[&str] = &[
    "alcor/schema/goalstateprovisioner.proto",
    "alcor/agent/control.proto",
    "alcor/controller/registry.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed={}", root.join("alcor").display());

    let descriptors = protox::compile(PROTOS, [root])?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors.encode_to_vec())?
        .out_dir(env::var("OUT_DIR")?)
        .preserve_proto_field_names()
        // Scripts find every field, zero or not.
        .emit_fields()
        .build(&[".alcor"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
