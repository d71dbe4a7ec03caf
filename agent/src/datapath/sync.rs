//! Programming the maps from a [`DatapathModel`], and reading them back.
//!
//! [`Datapath::sync`] compares the model's entries with what the pinned maps
//! hold *now* (read from the kernel, so a restarted agent compares against
//! what its predecessor wrote) and writes only the difference: new and
//! changed entries first (each update replaces one entry atomically), then
//! removals. A map is never cleared and refilled, so forwarding does not blip
//! when a restarted agent resyncs.
//!
//! aya 0.14 has no batch map operations, so entries are written one
//! syscall each; a resync with nothing changed makes no write at all. After
//! the first sync the agent remembers what it wrote instead of reading the
//! maps again, so a small change costs a few syscalls whatever the size of
//! the maps; only this agent writes them.

use std::{collections::BTreeMap, net::Ipv4Addr};

use alcor_ebpf_common::{
    DropReason, Endpoint, EndpointKey, PortInfo, PortStats, Redirect, SOURCE_ALLOWED,
    SUBNET_HAS_GATEWAY, SUBNET_VALID, SourceKey, SubnetInfo, SubnetKey, maps,
};
use aya::maps::{
    HashMap, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::Ipv4Net;

use super::{
    Datapath, DatapathError, map_error,
    model::{DatapathModel, Entries, Location, endpoint_location, from_net_u32},
    removed,
};
use crate::model::{GatewayAddress, Mac};

/// What a [`Datapath::sync`] did to one map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapChanges {
    /// Entries added or changed.
    pub written: usize,
    /// Entries removed.
    pub removed: usize,
    /// Entries that already were as the model says.
    pub unchanged: usize,
}

impl MapChanges {
    fn changes(&self) -> usize {
        self.written + self.removed
    }
}

/// What a [`Datapath::sync`] did, per map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub ports: MapChanges,
    pub sources: MapChanges,
    pub endpoints: MapChanges,
    pub subnets: MapChanges,
    /// Records of the model that contradicted an earlier one for the same
    /// key (the same address of a VPC with two MACs, say), and were left
    /// out: worth a warning, not worth leaving the rest unprogrammed.
    pub conflicts: Vec<String>,
}

impl SyncStats {
    /// Entries written or removed over all maps: 0 when the maps already
    /// said what the model says.
    pub fn changes(&self) -> usize {
        [self.ports, self.sources, self.endpoints, self.subnets]
            .iter()
            .map(MapChanges::changes)
            .sum()
    }
}

/// A port as the PORTS and SOURCES maps describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    pub ifindex: u32,
    pub vni: u32,
    pub mac: Mac,
    /// Its first fixed IP, checked without a trie lookup.
    pub ip: Option<Ipv4Addr>,
    pub redirect: Option<Redirect>,
    /// The subnet of `ip`.
    pub subnet: Option<Ipv4Net>,
    /// The (MAC, prefix) pairs it may send from.
    pub sources: Vec<(Mac, Ipv4Net)>,
}

/// An address known in a VPC, as the ENDPOINTS map holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointEntry {
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// `None` for a value this agent cannot read (another version's).
    pub location: Option<Location>,
}

/// A subnet, as the SUBNETS map holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SubnetEntry {
    pub vni: u32,
    pub cidr: Ipv4Net,
    pub gateway: Option<GatewayAddress>,
    /// The tag of its router (see [`RouteEntry::router`]).
    pub router: Option<u32>,
}

/// Packets from subnet `from` to subnet `to` are routed: sent to `from`'s
/// gateway MAC, they leave with `to`'s gateway MAC as source and a TTL one
/// lower.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteEntry {
    pub vni: u32,
    pub from: Ipv4Net,
    pub to: Ipv4Net,
    /// The router's tag in the maps: a hash of its id, the same for every
    /// subnet on it.
    pub router: u32,
    /// `to`'s gateway.
    pub via: GatewayAddress,
}

/// One map's difference between what it holds and what it should.
struct Plan<K, V> {
    write: Vec<(K, V)>,
    remove: Vec<K>,
    unchanged: usize,
}

impl<K: Ord + Copy, V: PartialEq + Copy> Plan<K, V> {
    fn new(current: BTreeMap<K, V>, desired: &BTreeMap<K, V>) -> Self {
        let mut plan = Plan {
            write: Vec::new(),
            remove: Vec::new(),
            unchanged: 0,
        };
        for (key, value) in desired {
            if current.get(key) == Some(value) {
                plan.unchanged += 1;
            } else {
                plan.write.push((*key, *value));
            }
        }
        plan.remove = current
            .into_keys()
            .filter(|key| !desired.contains_key(key))
            .collect();
        plan
    }

    fn changes(&self) -> MapChanges {
        MapChanges {
            written: self.write.len(),
            removed: self.remove.len(),
            unchanged: self.unchanged,
        }
    }
}

fn read_hash<K: aya::Pod + Ord, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<K, V>, DatapathError> {
    map.iter()
        .collect::<Result<_, _>>()
        .map_err(map_error(name))
}

fn read_lpm<K: aya::Pod + Ord, V: aya::Pod>(
    map: &LpmTrie<MapData, K, V>,
    name: &'static str,
) -> Result<BTreeMap<(u32, K), V>, DatapathError> {
    map.iter()
        .map(|entry| entry.map(|(key, value)| ((key.prefix_len(), key.data()), value)))
        .collect::<Result<_, _>>()
        .map_err(map_error(name))
}

fn write_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    entries: &[(K, V)],
) -> Result<(), DatapathError> {
    for (key, value) in entries {
        map.insert(key, value, 0).map_err(map_error(name))?;
    }
    Ok(())
}

fn remove_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    keys: &[K],
) -> Result<(), DatapathError> {
    for key in keys {
        removed(map.remove(key)).map_err(map_error(name))?;
    }
    Ok(())
}

fn write_lpm<K: aya::Pod, V: aya::Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    entries: &[((u32, K), V)],
) -> Result<(), DatapathError> {
    for ((len, data), value) in entries {
        map.insert(&Key::new(*len, *data), value, 0)
            .map_err(map_error(name))?;
    }
    Ok(())
}

fn remove_lpm<K: aya::Pod, V: aya::Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    keys: &[(u32, K)],
) -> Result<(), DatapathError> {
    for (len, data) in keys {
        removed(map.remove(&Key::new(*len, *data))).map_err(map_error(name))?;
    }
    Ok(())
}

impl Datapath {
    /// Makes the maps say what `model` says, writing only what differs from
    /// what they hold (see the module documentation). Where the model gives
    /// two different records for one key, the first is programmed and the
    /// conflict reported in [`SyncStats::conflicts`].
    ///
    /// Ports are programmed by their PORTS entry: until a port has one, its
    /// frames pass to the host stack untouched; once it has, only what the
    /// model allows goes through.
    pub fn sync(&mut self, model: &DatapathModel) -> Result<SyncStats, DatapathError> {
        let (desired, conflicts) = Entries::from_model(model);
        // What the maps hold: remembered from the last sync, read from the
        // kernel the first time (and after a failed sync).
        let held = match self.held.take() {
            Some(held) => held,
            None => Entries {
                ports: read_hash(&self.ports, maps::PORTS)?,
                sources: read_lpm(&self.sources, maps::SOURCES)?,
                endpoints: read_hash(&self.endpoints, maps::ENDPOINTS)?,
                subnets: read_lpm(&self.subnets, maps::SUBNETS)?,
            },
        };
        let ports = Plan::new(held.ports, &desired.ports);
        let sources = Plan::new(held.sources, &desired.sources);
        let endpoints = Plan::new(held.endpoints, &desired.endpoints);
        let subnets = Plan::new(held.subnets, &desired.subnets);

        // What others refer to first: a port's new sources before the port
        // record that makes them matter; removals last, in reverse.
        write_lpm(&mut self.subnets, maps::SUBNETS, &subnets.write)?;
        write_hash(&mut self.endpoints, maps::ENDPOINTS, &endpoints.write)?;
        write_lpm(&mut self.sources, maps::SOURCES, &sources.write)?;
        write_hash(&mut self.ports, maps::PORTS, &ports.write)?;
        remove_hash(&mut self.ports, maps::PORTS, &ports.remove)?;
        remove_lpm(&mut self.sources, maps::SOURCES, &sources.remove)?;
        remove_hash(&mut self.endpoints, maps::ENDPOINTS, &endpoints.remove)?;
        remove_lpm(&mut self.subnets, maps::SUBNETS, &subnets.remove)?;
        self.held = Some(desired);

        Ok(SyncStats {
            ports: ports.changes(),
            sources: sources.changes(),
            endpoints: endpoints.changes(),
            subnets: subnets.changes(),
            conflicts,
        })
    }

    /// The programmed ports, in ifindex order.
    pub fn ports(&self) -> Result<Vec<PortEntry>, DatapathError> {
        let ports = read_hash(&self.ports, maps::PORTS)?;
        let mut sources: BTreeMap<u32, Vec<(Mac, Ipv4Net)>> = BTreeMap::new();
        for ((len, key), value) in read_lpm(&self.sources, maps::SOURCES)? {
            let Some(prefix) = len.checked_sub(SourceKey::FIXED_BITS) else {
                continue;
            };
            if value != SOURCE_ALLOWED {
                continue;
            }
            if let Ok(net) = Ipv4Net::new(from_net_u32(key.ip), prefix as u8) {
                sources
                    .entry(key.ifindex)
                    .or_default()
                    .push((Mac(key.mac), net));
            }
        }
        for pairs in sources.values_mut() {
            pairs.sort_by_key(|&(mac, net)| (net, mac));
        }
        Ok(ports
            .into_iter()
            .map(|(ifindex, info)| port_entry(ifindex, &info, sources.remove(&ifindex)))
            .collect())
    }

    /// Every address known in the VPCs served here, by VNI and address.
    pub fn endpoints(&self) -> Result<Vec<EndpointEntry>, DatapathError> {
        let mut endpoints: Vec<_> = read_hash(&self.endpoints, maps::ENDPOINTS)?
            .into_iter()
            .map(|(key, value): (EndpointKey, Endpoint)| EndpointEntry {
                vni: key.vni,
                ip: from_net_u32(key.ip),
                mac: Mac(value.mac),
                location: endpoint_location(&value),
            })
            .collect();
        endpoints.sort_by_key(|endpoint| (endpoint.vni, endpoint.ip));
        Ok(endpoints)
    }

    /// The subnets of the VPCs served here, by VNI and prefix.
    pub fn subnets(&self) -> Result<Vec<SubnetEntry>, DatapathError> {
        let mut subnets: Vec<_> = read_lpm(&self.subnets, maps::SUBNETS)?
            .into_iter()
            .filter_map(|((len, key), info)| subnet_entry(len, &key, &info))
            .collect();
        subnets.sort_by_key(|subnet| (subnet.vni, subnet.cidr));
        Ok(subnets)
    }

    /// Every pair of subnets routed to each other (both ways listed), by VNI
    /// and prefixes.
    pub fn routes(&self) -> Result<Vec<RouteEntry>, DatapathError> {
        let subnets = self.subnets()?;
        let mut routes = Vec::new();
        for from in &subnets {
            for to in &subnets {
                if let (Some(router), Some(via), Some(_)) = (from.router, to.gateway, from.gateway)
                    && from.vni == to.vni
                    && from.cidr != to.cidr
                    && to.router == Some(router)
                {
                    routes.push(RouteEntry {
                        vni: from.vni,
                        from: from.cidr,
                        to: to.cidr,
                        router,
                        via,
                    });
                }
            }
        }
        Ok(routes)
    }

    /// The port's counters and drops by reason, summed over CPUs; zero if
    /// it has none.
    pub fn port_stats(&self, ifindex: u32) -> Result<PortStats, DatapathError> {
        let per_cpu = match self.counters.get(&ifindex, 0) {
            Ok(per_cpu) => per_cpu,
            Err(MapError::KeyNotFound) => return Ok(PortStats::default()),
            Err(e) => return Err(map_error(maps::PORT_COUNTERS)(e)),
        };
        let mut sum = PortStats::default();
        for cpu in per_cpu.iter() {
            let (total, add) = (&mut sum.traffic, &cpu.traffic);
            total.rx_packets = total.rx_packets.wrapping_add(add.rx_packets);
            total.rx_bytes = total.rx_bytes.wrapping_add(add.rx_bytes);
            total.tx_packets = total.tx_packets.wrapping_add(add.tx_packets);
            total.tx_bytes = total.tx_bytes.wrapping_add(add.tx_bytes);
            for (total, add) in sum.drops.iter_mut().zip(cpu.drops) {
                *total = total.wrapping_add(add);
            }
        }
        Ok(sum)
    }
}

/// The drops of `stats` that happened, by reason.
pub fn drops_by_reason(stats: &PortStats) -> Vec<(DropReason, u64)> {
    DropReason::ALL
        .into_iter()
        .zip(stats.drops)
        .filter(|&(_, count)| count > 0)
        .collect()
}

fn port_entry(ifindex: u32, info: &PortInfo, sources: Option<Vec<(Mac, Ipv4Net)>>) -> PortEntry {
    let subnet = (info.subnet.flags & SUBNET_VALID != 0)
        .then(|| prefix(info.subnet.net, info.subnet.mask))
        .flatten();
    PortEntry {
        ifindex,
        vni: info.vni,
        mac: Mac(info.mac),
        ip: (info.ip != 0).then(|| from_net_u32(info.ip)),
        redirect: Redirect::from_u8(info.redirect),
        subnet,
        sources: sources.unwrap_or_default(),
    }
}

fn subnet_entry(len: u32, key: &SubnetKey, info: &SubnetInfo) -> Option<SubnetEntry> {
    let prefix_len = len.checked_sub(SubnetKey::FIXED_BITS)?;
    Some(SubnetEntry {
        vni: key.vni,
        cidr: Ipv4Net::new(from_net_u32(key.ip), u8::try_from(prefix_len).ok()?).ok()?,
        gateway: (info.flags & SUBNET_HAS_GATEWAY != 0).then(|| GatewayAddress {
            ip: from_net_u32(info.gateway_ip),
            mac: Mac(info.gateway_mac),
        }),
        router: (info.router != 0).then_some(info.router),
    })
}

/// The prefix of a (network, mask) pair in network byte order.
fn prefix(net: u32, mask: u32) -> Option<Ipv4Net> {
    let mask = u32::from(from_net_u32(mask));
    if mask.leading_ones() + mask.trailing_zeros() != 32 {
        return None;
    }
    Ipv4Net::new(from_net_u32(net), mask.leading_ones() as u8).ok()
}
