//! Programming the maps from a [`DatapathModel`], and reading them back.
//!
//! [`Datapath::sync`] compares the model's entries with what the pinned maps
//! hold *now* (read from the kernel, so a restarted agent compares against
//! what its predecessor wrote) and writes only the difference: new and
//! changed entries first (each update replaces one entry atomically), then
//! removals. A map is never cleared and refilled, so forwarding does not blip
//! when a restarted agent resyncs.
//!
//! Entries are written one syscall each, except where many change in one
//! map: then [`batch`](super::batch) writes (or removes) thousands per
//! syscall, and the first sync reads ENDPOINTS the same way. A resync with
//! nothing changed makes no write at all. After the first sync the agent
//! remembers what it wrote instead of reading the maps again, so a small
//! change costs a few syscalls whatever the size of the maps; only this
//! agent writes them.
//!
//! A million remote endpoints (the scale of issue 5): see the
//! `a_million_neighbors_sync_in_bounded_time` test for what it costs.

use std::{collections::BTreeMap, net::Ipv4Addr};

use alcor_ebpf_common::{
    DropReason, Endpoint, EndpointKey, HOST_MAC, HostInfo, NextHop, PortInfo, PortStats, Redirect,
    SOURCE_ALLOWED, SUBNET_HAS_GATEWAY, SUBNET_VALID, SourceKey, SubnetInfo, SubnetKey,
    UNDERLAY_GATEWAY_MAC, UnderlayDropReason, UnderlayInfo, UnderlayStats, maps,
};
use aya::maps::{
    HashMap, MapData, MapError,
    lpm_trie::{Key, LpmTrie},
};
use ipnet::Ipv4Net;

use super::{
    Datapath, DatapathError, DatapathReader, Maps, bpf as batch,
    entries::{
        Entries, endpoint_entry, endpoint_key, endpoint_location, from_net_u32, host_info,
        hosts_of, net_u32,
    },
    map_error, removed,
};
use crate::core::{
    model::{GatewayAddress, Mac, Vni},
    spec::{DatapathModel, EndpointSpec, HostSpec, Location},
};

/// From this many changes in one map on, they are written (or removed) in
/// batches rather than one syscall each.
const BATCH_FROM: usize = 64;

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
    /// The VNIs served here (those of the ports).
    pub vnis: MapChanges,
    /// The other hosts.
    pub hosts: MapChanges,
    /// This host's tunnel endpoint: one entry, written when it changed.
    pub underlay: MapChanges,
    /// Records of the model that contradicted an earlier one for the same
    /// key (the same address of a VPC with two MACs, say), and were left
    /// out: worth a warning, not worth leaving the rest unprogrammed.
    pub conflicts: Vec<String>,
}

impl SyncStats {
    /// Entries written or removed over all maps: 0 when the maps already
    /// said what the model says.
    pub fn changes(&self) -> usize {
        [
            self.ports,
            self.sources,
            self.endpoints,
            self.subnets,
            self.vnis,
            self.hosts,
            self.underlay,
        ]
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

/// This host as a tunnel endpoint, as the UNDERLAY map holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayEntry {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub mtu: u32,
    pub gateway_mac: Option<Mac>,
}

/// Another host, as the HOSTS map holds it: VXLAN is accepted from it, and
/// frames to it leave as [`HostEntry::next_hop`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostEntry {
    pub ip: Ipv4Addr,
    /// The next hop's MAC given for it.
    pub mac: Option<Mac>,
    /// How frames to it find their next hop: written MACs (its own, else
    /// the underlay gateway's) or the kernel's neighbour table.
    pub next_hop: NextHop,
    /// The endpoints (addresses, over all VNIs) on it.
    pub endpoints: usize,
}

/// One map's difference between what it holds and what it should.
struct Plan<K, V> {
    write: Vec<(K, V)>,
    remove: Vec<K>,
    unchanged: usize,
}

impl<K: Ord + Copy, V: PartialEq + Copy> Plan<K, V> {
    /// The plan from `current` to `desired`, both sorted by key, each key
    /// once (as B-tree maps and [`Entries::endpoints`] are).
    fn new(
        current: impl IntoIterator<Item = (K, V)>,
        desired: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut plan = Plan {
            write: Vec::new(),
            remove: Vec::new(),
            unchanged: 0,
        };
        let mut current = current.into_iter().peekable();
        for (key, value) in desired {
            // What the maps hold before this key is no longer wanted.
            while let Some((held, _)) = current.next_if(|(held, _)| *held < key) {
                plan.remove.push(held);
            }
            match current.next_if(|(held, _)| *held == key) {
                Some((_, held)) if held == value => plan.unchanged += 1,
                _ => plan.write.push((key, value)),
            }
        }
        plan.remove.extend(current.map(|(key, _)| key));
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

/// Applies `changes` (sorted by key; `None` removes) to `held` (sorted by
/// key, each once), writing the new entries into `merged` (cleared first);
/// returns what to write and remove in the map to get there.
fn merge(
    held: &[(EndpointKey, Endpoint)],
    changes: Vec<(EndpointKey, Option<Endpoint>)>,
    merged: &mut Vec<(EndpointKey, Endpoint)>,
) -> Plan<EndpointKey, Endpoint> {
    let mut plan = Plan {
        write: Vec::new(),
        remove: Vec::new(),
        unchanged: 0,
    };
    merged.clear();
    merged.reserve(held.len() + changes.len());
    let mut held = held.iter().copied().peekable();
    for (key, value) in changes {
        while let Some(entry) = held.next_if(|(held, _)| *held < key) {
            merged.push(entry);
        }
        let before = held
            .next_if(|(held, _)| *held == key)
            .map(|(_, value)| value);
        match (before, value) {
            (Some(before), Some(value)) if before == value => {
                plan.unchanged += 1;
                merged.push((key, value));
            }
            (_, Some(value)) => {
                plan.write.push((key, value));
                merged.push((key, value));
            }
            (Some(_), None) => plan.remove.push(key),
            (None, None) => {}
        }
    }
    merged.extend(held);
    plan
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

/// Every entry of a hash map, sorted by key, read in batches.
fn read_hash_batched<K: aya::Pod + Ord, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, DatapathError> {
    let mut entries = batch::read::<K, V>(map_data(map)).map_err(batch_error(name))?;
    entries.sort_unstable_by_key(|&(key, _)| key);
    entries.dedup_by_key(|&mut (key, _)| key);
    Ok(entries)
}

fn write_hash<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    entries: &[(K, V)],
) -> Result<(), DatapathError> {
    if entries.len() >= BATCH_FROM {
        return batch::update(map_data(map), entries).map_err(|e| batch_error(name)(e.source));
    }
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
    if keys.len() >= BATCH_FROM {
        return batch::delete::<K, V>(map_data(map), keys).map_err(|e| batch_error(name)(e.source));
    }
    for key in keys {
        removed(map.remove(key)).map_err(map_error(name))?;
    }
    Ok(())
}

/// The map under aya's typed wrapper (for the batch calls).
fn map_data<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> &MapData {
    aya::maps::IterableMap::map(map)
}

fn batch_error(name: &'static str) -> impl FnOnce(std::io::Error) -> DatapathError {
    move |source| DatapathError::Io {
        what: format!("batch operation on map {name}"),
        source,
    }
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
                ports: read_hash(&self.maps.ports, maps::PORTS)?,
                sources: read_lpm(&self.maps.sources, maps::SOURCES)?,
                endpoints: read_hash_batched(&self.maps.endpoints, maps::ENDPOINTS)?,
                subnets: read_lpm(&self.maps.subnets, maps::SUBNETS)?,
                underlay: self.maps.read_underlay()?,
                vnis: read_hash(&self.maps.vnis, maps::VNIS)?,
                hosts: read_hash(&self.maps.hosts, maps::HOSTS)?,
                listed_hosts: BTreeMap::new(),
            },
        };
        let ports = Plan::new(held.ports, desired.ports.iter().map(|(k, v)| (*k, *v)));
        let sources = Plan::new(held.sources, desired.sources.iter().map(|(k, v)| (*k, *v)));
        let endpoints = Plan::new(held.endpoints, desired.endpoints.iter().copied());
        let subnets = Plan::new(held.subnets, desired.subnets.iter().map(|(k, v)| (*k, *v)));
        let vnis = Plan::new(held.vnis, desired.vnis.iter().map(|(k, v)| (*k, *v)));
        let hosts = Plan::new(held.hosts, desired.hosts.iter().map(|(k, v)| (*k, *v)));
        let underlay = Plan::new([(0, held.underlay)], [(0, desired.underlay)]);

        // What others refer to first: the tunnel endpoint and the hosts
        // before the remote endpoints that use them, a port's new sources
        // before the port record that makes them matter, the VNIs after the
        // ports that bring them; removals last, in reverse.
        if let [(index, value)] = underlay.write[..] {
            self.maps
                .underlay
                .set(index, value, 0)
                .map_err(map_error(maps::UNDERLAY))?;
        }
        write_hash(&mut self.maps.hosts, maps::HOSTS, &hosts.write)?;
        write_lpm(&mut self.maps.subnets, maps::SUBNETS, &subnets.write)?;
        write_hash(&mut self.maps.endpoints, maps::ENDPOINTS, &endpoints.write)?;
        write_lpm(&mut self.maps.sources, maps::SOURCES, &sources.write)?;
        write_hash(&mut self.maps.ports, maps::PORTS, &ports.write)?;
        write_hash(&mut self.maps.vnis, maps::VNIS, &vnis.write)?;
        remove_hash(&mut self.maps.vnis, maps::VNIS, &vnis.remove)?;
        remove_hash(&mut self.maps.ports, maps::PORTS, &ports.remove)?;
        remove_lpm(&mut self.maps.sources, maps::SOURCES, &sources.remove)?;
        remove_hash(&mut self.maps.endpoints, maps::ENDPOINTS, &endpoints.remove)?;
        remove_lpm(&mut self.maps.subnets, maps::SUBNETS, &subnets.remove)?;
        remove_hash(&mut self.maps.hosts, maps::HOSTS, &hosts.remove)?;
        self.held = Some(desired);

        Ok(SyncStats {
            ports: ports.changes(),
            sources: sources.changes(),
            endpoints: endpoints.changes(),
            subnets: subnets.changes(),
            vnis: vnis.changes(),
            hosts: hosts.changes(),
            underlay: underlay.changes(),
            conflicts,
        })
    }

    /// Changes some endpoints (and the hosts they need), everything else
    /// staying as the last [`sync`](Self::sync) made it: `write` gives new
    /// or changed endpoints, `remove` the (VNI, address) of those to remove.
    /// The caller answers for conflicts: each address once, none of a local
    /// port's. A million neighbors pushed in a few transactions cost a pass
    /// over the maps' copy each, not a rebuild of the model.
    ///
    /// `None` (nothing done) before the first sync: the caller syncs.
    pub fn sync_endpoints(
        &mut self,
        write: &[EndpointSpec],
        remove: &[(Vni, Ipv4Addr)],
    ) -> Result<Option<SyncStats>, DatapathError> {
        let Some(mut held) = self.held.take() else {
            return Ok(None);
        };
        let mut changed: Vec<(EndpointKey, Option<Endpoint>)> = write
            .iter()
            .map(|endpoint| {
                let (key, value) = endpoint_entry(endpoint);
                (key, Some(value))
            })
            .chain(
                remove
                    .iter()
                    .map(|&(vni, ip)| (endpoint_key(vni, ip), None)),
            )
            .collect();
        changed.sort_unstable_by_key(|&(key, _)| key);
        let mut endpoints = std::mem::take(&mut self.spare_endpoints);
        let plan = merge(&held.endpoints, changed, &mut endpoints);
        self.spare_endpoints = std::mem::take(&mut held.endpoints);
        let desired_hosts = hosts_of(&held.listed_hosts, &endpoints);
        let hosts = Plan::new(held.hosts, desired_hosts.iter().map(|(k, v)| (*k, *v)));

        // On failure the maps are read back at the next sync.
        write_hash(&mut self.maps.hosts, maps::HOSTS, &hosts.write)?;
        write_hash(&mut self.maps.endpoints, maps::ENDPOINTS, &plan.write)?;
        remove_hash(&mut self.maps.endpoints, maps::ENDPOINTS, &plan.remove)?;
        remove_hash(&mut self.maps.hosts, maps::HOSTS, &hosts.remove)?;
        self.held = Some(Entries {
            endpoints,
            hosts: desired_hosts,
            ..held
        });
        Ok(Some(SyncStats {
            endpoints: plan.changes(),
            hosts: hosts.changes(),
            ..SyncStats::default()
        }))
    }

    /// Gives hosts the MAC of their next hop, or takes it away (`None`), in
    /// place: one write per entry that changes and no pass over the other
    /// maps, so that a neighbour of the underlay changing costs a syscall
    /// whatever the number of endpoints. Only hosts the maps have are
    /// touched: a host is known (VXLAN accepted from it) because the model
    /// has endpoints on it, never because it is a neighbour. What the last
    /// sync wrote is kept up to date, so the next sync sees these entries as
    /// they are; its model must give the same MACs (or it writes them back).
    /// Returns how many entries were written.
    pub fn set_host_macs(&mut self, hosts: &[HostSpec]) -> Result<usize, DatapathError> {
        let mut written = 0;
        for host in hosts {
            let key = net_u32(host.ip);
            let current = match &self.held {
                Some(held) => held.hosts.get(&key).copied(),
                // No sync has succeeded yet: the kernel says what is there.
                None => match self.maps.hosts.get(&key, 0) {
                    Ok(info) => Some(info),
                    Err(MapError::KeyNotFound) => None,
                    Err(e) => return Err(map_error(maps::HOSTS)(e)),
                },
            };
            let info = host_info(host.mac);
            if current.is_none_or(|current| current == info) {
                continue;
            }
            self.maps
                .hosts
                .insert(key, info, 0)
                .map_err(map_error(maps::HOSTS))?;
            if let Some(held) = &mut self.held {
                held.hosts.insert(key, info);
                // As if the model had listed it so, for endpoint changes.
                match host.mac {
                    Some(_) => held.listed_hosts.insert(key, info),
                    None => held.listed_hosts.remove(&key),
                };
            }
            written += 1;
        }
        Ok(written)
    }
}

impl Maps {
    fn read_underlay(&self) -> Result<UnderlayInfo, DatapathError> {
        self.underlay.get(&0, 0).map_err(map_error(maps::UNDERLAY))
    }
}

impl DatapathReader {
    /// This host's tunnel endpoint as programmed; `None` if there is none.
    pub fn underlay(&self) -> Result<Option<UnderlayEntry>, DatapathError> {
        let info = self.maps.read_underlay()?;
        if info.ip == 0 {
            return Ok(None);
        }
        Ok(Some(UnderlayEntry {
            ifindex: info.ifindex,
            ip: from_net_u32(info.ip),
            mac: Mac(info.mac),
            mtu: info.mtu,
            gateway_mac: (info.flags & UNDERLAY_GATEWAY_MAC != 0).then_some(Mac(info.gateway_mac)),
        }))
    }

    /// The VNIs whose VXLAN this host accepts (those of its ports).
    pub fn vnis(&self) -> Result<Vec<u32>, DatapathError> {
        Ok(read_hash(&self.maps.vnis, maps::VNIS)?
            .into_keys()
            .collect())
    }

    /// The other hosts (tunnels), by address, with their endpoint counts.
    pub fn hosts(&self) -> Result<Vec<HostEntry>, DatapathError> {
        let gateway = self.maps.read_underlay()?.flags & UNDERLAY_GATEWAY_MAC != 0;
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for (_, endpoint) in read_hash_batched(&self.maps.endpoints, maps::ENDPOINTS)? {
            if let Some(Location::Remote { .. }) = endpoint_location(&endpoint) {
                *counts.entry(endpoint.remote_host).or_default() += 1;
            }
        }
        Ok(read_hash(&self.maps.hosts, maps::HOSTS)?
            .into_iter()
            .map(|(ip, info): (u32, HostInfo)| {
                let mac = (info.flags & HOST_MAC != 0).then_some(Mac(info.mac));
                HostEntry {
                    ip: from_net_u32(ip),
                    mac,
                    next_hop: if mac.is_some() || gateway {
                        NextHop::Mac
                    } else {
                        NextHop::Neighbor
                    },
                    endpoints: counts.get(&ip).copied().unwrap_or(0),
                }
            })
            .collect())
    }

    /// How many entries the endpoint map holds, read from the kernel.
    pub fn endpoint_count(&self) -> Result<usize, DatapathError> {
        Ok(read_hash_batched(&self.maps.endpoints, maps::ENDPOINTS)?.len())
    }

    /// The kernel memory each map holds (its `memlock` as the kernel
    /// accounts it, in bytes), by map name.
    pub fn map_memory(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let maps: [(&'static str, &MapData); 9] = [
            (
                maps::PORT_COUNTERS,
                IterableMap::<u32, _>::map(&self.maps.counters),
            ),
            (maps::PORTS, self.maps.ports.map()),
            (maps::SOURCES, self.maps.sources.map()),
            (maps::ENDPOINTS, self.maps.endpoints.map()),
            (maps::SUBNETS, self.maps.subnets.map()),
            (maps::UNDERLAY, self.maps.underlay.map()),
            (maps::VNIS, self.maps.vnis.map()),
            (maps::HOSTS, self.maps.hosts.map()),
            (
                maps::UNDERLAY_STATS,
                IterableMap::<u32, _>::map(&self.maps.underlay_stats),
            ),
        ];
        maps.into_iter()
            .map(|(name, map)| {
                let fd = map.fd().as_fd().as_raw_fd();
                let path = format!("/proc/self/fdinfo/{fd}");
                let info = std::fs::read_to_string(&path).map_err(|source| DatapathError::Io {
                    what: format!("cannot read {path}"),
                    source,
                })?;
                let bytes = info
                    .lines()
                    .find_map(|line| line.strip_prefix("memlock:"))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0);
                Ok((name, bytes))
            })
            .collect()
    }

    /// The host's tunnel traffic and the underlay programs' drops, summed
    /// over CPUs.
    pub fn underlay_stats(&self) -> Result<UnderlayStats, DatapathError> {
        let per_cpu = self
            .maps
            .underlay_stats
            .get(&0, 0)
            .map_err(map_error(maps::UNDERLAY_STATS))?;
        let mut sum = UnderlayStats::default();
        for cpu in per_cpu.iter() {
            sum.encap_packets = sum.encap_packets.wrapping_add(cpu.encap_packets);
            sum.encap_bytes = sum.encap_bytes.wrapping_add(cpu.encap_bytes);
            sum.decap_packets = sum.decap_packets.wrapping_add(cpu.decap_packets);
            sum.decap_bytes = sum.decap_bytes.wrapping_add(cpu.decap_bytes);
            sum.device_encap_packets = sum
                .device_encap_packets
                .wrapping_add(cpu.device_encap_packets);
            sum.device_decap_packets = sum
                .device_decap_packets
                .wrapping_add(cpu.device_decap_packets);
            for (total, add) in sum.drops.iter_mut().zip(cpu.drops) {
                *total = total.wrapping_add(add);
            }
        }
        Ok(sum)
    }

    /// The programmed ports, in ifindex order.
    pub fn ports(&self) -> Result<Vec<PortEntry>, DatapathError> {
        let ports = read_hash(&self.maps.ports, maps::PORTS)?;
        let mut sources: BTreeMap<u32, Vec<(Mac, Ipv4Net)>> = BTreeMap::new();
        for ((len, key), value) in read_lpm(&self.maps.sources, maps::SOURCES)? {
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
        let mut endpoints: Vec<_> = read_hash_batched(&self.maps.endpoints, maps::ENDPOINTS)?
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
        let mut subnets: Vec<_> = read_lpm(&self.maps.subnets, maps::SUBNETS)?
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
        let per_cpu = match self.maps.counters.get(&ifindex, 0) {
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
            let (total, add) = (&mut sum.tunnel, &cpu.tunnel);
            total.encap_packets = total.encap_packets.wrapping_add(add.encap_packets);
            total.encap_bytes = total.encap_bytes.wrapping_add(add.encap_bytes);
            total.decap_packets = total.decap_packets.wrapping_add(add.decap_packets);
            total.decap_bytes = total.decap_bytes.wrapping_add(add.decap_bytes);
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

/// The underlay drops of `stats` that happened, by reason.
pub fn underlay_drops_by_reason(stats: &UnderlayStats) -> Vec<(UnderlayDropReason, u64)> {
    UnderlayDropReason::ALL
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
