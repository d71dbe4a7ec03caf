//! Ports: a VM's (or a router's) attachment to a network, with its MAC and
//! fixed IPs.

use std::net::Ipv4Addr;

use alcor_types::{Mac, parse_ipv4};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Meta, Resource, network::MAX_TEXT};
use crate::{
    body::Attrs,
    error::{ApiError, ApiResult},
};

/// The `binding:profile` key that binds a port to a network namespace.
pub const NETNS_PROFILE_KEY: &str = "netns";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: Ipv4Addr,
}

/// An address (or prefix) and MAC the port may also send from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPair {
    /// An IPv4 address or prefix, as given.
    pub ip_address: String,
    /// The port's own MAC when not given.
    pub mac_address: Option<Mac>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    #[serde(flatten)]
    pub meta: Meta,
    pub network_id: String,
    pub mac_address: Mac,
    pub fixed_ips: Vec<FixedIp>,
    pub device_id: String,
    pub device_owner: String,
    pub admin_state_up: bool,
    /// `DOWN` until its host's agent has programmed it, then `ACTIVE`;
    /// `ERROR` when the agent refused it.
    pub status: String,
    /// Why the status is not `ACTIVE`, in the agent's words.
    #[serde(default)]
    pub status_detail: String,
    pub binding_host_id: String,
    pub binding_profile: Map<String, Value>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub security_groups: Vec<String>,
    pub port_security_enabled: bool,
}

impl Resource for Port {
    const KIND: &'static str = "port";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn view(&self) -> Value {
        let vif_type = if self.binding_host_id.is_empty() {
            "unbound"
        } else if self.binding_profile.contains_key(NETNS_PROFILE_KEY) {
            "netns"
        } else {
            "tap"
        };
        let vif_details = if self.status_detail.is_empty() {
            json!({})
        } else {
            json!({ "agent_status": self.status_detail })
        };
        self.meta.view_with(json!({
            "network_id": self.network_id,
            "mac_address": self.mac_address.to_string(),
            "fixed_ips": self.fixed_ips.iter().map(|fixed| json!({
                "subnet_id": fixed.subnet_id, "ip_address": fixed.ip_address.to_string(),
            })).collect::<Vec<_>>(),
            "device_id": self.device_id,
            "device_owner": self.device_owner,
            "admin_state_up": self.admin_state_up,
            "status": self.status,
            "binding:host_id": self.binding_host_id,
            "binding:profile": self.binding_profile,
            "binding:vif_type": vif_type,
            "binding:vif_details": vif_details,
            "binding:vnic_type": "normal",
            "allowed_address_pairs": self.allowed_address_pairs.iter().map(|pair| json!({
                "ip_address": pair.ip_address,
                "mac_address": pair.mac_address.unwrap_or(self.mac_address).to_string(),
            })).collect::<Vec<_>>(),
            "security_groups": self.security_groups,
            "port_security_enabled": self.port_security_enabled,
            "extra_dhcp_opts": [],
            "dns_name": "",
            "dns_assignment": [],
            "propagate_uplink_status": false,
        }))
    }
}

/// An address a create or update asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FixedIpRequest {
    /// Any free address of this subnet.
    Subnet(String),
    /// This address, of this subnet (or of the network's subnet that has it).
    Address {
        subnet_id: Option<String>,
        ip_address: Ipv4Addr,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct PortCreate {
    pub name: String,
    pub description: String,
    pub project_id: Option<String>,
    pub network_id: String,
    pub mac_address: Option<Mac>,
    /// `None`: one address from the network's first subnet with room.
    pub fixed_ips: Option<Vec<FixedIpRequest>>,
    pub device_id: String,
    pub device_owner: String,
    pub admin_state_up: bool,
    pub binding_host_id: String,
    pub binding_profile: Map<String, Value>,
    pub allowed_address_pairs: Vec<AddressPair>,
    pub security_groups: Option<Vec<String>>,
    pub port_security_enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub mac_address: Option<Mac>,
    pub fixed_ips: Option<Vec<FixedIpRequest>>,
    pub device_id: Option<String>,
    pub device_owner: Option<String>,
    pub admin_state_up: Option<bool>,
    pub binding_host_id: Option<String>,
    pub binding_profile: Option<Map<String, Value>>,
    pub allowed_address_pairs: Option<Vec<AddressPair>>,
    pub security_groups: Option<Vec<String>>,
    pub port_security_enabled: Option<bool>,
}

fn mac(attrs: &mut Attrs) -> ApiResult<Option<Mac>> {
    attrs
        .string("mac_address")?
        .map(|text| {
            Mac::parse_unicast(&text).map_err(|reason| {
                ApiError::invalid_input(format!("'{text}' is not a valid MAC address: {reason}"))
            })
        })
        .transpose()
}

fn fixed_ips(attrs: &mut Attrs) -> ApiResult<Option<Vec<FixedIpRequest>>> {
    attrs
        .list("fixed_ips")?
        .map(|items| fixed_ip_requests(&items))
        .transpose()
}

/// Addresses asked for as Neutron writes them: `{"subnet_id": …}`,
/// `{"ip_address": …}` or both (a port's `fixed_ips`, a router gateway's
/// `external_fixed_ips`).
pub fn fixed_ip_requests(items: &[Value]) -> ApiResult<Vec<FixedIpRequest>> {
    items
        .iter()
        .map(|item| {
            let Value::Object(map) = item else {
                return Err(ApiError::invalid_input(format!(
                    "fixed IP {item} is not a dictionary"
                )));
            };
            if let Some(unknown) = map
                .keys()
                .find(|key| !["subnet_id", "ip_address"].contains(&key.as_str()))
            {
                return Err(ApiError::invalid_input(format!(
                    "fixed IP {item} has an unknown key {unknown}"
                )));
            }
            let text = |name: &str| match map.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(other) => Err(ApiError::invalid_input(format!(
                    "'{other}' is not a valid {name}"
                ))),
            };
            let subnet_id = text("subnet_id")?;
            match text("ip_address")? {
                Some(ip) => Ok(FixedIpRequest::Address {
                    subnet_id,
                    ip_address: parse_ipv4(&ip, "ip_address").map_err(ApiError::invalid_input)?,
                }),
                None => subnet_id.map(FixedIpRequest::Subnet).ok_or_else(|| {
                    ApiError::invalid_input(format!(
                        "fixed IP {item} names neither a subnet nor an address"
                    ))
                }),
            }
        })
        .collect()
}

fn address_pairs(attrs: &mut Attrs) -> ApiResult<Option<Vec<AddressPair>>> {
    let Some(items) = attrs.list("allowed_address_pairs")? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|item| {
            let ip_address = item
                .get("ip_address")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid_input(format!("address pair {item} has no ip_address"))
                })?;
            let valid = ip_address.parse::<Ipv4Addr>().is_ok()
                || alcor_types::parse_ipv4_net(ip_address).is_ok();
            if !valid {
                return Err(ApiError::invalid_input(format!(
                    "'{ip_address}' is not a valid IPv4 address or prefix"
                )));
            }
            let mac_address = match item.get("mac_address") {
                None | Some(Value::Null) => None,
                Some(Value::String(text)) => {
                    Some(Mac::parse_unicast(text).map_err(ApiError::invalid_input)?)
                }
                Some(other) => {
                    return Err(ApiError::invalid_input(format!(
                        "'{other}' is not a valid MAC address"
                    )));
                }
            };
            Ok(AddressPair {
                ip_address: ip_address.to_string(),
                mac_address,
            })
        })
        .collect::<ApiResult<_>>()
        .map(Some)
}

/// `binding:vnic_type`: ports here are ordinary (tap or veth).
fn vnic_type(attrs: &mut Attrs) -> ApiResult<()> {
    match attrs.string("binding:vnic_type")?.as_deref() {
        None | Some("normal") => Ok(()),
        Some(other) => Err(ApiError::invalid_input(format!(
            "vnic type {other} is not supported: normal only"
        ))),
    }
}

impl PortCreate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<PortCreate> {
        attrs.read_only(&[
            "id",
            "status",
            "revision_number",
            "binding:vif_type",
            "binding:vif_details",
        ])?;
        let network_id = attrs.string("network_id")?.ok_or_else(|| {
            ApiError::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified",
            )
        })?;
        vnic_type(&mut attrs)?;
        let create = PortCreate {
            name: attrs.text("name", MAX_TEXT)?.unwrap_or_default(),
            description: attrs.text("description", MAX_TEXT)?.unwrap_or_default(),
            project_id: super::network::project(&mut attrs)?,
            network_id,
            mac_address: mac(&mut attrs)?,
            fixed_ips: fixed_ips(&mut attrs)?,
            device_id: attrs.text("device_id", MAX_TEXT)?.unwrap_or_default(),
            device_owner: attrs.text("device_owner", MAX_TEXT)?.unwrap_or_default(),
            admin_state_up: attrs.bool("admin_state_up")?.unwrap_or(true),
            binding_host_id: attrs.text("binding:host_id", MAX_TEXT)?.unwrap_or_default(),
            binding_profile: attrs.object("binding:profile")?.unwrap_or_default(),
            allowed_address_pairs: address_pairs(&mut attrs)?.unwrap_or_default(),
            security_groups: attrs.strings("security_groups")?,
            port_security_enabled: attrs.bool("port_security_enabled")?,
        };
        // No DNS integration or DHCP options per port: accepted when empty.
        for name in ["extra_dhcp_opts", "dns_assignment"] {
            if attrs.list(name)?.is_some_and(|list| !list.is_empty()) {
                return Err(ApiError::invalid_input(format!("{name} is not supported")));
            }
        }
        if attrs
            .string("dns_name")?
            .is_some_and(|name| !name.is_empty())
        {
            return Err(ApiError::invalid_input("dns_name is not supported"));
        }
        attrs.finish()?;
        Ok(create)
    }
}

impl PortCreate {
    /// A port the controller makes for a router or a floating IP.
    pub fn owned(
        network_id: &str,
        project_id: &str,
        device_owner: &str,
        device_id: &str,
        fixed_ips: Option<Vec<FixedIpRequest>>,
    ) -> PortCreate {
        PortCreate {
            name: String::new(),
            description: String::new(),
            project_id: Some(project_id.into()),
            network_id: network_id.into(),
            mac_address: None,
            fixed_ips,
            device_id: device_id.into(),
            device_owner: device_owner.into(),
            admin_state_up: true,
            binding_host_id: String::new(),
            binding_profile: Map::new(),
            allowed_address_pairs: Vec::new(),
            security_groups: None,
            port_security_enabled: None,
        }
    }
}

impl PortUpdate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<PortUpdate> {
        attrs.read_only(&[
            "id",
            "status",
            "revision_number",
            "network_id",
            "project_id",
            "tenant_id",
            "binding:vif_type",
            "binding:vif_details",
        ])?;
        vnic_type(&mut attrs)?;
        let update = PortUpdate {
            name: attrs.text("name", MAX_TEXT)?,
            description: attrs.text("description", MAX_TEXT)?,
            mac_address: mac(&mut attrs)?,
            fixed_ips: fixed_ips(&mut attrs)?,
            device_id: attrs.text("device_id", MAX_TEXT)?,
            device_owner: attrs.text("device_owner", MAX_TEXT)?,
            admin_state_up: attrs.bool("admin_state_up")?,
            binding_host_id: attrs.text("binding:host_id", MAX_TEXT)?,
            binding_profile: attrs.object("binding:profile")?,
            allowed_address_pairs: address_pairs(&mut attrs)?,
            security_groups: attrs.strings("security_groups")?,
            port_security_enabled: attrs.bool("port_security_enabled")?,
        };
        attrs.finish()?;
        Ok(update)
    }

    /// Applies what does not need the allocator (everything but the fixed
    /// IPs and the MAC); false if nothing changed.
    pub fn apply(&self, port: &mut Port) -> bool {
        let before = port.clone();
        let texts = [
            (&mut port.meta.name, &self.name),
            (&mut port.meta.description, &self.description),
            (&mut port.device_id, &self.device_id),
            (&mut port.device_owner, &self.device_owner),
            (&mut port.binding_host_id, &self.binding_host_id),
        ];
        for (field, value) in texts {
            if let Some(value) = value {
                field.clone_from(value);
            }
        }
        for (field, value) in [
            (&mut port.admin_state_up, self.admin_state_up),
            (&mut port.port_security_enabled, self.port_security_enabled),
        ] {
            if let Some(value) = value {
                *field = value;
            }
        }
        if let Some(profile) = &self.binding_profile {
            port.binding_profile.clone_from(profile);
        }
        if let Some(pairs) = &self.allowed_address_pairs {
            port.allowed_address_pairs.clone_from(pairs);
        }
        if let Some(groups) = &self.security_groups {
            port.security_groups.clone_from(groups);
        }
        *port != before
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::body::resource;

    fn create(body: Value) -> ApiResult<PortCreate> {
        PortCreate::parse(resource(&body, "port").unwrap())
    }

    #[test]
    fn a_create_reads_what_the_cli_sends() {
        let create = create(json!({"port": {
            "network_id": "n", "name": "vm1", "mac_address": "FA:16:3E:00:00:01",
            "fixed_ips": [{"subnet_id": "s", "ip_address": "10.0.0.5"}, {"subnet_id": "s2"}],
            "binding:host_id": "h1", "binding:profile": {"netns": "vm1"},
            "allowed_address_pairs": [{"ip_address": "10.0.0.100/30"}],
            "admin_state_up": true, "device_owner": "compute:nova",
        }}))
        .unwrap();
        assert_eq!(create.mac_address.unwrap().to_string(), "fa:16:3e:00:00:01");
        assert_eq!(
            create.fixed_ips.unwrap(),
            [
                FixedIpRequest::Address {
                    subnet_id: Some("s".into()),
                    ip_address: "10.0.0.5".parse().unwrap()
                },
                FixedIpRequest::Subnet("s2".into()),
            ]
        );
        assert_eq!(create.binding_profile["netns"], "vm1");
        assert_eq!(create.allowed_address_pairs[0].mac_address, None);
    }

    #[test]
    fn bad_ports_are_refused_with_a_reason() {
        for body in [
            json!({"port": {}}),
            json!({"port": {"network_id": "n", "mac_address": "01:00:5e:00:00:01"}}),
            json!({"port": {"network_id": "n", "mac_address": "nope"}}),
            json!({"port": {"network_id": "n", "fixed_ips": [{}]}}),
            json!({"port": {"network_id": "n", "fixed_ips": [{"ip_address": "10.0.0.300"}]}}),
            json!({"port": {"network_id": "n", "fixed_ips": [{"subnet": "s"}]}}),
            json!({"port": {"network_id": "n", "allowed_address_pairs": [{"ip_address": "x"}]}}),
            json!({"port": {"network_id": "n", "binding:vnic_type": "direct"}}),
            json!({"port": {"network_id": "n", "binding:profile": "netns=x"}}),
            json!({"port": {"network_id": "n", "status": "ACTIVE"}}),
        ] {
            let error = create(body.clone()).unwrap_err();
            assert_eq!(error.status, 400, "{body}: {error}");
        }
    }
}
