//! `agentctl` against a real agent: tables, JSON and exit codes as an
//! operator sees them.

use std::process::{Command, Output};

use alcor_proto::{
    control::{PortBinding, PortPhase},
    schema::OperationStatus,
};
use alcor_tests::{
    Agent, AgentOptions, Netns, agent::bin, goalstate::*, privileged, unique_prefix,
};

const PORT_ID: &str = "3f1e2d4c-5b6a-4789-9abc-def012345678";
const DEVICE: &str = "tap3f1e2d4c-5b";
const MAC: &str = "fa:16:3e:00:20:01";
const IP: &str = "10.0.1.10";
const TAP_PORT_ID: &str = "9f3c2a1b-77aa-4c1e";
const TAP_MAC: &str = "fa:16:3e:00:20:02";

/// Stdout of a run that must succeed.
fn stdout(args: &[&str], output: Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "agentctl {args:?}: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn run(agent: &Agent, args: &[&str]) -> String {
    stdout(args, agent.agentctl(args))
}

/// Stderr of a run that must fail with exit code 1 and print nothing else.
fn failure(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert!(output.stdout.is_empty(), "{output:?}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line, no backtrace: {stderr}"
    );
    stderr
}

/// The table row that mentions `id`, split into its cells.
fn row<'a>(table: &'a str, id: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|line| line.starts_with(id))
        .unwrap_or_else(|| panic!("no row for {id} in\n{table}"))
        .split_whitespace()
        .collect()
}

/// The value of `key` in `agentctl status`.
fn status_value<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key).filter(|v| v.starts_with("  ")))
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
        .trim()
}

#[tokio::test(flavor = "multi_thread")]
async fn agentctl_shows_what_the_agent_holds() {
    if !privileged("agentctl_shows_what_the_agent_holds") {
        return;
    }
    let prefix = unique_prefix("ctl");
    let host = Netns::new(format!("{prefix}-host")).unwrap();
    let vm = Netns::new(format!("{prefix}-vm1")).unwrap();
    let mut agent = Agent::start(&host, AgentOptions::default()).await;

    assert_eq!(run(&agent, &["ports"]), "no ports\n");
    assert_eq!(run(&agent, &["neighbors"]), "no neighbors\n");

    let reply = agent
        .client()
        .await
        .push_network_resource_states(one_subnet(vec![netns_port(
            PORT_ID,
            "vpc1",
            "sn1",
            IP,
            MAC,
            vm.name(),
        )]))
        .await
        .expect("push")
        .into_inner();
    assert!(
        reply
            .operation_statuses
            .iter()
            .all(|s| s.operation_status == OperationStatus::Success as i32),
        "{reply:?}\n{}",
        agent.log()
    );

    let ports = run(&agent, &["ports"]);
    assert!(ports.starts_with("PORT ID "), "{ports}");
    let cells = row(&ports, PORT_ID);
    for expected in ["ready", DEVICE, MAC, IP, "vpc1"] {
        assert!(cells.contains(&expected), "{expected} missing in\n{ports}");
    }
    assert!(
        cells.contains(&format!("netns:{}", vm.name()).as_str()),
        "{ports}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&run(&agent, &["--json", "ports"])).expect("ports as JSON");
    let port = &json["ports"][0];
    assert_eq!(json["ports"].as_array().map(Vec::len), Some(1), "{json}");
    assert_eq!(port["id"], PORT_ID);
    assert_eq!(port["device"], DEVICE);
    assert_eq!(port["mac_address"], MAC);
    assert_eq!(port["fixed_ips"][0]["ip_address"], IP);
    assert_eq!(port["phase"], PortPhase::Ready.as_str_name());
    assert_eq!(port["binding"], PortBinding::Netns.as_str_name());
    assert_eq!(port["netns"], vm.name());
    // --json also works after the command.
    let json_after: serde_json::Value =
        serde_json::from_str(&run(&agent, &["ports", "--json"])).expect("ports as JSON");
    assert_eq!(json_after, json);

    let status = run(&agent, &["status"]);
    assert_eq!(status_value(&status, "vpcs"), "1", "{status}");
    assert_eq!(status_value(&status, "subnets"), "1", "{status}");
    assert_eq!(
        status_value(&status, "ports"),
        "1 (1 ready, 0 pending, 0 failed)"
    );
    assert_eq!(status_value(&status, "neighbors"), "0", "{status}");
    assert_eq!(status_value(&status, "port MTU"), "1450", "{status}");
    let status_json: serde_json::Value =
        serde_json::from_str(&run(&agent, &["--json", "status"])).expect("status as JSON");
    assert_eq!(status_json["ports_ready"], 1);
    assert_eq!(status_json["vpcs"], 1);

    let vpcs = run(&agent, &["vpcs"]);
    let vpc_cells = row(&vpcs, "vpc1");
    assert!(vpc_cells.contains(&"10.0.0.0/16"), "{vpcs}");
    assert!(vpc_cells.contains(&"100"), "VNI in {vpcs}");
    let subnets = run(&agent, &["subnets"]);
    assert!(row(&subnets, "sn1").contains(&"10.0.1.1"), "{subnets}");

    let goal_state = run(&agent, &["goalstate"]);
    assert_eq!(
        row(&goal_state, "port"),
        ["port", PORT_ID, "1"],
        "{goal_state}"
    );
    assert!(goal_state.contains("--json"), "{goal_state}");
    let goal_state: serde_json::Value =
        serde_json::from_str(&run(&agent, &["--json", "goalstate"])).expect("goal state");
    assert_eq!(goal_state["port_states"][0]["configuration"]["id"], PORT_ID);

    // The counters come from the datapath: the row must exist, whatever
    // the values.
    for args in [&["counters"][..], &["counters", PORT_ID]] {
        let counters = run(&agent, args);
        assert!(counters.starts_with("PORT ID "), "{counters}");
        assert_eq!(row(&counters, PORT_ID)[1], DEVICE, "{counters}");
    }

    // A tap port waits for the hypervisor's device, and says so.
    agent
        .client()
        .await
        .push_network_resource_states(v1(
            vec![],
            vec![],
            vec![tap_port(TAP_PORT_ID, "vpc1", "sn1", "10.0.1.11", TAP_MAC)],
        ))
        .await
        .expect("push");
    let ports = run(&agent, &["ports"]);
    let cells = row(&ports, TAP_PORT_ID);
    for expected in ["pending", "tap", "tap9f3c2a1b-77", "-"] {
        assert!(cells.contains(&expected), "{expected} missing in\n{ports}");
    }
    let status = run(&agent, &["status"]);
    assert_eq!(
        status_value(&status, "ports"),
        "2 (1 ready, 1 pending, 0 failed)"
    );

    let unknown = failure(agent.agentctl(&["counters", "unknown-port"]));
    assert_eq!(
        unknown,
        "agentctl: alcor-agent: no ready port unknown-port\n"
    );

    // A crashed agent leaves its socket behind: nobody answers on it.
    agent.kill();
    let stopped = failure(agent.agentctl(&["status"]));
    assert!(
        stopped.contains("connection refused (is the agent running?"),
        "{stopped}"
    );
}

/// Needs no root: nothing is started.
#[test]
fn agentctl_without_an_agent_says_so() {
    let output = Command::new(bin("agentctl"))
        .args(["--socket", "/nonexistent", "status"])
        .output()
        .expect("running agentctl");
    assert_eq!(
        failure(output),
        "agentctl: cannot reach alcor-agent at /nonexistent: no such file \
         (is the agent running? see systemctl status alcor-agent)\n"
    );
}

#[test]
fn agentctl_usage_errors_exit_2() {
    let output = Command::new(bin("agentctl"))
        .args(["--socket", "/nonexistent", "no-such-command"])
        .output()
        .expect("running agentctl");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}
