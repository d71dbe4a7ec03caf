//! What the controller suites share: a controller's namespace on the
//! fabric (one instance on its embedded store, or several on an etcd
//! beside them), three agents in host namespaces that register with it,
//! and VMs as namespaces whose ports are made with the unmodified
//! `openstack` CLI and leased with a stock busybox udhcpc.

use std::time::Duration;

use serde_json::Value;

use crate::{
    Agent, Netns,
    controller::{Controller, StoreKind},
    dhcp::lease_stock,
    etcd::{self, EtcdServer},
    openstack::{self, Cli},
    pki::Pki,
    privileged,
    topology::Topology,
    traffic, unique_prefix, wait_for,
};

pub const HOSTS: [(&str, &str); 3] = [
    ("h1", "198.18.0.1/24"),
    ("h2", "198.18.0.2/24"),
    ("h3", "198.18.0.3/24"),
];
const CONTROLLER: (&str, &str) = ("ctl", "198.18.0.100/24");
/// Each instance's API and agents' ports, in the controller's namespace.
const PORTS: [(u16, u16); 2] = [(9696, 9697), (9706, 9707)];
/// How long anything may take to converge.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// How the cloud is made.
#[derive(Clone, Copy, Default)]
pub struct Options {
    /// Two instances on an etcd (every agent lists both; h2 the second
    /// first), instead of one on its embedded store.
    pub two_instances: bool,
    /// Mutual TLS between the controller and the agents, both ways.
    pub tls: bool,
}

pub struct Cloud {
    // Dropped first: agents, instances, VMs, etcd, the topology;
    // certificates last.
    agents: Vec<(&'static str, Agent)>,
    pub instances: Vec<Controller>,
    clis: Vec<Cli>,
    vms: Vec<Netns>,
    pub etcd: Option<EtcdServer>,
    topology: Topology,
    _pki: Option<Pki>,
}

impl Cloud {
    /// The cloud of `test` once every agent registered and is alive;
    /// `None` when the test is skipped (not root, no CLI or no etcd,
    /// outside CI).
    pub async fn ready(test: &str, tag: &str, options: Options) -> Option<Cloud> {
        if !privileged(test)
            || !openstack::available(test)
            || (options.two_instances && !etcd::available(test))
        {
            return None;
        }
        let cloud = Cloud::start(&unique_prefix(tag), options).await;
        wait_for("every agent registered and alive", CONVERGE, async || {
            (cloud.clis[0].alive_agents().ok()? == HOSTS.len()).then_some(())
        })
        .await;
        Some(cloud)
    }

    async fn start(prefix: &str, options: Options) -> Cloud {
        let mut topology = Topology::new(prefix).unwrap();
        for (name, address) in HOSTS.iter().chain([&CONTROLLER]) {
            topology.add_host(name, address).unwrap();
        }
        let ctl = topology.host(CONTROLLER.0);
        let pki = options.tls.then(|| Pki::new(prefix).unwrap());
        let tls_args = pki.as_ref().map_or_else(Vec::new, |pki| {
            let cert = pki.server("controller", ctl.underlay_ip().into()).unwrap();
            pki.controller_args(&cert)
        });
        let tls_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
        let etcd = options
            .two_instances
            .then(|| EtcdServer::start_in(ctl.netns()).unwrap());
        let (count, store) = match &etcd {
            Some(etcd) => (2, StoreKind::Etcd(vec![etcd.client_url()])),
            None => (1, StoreKind::Embedded),
        };
        let mut instances = Vec::new();
        let mut clis = Vec::new();
        for ports in &PORTS[..count] {
            let instance = Controller::start_in_at(
                ctl.netns(),
                ctl.underlay_ip(),
                *ports,
                store.clone(),
                &tls_args,
            )
            .unwrap();
            clis.push(
                Cli::new(&instance.endpoint())
                    .unwrap()
                    .in_netns(ctl.netns().name()),
            );
            instances.push(instance);
        }
        let endpoints: Vec<String> = instances
            .iter()
            .map(|instance| match pki {
                Some(_) => instance.grpc_endpoint().replace("http://", "https://"),
                None => instance.grpc_endpoint(),
            })
            .collect();
        let mut agents = Vec::new();
        for (name, _) in HOSTS {
            let host = topology.host(name);
            let mut options = host.agent_options();
            match &pki {
                Some(pki) => {
                    let cert = pki.server(name, host.underlay_ip().into()).unwrap();
                    options.args.extend(pki.agent_args(&cert));
                }
                None => options.args.push("--insecure".into()),
            }
            // h2 lists the instances the other way round: with two, both
            // take heartbeats.
            let mut order = endpoints.clone();
            if name == "h2" {
                order.reverse();
            }
            let controllers = order.join(",");
            options
                .args
                .extend(["--controller", &controllers, "--host-id", name].map(String::from));
            agents.push((name, Agent::start(host.netns(), options).await));
        }
        Cloud {
            agents,
            instances,
            clis,
            vms: Vec::new(),
            etcd,
            topology,
            _pki: pki,
        }
    }

    /// The CLI through instance `through`.
    pub fn cli(&self, through: usize) -> &Cli {
        &self.clis[through]
    }

    /// `openstack ARGS -f json` through instance `through`, which must
    /// succeed.
    pub fn json(&self, through: usize, args: &[&str]) -> Value {
        self.clis[through]
            .json(args)
            .unwrap_or_else(|e| panic!("openstack {}: {e:#}\n{}", args.join(" "), self.logs()))
    }

    /// `openstack ARGS` through instance `through`, which must succeed
    /// (for the commands that print nothing).
    pub fn run(&self, through: usize, args: &[&str]) {
        let ran = self.clis[through].run(args).unwrap();
        assert!(
            ran.success(),
            "openstack {}: {}",
            args.join(" "),
            ran.stderr
        );
    }

    /// Network `net` with its `subnets` (name, CIDR), made through
    /// instance 0.
    pub fn network(&self, subnets: &[(&str, &str)]) {
        self.json(0, &["network", "create", "net"]);
        for (name, cidr) in subnets {
            let args = [
                "subnet",
                "create",
                "--network",
                "net",
                "--subnet-range",
                cidr,
                name,
            ];
            self.json(0, &args);
        }
    }

    pub fn agents(&self) -> impl Iterator<Item = (&'static str, &Agent)> {
        self.agents.iter().map(|(name, agent)| (*name, agent))
    }

    pub fn agent(&self, host: &str) -> &Agent {
        &self
            .agents
            .iter()
            .find(|(name, _)| *name == host)
            .unwrap()
            .1
    }

    pub fn agent_mut(&mut self, host: &str) -> &mut Agent {
        &mut self
            .agents
            .iter_mut()
            .find(|(name, _)| *name == host)
            .unwrap()
            .1
    }

    pub fn vm(&self, name: &str) -> &Netns {
        self.vms
            .iter()
            .find(|vm| vm.name().ends_with(&format!("-{name}")))
            .unwrap()
    }

    /// A VM namespace, and its port named after it made through instance
    /// `through`: in network `net`, bound to `host`, in `subnet` if given.
    pub fn create_vm(
        &mut self,
        through: usize,
        name: &str,
        host: &str,
        subnet: Option<&str>,
    ) -> Value {
        let vm = Netns::new(format!("{}-{name}", self.topology.prefix())).unwrap();
        traffic::disable_ipv6(&vm).unwrap();
        let profile = format!("netns={}", vm.name());
        self.vms.push(vm);
        let fixed_ip = subnet.map(|subnet| format!("subnet={subnet}"));
        let mut args = vec!["port", "create", "--network", "net"];
        if let Some(fixed_ip) = &fixed_ip {
            args.extend(["--fixed-ip", fixed_ip]);
        }
        args.extend(["--host", host, "--binding-profile", &profile, name]);
        self.json(through, &args)
    }

    pub async fn wait_active(&self, through: usize, port: &str) {
        wait_for(&format!("port {port} ACTIVE"), CONVERGE, async || {
            let shown = self.json(through, &["port", "show", port]);
            (shown["status"] == "ACTIVE").then_some(())
        })
        .await;
    }

    /// The VM leases its port's address with a stock udhcpc.
    pub fn lease(&self, vm: &str, port: &Value) {
        if let Err(error) = lease_stock(self.vm(vm), &address(port)) {
            panic!("{error:#}\n{}", self.logs());
        }
    }

    /// Waits until VM `from` pings `to`'s port.
    pub async fn pings(&self, from: &str, to: &Value) {
        traffic::wait_ping(self.vm(from), &address(to), CONVERGE).await;
    }

    /// Every instance's and agent's log.
    pub fn logs(&self) -> String {
        let mut logs = String::new();
        for (n, instance) in self.instances.iter().enumerate() {
            logs.push_str(&format!("controller {n}:\n{}\n", instance.log()));
        }
        for (name, agent) in &self.agents {
            logs.push_str(&format!("agent {name}:\n{}\n", agent.log()));
        }
        logs
    }
}

/// A port's (first) address, as the CLI shows it.
pub fn address(port: &Value) -> String {
    port["fixed_ips"][0]["ip_address"]
        .as_str()
        .unwrap_or_else(|| panic!("a port without an address: {port}"))
        .to_string()
}
