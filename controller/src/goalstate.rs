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
//!
//! Neighbors are most of it: every host of a VPC has every port of the VPC
//! but its own, so 1,000 hosts of a 10,000-port VPC have 10 million
//! neighbor entries between them, nearly all alike. They are made once:
//! a VPC's neighbors are one [`NeighborTable`] shared by its hosts (one per
//! set of subnets a host has ports in, as that decides L2 or L3), each
//! neighbor encoded once ([`Neighbor`]); a host's state only says which
//! tables it sees. A [`Planner`] keeps the tables from one computation to
//! the next and reuses every neighbor that comes out the same, so that
//! comparing two states of a host costs a pointer comparison per table
//! that did not change and per neighbor that did not; and a message's
//! neighbor states are the shared encodings, copied ([`Message`]).

use std::{
    cmp::Ordering,
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex, Weak},
};

use alcor_proto::schema::{
    DhcpConfiguration, DhcpState, GoalStateV2, NeighborConfiguration, NeighborType, NetworkType,
    OperationType, PortConfiguration, PortState, RouterConfiguration, RouterState,
    SubnetConfiguration, SubnetState, UpdateType, VpcConfiguration, VpcState,
    neighbor_configuration, port_configuration, router_configuration::SubnetRoutingTable,
    subnet_configuration,
};
use alcor_types::Mac;
use prost::{
    Message as _,
    bytes::{BufMut, Bytes},
};

use crate::model::{
    Network, Port, Router, Subnet,
    agent::AgentRecord,
    port::NETNS_PROFILE_KEY,
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

/// Everything one host should have (or has), by resource id. (A
/// configuration that did not change from one computation to the next is
/// the same `Arc`: see [`Planner`].)
#[derive(Clone, Debug, Default)]
pub struct HostState {
    pub vpcs: BTreeMap<String, Arc<VpcConfiguration>>,
    pub subnets: BTreeMap<String, Arc<SubnetConfiguration>>,
    pub ports: BTreeMap<String, Arc<PortConfiguration>>,
    pub dhcp: BTreeMap<String, Arc<DhcpConfiguration>>,
    pub neighbors: Neighbors,
    pub routers: BTreeMap<String, Arc<RouterConfiguration>>,
}

/// Whether two maps of configurations are the same: the same ids, each
/// the same `Arc` or an equal configuration.
fn same_configs<C: PartialEq>(a: &BTreeMap<String, Arc<C>>, b: &BTreeMap<String, Arc<C>>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((x, c), (y, d))| x == y && (Arc::ptr_eq(c, d) || c == d))
}

impl HostState {
    pub fn is_empty(&self) -> bool {
        self.vpcs.is_empty()
            && self.subnets.is_empty()
            && self.ports.is_empty()
            && self.dhcp.is_empty()
            && self.routers.is_empty()
            && self.neighbors.is_empty()
    }

    /// Whether this is surely the same state as `other`: everything equal,
    /// the neighbors from the same tables. (`false` may still be the same
    /// state, from tables made again alike: [`diff`] tells.)
    pub fn surely_same(&self, other: &HostState) -> bool {
        same_configs(&self.vpcs, &other.vpcs)
            && same_configs(&self.subnets, &other.subnets)
            && same_configs(&self.ports, &other.ports)
            && same_configs(&self.dhcp, &other.dhcp)
            && same_configs(&self.routers, &other.routers)
            && self.neighbors.same_tables(&other.neighbors)
    }
}

/// A neighbor's configuration, without its revision, and its encoding:
/// made once, shared by every host that has it.
#[derive(Debug)]
pub struct Neighbor {
    config: NeighborConfiguration,
    /// `config` encoded: with revision 0, which proto3 leaves out, so that
    /// a message's revision goes in front of it (see [`Message`]).
    encoded: Bytes,
}

impl Neighbor {
    fn new(config: NeighborConfiguration) -> Neighbor {
        debug_assert_eq!(config.revision_number, 0);
        let encoded = config.encode_to_vec().into();
        Neighbor { config, encoded }
    }

    pub fn config(&self) -> &NeighborConfiguration {
        &self.config
    }
}

impl PartialEq for Neighbor {
    fn eq(&self, other: &Neighbor) -> bool {
        self.config == other.config
    }
}

/// Whether two hosts have a neighbor alike: the same one, or equal ones.
fn alike(a: Option<&Arc<Neighbor>>, b: Option<&Arc<Neighbor>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
        (None, None) => true,
        _ => false,
    }
}

/// A VPC's neighbors as a host with ports in some set of its subnets sees
/// them: every bound port of the VPC with an address, in id order, with
/// the host it is on (which does not see it as a neighbor).
#[derive(Debug, Default)]
pub struct NeighborTable {
    entries: Vec<TableEntry>,
    /// The positions of each host's own entries, in order.
    own: HashMap<Arc<str>, Vec<usize>>,
    /// The entries that differ from earlier tables to this one, as hosts
    /// asked (the last few): the same for every host of the VPC.
    changes: Mutex<Vec<(Weak<NeighborTable>, TableChanges)>>,
}

/// (the entry before, the entry after) of each id that differs.
type TableChanges = Arc<[(Option<TableEntry>, Option<TableEntry>)]>;

/// How many earlier tables a table keeps its changes from.
const CHANGES_KEPT: usize = 16;

#[derive(Clone, Debug)]
struct TableEntry {
    id: Arc<str>,
    host: Arc<str>,
    neighbor: Arc<Neighbor>,
    /// What the neighbor was made of (none in tests).
    inputs: Option<Arc<NeighborInputs>>,
}

/// What a neighbor's configuration is made of, besides its id and its
/// table's VPC and local subnets: the same again, the configuration is.
#[derive(Debug, PartialEq)]
struct NeighborInputs {
    name: String,
    mac_address: Mac,
    fixed_ips: Vec<crate::model::port::FixedIp>,
    allowed_address_pairs: Vec<crate::model::port::AddressPair>,
    underlay_ip: Ipv4Addr,
    underlay_mac: Mac,
}

impl NeighborInputs {
    fn of(port: &Port, agent: &AgentRecord) -> NeighborInputs {
        NeighborInputs {
            name: port.meta.name.clone(),
            mac_address: port.mac_address,
            fixed_ips: port.fixed_ips.clone(),
            allowed_address_pairs: port.allowed_address_pairs.clone(),
            underlay_ip: agent.underlay_ip,
            underlay_mac: agent.underlay_mac,
        }
    }

    fn same_as(&self, port: &Port, agent: &AgentRecord) -> bool {
        self.name == port.meta.name
            && self.mac_address == port.mac_address
            && self.fixed_ips == port.fixed_ips
            && self.allowed_address_pairs == port.allowed_address_pairs
            && self.underlay_ip == agent.underlay_ip
            && self.underlay_mac == agent.underlay_mac
    }
}

impl NeighborTable {
    fn new(entries: Vec<TableEntry>) -> NeighborTable {
        let mut own: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (at, entry) in entries.iter().enumerate() {
            own.entry(entry.host.clone()).or_default().push(at);
        }
        NeighborTable {
            entries,
            own,
            changes: Mutex::default(),
        }
    }

    /// The entries that differ from `earlier` to this table: found by the
    /// first host that goes from one to the other, kept for the others.
    fn changes_from(&self, earlier: &Arc<NeighborTable>) -> TableChanges {
        let mut kept = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        // (A weak reference keeps the allocation: its address is not
        // another table's.)
        if let Some((_, changes)) = kept
            .iter()
            .find(|(from, _)| std::ptr::eq(from.as_ptr(), Arc::as_ptr(earlier)))
        {
            return changes.clone();
        }
        let mut changes = Vec::new();
        walk(earlier.entries.iter(), self.entries.iter(), |had, has| {
            changes.push((had.cloned(), has.cloned()));
        });
        let changes: TableChanges = changes.into();
        if kept.len() == CHANGES_KEPT {
            kept.remove(0);
        }
        kept.push((Arc::downgrade(earlier), changes.clone()));
        changes
    }

    fn entry(&self, id: &str) -> Option<&TableEntry> {
        self.entries
            .binary_search_by(|entry| (*entry.id).cmp(id))
            .ok()
            .map(|at| &self.entries[at])
    }

    /// The entries `host` sees: all but its own.
    fn seen_by<'a>(&'a self, host: &str) -> impl Iterator<Item = &'a TableEntry> + 'a {
        let mut own = self
            .own
            .get(host)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .peekable();
        self.entries
            .iter()
            .enumerate()
            .filter_map(move |(at, entry)| {
                if own.next_if_eq(&&at).is_some() {
                    None
                } else {
                    Some(entry)
                }
            })
    }
}

/// A host's neighbors: those of the tables of its VPCs, but its own ports;
/// and, in a state an agent acknowledged only in part, what it has
/// otherwise.
#[derive(Clone, Debug, Default)]
pub struct Neighbors {
    /// The host whose neighbors these are.
    host: Arc<str>,
    /// The table of each VPC (by id) the host has ports in.
    tables: BTreeMap<String, Arc<NeighborTable>>,
    /// Where the host has something else than its tables say: the
    /// neighbor it has, or none. Only acknowledged states have any (see
    /// [`Neighbors::acknowledged`]).
    overrides: BTreeMap<Arc<str>, Option<Arc<Neighbor>>>,
}

impl Neighbors {
    fn of(host: Arc<str>) -> Neighbors {
        Neighbors {
            host,
            ..Neighbors::default()
        }
    }

    /// The neighbor `id`, as this host has it.
    pub fn get(&self, id: &str) -> Option<&NeighborConfiguration> {
        self.find(id).map(|neighbor| &neighbor.config)
    }

    fn find(&self, id: &str) -> Option<&Arc<Neighbor>> {
        if let Some(had) = self.overrides.get(id) {
            return had.as_ref();
        }
        self.tables.values().find_map(|table| {
            table
                .entry(id)
                .filter(|entry| entry.host != self.host)
                .map(|entry| &entry.neighbor)
        })
    }

    /// Every neighbor, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &NeighborConfiguration)> {
        let mut all: BTreeMap<&str, &Arc<Neighbor>> = self
            .tables
            .values()
            .flat_map(|table| table.seen_by(&self.host))
            .map(|entry| (&*entry.id, &entry.neighbor))
            .collect();
        for (id, had) in &self.overrides {
            match had {
                Some(neighbor) => all.insert(id, neighbor),
                None => all.remove(&**id),
            };
        }
        all.into_iter().map(|(id, neighbor)| (id, &neighbor.config))
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The same tables, nothing otherwise: surely the same neighbors.
    fn same_tables(&self, other: &Neighbors) -> bool {
        self.host == other.host
            && self.overrides.is_empty()
            && other.overrides.is_empty()
            && self.tables.len() == other.tables.len()
            && self
                .tables
                .iter()
                .zip(&other.tables)
                .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
    }

    /// What a host that had these neighbors has once its agent applied
    /// `desired`'s where `settled` says (by id), and kept its own elsewhere.
    pub fn acknowledged(&self, desired: &Neighbors, settled: &HashSet<&str>) -> Neighbors {
        let mut acked = Neighbors {
            host: desired.host.clone(),
            tables: desired.tables.clone(),
            overrides: BTreeMap::new(),
        };
        differences(self, desired, |id, had, _| {
            if !settled.contains(&**id) {
                acked.overrides.insert(id.clone(), had.cloned());
            }
        });
        acked
    }
}

/// Merges two runs of entries in id order into the pairs that differ:
/// (the entry before, the entry after) of each id, `None` where there is
/// none. An entry made again alike is no change.
fn walk<'a>(
    before: impl Iterator<Item = &'a TableEntry>,
    after: impl Iterator<Item = &'a TableEntry>,
    mut each: impl FnMut(Option<&'a TableEntry>, Option<&'a TableEntry>),
) {
    let (mut before, mut after) = (before.peekable(), after.peekable());
    loop {
        let (had, has) = match (before.peek(), after.peek()) {
            (None, None) => break,
            // The same neighbor (so the same id): nothing to do.
            (Some(had), Some(has)) if Arc::ptr_eq(&had.neighbor, &has.neighbor) => {
                before.next();
                after.next();
                continue;
            }
            (Some(had), Some(has)) => match had.id.cmp(&has.id) {
                Ordering::Equal => (before.next(), after.next()),
                Ordering::Greater => (None, after.next()),
                Ordering::Less => (before.next(), None),
            },
            (Some(_), None) => (before.next(), None),
            (None, Some(_)) => (None, after.next()),
        };
        match (had, has) {
            (Some(a), Some(b)) if a.host == b.host && a.neighbor == b.neighbor => {}
            _ => each(had, has),
        }
    }
}

/// Calls `each` with every neighbor `old` and `new` do not have alike:
/// its id, what `old` has, what `new` has. A table both have is passed
/// over whole; of two tables of a VPC, the entries that differ are found
/// once for all hosts ([`NeighborTable::changes_from`]), and each host
/// leaves its own out. (`new` is a computed state: it has no overrides.)
fn differences(
    old: &Neighbors,
    new: &Neighbors,
    mut each: impl FnMut(&Arc<str>, Option<&Arc<Neighbor>>, Option<&Arc<Neighbor>>),
) {
    debug_assert!(
        new.overrides.is_empty(),
        "a computed state has no overrides"
    );
    let overridden = |id: &str| !old.overrides.is_empty() && old.overrides.contains_key(id);
    let mut pair = |had: Option<&TableEntry>, has: Option<&TableEntry>| {
        let had = had.filter(|entry| entry.host != old.host);
        let has = has.filter(|entry| entry.host != new.host);
        if let Some(id) = had.or(has).map(|entry| &entry.id) {
            let (had, has) = (had.map(|e| &e.neighbor), has.map(|e| &e.neighbor));
            if !overridden(id) && !alike(had, has) {
                each(id, had, has);
            }
        }
    };
    let vpcs: BTreeSet<&String> = old.tables.keys().chain(new.tables.keys()).collect();
    for vpc in vpcs {
        match (old.tables.get(vpc), new.tables.get(vpc)) {
            (Some(before), Some(after)) if old.host == new.host => {
                if !Arc::ptr_eq(before, after) {
                    for (had, has) in after.changes_from(before).iter() {
                        pair(had.as_ref(), has.as_ref());
                    }
                }
            }
            (before, after) => walk(
                before
                    .into_iter()
                    .flat_map(|table| table.seen_by(&old.host)),
                after.into_iter().flat_map(|table| table.seen_by(&new.host)),
                &mut pair,
            ),
        }
    }
    for (id, had) in &old.overrides {
        let has = new.find(id);
        if !alike(had.as_ref(), has) {
            each(id, had.as_ref(), has);
        }
    }
}

/// The tables of a computation: by VPC and the subnets of it a host has
/// ports in.
type TableKey = (String, Vec<String>);

/// Computes the hosts' goal states change after change, reusing what came
/// out the same the last time: neighbors (and whole tables) that did not
/// change are the very ones hosts already have.
#[derive(Default)]
pub struct Planner {
    tables: HashMap<TableKey, Arc<NeighborTable>>,
    configs: Configs,
}

/// The configurations of a computation, by id.
#[derive(Default)]
struct Configs {
    vpcs: HashMap<String, Arc<VpcConfiguration>>,
    subnets: HashMap<String, Arc<SubnetConfiguration>>,
    /// By port id.
    ports: HashMap<String, Arc<OwnConfigs>>,
}

/// What a port's host gets of it (its port state and DHCP entries), with
/// what that was made of: the same again, they are the same.
struct OwnConfigs {
    /// The port, as it was (its status aside).
    port: Port,
    underlay: (Ipv4Addr, Mac),
    /// Whether each subnet of its addresses has DHCP.
    dhcp_enabled: Vec<bool>,
    config: Arc<PortConfiguration>,
    dhcp: Vec<(String, Arc<DhcpConfiguration>)>,
}

impl OwnConfigs {
    fn new(port: &Port, agent: &AgentRecord, subnets: &HashMap<&str, &Subnet>) -> OwnConfigs {
        OwnConfigs {
            port: port.clone(),
            underlay: (agent.underlay_ip, agent.underlay_mac),
            dhcp_enabled: dhcp_enabled(port, subnets).collect(),
            config: Arc::new(port_config(port, agent)),
            dhcp: dhcp_configs(port, subnets)
                .into_iter()
                .map(|(id, entry)| (id, Arc::new(entry)))
                .collect(),
        }
    }

    fn made_of(&self, port: &Port, agent: &AgentRecord, subnets: &HashMap<&str, &Subnet>) -> bool {
        same_port(&self.port, port)
            && self.underlay == (agent.underlay_ip, agent.underlay_mac)
            && self
                .dhcp_enabled
                .iter()
                .copied()
                .eq(dhcp_enabled(port, subnets))
    }
}

/// Whether two versions of a port make the same configurations: all but
/// its status (which its agent's replies set) and its metadata but its id
/// and name are the same.
fn same_port(a: &Port, b: &Port) -> bool {
    let Port {
        meta,
        network_id,
        mac_address,
        fixed_ips,
        device_id,
        device_owner,
        admin_state_up,
        status: _,
        status_detail: _,
        binding_host_id,
        binding_profile,
        allowed_address_pairs,
        security_groups,
        port_security_enabled,
    } = a;
    meta.id == b.meta.id
        && meta.name == b.meta.name
        && *network_id == b.network_id
        && *mac_address == b.mac_address
        && *fixed_ips == b.fixed_ips
        && *device_id == b.device_id
        && *device_owner == b.device_owner
        && *admin_state_up == b.admin_state_up
        && *binding_host_id == b.binding_host_id
        && *binding_profile == b.binding_profile
        && *allowed_address_pairs == b.allowed_address_pairs
        && *security_groups == b.security_groups
        && *port_security_enabled == b.port_security_enabled
}

fn dhcp_enabled<'a>(
    port: &'a Port,
    subnets: &'a HashMap<&str, &Subnet>,
) -> impl Iterator<Item = bool> + 'a {
    port.fixed_ips.iter().map(|fixed| {
        subnets
            .get(fixed.subnet_id.as_str())
            .is_some_and(|subnet| subnet.enable_dhcp)
    })
}

/// `config`, as the last computation had it (the same `Arc`) if it is the
/// same; recorded in `next`.
fn share<C: PartialEq>(
    last: &HashMap<String, Arc<C>>,
    next: &mut HashMap<String, Arc<C>>,
    id: &str,
    config: C,
) -> Arc<C> {
    let shared = match last.get(id) {
        Some(old) if **old == config => old.clone(),
        _ => Arc::new(config),
    };
    next.insert(id.to_string(), shared.clone());
    shared
}

/// The goal state of every registered host, computed afresh.
pub fn host_states(inventory: &Inventory) -> BTreeMap<String, HostState> {
    Planner::default().host_states(inventory)
}

impl Planner {
    /// The goal state of every registered host (hosts without anything get
    /// an empty state, so that what they had is taken away).
    pub fn host_states(&mut self, inventory: &Inventory) -> BTreeMap<String, HostState> {
        let hosts: HashMap<&str, (&AgentRecord, Arc<str>)> = inventory
            .agents
            .iter()
            .map(|agent| {
                (
                    agent.host_id.as_str(),
                    (agent, Arc::from(agent.host_id.as_str())),
                )
            })
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
            if let Some((agent, _)) = hosts.get(port.binding_host_id.as_str())
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

        let mut states: BTreeMap<String, HostState> = hosts
            .iter()
            .map(|(host, (_, name))| {
                let state = HostState {
                    neighbors: Neighbors::of(name.clone()),
                    ..HostState::default()
                };
                (host.to_string(), state)
            })
            .collect();
        let mut tables: HashMap<TableKey, Arc<NeighborTable>> = HashMap::new();
        let (last, mut next) = (&self.configs, Configs::default());
        for (network_id, ports) in &bound {
            let network = networks[network_id];
            let vpc = share(&last.vpcs, &mut next.vpcs, network_id, vpc_config(network));
            let network_subnets: Vec<Arc<SubnetConfiguration>> = network
                .subnets
                .iter()
                .filter_map(|id| subnets.get(id.as_str()).copied())
                .map(|subnet| {
                    let gateway_mac = gateway_macs.get(subnet.meta.id.as_str()).copied();
                    let config = subnet_config(subnet, network, gateway_mac);
                    share(&last.subnets, &mut next.subnets, &subnet.meta.id, config)
                })
                .collect();
            let mut on_host: BTreeMap<&str, Vec<&Port>> = BTreeMap::new();
            for (port, agent) in ports {
                on_host
                    .entry(agent.host_id.as_str())
                    .or_default()
                    .push(port);
            }
            for (host, own) in on_host {
                let Some(state) = states.get_mut(host) else {
                    continue;
                };
                let agent = hosts[host].0;
                state.vpcs.insert(network.meta.id.clone(), vpc.clone());
                for subnet in &network_subnets {
                    state.subnets.insert(subnet.id.clone(), subnet.clone());
                }
                for port in &own {
                    let id = &port.meta.id;
                    let configs = match last.ports.get(id) {
                        Some(configs) if configs.made_of(port, agent, &subnets) => configs.clone(),
                        _ => Arc::new(OwnConfigs::new(port, agent, &subnets)),
                    };
                    state.ports.insert(id.clone(), configs.config.clone());
                    for (id, entry) in &configs.dhcp {
                        state.dhcp.insert(id.clone(), entry.clone());
                    }
                    next.ports.insert(id.clone(), configs);
                }
                let local_subnets: BTreeSet<&str> = own
                    .iter()
                    .flat_map(|port| port.fixed_ips.iter().map(|f| f.subnet_id.as_str()))
                    .collect();
                let key: TableKey = (
                    network_id.to_string(),
                    local_subnets.iter().map(|s| s.to_string()).collect(),
                );
                let table = match tables.get(&key) {
                    Some(table) => table.clone(),
                    None => {
                        let table = self.table(&key, ports, &local_subnets, &hosts);
                        tables.insert(key, table.clone());
                        table
                    }
                };
                state
                    .neighbors
                    .tables
                    .insert(network.meta.id.clone(), table);
            }
        }
        self.tables = tables;
        self.configs = next;
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
                        Arc::new(RouterConfiguration {
                            id: router.meta.id.clone(),
                            update_type: UpdateType::Full as i32,
                            subnet_routing_tables: tables,
                            ..Default::default()
                        }),
                    );
                }
            }
        }
        states
    }

    /// The neighbor table of a VPC's `ports` for hosts with ports in
    /// `local_subnets`: each neighbor the last computation's if it is the
    /// same, the last table if all are.
    fn table(
        &self,
        key: &TableKey,
        ports: &[(&Port, &AgentRecord)],
        local_subnets: &BTreeSet<&str>,
        hosts: &HashMap<&str, (&AgentRecord, Arc<str>)>,
    ) -> Arc<NeighborTable> {
        let last = self.tables.get(key);
        let mut entries: Vec<TableEntry> = ports
            .iter()
            .filter(|(port, _)| !port.fixed_ips.is_empty())
            .map(|(port, agent)| {
                let host = &hosts[agent.host_id.as_str()].1;
                let last = last
                    .and_then(|table| table.entry(&port.meta.id))
                    .filter(|entry| entry.host == *host);
                if let Some(entry) = last
                    && entry
                        .inputs
                        .as_ref()
                        .is_some_and(|inputs| inputs.same_as(port, agent))
                {
                    return entry.clone();
                }
                let config = neighbor_config(port, agent, local_subnets);
                match last {
                    // Made of other inputs, but alike.
                    Some(entry) if entry.neighbor.config == config => TableEntry {
                        inputs: Some(Arc::new(NeighborInputs::of(port, agent))),
                        ..entry.clone()
                    },
                    _ => TableEntry {
                        id: Arc::from(port.meta.id.as_str()),
                        host: host.clone(),
                        neighbor: Arc::new(Neighbor::new(config)),
                        inputs: Some(Arc::new(NeighborInputs::of(port, agent))),
                    },
                }
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        if let Some(last) = last
            && last.entries.len() == entries.len()
            && last
                .entries
                .iter()
                .zip(&entries)
                .all(|(a, b)| Arc::ptr_eq(&a.neighbor, &b.neighbor))
        {
            return last.clone();
        }
        Arc::new(NeighborTable::new(entries))
    }
}

/// Whether a port is a VM's (or container's) that an agent plugs in: bound
/// to a host, and not a router's own.
fn is_plugged(port: &Port) -> bool {
    !port.binding_host_id.is_empty()
        && port.device_owner != ROUTER_INTERFACE
        && port.device_owner != ROUTER_GATEWAY
}

/// The namespace a port is bound to, if its profile names one.
pub fn netns_of(port: &Port) -> Option<&str> {
    port.binding_profile
        .get(NETNS_PROFILE_KEY)
        .and_then(|value| value.as_str())
        .filter(|name| !name.is_empty())
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
    RouterConfiguration => RouterState,
);

/// What it takes to go from `acked` to `desired` for one kind: creates and
/// updates of what is new or changed, deletes of what is gone.
fn changes<C: Config>(
    acked: &BTreeMap<String, Arc<C>>,
    desired: &BTreeMap<String, Arc<C>>,
    revision: u32,
) -> HashMap<String, C::State> {
    let mut states = HashMap::new();
    for (id, config) in desired {
        let operation = match acked.get(id) {
            Some(old) if Arc::ptr_eq(old, config) || old == config => continue,
            Some(_) => OperationType::Update,
            None => OperationType::Create,
        };
        let mut config = (**config).clone();
        config.set_revision(revision);
        states.insert(id.clone(), config.state(operation));
    }
    for (id, config) in acked {
        if !desired.contains_key(id) {
            let mut config = (**config).clone();
            config.set_revision(revision);
            states.insert(id.clone(), config.state(OperationType::Delete));
        }
    }
    states
}

/// The message taking a host from `acked` to `desired`, every resource in
/// it at `revision`; `None` when they are the same.
pub fn diff(acked: &HostState, desired: &HostState, revision: u32) -> Option<Message> {
    let mut neighbors = Vec::new();
    differences(&acked.neighbors, &desired.neighbors, |id, had, has| {
        let (operation, neighbor) = match (had, has) {
            (_, None) => (OperationType::Delete, had),
            (None, Some(_)) => (OperationType::Create, has),
            (Some(_), Some(_)) => (OperationType::Update, has),
        };
        if let Some(neighbor) = neighbor {
            neighbors.push(NeighborChange {
                id: id.clone(),
                operation,
                neighbor: neighbor.clone(),
            });
        }
    });
    let message = Message {
        revision,
        states: GoalStateV2 {
            format_version: 1,
            vpc_states: changes(&acked.vpcs, &desired.vpcs, revision),
            subnet_states: changes(&acked.subnets, &desired.subnets, revision),
            port_states: changes(&acked.ports, &desired.ports, revision),
            dhcp_states: changes(&acked.dhcp, &desired.dhcp, revision),
            router_states: changes(&acked.routers, &desired.routers, revision),
            ..Default::default()
        },
        neighbors,
    };
    (message.resources() > 0).then_some(message)
}

/// A message for one agent: a `GoalStateV2`, its neighbor states the
/// shared [`Neighbor`]s. Encoded as the `GoalStateV2` prost would encode
/// with these states (fields may come in another order, which protobuf
/// allows): the encoding of a message is the concatenation of its fields',
/// and a neighbor state's is a few bytes of its own (key, operation,
/// revision, lengths) around its configuration's, made once.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The revision of every resource of the message.
    pub revision: u32,
    /// Everything but the neighbor states.
    pub states: GoalStateV2,
    pub neighbors: Vec<NeighborChange>,
}

/// A neighbor state of a [`Message`].
#[derive(Clone, Debug, PartialEq)]
pub struct NeighborChange {
    pub id: Arc<str>,
    pub operation: OperationType,
    neighbor: Arc<Neighbor>,
}

impl Message {
    /// How many resource states it has.
    pub fn resources(&self) -> usize {
        let states = &self.states;
        states.vpc_states.len()
            + states.subnet_states.len()
            + states.port_states.len()
            + states.dhcp_states.len()
            + states.router_states.len()
            + states.security_group_states.len()
            + states.gateway_states.len()
            + states.neighbor_states.len()
            + self.neighbors.len()
    }

    pub fn encoded_len(&self) -> usize {
        self.states.encoded_len()
            + self
                .neighbors
                .iter()
                .map(|change| change.encoded_len(self.revision))
                .sum::<usize>()
    }

    /// Writes the `GoalStateV2` (into a buffer that grows: tonic's, a
    /// vector).
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), prost::EncodeError> {
        self.states.encode(buf)?;
        for change in &self.neighbors {
            change.encode(self.revision, buf);
        }
        Ok(())
    }

    /// The `GoalStateV2` it is, as its agent reads it.
    pub fn to_goal_state(&self) -> GoalStateV2 {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.encode(&mut bytes).expect("a vector grows");
        GoalStateV2::decode(bytes.as_slice()).expect("a message decodes")
    }
}

/// Field numbers and wire types of the neighbor states' encoding.
const NEIGHBOR_STATES: u32 = 7;
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;
const OPERATION_TYPE: u32 = 1;
const CONFIGURATION: u32 = 2;
const REVISION_NUMBER: u32 = 1;
const VARINT: u32 = 0;
const LENGTH_DELIMITED: u32 = 2;

fn varint_len(value: u64) -> usize {
    // 7 bits a byte; 0 takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8(value as u8 | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_key(buf: &mut impl BufMut, field: u32, wire_type: u32) {
    put_varint(buf, u64::from(field << 3 | wire_type));
}

/// A field's length with its key (fields here are numbered under 16: the
/// key is a byte).
fn field_len(content: usize) -> usize {
    1 + content
}

/// A length-delimited field of `len` bytes, with its key and length.
fn delimited_len(len: usize) -> usize {
    field_len(varint_len(len as u64) + len)
}

/// A scalar field: nothing when it is 0, as proto3 has it.
fn scalar_len(value: u64) -> usize {
    if value == 0 {
        0
    } else {
        field_len(varint_len(value))
    }
}

fn put_scalar(buf: &mut impl BufMut, field: u32, value: u64) {
    if value != 0 {
        put_key(buf, field, VARINT);
        put_varint(buf, value);
    }
}

impl NeighborChange {
    /// The lengths of its configuration, `NeighborState` and map entry.
    fn lens(&self, revision: u32) -> (usize, usize, usize) {
        let config = scalar_len(revision.into()) + self.neighbor.encoded.len();
        let state = scalar_len(self.operation as u64) + delimited_len(config);
        // An empty key is left out, as prost does.
        let key = if self.id.is_empty() {
            0
        } else {
            delimited_len(self.id.len())
        };
        (config, state, key + delimited_len(state))
    }

    fn encoded_len(&self, revision: u32) -> usize {
        delimited_len(self.lens(revision).2)
    }

    /// Writes its entry of the `neighbor_states` map: key and value of a
    /// field 7, the value a `NeighborState` whose configuration has the
    /// revision (field 1) in front of the shared encoding of the rest.
    fn encode(&self, revision: u32, buf: &mut impl BufMut) {
        let (config, state, entry) = self.lens(revision);
        put_key(buf, NEIGHBOR_STATES, LENGTH_DELIMITED);
        put_varint(buf, entry as u64);
        if !self.id.is_empty() {
            put_key(buf, MAP_KEY, LENGTH_DELIMITED);
            put_varint(buf, self.id.len() as u64);
            buf.put_slice(self.id.as_bytes());
        }
        put_key(buf, MAP_VALUE, LENGTH_DELIMITED);
        put_varint(buf, state as u64);
        put_scalar(buf, OPERATION_TYPE, self.operation as u64);
        put_key(buf, CONFIGURATION, LENGTH_DELIMITED);
        put_varint(buf, config as u64);
        put_scalar(buf, REVISION_NUMBER, revision.into());
        buf.put_slice(&self.neighbor.encoded);
    }

    pub fn config(&self) -> &NeighborConfiguration {
        &self.neighbor.config
    }
}

#[cfg(test)]
mod tests {
    use alcor_proto::schema::NeighborState;
    use proptest::prelude::*;

    use super::*;

    fn neighbor(id: &str, ip: &str) -> NeighborConfiguration {
        NeighborConfiguration {
            id: id.into(),
            update_type: UpdateType::Full as i32,
            vpc_id: "vpc".into(),
            mac_address: "fa:16:3e:00:00:01".into(),
            host_ip_address: ip.into(),
            host_mac_address: "02:00:00:00:00:01".into(),
            fixed_ips: vec![neighbor_configuration::FixedIp {
                neighbor_type: NeighborType::L3 as i32,
                subnet_id: "subnet".into(),
                ip_address: "10.0.0.5".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    proptest! {
        /// A neighbor state comes out byte for byte as prost encodes it.
        #[test]
        fn neighbor_states_are_encoded_as_prost_does(
            id in "[a-z0-9-]{0,40}",
            name in ".{0,200}",
            revision in any::<u32>(),
            operation in prop_oneof![
                Just(OperationType::Info),
                Just(OperationType::Create),
                Just(OperationType::Update),
                Just(OperationType::Delete),
            ],
        ) {
            let mut config = neighbor(&id, "198.18.0.1");
            config.name = name;
            let change = NeighborChange {
                id: Arc::from(id.as_str()),
                operation,
                neighbor: Arc::new(Neighbor::new(config.clone())),
            };
            let mut ours = Vec::new();
            change.encode(revision, &mut ours);
            prop_assert_eq!(ours.len(), change.encoded_len(revision));
            config.revision_number = revision;
            let prost = GoalStateV2 {
                neighbor_states: [(
                    id,
                    NeighborState {
                        operation_type: operation as i32,
                        configuration: Some(config),
                    },
                )]
                .into(),
                ..Default::default()
            };
            prop_assert_eq!(ours, prost.encode_to_vec());
        }
    }

    #[test]
    fn a_message_decodes_to_its_goal_state() {
        let change = |id: &str, operation| NeighborChange {
            id: Arc::from(id),
            operation,
            neighbor: Arc::new(Neighbor::new(neighbor(id, "198.18.0.2"))),
        };
        let message = Message {
            revision: 300,
            states: GoalStateV2 {
                format_version: 1,
                port_states: [(
                    "p1".to_string(),
                    PortState {
                        operation_type: OperationType::Create as i32,
                        configuration: Some(PortConfiguration {
                            revision_number: 300,
                            id: "p1".into(),
                            ..Default::default()
                        }),
                    },
                )]
                .into(),
                ..Default::default()
            },
            neighbors: vec![
                change("n1", OperationType::Create),
                change("n2", OperationType::Delete),
            ],
        };
        let decoded = message.to_goal_state();
        assert_eq!(decoded.encoded_len(), message.encoded_len());
        assert_eq!(decoded.port_states, message.states.port_states);
        let n2 = &decoded.neighbor_states["n2"];
        assert_eq!(n2.operation_type, OperationType::Delete as i32);
        let mut expected = neighbor("n2", "198.18.0.2");
        expected.revision_number = 300;
        assert_eq!(n2.configuration.as_ref(), Some(&expected));
        assert_eq!(message.resources(), 3);
    }

    fn table(entries: &[(&str, &str, &Arc<Neighbor>)]) -> Arc<NeighborTable> {
        let mut entries: Vec<TableEntry> = entries
            .iter()
            .map(|(id, host, neighbor)| TableEntry {
                id: Arc::from(*id),
                host: Arc::from(*host),
                neighbor: (*neighbor).clone(),
                inputs: None,
            })
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Arc::new(NeighborTable::new(entries))
    }

    fn host(name: &str, tables: &[(&str, &Arc<NeighborTable>)]) -> HostState {
        let mut neighbors = Neighbors::of(Arc::from(name));
        for (vpc, table) in tables {
            neighbors.tables.insert(vpc.to_string(), (*table).clone());
        }
        HostState {
            neighbors,
            ..HostState::default()
        }
    }

    fn ids(message: &Option<Message>) -> Vec<(&str, OperationType)> {
        let mut ids: Vec<_> = message
            .iter()
            .flat_map(|m| &m.neighbors)
            .map(|change| (&*change.id, change.operation))
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_host_sees_the_others_ports_and_gets_what_changed() {
        let a = Arc::new(Neighbor::new(neighbor("a", "198.18.0.1")));
        let b = Arc::new(Neighbor::new(neighbor("b", "198.18.0.2")));
        let b_moved = Arc::new(Neighbor::new(neighbor("b", "198.18.0.3")));
        let c = Arc::new(Neighbor::new(neighbor("c", "198.18.0.3")));
        let first = table(&[("a", "h1", &a), ("b", "h2", &b)]);
        let h1 = host("h1", &[("vpc", &first)]);
        assert_eq!(
            h1.neighbors.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(
            h1.neighbors.get("a").is_none(),
            "its own port is no neighbor"
        );
        let whole = diff(&HostState::default(), &h1, 5);
        assert_eq!(ids(&whole), [("b", OperationType::Create)]);
        assert!(diff(&h1, &h1, 6).is_none());

        // b moves to h3, c comes; a table made again alike changes nothing.
        let second = table(&[("a", "h1", &a), ("b", "h3", &b_moved), ("c", "h3", &c)]);
        let later = host("h1", &[("vpc", &second)]);
        assert!(!h1.surely_same(&later));
        assert_eq!(
            ids(&diff(&h1, &later, 7)),
            [("b", OperationType::Update), ("c", OperationType::Create)]
        );
        let again = table(&[("a", "h1", &a), ("b", "h3", &b_moved), ("c", "h3", &c)]);
        assert!(diff(&later, &host("h1", &[("vpc", &again)]), 8).is_none());
        // Out of the VPC: everything goes.
        assert_eq!(
            ids(&diff(&later, &host("h1", &[]), 9)),
            [("b", OperationType::Delete), ("c", OperationType::Delete)]
        );
        // On the host that has b, b is no neighbor.
        let h3 = host("h3", &[("vpc", &second)]);
        assert_eq!(
            h3.neighbors.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn what_an_agent_did_not_settle_is_sent_again() {
        let a = Arc::new(Neighbor::new(neighbor("a", "198.18.0.1")));
        let b = Arc::new(Neighbor::new(neighbor("b", "198.18.0.2")));
        let b_moved = Arc::new(Neighbor::new(neighbor("b", "198.18.0.3")));
        let c = Arc::new(Neighbor::new(neighbor("c", "198.18.0.2")));
        let first = host(
            "h1",
            &[("vpc", &table(&[("a", "h2", &a), ("b", "h2", &b)]))],
        );
        // The agent settles a, not b.
        let settled: HashSet<&str> = ["a"].into();
        let acked = HostState::default()
            .neighbors
            .acknowledged(&first.neighbors, &settled);
        assert_eq!(acked.iter().map(|(id, _)| id).collect::<Vec<_>>(), ["a"]);
        let acked = HostState {
            neighbors: acked,
            ..HostState::default()
        };
        assert_eq!(
            ids(&diff(&acked, &first, 2)),
            [("b", OperationType::Create)]
        );
        // Meanwhile b moved and c came: b is still a create.
        let second = host(
            "h1",
            &[(
                "vpc",
                &table(&[("a", "h2", &a), ("b", "h3", &b_moved), ("c", "h2", &c)]),
            )],
        );
        assert_eq!(
            ids(&diff(&acked, &second, 3)),
            [("b", OperationType::Create), ("c", OperationType::Create)]
        );
        // All settled: nothing left.
        let settled: HashSet<&str> = ["b", "c"].into();
        let all = acked.neighbors.acknowledged(&second.neighbors, &settled);
        assert!(all.same_tables(&second.neighbors));
        // A delete not settled: the agent still has it.
        let gone = host("h1", &[]);
        let kept = all.acknowledged(&gone.neighbors, &HashSet::new());
        assert_eq!(kept.len(), 3);
        let kept = HostState {
            neighbors: kept,
            ..HostState::default()
        };
        assert_eq!(
            ids(&diff(&kept, &gone, 4)),
            [
                ("a", OperationType::Delete),
                ("b", OperationType::Delete),
                ("c", OperationType::Delete)
            ]
        );
    }
}
