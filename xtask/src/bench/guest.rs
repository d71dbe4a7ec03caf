//! `bench guest`: what a real guest receives from a VM on another host,
//! against what it receives from one on its own host.
//!
//! Two hosts on a fabric (the tests crate's [`Topology`]: a bridge, each
//! host's `underlay0` a veth at MTU 1500), the release agent on each with
//! `--underlay-xdp off` (native XDP on a veth makes its peer segment every
//! GSO packet, DESIGN §5). On host 1 a real guest, [`Guest`]: QEMU under
//! TCG, its virtio-net NIC on a tap that QEMU makes and the agent adopts as
//! a tap port; the guest negotiates checksum offload and TSO, as in
//! production. VM A, a namespace, on host 1 too; VM B on host 2. One
//! subnet (VNI 100), static addresses, MTU 1450 (the underlay's less
//! VXLAN's 50 bytes) everywhere.
//!
//! The guest runs iperf3 as the client with `-R` ([`Direction::ToGuest`]):
//! A or B sends, the guest receives, one TCP stream, a fresh server each
//! run. Each round runs A then B, the next one B then A. Per run: what the
//! guest received (Gbit/s) and the average size of the packets its tap
//! delivered (tap tx bytes / tx packets, a GSO packet counting once): a
//! tap hands a guest with TSO whole 64 KB packets, unless the kernel had
//! to segment them first. Reported: medians over the rounds, and the
//! median of each round's ratio other host / same host.

use std::{collections::BTreeMap, time::Duration};

use alcor_proto::schema::OperationStatus;
use alcor_tests::{
    Agent,
    goalstate::{neighbor, subnet, tap_port, v1, vpc},
    guest::{Direction, Guest},
    lab::{self, Vm},
    topology::Topology,
    traffic::{self, Iperf3Server},
};
use anyhow::{Context, ensure};
use serde_json::json;

use super::{median, vm_traffic};
use crate::setup;

const TAG: &str = "gstb";
const HOSTS: [(&str, &str); 2] = [("h1", "198.18.0.1/24"), ("h2", "198.18.0.2/24")];
const VNI: u32 = 100;
/// What the agent gives ports on a 1500-byte underlay.
const MTU: u32 = 1450;
/// (name, host, VPC, subnet, IP, MAC): the senders, A on the guest's host
/// and B on the other.
const VMS: [(&str, &str, &str, &str, &str, &str); 2] = [
    ("a", "h1", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:73:0a"),
    ("b", "h2", "vpc1", "sn1", "10.0.1.11", "fa:16:3e:00:73:0b"),
];
/// The guest: a tap port of h1 (port id, IP, MAC); its tap is `tap` and
/// the id's first 11 characters, as Nova names it.
const GUEST: (&str, &str, &str) = ("port-qemu", "10.0.1.12", "fa:16:3e:00:73:12");
/// Indices into [`VMS`], and into a round's runs.
const SAME_HOST: usize = 0;
const OTHER_HOST: usize = 1;

/// Rounds, and seconds of TCP a run. A round of 3 s runs takes about 6 s,
/// the whole benchmark under 40 s.
#[derive(Clone, Copy)]
struct Plan {
    rounds: usize,
    seconds: u64,
}

const PLAN: Plan = Plan {
    rounds: 5,
    seconds: 3,
};
const QUICK: Plan = Plan {
    rounds: 1,
    seconds: 2,
};

pub fn run(quick: bool) -> anyhow::Result<()> {
    setup::run()?;
    alcor_tests::dhcp::require("iperf3", "iperf3")?;
    super::release_binaries("guest", &[super::Binary::Agent])?;
    let plan = if quick { QUICK } else { PLAN };
    super::in_namespaces(TAG, async |prefix| bench(prefix, plan).await)
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Run {
    gbps: f64,
    bytes: u64,
    /// Packets the tap delivered to the guest, and their average size.
    packets: u64,
    average_size: u64,
}

impl Run {
    fn json(&self) -> serde_json::Value {
        json!({
            "tcp_received_gbps": self.gbps,
            "bytes_received": self.bytes,
            "tap_tx_packets": self.packets,
            "tap_average_packet_bytes": self.average_size,
        })
    }
}

async fn bench(prefix: &str, plan: Plan) -> anyhow::Result<()> {
    // Dropped in the reverse order: QEMU, the agents (their pins
    // removed), the VMs, the hosts and the fabric.
    let mut topology = Topology::new(prefix)?;
    traffic::disable_ipv6(topology.fabric())?;
    for (name, address) in HOSTS {
        let host = topology.add_host(name, address)?;
        traffic::disable_ipv6(host.netns())?;
    }
    let vms = VMS
        .into_iter()
        .map(|vm| Vm::new(prefix, vm))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let agents = lab::start_agents(&topology, &["h1", "h2"], &["--underlay-xdp", "off"]).await;
    let mut guest = plug(&topology, &vms, &agents).await?;
    for vm in &vms {
        let ping = vm.ping(GUEST.1, 3, &[]);
        ensure!(
            ping.all_answered(),
            "VM {} cannot reach the guest: {}",
            vm.name,
            ping.summary
        );
    }

    let started = std::time::Instant::now();
    let mut rounds: Vec<[Run; 2]> = Vec::new();
    let mut port = 5201;
    for round in 1..=plan.rounds {
        let mut order = [SAME_HOST, OTHER_HOST];
        if round % 2 == 0 {
            order.reverse();
        }
        let mut runs = [None; 2];
        for sender in order {
            ensure!(!super::interrupted(), "interrupted");
            let vm = &vms[sender];
            let run = tokio::task::block_in_place(|| receive(&mut guest, vm, port, plan))?;
            port += 1;
            runs[sender] = Some(run);
        }
        let [same, other] = runs.map(|run| run.expect("each round runs both senders"));
        println!(
            "round {round} of {}: from the same host {:.2} Gbit/s in {}-byte packets, from \
             the other host {:.2} Gbit/s in {}-byte packets",
            plan.rounds, same.gbps, same.average_size, other.gbps, other.average_size
        );
        rounds.push([same, other]);
    }
    println!("{} rounds in {:.0?}", rounds.len(), started.elapsed());
    report(plan, &rounds, guest.boot_time())
}

/// Pushes each host's goal state (h1: VM A's port and the guest's tap
/// port; h2: VM B's; each the other's VMs as neighbors), boots the guest
/// on h1 (the tap port is pending until QEMU makes its tap), waits until
/// every port is ready, and addresses the VMs and the guest.
async fn plug(
    topology: &Topology,
    vms: &[Vm],
    agents: &BTreeMap<&'static str, Agent>,
) -> anyhow::Result<Guest> {
    let (port_id, ip, mac) = GUEST;
    let network = v1(
        vec![vpc("vpc1", VNI, "10.0.0.0/16")],
        vec![subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1")],
        Vec::new(),
    );
    let h1 = topology.host("h1");
    for (host, agent) in agents {
        let mut message = lab::goal_state_for(host, network.clone(), vms, topology);
        if *host == h1.name() {
            message
                .port_states
                .push(tap_port(port_id, "vpc1", "sn1", ip, mac));
        } else {
            let h1_ip = h1.underlay_ip().to_string();
            let guest = neighbor("neighbor-qemu", "vpc1", "sn1", ip, mac, &h1_ip);
            message.neighbor_states.push(guest);
        }
        let reply = agent.push(message).await;
        let accepted = [OperationStatus::Success, OperationStatus::Pending].map(|s| s as i32);
        ensure!(
            reply
                .operation_statuses
                .iter()
                .all(|s| accepted.contains(&s.operation_status)),
            "{host}: goal state refused: {reply:?}"
        );
    }
    let tap = format!("tap{}", &port_id[..port_id.len().min(11)]);
    let mut guest = tokio::task::block_in_place(|| Guest::boot(h1.netns(), &tap, mac))?;
    println!("the guest booted in {:.1?}", guest.boot_time());
    // QEMU leaves it down (no ifup script here): up, as libvirt does.
    h1.netns().exec("ip", &["link", "set", &tap, "up"])?;
    for (host, agent) in agents {
        let guests = usize::from(*host == h1.name());
        let ports = vms.iter().filter(|vm| vm.host == *host).count() + guests;
        vm_traffic::ports_ready(agent, ports).await.context(*host)?;
    }
    for vm in vms {
        let mtu = vm.netns.link("eth0")?.context("eth0")?["mtu"].clone();
        ensure!(mtu == MTU, "VM {}: the agent gave eth0 MTU {mtu}", vm.name);
        traffic::configure(&vm.netns, &format!("{}/24", vm.ip), None)?;
    }
    tokio::task::block_in_place(|| {
        guest.exec(&format!(
            "ip link set eth0 mtu {MTU} up && ip addr add {ip}/24 dev eth0"
        ))
    })?;
    Ok(guest)
}

/// One run: `vm` sends to the guest for `plan.seconds` through a server of
/// its own on `port`.
fn receive(guest: &mut Guest, vm: &Vm, port: u16, plan: Plan) -> anyhow::Result<Run> {
    let _server = Iperf3Server::start(&vm.netns, vm.ip, port, true)?;
    let before = guest.tap_counters()?;
    let seconds = Duration::from_secs(plan.seconds);
    let transfer = guest
        .iperf3(vm.ipv4(), port, Direction::ToGuest, seconds)
        .with_context(|| format!("TCP from VM {} to the guest", vm.name))?;
    let delivered = guest.tap_counters()?.since(&before);
    Ok(Run {
        gbps: transfer.bits_per_second / 1e9,
        bytes: transfer.bytes,
        packets: delivered.tx_packets,
        average_size: delivered.average_tx_size(),
    })
}

/// A row of the table.
struct Metric {
    label: &'static str,
    /// Its key in the JSON.
    key: &'static str,
    decimals: usize,
    value: fn(&Run) -> f64,
}

const METRICS: [Metric; 2] = [
    Metric {
        label: "TCP received by the guest, Gbit/s",
        key: "tcp_received_gbps",
        decimals: 2,
        value: |run| run.gbps,
    },
    Metric {
        label: "packets its tap delivered, average bytes",
        key: "tap_average_packet_bytes",
        decimals: 0,
        value: |run| run.average_size as f64,
    },
];

/// Prints the medians and ratios as a markdown table; writes every round
/// to target/bench/guest.json.
fn report(plan: Plan, rounds: &[[Run; 2]], boot_time: Duration) -> anyhow::Result<()> {
    let load = super::load_average();
    println!(
        "\nguest: a QEMU guest (TCG, virtio-net with TSO) on a tap of host 1 receives iperf3 \
         TCP (1 stream, {} s a run) from VM A on its host and VM B on host 2, MTU {MTU}; \
         medians of {} rounds, the ratio the median of each round's",
        plan.seconds,
        rounds.len()
    );
    println!(
        "(load average of the machine at the end: {} over 1, 5 and 15 minutes)\n",
        load.join(", ")
    );
    println!("| metric | from the same host | from the other host | other host / same host |");
    println!("|---|---:|---:|---:|");
    let mut medians = serde_json::Map::new();
    for Metric {
        label,
        key,
        decimals,
        value,
    } in METRICS
    {
        let [same, other] =
            [SAME_HOST, OTHER_HOST].map(|s| median(rounds.iter().map(|r| value(&r[s])).collect()));
        let ratio = median(
            rounds
                .iter()
                .map(|r| value(&r[OTHER_HOST]) / value(&r[SAME_HOST]))
                .collect(),
        );
        println!("| {label} | {same:.decimals$} | {other:.decimals$} | {ratio:.2}× |");
        medians.insert(
            key.into(),
            json!({ "same_host": same, "other_host": other, "ratio_other_to_same": ratio }),
        );
    }
    super::write_json(
        "guest",
        json!({
            "what": "a QEMU guest (TCG, virtio-net, TSO) on a hypervisor tap of host 1 receives \
                     iperf3 TCP (1 stream, guest as the client with -R) from a VM on its host \
                     and from one on host 2; the tap's tx bytes / tx packets is the average \
                     size of the packets delivered to the guest",
            "agent": alcor_tests::agent::bin("alcor-agent"),
            "mtu": MTU,
            "rounds": rounds.len(),
            "tcp_seconds": plan.seconds,
            "guest_boot_seconds": boot_time.as_secs_f64(),
            "load_average_at_end": load,
            "median": medians,
            "runs": rounds
                .iter()
                .map(|[same, other]| json!({ "same_host": same.json(), "other_host": other.json() }))
                .collect::<Vec<_>>(),
        }),
    )
}
