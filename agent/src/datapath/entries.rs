//! How a [`DatapathModel`] becomes the entries of the programs' maps
//! ([`Entries`]): the `#[repr(C)]` keys and values of `alcor-ebpf-common`,
//! with addresses in network byte order. [`Entries::from_model`] checks what
//! the types cannot: no two different records for one key (the first wins,
//! and the others are reported).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use alcor_ebpf_common::{
    Endpoint, EndpointKey, HOST_MAC, HostInfo, PortInfo, Redirect, SOURCE_ALLOWED, SOURCE_MAC_ONLY,
    SUBNET_HAS_GATEWAY, SUBNET_VALID, SourceKey, SubnetInfo, SubnetKey, UNDERLAY_GATEWAY_MAC,
    UnderlayInfo, VNI_SERVED, location,
};
use ipnet::Ipv4Net;

use crate::core::{
    model::{Mac, Vni},
    spec::{DatapathModel, EndpointSpec, Location, SubnetSpec, UnderlaySpec},
};

/// The map entries a model stands for, keyed and valued as the programs
/// read them. LPM keys are (prefix length, data). Endpoints, which may be
/// millions, are a vector sorted by key (one entry per key): a third of a
/// B-tree's memory, and built and compared faster.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Entries {
    pub ports: BTreeMap<u32, PortInfo>,
    pub sources: BTreeMap<(u32, SourceKey), u32>,
    pub endpoints: Vec<(EndpointKey, Endpoint)>,
    pub subnets: BTreeMap<(u32, SubnetKey), SubnetInfo>,
    /// The one entry of UNDERLAY (all zero: no underlay).
    pub underlay: UnderlayInfo,
    pub vnis: BTreeMap<u32, u32>,
    pub hosts: BTreeMap<u32, HostInfo>,
    /// What the model lists of other hosts ([`DatapathModel::hosts`]):
    /// their next hops' MACs, for those of `hosts` that have them.
    pub listed_hosts: BTreeMap<u32, HostInfo>,
}

/// An IPv4 address as the maps hold it: its bytes in network order.
pub(super) fn net_u32(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub(super) fn from_net_u32(ip: u32) -> Ipv4Addr {
    Ipv4Addr::from(ip.to_ne_bytes())
}

impl Entries {
    /// The entries of `model`, and its conflicts: records given for a key
    /// that already had another (the first one given stays).
    pub fn from_model(model: &DatapathModel) -> (Self, Vec<String>) {
        let mut entries = Entries::default();
        let mut conflicts = Vec::new();
        let tags = router_tags(&model.subnets);
        // Subnets by VNI, for the subnet of each port's first address.
        let mut by_vni: HashMap<u32, Vec<(Ipv4Net, SubnetInfo)>> = HashMap::new();
        for subnet in &model.subnets {
            let cidr = subnet.cidr.trunc();
            let info = subnet_info(subnet, &tags);
            let key = (
                SubnetKey::FIXED_BITS + u32::from(cidr.prefix_len()),
                SubnetKey {
                    vni: subnet.vni.get(),
                    ip: net_u32(cidr.network()),
                },
            );
            if !insert_first(&mut entries.subnets, key, info) {
                conflicts.push(format!(
                    "subnet {cidr} of VNI {} is given twice, differently; the first is kept",
                    subnet.vni
                ));
                continue;
            }
            by_vni
                .entry(subnet.vni.get())
                .or_default()
                .push((cidr, info));
        }
        for port in &model.ports {
            let ip = port.fixed_ips.first().copied();
            let subnet = ip
                .and_then(|ip| {
                    by_vni
                        .get(&port.vni.get())?
                        .iter()
                        .filter(|(cidr, _)| cidr.contains(&ip))
                        .max_by_key(|(cidr, _)| cidr.prefix_len())
                })
                .map(|&(_, info)| info)
                .unwrap_or_default();
            let info = PortInfo {
                vni: port.vni.get(),
                ip: ip.map_or(0, net_u32),
                mac: port.mac.octets(),
                redirect: port.redirect as u8,
                _pad: 0,
                subnet,
                mtu: model.port_mtu,
            };
            if entries.ports.contains_key(&port.ifindex) {
                conflicts.push(format!(
                    "port {} is given twice; the first is kept",
                    port.ifindex
                ));
                continue;
            }
            entries.ports.insert(port.ifindex, info);
            // Every MAC the port may use, with any address: tells a spoofed
            // IP from a spoofed MAC, and lets DHCP's 0.0.0.0 through.
            let macs = std::iter::once(port.mac)
                .chain(port.allowed_address_pairs.iter().map(|pair| pair.mac));
            for mac in macs {
                entries.sources.insert(
                    source_key(port.ifindex, mac, Ipv4Net::default()),
                    SOURCE_MAC_ONLY,
                );
            }
            let fixed = port
                .fixed_ips
                .iter()
                .map(|&ip| (port.mac, Ipv4Net::from(ip)));
            let pairs = port
                .allowed_address_pairs
                .iter()
                .map(|pair| (pair.mac, pair.ip));
            for (mac, net) in fixed.chain(pairs) {
                entries
                    .sources
                    .insert(source_key(port.ifindex, mac, net), SOURCE_ALLOWED);
            }
        }
        entries.endpoints = endpoint_entries(&model.endpoints, &mut conflicts);

        entries.vnis = model
            .ports
            .iter()
            .map(|port| (port.vni.get(), VNI_SERVED))
            .collect();
        if let Some(underlay) = &model.underlay {
            entries.underlay = underlay_info(underlay);
        }
        for host in &model.hosts {
            let info = host_info(host.mac);
            if !insert_first(&mut entries.listed_hosts, net_u32(host.ip), info) {
                conflicts.push(format!(
                    "host {} is given twice, with different MACs; the first is kept",
                    host.ip
                ));
            }
        }
        entries.hosts = hosts_of(&entries.listed_hosts, &entries.endpoints);
        (entries, conflicts)
    }
}

/// The HOSTS entries: the hosts of remote endpoints, each as listed (with
/// its next hop's MAC) or without a MAC if not listed.
pub(super) fn hosts_of(
    listed: &BTreeMap<u32, HostInfo>,
    endpoints: &[(EndpointKey, Endpoint)],
) -> BTreeMap<u32, HostInfo> {
    let mut hosts = BTreeMap::new();
    // Runs of endpoints on one host are common: skip repeats without a
    // lookup.
    let mut last = None;
    for (_, endpoint) in endpoints {
        let host = endpoint.remote_host;
        if endpoint.location == location::REMOTE && last != Some(host) {
            last = Some(host);
            hosts
                .entry(host)
                .or_insert_with(|| listed.get(&host).copied().unwrap_or_default());
        }
    }
    hosts
}

/// The ENDPOINTS entries of `endpoints`, sorted by key; where a key is
/// given twice differently, the first stays and a conflict is reported.
fn endpoint_entries(
    endpoints: &[EndpointSpec],
    conflicts: &mut Vec<String>,
) -> Vec<(EndpointKey, Endpoint)> {
    let mut entries: Vec<(EndpointKey, Endpoint)> = endpoints.iter().map(endpoint_entry).collect();
    // Stable: of equal keys, the first given stays first. The agent's
    // model comes sorted already, which the sort finds out in one pass.
    entries.sort_by_key(|&(key, _)| key);
    entries.dedup_by(|later, kept| {
        if later.0 != kept.0 {
            return false;
        }
        if later.1 != kept.1 {
            conflicts.push(format!(
                "address {} of VNI {} is given twice, with different MACs or locations; \
                 the first is kept",
                from_net_u32(kept.0.ip),
                kept.0.vni
            ));
        }
        true
    });
    entries
}

/// The HOSTS value of a host whose next hop has `mac` (`None`: unknown).
pub(super) fn host_info(mac: Option<Mac>) -> HostInfo {
    HostInfo {
        mac: mac.map_or([0; 6], Mac::octets),
        flags: if mac.is_some() { HOST_MAC } else { 0 },
    }
}

fn underlay_info(underlay: &UnderlaySpec) -> UnderlayInfo {
    UnderlayInfo {
        ip: net_u32(underlay.ip),
        ifindex: underlay.ifindex,
        mtu: underlay.mtu,
        mac: underlay.mac.octets(),
        gateway_mac: underlay.gateway_mac.map_or([0; 6], |mac| mac.octets()),
        flags: if underlay.gateway_mac.is_some() {
            UNDERLAY_GATEWAY_MAC
        } else {
            0
        },
        vxlan_ifindex: underlay.vxlan_ifindex,
    }
}

/// Inserts unless the key already has a value; false if that value is
/// another one.
fn insert_first<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    match map.get(&key) {
        Some(existing) => *existing == value,
        None => {
            map.insert(key, value);
            true
        }
    }
}

pub(super) fn source_key(ifindex: u32, mac: Mac, net: Ipv4Net) -> (u32, SourceKey) {
    let net = net.trunc();
    (
        SourceKey::FIXED_BITS + u32::from(net.prefix_len()),
        SourceKey {
            ifindex,
            mac: mac.octets(),
            _pad: [0; 2],
            ip: net_u32(net.network()),
        },
    )
}

/// The ENDPOINTS entry of `endpoint`.
pub(super) fn endpoint_entry(endpoint: &EndpointSpec) -> (EndpointKey, Endpoint) {
    (
        endpoint_key(endpoint.vni, endpoint.ip),
        endpoint_value(endpoint),
    )
}

pub(super) fn endpoint_key(vni: Vni, ip: Ipv4Addr) -> EndpointKey {
    EndpointKey {
        vni: vni.get(),
        ip: net_u32(ip),
    }
}

fn endpoint_value(endpoint: &EndpointSpec) -> Endpoint {
    let (location, ifindex, remote_host) = match endpoint.location {
        Location::Local {
            ifindex,
            redirect: Redirect::Peer,
        } => (location::LOCAL_PEER, ifindex, 0),
        Location::Local {
            ifindex,
            redirect: Redirect::Egress,
        } => (location::LOCAL_EGRESS, ifindex, 0),
        Location::Remote { host } => (location::REMOTE, 0, net_u32(host)),
    };
    Endpoint {
        mac: endpoint.mac.octets(),
        location,
        _pad: 0,
        ifindex,
        remote_host,
    }
}

/// The location an ENDPOINTS value stands for; `None` for values no agent
/// writes.
pub(super) fn endpoint_location(value: &Endpoint) -> Option<Location> {
    let redirect = match value.location {
        location::LOCAL_PEER => Redirect::Peer,
        location::LOCAL_EGRESS => Redirect::Egress,
        location::REMOTE => {
            return Some(Location::Remote {
                host: from_net_u32(value.remote_host),
            });
        }
        _ => return None,
    };
    Some(Location::Local {
        ifindex: value.ifindex,
        redirect,
    })
}

fn subnet_info(subnet: &SubnetSpec, tags: &BTreeMap<(Vni, &str), u32>) -> SubnetInfo {
    let cidr = subnet.cidr.trunc();
    let (gateway_ip, gateway_mac, gateway_flag) = match subnet.gateway {
        Some(gateway) => (
            net_u32(gateway.ip),
            gateway.mac.octets(),
            SUBNET_HAS_GATEWAY,
        ),
        None => (0, [0; 6], 0),
    };
    SubnetInfo {
        net: net_u32(cidr.network()),
        mask: net_u32(cidr.netmask()),
        gateway_ip,
        router: subnet
            .router
            .as_deref()
            .and_then(|router| tags.get(&(subnet.vni, router)).copied())
            .unwrap_or(0),
        gateway_mac,
        flags: SUBNET_VALID | gateway_flag,
    }
}

/// A non-zero tag per router of each VPC: the router id's FNV-1a hash, so
/// that it stays the same whatever else the model holds (a resync rewrites
/// nothing), moved on by one on the (unlikely) collision of two routers of
/// one VPC, in the order of their ids.
fn router_tags(subnets: &[SubnetSpec]) -> BTreeMap<(Vni, &str), u32> {
    let routers: BTreeSet<(Vni, &str)> = subnets
        .iter()
        .filter_map(|subnet| Some((subnet.vni, subnet.router.as_deref()?)))
        .collect();
    let mut taken: BTreeSet<(Vni, u32)> = BTreeSet::new();
    let mut tags = BTreeMap::new();
    for (vni, router) in routers {
        let mut tag = fnv1a(router.as_bytes());
        while tag == 0 || !taken.insert((vni, tag)) {
            tag = tag.wrapping_add(1);
        }
        tags.insert((vni, router), tag);
    }
    tags
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{model::AddressPair, spec::PortSpec};

    fn vni(n: u64) -> Vni {
        Vni::try_from(n).unwrap()
    }

    fn subnet(vni_: u64, cidr: &str, router: Option<&str>) -> SubnetSpec {
        SubnetSpec {
            vni: vni(vni_),
            cidr: cidr.parse().unwrap(),
            gateway: None,
            router: router.map(Into::into),
        }
    }

    #[test]
    fn router_tags_are_stable_and_distinct_per_vpc() {
        let subnets = [
            subnet(1, "10.0.1.0/24", Some("r1")),
            subnet(1, "10.0.2.0/24", Some("r1")),
            subnet(1, "10.0.3.0/24", Some("r2")),
            subnet(2, "10.0.1.0/24", Some("r1")),
        ];
        let tags = router_tags(&subnets);
        assert_eq!(tags.len(), 3);
        assert_ne!(tags[&(vni(1), "r1")], tags[&(vni(1), "r2")]);
        // Independent of the other routers: the same alone.
        let alone = router_tags(&subnets[..1]);
        assert_eq!(alone[&(vni(1), "r1")], tags[&(vni(1), "r1")]);
        assert!(tags.values().all(|&tag| tag != 0));
    }

    #[test]
    fn conflicting_records_are_reported_and_the_first_kept() {
        let mut model = DatapathModel::default();
        model.subnets.push(subnet(1, "10.0.1.0/24", None));
        model.subnets.push(subnet(1, "10.0.1.0/24", Some("r1")));
        let (entries, conflicts) = Entries::from_model(&model);
        assert_eq!(conflicts.len(), 1);
        assert!(conflicts[0].contains("10.0.1.0/24"), "{conflicts:?}");
        let kept = entries.subnets.values().next().unwrap();
        assert_eq!(kept.router, 0, "the first is kept");

        let endpoint = EndpointSpec {
            vni: vni(1),
            ip: Ipv4Addr::new(10, 0, 1, 5),
            mac: Mac([2, 0, 0, 0, 0, 5]),
            location: Location::Remote {
                host: Ipv4Addr::new(198, 18, 0, 2),
            },
        };
        let mut model = DatapathModel {
            endpoints: vec![endpoint, endpoint],
            ..DatapathModel::default()
        };
        assert!(
            Entries::from_model(&model).1.is_empty(),
            "the same twice is fine"
        );
        model.endpoints[1].mac = Mac([2, 0, 0, 0, 0, 6]);
        let (entries, conflicts) = Entries::from_model(&model);
        assert!(conflicts[0].contains("10.0.1.5"), "{conflicts:?}");
        assert_eq!(entries.endpoints.len(), 1);
        assert_eq!(entries.endpoints[0].1.mac, [2, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn a_port_gets_its_sources_and_its_subnet() {
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let pair_mac = Mac([2, 0, 0, 0, 0, 2]);
        let port = PortSpec {
            ifindex: 9,
            vni: vni(7),
            mac,
            redirect: Redirect::Egress,
            fixed_ips: vec![Ipv4Addr::new(10, 0, 1, 10)],
            allowed_address_pairs: vec![AddressPair {
                ip: "192.168.0.0/16".parse().unwrap(),
                mac: pair_mac,
            }],
        };
        let model = DatapathModel {
            subnets: vec![
                subnet(7, "10.0.0.0/16", None),
                subnet(7, "10.0.1.0/24", None),
            ],
            endpoints: port.endpoints(),
            ports: vec![port],
            ..DatapathModel::default()
        };
        let (entries, conflicts) = Entries::from_model(&model);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        let info = entries.ports[&9];
        assert_eq!(info.subnet.mask, net_u32(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(info.redirect, Redirect::Egress as u8);
        let sources: Vec<_> = entries
            .sources
            .iter()
            .map(|((len, key), value)| (*len, key.mac, from_net_u32(key.ip), *value))
            .collect();
        assert_eq!(
            sources,
            [
                (96, mac.0, Ipv4Addr::UNSPECIFIED, SOURCE_MAC_ONLY),
                (96, pair_mac.0, Ipv4Addr::UNSPECIFIED, SOURCE_MAC_ONLY),
                (
                    112,
                    pair_mac.0,
                    Ipv4Addr::new(192, 168, 0, 0),
                    SOURCE_ALLOWED
                ),
                (128, mac.0, Ipv4Addr::new(10, 0, 1, 10), SOURCE_ALLOWED),
            ]
        );
        // Only the fixed IP: the pair is a prefix.
        assert_eq!(entries.endpoints.len(), 1);
    }
}
