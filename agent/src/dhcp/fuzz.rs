//! Fuzzing of the packet handler: frames in, no panic, and every reply
//! well-formed (checksums, lengths, size limits, a message dhcproto decodes).
//!
//! proptest rather than cargo-fuzz: it runs inside `cargo test --workspace`
//! on stable Rust, with no nightly toolchain, no `cargo install`, and no
//! extra CI step, in bounded time (seconds). Random bytes alone rarely get
//! past the Ethernet/IPv4/UDP checks, so most cases are structured: valid
//! frames with random header fields and random options, and valid requests
//! with random bytes overwritten and random truncation, from the MACs the
//! view knows, on the devices it knows. `ALCOR_FUZZ_CASES` sets the cases per
//! property (see [`crate::fuzzing`]), e.g. for a long run:
//! `ALCOR_FUZZ_CASES=1000000 cargo test -p alcor-agent --release dhcp::fuzz`.

use std::{net::Ipv4Addr, sync::LazyLock};

use dhcproto::{Decodable, Decoder, v4};
use proptest::prelude::*;

use super::{
    counters::Counters,
    frame::{self, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, SERVER_PORT},
    leases::LeaseTable,
    message::{self, code},
    packet::handle_frame,
    reply::size_limit,
    testing::*,
    view::{DhcpSettings, DhcpView},
};
use crate::core::model::Mac;

static VIEW: LazyLock<DhcpView> = LazyLock::new(|| {
    DhcpView::build(
        &Fixture::new().desired,
        Fixture::ready_ports(),
        &DhcpSettings::default(),
    )
});

const MACS: [Mac; 6] = [
    CLIENT_MAC,
    NESTED_MAC,
    UNADDRESSED_MAC,
    A2_MAC,
    B1_MAC,
    STRANGER_MAC,
];
const IFINDEXES: [u32; 4] = [A1_IFINDEX, A2_IFINDEX, B1_IFINDEX, 99];
/// Options the server reads, and some it does not (53 comes first).
const CODES: [u8; 13] = [0, 1, 12, 50, 51, 52, 54, 55, 57, 61, 82, 121, 255];
const CLIENT_TYPES: [u8; 5] = [1, 3, 4, 7, 8];

fn mac() -> impl Strategy<Value = Mac> {
    prop_oneof![
        4 => proptest::sample::select(&MACS[..]),
        1 => any::<[u8; 6]>().prop_map(Mac),
    ]
}

fn ifindex() -> impl Strategy<Value = u32> {
    prop_oneof![
        3 => Just(A1_IFINDEX),
        1 => proptest::sample::select(&IFINDEXES[..]),
    ]
}

fn address() -> impl Strategy<Value = Ipv4Addr> {
    prop_oneof![
        Just(Ipv4Addr::UNSPECIFIED),
        Just(A1_IP),
        Just(GATEWAY),
        any::<[u8; 4]>().prop_map(Ipv4Addr::from),
    ]
}

fn option() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let code = prop_oneof![proptest::sample::select(&CODES[..]), any::<u8>()];
    let value = prop_oneof![
        // Message types, mostly the client's.
        (1u8..=9).prop_map(|t| vec![t]),
        any::<[u8; 4]>().prop_map(|v| v.to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    (code, value)
}

/// A request built field by field: mostly valid, sometimes not.
fn structured_request() -> impl Strategy<Value = (RequestBuilder, Mac)> {
    (
        mac(),
        prop_oneof![
            9 => proptest::sample::select(&CLIENT_TYPES[..]),
            1 => any::<u8>(),
        ],
        address(),
        prop_oneof![4 => Just(Ipv4Addr::UNSPECIFIED), 1 => address()],
        any::<bool>(),
        proptest::collection::vec(option(), 0..12),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => proptest::collection::vec(any::<u8>(), 0..8),
        ],
        prop_oneof![4 => Just(None), 1 => any::<(usize, u8)>().prop_map(Some)],
        prop_oneof![9 => Just(true), 1 => Just(false)],
    )
        .prop_map(
            |(
                chaddr,
                message_type,
                ciaddr,
                giaddr,
                broadcast,
                options,
                tail,
                poke,
                same_source,
            )| {
                let mut builder = RequestBuilder::typed(chaddr, message_type)
                    .ciaddr(ciaddr)
                    .giaddr(giaddr);
                if broadcast {
                    builder = builder.broadcast();
                }
                for (code, value) in options {
                    builder = builder.option(code, &value);
                }
                builder = builder.raw(&tail);
                if let Some((at, value)) = poke {
                    builder = builder.poke(at % 240, value);
                }
                let source = if same_source { chaddr } else { STRANGER_MAC };
                (builder, source)
            },
        )
}

/// A valid client message of some kind, and its client's MAC.
fn valid_request() -> impl Strategy<Value = (RequestBuilder, Mac)> {
    (mac(), 0usize..5).prop_map(|(chaddr, kind)| {
        (
            match kind {
                0 => RequestBuilder::discover(chaddr)
                    .option(code::PARAMETER_LIST, &[1, 3, 6, 12, 121, 249]),
                1 => RequestBuilder::request(chaddr)
                    .address_option(code::SERVER_ID, GATEWAY)
                    .address_option(code::REQUESTED_ADDRESS, A1_IP)
                    .option(code::MAX_MESSAGE_SIZE, &576u16.to_be_bytes()),
                2 => RequestBuilder::request(chaddr).ciaddr(A1_IP),
                3 => RequestBuilder::typed(chaddr, 8).ciaddr(A1_IP),
                _ => RequestBuilder::typed(chaddr, 7)
                    .ciaddr(A1_IP)
                    .address_option(code::SERVER_ID, GATEWAY),
            },
            chaddr,
        )
    })
}

/// Handles `received` and checks the reply, if any.
fn check_handler(received: &[u8], ifindex: u32) -> Result<(), TestCaseError> {
    let mut leases = LeaseTable::default();
    let counters = Counters::default();
    let mut out = Vec::new();
    let Some(kind) = handle_frame(
        received,
        ifindex,
        &VIEW,
        &mut leases,
        &counters,
        0,
        &mut out,
    ) else {
        return Ok(());
    };
    // A reply implies the request decoded: its limits apply.
    let request = frame::parse(received)
        .ok()
        .and_then(|datagram| message::decode(datagram.payload).ok())
        .ok_or_else(|| TestCaseError::fail("a reply to an undecodable request"))?;

    let ip = &out[ETHERNET_HEADER_LEN..];
    prop_assert_eq!(
        crate::packet::checksum(&[&ip[..IPV4_HEADER_LEN]]),
        0,
        "IPv4 checksum"
    );
    prop_assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    let udp = &ip[IPV4_HEADER_LEN..];
    prop_assert_eq!(usize::from(u16::from_be_bytes([udp[4], udp[5]])), udp.len());
    prop_assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), SERVER_PORT);
    let mut pseudo = ip[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp[4..6]);
    prop_assert_eq!(crate::packet::checksum(&[&pseudo, udp]), 0, "UDP checksum");

    let message = &udp[8..];
    prop_assert!(message.len() >= 300, "{} bytes", message.len());
    prop_assert!(message.len() <= size_limit(&request, VIEW.max_message_size()));
    let decoded = v4::Message::decode(&mut Decoder::new(message)).map_err(|error| {
        TestCaseError::fail(format!("dhcproto cannot decode the reply: {error}"))
    })?;
    prop_assert_eq!(decoded.opcode(), v4::Opcode::BootReply);
    prop_assert_eq!(decoded.xid(), request.xid);
    let expected = match kind {
        super::counters::ServerMessage::Offer => v4::MessageType::Offer,
        super::counters::ServerMessage::Ack => v4::MessageType::Ack,
        super::counters::ServerMessage::Nak => v4::MessageType::Nak,
    };
    prop_assert_eq!(decoded.opts().msg_type(), Some(expected));
    Ok(())
}

proptest! {
    #![proptest_config(crate::fuzzing::config())]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1600),
        ifindex in ifindex(),
    ) {
        check_handler(&bytes, ifindex)?;
    }

    #[test]
    fn structured_requests_get_well_formed_replies_or_none(
        (request, source) in structured_request(),
        ifindex in ifindex(),
        broadcast in any::<bool>(),
    ) {
        let dst = if broadcast { Ipv4Addr::BROADCAST } else { GATEWAY };
        check_handler(&request.frame(source, dst), ifindex)?;
    }

    #[test]
    fn mutated_valid_requests_get_well_formed_replies_or_none(
        (request, client) in valid_request(),
        pokes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in prop_oneof![3 => Just(None), 1 => any::<usize>().prop_map(Some)],
    ) {
        let mut frame = request.frame(client, Ipv4Addr::BROADCAST);
        // The headers stay valid, so that the DHCP message is reached.
        for (at, value) in pokes {
            let at = frame::HEADERS_LEN + at % (frame.len() - frame::HEADERS_LEN);
            frame[at] = value;
        }
        if let Some(cut) = cut {
            frame.truncate(cut % (frame.len() + 1));
        }
        check_handler(&frame, A1_IFINDEX)?;
    }
}
