//! The eBPF toolchain. A stub until the eBPF branch lands and replaces this
//! file; it keeps the same two functions.

use std::process::Command;

use anyhow::{Context, bail};

const BPF_LINKER_VERSION: &str = "0.10.4";

/// Installs what building the eBPF programs needs, if it is missing:
/// nightly's rust-src (for `-Z build-std=core`) and bpf-linker 0.10.4.
pub fn ensure_toolchain() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        println!("setup: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    let has_linker = linker.is_ok_and(|out| {
        String::from_utf8_lossy(&out.stdout).contains(&format!("bpf-linker {BPF_LINKER_VERSION}"))
    });
    if !has_linker {
        println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
        run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ]),
        )?;
    }
    Ok(())
}

/// Builds the eBPF object, which agent/build.rs compiles into the agent.
pub fn build_ebpf() -> anyhow::Result<()> {
    println!("build-ebpf: the eBPF object is built by agent/build.rs; building alcor-agent");
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "build",
            "-p",
            "alcor-agent",
        ]),
    )
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}
