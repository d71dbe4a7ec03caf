//! Types and names shared by the eBPF programs (built for `bpfel-unknown-none`)
//! and the agent that loads them. Everything here is `#[repr(C)]` plain data:
//! its layout is the contract between kernel and user space.
#![no_std]

/// Names of the programs in the datapath object, as user space looks them up.
/// They are the names of the `#[classifier]` functions in `alcor-ebpf-datapath`.
pub mod programs {
    /// tc ingress of a port device: frames the VM sent.
    pub const PORT_FROM_VM: &str = "port_from_vm";
    /// tc egress of a port device: frames on their way to the VM.
    pub const PORT_TO_VM: &str = "port_to_vm";
}

/// Names of the maps in the datapath object; pinned maps are pinned under
/// these names in the agent's pin directory.
pub mod maps {
    /// Per-CPU hash: port ifindex (`u32`) → [`PortCounters`](super::PortCounters).
    pub const PORT_COUNTERS: &str = "PORT_COUNTERS";
}

/// Most port devices one agent serves; sizes the per-port maps.
pub const MAX_PORTS: u32 = 65536;

/// Traffic seen by the port program on one port device. `rx` is what the VM
/// sent (the device's ingress), `tx` what was sent towards the VM (its egress).
/// Packets are socket buffers: a GSO super-packet counts once, with all its
/// bytes. Bytes are L2 frame lengths, without FCS.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

// SAFETY: `#[repr(C)]`, only `u64` fields, so no padding and every bit
// pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortCounters {}
