use std::net::Ipv4Addr;

use alcor_proto::control as api;

use super::trace::{Outcome, Probe, Protocol, Resolution, Setup, drop_words, reply};
use crate::{
    core::{
        model::{AddressPair, GatewayAddress, Mac, Vni},
        spec::{EndpointSpec, Location, Redirect, SubnetSpec},
    },
    datapath::{DropReason, NextHop, TraceResult, Verdict},
    packet as frames,
};

fn mac(text: &str) -> Mac {
    text.parse().unwrap()
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// Port web-1 (10.0.1.10) in 10.0.1.0/24; 10.0.2.0/24 on the same
/// router r1 with db-1 (10.0.2.20); 10.0.3.0/24 on no router.
fn setup() -> Setup {
    let vni = Vni::try_from(100).unwrap();
    let subnet = |cidr: &str, gateway: &str, gateway_mac: &str, router: Option<&str>| SubnetSpec {
        vni,
        cidr: cidr.parse().unwrap(),
        gateway: Some(GatewayAddress {
            ip: ip(gateway),
            mac: mac(gateway_mac),
        }),
        router: router.map(Into::into),
    };
    let local = |ifindex| Location::Local {
        ifindex,
        redirect: Redirect::Peer,
    };
    Setup {
        port_id: "web-1".into(),
        ifindex: 7,
        mac: mac("fa:16:3e:00:00:0a"),
        ips: vec![ip("10.0.1.10")],
        pairs: vec![],
        vni: 100,
        subnets: vec![
            subnet("10.0.1.0/24", "10.0.1.1", "fa:16:3e:ff:ff:01", Some("r1")),
            subnet("10.0.2.0/24", "10.0.2.1", "fa:16:3e:ff:ff:02", Some("r1")),
            subnet("10.0.3.0/24", "10.0.3.1", "fa:16:3e:ff:ff:03", None),
        ],
        endpoints: vec![
            EndpointSpec {
                vni,
                ip: ip("10.0.1.10"),
                mac: mac("fa:16:3e:00:00:0a"),
                location: local(7),
            },
            EndpointSpec {
                vni,
                ip: ip("10.0.2.20"),
                mac: mac("fa:16:3e:00:00:14"),
                location: local(8),
            },
        ],
        ports: [(7, "web-1".to_string()), (8, "db-1".to_string())].into(),
        underlay_device: String::new(),
        vxlan_device: String::new(),
        port_mtu: 1450,
    }
}

fn request(protocol: api::TraceProtocol, dst: &str) -> api::TraceRequest {
    api::TraceRequest {
        port_id: "web-1".into(),
        protocol: protocol as i32,
        dst_ip: dst.into(),
        ..Default::default()
    }
}

fn probe(dst: &str) -> Probe {
    Probe::new(&setup(), &request(api::TraceProtocol::Icmp, dst)).unwrap()
}

#[test]
fn a_probe_defaults_to_the_ports_address_and_mac() {
    let probe = probe("10.0.2.20");
    assert_eq!(probe.protocol, Protocol::Icmp);
    assert_eq!(probe.src_ip, ip("10.0.1.10"));
    assert_eq!(probe.src_mac, mac("fa:16:3e:00:00:0a"));
    assert_eq!(probe.dst_mac, None);
    assert_eq!(probe.ttl, 64);
    assert_eq!(probe.words(), "ICMP echo 10.0.1.10 -> 10.0.2.20");

    let mut tcp = request(api::TraceProtocol::Tcp, "10.0.2.20");
    tcp.dst_port = 443;
    let tcp = Probe::new(&setup(), &tcp).unwrap();
    assert_eq!(tcp.words(), "TCP SYN 10.0.1.10:49152 -> 10.0.2.20:443");
}

#[test]
fn a_probe_refuses_what_cannot_be_sent() {
    let setup = setup();
    let error = |request| Probe::new(&setup, &request).unwrap_err();
    assert_eq!(
        error(request(api::TraceProtocol::Udp, "10.0.2.20")),
        "a UDP trace needs a destination port"
    );
    assert!(error(request(api::TraceProtocol::Icmp, "10.0.2")).contains("invalid destination"));
    let mut ttl = request(api::TraceProtocol::Icmp, "10.0.2.20");
    ttl.ttl = 256;
    assert_eq!(error(ttl), "invalid TTL 256: 1 to 255");
    let mut mac = request(api::TraceProtocol::Icmp, "10.0.2.20");
    mac.src_mac = "fa:16".into();
    assert!(error(mac).starts_with("invalid source MAC"));
}

#[test]
fn a_spoofed_source_is_explained_with_the_ports_addresses() {
    let mut setup = setup();
    let mut probe = probe("10.0.2.20");
    probe.src_ip = ip("10.9.9.9");
    let words =
        |setup: &Setup, probe: &Probe, reason| drop_words(setup, probe, &Resolution::Given, reason);
    assert_eq!(
        words(&setup, &probe, DropReason::SpoofedIp),
        "the source address 10.9.9.9 is not the port's (10.0.1.10) nor one of its \
         allowed address pairs"
    );
    setup.pairs.push(AddressPair {
        ip: "10.0.1.100/32".parse().unwrap(),
        mac: mac("fa:16:3e:00:00:64"),
    });
    assert_eq!(
        words(&setup, &probe, DropReason::SpoofedIp),
        "the source address 10.9.9.9 is not the port's (10.0.1.10) nor one of its \
         allowed address pairs (10.0.1.100/32 with fa:16:3e:00:00:64)"
    );
    probe.src_mac = mac("fa:16:3e:00:00:99");
    assert_eq!(
        words(&setup, &probe, DropReason::SpoofedMac),
        "the source MAC fa:16:3e:00:00:99 is not the port's (fa:16:3e:00:00:0a) nor \
         that of one of its allowed address pairs (fa:16:3e:00:00:64)"
    );
}

#[test]
fn destinations_are_explained_with_subnets_and_routers() {
    let setup = setup();
    let words = |dst: &str, reason| drop_words(&setup, &probe(dst), &Resolution::Given, reason);
    assert_eq!(
        words("10.0.2.99", DropReason::UnknownDestination),
        "no VM or neighbor has the address 10.0.2.99 in the VPC (VNI 100)"
    );
    assert_eq!(
        words("10.0.3.30", DropReason::NotRouted),
        "10.0.3.30 is in subnet 10.0.3.0/24, and no router connects it to the sender's \
         subnet 10.0.1.0/24 (10.0.1.0/24 is on router r1, 10.0.3.0/24 on no router)"
    );
    assert_eq!(
        words("10.0.1.1", DropReason::ToGateway),
        "10.0.1.1 is the gateway of 10.0.1.0/24, which answers ping (ICMP echo) only, not \
         this"
    );
    let unanswered = Resolution::Unanswered {
        ip: ip("10.0.1.99"),
        why: "no VM".into(),
    };
    assert_eq!(
        unanswered.words(),
        "broadcast: the VM's ARP request for 10.0.1.99 gets no reply"
    );
    let broadcast = drop_words(
        &setup,
        &probe("10.0.1.99"),
        &unanswered,
        DropReason::Broadcast,
    );
    assert!(
        broadcast.starts_with("the VM's ARP request for 10.0.1.99 gets no reply (no VM), so"),
        "{broadcast}"
    );
    let arp = Probe {
        protocol: Protocol::Arp,
        ..probe("10.0.1.99")
    };
    assert_eq!(
        drop_words(
            &setup,
            &arp,
            &Resolution::Broadcast,
            DropReason::ArpUnknownTarget
        ),
        "no VM or neighbor has 10.0.1.99 in the sender's subnet 10.0.1.0/24 and it is not \
         the gateway (10.0.1.1): no ARP reply is sent, and nothing is flooded"
    );
}

#[test]
fn every_drop_reason_has_words() {
    let setup = setup();
    let probe = probe("10.0.2.20");
    for reason in DropReason::ALL {
        let words = drop_words(&setup, &probe, &Resolution::Given, reason);
        assert!(
            !words.is_empty() && !words.ends_with('.'),
            "{reason:?}: {words}"
        );
    }
}

/// `inner` in VXLAN (VNI 100) from 198.18.0.1 to 198.18.0.2, UDP 49153
/// -> 4789, outer MACs 02:..:01 -> 02:..:02.
fn vxlan_frame(inner: &[u8]) -> Vec<u8> {
    // No UDP checksum; VXLAN with the VNI flag.
    let mut udp = vec![0xc0, 0x01, 0x12, 0xb5, 0, 0, 0, 0];
    udp.extend([0x08, 0, 0, 0, 0, 0, 100, 0]);
    udp.extend(inner);
    frames::ipv4(
        mac("02:00:00:00:00:01"),
        mac("02:00:00:00:00:02"),
        frames::Addresses {
            src: ip("198.18.0.1"),
            dst: ip("198.18.0.2"),
        },
        frames::Ipv4Fields {
            ttl: 64,
            protocol: frames::IPPROTO_UDP,
            dont_fragment: true,
        },
        &udp,
    )
}

fn echo(src_mac: &str, dst_mac: &str, src: &str, dst: &str, ttl: u8) -> Vec<u8> {
    frames::ipv4(
        mac(src_mac),
        mac(dst_mac),
        frames::Addresses {
            src: ip(src),
            dst: ip(dst),
        },
        frames::Ipv4Fields {
            ttl,
            protocol: frames::IPPROTO_ICMP,
            dont_fragment: true,
        },
        &frames::icmp_echo(None),
    )
}

#[test]
fn encapsulated_frames_read_back_outer_and_inner_headers() {
    let inner = echo(
        "fa:16:3e:00:00:0a",
        "fa:16:3e:00:00:14",
        "10.0.1.10",
        "10.0.1.20",
        64,
    );
    let frame = vxlan_frame(&inner);
    let outer = frames::encapsulation(&frame).unwrap();
    assert_eq!(
        (outer.outer_src_ip.as_str(), outer.outer_dst_ip.as_str()),
        ("198.18.0.1", "198.18.0.2")
    );
    assert_eq!(
        (
            outer.udp_src_port,
            outer.udp_dst_port,
            outer.vni,
            outer.outer_ttl
        ),
        (49153, 4789, 100, 64)
    );
    assert_eq!(outer.outer_src_mac, "02:00:00:00:00:01");
    let inner_headers = outer.inner.unwrap();
    assert_eq!(inner_headers.eth_dst, "fa:16:3e:00:00:14");
    assert_eq!(inner_headers.ipv4.unwrap().dst, "10.0.1.20");
    assert!(frames::encapsulation(&inner).is_none(), "ICMP is not VXLAN");
}

#[test]
fn a_routed_encapsulation_is_explained_with_its_outer_headers() {
    let mut setup = setup();
    setup.underlay_device = "underlay0".into();
    let probe = probe("10.0.2.30");
    let routed = echo(
        "fa:16:3e:ff:ff:02",
        "fa:16:3e:00:00:1e",
        "10.0.1.10",
        "10.0.2.30",
        63,
    );
    let outcome = Outcome {
        resolution: Resolution::Given,
        input: echo(
            "fa:16:3e:00:00:0a",
            "fa:16:3e:ff:ff:01",
            "10.0.1.10",
            "10.0.2.30",
            64,
        ),
        result: TraceResult {
            verdict: Verdict::Encapsulated {
                host: ip("198.18.0.2"),
                vni: 100,
                underlay: 2,
                next_hop: NextHop::Mac,
                routed: true,
            },
            output: vxlan_frame(&routed),
        },
    };
    let reply = reply(&setup, &probe, &outcome);
    assert_eq!(reply.verdict, api::TraceVerdict::Encapsulated as i32);
    assert_eq!(
        reply.explanation,
        "10.0.2.30 lives on host 198.18.0.2: routed via router r1 (10.0.1.0/24 -> \
         10.0.2.0/24), then encapsulated in VXLAN (VNI 100) to it, out of the underlay device \
         underlay0; outer MACs written by the datapath"
    );
    let next_hop = reply.next_hop.unwrap();
    assert_eq!(
        (next_hop.kind.as_str(), next_hop.remote_host.as_str()),
        ("tunnel", "198.18.0.2")
    );
    assert_eq!((next_hop.router_id.as_str(), next_hop.ifindex), ("r1", 2));
    let outer = reply.encapsulation.unwrap();
    assert_eq!(outer.next_hop, "mac");
    assert_eq!(outer.outer_dst_mac, "02:00:00:00:00:02");
    assert_eq!(outer.underlay_device, "underlay0");
    assert_eq!(outer.inner.unwrap().ipv4.unwrap().ttl, 63);
}
