//! The engine's logic against fakes of the host: revisions, dependency
//! order, validation, rollback of a refused port, group transactions, and
//! the undo when the datapath or the disk refuses. No root needed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::{Arc, Mutex, RwLock},
};

use alcor_proto::{
    builders,
    schema::{
        self, GoalStateOperationReply, GoalStateV2, NeighborState, OperationStatus, OperationType,
        PortState, SubnetState, VpcState,
    },
};

use super::{
    Engine,
    kernel::{Dataplane, Devices, Persistence},
};
use crate::{
    core::{
        desired::StoreWrite,
        devices::{AgentDevice, Plugged, PortPlan, Unplugged},
        goalstate::batch::Batch,
        model::{Binding, Vni},
        spec::{DatapathModel, EndpointSpec, HostSpec},
        status::{AgentState, PortPhase},
    },
    datapath::{DatapathError, SyncStats},
    dhcp,
    metrics::Metrics,
    plumbing::{LinkEvent, link::Link},
    store::{Record, StoreError, Stored},
};

// ---- Fakes -----------------------------------------------------------------

/// Port devices in memory: a netns port gets a device at once, a tap port
/// when the test says its tap exists.
#[derive(Clone, Default)]
struct FakeDevices(Arc<Mutex<DeviceTable>>);

#[derive(Default)]
struct DeviceTable {
    /// Port id → (ifindex, plan it was made from).
    made: BTreeMap<String, (u32, PortPlan)>,
    /// Taps the "hypervisor" created, by device name → ifindex.
    taps: HashMap<String, u32>,
    /// Ports whose plugging the "kernel" refuses.
    refused: BTreeSet<String>,
    next_ifindex: u32,
}

impl FakeDevices {
    fn table(&self) -> std::sync::MutexGuard<'_, DeviceTable> {
        self.0.lock().unwrap()
    }

    fn refuse(&self, port_id: &str) {
        self.table().refused.insert(port_id.into());
    }

    fn add_tap(&self, name: &str) -> u32 {
        let mut table = self.table();
        table.next_ifindex += 1;
        let ifindex = 1000 + table.next_ifindex;
        table.taps.insert(name.into(), ifindex);
        ifindex
    }

    /// The plan each port's device was made from.
    fn plans(&self) -> BTreeMap<String, PortPlan> {
        let table = self.table();
        let made = table.made.iter();
        made.map(|(id, (_, plan))| (id.clone(), plan.clone()))
            .collect()
    }
}

/// What the fake "kernel" says when it refuses.
#[derive(Debug, thiserror::Error)]
#[error("the kernel refuses {0}")]
struct Refused(String);

impl Devices for FakeDevices {
    type Error = Refused;

    async fn plug_all(&self, plans: &[PortPlan]) -> Vec<Plugged<Refused>> {
        let mut table = self.table();
        plans
            .iter()
            .map(|plan| {
                let mut replaced = None;
                if let Some((ifindex, made)) = table.made.get(&plan.id)
                    && made != plan
                {
                    replaced = Some(*ifindex);
                    table.made.remove(&plan.id);
                }
                let device = if table.refused.contains(&plan.id) {
                    Err(Refused(plan.device.clone()))
                } else if let Some((ifindex, _)) = table.made.get(&plan.id) {
                    Ok(Some(*ifindex))
                } else {
                    match &plan.binding {
                        Binding::Tap => Ok(table.taps.get(&plan.device).copied()),
                        _ => {
                            table.next_ifindex += 1;
                            let ifindex = table.next_ifindex;
                            table.made.insert(plan.id.clone(), (ifindex, plan.clone()));
                            Ok(Some(ifindex))
                        }
                    }
                };
                Plugged {
                    device,
                    replaced,
                    network_us: 1,
                }
            })
            .collect()
    }

    async fn unplug_all(&self, port_ids: &[&str]) -> Vec<Unplugged<Refused>> {
        let mut table = self.table();
        port_ids
            .iter()
            .map(|id| Unplugged {
                device: table.made.remove(*id).map(|(ifindex, _)| ifindex),
                error: None,
            })
            .collect()
    }

    async fn agent_devices(&self) -> Result<Vec<AgentDevice>, Refused> {
        let table = self.table();
        Ok(table
            .made
            .iter()
            .map(|(id, (ifindex, plan))| AgentDevice {
                ifindex: *ifindex,
                name: plan.device.clone(),
                port_id: id.clone(),
            })
            .collect())
    }

    async fn delete(&self, devices: &[AgentDevice]) -> Vec<Result<(), Refused>> {
        let mut table = self.table();
        devices
            .iter()
            .map(|device| {
                table.made.remove(&device.port_id);
                Ok(())
            })
            .collect()
    }
}

/// A datapath in memory: what is attached and what the maps say.
#[derive(Clone, Default)]
struct FakeDataplane(Arc<Mutex<Programmed>>);

#[derive(Default)]
struct Programmed {
    attached: BTreeSet<u32>,
    /// The model of the last full sync.
    model: Option<DatapathModel>,
    /// Endpoints as the maps hold them.
    endpoints: BTreeMap<(Vni, Ipv4Addr), EndpointSpec>,
    full_syncs: usize,
    endpoint_syncs: usize,
    /// Attaches that fail for want of kernel memory before one succeeds.
    short_of_memory: usize,
    host_macs: Vec<HostSpec>,
    refuse_syncs: bool,
}

impl FakeDataplane {
    fn programmed(&self) -> std::sync::MutexGuard<'_, Programmed> {
        self.0.lock().unwrap()
    }
}

fn refused() -> DatapathError {
    DatapathError::InvalidFrame("refused by the test".into())
}

impl Dataplane for FakeDataplane {
    fn attach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut programmed = self.programmed();
        if programmed.short_of_memory > 0 {
            programmed.short_of_memory -= 1;
            return Err(DatapathError::Map {
                name: "PORT_COUNTERS",
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::from_raw_os_error(libc::ENOMEM),
                }),
            });
        }
        programmed.attached.insert(ifindex);
        Ok(())
    }

    fn detach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        self.programmed().attached.remove(&ifindex);
        Ok(())
    }

    fn attached_ports(&self) -> Result<Vec<u32>, DatapathError> {
        Ok(self.programmed().attached.iter().copied().collect())
    }

    fn sync(&mut self, model: &DatapathModel) -> Result<SyncStats, DatapathError> {
        let mut programmed = self.programmed();
        if programmed.refuse_syncs {
            return Err(refused());
        }
        programmed.full_syncs += 1;
        programmed.endpoints = model
            .endpoints
            .iter()
            .map(|endpoint| ((endpoint.vni, endpoint.ip), *endpoint))
            .collect();
        programmed.model = Some(model.clone());
        Ok(SyncStats::default())
    }

    fn sync_endpoints(
        &mut self,
        write: &[EndpointSpec],
        remove: &[(Vni, Ipv4Addr)],
    ) -> Result<Option<SyncStats>, DatapathError> {
        let mut programmed = self.programmed();
        if programmed.refuse_syncs {
            return Err(refused());
        }
        if programmed.model.is_none() {
            return Ok(None);
        }
        programmed.endpoint_syncs += 1;
        for key in remove {
            programmed.endpoints.remove(key);
        }
        for endpoint in write {
            programmed
                .endpoints
                .insert((endpoint.vni, endpoint.ip), *endpoint);
        }
        Ok(Some(SyncStats::default()))
    }

    fn set_host_macs(&mut self, hosts: &[HostSpec]) -> Result<usize, DatapathError> {
        self.programmed().host_macs = hosts.to_vec();
        Ok(hosts.len())
    }
}

/// A store in memory that can be told to refuse.
#[derive(Default)]
struct FakeStore {
    records: Mutex<BTreeMap<(i32, String), Record>>,
    commits: Mutex<usize>,
    refuse: Mutex<bool>,
}

impl FakeStore {
    fn ids(&self, kind: schema::ResourceType) -> Vec<String> {
        let records = self.records.lock().unwrap();
        let ids = records.keys().filter(|(k, _)| *k == kind as i32);
        ids.map(|(_, id)| id.clone()).collect()
    }
}

impl Persistence for FakeStore {
    fn load(&self) -> Result<Vec<Stored>, StoreError> {
        let records = self.records.lock().unwrap();
        Ok(records
            .iter()
            .map(|((kind, id), record)| Stored {
                kind: *kind,
                id: id.clone(),
                record: record.clone(),
            })
            .collect())
    }

    fn commit(&self, writes: Vec<StoreWrite<'_>>) -> Result<(), StoreError> {
        if *self.refuse.lock().unwrap() {
            return Err(StoreError::refusing("refused by the test"));
        }
        *self.commits.lock().unwrap() += 1;
        let mut records = self.records.lock().unwrap();
        for write in writes {
            let key = (write.kind, write.id.to_owned());
            match write.record {
                Some((operation, config)) => records.insert(
                    key,
                    Record {
                        operation,
                        config: config.to_vec(),
                    },
                ),
                None => records.remove(&key),
            };
        }
        Ok(())
    }
}

/// An engine over fakes, and the fakes, to look at.
struct Host {
    engine: Engine<FakeDevices, FakeDataplane, FakeStore>,
    devices: FakeDevices,
    dataplane: FakeDataplane,
    store: Arc<FakeStore>,
    changed: Arc<tokio::sync::Notify>,
}

impl Host {
    fn new() -> Host {
        Host::with_store(Arc::new(FakeStore::default()))
    }

    fn with_store(store: Arc<FakeStore>) -> Host {
        let (devices, dataplane) = (FakeDevices::default(), FakeDataplane::default());
        let changed = Arc::new(tokio::sync::Notify::new());
        let metrics = Arc::new(Metrics::new(Arc::new(dhcp::Counters::default())));
        let engine = Engine::new(
            Arc::new(RwLock::new(AgentState::default())),
            store.clone(),
            devices.clone(),
            dataplane.clone(),
            metrics,
            changed.clone(),
        );
        Host {
            engine,
            devices,
            dataplane,
            store,
            changed,
        }
    }

    async fn apply(&mut self, message: GoalStateV2) -> Statuses {
        let mut replies = self.engine.apply_group(vec![Batch::from(message)]).await;
        Statuses(replies.remove(0))
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, AgentState> {
        self.engine.read()
    }

    fn phase(&self, port_id: &str) -> Option<PortPhase> {
        self.state().ports.get(port_id).map(|status| status.phase)
    }
}

/// A reply's statuses, by resource id.
struct Statuses(GoalStateOperationReply);

impl Statuses {
    fn of(&self, id: &str) -> (OperationStatus, String) {
        let status = self
            .0
            .operation_statuses
            .iter()
            .find(|status| status.resource_id == id)
            .unwrap_or_else(|| panic!("no status for {id}: {:?}", self.0));
        (
            OperationStatus::try_from(status.operation_status).unwrap(),
            status.message.clone(),
        )
    }

    fn status(&self, id: &str) -> OperationStatus {
        self.of(id).0
    }
}

// ---- Messages ----------------------------------------------------------------

const VPC: &str = "vpc-1";
const SUBNET: &str = "subnet-1";

fn vpc() -> VpcState {
    builders::vpc(VPC, 100, "10.0.0.0/16")
}

fn subnet() -> SubnetState {
    builders::subnet(SUBNET, VPC, "10.0.1.0/24", "10.0.1.1")
}

/// A port in SUBNET, bound to namespace `netns`, or to a tap if empty.
fn port(id: &str, revision: u32, ip: &str, mac: &str, netns: &str) -> PortState {
    let mut port = match netns {
        "" => builders::tap_port(id, VPC, SUBNET, ip, mac),
        netns => builders::netns_port(id, VPC, SUBNET, ip, mac, netns),
    };
    if let Some(config) = port.configuration.as_mut() {
        config.revision_number = revision;
    }
    port
}

fn neighbor(id: &str, ip: &str) -> NeighborState {
    builders::neighbor(id, VPC, SUBNET, ip, "fa:16:3e:00:01:01", "198.18.0.2")
}

fn deleting<T>(mut state: T, set: impl FnOnce(&mut T)) -> T {
    set(&mut state);
    state
}

/// A message with the network (VPC, subnet) and these ports and neighbors.
fn message(ports: Vec<PortState>, neighbors: Vec<NeighborState>) -> GoalStateV2 {
    let mut message = builders::v2(vec![vpc()], vec![subnet()], ports);
    message.neighbor_states = neighbors
        .into_iter()
        .map(|n| (n.configuration.as_ref().unwrap().id.clone(), n))
        .collect();
    message
}

fn web(revision: u32) -> PortState {
    port("web", revision, "10.0.1.10", "fa:16:3e:00:00:0a", "ns-web")
}

fn db() -> PortState {
    port("db", 1, "10.0.1.11", "fa:16:3e:00:00:0b", "ns-db")
}

// ---- Tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_applies_in_dependency_order_plumbs_programs_and_persists() {
    let mut host = Host::new();
    let applied = host
        .apply(message(vec![web(1)], vec![neighbor("n1", "10.0.1.20")]))
        .await;
    for id in [VPC, SUBNET, "web", "n1"] {
        assert_eq!(applied.of(id), (OperationStatus::Success, String::new()));
    }
    // The port has its device, the datapath is attached to it and knows it.
    assert_eq!(host.phase("web"), Some(PortPhase::Ready));
    let ifindex = host.state().ports["web"].ifindex;
    {
        let programmed = host.dataplane.programmed();
        assert_eq!(programmed.attached, BTreeSet::from([ifindex]));
        let model = programmed.model.as_ref().expect("a full sync");
        assert_eq!(model.ports.len(), 1);
        assert_eq!(model.ports[0].ifindex, ifindex);
        // Its address and the neighbor's are endpoints of the VPC.
        let ips: BTreeSet<Ipv4Addr> = programmed.endpoints.keys().map(|&(_, ip)| ip).collect();
        let expected = [Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 0, 1, 20)];
        assert_eq!(ips, BTreeSet::from(expected));
    }
    // Everything persisted, in one transaction; the DHCP view is told.
    assert_eq!(host.store.ids(schema::ResourceType::Port), ["web"]);
    assert_eq!(host.store.ids(schema::ResourceType::Neighbor), ["n1"]);
    assert_eq!(*host.store.commits.lock().unwrap(), 1);
    tokio::time::timeout(std::time::Duration::from_secs(1), host.changed.notified())
        .await
        .expect("the DHCP view is told of the change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_older_than_the_applied_one_are_out_of_order() {
    let mut host = Host::new();
    host.apply(message(vec![web(2)], vec![])).await;
    let commits = *host.store.commits.lock().unwrap();

    let older = host.apply(message(vec![web(1)], vec![])).await;
    let (status, reason) = older.of("web");
    assert_eq!(status, OperationStatus::OutOfOrder);
    assert!(
        reason.contains("older than the applied revision 2"),
        "{reason}"
    );

    // The same revision again: already applied, nothing written.
    let again = host.apply(message(vec![web(2)], vec![])).await;
    assert_eq!(again.status("web"), OperationStatus::Success);
    assert_eq!(*host.store.commits.lock().unwrap(), commits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_refused_with_its_reason_and_its_neighbours_apply() {
    let mut host = Host::new();
    let outside = port("far", 1, "10.0.9.9", "fa:16:3e:00:00:0c", "ns-far");
    let bad_mac = port("odd", 1, "10.0.1.12", "not-a-mac", "ns-odd");
    let applied = host
        .apply(message(vec![web(1), outside, bad_mac], vec![]))
        .await;
    assert_eq!(applied.status("web"), OperationStatus::Success);
    let (status, reason) = applied.of("far");
    assert_eq!(status, OperationStatus::InvalidArg);
    assert!(reason.contains("outside subnet"), "{reason}");
    assert_eq!(applied.status("odd"), OperationStatus::InvalidArg);
    assert_eq!(host.store.ids(schema::ResourceType::Port), ["web"]);
    assert_eq!(host.devices.plans().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_in_use_cannot_be_deleted() {
    let mut host = Host::new();
    host.apply(message(vec![web(1)], vec![])).await;
    let delete_subnet = GoalStateV2 {
        subnet_states: [(
            SUBNET.into(),
            deleting(subnet(), |s| {
                s.operation_type = OperationType::Delete as i32;
            }),
        )]
        .into(),
        ..Default::default()
    };
    let (status, reason) = host.apply(delete_subnet.clone()).await.of(SUBNET);
    assert_eq!(status, OperationStatus::InvalidArg);
    assert!(reason.contains("still used by"), "{reason}");

    // With its port deleted in the same message, bottom-up: both go.
    let mut both = delete_subnet;
    both.port_states = [(
        "web".into(),
        deleting(web(2), |p| p.operation_type = OperationType::Delete as i32),
    )]
    .into();
    let deleted = host.apply(both).await;
    assert_eq!(deleted.status("web"), OperationStatus::Success);
    assert_eq!(deleted.status(SUBNET), OperationStatus::Success);
    assert!(host.devices.plans().is_empty(), "the port's device is gone");
    assert!(host.dataplane.programmed().attached.is_empty());
    assert!(host.store.ids(schema::ResourceType::Subnet).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_the_kernel_refuses_is_rolled_back_alone() {
    let mut host = Host::new();
    host.devices.refuse("db");
    let applied = host.apply(message(vec![web(1), db()], vec![])).await;
    assert_eq!(applied.status("web"), OperationStatus::Success);
    let (status, reason) = applied.of("db");
    assert_eq!(status, OperationStatus::Failure);
    assert!(reason.contains("the kernel refuses"), "{reason}");
    // Not applied: not desired, not stored, not programmed.
    assert!(!host.state().desired.ports.contains("db"));
    assert_eq!(host.phase("db"), None);
    assert_eq!(host.store.ids(schema::ResourceType::Port), ["web"]);
    assert_eq!(
        host.dataplane
            .programmed()
            .model
            .as_ref()
            .unwrap()
            .ports
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_leaves_the_port_as_it_was() {
    let mut host = Host::new();
    host.apply(message(vec![web(1)], vec![])).await;
    let before = host.devices.plans()["web"].clone();

    host.devices.refuse("web");
    let moved = port("web", 2, "10.0.1.10", "fa:16:3e:00:00:0a", "ns-elsewhere");
    let (status, _) = host.apply(message(vec![moved], vec![])).await.of("web");
    assert_eq!(status, OperationStatus::Failure);
    let desired = host.state().desired.ports.get("web").unwrap().revision();
    assert_eq!(desired, 1, "the desired state keeps revision 1");
    // The stored configuration is still revision 1's.
    let stored = host.store.records.lock().unwrap()
        [&(schema::ResourceType::Port as i32, "web".to_string())]
        .clone();
    let config = <schema::PortConfiguration as prost::Message>::decode(&stored.config[..]).unwrap();
    assert_eq!(config.revision_number, 1);
    // Its device is put back as revision 1 planned it, once the kernel
    // takes it again.
    host.devices.table().refused.clear();
    host.engine.on_link_event(LinkEvent::Resync).await;
    assert_eq!(host.devices.plans()["web"], before);
    assert_eq!(host.phase("web"), Some(PortPhase::Ready));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_datapath_refuses_nothing_of_the_message_is_applied() {
    let mut host = Host::new();
    host.apply(message(vec![web(1)], vec![])).await;
    host.dataplane.programmed().refuse_syncs = true;

    let applied = host
        .apply(message(vec![db()], vec![neighbor("n1", "10.0.1.20")]))
        .await;
    for id in ["db", "n1"] {
        let (status, reason) = applied.of(id);
        assert_eq!(status, OperationStatus::Failure, "{id}");
        assert!(reason.starts_with("not applied: "), "{reason}");
    }
    // The desired state, the disk and the devices are as before it.
    assert!(!host.state().desired.ports.contains("db"));
    assert!(!host.state().desired.neighbors.contains("n1"));
    assert_eq!(host.store.ids(schema::ResourceType::Port), ["web"]);
    assert!(host.store.ids(schema::ResourceType::Neighbor).is_empty());
    assert_eq!(host.devices.plans().keys().collect::<Vec<_>>(), ["web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_disk_refuses_nothing_of_the_message_is_applied() {
    let mut host = Host::new();
    host.apply(message(vec![web(1)], vec![])).await;
    *host.store.refuse.lock().unwrap() = true;

    let applied = host
        .apply(message(vec![db()], vec![neighbor("n1", "10.0.1.20")]))
        .await;
    assert_eq!(applied.status("db"), OperationStatus::Failure);
    assert_eq!(applied.status("n1"), OperationStatus::Failure);
    assert!(!host.state().desired.ports.contains("db"));
    // The datapath is programmed back to what the state says.
    let programmed = host.dataplane.programmed();
    let ips: Vec<Ipv4Addr> = programmed.endpoints.keys().map(|&(_, ip)| ip).collect();
    assert_eq!(ips, [Ipv4Addr::new(10, 0, 1, 10)]);
    assert_eq!(programmed.model.as_ref().unwrap().ports.len(), 1);
    drop(programmed);
    assert_eq!(host.devices.plans().keys().collect::<Vec<_>>(), ["web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_applied_together_are_one_transaction() {
    let mut host = Host::new();
    host.apply(message(vec![web(1)], vec![])).await;
    let (commits, full_syncs) = (
        *host.store.commits.lock().unwrap(),
        host.dataplane.programmed().full_syncs,
    );
    // Neighbors only, in three messages: one write, endpoints only.
    let neighbors = |id: &str, ip: &str| GoalStateV2 {
        neighbor_states: [(id.into(), neighbor(id, ip))].into(),
        ..Default::default()
    };
    let group = ["10.0.1.20", "10.0.1.21", "10.0.1.22"]
        .iter()
        .enumerate()
        .map(|(i, ip)| Batch::from(neighbors(&format!("n{i}"), ip)))
        .collect();
    let replies = host.engine.apply_group(group).await;
    assert_eq!(replies.len(), 3);
    assert!(replies.iter().all(|reply| {
        reply.operation_statuses[0].operation_status == OperationStatus::Success as i32
    }));
    assert_eq!(*host.store.commits.lock().unwrap(), commits + 1);
    let programmed = host.dataplane.programmed();
    assert_eq!(programmed.full_syncs, full_syncs, "no full sync");
    assert_eq!(programmed.endpoint_syncs, 1);
    assert_eq!(programmed.endpoints.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_port_is_pending_until_its_device_appears_and_ready_while_it_exists() {
    let mut host = Host::new();
    let vm = port("vm", 1, "10.0.1.30", "fa:16:3e:00:00:1e", "");
    let (status, reason) = host.apply(message(vec![vm], vec![])).await.of("vm");
    assert_eq!(status, OperationStatus::Pending);
    assert!(reason.contains("waiting for device tapvm"), "{reason}");

    let ifindex = host.devices.add_tap("tapvm");
    let link = |index| Link {
        index,
        name: "tapvm".into(),
        alias: None,
        kind: None,
        mtu: None,
        mac: None,
        up: true,
        vxlan: None,
    };
    host.engine
        .on_link_event(LinkEvent::Changed(link(ifindex)))
        .await;
    assert_eq!(host.phase("vm"), Some(PortPhase::Ready));
    assert!(host.dataplane.programmed().attached.contains(&ifindex));

    // The hypervisor deletes it: pending again, and forgotten.
    host.devices.table().taps.clear();
    host.engine
        .on_link_event(LinkEvent::Removed(link(ifindex)))
        .await;
    assert_eq!(host.phase("vm"), Some(PortPhase::Pending));
    let model = host.dataplane.programmed().model.clone().unwrap();
    assert!(model.ports.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_engine_adopts_its_devices_and_drops_the_stale_ones() {
    let store = Arc::new(FakeStore::default());
    let mut first = Host::with_store(store.clone());
    first.apply(message(vec![web(1), db()], vec![])).await;
    let devices = first.devices.clone();
    let dataplane = first.dataplane.clone();
    let web_ifindex = first.state().ports["web"].ifindex;
    // "db" goes from the store while no agent runs; its device stays.
    store
        .records
        .lock()
        .unwrap()
        .remove(&(schema::ResourceType::Port as i32, "db".to_string()));
    drop(first);

    let mut second = Host::with_store(store);
    second.devices = devices.clone();
    second.dataplane = dataplane.clone();
    second.engine.devices = devices;
    second.engine.dataplane = dataplane;
    assert_eq!(second.engine.load().unwrap(), 3);
    second.engine.adopt().await.unwrap();

    assert_eq!(second.devices.plans().keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(
        second.state().ports["web"].ifindex,
        web_ifindex,
        "kept as it was"
    );
    let programmed = second.dataplane.programmed();
    assert_eq!(programmed.attached, BTreeSet::from([web_ifindex]));
    assert_eq!(programmed.model.as_ref().unwrap().ports.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attach_short_of_kernel_memory_is_tried_again_a_few_times() {
    let mut host = Host::new();
    host.dataplane.programmed().short_of_memory = 2;
    let applied = host.apply(message(vec![web(1)], vec![])).await;
    assert_eq!(applied.of("web"), (OperationStatus::Success, String::new()));
    assert_eq!(host.phase("web"), Some(PortPhase::Ready));

    // Short for longer than the retries: refused with the kernel's reason,
    // and nothing half-made is left.
    host.dataplane.programmed().short_of_memory = 10;
    let (status, reason) = host.apply(message(vec![db()], vec![])).await.of("db");
    assert_eq!(status, OperationStatus::Failure);
    assert!(
        reason.starts_with("attaching the datapath: map PORT_COUNTERS")
            && reason.contains("os error 12"),
        "{reason}"
    );
    assert_eq!(host.devices.plans().keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(host.dataplane.programmed().attached.len(), 1);
}
