//! `cargo xtask demo`: the whole system doing its main job with real
//! processes, driven by the unmodified `openstack` CLI.
//!
//! A fabric namespace whose bridge is the underlay, an `alcor-controller`
//! in its own namespace on it, two host namespaces with an agent each that
//! registers with the controller (mutual TLS both ways, on underlay
//! addresses), VM namespaces whose ports the CLI creates and binds to the
//! hosts, the agents plugging them and answering their DHCP, VMs pinging
//! each other on one host and across hosts over VXLAN (in a subnet and
//! through a router), and an agent killed with SIGKILL and restarted with
//! an empty state directory, getting everything back from the controller.
//!
//! The demo is a list of steps (`STEPS`): to show more, add a method and a
//! line. Everything is removed at the end, on failure, panic or Ctrl-C too.

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant},
};

use alcor_proto::{
    control::{ListRequest, Port, PortPhase},
    schema::{GoalState, goal_state_provisioner_client::GoalStateProvisionerClient},
};
use alcor_tests::{
    Agent, Netns,
    agent::connect_in,
    controller::{Controller, StoreKind},
    dhcp::{ClientDir, Dhclient, Eth0, UDHCPC_SCRIPT, dhcpcd_once, udhcpc_once},
    openstack::Cli,
    pki::{CertFiles, Pki},
    topology::Topology,
    topology::namespaces_with_prefix,
    traffic, wait_for,
};
use anyhow::{Context, anyhow, bail, ensure};
use futures::{FutureExt, future::LocalBoxFuture};
use serde_json::Value;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::{setup, util};

/// Namespaces of the demo are called `xdemo<pid>-…`.
const TAG: &str = "xdemo";

/// (host, underlay address) of the hosts that run an agent.
const HOSTS: &[(&str, &str)] = &[("host1", "198.18.0.1/24"), ("host2", "198.18.0.2/24")];
/// The controller's namespace on the fabric.
const CONTROLLER: (&str, &str) = ("ctl", "198.18.0.100/24");
const VMS_PER_HOST: usize = 2;

const NETWORK: &str = "demo-net";
/// (name, CIDR, gateway) of the network's subnets, joined by `ROUTER`.
const SUBNET: (&str, &str, &str) = ("demo-subnet", "10.0.1.0/24", "10.0.1.1");
const SUBNET2: (&str, &str, &str) = ("demo-subnet-2", "10.0.2.0/24", "10.0.2.1");
const ROUTER: &str = "demo-router";
/// The subnet's DNS server, handed out by DHCP.
const DNS: &str = "10.0.0.2";
/// The DHCP clients the VMs run, in turn.
const DHCP_CLIENTS: &[&str] = &["udhcpc", "dhclient", "dhcpcd"];

/// How long any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agents may take to converge on what the controller says.
const CONVERGE: Duration = Duration::from_secs(30);

type StepFn = for<'a> fn(&'a mut Demo) -> LocalBoxFuture<'a, anyhow::Result<()>>;

/// The demo, in order: (what a human is told, what runs).
const STEPS: &[(&str, StepFn)] = &[
    (
        "Underlay: a fabric namespace with a Linux bridge, two hosts and a controller on 198.18.0.0/24",
        |d| Box::pin(d.underlay()),
    ),
    (
        "Throwaway PKI (rcgen): a CA, a certificate per agent and one for the controller",
        |d| Box::pin(d.pki()),
    ),
    (
        "alcor-controller in its namespace: the Neutron API on :9696, agents registering on :9697 (mTLS)",
        |d| Box::pin(d.controller()),
    ),
    (
        "An alcor-agent in each host namespace, serving goal state with mutual TLS and registering with the controller",
        |d| Box::pin(d.agents()),
    ),
    (
        "VM namespaces, two per host, still without a network device",
        |d| Box::pin(d.vms()),
    ),
    (
        "The openstack CLI: a network with two subnets joined by a router, a port per VM bound to its host",
        |d| Box::pin(d.create_resources()),
    ),
    (
        "The controller pushed each host its goal state: every port ACTIVE",
        |d| Box::pin(d.active()),
    ),
    ("What each agent reports (agentctl ports)", |d| {
        Box::pin(d.agentctl_ports())
    }),
    (
        "What each VM sees: its eth0, with the port's MAC and the underlay MTU minus VXLAN",
        |d| Box::pin(d.vm_view()),
    ),
    (
        "DHCP: each VM runs a real client (udhcpc, dhclient, dhcpcd in turn) and gets its address, MTU and routes from its host's agent",
        |d| Box::pin(d.dhcp()),
    ),
    (
        "Datapath: VMs on the same host ping each other and their gateway through the eBPF port programs",
        |d| Box::pin(d.ping()),
    ),
    (
        "Overlay: VMs on different hosts ping each other over VXLAN, in the subnet and through the router",
        |d| Box::pin(d.overlay()),
    ),
    (
        "Crash and loss: kill -9 the agent on host1, empty its state directory, start it again: the controller gives it everything back",
        |d| Box::pin(d.restart()),
    ),
];

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    println!("demo: building alcor-agent, alcor-controller and agentctl");
    util::build_agent(false)?;
    util::run_status(util::cargo().args(["build", "--quiet", "--bin", "alcor-controller"]))?;
    let agentctl = util::try_build(false, "alcor-agentctl", "agentctl");
    util::sweep_leftovers(TAG)?;

    let runtime = tokio::runtime::Runtime::new()?;
    let mut demo = Demo::new(agentctl);
    println!("\nAlcor-in-Rust demo (namespaces {}-*)", demo.prefix);
    let outcome = runtime.block_on(async {
        let steps = std::panic::AssertUnwindSafe(demo.run_steps()).catch_unwind();
        tokio::select! {
            result = steps => result.unwrap_or_else(|panic| Err(anyhow!("panicked: {}", panic_message(&panic)))),
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    });
    if let Err(error) = &outcome {
        println!("\ndemo FAILED: {error:#}");
        if let Some(log) = demo.agent_logs() {
            println!("agent logs (tail):\n{log}");
        }
        if let Some(controller) = &demo.controller {
            let log = controller.log();
            let lines: Vec<&str> = log.lines().collect();
            println!(
                "controller log (tail):\n    {}",
                lines[lines.len().saturating_sub(10)..].join("\n    ")
            );
        }
    }
    let prefix = demo.prefix.clone();
    println!("\nCleaning up: agents, controller, VM namespaces, hosts, fabric, certificates");
    drop(demo);
    drop(runtime);
    let left = namespaces_with_prefix(&format!("{prefix}-"))?;
    ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    println!("  no namespace of the demo is left (`ip netns list` has none of {prefix}-*)");
    outcome
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

struct Demo {
    prefix: String,
    /// Whether agentctl could be built, and why not.
    agentctl: Result<(), String>,
    // Fields drop in order: agents (killed, pins removed) and the
    // controller before the VMs, the hosts and the fabric; certificates
    // last.
    agents: BTreeMap<String, Agent>,
    controller: Option<Controller>,
    cli: Option<Cli>,
    vms: Vec<Vm>,
    topology: Option<Topology>,
    pki: Option<Pki>,
    server_certs: BTreeMap<String, CertFiles>,
    controller_cert: Option<CertFiles>,
}

struct Vm {
    host: String,
    /// The port's id, given by the controller.
    port_id: String,
    /// Its subnet: `SUBNET` or `SUBNET2`.
    subnet: (&'static str, &'static str, &'static str),
    /// Its port's address and MAC, allocated by the controller.
    ip: String,
    mac: String,
    netns: Netns,
}

impl Vm {
    /// `h1-vm1`: the namespace name without the demo's prefix.
    fn short_name(&self) -> &str {
        self.netns
            .name()
            .split_once('-')
            .map_or(self.netns.name(), |(_, name)| name)
    }

    /// Three pings to `target`, which must all be answered.
    fn ping(&self, target: &str) -> anyhow::Result<traffic::Ping> {
        let ping = traffic::ping(
            &self.netns,
            target,
            &["-c", "3", "-i", "0.2", "-W", "2"],
            REQUEST_TIMEOUT,
        )?;
        ensure!(
            ping.all_answered(),
            "{} could not ping {target}: {}",
            self.short_name(),
            ping.summary
        );
        Ok(ping)
    }
}

/// A ping's round-trip summary line.
fn rtt(ping: &traffic::Ping) -> &str {
    ping.summary.lines().last().unwrap_or_default()
}

impl Demo {
    fn new(agentctl: Result<(), String>) -> Demo {
        Demo {
            prefix: util::run_prefix(TAG),
            agentctl,
            agents: BTreeMap::new(),
            controller: None,
            cli: None,
            vms: Vec::new(),
            topology: None,
            pki: None,
            server_certs: BTreeMap::new(),
            controller_cert: None,
        }
    }

    async fn run_steps(&mut self) -> anyhow::Result<()> {
        for (n, (title, step)) in STEPS.iter().enumerate() {
            println!("\n[{}/{}] {title}", n + 1, STEPS.len());
            let started = Instant::now();
            step(self)
                .await
                .with_context(|| format!("step {}: {title}", n + 1))?;
            say(format!("({:.0?})", started.elapsed()));
        }
        println!("\nThe demo ran to the end.");
        Ok(())
    }

    fn topology(&self) -> anyhow::Result<&Topology> {
        self.topology.as_ref().context("no topology yet")
    }

    fn agent(&self, host: &str) -> anyhow::Result<&Agent> {
        self.agents
            .get(host)
            .with_context(|| format!("no agent on {host}"))
    }

    async fn underlay(&mut self) -> anyhow::Result<()> {
        let mut topology = Topology::new(&self.prefix)?;
        say(format!(
            "fabric {} with bridge br0 (nothing in the root namespace)",
            topology.fabric().name()
        ));
        for (name, address) in HOSTS.iter().chain([&CONTROLLER]) {
            let host = topology.add_host(name, address)?;
            say(format!(
                "{:<6} namespace {:<22} underlay0 {address}",
                name,
                host.netns().name()
            ));
        }
        let ctl = topology.host(CONTROLLER.0);
        for (name, _) in HOSTS {
            let ip = topology.host(name).underlay_ip().to_string();
            ctl.netns()
                .exec("ping", &["-c", "1", "-W", "2", "-q", &ip])
                .with_context(|| format!("controller cannot reach {name} over the fabric"))?;
            say(format!("ping from the controller to {name} ({ip}): ok"));
        }
        self.topology = Some(topology);
        Ok(())
    }

    async fn pki(&mut self) -> anyhow::Result<()> {
        let pki = Pki::new("alcor demo")?;
        let ctl_ip = self.topology()?.host(CONTROLLER.0).underlay_ip();
        // One certificate serves the controller both ways: to the agents
        // that register, and towards the agents it dials.
        self.controller_cert = Some(pki.server("controller", ctl_ip.into())?);
        say(format!(
            "in {}: ca.pem, controller.pem (server and client auth, valid for IP {ctl_ip})",
            pki.dir().display()
        ));
        for (name, _) in HOSTS {
            let ip = self.topology()?.host(name).underlay_ip();
            self.server_certs
                .insert(name.to_string(), pki.server(name, ip.into())?);
            say(format!(
                "{name}.pem: server and client auth, valid for IP {ip}"
            ));
        }
        self.pki = Some(pki);
        Ok(())
    }

    fn cli(&self) -> anyhow::Result<&Cli> {
        self.cli.as_ref().context("no controller yet")
    }

    /// `openstack ARGS`, shown as an operator types it, with its output.
    fn openstack(&self, args: &[&str]) -> anyhow::Result<String> {
        say(format!("$ openstack {}", args.join(" ")));
        let output = self.cli()?.run(args)?;
        ensure!(
            output.success(),
            "openstack {} failed: {}",
            args.join(" "),
            output.stderr.trim()
        );
        for line in output.stdout.lines() {
            say(format!("  {line}"));
        }
        Ok(output.stdout)
    }

    /// `openstack ARGS -f json`, quietly.
    fn openstack_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        self.cli()?.json(args)
    }

    async fn controller(&mut self) -> anyhow::Result<()> {
        let pki = self.pki.as_ref().context("no PKI")?;
        let cert = self.controller_cert.as_ref().context("no certificate")?;
        let ctl = self.topology()?.host(CONTROLLER.0);
        let tls = pki.controller_args(cert);
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        let controller =
            Controller::start_in(ctl.netns(), ctl.underlay_ip(), StoreKind::Embedded, &tls)?;
        say(format!(
            "alcor-controller pid {} in {}: API {}, agents {} (mutual TLS), embedded store",
            controller.pid().unwrap_or_default(),
            ctl.netns().name(),
            controller.endpoint(),
            controller.grpc_endpoint().replace("http://", "https://"),
        ));
        self.cli = Some(Cli::new(&controller.endpoint())?.in_netns(ctl.netns().name()));
        say(format!(
            "the CLI runs in that namespace: openstack --os-auth-type none --os-endpoint {}",
            controller.endpoint()
        ));
        self.controller = Some(controller);
        Ok(())
    }

    async fn agents(&mut self) -> anyhow::Result<()> {
        let topology = self.topology.as_ref().context("no topology")?;
        let pki = self.pki.as_ref().context("no PKI")?;
        let registry = self
            .controller
            .as_ref()
            .context("no controller")?
            .grpc_endpoint()
            .replace("http://", "https://");
        for (name, _) in HOSTS {
            let host = topology.host(name);
            let mut options = host.agent_options();
            let server = self.server_certs.get(*name).context("no certificate")?;
            options.args.extend(pki.agent_args(server));
            options
                .args
                .extend(["--controller", &registry, "--host-id", name].map(String::from));
            let agent = Agent::start(host.netns(), options).await;
            say(format!(
                "{name}: alcor-agent pid {} listening on {} (mTLS), control socket {}, --controller {registry}",
                agent.pid().unwrap_or_default(),
                agent.grpc_listen(),
                agent.control_socket().display()
            ));
            self.agents.insert(name.to_string(), agent);
        }
        // A client without a certificate is turned away.
        let ca_only = ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(std::fs::read(pki.ca_file())?),
        );
        let host = topology.host(HOSTS[0].0);
        let refused = match self.connect(host.grpc_addr(), ca_only).await {
            Err(error) => format!("{error:#}"),
            Ok(mut client) => match tokio::time::timeout(
                REQUEST_TIMEOUT,
                client.push_network_resource_states(GoalState::default()),
            )
            .await
            {
                Ok(Ok(_)) => bail!("the agent accepted a client without a certificate"),
                Ok(Err(status)) => status.to_string(),
                Err(_) => bail!("timed out trying a client without a certificate"),
            },
        };
        let reason = refused
            .split_once("alert: ")
            .map_or("the handshake is cut", |(_, alert)| {
                alert.split(['"', ' ', '}']).next().unwrap_or(alert)
            });
        say(format!(
            "a goal-state client without a certificate is refused (TLS: {reason})"
        ));
        let cli = self.cli()?;
        wait_for("both agents registered and alive", CONVERGE, async || {
            (cli.alive_agents().ok()? == HOSTS.len()).then_some(())
        })
        .await;
        self.openstack(&["network", "agent", "list"])?;
        Ok(())
    }

    async fn vms(&mut self) -> anyhow::Result<()> {
        for (h, (host, _)) in HOSTS.iter().enumerate() {
            for v in 1..=VMS_PER_HOST {
                let netns = Netns::new(format!("{}-h{}-vm{v}", self.prefix, h + 1))?;
                traffic::disable_ipv6(&netns)?;
                // The last VM of the last host is in the other subnet.
                let subnet = if h + 1 == HOSTS.len() && v == VMS_PER_HOST {
                    SUBNET2
                } else {
                    SUBNET
                };
                say(format!(
                    "{host}: VM namespace {} (to be in {})",
                    netns.name(),
                    subnet.0
                ));
                self.vms.push(Vm {
                    host: host.to_string(),
                    port_id: String::new(),
                    subnet,
                    ip: String::new(),
                    mac: String::new(),
                    netns,
                });
            }
        }
        Ok(())
    }

    async fn create_resources(&mut self) -> anyhow::Result<()> {
        self.openstack(&[
            "network",
            "create",
            NETWORK,
            "-c",
            "id",
            "-c",
            "mtu",
            "-c",
            "provider:segmentation_id",
        ])?;
        for (name, cidr, _) in [SUBNET, SUBNET2] {
            self.openstack(&[
                "subnet",
                "create",
                "--network",
                NETWORK,
                "--subnet-range",
                cidr,
                "--dns-nameserver",
                DNS,
                name,
                "-c",
                "id",
                "-c",
                "cidr",
                "-c",
                "gateway_ip",
                "-c",
                "allocation_pools",
            ])?;
        }
        self.openstack(&["router", "create", ROUTER, "-c", "id", "-c", "status"])?;
        for (name, _, _) in [SUBNET, SUBNET2] {
            self.openstack(&["router", "add", "subnet", ROUTER, name])?;
        }
        let mut ports = Vec::new();
        for vm in &self.vms {
            let name = vm.short_name().to_string();
            let profile = format!("netns={}", vm.netns.name());
            let args = [
                "port",
                "create",
                "--network",
                NETWORK,
                "--fixed-ip",
                &format!("subnet={}", vm.subnet.0),
                "--host",
                &vm.host,
                "--binding-profile",
                &profile,
                &name,
            ];
            say(format!("$ openstack {}", args.join(" ")));
            let port = self.openstack_json(&args)?;
            let text = |key: &str| port[key].as_str().unwrap_or_default().to_string();
            let ip = port["fixed_ips"][0]["ip_address"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            say(format!(
                "  {name}: id {}, {ip}, {}, status {}",
                text("id"),
                text("mac_address"),
                text("status")
            ));
            ports.push((text("id"), ip, text("mac_address")));
        }
        for (vm, (id, ip, mac)) in self.vms.iter_mut().zip(ports) {
            (vm.port_id, vm.ip, vm.mac) = (id, ip, mac);
        }
        Ok(())
    }

    async fn active(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let names: Vec<String> = self
            .vms
            .iter()
            .map(|vm| vm.short_name().to_string())
            .collect();
        wait_for("every VM's port ACTIVE", CONVERGE, async || {
            let ports = self.openstack_json(&["port", "list"]).ok()?;
            let active = ports
                .as_array()?
                .iter()
                .filter(|port| {
                    port["Status"] == "ACTIVE"
                        && port["Name"]
                            .as_str()
                            .is_some_and(|name| names.iter().any(|n| n == name))
                })
                .count();
            (active == names.len()).then_some(())
        })
        .await;
        say(format!(
            "(every port ACTIVE within {:.1?} of asking; the agents answered the controller's pushes)",
            started.elapsed()
        ));
        self.openstack(&[
            "port",
            "list",
            "--long",
            "-c",
            "Name",
            "-c",
            "Fixed IP Addresses",
            "-c",
            "Status",
            "-c",
            "Device Owner",
        ])?;
        Ok(())
    }

    async fn connect(
        &self,
        addr: std::net::SocketAddr,
        tls: ClientTlsConfig,
    ) -> anyhow::Result<GoalStateProvisionerClient<Channel>> {
        let ctl = self.topology()?.host(CONTROLLER.0);
        let channel = timeout(connect_in(&ctl.netns().path(), addr, Some(tls))).await??;
        Ok(GoalStateProvisionerClient::new(channel))
    }

    async fn agentctl_ports(&mut self) -> anyhow::Result<()> {
        for (name, _) in HOSTS {
            let agent = self.agent(name)?;
            match &self.agentctl {
                Ok(()) => {
                    say(format!(
                        "{name}: agentctl --socket {} ports",
                        agent.control_socket().display()
                    ));
                    let output = agent.agentctl(&["ports"]);
                    for line in String::from_utf8_lossy(&output.stdout).lines() {
                        say(format!("  {line}"));
                    }
                    ensure!(
                        output.status.success(),
                        "agentctl failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
                }
                Err(why) => {
                    say(format!(
                        "{name}: agentctl is not built yet ({why}); the agent's control socket says:"
                    ));
                    for port in list_ports(agent).await? {
                        say(format!(
                            "  {:<14} {:<15} ifindex {:<4} {:<6} {} mtu {} netns {}",
                            port.id,
                            port.device,
                            port.ifindex,
                            phase_name(port.phase),
                            port.mac_address,
                            port.mtu,
                            port.netns
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn vm_view(&mut self) -> anyhow::Result<()> {
        for vm in &self.vms {
            let brief = vm.netns.exec("ip", &["-br", "link", "show", "eth0"])?;
            let link = vm.netns.link("eth0")?.context("no eth0")?;
            say(format!(
                "{:<8} {}  -> MAC {} MTU {}",
                vm.netns
                    .name()
                    .trim_start_matches(&format!("{}-", self.prefix)),
                brief.split_whitespace().collect::<Vec<_>>().join("  "),
                link["address"].as_str().unwrap_or("?"),
                link["mtu"]
            ));
            ensure!(
                link["address"] == vm.mac.as_str(),
                "{}: wrong MAC",
                vm.port_id
            );
        }
        Ok(())
    }

    async fn ping(&mut self) -> anyhow::Result<()> {
        for (from, to) in self.vms.iter().zip(self.vms.iter().skip(1)) {
            if from.host != to.host {
                continue;
            }
            for (what, target) in [("VM", to.ip.as_str()), ("gateway", from.subnet.2)] {
                let ping = from.ping(target)?;
                say(format!(
                    "{} -> {what} {target}: {}",
                    from.short_name(),
                    rtt(&ping)
                ));
            }
        }
        if self.agentctl.is_ok()
            && let Some(vm) = self.vms.first()
        {
            let agent = self.agent(&vm.host)?;
            say(format!("{}: agentctl dp counters {}", vm.host, vm.port_id));
            let output = agent.agentctl(&["dp", "counters", &vm.port_id]);
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                say(format!("  {line}"));
            }
            say(format!(
                "{}: agentctl trace {} --dst {} --src 10.9.9.9 (a forged source)",
                vm.host, vm.port_id, vm.subnet.2
            ));
            let output = agent.agentctl(&[
                "trace",
                &vm.port_id,
                "--dst",
                vm.subnet.2,
                "--src",
                "10.9.9.9",
            ]);
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                say(format!("  {line}"));
            }
        }
        Ok(())
    }

    async fn overlay(&mut self) -> anyhow::Result<()> {
        // Every VM of host1 pings every VM of host2.
        for from in self.vms.iter().filter(|vm| vm.host == HOSTS[0].0) {
            for to in self.vms.iter().filter(|vm| vm.host != from.host) {
                let ping = from.ping(&to.ip)?;
                let how = if from.subnet == to.subnet {
                    "same subnet".to_string()
                } else {
                    format!(
                        "routed on the sending host, replies with TTL {:?}",
                        ping.ttls
                    )
                };
                say(format!(
                    "{} ({}) -> {} ({}) on {}: {} ({how})",
                    from.short_name(),
                    from.ip,
                    to.short_name(),
                    to.ip,
                    to.host,
                    rtt(&ping),
                ));
            }
        }
        if self.agentctl.is_err() {
            return Ok(());
        }
        let host = HOSTS[0].0;
        for args in [&["dp", "neighbors"][..], &["dp", "tunnels"]] {
            say(format!("{host}: agentctl {}", args.join(" ")));
            let output = self.agent(host)?.agentctl(args);
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                say(format!("  {line}"));
            }
            ensure!(
                output.status.success(),
                "agentctl failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        if let Some((from, to)) = self.vms.first().zip(self.vms.last()) {
            say(format!(
                "{host}: agentctl trace {} --dst {} (a VM on {})",
                from.port_id, to.ip, to.host
            ));
            let output = self
                .agent(host)?
                .agentctl(&["trace", &from.port_id, "--dst", &to.ip]);
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                say(format!("  {line}"));
            }
        }
        Ok(())
    }

    async fn dhcp(&mut self) -> anyhow::Result<()> {
        let dir = ClientDir::new()?;
        for (n, vm) in self.vms.iter().enumerate() {
            // Back to 1500, so that what follows shows DHCP's option 26.
            vm.netns
                .exec("ip", &["link", "set", "eth0", "mtu", "1500"])?;
            let client = DHCP_CLIENTS[n % DHCP_CLIENTS.len()];
            let name = vm.short_name();
            let bound = match client {
                "udhcpc" => {
                    let script = dir.script(&format!("udhcpc-{name}"), UDHCPC_SCRIPT)?;
                    udhcpc_once(&vm.netns, &script, 10)?
                }
                "dhclient" => Dhclient::new(&dir, &format!("dhclient-{name}"))?
                    .run(&vm.netns, &[])?
                    .status
                    .success(),
                _ => dhcpcd_once(&dir, &vm.netns, &[])?.status.success(),
            };
            ensure!(
                bound,
                "{name}: {client} got no lease from {}'s agent",
                vm.host
            );
            let eth0 = Eth0::of(&vm.netns)?;
            say(format!(
                "{name:<7} {client:<8} -> {} mtu {} (was 1500)",
                eth0.addresses.join(", "),
                eth0.mtu
            ));
            for route in &eth0.routes {
                say(format!("{:<18} route {route}", ""));
            }
            ensure!(
                eth0.addresses == [format!("{}/24", vm.ip)] && eth0.mtu == 1450,
                "{name}: eth0 is not as the goal state says: {eth0:?}"
            );
        }
        // udhcpc's records show the rest of what the agent said.
        for vm in &self.vms {
            let name = vm.short_name();
            if let Some(told) = dir.recorded(&format!("udhcpc-{name}.bound.env")) {
                let get = |key: &str| told.get(key).map_or("-", String::as_str);
                say(format!(
                    "{name} was also told: host name {}, DNS {}, domain {}, search {}, lease {} s, \
                     server {}",
                    get("hostname"),
                    get("dns"),
                    get("domain"),
                    get("search"),
                    get("lease"),
                    get("serverid")
                ));
            }
        }
        for (name, _) in HOSTS {
            let agent = self.agent(name)?;
            match &self.agentctl {
                Ok(()) => {
                    say(format!("{name}: agentctl leases"));
                    let output = agent.agentctl(&["leases"]);
                    for line in String::from_utf8_lossy(&output.stdout).lines() {
                        say(format!("  {line}"));
                    }
                    ensure!(
                        output.status.success(),
                        "agentctl failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
                }
                Err(why) => {
                    say(format!(
                        "{name}: agentctl is not built ({why}); the control socket says:"
                    ));
                    let leases = timeout(agent.control().await.list_leases(ListRequest {}))
                        .await??
                        .into_inner()
                        .leases;
                    for lease in leases {
                        say(format!(
                            "  {} {} {} {} {}",
                            lease.port_id,
                            lease.mac_address,
                            lease.ip_address,
                            lease.state,
                            lease.hostname
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        let host = HOSTS[0].0;
        let before = ready_ports(self.agent(host)?).await?;
        let agent = self.agents.get_mut(host).context("no agent")?;
        let pid = agent.pid().unwrap_or_default();
        agent.kill();
        let state_dir = agent.state_dir();
        for entry in std::fs::read_dir(&state_dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        say(format!(
            "kill -9 {pid}: the agent on {host} is gone, and its state directory {} is emptied",
            state_dir.display()
        ));
        let started = Instant::now();
        let agent = self.agents.get_mut(host).context("no agent")?;
        agent.restart().await;
        say(format!(
            "restarted as pid {}: it registers again and asks the controller for its whole state",
            agent.pid().unwrap_or_default()
        ));
        let agent = self.agent(host)?;
        let after = wait_for(
            "the controller's state back on the agent",
            CONVERGE,
            async || {
                ready_ports(agent)
                    .await
                    .ok()
                    .filter(|after| after.len() == before.len())
            },
        )
        .await;
        say(format!(
            "{} ports back and ready {:.1?} after the restart:",
            after.len(),
            started.elapsed()
        ));
        for (id, (device, ifindex)) in &after {
            say(format!(
                "  {id} {device} ifindex {ifindex} (was {})",
                before.get(id).map_or("none".into(), |(_, i)| i.to_string())
            ));
        }
        say(
            "  (with no record of its veths, the agent made them again: each VM's eth0 is new, so its DHCP client leases again)",
        );
        let dir = ClientDir::new()?;
        for vm in self.vms.iter().filter(|vm| vm.host == host) {
            let script = dir.script(&format!("udhcpc-{}", vm.short_name()), UDHCPC_SCRIPT)?;
            ensure!(
                udhcpc_once(&vm.netns, &script, 10)?,
                "{}: no lease after the restart",
                vm.short_name()
            );
        }
        self.openstack(&[
            "network",
            "agent",
            "show",
            "-c",
            "host",
            "-c",
            "alive",
            "-c",
            "started_at",
            &self.agent_id(host)?,
        ])?;
        let from = self.vms.iter().find(|vm| vm.host == host);
        let to = self.vms.iter().find(|vm| vm.host != host);
        if let Some((from, to)) = from.zip(to) {
            let ping = from.ping(&to.ip)?;
            say(format!(
                "{} -> {} on {} answers again: {}",
                from.short_name(),
                to.ip,
                to.host,
                rtt(&ping)
            ));
        }
        Ok(())
    }

    /// The id Neutron shows for the agent of `host`.
    fn agent_id(&self, host: &str) -> anyhow::Result<String> {
        let agents = self.openstack_json(&["network", "agent", "list", "--host", host])?;
        agents[0]["ID"]
            .as_str()
            .map(String::from)
            .with_context(|| format!("no agent listed for {host}: {agents}"))
    }

    /// The last lines of each agent's log.
    fn agent_logs(&self) -> Option<String> {
        let logs: Vec<String> = self
            .agents
            .iter()
            .map(|(name, agent)| {
                let log = agent.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(10)..].join("\n    ");
                format!("  {name}:\n    {tail}")
            })
            .collect();
        (!logs.is_empty()).then(|| logs.join("\n"))
    }
}

fn say(line: impl AsRef<str>) {
    println!("  {}", line.as_ref());
}

async fn timeout<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, future)
        .await
        .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
}

async fn list_ports(agent: &Agent) -> anyhow::Result<Vec<Port>> {
    let mut ports = timeout(agent.control().await.list_ports(ListRequest {}))
        .await??
        .into_inner()
        .ports;
    ports.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(ports)
}

/// id → (host device, ifindex) of the agent's ports, all of which must be
/// ready.
async fn ready_ports(agent: &Agent) -> anyhow::Result<BTreeMap<String, (String, u32)>> {
    let ports = list_ports(agent).await?;
    ensure!(!ports.is_empty(), "the agent has no ports");
    for port in &ports {
        ensure!(
            port.phase == PortPhase::Ready as i32,
            "port {} is {}: {}",
            port.id,
            phase_name(port.phase),
            port.reason
        );
    }
    Ok(ports
        .into_iter()
        .map(|p| (p.id, (p.device, p.ifindex)))
        .collect())
}

fn phase_name(phase: i32) -> &'static str {
    match PortPhase::try_from(phase) {
        Ok(PortPhase::Ready) => "ready",
        Ok(PortPhase::Pending) => "pending",
        Ok(PortPhase::Failed) => "failed",
        Ok(PortPhase::Unbound) => "unbound",
        Err(_) => "?",
    }
}
