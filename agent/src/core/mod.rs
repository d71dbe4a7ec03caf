//! The agent's pure core: what it is asked for and what it decides, with no
//! tokio, aya or netlink in it, so that all of it is unit-tested without
//! root.
//!
//! - [`model`]: the resources, parsed (`Mac`, `Vni`, `Ipv4Net`, not strings);
//! - [`goalstate`]: goal-state messages read in place ([`goalstate::wire`]),
//!   checked ([`goalstate::validate`]) and grouped ([`goalstate::batch`]);
//! - [`desired`]: the desired state, staged and committed in transactions;
//! - [`status`]: the agent's state: the desired state and how each port is
//!   doing on this host;
//! - [`devices`]: what the engine asks of a port's devices, and what came
//!   of it;
//! - [`forwarding`]: what the datapath must do ([`spec::DatapathModel`]),
//!   computed from the state.

pub mod desired;
pub mod devices;
pub mod forwarding;
pub mod goalstate;
pub mod model;
pub mod spec;
pub mod status;
