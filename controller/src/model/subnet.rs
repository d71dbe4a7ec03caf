//! Subnets: an IPv4 range of a network, the pools its ports' addresses
//! are allocated from, and what DHCP tells the VMs.

use std::net::Ipv4Addr;

use alcor_types::{Ipv4Net, parse_ipv4, parse_ipv4_net};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Meta, Resource, network::MAX_TEXT};
use crate::{
    body::Attrs,
    error::{ApiError, ApiResult},
};

/// An inclusive range of addresses ports are given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&ip)
    }

    pub fn size(&self) -> u64 {
        u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoute {
    pub destination: Ipv4Net,
    pub nexthop: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subnet {
    #[serde(flatten)]
    pub meta: Meta,
    pub network_id: String,
    pub cidr: Ipv4Net,
    pub gateway_ip: Option<Ipv4Addr>,
    pub allocation_pools: Vec<Pool>,
    pub dns_nameservers: Vec<Ipv4Addr>,
    pub host_routes: Vec<HostRoute>,
    pub enable_dhcp: bool,
    /// Being deleted: no address may be allocated from it (not shown).
    #[serde(default)]
    pub deleting: bool,
}

impl Resource for Subnet {
    const KIND: &'static str = "subnet";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn view(&self) -> Value {
        self.meta.view_with(json!({
            "network_id": self.network_id,
            "ip_version": 4,
            "cidr": self.cidr.to_string(),
            "gateway_ip": self.gateway_ip.map(|ip| ip.to_string()),
            "allocation_pools": self.allocation_pools.iter().map(|pool| json!({
                "start": pool.start.to_string(), "end": pool.end.to_string(),
            })).collect::<Vec<_>>(),
            "dns_nameservers": self.dns_nameservers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "host_routes": self.host_routes.iter().map(|route| json!({
                "destination": route.destination.to_string(), "nexthop": route.nexthop.to_string(),
            })).collect::<Vec<_>>(),
            "enable_dhcp": self.enable_dhcp,
            "ipv6_ra_mode": null,
            "ipv6_address_mode": null,
            "subnetpool_id": null,
            "segment_id": null,
            "service_types": [],
            "dns_publish_fixed_ip": false,
        }))
    }
}

impl Subnet {
    /// Whether a port may be given `ip`: in the subnet, neither its network
    /// nor broadcast address, nor the gateway.
    pub fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(&ip)
            && (self.cidr.prefix_len() >= 31
                || (ip != self.cidr.network() && ip != self.cidr.broadcast()))
            && Some(ip) != self.gateway_ip
    }

    /// Checks the subnet on its own: gateway, pools, routes.
    pub fn validate(&self) -> ApiResult<()> {
        if let Some(gateway) = self.gateway_ip {
            if !self.cidr.contains(&gateway)
                || self.cidr.network() == gateway && self.cidr.prefix_len() < 31
            {
                return Err(ApiError::invalid_input(format!(
                    "gateway {gateway} is not a host address of {}",
                    self.cidr
                )));
            }
            if self
                .allocation_pools
                .iter()
                .any(|pool| pool.contains(gateway))
            {
                return Err(ApiError::conflict(
                    "GatewayConflictWithAllocationPools",
                    format!("Gateway ip {gateway} conflicts with allocation pool"),
                ));
            }
        }
        let mut pools = self.allocation_pools.clone();
        pools.sort_by_key(|pool| pool.start);
        for pool in &pools {
            let inside =
                |ip: Ipv4Addr| self.cidr.contains(&ip) && self.assignable_ignoring_gateway(ip);
            if pool.start > pool.end || !inside(pool.start) || !inside(pool.end) {
                return Err(ApiError::bad_request(format!(
                    "The allocation pool {}-{} spans beyond the subnet cidr {}.",
                    pool.start, pool.end, self.cidr
                )));
            }
        }
        if let Some(pair) = pools.windows(2).find(|pair| pair[1].start <= pair[0].end) {
            return Err(ApiError::bad_request(format!(
                "Found overlapping allocation pools: {}-{} and {}-{}",
                pair[0].start, pair[0].end, pair[1].start, pair[1].end
            )));
        }
        Ok(())
    }

    fn assignable_ignoring_gateway(&self, ip: Ipv4Addr) -> bool {
        self.cidr.prefix_len() >= 31 || (ip != self.cidr.network() && ip != self.cidr.broadcast())
    }
}

/// The default pools: every host address but the gateway's.
pub fn default_pools(cidr: Ipv4Net, gateway: Option<Ipv4Addr>) -> Vec<Pool> {
    let (first, last) = if cidr.prefix_len() >= 31 {
        (cidr.network(), cidr.broadcast())
    } else {
        (
            Ipv4Addr::from(u32::from(cidr.network()) + 1),
            Ipv4Addr::from(u32::from(cidr.broadcast()) - 1),
        )
    };
    let whole = Pool {
        start: first,
        end: last,
    };
    match gateway.filter(|gateway| whole.contains(*gateway)) {
        None => vec![whole],
        Some(gateway) => {
            let gateway = u32::from(gateway);
            let mut pools = Vec::new();
            if gateway > u32::from(first) {
                pools.push(Pool {
                    start: first,
                    end: Ipv4Addr::from(gateway - 1),
                });
            }
            if gateway < u32::from(last) {
                pools.push(Pool {
                    start: Ipv4Addr::from(gateway + 1),
                    end: last,
                });
            }
            pools
        }
    }
}

/// What a create asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetCreate {
    pub name: String,
    pub description: String,
    pub project_id: Option<String>,
    pub network_id: String,
    pub cidr: Ipv4Net,
    /// `None`: the first host address; `Some(None)`: no gateway.
    pub gateway_ip: Option<Option<Ipv4Addr>>,
    pub allocation_pools: Option<Vec<Pool>>,
    pub dns_nameservers: Vec<Ipv4Addr>,
    pub host_routes: Vec<HostRoute>,
    pub enable_dhcp: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubnetUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub gateway_ip: Option<Option<Ipv4Addr>>,
    pub allocation_pools: Option<Vec<Pool>>,
    pub dns_nameservers: Option<Vec<Ipv4Addr>>,
    pub host_routes: Option<Vec<HostRoute>>,
    pub enable_dhcp: Option<bool>,
}

fn address(text: &str, what: &str) -> ApiResult<Ipv4Addr> {
    parse_ipv4(text, what).map_err(ApiError::invalid_input)
}

fn gateway(attrs: &mut Attrs) -> ApiResult<Option<Option<Ipv4Addr>>> {
    attrs
        .nullable_string("gateway_ip")?
        .map(|gateway| gateway.map(|text| address(&text, "gateway_ip")).transpose())
        .transpose()
}

fn pools(attrs: &mut Attrs) -> ApiResult<Option<Vec<Pool>>> {
    let Some(items) = attrs.list("allocation_pools")? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|item| {
            let field = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid_input(format!("allocation pool {item} has no {name}"))
                    })
                    .and_then(|text| address(text, "allocation_pools"))
            };
            Ok(Pool {
                start: field("start")?,
                end: field("end")?,
            })
        })
        .collect::<ApiResult<_>>()
        .map(Some)
}

fn nameservers(attrs: &mut Attrs) -> ApiResult<Option<Vec<Ipv4Addr>>> {
    attrs
        .strings("dns_nameservers")?
        .map(|servers| {
            servers
                .iter()
                .map(|text| address(text, "dns_nameservers"))
                .collect()
        })
        .transpose()
}

fn routes(attrs: &mut Attrs) -> ApiResult<Option<Vec<HostRoute>>> {
    let Some(items) = attrs.list("host_routes")? else {
        return Ok(None);
    };
    items
        .iter()
        .map(|item| {
            let field = |name: &str| {
                item.get(name).and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid_input(format!("host route {item} has no {name}"))
                })
            };
            Ok(HostRoute {
                destination: parse_ipv4_net(field("destination")?)
                    .map_err(ApiError::invalid_input)?,
                nexthop: address(field("nexthop")?, "host_routes")?,
            })
        })
        .collect::<ApiResult<_>>()
        .map(Some)
}

impl SubnetCreate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<SubnetCreate> {
        attrs.read_only(&["id", "revision_number"])?;
        match attrs.integer("ip_version")? {
            None | Some(4) => {}
            Some(version) => {
                return Err(ApiError::invalid_input(format!(
                    "IP version {version} is not supported: IPv4 only"
                )));
            }
        }
        let network_id = attrs.string("network_id")?.ok_or_else(|| {
            ApiError::bad_request(
                "Failed to parse request. Required attribute 'network_id' not specified",
            )
        })?;
        let cidr = attrs.string("cidr")?.ok_or_else(|| {
            ApiError::bad_request(
                "Failed to parse request. Required attribute 'cidr' not specified",
            )
        })?;
        let cidr = parse_ipv4_net(&cidr).map_err(ApiError::invalid_input)?;
        let create = SubnetCreate {
            name: attrs.text("name", MAX_TEXT)?.unwrap_or_default(),
            description: attrs.text("description", MAX_TEXT)?.unwrap_or_default(),
            project_id: super::network::project(&mut attrs)?,
            network_id,
            cidr,
            gateway_ip: gateway(&mut attrs)?,
            allocation_pools: pools(&mut attrs)?,
            dns_nameservers: nameservers(&mut attrs)?.unwrap_or_default(),
            host_routes: routes(&mut attrs)?.unwrap_or_default(),
            enable_dhcp: attrs.bool("enable_dhcp")?.unwrap_or(true),
        };
        // What IPv6 or subnet pools would use: accepted when empty.
        for name in [
            "ipv6_ra_mode",
            "ipv6_address_mode",
            "subnetpool_id",
            "segment_id",
        ] {
            if attrs.string(name)?.is_some() {
                return Err(ApiError::invalid_input(format!("{name} is not supported")));
            }
        }
        attrs.list("service_types")?;
        attrs.finish()?;
        Ok(create)
    }

    /// The subnet it makes (`meta` given by the caller).
    pub fn subnet(self, meta: Meta) -> ApiResult<Subnet> {
        let gateway_ip = match self.gateway_ip {
            Some(gateway) => gateway,
            None => default_pools(self.cidr, None)
                .first()
                .map(|pool| pool.start),
        };
        let allocation_pools = self
            .allocation_pools
            .unwrap_or_else(|| default_pools(self.cidr, gateway_ip));
        let subnet = Subnet {
            meta,
            network_id: self.network_id,
            cidr: self.cidr,
            gateway_ip,
            allocation_pools,
            dns_nameservers: self.dns_nameservers,
            host_routes: self.host_routes,
            enable_dhcp: self.enable_dhcp,
            deleting: false,
        };
        subnet.validate()?;
        Ok(subnet)
    }
}

impl SubnetUpdate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<SubnetUpdate> {
        attrs.read_only(&[
            "id",
            "revision_number",
            "network_id",
            "cidr",
            "ip_version",
            "project_id",
            "tenant_id",
        ])?;
        let update = SubnetUpdate {
            name: attrs.text("name", MAX_TEXT)?,
            description: attrs.text("description", MAX_TEXT)?,
            gateway_ip: gateway(&mut attrs)?,
            allocation_pools: pools(&mut attrs)?,
            dns_nameservers: nameservers(&mut attrs)?,
            host_routes: routes(&mut attrs)?,
            enable_dhcp: attrs.bool("enable_dhcp")?,
        };
        attrs.finish()?;
        Ok(update)
    }

    /// Applies the update and checks the result; false if nothing changed.
    pub fn apply(&self, subnet: &mut Subnet) -> ApiResult<bool> {
        let before = subnet.clone();
        if let Some(name) = &self.name {
            subnet.meta.name = name.clone();
        }
        if let Some(description) = &self.description {
            subnet.meta.description = description.clone();
        }
        if let Some(gateway) = self.gateway_ip {
            subnet.gateway_ip = gateway;
        }
        if let Some(pools) = &self.allocation_pools {
            subnet.allocation_pools = pools.clone();
        }
        if let Some(servers) = &self.dns_nameservers {
            subnet.dns_nameservers = servers.clone();
        }
        if let Some(routes) = &self.host_routes {
            subnet.host_routes = routes.clone();
        }
        if let Some(dhcp) = self.enable_dhcp {
            subnet.enable_dhcp = dhcp;
        }
        subnet.validate()?;
        Ok(*subnet != before)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::body::resource;

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    fn create(body: Value) -> ApiResult<Subnet> {
        SubnetCreate::parse(resource(&body, "subnet").unwrap())?.subnet(Meta::new(
            String::new(),
            String::new(),
            "p".into(),
        ))
    }

    #[test]
    fn defaults_take_the_first_host_as_gateway_and_the_rest_as_pool() {
        let subnet =
            create(json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24", "ip_version": 4}}))
                .unwrap();
        assert_eq!(subnet.gateway_ip, Some(ip("10.0.0.1")));
        assert_eq!(
            subnet.allocation_pools,
            [Pool {
                start: ip("10.0.0.2"),
                end: ip("10.0.0.254")
            }]
        );
        assert!(subnet.assignable(ip("10.0.0.2")) && !subnet.assignable(ip("10.0.0.1")));
        assert!(!subnet.assignable(ip("10.0.0.255")) && !subnet.assignable(ip("10.0.1.2")));

        let middle = create(
            json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/29", "gateway_ip": "10.0.0.3"}}),
        )
        .unwrap();
        assert_eq!(
            middle.allocation_pools,
            [
                Pool {
                    start: ip("10.0.0.1"),
                    end: ip("10.0.0.2")
                },
                Pool {
                    start: ip("10.0.0.4"),
                    end: ip("10.0.0.6")
                }
            ]
        );
        let none = create(
            json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/30", "gateway_ip": null}}),
        )
        .unwrap();
        assert_eq!(none.gateway_ip, None);
        assert_eq!(
            none.allocation_pools,
            [Pool {
                start: ip("10.0.0.1"),
                end: ip("10.0.0.2")
            }]
        );
        assert_eq!(none.view()["gateway_ip"], Value::Null);
    }

    #[test]
    fn bad_subnets_say_what_is_wrong() {
        let cases = [
            (
                json!({"subnet": {"cidr": "10.0.0.0/24"}}),
                400,
                "network_id",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.5/24"}}),
                400,
                "host bits",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "banana"}}),
                400,
                "CIDR",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24", "ip_version": 6}}),
                400,
                "IPv4",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24", "gateway_ip": "10.0.1.1"}}),
                400,
                "gateway",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24",
                "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.1.20"}]}}),
                400,
                "spans beyond",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24",
                "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.20"}, {"start": "10.0.0.20", "end": "10.0.0.30"}]}}),
                400,
                "overlapping",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24", "gateway_ip": "10.0.0.15",
                "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.20"}]}}),
                409,
                "conflicts",
            ),
            (
                json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24", "dns_nameservers": ["x"]}}),
                400,
                "dns",
            ),
        ];
        for (body, status, words) in cases {
            let error = create(body.clone()).unwrap_err();
            assert_eq!(error.status, status, "{body}: {error}");
            assert!(error.message.contains(words), "{body}: {error}");
        }
    }

    #[test]
    fn an_update_is_checked_like_a_create() {
        let mut subnet =
            create(json!({"subnet": {"network_id": "n", "cidr": "10.0.0.0/24"}})).unwrap();
        let update = |body: Value| SubnetUpdate::parse(resource(&body, "subnet").unwrap());
        let dns = update(json!({"subnet": {"dns_nameservers": ["10.0.0.53"]}})).unwrap();
        assert!(dns.apply(&mut subnet).unwrap());
        assert_eq!(subnet.dns_nameservers, [ip("10.0.0.53")]);
        let bad = update(json!({"subnet": {"gateway_ip": "10.0.0.9"}})).unwrap();
        assert!(bad.apply(&mut subnet.clone()).is_err(), "inside the pool");
        assert!(update(json!({"subnet": {"cidr": "10.1.0.0/24"}})).is_err());
    }
}
