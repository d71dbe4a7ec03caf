//! The DHCP responder through the real agent: goal state pushed over gRPC
//! (VPC, subnet with DNS servers and extra options, a router whose rule
//! becomes an option-121 route, netns-bound ports, DHCP entries with host
//! names), then real clients in the VM namespaces the agent plugged:
//! udhcpc, dhclient and dhcpcd get exactly what the goal state says, and
//! every client state is answered as RFC 2131 wants. Leases and counters
//! are read back through the control socket, `agentctl` and the metrics.
//!
//! (tests/tests/dhcp.rs drives the responder in-process, without agent.)
//!
//! Nothing answers ARP for the gateway yet (the datapath will), so each VM
//! gets a static neighbour entry for it, which unicast renewals need. Every
//! client run is bounded in tries and time.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use alcor_proto::{
    control::{
        DhcpCounters, GetCountersRequest, GetDhcpCountersRequest, Lease, ListRequest, PortPhase,
    },
    schema::{GoalState, OperationStatus, OperationType, PortState},
};
use alcor_tests::{
    Agent, AgentOptions, Netns,
    dhcp::{ClientDir, Dhclient, Eth0, Record, UDHCPC_SCRIPT, dhcpcd_once, gateway_neighbour},
    goalstate::*,
    privileged, unique_prefix, wait_for,
};
use nix::sys::signal::Signal;

const GATEWAY: &str = "10.0.1.1";
/// The gateway MAC `goalstate::subnet` gives.
const GATEWAY_MAC: &str = "fa:16:3e:00:00:01";
/// Option 121 carries a route to the metadata address via this hop.
const METADATA_HOP: &str = "10.0.1.5";
const NTP: &str = "10.0.0.5";
/// How long a client may take to be bound (it retries every second).
const BIND_TIMEOUT: Duration = Duration::from_secs(20);

/// A VM: its namespace and the port the agent plugs into it.
struct Vm {
    netns: Netns,
    port_id: String,
    vpc_id: String,
    mac: String,
    ip: String,
    hostname: String,
}

impl Vm {
    fn new(prefix: &str, name: &str, vpc_id: &str, mac: &str, ip: &str) -> Vm {
        Vm {
            netns: Netns::new(format!("{prefix}-{name}")).unwrap(),
            port_id: format!("port-{name}"),
            vpc_id: vpc_id.into(),
            mac: mac.into(),
            ip: ip.into(),
            hostname: format!("vm-{name}"),
        }
    }

    fn subnet_id(&self) -> String {
        format!("{}-subnet", self.vpc_id)
    }

    fn port(&self) -> PortState {
        netns_port(
            &self.port_id,
            &self.vpc_id,
            &self.subnet_id(),
            &self.ip,
            &self.mac,
            self.netns.name(),
        )
    }

    /// Once the agent plugged eth0: MTU 1500, so that the client must set
    /// the port's 1450 from option 26, and the gateway's neighbour entry.
    fn prepare(&self) {
        self.netns
            .exec("ip", &["link", "set", "eth0", "mtu", "1500"])
            .unwrap();
        gateway_neighbour(&self.netns, GATEWAY, GATEWAY_MAC).unwrap();
    }

    /// eth0 has the port's address in a /24, MTU 1450, the default route
    /// and option 121's metadata route.
    fn assert_configured(&self) {
        let eth0 = Eth0::of(&self.netns).unwrap();
        assert_eq!(eth0.addresses, [format!("{}/24", self.ip)], "{eth0:?}");
        assert_eq!(eth0.mtu, 1450, "MTU from option 26: {eth0:?}");
        assert!(
            eth0.has_route(&format!("default via {GATEWAY}")),
            "{eth0:?}"
        );
        assert!(
            eth0.has_route(&format!("169.254.169.254 via {METADATA_HOP}")),
            "{eth0:?}"
        );
    }
}

/// VPC `vpc_id` (10.0.0.0/16) with subnet `<vpc_id>-subnet` (10.0.1.0/24,
/// DNS servers `dns`, NTP and search domain as extra options), a router
/// whose table routes the metadata address, and the VMs' ports with a DHCP
/// entry each.
fn network(vpc_id: &str, vni: u32, dns: &[&str], vms: &[&Vm]) -> GoalState {
    let subnet_id = format!("{vpc_id}-subnet");
    let mut goal_state = v1(
        vec![vpc(vpc_id, vni, "10.0.0.0/16")],
        vec![dhcp_subnet(
            &subnet_id,
            vpc_id,
            "10.0.1.0/24",
            GATEWAY,
            dns,
            &[("ntp-server", NTP), ("domain-search", "example.org")],
        )],
        vms.iter().map(|vm| vm.port()).collect(),
    );
    goal_state.router_states = vec![router(
        &format!("{vpc_id}-router"),
        &subnet_id,
        &[("169.254.169.254/32", METADATA_HOP)],
    )];
    goal_state.dhcp_states = vms
        .iter()
        .map(|vm| {
            dhcp_entry(
                &format!("{}-dhcp", vm.port_id),
                &subnet_id,
                &vm.mac,
                &vm.ip,
                &vm.hostname,
            )
        })
        .collect();
    goal_state
}

/// A host namespace running an agent, and a directory for client scripts.
struct Lab {
    prefix: String,
    // Dropped first: the agent, then the host namespace.
    agent: Agent,
    host: Netns,
    clients: ClientDir,
}

impl Lab {
    async fn new(tag: &str, args: &[&str]) -> Lab {
        let prefix = unique_prefix(tag);
        let host = Netns::new(format!("{prefix}-h")).unwrap();
        let options = AgentOptions {
            args: args.iter().map(|arg| arg.to_string()).collect(),
            ..Default::default()
        };
        let agent = Agent::start(&host, options).await;
        Lab {
            prefix,
            agent,
            host,
            clients: ClientDir::new().unwrap(),
        }
    }

    fn vm(&self, name: &str, vpc_id: &str, mac: &str, ip: &str) -> Vm {
        Vm::new(&self.prefix, name, vpc_id, mac, ip)
    }

    /// Pushes `message`, which must succeed in full, and waits until every
    /// port is ready.
    async fn push(&self, message: GoalState) {
        let reply = self.agent.push(message).await;
        assert!(
            reply
                .operation_statuses
                .iter()
                .all(|s| s.operation_status == OperationStatus::Success as i32),
            "{reply:#?}\n{}",
            self.agent.log()
        );
        wait_for(
            "every port to be ready",
            Duration::from_secs(10),
            async || {
                let ports = self.agent.ports().await;
                ports
                    .iter()
                    .all(|p| p.phase == PortPhase::Ready as i32)
                    .then_some(())
            },
        )
        .await;
    }

    async fn leases(&self) -> Vec<Lease> {
        self.agent
            .control()
            .await
            .list_leases(ListRequest {})
            .await
            .expect("ListLeases")
            .into_inner()
            .leases
    }

    async fn lease_of(&self, vm: &Vm) -> Option<Lease> {
        self.leases()
            .await
            .into_iter()
            .find(|lease| lease.port_id == vm.port_id && lease.mac_address == vm.mac)
    }

    /// Waits until `vm`'s lease is in `state`.
    async fn wait_for_lease(&self, vm: &Vm, state: &str) -> Lease {
        wait_for(
            &format!("{}'s lease to be {state}", vm.port_id),
            Duration::from_secs(10),
            async || self.lease_of(vm).await.filter(|lease| lease.state == state),
        )
        .await
    }

    async fn counters(&self) -> DhcpCounters {
        self.agent
            .control()
            .await
            .get_dhcp_counters(GetDhcpCountersRequest {})
            .await
            .expect("GetDhcpCounters")
            .into_inner()
    }

    /// `agentctl ARGS`, which must succeed.
    fn agentctl(&self, args: &[&str]) -> String {
        let output = self.agent.agentctl(args);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "agentctl {args:?}: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }
}

fn sent(counters: &DhcpCounters, message: &str) -> u64 {
    counters.sent.get(message).copied().unwrap_or(0)
}

fn received(counters: &DhcpCounters, message: &str) -> u64 {
    counters.received.get(message).copied().unwrap_or(0)
}

fn dropped(counters: &DhcpCounters, reason: &str) -> u64 {
    counters.dropped.get(reason).copied().unwrap_or(0)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The `agentctl leases` row of `port_id`, split into cells.
fn lease_row(table: &str, port_id: &str) -> Vec<String> {
    table
        .lines()
        .find(|line| line.starts_with(port_id))
        .unwrap_or_else(|| panic!("no lease of {port_id} in\n{table}"))
        .split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .map(String::from)
        .collect()
}

/// What udhcpc was told matches the goal state, in full.
fn assert_udhcpc_record(record: &Record, vm: &Vm, dns: &str) {
    let expected: HashMap<&str, String> = HashMap::from([
        ("ip", vm.ip.clone()),
        ("subnet", "255.255.255.0".into()),
        ("router", GATEWAY.into()),
        ("dns", dns.into()),
        ("hostname", vm.hostname.clone()),
        ("domain", "openstacklocal".into()),
        ("mtu", "1450".into()),
        ("serverid", GATEWAY.into()),
        ("ntpsrv", NTP.into()),
        ("search", "example.org".into()),
        (
            "staticroutes",
            format!("169.254.169.254/32 {METADATA_HOP} 0.0.0.0/0 {GATEWAY}"),
        ),
    ]);
    for (key, value) in &expected {
        assert_eq!(
            record.get(*key),
            Some(value),
            "udhcpc's {key} in {record:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn udhcpc_gets_the_goal_state_renews_and_releases_and_metrics_count_it() {
    if !privileged("udhcpc_gets_the_goal_state_renews_and_releases_and_metrics_count_it") {
        return;
    }
    let lab = Lab::new("dau", &[]).await;
    let vm = lab.vm("u", "vpc1", "fa:16:3e:00:40:01", "10.0.1.10");
    lab.push(network("vpc1", 100, &["10.0.0.2", "10.0.0.3"], &[&vm]))
        .await;
    vm.prepare();

    let script = lab.clients.script("udhcpc", UDHCPC_SCRIPT).unwrap();
    let client = alcor_tests::dhcp::spawn_udhcpc(&vm.netns, &script, 20).unwrap();
    let bound = lab
        .clients
        .wait_for("udhcpc.bound.env", BIND_TIMEOUT)
        .unwrap();
    assert_udhcpc_record(&bound, &vm, "10.0.0.2 10.0.0.3");
    assert_eq!(bound["lease"], "86400");
    vm.assert_configured();

    // The agent lists the lease, as bound for a day, with the host name.
    let lease = lab.wait_for_lease(&vm, "bound").await;
    assert_eq!(
        (lease.vpc_id.as_str(), lease.ip_address.as_str()),
        ("vpc1", "10.0.1.10")
    );
    assert_eq!(lease.hostname, "vm-u");
    let left = lease.expires_at.saturating_sub(unix_now());
    assert!((86_300..=86_400).contains(&left), "expires in {left} s");
    let table = lab.agentctl(&["leases"]);
    assert!(table.starts_with("PORT "), "{table}");
    let row = lease_row(&table, "port-u");
    assert_eq!(row[1..4], ["fa:16:3e:00:40:01", "10.0.1.10", "bound"]);
    assert!(
        row[4].starts_with("in 23h59m") || row[4] == "in 1d",
        "{row:?}"
    );
    assert_eq!(row[5], "vm-u");

    // SIGUSR1: a renewal (REQUEST unicast to the server with ciaddr), ACKed.
    let before = lab.counters().await;
    client.signal(Signal::SIGUSR1).unwrap();
    let renewed = lab
        .clients
        .wait_for("udhcpc.renew.env", Duration::from_secs(10))
        .unwrap();
    assert_eq!(renewed["ip"], "10.0.1.10");
    // (udhcpc waits a second for the unicast answer, then broadcasts: on
    // a loaded machine a renewal may take two REQUESTs.)
    let after = lab.counters().await;
    assert!(received(&after, "request") > received(&before, "request"));
    assert!(sent(&after, "ack") > sent(&before, "ack"));
    assert_eq!(sent(&after, "nak"), 0);

    // SIGUSR2: a RELEASE, which frees the lease.
    client.signal(Signal::SIGUSR2).unwrap();
    let released = lab.wait_for_lease(&vm, "released").await;
    assert!(released.expires_at <= unix_now(), "{released:?}");
    let row = lease_row(&lab.agentctl(&["leases"]), "port-u");
    assert_eq!(row[3], "released", "{row:?}");
    assert!(row[4].starts_with("expire"), "{row:?}");
    let json: serde_json::Value =
        serde_json::from_str(&lab.agentctl(&["--json", "leases"])).unwrap();
    assert_eq!(json["leases"][0]["state"], "released", "{json}");
    assert_eq!(json["leases"][0]["hostname"], "vm-u", "{json}");

    let counters = lab.counters().await;
    assert_eq!(counters.leases_released, 1);
    assert_eq!(received(&counters, "release"), 1);
    // Prometheus sees the same counts.
    let metrics = lab.agent.metrics().unwrap();
    for line in [
        format!(
            "alcor_agent_dhcp_received_total{{message=\"discover\"}} {}",
            received(&counters, "discover")
        ),
        format!(
            "alcor_agent_dhcp_received_total{{message=\"request\"}} {}",
            received(&counters, "request")
        ),
        format!(
            "alcor_agent_dhcp_sent_total{{message=\"offer\"}} {}",
            sent(&counters, "offer")
        ),
        format!(
            "alcor_agent_dhcp_sent_total{{message=\"ack\"}} {}",
            sent(&counters, "ack")
        ),
        "alcor_agent_dhcp_received_total{message=\"release\"} 1".into(),
        "alcor_agent_dhcp_dropped_total{reason=\"unknown_mac\"} 0".into(),
        "alcor_agent_dhcp_leases_released_total 1".into(),
    ] {
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    assert!(sent(&counters, "ack") >= 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn dhclient_is_naked_at_init_reboot_then_bound_and_renews_and_releases() {
    if !privileged("dhclient_is_naked_at_init_reboot_then_bound_and_renews_and_releases") {
        return;
    }
    // The shortest lease the agent gives: T1 comes 30 s after binding.
    let lab = Lab::new("dad", &["--dhcp-lease-time", "60"]).await;
    let vm = lab.vm("d", "vpc1", "fa:16:3e:00:40:02", "10.0.1.20");
    lab.push(network("vpc1", 100, &["10.0.0.4"], &[&vm])).await;
    vm.prepare();

    // The client remembers an address the goal state does not give it: it
    // asks for it first (INIT-REBOOT), gets a NAK, and starts over.
    let dhclient = Dhclient::new(&lab.clients, "dhclient").unwrap();
    dhclient.remember("10.0.1.77", GATEWAY).unwrap();
    let output = dhclient.run(&vm.netns, &[]).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counters = lab.counters().await;
    assert_eq!(
        sent(&counters, "nak"),
        1,
        "INIT-REBOOT with a wrong address"
    );

    let bound = lab.clients.recorded("dhclient.BOUND.env").expect("BOUND");
    for (key, value) in [
        ("new_ip_address", "10.0.1.20"),
        ("new_subnet_mask", "255.255.255.0"),
        ("new_routers", GATEWAY),
        ("new_domain_name_servers", "10.0.0.4"),
        ("new_host_name", "vm-d"),
        ("new_domain_name", "openstacklocal"),
        ("new_interface_mtu", "1450"),
        ("new_ntp_servers", NTP),
        ("new_domain_search", "example.org."),
        ("new_dhcp_server_identifier", GATEWAY),
        ("new_dhcp_lease_time", "60"),
        (
            "new_rfc3442_classless_static_routes",
            "32 169 254 169 254 10 0 1 5 0 10 0 1 1",
        ),
    ] {
        assert_eq!(
            bound.get(key).map(String::as_str),
            Some(value),
            "{key} in {bound:?}"
        );
    }
    vm.assert_configured();
    lab.wait_for_lease(&vm, "bound").await;

    // At T1 (30 s) dhclient renews by unicast: ACKed.
    let renewed = lab
        .clients
        .wait_for("dhclient.RENEW.env", Duration::from_secs(45))
        .unwrap();
    assert_eq!(renewed["new_ip_address"], "10.0.1.20");
    let counters = lab.counters().await;
    assert!(sent(&counters, "ack") >= 2, "{counters:?}");
    assert_eq!(sent(&counters, "nak"), 1);

    // dhclient -r stops the running client and releases the lease.
    let output = dhclient.run(&vm.netns, &["-r"]).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    lab.wait_for_lease(&vm, "released").await;
    assert_eq!(lab.counters().await.leases_released, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn dhcpcd_gets_the_goal_state_and_its_inform_is_answered() {
    if !privileged("dhcpcd_gets_the_goal_state_and_its_inform_is_answered") {
        return;
    }
    let lab = Lab::new("dac", &[]).await;
    let vm = lab.vm("c", "vpc1", "fa:16:3e:00:40:03", "10.0.1.30");
    lab.push(network("vpc1", 100, &["10.0.0.6"], &[&vm])).await;
    vm.prepare();

    let output = dhcpcd_once(&lab.clients, &vm.netns, &[]).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bound = lab.clients.recorded("dhcpcd.BOUND.env").expect("BOUND");
    for (key, value) in [
        ("new_ip_address", "10.0.1.30"),
        ("new_subnet_mask", "255.255.255.0"),
        ("new_routers", GATEWAY),
        ("new_domain_name_servers", "10.0.0.6"),
        ("new_host_name", "vm-c"),
        ("new_domain_name", "openstacklocal"),
        ("new_interface_mtu", "1450"),
        ("new_ntp_servers", NTP),
        ("new_domain_search", "example.org"),
        (
            "new_classless_static_routes",
            "169.254.169.254/32 10.0.1.5 0.0.0.0/0 10.0.1.1",
        ),
    ] {
        assert_eq!(
            bound.get(key).map(String::as_str),
            Some(value),
            "{key} in {bound:?}"
        );
    }
    vm.assert_configured();
    lab.wait_for_lease(&vm, "bound").await;

    // INFORM: the client has its address and wants the rest: an ACK with
    // the options and no lease time.
    let before = lab.counters().await;
    let output = dhcpcd_once(&lab.clients, &vm.netns, &["--inform", "10.0.1.30/24"]).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let informed = lab.clients.recorded("dhcpcd.INFORM.env").expect("INFORM");
    assert_eq!(informed["new_domain_name_servers"], "10.0.0.6");
    assert_eq!(informed["new_interface_mtu"], "1450");
    assert_eq!(informed["new_host_name"], "vm-c");
    assert!(
        !informed.contains_key("new_dhcp_lease_time"),
        "{informed:?}"
    );
    let after = lab.counters().await;
    assert_eq!(received(&after, "inform"), received(&before, "inform") + 1);
    assert_eq!(sent(&after, "ack"), sent(&before, "ack") + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vpcs_with_the_same_cidr_mac_and_address_each_get_their_own() {
    if !privileged("two_vpcs_with_the_same_cidr_mac_and_address_each_get_their_own") {
        return;
    }
    let lab = Lab::new("da2", &[]).await;
    // The same MAC and address in two VPCs on one host.
    let a = lab.vm("a", "vpc-a", "fa:16:3e:00:40:04", "10.0.1.40");
    let b = lab.vm("b", "vpc-b", "fa:16:3e:00:40:04", "10.0.1.40");
    let mut message = network("vpc-a", 301, &["10.0.0.7"], &[&a]);
    let other = network("vpc-b", 302, &["10.0.0.8"], &[&b]);
    message.vpc_states.extend(other.vpc_states);
    message.subnet_states.extend(other.subnet_states);
    message.port_states.extend(other.port_states);
    message.router_states.extend(other.router_states);
    message.dhcp_states.extend(other.dhcp_states);
    lab.push(message).await;

    for (vm, dns) in [(&a, "10.0.0.7"), (&b, "10.0.0.8")] {
        vm.prepare();
        let name = format!("udhcpc-{}", vm.port_id);
        let script = lab.clients.script(&name, UDHCPC_SCRIPT).unwrap();
        assert!(
            alcor_tests::dhcp::udhcpc_once(&vm.netns, &script, 10).unwrap(),
            "{} got no lease",
            vm.port_id
        );
        let bound = lab.clients.recorded(&format!("{name}.bound.env")).unwrap();
        assert_udhcpc_record(&bound, vm, dns);
        vm.assert_configured();
    }
    let mut leases: Vec<(String, String, String, String)> = lab
        .leases()
        .await
        .into_iter()
        .map(|l| (l.vpc_id, l.port_id, l.ip_address, l.hostname))
        .collect();
    leases.sort();
    assert_eq!(
        leases,
        [
            (
                "vpc-a".into(),
                "port-a".into(),
                "10.0.1.40".into(),
                "vm-a".into()
            ),
            (
                "vpc-b".into(),
                "port-b".into(),
                "10.0.1.40".into(),
                "vm-b".into()
            ),
        ]
    );
    let counters = lab.counters().await;
    assert_eq!(dropped(&counters, "wrong_vpc"), 0);
    assert_eq!(sent(&counters, "nak"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_port_gets_no_more_answers_and_an_unknown_mac_gets_nothing() {
    if !privileged("a_deleted_port_gets_no_more_answers_and_an_unknown_mac_gets_nothing") {
        return;
    }
    let lab = Lab::new("dax", &[]).await;
    // A tap-bound port whose device the "hypervisor" (the test) made: a
    // veth whose far end is the VM's eth0. A port delete leaves it, as a
    // hypervisor's tap stays while the VM runs.
    let tap_vm = lab.vm("t", "vpc1", "fa:16:3e:00:40:05", "10.0.1.50");
    let tap_port_id = "tapport-00001";
    let device = format!("tap{}", &tap_port_id[..11]);
    lab.host
        .exec(
            "ip",
            &[
                "link",
                "add",
                &device,
                "mtu",
                "1450",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                tap_vm.netns.name(),
            ],
        )
        .unwrap();
    lab.host
        .exec("ip", &["link", "set", &device, "up"])
        .unwrap();
    tap_vm
        .netns
        .exec("ip", &["link", "set", "eth0", "address", &tap_vm.mac, "up"])
        .unwrap();
    // A netns-bound port whose VM will change its MAC.
    let stranger = lab.vm("s", "vpc1", "fa:16:3e:00:40:06", "10.0.1.51");
    let mut message = network("vpc1", 100, &["10.0.0.2"], &[&stranger]);
    let tap_port = tap_port(tap_port_id, "vpc1", "vpc1-subnet", &tap_vm.ip, &tap_vm.mac);
    message.port_states.push(tap_port.clone());
    message.dhcp_states.push(dhcp_entry(
        "tap-dhcp",
        "vpc1-subnet",
        &tap_vm.mac,
        &tap_vm.ip,
        "vm-t",
    ));
    lab.push(message).await;
    tap_vm.prepare();
    stranger.prepare();

    let script = lab.clients.script("udhcpc-tap", UDHCPC_SCRIPT).unwrap();
    assert!(
        alcor_tests::dhcp::udhcpc_once(&tap_vm.netns, &script, 10).unwrap(),
        "the tap port's VM got no lease"
    );
    let offers = sent(&lab.counters().await, "offer");

    // The port goes; its device and the VM's eth0 stay.
    let reply = lab
        .agent
        .push(v1(
            vec![],
            vec![],
            vec![tap_port.with(OperationType::Delete, 2)],
        ))
        .await;
    assert_eq!(
        reply.operation_statuses[0].operation_status,
        OperationStatus::Success as i32,
        "{reply:?}"
    );
    assert!(lab.host.link(&device).unwrap().is_some(), "{device} stays");
    // Its lease went with it.
    wait_for(
        "the deleted port's lease to go",
        Duration::from_secs(10),
        async || lab.lease_of(&tap_vm).await.is_none().then_some(()),
    )
    .await;
    let before = lab.counters().await;
    let script = lab.clients.script("udhcpc-deleted", UDHCPC_SCRIPT).unwrap();
    assert!(
        !alcor_tests::dhcp::udhcpc_once(&tap_vm.netns, &script, 3).unwrap(),
        "a deleted port got a lease"
    );
    let after = lab.counters().await;
    assert_eq!(
        sent(&after, "offer"),
        offers,
        "nothing offered after the delete"
    );
    assert!(
        dropped(&after, "unknown_port") > dropped(&before, "unknown_port"),
        "{after:?}"
    );

    // agentctl dhcp shows the drop; --json lists every reason, zeros too.
    let unknown_port = dropped(&after, "unknown_port");
    let table = lab.agentctl(&["dhcp"]);
    let line = table
        .lines()
        .find(|line| line.contains("unknown_port"))
        .unwrap_or_else(|| panic!("no unknown_port in\n{table}"));
    assert!(line.ends_with(&format!(" {unknown_port}")), "{table}");
    assert!(
        !table.contains("spoofed_chaddr"),
        "zero drops are left out: {table}"
    );
    let json: serde_json::Value = serde_json::from_str(&lab.agentctl(&["--json", "dhcp"])).unwrap();
    assert_eq!(
        json["dropped"]["unknown_port"],
        unknown_port.to_string(),
        "{json}"
    );
    assert_eq!(json["dropped"]["spoofed_chaddr"], "0", "{json}");
    let metrics = lab.agent.metrics().unwrap();
    let line = format!("alcor_agent_dhcp_dropped_total{{reason=\"unknown_port\"}} {unknown_port}");
    assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");

    // A MAC that is not the port's (nor one of its address pairs') gets
    // nothing: the datapath's anti-spoofing drops its DISCOVERs before
    // they reach the responder, and counts them.
    let spoofed_before = datapath_drops(&lab.agent, &stranger.port_id, "spoofed-mac").await;
    let before = lab.counters().await;
    stranger
        .netns
        .exec(
            "ip",
            &["link", "set", "eth0", "address", "02:00:00:00:40:99"],
        )
        .unwrap();
    let script = lab
        .clients
        .script("udhcpc-stranger", UDHCPC_SCRIPT)
        .unwrap();
    assert!(
        !alcor_tests::dhcp::udhcpc_once(&stranger.netns, &script, 3).unwrap(),
        "an unknown MAC got a lease"
    );
    let spoofed =
        datapath_drops(&lab.agent, &stranger.port_id, "spoofed-mac").await - spoofed_before;
    assert!(spoofed >= 3, "{spoofed} DISCOVERs dropped as spoofed");
    let after = lab.counters().await;
    assert_eq!(sent(&after, "offer"), offers);
    assert_eq!(
        received(&after, "discover"),
        received(&before, "discover"),
        "the responder saw none of them"
    );
}

/// The datapath's count of frames from `port_id`'s VM dropped for `reason`
/// (`agentctl dp counters`).
async fn datapath_drops(agent: &Agent, port_id: &str, reason: &str) -> u64 {
    let counters = agent
        .control()
        .await
        .get_dp_counters(GetCountersRequest {
            port_id: port_id.into(),
        })
        .await
        .expect("GetDpCounters")
        .into_inner();
    counters.ports[0].drops.get(reason).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_lease_keeps_the_lease_and_the_renewal_is_acked() {
    if !privileged("kill_9_mid_lease_keeps_the_lease_and_the_renewal_is_acked") {
        return;
    }
    let mut lab = Lab::new("dak", &[]).await;
    let vm = lab.vm("k", "vpc1", "fa:16:3e:00:40:07", "10.0.1.60");
    lab.push(network("vpc1", 100, &["10.0.0.2"], &[&vm])).await;
    vm.prepare();
    let script = lab.clients.script("udhcpc", UDHCPC_SCRIPT).unwrap();
    let client = alcor_tests::dhcp::spawn_udhcpc(&vm.netns, &script, 20).unwrap();
    lab.clients
        .wait_for("udhcpc.bound.env", BIND_TIMEOUT)
        .unwrap();
    let before = lab.wait_for_lease(&vm, "bound").await;
    // Leases are committed in batches at most 200 ms apart.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SIGKILL, then a new agent on the same state directory.
    lab.agent.restart().await;
    wait_for(
        "the port to be ready again",
        Duration::from_secs(10),
        async || {
            let ports = lab.agent.ports().await;
            (ports.len() == 1 && ports[0].phase == PortPhase::Ready as i32).then_some(())
        },
    )
    .await;
    let after = lab.lease_of(&vm).await.expect("the lease survived");
    assert_eq!(after, before);
    let row = lease_row(&lab.agentctl(&["leases"]), "port-k");
    assert_eq!(row[1..4], ["fa:16:3e:00:40:07", "10.0.1.60", "bound"]);

    // The client renews with the new agent: ACKed.
    client.signal(Signal::SIGUSR1).unwrap();
    let renewed = lab
        .clients
        .wait_for("udhcpc.renew.env", Duration::from_secs(10))
        .unwrap();
    assert_eq!(renewed["ip"], "10.0.1.60");
    let counters = lab.counters().await;
    assert!(sent(&counters, "ack") >= 1, "{counters:?}");
    assert_eq!(sent(&counters, "nak"), 0, "{counters:?}");
    let renewed = lab.wait_for_lease(&vm, "bound").await;
    assert!(renewed.expires_at >= before.expires_at, "{renewed:?}");
    vm.assert_configured();
}
