//! Decoding of client messages (RFC 2131 §2, RFC 2132), by hand.
//!
//! dhcproto 0.15 encodes our replies, but its decoder does not fit the
//! packet path: it stops silently at the first option it cannot parse (so an
//! option running past the end cannot be told from a well-formed message),
//! it does not follow option overload (52), and a few of its option parsers
//! panic in debug builds on input lengths (`debug_assert!`, `len - 1`).
//! This decoder reads only what the server needs, checks every length, and
//! cannot loop: `file` and `sname` are each read at most once, and an
//! overload option inside them is refused.

use std::net::Ipv4Addr;

use super::counters::{ClientMessage, DropReason};
use crate::core::model::Mac;

/// Bytes of the fixed BOOTP header, up to and excluding the magic cookie.
const FIXED_LEN: usize = 236;
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const SNAME: std::ops::Range<usize> = 44..108;
const FILE: std::ops::Range<usize> = 108..236;
const OP_BOOTREQUEST: u8 = 1;
const HTYPE_ETHERNET: u8 = 1;
const BROADCAST_FLAG: u16 = 0x8000;

pub mod code {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS_SERVERS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN_NAME: u8 = 15;
    pub const INTERFACE_MTU: u8 = 26;
    pub const BROADCAST_ADDRESS: u8 = 28;
    pub const REQUESTED_ADDRESS: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const RENEWAL_TIME: u8 = 58;
    pub const REBINDING_TIME: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const CLASSLESS_ROUTES: u8 = 121;
    /// Microsoft's pre-standard copy of 121, for old Windows clients.
    pub const MS_CLASSLESS_ROUTES: u8 = 249;
    pub const END: u8 = 255;
}

/// A client message, decoded and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub xid: u32,
    pub broadcast_flag: bool,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: Mac,
    /// Option 50.
    pub requested_address: Option<Ipv4Addr>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 55, in the client's order of preference.
    pub parameter_list: Option<Vec<u8>>,
    /// Option 57.
    pub max_message_size: Option<u16>,
    /// Option 61, echoed in replies (RFC 6842).
    pub client_id: Option<Vec<u8>>,
    /// Option 82, echoed in replies (RFC 3046).
    pub relay_agent_info: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Discover,
    Request,
    Decline,
    Release,
    Inform,
}

impl RequestKind {
    pub fn counter(self) -> ClientMessage {
        match self {
            RequestKind::Discover => ClientMessage::Discover,
            RequestKind::Request => ClientMessage::Request,
            RequestKind::Decline => ClientMessage::Decline,
            RequestKind::Release => ClientMessage::Release,
            RequestKind::Inform => ClientMessage::Inform,
        }
    }
}

/// Why a message was refused, and whether it still had a message type (so
/// that the received counters can count it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DropReason,
    pub received_as: Option<ClientMessage>,
}

impl From<DropReason> for Refusal {
    fn from(reason: DropReason) -> Self {
        Refusal {
            reason,
            received_as: None,
        }
    }
}

/// The options the server reads, each the concatenation of all its
/// instances in the message (RFC 3396).
#[derive(Default)]
struct Collected {
    message_type: Vec<u8>,
    overload: Vec<u8>,
    requested_address: Vec<u8>,
    server_id: Vec<u8>,
    parameter_list: Option<Vec<u8>>,
    max_message_size: Vec<u8>,
    client_id: Option<Vec<u8>>,
    relay_agent_info: Option<Vec<u8>>,
}

impl Collected {
    fn slot(&mut self, code: u8) -> Option<&mut Vec<u8>> {
        Some(match code {
            code::MESSAGE_TYPE => &mut self.message_type,
            code::OVERLOAD => &mut self.overload,
            code::REQUESTED_ADDRESS => &mut self.requested_address,
            code::SERVER_ID => &mut self.server_id,
            code::PARAMETER_LIST => self.parameter_list.get_or_insert_default(),
            code::MAX_MESSAGE_SIZE => &mut self.max_message_size,
            code::CLIENT_ID => self.client_id.get_or_insert_default(),
            code::RELAY_AGENT_INFO => self.relay_agent_info.get_or_insert_default(),
            _ => return None,
        })
    }
}

/// Which area of the message is being read: only the options field may
/// overload the others.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Area {
    Options,
    Overloaded,
}

/// Decodes a BOOTP/DHCP message sent to the server port.
pub fn decode(message: &[u8]) -> Result<Request, Refusal> {
    let fixed = message.get(..FIXED_LEN).ok_or(DropReason::Truncated)?;
    if fixed[0] != OP_BOOTREQUEST {
        return Err(DropReason::BadOpcode.into());
    }
    if fixed[1] != HTYPE_ETHERNET || fixed[2] != 6 {
        return Err(DropReason::BadHardwareAddress.into());
    }
    let cookie = message
        .get(FIXED_LEN..FIXED_LEN + 4)
        .ok_or(DropReason::NoMagicCookie)?;
    if cookie != MAGIC_COOKIE {
        return Err(DropReason::NoMagicCookie.into());
    }

    let mut collected = Collected::default();
    scan(&message[FIXED_LEN + 4..], Area::Options, &mut collected)?;
    // RFC 3396: options, then `file`, then `sname`.
    match collected.overload.as_slice() {
        [] => {}
        [overload @ 1..=3] => {
            let overload = *overload;
            if overload & 1 != 0 {
                scan(&fixed[FILE], Area::Overloaded, &mut collected)?;
            }
            if overload & 2 != 0 {
                scan(&fixed[SNAME], Area::Overloaded, &mut collected)?;
            }
        }
        _ => return Err(DropReason::BadOverload.into()),
    }

    let kind = match collected.message_type.as_slice() {
        [] => return Err(DropReason::MissingMessageType.into()),
        [1] => RequestKind::Discover,
        [3] => RequestKind::Request,
        [4] => RequestKind::Decline,
        [7] => RequestKind::Release,
        [8] => RequestKind::Inform,
        [_] => {
            return Err(Refusal {
                reason: DropReason::UnexpectedMessageType,
                received_as: Some(ClientMessage::Other),
            });
        }
        _ => return Err(DropReason::BadOptionLength.into()),
    };
    let refuse = |reason| Refusal {
        reason,
        received_as: Some(kind.counter()),
    };
    let address = |bytes: &[u8]| match bytes {
        [] => Ok(None),
        [a, b, c, d] => Ok(Some(Ipv4Addr::new(*a, *b, *c, *d))),
        _ => Err(refuse(DropReason::BadOptionLength)),
    };
    let max_message_size = match collected.max_message_size.as_slice() {
        [] => None,
        [high, low] => Some(u16::from_be_bytes([*high, *low])),
        _ => return Err(refuse(DropReason::BadOptionLength)),
    };
    Ok(Request {
        kind,
        xid: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
        broadcast_flag: u16::from_be_bytes([fixed[10], fixed[11]]) & BROADCAST_FLAG != 0,
        ciaddr: Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]),
        giaddr: Ipv4Addr::new(fixed[24], fixed[25], fixed[26], fixed[27]),
        chaddr: Mac([
            fixed[28], fixed[29], fixed[30], fixed[31], fixed[32], fixed[33],
        ]),
        requested_address: address(&collected.requested_address)?,
        server_id: address(&collected.server_id)?,
        parameter_list: collected.parameter_list,
        max_message_size,
        client_id: collected.client_id,
        relay_agent_info: collected.relay_agent_info,
    })
}

/// Reads one area's options up to its end option (or its last byte).
fn scan(mut area: &[u8], which: Area, collected: &mut Collected) -> Result<(), Refusal> {
    while let Some((&code, rest)) = area.split_first() {
        match code {
            code::PAD => area = rest,
            code::END => return Ok(()),
            _ => {
                let (&len, rest) = rest.split_first().ok_or(DropReason::OptionPastEnd)?;
                let len = usize::from(len);
                let value = rest.get(..len).ok_or(DropReason::OptionPastEnd)?;
                if code == code::OVERLOAD && which == Area::Overloaded {
                    return Err(DropReason::BadOverload.into());
                }
                if let Some(slot) = collected.slot(code) {
                    slot.extend_from_slice(value);
                }
                area = &rest[len..];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::testing::{CLIENT_MAC, RequestBuilder};

    #[test]
    fn a_discover_decodes_with_every_option_the_server_reads() {
        let bytes = RequestBuilder::discover(CLIENT_MAC)
            .broadcast()
            .option(code::PARAMETER_LIST, &[1, 3, 6, 121])
            .option(code::MAX_MESSAGE_SIZE, &1000u16.to_be_bytes())
            .option(code::CLIENT_ID, &[1, 2, 0, 0, 0, 0, 1])
            .option(code::REQUESTED_ADDRESS, &[10, 0, 1, 10])
            .option(code::RELAY_AGENT_INFO, &[1, 2, 3, 4])
            .bytes();
        let request = decode(&bytes).unwrap();
        assert_eq!(request.kind, RequestKind::Discover);
        assert!(request.broadcast_flag);
        assert_eq!(request.chaddr, CLIENT_MAC);
        assert_eq!(request.parameter_list.as_deref(), Some(&[1, 3, 6, 121][..]));
        assert_eq!(request.max_message_size, Some(1000));
        assert_eq!(
            request.client_id.as_deref(),
            Some(&[1, 2, 0, 0, 0, 0, 1][..])
        );
        assert_eq!(request.requested_address, Some(Ipv4Addr::new(10, 0, 1, 10)));
        assert_eq!(request.relay_agent_info.as_deref(), Some(&[1, 2, 3, 4][..]));
    }

    #[test]
    fn split_options_are_concatenated() {
        // RFC 3396: a long option may come in pieces.
        let bytes = RequestBuilder::discover(CLIENT_MAC)
            .option(code::PARAMETER_LIST, &[1, 3])
            .option(code::PAD, &[])
            .option(code::PARAMETER_LIST, &[6])
            .bytes();
        let request = decode(&bytes).unwrap();
        assert_eq!(request.parameter_list.as_deref(), Some(&[1, 3, 6][..]));
    }

    #[test]
    fn options_in_file_and_sname_are_read_when_overloaded() {
        let mut bytes = RequestBuilder::new(CLIENT_MAC)
            .option(code::OVERLOAD, &[3])
            .bytes();
        // `file` carries the message type, `sname` the server id.
        bytes[FILE.start..FILE.start + 4].copy_from_slice(&[53, 1, 3, 255]);
        bytes[SNAME.start..SNAME.start + 7].copy_from_slice(&[54, 4, 10, 0, 1, 1, 255]);
        let request = decode(&bytes).unwrap();
        assert_eq!(request.kind, RequestKind::Request);
        assert_eq!(request.server_id, Some(Ipv4Addr::new(10, 0, 1, 1)));
    }

    #[test]
    fn an_overload_inside_an_overloaded_field_is_refused_not_followed() {
        let mut bytes = RequestBuilder::discover(CLIENT_MAC)
            .option(code::OVERLOAD, &[1])
            .bytes();
        bytes[FILE.start..FILE.start + 3].copy_from_slice(&[52, 1, 1]);
        assert_eq!(decode(&bytes).unwrap_err().reason, DropReason::BadOverload);

        let bad_value = RequestBuilder::discover(CLIENT_MAC)
            .option(code::OVERLOAD, &[4])
            .bytes();
        assert_eq!(
            decode(&bad_value).unwrap_err().reason,
            DropReason::BadOverload
        );
    }

    #[test]
    fn broken_messages_are_refused_with_their_reason() {
        let good = RequestBuilder::discover(CLIENT_MAC).bytes();
        let with = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            decode(&bytes).unwrap_err().reason
        };
        assert_eq!(with(0, 2), DropReason::BadOpcode);
        assert_eq!(with(1, 6), DropReason::BadHardwareAddress);
        assert_eq!(with(2, 16), DropReason::BadHardwareAddress);
        assert_eq!(with(FIXED_LEN, 0), DropReason::NoMagicCookie);
        assert_eq!(
            decode(&good[..FIXED_LEN - 1]).unwrap_err().reason,
            DropReason::Truncated
        );
        assert_eq!(
            decode(&good[..FIXED_LEN]).unwrap_err().reason,
            DropReason::NoMagicCookie
        );

        let past_end = RequestBuilder::discover(CLIENT_MAC)
            .raw(&[code::HOSTNAME, 10, b'a'])
            .bytes();
        assert_eq!(
            decode(&past_end).unwrap_err().reason,
            DropReason::OptionPastEnd
        );
        let no_length = RequestBuilder::discover(CLIENT_MAC).raw(&[12]).bytes();
        assert_eq!(
            decode(&no_length).unwrap_err().reason,
            DropReason::OptionPastEnd
        );

        let no_type = RequestBuilder::new(CLIENT_MAC).bytes();
        assert_eq!(
            decode(&no_type).unwrap_err().reason,
            DropReason::MissingMessageType
        );
        let offer = RequestBuilder::new(CLIENT_MAC)
            .option(code::MESSAGE_TYPE, &[2])
            .bytes();
        assert_eq!(
            decode(&offer).unwrap_err(),
            Refusal {
                reason: DropReason::UnexpectedMessageType,
                received_as: Some(ClientMessage::Other),
            }
        );
        let long_server_id = RequestBuilder::request(CLIENT_MAC)
            .option(code::SERVER_ID, &[10, 0, 1, 1, 0])
            .bytes();
        assert_eq!(
            decode(&long_server_id).unwrap_err(),
            Refusal {
                reason: DropReason::BadOptionLength,
                received_as: Some(ClientMessage::Request),
            }
        );
    }

    #[test]
    fn a_missing_end_option_ends_at_the_last_byte() {
        // Some clients stop without an end option; nothing runs past the end.
        let mut bytes = RequestBuilder::discover(CLIENT_MAC).bytes();
        assert_eq!(bytes.pop(), Some(code::END));
        assert_eq!(decode(&bytes).unwrap().kind, RequestKind::Discover);
    }
}
