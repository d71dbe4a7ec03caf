//! Packet headers as the programs read and write them, the readers that
//! bound every read by the packet's end, and the Internet checksum.
//!
//! Every multi-byte field is a byte array, so that headers are read at any
//! alignment and their bytes stay in network order.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};

pub(crate) const ETH_LEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
/// IPv4 flags: don't fragment.
pub(crate) const IP_DF: u16 = 0x4000;
/// The longest IPv4 header (with options).
pub(crate) const MAX_IP_HLEN: usize = 60;
/// [`VxlanHdr::flags`]`[0]`: the VNI is valid.
pub(crate) const VXLAN_FLAG_VNI: u8 = 0x08;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// A VXLAN header: flags (0x08: the VNI is valid), reserved, VNI (24
/// bits), reserved.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct VxlanHdr {
    pub flags: [u8; 4],
    pub vni: [u8; 4],
}

/// A header at `offset` of the packet's linear data, if it is all there.
#[inline(always)]
pub(crate) fn header<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    read(ctx.data(), ctx.data_end(), offset)
}

/// A header at `offset` of an XDP frame's first buffer, if it is all there.
#[inline(always)]
pub(crate) fn xdp_header<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    read(ctx.data(), ctx.data_end(), offset)
}

#[inline(always)]
fn read<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: within [data, data_end), checked above; T is plain bytes with
    // alignment 1.
    Some(unsafe { *(start as *const T) })
}

/// An IPv4 address as the maps key it: its bytes, in network order.
#[inline(always)]
pub(crate) fn ip4(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// A 32-bit one's complement sum folded to 16 bits.
#[inline(always)]
pub(crate) fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 (eqn. 3): the checksum `check` once a 16-bit word of what it
/// covers changes from `old` to `new` (words as big-endian numbers).
#[inline(always)]
pub(crate) fn csum_replace(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(check)) + u32::from(!old) + u32::from(new);
    (!fold(sum)).to_be_bytes()
}

/// The checksum of an IPv4 header without options (its `check` zero).
#[inline(always)]
pub(crate) fn ipv4_checksum(ip: &Ipv4Hdr) -> [u8; 2] {
    let word = |bytes: [u8; 2]| u32::from(u16::from_be_bytes(bytes));
    let sum = word([ip.vihl, ip.tos])
        + word(ip.tot_len)
        + word(ip.id)
        + word(ip.frag)
        + word([ip.ttl, ip.proto])
        + word([ip.src[0], ip.src[1]])
        + word([ip.src[2], ip.src[3]])
        + word([ip.dst[0], ip.dst[1]])
        + word([ip.dst[2], ip.dst[3]]);
    (!fold(sum)).to_be_bytes()
}
