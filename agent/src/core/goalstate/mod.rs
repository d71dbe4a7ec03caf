//! Goal-state messages as the engine takes them: read from the wire
//! ([`wire`]), normalised into batches ([`batch`]), each resource checked
//! on its own ([`validate`]). The gRPC service that receives them is
//! [`crate::provisioner`].

pub mod batch;
pub mod validate;
pub mod wire;
