//! The validated domain model of a goal state: what the agent reasons about
//! once the wire format has been parsed (`goalstate::validate`).

mod resources;

pub use alcor_types::{Mac, Vni, parse_ipv4, parse_ipv4_net};
pub use resources::*;
