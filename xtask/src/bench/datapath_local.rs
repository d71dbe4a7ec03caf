//! `bench datapath-local`: two VMs on one host, our eBPF datapath against
//! the kernel's own paths in the same topology and the same run.
//!
//! Every variant has a host namespace and two VM namespaces whose `eth0` is
//! one end of a veth, the other end in the host namespace; MTU 1450 on
//! both ends everywhere (what our ports get), IPv6 off.
//!
//! - **ours**: the agent (release build) plugs both VMs into one subnet
//!   from goal state; frames go VM → tc on the host side → `bpf_redirect_peer`
//!   into the other VM;
//! - **ours routed**: the same with the VMs in two subnets joined by a
//!   router (MAC rewrite and TTL − 1 in the program);
//! - **bridge**: a Linux bridge in the host namespace joins the two host
//!   sides (bridge netfilter off in that namespace, as on a plain bridge);
//! - **routed**: the host namespace routes between the two host sides
//!   (addresses on them, `ip_forward`), the VMs in two subnets.
//!
//! Metrics and alternation: see [`super::vm_traffic`]. Three rounds, each
//! with four fresh topologies, variants alternating (A B C D D C B A). The
//! median of each metric over the rounds is reported with the ratios
//! ours / bridge, ours / routed and ours routed / routed, and the issue's
//! targets (against the bridge) are checked.

use alcor_proto::schema::GoalState;
use alcor_tests::{Agent, AgentOptions, Netns, goalstate, traffic};
use serde_json::json;

use super::vm_traffic::{
    self, IPERF3_ETH0, IPERF3_RECEIVED, Measured, PING_AVG, Plan, Ratio, Report, TCP1, TCP4,
    TRAFGEN_ETH0, Target, VmPair,
};

const TAG: &str = "xdpl";
const PLAN: Plan = Plan {
    rounds: 3,
    tcp_seconds: 3,
    udp_seconds: 3,
    pings: 1000,
};

const A_MAC: &str = "fa:16:3e:00:70:0a";
const B_MAC: &str = "fa:16:3e:00:70:0b";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Ours,
    OursRouted,
    Bridge,
    Routed,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::Ours,
        Variant::OursRouted,
        Variant::Bridge,
        Variant::Routed,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Ours => "ours",
            Variant::OursRouted => "ours routed",
            Variant::Bridge => "bridge",
            Variant::Routed => "routed",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Variant::Ours => "o",
            Variant::OursRouted => "or",
            Variant::Bridge => "b",
            Variant::Routed => "r",
        }
    }

    fn routed(self) -> bool {
        matches!(self, Variant::OursRouted | Variant::Routed)
    }

    /// (A's address, B's address, A's gateway, B's gateway), with /24s.
    fn addresses(self) -> (&'static str, &'static str, &'static str, &'static str) {
        if self.routed() {
            ("10.0.1.10", "10.0.2.20", "10.0.1.1", "10.0.2.1")
        } else {
            ("10.0.1.10", "10.0.1.11", "10.0.1.1", "10.0.1.1")
        }
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    vm_traffic::prepare("datapath-local")?;
    let plan = Plan::pick(PLAN, quick);
    super::in_namespaces(TAG, async |prefix| bench(prefix, &plan).await)
}

/// Two VMs and the host between them. Dropped in field order: the agent
/// (killed, its pins removed), the VMs, the host.
struct Pair {
    agent: Option<Agent>,
    a: Netns,
    b: Netns,
    host: Netns,
    variant: Variant,
}

impl Measured for Pair {
    fn vms(&self) -> VmPair<'_> {
        let (a_ip, b_ip, a_gateway, _) = self.variant.addresses();
        VmPair {
            variant: self.variant.name(),
            a: &self.a,
            b: &self.b,
            a_ip,
            a_mac: A_MAC,
            b_ip,
            next_hop: if self.variant.routed() {
                a_gateway
            } else {
                b_ip
            },
        }
    }
}

impl Pair {
    async fn build(prefix: &str, variant: Variant, round: usize) -> anyhow::Result<Pair> {
        let name = |what: &str| format!("{prefix}-{}{round}{what}", variant.tag());
        let host = Netns::new(name("h"))?;
        let a = Netns::new(name("a"))?;
        let b = Netns::new(name("b"))?;
        for netns in [&host, &a, &b] {
            traffic::disable_ipv6(netns)?;
        }
        let mut pair = Pair {
            agent: None,
            a,
            b,
            host,
            variant,
        };
        match variant {
            Variant::Ours | Variant::OursRouted => pair.plug_ours().await?,
            Variant::Bridge | Variant::Routed => pair.plug_kernel()?,
        }
        let (a_ip, b_ip, a_gw, b_gw) = variant.addresses();
        for (vm, ip, gateway) in [(&pair.a, a_ip, a_gw), (&pair.b, b_ip, b_gw)] {
            let gateway = variant.routed().then_some(gateway);
            traffic::configure(vm, &format!("{ip}/24"), gateway)?;
        }
        pair.vms().check_reachable()?;
        Ok(pair)
    }

    /// The agent plugs both VMs from goal state.
    async fn plug_ours(&mut self) -> anyhow::Result<()> {
        let agent = Agent::start(&self.host, AgentOptions::default()).await;
        let (a_ip, b_ip, _, _) = self.variant.addresses();
        let b_subnet = if self.variant.routed() { "sn2" } else { "sn1" };
        let mut goal_state: GoalState = goalstate::v1(
            vec![goalstate::vpc("vpc1", 100, "10.0.0.0/16")],
            vec![
                goalstate::subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1"),
                goalstate::subnet("sn2", "vpc1", "10.0.2.0/24", "10.0.2.1"),
            ],
            vec![
                goalstate::netns_port("a-port-0001", "vpc1", "sn1", a_ip, A_MAC, self.a.name()),
                goalstate::netns_port("b-port-0001", "vpc1", b_subnet, b_ip, B_MAC, self.b.name()),
            ],
        );
        goal_state.router_states = vec![goalstate::router_joining("r1", &["sn1", "sn2"])];
        vm_traffic::plug(&agent, goal_state, &[&self.a, &self.b]).await?;
        self.agent = Some(agent);
        Ok(())
    }

    /// The kernel's own path: a veth per VM, joined by a bridge or routed
    /// by the host namespace.
    fn plug_kernel(&self) -> anyhow::Result<()> {
        let host = &self.host;
        for (vm, device, mac) in [(&self.a, "va", A_MAC), (&self.b, "vb", B_MAC)] {
            vm_traffic::kernel_port(host, device, vm, mac)?;
        }
        if self.variant.routed() {
            host.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
            host.exec("ip", &["addr", "add", "10.0.1.1/24", "dev", "va"])?;
            host.exec("ip", &["addr", "add", "10.0.2.1/24", "dev", "vb"])?;
            for device in ["va", "vb"] {
                host.exec("ip", &["link", "set", device, "up"])?;
            }
        } else {
            host.exec("ip", &["link", "add", "br0", "type", "bridge"])?;
            vm_traffic::bridge_netfilter_off(host);
            host.exec("ip", &["link", "set", "br0", "up"])?;
            for device in ["va", "vb"] {
                host.exec("ip", &["link", "set", device, "master", "br0", "up"])?;
            }
        }
        Ok(())
    }
}

async fn bench(prefix: &str, plan: &Plan) -> anyhow::Result<()> {
    let mut rounds = Vec::new();
    for round in 1..=plan.rounds {
        println!(
            "round {round} of {}: building the four topologies",
            plan.rounds
        );
        let mut pairs = Vec::new();
        for variant in Variant::ALL {
            pairs.push(Pair::build(prefix, variant, round).await?);
        }
        rounds.push(vm_traffic::measure_round(&pairs, plan, round)?);
    }
    let index = |variant: Variant| {
        Variant::ALL
            .iter()
            .position(|v| *v == variant)
            .expect("a variant")
    };
    let ratio = |label, ours, peer| Ratio {
        label,
        ours: index(ours),
        peer: index(peer),
    };
    // The issue's targets, against the bridge (ratio 0).
    let target = |what, metric, bound| Target {
        what,
        ratio: 0,
        metric,
        bound,
    };
    Report {
        benchmark: "datapath-local",
        heading: format!(
            "datapath-local: VM A → VM B on one host, MTU {}; medians of {} rounds, ratios \
             the median of each round's ratio",
            vm_traffic::VM_MTU,
            rounds.len()
        ),
        targets_heading: "targets (issue 4), against the bridge:",
        variants: &Variant::ALL.map(Variant::name),
        ratios: &[
            ratio("ours/bridge", Variant::Ours, Variant::Bridge),
            ratio("ours/routed", Variant::Ours, Variant::Routed),
            ratio("ours routed/routed", Variant::OursRouted, Variant::Routed),
        ],
        targets: &[
            target("TCP 1 stream", TCP1, 1.0),
            target("TCP 4 streams", TCP4, 1.0),
            target("UDP 64 B, iperf3, received", IPERF3_RECEIVED, 1.3),
            target("UDP 64 B, iperf3, at eth0", IPERF3_ETH0, 1.3),
            target("UDP 64 B, trafgen, at eth0", TRAFGEN_ETH0, 1.3),
            target("ping RTT avg", PING_AVG, 1.0),
        ],
        json: json!({
            "what": "VM A -> VM B on one host: our eBPF datapath (same subnet, and routed \
                     between two subnets) vs a Linux bridge and host-namespace routing",
        }),
    }
    .print(plan, &rounds)
}
