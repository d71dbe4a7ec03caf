//! Builds the eBPF datapath (ebpf/) and leaves the object in OUT_DIR, where
//! `agent/src/datapath` embeds it with `include_bytes_aligned!`.
//!
//! Needs, besides the stable toolchain building the agent:
//! - the nightly toolchain with its rust-src component (the programs are
//!   built for `bpfel-unknown-none` with `-Z build-std=core`);
//! - bpf-linker 0.10.4 on PATH or in ~/.cargo/bin.
//!
//! `cargo xtask setup` installs both. The build runs a nested
//! `rustup run nightly cargo build --release` in ebpf/ (the invocation lives
//! in ebpf/toolchain.rs, shared with `cargo xtask build-ebpf`), with its own
//! target directory inside OUT_DIR so it never waits on the outer cargo's lock.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::ExitCode,
};

#[path = "../ebpf/toolchain.rs"]
mod toolchain;

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: cannot build the eBPF datapath: {message}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .ok_or("the agent crate has no parent directory")?
        .join("ebpf");
    for input in [
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        ".cargo/config.toml",
        "toolchain.rs",
        "common",
        "datapath",
    ] {
        println!("cargo::rerun-if-changed={}", ebpf_dir.join(input).display());
    }

    let bpf_linker = toolchain::check()?;
    // A reinstalled linker may link differently.
    println!("cargo::rerun-if-changed={}", bpf_linker.display());

    let target_dir = out_dir.join("ebpf-target");
    let output = toolchain::cargo_build(&ebpf_dir, &target_dir, &bpf_linker)
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build` in {} failed:\n{}",
            ebpf_dir.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    copy(
        &toolchain::object_path(&target_dir),
        &out_dir.join(toolchain::OBJECT),
    )
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|e| format!("{name}: {e}"))
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))
}
