//! Encoding of replies: the BOOTP header and each option by dhcproto, in
//! the order and within the size the client asked for.
//!
//! - Options 53 and 54 always, and 51 with a lease (RFC 2131 table 3).
//! - Then what the client's option 55 lists, in its order (RFC 2132 §9.8),
//!   each only if it fits; without option 55, every option the subnet has
//!   but 249, in code order. 249 goes only to clients that list it.
//! - The interface MTU (26) whenever it is below Ethernet's 1500, listed or
//!   not (RFC 2131 §4.3.1 lets a server add options): busybox udhcpc, the
//!   client of CirrOS, Alpine and many small images, does not ask for it, and
//!   a guest left at 1500 loses every full-size frame once encapsulated. Room
//!   for it is kept, as for the echoes.
//! - Then the client identifier (RFC 6842) and relay agent information
//!   (RFC 3046) are echoed.
//! - The message never exceeds the client's option 57 (at least 576, and
//!   counting IP and UDP headers, as ISC's servers do), nor the port MTU,
//!   and is padded to the 300 bytes of the BOOTP minimum.

use dhcproto::{
    Encodable,
    v4::{self, DhcpOption, Flags, MessageType, Opcode},
};

use super::{
    counters::ServerMessage,
    frame::{self, IP_UDP_HEADERS_LEN},
    message::{Request, code},
    server::Reply,
};

/// The smallest IP datagram every DHCP client accepts (RFC 2131 §2).
const MIN_DATAGRAM: usize = 576;
/// The BOOTP minimum message size (RFC 1542 §2.1).
const MIN_MESSAGE: usize = 300;
const BROADCAST_FLAG: u16 = 0x8000;

/// The largest DHCP message this client may be sent.
pub fn size_limit(request: &Request, max_message_size: usize) -> usize {
    let client = request
        .max_message_size
        .map_or(MIN_DATAGRAM, |size| usize::from(size).max(MIN_DATAGRAM));
    (client - IP_UDP_HEADERS_LEN).min(max_message_size)
}

/// Appends the reply's DHCP message to `frame` (whose header room was
/// reserved by [`frame::start`]) and fills in the frame's headers.
pub fn encode(reply: &Reply<'_>, request: &Request, max_message_size: usize, frame: &mut Vec<u8>) {
    let message_start = frame.len();
    let mut header = v4::Message::new_with_id(
        reply.xid,
        reply.ciaddr,
        reply.yiaddr,
        reply.siaddr,
        reply.giaddr,
        &reply.chaddr.octets(),
    );
    header
        .set_opcode(Opcode::BootReply)
        .set_flags(Flags::new(if reply.broadcast_flag {
            BROADCAST_FLAG
        } else {
            0
        }));
    // A message without options encodes as the header and magic cookie.
    if let Ok(bytes) = header.to_vec() {
        frame.extend_from_slice(&bytes);
    }

    let limit = size_limit(request, max_message_size);
    let echoes: Vec<Vec<u8>> = [
        request.client_id.clone().map(DhcpOption::ClientIdentifier),
        request
            .relay_agent_info
            .clone()
            .map(|info| raw(code::RELAY_AGENT_INFO, info)),
    ]
    .into_iter()
    .flatten()
    .filter_map(|option| option.to_vec().ok())
    .collect();
    let mut options = Options {
        frame,
        // The end option always follows.
        end: message_start + limit - 1,
        sent: [false; 256],
    };

    let message_type = match reply.kind {
        ServerMessage::Offer => MessageType::Offer,
        ServerMessage::Ack => MessageType::Ack,
        ServerMessage::Nak => MessageType::Nak,
    };
    let subnet = &reply.binding.subnet;
    options.add_option(&DhcpOption::MessageType(message_type));
    options.add_option(&DhcpOption::ServerIdentifier(subnet.server.ip));
    if reply.with_lease_time {
        options.add_option(&DhcpOption::AddressLeaseTime(subnet.lease_time));
    }
    let unasked_mtu = subnet
        .options
        .get(code::INTERFACE_MTU)
        .filter(|encoded| below_ethernet_mtu(encoded));
    // Room for the echoes, which come last, and for the MTU.
    let reserved = (echoes.iter().map(Vec::len).sum::<usize>()
        + unasked_mtu.map_or(0, <[u8]>::len))
    .min(options.room());
    options.end -= reserved;

    if let Some(message) = reply.message {
        options.add_option(&DhcpOption::Message(message.into()));
    } else {
        let all_codes;
        let wanted: &[u8] = match &request.parameter_list {
            Some(list) => list,
            None => {
                all_codes = default_codes(reply);
                &all_codes
            }
        };
        for &code in wanted {
            match code {
                code::HOSTNAME => {
                    options.add_option(&DhcpOption::Hostname(reply.binding.hostname.clone()))
                }
                code::RENEWAL_TIME if reply.with_lease_time => {
                    options.add_option(&DhcpOption::Renewal(subnet.renewal_time))
                }
                code::REBINDING_TIME if reply.with_lease_time => {
                    options.add_option(&DhcpOption::Rebinding(subnet.rebinding_time))
                }
                code => {
                    if let Some(encoded) = subnet.options.get(code) {
                        options.add(code, encoded);
                    }
                }
            }
        }
    }

    options.end += reserved;
    if reply.message.is_none()
        && let Some(mtu) = unasked_mtu
    {
        options.add(code::INTERFACE_MTU, mtu);
    }
    for echo in &echoes {
        if let Some(&code) = echo.first() {
            options.add(code, echo);
        }
    }
    frame.push(code::END);
    let padded = message_start + MIN_MESSAGE;
    if frame.len() < padded {
        frame.resize(padded, code::PAD);
    }
    frame::finish(frame, subnet.server, reply.destination);
}

/// What a client that lists no parameters gets.
fn default_codes(reply: &Reply<'_>) -> Vec<u8> {
    let mut codes: Vec<u8> = reply
        .binding
        .subnet
        .options
        .codes()
        .filter(|code| *code != code::MS_CLASSLESS_ROUTES)
        .chain([code::HOSTNAME, code::RENEWAL_TIME, code::REBINDING_TIME])
        .collect();
    codes.sort_unstable();
    codes
}

/// Whether an encoded option 26 says less than Ethernet's 1500.
fn below_ethernet_mtu(encoded: &[u8]) -> bool {
    matches!(encoded, [_, 2, high, low] if u16::from_be_bytes([*high, *low]) < 1500)
}

fn raw(code: u8, value: Vec<u8>) -> DhcpOption {
    DhcpOption::Unknown(v4::UnknownOption::new(code.into(), value))
}

/// Options being written into a frame, each at most once, up to `end`.
struct Options<'a> {
    frame: &'a mut Vec<u8>,
    end: usize,
    sent: [bool; 256],
}

impl Options<'_> {
    fn room(&self) -> usize {
        self.end.saturating_sub(self.frame.len())
    }

    /// Adds an encoded option if it is new and fits.
    fn add(&mut self, code: u8, encoded: &[u8]) {
        let sent = &mut self.sent[usize::from(code)];
        if *sent || code == code::PAD || code == code::END {
            return;
        }
        if self.frame.len() + encoded.len() <= self.end {
            self.frame.extend_from_slice(encoded);
            *sent = true;
        } else {
            tracing::debug!(
                code,
                "DHCP option left out: the client's size limit is reached"
            );
        }
    }

    fn add_option(&mut self, option: &DhcpOption) {
        if let Ok(encoded) = option.to_vec() {
            self.add(u8::from(v4::OptionCode::from(option)), &encoded);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use dhcproto::Decodable;

    use super::*;
    use crate::core::model::{DhcpOption as ExtraDhcpOption, Subnet};
    use crate::dhcp::{
        frame::HEADERS_LEN,
        leases::LeaseTable,
        message::decode,
        server::{Arrival, Decision, decide},
        testing::*,
        view::{DhcpSettings, DhcpView},
    };

    fn view_with(fixture: &Fixture, settings: &DhcpSettings) -> DhcpView {
        DhcpView::build(&fixture.desired, Fixture::ready_ports(), settings)
    }

    /// The reply's DHCP message bytes, for `request` from A1.
    fn reply_bytes(view: &DhcpView, request: RequestBuilder) -> Vec<u8> {
        let request = decode(&request.bytes()).unwrap();
        let mut leases = LeaseTable::default();
        let arrival = Arrival {
            ifindex: A1_IFINDEX,
            src_mac: CLIENT_MAC,
        };
        let Decision::Reply(reply) = decide(&request, arrival, view, &mut leases, 0) else {
            panic!("no reply");
        };
        let mut bytes = Vec::new();
        frame::start(&mut bytes);
        encode(&reply, &request, view.max_message_size(), &mut bytes);
        bytes.split_off(HEADERS_LEN)
    }

    /// The option codes of a message, in order.
    fn option_codes(message: &[u8]) -> Vec<u8> {
        let mut codes = Vec::new();
        let mut options = &message[240..];
        while let [code, rest @ ..] = options {
            match *code {
                code::PAD => options = rest,
                code::END => break,
                code => {
                    codes.push(code);
                    options = &rest[1 + usize::from(rest[0])..];
                }
            }
        }
        codes
    }

    fn fixture_view() -> DhcpView {
        view_with(&Fixture::new(), &DhcpSettings::default())
    }

    #[test]
    fn an_offer_decodes_with_dhcproto_and_carries_what_was_asked() {
        let view = fixture_view();
        let bytes = reply_bytes(
            &view,
            RequestBuilder::discover(CLIENT_MAC)
                .option(code::PARAMETER_LIST, &[1, 3, 6, 12, 15, 26, 121, 58, 59])
                .option(code::CLIENT_ID, &[1, 0xfa, 0x16, 0x3e, 0, 0x10, 1]),
        );
        let message = v4::Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        let opts = message.opts();
        assert_eq!(message.opcode(), Opcode::BootReply);
        assert_eq!(message.xid(), RequestBuilder::XID);
        assert_eq!(message.yiaddr(), A1_IP);
        assert_eq!(message.chaddr(), CLIENT_MAC.octets());
        assert_eq!(opts.msg_type(), Some(MessageType::Offer));
        let get = |code: v4::OptionCode| opts.get(code).cloned();
        assert_eq!(
            get(v4::OptionCode::ServerIdentifier),
            Some(DhcpOption::ServerIdentifier(GATEWAY))
        );
        assert_eq!(
            get(v4::OptionCode::AddressLeaseTime),
            Some(DhcpOption::AddressLeaseTime(86_400))
        );
        assert_eq!(
            get(v4::OptionCode::Renewal),
            Some(DhcpOption::Renewal(43_200))
        );
        assert_eq!(
            get(v4::OptionCode::Rebinding),
            Some(DhcpOption::Rebinding(75_600))
        );
        assert_eq!(
            get(v4::OptionCode::SubnetMask),
            Some(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            get(v4::OptionCode::Router),
            Some(DhcpOption::Router(vec![GATEWAY]))
        );
        assert_eq!(
            get(v4::OptionCode::DomainNameServer),
            Some(DhcpOption::DomainNameServer(DNS.to_vec()))
        );
        assert_eq!(
            get(v4::OptionCode::Hostname),
            Some(DhcpOption::Hostname("vm-a1".into()))
        );
        assert_eq!(
            get(v4::OptionCode::DomainName),
            Some(DhcpOption::DomainName("openstacklocal".into()))
        );
        assert_eq!(
            get(v4::OptionCode::InterfaceMtu),
            Some(DhcpOption::InterfaceMtu(1450))
        );
        assert_eq!(
            get(v4::OptionCode::ClasslessStaticRoute),
            Some(DhcpOption::ClasslessStaticRoute(vec![(
                "0.0.0.0/0".parse().unwrap(),
                GATEWAY
            )]))
        );
        assert_eq!(
            get(v4::OptionCode::ClientIdentifier),
            Some(DhcpOption::ClientIdentifier(vec![
                1, 0xfa, 0x16, 0x3e, 0, 0x10, 1
            ]))
        );
    }

    #[test]
    fn options_follow_the_parameter_request_list_order_and_only_what_was_asked() {
        let view = fixture_view();
        let bytes = reply_bytes(
            &view,
            // 3 twice, 44 unknown to the subnet: each sent once, or not.
            RequestBuilder::discover(CLIENT_MAC)
                .option(code::PARAMETER_LIST, &[121, 6, 3, 1, 44, 3, 53]),
        );
        assert_eq!(option_codes(&bytes), [53, 54, 51, 121, 6, 3, 1, 26]);
    }

    #[test]
    fn option_249_only_when_asked_for() {
        let view = fixture_view();
        let bytes = reply_bytes(&view, RequestBuilder::discover(CLIENT_MAC));
        let codes = option_codes(&bytes);
        assert!(!codes.contains(&249), "{codes:?}");
        assert_eq!(codes, [53, 54, 51, 1, 3, 6, 12, 15, 26, 28, 58, 59, 121]);
        let bytes = reply_bytes(
            &view,
            RequestBuilder::discover(CLIENT_MAC).option(code::PARAMETER_LIST, &[1, 249]),
        );
        assert_eq!(option_codes(&bytes), [53, 54, 51, 1, 249, 26]);
    }

    #[test]
    fn classless_routes_are_encoded_as_rfc_3442_says() {
        let view = fixture_view();
        let bytes = reply_bytes(
            &view,
            RequestBuilder::discover(CLIENT_MAC).option(code::PARAMETER_LIST, &[121]),
        );
        let options = &bytes[240..];
        let at = options.iter().position(|b| *b == 121).unwrap();
        // Prefix length 0, no destination octets, router 10.0.1.1.
        assert_eq!(&options[at..at + 7], &[121, 5, 0, 10, 0, 1, 1]);
    }

    #[test]
    fn replies_are_padded_to_the_bootp_minimum_after_the_end_option() {
        let view = fixture_view();
        let bytes = reply_bytes(
            &view,
            RequestBuilder::discover(CLIENT_MAC).option(code::PARAMETER_LIST, &[1]),
        );
        assert_eq!(bytes.len(), MIN_MESSAGE);
        let end = 240 + 3 + 6 + 6 + 6 + 4;
        assert_eq!(bytes[end], code::END);
        assert!(bytes[end + 1..].iter().all(|b| *b == code::PAD));
    }

    /// A view whose subnet has options large enough to overflow 576 bytes.
    fn view_with_big_options(port_mtu: u32) -> DhcpView {
        let mut fixture = Fixture::new();
        let mut sn_a = fixture.spec::<Subnet>("sn-a");
        let servers = |first: u8| {
            (first..first + 40)
                .map(|i| format!("10.9.0.{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        sn_a.extra_dhcp_options = vec![
            ExtraDhcpOption {
                name: "ntp-server".into(),
                value: servers(1),
            },
            ExtraDhcpOption {
                name: "nis-server".into(),
                value: servers(100),
            },
        ];
        fixture.insert("sn-a", sn_a);
        view_with(
            &fixture,
            &DhcpSettings {
                port_mtu,
                ..DhcpSettings::default()
            },
        )
    }

    #[test]
    fn the_client_maximum_size_is_never_exceeded_and_what_fits_is_sent() {
        let view = view_with_big_options(1450);
        // Each of 42 and 41 takes 162 bytes: both do not fit in 576.
        let asked = RequestBuilder::discover(CLIENT_MAC)
            .option(code::PARAMETER_LIST, &[42, 41, 1, 3])
            .option(code::RELAY_AGENT_INFO, &[1, 4, 9, 9, 9, 9]);
        let small = reply_bytes(
            &view,
            asked
                .clone()
                .option(code::MAX_MESSAGE_SIZE, &576u16.to_be_bytes()),
        );
        assert!(small.len() <= 576 - 28, "{} bytes", small.len());
        assert_eq!(option_codes(&small), [53, 54, 51, 42, 1, 3, 26, 82]);

        let big = reply_bytes(
            &view,
            asked
                .clone()
                .option(code::MAX_MESSAGE_SIZE, &1500u16.to_be_bytes()),
        );
        assert_eq!(option_codes(&big), [53, 54, 51, 42, 41, 1, 3, 26, 82]);

        // A limit below 576 counts as 576; without option 57, 576 too.
        let tiny = reply_bytes(
            &view,
            asked
                .clone()
                .option(code::MAX_MESSAGE_SIZE, &300u16.to_be_bytes()),
        );
        assert_eq!(option_codes(&tiny), option_codes(&small));
        assert_eq!(
            option_codes(&reply_bytes(&view, asked)),
            option_codes(&small)
        );
    }

    #[test]
    fn the_port_mtu_caps_what_the_client_accepts() {
        let view = view_with_big_options(600);
        let bytes = reply_bytes(
            &view,
            RequestBuilder::discover(CLIENT_MAC)
                .option(code::PARAMETER_LIST, &[42, 41])
                .option(code::MAX_MESSAGE_SIZE, &1500u16.to_be_bytes()),
        );
        assert!(bytes.len() <= 600 - 28, "{} bytes", bytes.len());
        assert_eq!(option_codes(&bytes), [53, 54, 51, 42, 26]);
    }

    #[test]
    fn a_nak_carries_only_type_server_message_and_echoes() {
        let view = fixture_view();
        let bytes = reply_bytes(
            &view,
            RequestBuilder::request(CLIENT_MAC)
                .address_option(code::REQUESTED_ADDRESS, Ipv4Addr::new(10, 0, 1, 200))
                .option(code::PARAMETER_LIST, &[1, 3, 6])
                .option(code::CLIENT_ID, &[0, 1]),
        );
        assert_eq!(option_codes(&bytes), [53, 54, 56, 61]);
        let message = v4::Message::decode(&mut dhcproto::Decoder::new(&bytes)).unwrap();
        assert_eq!(message.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(message.yiaddr(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn an_inform_ack_has_no_lease_times() {
        let view = fixture_view();
        let bytes = reply_bytes(
            &view,
            RequestBuilder::typed(CLIENT_MAC, 8)
                .ciaddr(A1_IP)
                .option(code::PARAMETER_LIST, &[1, 51, 58, 59, 6]),
        );
        assert_eq!(option_codes(&bytes), [53, 54, 1, 6, 26]);
    }

    /// busybox udhcpc's default request list (subnet, router, DNS, hostname,
    /// domain, broadcast, NTP, and 119 and 121 on newer builds) has no 26.
    const UDHCPC_DEFAULT_LIST: &[u8] = &[1, 3, 6, 12, 15, 28, 42];

    fn mtu_in(message: &[u8]) -> Option<u16> {
        let message = v4::Message::decode(&mut dhcproto::Decoder::new(message)).unwrap();
        match message.opts().get(v4::OptionCode::InterfaceMtu)? {
            DhcpOption::InterfaceMtu(mtu) => Some(*mtu),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_mtu_goes_unasked_to_clients_that_do_not_list_it() {
        let view = fixture_view();
        let request =
            RequestBuilder::discover(CLIENT_MAC).option(code::PARAMETER_LIST, UDHCPC_DEFAULT_LIST);
        let bytes = reply_bytes(&view, request.clone());
        assert_eq!(option_codes(&bytes), [53, 54, 51, 1, 3, 6, 12, 15, 28, 26]);
        assert_eq!(mtu_in(&bytes), Some(1450));
        // In the ACK too.
        let ack = reply_bytes(
            &view,
            RequestBuilder::request(CLIENT_MAC)
                .address_option(code::REQUESTED_ADDRESS, A1_IP)
                .option(code::PARAMETER_LIST, UDHCPC_DEFAULT_LIST),
        );
        assert_eq!(mtu_in(&ack), Some(1450));
    }

    #[test]
    fn an_unasked_mtu_keeps_its_room_when_the_size_limit_is_reached() {
        let view = view_with_big_options(1450);
        // 42 and 41 would fill 576 bytes; the MTU still goes, within it.
        let bytes = reply_bytes(
            &view,
            RequestBuilder::discover(CLIENT_MAC).option(code::PARAMETER_LIST, &[42, 41, 1, 3]),
        );
        assert!(bytes.len() <= 576 - 28, "{} bytes", bytes.len());
        assert_eq!(mtu_in(&bytes), Some(1450));
    }

    #[test]
    fn an_ethernet_sized_mtu_is_sent_only_when_asked_for() {
        let view = view_with(
            &Fixture::new(),
            &DhcpSettings {
                port_mtu: 1500,
                ..DhcpSettings::default()
            },
        );
        let request = RequestBuilder::discover(CLIENT_MAC);
        let unasked = reply_bytes(
            &view,
            request
                .clone()
                .option(code::PARAMETER_LIST, UDHCPC_DEFAULT_LIST),
        );
        assert_eq!(mtu_in(&unasked), None);
        let asked = reply_bytes(&view, request.option(code::PARAMETER_LIST, &[26]));
        assert_eq!(mtu_in(&asked), Some(1500));
    }
}
