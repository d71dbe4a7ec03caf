//! Ethernet/IPv4/UDP framing of DHCP messages, by hand: the packet socket
//! hands us whole frames, and replies leave as whole frames.

use std::net::Ipv4Addr;

use super::counters::DropReason;
use crate::{
    core::model::Mac,
    packet::{checksum, pseudo_header},
};

pub const ETHERNET_HEADER_LEN: usize = 14;
pub const IPV4_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
/// What a reply puts in front of its DHCP message.
pub const HEADERS_LEN: usize = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + UDP_HEADER_LEN;
/// IPv4 and UDP headers: what the maximum message sizes of RFC 2132 include.
pub const IP_UDP_HEADERS_LEN: usize = IPV4_HEADER_LEN + UDP_HEADER_LEN;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
const IP_PROTOCOL_UDP: u8 = 17;
pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
const DEFAULT_TTL: u8 = 64;

pub const BROADCAST_MAC: Mac = Mac([0xff; 6]);

/// A UDP datagram to the DHCP server port, as it arrived.
#[derive(Debug)]
pub struct Datagram<'a> {
    pub src_mac: Mac,
    pub dst_ip: Ipv4Addr,
    pub payload: &'a [u8],
}

/// Parses an Ethernet frame carrying IPv4/UDP to port 67.
///
/// The UDP checksum is not checked: a frame from a veth peer may carry a
/// partial (offloaded) checksum, which the kernel never completes for a
/// packet socket.
pub fn parse(frame: &[u8]) -> Result<Datagram<'_>, DropReason> {
    let ethernet = frame
        .get(..ETHERNET_HEADER_LEN)
        .ok_or(DropReason::Truncated)?;
    if u16::from_be_bytes([ethernet[12], ethernet[13]]) != ETHERTYPE_IPV4 {
        return Err(DropReason::NotDhcp);
    }
    let src_mac = Mac(octets(&ethernet[6..12]));

    let ip = &frame[ETHERNET_HEADER_LEN..];
    let fixed = ip.get(..IPV4_HEADER_LEN).ok_or(DropReason::Truncated)?;
    let header_len = usize::from(fixed[0] & 0x0f) * 4;
    if fixed[0] >> 4 != 4 || header_len < IPV4_HEADER_LEN {
        return Err(DropReason::BadIpHeader);
    }
    let header = ip.get(..header_len).ok_or(DropReason::Truncated)?;
    if checksum(&[header]) != 0 {
        return Err(DropReason::BadIpHeader);
    }
    // More-fragments flag or a fragment offset: DHCP is never fragmented.
    if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
        return Err(DropReason::BadIpHeader);
    }
    if header[9] != IP_PROTOCOL_UDP {
        return Err(DropReason::NotDhcp);
    }
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if total_len < header_len {
        return Err(DropReason::BadIpHeader);
    }
    // Frames may carry Ethernet padding after the IP packet.
    let packet = ip.get(..total_len).ok_or(DropReason::Truncated)?;
    let dst_ip = Ipv4Addr::from(octets::<4>(&header[16..20]));

    let udp = &packet[header_len..];
    let udp_header = udp.get(..UDP_HEADER_LEN).ok_or(DropReason::Truncated)?;
    if u16::from_be_bytes([udp_header[2], udp_header[3]]) != SERVER_PORT {
        return Err(DropReason::NotDhcp);
    }
    let udp_len = usize::from(u16::from_be_bytes([udp_header[4], udp_header[5]]));
    if udp_len < UDP_HEADER_LEN {
        return Err(DropReason::Truncated);
    }
    let datagram = udp.get(..udp_len).ok_or(DropReason::Truncated)?;
    Ok(Datagram {
        src_mac,
        dst_ip,
        payload: &datagram[UDP_HEADER_LEN..],
    })
}

/// Where a reply goes, on the device it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// Where a reply comes from: the subnet's gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub mac: Mac,
    pub ip: Ipv4Addr,
}

/// Reserves room for the headers at the start of `frame` (cleared): the
/// DHCP message is then appended, and [`finish`] fills the headers in.
pub fn start(frame: &mut Vec<u8>) {
    frame.clear();
    frame.resize(HEADERS_LEN, 0);
}

/// Writes the Ethernet, IPv4 and UDP headers in front of the DHCP message
/// that follows them in `frame`, checksums included.
pub fn finish(frame: &mut [u8], source: Source, destination: Destination) {
    let ip_len = frame.len() - ETHERNET_HEADER_LEN;
    let udp_len = ip_len - IPV4_HEADER_LEN;
    // A reply never nears 64 KiB: its size is bounded by the port MTU.
    let ip_len_field = u16::try_from(ip_len).unwrap_or(u16::MAX);
    let udp_len_field = u16::try_from(udp_len).unwrap_or(u16::MAX);

    let (ethernet, rest) = frame.split_at_mut(ETHERNET_HEADER_LEN);
    ethernet[..6].copy_from_slice(&destination.mac.octets());
    ethernet[6..12].copy_from_slice(&source.mac.octets());
    ethernet[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());

    let (ip, udp) = rest.split_at_mut(IPV4_HEADER_LEN);
    ip.copy_from_slice(&[0; IPV4_HEADER_LEN]);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len_field.to_be_bytes());
    ip[8] = DEFAULT_TTL;
    ip[9] = IP_PROTOCOL_UDP;
    ip[12..16].copy_from_slice(&source.ip.octets());
    ip[16..20].copy_from_slice(&destination.ip.octets());
    let ip_checksum = checksum(&[ip]);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    udp[0..2].copy_from_slice(&SERVER_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&destination.port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len_field.to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    let pseudo = pseudo_header(source.ip, destination.ip, IP_PROTOCOL_UDP, udp_len_field);
    // 0 means "no checksum" in UDP over IPv4: a computed 0 is sent as ~0.
    let udp_checksum = match checksum(&[&pseudo, udp]) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&udp_checksum.to_be_bytes());
}

fn octets<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(&bytes[..N]);
    array
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Mac = Mac([0x02, 0, 0, 0, 0, 1]);
    const GATEWAY: Source = Source {
        mac: Mac([0xfa, 0x16, 0x3e, 0, 0, 1]),
        ip: Ipv4Addr::new(10, 0, 1, 1),
    };

    fn reply_frame(payload: &[u8], destination: Destination) -> Vec<u8> {
        let mut frame = Vec::new();
        start(&mut frame);
        frame.extend_from_slice(payload);
        finish(&mut frame, GATEWAY, destination);
        frame
    }

    #[test]
    fn built_frames_have_valid_checksums_and_lengths() {
        let destination = Destination {
            mac: CLIENT,
            ip: Ipv4Addr::new(10, 0, 1, 10),
            port: CLIENT_PORT,
        };
        // Odd length, to exercise the checksum's last byte.
        let frame = reply_frame(&[7; 301], destination);
        let ip = &frame[ETHERNET_HEADER_LEN..];
        assert_eq!(checksum(&[&ip[..IPV4_HEADER_LEN]]), 0);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, ip.len());
        let udp = &ip[IPV4_HEADER_LEN..];
        assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip[12..20]);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&udp[4..6]);
        assert_eq!(checksum(&[&pseudo, udp]), 0, "UDP checksum");
        assert_eq!(&frame[..6], &CLIENT.octets());
        assert_eq!(&frame[6..12], &GATEWAY.mac.octets());
    }

    #[test]
    fn parse_takes_what_finish_built_once_the_port_is_67() {
        let destination = Destination {
            mac: BROADCAST_MAC,
            ip: Ipv4Addr::BROADCAST,
            port: SERVER_PORT,
        };
        let mut frame = reply_frame(b"hello", destination);
        // Ethernet padding after the IP packet is ignored.
        frame.extend_from_slice(&[0; 20]);
        let datagram = parse(&frame).unwrap();
        assert_eq!(datagram.payload, b"hello");
        assert_eq!(datagram.src_mac, GATEWAY.mac);
        assert_eq!(datagram.dst_ip, Ipv4Addr::BROADCAST);
    }

    #[test]
    fn parse_rejects_what_is_not_a_whole_dhcp_datagram() {
        let destination = Destination {
            mac: BROADCAST_MAC,
            ip: Ipv4Addr::BROADCAST,
            port: SERVER_PORT,
        };
        let good = reply_frame(&[1; 10], destination);
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_err(), "accepted {len} bytes");
        }
        let mut bad_checksum = good.clone();
        bad_checksum[ETHERNET_HEADER_LEN + 8] ^= 1;
        assert_eq!(parse(&bad_checksum).unwrap_err(), DropReason::BadIpHeader);

        let to_client_port = reply_frame(
            &[1; 10],
            Destination {
                port: CLIENT_PORT,
                ..destination
            },
        );
        assert_eq!(parse(&to_client_port).unwrap_err(), DropReason::NotDhcp);
    }
}
