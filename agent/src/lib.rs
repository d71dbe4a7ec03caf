//! Alcor-in-Rust agent: receives goal state from the controller over gRPC
//! (Alcor's `GoalStateProvisioner`) and makes this host match it.
//!
//! Data flows one way: the API ([`provisioner`], the gRPC service) → the
//! pure [`core`] (goal-state messages read and checked, the desired state,
//! the forwarding model) → the [`engine`], which applies them through
//! traits it owns → the adapters ([`plumbing`] for devices, [`datapath`]
//! for the eBPF maps, [`store`] for the disk, [`dhcp`] answering from a view
//! of the state) → the kernel. [`underlay`] sets up, once at start, this
//! host's tunnel endpoint that the forwarding model carries. With a
//! controller, [`registration`] registers the agent there and asks for its
//! whole state. [`control`] and [`metrics`] read, never write.

pub mod config;
pub mod control;
pub mod core;
pub mod daemon;
pub mod datapath;
pub mod dhcp;
pub mod engine;
pub mod error;
#[cfg(test)]
mod fuzzing;
pub mod linger;
pub mod metrics;
pub mod packet;
pub mod plumbing;
pub mod provisioner;
pub mod registration;
pub mod store;
pub mod tasks;
#[cfg(test)]
mod testing;
pub mod underlay;
