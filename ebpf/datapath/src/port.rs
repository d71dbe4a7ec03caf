//! The port program: tc on every port device (the host side of a VM's veth,
//! or its tap). The device's ingress carries what the VM sent
//! ([`port_from_vm`]), its egress what goes to the VM ([`port_to_vm`]).
//!
//! For now it counts traffic per port and lets every frame through; this is
//! where anti-spoofing, ARP and ICMP answered in place, DHCP handed to the
//! agent and redirection to local or remote VMs will grow.

use alcor_ebpf_common::{MAX_PORTS, PortCounters};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK},
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};

/// Port ifindex → counters. Pinned so that counts survive agent restarts.
#[map]
static PORT_COUNTERS: PerCpuHashMap<u32, PortCounters> = PerCpuHashMap::pinned(MAX_PORTS, 0);

/// tc ingress of a port device: frames the VM sent.
#[classifier]
pub fn port_from_vm(ctx: TcContext) -> i32 {
    count(&ctx, Direction::FromVm);
    TC_ACT_OK
}

/// tc egress of a port device: frames on their way to the VM.
#[classifier]
pub fn port_to_vm(ctx: TcContext) -> i32 {
    count(&ctx, Direction::ToVm);
    TC_ACT_OK
}

#[derive(Clone, Copy)]
enum Direction {
    FromVm,
    ToVm,
}

#[inline(always)]
fn add(counters: &mut PortCounters, direction: Direction, bytes: u64) {
    match direction {
        Direction::FromVm => {
            counters.rx_packets += 1;
            counters.rx_bytes += bytes;
        }
        Direction::ToVm => {
            counters.tx_packets += 1;
            counters.tx_bytes += bytes;
        }
    }
}

#[inline(always)]
fn count(ctx: &TcContext, direction: Direction) {
    // SAFETY: the context is the kernel's `__sk_buff`, valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let bytes = u64::from(ctx.len());
    if let Some(counters) = PORT_COUNTERS.get_ptr_mut(ifindex) {
        // SAFETY: the value is this CPU's slot of a per-CPU map, and tc
        // programs do not preempt each other on a CPU.
        add(unsafe { &mut *counters }, direction, bytes);
        return;
    }
    let mut first = PortCounters::default();
    add(&mut first, direction, bytes);
    // NOEXIST: a program on another CPU may have created the entry since our
    // lookup; then count into it instead of overwriting it.
    if PORT_COUNTERS
        .insert(ifindex, first, u64::from(BPF_NOEXIST))
        .is_err()
        && let Some(counters) = PORT_COUNTERS.get_ptr_mut(ifindex)
    {
        // SAFETY: as above.
        add(unsafe { &mut *counters }, direction, bytes);
    }
}
