//! What the engine asks of a port's devices, and what came of it: the
//! vocabulary between the engine and whatever makes the devices (netlink,
//! in `crate::plumbing`; a fake, in the engine's tests).

use super::model::{Binding, Mac, Port};

/// What a bound port needs from the kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct PortPlan {
    pub id: String,
    pub device: String,
    pub binding: Binding,
    pub mac: Mac,
}

impl PortPlan {
    /// The plan of a port that has a device on this host.
    pub fn of(port: &Port) -> Option<PortPlan> {
        match port.binding {
            Binding::Unbound => None,
            _ => Some(PortPlan {
                id: port.id.clone(),
                device: port.device_name(),
                binding: port.binding.clone(),
                mac: port.mac,
            }),
        }
    }
}

/// What plugging one port did; `E`: why a device cannot be made.
#[derive(Debug)]
pub struct Plugged<E> {
    /// The port's device (its ifindex), ready for the datapath; `None`: a
    /// tap the hypervisor has not created yet; `Err`: why it cannot be made
    /// (nothing half-made is left).
    pub device: Result<Option<u32>, E>,
    /// A device the agent had made for the port, deleted on the way (the
    /// port's binding or spec changed): the datapath must forget it.
    pub replaced: Option<u32>,
    /// Microseconds spent on it.
    pub network_us: u32,
}

/// What unplugging one port did; `E`: why its device could not be found or
/// deleted.
#[derive(Debug)]
pub struct Unplugged<E> {
    /// The device the port had, if any: deleted (the agent's) or left to its
    /// owner (a tap), and in both cases for the datapath to forget, even if
    /// deleting it failed: a device still there then runs no program of a
    /// port that is gone.
    pub device: Option<u32>,
    pub error: Option<E>,
}

/// A device the agent made for a port, found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentDevice {
    pub ifindex: u32,
    pub name: String,
    /// The port it was made for.
    pub port_id: String,
}
