//! Tap ports as a hypervisor has them: the test process holds the tap's
//! descriptor and reads what the datapath delivers to the VM. The "VM" is a
//! namespace whose `eth0` is itself a tap held by the test; two threads
//! carry frames between the two descriptors, as vhost-net would (with the
//! virtio-net header and offloads when the guest has them), so real TCP
//! runs over it.

use std::{
    ffi::CString,
    fs::OpenOptions,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use super::{
    netns::Vm,
    overlay::{Host, HostVm, within},
    programs::port,
};
use crate::{core::model::Mac, datapath::Redirect};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
/// TUNSETOFFLOAD: what the reader of the tap (the guest) accepts.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
/// `struct virtio_net_hdr` (without the mergeable-buffers count): what a
/// tap with IFF_VNET_HDR puts before each frame by default.
pub const VNET_HDR_LEN: usize = 10;
/// `virtio_net_hdr.gso_type`: not GSO, TCP over IPv4.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

/// How a guest drives its tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// No virtio-net header, no offloads: every frame fits the MTU.
    Plain,
    /// A virtio-net header before each frame, checksum and TSO offloads
    /// negotiated (a Linux guest with virtio-net), no UDP tunnel offloads.
    Offloads,
}

/// A tap device whose descriptor we hold.
pub struct Tap {
    pub fd: OwnedFd,
    pub ifindex: u32,
}

impl Tap {
    /// Creates tap `name` in the calling thread's network namespace.
    pub fn open(name: &str, guest: Guest) -> Self {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let fd = OwnedFd::from(file);
        // struct ifreq: the name, then the flags (a short).
        let mut ifreq = [0u8; 40];
        ifreq[..name.len()].copy_from_slice(name.as_bytes());
        let mut flags = IFF_TAP | IFF_NO_PI;
        if guest == Guest::Offloads {
            flags |= IFF_VNET_HDR;
        }
        ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq`
        // is as big as.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
        assert_eq!(ret, 0, "TUNSETIFF: {}", io::Error::last_os_error());
        if guest == Guest::Offloads {
            let offloads = libc::c_ulong::from(TUN_F_CSUM | TUN_F_TSO4);
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, offloads) };
            assert_eq!(ret, 0, "TUNSETOFFLOAD: {}", io::Error::last_os_error());
        }
        let name = CString::new(name).unwrap();
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0);
        Tap { fd, ifindex }
    }
}

/// What came out of the port's tap (towards the guest).
#[derive(Debug, Default, Clone)]
pub struct Delivered {
    pub frames: usize,
    /// The longest frame (without the virtio-net header).
    pub longest: usize,
    /// Frames by `virtio_net_hdr.gso_type` (index), for guests with
    /// offloads.
    pub gso_types: Vec<usize>,
}

/// Carries frames between a port's tap and its guest's tap until dropped.
pub struct Wire {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    pub delivered: Arc<Mutex<Delivered>>,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Copies what can be read from `from` to `to` until `stop`; `seen` looks
/// at each frame first.
fn carry(
    from: OwnedFd,
    to: OwnedFd,
    stop: Arc<AtomicBool>,
    seen: impl Fn(&[u8]) + Send + 'static,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 128 * 1024];
        while !stop.load(Ordering::SeqCst) {
            let mut poll = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY (all): plain calls on descriptors we own, with buffers
            // and sizes that match.
            if unsafe { libc::poll(&raw mut poll, 1, 50) } <= 0 {
                continue;
            }
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                continue;
            }
            let frame = &buf[..n as usize];
            seen(frame);
            // A full guest queue drops, as a real one would.
            unsafe { libc::write(to.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        }
    })
}

impl Host {
    /// A VM on a tap port of this host, driven as `guest` drives it: the
    /// port is tap `tap-<name>` here (MTU 1450, attached), the VM a
    /// namespace whose `eth0` is a tap too, and a [`Wire`] between them.
    pub fn add_tap_vm(
        &mut self,
        name: &str,
        vni: u64,
        mac: Mac,
        address: &str,
        gateway: &str,
        guest: Guest,
    ) -> (HostVm, Wire) {
        let vm = Vm::new();
        let port_name = format!("tap-{name}");
        let port_tap = within(&self.ns, || Tap::open(&port_name, guest));
        let guest_tap = within(&vm, || Tap::open("eth0", guest));
        let mtu = "1450";
        self.ns
            .run("ip", &["link", "set", &port_name, "mtu", mtu, "up"]);
        vm.run(
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"],
        );
        vm.run(
            "ip",
            &[
                "link",
                "set",
                "eth0",
                "address",
                &mac.to_string(),
                "mtu",
                mtu,
                "up",
            ],
        );
        vm.run("ip", &["addr", "add", address, "dev", "eth0"]);
        vm.run("ip", &["route", "add", "default", "via", gateway]);
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Mutex::new(Delivered::default()));
        let header = if guest == Guest::Offloads {
            VNET_HDR_LEN
        } else {
            0
        };
        let record = {
            let delivered = delivered.clone();
            move |frame: &[u8]| {
                let mut delivered = delivered.lock().unwrap();
                delivered.frames += 1;
                delivered.longest = delivered.longest.max(frame.len() - header);
                if header > 0 {
                    let gso = usize::from(frame[1]);
                    if delivered.gso_types.len() <= gso {
                        delivered.gso_types.resize(gso + 1, 0);
                    }
                    delivered.gso_types[gso] += 1;
                }
            }
        };
        let threads = vec![
            carry(
                port_tap.fd.try_clone().unwrap(),
                guest_tap.fd.try_clone().unwrap(),
                stop.clone(),
                record,
            ),
            carry(guest_tap.fd, port_tap.fd, stop.clone(), |_| {}),
        ];
        let port_ifindex = port_tap.ifindex;
        self.with(|datapath| datapath.attach_port(port_ifindex).unwrap());
        let address = address.split('/').next().unwrap();
        let spec = port(port_ifindex, vni, mac, address, Redirect::Egress);
        let wire = Wire {
            stop,
            threads,
            delivered,
        };
        (
            HostVm {
                vm,
                port: port_ifindex,
                spec,
            },
            wire,
        )
    }
}

/// The device's transmit drops, as the kernel counts them.
pub fn tx_dropped(host: &Host, name: &str) -> u64 {
    let output = host
        .ns
        .output("ip", &["-j", "-s", "link", "show", "dev", name]);
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    links[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
}

/// A large TCP transfer from a VM on another host to a VM behind a tap:
/// what reaches the tap is read from its descriptor as ordinary frames (no
/// tunnel GSO type, none dropped by the tap), whether the guest has
/// offloads or not, and a guest with TSO gets them as large as the sender
/// made them, as it would from its own host.
///
/// On 6.18 a GSO packet decapsulated by `underlay_in` would keep its tunnel
/// marks (no `BPF_F_ADJ_ROOM_DECAP_L4_UDP` yet), which no tap here
/// negotiated: the kernel would segment it in software before the tap. So
/// `underlay_in` leaves GSO packets for taps to the host's VXLAN device,
/// whose receive path clears the marks, and `vxlan_in` delivers them.
#[test]
fn tap_ports_get_decapsulated_tcp_as_ordinary_frames() {
    use super::{netns::tcp_transfer, overlay::*};
    if !super::privileged() {
        return;
    }
    const LEN: usize = 16 << 20;
    const MSS: usize = 1450 - 40;
    for guest in [Guest::Plain, Guest::Offloads] {
        let fabric = Fabric::new();
        let mut h1 = Host::new(&fabric, 1);
        let mut h2 = Host::new(&fabric, 2);
        let a_mac = Mac([0xfa, 0x16, 0x3e, 0, 0x30, 0x0a]);
        let c_mac = Mac([0xfa, 0x16, 0x3e, 0, 0x30, 0x0c]);
        let a = h1.add_vm("a", 100, a_mac, "10.0.1.10/24", "10.0.1.1", Redirect::Peer);
        let (c, wire) = h2.add_tap_vm("c", 100, c_mac, "10.0.1.30/24", "10.0.1.1", guest);
        h1.datapath
            .sync(&host_model(&h1, &[&a], &[(&c, h2.ip)]))
            .unwrap();
        h2.datapath
            .sync(&host_model(&h2, &[&c], &[(&a, h1.ip)]))
            .unwrap();

        assert!(a.vm.ping("10.0.1.30", &[]), "{guest:?}: A → C");
        assert_eq!(
            tcp_transfer(&a.vm, &c.vm, "10.0.1.30:5001", LEN),
            LEN,
            "{guest:?}"
        );
        let delivered = wire.delivered.lock().unwrap().clone();
        let port = h2.datapath.reader().unwrap().port_stats(c.port).unwrap();
        assert!(port.tunnel.decap_bytes > LEN as u64, "{guest:?}: {port:?}");
        let through_device = h2.stats().device_decap_packets;
        assert!(
            through_device > 0,
            "{guest:?}: no GSO packet through the VXLAN device"
        );
        // A tap whose reader falls behind drops from its queue, as a busy
        // guest's would (a few of some hundred 64 KB packets on a loaded
        // machine); one that refused tunnel-marked GSO packets would drop
        // every large one, and the transfer would stall.
        let dropped = tx_dropped(&h2, "tap-c");
        assert!(
            dropped * 10 <= delivered.frames as u64,
            "{guest:?}: {dropped} dropped by the tap, {} delivered",
            delivered.frames
        );
        let mut gso = delivered.gso_types.clone();
        gso.resize(256, 0);
        match guest {
            // Segmented for it, by the kernel, at the tap.
            Guest::Plain => {
                assert!(delivered.longest <= 1450 + 14, "{delivered:?}");
                assert!(delivered.frames * MSS >= LEN, "{delivered:?}");
            }
            Guest::Offloads => {
                let ordinary = gso[usize::from(VIRTIO_NET_HDR_GSO_NONE)]
                    + gso[usize::from(VIRTIO_NET_HDR_GSO_TCPV4)];
                assert_eq!(ordinary, delivered.frames, "{gso:?}");
                // Whole super-packets: a tenth of the frames MSS-sized
                // segments would take, at most.
                assert!(
                    delivered.longest > 16 * 1024 && delivered.frames * MSS * 10 <= LEN,
                    "{delivered:?}"
                );
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!(
                        "tap guest with TSO: {} frames read, {} of them TCP GSO, longest {} \
                         bytes\n",
                        delivered.frames,
                        gso[usize::from(VIRTIO_NET_HDR_GSO_TCPV4)],
                        delivered.longest
                    )
                    .as_bytes(),
                );
            }
        }
    }
}
