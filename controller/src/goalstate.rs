//! The goal state of each host, as a function of the stored resources, and
//! the message that takes a host from what it acknowledged to what it
//! should have. Pure: no store, no network.
//!
//! A host gets:
//! - its ports (those bound to it), each with its host's underlay address;
//! - the VPC (Neutron network) of each of its ports, every subnet of those
//!   VPCs, and the routers joining those subnets;
//! - a DHCP entry for each address of its ports in a subnet with DHCP;
//! - every other bound port of those VPCs as a neighbor, at its host's
//!   underlay address: L2 in a subnet where the host has a port, L3
//!   (reached through a router) otherwise.
//!
//! Configurations are kept without their revision: two states are equal
//! when they ask the same of the agent. The revision is the store's, set
//! when a message is made, so it only grows.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use alcor_proto::schema::{
    DhcpConfiguration, DhcpState, GoalStateV2, NeighborConfiguration, NeighborState, NeighborType,
    NetworkType, OperationType, PortConfiguration, PortState, RouterConfiguration, RouterState,
    SubnetConfiguration, SubnetState, UpdateType, VpcConfiguration, VpcState,
    neighbor_configuration, port_configuration, router_configuration::SubnetRoutingTable,
    subnet_configuration,
};
use alcor_types::Mac;

use crate::model::{
    Network, Port, Router, Subnet,
    agent::AgentRecord,
    router::{ROUTER_GATEWAY, ROUTER_INTERFACE},
};

/// What the goal states are computed from: the resources as of one store
/// revision.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub networks: Vec<Network>,
    pub subnets: Vec<Subnet>,
    pub ports: Vec<Port>,
    pub routers: Vec<Router>,
    pub agents: Vec<AgentRecord>,
}

/// Everything one host should have, by resource id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostState {
    pub vpcs: BTreeMap<String, VpcConfiguration>,
    pub subnets: BTreeMap<String, SubnetConfiguration>,
    pub ports: BTreeMap<String, PortConfiguration>,
    pub dhcp: BTreeMap<String, DhcpConfiguration>,
    pub neighbors: BTreeMap<String, NeighborConfiguration>,
    pub routers: BTreeMap<String, RouterConfiguration>,
}

impl HostState {
    pub fn is_empty(&self) -> bool {
        *self == HostState::default()
    }
}

/// The `binding:profile` key that binds a port to a network namespace.
pub const NETNS_PROFILE_KEY: &str = "netns";

/// The namespace a port is bound to, if its profile names one.
pub fn netns_of(port: &Port) -> Option<&str> {
    port.binding_profile
        .get(NETNS_PROFILE_KEY)
        .and_then(|value| value.as_str())
        .filter(|name| !name.is_empty())
}

/// Whether a port is a VM's (or container's) that an agent plugs in: bound
/// to a host, and not a router's own.
fn is_plugged(port: &Port) -> bool {
    !port.binding_host_id.is_empty()
        && port.device_owner != ROUTER_INTERFACE
        && port.device_owner != ROUTER_GATEWAY
}

/// The goal state of every registered host (hosts without anything get an
/// empty state, so that what they had is taken away).
pub fn host_states(inventory: &Inventory) -> BTreeMap<String, HostState> {
    let hosts: HashMap<&str, &AgentRecord> = inventory
        .agents
        .iter()
        .map(|agent| (agent.host_id.as_str(), agent))
        .collect();
    let networks: HashMap<&str, &Network> = inventory
        .networks
        .iter()
        .map(|network| (network.meta.id.as_str(), network))
        .collect();
    let subnets: HashMap<&str, &Subnet> = inventory
        .subnets
        .iter()
        .map(|subnet| (subnet.meta.id.as_str(), subnet))
        .collect();
    // Ports bound to a registered host, by network.
    let mut bound: HashMap<&str, Vec<(&Port, &AgentRecord)>> = HashMap::new();
    for port in inventory.ports.iter().filter(|port| is_plugged(port)) {
        if let Some(agent) = hosts.get(port.binding_host_id.as_str())
            && networks.contains_key(port.network_id.as_str())
        {
            bound
                .entry(port.network_id.as_str())
                .or_default()
                .push((port, agent));
        }
    }
    // The gateway MAC of each subnet: its router interface's, if it has one.
    let mut gateway_macs: HashMap<&str, Mac> = HashMap::new();
    let mut router_subnets: Vec<(&Router, Vec<&str>)> = Vec::new();
    let interfaces: HashMap<&str, &Port> = inventory
        .ports
        .iter()
        .filter(|port| port.device_owner == ROUTER_INTERFACE)
        .map(|port| (port.meta.id.as_str(), port))
        .collect();
    for router in &inventory.routers {
        let mut joined = Vec::new();
        for port in router
            .interfaces
            .iter()
            .filter_map(|id| interfaces.get(id.as_str()))
        {
            for fixed in &port.fixed_ips {
                gateway_macs.insert(fixed.subnet_id.as_str(), port.mac_address);
                joined.push(fixed.subnet_id.as_str());
            }
        }
        router_subnets.push((router, joined));
    }

    let mut states: BTreeMap<String, HostState> = inventory
        .agents
        .iter()
        .map(|agent| (agent.host_id.clone(), HostState::default()))
        .collect();
    for (network_id, ports) in &bound {
        let network = networks[network_id];
        let network_subnets: Vec<&Subnet> = network
            .subnets
            .iter()
            .filter_map(|id| subnets.get(id.as_str()).copied())
            .collect();
        let on_host: BTreeSet<&str> = ports
            .iter()
            .map(|(_, agent)| agent.host_id.as_str())
            .collect();
        for host in on_host {
            let Some(state) = states.get_mut(host) else {
                continue;
            };
            state
                .vpcs
                .insert(network.meta.id.clone(), vpc_config(network));
            for subnet in &network_subnets {
                let gateway_mac = gateway_macs.get(subnet.meta.id.as_str()).copied();
                state.subnets.insert(
                    subnet.meta.id.clone(),
                    subnet_config(subnet, network, gateway_mac),
                );
            }
            let local_subnets: BTreeSet<&str> = ports
                .iter()
                .filter(|(_, agent)| agent.host_id == host)
                .flat_map(|(port, _)| port.fixed_ips.iter().map(|f| f.subnet_id.as_str()))
                .collect();
            for (port, agent) in ports {
                if agent.host_id == host {
                    state
                        .ports
                        .insert(port.meta.id.clone(), port_config(port, agent));
                    for (id, entry) in dhcp_configs(port, &subnets) {
                        state.dhcp.insert(id, entry);
                    }
                } else if !port.fixed_ips.is_empty() {
                    state.neighbors.insert(
                        port.meta.id.clone(),
                        neighbor_config(port, agent, &local_subnets),
                    );
                }
            }
        }
    }
    // Routers: the tables of the subnets each host knows.
    for state in states.values_mut() {
        for (router, joined) in &router_subnets {
            let tables: Vec<SubnetRoutingTable> = joined
                .iter()
                .filter(|subnet_id| state.subnets.contains_key(**subnet_id))
                .map(|subnet_id| SubnetRoutingTable {
                    subnet_id: subnet_id.to_string(),
                    routing_rules: Vec::new(),
                })
                .collect();
            // One subnet alone has nothing to be routed to.
            if tables.len() >= 2 {
                state.routers.insert(
                    router.meta.id.clone(),
                    RouterConfiguration {
                        id: router.meta.id.clone(),
                        update_type: UpdateType::Full as i32,
                        subnet_routing_tables: tables,
                        ..Default::default()
                    },
                );
            }
        }
    }
    states
}

fn vpc_config(network: &Network) -> VpcConfiguration {
    VpcConfiguration {
        id: network.meta.id.clone(),
        update_type: UpdateType::Full as i32,
        project_id: network.meta.project_id.clone(),
        name: network.meta.name.clone(),
        tunnel_id: network.vni.get(),
        ..Default::default()
    }
}

/// A gateway MAC for a subnet no router has joined yet: locally
/// administered, from the subnet's id, so that it stays the same.
fn derived_gateway_mac(subnet_id: &str) -> Mac {
    let mut bytes = [0x02, 0, 0, 0, 0, 0];
    let hex: Vec<u8> = subnet_id
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .take(10)
        .collect();
    for (n, pair) in hex.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).unwrap_or("0");
        bytes[n + 1] = u8::from_str_radix(text, 16).unwrap_or(0);
    }
    Mac(bytes)
}

fn subnet_config(
    subnet: &Subnet,
    network: &Network,
    gateway_mac: Option<Mac>,
) -> SubnetConfiguration {
    let gateway = subnet.gateway_ip.map(|ip| subnet_configuration::Gateway {
        ip_address: ip.to_string(),
        mac_address: gateway_mac
            .unwrap_or_else(|| derived_gateway_mac(&subnet.meta.id))
            .to_string(),
    });
    SubnetConfiguration {
        id: subnet.meta.id.clone(),
        update_type: UpdateType::Full as i32,
        network_type: NetworkType::Vxlan as i32,
        vpc_id: network.meta.id.clone(),
        name: subnet.meta.name.clone(),
        cidr: subnet.cidr.to_string(),
        tunnel_id: u64::from(network.vni.get()),
        gateway,
        dhcp_enable: subnet.enable_dhcp,
        dns_entry_list: subnet
            .dns_nameservers
            .iter()
            .map(|server| subnet_configuration::DnsEntry {
                entry: server.to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

fn port_config(port: &Port, agent: &AgentRecord) -> PortConfiguration {
    let mut pairs: Vec<port_configuration::AllowAddressPair> = port
        .allowed_address_pairs
        .iter()
        .map(|pair| port_configuration::AllowAddressPair {
            ip_address: pair.ip_address.clone(),
            mac_address: pair.mac_address.unwrap_or(port.mac_address).to_string(),
        })
        .collect();
    // Without port security, the port may send from any address.
    if !port.port_security_enabled {
        pairs.push(port_configuration::AllowAddressPair {
            ip_address: "0.0.0.0/0".into(),
            mac_address: port.mac_address.to_string(),
        });
    }
    PortConfiguration {
        id: port.meta.id.clone(),
        update_type: UpdateType::Full as i32,
        vpc_id: port.network_id.clone(),
        name: port.meta.name.clone(),
        device_id: port.device_id.clone(),
        device_owner: port.device_owner.clone(),
        mac_address: port.mac_address.to_string(),
        admin_state_up: port.admin_state_up,
        host_info: Some(port_configuration::HostInfo {
            ip_address: agent.underlay_ip.to_string(),
            mac_address: agent.underlay_mac.to_string(),
        }),
        fixed_ips: port
            .fixed_ips
            .iter()
            .map(|fixed| port_configuration::FixedIp {
                subnet_id: fixed.subnet_id.clone(),
                ip_address: fixed.ip_address.to_string(),
            })
            .collect(),
        allow_address_pairs: pairs,
        security_group_ids: port
            .security_groups
            .iter()
            .map(|id| port_configuration::SecurityGroupId { id: id.clone() })
            .collect(),
        netns: netns_of(port).unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// Neutron's default host name for an address: `host-10-0-1-5`.
fn hostname(ip: Ipv4Addr) -> String {
    format!("host-{}", ip.to_string().replace('.', "-"))
}

/// The id of a port's DHCP entry in a subnet.
fn dhcp_id(port_id: &str, subnet_id: &str) -> String {
    format!("{port_id}/{subnet_id}")
}

fn dhcp_configs(port: &Port, subnets: &HashMap<&str, &Subnet>) -> Vec<(String, DhcpConfiguration)> {
    port.fixed_ips
        .iter()
        .filter(|fixed| {
            subnets
                .get(fixed.subnet_id.as_str())
                .is_some_and(|subnet| subnet.enable_dhcp)
        })
        .map(|fixed| {
            let id = dhcp_id(&port.meta.id, &fixed.subnet_id);
            let entry = DhcpConfiguration {
                id: id.clone(),
                update_type: UpdateType::Full as i32,
                subnet_id: fixed.subnet_id.clone(),
                mac_address: port.mac_address.to_string(),
                ipv4_address: fixed.ip_address.to_string(),
                port_host_name: hostname(fixed.ip_address),
                ..Default::default()
            };
            (id, entry)
        })
        .collect()
}

fn neighbor_config(
    port: &Port,
    agent: &AgentRecord,
    local_subnets: &BTreeSet<&str>,
) -> NeighborConfiguration {
    NeighborConfiguration {
        id: port.meta.id.clone(),
        update_type: UpdateType::Full as i32,
        vpc_id: port.network_id.clone(),
        name: port.meta.name.clone(),
        mac_address: port.mac_address.to_string(),
        host_ip_address: agent.underlay_ip.to_string(),
        host_mac_address: agent.underlay_mac.to_string(),
        fixed_ips: port
            .fixed_ips
            .iter()
            .map(|fixed| neighbor_configuration::FixedIp {
                neighbor_type: if local_subnets.contains(fixed.subnet_id.as_str()) {
                    NeighborType::L2
                } else {
                    NeighborType::L3
                } as i32,
                subnet_id: fixed.subnet_id.clone(),
                ip_address: fixed.ip_address.to_string(),
                ..Default::default()
            })
            .collect(),
        allow_address_pairs: port
            .allowed_address_pairs
            .iter()
            .map(|pair| neighbor_configuration::AllowAddressPair {
                ip_address: pair.ip_address.clone(),
                mac_address: pair.mac_address.unwrap_or(port.mac_address).to_string(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A resource's configuration as the diff sees it: its id, and its
/// revision to set.
trait Config: Clone + PartialEq {
    type State;
    fn set_revision(&mut self, revision: u32);
    fn state(self, operation: OperationType) -> Self::State;
}

macro_rules! config {
    ($($config:ty => $state:ident),* $(,)?) => {$(
        impl Config for $config {
            type State = $state;
            fn set_revision(&mut self, revision: u32) {
                self.revision_number = revision;
            }
            fn state(self, operation: OperationType) -> $state {
                $state {
                    operation_type: operation as i32,
                    configuration: Some(self),
                }
            }
        }
    )*};
}

config!(
    VpcConfiguration => VpcState,
    SubnetConfiguration => SubnetState,
    PortConfiguration => PortState,
    DhcpConfiguration => DhcpState,
    NeighborConfiguration => NeighborState,
    RouterConfiguration => RouterState,
);

/// What it takes to go from `acked` to `desired` for one kind: creates and
/// updates of what is new or changed, deletes of what is gone.
fn changes<C: Config>(
    acked: &BTreeMap<String, C>,
    desired: &BTreeMap<String, C>,
    revision: u32,
) -> HashMap<String, C::State> {
    let mut states = HashMap::new();
    for (id, config) in desired {
        let operation = match acked.get(id) {
            Some(old) if old == config => continue,
            Some(_) => OperationType::Update,
            None => OperationType::Create,
        };
        let mut config = config.clone();
        config.set_revision(revision);
        states.insert(id.clone(), config.state(operation));
    }
    for (id, config) in acked {
        if !desired.contains_key(id) {
            let mut config = config.clone();
            config.set_revision(revision);
            states.insert(id.clone(), config.state(OperationType::Delete));
        }
    }
    states
}

/// The message taking a host from `acked` to `desired`, every resource in
/// it at `revision`; `None` when they are the same.
pub fn diff(acked: &HostState, desired: &HostState, revision: u32) -> Option<GoalStateV2> {
    if acked == desired {
        return None;
    }
    Some(GoalStateV2 {
        format_version: 1,
        vpc_states: changes(&acked.vpcs, &desired.vpcs, revision),
        subnet_states: changes(&acked.subnets, &desired.subnets, revision),
        port_states: changes(&acked.ports, &desired.ports, revision),
        dhcp_states: changes(&acked.dhcp, &desired.dhcp, revision),
        neighbor_states: changes(&acked.neighbors, &desired.neighbors, revision),
        router_states: changes(&acked.routers, &desired.routers, revision),
        ..Default::default()
    })
}
