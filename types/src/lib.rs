//! Network value types parsed once at the API boundary, shared by the agent
//! and the controller: a [`Mac`], a [`Vni`], IPv4 networks that must be
//! networks. Also what the agent and its CLI, `agentctl`, must agree on
//! without `agentctl` depending on the agent (which needs the eBPF toolchain
//! to build): the default [control socket](DEFAULT_CONTROL_SOCKET), the
//! names of the DHCP responder's counters ([`dhcp`]) and the [`hexdump`] of
//! traced frames.

pub mod dhcp;
mod hexdump;

use std::{fmt, net::Ipv4Addr, str::FromStr};

pub use hexdump::hexdump;
pub use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Where the agent serves its control API (root only) and `agentctl` looks
/// for it, unless told otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/alcor/agent.sock";

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }

    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Parses an address a VM can own: unicast and not all zeros.
    pub fn parse_unicast(text: &str) -> Result<Mac, String> {
        let mac: Mac = text.parse()?;
        if mac.is_zero() || mac.is_multicast() {
            return Err(format!("MAC {mac} is not a unicast address"));
        }
        Ok(mac)
    }
}

impl FromStr for Mac {
    type Err = String;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid MAC address {text:?}");
        let mut octets = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Mac(octets))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A VXLAN network identifier: 24 bits, 0 excluded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
pub struct Vni(u32);

impl<'de> Deserialize<'de> for Vni {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vni::try_from(u64::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

impl Vni {
    pub const MAX: u32 = (1 << 24) - 1;

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u64> for Vni {
    type Error = String;

    fn try_from(value: u64) -> Result<Self, Self::Error> {
        match u32::try_from(value) {
            Ok(vni @ 1..=Vni::MAX) => Ok(Vni(vni)),
            _ => Err(format!(
                "tunnel id {value} is not a VXLAN network identifier (1..={})",
                Vni::MAX
            )),
        }
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Parses `a.b.c.d/len` and insists on the network address, so that a typo
/// such as `10.0.0.5/24` is reported instead of silently widened.
pub fn parse_ipv4_net(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| format!("invalid IPv4 CIDR {text:?}"))?;
    if net.trunc() != net {
        return Err(format!(
            "CIDR {text} has host bits set (the network is {})",
            net.trunc()
        ));
    }
    Ok(net)
}

pub fn parse_ipv4(text: &str, what: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("invalid IPv4 address {text:?} for {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: Mac = "FA:16:3e:00:00:01".parse().unwrap();
        assert_eq!(mac.to_string(), "fa:16:3e:00:00:01");
        assert_eq!("fa-16-3e-00-00-01".parse::<Mac>().unwrap(), mac);
        for bad in [
            "",
            "fa:16:3e:00:00",
            "fa:16:3e:00:00:01:02",
            "fa:16:3e:00:00:0g",
            "fa:16:3e:0:00:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?} accepted");
        }
        assert!(Mac::parse_unicast("01:00:5e:00:00:01").is_err());
        assert!(Mac::parse_unicast("00:00:00:00:00:00").is_err());
    }

    #[test]
    fn vni_is_24_bits_and_not_zero() {
        assert!(Vni::try_from(0).is_err());
        assert_eq!(Vni::try_from(1).unwrap().get(), 1);
        assert_eq!(Vni::try_from(0xFF_FFFF).unwrap().get(), 0xFF_FFFF);
        assert!(Vni::try_from(0x100_0000).is_err());
        assert!(Vni::try_from(u64::MAX).is_err());
    }

    #[test]
    fn cidr_must_be_a_network() {
        assert_eq!(parse_ipv4_net("10.0.0.0/24").unwrap().prefix_len(), 24);
        assert!(
            parse_ipv4_net("10.0.0.5/24")
                .unwrap_err()
                .contains("10.0.0.0/24")
        );
        assert!(parse_ipv4_net("10.0.0.0/33").is_err());
        assert!(parse_ipv4_net("banana").is_err());
    }
}
