//! A trace's verdict explained with the packet's addresses and the names
//! the operator knows (ports, subnets, routers).

use std::{collections::HashMap, net::Ipv4Addr};

use alcor_proto::control as api;

use super::probe::{Outcome, Probe, Protocol, Resolution, Setup};
use crate::{
    control::views::{delivery_word, next_hop_word, port_of},
    core::{
        model::device_name,
        spec::{Location, SubnetSpec},
    },
    datapath::{Answer, DropReason, NextHop, Verdict, delivery_words, next_hop_words},
    packet,
};

impl Setup {
    /// `router r1`, naming the router the two subnets share.
    fn router_words(&self, from: Option<&SubnetSpec>, to: Option<&SubnetSpec>) -> String {
        match (from.and_then(|s| s.router.as_ref()), to) {
            (Some(router), Some(to)) if to.router.as_ref() == Some(router) => {
                format!("router {router}")
            }
            (Some(router), None) => format!("router {router}"),
            _ => "the router".into(),
        }
    }

    /// Who has `ip`, in words: ` (the gateway of 10.0.1.0/24)`, ` (port
    /// db-1 (tapdb-1))`, ` (a VM on host 198.18.0.2)`, or nothing.
    fn owner_words(&self, ip: Ipv4Addr) -> String {
        if let Some(subnet) = self
            .subnets
            .iter()
            .find(|subnet| subnet.gateway.is_some_and(|gateway| gateway.ip == ip))
        {
            return format!(" (the gateway of {})", subnet.cidr);
        }
        match self.endpoint(ip).map(|endpoint| endpoint.location) {
            Some(Location::Local { ifindex, .. }) => {
                format!(" ({})", port_words(&self.ports, ifindex))
            }
            Some(Location::Remote { host }) => format!(" (a VM on host {host})"),
            None => String::new(),
        }
    }
}

/// `port web-1 (tapweb-1)`, or `device 7` for one no port of the agent has.
fn port_words(ports: &HashMap<u32, String>, ifindex: u32) -> String {
    match ports.get(&ifindex) {
        Some(id) => format!("port {id} ({})", device_name(id)),
        None => format!("device {ifindex} (no port of this agent)"),
    }
}

/// What the program did, in words that continue the verdict
/// (`dropped: ...`, `routed ...`).
pub(super) fn verdict_words(
    setup: &Setup,
    probe: &Probe,
    resolution: &Resolution,
    verdict: Verdict,
) -> String {
    match verdict {
        Verdict::Drop(reason) => drop_words(setup, probe, resolution, reason),
        verdict => verdict.to_string(),
    }
}

/// Why the program dropped this probe, with its addresses.
pub fn drop_words(
    setup: &Setup,
    probe: &Probe,
    resolution: &Resolution,
    reason: DropReason,
) -> String {
    let (src, dst) = (probe.src_ip, probe.dst_ip);
    let dst_mac = probe.dst_mac.unwrap_or(match resolution {
        Resolution::Resolved { mac, .. } => *mac,
        _ => packet::BROADCAST,
    });
    let from = setup.source_subnet(src);
    let from_words = from.map_or_else(|| "none".to_string(), |s| s.cidr.to_string());
    let gateway_mac = from.and_then(|subnet| subnet.gateway).map_or_else(
        || "none: the subnet has no gateway".into(),
        |g| g.mac.to_string(),
    );
    match reason {
        DropReason::SpoofedMac if probe.src_mac.is_multicast() => format!(
            "the source MAC {} is a multicast address, which no VM may send from",
            probe.src_mac
        ),
        DropReason::SpoofedMac => {
            let mut macs: Vec<String> = setup
                .pairs
                .iter()
                .map(|pair| pair.mac.to_string())
                .collect();
            macs.dedup();
            let pairs = if macs.is_empty() {
                ", and the port has no allowed address pairs".to_string()
            } else {
                format!(
                    " nor that of one of its allowed address pairs ({})",
                    macs.join(", ")
                )
            };
            format!(
                "the source MAC {} is not the port's ({}){pairs}",
                probe.src_mac, setup.mac
            )
        }
        DropReason::SpoofedIp if probe.src_mac != setup.mac => {
            let allowed: Vec<String> = setup
                .pairs
                .iter()
                .filter(|pair| pair.mac == probe.src_mac)
                .map(|pair| pair.ip.to_string())
                .collect();
            format!(
                "the source address {src} may not be used with the MAC {}: its allowed \
                 address pairs allow only {}",
                probe.src_mac,
                allowed.join(", ")
            )
        }
        DropReason::SpoofedIp => {
            let ips: Vec<String> = setup.ips.iter().map(ToString::to_string).collect();
            let ips = if ips.is_empty() {
                "it has none".to_string()
            } else {
                ips.join(", ")
            };
            let pairs: Vec<String> = setup
                .pairs
                .iter()
                .map(|pair| format!("{} with {}", pair.ip, pair.mac))
                .collect();
            let pairs = if pairs.is_empty() {
                String::new()
            } else {
                format!(" ({})", pairs.join(", "))
            };
            format!(
                "the source address {src} is not the port's ({ips}) nor one of its allowed \
                 address pairs{pairs}"
            )
        }
        DropReason::NoSubnet => format!(
            "the source address {src} is in no subnet of the VPC (VNI {})",
            setup.vni
        ),
        DropReason::UnknownDestination => format!(
            "no VM or neighbor has the address {dst} in the VPC (VNI {})",
            setup.vni
        ),
        DropReason::WrongDestinationMac => {
            let known = setup
                .endpoint(dst)
                .map_or_else(|| "unknown".to_string(), |e| e.mac.to_string());
            format!(
                "the destination MAC {dst_mac} is neither that of {dst} ({known}) nor the \
                 gateway's ({gateway_mac})"
            )
        }
        DropReason::OffSubnet => format!(
            "{dst} is outside the sender's subnet {from_words}, so the frame must go to the \
             gateway's MAC ({gateway_mac}), not to {dst_mac}"
        ),
        DropReason::NotRouted => match setup.subnet_of(dst) {
            None => format!("{dst} is in no subnet of the VPC, so no router reaches it"),
            Some(to) if to.gateway.is_none() => format!(
                "{dst} is in subnet {}, which has no gateway to route to",
                to.cidr
            ),
            Some(to) => {
                let on = |subnet: Option<&SubnetSpec>| {
                    subnet
                        .and_then(|s| s.router.as_deref())
                        .map_or_else(|| "no router".to_string(), |r| format!("router {r}"))
                };
                format!(
                    "{dst} is in subnet {}, and no router connects it to the sender's subnet \
                     {from_words} ({from_words} is on {}, {} on {})",
                    to.cidr,
                    on(from),
                    to.cidr,
                    on(Some(to))
                )
            }
        },
        DropReason::ToGateway => {
            let what = match probe.protocol {
                Protocol::Tcp => "TCP",
                Protocol::Udp => "UDP",
                Protocol::Icmp | Protocol::Arp => "this",
            };
            format!(
                "{dst} is the gateway of {from_words}, which answers ping (ICMP echo) only, \
                 not {what}"
            )
        }
        DropReason::TtlExceeded => format!(
            "the TTL ({}) ran out at {}; no ICMP error is sent about an ICMP error or a \
             fragment",
            probe.ttl,
            setup.router_words(from, setup.subnet_of(dst))
        ),
        DropReason::TooBig => {
            // A trace spends none of the rate limit and sends no ICMP
            // error: only a missing gateway leaves it unanswered.
            let why = if from.is_none_or(|subnet| subnet.gateway.is_none()) {
                format!("the sender's subnet {from_words} has no gateway to answer from")
            } else {
                "the port's ICMP rate limit was reached, or the packet is an ICMP error or a \
                 later fragment"
                    .into()
            };
            format!(
                "the packet is bigger than the port MTU ({}) and may not be fragmented (DF), \
                 but no ICMP fragmentation needed goes back: {why}",
                setup.port_mtu
            )
        }
        DropReason::NoUnderlay => {
            let host = match setup.endpoint(dst).map(|e| e.location) {
                Some(Location::Remote { host }) => host.to_string(),
                _ => "another host".into(),
            };
            format!(
                "{dst} lives on another host ({host}), and this host has no underlay \
                 (tunnel endpoint) configured to reach it"
            )
        }
        DropReason::ArpUnknownTarget => match from {
            Some(subnet) if subnet.cidr.contains(&dst) => {
                let gateway = subnet
                    .gateway
                    .map(|gateway| format!(" ({})", gateway.ip))
                    .unwrap_or_default();
                format!(
                    "no VM or neighbor has {dst} in the sender's subnet {} and it is not \
                     the gateway{gateway}: no ARP reply is sent, and nothing is flooded",
                    subnet.cidr
                )
            }
            _ => format!(
                "{dst} is outside the sender's subnet {from_words}: ARP is answered only for \
                 the gateway and the subnet's addresses (other subnets are reached through \
                 the gateway)"
            ),
        },
        DropReason::ArpOwnAddress => format!(
            "{dst} is the sender's own address (duplicate address detection): deliberately \
             not answered, so that the check passes"
        ),
        DropReason::ArpNotRequest if src == dst => format!(
            "an ARP request for the sender's own address {dst} is an announcement \
             (gratuitous ARP), which no one needs: the datapath answers for every address it \
             knows"
        ),
        DropReason::Broadcast => match resolution {
            Resolution::Unanswered { ip, why } => format!(
                "the VM's ARP request for {ip} gets no reply ({why}), so the VM has no MAC to \
                 send the packet to; sent to broadcast anyway, it is dropped: only ARP and \
                 DHCP may be broadcast"
            ),
            Resolution::NoGateway { subnet } => format!(
                "{dst} is outside {subnet}, which has no gateway, so the VM has no route to \
                 it; sent to broadcast anyway, it is dropped: only ARP and DHCP may be \
                 broadcast"
            ),
            _ => format!(
                "the destination MAC {dst_mac} is a broadcast or multicast address, and only \
                 ARP and DHCP may be broadcast"
            ),
        },
        reason => reason.description().to_string(),
    }
}

/// The verdict and its explanation, as the reply carries them.
struct Explained {
    verdict: api::TraceVerdict,
    drop_reason: Option<DropReason>,
    answer: &'static str,
    explanation: String,
    next_hop: api::NextHop,
    encapsulation: Option<api::Encapsulation>,
}

/// A device by its name, else by its ifindex.
fn named(name: &str, ifindex: u32) -> String {
    if name.is_empty() {
        format!("device {ifindex}")
    } else {
        name.to_string()
    }
}

/// `routed via router r1 (10.0.1.0/24 -> 10.0.2.0/24), then ` if routed.
fn routed_words(
    setup: &Setup,
    from: Option<&SubnetSpec>,
    to: Option<&SubnetSpec>,
    routed: bool,
) -> String {
    if !routed {
        return String::new();
    }
    format!(
        "routed via {}{}, then ",
        setup.router_words(from, to),
        subnets_words(from, to)
    )
}

/// ` (10.0.1.0/24 -> 10.0.2.0/24)`, if both subnets are known.
fn subnets_words(from: Option<&SubnetSpec>, to: Option<&SubnetSpec>) -> String {
    match (from, to) {
        (Some(from), Some(to)) => format!(" ({} -> {})", from.cidr, to.cidr),
        _ => String::new(),
    }
}

/// ` 10.0.1.1`: the address of the subnet's gateway, if it has one.
fn gateway_words(subnet: Option<&SubnetSpec>) -> String {
    subnet
        .and_then(|s| s.gateway)
        .map(|g| format!(" {}", g.ip))
        .unwrap_or_default()
}

/// The next hop of a frame to `host` out of `device`.
fn tunnel_hop(
    device: &str,
    ifindex: u32,
    host: Ipv4Addr,
    routed: bool,
    from: Option<&SubnetSpec>,
) -> api::NextHop {
    api::NextHop {
        kind: "tunnel".into(),
        device: device.into(),
        ifindex,
        routed,
        router_id: if routed {
            from.and_then(|s| s.router.clone()).unwrap_or_default()
        } else {
            String::new()
        },
        remote_host: host.to_string(),
        ..Default::default()
    }
}

fn explain(setup: &Setup, probe: &Probe, outcome: &Outcome) -> Explained {
    let verdict = outcome.result.verdict;
    let from = setup.source_subnet(probe.src_ip);
    let to = setup.subnet_of(probe.dst_ip);
    let mut explained = Explained {
        verdict: api::TraceVerdict::Unspecified,
        drop_reason: None,
        answer: "",
        explanation: String::new(),
        next_hop: api::NextHop::default(),
        encapsulation: None,
    };
    let in_place = || api::NextHop {
        kind: "in-place".into(),
        port_id: setup.port_id.clone(),
        device: device_name(&setup.port_id),
        ifindex: setup.ifindex,
        ..Default::default()
    };
    match verdict {
        Verdict::Pass(reason) => {
            explained.verdict = api::TraceVerdict::Passed;
            explained.explanation = reason.words().into();
            explained.next_hop.kind = "host-stack".into();
        }
        Verdict::Drop(reason) => {
            explained.verdict = api::TraceVerdict::Dropped;
            explained.drop_reason = Some(reason);
            explained.explanation = drop_words(setup, probe, &outcome.resolution, reason);
            explained.next_hop.kind = "none".into();
        }
        Verdict::Redirect {
            ifindex,
            redirect,
            routed,
        } => {
            let target = port_words(&setup.ports, ifindex);
            let how = delivery_words(redirect);
            explained.explanation = if routed {
                explained.verdict = api::TraceVerdict::Routed;
                format!(
                    "to {target} via {}{}, {how}",
                    setup.router_words(from, to),
                    subnets_words(from, to)
                )
            } else {
                explained.verdict = api::TraceVerdict::Delivered;
                format!("to {target} in the same subnet, {how}")
            };
            let (port_id, device) = port_of(&setup.ports, ifindex);
            explained.next_hop = api::NextHop {
                kind: "port".into(),
                port_id,
                device,
                ifindex,
                delivery: delivery_word(redirect).into(),
                routed,
                router_id: if routed {
                    from.and_then(|s| s.router.clone()).unwrap_or_default()
                } else {
                    String::new()
                },
                remote_host: String::new(),
            };
        }
        Verdict::Encapsulated {
            host,
            vni,
            underlay,
            next_hop,
            routed,
        } => {
            explained.verdict = api::TraceVerdict::Encapsulated;
            let device = named(&setup.underlay_device, underlay);
            let how = next_hop_words(next_hop);
            explained.explanation = format!(
                "{} lives on host {host}: {}encapsulated in VXLAN (VNI {vni}) to it, out of \
                 the underlay device {device}; {how}",
                probe.dst_ip,
                routed_words(setup, from, to, routed),
            );
            explained.next_hop = tunnel_hop(&device, underlay, host, routed, from);
            explained.encapsulation =
                packet::encapsulation(&outcome.result.output).map(|mut outer| {
                    outer.next_hop = next_hop_word(next_hop).into();
                    if next_hop == NextHop::Neighbor {
                        // Written by the kernel once the frame leaves.
                        outer.outer_src_mac.clear();
                        outer.outer_dst_mac.clear();
                    }
                    outer.underlay_device = device;
                    outer.underlay_ifindex = underlay;
                    outer
                });
        }
        Verdict::Fragmented {
            host,
            device: ifindex,
            routed,
        } => {
            explained.verdict = api::TraceVerdict::Encapsulated;
            let device = named(&setup.vxlan_device, ifindex);
            explained.explanation = format!(
                "{} lives on host {host}: {}the packet is bigger than the port MTU ({}) and \
                 may be fragmented (DF clear), so it goes through the VXLAN device {device}: \
                 the kernel encapsulates it (VNI {}) and fragments the outer packet, and \
                 host {host} reassembles it before delivery",
                probe.dst_ip,
                routed_words(setup, from, to, routed),
                setup.port_mtu,
                setup.vni,
            );
            explained.next_hop = tunnel_hop(&device, ifindex, host, routed, from);
        }
        Verdict::Answered(answer) => {
            explained.verdict = api::TraceVerdict::Answered;
            explained.next_hop = in_place();
            match answer {
                Answer::Arp => {
                    explained.answer = "arp-reply";
                    explained.explanation = match packet::arp_sender(&outcome.result.output) {
                        Some((mac, ip)) => format!(
                            "in place: ARP reply, {ip} is at {mac}{}",
                            setup.owner_words(ip)
                        ),
                        None => "in place: ARP reply".into(),
                    };
                }
                Answer::EchoReply => {
                    explained.answer = "echo-reply";
                    let of = from.map(|s| format!(" of {}", s.cidr)).unwrap_or_default();
                    explained.explanation = format!(
                        "in place: the gateway {}{of} answers the ping with an echo reply",
                        probe.dst_ip
                    );
                }
                Answer::TimeExceeded => {
                    explained.answer = "time-exceeded";
                    let gateway = gateway_words(from);
                    explained.explanation = format!(
                        "in place: the TTL ran out at {}, so the packet is dropped (counted \
                         as {}) and the gateway{gateway} sends ICMP time exceeded back",
                        setup.router_words(from, to),
                        DropReason::TtlExceeded.name()
                    );
                    explained.next_hop.router_id =
                        from.and_then(|s| s.router.clone()).unwrap_or_default();
                }
                Answer::FragNeeded => {
                    explained.answer = "frag-needed";
                    let gateway = gateway_words(from);
                    let next_hop = match setup.endpoint(probe.dst_ip).map(|e| e.location) {
                        Some(Location::Remote { host }) => {
                            format!("the tunnel to host {host}")
                        }
                        _ => setup.router_words(from, to),
                    };
                    explained.explanation = format!(
                        "in place: the packet is bigger than the port MTU ({mtu}) of \
                         {next_hop} and may not be fragmented (DF), so it is dropped \
                         (counted as {}) and the gateway{gateway} sends ICMP fragmentation \
                         needed back with next-hop MTU {mtu}: the VM's path MTU discovery \
                         then sends smaller packets (at most {burst} such answers at once, \
                         then {rate} a second, per port; a trace spends none)",
                        DropReason::FragNeeded.name(),
                        mtu = setup.port_mtu,
                        burst = alcor_ebpf_common::ICMP_ERRORS_BURST,
                        rate = 1_000_000_000 / alcor_ebpf_common::ICMP_ERROR_INTERVAL_NS,
                    );
                }
            }
        }
    }
    explained
}

pub fn reply(setup: &Setup, probe: &Probe, outcome: &Outcome) -> api::TraceReply {
    let explained = explain(setup, probe, outcome);
    let output = &outcome.result.output;
    api::TraceReply {
        port_id: setup.port_id.clone(),
        device: device_name(&setup.port_id),
        ifindex: setup.ifindex,
        mac_address: setup.mac.to_string(),
        ip_addresses: setup.ips.iter().map(ToString::to_string).collect(),
        packet: probe.words(),
        dst_mac_source: outcome.resolution.words(),
        verdict: explained.verdict as i32,
        drop_reason: explained
            .drop_reason
            .map(|r| r.name().to_string())
            .unwrap_or_default(),
        drop_description: explained
            .drop_reason
            .map(|r| r.description().to_string())
            .unwrap_or_default(),
        answer: explained.answer.into(),
        explanation: explained.explanation,
        next_hop: Some(explained.next_hop),
        input: Some(packet::headers(&outcome.input)),
        output: Some(packet::headers(output)),
        input_frame: outcome.input.clone(),
        output_frame: output.clone(),
        output_hexdump: packet::hexdump(output),
        encapsulation: explained.encapsulation,
    }
}
