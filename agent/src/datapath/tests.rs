//! Tests against the running kernel: the verifier loads every program,
//! BPF_PROG_TEST_RUN runs them on frames, and veths in a private network
//! namespace carry real traffic through attached ports. They need root; the
//! root network namespace is never touched.

use std::{
    io::{self, Write},
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use alcor_ebpf_common::programs::{PORT_FROM_VM, PORT_TO_VM, UNDERLAY_IN, UNDERLAY_XDP, VXLAN_IN};
use aya::programs::{TestRun, TestRunOptions};
use futures::TryStreamExt;
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
use nix::sched::{CloneFlags, unshare};
use rtnetlink::{LinkUnspec, LinkVeth};

use super::*;

mod netns;
mod overlay;
mod packets;
mod programs;
mod sync;
mod tap;
mod tunnel;

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
            // What the verifier walked, and what runs: for the record.
            let info = program.info().unwrap();
            let _ = writeln!(
                io::stderr(),
                "{name}: {} instructions, {} verified, {} bytes jitted",
                info.size_translated().unwrap_or(0) / 8,
                info.verified_instruction_count().unwrap_or(0),
                info.size_jitted()
            );
            name
        })
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            PORT_FROM_VM,
            PORT_TO_VM,
            UNDERLAY_IN,
            UNDERLAY_XDP,
            VXLAN_IN
        ]
    );
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
    assert_eq!(
        datapath.reader().unwrap().port_counters(LOOPBACK).unwrap(),
        expected
    );
    assert_eq!(
        datapath
            .reader()
            .unwrap()
            .port_counters(LOOPBACK + 1)
            .unwrap(),
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
        let (runtime, handle) = crate::testing::rtnetlink();
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

    /// The bpf filters on a hook of device `ifindex`'s clsact qdisc.
    fn filters(&self, ifindex: u32, hook: Hook) -> Vec<Filter> {
        let request = self
            .handle
            .traffic_filter(ifindex.try_into().unwrap())
            .get();
        let request = match hook {
            Hook::FromVm | Hook::FromUnderlay | Hook::FromVxlanDevice => request.ingress(),
            Hook::ToVm => request.egress(),
        };
        let messages: Vec<_> = self
            .runtime
            .block_on(request.execute().try_collect())
            .unwrap();
        // A dump also has an entry per priority, without options.
        messages
            .iter()
            .filter_map(|message| {
                let program = message.attributes.iter().find_map(|attribute| {
                    let TcAttribute::Options(options) = attribute else {
                        return None;
                    };
                    options.iter().find_map(|option| match option {
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
                        _ => None,
                    })
                })?;
                Some(Filter {
                    priority: (message.header.info >> 16) as u16,
                    handle: message.header.handle.into(),
                    program,
                })
            })
            .collect()
    }
}

/// A bpf filter on a clsact hook, as the kernel lists it.
#[derive(Debug, PartialEq, Eq)]
struct Filter {
    priority: u16,
    handle: u32,
    program: u32,
}

/// Our filter, running the program loaded for `hook`.
fn our_filter(datapath: &mut Datapath, hook: Hook) -> Filter {
    Filter {
        priority: FILTER_PRIORITY,
        handle: FILTER_HANDLE.into(),
        program: program_id(datapath, hook),
    }
}

/// An AF_PACKET socket sending frames out of one device, so that they pass
/// its tc egress. (Closing one waits for an RCU grace period: reuse it.)
struct FrameSender {
    socket: OwnedFd,
    address: libc::sockaddr_ll,
}

impl FrameSender {
    fn new(ifindex: u32) -> Self {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket(AF_PACKET): {}", io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETHERTYPE_EXPERIMENTAL.to_be();
        address.sll_ifindex = ifindex.try_into().unwrap();
        address.sll_halen = 6;
        address.sll_addr[..6].fill(0xff);
        Self { socket, address }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: the buffer and the address outlive the call, with their sizes.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const self.address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(sent, frame.len() as isize, "{}", io::Error::last_os_error());
    }
}

/// Sends `count` frames of `len` bytes out of device `ifindex`.
fn send_frames(ifindex: u32, len: usize, count: usize) {
    let sender = FrameSender::new(ifindex);
    let frame = frame(len);
    for _ in 0..count {
        sender.send(&frame);
    }
}

/// Waits (bounded) until the port's counters are `expected`: frames sent to
/// a veth reach its peer's ingress from a softirq, a little later.
fn wait_for_counters(datapath: &Datapath, ifindex: u32, expected: PortCounters) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counters = datapath.reader().unwrap().port_counters(ifindex).unwrap();
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

fn add(counters: &mut PortCounters, hook: Hook, len: usize, count: usize) {
    let (packets, bytes) = match hook {
        Hook::FromVm => (&mut counters.rx_packets, &mut counters.rx_bytes),
        Hook::ToVm => (&mut counters.tx_packets, &mut counters.tx_bytes),
        Hook::FromUnderlay | Hook::FromVxlanDevice => unreachable!("not a port hook"),
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
        let mut first_programs = Vec::new();
        for hook in Hook::ALL {
            let filter = our_filter(&mut datapath, hook);
            first_programs.push(filter.program);
            assert_eq!(netlink.filters(port, hook), [filter], "{hook:?}");
        }

        // The VM sends (the port's ingress); frames go to the VM (its egress).
        let mut expected = PortCounters::default();
        send_frames(vm, 60, 3);
        add(&mut expected, Hook::FromVm, 60, 3);
        send_frames(port, 90, 2);
        add(&mut expected, Hook::ToVm, 90, 2);
        wait_for_counters(&datapath, port, expected);

        // The agent stops: the port keeps its programs and keeps counting.
        drop(datapath);
        send_frames(vm, 70, 1);
        add(&mut expected, Hook::FromVm, 70, 1);

        // Its successor finds the port and its counters, and adopts the
        // filters: the same filters, now running the programs it loaded.
        let mut datapath = Datapath::open(&pins.0).unwrap();
        assert_eq!(datapath.attached_ports().unwrap(), [port]);
        wait_for_counters(&datapath, port, expected);
        datapath.attach_port(port).unwrap();
        for (hook, first) in Hook::ALL.into_iter().zip(first_programs) {
            let filter = our_filter(&mut datapath, hook);
            assert_ne!(filter.program, first, "{hook:?}");
            assert_eq!(netlink.filters(port, hook), [filter], "{hook:?}");
        }
        send_frames(port, 80, 1);
        add(&mut expected, Hook::ToVm, 80, 1);
        wait_for_counters(&datapath, port, expected);

        datapath.detach_port(port).unwrap();
        datapath.detach_port(port).unwrap();
        assert!(datapath.attached_ports().unwrap().is_empty());
        for hook in Hook::ALL {
            assert!(netlink.filters(port, hook).is_empty(), "{hook:?}");
        }
        assert_eq!(
            datapath.reader().unwrap().port_counters(port).unwrap(),
            PortCounters::default()
        );
        // tc egress runs within sendto(): a program still attached would
        // have counted this frame by now.
        send_frames(port, 90, 1);
        assert_eq!(
            datapath.reader().unwrap().port_counters(port).unwrap(),
            PortCounters::default()
        );
        // A detached port attaches again, on the clsact qdisc left behind.
        datapath.attach_port(port).unwrap();
        assert_eq!(datapath.attached_ports().unwrap(), [port]);
        for hook in Hook::ALL {
            let filter = our_filter(&mut datapath, hook);
            assert_eq!(netlink.filters(port, hook), [filter], "{hook:?}");
        }
    });
}

#[test]
fn adopting_a_port_loses_no_frame() {
    if !privileged() {
        return;
    }
    in_new_netns(|| {
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let (port, _) = netlink.add_veth("port0", "vm0", None);
        let mut datapath = Datapath::open(&pins.0).unwrap();
        datapath.attach_port(port).unwrap();

        // Frames go to the VM all along (threads share the namespace they
        // are spawned in) while successive agents take the port over.
        let stop = Arc::new(AtomicBool::new(false));
        let sender = thread::spawn({
            let stop = stop.clone();
            move || {
                let (sender, frame) = (FrameSender::new(port), frame(60));
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    sender.send(&frame);
                    sent += 1;
                }
                sent
            }
        });
        for _ in 0..5 {
            drop(datapath);
            datapath = Datapath::open(&pins.0).unwrap();
            datapath.attach_port(port).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().unwrap();
        let _ = writeln!(io::stderr(), "{sent} frames sent across 5 adoptions");
        let mut expected = PortCounters::default();
        add(&mut expected, Hook::ToVm, 60, sent);
        assert_eq!(
            datapath.reader().unwrap().port_counters(port).unwrap(),
            expected
        );
    });
}

#[test]
fn a_deleted_device_is_forgotten() {
    if !privileged() {
        return;
    }
    in_new_netns(|| {
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let (port, vm) = netlink.add_veth("port1", "vm1", None);
        let mut datapath = Datapath::open(&pins.0).unwrap();
        datapath.attach_port(port).unwrap();
        send_frames(vm, 60, 2);

        // Deleted without a detach (say, by the hypervisor).
        netlink.delete(port);
        assert!(datapath.attached_ports().unwrap().is_empty());
        assert!(matches!(
            datapath.attach_port(port),
            Err(DatapathError::NoSuchDevice(ifindex)) if ifindex == port
        ));
        // The next agent drops what was kept for it.
        drop(datapath);
        let mut datapath = Datapath::open(&pins.0).unwrap();
        assert_eq!(
            datapath.reader().unwrap().port_counters(port).unwrap(),
            PortCounters::default()
        );

        // A new device with the same ifindex is a port of its own.
        let (again, vm) = netlink.add_veth("port1", "vm1", Some(port));
        assert_eq!(again, port);
        assert!(datapath.attached_ports().unwrap().is_empty());
        datapath.attach_port(port).unwrap();
        assert_eq!(datapath.attached_ports().unwrap(), [port]);
        for hook in Hook::ALL {
            let filter = our_filter(&mut datapath, hook);
            assert_eq!(netlink.filters(port, hook), [filter], "{hook:?}");
        }
        let mut expected = PortCounters::default();
        send_frames(vm, 70, 1);
        add(&mut expected, Hook::FromVm, 70, 1);
        wait_for_counters(&datapath, port, expected);

        // Detaching a port whose device is gone only forgets it.
        netlink.delete(port);
        datapath.detach_port(port).unwrap();
        assert_eq!(
            datapath.reader().unwrap().port_counters(port).unwrap(),
            PortCounters::default()
        );
    });
}

/// Attaches `ports` one by one and prints the time an attach takes.
fn attach_timed(datapath: &mut Datapath, ports: &[u32], what: &str) {
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for &port in ports {
        let attaching = Instant::now();
        datapath.attach_port(port).unwrap();
        slowest = slowest.max(attaching.elapsed());
    }
    let total = started.elapsed();
    let _ = writeln!(
        io::stderr(),
        "{what} {} ports in {total:?}: {:?} per attach, slowest {slowest:?}",
        ports.len(),
        total / ports.len() as u32
    );
}

#[test]
fn fifty_ports_attach_and_count() {
    if !privileged() {
        return;
    }
    in_new_netns(|| {
        const PORTS: usize = 50;
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let veths: Vec<(u32, u32)> = (0..PORTS)
            .map(|i| netlink.add_veth(&format!("port{i}"), &format!("vm{i}"), None))
            .collect();
        let mut ports: Vec<u32> = veths.iter().map(|&(port, _)| port).collect();
        ports.sort_unstable();

        let mut datapath = Datapath::open(&pins.0).unwrap();
        attach_timed(&mut datapath, &ports, "attached");
        assert_eq!(datapath.attached_ports().unwrap(), ports);
        // A restarted agent adopts them all (a program swap per filter).
        drop(datapath);
        let mut datapath = Datapath::open(&pins.0).unwrap();
        assert_eq!(datapath.attached_ports().unwrap(), ports);
        attach_timed(&mut datapath, &ports, "adopted");

        for &(_, vm) in &veths {
            send_frames(vm, 60, 1);
        }
        let mut expected = PortCounters::default();
        add(&mut expected, Hook::FromVm, 60, 1);
        for &port in &ports {
            wait_for_counters(&datapath, port, expected);
        }
    });
}
