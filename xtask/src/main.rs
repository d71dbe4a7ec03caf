//! `cargo xtask`: the project's chores, in Rust.

mod bench;
mod ci;
mod demo;
mod ebpf;
mod modules;
mod setup;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Alcor-in-Rust development tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what tests, demo and benchmarks need (Debian packages, the
    /// eBPF toolchain, the openstack CLI) and mount bpffs. Idempotent.
    Setup,
    /// Build the eBPF datapath.
    BuildEbpf,
    /// Setup, then fmt, clippy, build and the whole test suite (what CI runs).
    Test,
    /// Two hosts on a fabric, their agents over mutual TLS, a controller
    /// pushing goal state, VMs plugged in and talking across hosts over
    /// VXLAN, and an agent crash survived.
    Demo,
    /// Check that no two sibling modules of a crate import each other,
    /// directly or around a circle.
    Modules,
    /// Run a benchmark against its peers in the same run (release build).
    Bench {
        /// Benchmark name; an unknown one lists those that exist.
        name: String,
        /// One short round: checks that the benchmark works (its figures
        /// mean little).
        #[arg(long)]
        quick: bool,
        /// `e2e`: this many VMs (one run) instead of 150 then 2,400.
        #[arg(long)]
        vms: Option<usize>,
        /// `e2e`: this many hosts (default 3).
        #[arg(long)]
        hosts: Option<usize>,
        /// `e2e`: time busybox udhcpc as Debian ships it in the DHCP phase
        /// instead of the benchmark's own in-process client.
        #[arg(long)]
        udhcpc: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::BuildEbpf => ebpf::build_ebpf(),
        Task::Test => ci::run(),
        Task::Demo => demo::run(),
        Task::Modules => modules::run(),
        Task::Bench {
            name,
            quick,
            vms,
            hosts,
            udhcpc,
        } => bench::run(
            &name,
            &bench::Args {
                quick,
                vms,
                hosts,
                udhcpc,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: {error:#}");
            ExitCode::FAILURE
        }
    }
}
