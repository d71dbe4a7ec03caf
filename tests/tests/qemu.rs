//! The real-guest harness on its own, without the agent: a QEMU guest under
//! TCG in a "host" namespace, its tap in a Linux bridge there together with
//! a veth to a "peer" namespace, where dnsmasq serves DHCP and an iperf3
//! server listens. The guest leases with stock udhcpc and its stock script
//! (MTU 1450 from option 26), then moves TCP both ways; the tap's counters
//! show that TCP reaches the guest in GSO packets, not in frames of the
//! MTU. Each step prints how long it took.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use alcor_tests::{
    Netns,
    dhcp::require,
    guest::{Direction, Guest},
    privileged,
    traffic::Iperf3Server,
    unique_prefix,
};

const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const TAP: &str = "tapguest0";
const MAC: &str = "fa:16:3e:00:50:01";
const IPERF3_PORT: u16 = 5201;

/// dnsmasq serving 10.0.1.100-150 on the peer's eth0, killed on drop.
struct Dnsmasq {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start(peer: &Netns) -> Dnsmasq {
        require("dnsmasq", "dnsmasq-base").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("alcor-dnsmasq-")
            .tempdir()
            .unwrap();
        let file = |name: &str| dir.path().join(name).display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", peer.name(), "dnsmasq", "--no-daemon"])
            .args(["--conf-file=/dev/null", "--port=0", "--no-ping"])
            .args(["--interface=eth0", "--bind-interfaces"])
            .arg("--dhcp-range=10.0.1.100,10.0.1.150,255.255.255.0,1h")
            .arg(format!("--dhcp-option=option:router,{PEER_IP}"))
            // busybox's udhcpc does not ask for option 26 (its default
            // list is 1, 3, 6, 12, 15, 28, 42): it must come unasked.
            .arg("--dhcp-option-force=option:mtu,1450")
            .arg(format!("--dhcp-leasefile={}", file("leases")))
            .arg(format!("--pid-file={}", file("pid")))
            .args(["--user=root", "--group=root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut dnsmasq = Dnsmasq { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while peer
            .exec("ss", &["-Hlun", "sport = :67"])
            .unwrap()
            .trim()
            .is_empty()
        {
            assert!(
                dnsmasq.child.try_wait().unwrap().is_none(),
                "dnsmasq exited"
            );
            assert!(Instant::now() < deadline, "dnsmasq does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        dnsmasq
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_guest_leases_with_stock_udhcpc_and_moves_tcp_both_ways_in_gso_packets() {
    if !privileged("a_guest_leases_with_stock_udhcpc_and_moves_tcp_both_ways_in_gso_packets") {
        return;
    }
    let prefix = unique_prefix("qg");
    let host = Netns::new(format!("{prefix}-host")).unwrap();
    let peer = Netns::new(format!("{prefix}-peer")).unwrap();
    host.exec("ip", &["link", "add", "br0", "type", "bridge"])
        .unwrap();
    host.exec("ip", &["link", "set", "br0", "up"]).unwrap();
    host.exec(
        "ip",
        &[
            "link",
            "add",
            "to-peer",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ],
    )
    .unwrap();
    host.exec("ip", &["link", "set", "to-peer", "master", "br0", "up"])
        .unwrap();
    peer.exec("ip", &["addr", "add", "10.0.1.1/24", "dev", "eth0"])
        .unwrap();
    peer.exec("ip", &["link", "set", "eth0", "up"]).unwrap();
    let _dnsmasq = Dnsmasq::start(&peer);

    let mut guest = Guest::boot(&host, TAP, MAC).unwrap();
    println!("boot (TCG): {:.1} s", guest.boot_time().as_secs_f64());
    // QEMU made the tap; plugging it is the host's business, here a bridge.
    host.exec("ip", &["link", "set", guest.tap(), "master", "br0", "up"])
        .unwrap();

    let started = Instant::now();
    let eth0 = guest.udhcpc().unwrap();
    println!(
        "lease: {:.1} s, eth0 {eth0:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        eth0.addresses.len() == 1
            && eth0.addresses[0].starts_with("10.0.1.")
            && eth0.addresses[0].ends_with("/24"),
        "{eth0:?}"
    );
    assert_eq!(eth0.mtu, 1450, "the MTU of option 26, by the stock script");
    assert!(
        eth0.has_route(&format!("default via {PEER_IP}")),
        "{eth0:?}"
    );
    // Bound, udhcpc went on in the background to renew, as on a machine.
    guest
        .exec("kill -0 $(cat /run/udhcpc.eth0.pid)")
        .expect("udhcpc runs on");

    for direction in [Direction::ToGuest, Direction::FromGuest] {
        let _server = Iperf3Server::start(&peer, &PEER_IP.to_string(), IPERF3_PORT, true).unwrap();
        let before = guest.tap_counters().unwrap();
        let started = Instant::now();
        let transfer = guest
            .iperf3(PEER_IP, IPERF3_PORT, direction, Duration::from_secs(3))
            .unwrap();
        let tap = guest.tap_counters().unwrap().since(&before);
        println!(
            "{direction:?}: {:.2} Gbit/s, {} MB in {:.1} s; tap: to the guest {} packets \
             of {} bytes on average, from it {} of {}",
            transfer.bits_per_second / 1e9,
            transfer.bytes / 1_000_000,
            started.elapsed().as_secs_f64(),
            tap.tx_packets,
            tap.average_tx_size(),
            tap.rx_packets,
            tap.average_rx_size(),
        );
        assert!(transfer.bytes > 0, "{direction:?}: nothing moved");
        assert_eq!(tap.tx_dropped, 0, "{direction:?}: the tap dropped packets");
        if direction == Direction::ToGuest {
            // TSO packets of the peer cross veth and bridge whole, and the
            // tap hands them to a guest that negotiated TSO.
            assert!(
                tap.average_tx_size() > 1514,
                "the guest got frames of the MTU, not GSO packets: {tap:?}"
            );
        }
    }
}

#[test]
fn the_guest_shell_gives_status_and_output_and_survives_errors_and_overruns() {
    if !privileged("the_guest_shell_gives_status_and_output_and_survives_errors_and_overruns") {
        return;
    }
    let host = Netns::new(format!("{}-host", unique_prefix("qs"))).unwrap();
    let mut guest = Guest::boot(&host, TAP, MAC).unwrap();
    assert_eq!(
        guest
            .run("printf '%s\\n' \"it's\" $((6 * 7)); exit 3")
            .unwrap(),
        (3, "it's\n42\n".to_string())
    );
    assert_eq!(guest.exec("echo to stderr >&2").unwrap(), "to stderr\n");
    // A syntax error ends the command's shell, not the one reading.
    let (status, output) = guest.run("if then").unwrap();
    assert!(status != 0 && output.contains("syntax error"), "{output}");
    // A command that overruns its limit is killed; the next one runs.
    let started = Instant::now();
    let (status, output) = guest
        .run_within("echo early; sleep 5; echo late", Duration::from_secs(1))
        .unwrap();
    assert!(
        status == 137 && output.starts_with("early\n") && !output.contains("late"),
        "{status} {output:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(guest.exec("echo next").unwrap(), "next\n");
    assert!(
        guest.run("echo $((1 + 1)) \u{7}").is_err(),
        "a control character"
    );
}
