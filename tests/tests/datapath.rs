//! The eBPF port program, built and loaded for real: it counts what crosses
//! each port, and keeps counting while the agent is down, because its links
//! and maps are pinned.

use alcor_proto::control::{GetCountersRequest, PortCounters};
use alcor_tests::{Agent, AgentOptions, Netns, goalstate::*, privileged, unique_prefix};

const PORT: &str = "count-port-0001";
const DEVICE: &str = "tapcount-port-";

async fn counters(agent: &Agent) -> PortCounters {
    let mut list = agent
        .control()
        .await
        .get_counters(GetCountersRequest {
            port_id: PORT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .ports;
    assert_eq!(list.len(), 1);
    list.remove(0)
}

/// Five pings from the VM to the host side of its port, all answered.
fn ping(vm: &Netns) {
    let output = vm
        .output("ping", &["-c", "5", "-i", "0.05", "-W", "2", "10.0.1.1"])
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn port_counters_count_real_traffic_even_while_the_agent_is_down() {
    if !privileged("port_counters_count_real_traffic_even_while_the_agent_is_down") {
        return;
    }
    let prefix = unique_prefix("dp");
    let host = Netns::new(format!("{prefix}-h")).unwrap();
    let vm = Netns::new(format!("{prefix}-vm")).unwrap();
    let mut agent = Agent::start(&host, AgentOptions::default()).await;
    let reply = agent
        .push(one_subnet(vec![netns_port(
            PORT,
            "vpc1",
            "sn1",
            "10.0.1.10",
            "fa:16:3e:00:40:01",
            vm.name(),
        )]))
        .await;
    assert!(
        reply
            .operation_statuses
            .iter()
            .all(|s| s.operation_status == 0),
        "{reply:?}"
    );
    // Until the datapath answers for the gateway, the host side plays it.
    host.exec("ip", &["addr", "add", "10.0.1.1/24", "dev", DEVICE])
        .unwrap();
    vm.exec("ip", &["addr", "add", "10.0.1.10/24", "dev", "eth0"])
        .unwrap();

    ping(&vm);
    let first = counters(&agent).await;
    assert!(first.rx_packets >= 5 && first.tx_packets >= 5, "{first:?}");
    assert!(
        first.rx_bytes >= 5 * 98 && first.tx_bytes >= 5 * 98,
        "{first:?}"
    );

    agent.kill();
    ping(&vm);
    agent.restart().await;
    let second = counters(&agent).await;
    assert!(
        second.rx_packets >= first.rx_packets + 5 && second.tx_packets >= first.tx_packets + 5,
        "the program must keep counting while the agent is down: {first:?} then {second:?}"
    );

    let output = agent.agentctl(&["counters", PORT]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && table.contains(DEVICE), "{table}");
}
