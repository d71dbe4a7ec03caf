//! Human-readable views of the agent's replies: tables with headers, enums
//! as words, and a sentence instead of an empty table.

use std::{collections::HashMap, time::SystemTime};

use alcor_proto::{
    control::{
        AgentStatus, ControllerLink, CounterList, DhcpCounters, DpCounterList, DpEndpointList,
        DpNeighborList, DpPortList, DpRouteList, DpTunnels, Encapsulation, FrameHeaders, LeaseList,
        NeighborList, Port, PortBinding, PortList, PortPhase, SubnetList, TraceReply, TraceVerdict,
        VpcList,
    },
    schema::GoalState,
};
// The datapath's drop reasons, named as the agent's `datapath` re-exports them.
use alcor_ebpf_common as datapath;
use alcor_types::{
    dhcp::{ClientMessage, DropReason, ServerMessage},
    hexdump,
};

use super::table::{Table, left, right};

/// A reply as an operator reads it.
pub trait Human {
    fn human(&self) -> String;
}

/// Seconds since the Unix epoch: the clock of the agent's lease expiries and
/// of its controller link's times, which are shown relative to now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Blank cells print as `-` so that every column stays visible.
fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

pub fn phase_word(phase: i32) -> String {
    match PortPhase::try_from(phase) {
        Ok(PortPhase::Pending) => "pending".into(),
        Ok(PortPhase::Ready) => "ready".into(),
        Ok(PortPhase::Failed) => "failed".into(),
        Ok(PortPhase::Unbound) => "unbound".into(),
        // A newer agent may know phases this agentctl does not.
        Err(_) => format!("phase {phase}"),
    }
}

pub fn binding_word(binding: i32) -> String {
    match PortBinding::try_from(binding) {
        Ok(PortBinding::Tap) => "tap".into(),
        Ok(PortBinding::Netns) => "netns".into(),
        Err(_) => format!("binding {binding}"),
    }
}

/// `1h 2m 3s`, leaving out leading zero units.
pub fn uptime_words(seconds: u64) -> String {
    let (days, hours, minutes, seconds) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    let units = [(days, "d"), (hours, "h"), (minutes, "m"), (seconds, "s")];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    units[first..]
        .iter()
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The link to the controller, seen from `now` (Unix seconds).
fn controller_rows(link: Option<&ControllerLink>, now: u64) -> Vec<(&'static str, String)> {
    let Some(link) = link else {
        return vec![("controller", "- (none: the agent works alone)".into())];
    };
    let ago = |at: u64| format!("{} ago", duration_words(now.saturating_sub(at)));
    let heartbeat = match link.last_heartbeat_at {
        0 => "no heartbeat answered yet".to_string(),
        at => format!("last heartbeat {}", ago(at)),
    };
    let registered = if link.registered {
        "registered"
    } else {
        "not registered"
    };
    let mut rows = vec![
        (
            "controller",
            format!("{} ({registered}, {heartbeat})", link.url),
        ),
        ("host id", link.host_id.clone()),
        ("advertised as", link.goal_state_endpoint.clone()),
        (
            "heartbeats",
            format!(
                "{} answered, {} failed; {} whole-state requests",
                link.heartbeats_ok, link.heartbeats_failed, link.state_requests
            ),
        ),
    ];
    if !link.last_error.is_empty() {
        rows.push((
            "last error",
            format!("{} ({})", link.last_error, ago(link.last_error_at)),
        ));
    }
    rows
}

impl Human for AgentStatus {
    fn human(&self) -> String {
        let mut table = Table::headless([left(""), left("")]);
        let transport = if self.mutual_tls {
            "mutual TLS"
        } else {
            "plaintext"
        };
        let underlay = [self.underlay_dev.as_str(), self.underlay_ip.as_str()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let mut ports = format!(
            "{} ({} ready, {} pending, {} failed",
            self.ports, self.ports_ready, self.ports_pending, self.ports_failed
        );
        // Unbound ports are the rest; the reply does not count them itself.
        let unbound = self
            .ports
            .saturating_sub(self.ports_ready + self.ports_pending + self.ports_failed);
        if unbound > 0 {
            ports.push_str(&format!(", {unbound} unbound"));
        }
        ports.push(')');
        for (key, value) in [
            ("version", self.version.clone()),
            ("uptime", uptime_words(self.uptime_seconds)),
            (
                "goal-state gRPC",
                format!("{} ({transport})", self.grpc_listen),
            ),
            ("underlay", or_dash(&underlay)),
        ] {
            table.row([key.to_string(), value]);
        }
        for (key, value) in controller_rows(self.controller.as_ref(), unix_now()) {
            table.row([key.to_string(), value]);
        }
        for (key, value) in [
            ("port MTU", self.port_mtu.to_string()),
            ("state dir", self.state_dir.clone()),
            ("bpf pin dir", self.bpf_pin_dir.clone()),
            ("messages applied", self.messages_applied.to_string()),
            ("", String::new()),
            ("vpcs", self.vpcs.to_string()),
            ("subnets", self.subnets.to_string()),
            ("ports", ports),
            ("neighbors", self.neighbors.to_string()),
            ("dhcp entries", self.dhcp_entries.to_string()),
            ("routers", self.routers.to_string()),
            ("security groups", self.security_groups.to_string()),
            ("", String::new()),
            ("dp endpoints", self.dp_endpoints.to_string()),
            (
                "dp map memory",
                format!("{:.1} MiB", self.dp_map_bytes as f64 / (1 << 20) as f64),
            ),
        ] {
            table.row([key.to_string(), value]);
        }
        table.render()
    }
}

fn port_binding(port: &Port) -> String {
    let word = binding_word(port.binding);
    if port.netns.is_empty() {
        word
    } else {
        format!("{word}:{}", port.netns)
    }
}

impl Human for PortList {
    fn human(&self) -> String {
        if self.ports.is_empty() {
            return "no ports\n".into();
        }
        let mut table = Table::new([
            left("PORT ID"),
            left("PHASE"),
            left("DEVICE"),
            right("IFINDEX"),
            left("MAC"),
            left("IP"),
            left("BINDING"),
            left("VPC"),
            right("REV"),
            left("REASON"),
        ]);
        for port in &self.ports {
            let ips: Vec<&str> = port
                .fixed_ips
                .iter()
                .map(|ip| ip.ip_address.as_str())
                .collect();
            let ifindex = match port.ifindex {
                0 => "-".to_string(),
                ifindex => ifindex.to_string(),
            };
            table.row([
                port.id.clone(),
                phase_word(port.phase),
                or_dash(&port.device),
                ifindex,
                or_dash(&port.mac_address),
                or_dash(&ips.join(",")),
                port_binding(port),
                or_dash(&port.vpc_id),
                port.revision.to_string(),
                port.reason.clone(),
            ]);
        }
        table.render()
    }
}

impl Human for VpcList {
    fn human(&self) -> String {
        if self.vpcs.is_empty() {
            return "no vpcs\n".into();
        }
        let mut table = Table::new([
            left("VPC ID"),
            left("NAME"),
            left("CIDR"),
            right("VNI"),
            left("PROJECT"),
            right("REV"),
        ]);
        for vpc in &self.vpcs {
            table.row([
                vpc.id.clone(),
                or_dash(&vpc.name),
                or_dash(&vpc.cidr),
                vpc.vni.to_string(),
                or_dash(&vpc.project_id),
                vpc.revision.to_string(),
            ]);
        }
        table.render()
    }
}

impl Human for SubnetList {
    fn human(&self) -> String {
        if self.subnets.is_empty() {
            return "no subnets\n".into();
        }
        let mut table = Table::new([
            left("SUBNET ID"),
            left("NAME"),
            left("VPC"),
            left("CIDR"),
            right("VNI"),
            left("GATEWAY"),
            left("GATEWAY MAC"),
            left("DHCP"),
            left("DNS"),
            right("REV"),
        ]);
        for subnet in &self.subnets {
            table.row([
                subnet.id.clone(),
                or_dash(&subnet.name),
                or_dash(&subnet.vpc_id),
                or_dash(&subnet.cidr),
                subnet.vni.to_string(),
                or_dash(&subnet.gateway_ip),
                or_dash(&subnet.gateway_mac),
                if subnet.dhcp_enable { "on" } else { "off" }.into(),
                or_dash(&subnet.dns_servers.join(",")),
                subnet.revision.to_string(),
            ]);
        }
        table.render()
    }
}

impl Human for NeighborList {
    fn human(&self) -> String {
        if self.neighbors.is_empty() {
            return "no neighbors\n".into();
        }
        let mut table = Table::new([
            left("NEIGHBOR ID"),
            left("VPC"),
            left("MAC"),
            left("IP"),
            left("TYPE"),
            left("HOST IP"),
            right("REV"),
        ]);
        for neighbor in &self.neighbors {
            // IP and TYPE list the fixed IPs in the same order.
            let ips: Vec<&str> = neighbor
                .fixed_ips
                .iter()
                .map(|ip| ip.ip_address.as_str())
                .collect();
            let types: Vec<&str> = neighbor
                .fixed_ips
                .iter()
                .map(|ip| if ip.l3 { "l3" } else { "l2" })
                .collect();
            table.row([
                neighbor.id.clone(),
                or_dash(&neighbor.vpc_id),
                or_dash(&neighbor.mac_address),
                or_dash(&ips.join(",")),
                or_dash(&types.join(",")),
                or_dash(&neighbor.host_ip_address),
                neighbor.revision.to_string(),
            ]);
        }
        table.render()
    }
}

impl Human for CounterList {
    fn human(&self) -> String {
        if self.ports.is_empty() {
            return "no ready ports\n".into();
        }
        let mut table = Table::new([
            left("PORT ID"),
            left("DEVICE"),
            right("IFINDEX"),
            right("RX PACKETS"),
            right("RX BYTES"),
            right("TX PACKETS"),
            right("TX BYTES"),
        ]);
        for port in &self.ports {
            table.row([
                port.port_id.clone(),
                or_dash(&port.device),
                port.ifindex.to_string(),
                port.rx_packets.to_string(),
                port.rx_bytes.to_string(),
                port.tx_packets.to_string(),
                port.tx_bytes.to_string(),
            ]);
        }
        table.render()
    }
}

/// The two largest units of a duration: `45s`, `3m12s`, `23h59m`, `2d3h`;
/// a zero second unit is left out (`3m`, `1d`).
pub fn duration_words(seconds: u64) -> String {
    let units = [
        (seconds / 86_400, "d"),
        (seconds / 3_600 % 24, "h"),
        (seconds / 60 % 60, "m"),
        (seconds % 60, "s"),
    ];
    let first = units.iter().position(|(n, _)| *n > 0).unwrap_or(3);
    let mut words = format!("{}{}", units[first].0, units[first].1);
    if let Some((n, unit)) = units.get(first + 1)
        && *n > 0
    {
        words.push_str(&format!("{n}{unit}"));
    }
    words
}

/// When a lease ends, seen from `now` (Unix seconds): `in 23h59m`,
/// `expired 3m ago`.
pub fn expiry_words(expires_at: u64, now: u64) -> String {
    if expires_at == 0 {
        "-".into()
    } else if expires_at > now {
        format!("in {}", duration_words(expires_at - now))
    } else if expires_at == now {
        "expires now".into()
    } else {
        format!("expired {} ago", duration_words(now - expires_at))
    }
}

/// The lease table as seen at `now` (Unix seconds).
pub fn leases_table(leases: &LeaseList, now: u64) -> String {
    if leases.leases.is_empty() {
        return "no leases\n".into();
    }
    let mut table = Table::new([
        left("PORT"),
        left("MAC"),
        left("IP"),
        left("STATE"),
        left("EXPIRES"),
        left("HOSTNAME"),
    ]);
    for lease in &leases.leases {
        table.row([
            or_dash(&lease.port_id),
            or_dash(&lease.mac_address),
            or_dash(&lease.ip_address),
            or_dash(&lease.state),
            expiry_words(lease.expires_at, now),
            or_dash(&lease.hostname),
        ]);
    }
    table.render()
}

impl Human for LeaseList {
    fn human(&self) -> String {
        leases_table(self, unix_now())
    }
}

/// The counters of `map` in the order of `known`, then any others (from a
/// newer agent) by name; with `skip_zero`, zero counters are left out.
fn ordered_counts<'a>(
    map: &'a HashMap<String, u64>,
    known: &[&'a str],
    skip_zero: bool,
) -> Vec<(&'a str, u64)> {
    let mut others: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|key| !known.contains(key))
        .collect();
    others.sort_unstable();
    known
        .iter()
        .copied()
        .chain(others)
        .filter_map(|key| map.get(key).map(|count| (key, *count)))
        .filter(|(_, count)| !skip_zero || *count > 0)
        .collect()
}

impl Human for DhcpCounters {
    fn human(&self) -> String {
        let received: Vec<&str> = ClientMessage::ALL.iter().map(|m| m.as_str()).collect();
        let sent: Vec<&str> = ServerMessage::ALL.iter().map(|m| m.as_str()).collect();
        let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        let dropped = ordered_counts(&self.dropped, &reasons, true);
        let total_dropped: u64 = self.dropped.values().sum();

        let mut table = Table::headless([left(""), left(""), right("")]);
        fn section(title: &str, counts: Vec<(&str, u64)>, table: &mut Table) {
            for (n, (name, count)) in counts.into_iter().enumerate() {
                let title = if n == 0 { title } else { "" };
                table.row([title.to_string(), name.to_string(), count.to_string()]);
            }
        }
        section(
            "received",
            ordered_counts(&self.received, &received, false),
            &mut table,
        );
        section("sent", ordered_counts(&self.sent, &sent, false), &mut table);
        if dropped.is_empty() {
            table.row(["dropped", "none", ""]);
        } else {
            section("dropped", dropped, &mut table);
        }
        section(
            "leases",
            vec![
                ("declined", self.leases_declined),
                ("released", self.leases_released),
            ],
            &mut table,
        );
        table.row([
            "send errors".to_string(),
            String::new(),
            self.send_errors.to_string(),
        ]);
        format!(
            "{}\n{total_dropped} dropped in all; `agentctl --json dhcp` lists every reason\n",
            table.render()
        )
    }
}

/// `(kind, id, revision)` of every resource in a goal state.
fn goal_state_resources(goal_state: &GoalState) -> Vec<(&'static str, &str, u32)> {
    macro_rules! resources {
        ($($kind:literal: $states:ident),* $(,)?) => {{
            let mut resources = Vec::new();
            $(
                resources.extend(goal_state.$states.iter().map(|state| {
                    state.configuration.as_ref().map_or(($kind, "", 0), |config| {
                        ($kind, config.id.as_str(), config.revision_number)
                    })
                }));
            )*
            resources
        }};
    }
    resources!(
        "vpc": vpc_states,
        "subnet": subnet_states,
        "port": port_states,
        "neighbor": neighbor_states,
        "security-group": security_group_states,
        "dhcp": dhcp_states,
        "router": router_states,
        "gateway": gateway_states,
    )
}

impl Human for GoalState {
    fn human(&self) -> String {
        let resources = goal_state_resources(self);
        if resources.is_empty() {
            return "empty goal state: the agent holds no resources\n".into();
        }
        let mut table = Table::new([left("KIND"), left("ID"), right("REVISION")]);
        for (kind, id, revision) in &resources {
            table.row([kind.to_string(), or_dash(id), revision.to_string()]);
        }
        format!(
            "{}\n{} resources; `agentctl --json goalstate` prints them in full\n",
            table.render(),
            resources.len()
        )
    }
}

impl Human for DpPortList {
    fn human(&self) -> String {
        if self.ports.is_empty() {
            return "no ports programmed in the datapath\n".into();
        }
        let mut table = Table::new([
            left("PORT ID"),
            left("DEVICE"),
            right("IFINDEX"),
            right("VNI"),
            left("MAC"),
            left("IP"),
            left("SUBNET"),
            left("DELIVERY"),
            left("MAY SEND FROM"),
        ]);
        for port in &self.ports {
            // The port's own MAC goes without saying; a pair's is named.
            let sources: Vec<String> = port
                .sources
                .iter()
                .map(|source| {
                    if source.mac_address == port.mac_address {
                        source.prefix.clone()
                    } else {
                        format!("{} ({})", source.prefix, source.mac_address)
                    }
                })
                .collect();
            table.row([
                or_dash(&port.port_id),
                or_dash(&port.device),
                port.ifindex.to_string(),
                port.vni.to_string(),
                or_dash(&port.mac_address),
                or_dash(&port.ip_address),
                or_dash(&port.subnet),
                or_dash(&port.delivery),
                or_dash(&sources.join(", ")),
            ]);
        }
        table.render()
    }
}

impl Human for DpEndpointList {
    fn human(&self) -> String {
        if self.endpoints.is_empty() {
            return "no endpoints in the datapath\n".into();
        }
        let mut table = Table::new([right("VNI"), left("IP"), left("MAC"), left("LOCATION")]);
        for endpoint in &self.endpoints {
            let mut location = endpoint.location.clone();
            if !endpoint.neighbor_id.is_empty() {
                location.push_str(&format!(" (neighbor {})", endpoint.neighbor_id));
            }
            table.row([
                endpoint.vni.to_string(),
                or_dash(&endpoint.ip_address),
                or_dash(&endpoint.mac_address),
                or_dash(&location),
            ]);
        }
        table.render()
    }
}

/// `10.0.1.0/24 (sn1)`, or the prefix alone if the subnet has no id.
fn subnet_words(prefix: &str, id: &str) -> String {
    if id.is_empty() {
        prefix.into()
    } else {
        format!("{prefix} ({id})")
    }
}

impl Human for DpRouteList {
    fn human(&self) -> String {
        if self.routes.is_empty() {
            return "no routes: no router connects two subnets served here\n".into();
        }
        let mut table = Table::new([
            right("VNI"),
            left("FROM"),
            left("TO"),
            left("ROUTER"),
            left("VIA GATEWAY"),
        ]);
        for route in &self.routes {
            let router = if route.router_id.is_empty() {
                format!("tag {:#010x}", route.router_tag)
            } else {
                route.router_id.clone()
            };
            table.row([
                route.vni.to_string(),
                subnet_words(&route.from_subnet, &route.from_subnet_id),
                subnet_words(&route.to_subnet, &route.to_subnet_id),
                router,
                format!("{} ({})", route.via_gateway_ip, route.via_gateway_mac),
            ]);
        }
        table.render()
    }
}

/// A kind of drop reason the datapath counts: the port program's
/// (`DropReason`) or the underlay's (`UnderlayDropReason`).
trait Reason: Copy + 'static {
    /// Every reason, in value order: the order drops are listed in.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    fn description(self) -> &'static str;
}

macro_rules! reason {
    ($reason:ty) => {
        impl Reason for $reason {
            const ALL: &'static [Self] = &<$reason>::ALL;
            fn name(self) -> &'static str {
                <$reason>::name(self)
            }
            fn description(self) -> &'static str {
                <$reason>::description(self)
            }
        }
    };
}

reason!(datapath::DropReason);
reason!(datapath::UnderlayDropReason);

/// The names of `R`'s reasons in value order.
fn drop_order<R: Reason>() -> Vec<&'static str> {
    R::ALL.iter().map(|reason| reason.name()).collect()
}

/// What the reason of `R` named `name` means ("" if there is none).
fn drop_meaning<R: Reason>(name: &str) -> &'static str {
    R::ALL
        .iter()
        .find(|reason| reason.name() == name)
        .map_or("", |reason| reason.description())
}

impl Human for DpCounterList {
    fn human(&self) -> String {
        if self.ports.is_empty() {
            return "no ready ports\n".into();
        }
        let mut table = Table::new([
            left("PORT ID"),
            left("DEVICE"),
            right("IFINDEX"),
            right("RX PACKETS"),
            right("RX BYTES"),
            right("TX PACKETS"),
            right("TX BYTES"),
            right("ENCAP PACKETS"),
            right("DECAP PACKETS"),
            right("DROPPED"),
        ]);
        let order = drop_order::<datapath::DropReason>();
        let mut drops = Table::new([
            left("PORT ID"),
            left("REASON"),
            right("DROPPED"),
            left("MEANING"),
        ]);
        let mut any_drops = false;
        for port in &self.ports {
            table.row([
                port.port_id.clone(),
                or_dash(&port.device),
                port.ifindex.to_string(),
                port.rx_packets.to_string(),
                port.rx_bytes.to_string(),
                port.tx_packets.to_string(),
                port.tx_bytes.to_string(),
                port.encap_packets.to_string(),
                port.decap_packets.to_string(),
                port.dropped.to_string(),
            ]);
            for (reason, count) in ordered_counts(&port.drops, &order, true) {
                any_drops = true;
                drops.row([
                    port.port_id.clone(),
                    reason.to_string(),
                    count.to_string(),
                    drop_meaning::<datapath::DropReason>(reason).to_string(),
                ]);
            }
        }
        let drops = if any_drops {
            drops.render()
        } else {
            "no drops\n".into()
        };
        format!(
            "{}\n{drops}\nRX: sent by the VM, TX: sent to the VM; ENCAP: sent to other hosts in \
             VXLAN, DECAP: received from them; drops are of frames the VM sent\n",
            table.render()
        )
    }
}

impl Human for DpNeighborList {
    fn human(&self) -> String {
        if self.neighbors.is_empty() {
            return "no addresses on other hosts in the datapath\n".into();
        }
        let mut table = Table::new([
            right("VNI"),
            left("IP"),
            left("MAC"),
            left("HOST"),
            left("NEIGHBOR"),
        ]);
        for neighbor in &self.neighbors {
            table.row([
                neighbor.vni.to_string(),
                or_dash(&neighbor.ip_address),
                or_dash(&neighbor.mac_address),
                or_dash(&neighbor.host),
                or_dash(&neighbor.neighbor_id),
            ]);
        }
        table.render()
    }
}

/// `underlay0 (ifindex 2)`, or `ifindex 2` when the name is not known.
fn device_words(name: &str, ifindex: u32) -> String {
    match (name.is_empty(), ifindex) {
        (true, 0) => "-".into(),
        (true, ifindex) => format!("ifindex {ifindex}"),
        (false, 0) => name.into(),
        (false, ifindex) => format!("{name} (ifindex {ifindex})"),
    }
}

/// `, 3 of them fragmented by the VXLAN device`, if any.
fn through_device(packets: u64, verb: &str) -> String {
    if packets == 0 {
        return String::new();
    }
    format!(", {packets} of them {verb} the VXLAN device")
}

impl Human for DpTunnels {
    fn human(&self) -> String {
        let underlay = self.underlay.clone().unwrap_or_default();
        if underlay.ip_address.is_empty() {
            return "no underlay: VMs reach only the VMs of this host (start the agent with \
                    --underlay-dev)\n"
                .into();
        }
        let mut about = Table::headless([left(""), left("")]);
        let xdp =
            if underlay.xdp_configured.is_empty() || underlay.xdp_configured == underlay.xdp_mode {
                underlay.xdp_mode.clone()
            } else {
                format!(
                    "{} (configured {}: the driver refused it)",
                    underlay.xdp_mode, underlay.xdp_configured
                )
            };
        let vnis: Vec<String> = underlay.vnis.iter().map(ToString::to_string).collect();
        for (key, value) in [
            (
                "underlay",
                format!(
                    "{}, {}, {}, MTU {}",
                    device_words(&underlay.device, underlay.ifindex),
                    underlay.ip_address,
                    underlay.mac_address,
                    underlay.mtu
                ),
            ),
            (
                "tc ingress",
                "underlay_in (decapsulates VXLAN for the VNIs served here)".into(),
            ),
            ("xdp", xdp),
            (
                "vxlan device",
                format!(
                    "{}, external mode, UDP 4789",
                    device_words(&underlay.vxlan_device, underlay.vxlan_ifindex)
                ),
            ),
            ("vnis served", or_dash(&vnis.join(", "))),
            (
                "encapsulated",
                format!(
                    "{} packets, {} bytes{}",
                    self.encap_packets,
                    self.encap_bytes,
                    through_device(self.device_encap_packets, "fragmented by")
                ),
            ),
            (
                "decapsulated",
                format!(
                    "{} packets, {} bytes{}",
                    self.decap_packets,
                    self.decap_bytes,
                    through_device(self.device_decap_packets, "by")
                ),
            ),
        ] {
            about.row([key.to_string(), value]);
        }
        let hosts = if self.hosts.is_empty() {
            "no other hosts known\n".to_string()
        } else {
            let mut hosts = Table::new([
                left("HOST"),
                left("NEXT HOP"),
                left("MAC"),
                right("ENDPOINTS"),
            ]);
            for host in &self.hosts {
                let next_hop = match host.next_hop.as_str() {
                    "neighbor" => "kernel (route, neighbour table)",
                    "mac" => "MAC written by the datapath",
                    other => other,
                };
                hosts.row([
                    host.ip_address.clone(),
                    next_hop.to_string(),
                    or_dash(&host.mac_address),
                    host.endpoints.to_string(),
                ]);
            }
            hosts.render()
        };
        let mut drops = Table::new([left("REASON"), right("DROPPED"), left("MEANING")]);
        let order = drop_order::<datapath::UnderlayDropReason>();
        let happened = ordered_counts(&self.drops, &order, true);
        for (reason, count) in &happened {
            drops.row([
                reason.to_string(),
                count.to_string(),
                drop_meaning::<datapath::UnderlayDropReason>(reason).to_string(),
            ]);
        }
        let drops = if happened.is_empty() {
            "no underlay drops\n".to_string()
        } else {
            drops.render()
        };
        format!("{}\n{hosts}\n{drops}", about.render())
    }
}

fn verdict_word(reply: &TraceReply) -> String {
    match TraceVerdict::try_from(reply.verdict) {
        Ok(TraceVerdict::Dropped) => format!("DROPPED ({}):", reply.drop_reason),
        Ok(TraceVerdict::Delivered) => "DELIVERED".into(),
        Ok(TraceVerdict::Routed) => "ROUTED".into(),
        Ok(TraceVerdict::Answered) => "ANSWERED".into(),
        Ok(TraceVerdict::Passed) => "PASSED".into(),
        Ok(TraceVerdict::Encapsulated) => "ENCAPSULATED".into(),
        Ok(TraceVerdict::Unspecified) | Err(_) => format!("verdict {}:", reply.verdict),
    }
}

/// `src -> dst`, then the IPv4 fields that routing changes, or the ARP
/// answer: `fa:.. -> fa:.., TTL 63, IP checksum 0x1a2b`.
fn frame_words(headers: &FrameHeaders, addresses: bool) -> String {
    let mut words = format!("{} -> {}", headers.eth_src, headers.eth_dst);
    if let Some(ip) = &headers.ipv4 {
        if addresses {
            words.push_str(&format!(
                ", {} -> {} {}",
                ip.src,
                ip.dst,
                ip.protocol.to_uppercase()
            ));
            if !ip.transport.is_empty() {
                words.push_str(&format!(" {}", ip.transport));
            }
        }
        words.push_str(&format!(
            ", TTL {}, IP checksum {:#06x}",
            ip.ttl, ip.checksum
        ));
        if !ip.checksum_valid {
            words.push_str(" (WRONG)");
        }
    }
    if let Some(arp) = &headers.arp {
        words.push_str(&format!(
            ", ARP {}: {} is at {}",
            arp.operation, arp.sender_ip, arp.sender_mac
        ));
    }
    words
}

/// The outer headers of an encapsulated frame: `198.18.0.1 -> 198.18.0.2
/// UDP 51234 -> 4789, VXLAN VNI 100, TTL 64, out of underlay0`, and the
/// outer MACs when the datapath writes them (the verdict says who else
/// does).
fn outer_words(outer: &Encapsulation) -> String {
    let macs = if outer.next_hop == "mac" {
        format!(", MACs {} -> {}", outer.outer_src_mac, outer.outer_dst_mac)
    } else {
        String::new()
    };
    format!(
        "{} -> {} UDP {} -> {}, VXLAN VNI {}, TTL {}, out of {}{macs}",
        outer.outer_src_ip,
        outer.outer_dst_ip,
        outer.udp_src_port,
        outer.udp_dst_port,
        outer.vni,
        outer.outer_ttl,
        outer.underlay_device
    )
}

/// `agentctl trace`: what was sent, the verdict in words, and the frame
/// that comes out when there is one; with `hex`, both frames in full.
pub fn trace_text(reply: &TraceReply, hex: bool) -> String {
    let mut out = String::new();
    let mut about = vec![reply.device.clone()];
    about.extend(reply.ip_addresses.iter().cloned());
    about.push(reply.mac_address.clone());
    out.push_str(&format!(
        "port {} ({}) sends {}\n",
        reply.port_id,
        about.join(", "),
        reply.packet
    ));
    let input = reply.input.clone().unwrap_or_default();
    let mut frame = format!("{} -> {}", input.eth_src, input.eth_dst);
    if !reply.dst_mac_source.is_empty() {
        frame.push_str(&format!(" ({})", reply.dst_mac_source));
    }
    if let Some(ip) = &input.ipv4 {
        frame.push_str(&format!(", TTL {}", ip.ttl));
    }
    out.push_str(&format!("  frame: {frame}\n"));
    out.push_str(&format!(
        "verdict: {} {}\n",
        verdict_word(reply),
        reply.explanation
    ));
    let output = reply.output.clone().unwrap_or_default();
    match TraceVerdict::try_from(reply.verdict) {
        Ok(TraceVerdict::Routed) => {
            out.push_str(&format!("  rewritten: {}\n", frame_words(&output, false)));
        }
        Ok(TraceVerdict::Delivered) => {
            out.push_str(&format!("  unchanged: {}\n", frame_words(&output, false)));
        }
        Ok(TraceVerdict::Encapsulated) => {
            if let Some(outer) = &reply.encapsulation {
                out.push_str(&format!("  outer: {}\n", outer_words(outer)));
                if let Some(inner) = &outer.inner {
                    out.push_str(&format!("  inner: {}\n", frame_words(inner, false)));
                }
            }
        }
        Ok(TraceVerdict::Answered) => {
            out.push_str(&format!("  reply: {}\n", frame_words(&output, true)));
        }
        Ok(TraceVerdict::Dropped) => {
            out.push_str(&format!(
                "  a real frame like this is counted under {} in `agentctl dp counters {}`\n",
                reply.drop_reason, reply.port_id
            ));
        }
        _ => {}
    }
    if hex {
        out.push_str(&format!(
            "\nframe sent ({} bytes):\n{}",
            reply.input_frame.len(),
            hexdump(&reply.input_frame)
        ));
        out.push_str(&format!(
            "\nframe out of the program ({} bytes):\n{}",
            reply.output_frame.len(),
            reply.output_hexdump
        ));
    }
    out
}

impl Human for TraceReply {
    fn human(&self) -> String {
        trace_text(self, false)
    }
}

#[cfg(test)]
mod tests {
    use alcor_proto::{
        control::{
            ArpHeader, DpEndpoint, DpHost, DpNeighbor, DpPortCounters, DpRoute, DpUnderlay,
            FixedIp, Ipv4Header, Lease, Neighbor, NeighborIp, NextHop, PortCounters,
        },
        schema::{PortConfiguration, PortState, VpcConfiguration, VpcState},
    };

    use super::*;

    #[test]
    fn enums_are_words() {
        assert_eq!(phase_word(PortPhase::Ready as i32), "ready");
        assert_eq!(phase_word(PortPhase::Pending as i32), "pending");
        assert_eq!(phase_word(PortPhase::Failed as i32), "failed");
        assert_eq!(phase_word(PortPhase::Unbound as i32), "unbound");
        assert_eq!(phase_word(42), "phase 42");
        assert_eq!(binding_word(PortBinding::Tap as i32), "tap");
        assert_eq!(binding_word(PortBinding::Netns as i32), "netns");
        assert_eq!(binding_word(7), "binding 7");
    }

    #[test]
    fn uptime_leaves_out_leading_zero_units() {
        assert_eq!(uptime_words(0), "0s");
        assert_eq!(uptime_words(59), "59s");
        assert_eq!(uptime_words(3_600), "1h 0m 0s");
        assert_eq!(uptime_words(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn empty_lists_say_so() {
        assert_eq!(PortList::default().human(), "no ports\n");
        assert_eq!(VpcList::default().human(), "no vpcs\n");
        assert_eq!(SubnetList::default().human(), "no subnets\n");
        assert_eq!(NeighborList::default().human(), "no neighbors\n");
        assert_eq!(CounterList::default().human(), "no ready ports\n");
        assert!(GoalState::default().human().starts_with("empty goal state"));
    }

    #[test]
    fn ports_table_aligns_words_and_addresses() {
        let ready = Port {
            id: "3f1e2d4c-5b6a".into(),
            revision: 2,
            vpc_id: "vpc1".into(),
            mac_address: "fa:16:3e:00:10:01".into(),
            fixed_ips: vec![FixedIp {
                subnet_id: "sn1".into(),
                ip_address: "10.0.1.10".into(),
            }],
            binding: PortBinding::Netns as i32,
            netns: "vm1".into(),
            device: "tap3f1e2d4c-5b".into(),
            ifindex: 12,
            phase: PortPhase::Ready as i32,
            ..Default::default()
        };
        let pending = Port {
            id: "p2".into(),
            revision: 1,
            device: "tapp2".into(),
            phase: PortPhase::Pending as i32,
            reason: "waiting for tapp2".into(),
            ..Default::default()
        };
        let table = PortList {
            ports: vec![ready, pending],
        }
        .human();
        assert_eq!(
            table,
            "PORT ID        PHASE    DEVICE          IFINDEX  MAC                \
             IP         BINDING    VPC   REV  REASON\n\
             3f1e2d4c-5b6a  ready    tap3f1e2d4c-5b       12  fa:16:3e:00:10:01  \
             10.0.1.10  netns:vm1  vpc1    2\n\
             p2             pending  tapp2                 -  -                  \
             -          tap        -       1  waiting for tapp2\n"
        );
    }

    #[test]
    fn status_shows_counts_and_unbound_ports() {
        let status = AgentStatus {
            version: "0.1.0".into(),
            uptime_seconds: 65,
            grpc_listen: "127.0.0.1:50001".into(),
            ports: 4,
            ports_ready: 2,
            ports_pending: 1,
            vpcs: 1,
            ..Default::default()
        };
        let text = status.human();
        assert!(text.contains("uptime            1m 5s\n"), "{text}");
        assert!(text.contains("127.0.0.1:50001 (plaintext)"), "{text}");
        assert!(text.contains("underlay          -\n"), "{text}");
        assert!(
            text.contains("ports             4 (2 ready, 1 pending, 0 failed, 1 unbound)\n"),
            "{text}"
        );
        assert!(text.contains("vpcs              1\n"), "{text}");
    }

    #[test]
    fn status_shows_the_controller_link() {
        let alone = AgentStatus::default().human();
        assert!(alone.contains("controller        - (none"), "{alone}");
        let link = ControllerLink {
            url: "https://198.18.0.254:9697".into(),
            host_id: "compute-1".into(),
            goal_state_endpoint: "https://198.18.0.1:50001".into(),
            registered: false,
            last_heartbeat_at: 1_000,
            last_error: "heartbeat: Unavailable: connection refused".into(),
            last_error_at: 1_063,
            heartbeats_ok: 12,
            heartbeats_failed: 3,
            state_requests: 1,
        };
        let rows = controller_rows(Some(&link), 1_065);
        assert_eq!(
            rows,
            [
                (
                    "controller",
                    "https://198.18.0.254:9697 (not registered, last heartbeat 1m5s ago)".into()
                ),
                ("host id", "compute-1".into()),
                ("advertised as", "https://198.18.0.1:50001".into()),
                (
                    "heartbeats",
                    "12 answered, 3 failed; 1 whole-state requests".into()
                ),
                (
                    "last error",
                    "heartbeat: Unavailable: connection refused (2s ago)".into()
                ),
            ]
        );
        let fresh = ControllerLink {
            last_heartbeat_at: 0,
            last_error: String::new(),
            ..link
        };
        let rows = controller_rows(Some(&fresh), 1_065);
        assert_eq!(rows.len(), 4, "no error row without an error");
        assert!(rows[0].1.contains("no heartbeat answered yet"), "{rows:?}");
    }

    #[test]
    fn neighbor_ips_and_types_line_up() {
        let neighbors = NeighborList {
            neighbors: vec![Neighbor {
                id: "n1".into(),
                fixed_ips: vec![
                    NeighborIp {
                        ip_address: "10.0.1.5".into(),
                        l3: false,
                        ..Default::default()
                    },
                    NeighborIp {
                        ip_address: "10.0.2.5".into(),
                        l3: true,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        };
        let text = neighbors.human();
        assert!(text.contains("10.0.1.5,10.0.2.5  l2,l3"), "{text}");
    }

    #[test]
    fn counters_are_right_aligned() {
        let counters = CounterList {
            ports: vec![PortCounters {
                port_id: "p1".into(),
                device: "tapp1".into(),
                ifindex: 3,
                rx_packets: 1_000_000,
                ..Default::default()
            }],
        };
        assert_eq!(
            counters.human(),
            "PORT ID  DEVICE  IFINDEX  RX PACKETS  RX BYTES  TX PACKETS  TX BYTES\n\
             p1       tapp1         3     1000000         0           0         0\n"
        );
    }

    #[test]
    fn goal_state_summary_lists_kind_id_and_revision() {
        let goal_state = GoalState {
            vpc_states: vec![VpcState {
                configuration: Some(VpcConfiguration {
                    id: "vpc1".into(),
                    revision_number: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            port_states: vec![PortState {
                configuration: Some(PortConfiguration {
                    id: "port-1".into(),
                    revision_number: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            goal_state.human(),
            "KIND  ID      REVISION\n\
             vpc   vpc1           3\n\
             port  port-1         1\n\
             \n2 resources; `agentctl --json goalstate` prints them in full\n"
        );
    }
    #[test]
    fn durations_keep_their_two_largest_units() {
        assert_eq!(duration_words(0), "0s");
        assert_eq!(duration_words(45), "45s");
        assert_eq!(duration_words(180), "3m");
        assert_eq!(duration_words(192), "3m12s");
        assert_eq!(duration_words(86_399), "23h59m");
        assert_eq!(duration_words(86_400), "1d");
        // Seconds go once there are hours.
        assert_eq!(duration_words(3_601), "1h");
        assert_eq!(duration_words(2 * 86_400 + 3 * 3_600 + 59), "2d3h");
    }

    #[test]
    fn expiry_is_relative_to_now() {
        let now = 1_800_000_000;
        assert_eq!(expiry_words(now + 86_399, now), "in 23h59m");
        assert_eq!(expiry_words(now + 30, now), "in 30s");
        assert_eq!(expiry_words(now, now), "expires now");
        assert_eq!(expiry_words(now - 180, now), "expired 3m ago");
        assert_eq!(expiry_words(now - 3 * 86_400, now), "expired 3d ago");
        assert_eq!(expiry_words(0, now), "-");
    }

    #[test]
    fn leases_table_shows_state_expiry_and_hostname() {
        let now = 1_800_000_000;
        let lease = |port: &str, mac: &str, ip: &str, state: &str, expires_at, host: &str| Lease {
            port_id: port.into(),
            vpc_id: "vpc1".into(),
            mac_address: mac.into(),
            ip_address: ip.into(),
            state: state.into(),
            expires_at,
            hostname: host.into(),
        };
        let leases = LeaseList {
            leases: vec![
                lease(
                    "port-a",
                    "fa:16:3e:00:10:01",
                    "10.0.1.10",
                    "bound",
                    now + 86_399,
                    "vm-a",
                ),
                lease(
                    "port-b",
                    "fa:16:3e:00:10:02",
                    "10.0.1.11",
                    "released",
                    now - 180,
                    "",
                ),
            ],
        };
        assert_eq!(
            leases_table(&leases, now),
            "PORT    MAC                IP         STATE     EXPIRES         HOSTNAME\n\
             port-a  fa:16:3e:00:10:01  10.0.1.10  bound     in 23h59m       vm-a\n\
             port-b  fa:16:3e:00:10:02  10.0.1.11  released  expired 3m ago  -\n"
        );
        assert_eq!(leases_table(&LeaseList::default(), now), "no leases\n");
    }

    fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn dhcp_counters_list_types_in_protocol_order_and_only_drops_that_happened() {
        let counters = DhcpCounters {
            received: counts(&[
                ("inform", 1),
                ("discover", 12),
                ("request", 11),
                ("release", 1),
                ("decline", 0),
                ("other", 0),
            ]),
            sent: counts(&[("nak", 1), ("ack", 11), ("offer", 12)]),
            dropped: counts(&[
                ("truncated", 0),
                ("unknown_mac", 3),
                ("spoofed_chaddr", 0),
                ("wrong_vpc", 1),
                // A reason this agentctl does not know comes last.
                ("from_the_future", 2),
            ]),
            leases_declined: 0,
            leases_released: 1,
            send_errors: 0,
        };
        assert_eq!(
            counters.human(),
            "received     discover         12\n\
             \x20            request          11\n\
             \x20            decline           0\n\
             \x20            release           1\n\
             \x20            inform            1\n\
             \x20            other             0\n\
             sent         offer            12\n\
             \x20            ack              11\n\
             \x20            nak               1\n\
             dropped      unknown_mac       3\n\
             \x20            wrong_vpc         1\n\
             \x20            from_the_future   2\n\
             leases       declined          0\n\
             \x20            released          1\n\
             send errors                    0\n\
             \n6 dropped in all; `agentctl --json dhcp` lists every reason\n"
        );
    }

    #[test]
    fn dhcp_counters_without_drops_say_none() {
        let counters = DhcpCounters {
            dropped: counts(&[("unknown_mac", 0)]),
            ..Default::default()
        };
        let text = counters.human();
        assert!(text.contains("dropped      none\n"), "{text}");
        assert!(text.ends_with("\n0 dropped in all; `agentctl --json dhcp` lists every reason\n"));
    }

    fn headers(src: &str, dst: &str, ipv4: Option<Ipv4Header>) -> Option<FrameHeaders> {
        Some(FrameHeaders {
            eth_src: src.into(),
            eth_dst: dst.into(),
            ethertype: "IPv4".into(),
            ipv4,
            ..Default::default()
        })
    }

    fn ipv4(src: &str, dst: &str, ttl: u32, checksum: u32, transport: &str) -> Option<Ipv4Header> {
        Some(Ipv4Header {
            src: src.into(),
            dst: dst.into(),
            ttl,
            protocol: "icmp".into(),
            checksum,
            checksum_valid: true,
            transport: transport.into(),
            ..Default::default()
        })
    }

    /// web-1 pings db-1 across router r1.
    fn routed() -> TraceReply {
        TraceReply {
            port_id: "web-1".into(),
            device: "tapweb-1".into(),
            ifindex: 7,
            mac_address: "fa:16:3e:00:00:0a".into(),
            ip_addresses: vec!["10.0.1.10".into()],
            packet: "ICMP echo 10.0.1.10 -> 10.0.2.20".into(),
            dst_mac_source: "gateway of 10.0.1.0/24".into(),
            verdict: TraceVerdict::Routed as i32,
            explanation: "to port db-1 (tapdb-1) via router r1".into(),
            next_hop: Some(NextHop {
                kind: "port".into(),
                port_id: "db-1".into(),
                routed: true,
                ..Default::default()
            }),
            input: headers(
                "fa:16:3e:00:00:0a",
                "fa:16:3e:ff:ff:01",
                ipv4("10.0.1.10", "10.0.2.20", 64, 0x1a2a, "echo request"),
            ),
            output: headers(
                "fa:16:3e:ff:ff:02",
                "fa:16:3e:00:00:14",
                ipv4("10.0.1.10", "10.0.2.20", 63, 0x1a2b, "echo request"),
            ),
            input_frame: vec![0xfa, 0x16],
            output_frame: vec![0xfa, 0x16, 0x3e],
            output_hexdump: "0000  fa 16 3e\n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_routed_trace_shows_the_rewritten_headers() {
        assert_eq!(
            trace_text(&routed(), false),
            "port web-1 (tapweb-1, 10.0.1.10, fa:16:3e:00:00:0a) sends ICMP echo 10.0.1.10 -> \
             10.0.2.20\n\
             \x20 frame: fa:16:3e:00:00:0a -> fa:16:3e:ff:ff:01 (gateway of 10.0.1.0/24), TTL 64\n\
             verdict: ROUTED to port db-1 (tapdb-1) via router r1\n\
             \x20 rewritten: fa:16:3e:ff:ff:02 -> fa:16:3e:00:00:14, TTL 63, IP checksum 0x1a2b\n"
        );
        let mut wrong = routed();
        if let Some(ip) = wrong.output.as_mut().and_then(|o| o.ipv4.as_mut()) {
            ip.checksum_valid = false;
        }
        assert!(
            trace_text(&wrong, false).contains("IP checksum 0x1a2b (WRONG)\n"),
            "a wrong checksum is pointed out"
        );
    }

    #[test]
    fn a_trace_with_hex_dumps_both_frames() {
        let text = trace_text(&routed(), true);
        assert!(
            text.ends_with(
                "\nframe sent (2 bytes):\n0000  fa 16{}|..|\n\
                 \nframe out of the program (3 bytes):\n0000  fa 16 3e\n"
                    .replace("{}", &" ".repeat(45))
                    .as_str()
            ),
            "{text}"
        );
    }

    #[test]
    fn a_dropped_trace_gives_the_reason_and_where_it_is_counted() {
        let reply = TraceReply {
            verdict: TraceVerdict::Dropped as i32,
            drop_reason: "spoofed-ip".into(),
            explanation: "the source address 10.9.9.9 is not the port's (10.0.1.10) nor one of \
                          its allowed address pairs"
                .into(),
            output: None,
            ..routed()
        };
        let text = trace_text(&reply, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2..],
            [
                "verdict: DROPPED (spoofed-ip): the source address 10.9.9.9 is not the port's \
                 (10.0.1.10) nor one of its allowed address pairs",
                "  a real frame like this is counted under spoofed-ip in \
                 `agentctl dp counters web-1`",
            ]
        );
    }

    #[test]
    fn an_answered_arp_shows_the_reply() {
        let reply = TraceReply {
            packet: "ARP request: who has 10.0.1.1? tell 10.0.1.10".into(),
            dst_mac_source: "broadcast".into(),
            verdict: TraceVerdict::Answered as i32,
            answer: "arp-reply".into(),
            explanation: "in place: ARP reply, 10.0.1.1 is at fa:16:3e:ff:ff:01 (the gateway of \
                          10.0.1.0/24)"
                .into(),
            input: Some(FrameHeaders {
                eth_src: "fa:16:3e:00:00:0a".into(),
                eth_dst: "ff:ff:ff:ff:ff:ff".into(),
                ethertype: "ARP".into(),
                ..Default::default()
            }),
            output: Some(FrameHeaders {
                eth_src: "fa:16:3e:ff:ff:01".into(),
                eth_dst: "fa:16:3e:00:00:0a".into(),
                ethertype: "ARP".into(),
                arp: Some(ArpHeader {
                    operation: "reply".into(),
                    sender_mac: "fa:16:3e:ff:ff:01".into(),
                    sender_ip: "10.0.1.1".into(),
                    target_mac: "fa:16:3e:00:00:0a".into(),
                    target_ip: "10.0.1.10".into(),
                }),
                ..Default::default()
            }),
            ..routed()
        };
        let text = trace_text(&reply, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1..],
            [
                "  frame: fa:16:3e:00:00:0a -> ff:ff:ff:ff:ff:ff (broadcast)",
                "verdict: ANSWERED in place: ARP reply, 10.0.1.1 is at fa:16:3e:ff:ff:01 (the \
                 gateway of 10.0.1.0/24)",
                "  reply: fa:16:3e:ff:ff:01 -> fa:16:3e:00:00:0a, ARP reply: 10.0.1.1 is at \
                 fa:16:3e:ff:ff:01",
            ]
        );
    }

    #[test]
    fn an_unknown_verdict_is_shown_by_number() {
        let reply = TraceReply {
            verdict: 42,
            explanation: "something new".into(),
            ..routed()
        };
        assert!(trace_text(&reply, false).contains("\nverdict: verdict 42: something new\n"));
    }

    #[test]
    fn dp_counters_list_only_the_drops_that_happened() {
        let mut drops: HashMap<String, u64> = datapath::DropReason::ALL
            .iter()
            .map(|reason| (reason.name().to_string(), 0))
            .collect();
        drops.insert("spoofed-ip".into(), 3);
        drops.insert("arp-unknown-target".into(), 1);
        let counters = DpCounterList {
            ports: vec![
                DpPortCounters {
                    port_id: "web-1".into(),
                    device: "tapweb-1".into(),
                    ifindex: 7,
                    rx_packets: 12,
                    dropped: 4,
                    drops,
                    ..Default::default()
                },
                DpPortCounters {
                    port_id: "db-1".into(),
                    device: "tapdb-1".into(),
                    ifindex: 8,
                    ..Default::default()
                },
            ],
        };
        let text = counters.human();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..3],
            [
                concat!(
                    "PORT ID  DEVICE    IFINDEX  RX PACKETS  RX BYTES  TX PACKETS  TX BYTES",
                    "  ENCAP PACKETS  DECAP PACKETS  DROPPED"
                ),
                concat!(
                    "web-1    tapweb-1        7          12         0           0         0",
                    "              0              0        4"
                ),
                concat!(
                    "db-1     tapdb-1         8           0         0           0         0",
                    "              0              0        0"
                ),
            ]
        );
        // In the reasons' order, with what they mean.
        assert!(lines[4].starts_with("PORT ID  REASON"), "{text}");
        assert!(
            lines[5].starts_with("web-1    spoofed-ip                3  the source IP address"),
            "{text}"
        );
        assert!(
            lines[6].starts_with("web-1    arp-unknown-target        1  ARP request"),
            "{text}"
        );
        assert_eq!(lines[7], "", "{text}");

        let quiet = DpCounterList {
            ports: vec![counters.ports[1].clone()],
        };
        assert!(
            quiet.human().contains("\n\nno drops\n\n"),
            "{}",
            quiet.human()
        );
        assert_eq!(DpCounterList::default().human(), "no ready ports\n");
    }

    #[test]
    fn dp_endpoints_and_routes_tables() {
        let endpoints = DpEndpointList {
            endpoints: vec![
                DpEndpoint {
                    vni: 100,
                    ip_address: "10.0.1.10".into(),
                    mac_address: "fa:16:3e:00:00:0a".into(),
                    location: "local port web-1 (tapweb-1, peer)".into(),
                    ..Default::default()
                },
                DpEndpoint {
                    vni: 100,
                    ip_address: "10.0.2.30".into(),
                    mac_address: "fa:16:3e:00:00:1e".into(),
                    location: "remote host 198.18.0.2".into(),
                    neighbor_id: "n1".into(),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            endpoints.human(),
            "VNI  IP         MAC                LOCATION\n\
             100  10.0.1.10  fa:16:3e:00:00:0a  local port web-1 (tapweb-1, peer)\n\
             100  10.0.2.30  fa:16:3e:00:00:1e  remote host 198.18.0.2 (neighbor n1)\n"
        );
        let routes = DpRouteList {
            routes: vec![
                DpRoute {
                    vni: 100,
                    from_subnet: "10.0.1.0/24".into(),
                    from_subnet_id: "sn1".into(),
                    to_subnet: "10.0.2.0/24".into(),
                    to_subnet_id: "sn2".into(),
                    router_id: "r1".into(),
                    router_tag: 0xdead_beef,
                    via_gateway_ip: "10.0.2.1".into(),
                    via_gateway_mac: "fa:16:3e:ff:ff:02".into(),
                },
                DpRoute {
                    vni: 100,
                    from_subnet: "10.0.2.0/24".into(),
                    to_subnet: "10.0.1.0/24".into(),
                    router_tag: 0xdead_beef,
                    via_gateway_ip: "10.0.1.1".into(),
                    via_gateway_mac: "fa:16:3e:ff:ff:01".into(),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            routes.human(),
            "VNI  FROM               TO                 ROUTER          VIA GATEWAY\n\
             100  10.0.1.0/24 (sn1)  10.0.2.0/24 (sn2)  r1              10.0.2.1 (fa:16:3e:ff:ff:02)\n\
             100  10.0.2.0/24        10.0.1.0/24        tag 0xdeadbeef  10.0.1.1 (fa:16:3e:ff:ff:01)\n"
        );
        assert_eq!(
            DpEndpointList::default().human(),
            "no endpoints in the datapath\n"
        );
        assert!(DpRouteList::default().human().starts_with("no routes"));
        assert!(DpPortList::default().human().starts_with("no ports"));
    }

    #[test]
    fn dp_tunnels_show_the_endpoint_hosts_and_drops_that_happened() {
        let mut drops: HashMap<String, u64> = datapath::UnderlayDropReason::ALL
            .iter()
            .map(|reason| (reason.name().to_string(), 0))
            .collect();
        drops.insert("xdp-unknown-vni".into(), 5);
        let tunnels = DpTunnels {
            underlay: Some(DpUnderlay {
                device: "underlay0".into(),
                ifindex: 2,
                ip_address: "198.18.0.1".into(),
                mac_address: "02:00:c6:12:00:01".into(),
                mtu: 1500,
                xdp_configured: "native".into(),
                xdp_mode: "off".into(),
                vxlan_device: "alcor-vxlan".into(),
                vxlan_ifindex: 5,
                vnis: vec![100, 200],
            }),
            hosts: vec![DpHost {
                ip_address: "198.18.0.2".into(),
                next_hop: "neighbor".into(),
                mac_address: String::new(),
                endpoints: 3,
            }],
            encap_packets: 7,
            encap_bytes: 700,
            drops,
            dropped: 5,
            ..Default::default()
        };
        let text = tunnels.human();
        for expected in [
            "underlay      underlay0 (ifindex 2), 198.18.0.1, 02:00:c6:12:00:01, MTU 1500\n",
            "xdp           off (configured native: the driver refused it)\n",
            "vxlan device  alcor-vxlan (ifindex 5), external mode, UDP 4789\n",
            "vnis served   100, 200\n",
            "encapsulated  7 packets, 700 bytes\n",
            "198.18.0.2  kernel (route, neighbour table)  -            3\n",
            "xdp-unknown-vni        5  VXLAN for a VNI that no port of this host is in (dropped \
             early, by XDP)\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(!text.contains("malformed"), "{text}");
        let none = DpTunnels::default().human();
        assert!(none.starts_with("no underlay"), "{none}");
    }

    #[test]
    fn an_encapsulated_trace_shows_the_outer_headers() {
        let reply = TraceReply {
            verdict: TraceVerdict::Encapsulated as i32,
            explanation: "10.0.2.30 lives on host 198.18.0.2: ...".into(),
            encapsulation: Some(Encapsulation {
                outer_src_ip: "198.18.0.1".into(),
                outer_dst_ip: "198.18.0.2".into(),
                udp_src_port: 51234,
                udp_dst_port: 4789,
                vni: 100,
                outer_ttl: 64,
                next_hop: "neighbor".into(),
                underlay_device: "underlay0".into(),
                inner: headers(
                    "fa:16:3e:ff:ff:02",
                    "fa:16:3e:00:00:1e",
                    ipv4("10.0.1.10", "10.0.2.30", 63, 0x1234, "echo request"),
                ),
                ..Default::default()
            }),
            ..routed()
        };
        let text = trace_text(&reply, false);
        assert!(
            text.contains("\nverdict: ENCAPSULATED 10.0.2.30 lives on host"),
            "{text}"
        );
        assert!(
            text.contains(
                "\n  outer: 198.18.0.1 -> 198.18.0.2 UDP 51234 -> 4789, VXLAN VNI 100, TTL 64, out \
                 of underlay0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  inner: fa:16:3e:ff:ff:02 -> fa:16:3e:00:00:1e, TTL 63"),
            "{text}"
        );
    }

    #[test]
    fn dp_neighbors_table_names_hosts_and_neighbors() {
        let neighbors = DpNeighborList {
            neighbors: vec![DpNeighbor {
                vni: 100,
                ip_address: "10.0.1.12".into(),
                mac_address: "fa:16:3e:00:01:0c".into(),
                host: "198.18.0.2".into(),
                neighbor_id: String::new(),
            }],
        };
        assert_eq!(
            neighbors.human(),
            "VNI  IP         MAC                HOST        NEIGHBOR\n\
             100  10.0.1.12  fa:16:3e:00:01:0c  198.18.0.2  -\n"
        );
        assert_eq!(
            DpNeighborList::default().human(),
            "no addresses on other hosts in the datapath\n"
        );
    }
}
