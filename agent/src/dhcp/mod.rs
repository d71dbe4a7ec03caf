//! The built-in DHCP responder (DESIGN.md §6): RFC 2131 for the VMs of
//! this host, answered from the goal state.
//!
//! Data flows one way:
//! - [`view`]: an immutable snapshot built from the desired state and the
//!   ready ports, published by the engine through a [`SharedView`];
//! - [`packet`] handles each: [`frame`] unwraps Ethernet/IPv4/UDP,
//!   [`message`] decodes the request, [`server`] decides (a pure function),
//!   [`reply`] encodes the answer;
//! - [`leases`] records what clients hold, flushed to the state store in
//!   batches off the packet path; [`counters`] count every outcome.

pub mod counters;
pub mod frame;
pub mod leases;
pub mod message;
pub mod options;
pub mod packet;
pub mod reply;
pub mod server;
pub mod view;

#[cfg(test)]
mod testing;

pub use counters::Counters;
pub use leases::{Lease, LeaseState, Leases};
pub use view::{DhcpSettings, DhcpView, SharedView};
