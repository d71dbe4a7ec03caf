//! `cargo xtask bench NAME`: benchmarks that build their own topology, run
//! our system and its peers in the same run, print a table with ratios and
//! write JSON under target/bench/. Timed assertions belong here, not in tests.

mod datapath_local;
mod dhcp;
mod goalstate;

use anyhow::bail;

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
