//! `bench fanout`: the controller (release, embedded store, on loopback)
//! against N simulated hosts, N = 10, 100 and 1,000 (`--quick`: 10 and
//! 100), all in this process on one runtime.
//!
//! Each simulated host is a stub agent: a `GoalStateProvisioner` of its own
//! on a loopback port that decodes every message of the controller's
//! stream (ids and operations of every resource; the rest of each
//! configuration is walked and skipped), counts its bytes (the encoded
//! message), answers SUCCESS for each resource as an agent does, and keeps
//! what its host has: its ports and its neighbors. It registers with
//! `AgentRegistry.Heartbeat` (its own host id, underlay address in
//! 198.18.0.0/15 and MAC, endpoint `http://127.0.0.1:PORT`) and heartbeats
//! every 5 s.
//!
//! For each N, on a controller of its own:
//! (a) a VPC with one port bound to each host, converged; then one more
//!     port: the time from the API call until every host has acknowledged
//!     it (as a neighbor, or as its port on the host it is bound to), and
//!     the bytes pushed to all hosts for it;
//! (b) a second VPC of 10,000 ports, created in bulk requests with
//!     `binding:host_id` round-robin over the hosts: the time from the
//!     first request until every host has acknowledged its whole state (its
//!     ports, and every other port of both VPCs as a neighbor), the bytes
//!     pushed, the controller's CPU time and peak RSS;
//! (c) one more port in that VPC: as (a), with 10,000-port neighbor tables.
//!
//! Bounded: a phase that does not converge within its deadline, or a
//! controller whose RSS passes `FANOUT_RSS_LIMIT_MIB` (default 8 GiB), is
//! reported as such and the next N runs.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use alcor_proto::{
    codec::{ReadMessage, ReplyCodec},
    registry::{AgentHeartbeat, agent_registry_client::AgentRegistryClient},
    schema::{
        GoalStateOperationReply, OperationStatus, OperationType, ResourceType,
        goal_state_operation_reply::GoalStateOperationStatus,
    },
};
use alcor_tests::controller::{Controller, StoreKind, request};
use anyhow::{Context, ensure};
use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
use prost::{Message, bytes::Buf};
use serde_json::{Value, json};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Response, Status, Streaming,
    body::Body,
    codec::DecodeBuf,
    codegen::{Service, http},
    server::{Grpc, NamedService, StreamingService},
    transport::{Channel, Server},
};

use super::{cpu_seconds_of, load_average, process_status_kib, write_json};
use crate::util;

const HOST_COUNTS: [usize; 3] = [10, 100, 1_000];
/// The ports of (b)'s VPC (`FANOUT_VPC_PORTS` to try another size).
const VPC_PORTS: usize = 10_000;

fn vpc_ports() -> usize {
    std::env::var("FANOUT_VPC_PORTS")
        .ok()
        .and_then(|ports| ports.parse().ok())
        .unwrap_or(VPC_PORTS)
}
/// Ports per bulk create.
const BULK: usize = 1_000;
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// The names of the one more port of (a) and of (c): how the stubs know
/// them.
const PROBES: [&str; 2] = ["fanout-probe", "fanout-probe-big"];
const CONVERGE_DEADLINE: Duration = Duration::from_secs(120);
const PROBE_DEADLINE: Duration = Duration::from_secs(60);
const BIG_DEADLINE: Duration = Duration::from_secs(300);
const DEFAULT_RSS_LIMIT_MIB: u64 = 8 << 10;

pub fn run(quick: bool) -> anyhow::Result<()> {
    // The stub agents are this process: unoptimized, they would measure
    // themselves (prost decodes some 2.5 GB at 1,000 hosts).
    if cfg!(debug_assertions) {
        println!("bench fanout: the stub agents run in xtask: running it as a release build");
        let mut command = util::cargo();
        command.args(["run", "--quiet", "--release", "--package", "xtask", "--"]);
        command.args(["bench", "fanout"]);
        if quick {
            command.arg("--quick");
        }
        return util::run_status(&mut command);
    }
    super::release_binaries("fanout", &[super::Binary::Controller])?;
    // FANOUT_HOSTS=1000 (or 10,100) runs those counts only.
    let chosen: Option<Vec<usize>> = std::env::var("FANOUT_HOSTS").ok().map(|counts| {
        counts
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .collect()
    });
    let counts: &[usize] = match &chosen {
        Some(counts) => counts,
        None if quick => &HOST_COUNTS[..2],
        None => &HOST_COUNTS,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    for &hosts in counts {
        println!("bench fanout: {hosts} hosts");
        let result = runtime.block_on(measure(hosts))?;
        println!("  {}", result.summary());
        results.push(result);
    }
    drop(runtime);
    print(&results);
    let document = json!({
        "vpc_ports": vpc_ports(),
        "load_average": load_average(),
        "controller": std::env::var("ALCOR_BIN_DIR").ok(),
        "runs": results.iter().map(Run::json).collect::<Vec<_>>(),
    });
    write_json("fanout", document)
}

/// What one N measured.
#[derive(Default)]
struct Run {
    hosts: usize,
    /// (a): N ports, one a host, until every host has all of them.
    small_converge: Outcome,
    /// (a): one more port.
    probe: Outcome,
    /// (c): one more port in (b)'s VPC.
    big_probe: Outcome,
    /// (b): 10,000 ports from nothing.
    big: Outcome,
    /// (b): how long the bulk creates took (API answers).
    big_api_seconds: Option<f64>,
    /// Controller CPU seconds over (b).
    big_cpu_seconds: Option<f64>,
    /// This process's (the stub agents') CPU seconds over (b).
    big_stub_cpu_seconds: Option<f64>,
    /// Controller peak RSS (VmHWM) at the end of (b), KiB.
    peak_rss_kib: Option<u64>,
    /// Controller RSS 2 s after (b) converged, KiB.
    settled_rss_kib: Option<u64>,
}

/// A phase: how long until every host had it, the bytes and messages
/// pushed meanwhile; or why it did not get there.
#[derive(Default)]
struct Outcome {
    seconds: Option<f64>,
    bytes: u64,
    messages: u64,
    /// Hosts that got there, when not all did.
    failure: Option<String>,
}

impl Outcome {
    fn time(&self) -> String {
        match (self.seconds, &self.failure) {
            (Some(seconds), _) if seconds < 1.0 => format!("{:.0} ms", seconds * 1e3),
            (Some(seconds), _) => format!("{seconds:.2} s"),
            (None, Some(failure)) => failure.clone(),
            (None, None) => "–".into(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "bytes": self.bytes,
            "messages": self.messages,
            "failure": self.failure,
        })
    }
}

impl Run {
    fn summary(&self) -> String {
        format!(
            "(a) converge {} / one port {} ({}); (b) {} ({}, API {}, CPU {}, peak RSS {}, \
             settled RSS {}); (c) one port {} ({})",
            self.small_converge.time(),
            self.probe.time(),
            bytes(self.probe.bytes),
            self.big.time(),
            bytes(self.big.bytes),
            self.big_api_seconds
                .map_or("–".into(), |s| format!("{s:.2} s")),
            self.big_cpu_seconds
                .map_or("–".into(), |s| format!("{s:.1} s")),
            self.peak_rss_kib.map_or("–".into(), |k| bytes(k * 1024)),
            self.settled_rss_kib.map_or("–".into(), |k| bytes(k * 1024)),
            self.big_probe.time(),
            bytes(self.big_probe.bytes),
        )
    }

    fn json(&self) -> Value {
        json!({
            "hosts": self.hosts,
            "a_converge": self.small_converge.json(),
            "a_one_port": self.probe.json(),
            "c_one_port_in_big_vpc": self.big_probe.json(),
            "b_converge": self.big.json(),
            "b_api_seconds": self.big_api_seconds,
            "b_controller_cpu_seconds": self.big_cpu_seconds,
            "b_stub_agents_cpu_seconds": self.big_stub_cpu_seconds,
            "controller_peak_rss_kib": self.peak_rss_kib,
            "controller_settled_rss_kib": self.settled_rss_kib,
        })
    }
}

fn bytes(count: u64) -> String {
    match count {
        0..1_000_000 => format!("{:.1} kB", count as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", count as f64 / 1e6),
        _ => format!("{:.2} GB", count as f64 / 1e9),
    }
}

fn print(results: &[Run]) {
    let vpc_ports = vpc_ports();
    println!(
        "\n| hosts | (a) N ports converge | (a) +1 port: all hosts have it | (a) bytes | \
         (b) {vpc_ports} ports: all hosts converged | (b) API | (b) bytes | (b) controller CPU \
         | (b) stub agents' CPU | controller peak RSS | (c) +1 port in the {vpc_ports}: all \
         hosts have it | (c) bytes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            run.hosts,
            run.small_converge.time(),
            run.probe.time(),
            bytes(run.probe.bytes),
            run.big.time(),
            run.big_api_seconds
                .map_or("–".into(), |s| format!("{s:.2} s")),
            bytes(run.big.bytes),
            run.big_cpu_seconds
                .map_or("–".into(), |s| format!("{s:.1} s")),
            run.big_stub_cpu_seconds
                .map_or("–".into(), |s| format!("{s:.1} s")),
            run.peak_rss_kib.map_or("–".into(), |k| bytes(k * 1024)),
            run.big_probe.time(),
            bytes(run.big_probe.bytes),
        );
    }
    println!(
        "\ntargets at 1,000 hosts: (a) ≤ 1 s, (b) ≤ 10 s ({} neighbor entries in all)",
        VPC_PORTS * 1_000
    );
}

/// One N: a controller of its own, N stubs, (a), (b) and (c).
async fn measure(hosts: usize) -> anyhow::Result<Run> {
    let controller = Controller::start(StoreKind::Embedded, &["--log-format", "json"])?;
    let pid = controller.pid().context("the controller's pid")?;
    let fleet = Fleet::start(hosts).await?;
    let heartbeats = tokio::spawn(fleet.clone().heartbeat(controller.grpc_endpoint()));
    let outcome = async {
        fleet.registered.notified().await;
        let vpc_ports = vpc_ports();
        let mut run = Run {
            hosts,
            ..Run::default()
        };
        let listen = controller.listen();
        let watch = Watch::new(pid);

        // (a): one port a host, converged.
        let small = network(listen, "fanout-a", "10.1.0.0/16").await?;
        let ports: Vec<usize> = (0..hosts).collect();
        let mut expected: Vec<(usize, usize)> = vec![(1, hosts - 1); hosts];
        fleet.expect(&expected);
        let mark = fleet.counters();
        let start = Instant::now();
        create_ports(listen, &small, &fleet, &ports).await?;
        run.small_converge = fleet
            .wait(start, mark, CONVERGE_DEADLINE, &watch, |v| v.complete_at)
            .await;
        if run.small_converge.failure.is_some() {
            return Ok(run);
        }

        // (a): one more port, on host 0.
        run.probe = one_more_port(listen, &small, &fleet, &watch, 0).await?;
        if run.probe.failure.is_some() {
            return Ok(run);
        }

        // (b): 10,000 ports round-robin, from nothing. Each host ends with
        // its ports of both VPCs (host 0 has the probe too) and every other
        // port of both as a neighbor.
        for (n, (ports, neighbors)) in expected.iter_mut().enumerate() {
            let small = 1 + usize::from(n == 0);
            let big = vpc_ports / hosts + usize::from(n < vpc_ports % hosts);
            *ports = small + big;
            *neighbors = (hosts + 1 - small) + (vpc_ports - big);
        }
        let big = network(listen, "fanout-b", "10.128.0.0/12").await?;
        fleet.expect(&expected);
        let ports: Vec<usize> = (0..vpc_ports).map(|n| n % hosts).collect();
        let cpu = cpu_seconds_of(pid);
        let stub_cpu = cpu_seconds_of(std::process::id());
        let mark = fleet.counters();
        let start = Instant::now();
        let created = async {
            create_ports(listen, &big, &fleet, &ports).await?;
            anyhow::Ok(start.elapsed())
        };
        let (created, outcome) = tokio::join!(
            created,
            fleet.wait(start, mark, BIG_DEADLINE, &watch, |v| v.complete_at)
        );
        run.big = outcome;
        run.big_api_seconds = Some(created?.as_secs_f64());
        run.big_cpu_seconds = cpu
            .zip(cpu_seconds_of(pid))
            .map(|(before, after)| after - before);
        run.big_stub_cpu_seconds = stub_cpu
            .zip(cpu_seconds_of(std::process::id()))
            .map(|(before, after)| after - before);
        run.peak_rss_kib = process_status_kib(pid, "VmHWM");
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.settled_rss_kib = process_status_kib(pid, "VmRSS");
        if run.big.failure.is_some() {
            return Ok(run);
        }
        fleet.check(&expected)?;

        // (c): one more port in that VPC, on host 0.
        run.big_probe = one_more_port(listen, &big, &fleet, &watch, 1).await?;
        anyhow::Ok(run)
    }
    .await;
    heartbeats.abort();
    fleet.stop();
    outcome.map_err(|error| {
        anyhow::anyhow!(
            "{hosts} hosts: {error:#}\nthe controller's log ends:\n{}",
            tail(&controller.log())
        )
    })
}

/// Creates one more port in `network`, on host 0, named `PROBES[probe]`:
/// the time until every host has it, and the bytes and messages pushed
/// for it (within a second after).
async fn one_more_port(
    listen: SocketAddr,
    network: &Network,
    fleet: &Fleet,
    watch: &Watch,
    probe: usize,
) -> anyhow::Result<Outcome> {
    let mark = fleet.counters();
    let start = Instant::now();
    let body = json!({"port": {
        "network_id": network.network, "name": PROBES[probe],
        "binding:host_id": fleet.stubs[0].host_id,
    }});
    let (status, answer) = blocking_request(listen, "POST", "/v2.0/ports", body).await?;
    ensure!(status == 201, "port create: {answer}");
    let mut outcome = fleet
        .wait(start, mark, PROBE_DEADLINE, watch, |v| v.probes[probe])
        .await;
    // Whatever else that change sends comes within a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    (outcome.bytes, outcome.messages) = fleet.counters_since(mark);
    Ok(outcome)
}

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The controller's process, watched while a phase waits.
struct Watch {
    pid: u32,
    rss_limit_kib: u64,
}

impl Watch {
    fn new(pid: u32) -> Watch {
        let mib = std::env::var("FANOUT_RSS_LIMIT_MIB")
            .ok()
            .and_then(|limit| limit.parse().ok())
            .unwrap_or(DEFAULT_RSS_LIMIT_MIB);
        Watch {
            pid,
            rss_limit_kib: mib << 10,
        }
    }

    /// Why the phase cannot go on: the controller is gone, or too big
    /// (then it is killed, before it takes the machine's memory).
    fn trouble(&self) -> Option<String> {
        let Some(rss) = process_status_kib(self.pid, "VmRSS") else {
            return Some("the controller exited".into());
        };
        if rss > self.rss_limit_kib {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Some(format!(
                "controller RSS over {} (FANOUT_RSS_LIMIT_MIB)",
                bytes(self.rss_limit_kib * 1024)
            ));
        }
        None
    }
}

/// A network with one subnet.
struct Network {
    network: String,
}

async fn network(listen: SocketAddr, name: &str, cidr: &str) -> anyhow::Result<Network> {
    let body = json!({"network": {"name": name}});
    let (status, network) = blocking_request(listen, "POST", "/v2.0/networks", body).await?;
    ensure!(status == 201, "network create: {network}");
    let id = network["network"]["id"]
        .as_str()
        .context("a network id")?
        .to_string();
    let subnet = json!({"subnet": {"network_id": id, "cidr": cidr, "ip_version": 4}});
    let (status, body) = blocking_request(listen, "POST", "/v2.0/subnets", subnet).await?;
    ensure!(status == 201, "subnet create: {body}");
    Ok(Network { network: id })
}

/// Creates a port on the host of each index of `hosts`, in bulk requests.
async fn create_ports(
    listen: SocketAddr,
    network: &Network,
    fleet: &Fleet,
    hosts: &[usize],
) -> anyhow::Result<()> {
    for chunk in hosts.chunks(BULK) {
        let ports: Vec<Value> = chunk
            .iter()
            .map(|&host| {
                json!({
                    "network_id": network.network,
                    "binding:host_id": fleet.stubs[host].host_id,
                })
            })
            .collect();
        let (status, body) =
            blocking_request(listen, "POST", "/v2.0/ports", json!({"ports": ports})).await?;
        ensure!(
            status == 201,
            "bulk port create: {status} {}",
            body["NeutronError"]
        );
    }
    Ok(())
}

async fn blocking_request(
    listen: SocketAddr,
    method: &'static str,
    path: &'static str,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    tokio::task::spawn_blocking(move || request(listen, method, path, Some(&body))).await?
}

/// The simulated hosts.
#[derive(Clone)]
struct Fleet {
    stubs: Arc<Vec<Arc<Stub>>>,
    /// Told once every host has registered.
    registered: Arc<tokio::sync::Notify>,
    servers: Arc<Vec<tokio::task::JoinHandle<()>>>,
}

impl Fleet {
    async fn start(hosts: usize) -> anyhow::Result<Fleet> {
        // Resource ids, numbered: the hosts keep sets of numbers.
        let ids = Arc::new(Mutex::new(HashMap::new()));
        let mut stubs = Vec::new();
        let mut servers = Vec::new();
        for n in 0..hosts {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            // 198.18.0.0/15 from 198.18.0.1 on.
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + n as u32);
            let [_, _, high, low] = (n as u32).to_be_bytes();
            let stub = Arc::new(Stub {
                host_id: format!("fanout-host-{n:04}"),
                underlay_ip: ip.to_string(),
                underlay_mac: format!("02:00:00:00:{high:02x}:{low:02x}"),
                endpoint: format!("http://127.0.0.1:{port}"),
                ids: ids.clone(),
                bytes: AtomicU64::new(0),
                messages: AtomicU64::new(0),
                view: Mutex::new(View::default()),
            });
            let route = StubRoute(stub.clone());
            servers.push(tokio::spawn(async move {
                let served = Server::builder()
                    .add_service(route)
                    .serve_with_incoming(TcpListenerStream::new(listener))
                    .await;
                if let Err(error) = served {
                    eprintln!("a stub agent stopped serving: {error}");
                }
            }));
            stubs.push(stub);
        }
        Ok(Fleet {
            stubs: Arc::new(stubs),
            registered: Arc::new(tokio::sync::Notify::new()),
            servers: Arc::new(servers),
        })
    }

    fn stop(&self) {
        for server in self.servers.iter() {
            server.abort();
        }
    }

    /// Registers every host, then heartbeats each every 5 s (spread over
    /// the interval), until aborted.
    async fn heartbeat(self, endpoint: String) {
        let registered = async {
            let channel = Channel::from_shared(endpoint)?.connect().await?;
            let stubs: Vec<Arc<Stub>> = self.stubs.iter().cloned().collect();
            let mut first = futures::stream::iter(stubs)
                .map(|stub| beat(channel.clone(), stub, true))
                .buffer_unordered(32);
            while let Some(answer) = first.next().await {
                answer.context("registering a stub agent")?;
            }
            drop(first);
            anyhow::Ok(channel)
        };
        let channel = match registered.await {
            Ok(channel) => channel,
            Err(error) => {
                eprintln!("bench fanout: {error:#}");
                return;
            }
        };
        self.registered.notify_one();
        let pause = HEARTBEAT_INTERVAL / self.stubs.len().max(1) as u32;
        loop {
            for stub in self.stubs.iter() {
                tokio::time::sleep(pause).await;
                if let Err(status) = beat(channel.clone(), stub.clone(), false).await {
                    eprintln!("a heartbeat failed: {}", status.message());
                }
            }
        }
    }

    /// Sets what each host should end up with: (its ports, its
    /// neighbors), counted; clears what the last phase recorded.
    fn expect(&self, expected: &[(usize, usize)]) {
        for (stub, &(ports, neighbors)) in self.stubs.iter().zip(expected) {
            let mut view = stub.lock();
            view.expected = Some((ports, neighbors));
            view.complete_at = None;
            view.note_completion();
        }
    }

    /// Bytes and messages pushed to all hosts so far.
    fn counters(&self) -> (u64, u64) {
        self.stubs.iter().fold((0, 0), |(bytes, messages), stub| {
            (
                bytes + stub.bytes.load(Ordering::Relaxed),
                messages + stub.messages.load(Ordering::Relaxed),
            )
        })
    }

    fn counters_since(&self, (bytes, messages): (u64, u64)) -> (u64, u64) {
        let (now_bytes, now_messages) = self.counters();
        (now_bytes - bytes, now_messages - messages)
    }

    /// Waits until every host has `done` (an instant it recorded), for at
    /// most `deadline`: the time from `start` to the last of them, the
    /// bytes and messages since `mark`.
    async fn wait(
        &self,
        start: Instant,
        mark: (u64, u64),
        deadline: Duration,
        watch: &Watch,
        done: impl Fn(&View) -> Option<Instant>,
    ) -> Outcome {
        let mut last_watch = Instant::now();
        loop {
            let times: Vec<Option<Instant>> = self.stubs.iter().map(|s| done(&s.lock())).collect();
            let (bytes, messages) = self.counters_since(mark);
            let reached = times.iter().flatten().count();
            if reached == times.len() {
                let last = times.iter().flatten().max().copied().unwrap_or(start);
                return Outcome {
                    seconds: Some(last.saturating_duration_since(start).as_secs_f64()),
                    bytes,
                    messages,
                    failure: None,
                };
            }
            let trouble = if start.elapsed() > deadline {
                Some(format!("over {} s", deadline.as_secs()))
            } else if last_watch.elapsed() > Duration::from_millis(100) {
                last_watch = Instant::now();
                watch.trouble()
            } else {
                None
            };
            if let Some(trouble) = trouble {
                return Outcome {
                    seconds: None,
                    bytes,
                    messages,
                    failure: Some(format!(
                        "{trouble} ({reached}/{} hosts, after {:.1} s)",
                        times.len(),
                        start.elapsed().as_secs_f64()
                    )),
                };
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Checks that the hosts have exactly what they should: the counts,
    /// and each port its host's and everyone else's neighbor.
    fn check(&self, expected: &[(usize, usize)]) -> anyhow::Result<()> {
        let ports: Vec<(u32, usize)> = self
            .stubs
            .iter()
            .enumerate()
            .flat_map(|(n, stub)| {
                let view = stub.lock();
                view.ports
                    .members()
                    .map(move |id| (id, n))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (n, stub) in self.stubs.iter().enumerate() {
            let view = stub.lock();
            let counts = (view.ports.count, view.neighbors.count);
            ensure!(
                counts == expected[n],
                "{} has {counts:?} (ports, neighbors), not {:?}",
                stub.host_id,
                expected[n]
            );
            for &(id, owner) in &ports {
                ensure!(
                    (owner == n) != view.neighbors.contains(id),
                    "{}: port #{id} of host {owner} is wrong as a neighbor",
                    stub.host_id
                );
            }
        }
        Ok(())
    }
}

/// One heartbeat of `stub`'s agent.
async fn beat(channel: Channel, stub: Arc<Stub>, started: bool) -> Result<(), Status> {
    let heartbeat = AgentHeartbeat {
        host_id: stub.host_id.clone(),
        underlay_ip: stub.underlay_ip.clone(),
        underlay_mac: stub.underlay_mac.clone(),
        goal_state_endpoint: stub.endpoint.clone(),
        agent_version: "fanout-stub".into(),
        started,
        ..Default::default()
    };
    AgentRegistryClient::new(channel)
        .heartbeat(heartbeat)
        .await?;
    Ok(())
}

/// One simulated host.
struct Stub {
    host_id: String,
    underlay_ip: String,
    underlay_mac: String,
    endpoint: String,
    ids: Arc<Mutex<HashMap<String, u32>>>,
    bytes: AtomicU64,
    messages: AtomicU64,
    view: Mutex<View>,
}

/// What a host has, as it acknowledged it.
#[derive(Default)]
struct View {
    ports: Bits,
    neighbors: Bits,
    /// (ports, neighbors) it should end up with.
    expected: Option<(usize, usize)>,
    /// When it first had as many as expected.
    complete_at: Option<Instant>,
    /// When it first had each probe port (as a neighbor or its own).
    probes: [Option<Instant>; 2],
}

impl View {
    fn note_completion(&mut self) {
        if self.complete_at.is_none()
            && self.expected == Some((self.ports.count, self.neighbors.count))
        {
            self.complete_at = Some(Instant::now());
        }
    }
}

/// A set of numbers.
#[derive(Default)]
struct Bits {
    words: Vec<u64>,
    count: usize,
}

impl Bits {
    fn set(&mut self, n: u32, on: bool) {
        let (word, bit) = (n as usize / 64, 1u64 << (n % 64));
        if word >= self.words.len() {
            if !on {
                return;
            }
            self.words.resize(word + 1, 0);
        }
        let was = self.words[word] & bit != 0;
        if on && !was {
            self.words[word] |= bit;
            self.count += 1;
        } else if !on && was {
            self.words[word] &= !bit;
            self.count -= 1;
        }
    }

    fn contains(&self, n: u32) -> bool {
        self.words
            .get(n as usize / 64)
            .is_some_and(|word| word & (1 << (n % 64)) != 0)
    }

    fn members(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64)
                .filter(move |bit| word & (1 << bit) != 0)
                .map(move |bit| (w * 64 + bit) as u32)
        })
    }
}

impl Stub {
    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a message in as an agent that applies everything would: one
    /// SUCCESS a resource.
    fn take(&self, Received { size, message }: Received) -> GoalStateOperationReply {
        self.bytes.fetch_add(size as u64, Ordering::Relaxed);
        self.messages.fetch_add(1, Ordering::Relaxed);
        let mut statuses = Vec::new();
        let mut status = |id: String, kind: ResourceType, operation: i32| {
            statuses.push(GoalStateOperationStatus {
                resource_id: id,
                resource_type: kind as i32,
                operation_type: operation,
                operation_status: OperationStatus::Success as i32,
                ..Default::default()
            });
        };
        let LiteGoalState {
            vpc_states,
            subnet_states,
            port_states,
            dhcp_states,
            neighbor_states,
            security_group_states,
            router_states,
            gateway_states,
        } = message;
        for (states, kind) in [
            (vpc_states, ResourceType::Vpc),
            (subnet_states, ResourceType::Subnet),
            (dhcp_states, ResourceType::Dhcp),
            (security_group_states, ResourceType::Securitygroup),
            (router_states, ResourceType::Router),
            (gateway_states, ResourceType::Gateway),
        ] {
            for (id, state) in states {
                status(id, kind, state.operation_type);
            }
        }
        let mut changes = Vec::new();
        {
            let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            for (states, kind) in [
                (port_states, ResourceType::Port),
                (neighbor_states, ResourceType::Neighbor),
            ] {
                for (id, state) in states {
                    let next = ids.len() as u32;
                    let number = *ids.entry(id.clone()).or_insert(next);
                    let probe = state
                        .configuration
                        .and_then(|c| PROBES.iter().position(|name| c.name == *name));
                    let present = state.operation_type != OperationType::Delete as i32;
                    changes.push((kind, number, present, probe));
                    status(id, kind, state.operation_type);
                }
            }
        }
        let now = Instant::now();
        let mut view = self.lock();
        for (kind, number, present, probe) in changes {
            match kind {
                ResourceType::Port => view.ports.set(number, present),
                _ => view.neighbors.set(number, present),
            }
            if let Some(probe) = probe
                && present
                && view.probes[probe].is_none()
            {
                view.probes[probe] = Some(now);
            }
        }
        view.note_completion();
        GoalStateOperationReply {
            format_version: 1,
            operation_statuses: statuses,
            message_total_operation_time: 0,
        }
    }
}

/// A `GoalStateV2` as the stub reads it: every resource's id (the map
/// key) and operation; of ports and neighbors the name too (fields 3 and
/// 6 of their configurations). prost walks and skips the other fields.
#[derive(Clone, PartialEq, Message)]
struct LiteGoalState {
    #[prost(map = "string, message", tag = "3")]
    vpc_states: HashMap<String, LiteState>,
    #[prost(map = "string, message", tag = "4")]
    subnet_states: HashMap<String, LiteState>,
    #[prost(map = "string, message", tag = "5")]
    port_states: HashMap<String, LiteNamedState>,
    #[prost(map = "string, message", tag = "6")]
    dhcp_states: HashMap<String, LiteState>,
    #[prost(map = "string, message", tag = "7")]
    neighbor_states: HashMap<String, LiteNamedState>,
    #[prost(map = "string, message", tag = "8")]
    security_group_states: HashMap<String, LiteState>,
    #[prost(map = "string, message", tag = "9")]
    router_states: HashMap<String, LiteState>,
    #[prost(map = "string, message", tag = "10")]
    gateway_states: HashMap<String, LiteState>,
}

/// `XxxState`: 1 operation_type, 2 configuration (its 3 is the id).
#[derive(Clone, PartialEq, Message)]
struct LiteState {
    #[prost(int32, tag = "1")]
    operation_type: i32,
    #[prost(message, optional, tag = "2")]
    configuration: Option<LiteConfiguration>,
}

#[derive(Clone, PartialEq, Message)]
struct LiteConfiguration {
    #[prost(string, tag = "3")]
    id: String,
}

#[derive(Clone, PartialEq, Message)]
struct LiteNamedState {
    #[prost(int32, tag = "1")]
    operation_type: i32,
    #[prost(message, optional, tag = "2")]
    configuration: Option<LiteNamedConfiguration>,
}

#[derive(Clone, PartialEq, Message)]
struct LiteNamedConfiguration {
    #[prost(string, tag = "3")]
    id: String,
    #[prost(string, tag = "6")]
    name: String,
}

/// The path of the stream method.
const STREAM_PATH: &str = "/alcor.schema.GoalStateProvisioner/PushGoalStatesStream";

/// A stub's GoalStateProvisioner: the stream method only.
#[derive(Clone)]
struct StubRoute(Arc<Stub>);

impl NamedService for StubRoute {
    const NAME: &'static str = "alcor.schema.GoalStateProvisioner";
}

impl Service<http::Request<Body>> for StubRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != STREAM_PATH {
            let status = Status::unimplemented("a stub agent serves the stream only");
            return Box::pin(async move { Ok(status.into_http()) });
        }
        let method = StreamMethod(self.0.clone());
        Box::pin(async move {
            let mut grpc = Grpc::new(ReplyCodec::<Received>::default())
                .apply_max_message_size_config(Some(usize::MAX), None);
            Ok(grpc.streaming(method, request).await)
        })
    }
}

struct StreamMethod(Arc<Stub>);

impl StreamingService<Received> for StreamMethod {
    type Response = GoalStateOperationReply;
    type ResponseStream = BoxStream<'static, Result<GoalStateOperationReply, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Received>>) -> Self::Future {
        let stub = self.0.clone();
        Box::pin(async move {
            let replies = request
                .into_inner()
                .map(move |message| message.map(|message| stub.take(message)));
            Ok(Response::new(replies.boxed()))
        })
    }
}

/// A V2 message as the stub reads it, with its size.
struct Received {
    size: usize,
    message: LiteGoalState,
}

impl ReadMessage for Received {
    type Error = prost::DecodeError;

    fn read(message: &mut DecodeBuf<'_>) -> Result<Received, prost::DecodeError> {
        let size = message.remaining();
        let message = LiteGoalState::decode(message)?;
        Ok(Received { size, message })
    }
}

#[cfg(test)]
mod tests {
    use alcor_proto::schema::{
        GoalStateV2, NeighborConfiguration, NeighborState, PortConfiguration, PortState,
    };

    use super::*;

    #[test]
    fn the_lite_message_reads_ids_operations_and_names() {
        let message = GoalStateV2 {
            format_version: 1,
            port_states: [(
                "p1".to_string(),
                PortState {
                    operation_type: OperationType::Create as i32,
                    configuration: Some(PortConfiguration {
                        id: "p1".into(),
                        name: PROBES[0].into(),
                        mac_address: "fa:16:3e:00:00:01".into(),
                        ..Default::default()
                    }),
                },
            )]
            .into(),
            neighbor_states: [(
                "n1".to_string(),
                NeighborState {
                    operation_type: OperationType::Delete as i32,
                    configuration: Some(NeighborConfiguration {
                        id: "n1".into(),
                        host_ip_address: "198.18.0.2".into(),
                        ..Default::default()
                    }),
                },
            )]
            .into(),
            ..Default::default()
        };
        let lite = LiteGoalState::decode(message.encode_to_vec().as_slice()).unwrap();
        let port = &lite.port_states["p1"];
        assert_eq!(port.operation_type, OperationType::Create as i32);
        assert_eq!(port.configuration.as_ref().unwrap().name, PROBES[0]);
        assert_eq!(
            lite.neighbor_states["n1"].operation_type,
            OperationType::Delete as i32
        );
    }

    #[test]
    fn bits_count_what_they_hold() {
        let mut bits = Bits::default();
        bits.set(3, true);
        bits.set(200, true);
        bits.set(3, true);
        bits.set(500, false);
        assert_eq!(bits.count, 2);
        assert!(bits.contains(200) && !bits.contains(4));
        bits.set(3, false);
        assert_eq!(bits.members().collect::<Vec<_>>(), [200]);
    }
}
