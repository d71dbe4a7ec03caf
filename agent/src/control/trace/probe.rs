//! What a trace is about: the sending port and its VPC as the datapath
//! has them, the packet described, and what became of it.

use std::{collections::HashMap, net::Ipv4Addr};

use alcor_proto::control as api;
use ipnet::Ipv4Net;
use tonic::Status;

use crate::{
    control::views::ports_by_ifindex,
    core::{
        forwarding,
        model::{AddressPair, Mac},
        spec::{EndpointSpec, SubnetSpec},
        status::{AgentState, PortPhase},
    },
    datapath::TraceResult,
    packet,
};

/// What a trace needs to know of the sending port and its VPC, copied
/// out of the agent's state.
pub struct Setup {
    pub port_id: String,
    pub ifindex: u32,
    pub mac: Mac,
    pub ips: Vec<Ipv4Addr>,
    pub pairs: Vec<AddressPair>,
    pub vni: u32,
    /// The VPC's subnets (with their routers) and endpoints, as the
    /// datapath is programmed with them.
    pub subnets: Vec<SubnetSpec>,
    pub endpoints: Vec<EndpointSpec>,
    /// Port ids by device, for naming where frames go.
    pub ports: HashMap<u32, String>,
    /// The underlay device's name, where encapsulated frames leave;
    /// empty without one.
    pub underlay_device: String,
    /// The agent's VXLAN device's name; empty without an underlay.
    pub vxlan_device: String,
    pub port_mtu: u32,
}

/// What a trace says of this host's tunnel endpoint.
pub struct Tunnel {
    pub underlay_device: Option<String>,
    pub vxlan_device: Option<String>,
    pub port_mtu: u32,
}

impl Setup {
    pub fn new(state: &AgentState, port_id: &str, tunnel: Tunnel) -> Result<Setup, Status> {
        if port_id.is_empty() {
            return Err(Status::invalid_argument("which port sends? (port_id)"));
        }
        let port = &state
            .desired
            .ports
            .get(port_id)
            .ok_or_else(|| Status::not_found(format!("no port {port_id}")))?
            .spec;
        let ifindex = match state.ports.get(port_id) {
            Some(status) if status.phase == PortPhase::Ready && status.ifindex != 0 => {
                status.ifindex
            }
            status => {
                let (phase, reason) = status.map_or(("pending", ""), |status| {
                    (status.phase.as_str(), status.reason.as_str())
                });
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                };
                return Err(Status::failed_precondition(format!(
                    "port {port_id} is {phase}{reason}: it has no device in the datapath \
                     to trace from"
                )));
            }
        };
        let vni = state
            .desired
            .vpcs
            .get(&port.vpc_id)
            .map(|vpc| vpc.spec.vni)
            .ok_or_else(|| Status::internal(format!("port {port_id} has no VPC")))?;
        let model = forwarding::model(state, &mut forwarding::Claims::default());
        Ok(Setup {
            port_id: port_id.to_string(),
            ifindex,
            mac: port.mac,
            ips: port.fixed_ips.iter().map(|fixed| fixed.ip).collect(),
            pairs: port.allowed_address_pairs.clone(),
            vni: vni.get(),
            subnets: model
                .subnets
                .into_iter()
                .filter(|subnet| subnet.vni == vni)
                .collect(),
            endpoints: model
                .endpoints
                .into_iter()
                .filter(|endpoint| endpoint.vni == vni)
                .collect(),
            ports: ports_by_ifindex(state),
            underlay_device: tunnel.underlay_device.unwrap_or_default(),
            vxlan_device: tunnel.vxlan_device.unwrap_or_default(),
            port_mtu: tunnel.port_mtu,
        })
    }

    /// The most specific subnet of the VPC that has `ip`.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<&SubnetSpec> {
        self.subnets
            .iter()
            .filter(|subnet| subnet.cidr.contains(&ip))
            .max_by_key(|subnet| subnet.cidr.prefix_len())
    }

    /// The subnet the program takes a sender from `src` to be in: that
    /// of its address, else that of the port's first address.
    pub fn source_subnet(&self, src: Ipv4Addr) -> Option<&SubnetSpec> {
        self.subnet_of(src)
            .or_else(|| self.subnet_of(*self.ips.first()?))
    }

    /// The first endpoint of the VPC with `ip`: the one programmed.
    pub fn endpoint(&self, ip: Ipv4Addr) -> Option<&EndpointSpec> {
        self.endpoints.iter().find(|endpoint| endpoint.ip == ip)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Icmp,
    Tcp,
    Udp,
    Arp,
}

/// The packet to trace, defaults filled in.
#[derive(Clone, Debug)]
pub struct Probe {
    pub protocol: Protocol,
    pub src_mac: Mac,
    /// `None`: what the VM's ARP would resolve.
    pub dst_mac: Option<Mac>,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub ttl: u8,
    /// The IPv4 packet's total length; `None`: the protocol's usual.
    pub length: Option<u16>,
    /// DF clear.
    pub fragmentable: bool,
}

/// The source port of TCP and UDP probes unless given: the first of the
/// dynamic range.
const DEFAULT_SOURCE_PORT: u16 = 49152;
/// Linux's default TTL.
const DEFAULT_TTL: u8 = 64;

impl Probe {
    pub fn new(setup: &Setup, request: &api::TraceRequest) -> Result<Probe, String> {
        let protocol = match api::TraceProtocol::try_from(request.protocol) {
            Ok(api::TraceProtocol::Icmp) => Protocol::Icmp,
            Ok(api::TraceProtocol::Tcp) => Protocol::Tcp,
            Ok(api::TraceProtocol::Udp) => Protocol::Udp,
            Ok(api::TraceProtocol::Arp) => Protocol::Arp,
            Err(_) => return Err(format!("unknown protocol {}", request.protocol)),
        };
        let ip = |text: &str, what: &str| {
            text.parse::<Ipv4Addr>()
                .map_err(|_| format!("invalid {what} IPv4 address {text:?}"))
        };
        if request.dst_ip.is_empty() {
            return Err("a destination IPv4 address is required".into());
        }
        let dst_ip = ip(&request.dst_ip, "destination")?;
        let src_ip = match request.src_ip.as_str() {
            "" => setup.ips.first().copied().unwrap_or(Ipv4Addr::UNSPECIFIED),
            text => ip(text, "source")?,
        };
        let mac = |text: &str, what: &str| {
            text.parse::<Mac>()
                .map_err(|e| format!("invalid {what} MAC: {e}"))
        };
        let src_mac = match request.src_mac.as_str() {
            "" => setup.mac,
            text => mac(text, "source")?,
        };
        let dst_mac = match request.dst_mac.as_str() {
            "" => None,
            text => Some(mac(text, "destination")?),
        };
        let port = |value: u32, what: &str| {
            u16::try_from(value)
                .ok()
                .filter(|&port| port != 0)
                .ok_or_else(|| format!("invalid {what} port {value}: 1 to 65535"))
        };
        let (src_port, dst_port) = match protocol {
            Protocol::Tcp | Protocol::Udp => {
                if request.dst_port == 0 {
                    let name = if protocol == Protocol::Tcp {
                        "TCP"
                    } else {
                        "UDP"
                    };
                    return Err(format!("a {name} trace needs a destination port"));
                }
                let src_port = match request.src_port {
                    0 => DEFAULT_SOURCE_PORT,
                    value => port(value, "source")?,
                };
                (src_port, port(request.dst_port, "destination")?)
            }
            Protocol::Icmp | Protocol::Arp => (0, 0),
        };
        let ttl = match request.ttl {
            0 => DEFAULT_TTL,
            ttl => u8::try_from(ttl).map_err(|_| format!("invalid TTL {ttl}: 1 to 255"))?,
        };
        let length = match (request.length, protocol) {
            (0, _) => None,
            (_, Protocol::Arp) => return Err("ARP has no IPv4 length to set".into()),
            (length, _) => {
                let least = 20 + packet::least_l4_len(protocol.number());
                Some(
                    u16::try_from(length)
                        .ok()
                        .filter(|&length| usize::from(length) >= least)
                        .ok_or_else(|| {
                            format!("invalid length {length}: {least} to 65535 bytes")
                        })?,
                )
            }
        };
        Ok(Probe {
            protocol,
            src_mac,
            dst_mac,
            src_ip,
            dst_ip,
            src_port,
            dst_port,
            ttl,
            length,
            fragmentable: request.fragmentable,
        })
    }

    /// The packet in words: `ICMP echo 10.0.1.10 -> 10.0.2.20`, with
    /// its length and DF if set.
    pub fn words(&self) -> String {
        let (src, dst) = (self.src_ip, self.dst_ip);
        let (sport, dport) = (self.src_port, self.dst_port);
        let packet = match self.protocol {
            Protocol::Icmp => format!("ICMP echo {src} -> {dst}"),
            Protocol::Tcp => format!("TCP SYN {src}:{sport} -> {dst}:{dport}"),
            Protocol::Udp => format!("UDP {src}:{sport} -> {dst}:{dport}"),
            Protocol::Arp => return format!("ARP request: who has {dst}? tell {src}"),
        };
        let df = if self.fragmentable { "" } else { ", DF" };
        match self.length {
            Some(length) => format!("{packet} ({length} bytes{df})"),
            None if self.fragmentable => format!("{packet} (DF clear)"),
            None => packet,
        }
    }

    /// The frame, sent to `dst_mac`.
    pub fn frame(&self, dst_mac: Mac) -> Vec<u8> {
        let (src, dst) = (self.src_ip, self.dst_ip);
        let l4_len = self.length.map(|length| usize::from(length) - 20);
        let payload = match self.protocol {
            Protocol::Arp => return packet::arp_request(self.src_mac, dst_mac, src, dst),
            Protocol::Icmp => packet::icmp_echo(l4_len),
            Protocol::Tcp => packet::tcp_syn(src, dst, self.src_port, self.dst_port, l4_len),
            Protocol::Udp => packet::udp(src, dst, self.src_port, self.dst_port, l4_len),
        };
        packet::ipv4(
            self.src_mac,
            dst_mac,
            packet::Addresses { src, dst },
            packet::Ipv4Fields {
                ttl: self.ttl,
                protocol: self.protocol.number(),
                dont_fragment: !self.fragmentable,
            },
            &payload,
        )
    }
}

impl Protocol {
    /// The IP protocol number (ARP has none: 0).
    fn number(self) -> u8 {
        match self {
            Self::Icmp => packet::IPPROTO_ICMP,
            Self::Tcp => packet::IPPROTO_TCP,
            Self::Udp => packet::IPPROTO_UDP,
            Self::Arp => 0,
        }
    }
}

/// How the frame got its destination MAC.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// Given in the request.
    Given,
    /// An ARP request: to everyone.
    Broadcast,
    /// The VM's ARP request for `ip` (the destination, or the gateway
    /// of a destination outside the VM's subnet) is answered.
    Resolved {
        ip: Ipv4Addr,
        mac: Mac,
        gateway_of: Option<Ipv4Net>,
    },
    /// It is not: the frame goes to broadcast, and `why` says why.
    Unanswered { ip: Ipv4Addr, why: String },
    /// The destination is outside the VM's subnet, which has no gateway.
    NoGateway { subnet: Ipv4Net },
    /// The VM's address is in no subnet.
    NoSubnet { ip: Ipv4Addr },
}

impl Resolution {
    /// A few words after the MAC: `gateway of 10.0.1.0/24`.
    pub fn words(&self) -> String {
        match self {
            Self::Given => "given".into(),
            Self::Broadcast => "broadcast".into(),
            Self::Resolved {
                gateway_of: Some(subnet),
                ..
            } => format!("gateway of {subnet}"),
            Self::Resolved { ip, .. } => format!("MAC of {ip}"),
            Self::Unanswered { ip, .. } => {
                format!("broadcast: the VM's ARP request for {ip} gets no reply")
            }
            Self::NoGateway { subnet } => {
                format!("broadcast: the destination is outside {subnet}, which has no gateway")
            }
            Self::NoSubnet { ip } => format!("broadcast: {ip} is in no subnet of the VPC"),
        }
    }
}

pub struct Outcome {
    pub resolution: Resolution,
    pub input: Vec<u8>,
    pub result: TraceResult,
}
