//! Two controller instances on one etcd, as a deployment with several
//! runs them, and 16 clients creating and deleting ports in one /22
//! through both at once: no address is ever given twice, every release
//! succeeds (Alcor's IP manager lost releases exactly here: "claim
//! resource not found"), and at the end the addresses given out are
//! exactly those of the ports there are. Then the same with one instance
//! killed (SIGKILL) in the middle and started again.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
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
