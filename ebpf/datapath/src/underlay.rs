//! The programs on the underlay device (and on the agent's VXLAN device):
//! what arrives from the other hosts.
//!
//! [`underlay_in`] (tc ingress) takes VXLAN addressed to this host's
//! underlay address and port 4789: for a VNI served here ([`VNIS`]), from a
//! known host ([`HOSTS`]), to a port of this host (the inner destination in
//! [`ENDPOINTS`], local, with its MAC), it strips
//! the outer headers and delivers the inner frame like the port program
//! delivers locally: `bpf_redirect_peer` into a veth port's namespace,
//! `bpf_redirect` to a tap's egress. VXLAN that fails a check is dropped and
//! counted by [`UnderlayDropReason`]; everything else (other traffic of the
//! host, fragments, other UDP ports) passes untouched, to the host stack.
//! It runs before the kernel's VXLAN device would see the packet, so VXLAN
//! for the VNIs served here never reaches it.
//!
//! [`underlay_xdp`] (XDP, optional) drops VXLAN for unknown VNIs or from
//! unknown hosts before the kernel allocates anything for it; everything
//! else passes.
//!
//! [`vxlan_in`] (tc ingress of the agent's VXLAN device) delivers what the
//! kernel's VXLAN receive path decapsulated, with the same checks: outer
//! fragments, which the host stack reassembled (from a host sending a
//! packet too big for the underlay through its VXLAN device, or fragmented
//! by a router of the underlay), and GSO packets for taps, which
//! `underlay_in` leaves to it (see below).
//!
//! Decapsulation: `bpf_skb_adjust_room(-(outer IPv4 + UDP + VXLAN + inner
//! Ethernet), BPF_ADJ_ROOM_MAC, FIXED_GSO)` removes the headers after the
//! outer Ethernet header, whose place the inner one then takes; the GSO
//! size (the inner MSS) is kept. A GRO or GSO super-packet stays one. On
//! kernels that know `BPF_F_ADJ_ROOM_DECAP_L4_UDP` the kernel also forgets
//! that it was a tunnel packet; on older ones (6.18) it stays marked
//! (`SKB_GSO_UDP_TUNNEL`, `skb->encapsulation`), which a veth delivery
//! ignores but a tap does not: the kernel would segment it in software
//! before the tap, and a guest with TSO would get MSS-sized packets. No
//! helper of 6.18 clears those marks; the kernel's own VXLAN receive path
//! does (`iptunnel_pull_offloads`). So a GSO packet for a tap passes to the
//! host stack, whose VXLAN device decapsulates it and hands it to
//! [`vxlan_in`], and the guest gets it whole.
//!
//! The outer UDP checksum (0 from our hosts) covered nothing the inner
//! packet needs, so one level of "checksum verified" is dropped, as the
//! kernel's UDP tunnel receive path does.

use alcor_ebpf_common::{EndpointKey, Redirect, UnderlayDropReason, VXLAN_PORT, location, trace};
use aya_ebpf::{
    bindings::{
        BPF_CSUM_LEVEL_DEC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, bpf_hdr_start_off::BPF_HDR_START_MAC,
        bpf_tunnel_key, xdp_action,
    },
    helpers::{
        bpf_csum_level, bpf_redirect, bpf_redirect_peer, bpf_skb_change_head,
        bpf_skb_get_tunnel_key, bpf_skb_load_bytes_relative, bpf_skb_pull_data,
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{
    headers::{
        ETH_LEN, ETH_P_ARP, ETH_P_IP, EthHdr, IPPROTO_UDP, Ipv4Hdr, MAX_IP_HLEN, UdpHdr,
        VXLAN_FLAG_VNI, VxlanHdr, header, ip4, xdp_header,
    },
    maps::{ENDPOINTS, HOSTS, UNDERLAY, VNIS, with_stats, with_underlay_stats},
    record::write_record,
};

/// `BPF_F_ADJ_ROOM_DECAP_L4_UDP` (uapi/linux/bpf.h, after 6.18): the
/// kernel also clears the tunnel GSO type and `skb->encapsulation`.
/// Kernels without it refuse the call (EINVAL), which is then made again
/// without it.
const BPF_F_ADJ_ROOM_DECAP_L4_UDP: u64 = 1 << 10;
const DECAP_FLAGS: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;
const EINVAL: i64 = 22;

/// What [`underlay_in`] and [`vxlan_in`] do with a frame.
#[derive(Clone, Copy)]
enum Decap {
    /// Not VXLAN for us: to the host stack, untouched.
    Pass,
    /// A GSO packet for the tap `ifindex`: to the host stack, for the
    /// kernel's VXLAN device to decapsulate.
    ToDevice {
        ifindex: u32,
        vni: u32,
    },
    Drop(UnderlayDropReason),
    /// Decapsulated and delivered to a local port.
    Deliver {
        ifindex: u32,
        redirect: Redirect,
        vni: u32,
        /// The inner frame's length.
        len: u32,
    },
}

/// tc ingress of the underlay device.
#[classifier]
pub fn underlay_in(ctx: TcContext) -> i32 {
    // SAFETY: the context is the kernel's `__sk_buff`, valid for the run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let decision = decapsulate(&ctx);
    if mark == trace::MARK {
        record(&ctx, decision);
    } else {
        account(decision);
    }
    act(decision)
}

/// tc ingress of the agent's VXLAN device: frames the kernel decapsulated,
/// delivered to their port if the tunnel and the frame pass the checks
/// `underlay_in` makes, dropped and counted otherwise.
#[classifier]
pub fn vxlan_in(ctx: TcContext) -> i32 {
    // SAFETY: the context is the kernel's `__sk_buff`, valid for the run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    let decision = decapsulated(&ctx);
    if mark == trace::MARK {
        record(&ctx, decision);
    } else {
        account(decision);
        if let Decap::Deliver { .. } = decision {
            with_underlay_stats(|stats| stats.device_decap_packets += 1);
        }
    }
    act(decision)
}

#[inline(always)]
fn act(decision: Decap) -> i32 {
    match decision {
        Decap::Pass | Decap::ToDevice { .. } => TC_ACT_OK,
        Decap::Drop(_) => TC_ACT_SHOT,
        // SAFETY (both): plain helper calls; they return TC_ACT_REDIRECT.
        Decap::Deliver {
            ifindex,
            redirect: Redirect::Peer,
            ..
        } => unsafe { bpf_redirect_peer(ifindex, 0) as i32 },
        Decap::Deliver { ifindex, .. } => unsafe { bpf_redirect(ifindex, 0) as i32 },
    }
}

/// Where [`vxlan_in`] sends a frame the kernel decapsulated.
#[inline(always)]
fn decapsulated(ctx: &TcContext) -> Decap {
    // SAFETY: all zeroes is a valid key (plain integers and unions of them).
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: plain helper call; the key is ours, of the size given.
    let got = unsafe {
        bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size_of::<bpf_tunnel_key>() as u32, 0)
    };
    if got != 0 {
        return Decap::Drop(UnderlayDropReason::Malformed);
    }
    // The key's address is in host order; the maps' in network order.
    // SAFETY: the kernel filled in the IPv4 member (an IPv6 tunnel fails
    // the host check).
    let host = u32::from_be(unsafe { key.__bindgen_anon_1.remote_ipv4 });
    if let Err(reason) = known_tunnel(key.tunnel_id, host) {
        return Decap::Drop(reason);
    }
    let wanted = (ETH_LEN + 20).min(ctx.len() as usize);
    if ctx.data() + wanted > ctx.data_end() {
        // SAFETY: plain helper call; packet pointers are taken afterwards.
        unsafe { bpf_skb_pull_data(ctx.skb.skb, wanted as u32) };
    }
    match local_target(ctx, key.tunnel_id, 0) {
        Ok((ifindex, redirect)) => Decap::Deliver {
            ifindex,
            redirect,
            vni: key.tunnel_id,
            len: ctx.len(),
        },
        Err(reason) => Decap::Drop(reason),
    }
}

/// Whether VXLAN with `vni` from `host` (network order) is accepted here.
#[inline(always)]
fn known_tunnel(vni: u32, host: u32) -> Result<(), UnderlayDropReason> {
    // SAFETY (both): map values, only tested for presence.
    if unsafe { VNIS.get(vni) }.is_none() {
        return Err(UnderlayDropReason::UnknownVni);
    }
    if unsafe { HOSTS.get(host) }.is_none() {
        return Err(UnderlayDropReason::UnknownHost);
    }
    Ok(())
}

/// The local port the inner frame at `offset` is for, and how it is
/// delivered there.
#[inline(always)]
fn local_target(
    ctx: &TcContext,
    vni: u32,
    offset: usize,
) -> Result<(u32, Redirect), UnderlayDropReason> {
    let inner = header::<EthHdr>(ctx, offset).ok_or(UnderlayDropReason::Malformed)?;
    match u16::from_be_bytes(inner.proto) {
        ETH_P_IP => {}
        ETH_P_ARP => return Err(UnderlayDropReason::TunneledArp),
        _ => return Err(UnderlayDropReason::InnerNotIpv4),
    }
    let inner_ip = header::<Ipv4Hdr>(ctx, offset + ETH_LEN).ok_or(UnderlayDropReason::Malformed)?;
    let key = EndpointKey {
        vni,
        ip: ip4(inner_ip.dst),
    };
    // SAFETY: a map value, copied at once.
    let target = (unsafe { ENDPOINTS.get(key) })
        .copied()
        .ok_or(UnderlayDropReason::UnknownDestination)?;
    let redirect = match target.location {
        location::LOCAL_PEER => Redirect::Peer,
        location::LOCAL_EGRESS => Redirect::Egress,
        _ => return Err(UnderlayDropReason::UnknownDestination),
    };
    if target.mac != inner.dst {
        return Err(UnderlayDropReason::WrongDestinationMac);
    }
    Ok((target.ifindex, redirect))
}

#[inline(always)]
fn decapsulate(ctx: &TcContext) -> Decap {
    let Some(underlay) = UNDERLAY.get(0) else {
        return Decap::Pass;
    };
    let (local_ip, vxlan_ifindex) = (underlay.ip, underlay.vxlan_ifindex);
    if local_ip == 0 {
        return Decap::Pass;
    }
    // Outer Ethernet, IPv4 (with options), UDP, VXLAN, inner Ethernet and
    // IPv4 (without) in the linear data.
    let wanted = (ETH_LEN + MAX_IP_HLEN + 16 + ETH_LEN + 20).min(ctx.len() as usize);
    if ctx.data() + wanted > ctx.data_end() {
        // SAFETY: plain helper call; packet pointers are taken afterwards.
        unsafe { bpf_skb_pull_data(ctx.skb.skb, wanted as u32) };
    }
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return Decap::Pass;
    };
    if u16::from_be_bytes(eth.proto) != ETH_P_IP && !restore_mac_header(ctx, local_ip) {
        return Decap::Pass;
    }
    let Some(ip) = header::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Decap::Pass;
    };
    let hlen = usize::from(ip.vihl & 0xf) * 4;
    if ip.vihl >> 4 != 4
        || hlen < 20
        || ip.proto != IPPROTO_UDP
        || ip4(ip.dst) != local_ip
        // Fragments go to the host stack, which reassembles them.
        || u16::from_be_bytes(ip.frag) & 0x3fff != 0
    {
        return Decap::Pass;
    }
    let Some(udp) = header::<UdpHdr>(ctx, ETH_LEN + hlen) else {
        return Decap::Pass;
    };
    if u16::from_be_bytes(udp.dport) != VXLAN_PORT {
        return Decap::Pass;
    }
    let outer = ETH_LEN + hlen + 8;
    let Some(vxlan) = header::<VxlanHdr>(ctx, outer) else {
        return Decap::Drop(UnderlayDropReason::Malformed);
    };
    if vxlan.flags[0] & VXLAN_FLAG_VNI == 0 {
        return Decap::Drop(UnderlayDropReason::Malformed);
    }
    let vni = u32::from_be_bytes([0, vxlan.vni[0], vxlan.vni[1], vxlan.vni[2]]);
    if let Err(reason) = known_tunnel(vni, ip4(ip.src)) {
        return Decap::Drop(reason);
    }
    let (ifindex, redirect) = match local_target(ctx, vni, outer + 8) {
        Ok(target) => target,
        Err(reason) => return Decap::Drop(reason),
    };
    // SAFETY: the context is the kernel's `__sk_buff`.
    if redirect == Redirect::Egress && vxlan_ifindex != 0 && unsafe { (*ctx.skb.skb).gso_size } != 0
    {
        return Decap::ToDevice { ifindex, vni };
    }
    let inner = match header::<EthHdr>(ctx, outer + 8) {
        Some(inner) => inner,
        None => return Decap::Drop(UnderlayDropReason::Malformed),
    };
    // Everything between the outer Ethernet header and the inner IPv4
    // header goes; the inner Ethernet header is written where the outer
    // one was.
    let strip = -((hlen + 16 + ETH_LEN) as i32);
    let stripped = match ctx.adjust_room(
        strip,
        BPF_ADJ_ROOM_MAC,
        DECAP_FLAGS | BPF_F_ADJ_ROOM_DECAP_L4_UDP,
    ) {
        Err(e) if e == -EINVAL => ctx.adjust_room(strip, BPF_ADJ_ROOM_MAC, DECAP_FLAGS),
        stripped => stripped,
    };
    if stripped.is_err() || ctx.store(0, &inner, 0).is_err() {
        return Decap::Drop(UnderlayDropReason::HelperFailed);
    }
    // SAFETY: plain helper call.
    unsafe { bpf_csum_level(ctx.skb.skb, u64::from(BPF_CSUM_LEVEL_DEC)) };
    Decap::Deliver {
        ifindex,
        redirect,
        vni,
        len: ctx.len(),
    }
}

/// Makes the frame start at its Ethernet header again if it starts at its
/// IPv4 header and is VXLAN to `local_ip`; true if it did.
///
/// Kernel surprise (6.18): when generic (skb-mode) XDP has to copy a
/// packet first (cloned, non-linear or short of headroom: most packets
/// from a veth), `skb_pp_cow_data` copies the header offsets but not
/// `skb->mac_len`, which stays 0; cls_bpf pushes `mac_len` bytes before
/// running the program, so the program sees the packet from its network
/// header, and any change at the MAC layer would land in the wrong place.
/// The Ethernet header is still there, before the network header:
/// `bpf_skb_change_head` puts 14 bytes in front (and resets `mac_len` to
/// 14), and the header is copied into them.
#[inline(always)]
fn restore_mac_header(ctx: &TcContext, local_ip: u32) -> bool {
    // SAFETY: the context is the kernel's `__sk_buff`.
    if unsafe { (*ctx.skb.skb).protocol } != u32::from(ETH_P_IP.to_be()) {
        return false;
    }
    match header::<Ipv4Hdr>(ctx, 0) {
        Some(ip) if ip.vihl >> 4 == 4 && ip.proto == IPPROTO_UDP && ip4(ip.dst) == local_ip => {}
        _ => return false,
    }
    let mut eth = EthHdr {
        dst: [0; 6],
        src: [0; 6],
        proto: [0; 2],
    };
    // SAFETY: plain helper calls; `eth` is ours, of the length given.
    let loaded = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.skb.skb.cast(),
            0,
            (&raw mut eth).cast(),
            ETH_LEN as u32,
            BPF_HDR_START_MAC,
        )
    };
    if loaded != 0 || u16::from_be_bytes(eth.proto) != ETH_P_IP {
        return false;
    }
    if unsafe { bpf_skb_change_head(ctx.skb.skb, ETH_LEN as u32, 0) } != 0 {
        return false;
    }
    ctx.store(0, &eth, 0).is_ok()
}

#[inline(always)]
fn account(decision: Decap) {
    match decision {
        Decap::Pass | Decap::ToDevice { .. } => {}
        Decap::Drop(reason) => count_drop(reason),
        Decap::Deliver { ifindex, len, .. } => {
            let len = u64::from(len);
            with_underlay_stats(|stats| {
                stats.decap_packets += 1;
                stats.decap_bytes += len;
            });
            // A tap's egress counts its own; a peer delivery skips it.
            with_stats(ifindex, |port| {
                port.tunnel.decap_packets += 1;
                port.tunnel.decap_bytes += len;
            });
        }
    }
    if let Decap::Deliver {
        ifindex,
        redirect: Redirect::Peer,
        len,
        ..
    } = decision
    {
        with_stats(ifindex, |port| {
            port.traffic.tx_packets += 1;
            port.traffic.tx_bytes += u64::from(len);
        });
    }
}

#[inline(always)]
fn record(ctx: &TcContext, decision: Decap) {
    let record = match decision {
        Decap::Pass => (trace::ACTION_PASS, 0, 0, 0),
        Decap::ToDevice { ifindex, vni } => {
            (trace::ACTION_PASS, trace::PASS_VXLAN_DEVICE, ifindex, vni)
        }
        Decap::Drop(reason) => (trace::ACTION_DROP, reason as u32, 0, 0),
        Decap::Deliver {
            ifindex,
            redirect,
            vni,
            ..
        } => (trace::ACTION_REDIRECT, redirect as u32, ifindex, vni),
    };
    write_record(ctx, record);
}

#[inline(always)]
fn count_drop(reason: UnderlayDropReason) {
    with_underlay_stats(|stats| {
        if let Some(drops) = stats.drops.get_mut(reason as usize) {
            *drops += 1;
        }
    });
}

/// XDP on the underlay device: VXLAN to this host for a VNI not served here
/// or from an address that is not a known host is dropped (and counted);
/// everything else passes, untouched. Reads headers only, so multi-buffer
/// frames are fine.
#[xdp(frags)]
pub fn underlay_xdp(ctx: XdpContext) -> u32 {
    match early_drop(&ctx) {
        None => xdp_action::XDP_PASS,
        Some(reason) => {
            count_drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn early_drop(ctx: &XdpContext) -> Option<UnderlayDropReason> {
    let local_ip = UNDERLAY.get(0)?.ip;
    let eth = xdp_header::<EthHdr>(ctx, 0)?;
    if local_ip == 0 || u16::from_be_bytes(eth.proto) != ETH_P_IP {
        return None;
    }
    let ip = xdp_header::<Ipv4Hdr>(ctx, ETH_LEN)?;
    let hlen = usize::from(ip.vihl & 0xf) * 4;
    if ip.vihl >> 4 != 4
        || !(20..=MAX_IP_HLEN).contains(&hlen)
        || ip.proto != IPPROTO_UDP
        || ip4(ip.dst) != local_ip
        || u16::from_be_bytes(ip.frag) & 0x3fff != 0
    {
        return None;
    }
    let udp = xdp_header::<UdpHdr>(ctx, ETH_LEN + hlen)?;
    if u16::from_be_bytes(udp.dport) != VXLAN_PORT {
        return None;
    }
    let vxlan = xdp_header::<VxlanHdr>(ctx, ETH_LEN + hlen + 8)?;
    let vni = u32::from_be_bytes([0, vxlan.vni[0], vxlan.vni[1], vxlan.vni[2]]);
    // SAFETY (both): map values, only tested for presence.
    if unsafe { VNIS.get(vni) }.is_none() {
        return Some(UnderlayDropReason::XdpUnknownVni);
    }
    if unsafe { HOSTS.get(ip4(ip.src)) }.is_none() {
        return Some(UnderlayDropReason::XdpUnknownHost);
    }
    None
}
