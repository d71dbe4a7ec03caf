//! The eBPF datapath on one host, end to end: a real agent in a host
//! namespace plugs VMs (namespaces of the test's own) from goal state, and
//! real tools run between them: ping, iperf3 (TCP and UDP), iputils'
//! arping, hping3, and raw sockets for what no tool sends.
//!
//! - two VMs of a subnet talk (ping, TCP, UDP), and the port counters
//!   (`agentctl dp counters`) say the traffic went through the port
//!   programs and nothing was dropped;
//! - two subnets joined by a router talk both ways, one hop (TTL − 1);
//! - two VPCs with the same CIDR and the same addresses on one host never
//!   meet: ARP for the other VPC's VM is not answered, and each VPC's ARP
//!   answers name its own VM;
//! - a VM that forges its source IP (hping3 --spoof) or MAC (raw socket) is
//!   dropped and counted by reason, and the target never sees the frames,
//!   while the same frame with the VM's own addresses arrives;
//! - an unknown address gets no ARP reply, and nothing is flooded;
//! - the agent killed with SIGKILL and restarted under a 100 pps ping:
//!   not one ping lost.
//!
//! VMs get static addresses (`ip addr add` in their namespace; DHCP has its
//! own tests in dhcp_agent.rs) and IPv6 is off in them, so that only the
//! test's IPv4 is on the wire. Every command is bounded in time.

use std::{net::Ipv4Addr, time::Duration};

use alcor_proto::{
    control::PortPhase,
    schema::{GoalState, OperationStatus, PortState},
};
use alcor_tests::{
    Agent, AgentOptions, Netns,
    agent::json_count as count,
    goalstate::*,
    privileged,
    traffic::{self, Capture, Iperf3Server, PingRun},
    unique_prefix, wait_for,
};
use serde_json::Value;

const GATEWAY_MAC: &str = "fa:16:3e:00:00:01";
/// Bounds every short ping, arping and iperf3 run.
const LIMIT: Duration = Duration::from_secs(20);

/// A VM: its namespace, and the port the agent plugs into it.
struct Vm {
    netns: Netns,
    port_id: String,
    vpc_id: &'static str,
    subnet_id: &'static str,
    ip: &'static str,
    mac: &'static str,
}

impl Vm {
    fn port(&self) -> PortState {
        netns_port(
            &self.port_id,
            self.vpc_id,
            self.subnet_id,
            self.ip,
            self.mac,
            self.netns.name(),
        )
    }

    fn gateway(&self) -> &'static str {
        match self.subnet_id {
            "sn2" => "10.0.2.1",
            _ => "10.0.1.1",
        }
    }

    fn ipv4(&self) -> Ipv4Addr {
        self.ip.parse().unwrap()
    }

    fn ping(&self, target: &str, count: u32) -> traffic::Ping {
        let count = count.to_string();
        traffic::ping(
            &self.netns,
            target,
            &["-c", &count, "-i", "0.05", "-W", "1"],
            LIMIT,
        )
        .unwrap()
    }

    fn arping(&self, target: &str, count: u32) -> Vec<String> {
        traffic::arping(&self.netns, "eth0", target, count, Duration::from_secs(3)).unwrap()
    }
}

/// The network every test pushes: VPC `vpc1` (VNI 100, 10.0.0.0/16) with
/// subnets `sn1` (10.0.1.0/24) and `sn2` (10.0.2.0/24) joined by router
/// `r1`; VPC `vpc2` (VNI 200) with the same CIDR and subnet `vpc2-sn1`
/// (10.0.1.0/24 again); and the VMs' ports.
fn network(vms: &[Vm]) -> GoalState {
    let mut goal_state = v1(
        vec![
            vpc("vpc1", 100, "10.0.0.0/16"),
            vpc("vpc2", 200, "10.0.0.0/16"),
        ],
        vec![
            subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1"),
            subnet("sn2", "vpc1", "10.0.2.0/24", "10.0.2.1"),
            subnet("vpc2-sn1", "vpc2", "10.0.1.0/24", "10.0.1.1"),
        ],
        vms.iter().map(Vm::port).collect(),
    );
    goal_state.router_states = vec![router_joining("r1", &["sn1", "sn2"])];
    goal_state
}

/// A host namespace with a running agent, and VMs plugged by it.
struct Lab {
    // Dropped in this order: the agent (and its pins), the VMs, the host.
    agent: Agent,
    vms: Vec<Vm>,
    _host: Netns,
}

impl Lab {
    /// Starts an agent and plugs `vms` (name, VPC, subnet, IP, MAC): pushes
    /// the network, waits until every port is ready and gives each `eth0`
    /// its address and a default route through its gateway.
    async fn start(
        tag: &str,
        vms: &[(&str, &'static str, &'static str, &'static str, &'static str)],
    ) -> Lab {
        let prefix = unique_prefix(tag);
        // The host namespace keeps IPv6 on: the agent turns it off on the
        // port devices, or the host's kernel would send router
        // solicitations and MLD reports from them into the VMs (the
        // flooding checks below would see them).
        let host = Netns::new(format!("{prefix}-h")).unwrap();
        let vms: Vec<Vm> = vms
            .iter()
            .map(|&(name, vpc_id, subnet_id, ip, mac)| {
                let netns = Netns::new(format!("{prefix}-{name}")).unwrap();
                traffic::disable_ipv6(&netns).unwrap();
                Vm {
                    netns,
                    port_id: format!("{name}-port-0001"),
                    vpc_id,
                    subnet_id,
                    ip,
                    mac,
                }
            })
            .collect();
        let agent = Agent::start(&host, AgentOptions::default()).await;
        let lab = Lab {
            agent,
            vms,
            _host: host,
        };
        lab.push_network().await;
        for vm in &lab.vms {
            let eth0 = vm.netns.link("eth0").unwrap().expect("eth0 in the VM");
            assert_eq!(eth0["mtu"], 1450, "{eth0}");
            traffic::configure(&vm.netns, &format!("{}/24", vm.ip), Some(vm.gateway())).unwrap();
        }
        lab
    }

    /// Pushes the network and waits until every port is ready.
    async fn push_network(&self) {
        let reply = self.agent.push(network(&self.vms)).await;
        assert!(
            reply
                .operation_statuses
                .iter()
                .all(|s| s.operation_status == OperationStatus::Success as i32),
            "{reply:?}"
        );
        let expected = self.vms.len();
        wait_for("every port ready", Duration::from_secs(10), async || {
            let ports = self.agent.ports().await;
            (ports.len() == expected && ports.iter().all(|p| p.phase == PortPhase::Ready as i32))
                .then_some(())
        })
        .await;
    }

    fn vm(&self, name: &str) -> &Vm {
        let port_id = format!("{name}-port-0001");
        self.vms
            .iter()
            .find(|vm| vm.port_id == port_id)
            .unwrap_or_else(|| panic!("no VM {name}"))
    }

    /// The port's datapath counters as an operator reads them:
    /// `agentctl --json dp counters PORT`.
    fn dp_counters(&self, vm: &Vm) -> Value {
        let mut reply = self.agent.agentctl_json(&["dp", "counters", &vm.port_id]);
        let port = reply["ports"][0].take();
        assert_eq!(port["port_id"], vm.port_id.as_str(), "{reply}");
        port
    }

    /// Frames delivered to the VM by its port (`tx_packets`).
    fn delivered(&self, vm: &Vm) -> u64 {
        count(&self.dp_counters(vm)["tx_packets"])
    }

    fn delivered_bytes(&self, vm: &Vm) -> u64 {
        count(&self.dp_counters(vm)["tx_bytes"])
    }

    /// Frames from the VM dropped, by reason (those with none left out).
    fn drops(&self, vm: &Vm) -> Vec<(String, u64)> {
        let counters = self.dp_counters(vm);
        let drops = counters["drops"].as_object().expect("drops by reason");
        drops
            .iter()
            .map(|(reason, n)| (reason.clone(), count(n)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    fn dropped(&self, vm: &Vm, reason: &str) -> u64 {
        let counters = self.dp_counters(vm);
        let n = &counters["drops"][reason];
        assert!(!n.is_null(), "no drop reason {reason}: {counters}");
        count(n)
    }
}

/// A TCP test of `seconds` from `client` to `server`: iperf3 exits 0 and
/// the server received bytes; returns them.
fn tcp(client: &Vm, server: &Vm, port: u16, seconds: u32) -> u64 {
    let _server = Iperf3Server::start(&server.netns, server.ip, port, true).unwrap();
    let seconds = seconds.to_string();
    let report = traffic::iperf3(&client.netns, server.ip, port, &["-t", &seconds], LIMIT)
        .unwrap_or_else(|e| panic!("TCP {} → {}: {e:#}", client.ip, server.ip));
    let received = traffic::tcp_received_bytes(&report);
    assert!(
        received > 0,
        "TCP {} → {}: nothing received: {report}",
        client.ip,
        server.ip
    );
    eprintln!(
        "TCP {} → {}: {received} bytes, {:.2} Gbit/s",
        client.ip,
        server.ip,
        traffic::tcp_received_bps(&report) / 1e9
    );
    received
}

fn mac_of(frame: &[u8]) -> [u8; 6] {
    frame[6..12].try_into().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vms_of_a_subnet_ping_tcp_and_udp() {
    if !privileged("two_vms_of_a_subnet_ping_tcp_and_udp") {
        return;
    }
    let lab = Lab::start(
        "dls",
        &[
            ("a", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:51:0a"),
            ("b", "vpc1", "sn1", "10.0.1.11", "fa:16:3e:00:51:0b"),
        ],
    )
    .await;
    let (a, b) = (lab.vm("a"), lab.vm("b"));

    let ping = a.ping(b.ip, 5);
    assert!(ping.all_answered(), "{}", ping.summary);
    let ping = b.ping(a.ip, 5);
    assert!(ping.all_answered(), "{}", ping.summary);
    let ping = a.ping("10.0.1.1", 3);
    assert!(ping.all_answered(), "the gateway answers: {}", ping.summary);
    // The kernel learnt each address from the datapath's ARP answers.
    assert_eq!(
        traffic::neighbour(&a.netns, b.ip)
            .unwrap()
            .and_then(|n| n.1),
        Some(b.mac.to_string())
    );

    let b_before = lab.delivered_bytes(b);
    let sent = tcp(a, b, 5201, 2);

    let _server = Iperf3Server::start(&b.netns, b.ip, 5202, true).unwrap();
    let report = traffic::iperf3(
        &a.netns,
        b.ip,
        5202,
        &["-u", "-b", "20M", "-l", "1000", "-t", "2"],
        LIMIT,
    )
    .unwrap();
    let (datagrams, received) = traffic::udp_packets(&report);
    eprintln!("UDP: {received} of {datagrams} datagrams received");
    assert!(datagrams > 0 && received > 0, "{report}");

    // It all went through the port programs: B's port delivered the TCP
    // bytes and the datagrams, and nothing was dropped on either port.
    let delivered = lab.delivered_bytes(b) - b_before;
    assert!(
        delivered > sent + received * 1000,
        "B's port delivered {delivered} bytes"
    );
    assert_eq!(lab.drops(a), [], "A's drops");
    assert_eq!(lab.drops(b), [], "B's drops");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_subnets_talk_through_the_router_both_ways() {
    if !privileged("two_subnets_talk_through_the_router_both_ways") {
        return;
    }
    let lab = Lab::start(
        "dlr",
        &[
            ("a", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:52:0a"),
            ("c", "vpc1", "sn2", "10.0.2.20", "fa:16:3e:00:52:0c"),
        ],
    )
    .await;
    let (a, c) = (lab.vm("a"), lab.vm("c"));

    for (from, to) in [(a, c), (c, a)] {
        let ping = traffic::ping(
            &from.netns,
            to.ip,
            &["-c", "5", "-i", "0.05", "-W", "1", "-w", "10"],
            LIMIT,
        )
        .unwrap();
        assert!(
            ping.all_answered(),
            "{} → {}: {}",
            from.ip,
            to.ip,
            ping.summary
        );
        // Each VM's next hop is its gateway, whose MAC the datapath gave.
        assert_eq!(
            traffic::neighbour(&from.netns, from.gateway())
                .unwrap()
                .and_then(|n| n.1),
            Some(GATEWAY_MAC.to_string())
        );
    }
    // One router on the way: the reply's TTL is 64 − 1.
    let output = a
        .netns
        .output("ping", &["-n", "-c", "1", "-W", "2", c.ip])
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("ttl=63"), "{text}");

    let a_to_c = tcp(a, c, 5201, 2);
    let c_to_a = tcp(c, a, 5202, 2);
    assert!(a_to_c > 0 && c_to_a > 0);
    assert_eq!(lab.drops(a), [], "A's drops");
    assert_eq!(lab.drops(c), [], "C's drops");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vpcs_with_the_same_addresses_are_isolated() {
    if !privileged("two_vpcs_with_the_same_addresses_are_isolated") {
        return;
    }
    // A and E have the same address, in two VPCs with the same CIDR; B is
    // only in VPC 1, F only in VPC 2.
    let lab = Lab::start(
        "dli",
        &[
            ("a", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:53:0a"),
            ("b", "vpc1", "sn1", "10.0.1.11", "fa:16:3e:00:53:0b"),
            ("e", "vpc2", "vpc2-sn1", "10.0.1.10", "fa:16:3e:00:53:0e"),
            ("f", "vpc2", "vpc2-sn1", "10.0.1.12", "fa:16:3e:00:53:0f"),
        ],
    )
    .await;
    let [a, b, e, f] = ["a", "b", "e", "f"].map(|name| lab.vm(name));

    // Each VPC works, and 10.0.1.10 is A in VPC 1 and E in VPC 2.
    assert!(b.ping("10.0.1.10", 3).all_answered(), "B → A");
    assert!(f.ping("10.0.1.10", 3).all_answered(), "F → E");
    assert_eq!(b.arping("10.0.1.10", 2), [a.mac, a.mac]);
    assert_eq!(f.arping("10.0.1.10", 2), [e.mac, e.mac]);

    // Across VPCs: no ARP answer, no ping, and nothing reaches the other
    // VPC's VMs.
    let e_unknown = lab.dropped(e, "arp-unknown-target");
    let a_unknown = lab.dropped(a, "arp-unknown-target");
    let captures = [a, b, f].map(|vm| Capture::start(&vm.netns, "eth0").unwrap());
    assert_eq!(e.arping(b.ip, 3), Vec::<String>::new(), "E asks for B");
    assert_eq!(a.arping(f.ip, 3), Vec::<String>::new(), "A asks for F");
    let ping = e.ping(b.ip, 3);
    assert_eq!(ping.received, 0, "E reached B: {}", ping.summary);
    let ping = a.ping(f.ip, 3);
    assert_eq!(ping.received, 0, "A reached F: {}", ping.summary);
    // The kernel never learnt a MAC for them.
    for (vm, ip) in [(e, b.ip), (a, f.ip)] {
        let entry = traffic::neighbour(&vm.netns, ip).unwrap();
        assert!(
            entry.as_ref().is_none_or(|(_, mac)| mac.is_none()),
            "{ip} from {}: {entry:?}",
            vm.ip
        );
    }
    // A and B hear nothing from E, F nothing from A.
    let [seen_a, seen_b, seen_f] = captures.map(|capture| capture.stop().unwrap());
    for (vm, frames, stranger) in [(a, seen_a, e), (b, seen_b, e), (f, seen_f, a)] {
        let stranger_mac = traffic::mac_bytes(stranger.mac).unwrap();
        let heard: Vec<_> = frames
            .iter()
            .filter(|frame| mac_of(frame) == stranger_mac)
            .collect();
        assert!(
            heard.is_empty(),
            "{} of {} heard {} of {}: {heard:?}",
            vm.ip,
            vm.vpc_id,
            stranger.ip,
            stranger.vpc_id
        );
    }
    // Their ARP requests were dropped as asking for unknown addresses.
    for (vm, before) in [(e, e_unknown), (a, a_unknown)] {
        let unknown = lab.dropped(vm, "arp-unknown-target") - before;
        assert!(
            unknown >= 3,
            "ARP requests from {} of {} dropped as unknown: {unknown}",
            vm.ip,
            vm.vpc_id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_sources_are_dropped_counted_and_never_delivered() {
    if !privileged("forged_sources_are_dropped_counted_and_never_delivered") {
        return;
    }
    alcor_tests::dhcp::require("hping3", "hping3").unwrap();
    let lab = Lab::start(
        "dlf",
        &[
            ("a", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:54:0a"),
            ("b", "vpc1", "sn1", "10.0.1.11", "fa:16:3e:00:54:0b"),
            ("c", "vpc1", "sn1", "10.0.1.12", "fa:16:3e:00:54:0c"),
        ],
    )
    .await;
    let [a, b, c] = ["a", "b", "c"].map(|name| lab.vm(name));
    // A knows B's MAC before it starts forging.
    assert!(a.ping(b.ip, 1).all_answered());

    let spoofed_ip_before = lab.dropped(a, "spoofed-ip");
    let spoofed_mac_before = lab.dropped(a, "spoofed-mac");
    let b_before = lab.delivered(b);
    let capture = Capture::start(&b.netns, "eth0").unwrap();

    // A pretends to be C: UDP datagrams with C's address, by hping3.
    const FORGED: usize = 5;
    let output = a
        .netns
        .output(
            "timeout",
            &[
                "-s", "KILL", "10", "hping3", "--udp", "-c", "5", "-i", "u20000", "--spoof", c.ip,
                "-p", "7777", b.ip,
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains(&format!("{FORGED} packets transmitted")),
        "hping3: {text}"
    );
    // A forged MAC with A's own address, then A's true addresses (which
    // must arrive: the raw socket and the capture work), by raw socket.
    let [a_mac, b_mac] = [a.mac, b.mac].map(|mac| traffic::mac_bytes(mac).unwrap());
    let forged_mac = [0x02, 0, 0, 0, 0x66, 0x66];
    let frame = |src_mac| {
        traffic::udp_frame(
            (src_mac, b_mac),
            (a.ipv4(), b.ipv4()),
            (4444, 7777),
            b"alcor datapath test",
        )
    };
    traffic::send_frames(&a.netns, "eth0", &frame(forged_mac), FORGED).unwrap();
    const GENUINE: usize = 3;
    traffic::send_frames(&a.netns, "eth0", &frame(a_mac), GENUINE).unwrap();

    wait_for("the genuine frames", Duration::from_secs(5), async || {
        (lab.delivered(b) - b_before >= GENUINE as u64).then_some(())
    })
    .await;
    // Forged frames would have come before the genuine ones: give them a
    // moment anyway.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let frames = capture.stop().unwrap();
    let b_after = lab.delivered(b);

    let udp_to_b: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|frame| traffic::ipv4_addresses(frame).is_some_and(|(_, dst)| dst == b.ipv4()))
        .collect();
    let from_c = udp_to_b
        .iter()
        .filter(|frame| traffic::ipv4_addresses(frame).is_some_and(|(src, _)| src == c.ipv4()))
        .count();
    let from_forged_mac = frames.iter().filter(|f| mac_of(f) == forged_mac).count();
    assert_eq!(from_c, 0, "B received datagrams forged with C's address");
    assert_eq!(from_forged_mac, 0, "B received frames with a forged MAC");
    assert_eq!(
        udp_to_b.len(),
        GENUINE,
        "B received exactly the genuine frames"
    );
    assert_eq!(
        b_after - b_before,
        GENUINE as u64,
        "B's port delivered the genuine frames only"
    );

    let spoofed_ip = lab.dropped(a, "spoofed-ip") - spoofed_ip_before;
    let spoofed_mac = lab.dropped(a, "spoofed-mac") - spoofed_mac_before;
    assert_eq!(spoofed_ip, FORGED as u64, "{:?}", lab.drops(a));
    assert_eq!(spoofed_mac, FORGED as u64, "{:?}", lab.drops(a));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_address_gets_no_arp_reply_and_nothing_is_flooded() {
    if !privileged("an_unknown_address_gets_no_arp_reply_and_nothing_is_flooded") {
        return;
    }
    let lab = Lab::start(
        "dlu",
        &[
            ("a", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:55:0a"),
            ("b", "vpc1", "sn1", "10.0.1.11", "fa:16:3e:00:55:0b"),
        ],
    )
    .await;
    let (a, b) = (lab.vm("a"), lab.vm("b"));

    // The gateway and B are answered in place, with their MACs.
    assert_eq!(a.arping("10.0.1.1", 2), [GATEWAY_MAC, GATEWAY_MAC]);
    assert_eq!(a.arping(b.ip, 2), [b.mac, b.mac]);

    let unknown_before = lab.dropped(a, "arp-unknown-target");
    let b_before = lab.delivered(b);
    let capture = Capture::start(&b.netns, "eth0").unwrap();
    const UNKNOWN: &str = "10.0.1.99";
    assert_eq!(a.arping(UNKNOWN, 3), Vec::<String>::new());
    let ping = a.ping(UNKNOWN, 2);
    assert_eq!(ping.received, 0, "{}", ping.summary);
    let entry = traffic::neighbour(&a.netns, UNKNOWN).unwrap();
    assert!(
        entry.as_ref().is_none_or(|(_, mac)| mac.is_none()),
        "{entry:?}"
    );
    let frames = capture.stop().unwrap();
    assert!(frames.is_empty(), "flooded to B: {frames:?}");
    assert_eq!(lab.delivered(b), b_before, "B's port delivered nothing");
    // 3 by arping, and the kernel's own for the ping (3 by default).
    let unknown = lab.dropped(a, "arp-unknown-target") - unknown_before;
    assert!(unknown >= 4, "ARP requests dropped as unknown: {unknown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_and_restarted_under_a_100_pps_ping_loses_nothing() {
    if !privileged("agent_killed_and_restarted_under_a_100_pps_ping_loses_nothing") {
        return;
    }
    let mut lab = Lab::start(
        "dlh",
        &[
            ("a", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:56:0a"),
            ("b", "vpc1", "sn1", "10.0.1.11", "fa:16:3e:00:56:0b"),
        ],
    )
    .await;
    // Borrowed field by field: the agent is killed and restarted meanwhile.
    let (a, b) = (&lab.vms[0], &lab.vms[1]);
    assert!(a.ping(b.ip, 1).all_answered());

    // 600 pings 10 ms apart (6 s), each given 1 s to be answered.
    const COUNT: u32 = 600;
    let mut pinging = PingRun::start(
        &a.netns,
        b.ip,
        &[
            "-c",
            &COUNT.to_string(),
            "-i",
            "0.01",
            "-W",
            "1",
            "-w",
            "30",
        ],
        Duration::from_secs(40),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = lab.agent.pid().expect("the agent runs");
    lab.agent.kill();
    eprintln!("agent {pid} killed (SIGKILL)");
    // Forwarding goes on without any agent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lab.agent.restart().await;
    // The restarted agent adopts the ports and resyncs the pinned maps,
    // and the controller pushes the same state again.
    lab.push_network().await;
    assert!(
        pinging.is_running(),
        "the restart must happen while the ping runs"
    );
    eprintln!("agent restarted as {:?}", lab.agent.pid());

    let ping = pinging.finish().unwrap();
    assert_eq!(ping.transmitted, COUNT, "{}", ping.summary);
    assert_eq!(
        ping.received, COUNT,
        "pings lost across the restart: {}",
        ping.summary
    );
    assert!(a.ping(b.ip, 3).all_answered());
}
