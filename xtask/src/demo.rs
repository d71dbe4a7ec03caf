//! `cargo xtask demo`: the agent doing its main job with real processes.
//!
//! A fabric namespace whose bridge is the underlay, two host namespaces with
//! an agent each (mutual TLS on the underlay address), a controller
//! namespace pushing goal state, VM namespaces that get their `eth0` and
//! their address by DHCP, VMs pinging each other on one host and across
//! hosts over VXLAN (in a subnet and through a router), and an agent killed
//! with SIGKILL and restarted without disturbing its ports.
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
    schema::{
        GoalState, GoalStateOperationReply, GoalStateV2, OperationStatus, ResourceType,
        goal_state_provisioner_client::GoalStateProvisionerClient,
    },
};
use alcor_tests::{
    Agent, Netns,
    agent::connect_in,
    dhcp::{ClientDir, Dhclient, Eth0, UDHCPC_SCRIPT, dhcpcd_once, udhcpc_once},
    goalstate,
    topology::Topology,
    topology::namespaces_with_prefix,
    traffic,
};
use anyhow::{Context, anyhow, bail, ensure};
use futures::{FutureExt, future::LocalBoxFuture};
use tonic::transport::{Channel, ClientTlsConfig};

use crate::{
    setup,
    tls::{CertFiles, Pki},
    util,
};

/// Namespaces of the demo are called `xdemo<pid>-…`.
const TAG: &str = "xdemo";

/// (host, underlay address) of the hosts that run an agent.
const HOSTS: &[(&str, &str)] = &[("host1", "198.18.0.1/24"), ("host2", "198.18.0.2/24")];
/// The controller's namespace on the fabric.
const CONTROLLER: (&str, &str) = ("ctl", "198.18.0.100/24");
const VMS_PER_HOST: usize = 2;

const VPC: (&str, u32, &str) = ("vpc-demo", 1001, "10.0.0.0/16");
/// (id, CIDR, gateway) of the VPC's subnets, joined by `ROUTER`.
const SUBNET: (&str, &str, &str) = ("subnet-demo", "10.0.1.0/24", "10.0.1.1");
const SUBNET2: (&str, &str, &str) = ("subnet-demo-2", "10.0.2.0/24", "10.0.2.1");
const ROUTER: &str = "router-demo";
/// The subnet's DNS server, handed out by DHCP.
const DNS: &str = "10.0.0.2";
/// The DHCP clients the VMs run, in turn.
const DHCP_CLIENTS: &[&str] = &["udhcpc", "dhclient", "dhcpcd"];

/// How long any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

type StepFn = for<'a> fn(&'a mut Demo) -> LocalBoxFuture<'a, anyhow::Result<()>>;

/// The demo, in order: (what a human is told, what runs).
const STEPS: &[(&str, StepFn)] = &[
    (
        "Underlay: a fabric namespace with a Linux bridge, two hosts and a controller on 198.18.0.0/24",
        |d| Box::pin(d.underlay()),
    ),
    (
        "Throwaway PKI (rcgen): a CA, a server certificate per agent, a client certificate for the controller",
        |d| Box::pin(d.pki()),
    ),
    (
        "An alcor-agent in each host namespace, serving goal state on its underlay address with mutual TLS",
        |d| Box::pin(d.agents()),
    ),
    (
        "VM namespaces, two per host, still without a network device",
        |d| Box::pin(d.vms()),
    ),
    (
        "The controller pushes goal state over mTLS: a VPC with two subnets joined by a router, two netns-bound ports per host with their DHCP entries, the other host's VMs as neighbors",
        |d| Box::pin(d.push()),
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
        "Crash and restart: kill -9 the agent on host1, start it again, same ports",
        |d| Box::pin(d.restart()),
    ),
];

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    println!("demo: building alcor-agent and agentctl");
    util::build_agent(false)?;
    let agentctl = util::try_build(false, "agentctl");
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
    }
    let prefix = demo.prefix.clone();
    println!("\nCleaning up: agents, VM namespaces, hosts, fabric, certificates");
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
    // Fields drop in order: agents (killed, pins removed) before the VMs,
    // the hosts and the fabric; certificates last.
    agents: BTreeMap<String, Agent>,
    vms: Vec<Vm>,
    topology: Option<Topology>,
    pki: Option<Pki>,
    server_certs: BTreeMap<String, CertFiles>,
    controller_tls: Option<ClientTlsConfig>,
}

struct Vm {
    host: String,
    port_id: String,
    /// Its subnet: `SUBNET` or `SUBNET2`.
    subnet: (&'static str, &'static str, &'static str),
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

    fn hostname(&self) -> String {
        self.short_name().to_string()
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
            vms: Vec::new(),
            topology: None,
            pki: None,
            server_certs: BTreeMap::new(),
            controller_tls: None,
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
        let controller = pki.client("controller")?;
        self.controller_tls = Some(pki.client_config(&controller)?);
        say(format!(
            "in {}: ca.pem, controller.pem (client auth)",
            pki.dir().display()
        ));
        for (name, _) in HOSTS {
            let ip = self.topology()?.host(name).underlay_ip();
            self.server_certs
                .insert(name.to_string(), pki.server(name, ip.into())?);
            say(format!("{name}.pem: server auth, valid for IP {ip}"));
        }
        self.pki = Some(pki);
        Ok(())
    }

    async fn agents(&mut self) -> anyhow::Result<()> {
        let topology = self.topology.as_ref().context("no topology")?;
        let pki = self.pki.as_ref().context("no PKI")?;
        for (name, _) in HOSTS {
            let host = topology.host(name);
            let mut options = host.agent_options();
            let server = self.server_certs.get(*name).context("no certificate")?;
            options.args.extend(pki.agent_args(server));
            let agent = Agent::start(host.netns(), options).await;
            say(format!(
                "{name}: alcor-agent pid {} listening on {} (mTLS), control socket {}",
                agent.pid().unwrap_or_default(),
                agent.grpc_listen(),
                agent.control_socket().display()
            ));
            self.agents.insert(name.to_string(), agent);
        }
        // A controller without a client certificate is turned away.
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
            .map_or(first_line(&refused), |(_, alert)| {
                alert.split(['"', ' ', '}']).next().unwrap_or(alert)
            });
        say(format!(
            "a client without a certificate is refused (TLS alert: {reason})"
        ));
        Ok(())
    }

    async fn vms(&mut self) -> anyhow::Result<()> {
        for (h, (host, _)) in HOSTS.iter().enumerate() {
            for v in 1..=VMS_PER_HOST {
                let netns = Netns::new(format!("{}-h{}-vm{v}", self.prefix, h + 1))?;
                // The last VM of the last host is in the other subnet.
                let subnet = if h + 1 == HOSTS.len() && v == VMS_PER_HOST {
                    SUBNET2
                } else {
                    SUBNET
                };
                let network = subnet.1.trim_end_matches(".0/24");
                let vm = Vm {
                    host: host.to_string(),
                    port_id: format!("port-h{}-vm{v}", h + 1),
                    subnet,
                    ip: format!("{network}.{}", 10 * (h + 1) + v),
                    mac: format!("fa:16:3e:00:0{}:0{v}", h + 1),
                    netns,
                };
                say(format!(
                    "{host}: VM namespace {} for port {} ({} in {}, {})",
                    vm.netns.name(),
                    vm.port_id,
                    vm.ip,
                    vm.subnet.0,
                    vm.mac
                ));
                self.vms.push(vm);
            }
        }
        Ok(())
    }

    /// The goal state the controller computes for `host`.
    fn goal_state(&self, host: &str) -> anyhow::Result<GoalStateV2> {
        let ports = self
            .vms
            .iter()
            .filter(|vm| vm.host == host)
            .map(|vm| {
                goalstate::netns_port(
                    &vm.port_id,
                    VPC.0,
                    vm.subnet.0,
                    &vm.ip,
                    &vm.mac,
                    vm.netns.name(),
                )
            })
            .collect();
        let mut message = goalstate::v2(
            vec![goalstate::vpc(VPC.0, VPC.1, VPC.2)],
            [SUBNET, SUBNET2]
                .iter()
                .map(|(id, cidr, gateway)| {
                    goalstate::dhcp_subnet(
                        id,
                        VPC.0,
                        cidr,
                        gateway,
                        &[DNS],
                        &[("domain-search", "demo.example")],
                    )
                })
                .collect(),
            ports,
        );
        let router = goalstate::router_joining(ROUTER, &[SUBNET.0, SUBNET2.0]);
        message.router_states = [(ROUTER.to_string(), router)].into();
        // What DHCP gives each VM: its address and a host name.
        message.dhcp_states = self
            .vms
            .iter()
            .filter(|vm| vm.host == host)
            .map(|vm| {
                let id = format!("dhcp-{}", vm.port_id);
                let entry =
                    goalstate::dhcp_entry(&id, vm.subnet.0, &vm.mac, &vm.ip, &vm.hostname());
                (id, entry)
            })
            .collect();
        // The other hosts' VMs, with the underlay address of their host: L2
        // in a subnet this host has VMs in, L3 (reached through the router)
        // otherwise.
        for vm in self.vms.iter().filter(|vm| vm.host != host) {
            let routed = !self
                .vms
                .iter()
                .any(|local| local.host == host && local.subnet == vm.subnet);
            let host_ip = self.topology()?.host(&vm.host).underlay_ip().to_string();
            let id = format!("neighbor-{}", vm.port_id);
            let mut neighbor =
                goalstate::neighbor(&id, VPC.0, vm.subnet.0, &vm.ip, &vm.mac, &host_ip);
            if routed {
                neighbor = goalstate::l3(neighbor);
            }
            message.neighbor_states.insert(id, neighbor);
        }
        Ok(message)
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

    /// Pushes each host its goal state from the controller's namespace, on
    /// a V2 stream, and checks every resource succeeded.
    async fn push_all(&self) -> anyhow::Result<()> {
        let tls = self
            .controller_tls
            .clone()
            .context("no client certificate")?;
        for (name, _) in HOSTS {
            let addr = self.topology()?.host(name).grpc_addr();
            let mut client = self.connect(addr, tls.clone()).await?;
            let message = self.goal_state(name)?;
            let mut replies =
                timeout(client.push_goal_states_stream(futures::stream::iter([message])))
                    .await??
                    .into_inner();
            let reply = timeout(replies.message())
                .await??
                .context("the stream ended without a reply")?;
            say(format!(
                "{name} ({addr}): {} µs in the agent",
                reply.message_total_operation_time
            ));
            print_statuses(&reply);
            ensure!(
                reply
                    .operation_statuses
                    .iter()
                    .all(|s| s.operation_status == OperationStatus::Success as i32),
                "not everything succeeded on {name}"
            );
        }
        Ok(())
    }

    async fn push(&mut self) -> anyhow::Result<()> {
        say(format!(
            "from namespace {}-{} ({}), client certificate 'controller'",
            self.prefix, CONTROLLER.0, CONTROLLER.1
        ));
        self.push_all().await
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
        say(format!("kill -9 {pid}: the agent on {host} is gone"));
        for vm in self.vms.iter().filter(|vm| vm.host == host) {
            let up = vm
                .netns
                .link("eth0")?
                .is_some_and(|l| l["operstate"] == "UP");
            say(format!(
                "  meanwhile {}'s eth0 is {}",
                vm.port_id,
                if up { "still there and UP" } else { "NOT up" }
            ));
        }
        let started = Instant::now();
        let agent = self.agents.get_mut(host).context("no agent")?;
        agent.restart().await;
        say(format!(
            "restarted as pid {} in {:.0?} (same state dir); it adopts what exists",
            agent.pid().unwrap_or_default(),
            started.elapsed()
        ));
        let after = ready_ports(self.agent(host)?).await?;
        for (id, (device, ifindex)) in &before {
            let now = after.get(id).map(|(_, i)| *i);
            say(format!(
                "  {id:<14} {device:<15} ifindex {ifindex} before, {} after: {}",
                now.map_or("none".into(), |i| i.to_string()),
                if now == Some(*ifindex) {
                    "same device"
                } else {
                    "CHANGED"
                }
            ));
        }
        ensure!(
            before == after,
            "ports differ after the restart: {before:?} vs {after:?}"
        );
        say("the controller pushes the same goal state again: idempotent, nothing recreated");
        self.push_all().await?;
        let again = ready_ports(self.agent(host)?).await?;
        ensure!(before == again, "a re-push changed the ports: {again:?}");
        say("  ifindexes unchanged");
        let from = self.vms.iter().find(|vm| vm.host == host);
        let to = self.vms.iter().find(|vm| vm.host != host);
        if let Some((from, to)) = from.zip(to) {
            let ping = from.ping(&to.ip)?;
            say(format!(
                "{} -> {} on {} still answers: {}",
                from.short_name(),
                to.ip,
                to.host,
                rtt(&ping)
            ));
        }
        Ok(())
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

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

async fn timeout<T>(future: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, future)
        .await
        .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
}

fn print_statuses(reply: &GoalStateOperationReply) {
    for status in &reply.operation_statuses {
        let kind = ResourceType::try_from(status.resource_type).map_or("?", |t| t.as_str_name());
        let outcome =
            OperationStatus::try_from(status.operation_status).map_or("?", |s| s.as_str_name());
        let mut line = format!("  {kind:<7} {:<14} {outcome}", status.resource_id);
        if status.resource_type == ResourceType::Port as i32 {
            line += &format!(
                "  (netlink {} µs, datapath {} µs)",
                status.network_configuration_time, status.dataplane_programming_time
            );
        }
        if !status.message.is_empty() {
            line += &format!("  {}", status.message);
        }
        say(line);
    }
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
