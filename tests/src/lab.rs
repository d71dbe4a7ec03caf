//! What the multi-host suites share: VMs in namespaces that their host's
//! agent plugs, agents on the hosts of a [`Topology`], and the goal state a
//! controller would push to each host (its own VMs' ports and DHCP
//! entries, the other hosts' VMs as neighbors).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use alcor_proto::{
    control::PortPhase,
    schema::{GoalState, NeighborState, OperationStatus},
};

use crate::{
    Agent, Netns,
    goalstate::{dhcp_entry, l3, neighbor, netns_port},
    topology::Topology,
    traffic, wait_for,
};

/// A VM: its namespace, and the port its host's agent plugs into it.
pub struct Vm {
    pub name: &'static str,
    pub host: &'static str,
    pub vpc_id: &'static str,
    pub subnet_id: &'static str,
    pub ip: &'static str,
    pub mac: &'static str,
    pub netns: Netns,
}

impl Vm {
    /// The VM `name` of `host` in its own namespace (`PREFIX-NAME`, IPv6
    /// off), not plugged yet.
    pub fn new(
        prefix: &str,
        (name, host, vpc_id, subnet_id, ip, mac): (
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
            &'static str,
        ),
    ) -> anyhow::Result<Vm> {
        let netns = Netns::new(format!("{prefix}-{name}"))?;
        traffic::disable_ipv6(&netns)?;
        Ok(Vm {
            name,
            host,
            vpc_id,
            subnet_id,
            ip,
            mac,
            netns,
        })
    }

    pub fn port_id(&self) -> String {
        format!("port-{}", self.name)
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ip.parse().expect("an IPv4 address")
    }

    /// Its subnet's gateway: the suites' subnets are /24s with the gateway
    /// at .1.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.ipv4().octets();
        Ipv4Addr::new(a, b, c, 1)
    }

    pub fn mac_bytes(&self) -> [u8; 6] {
        traffic::mac_bytes(self.mac).expect("a MAC")
    }

    /// `count` pings to `target`, 50 ms apart, each given a second (`args`
    /// add to ping's), within 20 s.
    pub fn ping(&self, target: &str, count: u32, args: &[&str]) -> traffic::Ping {
        let count = count.to_string();
        let mut full = vec!["-c", &count, "-i", "0.05", "-W", "1"];
        full.extend_from_slice(args);
        traffic::ping(&self.netns, target, &full, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("ping {target} from {}: {e:#}", self.name))
    }

    /// The MAC `eth0` resolved `ip` to, if any.
    pub fn neighbour_mac(&self, ip: &str) -> Option<String> {
        traffic::neighbour(&self.netns, ip)
            .unwrap()
            .and_then(|(_, mac)| mac)
    }
}

/// The VM called `name`.
pub fn find<'a>(vms: &'a [Vm], name: &str) -> &'a Vm {
    vms.iter()
        .find(|vm| vm.name == name)
        .unwrap_or_else(|| panic!("no VM {name}"))
}

/// The neighbor record of `vm` that `host` gets: L2 if `host` has a VM in
/// its subnet, L3 (reached through a router) if not.
pub fn neighbor_of(vm: &Vm, host: &str, vms: &[Vm], topology: &Topology) -> NeighborState {
    let state = neighbor(
        &format!("neighbor-{}", vm.name),
        vm.vpc_id,
        vm.subnet_id,
        vm.ip,
        vm.mac,
        &topology.host(vm.host).underlay_ip().to_string(),
    );
    let l2 = vms
        .iter()
        .any(|local| local.host == host && local.subnet_id == vm.subnet_id);
    if l2 { state } else { l3(state) }
}

/// What a controller pushes to `host`: `network` (VPCs, subnets, routers)
/// with the ports and DHCP entries of the host's VMs, and the other hosts'
/// VMs in the VPCs the host has VMs in as neighbors.
pub fn goal_state_for(
    host: &str,
    mut network: GoalState,
    vms: &[Vm],
    topology: &Topology,
) -> GoalState {
    let local: Vec<&Vm> = vms.iter().filter(|vm| vm.host == host).collect();
    for vm in &local {
        network.port_states.push(netns_port(
            &vm.port_id(),
            vm.vpc_id,
            vm.subnet_id,
            vm.ip,
            vm.mac,
            vm.netns.name(),
        ));
        network.dhcp_states.push(dhcp_entry(
            &format!("dhcp-{}", vm.name),
            vm.subnet_id,
            vm.mac,
            vm.ip,
            &format!("vm-{}", vm.name),
        ));
    }
    network.neighbor_states.extend(
        vms.iter()
            .filter(|vm| vm.host != host && local.iter().any(|l| l.vpc_id == vm.vpc_id))
            .map(|vm| neighbor_of(vm, host, vms, topology)),
    );
    network
}

/// An agent on each of `hosts` of `topology`, with the host's options (its
/// underlay), plain text (goal state comes from inside the host's
/// namespace) and `args`.
pub async fn start_agents(
    topology: &Topology,
    hosts: &[&'static str],
    args: &[&str],
) -> BTreeMap<&'static str, Agent> {
    futures::future::join_all(hosts.iter().map(|&name| {
        let host = topology.host(name);
        let mut options = host.agent_options();
        options.args.push("--insecure".into());
        options.args.extend(args.iter().map(|arg| arg.to_string()));
        async move { (name, Agent::start(host.netns(), options).await) }
    }))
    .await
    .into_iter()
    .collect()
}

/// Pushes `message` to `host`'s agent: every resource must succeed, then
/// its `ports` ports be ready.
pub async fn push_until_ready(agent: &Agent, host: &str, message: GoalState, ports: usize) {
    let reply = agent.push(message).await;
    assert!(
        reply
            .operation_statuses
            .iter()
            .all(|s| s.operation_status == OperationStatus::Success as i32),
        "{host}: {reply:#?}"
    );
    wait_for(
        &format!("every port of {host} ready"),
        Duration::from_secs(10),
        async || {
            let listed = agent.ports().await;
            (listed.len() == ports && listed.iter().all(|p| p.phase == PortPhase::Ready as i32))
                .then_some(())
        },
    )
    .await;
}
