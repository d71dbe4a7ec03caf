//! Guests as they really are, on two hosts over a fabric of ordinary
//! 1500-byte frames (so that the VMs' MTU is 1450), a real agent on each:
//!
//! - stock busybox udhcpc (its default request list, which has no MTU, and
//!   Debian's default script) gets MTU 1450, and TCP flows across hosts
//!   both ways;
//! - a guest left at MTU 1500 without DHCP (a static address) still moves
//!   TCP across hosts, in its subnet and routed: its too-big segments get
//!   ICMP "fragmentation needed" from the gateway, its path MTU discovery
//!   settles on 1450; the port counts them, and `agentctl trace` explains
//!   it;
//! - a too-big packet that may be fragmented (DF clear) arrives whole: the
//!   VXLAN device of the sending host fragments the outer packet, the
//!   other host reassembles it and its `vxlan_in` delivers it;
//! - a flood of oversized DF frames gets no more ICMP errors than the
//!   port's rate limit allows;
//! - a real guest: a QEMU VM under TCG (Debian's kernel, a busybox
//!   initramfs, virtio-net with QEMU's default offloads) on a tap QEMU
//!   creates, adopted by the agent, leases with stock udhcpc, ends at MTU
//!   1450 and moves TCP both ways to a VM on its host and on the other
//!   one; what it receives from the other host comes in packets as large
//!   as from its own host (counted on the tap).
//!
//! The cases share one topology (see `alcor_tests::suite`) and run in this
//! order. IPv6 is off in the VMs.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    time::{Duration, Instant},
};

use alcor_proto::{control::PortPhase, schema::GoalState};
use alcor_tests::{
    Agent,
    agent::json_count as count,
    cases,
    dhcp::{output_within, udhcpc_stock},
    goalstate::*,
    guest::{Direction, Guest},
    lab::{self, Vm},
    suite::{self, CaseFn},
    topology::Topology,
    traffic::{self, Iperf3Server},
    unique_prefix, wait_for,
};
use serde_json::Value;

/// (host, underlay address) of the hosts.
const HOSTS: &[(&str, &str)] = &[("h1", "198.18.0.1/24"), ("h2", "198.18.0.2/24")];
const VPC: (&str, u32) = ("vpc1", 100);
const SN1_GATEWAY_MAC: &str = "fa:16:3e:00:00:01";
const SN2_GATEWAY_MAC: &str = "fa:16:3e:00:00:02";
/// The VMs' MTU: the fabric's 1500 minus VXLAN's 50.
const PORT_MTU: u64 = 1450;
/// Bounds every ping and iperf3 run.
const LIMIT: Duration = Duration::from_secs(30);

/// (name, host, VPC, subnet, IP, MAC) of each VM.
const VMS: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("a", "h1", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:71:0a"),
    ("b", "h2", "vpc1", "sn1", "10.0.1.20", "fa:16:3e:00:71:0b"),
    ("s", "h1", "vpc1", "sn1", "10.0.1.11", "fa:16:3e:00:71:11"),
    ("t", "h2", "vpc1", "sn1", "10.0.1.21", "fa:16:3e:00:71:21"),
    ("u", "h2", "vpc1", "sn2", "10.0.2.30", "fa:16:3e:00:71:30"),
];
/// The VMs that run stock udhcpc; the others have a static address and
/// MTU 1500, as a guest that ignores DHCP would.
const DHCP_VMS: &[&str] = &["a", "b"];

const CASES: &[(&str, CaseFn<Lab>)] = &cases![
    stock_udhcpc_gets_mtu_1450_and_tcp_flows_across_hosts_both_ways,
    too_big_packets_that_may_be_fragmented_arrive_whole_across_hosts,
    a_guest_at_mtu_1500_learns_the_path_mtu_and_tcp_flows_across_hosts_and_routed,
    agentctl_trace_explains_what_a_guest_at_mtu_1500_meets,
    a_flood_of_oversized_frames_gets_no_more_icmp_than_the_rate_limit,
    a_real_guest_on_a_hypervisor_tap_leases_and_gets_large_packets_from_both_hosts,
];

/// The QEMU guest: a tap port of h1 in subnet 1 (the tap is `tap` and the
/// port id's first 11 characters, as Nova names it).
const QEMU: (&str, &str, &str) = ("port-qemu", "10.0.1.12", "fa:16:3e:00:71:12");

fn main() -> ExitCode {
    suite::run("guests", Lab::start, CASES)
}

/// The MTU of `vm`'s eth0.
fn mtu(vm: &Vm) -> u64 {
    vm.netns
        .exec("cat", &["/sys/class/net/eth0/mtu"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Two hosts with an agent each and the VMs, addressed.
struct Lab {
    // Dropped in this order: the agents, the VMs, the hosts and fabric.
    agents: BTreeMap<&'static str, Agent>,
    vms: Vec<Vm>,
    topology: Topology,
}

impl Lab {
    async fn start() -> Lab {
        let prefix = unique_prefix("gu");
        let mut topology = Topology::new(&prefix).unwrap();
        for (name, address) in HOSTS {
            topology.add_host(name, address).unwrap();
        }
        let vms = VMS
            .iter()
            .map(|&vm| Vm::new(&prefix, vm).unwrap())
            .collect();
        // A veth underlay: native XDP on it would make the fabric segment
        // every GSO packet before it (see the README), and no large packet
        // would reach a guest from another host.
        let agents = lab::start_agents(&topology, &["h1", "h2"], &["--underlay-xdp", "off"]).await;
        let lab = Lab {
            agents,
            vms,
            topology,
        };
        for (host, _) in HOSTS {
            lab.push(host).await;
        }
        lab.address();
        lab
    }

    fn vm(&self, name: &str) -> &Vm {
        lab::find(&self.vms, name)
    }

    /// The goal state of `host`: the VPC, its subnets joined by router r1,
    /// the host's ports and DHCP entries, and the other host's VMs as
    /// neighbors (L3 where this host has no VM in their subnet); with
    /// `qemu`, the QEMU guest's tap port on h1 too.
    fn goal_state(&self, host: &str, qemu: bool) -> GoalState {
        let mut network = v1(
            vec![vpc(VPC.0, VPC.1, "10.0.0.0/16")],
            vec![
                with_gateway_mac(
                    subnet("sn1", VPC.0, "10.0.1.0/24", "10.0.1.1"),
                    SN1_GATEWAY_MAC,
                ),
                with_gateway_mac(
                    subnet("sn2", VPC.0, "10.0.2.0/24", "10.0.2.1"),
                    SN2_GATEWAY_MAC,
                ),
            ],
            vec![],
        );
        network.router_states = vec![router_joining("r1", &["sn1", "sn2"])];
        let (qemu_port, qemu_ip, qemu_mac) = QEMU;
        if qemu && host == "h1" {
            network
                .port_states
                .push(tap_port(qemu_port, VPC.0, "sn1", qemu_ip, qemu_mac));
            network
                .dhcp_states
                .push(dhcp_entry("dhcp-qemu", "sn1", qemu_mac, qemu_ip, "vm-qemu"));
        }
        if qemu && host == "h2" {
            let h1 = self.topology.host("h1").underlay_ip().to_string();
            network.neighbor_states.push(neighbor(
                "neighbor-qemu",
                VPC.0,
                "sn1",
                qemu_ip,
                qemu_mac,
                &h1,
            ));
        }
        lab::goal_state_for(host, network, &self.vms, &self.topology)
    }

    /// Pushes `host`'s goal state and waits until its ports are ready.
    async fn push(&self, host: &str) {
        let ports = self.vms.iter().filter(|vm| vm.host == host).count();
        let message = self.goal_state(host, false);
        lab::push_until_ready(&self.agents[host], host, message, ports).await;
    }

    /// DHCP VMs run stock udhcpc with eth0 at 1500 (the MTU can only come
    /// from the agent); static ones get their address and MTU 1500.
    fn address(&self) {
        std::thread::scope(|scope| {
            for vm in &self.vms {
                scope.spawn(move || {
                    vm.netns
                        .exec("ip", &["link", "set", "eth0", "mtu", "1500"])
                        .unwrap();
                    if DHCP_VMS.contains(&vm.name) {
                        assert!(
                            udhcpc_stock(&vm.netns, 10).unwrap(),
                            "VM {} got no lease from the agent of {}",
                            vm.name,
                            vm.host
                        );
                    } else {
                        let gateway = vm.gateway().to_string();
                        traffic::configure(&vm.netns, &format!("{}/24", vm.ip), Some(&gateway))
                            .unwrap();
                    }
                });
            }
        });
    }

    /// The datapath counters of `vm`'s port.
    fn port_counters(&self, vm: &Vm) -> Value {
        let mut reply = self.agents[vm.host].agentctl_json(&["dp", "counters", &vm.port_id()]);
        reply["ports"][0].take()
    }

    fn dropped(&self, vm: &Vm, reason: &str) -> u64 {
        count(&self.port_counters(vm)["drops"][reason])
    }

    /// A host-wide tunnel counter (`agentctl dp tunnels`).
    fn tunnels(&self, host: &str, counter: &str) -> u64 {
        count(&self.agents[host].agentctl_json(&["dp", "tunnels"])[counter])
    }
}

/// Bytes TCP moves from `client` to `server` (`-R`: the other way) in an
/// iperf3 run of 2 s.
fn tcp_bytes(client: &Vm, server: &Vm, port: u16, reverse: bool) -> u64 {
    let _server = Iperf3Server::start(&server.netns, server.ip, port, true).unwrap();
    let mut args = vec!["-t", "2"];
    if reverse {
        args.push("-R");
    }
    let report = traffic::iperf3(&client.netns, server.ip, port, &args, LIMIT)
        .unwrap_or_else(|e| panic!("iperf3 {} -> {}: {e:#}", client.name, server.name));
    traffic::tcp_received_bytes(&report)
}

/// A real flow, not a few segments before a stall: 2 s of TCP between
/// namespaces moves hundreds of megabytes; a black hole moves less than a
/// window.
const FLOWING: u64 = 16 << 20;

async fn stock_udhcpc_gets_mtu_1450_and_tcp_flows_across_hosts_both_ways(lab: &mut Lab) {
    let (a, b) = (lab.vm("a"), lab.vm("b"));
    for vm in [a, b] {
        assert_eq!(mtu(vm), PORT_MTU, "{}: option 26, sent unasked", vm.name);
        let address = vm
            .netns
            .exec("ip", &["-4", "-o", "addr", "show", "eth0"])
            .unwrap();
        assert!(address.contains(&format!("{}/24", vm.ip)), "{address}");
        // The stock script wrote the namespace's resolv.conf, not ours.
        assert!(vm.netns.etc_dir().join("resolv.conf").exists());
    }
    for reverse in [false, true] {
        let moved = tcp_bytes(a, b, 5201, reverse);
        assert!(
            moved >= FLOWING,
            "a <-> b (reverse {reverse}): {moved} bytes"
        );
    }
    assert_eq!(lab.dropped(a, "too-big"), 0);
    assert_eq!(lab.dropped(a, "frag-needed"), 0);
}

async fn too_big_packets_that_may_be_fragmented_arrive_whole_across_hosts(lab: &mut Lab) {
    let (s, t) = (lab.vm("s"), lab.vm("t"));
    // No path MTU learned yet: a 1500-byte ping with DF clear leaves s
    // whole, and so does t's reply.
    s.netns.exec("ip", &["route", "flush", "cache"]).unwrap();
    t.netns.exec("ip", &["route", "flush", "cache"]).unwrap();
    let sent_before = lab.tunnels("h1", "device_encap_packets");
    let received_before = lab.tunnels("h2", "device_decap_packets");
    let ping = traffic::ping(
        &s.netns,
        t.ip,
        &[
            "-c", "3", "-i", "0.2", "-W", "2", "-M", "dont", "-s", "1472",
        ],
        LIMIT,
    )
    .unwrap();
    assert!(ping.all_answered(), "{}", ping.summary);
    assert!(lab.tunnels("h1", "device_encap_packets") - sent_before >= 3);
    assert!(lab.tunnels("h2", "device_decap_packets") - received_before >= 3);
    // Neither side was told to make its packets smaller.
    assert_eq!(lab.dropped(s, "frag-needed"), 0);
}

async fn a_guest_at_mtu_1500_learns_the_path_mtu_and_tcp_flows_across_hosts_and_routed(
    lab: &mut Lab,
) {
    let (s, t, u) = (lab.vm("s"), lab.vm("t"), lab.vm("u"));
    assert_eq!(mtu(s), 1500);
    let answered_before = lab.dropped(s, "frag-needed");
    // In the subnet, both ways (each side at 1500 learns it), and routed.
    for (server, reverse, port) in [(t, false, 5202), (t, true, 5203), (u, false, 5204)] {
        let moved = tcp_bytes(s, server, port, reverse);
        assert!(
            moved >= FLOWING,
            "s -> {} (reverse {reverse}): {moved} bytes",
            server.name
        );
    }
    assert!(lab.dropped(s, "frag-needed") > answered_before);
    // What s's kernel learnt from the gateway's ICMP.
    for dst in [t.ip, u.ip] {
        let route = s.netns.exec("ip", &["route", "get", dst]).unwrap();
        assert!(route.contains("mtu 1450"), "{route}");
    }
}

async fn agentctl_trace_explains_what_a_guest_at_mtu_1500_meets(lab: &mut Lab) {
    let s = lab.vm("s");
    let agent = &lab.agents["h1"];
    let port = s.port_id();
    let trace = |extra: &[&str]| {
        let mut args = vec![
            "trace",
            port.as_str(),
            "--dst",
            "10.0.1.21",
            "--size",
            "1500",
        ];
        args.extend_from_slice(extra);
        agent.agentctl_json(&args)
    };
    let df = trace(&[]);
    assert_eq!(df["verdict"], "TRACE_VERDICT_ANSWERED", "{df}");
    assert_eq!(df["answer"], "frag-needed", "{df}");
    let explanation = df["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("fragmentation needed") && explanation.contains("1450"),
        "{explanation}"
    );
    let fragmentable = trace(&["--fragmentable"]);
    assert_eq!(
        fragmentable["verdict"], "TRACE_VERDICT_ENCAPSULATED",
        "{fragmentable}"
    );
    assert_eq!(
        fragmentable["next_hop"]["device"], "alcor-vxlan",
        "{fragmentable}"
    );
    // At 1450 it fits, and is encapsulated as usual.
    let fits = agent.agentctl_json(&["trace", &port, "--dst", "10.0.1.21", "--size", "1450"]);
    assert_eq!(fits["verdict"], "TRACE_VERDICT_ENCAPSULATED", "{fits}");
    // And in words.
    let text = agent.agentctl(&["trace", &port, "--dst", "10.0.1.21", "--size", "1500"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("frag"), "{text}");
}

async fn a_flood_of_oversized_frames_gets_no_more_icmp_than_the_rate_limit(lab: &mut Lab) {
    let s = lab.vm("s");
    let answered_before = lab.dropped(s, "frag-needed");
    let unanswered_before = lab.dropped(s, "too-big");
    // 1500-byte UDP datagrams with DF (hping3 builds its own IP headers:
    // no path MTU applies), as fast as it can, for a second.
    // Nor the path MTU learnt before: hping3 gives up on EMSGSIZE.
    s.netns.exec("ip", &["route", "flush", "cache"]).unwrap();
    let start = Instant::now();
    let hping3 = output_within(
        Duration::from_secs(1),
        "ip",
        &[
            "netns",
            "exec",
            s.netns.name(),
            "hping3",
            "--udp",
            "-p",
            "9",
            "-d",
            "1472",
            "-y",
            "--flood",
            "10.0.1.21",
        ],
    )
    .unwrap();
    let elapsed = start.elapsed();
    let answered = lab.dropped(s, "frag-needed") - answered_before;
    let unanswered = lab.dropped(s, "too-big") - unanswered_before;
    // A burst of 10, then 100 a second; a little slack for the counters'
    // reading and the clock.
    let allowed = 10 + elapsed.as_millis() as u64 / 10 + 10;
    eprintln!("flood of {elapsed:?}: {answered} answered, {unanswered} not");
    assert!(
        answered <= allowed,
        "{answered} ICMP errors in {elapsed:?} (at most {allowed})"
    );
    assert!(
        unanswered >= 1000,
        "the flood was not one: {unanswered} unanswered; hping3 said {}",
        String::from_utf8_lossy(&hping3.stderr)
    );
}

/// What one iperf3 run moved, and the average size of the packets the tap
/// handed the guest meanwhile.
fn to_and_from_guest(guest: &mut Guest, server: &Vm, port: u16) -> (u64, u64, u64) {
    let duration = Duration::from_secs(3);
    let sent = {
        let _server = Iperf3Server::start(&server.netns, server.ip, port, true).unwrap();
        guest
            .iperf3(
                server.ip.parse().unwrap(),
                port,
                Direction::FromGuest,
                duration,
            )
            .unwrap()
            .bytes
    };
    let _server = Iperf3Server::start(&server.netns, server.ip, port + 1, true).unwrap();
    let before = guest.tap_counters().unwrap();
    let received = guest
        .iperf3(
            server.ip.parse().unwrap(),
            port + 1,
            Direction::ToGuest,
            duration,
        )
        .unwrap()
        .bytes;
    let delivered = guest.tap_counters().unwrap().since(&before);
    eprintln!(
        "guest <-> {} on {}: {sent} bytes sent, {received} received in {} packets of {} bytes \
         on average",
        server.name,
        server.host,
        delivered.tx_packets,
        delivered.average_tx_size()
    );
    (sent, received, delivered.average_tx_size())
}

async fn a_real_guest_on_a_hypervisor_tap_leases_and_gets_large_packets_from_both_hosts(
    lab: &mut Lab,
) {
    let (port_id, ip, mac) = QEMU;
    let tap = format!("tap{}", &port_id[..port_id.len().min(11)]);
    let h1 = lab.topology.host("h1").netns();
    // The port first: PENDING until the hypervisor makes its tap.
    for host in ["h1", "h2"] {
        let reply = lab.agents[host].push(lab.goal_state(host, true)).await;
        assert!(
            reply
                .operation_statuses
                .iter()
                .all(|s| s.operation_status == 0
                    || s.operation_status == alcor_proto::schema::OperationStatus::Pending as i32),
            "{host}: {reply:#?}"
        );
    }
    let mut guest = Guest::boot(h1, &tap, mac).unwrap();
    eprintln!("guest booted in {:?}", guest.boot_time());
    // QEMU leaves it down (no ifup script here): up, as libvirt does.
    h1.exec("ip", &["link", "set", &tap, "up"]).unwrap();
    let agent = &lab.agents["h1"];
    wait_for(
        "the tap port to be ready",
        Duration::from_secs(10),
        async || {
            agent
                .ports()
                .await
                .iter()
                .any(|p| p.id == port_id && p.phase == PortPhase::Ready as i32)
                .then_some(())
        },
    )
    .await;

    let eth0 = guest.udhcpc().unwrap();
    assert_eq!(eth0.mtu, PORT_MTU, "{eth0:?}");
    assert!(eth0.addresses.contains(&format!("{ip}/24")), "{eth0:?}");

    let (a, b) = (lab.vm("a"), lab.vm("b"));
    let (sent_local, received_local, local_size) = to_and_from_guest(&mut guest, a, 5211);
    let (sent_remote, received_remote, remote_size) = to_and_from_guest(&mut guest, b, 5213);
    for (moved, what) in [
        (sent_local, "guest -> a"),
        (received_local, "a -> guest"),
        (sent_remote, "guest -> b"),
        (received_remote, "b -> guest"),
    ] {
        assert!(moved >= 1 << 20, "{what}: {moved} bytes");
    }
    // TSO-sized packets from both hosts, not MTU-sized segments from the
    // other: at least half the same-host size, and many MTUs each.
    assert!(
        remote_size * 2 >= local_size && remote_size > 8 * PORT_MTU,
        "the guest gets {remote_size}-byte packets from the other host, {local_size} from its own"
    );
    assert!(lab.tunnels("h1", "device_decap_packets") > 0);
}
