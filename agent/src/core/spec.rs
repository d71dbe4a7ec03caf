//! What the datapath should do, as one value ([`DatapathModel`]), in the
//! agent's types (`Vni`, `Mac`, `Ipv4Net`). The datapath turns it into its
//! maps' entries (`crate::datapath`).

use std::{fmt, net::Ipv4Addr};

pub use alcor_ebpf_common::Redirect;
use ipnet::Ipv4Net;

use crate::core::model::{AddressPair, GatewayAddress, Mac, Vni};

/// Everything the datapath forwards by: the local ports, the addresses known
/// in each VPC, the subnets with their gateways and routers, and this host's
/// place in the underlay (its tunnel endpoint, the other hosts).
/// [`Datapath::sync`](crate::datapath::Datapath::sync) makes the pinned maps say
/// exactly this.
///
/// ```
/// # use alcor_agent::core::{model::*, spec::*};
/// # use std::net::Ipv4Addr;
/// let vni = Vni::try_from(100).unwrap();
/// let web = PortSpec {
///     ifindex: 7,
///     vni,
///     mac: "fa:16:3e:00:00:0a".parse().unwrap(),
///     redirect: Redirect::Peer,
///     fixed_ips: vec![Ipv4Addr::new(10, 0, 1, 10)],
///     allowed_address_pairs: vec![],
/// };
/// let mut model = DatapathModel::default();
/// // The port's own addresses are endpoints of its VPC too.
/// model.endpoints.extend(web.endpoints());
/// model.ports.push(web);
/// // A VM of the same VPC on another host, reached by VXLAN over the
/// // underlay (its host is known from it: no HostSpec needed).
/// model.underlay = Some(UnderlaySpec {
///     ifindex: 2,
///     ip: Ipv4Addr::new(198, 18, 0, 1),
///     mac: "02:00:c6:12:00:01".parse().unwrap(),
///     mtu: 1500,
///     gateway_mac: None,
///     vxlan_ifindex: 3,
/// });
/// model.endpoints.push(EndpointSpec {
///     vni,
///     ip: Ipv4Addr::new(10, 0, 2, 20),
///     mac: "fa:16:3e:00:00:14".parse().unwrap(),
///     location: Location::Remote { host: Ipv4Addr::new(198, 18, 0, 2) },
/// });
/// for (cidr, gateway) in [("10.0.1.0/24", "10.0.1.1"), ("10.0.2.0/24", "10.0.2.1")] {
///     model.subnets.push(SubnetSpec {
///         vni,
///         cidr: cidr.parse().unwrap(),
///         gateway: Some(GatewayAddress {
///             ip: gateway.parse().unwrap(),
///             mac: "fa:16:3e:ff:ff:01".parse().unwrap(),
///         }),
///         // Both subnets are interfaces of one router: routed to each other.
///         router: Some("router-1".into()),
///     });
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DatapathModel {
    /// The ports of this host whose devices exist (attached or about to be).
    pub ports: Vec<PortSpec>,
    /// Every address known in the VPCs served here: the local ports' (see
    /// [`PortSpec::endpoints`]) and the remote neighbors'. ARP is answered
    /// and IPv4 delivered only for these.
    pub endpoints: Vec<EndpointSpec>,
    /// The subnets of those VPCs.
    pub subnets: Vec<SubnetSpec>,
    /// This host as a tunnel endpoint. `None`: frames to remote endpoints
    /// are dropped (`no-underlay`), and the underlay's programs let
    /// everything through.
    pub underlay: Option<UnderlaySpec>,
    /// The MAC of the next hop towards other hosts, where it is known. The
    /// hosts are those of the remote endpoints, whether listed here or not
    /// (without a MAC); an address listed here that has no endpoints is not
    /// a host: VXLAN is not accepted from it.
    pub hosts: Vec<HostSpec>,
    /// The ports' MTU (the underlay's minus 50): a bigger packet to another
    /// host or through a router gets ICMP "fragmentation needed" if it may
    /// not be fragmented. 0: not checked.
    pub port_mtu: u32,
}

/// This host's tunnel endpoint: where VXLAN leaves and arrives.
///
/// VXLAN is accepted (by `underlay_in` on the underlay device's tc ingress,
/// attached with [`Datapath::attach_underlay`](crate::datapath::Datapath::attach_underlay))
/// when addressed to `ip`, UDP port 4789, for a VNI of a port of this host
/// (the VNIs of [`DatapathModel::ports`]), from a known host
/// ([`DatapathModel::hosts`] and the hosts of remote endpoints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnderlaySpec {
    /// The underlay device (in the agent's namespace, as the ports are).
    pub ifindex: u32,
    /// This host's underlay address: outer source of what it sends, outer
    /// destination of what it accepts.
    pub ip: Ipv4Addr,
    /// The underlay device's MAC (outer source MAC when the program writes
    /// the outer MACs itself).
    pub mac: Mac,
    /// The underlay device's MTU; ports get this minus 50.
    pub mtu: u32,
    /// The MAC of the underlay's gateway, if hosts are reached through one
    /// (a routed underlay): the outer destination MAC for every host without
    /// a MAC of its own in [`DatapathModel::hosts`]. `None` and no host MAC:
    /// the kernel routes each frame and resolves the next hop's MAC itself
    /// (`bpf_redirect_neigh`).
    pub gateway_mac: Option<Mac>,
    /// The agent's VXLAN device (external mode), 0 if none: packets too
    /// big for the underlay that may be fragmented leave through it, and
    /// `vxlan_in` on its ingress delivers what it decapsulates.
    pub vxlan_ifindex: u32,
}

/// Another host of the underlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// Its underlay address (the `host_ip_address` of its neighbors).
    pub ip: Ipv4Addr,
    /// The MAC of the next hop towards it (its own on a shared segment,
    /// from the kernel's neighbour table, say): frames to it then leave
    /// with MACs written by the program and a plain redirect, the fastest
    /// way. `None`: see [`UnderlaySpec::gateway_mac`].
    pub mac: Option<Mac>,
}

/// A local port: its device and what it may send from.
#[derive(Clone, Debug, PartialEq)]
pub struct PortSpec {
    /// The host-side device (veth or tap) in the agent's namespace.
    pub ifindex: u32,
    /// Its VPC.
    pub vni: Vni,
    pub mac: Mac,
    /// How frames are delivered to it.
    pub redirect: Redirect,
    /// Its addresses; the first is the one anti-spoofing checks without a
    /// trie lookup, and whose subnet the port is in.
    pub fixed_ips: Vec<Ipv4Addr>,
    /// Further (MAC, address or prefix) the port may send from.
    pub allowed_address_pairs: Vec<AddressPair>,
}

impl PortSpec {
    /// The port's addresses as endpoints of its VPC: its fixed IPs with its
    /// MAC, and the single addresses (/32) of its allowed address pairs with
    /// theirs (a VIP answers ARP). Pairs that are wider prefixes only allow
    /// sending.
    pub fn endpoints(&self) -> Vec<EndpointSpec> {
        let location = Location::Local {
            ifindex: self.ifindex,
            redirect: self.redirect,
        };
        let fixed = self.fixed_ips.iter().map(|&ip| (ip, self.mac));
        let pairs = self
            .allowed_address_pairs
            .iter()
            .filter(|pair| pair.ip.prefix_len() == 32)
            .map(|pair| (pair.ip.addr(), pair.mac));
        fixed
            .chain(pairs)
            .map(|(ip, mac)| EndpointSpec {
                vni: self.vni,
                ip,
                mac,
                location,
            })
            .collect()
    }
}

/// An address known in a VPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub vni: Vni,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub location: Location,
}

/// Where an endpoint lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Location {
    /// On a port of this host.
    Local { ifindex: u32, redirect: Redirect },
    /// On another host (its underlay address), reached by VXLAN over the
    /// underlay.
    Remote { host: Ipv4Addr },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local {
                ifindex,
                redirect: Redirect::Peer,
            } => write!(f, "local port {ifindex} (redirect to peer)"),
            Self::Local {
                ifindex,
                redirect: Redirect::Egress,
            } => write!(f, "local port {ifindex} (redirect to egress)"),
            Self::Remote { host } => write!(f, "remote host {host}"),
        }
    }
}

/// A subnet of a VPC.
#[derive(Clone, Debug, PartialEq)]
pub struct SubnetSpec {
    pub vni: Vni,
    pub cidr: Ipv4Net,
    /// Answers ARP and ping for its address, and routes.
    pub gateway: Option<GatewayAddress>,
    /// The router (its id) whose interface this subnet is: subnets of a VPC
    /// on the same router are routed to each other.
    pub router: Option<String>,
}
