//! DHCP options from goal state, encoded once when a view is built (by
//! dhcproto), so that a reply only copies bytes.
//!
//! # A subnet's `extra_dhcp_options`
//!
//! Names as Neutron passes them to dnsmasq (an `option:` prefix is
//! accepted), or a code as `42` or `option-42`:
//!
//! | name | code | value |
//! |---|---|---|
//! | `netmask` | 1 | address |
//! | `time-offset` | 2 | signed seconds |
//! | `router` | 3 | addresses |
//! | `dns-server` | 6 | addresses |
//! | `log-server` | 7 | addresses |
//! | `lpr-server` | 9 | addresses |
//! | `boot-file-size` | 13 | 16-bit number |
//! | `domain-name` | 15 | text |
//! | `swap-server` | 16 | address |
//! | `root-path` | 17 | text |
//! | `extension-path` | 18 | text |
//! | `ip-forward-enable` | 19 | flag |
//! | `non-local-source-routing` | 20 | flag |
//! | `max-datagram-reassembly` | 22 | 16-bit number |
//! | `default-ttl` | 23 | 8-bit number |
//! | `mtu` | 26 | 16-bit number |
//! | `all-subnets-local` | 27 | flag |
//! | `broadcast` | 28 | address |
//! | `router-discovery` | 31 | flag |
//! | `router-solicitation` | 32 | address |
//! | `static-route` | 33 | destination,router pairs |
//! | `arp-timeout` | 35 | 32-bit number |
//! | `tcp-ttl` | 37 | 8-bit number |
//! | `tcp-keepalive` | 38 | 32-bit number |
//! | `nis-domain` | 40 | text |
//! | `nis-server` | 41 | addresses |
//! | `ntp-server` | 42 | addresses |
//! | `vendor-encap` | 43 | hex bytes |
//! | `netbios-ns` | 44 | addresses |
//! | `netbios-dd` | 45 | addresses |
//! | `netbios-nodetype` | 46 | 8-bit number |
//! | `netbios-scope` | 47 | text |
//! | `x-windows-fs` | 48 | addresses |
//! | `x-windows-dm` | 49 | addresses |
//! | `nis+-domain` | 64 | text |
//! | `nis+-server` | 65 | addresses |
//! | `tftp-server` | 66 | text |
//! | `bootfile-name` | 67 | text |
//! | `mobile-ip-home` | 68 | addresses |
//! | `smtp-server` | 69 | addresses |
//! | `pop3-server` | 70 | addresses |
//! | `nntp-server` | 71 | addresses |
//! | `irc-server` | 74 | addresses |
//! | `posix-timezone` | 100 | text |
//! | `tzdb-timezone` | 101 | text |
//! | `domain-search` | 119 | domain names |
//! | `classless-static-route` | 121 | destination/len,router pairs (also sent as 249 when asked) |
//! | `tftp-server-address` | 150 | address |
//! | `server-ip-address` | — | address, sent as `siaddr` (PXE's next server) |
//!
//! Lists are separated by commas. Flags are `0`/`1`/`true`/`false`. A code
//! not in the table takes addresses, hex bytes (`0x0a1b` or `0a:1b`) or
//! text, whichever its value reads as. An option overrides the one the
//! responder would have generated (a `router` also moves the default route
//! of option 121); an empty value suppresses it. The options the protocol
//! owns (12, which comes from the DHCP entry, 50-59 but 56, 61, 82, 249,
//! pad and end) are refused, and so are unknown names: each with a warning
//! when the view is built, never at packet time.

use std::net::Ipv4Addr;

use dhcproto::{
    Encodable,
    v4::{DhcpOption, OptionCode, UnknownOption},
};
use ipnet::Ipv4Net;

use super::message::code;

/// Every option of a subnet, encoded (code, length and value, split in
/// pieces of 255 bytes as RFC 3396 says), indexed by code.
#[derive(Clone, Debug)]
pub struct OptionTable {
    encoded: Vec<Option<Box<[u8]>>>,
}

impl Default for OptionTable {
    fn default() -> Self {
        OptionTable {
            encoded: vec![None; 256],
        }
    }
}

impl OptionTable {
    /// The encoded option, ready to be copied into a message.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.encoded[usize::from(code)].as_deref()
    }

    /// The codes present, in increasing order.
    pub fn codes(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=u8::MAX).filter(|code| self.get(*code).is_some())
    }

    pub fn set(&mut self, option: &DhcpOption) {
        let code = u8::from(OptionCode::from(option));
        // Encoding into a Vec cannot fail for the options built here: their
        // values are bounded and pieces are split by the encoder.
        if let Ok(bytes) = option.to_vec() {
            self.encoded[usize::from(code)] = Some(bytes.into_boxed_slice());
        }
    }

    pub fn set_raw(&mut self, code: u8, value: Vec<u8>) {
        self.set(&DhcpOption::Unknown(UnknownOption::new(code.into(), value)));
    }

    pub fn remove(&mut self, code: u8) {
        self.encoded[usize::from(code)] = None;
    }

    /// The value of an option, its pieces joined.
    pub fn value(&self, code: u8) -> Option<Vec<u8>> {
        let mut encoded = self.get(code)?;
        let mut value = Vec::new();
        while let [_, len, rest @ ..] = encoded {
            let (piece, rest) = rest.split_at(usize::from(*len).min(rest.len()));
            value.extend_from_slice(piece);
            encoded = rest;
        }
        Some(value)
    }
}

/// An extra option as the responder will use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraOption {
    /// Send this option with this value (code, length and pieces are added
    /// when encoding).
    Set { code: u8, value: Vec<u8> },
    /// Do not send this option.
    Suppress { code: u8 },
    /// The `siaddr` header field (PXE's next server).
    NextServer(Ipv4Addr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Address,
    Addresses,
    U8,
    U16,
    U32,
    I32,
    Flag,
    Text,
    Domains,
    ClasslessRoutes,
    StaticRoutes,
    Hex,
}

const NAMED: &[(&str, u8, Kind)] = &[
    ("netmask", 1, Kind::Address),
    ("time-offset", 2, Kind::I32),
    ("router", 3, Kind::Addresses),
    ("dns-server", 6, Kind::Addresses),
    ("log-server", 7, Kind::Addresses),
    ("lpr-server", 9, Kind::Addresses),
    ("boot-file-size", 13, Kind::U16),
    ("domain-name", 15, Kind::Text),
    ("swap-server", 16, Kind::Address),
    ("root-path", 17, Kind::Text),
    ("extension-path", 18, Kind::Text),
    ("ip-forward-enable", 19, Kind::Flag),
    ("non-local-source-routing", 20, Kind::Flag),
    ("max-datagram-reassembly", 22, Kind::U16),
    ("default-ttl", 23, Kind::U8),
    ("mtu", 26, Kind::U16),
    ("all-subnets-local", 27, Kind::Flag),
    ("broadcast", 28, Kind::Address),
    ("router-discovery", 31, Kind::Flag),
    ("router-solicitation", 32, Kind::Address),
    ("static-route", 33, Kind::StaticRoutes),
    ("arp-timeout", 35, Kind::U32),
    ("tcp-ttl", 37, Kind::U8),
    ("tcp-keepalive", 38, Kind::U32),
    ("nis-domain", 40, Kind::Text),
    ("nis-server", 41, Kind::Addresses),
    ("ntp-server", 42, Kind::Addresses),
    ("vendor-encap", 43, Kind::Hex),
    ("netbios-ns", 44, Kind::Addresses),
    ("netbios-dd", 45, Kind::Addresses),
    ("netbios-nodetype", 46, Kind::U8),
    ("netbios-scope", 47, Kind::Text),
    ("x-windows-fs", 48, Kind::Addresses),
    ("x-windows-dm", 49, Kind::Addresses),
    ("nis+-domain", 64, Kind::Text),
    ("nis+-server", 65, Kind::Addresses),
    ("tftp-server", 66, Kind::Text),
    ("bootfile-name", 67, Kind::Text),
    ("mobile-ip-home", 68, Kind::Addresses),
    ("smtp-server", 69, Kind::Addresses),
    ("pop3-server", 70, Kind::Addresses),
    ("nntp-server", 71, Kind::Addresses),
    ("irc-server", 74, Kind::Addresses),
    ("posix-timezone", 100, Kind::Text),
    ("tzdb-timezone", 101, Kind::Text),
    ("domain-search", 119, Kind::Domains),
    ("classless-static-route", 121, Kind::ClasslessRoutes),
    ("tftp-server-address", 150, Kind::Address),
];

const NEXT_SERVER: &str = "server-ip-address";

/// Whether the protocol, not the operator, decides this option.
fn is_protocol_owned(code: u8) -> bool {
    matches!(
        code,
        code::PAD | code::HOSTNAME | code::REQUESTED_ADDRESS
            ..=code::REBINDING_TIME
                | code::CLIENT_ID
                | code::RELAY_AGENT_INFO
                | code::MS_CLASSLESS_ROUTES
                | code::END
    ) && code != code::MESSAGE
}

/// Parses one of a subnet's extra options; the error says why it is
/// ignored.
pub fn parse_extra(name: &str, value: &str) -> Result<ExtraOption, String> {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("option:").unwrap_or(&name);
    let value = value.trim();
    if name == NEXT_SERVER {
        return parse_address(value).map(ExtraOption::NextServer);
    }
    let numeric = name.strip_prefix("option-").unwrap_or(name);
    let (code, kind) = if let Ok(code) = numeric.parse::<u8>() {
        let named = NAMED.iter().find(|(_, known, _)| *known == code);
        (code, named.map(|(_, _, kind)| *kind))
    } else {
        let (_, code, kind) = NAMED
            .iter()
            .find(|(known, _, _)| *known == name)
            .ok_or_else(|| format!("unknown DHCP option name {name:?}"))?;
        (*code, Some(*kind))
    };
    if is_protocol_owned(code) {
        return Err(format!(
            "DHCP option {code} is set by the responder, not by extra options"
        ));
    }
    if value.is_empty() {
        return Ok(ExtraOption::Suppress { code });
    }
    let kind = kind.unwrap_or_else(|| infer_kind(value));
    let value = encode_value(kind, value)
        .map_err(|reason| format!("DHCP option {name} ({code}): {reason}"))?;
    Ok(ExtraOption::Set { code, value })
}

fn infer_kind(value: &str) -> Kind {
    if list(value).all(|item| item.parse::<Ipv4Addr>().is_ok()) {
        Kind::Addresses
    } else if value.starts_with("0x") || value.contains(':') && parse_hex(value).is_ok() {
        Kind::Hex
    } else {
        Kind::Text
    }
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

fn parse_address(text: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IPv4 address"))
}

fn parse_number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a number of the option's size"))
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let invalid = || format!("{text:?} is not hex bytes");
    let digits: String = match text.strip_prefix("0x") {
        Some(digits) => digits.to_string(),
        None => text.split(':').collect(),
    };
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(invalid());
    }
    (0..digits.len())
        .step_by(2)
        .map(|at| {
            u8::from_str_radix(digits.get(at..at + 2).unwrap_or(""), 16).map_err(|_| invalid())
        })
        .collect()
}

fn encode_value(kind: Kind, value: &str) -> Result<Vec<u8>, String> {
    Ok(match kind {
        Kind::Address => parse_address(value)?.octets().to_vec(),
        Kind::Addresses => list(value)
            .map(|item| parse_address(item).map(|ip| ip.octets()))
            .collect::<Result<Vec<_>, _>>()?
            .concat(),
        Kind::U8 => vec![parse_number::<u8>(value)?],
        Kind::U16 => parse_number::<u16>(value)?.to_be_bytes().to_vec(),
        Kind::U32 => parse_number::<u32>(value)?.to_be_bytes().to_vec(),
        Kind::I32 => parse_number::<i32>(value)?.to_be_bytes().to_vec(),
        Kind::Flag => match value {
            "1" | "true" | "yes" | "on" => vec![1],
            "0" | "false" | "no" | "off" => vec![0],
            _ => return Err(format!("{value:?} is not a flag (0 or 1)")),
        },
        Kind::Text => value.as_bytes().to_vec(),
        Kind::Hex => parse_hex(value)?,
        Kind::Domains => {
            let mut encoded = Vec::new();
            for name in value.split([',', ' ']).filter(|name| !name.is_empty()) {
                encode_domain(name, &mut encoded)?;
            }
            encoded
        }
        Kind::ClasslessRoutes => {
            let items: Vec<&str> = list(value).collect();
            let mut routes = Vec::new();
            for pair in items.chunks(2) {
                let [destination, router] = pair else {
                    return Err("expected destination/len,router pairs".into());
                };
                let destination: Ipv4Net = destination
                    .parse()
                    .map_err(|_| format!("{destination:?} is not an IPv4 prefix"))?;
                routes.push((destination.trunc(), parse_address(router)?));
            }
            classless_routes_value(&routes)
        }
        Kind::StaticRoutes => {
            let addresses = list(value)
                .map(parse_address)
                .collect::<Result<Vec<_>, _>>()?;
            if addresses.len() % 2 != 0 {
                return Err("expected destination,router pairs".into());
            }
            addresses.iter().flat_map(|ip| ip.octets()).collect()
        }
    })
}

/// A domain name in the wire format of RFC 1035 §3.1, uncompressed.
fn encode_domain(name: &str, encoded: &mut Vec<u8>) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let start = encoded.len();
    for label in name.split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|len| (1..=63).contains(len))
            .ok_or_else(|| format!("{name:?} is not a domain name"))?;
        encoded.push(len);
        encoded.extend_from_slice(label.as_bytes());
    }
    encoded.push(0);
    if encoded.len() - start > 255 {
        return Err(format!("domain name {name:?} is longer than 255 bytes"));
    }
    Ok(())
}

/// The value of option 121 (RFC 3442 §3): each route as its prefix length,
/// the significant octets of its destination, and its router.
pub fn classless_routes_value(routes: &[(Ipv4Net, Ipv4Addr)]) -> Vec<u8> {
    let mut value = Vec::new();
    for (destination, router) in routes {
        let significant = usize::from(destination.prefix_len().div_ceil(8));
        value.push(destination.prefix_len());
        value.extend_from_slice(&destination.network().octets()[..significant]);
        value.extend_from_slice(&router.octets());
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(code: u8, value: &[u8]) -> ExtraOption {
        ExtraOption::Set {
            code,
            value: value.to_vec(),
        }
    }

    #[test]
    fn neutron_names_and_numeric_codes_parse() {
        assert_eq!(parse_extra("mtu", "1400"), Ok(set(26, &[0x05, 0x78])));
        assert_eq!(
            parse_extra("ntp-server", "10.0.0.5, 10.0.0.6"),
            Ok(set(42, &[10, 0, 0, 5, 10, 0, 0, 6]))
        );
        assert_eq!(
            parse_extra("option:ntp-server", "10.0.0.5"),
            parse_extra("42", "10.0.0.5")
        );
        assert_eq!(
            parse_extra("option-42", "10.0.0.5"),
            parse_extra("42", "10.0.0.5")
        );
        assert_eq!(
            parse_extra("domain-search", "a.example,b.org."),
            Ok(set(119, b"\x01a\x07example\x00\x01b\x03org\x00"))
        );
        assert_eq!(
            parse_extra(
                "classless-static-route",
                "169.254.169.254/32,10.0.1.5,10.2.0.0/16,10.0.1.6"
            ),
            Ok(set(
                121,
                &[32, 169, 254, 169, 254, 10, 0, 1, 5, 16, 10, 2, 10, 0, 1, 6]
            ))
        );
        assert_eq!(
            parse_extra("router", ""),
            Ok(ExtraOption::Suppress { code: 3 })
        );
        assert_eq!(
            parse_extra("server-ip-address", "10.0.1.2"),
            Ok(ExtraOption::NextServer(Ipv4Addr::new(10, 0, 1, 2)))
        );
        assert_eq!(
            parse_extra("bootfile-name", "pxelinux.0"),
            Ok(set(67, b"pxelinux.0"))
        );
        assert_eq!(parse_extra("ip-forward-enable", "true"), Ok(set(19, &[1])));
    }

    #[test]
    fn unknown_codes_take_the_value_they_read_as() {
        assert_eq!(parse_extra("224", "10.0.0.1"), Ok(set(224, &[10, 0, 0, 1])));
        assert_eq!(parse_extra("224", "0x0a1b"), Ok(set(224, &[0x0a, 0x1b])));
        assert_eq!(parse_extra("224", "0a:1b"), Ok(set(224, &[0x0a, 0x1b])));
        assert_eq!(parse_extra("224", "hello"), Ok(set(224, b"hello")));
    }

    #[test]
    fn protocol_options_unknown_names_and_bad_values_are_refused() {
        for owned in [
            "51",
            "lease-time",
            "53",
            "54",
            "option-55",
            "61",
            "82",
            "249",
            "12",
        ] {
            assert!(parse_extra(owned, "1").is_err(), "{owned} accepted");
        }
        assert!(
            parse_extra("56", "hello").is_ok(),
            "56 (message) is the operator's"
        );
        assert!(parse_extra("no-such-option", "1").is_err());
        assert!(parse_extra("mtu", "70000").is_err());
        assert!(parse_extra("ntp-server", "10.0.0.256").is_err());
        assert!(parse_extra("classless-static-route", "10.0.0.0/8").is_err());
        assert!(parse_extra("domain-search", "a..b").is_err());
        assert!(parse_extra("vendor-encap", "0x123").is_err());
    }

    #[test]
    fn tables_encode_long_values_in_pieces_and_join_them_back() {
        let mut table = OptionTable::default();
        table.set_raw(224, vec![7; 300]);
        let encoded = table.get(224).unwrap();
        assert_eq!(&encoded[..2], &[224, 255]);
        assert_eq!(&encoded[257..259], &[224, 45]);
        assert_eq!(table.value(224).unwrap(), vec![7; 300]);
        assert_eq!(table.codes().collect::<Vec<_>>(), vec![224]);
        table.remove(224);
        assert!(table.get(224).is_none());
    }
}
