//! The overlay's programs on packet fixtures with BPF_PROG_TEST_RUN:
//! `port_from_vm` encapsulating for remote endpoints (through
//! [`Datapath::trace`]: exact outer headers, the inner frame intact or
//! routed), `underlay_in` decapsulating (through
//! [`Datapath::trace_underlay`]: delivery target, inner frame, drops), and
//! `underlay_xdp`'s verdicts; counters from runs without the trace mark.
//! The devices are veths in a private network namespace; nothing is sent.

use std::net::Ipv4Addr;

use aya::programs::{TestRun, TestRunOptions};

use super::{
    super::*,
    Netlink, PinDir, in_new_netns,
    packets::{self, *},
    privileged,
    programs::{GW1_MAC, GW2_MAC, VNI1, VNI2, ip, mac, port, run_for_real, subnet, vni},
};
use crate::{
    core::{
        model::Mac,
        spec::{DatapathModel, EndpointSpec, HostSpec, Location, PortSpec, UnderlaySpec},
    },
    packet::checksum,
};

const A_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x40, 0x0a]);
const C_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x40, 0x0c]);
/// Remote endpoints: 10.0.1.50 (subnet 1) and 10.0.2.60 (subnet 2) on
/// host 198.18.0.2, 10.0.1.70 on host 198.18.0.3.
const R50_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x40, 0x50]);
const R60_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x40, 0x60]);
const R70_MAC: Mac = Mac([0xfa, 0x16, 0x3e, 0, 0x40, 0x70]);
const UNDERLAY_MAC: Mac = Mac([0x02, 0, 0xc6, 0x12, 0, 1]);
const HOST2_MAC: Mac = Mac([0x02, 0, 0xc6, 0x12, 0, 2]);
const GATEWAY_MAC: Mac = Mac([0x02, 0, 0xc6, 0x12, 0, 0xfe]);
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HOST3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

/// Port A (10.0.1.10, veth) and C (10.0.2.20, tap-like) in VPC 1, E
/// (10.0.1.10) in VPC 2; the underlay device; the remote endpoints above.
struct Fixture {
    _pins: PinDir,
    datapath: Datapath,
    model: DatapathModel,
    a: u32,
    c: u32,
    underlay: u32,
}

fn remote(vni_: u64, address: &str, mac: Mac, host: Ipv4Addr) -> EndpointSpec {
    EndpointSpec {
        vni: vni(vni_),
        ip: ip(address),
        mac,
        location: Location::Remote { host },
    }
}

impl Fixture {
    fn new() -> Self {
        let pins = PinDir::new();
        let netlink = Netlink::new();
        let [a, c, e, underlay] = ["a", "c", "e", "u"].map(|name| {
            netlink
                .add_veth(&format!("port-{name}"), &format!("vm-{name}"), None)
                .0
        });
        let ports = vec![
            port(a, VNI1, A_MAC, "10.0.1.10", Redirect::Peer),
            port(c, VNI1, C_MAC, "10.0.2.20", Redirect::Egress),
            port(e, VNI2, mac(0x0e), "10.0.1.10", Redirect::Peer),
        ];
        let mut endpoints: Vec<_> = ports.iter().flat_map(PortSpec::endpoints).collect();
        endpoints.extend([
            remote(VNI1, "10.0.1.50", R50_MAC, HOST2),
            remote(VNI1, "10.0.2.60", R60_MAC, HOST2),
            remote(VNI1, "10.0.1.70", R70_MAC, HOST3),
        ]);
        let model = DatapathModel {
            ports,
            endpoints,
            subnets: vec![
                subnet(VNI1, "10.0.1.0/24", "10.0.1.1", GW1_MAC, Some("r1")),
                subnet(VNI1, "10.0.2.0/24", "10.0.2.1", GW2_MAC, Some("r1")),
            ],
            underlay: Some(UnderlaySpec {
                ifindex: underlay,
                ip: LOCAL,
                mac: UNDERLAY_MAC,
                mtu: 1500,
                gateway_mac: None,
                vxlan_ifindex: 0,
            }),
            hosts: Vec::new(),
            port_mtu: 1450,
        };
        let mut datapath = Datapath::open(&pins.0).unwrap();
        datapath.sync(&model).unwrap();
        Fixture {
            _pins: pins,
            datapath,
            model,
            a,
            c,
            underlay,
        }
    }

    fn sync(&mut self) {
        let stats = self.datapath.sync(&self.model).unwrap();
        assert!(stats.conflicts.is_empty(), "{stats:?}");
    }

    #[track_caller]
    fn trace(&self, ifindex: u32, frame: &[u8]) -> TraceResult {
        self.datapath
            .reader()
            .unwrap()
            .trace(ifindex, frame)
            .unwrap()
    }

    #[track_caller]
    fn decap(&self, frame: &[u8]) -> UnderlayTrace {
        self.datapath
            .reader()
            .unwrap()
            .trace_underlay(self.underlay, frame)
            .unwrap()
    }

    #[track_caller]
    fn assert_decap_dropped(&self, frame: &[u8], reason: UnderlayDropReason) {
        let result = self.decap(frame);
        assert_eq!(result.verdict, UnderlayVerdict::Drop(reason));
        assert_eq!(result.output, frame, "a dropped frame is left as it came");
    }

    #[track_caller]
    fn assert_passed(&self, frame: &[u8]) {
        let result = self.decap(frame);
        assert_eq!(result.verdict, UnderlayVerdict::Pass);
        assert_eq!(result.output, frame, "passed untouched");
    }

    /// Runs `underlay_xdp` on `frame`; its action.
    fn xdp(&mut self, frame: &[u8]) -> u32 {
        let mut output = vec![0; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ..TestRunOptions::default()
        };
        self.datapath
            .xdp_program()
            .unwrap()
            .test_run(options)
            .unwrap()
            .return_value
    }

    /// Runs `underlay_in` on `frame` as real traffic (it counts); its
    /// return code.
    fn decap_for_real(&mut self, frame: &[u8]) -> u32 {
        let mut ctx = [0u8; 256];
        ctx[40..44].copy_from_slice(&self.underlay.to_ne_bytes());
        let mut output = vec![0; frame.len() + 256];
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut output),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        self.datapath
            .program_mut(Hook::FromUnderlay)
            .unwrap()
            .test_run(options)
            .unwrap()
            .return_value
    }
}

fn with_fixture(test: impl FnOnce(Fixture) + Send + 'static) {
    if !privileged() {
        return;
    }
    in_new_netns(|| test(Fixture::new()));
}

/// A UDP packet from A to `dst` (IPv4 header fields from `ip`), framed to
/// `dst_mac`.
fn from_a(dst_mac: Mac, ip: Ipv4, payload: &[u8]) -> Vec<u8> {
    ether(dst_mac, A_MAC, ETH_P_IP, &ip.packet(payload))
}

fn to(dst: &str) -> Ipv4 {
    Ipv4::new(ip("10.0.1.10"), ip(dst), UDP)
}

/// The outer headers of a VXLAN frame, parsed; panics unless they are
/// well formed (IPv4 header checksum included).
#[derive(Debug, PartialEq, Eq)]
struct Outer {
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    frag: u16,
    sport: u16,
    vni: u32,
}

#[track_caller]
fn outer(frame: &[u8], inner_len: usize) -> Outer {
    assert_eq!(frame.len(), 50 + inner_len, "50 bytes in front");
    assert_eq!(frame[12..14], [0x08, 0x00], "IPv4");
    let ip = &frame[14..34];
    assert_eq!(checksum(&[ip]), 0, "outer IPv4 checksum");
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[1], 0, "TOS");
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[2], ip[3]])),
        36 + inner_len,
        "total length"
    );
    assert_eq!(ip[9], 17, "UDP");
    let udp = &frame[34..42];
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
    assert_eq!(
        usize::from(u16::from_be_bytes([udp[4], udp[5]])),
        16 + inner_len,
        "UDP length"
    );
    assert_eq!(udp[6..8], [0, 0], "no UDP checksum");
    let vxlan = &frame[42..50];
    assert_eq!(vxlan[..4], [0x08, 0, 0, 0], "flags: VNI valid");
    assert_eq!(vxlan[7], 0, "reserved");
    let addr = |bytes: &[u8]| Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
    Outer {
        dst_mac: Mac(frame[..6].try_into().unwrap()),
        src_mac: Mac(frame[6..12].try_into().unwrap()),
        src: addr(&ip[12..16]),
        dst: addr(&ip[16..20]),
        ttl: ip[8],
        frag: u16::from_be_bytes([ip[6], ip[7]]),
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        vni: u32::from_be_bytes([0, vxlan[4], vxlan[5], vxlan[6]]),
    }
}

fn encapsulated(host: Ipv4Addr, underlay: u32, next_hop: NextHop, routed: bool) -> Verdict {
    Verdict::Encapsulated {
        host,
        vni: 100,
        underlay,
        next_hop,
        routed,
    }
}

#[test]
fn same_subnet_remote_traffic_is_encapsulated_with_exact_outer_headers() {
    with_fixture(|f| {
        let frame = from_a(
            R50_MAC,
            to("10.0.1.50"),
            &packets::udp(1000, 2000, &counting(60)),
        );
        let result = f.trace(f.a, &frame);
        assert_eq!(
            result.verdict,
            encapsulated(HOST2, f.underlay, NextHop::Neighbor, false)
        );
        let headers = outer(&result.output, frame.len());
        assert_eq!(
            headers,
            Outer {
                // The kernel writes the MACs (bpf_redirect_neigh); the
                // destination stays unicast meanwhile.
                dst_mac: Mac([0; 6]),
                src_mac: UNDERLAY_MAC,
                src: LOCAL,
                dst: HOST2,
                ttl: 64,
                // DF clear; the identification is random.
                frag: 0,
                sport: headers.sport,
                vni: 100,
            }
        );
        assert!(headers.sport >= 49152, "{headers:?}");
        assert_eq!(result.output[50..], frame, "the inner frame as A sent it");
        assert!(result.verdict.to_string().contains("VNI 100"));

        // The source port follows the flow: the same flow, the same port;
        // other flows spread over the range.
        assert_eq!(
            outer(&f.trace(f.a, &frame).output, frame.len()).sport,
            headers.sport
        );
        let ports: std::collections::BTreeSet<u16> = (0..32)
            .map(|i| {
                let frame = from_a(
                    R50_MAC,
                    to("10.0.1.50"),
                    &packets::udp(1000 + i, 2000, b"x"),
                );
                outer(&f.trace(f.a, &frame).output, frame.len()).sport
            })
            .collect();
        assert!(ports.len() > 16, "{ports:?}");

        // Another host.
        let frame = from_a(R70_MAC, to("10.0.1.70"), &packets::udp(1, 2, b"x"));
        let result = f.trace(f.a, &frame);
        assert_eq!(
            result.verdict,
            encapsulated(HOST3, f.underlay, NextHop::Neighbor, false)
        );
        assert_eq!(outer(&result.output, frame.len()).dst, HOST3);

        // Still the same checks as locally: the destination's MAC.
        let frame = from_a(R70_MAC, to("10.0.1.50"), &packets::udp(1, 2, b"x"));
        let result = f.trace(f.a, &frame);
        assert_eq!(
            result.verdict,
            Verdict::Drop(DropReason::WrongDestinationMac)
        );
    });
}

#[test]
fn next_hop_macs_from_the_model_are_written() {
    with_fixture(|mut f| {
        // Host 2's MAC given; the underlay gateway for the others.
        f.model.hosts = vec![HostSpec {
            ip: HOST2,
            mac: Some(HOST2_MAC),
        }];
        f.model.underlay.as_mut().unwrap().gateway_mac = Some(GATEWAY_MAC);
        f.sync();
        for (dst, dst_mac, host, next_mac) in [
            ("10.0.1.50", R50_MAC, HOST2, HOST2_MAC),
            ("10.0.1.70", R70_MAC, HOST3, GATEWAY_MAC),
        ] {
            let frame = from_a(dst_mac, to(dst), &packets::udp(1, 2, b"x"));
            let result = f.trace(f.a, &frame);
            assert_eq!(
                result.verdict,
                encapsulated(host, f.underlay, NextHop::Mac, false)
            );
            let headers = outer(&result.output, frame.len());
            assert_eq!((headers.dst_mac, headers.src_mac), (next_mac, UNDERLAY_MAC));
        }
        let hosts = f.datapath.reader().unwrap().hosts().unwrap();
        assert_eq!(
            hosts,
            [
                HostEntry {
                    ip: HOST2,
                    mac: Some(HOST2_MAC),
                    next_hop: NextHop::Mac,
                    endpoints: 2,
                },
                HostEntry {
                    ip: HOST3,
                    mac: None,
                    next_hop: NextHop::Mac,
                    endpoints: 1,
                },
            ]
        );
    });
}

#[test]
fn host_macs_change_in_place_and_the_next_sync_agrees() {
    with_fixture(|mut f| {
        let next_hop = |f: &Fixture, dst: &str, dst_mac: Mac| {
            let frame = from_a(dst_mac, to(dst), &packets::udp(1, 2, b"x"));
            let result = f.trace(f.a, &frame);
            let headers = outer(&result.output, frame.len());
            (result.verdict, headers.dst_mac)
        };
        let known = |mac| HostSpec { ip: HOST2, mac };
        // A neighbour that is no host (the underlay's router, say) stays
        // unknown: VXLAN is not accepted from it.
        let stranger = HostSpec {
            ip: Ipv4Addr::new(198, 18, 0, 254),
            mac: Some(GATEWAY_MAC),
        };
        let written = f
            .datapath
            .set_host_macs(&[known(Some(HOST2_MAC)), stranger])
            .unwrap();
        assert_eq!(written, 1);
        let hosts = f.datapath.reader().unwrap().hosts().unwrap();
        assert_eq!(
            hosts.iter().map(|h| (h.ip, h.mac)).collect::<Vec<_>>(),
            [(HOST2, Some(HOST2_MAC)), (HOST3, None)]
        );
        assert_eq!(
            next_hop(&f, "10.0.1.50", R50_MAC),
            (
                encapsulated(HOST2, f.underlay, NextHop::Mac, false),
                HOST2_MAC
            )
        );
        // The same again writes nothing.
        let written = f.datapath.set_host_macs(&[known(Some(HOST2_MAC))]);
        assert_eq!(written.unwrap(), 0);

        // A full sync whose model gives the same MAC changes nothing; one
        // that gives none would take it away (the model is the truth).
        f.model.hosts = vec![known(Some(HOST2_MAC))];
        let stats = f.datapath.sync(&f.model).unwrap();
        assert_eq!(stats.changes(), 0, "{stats:?}");
        f.model.hosts = Vec::new();
        let stats = f.datapath.sync(&f.model).unwrap();
        assert_eq!(stats.hosts.written, 1, "{stats:?}");
        f.model.hosts = vec![known(Some(HOST2_MAC))];
        f.sync();

        // Taken away: the kernel's neighbour table again.
        assert_eq!(f.datapath.set_host_macs(&[known(None)]).unwrap(), 1);
        f.model.hosts = Vec::new();
        let stats = f.datapath.sync(&f.model).unwrap();
        assert_eq!(stats.changes(), 0, "{stats:?}");
        let (verdict, _) = next_hop(&f, "10.0.1.50", R50_MAC);
        assert_eq!(
            verdict,
            encapsulated(HOST2, f.underlay, NextHop::Neighbor, false)
        );

        // Before any sync of this agent (a restart), the maps say which
        // hosts exist.
        let mut restarted = Datapath::open(&f._pins.0).unwrap();
        assert_eq!(
            restarted
                .set_host_macs(&[known(Some(HOST2_MAC)), stranger])
                .unwrap(),
            1
        );
        let hosts = restarted.reader().unwrap().hosts().unwrap();
        assert_eq!(hosts[0].mac, Some(HOST2_MAC));
        assert_eq!(hosts.len(), 2);
    });
}

#[test]
fn routed_remote_traffic_is_rewritten_then_encapsulated() {
    with_fixture(|f| {
        let payload = packets::udp(1000, 2000, &counting(64));
        let mut sent = to("10.0.2.60");
        sent.ttl = 17;
        let frame = from_a(GW1_MAC, sent, &payload);
        let result = f.trace(f.a, &frame);
        assert_eq!(
            result.verdict,
            encapsulated(HOST2, f.underlay, NextHop::Neighbor, true)
        );
        let headers = outer(&result.output, frame.len());
        assert_eq!((headers.src, headers.dst, headers.vni), (LOCAL, HOST2, 100));
        // Inside: from subnet 2's gateway to the destination, TTL - 1.
        let routed = Ipv4 { ttl: 16, ..sent };
        assert_eq!(
            result.output[50..],
            ether(R60_MAC, GW2_MAC, ETH_P_IP, &routed.packet(&payload))
        );
        assert_eq!(
            checksum(&[&result.output[64..84]]),
            0,
            "inner IPv4 checksum"
        );

        // A TTL that runs out at the router is answered here, not sent.
        sent.ttl = 1;
        let frame = from_a(GW1_MAC, sent, &payload);
        assert_eq!(
            f.trace(f.a, &frame).verdict,
            Verdict::Answered(Answer::TimeExceeded)
        );
    });
}

/// A UDP packet from A of `len` bytes of IPv4 (DF as `ip` says).
fn sized(ip: Ipv4, len: usize) -> Vec<u8> {
    ip.packet(&packets::udp(1, 2, &counting(len - 28)))
}

/// The ICMP "fragmentation needed" (next-hop MTU 1450) that subnet 1's
/// gateway sends A about `original`: its IP header and 8 bytes quoted.
fn frag_needed_for(original: &[u8]) -> Vec<u8> {
    let [high, low] = 1450u16.to_be_bytes();
    let frag_needed = (3, 4, [0, 0, high, low]);
    icmp_error_frame((GW1_MAC, ip("10.0.1.1")), A_MAC, frag_needed, original)
}

#[test]
fn packets_too_big_for_the_tunnel_with_df_get_fragmentation_needed() {
    with_fixture(|f| {
        // 1450 bytes of IPv4 fit a 1500-byte underlay once encapsulated;
        // 1451 do not.
        let fits = from_a(
            R50_MAC,
            to("10.0.1.50"),
            &sized(to("10.0.1.50"), 1450)[20..],
        );
        assert!(matches!(
            f.trace(f.a, &fits).verdict,
            Verdict::Encapsulated { .. }
        ));
        let original = sized(to("10.0.1.50"), 1451);
        let result = f.trace(f.a, &ether(R50_MAC, A_MAC, ETH_P_IP, &original));
        assert_eq!(result.verdict, Verdict::Answered(Answer::FragNeeded));
        assert_eq!(result.output, frag_needed_for(&original));
        assert_eq!(
            checksum(&[&result.output[14..34]]),
            0,
            "IPv4 header checksum"
        );
        assert_eq!(checksum(&[&result.output[34..]]), 0, "ICMP checksum");

        // Routed to another host, and routed to a local port of the other
        // subnet: the same, the quote as sent (TTL not yet decremented).
        for dst in ["10.0.2.60", "10.0.2.20"] {
            let original = sized(to(dst), 1451);
            let result = f.trace(f.a, &ether(GW1_MAC, A_MAC, ETH_P_IP, &original));
            assert_eq!(
                result.verdict,
                Verdict::Answered(Answer::FragNeeded),
                "{dst}"
            );
            assert_eq!(result.output, frag_needed_for(&original), "{dst}");
        }

        // No ICMP error about an ICMP error.
        let mut error = to("10.0.1.50");
        error.proto = ICMP;
        let packet = error.packet(&icmp(3, 3, [0; 4], &counting(1451 - 28)));
        let frame = ether(R50_MAC, A_MAC, ETH_P_IP, &packet);
        assert_eq!(
            f.trace(f.a, &frame).verdict,
            Verdict::Drop(DropReason::TooBig)
        );
    });
}

#[test]
fn too_big_packets_that_may_be_fragmented_go_through_the_vxlan_device() {
    with_fixture(|mut f| {
        let mut fragmentable = to("10.0.1.50");
        fragmentable.frag = 0;
        let frame = ether(R50_MAC, A_MAC, ETH_P_IP, &sized(fragmentable, 1451));
        // Without a VXLAN device, nothing can fragment them.
        assert_eq!(
            f.trace(f.a, &frame).verdict,
            Verdict::Drop(DropReason::TooBig)
        );
        let device = Netlink::new().add_veth("vx", "vx-peer", None).0;
        if let Some(underlay) = f.model.underlay.as_mut() {
            underlay.vxlan_ifindex = device;
        }
        f.sync();
        let result = f.trace(f.a, &frame);
        assert_eq!(
            result.verdict,
            Verdict::Fragmented {
                host: HOST2,
                device,
                routed: false
            }
        );
        assert_eq!(result.output, frame, "the kernel encapsulates it");

        // Routed first: MACs rewritten, TTL - 1, then the device.
        let mut routed = to("10.0.2.60");
        routed.frag = 0;
        let original = sized(routed, 1451);
        let result = f.trace(f.a, &ether(GW1_MAC, A_MAC, ETH_P_IP, &original));
        assert_eq!(
            result.verdict,
            Verdict::Fragmented {
                host: HOST2,
                device,
                routed: true
            }
        );
        let rewritten = Ipv4 { ttl: 63, ..routed };
        assert_eq!(
            result.output,
            ether(R60_MAC, GW2_MAC, ETH_P_IP, &sized(rewritten, 1451))
        );

        // To a local port, routed: delivered as it is.
        let mut local = to("10.0.2.20");
        local.frag = 0;
        let frame = ether(GW1_MAC, A_MAC, ETH_P_IP, &sized(local, 1451));
        assert_eq!(
            f.trace(f.a, &frame).verdict,
            Verdict::Redirect {
                ifindex: f.c,
                redirect: Redirect::Egress,
                routed: true
            }
        );
    });
}

#[test]
fn fragmentation_needed_is_rate_limited_per_port_and_counted() {
    use alcor_ebpf_common::{ICMP_ERROR_INTERVAL_NS, ICMP_ERRORS_BURST};
    with_fixture(|mut f| {
        let frame = ether(R50_MAC, A_MAC, ETH_P_IP, &sized(to("10.0.1.50"), 1451));
        const SENT: u64 = 200;
        let start = std::time::Instant::now();
        let answered = (0..SENT)
            .filter(|_| run_for_real(&mut f.datapath, f.a, &frame) == 7)
            .count() as u64;
        let elapsed = start.elapsed().as_nanos() as u64;
        // The burst, then one per interval: whatever the machine's speed.
        let allowed = ICMP_ERRORS_BURST + elapsed / ICMP_ERROR_INTERVAL_NS + 1;
        assert!(
            (ICMP_ERRORS_BURST..=allowed).contains(&answered),
            "{answered} of {SENT} answered in {elapsed} ns"
        );
        let drops = f.datapath.reader().unwrap().port_stats(f.a).unwrap().drops;
        assert_eq!(drops[DropReason::FragNeeded as usize], answered);
        assert_eq!(drops[DropReason::TooBig as usize], SENT - answered);
        // Another port has its own allowance (routed to the other host).
        let from_c = ether(
            GW2_MAC,
            C_MAC,
            ETH_P_IP,
            &sized(Ipv4::new(ip("10.0.2.20"), ip("10.0.1.50"), UDP), 1451),
        );
        assert_eq!(run_for_real(&mut f.datapath, f.c, &from_c), 7);
    });
}

#[test]
fn without_an_underlay_remote_traffic_is_dropped() {
    with_fixture(|mut f| {
        f.model.underlay = None;
        f.sync();
        let frame = from_a(R50_MAC, to("10.0.1.50"), &packets::udp(1, 2, b"x"));
        let result = f.trace(f.a, &frame);
        assert_eq!(result.verdict, Verdict::Drop(DropReason::NoUnderlay));
        assert_eq!(result.output, frame);
        // And nothing is decapsulated.
        assert_eq!(f.datapath.reader().unwrap().underlay().unwrap(), None);
        f.assert_passed(&vxlan_frame(HOST2, LOCAL, 100, &to_a()));
    });
}

/// A frame from host `src` to `dst`, UDP to 4789, VXLAN with `vni`
/// around `inner`.
fn vxlan_frame(src: Ipv4Addr, dst: Ipv4Addr, vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend((vni << 8).to_be_bytes());
    payload.extend(inner);
    let mut ip = Ipv4::new(src, dst, UDP);
    ip.frag = 0;
    ether(
        UNDERLAY_MAC,
        HOST2_MAC,
        ETH_P_IP,
        &ip.packet(&packets::udp(50000, 4789, &payload)),
    )
}

/// A frame for A from remote endpoint 10.0.1.50.
fn to_a() -> Vec<u8> {
    let ip = Ipv4::new(ip("10.0.1.50"), ip("10.0.1.10"), UDP);
    ether(
        A_MAC,
        R50_MAC,
        ETH_P_IP,
        &ip.packet(&packets::udp(2000, 1000, &counting(40))),
    )
}

#[test]
fn vxlan_for_a_local_port_is_decapsulated_and_delivered() {
    with_fixture(|f| {
        let inner = to_a();
        let result = f.decap(&vxlan_frame(HOST2, LOCAL, 100, &inner));
        assert_eq!(
            result.verdict,
            UnderlayVerdict::Deliver {
                ifindex: f.a,
                redirect: Redirect::Peer,
                vni: 100
            }
        );
        assert_eq!(result.output, inner, "exactly the inner frame");

        // Routed on the sending host, to the tap-like port C.
        let ip = Ipv4::new(ip("10.0.1.50"), ip("10.0.2.20"), UDP);
        let inner = ether(
            C_MAC,
            GW2_MAC,
            ETH_P_IP,
            &ip.packet(&packets::udp(1, 2, b"x")),
        );
        let result = f.decap(&vxlan_frame(HOST3, LOCAL, 100, &inner));
        assert_eq!(
            result.verdict,
            UnderlayVerdict::Deliver {
                ifindex: f.c,
                redirect: Redirect::Egress,
                vni: 100
            }
        );
        assert_eq!(result.output, inner);
        assert!(result.verdict.to_string().contains("VNI 100"));
    });
}

#[test]
fn vxlan_that_fails_a_check_is_dropped() {
    with_fixture(|f| {
        let inner = to_a();
        use UnderlayDropReason::*;
        // A VNI with no port here; from an address that is no host.
        f.assert_decap_dropped(&vxlan_frame(HOST2, LOCAL, 300, &inner), UnknownVni);
        f.assert_decap_dropped(
            &vxlan_frame(ip("198.18.0.9"), LOCAL, 100, &inner),
            UnknownHost,
        );
        // VPC 2 is served, but A is not in it: isolation holds across hosts.
        let in_vpc2 = f.decap(&vxlan_frame(HOST2, LOCAL, 200, &inner));
        assert!(
            matches!(in_vpc2.verdict, UnderlayVerdict::Drop(WrongDestinationMac)),
            "{in_vpc2:?}"
        );
        // No such address here, or a remote one, or not its MAC.
        let ip_to = |dst: &str, dst_mac: Mac| {
            let ip = Ipv4::new(ip("10.0.1.50"), ip(dst), UDP);
            ether(
                dst_mac,
                R50_MAC,
                ETH_P_IP,
                &ip.packet(&packets::udp(1, 2, b"x")),
            )
        };
        for (dst, dst_mac, reason) in [
            ("10.0.1.99", A_MAC, UnknownDestination),
            ("10.0.1.70", R70_MAC, UnknownDestination),
            ("10.0.1.10", C_MAC, WrongDestinationMac),
        ] {
            f.assert_decap_dropped(
                &vxlan_frame(HOST2, LOCAL, 100, &ip_to(dst, dst_mac)),
                reason,
            );
        }
        // ARP through a tunnel, IPv6 inside, no VNI flag, truncated.
        let arp = arp_request(R50_MAC, ip("10.0.1.50"), ip("10.0.1.10"));
        f.assert_decap_dropped(&vxlan_frame(HOST2, LOCAL, 100, &arp), TunneledArp);
        let v6 = ether(A_MAC, R50_MAC, ETH_P_IPV6, &[0x60; 40]);
        f.assert_decap_dropped(&vxlan_frame(HOST2, LOCAL, 100, &v6), InnerNotIpv4);
        let mut no_flag = vxlan_frame(HOST2, LOCAL, 100, &inner);
        no_flag[42] = 0;
        f.assert_decap_dropped(&no_flag, Malformed);
        let truncated = vxlan_frame(HOST2, LOCAL, 100, &inner[..10]);
        f.assert_decap_dropped(&truncated, Malformed);
    });
}

#[test]
fn everything_else_on_the_underlay_passes_untouched() {
    with_fixture(|f| {
        let inner = to_a();
        // VXLAN for another address; other UDP; a fragment; ARP; IPv6.
        f.assert_passed(&vxlan_frame(HOST2, HOST3, 100, &inner));
        let dns = Ipv4::new(HOST2, LOCAL, UDP).packet(&packets::udp(53, 53, b"?"));
        f.assert_passed(&ether(UNDERLAY_MAC, HOST2_MAC, ETH_P_IP, &dns));
        let mut fragment = vxlan_frame(HOST2, LOCAL, 100, &inner);
        fragment[20] = 0x20; // more fragments
        let check = checksum(&[&{
            let mut header = fragment[14..34].to_vec();
            header[10..12].fill(0);
            header
        }]);
        fragment[24..26].copy_from_slice(&check.to_be_bytes());
        f.assert_passed(&fragment);
        f.assert_passed(&arp_request(HOST2_MAC, HOST2, LOCAL));
        f.assert_passed(&ether(UNDERLAY_MAC, HOST2_MAC, ETH_P_IPV6, &[0x60; 40]));
    });
}

#[test]
fn decapsulation_is_counted_per_port_and_host() {
    with_fixture(|mut f| {
        let inner = to_a();
        let frame = vxlan_frame(HOST2, LOCAL, 100, &inner);
        // tc's redirect verdict; drops are counted by reason.
        assert_eq!(f.decap_for_real(&frame), 7);
        assert_eq!(f.decap_for_real(&frame), 7);
        assert_eq!(f.decap_for_real(&vxlan_frame(HOST2, LOCAL, 300, &inner)), 2);
        let stats = f.datapath.reader().unwrap().underlay_stats().unwrap();
        assert_eq!(
            (stats.decap_packets, stats.decap_bytes),
            (2, 2 * inner.len() as u64)
        );
        assert_eq!(
            underlay_drops_by_reason(&stats),
            [(UnderlayDropReason::UnknownVni, 1)]
        );
        let a = f.datapath.reader().unwrap().port_stats(f.a).unwrap();
        let expected = TunnelCounters {
            decap_packets: 2,
            decap_bytes: 2 * inner.len() as u64,
            ..TunnelCounters::default()
        };
        assert_eq!(a.tunnel, expected);
        // Delivered into A's namespace: counted as sent to A too.
        assert_eq!(
            (a.traffic.tx_packets, a.traffic.tx_bytes),
            (2, 2 * inner.len() as u64)
        );
    });
}

#[test]
fn xdp_drops_unknown_vnis_and_hosts_and_passes_the_rest() {
    with_fixture(|mut f| {
        const XDP_DROP: u32 = 1;
        const XDP_PASS: u32 = 2;
        let inner = to_a();
        assert_eq!(f.xdp(&vxlan_frame(HOST2, LOCAL, 100, &inner)), XDP_PASS);
        assert_eq!(f.xdp(&vxlan_frame(HOST2, LOCAL, 300, &inner)), XDP_DROP);
        assert_eq!(
            f.xdp(&vxlan_frame(ip("198.18.0.9"), LOCAL, 100, &inner)),
            XDP_DROP
        );
        assert_eq!(
            f.xdp(&vxlan_frame(ip("198.18.0.9"), LOCAL, 100, &inner)),
            XDP_DROP
        );
        // Not for us, not VXLAN, not IPv4: passed.
        assert_eq!(
            f.xdp(&vxlan_frame(ip("198.18.0.9"), HOST3, 300, &inner)),
            XDP_PASS
        );
        assert_eq!(f.xdp(&arp_request(HOST2_MAC, HOST2, LOCAL)), XDP_PASS);
        let stats = f.datapath.reader().unwrap().underlay_stats().unwrap();
        assert_eq!(
            underlay_drops_by_reason(&stats),
            [
                (UnderlayDropReason::XdpUnknownVni, 1),
                (UnderlayDropReason::XdpUnknownHost, 2)
            ]
        );
    });
}

#[test]
fn the_underlay_maps_read_back() {
    with_fixture(|f| {
        assert_eq!(
            f.datapath.reader().unwrap().underlay().unwrap(),
            Some(UnderlayEntry {
                ifindex: f.underlay,
                ip: LOCAL,
                mac: UNDERLAY_MAC,
                mtu: 1500,
                gateway_mac: None,
            })
        );
        assert_eq!(f.datapath.reader().unwrap().vnis().unwrap(), [100, 200]);
        let hosts: Vec<_> = f
            .datapath
            .reader()
            .unwrap()
            .hosts()
            .unwrap()
            .iter()
            .map(|h| (h.ip, h.next_hop, h.endpoints))
            .collect();
        assert_eq!(
            hosts,
            [(HOST2, NextHop::Neighbor, 2), (HOST3, NextHop::Neighbor, 1)]
        );
    });
}
