//! `cargo xtask bench NAME`: benchmarks that build their own topology, run
//! our system and its peers in the same run, print a table with ratios and
//! write JSON under target/bench/. Timed assertions belong here, not in tests.

mod datapath_local;
mod dhcp;
mod goalstate;
mod neighbors;

use alcor_tests::{Agent, topology::namespaces_with_prefix};
use anyhow::{bail, ensure};

use crate::util;

type Bench = fn() -> anyhow::Result<()>;

/// (name, what it measures, how to run it)
const BENCHES: &[(&str, &str, Bench)] = &[
    (
        "goalstate",
        "1,000 netns-bound ports on one agent: one V2 message, and 1,000 pipelined \
         messages on one stream, vs `ip -batch` doing the same plumbing",
        goalstate::run,
    ),
    (
        "dhcp",
        "perfdhcp with 10,000 client MACs against the agent's DHCP responder, \
         kea-dhcp4 and dnsmasq: 4-way exchanges/s and p99 latency",
        dhcp::run,
    ),
    (
        "datapath-local",
        "two VMs on one host: iperf3 TCP 1 and 4 streams, UDP 64-byte packets/s and \
         ping RTT through our eBPF datapath vs a Linux bridge and host routing",
        datapath_local::run,
    ),
    (
        "neighbors",
        "10k, 100k and 1M neighbors pushed over gRPC: time until programmed, agent RSS \
         and map memory, vs the kernel's VXLAN fdb and neighbour entries for the same",
        neighbors::run,
    ),
];

pub fn run(name: &str) -> anyhow::Result<()> {
    match BENCHES.iter().find(|(known, _, _)| *known == name) {
        Some((_, _, bench)) => bench(),
        None => {
            let known: Vec<String> = BENCHES
                .iter()
                .map(|(name, what, _)| format!("  {name:<10} {what}"))
                .collect();
            bail!(
                "no benchmark {name:?}; the benchmarks are:\n{}",
                known.join("\n")
            )
        }
    }
}

/// Fails if a benchmark left namespaces named `PREFIX-...` behind.
fn ensure_swept(prefix: &str) -> anyhow::Result<()> {
    let left = namespaces_with_prefix(&format!("{prefix}-"))?;
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    Ok(())
}

/// The agent's peak resident memory (VmHWM), KiB.
fn peak_rss_kib(agent: &Agent) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid()?)).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Writes `target/bench/NAME.json`: the results, with the machine they were
/// measured on.
fn write_json(name: &str, results: &serde_json::Value) -> anyhow::Result<()> {
    let dir = util::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({
            "bench": name,
            "cores": cores,
            "kernel": kernel.trim(),
            "results": results,
        }))?,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}
