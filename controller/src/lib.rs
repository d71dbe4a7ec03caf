//! Alcor-in-Rust's controller: a Neutron-compatible API over a store, with
//! address allocation that holds across controller instances, and the
//! goal state of every host pushed to its agent.

pub mod allocate;
pub mod api;
pub mod body;
pub mod config;
pub mod error;
pub mod goalstate;
pub mod metrics;
pub mod model;
pub mod ownership;
pub mod registry;
pub mod server;
pub mod service;
pub mod southbound;
pub mod store;
