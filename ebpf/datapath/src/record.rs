//! A trace run's verdict, written where the test run returns it: the skb's
//! control block (`agentctl trace` reads it back).

use alcor_ebpf_common::trace;
use aya_ebpf::programs::TcContext;

/// Writes a trace record (action, detail, ifindex, extra) into the skb's
/// control block.
#[inline(always)]
pub(crate) fn write_record(ctx: &TcContext, (action, detail, target, extra): (u32, u32, u32, u32)) {
    let skb = ctx.skb.skb;
    // SAFETY: cb is five u32 of the context, writable by tc programs.
    unsafe {
        (*skb).cb[0] = action;
        (*skb).cb[1] = detail;
        (*skb).cb[2] = target;
        (*skb).cb[3] = extra;
        (*skb).cb[4] = trace::MAGIC;
    }
}
