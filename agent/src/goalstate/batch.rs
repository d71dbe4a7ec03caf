//! One goal-state message, V1 or V2, as operations grouped by resource kind.

use alcor_proto::schema::{self, GoalState, GoalStateV2};

use crate::{desired::Resource, model::*};

/// One resource state of a message.
#[derive(Debug)]
pub struct Op<C> {
    /// The key of a V2 map entry, which must name the configuration's id.
    pub map_key: Option<String>,
    /// The wire value of `OperationType`, checked when applied.
    pub operation: i32,
    pub config: Option<C>,
}

#[derive(Debug, Default)]
pub struct Batch {
    pub vpcs: Vec<Op<schema::VpcConfiguration>>,
    pub subnets: Vec<Op<schema::SubnetConfiguration>>,
    pub ports: Vec<Op<schema::PortConfiguration>>,
    pub neighbors: Vec<Op<schema::NeighborConfiguration>>,
    pub security_groups: Vec<Op<schema::SecurityGroupConfiguration>>,
    pub dhcp: Vec<Op<schema::DhcpConfiguration>>,
    pub routers: Vec<Op<schema::RouterConfiguration>>,
    pub gateways: Vec<Op<schema::GatewayConfiguration>>,
}

impl Batch {
    /// How many resource states the message has.
    pub fn len(&self) -> usize {
        self.vpcs.len()
            + self.subnets.len()
            + self.ports.len()
            + self.neighbors.len()
            + self.security_groups.len()
            + self.dhcp.len()
            + self.routers.len()
            + self.gateways.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this message may be applied in one transaction with the
    /// messages before it: not if it has ports, whose plumbing can fail one
    /// by one (see [`Engine::apply_group`](crate::engine::Engine::apply_group)).
    pub fn groups_with_previous(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Where a resource kind's operations are in a [`Batch`].
pub trait Batched: Resource {
    fn ops(batch: &mut Batch) -> &mut Vec<Op<Self::Config>>;
}

macro_rules! batched {
    ($model:ty, $field:ident) => {
        impl Batched for $model {
            fn ops(batch: &mut Batch) -> &mut Vec<Op<Self::Config>> {
                &mut batch.$field
            }
        }
    };
}

batched!(Vpc, vpcs);
batched!(Subnet, subnets);
batched!(Port, ports);
batched!(Neighbor, neighbors);
batched!(SecurityGroup, security_groups);
batched!(DhcpEntry, dhcp);
batched!(Router, routers);
batched!(Gateway, gateways);

macro_rules! ops_from_list {
    ($states:expr) => {
        $states
            .into_iter()
            .map(|state| Op {
                map_key: None,
                operation: state.operation_type,
                config: state.configuration,
            })
            .collect()
    };
}

macro_rules! ops_from_map {
    ($states:expr) => {{
        // Map order is arbitrary on the wire; sort for a stable reply order.
        let mut states: Vec<_> = $states.into_iter().collect();
        states.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        states
            .into_iter()
            .map(|(key, state)| Op {
                map_key: Some(key),
                operation: state.operation_type,
                config: state.configuration,
            })
            .collect()
    }};
}

impl From<GoalState> for Batch {
    fn from(message: GoalState) -> Self {
        Batch {
            vpcs: ops_from_list!(message.vpc_states),
            subnets: ops_from_list!(message.subnet_states),
            ports: ops_from_list!(message.port_states),
            neighbors: ops_from_list!(message.neighbor_states),
            security_groups: ops_from_list!(message.security_group_states),
            dhcp: ops_from_list!(message.dhcp_states),
            routers: ops_from_list!(message.router_states),
            gateways: ops_from_list!(message.gateway_states),
        }
    }
}

impl From<GoalStateV2> for Batch {
    fn from(message: GoalStateV2) -> Self {
        Batch {
            vpcs: ops_from_map!(message.vpc_states),
            subnets: ops_from_map!(message.subnet_states),
            ports: ops_from_map!(message.port_states),
            neighbors: ops_from_map!(message.neighbor_states),
            security_groups: ops_from_map!(message.security_group_states),
            dhcp: ops_from_map!(message.dhcp_states),
            routers: ops_from_map!(message.router_states),
            gateways: ops_from_map!(message.gateway_states),
        }
    }
}
