//! `cargo xtask setup`: what the tests, the demo and the benchmarks need on
//! this machine. Idempotent, and quick when everything is there.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{ebpf, util::run_status};

/// Debian packages the tests, the demo and the benchmarks use, and who uses
/// each. Add a package here when something starts to need it.
pub const PACKAGES: &[&str] = &[
    // `ip`: namespaces, veths, bridges in the test harness, the demo and the
    // benchmarks; `ip -batch` is the kernel-tooling peer in `bench goalstate`.
    "iproute2",
    // `ping` between VMs in end-to-end tests.
    "iputils-ping",
    // `kill` (the harness kills what runs in a namespace it deletes), `ps`.
    "procps",
];

pub fn run() -> anyhow::Result<()> {
    install_packages()?;
    ebpf::ensure_toolchain()?;
    mount_bpffs()?;
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn missing_packages() -> anyhow::Result<Vec<&'static str>> {
    // Exits non-zero when a package is unknown to dpkg; its stdout still
    // lists the known ones.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(PACKAGES)
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listed = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once(' ')?;
            status.starts_with("ii").then_some(name)
        })
        .collect();
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect())
}

fn install_packages() -> anyhow::Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", PACKAGES.len());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        run_status(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    apt(&install)?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    Ok(())
}

fn mount_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(1) == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !is_root() {
        println!("setup: bpffs is not mounted at /sys/fs/bpf (needs root; the agent mounts it)");
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    run_status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
