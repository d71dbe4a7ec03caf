//! Tests against the running kernel: the verifier loads every program,
//! BPF_PROG_TEST_RUN runs them on frames, and veths in a private network
//! namespace carry real traffic through attached ports. They need root; the
//! root network namespace is never touched.

use std::{
    io::{self, Write},
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use alcor_ebpf_common::programs::{PORT_FROM_VM, PORT_TO_VM};
use aya::programs::{TestRun, TestRunOptions};
use futures::TryStreamExt;
use nix::sched::{CloneFlags, unshare};
use rtnetlink::{LinkUnspec, LinkVeth};

use super::*;

/// tc's verdict for "let the frame through".
const TC_ACT_OK: u32 = 0;
/// An EtherType for local experiments (IEEE 802): nothing in the kernel
/// answers it, so the test frames cause no further traffic.
const ETHERTYPE_EXPERIMENTAL: u16 = 0x88b5;

/// Whether these tests can run here: they need root, and CI must run them.
fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the datapath tests need root, and CI must run them"
    );
    // Straight to stderr: libtest captures `eprintln!`, and a skip must show.
    let _ = writeln!(
        io::stderr(),
        "SKIPPED: needs root (the datapath tests load eBPF programs)"
    );
    false
}

/// A pin directory of the test's own on bpffs; removing it on drop also
/// frees whatever was pinned there, even if the test failed.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Self(PathBuf::from(format!(
            "{}/alcor-test-{}-{}",
            bpffs::MOUNT_POINT,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// An Ethernet broadcast frame of `len` bytes with an experimental EtherType.
fn frame(len: usize) -> Vec<u8> {
    let mut frame = vec![0; len];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame[12..14].copy_from_slice(&ETHERTYPE_EXPERIMENTAL.to_be_bytes());
    frame
}

fn program_id(datapath: &mut Datapath, hook: Hook) -> u32 {
    datapath.program_mut(hook).unwrap().info().unwrap().id()
}

#[test]
fn datapath_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Datapath>();
}

#[test]
fn every_program_passes_the_verifier() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    // Opening loads every program of the object into the kernel.
    let datapath = Datapath::open(&pins.0).unwrap();
    let mut names: Vec<_> = datapath
        .ebpf
        .programs()
        .map(|(name, program)| {
            assert!(program.fd().is_ok(), "{name} is not loaded");
            name
        })
        .collect();
    names.sort_unstable();
    assert_eq!(names, [PORT_FROM_VM, PORT_TO_VM]);
}

#[test]
fn port_programs_count_frames_and_let_them_through() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    // BPF_PROG_TEST_RUN runs programs on an skb of the loopback device.
    const LOOPBACK: u32 = 1;
    let runs = [(Hook::FromVm, frame(64), 1), (Hook::ToVm, frame(100), 3)];
    for (hook, frame, repeat) in &runs {
        let options = TestRunOptions {
            data_in: Some(frame),
            repeat: *repeat,
            ..TestRunOptions::default()
        };
        let result = datapath.program_mut(*hook).unwrap().test_run(options);
        assert_eq!(result.unwrap().return_value, TC_ACT_OK, "{hook:?}");
    }
    let expected = PortCounters {
        rx_packets: 1,
        rx_bytes: 64,
        tx_packets: 3,
        tx_bytes: 300,
    };
    assert_eq!(datapath.port_counters(LOOPBACK).unwrap(), expected);
    assert_eq!(
        datapath.port_counters(LOOPBACK + 1).unwrap(),
        PortCounters::default()
    );
}

/// Runs `test` on a thread of its own inside a new network namespace, which
/// goes away (with every device in it) when the thread ends.
fn in_new_netns(test: impl FnOnce() + Send + 'static) {
    let thread = thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        // No IPv6 (router solicitations, DAD, MLD) on the veths: only the
        // test's frames cross them, so counters can be checked exactly.
        // /proc/sys/net is the calling thread's namespace.
        for conf in ["all", "default"] {
            let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
            match fs::write(&path, "1") {
                Err(e) if e.kind() != io::ErrorKind::NotFound => panic!("{path}: {e}"),
                _ => {}
            }
        }
        test();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// rtnetlink in the calling thread's network namespace.
struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl Netlink {
    fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let (connection, handle, _) = {
            let _context = runtime.enter();
            rtnetlink::new_connection().unwrap()
        };
        runtime.spawn(connection);
        Self { runtime, handle }
    }

    /// A veth pair `port`–`vm`, both up; `port_ifindex` asks for the port's
    /// ifindex. Returns both ifindexes.
    fn add_veth(&self, port: &str, vm: &str, port_ifindex: Option<u32>) -> (u32, u32) {
        let mut veth = LinkVeth::new(port, vm);
        if let Some(ifindex) = port_ifindex {
            veth = veth.index(ifindex);
        }
        let links = self.handle.link();
        self.runtime
            .block_on(links.add(veth.build()).execute())
            .unwrap();
        let ifindexes = (self.ifindex(port), self.ifindex(vm));
        for ifindex in [ifindexes.0, ifindexes.1] {
            let up = LinkUnspec::new_with_index(ifindex).up().build();
            self.runtime.block_on(links.set(up).execute()).unwrap();
        }
        ifindexes
    }

    fn ifindex(&self, name: &str) -> u32 {
        let mut links = self.handle.link().get().match_name(name).execute();
        let link = self.runtime.block_on(links.try_next()).unwrap();
        link.unwrap().header.index
    }

    fn delete(&self, ifindex: u32) {
        let request = self.handle.link().del(ifindex).execute();
        self.runtime.block_on(request).unwrap();
    }
}

/// Sends `count` frames of `len` bytes out of device `ifindex` through an
/// AF_PACKET socket, so they pass its tc egress.
fn send_frames(ifindex: u32, len: usize, count: usize) {
    let protocol = ETHERTYPE_EXPERIMENTAL.to_be();
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket(AF_PACKET): {}", io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = protocol;
    address.sll_ifindex = ifindex.try_into().unwrap();
    address.sll_halen = 6;
    address.sll_addr[..6].fill(0xff);
    let frame = frame(len);
    for _ in 0..count {
        // SAFETY: the buffer and the address outlive the call, with their sizes.
        let sent = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(sent, len as isize, "{}", io::Error::last_os_error());
    }
}

/// Waits (bounded) until the port's counters are `expected`: frames sent to
/// a veth reach its peer's ingress from a softirq, a little later.
fn wait_for_counters(datapath: &Datapath, ifindex: u32, expected: PortCounters) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counters = datapath.port_counters(ifindex).unwrap();
        if counters == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "port {ifindex}: {counters:?}, expected {expected:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Ids of the links pinned for a port (ingress, egress).
fn pinned_link_ids(datapath: &Datapath, ifindex: u32) -> Vec<u32> {
    Hook::ALL
        .iter()
        .map(|&hook| {
            let pinned = PinnedLink::from_pin(datapath.link_path(ifindex, hook)).unwrap();
            FdLink::from(pinned).info().unwrap().id()
        })
        .collect()
}

/// Ids of the programs attached to a device's hook.
fn tcx_programs(ifname: &str, hook: Hook) -> Vec<u32> {
    let (_, programs) = SchedClassifier::query_tcx(ifname, hook.attach_type()).unwrap();
    programs.iter().map(|program| program.id()).collect()
}

fn add(counters: &mut PortCounters, hook: Hook, len: usize, count: usize) {
    let (packets, bytes) = match hook {
        Hook::FromVm => (&mut counters.rx_packets, &mut counters.rx_bytes),
        Hook::ToVm => (&mut counters.tx_packets, &mut counters.tx_bytes),
    };
    *packets += count as u64;
    *bytes += (len * count) as u64;
}

#[test]
fn ports_count_traffic_and_outlive_the_agent() {
    if !privileged() {
        return;
    }
    in_new_netns(|| {
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let (port, vm) = netlink.add_veth("port0", "vm0", None);

        let mut datapath = Datapath::open(&pins.0).unwrap();
        datapath.attach_port(port).unwrap();
        datapath.attach_port(port).unwrap();
        assert_eq!(datapath.attached_ports().unwrap(), [port]);
        for hook in Hook::ALL {
            let program = program_id(&mut datapath, hook);
            assert_eq!(tcx_programs("port0", hook), [program], "{hook:?}");
        }

        // The VM sends (the port's ingress); frames go to the VM (its egress).
        let mut expected = PortCounters::default();
        send_frames(vm, 60, 3);
        add(&mut expected, Hook::FromVm, 60, 3);
        send_frames(port, 90, 2);
        add(&mut expected, Hook::ToVm, 90, 2);
        wait_for_counters(&datapath, port, expected);

        // The agent stops: the port keeps its programs and keeps counting.
        let links = pinned_link_ids(&datapath, port);
        drop(datapath);
        send_frames(vm, 70, 1);
        add(&mut expected, Hook::FromVm, 70, 1);

        // Its successor finds the port and its counters, and adopts the
        // links: same links, now running the programs it loaded.
        let mut datapath = Datapath::open(&pins.0).unwrap();
        assert_eq!(datapath.attached_ports().unwrap(), [port]);
        wait_for_counters(&datapath, port, expected);
        datapath.attach_port(port).unwrap();
        assert_eq!(pinned_link_ids(&datapath, port), links);
        for hook in Hook::ALL {
            let program = program_id(&mut datapath, hook);
            assert_eq!(tcx_programs("port0", hook), [program], "{hook:?}");
        }
        send_frames(port, 80, 1);
        add(&mut expected, Hook::ToVm, 80, 1);
        wait_for_counters(&datapath, port, expected);

        datapath.detach_port(port).unwrap();
        datapath.detach_port(port).unwrap();
        assert!(datapath.attached_ports().unwrap().is_empty());
        for hook in Hook::ALL {
            assert!(tcx_programs("port0", hook).is_empty(), "{hook:?}");
        }
        assert_eq!(
            datapath.port_counters(port).unwrap(),
            PortCounters::default()
        );
        // tc egress runs within sendto(): a program still attached would
        // have counted this frame by now.
        send_frames(port, 90, 1);
        assert_eq!(
            datapath.port_counters(port).unwrap(),
            PortCounters::default()
        );
    });
}

#[test]
fn a_pin_left_by_a_deleted_device_is_replaced() {
    if !privileged() {
        return;
    }
    in_new_netns(|| {
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let (port, _) = netlink.add_veth("port1", "vm1", None);
        let mut datapath = Datapath::open(&pins.0).unwrap();
        datapath.attach_port(port).unwrap();
        let stale = pinned_link_ids(&datapath, port);

        // The pins outlive the device until the agent cleans up.
        netlink.delete(port);
        assert_eq!(datapath.attached_ports().unwrap(), [port]);
        assert!(matches!(
            datapath.attach_port(port),
            Err(DatapathError::NoSuchDevice(ifindex)) if ifindex == port
        ));

        // A new device with the same ifindex gets fresh links that work.
        let (again, vm) = netlink.add_veth("port1", "vm1", Some(port));
        assert_eq!(again, port);
        datapath.attach_port(port).unwrap();
        let fresh = pinned_link_ids(&datapath, port);
        assert!(fresh.iter().all(|id| !stale.contains(id)), "{fresh:?}");
        let mut expected = datapath.port_counters(port).unwrap();
        send_frames(vm, 60, 2);
        add(&mut expected, Hook::FromVm, 60, 2);
        wait_for_counters(&datapath, port, expected);

        datapath.detach_port(port).unwrap();
        assert!(datapath.attached_ports().unwrap().is_empty());
    });
}
