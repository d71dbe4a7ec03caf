//! What the engine needs of the host, as traits it owns: the port devices
//! ([`Devices`], netlink), the datapath ([`Dataplane`], eBPF maps and
//! programs) and the disk ([`Persistence`]). The agent gives it the real
//! ones ([`super::adapters`]); its tests give it fakes that record what
//! they were asked and refuse on demand.

use std::{future::Future, net::Ipv4Addr};

use crate::{
    core::{
        desired::StoreWrite,
        devices::{AgentDevice, Plugged, PortPlan, Unplugged},
        model::Vni,
        spec::{DatapathModel, EndpointSpec, HostSpec},
    },
    datapath::{DatapathError, SyncStats},
    store::{StoreError, Stored},
};

/// The ports' devices.
pub trait Devices: Send + Sync + 'static {
    /// Why a device cannot be made or removed, with the kernel's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes each planned port's device exist (idempotent: what exists as
    /// planned is kept); the results come in the order of `plans`.
    fn plug_all(
        &self,
        plans: &[PortPlan],
    ) -> impl Future<Output = Vec<Plugged<Self::Error>>> + Send;

    /// Undoes [`Self::plug_all`] for these ports; in the order of
    /// `port_ids`.
    fn unplug_all(
        &self,
        port_ids: &[&str],
    ) -> impl Future<Output = Vec<Unplugged<Self::Error>>> + Send;

    /// The devices the agent made for ports, whichever ports they were for.
    fn agent_devices(&self) -> impl Future<Output = Result<Vec<AgentDevice>, Self::Error>> + Send;

    /// Deletes devices the agent made; in the order of `devices`.
    fn delete(
        &self,
        devices: &[AgentDevice],
    ) -> impl Future<Output = Vec<Result<(), Self::Error>>> + Send;
}

/// The datapath: programs on the port devices, and the maps they forward
/// by. Its calls are quick blocking syscalls.
pub trait Dataplane: Send + 'static {
    fn attach_port(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    /// Removes the port's programs (if its device is still there) and
    /// forgets it.
    fn detach_port(&mut self, ifindex: u32) -> Result<(), DatapathError>;
    /// The ports attached, whose devices still exist.
    fn attached_ports(&self) -> Result<Vec<u32>, DatapathError>;
    /// Makes the maps say what `model` says.
    fn sync(&mut self, model: &DatapathModel) -> Result<SyncStats, DatapathError>;
    /// Changes only endpoints; `None` if it cannot (no sync yet), and a
    /// full [`Self::sync`] is needed.
    fn sync_endpoints(
        &mut self,
        write: &[EndpointSpec],
        remove: &[(Vni, Ipv4Addr)],
    ) -> Result<Option<SyncStats>, DatapathError>;
    /// Sets the next-hop MACs of known hosts; returns how many it wrote.
    fn set_host_macs(&mut self, hosts: &[HostSpec]) -> Result<usize, DatapathError>;
}

/// Where the desired state outlives the agent.
pub trait Persistence: Send + Sync + 'static {
    fn load(&self) -> Result<Vec<Stored>, StoreError>;
    /// Writes all of `writes`, or nothing.
    fn commit(&self, writes: Vec<StoreWrite<'_>>) -> Result<(), StoreError>;
}
