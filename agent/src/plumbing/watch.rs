//! Link events from the kernel (RTNLGRP_LINK), so that a tap created by a
//! hypervisor is programmed as soon as it appears, with nobody polling.

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::AsyncSocket;
use rtnetlink::{MulticastGroup, new_multicast_connection};
use tokio::sync::mpsc;

use super::link::Link;
use crate::tasks::Tasks;

#[derive(Debug)]
pub enum LinkEvent {
    /// A link appeared or changed.
    Changed(Link),
    Removed(Link),
    /// Events were lost (the socket overran): everything must be looked at.
    Resync,
}

/// Room for event bursts, e.g. a hypervisor starting many VMs at once.
const RECEIVE_BUFFER: usize = 8 << 20;

/// Subscribes to link events; they arrive on the returned channel until it
/// is dropped or the agent stops.
pub fn watch_links(tasks: &Tasks) -> std::io::Result<mpsc::UnboundedReceiver<LinkEvent>> {
    let (mut connection, _handle, mut messages) =
        new_multicast_connection(&[MulticastGroup::Link])?;
    connection
        .socket_mut()
        .socket_mut()
        .set_rx_buf_sz(RECEIVE_BUFFER)?;
    tasks.spawn_until_stopped(connection);

    let (events, receiver) = mpsc::unbounded_channel();
    tasks.spawn_until_stopped(async move {
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    LinkEvent::Changed(Link::from(&link))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                    LinkEvent::Removed(Link::from(&link))
                }
                NetlinkPayload::Overrun(_) => LinkEvent::Resync,
                _ => continue,
            };
            if events.send(event).is_err() {
                break;
            }
        }
    });
    Ok(receiver)
}
