//! Types and names shared by the eBPF programs (built for `bpfel-unknown-none`)
//! and the agent that loads them. Everything here is `#[repr(C)]` plain data:
//! its layout is the contract between kernel and user space.
//!
//! Conventions: an IPv4 address (or mask) is a `u32` holding the address's
//! four bytes in network order, as they are in the packet
//! (`u32::from_ne_bytes(octets)`), so that programs compare them with what
//! they read from headers without swapping bytes. MACs are `[u8; 6]`.
#![no_std]

/// Names of the programs in the datapath object, as user space looks them up.
/// They are the names of the `#[classifier]` functions in `alcor-ebpf-datapath`.
pub mod programs {
    /// tc ingress of a port device: frames the VM sent.
    pub const PORT_FROM_VM: &str = "port_from_vm";
    /// tc egress of a port device: frames on their way to the VM.
    pub const PORT_TO_VM: &str = "port_to_vm";
    /// tc ingress of the underlay device: VXLAN for the VNIs served here is
    /// decapsulated and delivered to its port.
    pub const UNDERLAY_IN: &str = "underlay_in";
    /// XDP on the underlay device: early drop of VXLAN for VNIs not served
    /// here or from hosts not known here.
    pub const UNDERLAY_XDP: &str = "underlay_xdp";
    /// tc ingress of the agent's VXLAN device: what the kernel decapsulated
    /// (reassembled outer fragments, GSO packets for taps) is delivered to
    /// its port.
    pub const VXLAN_IN: &str = "vxlan_in";
}

/// Names of the maps in the datapath object; pinned maps are pinned under
/// these names in the agent's pin directory.
pub mod maps {
    /// Per-CPU hash: port ifindex (`u32`) → [`PortStats`](super::PortStats).
    pub const PORT_COUNTERS: &str = "PORT_COUNTERS";
    /// Hash: port ifindex (`u32`) → [`PortInfo`](super::PortInfo). A port
    /// device without an entry is not programmed: its frames pass untouched.
    pub const PORTS: &str = "PORTS";
    /// LPM trie: [`SourceKey`](super::SourceKey) → `u32`
    /// ([`SOURCE_ALLOWED`](super::SOURCE_ALLOWED) or
    /// [`SOURCE_MAC_ONLY`](super::SOURCE_MAC_ONLY)): the (MAC, IPv4 prefix)
    /// pairs each port may send from.
    pub const SOURCES: &str = "SOURCES";
    /// Hash: [`EndpointKey`](super::EndpointKey) (VNI, IPv4) →
    /// [`Endpoint`](super::Endpoint): every address known in a VPC and where
    /// it lives.
    pub const ENDPOINTS: &str = "ENDPOINTS";
    /// LPM trie: [`SubnetKey`](super::SubnetKey) (VNI, IPv4 prefix) →
    /// [`SubnetInfo`](super::SubnetInfo): the subnets of each VPC, their
    /// gateway and their router.
    pub const SUBNETS: &str = "SUBNETS";
    /// Array of one [`UnderlayInfo`](super::UnderlayInfo): this host's
    /// tunnel endpoint (underlay device, address, MTU). All zero: no
    /// underlay, remote endpoints are dropped (`no-underlay`).
    pub const UNDERLAY: &str = "UNDERLAY";
    /// Hash: VNI (`u32`) → `u32` ([`VNI_SERVED`](super::VNI_SERVED)): the
    /// VNIs of the ports of this host; VXLAN for any other is dropped.
    pub const VNIS: &str = "VNIS";
    /// Hash: underlay IPv4 of another host (`u32`) →
    /// [`HostInfo`](super::HostInfo): the hosts VXLAN is accepted from and
    /// the next-hop MAC to reach each, if known.
    pub const HOSTS: &str = "HOSTS";
    /// Per-CPU array of one [`UnderlayStats`](super::UnderlayStats):
    /// tunnel traffic and the underlay's drops by reason.
    pub const UNDERLAY_STATS: &str = "UNDERLAY_STATS";
}

/// Most port devices one agent serves; sizes the per-port maps.
pub const MAX_PORTS: u32 = 65536;
/// Most allowed (MAC, prefix) sources over all ports.
pub const MAX_SOURCES: u32 = 262_144;
/// Most addresses known over all VPCs served here (local and remote): room
/// for a million neighbors and then some. The map allocates its entries as
/// they come; its buckets (16 bytes each, one per entry rounded up to a
/// power of two) are allocated when it is created: 32 MiB.
pub const MAX_ENDPOINTS: u32 = 1 << 21;
/// Most VNIs with a port on this host.
pub const MAX_VNIS: u32 = 65536;
/// Most other hosts known (tunnel peers).
pub const MAX_HOSTS: u32 = 65536;

/// VXLAN's UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds in front of a frame: outer IPv4 (20), UDP (8), VXLAN
/// (8) and, around the inner frame, a new Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Range of the outer UDP source port, chosen in it by a hash of the inner
/// flow so that ECMP in the underlay spreads flows (RFC 7348: 49152-65535).
pub const VXLAN_SPORT_MIN: u16 = 49152;
pub const VXLAN_SPORT_MAX: u16 = 65535;
/// TTL of the outer IPv4 header.
pub const VXLAN_TTL: u8 = 64;
/// ICMP "fragmentation needed" a port may be sent at once...
pub const ICMP_ERRORS_BURST: u64 = 10;
/// ...then one per this many nanoseconds.
pub const ICMP_ERROR_INTERVAL_NS: u64 = 10_000_000;
/// Most subnets over all VPCs served here.
pub const MAX_SUBNETS: u32 = 65536;

/// `BPF_F_NO_PREALLOC`: hash entries are allocated as they come, not all
/// upfront (the LPM tries require it).
pub const NO_PREALLOC: u32 = 1;

/// Traffic seen on one port device. `rx` is what the VM sent (the device's
/// ingress), `tx` what was sent towards the VM: what passed the device's
/// egress, plus what the port program delivered straight into the VM's
/// namespace (`bpf_redirect_peer` skips that egress). Packets are socket
/// buffers: a GSO super-packet counts once, with all its bytes. Bytes are L2
/// frame lengths, without FCS.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// A port's traffic with other hosts: what it sent that was encapsulated
/// (also counted in `rx`), and what was decapsulated for it (also counted
/// in `tx`). Packets and bytes of the inner frames, as the VMs see them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    pub encap_packets: u64,
    pub encap_bytes: u64,
    pub decap_packets: u64,
    pub decap_bytes: u64,
}

/// The value of [`maps::PORT_COUNTERS`]: traffic, its part to and from
/// other hosts, and the frames the VM sent that were dropped, by
/// [`DropReason`] (index = the reason's value).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub traffic: PortCounters,
    pub tunnel: TunnelCounters,
    pub drops: [u64; DropReason::COUNT],
}

/// Why the port program dropped a frame the VM sent. The value indexes
/// [`PortStats::drops`]; new reasons go at the end (the array grows, and with
/// it the map's value size, which the agent checks).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Headers too short or invalid.
    Malformed = 0,
    /// Source MAC neither the port's nor one of its allowed address pairs'.
    SpoofedMac = 1,
    /// Source MAC allowed, but not with this source IPv4 address.
    SpoofedIp = 2,
    /// IPv6: not supported by this datapath yet.
    Ipv6 = 3,
    /// An EtherType other than IPv4 and ARP (VLAN tags included).
    OtherEthertype = 4,
    /// ARP that is not a request (replies, announcements): the datapath
    /// answers for every known address, nobody needs them.
    ArpNotRequest = 5,
    /// ARP request for an address not known in the requester's subnet: no
    /// reply, and nothing is flooded.
    ArpUnknownTarget = 6,
    /// ARP request for the requester's own address (duplicate address
    /// detection): no reply, so that the check passes.
    ArpOwnAddress = 7,
    /// Broadcast or multicast IPv4 other than DHCP.
    Broadcast = 8,
    /// The source address is in no subnet of the VPC.
    NoSubnet = 9,
    /// No endpoint with that destination address in the VPC.
    UnknownDestination = 10,
    /// Destination MAC is neither the destination's nor the gateway's.
    WrongDestinationMac = 11,
    /// Sent without the gateway to an address outside the sender's subnet.
    OffSubnet = 12,
    /// To another subnet that no router connects to the sender's.
    NotRouted = 13,
    /// To the gateway itself, which only answers ICMP echo requests.
    ToGateway = 14,
    /// Routed with a TTL of 1 or less; answered with ICMP time exceeded
    /// (unless the packet was itself an ICMP error or a later fragment).
    TtlExceeded = 15,
    /// The destination is on another host, but this host has no underlay
    /// (tunnel endpoint) configured.
    NoUnderlay = 16,
    /// A kernel helper failed while rewriting or answering the frame.
    HelperFailed = 17,
    /// Too big for the next hop (the underlay once encapsulated, or a
    /// routed destination's port) with DF set, and not answered: the port's
    /// ICMP rate limit was reached, the sender's subnet has no gateway to
    /// answer from, or the packet is itself an ICMP error.
    TooBig = 18,
    /// Too big for the next hop with DF set: answered with ICMP
    /// "fragmentation needed" from the gateway, next-hop MTU = the port's.
    FragNeeded = 19,
}

impl DropReason {
    /// Number of reasons: the length of [`PortStats::drops`].
    pub const COUNT: usize = 20;

    /// Every reason, in value order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Malformed,
        Self::SpoofedMac,
        Self::SpoofedIp,
        Self::Ipv6,
        Self::OtherEthertype,
        Self::ArpNotRequest,
        Self::ArpUnknownTarget,
        Self::ArpOwnAddress,
        Self::Broadcast,
        Self::NoSubnet,
        Self::UnknownDestination,
        Self::WrongDestinationMac,
        Self::OffSubnet,
        Self::NotRouted,
        Self::ToGateway,
        Self::TtlExceeded,
        Self::NoUnderlay,
        Self::HelperFailed,
        Self::TooBig,
        Self::FragNeeded,
    ];

    /// The reason with this value, if any.
    pub const fn from_u32(value: u32) -> Option<Self> {
        if (value as usize) < Self::COUNT {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }

    /// A short stable name (for metrics labels and tables).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::SpoofedMac => "spoofed-mac",
            Self::SpoofedIp => "spoofed-ip",
            Self::Ipv6 => "ipv6",
            Self::OtherEthertype => "other-ethertype",
            Self::ArpNotRequest => "arp-not-request",
            Self::ArpUnknownTarget => "arp-unknown-target",
            Self::ArpOwnAddress => "arp-own-address",
            Self::Broadcast => "broadcast",
            Self::NoSubnet => "no-subnet",
            Self::UnknownDestination => "unknown-destination",
            Self::WrongDestinationMac => "wrong-destination-mac",
            Self::OffSubnet => "off-subnet",
            Self::NotRouted => "not-routed",
            Self::ToGateway => "to-gateway",
            Self::TtlExceeded => "ttl-exceeded",
            Self::NoUnderlay => "no-underlay",
            Self::HelperFailed => "helper-failed",
            Self::TooBig => "too-big",
            Self::FragNeeded => "frag-needed",
        }
    }

    /// What happened, for a person who has never read the code.
    pub const fn description(self) -> &'static str {
        match self {
            Self::Malformed => "the frame's headers are truncated or invalid",
            Self::SpoofedMac => {
                "the source MAC is not the port's, nor that of one of its allowed address pairs \
                 (anti-spoofing)"
            }
            Self::SpoofedIp => {
                "the source IP address is not one the port may use with this source MAC \
                 (anti-spoofing: fixed IPs and allowed address pairs)"
            }
            Self::Ipv6 => "IPv6 is not supported by the datapath yet",
            Self::OtherEthertype => "only IPv4 and ARP frames are forwarded (no VLAN tags)",
            Self::ArpNotRequest => {
                "ARP replies and announcements from VMs are not needed: the datapath answers \
                 for every address it knows"
            }
            Self::ArpUnknownTarget => {
                "ARP request for an address that is neither the gateway nor a known address \
                 in the sender's subnet: no reply is sent and nothing is flooded"
            }
            Self::ArpOwnAddress => {
                "ARP request for the sender's own address (duplicate address detection): \
                 deliberately not answered"
            }
            Self::Broadcast => "broadcast and multicast are not forwarded (only ARP and DHCP)",
            Self::NoSubnet => "the source address belongs to no subnet of the VPC",
            Self::UnknownDestination => "no VM or neighbor has this destination address in the VPC",
            Self::WrongDestinationMac => {
                "the destination MAC is neither the destination VM's nor the gateway's"
            }
            Self::OffSubnet => {
                "the destination is outside the sender's subnet but the frame was not sent to \
                 the gateway MAC"
            }
            Self::NotRouted => {
                "the destination is in another subnet, and no router connects it to the \
                 sender's subnet"
            }
            Self::ToGateway => "sent to the gateway's own address, which only answers ping",
            Self::TtlExceeded => {
                "the TTL ran out at the router; an ICMP time exceeded went back to the sender"
            }
            Self::NoUnderlay => {
                "the destination is on another host, and this host has no underlay (tunnel \
                 endpoint) configured to reach it"
            }
            Self::HelperFailed => "a kernel helper failed while rewriting or answering the frame",
            Self::TooBig => {
                "the packet is bigger than the port MTU (the underlay's minus 50) and may not be \
                 fragmented (DF); no ICMP went back: the port's ICMP rate limit was reached, its \
                 subnet has no gateway, or the packet is an ICMP error itself"
            }
            Self::FragNeeded => {
                "the packet is bigger than the port MTU (the underlay's minus 50) and may not be \
                 fragmented (DF): the gateway answered with ICMP fragmentation needed, so the \
                 VM's path MTU discovery sends smaller packets"
            }
        }
    }
}

/// Value of [`maps::PORTS`]: what the port program knows of the port it runs
/// on. `subnet` is the subnet of `ip` (copied from [`maps::SUBNETS`]) so that
/// the common case (a VM sending from its first fixed IP) needs no LPM lookup.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PortInfo {
    /// The VPC's VXLAN network identifier.
    pub vni: u32,
    /// The port's first fixed IPv4 address (network order); 0 if none.
    pub ip: u32,
    pub mac: [u8; 6],
    /// How frames are delivered to this port: a [`Redirect`] value.
    pub redirect: u8,
    pub _pad: u8,
    /// The subnet of `ip`; `flags` 0 if none.
    pub subnet: SubnetInfo,
    /// The port's MTU (the underlay's minus VXLAN's 50 bytes): the largest
    /// IPv4 packet (or GSO segment) that may leave through the tunnel or be
    /// routed; 0: not checked.
    pub mtu: u32,
}

/// How frames reach a local port's VM.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Redirect {
    /// `bpf_redirect_peer` to the host-side veth: straight into the peer
    /// (the VM's `eth0`) in its namespace.
    Peer = 1,
    /// `bpf_redirect` to the device's egress (a tap: the hypervisor reads it).
    Egress = 2,
}

impl Redirect {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Peer),
            2 => Some(Self::Egress),
            _ => None,
        }
    }
}

/// Key of [`maps::SOURCES`] (after the LPM prefix length): the prefix length
/// is 96 (ifindex, MAC and padding, always matched whole) plus the length of
/// the IPv4 prefix.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub ip: u32,
}

impl SourceKey {
    /// Bits of the key before the IPv4 address.
    pub const FIXED_BITS: u32 = 96;
}

/// [`maps::SOURCES`] value: the port may send from this MAC and prefix.
pub const SOURCE_ALLOWED: u32 = 1;
/// [`maps::SOURCES`] value of the /0 entry of each MAC the port may use: it
/// tells a spoofed IP from a spoofed MAC (and allows DHCP's 0.0.0.0).
pub const SOURCE_MAC_ONLY: u32 = 2;

/// Key of [`maps::ENDPOINTS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointKey {
    pub vni: u32,
    pub ip: u32,
}

/// Where an endpoint lives: [`Endpoint::location`].
pub mod location {
    /// A local port, reached with `bpf_redirect_peer` (a veth).
    pub const LOCAL_PEER: u8 = 1;
    /// A local port, reached with `bpf_redirect` to its egress (a tap).
    pub const LOCAL_EGRESS: u8 = 2;
    /// Another host (`remote_host`), reached by VXLAN over the underlay.
    pub const REMOTE: u8 = 3;
}

/// Value of [`maps::ENDPOINTS`]: an address known in a VPC.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub mac: [u8; 6],
    /// One of [`location`].
    pub location: u8,
    pub _pad: u8,
    /// The local port device (LOCAL_*), else 0.
    pub ifindex: u32,
    /// The host's underlay IPv4 address (REMOTE), else 0.
    pub remote_host: u32,
}

/// Key of [`maps::SUBNETS`] (after the LPM prefix length): prefix length 32
/// (the VNI) plus the subnet's prefix length.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubnetKey {
    pub vni: u32,
    pub ip: u32,
}

impl SubnetKey {
    /// Bits of the key before the IPv4 address.
    pub const FIXED_BITS: u32 = 32;
}

/// [`SubnetInfo::flags`]: the entry is a subnet.
pub const SUBNET_VALID: u16 = 1;
/// [`SubnetInfo::flags`]: the subnet has a gateway (`gateway_ip`/`_mac`).
pub const SUBNET_HAS_GATEWAY: u16 = 2;

/// Value of [`maps::SUBNETS`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SubnetInfo {
    /// Network address and mask (network order).
    pub net: u32,
    pub mask: u32,
    pub gateway_ip: u32,
    /// Subnets of a VPC with the same non-zero router tag are routed to
    /// each other through their gateways; 0: no router.
    pub router: u32,
    pub gateway_mac: [u8; 6],
    pub flags: u16,
}

/// Value of [`maps::UNDERLAY`]: this host's tunnel endpoint.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct UnderlayInfo {
    /// This host's underlay IPv4 address (network order): the outer source
    /// of what it sends, the outer destination of what it accepts. 0: no
    /// underlay.
    pub ip: u32,
    /// The underlay device (in the agent's namespace): encapsulated frames
    /// are redirected to it, and `underlay_in` runs on it.
    pub ifindex: u32,
    /// The underlay device's MTU: an encapsulated frame (not GSO) longer
    /// than this plus the Ethernet header is dropped (`too-big`).
    pub mtu: u32,
    /// The underlay device's MAC: the outer source MAC (with
    /// [`NextHop::Mac`]; the kernel writes its own for
    /// [`NextHop::Neighbor`]).
    pub mac: [u8; 6],
    /// The underlay's gateway MAC, valid with [`UNDERLAY_GATEWAY_MAC`]: the
    /// outer destination MAC for hosts without one of their own
    /// ([`HostInfo`]).
    pub gateway_mac: [u8; 6],
    /// [`UNDERLAY_GATEWAY_MAC`].
    pub flags: u32,
    /// The agent's VXLAN device (external mode), 0 if none: packets too big
    /// for the underlay that may be fragmented leave through it
    /// ([`NextHop::VxlanDevice`]), and what it decapsulates is delivered by
    /// `vxlan_in`.
    pub vxlan_ifindex: u32,
}

/// [`UnderlayInfo::flags`]: `gateway_mac` is valid.
pub const UNDERLAY_GATEWAY_MAC: u32 = 1;

/// Value of [`maps::VNIS`].
pub const VNI_SERVED: u32 = 1;

/// Value of [`maps::HOSTS`]: another host (tunnel peer).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HostInfo {
    /// The next hop's MAC towards the host (the host's own on a shared
    /// segment, else the underlay gateway's), valid with [`HOST_MAC`].
    pub mac: [u8; 6],
    /// [`HOST_MAC`].
    pub flags: u16,
}

/// [`HostInfo::flags`]: `mac` is valid.
pub const HOST_MAC: u16 = 1;

/// How an encapsulated frame finds its next hop in the underlay.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NextHop {
    /// `bpf_redirect_neigh`: the kernel looks up the route to the host and
    /// the next hop's MAC in its neighbour table (resolving it if needed),
    /// and writes the outer MACs.
    Neighbor = 1,
    /// `bpf_redirect` with the outer MACs written by the program: the
    /// host's MAC from [`maps::HOSTS`], else the underlay gateway's.
    Mac = 2,
    /// `bpf_skb_set_tunnel_key` and `bpf_redirect` to the agent's VXLAN
    /// device, whose kernel path fragments the outer packet: for packets
    /// too big for the underlay that the VM lets be fragmented (DF clear).
    VxlanDevice = 3,
}

impl NextHop {
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Neighbor),
            2 => Some(Self::Mac),
            3 => Some(Self::VxlanDevice),
            _ => None,
        }
    }
}

/// Why a program on the underlay device dropped a frame. The value indexes
/// [`UnderlayStats::drops`]; new reasons go at the end.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnderlayDropReason {
    /// VXLAN to this host's address and port, but truncated or without the
    /// VNI flag.
    Malformed = 0,
    /// VXLAN for a VNI no port of this host is in (tc).
    UnknownVni = 1,
    /// VXLAN from an address that is not a known host (tc).
    UnknownHost = 2,
    /// The inner destination is not a port of this host.
    UnknownDestination = 3,
    /// The inner destination MAC is not the destination port's.
    WrongDestinationMac = 4,
    /// ARP inside the tunnel: every host answers ARP for the addresses it
    /// knows itself, so none is ever sent through a tunnel.
    TunneledArp = 5,
    /// The inner frame is neither IPv4 nor ARP (IPv6, VLAN, ...).
    InnerNotIpv4 = 6,
    /// A kernel helper failed while decapsulating.
    HelperFailed = 7,
    /// VXLAN for a VNI no port of this host is in, dropped by XDP.
    XdpUnknownVni = 8,
    /// VXLAN from an address that is not a known host, dropped by XDP.
    XdpUnknownHost = 9,
}

impl UnderlayDropReason {
    /// Number of reasons: the length of [`UnderlayStats::drops`].
    pub const COUNT: usize = 10;

    /// Every reason, in value order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::Malformed,
        Self::UnknownVni,
        Self::UnknownHost,
        Self::UnknownDestination,
        Self::WrongDestinationMac,
        Self::TunneledArp,
        Self::InnerNotIpv4,
        Self::HelperFailed,
        Self::XdpUnknownVni,
        Self::XdpUnknownHost,
    ];

    /// The reason with this value, if any.
    pub const fn from_u32(value: u32) -> Option<Self> {
        if (value as usize) < Self::COUNT {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }

    /// A short stable name (for metrics labels and tables).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownVni => "unknown-vni",
            Self::UnknownHost => "unknown-host",
            Self::UnknownDestination => "unknown-destination",
            Self::WrongDestinationMac => "wrong-destination-mac",
            Self::TunneledArp => "tunneled-arp",
            Self::InnerNotIpv4 => "inner-not-ipv4",
            Self::HelperFailed => "helper-failed",
            Self::XdpUnknownVni => "xdp-unknown-vni",
            Self::XdpUnknownHost => "xdp-unknown-host",
        }
    }

    /// What happened, for a person who has never read the code.
    pub const fn description(self) -> &'static str {
        match self {
            Self::Malformed => "VXLAN to this host, truncated or without a VNI",
            Self::UnknownVni => "VXLAN for a VNI that no port of this host is in",
            Self::UnknownHost => "VXLAN from an underlay address that is not a known host",
            Self::UnknownDestination => {
                "the encapsulated packet's destination is not a port of this host"
            }
            Self::WrongDestinationMac => {
                "the encapsulated frame's destination MAC is not its destination port's"
            }
            Self::TunneledArp => {
                "ARP inside VXLAN: every host answers ARP itself, none is sent through a tunnel"
            }
            Self::InnerNotIpv4 => "the encapsulated frame is neither IPv4 nor ARP",
            Self::HelperFailed => "a kernel helper failed while decapsulating",
            Self::XdpUnknownVni => {
                "VXLAN for a VNI that no port of this host is in (dropped early, by XDP)"
            }
            Self::XdpUnknownHost => {
                "VXLAN from an underlay address that is not a known host (dropped early, by XDP)"
            }
        }
    }
}

/// The value of [`maps::UNDERLAY_STATS`]: tunnel traffic of the whole
/// host, and what the underlay's programs dropped, by
/// [`UnderlayDropReason`]. Packets are socket buffers (a GSO super-packet
/// counts once); bytes are inner frame lengths.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnderlayStats {
    pub encap_packets: u64,
    pub encap_bytes: u64,
    pub decap_packets: u64,
    pub decap_bytes: u64,
    /// Of the encapsulated packets, those sent through the agent's VXLAN
    /// device ([`NextHop::VxlanDevice`]: fragmented outside).
    pub device_encap_packets: u64,
    /// Of the decapsulated packets, those the kernel's VXLAN device
    /// decapsulated (`vxlan_in`): reassembled outer fragments, and GSO
    /// packets for taps.
    pub device_decap_packets: u64,
    pub drops: [u64; UnderlayDropReason::COUNT],
}

/// How `port_from_vm` reports its decision when run by the agent's trace
/// (BPF_PROG_TEST_RUN): if the skb's mark is [`trace::MARK`], it writes a
/// [`trace::Record`] into the skb's control block (`cb[0..5]`, returned in
/// the test run's output context) and counts nothing. Real traffic never
/// carries the mark (it is cleared when a frame leaves the VM's namespace),
/// and costs one compare.
pub mod trace {
    /// The skb mark that asks the program to record its decision.
    pub const MARK: u32 = 0xa1c0_7ace;
    /// [`Record::magic`] when the program wrote the record.
    pub const MAGIC: u32 = 0x7ace_d00d;

    /// [`Record::action`] values.
    pub const ACTION_PASS: u32 = 1;
    pub const ACTION_DROP: u32 = 2;
    pub const ACTION_REDIRECT: u32 = 3;
    pub const ACTION_ANSWER: u32 = 4;

    /// [`Record::detail`] of a pass: the port has no entry in PORTS.
    pub const PASS_NOT_PROGRAMMED: u32 = 1;
    /// [`Record::detail`] of a pass: DHCP, for the agent's responder.
    pub const PASS_DHCP: u32 = 2;
    /// [`Record::detail`] of `underlay_in`'s pass: a GSO packet for a tap,
    /// left to the kernel's VXLAN device to decapsulate (it clears the
    /// tunnel GSO marks a tap refuses); [`Record::ifindex`] is the tap,
    /// [`Record::extra`] the VNI.
    pub const PASS_VXLAN_DEVICE: u32 = 3;

    /// [`Record::detail`] of an answer.
    pub const ANSWER_ARP: u32 = 1;
    pub const ANSWER_ECHO: u32 = 2;
    pub const ANSWER_TIME_EXCEEDED: u32 = 3;
    pub const ANSWER_FRAG_NEEDED: u32 = 4;

    /// Encapsulated in VXLAN and sent to the underlay device
    /// ([`Record::ifindex`]) for the host [`Record::extra`] (its IPv4 in
    /// network order); [`Record::detail`] is a [`NextHop`](super::NextHop)
    /// (low byte), with [`REDIRECT_ROUTED`] if routed first.
    pub const ACTION_ENCAP: u32 = 5;

    /// [`Record::detail`] flag of a redirect: routed (MACs rewritten, TTL
    /// decremented). The low byte is the [`Redirect`](super::Redirect).
    pub const REDIRECT_ROUTED: u32 = 0x100;

    /// The decision, as five `u32` in `__sk_buff.cb`. `underlay_in` writes
    /// one too: drops carry an
    /// [`UnderlayDropReason`](super::UnderlayDropReason), deliveries their
    /// port and [`Redirect`](super::Redirect), and `extra` the VNI.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Record {
        pub action: u32,
        /// Pass or answer kind, drop reason, redirect kind (+ flags).
        pub detail: u32,
        /// Redirect target (the sending port itself for answers; the
        /// underlay device for an encapsulation).
        pub ifindex: u32,
        /// The remote host of an encapsulation; the VNI of a decapsulation.
        pub extra: u32,
        pub magic: u32,
    }
}

// SAFETY (all below): `#[repr(C)]` plain integers and byte arrays laid out
// without padding (checked by the agent's layout tests), so every bit
// pattern is valid.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for PortCounters {}
    unsafe impl aya::Pod for TunnelCounters {}
    unsafe impl aya::Pod for UnderlayInfo {}
    unsafe impl aya::Pod for HostInfo {}
    unsafe impl aya::Pod for UnderlayStats {}
    unsafe impl aya::Pod for PortStats {}
    unsafe impl aya::Pod for PortInfo {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Endpoint {}
    unsafe impl aya::Pod for SubnetKey {}
    unsafe impl aya::Pod for SubnetInfo {}
}
