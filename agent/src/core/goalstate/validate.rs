//! Parse, don't validate: turns each wire configuration into its model type,
//! checked against the desired state it would join. An error is the reason an
//! operator reads in the resource's INVALID_ARG status.

use std::{collections::HashMap, net::Ipv4Addr, sync::Arc};

use alcor_proto::schema::{
    self, DestinationType, EtherType, GatewayType, NeighborType, NetworkType, OperationType,
    Protocol, UpdateType, security_group_configuration::Direction,
};
use ipnet::{IpNet, Ipv4Net};

use super::wire::{AddressPairRef, NeighborConfigurationRef};
use crate::core::{
    desired::{DesiredState, Resource},
    model::*,
};

/// Longest id, name or other free text accepted in a configuration.
pub const MAX_TEXT_LEN: usize = 255;

/// What can be checked of a configuration on its own, without the desired
/// state: done as messages are read, beside the engine, which then has only
/// the rest to do. Most kinds are checked whole by [`Validate::parse`];
/// neighbors, which come by the million, are checked here as far as they can
/// be.
pub trait Check: Resource {
    /// A configuration checked on its own.
    type Checked: Send + 'static;

    fn check(config: Self::Config) -> Result<Self::Checked, String>;
}

pub trait Validate: Check + Sized {
    /// Parses a configuration for a CREATE or UPDATE, checked on its own,
    /// against the desired state it would join.
    fn parse(
        config: Self::Checked,
        op: OperationType,
        state: &DesiredState,
    ) -> Result<Self, String>;

    /// Why `id` cannot be deleted now, if other resources still refer to it.
    fn referenced_by(_id: &str, _state: &DesiredState) -> Option<String> {
        None
    }
}

/// Kinds whose configurations are checked whole, against the desired state.
macro_rules! checked_when_parsed {
    ($($model:ty),*) => {$(
        impl Check for $model {
            type Checked = <$model as Resource>::Config;

            fn check(config: Self::Config) -> Result<Self::Checked, String> {
                Ok(config)
            }
        }
    )*};
}

checked_when_parsed!(Vpc, Subnet, Port, DhcpEntry, Router, SecurityGroup, Gateway);

/// Checks that an id is usable: present, bounded, printable.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id is empty".into());
    }
    check_text("id", id)
}

fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_TEXT_LEN {
        return Err(format!(
            "{field} is {} bytes long, more than {MAX_TEXT_LEN}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} {value:?} contains control characters"));
    }
    Ok(())
}

fn enum_value<E: TryFrom<i32>>(field: &str, raw: i32) -> Result<E, String> {
    E::try_from(raw).map_err(|_| format!("unknown {field} value {raw}"))
}

fn vpc_of<'a>(state: &'a DesiredState, vpc_id: &str) -> Result<&'a Vpc, String> {
    state
        .vpcs
        .get(vpc_id)
        .map(|entry| &entry.spec)
        .ok_or_else(|| format!("unknown VPC {vpc_id:?}"))
}

fn subnet_of<'a>(state: &'a DesiredState, subnet_id: &str) -> Result<&'a Subnet, String> {
    state
        .subnets
        .get(subnet_id)
        .map(|entry| &entry.spec)
        .ok_or_else(|| format!("unknown subnet {subnet_id:?}"))
}

/// An address a VM can hold in `subnet`: inside it, and neither its network
/// nor its broadcast address.
fn host_address_in(subnet: &Subnet, text: &str, what: &str) -> Result<Ipv4Addr, String> {
    let ip = parse_ipv4(text, what)?;
    check_host_address(subnet, ip, what)?;
    Ok(ip)
}

fn check_host_address(subnet: &Subnet, ip: Ipv4Addr, what: &str) -> Result<(), String> {
    let cidr = subnet.cidr;
    if !cidr.contains(&ip) {
        return Err(format!(
            "{what} {ip} is outside subnet {} ({cidr})",
            subnet.id
        ));
    }
    if cidr.prefix_len() < 31 && (ip == cidr.network() || ip == cidr.broadcast()) {
        return Err(format!("{what} {ip} is not a host address of {cidr}"));
    }
    Ok(())
}

/// An allowed address pair as ports and neighbors carry it.
trait AddressPairConfig {
    fn ip_address(&self) -> &str;
    fn mac_address(&self) -> &str;
}

macro_rules! address_pair_config {
    ($($ty:ty),*) => {$(
        impl AddressPairConfig for $ty {
            fn ip_address(&self) -> &str {
                &self.ip_address
            }
            fn mac_address(&self) -> &str {
                &self.mac_address
            }
        }
    )*};
}

address_pair_config!(
    schema::port_configuration::AllowAddressPair,
    AddressPairRef<'_>
);

/// Allowed address pairs name an address or a prefix; the MAC defaults to the
/// owner's.
fn address_pairs(
    pairs: &[impl AddressPairConfig],
    owner_mac: Mac,
) -> Result<Vec<AddressPair>, String> {
    pairs
        .iter()
        .map(|pair| {
            let ip = match pair.ip_address() {
                prefix if prefix.contains('/') => parse_ipv4_net(prefix)?,
                ip => Ipv4Net::from(parse_ipv4(ip, "allowed address pair")?),
            };
            let mac = match pair.mac_address() {
                "" => owner_mac,
                mac => Mac::parse_unicast(mac)?,
            };
            Ok(AddressPair { ip, mac })
        })
        .collect()
}

fn first_user<R: Resource>(state: &DesiredState, uses: impl Fn(&R) -> bool) -> Option<&str> {
    R::table(state)
        .iter()
        .find(|(_, entry)| uses(&entry.spec))
        .map(|(id, _)| id.as_str())
}

fn kind_name(kind: schema::ResourceType) -> &'static str {
    kind.as_str_name()
}

/// "still used by PORT p1", for the first resource of kind `R` that uses it.
fn used_by<R: Resource>(state: &DesiredState, uses: impl Fn(&R) -> bool) -> Option<String> {
    first_user::<R>(state, uses).map(|id| format!("still used by {} {id}", kind_name(R::KIND)))
}

impl Validate for Vpc {
    fn parse(
        config: schema::VpcConfiguration,
        _op: OperationType,
        state: &DesiredState,
    ) -> Result<Self, String> {
        check_text("name", &config.name)?;
        check_text("project_id", &config.project_id)?;
        let vni = Vni::try_from(u64::from(config.tunnel_id))?;
        if let Some(existing) = state.vpcs.get(&config.id)
            && existing.spec.vni != vni
            && let Some(subnet) = first_user::<Subnet>(state, |s| s.vpc_id == config.id)
        {
            return Err(format!(
                "cannot change the tunnel id of a VPC that has subnets (subnet {subnet})"
            ));
        }
        Ok(Vpc {
            id: config.id.clone(),
            name: config.name.clone(),
            project_id: config.project_id.clone(),
            cidr: match config.cidr.as_str() {
                "" => None,
                cidr => Some(parse_ipv4_net(cidr)?),
            },
            vni,
        })
    }

    fn referenced_by(id: &str, state: &DesiredState) -> Option<String> {
        used_by::<Subnet>(state, |s| s.vpc_id == id)
            .or_else(|| used_by::<Port>(state, |p| p.vpc_id == id))
            .or_else(|| used_by::<Neighbor>(state, |n| *n.vpc_id == *id))
            .or_else(|| used_by::<SecurityGroup>(state, |g| g.vpc_id == id))
    }
}

impl Validate for Subnet {
    fn parse(
        config: schema::SubnetConfiguration,
        _op: OperationType,
        state: &DesiredState,
    ) -> Result<Self, String> {
        check_text("name", &config.name)?;
        check_text("availability_zone", &config.availability_zone)?;
        let network_type: NetworkType = enum_value("network_type", config.network_type)?;
        if network_type != NetworkType::Vxlan {
            return Err(format!(
                "network type {} is not supported (only VXLAN)",
                network_type.as_str_name()
            ));
        }
        let vpc = vpc_of(state, &config.vpc_id)?;
        let vni = match config.tunnel_id {
            0 => vpc.vni,
            tunnel_id => Vni::try_from(tunnel_id)?,
        };
        if vni != vpc.vni {
            return Err(format!(
                "tunnel id {vni} differs from the tunnel id {} of VPC {}",
                vpc.vni, vpc.id
            ));
        }
        let cidr = parse_ipv4_net(&config.cidr)?;
        let mut subnet = Subnet {
            id: config.id.clone(),
            vpc_id: config.vpc_id.clone(),
            name: config.name.clone(),
            cidr,
            vni,
            gateway: None,
            dhcp_enable: config.dhcp_enable,
            dns_servers: config
                .dns_entry_list
                .iter()
                .map(|dns| parse_ipv4(&dns.entry, "DNS server"))
                .collect::<Result<_, _>>()?,
            extra_dhcp_options: config
                .extra_dhcp_options
                .iter()
                .map(|option| {
                    check_text("DHCP option name", &option.name)?;
                    check_text("DHCP option value", &option.value)?;
                    if option.name.is_empty() {
                        return Err("DHCP option without a name".to_string());
                    }
                    Ok(DhcpOption {
                        name: option.name.clone(),
                        value: option.value.clone(),
                    })
                })
                .collect::<Result<_, _>>()?,
            availability_zone: config.availability_zone.clone(),
        };
        if let Some(gateway) = config.gateway.as_ref().filter(|g| !g.ip_address.is_empty()) {
            subnet.gateway = Some(GatewayAddress {
                ip: host_address_in(&subnet, &gateway.ip_address, "gateway")?,
                mac: Mac::parse_unicast(&gateway.mac_address)
                    .map_err(|reason| format!("gateway: {reason}"))?,
            });
        }
        // A changed subnet must still hold the addresses handed out in it.
        for port in state.ports.specs() {
            for fixed in port.fixed_ips.iter().filter(|f| f.subnet_id == subnet.id) {
                if !cidr.contains(&fixed.ip) {
                    return Err(format!(
                        "port {} has address {} outside the new CIDR {cidr}",
                        port.id, fixed.ip
                    ));
                }
            }
        }
        Ok(subnet)
    }

    fn referenced_by(id: &str, state: &DesiredState) -> Option<String> {
        used_by::<Port>(state, |p| p.fixed_ips.iter().any(|f| f.subnet_id == id))
            .or_else(|| {
                used_by::<Neighbor>(state, |n| n.fixed_ips.iter().any(|f| *f.subnet_id == *id))
            })
            .or_else(|| used_by::<DhcpEntry>(state, |d| d.subnet_id == id))
            .or_else(|| {
                used_by::<Router>(state, |r| r.subnet_tables.iter().any(|t| t.subnet_id == id))
            })
    }
}

impl Validate for Port {
    fn parse(
        config: schema::PortConfiguration,
        op: OperationType,
        state: &DesiredState,
    ) -> Result<Self, String> {
        if op == OperationType::Create && config.update_type != UpdateType::Full as i32 {
            return Err("a port CREATE must carry update_type FULL".into());
        }
        check_text("name", &config.name)?;
        check_text("device_id", &config.device_id)?;
        check_text("device_owner", &config.device_owner)?;
        check_device_name(&config.id)?;
        vpc_of(state, &config.vpc_id)?;
        let mac = Mac::parse_unicast(&config.mac_address)?;
        if let Some(other) = state
            .ports
            .specs()
            .find(|p| p.id != config.id && p.vpc_id == config.vpc_id && p.mac == mac)
        {
            return Err(format!(
                "MAC {mac} is already used by port {} in this VPC",
                other.id
            ));
        }

        let mut fixed_ips = Vec::with_capacity(config.fixed_ips.len());
        for fixed in &config.fixed_ips {
            let subnet = subnet_of(state, &fixed.subnet_id)?;
            if subnet.vpc_id != config.vpc_id {
                return Err(format!(
                    "subnet {} belongs to VPC {}, not to the port's VPC {}",
                    subnet.id, subnet.vpc_id, config.vpc_id
                ));
            }
            let ip = host_address_in(subnet, &fixed.ip_address, "fixed IP")?;
            if subnet.gateway.is_some_and(|gateway| gateway.ip == ip) {
                return Err(format!(
                    "fixed IP {ip} is the gateway of subnet {}",
                    subnet.id
                ));
            }
            fixed_ips.push(FixedIp {
                subnet_id: subnet.id.clone(),
                ip,
            });
        }

        // Nova unbinds a port with an UPDATE clearing its device id and
        // owner; a port created without them is still bound (Alcor's
        // controller does not always send them).
        let binding = if !config.netns.is_empty() {
            Binding::Netns(NetnsRef::parse(&config.netns)?)
        } else if op == OperationType::Update
            && config.device_id.is_empty()
            && config.device_owner.is_empty()
        {
            Binding::Unbound
        } else {
            Binding::Tap
        };

        Ok(Port {
            id: config.id.clone(),
            vpc_id: config.vpc_id.clone(),
            name: config.name.clone(),
            mac,
            admin_state_up: config.admin_state_up,
            fixed_ips,
            allowed_address_pairs: address_pairs(&config.allow_address_pairs, mac)?,
            security_group_ids: config
                .security_group_ids
                .iter()
                .map(|group| check_id(&group.id).map(|()| group.id.clone()))
                .collect::<Result<_, _>>()?,
            binding,
        })
    }
}

/// The port id names its host-side device, so its first characters must be
/// valid in an interface name.
fn check_device_name(port_id: &str) -> Result<(), String> {
    let device = device_name(port_id);
    if device
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(())
    } else {
        Err(format!(
            "port id {port_id:?} does not give a valid device name ({device:?})"
        ))
    }
}

/// Checked on its own, a neighbor is whole but for the VPC and subnets it
/// names, which [`Validate::parse`] looks up.
impl Check for Neighbor {
    type Checked = Neighbor;

    fn check(config: schema::NeighborConfiguration) -> Result<Neighbor, String> {
        check_neighbor(
            &NeighborConfigurationRef::from(&config),
            &mut SharedIds::default(),
        )
    }
}

/// The ids of the VPCs and subnets the neighbors of a message name, each
/// kept once: ten thousand neighbors of a message usually name one VPC.
#[derive(Default)]
pub struct SharedIds<'a>(HashMap<&'a str, Arc<str>>);

impl<'a> SharedIds<'a> {
    fn get(&mut self, id: &'a str) -> Arc<str> {
        self.0.entry(id).or_insert_with(|| Arc::from(id)).clone()
    }
}

/// [`Check`]s a neighbor's configuration, decoded or read in place.
pub fn check_neighbor<'a>(
    config: &NeighborConfigurationRef<'a>,
    ids: &mut SharedIds<'a>,
) -> Result<Neighbor, String> {
    check_text("name", config.name)?;
    let mac = Mac::parse_unicast(config.mac_address)?;
    let host_mac = match config.host_mac_address {
        "" => None,
        text => Some(Mac::parse_unicast(text).map_err(|r| format!("host MAC: {r}"))?),
    };
    let host_ip = parse_ipv4(config.host_ip_address, "host_ip_address")?;
    let allowed_address_pairs = address_pairs(&config.allow_address_pairs, mac)?;
    let fixed_ips = config
        .fixed_ips
        .iter()
        .map(|fixed| {
            let kind: NeighborType = enum_value("neighbor_type", fixed.neighbor_type)?;
            Ok(NeighborIp {
                l3: kind == NeighborType::L3,
                ip: parse_ipv4(fixed.ip_address, "neighbor IP")?,
                subnet_id: ids.get(fixed.subnet_id),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Neighbor {
        vpc_id: ids.get(config.vpc_id),
        name: config.name.to_string(),
        mac,
        host_ip,
        host_mac,
        fixed_ips,
        allowed_address_pairs,
    })
}

impl Validate for Neighbor {
    fn parse(neighbor: Neighbor, _op: OperationType, state: &DesiredState) -> Result<Self, String> {
        vpc_of(state, &neighbor.vpc_id)?;
        for fixed in &neighbor.fixed_ips {
            let subnet = subnet_of(state, &fixed.subnet_id)?;
            check_host_address(subnet, fixed.ip, "neighbor IP")?;
        }
        Ok(neighbor)
    }
}

impl Validate for DhcpEntry {
    fn parse(
        config: schema::DhcpConfiguration,
        _op: OperationType,
        state: &DesiredState,
    ) -> Result<Self, String> {
        check_text("port_host_name", &config.port_host_name)?;
        let subnet = subnet_of(state, &config.subnet_id)?;
        let ipv6 = match config.ipv6_address.as_str() {
            "" => None,
            text => Some(
                text.parse()
                    .map_err(|_| format!("invalid IPv6 address {text:?}"))?,
            ),
        };
        Ok(DhcpEntry {
            id: config.id.clone(),
            subnet_id: subnet.id.clone(),
            mac: Mac::parse_unicast(&config.mac_address)?,
            ipv4: host_address_in(subnet, &config.ipv4_address, "DHCP address")?,
            ipv6,
            hostname: config.port_host_name.clone(),
        })
    }
}

impl Validate for Router {
    fn parse(
        config: schema::RouterConfiguration,
        _op: OperationType,
        state: &DesiredState,
    ) -> Result<Self, String> {
        let host_dvr_mac = match config.host_dvr_mac_address.as_str() {
            "" => None,
            text => Some(Mac::parse_unicast(text).map_err(|r| format!("host DVR MAC: {r}"))?),
        };
        let subnet_tables = config
            .subnet_routing_tables
            .iter()
            .map(|table| {
                let subnet = subnet_of(state, &table.subnet_id)?;
                let routes = table
                    .routing_rules
                    .iter()
                    .map(|rule| {
                        check_text("routing rule id", &rule.id)?;
                        check_text("routing rule name", &rule.name)?;
                        let destination: Ipv4Net = rule.destination.parse().map_err(|_| {
                            format!("invalid route destination {:?}", rule.destination)
                        })?;
                        let next_hop = match rule.next_hop_ip.as_str() {
                            "" => None,
                            text => Some(parse_ipv4(text, "next hop")?),
                        };
                        let extra = rule.routing_rule_extra_info.clone().unwrap_or_default();
                        let destination_type: DestinationType =
                            enum_value("destination_type", extra.destination_type)?;
                        let next_hop_mac = match extra.next_hop_mac.as_str() {
                            "" => None,
                            text => Some(text.parse::<Mac>()?),
                        };
                        Ok(Route {
                            id: rule.id.clone(),
                            name: rule.name.clone(),
                            destination: destination.trunc(),
                            next_hop,
                            next_hop_mac,
                            priority: rule.priority,
                            to_vpc_gateway: destination_type == DestinationType::VpcGw,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                Ok(SubnetRoutes {
                    subnet_id: subnet.id.clone(),
                    routes,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Router {
            id: config.id.clone(),
            host_dvr_mac,
            subnet_tables,
        })
    }
}

impl Validate for SecurityGroup {
    fn parse(
        config: schema::SecurityGroupConfiguration,
        _op: OperationType,
        state: &DesiredState,
    ) -> Result<Self, String> {
        check_text("name", &config.name)?;
        vpc_of(state, &config.vpc_id)?;
        let rules = config
            .security_group_rules
            .iter()
            .map(|rule| {
                check_id(&rule.id).map_err(|r| format!("rule {r}"))?;
                let direction: Direction = enum_value("direction", rule.direction)?;
                let ethertype: EtherType = enum_value("ethertype", rule.ethertype)?;
                let protocol = match enum_value("protocol", rule.protocol)? {
                    Protocol::Tcp => RuleProtocol::Tcp,
                    Protocol::Udp => RuleProtocol::Udp,
                    Protocol::Icmp => RuleProtocol::Icmp,
                    other => {
                        return Err(format!(
                            "protocol {} cannot be filtered by a security group rule",
                            other.as_str_name()
                        ));
                    }
                };
                let ports = match (rule.port_range_min, rule.port_range_max) {
                    (0, 0) => None,
                    (min, max) if min <= max && max <= u32::from(u16::MAX) => {
                        Some((min as u16, max as u16))
                    }
                    (min, max) => return Err(format!("invalid port range {min}-{max}")),
                };
                let remote_ip_prefix = match rule.remote_ip_prefix.as_str() {
                    "" => None,
                    text => Some(
                        text.parse::<IpNet>()
                            .map_err(|_| format!("invalid remote IP prefix {text:?}"))?,
                    ),
                };
                let remote_group_id = match rule.remote_group_id.as_str() {
                    "" => None,
                    id => Some(check_id(id).map(|()| id.to_string())?),
                };
                Ok(SecurityGroupRule {
                    id: rule.id.clone(),
                    ingress: direction == Direction::Ingress,
                    ipv6: ethertype == EtherType::Ipv6,
                    protocol,
                    ports,
                    remote_ip_prefix,
                    remote_group_id,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(SecurityGroup {
            id: config.id.clone(),
            vpc_id: config.vpc_id.clone(),
            name: config.name.clone(),
            rules,
        })
    }
}

impl Validate for Gateway {
    fn parse(
        config: schema::GatewayConfiguration,
        _op: OperationType,
        _state: &DesiredState,
    ) -> Result<Self, String> {
        let kind: GatewayType = enum_value("gateway_type", config.gateway_type)?;
        let destinations = config
            .destinations
            .iter()
            .map(|d| {
                Ok(GatewayAddress {
                    ip: parse_ipv4(&d.ip_address, "gateway destination")?,
                    mac: Mac::parse_unicast(&d.mac_address)?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Gateway {
            id: config.id.clone(),
            kind: kind as i32,
            destinations,
        })
    }
}

#[cfg(test)]
mod tests {
    use alcor_proto::schema::{port_configuration, subnet_configuration};

    use super::*;
    use crate::core::desired::Entry;

    fn vpc_config(vni: u32) -> schema::VpcConfiguration {
        schema::VpcConfiguration {
            id: "vpc-1".into(),
            cidr: "10.0.0.0/16".into(),
            tunnel_id: vni,
            ..Default::default()
        }
    }

    fn subnet_config() -> schema::SubnetConfiguration {
        schema::SubnetConfiguration {
            id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            cidr: "10.0.1.0/24".into(),
            gateway: Some(subnet_configuration::Gateway {
                ip_address: "10.0.1.1".into(),
                mac_address: "fa:16:3e:00:00:01".into(),
            }),
            ..Default::default()
        }
    }

    fn port_config(id: &str, ip: &str, mac: &str) -> schema::PortConfiguration {
        schema::PortConfiguration {
            id: id.into(),
            update_type: UpdateType::Full as i32,
            vpc_id: "vpc-1".into(),
            mac_address: mac.into(),
            fixed_ips: vec![port_configuration::FixedIp {
                subnet_id: "subnet-1".into(),
                ip_address: ip.into(),
            }],
            ..Default::default()
        }
    }

    fn parse<R: Validate>(config: R::Config, state: &DesiredState) -> Result<R, String> {
        R::parse(R::check(config)?, OperationType::Create, state)
    }

    fn add<R: Validate>(state: &mut DesiredState, id: &str, config: R::Config) {
        let spec = parse::<R>(config, state).unwrap();
        let entry = Entry::new(spec, OperationType::Create, 1, Box::default());
        R::table_mut(state).upsert(id.into(), entry);
    }

    /// A VPC with one subnet and one port, `web`, at 10.0.1.10.
    fn network() -> DesiredState {
        let mut state = DesiredState::default();
        add::<Vpc>(&mut state, "vpc-1", vpc_config(100));
        add::<Subnet>(&mut state, "subnet-1", subnet_config());
        add::<Port>(
            &mut state,
            "web",
            port_config("web", "10.0.1.10", "fa:16:3e:00:00:0a"),
        );
        state
    }

    fn refused<R: Validate + std::fmt::Debug>(config: R::Config, state: &DesiredState) -> String {
        parse::<R>(config, state).expect_err("refused")
    }

    #[test]
    fn ids_and_texts_must_be_present_bounded_and_printable() {
        assert_eq!(check_id(""), Err("id is empty".into()));
        assert!(check_id(&"x".repeat(MAX_TEXT_LEN)).is_ok());
        assert!(
            check_id(&"x".repeat(MAX_TEXT_LEN + 1))
                .unwrap_err()
                .contains("more than")
        );
        assert!(check_id("a\nb").unwrap_err().contains("control characters"));
    }

    #[test]
    fn a_port_address_must_be_a_host_address_of_its_subnet_and_not_its_gateway() {
        let state = network();
        let mac = "fa:16:3e:00:00:0b";
        for (ip, reason) in [
            ("10.0.2.5", "outside subnet subnet-1"),
            ("10.0.1.0", "not a host address"),
            ("10.0.1.255", "not a host address"),
            ("10.0.1.1", "is the gateway of subnet"),
            ("10.0.1", "fixed IP"),
        ] {
            let reason_given = refused::<Port>(port_config("db", ip, mac), &state);
            assert!(reason_given.contains(reason), "{ip}: {reason_given}");
        }
        assert!(parse::<Port>(port_config("db", "10.0.1.11", mac), &state).is_ok());
    }

    #[test]
    fn a_port_needs_a_known_vpc_and_subnet_a_unicast_mac_of_its_own_and_a_device_name() {
        let state = network();
        let ip = "10.0.1.11";
        let mut config = port_config("db", ip, "fa:16:3e:00:00:0b");
        config.vpc_id = "vpc-2".into();
        assert!(refused::<Port>(config, &state).contains("unknown VPC"));
        let mut config = port_config("db", ip, "fa:16:3e:00:00:0b");
        config.fixed_ips[0].subnet_id = "subnet-9".into();
        assert!(refused::<Port>(config, &state).contains("unknown subnet"));
        let multicast = port_config("db", ip, "01:00:5e:00:00:01");
        assert!(!refused::<Port>(multicast, &state).is_empty());
        let taken = port_config("db", ip, "fa:16:3e:00:00:0a");
        assert!(refused::<Port>(taken, &state).contains("already used by port web"));
        let odd = port_config("db/../x", ip, "fa:16:3e:00:00:0b");
        assert!(refused::<Port>(odd, &state).contains("valid device name"));
        let mut delta = port_config("db", ip, "fa:16:3e:00:00:0b");
        delta.update_type = UpdateType::Delta as i32;
        assert!(refused::<Port>(delta, &state).contains("update_type FULL"));
    }

    #[test]
    fn a_port_binds_to_its_namespace_to_a_tap_or_unbinds_on_an_update_without_owner() {
        let state = network();
        let mut config = port_config("db", "10.0.1.11", "fa:16:3e:00:00:0b");
        let bound = |config: &schema::PortConfiguration, op| {
            Port::parse(config.clone(), op, &state).unwrap().binding
        };
        assert_eq!(bound(&config, OperationType::Create), Binding::Tap);
        assert_eq!(bound(&config, OperationType::Update), Binding::Unbound);
        config.device_owner = "compute:nova".into();
        assert_eq!(bound(&config, OperationType::Update), Binding::Tap);
        config.netns = "vm-db".into();
        assert!(matches!(
            bound(&config, OperationType::Create),
            Binding::Netns(_)
        ));
    }

    #[test]
    fn a_vpc_keeps_its_tunnel_id_while_it_has_subnets() {
        let state = network();
        let reason = refused::<Vpc>(vpc_config(200), &state);
        assert!(reason.contains("subnet subnet-1"), "{reason}");
        assert!(parse::<Vpc>(vpc_config(100), &state).is_ok());
        let empty = DesiredState::default();
        assert!(parse::<Vpc>(vpc_config(200), &empty).is_ok());
        assert!(!refused::<Vpc>(vpc_config(1 << 24), &empty).is_empty());
    }

    #[test]
    fn a_subnet_must_be_vxlan_in_a_known_vpc() {
        let state = network();
        let mut vlan = subnet_config();
        vlan.network_type = NetworkType::Vlan as i32;
        assert!(refused::<Subnet>(vlan, &state).contains("only VXLAN"));
        let mut orphan = subnet_config();
        orphan.vpc_id = "vpc-9".into();
        assert!(refused::<Subnet>(orphan, &state).contains("unknown VPC"));
    }

    #[test]
    fn what_others_use_cannot_be_deleted() {
        let state = network();
        let subnet = Subnet::referenced_by("subnet-1", &state);
        assert!(subnet.is_some_and(|reason| reason == "still used by PORT web"));
        let vpc = Vpc::referenced_by("vpc-1", &state);
        assert!(vpc.is_some_and(|reason| reason == "still used by SUBNET subnet-1"));
        assert_eq!(Port::referenced_by("web", &state), None);
    }
}
