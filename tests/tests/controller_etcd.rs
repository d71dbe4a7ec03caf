//! Two controller instances on one etcd, as a deployment with several
//! runs them, and 16 clients creating and deleting ports in one /22
//! through both at once: no address is ever given twice, every release
//! succeeds (Alcor's IP manager lost releases exactly here: "claim
//! resource not found"), and at the end the addresses given out are
//! exactly those of the ports there are. Then the same with one instance
//! killed (SIGKILL) in the middle and started again. And the agents are
//! shared: each served by one instance, a killed instance's taken over by
//! the other, a restarted one given its share back.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use alcor_tests::{
    controller::{Controller, StoreKind, request},
    etcd::{self, EtcdServer},
};
use serde_json::{Value, json};

const CLIENTS: usize = 16;
const ROUNDS: usize = 40;

/// What a client saw of one port.
struct Seen {
    id: String,
    address: String,
}

/// Creates a port through `listen`; `None` if the instance is down (the
/// port may or may not exist then: the end state tells).
fn create(listen: SocketAddr, network: &str) -> Option<Seen> {
    let body = json!({"port": {"network_id": network}});
    let (status, body) = request(listen, "POST", "/v2.0/ports", Some(&body)).ok()?;
    assert_eq!(status, 201, "{body}");
    Some(Seen {
        id: body["port"]["id"].as_str()?.to_string(),
        address: body["port"]["fixed_ips"][0]["ip_address"]
            .as_str()?
            .to_string(),
    })
}

/// Deletes a port through one instance, or the other if the first is down:
/// it must succeed (a 404 only if an earlier attempt that got no answer
/// did it).
fn delete(instances: &[SocketAddr; 2], first: usize, id: &str) {
    let path = format!("/v2.0/ports/{id}");
    let mut unanswered = false;
    for attempt in 0..20 {
        let listen = instances[(first + attempt) % 2];
        match request(listen, "DELETE", &path, None) {
            Ok((204, _)) => return,
            Ok((404, _)) if unanswered => return,
            Ok((status, body)) => panic!("releasing port {id}: {status} {body}"),
            Err(_) => {
                unanswered = true;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    panic!("port {id} could not be released through either instance");
}

/// The clients' work; `midway` runs once half of it is done.
fn run(instances: [SocketAddr; 2], network: &str, midway: impl FnOnce()) -> Vec<Seen> {
    let half_done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let half_done = half_done.clone();
                scope.spawn(move || {
                    let mut kept = Vec::new();
                    for round in 0..ROUNDS {
                        if client == 0 && round == ROUNDS / 2 {
                            half_done.store(true, Ordering::SeqCst);
                        }
                        let through = (client + round) % 2;
                        let Some(port) = create(instances[through], network) else {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        };
                        // A third released at once, through the other instance.
                        if (client + round) % 3 == 0 {
                            delete(&instances, through + 1, &port.id);
                        } else {
                            kept.push(port);
                        }
                    }
                    kept
                })
            })
            .collect();
        // Bounded: the clients' own requests are.
        while !half_done.load(Ordering::SeqCst) && workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        midway();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a client panicked"))
            .collect()
    })
}

/// The network with a /22 (1,021 pool addresses, gateway aside).
fn network(listen: SocketAddr) -> String {
    let (status, network) = request(
        listen,
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "shared"}})),
    )
    .unwrap();
    assert_eq!(status, 201, "{network}");
    let id = network["network"]["id"].as_str().unwrap().to_string();
    let subnet = json!({"subnet": {"network_id": id, "cidr": "10.8.0.0/22", "ip_version": 4}});
    let (status, body) = request(listen, "POST", "/v2.0/subnets", Some(&subnet)).unwrap();
    assert_eq!(status, 201, "{body}");
    id
}

/// The end state, read back: every port has its own address, the addresses
/// given out are exactly the ports', and every port a client kept is there.
fn check(listen: SocketAddr, network: &str, kept: &[Seen]) {
    let (_, ports) = request(
        listen,
        "GET",
        &format!("/v2.0/ports?network_id={network}"),
        None,
    )
    .unwrap();
    let ports = ports["ports"].as_array().unwrap();
    let addresses: HashSet<&str> = ports
        .iter()
        .map(|port| port["fixed_ips"][0]["ip_address"].as_str().unwrap())
        .collect();
    assert_eq!(
        addresses.len(),
        ports.len(),
        "an address given to two ports"
    );
    let ids: HashSet<&str> = ports
        .iter()
        .map(|port| port["id"].as_str().unwrap())
        .collect();
    for port in kept {
        assert!(
            ids.contains(port.id.as_str()),
            "port {} ({}) is lost",
            port.id,
            port.address
        );
        assert!(addresses.contains(port.address.as_str()));
    }
    let (_, availability) = request(
        listen,
        "GET",
        &format!("/v2.0/network-ip-availabilities/{network}"),
        None,
    )
    .unwrap();
    let availability: &Value = &availability["network_ip_availability"];
    assert_eq!(
        availability["used_ips"],
        ports.len(),
        "the free count is off: {availability}"
    );
    assert_eq!(availability["total_ips"], 1021);
    eprintln!(
        "{} ports kept by the clients, {} in all",
        kept.len(),
        ports.len()
    );
}

fn two_instances(test: &str) -> Option<(EtcdServer, Controller, Controller)> {
    if !etcd::available(test) {
        return None;
    }
    let etcd = EtcdServer::start().unwrap();
    let store = || StoreKind::Etcd(vec![etcd.client_url()]);
    let a = Controller::start(store(), &[]).unwrap();
    let b = Controller::start(store(), &[]).unwrap();
    Some((etcd, a, b))
}

#[test]
fn two_instances_never_give_an_address_twice_and_every_release_succeeds() {
    let Some((_etcd, a, b)) =
        two_instances("two_instances_never_give_an_address_twice_and_every_release_succeeds")
    else {
        return;
    };
    let network = network(a.listen());
    let kept = run([a.listen(), b.listen()], &network, || {});
    assert!(kept.len() >= CLIENTS * ROUNDS / 2, "{} kept", kept.len());
    check(b.listen(), &network, &kept);
}

#[test]
fn an_instance_killed_midway_loses_and_leaks_nothing() {
    let Some((_etcd, a, mut b)) =
        two_instances("an_instance_killed_midway_loses_and_leaks_nothing")
    else {
        return;
    };
    let network = network(a.listen());
    let listen = [a.listen(), b.listen()];
    let kept = run(listen, &network, || {
        b.kill();
        std::thread::sleep(Duration::from_millis(300));
        b.restart().unwrap();
    });
    check(a.listen(), &network, &kept);
    // Both instances agree.
    check(b.listen(), &network, &kept);
}

/// Polls `check` every 50 ms until it gives a value, for at most `limit`:
/// the value and how long it took. `check` says how things are otherwise.
fn until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return (value, started.elapsed()),
            Err(state) => assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {state}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const HOSTS: [&str; 4] = ["h1", "h2", "h3", "h4"];

/// Host → the id of the instance that pushes to it, from the instances'
/// metrics, if every host has exactly one and every instance some.
fn split(instances: &[&Controller]) -> Result<BTreeMap<String, String>, String> {
    let mut owners = BTreeMap::new();
    let mut seen = Vec::new();
    for instance in instances {
        let (id, hosts) = instance
            .serving()
            .ok_or_else(|| format!("{} does not answer", instance.listen()))?;
        for host in &hosts {
            if let Some(other) = owners.insert(host.clone(), id.clone()) {
                return Err(format!("{host} served by {id} and {other}"));
            }
        }
        seen.push((id, hosts));
    }
    let shared = owners.len() == HOSTS.len() && seen.iter().all(|(_, hosts)| !hosts.is_empty());
    if shared {
        Ok(owners)
    } else {
        Err(format!("{seen:?}"))
    }
}

/// What `GET /v2.0/agents` says serves each host.
fn shown_owners(listen: SocketAddr) -> BTreeMap<String, String> {
    let (status, body) = request(listen, "GET", "/v2.0/agents", None).unwrap();
    assert_eq!(status, 200, "{body}");
    body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|agent| {
            let owner = &agent["configurations"]["controller"];
            let host = agent["host"].as_str().unwrap().to_string();
            (host, owner.as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// The agents (stand-ins: registered, nothing to push to them, but each
/// gets a session) are split between two instances on one etcd; one
/// killed (SIGKILL), the other serves them all once the killed one's lease
/// has run out; started again (a new member), it gets its share back.
#[test]
fn two_instances_share_the_agents_and_take_a_killed_ones_over() {
    let Some((_etcd, mut a, b)) =
        two_instances("two_instances_share_the_agents_and_take_a_killed_ones_over")
    else {
        return;
    };
    for host in HOSTS {
        a.register_stand_in(host).unwrap();
    }
    let (owners, took) = until("the agents split", Duration::from_secs(20), || {
        split(&[&a, &b])
    });
    eprintln!("split after {took:?}: {owners:?}");
    // The API says the same, through either instance.
    until("the API to show the owners", Duration::from_secs(5), || {
        let shown = shown_owners(b.listen());
        if shown == owners {
            Ok(())
        } else {
            Err(format!("{shown:?}"))
        }
    });

    a.kill();
    let (survivor, took) = until("b to serve every agent", Duration::from_secs(20), || {
        let (id, hosts) = b.serving().ok_or("b does not answer")?;
        if hosts == HOSTS {
            Ok(id)
        } else {
            Err(format!("b serves {hosts:?}"))
        }
    });
    eprintln!("b took a's agents over in {took:?}");
    assert!(
        shown_owners(b.listen())
            .values()
            .all(|owner| *owner == survivor),
        "{:?}",
        shown_owners(b.listen())
    );

    a.restart().unwrap();
    let (owners, took) = until("a to get its share back", Duration::from_secs(20), || {
        split(&[&a, &b])
    });
    eprintln!("split again after {took:?}: {owners:?}");
    let per_instance = owners.values().fold(BTreeMap::new(), |mut counts, id| {
        *counts.entry(id).or_insert(0) += 1;
        counts
    });
    assert!(per_instance.values().all(|&n| n == 2), "{per_instance:?}");
}
