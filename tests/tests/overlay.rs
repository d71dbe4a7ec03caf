//! The overlay between hosts, end to end: three host namespaces on a fabric
//! bridge (underlay 198.18.0.0/24, MTU 9000), a real agent in each started
//! with `--underlay-dev underlay0`, goal state pushed over gRPC with the
//! VMs of the other hosts as neighbors (L2 in a subnet the host has VMs in,
//! L3 in another), and VMs (namespaces whose `eth0` their host's agent
//! plugs) that get their address, routes and MTU from their agent with
//! udhcpc. Then real tools between VMs on different hosts:
//!
//! - DHCP gives every VM its address and the underlay MTU minus the 50
//!   bytes of VXLAN (8950, which only the underlay device can have told);
//! - same subnet: ping, TCP and UDP both ways, counted as encapsulated and
//!   decapsulated on the ports, nothing dropped;
//! - routed across subnets and hosts by the router of the VPC, on the
//!   sending host: the reply's TTL is one lower both ways, and TTL 1 gets
//!   "time exceeded" from the gateway;
//! - the fabric carries VXLAN to UDP 4789 between the hosts' underlay
//!   addresses with the VPC's VNI, routed frames already rewritten;
//! - two VPCs with the same CIDR and the same addresses on the same two
//!   hosts never meet;
//! - full-size frames at the MTU DHCP gave (ping -M do) and bulk TCP;
//! - the other host's MAC comes from the sending host's neighbour table
//!   into its datapath (outer MACs written, plain redirect) and follows it:
//!   a full sync keeps it, a deleted entry falls back to the kernel's path,
//!   which resolves it again and brings it back, a changed one is taken;
//! - spoofed VXLAN from an unknown host or for an unknown VNI, sent from a
//!   rogue namespace on the fabric, is dropped by XDP and counted
//!   (`agentctl dp tunnels`), while the same frame from a known host for a
//!   served VNI arrives;
//! - a neighbor DELETE stops the traffic to it, re-adding it restores it;
//!   an UPDATE naming another host sends the traffic there;
//! - SIGKILL and restart of an agent under a 100 pps cross-host ping loses
//!   not one.
//!
//! The cases share one topology (built once, removed at the end whatever
//! happens; see `alcor_tests::suite`) and run in this order. IPv6 is off in
//! the VMs, so that only the test's IPv4 is on the wire.

use std::{collections::BTreeMap, net::Ipv4Addr, process::ExitCode, time::Duration};

use alcor_proto::schema::{GoalState, NeighborState, OperationType};
use alcor_tests::{
    Agent, Netns,
    agent::json_count as count,
    cases,
    dhcp::{ClientDir, Eth0, UDHCPC_SCRIPT, udhcpc_once},
    goalstate::*,
    lab::{self, Vm},
    suite::{self, CaseFn},
    topology::{Topology, UNDERLAY_DEV},
    traffic::{self, Capture, Iperf3Server, PingRun, Vxlan},
    unique_prefix, wait_for,
};
use serde_json::Value;

/// The fabric's MTU: jumbo frames, as data-centre underlays have them.
/// The VMs' 8950 can only come from the underlay device (without one the
/// agent assumes 1500), and full-size frames reach the XDP program in
/// several buffers (it is built for multi-buffer XDP).
const UNDERLAY_MTU: u32 = 9000;
const VM_MTU: u64 = UNDERLAY_MTU as u64 - 50;
/// (host, underlay address) of the hosts that run an agent.
const HOSTS: &[(&str, &str)] = &[
    ("h1", "198.18.0.1/24"),
    ("h2", "198.18.0.2/24"),
    ("h3", "198.18.0.3/24"),
];
/// A namespace on the fabric that is no host: where spoofed VXLAN comes from.
const ROGUE: (&str, &str) = ("rogue", "198.18.0.250/24");

const VPC1: (&str, u32) = ("vpc1", 100);
const VPC2: (&str, u32) = ("vpc2", 200);
/// Gateway MACs, one per subnet, so that a routed frame shows its gateway.
const SN1_GATEWAY_MAC: &str = "fa:16:3e:00:00:01";
const SN2_GATEWAY_MAC: &str = "fa:16:3e:00:00:02";

/// Bounds every short ping, TCP transfer and iperf3 run.
const LIMIT: Duration = Duration::from_secs(20);
/// Bytes of each bulk TCP transfer.
const TCP_BYTES: usize = 16 << 20;

/// (name, host, VPC, subnet, IP, MAC) of each VM. A and B (VPC 1) have
/// twins E and F in VPC 2, with the same addresses, on the same hosts; C is
/// in VPC 1's other subnet, on the third host.
const VMS: &[(&str, &str, &str, &str, &str, &str)] = &[
    ("a", "h1", "vpc1", "sn1", "10.0.1.10", "fa:16:3e:00:61:0a"),
    (
        "e",
        "h1",
        "vpc2",
        "vpc2-sn1",
        "10.0.1.10",
        "fa:16:3e:00:61:0e",
    ),
    ("b", "h2", "vpc1", "sn1", "10.0.1.20", "fa:16:3e:00:61:0b"),
    (
        "f",
        "h2",
        "vpc2",
        "vpc2-sn1",
        "10.0.1.20",
        "fa:16:3e:00:61:0f",
    ),
    ("c", "h3", "vpc1", "sn2", "10.0.2.30", "fa:16:3e:00:61:0c"),
];

/// In this order.
const CASES: &[(&str, CaseFn<Lab>)] = &cases![
    dhcp_gives_each_vm_its_address_and_the_underlay_mtu_minus_50,
    same_subnet_ping_tcp_and_udp_across_hosts_both_ways,
    routed_across_subnets_and_hosts_one_hop_both_ways,
    the_fabric_carries_vxlan_with_the_vni_between_underlay_addresses,
    two_vpcs_with_the_same_addresses_on_two_hosts_stay_isolated,
    full_size_frames_and_bulk_tcp_at_the_mtu_dhcp_gave,
    host_macs_follow_the_underlay_neighbour_table,
    spoofed_vxlan_is_dropped_by_xdp_and_counted,
    a_deleted_neighbor_gets_nothing_and_a_re_added_one_does,
    a_neighbor_updated_to_another_host_is_sent_there,
    agent_killed_and_restarted_under_a_100_pps_cross_host_ping_loses_nothing,
];

fn main() -> ExitCode {
    suite::run("overlay", Lab::start, CASES)
}

/// Three hosts with an agent each, a rogue namespace on the fabric, the
/// VMs with their DHCP leases.
struct Lab {
    // Dropped in this order: the agents (and their pins), the VMs, the
    // hosts and the fabric, the DHCP clients' directory.
    agents: BTreeMap<&'static str, Agent>,
    vms: Vec<Vm>,
    topology: Topology,
    clients: ClientDir,
    /// The revision of each neighbor's last push, by id.
    neighbor_revisions: BTreeMap<String, u32>,
}

impl Lab {
    async fn start() -> Lab {
        let prefix = unique_prefix("ov");
        let mut topology = Topology::new(&prefix).unwrap();
        topology.set_mtu(UNDERLAY_MTU).unwrap();
        for (name, address) in HOSTS.iter().chain([&ROGUE]) {
            topology.add_host(name, address).unwrap();
        }
        let vms: Vec<Vm> = VMS
            .iter()
            .map(|&vm| Vm::new(&prefix, vm).unwrap())
            .collect();
        let hosts: Vec<_> = HOSTS.iter().map(|(name, _)| *name).collect();
        let agents = lab::start_agents(&topology, &hosts, &[]).await;
        let lab = Lab {
            agents,
            vms,
            topology,
            clients: ClientDir::new().unwrap(),
            neighbor_revisions: BTreeMap::new(),
        };
        for (host, _) in HOSTS {
            lab.push(host, lab.goal_state(host)).await;
        }
        lab.dhcp();
        lab
    }

    fn agent(&self, host: &str) -> &Agent {
        &self.agents[host]
    }

    fn vm(&self, name: &str) -> &Vm {
        lab::find(&self.vms, name)
    }

    fn underlay_ip(&self, host: &str) -> Ipv4Addr {
        self.topology.host(host).underlay_ip()
    }

    /// The neighbor record of `vm` that `host` gets.
    fn neighbor(&self, vm: &Vm, host: &str) -> NeighborState {
        lab::neighbor_of(vm, host, &self.vms, &self.topology)
    }

    /// What the controller pushes to `host`: both VPCs (same CIDR), VPC 1's
    /// subnets joined by router `r1`, the ports of the host's VMs and their
    /// DHCP entries, and the other hosts' VMs in the VPCs the host has VMs
    /// in as neighbors.
    fn goal_state(&self, host: &str) -> GoalState {
        let mut network = v1(
            vec![
                vpc(VPC1.0, VPC1.1, "10.0.0.0/16"),
                vpc(VPC2.0, VPC2.1, "10.0.0.0/16"),
            ],
            vec![
                with_gateway_mac(
                    subnet("sn1", VPC1.0, "10.0.1.0/24", "10.0.1.1"),
                    SN1_GATEWAY_MAC,
                ),
                with_gateway_mac(
                    subnet("sn2", VPC1.0, "10.0.2.0/24", "10.0.2.1"),
                    SN2_GATEWAY_MAC,
                ),
                subnet("vpc2-sn1", VPC2.0, "10.0.1.0/24", "10.0.1.1"),
            ],
            vec![],
        );
        network.router_states = vec![router_joining("r1", &["sn1", "sn2"])];
        lab::goal_state_for(host, network, &self.vms, &self.topology)
    }

    /// Pushes `message` to `host`'s agent; everything must succeed, and
    /// every port of the host be ready.
    async fn push(&self, host: &str, message: GoalState) {
        let ports = self.vms.iter().filter(|vm| vm.host == host).count();
        lab::push_until_ready(self.agent(host), host, message, ports).await;
    }

    /// Pushes neighbor `vm` to `host` with `operation`, at the next
    /// revision, as living on host `on` (its own host, unless the test
    /// pretends it moved).
    async fn push_neighbor(&mut self, host: &str, vm: &str, operation: OperationType, on: &str) {
        let mut state = self.neighbor(self.vm(vm), host);
        if let Some(config) = state.configuration.as_mut() {
            config.host_ip_address = self.underlay_ip(on).to_string();
        }
        let id = state.configuration.as_ref().unwrap().id.clone();
        let revision = self.neighbor_revisions.entry(id).or_insert(1);
        *revision += 1;
        let message = GoalState {
            format_version: 1,
            neighbor_states: vec![state.with(operation, *revision)],
            ..Default::default()
        };
        self.push(host, message).await;
    }

    /// Every VM runs udhcpc (all at once) with `eth0` at MTU 1500, so that
    /// its MTU can only come from DHCP's option 26.
    fn dhcp(&self) {
        std::thread::scope(|scope| {
            for vm in &self.vms {
                let script = self
                    .clients
                    .script(&format!("udhcpc-{}", vm.name), UDHCPC_SCRIPT)
                    .unwrap();
                scope.spawn(move || {
                    vm.netns
                        .exec("ip", &["link", "set", "eth0", "mtu", "1500"])
                        .unwrap();
                    assert!(
                        udhcpc_once(&vm.netns, &script, 10).unwrap(),
                        "VM {} got no lease from the agent of {}",
                        vm.name,
                        vm.host
                    );
                });
            }
        });
    }

    /// `agentctl --json ARGS` on `host`'s agent, parsed.
    fn agentctl_json(&self, host: &str, args: &[&str]) -> Value {
        self.agent(host).agentctl_json(args)
    }

    /// `agentctl ARGS` on `host`'s agent: its table.
    fn agentctl_text(&self, host: &str, args: &[&str]) -> String {
        let output = self.agent(host).agentctl(args);
        assert!(
            output.status.success(),
            "agentctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The datapath counters of `vm`'s port (`agentctl dp counters`).
    fn port_counters(&self, vm: &Vm) -> Value {
        let mut reply = self.agentctl_json(vm.host, &["dp", "counters", &vm.port_id()]);
        let port = reply["ports"][0].take();
        assert_eq!(port["port_id"], vm.port_id().as_str(), "{reply}");
        port
    }

    /// The host-wide tunnel counters of `host` (`agentctl dp tunnels`).
    fn tunnels(&self, host: &str) -> Value {
        self.agentctl_json(host, &["dp", "tunnels"])
    }

    /// How `host`'s datapath sends to host `to` (`agentctl dp tunnels`):
    /// (next hop, MAC).
    fn tunnel_to(&self, host: &str, to: &str) -> (String, String) {
        let tunnels = self.tunnels(host);
        let ip = self.underlay_ip(to).to_string();
        let entry = tunnels["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["ip_address"] == ip.as_str())
            .unwrap_or_else(|| panic!("{host} has no tunnel to {to}: {tunnels}"));
        let text = |key: &str| entry[key].as_str().unwrap_or_default().to_string();
        (text("next_hop"), text("mac_address"))
    }

    /// Waits until `host` sends to `to` as `expected` says.
    async fn wait_tunnel(&self, host: &str, to: &str, expected: (&str, &str)) {
        let expected = (expected.0.to_string(), expected.1.to_string());
        wait_for(
            &format!("{host}'s tunnel to {to} to be {expected:?}"),
            Duration::from_secs(5),
            async || (self.tunnel_to(host, to) == expected).then_some(()),
        )
        .await;
    }

    /// Underlay drops of `host` for `reason`.
    fn underlay_dropped(&self, host: &str, reason: &str) -> u64 {
        let tunnels = self.tunnels(host);
        let n = &tunnels["drops"][reason];
        assert!(!n.is_null(), "no underlay drop reason {reason}: {tunnels}");
        count(n)
    }
}

/// Drop reasons with a count, from a `drops` map.
fn nonzero(drops: &Value) -> Vec<(String, u64)> {
    drops
        .as_object()
        .unwrap_or_else(|| panic!("not drops by reason: {drops}"))
        .iter()
        .map(|(reason, n)| (reason.clone(), count(n)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// A bulk TCP transfer of [`TCP_BYTES`] from `client` to `server`: every
/// byte arrives.
fn tcp(client: &Vm, server: &Vm, port: u16) {
    let addr = std::net::SocketAddr::from((server.ipv4(), port));
    let started = std::time::Instant::now();
    let received = traffic::tcp_transfer(&client.netns, &server.netns, addr, TCP_BYTES, LIMIT)
        .unwrap_or_else(|e| panic!("TCP {} → {}: {e:#}", client.name, server.name));
    eprintln!(
        "  TCP {} → {}: {received} bytes in {:.0?}",
        client.name,
        server.name,
        started.elapsed()
    );
    assert_eq!(
        received, TCP_BYTES,
        "TCP {} → {}: bytes received",
        client.name, server.name
    );
}

/// A second of UDP at 5 Mbit/s in 1000-byte datagrams from `client` to
/// `server`: at least 90% arrive (iperf3's own count).
fn udp(client: &Vm, server: &Vm, port: u16) {
    let _server = Iperf3Server::start(&server.netns, server.ip, port, true).unwrap();
    let report = traffic::iperf3(
        &client.netns,
        server.ip,
        port,
        &["-u", "-b", "5M", "-l", "1000", "-t", "1"],
        LIMIT,
    )
    .unwrap_or_else(|e| panic!("UDP {} → {}: {e:#}", client.name, server.name));
    let (sent, received) = traffic::udp_packets(&report);
    eprintln!(
        "  UDP {} → {}: {received} of {sent} datagrams",
        client.name, server.name
    );
    assert!(
        sent > 0 && received * 10 >= sent * 9,
        "UDP {} → {}: {received} of {sent} datagrams: {report}",
        client.name,
        server.name
    );
}

async fn dhcp_gives_each_vm_its_address_and_the_underlay_mtu_minus_50(lab: &mut Lab) {
    for vm in &lab.vms {
        let eth0 = Eth0::of(&vm.netns).unwrap();
        assert_eq!(eth0.addresses, [format!("{}/24", vm.ip)], "{}", vm.name);
        assert_eq!(
            eth0.mtu, VM_MTU,
            "{}: MTU from option 26: {eth0:?}",
            vm.name
        );
        assert!(
            eth0.has_route(&format!("default via {}", vm.gateway())),
            "{}: {eth0:?}",
            vm.name
        );
    }
    // The agents' own view: each lease is bound.
    for (host, _) in HOSTS {
        let leases = lab.agentctl_json(host, &["leases"]);
        let leases = leases["leases"].as_array().cloned().unwrap_or_default();
        for vm in lab.vms.iter().filter(|vm| vm.host == *host) {
            assert!(
                leases.iter().any(|l| l["ip_address"] == vm.ip
                    && l["state"] == "bound"
                    && l["mac_address"] == vm.mac),
                "{host}: no bound lease for {}: {leases:?}",
                vm.name
            );
        }
    }
}

async fn same_subnet_ping_tcp_and_udp_across_hosts_both_ways(lab: &mut Lab) {
    let (a, b) = (lab.vm("a"), lab.vm("b"));
    let a_before = lab.port_counters(a);
    let b_before = lab.port_counters(b);
    for (from, to) in [(a, b), (b, a)] {
        let ping = from.ping(to.ip, 5, &[]);
        assert!(
            ping.all_answered(),
            "{} → {}: {}",
            from.name,
            to.name,
            ping.summary
        );
        // The sender's host answered its ARP with the neighbor's MAC.
        assert_eq!(from.neighbour_mac(to.ip).as_deref(), Some(to.mac));
    }
    tcp(a, b, 5201);
    tcp(b, a, 5202);
    udp(a, b, 5203);
    udp(b, a, 5204);

    // All of it went through the tunnel: encapsulated on the sender's
    // port, decapsulated onto the receiver's, both ways; nothing dropped.
    for (vm, before) in [(a, a_before), (b, b_before)] {
        let after = lab.port_counters(vm);
        for counter in ["encap_bytes", "decap_bytes"] {
            let grew = count(&after[counter]) - count(&before[counter]);
            assert!(
                grew >= TCP_BYTES as u64,
                "{}: {counter} grew by {grew}: {after}",
                vm.name
            );
        }
        assert_eq!(nonzero(&after["drops"]), [], "{}'s drops", vm.name);
    }
    for (host, _) in &HOSTS[..2] {
        let tunnels = lab.tunnels(host);
        assert_eq!(nonzero(&tunnels["drops"]), [], "{host}'s underlay drops");
    }
}

async fn routed_across_subnets_and_hosts_one_hop_both_ways(lab: &mut Lab) {
    let (a, c) = (lab.vm("a"), lab.vm("c"));
    for (from, to) in [(a, c), (c, a)] {
        let ping = from.ping(to.ip, 5, &[]);
        assert!(
            ping.all_answered(),
            "{} → {}: {}",
            from.name,
            to.name,
            ping.summary
        );
        // The reply was routed once, on the replying VM's host.
        assert!(
            ping.ttls.iter().all(|&ttl| ttl == 63),
            "{} → {}: reply TTLs {:?}",
            from.name,
            to.name,
            ping.ttls
        );
        // The next hop is the gateway, whose MAC the datapath gave.
        let gateway_mac = if from.subnet_id == "sn2" {
            SN2_GATEWAY_MAC
        } else {
            SN1_GATEWAY_MAC
        };
        assert_eq!(
            from.neighbour_mac(&from.gateway().to_string()).as_deref(),
            Some(gateway_mac)
        );
    }
    // A packet that may take no hop more is answered by the sender's
    // gateway, on the sender's host (what traceroute relies on).
    let output = a
        .netns
        .output("ping", &["-n", "-c", "1", "-t", "1", "-W", "2", c.ip])
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("From 10.0.1.1 ") && text.contains("Time to live exceeded"),
        "{text}"
    );
    tcp(c, a, 5211);
}

async fn the_fabric_carries_vxlan_with_the_vni_between_underlay_addresses(lab: &mut Lab) {
    let [a, b, c, e, f] = ["a", "b", "c", "e", "f"].map(|name| lab.vm(name));
    let fabric = lab.topology.fabric();
    // What h1 and h2 send into the fabric: each capture sees the frames
    // arriving from one host.
    let from_h1 = Capture::start(fabric, "f-h1").unwrap();
    let from_h2 = Capture::start(fabric, "f-h2").unwrap();
    for (from, to) in [(a, b), (a, c), (e, f)] {
        let ping = from.ping(to.ip, 3, &[]);
        assert!(ping.all_answered(), "{} → {}", from.name, to.name);
    }
    let from_h1: Vec<Vxlan> = from_h1
        .stop()
        .unwrap()
        .iter()
        .filter_map(|frame| Vxlan::parse(frame))
        .collect();
    let from_h2: Vec<Vxlan> = from_h2
        .stop()
        .unwrap()
        .iter()
        .filter_map(|frame| Vxlan::parse(frame))
        .collect();
    let (h1, h2, h3) = (
        lab.underlay_ip("h1"),
        lab.underlay_ip("h2"),
        lab.underlay_ip("h3"),
    );
    // The frames of VPC 1 between two addresses (VPC 2 has the same ones).
    let between = |frames: &[Vxlan], src: Ipv4Addr, dst: Ipv4Addr| -> Vec<Vxlan> {
        frames
            .iter()
            .filter(|v| v.inner_ipv4() == Some((src, dst)))
            .filter(|v| {
                v.inner_macs()
                    .is_some_and(|(mac, _)| mac != e.mac_bytes() && mac != f.mac_bytes())
            })
            .cloned()
            .collect()
    };

    // A → B: VNI 100 from h1 to h2, to port 4789, the frame as A sent it;
    // B's replies the other way.
    let requests = between(&from_h1, a.ipv4(), b.ipv4());
    assert_eq!(requests.len(), 3, "A → B on the fabric: {from_h1:#?}");
    for v in &requests {
        assert_eq!((v.outer_src, v.outer_dst, v.dst_port), (h1, h2, 4789));
        assert_eq!(v.vni, VPC1.1, "{v:?}");
        assert_eq!(v.inner_macs(), Some((a.mac_bytes(), b.mac_bytes())));
        assert_eq!(v.inner_ttl(), Some(64));
    }
    let replies = between(&from_h2, b.ipv4(), a.ipv4());
    assert_eq!(replies.len(), 3, "B → A on the fabric: {from_h2:#?}");
    for v in &replies {
        assert_eq!((v.outer_src, v.outer_dst, v.dst_port), (h2, h1, 4789));
        assert_eq!(v.vni, VPC1.1, "{v:?}");
    }
    // A → C: routed on h1 before it left: from sn2's gateway to C, TTL 63,
    // to h3.
    let routed = between(&from_h1, a.ipv4(), c.ipv4());
    assert_eq!(routed.len(), 3, "A → C on the fabric: {from_h1:#?}");
    let sn2_gateway = traffic::mac_bytes(SN2_GATEWAY_MAC).unwrap();
    for v in &routed {
        assert_eq!((v.outer_src, v.outer_dst, v.dst_port), (h1, h3, 4789));
        assert_eq!(v.vni, VPC1.1, "{v:?}");
        assert_eq!(v.inner_macs(), Some((sn2_gateway, c.mac_bytes())));
        assert_eq!(v.inner_ttl(), Some(63));
    }
    // E → F: the same addresses as A → B, VPC 2's VNI.
    let twins: Vec<&Vxlan> = from_h1
        .iter()
        .filter(|v| v.inner_macs().is_some_and(|(src, _)| src == e.mac_bytes()))
        .collect();
    assert_eq!(twins.len(), 3, "E → F on the fabric: {from_h1:#?}");
    for v in twins {
        assert_eq!((v.outer_src, v.outer_dst, v.dst_port), (h1, h2, 4789));
        assert_eq!(v.vni, VPC2.1, "{v:?}");
        assert_eq!(v.inner_ipv4(), Some((e.ipv4(), f.ipv4())));
    }
    // One flow, one UDP source port (for ECMP), from the dynamic range.
    let ports: std::collections::BTreeSet<u16> = requests.iter().map(|v| v.src_port).collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(ports.iter().all(|&p| p >= 49152), "{ports:?}");
}

async fn two_vpcs_with_the_same_addresses_on_two_hosts_stay_isolated(lab: &mut Lab) {
    let [a, b, c, e, f] = ["a", "b", "c", "e", "f"].map(|name| lab.vm(name));
    // 10.0.1.20 is B in VPC 1 and F in VPC 2; each VPC reaches its own.
    let captures = [a, b, e, f].map(|vm| Capture::start(&vm.netns, "eth0").unwrap());
    assert!(a.ping(b.ip, 3, &[]).all_answered(), "A → B");
    assert!(e.ping(f.ip, 3, &[]).all_answered(), "E → F");
    assert!(f.ping(e.ip, 3, &[]).all_answered(), "F → E");
    assert_eq!(a.neighbour_mac(b.ip).as_deref(), Some(b.mac));
    assert_eq!(e.neighbour_mac(f.ip).as_deref(), Some(f.mac));
    assert_eq!(f.neighbour_mac(e.ip).as_deref(), Some(e.mac));
    // VPC 2 has no 10.0.2.0/24: C is not there for E.
    let ping = e.ping(c.ip, 2, &[]);
    assert_eq!(ping.received, 0, "E reached C: {}", ping.summary);

    // No frame crossed: A and B heard nothing from E or F, E and F
    // nothing from A or B.
    let [seen_a, seen_b, seen_e, seen_f] = captures.map(|capture| capture.stop().unwrap());
    for (vm, frames, others) in [
        (a, seen_a, [e, f]),
        (b, seen_b, [e, f]),
        (e, seen_e, [a, b]),
        (f, seen_f, [a, b]),
    ] {
        for other in others {
            let heard = frames
                .iter()
                .filter(|frame| frame.get(6..12) == Some(&other.mac_bytes()[..]))
                .count();
            assert_eq!(
                heard, 0,
                "{} ({}) heard {} frames of {} ({})",
                vm.name, vm.vpc_id, heard, other.name, other.vpc_id
            );
        }
    }
}

async fn full_size_frames_and_bulk_tcp_at_the_mtu_dhcp_gave(lab: &mut Lab) {
    let [a, b, c] = ["a", "b", "c"].map(|name| lab.vm(name));
    // The largest datagram eth0's MTU allows, unfragmented (DF), both ways,
    // in a subnet and routed.
    let size = (VM_MTU - 28).to_string();
    for (from, to) in [(a, b), (b, a), (a, c), (c, a)] {
        let ping = from.ping(to.ip, 3, &["-M", "do", "-s", &size]);
        assert!(
            ping.all_answered(),
            "{} → {} with {VM_MTU}-byte packets: {}",
            from.name,
            to.name,
            ping.summary
        );
    }
    // Bulk TCP at full-size segments, routed this time (same subnet: see
    // same_subnet_ping_tcp_and_udp_across_hosts_both_ways).
    tcp(a, c, 5221);
}

async fn host_macs_follow_the_underlay_neighbour_table(lab: &mut Lab) {
    let h2 = lab.underlay_ip("h2").to_string();
    let h2_link = lab.topology.host("h2").netns().link(UNDERLAY_DEV).unwrap();
    let h2_mac = h2_link.unwrap()["address"].as_str().unwrap().to_string();
    let via_mac = ("mac", h2_mac.as_str());
    let via_kernel = ("neighbor", "");

    // Traffic made h1's kernel resolve h2 (the first frames went by
    // bpf_redirect_neigh); h1's agent took the MAC from the table.
    let ping = lab.vm("a").ping(lab.vm("b").ip, 3, &[]);
    assert!(ping.all_answered(), "A → B: {}", ping.summary);
    lab.wait_tunnel("h1", "h2", via_mac).await;
    // A push is a full sync of the datapath: the MAC stays.
    lab.push_neighbor("h1", "b", OperationType::Update, "h2")
        .await;
    assert_eq!(
        lab.tunnel_to("h1", "h2"),
        (via_mac.0.to_string(), h2_mac.clone())
    );

    let [a, b] = ["a", "b"].map(|name| lab.vm(name));
    let h1 = lab.topology.host("h1").netns();
    // The MAC h1's kernel has for h2 on the underlay: the same.
    let out = h1
        .exec(
            "ip",
            &["-j", "neigh", "show", "to", &h2, "dev", UNDERLAY_DEV],
        )
        .unwrap();
    let entries: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(entries[0]["lladdr"], h2_mac.as_str(), "{entries}");
    tcp(a, b, 5231);

    // The entry goes, as when the kernel garbage-collects it: h1 falls
    // back to the kernel's path, which resolves h2 again, and the MAC comes
    // back.
    h1.exec("ip", &["neigh", "del", &h2, "dev", UNDERLAY_DEV])
        .unwrap();
    lab.wait_tunnel("h1", "h2", via_kernel).await;
    let ping = a.ping(b.ip, 3, &[]);
    assert!(ping.all_answered(), "A → B, fallen back: {}", ping.summary);
    lab.wait_tunnel("h1", "h2", via_mac).await;

    // A MAC that changes is followed, there and back.
    let other = "02:00:c6:12:00:99";
    let replace = |lladdr: &str, nud: &str| {
        h1.exec(
            "ip",
            &[
                "neigh",
                "replace",
                &h2,
                "lladdr",
                lladdr,
                "nud",
                nud,
                "dev",
                UNDERLAY_DEV,
            ],
        )
        .unwrap();
    };
    replace(other, "stale");
    lab.wait_tunnel("h1", "h2", ("mac", other)).await;
    replace(&h2_mac, "reachable");
    lab.wait_tunnel("h1", "h2", via_mac).await;
    tcp(b, a, 5232);
    tcp(a, b, 5233);
}

async fn spoofed_vxlan_is_dropped_by_xdp_and_counted(lab: &mut Lab) {
    let [a, b] = ["a", "b"].map(|name| lab.vm(name));
    let rogue = lab.topology.host(ROGUE.0);
    let h2 = lab.topology.host("h2");
    let mac_of = |netns: &Netns| {
        let link = netns.link(UNDERLAY_DEV).unwrap().expect("underlay0");
        traffic::mac_bytes(link["address"].as_str().unwrap()).unwrap()
    };
    let (rogue_mac, h2_mac) = (mac_of(rogue.netns()), mac_of(h2.netns()));
    // A frame for B as A would send it, marked by its payload.
    let inner = |payload: &[u8]| {
        traffic::udp_frame(
            (a.mac_bytes(), b.mac_bytes()),
            (a.ipv4(), b.ipv4()),
            (40000, 7),
            payload,
        )
    };
    // VXLAN to h2 from `source` (the rogue's own address or a host's,
    // forged) for `vni`, sent `count` times out of the rogue's underlay0.
    let send = |source: Ipv4Addr, vni: u32, payload: &[u8], count: usize| {
        let frame = traffic::udp_frame(
            (rogue_mac, h2_mac),
            (source, h2.underlay_ip()),
            (50000, traffic::VXLAN_PORT),
            &traffic::vxlan_payload(vni, &inner(payload)),
        );
        traffic::send_frames(rogue.netns(), UNDERLAY_DEV, &frame, count).unwrap();
    };
    // The early drop runs in the driver (native mode; veths have it).
    assert_eq!(lab.tunnels("h2")["underlay"]["xdp_mode"], "native");
    let reasons = [
        "xdp-unknown-host",
        "xdp-unknown-vni",
        "unknown-host",
        "unknown-vni",
    ];
    let before: Vec<u64> = reasons
        .iter()
        .map(|reason| lab.underlay_dropped("h2", reason))
        .collect();
    let b_decap = count(&lab.port_counters(b)["decap_packets"]);
    let capture = Capture::start(&b.netns, "eth0").unwrap();

    const UNKNOWN_HOST: u64 = 5;
    const UNKNOWN_VNI: u64 = 4;
    const GENUINE: u64 = 3;
    let stranger = lab.underlay_ip(ROGUE.0);
    send(stranger, VPC1.1, b"from a stranger", UNKNOWN_HOST as usize);
    send(
        lab.underlay_ip("h1"),
        4242,
        b"for an unknown VNI",
        UNKNOWN_VNI as usize,
    );
    // The same frame from a known host (forged too) for a served VNI is
    // taken: the frames are well formed, the checks are what drops them.
    send(lab.underlay_ip("h1"), VPC1.1, b"genuine", GENUINE as usize);

    wait_for("the drops counted", Duration::from_secs(5), async || {
        (lab.underlay_dropped("h2", "xdp-unknown-host") - before[0] >= UNKNOWN_HOST
            && lab.underlay_dropped("h2", "xdp-unknown-vni") - before[1] >= UNKNOWN_VNI)
            .then_some(())
    })
    .await;
    // B gets the genuine ones (the others, sent before them on the same
    // path, had their turn first).
    let payload_of = |frame: &Vec<u8>| -> Option<Vec<u8>> {
        (traffic::ipv4_addresses(frame)? == (a.ipv4(), b.ipv4()) && frame.get(23) == Some(&17))
            .then(|| frame[42..].to_vec())
    };
    let received = || -> Vec<Vec<u8>> { capture.frames().iter().filter_map(payload_of).collect() };
    wait_for(
        "the genuine frames at B",
        Duration::from_secs(5),
        async || (received().len() as u64 >= GENUINE).then_some(()),
    )
    .await;
    assert_eq!(
        received(),
        vec![b"genuine".to_vec(); GENUINE as usize],
        "what reached B"
    );
    assert_eq!(
        count(&lab.port_counters(b)["decap_packets"]) - b_decap,
        GENUINE,
        "decapsulated onto B's port"
    );
    let after: Vec<u64> = reasons
        .iter()
        .map(|reason| lab.underlay_dropped("h2", reason))
        .collect();
    let grew: Vec<(&str, u64)> = reasons
        .iter()
        .zip(after.iter().zip(&before))
        .map(|(reason, (after, before))| (*reason, after - before))
        .collect();
    // Dropped early, each by XDP and not by tc (which never saw them).
    assert_eq!(
        grew,
        [
            ("xdp-unknown-host", UNKNOWN_HOST),
            ("xdp-unknown-vni", UNKNOWN_VNI),
            ("unknown-host", 0),
            ("unknown-vni", 0)
        ]
    );
    // What an operator sees, and what Prometheus scrapes.
    let table = lab.agentctl_text("h2", &["dp", "tunnels"]);
    eprintln!("{table}");
    let metrics = lab.agent("h2").metrics().unwrap();
    for (reason, total) in reasons.iter().zip(&after).take(2) {
        assert!(table.contains(reason), "{reason} in:\n{table}");
        let sample = format!("alcor_agent_underlay_dropped_total{{reason=\"{reason}\"}} {total}\n");
        assert!(metrics.contains(&sample), "{sample} in:\n{metrics}");
    }
}

async fn a_deleted_neighbor_gets_nothing_and_a_re_added_one_does(lab: &mut Lab) {
    let (a_ip, b_ip) = (lab.vm("a").ip, lab.vm("b").ip);
    let ping = |lab: &Lab, from: &str, to: &str| lab.vm(from).ping(to, 3, &[]);
    // Whether h1's datapath has B (`agentctl dp endpoints`).
    let h1_knows_b = |lab: &Lab| {
        let endpoints = lab.agentctl_json("h1", &["dp", "endpoints"]);
        endpoints["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["ip_address"] == b_ip && count(&e["vni"]) == u64::from(VPC1.1))
    };
    assert!(ping(lab, "a", b_ip).all_answered(), "A → B before");
    assert!(h1_knows_b(lab), "h1 has B");

    let unknown = |lab: &Lab| {
        let counters = lab.port_counters(lab.vm("a"));
        count(&counters["drops"]["unknown-destination"])
    };
    lab.push_neighbor("h1", "b", OperationType::Delete, "h2")
        .await;
    assert!(!h1_knows_b(lab), "h1 still has B after the DELETE");
    let before = unknown(lab);
    let ping_ab = ping(lab, "a", b_ip);
    assert_eq!(
        ping_ab.received, 0,
        "A → B after DELETE: {}",
        ping_ab.summary
    );
    // A still has B's MAC from before: its pings leave, and A's port drops
    // them as for nobody it knows.
    assert_eq!(
        unknown(lab) - before,
        u64::from(ping_ab.transmitted),
        "A's pings dropped as unknown-destination"
    );
    // B's host still has A, but A's answers have nowhere to go.
    let ping_ba = ping(lab, "b", a_ip);
    assert_eq!(
        ping_ba.received, 0,
        "B → A after DELETE: {}",
        ping_ba.summary
    );

    lab.push_neighbor("h1", "b", OperationType::Create, "h2")
        .await;
    assert!(h1_knows_b(lab), "h1 has B again");
    let ping_ab = ping(lab, "a", b_ip);
    assert!(
        ping_ab.all_answered(),
        "A → B re-added: {}",
        ping_ab.summary
    );
    let ping_ba = ping(lab, "b", a_ip);
    assert!(
        ping_ba.all_answered(),
        "B → A re-added: {}",
        ping_ba.summary
    );
}

async fn a_neighbor_updated_to_another_host_is_sent_there(lab: &mut Lab) {
    let (a_ip, b_ip) = (lab.vm("a").ip, lab.vm("b").ip);
    let (h2, h3) = (lab.underlay_ip("h2"), lab.underlay_ip("h3"));
    let ping = |lab: &Lab| lab.vm("a").ping(b_ip, 3, &[]);
    // The host h1's datapath sends B's frames to (`agentctl dp neighbors`).
    let host_of_b = |lab: &Lab| {
        let neighbors = lab.agentctl_json("h1", &["dp", "neighbors"]);
        neighbors["neighbors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["ip_address"] == b_ip && count(&n["vni"]) == u64::from(VPC1.1))
            .and_then(|n| n["host"].as_str().map(str::to_string))
    };
    assert!(ping(lab).all_answered(), "A → B before");
    assert_eq!(host_of_b(lab), Some(h2.to_string()));

    // h1 is told that B now lives on h3 (as in a migration whose other
    // half has not happened): A's frames for B go to h3, which has no B and
    // drops them, counted.
    let h3_unknown = |lab: &Lab| lab.underlay_dropped("h3", "unknown-destination");
    let before = h3_unknown(lab);
    lab.push_neighbor("h1", "b", OperationType::Update, "h3")
        .await;
    assert_eq!(host_of_b(lab), Some(h3.to_string()));
    let capture = Capture::start(lab.topology.fabric(), "f-h1").unwrap();
    let moved = ping(lab);
    let frames: Vec<Vxlan> = capture
        .stop()
        .unwrap()
        .iter()
        .filter_map(|frame| Vxlan::parse(frame))
        .filter(|v| v.inner_ipv4() == Some((a_ip.parse().unwrap(), b_ip.parse().unwrap())))
        .filter(|v| v.vni == VPC1.1)
        .collect();
    assert_eq!(moved.received, 0, "A → B on h3: {}", moved.summary);
    assert_eq!(
        frames.iter().map(|v| v.outer_dst).collect::<Vec<_>>(),
        vec![h3; moved.transmitted as usize],
        "A's frames for B: {frames:#?}"
    );
    assert_eq!(
        h3_unknown(lab) - before,
        u64::from(moved.transmitted),
        "dropped by h3 as for nobody there"
    );

    // Back to h2: B answers again.
    lab.push_neighbor("h1", "b", OperationType::Update, "h2")
        .await;
    assert_eq!(host_of_b(lab), Some(h2.to_string()));
    let back = ping(lab);
    assert!(back.all_answered(), "A → B back on h2: {}", back.summary);
}

async fn agent_killed_and_restarted_under_a_100_pps_cross_host_ping_loses_nothing(lab: &mut Lab) {
    // h2's agent: B's host, which decapsulates the requests and
    // encapsulates the replies.
    const HOST: &str = "h2";
    // Borrowed field by field: the agent is killed and restarted meanwhile.
    let vm = |name| lab.vms.iter().find(|vm: &&Vm| vm.name == name).unwrap();
    let (a, b) = (vm("a"), vm("b"));
    assert!(a.ping(b.ip, 1, &[]).all_answered());
    let received = || traffic::eth0_stat(&b.netns, "rx_packets").unwrap();

    // 600 pings 10 ms apart (6 s), each given 1 s to be answered.
    const COUNT: u32 = 600;
    let count = COUNT.to_string();
    let start = received();
    let mut pinging = PingRun::start(
        &a.netns,
        b.ip,
        &["-q", "-c", &count, "-i", "0.01", "-W", "1", "-w", "30"],
        Duration::from_secs(40),
    )
    .unwrap();
    wait_for("the ping to reach B", Duration::from_secs(5), async || {
        (received() >= start + 20).then_some(())
    })
    .await;
    let agent = lab.agents.get_mut(HOST).unwrap();
    let pid = agent.pid().expect("the agent runs");
    agent.kill();
    eprintln!("  agent {pid} of {HOST} killed (SIGKILL)");
    // Forwarding goes on without the agent.
    let at_kill = received();
    wait_for(
        "pings to reach B while its agent is down",
        Duration::from_secs(5),
        async || (received() >= at_kill + 20).then_some(()),
    )
    .await;
    let agent = lab.agents.get_mut(HOST).unwrap();
    agent.restart().await;
    eprintln!("  restarted as {:?}", agent.pid());
    // It adopts what exists; the controller pushes the same state again.
    lab.push(HOST, lab.goal_state(HOST)).await;
    assert!(
        pinging.is_running(),
        "the restart must happen while the ping runs"
    );
    let ping = pinging.finish().unwrap();
    assert_eq!(ping.transmitted, COUNT, "{}", ping.summary);
    assert_eq!(
        ping.received, COUNT,
        "pings lost across the restart: {}",
        ping.summary
    );
    assert!(a.ping(b.ip, 3, &[]).all_answered());
}
