//! VXLAN encapsulation (RFC 7348) for frames whose destination is on
//! another host, called by the port program once it has decided (and, if
//! routed, rewritten) the frame; it says how the frame leaves
//! ([`Tunneled`]), and the port program decides with that.
//!
//! `bpf_skb_adjust_room(+50, BPF_ADJ_ROOM_MAC, ...)` makes room after the
//! Ethernet header with the encapsulation flags, which tell the kernel the
//! new headers (outer IPv4, UDP, an inner Ethernet header of 14 bytes), so
//! that a GSO super-packet stays one (`SKB_GSO_UDP_TUNNEL` is added, the
//! inner MSS is kept: `FIXED_GSO`) and is segmented, outer headers and all,
//! only where a device needs it. The 64 bytes from the start are then
//! written at once: outer Ethernet, IPv4, UDP, VXLAN and the inner Ethernet
//! header.
//!
//! Outer headers: IPv4 from this host's underlay address to the remote
//! host's, TTL 64, DF clear and a random identification, as the kernel's
//! own VXLAN device sends by default (a smaller path MTU in the underlay
//! then costs fragmentation, not a black hole); UDP from a port chosen by a
//! hash of the inner flow (so that ECMP spreads flows and keeps each on one
//! path) to 4789, checksum 0 (RFC 7348 allows it for IPv4); VXLAN with the
//! VNI flag and the port's VNI.
//!
//! Next hop: if the agent gave a MAC for the remote host (or for the
//! underlay's gateway), the outer MACs are written here and the frame goes
//! out with `bpf_redirect`; else `bpf_redirect_neigh` lets the kernel route
//! it and fill in the MACs from its neighbour table.
//!
//! Neither fragments: the port program sends here only what fits the
//! underlay once encapsulated. A bigger packet that may be fragmented goes
//! through the agent's VXLAN device instead ([`through_device`]): the
//! kernel encapsulates it from the tunnel key set here and fragments the
//! outer packet; the other host reassembles it and its `vxlan_in`
//! delivers it.

use alcor_ebpf_common::{
    DropReason, HOST_MAC, NextHop, UNDERLAY_GATEWAY_MAC, UnderlayInfo, VXLAN_OVERHEAD, VXLAN_PORT,
    VXLAN_SPORT_MAX, VXLAN_SPORT_MIN, VXLAN_TTL,
};
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_tunnel_key,
    },
    helpers::{bpf_get_hash_recalc, bpf_get_prandom_u32, bpf_skb_set_tunnel_key},
    programs::TcContext,
};

use crate::{
    headers::{
        ETH_LEN, ETH_P_IP, EthHdr, IPPROTO_UDP, Ipv4Hdr, UdpHdr, VXLAN_FLAG_VNI, VxlanHdr,
        ipv4_checksum,
    },
    maps::{HOSTS, UNDERLAY, with_underlay_stats},
};

/// How an encapsulated frame leaves: out of the device `ifindex` (the
/// underlay, or the agent's VXLAN device), by `next_hop`.
#[derive(Clone, Copy)]
pub(crate) struct Tunneled {
    pub ifindex: u32,
    pub next_hop: NextHop,
}

/// Everything written in front of the inner IPv4 header.
#[repr(C)]
struct Encapsulation {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner: EthHdr,
}

/// `bpf_skb_adjust_room` flags of the encapsulation: IPv4 in front of UDP
/// in front of 14 bytes of inner Ethernet (in the top byte), GSO size kept.
const ENCAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64
    | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
    | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
    | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
    | ((ETH_LEN as u64) << 56);

/// Encapsulates the frame in VXLAN with `vni` for `host` (its underlay
/// IPv4, network order), with `inner` as the inner Ethernet header (the
/// frame's own, or its rewrite if routed).
#[inline(always)]
pub(crate) fn encapsulate(
    ctx: &TcContext,
    vni: u32,
    host: u32,
    inner: &EthHdr,
) -> Result<Tunneled, DropReason> {
    let underlay = this_host()?;
    let skb = ctx.skb.skb;
    // SAFETY: plain helper call on this program's skb.
    let hash = unsafe { bpf_get_hash_recalc(skb) };
    if ctx
        .adjust_room(VXLAN_OVERHEAD as i32, BPF_ADJ_ROOM_MAC, ENCAP_FLAGS)
        .is_err()
    {
        return Err(DropReason::HelperFailed);
    }
    let (next_hop, dst_mac) = next_hop(&underlay, host);
    let tot_len = (ctx.len() - ETH_LEN as u32).min(0xffff) as u16;
    let mut headers = Encapsulation {
        eth: EthHdr {
            dst: dst_mac,
            src: underlay.mac,
            proto: ETH_P_IP.to_be_bytes(),
        },
        ip: Ipv4Hdr {
            vihl: 0x45,
            tos: 0,
            tot_len: tot_len.to_be_bytes(),
            // SAFETY: plain helper call.
            id: (unsafe { bpf_get_prandom_u32() } as u16).to_ne_bytes(),
            frag: [0; 2],
            ttl: VXLAN_TTL,
            proto: IPPROTO_UDP,
            check: [0; 2],
            src: underlay.ip.to_ne_bytes(),
            dst: host.to_ne_bytes(),
        },
        udp: UdpHdr {
            sport: source_port(hash).to_be_bytes(),
            dport: VXLAN_PORT.to_be_bytes(),
            len: (tot_len - 20).to_be_bytes(),
            check: [0; 2],
        },
        vxlan: VxlanHdr {
            flags: [VXLAN_FLAG_VNI, 0, 0, 0],
            vni: (vni << 8).to_be_bytes(),
        },
        inner: *inner,
    };
    headers.ip.check = ipv4_checksum(&headers.ip);
    if ctx.store(0, &headers, 0).is_err() {
        return Err(DropReason::HelperFailed);
    }
    Ok(Tunneled {
        ifindex: underlay.ifindex,
        next_hop,
    })
}

/// Sends the frame (its Ethernet header already the inner one) to `host`
/// in VXLAN with `vni` through the agent's VXLAN device: the kernel builds
/// the outer headers from the tunnel key, DF clear, and fragments the outer
/// packet where the underlay needs it.
#[inline(always)]
pub(crate) fn through_device(ctx: &TcContext, vni: u32, host: u32) -> Result<Tunneled, DropReason> {
    let underlay = this_host()?;
    if underlay.vxlan_ifindex == 0 {
        return Err(DropReason::TooBig);
    }
    // SAFETY: all zeroes is a valid key (plain integers and unions of them).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    // The key's addresses are in host order; ours in network order.
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be(host);
    // The source the other host knows this one by, whatever the route says.
    key.__bindgen_anon_3.local_ipv4 = u32::from_be(underlay.ip);
    key.tunnel_ttl = VXLAN_TTL;
    // SAFETY: plain helper call; the key is ours, of the size given.
    let set = unsafe {
        bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if set != 0 {
        return Err(DropReason::HelperFailed);
    }
    Ok(Tunneled {
        ifindex: underlay.vxlan_ifindex,
        next_hop: NextHop::VxlanDevice,
    })
}

/// This host as a tunnel endpoint, once the agent has said what it is.
#[inline(always)]
fn this_host() -> Result<UnderlayInfo, DropReason> {
    match UNDERLAY.get(0).copied() {
        Some(underlay) if underlay.ip != 0 && underlay.ifindex != 0 => Ok(underlay),
        _ => Err(DropReason::NoUnderlay),
    }
}

/// How the frame reaches `host`, and the outer destination MAC to write.
#[inline(always)]
fn next_hop(underlay: &UnderlayInfo, host: u32) -> (NextHop, [u8; 6]) {
    if let Some(info) = HOSTS.get_ptr(host)
        // SAFETY: a map value, read at once.
        && let info = unsafe { *info }
        && info.flags & HOST_MAC != 0
    {
        return (NextHop::Mac, info.mac);
    }
    if underlay.flags & UNDERLAY_GATEWAY_MAC != 0 {
        return (NextHop::Mac, underlay.gateway_mac);
    }
    // Written over by the kernel; must not be multicast meanwhile.
    (NextHop::Neighbor, [0; 6])
}

/// The outer UDP source port for a flow hash: spread over the range as the
/// kernel's `udp_flow_src_port` does (high bits folded in first).
#[inline(always)]
fn source_port(hash: u32) -> u16 {
    let hash = hash ^ (hash << 16);
    let range = u64::from(VXLAN_SPORT_MAX - VXLAN_SPORT_MIN) + 1;
    VXLAN_SPORT_MIN + ((u64::from(hash) * range) >> 32) as u16
}

/// Counts an encapsulated frame of `len` bytes in the host's tunnel stats.
#[inline(always)]
pub(crate) fn count_encap(len: u64, next_hop: NextHop) {
    with_underlay_stats(|stats| {
        stats.encap_packets += 1;
        stats.encap_bytes += len;
        if next_hop == NextHop::VxlanDevice {
            stats.device_encap_packets += 1;
        }
    });
}
