//! `Datapath::sync` against the pinned maps: it writes only the difference,
//! nothing when there is none, also for a new agent adopting the maps; and
//! the listings read back what it wrote.

use super::{
    super::*,
    PinDir, privileged,
    programs::{GW1_MAC, GW2_MAC, VNI1, VNI2, ip, mac, model, port, subnet, vni},
};
use std::io::{self, Write as _};

use crate::core::{
    model::GatewayAddress,
    spec::{DatapathModel, EndpointSpec, HostSpec, Location, PortSpec},
};

/// Ports need no devices to be synced: ifindexes that exist nowhere.
const P1: u32 = 100_001;
const P2: u32 = 100_002;
const P3: u32 = 100_003;

fn three_ports() -> DatapathModel {
    model(vec![
        port(P1, VNI1, mac(1), "10.0.1.10", Redirect::Peer),
        port(P2, VNI1, mac(2), "10.0.2.20", Redirect::Egress),
        port(P3, VNI2, mac(3), "10.0.1.10", Redirect::Peer),
    ])
}

fn changes(written: usize, removed: usize, unchanged: usize) -> MapChanges {
    MapChanges {
        written,
        removed,
        unchanged,
    }
}

#[test]
fn sync_writes_only_what_changed() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    let mut model = three_ports();
    // 3 ports; 2 sources each (its MAC with any address, its address);
    // 3 local endpoints and a remote one; 4 subnets.
    let first = datapath.sync(&model).unwrap();
    assert_eq!(
        first,
        SyncStats {
            ports: changes(3, 0, 0),
            sources: changes(6, 0, 0),
            endpoints: changes(4, 0, 0),
            subnets: changes(4, 0, 0),
            vnis: changes(2, 0, 0),
            hosts: changes(1, 0, 0),
            underlay: changes(0, 0, 1),
            conflicts: vec![],
        }
    );
    // Idempotent: the second sync writes nothing.
    let second = datapath.sync(&model).unwrap();
    assert_eq!(second.changes(), 0, "{second:?}");
    assert_eq!(
        second,
        SyncStats {
            ports: changes(0, 0, 3),
            sources: changes(0, 0, 6),
            endpoints: changes(0, 0, 4),
            subnets: changes(0, 0, 4),
            vnis: changes(0, 0, 2),
            hosts: changes(0, 0, 1),
            underlay: changes(0, 0, 1),
            conflicts: vec![],
        }
    );

    // The remote endpoint moves to another host: its entry rewritten, the
    // new host known, the old one (with no endpoint left) forgotten.
    let remote = model
        .endpoints
        .iter_mut()
        .find(|endpoint| matches!(endpoint.location, Location::Remote { .. }))
        .unwrap();
    remote.location = Location::Remote {
        host: ip("198.18.0.3"),
    };
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.changes(), 3, "{stats:?}");
    assert_eq!(stats.endpoints, changes(1, 0, 3));
    assert_eq!(stats.hosts, changes(1, 1, 0));

    // Subnet 2 leaves the router: its entry, and the record of the port in
    // it (which carries its subnet), are rewritten.
    model.subnets[1].router = None;
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.subnets, changes(1, 0, 3));
    assert_eq!(stats.ports, changes(1, 0, 2));
    assert_eq!(stats.changes(), 2, "{stats:?}");

    // Port 2 goes: its record, its sources and its endpoint.
    model.ports.retain(|port| port.ifindex != P2);
    model
        .endpoints
        .retain(|endpoint| endpoint.ip != ip("10.0.2.20"));
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.ports, changes(0, 1, 2));
    assert_eq!(stats.sources, changes(0, 2, 4));
    assert_eq!(stats.endpoints, changes(0, 1, 3));
    assert_eq!(stats.changes(), 4, "{stats:?}");

    // An allowed address pair on port 1: a source for the pair and one for
    // its MAC; its address becomes an endpoint.
    model.ports[0]
        .allowed_address_pairs
        .push(crate::core::model::AddressPair {
            ip: "10.0.1.100/32".parse().unwrap(),
            mac: mac(0x64),
        });
    model.endpoints = model.ports.iter().flat_map(PortSpec::endpoints).collect();
    model.endpoints.push(EndpointSpec {
        vni: vni(VNI1),
        ip: ip("10.0.1.50"),
        mac: mac(0x50),
        location: Location::Remote {
            host: ip("198.18.0.3"),
        },
    });
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.sources, changes(2, 0, 4));
    assert_eq!(stats.endpoints, changes(1, 0, 3));
    assert_eq!(stats.changes(), 3, "{stats:?}");
    assert_eq!(datapath.sync(&model).unwrap().changes(), 0);

    // An empty model empties the maps.
    let stats = datapath.sync(&DatapathModel::default()).unwrap();
    assert_eq!(stats.ports, changes(0, 2, 0));
    assert!(datapath.reader().unwrap().ports().unwrap().is_empty());
    assert!(datapath.reader().unwrap().endpoints().unwrap().is_empty());
    assert!(datapath.reader().unwrap().subnets().unwrap().is_empty());
}

#[test]
fn a_new_agent_resyncs_without_a_write() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let model = three_ports();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    datapath.sync(&model).unwrap();
    let before = (
        datapath.reader().unwrap().ports().unwrap(),
        datapath.reader().unwrap().endpoints().unwrap(),
        datapath.reader().unwrap().subnets().unwrap(),
    );
    drop(datapath);

    // The maps stay pinned, as they were: the new agent finds them so, and
    // its resync (same model) has nothing to write.
    let mut datapath = Datapath::open(&pins.0).unwrap();
    let after = (
        datapath.reader().unwrap().ports().unwrap(),
        datapath.reader().unwrap().endpoints().unwrap(),
        datapath.reader().unwrap().subnets().unwrap(),
    );
    assert_eq!(after, before);
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.changes(), 0, "{stats:?}");
}

#[test]
fn conflicting_records_are_reported_and_the_rest_programmed() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    let mut model = three_ports();
    datapath.sync(&model).unwrap();
    let before = datapath.reader().unwrap().endpoints().unwrap();

    // A new subnet, and the same address twice with different MACs (a VIP
    // claimed by two ports, say).
    model
        .subnets
        .push(subnet(VNI1, "10.0.9.0/24", "10.0.9.1", mac(9), None));
    let mut twin = model.endpoints[0];
    twin.mac = mac(0x99);
    model.endpoints.push(twin);
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.conflicts.len(), 1, "{stats:?}");
    assert!(stats.conflicts[0].contains("10.0.1.10"), "{stats:?}");
    // The first record stays; the new subnet is programmed all the same.
    assert_eq!(datapath.reader().unwrap().endpoints().unwrap(), before);
    assert_eq!(stats.subnets, changes(1, 0, 4));
    assert_eq!(stats.changes(), 1);
}

#[test]
fn listings_read_back_the_maps() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    let mut model = three_ports();
    model.ports[0]
        .allowed_address_pairs
        .push(crate::core::model::AddressPair {
            ip: "192.168.0.0/16".parse().unwrap(),
            mac: mac(1),
        });
    datapath.sync(&model).unwrap();

    let ports = datapath.reader().unwrap().ports().unwrap();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        ports[0],
        PortEntry {
            ifindex: P1,
            vni: 100,
            mac: mac(1),
            ip: Some(ip("10.0.1.10")),
            redirect: Some(Redirect::Peer),
            subnet: Some("10.0.1.0/24".parse().unwrap()),
            sources: vec![
                (mac(1), "10.0.1.10/32".parse().unwrap()),
                (mac(1), "192.168.0.0/16".parse().unwrap()),
            ],
        }
    );

    let endpoints = datapath.reader().unwrap().endpoints().unwrap();
    let listed: Vec<_> = endpoints
        .iter()
        .map(|e| (e.vni, e.ip, e.mac, e.location.unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            (
                100,
                ip("10.0.1.10"),
                mac(1),
                Location::Local {
                    ifindex: P1,
                    redirect: Redirect::Peer
                }
            ),
            (
                100,
                ip("10.0.1.50"),
                mac(0x50),
                Location::Remote {
                    host: ip("198.18.0.2")
                }
            ),
            (
                100,
                ip("10.0.2.20"),
                mac(2),
                Location::Local {
                    ifindex: P2,
                    redirect: Redirect::Egress
                }
            ),
            (
                200,
                ip("10.0.1.10"),
                mac(3),
                Location::Local {
                    ifindex: P3,
                    redirect: Redirect::Peer
                }
            ),
        ]
    );

    let subnets = datapath.reader().unwrap().subnets().unwrap();
    let cidrs: Vec<_> = subnets
        .iter()
        .map(|s| (s.vni, s.cidr.to_string(), s.router.is_some()))
        .collect();
    assert_eq!(
        cidrs,
        [
            (100, "10.0.1.0/24".to_string(), true),
            (100, "10.0.2.0/24".to_string(), true),
            (100, "10.0.3.0/24".to_string(), false),
            (200, "10.0.1.0/24".to_string(), false),
        ]
    );
    assert_eq!(
        subnets[0].gateway,
        Some(GatewayAddress {
            ip: ip("10.0.1.1"),
            mac: GW1_MAC
        })
    );

    let routes = datapath.reader().unwrap().routes().unwrap();
    let router = subnets[0].router.unwrap();
    assert_eq!(
        routes,
        [
            RouteEntry {
                vni: 100,
                from: "10.0.1.0/24".parse().unwrap(),
                to: "10.0.2.0/24".parse().unwrap(),
                router,
                via: GatewayAddress {
                    ip: ip("10.0.2.1"),
                    mac: GW2_MAC
                },
            },
            RouteEntry {
                vni: 100,
                from: "10.0.2.0/24".parse().unwrap(),
                to: "10.0.1.0/24".parse().unwrap(),
                router,
                via: GatewayAddress {
                    ip: ip("10.0.1.1"),
                    mac: GW1_MAC
                },
            },
        ]
    );
}

#[test]
fn a_map_of_another_layout_is_named() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    fs::create_dir_all(&pins.0).unwrap();
    // An ENDPOINTS map as another version might have pinned it.
    let path = pins.0.join(alcor_ebpf_common::maps::ENDPOINTS);
    HashMap::<_, u64, u64>::create(16, 0)
        .unwrap()
        .pin(&path)
        .unwrap();
    let error = Datapath::open(&pins.0).err().expect("must be refused");
    assert!(
        matches!(
            &error,
            DatapathError::IncompatiblePinnedMap { name: "ENDPOINTS", path: p } if *p == path
        ),
        "{error}"
    );
    assert!(error.to_string().contains("ENDPOINTS"), "{error}");
}

#[test]
fn drop_reasons_have_distinct_names() {
    let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), DropReason::COUNT);
    for (value, reason) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*reason as usize, value);
        assert_eq!(DropReason::from_u32(value as u32), Some(*reason));
        assert!(!reason.description().is_empty());
    }
    assert_eq!(DropReason::from_u32(DropReason::COUNT as u32), None);
}

/// `count` remote endpoints of VNIs 100.., spread over `hosts` hosts in
/// runs (as a controller lists neighbors), with addresses 10.x.y.z.
fn remote_endpoints(count: u32, hosts: u32) -> Vec<EndpointSpec> {
    let per_host = count.div_ceil(hosts);
    (0..count)
        .map(|i| {
            let [_, x, y, z] = (i % (1 << 24)).to_be_bytes();
            EndpointSpec {
                vni: vni(100 + u64::from(i >> 24)),
                ip: std::net::Ipv4Addr::new(10, x, y, z),
                mac: crate::core::model::Mac([0xfa, 0x16, 0x3e, x, y, z]),
                location: Location::Remote {
                    host: std::net::Ipv4Addr::from(u32::from(ip("198.18.0.1")) + 1 + i / per_host),
                },
            }
        })
        .collect()
}

#[test]
fn many_endpoints_are_written_removed_and_read_back_in_batches() {
    if !privileged() {
        return;
    }
    const COUNT: u32 = 100_000;
    let pins = PinDir::new();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    let mut model = DatapathModel {
        endpoints: remote_endpoints(COUNT, 100),
        ..DatapathModel::default()
    };
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.endpoints, changes(COUNT as usize, 0, 0));
    assert_eq!(stats.hosts, changes(100, 0, 0));
    let endpoints = datapath.reader().unwrap().endpoints().unwrap();
    assert_eq!(endpoints.len(), COUNT as usize);
    assert_eq!(
        endpoints
            .iter()
            .map(|e| (e.vni, e.ip, e.mac, e.location))
            .collect::<Vec<_>>(),
        model
            .endpoints
            .iter()
            .map(|e| (100, e.ip, e.mac, Some(e.location)))
            .collect::<Vec<_>>()
    );

    // A new agent reads them back (in batches) and has nothing to write.
    drop(datapath);
    let mut datapath = Datapath::open(&pins.0).unwrap();
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(stats.changes(), 0, "{stats:?}");

    // Every other one goes, some move host: removals and rewrites, batched.
    model.endpoints = model
        .endpoints
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, mut endpoint)| {
            if i % 10 == 0 {
                endpoint.location = Location::Remote {
                    host: ip("198.18.9.9"),
                };
            }
            endpoint
        })
        .collect();
    let stats = datapath.sync(&model).unwrap();
    assert_eq!(
        stats.endpoints,
        changes(
            COUNT as usize / 10,
            COUNT as usize / 2,
            2 * COUNT as usize / 5
        )
    );
    assert_eq!(stats.hosts, changes(1, 0, 100));
    assert_eq!(
        datapath.reader().unwrap().endpoints().unwrap().len(),
        COUNT as usize / 2
    );
    assert_eq!(datapath.sync(&model).unwrap().changes(), 0);
    let stats = datapath.sync(&DatapathModel::default()).unwrap();
    assert_eq!(stats.endpoints, changes(0, COUNT as usize / 2, 0));
    assert!(datapath.reader().unwrap().endpoints().unwrap().is_empty());
}

#[test]
fn endpoint_changes_leave_the_maps_as_a_full_sync_would() {
    if !privileged() {
        return;
    }
    let pins = PinDir::new();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    // Before any sync the maps' content is not known: the caller syncs.
    assert_eq!(datapath.sync_endpoints(&[], &[]).unwrap(), None);

    let mut model = three_ports();
    model
        .endpoints
        .retain(|e| matches!(e.location, Location::Local { .. }));
    let remote = remote_endpoints(1000, 10);
    model.endpoints.extend(remote[..600].iter().copied());
    // Next-hop MACs for the first two hosts.
    let (host2, host3) = (ip("198.18.0.2"), ip("198.18.0.3"));
    model.hosts = [(host2, mac(0x22)), (host3, mac(0x33))]
        .map(|(ip, mac)| HostSpec { ip, mac: Some(mac) })
        .to_vec();
    datapath.sync(&model).unwrap();

    // 400 new ones (on 4 new hosts), 100 gone (their host 198.18.0.2 with
    // them), 50 moved to a new host.
    let moved = EndpointSpec {
        location: Location::Remote {
            host: ip("198.18.9.9"),
        },
        ..remote[300]
    };
    let mut write: Vec<EndpointSpec> = remote[600..].to_vec();
    write.extend((300..350).map(|i| EndpointSpec {
        location: moved.location,
        ..remote[i]
    }));
    let remove: Vec<_> = remote[..100].iter().map(|e| (e.vni, e.ip)).collect();
    let stats = datapath.sync_endpoints(&write, &remove).unwrap().unwrap();
    assert_eq!(stats.endpoints, changes(450, 100, 0));
    assert_eq!(stats.hosts, changes(5, 1, 5));
    // 198.18.0.2 went with its last endpoint, its MAC notwithstanding;
    // 198.18.0.3 kept its MAC.
    let hosts = datapath.reader().unwrap().hosts().unwrap();
    let host = |ip| hosts.iter().find(|host| host.ip == ip).map(|host| host.mac);
    assert_eq!((host(host2), host(host3)), (None, Some(Some(mac(0x33)))));

    model
        .endpoints
        .retain(|e| matches!(e.location, Location::Local { .. }));
    model.endpoints.extend(remote[100..300].iter().copied());
    model.endpoints.extend(write.iter().copied());
    model.endpoints.extend(remote[350..600].iter().copied());
    let full = datapath.sync(&model).unwrap();
    assert_eq!(full.changes(), 0, "{full:?}");
    // Also as read from the kernel by a new agent.
    drop(datapath);
    let mut datapath = Datapath::open(&pins.0).unwrap();
    assert_eq!(datapath.sync(&model).unwrap().changes(), 0);
}

/// Issue 5's scale: a million neighbors (remote endpoints on 1,000 hosts)
/// programmed at once, then resynced, then all moved. Prints the time each
/// step takes and the memory of the maps; asserts no time (shared, noisy
/// machines). Run it in release:
/// `cargo test -p alcor-agent --release a_million -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it in release with --ignored"]
fn a_million_neighbors() {
    use std::time::Instant;
    if !privileged() {
        return;
    }
    const COUNT: u32 = 1_000_000;
    let pins = PinDir::new();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    let report = |what: &str, started: Instant| {
        let _ = writeln!(io::stderr(), "{what}: {:?}", started.elapsed());
    };
    let started = Instant::now();
    let model = DatapathModel {
        endpoints: remote_endpoints(COUNT, 1000),
        ..DatapathModel::default()
    };
    report("model of 1M remote endpoints built", started);
    let started = Instant::now();
    let entries = super::super::entries::Entries::from_model(&model);
    report("its map entries (sorted, checked)", started);
    drop(entries);
    let started = Instant::now();
    let stats = datapath.sync(&model).unwrap();
    report("first sync (entries, diff, batched writes)", started);
    assert_eq!(stats.endpoints, changes(COUNT as usize, 0, 0));
    let started = Instant::now();
    assert_eq!(datapath.sync(&model).unwrap().changes(), 0);
    report("resync, nothing changed", started);
    drop(datapath);
    let started = Instant::now();
    let mut datapath = Datapath::open(&pins.0).unwrap();
    assert_eq!(datapath.sync(&model).unwrap().changes(), 0);
    report("a new agent: open, read 1M back (batched), resync", started);
    let moved = DatapathModel {
        endpoints: model
            .endpoints
            .iter()
            .map(|endpoint| EndpointSpec {
                location: Location::Remote {
                    host: ip("198.18.9.9"),
                },
                ..*endpoint
            })
            .collect(),
        ..DatapathModel::default()
    };
    let started = Instant::now();
    let stats = datapath.sync(&moved).unwrap();
    report("every endpoint rewritten (moved host)", started);
    assert_eq!(stats.endpoints, changes(COUNT as usize, 0, 0));
    for (name, bytes) in datapath.reader().unwrap().map_memory().unwrap() {
        let _ = writeln!(
            io::stderr(),
            "map {name}: {:.1} MiB",
            bytes as f64 / (1 << 20) as f64
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    for line in status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
    {
        let _ = writeln!(io::stderr(), "test process {line}");
    }
    let started = Instant::now();
    let stats = datapath.sync(&DatapathModel::default()).unwrap();
    report("all removed (batched deletes)", started);
    assert_eq!(stats.endpoints, changes(0, COUNT as usize, 0));
}
