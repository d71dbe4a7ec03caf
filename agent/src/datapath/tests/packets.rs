//! Frames for the program tests, built from scratch (checksums computed in
//! full, independently of the programs' incremental updates).

use std::net::Ipv4Addr;

use crate::{core::model::Mac, packet::checksum};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const BROADCAST: Mac = Mac([0xff; 6]);

pub fn ether(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend(dst.0);
    frame.extend(src.0);
    frame.extend(ethertype.to_be_bytes());
    frame.extend(payload);
    frame
}

/// An ARP packet (Ethernet/IPv4).
pub fn arp(op: u16, sha: Mac, spa: Ipv4Addr, tha: Mac, tpa: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4];
    arp.extend(op.to_be_bytes());
    arp.extend(sha.0);
    arp.extend(spa.octets());
    arp.extend(tha.0);
    arp.extend(tpa.octets());
    arp
}

/// A broadcast ARP request frame, padded to Ethernet's minimum of 60 bytes
/// as a NIC would.
pub fn arp_request(sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut frame = ether(
        BROADCAST,
        sha,
        ETH_P_ARP,
        &arp(1, sha, spa, Mac([0; 6]), tpa),
    );
    frame.resize(60, 0);
    frame
}

/// An IPv4 header's fields.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset.
    pub frag: u16,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        Ipv4 {
            src,
            dst,
            ttl: 64,
            proto,
            tos: 0,
            id: 0x1234,
            // Don't fragment.
            frag: 0x4000,
        }
    }

    /// The packet: header with its checksum, then `payload`.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut header = vec![0x45, self.tos];
        header.extend((20 + payload.len() as u16).to_be_bytes());
        header.extend(self.id.to_be_bytes());
        header.extend(self.frag.to_be_bytes());
        header.extend([self.ttl, self.proto, 0, 0]);
        header.extend(self.src.octets());
        header.extend(self.dst.octets());
        let check = checksum(&[&header]);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        header.extend(payload);
        header
    }
}

pub const ICMP: u8 = 1;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;

/// An ICMP message with its checksum.
pub fn icmp(kind: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut message = vec![kind, code, 0, 0];
    message.extend(rest);
    message.extend(data);
    let check = checksum(&[&message]);
    message[2..4].copy_from_slice(&check.to_be_bytes());
    message
}

/// The ICMP error (`kind`, `code`, `rest`) a gateway (`gateway_mac`,
/// `gateway_ip`) sends back to the sender of `original` (an IPv4 packet
/// from `to_mac`), quoting its IP header and 8 bytes, as the port program
/// writes it: TOS 0xc0, TTL 64, no identification.
pub fn icmp_error_frame(
    (gateway_mac, gateway_ip): (Mac, Ipv4Addr),
    to_mac: Mac,
    (kind, code, rest): (u8, u8, [u8; 4]),
    original: &[u8],
) -> Vec<u8> {
    let to_ip = Ipv4Addr::from(<[u8; 4]>::try_from(&original[12..16]).unwrap());
    let error = Ipv4 {
        src: gateway_ip,
        dst: to_ip,
        ttl: 64,
        proto: ICMP,
        tos: 0xc0,
        id: 0,
        frag: 0,
    };
    let quote = &original[..original.len().min(28)];
    ether(
        to_mac,
        gateway_mac,
        ETH_P_IP,
        &error.packet(&icmp(kind, code, rest, quote)),
    )
}

/// An ICMP echo request (identifier 0x0042, sequence 7) with `data`.
pub fn echo_request(data: &[u8]) -> Vec<u8> {
    icmp(8, 0, [0, 0x42, 0, 7], data)
}

/// A UDP datagram (checksum 0: none, as IPv4 allows).
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut datagram = Vec::new();
    datagram.extend(sport.to_be_bytes());
    datagram.extend(dport.to_be_bytes());
    datagram.extend((8 + payload.len() as u16).to_be_bytes());
    datagram.extend([0, 0]);
    datagram.extend(payload);
    datagram
}

/// Bytes 0, 1, 2, ... of length `len`.
pub fn counting(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}
