//! What the responder received, sent and dropped, as plain atomics: the
//! packet path bumps them without locks, and the engine reads them for
//! Prometheus and `agentctl`. What is counted (message types, drop reasons)
//! is named in `alcor_types::dhcp`, which `agentctl` shares.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use alcor_types::dhcp::{ClientMessage, DropReason, ServerMessage};

/// Something that happened to a message that needs no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Dropped(DropReason),
    /// A client declined its address (RFC 2131 §4.3.3): marked unavailable.
    LeaseDeclined,
    /// A client gave its address back.
    LeaseReleased,
}

#[derive(Debug, Default)]
pub struct Counters {
    received: [AtomicU64; ClientMessage::ALL.len()],
    sent: [AtomicU64; ServerMessage::ALL.len()],
    dropped: [AtomicU64; DropReason::ALL.len()],
    leases_declined: AtomicU64,
    leases_released: AtomicU64,
    /// Replies the kernel refused to send (device gone, queue full).
    send_errors: AtomicU64,
}

impl Counters {
    pub fn count_received(&self, message: ClientMessage) {
        self.received[message as usize].fetch_add(1, Relaxed);
    }

    pub fn count_sent(&self, message: ServerMessage) {
        self.sent[message as usize].fetch_add(1, Relaxed);
    }

    pub fn count_event(&self, event: Event) {
        let counter = match event {
            Event::Dropped(reason) => &self.dropped[reason as usize],
            Event::LeaseDeclined => &self.leases_declined,
            Event::LeaseReleased => &self.leases_released,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn count_send_error(&self) {
        self.send_errors.fetch_add(1, Relaxed);
    }

    pub fn received(&self, message: ClientMessage) -> u64 {
        self.received[message as usize].load(Relaxed)
    }

    pub fn sent(&self, message: ServerMessage) -> u64 {
        self.sent[message as usize].load(Relaxed)
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    /// Every drop whose input was malformed, whatever the reason.
    pub fn malformed(&self) -> u64 {
        DropReason::ALL
            .iter()
            .filter(|reason| reason.is_malformed())
            .map(|reason| self.dropped(*reason))
            .sum()
    }

    pub fn leases_declined(&self) -> u64 {
        self.leases_declined.load(Relaxed)
    }

    pub fn leases_released(&self) -> u64 {
        self.leases_released.load(Relaxed)
    }

    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_on_their_own_counter() {
        let counters = Counters::default();
        counters.count_received(ClientMessage::Inform);
        counters.count_sent(ServerMessage::Nak);
        counters.count_event(Event::Dropped(DropReason::OptionPastEnd));
        counters.count_event(Event::Dropped(DropReason::WrongVpc));
        counters.count_event(Event::LeaseReleased);
        assert_eq!(counters.received(ClientMessage::Inform), 1);
        assert_eq!(counters.received(ClientMessage::Discover), 0);
        assert_eq!(counters.sent(ServerMessage::Nak), 1);
        assert_eq!(counters.dropped(DropReason::WrongVpc), 1);
        assert_eq!(counters.malformed(), 1);
        assert_eq!(counters.leases_released(), 1);
        assert_eq!(counters.leases_declined(), 0);
    }
}
