//! The resources of a goal state once validated. Everything past the API
//! boundary works with these; the protobuf configurations are only kept to be
//! persisted and dumped as they were received.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
};

use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;

use super::{Mac, Vni};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Vpc {
    pub id: String,
    pub name: String,
    pub project_id: String,
    /// Informational: subnets carry the prefixes that matter.
    pub cidr: Option<Ipv4Net>,
    pub vni: Vni,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub cidr: Ipv4Net,
    pub vni: Vni,
    pub gateway: Option<GatewayAddress>,
    pub dhcp_enable: bool,
    pub dns_servers: Vec<Ipv4Addr>,
    pub extra_dhcp_options: Vec<DhcpOption>,
    pub availability_zone: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GatewayAddress {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

/// A DHCP option given by name (Neutron style, e.g. `mtu`) or number.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DhcpOption {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Port {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub mac: Mac,
    pub admin_state_up: bool,
    pub fixed_ips: Vec<FixedIp>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub security_group_ids: Vec<String>,
    pub binding: Binding,
}

impl Port {
    /// The host-side device: `tap` + the first 11 characters of the port id,
    /// the name Nova/libvirt give the tap (14 characters, under IFNAMSIZ).
    pub fn device_name(&self) -> String {
        device_name(&self.id)
    }
}

pub fn device_name(port_id: &str) -> String {
    format!("tap{}", port_id.chars().take(11).collect::<String>())
}

/// Where the port's VM side lives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Binding {
    /// No device on this host (Nova unbinds by clearing device id and owner).
    Unbound,
    /// A tap created by the hypervisor; the agent adopts it when it appears.
    Tap,
    /// A veth pair the agent creates, the peer moved into this namespace.
    Netns(NetnsRef),
}

/// A network namespace named by `ip netns` or given as a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetnsRef(String);

impl NetnsRef {
    pub const NAMED_DIR: &'static str = "/var/run/netns";

    pub fn parse(text: &str) -> Result<NetnsRef, String> {
        let valid_name = !text.is_empty()
            && text.len() <= 255
            && !text.contains('/')
            && text != "."
            && text != ".."
            && !text.contains('\0');
        let valid_path = text.starts_with('/') && text.len() <= 4096 && !text.contains('\0');
        if valid_name || valid_path {
            Ok(NetnsRef(text.to_string()))
        } else {
            Err(format!(
                "netns {text:?} is neither a namespace name nor an absolute path"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn path(&self) -> PathBuf {
        if self.0.starts_with('/') {
            PathBuf::from(&self.0)
        } else {
            PathBuf::from(Self::NAMED_DIR).join(&self.0)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip: Ipv4Addr,
}

/// Another address (and MAC) the port may send from: nested VMs, VIPs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AddressPair {
    pub ip: Ipv4Net,
    pub mac: Mac,
}

/// A VM port on another host. A million of them may be desired: its id is
/// the key of its table, and the VPC and subnet ids it names are shared by
/// all the neighbors of a message that name them.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbor {
    pub vpc_id: Arc<str>,
    pub name: String,
    pub mac: Mac,
    pub host_ip: Ipv4Addr,
    pub host_mac: Option<Mac>,
    pub fixed_ips: Vec<NeighborIp>,
    pub allowed_address_pairs: Vec<AddressPair>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NeighborIp {
    /// L3 neighbors are reached through the router (another subnet).
    pub l3: bool,
    pub subnet_id: Arc<str>,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DhcpEntry {
    pub id: String,
    pub subnet_id: String,
    pub mac: Mac,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub hostname: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Router {
    pub id: String,
    /// Source MAC of packets this host routes.
    pub host_dvr_mac: Option<Mac>,
    pub subnet_tables: Vec<SubnetRoutes>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubnetRoutes {
    pub subnet_id: String,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Route {
    pub id: String,
    pub name: String,
    pub destination: Ipv4Net,
    pub next_hop: Option<Ipv4Addr>,
    pub next_hop_mac: Option<Mac>,
    pub priority: u32,
    /// True for routes towards another subnet of the VPC, false for the
    /// internet.
    pub to_vpc_gateway: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SecurityGroup {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub rules: Vec<SecurityGroupRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SecurityGroupRule {
    pub id: String,
    pub ingress: bool,
    pub ipv6: bool,
    pub protocol: RuleProtocol,
    /// Inclusive port range; `None` matches every port.
    pub ports: Option<(u16, u16)>,
    pub remote_ip_prefix: Option<IpNet>,
    pub remote_group_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RuleProtocol {
    Tcp,
    Udp,
    Icmp,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gateway {
    pub id: String,
    pub kind: i32,
    pub destinations: Vec<GatewayAddress>,
}
