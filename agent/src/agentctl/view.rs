//! Human-readable views of the agent's replies: tables with headers, enums
//! as words, and a sentence instead of an empty table.

use std::collections::HashMap;

use alcor_proto::{
    control::{
        AgentStatus, CounterList, DhcpCounters, LeaseList, NeighborList, Port, PortBinding,
        PortList, PortPhase, SubnetList, VpcList,
    },
    schema::GoalState,
};

use super::table::{Table, left, right};
use crate::dhcp::{
    counters::{ClientMessage, DropReason, ServerMessage},
    leases::unix_now,
};

/// A reply as an operator reads it.
pub trait Human {
    fn human(&self) -> String;
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

#[cfg(test)]
mod tests {
    use alcor_proto::{
        control::{FixedIp, Lease, Neighbor, NeighborIp, PortCounters},
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
}
