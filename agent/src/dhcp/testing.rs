//! Test fixtures shared by the responder's unit tests: a desired state with
//! two VPCs of the same CIDR, and builders of client messages.

use std::net::Ipv4Addr;

use alcor_proto::schema::OperationType;
use ipnet::Ipv4Net;

use super::{
    frame::{self, Destination, SERVER_PORT, Source},
    message::code,
};
use crate::core::{
    desired::{DesiredState, Entry, Resource},
    model::*,
};

pub const CLIENT_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x01]);
/// The MAC of a nested VM behind port A1 (an allowed address pair).
pub const NESTED_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x99]);
/// An allowed-pair MAC of port A1 with no DHCP entry.
pub const UNADDRESSED_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x98]);
pub const A2_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x02]);
pub const B1_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x20, 0x01]);
pub const STRANGER_MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x77]);
pub const GATEWAY_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x01]);
pub const GATEWAY_B_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x02]);

pub const A1_IFINDEX: u32 = 10;
pub const A2_IFINDEX: u32 = 11;
pub const B1_IFINDEX: u32 = 20;

pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
pub const A1_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
pub const NESTED_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 99);
pub const A2_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 11);
/// Port B1 has A1's address, in the other VPC.
pub const B1_IP: Ipv4Addr = A1_IP;
pub const DNS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];

fn insert<R: Resource>(state: &mut DesiredState, id: &str, spec: R) {
    R::table_mut(state).upsert(
        id.to_string(),
        Entry::new(spec, OperationType::Create, 0, Box::default()),
    );
}

pub fn vpc(id: &str, vni: u64) -> Vpc {
    Vpc {
        id: id.into(),
        name: String::new(),
        project_id: String::new(),
        cidr: None,
        vni: Vni::try_from(vni).expect("valid VNI"),
    }
}

pub fn subnet(id: &str, vpc: &Vpc, cidr: &str, gateway: Ipv4Addr, gateway_mac: Mac) -> Subnet {
    Subnet {
        id: id.into(),
        vpc_id: vpc.id.clone(),
        name: String::new(),
        cidr: cidr.parse().expect("valid CIDR"),
        vni: vpc.vni,
        gateway: Some(GatewayAddress {
            ip: gateway,
            mac: gateway_mac,
        }),
        dhcp_enable: true,
        dns_servers: Vec::new(),
        extra_dhcp_options: Vec::new(),
        availability_zone: String::new(),
    }
}

pub fn port(id: &str, vpc_id: &str, subnet_id: &str, mac: Mac, ip: Ipv4Addr) -> Port {
    Port {
        id: id.into(),
        vpc_id: vpc_id.into(),
        name: String::new(),
        mac,
        admin_state_up: true,
        fixed_ips: vec![FixedIp {
            subnet_id: subnet_id.into(),
            ip,
        }],
        allowed_address_pairs: Vec::new(),
        security_group_ids: Vec::new(),
        binding: Binding::Tap,
    }
}

pub fn dhcp_entry(id: &str, subnet_id: &str, mac: Mac, ip: Ipv4Addr, hostname: &str) -> DhcpEntry {
    DhcpEntry {
        id: id.into(),
        subnet_id: subnet_id.into(),
        mac,
        ipv4: ip,
        ipv6: None,
        hostname: hostname.into(),
    }
}

/// Two VPCs with the same CIDR on one host:
/// - VPC A (subnet sn-a, 10.0.1.0/24, DNS [`DNS`]): port A1 ([`CLIENT_MAC`],
///   DHCP entry "vm-a1", a nested VM's pair [`NESTED_MAC`] with its DHCP
///   entry, and a pair [`UNADDRESSED_MAC`] without one), port A2 (no entry);
/// - VPC B (subnet sn-b, 10.0.1.0/24): port B1 with A1's address.
pub struct Fixture {
    pub desired: DesiredState,
}

impl Fixture {
    pub fn new() -> Fixture {
        let mut desired = DesiredState::default();
        let vpc_a = vpc("vpc-a", 100);
        let vpc_b = vpc("vpc-b", 200);
        let mut sn_a = subnet("sn-a", &vpc_a, "10.0.1.0/24", GATEWAY, GATEWAY_MAC);
        sn_a.dns_servers = DNS.to_vec();
        let sn_b = subnet("sn-b", &vpc_b, "10.0.1.0/24", GATEWAY, GATEWAY_B_MAC);

        let mut a1 = port("port-a1", "vpc-a", "sn-a", CLIENT_MAC, A1_IP);
        a1.allowed_address_pairs = vec![
            AddressPair {
                ip: Ipv4Net::from(NESTED_IP),
                mac: NESTED_MAC,
            },
            AddressPair {
                ip: "10.0.1.96/30".parse().expect("valid prefix"),
                mac: UNADDRESSED_MAC,
            },
        ];
        insert(&mut desired, "vpc-a", vpc_a);
        insert(&mut desired, "vpc-b", vpc_b);
        insert(&mut desired, "sn-a", sn_a);
        insert(&mut desired, "sn-b", sn_b);
        insert(&mut desired, "port-a1", a1);
        insert(
            &mut desired,
            "port-a2",
            port("port-a2", "vpc-a", "sn-a", A2_MAC, A2_IP),
        );
        insert(
            &mut desired,
            "port-b1",
            port("port-b1", "vpc-b", "sn-b", B1_MAC, B1_IP),
        );
        insert(
            &mut desired,
            "dhcp-a1",
            dhcp_entry("dhcp-a1", "sn-a", CLIENT_MAC, A1_IP, "vm-a1"),
        );
        insert(
            &mut desired,
            "dhcp-nested",
            dhcp_entry("dhcp-nested", "sn-a", NESTED_MAC, NESTED_IP, "nested"),
        );
        desired.commit();
        Fixture { desired }
    }

    pub fn ready_ports() -> [(&'static str, u32); 3] {
        [
            ("port-a1", A1_IFINDEX),
            ("port-a2", A2_IFINDEX),
            ("port-b1", B1_IFINDEX),
        ]
    }

    pub fn insert<R: Resource>(&mut self, id: &str, spec: R) {
        insert(&mut self.desired, id, spec);
        self.desired.commit();
    }

    /// A copy of a resource, to change and insert again.
    pub fn spec<R: Resource>(&self, id: &str) -> R {
        R::table(&self.desired)
            .get(id)
            .expect("a fixture resource")
            .spec
            .clone()
    }
}

/// Builds client messages byte by byte, so that tests can also build
/// broken ones.
#[derive(Clone, Debug)]
pub struct RequestBuilder {
    header: Vec<u8>,
    options: Vec<u8>,
}

impl RequestBuilder {
    pub const XID: u32 = 0x1234_5678;

    /// A BOOTREQUEST from `mac`, with the magic cookie and no options.
    pub fn new(mac: Mac) -> RequestBuilder {
        let mut header = vec![0; 240];
        header[0] = 1;
        header[1] = 1;
        header[2] = 6;
        header[4..8].copy_from_slice(&Self::XID.to_be_bytes());
        header[28..34].copy_from_slice(&mac.octets());
        header[236..240].copy_from_slice(&[99, 130, 83, 99]);
        RequestBuilder {
            header,
            options: Vec::new(),
        }
    }

    pub fn typed(mac: Mac, message_type: u8) -> RequestBuilder {
        RequestBuilder::new(mac).option(code::MESSAGE_TYPE, &[message_type])
    }

    pub fn discover(mac: Mac) -> RequestBuilder {
        Self::typed(mac, 1)
    }

    pub fn request(mac: Mac) -> RequestBuilder {
        Self::typed(mac, 3)
    }

    /// Appends an option; `PAD` is one byte without length.
    pub fn option(mut self, code: u8, value: &[u8]) -> RequestBuilder {
        self.options.push(code);
        if code != code::PAD {
            self.options
                .push(u8::try_from(value.len()).expect("short option"));
            self.options.extend_from_slice(value);
        }
        self
    }

    pub fn raw(mut self, bytes: &[u8]) -> RequestBuilder {
        self.options.extend_from_slice(bytes);
        self
    }

    pub fn address_option(self, code: u8, ip: Ipv4Addr) -> RequestBuilder {
        self.option(code, &ip.octets())
    }

    /// Overwrites one byte of the header.
    pub fn poke(mut self, at: usize, value: u8) -> RequestBuilder {
        self.header[at] = value;
        self
    }

    pub fn broadcast(mut self) -> RequestBuilder {
        self.header[10] |= 0x80;
        self
    }

    pub fn ciaddr(mut self, ip: Ipv4Addr) -> RequestBuilder {
        self.header[12..16].copy_from_slice(&ip.octets());
        self
    }

    pub fn giaddr(mut self, ip: Ipv4Addr) -> RequestBuilder {
        self.header[24..28].copy_from_slice(&ip.octets());
        self
    }

    /// The message: header, options and an end option.
    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.header.clone();
        bytes.extend_from_slice(&self.options);
        bytes.push(code::END);
        bytes
    }

    /// The message in an Ethernet frame from `src_mac` to `dst_ip`.
    pub fn frame(&self, src_mac: Mac, dst_ip: Ipv4Addr) -> Vec<u8> {
        let mut bytes = Vec::new();
        frame::start(&mut bytes);
        bytes.extend_from_slice(&self.bytes());
        let source = Source {
            mac: src_mac,
            ip: Ipv4Addr::UNSPECIFIED,
        };
        let destination = Destination {
            mac: frame::BROADCAST_MAC,
            ip: dst_ip,
            port: SERVER_PORT,
        };
        frame::finish(&mut bytes, source, destination);
        bytes
    }
}
