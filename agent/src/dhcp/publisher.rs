//! Rebuilds the responder's [`DhcpView`] when the engine says the state
//! changed. Requests that arrive during a rebuild coalesce into one more, so
//! a burst of messages costs a few rebuilds, not one each, and the engine
//! never waits for them.

use std::sync::Arc;

use tokio::sync::Notify;

use super::{DhcpSettings, DhcpView, Leases, SharedView};
use crate::{
    core::status::{PortPhase, SharedState},
    tasks::Tasks,
};

/// Starts the publisher; the engine notifies the returned handle after each
/// change of the desired state or of the ports.
pub fn spawn(
    tasks: &Tasks,
    state: SharedState,
    view: SharedView,
    leases: Arc<Leases>,
    settings: DhcpSettings,
) -> Arc<Notify> {
    let changed = Arc::new(Notify::new());
    let notified = changed.clone();
    tasks.spawn_until_stopped(async move {
        loop {
            notified.notified().await;
            let state = state.read().unwrap_or_else(|p| p.into_inner());
            let ready = state
                .ports
                .iter()
                .filter(|(_, status)| status.phase == PortPhase::Ready)
                .map(|(id, status)| (id.as_str(), status.ifindex));
            let built = DhcpView::build(&state.desired, ready, &settings);
            view.store(Arc::new(built));
            leases
                .lock()
                .forget_ports(|port_id| state.desired.ports.contains(port_id));
        }
    });
    changed
}
