//! Security groups and their rules: what traffic a port's VM may send and
//! receive. A group keeps its rules inside its own record: a rule is
//! added or removed by rewriting the group, so that two racing identical
//! rules cannot both get in (the second compares against the first).

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Meta, Resource, network::MAX_TEXT};
use crate::{
    body::Attrs,
    error::{ApiError, ApiResult},
};

/// The name of the group every project has.
pub const DEFAULT_GROUP: &str = "default";

/// Neutron's protocol names and their numbers.
const PROTOCOLS: &[(&str, u8)] = &[
    ("ah", 51),
    ("dccp", 33),
    ("egp", 8),
    ("esp", 50),
    ("gre", 47),
    ("hopopt", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("ipip", 4),
    ("ipv6-encap", 41),
    ("ipv6-frag", 44),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("ipv6-route", 43),
    ("ospf", 89),
    ("pgm", 113),
    ("rsvp", 46),
    ("sctp", 132),
    ("tcp", 6),
    ("udp", 17),
    ("udplite", 136),
    ("vrrp", 112),
];

/// Protocols with ports: TCP, UDP, SCTP, UDP-Lite, DCCP.
const PORT_PROTOCOLS: &[u8] = &[6, 17, 132, 136, 33];
/// ICMP and ICMPv6: the "ports" are the type and the code.
const ICMP_PROTOCOLS: &[u8] = &[1, 58];
/// Protocols of IPv6 only, refused with ethertype IPv4.
const IPV6_PROTOCOLS: &[u8] = &[41, 43, 44, 58, 59, 60];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    #[serde(rename = "ingress")]
    Ingress,
    #[serde(rename = "egress")]
    Egress,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ethertype {
    IPv4,
    IPv6,
}

impl Ethertype {
    fn name(self) -> &'static str {
        match self {
            Ethertype::IPv4 => "IPv4",
            Ethertype::IPv6 => "IPv6",
        }
    }
}

/// What a rule lets through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub direction: Direction,
    pub ethertype: Ethertype,
    /// As given: a name in lower case, or a number; `None`: any.
    pub protocol: Option<String>,
    pub port_range_min: Option<u32>,
    pub port_range_max: Option<u32>,
    pub remote_ip_prefix: Option<IpNet>,
    pub remote_group_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Rules have no name: `meta.name` stays empty and is not shown.
    #[serde(flatten)]
    pub meta: Meta,
    pub security_group_id: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

impl Resource for Rule {
    const KIND: &'static str = "security_group_rule";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn view(&self) -> Value {
        let traffic = &self.traffic;
        self.meta.unnamed_view_with(json!({
            "security_group_id": self.security_group_id,
            "direction": traffic.direction.name(),
            "ethertype": traffic.ethertype.name(),
            "protocol": traffic.protocol,
            "port_range_min": traffic.port_range_min,
            "port_range_max": traffic.port_range_max,
            "remote_ip_prefix": traffic.remote_ip_prefix.map(|prefix| prefix.to_string()),
            "normalized_cidr": traffic.remote_ip_prefix.map(|prefix| prefix.trunc().to_string()),
            "remote_group_id": traffic.remote_group_id,
            "remote_address_group_id": null,
        }))
    }
}

impl Traffic {
    /// Whether the two rules let the same traffic through (Neutron's
    /// duplicate): the protocol by number, the prefix by its network.
    pub fn same_as(&self, other: &Traffic) -> bool {
        self.direction == other.direction
            && self.ethertype == other.ethertype
            && self.protocol.as_deref().map(protocol_number)
                == other.protocol.as_deref().map(protocol_number)
            && self.port_range_min == other.port_range_min
            && self.port_range_max == other.port_range_max
            && self.remote_ip_prefix.map(|prefix| prefix.trunc())
                == other.remote_ip_prefix.map(|prefix| prefix.trunc())
            && self.remote_group_id == other.remote_group_id
    }
}

/// The number of a protocol as stored (a known name, or a number).
fn protocol_number(protocol: &str) -> Option<u8> {
    PROTOCOLS
        .iter()
        .find(|(name, _)| *name == protocol)
        .map(|(_, number)| *number)
        .or_else(|| protocol.parse().ok())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroup {
    #[serde(flatten)]
    pub meta: Meta,
    pub rules: Vec<Rule>,
    /// Being deleted: no port or rule may join it (not shown; see
    /// `service::security_groups`).
    #[serde(default)]
    pub deleting: bool,
}

impl Resource for SecurityGroup {
    const KIND: &'static str = "security_group";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn view(&self) -> Value {
        self.meta.view_with(json!({
            "security_group_rules": self.rules.iter().map(Resource::view).collect::<Vec<_>>(),
            "stateful": true,
            "shared": false,
        }))
    }
}

impl SecurityGroup {
    /// A new group with Neutron's rules: every group lets anything out;
    /// the default group also lets in what comes from its own members.
    pub fn new(meta: Meta) -> SecurityGroup {
        let id = meta.id.clone();
        let default = meta.name == DEFAULT_GROUP;
        let mut group = SecurityGroup {
            meta,
            rules: Vec::new(),
            deleting: false,
        };
        for ethertype in [Ethertype::IPv4, Ethertype::IPv6] {
            let mut rule = |direction, remote_group_id| {
                group.rules.push(Rule {
                    meta: Meta::new(String::new(), String::new(), group.meta.project_id.clone()),
                    security_group_id: id.clone(),
                    traffic: Traffic {
                        direction,
                        ethertype,
                        protocol: None,
                        port_range_min: None,
                        port_range_max: None,
                        remote_ip_prefix: None,
                        remote_group_id,
                    },
                })
            };
            rule(Direction::Egress, None);
            if default {
                rule(Direction::Ingress, Some(id.clone()));
            }
        }
        group
    }

    pub fn is_default(&self) -> bool {
        self.meta.name == DEFAULT_GROUP
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroupCreate {
    pub name: String,
    pub description: String,
    pub project_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecurityGroupUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
}

/// `stateful`: only stateful groups are served.
fn stateful(attrs: &mut Attrs) -> ApiResult<()> {
    if attrs.bool("stateful")? == Some(false) {
        return Err(ApiError::invalid_input(
            "stateless security groups are not supported",
        ));
    }
    Ok(())
}

/// A group's name: "default" is the one the controller makes.
fn name(attrs: &mut Attrs) -> ApiResult<Option<String>> {
    let name = attrs.text("name", MAX_TEXT)?;
    if name.as_deref() == Some(DEFAULT_GROUP) {
        return Err(ApiError::conflict(
            "SecurityGroupDefaultAlreadyExists",
            "Default security group already exists.",
        ));
    }
    Ok(name)
}

impl SecurityGroupCreate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<SecurityGroupCreate> {
        attrs.read_only(&["id", "revision_number", "security_group_rules"])?;
        stateful(&mut attrs)?;
        let create = SecurityGroupCreate {
            name: name(&mut attrs)?.unwrap_or_default(),
            description: attrs.text("description", MAX_TEXT)?.unwrap_or_default(),
            project_id: super::network::project(&mut attrs)?,
        };
        attrs.finish()?;
        Ok(create)
    }
}

impl SecurityGroupUpdate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<SecurityGroupUpdate> {
        attrs.read_only(&[
            "id",
            "revision_number",
            "security_group_rules",
            "project_id",
            "tenant_id",
        ])?;
        stateful(&mut attrs)?;
        let update = SecurityGroupUpdate {
            name: name(&mut attrs)?,
            description: attrs.text("description", MAX_TEXT)?,
        };
        attrs.finish()?;
        Ok(update)
    }

    /// Applies the update; false if nothing changed.
    pub fn apply(&self, group: &mut SecurityGroup) -> ApiResult<bool> {
        let before = group.clone();
        if let Some(name) = &self.name {
            if group.is_default() {
                return Err(ApiError::conflict(
                    "SecurityGroupCannotUpdateDefault",
                    "Updating default security group not allowed.",
                ));
            }
            group.meta.name = name.clone();
        }
        if let Some(description) = &self.description {
            group.meta.description = description.clone();
        }
        Ok(*group != before)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCreate {
    pub description: String,
    pub project_id: Option<String>,
    pub security_group_id: String,
    pub traffic: Traffic,
}

fn required(attrs: &mut Attrs, name: &str) -> ApiResult<String> {
    attrs.string(name)?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "Failed to parse request. Required attribute '{name}' not specified"
        ))
    })
}

/// A protocol as Neutron takes it: a name (any case), a number 0 to 255,
/// or "any" (as none).
fn protocol(attrs: &mut Attrs) -> ApiResult<Option<String>> {
    let text = match attrs.integer("protocol") {
        Ok(Some(number)) => number.to_string(),
        Ok(None) => return Ok(None),
        Err(_) => attrs.string("protocol")?.unwrap_or_default().to_lowercase(),
    };
    if text == "any" {
        return Ok(None);
    }
    let known = PROTOCOLS.iter().any(|(name, _)| *name == text)
        || text.parse::<i64>().is_ok_and(|n| (0..=255).contains(&n));
    if !known {
        let names: Vec<&str> = PROTOCOLS.iter().map(|(name, _)| *name).collect();
        return Err(ApiError::new(
            400,
            "SecurityGroupRuleInvalidProtocol",
            format!(
                "Security group rule protocol {text} not supported. Only protocol values [None, \
                 {}] and integer representations [0 to 255] are supported.",
                names.join(", ")
            ),
        ));
    }
    // A number stays a number ("6" is kept as "6", as Neutron keeps it).
    Ok(Some(text))
}

fn port(attrs: &mut Attrs, name: &str) -> ApiResult<Option<u32>> {
    attrs
        .integer(name)?
        .map(|port| {
            u32::try_from(port)
                .ok()
                .filter(|port| *port <= 65535)
                .ok_or_else(|| invalid_port(port))
        })
        .transpose()
}

fn invalid_port(port: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        400,
        "SecurityGroupInvalidPortValue",
        format!("Invalid value for port {port}."),
    )
}

impl RuleCreate {
    pub fn parse(mut attrs: Attrs) -> ApiResult<RuleCreate> {
        attrs.read_only(&["id", "revision_number", "normalized_cidr"])?;
        let security_group_id = required(&mut attrs, "security_group_id")?;
        let direction = match required(&mut attrs, "direction")?.as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            other => {
                return Err(ApiError::invalid_input(format!(
                    "'{other}' is not in ['ingress', 'egress'] (attribute direction)"
                )));
            }
        };
        let ethertype = match attrs.string("ethertype")?.map(|text| text.to_lowercase()) {
            None => Ethertype::IPv4,
            Some(text) if text == "ipv4" => Ethertype::IPv4,
            Some(text) if text == "ipv6" => Ethertype::IPv6,
            Some(other) => {
                return Err(ApiError::invalid_input(format!(
                    "'{other}' is not in ['IPv4', 'IPv6'] (attribute ethertype)"
                )));
            }
        };
        let remote_ip_prefix = attrs
            .string("remote_ip_prefix")?
            .map(|text| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        ApiError::invalid_input(format!("'{text}' is not a valid IP prefix"))
                    })
            })
            .transpose()?;
        if attrs
            .string("remote_address_group_id")?
            .is_some_and(|id| !id.is_empty())
        {
            return Err(ApiError::invalid_input(
                "remote address groups are not supported",
            ));
        }
        let create = RuleCreate {
            description: attrs.text("description", MAX_TEXT)?.unwrap_or_default(),
            project_id: super::network::project(&mut attrs)?,
            security_group_id,
            traffic: Traffic {
                direction,
                ethertype,
                protocol: protocol(&mut attrs)?,
                port_range_min: port(&mut attrs, "port_range_min")?,
                port_range_max: port(&mut attrs, "port_range_max")?,
                remote_ip_prefix,
                remote_group_id: attrs.string("remote_group_id")?,
            },
        };
        attrs.finish()?;
        create.traffic.validate()?;
        Ok(create)
    }

    /// The rule it makes, of the group's project unless it names one.
    pub fn rule(&self, group_project: &str) -> Rule {
        let project = self
            .project_id
            .clone()
            .unwrap_or_else(|| group_project.to_string());
        Rule {
            meta: Meta::new(String::new(), self.description.clone(), project),
            security_group_id: self.security_group_id.clone(),
            traffic: self.traffic.clone(),
        }
    }
}

impl Traffic {
    /// Neutron's checks of a rule on its own.
    fn validate(&self) -> ApiResult<()> {
        if self.remote_ip_prefix.is_some() && self.remote_group_id.is_some() {
            return Err(ApiError::new(
                400,
                "SecurityGroupRemoteGroupAndRemoteIpPrefix",
                "Only remote_ip_prefix or remote_group_id may be provided.",
            ));
        }
        if let Some(prefix) = self.remote_ip_prefix {
            let ipv4 = matches!(prefix, IpNet::V4(_));
            if ipv4 != (self.ethertype == Ethertype::IPv4) {
                return Err(ApiError::new(
                    400,
                    "SecurityGroupRuleParameterConflict",
                    format!(
                        "Conflicting value ethertype {} for CIDR {prefix}",
                        self.ethertype.name()
                    ),
                ));
            }
        }
        let number = self.protocol.as_deref().and_then(protocol_number);
        if let (Some(protocol), Some(number)) = (&self.protocol, number)
            && self.ethertype == Ethertype::IPv4
            && IPV6_PROTOCOLS.contains(&number)
        {
            return Err(ApiError::new(
                400,
                "SecurityGroupEthertypeConflictWithProtocol",
                format!("Invalid ethertype IPv4 for protocol {protocol}."),
            ));
        }
        self.validate_ports(number)
    }

    /// Port ranges for the protocols with ports, type and code for ICMP,
    /// nothing for the others.
    fn validate_ports(&self, protocol: Option<u8>) -> ApiResult<()> {
        let (min, max) = (self.port_range_min, self.port_range_max);
        if min.is_none() && max.is_none() {
            return Ok(());
        }
        let Some(protocol) = protocol else {
            return Err(ApiError::new(
                400,
                "SecurityGroupProtocolRequiredWithPorts",
                "Must also specify protocol if port range is given.",
            ));
        };
        if PORT_PROTOCOLS.contains(&protocol) {
            if min == Some(0) || max == Some(0) {
                return Err(invalid_port(0));
            }
            return match (min, max) {
                (Some(min), Some(max)) if min <= max => Ok(()),
                _ => Err(ApiError::new(
                    400,
                    "SecurityGroupInvalidPortRange",
                    "For TCP/UDP protocols, port_range_min must be <= port_range_max",
                )),
            };
        }
        if ICMP_PROTOCOLS.contains(&protocol) {
            for (value, field, attr) in [
                (min, "type", "port_range_min"),
                (max, "code", "port_range_max"),
            ] {
                if let Some(value) = value.filter(|value| *value > 255) {
                    return Err(ApiError::new(
                        400,
                        "SecurityGroupInvalidIcmpValue",
                        format!(
                            "Invalid value for ICMP {field} ({attr}) {value}. It must be 0 to 255."
                        ),
                    ));
                }
            }
            if let (None, Some(code)) = (min, max) {
                return Err(ApiError::new(
                    400,
                    "SecurityGroupMissingIcmpType",
                    format!(
                        "ICMP code (port-range-max) {code} is provided but ICMP type \
                         (port-range-min) is missing."
                    ),
                ));
            }
            return Ok(());
        }
        Err(ApiError::new(
            400,
            "SecurityGroupInvalidProtocolForPortRange",
            format!(
                "Invalid protocol {protocol} for port range, only supported for TCP, UDP, \
                 UDPLITE, SCTP and DCCP."
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::body::resource;

    fn rule(body: Value) -> ApiResult<RuleCreate> {
        let mut body = body;
        body["security_group_id"] = json!("g");
        RuleCreate::parse(resource(
            &json!({ "security_group_rule": body }),
            "security_group_rule",
        )?)
    }

    #[test]
    fn a_new_group_has_neutrons_rules() {
        let plain = SecurityGroup::new(Meta::new("web".into(), String::new(), "p".into()));
        assert_eq!(plain.rules.len(), 2);
        assert!(
            plain
                .rules
                .iter()
                .all(|rule| rule.traffic.direction == Direction::Egress)
        );
        let default =
            SecurityGroup::new(Meta::new(DEFAULT_GROUP.into(), String::new(), "p".into()));
        let ingress: Vec<&Rule> = default
            .rules
            .iter()
            .filter(|rule| rule.traffic.direction == Direction::Ingress)
            .collect();
        assert_eq!(ingress.len(), 2);
        assert!(
            ingress
                .iter()
                .all(|rule| rule.traffic.remote_group_id.as_deref()
                    == Some(default.meta.id.as_str()))
        );
        let view = default.view();
        assert_eq!(view["security_group_rules"].as_array().unwrap().len(), 4);
        assert_eq!(view["stateful"], true);
        assert!(view["security_group_rules"][0].get("name").is_none());
    }

    #[test]
    fn rules_are_read_as_neutron_reads_them() {
        let ssh = rule(json!({"direction": "ingress", "protocol": "TCP",
            "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.0.0.1/8"}))
        .unwrap();
        assert_eq!(ssh.traffic.protocol.as_deref(), Some("tcp"));
        assert_eq!(ssh.traffic.ethertype, Ethertype::IPv4);
        let view = ssh.rule("p").view();
        assert_eq!(view["normalized_cidr"], "10.0.0.0/8");
        assert_eq!(view["remote_ip_prefix"], "10.0.0.1/8");
        let six = rule(json!({"direction": "ingress", "protocol": 6,
            "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "10.9.9.9/8"}))
        .unwrap();
        assert_eq!(six.traffic.protocol.as_deref(), Some("6"));
        assert!(
            six.traffic.same_as(&ssh.traffic),
            "tcp is 6, one /8 is another"
        );
        let ping = rule(json!({"direction": "egress", "protocol": "icmp",
            "port_range_min": 8, "port_range_max": 0, "ethertype": "ipv4"}));
        assert!(ping.is_ok());
        let any = rule(json!({"direction": "egress", "protocol": "any"})).unwrap();
        assert_eq!(any.traffic.protocol, None);
        let v6 = rule(json!({"direction": "ingress", "ethertype": "IPv6",
            "protocol": "ipv6-icmp", "remote_ip_prefix": "::/0"}));
        assert!(v6.is_ok());
    }

    #[test]
    fn bad_rules_get_neutrons_errors() {
        let cases = [
            (json!({"direction": "sideways"}), "InvalidInput"),
            (
                json!({"direction": "ingress", "ethertype": "IPv5"}),
                "InvalidInput",
            ),
            (
                json!({"direction": "ingress", "protocol": "banana"}),
                "SecurityGroupRuleInvalidProtocol",
            ),
            (
                json!({"direction": "ingress", "protocol": 256}),
                "SecurityGroupRuleInvalidProtocol",
            ),
            (
                json!({"direction": "ingress", "port_range_min": 22}),
                "SecurityGroupProtocolRequiredWithPorts",
            ),
            (
                json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 0, "port_range_max": 5}),
                "SecurityGroupInvalidPortValue",
            ),
            (
                json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 70000}),
                "SecurityGroupInvalidPortValue",
            ),
            (
                json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 30, "port_range_max": 20}),
                "SecurityGroupInvalidPortRange",
            ),
            (
                json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 30}),
                "SecurityGroupInvalidPortRange",
            ),
            (
                json!({"direction": "ingress", "protocol": "icmp", "port_range_min": 300}),
                "SecurityGroupInvalidIcmpValue",
            ),
            (
                json!({"direction": "ingress", "protocol": "icmp", "port_range_max": 3}),
                "SecurityGroupMissingIcmpType",
            ),
            (
                json!({"direction": "ingress", "protocol": "gre", "port_range_min": 1, "port_range_max": 2}),
                "SecurityGroupInvalidProtocolForPortRange",
            ),
            (
                json!({"direction": "ingress", "protocol": "ipv6-icmp"}),
                "SecurityGroupEthertypeConflictWithProtocol",
            ),
            (
                json!({"direction": "ingress", "remote_ip_prefix": "::/0"}),
                "SecurityGroupRuleParameterConflict",
            ),
            (
                json!({"direction": "ingress", "remote_ip_prefix": "10.0.0.0/8", "remote_group_id": "g"}),
                "SecurityGroupRemoteGroupAndRemoteIpPrefix",
            ),
            (
                json!({"direction": "ingress", "remote_ip_prefix": "ten"}),
                "InvalidInput",
            ),
            (
                json!({"direction": "ingress", "colour": 1}),
                "HTTPBadRequest",
            ),
        ];
        for (body, kind) in cases {
            let error = rule(body.clone()).unwrap_err();
            assert_eq!((error.status, error.kind), (400, kind), "{body}: {error}");
        }
        let missing = RuleCreate::parse(
            resource(
                &json!({"security_group_rule": {"direction": "ingress"}}),
                "security_group_rule",
            )
            .unwrap(),
        );
        assert!(missing.unwrap_err().message.contains("security_group_id"));
    }

    #[test]
    fn the_default_group_keeps_its_name() {
        let parse = |body: Value| {
            SecurityGroupUpdate::parse(
                resource(&json!({ "security_group": body }), "security_group").unwrap(),
            )
        };
        let error = parse(json!({"name": "default"})).unwrap_err();
        assert_eq!(
            (error.status, error.kind),
            (409, "SecurityGroupDefaultAlreadyExists")
        );
        let mut default =
            SecurityGroup::new(Meta::new(DEFAULT_GROUP.into(), String::new(), "p".into()));
        let error = parse(json!({"name": "mine"}))
            .unwrap()
            .apply(&mut default)
            .unwrap_err();
        assert_eq!(error.kind, "SecurityGroupCannotUpdateDefault");
        assert!(
            parse(json!({"description": "d"}))
                .unwrap()
                .apply(&mut default)
                .unwrap()
        );
        let error = SecurityGroupCreate::parse(
            resource(
                &json!({"security_group": {"name": "x", "stateful": false}}),
                "security_group",
            )
            .unwrap(),
        )
        .unwrap_err();
        assert_eq!(error.status, 400);
    }
}
