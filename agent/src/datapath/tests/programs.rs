//! `port_from_vm` on packet fixtures with BPF_PROG_TEST_RUN (through
//! [`Datapath::trace`]): exact verdict and exact bytes out, for each case
//! the datapath handles. The ports are veths in a private network namespace
//! (a test run's context must name an existing device); nothing is sent.

use std::net::Ipv4Addr;

use super::{
    super::*,
    Netlink, PinDir, in_new_netns,
    packets::{self, *},
    privileged,
};
use crate::{
    core::{
        model::{AddressPair, GatewayAddress, Mac, Vni},
        spec::{DatapathModel, EndpointSpec, Location, PortSpec, SubnetSpec},
    },
    packet::checksum,
};

pub const VNI1: u64 = 100;
pub const VNI2: u64 = 200;

pub fn vni(n: u64) -> Vni {
    Vni::try_from(n).unwrap()
}

pub fn mac(last: u16) -> Mac {
    let [a, b] = last.to_be_bytes();
    Mac([0xfa, 0x16, 0x3e, 0, a, b])
}

pub fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// VPC 1: subnets 1 and 2 on router r1, subnet 3 on no router.
pub const GW1_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0xff, 1, 1]);
pub const GW2_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0xff, 2, 1]);
pub const GW3_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0xff, 3, 1]);
/// VPC 2: the same subnet 10.0.1.0/24 as VPC 1's subnet 1.
pub const GW21_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0xff, 0x21, 1]);

pub fn subnet(vni_: u64, cidr: &str, gateway: &str, mac: Mac, router: Option<&str>) -> SubnetSpec {
    SubnetSpec {
        vni: vni(vni_),
        cidr: cidr.parse().unwrap(),
        gateway: Some(GatewayAddress {
            ip: ip(gateway),
            mac,
        }),
        router: router.map(Into::into),
    }
}

pub fn port(ifindex: u32, vni_: u64, mac: Mac, address: &str, redirect: Redirect) -> PortSpec {
    PortSpec {
        ifindex,
        vni: vni(vni_),
        mac,
        redirect,
        fixed_ips: vec![ip(address)],
        allowed_address_pairs: Vec::new(),
    }
}

/// The model for `ports`: their endpoints, the subnets of both VPCs and a
/// remote endpoint 10.0.1.50 in VPC 1.
pub fn model(ports: Vec<PortSpec>) -> DatapathModel {
    let mut endpoints: Vec<_> = ports.iter().flat_map(PortSpec::endpoints).collect();
    endpoints.push(EndpointSpec {
        vni: vni(VNI1),
        ip: ip("10.0.1.50"),
        mac: mac(0x50),
        location: Location::Remote {
            host: ip("198.18.0.2"),
        },
    });
    DatapathModel {
        ports,
        endpoints,
        subnets: vec![
            subnet(VNI1, "10.0.1.0/24", "10.0.1.1", GW1_MAC, Some("r1")),
            subnet(VNI1, "10.0.2.0/24", "10.0.2.1", GW2_MAC, Some("r1")),
            subnet(VNI1, "10.0.3.0/24", "10.0.3.1", GW3_MAC, None),
            subnet(VNI2, "10.0.1.0/24", "10.0.1.1", GW21_MAC, None),
        ],
        ..DatapathModel::default()
    }
}

const A_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x0a]);
const B_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x0b]);
const C_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x0c]);
const D_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x0d]);
const E_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x0e]);
/// A VIP of port A, with a MAC of its own (an allowed address pair).
const VIP_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x64]);

/// Ports A (10.0.1.10, with a VIP pair 10.0.1.100 and a prefix pair
/// 192.168.10.0/24), B (10.0.1.11) in subnet 1, C (10.0.2.20, a tap) in
/// subnet 2, D (10.0.3.30) in subnet 3 of VPC 1; E (10.0.1.11, as B) in
/// VPC 2; and a port U that is attached but not programmed.
struct Fixture {
    _pins: PinDir,
    datapath: Datapath,
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    e: u32,
    u: u32,
}

impl Fixture {
    fn new() -> Self {
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let [a, b, c, d, e, u] = ["a", "b", "c", "d", "e", "u"].map(|name| {
            netlink
                .add_veth(&format!("port-{name}"), &format!("vm-{name}"), None)
                .0
        });
        let mut datapath = Datapath::open(&pins.0).unwrap();
        let mut port_a = port(a, VNI1, A_MAC, "10.0.1.10", Redirect::Peer);
        port_a.allowed_address_pairs = vec![
            AddressPair {
                ip: "10.0.1.100/32".parse().unwrap(),
                mac: VIP_MAC,
            },
            AddressPair {
                ip: "192.168.10.0/24".parse().unwrap(),
                mac: A_MAC,
            },
        ];
        let model = model(vec![
            port_a,
            port(b, VNI1, B_MAC, "10.0.1.11", Redirect::Peer),
            port(c, VNI1, C_MAC, "10.0.2.20", Redirect::Egress),
            port(d, VNI1, D_MAC, "10.0.3.30", Redirect::Peer),
            port(e, VNI2, E_MAC, "10.0.1.11", Redirect::Peer),
        ]);
        datapath.sync(&model).unwrap();
        Fixture {
            _pins: pins,
            datapath,
            a,
            b,
            c,
            d,
            e,
            u,
        }
    }

    #[track_caller]
    fn trace(&self, ifindex: u32, frame: &[u8]) -> TraceResult {
        self.datapath
            .reader()
            .unwrap()
            .trace(ifindex, frame)
            .unwrap()
    }

    /// Asserts that `frame` from port `ifindex` is dropped for `reason`,
    /// untouched.
    #[track_caller]
    fn assert_dropped(&self, ifindex: u32, frame: &[u8], reason: DropReason) {
        let result = self.trace(ifindex, frame);
        assert_eq!(result.verdict, Verdict::Drop(reason));
        assert_eq!(result.output, frame, "a dropped frame is left as it came");
    }
}

/// Runs `test` on a fresh fixture in a private network namespace.
fn with_fixture(test: impl FnOnce(Fixture) + Send + 'static) {
    if !privileged() {
        return;
    }
    in_new_netns(|| test(Fixture::new()));
}

/// An IPv4 frame from A's MAC and address.
fn from_a(dst_mac: Mac, dst: &str, proto: u8, payload: &[u8]) -> Vec<u8> {
    let packet = Ipv4::new(ip("10.0.1.10"), ip(dst), proto).packet(payload);
    ether(dst_mac, A_MAC, ETH_P_IP, &packet)
}

#[test]
fn arp_for_the_gateway_is_answered_in_place() {
    with_fixture(|f| {
        let request = arp_request(A_MAC, ip("10.0.1.10"), ip("10.0.1.1"));
        let result = f.trace(f.a, &request);
        assert_eq!(result.verdict, Verdict::Answered(Answer::Arp));
        let mut reply = ether(
            A_MAC,
            GW1_MAC,
            ETH_P_ARP,
            &arp(2, GW1_MAC, ip("10.0.1.1"), A_MAC, ip("10.0.1.10")),
        );
        // The request's padding stays.
        reply.resize(60, 0);
        assert_eq!(result.output, reply);
    });
}

#[test]
fn arp_for_a_local_endpoint_and_a_vip_is_answered_in_place() {
    with_fixture(|f| {
        for (target, target_mac) in [("10.0.1.11", B_MAC), ("10.0.1.100", VIP_MAC)] {
            let request = arp_request(A_MAC, ip("10.0.1.10"), ip(target));
            let result = f.trace(f.a, &request);
            assert_eq!(result.verdict, Verdict::Answered(Answer::Arp), "{target}");
            let mut reply = ether(
                A_MAC,
                target_mac,
                ETH_P_ARP,
                &arp(2, target_mac, ip(target), A_MAC, ip("10.0.1.10")),
            );
            reply.resize(60, 0);
            assert_eq!(result.output, reply, "{target}");
        }
        // B asks for A, by unicast (a Linux neighbor refresh): same answer.
        let mut request = ether(
            A_MAC,
            B_MAC,
            ETH_P_ARP,
            &arp(1, B_MAC, ip("10.0.1.11"), A_MAC, ip("10.0.1.10")),
        );
        let result = f.trace(f.b, &request);
        assert_eq!(result.verdict, Verdict::Answered(Answer::Arp));
        request = ether(
            B_MAC,
            A_MAC,
            ETH_P_ARP,
            &arp(2, A_MAC, ip("10.0.1.10"), B_MAC, ip("10.0.1.11")),
        );
        assert_eq!(result.output, request);
    });
}

#[test]
fn arp_for_unknown_addresses_is_not_answered() {
    with_fixture(|f| {
        // Unknown in the subnet; known but in another subnet (ARP is
        // link-local); a remote address outside the subnet.
        for target in ["10.0.1.99", "10.0.2.20", "10.0.3.1", "8.8.8.8"] {
            let request = arp_request(A_MAC, ip("10.0.1.10"), ip(target));
            f.assert_dropped(f.a, &request, DropReason::ArpUnknownTarget);
        }
        // Its own address, as duplicate address detection asks (a probe
        // from 0.0.0.0): no answer, so the check passes.
        let probe = arp_request(A_MAC, Ipv4Addr::UNSPECIFIED, ip("10.0.1.10"));
        f.assert_dropped(f.a, &probe, DropReason::ArpOwnAddress);
        // A probe for someone else's address is answered: it is taken.
        let probe = arp_request(A_MAC, Ipv4Addr::UNSPECIFIED, ip("10.0.1.11"));
        assert_eq!(f.trace(f.a, &probe).verdict, Verdict::Answered(Answer::Arp));
        // Announcements and replies from the VM are not needed.
        let announcement = arp_request(A_MAC, ip("10.0.1.10"), ip("10.0.1.10"));
        f.assert_dropped(f.a, &announcement, DropReason::ArpNotRequest);
        let reply = ether(
            B_MAC,
            A_MAC,
            ETH_P_ARP,
            &arp(2, A_MAC, ip("10.0.1.10"), B_MAC, ip("10.0.1.11")),
        );
        f.assert_dropped(f.a, &reply, DropReason::ArpNotRequest);
    });
}

#[test]
fn gateway_ping_is_answered_in_place_with_right_checksums() {
    with_fixture(|f| {
        // Odd length, a TTL other than the reply's, DF set: all must show
        // in the reply as the kernel would build it.
        let data = counting(37);
        let mut request = Ipv4::new(ip("10.0.1.10"), ip("10.0.1.1"), ICMP);
        request.ttl = 61;
        let frame = ether(
            GW1_MAC,
            A_MAC,
            ETH_P_IP,
            &request.packet(&echo_request(&data)),
        );
        let result = f.trace(f.a, &frame);
        assert_eq!(result.verdict, Verdict::Answered(Answer::EchoReply));
        let reply = Ipv4 {
            src: ip("10.0.1.1"),
            dst: ip("10.0.1.10"),
            ttl: 64,
            ..request
        };
        let expected = ether(
            A_MAC,
            GW1_MAC,
            ETH_P_IP,
            &reply.packet(&icmp(0, 0, [0, 0x42, 0, 7], &data)),
        );
        assert_eq!(result.output, expected);
        assert_eq!(
            checksum(&[&result.output[14..34]]),
            0,
            "IPv4 header checksum"
        );
        assert_eq!(checksum(&[&result.output[34..]]), 0, "ICMP checksum");

        // Anything else to the gateway is dropped.
        let udp = from_a(GW1_MAC, "10.0.1.1", UDP, &packets::udp(1000, 53, b"?"));
        f.assert_dropped(f.a, &udp, DropReason::ToGateway);
        let reply = from_a(GW1_MAC, "10.0.1.1", ICMP, &icmp(0, 0, [0; 4], b""));
        f.assert_dropped(f.a, &reply, DropReason::ToGateway);
    });
}

#[test]
fn spoofed_sources_are_dropped() {
    with_fixture(|f| {
        let payload = packets::udp(1000, 2000, b"hello");
        // Someone else's MAC (B's), from A's port.
        let packet = Ipv4::new(ip("10.0.1.10"), ip("10.0.1.11"), UDP).packet(&payload);
        let frame = ether(B_MAC, mac(0x99), ETH_P_IP, &packet);
        f.assert_dropped(f.a, &frame, DropReason::SpoofedMac);
        let frame = ether(A_MAC, B_MAC, ETH_P_IP, &packet);
        f.assert_dropped(f.a, &frame, DropReason::SpoofedMac);
        // A multicast source MAC.
        let frame = ether(B_MAC, Mac([1, 0, 0x5e, 0, 0, 1]), ETH_P_IP, &packet);
        f.assert_dropped(f.a, &frame, DropReason::SpoofedMac);
        // A's MAC with B's address, or with the VIP (which goes with the
        // VIP's own MAC).
        for source in ["10.0.1.11", "10.0.1.100", "0.0.0.0"] {
            let packet = Ipv4::new(ip(source), ip("10.0.1.11"), UDP).packet(&payload);
            let frame = ether(B_MAC, A_MAC, ETH_P_IP, &packet);
            f.assert_dropped(f.a, &frame, DropReason::SpoofedIp);
        }
        // ARP lies too: a sender IP not its own, a sender MAC not the
        // frame's.
        let request = arp_request(A_MAC, ip("10.0.1.11"), ip("10.0.1.1"));
        f.assert_dropped(f.a, &request, DropReason::SpoofedIp);
        let mut request = arp_request(A_MAC, ip("10.0.1.10"), ip("10.0.1.1"));
        request[6..12].copy_from_slice(&B_MAC.0);
        f.assert_dropped(f.a, &request, DropReason::SpoofedMac);
    });
}

#[test]
fn allowed_address_pairs_may_send() {
    with_fixture(|f| {
        let payload = packets::udp(1000, 2000, b"hello");
        // The VIP, with its MAC.
        let packet = Ipv4::new(ip("10.0.1.100"), ip("10.0.1.11"), UDP).packet(&payload);
        let frame = ether(B_MAC, VIP_MAC, ETH_P_IP, &packet);
        let result = f.trace(f.a, &frame);
        let delivered = Verdict::Redirect {
            ifindex: f.b,
            redirect: Redirect::Peer,
            routed: false,
        };
        assert_eq!(result.verdict, delivered);
        assert_eq!(result.output, frame);
        // Anywhere in the prefix pair, with the port's MAC.
        let packet = Ipv4::new(ip("192.168.10.77"), ip("10.0.1.11"), UDP).packet(&payload);
        let frame = ether(B_MAC, A_MAC, ETH_P_IP, &packet);
        assert_eq!(f.trace(f.a, &frame).verdict, delivered);
        // Not beyond it, nor with the VIP's MAC.
        let packet = Ipv4::new(ip("192.168.11.77"), ip("10.0.1.11"), UDP).packet(&payload);
        let frame = ether(B_MAC, A_MAC, ETH_P_IP, &packet);
        f.assert_dropped(f.a, &frame, DropReason::SpoofedIp);
        let packet = Ipv4::new(ip("192.168.10.77"), ip("10.0.1.11"), UDP).packet(&payload);
        let frame = ether(B_MAC, VIP_MAC, ETH_P_IP, &packet);
        f.assert_dropped(f.a, &frame, DropReason::SpoofedIp);
    });
}

#[test]
fn same_subnet_traffic_is_redirected_untouched() {
    with_fixture(|f| {
        let frame = from_a(B_MAC, "10.0.1.11", TCP, &counting(40));
        let result = f.trace(f.a, &frame);
        assert_eq!(
            result.verdict,
            Verdict::Redirect {
                ifindex: f.b,
                redirect: Redirect::Peer,
                routed: false
            }
        );
        assert_eq!(result.output, frame);
        // To a MAC that is not the destination's.
        let frame = from_a(C_MAC, "10.0.1.11", TCP, &counting(40));
        f.assert_dropped(f.a, &frame, DropReason::WrongDestinationMac);
        // To another subnet without the gateway.
        let frame = from_a(C_MAC, "10.0.2.20", TCP, &counting(40));
        f.assert_dropped(f.a, &frame, DropReason::OffSubnet);
    });
}

#[test]
fn traffic_between_subnets_of_a_router_is_routed() {
    with_fixture(|f| {
        let payload = counting(64);
        let mut sent = Ipv4::new(ip("10.0.1.10"), ip("10.0.2.20"), UDP);
        sent.ttl = 17;
        let frame = ether(GW1_MAC, A_MAC, ETH_P_IP, &sent.packet(&payload));
        let result = f.trace(f.a, &frame);
        assert_eq!(
            result.verdict,
            Verdict::Redirect {
                ifindex: f.c,
                redirect: Redirect::Egress,
                routed: true
            }
        );
        let routed = Ipv4 { ttl: 16, ..sent };
        let expected = ether(C_MAC, GW2_MAC, ETH_P_IP, &routed.packet(&payload));
        assert_eq!(result.output, expected);
        assert_eq!(checksum(&[&result.output[14..34]]), 0);

        // And back: C (a tap) to A (a veth).
        let back = Ipv4::new(ip("10.0.2.20"), ip("10.0.1.10"), UDP);
        let frame = ether(GW2_MAC, C_MAC, ETH_P_IP, &back.packet(&payload));
        let result = f.trace(f.c, &frame);
        assert_eq!(
            result.verdict,
            Verdict::Redirect {
                ifindex: f.a,
                redirect: Redirect::Peer,
                routed: true
            }
        );
        let routed = Ipv4 { ttl: 63, ..back };
        assert_eq!(
            result.output,
            ether(A_MAC, GW1_MAC, ETH_P_IP, &routed.packet(&payload))
        );

        // Subnet 3 is on no router.
        let frame = from_a(GW1_MAC, "10.0.3.30", UDP, &payload);
        f.assert_dropped(f.a, &frame, DropReason::NotRouted);
        let back = Ipv4::new(ip("10.0.3.30"), ip("10.0.1.10"), UDP);
        let frame = ether(GW3_MAC, D_MAC, ETH_P_IP, &back.packet(&payload));
        f.assert_dropped(f.d, &frame, DropReason::NotRouted);
    });
}

#[test]
fn ttl_running_out_at_the_router_is_answered_with_time_exceeded() {
    with_fixture(|f| {
        let payload = packets::udp(33434, 33435, &counting(100));
        let mut sent = Ipv4::new(ip("10.0.1.10"), ip("10.0.2.20"), UDP);
        sent.ttl = 1;
        let original = sent.packet(&payload);
        let frame = ether(GW1_MAC, A_MAC, ETH_P_IP, &original);
        let result = f.trace(f.a, &frame);
        assert_eq!(result.verdict, Verdict::Answered(Answer::TimeExceeded));
        // From the sender's gateway: its IP header and 8 bytes quoted.
        let gateway = (GW1_MAC, ip("10.0.1.1"));
        let time_exceeded = (11, 0, [0; 4]);
        let expected = icmp_error_frame(gateway, A_MAC, time_exceeded, &original);
        assert_eq!(result.output, expected);
        assert_eq!(
            checksum(&[&result.output[14..34]]),
            0,
            "IPv4 header checksum"
        );
        assert_eq!(checksum(&[&result.output[34..]]), 0, "ICMP checksum");

        // A packet shorter than its header and 8 bytes is quoted whole.
        let short = sent.packet(&[1, 2, 3]);
        let frame = ether(GW1_MAC, A_MAC, ETH_P_IP, &short);
        let result = f.trace(f.a, &frame);
        assert_eq!(result.verdict, Verdict::Answered(Answer::TimeExceeded));
        let expected = icmp_error_frame(gateway, A_MAC, time_exceeded, &short);
        assert_eq!(result.output, expected);

        // No ICMP error about an ICMP error.
        let mut unreachable = sent;
        unreachable.proto = ICMP;
        let packet = unreachable.packet(&icmp(3, 3, [0; 4], &counting(28)));
        let frame = ether(GW1_MAC, A_MAC, ETH_P_IP, &packet);
        f.assert_dropped(f.a, &frame, DropReason::TtlExceeded);
    });
}

#[test]
fn unknown_and_unsupported_destinations_are_dropped() {
    with_fixture(|f| {
        let payload = packets::udp(1000, 2000, b"x");
        let frame = from_a(mac(0x99), "10.0.1.99", UDP, &payload);
        f.assert_dropped(f.a, &frame, DropReason::UnknownDestination);
        let frame = from_a(GW1_MAC, "10.0.2.99", UDP, &payload);
        f.assert_dropped(f.a, &frame, DropReason::UnknownDestination);
        let frame = from_a(GW1_MAC, "8.8.8.8", UDP, &payload);
        f.assert_dropped(f.a, &frame, DropReason::UnknownDestination);
        // A neighbor on another host, but this host has no underlay.
        let frame = from_a(mac(0x50), "10.0.1.50", UDP, &payload);
        f.assert_dropped(f.a, &frame, DropReason::NoUnderlay);
        // Broadcast other than DHCP, IPv6, other EtherTypes, truncated.
        let frame = from_a(BROADCAST, "10.0.1.255", UDP, &payload);
        f.assert_dropped(f.a, &frame, DropReason::Broadcast);
        let frame = ether(BROADCAST, A_MAC, ETH_P_IPV6, &[0x60; 40]);
        f.assert_dropped(f.a, &frame, DropReason::Ipv6);
        let frame = ether(BROADCAST, A_MAC, 0x88b5, &[0; 46]);
        f.assert_dropped(f.a, &frame, DropReason::OtherEthertype);
        // (BPF_PROG_TEST_RUN refuses frames too short for their IPv4
        // header: invalid header lengths instead.)
        let mut frame = from_a(B_MAC, "10.0.1.11", UDP, &payload);
        frame[14] = 0x44;
        f.assert_dropped(f.a, &frame, DropReason::Malformed);
        frame[14] = 0x65;
        f.assert_dropped(f.a, &frame, DropReason::Malformed);
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&19u16.to_be_bytes());
        f.assert_dropped(f.a, &frame, DropReason::Malformed);
        // The kernel refuses to run a truncated IPv4 header at all.
        assert!(matches!(
            f.datapath.reader().unwrap().trace(f.a, &frame[..30]),
            Err(DatapathError::InvalidFrame(_))
        ));
    });
}

#[test]
fn vpcs_with_the_same_addresses_are_isolated() {
    with_fixture(|f| {
        let payload = packets::udp(1000, 2000, b"x");
        // E (VPC 2) has B's address; A (VPC 1) reaches B, never E.
        let frame = from_a(B_MAC, "10.0.1.11", UDP, &payload);
        let result = f.trace(f.a, &frame);
        assert!(
            matches!(result.verdict, Verdict::Redirect { ifindex, .. } if ifindex == f.b),
            "{:?}",
            result.verdict
        );
        // E's VPC knows no 10.0.1.10: no ARP answer, no delivery to A.
        let request = arp_request(E_MAC, ip("10.0.1.11"), ip("10.0.1.10"));
        f.assert_dropped(f.e, &request, DropReason::ArpUnknownTarget);
        let packet = Ipv4::new(ip("10.0.1.11"), ip("10.0.1.10"), UDP).packet(&payload);
        let frame = ether(A_MAC, E_MAC, ETH_P_IP, &packet);
        f.assert_dropped(f.e, &frame, DropReason::UnknownDestination);
        // E's gateway is its own VPC's.
        let request = arp_request(E_MAC, ip("10.0.1.11"), ip("10.0.1.1"));
        let result = f.trace(f.e, &request);
        assert_eq!(result.verdict, Verdict::Answered(Answer::Arp));
        assert_eq!(result.output[6..12], GW21_MAC.0);
        // B's gateway MAC means nothing in VPC 2.
        let frame = ether(GW1_MAC, E_MAC, ETH_P_IP, &packet);
        f.assert_dropped(f.e, &frame, DropReason::UnknownDestination);
    });
}

#[test]
fn dhcp_passes_to_the_agent() {
    with_fixture(|f| {
        let discover = packets::udp(68, 67, &counting(240));
        let mut packet = Ipv4::new(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST, UDP);
        packet.frag = 0;
        let frame = ether(BROADCAST, A_MAC, ETH_P_IP, &packet.packet(&discover));
        let result = f.trace(f.a, &frame);
        assert_eq!(result.verdict, Verdict::Pass(PassReason::Dhcp));
        assert_eq!(result.output, frame);
        // A renewal, unicast to the server from the lease's address.
        let renew = Ipv4::new(ip("10.0.1.10"), ip("10.0.1.1"), UDP).packet(&discover);
        let frame = ether(GW1_MAC, A_MAC, ETH_P_IP, &renew);
        assert_eq!(
            f.trace(f.a, &frame).verdict,
            Verdict::Pass(PassReason::Dhcp)
        );
        // Not from a MAC the port may use.
        let frame = ether(BROADCAST, B_MAC, ETH_P_IP, &packet.packet(&discover));
        f.assert_dropped(f.a, &frame, DropReason::SpoofedMac);
        // Nor from an address it may not use.
        let renew = Ipv4::new(ip("10.0.1.11"), ip("10.0.1.1"), UDP).packet(&discover);
        let frame = ether(GW1_MAC, A_MAC, ETH_P_IP, &renew);
        f.assert_dropped(f.a, &frame, DropReason::SpoofedIp);
    });
}

#[test]
fn an_unprogrammed_port_passes_everything() {
    with_fixture(|f| {
        let frame = ether(BROADCAST, mac(0x77), 0x88b5, &[0; 46]);
        let result = f.trace(f.u, &frame);
        assert_eq!(result.verdict, Verdict::Pass(PassReason::NotProgrammed));
        assert_eq!(result.output, frame);
    });
}

#[test]
fn trace_errors_are_reported() {
    with_fixture(|f| {
        assert!(matches!(
            f.datapath.reader().unwrap().trace(f.a, &[0; 10]),
            Err(DatapathError::InvalidFrame(_))
        ));
        assert!(matches!(
            f.datapath.reader().unwrap().trace(999_999, &[0; 60]),
            Err(DatapathError::NoSuchDevice(999_999))
        ));
    });
}

/// Runs `frame` through `port_from_vm` as real traffic of port `ifindex`
/// (no trace mark): it counts.
pub(super) fn run_for_real(datapath: &mut Datapath, ifindex: u32, frame: &[u8]) -> u32 {
    let mut ctx = [0u8; 256];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut output = vec![0; frame.len() + 256];
    let options = aya::programs::TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut output),
        ctx_in: Some(&ctx),
        ..Default::default()
    };
    use aya::programs::TestRun;
    let program = datapath.program_mut(Hook::FromVm).unwrap();
    program.test_run(options).unwrap().return_value
}

#[test]
fn drops_are_counted_by_reason_and_deliveries_on_both_ports() {
    with_fixture(|mut f| {
        let spoofed = ether(B_MAC, B_MAC, ETH_P_IP, &[0x45; 40]);
        let to_b = from_a(B_MAC, "10.0.1.11", UDP, &packets::udp(1, 2, &counting(22)));
        // Traces count nothing.
        f.trace(f.a, &spoofed);
        assert_eq!(
            f.datapath.reader().unwrap().port_stats(f.a).unwrap(),
            PortStats::default()
        );

        for _ in 0..3 {
            assert_eq!(run_for_real(&mut f.datapath, f.a, &spoofed), 2);
        }
        assert_eq!(run_for_real(&mut f.datapath, f.a, &to_b), 7);
        let stats = f.datapath.reader().unwrap().port_stats(f.a).unwrap();
        assert_eq!(
            stats.traffic,
            PortCounters {
                rx_packets: 4,
                rx_bytes: 3 * spoofed.len() as u64 + to_b.len() as u64,
                tx_packets: 0,
                tx_bytes: 0,
            }
        );
        assert_eq!(drops_by_reason(&stats), [(DropReason::SpoofedMac, 3)]);
        // Delivered into B's namespace: counted as sent to B, whose egress
        // it skips.
        let stats = f.datapath.reader().unwrap().port_stats(f.b).unwrap();
        assert_eq!(
            stats.traffic,
            PortCounters {
                tx_packets: 1,
                tx_bytes: to_b.len() as u64,
                ..PortCounters::default()
            }
        );
        assert!(drops_by_reason(&stats).is_empty());
    });
}
