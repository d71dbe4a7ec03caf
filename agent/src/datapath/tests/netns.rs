//! VMs on one host: each VM is a network namespace of the test's own with
//! one end of a veth as `eth0`; the other end is a port device in the
//! host namespace (itself private to the test), where the datapath runs.
//! Real ping and TCP between them, in a subnet (`bpf_redirect_peer`) and
//! across subnets through the router, with a tap-like port reached by plain
//! redirect; and what must not pass: another VPC, a forged source.

use std::{
    fs::File,
    io::{self, Read, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Command, Output},
    thread,
    time::Duration,
};

use nix::sched::{CloneFlags, unshare};
use rtnetlink::LinkUnspec;

use super::{
    super::*,
    Netlink, PinDir, in_new_netns, privileged,
    programs::{GW1_MAC, VNI1, VNI2, model, port},
};
use crate::core::model::Mac;

/// A network namespace held by a descriptor only: no name, no process; it
/// goes away with the descriptor (and the devices in it with it).
pub(super) struct Vm {
    pub(super) netns: OwnedFd,
}

impl Vm {
    pub(super) fn new() -> Self {
        let netns = thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            OwnedFd::from(File::open("/proc/thread-self/ns/net").unwrap())
        })
        .join()
        .unwrap();
        Vm { netns }
    }

    /// `program args...` inside the VM.
    pub(super) fn command(&self, program: &str, args: &[&str]) -> Command {
        let fd = self.netns.as_raw_fd();
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: setns(2) is async-signal-safe; `fd` outlives the spawn.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command
    }

    pub(super) fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args).output().unwrap()
    }

    pub(super) fn run(&self, program: &str, args: &[&str]) {
        let output = self.output(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Moves device `name` (`ifindex`) into the VM as `eth0` with `mac` and
    /// `address`, up, with a default route through `gateway`.
    pub(super) fn plug(
        &self,
        netlink: &Netlink,
        (ifindex, name): (u32, &str),
        mac: Mac,
        address: &str,
        gateway: &str,
    ) {
        let moved = LinkUnspec::new_with_index(ifindex)
            .setns_by_fd(self.netns.as_raw_fd())
            .build();
        netlink
            .runtime
            .block_on(netlink.handle.link().set(moved).execute())
            .unwrap();
        self.run("ip", &["link", "set", "dev", name, "name", "eth0"]);
        self.run(
            "ip",
            &["link", "set", "dev", "eth0", "address", &mac.to_string()],
        );
        // Only our IPv4 on the wire.
        self.run(
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6"],
        );
        self.run("ip", &["addr", "add", address, "dev", "eth0"]);
        self.run("ip", &["link", "set", "dev", "eth0", "up"]);
        self.run("ip", &["route", "add", "default", "via", gateway]);
    }

    /// Whether `count` pings to `target` are all answered (bounded: at most
    /// about 2 s more than the pings themselves).
    pub(super) fn ping(&self, target: &str, extra: &[&str]) -> bool {
        let mut args = vec!["-c", "3", "-i", "0.2", "-W", "2", "-n", "-q"];
        args.extend(extra);
        args.push(target);
        self.output("ping", &args).status.success()
    }

    /// Runs `f` on a thread inside the VM.
    pub(super) fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let netns = self.netns.try_clone().unwrap();
        thread::spawn(move || {
            nix::sched::setns(&netns, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

/// Sends `len` bytes over TCP from `client` to `server` listening on
/// `address`; returns what the server received. Bounded by timeouts.
pub(super) fn tcp_transfer(client: &Vm, server: &Vm, address: &str, len: usize) -> usize {
    let address: SocketAddr = address.parse().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = server.spawn(move || {
        let listener = TcpListener::bind(address).unwrap();
        ready_tx.send(()).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut received = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return received,
                Ok(n) => received += n,
                Err(e) => panic!("receiving: {e} after {received} bytes"),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the server listens");
    let sender = client.spawn(move || {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            let n = chunk.len().min(len - sent);
            stream.write_all(&chunk[..n]).unwrap();
            sent += n;
        }
    });
    sender.join().unwrap();
    receiver.join().unwrap()
}

/// Connects over TCP to `target` with a TTL of 1 from inside `vm`: returns
/// the connect error and the ICMP messages a raw socket saw meanwhile (each
/// with its IPv4 header).
fn tcp_connect_with_ttl_1(vm: &Vm, target: &str) -> (io::Error, Vec<Vec<u8>>) {
    let target: SocketAddr = target.parse().unwrap();
    vm.spawn(move || {
        // SAFETY (all): plain socket calls on descriptors owned here, with
        // buffers and sizes that match.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(raw >= 0, "{}", io::Error::last_os_error());
        let raw = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        unsafe {
            libc::setsockopt(
                raw.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let tcp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(tcp >= 0, "{}", io::Error::last_os_error());
        let tcp = unsafe { OwnedFd::from_raw_fd(tcp) };
        let ttl: libc::c_int = 1;
        // connect(2) gives up after SO_SNDTIMEO.
        let connect_timeout = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        let SocketAddr::V4(target) = target else {
            unreachable!()
        };
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: target.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(target.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let connected = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_TTL,
                (&raw const ttl).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const connect_timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            );
            libc::connect(
                tcp.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_ne!(connected, 0, "a TTL of 1 cannot cross the router");
        let error = io::Error::last_os_error();
        let mut messages = Vec::new();
        for _ in 0..5 {
            let mut buf = [0u8; 1500];
            let n = unsafe { libc::recv(raw.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            messages.push(buf[..n as usize].to_vec());
        }
        (error, messages)
    })
    .join()
    .unwrap()
}

const A_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x0a]);
const B_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x0b]);
const C_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x0c]);
const E_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x10, 0x0e]);

#[test]
fn vms_talk_through_the_datapath_and_nothing_else_does() {
    if !privileged() {
        return;
    }
    in_new_netns(|| {
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let [a, b, c, e] = ["a", "b", "c", "e"]
            .map(|name| netlink.add_veth(&format!("port-{name}"), &format!("vm-{name}"), None));
        let [vm_a, vm_b, vm_c, vm_e] = [(); 4].map(|()| Vm::new());
        vm_a.plug(&netlink, (a.1, "vm-a"), A_MAC, "10.0.1.10/24", "10.0.1.1");
        vm_b.plug(&netlink, (b.1, "vm-b"), B_MAC, "10.0.1.11/24", "10.0.1.1");
        vm_c.plug(&netlink, (c.1, "vm-c"), C_MAC, "10.0.2.20/24", "10.0.2.1");
        // In another VPC, with A's address.
        vm_e.plug(&netlink, (e.1, "vm-e"), E_MAC, "10.0.1.10/24", "10.0.1.1");

        let mut datapath = Datapath::open(&pins.0).unwrap();
        for (port, _) in [a, b, c, e] {
            datapath.attach_port(port).unwrap();
        }
        // C is reached by plain redirect to its device's egress, as a tap.
        let model = model(vec![
            port(a.0, VNI1, A_MAC, "10.0.1.10", Redirect::Peer),
            port(b.0, VNI1, B_MAC, "10.0.1.11", Redirect::Peer),
            port(c.0, VNI1, C_MAC, "10.0.2.20", Redirect::Egress),
            port(e.0, VNI2, E_MAC, "10.0.1.10", Redirect::Peer),
        ]);
        datapath.sync(&model).unwrap();

        // In the subnet, by redirect to peer; the gateway answers itself.
        assert!(vm_a.ping("10.0.1.11", &[]), "A → B");
        assert!(vm_a.ping("10.0.1.1", &[]), "A → gateway");
        // Across subnets through the router, to and from the tap-like port.
        assert!(vm_a.ping("10.0.2.20", &[]), "A → C (routed)");
        assert!(vm_c.ping("10.0.1.11", &[]), "C → B (routed)");
        // TTL 1 across the router: time exceeded from the gateway.
        let traced = vm_a.output(
            "ping",
            &["-c", "1", "-W", "2", "-n", "-t", "1", "10.0.2.20"],
        );
        let text = String::from_utf8_lossy(&traced.stdout);
        assert!(
            text.contains("From 10.0.1.1") && text.contains("Time to live exceeded"),
            "{text}"
        );

        // The same for TCP, whose SYN leaves the VM with its checksum left
        // to offload (CHECKSUM_PARTIAL): the error quotes its IP header and
        // at least 8 bytes, and the connect fails at once.
        let (error, messages) = tcp_connect_with_ttl_1(&vm_a, "10.0.2.20:5003");
        assert_eq!(error.raw_os_error(), Some(libc::EHOSTUNREACH), "{error}");
        let exceeded = messages
            .iter()
            .find(|m| m.len() > 28 && m[20] == 11)
            .unwrap_or_else(|| panic!("no time exceeded among {messages:?}"));
        let quote = &exceeded[28..];
        let _ = writeln!(
            io::stderr(),
            "TCP SYN time exceeded quotes {} bytes",
            quote.len()
        );
        assert!(matches!(quote.len(), 28 | 40), "{exceeded:?}");
        assert_eq!(
            crate::packet::checksum(&[&exceeded[20..]]),
            0,
            "ICMP checksum as it reached the VM"
        );
        assert_eq!(quote[9], 6, "the quote is the SYN's IPv4 header");
        assert_eq!(quote[16..20], [10, 0, 2, 20]);

        const LEN: usize = 8 << 20;
        assert_eq!(tcp_transfer(&vm_a, &vm_b, "10.0.1.11:5001", LEN), LEN);
        assert_eq!(tcp_transfer(&vm_b, &vm_c, "10.0.2.20:5002", LEN), LEN);

        let stats = |port: u32| datapath.reader().unwrap().port_stats(port).unwrap();
        // B got A's transfer without its egress seeing it; C's deliveries
        // passed its egress.
        assert!(stats(b.0).traffic.tx_bytes > LEN as u64, "{:?}", stats(b.0));
        assert!(stats(c.0).traffic.tx_bytes > LEN as u64, "{:?}", stats(c.0));
        assert!(stats(a.0).traffic.rx_bytes > LEN as u64, "{:?}", stats(a.0));
        // Nothing dropped but the packets whose TTL ran out (the ping, the
        // SYN and whatever SYNs TCP sent again before the error came back).
        let dropped = drops_by_reason(&stats(a.0));
        assert!(
            matches!(dropped[..], [(DropReason::TtlExceeded, n)] if n >= 2),
            "{dropped:?}"
        );
        for port in [b.0, c.0] {
            assert_eq!(drops_by_reason(&stats(port)), [], "port {port}");
        }

        // A new agent takes over while A pings B every 10 ms: it adopts
        // the pinned maps, replaces the programs in place and resyncs
        // without a write; not one ping is lost.
        let pinging = vm_a
            .command(
                "ping",
                &[
                    "-c",
                    "100",
                    "-i",
                    "0.01",
                    "-W",
                    "1",
                    "-w",
                    "10",
                    "-n",
                    "-q",
                    "10.0.1.11",
                ],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_millis(200));
        drop(datapath);
        thread::sleep(Duration::from_millis(100));
        let mut datapath = Datapath::open(&pins.0).unwrap();
        for (port, _) in [a, b, c, e] {
            datapath.attach_port(port).unwrap();
        }
        let resync = datapath.sync(&model).unwrap();
        assert_eq!(resync.changes(), 0, "{resync:?}");
        let pinged = pinging.wait_with_output().unwrap();
        let summary = String::from_utf8_lossy(&pinged.stdout);
        assert!(
            summary.contains("100 packets transmitted, 100 received"),
            "{summary}"
        );
        let stats = |port: u32| datapath.reader().unwrap().port_stats(port).unwrap();

        // Another VPC with the same addresses: no ARP answer for B's
        // address, so no ping.
        assert!(!vm_e.ping("10.0.1.11", &[]), "E must not reach VPC 1");
        let dropped = drops_by_reason(&stats(e.0));
        assert!(
            dropped
                .iter()
                .any(|&(reason, n)| reason == DropReason::ArpUnknownTarget && n > 0),
            "{dropped:?}"
        );
        // A forged source: an address A does not own.
        vm_a.run("ip", &["addr", "add", "10.0.1.99/24", "dev", "eth0"]);
        assert!(!vm_a.ping("10.0.1.11", &["-I", "10.0.1.99"]), "forged");
        let dropped = drops_by_reason(&stats(a.0));
        assert!(
            dropped
                .iter()
                .any(|&(reason, n)| reason == DropReason::SpoofedIp && n >= 3),
            "{dropped:?}"
        );
        // The gateway's MAC as A learnt it.
        let neighbors = vm_a.output("ip", &["neigh", "show", "10.0.1.1"]);
        let neighbors = String::from_utf8_lossy(&neighbors.stdout);
        assert!(neighbors.contains(&GW1_MAC.to_string()), "{neighbors}");
    });
}
