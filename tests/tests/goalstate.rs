//! The goal-state protocol as a controller relies on it: one status per
//! resource, bad input refused with a reason while its neighbours apply,
//! revision ordering, streams answered message by message, metrics.

use std::{io::Read, io::Write, time::Duration};

use alcor_proto::control::ListRequest;
use alcor_proto::schema::{
    GoalStateOperationReply, GoalStateV2, NetworkType, OperationStatus, OperationType, PortState,
    UpdateType,
};
use alcor_tests::{Agent, AgentOptions, Netns, goalstate::*, privileged, unique_prefix, wait_for};
use tokio_stream::StreamExt;

fn status_of(reply: &GoalStateOperationReply, id: &str) -> (OperationStatus, String) {
    let matching: Vec<_> = reply
        .operation_statuses
        .iter()
        .filter(|s| s.resource_id == id)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one status for {id}: {reply:#?}"
    );
    (
        OperationStatus::try_from(matching[0].operation_status).unwrap(),
        matching[0].message.clone(),
    )
}

fn assert_status(
    reply: &GoalStateOperationReply,
    id: &str,
    expected: OperationStatus,
    reason: &str,
) {
    let (status, message) = status_of(reply, id);
    assert_eq!(status, expected, "{id}: {message}");
    assert!(
        message.contains(reason),
        "{id}: reason {message:?} should mention {reason:?}"
    );
}

fn edit(
    mut port: PortState,
    f: impl FnOnce(&mut alcor_proto::schema::PortConfiguration),
) -> PortState {
    f(port.configuration.as_mut().unwrap());
    port
}

struct Host {
    host: Netns,
    vms: Vec<Netns>,
    agent: Agent,
}

async fn host(tag: &str, vms: usize) -> Host {
    let prefix = unique_prefix(tag);
    let host = Netns::new(format!("{prefix}-h")).unwrap();
    let vms = (0..vms)
        .map(|i| Netns::new(format!("{prefix}-vm{i}")).unwrap())
        .collect();
    let agent = Agent::start(&host, AgentOptions::default()).await;
    Host { host, vms, agent }
}

/// A goal-state stream to the agent that stays open as a controller's
/// does: messages go in through the sender, replies come out.
async fn open_stream(
    agent: &Agent,
) -> (
    tokio::sync::mpsc::Sender<GoalStateV2>,
    tonic::Streaming<GoalStateOperationReply>,
) {
    let (messages, outgoing) = tokio::sync::mpsc::channel(4);
    let replies = agent
        .client()
        .await
        .push_goal_states_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
        .await
        .unwrap()
        .into_inner();
    (messages, replies)
}

fn mac(i: usize) -> String {
    format!("fa:16:3e:00:20:{i:02x}")
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_reason_and_neighbours_still_apply() {
    if !privileged("bad_input_is_refused_with_a_reason_and_neighbours_still_apply") {
        return;
    }
    let h = host("bad", 2).await;
    let vm = |i: usize| h.vms[i].name().to_string();
    let good_port = netns_port(
        "good-port-0001",
        "vpc1",
        "sn1",
        "10.0.1.10",
        &mac(1),
        &vm(0),
    );
    let mut unknown_op = vpc("vpc-unknown-op", 7, "10.9.0.0/16");
    unknown_op.operation_type = 17;
    let mut vlan = subnet("sn-vlan", "vpc1", "10.0.9.0/24", "10.0.9.1");
    vlan.configuration.as_mut().unwrap().network_type = NetworkType::Vlan as i32;
    let mut unknown_type = subnet("sn-enum", "vpc1", "10.0.8.0/24", "10.0.8.1");
    unknown_type.configuration.as_mut().unwrap().network_type = 42;

    let message = v1(
        vec![
            vpc("vpc1", 100, "10.0.0.0/16"),
            vpc("vpc-vni0", 0, "10.1.0.0/16"),
            vpc("vpc-vni-big", 1 << 24, "10.2.0.0/16"),
            vpc("vpc-cidr", 5, "10.3.0.0/33"),
            vpc("vpc1", 100, "10.0.0.0/16"),
            unknown_op,
        ],
        vec![
            subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1"),
            subnet("sn-cidr", "vpc1", "10.0.2.5/24", "10.0.2.1"),
            subnet("sn-novpc", "vpc-nowhere", "10.0.3.0/24", "10.0.3.1"),
            vlan,
            unknown_type,
        ],
        vec![
            good_port,
            netns_port(
                "bad-mac-00001",
                "vpc1",
                "sn1",
                "10.0.1.11",
                "fa:16:3e:zz:00:01",
                &vm(1),
            ),
            netns_port("outside-00001", "vpc1", "sn1", "10.0.2.11", &mac(2), &vm(1)),
            edit(
                netns_port("delta-create1", "vpc1", "sn1", "10.0.1.12", &mac(3), &vm(1)),
                |c| c.update_type = UpdateType::Delta as i32,
            ),
            netns_port(
                "no-subnet-001",
                "vpc1",
                "sn-nowhere",
                "10.0.1.13",
                &mac(4),
                &vm(1),
            ),
            netns_port(
                "no-vpc-000001",
                "vpc-nowhere",
                "sn1",
                "10.0.1.14",
                &mac(5),
                &vm(1),
            ),
            netns_port(
                "no-netns-0001",
                "vpc1",
                "sn1",
                "10.0.1.15",
                &mac(6),
                "no-such-namespace-xyz",
            ),
        ],
    );
    let reply = h.agent.push(message).await;

    use OperationStatus::*;
    assert_status(&reply, "vpc-vni0", InvalidArg, "tunnel id 0");
    assert_status(&reply, "vpc-vni-big", InvalidArg, "tunnel id 16777216");
    assert_status(&reply, "vpc-cidr", InvalidArg, "invalid IPv4 CIDR");
    assert_status(
        &reply,
        "vpc-unknown-op",
        InvalidArg,
        "unknown operation_type value 17",
    );
    assert_status(&reply, "sn1", Success, "");
    assert_status(&reply, "sn-cidr", InvalidArg, "host bits");
    assert_status(&reply, "sn-novpc", InvalidArg, "unknown VPC");
    assert_status(&reply, "sn-vlan", InvalidArg, "not supported");
    assert_status(
        &reply,
        "sn-enum",
        InvalidArg,
        "unknown network_type value 42",
    );
    assert_status(&reply, "good-port-0001", Success, "");
    assert_status(&reply, "bad-mac-00001", InvalidArg, "invalid MAC");
    assert_status(&reply, "outside-00001", InvalidArg, "outside subnet");
    assert_status(&reply, "delta-create1", InvalidArg, "update_type FULL");
    assert_status(&reply, "no-subnet-001", InvalidArg, "unknown subnet");
    assert_status(&reply, "no-vpc-000001", InvalidArg, "unknown VPC");
    assert_status(&reply, "no-netns-0001", Failure, "no-such-namespace-xyz");
    // The duplicate vpc1: the first applies, the second is refused.
    let vpc1: Vec<_> = reply
        .operation_statuses
        .iter()
        .filter(|s| s.resource_id == "vpc1")
        .collect();
    assert_eq!(vpc1.len(), 2);
    assert_eq!(vpc1[0].operation_status, Success as i32);
    assert_eq!(vpc1[1].operation_status, InvalidArg as i32);
    assert!(
        vpc1[1].message.contains("more than once"),
        "{}",
        vpc1[1].message
    );

    // The kernel holds the good port only; the failed one left nothing.
    assert!(h.vms[0].link("eth0").unwrap().is_some());
    assert!(h.vms[1].link("eth0").unwrap().is_none());
    assert!(h.host.link("tapno-netns-00").unwrap().is_none());
    let ports = h.agent.ports().await;
    let ids: Vec<_> = ports.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["good-port-0001"]);

    // Resending the refused port once its namespace exists applies it.
    let late = Netns::new(format!("{}-late", h.host.name())).unwrap();
    let retry = netns_port(
        "no-netns-0001",
        "vpc1",
        "sn1",
        "10.0.1.15",
        &mac(6),
        late.name(),
    );
    let reply = h.agent.push(v1(vec![], vec![], vec![retry])).await;
    assert_status(&reply, "no-netns-0001", Success, "");
    assert!(late.link("eth0").unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_of_tens_of_mib_is_handled_and_one_over_the_limit_refused() {
    if !privileged("a_message_of_tens_of_mib_is_handled_and_one_over_the_limit_refused") {
        return;
    }
    let h = host("big", 1).await;
    let mut client = h.agent.client().await;
    let huge_name = "x".repeat(30 << 20);
    let mut oversized_vpc = vpc("vpc-huge", 8, "10.8.0.0/16");
    oversized_vpc.configuration.as_mut().unwrap().name = huge_name;
    let reply = client
        .push_network_resource_states(v1(
            vec![vpc("vpc1", 100, "10.0.0.0/16"), oversized_vpc],
            vec![subnet("sn1", "vpc1", "10.0.1.0/24", "10.0.1.1")],
            vec![netns_port(
                "port-big-0001",
                "vpc1",
                "sn1",
                "10.0.1.10",
                &mac(1),
                h.vms[0].name(),
            )],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        &reply,
        "vpc-huge",
        OperationStatus::InvalidArg,
        "more than 255",
    );
    assert_status(&reply, "port-big-0001", OperationStatus::Success, "");

    // Past the 64 MiB default the transport refuses the message whole...
    let mut too_big = vpc("vpc-too-big", 9, "10.9.0.0/16");
    too_big.configuration.as_mut().unwrap().name = "y".repeat(70 << 20);
    let error = client
        .push_network_resource_states(v1(vec![too_big], vec![], vec![]))
        .await
        .expect_err("a 70 MiB message must be refused");
    assert_eq!(error.code(), tonic::Code::OutOfRange, "{error}");
    // ...and the agent carries on.
    let reply = client
        .push_network_resource_states(v1(vec![vpc("vpc2", 200, "10.2.0.0/16")], vec![], vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_status(&reply, "vpc2", OperationStatus::Success, "");

    // The same on a stream: the messages before it are answered (30 MiB
    // is within the limit there too), then the stream ends with the
    // refusal.
    let mut oversized_vpc = vpc("vpc-huge-2", 10, "10.10.0.0/16");
    oversized_vpc.configuration.as_mut().unwrap().name = "z".repeat(30 << 20);
    let mut too_big = vpc("vpc-too-big", 9, "10.9.0.0/16");
    too_big.configuration.as_mut().unwrap().name = "y".repeat(70 << 20);
    let messages = [
        v2(vec![vpc("vpc3", 300, "10.3.0.0/16")], vec![], vec![]),
        v2(vec![oversized_vpc], vec![], vec![]),
        v2(vec![too_big], vec![], vec![]),
    ];
    let mut replies = client
        .push_goal_states_stream(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().expect("a reply to vpc3");
    assert_status(&reply, "vpc3", OperationStatus::Success, "");
    let reply = replies
        .message()
        .await
        .unwrap()
        .expect("a reply to vpc-huge-2");
    assert_status(
        &reply,
        "vpc-huge-2",
        OperationStatus::InvalidArg,
        "more than 255",
    );
    let error = replies
        .message()
        .await
        .expect_err("a 70 MiB message must be refused");
    assert_eq!(error.code(), tonic::Code::OutOfRange, "{error}");
    let vpcs = h.agent.control().await.list_vpcs(ListRequest {}).await;
    let ids: Vec<_> = vpcs
        .unwrap()
        .into_inner()
        .vpcs
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, ["vpc1", "vpc2", "vpc3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn revisions_order_updates_and_equal_ones_change_nothing() {
    if !privileged("revisions_order_updates_and_equal_ones_change_nothing") {
        return;
    }
    let h = host("rev", 1).await;
    let vm = h.vms[0].name().to_string();
    let mut client = h.agent.client().await;
    let port = |mac: &str| netns_port("port-rev-0001", "vpc1", "sn1", "10.0.1.10", mac, &vm);
    let push = |ports: Vec<PortState>| v1(vec![], vec![], ports);

    let reply = client
        .push_network_resource_states(one_subnet(vec![
            port(&mac(1)).with(OperationType::Create, 2),
        ]))
        .await
        .unwrap()
        .into_inner();
    assert_status(&reply, "port-rev-0001", OperationStatus::Success, "");
    let eth0 = || h.vms[0].link("eth0").unwrap().unwrap();
    let ifindex = eth0()["ifindex"].clone();

    // Older: refused, not applied.
    let reply = client
        .push_network_resource_states(push(vec![port(&mac(2)).with(OperationType::Update, 1)]))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        &reply,
        "port-rev-0001",
        OperationStatus::OutOfOrder,
        "older than the applied revision 2",
    );
    assert_eq!(eth0()["address"], mac(1));

    // Equal: success, nothing changes (not even with other content).
    let reply = client
        .push_network_resource_states(push(vec![port(&mac(3)).with(OperationType::Update, 2)]))
        .await
        .unwrap()
        .into_inner();
    assert_status(&reply, "port-rev-0001", OperationStatus::Success, "");
    assert_eq!(eth0()["address"], mac(1));
    assert_eq!(eth0()["ifindex"], ifindex);

    // Newer: applied; a new MAC means a new VM-side device.
    let reply = client
        .push_network_resource_states(push(vec![port(&mac(4)).with(OperationType::Update, 3)]))
        .await
        .unwrap()
        .into_inner();
    assert_status(&reply, "port-rev-0001", OperationStatus::Success, "");
    assert_eq!(eth0()["address"], mac(4));

    // An older DELETE is refused; a current one removes the veth.
    let reply = client
        .push_network_resource_states(push(vec![port(&mac(4)).with(OperationType::Delete, 2)]))
        .await
        .unwrap()
        .into_inner();
    assert_status(&reply, "port-rev-0001", OperationStatus::OutOfOrder, "");
    assert!(h.vms[0].link("eth0").unwrap().is_some());
    let reply = client
        .push_network_resource_states(push(vec![port(&mac(4)).with(OperationType::Delete, 3)]))
        .await
        .unwrap()
        .into_inner();
    assert_status(&reply, "port-rev-0001", OperationStatus::Success, "");
    assert!(h.vms[0].link("eth0").unwrap().is_none());
    assert!(h.host.link("tapport-rev-00").unwrap().is_none());

    // Deleting what does not exist succeeds; a subnet in use cannot go.
    let reply = client
        .push_network_resource_states(v1(
            vec![],
            vec![
                subnet("sn-ghost", "vpc1", "10.0.7.0/24", "10.0.7.1")
                    .with(OperationType::Delete, 1),
            ],
            vec![port(&mac(4)).with(OperationType::Delete, 4)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(&reply, "sn-ghost", OperationStatus::Success, "");
    assert_status(&reply, "port-rev-0001", OperationStatus::Success, "");
    let reply = client
        .push_network_resource_states(v1(
            vec![vpc("vpc1", 100, "10.0.0.0/16").with(OperationType::Delete, 1)],
            vec![],
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_status(
        &reply,
        "vpc1",
        OperationStatus::InvalidArg,
        "still used by SUBNET sn1",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_of_100_messages_gets_100_replies_in_order() {
    if !privileged("a_stream_of_100_messages_gets_100_replies_in_order") {
        return;
    }
    let h = host("stream", 0).await;
    let messages: Vec<GoalStateV2> = (0..100)
        .map(|i| {
            v2(
                vec![vpc(&format!("vpc-{i:03}"), 1000 + i, "10.0.0.0/16")],
                vec![],
                vec![],
            )
        })
        .collect();
    let mut replies = h
        .agent
        .client()
        .await
        .push_goal_states_stream(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    while let Some(reply) = replies.next().await {
        let reply = reply.expect("reply");
        assert_eq!(reply.operation_statuses.len(), 1, "{reply:?}");
        assert_eq!(
            reply.operation_statuses[0].operation_status,
            OperationStatus::Success as i32
        );
        received.push(reply.operation_statuses[0].resource_id.clone());
    }
    let expected: Vec<String> = (0..100).map(|i| format!("vpc-{i:03}")).collect();
    assert_eq!(received, expected);

    // A V2 entry whose key is not its id is refused.
    let mut mismatched = v2(vec![vpc("vpc-a", 5, "10.5.0.0/16")], vec![], vec![]);
    let state = mismatched.vpc_states.remove("vpc-a").unwrap();
    mismatched.vpc_states.insert("vpc-b".into(), state);
    let reply = h
        .agent
        .client()
        .await
        .push_goal_states_stream(tokio_stream::iter([mismatched]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_status(
        &reply,
        "vpc-a",
        OperationStatus::InvalidArg,
        "map key \"vpc-b\"",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_messages_and_resources() {
    if !privileged("metrics_count_messages_and_resources") {
        return;
    }
    let h = host("metrics", 0).await;
    h.agent
        .client()
        .await
        .push_network_resource_states(v1(
            vec![
                vpc("vpc1", 100, "10.0.0.0/16"),
                vpc("vpc-bad", 0, "10.1.0.0/16"),
            ],
            vec![],
            vec![],
        ))
        .await
        .unwrap();
    let text = h
        .host
        .enter(|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect("127.0.0.1:9490")?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap()
        .unwrap();
    assert!(
        text.contains("alcor_agent_goalstate_messages_total{api=\"v1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("alcor_agent_goalstate_resources_total{kind=\"VPC\",status=\"SUCCESS\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "alcor_agent_goalstate_resources_total{kind=\"VPC\",status=\"INVALID_ARG\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("alcor_agent_goalstate_apply_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("alcor_agent_ports{phase=\"ready\"} 0"),
        "{text}"
    );
}

/// `alcor_agent_goalstate_streams` counts the streams open now: what tells
/// that one controller instance at a time pushes to an agent.
#[tokio::test]
async fn open_streams_are_counted_until_they_end() {
    if !privileged("open_streams_are_counted_until_they_end") {
        return;
    }
    let h = host("streams", 0).await;
    let streams = |agent: &Agent| {
        let text = agent.metrics().unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix("alcor_agent_goalstate_streams "))
            .map(|value| value.trim().to_string())
    };
    assert_eq!(streams(&h.agent).as_deref(), Some("0"));
    let (messages, mut replies) = open_stream(&h.agent).await;
    messages
        .send(v2(vec![vpc("vpc-s", 1, "10.0.0.0/16")], vec![], vec![]))
        .await
        .unwrap();
    replies.next().await.unwrap().unwrap();
    assert_eq!(streams(&h.agent).as_deref(), Some("1"));
    drop(messages);
    assert!(replies.next().await.is_none(), "the stream ends");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while streams(&h.agent).as_deref() != Some("0") {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            streams(&h.agent)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM (systemd stopping the agent) while a big message is being
/// applied: the apply finishes, its reply goes out, the agent exits cleanly
/// within its grace period, and the message is there, whole, after the
/// restart.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_apply_in_progress_finish_and_reply() {
    if !privileged("sigterm_lets_the_apply_in_progress_finish_and_reply") {
        return;
    }
    const NEIGHBORS: usize = 60_000;
    let mut h = host("sigterm", 0).await;
    let (messages, mut replies) = open_stream(&h.agent).await;
    // The stream is up and applying: a first message answered.
    let network = v2(
        vec![vpc("vpc-t", 77, "10.0.0.0/8")],
        vec![subnet("sn-t", "vpc-t", "10.1.0.0/16", "10.1.0.1")],
        vec![],
    );
    messages.send(network).await.unwrap();
    let first = replies.next().await.expect("a reply").expect("a reply");
    assert_status(&first, "vpc-t", OperationStatus::Success, "");

    let mut big = v2(vec![], vec![], vec![]);
    big.neighbor_states = (0..NEIGHBORS)
        .map(|i| {
            let id = format!("n{i}");
            let ip = format!("10.1.{}.{}", 1 + i / 250, 1 + i % 250);
            let mac = format!("fa:16:3e:0a:{:02x}:{:02x}", i >> 8 & 0xff, i & 0xff);
            (
                id.clone(),
                neighbor(&id, "vpc-t", "sn-t", &ip, &mac, "198.18.0.2"),
            )
        })
        .collect();
    messages.send(big).await.unwrap();
    let applying = format!("applying goal state messages=1 resources={NEIGHBORS}");
    wait_for(
        "the agent to apply the big message",
        Duration::from_secs(30),
        async || h.agent.log().contains(&applying).then_some(()),
    )
    .await;
    // Read as a controller does, while the agent stops.
    let reply = tokio::spawn(async move { replies.next().await });
    let status = h.agent.terminate().await;
    assert!(status.success(), "the agent exits cleanly: {status}");
    let log = h.agent.log();
    assert!(log.contains("stopping"), "{log}");
    assert!(
        !log.contains("still running"),
        "every task ended in time: {log}"
    );

    let reply = reply
        .await
        .unwrap()
        .expect("the reply of the message in progress")
        .expect("the reply of the message in progress");
    assert_eq!(reply.operation_statuses.len(), NEIGHBORS, "one status each");
    assert!(
        reply
            .operation_statuses
            .iter()
            .all(|status| status.operation_status == OperationStatus::Success as i32)
    );
    drop(messages);
    h.agent.restart().await;
    let status = h
        .agent
        .control()
        .await
        .get_status(alcor_proto::control::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.neighbors as usize, NEIGHBORS);
    assert_eq!(status.vpcs, 1);
}
