//! The local control service behind `agentctl`: read-only views of the
//! desired state, of the ports' progress and of the datapath (its maps and
//! counters as the kernel holds them), and traces of packets through the
//! real port program.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use alcor_proto::{
    control::{self as api, agent_control_server::AgentControl},
    schema,
};
use tonic::{Request, Response, Status};

use crate::{
    config::Config,
    datapath::{self as dp, Datapath, DatapathError, Location, Redirect},
    desired::{Entry, Resource, Table},
    dhcp::{
        self, Leases,
        counters::{ClientMessage, DropReason, ServerMessage},
    },
    engine::{AgentState, PortPhase, SharedState},
    model::*,
    registration::SharedLinkStatus,
    underlay::{self, Underlay},
};

pub struct ControlService {
    state: SharedState,
    datapath: Arc<Mutex<Datapath>>,
    leases: Arc<Leases>,
    dhcp_counters: Arc<dhcp::Counters>,
    config: Config,
    port_mtu: u32,
    underlay: Option<Underlay>,
    started: Instant,
    controller: Option<SharedLinkStatus>,
}

impl ControlService {
    pub fn new(
        state: SharedState,
        datapath: Arc<Mutex<Datapath>>,
        leases: Arc<Leases>,
        dhcp_counters: Arc<dhcp::Counters>,
        config: Config,
        port_mtu: u32,
        underlay: Option<Underlay>,
    ) -> Self {
        ControlService {
            state,
            datapath,
            leases,
            dhcp_counters,
            config,
            port_mtu,
            underlay,
            started: Instant::now(),
            controller: None,
        }
    }

    /// Shows the link to the controller, when there is one.
    pub fn with_controller(mut self, status: Option<SharedLinkStatus>) -> Self {
        self.controller = status;
        self
    }

    fn controller_link(&self) -> Option<api::ControllerLink> {
        let status = self.controller.as_ref()?;
        let status = status.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let unix = |time: SystemTime| {
            time.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs())
        };
        let (last_error_at, last_error) = status
            .last_error
            .map_or((0, String::new()), |(at, error)| (unix(at), error));
        Some(api::ControllerLink {
            url: status.url,
            host_id: status.host_id,
            goal_state_endpoint: status.goal_state_endpoint,
            registered: status.registered,
            last_heartbeat_at: status.last_heartbeat.map_or(0, unix),
            last_error,
            last_error_at,
            heartbeats_ok: status.heartbeats_ok,
            heartbeats_failed: status.heartbeats_failed,
            state_requests: status.state_requests,
        })
    }

    fn read<T>(&self, view: impl FnOnce(&AgentState) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        view(&state)
    }
}

/// Entries sorted by id, for stable listings.
/// A table's entries by id, in id order.
fn sorted<R: Resource>(table: &Table<R>) -> Vec<(&String, &Entry<R>)> {
    let mut entries: Vec<(&String, &Entry<R>)> = table.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn port_view(state: &AgentState, entry: &Entry<Port>, mtu: u32) -> api::Port {
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
fn ports_by_ifindex(state: &AgentState) -> HashMap<u32, String> {
    state
        .ports
        .iter()
        .filter(|(_, status)| status.ifindex != 0)
        .map(|(id, status)| (status.ifindex, id.clone()))
        .collect()
}

/// The port of device `ifindex` and its device name; empty if no port of
/// the agent has it.
fn port_of(ports: &HashMap<u32, String>, ifindex: u32) -> (String, String) {
    ports
        .get(&ifindex)
        .map(|id| (id.clone(), device_name(id)))
        .unwrap_or_default()
}

/// `port web-1 (tapweb-1)`, or `device 7` for one no port of the agent has.
fn port_words(ports: &HashMap<u32, String>, ifindex: u32) -> String {
    match ports.get(&ifindex) {
        Some(id) => format!("port {id} ({})", device_name(id)),
        None => format!("device {ifindex} (no port of this agent)"),
    }
}

fn delivery_word(redirect: Redirect) -> &'static str {
    match redirect {
        Redirect::Peer => "peer",
        Redirect::Egress => "egress",
    }
}

/// How frames to a host find their next hop: `neighbor` or `mac`.
fn next_hop_word(next_hop: dp::NextHop) -> &'static str {
    match next_hop {
        dp::NextHop::Neighbor => "neighbor",
        dp::NextHop::Mac => "mac",
        dp::NextHop::VxlanDevice => "vxlan-device",
    }
}

/// How a frame reaches a local port's VM, in words.
fn delivery_words(redirect: Redirect) -> &'static str {
    match redirect {
        Redirect::Peer => "into its VM's namespace (redirect to peer)",
        Redirect::Egress => "out of its device to the hypervisor (redirect to egress)",
    }
}

/// The error and its causes, `a: b: c`.
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn datapath_status(error: DatapathError) -> Status {
    Status::internal(format!("datapath: {}", chain(&error)))
}

impl ControlService {
    /// The ready ports with their ifindex, sorted by id: `wanted` only, or
    /// all if it is empty; NOT_FOUND if `wanted` is not a ready port.
    fn ready_ports(&self, wanted: &str) -> Result<Vec<(String, u32)>, Status> {
        let ports: Vec<(String, u32)> = self.read(|state| {
            let mut ports: Vec<(String, u32)> = state
                .ports
                .iter()
                .filter(|(id, status)| {
                    status.phase == PortPhase::Ready && (wanted.is_empty() || *id == wanted)
                })
                .map(|(id, status)| (id.clone(), status.ifindex))
                .collect();
            ports.sort_unstable();
            ports
        });
        if !wanted.is_empty() && ports.is_empty() {
            return Err(Status::not_found(format!("no ready port {wanted}")));
        }
        Ok(ports)
    }

    /// Runs `read` on the datapath, off the async workers' hot path (a map
    /// listing is a syscall per entry).
    fn with_datapath<T>(
        &self,
        read: impl FnOnce(&Datapath) -> Result<T, DatapathError>,
    ) -> Result<T, Status> {
        tokio::task::block_in_place(|| {
            let datapath = self
                .datapath
                .lock()
                .map_err(|_| Status::internal("the datapath lock is poisoned"))?;
            read(&datapath).map_err(datapath_status)
        })
    }
}

/// `(VNI, address)` → the id of the neighbor that has it.
fn neighbor_ids(state: &AgentState) -> HashMap<(u32, Ipv4Addr), String> {
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

fn dp_endpoint(
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
fn subnet_ids(state: &AgentState) -> HashMap<(u32, ipnet::Ipv4Net), (String, Option<String>)> {
    let desired = &state.desired;
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

#[tonic::async_trait]
impl AgentControl for ControlService {
    async fn get_status(
        &self,
        _: Request<api::GetStatusRequest>,
    ) -> Result<Response<api::AgentStatus>, Status> {
        let phases =
            |phase| self.read(|s| count(s.ports.values().filter(|p| p.phase == phase).count()));
        let status = self.read(|state| {
            let desired = &state.desired;
            api::AgentStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_seconds: self.started.elapsed().as_secs(),
                grpc_listen: self.config.grpc_listen.to_string(),
                mutual_tls: self.config.tls.is_some(),
                state_dir: self.config.state_dir.display().to_string(),
                underlay_dev: self.config.underlay_dev.clone().unwrap_or_default(),
                underlay_ip: self
                    .underlay
                    .as_ref()
                    .map(|underlay| underlay.spec.ip.to_string())
                    .unwrap_or_default(),
                port_mtu: self.port_mtu,
                bpf_pin_dir: self.config.bpf_pin_dir.display().to_string(),
                messages_applied: state.messages_applied,
                vpcs: count(desired.vpcs.len()),
                subnets: count(desired.subnets.len()),
                ports: count(desired.ports.len()),
                neighbors: count(desired.neighbors.len()),
                dhcp_entries: count(desired.dhcp.len()),
                routers: count(desired.routers.len()),
                security_groups: count(desired.security_groups.len()),
                ..Default::default()
            }
        });
        let (dp_endpoints, dp_map_bytes) = self.with_datapath(|datapath| {
            let memory = datapath.map_memory()?.iter().map(|(_, bytes)| bytes).sum();
            Ok((datapath.endpoint_count()? as u64, memory))
        })?;
        Ok(Response::new(api::AgentStatus {
            dp_endpoints,
            dp_map_bytes,
            ports_ready: phases(PortPhase::Ready),
            ports_pending: phases(PortPhase::Pending),
            ports_failed: phases(PortPhase::Failed),
            controller: self.controller_link(),
            ..status
        }))
    }

    async fn list_vpcs(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::VpcList>, Status> {
        let vpcs = self.read(|state| {
            sorted(&state.desired.vpcs)
                .into_iter()
                .map(|(_, entry)| api::Vpc {
                    id: entry.spec.id.clone(),
                    revision: entry.revision(),
                    name: entry.spec.name.clone(),
                    project_id: entry.spec.project_id.clone(),
                    cidr: entry.spec.cidr.map(|c| c.to_string()).unwrap_or_default(),
                    vni: entry.spec.vni.get(),
                })
                .collect()
        });
        Ok(Response::new(api::VpcList { vpcs }))
    }

    async fn list_subnets(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::SubnetList>, Status> {
        let subnets = self.read(|state| {
            sorted(&state.desired.subnets)
                .into_iter()
                .map(|(_, entry)| {
                    let subnet = &entry.spec;
                    api::Subnet {
                        id: subnet.id.clone(),
                        revision: entry.revision(),
                        vpc_id: subnet.vpc_id.clone(),
                        name: subnet.name.clone(),
                        cidr: subnet.cidr.to_string(),
                        vni: subnet.vni.get(),
                        gateway_ip: subnet.gateway.map(|g| g.ip.to_string()).unwrap_or_default(),
                        gateway_mac: subnet
                            .gateway
                            .map(|g| g.mac.to_string())
                            .unwrap_or_default(),
                        dhcp_enable: subnet.dhcp_enable,
                        dns_servers: subnet.dns_servers.iter().map(|d| d.to_string()).collect(),
                    }
                })
                .collect()
        });
        Ok(Response::new(api::SubnetList { subnets }))
    }

    async fn list_ports(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::PortList>, Status> {
        let ports = self.read(|state| {
            sorted(&state.desired.ports)
                .into_iter()
                .map(|(_, entry)| port_view(state, entry, self.port_mtu))
                .collect()
        });
        Ok(Response::new(api::PortList { ports }))
    }

    async fn list_neighbors(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::NeighborList>, Status> {
        let neighbors = self.read(|state| {
            sorted(&state.desired.neighbors)
                .into_iter()
                .map(|(id, entry)| {
                    let neighbor = &entry.spec;
                    api::Neighbor {
                        id: id.clone(),
                        revision: entry.revision(),
                        vpc_id: neighbor.vpc_id.to_string(),
                        name: neighbor.name.clone(),
                        mac_address: neighbor.mac.to_string(),
                        host_ip_address: neighbor.host_ip.to_string(),
                        fixed_ips: neighbor
                            .fixed_ips
                            .iter()
                            .map(|f| api::NeighborIp {
                                subnet_id: f.subnet_id.to_string(),
                                ip_address: f.ip.to_string(),
                                l3: f.l3,
                            })
                            .collect(),
                    }
                })
                .collect()
        });
        Ok(Response::new(api::NeighborList { neighbors }))
    }

    async fn get_goal_state(
        &self,
        _: Request<api::GetGoalStateRequest>,
    ) -> Result<Response<schema::GoalState>, Status> {
        macro_rules! states {
            ($state:ident, $table:ident, $ty:ident) => {
                sorted(&$state.desired.$table)
                    .into_iter()
                    .map(|(_, entry)| schema::$ty {
                        operation_type: entry.operation as i32,
                        configuration: Some(entry.config()),
                    })
                    .collect()
            };
        }
        let goal_state = self.read(|state| schema::GoalState {
            format_version: 1,
            vpc_states: states!(state, vpcs, VpcState),
            subnet_states: states!(state, subnets, SubnetState),
            port_states: states!(state, ports, PortState),
            neighbor_states: states!(state, neighbors, NeighborState),
            security_group_states: states!(state, security_groups, SecurityGroupState),
            dhcp_states: states!(state, dhcp, DhcpState),
            router_states: states!(state, routers, RouterState),
            gateway_states: states!(state, gateways, GatewayState),
        });
        Ok(Response::new(goal_state))
    }

    async fn get_counters(
        &self,
        request: Request<api::GetCountersRequest>,
    ) -> Result<Response<api::CounterList>, Status> {
        let ports = self.ready_ports(&request.into_inner().port_id)?;
        let datapath = self
            .datapath
            .lock()
            .map_err(|_| Status::internal("the datapath lock is poisoned"))?;
        let ports = ports
            .into_iter()
            .map(|(id, ifindex)| {
                let counters = datapath.port_counters(ifindex).map_err(|e| {
                    Status::internal(format!("reading counters of {id}: {}", chain(&e)))
                })?;
                Ok(api::PortCounters {
                    device: device_name(&id),
                    port_id: id,
                    ifindex,
                    rx_packets: counters.rx_packets,
                    rx_bytes: counters.rx_bytes,
                    tx_packets: counters.tx_packets,
                    tx_bytes: counters.tx_bytes,
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(api::CounterList { ports }))
    }

    async fn list_leases(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::LeaseList>, Status> {
        let mut leases: Vec<api::Lease> = tokio::task::block_in_place(|| self.leases.snapshot())
            .into_iter()
            .map(|lease| api::Lease {
                port_id: lease.port_id.to_string(),
                vpc_id: lease.vpc_id.to_string(),
                mac_address: lease.mac.to_string(),
                ip_address: lease.ip.to_string(),
                state: lease.state.as_str().to_string(),
                expires_at: lease.expires_at,
                hostname: lease.hostname,
            })
            .collect();
        leases.sort_unstable_by(|a, b| {
            (&a.port_id, &a.mac_address).cmp(&(&b.port_id, &b.mac_address))
        });
        Ok(Response::new(api::LeaseList { leases }))
    }

    async fn get_dhcp_counters(
        &self,
        _: Request<api::GetDhcpCountersRequest>,
    ) -> Result<Response<api::DhcpCounters>, Status> {
        let counters = &self.dhcp_counters;
        Ok(Response::new(api::DhcpCounters {
            received: ClientMessage::ALL
                .into_iter()
                .map(|m| (m.as_str().to_string(), counters.received(m)))
                .collect(),
            sent: ServerMessage::ALL
                .into_iter()
                .map(|m| (m.as_str().to_string(), counters.sent(m)))
                .collect(),
            dropped: DropReason::ALL
                .into_iter()
                .map(|r| (r.as_str().to_string(), counters.dropped(r)))
                .collect(),
            leases_declined: counters.leases_declined(),
            leases_released: counters.leases_released(),
            send_errors: counters.send_errors(),
        }))
    }

    async fn list_dp_ports(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::DpPortList>, Status> {
        let names = self.read(ports_by_ifindex);
        let entries = self.with_datapath(Datapath::ports)?;
        let ports = entries
            .into_iter()
            .map(|entry| {
                let (port_id, device) = port_of(&names, entry.ifindex);
                api::DpPort {
                    port_id,
                    device,
                    ifindex: entry.ifindex,
                    vni: entry.vni,
                    mac_address: entry.mac.to_string(),
                    ip_address: entry.ip.map(|ip| ip.to_string()).unwrap_or_default(),
                    subnet: entry.subnet.map(|net| net.to_string()).unwrap_or_default(),
                    delivery: entry.redirect.map(delivery_word).unwrap_or_default().into(),
                    sources: entry
                        .sources
                        .iter()
                        .map(|(mac, net)| api::DpSource {
                            mac_address: mac.to_string(),
                            prefix: net.to_string(),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(api::DpPortList { ports }))
    }

    async fn list_dp_endpoints(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::DpEndpointList>, Status> {
        let (ports, neighbors) = self.read(|state| (ports_by_ifindex(state), neighbor_ids(state)));
        let endpoints = self
            .with_datapath(Datapath::endpoints)?
            .iter()
            .map(|endpoint| dp_endpoint(endpoint, &ports, &neighbors))
            .collect();
        Ok(Response::new(api::DpEndpointList { endpoints }))
    }

    async fn list_dp_routes(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::DpRouteList>, Status> {
        let subnets = self.read(subnet_ids);
        let routes = self
            .with_datapath(Datapath::routes)?
            .into_iter()
            .map(|route| {
                let from = subnets.get(&(route.vni, route.from));
                let to = subnets.get(&(route.vni, route.to));
                // The maps tag a router; the desired state names it (both
                // ends on the same one, as the maps say).
                let router_id = match (from, to) {
                    (Some((_, Some(a))), Some((_, Some(b)))) if a == b => a.clone(),
                    _ => String::new(),
                };
                api::DpRoute {
                    vni: route.vni,
                    from_subnet: route.from.to_string(),
                    from_subnet_id: from.map(|(id, _)| id.clone()).unwrap_or_default(),
                    to_subnet: route.to.to_string(),
                    to_subnet_id: to.map(|(id, _)| id.clone()).unwrap_or_default(),
                    router_id,
                    router_tag: route.router,
                    via_gateway_ip: route.via.ip.to_string(),
                    via_gateway_mac: route.via.mac.to_string(),
                }
            })
            .collect();
        Ok(Response::new(api::DpRouteList { routes }))
    }

    async fn get_dp_counters(
        &self,
        request: Request<api::GetCountersRequest>,
    ) -> Result<Response<api::DpCounterList>, Status> {
        let ports = self.ready_ports(&request.into_inner().port_id)?;
        let stats = self.with_datapath(|datapath| {
            ports
                .iter()
                .map(|(_, ifindex)| datapath.port_stats(*ifindex))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let ports = ports
            .into_iter()
            .zip(stats)
            .map(|((id, ifindex), stats)| {
                let (traffic, tunnel) = (stats.traffic, stats.tunnel);
                api::DpPortCounters {
                    device: device_name(&id),
                    port_id: id,
                    ifindex,
                    rx_packets: traffic.rx_packets,
                    rx_bytes: traffic.rx_bytes,
                    tx_packets: traffic.tx_packets,
                    tx_bytes: traffic.tx_bytes,
                    drops: dp::DropReason::ALL
                        .into_iter()
                        .zip(stats.drops)
                        .map(|(reason, count)| (reason.name().to_string(), count))
                        .collect(),
                    dropped: stats.drops.iter().fold(0u64, |a, b| a.wrapping_add(*b)),
                    encap_packets: tunnel.encap_packets,
                    encap_bytes: tunnel.encap_bytes,
                    decap_packets: tunnel.decap_packets,
                    decap_bytes: tunnel.decap_bytes,
                }
            })
            .collect();
        Ok(Response::new(api::DpCounterList { ports }))
    }

    async fn list_dp_neighbors(
        &self,
        _: Request<api::ListRequest>,
    ) -> Result<Response<api::DpNeighborList>, Status> {
        let ids = self.read(neighbor_ids);
        let neighbors = self
            .with_datapath(Datapath::endpoints)?
            .into_iter()
            .filter_map(|endpoint| match endpoint.location {
                Some(Location::Remote { host }) => Some(api::DpNeighbor {
                    vni: endpoint.vni,
                    ip_address: endpoint.ip.to_string(),
                    mac_address: endpoint.mac.to_string(),
                    host: host.to_string(),
                    neighbor_id: ids
                        .get(&(endpoint.vni, endpoint.ip))
                        .cloned()
                        .unwrap_or_default(),
                }),
                _ => None,
            })
            .collect();
        Ok(Response::new(api::DpNeighborList { neighbors }))
    }

    async fn get_dp_tunnels(
        &self,
        _: Request<api::GetDpTunnelsRequest>,
    ) -> Result<Response<api::DpTunnels>, Status> {
        let (programmed, xdp, vnis, hosts, stats) = self.with_datapath(|datapath| {
            let programmed = datapath.underlay()?;
            let xdp = match &programmed {
                Some(underlay) => datapath.xdp_mode(underlay.ifindex)?,
                None => None,
            };
            Ok((
                programmed,
                xdp,
                datapath.vnis()?,
                datapath.hosts()?,
                datapath.underlay_stats()?,
            ))
        })?;
        let mut view = api::DpUnderlay {
            vnis,
            ..Default::default()
        };
        if let Some(programmed) = programmed {
            view.ifindex = programmed.ifindex;
            view.ip_address = programmed.ip.to_string();
            view.mac_address = programmed.mac.to_string();
            view.mtu = programmed.mtu;
            view.xdp_mode = underlay::xdp_mode_name(xdp).into();
        }
        if let Some(underlay) = &self.underlay {
            view.device = underlay.device.clone();
            view.xdp_configured = underlay.xdp.as_str().into();
            view.vxlan_device = underlay.vxlan_device.clone();
            view.vxlan_ifindex = underlay.spec.vxlan_ifindex;
        }
        let hosts = hosts
            .into_iter()
            .map(|host| api::DpHost {
                ip_address: host.ip.to_string(),
                next_hop: next_hop_word(host.next_hop).into(),
                mac_address: host.mac.map(|mac| mac.to_string()).unwrap_or_default(),
                endpoints: count(host.endpoints),
            })
            .collect();
        Ok(Response::new(api::DpTunnels {
            underlay: Some(view),
            hosts,
            encap_packets: stats.encap_packets,
            encap_bytes: stats.encap_bytes,
            decap_packets: stats.decap_packets,
            decap_bytes: stats.decap_bytes,
            drops: dp::UnderlayDropReason::ALL
                .into_iter()
                .zip(stats.drops)
                .map(|(reason, count)| (reason.name().to_string(), count))
                .collect(),
            dropped: stats.drops.iter().fold(0u64, |a, b| a.wrapping_add(*b)),
            device_encap_packets: stats.device_encap_packets,
            device_decap_packets: stats.device_decap_packets,
        }))
    }

    async fn trace(
        &self,
        request: Request<api::TraceRequest>,
    ) -> Result<Response<api::TraceReply>, Status> {
        let request = request.into_inner();
        let tunnel = trace::Tunnel {
            underlay_device: self.underlay.as_ref().map(|u| u.device.clone()),
            vxlan_device: self.underlay.as_ref().map(|u| u.vxlan_device.clone()),
            port_mtu: self.port_mtu,
        };
        let setup = self.read(|state| trace::Setup::new(state, &request.port_id, tunnel))?;
        let probe = trace::Probe::new(&setup, &request).map_err(Status::invalid_argument)?;
        let datapath = self.datapath.clone();
        // BPF_PROG_TEST_RUN looks the device up in the calling thread's
        // network namespace: every thread of the agent is in its own.
        let reply = tokio::task::spawn_blocking(move || {
            let datapath = datapath
                .lock()
                .map_err(|_| Status::internal("the datapath lock is poisoned"))?;
            let outcome = trace::run(&datapath, &setup, &probe).map_err(datapath_status)?;
            drop(datapath);
            Ok::<_, Status>(trace::reply(&setup, &probe, &outcome))
        })
        .await
        .map_err(|e| Status::internal(format!("the trace failed: {e}")))??;
        Ok(Response::new(reply))
    }
}

/// `bytes` as `hexdump -C` shows them: offset, 16 bytes in hex (two groups
/// of 8), and their printable characters.
pub fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (n, chunk) in bytes.chunks(16).enumerate() {
        let mut hex = String::new();
        for (i, byte) in chunk.iter().enumerate() {
            if i == 8 {
                hex.push(' ');
            }
            hex.push_str(&format!("{byte:02x} "));
        }
        let text: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:04x}  {hex:<49} |{text}|\n", n * 16));
    }
    out
}

/// A trace: the frame a port's VM would send for a packet description, run
/// through the port program, and the verdict explained with this packet's
/// addresses and the names the operator knows (ports, subnets, routers).
mod trace {
    use std::{collections::HashMap, net::Ipv4Addr};

    use alcor_proto::control as api;
    use ipnet::Ipv4Net;
    use tonic::Status;

    use super::{
        delivery_word, delivery_words, frames, next_hop_word, port_of, port_words, ports_by_ifindex,
    };
    use crate::{
        datapath::{
            Answer, Datapath, DatapathError, DropReason, EndpointSpec, Location, NextHop,
            PassReason, SubnetSpec, TraceResult, Verdict,
        },
        engine::{AgentState, PortPhase},
        forwarding,
        model::{AddressPair, Mac, device_name},
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
        fn endpoint(&self, ip: Ipv4Addr) -> Option<&EndpointSpec> {
            self.endpoints.iter().find(|endpoint| endpoint.ip == ip)
        }

        /// `router r1`, naming the router the two subnets share.
        fn router_words(&self, from: Option<&SubnetSpec>, to: Option<&SubnetSpec>) -> String {
            match (from.and_then(|s| s.router.as_ref()), to) {
                (Some(router), Some(to)) if to.router.as_ref() == Some(router) => {
                    format!("router {router}")
                }
                (Some(router), None) => format!("router {router}"),
                _ => "the router".into(),
            }
        }

        /// Who has `ip`, in words: ` (the gateway of 10.0.1.0/24)`, ` (port
        /// db-1 (tapdb-1))`, ` (a VM on host 198.18.0.2)`, or nothing.
        fn owner_words(&self, ip: Ipv4Addr) -> String {
            if let Some(subnet) = self
                .subnets
                .iter()
                .find(|subnet| subnet.gateway.is_some_and(|gateway| gateway.ip == ip))
            {
                return format!(" (the gateway of {})", subnet.cidr);
            }
            match self.endpoint(ip).map(|endpoint| endpoint.location) {
                Some(Location::Local { ifindex, .. }) => {
                    format!(" ({})", port_words(&self.ports, ifindex))
                }
                Some(Location::Remote { host }) => format!(" (a VM on host {host})"),
                None => String::new(),
            }
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
                    let least = 20 + frames::least_l4_len(protocol.number());
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
                Protocol::Arp => return frames::arp_request(self.src_mac, dst_mac, src, dst),
                Protocol::Icmp => frames::icmp_echo(l4_len),
                Protocol::Tcp => frames::tcp_syn(src, dst, self.src_port, self.dst_port, l4_len),
                Protocol::Udp => frames::udp(src, dst, self.src_port, self.dst_port, l4_len),
            };
            frames::ipv4(
                self.src_mac,
                dst_mac,
                frames::Addresses { src, dst },
                frames::Ipv4Fields {
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
                Self::Icmp => frames::IPPROTO_ICMP,
                Self::Tcp => frames::IPPROTO_TCP,
                Self::Udp => frames::IPPROTO_UDP,
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

    /// Builds the frame and runs it through the port program; resolving
    /// its destination MAC first runs the VM's ARP request through it too.
    /// The device is looked up in the calling thread's network namespace.
    pub fn run(
        datapath: &Datapath,
        setup: &Setup,
        probe: &Probe,
    ) -> Result<Outcome, DatapathError> {
        let (dst_mac, resolution) = match (probe.protocol, probe.dst_mac) {
            (_, Some(mac)) => (mac, Resolution::Given),
            (Protocol::Arp, None) => (frames::BROADCAST, Resolution::Broadcast),
            (_, None) => resolve(datapath, setup, probe)?,
        };
        let input = probe.frame(dst_mac);
        let result = datapath.trace(setup.ifindex, &input)?;
        Ok(Outcome {
            resolution,
            input,
            result,
        })
    }

    /// The MAC the VM would send the probe to: its kernel asks ARP (from
    /// the port's MAC and its own address) for the destination in its
    /// subnet, or for its gateway; the program answers, or not.
    fn resolve(
        datapath: &Datapath,
        setup: &Setup,
        probe: &Probe,
    ) -> Result<(Mac, Resolution), DatapathError> {
        let sender = if setup.ips.contains(&probe.src_ip) {
            probe.src_ip
        } else {
            setup.ips.first().copied().unwrap_or(probe.src_ip)
        };
        let broadcast = |resolution| Ok((frames::BROADCAST, resolution));
        let Some(subnet) = setup.source_subnet(sender) else {
            return broadcast(Resolution::NoSubnet { ip: sender });
        };
        let gateway = subnet.gateway;
        let target = if subnet.cidr.contains(&probe.dst_ip) {
            probe.dst_ip
        } else if let Some(gateway) = gateway {
            gateway.ip
        } else {
            return broadcast(Resolution::NoGateway {
                subnet: subnet.cidr,
            });
        };
        let arp = Probe {
            protocol: Protocol::Arp,
            src_mac: setup.mac,
            dst_mac: None,
            src_ip: sender,
            dst_ip: target,
            ..probe.clone()
        };
        let answer = datapath.trace(setup.ifindex, &arp.frame(frames::BROADCAST))?;
        let answered = frames::arp_sender(&answer.output);
        match (answer.verdict, answered) {
            (Verdict::Answered(Answer::Arp), Some((mac, _))) => Ok((
                mac,
                Resolution::Resolved {
                    ip: target,
                    mac,
                    gateway_of: gateway
                        .filter(|gateway| gateway.ip == target)
                        .map(|_| subnet.cidr),
                },
            )),
            (verdict, _) => broadcast(Resolution::Unanswered {
                ip: target,
                why: verdict_words(setup, &arp, &Resolution::Broadcast, verdict),
            }),
        }
    }

    /// What the program did, in words that continue the verdict
    /// (`dropped: ...`, `routed ...`).
    fn verdict_words(
        setup: &Setup,
        probe: &Probe,
        resolution: &Resolution,
        verdict: Verdict,
    ) -> String {
        match verdict {
            Verdict::Drop(reason) => drop_words(setup, probe, resolution, reason),
            verdict => verdict.to_string(),
        }
    }

    /// Why the program dropped this probe, with its addresses.
    pub fn drop_words(
        setup: &Setup,
        probe: &Probe,
        resolution: &Resolution,
        reason: DropReason,
    ) -> String {
        let (src, dst) = (probe.src_ip, probe.dst_ip);
        let dst_mac = probe.dst_mac.unwrap_or(match resolution {
            Resolution::Resolved { mac, .. } => *mac,
            _ => frames::BROADCAST,
        });
        let from = setup.source_subnet(src);
        let from_words = from.map_or_else(|| "none".to_string(), |s| s.cidr.to_string());
        let gateway_mac = from.and_then(|subnet| subnet.gateway).map_or_else(
            || "none: the subnet has no gateway".into(),
            |g| g.mac.to_string(),
        );
        match reason {
            DropReason::SpoofedMac if probe.src_mac.is_multicast() => format!(
                "the source MAC {} is a multicast address, which no VM may send from",
                probe.src_mac
            ),
            DropReason::SpoofedMac => {
                let mut macs: Vec<String> = setup
                    .pairs
                    .iter()
                    .map(|pair| pair.mac.to_string())
                    .collect();
                macs.dedup();
                let pairs = if macs.is_empty() {
                    ", and the port has no allowed address pairs".to_string()
                } else {
                    format!(
                        " nor that of one of its allowed address pairs ({})",
                        macs.join(", ")
                    )
                };
                format!(
                    "the source MAC {} is not the port's ({}){pairs}",
                    probe.src_mac, setup.mac
                )
            }
            DropReason::SpoofedIp if probe.src_mac != setup.mac => {
                let allowed: Vec<String> = setup
                    .pairs
                    .iter()
                    .filter(|pair| pair.mac == probe.src_mac)
                    .map(|pair| pair.ip.to_string())
                    .collect();
                format!(
                    "the source address {src} may not be used with the MAC {}: its allowed \
                     address pairs allow only {}",
                    probe.src_mac,
                    allowed.join(", ")
                )
            }
            DropReason::SpoofedIp => {
                let ips: Vec<String> = setup.ips.iter().map(ToString::to_string).collect();
                let ips = if ips.is_empty() {
                    "it has none".to_string()
                } else {
                    ips.join(", ")
                };
                let pairs: Vec<String> = setup
                    .pairs
                    .iter()
                    .map(|pair| format!("{} with {}", pair.ip, pair.mac))
                    .collect();
                let pairs = if pairs.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", pairs.join(", "))
                };
                format!(
                    "the source address {src} is not the port's ({ips}) nor one of its allowed \
                     address pairs{pairs}"
                )
            }
            DropReason::NoSubnet => format!(
                "the source address {src} is in no subnet of the VPC (VNI {})",
                setup.vni
            ),
            DropReason::UnknownDestination => format!(
                "no VM or neighbor has the address {dst} in the VPC (VNI {})",
                setup.vni
            ),
            DropReason::WrongDestinationMac => {
                let known = setup
                    .endpoint(dst)
                    .map_or_else(|| "unknown".to_string(), |e| e.mac.to_string());
                format!(
                    "the destination MAC {dst_mac} is neither that of {dst} ({known}) nor the \
                     gateway's ({gateway_mac})"
                )
            }
            DropReason::OffSubnet => format!(
                "{dst} is outside the sender's subnet {from_words}, so the frame must go to the \
                 gateway's MAC ({gateway_mac}), not to {dst_mac}"
            ),
            DropReason::NotRouted => match setup.subnet_of(dst) {
                None => format!("{dst} is in no subnet of the VPC, so no router reaches it"),
                Some(to) if to.gateway.is_none() => format!(
                    "{dst} is in subnet {}, which has no gateway to route to",
                    to.cidr
                ),
                Some(to) => {
                    let on = |subnet: Option<&SubnetSpec>| {
                        subnet
                            .and_then(|s| s.router.as_deref())
                            .map_or_else(|| "no router".to_string(), |r| format!("router {r}"))
                    };
                    format!(
                        "{dst} is in subnet {}, and no router connects it to the sender's subnet \
                         {from_words} ({from_words} is on {}, {} on {})",
                        to.cidr,
                        on(from),
                        to.cidr,
                        on(Some(to))
                    )
                }
            },
            DropReason::ToGateway => {
                let what = match probe.protocol {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                    Protocol::Icmp | Protocol::Arp => "this",
                };
                format!(
                    "{dst} is the gateway of {from_words}, which answers ping (ICMP echo) only, \
                     not {what}"
                )
            }
            DropReason::TtlExceeded => format!(
                "the TTL ({}) ran out at {}; no ICMP error is sent about an ICMP error or a \
                 fragment",
                probe.ttl,
                setup.router_words(from, setup.subnet_of(dst))
            ),
            DropReason::TooBig => {
                // A trace spends none of the rate limit and sends no ICMP
                // error: only a missing gateway leaves it unanswered.
                let why = if from.is_none_or(|subnet| subnet.gateway.is_none()) {
                    format!("the sender's subnet {from_words} has no gateway to answer from")
                } else {
                    "the port's ICMP rate limit was reached, or the packet is an ICMP error or a \
                     later fragment"
                        .into()
                };
                format!(
                    "the packet is bigger than the port MTU ({}) and may not be fragmented (DF), \
                     but no ICMP fragmentation needed goes back: {why}",
                    setup.port_mtu
                )
            }
            DropReason::NoUnderlay => {
                let host = match setup.endpoint(dst).map(|e| e.location) {
                    Some(Location::Remote { host }) => host.to_string(),
                    _ => "another host".into(),
                };
                format!(
                    "{dst} lives on another host ({host}), and this host has no underlay \
                     (tunnel endpoint) configured to reach it"
                )
            }
            DropReason::ArpUnknownTarget => match from {
                Some(subnet) if subnet.cidr.contains(&dst) => {
                    let gateway = subnet
                        .gateway
                        .map(|gateway| format!(" ({})", gateway.ip))
                        .unwrap_or_default();
                    format!(
                        "no VM or neighbor has {dst} in the sender's subnet {} and it is not \
                         the gateway{gateway}: no ARP reply is sent, and nothing is flooded",
                        subnet.cidr
                    )
                }
                _ => format!(
                    "{dst} is outside the sender's subnet {from_words}: ARP is answered only for \
                     the gateway and the subnet's addresses (other subnets are reached through \
                     the gateway)"
                ),
            },
            DropReason::ArpOwnAddress => format!(
                "{dst} is the sender's own address (duplicate address detection): deliberately \
                 not answered, so that the check passes"
            ),
            DropReason::ArpNotRequest if src == dst => format!(
                "an ARP request for the sender's own address {dst} is an announcement \
                 (gratuitous ARP), which no one needs: the datapath answers for every address it \
                 knows"
            ),
            DropReason::Broadcast => match resolution {
                Resolution::Unanswered { ip, why } => format!(
                    "the VM's ARP request for {ip} gets no reply ({why}), so the VM has no MAC to \
                     send the packet to; sent to broadcast anyway, it is dropped: only ARP and \
                     DHCP may be broadcast"
                ),
                Resolution::NoGateway { subnet } => format!(
                    "{dst} is outside {subnet}, which has no gateway, so the VM has no route to \
                     it; sent to broadcast anyway, it is dropped: only ARP and DHCP may be \
                     broadcast"
                ),
                _ => format!(
                    "the destination MAC {dst_mac} is a broadcast or multicast address, and only \
                     ARP and DHCP may be broadcast"
                ),
            },
            reason => reason.description().to_string(),
        }
    }

    /// The verdict and its explanation, as the reply carries them.
    struct Explained {
        verdict: api::TraceVerdict,
        drop_reason: Option<DropReason>,
        answer: &'static str,
        explanation: String,
        next_hop: api::NextHop,
        encapsulation: Option<api::Encapsulation>,
    }

    /// A device by its name, else by its ifindex.
    fn named(name: &str, ifindex: u32) -> String {
        if name.is_empty() {
            format!("device {ifindex}")
        } else {
            name.to_string()
        }
    }

    /// `routed via router r1 (10.0.1.0/24 -> 10.0.2.0/24), then ` if routed.
    fn routed_words(
        setup: &Setup,
        from: Option<&SubnetSpec>,
        to: Option<&SubnetSpec>,
        routed: bool,
    ) -> String {
        if !routed {
            return String::new();
        }
        format!(
            "routed via {}{}, then ",
            setup.router_words(from, to),
            subnets_words(from, to)
        )
    }

    /// ` (10.0.1.0/24 -> 10.0.2.0/24)`, if both subnets are known.
    fn subnets_words(from: Option<&SubnetSpec>, to: Option<&SubnetSpec>) -> String {
        match (from, to) {
            (Some(from), Some(to)) => format!(" ({} -> {})", from.cidr, to.cidr),
            _ => String::new(),
        }
    }

    /// ` 10.0.1.1`: the address of the subnet's gateway, if it has one.
    fn gateway_words(subnet: Option<&SubnetSpec>) -> String {
        subnet
            .and_then(|s| s.gateway)
            .map(|g| format!(" {}", g.ip))
            .unwrap_or_default()
    }

    /// The next hop of a frame to `host` out of `device`.
    fn tunnel_hop(
        device: &str,
        ifindex: u32,
        host: Ipv4Addr,
        routed: bool,
        from: Option<&SubnetSpec>,
    ) -> api::NextHop {
        api::NextHop {
            kind: "tunnel".into(),
            device: device.into(),
            ifindex,
            routed,
            router_id: if routed {
                from.and_then(|s| s.router.clone()).unwrap_or_default()
            } else {
                String::new()
            },
            remote_host: host.to_string(),
            ..Default::default()
        }
    }

    fn explain(setup: &Setup, probe: &Probe, outcome: &Outcome) -> Explained {
        let verdict = outcome.result.verdict;
        let from = setup.source_subnet(probe.src_ip);
        let to = setup.subnet_of(probe.dst_ip);
        let mut explained = Explained {
            verdict: api::TraceVerdict::Unspecified,
            drop_reason: None,
            answer: "",
            explanation: String::new(),
            next_hop: api::NextHop::default(),
            encapsulation: None,
        };
        let in_place = || api::NextHop {
            kind: "in-place".into(),
            port_id: setup.port_id.clone(),
            device: device_name(&setup.port_id),
            ifindex: setup.ifindex,
            ..Default::default()
        };
        match verdict {
            Verdict::Pass(reason) => {
                explained.verdict = api::TraceVerdict::Passed;
                explained.explanation = match reason {
                    PassReason::NotProgrammed => "to the host stack, unfiltered: the port has \
                                                  no record in the datapath yet (not programmed)"
                        .into(),
                    PassReason::Dhcp => {
                        "to the host stack: DHCP, for the agent's DHCP responder".into()
                    }
                };
                explained.next_hop.kind = "host-stack".into();
            }
            Verdict::Drop(reason) => {
                explained.verdict = api::TraceVerdict::Dropped;
                explained.drop_reason = Some(reason);
                explained.explanation = drop_words(setup, probe, &outcome.resolution, reason);
                explained.next_hop.kind = "none".into();
            }
            Verdict::Redirect {
                ifindex,
                redirect,
                routed,
            } => {
                let target = port_words(&setup.ports, ifindex);
                let how = delivery_words(redirect);
                explained.explanation = if routed {
                    explained.verdict = api::TraceVerdict::Routed;
                    format!(
                        "to {target} via {}{}, {how}",
                        setup.router_words(from, to),
                        subnets_words(from, to)
                    )
                } else {
                    explained.verdict = api::TraceVerdict::Delivered;
                    format!("to {target} in the same subnet, {how}")
                };
                let (port_id, device) = port_of(&setup.ports, ifindex);
                explained.next_hop = api::NextHop {
                    kind: "port".into(),
                    port_id,
                    device,
                    ifindex,
                    delivery: delivery_word(redirect).into(),
                    routed,
                    router_id: if routed {
                        from.and_then(|s| s.router.clone()).unwrap_or_default()
                    } else {
                        String::new()
                    },
                    remote_host: String::new(),
                };
            }
            Verdict::Encapsulated {
                host,
                vni,
                underlay,
                next_hop,
                routed,
            } => {
                explained.verdict = api::TraceVerdict::Encapsulated;
                let device = named(&setup.underlay_device, underlay);
                let how = match next_hop {
                    NextHop::Neighbor => {
                        "the kernel resolves the next hop and its MAC (route and neighbour table)"
                    }
                    NextHop::Mac => "outer MACs written by the datapath",
                    NextHop::VxlanDevice => "the kernel's VXLAN device writes the outer headers",
                };
                explained.explanation = format!(
                    "{} lives on host {host}: {}encapsulated in VXLAN (VNI {vni}) to it, out of \
                     the underlay device {device}; {how}",
                    probe.dst_ip,
                    routed_words(setup, from, to, routed),
                );
                explained.next_hop = tunnel_hop(&device, underlay, host, routed, from);
                explained.encapsulation =
                    frames::encapsulation(&outcome.result.output).map(|mut outer| {
                        outer.next_hop = next_hop_word(next_hop).into();
                        if next_hop == NextHop::Neighbor {
                            // Written by the kernel once the frame leaves.
                            outer.outer_src_mac.clear();
                            outer.outer_dst_mac.clear();
                        }
                        outer.underlay_device = device;
                        outer.underlay_ifindex = underlay;
                        outer
                    });
            }
            Verdict::Fragmented {
                host,
                device: ifindex,
                routed,
            } => {
                explained.verdict = api::TraceVerdict::Encapsulated;
                let device = named(&setup.vxlan_device, ifindex);
                explained.explanation = format!(
                    "{} lives on host {host}: {}the packet is bigger than the port MTU ({}) and \
                     may be fragmented (DF clear), so it goes through the VXLAN device {device}: \
                     the kernel encapsulates it (VNI {}) and fragments the outer packet, and \
                     host {host} reassembles it before delivery",
                    probe.dst_ip,
                    routed_words(setup, from, to, routed),
                    setup.port_mtu,
                    setup.vni,
                );
                explained.next_hop = tunnel_hop(&device, ifindex, host, routed, from);
            }
            Verdict::Answered(answer) => {
                explained.verdict = api::TraceVerdict::Answered;
                explained.next_hop = in_place();
                match answer {
                    Answer::Arp => {
                        explained.answer = "arp-reply";
                        explained.explanation = match frames::arp_sender(&outcome.result.output) {
                            Some((mac, ip)) => format!(
                                "in place: ARP reply, {ip} is at {mac}{}",
                                setup.owner_words(ip)
                            ),
                            None => "in place: ARP reply".into(),
                        };
                    }
                    Answer::EchoReply => {
                        explained.answer = "echo-reply";
                        let of = from.map(|s| format!(" of {}", s.cidr)).unwrap_or_default();
                        explained.explanation = format!(
                            "in place: the gateway {}{of} answers the ping with an echo reply",
                            probe.dst_ip
                        );
                    }
                    Answer::TimeExceeded => {
                        explained.answer = "time-exceeded";
                        let gateway = gateway_words(from);
                        explained.explanation = format!(
                            "in place: the TTL ran out at {}, so the packet is dropped (counted \
                             as {}) and the gateway{gateway} sends ICMP time exceeded back",
                            setup.router_words(from, to),
                            DropReason::TtlExceeded.name()
                        );
                        explained.next_hop.router_id =
                            from.and_then(|s| s.router.clone()).unwrap_or_default();
                    }
                    Answer::FragNeeded => {
                        explained.answer = "frag-needed";
                        let gateway = gateway_words(from);
                        let next_hop = match setup.endpoint(probe.dst_ip).map(|e| e.location) {
                            Some(Location::Remote { host }) => {
                                format!("the tunnel to host {host}")
                            }
                            _ => setup.router_words(from, to),
                        };
                        explained.explanation = format!(
                            "in place: the packet is bigger than the port MTU ({mtu}) of \
                             {next_hop} and may not be fragmented (DF), so it is dropped \
                             (counted as {}) and the gateway{gateway} sends ICMP fragmentation \
                             needed back with next-hop MTU {mtu}: the VM's path MTU discovery \
                             then sends smaller packets (at most {burst} such answers at once, \
                             then {rate} a second, per port; a trace spends none)",
                            DropReason::FragNeeded.name(),
                            mtu = setup.port_mtu,
                            burst = alcor_ebpf_common::ICMP_ERRORS_BURST,
                            rate = 1_000_000_000 / alcor_ebpf_common::ICMP_ERROR_INTERVAL_NS,
                        );
                    }
                }
            }
        }
        explained
    }

    pub fn reply(setup: &Setup, probe: &Probe, outcome: &Outcome) -> api::TraceReply {
        let explained = explain(setup, probe, outcome);
        let output = &outcome.result.output;
        api::TraceReply {
            port_id: setup.port_id.clone(),
            device: device_name(&setup.port_id),
            ifindex: setup.ifindex,
            mac_address: setup.mac.to_string(),
            ip_addresses: setup.ips.iter().map(ToString::to_string).collect(),
            packet: probe.words(),
            dst_mac_source: outcome.resolution.words(),
            verdict: explained.verdict as i32,
            drop_reason: explained
                .drop_reason
                .map(|r| r.name().to_string())
                .unwrap_or_default(),
            drop_description: explained
                .drop_reason
                .map(|r| r.description().to_string())
                .unwrap_or_default(),
            answer: explained.answer.into(),
            explanation: explained.explanation,
            next_hop: Some(explained.next_hop),
            input: Some(frames::headers(&outcome.input)),
            output: Some(frames::headers(output)),
            input_frame: outcome.input.clone(),
            output_frame: output.clone(),
            output_hexdump: super::hexdump(output),
            encapsulation: explained.encapsulation,
        }
    }
}

/// Building the frames a VM sends, and reading their headers back.
mod frames {
    use std::net::Ipv4Addr;

    use alcor_proto::control as api;

    use crate::model::Mac;

    pub const BROADCAST: Mac = Mac([0xff; 6]);
    const ETHERTYPE_IPV4: u16 = 0x0800;
    const ETHERTYPE_ARP: u16 = 0x0806;
    pub const IPPROTO_ICMP: u8 = 1;
    pub const IPPROTO_TCP: u8 = 6;
    pub const IPPROTO_UDP: u8 = 17;
    const ETH_LEN: usize = 14;

    fn ethernet(dst: Mac, src: Mac, ethertype: u16) -> Vec<u8> {
        let mut frame = Vec::with_capacity(128);
        frame.extend_from_slice(&dst.octets());
        frame.extend_from_slice(&src.octets());
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame
    }

    /// An ARP request from `sender` for `target` (42 bytes, unpadded, as a
    /// VM's kernel hands it to its device).
    pub fn arp_request(
        sender_mac: Mac,
        dst_mac: Mac,
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
    ) -> Vec<u8> {
        let mut frame = ethernet(dst_mac, sender_mac, ETHERTYPE_ARP);
        frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        frame.extend_from_slice(&sender_mac.octets());
        frame.extend_from_slice(&sender_ip.octets());
        frame.extend_from_slice(&[0; 6]);
        frame.extend_from_slice(&target_ip.octets());
        frame
    }

    /// The Internet checksum (RFC 1071) of `data`, starting from `sum`.
    pub fn checksum(data: &[u8], mut sum: u32) -> u16 {
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// The TCP/UDP pseudo-header's sum.
    pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u32 {
        let words = src
            .octets()
            .into_iter()
            .chain(dst.octets())
            .collect::<Vec<_>>();
        let addresses: u32 = words
            .chunks(2)
            .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
            .sum();
        addresses + u32::from(protocol) + len as u32
    }

    /// The addresses of an IPv4 packet.
    #[derive(Clone, Copy)]
    pub struct Addresses {
        pub src: Ipv4Addr,
        pub dst: Ipv4Addr,
    }

    /// The IPv4 header fields a probe chooses.
    #[derive(Clone, Copy)]
    pub struct Ipv4Fields {
        pub ttl: u8,
        pub protocol: u8,
        pub dont_fragment: bool,
    }

    /// An IPv4 packet in an Ethernet frame: no options, checksum computed.
    pub fn ipv4(
        src_mac: Mac,
        dst_mac: Mac,
        Addresses { src, dst }: Addresses,
        fields: Ipv4Fields,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut frame = ethernet(dst_mac, src_mac, ETHERTYPE_IPV4);
        let total = (20 + payload.len()) as u16;
        let mut header = [0u8; 20];
        header[0] = 0x45;
        header[2..4].copy_from_slice(&total.to_be_bytes());
        header[4..6].copy_from_slice(&0x7a11u16.to_be_bytes());
        let flags: u16 = if fields.dont_fragment { 0x4000 } else { 0 };
        header[6..8].copy_from_slice(&flags.to_be_bytes());
        header[8] = fields.ttl;
        header[9] = fields.protocol;
        header[12..16].copy_from_slice(&src.octets());
        header[16..20].copy_from_slice(&dst.octets());
        let check = checksum(&header, 0);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        frame.extend_from_slice(&header);
        frame.extend_from_slice(payload);
        frame
    }

    /// The shortest header of IP protocol `protocol` a probe sends.
    pub fn least_l4_len(protocol: u8) -> usize {
        match protocol {
            IPPROTO_TCP => 20,
            _ => 8,
        }
    }

    /// `header` followed by data up to `len` bytes in all (none if
    /// shorter), a counting pattern as ping's.
    fn padded(mut header: Vec<u8>, len: usize) -> Vec<u8> {
        let data = len.saturating_sub(header.len());
        header.extend((0..data).map(|n| 0x10u8.wrapping_add(n as u8)));
        header
    }

    /// An ICMP echo request as `ping` sends it: 56 bytes of data, or `len`
    /// bytes in all.
    pub fn icmp_echo(len: Option<usize>) -> Vec<u8> {
        let mut icmp = padded(vec![8, 0, 0, 0, 0xa1, 0xc0, 0, 1], len.unwrap_or(64));
        let check = checksum(&icmp, 0);
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        icmp
    }

    /// A TCP SYN without options, with data up to `len` bytes in all.
    pub fn tcp_syn(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        len: Option<usize>,
    ) -> Vec<u8> {
        let mut tcp = padded(vec![0u8; 20], len.unwrap_or(20));
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let check = checksum(&tcp, pseudo_header(src, dst, IPPROTO_TCP, tcp.len()));
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
        tcp
    }

    /// A UDP datagram with a few bytes of data, or `len` bytes in all.
    pub fn udp(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        len: Option<usize>,
    ) -> Vec<u8> {
        let data = b"alcor trace";
        let mut udp = Vec::with_capacity(8 + data.len());
        udp.extend_from_slice(&sport.to_be_bytes());
        udp.extend_from_slice(&dport.to_be_bytes());
        udp.extend_from_slice(&[0; 4]);
        udp.extend_from_slice(data);
        let mut udp = match len {
            Some(len) => {
                udp.truncate(8);
                padded(udp, len)
            }
            None => udp,
        };
        let len = udp.len();
        udp[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        let check = match checksum(&udp, pseudo_header(src, dst, IPPROTO_UDP, len)) {
            // 0 means "no checksum" in UDP: all ones stands for it.
            0 => 0xffff,
            check => check,
        };
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        udp
    }

    fn mac_at(frame: &[u8], offset: usize) -> Option<Mac> {
        Some(Mac(frame.get(offset..offset + 6)?.try_into().ok()?))
    }

    fn ip_at(frame: &[u8], offset: usize) -> Option<Ipv4Addr> {
        let octets: [u8; 4] = frame.get(offset..offset + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(octets))
    }

    fn u16_at(frame: &[u8], offset: usize) -> Option<u16> {
        Some(u16::from_be_bytes(
            frame.get(offset..offset + 2)?.try_into().ok()?,
        ))
    }

    /// The outer headers of a VXLAN frame (outer Ethernet, IPv4, UDP,
    /// VXLAN) and its inner frame's; `None` if it is not one.
    pub fn encapsulation(frame: &[u8]) -> Option<api::Encapsulation> {
        if u16_at(frame, 12)? != ETHERTYPE_IPV4 {
            return None;
        }
        let ip = frame.get(ETH_LEN..)?;
        let hlen = usize::from(*ip.first()? & 0xf) * 4;
        if hlen < 20 || *ip.get(9)? != IPPROTO_UDP {
            return None;
        }
        let udp = ETH_LEN + hlen;
        let vxlan = udp + 8;
        let vni = frame.get(vxlan + 4..vxlan + 7)?;
        Some(api::Encapsulation {
            outer_src_ip: ip_at(ip, 12)?.to_string(),
            outer_dst_ip: ip_at(ip, 16)?.to_string(),
            udp_src_port: u32::from(u16_at(frame, udp)?),
            udp_dst_port: u32::from(u16_at(frame, udp + 2)?),
            vni: u32::from_be_bytes([0, vni[0], vni[1], vni[2]]),
            outer_ttl: u32::from(ip[8]),
            outer_src_mac: mac_at(frame, 6)?.to_string(),
            outer_dst_mac: mac_at(frame, 0)?.to_string(),
            inner: Some(headers(frame.get(vxlan + 8..)?)),
            ..Default::default()
        })
    }

    /// The sender (MAC, address) of an ARP frame.
    pub fn arp_sender(frame: &[u8]) -> Option<(Mac, Ipv4Addr)> {
        if u16_at(frame, 12)? != ETHERTYPE_ARP {
            return None;
        }
        Some((mac_at(frame, ETH_LEN + 8)?, ip_at(frame, ETH_LEN + 14)?))
    }

    /// The headers of `frame`, as far as it has them.
    pub fn headers(frame: &[u8]) -> api::FrameHeaders {
        let word = |mac: Option<Mac>| mac.map(|m| m.to_string()).unwrap_or_default();
        let ethertype = u16_at(frame, 12);
        let mut headers = api::FrameHeaders {
            eth_dst: word(mac_at(frame, 0)),
            eth_src: word(mac_at(frame, 6)),
            ethertype: match ethertype {
                Some(ETHERTYPE_IPV4) => "IPv4".into(),
                Some(ETHERTYPE_ARP) => "ARP".into(),
                Some(other) => format!("0x{other:04x}"),
                None => String::new(),
            },
            length: frame.len() as u32,
            ..Default::default()
        };
        match ethertype {
            Some(ETHERTYPE_ARP) => headers.arp = arp(frame),
            Some(ETHERTYPE_IPV4) => headers.ipv4 = ipv4_header(frame),
            _ => {}
        }
        headers
    }

    fn arp(frame: &[u8]) -> Option<api::ArpHeader> {
        let ip = |offset| ip_at(frame, ETH_LEN + offset).map(|ip| ip.to_string());
        let mac = |offset| mac_at(frame, ETH_LEN + offset).map(|mac| mac.to_string());
        Some(api::ArpHeader {
            operation: match u16_at(frame, ETH_LEN + 6)? {
                1 => "request".into(),
                2 => "reply".into(),
                other => other.to_string(),
            },
            sender_mac: mac(8)?,
            sender_ip: ip(14)?,
            target_mac: mac(18)?,
            target_ip: ip(24)?,
        })
    }

    fn ipv4_header(frame: &[u8]) -> Option<api::Ipv4Header> {
        let ip = frame.get(ETH_LEN..)?;
        let hlen = usize::from(*ip.first()? & 0xf) * 4;
        let header = ip.get(..hlen.max(20))?;
        let protocol = header[9];
        let mut view = api::Ipv4Header {
            src: ip_at(header, 12)?.to_string(),
            dst: ip_at(header, 16)?.to_string(),
            ttl: u32::from(header[8]),
            protocol: match protocol {
                IPPROTO_ICMP => "icmp".into(),
                IPPROTO_TCP => "tcp".into(),
                IPPROTO_UDP => "udp".into(),
                other => other.to_string(),
            },
            checksum: u32::from(u16_at(header, 10)?),
            checksum_valid: checksum(header, 0) == 0,
            total_length: u32::from(u16_at(header, 2)?),
            ..Default::default()
        };
        let first_fragment = u16_at(header, 6)? & 0x1fff == 0;
        let l4 = ip
            .get(hlen..)
            .filter(|_| first_fragment)
            .unwrap_or_default();
        match protocol {
            IPPROTO_ICMP if l4.len() >= 2 => {
                view.transport = match (l4[0], l4[1]) {
                    (0, 0) => "echo reply".into(),
                    (8, 0) => "echo request".into(),
                    (11, 0) => "time exceeded".into(),
                    (3, code) => format!("destination unreachable (code {code})"),
                    (kind, code) => format!("type {kind} code {code}"),
                };
            }
            IPPROTO_TCP | IPPROTO_UDP if l4.len() >= 4 => {
                let (sport, dport) = (u16_at(l4, 0)?, u16_at(l4, 2)?);
                view.src_port = u32::from(sport);
                view.dst_port = u32::from(dport);
                let ports = format!("{sport} -> {dport}");
                view.transport = match l4.get(13) {
                    Some(&flags) if protocol == IPPROTO_TCP => {
                        let names: Vec<&str> = [
                            (0x02, "SYN"),
                            (0x10, "ACK"),
                            (0x01, "FIN"),
                            (0x04, "RST"),
                            (0x08, "PSH"),
                        ]
                        .into_iter()
                        .filter(|(bit, _)| flags & bit != 0)
                        .map(|(_, name)| name)
                        .collect();
                        format!("{} {ports}", names.join("+"))
                            .trim_start()
                            .to_string()
                    }
                    _ => ports,
                };
            }
            _ => {}
        }
        Some(view)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use alcor_proto::control as api;

    use super::{
        frames, hexdump,
        trace::{Outcome, Probe, Protocol, Resolution, Setup, drop_words, reply},
    };
    use crate::{
        datapath::{
            DropReason, EndpointSpec, Location, NextHop, Redirect, SubnetSpec, TraceResult, Verdict,
        },
        model::{AddressPair, GatewayAddress, Mac, Vni},
    };

    #[test]
    fn a_datapath_error_reads_with_its_causes() {
        // A map update refused under load must say why (the errno), not
        // only which map.
        let error = crate::datapath::DatapathError::Map {
            name: "PORT_COUNTERS",
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::ENOMEM),
            }),
        };
        let text = super::chain(&error);
        assert!(
            text.starts_with("map PORT_COUNTERS: `bpf_map_update_elem` failed: ")
                && text.contains("os error 12"),
            "{text}"
        );
    }

    fn mac(text: &str) -> Mac {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    /// Port web-1 (10.0.1.10) in 10.0.1.0/24; 10.0.2.0/24 on the same
    /// router r1 with db-1 (10.0.2.20); 10.0.3.0/24 on no router.
    fn setup() -> Setup {
        let vni = Vni::try_from(100).unwrap();
        let subnet =
            |cidr: &str, gateway: &str, gateway_mac: &str, router: Option<&str>| SubnetSpec {
                vni,
                cidr: cidr.parse().unwrap(),
                gateway: Some(GatewayAddress {
                    ip: ip(gateway),
                    mac: mac(gateway_mac),
                }),
                router: router.map(Into::into),
            };
        let local = |ifindex| Location::Local {
            ifindex,
            redirect: Redirect::Peer,
        };
        Setup {
            port_id: "web-1".into(),
            ifindex: 7,
            mac: mac("fa:16:3e:00:00:0a"),
            ips: vec![ip("10.0.1.10")],
            pairs: vec![],
            vni: 100,
            subnets: vec![
                subnet("10.0.1.0/24", "10.0.1.1", "fa:16:3e:ff:ff:01", Some("r1")),
                subnet("10.0.2.0/24", "10.0.2.1", "fa:16:3e:ff:ff:02", Some("r1")),
                subnet("10.0.3.0/24", "10.0.3.1", "fa:16:3e:ff:ff:03", None),
            ],
            endpoints: vec![
                EndpointSpec {
                    vni,
                    ip: ip("10.0.1.10"),
                    mac: mac("fa:16:3e:00:00:0a"),
                    location: local(7),
                },
                EndpointSpec {
                    vni,
                    ip: ip("10.0.2.20"),
                    mac: mac("fa:16:3e:00:00:14"),
                    location: local(8),
                },
            ],
            ports: [(7, "web-1".to_string()), (8, "db-1".to_string())].into(),
            underlay_device: String::new(),
            vxlan_device: String::new(),
            port_mtu: 1450,
        }
    }

    fn request(protocol: api::TraceProtocol, dst: &str) -> api::TraceRequest {
        api::TraceRequest {
            port_id: "web-1".into(),
            protocol: protocol as i32,
            dst_ip: dst.into(),
            ..Default::default()
        }
    }

    fn probe(dst: &str) -> Probe {
        Probe::new(&setup(), &request(api::TraceProtocol::Icmp, dst)).unwrap()
    }

    #[test]
    fn a_probe_defaults_to_the_ports_address_and_mac() {
        let probe = probe("10.0.2.20");
        assert_eq!(probe.protocol, Protocol::Icmp);
        assert_eq!(probe.src_ip, ip("10.0.1.10"));
        assert_eq!(probe.src_mac, mac("fa:16:3e:00:00:0a"));
        assert_eq!(probe.dst_mac, None);
        assert_eq!(probe.ttl, 64);
        assert_eq!(probe.words(), "ICMP echo 10.0.1.10 -> 10.0.2.20");

        let mut tcp = request(api::TraceProtocol::Tcp, "10.0.2.20");
        tcp.dst_port = 443;
        let tcp = Probe::new(&setup(), &tcp).unwrap();
        assert_eq!(tcp.words(), "TCP SYN 10.0.1.10:49152 -> 10.0.2.20:443");
    }

    #[test]
    fn a_probe_refuses_what_cannot_be_sent() {
        let setup = setup();
        let error = |request| Probe::new(&setup, &request).unwrap_err();
        assert_eq!(
            error(request(api::TraceProtocol::Udp, "10.0.2.20")),
            "a UDP trace needs a destination port"
        );
        assert!(error(request(api::TraceProtocol::Icmp, "10.0.2")).contains("invalid destination"));
        let mut ttl = request(api::TraceProtocol::Icmp, "10.0.2.20");
        ttl.ttl = 256;
        assert_eq!(error(ttl), "invalid TTL 256: 1 to 255");
        let mut mac = request(api::TraceProtocol::Icmp, "10.0.2.20");
        mac.src_mac = "fa:16".into();
        assert!(error(mac).starts_with("invalid source MAC"));
    }

    #[test]
    fn frames_have_right_checksums_and_read_back() {
        let (src, dst) = (ip("10.0.1.10"), ip("10.0.2.20"));
        for (protocol, payload, words) in [
            (
                frames::IPPROTO_ICMP,
                frames::icmp_echo(None),
                "echo request",
            ),
            (
                frames::IPPROTO_ICMP,
                frames::icmp_echo(Some(1480)),
                "echo request",
            ),
            (
                frames::IPPROTO_TCP,
                frames::tcp_syn(src, dst, 49152, 80, None),
                "SYN 49152 -> 80",
            ),
            (
                frames::IPPROTO_TCP,
                frames::tcp_syn(src, dst, 49152, 80, Some(1480)),
                "SYN 49152 -> 80",
            ),
            (
                frames::IPPROTO_UDP,
                frames::udp(src, dst, 49152, 53, None),
                "49152 -> 53",
            ),
            (
                frames::IPPROTO_UDP,
                frames::udp(src, dst, 49152, 53, Some(1480)),
                "49152 -> 53",
            ),
        ] {
            let frame = frames::ipv4(
                mac("fa:16:3e:00:00:0a"),
                mac("fa:16:3e:ff:ff:01"),
                frames::Addresses { src, dst },
                frames::Ipv4Fields {
                    ttl: 64,
                    protocol,
                    dont_fragment: true,
                },
                &payload,
            );
            let headers = frames::headers(&frame);
            assert_eq!(headers.eth_src, "fa:16:3e:00:00:0a");
            assert_eq!(headers.eth_dst, "fa:16:3e:ff:ff:01");
            assert_eq!(headers.ethertype, "IPv4");
            let ipv4 = headers.ipv4.unwrap();
            assert!(ipv4.checksum_valid, "{ipv4:?}");
            assert_eq!(
                (ipv4.src.as_str(), ipv4.dst.as_str(), ipv4.ttl),
                ("10.0.1.10", "10.0.2.20", 64)
            );
            assert_eq!(ipv4.transport, words);
            assert_eq!(ipv4.total_length as usize, frame.len() - 14);
        }
        // The transport checksums: the sum over what they cover is all ones.
        let tcp = frames::tcp_syn(src, dst, 49152, 80, None);
        let udp = frames::udp(src, dst, 49152, 53, None);
        for (protocol, segment) in [(frames::IPPROTO_TCP, &tcp), (frames::IPPROTO_UDP, &udp)] {
            let pseudo = frames::pseudo_header(src, dst, protocol, segment.len());
            assert_eq!(frames::checksum(segment, pseudo), 0, "protocol {protocol}");
        }
        assert_eq!(frames::checksum(&frames::icmp_echo(None), 0), 0);
        let icmp = frames::icmp_echo(None);
        assert_eq!(icmp.len(), 64, "as ping sends it: 8 + 56 bytes");
        let frame = frames::ipv4(
            Mac([2; 6]),
            Mac([4; 6]),
            frames::Addresses { src, dst },
            frames::Ipv4Fields {
                ttl: 64,
                protocol: 1,
                dont_fragment: true,
            },
            &icmp,
        );
        assert_eq!(frame.len(), 98);
    }

    #[test]
    fn an_arp_request_reads_back() {
        let frame = frames::arp_request(
            mac("fa:16:3e:00:00:0a"),
            frames::BROADCAST,
            ip("10.0.1.10"),
            ip("10.0.1.1"),
        );
        assert_eq!(frame.len(), 42);
        let arp = frames::headers(&frame).arp.unwrap();
        assert_eq!(arp.operation, "request");
        assert_eq!(
            (arp.sender_ip.as_str(), arp.target_ip.as_str()),
            ("10.0.1.10", "10.0.1.1")
        );
        assert_eq!(
            frames::arp_sender(&frame),
            Some((mac("fa:16:3e:00:00:0a"), ip("10.0.1.10")))
        );
    }

    #[test]
    fn a_short_frame_reads_as_far_as_it_goes() {
        let headers = frames::headers(&[0xff; 20]);
        assert_eq!(headers.eth_dst, "ff:ff:ff:ff:ff:ff");
        assert_eq!(headers.ethertype, "0xffff");
        assert_eq!(headers.ipv4, None);
        assert_eq!(frames::headers(&[1, 2]).eth_dst, "");
    }

    #[test]
    fn hexdump_shows_offsets_hex_and_text() {
        let dump = hexdump(b"0123456789abcdefXY");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(
            lines[0],
            "0000  30 31 32 33 34 35 36 37  38 39 61 62 63 64 65 66  |0123456789abcdef|"
        );
        assert_eq!(lines[1], format!("0010  58 59{}|XY|", " ".repeat(45)));
        assert_eq!(lines[0].find('|'), lines[1].find('|'), "the text lines up");
    }

    #[test]
    fn a_spoofed_source_is_explained_with_the_ports_addresses() {
        let mut setup = setup();
        let mut probe = probe("10.0.2.20");
        probe.src_ip = ip("10.9.9.9");
        let words = |setup: &Setup, probe: &Probe, reason| {
            drop_words(setup, probe, &Resolution::Given, reason)
        };
        assert_eq!(
            words(&setup, &probe, DropReason::SpoofedIp),
            "the source address 10.9.9.9 is not the port's (10.0.1.10) nor one of its \
             allowed address pairs"
        );
        setup.pairs.push(AddressPair {
            ip: "10.0.1.100/32".parse().unwrap(),
            mac: mac("fa:16:3e:00:00:64"),
        });
        assert_eq!(
            words(&setup, &probe, DropReason::SpoofedIp),
            "the source address 10.9.9.9 is not the port's (10.0.1.10) nor one of its \
             allowed address pairs (10.0.1.100/32 with fa:16:3e:00:00:64)"
        );
        probe.src_mac = mac("fa:16:3e:00:00:99");
        assert_eq!(
            words(&setup, &probe, DropReason::SpoofedMac),
            "the source MAC fa:16:3e:00:00:99 is not the port's (fa:16:3e:00:00:0a) nor \
             that of one of its allowed address pairs (fa:16:3e:00:00:64)"
        );
    }

    #[test]
    fn destinations_are_explained_with_subnets_and_routers() {
        let setup = setup();
        let words = |dst: &str, reason| drop_words(&setup, &probe(dst), &Resolution::Given, reason);
        assert_eq!(
            words("10.0.2.99", DropReason::UnknownDestination),
            "no VM or neighbor has the address 10.0.2.99 in the VPC (VNI 100)"
        );
        assert_eq!(
            words("10.0.3.30", DropReason::NotRouted),
            "10.0.3.30 is in subnet 10.0.3.0/24, and no router connects it to the sender's \
             subnet 10.0.1.0/24 (10.0.1.0/24 is on router r1, 10.0.3.0/24 on no router)"
        );
        assert_eq!(
            words("10.0.1.1", DropReason::ToGateway),
            "10.0.1.1 is the gateway of 10.0.1.0/24, which answers ping (ICMP echo) only, not \
             this"
        );
        let unanswered = Resolution::Unanswered {
            ip: ip("10.0.1.99"),
            why: "no VM".into(),
        };
        assert_eq!(
            unanswered.words(),
            "broadcast: the VM's ARP request for 10.0.1.99 gets no reply"
        );
        let broadcast = drop_words(
            &setup,
            &probe("10.0.1.99"),
            &unanswered,
            DropReason::Broadcast,
        );
        assert!(
            broadcast.starts_with("the VM's ARP request for 10.0.1.99 gets no reply (no VM), so"),
            "{broadcast}"
        );
        let arp = Probe {
            protocol: Protocol::Arp,
            ..probe("10.0.1.99")
        };
        assert_eq!(
            drop_words(
                &setup,
                &arp,
                &Resolution::Broadcast,
                DropReason::ArpUnknownTarget
            ),
            "no VM or neighbor has 10.0.1.99 in the sender's subnet 10.0.1.0/24 and it is not \
             the gateway (10.0.1.1): no ARP reply is sent, and nothing is flooded"
        );
    }

    #[test]
    fn every_drop_reason_has_words() {
        let setup = setup();
        let probe = probe("10.0.2.20");
        for reason in DropReason::ALL {
            let words = drop_words(&setup, &probe, &Resolution::Given, reason);
            assert!(
                !words.is_empty() && !words.ends_with('.'),
                "{reason:?}: {words}"
            );
        }
    }

    /// `inner` in VXLAN (VNI 100) from 198.18.0.1 to 198.18.0.2, UDP 49153
    /// -> 4789, outer MACs 02:..:01 -> 02:..:02.
    fn vxlan_frame(inner: &[u8]) -> Vec<u8> {
        // No UDP checksum; VXLAN with the VNI flag.
        let mut udp = vec![0xc0, 0x01, 0x12, 0xb5, 0, 0, 0, 0];
        udp.extend([0x08, 0, 0, 0, 0, 0, 100, 0]);
        udp.extend(inner);
        frames::ipv4(
            mac("02:00:00:00:00:01"),
            mac("02:00:00:00:00:02"),
            frames::Addresses {
                src: ip("198.18.0.1"),
                dst: ip("198.18.0.2"),
            },
            frames::Ipv4Fields {
                ttl: 64,
                protocol: frames::IPPROTO_UDP,
                dont_fragment: true,
            },
            &udp,
        )
    }

    fn echo(src_mac: &str, dst_mac: &str, src: &str, dst: &str, ttl: u8) -> Vec<u8> {
        frames::ipv4(
            mac(src_mac),
            mac(dst_mac),
            frames::Addresses {
                src: ip(src),
                dst: ip(dst),
            },
            frames::Ipv4Fields {
                ttl,
                protocol: frames::IPPROTO_ICMP,
                dont_fragment: true,
            },
            &frames::icmp_echo(None),
        )
    }

    #[test]
    fn encapsulated_frames_read_back_outer_and_inner_headers() {
        let inner = echo(
            "fa:16:3e:00:00:0a",
            "fa:16:3e:00:00:14",
            "10.0.1.10",
            "10.0.1.20",
            64,
        );
        let frame = vxlan_frame(&inner);
        let outer = frames::encapsulation(&frame).unwrap();
        assert_eq!(
            (outer.outer_src_ip.as_str(), outer.outer_dst_ip.as_str()),
            ("198.18.0.1", "198.18.0.2")
        );
        assert_eq!(
            (
                outer.udp_src_port,
                outer.udp_dst_port,
                outer.vni,
                outer.outer_ttl
            ),
            (49153, 4789, 100, 64)
        );
        assert_eq!(outer.outer_src_mac, "02:00:00:00:00:01");
        let inner_headers = outer.inner.unwrap();
        assert_eq!(inner_headers.eth_dst, "fa:16:3e:00:00:14");
        assert_eq!(inner_headers.ipv4.unwrap().dst, "10.0.1.20");
        assert!(frames::encapsulation(&inner).is_none(), "ICMP is not VXLAN");
    }

    #[test]
    fn a_routed_encapsulation_is_explained_with_its_outer_headers() {
        let mut setup = setup();
        setup.underlay_device = "underlay0".into();
        let probe = probe("10.0.2.30");
        let routed = echo(
            "fa:16:3e:ff:ff:02",
            "fa:16:3e:00:00:1e",
            "10.0.1.10",
            "10.0.2.30",
            63,
        );
        let outcome = Outcome {
            resolution: Resolution::Given,
            input: echo(
                "fa:16:3e:00:00:0a",
                "fa:16:3e:ff:ff:01",
                "10.0.1.10",
                "10.0.2.30",
                64,
            ),
            result: TraceResult {
                verdict: Verdict::Encapsulated {
                    host: ip("198.18.0.2"),
                    vni: 100,
                    underlay: 2,
                    next_hop: NextHop::Mac,
                    routed: true,
                },
                output: vxlan_frame(&routed),
            },
        };
        let reply = reply(&setup, &probe, &outcome);
        assert_eq!(reply.verdict, api::TraceVerdict::Encapsulated as i32);
        assert_eq!(
            reply.explanation,
            "10.0.2.30 lives on host 198.18.0.2: routed via router r1 (10.0.1.0/24 -> \
             10.0.2.0/24), then encapsulated in VXLAN (VNI 100) to it, out of the underlay device \
             underlay0; outer MACs written by the datapath"
        );
        let next_hop = reply.next_hop.unwrap();
        assert_eq!(
            (next_hop.kind.as_str(), next_hop.remote_host.as_str()),
            ("tunnel", "198.18.0.2")
        );
        assert_eq!((next_hop.router_id.as_str(), next_hop.ifindex), ("r1", 2));
        let outer = reply.encapsulation.unwrap();
        assert_eq!(outer.next_hop, "mac");
        assert_eq!(outer.outer_dst_mac, "02:00:00:00:00:02");
        assert_eq!(outer.underlay_device, "underlay0");
        assert_eq!(outer.inner.unwrap().ipv4.unwrap().ttl, 63);
    }
}
