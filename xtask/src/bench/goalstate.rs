//! `bench goalstate`: how fast one agent turns goal state into 1,000
//! netns-bound ports (veth pair, VM side in its namespace as `eth0` with
//! MAC and MTU, both ends up), against the kernel's own tooling doing the
//! same plumbing with `ip -batch`.
//!
//! - (a) all 1,000 ports in one V2 message;
//! - (b) 1,000 V2 messages of one port each, pipelined on one stream;
//! - peer: one `ip -batch` run creating the same 1,000 veth pairs.
//!
//! Each variant gets a fresh host namespace (and a fresh agent); the 1,000 VM
//! namespaces are made once, before any timing, and emptied between runs.

use std::{
    fs::File,
    os::fd::AsFd,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use alcor_proto::schema::{GoalStateOperationReply, GoalStateV2, ResourceType};
use alcor_tests::{
    Agent, AgentOptions, Netns, goalstate,
    topology::{NetnsSet, ip_batch},
};
use anyhow::{Context, anyhow, ensure};
use futures::StreamExt;
use serde_json::json;

use crate::setup;

const TAG: &str = "xbench";
const PORTS: usize = 1000;
/// Alternating rounds of every variant; the median of each is reported.
const ROUNDS: usize = 3;

/// Upper bound on any one timed run (and on waiting for its replies).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// What agents give port devices with the default 1500-byte underlay.
const PORT_MTU: u32 = 1450;

const VPC: (&str, u32, &str) = ("vpc-bench", 2001, "10.1.0.0/16");
const SUBNET: (&str, &str, &str) = ("subnet-bench", "10.1.0.0/16", "10.1.0.1");

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    super::release_binaries("goalstate", &[super::Binary::Agent])?;
    super::in_namespaces(TAG, bench)
}

/// One port of the benchmark.
struct PortSpec {
    id: String,
    device: String,
    ip: String,
    mac: String,
    netns: String,
}

fn ports(vms: &NetnsSet) -> Vec<PortSpec> {
    vms.names()
        .iter()
        .enumerate()
        .map(|(i, netns)| {
            let id = format!("{i:08x}-bench-4000-8000-{i:012x}");
            PortSpec {
                device: format!("tap{}", &id[..11]),
                id,
                ip: format!("10.1.{}.{}", i / 250, i % 250 + 2),
                mac: format!("fa:16:3e:01:{:02x}:{:02x}", i >> 8, i & 0xff),
                netns: netns.clone(),
            }
        })
        .collect()
}

fn port_state(port: &PortSpec) -> alcor_proto::schema::PortState {
    goalstate::netns_port(&port.id, VPC.0, SUBNET.0, &port.ip, &port.mac, &port.netns)
}

fn network() -> (
    Vec<alcor_proto::schema::VpcState>,
    Vec<alcor_proto::schema::SubnetState>,
) {
    (
        vec![goalstate::vpc(VPC.0, VPC.1, VPC.2)],
        vec![goalstate::subnet(SUBNET.0, VPC.0, SUBNET.1, SUBNET.2)],
    )
}

/// What one variant measured.
#[derive(Default)]
struct Measure {
    name: &'static str,
    wall: Duration,
    /// Per-port apply latencies, µs (empty when not measurable).
    latencies_us: Vec<u64>,
    /// `message_total_operation_time` of each reply: the agent's own time.
    agent_us: Vec<u64>,
    /// Each port's `network_configuration_time` (netlink plumbing) and
    /// `dataplane_programming_time` (eBPF attachment), µs.
    netlink_us: Vec<u64>,
    datapath_us: Vec<u64>,
    peak_rss_kib: Option<u64>,
}

impl Measure {
    fn ports_per_sec(&self) -> f64 {
        PORTS as f64 / self.wall.as_secs_f64()
    }

    fn percentile_us(&self, p: f64) -> Option<u64> {
        percentile(&self.latencies_us, p)
    }
}

/// Nearest-rank percentile.
fn percentile(values: &[u64], p: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

async fn bench(prefix: &str) -> anyhow::Result<()> {
    let names = (0..PORTS).map(|i| format!("{prefix}-vm{i:04}")).collect();
    let started = Instant::now();
    let vms = NetnsSet::create(names)?;
    println!(
        "created {} VM namespaces in {:.1?} (not timed)",
        vms.len(),
        started.elapsed()
    );
    let ports = ports(&vms);

    // The machine is shared and noisy: alternate the variants over a few
    // rounds and keep each one's median run.
    let mut rounds: [Vec<Measure>; 3] = Default::default();
    for round in 1..=ROUNDS {
        println!("round {round} of {ROUNDS}");
        rounds[0].push(one_message(prefix, &ports, &vms).await?);
        rounds[1].push(pipelined(prefix, &ports, &vms).await?);
        rounds[2].push(ip_batch_peer(prefix, &ports, &vms)?);
    }
    let [one_message, pipelined, ip] = rounds.map(median_run);
    report(&[one_message, pipelined], &ip)
}

/// The run with the median wall time.
fn median_run(mut runs: Vec<Measure>) -> Measure {
    runs.sort_by_key(|m| m.wall);
    runs.swap_remove(runs.len() / 2)
}

/// Starts a fresh agent in a fresh host namespace.
async fn fresh_agent(prefix: &str, tag: &str) -> anyhow::Result<(Netns, Agent)> {
    let host = Netns::new(format!("{prefix}-{tag}"))?;
    let agent = Agent::start(&host, AgentOptions::default()).await;
    Ok((host, agent))
}

async fn one_message(prefix: &str, ports: &[PortSpec], vms: &NetnsSet) -> anyhow::Result<Measure> {
    println!("(a) one V2 message with {PORTS} ports ...");
    let (host, agent) = fresh_agent(prefix, "a").await?;
    let (vpcs, subnets) = network();
    let message = goalstate::v2(vpcs, subnets, ports.iter().map(port_state).collect());
    let mut client = agent.client().await;

    let started = Instant::now();
    let reply = tokio::time::timeout(RUN_TIMEOUT, async {
        let mut replies = client
            .push_goal_states_stream(futures::stream::iter([message]))
            .await?
            .into_inner();
        replies.message().await
    })
    .await
    .map_err(|_| anyhow!("no reply within {RUN_TIMEOUT:?}"))??
    .context("the stream ended without a reply")?;
    let wall = started.elapsed();

    let port_statuses = check_reply(&reply, PORTS + 2, &agent)?;
    let latencies_us = port_statuses
        .iter()
        .map(|s| u64::from(s.network_configuration_time) + u64::from(s.dataplane_programming_time))
        .collect();
    let measure = Measure {
        name: "(a) 1 message x 1000 ports",
        wall,
        latencies_us,
        agent_us: vec![u64::from(reply.message_total_operation_time)],
        netlink_us: port_times(&port_statuses).0,
        datapath_us: port_times(&port_statuses).1,
        peak_rss_kib: super::peak_rss_kib(&agent),
    };
    verify_eth0(vms, ports)?;
    remove_ports(host, agent, vms)?;
    Ok(measure)
}

async fn pipelined(prefix: &str, ports: &[PortSpec], vms: &NetnsSet) -> anyhow::Result<Measure> {
    println!("(b) {PORTS} V2 messages of one port, pipelined on one stream ...");
    let (host, agent) = fresh_agent(prefix, "b").await?;
    let (vpcs, subnets) = network();
    let mut client = agent.client().await;
    let network = goalstate::v2(vpcs, subnets, vec![]);
    let reply = tokio::time::timeout(RUN_TIMEOUT, async {
        client
            .push_goal_states_stream(futures::stream::iter([network]))
            .await?
            .into_inner()
            .message()
            .await
    })
    .await
    .map_err(|_| anyhow!("no reply to the VPC and subnet within {RUN_TIMEOUT:?}"))??
    .context("no reply to the VPC and subnet")?;
    check_reply(&reply, 2, &agent)?;

    let messages: Vec<GoalStateV2> = ports
        .iter()
        .map(|port| goalstate::v2(vec![], vec![], vec![port_state(port)]))
        .collect();
    // When each message is handed to the transport (tonic polls the stream
    // as HTTP/2 flow control lets it send).
    let sent = Arc::new(Mutex::new(Vec::with_capacity(PORTS)));
    let sent_log = sent.clone();
    let outbound = futures::stream::iter(messages).map(move |message| {
        sent_log.lock().expect("sent log").push(Instant::now());
        message
    });

    let started = Instant::now();
    let received = tokio::time::timeout(RUN_TIMEOUT, async {
        let mut replies = client.push_goal_states_stream(outbound).await?.into_inner();
        let mut received = Vec::with_capacity(PORTS);
        while received.len() < PORTS {
            match replies.message().await? {
                Some(reply) => received.push((Instant::now(), reply)),
                None => break,
            }
        }
        Ok::<_, anyhow::Error>(received)
    })
    .await
    .map_err(|_| anyhow!("{PORTS} replies did not come within {RUN_TIMEOUT:?}"))??;
    let wall = started.elapsed();

    ensure!(
        received.len() == PORTS,
        "the stream ended after {} replies\n{}",
        received.len(),
        agent.log()
    );
    let mut port_statuses = Vec::with_capacity(PORTS);
    for (_, reply) in &received {
        port_statuses.extend(check_reply(reply, 1, &agent)?);
    }
    let sent = sent.lock().expect("sent log").clone();
    ensure!(
        sent.len() == PORTS,
        "only {} messages were sent",
        sent.len()
    );
    let latencies_us = received
        .iter()
        .zip(&sent)
        .map(|((at, _), sent)| at.duration_since(*sent).as_micros() as u64)
        .collect();
    let measure = Measure {
        name: "(b) 1000 messages x 1 port",
        wall,
        latencies_us,
        agent_us: received
            .iter()
            .map(|(_, reply)| u64::from(reply.message_total_operation_time))
            .collect(),
        netlink_us: port_times(&port_statuses).0,
        datapath_us: port_times(&port_statuses).1,
        peak_rss_kib: super::peak_rss_kib(&agent),
    };
    verify_eth0(vms, ports)?;
    remove_ports(host, agent, vms)?;
    Ok(measure)
}

/// The peer: the same veth pairs with `ip -batch` in a host namespace, the
/// VM side created in its namespace as eth0 with MAC, MTU and up, then the
/// host side up.
fn ip_batch_peer(prefix: &str, ports: &[PortSpec], vms: &NetnsSet) -> anyhow::Result<Measure> {
    println!("peer: ip -batch creating the same {PORTS} veth pairs ...");
    let host = Netns::new(format!("{prefix}-ip"))?;
    let script: String = ports
        .iter()
        .map(|p| {
            format!(
                "link add name eth0 address {mac} mtu {PORT_MTU} netns {netns} up \
                 type veth peer name {device} mtu {PORT_MTU}\nlink set {device} up\n",
                mac = p.mac,
                netns = p.netns,
                device = p.device
            )
        })
        .collect();
    let started = Instant::now();
    ip_batch(Some(host.name()), &script, false)?;
    let wall = started.elapsed();
    verify_eth0(vms, ports)?;
    remove_host(host, vms)?;
    Ok(Measure {
        name: "ip -batch (kernel tooling)",
        wall,
        ..Default::default()
    })
}

/// Checks a reply has `expected` statuses, all SUCCESS, and returns those of
/// ports.
fn check_reply<'a>(
    reply: &'a GoalStateOperationReply,
    expected: usize,
    agent: &Agent,
) -> anyhow::Result<Vec<&'a PortStatus>> {
    super::check_reply(reply, expected, agent)?;
    Ok(reply
        .operation_statuses
        .iter()
        .filter(|s| s.resource_type == ResourceType::Port as i32)
        .collect())
}

type PortStatus = alcor_proto::schema::goal_state_operation_reply::GoalStateOperationStatus;

/// (netlink, datapath) µs of each port status.
fn port_times(statuses: &[&PortStatus]) -> (Vec<u64>, Vec<u64>) {
    statuses
        .iter()
        .map(|s| {
            (
                u64::from(s.network_configuration_time),
                u64::from(s.dataplane_programming_time),
            )
        })
        .unzip()
}

/// How many of `names` have an eth0, checked from one thread that enters
/// each namespace in turn (no process per namespace).
fn count_eth0(names: &[String]) -> anyhow::Result<usize> {
    let names = names.to_vec();
    std::thread::spawn(move || -> anyhow::Result<usize> {
        let mut found = 0;
        for name in names {
            let file = File::open(format!("/var/run/netns/{name}"))?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)?;
            if nix::net::if_::if_nametoindex("eth0").is_ok() {
                found += 1;
            }
        }
        Ok(found)
    })
    .join()
    .map_err(|_| anyhow!("the checking thread panicked"))?
}

/// Every VM namespace has its eth0, and a few have the right MAC, MTU and
/// state.
fn verify_eth0(vms: &NetnsSet, ports: &[PortSpec]) -> anyhow::Result<()> {
    let found = count_eth0(vms.names())?;
    ensure!(
        found == vms.len(),
        "only {found} of {} VM namespaces have an eth0",
        vms.len()
    );
    for port in [&ports[0], &ports[ports.len() / 2], &ports[ports.len() - 1]] {
        let out = alcor_tests::netns::run(
            "ip",
            &["-n", &port.netns, "-j", "link", "show", "dev", "eth0"],
        )?;
        let link: serde_json::Value = serde_json::from_str(&out)?;
        let link = &link[0];
        ensure!(
            link["address"] == port.mac.as_str()
                && link["mtu"] == PORT_MTU
                && link["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == "UP")),
            "eth0 in {} is not as planned: {link}",
            port.netns
        );
    }
    Ok(())
}

/// Stops the agent and empties the VMs for the next run.
fn remove_ports(host: Netns, agent: Agent, vms: &NetnsSet) -> anyhow::Result<()> {
    drop(agent);
    remove_host(host, vms)
}

/// Deletes the host namespace and waits until the kernel has taken the VM
/// sides of its veths along. (Its namespace cleanup removes all the pairs
/// at once, in a fraction of a second; `ip link del` one by one waits for
/// an RCU grace period each, about 18 ms.)
fn remove_host(host: Netns, vms: &NetnsSet) -> anyhow::Result<()> {
    drop(host);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = count_eth0(vms.names())?;
        if left == 0 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{left} VM namespaces still have an eth0 a minute after their host namespace went"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fmt_us(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us >= 10_000 => format!("{:.1} ms", us as f64 / 1000.0),
        Some(us) => format!("{us} µs"),
    }
}

fn report(ours: &[Measure], ip: &Measure) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nbench goalstate: {PORTS} netns-bound ports, release build, {cores} cores\n\
         ratio = our wall time / ip -batch wall time (lower is better)\n"
    );
    println!(
        "{:<28} {:>10} {:>9} {:>11} {:>11} {:>10} {:>7}",
        "variant", "wall", "ports/s", "p50/port", "p99/port", "peak RSS", "ratio"
    );
    let mut variants = Vec::new();
    for m in ours.iter().chain([ip]) {
        let ratio = m.wall.as_secs_f64() / ip.wall.as_secs_f64();
        println!(
            "{:<28} {:>10} {:>9.0} {:>11} {:>11} {:>10} {:>6.2}x",
            m.name,
            format!("{:.3} s", m.wall.as_secs_f64()),
            m.ports_per_sec(),
            fmt_us(m.percentile_us(50.0)),
            fmt_us(m.percentile_us(99.0)),
            m.peak_rss_kib
                .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            ratio
        );
        variants.push(json!({
            "name": m.name,
            "wall_seconds": m.wall.as_secs_f64(),
            "ports_per_second": m.ports_per_sec(),
            "p50_port_latency_us": m.percentile_us(50.0),
            "p99_port_latency_us": m.percentile_us(99.0),
            "peak_rss_kib": m.peak_rss_kib,
            "ratio_to_ip_batch": ratio,
            "port_netlink_us": (!m.netlink_us.is_empty()).then(|| json!({
                "sum": m.netlink_us.iter().sum::<u64>(),
                "p50": percentile(&m.netlink_us, 50.0),
                "p99": percentile(&m.netlink_us, 99.0),
            })),
            "port_datapath_us": (!m.datapath_us.is_empty()).then(|| json!({
                "sum": m.datapath_us.iter().sum::<u64>(),
                "p50": percentile(&m.datapath_us, 50.0),
                "p99": percentile(&m.datapath_us, 99.0),
            })),
            "agent_message_time_us": (!m.agent_us.is_empty()).then(|| json!({
                "messages": m.agent_us.len(),
                "sum": m.agent_us.iter().sum::<u64>(),
                "p50": percentile(&m.agent_us, 50.0),
                "p99": percentile(&m.agent_us, 99.0),
            })),
        }));
    }
    println!(
        "\n(a) latency: the port's network_configuration_time + dataplane_programming_time in the reply\n\
         (b) latency: from the message leaving the client to its reply"
    );
    for m in ours {
        println!(
            "{}: the agent's own time (message_total_operation_time) {:.3} s over {} messages, \
             p50 {} p99 {} per message",
            m.name,
            m.agent_us.iter().sum::<u64>() as f64 / 1e6,
            m.agent_us.len(),
            fmt_us(percentile(&m.agent_us, 50.0)),
            fmt_us(percentile(&m.agent_us, 99.0)),
        );
        println!(
            "    per port: netlink p50 {} p99 {}, datapath attach p50 {} p99 {}",
            fmt_us(percentile(&m.netlink_us, 50.0)),
            fmt_us(percentile(&m.netlink_us, 99.0)),
            fmt_us(percentile(&m.datapath_us, 50.0)),
            fmt_us(percentile(&m.datapath_us, 99.0)),
        );
    }
    super::write_json(
        "goalstate",
        json!({
            "ports": PORTS,
            "port_mtu": PORT_MTU,
            "peer": "ip -batch",
            "variants": variants,
        }),
    )
}
