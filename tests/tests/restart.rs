//! A crashed agent comes back without disturbing the host: it reloads its
//! desired state, adopts the devices that exist (same ifindex, no flap) and
//! removes what is no longer desired; and forwarding never stops meanwhile,
//! for hypervisor taps as for namespace ports, within a host and between
//! hosts.

use std::time::Duration;

use alcor_agent::core::model::device_name;
use alcor_proto::{
    control::{ListRequest, Port, PortPhase},
    schema::GoalState,
};
use alcor_tests::{
    Agent, AgentOptions, Netns,
    goalstate::*,
    lab, privileged,
    tap::TapVm,
    topology::Topology,
    traffic::{self, PingRun},
    unique_prefix, wait_for,
};

/// How often the VM side of a port lost or gained its carrier.
fn carrier_changes(vm: &Netns) -> String {
    vm.exec("cat", &["/sys/class/net/eth0/carrier_changes"])
        .unwrap()
}

async fn ports(agent: &Agent) -> Vec<Port> {
    agent.ports().await
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_adopts_everything_untouched() {
    if !privileged("kill_9_and_restart_adopts_everything_untouched") {
        return;
    }
    let prefix = unique_prefix("rst");
    let host = Netns::new(format!("{prefix}-h")).unwrap();
    let vms: Vec<Netns> = (0..2)
        .map(|i| Netns::new(format!("{prefix}-vm{i}")).unwrap())
        .collect();
    let mut agent = Agent::start(&host, AgentOptions::default()).await;
    host.exec(
        "ip",
        &["tuntap", "add", "dev", "taptap-port-00", "mode", "tap"],
    )
    .unwrap();

    let reply = agent
        .push(one_subnet(vec![
            netns_port(
                "port-a-000001",
                "vpc1",
                "sn1",
                "10.0.1.10",
                "fa:16:3e:00:30:01",
                vms[0].name(),
            ),
            netns_port(
                "port-b-000001",
                "vpc1",
                "sn1",
                "10.0.1.11",
                "fa:16:3e:00:30:02",
                vms[1].name(),
            ),
            tap_port(
                "tap-port-0001",
                "vpc1",
                "sn1",
                "10.0.1.12",
                "fa:16:3e:00:30:03",
            ),
        ]))
        .await;
    assert!(
        reply
            .operation_statuses
            .iter()
            .all(|s| s.operation_status == 0),
        "{reply:?}"
    );
    let before = ports(&agent).await;
    assert!(
        before.iter().all(|p| p.phase == PortPhase::Ready as i32),
        "{before:?}"
    );
    let vm_links: Vec<_> = vms
        .iter()
        .map(|vm| vm.link("eth0").unwrap().unwrap()["ifindex"].clone())
        .collect();
    let carriers: Vec<_> = vms.iter().map(carrier_changes).collect();
    let agentctl_before = agent.agentctl(&["ports"]);

    // Stale devices of the agent's for ports that no longer exist (two: they
    // go in one request, which must take no other device).
    for ghost in ["ghost-0000", "ghost-0001"] {
        let device = format!("tap{ghost}");
        let peer = format!("peer{ghost}");
        host.exec(
            "ip",
            &[
                "link", "add", &device, "type", "veth", "peer", "name", &peer,
            ],
        )
        .unwrap();
        let alias = format!("alcor:{ghost}:0000000000000000");
        host.exec("ip", &["link", "set", &device, "alias", &alias])
            .unwrap();
    }

    agent.kill();
    agent.restart().await;

    let mut control = agent.control().await;
    let after = wait_for("ports to be adopted", Duration::from_secs(10), async || {
        let ports = control
            .list_ports(ListRequest {})
            .await
            .ok()?
            .into_inner()
            .ports;
        ports
            .iter()
            .all(|p| p.phase == PortPhase::Ready as i32)
            .then_some(ports)
    })
    .await;
    assert_eq!(after, before, "same ports, same ifindexes");
    let vm_links_after: Vec<_> = vms
        .iter()
        .map(|vm| vm.link("eth0").unwrap().unwrap()["ifindex"].clone())
        .collect();
    assert_eq!(vm_links_after, vm_links);
    let carriers_after: Vec<_> = vms.iter().map(carrier_changes).collect();
    assert_eq!(
        carriers_after, carriers,
        "a VM's link flapped across the restart"
    );
    assert!(host.link("taptap-port-00").unwrap().is_some());
    for device in ["tapghost-0000", "tapghost-0001"] {
        assert!(
            host.link(device).unwrap().is_none(),
            "the stale device {device} must go"
        );
    }
    let agentctl_after = agent.agentctl(&["ports"]);
    assert_eq!(agentctl_after.stdout, agentctl_before.stdout);

    // The restarted agent keeps honouring revisions it persisted.
    let reply = agent
        .push(v1(vec![vpc("vpc1", 100, "10.0.0.0/16")], vec![], vec![]))
        .await;
    assert_eq!(reply.operation_statuses[0].operation_status, 0);
}

/// The hosts of the restart rounds: (name, underlay address).
const ROUND_HOSTS: [(&str, &str); 2] = [("h1", "198.18.0.1/24"), ("h2", "198.18.0.2/24")];
/// The host whose agent is killed and restarted, round after round.
const RESTARTED: &str = "h1";
/// The MTU of the ports (the fabric's 1500 minus VXLAN's 50).
const PORT_MTU: u32 = 1450;

/// How a VM of the restart rounds is plugged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plug {
    /// A tap the test makes and holds before the push, as a hypervisor does.
    Tap,
    /// A veth the agent makes into the VM's namespace.
    Netns,
}

/// The VMs of the restart rounds, all in VPC `vpc1`, subnet `sn1`: (name,
/// host, plug, IP, MAC).
const ROUND_VMS: [(&str, &str, Plug, &str, &str); 6] = [
    ("ta", "h1", Plug::Tap, "10.0.1.20", "fa:16:3e:00:70:01"),
    ("tb", "h1", Plug::Tap, "10.0.1.21", "fa:16:3e:00:70:02"),
    ("na", "h1", Plug::Netns, "10.0.1.22", "fa:16:3e:00:70:03"),
    ("nb", "h1", Plug::Netns, "10.0.1.23", "fa:16:3e:00:70:04"),
    ("tc", "h2", Plug::Tap, "10.0.1.24", "fa:16:3e:00:70:05"),
    ("nc", "h2", Plug::Netns, "10.0.1.25", "fa:16:3e:00:70:06"),
];

fn round_port_id(vm: &str) -> String {
    format!("{vm}-port-00001")
}

/// The pings of each round, (from, to): tap to tap, tap to namespace and
/// namespace to namespace on the restarted host; tap to tap and namespace
/// to namespace between the hosts, through the restarted host's underlay
/// programs both ways.
const ROUND_PINGS: [(&str, &str); 5] = [
    ("ta", "tb"),
    ("ta", "na"),
    ("na", "nb"),
    ("tb", "tc"),
    ("nb", "nc"),
];

/// What the controller pushes to `host`: its ports, and the other host's
/// VMs as neighbors.
fn round_network(topology: &Topology, vms: &[Netns], host: &str) -> GoalState {
    let mut message = one_subnet(
        ROUND_VMS
            .iter()
            .zip(vms)
            .filter(|((_, on, ..), _)| *on == host)
            .map(|(&(name, _, plug, ip, mac), netns)| match plug {
                Plug::Tap => tap_port(&round_port_id(name), "vpc1", "sn1", ip, mac),
                Plug::Netns => {
                    netns_port(&round_port_id(name), "vpc1", "sn1", ip, mac, netns.name())
                }
            })
            .collect(),
    );
    message.neighbor_states = ROUND_VMS
        .iter()
        .filter(|(_, on, ..)| *on != host)
        .map(|&(name, on, _, ip, mac)| {
            let host_ip = topology.host(on).underlay_ip().to_string();
            neighbor(
                &format!("neighbor-{name}"),
                "vpc1",
                "sn1",
                ip,
                mac,
                &host_ip,
            )
        })
        .collect();
    message
}

/// Pushes `host`'s goal state and waits until all its ports are ready.
async fn push_round_network(agent: &Agent, host: &str, message: GoalState) {
    let ports = message.port_states.len();
    lab::push_until_ready(agent, host, message, ports).await;
}

/// The hitless restart, 20 times over, for hypervisor taps (devices made
/// outside the agent, held by the test as QEMU holds them) and namespace
/// ports alike: in each round, pings at 100 pps run from before a `kill -9`
/// of the agent until after its successor adopted everything and the
/// controller pushed the same state again; not one of them may be lost, in
/// any round. Two hosts, so that the underlay's programs (tc, XDP) are
/// swapped under the traffic too.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_kill_9_restarts_under_100_pps_pings_lose_nothing_on_tap_and_netns_ports() {
    if !privileged("twenty_kill_9_restarts_under_100_pps_pings_lose_nothing_on_tap_and_netns_ports")
    {
        return;
    }
    const ROUNDS: usize = 20;
    /// Pings per round and pair, 10 ms apart (16 ms here: ping's timer),
    /// about 2 s: a restart and push take a few hundred milliseconds, more
    /// on a loaded machine.
    const COUNT: u32 = 120;
    let prefix = unique_prefix("hit");
    let mut topology = Topology::new(&prefix).unwrap();
    for (name, address) in ROUND_HOSTS {
        topology.add_host(name, address).unwrap();
    }
    let vms: Vec<Netns> = ROUND_VMS
        .iter()
        .map(|(name, ..)| {
            let netns = Netns::new(format!("{prefix}-{name}")).unwrap();
            traffic::disable_ipv6(&netns).unwrap();
            netns
        })
        .collect();
    // The hypervisor's taps exist before the agent hears of their ports.
    let _taps: Vec<TapVm> = ROUND_VMS
        .iter()
        .zip(&vms)
        .filter(|((_, _, plug, ..), _)| *plug == Plug::Tap)
        .map(|(&(name, host, _, _, mac), netns)| {
            let device = device_name(&round_port_id(name));
            TapVm::plug(topology.host(host).netns(), &device, netns, mac, PORT_MTU).unwrap()
        })
        .collect();
    let mut agents = Vec::new();
    for (name, _) in ROUND_HOSTS {
        let host = topology.host(name);
        let mut options = host.agent_options();
        // Goal state comes from the test, inside the host's namespace.
        options.args.push("--insecure".into());
        let agent = Agent::start(host.netns(), options).await;
        push_round_network(&agent, name, round_network(&topology, &vms, name)).await;
        agents.push((name, agent));
    }
    for ((_, _, _, ip, _), netns) in ROUND_VMS.iter().zip(&vms) {
        traffic::configure(netns, &format!("{ip}/24"), None).unwrap();
    }
    // A VM's namespace and address, by name.
    let vm = |name: &str| {
        let index = ROUND_VMS.iter().position(|vm| vm.0 == name).unwrap();
        (&vms[index], ROUND_VMS[index].3)
    };
    for (from, to) in ROUND_PINGS {
        let ping = traffic::ping(
            vm(from).0,
            vm(to).1,
            &["-c", "3", "-i", "0.05", "-W", "1"],
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(ping.all_answered(), "{from} -> {to}: {}", ping.summary);
    }

    let agent = &mut agents
        .iter_mut()
        .find(|(name, _)| *name == RESTARTED)
        .unwrap()
        .1;
    let pairs: Vec<String> = ROUND_PINGS
        .iter()
        .map(|(from, to)| format!("{from}->{to}"))
        .collect();
    eprintln!(
        "pings lost per round, {COUNT} per pair: {}",
        pairs.join(" ")
    );
    let mut lost = Vec::new();
    for round in 1..=ROUNDS {
        let count = COUNT.to_string();
        // Exactly COUNT each (no -w, which would send until COUNT came back).
        let args = ["-q", "-c", &count, "-i", "0.01", "-W", "1"];
        let mut pings: Vec<PingRun> = ROUND_PINGS
            .iter()
            .map(|&(from, to)| {
                PingRun::start(vm(from).0, vm(to).1, &args, Duration::from_secs(40)).unwrap()
            })
            .collect();
        // Pings flow before the crash.
        tokio::time::sleep(Duration::from_millis(100)).await;
        agent.kill();
        agent.restart().await;
        // It adopted what exists; the controller pushes the same state again.
        push_round_network(agent, RESTARTED, round_network(&topology, &vms, RESTARTED)).await;
        for ping in &mut pings {
            assert!(
                ping.is_running(),
                "round {round}: the pings ended before the agent was back"
            );
        }
        let counts: Vec<u32> = pings
            .into_iter()
            .zip(&pairs)
            .map(|(ping, pair)| {
                let ping = ping.finish().unwrap();
                assert_eq!(
                    ping.transmitted, COUNT,
                    "round {round}, {pair}: {}",
                    ping.summary
                );
                ping.lost()
            })
            .collect();
        eprintln!("round {round:2}: {counts:?}");
        lost.push(counts);
    }
    let lossy: Vec<String> = lost
        .iter()
        .enumerate()
        .filter(|(_, counts)| counts.iter().any(|&n| n > 0))
        .map(|(round, counts)| format!("round {}: {counts:?}", round + 1))
        .collect();
    assert!(
        lossy.is_empty(),
        "pings lost across restarts ({}): {}",
        pairs.join(" "),
        lossy.join("; ")
    );
}
