//! Hosts on a fabric: a fabric namespace with a bridge as the underlay
//! (198.18.0.0/15), each host a namespace with a veth to the bridge (its
//! underlay device), a VXLAN device in external mode as the agent makes
//! one, its own datapath (programs attached and maps synced by hand, no
//! agent) and VMs (namespaces with a veth each, MTU 1450 for an
//! underlay MTU of 1500). Real ping and TCP between VMs on different hosts,
//! in a subnet and routed; what the fabric carries (captured there); and
//! spoofed VXLAN, dropped by tc and by XDP. Every namespace is held by a
//! descriptor only, so everything goes when the test ends, even on panic.

use std::{
    io,
    net::{Ipv4Addr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use futures::TryStreamExt;
use netlink_packet_route::link::LinkAttribute;
use nix::sched::CloneFlags;
use rtnetlink::LinkUnspec;

use super::{
    super::*,
    Netlink, PinDir,
    netns::{Vm, tcp_transfer},
    privileged,
    programs::{GW1_MAC, GW2_MAC, VNI1, ip, subnet},
};
use crate::core::{
    model::Mac,
    spec::{DatapathModel, EndpointSpec, Location, PortSpec, UnderlaySpec},
};

/// The underlay device of each host, its VXLAN device, and the bridge of
/// the fabric.
const UNDERLAY: &str = "underlay";
const VXLAN: &str = "vxlan0";
const BRIDGE: &str = "br0";
const UNDERLAY_MTU: u32 = 1500;
const VM_MTU: u32 = UNDERLAY_MTU - 50;

/// Runs `f` on a thread inside `ns`; it may borrow (scoped).
pub(super) fn within<T: Send>(ns: &Vm, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        let thread = scope.spawn(|| {
            nix::sched::setns(&ns.netns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn no_ipv6(ns: &Vm) {
    ns.run(
        "sh",
        &[
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        ],
    );
}

impl Netlink {
    /// Moves device `ifindex` of this namespace into `ns`.
    fn move_to(&self, ifindex: u32, ns: &Vm) {
        let moved = LinkUnspec::new_with_index(ifindex)
            .setns_by_fd(ns.netns.as_raw_fd())
            .build();
        self.runtime
            .block_on(self.handle.link().set(moved).execute())
            .unwrap();
    }

    fn mac(&self, ifindex: u32) -> Mac {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let link = self.runtime.block_on(links.try_next()).unwrap().unwrap();
        link.attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(mac) => Some(Mac(mac[..6].try_into().unwrap())),
                _ => None,
            })
            .unwrap()
    }
}

/// The fabric: a namespace with a bridge.
pub(super) struct Fabric {
    pub ns: Vm,
}

impl Fabric {
    pub fn new() -> Self {
        let ns = Vm::new();
        no_ipv6(&ns);
        ns.run("ip", &["link", "add", BRIDGE, "type", "bridge"]);
        ns.run("ip", &["link", "set", BRIDGE, "up"]);
        Fabric { ns }
    }
}

/// A VM of a host.
pub(super) struct HostVm {
    pub vm: Vm,
    /// Its port device in the host namespace.
    pub port: u32,
    pub spec: PortSpec,
}

/// A host: a namespace with an underlay veth to the fabric and a datapath.
pub(super) struct Host {
    pub ns: Vm,
    pub underlay: u32,
    /// The VXLAN device (external mode, UDP 4789), `vxlan_in` attached.
    pub vxlan: u32,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub datapath: Datapath,
    _pins: PinDir,
}

impl Host {
    /// Host `index` (underlay address 198.18.0.`index`), plugged into the
    /// fabric, with `underlay_in` attached.
    pub fn new(fabric: &Fabric, index: u8) -> Self {
        let ns = Vm::new();
        no_ipv6(&ns);
        let ip = Ipv4Addr::new(198, 18, 0, index);
        let peer = format!("fab{index}");
        let pins = PinDir::new();
        let (underlay, mac, datapath) = within(&ns, || {
            let netlink = Netlink::new();
            let (underlay, peer_ifindex) = netlink.add_veth(UNDERLAY, &peer, None);
            netlink.move_to(peer_ifindex, &fabric.ns);
            let mac = netlink.mac(underlay);
            let mut datapath = Datapath::open(&pins.0).unwrap();
            datapath.attach_underlay(underlay).unwrap();
            (underlay, mac, datapath)
        });
        ns.run("ip", &["addr", "add", &format!("{ip}/15"), "dev", UNDERLAY]);
        ns.run("ip", &["link", "set", UNDERLAY, "up"]);
        ns.run(
            "ip",
            &[
                "link", "add", VXLAN, "type", "vxlan", "external", "dstport", "4789",
            ],
        );
        ns.run("ip", &["link", "set", VXLAN, "up"]);
        let vxlan = within(&ns, || {
            let name = std::ffi::CString::new(VXLAN).unwrap();
            // SAFETY: a NUL-terminated name.
            unsafe { libc::if_nametoindex(name.as_ptr()) }
        });
        assert_ne!(vxlan, 0, "{VXLAN} was just made");
        fabric
            .ns
            .run("ip", &["link", "set", &peer, "master", BRIDGE, "up"]);
        let mut host = Host {
            ns,
            underlay,
            vxlan,
            ip,
            mac,
            datapath,
            _pins: pins,
        };
        host.with(|datapath| datapath.attach_vxlan(vxlan).unwrap());
        host
    }

    /// Runs `f` with the host's datapath on a thread in its namespace.
    pub fn with<T: Send>(&mut self, f: impl FnOnce(&mut Datapath) -> T + Send) -> T {
        let Self { ns, datapath, .. } = self;
        within(ns, || f(datapath))
    }

    /// A VM on this host: a veth `port-<name>` here, its peer `eth0` in the
    /// VM (MAC, address, default route via `gateway`, MTU 1450), the port
    /// attached.
    pub fn add_vm(
        &mut self,
        name: &str,
        vni: u64,
        mac: Mac,
        address: &str,
        gateway: &str,
        redirect: Redirect,
    ) -> HostVm {
        let vm = Vm::new();
        let port_name = format!("port-{name}");
        let vm_name = format!("vm-{name}");
        let port = within(&self.ns, || {
            let netlink = Netlink::new();
            let (port, peer) = netlink.add_veth(&port_name, &vm_name, None);
            vm.plug(&netlink, (peer, &vm_name), mac, address, gateway);
            port
        });
        let mtu = VM_MTU.to_string();
        self.ns.run("ip", &["link", "set", &port_name, "mtu", &mtu]);
        vm.run("ip", &["link", "set", "eth0", "mtu", &mtu]);
        self.with(|datapath| datapath.attach_port(port).unwrap());
        let spec =
            super::programs::port(port, vni, mac, address.split('/').next().unwrap(), redirect);
        HostVm { vm, port, spec }
    }

    pub fn underlay_spec(&self) -> UnderlaySpec {
        UnderlaySpec {
            ifindex: self.underlay,
            ip: self.ip,
            mac: self.mac,
            mtu: UNDERLAY_MTU,
            gateway_mac: None,
            vxlan_ifindex: self.vxlan,
        }
    }

    pub fn stats(&self) -> UnderlayStats {
        self.datapath.reader().unwrap().underlay_stats().unwrap()
    }
}

/// The model of a host: its VMs as local ports, the others' as remote
/// endpoints on their hosts, subnets 10.0.1.0/24 and 10.0.2.0/24 of VPC 1
/// on router r1.
pub(super) fn host_model(
    host: &Host,
    local: &[&HostVm],
    remote: &[(&HostVm, Ipv4Addr)],
) -> DatapathModel {
    let ports: Vec<PortSpec> = local.iter().map(|vm| vm.spec.clone()).collect();
    let mut endpoints: Vec<EndpointSpec> = ports.iter().flat_map(PortSpec::endpoints).collect();
    for (vm, host) in remote {
        endpoints.extend(
            vm.spec
                .endpoints()
                .into_iter()
                .map(|endpoint| EndpointSpec {
                    location: Location::Remote { host: *host },
                    ..endpoint
                }),
        );
    }
    DatapathModel {
        ports,
        endpoints,
        subnets: vec![
            subnet(VNI1, "10.0.1.0/24", "10.0.1.1", GW1_MAC, Some("r1")),
            subnet(VNI1, "10.0.2.0/24", "10.0.2.1", GW2_MAC, Some("r1")),
        ],
        underlay: Some(host.underlay_spec()),
        hosts: Vec::new(),
        port_mtu: VM_MTU,
    }
}

/// Frames seen by an AF_PACKET socket on device `ifname` of `ns` (both
/// directions) while `during` runs, up to a bounded number and time.
pub(super) fn capture(ns: &Vm, ifname: &str, during: impl FnOnce()) -> Vec<Vec<u8>> {
    const MAX_FRAMES: usize = 20_000;
    let ready = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let capturer = scope.spawn(|| {
            nix::sched::setns(&ns.netns, CloneFlags::CLONE_NEWNET).expect("setns");
            let ifname = std::ffi::CString::new(ifname).unwrap();
            // SAFETY (all): plain socket calls on a descriptor owned here,
            // with buffers and sizes that match.
            let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert_ne!(ifindex, 0, "{ifname:?}");
            let all = (libc::ETH_P_ALL as u16).to_be();
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
            assert!(fd >= 0, "{}", io::Error::last_os_error());
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = all;
            address.sll_ifindex = ifindex as i32;
            let bound = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&raw const address).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(bound, 0, "{}", io::Error::last_os_error());
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    size_of::<libc::timeval>() as u32,
                )
            };
            ready.store(true, Ordering::SeqCst);
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 128 * 1024];
            let deadline = Instant::now() + Duration::from_secs(60);
            while frames.len() < MAX_FRAMES && Instant::now() < deadline {
                let n = unsafe {
                    libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                } else if stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            frames
        });
        while !ready.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
        during();
        // What is in flight still arrives.
        thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::SeqCst);
        capturer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A VXLAN frame as the fabric carries it, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Vxlan {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub df: bool,
    pub ttl: u8,
    pub sport: u16,
    pub udp_check: u16,
    pub vni: u32,
    pub inner_src_mac: Mac,
    pub inner_dst_mac: Mac,
    pub inner_src: Ipv4Addr,
    pub inner_dst: Ipv4Addr,
    pub inner_proto: u8,
}

pub(super) fn parse_vxlan(frame: &[u8]) -> Option<Vxlan> {
    let at = |offset: usize| frame.get(offset).copied();
    let u16_at = |offset: usize| Some(u16::from_be_bytes([at(offset)?, at(offset + 1)?]));
    let ip_at = |offset: usize| {
        Some(Ipv4Addr::new(
            at(offset)?,
            at(offset + 1)?,
            at(offset + 2)?,
            at(offset + 3)?,
        ))
    };
    if u16_at(12)? != 0x0800 || at(14)? != 0x45 || at(23)? != 17 || u16_at(36)? != 4789 {
        return None;
    }
    let mac_at = |offset: usize| Some(Mac(frame.get(offset..offset + 6)?.try_into().ok()?));
    Some(Vxlan {
        outer_src: ip_at(26)?,
        outer_dst: ip_at(30)?,
        df: u16_at(20)? & 0x4000 != 0,
        ttl: at(22)?,
        sport: u16_at(34)?,
        udp_check: u16_at(40)?,
        vni: u32::from_be_bytes([0, at(46)?, at(47)?, at(48)?]),
        inner_dst_mac: mac_at(50)?,
        inner_src_mac: mac_at(56)?,
        inner_proto: at(64 + 9)?,
        inner_src: ip_at(64 + 12)?,
        inner_dst: ip_at(64 + 16)?,
    })
}

/// A VXLAN datagram's payload: header with `vni`, then `inner`.
pub(super) fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend((vni << 8).to_be_bytes());
    payload.extend(inner);
    payload
}

/// Sends `count` UDP datagrams from `from` (an address of `ns`) to
/// `to`:4789 carrying `payload`.
pub(super) fn send_udp(ns: &Vm, from: Ipv4Addr, to: Ipv4Addr, payload: &[u8], count: usize) {
    within(ns, || {
        let socket = UdpSocket::bind((from, 0)).unwrap();
        for _ in 0..count {
            socket.send_to(payload, (to, 4789)).unwrap();
        }
    });
}

const A_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x20, 0x0a]);
const B_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x20, 0x0b]);
const C_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x20, 0x0c]);

/// Two hosts: A (10.0.1.10) on host 1; B (10.0.1.20, same subnet) and C
/// (10.0.2.30, routed) on host 2; all in VPC 1, all veths.
pub(super) struct TwoHosts {
    pub fabric: Fabric,
    pub h1: Host,
    pub h2: Host,
    pub a: HostVm,
    pub b: HostVm,
    pub c: HostVm,
}

impl TwoHosts {
    pub fn new() -> Self {
        let fabric = Fabric::new();
        let mut h1 = Host::new(&fabric, 1);
        let mut h2 = Host::new(&fabric, 2);
        let a = h1.add_vm("a", VNI1, A_MAC, "10.0.1.10/24", "10.0.1.1", Redirect::Peer);
        let b = h2.add_vm("b", VNI1, B_MAC, "10.0.1.20/24", "10.0.1.1", Redirect::Peer);
        let c = h2.add_vm("c", VNI1, C_MAC, "10.0.2.30/24", "10.0.2.1", Redirect::Peer);
        let mut hosts = Self {
            fabric,
            h1,
            h2,
            a,
            b,
            c,
        };
        hosts.sync();
        hosts
    }

    pub fn models(&self) -> (DatapathModel, DatapathModel) {
        let m1 = host_model(
            &self.h1,
            &[&self.a],
            &[(&self.b, self.h2.ip), (&self.c, self.h2.ip)],
        );
        let m2 = host_model(&self.h2, &[&self.b, &self.c], &[(&self.a, self.h1.ip)]);
        (m1, m2)
    }

    pub fn sync(&mut self) {
        let (m1, m2) = self.models();
        for (host, model) in [(&mut self.h1, m1), (&mut self.h2, m2)] {
            let stats = host.datapath.sync(&model).unwrap();
            assert!(stats.conflicts.is_empty(), "{stats:?}");
        }
    }
}

#[test]
fn vms_on_two_hosts_talk_over_vxlan() {
    if !privileged() {
        return;
    }
    let t = TwoHosts::new();

    // Same subnet, both ways; routed across subnets and hosts, both ways.
    assert!(t.a.vm.ping("10.0.1.20", &[]), "A → B");
    assert!(t.b.vm.ping("10.0.1.10", &[]), "B → A");
    assert!(t.a.vm.ping("10.0.2.30", &[]), "A → C (routed)");
    assert!(t.c.vm.ping("10.0.1.10", &[]), "C → A (routed)");

    // What the fabric carries: VXLAN between the hosts' underlay addresses,
    // VNI 100, to 4789 from a port of the dynamic range, checksum 0, DF
    // clear, TTL 64; inside, the frames as the VMs (or the router) sent
    // them.
    let frames = capture(&t.fabric.ns, "fab1", || {
        assert!(t.a.vm.ping("10.0.1.20", &["-s", "1000"]));
        assert!(t.a.vm.ping("10.0.2.30", &[]));
    });
    let vxlan: Vec<Vxlan> = frames.iter().filter_map(|f| parse_vxlan(f)).collect();
    let out: Vec<&Vxlan> = vxlan.iter().filter(|v| v.outer_src == t.h1.ip).collect();
    let back: Vec<&Vxlan> = vxlan.iter().filter(|v| v.outer_src == t.h2.ip).collect();
    assert!(out.len() >= 6 && back.len() >= 6, "{vxlan:#?}");
    for v in &vxlan {
        assert_eq!(v.vni, 100, "{v:?}");
        assert!(v.sport >= 49152, "{v:?}");
        assert_eq!((v.udp_check, v.df, v.ttl), (0, false, 64), "{v:?}");
        assert_eq!(v.inner_proto, 1, "ICMP: {v:?}");
    }
    for v in &out {
        assert_eq!(v.outer_dst, t.h2.ip);
        assert_eq!(v.inner_src, ip("10.0.1.10"));
    }
    // Same subnet: as A sent it. Routed: from C's gateway to C.
    let to_b = out.iter().find(|v| v.inner_dst == ip("10.0.1.20")).unwrap();
    assert_eq!((to_b.inner_src_mac, to_b.inner_dst_mac), (A_MAC, B_MAC));
    let to_c = out.iter().find(|v| v.inner_dst == ip("10.0.2.30")).unwrap();
    assert_eq!((to_c.inner_src_mac, to_c.inner_dst_mac), (GW2_MAC, C_MAC));
    let from_c = back
        .iter()
        .find(|v| v.inner_src == ip("10.0.2.30"))
        .unwrap();
    assert_eq!(
        (from_c.inner_src_mac, from_c.inner_dst_mac),
        (GW1_MAC, A_MAC)
    );
    // One flow, one source port (ECMP keeps it on one path).
    let ports: std::collections::BTreeSet<u16> = out
        .iter()
        .filter(|v| v.inner_dst == ip("10.0.1.20"))
        .map(|v| v.sport)
        .collect();
    assert_eq!(ports.len(), 1, "{ports:?}");

    // Full-size: the largest ping the VM's MTU allows, unfragmented, and
    // TCP both ways, in a subnet and routed (GSO super-packets of 64 KiB
    // encapsulated whole, segmented to fit the underlay).
    assert!(
        t.a.vm.ping("10.0.1.20", &["-s", "1422", "-M", "do"]),
        "1450 bytes"
    );
    const LEN: usize = 32 << 20;
    assert_eq!(tcp_transfer(&t.a.vm, &t.b.vm, "10.0.1.20:5001", LEN), LEN);
    assert_eq!(tcp_transfer(&t.b.vm, &t.a.vm, "10.0.1.10:5002", LEN), LEN);
    assert_eq!(tcp_transfer(&t.a.vm, &t.c.vm, "10.0.2.30:5003", LEN), LEN);
    assert_eq!(tcp_transfer(&t.c.vm, &t.a.vm, "10.0.1.10:5004", LEN), LEN);

    // Counted: encapsulated on the sender's port, decapsulated on the
    // receiver's, and on both hosts; nothing dropped.
    let a =
        t.h1.datapath
            .reader()
            .unwrap()
            .port_stats(t.a.port)
            .unwrap();
    let b =
        t.h2.datapath
            .reader()
            .unwrap()
            .port_stats(t.b.port)
            .unwrap();
    assert!(a.tunnel.encap_bytes > 2 * LEN as u64, "{a:?}");
    assert!(a.tunnel.decap_bytes > 2 * LEN as u64, "{a:?}");
    assert!(b.tunnel.decap_bytes > LEN as u64, "{b:?}");
    assert!(b.traffic.tx_bytes >= b.tunnel.decap_bytes, "{b:?}");
    assert_eq!(drops_by_reason(&a), [], "{a:?}");
    assert_eq!(drops_by_reason(&b), [], "{b:?}");
    for host in [&t.h1, &t.h2] {
        let stats = host.stats();
        assert!(
            stats.encap_packets > 0 && stats.decap_packets > 0,
            "{stats:?}"
        );
        assert_eq!(underlay_drops_by_reason(&stats), [], "{stats:?}");
    }
}

#[test]
fn spoofed_vxlan_is_dropped_by_tc_and_by_xdp() {
    if !privileged() {
        return;
    }
    let mut t = TwoHosts::new();
    // An address on the fabric that is no host's.
    t.fabric
        .ns
        .run("ip", &["addr", "add", "198.18.0.250/15", "dev", BRIDGE]);
    let stranger = ip("198.18.0.250");
    // A frame for B, well formed.
    let inner = super::packets::ether(
        B_MAC,
        A_MAC,
        super::packets::ETH_P_IP,
        &super::packets::Ipv4::new(ip("10.0.1.10"), ip("10.0.1.20"), super::packets::UDP)
            .packet(&super::packets::udp(1, 2, b"spoofed")),
    );
    let known_vni = vxlan_payload(100, &inner);
    let unknown_vni = vxlan_payload(4242, &inner);
    let drops = |host: &Host, reason: UnderlayDropReason| host.stats().drops[reason as usize];
    let wait_for = |host: &Host, reason: UnderlayDropReason, expected: u64| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while drops(host, reason) != expected {
            assert!(Instant::now() < deadline, "{reason:?}: {:?}", host.stats());
            thread::sleep(Duration::from_millis(10));
        }
    };

    // Without XDP, underlay_in drops them.
    send_udp(&t.fabric.ns, stranger, t.h2.ip, &known_vni, 5);
    send_udp(&t.h1.ns, t.h1.ip, t.h2.ip, &unknown_vni, 3);
    wait_for(&t.h2, UnderlayDropReason::UnknownHost, 5);
    wait_for(&t.h2, UnderlayDropReason::UnknownVni, 3);

    // With XDP (both modes), before the kernel builds a packet of them;
    // traffic between the VMs goes on.
    let underlay = t.h2.underlay;
    let mut expected = (0, 0);
    for mode in [XdpMode::Skb, XdpMode::Driver] {
        t.h2.with(|datapath| datapath.attach_xdp(underlay, mode).unwrap());
        assert_eq!(
            t.h2.datapath.reader().unwrap().xdp_mode(underlay),
            Some(mode)
        );
        send_udp(&t.fabric.ns, stranger, t.h2.ip, &known_vni, 7);
        send_udp(&t.h1.ns, t.h1.ip, t.h2.ip, &unknown_vni, 4);
        expected = (expected.0 + 7, expected.1 + 4);
        wait_for(&t.h2, UnderlayDropReason::XdpUnknownHost, expected.0);
        wait_for(&t.h2, UnderlayDropReason::XdpUnknownVni, expected.1);
        assert_eq!(drops(&t.h2, UnderlayDropReason::UnknownHost), 5, "{mode:?}");
        // (With generic XDP the kernel copies most packets from a veth
        // before the program runs, and underlay_in must mend what the copy
        // loses: see restore_mac_header in ebpf/datapath/src/underlay.rs.)
        assert!(
            t.a.vm.ping("10.0.1.20", &[]),
            "A → B with XDP {mode:?}: {:?}",
            t.h2.stats()
        );
    }
    // Off: tc is the one dropping again.
    t.h2.with(|datapath| datapath.detach_xdp(underlay).unwrap());
    assert_eq!(t.h2.datapath.reader().unwrap().xdp_mode(underlay), None);
    send_udp(&t.fabric.ns, stranger, t.h2.ip, &known_vni, 2);
    wait_for(&t.h2, UnderlayDropReason::UnknownHost, 7);
    assert_eq!(drops(&t.h2, UnderlayDropReason::XdpUnknownHost), expected.0);
    assert!(t.a.vm.ping("10.0.1.20", &[]), "A → B without XDP");
}
