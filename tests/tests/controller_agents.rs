//! The controller driving real agents, everything through the unmodified
//! `openstack` CLI: a controller in its own namespace on the fabric, three
//! agents in host namespaces that register with it, VMs as namespaces
//! running busybox udhcpc as distributions ship it. Ports created and bound
//! with the CLI end as VMs that lease their address and ping across hosts
//! and subnets; a port moved to another host follows; an agent restarted
//! with an empty state directory gets everything back from the controller;
//! an agent down while a port is bound to its host converges when it
//! returns; a port its agent refuses shows the agent's reason; the
//! controller killed and restarted loses nothing; a deleted port's device
//! goes and its address is free again.

use std::path::Path;

use alcor_tests::{
    cloud::{CONVERGE, Cloud, HOSTS, Options, address},
    wait_for,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_vms_that_lease_ping_move_survive_and_go() {
    let test = "the_cli_makes_vms_that_lease_ping_move_survive_and_go";
    // The agents register themselves.
    let Some(mut lab) = Cloud::ready(test, "ctl", Options::default()).await else {
        return;
    };

    lab.network(&[("sn1", "10.0.1.0/24"), ("sn2", "10.0.2.0/24")]);
    lab.json(0, &["router", "create", "r"]);
    for subnet in ["sn1", "sn2"] {
        lab.run(0, &["router", "add", "subnet", "r", subnet]);
    }
    let vm1 = lab.create_vm(0, "vm1", "h1", Some("sn1"));
    let vm2 = lab.create_vm(0, "vm2", "h2", Some("sn1"));
    let vm3 = lab.create_vm(0, "vm3", "h3", Some("sn2"));
    for port in ["vm1", "vm2", "vm3"] {
        lab.wait_active(0, port).await;
    }
    for (vm, port) in [("vm1", &vm1), ("vm2", &vm2), ("vm3", &vm3)] {
        lab.lease(vm, port);
    }
    // Across hosts in a subnet, and through the router to the other.
    lab.pings("vm1", &vm2).await;
    lab.pings("vm1", &vm3).await;
    lab.pings("vm3", &vm2).await;

    // Moved to h3: h2 unplugs it, h3 plugs it into the same VM.
    lab.run(0, &["port", "set", "--host", "h3", "vm2"]);
    lab.wait_active(0, "vm2").await;
    let h2_ports = lab.agent("h2").ports().await;
    assert!(h2_ports.is_empty(), "h2 still has {h2_ports:?}");
    lab.lease("vm2", &vm2);
    lab.pings("vm1", &vm2).await;

    // h1's agent loses everything: its state comes back from the controller.
    let agent = lab.agent_mut("h1");
    agent.kill();
    let state_dir = agent.state_dir();
    remove_contents(&state_dir);
    agent.restart().await;
    // Without a record of its veth, the agent deleted it as a leftover and
    // made it again: the VM's eth0 is new, and its DHCP client leases
    // again, as one does when its link comes back.
    let vm1_netns = lab.vm("vm1");
    wait_for("vm1 plugged again by h1", CONVERGE, async || {
        vm1_netns.link("eth0").ok().flatten()
    })
    .await;
    lab.wait_active(0, "vm1").await;
    lab.lease("vm1", &vm1);
    lab.pings("vm1", &vm3).await;

    // A port bound while its host's agent is down: the API does not wait,
    // the port converges when the agent is back.
    lab.agent_mut("h2").kill();
    let vm4 = lab.create_vm(0, "vm4", "h2", Some("sn2"));
    assert_eq!(vm4["status"], "DOWN");
    lab.agent_mut("h2").restart().await;
    lab.wait_active(0, "vm4").await;
    lab.lease("vm4", &vm4);
    lab.pings("vm4", &vm1).await;

    // A port its agent refuses shows why; the host's other ports stay up.
    lab.json(
        0,
        &[
            "port",
            "create",
            "--network",
            "net",
            "--host",
            "h1",
            "--binding-profile",
            "netns=no/such",
            "refused",
        ],
    );
    let refused = wait_for("the refused port in ERROR", CONVERGE, async || {
        let shown = lab.json(0, &["port", "show", "refused"]);
        (shown["status"] == "ERROR").then_some(shown)
    })
    .await;
    let reason = refused["binding_vif_details"]["agent_status"].to_string();
    assert!(reason.contains("no/such"), "{refused}");
    assert_eq!(lab.json(0, &["port", "show", "vm1"])["status"], "ACTIVE");
    lab.pings("vm1", &vm4).await;

    // The controller killed right after a port was made, and started
    // again: the port still reaches its host.
    let vm5 = lab.create_vm(0, "vm5", "h3", Some("sn1"));
    lab.instances[0].restart().unwrap();
    lab.wait_active(0, "vm5").await;
    lab.lease("vm5", &vm5);
    lab.pings("vm5", &vm1).await;

    // Deleted: the VM's device goes, the address is free again.
    lab.run(0, &["port", "delete", "vm3"]);
    let vm3_netns = lab.vm("vm3");
    wait_for("vm3's eth0 gone", CONVERGE, async || {
        vm3_netns.link("eth0").ok()?.is_none().then_some(())
    })
    .await;
    let address = address(&vm3);
    lab.json(
        0,
        &[
            "port",
            "create",
            "--network",
            "net",
            "--fixed-ip",
            &format!("subnet=sn2,ip-address={address}"),
            "again",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_agents_register_and_get_their_state() {
    let test = "with_mutual_tls_agents_register_and_get_their_state";
    let tls = Options {
        tls: true,
        ..Options::default()
    };
    let Some(mut lab) = Cloud::ready(test, "ctls", tls).await else {
        return;
    };
    let agents = lab.json(0, &["network", "agent", "list", "--long"]);
    assert_eq!(
        agents.as_array().map(Vec::len),
        Some(HOSTS.len()),
        "{agents}"
    );
    lab.network(&[("sn1", "10.0.1.0/24")]);
    let vm1 = lab.create_vm(0, "vm1", "h1", Some("sn1"));
    let vm2 = lab.create_vm(0, "vm2", "h2", Some("sn1"));
    for (vm, port) in [("vm1", &vm1), ("vm2", &vm2)] {
        lab.wait_active(0, vm).await;
        lab.lease(vm, port);
    }
    lab.pings("vm1", &vm2).await;
}

/// Empties a directory, as a host whose disk was replaced.
fn remove_contents(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}
