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
//! Metrics, VM A → VM B:
//! - iperf3 TCP with 1 and 4 streams;
//! - UDP datagrams with 64 bytes of payload, per second: from 4 iperf3
//!   clients at full speed (one client is its own bottleneck), as received
//!   by B's iperf3 servers and as arrived at B's `eth0`; and from trafgen on
//!   one CPU (frames straight from a packet ring, so that the path, not the
//!   sender's socket layer, takes most of the time), as arrived at B's
//!   `eth0`, B holding a socket for them that nobody reads;
//! - ping RTT over 1,000 pings 2 ms apart: average, p50 and p99 of the
//!   replies' times.
//!
//! Three rounds, each with four fresh topologies; within a round each
//! metric runs on the four variants back to back and back again (A B C D
//! D C B A, the round's value being the mean of the two), starting with
//! another variant each round. The median of each metric over the rounds
//! is reported with the ratios ours / bridge, ours / routed and ours
//! routed / routed (each the median of the rounds' ratios: the machine is
//! shared and its load drifts), and the issue's targets (against the
//! bridge) are checked. Nothing here
//! configures the root namespace: trafgen is told not to tune socket
//! memory or IRQ affinities.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use alcor_proto::{
    control::PortPhase,
    schema::{GoalState, OperationStatus},
};
use alcor_tests::{
    Agent, AgentOptions, Netns, goalstate,
    topology::namespaces_with_prefix,
    traffic::{self, Iperf3Client, Iperf3Server},
};
use anyhow::{Context, anyhow, ensure};
use futures::FutureExt;
use serde_json::json;

use crate::{setup, util};

const TAG: &str = "xdpl";
const ROUNDS: usize = 3;
/// VM MTU in every variant: what the agent gives ports on a 1500-byte
/// underlay.
const MTU: &str = "1450";
/// TCP runs: this many seconds measured, after one second left out (slow
/// start).
const TCP_SECONDS: u32 = 3;
const UDP_SECONDS: u32 = 3;
/// Parallel iperf3 UDP clients (each to its own server).
const UDP_CLIENTS: u16 = 4;
const PINGS: u32 = 1000;
/// Bounds any single tool run.
const RUN_LIMIT: Duration = Duration::from_secs(60);

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

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    for (program, package) in [("iperf3", "iperf3"), ("trafgen", "netsniff-ng")] {
        alcor_tests::dhcp::require(program, package)?;
    }
    println!("bench datapath-local: building alcor-agent (release)");
    util::build_agent(true)?;
    util::sweep_leftovers(TAG)?;
    let prefix = util::run_prefix(TAG);
    let runtime = tokio::runtime::Runtime::new()?;
    // Namespaces, agents and pins live in the benchmark's future: dropped,
    // and so cleaned up, however it ends.
    let outcome = runtime.block_on(async {
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

/// Two VMs and the host between them. Dropped in field order: the agent
/// (killed, its pins removed), the VMs, the host.
struct Pair {
    agent: Option<Agent>,
    a: Netns,
    b: Netns,
    host: Netns,
    variant: Variant,
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
        // Both ways work before anything is measured.
        let ping = traffic::ping(
            &pair.a,
            b_ip,
            &["-c", "3", "-i", "0.05", "-W", "1"],
            Duration::from_secs(10),
        )?;
        ensure!(
            ping.all_answered(),
            "{}: A cannot reach B: {}",
            variant.name(),
            ping.summary
        );
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
        let reply = agent.push(goal_state).await;
        ensure!(
            reply
                .operation_statuses
                .iter()
                .all(|s| s.operation_status == OperationStatus::Success as i32),
            "goal state refused: {reply:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ports = agent.ports().await;
            if ports.len() == 2 && ports.iter().all(|p| p.phase == PortPhase::Ready as i32) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "ports not ready after 10 s: {ports:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for vm in [&self.a, &self.b] {
            let mtu = vm.link("eth0")?.context("eth0")?["mtu"].clone();
            ensure!(mtu == MTU.parse::<u32>()?, "the agent gave eth0 MTU {mtu}");
        }
        self.agent = Some(agent);
        Ok(())
    }

    /// The kernel's own path: a veth per VM, joined by a bridge or routed
    /// by the host namespace.
    fn plug_kernel(&self) -> anyhow::Result<()> {
        let host = &self.host;
        for (vm, device, mac) in [(&self.a, "va", A_MAC), (&self.b, "vb", B_MAC)] {
            host.exec(
                "ip",
                &[
                    "link",
                    "add",
                    device,
                    "mtu",
                    MTU,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "mtu",
                    MTU,
                    "address",
                    mac,
                    "netns",
                    vm.name(),
                ],
            )?;
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
            // Where br_netfilter is loaded, bridged frames would also go
            // through the (empty) IP hooks: not the bridge's own cost.
            for family in ["iptables", "ip6tables", "arptables"] {
                let _ = host.exec(
                    "sysctl",
                    &["-qw", &format!("net.bridge.bridge-nf-call-{family}=0")],
                );
            }
            host.exec("ip", &["link", "set", "br0", "up"])?;
            for device in ["va", "vb"] {
                host.exec("ip", &["link", "set", device, "master", "br0", "up"])?;
            }
        }
        Ok(())
    }

    fn b_ip(&self) -> &'static str {
        self.variant.addresses().1
    }

    /// 1,000 pings 2 ms apart: (average, p50, p99) in µs; none may be lost.
    fn ping(&self) -> anyhow::Result<[f64; 3]> {
        let ping = traffic::ping(
            &self.a,
            self.b_ip(),
            &["-c", &PINGS.to_string(), "-i", "0.002", "-W", "1"],
            RUN_LIMIT,
        )?;
        ensure!(
            ping.lost() == 0,
            "{}: pings lost: {}",
            self.variant.name(),
            ping.summary
        );
        let mut rtts_us: Vec<f64> = ping.rtts_ms.iter().map(|ms| ms * 1000.0).collect();
        rtts_us.sort_by(f64::total_cmp);
        let average = rtts_us.iter().sum::<f64>() / rtts_us.len().max(1) as f64;
        Ok([
            average,
            percentile(&rtts_us, 50.0),
            percentile(&rtts_us, 99.0),
        ])
    }

    /// iperf3 TCP with `streams` streams: Gbit/s received.
    fn tcp(&self, streams: u32) -> anyhow::Result<f64> {
        let b_ip = self.b_ip();
        let _server = Iperf3Server::start(&self.b, b_ip, 5201, true)?;
        let report = traffic::iperf3(
            &self.a,
            b_ip,
            5201,
            &[
                "-t",
                &TCP_SECONDS.to_string(),
                "-O",
                "1",
                "-P",
                &streams.to_string(),
            ],
            RUN_LIMIT,
        )
        .with_context(|| format!("{}: TCP with {streams} streams", self.variant.name()))?;
        Ok(traffic::tcp_received_bps(&report) / 1e9)
    }

    /// [`UDP_CLIENTS`] iperf3 clients sending 64-byte datagrams as fast as
    /// they can, each to its own server: (sent, received by the servers,
    /// arrived at B's eth0) per second.
    fn udp_iperf3(&self) -> anyhow::Result<[f64; 3]> {
        let name = self.variant.name();
        let b_ip = self.b_ip();
        let servers = (0..UDP_CLIENTS)
            .map(|i| Iperf3Server::start(&self.b, b_ip, 5301 + i, true))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let eth0_before = traffic::eth0_stat(&self.b, "rx_packets")?;
        let started = Instant::now();
        let clients = servers
            .iter()
            .map(|server| {
                Iperf3Client::start(
                    &self.a,
                    b_ip,
                    server.port,
                    &["-u", "-l", "64", "-b", "0", "-t", &UDP_SECONDS.to_string()],
                    RUN_LIMIT,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let reports = clients
            .into_iter()
            .map(Iperf3Client::finish)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{name}: UDP"))?;
        // The clients' start-up and wind-down are in this time too: a
        // slight underestimate of the rate at eth0, alike for every variant.
        let elapsed = started.elapsed().as_secs_f64();
        let eth0_after = traffic::eth0_stat(&self.b, "rx_packets")?;
        let (mut sent, mut received, mut seconds) = (0, 0, 0.0f64);
        for report in &reports {
            let (s, r) = traffic::udp_packets(report);
            sent += s;
            received += r;
            seconds = seconds.max(report["end"]["sum"]["seconds"].as_f64().unwrap_or(0.0));
        }
        ensure!(seconds > 0.0, "{name}: UDP ran for no time");
        Ok([
            sent as f64 / seconds,
            received as f64 / seconds,
            (eth0_after - eth0_before) as f64 / elapsed,
        ])
    }

    /// trafgen (netsniff-ng's packet generator: frames from an mmap'ed
    /// ring, no socket layer) sends the same 64-byte-payload UDP datagrams
    /// from A's eth0 on one CPU for [`UDP_SECONDS`], to a socket in B that
    /// nobody reads: the packets per second one CPU pushes through the
    /// path (veth, host side, into B up to B's socket) when sending costs
    /// little. Its delivery runs on the sending CPU, whatever the variant.
    /// (sent at A's eth0, arrived at B's eth0) per second.
    fn udp_trafgen(&self) -> anyhow::Result<[f64; 2]> {
        let name = self.variant.name();
        let (a_ip, b_ip, a_gateway, _) = self.variant.addresses();
        // The frame goes to B, or to the gateway when routed: the MAC A's
        // kernel learnt for it during the set-up ping.
        let next_hop = if self.variant.routed() {
            a_gateway
        } else {
            b_ip
        };
        let next_hop_mac = traffic::neighbour(&self.a, next_hop)?
            .and_then(|(_, mac)| mac)
            .with_context(|| format!("{name}: A has no MAC for {next_hop}"))?;
        let b_addr: std::net::SocketAddr = format!("{b_ip}:9000").parse()?;
        let _sink = self.b.enter(move || std::net::UdpSocket::bind(b_addr))??;
        let packet = format!(
            "{{ eth(da={next_hop_mac}, sa={A_MAC}), ipv4(saddr={a_ip}, daddr={b_ip}, ttl=64), \
             udp(sp=9001, dp=9000), fill(0x41, 64) }}"
        );
        let a_before = traffic::eth0_stat(&self.a, "tx_packets")?;
        let b_before = traffic::eth0_stat(&self.b, "rx_packets")?;
        let started = Instant::now();
        // SIGINT ends it; --no-sock-mem and --notouch-irq keep it from
        // tuning the machine's socket memory and IRQ affinities.
        let output = Command::new("timeout")
            .args(["-s", "INT", "-k", "5", &UDP_SECONDS.to_string()])
            .args(["ip", "netns", "exec", self.a.name(), "trafgen"])
            .args([
                "--dev",
                "eth0",
                "--cpus",
                "1",
                "--no-sock-mem",
                "--notouch-irq",
            ])
            .arg("--no-cpu-stats")
            .arg(&packet)
            .output()
            .context("running trafgen")?;
        let elapsed = started.elapsed().as_secs_f64();
        let a_after = traffic::eth0_stat(&self.a, "tx_packets")?;
        let b_after = traffic::eth0_stat(&self.b, "rx_packets")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            stdout.contains("packets outgoing"),
            "{name}: trafgen did not run: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok([
            (a_after - a_before) as f64 / elapsed,
            (b_after - b_before) as f64 / elapsed,
        ])
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Metric indices into a round's values.
const TCP1: usize = 0;
const TCP4: usize = 1;
const IPERF3_RECEIVED: usize = 2;
const IPERF3_ETH0: usize = 3;
const IPERF3_SENT: usize = 4;
const TRAFGEN_ETH0: usize = 5;
const TRAFGEN_SENT: usize = 6;
const PING_AVG: usize = 7;
const PING_P50: usize = 8;
const PING_P99: usize = 9;

/// What a variant measured in a round, indexed as [`METRICS`].
type Values = [f64; METRICS.len()];

/// (key, label in the table or "" for the JSON only, scale for the table,
/// whether more is better)
const METRICS: [(&str, &str, f64, bool); 10] = [
    ("tcp_1_stream_gbps", "TCP 1 stream, Gbit/s", 1.0, true),
    ("tcp_4_streams_gbps", "TCP 4 streams, Gbit/s", 1.0, true),
    (
        "udp64_iperf3_received_pps",
        "UDP 64 B iperf3 rcvd, kpps",
        1e-3,
        true,
    ),
    (
        "udp64_iperf3_eth0_pps",
        "UDP 64 B iperf3 eth0, kpps",
        1e-3,
        true,
    ),
    ("udp64_iperf3_sent_pps", "", 1e-3, true),
    (
        "udp64_trafgen_eth0_pps",
        "UDP 64 B trafgen eth0, kpps",
        1e-3,
        true,
    ),
    ("udp64_trafgen_sent_pps", "", 1e-3, true),
    ("ping_avg_us", "ping RTT avg, µs", 1.0, false),
    ("ping_p50_us", "ping RTT p50, µs", 1.0, false),
    ("ping_p99_us", "ping RTT p99, µs", 1.0, false),
];

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs one group of metrics on every pair in `order` and back (A B C D
/// D C B A, so that a drift in what else the machine does weighs on all
/// alike) and stores the mean of each pair's two runs at `indices`.
fn both_ways<const N: usize>(
    pairs: &[Pair],
    order: &[usize],
    values: &mut [Values],
    indices: [usize; N],
    measure: impl Fn(&Pair) -> anyhow::Result<[f64; N]>,
) -> anyhow::Result<()> {
    let mut sums = vec![[0.0; N]; pairs.len()];
    for &i in order.iter().chain(order.iter().rev()) {
        for (sum, value) in sums[i].iter_mut().zip(measure(&pairs[i])?) {
            *sum += value / 2.0;
        }
    }
    for (pair_values, sum) in values.iter_mut().zip(sums) {
        for (index, value) in indices.into_iter().zip(sum) {
            pair_values[index] = value;
        }
    }
    Ok(())
}

async fn bench(prefix: &str) -> anyhow::Result<()> {
    let mut rounds: Vec<Vec<Values>> = Vec::new();
    for round in 1..=ROUNDS {
        println!("round {round} of {ROUNDS}: building the four topologies");
        let mut pairs = Vec::new();
        for variant in Variant::ALL {
            pairs.push(Pair::build(prefix, variant, round).await?);
        }
        // Each metric runs on every variant back to back, there and back;
        // each round starts with another variant.
        let mut order: Vec<usize> = (0..pairs.len()).collect();
        order.rotate_left((round - 1) % pairs.len());
        let mut values = vec![[0.0; METRICS.len()]; pairs.len()];
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            let v = &mut values;
            both_ways(
                &pairs,
                &order,
                v,
                [PING_AVG, PING_P50, PING_P99],
                Pair::ping,
            )?;
            both_ways(&pairs, &order, v, [TCP1], |p| Ok([p.tcp(1)?]))?;
            both_ways(&pairs, &order, v, [TCP4], |p| Ok([p.tcp(4)?]))?;
            both_ways(
                &pairs,
                &order,
                v,
                [IPERF3_SENT, IPERF3_RECEIVED, IPERF3_ETH0],
                Pair::udp_iperf3,
            )?;
            both_ways(
                &pairs,
                &order,
                v,
                [TRAFGEN_SENT, TRAFGEN_ETH0],
                Pair::udp_trafgen,
            )?;
            Ok(())
        })?;
        drop(pairs);
        for (variant, m) in Variant::ALL.into_iter().zip(&values) {
            println!(
                "  {:<12} TCP {:5.2} / {:5.2} Gbit/s; UDP 64 B: iperf3 {:4.0} kpps received, \
                 {:4.0} at eth0; trafgen {:4.0} at eth0; ping {:.1} µs avg",
                variant.name(),
                m[TCP1],
                m[TCP4],
                m[IPERF3_RECEIVED] / 1e3,
                m[IPERF3_ETH0] / 1e3,
                m[TRAFGEN_ETH0] / 1e3,
                m[PING_AVG],
            );
        }
        rounds.push(values);
    }
    report(&rounds)
}

/// Variant index in [`Variant::ALL`].
fn index(variant: Variant) -> usize {
    Variant::ALL
        .iter()
        .position(|v| *v == variant)
        .expect("a variant")
}

fn report(rounds: &[Vec<Values>]) -> anyhow::Result<()> {
    // Per metric: each variant's median over the rounds.
    let medians: Vec<Values> = (0..Variant::ALL.len())
        .map(|v| std::array::from_fn(|m| median(rounds.iter().map(|r| r[v][m]).collect())))
        .collect();
    // Per metric: the median over the rounds of the round's own ratio, so
    // that a round the machine was busier weighs on both sides.
    let pairs = [
        ("ours/bridge", Variant::Ours, Variant::Bridge),
        ("ours/routed", Variant::Ours, Variant::Routed),
        ("ours routed/routed", Variant::OursRouted, Variant::Routed),
    ];
    let ratios: Vec<Values> = pairs
        .iter()
        .map(|&(_, ours, peer)| {
            std::array::from_fn(|m| {
                median(
                    rounds
                        .iter()
                        .map(|r| r[index(ours)][m] / r[index(peer)][m])
                        .collect(),
                )
            })
        })
        .collect();

    println!(
        "\ndatapath-local: VM A → VM B on one host, MTU {MTU}; medians of {ROUNDS} rounds, \
         ratios the median of each round's ratio"
    );
    print!("{:<28}", "metric");
    for variant in Variant::ALL {
        print!(" {:>11}", variant.name());
    }
    for (label, _, _) in &pairs {
        print!(" {label:>18}");
    }
    println!();
    for (m, (_, label, scale, _)) in METRICS.iter().enumerate() {
        if label.is_empty() {
            continue;
        }
        print!("{label:<28}");
        for values in &medians {
            print!(" {:>11.2}", values[m] * scale);
        }
        for values in &ratios {
            print!(" {:>17.2}×", values[m]);
        }
        println!();
    }

    // The issue's targets, against the bridge.
    let against_bridge = &ratios[0];
    let targets: Vec<(String, f64, bool)> = [
        ("TCP 1 stream", TCP1, 1.0),
        ("TCP 4 streams", TCP4, 1.0),
        ("UDP 64 B, iperf3, received", IPERF3_RECEIVED, 1.3),
        ("UDP 64 B, iperf3, at eth0", IPERF3_ETH0, 1.3),
        ("UDP 64 B, trafgen, at eth0", TRAFGEN_ETH0, 1.3),
        ("ping RTT avg", PING_AVG, 1.0),
    ]
    .into_iter()
    .map(|(what, m, bound)| {
        let value = against_bridge[m];
        let more_is_better = METRICS[m].3;
        let met = if more_is_better {
            value >= bound
        } else {
            value <= bound
        };
        let sign = if more_is_better { "≥" } else { "≤" };
        (
            format!("{what}: ours/bridge {value:.2}× ({sign} {bound:.1}×)"),
            value,
            met,
        )
    })
    .collect();
    println!("\ntargets (issue 4), against the bridge:");
    for (target, _, met) in &targets {
        println!("  {target}: {}", if *met { "met" } else { "NOT met" });
    }

    let by_key = |values: &Values| -> serde_json::Value {
        METRICS
            .iter()
            .zip(values)
            .map(|((key, ..), value)| (key.to_string(), json!(value)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let variants: serde_json::Map<String, serde_json::Value> = Variant::ALL
        .iter()
        .enumerate()
        .map(|(v, variant)| {
            let runs: Vec<serde_json::Value> = rounds.iter().map(|r| by_key(&r[v])).collect();
            (
                variant.name().to_string(),
                json!({ "median": by_key(&medians[v]), "rounds": runs }),
            )
        })
        .collect();
    let ratio_json: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .zip(&ratios)
        .map(|((label, _, _), values)| (label.to_string(), by_key(values)))
        .collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = util::target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("datapath-local.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "benchmark": "datapath-local",
            "what": "VM A -> VM B on one host: our eBPF datapath (same subnet, and routed \
                     between two subnets) vs a Linux bridge and host-namespace routing",
            "kernel": kernel.trim(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "mtu": MTU.parse::<u32>()?,
            "rounds": ROUNDS,
            "tcp_seconds": TCP_SECONDS,
            "udp_seconds": UDP_SECONDS,
            "udp_iperf3_clients": UDP_CLIENTS,
            "pings": PINGS,
            "variants": variants,
            "ratios": ratio_json,
            "targets": targets
                .iter()
                .map(|(target, ratio, met)| json!({ "target": target, "ratio": ratio, "met": met }))
                .collect::<Vec<_>>(),
        }))?,
    )?;
    println!("wrote {}", path.display());
    Ok(())
}
