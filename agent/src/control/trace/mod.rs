//! A trace: the frame a port's VM would send for a packet description, run
//! through the port program, and the verdict explained with this packet's
//! addresses and the names the operator knows (ports, subnets, routers).

#[cfg(test)]
pub use self::explain::drop_words;
use self::explain::verdict_words;
pub use self::{
    explain::reply,
    probe::{Outcome, Probe, Protocol, Resolution, Setup, Tunnel},
};
use crate::{
    core::model::Mac,
    datapath::{Answer, DatapathError, DatapathReader, Verdict},
    packet,
};

mod explain;
mod probe;

/// Builds the frame and runs it through the port program; resolving
/// its destination MAC first runs the VM's ARP request through it too.
/// The device is looked up in the calling thread's network namespace.
pub fn run(
    datapath: &DatapathReader,
    setup: &Setup,
    probe: &Probe,
) -> Result<Outcome, DatapathError> {
    let (dst_mac, resolution) = match (probe.protocol, probe.dst_mac) {
        (_, Some(mac)) => (mac, Resolution::Given),
        (Protocol::Arp, None) => (packet::BROADCAST, Resolution::Broadcast),
        (_, None) => resolve(datapath, setup, probe)?,
    };
    let input = probe.frame(dst_mac);
    let result = datapath.trace(setup.ifindex, &input)?;
    Ok(Outcome {
        resolution,
        input,
        result,
    })
}

/// The MAC the VM would send the probe to: its kernel asks ARP (from
/// the port's MAC and its own address) for the destination in its
/// subnet, or for its gateway; the program answers, or not.
fn resolve(
    datapath: &DatapathReader,
    setup: &Setup,
    probe: &Probe,
) -> Result<(Mac, Resolution), DatapathError> {
    let sender = if setup.ips.contains(&probe.src_ip) {
        probe.src_ip
    } else {
        setup.ips.first().copied().unwrap_or(probe.src_ip)
    };
    let broadcast = |resolution| Ok((packet::BROADCAST, resolution));
    let Some(subnet) = setup.source_subnet(sender) else {
        return broadcast(Resolution::NoSubnet { ip: sender });
    };
    let gateway = subnet.gateway;
    let target = if subnet.cidr.contains(&probe.dst_ip) {
        probe.dst_ip
    } else if let Some(gateway) = gateway {
        gateway.ip
    } else {
        return broadcast(Resolution::NoGateway {
            subnet: subnet.cidr,
        });
    };
    let arp = Probe {
        protocol: Protocol::Arp,
        src_mac: setup.mac,
        dst_mac: None,
        src_ip: sender,
        dst_ip: target,
        ..probe.clone()
    };
    let answer = datapath.trace(setup.ifindex, &arp.frame(packet::BROADCAST))?;
    let answered = packet::arp_sender(&answer.output);
    match (answer.verdict, answered) {
        (Verdict::Answered(Answer::Arp), Some((mac, _))) => Ok((
            mac,
            Resolution::Resolved {
                ip: target,
                mac,
                gateway_of: gateway
                    .filter(|gateway| gateway.ip == target)
                    .map(|_| subnet.cidr),
            },
        )),
        (verdict, _) => broadcast(Resolution::Unanswered {
            ip: target,
            why: verdict_words(setup, &arp, &Resolution::Broadcast, verdict),
        }),
    }
}
