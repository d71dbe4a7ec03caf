//! Alcor's eBPF datapath: every program the agent loads, in one object so
//! that they share their maps. Built for `bpfel-unknown-none` only.
#![no_std]
#![no_main]

mod port;
mod tunnel;
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
