//! The controller driving real agents, everything through the unmodified
//! `openstack` CLI: a controller in its own namespace on the fabric, three
//! agents in host namespaces that register with it, VMs as namespaces
//! running busybox udhcpc as distributions ship it. Ports created and bound
//! with the CLI end as VMs that lease their address and ping across hosts
//! and subnets; a port moved to another host follows; an agent restarted
//! with an empty state directory gets everything back from the controller;
//! an agent down while a port is bound to its host converges when it
//! returns; a port its agent refuses shows the agent's reason; the
//! controller killed and restarted loses nothing; a deleted port's device
//! goes and its address is free again.

use std::{path::Path, time::Duration};

use alcor_tests::{
    Agent, Netns,
    controller::{Controller, StoreKind},
    dhcp::lease_stock,
    openstack::{self, Cli},
    pki::Pki,
    privileged,
    topology::Topology,
    traffic, unique_prefix, wait_for,
};
use serde_json::Value;

const HOSTS: [(&str, &str); 3] = [
    ("h1", "198.18.0.1/24"),
    ("h2", "198.18.0.2/24"),
    ("h3", "198.18.0.3/24"),
];
const CONTROLLER: (&str, &str) = ("ctl", "198.18.0.100/24");
/// How long anything may take to converge.
const CONVERGE: Duration = Duration::from_secs(30);

struct Lab {
    // Dropped first: agents, VMs, then the topology; certificates last.
    agents: Vec<(&'static str, Agent)>,
    controller: Controller,
    cli: Cli,
    vms: Vec<Netns>,
    topology: Topology,
    _pki: Option<Pki>,
}

impl Lab {
    /// The topology, the controller and the agents; with mutual TLS
    /// between them both ways if `tls`, else plain text.
    async fn new(prefix: &str, tls: bool) -> Lab {
        let mut topology = Topology::new(prefix).unwrap();
        for (name, address) in HOSTS.iter().chain([&CONTROLLER]) {
            topology.add_host(name, address).unwrap();
        }
        let ctl = topology.host(CONTROLLER.0);
        let pki = tls.then(|| Pki::new("controller_agents").unwrap());
        let mut controller_args = Vec::new();
        if let Some(pki) = &pki {
            let cert = pki.server("controller", ctl.underlay_ip().into()).unwrap();
            controller_args = [
                "--agent-tls-cert".to_string(),
                cert.cert.display().to_string(),
                "--agent-tls-key".into(),
                cert.key.display().to_string(),
                "--agent-tls-ca".into(),
                pki.ca_file().display().to_string(),
            ]
            .to_vec();
        }
        let controller_args: Vec<&str> = controller_args.iter().map(String::as_str).collect();
        let controller = Controller::start_in(
            ctl.netns(),
            ctl.underlay_ip(),
            StoreKind::Embedded,
            &controller_args,
        )
        .unwrap();
        let cli = Cli::new(&controller.endpoint())
            .unwrap()
            .in_netns(ctl.netns().name());
        let mut agents = Vec::new();
        for (name, _) in HOSTS {
            let host = topology.host(name);
            let mut options = host.agent_options();
            let registry = match &pki {
                Some(pki) => {
                    let cert = pki.server(name, host.underlay_ip().into()).unwrap();
                    options.args.extend(pki.agent_args(&cert));
                    controller.grpc_endpoint().replace("http://", "https://")
                }
                None => {
                    options.args.push("--insecure".into());
                    controller.grpc_endpoint()
                }
            };
            options
                .args
                .extend(["--controller", &registry, "--host-id", name].map(String::from));
            agents.push((name, Agent::start(host.netns(), options).await));
        }
        Lab {
            agents,
            controller,
            cli,
            vms: Vec::new(),
            topology,
            _pki: pki,
        }
    }

    /// The lab of `test` once every agent registered; `None` when the
    /// test is skipped (not root, or no CLI, outside CI).
    async fn ready(test: &str, tag: &str, tls: bool) -> Option<Lab> {
        if !privileged(test) || !openstack::available(test) {
            return None;
        }
        let lab = Lab::new(&unique_prefix(tag), tls).await;
        wait_for("every agent registered and alive", CONVERGE, async || {
            (lab.cli.alive_agents().ok()? == HOSTS.len()).then_some(())
        })
        .await;
        Some(lab)
    }

    /// `openstack ARGS -f json`, which must succeed.
    fn json(&self, args: &[&str]) -> Value {
        self.cli.json(args).unwrap_or_else(|e| {
            panic!(
                "openstack {}: {e:#}\ncontroller log:\n{}",
                args.join(" "),
                self.controller.log()
            )
        })
    }

    fn agent(&mut self, host: &str) -> &mut Agent {
        &mut self
            .agents
            .iter_mut()
            .find(|(name, _)| *name == host)
            .unwrap()
            .1
    }

    fn vm(&self, name: &str) -> &Netns {
        self.vms
            .iter()
            .find(|vm| vm.name().ends_with(&format!("-{name}")))
            .unwrap()
    }

    /// A VM namespace and its port, bound to `host`, in `subnet`.
    fn create_vm(&mut self, name: &str, host: &str, subnet: &str) -> Value {
        let vm = Netns::new(format!("{}-{name}", self.topology.prefix())).unwrap();
        traffic::disable_ipv6(&vm).unwrap();
        let profile = format!("netns={}", vm.name());
        self.vms.push(vm);
        self.json(&[
            "port",
            "create",
            "--network",
            "net",
            "--fixed-ip",
            &format!("subnet={subnet}"),
            "--host",
            host,
            "--binding-profile",
            &profile,
            name,
        ])
    }

    async fn wait_active(&self, port: &str) {
        wait_for(&format!("port {port} ACTIVE"), CONVERGE, async || {
            let shown = self.json(&["port", "show", port]);
            (shown["status"] == "ACTIVE").then_some(())
        })
        .await;
    }

    /// The VM leases its port's address with a stock udhcpc.
    fn lease(&self, vm: &str, port: &Value) {
        let expected = port["fixed_ips"][0]["ip_address"].as_str().unwrap();
        if let Err(error) = lease_stock(self.vm(vm), expected) {
            panic!("{error:#}\n{}", self.logs());
        }
    }

    async fn pings(&self, from: &str, to: &Value) {
        let target = to["fixed_ips"][0]["ip_address"].as_str().unwrap();
        traffic::wait_ping(self.vm(from), target, CONVERGE).await;
    }

    fn logs(&self) -> String {
        let mut logs = format!("controller:\n{}", self.controller.log());
        for (name, agent) in &self.agents {
            logs.push_str(&format!("\nagent {name}:\n{}", agent.log()));
        }
        logs
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_vms_that_lease_ping_move_survive_and_go() {
    let test = "the_cli_makes_vms_that_lease_ping_move_survive_and_go";
    // The agents register themselves.
    let Some(mut lab) = Lab::ready(test, "ctl", false).await else {
        return;
    };

    lab.json(&["network", "create", "net"]);
    for (name, cidr) in [("sn1", "10.0.1.0/24"), ("sn2", "10.0.2.0/24")] {
        lab.json(&[
            "subnet",
            "create",
            "--network",
            "net",
            "--subnet-range",
            cidr,
            name,
        ]);
    }
    lab.json(&["router", "create", "r"]);
    for subnet in ["sn1", "sn2"] {
        let added = lab
            .cli
            .run(&["router", "add", "subnet", "r", subnet])
            .unwrap();
        assert!(added.success(), "{}", added.stderr);
    }
    let vm1 = lab.create_vm("vm1", "h1", "sn1");
    let vm2 = lab.create_vm("vm2", "h2", "sn1");
    let vm3 = lab.create_vm("vm3", "h3", "sn2");
    for port in ["vm1", "vm2", "vm3"] {
        lab.wait_active(port).await;
    }
    for (vm, port) in [("vm1", &vm1), ("vm2", &vm2), ("vm3", &vm3)] {
        lab.lease(vm, port);
    }
    // Across hosts in a subnet, and through the router to the other.
    lab.pings("vm1", &vm2).await;
    lab.pings("vm1", &vm3).await;
    lab.pings("vm3", &vm2).await;

    // Moved to h3: h2 unplugs it, h3 plugs it into the same VM.
    let moved = lab
        .cli
        .run(&["port", "set", "--host", "h3", "vm2"])
        .unwrap();
    assert!(moved.success(), "{}", moved.stderr);
    lab.wait_active("vm2").await;
    let h2_ports = lab.agent("h2").ports().await;
    assert!(h2_ports.is_empty(), "h2 still has {h2_ports:?}");
    lab.lease("vm2", &vm2);
    lab.pings("vm1", &vm2).await;

    // h1's agent loses everything: its state comes back from the controller.
    let agent = lab.agent("h1");
    agent.kill();
    let state_dir = agent.state_dir();
    remove_contents(&state_dir);
    agent.restart().await;
    // Without a record of its veth, the agent deleted it as a leftover and
    // made it again: the VM's eth0 is new, and its DHCP client leases
    // again, as one does when its link comes back.
    let vm1_netns = lab.vm("vm1");
    wait_for("vm1 plugged again by h1", CONVERGE, async || {
        vm1_netns.link("eth0").ok().flatten()
    })
    .await;
    lab.wait_active("vm1").await;
    lab.lease("vm1", &vm1);
    lab.pings("vm1", &vm3).await;

    // A port bound while its host's agent is down: the API does not wait,
    // the port converges when the agent is back.
    lab.agent("h2").kill();
    let vm4 = lab.create_vm("vm4", "h2", "sn2");
    assert_eq!(vm4["status"], "DOWN");
    lab.agent("h2").restart().await;
    lab.wait_active("vm4").await;
    lab.lease("vm4", &vm4);
    lab.pings("vm4", &vm1).await;

    // A port its agent refuses shows why; the host's other ports stay up.
    lab.json(&[
        "port",
        "create",
        "--network",
        "net",
        "--host",
        "h1",
        "--binding-profile",
        "netns=no/such",
        "refused",
    ]);
    let refused = wait_for("the refused port in ERROR", CONVERGE, async || {
        let shown = lab.json(&["port", "show", "refused"]);
        (shown["status"] == "ERROR").then_some(shown)
    })
    .await;
    let reason = refused["binding_vif_details"]["agent_status"].to_string();
    assert!(reason.contains("no/such"), "{refused}");
    assert_eq!(lab.json(&["port", "show", "vm1"])["status"], "ACTIVE");
    lab.pings("vm1", &vm4).await;

    // The controller killed right after a port was made, and started
    // again: the port still reaches its host.
    let vm5 = lab.create_vm("vm5", "h3", "sn1");
    lab.controller.restart().unwrap();
    lab.wait_active("vm5").await;
    lab.lease("vm5", &vm5);
    lab.pings("vm5", &vm1).await;

    // Deleted: the VM's device goes, the address is free again.
    let deleted = lab.cli.run(&["port", "delete", "vm3"]).unwrap();
    assert!(deleted.success(), "{}", deleted.stderr);
    let vm3_netns = lab.vm("vm3");
    wait_for("vm3's eth0 gone", CONVERGE, async || {
        vm3_netns.link("eth0").ok()?.is_none().then_some(())
    })
    .await;
    let address = vm3["fixed_ips"][0]["ip_address"].as_str().unwrap();
    lab.json(&[
        "port",
        "create",
        "--network",
        "net",
        "--fixed-ip",
        &format!("subnet=sn2,ip-address={address}"),
        "again",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_agents_register_and_get_their_state() {
    let test = "with_mutual_tls_agents_register_and_get_their_state";
    let Some(mut lab) = Lab::ready(test, "ctls", true).await else {
        return;
    };
    let agents = lab.json(&["network", "agent", "list", "--long"]);
    assert_eq!(
        agents.as_array().map(Vec::len),
        Some(HOSTS.len()),
        "{agents}"
    );
    lab.json(&["network", "create", "net"]);
    lab.json(&[
        "subnet",
        "create",
        "--network",
        "net",
        "--subnet-range",
        "10.0.1.0/24",
        "sn1",
    ]);
    let vm1 = lab.create_vm("vm1", "h1", "sn1");
    let vm2 = lab.create_vm("vm2", "h2", "sn1");
    for (vm, port) in [("vm1", &vm1), ("vm2", &vm2)] {
        lab.wait_active(vm).await;
        lab.lease(vm, port);
    }
    lab.pings("vm1", &vm2).await;
}

/// Empties a directory, as a host whose disk was replaced.
fn remove_contents(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}
