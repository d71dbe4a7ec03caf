//! The eBPF toolchain and build, for `cargo xtask setup` and
//! `cargo xtask build-ebpf`. The agent's build script builds the same object
//! the same way (both include ebpf/toolchain.rs).

use std::{env, path::Path, process::Command};

use anyhow::{Context, Result, anyhow, ensure};

#[path = "../../ebpf/toolchain.rs"]
mod toolchain;

/// Installs what building the eBPF programs needs and is missing: the
/// nightly toolchain's rust-src component and bpf-linker. Idempotent.
pub fn ensure_toolchain() -> Result<()> {
    let nightly = toolchain::TOOLCHAIN;
    match toolchain::rust_src_installed() {
        Ok(true) => println!("eBPF toolchain: {nightly} with rust-src is installed"),
        Ok(false) => {
            run(toolchain::rustup().args(["component", "add", "rust-src", "--toolchain", nightly]))?
        }
        Err(e) => {
            println!("eBPF toolchain: {e}");
            run(toolchain::rustup().args([
                "toolchain",
                "install",
                nightly,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
    }
    match toolchain::bpf_linker() {
        Some(path) => println!("eBPF toolchain: bpf-linker is {}", path.display()),
        None => {
            // 0.10 loads rustc's own LLVM, so no system LLVM is needed.
            let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let package = format!("bpf-linker@{}", toolchain::BPF_LINKER_VERSION);
            run(Command::new(cargo).args(["install", &package, "--locked"]))?;
        }
    }
    Ok(())
}

/// Builds the eBPF object into ebpf/target and prints where it is.
pub fn build_ebpf() -> Result<()> {
    let ebpf_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("cannot find {}", ebpf_dir.display()))?;
    let target_dir = ebpf_dir.join("target");
    let bpf_linker = toolchain::check().map_err(|e| anyhow!(e))?;
    run(&mut toolchain::cargo_build(
        &ebpf_dir,
        &target_dir,
        &bpf_linker,
    ))?;
    let object = toolchain::object_path(&target_dir);
    ensure!(object.is_file(), "the build left no {}", object.display());
    println!("eBPF object: {}", object.display());
    Ok(())
}

/// Runs `command`, saying what it runs, and fails unless it succeeds.
fn run(command: &mut Command) -> Result<()> {
    println!("running {command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    ensure!(status.success(), "{command:?} failed: {status}");
    Ok(())
}
