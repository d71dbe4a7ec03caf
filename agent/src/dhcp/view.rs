//! What the responder knows, as an immutable snapshot: which client MACs
//! each port device answers for, with the address and options each gets.
//!
//! [`DhcpView::build`] is a pure function of the desired state and of the
//! ports that are ready (their device's ifindex). The engine builds a new
//! view after each apply and publishes it in a [`SharedView`]; the packet
//! path loads the current one per batch, without locks.

use std::{
    collections::{HashMap, hash_map},
    net::Ipv4Addr,
    sync::Arc,
};

use arc_swap::ArcSwap;
use dhcproto::v4::DhcpOption;
use ipnet::Ipv4Net;

use super::{
    counters::DropReason,
    frame::{IP_UDP_HEADERS_LEN, Source},
    message::code,
    options::{ExtraOption, OptionTable, parse_extra},
};
use crate::core::{
    desired::DesiredState,
    model::{DhcpEntry, Mac, Port, Subnet},
};

/// The view the engine publishes and the responder reads.
pub type SharedView = Arc<ArcSwap<DhcpView>>;

/// Host-wide settings of the responder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpSettings {
    /// The MTU of port devices (underlay MTU minus VXLAN's 50 bytes): sent
    /// as option 26, and no reply is larger.
    pub port_mtu: u32,
    /// Lease time in seconds (option 51); T1 and T2 are 1/2 and 7/8 of it.
    pub lease_time: u32,
    /// Option 15; empty sends none.
    pub domain: String,
}

impl Default for DhcpSettings {
    fn default() -> Self {
        DhcpSettings {
            // The daemon's default: a 1500-byte underlay minus VXLAN.
            port_mtu: 1450,
            lease_time: 86_400,
            domain: "openstacklocal".into(),
        }
    }
}

/// What every client of a subnet is told, options encoded.
#[derive(Debug)]
pub struct SubnetOffer {
    pub subnet_id: String,
    /// The gateway: server identifier, and source of replies.
    pub server: Source,
    /// `siaddr`: PXE's next server, from the `server-ip-address` option.
    pub next_server: Ipv4Addr,
    pub lease_time: u32,
    pub renewal_time: u32,
    pub rebinding_time: u32,
    /// Every option but the per-client and per-message ones (12, 51, 53,
    /// 54, 58, 59, 61, 82).
    pub options: OptionTable,
}

/// One client's configuration.
#[derive(Debug)]
pub struct Binding {
    pub port_id: Arc<str>,
    pub vpc_id: Arc<str>,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// Option 12: the DHCP entry's `port_host_name`, else Neutron's
    /// `host-a-b-c-d`.
    pub hostname: String,
    pub subnet: Arc<SubnetOffer>,
}

#[derive(Debug)]
struct PortView {
    vpc_id: Arc<str>,
    /// The port's MACs (its own and its address pairs'); `None` when the
    /// goal state gives that MAC no address.
    macs: HashMap<Mac, Option<Binding>>,
}

#[derive(Debug, Default)]
pub struct DhcpView {
    ports: HashMap<u32, PortView>,
    /// The VPCs of the ready ports of each MAC, to tell why a client gets
    /// no answer.
    owners: HashMap<Mac, Vec<Arc<str>>>,
    /// The largest DHCP message a reply may be: the port MTU minus the IP
    /// and UDP headers.
    max_message_size: usize,
}

impl DhcpView {
    /// The view for the ports that are ready on this host, given as (port
    /// id, ifindex of its host-side device).
    pub fn build<'a>(
        desired: &DesiredState,
        ready_ports: impl IntoIterator<Item = (&'a str, u32)>,
        settings: &DhcpSettings,
    ) -> DhcpView {
        let entries = entries_by_vpc_and_mac(desired);
        let mut offers: HashMap<&str, Option<Arc<SubnetOffer>>> = HashMap::new();
        let mut offer_of = |subnet_id: &str| -> Option<Arc<SubnetOffer>> {
            let subnet = &desired.subnets.get(subnet_id)?.spec;
            offers
                .entry(subnet.id.as_str())
                .or_insert_with(|| subnet_offer(subnet, desired, settings).map(Arc::new))
                .clone()
        };

        let mut view = DhcpView {
            max_message_size: usize::try_from(settings.port_mtu)
                .unwrap_or(usize::MAX)
                .saturating_sub(IP_UDP_HEADERS_LEN),
            ..DhcpView::default()
        };
        for (port_id, ifindex) in ready_ports {
            let Some(port) = desired.ports.get(port_id).map(|entry| &entry.spec) else {
                continue;
            };
            let vpc_id: Arc<str> = Arc::from(port.vpc_id.as_str());
            let port_id: Arc<str> = Arc::from(port.id.as_str());
            let mut macs = HashMap::new();
            let pair_macs = port.allowed_address_pairs.iter().map(|pair| pair.mac);
            for mac in std::iter::once(port.mac).chain(pair_macs) {
                let hash_map::Entry::Vacant(slot) = macs.entry(mac) else {
                    continue;
                };
                let address = match entries.get(&(port.vpc_id.as_str(), mac)) {
                    Some(entry) => {
                        Some((entry.subnet_id.as_str(), entry.ipv4, entry.hostname.clone()))
                    }
                    None => own_fixed_ip(port, mac),
                };
                let binding = address.and_then(|(subnet_id, ip, hostname)| {
                    Some(Binding {
                        port_id: port_id.clone(),
                        vpc_id: vpc_id.clone(),
                        mac,
                        ip,
                        hostname: if hostname.is_empty() {
                            default_hostname(ip)
                        } else {
                            hostname
                        },
                        subnet: offer_of(subnet_id)?,
                    })
                });
                slot.insert(binding);
                view.owners.entry(mac).or_default().push(vpc_id.clone());
            }
            view.ports.insert(ifindex, PortView { vpc_id, macs });
        }
        view
    }

    /// Wraps the view for publishing; later views are stored into it.
    pub fn into_shared(self) -> SharedView {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// The configuration of `mac` on the port whose device is `ifindex`, or
    /// why it gets none.
    pub fn lookup(&self, ifindex: u32, mac: Mac) -> Result<&Binding, DropReason> {
        let port = self.ports.get(&ifindex).ok_or(DropReason::UnknownPort)?;
        match port.macs.get(&mac) {
            Some(Some(binding)) => Ok(binding),
            Some(None) => Err(DropReason::NoAddress),
            None => {
                let owners = self.owners.get(&mac).ok_or(DropReason::UnknownMac)?;
                if owners.contains(&port.vpc_id) {
                    Err(DropReason::WrongPort)
                } else {
                    Err(DropReason::WrongVpc)
                }
            }
        }
    }

    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// How many port devices the view answers on.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    /// Every binding, for fixtures and benchmarks that need each client.
    pub fn bindings(&self) -> impl Iterator<Item = (u32, &Binding)> {
        self.ports.iter().flat_map(|(ifindex, port)| {
            port.macs
                .values()
                .flatten()
                .map(move |binding| (*ifindex, binding))
        })
    }
}

/// DHCP entries by (VPC, MAC); when several match, the lowest id wins.
fn entries_by_vpc_and_mac(desired: &DesiredState) -> HashMap<(&str, Mac), &DhcpEntry> {
    let mut sorted: Vec<&DhcpEntry> = desired.dhcp.specs().collect();
    sorted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let mut entries = HashMap::new();
    for entry in sorted {
        let Some(subnet) = desired.subnets.get(&entry.subnet_id) else {
            continue;
        };
        match entries.entry((subnet.spec.vpc_id.as_str(), entry.mac)) {
            hash_map::Entry::Vacant(slot) => {
                slot.insert(entry);
            }
            hash_map::Entry::Occupied(kept) => tracing::warn!(
                mac = %entry.mac,
                vpc = subnet.spec.vpc_id,
                kept = kept.get().id,
                ignored = entry.id,
                "two DHCP entries for one MAC in one VPC"
            ),
        }
    }
    entries
}

/// The port's first fixed IP, for its own MAC.
fn own_fixed_ip(port: &Port, mac: Mac) -> Option<(&str, Ipv4Addr, String)> {
    let fixed = port.fixed_ips.first().filter(|_| mac == port.mac)?;
    Some((fixed.subnet_id.as_str(), fixed.ip, String::new()))
}

/// The host name Neutron's DHCP agent gives a port without one.
fn default_hostname(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("host-{a}-{b}-{c}-{d}")
}

fn subnet_offer(
    subnet: &Subnet,
    desired: &DesiredState,
    settings: &DhcpSettings,
) -> Option<SubnetOffer> {
    if !subnet.dhcp_enable {
        tracing::debug!(subnet = subnet.id, "DHCP is disabled on this subnet");
        return None;
    }
    let Some(gateway) = subnet.gateway else {
        tracing::warn!(
            subnet = subnet.id,
            "subnet has no gateway, which DHCP needs as server identifier: its ports get no answers"
        );
        return None;
    };
    let mut options = OptionTable::default();
    options.set(&DhcpOption::SubnetMask(subnet.cidr.netmask()));
    options.set(&DhcpOption::BroadcastAddr(subnet.cidr.broadcast()));
    options.set(&DhcpOption::Router(vec![gateway.ip]));
    if !subnet.dns_servers.is_empty() {
        options.set(&DhcpOption::DomainNameServer(subnet.dns_servers.clone()));
    }
    if !settings.domain.is_empty() {
        options.set(&DhcpOption::DomainName(settings.domain.clone()));
    }
    options.set(&DhcpOption::InterfaceMtu(
        u16::try_from(settings.port_mtu).unwrap_or(u16::MAX),
    ));

    let mut next_server = Ipv4Addr::UNSPECIFIED;
    let mut routes_given = false;
    for extra in &subnet.extra_dhcp_options {
        match parse_extra(&extra.name, &extra.value) {
            Ok(ExtraOption::Set { code, value }) => {
                if code == code::INTERFACE_MTU
                    && let Ok(mtu) = <[u8; 2]>::try_from(value.as_slice())
                    && u32::from(u16::from_be_bytes(mtu)) > settings.port_mtu
                {
                    tracing::warn!(
                        subnet = subnet.id,
                        port_mtu = settings.port_mtu,
                        "extra option mtu exceeds the port MTU: full-size frames will be lost"
                    );
                }
                routes_given |= code == code::CLASSLESS_ROUTES;
                options.set_raw(code, value);
            }
            Ok(ExtraOption::Suppress { code }) => {
                routes_given |= code == code::CLASSLESS_ROUTES;
                options.remove(code);
            }
            Ok(ExtraOption::NextServer(ip)) => next_server = ip,
            Err(reason) => tracing::warn!(
                subnet = subnet.id,
                option = extra.name,
                value = extra.value,
                %reason,
                "extra DHCP option ignored"
            ),
        }
    }
    if !routes_given {
        let routes = classless_routes(subnet, desired, &options);
        if !routes.is_empty() {
            options.set(&DhcpOption::ClasslessStaticRoute(routes));
        }
    }
    // 249 is Microsoft's copy of 121, sent only to clients that ask for it.
    if let Some(value) = options.value(code::CLASSLESS_ROUTES) {
        options.set_raw(code::MS_CLASSLESS_ROUTES, value);
    }

    let lease_time = settings.lease_time;
    Some(SubnetOffer {
        subnet_id: subnet.id.clone(),
        server: Source {
            mac: gateway.mac,
            ip: gateway.ip,
        },
        next_server,
        lease_time,
        renewal_time: lease_time / 2,
        rebinding_time: (u64::from(lease_time) * 7 / 8) as u32,
        options,
    })
}

/// Option 121: the routes of the routers' tables for this subnet that have
/// a next hop, most specific first, and the default route via the router
/// of option 3 (a client given 121 ignores option 3, RFC 3442 §1).
fn classless_routes(
    subnet: &Subnet,
    desired: &DesiredState,
    options: &OptionTable,
) -> Vec<(Ipv4Net, Ipv4Addr)> {
    let on_link = |next_hop: Ipv4Addr, destination: Ipv4Net| {
        let reachable = subnet.cidr.contains(&next_hop);
        if !reachable {
            tracing::warn!(
                subnet = subnet.id,
                %destination,
                %next_hop,
                "route not sent by DHCP: its next hop is outside the subnet"
            );
        }
        reachable
    };
    let mut routes: Vec<(Ipv4Net, Ipv4Addr, u32)> = desired
        .routers
        .specs()
        .flat_map(|router| &router.subnet_tables)
        .filter(|table| table.subnet_id == subnet.id)
        .flat_map(|table| &table.routes)
        .filter_map(|route| Some((route.destination.trunc(), route.next_hop?, route.priority)))
        // The subnet itself is on link; a route via a gateway would shadow it.
        .filter(|(destination, _, _)| *destination != subnet.cidr)
        .filter(|(destination, next_hop, _)| on_link(*next_hop, *destination))
        .collect();
    routes.sort_unstable_by_key(|(destination, next_hop, priority)| {
        (
            std::cmp::Reverse(destination.prefix_len()),
            destination.network(),
            *priority,
            *next_hop,
        )
    });
    routes.dedup_by_key(|(destination, _, _)| *destination);

    let mut routes: Vec<(Ipv4Net, Ipv4Addr)> = routes
        .into_iter()
        .map(|(destination, next_hop, _)| (destination, next_hop))
        .collect();
    let has_default = routes
        .iter()
        .any(|(destination, _)| destination.prefix_len() == 0);
    let router = options
        .value(code::ROUTER)
        .and_then(|value| <[u8; 4]>::try_from(value.get(..4)?).ok())
        .map(Ipv4Addr::from);
    if let Some(router) =
        router.filter(|router| !has_default && on_link(*router, Ipv4Net::default()))
    {
        routes.push((Ipv4Net::default(), router));
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{DhcpOption as ExtraDhcpOption, Route, Router, SubnetRoutes};
    use crate::dhcp::testing::*;

    fn build(fixture: &Fixture) -> DhcpView {
        DhcpView::build(
            &fixture.desired,
            Fixture::ready_ports(),
            &DhcpSettings::default(),
        )
    }

    #[test]
    fn the_port_mac_gets_its_dhcp_entry_and_the_subnet_options() {
        let view = build(&Fixture::new());
        let binding = view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap();
        assert_eq!(binding.ip, A1_IP);
        assert_eq!(binding.hostname, "vm-a1");
        assert_eq!(&*binding.port_id, "port-a1");
        assert_eq!(&*binding.vpc_id, "vpc-a");
        let offer = &binding.subnet;
        assert_eq!(offer.server.ip, GATEWAY);
        assert_eq!(offer.server.mac, GATEWAY_MAC);
        assert_eq!(
            (offer.lease_time, offer.renewal_time, offer.rebinding_time),
            (86_400, 43_200, 75_600)
        );
        let options = &offer.options;
        assert_eq!(
            options.value(code::SUBNET_MASK).unwrap(),
            [255, 255, 255, 0]
        );
        assert_eq!(options.value(code::ROUTER).unwrap(), GATEWAY.octets());
        assert_eq!(
            options.value(code::DNS_SERVERS).unwrap(),
            [10, 0, 0, 2, 10, 0, 0, 3]
        );
        assert_eq!(options.value(code::DOMAIN_NAME).unwrap(), b"openstacklocal");
        assert_eq!(
            options.value(code::INTERFACE_MTU).unwrap(),
            1450u16.to_be_bytes()
        );
        assert_eq!(
            options.value(code::BROADCAST_ADDRESS).unwrap(),
            [10, 0, 1, 255]
        );
        // Only the default route: no router tables.
        assert_eq!(
            options.value(code::CLASSLESS_ROUTES).unwrap(),
            [0, 10, 0, 1, 1]
        );
        assert_eq!(
            options.value(code::MS_CLASSLESS_ROUTES).unwrap(),
            [0, 10, 0, 1, 1]
        );
        assert_eq!(view.max_message_size(), 1450 - 28);
        assert_eq!(view.port_count(), 3);
    }

    #[test]
    fn a_port_without_dhcp_entry_gets_its_first_fixed_ip_and_a_neutron_hostname() {
        let view = build(&Fixture::new());
        let binding = view.lookup(A2_IFINDEX, A2_MAC).unwrap();
        assert_eq!(binding.ip, A2_IP);
        assert_eq!(binding.hostname, "host-10-0-1-11");
    }

    #[test]
    fn allowed_pairs_are_answered_only_with_a_dhcp_entry_and_only_on_their_port() {
        let view = build(&Fixture::new());
        let nested = view.lookup(A1_IFINDEX, NESTED_MAC).unwrap();
        assert_eq!((nested.ip, nested.hostname.as_str()), (NESTED_IP, "nested"));
        assert_eq!(&*nested.port_id, "port-a1");
        assert_eq!(
            view.lookup(A1_IFINDEX, UNADDRESSED_MAC).unwrap_err(),
            DropReason::NoAddress
        );
        // The same MACs on another port of the VPC, or of another VPC.
        assert_eq!(
            view.lookup(A2_IFINDEX, NESTED_MAC).unwrap_err(),
            DropReason::WrongPort
        );
        assert_eq!(
            view.lookup(A2_IFINDEX, CLIENT_MAC).unwrap_err(),
            DropReason::WrongPort
        );
        assert_eq!(
            view.lookup(B1_IFINDEX, CLIENT_MAC).unwrap_err(),
            DropReason::WrongVpc
        );
        assert_eq!(
            view.lookup(A1_IFINDEX, B1_MAC).unwrap_err(),
            DropReason::WrongVpc
        );
        assert_eq!(
            view.lookup(A1_IFINDEX, STRANGER_MAC).unwrap_err(),
            DropReason::UnknownMac
        );
        assert_eq!(
            view.lookup(99, CLIENT_MAC).unwrap_err(),
            DropReason::UnknownPort
        );
    }

    #[test]
    fn two_vpcs_with_the_same_cidr_ip_and_mac_are_told_apart_by_the_arrival_device() {
        let mut fixture = Fixture::new();
        // Port B1 takes A1's MAC too: MACs are unique per VPC only.
        let mut b1 = fixture.spec::<Port>("port-b1");
        b1.mac = CLIENT_MAC;
        fixture.insert("port-b1", b1);
        fixture.insert(
            "dhcp-b1",
            dhcp_entry("dhcp-b1", "sn-b", CLIENT_MAC, B1_IP, "vm-b1"),
        );
        let view = build(&fixture);
        let a = view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap();
        let b = view.lookup(B1_IFINDEX, CLIENT_MAC).unwrap();
        assert_eq!(a.ip, b.ip);
        assert_eq!((&*a.vpc_id, a.hostname.as_str()), ("vpc-a", "vm-a1"));
        assert_eq!((&*b.vpc_id, b.hostname.as_str()), ("vpc-b", "vm-b1"));
        assert_eq!(b.subnet.server.mac, GATEWAY_B_MAC);
        assert!(b.subnet.options.get(code::DNS_SERVERS).is_none());
    }

    #[test]
    fn only_ready_ports_are_answered() {
        let fixture = Fixture::new();
        let view = DhcpView::build(
            &fixture.desired,
            [("port-a1", A1_IFINDEX), ("no-such-port", 30)],
            &DhcpSettings::default(),
        );
        assert!(view.lookup(A1_IFINDEX, CLIENT_MAC).is_ok());
        assert_eq!(
            view.lookup(A2_IFINDEX, A2_MAC).unwrap_err(),
            DropReason::UnknownPort
        );
        assert_eq!(
            view.lookup(30, A2_MAC).unwrap_err(),
            DropReason::UnknownPort
        );
        assert_eq!(view.bindings().count(), 2, "A1 and its nested VM");
    }

    #[test]
    fn subnets_without_gateway_or_with_dhcp_disabled_give_no_address() {
        let mut fixture = Fixture::new();
        let mut sn_a = fixture.spec::<Subnet>("sn-a");
        sn_a.gateway = None;
        fixture.insert("sn-a", sn_a);
        let mut sn_b = fixture.spec::<Subnet>("sn-b");
        sn_b.dhcp_enable = false;
        fixture.insert("sn-b", sn_b);
        let view = build(&fixture);
        assert_eq!(
            view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap_err(),
            DropReason::NoAddress
        );
        assert_eq!(
            view.lookup(B1_IFINDEX, B1_MAC).unwrap_err(),
            DropReason::NoAddress
        );
    }

    fn route(destination: &str, next_hop: Option<&str>, priority: u32) -> Route {
        Route {
            id: destination.into(),
            name: String::new(),
            destination: destination.parse().unwrap(),
            next_hop: next_hop.map(|ip| ip.parse().unwrap()),
            next_hop_mac: None,
            priority,
            to_vpc_gateway: true,
        }
    }

    #[test]
    fn classless_routes_hold_the_router_tables_and_the_default_route() {
        let mut fixture = Fixture::new();
        fixture.insert(
            "router",
            Router {
                id: "router".into(),
                host_dvr_mac: None,
                subnet_tables: vec![
                    SubnetRoutes {
                        subnet_id: "sn-a".into(),
                        routes: vec![
                            route("10.0.0.0/16", Some("10.0.1.1"), 0),
                            route("169.254.169.254/32", Some("10.0.1.5"), 0),
                            // Same destination, lower priority value wins.
                            route("192.168.0.0/16", Some("10.0.1.7"), 2),
                            route("192.168.0.0/16", Some("10.0.1.6"), 1),
                            // No next hop, the subnet itself, off-link hop.
                            route("172.16.0.0/12", None, 0),
                            route("10.0.1.0/24", Some("10.0.1.1"), 0),
                            route("10.9.0.0/16", Some("10.0.2.1"), 0),
                        ],
                    },
                    SubnetRoutes {
                        subnet_id: "sn-b".into(),
                        routes: vec![route("10.5.0.0/16", Some("10.0.1.1"), 0)],
                    },
                ],
            },
        );
        let view = build(&fixture);
        let offer = &view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap().subnet;
        #[rustfmt::skip]
        let expected = [
            32, 169, 254, 169, 254, 10, 0, 1, 5,
            16, 10, 0, 10, 0, 1, 1,
            16, 192, 168, 10, 0, 1, 6,
            0, 10, 0, 1, 1,
        ];
        assert_eq!(
            offer.options.value(code::CLASSLESS_ROUTES).unwrap(),
            expected
        );
        assert_eq!(
            offer.options.value(code::MS_CLASSLESS_ROUTES).unwrap(),
            expected
        );
    }

    fn with_extra_options(options: &[(&str, &str)]) -> DhcpView {
        let mut fixture = Fixture::new();
        let mut sn_a = fixture.spec::<Subnet>("sn-a");
        sn_a.extra_dhcp_options = options
            .iter()
            .map(|(name, value)| ExtraDhcpOption {
                name: name.to_string(),
                value: value.to_string(),
            })
            .collect();
        fixture.insert("sn-a", sn_a);
        build(&fixture)
    }

    #[test]
    fn extra_options_add_override_and_suppress_and_bad_ones_are_skipped() {
        let view = with_extra_options(&[
            ("ntp-server", "10.0.0.9"),
            ("mtu", "1400"),
            ("dns-server", ""),
            ("router", "10.0.1.254"),
            ("server-ip-address", "10.0.1.2"),
            ("no-such-option", "1"),
            ("lease-time", "60"),
            ("53", "1"),
        ]);
        let offer = &view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap().subnet;
        let options = &offer.options;
        assert_eq!(options.value(42).unwrap(), [10, 0, 0, 9]);
        assert_eq!(
            options.value(code::INTERFACE_MTU).unwrap(),
            1400u16.to_be_bytes()
        );
        assert!(options.get(code::DNS_SERVERS).is_none());
        assert_eq!(options.value(code::ROUTER).unwrap(), [10, 0, 1, 254]);
        // The default route follows the router.
        assert_eq!(
            options.value(code::CLASSLESS_ROUTES).unwrap(),
            [0, 10, 0, 1, 254]
        );
        assert_eq!(offer.next_server, Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(
            options.codes().collect::<Vec<_>>(),
            [1, 3, 15, 26, 28, 42, 121, 249]
        );
        // The server identifier stays the gateway.
        assert_eq!(offer.server.ip, GATEWAY);
    }

    #[test]
    fn extra_routes_replace_the_generated_ones_and_no_router_means_no_default_route() {
        let view = with_extra_options(&[("classless-static-route", "10.8.0.0/16,10.0.1.8")]);
        let options = &view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap().subnet.options;
        assert_eq!(
            options.value(code::CLASSLESS_ROUTES).unwrap(),
            [16, 10, 8, 10, 0, 1, 8]
        );
        assert_eq!(
            options.value(code::MS_CLASSLESS_ROUTES).unwrap(),
            [16, 10, 8, 10, 0, 1, 8]
        );

        let view = with_extra_options(&[("router", "")]);
        let options = &view.lookup(A1_IFINDEX, CLIENT_MAC).unwrap().subnet.options;
        assert!(options.get(code::ROUTER).is_none());
        assert!(options.get(code::CLASSLESS_ROUTES).is_none());
        assert!(options.get(code::MS_CLASSLESS_ROUTES).is_none());
    }
}
