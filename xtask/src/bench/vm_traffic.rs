//! What the datapath benchmarks share: two VMs, A sending and B receiving,
//! measured with the same tools whatever joins them (ping, iperf3 TCP and
//! UDP, trafgen); the variants alternating within each round; and the
//! report: medians over rounds, ratios, a markdown table, the targets and
//! a JSON file.
//!
//! Metrics, VM A → VM B:
//! - iperf3 TCP with 1 and 4 streams;
//! - UDP datagrams with 64 bytes of payload, per second: from
//!   [`UDP_CLIENTS`] iperf3 clients at full speed (one client is its own
//!   bottleneck), as received by B's iperf3 servers and as arrived at B's
//!   `eth0`; and from trafgen on one CPU (frames straight from a packet
//!   ring, so that the path, not the sender's socket layer, takes most of
//!   the time), as arrived at B's `eth0`, B holding a socket for them that
//!   nobody reads;
//! - ping RTT over [`Plan::pings`] pings 2 ms apart: average, p50 and p99
//!   of the replies' times.
//!
//! Within a round each metric runs on every variant back to back and back
//! again (A B C C B A, the round's value being the mean of the two),
//! starting with another variant each round; ratios are the median of the
//! rounds' own ratios, so that a round the shared machine was busier weighs
//! on both sides. Nothing here configures the root namespace: trafgen is
//! told not to tune socket memory or IRQ affinities.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use alcor_proto::{
    control::PortPhase,
    schema::{GoalState, OperationStatus},
};
use alcor_tests::{
    Agent, Netns,
    traffic::{self, Iperf3Client, Iperf3Server},
};
use anyhow::{Context, ensure};
use serde_json::json;

use super::median;
use crate::setup;

/// VM MTU in every variant: what the agent gives ports on a 1500-byte
/// underlay (1500 − 50 bytes of VXLAN).
pub const VM_MTU: u32 = 1450;
/// Parallel iperf3 UDP clients (each to its own server).
const UDP_CLIENTS: u16 = 4;
/// Bounds any single tool run.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// How long a benchmark measures.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub rounds: usize,
    /// TCP runs: this many seconds measured, after one second left out
    /// (slow start).
    pub tcp_seconds: u32,
    pub udp_seconds: u32,
    pub pings: u32,
}

impl Plan {
    /// One short round: shows the benchmark works, its figures mean little.
    pub const QUICK: Plan = Plan {
        rounds: 1,
        tcp_seconds: 1,
        udp_seconds: 1,
        pings: 200,
    };

    /// `full`, or [`Plan::QUICK`] when `quick`.
    pub fn pick(full: Plan, quick: bool) -> Plan {
        if quick { Plan::QUICK } else { full }
    }
}

/// Installs and checks the tools, builds the release agent (see
/// [`super::release_agent`]).
pub fn prepare(benchmark: &str) -> anyhow::Result<()> {
    setup::run()?;
    for (program, package) in [("iperf3", "iperf3"), ("trafgen", "netsniff-ng")] {
        alcor_tests::dhcp::require(program, package)?;
    }
    super::release_binaries(benchmark, &[super::Binary::Agent])
}

/// Pushes `goal_state` to `agent`, which must accept all of it, waits
/// (10 s at most) until its ports are all ready, one per VM of `vms`, and
/// checks that each VM's `eth0` got [`VM_MTU`].
pub async fn plug(agent: &Agent, goal_state: GoalState, vms: &[&Netns]) -> anyhow::Result<()> {
    let reply = agent.push(goal_state).await;
    ensure!(
        reply
            .operation_statuses
            .iter()
            .all(|s| s.operation_status == OperationStatus::Success as i32),
        "goal state refused: {reply:?}"
    );
    ports_ready(agent, vms.len()).await?;
    for vm in vms {
        let mtu = vm.link("eth0")?.context("eth0")?["mtu"].clone();
        ensure!(mtu == VM_MTU, "the agent gave eth0 MTU {mtu}");
    }
    Ok(())
}

/// Waits (10 s at most) until `agent` has `count` ports, all ready.
pub async fn ports_ready(agent: &Agent, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ports = agent.ports().await;
        if ports.len() == count && ports.iter().all(|p| p.phase == PortPhase::Ready as i32) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "ports not ready after 10 s: {ports:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The kernel's own plumbing of a VM: a veth `device` in `host` whose peer
/// is `eth0` of `vm` with `mac`, [`VM_MTU`] on both ends, neither up.
pub fn kernel_port(host: &Netns, device: &str, vm: &Netns, mac: &str) -> anyhow::Result<()> {
    let mtu = VM_MTU.to_string();
    host.exec(
        "ip",
        &[
            "link",
            "add",
            device,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu,
            "address",
            mac,
            "netns",
            vm.name(),
        ],
    )?;
    Ok(())
}

/// Turns bridge netfilter off in `netns`: where br_netfilter is loaded,
/// bridged frames would also go through the (empty) IP hooks, which is not
/// the bridge's own cost.
pub fn bridge_netfilter_off(netns: &Netns) {
    for family in ["iptables", "ip6tables", "arptables"] {
        let _ = netns.exec(
            "sysctl",
            &["-qw", &format!("net.bridge.bridge-nf-call-{family}=0")],
        );
    }
}

/// The two VMs a variant is measured between: A sends, B receives.
pub struct VmPair<'a> {
    /// The variant's name, for messages.
    pub variant: &'a str,
    pub a: &'a Netns,
    pub b: &'a Netns,
    pub a_ip: &'a str,
    pub a_mac: &'a str,
    pub b_ip: &'a str,
    /// Where A's frames to B go first: B, or A's gateway when routed.
    pub next_hop: &'a str,
}

/// A variant set up for measurement.
pub trait Measured {
    fn vms(&self) -> VmPair<'_>;
}

/// So that variants owned apart can be measured together, in a slice of
/// references.
impl<T: Measured> Measured for &T {
    fn vms(&self) -> VmPair<'_> {
        (**self).vms()
    }
}

impl VmPair<'_> {
    /// A reaches B (and the answers come back) before anything is measured.
    pub fn check_reachable(&self) -> anyhow::Result<()> {
        let ping = traffic::ping(
            self.a,
            self.b_ip,
            &["-c", "3", "-i", "0.05", "-W", "1"],
            Duration::from_secs(10),
        )?;
        ensure!(
            ping.all_answered(),
            "{}: A cannot reach B: {}",
            self.variant,
            ping.summary
        );
        Ok(())
    }

    /// `plan.pings` pings 2 ms apart: (average, p50, p99) in µs; none may
    /// be lost.
    fn ping(&self, plan: &Plan) -> anyhow::Result<[f64; 3]> {
        let ping = traffic::ping(
            self.a,
            self.b_ip,
            &["-c", &plan.pings.to_string(), "-i", "0.002", "-W", "1"],
            RUN_LIMIT,
        )?;
        ensure!(
            ping.lost() == 0,
            "{}: pings lost: {}",
            self.variant,
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

    /// iperf3 TCP with `streams` streams: [Gbit/s, bytes] received. A
    /// stalled connection is a result too (0 bytes), as long as iperf3
    /// itself ends well.
    fn tcp(&self, plan: &Plan, streams: u32) -> anyhow::Result<[f64; 2]> {
        let _server = Iperf3Server::start(self.b, self.b_ip, 5201, true)?;
        let report = traffic::iperf3(
            self.a,
            self.b_ip,
            5201,
            &[
                "-t",
                &plan.tcp_seconds.to_string(),
                "-O",
                "1",
                "-P",
                &streams.to_string(),
            ],
            RUN_LIMIT,
        )
        .with_context(|| format!("{}: TCP with {streams} streams", self.variant))?;
        Ok([
            traffic::tcp_received_bps(&report) / 1e9,
            traffic::tcp_received_bytes(&report) as f64,
        ])
    }

    /// [`UDP_CLIENTS`] iperf3 clients sending 64-byte datagrams as fast as
    /// they can, each to its own server: (sent, received by the servers,
    /// arrived at B's eth0) per second.
    fn udp_iperf3(&self, plan: &Plan) -> anyhow::Result<[f64; 3]> {
        let name = self.variant;
        let servers = (0..UDP_CLIENTS)
            .map(|i| Iperf3Server::start(self.b, self.b_ip, 5301 + i, true))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let eth0_before = traffic::eth0_stat(self.b, "rx_packets")?;
        let started = Instant::now();
        let clients = servers
            .iter()
            .map(|server| {
                Iperf3Client::start(
                    self.a,
                    self.b_ip,
                    server.port,
                    &[
                        "-u",
                        "-l",
                        "64",
                        "-b",
                        "0",
                        "-t",
                        &plan.udp_seconds.to_string(),
                    ],
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
        let eth0_after = traffic::eth0_stat(self.b, "rx_packets")?;
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
    /// from A's eth0 on one CPU for `plan.udp_seconds`, to a socket in B
    /// that nobody reads: the packets per second one CPU pushes through
    /// the path (A's veth, whatever joins the VMs, B up to its socket)
    /// when sending costs little. Its delivery runs on the sending CPU,
    /// whatever the variant. (sent at A's eth0, arrived at B's eth0) per
    /// second.
    fn udp_trafgen(&self, plan: &Plan) -> anyhow::Result<[f64; 2]> {
        let (name, a_ip, b_ip) = (self.variant, self.a_ip, self.b_ip);
        // The frame goes to the next hop's MAC, which A's kernel learnt
        // during the set-up ping.
        let next_hop_mac = traffic::neighbour(self.a, self.next_hop)?
            .and_then(|(_, mac)| mac)
            .with_context(|| format!("{name}: A has no MAC for {}", self.next_hop))?;
        let b_addr: std::net::SocketAddr = format!("{b_ip}:9000").parse()?;
        let _sink = self.b.enter(move || std::net::UdpSocket::bind(b_addr))??;
        let packet = format!(
            "{{ eth(da={next_hop_mac}, sa={}), ipv4(saddr={a_ip}, daddr={b_ip}, ttl=64), \
             udp(sp=9001, dp=9000), fill(0x41, 64) }}",
            self.a_mac
        );
        let a_before = traffic::eth0_stat(self.a, "tx_packets")?;
        let b_before = traffic::eth0_stat(self.b, "rx_packets")?;
        let started = Instant::now();
        // SIGINT ends it; --no-sock-mem and --notouch-irq keep it from
        // tuning the machine's socket memory and IRQ affinities.
        let output = Command::new("timeout")
            .args(["-s", "INT", "-k", "5", &plan.udp_seconds.to_string()])
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
        let a_after = traffic::eth0_stat(self.a, "tx_packets")?;
        let b_after = traffic::eth0_stat(self.b, "rx_packets")?;
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
pub const TCP1: usize = 0;
pub const TCP4: usize = 1;
pub const IPERF3_RECEIVED: usize = 2;
pub const IPERF3_ETH0: usize = 3;
pub const IPERF3_SENT: usize = 4;
pub const TRAFGEN_ETH0: usize = 5;
pub const TRAFGEN_SENT: usize = 6;
pub const PING_AVG: usize = 7;
pub const PING_P50: usize = 8;
pub const PING_P99: usize = 9;

/// What a variant measured in a round, indexed as [`METRICS`].
pub type Values = [f64; METRICS.len()];

struct Metric {
    /// Its key in the JSON.
    key: &'static str,
    /// Its row in the table, or "" for the JSON only.
    label: &'static str,
    /// From the measured unit to the table's.
    scale: f64,
    /// Decimals in the table.
    decimals: usize,
    more_is_better: bool,
}

const fn metric(
    key: &'static str,
    label: &'static str,
    scale: f64,
    decimals: usize,
    more_is_better: bool,
) -> Metric {
    Metric {
        key,
        label,
        scale,
        decimals,
        more_is_better,
    }
}

const METRICS: [Metric; 10] = [
    metric("tcp_1_stream_gbps", "TCP 1 stream, Gbit/s", 1.0, 2, true),
    metric("tcp_4_streams_gbps", "TCP 4 streams, Gbit/s", 1.0, 2, true),
    metric(
        "udp64_iperf3_received_pps",
        "UDP 64 B, 4 iperf3 senders, kpps received",
        1e-3,
        0,
        true,
    ),
    metric(
        "udp64_iperf3_eth0_pps",
        "UDP 64 B, 4 iperf3 senders, kpps at eth0",
        1e-3,
        0,
        true,
    ),
    metric("udp64_iperf3_sent_pps", "", 1e-3, 0, true),
    metric(
        "udp64_trafgen_eth0_pps",
        "UDP 64 B, trafgen, kpps at eth0",
        1e-3,
        0,
        true,
    ),
    metric("udp64_trafgen_sent_pps", "", 1e-3, 0, true),
    metric("ping_avg_us", "ping RTT avg, µs", 1.0, 1, false),
    metric("ping_p50_us", "ping RTT p50, µs", 1.0, 1, false),
    metric("ping_p99_us", "ping RTT p99, µs", 1.0, 1, false),
];

/// Runs `measure` on every variant in `order` and back (A B C C B A, so
/// that a drift in what else the machine does weighs on all alike): the
/// mean of each variant's two runs, indexed as `variants`.
fn both_ways<T: Measured, const N: usize>(
    variants: &[T],
    order: &[usize],
    measure: impl Fn(&VmPair) -> anyhow::Result<[f64; N]>,
) -> anyhow::Result<Vec<[f64; N]>> {
    let mut means = vec![[0.0; N]; variants.len()];
    for &i in order.iter().chain(order.iter().rev()) {
        ensure!(!super::interrupted(), "interrupted");
        for (mean, value) in means[i].iter_mut().zip(measure(&variants[i].vms())?) {
            *mean += value / 2.0;
        }
    }
    Ok(means)
}

/// Stores each variant's `means` at `indices` of its values.
fn store<const N: usize>(values: &mut [Values], indices: [usize; N], means: Vec<[f64; N]>) {
    for (variant_values, mean) in values.iter_mut().zip(means) {
        for (index, value) in indices.into_iter().zip(mean) {
            variant_values[index] = value;
        }
    }
}

/// `0..count` rotated so that round `round` (from 1) starts with another
/// variant than the round before.
fn rotated(count: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    order.rotate_left((round - 1) % count);
    order
}

/// Round `round` (from 1) of every metric on `variants`, alternating, the
/// first variant another each round; prints the round's figures.
pub fn measure_round<T: Measured>(
    variants: &[T],
    plan: &Plan,
    round: usize,
) -> anyhow::Result<Vec<Values>> {
    let order = rotated(variants.len(), round);
    let mut values = vec![[0.0; METRICS.len()]; variants.len()];
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        let v = &mut values;
        let ping = both_ways(variants, &order, |p| p.ping(plan))?;
        store(v, [PING_AVG, PING_P50, PING_P99], ping);
        let tcp = |streams| both_ways(variants, &order, move |p| Ok([p.tcp(plan, streams)?[0]]));
        store(v, [TCP1], tcp(1)?);
        store(v, [TCP4], tcp(4)?);
        let udp = both_ways(variants, &order, |p| p.udp_iperf3(plan))?;
        store(v, [IPERF3_SENT, IPERF3_RECEIVED, IPERF3_ETH0], udp);
        let trafgen = both_ways(variants, &order, |p| p.udp_trafgen(plan))?;
        store(v, [TRAFGEN_SENT, TRAFGEN_ETH0], trafgen);
        Ok(())
    })?;
    for (variant, m) in variants.iter().zip(&values) {
        println!(
            "  {:<14} TCP {:5.2} / {:5.2} Gbit/s; UDP 64 B: iperf3 {:4.0} kpps received, \
             {:4.0} at eth0; trafgen {:4.0} at eth0; ping {:.1} µs avg",
            variant.vms().variant,
            m[TCP1],
            m[TCP4],
            m[IPERF3_RECEIVED] / 1e3,
            m[IPERF3_ETH0] / 1e3,
            m[TRAFGEN_ETH0] / 1e3,
            m[PING_AVG],
        );
    }
    Ok(values)
}

/// Round `round` (from 1) of TCP with one stream alone, on `variants`
/// alternating as in [`measure_round`]: each variant's [Gbit/s, bytes]
/// received, the means of its two runs; prints them.
pub fn measure_tcp1_round<T: Measured>(
    variants: &[T],
    plan: &Plan,
    round: usize,
) -> anyhow::Result<Vec<[f64; 2]>> {
    let order = rotated(variants.len(), round);
    let means = tokio::task::block_in_place(|| both_ways(variants, &order, |p| p.tcp(plan, 1)))?;
    for (variant, [gbps, bytes]) in variants.iter().zip(&means) {
        println!(
            "  {:<14} TCP {gbps:5.2} Gbit/s, {:.0} MB received",
            variant.vms().variant,
            bytes / 1e6
        );
    }
    Ok(means)
}

/// A ratio of the table: `ours` / `peer`, indices into the variants.
pub struct Ratio {
    pub label: &'static str,
    pub ours: usize,
    pub peer: usize,
}

/// A target of the issue: the median ratio `ratio` (an index into the
/// ratios) of `metric` at least (more is better) or at most `bound`.
pub struct Target {
    pub what: &'static str,
    pub ratio: usize,
    pub metric: usize,
    pub bound: f64,
}

/// What a benchmark reports.
pub struct Report<'a> {
    /// Its name, and that of its JSON file under target/bench/.
    pub benchmark: &'a str,
    /// The line above the table.
    pub heading: String,
    /// The line above the targets.
    pub targets_heading: &'a str,
    pub variants: &'a [&'a str],
    pub ratios: &'a [Ratio],
    pub targets: &'a [Target],
    /// Fields added to the JSON (what was measured, the MTU...).
    pub json: serde_json::Value,
}

impl Report<'_> {
    /// Prints the medians of `rounds` and the ratios as a markdown table,
    /// and whether each target is met (a timing never fails the run);
    /// writes every round to target/bench/BENCHMARK.json.
    pub fn print(&self, plan: &Plan, rounds: &[Vec<Values>]) -> anyhow::Result<()> {
        // Per metric: each variant's median over the rounds.
        let medians: Vec<Values> = (0..self.variants.len())
            .map(|v| std::array::from_fn(|m| median(rounds.iter().map(|r| r[v][m]).collect())))
            .collect();
        // Per metric: the median over the rounds of the round's own ratio.
        let ratios: Vec<Values> = self
            .ratios
            .iter()
            .map(|ratio| {
                std::array::from_fn(|m| {
                    median(
                        rounds
                            .iter()
                            .map(|r| r[ratio.ours][m] / r[ratio.peer][m])
                            .collect(),
                    )
                })
            })
            .collect();

        let load = super::load_average();
        println!("\n{}", self.heading);
        println!(
            "(load average of the machine at the end: {} over 1, 5 and 15 minutes)\n",
            load.join(", ")
        );
        let mut header = vec!["metric".to_string()];
        header.extend(self.variants.iter().map(|v| v.to_string()));
        header.extend(self.ratios.iter().map(|r| r.label.to_string()));
        println!("| {} |", header.join(" | "));
        println!("|---|{}", "---:|".repeat(header.len() - 1));
        for (m, metric) in METRICS.iter().enumerate() {
            if metric.label.is_empty() {
                continue;
            }
            let mut row = vec![metric.label.to_string()];
            row.extend(
                medians
                    .iter()
                    .map(|v| format!("{:.*}", metric.decimals, v[m] * metric.scale)),
            );
            row.extend(ratios.iter().map(|v| format!("{:.2}×", v[m])));
            println!("| {} |", row.join(" | "));
        }

        let targets: Vec<(String, f64, bool)> = self
            .targets
            .iter()
            .map(|target| {
                let value = ratios[target.ratio][target.metric];
                let more_is_better = METRICS[target.metric].more_is_better;
                let met = if more_is_better {
                    value >= target.bound
                } else {
                    value <= target.bound
                };
                let sign = if more_is_better { "≥" } else { "≤" };
                (
                    format!(
                        "{}: {} {value:.3}× ({sign} {:.2}×)",
                        target.what, self.ratios[target.ratio].label, target.bound
                    ),
                    value,
                    met,
                )
            })
            .collect();
        println!("\n{}", self.targets_heading);
        for (target, _, met) in &targets {
            println!("  {target}: {}", if *met { "met" } else { "NOT met" });
        }

        let by_key = |values: &Values| -> serde_json::Value {
            METRICS
                .iter()
                .zip(values)
                .map(|(metric, value)| (metric.key.to_string(), json!(value)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let variants: serde_json::Map<String, serde_json::Value> = self
            .variants
            .iter()
            .enumerate()
            .map(|(v, variant)| {
                let runs: Vec<serde_json::Value> = rounds.iter().map(|r| by_key(&r[v])).collect();
                (
                    variant.to_string(),
                    json!({ "median": by_key(&medians[v]), "rounds": runs }),
                )
            })
            .collect();
        let ratio_json: serde_json::Map<String, serde_json::Value> = self
            .ratios
            .iter()
            .zip(&ratios)
            .map(|(ratio, values)| (ratio.label.to_string(), by_key(values)))
            .collect();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut document = json!({
            "benchmark": self.benchmark,
            "kernel": kernel.trim(),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load_average_at_end": load,
            "vm_mtu": VM_MTU,
            "rounds": rounds.len(),
            "tcp_seconds": plan.tcp_seconds,
            "udp_seconds": plan.udp_seconds,
            "udp_iperf3_clients": UDP_CLIENTS,
            "pings": plan.pings,
            "variants": variants,
            "ratios": ratio_json,
            "targets": targets
                .iter()
                .map(|(target, ratio, met)| json!({ "target": target, "ratio": ratio, "met": met }))
                .collect::<Vec<_>>(),
        });
        if let (Some(document), Some(extra)) = (document.as_object_mut(), self.json.as_object()) {
            document.extend(extra.clone());
        }
        super::write_file(self.benchmark, &document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
