//! The other hosts' MACs, from the kernel's IPv4 neighbour table of the
//! underlay device: dumped at start, then followed (RTNLGRP_NEIGH).
//!
//! A host whose MAC is known gets it in its HOSTS entry, and the port
//! program then writes the outer MACs itself and sends with a plain
//! `bpf_redirect` (TCP between hosts at 1.10× the kernel's VXLAN path in
//! the prototype); without one it sends with `bpf_redirect_neigh`, which
//! makes the kernel look up the route and the neighbour of every frame
//! (1.01×).
//!
//! Staleness: frames sent with `bpf_redirect` bypass the kernel's
//! neighbour entry, which therefore never sees them used. It ages to STALE
//! (a MAC still worth using: kept) and may be garbage-collected; RTM_DELNEIGH
//! then takes the MAC away, the host's frames go by `bpf_redirect_neigh`
//! again, the kernel resolves the address anew, and the RTM_NEWNEIGH that
//! follows brings the MAC back. A MAC that changes (a NIC replaced, which
//! announces itself with ARP) comes as RTM_NEWNEIGH with the new address and
//! replaces the old one. What the kernel cannot tell, since nothing of ours
//! makes it probe, is a host whose MAC changed silently: it stays
//! unreachable until its entry is garbage-collected or deleted
//! (`ip neigh del`).
//!
//! Only usable entries count (REACHABLE, STALE, DELAY, PROBE, PERMANENT,
//! NOARP, with a unicast link-layer address); INCOMPLETE, FAILED and NONE,
//! and RTM_DELNEIGH, mean no MAC. The watcher reports changes of the MAC an
//! address has, not the kernel's every state transition (REACHABLE to STALE
//! and back is no change).

use std::net::Ipv4Addr;

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
};
use netlink_sys::AsyncSocket;
use rtnetlink::{Handle, MulticastGroup, new_multicast_connection};
use tokio::sync::mpsc;

use crate::{
    core::{model::Mac, status::NeighbourMacs},
    tasks::Tasks,
};

/// Room for bursts of neighbour events.
const RECEIVE_BUFFER: usize = 1 << 20;

/// An address of the underlay's neighbours whose usable MAC changed:
/// `None` when it has none any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourChange {
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
}

/// The neighbours of the underlay device now, and from then on their
/// changes, until the receiver is dropped. Subscribes before it dumps, so
/// that no change in between is lost (one seen twice changes nothing).
pub async fn watch(
    handle: &Handle,
    ifindex: u32,
    tasks: &Tasks,
) -> anyhow::Result<(NeighbourMacs, mpsc::UnboundedReceiver<NeighbourChange>)> {
    let (mut connection, _, mut messages) = new_multicast_connection(&[MulticastGroup::Neigh])
        .context("subscribing to neighbour events")?;
    connection
        .socket_mut()
        .socket_mut()
        .set_rx_buf_sz(RECEIVE_BUFFER)
        .context("sizing the neighbour events' socket")?;
    tasks.spawn_until_stopped(connection);
    let mut table = dump(handle, ifindex).await?;
    let initial = table.clone();

    let (changes, receiver) = mpsc::unbounded_channel();
    let handle = handle.clone();
    tasks.spawn_until_stopped(async move {
        while let Some((message, _)) = messages.next().await {
            let found = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(neighbour)) => {
                    observed(&neighbour, ifindex, false).into_iter().collect()
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(neighbour)) => {
                    observed(&neighbour, ifindex, true).into_iter().collect()
                }
                // Events were lost: what the table says now is the truth.
                NetlinkPayload::Overrun(_) => match dump(&handle, ifindex).await {
                    Ok(now) => diff(&table, &now),
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "neighbour events overran and the table could not be read again"
                        );
                        continue;
                    }
                },
                _ => continue,
            };
            for (ip, mac) in found {
                let Some(change) = apply(&mut table, ip, mac) else {
                    continue;
                };
                if changes.send(change).is_err() {
                    return;
                }
            }
        }
        tracing::error!("neighbour events stopped: host MACs are no longer followed");
    });
    Ok((initial, receiver))
}

/// The usable MACs of the underlay device's IPv4 neighbours.
async fn dump(handle: &Handle, ifindex: u32) -> anyhow::Result<NeighbourMacs> {
    let mut messages = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute();
    let mut table = NeighbourMacs::new();
    while let Some(neighbour) = messages
        .try_next()
        .await
        .context("reading the neighbour table")?
    {
        if let Some((ip, Some(mac))) = observed(&neighbour, ifindex, false) {
            table.insert(ip, mac);
        }
    }
    Ok(table)
}

/// What a neighbour message says of an IPv4 address of the underlay
/// device (`ifindex`): its usable MAC, or none (`deleted`: the entry is
/// gone). `None` for messages about anything else.
fn observed(
    neighbour: &NeighbourMessage,
    ifindex: u32,
    deleted: bool,
) -> Option<(Ipv4Addr, Option<Mac>)> {
    let header = &neighbour.header;
    // Proxy entries answer for an address; they say nothing of its MAC.
    if header.family != AddressFamily::Inet
        || header.ifindex != ifindex
        || header.flags.contains(NeighbourFlags::Proxy)
    {
        return None;
    }
    let ip = neighbour
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
            _ => None,
        })?;
    if deleted || !usable(header.state) {
        return Some((ip, None));
    }
    let mac = neighbour
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(&bytes[..]).ok(),
            _ => None,
        });
    let mac = mac
        .map(Mac)
        .filter(|mac| !mac.is_zero() && !mac.is_multicast());
    Some((ip, mac))
}

/// Whether an entry in `state` has a MAC worth sending to: NUD_VALID, as
/// the kernel has it.
fn usable(state: NeighbourState) -> bool {
    const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
    u16::from(state) & NUD_VALID != 0
}

/// Records that `ip` has `mac` (or none); the change, if it is one.
fn apply(table: &mut NeighbourMacs, ip: Ipv4Addr, mac: Option<Mac>) -> Option<NeighbourChange> {
    let before = match mac {
        Some(mac) => table.insert(ip, mac),
        None => table.remove(&ip),
    };
    (before != mac).then_some(NeighbourChange { ip, mac })
}

/// What turns `table` into `now`, as (address, MAC) pairs for [`apply`].
fn diff(table: &NeighbourMacs, now: &NeighbourMacs) -> Vec<(Ipv4Addr, Option<Mac>)> {
    let gone = table
        .keys()
        .filter(|ip| !now.contains_key(ip))
        .map(|&ip| (ip, None));
    let changed = now
        .iter()
        .filter(|&(ip, mac)| table.get(ip) != Some(mac))
        .map(|(&ip, &mac)| (ip, Some(mac)));
    gone.chain(changed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNDERLAY: u32 = 2;
    const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const MAC: Mac = Mac([0x02, 0, 0xc6, 0x12, 0, 2]);

    fn message(
        family: AddressFamily,
        ifindex: u32,
        state: NeighbourState,
        lladdr: Option<[u8; 6]>,
    ) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = family;
        message.header.ifindex = ifindex;
        message.header.state = state;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                HOST,
            )));
        if let Some(lladdr) = lladdr {
            message
                .attributes
                .push(NeighbourAttribute::LinkLayerAddress(lladdr.to_vec()));
        }
        message
    }

    fn on_underlay(state: NeighbourState, lladdr: Option<[u8; 6]>) -> NeighbourMessage {
        message(AddressFamily::Inet, UNDERLAY, state, lladdr)
    }

    #[test]
    fn valid_states_with_a_unicast_mac_give_it() {
        use NeighbourState::*;
        for state in [Reachable, Stale, Delay, Probe, Permanent, Noarp] {
            assert_eq!(
                observed(&on_underlay(state, Some(MAC.0)), UNDERLAY, false),
                Some((HOST, Some(MAC))),
                "{state:?}"
            );
        }
        // An unnamed combination of bits that the kernel counts as valid.
        let state = Other(0x02 | 0x80);
        assert_eq!(
            observed(&on_underlay(state, Some(MAC.0)), UNDERLAY, false),
            Some((HOST, Some(MAC)))
        );
    }

    #[test]
    fn unresolved_entries_deletions_and_odd_macs_give_none() {
        use NeighbourState::*;
        for state in [Incomplete, Failed, None] {
            assert_eq!(
                observed(&on_underlay(state, Some(MAC.0)), UNDERLAY, false),
                Some((HOST, Option::None)),
                "{state:?}"
            );
        }
        assert_eq!(
            observed(&on_underlay(Reachable, Some(MAC.0)), UNDERLAY, true),
            Some((HOST, Option::None)),
            "deleted"
        );
        for lladdr in [Option::None, Some([0; 6]), Some([0xff; 6])] {
            assert_eq!(
                observed(&on_underlay(Reachable, lladdr), UNDERLAY, false),
                Some((HOST, Option::None)),
                "{lladdr:?}"
            );
        }
    }

    #[test]
    fn other_devices_families_and_proxies_are_ignored() {
        use NeighbourState::*;
        let other = message(AddressFamily::Inet, UNDERLAY + 1, Reachable, Some(MAC.0));
        assert_eq!(observed(&other, UNDERLAY, false), Option::None);
        assert_eq!(observed(&other, UNDERLAY, true), Option::None);
        let bridge = message(AddressFamily::Bridge, UNDERLAY, Reachable, Some(MAC.0));
        assert_eq!(observed(&bridge, UNDERLAY, false), Option::None);
        let mut proxy = on_underlay(Noarp, Option::None);
        proxy.header.flags = NeighbourFlags::Proxy;
        assert_eq!(observed(&proxy, UNDERLAY, true), Option::None);
    }

    #[test]
    fn only_changes_of_the_mac_are_reported() {
        let mut table = NeighbourMacs::new();
        let change = |mac| Some(NeighbourChange { ip: HOST, mac });
        assert_eq!(apply(&mut table, HOST, Some(MAC)), change(Some(MAC)));
        // REACHABLE to STALE and back: the same MAC, nothing to do.
        assert_eq!(apply(&mut table, HOST, Some(MAC)), None);
        let moved = Mac([0x02, 0, 0, 0, 0, 9]);
        assert_eq!(apply(&mut table, HOST, Some(moved)), change(Some(moved)));
        assert_eq!(apply(&mut table, HOST, None), change(None));
        assert_eq!(apply(&mut table, HOST, None), None);
        assert!(table.is_empty());
    }

    #[test]
    fn a_fresh_dump_becomes_the_changes_that_lead_to_it() {
        let (a, b, c) = (
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(198, 18, 0, 3),
        );
        let mut table = NeighbourMacs::from([(a, MAC), (b, MAC)]);
        let moved = Mac([0x02, 0, 0, 0, 0, 9]);
        let now = NeighbourMacs::from([(b, moved), (c, MAC)]);
        let steps = diff(&table, &now);
        assert_eq!(steps, [(a, None), (b, Some(moved)), (c, Some(MAC))]);
        for (ip, mac) in steps {
            assert!(apply(&mut table, ip, mac).is_some());
        }
        assert_eq!(table, now);
    }
}
