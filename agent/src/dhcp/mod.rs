//! The built-in DHCP responder (DESIGN.md §6): RFC 2131 for the VMs of
//! this host, answered from the goal state.
//!
//! Data flows one way:
//! - [`view`]: an immutable snapshot built from the desired state and the
//!   ready ports, rebuilt by [`publisher`] when the engine says the state
//!   changed, and shared through a [`SharedView`];
//! - [`socket`] receives frames in batches from every port device;
//! - [`packet`] handles each: [`frame`] unwraps Ethernet/IPv4/UDP,
//!   [`message`] decodes the request, [`server`] decides (a pure function),
//!   [`reply`] encodes the answer;
//! - [`leases`] records what clients hold, flushed to the state store in
//!   batches off the packet path; [`counters`] count every outcome.
//!
//! ```ignore
//! let view: SharedView = Arc::new(ArcSwap::from_pointee(DhcpView::build(&desired, ready, &settings)));
//! let leases = Arc::new(Leases::load(store)?);
//! let responder = Responder::start(view.clone(), leases, counters)?;
//! // after each apply:
//! view.store(Arc::new(DhcpView::build(&desired, ready, &settings)));
//! ```

pub mod counters;
pub mod frame;
pub mod leases;
pub mod message;
pub mod options;
pub mod packet;
pub mod publisher;
pub mod reply;
pub mod server;
pub mod socket;
pub mod view;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testing;

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

pub use counters::Counters;
pub use leases::{Lease, LeaseState, Leases};
pub use view::{DhcpSettings, DhcpView, SharedView};

use leases::{Flusher, unix_now};
use socket::{BATCH, Outgoing, PacketSocket, ReceiveBatch};

#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error("opening the DHCP packet socket: {0}")]
    Socket(#[source] io::Error),
    #[error("starting a DHCP responder thread: {0}")]
    Thread(#[source] io::Error),
}

/// The running responder: a receive thread and a lease flusher. Stopping
/// it (or dropping it) ends both, after a last flush of the leases.
pub struct Responder {
    stop: Arc<AtomicBool>,
    receiver: Option<thread::JoinHandle<()>>,
    flusher: Option<Flusher>,
}

impl Responder {
    /// Opens the packet socket in the calling thread's network namespace
    /// (the agent's) and starts answering with whatever view is published.
    pub fn start(
        view: SharedView,
        leases: Arc<Leases>,
        counters: Arc<Counters>,
    ) -> Result<Responder, ResponderError> {
        let socket = PacketSocket::open().map_err(ResponderError::Socket)?;
        let flusher = Flusher::start(leases.clone()).map_err(ResponderError::Thread)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let receiver = thread::Builder::new()
            .name("dhcp-responder".into())
            .spawn(move || serve(&socket, &view, &leases, &counters, &stopping))
            .map_err(ResponderError::Thread)?;
        Ok(Responder {
            stop,
            receiver: Some(receiver),
            flusher: Some(flusher),
        })
    }

    /// Stops answering, then flushes the leases.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(receiver) = self.receiver.take()
            && receiver.join().is_err()
        {
            tracing::error!("the DHCP responder thread panicked");
        }
        if let Some(flusher) = self.flusher.take() {
            flusher.stop();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The receive loop: a batch in, the view and the lease table taken once
/// for the whole batch, the replies out in one call.
fn serve(
    socket: &PacketSocket,
    view: &SharedView,
    leases: &Leases,
    counters: &Counters,
    stop: &AtomicBool,
) {
    let mut batch = ReceiveBatch::default();
    let mut replies: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(2048)).collect();
    while !stop.load(Ordering::Relaxed) {
        let received = match socket.receive(&mut batch) {
            Ok(received) => received,
            Err(error) => {
                tracing::error!(%error, "receiving DHCP frames");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if received == 0 {
            continue;
        }
        let view = view.load();
        let now = unix_now();
        // (ifindex, message type, reply buffer) of each reply.
        let mut answered = Vec::with_capacity(received);
        {
            let mut table = leases.lock();
            for index in 0..received {
                let Some((frame, ifindex)) = batch.frame(index) else {
                    counters.count_event(counters::Event::Dropped(counters::DropReason::Truncated));
                    continue;
                };
                let out = &mut replies[answered.len()];
                if let Some(kind) =
                    packet::handle_frame(frame, ifindex, &view, &mut table, counters, now, out)
                {
                    answered.push((ifindex, kind));
                }
            }
        }
        let outgoing: Vec<Outgoing<'_>> = answered
            .iter()
            .zip(&replies)
            .map(|((ifindex, _), frame)| Outgoing {
                ifindex: *ifindex,
                frame,
            })
            .collect();
        socket.send(&outgoing, |index, result| match result {
            Ok(()) => counters.count_sent(answered[index].1),
            Err(error) => {
                counters.count_send_error();
                tracing::debug!(%error, ifindex = answered[index].0, "DHCP reply not sent");
            }
        });
    }
}
