//! A crashed agent comes back without disturbing the host: it reloads its
//! desired state, adopts the devices that exist (same ifindex, no flap) and
//! removes what is no longer desired.

use std::time::Duration;

use alcor_proto::control::{ListRequest, Port, PortPhase};
use alcor_tests::{Agent, AgentOptions, Netns, goalstate::*, privileged, unique_prefix, wait_for};

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

    // A stale device of the agent's for a port that no longer exists.
    host.exec(
        "ip",
        &[
            "link",
            "add",
            "tapghost-0000",
            "type",
            "veth",
            "peer",
            "name",
            "ghostpeer",
        ],
    )
    .unwrap();
    host.exec(
        "ip",
        &[
            "link",
            "set",
            "tapghost-0000",
            "alias",
            "alcor:ghost-0000:0000000000000000",
        ],
    )
    .unwrap();

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
    assert!(
        host.link("tapghost-0000").unwrap().is_none(),
        "the stale device must go"
    );
    let agentctl_after = agent.agentctl(&["ports"]);
    assert_eq!(agentctl_after.stdout, agentctl_before.stdout);

    // The restarted agent keeps honouring revisions it persisted.
    let reply = agent
        .push(v1(vec![vpc("vpc1", 100, "10.0.0.0/16")], vec![], vec![]))
        .await;
    assert_eq!(reply.operation_statuses[0].operation_status, 0);
}
