//! The datapath reconciler: what the eBPF maps should say, derived from the
//! desired state and the ports that are ready on this host.
//!
//! [`model`] derives all of it. A transaction that changed only neighbors
//! (a big push is mostly that) is turned into endpoint changes instead by
//! [`neighbor_changes`], from [`Claims`] the last model left.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use crate::core::{
    desired::DesiredState,
    model::{Binding, Neighbor, Vni},
    spec::{DatapathModel, EndpointSpec, HostSpec, Location, PortSpec, Redirect, SubnetSpec},
    status::{AgentState, NeighbourMacs, PortPhase},
};

type Hasher = foldhash::fast::RandomState;

/// An address of a VPC.
type Address = (Vni, Ipv4Addr);

/// Who claims the addresses of the VPCs, as of the last [`model`] and the
/// [`neighbor_changes`] since: enough to tell, for an address a transaction
/// touched, what the datapath should now say of it.
#[derive(Debug, Default)]
pub struct Claims {
    /// The local ports' addresses: they win over any neighbor's.
    local: HashSet<Address, Hasher>,
    /// How many neighbor records claim each address, and the last
    /// transaction that added a claim to it.
    remote: HashMap<Address, RemoteClaims, Hasher>,
    transaction: u64,
}

#[derive(Debug, Default)]
struct RemoteClaims {
    count: u32,
    added_in: u64,
}

/// The endpoints of a neighbor (none if its VPC is gone).
fn neighbor_endpoints<'a>(
    neighbor: &'a Neighbor,
    desired: &DesiredState,
) -> impl Iterator<Item = EndpointSpec> + 'a {
    let vni = desired.vpcs.get(&neighbor.vpc_id).map(|vpc| vpc.spec.vni);
    vni.into_iter().flat_map(move |vni| {
        neighbor.fixed_ips.iter().map(move |fixed| EndpointSpec {
            vni,
            ip: fixed.ip,
            mac: neighbor.mac,
            location: Location::Remote {
                host: neighbor.host_ip,
            },
        })
    })
}

/// What a transaction that changed only neighbors changes in the datapath's
/// endpoints.
#[derive(Debug, Default)]
pub struct EndpointChanges {
    pub write: Vec<EndpointSpec>,
    pub remove: Vec<Address>,
}

/// The endpoint changes of the transaction in progress, with `claims`
/// brought up to date; `None` if it changed more than neighbors, or if an
/// address they touch is claimed by more than one neighbor: which one the
/// datapath should then say takes the whole [`model`] (which also rebuilds
/// `claims`).
pub fn neighbor_changes(desired: &DesiredState, claims: &mut Claims) -> Option<EndpointChanges> {
    if !desired.only_neighbors_changed() {
        return None;
    }
    claims.transaction += 1;
    let transaction = claims.transaction;
    let mut delta = EndpointChanges::default();
    // Claims withdrawn first, then those made: an address whose only claim
    // moved (a neighbor updated) ends with one claim, the new one.
    let mut withdrawn = Vec::new();
    let mut made = Vec::with_capacity(desired.neighbors.changed());
    for (before, after) in desired.neighbors.changes() {
        made.extend(after.map(|entry| &entry.spec));
        for endpoint in before
            .into_iter()
            .flat_map(|n| neighbor_endpoints(&n.spec, desired))
        {
            let address = (endpoint.vni, endpoint.ip);
            if let Some(remote) = claims.remote.get_mut(&address) {
                remote.count = remote.count.saturating_sub(1);
            }
            withdrawn.push(address);
        }
    }
    for after in made {
        for endpoint in neighbor_endpoints(after, desired) {
            let address = (endpoint.vni, endpoint.ip);
            let remote = claims.remote.entry(address).or_default();
            remote.count += 1;
            remote.added_in = transaction;
            if remote.count > 1 {
                return None;
            }
            if !claims.local.contains(&address) {
                delta.write.push(endpoint);
            }
        }
    }
    for address in withdrawn {
        let Some(remote) = claims.remote.get(&address) else {
            continue;
        };
        match remote.count {
            0 => {
                claims.remote.remove(&address);
                if !claims.local.contains(&address) {
                    delta.remove.push(address);
                }
            }
            // Claimed again in this transaction: written above.
            _ if remote.added_in == transaction => {}
            // Another neighbor's claim remains, which one is not known.
            _ => return None,
        }
    }
    Some(delta)
}

/// The model of everything the datapath forwards by, in a deterministic
/// order: where two records claim one address, the first is programmed, and
/// local endpoints sort before remote ones, so that a neighbor record for
/// one of this host's own ports never displaces the local delivery.
///
/// Also rebuilds `claims` for the [`neighbor_changes`] that follow.
pub fn model(state: &AgentState, claims: &mut Claims) -> DatapathModel {
    let desired = &state.desired;
    let mut model = DatapathModel {
        underlay: state.underlay,
        port_mtu: state.port_mtu,
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

    claims.local = model
        .endpoints
        .iter()
        .map(|endpoint| (endpoint.vni, endpoint.ip))
        .collect();
    claims.remote.clear();
    claims.remote.reserve(desired.neighbors.len());
    model.endpoints.reserve(desired.neighbors.len());
    for neighbor in desired.neighbors.specs() {
        for endpoint in neighbor_endpoints(neighbor, desired) {
            claims
                .remote
                .entry((endpoint.vni, endpoint.ip))
                .or_default()
                .count += 1;
            model.endpoints.push(endpoint);
        }
    }

    model
        .endpoints
        .sort_unstable_by_key(|endpoint| (endpoint.vni, endpoint.ip, endpoint.location));
    model.hosts = hosts_with_macs(&state.host_macs, &model.endpoints);

    let router_of = desired.router_of_subnets();
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

#[cfg(test)]
mod tests {
    use alcor_proto::schema::OperationType;

    use super::*;
    use crate::core::{
        desired::Entry,
        model::{Mac, NeighborIp, Vpc},
    };

    const VPC: &str = "vpc-1";

    fn vni() -> Vni {
        Vni::try_from(7).unwrap()
    }

    fn neighbor(ip: [u8; 4], host: u8) -> Neighbor {
        Neighbor {
            vpc_id: VPC.into(),
            name: String::new(),
            mac: Mac([0xfa, 0x16, 0x3e, 0, ip[2], ip[3]]),
            host_ip: Ipv4Addr::new(198, 18, 0, host),
            host_mac: None,
            fixed_ips: vec![NeighborIp {
                l3: false,
                subnet_id: "subnet-1".into(),
                ip: ip.into(),
            }],
            allowed_address_pairs: vec![],
        }
    }

    fn state(neighbors: &[(&str, Neighbor)]) -> AgentState {
        let mut state = AgentState::default();
        let vpc = Vpc {
            id: VPC.into(),
            name: String::new(),
            project_id: String::new(),
            cidr: None,
            vni: vni(),
        };
        let desired = &mut state.desired;
        desired.vpcs.upsert(
            VPC.into(),
            Entry::new(vpc, OperationType::Create, 0, Box::default()),
        );
        for (id, neighbor) in neighbors {
            upsert(desired, id, neighbor.clone());
        }
        desired.commit();
        state
    }

    fn upsert(desired: &mut DesiredState, id: &str, neighbor: Neighbor) {
        desired.neighbors.upsert(
            id.into(),
            Entry::new(neighbor, OperationType::Create, 0, Box::default()),
        );
    }

    /// The endpoint changes of the transaction in progress.
    fn delta(
        state: &mut AgentState,
        claims: &mut Claims,
    ) -> Option<(Vec<Ipv4Addr>, Vec<Ipv4Addr>)> {
        assert!(state.desired.only_neighbors_changed());
        let delta = neighbor_changes(&state.desired, claims)?;
        Some((
            delta.write.iter().map(|e| e.ip).collect(),
            delta.remove.iter().map(|&(_, ip)| ip).collect(),
        ))
    }

    #[test]
    fn neighbor_transactions_become_endpoint_changes_unless_contended() {
        let a = neighbor([10, 0, 0, 2], 1);
        let b = neighbor([10, 0, 0, 3], 1);
        let mut state = state(&[("a", a.clone()), ("b", b)]);
        let mut claims = Claims::default();
        assert_eq!(model(&state, &mut claims).endpoints.len(), 2);
        let ip = |last| Ipv4Addr::new(10, 0, 0, last);

        // A moves to another host, C comes: both written.
        upsert(
            &mut state.desired,
            "a",
            Neighbor {
                host_ip: Ipv4Addr::new(198, 18, 0, 9),
                ..a
            },
        );
        upsert(&mut state.desired, "c", neighbor([10, 0, 0, 4], 2));
        assert_eq!(
            delta(&mut state, &mut claims),
            Some((vec![ip(2), ip(4)], vec![]))
        );
        state.desired.commit();

        // B goes: removed.
        state.desired.neighbors.remove("b");
        assert_eq!(delta(&mut state, &mut claims), Some((vec![], vec![ip(3)])));
        state.desired.commit();

        // D claims C's address: which one the datapath says takes the model.
        upsert(&mut state.desired, "d", neighbor([10, 0, 0, 4], 3));
        assert_eq!(delta(&mut state, &mut claims), None);
        state.desired.commit();
        model(&state, &mut claims);

        // C goes, D's claim remains, unknown to the delta: the model again.
        state.desired.neighbors.remove("c");
        assert_eq!(delta(&mut state, &mut claims), None);
        state.desired.commit();
        model(&state, &mut claims);

        // A local port's address: the port wins, nothing written or removed.
        claims.local.insert((vni(), ip(9)));
        upsert(&mut state.desired, "e", neighbor([10, 0, 0, 9], 1));
        assert_eq!(delta(&mut state, &mut claims), Some((vec![], vec![])));
        state.desired.commit();
        state.desired.neighbors.remove("e");
        assert_eq!(delta(&mut state, &mut claims), Some((vec![], vec![])));
    }
}
