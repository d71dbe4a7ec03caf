//! The goal-state API: Alcor's `GoalStateProvisioner` service, the message
//! normalisation into batches, and the validation of each resource.

pub mod batch;
mod service;
pub mod validate;
pub mod wire;

pub use service::{GoalStateRoutes, GoalStateService};
