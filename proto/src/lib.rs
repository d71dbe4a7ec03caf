//! Wire types of Alcor's goal-state protocol and of the agent's control socket.
//!
//! [`schema`] is package `alcor.schema`, wire-compatible with Alcor: same
//! message names, field numbers and enum values. Our own additions use field
//! numbers from 100 up. [`control`] is the agent's local API for `agentctl`;
//! [`registry`] is the controller's service where agents register.
//! Every message has serde implementations of the canonical protobuf JSON
//! mapping (enum values by name, field names as in the .proto files).

#[cfg(feature = "builders")]
pub mod builders;
pub mod codec;

// The module tree mirrors the protobuf packages, which the generated code
// relies on to refer across packages.
mod alcor {
    pub mod schema {
        tonic::include_proto!("alcor.schema");
        include!(concat!(env!("OUT_DIR"), "/alcor.schema.serde.rs"));
    }
    pub mod controller {
        pub mod v1 {
            tonic::include_proto!("alcor.controller.v1");
            include!(concat!(env!("OUT_DIR"), "/alcor.controller.v1.serde.rs"));
        }
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("alcor.agent.v1");
            include!(concat!(env!("OUT_DIR"), "/alcor.agent.v1.serde.rs"));
        }
    }
}

pub use alcor::agent::v1 as control;
pub use alcor::controller::v1 as registry;
pub use alcor::schema;
