//! `bench dhcp`: the agent's DHCP responder against Kea's kea-dhcp4 and
//! dnsmasq, loaded by perfdhcp (Kea's load generator) with 10,000 client
//! MACs, on the same veth topology, in the same run.
//!
//! - ours: a real agent (release build) in a host namespace; perfdhcp in a
//!   VM namespace behind one netns-bound port whose allowed address pairs
//!   are the 10,000 MACs, each with a DHCP entry (an address and a name);
//! - kea-dhcp4: memfile leases (persisted), multi-threaded, the same 10,000
//!   MACs as host reservations, listening on the host side of a veth whose
//!   other end is the VM namespace's eth0;
//! - dnsmasq: the same, with the MACs in a hosts file.
//!
//! Every server sends the same options (mask, router, DNS, domain, MTU,
//! lease time, host name). perfdhcp always acts as a relay (giaddr = its
//! address, UDP 67 → 67, answers to giaddr:67); the port program lets only
//! client-port DHCP (68 → 67) reach the agent, so an nft rule in every VM
//! namespace, for every peer alike, rewrites the source port to 68.
//!
//! Throughput: the highest exchange rate perfdhcp (`-r`) sustains while
//! losing at most 1% of DISCOVERs and of REQUESTs, found by doubling from
//! 100/s and then bisecting; also perfdhcp sending as fast as it can (its
//! default), whose figure, once the server keeps up, is perfdhcp's own
//! limit: the replies then overflow its socket buffer, which is counted.
//! Latency: a run at a fixed `LATENCY_RATE` with `-x t`, which prints the
//! send and receive time of every exchange: p50 and p99 are computed from
//! those, for DISCOVER→OFFER and REQUEST→ACK (perfdhcp itself reports only
//! average and maximum). The server process's CPU time per exchange at
//! its sustained rate tells what the load generator hides. Rounds
//! alternate between the servers; each figure is the median of its rounds.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use alcor_tests::{
    Agent, AgentOptions, Netns,
    dhcp::output_within,
    goalstate::{self, dhcp_entry, dhcp_subnet, netns_port, vpc, with_address_pairs},
    wait_for,
};
use anyhow::{Context, bail, ensure};
use serde_json::json;

use crate::{setup, util};

const TAG: &str = "xbdhcp";
const CLIENTS: usize = 10_000;
const ROUNDS: usize = 3;
/// The sustained rate: steps of this length, the first at `START_RATE`
/// exchanges/s, doubling up to `MAX_RATE`, then bisected.
const STEP_SECONDS: u64 = 3;
const START_RATE: u32 = 100;
const MAX_RATE: u32 = 60_000;
const BISECTIONS: usize = 3;
/// A rate is sustained when at most this share of DISCOVERs and of
/// REQUESTs goes unanswered.
const MAX_LOSS_PERCENT: f64 = 1.0;
/// How long the run as fast as perfdhcp can send lasts.
const FLOOD_SECONDS: u64 = 5;
/// Exchanges per second of the latency runs: under Kea's capacity here.
const LATENCY_RATE: u32 = 1_000;
const LATENCY_SECONDS: u64 = 5;
/// perfdhcp's random choices (which MAC starts each exchange) repeat.
const SEED: &str = "7";

const GATEWAY: &str = "10.50.0.1";
/// The VM's address: the port's fixed IP, perfdhcp's giaddr.
const VM_IP: &str = "10.50.0.10";
const PORT_MAC: &str = "fa:16:3e:0b:00:01";
/// The gateway MAC `goalstate::subnet` gives.
const GATEWAY_MAC: &str = "fa:16:3e:00:00:01";
const DNS: &str = "10.0.0.2";
const MTU: u32 = 1450;
const LEASE_SECONDS: u32 = 86_400;

/// perfdhcp answers with datagrams from UDP 67 (it plays a relay); the
/// port program passes DHCP from the client port only.
const NFT_CLIENT_PORT: &str = "table ip perfdhcp {
  chain out {
    type filter hook output priority 0; policy accept;
    udp sport 67 udp dport 67 udp sport set 68
  }
}
";

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    for (program, package) in [
        ("perfdhcp", "kea-admin"),
        ("kea-dhcp4", "kea-dhcp4-server"),
        ("nft", "nftables"),
    ] {
        alcor_tests::dhcp::require(program, package)?;
    }
    println!("bench dhcp: building alcor-agent and agentctl (release)");
    util::build_agent(true)?;
    let agentctl = util::try_build(true, "alcor-agentctl", "agentctl");
    super::in_namespaces(TAG, async |prefix| bench(prefix, agentctl.is_ok()).await)
}

/// One simulated client: perfdhcp's MAC, and what every server gives it.
struct Client {
    mac: String,
    ip: String,
    hostname: String,
}

fn clients() -> Vec<Client> {
    (0..CLIENTS)
        .map(|i| Client {
            mac: format!(
                "02:50:{:02x}:{:02x}:{:02x}:{:02x}",
                (i >> 24) & 0xff,
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            ),
            // 10.50.1.1 to 10.50.40.250: clear of the gateway and the VM.
            ip: format!("10.50.{}.{}", 1 + i / 250, 1 + i % 250),
            hostname: format!("client-{i}"),
        })
        .collect()
}

/// A server under test: the VM namespace perfdhcp runs in, the address it
/// sends to, and what keeps the server running.
struct Target {
    name: &'static str,
    server: &'static str,
    // Dropped in order: the server, the VM, the host namespace.
    agent: Option<Agent>,
    process: Option<Server>,
    vm: Netns,
    _host: Netns,
}

impl Target {
    /// The server's process: the agent, or kea-dhcp4 / dnsmasq (which
    /// `ip netns exec` became).
    fn pid(&self) -> Option<u32> {
        match (&self.agent, &self.process) {
            (Some(agent), _) => agent.pid(),
            (None, Some(server)) => Some(server.child.id()),
            (None, None) => None,
        }
    }

    /// CPU seconds the server's process has used so far, all threads.
    fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name, which is in parentheses: utime
        // and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / CLOCK_TICKS_PER_SECOND)
    }
}

/// `getconf CLK_TCK` on Linux (USER_HZ), which /proc/PID/stat counts in.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// A server process in a namespace, killed when dropped.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn spawn(
        netns: &Netns,
        log: PathBuf,
        env: &[(&str, &Path)],
        argv: &[&str],
    ) -> anyhow::Result<Server> {
        let out = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name()])
            .args(argv)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", argv[0]))?;
        Ok(Server { child, log })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn check_running(&mut self, name: &str) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{name} exited ({status}):\n{}", self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The VM side: eth0 with the port's MAC, MTU and address, the gateway's
/// neighbour entry, and the nft rule.
fn configure_vm(vm: &Netns) -> anyhow::Result<()> {
    vm.exec(
        "ip",
        &["addr", "replace", &format!("{VM_IP}/16"), "dev", "eth0"],
    )?;
    vm.exec(
        "ip",
        &[
            "neigh",
            "replace",
            GATEWAY,
            "lladdr",
            GATEWAY_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    let mut nft = Command::new("ip")
        .args(["netns", "exec", vm.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    std::io::Write::write_all(
        nft.stdin.as_mut().context("nft stdin")?,
        NFT_CLIENT_PORT.as_bytes(),
    )?;
    drop(nft.stdin.take());
    let output = nft.wait_with_output()?;
    ensure!(
        output.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A host namespace and a VM namespace joined by a veth: `device` (with
/// the gateway address) on the host side, eth0 in the VM.
fn veth_pair(prefix: &str, tag: &str, device: &str) -> anyhow::Result<(Netns, Netns)> {
    let host = Netns::new(format!("{prefix}-{tag}"))?;
    let vm = Netns::new(format!("{prefix}-vm-{tag}"))?;
    let mtu = MTU.to_string();
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
            "netns",
            vm.name(),
        ],
    )?;
    // The server plays the gateway: its address and MAC.
    host.exec("ip", &["link", "set", device, "address", GATEWAY_MAC])?;
    host.exec(
        "ip",
        &["addr", "add", &format!("{GATEWAY}/16"), "dev", device],
    )?;
    host.exec("ip", &["link", "set", device, "up"])?;
    vm.exec(
        "ip",
        &[
            "link", "set", "eth0", "address", PORT_MAC, "mtu", &mtu, "up",
        ],
    )?;
    configure_vm(&vm)?;
    Ok((host, vm))
}

async fn start_ours(prefix: &str, clients: &[Client]) -> anyhow::Result<Target> {
    let host = Netns::new(format!("{prefix}-ours"))?;
    let vm = Netns::new(format!("{prefix}-vm-ours"))?;
    let agent = Agent::start(&host, AgentOptions::default()).await;
    let pairs: Vec<(String, String)> = clients
        .iter()
        .map(|c| (c.ip.clone(), c.mac.clone()))
        .collect();
    let port = with_address_pairs(
        netns_port(
            "bench-port",
            "vpc-bench",
            "subnet-bench",
            VM_IP,
            PORT_MAC,
            vm.name(),
        ),
        &pairs,
    );
    let mut message = goalstate::v1(
        vec![vpc("vpc-bench", 5001, "10.50.0.0/16")],
        vec![dhcp_subnet(
            "subnet-bench",
            "vpc-bench",
            "10.50.0.0/16",
            GATEWAY,
            &[DNS],
            &[],
        )],
        vec![port],
    );
    message.dhcp_states = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            dhcp_entry(
                &format!("dhcp-{i}"),
                "subnet-bench",
                &c.mac,
                &c.ip,
                &c.hostname,
            )
        })
        .collect();
    let started = Instant::now();
    let reply = agent.push(message).await;
    super::check_reply(&reply, reply.operation_statuses.len(), &agent)?;
    println!(
        "  ours: goal state with 1 port, {CLIENTS} address pairs and {CLIENTS} DHCP entries applied in {:.1?}",
        started.elapsed()
    );
    wait_for(
        "the bench port to be ready",
        Duration::from_secs(30),
        async || {
            let ports = agent.ports().await;
            (ports.len() == 1 && ports[0].phase == alcor_proto::control::PortPhase::Ready as i32)
                .then_some(())
        },
    )
    .await;
    configure_vm(&vm)?;
    Ok(Target {
        name: "alcor-agent responder",
        server: GATEWAY,
        agent: Some(agent),
        process: None,
        vm,
        _host: host,
    })
}

fn start_kea(prefix: &str, dir: &Path, clients: &[Client]) -> anyhow::Result<Target> {
    let (host, vm) = veth_pair(prefix, "kea", "tapkea")?;
    let kea_dir = dir.join("kea");
    std::fs::create_dir_all(&kea_dir)?;
    let reservations: Vec<serde_json::Value> = clients
        .iter()
        .map(|c| json!({"hw-address": c.mac, "ip-address": c.ip, "hostname": c.hostname}))
        .collect();
    let config = json!({"Dhcp4": {
        // Only the bench's veth, in the bench's namespace; UDP sockets, as
        // Kea recommends for relayed traffic.
        "interfaces-config": {"interfaces": ["tapkea"], "dhcp-socket-type": "udp"},
        "lease-database": {
            "type": "memfile",
            "persist": true,
            "name": kea_dir.join("leases4.csv"),
            "lfc-interval": 0
        },
        "multi-threading": {
            "enable-multi-threading": true,
            "thread-pool-size": 2,
            "packet-queue-size": 64
        },
        "valid-lifetime": LEASE_SECONDS,
        "host-reservation-identifiers": ["hw-address"],
        "option-data": [
            {"name": "domain-name-servers", "data": DNS},
            {"name": "domain-name", "data": "openstacklocal"},
            {"name": "interface-mtu", "data": MTU.to_string()}
        ],
        "subnet4": [{
            "id": 1,
            "subnet": "10.50.0.0/16",
            "option-data": [{"name": "routers", "data": GATEWAY}],
            "reservations-out-of-pool": true,
            "reservations": reservations
        }],
        "loggers": [{
            "name": "kea-dhcp4",
            "output_options": [{"output": "stdout"}],
            "severity": "WARN"
        }]
    }});
    let config_file = kea_dir.join("kea-dhcp4.json");
    std::fs::write(&config_file, serde_json::to_string_pretty(&config)?)?;
    let config_path = config_file.display().to_string();
    let lock_dir = format!("KEA_LOCKFILE_DIR={}", kea_dir.display());
    let check = output_within(
        Duration::from_secs(60),
        "env",
        &[
            &lock_dir,
            "ip",
            "netns",
            "exec",
            host.name(),
            "kea-dhcp4",
            "-t",
            &config_path,
        ],
    )?;
    ensure!(
        check.status.success(),
        "kea-dhcp4 -t refused the configuration:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let mut server = Server::spawn(
        &host,
        kea_dir.join("kea.log"),
        &[
            ("KEA_LOCKFILE_DIR", &kea_dir),
            ("KEA_PIDFILE_DIR", &kea_dir),
        ],
        &["kea-dhcp4", "-c", &config_path],
    )?;
    wait_listening(&host, "kea-dhcp4", &mut server)?;
    Ok(Target {
        name: "kea-dhcp4 (memfile, 2 threads)",
        server: GATEWAY,
        agent: None,
        process: Some(server),
        vm,
        _host: host,
    })
}

fn start_dnsmasq(prefix: &str, dir: &Path, clients: &[Client]) -> anyhow::Result<Target> {
    alcor_tests::dhcp::require("dnsmasq", "dnsmasq-base")?;
    let (host, vm) = veth_pair(prefix, "dnsmasq", "tapdnsmasq")?;
    let dnsmasq_dir = dir.join("dnsmasq");
    std::fs::create_dir_all(&dnsmasq_dir)?;
    let mut hosts = String::new();
    for c in clients {
        writeln!(hosts, "{},{},{}", c.mac, c.ip, c.hostname)?;
    }
    let hosts_file = dnsmasq_dir.join("hosts");
    std::fs::write(&hosts_file, hosts)?;
    let arg = |name: &str, value: &Path| format!("--{name}={}", value.display());
    let args = [
        "dnsmasq".to_string(),
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        // DHCP only: no DNS, no ping before offering.
        "--port=0".into(),
        "--no-ping".into(),
        "--quiet-dhcp".into(),
        "--interface=tapdnsmasq".into(),
        "--bind-interfaces".into(),
        format!("--dhcp-range=10.50.0.0,static,255.255.0.0,{LEASE_SECONDS}"),
        arg("dhcp-hostsfile", &hosts_file),
        arg("dhcp-leasefile", &dnsmasq_dir.join("leases")),
        arg("pid-file", &dnsmasq_dir.join("pid")),
        // Its default is 1,000 leases.
        format!("--dhcp-lease-max={}", 2 * CLIENTS),
        "--dhcp-authoritative".into(),
        format!("--dhcp-option=option:router,{GATEWAY}"),
        format!("--dhcp-option=option:dns-server,{DNS}"),
        "--dhcp-option=option:domain-name,openstacklocal".into(),
        format!("--dhcp-option=option:mtu,{MTU}"),
        "--log-facility=-".into(),
        "--user=root".into(),
        "--group=root".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::spawn(&host, dnsmasq_dir.join("dnsmasq.log"), &[], &args)?;
    wait_listening(&host, "dnsmasq", &mut server)?;
    Ok(Target {
        name: "dnsmasq",
        server: GATEWAY,
        agent: None,
        process: Some(server),
        vm,
        _host: host,
    })
}

/// Waits until `program` listens on UDP 67 in `host` (and only there is
/// anything of it: the namespace is the bench's own).
fn wait_listening(host: &Netns, program: &str, server: &mut Server) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        server.check_running(program)?;
        let sockets = host.exec("ss", &["-H", "-l", "-u", "-n", "-p"])?;
        if let Some(line) = sockets
            .lines()
            .find(|l| l.contains(program) && l.contains(":67 "))
        {
            println!(
                "  {program} listens in {} only: {}",
                host.name(),
                line.split_whitespace().collect::<Vec<_>>()[3]
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{program} does not listen on UDP 67 after 30 s:\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One perfdhcp run against `target`; its report. Exit status 3 (some
/// exchanges incomplete) is a result, not a failure.
fn perfdhcp(target: &Target, macs: &Path, args: &[&str], seconds: u64) -> anyhow::Result<String> {
    let macs = macs.display().to_string();
    let mut argv = vec![
        "netns",
        "exec",
        target.vm.name(),
        "perfdhcp",
        "-4",
        "-l",
        "eth0",
        "-M",
        &macs,
        "-s",
        SEED,
    ];
    argv.extend(args);
    argv.push(target.server);
    let output = output_within(Duration::from_secs(seconds + 30), "ip", &argv)?;
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    match output.status.code() {
        Some(0 | 3) => Ok(report),
        _ => bail!(
            "perfdhcp against {} failed ({}): {}\n{report}",
            target.name,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// What a perfdhcp report says about one kind of exchange.
#[derive(Clone, Debug, Default)]
struct Exchange {
    sent: u64,
    received: u64,
    drops_percent: f64,
}

#[derive(Clone, Debug, Default)]
struct Report {
    rate: f64,
    discover_offer: Exchange,
    request_ack: Exchange,
    /// Microseconds from send to receive of each exchange (`-x t`).
    discover_offer_us: Vec<u64>,
    request_ack_us: Vec<u64>,
}

fn parse_report(text: &str) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut section = "";
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Rate:") {
            report.rate = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("rate in {line:?}"))?;
        } else if line.starts_with("***") {
            section = line;
            continue;
        }
        let exchange = if section.contains("Statistics for: DISCOVER-OFFER") {
            &mut report.discover_offer
        } else if section.contains("Statistics for: REQUEST-ACK") {
            &mut report.request_ack
        } else {
            if let Some(times) = line.strip_prefix("sent / received:") {
                let (sent, received) = times
                    .split_once('/')
                    .with_context(|| format!("timestamps in {line:?}"))?;
                let seconds = |s: &str| -> anyhow::Result<f64> {
                    s.trim()
                        .parse()
                        .with_context(|| format!("time in {line:?}"))
                };
                let us = ((seconds(received)? - seconds(sent)?) * 1e6)
                    .round()
                    .max(0.0) as u64;
                if section.contains("Timestamps for packets: DISCOVER-OFFER") {
                    report.discover_offer_us.push(us);
                } else if section.contains("Timestamps for packets: REQUEST-ACK") {
                    report.request_ack_us.push(us);
                }
            }
            continue;
        };
        let number = |prefix: &str| -> Option<f64> {
            line.strip_prefix(prefix)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if let Some(n) = number("sent packets:") {
            exchange.sent = n as u64;
        } else if let Some(n) = number("received packets:") {
            exchange.received = n as u64;
        } else if let Some(n) = number("drops ratio:") {
            exchange.drops_percent = n;
        }
    }
    Ok(report)
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

/// The highest rate perfdhcp was asked for that lost at most
/// `MAX_LOSS_PERCENT` of its DISCOVERs and of its REQUESTs, and what it
/// achieved there.
#[derive(Clone, Debug)]
struct Sustained {
    asked: u32,
    report: Report,
    /// CPU time of the server's process (every thread, user and system)
    /// per completed exchange at that rate.
    cpu_us_per_exchange: Option<f64>,
}

/// A rate tried, and whether it was sustained.
type Step = (u32, bool);

/// What one round measured for one server.
#[derive(Clone, Debug)]
struct Measure {
    /// `None`: even `START_RATE` lost more than allowed.
    sustained: Option<Sustained>,
    steps: Vec<Step>,
    flood: Report,
    latency: Report,
    /// Replies the VM's kernel dropped during the flood because perfdhcp's
    /// socket buffer was full (`Udp: RcvbufErrors` of the VM namespace).
    flood_rcvbuf_errors: u64,
}

impl Measure {
    fn rate(&self) -> f64 {
        self.sustained.as_ref().map_or(0.0, |s| s.report.rate)
    }

    fn p(&self, which: &str, p: f64) -> Option<u64> {
        match which {
            "do" => percentile(&self.latency.discover_offer_us, p),
            _ => percentile(&self.latency.request_ack_us, p),
        }
    }
}

/// `Udp: RcvbufErrors` of `vm`'s namespace.
fn udp_rcvbuf_errors(vm: &Netns) -> anyhow::Result<u64> {
    let snmp = vm.exec("cat", &["/proc/net/snmp"])?;
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "RcvbufErrors")
        .and_then(|(_, value)| value.parse().ok())
        .context("no Udp RcvbufErrors in /proc/net/snmp")
}

/// perfdhcp at `rate` exchanges/s for `STEP_SECONDS`: whether at most
/// `MAX_LOSS_PERCENT` of either message was lost.
fn step(target: &Target, macs: &Path, rate: u32) -> anyhow::Result<(bool, Sustained)> {
    let (rate_arg, period) = (rate.to_string(), STEP_SECONDS.to_string());
    let cpu_before = target.cpu_seconds();
    let report = parse_report(&perfdhcp(
        target,
        macs,
        &["-r", &rate_arg, "-p", &period],
        STEP_SECONDS,
    )?)?;
    let cpu = cpu_before.zip(target.cpu_seconds()).map(|(a, b)| b - a);
    let exchanges = report.rate * STEP_SECONDS as f64;
    let passed = report.rate > 0.0
        && report.discover_offer.drops_percent <= MAX_LOSS_PERCENT
        && report.request_ack.drops_percent <= MAX_LOSS_PERCENT;
    Ok((
        passed,
        Sustained {
            asked: rate,
            cpu_us_per_exchange: cpu
                .filter(|_| exchanges > 0.0)
                .map(|cpu| cpu * 1e6 / exchanges),
            report,
        },
    ))
}

/// The sustained rate: doubling from `START_RATE` until a rate loses too
/// much (or perfdhcp cannot send that fast), then `BISECTIONS` halvings of
/// the interval between the last rate that passed and the first that
/// failed. At most 10 + `BISECTIONS` runs.
fn sustained(target: &Target, macs: &Path) -> anyhow::Result<(Option<Sustained>, Vec<Step>)> {
    let mut steps = Vec::new();
    let mut passed: Option<Sustained> = None;
    let mut failed = None;
    let mut rate = START_RATE;
    while rate <= MAX_RATE {
        let (ok, result) = step(target, macs, rate)?;
        steps.push((rate, ok));
        if !ok {
            failed = Some(rate);
            break;
        }
        // perfdhcp could not send as fast as asked: it is the limit.
        let generator_bound = result.report.rate < 0.9 * f64::from(rate);
        passed = Some(result);
        if generator_bound {
            return Ok((passed, steps));
        }
        rate *= 2;
    }
    if let (Some(mut low), Some(mut high)) = (passed.as_ref().map(|s| s.asked), failed) {
        for _ in 0..BISECTIONS {
            let middle = (low + high) / 2;
            let (ok, result) = step(target, macs, middle)?;
            steps.push((middle, ok));
            if ok {
                low = middle;
                passed = Some(result);
            } else {
                high = middle;
            }
        }
    }
    Ok((passed, steps))
}

fn measure(target: &Target, macs: &Path) -> anyhow::Result<Measure> {
    let (sustained, steps) = sustained(target, macs)?;
    let period = FLOOD_SECONDS.to_string();
    let before = udp_rcvbuf_errors(&target.vm)?;
    let flood = parse_report(&perfdhcp(target, macs, &["-p", &period], FLOOD_SECONDS)?)?;
    let flood_rcvbuf_errors = udp_rcvbuf_errors(&target.vm)? - before;
    let (rate, period) = (LATENCY_RATE.to_string(), LATENCY_SECONDS.to_string());
    let latency = parse_report(&perfdhcp(
        target,
        macs,
        &["-r", &rate, "-p", &period, "-x", "t"],
        LATENCY_SECONDS,
    )?)?;
    Ok(Measure {
        sustained,
        steps,
        flood,
        latency,
        flood_rcvbuf_errors,
    })
}

async fn bench(prefix: &str, agentctl: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("alcor-bench-dhcp-")
        .tempdir()?;
    let clients = clients();
    let macs = dir.path().join("macs");
    std::fs::write(
        &macs,
        clients
            .iter()
            .map(|c| format!("{}\n", c.mac))
            .collect::<String>(),
    )?;

    println!("setting up (not timed)");
    let mut targets = vec![start_ours(prefix, &clients).await?];
    targets.push(start_kea(prefix, dir.path(), &clients)?);
    let dnsmasq_missing = match start_dnsmasq(prefix, dir.path(), &clients) {
        Ok(target) => {
            targets.push(target);
            None
        }
        Err(error) => {
            println!("  dnsmasq left out: {error:#}");
            Some(format!("{error:#}"))
        }
    };
    // One short exchange each, so that a broken setup fails early.
    for target in &targets {
        let report = perfdhcp(target, &macs, &["-n", "20", "-r", "100"], 5)
            .and_then(|text| parse_report(&text))
            .and_then(|report| {
                ensure!(report.rate > 0.0, "perfdhcp completed no exchange");
                Ok(report)
            })
            .with_context(|| {
                let log = target
                    .process
                    .as_ref()
                    .map(Server::log_tail)
                    .unwrap_or_default();
                format!("{} does not answer perfdhcp\n{log}", target.name)
            })?;
        println!(
            "  {} answers perfdhcp ({} of 20 exchanges)",
            target.name, report.request_ack.received
        );
    }

    let mut rounds: Vec<Vec<Measure>> = vec![Vec::new(); targets.len()];
    for round in 1..=ROUNDS {
        println!("round {round} of {ROUNDS}");
        for (target, runs) in targets.iter_mut().zip(&mut rounds) {
            if let Some(server) = target.process.as_mut() {
                server.check_running(target.name)?;
            }
            let m = measure(target, &macs)?;
            let steps: Vec<String> = m
                .steps
                .iter()
                .map(|(rate, ok)| format!("{rate}{}", if *ok { "" } else { "✗" }))
                .collect();
            let cpu = m
                .sustained
                .as_ref()
                .and_then(|s| s.cpu_us_per_exchange)
                .map_or("-".into(), |cpu| format!("{cpu:.0} µs CPU/exchange"));
            println!(
                "  {:<30} sustained {:>6.0}/s, {cpu} (tried {}); flood {:.0}/s ({:.0} \
                 DISCOVERs/s sent, {:.1}% and {:.1}% lost, {} replies overflowed perfdhcp's \
                 socket); p99 D-O {} R-A {}",
                target.name,
                m.rate(),
                steps.join(" "),
                m.flood.rate,
                m.flood.discover_offer.sent as f64 / FLOOD_SECONDS as f64,
                m.flood.discover_offer.drops_percent,
                m.flood.request_ack.drops_percent,
                m.flood_rcvbuf_errors,
                fmt_us(m.p("do", 99.0)),
                fmt_us(m.p("ra", 99.0)),
            );
            runs.push(m);
        }
    }
    let summaries: Vec<Summary> = targets
        .iter()
        .zip(rounds)
        .map(|(target, runs)| Summary::of(target.name, runs))
        .collect();
    if let Some(agent) = targets[0].agent.as_ref().filter(|_| agentctl) {
        let counters = agent.agentctl(&["dhcp"]);
        println!("\nthe agent's counters after the run (agentctl dhcp):");
        for line in String::from_utf8_lossy(&counters.stdout).lines() {
            println!("  {line}");
        }
    }
    report(&summaries, dnsmasq_missing.as_deref())
}

/// The median of each figure over a server's rounds.
struct Summary {
    name: &'static str,
    rate: f64,
    cpu_us: Option<f64>,
    flood: f64,
    flood_sent_per_second: f64,
    flood_rcvbuf_errors: f64,
    flood_loss: (f64, f64),
    /// p50 and p99 of DISCOVER→OFFER and of REQUEST→ACK, µs.
    latency: [Option<f64>; 4],
    latency_loss: f64,
    runs: Vec<Measure>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

impl Summary {
    fn of(name: &'static str, runs: Vec<Measure>) -> Summary {
        let each =
            |f: &dyn Fn(&Measure) -> Option<f64>| median(runs.iter().filter_map(f).collect());
        let percentile_of = |which: &'static str, p: f64| {
            each(&move |m: &Measure| m.p(which, p).map(|us| us as f64))
        };
        Summary {
            name,
            rate: each(&|m| Some(m.rate())).unwrap_or(0.0),
            cpu_us: each(&|m| m.sustained.as_ref()?.cpu_us_per_exchange),
            flood: each(&|m| Some(m.flood.rate)).unwrap_or(0.0),
            flood_sent_per_second: each(&|m| {
                Some(m.flood.discover_offer.sent as f64 / FLOOD_SECONDS as f64)
            })
            .unwrap_or(0.0),
            flood_rcvbuf_errors: each(&|m| Some(m.flood_rcvbuf_errors as f64)).unwrap_or(0.0),
            flood_loss: (
                each(&|m| Some(m.flood.discover_offer.drops_percent)).unwrap_or(0.0),
                each(&|m| Some(m.flood.request_ack.drops_percent)).unwrap_or(0.0),
            ),
            latency: [
                percentile_of("do", 50.0),
                percentile_of("do", 99.0),
                percentile_of("ra", 50.0),
                percentile_of("ra", 99.0),
            ],
            latency_loss: each(&|m| Some(m.latency.discover_offer.drops_percent)).unwrap_or(0.0),
            runs,
        }
    }

    fn json(&self, ours: &Summary) -> serde_json::Value {
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|m| {
                json!({
                    "sustained": m.sustained.as_ref().map(|s| json!({
                        "exchanges_per_second": s.report.rate,
                        "asked_rate": s.asked,
                        "drops_percent_discover_offer": s.report.discover_offer.drops_percent,
                        "drops_percent_request_ack": s.report.request_ack.drops_percent,
                        "server_cpu_us_per_exchange": s.cpu_us_per_exchange,
                    })),
                    "rates_tried": m.steps.iter()
                        .map(|(rate, ok)| json!({"rate": rate, "sustained": ok}))
                        .collect::<Vec<_>>(),
                    "flood": {
                        "exchanges_per_second": m.flood.rate,
                        "discovers_sent": m.flood.discover_offer.sent,
                        "offers_received": m.flood.discover_offer.received,
                        "requests_sent": m.flood.request_ack.sent,
                        "acks_received": m.flood.request_ack.received,
                        "drops_percent_discover_offer": m.flood.discover_offer.drops_percent,
                        "drops_percent_request_ack": m.flood.request_ack.drops_percent,
                        "replies_overflowing_perfdhcp_socket": m.flood_rcvbuf_errors,
                    },
                    "latency_us": {
                        "samples_discover_offer": m.latency.discover_offer_us.len(),
                        "samples_request_ack": m.latency.request_ack_us.len(),
                        "p50_discover_offer": m.p("do", 50.0),
                        "p99_discover_offer": m.p("do", 99.0),
                        "p50_request_ack": m.p("ra", 50.0),
                        "p99_request_ack": m.p("ra", 99.0),
                        "drops_percent_discover_offer": m.latency.discover_offer.drops_percent,
                    },
                })
            })
            .collect();
        json!({
            "server": self.name,
            "median": {
                "sustained_exchanges_per_second": self.rate,
                "ratio_ours_to_this": (self.rate > 0.0).then(|| ours.rate / self.rate),
                "server_cpu_us_per_exchange": self.cpu_us,
                "flood_exchanges_per_second": self.flood,
                "flood_ratio_ours_to_this": (self.flood > 0.0).then(|| ours.flood / self.flood),
                "latency_us": {
                    "p50_discover_offer": self.latency[0],
                    "p99_discover_offer": self.latency[1],
                    "p50_request_ack": self.latency[2],
                    "p99_request_ack": self.latency[3],
                },
            },
            "rounds": runs,
        })
    }
}

fn fmt_us(us: Option<u64>) -> String {
    match us {
        None => "-".into(),
        Some(us) if us >= 10_000 => format!("{:.1} ms", us as f64 / 1000.0),
        Some(us) => format!("{us} µs"),
    }
}

fn fmt_ratio(ours: f64, peer: f64) -> String {
    if peer > 0.0 {
        format!("{:.2}x", ours / peer)
    } else {
        "-".into()
    }
}

fn report(summaries: &[Summary], dnsmasq_missing: Option<&str>) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ours = &summaries[0];
    println!(
        "\nbench dhcp: perfdhcp with {CLIENTS} client MACs, {cores} cores, release build, \
         medians of {ROUNDS} alternating rounds\n\
         4-way/s: the highest rate perfdhcp sustained ({STEP_SECONDS} s runs) losing at most \
         {MAX_LOSS_PERCENT}% of DISCOVERs and of REQUESTs\n\
         CPU/xchg: the server process's CPU time (all threads) per exchange at that rate\n\
         flood: perfdhcp sending as fast as it can for {FLOOD_SECONDS} s (completed DORAs/s)\n\
         latency: perfdhcp -r {LATENCY_RATE} -p {LATENCY_SECONDS} -x t, percentiles of its \
         per-exchange send/receive timestamps\n"
    );
    println!(
        "{:<30} {:>8} {:>9} {:>9} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "server",
        "4-way/s",
        "ours/peer",
        "CPU/xchg",
        "flood/s",
        "ours/peer",
        "p50 D-O",
        "p99 D-O",
        "p50 R-A",
        "p99 R-A"
    );
    let us = |v: Option<f64>| fmt_us(v.map(|v| v.round() as u64));
    for summary in summaries {
        println!(
            "{:<30} {:>8.0} {:>9} {:>9} {:>8.0} {:>9} {:>8} {:>8} {:>8} {:>8}{}",
            summary.name,
            summary.rate,
            fmt_ratio(ours.rate, summary.rate),
            summary
                .cpu_us
                .map_or("-".into(), |cpu| format!("{cpu:.0} µs")),
            summary.flood,
            fmt_ratio(ours.flood, summary.flood),
            us(summary.latency[0]),
            us(summary.latency[1]),
            us(summary.latency[2]),
            us(summary.latency[3]),
            if summary.latency_loss > MAX_LOSS_PERCENT {
                format!(
                    "  (overloaded at {LATENCY_RATE}/s: {:.0}% lost)",
                    summary.latency_loss
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "\nflood against ours: perfdhcp sent {:.0} DISCOVERs/s, lost {:.1}% of them and {:.1}% of \
         its REQUESTs; {:.0} replies overflowed perfdhcp's own socket buffer (the responder \
         dropped none: see its counters): past the sustained rate the load generator, on the \
         same {cores} cores, is the limit, not the responder (compare the CPU per exchange)",
        ours.flood_sent_per_second, ours.flood_loss.0, ours.flood_loss.1, ours.flood_rcvbuf_errors,
    );
    if summaries.iter().any(|s| s.name == "dnsmasq") {
        println!(
            "dnsmasq rewrites its whole lease file on every change, which bounds it with \
             {CLIENTS} clients"
        );
    }
    if let Some(why) = dnsmasq_missing {
        println!("dnsmasq: not measured: {why}");
    }
    println!(
        "every server: relayed by perfdhcp (giaddr {VM_IP}), source port rewritten to 68 by nft \
         in the VM namespace; ours through the agent's port program, the peers on a plain veth"
    );

    super::write_json(
        "dhcp",
        json!({
            "clients": CLIENTS,
            "rounds": ROUNDS,
            "load_generator": "perfdhcp (kea-admin), -M with the client MACs",
            "throughput_method": format!(
                "highest perfdhcp -r rate with at most {MAX_LOSS_PERCENT}% of DISCOVERs and \
                 REQUESTs lost, doubling from {START_RATE} then {BISECTIONS} bisections, \
                 {STEP_SECONDS} s per rate"
            ),
            "latency_method": format!(
                "perfdhcp -r {LATENCY_RATE} -p {LATENCY_SECONDS} -x t: per-exchange timestamps, \
                 nearest-rank percentiles, median over rounds"
            ),
            "servers": summaries.iter().map(|s| s.json(ours)).collect::<Vec<_>>(),
            "dnsmasq_not_measured": dnsmasq_missing,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running: perfdhcp -4 -l eth0 -p 5 10.50.0.1
Scenario: basic.
***Rate statistics***
Rate: 6937.29 4-way exchanges/second
***Malformed Packets***
Malformed packets: 0
***Statistics for: DISCOVER-OFFER***
sent packets: 109861
received packets: 50503
drops: 59358
drops ratio: 54.0301 %
orphans: 0

min delay: 0.062 ms
***Statistics for: REQUEST-ACK***
sent packets: 50503
received packets: 34687
drops ratio: 31.3 %
***Timestamps for packets: DISCOVER-OFFER***
sent / received: 000000.200143 / 000000.200555
sent / received: 000001.999990 / 000002.000100
***Timestamps for packets: REQUEST-ACK***
sent / received: 000000.000994 / 000000.001261
";

    #[test]
    fn perfdhcp_reports_are_parsed() {
        let report = parse_report(REPORT).unwrap();
        assert_eq!(report.rate, 6937.29);
        assert_eq!(report.discover_offer.sent, 109_861);
        assert_eq!(report.discover_offer.received, 50_503);
        assert_eq!(report.discover_offer.drops_percent, 54.0301);
        assert_eq!(report.request_ack.received, 34_687);
        assert_eq!(report.request_ack.drops_percent, 31.3);
        assert_eq!(report.discover_offer_us, [412, 110]);
        assert_eq!(report.request_ack_us, [267]);
    }

    #[test]
    fn a_report_without_exchanges_has_rate_zero() {
        let report = parse_report("Rate: 0 4-way exchanges/second\ndrops ratio: -nan %\n");
        assert_eq!(report.unwrap().rate, 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 99.0), Some(99));
        assert_eq!(percentile(&values, 50.0), Some(50));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 99.0), None);
    }

    #[test]
    fn clients_have_distinct_macs_and_addresses_in_the_subnet() {
        let clients = clients();
        let macs: std::collections::HashSet<&str> =
            clients.iter().map(|c| c.mac.as_str()).collect();
        let ips: std::collections::HashSet<&str> = clients.iter().map(|c| c.ip.as_str()).collect();
        assert_eq!((macs.len(), ips.len()), (CLIENTS, CLIENTS));
        assert!(!ips.contains(GATEWAY) && !ips.contains(VM_IP));
        assert_eq!(clients.last().unwrap().ip, "10.50.40.250");
    }
}
