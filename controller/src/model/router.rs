//! Routers: L3 between a project's subnets, through their interfaces
//! (ports on those subnets, each with the subnet's gateway address), and
//! out of them through a gateway (a port on an external network).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    Meta, Port, Resource,
    network::MAX_TEXT,
    port::{FixedIp, FixedIpRequest, fixed_ip_requests},
};
use crate::{
    body::Attrs,
    error::{ApiError, ApiResult},
};

/// The `device_owner` of a router's interface ports.
pub const ROUTER_INTERFACE: &str = "network:router_interface";
/// The `device_owner` of a router's gateway port.
pub const ROUTER_GATEWAY: &str = "network:router_gateway";

/// Where a router leaves for an external network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub network_id: String,
    pub enable_snat: bool,
    /// The gateway port, which holds the addresses.
    pub port_id: String,
    /// The gateway port's addresses, as shown (the port is changed only
    /// through the router, so this copy stays true).
    pub external_fixed_ips: Vec<FixedIp>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    #[serde(flatten)]
    pub meta: Meta,
    pub admin_state_up: bool,
    pub gateway: Option<Gateway>,
    /// Its interface ports, in the order they were added. The ports say
    /// which subnets they are on.
    pub interfaces: Vec<String>,
}

impl Resource for Router {
    const KIND: &'static str = "router";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn view(&self) -> Value {
        let gateway = self.gateway.as_ref().map(|gateway| {
            json!({
                "network_id": gateway.network_id,
                "enable_snat": gateway.enable_snat,
                "external_fixed_ips": gateway.external_fixed_ips.iter().map(|fixed| json!({
                    "subnet_id": fixed.subnet_id, "ip_address": fixed.ip_address.to_string(),
                })).collect::<Vec<_>>(),
            })
        });
        self.meta.view_with(json!({
            "admin_state_up": self.admin_state_up,
            "status": "ACTIVE",
            "external_gateway_info": gateway,
            "routes": [],
            "availability_zone_hints": [],
            "availability_zones": [],
        }))
    }
}

/// The gateway a create or update asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRequest {
    pub network_id: String,
    /// Neutron's default is true.
    pub enable_snat: Option<bool>,
    /// `None`: an address of the network's first subnet with room.
    pub external_fixed_ips: Option<Vec<FixedIpRequest>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterCreate {
    pub name: String,
    pub description: String,
    pub project_id: Option<String>,
    pub admin_state_up: bool,
    pub gateway: Option<GatewayRequest>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub admin_state_up: Option<bool>,
    /// `Some(None)`: remove the gateway (`null` or `{}`).
    pub gateway: Option<Option<GatewayRequest>>,
}

/// `external_gateway_info`: absent, cleared (`null`, `{}`, or without a
/// network, as Neutron reads it), or a gateway.
fn gateway(attrs: &mut Attrs) -> ApiResult<Option<Option<GatewayRequest>>> {
    if !attrs.has("external_gateway_info") {
        return Ok(None);
    }
    let Some(mut info) = attrs.object("external_gateway_info")? else {
        return Ok(Some(None));
    };
    let invalid = |what: &str| {
        ApiError::invalid_input(format!(
            "{what} is not valid in external_gateway_info of router"
        ))
    };
    let network_id = match info.remove("network_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(other) => return Err(invalid(&other.to_string())),
    };
    let enable_snat = match info.remove("enable_snat") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(snat)) => Some(snat),
        Some(other) => return Err(invalid(&other.to_string())),
    };
    let external_fixed_ips = match info.remove("external_fixed_ips") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(fixed_ip_requests(&items)?),
        Some(other) => return Err(invalid(&other.to_string())),
    };
    if let Some(unknown) = info.keys().next() {
        return Err(invalid(unknown));
    }
    Ok(Some(network_id.map(|network_id| GatewayRequest {
        network_id,
        enable_snat,
        external_fixed_ips,
    })))
}

/// `routes` (the extraroute extension, not served): only none.
fn no_routes(attrs: &mut Attrs) -> ApiResult<()> {
    if attrs
        .list("routes")?
        .is_some_and(|routes| !routes.is_empty())
    {
        return Err(ApiError::invalid_input("static routes are not supported"));
    }
    Ok(())
}

impl RouterCreate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<RouterCreate> {
        attrs.read_only(&["id", "status", "revision_number"])?;
        no_routes(&mut attrs)?;
        let create = RouterCreate {
            name: attrs.text("name", MAX_TEXT)?.unwrap_or_default(),
            description: attrs.text("description", MAX_TEXT)?.unwrap_or_default(),
            project_id: super::network::project(&mut attrs)?,
            admin_state_up: attrs.bool("admin_state_up")?.unwrap_or(true),
            gateway: gateway(&mut attrs)?.flatten(),
        };
        // Accepted and ignored: one availability zone.
        attrs.list("availability_zone_hints")?;
        attrs.finish()?;
        Ok(create)
    }
}

impl RouterUpdate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<RouterUpdate> {
        attrs.read_only(&["id", "status", "revision_number", "project_id", "tenant_id"])?;
        no_routes(&mut attrs)?;
        let update = RouterUpdate {
            name: attrs.text("name", MAX_TEXT)?,
            description: attrs.text("description", MAX_TEXT)?,
            admin_state_up: attrs.bool("admin_state_up")?,
            gateway: gateway(&mut attrs)?,
        };
        attrs.finish()?;
        Ok(update)
    }

    /// Applies what is the router's own (not the gateway, which has a
    /// port); false if nothing changed.
    pub fn apply(&self, router: &mut Router) -> bool {
        let before = router.clone();
        if let Some(name) = &self.name {
            router.meta.name = name.clone();
        }
        if let Some(description) = &self.description {
            router.meta.description = description.clone();
        }
        if let Some(up) = self.admin_state_up {
            router.admin_state_up = up;
        }
        *router != before
    }
}

/// What `add_router_interface` and `remove_router_interface` answer: the
/// router's id and the interface port.
pub fn interface_info(router_id: &str, port: &Port) -> Value {
    let subnets: Vec<&str> = port
        .fixed_ips
        .iter()
        .map(|fixed| fixed.subnet_id.as_str())
        .collect();
    json!({
        "id": router_id,
        "tenant_id": port.meta.project_id,
        "project_id": port.meta.project_id,
        "port_id": port.meta.id,
        "network_id": port.network_id,
        "subnet_id": subnets.first(),
        "subnet_ids": subnets,
    })
}

/// What `add_router_interface` and `remove_router_interface` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterfaceRequest {
    Subnet(String),
    Port(String),
}

/// Neutron's 400 for a router request that cannot be done.
pub fn bad_router_request(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(400, "BadRequest", format!("Bad router request: {message}."))
}

impl InterfaceRequest {
    /// The body of an interface request: `{"subnet_id": …}` or
    /// `{"port_id": …}`, one of them.
    pub fn parse(body: &Value) -> ApiResult<InterfaceRequest> {
        let map = match body {
            Value::Object(map) => map.clone(),
            _ => Map::new(),
        };
        let mut attrs = Attrs::new("router", map);
        let subnet = attrs.string("subnet_id")?;
        let port = attrs.string("port_id")?;
        attrs.finish()?;
        match (subnet, port) {
            (Some(_), Some(_)) => Err(bad_router_request(
                "Cannot specify both subnet-id and port-id",
            )),
            (Some(subnet), None) => Ok(InterfaceRequest::Subnet(subnet)),
            (None, Some(port)) => Ok(InterfaceRequest::Port(port)),
            (None, None) => Err(bad_router_request(
                "Either subnet_id or port_id must be specified",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::body::resource;

    fn create(body: Value) -> ApiResult<RouterCreate> {
        RouterCreate::parse(resource(&json!({ "router": body }), "router").unwrap())
    }

    #[test]
    fn a_create_reads_the_gateway_as_the_cli_sends_it() {
        let parsed = create(json!({"name": "r", "external_gateway_info": {
            "network_id": "ext", "enable_snat": false,
            "external_fixed_ips": [{"ip_address": "203.0.113.5"}],
        }}))
        .unwrap();
        let gateway = parsed.gateway.unwrap();
        assert_eq!(
            (gateway.network_id.as_str(), gateway.enable_snat),
            ("ext", Some(false))
        );
        assert_eq!(gateway.external_fixed_ips.unwrap().len(), 1);
        assert_eq!(
            create(json!({"external_gateway_info": {}}))
                .unwrap()
                .gateway,
            None
        );
        for refused in [
            json!({"routes": [{"destination": "10.1.0.0/24", "nexthop": "10.0.0.9"}]}),
            json!({"external_gateway_info": {"network_id": "ext", "colour": 1}}),
            json!({"external_gateway_info": "ext"}),
            json!({"distributed": true}),
            json!({"status": "DOWN"}),
        ] {
            assert_eq!(
                create(refused.clone()).unwrap_err().status,
                400,
                "{refused}"
            );
        }
    }

    #[test]
    fn an_update_clears_the_gateway_with_null_or_nothing() {
        let update = |body: Value| {
            RouterUpdate::parse(resource(&json!({ "router": body }), "router").unwrap()).unwrap()
        };
        assert_eq!(
            update(json!({"external_gateway_info": null})).gateway,
            Some(None)
        );
        assert_eq!(
            update(json!({"external_gateway_info": {}})).gateway,
            Some(None)
        );
        assert_eq!(update(json!({"name": "x"})).gateway, None);
    }

    #[test]
    fn an_interface_names_a_subnet_or_a_port() {
        assert_eq!(
            InterfaceRequest::parse(&json!({"subnet_id": "s"})).unwrap(),
            InterfaceRequest::Subnet("s".into())
        );
        assert_eq!(
            InterfaceRequest::parse(&json!({"port_id": "p"})).unwrap(),
            InterfaceRequest::Port("p".into())
        );
        for refused in [
            json!({}),
            json!(null),
            json!({"subnet_id": "s", "port_id": "p"}),
        ] {
            let error = InterfaceRequest::parse(&refused).unwrap_err();
            assert_eq!((error.status, error.kind), (400, "BadRequest"), "{refused}");
        }
    }
}
