//! From the store to the agents. Several controller instances may share
//! one store (etcd); each agent is served by exactly one of them at a time,
//! its owner:
//!
//! - an instance holds a lease it keeps alive, and announces itself under
//!   it; it owns a host by creating the host's owner key (only where there
//!   is none) under the same lease, so that when the instance dies, its
//!   keys go with its lease and the others take its hosts over;
//! - every instance decides from the same view who should own what
//!   ([`crate::ownership`]), claims its unowned hosts and gives up its
//!   excess, one host at a time, stopping the host's session before it
//!   deletes the key;
//! - an instance that cannot renew its lease stops every session before
//!   the lease can have ended (by its own clock, a margin earlier), so that
//!   two instances never push to one agent; the port statuses a session
//!   writes are fenced by its owner key besides.
//!
//! After every change (committed here, or seen by a watch of the store)
//! the goal state of every owned host is computed from one snapshot of the
//! store, whose revision is the goal state's (revisions only grow, across
//! instances too), and handed to that host's session, which sends its
//! agent the difference from what the agent acknowledged. A new session
//! starts by sending the whole state, which an agent served before by
//! another instance finds already applied: a takeover does not disturb
//! forwarding.
//!
//! One session per owned host, each the only owner of its connection and
//! of what its agent acknowledged; the round is the only writer of what
//! each host should have (a `watch` per session, so that a session busy
//! with a push only ever picks up the latest state: changes made meanwhile
//! are batched into its next message).

mod session;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use tokio::time::Instant;
use tonic::transport::ClientTlsConfig;

use crate::{
    goalstate::{self, HostState},
    metrics::{HostLabels, InstanceLabels, Metrics},
    ownership,
    service::{
        Controller,
        agents::HEARTBEAT,
        owners::{View, owner_id},
        resource_prefix,
    },
    store::{Entry, LeaseId},
};
use session::{Desired, Session};

/// An instance's lease: it dies this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the lease is renewed: several renewals may fail before the
/// instance has to stop serving.
const RENEW_EVERY: Duration = Duration::from_secs(1);
/// An instance stops serving this long before its lease can have ended,
/// counted from when it sent its last renewal that succeeded (before etcd
/// received it): clocks may drift that much over a TTL, and sessions take
/// a moment to stop.
const LEASE_MARGIN: Duration = Duration::from_secs(1);
/// How long a given-up host's session may take to finish the message in
/// flight before it is cut.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// Goal states are computed again this often without any change seen: a
/// bound on what a lost wake-up could cost.
const SAFETY_INTERVAL: Duration = Duration::from_secs(30);
/// Claims sent at once when many hosts are unowned.
const CLAIMS_IN_FLIGHT: usize = 16;
/// Pause before a failed watch of the store is opened again.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// The sessions, by host, and this instance's part in sharing them.
pub struct Southbound {
    controller: Arc<Controller>,
    /// TLS to the agents (client certificate and CA), for `https://`
    /// endpoints.
    tls: Option<ClientTlsConfig>,
    /// This instance's id: what its owner keys say.
    id: String,
    metrics: Arc<Metrics>,
    lease: Mutex<Option<Held>>,
    state: Mutex<State>,
    /// A round is due: the store changed, the lease came or went, a host
    /// was given up.
    wake: tokio::sync::Notify,
    /// The store revision the last round read: a change up to it (this
    /// instance's own commits come back through the watch) needs no
    /// other round.
    seen: AtomicU64,
}

/// The lease this instance holds.
#[derive(Clone, Copy, Debug)]
struct Held {
    id: LeaseId,
    /// Until when this instance may act as the owner of its hosts.
    valid_until: Instant,
}

#[derive(Default)]
struct State {
    serving: HashMap<String, Served>,
    /// Hosts being given up: their session is stopping, then their key is
    /// deleted (at the revision given, once it is): until a view as of that
    /// revision is seen, a stale view must not start them again.
    releasing: HashMap<String, Option<u64>>,
    /// Shutting down: nothing starts any more.
    leaving: bool,
}

/// A host this instance serves.
struct Served {
    session: Session,
    /// Its owner key, as claimed.
    owner: Entry,
    /// The revision of the last request for its whole state acted on.
    resync_seen: u64,
    _gauge: Gauged,
}

/// The host's `agent_sessions` gauge, at 1 while this lives.
struct Gauged {
    metrics: Arc<Metrics>,
    labels: HostLabels,
}

impl Gauged {
    fn new(metrics: &Arc<Metrics>, host: &str) -> Gauged {
        let labels = HostLabels { host: host.into() };
        metrics.agent_sessions.get_or_create(&labels).set(1);
        Gauged {
            metrics: metrics.clone(),
            labels,
        }
    }
}

impl Drop for Gauged {
    fn drop(&mut self) {
        self.metrics.agent_sessions.remove(&self.labels);
    }
}

/// Aborts a task when dropped: the southbound's helpers end with it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Southbound {
    /// A southbound for the instance `id`.
    pub fn new(
        controller: Arc<Controller>,
        tls: Option<ClientTlsConfig>,
        id: String,
        metrics: Arc<Metrics>,
    ) -> Arc<Southbound> {
        metrics
            .instance
            .get_or_create(&InstanceLabels { id: id.clone() })
            .set(1);
        Arc::new(Southbound {
            controller,
            tls,
            id,
            metrics,
            lease: Mutex::new(None),
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            seen: AtomicU64::new(0),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Held>> {
        self.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The hosts whose agents this instance pushes to now.
    pub fn serving(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.state().serving.keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// Keeps the lease, follows the store, and serves this instance's
    /// hosts until the process ends or [`Southbound::leave`].
    pub async fn run(self: Arc<Self>) {
        let _lease = AbortOnDrop(tokio::spawn(self.clone().keep_lease()));
        let _watch = AbortOnDrop(tokio::spawn(self.clone().follow_store()));
        let mut local = self.controller.watch_changes();
        // Kept from one round to the next: what did not change is not
        // computed again, and compares by pointer.
        let mut planner = goalstate::Planner::default();
        loop {
            local.borrow_and_update();
            self.round(&mut planner).await;
            if self.state().leaving {
                return;
            }
            let safety = Instant::now() + SAFETY_INTERVAL;
            loop {
                // Renewals move the deadline: only a lease that really
                // lapsed calls for a round (which stops every session).
                let deadline = self.valid_lease().map(|held| held.valid_until);
                let lapsed = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = local.changed() => {
                        if *local.borrow_and_update() > self.seen.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    () = self.wake.notified() => break,
                    () = tokio::time::sleep_until(safety) => break,
                    () = lapsed => {
                        if self.valid_lease().is_none() {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Stops every session (each after its message in flight) and ends
    /// the lease, so that the other instances take the agents over now
    /// rather than when the lease would have run out.
    pub async fn leave(&self) {
        let sessions: Vec<Session> = {
            let mut state = self.state();
            state.leaving = true;
            state
                .serving
                .drain()
                .map(|(_, served)| served.session)
                .collect()
        };
        let stopping = sessions.into_iter().map(|session| session.stop(STOP_LIMIT));
        futures::future::join_all(stopping).await;
        let held = self.held().take();
        if let Some(held) = held {
            match self.controller.revoke_lease(held.id).await {
                Ok(()) => {
                    tracing::info!(instance = %self.id, "left: the other instances take its agents over")
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot end the lease: its agents are taken over when it runs out")
                }
            }
        }
    }

    /// The lease, if this instance may act on it now.
    fn valid_lease(&self) -> Option<Held> {
        self.held().filter(|held| Instant::now() < held.valid_until)
    }

    /// One pass: reads the store, claims and gives up hosts, and hands out
    /// the goal states of the hosts this instance serves.
    async fn round(self: &Arc<Self>, planner: &mut goalstate::Planner) {
        let Some(held) = self.valid_lease() else {
            self.stop_serving("this instance holds no valid lease");
            return;
        };
        let view = match self.controller.view().await {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(%error, "cannot read the store to compute goal states");
                return;
            }
        };
        self.seen.fetch_max(view.revision, Ordering::Relaxed);
        let plan = ownership::plan(
            &self.id,
            view.inventory
                .agents
                .iter()
                .map(|agent| agent.host_id.as_str()),
            &view.owner_ids(),
            &view.instances,
        );
        // A whole dead instance's hosts at once: a few claims in flight.
        let claimed: Vec<(String, Entry)> = futures::stream::iter(plan.claim)
            .map(|host| async move {
                match self.controller.claim_host(&host, &self.id, held.id).await {
                    Ok(Some(owner)) => {
                        self.metrics.agent_claims.inc();
                        Some((host, owner))
                    }
                    // Another instance got there first.
                    Ok(None) => None,
                    Err(error) => {
                        tracing::warn!(%host, %error, "cannot claim a host");
                        None
                    }
                }
            })
            .buffer_unordered(CLAIMS_IN_FLIGHT)
            .filter_map(std::future::ready)
            .collect()
            .await;
        // Claims take time: the lease must still hold for what follows.
        if self.valid_lease().is_none() {
            self.stop_serving("the lease ran out during a round");
            return;
        }
        let states = planner.host_states(&view.inventory);
        self.hand_out(&view, states, claimed, plan.release);
    }

    /// Starts, updates and stops sessions as `view` (and the claims made
    /// since) say, handing out `states` (computed from `view`).
    fn hand_out(
        self: &Arc<Self>,
        view: &View,
        mut states: BTreeMap<String, HostState>,
        claimed: Vec<(String, Entry)>,
        release: Option<String>,
    ) {
        let mut state = self.state();
        if state.leaving {
            return;
        }
        // Given up, and deleted as of this view: forgotten.
        state
            .releasing
            .retain(|_, deleted| deleted.is_none_or(|revision| revision > view.revision));
        let mut ours: BTreeMap<String, Entry> = view
            .owners
            .iter()
            .filter(|(_, owner)| owner_id(owner) == self.id)
            .map(|(host, owner)| (host.clone(), owner.clone()))
            .collect();
        ours.extend(claimed);
        ours.retain(|host, _| !state.releasing.contains_key(host));
        // A session under an owner key that is no longer ours (or no longer
        // the one it was started under) goes at once.
        state.serving.retain(|host, served| {
            let kept = ours
                .get(host)
                .is_some_and(|owner| owner.mod_revision == served.owner.mod_revision);
            if !kept {
                tracing::info!(%host, "no longer serving the agent: its owner key changed");
            }
            kept
        });
        if let Some(host) = release
            && let Some(owner) = ours.remove(&host)
        {
            let session = state.serving.remove(&host).map(|served| served.session);
            state.releasing.insert(host.clone(), None);
            tokio::spawn(self.clone().release(host, owner, session));
        }
        let endpoints: HashMap<&str, &str> = view
            .inventory
            .agents
            .iter()
            .map(|agent| (agent.host_id.as_str(), agent.endpoint.as_str()))
            .collect();
        for (host, owner) in ours {
            // An owner key without an agent record: nothing to push to.
            let Some(endpoint) = endpoints.get(host.as_str()) else {
                continue;
            };
            let desired = Desired {
                revision: view.revision,
                endpoint: endpoint.to_string(),
                state: Arc::new(states.remove(&host).unwrap_or_default()),
            };
            let resync = view.resyncs.get(&host).copied().unwrap_or(0);
            match state.serving.get_mut(&host) {
                Some(served) => {
                    served.session.want(desired);
                    if resync > served.resync_seen {
                        served.resync_seen = resync;
                        served.session.resync();
                    }
                }
                None => {
                    tracing::info!(%host, instance = %self.id, "serving the agent");
                    let gauge = Gauged::new(&self.metrics, &host);
                    // A new session sends the whole state anyway.
                    let session = Session::start(
                        host.clone(),
                        desired,
                        owner.clone(),
                        self.tls.clone(),
                        self.controller.clone(),
                    );
                    state.serving.insert(
                        host,
                        Served {
                            session,
                            owner,
                            resync_seen: resync,
                            _gauge: gauge,
                        },
                    );
                }
            }
        }
    }

    /// Gives `host` up: its session stops after its message in flight,
    /// then its owner key goes, and the next owner may start.
    async fn release(self: Arc<Self>, host: String, owner: Entry, session: Option<Session>) {
        tracing::info!(%host, "giving the agent up to another instance");
        if let Some(session) = session {
            session.stop(STOP_LIMIT).await;
        }
        let deleted = match self.controller.release_host(&owner).await {
            Ok(Some(revision)) => {
                self.metrics.agent_releases.inc();
                Some(revision)
            }
            // Not ours any more (our lease ended meanwhile).
            Ok(None) => Some(0),
            // Still ours: the next round serves it again.
            Err(error) => {
                tracing::warn!(%host, %error, "cannot give the agent up");
                Some(0)
            }
        };
        self.state().releasing.insert(host, deleted);
        self.wake.notify_one();
    }

    /// Drops every session at once: this instance may no longer be the
    /// owner of anything.
    fn stop_serving(&self, reason: &str) {
        let mut state = self.state();
        if !state.serving.is_empty() {
            tracing::warn!(
                agents = state.serving.len(),
                reason,
                "stopping every session, until the lease is renewed"
            );
            state.serving.clear();
        }
    }

    /// Keeps this instance's lease alive; when it is lost, takes a new one
    /// and announces the instance again.
    async fn keep_lease(self: Arc<Self>) {
        let mut failing = false;
        loop {
            if self.state().leaving {
                return;
            }
            let lease = self.held().map(|held| held.id);
            let Some(lease) = lease else {
                match self.join().await {
                    Ok(lease) => {
                        tracing::info!(instance = %self.id, lease = lease.0, "joined the controller instances");
                        failing = false;
                        self.wake.notify_one();
                    }
                    Err(error) => {
                        if !std::mem::replace(&mut failing, true) {
                            tracing::warn!(%error, "cannot take a lease: serving no agent until it can");
                        }
                        tokio::time::sleep(RENEW_EVERY).await;
                    }
                }
                continue;
            };
            tokio::time::sleep(RENEW_EVERY).await;
            let sent = Instant::now();
            match tokio::time::timeout(LEASE_TTL, self.controller.keep_lease(lease)).await {
                Ok(Ok(true)) => {
                    let lapsed = {
                        let mut held = self.held();
                        let lapsed = held.is_none_or(|held| held.valid_until <= Instant::now());
                        if held.is_some_and(|held| held.id == lease) {
                            *held = Some(Held {
                                id: lease,
                                valid_until: sent + LEASE_TTL - LEASE_MARGIN,
                            });
                        }
                        lapsed
                    };
                    if std::mem::replace(&mut failing, false) || lapsed {
                        tracing::info!("the lease is renewed again");
                        self.wake.notify_one();
                    }
                }
                Ok(Ok(false)) => {
                    tracing::warn!(
                        lease = lease.0,
                        "the lease has ended (this instance was cut off too long): its agents \
                         went to the others; joining again"
                    );
                    *self.held() = None;
                    self.wake.notify_one();
                }
                Ok(Err(error)) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "cannot renew the lease: the agents are given up if it runs out");
                    }
                }
                Err(_) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            "renewing the lease takes too long: the agents are given up if it runs out"
                        );
                    }
                }
            }
        }
    }

    /// Takes a lease and announces this instance under it.
    async fn join(&self) -> crate::error::ApiResult<LeaseId> {
        let sent = Instant::now();
        let lease = self.controller.grant_lease(LEASE_TTL).await?;
        if let Err(error) = self.controller.announce(&self.id, lease).await {
            let _ = self.controller.revoke_lease(lease).await;
            return Err(error);
        }
        *self.held() = Some(Held {
            id: lease,
            valid_until: sent + LEASE_TTL - LEASE_MARGIN,
        });
        Ok(lease)
    }

    /// Wakes a round at every change of the store but heartbeats
    /// (another instance's, or this one's).
    async fn follow_store(self: Arc<Self>) {
        let heartbeats = resource_prefix(HEARTBEAT);
        let mut failing = false;
        loop {
            match self.controller.watch_store().await {
                Ok(mut changes) => {
                    if std::mem::replace(&mut failing, false) {
                        tracing::info!("watching the store again");
                    }
                    // Whatever changed before the watch began is read now.
                    self.wake.notify_one();
                    while let Some(change) = changes.next().await {
                        match change {
                            Ok(change) => {
                                let news = change.revision > self.seen.load(Ordering::Relaxed)
                                    && change.keys.iter().any(|key| !key.starts_with(&heartbeats));
                                if news {
                                    self.wake.notify_one();
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "the watch of the store failed: watching again");
                                break;
                            }
                        }
                    }
                }
                Err(error) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, "cannot watch the store: changes other instances make wait for the next round");
                    }
                }
            }
            tokio::time::sleep(WATCH_RETRY).await;
        }
    }
}
