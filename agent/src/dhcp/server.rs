//! The server's decisions (RFC 2131 §4.3), as a pure function: a decoded
//! request, where it arrived, the view, the lease table and the time in;
//! the reply to send, or what to count, out. No I/O.
//!
//! The goal state is the authority on addresses: every REQUEST is checked
//! against the client's binding in the view, not against the lease table,
//! so a lease lost in a crash still renews, and a port whose address
//! changed gets a NAK at its next renewal and moves.

use std::net::Ipv4Addr;

use super::{
    counters::{DropReason, Event, ServerMessage},
    frame::{BROADCAST_MAC, CLIENT_PORT, Destination, SERVER_PORT},
    leases::LeaseTable,
    message::{Request, RequestKind},
    view::{Binding, DhcpView},
};
use crate::core::model::Mac;

/// Where a request came from.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// The port device it arrived on: this decides the port, hence the VPC.
    pub ifindex: u32,
    /// The frame's source MAC.
    pub src_mac: Mac,
}

#[derive(Debug)]
pub enum Decision<'v> {
    Reply(Reply<'v>),
    /// No reply; count this.
    Silent(Event),
}

/// A reply, decided; [`super::reply`] encodes it.
#[derive(Debug)]
pub struct Reply<'v> {
    pub kind: ServerMessage,
    pub binding: &'v Binding,
    pub xid: u32,
    pub broadcast_flag: bool,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: Mac,
    /// Whether options 51, 58 and 59 go with it (not for INFORM, nor NAK).
    pub with_lease_time: bool,
    /// Option 56 of a NAK: why.
    pub message: Option<&'static str>,
    pub destination: Destination,
}

pub fn decide<'v>(
    request: &Request,
    arrival: Arrival,
    view: &'v DhcpView,
    leases: &mut LeaseTable,
    now: u64,
) -> Decision<'v> {
    let relayed = !request.giaddr.is_unspecified();
    // Through a relay the frame comes from the relay, not the client.
    if !relayed && request.chaddr != arrival.src_mac {
        return Decision::Silent(Event::Dropped(DropReason::SpoofedChaddr));
    }
    let binding = match view.lookup(arrival.ifindex, request.chaddr) {
        Ok(binding) => binding,
        Err(reason) => return Decision::Silent(Event::Dropped(reason)),
    };
    let ours =
        |server_id: Option<Ipv4Addr>| server_id.is_none_or(|id| id == binding.subnet.server.ip);
    let assign = |leases: &mut LeaseTable, wanted: Option<Ipv4Addr>| {
        if wanted == Some(binding.ip) && !leases.is_declined(binding, now) {
            leases.bind(binding, now);
            reply(ServerMessage::Ack, request, arrival, binding)
        } else {
            nak(request, arrival, binding, wanted)
        }
    };
    let ciaddr = Some(request.ciaddr).filter(|ip| !ip.is_unspecified());

    match request.kind {
        RequestKind::Discover => {
            if leases.is_declined(binding, now) {
                return Decision::Silent(Event::Dropped(DropReason::AddressDeclined));
            }
            leases.offer(binding, now);
            reply(ServerMessage::Offer, request, arrival, binding)
        }
        RequestKind::Request => match (request.server_id, ciaddr, request.requested_address) {
            // SELECTING: the client chose an offer, ours or another's.
            (Some(_), _, requested) => {
                if !ours(request.server_id) {
                    leases.forget_offer(binding);
                    return Decision::Silent(Event::Dropped(DropReason::OtherServer));
                }
                assign(leases, requested.or(ciaddr))
            }
            // RENEWING (unicast) or REBINDING (broadcast): the client holds
            // ciaddr; it is still its own only if the goal state says so.
            (None, Some(held), _) => assign(leases, Some(held)),
            // INIT-REBOOT: the client asks to keep the address it had.
            (None, None, Some(requested)) => assign(leases, Some(requested)),
            (None, None, None) => {
                Decision::Silent(Event::Dropped(DropReason::RequestWithoutAddress))
            }
        },
        RequestKind::Decline => {
            if !ours(request.server_id) {
                return Decision::Silent(Event::Dropped(DropReason::OtherServer));
            }
            if request.requested_address != Some(binding.ip) {
                return Decision::Silent(Event::Dropped(DropReason::UnknownLease));
            }
            tracing::warn!(
                port = &*binding.port_id,
                mac = %binding.mac,
                ip = %binding.ip,
                "DHCP client declined its address: it is in use by someone else"
            );
            leases.decline(binding, now);
            Decision::Silent(Event::LeaseDeclined)
        }
        RequestKind::Release => {
            if !ours(request.server_id) {
                return Decision::Silent(Event::Dropped(DropReason::OtherServer));
            }
            if ciaddr != Some(binding.ip) {
                return Decision::Silent(Event::Dropped(DropReason::UnknownLease));
            }
            leases.release(binding, now);
            Decision::Silent(Event::LeaseReleased)
        }
        // The client has its address; it wants the other parameters.
        RequestKind::Inform => reply(ServerMessage::Ack, request, arrival, binding),
    }
}

fn reply<'v>(
    kind: ServerMessage,
    request: &Request,
    arrival: Arrival,
    binding: &'v Binding,
) -> Decision<'v> {
    let inform = request.kind == RequestKind::Inform;
    let yiaddr = if inform {
        Ipv4Addr::UNSPECIFIED
    } else {
        binding.ip
    };
    Decision::Reply(Reply {
        kind,
        binding,
        xid: request.xid,
        broadcast_flag: request.broadcast_flag,
        // An OFFER's ciaddr is 0; an ACK echoes the client's (RFC 2131 table 3).
        ciaddr: if kind == ServerMessage::Offer {
            Ipv4Addr::UNSPECIFIED
        } else {
            request.ciaddr
        },
        yiaddr,
        siaddr: binding.subnet.next_server,
        giaddr: request.giaddr,
        chaddr: request.chaddr,
        with_lease_time: !inform,
        message: None,
        destination: destination(request, arrival, false, yiaddr),
    })
}

fn nak<'v>(
    request: &Request,
    arrival: Arrival,
    binding: &'v Binding,
    wanted: Option<Ipv4Addr>,
) -> Decision<'v> {
    tracing::debug!(
        port = &*binding.port_id,
        mac = %binding.mac,
        wanted = ?wanted,
        assigned = %binding.ip,
        "DHCPNAK"
    );
    let relayed = !request.giaddr.is_unspecified();
    Decision::Reply(Reply {
        kind: ServerMessage::Nak,
        binding,
        xid: request.xid,
        // A relay broadcasts a NAK on the client's link (RFC 2131 §4.1).
        broadcast_flag: request.broadcast_flag || relayed,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: request.giaddr,
        chaddr: request.chaddr,
        with_lease_time: false,
        message: Some("requested address is not assigned to this client"),
        destination: destination(request, arrival, true, Ipv4Addr::UNSPECIFIED),
    })
}

/// RFC 2131 §4.1: to the relay if there is one; a NAK by broadcast; to
/// ciaddr when the client has an address; by broadcast when the client
/// asks (or has nothing to be reached at); else to yiaddr at chaddr.
fn destination(request: &Request, arrival: Arrival, nak: bool, yiaddr: Ipv4Addr) -> Destination {
    let broadcast = Destination {
        mac: BROADCAST_MAC,
        ip: Ipv4Addr::BROADCAST,
        port: CLIENT_PORT,
    };
    let unicast = |ip| Destination {
        mac: request.chaddr,
        ip,
        port: CLIENT_PORT,
    };
    if !request.giaddr.is_unspecified() {
        Destination {
            mac: arrival.src_mac,
            ip: request.giaddr,
            port: SERVER_PORT,
        }
    } else if nak {
        broadcast
    } else if !request.ciaddr.is_unspecified() {
        unicast(request.ciaddr)
    } else if request.broadcast_flag || yiaddr.is_unspecified() {
        broadcast
    } else {
        unicast(yiaddr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        core::model::{FixedIp, Port},
        dhcp::{
            leases::LeaseState,
            message::{code, decode},
            testing::*,
            view::DhcpSettings,
        },
    };

    const NOW: u64 = 1_800_000_000;

    struct Server {
        view: DhcpView,
        leases: LeaseTable,
    }

    impl Server {
        fn new() -> Server {
            Server::with(&Fixture::new())
        }

        fn with(fixture: &Fixture) -> Server {
            Server {
                view: DhcpView::build(
                    &fixture.desired,
                    Fixture::ready_ports(),
                    &DhcpSettings::default(),
                ),
                leases: LeaseTable::default(),
            }
        }

        /// The decision for `request` from A1's own MAC on A1's device.
        fn decide(&mut self, request: RequestBuilder) -> Decision<'_> {
            self.decide_on(A1_IFINDEX, CLIENT_MAC, request)
        }

        fn decide_on(
            &mut self,
            ifindex: u32,
            src_mac: Mac,
            request: RequestBuilder,
        ) -> Decision<'_> {
            let request = decode(&request.bytes()).expect("a well-formed request");
            decide(
                &request,
                Arrival { ifindex, src_mac },
                &self.view,
                &mut self.leases,
                NOW,
            )
        }

        fn lease_state(&self) -> Option<LeaseState> {
            self.leases
                .get("vpc-a", CLIENT_MAC)
                .map(|lease| lease.state)
        }
    }

    fn replied(decision: Decision<'_>) -> Reply<'_> {
        match decision {
            Decision::Reply(reply) => reply,
            Decision::Silent(event) => panic!("no reply: {event:?}"),
        }
    }

    fn silent(decision: Decision<'_>) -> Event {
        match decision {
            Decision::Reply(reply) => panic!("unexpected {:?}", reply.kind),
            Decision::Silent(event) => event,
        }
    }

    fn dropped(reason: DropReason) -> Event {
        Event::Dropped(reason)
    }

    fn unicast_to(ip: Ipv4Addr) -> Destination {
        Destination {
            mac: CLIENT_MAC,
            ip,
            port: CLIENT_PORT,
        }
    }

    const BROADCAST: Destination = Destination {
        mac: BROADCAST_MAC,
        ip: Ipv4Addr::BROADCAST,
        port: CLIENT_PORT,
    };

    fn selecting(server_id: Ipv4Addr, requested: Ipv4Addr) -> RequestBuilder {
        RequestBuilder::request(CLIENT_MAC)
            .address_option(code::SERVER_ID, server_id)
            .address_option(code::REQUESTED_ADDRESS, requested)
    }

    #[test]
    fn discover_gets_an_offer_unicast_to_yiaddr_and_records_it() {
        let mut server = Server::new();
        let offer = replied(server.decide(RequestBuilder::discover(CLIENT_MAC)));
        assert_eq!(offer.kind, ServerMessage::Offer);
        assert_eq!(offer.yiaddr, A1_IP);
        assert_eq!(offer.ciaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.xid, RequestBuilder::XID);
        assert!(offer.with_lease_time);
        assert_eq!(offer.destination, unicast_to(A1_IP));
        assert_eq!(server.lease_state(), Some(LeaseState::Offered));
    }

    #[test]
    fn the_broadcast_flag_gets_a_broadcast_and_a_relay_gets_the_reply_on_port_67() {
        let mut server = Server::new();
        let offer = replied(server.decide(RequestBuilder::discover(CLIENT_MAC).broadcast()));
        assert_eq!(offer.destination, BROADCAST);
        assert!(offer.broadcast_flag);

        let relay_mac = Mac([2, 0, 0, 0, 0, 0x42]);
        let relay = Ipv4Addr::new(10, 0, 1, 254);
        // Through a relay, chaddr differs from the frame's source: not spoofed.
        let offer = replied(
            server.decide_on(
                A1_IFINDEX,
                relay_mac,
                RequestBuilder::discover(CLIENT_MAC)
                    .broadcast()
                    .giaddr(relay),
            ),
        );
        assert_eq!(
            offer.destination,
            Destination {
                mac: relay_mac,
                ip: relay,
                port: SERVER_PORT,
            }
        );
        assert_eq!(offer.giaddr, relay);
    }

    #[test]
    fn selecting_our_offer_is_acked_and_binds_the_lease() {
        let mut server = Server::new();
        replied(server.decide(RequestBuilder::discover(CLIENT_MAC)));
        let ack = replied(server.decide(selecting(GATEWAY, A1_IP)));
        assert_eq!(ack.kind, ServerMessage::Ack);
        assert_eq!(ack.yiaddr, A1_IP);
        assert_eq!(ack.destination, unicast_to(A1_IP));
        assert_eq!(server.lease_state(), Some(LeaseState::Bound));
        assert_eq!(
            server.leases.get("vpc-a", CLIENT_MAC).unwrap().expires_at,
            NOW + 86_400
        );
    }

    #[test]
    fn selecting_another_server_is_silently_forgotten() {
        let mut server = Server::new();
        replied(server.decide(RequestBuilder::discover(CLIENT_MAC)));
        let event = silent(server.decide(selecting(Ipv4Addr::new(10, 0, 1, 2), A1_IP)));
        assert_eq!(event, dropped(DropReason::OtherServer));
        assert_eq!(server.lease_state(), None, "the offer is forgotten");
    }

    #[test]
    fn selecting_our_server_with_a_wrong_address_is_naked() {
        let mut server = Server::new();
        let nak = replied(server.decide(selecting(GATEWAY, Ipv4Addr::new(10, 0, 1, 50))));
        assert_eq!(nak.kind, ServerMessage::Nak);
        assert_eq!(nak.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert!(nak.message.is_some());
        assert_eq!(nak.destination, BROADCAST);
    }

    #[test]
    fn init_reboot_is_acked_for_the_right_address_and_naked_by_broadcast_for_a_wrong_one() {
        let mut server = Server::new();
        let init_reboot =
            |ip| RequestBuilder::request(CLIENT_MAC).address_option(code::REQUESTED_ADDRESS, ip);
        let ack = replied(server.decide(init_reboot(A1_IP)));
        assert_eq!((ack.kind, ack.yiaddr), (ServerMessage::Ack, A1_IP));
        assert_eq!(ack.destination, unicast_to(A1_IP));

        let nak = replied(server.decide(init_reboot(Ipv4Addr::new(192, 168, 0, 5))));
        assert_eq!(nak.kind, ServerMessage::Nak);
        assert!(!nak.with_lease_time);
        assert_eq!(nak.destination, BROADCAST);
    }

    #[test]
    fn renewing_is_acked_by_unicast_to_ciaddr() {
        let mut server = Server::new();
        let renew = RequestBuilder::request(CLIENT_MAC).ciaddr(A1_IP);
        let ack = replied(server.decide(renew));
        assert_eq!(ack.kind, ServerMessage::Ack);
        assert_eq!((ack.ciaddr, ack.yiaddr), (A1_IP, A1_IP));
        assert!(ack.with_lease_time);
        assert_eq!(ack.destination, unicast_to(A1_IP));
        assert_eq!(server.lease_state(), Some(LeaseState::Bound));
    }

    #[test]
    fn rebinding_is_acked_to_ciaddr_too_even_with_the_broadcast_flag() {
        let mut server = Server::new();
        let rebind = RequestBuilder::request(CLIENT_MAC)
            .ciaddr(A1_IP)
            .broadcast();
        let ack = replied(server.decide(rebind));
        assert_eq!(ack.kind, ServerMessage::Ack);
        assert_eq!(ack.destination, unicast_to(A1_IP));
    }

    #[test]
    fn a_goal_state_change_of_the_port_address_naks_the_next_renewal() {
        let mut fixture = Fixture::new();
        let moved = Ipv4Addr::new(10, 0, 1, 50);
        let mut a2 = fixture.spec::<Port>("port-a2");
        a2.fixed_ips = vec![FixedIp {
            subnet_id: "sn-a".into(),
            ip: moved,
        }];
        fixture.insert("port-a2", a2);
        let mut server = Server::with(&fixture);
        let renew = RequestBuilder::request(A2_MAC).ciaddr(A2_IP);
        let nak = replied(server.decide_on(A2_IFINDEX, A2_MAC, renew));
        assert_eq!(nak.kind, ServerMessage::Nak);
        assert_eq!(nak.destination.ip, Ipv4Addr::BROADCAST);
        // Back at INIT, the client is offered the new address.
        let offer = replied(server.decide_on(A2_IFINDEX, A2_MAC, RequestBuilder::discover(A2_MAC)));
        assert_eq!(offer.yiaddr, moved);
    }

    #[test]
    fn a_request_without_any_address_is_dropped() {
        let mut server = Server::new();
        let event = silent(server.decide(RequestBuilder::request(CLIENT_MAC)));
        assert_eq!(event, dropped(DropReason::RequestWithoutAddress));
    }

    #[test]
    fn decline_marks_the_address_unavailable_so_it_is_not_offered_again() {
        let mut server = Server::new();
        let decline = RequestBuilder::typed(CLIENT_MAC, 4)
            .address_option(code::SERVER_ID, GATEWAY)
            .address_option(code::REQUESTED_ADDRESS, A1_IP);
        assert_eq!(silent(server.decide(decline)), Event::LeaseDeclined);
        assert_eq!(server.lease_state(), Some(LeaseState::Declined));
        assert_eq!(
            silent(server.decide(RequestBuilder::discover(CLIENT_MAC))),
            dropped(DropReason::AddressDeclined)
        );
        let nak = replied(server.decide(selecting(GATEWAY, A1_IP)));
        assert_eq!(nak.kind, ServerMessage::Nak);
    }

    #[test]
    fn decline_for_another_server_or_address_is_ignored() {
        let mut server = Server::new();
        let other_server = RequestBuilder::typed(CLIENT_MAC, 4)
            .address_option(code::SERVER_ID, Ipv4Addr::new(10, 0, 1, 2))
            .address_option(code::REQUESTED_ADDRESS, A1_IP);
        assert_eq!(
            silent(server.decide(other_server)),
            dropped(DropReason::OtherServer)
        );
        let other_address = RequestBuilder::typed(CLIENT_MAC, 4)
            .address_option(code::SERVER_ID, GATEWAY)
            .address_option(code::REQUESTED_ADDRESS, Ipv4Addr::new(10, 0, 1, 77));
        assert_eq!(
            silent(server.decide(other_address)),
            dropped(DropReason::UnknownLease)
        );
        assert_eq!(server.lease_state(), None);
    }

    #[test]
    fn release_frees_the_lease() {
        let mut server = Server::new();
        replied(server.decide(selecting(GATEWAY, A1_IP)));
        let release = RequestBuilder::typed(CLIENT_MAC, 7)
            .ciaddr(A1_IP)
            .address_option(code::SERVER_ID, GATEWAY);
        assert_eq!(silent(server.decide(release.clone())), Event::LeaseReleased);
        let lease = server.leases.get("vpc-a", CLIENT_MAC).unwrap();
        assert_eq!((lease.state, lease.expires_at), (LeaseState::Released, NOW));
        assert_eq!(
            server
                .leases
                .address_of(server.view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap()),
            None
        );

        let wrong = RequestBuilder::typed(CLIENT_MAC, 7)
            .ciaddr(Ipv4Addr::new(10, 0, 1, 77))
            .address_option(code::SERVER_ID, GATEWAY);
        assert_eq!(
            silent(server.decide(wrong)),
            dropped(DropReason::UnknownLease)
        );
    }

    #[test]
    fn inform_gets_an_ack_without_address_nor_lease_time_at_ciaddr() {
        let mut server = Server::new();
        let inform = RequestBuilder::typed(CLIENT_MAC, 8).ciaddr(A1_IP);
        let ack = replied(server.decide(inform));
        assert_eq!(ack.kind, ServerMessage::Ack);
        assert_eq!(ack.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(ack.ciaddr, A1_IP);
        assert!(!ack.with_lease_time);
        assert_eq!(ack.destination, unicast_to(A1_IP));
        assert_eq!(server.lease_state(), None, "INFORM assigns nothing");
    }

    #[test]
    fn the_arrival_device_and_the_frame_source_decide_who_is_answered() {
        let mut server = Server::new();
        let spoofed =
            server.decide_on(A1_IFINDEX, NESTED_MAC, RequestBuilder::discover(CLIENT_MAC));
        assert_eq!(silent(spoofed), dropped(DropReason::SpoofedChaddr));
        let nested =
            replied(server.decide_on(A1_IFINDEX, NESTED_MAC, RequestBuilder::discover(NESTED_MAC)));
        assert_eq!(nested.yiaddr, NESTED_IP);
        let cases = [
            (A2_IFINDEX, CLIENT_MAC, DropReason::WrongPort),
            (B1_IFINDEX, CLIENT_MAC, DropReason::WrongVpc),
            (A1_IFINDEX, STRANGER_MAC, DropReason::UnknownMac),
            (A1_IFINDEX, UNADDRESSED_MAC, DropReason::NoAddress),
            (42, CLIENT_MAC, DropReason::UnknownPort),
        ];
        for (ifindex, mac, reason) in cases {
            let event = silent(server.decide_on(ifindex, mac, RequestBuilder::discover(mac)));
            assert_eq!(event, dropped(reason), "{mac} on {ifindex}");
        }
    }

    #[test]
    fn the_same_address_in_two_vpcs_is_served_from_each_port_gateway() {
        let mut server = Server::new();
        let offer = replied(server.decide_on(B1_IFINDEX, B1_MAC, RequestBuilder::discover(B1_MAC)));
        assert_eq!(offer.yiaddr, B1_IP);
        assert_eq!(offer.binding.subnet.server.mac, GATEWAY_B_MAC);
        assert_eq!(&*offer.binding.vpc_id, "vpc-b");
    }
}
