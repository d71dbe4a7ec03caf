//! One goal-state message, V1 or V2, as operations grouped by resource kind,
//! each checked as far as it can be on its own (see [`Check`]): that work is
//! done where messages are read and decoded, beside the engine.

use alcor_proto::schema::{GoalState, GoalStateV2, OperationType};
use prost::Message;

use super::validate::{Check, check_id};
use crate::model::*;

/// One resource state of a message.
pub struct Op<R: Check> {
    /// The id its status names: the V2 map key or the configuration's id.
    pub id: String,
    /// Whether it came in a V2 map, whose keys are unique.
    pub keyed: bool,
    /// The wire value of `OperationType`, as its status repeats it.
    pub operation: i32,
    pub revision: u32,
    /// What it asks for, or why it is invalid whatever the desired state.
    pub action: Result<Action<R>, String>,
}

pub enum Action<R: Check> {
    Upsert {
        operation: OperationType,
        /// The configuration checked on its own, or why it is invalid.
        checked: Result<R::Checked, String>,
        /// The configuration encoded, as the desired state keeps it.
        encoded: Box<[u8]>,
    },
    Delete,
    /// INFO or GET: nothing changes.
    Read,
}

impl<R: Check> Op<R> {
    fn new(map_key: Option<String>, operation: i32, config: Option<R::Config>) -> Op<R> {
        let keyed = map_key.is_some();
        let refused = |id: String, reason: String| Op {
            id,
            keyed,
            operation,
            revision: 0,
            action: Err(reason),
        };
        let Some(config) = config else {
            let reason = "the resource state has no configuration".to_string();
            return refused(map_key.unwrap_or_default(), reason);
        };
        let config_id = R::config_id(&config);
        let id = match map_key {
            Some(key) if key != config_id => {
                let reason =
                    format!("map key {key:?} differs from the configuration id {config_id:?}");
                return refused(config_id.to_string(), reason);
            }
            Some(key) => key,
            None => config_id.to_string(),
        };
        if let Err(reason) = check_id(&id) {
            return refused(id, reason);
        }
        let revision = R::config_revision(&config);
        let action = match OperationType::try_from(operation) {
            Ok(operation @ (OperationType::Create | OperationType::Update)) => Ok(Action::Upsert {
                operation,
                encoded: config.encode_to_vec().into_boxed_slice(),
                checked: R::check(config),
            }),
            Ok(OperationType::Delete) => Ok(Action::Delete),
            Ok(OperationType::Info | OperationType::Get) => Ok(Action::Read),
            Err(_) => Err(format!("unknown operation_type value {operation}")),
        };
        Op {
            id,
            keyed,
            operation,
            revision,
            action,
        }
    }
}

#[derive(Default)]
pub struct Batch {
    pub vpcs: Vec<Op<Vpc>>,
    pub subnets: Vec<Op<Subnet>>,
    pub ports: Vec<Op<Port>>,
    pub neighbors: Vec<Op<Neighbor>>,
    pub security_groups: Vec<Op<SecurityGroup>>,
    pub dhcp: Vec<Op<DhcpEntry>>,
    pub routers: Vec<Op<Router>>,
    pub gateways: Vec<Op<Gateway>>,
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
pub trait Batched: Check {
    fn ops(batch: &mut Batch) -> &mut Vec<Op<Self>>;
}

macro_rules! batched {
    ($model:ty, $field:ident) => {
        impl Batched for $model {
            fn ops(batch: &mut Batch) -> &mut Vec<Op<Self>> {
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
            .map(|state| Op::new(None, state.operation_type, state.configuration))
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
            .map(|(key, state)| Op::new(Some(key), state.operation_type, state.configuration))
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
