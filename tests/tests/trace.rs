//! `agentctl trace` and `agentctl dp ...` against a real agent: two subnets
//! joined by a router, VMs on both, packets run through the real port
//! program, the datapath's maps and counters read back.

use std::process::Output;

use alcor_proto::{control::PortPhase, schema::GoalState};
use alcor_tests::{Agent, AgentOptions, Netns, goalstate::*, privileged, unique_prefix, wait_for};
use serde_json::Value;

const WEB1: &str = "web-1";
const WEB2: &str = "web-2";
const DB1: &str = "db-1";
const WEB1_MAC: &str = "fa:16:3e:00:00:0a";
const WEB2_MAC: &str = "fa:16:3e:00:00:0b";
const DB1_MAC: &str = "fa:16:3e:00:00:14";
const GW1_MAC: &str = "fa:16:3e:ff:ff:01";
const GW2_MAC: &str = "fa:16:3e:ff:ff:02";

/// VPC vpc1 (VNI 100): sn1 10.0.1.0/24 (web-1 .10, web-2 .11) and sn2
/// 10.0.2.0/24 (db-1 .20), both on router r1; each gateway with its own
/// MAC.
fn network(web1: &Netns, web2: &Netns, db1: &Netns) -> GoalState {
    let mut goal_state = v1(
        vec![vpc("vpc1", 100, "10.0.0.0/16")],
        vec![
            with_gateway_mac(subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1"), GW1_MAC),
            with_gateway_mac(subnet("sn2", "vpc1", "10.0.2.0/24", "10.0.2.1"), GW2_MAC),
        ],
        vec![
            netns_port(WEB1, "vpc1", "sn1", "10.0.1.10", WEB1_MAC, web1.name()),
            netns_port(WEB2, "vpc1", "sn1", "10.0.1.11", WEB2_MAC, web2.name()),
            netns_port(DB1, "vpc1", "sn2", "10.0.2.20", DB1_MAC, db1.name()),
        ],
    );
    goal_state.router_states = vec![router_joining("r1", &["sn1", "sn2"])];
    goal_state
}

/// A host running an agent, with the network above pushed and every port
/// ready.
struct Lab {
    // Dropped first: the agent, then the namespaces.
    agent: Agent,
    web1: Netns,
    _web2: Netns,
    _db1: Netns,
    _host: Netns,
}

impl Lab {
    async fn new(tag: &str) -> Lab {
        let prefix = unique_prefix(tag);
        let host = Netns::new(format!("{prefix}-h")).unwrap();
        let web1 = Netns::new(format!("{prefix}-w1")).unwrap();
        let web2 = Netns::new(format!("{prefix}-w2")).unwrap();
        let db1 = Netns::new(format!("{prefix}-d1")).unwrap();
        let agent = Agent::start(&host, AgentOptions::default()).await;
        let reply = agent.push(network(&web1, &web2, &db1)).await;
        assert!(
            reply
                .operation_statuses
                .iter()
                .all(|status| status.operation_status == 0),
            "{reply:?}"
        );
        wait_for(
            "every port to be ready",
            std::time::Duration::from_secs(20),
            async || {
                let ports = agent.ports().await;
                (ports.len() == 3
                    && ports
                        .iter()
                        .all(|port| port.phase == PortPhase::Ready as i32))
                .then_some(())
            },
        )
        .await;
        Lab {
            agent,
            web1,
            _web2: web2,
            _db1: db1,
            _host: host,
        }
    }

    /// `agentctl ARGS`, which must succeed: its stdout.
    fn run(&self, args: &[&str]) -> String {
        let output = self.agent.agentctl(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "agentctl {args:?}: {}\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    fn trace(&self, args: &[&str]) -> String {
        let mut full = vec!["trace"];
        full.extend_from_slice(args);
        let text = self.run(&full);
        eprintln!("$ agentctl {}\n{text}", full.join(" "));
        text
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.run(&full)).unwrap()
    }
}

/// The line of `text` that starts with `prefix`, indentation left out.
fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .map(str::trim_start)
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"))
}

/// A 64-bit counter of the JSON output (a string, as protobuf's JSON has
/// them).
fn count(value: &Value) -> u64 {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("not a 64-bit count: {value}"))
}

/// Stderr of a run that must fail with exit code 1 and print nothing else.
fn failure(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_explains_what_the_datapath_does_with_a_packet() {
    if !privileged("trace_explains_what_the_datapath_does_with_a_packet") {
        return;
    }
    let lab = Lab::new("tr").await;
    let web1_dev = "tapweb-1";
    let db1_dev = "tapdb-1";

    // Same subnet: straight to web-2's port, untouched.
    let text = lab.trace(&[WEB1, "--dst", "10.0.1.11"]);
    assert_eq!(
        line(&text, "port "),
        format!(
            "port {WEB1} ({web1_dev}, 10.0.1.10, {WEB1_MAC}) sends ICMP echo 10.0.1.10 -> \
             10.0.1.11"
        )
    );
    assert_eq!(
        line(&text, "frame:"),
        format!("frame: {WEB1_MAC} -> {WEB2_MAC} (MAC of 10.0.1.11), TTL 64")
    );
    assert_eq!(
        line(&text, "verdict:"),
        "verdict: DELIVERED to port web-2 (tapweb-2) in the same subnet, into its VM's \
         namespace (redirect to peer)"
    );
    assert!(line(&text, "unchanged:").contains(", TTL 64,"), "{text}");

    // Another subnet: through the gateway MAC, routed by r1 to db-1 with
    // sn2's gateway as source and one hop less.
    let text = lab.trace(&[WEB1, "--dst", "10.0.2.20"]);
    assert_eq!(
        line(&text, "frame:"),
        format!("frame: {WEB1_MAC} -> {GW1_MAC} (gateway of 10.0.1.0/24), TTL 64")
    );
    assert_eq!(
        line(&text, "verdict:"),
        format!(
            "verdict: ROUTED to port {DB1} ({db1_dev}) via router r1 (10.0.1.0/24 -> \
             10.0.2.0/24), into its VM's namespace (redirect to peer)"
        )
    );
    let rewritten = line(&text, "rewritten:");
    assert!(
        rewritten.starts_with(&format!(
            "rewritten: {GW2_MAC} -> {DB1_MAC}, TTL 63, IP checksum 0x"
        )),
        "{text}"
    );
    assert!(!rewritten.contains("WRONG"), "{text}");
    let routed = lab.json(&["trace", WEB1, "--dst", "10.0.2.20"]);
    assert_eq!(routed["verdict"], "TRACE_VERDICT_ROUTED");
    assert_eq!(routed["next_hop"]["kind"], "port");
    assert_eq!(routed["next_hop"]["port_id"], DB1);
    assert_eq!(routed["next_hop"]["router_id"], "r1");
    assert_eq!(routed["next_hop"]["delivery"], "peer");
    assert_eq!(routed["input"]["ipv4"]["ttl"], 64);
    assert_eq!(routed["output"]["ipv4"]["ttl"], 63);
    assert_eq!(routed["output"]["ipv4"]["checksum_valid"], true);
    assert_eq!(routed["output"]["eth_src"], GW2_MAC);
    assert_eq!(routed["output"]["eth_dst"], DB1_MAC);
    assert!(
        routed["output_hexdump"]
            .as_str()
            .unwrap()
            .starts_with("0000  fa 16 3e 00 00 14 fa 16  3e ff ff 02 08 00 45 00"),
        "{routed}"
    );

    // TCP across the router, too.
    let text = lab.trace(&[
        WEB1,
        "--dst",
        "10.0.2.20",
        "--proto",
        "tcp",
        "--dport",
        "5432",
    ]);
    assert!(line(&text, "port ").ends_with("sends TCP SYN 10.0.1.10:49152 -> 10.0.2.20:5432"));
    assert!(
        line(&text, "verdict:").starts_with("verdict: ROUTED to port db-1"),
        "{text}"
    );

    // A forged source address: dropped by anti-spoofing, and said so.
    let text = lab.trace(&[WEB1, "--dst", "10.0.2.20", "--src", "10.9.9.9"]);
    assert_eq!(
        line(&text, "verdict:"),
        "verdict: DROPPED (spoofed-ip): the source address 10.9.9.9 is not the port's \
         (10.0.1.10) nor one of its allowed address pairs"
    );
    assert!(
        line(&text, "a real frame").contains("agentctl dp counters web-1"),
        "{text}"
    );
    let spoofed = lab.json(&["trace", WEB1, "--dst", "10.0.2.20", "--src", "10.9.9.9"]);
    assert_eq!(spoofed["verdict"], "TRACE_VERDICT_DROPPED");
    assert_eq!(spoofed["drop_reason"], "spoofed-ip");
    assert_eq!(spoofed["next_hop"]["kind"], "none");

    // A forged source MAC.
    let text = lab.trace(&[WEB1, "--dst", "10.0.1.11", "--src-mac", "fa:16:3e:99:99:99"]);
    assert!(
        line(&text, "verdict:").starts_with(
            "verdict: DROPPED (spoofed-mac): the source MAC fa:16:3e:99:99:99 is not the \
             port's (fa:16:3e:00:00:0a)"
        ),
        "{text}"
    );

    // Nobody has the address: in another subnet, routed to nowhere.
    let text = lab.trace(&[WEB1, "--dst", "10.0.2.99"]);
    assert_eq!(
        line(&text, "verdict:"),
        "verdict: DROPPED (unknown-destination): no VM or neighbor has the address 10.0.2.99 \
         in the VPC (VNI 100)"
    );
    // In its own subnet, the VM's ARP gets no answer: nothing to send to.
    let text = lab.trace(&[WEB1, "--dst", "10.0.1.99"]);
    assert_eq!(
        line(&text, "frame:"),
        format!(
            "frame: {WEB1_MAC} -> ff:ff:ff:ff:ff:ff (broadcast: the VM's ARP request for \
             10.0.1.99 gets no reply), TTL 64"
        )
    );
    let verdict = line(&text, "verdict:");
    assert!(
        verdict.starts_with(
            "verdict: DROPPED (broadcast): the VM's ARP request for 10.0.1.99 gets no reply \
             (no VM or neighbor has 10.0.1.99 in the sender's subnet 10.0.1.0/24"
        ),
        "{text}"
    );

    // ARP for the gateway: answered in place by the program.
    let text = lab.trace(&[WEB1, "--dst", "10.0.1.1", "--proto", "arp"]);
    assert!(line(&text, "port ").ends_with("sends ARP request: who has 10.0.1.1? tell 10.0.1.10"));
    assert_eq!(
        line(&text, "frame:"),
        format!("frame: {WEB1_MAC} -> ff:ff:ff:ff:ff:ff (broadcast)")
    );
    assert_eq!(
        line(&text, "verdict:"),
        format!(
            "verdict: ANSWERED in place: ARP reply, 10.0.1.1 is at {GW1_MAC} (the gateway of \
             10.0.1.0/24)"
        )
    );
    assert_eq!(
        line(&text, "reply:"),
        format!("reply: {GW1_MAC} -> {WEB1_MAC}, ARP reply: 10.0.1.1 is at {GW1_MAC}")
    );
    // ARP for another VM of the subnet: answered too, with its MAC.
    let text = lab.trace(&[WEB1, "--dst", "10.0.1.11", "--proto", "arp"]);
    assert!(
        line(&text, "verdict:").ends_with(&format!(
            "10.0.1.11 is at {WEB2_MAC} (port web-2 (tapweb-2))"
        )),
        "{text}"
    );

    // Ping the gateway: it answers.
    let text = lab.trace(&[WEB1, "--dst", "10.0.1.1"]);
    assert_eq!(
        line(&text, "verdict:"),
        "verdict: ANSWERED in place: the gateway 10.0.1.1 of 10.0.1.0/24 answers the ping with \
         an echo reply"
    );
    assert!(
        line(&text, "reply:").contains("10.0.1.1 -> 10.0.1.10 ICMP echo reply, TTL 64"),
        "{text}"
    );

    // TTL 1 across the router: time exceeded, from the sender's gateway.
    let text = lab.trace(&[WEB1, "--dst", "10.0.2.20", "--ttl", "1"]);
    assert_eq!(
        line(&text, "verdict:"),
        "verdict: ANSWERED in place: the TTL ran out at router r1, so the packet is dropped \
         (counted as ttl-exceeded) and the gateway 10.0.1.1 sends ICMP time exceeded back"
    );
    let reply = line(&text, "reply:");
    assert!(
        reply.starts_with(&format!(
            "reply: {GW1_MAC} -> {WEB1_MAC}, 10.0.1.1 -> 10.0.1.10 ICMP time exceeded"
        )),
        "{text}"
    );
    assert!(!reply.contains("WRONG"), "{text}");

    // With --hex, both frames in full.
    let text = lab.trace(&[WEB1, "--dst", "10.0.2.20", "--hex"]);
    assert!(
        text.contains("\nframe sent (98 bytes):\n0000  fa 16 3e ff ff 01"),
        "{text}"
    );
    assert!(
        text.contains("\nframe out of the program (98 bytes):\n0000  fa 16 3e 00 00 14"),
        "{text}"
    );

    // Traces count nothing: no drop of the reasons above was counted (the
    // VM's own IPv6 chatter is, as ipv6).
    let counters = lab.json(&["dp", "counters", WEB1]);
    let drops = &counters["ports"][0]["drops"];
    for reason in [
        "spoofed-ip",
        "spoofed-mac",
        "unknown-destination",
        "broadcast",
        "ttl-exceeded",
    ] {
        assert_eq!(count(&drops[reason]), 0, "{reason}: {counters}");
    }

    // Errors: exit code 1 and one line on stderr.
    let stderr = failure(lab.agent.agentctl(&["trace", "nope", "--dst", "10.0.1.11"]));
    assert_eq!(stderr, "agentctl: alcor-agent: no port nope\n");
    let output = lab
        .agent
        .agentctl(&["trace", WEB1, "--dst", "10.0.1.11", "--proto", "udp"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "clap's usage error: {output:?}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--dport"),
        "{output:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dp_commands_show_the_maps_and_counters() {
    if !privileged("dp_commands_show_the_maps_and_counters") {
        return;
    }
    let lab = Lab::new("dp").await;

    // Endpoints: every port's address, where it lives.
    let text = lab.run(&["dp", "endpoints"]);
    eprintln!("$ agentctl dp endpoints\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "VNI  IP         MAC                LOCATION",
        "{text}"
    );
    assert_eq!(
        lines[1..],
        [
            format!("100  10.0.1.10  {WEB1_MAC}  local port web-1 (tapweb-1, peer)"),
            format!("100  10.0.1.11  {WEB2_MAC}  local port web-2 (tapweb-2, peer)"),
            format!("100  10.0.2.20  {DB1_MAC}  local port db-1 (tapdb-1, peer)"),
        ]
    );
    let endpoints = lab.json(&["dp", "endpoints"]);
    assert_eq!(endpoints["endpoints"][2]["port_id"], DB1, "{endpoints}");
    assert_eq!(endpoints["endpoints"][2]["delivery"], "peer", "{endpoints}");

    // Routes: both ways between the router's subnets.
    let text = lab.run(&["dp", "routes"]);
    eprintln!("$ agentctl dp routes\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "VNI  FROM               TO                 ROUTER  VIA GATEWAY",
            &format!("100  10.0.1.0/24 (sn1)  10.0.2.0/24 (sn2)  r1      10.0.2.1 ({GW2_MAC})"),
            &format!("100  10.0.2.0/24 (sn2)  10.0.1.0/24 (sn1)  r1      10.0.1.1 ({GW1_MAC})"),
        ]
    );
    let routes = lab.json(&["dp", "routes"]);
    assert_eq!(routes["routes"][0]["router_id"], "r1", "{routes}");
    assert_eq!(routes["routes"][0]["via_gateway_mac"], GW2_MAC, "{routes}");

    // Ports: what each may send from.
    let text = lab.run(&["dp", "ports"]);
    eprintln!("$ agentctl dp ports\n{text}");
    let web1 = line(&text, WEB1);
    for cell in [
        "tapweb-1",
        WEB1_MAC,
        "10.0.1.10",
        "10.0.1.0/24",
        "peer",
        "10.0.1.10/32",
    ] {
        assert!(web1.contains(cell), "{cell} in {text}");
    }

    // Real traffic: web-1 pings its gateway (answered by the program), and
    // ARPs for an address nobody has (dropped: no reply, nothing flooded).
    let vm = &lab.web1;
    vm.exec("ip", &["addr", "add", "10.0.1.10/24", "dev", "eth0"])
        .unwrap();
    let ping = vm
        .output("ping", &["-c", "3", "-i", "0.2", "-W", "2", "10.0.1.1"])
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    let _ = vm
        .output("ping", &["-c", "1", "-W", "1", "10.0.1.99"])
        .unwrap();

    let text = lab.run(&["dp", "counters"]);
    eprintln!("$ agentctl dp counters\n{text}");
    let header = text.lines().next().unwrap();
    assert_eq!(
        header,
        "PORT ID  DEVICE    IFINDEX  RX PACKETS  RX BYTES  TX PACKETS  TX BYTES  ENCAP PACKETS  \
         DECAP PACKETS  DROPPED"
    );
    let web1: Vec<&str> = line(&text, "web-1 ").split_whitespace().collect();
    let rx: u64 = web1[3].parse().unwrap();
    assert!(rx >= 4, "3 pings and an ARP request at least: {text}");
    let unknown = line(&text, "web-1    arp-unknown-target");
    assert!(
        unknown.ends_with(
            "ARP request for an address that is neither the gateway nor a known \
                           address in the sender's subnet: no reply is sent and nothing is \
                           flooded"
        ),
        "{text}"
    );
    // Reasons that never happened are left out. (The VMs' IPv6 router
    // solicitations and the like are dropped as ipv6.)
    assert!(!text.contains("spoofed-ip"), "{text}");
    assert!(!text.contains("db-1     arp-unknown-target"), "{text}");

    let counters = lab.json(&["dp", "counters", WEB1]);
    let port = &counters["ports"][0];
    assert_eq!(port["port_id"], WEB1);
    assert!(
        count(&port["drops"]["arp-unknown-target"]) >= 1,
        "{counters}"
    );
    assert_eq!(
        count(&port["drops"]["spoofed-ip"]),
        0,
        "every reason is listed: {counters}"
    );
    let sum: u64 = port["drops"].as_object().unwrap().values().map(count).sum();
    assert_eq!(count(&port["dropped"]), sum, "{counters}");
    assert!(count(&port["rx_packets"]) >= 4, "{counters}");

    let stderr = failure(lab.agent.agentctl(&["dp", "counters", "nope"]));
    assert_eq!(stderr, "agentctl: alcor-agent: no ready port nope\n");
}
