//! Alcor-in-Rust's controller: a Neutron-compatible API over a store, with
//! address allocation that holds across controller instances.

pub mod allocate;
pub mod api;
pub mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model;
pub mod server;
pub mod service;
pub mod store;
