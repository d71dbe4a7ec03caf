//! The agent's state and the datapath's maps as the control API shows them.

use std::{collections::HashMap, net::Ipv4Addr};

use alcor_proto::control as api;

use crate::{
    core::{
        desired::{Entry, Resource, Table},
        model::*,
        spec::{Location, Redirect},
        status::{AgentState, PortPhase},
    },
    datapath as dp,
};

/// Entries sorted by id, for stable listings.
/// A table's entries by id, in id order.
pub(super) fn sorted<R: Resource>(table: &Table<R>) -> Vec<(&String, &Entry<R>)> {
    let mut entries: Vec<(&String, &Entry<R>)> = table.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

pub(super) fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn port_view(state: &AgentState, entry: &Entry<Port>, mtu: u32) -> api::Port {
    let port = &entry.spec;
    let status = state.ports.get(&port.id);
    let (binding, netns) = match &port.binding {
        Binding::Netns(netns) => (api::PortBinding::Netns, netns.as_str().to_string()),
        Binding::Tap | Binding::Unbound => (api::PortBinding::Tap, String::new()),
    };
    let phase = match status.map(|s| s.phase) {
        Some(PortPhase::Ready) => api::PortPhase::Ready,
        Some(PortPhase::Failed) => api::PortPhase::Failed,
        Some(PortPhase::Unbound) => api::PortPhase::Unbound,
        Some(PortPhase::Pending) | None => api::PortPhase::Pending,
    };
    api::Port {
        id: port.id.clone(),
        revision: entry.revision(),
        vpc_id: port.vpc_id.clone(),
        name: port.name.clone(),
        mac_address: port.mac.to_string(),
        fixed_ips: port
            .fixed_ips
            .iter()
            .map(|f| api::FixedIp {
                subnet_id: f.subnet_id.clone(),
                ip_address: f.ip.to_string(),
            })
            .collect(),
        allowed_address_pairs: port
            .allowed_address_pairs
            .iter()
            .map(|p| api::AddressPair {
                ip_address: p.ip.to_string(),
                mac_address: p.mac.to_string(),
            })
            .collect(),
        binding: binding as i32,
        netns,
        device: port.device_name(),
        ifindex: status.map_or(0, |s| s.ifindex),
        phase: phase as i32,
        reason: status.map(|s| s.reason.clone()).unwrap_or_default(),
        mtu,
    }
}

/// Port ids by the ifindex of their device: the datapath knows devices only.
pub(super) fn ports_by_ifindex(state: &AgentState) -> HashMap<u32, String> {
    state
        .ports
        .iter()
        .filter(|(_, status)| status.ifindex != 0)
        .map(|(id, status)| (status.ifindex, id.clone()))
        .collect()
}

/// The port of device `ifindex` and its device name; empty if no port of
/// the agent has it.
pub(super) fn port_of(ports: &HashMap<u32, String>, ifindex: u32) -> (String, String) {
    ports
        .get(&ifindex)
        .map(|id| (id.clone(), device_name(id)))
        .unwrap_or_default()
}

pub(super) fn delivery_word(redirect: Redirect) -> &'static str {
    match redirect {
        Redirect::Peer => "peer",
        Redirect::Egress => "egress",
    }
}

/// How frames to a host find their next hop: `neighbor` or `mac`.
pub(super) fn next_hop_word(next_hop: dp::NextHop) -> &'static str {
    match next_hop {
        dp::NextHop::Neighbor => "neighbor",
        dp::NextHop::Mac => "mac",
        dp::NextHop::VxlanDevice => "vxlan-device",
    }
}

/// `(VNI, address)` → the id of the neighbor that has it.
pub(super) fn neighbor_ids(state: &AgentState) -> HashMap<(u32, Ipv4Addr), String> {
    let desired = &state.desired;
    let mut ids = HashMap::new();
    for (id, entry) in desired.neighbors.iter() {
        let neighbor = &entry.spec;
        let Some(vpc) = desired.vpcs.get(&neighbor.vpc_id) else {
            continue;
        };
        for fixed in &neighbor.fixed_ips {
            ids.entry((vpc.spec.vni.get(), fixed.ip))
                .or_insert_with(|| id.clone());
        }
    }
    ids
}

pub(super) fn dp_endpoint(
    endpoint: &dp::EndpointEntry,
    ports: &HashMap<u32, String>,
    neighbors: &HashMap<(u32, Ipv4Addr), String>,
) -> api::DpEndpoint {
    let mut view = api::DpEndpoint {
        vni: endpoint.vni,
        ip_address: endpoint.ip.to_string(),
        mac_address: endpoint.mac.to_string(),
        ..Default::default()
    };
    match endpoint.location {
        Some(Location::Local { ifindex, redirect }) => {
            let (port_id, device) = port_of(ports, ifindex);
            let delivery = delivery_word(redirect);
            view.location = if port_id.is_empty() {
                format!("local device {ifindex} (no port of this agent, {delivery})")
            } else {
                format!("local port {port_id} ({device}, {delivery})")
            };
            view.port_id = port_id;
            view.device = device;
            view.ifindex = ifindex;
            view.delivery = delivery.into();
        }
        Some(Location::Remote { host }) => {
            view.location = format!("remote host {host}");
            view.remote_host = host.to_string();
            view.neighbor_id = neighbors
                .get(&(endpoint.vni, endpoint.ip))
                .cloned()
                .unwrap_or_default();
        }
        None => view.location = "unreadable (written by another agent version)".into(),
    }
    view
}

/// `(VNI, prefix)` → the subnet's id and its router's id.
pub(super) fn subnet_ids(
    state: &AgentState,
) -> HashMap<(u32, ipnet::Ipv4Net), (String, Option<String>)> {
    let desired = &state.desired;
    let router_of = desired.router_of_subnets();
    desired
        .subnets
        .specs()
        .map(|subnet| {
            (
                (subnet.vni.get(), subnet.cidr.trunc()),
                (
                    subnet.id.clone(),
                    router_of.get(subnet.id.as_str()).map(|id| id.to_string()),
                ),
            )
        })
        .collect()
}
