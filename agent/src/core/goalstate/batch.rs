//! One goal-state message, V1 or V2, as operations grouped by resource kind,
//! each checked as far as it can be on its own (see [`Check`]): that work is
//! done where messages are read and decoded, beside the engine.

use alcor_proto::schema::{GoalState, GoalStateV2, OperationType};
use prost::Message;

use super::{
    validate::{Check, SharedIds, check_id, check_neighbor},
    wire::{self, NeighborConfigurationRef, WireError},
};
use crate::core::model::*;

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

/// A configuration as an operation carries it: what the operation needs
/// before it is checked, then the configuration checked on its own and
/// encoded.
trait Received<R: Check> {
    fn id(&self) -> &str;
    fn revision(&self) -> u32;
    fn into_upsert(self) -> (Result<R::Checked, String>, Box<[u8]>);
}

/// A configuration prost decoded.
struct Decoded<C>(C);

impl<R: Check> Received<R> for Decoded<R::Config> {
    fn id(&self) -> &str {
        R::config_id(&self.0)
    }

    fn revision(&self) -> u32 {
        R::config_revision(&self.0)
    }

    fn into_upsert(self) -> (Result<R::Checked, String>, Box<[u8]>) {
        let encoded = self.0.encode_to_vec().into_boxed_slice();
        (R::check(self.0), encoded)
    }
}

/// A neighbor's configuration read in place from the bytes it came in,
/// which the desired state keeps as they are.
struct NeighborAsReceived<'a, 'b> {
    config: NeighborConfigurationRef<'a>,
    encoded: &'a [u8],
    ids: &'b mut SharedIds<'a>,
}

impl Received<Neighbor> for NeighborAsReceived<'_, '_> {
    fn id(&self) -> &str {
        self.config.id
    }

    fn revision(&self) -> u32 {
        self.config.revision_number
    }

    fn into_upsert(self) -> (Result<Neighbor, String>, Box<[u8]>) {
        (check_neighbor(&self.config, self.ids), self.encoded.into())
    }
}

impl Op<Neighbor> {
    /// A V2 map entry of a neighbor state as it came (see [`wire`]).
    fn from_encoded<'a>(
        key: &str,
        operation: i32,
        config: Option<&'a [u8]>,
        ids: &mut SharedIds<'a>,
    ) -> Op<Neighbor> {
        let received = config
            .map(|encoded| {
                NeighborConfigurationRef::read(encoded).map(|config| NeighborAsReceived {
                    config,
                    encoded,
                    ids,
                })
            })
            .transpose();
        match received {
            Ok(received) => Op::prepare(Some(key.to_string()), operation, received),
            Err(e) => Op::refused(
                key.to_string(),
                true,
                operation,
                format!("the configuration does not decode: {e}"),
            ),
        }
    }
}

impl<R: Check> Op<R> {
    fn new(map_key: Option<String>, operation: i32, config: Option<R::Config>) -> Op<R> {
        Op::prepare(map_key, operation, config.map(Decoded))
    }

    fn refused(id: String, keyed: bool, operation: i32, reason: String) -> Op<R> {
        Op {
            id,
            keyed,
            operation,
            revision: 0,
            action: Err(reason),
        }
    }

    /// Checks what the operation says on its own.
    fn prepare(map_key: Option<String>, operation: i32, config: Option<impl Received<R>>) -> Op<R> {
        let keyed = map_key.is_some();
        let Some(config) = config else {
            let reason = "the resource state has no configuration".to_string();
            return Op::refused(map_key.unwrap_or_default(), keyed, operation, reason);
        };
        let config_id = config.id();
        let id = match map_key {
            Some(key) if key != config_id => {
                let reason =
                    format!("map key {key:?} differs from the configuration id {config_id:?}");
                return Op::refused(config_id.to_string(), keyed, operation, reason);
            }
            Some(key) => key,
            None => config_id.to_string(),
        };
        if let Err(reason) = check_id(&id) {
            return Op::refused(id, keyed, operation, reason);
        }
        let revision = config.revision();
        let action = match OperationType::try_from(operation) {
            Ok(operation @ (OperationType::Create | OperationType::Update)) => {
                let (checked, encoded) = config.into_upsert();
                Ok(Action::Upsert {
                    operation,
                    checked,
                    encoded,
                })
            }
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
    /// A V2 message as received: its neighbor states are read without
    /// decoding them into a map (see [`wire`]).
    pub fn from_encoded_v2(message: &[u8]) -> Result<Batch, WireError> {
        let (others, neighbors) = wire::read_v2(message)?;
        let mut batch = Batch::from(others);
        let mut ids = SharedIds::default();
        batch.neighbors = neighbors
            .iter()
            .map(|neighbor| {
                let config = neighbor.configuration.as_deref();
                Op::from_encoded(neighbor.key, neighbor.operation, config, &mut ids)
            })
            .collect();
        Ok(batch)
    }

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

#[cfg(test)]
mod tests {
    use alcor_proto::schema::{NeighborConfiguration, NeighborState};

    use super::*;

    fn neighbor(id: &str, mac_address: &str) -> NeighborState {
        NeighborState {
            operation_type: OperationType::Create as i32,
            configuration: Some(NeighborConfiguration {
                id: id.into(),
                mac_address: mac_address.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_neighbor_configuration_that_does_not_decode_is_refused_alone() {
        let message = GoalStateV2 {
            neighbor_states: [("a", "fa:16:3e:00:00:01"), ("b", "fa:16:3e:00:00:02")]
                .into_iter()
                .map(|(id, mac)| (id.to_string(), neighbor(id, mac)))
                .collect(),
            ..Default::default()
        };
        let mut encoded = message.encode_to_vec();
        // b's MAC address, no longer UTF-8.
        let at = encoded
            .windows(2)
            .position(|bytes| bytes == b"02")
            .expect("b's MAC");
        encoded[at] = 0xff;

        let batch = Batch::from_encoded_v2(&encoded).unwrap();
        let outcomes: Vec<_> = batch
            .neighbors
            .iter()
            .map(|op| (op.id.as_str(), op.action.as_ref().err()))
            .collect();
        assert!(matches!(outcomes[0], ("a", None)), "{outcomes:?}");
        assert!(
            matches!(outcomes[1], ("b", Some(reason)) if reason.contains("does not decode")),
            "{outcomes:?}"
        );
        let Ok(Action::Upsert { encoded, .. }) = &batch.neighbors[0].action else {
            panic!("a is not an upsert");
        };
        let kept = NeighborConfiguration::decode(&encoded[..]).unwrap();
        assert_eq!(Some(kept), message.neighbor_states["a"].configuration);
    }
}
