//! Frames as a VM sends them, built for traces and tests, and read back
//! header by header; the Internet checksum; hex dumps (`alcor_types`'s,
//! which `agentctl` shares).

use std::net::Ipv4Addr;

use alcor_proto::control as api;
pub use alcor_types::hexdump;

use crate::core::model::Mac;

pub const BROADCAST: Mac = Mac([0xff; 6]);
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const ETH_LEN: usize = 14;

fn ethernet(dst: Mac, src: Mac, ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::with_capacity(128);
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// An ARP request from `sender` for `target` (42 bytes, unpadded, as a
/// VM's kernel hands it to its device).
pub fn arp_request(
    sender_mac: Mac,
    dst_mac: Mac,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, sender_mac, ETHERTYPE_ARP);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&sender_mac.octets());
    frame.extend_from_slice(&sender_ip.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target_ip.octets());
    frame
}

/// The Internet checksum (RFC 1071) of the concatenated parts, each of
/// even length but the last. Over a header with its checksum in place, 0
/// if the checksum is right.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The pseudo-header a TCP or UDP checksum also covers (RFC 768, 793):
/// the addresses, the protocol and the segment's length.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> [u8; 12] {
    let mut header = [0; 12];
    header[0..4].copy_from_slice(&src.octets());
    header[4..8].copy_from_slice(&dst.octets());
    header[9] = protocol;
    header[10..12].copy_from_slice(&len.to_be_bytes());
    header
}

/// The addresses of an IPv4 packet.
#[derive(Clone, Copy)]
pub struct Addresses {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// The IPv4 header fields a probe chooses.
#[derive(Clone, Copy)]
pub struct Ipv4Fields {
    pub ttl: u8,
    pub protocol: u8,
    pub dont_fragment: bool,
}

/// An IPv4 packet in an Ethernet frame: no options, checksum computed.
pub fn ipv4(
    src_mac: Mac,
    dst_mac: Mac,
    Addresses { src, dst }: Addresses,
    fields: Ipv4Fields,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = ethernet(dst_mac, src_mac, ETHERTYPE_IPV4);
    let total = (20 + payload.len()) as u16;
    let mut header = [0u8; 20];
    header[0] = 0x45;
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header[4..6].copy_from_slice(&0x7a11u16.to_be_bytes());
    let flags: u16 = if fields.dont_fragment { 0x4000 } else { 0 };
    header[6..8].copy_from_slice(&flags.to_be_bytes());
    header[8] = fields.ttl;
    header[9] = fields.protocol;
    header[12..16].copy_from_slice(&src.octets());
    header[16..20].copy_from_slice(&dst.octets());
    let check = checksum(&[&header]);
    header[10..12].copy_from_slice(&check.to_be_bytes());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(payload);
    frame
}

/// The shortest header of IP protocol `protocol` a probe sends.
pub fn least_l4_len(protocol: u8) -> usize {
    match protocol {
        IPPROTO_TCP => 20,
        _ => 8,
    }
}

/// `header` followed by data up to `len` bytes in all (none if
/// shorter), a counting pattern as ping's.
fn padded(mut header: Vec<u8>, len: usize) -> Vec<u8> {
    let data = len.saturating_sub(header.len());
    header.extend((0..data).map(|n| 0x10u8.wrapping_add(n as u8)));
    header
}

/// An ICMP echo request as `ping` sends it: 56 bytes of data, or `len`
/// bytes in all.
pub fn icmp_echo(len: Option<usize>) -> Vec<u8> {
    let mut icmp = padded(vec![8, 0, 0, 0, 0xa1, 0xc0, 0, 1], len.unwrap_or(64));
    let check = checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&check.to_be_bytes());
    icmp
}

/// A TCP SYN without options, with data up to `len` bytes in all.
pub fn tcp_syn(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    len: Option<usize>,
) -> Vec<u8> {
    let mut tcp = padded(vec![0u8; 20], len.unwrap_or(20));
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let pseudo = pseudo_header(src, dst, IPPROTO_TCP, tcp.len() as u16);
    let check = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    tcp
}

/// A UDP datagram with a few bytes of data, or `len` bytes in all.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, len: Option<usize>) -> Vec<u8> {
    let data = b"alcor trace";
    let mut udp = Vec::with_capacity(8 + data.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&[0; 4]);
    udp.extend_from_slice(data);
    let mut udp = match len {
        Some(len) => {
            udp.truncate(8);
            padded(udp, len)
        }
        None => udp,
    };
    let len = udp.len();
    udp[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    let pseudo = pseudo_header(src, dst, IPPROTO_UDP, len as u16);
    let check = match checksum(&[&pseudo, &udp]) {
        // 0 means "no checksum" in UDP: all ones stands for it.
        0 => 0xffff,
        check => check,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    udp
}

fn mac_at(frame: &[u8], offset: usize) -> Option<Mac> {
    Some(Mac(frame.get(offset..offset + 6)?.try_into().ok()?))
}

fn ip_at(frame: &[u8], offset: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = frame.get(offset..offset + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

fn u16_at(frame: &[u8], offset: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        frame.get(offset..offset + 2)?.try_into().ok()?,
    ))
}

/// The outer headers of a VXLAN frame (outer Ethernet, IPv4, UDP,
/// VXLAN) and its inner frame's; `None` if it is not one.
pub fn encapsulation(frame: &[u8]) -> Option<api::Encapsulation> {
    if u16_at(frame, 12)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ETH_LEN..)?;
    let hlen = usize::from(*ip.first()? & 0xf) * 4;
    if hlen < 20 || *ip.get(9)? != IPPROTO_UDP {
        return None;
    }
    let udp = ETH_LEN + hlen;
    let vxlan = udp + 8;
    let vni = frame.get(vxlan + 4..vxlan + 7)?;
    Some(api::Encapsulation {
        outer_src_ip: ip_at(ip, 12)?.to_string(),
        outer_dst_ip: ip_at(ip, 16)?.to_string(),
        udp_src_port: u32::from(u16_at(frame, udp)?),
        udp_dst_port: u32::from(u16_at(frame, udp + 2)?),
        vni: u32::from_be_bytes([0, vni[0], vni[1], vni[2]]),
        outer_ttl: u32::from(ip[8]),
        outer_src_mac: mac_at(frame, 6)?.to_string(),
        outer_dst_mac: mac_at(frame, 0)?.to_string(),
        inner: Some(headers(frame.get(vxlan + 8..)?)),
        ..Default::default()
    })
}

/// The sender (MAC, address) of an ARP frame.
pub fn arp_sender(frame: &[u8]) -> Option<(Mac, Ipv4Addr)> {
    if u16_at(frame, 12)? != ETHERTYPE_ARP {
        return None;
    }
    Some((mac_at(frame, ETH_LEN + 8)?, ip_at(frame, ETH_LEN + 14)?))
}

/// The headers of `frame`, as far as it has them.
pub fn headers(frame: &[u8]) -> api::FrameHeaders {
    let word = |mac: Option<Mac>| mac.map(|m| m.to_string()).unwrap_or_default();
    let ethertype = u16_at(frame, 12);
    let mut headers = api::FrameHeaders {
        eth_dst: word(mac_at(frame, 0)),
        eth_src: word(mac_at(frame, 6)),
        ethertype: match ethertype {
            Some(ETHERTYPE_IPV4) => "IPv4".into(),
            Some(ETHERTYPE_ARP) => "ARP".into(),
            Some(other) => format!("0x{other:04x}"),
            None => String::new(),
        },
        length: frame.len() as u32,
        ..Default::default()
    };
    match ethertype {
        Some(ETHERTYPE_ARP) => headers.arp = arp(frame),
        Some(ETHERTYPE_IPV4) => headers.ipv4 = ipv4_header(frame),
        _ => {}
    }
    headers
}

fn arp(frame: &[u8]) -> Option<api::ArpHeader> {
    let ip = |offset| ip_at(frame, ETH_LEN + offset).map(|ip| ip.to_string());
    let mac = |offset| mac_at(frame, ETH_LEN + offset).map(|mac| mac.to_string());
    Some(api::ArpHeader {
        operation: match u16_at(frame, ETH_LEN + 6)? {
            1 => "request".into(),
            2 => "reply".into(),
            other => other.to_string(),
        },
        sender_mac: mac(8)?,
        sender_ip: ip(14)?,
        target_mac: mac(18)?,
        target_ip: ip(24)?,
    })
}

fn ipv4_header(frame: &[u8]) -> Option<api::Ipv4Header> {
    let ip = frame.get(ETH_LEN..)?;
    let hlen = usize::from(*ip.first()? & 0xf) * 4;
    let header = ip.get(..hlen.max(20))?;
    let protocol = header[9];
    let mut view = api::Ipv4Header {
        src: ip_at(header, 12)?.to_string(),
        dst: ip_at(header, 16)?.to_string(),
        ttl: u32::from(header[8]),
        protocol: match protocol {
            IPPROTO_ICMP => "icmp".into(),
            IPPROTO_TCP => "tcp".into(),
            IPPROTO_UDP => "udp".into(),
            other => other.to_string(),
        },
        checksum: u32::from(u16_at(header, 10)?),
        checksum_valid: checksum(&[header]) == 0,
        total_length: u32::from(u16_at(header, 2)?),
        ..Default::default()
    };
    let first_fragment = u16_at(header, 6)? & 0x1fff == 0;
    let l4 = ip
        .get(hlen..)
        .filter(|_| first_fragment)
        .unwrap_or_default();
    match protocol {
        IPPROTO_ICMP if l4.len() >= 2 => {
            view.transport = match (l4[0], l4[1]) {
                (0, 0) => "echo reply".into(),
                (8, 0) => "echo request".into(),
                (11, 0) => "time exceeded".into(),
                (3, code) => format!("destination unreachable (code {code})"),
                (kind, code) => format!("type {kind} code {code}"),
            };
        }
        IPPROTO_TCP | IPPROTO_UDP if l4.len() >= 4 => {
            let (sport, dport) = (u16_at(l4, 0)?, u16_at(l4, 2)?);
            view.src_port = u32::from(sport);
            view.dst_port = u32::from(dport);
            let ports = format!("{sport} -> {dport}");
            view.transport = match l4.get(13) {
                Some(&flags) if protocol == IPPROTO_TCP => {
                    let names: Vec<&str> = [
                        (0x02, "SYN"),
                        (0x10, "ACK"),
                        (0x01, "FIN"),
                        (0x04, "RST"),
                        (0x08, "PSH"),
                    ]
                    .into_iter()
                    .filter(|(bit, _)| flags & bit != 0)
                    .map(|(_, name)| name)
                    .collect();
                    format!("{} {ports}", names.join("+"))
                        .trim_start()
                        .to_string()
                }
                _ => ports,
            };
        }
        _ => {}
    }
    Some(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(text: &str) -> Mac {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn frames_have_right_checksums_and_read_back() {
        let (src, dst) = (ip("10.0.1.10"), ip("10.0.2.20"));
        for (protocol, payload, words) in [
            (IPPROTO_ICMP, icmp_echo(None), "echo request"),
            (IPPROTO_ICMP, icmp_echo(Some(1480)), "echo request"),
            (
                IPPROTO_TCP,
                tcp_syn(src, dst, 49152, 80, None),
                "SYN 49152 -> 80",
            ),
            (
                IPPROTO_TCP,
                tcp_syn(src, dst, 49152, 80, Some(1480)),
                "SYN 49152 -> 80",
            ),
            (IPPROTO_UDP, udp(src, dst, 49152, 53, None), "49152 -> 53"),
            (
                IPPROTO_UDP,
                udp(src, dst, 49152, 53, Some(1480)),
                "49152 -> 53",
            ),
        ] {
            let frame = ipv4(
                mac("fa:16:3e:00:00:0a"),
                mac("fa:16:3e:ff:ff:01"),
                Addresses { src, dst },
                Ipv4Fields {
                    ttl: 64,
                    protocol,
                    dont_fragment: true,
                },
                &payload,
            );
            let headers = headers(&frame);
            assert_eq!(headers.eth_src, "fa:16:3e:00:00:0a");
            assert_eq!(headers.eth_dst, "fa:16:3e:ff:ff:01");
            assert_eq!(headers.ethertype, "IPv4");
            let ipv4 = headers.ipv4.unwrap();
            assert!(ipv4.checksum_valid, "{ipv4:?}");
            assert_eq!(
                (ipv4.src.as_str(), ipv4.dst.as_str(), ipv4.ttl),
                ("10.0.1.10", "10.0.2.20", 64)
            );
            assert_eq!(ipv4.transport, words);
            assert_eq!(ipv4.total_length as usize, frame.len() - 14);
        }
        // The transport checksums: the sum over what they cover is all ones.
        let tcp = tcp_syn(src, dst, 49152, 80, None);
        let udp = udp(src, dst, 49152, 53, None);
        for (protocol, segment) in [(IPPROTO_TCP, &tcp), (IPPROTO_UDP, &udp)] {
            let pseudo = pseudo_header(src, dst, protocol, segment.len() as u16);
            assert_eq!(checksum(&[&pseudo, segment]), 0, "protocol {protocol}");
        }
        assert_eq!(checksum(&[&icmp_echo(None)]), 0);
        let icmp = icmp_echo(None);
        assert_eq!(icmp.len(), 64, "as ping sends it: 8 + 56 bytes");
        let frame = ipv4(
            Mac([2; 6]),
            Mac([4; 6]),
            Addresses { src, dst },
            Ipv4Fields {
                ttl: 64,
                protocol: 1,
                dont_fragment: true,
            },
            &icmp,
        );
        assert_eq!(frame.len(), 98);
    }

    #[test]
    fn an_arp_request_reads_back() {
        let frame = arp_request(
            mac("fa:16:3e:00:00:0a"),
            BROADCAST,
            ip("10.0.1.10"),
            ip("10.0.1.1"),
        );
        assert_eq!(frame.len(), 42);
        let arp = headers(&frame).arp.unwrap();
        assert_eq!(arp.operation, "request");
        assert_eq!(
            (arp.sender_ip.as_str(), arp.target_ip.as_str()),
            ("10.0.1.10", "10.0.1.1")
        );
        assert_eq!(
            arp_sender(&frame),
            Some((mac("fa:16:3e:00:00:0a"), ip("10.0.1.10")))
        );
    }

    #[test]
    fn a_short_frame_reads_as_far_as_it_goes() {
        let short = headers(&[0xff; 20]);
        assert_eq!(short.eth_dst, "ff:ff:ff:ff:ff:ff");
        assert_eq!(short.ethertype, "0xffff");
        assert_eq!(short.ipv4, None);
        assert_eq!(headers(&[1, 2]).eth_dst, "");
    }
}
