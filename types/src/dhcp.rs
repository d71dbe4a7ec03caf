//! The names of what the agent's DHCP responder counts: the messages it
//! receives and sends by type, and why it drops a frame. The agent counts by
//! them and `agentctl` lists them; `as_str` is the label both use (in
//! Prometheus and in the control API's counter maps), `ALL` the order they
//! are listed in, which is also the discriminant order the agent's counter
//! arrays are indexed by.

/// The DHCP message types a server receives (RFC 2131 §3, RFC 2132 §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    Discover,
    Request,
    Decline,
    Release,
    Inform,
    /// A server's message type (OFFER, ACK, NAK) or an unknown one.
    Other,
}

impl ClientMessage {
    pub const ALL: [ClientMessage; 6] = [
        ClientMessage::Discover,
        ClientMessage::Request,
        ClientMessage::Decline,
        ClientMessage::Release,
        ClientMessage::Inform,
        ClientMessage::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientMessage::Discover => "discover",
            ClientMessage::Request => "request",
            ClientMessage::Decline => "decline",
            ClientMessage::Release => "release",
            ClientMessage::Inform => "inform",
            ClientMessage::Other => "other",
        }
    }
}

/// The DHCP message types this server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    Offer,
    Ack,
    Nak,
}

impl ServerMessage {
    pub const ALL: [ServerMessage; 3] =
        [ServerMessage::Offer, ServerMessage::Ack, ServerMessage::Nak];

    pub fn as_str(self) -> &'static str {
        match self {
            ServerMessage::Offer => "offer",
            ServerMessage::Ack => "ack",
            ServerMessage::Nak => "nak",
        }
    }
}

/// Why a received frame got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    // Malformed input.
    /// Shorter than its Ethernet, IPv4, UDP or BOOTP headers say.
    Truncated,
    /// Not an IPv4/UDP datagram to port 67 (the socket filter lets none in).
    NotDhcp,
    /// Bad IPv4 version, header length or checksum, or a fragment.
    BadIpHeader,
    /// `op` is not BOOTREQUEST.
    BadOpcode,
    /// `htype`/`hlen` are not Ethernet's (1/6).
    BadHardwareAddress,
    /// No DHCP magic cookie: a plain BOOTP client.
    NoMagicCookie,
    /// An option's length runs past the end of its field.
    OptionPastEnd,
    /// A fixed-size option (53, 50, 54, 57, 52) with the wrong size.
    BadOptionLength,
    /// Option 52 with an invalid value, or inside `file`/`sname` (a loop).
    BadOverload,
    MissingMessageType,
    /// A server's message type, or an unknown one.
    UnexpectedMessageType,
    /// A REQUEST with neither a server id, a requested address nor ciaddr.
    RequestWithoutAddress,
    // Policy.
    /// The arrival device is not a ready port of this host.
    UnknownPort,
    /// The client MAC belongs to no port on this host.
    UnknownMac,
    /// The client MAC belongs to a port of another VPC on this host.
    WrongVpc,
    /// The client MAC belongs to another port of the same VPC.
    WrongPort,
    /// chaddr is not the frame's source MAC (and no relay is involved).
    SpoofedChaddr,
    /// The MAC is the port's, but the goal state gives it no address (an
    /// address-pair MAC without DHCP entry, a port without fixed IP, or a
    /// subnet with DHCP disabled or without gateway).
    NoAddress,
    /// The message names another server (the client chose another offer).
    OtherServer,
    /// The address is on hold after the client declined it.
    AddressDeclined,
    /// A DECLINE or RELEASE for an address the client does not hold here.
    UnknownLease,
}

impl DropReason {
    pub const ALL: [DropReason; 21] = [
        DropReason::Truncated,
        DropReason::NotDhcp,
        DropReason::BadIpHeader,
        DropReason::BadOpcode,
        DropReason::BadHardwareAddress,
        DropReason::NoMagicCookie,
        DropReason::OptionPastEnd,
        DropReason::BadOptionLength,
        DropReason::BadOverload,
        DropReason::MissingMessageType,
        DropReason::UnexpectedMessageType,
        DropReason::RequestWithoutAddress,
        DropReason::UnknownPort,
        DropReason::UnknownMac,
        DropReason::WrongVpc,
        DropReason::WrongPort,
        DropReason::SpoofedChaddr,
        DropReason::NoAddress,
        DropReason::OtherServer,
        DropReason::AddressDeclined,
        DropReason::UnknownLease,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::NotDhcp => "not_dhcp",
            DropReason::BadIpHeader => "bad_ip_header",
            DropReason::BadOpcode => "bad_opcode",
            DropReason::BadHardwareAddress => "bad_hardware_address",
            DropReason::NoMagicCookie => "no_magic_cookie",
            DropReason::OptionPastEnd => "option_past_end",
            DropReason::BadOptionLength => "bad_option_length",
            DropReason::BadOverload => "bad_overload",
            DropReason::MissingMessageType => "missing_message_type",
            DropReason::UnexpectedMessageType => "unexpected_message_type",
            DropReason::RequestWithoutAddress => "request_without_address",
            DropReason::UnknownPort => "unknown_port",
            DropReason::UnknownMac => "unknown_mac",
            DropReason::WrongVpc => "wrong_vpc",
            DropReason::WrongPort => "wrong_port",
            DropReason::SpoofedChaddr => "spoofed_chaddr",
            DropReason::NoAddress => "no_address",
            DropReason::OtherServer => "other_server",
            DropReason::AddressDeclined => "address_declined",
            DropReason::UnknownLease => "unknown_lease",
        }
    }

    /// Whether the input itself was broken (as opposed to well-formed but
    /// not ours to answer).
    pub fn is_malformed(self) -> bool {
        matches!(
            self,
            DropReason::Truncated
                | DropReason::NotDhcp
                | DropReason::BadIpHeader
                | DropReason::BadOpcode
                | DropReason::BadHardwareAddress
                | DropReason::NoMagicCookie
                | DropReason::OptionPastEnd
                | DropReason::BadOptionLength
                | DropReason::BadOverload
                | DropReason::MissingMessageType
                | DropReason::UnexpectedMessageType
                | DropReason::RequestWithoutAddress
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enum_lists_its_variants_in_discriminant_order() {
        // The agent's counter arrays are indexed by discriminant.
        for (index, message) in ClientMessage::ALL.iter().enumerate() {
            assert_eq!(*message as usize, index);
        }
        for (index, message) in ServerMessage::ALL.iter().enumerate() {
            assert_eq!(*message as usize, index);
        }
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
        }
    }
}
