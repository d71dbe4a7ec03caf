//! The local control service behind `agentctl`: read-only views of the
//! desired state, of the ports' progress and of the datapath (its maps and
//! counters as the kernel holds them), and traces of packets through the
//! real port program.
//!
//! The handlers are here; [`views`] turns state into the API's types and
//! [`trace`] runs and explains a packet.

#[cfg(test)]
mod tests;
mod trace;
mod views;

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use alcor_proto::{
    control::{self as api, agent_control_server::AgentControl},
    schema,
};
use tonic::{Request, Response, Status};

use self::views::{
    count, delivery_word, dp_endpoint, neighbor_ids, next_hop_word, port_of, port_view,
    ports_by_ifindex, sorted, subnet_ids,
};
use crate::{
    config::Config,
    core::{
        model::*,
        spec::Location,
        status::{AgentState, PortPhase, SharedState},
    },
    datapath::{self as dp, DatapathError, DatapathReader},
    dhcp::{
        self, Leases,
        counters::{ClientMessage, DropReason, ServerMessage},
    },
    error::chain,
    registration::SharedLinkStatus,
    underlay::{self, Underlay},
};

pub struct ControlService {
    state: SharedState,
    datapath: Arc<DatapathReader>,
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
        datapath: DatapathReader,
        leases: Arc<Leases>,
        dhcp_counters: Arc<dhcp::Counters>,
        config: Config,
        port_mtu: u32,
        underlay: Option<Underlay>,
    ) -> Self {
        ControlService {
            state,
            datapath: Arc::new(datapath),
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
        read: impl FnOnce(&DatapathReader) -> Result<T, DatapathError>,
    ) -> Result<T, Status> {
        tokio::task::block_in_place(|| read(&self.datapath).map_err(datapath_status))
    }
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
        let ports = ports
            .into_iter()
            .map(|(id, ifindex)| {
                let counters = self.datapath.port_counters(ifindex).map_err(|e| {
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
        let entries = self.with_datapath(DatapathReader::ports)?;
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
            .with_datapath(DatapathReader::endpoints)?
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
            .with_datapath(DatapathReader::routes)?
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
            .with_datapath(DatapathReader::endpoints)?
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
                Some(underlay) => datapath.xdp_mode(underlay.ifindex),
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
            let outcome = trace::run(&datapath, &setup, &probe).map_err(datapath_status)?;
            drop(datapath);
            Ok::<_, Status>(trace::reply(&setup, &probe, &outcome))
        })
        .await
        .map_err(|e| Status::internal(format!("the trace failed: {e}")))??;
        Ok(Response::new(reply))
    }
}
