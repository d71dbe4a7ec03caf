//! The controller driven by the unmodified `openstack` CLI, as an operator
//! drives Neutron: networks, subnets and ports created, listed, shown,
//! changed and deleted by name; Neutron's errors where the request cannot
//! be done (a taken address, a network still in use), the CLI printing
//! their messages; a token required when one is configured. The same
//! commands run against a controller over its embedded store and one over
//! a real etcd.

use alcor_tests::{
    controller::{Controller, StoreKind},
    etcd::{self, EtcdServer},
    openstack::{self, Cli},
};
use serde_json::Value;

/// `openstack ARGS -f json`, which must succeed.
fn json(cli: &Cli, controller: &Controller, args: &[&str]) -> Value {
    cli.json(args)
        .unwrap_or_else(|e| panic!("openstack {}: {e:#}\n{}", args.join(" "), controller.log()))
}

/// `openstack ARGS`, which must fail; its stderr.
fn refused(cli: &Cli, args: &[&str]) -> String {
    let output = cli.run(args).unwrap();
    assert!(
        !output.success(),
        "openstack {} succeeded: {}",
        args.join(" "),
        output.stdout
    );
    output.stderr
}

fn names(list: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["Name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    names
}

#[test]
fn the_openstack_cli_drives_networks_subnets_and_ports_on_the_embedded_store() {
    if openstack::available(
        "the_openstack_cli_drives_networks_subnets_and_ports_on_the_embedded_store",
    ) {
        networks_subnets_and_ports(StoreKind::Embedded);
    }
}

#[test]
fn the_openstack_cli_drives_networks_subnets_and_ports_on_etcd() {
    let test = "the_openstack_cli_drives_networks_subnets_and_ports_on_etcd";
    if openstack::available(test) && etcd::available(test) {
        let etcd = EtcdServer::start().unwrap();
        networks_subnets_and_ports(StoreKind::Etcd(vec![etcd.client_url()]));
    }
}

fn networks_subnets_and_ports(store: StoreKind) {
    let controller = Controller::start(store, &[]).unwrap();
    let cli = Cli::new(&controller.endpoint()).unwrap();
    let run = |args: &[&str]| json(&cli, &controller, args);

    let network = run(&["network", "create", "demo"]);
    assert_eq!(network["name"], "demo");
    assert_eq!(network["mtu"], 1450);
    assert!(
        network["provider:segmentation_id"].as_u64().unwrap() > 0,
        "{network}"
    );
    run(&["network", "create", "--mtu", "1400", "other"]);
    assert_eq!(names(&run(&["network", "list"])), ["demo", "other"]);
    assert_eq!(run(&["network", "show", "other"])["mtu"], 1400);

    let subnet = run(&[
        "subnet",
        "create",
        "--network",
        "demo",
        "--subnet-range",
        "10.0.0.0/24",
        "--allocation-pool",
        "start=10.0.0.10,end=10.0.0.100",
        "--dns-nameserver",
        "10.0.0.53",
        "--host-route",
        "destination=192.168.0.0/24,gateway=10.0.0.254",
        "sn1",
    ]);
    assert_eq!(subnet["gateway_ip"], "10.0.0.1");
    assert_eq!(
        subnet["allocation_pools"][0]["start"], "10.0.0.10",
        "{subnet}"
    );
    assert_eq!(subnet["dns_nameservers"][0], "10.0.0.53");
    assert_eq!(subnet["host_routes"][0]["nexthop"], "10.0.0.254");
    let bare = run(&[
        "subnet",
        "create",
        "--network",
        "other",
        "--subnet-range",
        "10.1.0.0/24",
        "--gateway",
        "none",
        "--no-dhcp",
        "sn2",
    ]);
    assert_eq!(
        (bare["gateway_ip"].clone(), bare["enable_dhcp"].clone()),
        (Value::Null, Value::Bool(false))
    );
    assert_eq!(names(&run(&["subnet", "list"])), ["sn1", "sn2"]);

    // Ports bind only to hosts whose agent has registered.
    let unknown = refused(
        &cli,
        &["port", "create", "--network", "demo", "--host", "h1", "p0"],
    );
    assert!(unknown.contains("no agent has registered"), "{unknown}");
    controller.register_stand_in("h1").unwrap();
    let agents = run(&["network", "agent", "list"]);
    assert_eq!(agents[0]["Host"], "h1", "{agents}");
    assert_eq!(agents[0]["Alive"], true, "{agents}");
    let port = run(&[
        "port",
        "create",
        "--network",
        "demo",
        "--fixed-ip",
        "subnet=sn1,ip-address=10.0.0.20",
        "--mac-address",
        "fa:16:3e:00:00:20",
        "--host",
        "h1",
        "--binding-profile",
        "netns=vm1",
        "--allowed-address",
        "ip-address=10.0.0.200",
        "p1",
    ]);
    assert_eq!(port["fixed_ips"][0]["ip_address"], "10.0.0.20", "{port}");
    assert_eq!(port["mac_address"], "fa:16:3e:00:00:20");
    assert_eq!(port["binding_host_id"], "h1", "{port}");
    assert_eq!(port["binding_profile"]["netns"], "vm1", "{port}");
    assert_eq!(port["status"], "DOWN");
    let auto = run(&["port", "create", "--network", "demo", "p2"]);
    let address = auto["fixed_ips"][0]["ip_address"].as_str().unwrap();
    let octet: u8 = address.rsplit('.').next().unwrap().parse().unwrap();
    assert!((10..=100).contains(&octet), "{address} outside the pool");
    assert_eq!(
        names(&run(&["port", "list", "--network", "demo"])),
        ["p1", "p2"]
    );
    assert_eq!(
        run(&["port", "list", "--host", "h1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let renamed = cli.run(&["port", "set", "--name", "p1b", "p1"]).unwrap();
    assert!(renamed.success(), "{}", renamed.stderr);
    assert_eq!(run(&["port", "show", "p1b"])["revision_number"], 2);

    // What cannot be done, in Neutron's words.
    let taken = refused(
        &cli,
        &[
            "port",
            "create",
            "--network",
            "demo",
            "--fixed-ip",
            "ip-address=10.0.0.20",
            "p3",
        ],
    );
    assert!(taken.contains("10.0.0.20 already allocated"), "{taken}");
    let mac = refused(
        &cli,
        &[
            "port",
            "create",
            "--network",
            "demo",
            "--mac-address",
            "fa:16:3e:00:00:20",
            "p3",
        ],
    );
    assert!(
        mac.contains("mac address fa:16:3e:00:00:20 is in use"),
        "{mac}"
    );
    let in_use = refused(&cli, &["network", "delete", "demo"]);
    assert!(in_use.contains("one or more ports"), "{in_use}");
    let missing = refused(&cli, &["network", "show", "nope"]);
    assert!(missing.contains("No Network found for nope"), "{missing}");

    for args in [
        &["port", "delete", "p1b", "p2"][..],
        &["subnet", "delete", "sn1"],
        &["network", "delete", "demo", "other"],
    ] {
        let output = cli.run(args).unwrap();
        assert!(
            output.success(),
            "openstack {}: {}",
            args.join(" "),
            output.stderr
        );
    }
    assert_eq!(run(&["network", "list"]), Value::Array(vec![]));
}

#[test]
fn with_a_token_only_its_holder_gets_in() {
    if !openstack::available("with_a_token_only_its_holder_gets_in") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let auth = format!("token:{}", token.display());
    let controller = Controller::start(StoreKind::Embedded, &["--auth", &auth]).unwrap();
    let endpoint = controller.endpoint();
    let holder = Cli::with_token(&endpoint, "s3cret").unwrap();
    let created = holder.json(&["network", "create", "private"]).unwrap();
    assert_eq!(created["name"], "private");
    for cli in [
        Cli::with_token(&endpoint, "guess").unwrap(),
        Cli::new(&endpoint).unwrap(),
    ] {
        let output = cli.run(&["network", "list"]).unwrap();
        assert!(
            !output.success(),
            "listed without the token: {}",
            output.stdout
        );
        let output = cli.run(&["network", "create", "intruder"]).unwrap();
        assert!(!output.success());
    }
    let listed = holder.json(&["network", "list"]).unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "nothing written without the token"
    );
}

#[test]
fn the_openstack_cli_drives_routers_security_groups_and_floating_ips_on_the_embedded_store() {
    let test =
        "the_openstack_cli_drives_routers_security_groups_and_floating_ips_on_the_embedded_store";
    if openstack::available(test) {
        routers_security_groups_and_floating_ips(StoreKind::Embedded);
    }
}

#[test]
fn the_openstack_cli_drives_routers_security_groups_and_floating_ips_on_etcd() {
    let test = "the_openstack_cli_drives_routers_security_groups_and_floating_ips_on_etcd";
    if openstack::available(test) && etcd::available(test) {
        let etcd = EtcdServer::start().unwrap();
        routers_security_groups_and_floating_ips(StoreKind::Etcd(vec![etcd.client_url()]));
    }
}

fn routers_security_groups_and_floating_ips(store: StoreKind) {
    let controller = Controller::start(store, &[]).unwrap();
    let cli = Cli::new(&controller.endpoint()).unwrap();
    let run = |args: &[&str]| json(&cli, &controller, args);
    let ok = |args: &[&str]| {
        let output = cli.run(args).unwrap();
        assert!(
            output.success(),
            "openstack {}: {}\n{}",
            args.join(" "),
            output.stderr,
            controller.log()
        );
    };

    run(&["network", "create", "--external", "public"]);
    run(&[
        "subnet",
        "create",
        "--network",
        "public",
        "--subnet-range",
        "203.0.113.0/24",
        "public-sn",
    ]);
    run(&["network", "create", "private"]);
    run(&[
        "subnet",
        "create",
        "--network",
        "private",
        "--subnet-range",
        "10.0.0.0/24",
        "private-sn",
    ]);

    let router = run(&["router", "create", "r1"]);
    assert_eq!(router["name"], "r1");
    ok(&["router", "set", "--external-gateway", "public", "r1"]);
    ok(&["router", "add", "subnet", "r1", "private-sn"]);
    let shown = run(&["router", "show", "r1"]);
    let interfaces = shown["interfaces_info"].as_array().unwrap();
    assert_eq!(interfaces[0]["ip_address"], "10.0.0.1", "{shown}");
    let twice = refused(&cli, &["router", "add", "subnet", "r1", "private-sn"]);
    assert!(twice.contains("already has a port on subnet"), "{twice}");

    let group = run(&["security", "group", "create", "web"]);
    assert_eq!(group["name"], "web");
    let rule = run(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "web",
    ]);
    assert_eq!(
        (rule["port_range_min"].clone(), rule["direction"].clone()),
        (Value::from(22), Value::from("ingress"))
    );
    let again = refused(
        &cli,
        &[
            "security",
            "group",
            "rule",
            "create",
            "--protocol",
            "tcp",
            "--dst-port",
            "22",
            "web",
        ],
    );
    assert!(again.to_lowercase().contains("already exists"), "{again}");
    let listed = run(&["security", "group", "list"]);
    let groups = names(&listed);
    assert!(
        groups.contains(&"default") && groups.contains(&"web"),
        "{groups:?}"
    );

    let port = run(&[
        "port",
        "create",
        "--network",
        "private",
        "--security-group",
        "web",
        "vm1",
    ]);
    assert_eq!(
        port["security_group_ids"].as_array().map(Vec::len),
        Some(1),
        "{port}"
    );
    let fip = run(&["floating", "ip", "create", "public"]);
    let address = fip["floating_ip_address"].as_str().unwrap().to_string();
    assert!(address.starts_with("203.0.113."), "{fip}");
    ok(&["floating", "ip", "set", "--port", "vm1", &address]);
    let associated = run(&["floating", "ip", "show", &address]);
    assert_eq!(
        associated["fixed_ip_address"], port["fixed_ips"][0]["ip_address"],
        "{associated}"
    );
    ok(&["floating", "ip", "unset", "--port", &address]);
    assert_eq!(
        run(&["floating", "ip", "show", &address])["port_id"],
        Value::Null
    );

    let in_use = refused(&cli, &["router", "delete", "r1"]);
    assert!(in_use.contains("still has ports"), "{in_use}");
    for args in [
        &["floating", "ip", "delete", &address][..],
        &["port", "delete", "vm1"],
        &["router", "remove", "subnet", "r1", "private-sn"],
        &["router", "unset", "--external-gateway", "r1"],
        &["router", "delete", "r1"],
        &["security", "group", "delete", "web"],
        &["network", "delete", "private", "public"],
    ] {
        ok(args);
    }
}
