//! The agent's tasks, and how they stop: on SIGTERM the listeners stop
//! taking requests, a goal-state apply in progress finishes and its reply
//! goes out, then every task ends (the long-running ones when told, the
//! others when done), within a bound. No task is detached: each is spawned
//! here, so the agent knows when all are gone.

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFutureOwned},
    task::TaskTracker,
};

#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stopping: CancellationToken,
}

impl Tasks {
    /// Spawns a task that runs to its end: the agent waits for it when it
    /// stops (a goal-state apply, a message's reply).
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Spawns a task that runs until it ends or the agent stops (a loop
    /// over events, a listener), whichever comes first.
    pub fn spawn_until_stopped<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = stopping.cancelled() => {}
            }
        });
    }

    /// Resolves when the agent starts stopping.
    pub fn stopping(&self) -> WaitForCancellationFutureOwned {
        self.stopping.clone().cancelled_owned()
    }

    /// Stops: tells the tasks, then waits for them to end, for at most
    /// `grace`. False if some were still running then.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.stopping.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
