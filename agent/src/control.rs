//! The local control service behind `agentctl`: read-only views of the
//! desired state, of the ports' progress and of the datapath counters.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use alcor_proto::{
    control::{self as api, agent_control_server::AgentControl},
    schema,
};
use tonic::{Request, Response, Status};

use crate::{
    config::Config,
    datapath::Datapath,
    desired::{Entry, Resource, Table},
    dhcp::{
        self, Leases,
        counters::{ClientMessage, DropReason, ServerMessage},
    },
    engine::{AgentState, PortPhase, SharedState},
    model::*,
};

pub struct ControlService {
    state: SharedState,
    datapath: Arc<Mutex<Datapath>>,
    leases: Arc<Leases>,
    dhcp_counters: Arc<dhcp::Counters>,
    config: Config,
    port_mtu: u32,
    started: Instant,
}

impl ControlService {
    pub fn new(
        state: SharedState,
        datapath: Arc<Mutex<Datapath>>,
        leases: Arc<Leases>,
        dhcp_counters: Arc<dhcp::Counters>,
        config: Config,
        port_mtu: u32,
    ) -> Self {
        ControlService {
            state,
            datapath,
            leases,
            dhcp_counters,
            config,
            port_mtu,
            started: Instant::now(),
        }
    }

    fn read<T>(&self, view: impl FnOnce(&AgentState) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        view(&state)
    }
}

/// Entries sorted by id, for stable listings.
fn sorted<R: Resource>(table: &Table<R>) -> Vec<&Entry<R>> {
    let mut entries: Vec<(&String, &Entry<R>)> = table.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries.into_iter().map(|(_, entry)| entry).collect()
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
                    .config
                    .underlay_ip
                    .map(|ip| ip.to_string())
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
        Ok(Response::new(api::AgentStatus {
            ports_ready: phases(PortPhase::Ready),
            ports_pending: phases(PortPhase::Pending),
            ports_failed: phases(PortPhase::Failed),
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
                .map(|entry| api::Vpc {
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
                .map(|entry| {
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
                .map(|entry| port_view(state, entry, self.port_mtu))
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
                .map(|entry| {
                    let neighbor = &entry.spec;
                    api::Neighbor {
                        id: neighbor.id.clone(),
                        revision: entry.revision(),
                        vpc_id: neighbor.vpc_id.clone(),
                        name: neighbor.name.clone(),
                        mac_address: neighbor.mac.to_string(),
                        host_ip_address: neighbor.host_ip.to_string(),
                        fixed_ips: neighbor
                            .fixed_ips
                            .iter()
                            .map(|f| api::NeighborIp {
                                subnet_id: f.subnet_id.clone(),
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
                    .map(|entry| schema::$ty {
                        operation_type: entry.operation as i32,
                        configuration: Some(entry.config.clone()),
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
        let wanted = request.into_inner().port_id;
        let ports: Vec<(String, u32)> = self.read(|state| {
            let mut ports: Vec<(String, u32)> = state
                .ports
                .iter()
                .filter(|(id, status)| {
                    status.phase == PortPhase::Ready && (wanted.is_empty() || **id == wanted)
                })
                .map(|(id, status)| (id.clone(), status.ifindex))
                .collect();
            ports.sort_unstable();
            ports
        });
        if !wanted.is_empty() && ports.is_empty() {
            return Err(Status::not_found(format!("no ready port {wanted}")));
        }
        let datapath = self
            .datapath
            .lock()
            .map_err(|_| Status::internal("the datapath lock is poisoned"))?;
        let ports = ports
            .into_iter()
            .map(|(id, ifindex)| {
                let counters = datapath
                    .port_counters(ifindex)
                    .map_err(|e| Status::internal(format!("reading counters of {id}: {e}")))?;
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
}
