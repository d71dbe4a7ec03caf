//! Alcor-in-Rust's controller: a Neutron-compatible API over a store, with
//! address allocation that holds across controller instances.

pub mod allocate;
pub mod api;
pub mod body;
pub mod error;
pub mod model;
pub mod service;
pub mod store;
