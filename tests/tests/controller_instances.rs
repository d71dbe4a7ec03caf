//! Two controller instances on one etcd share three real agents: in the
//! controller's namespace on the fabric, etcd and both instances (on two
//! pairs of ports); agents in host namespaces that list both instances
//! (`--controller A,B`); VMs as namespaces with busybox udhcpc; everything
//! through the `openstack` CLI.
//!
//! Each agent is pushed to by exactly one instance (the instances' session
//! metrics and the agents' open streams agree); a port created through one
//! instance reaches an agent the other serves; one instance killed
//! (SIGKILL): its agents are taken over within a bound, get their whole
//! state again and forward throughout (pings at 50 per second across the
//! takeover, none lost), their heartbeats move to the survivor, and a port
//! created after, through the survivor, becomes ACTIVE and pings. Then
//! etcd itself is killed for longer than the survivor's lease: the survivor
//! stops pushing, the VMs forward throughout (none of their pings lost),
//! and once etcd is back on its data the survivor serves every agent
//! again and a port created then becomes ACTIVE and pings.

use std::{collections::BTreeMap, time::Duration};

use alcor_tests::{
    Agent,
    cloud::{CONVERGE, Cloud, HOSTS, Options, address},
    traffic::PingRun,
    wait_for,
};

/// How long a killed instance's agents may wait for the survivor: its
/// lease's 5 s, and the rest.
const TAKEOVER: Duration = Duration::from_secs(15);
/// The pings across the takeover: 50 a second, for longer than the kill
/// and the takeover can take.
const PING_INTERVAL: &str = "0.02";
const PINGS: u32 = 1_250;

/// Host → the index of the instance that pushes to it, if each host has
/// exactly one, every live instance some (of those in `live`), and every
/// agent exactly one goal-state stream open.
fn pushers(lab: &Cloud, live: &[usize]) -> Result<BTreeMap<String, usize>, String> {
    let mut owners = BTreeMap::new();
    for &index in live {
        let (_, hosts) = lab.instances[index]
            .serving()
            .ok_or_else(|| format!("instance {index} does not answer"))?;
        if hosts.is_empty() {
            return Err(format!("instance {index} serves no agent"));
        }
        for host in hosts {
            if let Some(other) = owners.insert(host.clone(), index) {
                return Err(format!("{host} served by instances {other} and {index}"));
            }
        }
    }
    if owners.len() != HOSTS.len() {
        return Err(format!("served: {owners:?}"));
    }
    for (host, agent) in lab.agents() {
        let streams = agent_metric(agent, "alcor_agent_goalstate_streams");
        if streams != Some(1) {
            return Err(format!("{host} has {streams:?} goal-state streams open"));
        }
    }
    Ok(owners)
}

/// A metric of the agent without labels, as an integer.
fn agent_metric(agent: &Agent, name: &str) -> Option<u64> {
    let text = agent.metrics().ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}

/// Goal-state messages the agent applied so far.
fn messages_applied(agent: &Agent) -> u64 {
    let text = agent.metrics().unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("alcor_agent_goalstate_messages_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_agents_and_a_killed_ones_are_taken_over_without_a_lost_ping() {
    let test =
        "two_instances_share_the_agents_and_a_killed_ones_are_taken_over_without_a_lost_ping";
    let two = Options {
        two_instances: true,
        ..Options::default()
    };
    let Some(mut lab) = Cloud::ready(test, "two", two).await else {
        return;
    };
    lab.network(&[("sn1", "10.0.1.0/24")]);

    // Every VM made through instance 0, whichever instance serves its host.
    let mut ports = BTreeMap::new();
    for (n, (host, _)) in HOSTS.iter().enumerate() {
        let vm = format!("vm{}", n + 1);
        let port = lab.create_vm(0, &vm, host, None);
        ports.insert(host.to_string(), (vm, port));
    }
    for (vm, _) in ports.values() {
        lab.wait_active(0, vm).await;
    }
    for (vm, port) in ports.values() {
        lab.lease(vm, port);
    }
    let owners = wait_for("the agents split, one pusher each", CONVERGE, async || {
        pushers(&lab, &[0, 1]).ok()
    })
    .await;
    eprintln!("instance by host: {owners:?}");
    let on = |instance: usize| -> Vec<String> {
        owners
            .iter()
            .filter(|(_, owner)| **owner == instance)
            .map(|(host, _)| host.clone())
            .collect()
    };
    let (on_a, on_b) = (on(0), on(1));
    // Made through instance 0, pushed by instance 1: it leases and pings.
    let (vm_b, port_b) = &ports[&on_b[0]];
    let (vm_a, port_a) = &ports[&on_a[0]];
    lab.pings(vm_a, port_b).await;
    lab.pings(vm_b, port_a).await;

    // Pings from every VM of instance 0's hosts, across the kill.
    let target = address(port_b);
    let mut runs = Vec::new();
    for host in &on_a {
        let (vm, _) = &ports[host];
        let count = PINGS.to_string();
        let run = PingRun::start(
            lab.vm(vm),
            &target,
            &["-q", "-c", &count, "-i", PING_INTERVAL, "-w", "60"],
            Duration::from_secs(90),
        )
        .unwrap();
        runs.push((vm.clone(), run));
    }
    let applied: Vec<u64> = on_a
        .iter()
        .map(|host| messages_applied(lab.agent(host)))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    lab.instances[0].kill();
    let killed = std::time::Instant::now();
    wait_for("instance 1 pushing to every agent", TAKEOVER, async || {
        pushers(&lab, &[1]).ok()
    })
    .await;
    let took = killed.elapsed();
    eprintln!("instance 1 took instance 0's agents over in {took:?}");
    // The survivor started by sending them their whole state, applied.
    for (host, before) in on_a.iter().zip(&applied) {
        let agent = lab.agent(host);
        wait_for(
            &format!("{host} applying the survivor's state"),
            CONVERGE,
            async || (messages_applied(agent) > *before).then_some(()),
        )
        .await;
    }
    // All of it while the pings went on.
    for (vm, run) in &mut runs {
        assert!(
            run.is_running(),
            "{vm}'s pings ended before the takeover did"
        );
    }
    // The agents' heartbeats moved to the survivor.
    let survivor = lab.instances[1].grpc_endpoint();
    for (host, agent) in lab.agents() {
        wait_for(
            &format!("{host} heartbeating to the survivor"),
            CONVERGE,
            async || {
                let link = agent.agentctl_json(&["status"])["controller"].clone();
                (link["url"] == survivor.as_str() && link["registered"] == true).then_some(())
            },
        )
        .await;
    }

    // A port made through the survivor on a host it took over.
    let vm4 = lab.create_vm(1, "vm4", &on_a[0], None);
    lab.wait_active(1, "vm4").await;
    lab.lease("vm4", &vm4);
    lab.pings("vm4", port_b).await;
    lab.pings(vm_b, &vm4).await;

    // Not one ping lost across the takeover.
    for (vm, run) in runs {
        let ping = run.finish().unwrap();
        eprintln!("{vm} across the takeover: {}", ping.summary);
        assert_eq!(ping.transmitted, PINGS, "{vm}: {}", ping.summary);
        assert_eq!(
            ping.lost(),
            0,
            "{vm} lost pings: {}\n{}",
            ping.summary,
            lab.logs()
        );
    }
    assert!(took < TAKEOVER);

    // etcd killed, down until the survivor's lease has lapsed, then back
    // on its data: the datapath does not care, and nothing is lost.
    let count = (2 * PINGS).to_string();
    let mut across = PingRun::start(
        lab.vm(vm_b),
        &address(&vm4),
        &["-q", "-c", &count, "-i", PING_INTERVAL, "-w", "120"],
        Duration::from_secs(150),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab.etcd.as_mut().unwrap().kill();
    wait_for(
        "the survivor to stop pushing once its lease lapses",
        CONVERGE,
        async || {
            let (_, hosts) = lab.instances[1].serving()?;
            hosts.is_empty().then_some(())
        },
    )
    .await;
    tokio::task::block_in_place(|| lab.etcd.as_mut().unwrap().restart()).unwrap();
    wait_for(
        "the survivor serving every agent again",
        CONVERGE,
        async || pushers(&lab, &[1]).ok(),
    )
    .await;
    let vm5 = lab.create_vm(1, "vm5", &on_b[0], None);
    lab.wait_active(1, "vm5").await;
    lab.lease("vm5", &vm5);
    lab.pings("vm5", &vm4).await;
    lab.pings("vm4", &vm5).await;
    assert!(
        across.is_running(),
        "{vm_b}'s pings ended before etcd was back"
    );
    let ping = across.finish().unwrap();
    eprintln!("{vm_b} across the etcd restart: {}", ping.summary);
    assert_eq!(
        ping.lost(),
        0,
        "{vm_b} lost pings across the etcd restart: {}\n{}",
        ping.summary,
        lab.logs()
    );
}
