//! The engine applies goal-state messages, one at a time or, when they
//! arrive faster than it applies them, a group at a time:
//!
//! 1. every resource, already checked on its own as its message was read
//!    ([`crate::core::goalstate::batch`]), is checked against the desired state,
//!    in dependency order (creates and updates from VPCs down to DHCP
//!    entries, then deletes from the bottom up), honouring revision numbers;
//! 2. the ports it changed are plumbed, concurrently; a port the kernel
//!    refuses is rolled back (FAILURE: not applied, nothing half-made);
//! 3. the datapath is programmed (only the endpoints, when only neighbors
//!    changed) while the changes are persisted, one transaction for the
//!    whole group; the replies wait for both.
//!
//! It also adopts what exists when the agent starts, and reacts to link
//! events (a tap appearing, a device vanishing) and to the underlay's
//! neighbours (host MACs).
//!
//! It reaches the host only through the traits of [`kernel`]: the port
//! devices, the datapath (which it alone writes) and the store, so that its
//! logic is unit-tested with fakes ([`adapters`] has the real ones).

mod adapters;
pub mod kernel;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLockReadGuard, RwLockWriteGuard},
    time::Instant,
};

use alcor_proto::schema::{
    GoalStateOperationReply, OperationStatus, OperationType, ResourceType,
    goal_state_operation_reply::GoalStateOperationStatus,
};
use anyhow::Context;
use prost::Message;
use tokio::sync::Notify;

use self::kernel::{Dataplane, Devices, Persistence};
use crate::{
    core::{
        desired::{DesiredState, Entry},
        devices::{Plugged, PortPlan, Unplugged},
        forwarding,
        goalstate::{
            batch::{Action, Batch, Batched, Op},
            validate::Validate,
        },
        model::*,
        spec::HostSpec,
        status::{AgentState, PortPhase, PortStatus, SharedState},
    },
    datapath::{Datapath, DatapathError},
    error::chain,
    metrics::{Metrics, PhaseLabels, ResourceLabels},
    plumbing::{LinkEvent, Plumber, micros_since},
    store::{Record, Store, StoreError},
    underlay::neighbours::NeighbourChange,
};

impl PortStatus {
    fn from_outcome(outcome: &Outcome, device: &str) -> PortStatus {
        let (phase, ifindex, reason) = match outcome {
            Outcome::Ready { ifindex } => (PortPhase::Ready, *ifindex, String::new()),
            Outcome::Pending => (
                PortPhase::Pending,
                0,
                format!("waiting for device {device} to appear"),
            ),
            Outcome::Failed(reason) => (PortPhase::Failed, 0, reason.clone()),
        };
        PortStatus {
            phase,
            ifindex,
            reason,
        }
    }

    fn unbound() -> PortStatus {
        PortStatus {
            phase: PortPhase::Unbound,
            ifindex: 0,
            reason: String::new(),
        }
    }
}

/// How a port's plumbing ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ready {
        ifindex: u32,
    },
    /// A tap port whose device the hypervisor has not created yet.
    Pending,
    Failed(String),
}

/// A port's plumbing: how it ended and what it cost.
#[derive(Clone, Debug)]
struct Report {
    outcome: Outcome,
    /// Microseconds spent on netlink plumbing.
    network_us: u32,
    /// Microseconds spent attaching the datapath.
    dataplane_us: u32,
}

/// Why a port's devices or their datapath attachment could not be made.
#[derive(Debug, thiserror::Error)]
enum PortError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Device(E),
    #[error("attaching the datapath")]
    Attach(#[source] DatapathError),
    #[error("detaching the datapath")]
    Detach(#[source] DatapathError),
}

/// Why a transaction was not applied.
#[derive(Debug, thiserror::Error)]
enum NotApplied {
    #[error("programming the datapath")]
    Datapath(#[source] DatapathError),
    #[error("writing the store")]
    Store(#[source] StoreError),
    #[error("the store commit did not finish")]
    StoreTask(#[source] tokio::task::JoinError),
}

/// How many times an attach that failed for want of kernel memory (or a
/// busy kernel) is tried again, and the first pause before it (doubled
/// each time): 2 + 4 + 8 ms at most.
const ATTACH_RETRIES: u32 = 3;
const ATTACH_BACKOFF: std::time::Duration = std::time::Duration::from_millis(2);

/// The engine; by default over the real host (netlink, eBPF, the disk).
pub struct Engine<D = Plumber, P = Datapath, S = Store> {
    state: SharedState,
    store: Arc<S>,
    devices: D,
    /// The datapath's one writer.
    dataplane: P,
    metrics: Arc<Metrics>,
    /// Told after each change of the desired state or of the ports (the
    /// DHCP responder rebuilds its view from them).
    changed: Arc<Notify>,
    /// Who claims which addresses, for programming a transaction of
    /// neighbors without rebuilding the whole forwarding model.
    claims: forwarding::Claims,
}

/// A port touched by the message being applied.
struct PortWork {
    id: String,
    /// Its status in the reply.
    status: usize,
}

/// The bookkeeping of one message.
struct Run {
    started: Instant,
    statuses: Vec<GoalStateOperationStatus>,
    seen: HashSet<(i32, String), foldhash::fast::RandomState>,
    ports: Vec<PortWork>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Upserts,
    Deletes,
}

impl<D: Devices, P: Dataplane, S: Persistence> Engine<D, P, S> {
    pub fn new(
        state: SharedState,
        store: Arc<S>,
        devices: D,
        dataplane: P,
        metrics: Arc<Metrics>,
        changed: Arc<Notify>,
    ) -> Self {
        Engine {
            state,
            store,
            devices,
            dataplane,
            metrics,
            changed,
            claims: forwarding::Claims::default(),
        }
    }

    /// Tells the consumers that work from snapshots (the DHCP responder)
    /// that the desired state or the ports changed.
    fn publish(&self) {
        self.changed.notify_one();
    }

    fn read(&self) -> RwLockReadGuard<'_, AgentState> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, AgentState> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reloads the persisted desired state. Configurations that no longer
    /// validate are reported and skipped (they stay in the store).
    pub fn load(&mut self) -> Result<usize, StoreError> {
        let mut by_kind = StoredByKind::new();
        for stored in self.store.load()? {
            by_kind
                .entry(stored.kind)
                .or_default()
                .push((stored.id, stored.record));
        }
        let mut state = self.write();
        let desired = &mut state.desired;
        let loaded = KINDS
            .iter()
            .map(|kind| (kind.load)(desired, &mut by_kind))
            .sum();
        desired.commit();
        Ok(loaded)
    }

    /// Makes the host match the loaded desired state, adopting what exists:
    /// devices the agent made for ports that are gone are deleted, the others
    /// are kept as they are (same ifindex, no flap).
    pub async fn adopt(&mut self) -> anyhow::Result<()> {
        let devices = self
            .devices
            .agent_devices()
            .await
            .context("listing the agent's devices")?;
        let orphans: Vec<_> = {
            let state = self.read();
            devices
                .into_iter()
                .filter(|device| !state.desired.ports.contains(&device.port_id))
                .collect()
        };
        for orphan in &orphans {
            tracing::info!(
                device = orphan.name,
                "deleting a device of a port that is gone"
            );
        }
        let deleted = self.devices.delete(&orphans).await;
        for (orphan, deleted) in orphans.iter().zip(deleted) {
            match deleted {
                // Its filters went with it: the datapath forgets it.
                Ok(()) => self.forget_device(orphan.ifindex),
                Err(e) => {
                    tracing::warn!(device = orphan.name, reason = chain(&e), "could not delete")
                }
            }
        }

        let ids: Vec<String> = self
            .read()
            .desired
            .ports
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        self.reconcile_ports(ids).await;

        // Datapath attachments of devices no ready port owns any more.
        let ready: HashSet<u32> = self
            .read()
            .ports
            .values()
            .filter(|status| status.phase == PortPhase::Ready)
            .map(|status| status.ifindex)
            .collect();
        for ifindex in self.dataplane.attached_ports()? {
            if !ready.contains(&ifindex) {
                self.dataplane.detach_port(ifindex)?;
            }
        }
        self.sync_datapath().context("programming the datapath")?;
        self.update_port_gauges();
        self.publish();
        Ok(())
    }

    /// Reacts to a link event: a pending tap that appeared, a ready device
    /// that vanished.
    pub async fn on_link_event(&mut self, event: LinkEvent) {
        let affected: Vec<String> = {
            let state = self.read();
            match &event {
                LinkEvent::Changed(link) => {
                    let port_id = state.ports.iter().find(|(id, status)| {
                        status.phase == PortPhase::Pending && device_name(id) == link.name
                    });
                    port_id.map(|(id, _)| id.clone()).into_iter().collect()
                }
                LinkEvent::Removed(link) => state
                    .ports
                    .iter()
                    .filter(|(_, status)| {
                        status.phase == PortPhase::Ready && status.ifindex == link.index
                    })
                    .map(|(id, _)| id.clone())
                    .collect(),
                LinkEvent::Resync => state
                    .ports
                    .iter()
                    .filter(|(_, status)| status.phase != PortPhase::Unbound)
                    .map(|(id, _)| id.clone())
                    .collect(),
            }
        };
        if !affected.is_empty() {
            tracing::debug!(?event, ports = ?affected, "link event");
            self.reconcile_ports(affected).await;
            if let Err(e) = self.sync_datapath() {
                tracing::error!(
                    reason = chain(&e),
                    "programming the datapath after a link event"
                );
            }
            self.update_port_gauges();
            self.publish();
        }
    }

    /// Follows the underlay's neighbours (see [`crate::underlay::neighbours`]):
    /// the state keeps their MACs for every later sync, and the HOSTS
    /// entries of those that are hosts change in place, without a sync: a
    /// neighbour must not cost a pass over a million endpoints.
    pub fn on_neighbour_changes(&mut self, changes: &[NeighbourChange]) {
        {
            let mut state = self.write();
            for change in changes {
                match change.mac {
                    Some(mac) => state.host_macs.insert(change.ip, mac),
                    None => state.host_macs.remove(&change.ip),
                };
            }
        }
        let hosts: Vec<HostSpec> = changes
            .iter()
            .map(|change| HostSpec {
                ip: change.ip,
                mac: change.mac,
            })
            .collect();
        match tokio::task::block_in_place(|| self.dataplane.set_host_macs(&hosts)) {
            Ok(written) => tracing::debug!(?changes, written, "underlay neighbours changed"),
            Err(e) => tracing::error!(reason = chain(&e), "writing host MACs"),
        }
    }

    /// Brings each port's devices in line with its desired state and records
    /// the outcome; failures stay desired, with their reason, until the next
    /// event or push.
    async fn reconcile_ports(&mut self, ids: Vec<String>) {
        let reports = self.plumb(&ids).await;
        let mut state = self.write();
        for (id, report) in ids.into_iter().zip(reports) {
            record_port(&mut state, id, report);
        }
    }

    /// Plumbs (or unplumbs) the given ports, their devices concurrently,
    /// then attaches the datapath to the new ones; the reports come in the
    /// order of `ids`. Removals go first: a port that goes may leave its
    /// VM's namespace (its `eth0`) to one that comes.
    async fn plumb(&mut self, ids: &[String]) -> Vec<Option<Report>> {
        let (mut wanted, mut gone) = (Vec::new(), Vec::new());
        let planned: Vec<bool> = {
            let state = self.read();
            ids.iter()
                .map(|id| {
                    let plan = state
                        .desired
                        .ports
                        .get(id)
                        .and_then(|e| PortPlan::of(&e.spec));
                    let planned = plan.is_some();
                    match plan {
                        Some(plan) => wanted.push(plan),
                        None => gone.push(id.as_str()),
                    }
                    planned
                })
                .collect()
        };
        let removed: Vec<_> = self.devices.unplug_all(&gone).await;
        let mut removed = removed
            .into_iter()
            .map(|unplugged| self.forget_unplugged(unplugged))
            .collect::<Vec<_>>()
            .into_iter();
        let plugged = self.devices.plug_all(&wanted).await;
        let mut applied = Vec::with_capacity(plugged.len());
        for (plan, plugged) in wanted.iter().zip(plugged) {
            applied.push(self.attach(plan, plugged).await);
        }
        let mut applied = applied.into_iter();
        planned
            .into_iter()
            .map(|planned| {
                if planned {
                    return applied.next();
                }
                let error = removed.next()?.err()?;
                Some(Report::new(Outcome::Failed(chain(&error)), 0))
            })
            .collect()
    }

    /// Attaches the datapath to a port's device once plugged; undoes the
    /// plugging if it cannot (nothing half-made is left).
    async fn attach(&mut self, plan: &PortPlan, plugged: Plugged<D::Error>) -> Report {
        if let Some(replaced) = plugged.replaced {
            self.forget_device(replaced);
        }
        let network_us = plugged.network_us;
        let ifindex = match plugged.device {
            Ok(Some(ifindex)) => ifindex,
            Ok(None) => return Report::new(Outcome::Pending, network_us),
            Err(error) => return Report::new(Outcome::Failed(chain(&error)), network_us),
        };
        let started = Instant::now();
        let mut retries = 0;
        let attached = loop {
            // Quick blocking syscalls: the runtime moves other tasks off this
            // worker meanwhile.
            match tokio::task::block_in_place(|| self.dataplane.attach_port(ifindex)) {
                Err(e) if e.is_transient() && retries < ATTACH_RETRIES => {
                    let reason = chain(&e);
                    tracing::debug!(port = plan.id, retries, reason, "attaching again");
                    tokio::time::sleep(ATTACH_BACKOFF * 2u32.pow(retries)).await;
                    retries += 1;
                }
                attached => break attached,
            }
        };
        let dataplane_us = micros_since(started);
        let outcome = match attached {
            Ok(()) => Outcome::Ready { ifindex },
            Err(e) => {
                let unplugged = self.devices.unplug_all(&[plan.id.as_str()]).await;
                for unplugged in unplugged {
                    if let Err(cleanup) = self.forget_unplugged(unplugged) {
                        let cleanup = chain(&cleanup);
                        tracing::warn!(port = plan.id, cleanup, "cleanup after a failed attach");
                    }
                }
                Outcome::Failed(chain(&PortError::<D::Error>::Attach(e)))
            }
        };
        Report {
            outcome,
            network_us,
            dataplane_us,
        }
    }

    /// Has the datapath forget the device a port had (see
    /// [`Devices::unplug_all`]); an error says why either refused.
    fn forget_unplugged(
        &mut self,
        unplugged: Unplugged<D::Error>,
    ) -> Result<(), PortError<D::Error>> {
        let detached = match unplugged.device {
            Some(ifindex) => tokio::task::block_in_place(|| self.dataplane.detach_port(ifindex))
                .map_err(PortError::Detach),
            None => Ok(()),
        };
        match unplugged.error {
            Some(error) => Err(PortError::Device(error)),
            None => detached,
        }
    }

    /// Has the datapath forget a device the agent deleted.
    fn forget_device(&mut self, ifindex: u32) {
        let deleted = Unplugged {
            device: Some(ifindex),
            error: None,
        };
        if let Err(e) = self.forget_unplugged(deleted) {
            tracing::warn!(ifindex, reason = chain(&e), "forgetting a deleted device");
        }
    }

    /// Applies goal-state messages that arrived together, in order, as one
    /// transaction: each is staged on top of the ones before it, then the
    /// datapath is programmed and the store written once for all of them (a
    /// million neighbors in a hundred messages cost one pass over the maps,
    /// not a hundred). If the datapath or the disk refuses, none is applied.
    /// A message with ports must come first (see
    /// [`Batch::groups_with_previous`]):
    /// a port the kernel refuses is rolled back to its value before the
    /// transaction, which must be the one its own message started from.
    pub async fn apply_group(&mut self, batches: Vec<Batch>) -> Vec<GoalStateOperationReply> {
        tracing::debug!(
            messages = batches.len(),
            resources = batches.iter().map(Batch::len).sum::<usize>(),
            "applying goal state"
        );
        // Staging a big group is long CPU work: off the async workers, so that
        // the transport keeps reading the next messages meanwhile.
        let mut runs: Vec<Run> = tokio::task::block_in_place(|| self.stage_all(batches));

        let staged = Instant::now();
        for run in &mut runs {
            self.plumb_changed_ports(run).await;
        }
        let plumbed = Instant::now();
        let (changed, datapath_us) = self.commit(&mut runs).await;
        tracing::debug!(
            messages = runs.len(),
            resources = runs.iter().map(|run| run.statuses.len()).sum::<usize>(),
            stage_ms = runs
                .first()
                .map_or(0, |run| staged.duration_since(run.started).as_millis()),
            plumb_ms = plumbed.duration_since(staged).as_millis(),
            datapath_ms = datapath_us / 1000,
            commit_ms = plumbed.elapsed().as_millis(),
            "goal state applied"
        );

        self.write().messages_applied += runs.len() as u64;
        for run in &runs {
            for status in &run.statuses {
                let kind = ResourceType::try_from(status.resource_type)
                    .map_or("UNKNOWN", |kind| kind.as_str_name());
                let outcome = OperationStatus::try_from(status.operation_status)
                    .map_or("UNKNOWN", |status| status.as_str_name());
                self.metrics
                    .resources
                    .get_or_create(&ResourceLabels {
                        kind,
                        status: outcome,
                    })
                    .inc();
            }
            self.metrics
                .apply_seconds
                .observe(run.started.elapsed().as_secs_f64());
        }
        if changed {
            self.update_port_gauges();
            self.publish();
        }

        runs.into_iter()
            .map(|run| GoalStateOperationReply {
                format_version: 1,
                message_total_operation_time: micros_since(run.started),
                operation_statuses: run.statuses,
            })
            .collect()
    }

    /// Parses and checks each message's resources against the desired
    /// state, in order, each on top of the ones before.
    fn stage_all(&self, batches: Vec<Batch>) -> Vec<Run> {
        batches
            .into_iter()
            .map(|mut batch| {
                let mut run = Run {
                    started: Instant::now(),
                    statuses: Vec::new(),
                    seen: HashSet::default(),
                    ports: Vec::new(),
                };
                let mut state = self.write();
                let state = &mut *state;
                // Creates and updates top-down, so that a resource finds what
                // it refers to; deletes bottom-up, so that nothing is left
                // dangling.
                for kind in &KINDS {
                    (kind.stage)(&mut run, state, &mut batch, Pass::Upserts);
                }
                for kind in KINDS.iter().rev() {
                    (kind.stage)(&mut run, state, &mut batch, Pass::Deletes);
                }
                run
            })
            .collect()
    }

    async fn plumb_changed_ports(&mut self, run: &mut Run) {
        if run.ports.is_empty() {
            return;
        }
        let ids: Vec<String> = run.ports.iter().map(|work| work.id.clone()).collect();
        let reports = self.plumb(&ids).await;

        let mut refused = Vec::new();
        {
            let mut state = self.write();
            for (work, report) in run.ports.iter().zip(reports) {
                let status = &mut run.statuses[work.status];
                if let Some(report) = &report {
                    status.network_configuration_time = report.network_us;
                    status.dataplane_programming_time = report.dataplane_us;
                    if let Outcome::Failed(reason) = &report.outcome {
                        // Not applied: the desired state goes back to what it
                        // was, and so must the kernel.
                        status.operation_status = OperationStatus::Failure as i32;
                        status.message = reason.clone();
                        state.desired.ports.rollback_id(&work.id);
                        refused.push(work.id.clone());
                        continue;
                    }
                }
                status.state_elapse_time = micros_since(run.started);
                if let Some(port) = record_port(&mut state, work.id.clone(), report) {
                    status.operation_status = port.operation_status() as i32;
                    status.message = port.reason.clone();
                }
            }
        }
        if !refused.is_empty() {
            self.reconcile_ports(refused).await;
        }
    }

    /// Programs the datapath with what the messages changed and persists it,
    /// at once; if the datapath or the disk refuses, nothing of them is
    /// applied.
    /// Says whether the desired state changed, and how long programming the
    /// datapath took (µs).
    async fn commit(&mut self, runs: &mut [Run]) -> (bool, u32) {
        if !self.read().desired.has_pending_writes() {
            return (false, 0);
        }
        // The store writes (and fsyncs) on another thread while the datapath
        // is programmed: both must take the transaction before the reply.
        // It writes straight from the desired state, which stays readable.
        let stored = {
            let (store, state) = (self.store.clone(), self.state.clone());
            tokio::task::spawn_blocking(move || {
                let state = state.read().unwrap_or_else(|p| p.into_inner());
                store.commit(state.desired.pending_writes())
            })
        };
        let mut datapath_us = 0;
        let programmed = self.program_transaction().map_err(NotApplied::Datapath);
        let programmed = programmed.map(|micros| {
            datapath_us = micros;
            // Every resource the messages changed waited for the maps.
            for status in applied_statuses(runs) {
                status.dataplane_programming_time =
                    status.dataplane_programming_time.saturating_add(micros);
            }
        });
        let stored = match stored.await {
            Ok(stored) => stored.map_err(NotApplied::Store),
            Err(e) => Err(NotApplied::StoreTask(e)),
        };
        if programmed.is_err() && stored.is_ok() {
            // The disk took what the datapath refused: put back what it had.
            let undone = tokio::task::block_in_place(|| {
                self.store.commit(self.read().desired.undo_writes())
            });
            if let Err(e) = undone {
                tracing::error!(
                    reason = chain(&e),
                    "the store keeps goal state the datapath refused: a restart would apply it"
                );
            }
        }
        match programmed.and(stored) {
            Ok(()) => {
                self.write().desired.commit();
                (true, datapath_us)
            }
            Err(error) => {
                let reason = chain(&error);
                tracing::error!(reason, "goal-state messages not applied");
                self.write().desired.rollback();
                let ids = runs
                    .iter()
                    .flat_map(|run| &run.ports)
                    .map(|work| work.id.clone())
                    .collect();
                self.reconcile_ports(ids).await;
                if let Err(again) = self.sync_datapath() {
                    tracing::error!(reason = chain(&again), "restoring the datapath failed");
                }
                for status in applied_statuses(runs) {
                    status.operation_status = OperationStatus::Failure as i32;
                    status.message = format!("not applied: {reason}");
                }
                (false, datapath_us)
            }
        }
    }

    /// Programs what the transaction changed: only endpoints if it changed
    /// only neighbors (unless they contend for an address), else the whole
    /// model. Returns how long it took, in microseconds.
    fn program_transaction(&mut self) -> Result<u32, DatapathError> {
        let started = Instant::now();
        let delta = {
            // A read lock: the store reads the state meanwhile.
            let state = self.state.read().unwrap_or_else(|p| p.into_inner());
            forwarding::neighbor_changes(&state.desired, &mut self.claims)
        };
        let Some(delta) = delta else {
            return self.sync_datapath();
        };
        // Hosts new to the maps get the MACs the underlay knows for them.
        let macs: Vec<HostSpec> = self
            .read()
            .host_macs
            .iter()
            .map(|(&ip, &mac)| HostSpec { ip, mac: Some(mac) })
            .collect();
        let synced = tokio::task::block_in_place(|| {
            let synced = self.dataplane.sync_endpoints(&delta.write, &delta.remove)?;
            if synced.is_some() {
                self.dataplane.set_host_macs(&macs)?;
            }
            Ok::<_, DatapathError>(synced)
        })?;
        match synced {
            Some(_) => Ok(micros_since(started)),
            None => self.sync_datapath(),
        }
    }

    /// Makes the eBPF maps say what the desired state and the ready ports
    /// say; returns how long it took, in microseconds.
    fn sync_datapath(&mut self) -> Result<u32, DatapathError> {
        let started = Instant::now();
        let model = forwarding::model(
            &self.state.read().unwrap_or_else(|p| p.into_inner()),
            &mut self.claims,
        );
        let stats = tokio::task::block_in_place(|| self.dataplane.sync(&model))?;
        for conflict in &stats.conflicts {
            tracing::warn!(%conflict, "datapath record left out");
        }
        Ok(micros_since(started))
    }

    fn update_port_gauges(&self) {
        let state = self.read();
        for phase in PortPhase::ALL {
            let count = state.ports.values().filter(|s| s.phase == phase).count();
            self.metrics
                .ports
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }
}

/// The statuses of the operations the messages applied.
fn applied_statuses(runs: &mut [Run]) -> impl Iterator<Item = &mut GoalStateOperationStatus> {
    runs.iter_mut()
        .flat_map(|run| run.statuses.iter_mut())
        .filter(|status| applied(status))
}

/// Whether a status says its operation changed the desired state.
fn applied(status: &GoalStateOperationStatus) -> bool {
    let changing = [
        OperationType::Create,
        OperationType::Update,
        OperationType::Delete,
    ]
    .map(|op| op as i32)
    .contains(&status.operation_type);
    let succeeded = [OperationStatus::Success, OperationStatus::Pending]
        .map(|s| s as i32)
        .contains(&status.operation_status);
    changing && succeeded
}

impl Report {
    /// A port the datapath was not attached to.
    fn new(outcome: Outcome, network_us: u32) -> Report {
        Report {
            outcome,
            network_us,
            dataplane_us: 0,
        }
    }
}

/// Records a port's new runtime status (a `None` report means it has no
/// device here) and returns it, unless the port is no longer desired.
fn record_port(state: &mut AgentState, id: String, report: Option<Report>) -> Option<&PortStatus> {
    if !state.desired.ports.contains(&id) {
        state.ports.remove(&id);
        return None;
    }
    let status = match report {
        Some(report) => PortStatus::from_outcome(&report.outcome, &device_name(&id)),
        None => PortStatus::unbound(),
    };
    Some(state.ports.entry(id).insert_entry(status).into_mut())
}

fn load_kind<R: Validate>(desired: &mut DesiredState, by_kind: &mut StoredByKind) -> usize {
    let mut loaded = 0;
    for (id, record) in by_kind.remove(&(R::KIND as i32)).unwrap_or_default() {
        let parsed = R::Config::decode(record.config.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|config| {
                let operation = OperationType::try_from(record.operation)
                    .map_err(|_| format!("unknown operation {}", record.operation))?;
                let revision = R::config_revision(&config);
                let spec = R::parse(R::check(config)?, operation, desired)?;
                let encoded = record.config.into_boxed_slice();
                Ok(Entry::new(spec, operation, revision, encoded))
            });
        match parsed {
            Ok(entry) => {
                R::table_mut(desired).upsert(id, entry);
                loaded += 1;
            }
            Err(reason) => tracing::warn!(
                kind = R::KIND.as_str_name(),
                id,
                %reason,
                "a stored configuration no longer applies; skipped"
            ),
        }
    }
    loaded
}

/// The stored records, by kind (wire value) then id.
type StoredByKind = HashMap<i32, Vec<(String, Record)>>;

/// What the engine does per kind of resource.
struct Kind {
    load: fn(&mut DesiredState, &mut StoredByKind) -> usize,
    stage: fn(&mut Run, &mut AgentState, &mut Batch, Pass),
}

macro_rules! kinds {
    ($($kind:ty),*) => {
        [$(Kind { load: load_kind::<$kind>, stage: Run::stage::<$kind> }),*]
    };
}

/// The kinds of resources in dependency order: each refers only to kinds
/// before it.
const KINDS: [Kind; 8] = kinds!(
    Vpc,
    Subnet,
    SecurityGroup,
    Router,
    Port,
    Neighbor,
    DhcpEntry,
    Gateway
);

impl Run {
    /// Stages the operations of one kind that belong to `pass`.
    fn stage<R: Validate + Batched>(
        &mut self,
        state: &mut AgentState,
        batch: &mut Batch,
        pass: Pass,
    ) {
        let ops = std::mem::take(R::ops(batch));
        let mut later = Vec::new();
        for op in ops {
            let is_delete = op.operation == OperationType::Delete as i32;
            if (pass == Pass::Deletes) != is_delete {
                later.push(op);
                continue;
            }
            let status = self.stage_one::<R>(state, op);
            self.statuses.push(status);
        }
        *R::ops(batch) = later;
    }

    fn stage_one<R: Validate>(
        &mut self,
        state: &mut AgentState,
        op: Op<R>,
    ) -> GoalStateOperationStatus {
        let mut status = GoalStateOperationStatus {
            resource_type: R::KIND as i32,
            operation_type: op.operation,
            operation_status: OperationStatus::Success as i32,
            ..Default::default()
        };
        let outcome = self.decide::<R>(state, op, &mut status);
        if let Err((code, message)) = outcome {
            status.operation_status = code as i32;
            status.message = message;
        }
        status.state_elapse_time = micros_since(self.started);
        status
    }

    /// Checks and stages one operation; `Err` is the status and reason of an
    /// operation that is not applied.
    fn decide<R: Validate>(
        &mut self,
        state: &mut AgentState,
        op: Op<R>,
        status: &mut GoalStateOperationStatus,
    ) -> Result<(), (OperationStatus, String)> {
        let invalid = |reason: String| (OperationStatus::InvalidArg, reason);
        status.resource_id = op.id.clone();
        let action = op.action.map_err(invalid)?;
        let id = op.id;
        // The keys of a V2 map are unique, and each is its entry's id: only
        // a V1 list can give an id twice.
        if !op.keyed && !self.seen.insert((R::KIND as i32, id.clone())) {
            return Err(invalid(format!(
                "{} {id} appears more than once in this message",
                R::KIND.as_str_name()
            )));
        }

        let revision = op.revision;
        let stored = R::table(&state.desired).get(&id).map(Entry::revision);
        // Revision 0 carries no ordering: it always applies.
        if let Some(stored) = stored
            && revision != 0
            && revision < stored
        {
            return Err((
                OperationStatus::OutOfOrder,
                format!("revision {revision} is older than the applied revision {stored}"),
            ));
        }
        let is_port = R::KIND == ResourceType::Port;

        match action {
            Action::Read => Ok(()),
            Action::Upsert {
                operation,
                checked,
                encoded,
            } => {
                if stored == Some(revision) && revision != 0 {
                    // Already applied: report how the port is doing.
                    if let Some(port) = state.ports.get(&id).filter(|_| is_port) {
                        status.operation_status = port.operation_status() as i32;
                        status.message = port.reason.clone();
                    }
                    return Ok(());
                }
                let spec = R::parse(checked.map_err(invalid)?, operation, &state.desired)
                    .map_err(invalid)?;
                if is_port {
                    self.ports.push(PortWork {
                        id: id.clone(),
                        status: self.statuses.len(),
                    });
                }
                let entry = Entry::new(spec, operation, revision, encoded);
                R::table_mut(&mut state.desired).upsert(id, entry);
                Ok(())
            }
            Action::Delete => {
                if stored.is_none() {
                    return Ok(());
                }
                if let Some(reason) = R::referenced_by(&id, &state.desired) {
                    return Err(invalid(format!("cannot delete: {reason}")));
                }
                R::table_mut(&mut state.desired).remove(&id);
                if is_port {
                    self.ports.push(PortWork {
                        id,
                        status: self.statuses.len(),
                    });
                }
                Ok(())
            }
        }
    }
}
