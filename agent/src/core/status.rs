//! What the agent has made of its desired state so far: each port's phase,
//! and what readers (the control socket, the metrics, the DHCP publisher,
//! the registration) see. Written by the engine alone.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::{Arc, RwLock},
};

use alcor_proto::schema::OperationStatus;

use crate::core::{desired::DesiredState, model::Mac, spec::UnderlaySpec};

/// What a port is, on this host, right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPhase {
    Unbound,
    Pending,
    Ready,
    Failed,
}

impl PortPhase {
    pub const ALL: [PortPhase; 4] = [
        PortPhase::Unbound,
        PortPhase::Pending,
        PortPhase::Ready,
        PortPhase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PortPhase::Unbound => "unbound",
            PortPhase::Pending => "pending",
            PortPhase::Ready => "ready",
            PortPhase::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortStatus {
    pub phase: PortPhase,
    /// Host-side device index while ready.
    pub ifindex: u32,
    /// Why the port is pending or failed.
    pub reason: String,
}

impl PortStatus {
    /// The operation status a push reports for a port in this state.
    pub fn operation_status(&self) -> OperationStatus {
        match self.phase {
            PortPhase::Ready | PortPhase::Unbound => OperationStatus::Success,
            PortPhase::Pending => OperationStatus::Pending,
            PortPhase::Failed => OperationStatus::Failure,
        }
    }
}

/// What readers (the control socket) see: the desired state and how far the
/// host is from it.
#[derive(Default)]
pub struct AgentState {
    pub desired: DesiredState,
    pub ports: HashMap<String, PortStatus>,
    pub messages_applied: u64,
    /// This host's tunnel endpoint, set once at start (`--underlay-dev`).
    pub underlay: Option<UnderlaySpec>,
    /// The ports' MTU, set once at start (the underlay's minus 50).
    pub port_mtu: u32,
    /// The MACs of the underlay device's neighbours, the other hosts' among
    /// them, kept as the kernel's neighbour table says
    /// ([`crate::underlay::neighbours`]).
    pub host_macs: NeighbourMacs,
}

/// The usable MACs of the underlay device's neighbours, by address.
pub type NeighbourMacs = BTreeMap<Ipv4Addr, Mac>;

pub type SharedState = Arc<RwLock<AgentState>>;
