//! The datapath reconciler: what the eBPF maps should say, derived from the
//! desired state and the ports that are ready on this host.

use std::collections::{BTreeMap, HashMap};

use crate::{
    datapath::{DatapathModel, EndpointSpec, HostSpec, Location, PortSpec, Redirect, SubnetSpec},
    engine::{AgentState, PortPhase},
    model::Binding,
    underlay::neighbours::NeighbourMacs,
};

/// The model of everything the datapath forwards by, in a deterministic
/// order: where two records claim one address, the first is programmed, and
/// local endpoints sort before remote ones, so that a neighbor record for
/// one of this host's own ports never displaces the local delivery.
pub fn model(state: &AgentState) -> DatapathModel {
    let desired = &state.desired;
    let mut model = DatapathModel {
        underlay: state.underlay,
        ..DatapathModel::default()
    };

    for (id, status) in &state.ports {
        if status.phase != PortPhase::Ready {
            continue;
        }
        let Some(port) = desired.ports.get(id).map(|entry| &entry.spec) else {
            continue;
        };
        let Some(vpc) = desired.vpcs.get(&port.vpc_id) else {
            continue;
        };
        let redirect = match port.binding {
            Binding::Netns(_) => Redirect::Peer,
            Binding::Tap | Binding::Unbound => Redirect::Egress,
        };
        let spec = PortSpec {
            ifindex: status.ifindex,
            vni: vpc.spec.vni,
            mac: port.mac,
            redirect,
            fixed_ips: port.fixed_ips.iter().map(|fixed| fixed.ip).collect(),
            allowed_address_pairs: port.allowed_address_pairs.clone(),
        };
        model.endpoints.extend(spec.endpoints());
        model.ports.push(spec);
    }
    model.ports.sort_unstable_by_key(|port| port.ifindex);

    model.endpoints.reserve(desired.neighbors.len());
    for neighbor in desired.neighbors.specs() {
        let Some(vpc) = desired.vpcs.get(&neighbor.vpc_id) else {
            continue;
        };
        for fixed in &neighbor.fixed_ips {
            model.endpoints.push(EndpointSpec {
                vni: vpc.spec.vni,
                ip: fixed.ip,
                mac: neighbor.mac,
                location: Location::Remote {
                    host: neighbor.host_ip,
                },
            });
        }
    }

    model
        .endpoints
        .sort_unstable_by_key(|endpoint| (endpoint.vni, endpoint.ip, endpoint.location));
    model.hosts = hosts_with_macs(&state.host_macs, &model.endpoints);

    let router_of: HashMap<&str, &str> = desired
        .routers
        .specs()
        .flat_map(|router| {
            router
                .subnet_tables
                .iter()
                .map(move |table| (table.subnet_id.as_str(), router.id.as_str()))
        })
        .collect();
    for subnet in desired.subnets.specs() {
        model.subnets.push(SubnetSpec {
            vni: subnet.vni,
            cidr: subnet.cidr,
            gateway: subnet.gateway,
            router: router_of.get(subnet.id.as_str()).map(|id| id.to_string()),
        });
    }
    model
        .subnets
        .sort_unstable_by_key(|subnet| (subnet.vni, subnet.cidr));
    model
}

/// The hosts of remote endpoints whose MAC the underlay's neighbour table
/// gives, by address, so that a full sync writes the MACs that
/// [`Engine::on_neighbour_changes`](crate::engine::Engine::on_neighbour_changes)
/// wrote in place. Only hosts of endpoints: being a neighbour on the
/// underlay does not make an address a host VXLAN is accepted from.
fn hosts_with_macs(macs: &NeighbourMacs, endpoints: &[EndpointSpec]) -> Vec<HostSpec> {
    if macs.is_empty() {
        return Vec::new();
    }
    let mut hosts = BTreeMap::new();
    let mut last = None;
    for endpoint in endpoints {
        // Runs of endpoints on one host are common: one lookup per run.
        if let Location::Remote { host } = endpoint.location
            && last.replace(host) != Some(host)
            && let Some(&mac) = macs.get(&host)
        {
            hosts.insert(host, mac);
        }
    }
    hosts
        .into_iter()
        .map(|(ip, mac)| HostSpec { ip, mac: Some(mac) })
        .collect()
}
