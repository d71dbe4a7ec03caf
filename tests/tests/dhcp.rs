//! The DHCP responder against real clients: busybox's udhcpc, ISC's
//! dhclient and dhcpcd run in VM namespaces, each plugged by a veth into a host
//! namespace where the responder's packet socket runs (opened by a thread
//! that entered it), driven by a hand-built view: no agent, no engine.
//!
//! The clients run with scripts of the test's own that configure `eth0`
//! and record what they were told: their stock scripts would rewrite the
//! machine's /etc/resolv.conf and hostname, which namespaces do not
//! isolate. Nothing answers ARP for the gateway here (the datapath does in
//! the agent), so each VM gets a static neighbour entry for it, which
//! unicast renewals need.

use std::{
    collections::HashMap,
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use alcor_agent::{
    core::{
        desired::{DesiredState, Entry, Resource},
        model::*,
    },
    dhcp::{
        Counters, DhcpSettings, DhcpView, LeaseState, Leases, Responder, SharedView,
        counters::{DropReason, ServerMessage},
    },
    store::Store,
};
use alcor_proto::schema::OperationType;
use alcor_tests::{
    Netns,
    dhcp::{DHCLIENT_CONF, DHCLIENT_SCRIPT, DHCPCD_CONF, DHCPCD_SCRIPT, UDHCPC_SCRIPT},
    privileged, unique_prefix,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

const GATEWAY: &str = "10.0.1.1";
const GATEWAY_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0, 0x01]);
const METADATA_HOP: &str = "10.0.1.5";

fn insert<R: Resource>(desired: &mut DesiredState, id: &str, spec: R) {
    R::table_mut(desired).upsert(
        id.into(),
        Entry::new(spec, OperationType::Create, 0, Box::default()),
    );
    desired.commit();
}

/// A VPC with one subnet 10.0.1.0/24: DNS, extra options, and a router
/// table giving a route to the metadata address.
fn vpc_with_subnet(desired: &mut DesiredState, vpc_id: &str, vni: u64, dns: &str) -> String {
    let subnet_id = format!("{vpc_id}-subnet");
    insert(
        desired,
        vpc_id,
        Vpc {
            id: vpc_id.into(),
            name: String::new(),
            project_id: String::new(),
            cidr: None,
            vni: Vni::try_from(vni).unwrap(),
        },
    );
    let extra = |name: &str, value: &str| DhcpOption {
        name: name.into(),
        value: value.into(),
    };
    insert(
        desired,
        &subnet_id,
        Subnet {
            id: subnet_id.clone(),
            vpc_id: vpc_id.into(),
            name: String::new(),
            cidr: "10.0.1.0/24".parse().unwrap(),
            vni: Vni::try_from(vni).unwrap(),
            gateway: Some(GatewayAddress {
                ip: GATEWAY.parse().unwrap(),
                mac: GATEWAY_MAC,
            }),
            dhcp_enable: true,
            dns_servers: dns.split(',').map(|ip| ip.parse().unwrap()).collect(),
            extra_dhcp_options: vec![
                extra("ntp-server", "10.0.0.5"),
                extra("domain-search", "example.org"),
            ],
            availability_zone: String::new(),
        },
    );
    insert(
        desired,
        &format!("{vpc_id}-router"),
        Router {
            id: format!("{vpc_id}-router"),
            host_dvr_mac: None,
            subnet_tables: vec![SubnetRoutes {
                subnet_id: subnet_id.clone(),
                routes: vec![Route {
                    id: "metadata".into(),
                    name: String::new(),
                    destination: "169.254.169.254/32".parse().unwrap(),
                    next_hop: Some(METADATA_HOP.parse().unwrap()),
                    next_hop_mac: None,
                    priority: 0,
                    to_vpc_gateway: false,
                }],
            }],
        },
    );
    subnet_id
}

/// A port with a DHCP entry giving it `hostname`.
fn port_with_entry(
    desired: &mut DesiredState,
    port_id: &str,
    vpc_id: &str,
    subnet_id: &str,
    mac: Mac,
    ip: &str,
    hostname: &str,
) {
    let ip: Ipv4Addr = ip.parse().unwrap();
    insert(
        desired,
        port_id,
        Port {
            id: port_id.into(),
            vpc_id: vpc_id.into(),
            name: String::new(),
            mac,
            admin_state_up: true,
            fixed_ips: vec![FixedIp {
                subnet_id: subnet_id.into(),
                ip,
            }],
            allowed_address_pairs: Vec::new(),
            security_group_ids: Vec::new(),
            binding: Binding::Tap,
        },
    );
    insert(
        desired,
        &format!("{port_id}-dhcp"),
        DhcpEntry {
            id: format!("{port_id}-dhcp"),
            subnet_id: subnet_id.into(),
            mac,
            ipv4: ip,
            ipv6: None,
            hostname: hostname.into(),
        },
    );
}

/// A host namespace running the responder, its VM namespaces, and a
/// directory for client scripts and what they record.
struct Lab {
    prefix: String,
    host: Netns,
    vms: HashMap<String, Netns>,
    dir: tempfile::TempDir,
    view: SharedView,
    counters: Arc<Counters>,
    leases: Arc<Leases>,
    responder: Option<Responder>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let prefix = unique_prefix(tag);
        let host = Netns::new(format!("{prefix}-h")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            prefix,
            host,
            vms: HashMap::new(),
            view: DhcpView::default().into_shared(),
            counters: Arc::new(Counters::default()),
            leases: Lab::load_leases(dir.path()),
            dir,
            responder: None,
        };
        lab.start_responder();
        lab
    }

    /// The leases stored in the lab's directory, as the agent loads them.
    fn load_leases(dir: &Path) -> Arc<Leases> {
        let store = Store::open(dir).expect("state store");
        Arc::new(Leases::load(Arc::new(store)).expect("loading leases"))
    }

    fn start_responder(&mut self) {
        let (view, leases, counters) = (
            self.view.clone(),
            self.leases.clone(),
            self.counters.clone(),
        );
        let responder = self
            .host
            .enter(move || Responder::start(view, leases, counters))
            .unwrap()
            .expect("starting the responder in the host namespace");
        self.responder = Some(responder);
    }

    /// Stops the responder (which flushes the leases), closes the store,
    /// and starts again from what was stored, as a restarted agent would.
    fn restart_responder(&mut self) {
        if let Some(responder) = self.responder.take() {
            responder.stop();
        }
        // The last reference to the store goes: the database is closed.
        self.leases = Arc::new(Leases::in_memory());
        self.leases = Lab::load_leases(self.dir.path());
        self.start_responder();
    }

    /// Plugs VM `name` (MAC `mac`) into the host by a veth whose host side
    /// is `device`; returns the device's ifindex. The VM's eth0 keeps the
    /// default MTU: the client must set the port's.
    fn plug(&mut self, name: &str, device: &str, mac: Mac) -> u32 {
        let vm = Netns::new(format!("{}-{name}", self.prefix)).unwrap();
        self.host
            .exec(
                "ip",
                &[
                    "link",
                    "add",
                    device,
                    "mtu",
                    "1450",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    vm.name(),
                ],
            )
            .unwrap();
        self.host
            .exec("ip", &["link", "set", device, "up"])
            .unwrap();
        vm.exec(
            "ip",
            &["link", "set", "eth0", "address", &mac.to_string(), "up"],
        )
        .unwrap();
        vm.exec(
            "ip",
            &[
                "neigh",
                "replace",
                GATEWAY,
                "lladdr",
                &GATEWAY_MAC.to_string(),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
        let ifindex = self.host.link(device).unwrap().expect("host side")["ifindex"]
            .as_u64()
            .unwrap() as u32;
        self.vms.insert(name.into(), vm);
        ifindex
    }

    fn vm(&self, name: &str) -> &Netns {
        &self.vms[name]
    }

    fn publish(&self, desired: &DesiredState, ready: &[(&str, u32)], settings: &DhcpSettings) {
        self.view.store(Arc::new(DhcpView::build(
            desired,
            ready.iter().copied(),
            settings,
        )));
    }

    /// Writes client script `name`.sh; in it, `@DIR@` becomes the lab's
    /// directory (dhclient runs scripts with an environment of its own) and
    /// `@NAME@` the name, which prefixes what the script records.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.sh"));
        let dir = self.dir.path().display().to_string();
        let body = body.replace("@DIR@", &dir).replace("@NAME@", name);
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// What a client script recorded for an event, as variables.
    fn recorded(&self, file: &str) -> HashMap<String, String> {
        let text = fs::read_to_string(self.dir.path().join(file))
            .unwrap_or_else(|e| panic!("{file} was not recorded: {e}"));
        text.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_string(), value.trim_matches('\'').to_string()))
            .collect()
    }

    fn wait_for_file(&self, file: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.dir.path().join(file).exists() {
            assert!(
                Instant::now() < deadline,
                "{file} not recorded in {timeout:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Polls `done` for up to 10 seconds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(responder) = self.responder.take() {
            responder.stop();
        }
    }
}

/// Checks eth0 inside the VM: address, mask, MTU, default route and the
/// metadata route of option 121.
fn assert_configured(vm: &Netns, ip: &str) {
    let addresses: serde_json::Value = serde_json::from_str(
        &vm.exec("ip", &["-j", "-4", "addr", "show", "dev", "eth0"])
            .unwrap(),
    )
    .unwrap();
    let address = &addresses[0]["addr_info"][0];
    assert_eq!(
        (address["local"].as_str(), address["prefixlen"].as_u64()),
        (Some(ip), Some(24)),
        "{addresses}"
    );
    assert_eq!(addresses[0]["mtu"], 1450, "MTU from option 26");
    let routes = vm
        .exec("ip", &["-4", "route", "show", "dev", "eth0"])
        .unwrap();
    assert!(
        routes.contains(&format!("default via {GATEWAY}")),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("169.254.169.254 via {METADATA_HOP}")),
        "{routes}"
    );
}

/// Fails with what to install when a client is missing.
fn require(program: &str, package: &str) {
    let installed = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).exists());
    assert!(
        installed,
        "{program} is not installed: `cargo xtask setup` installs Debian's {package}"
    );
}

/// Runs `program ARGS` in the VM in the background.
fn spawn_in(vm: &Netns, program: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", vm.name(), program])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn udhcpc_args(script: &Path) -> Vec<String> {
    ["-i", "eth0", "-f", "-t", "5", "-T", "1", "-s"]
        .iter()
        .map(|s| s.to_string())
        .chain([script.display().to_string()])
        .chain(["-O", "staticroutes", "-O", "ntpsrv", "-O", "search"].map(String::from))
        .collect()
}

/// udhcpc -q: one lease, then exit; true if it got one.
fn udhcpc_once(lab: &Lab, vm: &str, script: &Path) -> bool {
    require("udhcpc", "udhcpc");
    let mut args = udhcpc_args(script);
    args.extend(["-q", "-n"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = Command::new("ip")
        .args(["netns", "exec", lab.vm(vm).name(), "udhcpc"])
        .args(&args)
        .output()
        .expect("running udhcpc");
    output.status.success()
}

#[test]
fn udhcpc_gets_the_goal_state_and_renews_after_a_restart_and_releases() {
    if !privileged("udhcpc_gets_the_goal_state_and_renews_after_a_restart_and_releases") {
        return;
    }
    let mut lab = Lab::new("dhu");
    let mac = Mac([0xfa, 0x16, 0x3e, 0, 0x30, 0x01]);
    let ifindex = lab.plug("vm", "tapdhcp-udhcp", mac);
    let mut desired = DesiredState::default();
    let subnet = vpc_with_subnet(&mut desired, "vpc", 300, "10.0.0.2,10.0.0.3");
    port_with_entry(
        &mut desired,
        "dhcp-udhcpc",
        "vpc",
        &subnet,
        mac,
        "10.0.1.10",
        "vm-udhcpc",
    );
    lab.publish(
        &desired,
        &[("dhcp-udhcpc", ifindex)],
        &DhcpSettings::default(),
    );
    let script = lab.script("udhcpc", UDHCPC_SCRIPT);

    let args = udhcpc_args(&script);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    require("udhcpc", "udhcpc");
    let mut client = spawn_in(lab.vm("vm"), "udhcpc", &args);
    lab.wait_for_file("udhcpc.bound.env", Duration::from_secs(15));
    let bound = lab.recorded("udhcpc.bound.env");
    assert_eq!(bound["ip"], "10.0.1.10");
    assert_eq!(bound["subnet"], "255.255.255.0");
    assert_eq!(bound["router"], GATEWAY);
    assert_eq!(bound["dns"], "10.0.0.2 10.0.0.3");
    assert_eq!(bound["hostname"], "vm-udhcpc");
    assert_eq!(bound["domain"], "openstacklocal");
    assert_eq!(bound["mtu"], "1450");
    assert_eq!(bound["serverid"], GATEWAY);
    assert_eq!(bound["lease"], "86400");
    assert_eq!(bound["ntpsrv"], "10.0.0.5");
    assert_eq!(bound["search"], "example.org");
    assert_eq!(
        bound["staticroutes"],
        format!("169.254.169.254/32 {METADATA_HOP} 0.0.0.0/0 {GATEWAY}")
    );
    assert_configured(lab.vm("vm"), "10.0.1.10");
    let lease = lab.leases.snapshot().pop().expect("a lease");
    assert_eq!(
        (lease.state, lease.ip, lease.hostname.as_str()),
        (LeaseState::Bound, "10.0.1.10".parse().unwrap(), "vm-udhcpc")
    );

    // A restart in the middle: the lease comes back from the store...
    lab.restart_responder();
    let reloaded = lab.leases.snapshot();
    assert_eq!(
        (reloaded.len(), reloaded[0].state, reloaded[0].ip),
        (1, LeaseState::Bound, "10.0.1.10".parse().unwrap())
    );
    // ... and SIGUSR1 renews now (a REQUEST unicast to the server, with
    // ciaddr), ACKed by the new responder.
    let pid = Pid::from_raw(client.id() as i32);
    kill(pid, Signal::SIGUSR1).unwrap();
    lab.wait_for_file("udhcpc.renew.env", Duration::from_secs(10));
    assert_eq!(lab.recorded("udhcpc.renew.env")["ip"], "10.0.1.10");
    wait_until("the renewal's ACK to be counted", || {
        lab.counters.sent(ServerMessage::Ack) >= 2
    });

    // SIGUSR2: release the lease.
    kill(pid, Signal::SIGUSR2).unwrap();
    wait_until("a RELEASE", || lab.counters.leases_released() == 1);
    assert_eq!(lab.leases.snapshot()[0].state, LeaseState::Released);
    kill(pid, Signal::SIGTERM).unwrap();
    client.wait().unwrap();
    assert_eq!(lab.counters.malformed(), 0);
}

#[test]
fn dhclient_is_naked_at_init_reboot_then_bound_and_renews() {
    if !privileged("dhclient_is_naked_at_init_reboot_then_bound_and_renews") {
        return;
    }
    let mut lab = Lab::new("dhd");
    let mac = Mac([0xfa, 0x16, 0x3e, 0, 0x30, 0x02]);
    let ifindex = lab.plug("vm", "tapdhcp-dhcli", mac);
    let mut desired = DesiredState::default();
    let subnet = vpc_with_subnet(&mut desired, "vpc", 301, "10.0.0.4");
    port_with_entry(
        &mut desired,
        "dhcp-dhclient",
        "vpc",
        &subnet,
        mac,
        "10.0.1.20",
        "vm-dhclient",
    );
    // A short lease, so that the renewal comes within the test.
    let settings = DhcpSettings {
        lease_time: 8,
        ..DhcpSettings::default()
    };
    lab.publish(&desired, &[("dhcp-dhclient", ifindex)], &settings);
    let script = lab.script("dhclient", DHCLIENT_SCRIPT);
    let conf = lab.dir.path().join("dhclient.conf");
    fs::write(&conf, DHCLIENT_CONF).unwrap();
    // The client remembers an address the goal state no longer gives it:
    // it asks for it first (INIT-REBOOT), is refused, and starts over.
    let lease_file = lab.dir.path().join("dhclient.leases");
    fs::write(
        &lease_file,
        "lease {\n  interface \"eth0\";\n  fixed-address 10.0.1.77;\n  option subnet-mask 255.255.255.0;\n  \
         option dhcp-server-identifier 10.0.1.1;\n  renew 4 2099/01/01 00:00:00;\n  \
         rebind 4 2099/01/01 00:00:00;\n  expire 4 2099/01/01 00:00:00;\n}\n",
    )
    .unwrap();
    let pid_file = lab.dir.path().join("dhclient.pid");
    let path = |p: &Path| p.display().to_string();
    let args = [
        "-1".to_string(),
        "-v".into(),
        "-cf".into(),
        path(&conf),
        "-sf".into(),
        path(&script),
        "-lf".into(),
        path(&lease_file),
        "-pf".into(),
        path(&pid_file),
        "eth0".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // dhclient returns once bound, and renews in the background.
    require("dhclient", "isc-dhcp-client");
    let output = Command::new("ip")
        .args(["netns", "exec", lab.vm("vm").name(), "dhclient"])
        .args(&args)
        .output()
        .expect("running dhclient");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        lab.counters.sent(ServerMessage::Nak),
        1,
        "INIT-REBOOT with a stale address"
    );

    let bound = lab.recorded("dhclient.BOUND.env");
    assert_eq!(bound["new_ip_address"], "10.0.1.20");
    assert_eq!(bound["new_subnet_mask"], "255.255.255.0");
    assert_eq!(bound["new_routers"], GATEWAY);
    assert_eq!(bound["new_domain_name_servers"], "10.0.0.4");
    assert_eq!(bound["new_host_name"], "vm-dhclient");
    assert_eq!(bound["new_domain_name"], "openstacklocal");
    assert_eq!(bound["new_interface_mtu"], "1450");
    assert_eq!(bound["new_ntp_servers"], "10.0.0.5");
    assert_eq!(bound["new_domain_search"], "example.org.");
    assert_eq!(bound["new_dhcp_server_identifier"], GATEWAY);
    assert_configured(lab.vm("vm"), "10.0.1.20");

    // T1 is half the 8-second lease: a unicast renewal, ACKed.
    lab.wait_for_file("dhclient.RENEW.env", Duration::from_secs(20));
    assert_eq!(
        lab.recorded("dhclient.RENEW.env")["new_ip_address"],
        "10.0.1.20"
    );
    assert_eq!(lab.counters.malformed(), 0);
}

#[test]
fn two_vpcs_with_the_same_mac_and_address_each_get_their_own_and_strangers_get_nothing() {
    if !privileged(
        "two_vpcs_with_the_same_mac_and_address_each_get_their_own_and_strangers_get_nothing",
    ) {
        return;
    }
    let mut lab = Lab::new("dh2");
    let mac = Mac([0xfa, 0x16, 0x3e, 0, 0x30, 0x03]);
    let a = lab.plug("a", "tapdhcp-vpc-a", mac);
    let b = lab.plug("b", "tapdhcp-vpc-b", mac);
    let stranger = lab.plug(
        "stranger",
        "tapdhcp-strng",
        Mac([0x02, 0, 0, 0, 0x30, 0x04]),
    );
    let mut desired = DesiredState::default();
    let subnet_a = vpc_with_subnet(&mut desired, "vpc-a", 302, "10.0.0.2");
    let subnet_b = vpc_with_subnet(&mut desired, "vpc-b", 303, "10.0.0.3");
    port_with_entry(
        &mut desired,
        "dhcp-a",
        "vpc-a",
        &subnet_a,
        mac,
        "10.0.1.30",
        "vm-a",
    );
    port_with_entry(
        &mut desired,
        "dhcp-b",
        "vpc-b",
        &subnet_b,
        mac,
        "10.0.1.30",
        "vm-b",
    );
    // The stranger's device belongs to a port whose MAC is another.
    port_with_entry(
        &mut desired,
        "dhcp-c",
        "vpc-a",
        &subnet_a,
        Mac([0xfa, 0x16, 0x3e, 0, 0x30, 0x05]),
        "10.0.1.31",
        "vm-c",
    );
    lab.publish(
        &desired,
        &[("dhcp-a", a), ("dhcp-b", b), ("dhcp-c", stranger)],
        &DhcpSettings::default(),
    );

    for (vm, dns, hostname) in [("a", "10.0.0.2", "vm-a"), ("b", "10.0.0.3", "vm-b")] {
        let script = lab.script(&format!("udhcpc-{vm}"), UDHCPC_SCRIPT);
        assert!(udhcpc_once(&lab, vm, &script), "VM {vm} got no lease");
        let bound = lab.recorded(&format!("udhcpc-{vm}.bound.env"));
        assert_eq!(
            (
                bound["ip"].as_str(),
                bound["dns"].as_str(),
                bound["hostname"].as_str()
            ),
            ("10.0.1.30", dns, hostname)
        );
        assert_configured(lab.vm(vm), "10.0.1.30");
    }
    let mut vpcs: Vec<String> = lab
        .leases
        .snapshot()
        .iter()
        .map(|lease| lease.vpc_id.to_string())
        .collect();
    vpcs.sort();
    assert_eq!(vpcs, ["vpc-a", "vpc-b"]);

    let script = lab.script("udhcpc-stranger", UDHCPC_SCRIPT);
    assert!(
        !udhcpc_once(&lab, "stranger", &script),
        "a MAC that is not the port's got a lease"
    );
    assert!(lab.counters.dropped(DropReason::UnknownMac) > 0);
    assert_eq!(lab.counters.sent(ServerMessage::Offer), 2);
}

/// Runs `dhcpcd -4 -1 -B ARGS eth0` in the VM, once. dhcpcd keeps its
/// leases and sockets in fixed system directories: it runs in a mount
/// namespace of its own where they are empty tmpfs, so that it neither
/// sees nor leaves state outside the test.
fn dhcpcd_once(lab: &Lab, vm: &str, args: &[&str]) -> std::process::Output {
    let script = lab.script("dhcpcd", DHCPCD_SCRIPT);
    let conf = lab.dir.path().join("dhcpcd.conf");
    fs::write(&conf, DHCPCD_CONF).unwrap();
    let command = format!(
        "mkdir -p /var/lib/dhcpcd /run/dhcpcd && mount -t tmpfs none /var/lib/dhcpcd && \
         mount -t tmpfs none /run/dhcpcd && exec ip netns exec {} dhcpcd -4 -1 -B -t 15 -f {} -c {} {} eth0",
        lab.vm(vm).name(),
        conf.display(),
        script.display(),
        args.join(" "),
    );
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &command])
        .output()
        .expect("running dhcpcd")
}

#[test]
fn dhcpcd_gets_the_goal_state_and_informs() {
    if !privileged("dhcpcd_gets_the_goal_state_and_informs") {
        return;
    }
    require("dhcpcd", "dhcpcd5");
    let mut lab = Lab::new("dhc");
    let mac = Mac([0xfa, 0x16, 0x3e, 0, 0x30, 0x06]);
    let ifindex = lab.plug("vm", "tapdhcp-dhcpc", mac);
    let mut desired = DesiredState::default();
    let subnet = vpc_with_subnet(&mut desired, "vpc", 304, "10.0.0.6");
    port_with_entry(
        &mut desired,
        "dhcp-dhcpcd",
        "vpc",
        &subnet,
        mac,
        "10.0.1.40",
        "vm-dhcpcd",
    );
    lab.publish(
        &desired,
        &[("dhcp-dhcpcd", ifindex)],
        &DhcpSettings::default(),
    );

    let output = dhcpcd_once(&lab, "vm", &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bound = lab.recorded("dhcpcd.BOUND.env");
    assert_eq!(bound["new_ip_address"], "10.0.1.40");
    assert_eq!(bound["new_subnet_mask"], "255.255.255.0");
    assert_eq!(bound["new_routers"], GATEWAY);
    assert_eq!(bound["new_domain_name_servers"], "10.0.0.6");
    assert_eq!(bound["new_host_name"], "vm-dhcpcd");
    assert_eq!(bound["new_domain_name"], "openstacklocal");
    assert_eq!(bound["new_interface_mtu"], "1450");
    assert_eq!(bound["new_ntp_servers"], "10.0.0.5");
    assert_eq!(bound["new_domain_search"], "example.org");
    assert_eq!(
        bound["new_classless_static_routes"],
        format!("169.254.169.254/32 {METADATA_HOP} 0.0.0.0/0 {GATEWAY}")
    );
    assert_configured(lab.vm("vm"), "10.0.1.40");

    // INFORM: the client has its address and wants the rest.
    let acks = lab.counters.sent(ServerMessage::Ack);
    let output = dhcpcd_once(&lab, "vm", &["--inform", "10.0.1.40/24"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let informed = lab.recorded("dhcpcd.INFORM.env");
    assert_eq!(informed["new_domain_name_servers"], "10.0.0.6");
    assert_eq!(informed["new_interface_mtu"], "1450");
    assert!(
        !informed.contains_key("new_dhcp_lease_time"),
        "{informed:?}"
    );
    wait_until("the INFORM's ACK to be counted", || {
        lab.counters.sent(ServerMessage::Ack) == acks + 1
    });
    assert_eq!(lab.counters.malformed(), 0);
}
