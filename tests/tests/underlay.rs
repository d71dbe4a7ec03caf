//! The agent on an underlay (`--underlay-dev`), end to end: hosts are
//! namespaces on a fabric bridge (198.18.0.0/15), each with a real agent.
//!
//! - the agent attaches `underlay_in` (tc) and the XDP early drop to its
//!   underlay device and keeps a VXLAN device in external mode, as the
//!   kernel and `agentctl dp tunnels` both say; a restart adopts the same
//!   device (same ifindex); `--underlay-xdp off` detaches XDP;
//! - restarted with other underlay settings, the agent follows them: another
//!   device (the old one loses its programs; the VXLAN device is kept and
//!   takes the new MTU in place), a driver refusing native XDP (the agent
//!   runs without XDP and says so), no underlay at all (everything goes);
//! - a missing underlay device, or one without an IPv4 address, stops the
//!   agent at start with a clear error;
//! - two hosts, each agent pushed its port and the other host's port as a
//!   neighbor: the VMs ping each other through VXLAN, the agentctl views
//!   (dp neighbors, dp tunnels with the other host's MAC from the
//!   neighbour table, dp counters, trace) and the metrics say so, and a
//!   restart of one agent under a running ping loses nothing.
//!
//! The full multi-host suite lives in its own file; this one proves the
//! wiring.

use std::time::Duration;

use alcor_proto::{
    control::PortPhase,
    schema::{GoalState, OperationStatus},
};
use alcor_tests::{
    Agent, AgentOptions, Netns,
    goalstate::*,
    privileged,
    topology::{Host, Topology, UNDERLAY_DEV},
    traffic::{self, PingRun},
    unique_prefix, wait_for,
};
use serde_json::Value;

const VXLAN_DEV: &str = "alcor-vxlan";
/// Bounds every short ping.
const LIMIT: Duration = Duration::from_secs(20);

/// An agent on `host`'s underlay, serving goal state on its underlay
/// address without TLS (the tests' client connects from inside the host).
async fn start_agent(host: &Host) -> Agent {
    let mut options = host.agent_options();
    options.args.push("--insecure".into());
    Agent::start(host.netns(), options).await
}

/// `agentctl ARGS`, which must succeed: its stdout.
fn agentctl(agent: &Agent, args: &[&str]) -> String {
    let output = agent.agentctl(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "agentctl {args:?}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn agentctl_json(agent: &Agent, args: &[&str]) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    serde_json::from_str(&agentctl(agent, &full)).unwrap()
}

/// A 64-bit counter of agentctl's JSON (protobuf JSON writes them as
/// strings).
fn counter(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("not a 64-bit counter: {value}"))
}

/// The kernel's view of the host's VXLAN device: (ifindex, the `ip -d -j`
/// JSON).
fn vxlan_device(host: &Host) -> (u64, Value) {
    let link = host
        .netns()
        .link(VXLAN_DEV)
        .unwrap()
        .expect("the agent's VXLAN device");
    (link["ifindex"].as_u64().unwrap(), link)
}

/// `ip -j link show DEV`'s XDP attachment, if any: (mode, program name).
/// Mode 1 is native (driver), 2 generic.
fn xdp(host: &Host) -> Option<(u64, String)> {
    xdp_of(host.netns(), UNDERLAY_DEV)
}

fn xdp_of(netns: &Netns, device: &str) -> Option<(u64, String)> {
    let link = netns.link(device).unwrap().unwrap();
    let xdp = link.get("xdp")?;
    Some((
        xdp["mode"].as_u64().unwrap(),
        xdp["prog"]["name"].as_str().unwrap_or_default().to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_on_the_underlay_attaches_its_programs_and_adopts_its_vxlan_device() {
    if !privileged("an_agent_on_the_underlay_attaches_its_programs_and_adopts_its_vxlan_device") {
        return;
    }
    let mut topology = Topology::new(&unique_prefix("ul")).unwrap();
    topology.add_host("h1", "198.18.0.1/24").unwrap();
    let host = topology.host("h1");
    let mut agent = start_agent(host).await;

    // The VXLAN device: external mode, UDP 4789, the underlay's MTU, up,
    // marked as the agent's.
    let (ifindex, link) = vxlan_device(host);
    let info = &link["linkinfo"];
    assert_eq!(info["info_kind"], "vxlan", "{link}");
    assert_eq!(info["info_data"]["external"], true, "{link}");
    assert_eq!(info["info_data"]["port"], 4789, "{link}");
    assert_eq!(link["mtu"], 1500, "{link}");
    assert!(
        link["flags"].as_array().unwrap().contains(&"UP".into()),
        "{link}"
    );
    assert_eq!(link["ifalias"], "alcor-vxlan-device", "{link}");
    // underlay_in on the underlay's tc ingress, XDP in native mode.
    assert!(tc_attached(host.netns(), UNDERLAY_DEV));
    assert_eq!(xdp(host), Some((1, "underlay_xdp".into())));

    // What the agent says of it.
    let tunnels = agentctl_json(&agent, &["dp", "tunnels"]);
    let underlay = &tunnels["underlay"];
    assert_eq!(underlay["device"], UNDERLAY_DEV, "{tunnels}");
    assert_eq!(underlay["ip_address"], "198.18.0.1", "{tunnels}");
    assert_eq!(underlay["mtu"], 1500, "{tunnels}");
    assert_eq!(underlay["xdp_configured"], "native", "{tunnels}");
    assert_eq!(underlay["xdp_mode"], "native", "{tunnels}");
    assert_eq!(underlay["vxlan_device"], VXLAN_DEV, "{tunnels}");
    assert_eq!(underlay["vxlan_ifindex"], ifindex, "{tunnels}");
    let text = agentctl(&agent, &["dp", "tunnels"]);
    eprintln!("$ agentctl dp tunnels\n{text}");
    assert!(
        text.contains(&format!(
            "vxlan device  {VXLAN_DEV} (ifindex {ifindex}), external mode, UDP 4789"
        )),
        "{text}"
    );
    let status = agentctl_json(&agent, &["status"]);
    assert_eq!(status["underlay_ip"], "198.18.0.1", "{status}");
    assert_eq!(status["port_mtu"], 1450, "{status}");

    // A crash and a restart: the same device, adopted, not recreated.
    agent.restart().await;
    assert_eq!(vxlan_device(host).0, ifindex);
    assert!(
        agent.log().contains("VXLAN device adopted"),
        "{}",
        agent.log()
    );
    assert_eq!(xdp(host), Some((1, "underlay_xdp".into())));

    // Told to run without XDP, the restarted agent detaches it; tc stays.
    agent
        .options_mut()
        .args
        .extend(["--underlay-xdp".into(), "off".into()]);
    agent.restart().await;
    assert_eq!(xdp(host), None);
    let tunnels = agentctl_json(&agent, &["dp", "tunnels"]);
    assert_eq!(tunnels["underlay"]["xdp_mode"], "off", "{tunnels}");
    assert_eq!(vxlan_device(host).0, ifindex);
    assert!(tc_attached(host.netns(), UNDERLAY_DEV));

    let metrics = agent.metrics().unwrap();
    for name in [
        "alcor_agent_underlay_encap_packets_total 0",
        "alcor_agent_underlay_decap_bytes_total 0",
        "alcor_agent_underlay_dropped_total{reason=\"unknown-vni\"} 0",
    ] {
        assert!(metrics.contains(name), "{name} in\n{metrics}");
    }
}

/// Whether `underlay_in` is on the device's tc ingress.
fn tc_attached(netns: &Netns, device: &str) -> bool {
    netns
        .exec("tc", &["filter", "show", "dev", device, "ingress"])
        .unwrap()
        .contains("underlay_in")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_follows_its_underlay_settings_across_restarts() {
    if !privileged("the_agent_follows_its_underlay_settings_across_restarts") {
        return;
    }
    let host = Netns::new(format!("{}-h", unique_prefix("ulset"))).unwrap();
    // Two candidate underlays: a veth (native and generic XDP), and a
    // bridge (no native XDP) with a smaller MTU.
    for command in [
        "link add ul0 type veth peer name ul1",
        "addr add 198.18.0.1/24 dev ul0",
        "link set ul1 up",
        "link set ul0 up",
        "link add ubr0 mtu 1400 type bridge",
        "addr add 198.18.1.1/24 dev ubr0",
        "link set ubr0 up",
    ] {
        host.exec("ip", &command.split(' ').collect::<Vec<_>>())
            .unwrap();
    }
    let args = |args: &[&str]| AgentOptions {
        args: args.iter().map(|arg| arg.to_string()).collect(),
        ..Default::default()
    };
    let mut agent = Agent::start(
        &host,
        args(&["--underlay-dev", "ul0", "--underlay-xdp", "generic"]),
    )
    .await;
    assert!(tc_attached(&host, "ul0"));
    assert_eq!(xdp_of(&host, "ul0"), Some((2, "underlay_xdp".into())));
    let vxlan = host.link(VXLAN_DEV).unwrap().expect("the VXLAN device");
    let ifindex = vxlan["ifindex"].as_u64().unwrap();
    assert_eq!(vxlan["mtu"], 1500, "{vxlan}");

    // Another device, whose driver has no native XDP.
    *agent.options_mut() = args(&["--underlay-dev", "ubr0"]);
    agent.restart().await;
    assert!(!tc_attached(&host, "ul0"), "the old underlay keeps nothing");
    assert_eq!(xdp_of(&host, "ul0"), None);
    assert!(tc_attached(&host, "ubr0"));
    assert_eq!(xdp_of(&host, "ubr0"), None);
    assert!(
        agent.log().contains("the driver refuses native XDP"),
        "{}",
        agent.log()
    );
    let tunnels = agentctl_json(&agent, &["dp", "tunnels"]);
    let underlay = &tunnels["underlay"];
    assert_eq!(underlay["device"], "ubr0", "{tunnels}");
    assert_eq!(underlay["ip_address"], "198.18.1.1", "{tunnels}");
    assert_eq!(underlay["xdp_configured"], "native", "{tunnels}");
    assert_eq!(underlay["xdp_mode"], "off", "{tunnels}");
    let text = agentctl(&agent, &["dp", "tunnels"]);
    assert!(
        text.contains("xdp           off (configured native: the driver refused it)\n"),
        "{text}"
    );
    let vxlan = host.link(VXLAN_DEV).unwrap().expect("the VXLAN device");
    assert_eq!(vxlan["ifindex"], ifindex, "kept: {vxlan}");
    assert_eq!(vxlan["mtu"], 1400, "the new underlay's: {vxlan}");
    assert_eq!(agentctl_json(&agent, &["status"])["port_mtu"], 1350);

    // No underlay: what the agent set up goes.
    *agent.options_mut() = AgentOptions::default();
    agent.restart().await;
    assert!(!tc_attached(&host, "ubr0"));
    assert!(host.link(VXLAN_DEV).unwrap().is_none());
    let text = agentctl(&agent, &["dp", "tunnels"]);
    assert!(text.starts_with("no underlay"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_underlay_device_is_a_clear_startup_error() {
    if !privileged("a_bad_underlay_device_is_a_clear_startup_error") {
        return;
    }
    let host = Netns::new(format!("{}-h", unique_prefix("ulbad"))).unwrap();
    // A device with no IPv4 address.
    host.exec(
        "ip",
        &[
            "link", "add", "bare0", "type", "veth", "peer", "name", "bare1",
        ],
    )
    .unwrap();
    for (device, expected) in [
        (
            "nosuch0",
            "underlay device nosuch0 does not exist (in the agent's network namespace)",
        ),
        (
            "bare0",
            "underlay device bare0 has no IPv4 address to be this host's tunnel endpoint; give \
             one with --underlay-ip",
        ),
    ] {
        let options = AgentOptions {
            args: vec!["--underlay-dev".into(), device.into()],
            ..Default::default()
        };
        let output = Agent::refused(&host, options).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{device}: {stderr}");
        assert!(stderr.contains(expected), "{device}: {stderr}");
        // Nothing was made.
        assert!(host.link(VXLAN_DEV).unwrap().is_none(), "{device}");
    }
}

/// One VM per host, in VPC vpc1 (VNI 100), subnet sn1 (10.0.1.0/24).
struct Vm {
    netns: Netns,
    port_id: &'static str,
    ip: &'static str,
    mac: &'static str,
}

/// What the agent of the host of `local` is pushed: the VPC, the subnet,
/// the local VM's port, and `remote` as a neighbor on `remote_host`.
fn goal_state(local: &Vm, remote: &Vm, remote_host: &Host) -> GoalState {
    let mut goal_state = one_subnet(vec![netns_port(
        local.port_id,
        "vpc1",
        "sn1",
        local.ip,
        local.mac,
        local.netns.name(),
    )]);
    goal_state.neighbor_states = vec![neighbor(
        &format!("n-{}", remote.port_id),
        "vpc1",
        "sn1",
        remote.ip,
        remote.mac,
        &remote_host.underlay_ip().to_string(),
    )];
    goal_state
}

/// Pushes `goal_state` and waits until the port is ready.
async fn push(agent: &Agent, goal_state: GoalState) {
    let reply = agent.push(goal_state).await;
    assert!(
        reply
            .operation_statuses
            .iter()
            .all(|s| s.operation_status == OperationStatus::Success as i32),
        "{reply:?}"
    );
    wait_for(
        "the port to be ready",
        Duration::from_secs(20),
        async || {
            let ports = agent.ports().await;
            (ports.len() == 1 && ports[0].phase == PortPhase::Ready as i32).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_agents_connect_their_vms_across_the_underlay() {
    if !privileged("two_agents_connect_their_vms_across_the_underlay") {
        return;
    }
    let prefix = unique_prefix("ul2");
    let mut topology = Topology::new(&prefix).unwrap();
    topology.add_host("h1", "198.18.0.1/24").unwrap();
    topology.add_host("h2", "198.18.0.2/24").unwrap();
    let (h1, h2) = (topology.host("h1"), topology.host("h2"));
    let vm = |name: &str, port_id, ip, mac| {
        let netns = Netns::new(format!("{prefix}-{name}")).unwrap();
        traffic::disable_ipv6(&netns).unwrap();
        Vm {
            netns,
            port_id,
            ip,
            mac,
        }
    };
    let vm1 = vm("vm1", "vm1-port", "10.0.1.11", "fa:16:3e:00:01:0b");
    let vm2 = vm("vm2", "vm2-port", "10.0.1.12", "fa:16:3e:00:01:0c");
    let mut agent1 = start_agent(h1).await;
    let agent2 = start_agent(h2).await;
    push(&agent1, goal_state(&vm1, &vm2, h2)).await;
    push(&agent2, goal_state(&vm2, &vm1, h1)).await;
    for vm in [&vm1, &vm2] {
        let eth0 = vm.netns.link("eth0").unwrap().expect("eth0 in the VM");
        assert_eq!(eth0["mtu"], 1450, "{eth0}");
        traffic::configure(&vm.netns, &format!("{}/24", vm.ip), Some("10.0.1.1")).unwrap();
    }

    let ping = traffic::ping(
        &vm1.netns,
        vm2.ip,
        &["-c", "3", "-i", "0.2", "-W", "2"],
        LIMIT,
    )
    .unwrap();
    assert!(ping.all_answered(), "{}", ping.summary);

    // h1's view: the neighbor on h2, the tunnel to it, the port's traffic.
    let neighbors = agentctl_json(&agent1, &["dp", "neighbors"]);
    assert_eq!(
        neighbors["neighbors"],
        serde_json::json!([{
            "vni": 100,
            "ip_address": vm2.ip,
            "mac_address": vm2.mac,
            "host": "198.18.0.2",
            "neighbor_id": "n-vm2-port",
        }]),
        "{neighbors}"
    );
    // The ping made h1's kernel resolve h2 (the first frames went by
    // bpf_redirect_neigh); the agent took h2's MAC from the neighbour table.
    let [h1_mac, h2_mac] = [h1, h2].map(|host| {
        let link = host.netns().link(UNDERLAY_DEV).unwrap().unwrap();
        link["address"].as_str().unwrap().to_string()
    });
    let expected = serde_json::json!([{
        "ip_address": "198.18.0.2",
        "next_hop": "mac",
        "mac_address": h2_mac,
        "endpoints": 1,
    }]);
    let tunnels = wait_for(
        "h1's tunnel to h2 to carry h2's MAC",
        Duration::from_secs(5),
        async || {
            let tunnels = agentctl_json(&agent1, &["dp", "tunnels"]);
            (tunnels["hosts"] == expected).then_some(tunnels)
        },
    )
    .await;
    assert_eq!(tunnels["underlay"]["vnis"], serde_json::json!([100]));
    assert!(counter(&tunnels["encap_packets"]) >= 3, "{tunnels}");
    assert!(counter(&tunnels["decap_packets"]) >= 3, "{tunnels}");
    assert_eq!(counter(&tunnels["dropped"]), 0, "{tunnels}");
    let counters = agentctl_json(&agent1, &["dp", "counters", vm1.port_id]);
    let port = &counters["ports"][0];
    assert!(counter(&port["encap_packets"]) >= 3, "{counters}");
    assert!(counter(&port["decap_packets"]) >= 3, "{counters}");
    eprintln!(
        "$ agentctl dp tunnels\n{}",
        agentctl(&agent1, &["dp", "tunnels"])
    );
    let metrics = agent1.metrics().unwrap();
    assert!(
        !metrics.contains("alcor_agent_underlay_encap_packets_total 0\n"),
        "{metrics}"
    );

    // The trace says where a ping to vm2 goes, and with which headers.
    let text = agentctl(&agent1, &["trace", vm1.port_id, "--dst", vm2.ip]);
    eprintln!("$ agentctl trace {} --dst {}\n{text}", vm1.port_id, vm2.ip);
    assert!(
        text.contains(
            "verdict: ENCAPSULATED 10.0.1.12 lives on host 198.18.0.2: encapsulated in VXLAN \
             (VNI 100) to it, out of the underlay device underlay0"
        ),
        "{text}"
    );
    assert!(
        text.contains("  outer: 198.18.0.1 -> 198.18.0.2 UDP "),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            " -> 4789, VXLAN VNI 100, TTL 64, out of underlay0, MACs {h1_mac} -> {h2_mac}\n"
        )),
        "{text}"
    );
    let trace = agentctl_json(&agent1, &["trace", vm1.port_id, "--dst", vm2.ip]);
    assert_eq!(trace["verdict"], "TRACE_VERDICT_ENCAPSULATED", "{trace}");
    assert_eq!(trace["next_hop"]["kind"], "tunnel", "{trace}");
    assert_eq!(trace["next_hop"]["remote_host"], "198.18.0.2", "{trace}");
    let outer = &trace["encapsulation"];
    assert_eq!(outer["outer_src_ip"], "198.18.0.1", "{trace}");
    assert_eq!(outer["outer_dst_ip"], "198.18.0.2", "{trace}");
    assert_eq!(outer["udp_dst_port"], 4789, "{trace}");
    assert_eq!(outer["vni"], 100, "{trace}");
    assert_eq!(outer["next_hop"], "mac", "{trace}");
    assert_eq!(outer["outer_dst_mac"], h2_mac, "{trace}");
    assert_eq!(outer["inner"]["ipv4"]["dst"], vm2.ip, "{trace}");

    // h1's agent crashes and restarts under a running ping: its device is
    // adopted, and not one ping is lost.
    let vxlan = vxlan_device(h1).0;
    const COUNT: u32 = 300;
    let mut pinging = PingRun::start(
        &vm1.netns,
        vm2.ip,
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
    agent1.restart().await;
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
    assert_eq!(vxlan_device(h1).0, vxlan);
    let ping = traffic::ping(
        &vm2.netns,
        vm1.ip,
        &["-c", "3", "-i", "0.2", "-W", "2"],
        LIMIT,
    )
    .unwrap();
    assert!(ping.all_answered(), "{}", ping.summary);
}
