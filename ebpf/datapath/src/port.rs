//! The port program: tc on every port device (the host side of a VM's veth,
//! or its tap). The device's ingress carries what the VM sent
//! ([`port_from_vm`]), its egress what goes to the VM ([`port_to_vm`]).
//!
//! From the VM, in order:
//! 1. a device without a [`PORTS`] entry is not programmed (yet): its frames
//!    pass untouched to the host stack, as before the agent programs it;
//! 2. anti-spoofing: the source MAC and IPv4 address must be the port's or an
//!    allowed address pair's ([`SOURCES`], an LPM trie, so pairs may be
//!    prefixes);
//! 3. ARP requests for the gateway or a known address of the sender's subnet
//!    are answered in place; nothing is ever flooded;
//! 4. DHCP (UDP 68 → 67) passes up to the agent's responder;
//! 5. ICMP echo to the gateway is answered in place;
//! 6. IPv4 to a known address ([`ENDPOINTS`]) of the same subnet is delivered
//!    to its port; to another subnet through the gateway MAC it is routed if
//!    one router connects both subnets ([`SUBNETS`]): MACs rewritten, TTL
//!    decremented, or answered with ICMP time exceeded;
//! 7. an address on another host is reached the same way, then the frame
//!    (rewritten if routed: routing happens on the sending host, as DVR
//!    does) is encapsulated in VXLAN and sent to the underlay
//!    ([`crate::encap`]);
//! 8. a packet bigger than the port MTU ([`PortInfo::mtu`]) that would be
//!    encapsulated or routed: with DF set, the gateway answers ICMP
//!    "fragmentation needed" (next-hop MTU = the port's), at most
//!    [`ICMP_ERRORS_BURST`] at once and one per [`ICMP_ERROR_INTERVAL_NS`]
//!    per port, so that the VM's path MTU discovery converges instead of
//!    its TCP stalling; with DF clear, it goes to another host through the
//!    kernel's VXLAN device, which fragments the outer packet (as the
//!    kernel's own VXLAN path does), and to a local port as it is;
//! 9. everything else is dropped and counted by [`DropReason`].
//!
//! Every key carries the VNI (the port's, from [`PORTS`]), so VPCs with
//! overlapping addresses never see each other.
//!
//! Performance: the fast path reads headers directly but writes the packet
//! only through helpers (`bpf_skb_store_bytes`): a program that writes packet
//! data directly gets a prologue from the verifier that unclones every skb,
//! and TCP's skbs arriving from a veth are clones. Frames delivered without a
//! rewrite (same subnet) are never written. The only map writes are the
//! per-CPU counters.

use core::mem::size_of;

use alcor_ebpf_common::{
    DropReason, Endpoint, EndpointKey, ICMP_ERROR_INTERVAL_NS, ICMP_ERRORS_BURST, MAX_PORTS,
    NextHop, PortInfo, Redirect, SOURCE_ALLOWED, SOURCE_MAC_ONLY, SUBNET_HAS_GATEWAY, SUBNET_VALID,
    SourceKey, SubnetInfo, SubnetKey, location, trace,
};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer,
        bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
    },
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};

use crate::{
    encap::{self, Tunneled},
    headers::{
        ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_DF, IPPROTO_ICMP, IPPROTO_TCP,
        IPPROTO_UDP, Ipv4Hdr, MAX_IP_HLEN, csum_replace, fold, header, ip4,
    },
    maps::{ENDPOINTS, PORTS, SOURCES, SUBNETS, with_stats},
    record::write_record,
};

/// Room to build an ICMP error in, off the stack (the verifier allows 512
/// bytes of it for the whole program). Not pinned: nothing is kept in it.
#[map]
static SCRATCH: PerCpuArray<IcmpErrorScratch> = PerCpuArray::with_max_entries(1, 0);

/// Port ifindex → when its next ICMP error is due (ns, `bpf_ktime_get_ns`):
/// the state of its rate limit (GCRA). Not pinned: a restarted agent
/// starts every port with a full burst. LRU: entries of deleted ports age
/// out by themselves.
#[map]
static ICMP_ERRORS_DUE: LruHashMap<u32, u64> = LruHashMap::with_max_entries(MAX_PORTS, 0);

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// TTL of the packets the gateway sends (echo replies, ICMP errors).
const GATEWAY_TTL: u8 = 64;
/// Longest quote of the offending packet in an ICMP error: its IP header and
/// 8 bytes (RFC 792), or 20 where the kernel will not trim below a TCP
/// header whose checksum is left to offload.
const MAX_QUOTE: usize = MAX_IP_HLEN + 20;

#[repr(C)]
#[derive(Clone, Copy)]
struct ArpHdr {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    op: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

/// A whole ARP frame, as the answer is written.
#[repr(C)]
struct ArpFrame {
    eth: EthHdr,
    arp: ArpHdr,
}

/// Ethernet and IPv4 headers, as an echo reply is written.
#[repr(C)]
struct EthIpv4 {
    eth: EthHdr,
    ip: Ipv4Hdr,
}

/// Ethernet and the IPv4 header up to its checksum, as a routed packet is
/// rewritten.
#[repr(C)]
struct EthIpv4Start {
    eth: EthHdr,
    vihl_tos: [u8; 2],
    tot_len: [u8; 2],
    id: [u8; 2],
    frag: [u8; 2],
    ttl_proto: [u8; 2],
    check: [u8; 2],
}

/// The IPv4 header's TTL, protocol and checksum, as a routed packet to
/// another host is rewritten.
#[repr(C)]
struct TtlCheck {
    ttl_proto: [u8; 2],
    check: [u8; 2],
}

/// The first bytes of an ICMP or UDP header.
#[repr(C)]
#[derive(Clone, Copy)]
struct L4Start {
    /// ICMP type and code, or UDP source port.
    a: [u8; 2],
    /// ICMP checksum, or UDP destination port.
    b: [u8; 2],
}

/// The headers of an ICMP error as written in front of its quote.
#[repr(C)]
struct IcmpErrorHeaders {
    eth: EthHdr,
    ip: Ipv4Hdr,
    icmp_type: u8,
    icmp_code: u8,
    icmp_check: [u8; 2],
    rest: [u8; 4],
}

/// [`SCRATCH`]'s value.
#[repr(C)]
struct IcmpErrorScratch {
    headers: IcmpErrorHeaders,
    /// The quote, zero-padded (checksummed whole).
    quote: [u8; MAX_QUOTE],
}

/// What the program does with a frame from the VM.
#[derive(Clone, Copy)]
enum Decision {
    /// To the host stack (`trace::PASS_*`).
    Pass(u32),
    Drop(DropReason),
    /// To a local port.
    Deliver {
        ifindex: u32,
        redirect: Redirect,
        routed: bool,
    },
    /// Answered in place and sent back to the VM (`trace::ANSWER_*`).
    Answer(u32),
    /// Encapsulated in VXLAN for `host` (an underlay IPv4, network order)
    /// and sent out of the underlay device `ifindex`.
    Encap {
        ifindex: u32,
        host: u32,
        next_hop: NextHop,
        routed: bool,
    },
}

/// tc ingress of a port device: frames the VM sent.
#[classifier]
pub fn port_from_vm(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: the context is the kernel's `__sk_buff`, valid for the whole run.
    let (ifindex, mark) = unsafe { ((*skb).ifindex, (*skb).mark) };
    let len = u64::from(ctx.len());
    let decision = decide(&ctx, ifindex, mark == trace::MARK);
    if mark == trace::MARK {
        record(&ctx, ifindex, decision);
    } else {
        account(ifindex, len, decision);
    }
    match decision {
        Decision::Pass(_) => TC_ACT_OK,
        Decision::Drop(_) => TC_ACT_SHOT,
        // SAFETY (all three): plain helper calls; they return TC_ACT_REDIRECT.
        Decision::Deliver {
            ifindex: target,
            redirect: Redirect::Peer,
            ..
        } => unsafe { bpf_redirect_peer(target, 0) as i32 },
        Decision::Deliver {
            ifindex: target, ..
        } => unsafe { bpf_redirect(target, 0) as i32 },
        Decision::Answer(_) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        // SAFETY (both): plain helper calls. No parameters: the kernel
        // looks up the route to the outer destination (the next hop may be
        // a gateway) and its neighbour entry.
        Decision::Encap {
            ifindex: underlay,
            next_hop: NextHop::Neighbor,
            ..
        } => unsafe { bpf_redirect_neigh(underlay, core::ptr::null_mut(), 0, 0) as i32 },
        Decision::Encap {
            ifindex: underlay, ..
        } => unsafe { bpf_redirect(underlay, 0) as i32 },
    }
}

/// tc egress of a port device: frames on their way to the VM (from the host
/// stack, e.g. DHCP replies; answers in place; deliveries by plain redirect).
#[classifier]
pub fn port_to_vm(ctx: TcContext) -> i32 {
    // SAFETY: as above.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = u64::from(ctx.len());
    with_stats(ifindex, |stats| {
        stats.traffic.tx_packets += 1;
        stats.traffic.tx_bytes += len;
    });
    TC_ACT_OK
}

/// Counts the frame on the sending port, and on the receiving port if it
/// skips that port's egress (where [`port_to_vm`] counts).
#[inline(always)]
fn account(ifindex: u32, len: u64, decision: Decision) {
    let encap = matches!(decision, Decision::Encap { .. });
    with_stats(ifindex, |stats| {
        stats.traffic.rx_packets += 1;
        stats.traffic.rx_bytes += len;
        if encap {
            stats.tunnel.encap_packets += 1;
            stats.tunnel.encap_bytes += len;
        }
        let reason = match decision {
            Decision::Drop(reason) => reason,
            Decision::Answer(trace::ANSWER_TIME_EXCEEDED) => DropReason::TtlExceeded,
            Decision::Answer(trace::ANSWER_FRAG_NEEDED) => DropReason::FragNeeded,
            _ => return,
        };
        if let Some(drops) = stats.drops.get_mut(reason as usize) {
            *drops += 1;
        }
    });
    if let Decision::Deliver {
        ifindex: target,
        redirect: Redirect::Peer,
        ..
    } = decision
    {
        with_stats(target, |stats| {
            stats.traffic.tx_packets += 1;
            stats.traffic.tx_bytes += len;
        });
    }
    if let Decision::Encap { next_hop, .. } = decision {
        encap::count_encap(len, next_hop);
    }
}

/// Writes the decision into the skb's control block, which a test run
/// returns in its output context.
#[inline(always)]
fn record(ctx: &TcContext, ifindex: u32, decision: Decision) {
    let routed_flag = |routed| if routed { trace::REDIRECT_ROUTED } else { 0 };
    let record = match decision {
        Decision::Pass(why) => (trace::ACTION_PASS, why, 0, 0),
        Decision::Drop(reason) => (trace::ACTION_DROP, reason as u32, 0, 0),
        Decision::Deliver {
            ifindex: target,
            redirect,
            routed,
        } => (
            trace::ACTION_REDIRECT,
            redirect as u32 | routed_flag(routed),
            target,
            0,
        ),
        Decision::Answer(kind) => (trace::ACTION_ANSWER, kind, ifindex, 0),
        Decision::Encap {
            ifindex: underlay,
            host,
            next_hop,
            routed,
        } => (
            trace::ACTION_ENCAP,
            next_hop as u32 | routed_flag(routed),
            underlay,
            host,
        ),
    };
    write_record(ctx, record);
}

/// The sending port, as the decision's helpers need it.
#[derive(Clone, Copy)]
struct Sender {
    ifindex: u32,
    info: PortInfo,
    /// A trace run: spends nothing (no rate-limit tokens).
    tracing: bool,
}

#[inline(always)]
fn decide(ctx: &TcContext, ifindex: u32, tracing: bool) -> Decision {
    // SAFETY: a map value, valid during the run; user space replaces values
    // whole (copied here at once).
    let Some(port) = (unsafe { PORTS.get(ifindex) }) else {
        return Decision::Pass(trace::PASS_NOT_PROGRAMMED);
    };
    let port = *port;
    // Headers outside the linear data (rare: some tap frames) are pulled in,
    // as far as the longest we read: Ethernet, IPv4 with options, 8 bytes.
    let wanted = (ETH_LEN + MAX_IP_HLEN + 8).min(ctx.len() as usize);
    if ctx.data() + wanted > ctx.data_end() {
        // SAFETY: plain helper call; packet pointers are taken afterwards.
        unsafe { bpf_skb_pull_data(ctx.skb.skb, wanted as u32) };
    }
    let Some(eth) = header::<EthHdr>(ctx, 0) else {
        return Decision::Drop(DropReason::Malformed);
    };
    if eth.src[0] & 1 != 0 {
        return Decision::Drop(DropReason::SpoofedMac);
    }
    match u16::from_be_bytes(eth.proto) {
        ETH_P_IP => ipv4(
            ctx,
            &Sender {
                ifindex,
                info: port,
                tracing,
            },
            &eth,
        ),
        ETH_P_ARP => arp(ctx, ifindex, &port, &eth),
        ETH_P_IPV6 => Decision::Drop(DropReason::Ipv6),
        _ => Decision::Drop(DropReason::OtherEthertype),
    }
}

/// SOURCE_ALLOWED if the port may send from `mac` and `ip`, SOURCE_MAC_ONLY
/// if only the MAC is its, 0 if not even that.
#[inline(always)]
fn source(ifindex: u32, port: &PortInfo, mac: [u8; 6], ip: u32) -> u32 {
    if ip != 0 && ip == port.ip && mac == port.mac {
        return SOURCE_ALLOWED;
    }
    let key = Key::new(
        SourceKey::FIXED_BITS + 32,
        SourceKey {
            ifindex,
            mac,
            _pad: [0; 2],
            ip,
        },
    );
    SOURCES.get(&key).copied().unwrap_or(0)
}

#[inline(always)]
fn check_source(ifindex: u32, port: &PortInfo, mac: [u8; 6], ip: u32) -> Option<DropReason> {
    match source(ifindex, port, mac, ip) {
        SOURCE_ALLOWED => None,
        SOURCE_MAC_ONLY => Some(DropReason::SpoofedIp),
        _ => Some(DropReason::SpoofedMac),
    }
}

/// The subnet `ip` (a source the port may use) belongs to; the port's own
/// subnet for addresses outside every subnet (an allowed prefix).
#[inline(always)]
fn source_subnet(port: &PortInfo, ip: u32) -> SubnetInfo {
    if ip == port.ip {
        return port.subnet;
    }
    subnet_of(port.vni, ip).unwrap_or(port.subnet)
}

#[inline(always)]
fn subnet_of(vni: u32, ip: u32) -> Option<SubnetInfo> {
    let key = Key::new(SubnetKey::FIXED_BITS + 32, SubnetKey { vni, ip });
    SUBNETS.get(&key).copied()
}

#[inline(always)]
fn endpoint(vni: u32, ip: u32) -> Option<Endpoint> {
    // SAFETY: a map value, copied at once.
    unsafe { ENDPOINTS.get(EndpointKey { vni, ip }) }.copied()
}

#[inline(always)]
fn in_subnet(subnet: &SubnetInfo, ip: u32) -> bool {
    ip & subnet.mask == subnet.net
}

#[inline(always)]
fn arp(ctx: &TcContext, ifindex: u32, port: &PortInfo, eth: &EthHdr) -> Decision {
    let Some(arp) = header::<ArpHdr>(ctx, ETH_LEN) else {
        return Decision::Drop(DropReason::Malformed);
    };
    if arp.htype != [0, 1] || arp.ptype != [8, 0] || arp.hlen != 6 || arp.plen != 4 {
        return Decision::Drop(DropReason::Malformed);
    }
    if arp.sha != eth.src {
        return Decision::Drop(DropReason::SpoofedMac);
    }
    let (spa, tpa) = (ip4(arp.spa), ip4(arp.tpa));
    // 0.0.0.0: a probe (RFC 5227), from an address-less VM.
    match source(ifindex, port, arp.sha, spa) {
        SOURCE_ALLOWED => {}
        SOURCE_MAC_ONLY if spa == 0 => {}
        SOURCE_MAC_ONLY => return Decision::Drop(DropReason::SpoofedIp),
        _ => return Decision::Drop(DropReason::SpoofedMac),
    }
    if arp.op != [0, 1] || spa == tpa {
        return Decision::Drop(DropReason::ArpNotRequest);
    }
    let subnet = source_subnet(port, if spa == 0 { port.ip } else { spa });
    if subnet.flags & SUBNET_VALID == 0 {
        return Decision::Drop(DropReason::NoSubnet);
    }
    let answer = if subnet.flags & SUBNET_HAS_GATEWAY != 0 && tpa == subnet.gateway_ip {
        subnet.gateway_mac
    } else if in_subnet(&subnet, tpa) {
        match endpoint(port.vni, tpa) {
            Some(target) if target.mac == arp.sha => {
                return Decision::Drop(DropReason::ArpOwnAddress);
            }
            Some(target) => target.mac,
            None => return Decision::Drop(DropReason::ArpUnknownTarget),
        }
    } else {
        return Decision::Drop(DropReason::ArpUnknownTarget);
    };
    let reply = ArpFrame {
        eth: EthHdr {
            dst: arp.sha,
            src: answer,
            proto: ETH_P_ARP.to_be_bytes(),
        },
        arp: ArpHdr {
            op: [0, 2],
            sha: answer,
            spa: arp.tpa,
            tha: arp.sha,
            tpa: arp.spa,
            ..arp
        },
    };
    if ctx.store(0, &reply, 0).is_err() {
        return Decision::Drop(DropReason::HelperFailed);
    }
    Decision::Answer(trace::ANSWER_ARP)
}

#[inline(always)]
fn ipv4(ctx: &TcContext, sender: &Sender, eth: &EthHdr) -> Decision {
    let (ifindex, port) = (sender.ifindex, &sender.info);
    let Some(ip) = header::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return Decision::Drop(DropReason::Malformed);
    };
    let hlen = usize::from(ip.vihl & 0xf) * 4;
    let tot_len = usize::from(u16::from_be_bytes(ip.tot_len));
    if ip.vihl >> 4 != 4 || hlen < 20 || tot_len < hlen {
        return Decision::Drop(DropReason::Malformed);
    }
    let (src, dst) = (ip4(ip.src), ip4(ip.dst));
    let frag = u16::from_be_bytes(ip.frag);
    let first_fragment = frag & 0x1fff == 0;

    // DHCP for the agent's responder: from any address the MAC may use, or
    // from 0.0.0.0 while the VM has none.
    if ip.proto == IPPROTO_UDP
        && first_fragment
        && let Some(udp) = header::<L4Start>(ctx, ETH_LEN + hlen)
        && udp.a == 68u16.to_be_bytes()
        && udp.b == 67u16.to_be_bytes()
    {
        return match source(ifindex, port, eth.src, src) {
            SOURCE_ALLOWED => Decision::Pass(trace::PASS_DHCP),
            SOURCE_MAC_ONLY if src == 0 => Decision::Pass(trace::PASS_DHCP),
            SOURCE_MAC_ONLY => Decision::Drop(DropReason::SpoofedIp),
            _ => Decision::Drop(DropReason::SpoofedMac),
        };
    }
    if let Some(reason) = check_source(ifindex, port, eth.src, src) {
        return Decision::Drop(reason);
    }
    if eth.dst[0] & 1 != 0 {
        return Decision::Drop(DropReason::Broadcast);
    }
    let subnet = source_subnet(port, src);
    if subnet.flags & SUBNET_VALID == 0 {
        return Decision::Drop(DropReason::NoSubnet);
    }
    if subnet.flags & SUBNET_HAS_GATEWAY != 0 && eth.dst == subnet.gateway_mac {
        if dst == subnet.gateway_ip {
            return gateway(ctx, &subnet, eth, &ip, hlen, tot_len);
        }
        return route(ctx, sender, &subnet, eth, &ip, hlen, tot_len);
    }
    // Same subnet: straight to the destination's port, untouched.
    if !in_subnet(&subnet, dst) {
        return Decision::Drop(DropReason::OffSubnet);
    }
    let Some(target) = endpoint(port.vni, dst) else {
        return Decision::Drop(DropReason::UnknownDestination);
    };
    if target.mac != eth.dst {
        return Decision::Drop(DropReason::WrongDestinationMac);
    }
    if target.location == location::REMOTE {
        // The frame goes as the VM sent it.
        return match oversized(ctx, port, &ip, hlen) {
            None => tunneled(
                encap::encapsulate(ctx, port.vni, target.remote_host, eth),
                target.remote_host,
                false,
            ),
            Some(Fragmenting::Forbidden) => {
                frag_needed(ctx, sender, &subnet, eth, &ip, hlen, tot_len)
            }
            Some(Fragmenting::Allowed) => tunneled(
                encap::through_device(ctx, port.vni, target.remote_host),
                target.remote_host,
                false,
            ),
        };
    }
    deliver(&target, false)
}

/// What the sender of a packet too big for the next hop lets be done.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fragmenting {
    /// DF set: an ICMP "fragmentation needed" goes back.
    Forbidden,
    Allowed,
}

/// Whether the packet (each segment of a GSO packet) is bigger than the
/// port MTU, and if so whether it may be fragmented. `None`: it fits.
#[inline(always)]
fn oversized(ctx: &TcContext, port: &PortInfo, ip: &Ipv4Hdr, hlen: usize) -> Option<Fragmenting> {
    if port.mtu == 0 {
        return None;
    }
    // SAFETY: the context is the kernel's `__sk_buff`, valid for the run.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let len = if gso_size == 0 {
        u32::from(u16::from_be_bytes(ip.tot_len))
    } else {
        // A segment: the headers, then `gso_size` bytes of payload.
        let l4 = match ip.proto {
            // The data offset, in the high nibble of byte 12.
            IPPROTO_TCP => ctx
                .load::<u8>(ETH_LEN + hlen + 12)
                .map_or(20, |offset| u32::from(offset >> 4) * 4),
            IPPROTO_UDP => 8,
            _ => 0,
        };
        hlen as u32 + l4 + gso_size
    };
    if len <= port.mtu {
        return None;
    }
    if u16::from_be_bytes(ip.frag) & IP_DF != 0 {
        Some(Fragmenting::Forbidden)
    } else {
        Some(Fragmenting::Allowed)
    }
}

/// Answers a packet too big for the next hop, DF set, with ICMP
/// "fragmentation needed" from the sender's gateway (RFC 1191: next-hop
/// MTU = the port's), within the port's rate limit; drops it either way.
#[inline(always)]
fn frag_needed(
    ctx: &TcContext,
    sender: &Sender,
    from: &SubnetInfo,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    hlen: usize,
    tot_len: usize,
) -> Decision {
    if from.flags & SUBNET_HAS_GATEWAY == 0
        || !answerable(ctx, ip, hlen)
        || !(sender.tracing || icmp_error_allowed(sender.ifindex))
    {
        return Decision::Drop(DropReason::TooBig);
    }
    let mtu = (sender.info.mtu.min(0xffff) as u16).to_be_bytes();
    let error = IcmpError {
        kind: [ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED],
        rest: [0, 0, mtu[0], mtu[1]],
        answer: trace::ANSWER_FRAG_NEEDED,
    };
    icmp_error(ctx, from, eth, ip, hlen, tot_len, &error)
}

/// Whether an ICMP error may go back to the port now, spending one if so:
/// a generic cell rate algorithm, which needs one timestamp per port.
/// Two CPUs may both spend the last one: the limit is a rate, not a count.
#[inline(always)]
fn icmp_error_allowed(ifindex: u32) -> bool {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value, copied at once.
    let due = unsafe { ICMP_ERRORS_DUE.get(&ifindex) }
        .copied()
        .unwrap_or(0)
        .max(now);
    if due - now >= ICMP_ERRORS_BURST * ICMP_ERROR_INTERVAL_NS {
        return false;
    }
    ICMP_ERRORS_DUE
        .insert(&ifindex, &(due + ICMP_ERROR_INTERVAL_NS), 0)
        .is_ok()
}

/// To a local endpoint's port.
#[inline(always)]
fn deliver(target: &Endpoint, routed: bool) -> Decision {
    let redirect = match target.location {
        location::LOCAL_PEER => Redirect::Peer,
        location::LOCAL_EGRESS => Redirect::Egress,
        _ => return Decision::Drop(DropReason::UnknownDestination),
    };
    Decision::Deliver {
        ifindex: target.ifindex,
        redirect,
        routed,
    }
}

/// To `host` in VXLAN, as the encapsulation went.
#[inline(always)]
fn tunneled(sent: Result<Tunneled, DropReason>, host: u32, routed: bool) -> Decision {
    match sent {
        Ok(Tunneled { ifindex, next_hop }) => Decision::Encap {
            ifindex,
            host,
            next_hop,
            routed,
        },
        Err(reason) => Decision::Drop(reason),
    }
}

/// Packets to the gateway's own address: ICMP echo is answered in place.
#[inline(always)]
fn gateway(
    ctx: &TcContext,
    subnet: &SubnetInfo,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    hlen: usize,
    tot_len: usize,
) -> Decision {
    // A fragmented echo request would need reassembly first.
    if ip.proto != IPPROTO_ICMP || u16::from_be_bytes(ip.frag) & 0x3fff != 0 {
        return Decision::Drop(DropReason::ToGateway);
    }
    let Some(icmp) = header::<L4Start>(ctx, ETH_LEN + hlen) else {
        return Decision::Drop(DropReason::Malformed);
    };
    if icmp.a != [ICMP_ECHO_REQUEST, 0] {
        return Decision::Drop(DropReason::ToGateway);
    }
    if tot_len < hlen + 8 {
        return Decision::Drop(DropReason::Malformed);
    }
    // Ethernet and the fixed IPv4 header: addresses swapped, a fresh TTL.
    // Swapping addresses keeps their sum, so only the TTL changes the
    // checksum.
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    let new = u16::from_be_bytes([GATEWAY_TTL, ip.proto]);
    let reply = EthIpv4 {
        eth: EthHdr {
            dst: eth.src,
            src: subnet.gateway_mac,
            proto: eth.proto,
        },
        ip: Ipv4Hdr {
            ttl: GATEWAY_TTL,
            check: csum_replace(ip.check, old, new),
            src: ip.dst,
            dst: ip.src,
            ..*ip
        },
    };
    let type_code = u16::from_be_bytes([ICMP_ECHO_REPLY, 0]);
    let icmp_reply = L4Start {
        a: [ICMP_ECHO_REPLY, 0],
        b: csum_replace(icmp.b, u16::from_be_bytes(icmp.a), type_code),
    };
    if ctx.store(0, &reply, 0).is_err() || ctx.store(ETH_LEN + hlen, &icmp_reply, 0).is_err() {
        return Decision::Drop(DropReason::HelperFailed);
    }
    Decision::Answer(trace::ANSWER_ECHO)
}

/// Through the gateway MAC to another address: routed if one router
/// connects the two subnets.
#[inline(always)]
fn route(
    ctx: &TcContext,
    sender: &Sender,
    from: &SubnetInfo,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    hlen: usize,
    tot_len: usize,
) -> Decision {
    let vni = sender.info.vni;
    let dst = ip4(ip.dst);
    let Some(target) = endpoint(vni, dst) else {
        return Decision::Drop(DropReason::UnknownDestination);
    };
    let Some(to) = subnet_of(vni, dst) else {
        return Decision::Drop(DropReason::NotRouted);
    };
    let same_subnet = to.net == from.net && to.mask == from.mask;
    if to.flags & SUBNET_HAS_GATEWAY == 0
        || !same_subnet && (from.router == 0 || to.router != from.router)
    {
        return Decision::Drop(DropReason::NotRouted);
    }
    if ip.ttl <= 1 {
        return time_exceeded(ctx, from, eth, ip, hlen, tot_len);
    }
    // After the TTL, as routers check (RFC 1812 5.2.1, Linux's ip_forward).
    let fragmenting = oversized(ctx, &sender.info, ip, hlen);
    if fragmenting == Some(Fragmenting::Forbidden) {
        return frag_needed(ctx, sender, from, eth, ip, hlen, tot_len);
    }
    let ttl = ip.ttl - 1;
    let old = u16::from_be_bytes([ip.ttl, ip.proto]);
    let new = u16::from_be_bytes([ttl, ip.proto]);
    let routed_eth = EthHdr {
        dst: target.mac,
        src: to.gateway_mac,
        proto: eth.proto,
    };
    if target.location == location::REMOTE && fragmenting.is_none() {
        // Routed here, as a router next to the VM would: the TTL and
        // checksum now, the MACs in the inner header the encapsulation
        // writes.
        let ttl_check = TtlCheck {
            ttl_proto: [ttl, ip.proto],
            check: csum_replace(ip.check, old, new),
        };
        if ctx.store(ETH_LEN + 8, &ttl_check, 0).is_err() {
            return Decision::Drop(DropReason::HelperFailed);
        }
        return tunneled(
            encap::encapsulate(ctx, vni, target.remote_host, &routed_eth),
            target.remote_host,
            true,
        );
    }
    // One store: both MACs, the EtherType and the IPv4 header up to its
    // checksum, with the TTL decremented.
    let rewritten = EthIpv4Start {
        eth: routed_eth,
        vihl_tos: [ip.vihl, ip.tos],
        tot_len: ip.tot_len,
        id: ip.id,
        frag: ip.frag,
        ttl_proto: [ttl, ip.proto],
        check: csum_replace(ip.check, old, new),
    };
    if ctx.store(0, &rewritten, 0).is_err() {
        return Decision::Drop(DropReason::HelperFailed);
    }
    if target.location == location::REMOTE {
        // Too big, DF clear: the kernel's VXLAN device fragments it.
        return tunneled(
            encap::through_device(ctx, vni, target.remote_host),
            target.remote_host,
            true,
        );
    }
    // A local port takes it as it is, even if too big for its MTU: nothing
    // is lost by trying.
    deliver(&target, true)
}

/// Answers a packet whose TTL ran out at the router with ICMP time exceeded
/// from the sender's gateway, and drops it.
#[inline(always)]
fn time_exceeded(
    ctx: &TcContext,
    from: &SubnetInfo,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    hlen: usize,
    tot_len: usize,
) -> Decision {
    if !answerable(ctx, ip, hlen) {
        return Decision::Drop(DropReason::TtlExceeded);
    }
    let error = IcmpError {
        kind: [ICMP_TIME_EXCEEDED, 0],
        rest: [0; 4],
        answer: trace::ANSWER_TIME_EXCEEDED,
    };
    icmp_error(ctx, from, eth, ip, hlen, tot_len, &error)
}

/// RFC 1812 4.3.2.7: no ICMP error about a later fragment or about an ICMP
/// error.
#[inline(always)]
fn answerable(ctx: &TcContext, ip: &Ipv4Hdr, hlen: usize) -> bool {
    if u16::from_be_bytes(ip.frag) & 0x1fff != 0 {
        return false;
    }
    ip.proto != IPPROTO_ICMP
        || !matches!(
            header::<L4Start>(ctx, ETH_LEN + hlen),
            Some(icmp) if matches!(icmp.a[0], 3 | 4 | 5 | 11 | 12)
        )
}

/// An ICMP error to send back.
struct IcmpError {
    /// Type and code.
    kind: [u8; 2],
    /// The 4 bytes after the checksum (the next-hop MTU of "fragmentation
    /// needed" in the last two).
    rest: [u8; 4],
    /// The answer, as traced.
    answer: u32,
}

/// Turns the packet into `error` from the sender's gateway back to the
/// sender, quoting its IP header and first 8 bytes (RFC 792).
#[inline(always)]
fn icmp_error(
    ctx: &TcContext,
    from: &SubnetInfo,
    eth: &EthHdr,
    ip: &Ipv4Hdr,
    hlen: usize,
    tot_len: usize,
    error: &IcmpError,
) -> Decision {
    if ETH_LEN + tot_len > ctx.len() as usize {
        return Decision::Drop(DropReason::Malformed);
    }
    // Trim to what is quoted: the IP header and 8 bytes; if the kernel will
    // not cut into a header whose checksum is still to be computed (TCP with
    // checksum offload), 20.
    let mut quoted = tot_len.min(hlen + 8);
    // SAFETY (both): plain helper calls; packet pointers are taken afresh.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + quoted) as u32, 0) } != 0 {
        quoted = tot_len.min(hlen + 20);
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + quoted) as u32, 0) } != 0 {
            return Decision::Drop(DropReason::HelperFailed);
        }
    }
    // Room for the new IPv4 and ICMP headers between Ethernet and the quote.
    let room = size_of::<Ipv4Hdr>() + 8;
    if ctx.adjust_room(room as i32, BPF_ADJ_ROOM_MAC, 0).is_err() {
        return Decision::Drop(DropReason::HelperFailed);
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Decision::Drop(DropReason::HelperFailed);
    };
    // SAFETY: this CPU's slot, ours until the program ends.
    let scratch = unsafe { &mut *scratch };
    // The quote, zero-padded, for the ICMP checksum.
    scratch.quote = [0; MAX_QUOTE];
    if quoted == 0 || quoted > MAX_QUOTE {
        return Decision::Drop(DropReason::HelperFailed);
    }
    // SAFETY: `quoted` bytes fit in the quote, checked above.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            (ETH_LEN + room) as u32,
            scratch.quote.as_mut_ptr().cast(),
            quoted as u32,
        )
    };
    if loaded != 0 {
        return Decision::Drop(DropReason::HelperFailed);
    }
    scratch.headers = IcmpErrorHeaders {
        eth: EthHdr {
            dst: eth.src,
            src: from.gateway_mac,
            proto: ETH_P_IP.to_be_bytes(),
        },
        ip: Ipv4Hdr {
            vihl: 0x45,
            // Internetwork control, as Linux sends its ICMP errors.
            tos: 0xc0,
            tot_len: ((room + quoted) as u16).to_be_bytes(),
            id: [0; 2],
            frag: [0; 2],
            ttl: GATEWAY_TTL,
            proto: IPPROTO_ICMP,
            check: [0; 2],
            src: from.gateway_ip.to_ne_bytes(),
            dst: ip.src,
        },
        icmp_type: error.kind[0],
        icmp_code: error.kind[1],
        icmp_check: [0; 2],
        rest: error.rest,
    };
    // SAFETY (both): bpf_csum_diff reads `to_size` bytes of the buffer it is
    // given (a multiple of 4 within it); `from` is empty.
    let ip_sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (&raw mut scratch.headers.ip).cast(),
            size_of::<Ipv4Hdr>() as u32,
            0,
        )
    };
    let quote_sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            scratch.quote.as_mut_ptr().cast(),
            MAX_QUOTE as u32,
            0,
        )
    };
    scratch.headers.ip.check = (!fold(ip_sum as u32)).to_ne_bytes();
    // The ICMP header adds its words to the quote's sum.
    let word = |bytes: [u8; 2]| u32::from(u16::from_ne_bytes(bytes));
    let icmp_sum = u32::from(fold(quote_sum as u32))
        + word(error.kind)
        + word([error.rest[0], error.rest[1]])
        + word([error.rest[2], error.rest[3]]);
    scratch.headers.icmp_check = (!fold(icmp_sum)).to_ne_bytes();
    if ctx.store(0, &scratch.headers, 0).is_err() {
        return Decision::Drop(DropReason::HelperFailed);
    }
    Decision::Answer(error.answer)
}
