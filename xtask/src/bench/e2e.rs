//! `bench e2e`: VMs from the first API call to a lease and a ping across
//! hosts, the way the system we follow measured it against Neutron (150
//! VMs: Alcor 5.6 s, Neutron 20 s; 2,400 VMs: Alcor 35 s on average).
//!
//! The topology: a fabric, `--hosts` host namespaces (198.18.0.N) each
//! with a release `alcor-agent` registered with the controller
//! (`--controller`, `--host-id hN`), and a `ctl` namespace (198.18.0.100)
//! with the release `alcor-controller` on its embedded store. The VMs are
//! namespaces, made before the clock starts (with IPv6 off): what is timed
//! is the control plane and the datapath, not `ip netns add`.
//!
//! Timed from the first API call, every client inside the `ctl` namespace:
//! 1. API: the network, a subnet big enough, and the ports, each bound to
//!    a host round-robin (`binding:host_id`) and to its VM's namespace
//!    (`binding:profile {"netns": VM}`), as bulk creates sent concurrently;
//! 2. agents: every host's agent has each of its ports plumbed and ready
//!    and every other host's port as a neighbor (its control socket says);
//! 3. ACTIVE: every port `ACTIVE` in `GET /v2.0/ports` (the agents' replies
//!    reached the store);
//! 4. DHCP: every VM holds its lease; by default from the benchmark's own
//!    client (DISCOVER, OFFER, REQUEST, ACK over a packet socket in the VM,
//!    then the address set on `eth0`), because a stock client's processes
//!    cost more than the whole control plane here: busybox udhcpc with
//!    Debian's script is timed over every VM too, afterwards, and
//!    `--udhcpc` puts it in the timed phase instead;
//! 5. first ping: a VM on host 1 pings one on host 2 (then a sample of
//!    pairs across hosts, not timed).
//!
//! Then everything is deleted (ports concurrently, the subnet, the
//! network) and timed until no host has a port left and no VM an `eth0`.
//!
//! Beside the times: the controller's and the agents' CPU time (utime and
//! stime from /proc) and peak RSS (VmHWM), the agents' own account of each
//! goal-state message they applied (their debug log), and the controller's
//! CPU while nothing changes (it recomputes every host's state every 2 s).

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::{Ipv4Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use alcor_proto::control::{GetDhcpCountersRequest, GetStatusRequest, ListRequest};
use alcor_tests::{
    Agent,
    controller::{Controller, StoreKind},
    dhcp::{output_within, require},
    topology::{NetnsSet, Topology},
    traffic::{self, Ping},
};
use anyhow::{Context, anyhow, bail, ensure};
use nix::libc;
use serde_json::{Value, json};

use super::{Args, http::Client};
use crate::setup;

const TAG: &str = "xbe2e";
/// The runs without `--vms`; `--quick` makes only the first.
const SIZES: [usize; 2] = [150, 2_400];
const DEFAULT_HOSTS: usize = 3;
const CONTROLLER_ADDRESS: &str = "198.18.0.100/24";
/// Ports per bulk create, and how many bulk creates are in flight at once.
const CHUNK: usize = 100;
const CREATE_CLIENTS: usize = 4;
/// Concurrent port deletes.
const DELETE_CLIENTS: usize = 16;
/// Threads of the in-process DHCP client (each goes from VM to VM).
const LITE_WORKERS: usize = 8;
/// DISCOVERs (and REQUESTs) the in-process client sends, a second apart.
const LITE_TRIES: usize = 10;
/// udhcpc processes at once.
const UDHCPC_PARALLEL: usize = 8;
/// How often convergence is checked.
const POLL: Duration = Duration::from_millis(50);
/// The bound on every phase.
const PHASE_LIMIT: Duration = Duration::from_secs(300);
/// How long the controller's CPU is watched while nothing changes.
const IDLE_WINDOW: Duration = Duration::from_secs(4);
/// Pairs of VMs on different hosts pinged after the first ping.
const SAMPLE_PINGS: usize = 20;

pub fn run(args: &Args) -> anyhow::Result<()> {
    let hosts = args.hosts.unwrap_or(DEFAULT_HOSTS);
    ensure!(
        (1..=99).contains(&hosts),
        "--hosts: 1 to 99 (their addresses are 198.18.0.1 to .99)"
    );
    let sizes: Vec<usize> = match args.vms {
        Some(vms) => vec![vms],
        None if args.quick => vec![SIZES[0]],
        None => SIZES.to_vec(),
    };
    ensure!(
        sizes.iter().all(|&vms| (2..=16_000).contains(&vms)),
        "--vms: 2 to 16,000"
    );
    require("udhcpc", "udhcpc")?;
    require("ping", "iputils-ping")?;
    setup::mount_bpffs()?;
    super::release_binaries("e2e", &[super::Binary::Controller, super::Binary::Agent])?;
    sweep_etc_netns()?;
    let mut runs = Vec::new();
    for vms in sizes {
        super::in_namespaces(TAG, async |prefix| {
            runs.push(one_run(prefix, vms, hosts, args.udhcpc).await?);
            Ok(())
        })?;
    }
    report(&runs)
}

/// `/etc/netns/NAME` directories (udhcpc's resolv.conf) of runs that were
/// killed: their namespaces are swept by `in_namespaces`, these here.
fn sweep_etc_netns() -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir("/etc/netns") else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(TAG) else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new("/proc").join(&pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(())
}

/// Removes the VMs' `/etc/netns/NAME` when dropped.
struct EtcDirs(Vec<String>);

impl Drop for EtcDirs {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
        }
    }
}

/// A VM and its port, as the API created it.
#[derive(Clone, Debug)]
struct VmPort {
    index: usize,
    netns: String,
    host: String,
    id: String,
    mac: [u8; 6],
    ip: Ipv4Addr,
}

/// The controller's API, reached from inside its namespace.
struct Api {
    netns: String,
    listen: SocketAddr,
}

impl Api {
    async fn client(&self) -> anyhow::Result<Client> {
        Client::connect_in(&self.netns, self.listen).await
    }
}

/// What one run measured, seconds from the first API call.
#[derive(Default)]
struct Run {
    vms: usize,
    hosts: usize,
    dhcp_client: &'static str,
    api: f64,
    agents_ready: f64,
    active: f64,
    dhcp: f64,
    first_ping: f64,
    /// Seconds from the first delete.
    delete_api: f64,
    delete_done: f64,
    /// (answered, sent) of the sample, and the average RTT, ms.
    sample: (u32, u32, f64),
    /// Stock udhcpc over every VM after the timed phases (when the timed
    /// phase used the in-process client): seconds, client CPU per VM, and
    /// how many VMs got no lease.
    udhcpc_after: Option<(f64, f64, usize)>,
    controller: Usage,
    /// The controller's CPU while nothing changes, in cores.
    controller_idle: f64,
    agents: Vec<(String, Usage)>,
    applied: Vec<(String, Applied)>,
    load_average: Vec<String>,
    /// Warnings and errors in the controller's log and the agents'.
    warnings: (usize, usize),
}

/// A process's CPU time over provisioning (first API call to first ping)
/// and over the deletion, and its peak RSS.
#[derive(Clone, Copy, Default)]
struct Usage {
    provisioning_cpu: f64,
    delete_cpu: f64,
    peak_rss_kib: u64,
}

/// What an agent's log says of the goal-state messages it applied while
/// the ports came up.
#[derive(Clone, Copy, Default)]
struct Applied {
    /// Transactions ("goal state applied" lines) and messages in them.
    transactions: u64,
    messages: u64,
    resources: u64,
    stage_ms: u64,
    plumb_ms: u64,
    datapath_ms: u64,
    commit_ms: u64,
    /// When the first and the last ended, seconds from the first API call.
    first: f64,
    last: f64,
}

async fn one_run(prefix: &str, vms: usize, hosts: usize, udhcpc: bool) -> anyhow::Result<Run> {
    println!("\nbench e2e: {vms} VMs on {hosts} hosts");
    let mut topology = Topology::new(prefix)?;
    let host_names: Vec<String> = (1..=hosts).map(|n| format!("h{n}")).collect();
    for (n, name) in host_names.iter().enumerate() {
        topology.add_host(name, &format!("198.18.0.{}/24", n + 1))?;
    }
    topology.add_host("ctl", CONTROLLER_ADDRESS)?;
    let ctl = topology.host("ctl");
    let controller =
        Controller::start_in(ctl.netns(), ctl.underlay_ip(), StoreKind::Embedded, &[])?;
    let api = Api {
        netns: ctl.netns().name().to_string(),
        listen: controller.listen(),
    };
    let mut agents: Vec<(String, Agent)> = Vec::new();
    for name in &host_names {
        let host = topology.host(name);
        let mut options = host.agent_options();
        options.args.extend(
            [
                "--insecure",
                "--controller",
                &controller.grpc_endpoint(),
                "--host-id",
                name,
            ]
            .map(String::from),
        );
        agents.push((name.clone(), Agent::start(host.netns(), options).await));
    }

    let made = Instant::now();
    let vm_names: Vec<String> = (0..vms).map(|i| format!("{prefix}-v{i:05}")).collect();
    let _etc = EtcDirs(vm_names.clone());
    let vm_set = NetnsSet::create(vm_names.clone())?;
    disable_ipv6(vm_names.clone()).await?;
    println!(
        "made {vms} VM namespaces (IPv6 off) in {:.1?}: not timed",
        made.elapsed()
    );
    wait_registered(&api, &host_names).await?;
    let logs = || {
        let mut text = format!("controller:\n{}", tail(&controller.log(), 40));
        for (name, agent) in &agents {
            text.push_str(&format!("\nagent {name}:\n{}", tail(&agent.log(), 40)));
        }
        text
    };
    let pids: Vec<u32> = controller
        .pid()
        .into_iter()
        .chain(agents.iter().filter_map(|(_, agent)| agent.pid()))
        .collect();
    ensure!(pids.len() == hosts + 1, "a process is not running");
    let cpu_start = cpu_of(&pids);

    // The clock starts.
    let wall_start = SystemTime::now();
    let t0 = Instant::now();
    let since = |t: Instant| t.duration_since(t0).as_secs_f64();
    let ports = create(&api, vms, &host_names, &vm_names)
        .await
        .with_context(logs)?;
    let api_done = since(Instant::now());
    println!("  API: {vms} ports created and bound at {api_done:.3} s");

    let expected: BTreeMap<&str, usize> = host_names
        .iter()
        .map(|host| {
            let n = ports.iter().filter(|port| port.host == *host).count();
            (host.as_str(), n)
        })
        .collect();
    wait_agents_ready(&agents, &expected, vms)
        .await
        .with_context(logs)?;
    let agents_ready = since(Instant::now());
    println!("  agents: every port ready, every neighbor in place at {agents_ready:.3} s");
    wait_active(&api, vms).await.with_context(logs)?;
    let active = since(Instant::now());
    println!("  controller: every port ACTIVE at {active:.3} s");

    let client = if udhcpc { "udhcpc" } else { "in-process" };
    let (leased, failed) = lease_all(&ports, udhcpc).await?;
    if let Some(first) = failed.first() {
        bail!(
            "{} VMs got no lease, the first: {first}\n{}",
            failed.len(),
            dhcp_counters(&agents).await
        );
    }
    let dhcp = since(Instant::now());
    println!(
        "  DHCP ({client} client): every VM leased at {dhcp:.3} s ({:.3} s for the phase)",
        leased.as_secs_f64()
    );

    let first = first_ping(&ports, hosts).await.with_context(logs)?;
    let first_ping = since(Instant::now());
    let cpu_provisioned = cpu_of(&pids);
    println!("  first ping across hosts ({first}) at {first_ping:.3} s");

    // Not timed: every lease as the agents see it, a sample of pings, and
    // the stock client over every VM.
    check_leases(&agents, &expected).await?;
    let sample = sample_pings(&ports, hosts).await?;
    println!(
        "  sample: {} of {} pings across hosts answered, {:.3} ms on average",
        sample.0, sample.1, sample.2
    );
    // The controller with nothing to do but its periodic recompute.
    let idle_from = cpu_of(&pids[..1]);
    tokio::time::sleep(IDLE_WINDOW).await;
    let controller_idle = (cpu_of(&pids[..1])[0] - idle_from[0]) / IDLE_WINDOW.as_secs_f64();
    println!(
        "  controller idle with {vms} ports: {:.1}% of a core",
        controller_idle * 100.0
    );
    let udhcpc_after = if udhcpc {
        None
    } else {
        println!("  stock udhcpc in every VM again, {UDHCPC_PARALLEL} at a time (not timed above)");
        let before = children_cpu();
        let (took, failed) = lease_all(&ports, true).await?;
        let cpu = children_cpu() - before;
        println!(
            "  stock udhcpc: {:.3} s for {vms} VMs, {:.1} ms of client CPU per VM",
            took.as_secs_f64(),
            cpu * 1e3 / vms as f64
        );
        // Not timed: a VM without an answer is reported, not fatal.
        for failure in &failed {
            println!("  stock udhcpc got no lease in {failure}");
        }
        if !failed.is_empty() {
            println!("{}", dhcp_counters(&agents).await);
        }
        Some((took.as_secs_f64(), cpu / vms as f64, failed.len()))
    };
    let cpu_delete_start = cpu_of(&pids);

    let deleting = Instant::now();
    delete(&api, &ports).await.with_context(logs)?;
    let delete_api = deleting.elapsed().as_secs_f64();
    wait_agents_empty(&agents, &vm_names)
        .await
        .with_context(logs)?;
    let delete_done = deleting.elapsed().as_secs_f64();
    println!("  delete: API done at {delete_api:.3} s, no port on any host at {delete_done:.3} s");
    let cpu_end = cpu_of(&pids);

    let usage = |n: usize| Usage {
        provisioning_cpu: cpu_provisioned[n] - cpu_start[n],
        delete_cpu: cpu_end[n] - cpu_delete_start[n],
        peak_rss_kib: super::process_status_kib(pids[n], "VmHWM").unwrap_or(0),
    };
    let run = Run {
        vms,
        hosts,
        dhcp_client: client,
        api: api_done,
        agents_ready,
        active,
        dhcp,
        first_ping,
        delete_api,
        delete_done,
        sample,
        udhcpc_after,
        controller: usage(0),
        controller_idle,
        agents: host_names
            .iter()
            .enumerate()
            .map(|(n, name)| (name.clone(), usage(n + 1)))
            .collect(),
        applied: agents
            .iter()
            .map(|(name, agent)| {
                (
                    name.clone(),
                    applied(&agent.log(), wall_start, agents_ready),
                )
            })
            .collect(),
        load_average: super::load_average(),
        warnings: (
            warnings(&controller.log()).len(),
            agents
                .iter()
                .map(|(_, agent)| warnings(&agent.log()).len())
                .sum(),
        ),
    };
    for (name, log) in std::iter::once(("controller", controller.log())).chain(
        agents
            .iter()
            .map(|(name, agent)| (name.as_str(), agent.log())),
    ) {
        for line in warnings(&log).iter().take(3) {
            println!("  {name} logged: {line}");
        }
    }
    // The agents first, then the VMs, then the topology.
    drop(agents);
    drop(controller);
    drop(vm_set);
    Ok(run)
}

/// The last `lines` lines of a log.
fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The lines of a log at level WARN or ERROR, but for the two every agent
/// of this topology logs at start (plain text, a veth underlay).
fn warnings(log: &str) -> Vec<String> {
    const EXPECTED: [&str; 2] = ["--insecure", "the underlay is a veth"];
    log.lines()
        .map(strip_ansi)
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .filter(|line| !EXPECTED.iter().any(|known| line.contains(known)))
        .collect()
}

/// CPU seconds of each process.
fn cpu_of(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|&pid| super::cpu_seconds_of(pid).unwrap_or(f64::NAN))
        .collect()
}

/// CPU seconds of this process's waited-for children (and theirs).
fn children_cpu() -> f64 {
    // SAFETY: a plain call filling a struct of ours.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Turns IPv6 off in every VM, from one thread that enters each in turn
/// (the sysctls under /proc/sys/net are those of the caller's namespace).
async fn disable_ipv6(names: Vec<String>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::thread::spawn(move || -> anyhow::Result<()> {
            for name in &names {
                enter(name)?;
                for scope in ["all", "default"] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"), "1")
                        .with_context(|| format!("IPv6 off in {name}"))?;
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow!("the thread panicked"))?
    })
    .await??;
    Ok(())
}

/// Moves the calling thread into the namespace `name`.
fn enter(name: &str) -> anyhow::Result<()> {
    let file = File::open(Path::new("/var/run/netns").join(name))
        .with_context(|| format!("namespace {name}"))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {name}"))?;
    Ok(())
}

/// How many of the namespaces have an `eth0`.
async fn count_eth0(names: Vec<String>) -> anyhow::Result<usize> {
    tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let mut found = 0;
            for name in &names {
                enter(name)?;
                if nix::net::if_::if_nametoindex("eth0").is_ok() {
                    found += 1;
                }
            }
            Ok(found)
        })
        .join()
        .map_err(|_| anyhow!("the thread panicked"))?
    })
    .await?
}

/// Polls `check` every [`POLL`] until it gives a value, for at most
/// [`PHASE_LIMIT`]; the error says what was awaited and the last state.
async fn poll<T>(
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Result<T, String>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        let last = match check().await? {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        ensure!(
            Instant::now() < deadline,
            "{what}: not within {PHASE_LIMIT:?} ({last})"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_registered(api: &Api, hosts: &[String]) -> anyhow::Result<()> {
    let mut client = api.client().await?;
    poll("every agent registered", async || {
        let (status, body) = client.json("GET", "/v2.0/agents", None).await?;
        ensure!(status == 200, "GET /v2.0/agents: {status} {body}");
        let alive: Vec<&str> = body["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|agent| agent["alive"] == true)
            .filter_map(|agent| agent["host"].as_str())
            .collect();
        Ok(if hosts.iter().all(|host| alive.contains(&host.as_str())) {
            Ok(())
        } else {
            Err(format!("alive: {alive:?}"))
        })
    })
    .await
}

/// The smallest subnet (a /24 at least) with room for `vms` addresses
/// besides the network, gateway and broadcast addresses.
fn cidr_for(vms: usize) -> String {
    let bits = (vms + 3).next_power_of_two().trailing_zeros().max(8);
    format!("10.0.0.0/{}", 32 - bits)
}

/// The timed API calls: network, subnet, ports in bulk creates of
/// [`CHUNK`], [`CREATE_CLIENTS`] at once.
async fn create(
    api: &Api,
    vms: usize,
    hosts: &[String],
    vm_names: &[String],
) -> anyhow::Result<Vec<VmPort>> {
    let mut client = api.client().await?;
    let (status, network) = client
        .json(
            "POST",
            "/v2.0/networks",
            Some(&json!({"network": {"name": "bench-e2e"}})),
        )
        .await?;
    ensure!(status == 201, "network create: {status} {network}");
    let network_id = network["network"]["id"]
        .as_str()
        .context("the network's id")?
        .to_string();
    let subnet = json!({"subnet": {
        "network_id": network_id, "name": "bench-e2e", "ip_version": 4, "cidr": cidr_for(vms),
    }});
    let (status, body) = client.json("POST", "/v2.0/subnets", Some(&subnet)).await?;
    ensure!(status == 201, "subnet create: {status} {body}");

    let chunks: Vec<Vec<usize>> = (0..vms)
        .collect::<Vec<_>>()
        .chunks(CHUNK)
        .map(<[usize]>::to_vec)
        .collect();
    let chunks = Arc::new(chunks);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..CREATE_CLIENTS.min(chunks.len()) {
        let mut client = if n == 0 {
            std::mem::replace(&mut client, api.client().await?)
        } else {
            api.client().await?
        };
        let (chunks, next) = (chunks.clone(), next.clone());
        let hosts = hosts.to_vec();
        let vm_names = vm_names.to_vec();
        let network_id = network_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            loop {
                let Some(chunk) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return anyhow::Ok(made);
                };
                let ports: Vec<Value> = chunk
                    .iter()
                    .map(|&i| {
                        json!({
                            "network_id": network_id,
                            "name": format!("vm{i}"),
                            "device_owner": "compute:nova",
                            "device_id": format!("vm{i}"),
                            "binding:host_id": hosts[i % hosts.len()],
                            "binding:profile": {"netns": vm_names[i]},
                        })
                    })
                    .collect();
                let (status, body) = client
                    .json("POST", "/v2.0/ports", Some(&json!({ "ports": ports })))
                    .await?;
                ensure!(status == 201, "bulk port create: {status} {body}");
                let created = body["ports"].as_array().context("no ports in the answer")?;
                ensure!(
                    created.len() == chunk.len(),
                    "{} ports created",
                    created.len()
                );
                for (&i, port) in chunk.iter().zip(created) {
                    made.push(VmPort {
                        index: i,
                        netns: vm_names[i].clone(),
                        host: hosts[i % hosts.len()].clone(),
                        id: port["id"].as_str().context("a port id")?.to_string(),
                        mac: traffic::mac_bytes(
                            port["mac_address"].as_str().context("a port MAC")?,
                        )?,
                        ip: port["fixed_ips"][0]["ip_address"]
                            .as_str()
                            .context("a port address")?
                            .parse()?,
                    });
                }
            }
        }));
    }
    let mut ports = Vec::with_capacity(vms);
    for task in tasks {
        ports.extend(task.await??);
    }
    ports.sort_by_key(|port| port.index);
    ensure!(ports.len() == vms, "{} ports made", ports.len());
    Ok(ports)
}

/// Until every agent has its ports ready and the others' as neighbors.
async fn wait_agents_ready(
    agents: &[(String, Agent)],
    expected: &BTreeMap<&str, usize>,
    vms: usize,
) -> anyhow::Result<()> {
    let mut controls = Vec::new();
    for (name, agent) in agents {
        controls.push((name.as_str(), agent.control().await));
    }
    poll("every port ready on its agent", async || {
        let mut waiting = Vec::new();
        for (name, control) in &mut controls {
            let status = control
                .get_status(GetStatusRequest {})
                .await
                .with_context(|| format!("agent {name}"))?
                .into_inner();
            let ports = expected[name] as u32;
            let neighbors = (vms - expected[name]) as u32;
            if status.ports_failed > 0 {
                let failed = control
                    .list_ports(ListRequest {})
                    .await?
                    .into_inner()
                    .ports
                    .into_iter()
                    .find(|port| !port.reason.is_empty());
                bail!(
                    "agent {name}: {} ports failed: {failed:?}",
                    status.ports_failed
                );
            }
            if status.ports_ready != ports || status.neighbors != neighbors {
                waiting.push(format!(
                    "{name}: {}/{ports} ready, {}/{neighbors} neighbors",
                    status.ports_ready, status.neighbors
                ));
            }
        }
        Ok(if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting.join("; "))
        })
    })
    .await
}

/// Until the API shows every port ACTIVE.
async fn wait_active(api: &Api, vms: usize) -> anyhow::Result<()> {
    let mut client = api.client().await?;
    poll("every port ACTIVE", async || {
        let (status, body) = client
            .json("GET", "/v2.0/ports?fields=id&fields=status", None)
            .await?;
        ensure!(status == 200, "GET /v2.0/ports: {status}");
        let ports = body["ports"].as_array().context("no ports")?;
        let active = ports.iter().filter(|p| p["status"] == "ACTIVE").count();
        if let Some(port) = ports.iter().find(|p| p["status"] == "ERROR") {
            bail!("a port is in ERROR: {port}");
        }
        Ok(if active == vms {
            Ok(())
        } else {
            Err(format!("{active} of {vms} ACTIVE"))
        })
    })
    .await
}

/// Every VM leases its address (`udhcpc`: the stock client, else the
/// in-process one): the time it took.
async fn lease_all(ports: &[VmPort], udhcpc: bool) -> anyhow::Result<(Duration, Vec<String>)> {
    let ports = Arc::new(ports.to_vec());
    let started = Instant::now();
    let workers = if udhcpc {
        UDHCPC_PARALLEL
    } else {
        LITE_WORKERS
    };
    let failed = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        let next = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                let (ports, next, failures) = (ports.clone(), next.clone(), failures.clone());
                std::thread::spawn(move || {
                    while let Some(vm) = ports.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let leased = if udhcpc {
                            lease_udhcpc(vm)
                        } else {
                            enter(&vm.netns).and_then(|()| lease_lite(vm))
                        };
                        if let Err(error) = leased {
                            failures.lock().expect("failures").push(format!(
                                "{} ({}, port {} {} on {}): {error:#}",
                                vm.netns,
                                vm.ip,
                                vm.id,
                                traffic_mac(vm.mac),
                                vm.host
                            ));
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow!("a DHCP thread panicked"))?;
        }
        Ok(std::mem::take(&mut *failures.lock().expect("failures")))
    })
    .await??;
    Ok((started.elapsed(), failed))
}

fn traffic_mac(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// What each agent's DHCP responder counted (what it received, sent,
/// dropped and why), for when a VM got no lease.
async fn dhcp_counters(agents: &[(String, Agent)]) -> String {
    let mut report = String::from("the agents' DHCP counters:");
    for (name, agent) in agents {
        let counters = agent
            .control()
            .await
            .get_dhcp_counters(GetDhcpCountersRequest {})
            .await
            .map(tonic::Response::into_inner);
        match counters {
            Ok(c) => {
                let nonzero = |map: &std::collections::HashMap<String, u64>| {
                    let mut pairs: Vec<String> = map
                        .iter()
                        .filter(|(_, n)| **n > 0)
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect();
                    pairs.sort();
                    pairs.join(", ")
                };
                report.push_str(&format!(
                    "\n  {name}: received {}; sent {}; dropped {}; declined {}, released {}, \
                     send errors {}",
                    nonzero(&c.received),
                    nonzero(&c.sent),
                    nonzero(&c.dropped),
                    c.leases_declined,
                    c.leases_released,
                    c.send_errors
                ));
            }
            Err(error) => report.push_str(&format!("\n  {name}: {error}")),
        }
    }
    report
}

/// busybox udhcpc as Debian ships it (its default script), once: its
/// resolv.conf goes to the VM's `/etc/netns/NAME`.
fn lease_udhcpc(vm: &VmPort) -> anyhow::Result<()> {
    let etc = PathBuf::from("/etc/netns").join(&vm.netns);
    std::fs::create_dir_all(&etc)?;
    std::fs::write(etc.join("resolv.conf"), "")?;
    let args = [
        "netns", "exec", &vm.netns, "udhcpc", "-i", "eth0", "-q", "-n", "-t", "5", "-T", "1",
    ];
    let output = output_within(Duration::from_secs(25), "ip", &args)?;
    ensure!(
        output.status.success(),
        "udhcpc ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
            .trim()
            .replace('\n', " | ")
    );
    Ok(())
}

const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What a server answered.
struct DhcpReply {
    kind: u8,
    yiaddr: Ipv4Addr,
    server: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
}

/// The in-process client, on a thread inside the VM's namespace: DISCOVER,
/// OFFER, REQUEST, ACK broadcast on `eth0` (the same frames as udhcpc's),
/// then the address and mask on `eth0` (netlink, no process).
fn lease_lite(vm: &VmPort) -> anyhow::Result<()> {
    let socket = DhcpSocket::open()?;
    let xid = 0xe2e0_0000 ^ vm.index as u32;
    let offer = socket.exchange(vm, xid, &dhcp_message(vm.mac, xid, DISCOVER, &[]), OFFER)?;
    let server = offer.server.context("an OFFER without a server id")?;
    let request = dhcp_message(
        vm.mac,
        xid,
        REQUEST,
        &[(50, offer.yiaddr.octets()), (54, server.octets())],
    );
    let ack = socket.exchange(vm, xid, &request, ACK)?;
    ensure!(
        ack.yiaddr == vm.ip,
        "leased {}, its port has {}",
        ack.yiaddr,
        vm.ip
    );
    set_address(ack.yiaddr, ack.mask.context("an ACK without a mask")?)
}

/// A BOOTP request of `kind` with `options` (and a parameter request
/// list), asking for a broadcast answer.
fn dhcp_message(mac: [u8; 6], xid: u32, kind: u8, options: &[(u8, [u8; 4])]) -> Vec<u8> {
    let mut message = vec![0u8; 236];
    message[..4].copy_from_slice(&[1, 1, 6, 0]);
    message[4..8].copy_from_slice(&xid.to_be_bytes());
    message[10..12].copy_from_slice(&0x8000u16.to_be_bytes());
    message[28..34].copy_from_slice(&mac);
    message.extend_from_slice(&DHCP_MAGIC);
    message.extend_from_slice(&[53, 1, kind]);
    for (code, value) in options {
        message.extend_from_slice(&[*code, 4]);
        message.extend_from_slice(value);
    }
    // Mask, router, DNS, MTU.
    message.extend_from_slice(&[55, 4, 1, 3, 6, 26, 255]);
    message.resize(message.len().max(300), 0);
    message
}

/// The DHCP answer in `message` (a UDP payload) to transaction `xid` of
/// `mac`, if it is one.
fn parse_reply(message: &[u8], xid: u32, mac: [u8; 6]) -> Option<DhcpReply> {
    if message.len() < 240
        || message[0] != 2
        || message[4..8] != xid.to_be_bytes()
        || message[28..34] != mac
        || message[236..240] != DHCP_MAGIC
    {
        return None;
    }
    let address = |bytes: &[u8]| -> Option<Ipv4Addr> {
        Some(Ipv4Addr::from(<[u8; 4]>::try_from(bytes.get(..4)?).ok()?))
    };
    let mut reply = DhcpReply {
        kind: 0,
        yiaddr: address(&message[16..20])?,
        server: None,
        mask: None,
    };
    let mut options = &message[240..];
    while let [code, rest @ ..] = options {
        match code {
            0 => {
                options = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let (&len, rest) = rest.split_first()?;
        let value = rest.get(..usize::from(len))?;
        match code {
            53 => reply.kind = *value.first()?,
            54 => reply.server = address(value),
            1 => reply.mask = address(value),
            _ => {}
        }
        options = &rest[usize::from(len)..];
    }
    Some(reply)
}

/// A UDP socket on 0.0.0.0:68 bound to `eth0` of the calling thread's
/// namespace, allowed to broadcast. (A packet socket, which udhcpc uses,
/// works too, but closing one waits for an RCU grace period: 15-30 ms a
/// VM here, which a VM's own client pays in its own time.)
struct DhcpSocket {
    socket: std::net::UdpSocket,
}

impl DhcpSocket {
    fn open() -> anyhow::Result<DhcpSocket> {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 68))?;
        let device = b"eth0";
        // SAFETY: a socket option of the size given on our socket.
        let bound = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                device.as_ptr().cast(),
                device.len() as libc::socklen_t,
            )
        };
        ensure!(
            bound == 0,
            "SO_BINDTODEVICE: {}",
            io::Error::last_os_error()
        );
        socket.set_broadcast(true)?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(DhcpSocket { socket })
    }

    /// Broadcasts `message` to the servers until the answer of `kind`
    /// comes (a second between tries, [`LITE_TRIES`] tries).
    fn exchange(
        &self,
        vm: &VmPort,
        xid: u32,
        message: &[u8],
        kind: u8,
    ) -> anyhow::Result<DhcpReply> {
        let mut buffer = vec![0u8; 2048];
        for _ in 0..LITE_TRIES {
            self.socket.send_to(message, (Ipv4Addr::BROADCAST, 67))?;
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                let n = match self.socket.recv(&mut buffer) {
                    Ok(n) => n,
                    Err(error)
                        if matches!(
                            error.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                };
                if let Some(reply) = parse_reply(&buffer[..n], xid, vm.mac) {
                    ensure!(reply.kind != NAK, "NAK");
                    if reply.kind == kind {
                        return Ok(reply);
                    }
                }
            }
        }
        bail!("no answer of type {kind} to {LITE_TRIES} tries")
    }
}

/// Gives `eth0` of the calling thread's namespace `ip` with `mask` (the
/// kernel adds the subnet's route): one RTM_NEWADDR over netlink, as `ip
/// addr replace` sends.
fn set_address(ip: Ipv4Addr, mask: Ipv4Addr) -> anyhow::Result<()> {
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    let ifindex = nix::net::if_::if_nametoindex("eth0").context("no eth0")?;
    let prefix_len = u32::from(mask).leading_ones() as u8;
    let mut message = Vec::with_capacity(40);
    // nlmsghdr: length (set below), type, flags, sequence, port id.
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE;
    message.extend_from_slice(&(flags as u16).to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    // ifaddrmsg: family, prefix length, flags, scope (universe), index.
    message.extend_from_slice(&[libc::AF_INET as u8, prefix_len, 0, 0]);
    message.extend_from_slice(&ifindex.to_ne_bytes());
    for kind in [IFA_LOCAL, IFA_ADDRESS] {
        message.extend_from_slice(&8u16.to_ne_bytes());
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&ip.octets());
    }
    let length = message.len() as u32;
    message[..4].copy_from_slice(&length.to_ne_bytes());
    // SAFETY (all): a netlink socket owned here; buffers outlive the calls.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    ensure!(
        fd >= 0,
        "socket(AF_NETLINK): {}",
        io::Error::last_os_error()
    );
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sent = unsafe { libc::send(fd.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) };
    ensure!(
        sent == message.len() as isize,
        "netlink send: {}",
        io::Error::last_os_error()
    );
    let mut answer = [0u8; 512];
    let n = unsafe { libc::recv(fd.as_raw_fd(), answer.as_mut_ptr().cast(), answer.len(), 0) };
    ensure!(n >= 20, "netlink recv: {}", io::Error::last_os_error());
    // An NLMSG_ERROR whose error is 0 is the acknowledgement.
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    let error = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
    ensure!(
        kind == libc::NLMSG_ERROR as u16 && error == 0,
        "adding {ip}/{prefix_len} to eth0: {}",
        io::Error::from_raw_os_error(-error)
    );
    Ok(())
}

/// Every agent's leases: one bound lease for each of its ports.
async fn check_leases(
    agents: &[(String, Agent)],
    expected: &BTreeMap<&str, usize>,
) -> anyhow::Result<()> {
    for (name, agent) in agents {
        let leases = agent
            .control()
            .await
            .list_leases(ListRequest {})
            .await?
            .into_inner()
            .leases;
        let bound = leases.iter().filter(|lease| lease.state == "bound").count();
        ensure!(
            bound == expected[name.as_str()],
            "agent {name} has {bound} bound leases for {} ports",
            expected[name.as_str()]
        );
    }
    Ok(())
}

/// `ping -c 1 -W 1 TARGET` from `vm`, bounded.
fn ping_once(vm: &VmPort, target: Ipv4Addr, count: u32) -> anyhow::Result<Ping> {
    let target = target.to_string();
    let count = count.to_string();
    let args = [
        "netns", "exec", &vm.netns, "ping", "-n", "-c", &count, "-i", "0.2", "-W", "1", &target,
    ];
    let output = output_within(Duration::from_secs(10), "ip", &args)?;
    Ping::parse(&String::from_utf8_lossy(&output.stdout))
}

/// The VM of host 1 pings the VM of host 2 (VM 0 and VM 1: ports go to
/// hosts round-robin) until it is answered: which pair it was.
async fn first_ping(ports: &[VmPort], hosts: usize) -> anyhow::Result<String> {
    let (from, to) = (ports[0].clone(), ports[1.min(hosts - 1)].clone());
    let pair = format!("{} on {} → {} on {}", from.ip, from.host, to.ip, to.host);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ping = ping_once(&from, to.ip, 1)?;
            if ping.all_answered() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{} does not answer {} within 30 s",
                to.ip,
                from.ip
            );
        }
    })
    .await??;
    Ok(pair)
}

/// [`SAMPLE_PINGS`] pairs of VMs on different hosts (where there are
/// several), spread over the VMs, 3 pings each, at once: (answered, sent,
/// average RTT in ms).
async fn sample_pings(ports: &[VmPort], hosts: usize) -> anyhow::Result<(u32, u32, f64)> {
    let n = ports.len();
    let pairs: Vec<(VmPort, VmPort)> = (0..SAMPLE_PINGS.min(n))
        .map(|k| {
            let from = k * n / SAMPLE_PINGS.min(n);
            let mut to = (from + n / 2 + 1) % n;
            if hosts > 1 && ports[to].host == ports[from].host {
                to = (to + 1) % n;
            }
            (ports[from].clone(), ports[to].clone())
        })
        .collect();
    let threads: Vec<_> = pairs
        .into_iter()
        .map(|(from, to)| std::thread::spawn(move || ping_once(&from, to.ip, 3)))
        .collect();
    let results = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .map_err(|_| anyhow!("a ping thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<Ping>>>()
    })
    .await??;
    let sent = results.iter().map(|ping| ping.transmitted).sum();
    let answered = results.iter().map(|ping| ping.received).sum();
    let rtts: Vec<f64> = results
        .iter()
        .flat_map(|ping| ping.rtts_ms.clone())
        .collect();
    let average = rtts.iter().sum::<f64>() / rtts.len().max(1) as f64;
    Ok((answered, sent, average))
}

/// Deletes the ports ([`DELETE_CLIENTS`] at once), then the subnet and the
/// network.
async fn delete(api: &Api, ports: &[VmPort]) -> anyhow::Result<()> {
    let ids: Arc<Vec<String>> = Arc::new(ports.iter().map(|port| port.id.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..DELETE_CLIENTS.min(ids.len()) {
        let mut client = api.client().await?;
        let (ids, next) = (ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                let (status, body) = client
                    .request("DELETE", &format!("/v2.0/ports/{id}"), None)
                    .await?;
                ensure!(
                    status == 204,
                    "port delete: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut client = api.client().await?;
    for collection in ["subnets", "networks"] {
        let (status, body) = client
            .json("GET", &format!("/v2.0/{collection}?name=bench-e2e"), None)
            .await?;
        ensure!(status == 200, "GET {collection}: {status}");
        for item in body[collection].as_array().into_iter().flatten() {
            let id = item["id"].as_str().context("an id")?;
            let (status, body) = client
                .request("DELETE", &format!("/v2.0/{collection}/{id}"), None)
                .await?;
            ensure!(
                status == 204,
                "{collection} delete: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(())
}

/// Until no agent has a port, a neighbor or a VPC left, and no VM an
/// `eth0` (an agent counts a port gone once the message that deletes it is
/// staged, before it has deleted the device).
async fn wait_agents_empty(agents: &[(String, Agent)], vms: &[String]) -> anyhow::Result<()> {
    let mut controls = Vec::new();
    for (name, agent) in agents {
        controls.push((name.as_str(), agent.control().await));
    }
    poll("every host emptied", async || {
        let mut left = Vec::new();
        let plugged = count_eth0(vms.to_vec()).await?;
        if plugged > 0 {
            left.push(format!("{plugged} VMs with an eth0"));
        }
        for (name, control) in &mut controls {
            let status = control.get_status(GetStatusRequest {}).await?.into_inner();
            if status.ports + status.neighbors + status.vpcs > 0 {
                left.push(format!(
                    "{name}: {} ports, {} neighbors, {} VPCs",
                    status.ports, status.neighbors, status.vpcs
                ));
            }
        }
        Ok(if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        })
    })
    .await
}

impl Applied {
    /// Seconds spent applying (staging, plumbing, then the datapath and
    /// the store, which `commit_ms` covers).
    fn busy(&self) -> f64 {
        (self.stage_ms + self.plumb_ms + self.commit_ms) as f64 / 1e3
    }
}

/// The agent's "goal state applied" lines (its debug log) that ended
/// before `until` seconds from `start`.
fn applied(log: &str, start: SystemTime, until: f64) -> Applied {
    let start = start
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut applied = Applied {
        first: f64::NAN,
        last: f64::NAN,
        ..Default::default()
    };
    for line in log
        .lines()
        .filter(|line| line.contains("goal state applied"))
    {
        let line = strip_ansi(line);
        let Some(at) = line
            .split_whitespace()
            .next()
            .and_then(unix_seconds)
            .map(|at| at - start)
        else {
            continue;
        };
        if at < 0.0 || at > until + 0.5 {
            continue;
        }
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        applied.transactions += 1;
        applied.messages += field("messages");
        applied.resources += field("resources");
        applied.stage_ms += field("stage_ms");
        applied.plumb_ms += field("plumb_ms");
        applied.datapath_ms += field("datapath_ms");
        applied.commit_ms += field("commit_ms");
        if applied.first.is_nan() {
            applied.first = at;
        }
        applied.last = at;
    }
    applied
}

/// The line without terminal colour sequences.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-01T19:13:09.123456Z` as Unix seconds.
fn unix_seconds(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let mut time = time.split(':');
    let hours: f64 = time.next()?.parse().ok()?;
    let minutes: f64 = time.next()?.parse().ok()?;
    let seconds: f64 = time.next()?.parse().ok()?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hours * 3_600.0 + minutes * 60.0 + seconds)
}

/// The published figures (seconds from the first API call until every VM
/// has its lease and a ping succeeds): Alcor's, Neutron's, and the issue's
/// target on this 2-core machine.
fn reference(vms: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
    match vms {
        150 => (Some(5.6), Some(20.0), Some(1.0)),
        2_400 => (Some(35.0), None, Some(10.0)),
        _ => (None, None, None),
    }
}

fn seconds(value: f64) -> String {
    format!("{value:.3} s")
}

fn beside(ours: f64, theirs: Option<f64>) -> (String, String) {
    match theirs {
        Some(theirs) => (format!("{theirs} s"), format!("{:.3}×", ours / theirs)),
        None => ("–".into(), "–".into()),
    }
}

fn report(runs: &[Run]) -> anyhow::Result<()> {
    let mut documents = Vec::new();
    for run in runs {
        let (alcor, neutron, target) = reference(run.vms);
        println!(
            "\nbench e2e: {} VMs on {} hosts, release build, DHCP by the {} client; \
             load average {}",
            run.vms,
            run.hosts,
            run.dhcp_client,
            run.load_average.join(" ")
        );
        println!(
            "\n| phase (elapsed from the first API call) | ours | Alcor | ours/Alcor | Neutron | \
             ours/Neutron | target | ours/target |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let rows = [
            (
                "API: network, subnet, every port created and bound",
                run.api,
            ),
            (
                "agents: every port plumbed and ready, every neighbor in place",
                run.agents_ready,
            ),
            ("controller: every port ACTIVE in the API", run.active),
            ("DHCP: every VM holds its lease", run.dhcp),
        ];
        for (phase, at) in rows {
            println!("| {phase} | {} | | | | | | |", seconds(at));
        }
        let (alcor_s, alcor_r) = beside(run.first_ping, alcor);
        let (neutron_s, neutron_r) = beside(run.first_ping, neutron);
        let (target_s, target_r) = beside(run.first_ping, target);
        println!(
            "| **first ping across hosts: the total** | **{}** | {alcor_s} | {alcor_r} | \
             {neutron_s} | {neutron_r} | {target_s} | {target_r} |",
            seconds(run.first_ping)
        );
        println!(
            "| delete: every port, the subnet and the network through the API (from the first \
             delete) | {} | | | | | | |",
            seconds(run.delete_api)
        );
        println!(
            "| delete: no port left on any host, no VM with an eth0 (from the first delete) | {} \
             | | | | | | |",
            seconds(run.delete_done)
        );
        println!(
            "\nby phase: API {:.3} s, push and agents {:.3} s, statuses to the API {:.3} s, \
             DHCP {:.3} s, first ping {:.3} s",
            run.api,
            run.agents_ready - run.api,
            run.active - run.agents_ready,
            run.dhcp - run.active,
            run.first_ping - run.dhcp
        );
        println!(
            "\n| process | CPU, provisioning | CPU, deletion | peak RSS |\n|---|---:|---:|---:|"
        );
        let usage_row = |name: &str, usage: &Usage| {
            println!(
                "| {name} | {:.2} s | {:.2} s | {:.1} MiB |",
                usage.provisioning_cpu,
                usage.delete_cpu,
                usage.peak_rss_kib as f64 / 1024.0
            );
        };
        usage_row("alcor-controller", &run.controller);
        for (host, usage) in &run.agents {
            usage_row(&format!("alcor-agent {host}"), usage);
        }
        println!(
            "\nthe agents' own account (debug log) of the goal state they applied until every \
             port was ready:"
        );
        for (host, applied) in &run.applied {
            println!(
                "  {host}: {} transactions ({} messages, {} resources), staging {} ms, plumbing \
                 {} ms, datapath {} ms, commit {} ms; first ended at {:.3} s, last at {:.3} s; \
                 busy {:.3} s of the {:.3} s until every port was ready",
                applied.transactions,
                applied.messages,
                applied.resources,
                applied.stage_ms,
                applied.plumb_ms,
                applied.datapath_ms,
                applied.commit_ms,
                applied.first,
                applied.last,
                applied.busy(),
                run.agents_ready
            );
        }
        println!(
            "sample: {} of {} pings between VMs on different hosts answered, {:.3} ms on average",
            run.sample.0, run.sample.1, run.sample.2
        );
        println!(
            "the controller with nothing to do (its periodic recompute): {:.1}% of a core",
            run.controller_idle * 100.0
        );
        println!(
            "warnings and errors logged (but the agents' two at start): controller {}, agents {}",
            run.warnings.0, run.warnings.1
        );
        if let Some((took, cpu, failed)) = run.udhcpc_after {
            println!(
                "stock udhcpc (Debian's script) in every VM afterwards, {UDHCPC_PARALLEL} at a \
                 time: {took:.3} s, {:.1} ms of client CPU per VM; {failed} got no lease",
                cpu * 1e3
            );
        }
        let usage_json = |usage: &Usage| {
            json!({
                "provisioning_cpu_seconds": usage.provisioning_cpu,
                "delete_cpu_seconds": usage.delete_cpu,
                "peak_rss_kib": usage.peak_rss_kib,
            })
        };
        documents.push(json!({
            "vms": run.vms,
            "hosts": run.hosts,
            "dhcp_client": run.dhcp_client,
            "load_average": run.load_average,
            "warnings_logged": {"controller": run.warnings.0, "agents": run.warnings.1},
            "seconds_from_first_api_call": {
                "api": run.api,
                "agents_ready": run.agents_ready,
                "active": run.active,
                "dhcp": run.dhcp,
                "first_ping": run.first_ping,
            },
            "delete_seconds": {"api": run.delete_api, "hosts_empty": run.delete_done},
            "reference_seconds": {"alcor": alcor, "neutron": neutron, "target": target},
            "controller": usage_json(&run.controller),
            "controller_idle_cores": run.controller_idle,
            "agents": run.agents.iter().map(|(host, usage)| {
                let mut value = usage_json(usage);
                value["host"] = json!(host);
                value
            }).collect::<Vec<_>>(),
            "agents_applied": run.applied.iter().map(|(host, a)| json!({
                "host": host, "transactions": a.transactions, "messages": a.messages,
                "resources": a.resources, "stage_ms": a.stage_ms, "plumb_ms": a.plumb_ms,
                "datapath_ms": a.datapath_ms, "commit_ms": a.commit_ms,
                "first_seconds": a.first, "last_seconds": a.last,
            })).collect::<Vec<_>>(),
            "sample_pings": {"answered": run.sample.0, "sent": run.sample.1, "average_rtt_ms": run.sample.2},
            "udhcpc_after": run.udhcpc_after.map(|(took, cpu, failed)| json!({
                "seconds": took, "client_cpu_seconds_per_vm": cpu, "parallel": UDHCPC_PARALLEL,
                "no_lease": failed,
            })),
        }));
    }
    super::write_json(
        "e2e",
        json!({
            "bulk_create_chunk": CHUNK,
            "create_clients": CREATE_CLIENTS,
            "delete_clients": DELETE_CLIENTS,
            "runs": documents,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_have_room_for_every_vm() {
        assert_eq!(cidr_for(150), "10.0.0.0/24");
        assert_eq!(cidr_for(253), "10.0.0.0/24");
        assert_eq!(cidr_for(254), "10.0.0.0/23");
        assert_eq!(cidr_for(2_400), "10.0.0.0/20");
    }

    #[test]
    fn log_timestamps_are_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:01.5Z"), Some(1.5));
        assert_eq!(unix_seconds("2000-03-01T00:00:00Z"), Some(951_868_800.0));
    }

    #[test]
    fn applied_lines_are_summed() {
        let start = UNIX_EPOCH + Duration::from_secs(951_868_800);
        let log = "2000-03-01T00:00:01.000000Z DEBUG alcor_agent::engine: goal state applied \
                   messages=1 resources=10 stage_ms=1 plumb_ms=2 datapath_ms=3 commit_ms=4\n\
                   2000-03-01T00:00:02.000000Z DEBUG alcor_agent::engine: goal state applied \
                   messages=2 resources=5 stage_ms=1 plumb_ms=2 datapath_ms=3 commit_ms=4\n";
        let applied = applied(log, start, 10.0);
        assert_eq!((applied.transactions, applied.messages), (2, 3));
        assert_eq!((applied.resources, applied.commit_ms), (15, 8));
        assert_eq!((applied.first, applied.last), (1.0, 2.0));
    }

    #[test]
    fn dhcp_replies_are_parsed() {
        let mac = [2, 0, 0, 0, 0, 1];
        let mut reply = dhcp_message(
            mac,
            7,
            OFFER,
            &[(54, [10, 0, 0, 1]), (1, [255, 255, 255, 0])],
        );
        reply[0] = 2;
        reply[16..20].copy_from_slice(&[10, 0, 0, 5]);
        let parsed = parse_reply(&reply, 7, mac).unwrap();
        assert_eq!(parsed.kind, OFFER);
        assert_eq!(parsed.yiaddr, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(parsed.server, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(parsed.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert!(parse_reply(&reply, 8, mac).is_none(), "another transaction");
    }
}
