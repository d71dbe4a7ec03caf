//! Builders for goal-state messages, with the defaults a controller would
//! send (revision 1, CREATE, port update_type FULL).

use crate::schema::{
    self, DhcpState, GoalState, GoalStateV2, NeighborState, NeighborType, OperationType, PortState,
    RouterState, SubnetState, UpdateType, VpcState, neighbor_configuration,
    port_configuration::{AllowAddressPair, FixedIp},
    router_configuration::{RoutingRule, SubnetRoutingTable},
    subnet_configuration::{DnsEntry, ExtraDhcpOption, Gateway},
};

pub fn vpc(id: &str, vni: u32, cidr: &str) -> VpcState {
    VpcState {
        operation_type: OperationType::Create as i32,
        configuration: Some(schema::VpcConfiguration {
            revision_number: 1,
            id: id.into(),
            name: format!("vpc {id}"),
            project_id: "project".into(),
            cidr: cidr.into(),
            tunnel_id: vni,
            ..Default::default()
        }),
    }
}

pub fn subnet(id: &str, vpc_id: &str, cidr: &str, gateway_ip: &str) -> SubnetState {
    SubnetState {
        operation_type: OperationType::Create as i32,
        configuration: Some(schema::SubnetConfiguration {
            revision_number: 1,
            id: id.into(),
            vpc_id: vpc_id.into(),
            name: format!("subnet {id}"),
            cidr: cidr.into(),
            gateway: Some(Gateway {
                ip_address: gateway_ip.into(),
                mac_address: "fa:16:3e:00:00:01".into(),
            }),
            dhcp_enable: true,
            ..Default::default()
        }),
    }
}

/// A port bound to a network namespace (the agent makes its veth).
pub fn netns_port(
    id: &str,
    vpc_id: &str,
    subnet_id: &str,
    ip: &str,
    mac: &str,
    netns: &str,
) -> PortState {
    let mut port = tap_port(id, vpc_id, subnet_id, ip, mac);
    if let Some(config) = port.configuration.as_mut() {
        config.netns = netns.into();
        config.device_owner = "compute:container".into();
    }
    port
}

/// A port bound to a hypervisor tap (`tap` + 11 characters of the id).
pub fn tap_port(id: &str, vpc_id: &str, subnet_id: &str, ip: &str, mac: &str) -> PortState {
    PortState {
        operation_type: OperationType::Create as i32,
        configuration: Some(schema::PortConfiguration {
            revision_number: 1,
            id: id.into(),
            update_type: UpdateType::Full as i32,
            vpc_id: vpc_id.into(),
            name: format!("port {id}"),
            device_id: format!("vm-{id}"),
            device_owner: "compute:nova".into(),
            mac_address: mac.into(),
            admin_state_up: true,
            fixed_ips: vec![FixedIp {
                subnet_id: subnet_id.into(),
                ip_address: ip.into(),
            }],
            ..Default::default()
        }),
    }
}

/// A port of another host, as a controller describes it to this one: its
/// MAC, its address in `subnet_id` (L2 neighbor) and its host's underlay
/// address, where VXLAN to it goes.
pub fn neighbor(
    id: &str,
    vpc_id: &str,
    subnet_id: &str,
    ip: &str,
    mac: &str,
    host_ip: &str,
) -> NeighborState {
    NeighborState {
        operation_type: OperationType::Create as i32,
        configuration: Some(schema::NeighborConfiguration {
            revision_number: 1,
            id: id.into(),
            update_type: UpdateType::Full as i32,
            vpc_id: vpc_id.into(),
            name: format!("neighbor {id}"),
            mac_address: mac.into(),
            host_ip_address: host_ip.into(),
            fixed_ips: vec![neighbor_configuration::FixedIp {
                neighbor_type: NeighborType::L2 as i32,
                subnet_id: subnet_id.into(),
                ip_address: ip.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// Makes a neighbor's addresses L3: in a subnet this host reaches through
/// a router (Alcor's `NeighborType::L3`), not one it has VMs in.
pub fn l3(mut neighbor: NeighborState) -> NeighborState {
    if let Some(config) = neighbor.configuration.as_mut() {
        for fixed in &mut config.fixed_ips {
            fixed.neighbor_type = NeighborType::L3 as i32;
        }
    }
    neighbor
}

/// Any resource state: sets its operation and revision.
pub trait StateExt: Sized {
    fn with(self, operation: OperationType, revision: u32) -> Self;
}

macro_rules! state_ext {
    ($($state:ty),*) => {$(
        impl StateExt for $state {
            fn with(mut self, operation: OperationType, revision: u32) -> Self {
                self.operation_type = operation as i32;
                if let Some(config) = self.configuration.as_mut() {
                    config.revision_number = revision;
                }
                self
            }
        }
    )*};
}

state_ext!(
    VpcState,
    SubnetState,
    PortState,
    DhcpState,
    RouterState,
    NeighborState
);

/// A V1 message with these resources.
pub fn v1(vpcs: Vec<VpcState>, subnets: Vec<SubnetState>, ports: Vec<PortState>) -> GoalState {
    GoalState {
        format_version: 1,
        vpc_states: vpcs,
        subnet_states: subnets,
        port_states: ports,
        ..Default::default()
    }
}

/// The usual fixture: VPC `vpc1` (VNI 100, 10.0.0.0/16) with subnet `sn1`
/// (10.0.1.0/24, gateway 10.0.1.1), and these ports.
pub fn one_subnet(ports: Vec<PortState>) -> GoalState {
    v1(
        vec![vpc("vpc1", 100, "10.0.0.0/16")],
        vec![subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1")],
        ports,
    )
}

/// The same resources as a V2 message, keyed by id.
pub fn v2(vpcs: Vec<VpcState>, subnets: Vec<SubnetState>, ports: Vec<PortState>) -> GoalStateV2 {
    macro_rules! by_id {
        ($states:expr) => {
            $states
                .into_iter()
                .map(|s| {
                    (
                        s.configuration
                            .as_ref()
                            .map(|c| c.id.clone())
                            .unwrap_or_default(),
                        s,
                    )
                })
                .collect()
        };
    }
    GoalStateV2 {
        format_version: 1,
        vpc_states: by_id!(vpcs),
        subnet_states: by_id!(subnets),
        port_states: by_id!(ports),
        ..Default::default()
    }
}

/// A subnet with DNS servers and extra DHCP options (Neutron names or
/// numeric codes, e.g. `("ntp-server", "10.0.0.5")`).
pub fn dhcp_subnet(
    id: &str,
    vpc_id: &str,
    cidr: &str,
    gateway_ip: &str,
    dns: &[&str],
    extra_dhcp_options: &[(&str, &str)],
) -> SubnetState {
    let mut state = subnet(id, vpc_id, cidr, gateway_ip);
    if let Some(config) = state.configuration.as_mut() {
        config.dns_entry_list = dns
            .iter()
            .map(|entry| DnsEntry {
                entry: entry.to_string(),
            })
            .collect();
        config.extra_dhcp_options = extra_dhcp_options
            .iter()
            .map(|(name, value)| ExtraDhcpOption {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect();
    }
    state
}

/// The DHCP entry of a MAC: its address on the subnet and its host name.
pub fn dhcp_entry(id: &str, subnet_id: &str, mac: &str, ip: &str, hostname: &str) -> DhcpState {
    DhcpState {
        operation_type: OperationType::Create as i32,
        configuration: Some(schema::DhcpConfiguration {
            revision_number: 1,
            id: id.into(),
            update_type: UpdateType::Full as i32,
            subnet_id: subnet_id.into(),
            mac_address: mac.into(),
            ipv4_address: ip.into(),
            port_host_name: hostname.into(),
            ..Default::default()
        }),
    }
}

/// A router whose table for `subnet_id` has these (destination, next hop)
/// rules.
pub fn router(id: &str, subnet_id: &str, routes: &[(&str, &str)]) -> RouterState {
    RouterState {
        operation_type: OperationType::Create as i32,
        configuration: Some(schema::RouterConfiguration {
            revision_number: 1,
            id: id.into(),
            update_type: UpdateType::Full as i32,
            subnet_routing_tables: vec![SubnetRoutingTable {
                subnet_id: subnet_id.into(),
                routing_rules: routes
                    .iter()
                    .enumerate()
                    .map(|(n, (destination, next_hop))| RoutingRule {
                        operation_type: OperationType::Create as i32,
                        id: format!("{id}-rule{n}"),
                        name: format!("route to {destination}"),
                        destination: destination.to_string(),
                        next_hop_ip: next_hop.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            }],
            ..Default::default()
        }),
    }
}

/// Adds allowed address pairs (IP, MAC) to a port.
pub fn with_address_pairs(mut port: PortState, pairs: &[(String, String)]) -> PortState {
    if let Some(config) = port.configuration.as_mut() {
        config
            .allow_address_pairs
            .extend(pairs.iter().map(|(ip, mac)| AllowAddressPair {
                ip_address: ip.clone(),
                mac_address: mac.clone(),
            }));
    }
    port
}

/// A router joining `subnet_ids` (one routing table each, no extra rules):
/// the datapath routes between them.
pub fn router_joining(id: &str, subnet_ids: &[&str]) -> RouterState {
    RouterState {
        operation_type: OperationType::Create as i32,
        configuration: Some(schema::RouterConfiguration {
            revision_number: 1,
            id: id.into(),
            update_type: UpdateType::Full as i32,
            subnet_routing_tables: subnet_ids
                .iter()
                .map(|subnet_id| SubnetRoutingTable {
                    subnet_id: subnet_id.to_string(),
                    routing_rules: Vec::new(),
                })
                .collect(),
            ..Default::default()
        }),
    }
}

/// Gives a subnet's gateway its own MAC (`subnet` gives every gateway the
/// same one), so that routed frames show which gateway they left through.
pub fn with_gateway_mac(mut subnet: SubnetState, mac: &str) -> SubnetState {
    if let Some(gateway) = subnet
        .configuration
        .as_mut()
        .and_then(|config| config.gateway.as_mut())
    {
        gateway.mac_address = mac.into();
    }
    subnet
}
