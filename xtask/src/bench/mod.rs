//! `cargo xtask bench NAME`: benchmarks that build their own topology, run
//! our system and its peers in the same run, print a table with ratios and
//! write JSON under target/bench/. Timed assertions belong here, not in tests.

mod api;
mod datapath;
mod datapath_local;
mod dhcp;
mod e2e;
mod fanout;
mod goalstate;
mod guest;
mod http;
mod neighbors;
mod vm_traffic;
mod wire;

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use alcor_proto::schema::{GoalStateOperationReply, OperationStatus};
use alcor_tests::{Agent, topology::namespaces_with_prefix};
use anyhow::{anyhow, bail, ensure};
use futures::FutureExt;

use crate::util;

/// What `cargo xtask bench` was asked.
pub struct Args {
    /// One short round (where a benchmark has one).
    pub quick: bool,
    /// `e2e`: the VMs of its one run.
    pub vms: Option<usize>,
    /// `e2e`: its hosts.
    pub hosts: Option<usize>,
    /// `e2e`: stock udhcpc in the timed DHCP phase.
    pub udhcpc: bool,
}

/// Runs a benchmark with what it was asked (`quick`: one short round, where
/// it has one).
type Bench = fn(&Args) -> anyhow::Result<()>;

/// (name, what it measures, how to run it, whether it has a quick mode)
const BENCHES: &[(&str, &str, Bench, bool)] = &[
    (
        "e2e",
        "VMs from the first API call to a lease and a ping across hosts: network, subnet and \
         ports bound through the controller's API (150, then 2,400 VMs on 3 hosts; --vms N, \
         --hosts H), pushed to real agents, DHCP, ping, then everything deleted; time by \
         phase against Alcor's and Neutron's published figures",
        e2e::run,
        true,
    ),
    (
        "api",
        "port creates/s through the Neutron API (50 clients, an IP and a MAC each) as the \
         store grows to 1M ports (embedded) and 100k (etcd), with p50/p99 latency; etcd's own \
         put rate measured beside",
        |args| api::run(args.quick),
        true,
    ),
    (
        "fanout",
        "the controller against 10, 100 and 1,000 simulated hosts (stub agents that decode \
         and acknowledge): one port added to a VPC spanning them all, and a 10,000-port VPC \
         converging from nothing: time, bytes pushed, controller CPU and peak RSS",
        |args| fanout::run(args.quick),
        true,
    ),
    (
        "goalstate",
        "1,000 netns-bound ports on one agent: one V2 message, and 1,000 pipelined \
         messages on one stream, vs `ip -batch` doing the same plumbing",
        |_| goalstate::run(),
        false,
    ),
    (
        "dhcp",
        "perfdhcp with 10,000 client MACs against the agent's DHCP responder, \
         kea-dhcp4 and dnsmasq: 4-way exchanges/s and p99 latency",
        |_| dhcp::run(),
        false,
    ),
    (
        "datapath-local",
        "two VMs on one host: iperf3 TCP 1 and 4 streams, UDP 64-byte packets/s and \
         ping RTT through our eBPF datapath vs a Linux bridge and host routing",
        |args| datapath_local::run(args.quick),
        true,
    ),
    (
        "datapath",
        "two hosts, a VM on each: iperf3 TCP 1 and 4 streams, UDP 64-byte packets/s and \
         ping RTT through our eBPF VXLAN overlay, with and without XDP early drop, vs the \
         kernel's VXLAN device and a bridge per host",
        |args| datapath::run(args.quick),
        true,
    ),
    (
        "guest",
        "a real guest (QEMU, virtio-net with TSO) on a hypervisor tap: iperf3 TCP to it \
         from a VM on its host and from one on another host, Gbit/s and the size of the \
         packets its tap delivers, other host / same host",
        |args| guest::run(args.quick),
        true,
    ),
    (
        "neighbors",
        "10k, 100k and 1M neighbors pushed over gRPC: time until programmed, agent RSS \
         and map memory, vs the kernel's VXLAN fdb and neighbour entries for the same",
        |args| neighbors::run(args.quick),
        false,
    ),
];

pub fn run(name: &str, args: &Args) -> anyhow::Result<()> {
    if name != "e2e" && (args.vms.is_some() || args.hosts.is_some() || args.udhcpc) {
        bail!("--vms, --hosts and --udhcpc are for bench e2e");
    }
    match BENCHES.iter().find(|(known, ..)| *known == name) {
        Some((_, _, _, false)) if args.quick => bail!("bench {name} has no --quick mode"),
        Some((_, _, bench, _)) => bench(args),
        None => {
            let known: Vec<String> = BENCHES
                .iter()
                .map(|(name, what, ..)| format!("  {name:<14} {what}"))
                .collect();
            bail!(
                "no benchmark {name:?}; the benchmarks are:\n{}",
                known.join("\n")
            )
        }
    }
}

/// Set once Ctrl-C was pressed during a benchmark.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C was pressed: a benchmark blocked in its measurements
/// (where the runtime cannot interrupt it) asks between two of them.
fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Runs `bench` with a namespace prefix of its own (`tag` and this
/// process's id), after removing what killed runs of `tag` left. Its
/// namespaces, agents and pins live in the benchmark's future: dropped, and
/// so cleaned up, however it ends (error, panic, Ctrl-C); then no namespace
/// of the prefix may remain.
fn in_namespaces(
    tag: &str,
    bench: impl AsyncFnOnce(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    util::sweep_leftovers(tag)?;
    let prefix = util::run_prefix(tag);
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        tokio::spawn(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                INTERRUPTED.store(true, Ordering::Relaxed);
            }
        });
        let bench = std::panic::AssertUnwindSafe(bench(&prefix)).catch_unwind();
        tokio::select! {
            result = bench => result.unwrap_or_else(|_| Err(anyhow!("the benchmark panicked"))),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    drop(runtime);
    let left = namespaces_with_prefix(&format!("{prefix}-"))?;
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    outcome
}

/// A binary a benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Binary {
    Agent,
    Controller,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Agent => "alcor-agent",
            Binary::Controller => "alcor-controller",
        }
    }
}

/// Makes the binaries in `ALCOR_BIN_DIR` the ones the benchmark runs when
/// it is set (another commit's release build, to compare before and after
/// in one sitting); otherwise builds this workspace's release `binaries`
/// and points `ALCOR_BIN_DIR` at them.
fn release_binaries(benchmark: &str, binaries: &[Binary]) -> anyhow::Result<()> {
    let names: Vec<&str> = binaries.iter().map(|binary| binary.name()).collect();
    if let Some(dir) = std::env::var_os("ALCOR_BIN_DIR") {
        for name in &names {
            let path = Path::new(&dir).join(name);
            ensure!(path.is_file(), "ALCOR_BIN_DIR: no {}", path.display());
        }
        println!(
            "bench {benchmark}: running {} in {} (ALCOR_BIN_DIR)",
            names.join(" and "),
            Path::new(&dir).display()
        );
        return Ok(());
    }
    println!(
        "bench {benchmark}: building {} (release)",
        names.join(" and ")
    );
    if binaries.contains(&Binary::Controller) {
        util::run_status(util::cargo().args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "alcor-controller",
            "--bin",
            "alcor-controller",
        ]))?;
        let dir = util::target_dir().join("release");
        // SAFETY: set before any other thread of this process starts.
        unsafe { std::env::set_var("ALCOR_BIN_DIR", &dir) };
    }
    if binaries.contains(&Binary::Agent) {
        util::build_agent(true)?;
    }
    Ok(())
}

/// The machine's load average over 1, 5 and 15 minutes, printed and kept
/// with a benchmark's figures: other work moves them.
fn load_average() -> Vec<String> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace()
        .take(3)
        .map(str::to_string)
        .collect()
}

/// The middle value (the upper one of an even count); NaN for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The agent's peak resident memory (VmHWM), KiB.
fn peak_rss_kib(agent: &Agent) -> Option<u64> {
    process_status_kib(agent.pid()?, "VmHWM")
}

/// A memory figure of process `pid` from /proc/PID/status (`VmHWM`,
/// `VmRSS`), KiB.
fn process_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// CPU time the agent has used so far (user and system), in seconds: what
/// its work costs whatever else the machine is doing.
fn cpu_seconds(agent: &Agent) -> Option<f64> {
    cpu_seconds_of(agent.pid()?)
}

/// CPU time a process has used so far (user and system, all its
/// threads), in seconds.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses: utime and
    // stime are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some((user + system) as f64 / ticks as f64)
}

/// Writes `target/bench/NAME.json`: `document` (a JSON object) with the
/// benchmark's name and the machine it was measured on.
fn write_json(name: &str, mut document: serde_json::Value) -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    if let Some(fields) = document.as_object_mut() {
        fields.insert("bench".into(), name.into());
        fields.insert("cores".into(), cores.into());
        fields.insert("kernel".into(), kernel.trim().into());
    }
    write_file(name, &document)
}

/// Writes `document` as `target/bench/NAME.json`.
fn write_file(name: &str, document: &serde_json::Value) -> anyhow::Result<()> {
    let dir = util::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(document)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Checks that a goal-state reply has `expected` statuses, all SUCCESS; the
/// error names the first that is not, with the agent's log.
fn check_reply(
    reply: &GoalStateOperationReply,
    expected: usize,
    agent: &Agent,
) -> anyhow::Result<()> {
    ensure!(
        reply.operation_statuses.len() == expected,
        "{} statuses instead of {expected}",
        reply.operation_statuses.len()
    );
    if let Some(bad) = reply
        .operation_statuses
        .iter()
        .find(|s| s.operation_status != OperationStatus::Success as i32)
    {
        bail!(
            "{} is {:?}: {}\n{}",
            bad.resource_id,
            OperationStatus::try_from(bad.operation_status),
            bad.message,
            agent.log()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_take_the_middle_round() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![5.0]), 5.0);
        assert!(median(Vec::new()).is_nan());
    }
}
