//! From the store to the agents: after every change (and every few
//! seconds, for changes another controller instance made), the goal state
//! of every registered host is computed from one snapshot of the store and
//! handed to that host's session, which sends its agent the difference
//! from what the agent acknowledged.
//!
//! One session per host, each the only owner of its connection and of
//! what its agent acknowledged; this task is the only writer of what each
//! host should have (a `watch` per session, so that a session busy with a
//! push only ever picks up the latest state: changes made meanwhile are
//! batched into its next message).

mod session;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::transport::ClientTlsConfig;

use crate::{goalstate, service::Controller};
use session::{Desired, Session};

/// How often the goal states are computed again without a local change:
/// the bound on how late a change made through another instance arrives.
const RESYNC_INTERVAL: Duration = Duration::from_secs(2);

/// The sessions, by host.
pub struct Southbound {
    controller: Arc<Controller>,
    /// TLS to the agents (client certificate and CA), for `https://`
    /// endpoints.
    tls: Option<ClientTlsConfig>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Southbound {
    pub fn new(controller: Arc<Controller>, tls: Option<ClientTlsConfig>) -> Arc<Southbound> {
        Arc::new(Southbound {
            controller,
            tls,
            sessions: Mutex::new(HashMap::new()),
        })
    }

    /// Computes and hands out the goal states until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.controller.watch_changes();
        let mut planner = goalstate::Planner::default();
        loop {
            changes.borrow_and_update();
            match self.controller.inventory().await {
                Ok((revision, inventory)) => {
                    let states = planner.host_states(&inventory);
                    let endpoints = inventory
                        .agents
                        .into_iter()
                        .map(|agent| (agent.host_id, agent.endpoint));
                    self.hand_out(revision, endpoints, states);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the store to compute goal states");
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
            }
        }
    }

    fn hand_out(
        &self,
        revision: u64,
        endpoints: impl Iterator<Item = (String, String)>,
        mut states: std::collections::BTreeMap<String, goalstate::HostState>,
    ) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for (host, endpoint) in endpoints {
            let desired = Desired {
                revision,
                endpoint,
                state: Arc::new(states.remove(&host).unwrap_or_default()),
            };
            match sessions.get(&host) {
                Some(session) => session.want(desired),
                None => {
                    let session = Session::start(
                        host.clone(),
                        desired,
                        self.tls.clone(),
                        self.controller.clone(),
                    );
                    sessions.insert(host, session);
                }
            }
        }
    }

    /// The agent of `host` lost (or never had) what it acknowledged: its
    /// whole state is sent again. (A host without a session yet gets its
    /// whole state anyway when its session starts.)
    pub fn resync(&self, host: &str) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(session) = sessions.get(host) {
            session.resync();
        }
    }
}
