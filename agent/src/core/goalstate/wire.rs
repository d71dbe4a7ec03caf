//! V2 messages read with their neighbor states left encoded.
//!
//! A push of a million neighbors is a hundred messages of ten thousand
//! neighbor states. Decoded whole by prost, each became an entry of a hashed
//! map (SipHash, and rehashing moved 300-byte values), then its configuration
//! was encoded again for the desired state to keep; that was a third of what
//! the agent spent on a push. Here the message is walked at the protobuf wire
//! level: each neighbor state's configuration is kept as it came and read in
//! place, its strings borrowed ([`NeighborConfigurationRef`]), so that
//! checking it copies only what the desired state keeps, and one that does
//! not decode is refused alone. Every other field goes to prost as before.
//!
//! What a map means on the wire is kept: an entry without a key has the key
//! "", one without a value has the default value, and of entries with the
//! same key the last one counts; a message field given twice is merged (its
//! encodings concatenated).

use std::borrow::Cow;

use alcor_proto::schema::{GoalStateV2, NeighborConfiguration};
use prost::Message;

/// `GoalStateV2.neighbor_states`: `map<string, NeighborState>`.
const NEIGHBOR_STATES: u32 = 7;
/// A map entry's key and value.
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
/// `NeighborState.operation_type` and `NeighborState.configuration`.
const OPERATION_TYPE: u32 = 1;
const CONFIGURATION: u32 = 2;

/// Nesting of groups (a deprecated wire form, skipped) accepted, as deep as
/// prost's own limit.
const MAX_DEPTH: u32 = 100;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("the message ends inside a field")]
    Truncated,
    #[error("a varint longer than 10 bytes")]
    Varint,
    #[error("field {field} has wire type {wire_type}, which it cannot have")]
    WireType { field: u32, wire_type: u8 },
    #[error("a field key out of range")]
    Key,
    #[error("a group that does not end as it began")]
    Group,
    #[error("groups nested more than {MAX_DEPTH} deep")]
    Depth,
    #[error("a string that is not UTF-8")]
    Utf8,
    #[error(transparent)]
    Prost(#[from] prost::DecodeError),
}

/// A neighbor state as it came: its operation, and its configuration
/// encoded (`None`: absent).
#[derive(Debug, PartialEq, Eq)]
pub struct NeighborEntry<'a> {
    pub key: &'a str,
    pub operation: i32,
    pub configuration: Option<Cow<'a, [u8]>>,
}

/// A V2 message: everything but its neighbor states decoded, and those in
/// key order, each key once.
pub fn read_v2(message: &[u8]) -> Result<(GoalStateV2, Vec<NeighborEntry<'_>>), WireError> {
    let mut others = Vec::new();
    let mut neighbors = Vec::new();
    fields(message, |field, value, raw| {
        match (field, value) {
            (NEIGHBOR_STATES, Value::Bytes(entry)) => neighbors.push(neighbor_entry(entry)?),
            (NEIGHBOR_STATES, _) => return Err(wire_type_error(field, raw)),
            _ => others.extend_from_slice(raw),
        }
        Ok(())
    })?;
    // Stable: of entries with one key, the last one given stays last.
    neighbors.sort_by(|a: &NeighborEntry, b| a.key.cmp(b.key));
    let mut unique: Vec<NeighborEntry> = Vec::with_capacity(neighbors.len());
    for neighbor in neighbors {
        match unique.last_mut() {
            Some(last) if last.key == neighbor.key => *last = neighbor,
            _ => unique.push(neighbor),
        }
    }
    Ok((GoalStateV2::decode(others.as_slice())?, unique))
}

fn neighbor_entry(entry: &[u8]) -> Result<NeighborEntry<'_>, WireError> {
    let mut neighbor = NeighborEntry {
        key: "",
        operation: 0,
        configuration: None,
    };
    fields(entry, |field, value, raw| {
        match (field, value) {
            (ENTRY_KEY, Value::Bytes(key)) => neighbor.key = utf8(key)?,
            (ENTRY_VALUE, Value::Bytes(state)) => neighbor_state(state, &mut neighbor)?,
            (ENTRY_KEY | ENTRY_VALUE, _) => return Err(wire_type_error(field, raw)),
            _ => {}
        }
        Ok(())
    })?;
    Ok(neighbor)
}

/// Merges one encoding of a `NeighborState` into `neighbor`.
fn neighbor_state<'a>(state: &'a [u8], neighbor: &mut NeighborEntry<'a>) -> Result<(), WireError> {
    fields(state, |field, value, raw| {
        match (field, value) {
            // An enum is an int32: the varint's low 32 bits.
            (OPERATION_TYPE, Value::Varint(value)) => neighbor.operation = value as i32,
            (CONFIGURATION, Value::Bytes(config)) => {
                neighbor.configuration = Some(match neighbor.configuration.take() {
                    None => Cow::Borrowed(config),
                    Some(earlier) => Cow::Owned([earlier.as_ref(), config].concat()),
                });
            }
            (OPERATION_TYPE | CONFIGURATION, _) => return Err(wire_type_error(field, raw)),
            _ => {}
        }
        Ok(())
    })
}

/// A `NeighborConfiguration` read in place: its strings borrowed from the
/// encoding (or from a decoded one), so that checking a neighbor copies only
/// what the desired state keeps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NeighborConfigurationRef<'a> {
    pub revision_number: u32,
    pub id: &'a str,
    pub vpc_id: &'a str,
    pub name: &'a str,
    pub mac_address: &'a str,
    pub host_mac_address: &'a str,
    pub host_ip_address: &'a str,
    pub fixed_ips: Vec<FixedIpRef<'a>>,
    pub allow_address_pairs: Vec<AddressPairRef<'a>>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct FixedIpRef<'a> {
    pub neighbor_type: i32,
    pub subnet_id: &'a str,
    pub ip_address: &'a str,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddressPairRef<'a> {
    pub ip_address: &'a str,
    pub mac_address: &'a str,
}

impl<'a> NeighborConfigurationRef<'a> {
    /// Reads an encoded configuration as prost decodes it: every string
    /// field must be UTF-8, known fields have their wire types, fields given
    /// again replace (scalars) or append (repeated).
    pub fn read(encoded: &'a [u8]) -> Result<Self, WireError> {
        let mut config = NeighborConfigurationRef::default();
        fields(encoded, |field, value, raw| {
            match (field, value) {
                // uint32 and enum (int32) fields: the varint's low 32 bits.
                (1, Value::Varint(value)) => config.revision_number = value as u32,
                (4, Value::Varint(_)) => {} // update_type
                (2, Value::Bytes(request_id)) => {
                    utf8(request_id)?;
                }
                (3, Value::Bytes(text)) => config.id = utf8(text)?,
                (5, Value::Bytes(text)) => config.vpc_id = utf8(text)?,
                (6, Value::Bytes(text)) => config.name = utf8(text)?,
                (7, Value::Bytes(text)) => config.mac_address = utf8(text)?,
                (8, Value::Bytes(text)) => config.host_mac_address = utf8(text)?,
                (9, Value::Bytes(text)) => config.host_ip_address = utf8(text)?,
                (10, Value::Bytes(fixed_ip)) => config.fixed_ips.push(FixedIpRef::read(fixed_ip)?),
                (11, Value::Bytes(pair)) => {
                    config.allow_address_pairs.push(AddressPairRef::read(pair)?);
                }
                (1..=11, _) => return Err(wire_type_error(field, raw)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(config)
    }
}

impl<'a> FixedIpRef<'a> {
    fn read(encoded: &'a [u8]) -> Result<Self, WireError> {
        let mut fixed_ip = FixedIpRef::default();
        fields(encoded, |field, value, raw| {
            match (field, value) {
                (1, Value::Varint(value)) => fixed_ip.neighbor_type = value as i32,
                (5, Value::Varint(_)) => {} // tunnel_id
                (2, Value::Bytes(text)) => fixed_ip.subnet_id = utf8(text)?,
                (3, Value::Bytes(text)) => fixed_ip.ip_address = utf8(text)?,
                (4, Value::Bytes(arion_group)) => {
                    utf8(arion_group)?;
                }
                (1..=5, _) => return Err(wire_type_error(field, raw)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(fixed_ip)
    }
}

impl<'a> AddressPairRef<'a> {
    fn read(encoded: &'a [u8]) -> Result<Self, WireError> {
        let mut pair = AddressPairRef::default();
        fields(encoded, |field, value, raw| {
            match (field, value) {
                (1, Value::Bytes(text)) => pair.ip_address = utf8(text)?,
                (2, Value::Bytes(text)) => pair.mac_address = utf8(text)?,
                (1..=2, _) => return Err(wire_type_error(field, raw)),
                _ => {}
            }
            Ok(())
        })?;
        Ok(pair)
    }
}

impl<'a> From<&'a NeighborConfiguration> for NeighborConfigurationRef<'a> {
    fn from(config: &'a NeighborConfiguration) -> Self {
        NeighborConfigurationRef {
            revision_number: config.revision_number,
            id: &config.id,
            vpc_id: &config.vpc_id,
            name: &config.name,
            mac_address: &config.mac_address,
            host_mac_address: &config.host_mac_address,
            host_ip_address: &config.host_ip_address,
            fixed_ips: config
                .fixed_ips
                .iter()
                .map(|fixed| FixedIpRef {
                    neighbor_type: fixed.neighbor_type,
                    subnet_id: &fixed.subnet_id,
                    ip_address: &fixed.ip_address,
                })
                .collect(),
            allow_address_pairs: config
                .allow_address_pairs
                .iter()
                .map(|pair| AddressPairRef {
                    ip_address: &pair.ip_address,
                    mac_address: &pair.mac_address,
                })
                .collect(),
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, WireError> {
    std::str::from_utf8(bytes).map_err(|_| WireError::Utf8)
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed-size values and groups: no field read here has them.
    Other,
}

/// Calls `read` with each field of `encoded`, in order: its number, its
/// value and its encoding.
fn fields<'a>(
    encoded: &'a [u8],
    mut read: impl FnMut(u32, Value<'a>, &'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut rest = encoded;
    while !rest.is_empty() {
        let start = rest;
        let (field, value) = next_field(&mut rest, 0)?;
        read(field, value, &start[..start.len() - rest.len()])?;
    }
    Ok(())
}

/// The error for field `field`, encoded as `raw`, whose wire type is not
/// its own.
fn wire_type_error(field: u32, raw: &[u8]) -> WireError {
    let mut key = raw;
    let wire_type = varint(&mut key).map_or(0, |key| (key & 7) as u8);
    WireError::WireType { field, wire_type }
}

/// Reads the next field of `buf`: its number and value.
fn next_field<'a>(buf: &mut &'a [u8], depth: u32) -> Result<(u32, Value<'a>), WireError> {
    let key = u32::try_from(varint(buf)?).map_err(|_| WireError::Key)?;
    let field = key >> 3;
    if field == 0 {
        return Err(WireError::Key);
    }
    let value = match key & 7 {
        0 => Value::Varint(varint(buf)?),
        1 => {
            take(buf, 8)?;
            Value::Other
        }
        2 => {
            let len = usize::try_from(varint(buf)?).map_err(|_| WireError::Truncated)?;
            Value::Bytes(take(buf, len)?)
        }
        3 => {
            skip_group(buf, field, depth + 1)?;
            Value::Other
        }
        5 => {
            take(buf, 4)?;
            Value::Other
        }
        wire_type => {
            return Err(WireError::WireType {
                field,
                wire_type: wire_type as u8,
            });
        }
    };
    Ok((field, value))
}

/// Skips a group's fields, up to the end of group `field`.
fn skip_group(buf: &mut &[u8], field: u32, depth: u32) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::Depth);
    }
    loop {
        let mut peek = *buf;
        let key = varint(&mut peek)?;
        if key & 7 == 4 {
            *buf = peek;
            return match key >> 3 == u64::from(field) {
                true => Ok(()),
                false => Err(WireError::Group),
            };
        }
        next_field(buf, depth)?;
    }
}

fn take<'a>(buf: &mut &'a [u8], len: usize) -> Result<&'a [u8], WireError> {
    if len > buf.len() {
        return Err(WireError::Truncated);
    }
    let (taken, rest) = buf.split_at(len);
    *buf = rest;
    Ok(taken)
}

fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        // The tenth byte holds the 64th bit only.
        if i == 9 && byte > 1 {
            return Err(WireError::Varint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    match buf.len() < 10 {
        true => Err(WireError::Truncated),
        false => Err(WireError::Varint),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use alcor_proto::schema::{
        NeighborConfiguration, NeighborState, VpcConfiguration, VpcState,
        neighbor_configuration::{AllowAddressPair, FixedIp},
    };
    use proptest::{collection, prelude::*, sample::Index};

    use super::*;

    /// The neighbor states read here, decoded as prost decodes them.
    fn decoded(
        neighbors: &[NeighborEntry],
    ) -> Result<HashMap<String, NeighborState>, prost::DecodeError> {
        neighbors
            .iter()
            .map(|neighbor| {
                let configuration = neighbor
                    .configuration
                    .as_deref()
                    .map(NeighborConfiguration::decode)
                    .transpose()?;
                let state = NeighborState {
                    operation_type: neighbor.operation,
                    configuration,
                };
                Ok((neighbor.key.to_string(), state))
            })
            .collect()
    }

    fn without_neighbors(message: GoalStateV2) -> GoalStateV2 {
        GoalStateV2 {
            neighbor_states: HashMap::new(),
            ..message
        }
    }

    fn neighbor_state() -> impl Strategy<Value = NeighborState> {
        let fixed_ip = ("[a-z]{0,3}", "[0-9.]{0,9}", any::<i32>()).prop_map(
            |(subnet_id, ip_address, neighbor_type)| FixedIp {
                subnet_id,
                ip_address,
                neighbor_type,
                ..Default::default()
            },
        );
        let config = (
            any::<u32>(),
            "[a-z0-9]{0,6}",
            "[a-f0-9:]{0,9}",
            collection::vec(fixed_ip, 0..3),
        )
            .prop_map(|(revision_number, id, mac_address, fixed_ips)| {
                NeighborConfiguration {
                    revision_number,
                    id,
                    mac_address,
                    fixed_ips,
                    ..Default::default()
                }
            });
        (any::<i32>(), proptest::option::of(config)).prop_map(|(operation_type, configuration)| {
            NeighborState {
                operation_type,
                configuration,
            }
        })
    }

    fn message() -> impl Strategy<Value = GoalStateV2> {
        let vpc = ("[a-z]{0,4}", any::<u32>()).prop_map(|(id, tunnel_id)| VpcState {
            operation_type: 1,
            configuration: Some(VpcConfiguration {
                id,
                tunnel_id,
                ..Default::default()
            }),
        });
        (
            any::<u32>(),
            collection::hash_map("[a-c]{0,2}", neighbor_state(), 0..6),
            collection::hash_map("[a-c]{0,2}", vpc, 0..3),
        )
            .prop_map(
                |(format_version, neighbor_states, vpc_states)| GoalStateV2 {
                    format_version,
                    neighbor_states,
                    vpc_states,
                    ..Default::default()
                },
            )
    }

    /// Two messages one after the other: one message to protobuf, where
    /// keys given again replace and fields given again merge.
    fn encoded_pair() -> impl Strategy<Value = Vec<u8>> {
        (message(), message())
            .prop_map(|(first, second)| [first.encode_to_vec(), second.encode_to_vec()].concat())
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        #[test]
        fn reads_messages_as_prost_decodes_them(encoded in encoded_pair()) {
            let whole = GoalStateV2::decode(encoded.as_slice()).unwrap();
            let (others, neighbors) = read_v2(&encoded).unwrap();
            prop_assert!(neighbors.windows(2).all(|pair| pair[0].key < pair[1].key));
            prop_assert_eq!(decoded(&neighbors).unwrap(), whole.neighbor_states.clone());
            prop_assert_eq!(others, without_neighbors(whole));
        }

        /// Damaged messages never panic, and read as prost reads them,
        /// except that a neighbor's configuration that does not decode is
        /// left to its operation to refuse, or ignored if a later entry
        /// replaces it (prost refuses the message).
        #[test]
        fn damaged_messages_read_as_prost_reads_them(
            encoded in encoded_pair(),
            damage in collection::vec((any::<Index>(), any::<u8>()), 1..4),
            cut in any::<Index>(),
        ) {
            let mut encoded = encoded;
            for (at, byte) in damage {
                if !encoded.is_empty() {
                    let at = at.index(encoded.len());
                    encoded[at] = byte;
                }
            }
            encoded.truncate(cut.index(encoded.len() + 1));
            match (read_v2(&encoded), GoalStateV2::decode(encoded.as_slice())) {
                (Ok((others, neighbors)), Ok(whole)) => {
                    prop_assert_eq!(decoded(&neighbors).unwrap(), whole.neighbor_states.clone());
                    prop_assert_eq!(others, without_neighbors(whole));
                }
                (Ok(_), Err(refused)) => {
                    prop_assert!(refused.to_string().contains("NeighborState.configuration:"));
                }
                (Err(ours), Ok(_)) => prop_assert!(false, "prost reads what was refused: {}", ours),
                (Err(_), Err(_)) => {}
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in collection::vec(any::<u8>(), 0..64)) {
            let _ = read_v2(&bytes);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzzing::config())]

        /// A configuration read in place says what prost decodes, and is
        /// refused where prost refuses it.
        #[test]
        fn reads_neighbor_configurations_as_prost_decodes_them(
            state in neighbor_state(),
            again in neighbor_state(),
            damage in collection::vec((any::<Index>(), any::<u8>()), 0..3),
        ) {
            let mut config = config_of(state);
            config.request_id = "request".into();
            config.vpc_id = "vpc".into();
            config.name = "name".into();
            config.update_type = 1;
            config.host_mac_address = "fa:16:3e:00:00:01".into();
            config.host_ip_address = "198.18.0.1".into();
            config.allow_address_pairs = vec![AllowAddressPair {
                ip_address: "10.0.0.0/24".into(),
                mac_address: String::new(),
            }];
            // Given twice: fields merge.
            let mut encoded = [config.encode_to_vec(), config_of(again).encode_to_vec()].concat();
            for (at, byte) in damage {
                if !encoded.is_empty() {
                    let at = at.index(encoded.len());
                    encoded[at] = byte;
                }
            }
            match (NeighborConfigurationRef::read(&encoded), NeighborConfiguration::decode(encoded.as_slice())) {
                (Ok(read), Ok(decoded)) => prop_assert_eq!(read, NeighborConfigurationRef::from(&decoded)),
                (Err(_), Err(_)) => {}
                (read, decoded) => prop_assert!(false, "read {:?}, prost {:?}", read, decoded),
            }
        }
    }

    fn config_of(state: NeighborState) -> NeighborConfiguration {
        state.configuration.unwrap_or_default()
    }

    #[test]
    fn skips_groups_and_refuses_what_prost_refuses() {
        // Field 15 as a group holding a varint, then format_version 3.
        let group = [0x7b, 0x08, 0x01, 0x7c, 0x08, 0x03];
        let (others, neighbors) = read_v2(&group).unwrap();
        assert_eq!(others.format_version, 3);
        assert!(neighbors.is_empty());
        for refused in [
            &[0x7b, 0x08, 0x01, 0x84, 0x01][..], // a group ended as field 16
            &[0x3a, 0x05, 0x0a],                 // an entry longer than the message
            &[0x38, 0x01],                       // neighbor_states as a varint
            &[0x3a, 0x02, 0x0a, 0x01],           // a key cut short
            &[0x3a, 0x03, 0x0a, 0x01, 0xff],     // a key that is not UTF-8
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
        ] {
            assert!(read_v2(refused).is_err(), "{refused:x?}");
            assert!(GoalStateV2::decode(refused).is_err(), "{refused:x?}");
        }
    }
}
