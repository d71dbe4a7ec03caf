//! Floating IPs: an address of an external network, held by a port of
//! that network (as Neutron's are), and the fixed IP of a port it stands
//! for when associated.

use std::net::Ipv4Addr;

use alcor_types::parse_ipv4;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Meta, Resource, network::MAX_TEXT};
use crate::{
    body::Attrs,
    error::{ApiError, ApiResult},
};

/// The `device_owner` of the port that holds a floating IP's address.
pub const FLOATING_IP_OWNER: &str = "network:floatingip";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    /// Floating IPs have no name: `meta.name` stays empty and is not shown.
    #[serde(flatten)]
    pub meta: Meta,
    pub floating_network_id: String,
    pub floating_ip_address: Ipv4Addr,
    /// The port on the external network that holds the address (not
    /// shown; its `device_id` is this floating IP).
    pub floating_port_id: String,
    pub association: Option<Association>,
}

/// The port a floating IP stands for, and the router that reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Association {
    pub port_id: String,
    pub fixed_ip_address: Ipv4Addr,
    /// The subnet of the fixed IP (not shown): the router's interface on
    /// it cannot go while the floating IP needs it.
    pub subnet_id: String,
    pub router_id: String,
}

impl Resource for FloatingIp {
    const KIND: &'static str = "floatingip";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn view(&self) -> Value {
        let association = self.association.as_ref();
        self.meta.unnamed_view_with(json!({
            "floating_network_id": self.floating_network_id,
            "floating_ip_address": self.floating_ip_address.to_string(),
            "port_id": association.map(|a| &a.port_id),
            "fixed_ip_address": association.map(|a| a.fixed_ip_address.to_string()),
            "router_id": association.map(|a| &a.router_id),
            // Until the datapath enforces it.
            "status": "DOWN",
        }))
    }
}

/// The port (and which of its addresses) a create or update associates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub port_id: String,
    /// `None`: the port's only IPv4 address.
    pub fixed_ip_address: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FloatingIpCreate {
    pub description: String,
    pub project_id: Option<String>,
    pub floating_network_id: String,
    /// The subnet of the external network to take the address from.
    pub subnet_id: Option<String>,
    pub floating_ip_address: Option<Ipv4Addr>,
    pub target: Option<Target>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FloatingIpUpdate {
    pub description: Option<String>,
    /// `Some(None)`: disassociate (`"port_id": null`).
    pub target: Option<Option<Target>>,
}

fn address(attrs: &mut Attrs, name: &str) -> ApiResult<Option<Ipv4Addr>> {
    attrs
        .string(name)?
        .map(|text| parse_ipv4(&text, name).map_err(ApiError::invalid_input))
        .transpose()
}

/// `port_id` and `fixed_ip_address`: `None` if the body has no
/// `port_id`, `Some(None)` if it is null.
fn target(attrs: &mut Attrs) -> ApiResult<Option<Option<Target>>> {
    let port = attrs.nullable_string("port_id")?;
    let fixed_ip_address = address(attrs, "fixed_ip_address")?;
    match port {
        Some(Some(port_id)) => Ok(Some(Some(Target {
            port_id,
            fixed_ip_address,
        }))),
        _ if fixed_ip_address.is_some() => Err(ApiError::bad_request(
            "Bad floatingip request: fixed_ip_address cannot be specified without a port_id.",
        )),
        other => Ok(other.map(|_| None)),
    }
}

impl FloatingIpCreate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<FloatingIpCreate> {
        attrs.read_only(&["id", "status", "revision_number", "router_id"])?;
        let floating_network_id = attrs.string("floating_network_id")?.ok_or_else(|| {
            ApiError::bad_request(
                "Failed to parse request. Required attribute 'floating_network_id' not specified",
            )
        })?;
        let create = FloatingIpCreate {
            description: attrs.text("description", MAX_TEXT)?.unwrap_or_default(),
            project_id: super::network::project(&mut attrs)?,
            floating_network_id,
            subnet_id: attrs.string("subnet_id")?,
            floating_ip_address: address(&mut attrs, "floating_ip_address")?,
            target: target(&mut attrs)?.flatten(),
        };
        attrs.finish()?;
        Ok(create)
    }
}

impl FloatingIpUpdate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<FloatingIpUpdate> {
        attrs.read_only(&[
            "id",
            "status",
            "revision_number",
            "router_id",
            "project_id",
            "tenant_id",
            "floating_network_id",
            "floating_ip_address",
        ])?;
        let update = FloatingIpUpdate {
            description: attrs.text("description", MAX_TEXT)?,
            target: target(&mut attrs)?,
        };
        attrs.finish()?;
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::body::resource;

    #[test]
    fn creates_and_updates_read_what_the_cli_sends() {
        let create = FloatingIpCreate::parse(
            resource(
                &json!({"floatingip": {"floating_network_id": "ext", "port_id": "p",
                    "fixed_ip_address": "10.0.0.5", "floating_ip_address": "203.0.113.9"}}),
                "floatingip",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            create.target,
            Some(Target {
                port_id: "p".into(),
                fixed_ip_address: Some("10.0.0.5".parse().unwrap())
            })
        );
        let update = |body: Value| {
            FloatingIpUpdate::parse(resource(&json!({ "floatingip": body }), "floatingip").unwrap())
        };
        assert_eq!(update(json!({"port_id": null})).unwrap().target, Some(None));
        assert_eq!(update(json!({"description": "d"})).unwrap().target, None);
        for refused in [
            json!({"fixed_ip_address": "10.0.0.5"}),
            json!({"floating_ip_address": "203.0.113.10"}),
            json!({"port_id": 5}),
        ] {
            assert_eq!(
                update(refused.clone()).unwrap_err().status,
                400,
                "{refused}"
            );
        }
        let missing =
            FloatingIpCreate::parse(resource(&json!({"floatingip": {}}), "floatingip").unwrap());
        assert_eq!(missing.unwrap_err().status, 400);
    }

    #[test]
    fn the_view_is_neutrons() {
        let mut fip = FloatingIp {
            meta: Meta::new(String::new(), String::new(), "p".into()),
            floating_network_id: "ext".into(),
            floating_ip_address: "203.0.113.9".parse().unwrap(),
            floating_port_id: "fp".into(),
            association: None,
        };
        let view = fip.view();
        assert_eq!(
            (view["port_id"].clone(), view["router_id"].clone()),
            (Value::Null, Value::Null)
        );
        assert!(view.get("name").is_none() && view.get("floating_port_id").is_none());
        fip.association = Some(Association {
            port_id: "vm".into(),
            fixed_ip_address: "10.0.0.5".parse().unwrap(),
            subnet_id: "s".into(),
            router_id: "r".into(),
        });
        let view = fip.view();
        assert_eq!(view["fixed_ip_address"], "10.0.0.5");
        assert_eq!(view["router_id"], "r");
        assert_eq!(view["status"], "DOWN");
    }
}
