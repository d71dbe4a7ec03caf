//! The real host behind the engine's traits ([`super::kernel`]): netlink
//! plumbing, the eBPF datapath, the store on disk.

use std::{future::Future, net::Ipv4Addr};

use super::kernel::{Dataplane, Devices, Persistence};
use crate::{
    core::{
        desired::StoreWrite,
        devices::{AgentDevice, Plugged, PortPlan, Unplugged},
        model::Vni,
        spec::{DatapathModel, EndpointSpec, HostSpec},
    },
    datapath::{Datapath, DatapathError, SyncStats},
    plumbing::{Plumber, PlumbingError},
    store::{Store, StoreError, Stored},
};

impl Devices for Plumber {
    type Error = PlumbingError;

    fn plug_all(
        &self,
        plans: &[PortPlan],
    ) -> impl Future<Output = Vec<Plugged<PlumbingError>>> + Send {
        Plumber::plug_all(self, plans)
    }

    fn unplug_all(
        &self,
        port_ids: &[&str],
    ) -> impl Future<Output = Vec<Unplugged<PlumbingError>>> + Send {
        Plumber::unplug_all(self, port_ids)
    }

    fn agent_devices(
        &self,
    ) -> impl Future<Output = Result<Vec<AgentDevice>, PlumbingError>> + Send {
        Plumber::agent_devices(self)
    }

    fn delete(
        &self,
        devices: &[AgentDevice],
    ) -> impl Future<Output = Vec<Result<(), PlumbingError>>> + Send {
        Plumber::delete(self, devices)
    }
}

impl Dataplane for Datapath {
    fn attach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        Datapath::attach_port(self, ifindex)
    }

    fn detach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        Datapath::detach_port(self, ifindex)
    }

    fn attached_ports(&self) -> Result<Vec<u32>, DatapathError> {
        Datapath::attached_ports(self)
    }

    fn sync(&mut self, model: &DatapathModel) -> Result<SyncStats, DatapathError> {
        Datapath::sync(self, model)
    }

    fn sync_endpoints(
        &mut self,
        write: &[EndpointSpec],
        remove: &[(Vni, Ipv4Addr)],
    ) -> Result<Option<SyncStats>, DatapathError> {
        Datapath::sync_endpoints(self, write, remove)
    }

    fn set_host_macs(&mut self, hosts: &[HostSpec]) -> Result<usize, DatapathError> {
        Datapath::set_host_macs(self, hosts)
    }
}

impl Persistence for Store {
    fn load(&self) -> Result<Vec<Stored>, StoreError> {
        Store::load(self)
    }

    fn commit(&self, writes: Vec<StoreWrite<'_>>) -> Result<(), StoreError> {
        Store::commit(self, writes)
    }
}
