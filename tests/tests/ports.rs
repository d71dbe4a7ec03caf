//! Ports pushed over gRPC become real devices: veths plugged into
//! namespaces, taps adopted when the hypervisor creates them.

use std::time::Duration;

use alcor_proto::{
    control::{ListRequest, PortPhase},
    schema::{OperationStatus, OperationType},
};
use alcor_tests::{Agent, AgentOptions, Netns, goalstate::*, privileged, unique_prefix, wait_for};

fn statuses(
    reply: &alcor_proto::schema::GoalStateOperationReply,
) -> Vec<(String, OperationStatus)> {
    reply
        .operation_statuses
        .iter()
        .map(|s| {
            (
                s.resource_id.clone(),
                OperationStatus::try_from(s.operation_status).expect("known status"),
            )
        })
        .collect()
}

const MAC1: &str = "fa:16:3e:00:10:01";

#[tokio::test(flavor = "multi_thread")]
async fn v1_push_plugs_a_veth_into_the_namespace() {
    if !privileged("v1_push_plugs_a_veth_into_the_namespace") {
        return;
    }
    let prefix = unique_prefix("v1");
    let host = Netns::new(format!("{prefix}-host")).unwrap();
    let vm = Netns::new(format!("{prefix}-vm1")).unwrap();
    let agent = Agent::start(&host, AgentOptions::default()).await;

    let reply = agent
        .client()
        .await
        .push_network_resource_states(one_subnet(vec![netns_port(
            "port-0001-aaaa",
            "vpc1",
            "sn1",
            "10.0.1.10",
            MAC1,
            vm.name(),
        )]))
        .await
        .expect("push")
        .into_inner();
    assert_eq!(
        statuses(&reply),
        vec![
            ("vpc1".into(), OperationStatus::Success),
            ("sn1".into(), OperationStatus::Success),
            ("port-0001-aaaa".into(), OperationStatus::Success),
        ],
        "{reply:?}\n{}",
        agent.log()
    );
    assert!(reply.message_total_operation_time > 0);

    let eth0 = vm.link("eth0").unwrap().expect("eth0 in the VM namespace");
    assert_eq!(eth0["address"], MAC1);
    assert_eq!(eth0["mtu"], 1450);
    assert!(
        eth0["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{eth0}"
    );
    let host_side = host
        .link("tapport-0001-a")
        .unwrap()
        .expect("host side in the host namespace");
    assert_eq!(host_side["linkinfo"]["info_kind"], "veth");
    // It takes whatever the VM sends, for the datapath to judge.
    assert_eq!(host_side["mtu"], 65535);
    // The host side is a wire into the VM: no IPv6 of the host's own on it.
    let ipv6_off = host
        .exec(
            "cat",
            &["/proc/sys/net/ipv6/conf/tapport-0001-a/disable_ipv6"],
        )
        .unwrap();
    assert_eq!(ipv6_off.trim(), "1");

    let ports = agent.ports().await;
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].phase, PortPhase::Ready as i32);
    assert_eq!(
        ports[0].ifindex,
        host_side["ifindex"].as_u64().unwrap() as u32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tap_port_is_pending_until_its_device_appears() {
    if !privileged("tap_port_is_pending_until_its_device_appears") {
        return;
    }
    let prefix = unique_prefix("tap");
    let host = Netns::new(format!("{prefix}-host")).unwrap();
    let mut agent = Agent::start(&host, AgentOptions::default()).await;

    let reply = agent
        .client()
        .await
        .push_goal_states_stream(futures::stream::iter([v2(
            vec![vpc("vpc1", 100, "10.0.0.0/16")],
            vec![subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1")],
            vec![tap_port(
                "9f3c2a1b-77aa-4c1e",
                "vpc1",
                "sn1",
                "10.0.1.11",
                MAC1,
            )],
        )]))
        .await
        .expect("stream")
        .into_inner()
        .message()
        .await
        .expect("reply")
        .expect("one reply");
    let port_status = reply
        .operation_statuses
        .iter()
        .find(|s| s.resource_id == "9f3c2a1b-77aa-4c1e")
        .unwrap();
    assert_eq!(
        port_status.operation_status,
        OperationStatus::Pending as i32,
        "{reply:?}"
    );
    assert!(
        port_status.message.contains("tap9f3c2a1b-77"),
        "{}",
        port_status.message
    );

    // The hypervisor creates the tap; nobody pushes again.
    host.exec(
        "ip",
        &["tuntap", "add", "dev", "tap9f3c2a1b-77", "mode", "tap"],
    )
    .unwrap();
    let tap = host.link("tap9f3c2a1b-77").unwrap().unwrap();
    let mut control = agent.control().await;
    let port = wait_for(
        "the tap port to become ready",
        Duration::from_secs(10),
        async || {
            let ports = control
                .list_ports(ListRequest {})
                .await
                .ok()?
                .into_inner()
                .ports;
            ports
                .into_iter()
                .find(|p| p.phase == PortPhase::Ready as i32)
        },
    )
    .await;
    assert_eq!(port.ifindex as u64, tap["ifindex"].as_u64().unwrap());

    // Unbinding forgets the tap without deleting it.
    let mut unbind = tap_port("9f3c2a1b-77aa-4c1e", "vpc1", "sn1", "10.0.1.11", MAC1)
        .with(OperationType::Update, 2);
    if let Some(config) = unbind.configuration.as_mut() {
        config.device_id.clear();
        config.device_owner.clear();
    }
    let reply = agent.push(v1(vec![], vec![], vec![unbind])).await;
    assert_eq!(
        reply.operation_statuses[0].operation_status,
        OperationStatus::Success as i32
    );
    assert!(
        host.link("tap9f3c2a1b-77").unwrap().is_some(),
        "an adopted tap must not be deleted"
    );
    let ports = control
        .list_ports(ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .ports;
    assert_eq!(ports[0].phase, PortPhase::Unbound as i32);

    // The unbind survives a restart: the tap is not adopted again.
    agent.restart().await;
    let ports = agent.ports().await;
    assert_eq!(ports[0].phase, PortPhase::Unbound as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_created_without_device_id_is_still_bound() {
    if !privileged("a_port_created_without_device_id_is_still_bound") {
        return;
    }
    let prefix = unique_prefix("nodev");
    let host = Netns::new(format!("{prefix}-host")).unwrap();
    let agent = Agent::start(&host, AgentOptions::default()).await;
    // Alcor's controller may leave device id and owner empty on CREATE.
    let mut port = tap_port("c0ffee00-1111-2222", "vpc1", "sn1", "10.0.1.12", MAC1);
    if let Some(config) = port.configuration.as_mut() {
        config.device_id.clear();
        config.device_owner.clear();
    }
    let reply = agent.push(one_subnet(vec![port])).await;
    assert_eq!(
        reply.operation_statuses[2].operation_status,
        OperationStatus::Pending as i32,
        "{reply:?}"
    );
}
