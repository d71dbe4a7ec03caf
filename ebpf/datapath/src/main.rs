//! Alcor's eBPF datapath: every program the agent loads, in one object so
//! that they share their maps. Built for `bpfel-unknown-none` only.
//!
//! Laid out in layers, each using only those above it:
//! - [`headers`]: packet headers, bounded reads, checksums;
//! - [`maps`]: the maps the agent pins and fills, and the counters;
//! - [`record`]: a trace run's verdict;
//! - [`encap`]: VXLAN encapsulation;
//! - one file per attach point: [`port`] (tc on the port devices: what the
//!   VMs send and receive), [`underlay`] (tc and XDP on the underlay device,
//!   tc on the agent's VXLAN device: what the other hosts send).
#![no_std]
#![no_main]

mod encap;
mod headers;
mod maps;
mod port;
mod record;
mod underlay;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach a panic, so this is
    // never called; `no_std` still requires a handler.
    loop {}
}

/// GPL-compatible, so that GPL-only helpers are available to the programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
