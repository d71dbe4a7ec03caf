//! Networks: a VPC's L2 domain, one VNI each.

use alcor_types::Vni;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Meta, Resource};
use crate::{
    body::Attrs,
    error::{ApiError, ApiResult},
};

/// Longest name or description Neutron takes.
pub const MAX_TEXT: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    #[serde(flatten)]
    pub meta: Meta,
    pub admin_state_up: bool,
    pub shared: bool,
    /// `router:external`: floating IPs come from its subnets.
    pub external: bool,
    pub mtu: u32,
    pub vni: Vni,
    pub port_security_enabled: bool,
    /// Its subnets' ids, in creation order.
    pub subnets: Vec<String>,
    /// Being deleted: nothing may join it (not shown; see
    /// `service::networks::delete`).
    #[serde(default)]
    pub deleting: bool,
}

impl Resource for Network {
    const KIND: &'static str = "network";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn view(&self) -> Value {
        self.meta.view_with(json!({
            "admin_state_up": self.admin_state_up,
            "status": "ACTIVE",
            "shared": self.shared,
            "router:external": self.external,
            "mtu": self.mtu,
            "subnets": self.subnets,
            "port_security_enabled": self.port_security_enabled,
            "provider:network_type": "vxlan",
            "provider:segmentation_id": self.vni.get(),
            "provider:physical_network": null,
            "availability_zone_hints": [],
            "availability_zones": [],
            "ipv4_address_scope": null,
            "ipv6_address_scope": null,
            "l2_adjacency": true,
        }))
    }
}

/// What a create asks for; the rest is allocated or defaulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkCreate {
    pub name: String,
    pub description: String,
    pub project_id: Option<String>,
    pub admin_state_up: bool,
    pub shared: bool,
    pub external: bool,
    pub mtu: Option<u32>,
    pub port_security_enabled: bool,
    pub vni: Option<Vni>,
}

/// What an update may change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub admin_state_up: Option<bool>,
    pub shared: Option<bool>,
    pub external: Option<bool>,
    pub mtu: Option<u32>,
    pub port_security_enabled: Option<bool>,
}

/// The project a create names (`project_id`, or Neutron's older
/// `tenant_id`); both must agree if both are given.
pub fn project(attrs: &mut Attrs) -> ApiResult<Option<String>> {
    let project = attrs.string("project_id")?;
    let tenant = attrs.string("tenant_id")?;
    match (project, tenant) {
        (Some(project), Some(tenant)) if project != tenant => Err(ApiError::bad_request(
            "'project_id' and 'tenant_id' do not match",
        )),
        (project, tenant) => Ok(project.or(tenant)),
    }
}

fn mtu(attrs: &mut Attrs) -> ApiResult<Option<u32>> {
    attrs
        .integer("mtu")?
        .map(|mtu| {
            u32::try_from(mtu)
                .ok()
                .filter(|mtu| (68..=65535).contains(mtu))
                .ok_or_else(|| ApiError::invalid_input(format!("MTU {mtu} is not in 68..65535")))
        })
        .transpose()
}

impl NetworkCreate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<NetworkCreate> {
        attrs.read_only(&["id", "status", "subnets", "revision_number"])?;
        let create = NetworkCreate {
            name: attrs.text("name", MAX_TEXT)?.unwrap_or_default(),
            description: attrs.text("description", MAX_TEXT)?.unwrap_or_default(),
            project_id: project(&mut attrs)?,
            admin_state_up: attrs.bool("admin_state_up")?.unwrap_or(true),
            shared: attrs.bool("shared")?.unwrap_or(false),
            external: attrs.bool("router:external")?.unwrap_or(false),
            mtu: mtu(&mut attrs)?,
            port_security_enabled: attrs.bool("port_security_enabled")?.unwrap_or(true),
            vni: segmentation(&mut attrs)?,
        };
        // Accepted and ignored: one availability zone, no DNS integration.
        attrs.list("availability_zone_hints")?;
        attrs.finish()?;
        Ok(create)
    }
}

/// `provider:network_type` (VXLAN only) and `provider:segmentation_id`.
fn segmentation(attrs: &mut Attrs) -> ApiResult<Option<Vni>> {
    match attrs.string("provider:network_type")?.as_deref() {
        None | Some("vxlan") => {}
        Some(other) => {
            return Err(ApiError::invalid_input(format!(
                "network type {other} is not supported: only vxlan"
            )));
        }
    }
    if attrs.string("provider:physical_network")?.is_some() {
        return Err(ApiError::invalid_input(
            "a VXLAN network has no physical network",
        ));
    }
    attrs
        .integer("provider:segmentation_id")?
        .map(|id| {
            u64::try_from(id)
                .map_err(|_| format!("{id} is negative"))
                .and_then(Vni::try_from)
                .map_err(ApiError::invalid_input)
        })
        .transpose()
}

impl NetworkUpdate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<NetworkUpdate> {
        attrs.read_only(&[
            "id",
            "status",
            "subnets",
            "revision_number",
            "project_id",
            "tenant_id",
            "provider:network_type",
            "provider:segmentation_id",
            "provider:physical_network",
        ])?;
        let update = NetworkUpdate {
            name: attrs.text("name", MAX_TEXT)?,
            description: attrs.text("description", MAX_TEXT)?,
            admin_state_up: attrs.bool("admin_state_up")?,
            shared: attrs.bool("shared")?,
            external: attrs.bool("router:external")?,
            mtu: mtu(&mut attrs)?,
            port_security_enabled: attrs.bool("port_security_enabled")?,
        };
        attrs.finish()?;
        Ok(update)
    }

    /// Applies the update; false if it changed nothing.
    pub fn apply(&self, network: &mut Network) -> bool {
        let before = network.clone();
        if let Some(name) = &self.name {
            network.meta.name = name.clone();
        }
        if let Some(description) = &self.description {
            network.meta.description = description.clone();
        }
        let fields = [
            (&mut network.admin_state_up, self.admin_state_up),
            (&mut network.shared, self.shared),
            (&mut network.external, self.external),
            (
                &mut network.port_security_enabled,
                self.port_security_enabled,
            ),
        ];
        for (field, value) in fields {
            if let Some(value) = value {
                *field = value;
            }
        }
        if let Some(mtu) = self.mtu {
            network.mtu = mtu;
        }
        *network != before
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::body::resource;

    fn create(body: Value) -> ApiResult<NetworkCreate> {
        NetworkCreate::parse(resource(&body, "network").unwrap())
    }

    #[test]
    fn a_create_takes_neutrons_attributes() {
        let create = create(json!({"network": {
            "name": "net", "tenant_id": "p1", "admin_state_up": false,
            "provider:network_type": "vxlan", "provider:segmentation_id": 4242,
            "router:external": true, "mtu": 1400,
        }}))
        .unwrap();
        assert_eq!(create.name, "net");
        assert_eq!(create.project_id.as_deref(), Some("p1"));
        assert!(!create.admin_state_up && create.external);
        assert_eq!(create.vni.map(Vni::get), Some(4242));
        assert_eq!(create.mtu, Some(1400));
    }

    #[test]
    fn a_create_refuses_what_it_cannot_do() {
        let refused = [
            json!({"network": {"provider:network_type": "vlan"}}),
            json!({"network": {"provider:segmentation_id": 0}}),
            json!({"network": {"provider:segmentation_id": 16777216}}),
            json!({"network": {"mtu": 20}}),
            json!({"network": {"id": "mine"}}),
            json!({"network": {"project_id": "a", "tenant_id": "b"}}),
            json!({"network": {"name": "x".repeat(256)}}),
            json!({"network": {"colour": "blue"}}),
        ];
        for body in refused {
            let error = create(body.clone()).unwrap_err();
            assert_eq!(error.status, 400, "{body}: {error}");
        }
    }

    #[test]
    fn an_update_changes_only_what_it_names() {
        let mut network = Network {
            meta: Meta::new("a".into(), String::new(), "p".into()),
            admin_state_up: true,
            shared: false,
            external: false,
            mtu: 1450,
            vni: Vni::try_from(7).unwrap(),
            port_security_enabled: true,
            subnets: vec![],
            deleting: false,
        };
        let update =
            NetworkUpdate::parse(resource(&json!({"network": {"name": "b"}}), "network").unwrap())
                .unwrap();
        assert!(update.apply(&mut network));
        assert_eq!((network.meta.name.as_str(), network.mtu), ("b", 1450));
        assert!(
            !update.apply(&mut network),
            "the same again changes nothing"
        );
        let view = network.view();
        assert_eq!(view["provider:segmentation_id"], 7);
        assert_eq!(view["tenant_id"], "p");
        let refused = NetworkUpdate::parse(
            resource(
                &json!({"network": {"provider:segmentation_id": 9}}),
                "network",
            )
            .unwrap(),
        );
        assert!(refused.is_err());
    }
}
