//! How the eBPF workspace is built. Not part of any crate here: agent/build.rs
//! (which embeds the object in the agent) and xtask (`setup`, `build-ebpf`)
//! both include this file with `#[path]`, so they check and invoke the
//! toolchain the same way. Plain std only.
//!
//! Building needs the nightly toolchain with rust-src (`-Z build-std=core`,
//! see .cargo/config.toml) and bpf-linker 0.10.4, which links with rustc's
//! own LLVM; `cargo xtask setup` installs both.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The toolchain that builds the programs (rust-toolchain.toml names it too).
pub const TOOLCHAIN: &str = "nightly";
/// The bpf-linker release known to work with that toolchain.
pub const BPF_LINKER_VERSION: &str = "0.10.4";
/// The `[[bin]]` of datapath/: the object with every program.
pub const OBJECT: &str = "alcor-datapath";
const TARGET: &str = "bpfel-unknown-none";

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .map(|home| home.join("bin"))
}

/// `name` on PATH, else in cargo's bin directory.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(cargo_bin_dir())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The bpf-linker that links the programs, if installed.
pub fn bpf_linker() -> Option<PathBuf> {
    find_program("bpf-linker")
}

/// A `rustup` command (cargo may run us without `~/.cargo/bin` on PATH).
pub fn rustup() -> Command {
    Command::new(find_program("rustup").unwrap_or_else(|| "rustup".into()))
}

/// Whether [`TOOLCHAIN`] has the rust-src component (`-Z build-std` needs
/// it). An error means the toolchain itself (or rustup) is missing.
pub fn rust_src_installed() -> Result<bool, String> {
    let output = rustup()
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the {TOOLCHAIN} toolchain is not usable: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let sysroot = String::from_utf8_lossy(&output.stdout);
    Ok(Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .is_dir())
}

/// Checks that the toolchain can build the programs; returns the bpf-linker
/// to link them with, or an error that says how to fix it.
pub fn check() -> Result<PathBuf, String> {
    let bpf_linker = bpf_linker().ok_or_else(|| {
        format!(
            "bpf-linker (version {BPF_LINKER_VERSION}) is neither on PATH nor in \
             ~/.cargo/bin; run `cargo xtask setup`"
        )
    })?;
    match rust_src_installed() {
        Ok(true) => Ok(bpf_linker),
        Ok(false) => Err(format!(
            "the {TOOLCHAIN} toolchain has no rust-src component; run `cargo xtask setup`"
        )),
        Err(e) => Err(format!("{e}; run `cargo xtask setup`")),
    }
}

/// `cargo build --release` of the eBPF workspace at `ebpf_dir` into
/// `target_dir`, shielded from the environment of a calling cargo (which
/// describes a host build with the stable toolchain).
pub fn cargo_build(ebpf_dir: &Path, target_dir: &Path, bpf_linker: &Path) -> Command {
    let mut cmd = rustup();
    cmd.args([
        "run",
        TOOLCHAIN,
        "cargo",
        "build",
        "--release",
        // Keeps the versions ebpf/Cargo.lock pins (aya-build 0.2.0: 0.2.1
        // needs a newer rustc than this nightly).
        "--locked",
        "--target-dir",
    ])
    .arg(target_dir)
    .current_dir(ebpf_dir)
    .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", bpf_linker);
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// Where [`cargo_build`] leaves the object.
pub fn object_path(target_dir: &Path) -> PathBuf {
    target_dir.join(TARGET).join("release").join(OBJECT)
}
