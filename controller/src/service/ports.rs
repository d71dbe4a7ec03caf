//! Ports and their addresses. A port, its fixed IPs and its MAC are
//! written in one transaction, each address and the MAC as a key of its
//! own that must not exist yet: two requests (on one controller or two)
//! can never get the same address, and releasing one is deleting a key
//! that is there. A request that loses a race reads again and retries;
//! one that asked for an address or MAC someone has gets Neutron's 409.
//!
//! Routers and floating IPs make their ports with the same plan, in their
//! own transactions ([`Plan`], `plan_port`, `plan_port_deletion`).

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

use alcor_types::Mac;

use super::{
    Controller, Try, check_revision, encode, group_port_key,
    networks::ports_prefix,
    resource_key, retrying,
    subnets::{ip_key, ips_prefix},
};
use crate::{
    allocate::AddressBook,
    error::{ApiError, ApiResult},
    model::{
        FloatingIp, Meta, Network, Port, Resource, Router, Subnet,
        floating_ip::FLOATING_IP_OWNER,
        port::{FixedIp, FixedIpRequest, PortCreate, PortUpdate},
        router::{ROUTER_GATEWAY, ROUTER_INTERFACE},
    },
    store::{Entry, Txn},
};

pub fn mac_key(network_id: &str, mac: Mac) -> String {
    format!("/alcor/mac/{network_id}/{mac}")
}

fn network_port_key(network_id: &str, port_id: &str) -> String {
    format!("{}{port_id}", ports_prefix(network_id))
}

/// An address a plan chose for a port.
#[derive(Clone, Debug)]
struct Chosen {
    subnet_id: String,
    ip: Ipv4Addr,
    /// Asked for by the client (a loss is its 409), or suggested (a loss
    /// is a retry with another).
    requested: bool,
}

/// One try of a request: what it read (and compares), what it chose,
/// the transaction that writes it.
#[derive(Default)]
pub(super) struct Plan {
    networks: HashMap<String, (Network, Entry)>,
    subnets: HashMap<String, (Subnet, Entry)>,
    chosen: Vec<Chosen>,
    /// MACs the client gave, by network.
    macs: Vec<(String, Mac)>,
    /// Security groups the ports join (compared, or created, once).
    pub(super) groups: HashSet<String>,
    /// Default groups by project, as found or created by this plan.
    pub(super) default_groups: HashMap<String, String>,
    pub(super) txn: Txn,
}

impl Plan {
    fn taken(&self) -> HashSet<(String, Ipv4Addr)> {
        self.chosen
            .iter()
            .map(|chosen| (chosen.subnet_id.clone(), chosen.ip))
            .collect()
    }
}

impl Controller {
    /// The network of a port (compared at commit).
    pub(super) async fn plan_network(&self, plan: &mut Plan, id: &str) -> ApiResult<Network> {
        if let Some((network, _)) = plan.networks.get(id) {
            return Ok(network.clone());
        }
        let (network, entry) = self.live_network(id).await?;
        plan.txn.require_unchanged(&entry);
        plan.networks
            .insert(id.to_string(), (network.clone(), entry));
        Ok(network)
    }

    /// A subnet addresses come from (compared at commit): of the network,
    /// not being deleted.
    async fn plan_subnet(&self, plan: &mut Plan, network: &Network, id: &str) -> ApiResult<Subnet> {
        if let Some((subnet, _)) = plan.subnets.get(id) {
            return Ok(subnet.clone());
        }
        let subnet = match self.find::<Subnet>(id).await? {
            Some((subnet, entry)) if !subnet.deleting => {
                plan.txn.require_unchanged(&entry);
                plan.subnets.insert(id.to_string(), (subnet.clone(), entry));
                subnet
            }
            _ => return Err(ApiError::not_found(Subnet::KIND, id)),
        };
        if subnet.network_id != network.meta.id {
            return Err(ApiError::invalid_input(format!(
                "Failed to create port on network {}, because fixed_ips included invalid subnet \
                 {id}",
                network.meta.id
            )));
        }
        Ok(subnet)
    }

    /// A free address of the subnet (not chosen in this plan already);
    /// `None` once even a fresh read of the store shows none.
    async fn suggest(&self, plan: &Plan, subnet: &Subnet) -> ApiResult<Option<Ipv4Addr>> {
        let taken = plan.taken();
        for fresh in [false, true] {
            if fresh || !self.has_book(subnet) {
                let given = self.store.list(&ips_prefix(&subnet.meta.id)).await?;
                let given = given
                    .iter()
                    .filter_map(|entry| entry.key.rsplit('/').next()?.parse().ok());
                let cursor = rand::random::<u64>();
                let book = AddressBook::new(&subnet.allocation_pools, given, cursor);
                self.books_lock()
                    .insert(subnet.meta.id.clone(), (subnet.meta.revision_number, book));
            }
            let mut books = self.books_lock();
            let Some((_, book)) = books.get_mut(&subnet.meta.id) else {
                continue;
            };
            // At most as many tries as this plan has chosen, plus one.
            for _ in 0..=taken.len() {
                match book.suggest() {
                    Some(ip) if taken.contains(&(subnet.meta.id.clone(), ip)) => continue,
                    found => {
                        if found.is_some() {
                            return Ok(found);
                        }
                        break;
                    }
                }
            }
        }
        Ok(None)
    }

    fn books_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, AddressBook)>> {
        // The books are hints: a panic elsewhere leaves them usable.
        self.books
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the subnet's book is loaded, for its current pools.
    fn has_book(&self, subnet: &Subnet) -> bool {
        self.books_lock()
            .get(&subnet.meta.id)
            .is_some_and(|(revision, _)| *revision == subnet.meta.revision_number)
    }

    pub(super) fn forget_book(&self, subnet_id: &str) {
        self.books_lock().remove(subnet_id);
    }

    /// Tells the books what a commit did.
    fn note(&self, subnet_id: &str, ip: Ipv4Addr, taken: bool) {
        if let Some((_, book)) = self.books_lock().get_mut(subnet_id) {
            if taken {
                book.mark_taken(ip);
            } else {
                book.mark_free(ip);
            }
        }
    }

    /// Chooses the addresses `requests` ask for on `network` (`None`: one
    /// of the first subnet with room), keeping those of `kept`.
    async fn plan_addresses(
        &self,
        plan: &mut Plan,
        network: &Network,
        requests: Option<&[FixedIpRequest]>,
        kept: &[FixedIp],
        device_owner: &str,
    ) -> ApiResult<Vec<FixedIp>> {
        let mut fixed_ips = Vec::new();
        let Some(requests) = requests else {
            for subnet_id in &network.subnets {
                let subnet = self.plan_subnet(plan, network, subnet_id).await?;
                if let Some(ip) = self.suggest(plan, &subnet).await? {
                    self.choose(plan, &subnet, ip, false);
                    fixed_ips.push(FixedIp {
                        subnet_id: subnet_id.clone(),
                        ip_address: ip,
                    });
                    return Ok(fixed_ips);
                }
            }
            if network.subnets.is_empty() {
                return Ok(fixed_ips);
            }
            return Err(exhausted(network));
        };
        for request in requests {
            let (subnet, ip) = match request {
                FixedIpRequest::Subnet(subnet_id) => {
                    let subnet = self.plan_subnet(plan, network, subnet_id).await?;
                    let ip = self
                        .suggest(plan, &subnet)
                        .await?
                        .ok_or_else(|| exhausted(network))?;
                    (subnet, ip)
                }
                FixedIpRequest::Address {
                    subnet_id,
                    ip_address,
                } => {
                    let subnet = match subnet_id {
                        Some(id) => self.plan_subnet(plan, network, id).await?,
                        None => self.subnet_with(plan, network, *ip_address).await?,
                    };
                    // A router's interface is where the gateway address
                    // lives, as in Neutron; no other port may have it.
                    let gateway =
                        device_owner == ROUTER_INTERFACE && subnet.gateway_ip == Some(*ip_address);
                    if !gateway && !subnet.assignable(*ip_address) {
                        return Err(ApiError::bad_request(format!(
                            "IP address {ip_address} is not a valid IP for the specified subnet."
                        ))
                        .with_kind("InvalidIpForSubnet"));
                    }
                    if kept.iter().any(|fixed| {
                        fixed.ip_address == *ip_address && fixed.subnet_id == subnet.meta.id
                    }) {
                        fixed_ips.push(FixedIp {
                            subnet_id: subnet.meta.id.clone(),
                            ip_address: *ip_address,
                        });
                        continue;
                    }
                    if plan
                        .taken()
                        .contains(&(subnet.meta.id.clone(), *ip_address))
                    {
                        return Err(ApiError::bad_request(format!(
                            "Duplicate IP address {ip_address} in the request"
                        )));
                    }
                    self.choose(plan, &subnet, *ip_address, true);
                    fixed_ips.push(FixedIp {
                        subnet_id: subnet.meta.id.clone(),
                        ip_address: *ip_address,
                    });
                    continue;
                }
            };
            self.choose(plan, &subnet, ip, false);
            fixed_ips.push(FixedIp {
                subnet_id: subnet.meta.id.clone(),
                ip_address: ip,
            });
        }
        Ok(fixed_ips)
    }

    /// The network's subnet that has `ip`.
    async fn subnet_with(
        &self,
        plan: &mut Plan,
        network: &Network,
        ip: Ipv4Addr,
    ) -> ApiResult<Subnet> {
        for subnet_id in &network.subnets {
            let subnet = self.plan_subnet(plan, network, subnet_id).await?;
            if subnet.cidr.contains(&ip) {
                return Ok(subnet);
            }
        }
        Err(ApiError::bad_request(format!(
            "IP address {ip} is in no subnet of network {}",
            network.meta.id
        ))
        .with_kind("InvalidIpForNetwork"))
    }

    fn choose(&self, plan: &mut Plan, subnet: &Subnet, ip: Ipv4Addr, requested: bool) {
        plan.txn.require_absent(ip_key(&subnet.meta.id, ip));
        plan.chosen.push(Chosen {
            subnet_id: subnet.meta.id.clone(),
            ip,
            requested,
        });
    }

    /// Why the plan's commit conflicted: a 409 for what the client asked
    /// that someone has; else the suggested addresses taken meanwhile are
    /// noted, and the request starts again.
    pub(super) async fn diagnose<T>(&self, plan: &Plan) -> ApiResult<Try<T>> {
        for chosen in &plan.chosen {
            if self
                .store
                .get(&ip_key(&chosen.subnet_id, chosen.ip))
                .await?
                .is_none()
            {
                continue;
            }
            if chosen.requested {
                return Err(already_allocated(chosen.ip, &chosen.subnet_id));
            }
            self.note(&chosen.subnet_id, chosen.ip, true);
        }
        for (network_id, mac) in &plan.macs {
            if self.store.get(&mac_key(network_id, *mac)).await?.is_some() {
                return Err(ApiError::conflict(
                    "MacAddressInUse",
                    format!(
                        "Unable to complete operation for network {network_id}. The mac address \
                         {mac} is in use."
                    ),
                ));
            }
        }
        Ok(Try::Again)
    }

    /// Creates the ports, all or none (a bulk create).
    pub async fn create_ports(&self, creates: &[PortCreate]) -> ApiResult<Vec<Port>> {
        // Each host once, not once a port: a bulk create binds thousands
        // of ports to a handful of hosts.
        let hosts: std::collections::BTreeSet<&str> = creates
            .iter()
            .map(|create| create.binding_host_id.as_str())
            .collect();
        for host in hosts {
            self.check_binding(host).await?;
        }
        retrying(|| {
            Box::pin(async move {
                let mut plan = Plan::default();
                let mut ports = Vec::with_capacity(creates.len());
                for create in creates {
                    ports.push(self.plan_port(&mut plan, create).await?);
                }
                if !self.commit_plan(&plan).await? {
                    return self.diagnose(&plan).await;
                }
                Ok(Try::Done(ports))
            })
        })
        .await
    }

    /// Commits the plan; false if a compare failed. The books learn the
    /// addresses it took.
    pub(super) async fn commit_plan(&self, plan: &Plan) -> ApiResult<bool> {
        if !matches!(self.commit(plan.txn.clone()).await?, Try::Done(())) {
            return Ok(false);
        }
        for chosen in &plan.chosen {
            self.note(&chosen.subnet_id, chosen.ip, true);
        }
        Ok(true)
    }

    /// Adds a new resource to the plan and commits: `Again` after a lost
    /// race, Neutron's 409 for an address the client asked for that
    /// someone has.
    pub(super) async fn commit_created<R: Resource>(
        &self,
        plan: &mut Plan,
        resource: R,
    ) -> ApiResult<Try<R>> {
        let key = resource_key(R::KIND, &resource.meta().id);
        plan.txn.require_absent(&key).put(key, encode(&resource));
        if !self.commit_plan(plan).await? {
            return self.diagnose(plan).await;
        }
        Ok(Try::Done(resource))
    }

    /// A port, with its addresses, MAC and security groups, written by
    /// the plan's transaction.
    pub(super) async fn plan_port(&self, plan: &mut Plan, create: &PortCreate) -> ApiResult<Port> {
        let network = self.plan_network(plan, &create.network_id).await?;
        let fixed_ips = self
            .plan_addresses(
                plan,
                &network,
                create.fixed_ips.as_deref(),
                &[],
                &create.device_owner,
            )
            .await?;
        let taken = |plan: &Plan, mac| {
            plan.txn
                .compares
                .contains(&crate::store::Compare::Absent(mac_key(
                    &network.meta.id,
                    mac,
                )))
        };
        let mac_address = match create.mac_address {
            Some(mac) => {
                if taken(plan, mac) {
                    return Err(ApiError::bad_request(format!(
                        "Duplicate MAC address {mac} in the request"
                    )));
                }
                plan.macs.push((network.meta.id.clone(), mac));
                mac
            }
            // A bulk create of thousands draws the same MAC twice now and
            // then (the birthday bound of 2^24), and in a network of 100,000
            // ports one of a thousand MACs drawn is nearly always taken (a
            // conflict, which would draw them all again): a MAC the request
            // or the network has is drawn again. (One taken meanwhile still
            // conflicts.)
            None => loop {
                let mac = self.random_mac();
                if !taken(plan, mac)
                    && self
                        .store
                        .get(&mac_key(&network.meta.id, mac))
                        .await?
                        .is_none()
                {
                    break mac;
                }
            },
        };
        let project = create
            .project_id
            .clone()
            .unwrap_or_else(|| network.meta.project_id.clone());
        let port_security_enabled = create
            .port_security_enabled
            .unwrap_or(network.port_security_enabled);
        let security_groups = self
            .port_groups(
                plan,
                &project,
                create.security_groups.as_deref(),
                port_security_enabled,
                &create.device_owner,
            )
            .await?;
        let port = Port {
            meta: Meta::new(create.name.clone(), create.description.clone(), project),
            network_id: network.meta.id.clone(),
            mac_address,
            fixed_ips,
            device_id: create.device_id.clone(),
            device_owner: create.device_owner.clone(),
            admin_state_up: create.admin_state_up,
            // A router's interface is its subnet's gateway, which every
            // host's datapath answers for (a distributed router): up from
            // the start. Other ports are down until their agent says.
            status: if create.device_owner == ROUTER_INTERFACE {
                "ACTIVE"
            } else {
                "DOWN"
            }
            .into(),
            status_detail: String::new(),
            binding_host_id: create.binding_host_id.clone(),
            binding_profile: create.binding_profile.clone(),
            allowed_address_pairs: create.allowed_address_pairs.clone(),
            security_groups,
            port_security_enabled,
        };
        let key = resource_key(Port::KIND, &port.meta.id);
        let mac = mac_key(&port.network_id, port.mac_address);
        plan.txn
            .require_absent(&key)
            .require_absent(&mac)
            .put(key, encode(&port))
            .put(mac, port.meta.id.clone().into_bytes())
            .put(
                network_port_key(&port.network_id, &port.meta.id),
                Vec::new(),
            );
        for fixed in &port.fixed_ips {
            plan.txn.put(
                ip_key(&fixed.subnet_id, fixed.ip_address),
                port.meta.id.clone().into_bytes(),
            );
        }
        for group in &port.security_groups {
            plan.txn
                .put(group_port_key(group, &port.meta.id), Vec::new());
        }
        Ok(port)
    }

    pub async fn update_port(
        &self,
        id: &str,
        update: &PortUpdate,
        if_match: Option<u64>,
    ) -> ApiResult<Port> {
        retrying(|| {
            Box::pin(async move {
                let (mut port, entry) = self.load::<Port>(id).await?;
                check_revision(&port.meta, if_match)?;
                self.check_owned_update(&port, update).await?;
                let groups = port.security_groups.clone();
                let host = port.binding_host_id.clone();
                let mut changed = update.apply(&mut port);
                if port.binding_host_id != host {
                    self.check_binding(&port.binding_host_id).await?;
                    // Not programmed where it now is, until that agent says so.
                    port.status = "DOWN".into();
                    port.status_detail.clear();
                }
                let mut plan = Plan::default();
                plan.txn.require_unchanged(&entry);
                self.plan_group_change(&mut plan, &mut port, &groups, update)
                    .await?;
                let mut freed = Vec::new();
                if let Some(requests) = &update.fixed_ips {
                    let network = self.plan_network(&mut plan, &port.network_id).await?;
                    let fixed_ips = self
                        .plan_addresses(
                            &mut plan,
                            &network,
                            Some(requests),
                            &port.fixed_ips,
                            &port.device_owner,
                        )
                        .await?;
                    for old in &port.fixed_ips {
                        if !fixed_ips.contains(old) {
                            plan.txn.delete(ip_key(&old.subnet_id, old.ip_address));
                            freed.push(old.clone());
                        }
                    }
                    for new in fixed_ips.iter().filter(|new| !port.fixed_ips.contains(new)) {
                        plan.txn.put(
                            ip_key(&new.subnet_id, new.ip_address),
                            id.as_bytes().to_vec(),
                        );
                    }
                    changed |= fixed_ips != port.fixed_ips;
                    port.fixed_ips = fixed_ips;
                }
                if let Some(mac) = update.mac_address.filter(|mac| *mac != port.mac_address) {
                    let new = mac_key(&port.network_id, mac);
                    plan.macs.push((port.network_id.clone(), mac));
                    plan.txn
                        .require_absent(&new)
                        .delete(mac_key(&port.network_id, port.mac_address))
                        .put(new, id.as_bytes().to_vec());
                    port.mac_address = mac;
                    changed = true;
                }
                if !changed {
                    return Ok(Try::Done(port));
                }
                port.meta.touch();
                plan.txn.put(entry.key.clone(), encode(&port));
                if !self.commit_plan(&plan).await? {
                    return self.diagnose(&plan).await;
                }
                for old in &freed {
                    self.note(&old.subnet_id, old.ip_address, false);
                }
                Ok(Try::Done(port))
            })
        })
        .await
    }

    /// Deletes the port and releases its addresses and MAC; a router's or
    /// a floating IP's port goes only with them.
    pub async fn delete_port(&self, id: &str, if_match: Option<u64>) -> ApiResult<()> {
        let port = retrying(|| {
            Box::pin(async move {
                let (port, entry) = self.load::<Port>(id).await?;
                check_revision(&port.meta, if_match)?;
                if self.owner_exists(&port).await? {
                    return Err(ApiError::conflict(
                        "L3PortInUse",
                        format!(
                            "Port {id} cannot be deleted directly via the port API: has device \
                             owner {}.",
                            port.device_owner
                        ),
                    ));
                }
                let mut txn = Txn::default();
                self.plan_port_deletion(&mut txn, &port, &entry).await?;
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(port),
                    Try::Again => Try::Again,
                })
            })
        })
        .await?;
        self.released(&port);
        Ok(())
    }

    /// Whether the router or floating IP that owns the port exists (one
    /// that does not, such as a port a client made with that owner, does
    /// not hold it).
    async fn owner_exists(&self, port: &Port) -> ApiResult<bool> {
        Ok(match port.device_owner.as_str() {
            ROUTER_INTERFACE | ROUTER_GATEWAY => {
                self.find::<Router>(&port.device_id).await?.is_some()
            }
            FLOATING_IP_OWNER => self.find::<FloatingIp>(&port.device_id).await?.is_some(),
            _ => false,
        })
    }

    /// Refuses a change, through the port API, of what ties a router's or
    /// a floating IP's port to it (its owner, its addresses): they change
    /// through their own API, as the port is deleted only through it.
    async fn check_owned_update(&self, port: &Port, update: &PortUpdate) -> ApiResult<()> {
        let changes = update
            .device_owner
            .as_ref()
            .is_some_and(|owner| *owner != port.device_owner)
            || update
                .device_id
                .as_ref()
                .is_some_and(|device| *device != port.device_id)
            || update.fixed_ips.is_some();
        if changes && self.owner_exists(port).await? {
            return Err(ApiError::conflict(
                "L3PortInUse",
                format!(
                    "Port {} cannot be changed directly via the port API: has device owner {}.",
                    port.meta.id, port.device_owner
                ),
            ));
        }
        Ok(())
    }

    /// Adds the port's deletion to `txn`: the port as read, its MAC,
    /// addresses and index keys, and the floating IPs it had (now
    /// associated with nothing).
    pub(super) async fn plan_port_deletion(
        &self,
        txn: &mut Txn,
        port: &Port,
        entry: &Entry,
    ) -> ApiResult<()> {
        txn.require_unchanged(entry)
            .delete(entry.key.clone())
            .delete(mac_key(&port.network_id, port.mac_address))
            .delete(network_port_key(&port.network_id, &port.meta.id));
        for fixed in &port.fixed_ips {
            txn.delete(ip_key(&fixed.subnet_id, fixed.ip_address));
        }
        for group in &port.security_groups {
            txn.delete(group_port_key(group, &port.meta.id));
        }
        self.plan_port_fips_release(txn, &port.meta.id).await
    }

    /// Tells the books that a deleted port's addresses are free.
    pub(super) fn released(&self, port: &Port) {
        for fixed in &port.fixed_ips {
            self.note(&fixed.subnet_id, fixed.ip_address, false);
        }
    }

    /// The addresses of a subnet given out, as the store says: for tests
    /// that count what is left.
    pub async fn allocated(&self, subnet_id: &str) -> ApiResult<usize> {
        Ok(self.store.list(&ips_prefix(subnet_id)).await?.len())
    }
}

/// Neutron's 409 for an address someone has.
pub(super) fn already_allocated(ip: Ipv4Addr, subnet_id: &str) -> ApiError {
    ApiError::conflict(
        "IpAddressAlreadyAllocated",
        format!("IP address {ip} already allocated in subnet {subnet_id}"),
    )
}

fn exhausted(network: &Network) -> ApiError {
    ApiError::conflict(
        "IpAddressGenerationFailure",
        format!(
            "No more IP addresses available on network {}.",
            network.meta.id
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::{body::resource, service::testing::*};

    #[tokio::test]
    async fn ports_get_distinct_addresses_and_macs_and_give_them_back() {
        let (_dir, controller) = controller();
        let (network, subnet) = network_with_subnet(&controller, json!({}), "10.0.0.0/29").await;
        let net = network.meta.id.clone();
        let mut ports = Vec::new();
        for _ in 0..5 {
            let created = controller
                .create_ports(&[port(json!({"network_id": net}))])
                .await
                .unwrap();
            ports.extend(created);
        }
        let addresses: HashSet<Ipv4Addr> =
            ports.iter().map(|p| p.fixed_ips[0].ip_address).collect();
        assert_eq!(addresses.len(), 5, "{addresses:?}");
        assert!(
            !addresses.contains(&"10.0.0.1".parse().unwrap()),
            "the gateway"
        );
        let macs: HashSet<Mac> = ports.iter().map(|p| p.mac_address).collect();
        assert_eq!(macs.len(), 5);
        assert_eq!(controller.allocated(&subnet.meta.id).await.unwrap(), 5);
        // /29: six hosts, one the gateway: full.
        let before = snapshot(&controller).await;
        let error = controller
            .create_ports(&[port(json!({"network_id": net}))])
            .await
            .unwrap_err();
        assert_eq!(
            (error.status, error.kind),
            (409, "IpAddressGenerationFailure")
        );
        assert_eq!(snapshot(&controller).await, before);
        controller
            .delete_port(&ports[0].meta.id, None)
            .await
            .unwrap();
        assert_eq!(controller.allocated(&subnet.meta.id).await.unwrap(), 4);
        let again = controller
            .create_ports(&[port(json!({"network_id": net}))])
            .await
            .unwrap();
        assert_eq!(
            again[0].fixed_ips[0].ip_address,
            ports[0].fixed_ips[0].ip_address
        );
    }

    #[tokio::test]
    async fn taken_addresses_and_macs_are_409s_and_leave_nothing() {
        let (_dir, controller) = controller();
        let (network, subnet) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let net = network.meta.id.clone();
        let fixed = json!([{"subnet_id": subnet.meta.id, "ip_address": "10.0.0.7"}]);
        let first = controller
            .create_ports(&[port(
                json!({"network_id": net, "fixed_ips": fixed, "mac_address": "fa:16:3e:00:00:07"}),
            )])
            .await
            .unwrap();
        assert_eq!(first[0].fixed_ips[0].ip_address.to_string(), "10.0.0.7");
        let before = snapshot(&controller).await;
        let error = controller
            .create_ports(&[port(json!({"network_id": net, "fixed_ips": fixed}))])
            .await
            .unwrap_err();
        assert_eq!(
            (error.status, error.kind),
            (409, "IpAddressAlreadyAllocated")
        );
        let error = controller
            .create_ports(&[port(
                json!({"network_id": net, "mac_address": "fa:16:3e:00:00:07"}),
            )])
            .await
            .unwrap_err();
        assert_eq!((error.status, error.kind), (409, "MacAddressInUse"));
        let error = controller
            .create_ports(&[port(
                json!({"network_id": net, "fixed_ips": [{"ip_address": "10.0.0.1"}]}),
            )])
            .await
            .unwrap_err();
        assert_eq!(error.status, 400, "the gateway");
        let error = controller
            .create_ports(&[port(
                json!({"network_id": net, "fixed_ips": [{"ip_address": "10.9.0.1"}]}),
            )])
            .await
            .unwrap_err();
        assert_eq!(error.status, 400, "outside every subnet");
        // A bulk create with one bad port creates none.
        let error = controller
            .create_ports(&[
                port(json!({"network_id": net})),
                port(json!({"network_id": net, "fixed_ips": fixed})),
            ])
            .await
            .unwrap_err();
        assert_eq!(error.status, 409);
        assert_eq!(
            snapshot(&controller).await,
            before,
            "refused: nothing written"
        );
        // The network cannot go while the port is there.
        let error = controller.delete_network(&net, None).await.unwrap_err();
        assert_eq!((error.status, error.kind), (409, "NetworkInUse"));
        let error = controller
            .delete_subnet(&subnet.meta.id, None)
            .await
            .unwrap_err();
        assert_eq!((error.status, error.kind), (409, "SubnetInUse"));
        assert_eq!(snapshot(&controller).await, before);
    }

    #[tokio::test]
    async fn a_fixed_ip_change_releases_the_old_address() {
        let (_dir, controller) = controller();
        let (network, subnet) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let created = controller
            .create_ports(&[port(
                json!({"network_id": network.meta.id, "fixed_ips": [{"ip_address": "10.0.0.5"}]}),
            )])
            .await
            .unwrap();
        let update = PortUpdate::parse(
            resource(
                &json!({"port": {"fixed_ips": [{"ip_address": "10.0.0.6"}], "name": "moved"}}),
                "port",
            )
            .unwrap(),
        )
        .unwrap();
        let moved = controller
            .update_port(&created[0].meta.id, &update, None)
            .await
            .unwrap();
        assert_eq!(moved.fixed_ips[0].ip_address.to_string(), "10.0.0.6");
        assert_eq!(moved.meta.revision_number, 2);
        let taken: Vec<String> = controller
            .store
            .list(&ips_prefix(&subnet.meta.id))
            .await
            .unwrap()
            .into_iter()
            .map(|entry| entry.key)
            .collect();
        assert_eq!(
            taken,
            [ip_key(&subnet.meta.id, "10.0.0.6".parse().unwrap())]
        );
        controller.delete_port(&moved.meta.id, None).await.unwrap();
        assert_eq!(controller.allocated(&subnet.meta.id).await.unwrap(), 0);
        delete_all(&controller).await;
    }

    /// Many tasks creating and deleting ports in one small subnet at once:
    /// no address twice, the count exact at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_and_deletes_never_share_an_address() {
        let (_dir, controller) = controller();
        let controller = Arc::new(controller);
        let (network, subnet) = network_with_subnet(&controller, json!({}), "10.0.0.0/26").await;
        let tasks: Vec<_> = (0..16)
            .map(|n| {
                let controller = controller.clone();
                let net = network.meta.id.clone();
                tokio::spawn(async move {
                    let mut kept = Vec::new();
                    for round in 0..20 {
                        let created = controller
                            .create_ports(&[port(json!({"network_id": net}))])
                            .await;
                        let Ok(created) = created else { continue };
                        if (n + round) % 3 == 0 {
                            controller
                                .delete_port(&created[0].meta.id, None)
                                .await
                                .unwrap();
                        } else {
                            kept.extend(created);
                        }
                    }
                    kept
                })
            })
            .collect();
        let mut kept = Vec::new();
        for task in tasks {
            kept.extend(task.await.unwrap());
        }
        let addresses: HashSet<Ipv4Addr> = kept.iter().map(|p| p.fixed_ips[0].ip_address).collect();
        assert_eq!(addresses.len(), kept.len(), "an address given twice");
        assert_eq!(
            controller.allocated(&subnet.meta.id).await.unwrap(),
            kept.len()
        );
    }
}
