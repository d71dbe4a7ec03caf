//! `bench datapath`: two hosts, one VM each, our overlay against the
//! kernel's own in the same run.
//!
//! Every variant has its own fabric namespace (a Linux bridge, the
//! underlay) and two host namespaces plugged into it by a veth each
//! (`underlay0`, MTU 1500, addresses 198.18.0.1 and .2), built alike by the
//! tests crate's [`Topology`]; VM A (10.0.1.10) is a namespace on host 1,
//! VM B (10.0.1.11) one on host 2, in one subnet of VNI 100, their `eth0`
//! at MTU 1450 (the underlay's less the 50 bytes of VXLAN) in every
//! variant, IPv6 off everywhere.
//!
//! - **ours, XDP native** and **ours, no XDP**: the release agent runs in
//!   each host namespace (`--underlay-dev underlay0`, `--underlay-xdp
//!   native` or `off`) and plugs its VM from goal state over gRPC, with a
//!   `NeighborState` for the other host's VM; frames go VM → tc on the
//!   port (VXLAN encapsulation) → the underlay → tc on the other host's
//!   underlay (decapsulation) → `bpf_redirect_peer` into the VM, the XDP
//!   early-drop program first on the underlay when it is on;
//! - **kernel VXLAN + bridge**: in each host namespace a VXLAN device (VNI
//!   100, on `underlay0`, no learning) and a Linux bridge joining it to the
//!   VM's veth, with static forwarding entries: the other VM's MAC (in the
//!   bridge and in the VXLAN device, to the other host) and the all-zeros
//!   entry for broadcasts (ARP);
//! - **ours, guests at MTU 1500**: as ours without XDP, but both VMs'
//!   `eth0` set to 1500 once plugged, as a guest that ignores what DHCP
//!   says would have it: its full-size segments do not fit in the tunnel,
//!   and TCP flows only if the gateway tells it so (ICMP "fragmentation
//!   needed") and it learns the path MTU. Measured in TCP with one stream
//!   only, beside ours without XDP, as a ratio to it; what VM A learnt is
//!   read back from its route cache.
//!
//! Metrics and alternation: see [`super::vm_traffic`]. Three rounds, each
//! with four fresh topologies. Every metric alternates the first three
//! variants (A B C C B A); the median of each metric over the rounds is
//! reported with the ratios of both of ours to the kernel's, and the
//! issue's targets are checked for both. Then one TCP stream alternates
//! ours without XDP and the guests at 1500 (N M M N): medians, the bytes
//! moved, and the ratio 1500 / 1450.

use alcor_tests::{
    Agent, Netns, goalstate,
    topology::{Host, Topology, UNDERLAY_DEV},
    traffic,
};
use anyhow::{Context, ensure};
use serde_json::json;

use super::median;
use super::vm_traffic::{
    self, IPERF3_ETH0, IPERF3_RECEIVED, Measured, PING_AVG, Plan, Ratio, Report, TCP1, TCP4,
    TRAFGEN_ETH0, Target, VM_MTU, VmPair,
};

const TAG: &str = "xdpo";
/// Every variant runs each metric twice a round; with TCP runs of 3 s
/// (after 1 s of slow start) and UDP runs of 2 s, 3 rounds take about 5
/// minutes (the guests at 1500 about a minute of it).
const PLAN: Plan = Plan {
    rounds: 3,
    tcp_seconds: 3,
    udp_seconds: 2,
    pings: 1000,
};

/// The underlay MTU: veths' default, which every variant keeps.
const UNDERLAY_MTU: u32 = VM_MTU + 50;
const VNI: u32 = 100;
/// (host, its underlay address) of VM A's host, then VM B's.
const HOSTS: [(&str, &str); 2] = [("h1", "198.18.0.1/24"), ("h2", "198.18.0.2/24")];

/// A VM: its port id, address and MAC.
struct VmSpec {
    port: &'static str,
    ip: &'static str,
    mac: &'static str,
}

const A: VmSpec = VmSpec {
    port: "a-port-0001",
    ip: "10.0.1.10",
    mac: "fa:16:3e:00:71:0a",
};
const B: VmSpec = VmSpec {
    port: "b-port-0001",
    ip: "10.0.1.11",
    mac: "fa:16:3e:00:71:0b",
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    OursXdp,
    OursNoXdp,
    Kernel,
    /// Measured apart, in TCP only.
    OursGuests1500,
}

impl Variant {
    /// The variants of the main table, measured in every metric.
    const ALL: [Variant; 3] = [Variant::OursXdp, Variant::OursNoXdp, Variant::Kernel];

    fn name(self) -> &'static str {
        match self {
            Variant::OursXdp => "ours, XDP native",
            Variant::OursNoXdp => "ours, no XDP",
            Variant::Kernel => "kernel VXLAN + bridge",
            Variant::OursGuests1500 => "ours, guests at MTU 1500",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Variant::OursXdp => "x",
            Variant::OursNoXdp => "n",
            Variant::Kernel => "k",
            Variant::OursGuests1500 => "m",
        }
    }

    /// The agent's `--underlay-xdp`, for ours.
    fn xdp(self) -> Option<&'static str> {
        match self {
            Variant::OursXdp => Some("native"),
            Variant::OursNoXdp | Variant::OursGuests1500 => Some("off"),
            Variant::Kernel => None,
        }
    }

    /// The MTU the VMs' `eth0` ends at: the agent's, or one it was not
    /// told.
    fn guest_mtu(self) -> u32 {
        match self {
            Variant::OursGuests1500 => 1500,
            _ => VM_MTU,
        }
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    vm_traffic::prepare("datapath")?;
    let plan = Plan::pick(PLAN, quick);
    super::in_namespaces(TAG, async |prefix| bench(prefix, &plan).await)
}

/// Two hosts on a fabric, a VM on each. Dropped in field order: the agents
/// (killed, their pins removed), the VMs, the hosts, the fabric.
struct Overlay {
    agents: Vec<Agent>,
    a: Netns,
    b: Netns,
    topology: Topology,
    variant: Variant,
}

impl Measured for Overlay {
    fn vms(&self) -> VmPair<'_> {
        VmPair {
            variant: self.variant.name(),
            a: &self.a,
            b: &self.b,
            a_ip: A.ip,
            a_mac: A.mac,
            b_ip: B.ip,
            next_hop: B.ip,
        }
    }
}

impl Overlay {
    async fn build(prefix: &str, variant: Variant, round: usize) -> anyhow::Result<Overlay> {
        let prefix = format!("{prefix}-{}{round}", variant.tag());
        let mut topology = Topology::new(&prefix)?;
        traffic::disable_ipv6(topology.fabric())?;
        for (name, address) in HOSTS {
            let host = topology.add_host(name, address)?;
            traffic::disable_ipv6(host.netns())?;
            let mtu = host.netns().link(UNDERLAY_DEV)?.context(UNDERLAY_DEV)?["mtu"].clone();
            ensure!(mtu == UNDERLAY_MTU, "{UNDERLAY_DEV} has MTU {mtu}");
        }
        let a = Netns::new(format!("{prefix}-a"))?;
        let b = Netns::new(format!("{prefix}-b"))?;
        for vm in [&a, &b] {
            traffic::disable_ipv6(vm)?;
        }
        let mut overlay = Overlay {
            agents: Vec::new(),
            a,
            b,
            topology,
            variant,
        };
        match variant.xdp() {
            Some(xdp) => overlay.plug_ours(xdp).await?,
            None => overlay.plug_kernel()?,
        }
        for (vm, spec) in [(&overlay.a, &A), (&overlay.b, &B)] {
            if variant.guest_mtu() != VM_MTU {
                let mtu = variant.guest_mtu().to_string();
                vm.exec("ip", &["link", "set", "eth0", "mtu", &mtu])?;
            }
            traffic::configure(vm, &format!("{}/24", spec.ip), None)?;
        }
        overlay.vms().check_reachable()?;
        // Ours went through our programs: each host encapsulated and
        // decapsulated.
        for agent in &overlay.agents {
            let metrics = agent.metrics()?;
            for counter in ["encap", "decap"] {
                let name = format!("alcor_agent_underlay_{counter}_packets_total ");
                let packets: u64 = metrics
                    .lines()
                    .find_map(|line| line.strip_prefix(&name))
                    .and_then(|value| value.trim().parse().ok())
                    .with_context(|| format!("no {name}in the agent's metrics"))?;
                ensure!(
                    packets > 0,
                    "{}: nothing went through {counter}",
                    variant.name()
                );
            }
        }
        Ok(overlay)
    }

    /// The path MTU to B that VM A's kernel learnt (from ICMP
    /// "fragmentation needed"), if it learnt one.
    fn learnt_path_mtu(&self) -> anyhow::Result<Option<u32>> {
        // "10.0.1.11 dev eth0 src 10.0.1.10 uid 0", then on a line of its
        // own "cache expires 598sec mtu 1450" once it learnt one.
        let route = self.a.exec("ip", &["route", "get", B.ip])?;
        let mut words = route.split_whitespace().skip_while(|word| *word != "mtu");
        Ok(words.nth(1).and_then(|mtu| mtu.parse().ok()))
    }

    /// Each VM with its host, and the other host's underlay address and
    /// VM.
    fn sides(&self) -> [(&Host, &Netns, &'static VmSpec, String, &'static VmSpec); 2] {
        let [h1, h2] = [HOSTS[0].0, HOSTS[1].0].map(|name| self.topology.host(name));
        [
            (h1, &self.a, &A, h2.underlay_ip().to_string(), &B),
            (h2, &self.b, &B, h1.underlay_ip().to_string(), &A),
        ]
    }

    /// An agent per host, with `--underlay-xdp xdp`, plugs its VM and
    /// learns the other as a neighbor.
    async fn plug_ours(&mut self, xdp: &str) -> anyhow::Result<()> {
        let mut agents = Vec::new();
        for (host, vm, local, peer_ip, remote) in self.sides() {
            let mut options = host.agent_options();
            // Goal state comes over loopback: no TLS needed.
            options.grpc_listen = None;
            options.args.extend(["--underlay-xdp".into(), xdp.into()]);
            let agent = Agent::start(host.netns(), options).await;
            let mut goal_state = goalstate::v1(
                vec![goalstate::vpc("vpc1", VNI, "10.0.0.0/16")],
                vec![goalstate::subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1")],
                vec![goalstate::netns_port(
                    local.port,
                    "vpc1",
                    "sn1",
                    local.ip,
                    local.mac,
                    vm.name(),
                )],
            );
            goal_state.neighbor_states = vec![goalstate::neighbor(
                remote.port,
                "vpc1",
                "sn1",
                remote.ip,
                remote.mac,
                &peer_ip,
            )];
            vm_traffic::plug(&agent, goal_state, &[vm]).await?;
            // XDP as asked: in the driver (1), or none.
            let link = host.netns().link(UNDERLAY_DEV)?.context(UNDERLAY_DEV)?;
            let mode = link["xdp"]["mode"].as_u64();
            let expected = (xdp == "native").then_some(1);
            ensure!(
                mode == expected,
                "{}: {UNDERLAY_DEV} has XDP mode {mode:?}, not {expected:?}",
                host.name()
            );
            agents.push(agent);
        }
        self.agents = agents;
        Ok(())
    }

    /// The kernel's overlay: a VXLAN device and a bridge per host, static
    /// forwarding entries.
    fn plug_kernel(&self) -> anyhow::Result<()> {
        for (host, vm, local, peer_ip, remote) in self.sides() {
            let ns = host.netns();
            let run = |program: &str, command: String| {
                ns.exec(program, &command.split(' ').collect::<Vec<_>>())
            };
            vm_traffic::kernel_port(ns, "vm0", vm, local.mac)?;
            let local_ip = host.underlay_ip();
            run(
                "ip",
                format!(
                    "link add vx0 type vxlan id {VNI} local {local_ip} dstport 4789 \
                     dev {UNDERLAY_DEV} nolearning"
                ),
            )?;
            let mtu = ns.link("vx0")?.context("vx0")?["mtu"].clone();
            ensure!(mtu == VM_MTU, "vx0 has MTU {mtu}");
            run("ip", "link add br0 type bridge".into())?;
            vm_traffic::bridge_netfilter_off(ns);
            for device in ["vx0", "vm0"] {
                run("ip", format!("link set {device} master br0 up"))?;
            }
            run("ip", "link set br0 up".into())?;
            // The other VM's MAC goes to the other host, broadcasts (ARP)
            // too; the bridge sends the other VM's MAC to the VXLAN device.
            for mac in ["00:00:00:00:00:00", remote.mac] {
                run(
                    "bridge",
                    format!("fdb add {mac} dev vx0 dst {peer_ip} self permanent"),
                )?;
            }
            run(
                "bridge",
                format!("fdb add {} dev vx0 master static", remote.mac),
            )?;
        }
        Ok(())
    }
}

async fn bench(prefix: &str, plan: &Plan) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut rounds = Vec::new();
    let mut guests_1500_rounds = Vec::new();
    for round in 1..=plan.rounds {
        println!(
            "round {round} of {}: building the four topologies",
            plan.rounds
        );
        let mut overlays = Vec::new();
        for variant in Variant::ALL {
            overlays.push(Overlay::build(prefix, variant, round).await?);
        }
        let guests_1500 = Overlay::build(prefix, Variant::OursGuests1500, round).await?;
        rounds.push(vm_traffic::measure_round(&overlays, plan, round)?);
        let no_xdp = overlays
            .iter()
            .find(|overlay| overlay.variant == Variant::OursNoXdp)
            .context("no variant without XDP")?;
        let tcp = vm_traffic::measure_tcp1_round(&[no_xdp, &guests_1500], plan, round)?;
        let learnt = guests_1500.learnt_path_mtu()?;
        let round = Guests1500Round { tcp, learnt };
        println!("  VM A at 1500 learnt the path MTU {}", round.learnt_text());
        guests_1500_rounds.push(round);
    }
    println!("{} rounds in {:.0?}", rounds.len(), started.elapsed());
    let (guests_1500_table, guests_1500_json) = guests_1500(plan, &guests_1500_rounds);
    let kernel = Variant::ALL.len() - 1;
    let ratios = [
        Ratio {
            label: "ours XDP/kernel",
            ours: 0,
            peer: kernel,
        },
        Ratio {
            label: "ours no XDP/kernel",
            ours: 1,
            peer: kernel,
        },
    ];
    // The targets, for both of ours.
    let targets: Vec<Target> = (0..ratios.len())
        .flat_map(|ratio| {
            [
                ("TCP 1 stream", TCP1, 1.05),
                ("TCP 4 streams", TCP4, 1.05),
                ("UDP 64 B, iperf3, received", IPERF3_RECEIVED, 1.2),
                ("UDP 64 B, iperf3, at eth0", IPERF3_ETH0, 1.2),
                ("UDP 64 B, trafgen, at eth0", TRAFGEN_ETH0, 1.2),
                ("ping RTT avg", PING_AVG, 0.9),
            ]
            .map(|(what, metric, bound)| Target {
                what,
                ratio,
                metric,
                bound,
            })
        })
        .collect();
    Report {
        benchmark: "datapath",
        heading: format!(
            "datapath: VM A on host 1 → VM B on host 2 over VXLAN, VM MTU {VM_MTU}, underlay \
             MTU {UNDERLAY_MTU}; medians of {} rounds, ratios the median of each round's ratio",
            rounds.len()
        ),
        targets_heading: "targets (issue 5), against the kernel's overlay:",
        variants: &Variant::ALL.map(Variant::name),
        ratios: &ratios,
        targets: &targets,
        json: json!({
            "what": "VM A on host 1 -> VM B on host 2: our eBPF VXLAN overlay (with XDP \
                     early drop in native mode, and without) vs the kernel's VXLAN device \
                     and a Linux bridge per host with static forwarding entries",
            "underlay_mtu": UNDERLAY_MTU,
            "agent": alcor_tests::agent::bin("alcor-agent"),
            "guests_at_mtu_1500": guests_1500_json,
        }),
    }
    .print(plan, &rounds)?;
    println!("\n{guests_1500_table}");
    Ok(())
}

/// A round of the guests at MTU 1500 against those at [`VM_MTU`].
struct Guests1500Round {
    /// [Gbit/s, bytes] at [`VM_MTU`], then at 1500.
    tcp: Vec<[f64; 2]>,
    /// The path MTU VM A at 1500 learnt for B.
    learnt: Option<u32>,
}

impl Guests1500Round {
    fn learnt_text(&self) -> String {
        self.learnt.map_or("none".into(), |mtu| mtu.to_string())
    }
}

/// The table and JSON of the guests at MTU 1500 against those at
/// [`VM_MTU`].
fn guests_1500(plan: &Plan, rounds: &[Guests1500Round]) -> (String, serde_json::Value) {
    let median_of = |variant: usize, value: usize| {
        median(rounds.iter().map(|r| r.tcp[variant][value]).collect())
    };
    let [gbps_1450, gbps_1500] = [0, 1].map(|variant| median_of(variant, 0));
    let [bytes_1450, bytes_1500] = [0, 1].map(|variant| median_of(variant, 1));
    let ratio = median(rounds.iter().map(|r| r.tcp[1][0] / r.tcp[0][0]).collect());
    let learnt: Vec<String> = rounds.iter().map(Guests1500Round::learnt_text).collect();
    let table = format!(
        "ours without XDP, the VMs' eth0 left at MTU 1500 against {VM_MTU} (the agent's): TCP 1 \
         stream, VM A → VM B, {} s a run, the two alternating; medians of {} rounds, the ratio \
         the median of each round's\n\n\
         | metric | guests at {VM_MTU} | guests at 1500 | 1500/{VM_MTU} |\n\
         |---|---:|---:|---:|\n\
         | TCP 1 stream, Gbit/s | {gbps_1450:.2} | {gbps_1500:.2} | {ratio:.2}× |\n\
         | MB received in a run | {:.0} | {:.0} | |\n\
         | path MTU VM A learnt for B, each round | – | {} | |",
        plan.tcp_seconds,
        rounds.len(),
        bytes_1450 / 1e6,
        bytes_1500 / 1e6,
        learnt.join(", "),
    );
    let run =
        |[gbps, bytes]: [f64; 2]| json!({ "tcp_1_stream_gbps": gbps, "bytes_received": bytes });
    let document = json!({
        "what": "ours without XDP, both VMs' eth0 at MTU 1500 (static addresses, no DHCP) \
                 against the agent's MTU: iperf3 TCP 1 stream A -> B, alternating",
        "median": {
            VM_MTU.to_string(): run([gbps_1450, bytes_1450]),
            "1500": run([gbps_1500, bytes_1500]),
        },
        "ratio_1500_to_1450_tcp_1_stream": ratio,
        "rounds": rounds
            .iter()
            .map(|r| json!({
                VM_MTU.to_string(): run(r.tcp[0]),
                "1500": run(r.tcp[1]),
                "path_mtu_learnt": r.learnt,
            }))
            .collect::<Vec<_>>(),
    });
    (table, document)
}
