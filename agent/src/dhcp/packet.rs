//! The packet handler: a received frame in, a reply frame out (or nothing),
//! every outcome counted. This is what the socket loop runs per frame, and
//! what the fuzz tests hammer.

use super::{
    counters::{Counters, Event, ServerMessage},
    frame,
    leases::LeaseTable,
    message, reply,
    server::{self, Arrival, Decision},
    view::DhcpView,
};

/// Handles the frame that arrived on device `ifindex`. When a reply is due,
/// its frame is written into `out` (replacing what was there), to be sent on
/// the same device, and its type is returned; the caller counts it sent.
pub fn handle_frame(
    received: &[u8],
    ifindex: u32,
    view: &DhcpView,
    leases: &mut LeaseTable,
    counters: &Counters,
    now: u64,
    out: &mut Vec<u8>,
) -> Option<ServerMessage> {
    let datagram = match frame::parse(received) {
        Ok(datagram) => datagram,
        Err(reason) => {
            counters.count_event(Event::Dropped(reason));
            return None;
        }
    };
    let request = match message::decode(datagram.payload) {
        Ok(request) => request,
        Err(refusal) => {
            if let Some(kind) = refusal.received_as {
                counters.count_received(kind);
            }
            counters.count_event(Event::Dropped(refusal.reason));
            return None;
        }
    };
    counters.count_received(request.kind.counter());
    let arrival = Arrival {
        ifindex,
        src_mac: datagram.src_mac,
    };
    match server::decide(&request, arrival, view, leases, now) {
        Decision::Silent(event) => {
            counters.count_event(event);
            None
        }
        Decision::Reply(reply) => {
            frame::start(out);
            reply::encode(&reply, &request, view.max_message_size(), out);
            Some(reply.kind)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::dhcp::{
        counters::{ClientMessage, DropReason},
        message::code,
        testing::*,
        view::DhcpSettings,
    };

    #[test]
    fn a_four_way_exchange_through_frames() {
        let view = DhcpView::build(
            &Fixture::new().desired,
            Fixture::ready_ports(),
            &DhcpSettings::default(),
        );
        let mut leases = LeaseTable::default();
        let counters = Counters::default();
        let mut out = Vec::new();
        let mut handle = |request: RequestBuilder, dst_ip| {
            let frame = request.frame(CLIENT_MAC, dst_ip);
            handle_frame(
                &frame,
                A1_IFINDEX,
                &view,
                &mut leases,
                &counters,
                0,
                &mut out,
            )
        };
        assert_eq!(
            handle(RequestBuilder::discover(CLIENT_MAC), Ipv4Addr::BROADCAST),
            Some(ServerMessage::Offer)
        );
        let request = RequestBuilder::request(CLIENT_MAC)
            .address_option(code::SERVER_ID, GATEWAY)
            .address_option(code::REQUESTED_ADDRESS, A1_IP);
        assert_eq!(
            handle(request, Ipv4Addr::BROADCAST),
            Some(ServerMessage::Ack)
        );
        assert_eq!(
            handle(RequestBuilder::request(CLIENT_MAC), Ipv4Addr::BROADCAST),
            None
        );
        // The reply frame is addressed per RFC 2131 §4.1: unicast to yiaddr.
        assert_eq!(&out[..6], &CLIENT_MAC.octets());
        assert_eq!(&out[6..12], &GATEWAY_MAC.octets());
        assert_eq!(&out[26..30], &GATEWAY.octets());
        assert_eq!(&out[30..34], &A1_IP.octets());
        assert_eq!(counters.received(ClientMessage::Discover), 1);
        assert_eq!(counters.received(ClientMessage::Request), 2);
        assert_eq!(counters.dropped(DropReason::RequestWithoutAddress), 1);
    }

    #[test]
    fn refusals_are_counted_by_reason_and_received_type() {
        let view = DhcpView::build(
            &Fixture::new().desired,
            Fixture::ready_ports(),
            &DhcpSettings::default(),
        );
        let mut leases = LeaseTable::default();
        let counters = Counters::default();
        let mut out = Vec::new();
        let mut handle = |frame: &[u8]| {
            handle_frame(
                frame,
                A1_IFINDEX,
                &view,
                &mut leases,
                &counters,
                0,
                &mut out,
            )
        };

        assert_eq!(handle(&[0; 10]), None);
        let offer = RequestBuilder::typed(CLIENT_MAC, 2).frame(CLIENT_MAC, Ipv4Addr::BROADCAST);
        assert_eq!(handle(&offer), None);
        let spoofed = RequestBuilder::discover(CLIENT_MAC).frame(A2_MAC, Ipv4Addr::BROADCAST);
        assert_eq!(handle(&spoofed), None);
        assert_eq!(counters.dropped(DropReason::Truncated), 1);
        assert_eq!(counters.dropped(DropReason::UnexpectedMessageType), 1);
        assert_eq!(counters.received(ClientMessage::Other), 1);
        assert_eq!(counters.dropped(DropReason::SpoofedChaddr), 1);
        assert_eq!(counters.received(ClientMessage::Discover), 1);
        assert_eq!(counters.malformed(), 2);
    }
}
