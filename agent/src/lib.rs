//! Alcor-in-Rust agent: receives goal state from the controller over gRPC
//! (Alcor's `GoalStateProvisioner`) and makes this host match it.
//!
//! Data flows one way: [`goalstate`] (API, validation) → [`engine`] (desired
//! state in [`desired`], persisted by [`store`]) → reconcilers
//! ([`plumbing`] for devices, [`forwarding`] turning the state into the
//! [`datapath`]'s eBPF maps, [`dhcp`] answering from a view of it) → the
//! kernel. [`underlay`] sets up, once at start, this host's tunnel endpoint
//! that the forwarding model carries. With a controller, [`registration`]
//! registers the agent there and asks for its whole state.

pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod desired;
pub mod dhcp;
pub mod engine;
pub mod error;
pub mod forwarding;
#[cfg(test)]
mod fuzzing;
pub mod goalstate;
pub mod metrics;
pub mod model;
pub mod packet;
pub mod plumbing;
pub mod provisioner;
pub mod registration;
pub mod status;
pub mod store;
pub mod underlay;
