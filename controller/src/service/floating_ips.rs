//! Floating IPs. The address is held by a port of the external network
//! (`device_owner` `network:floatingip`), made and deleted with the
//! floating IP in one transaction: the allocator, the address keys and
//! "a network with ports cannot go" serve it as they serve any port.
//!
//! An association is recorded three times, in one transaction: in the
//! floating IP, in `port-fip/{port}` and in `router-fip/{router}` (lists
//! of floating IP ids). Deleting the port reads its list and compares it,
//! so an association made meanwhile makes it start again and see it; the
//! router's interface, or its gateway, likewise cannot go from under an
//! association.

use std::collections::HashMap;

use super::{Controller, Try, check_revision, encode, retrying};
use crate::{
    error::{ApiError, ApiResult},
    model::{
        FloatingIp, Meta, Port, Resource, Router,
        floating_ip::{Association, FLOATING_IP_OWNER, FloatingIpCreate, FloatingIpUpdate, Target},
        port::{FixedIpRequest, PortCreate},
    },
    service::ports::Plan,
    store::{Entry, Txn},
};

fn port_fips_key(port_id: &str) -> String {
    format!("/alcor/port-fip/{port_id}")
}

pub fn router_fips_key(router_id: &str) -> String {
    format!("/alcor/router-fip/{router_id}")
}

/// Neutron's 400 for a floating IP request that cannot be done.
fn bad_request(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        400,
        "BadRequest",
        format!("Bad floatingip request: {message}."),
    )
}

/// A list of floating IP ids under one key, as read and as it is to be.
struct IdList {
    entry: Option<Entry>,
    read: Vec<String>,
    ids: Vec<String>,
}

/// The floating IP id lists a transaction reads (each compared at
/// commit, as read) and changes (each written once, however many
/// changes it had).
#[derive(Default)]
pub(super) struct IdLists {
    lists: HashMap<String, IdList>,
}

impl IdLists {
    /// The list under `key`, to read or change.
    pub(super) async fn get(
        &mut self,
        controller: &Controller,
        key: &str,
    ) -> ApiResult<&mut Vec<String>> {
        let read = match self.lists.contains_key(key) {
            true => None,
            false => {
                let entry = controller.store.get(key).await?;
                let ids: Vec<String> = match &entry {
                    Some(entry) => super::decode(entry)?,
                    None => Vec::new(),
                };
                Some((ids, entry))
            }
        };
        let list = self.lists.entry(key.into()).or_insert_with(|| {
            let (read, entry) = read.unwrap_or_default();
            IdList {
                entry,
                ids: read.clone(),
                read,
            }
        });
        Ok(&mut list.ids)
    }

    /// Adds the compares, and the writes of the lists that changed.
    pub(super) fn write(self, txn: &mut Txn) {
        for (key, list) in self.lists {
            match &list.entry {
                Some(entry) => txn.require_unchanged(entry),
                None => txn.require_absent(&key),
            };
            if list.ids == list.read {
                continue;
            }
            if list.ids.is_empty() {
                txn.delete(key);
            } else {
                // A list of strings: serialising it cannot fail.
                txn.put(key, serde_json::to_vec(&list.ids).unwrap_or_default());
            }
        }
    }
}

impl Controller {
    /// The router that takes `subnet_id`'s traffic to the external
    /// network: an interface on the subnet and a gateway on the network
    /// (compared at commit).
    async fn reaching_router(
        &self,
        txn: &mut Txn,
        external: &str,
        subnet_id: &str,
    ) -> ApiResult<Option<Router>> {
        for entry in self
            .store
            .list(&super::resource_prefix(Router::KIND))
            .await?
        {
            let router: Router = super::decode(&entry)?;
            if router.gateway.as_ref().map(|g| g.network_id.as_str()) != Some(external) {
                continue;
            }
            for port_id in &router.interfaces {
                let Some((port, _)) = self.find::<Port>(port_id).await? else {
                    continue;
                };
                if port
                    .fixed_ips
                    .iter()
                    .any(|fixed| fixed.subnet_id == subnet_id)
                {
                    txn.require_unchanged(&entry);
                    return Ok(Some(router));
                }
            }
        }
        Ok(None)
    }

    /// Associates `fip` with the target's port, as Neutron checks it: the
    /// port has the fixed IP, a router reaches it from the floating IP's
    /// network, no other floating IP of that network has that fixed IP.
    async fn plan_association(
        &self,
        txn: &mut Txn,
        lists: &mut IdLists,
        fip: &FloatingIp,
        target: &Target,
    ) -> ApiResult<Association> {
        let (port, entry) = self.load::<Port>(&target.port_id).await?;
        txn.require_unchanged(&entry);
        let port_id = &target.port_id;
        let fixed = match (target.fixed_ip_address, port.fixed_ips.as_slice()) {
            (Some(ip), fixed_ips) => fixed_ips
                .iter()
                .find(|fixed| fixed.ip_address == ip)
                .ok_or_else(|| {
                    bad_request(format!("Port {port_id} does not have fixed ip {ip}"))
                })?,
            (None, [only]) => only,
            (None, []) => {
                return Err(bad_request(format!(
                    "Cannot add floating IP to port {port_id} that has no fixed IPv4 addresses"
                )));
            }
            (None, _) => {
                return Err(bad_request(format!(
                    "Port {port_id} has multiple fixed IPv4 addresses.  Must provide a specific \
                     IPv4 address when assigning a floating IP"
                )));
            }
        };
        let router = self
            .reaching_router(txn, &fip.floating_network_id, &fixed.subnet_id)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "ExternalGatewayForFloatingIPNotFound",
                    format!(
                        "External network {} is not reachable from subnet {}.  Therefore, cannot \
                         associate Port {port_id} with a Floating IP.",
                        fip.floating_network_id, fixed.subnet_id
                    ),
                )
            })?;
        let on_port = lists.get(self, &port_fips_key(port_id)).await?.clone();
        for other in on_port.iter().filter(|other| **other != fip.meta.id) {
            let Some((other, _)) = self.find::<FloatingIp>(other).await? else {
                continue;
            };
            let same = other.floating_network_id == fip.floating_network_id
                && other
                    .association
                    .as_ref()
                    .is_some_and(|a| a.fixed_ip_address == fixed.ip_address);
            if same {
                return Err(ApiError::conflict(
                    "FloatingIPPortAlreadyAssociated",
                    format!(
                        "Cannot associate floating IP {} ({}) with port {port_id} using fixed IP \
                         {}, as that fixed IP already has a floating IP on external network {}.",
                        fip.floating_ip_address,
                        fip.meta.id,
                        fixed.ip_address,
                        fip.floating_network_id
                    ),
                ));
            }
        }
        for key in [port_fips_key(port_id), router_fips_key(&router.meta.id)] {
            let ids = lists.get(self, &key).await?;
            if !ids.contains(&fip.meta.id) {
                ids.push(fip.meta.id.clone());
            }
        }
        Ok(Association {
            port_id: port_id.clone(),
            fixed_ip_address: fixed.ip_address,
            subnet_id: fixed.subnet_id.clone(),
            router_id: router.meta.id,
        })
    }

    /// Takes the floating IP out of its port's and router's lists.
    async fn plan_disassociation(&self, lists: &mut IdLists, fip: &FloatingIp) -> ApiResult<()> {
        if let Some(association) = &fip.association {
            for key in [
                port_fips_key(&association.port_id),
                router_fips_key(&association.router_id),
            ] {
                lists.get(self, &key).await?.retain(|id| *id != fip.meta.id);
            }
        }
        Ok(())
    }

    /// Adds to `txn` what deleting the port does to its floating IPs:
    /// they stay, associated with nothing.
    pub(super) async fn plan_port_fips_release(
        &self,
        txn: &mut Txn,
        port_id: &str,
    ) -> ApiResult<()> {
        let mut lists = IdLists::default();
        let ids = lists.get(self, &port_fips_key(port_id)).await?.clone();
        for id in &ids {
            let Some((mut fip, entry)) = self.find::<FloatingIp>(id).await? else {
                continue;
            };
            self.plan_disassociation(&mut lists, &fip).await?;
            fip.association = None;
            fip.meta.touch();
            txn.require_unchanged(&entry)
                .put(entry.key.clone(), encode(&fip));
        }
        lists.write(txn);
        Ok(())
    }

    /// The floating IPs associated through the router, in `lists` (so
    /// that the commit compares them).
    pub(super) async fn router_fips(
        &self,
        lists: &mut IdLists,
        router_id: &str,
    ) -> ApiResult<Vec<FloatingIp>> {
        let ids = lists.get(self, &router_fips_key(router_id)).await?.clone();
        let mut fips = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some((fip, _)) = self.find::<FloatingIp>(&id).await? {
                fips.push(fip);
            }
        }
        Ok(fips)
    }

    pub async fn create_floating_ip(&self, create: FloatingIpCreate) -> ApiResult<FloatingIp> {
        let create = &create;
        retrying(|| {
            Box::pin(async move {
                let mut plan = Plan::default();
                let network_id = &create.floating_network_id;
                let network = self.plan_network(&mut plan, network_id).await?;
                if !network.external {
                    return Err(bad_request(format!(
                        "Network {network_id} is not a valid external network"
                    )));
                }
                if network.subnets.is_empty() {
                    return Err(bad_request(format!(
                        "Network {network_id} does not contain any IPv4 subnet"
                    )));
                }
                let project = create
                    .project_id
                    .clone()
                    .unwrap_or_else(|| self.policy.default_project.clone());
                let meta = Meta::new(String::new(), create.description.clone(), project);
                let requests = match (&create.subnet_id, create.floating_ip_address) {
                    (subnet_id, Some(ip_address)) => Some(vec![FixedIpRequest::Address {
                        subnet_id: subnet_id.clone(),
                        ip_address,
                    }]),
                    (Some(subnet_id), None) => {
                        Some(vec![FixedIpRequest::Subnet(subnet_id.clone())])
                    }
                    (None, None) => None,
                };
                // Neutron's floating IP ports belong to no project.
                let port = PortCreate::owned(network_id, "", FLOATING_IP_OWNER, &meta.id, requests);
                let port = self.plan_port(&mut plan, &port).await?;
                let Some(address) = port.fixed_ips.first() else {
                    return Err(bad_request(format!(
                        "Network {network_id} does not contain any IPv4 subnet"
                    )));
                };
                let mut fip = FloatingIp {
                    meta,
                    floating_network_id: network_id.clone(),
                    floating_ip_address: address.ip_address,
                    floating_port_id: port.meta.id.clone(),
                    association: None,
                };
                let mut lists = IdLists::default();
                if let Some(target) = &create.target {
                    fip.association = Some(
                        self.plan_association(&mut plan.txn, &mut lists, &fip, target)
                            .await?,
                    );
                }
                lists.write(&mut plan.txn);
                self.commit_created(&mut plan, fip).await
            })
        })
        .await
    }

    /// Changes the description, or associates the floating IP with
    /// another port, or with none.
    pub async fn update_floating_ip(
        &self,
        id: &str,
        update: FloatingIpUpdate,
        if_match: Option<u64>,
    ) -> ApiResult<FloatingIp> {
        let update = &update;
        retrying(|| {
            Box::pin(async move {
                let (mut fip, entry) = self.load::<FloatingIp>(id).await?;
                check_revision(&fip.meta, if_match)?;
                let before = fip.clone();
                let mut txn = Txn::default();
                txn.require_unchanged(&entry);
                if let Some(description) = &update.description {
                    fip.meta.description = description.clone();
                }
                let mut lists = IdLists::default();
                if let Some(target) = &update.target {
                    self.plan_disassociation(&mut lists, &fip).await?;
                    fip.association = match target {
                        Some(target) => Some(
                            self.plan_association(&mut txn, &mut lists, &fip, target)
                                .await?,
                        ),
                        None => None,
                    };
                }
                if fip == before {
                    return Ok(Try::Done(fip));
                }
                fip.meta.touch();
                lists.write(&mut txn);
                txn.put(entry.key.clone(), encode(&fip));
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(fip),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    /// Deletes the floating IP and its port, which releases the address.
    pub async fn delete_floating_ip(&self, id: &str, if_match: Option<u64>) -> ApiResult<()> {
        let port = retrying(|| {
            Box::pin(async move {
                let (fip, entry) = self.load::<FloatingIp>(id).await?;
                check_revision(&fip.meta, if_match)?;
                let mut txn = Txn::default();
                txn.require_unchanged(&entry).delete(entry.key.clone());
                let mut lists = IdLists::default();
                self.plan_disassociation(&mut lists, &fip).await?;
                lists.write(&mut txn);
                let port = self.find::<Port>(&fip.floating_port_id).await?;
                if let Some((port, entry)) = &port {
                    self.plan_port_deletion(&mut txn, port, entry).await?;
                }
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(port.map(|(port, _)| port)),
                    Try::Again => Try::Again,
                })
            })
        })
        .await?;
        if let Some(port) = &port {
            self.released(port);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::{
        body::resource,
        model::{
            Network, Subnet,
            router::{InterfaceRequest, RouterCreate, RouterUpdate},
        },
        service::testing::*,
    };

    fn create(body: Value) -> FloatingIpCreate {
        FloatingIpCreate::parse(resource(&json!({ "floatingip": body }), "floatingip").unwrap())
            .unwrap()
    }

    fn update(body: Value) -> FloatingIpUpdate {
        FloatingIpUpdate::parse(resource(&json!({ "floatingip": body }), "floatingip").unwrap())
            .unwrap()
    }

    /// An external network, an internal one, a router between them and a
    /// VM's port inside.
    struct Lab {
        external: Network,
        public: Subnet,
        inside: Subnet,
        router: Router,
        vm: Port,
    }

    async fn lab(controller: &Controller) -> Lab {
        let (external, public) = network_with_subnet(
            controller,
            json!({"router:external": true}),
            "203.0.113.0/29",
        )
        .await;
        let (internal, inside) = network_with_subnet(controller, json!({}), "10.0.0.0/24").await;
        let router = RouterCreate::parse(
            resource(
                &json!({"router": {"external_gateway_info": {"network_id": external.meta.id}}}),
                "router",
            )
            .unwrap(),
        )
        .unwrap();
        let router = controller.create_router(router).await.unwrap();
        controller
            .add_router_interface(
                &router.meta.id,
                &InterfaceRequest::Subnet(inside.meta.id.clone()),
            )
            .await
            .unwrap();
        let vm = controller
            // A set address: the tests name others it does not have.
            .create_ports(&[port(json!({
                "network_id": internal.meta.id,
                "fixed_ips": [{"ip_address": "10.0.0.10"}],
            }))])
            .await
            .unwrap()
            .remove(0);
        Lab {
            router: controller.show(&router.meta.id).await.unwrap(),
            external,
            public,
            inside,
            vm,
        }
    }

    #[tokio::test]
    async fn a_floating_ip_reaches_its_port_through_a_router() {
        let (_dir, controller) = controller();
        let lab = lab(&controller).await;
        let ext = lab.external.meta.id.clone();
        let fip = controller
            .create_floating_ip(create(
                json!({"floating_network_id": ext, "port_id": lab.vm.meta.id}),
            ))
            .await
            .unwrap();
        let association = fip.association.clone().unwrap();
        assert_eq!(association.router_id, lab.router.meta.id);
        assert_eq!(association.fixed_ip_address, lab.vm.fixed_ips[0].ip_address);
        assert!(lab.public.cidr.contains(&fip.floating_ip_address));
        let held = controller
            .show::<Port>(&fip.floating_port_id)
            .await
            .unwrap();
        assert_eq!(
            (held.device_owner.as_str(), held.device_id.as_str()),
            (FLOATING_IP_OWNER, fip.meta.id.as_str())
        );

        let before = snapshot(&controller).await;
        let cases = [
            (
                json!({"floating_network_id": lab.inside.network_id}),
                400,
                "BadRequest",
            ),
            (
                json!({"floating_network_id": "nope"}),
                404,
                "NetworkNotFound",
            ),
            (
                json!({"floating_network_id": ext, "floating_ip_address": fip.floating_ip_address.to_string()}),
                409,
                "IpAddressAlreadyAllocated",
            ),
            (
                json!({"floating_network_id": ext, "port_id": lab.vm.meta.id}),
                409,
                "FloatingIPPortAlreadyAssociated",
            ),
            (
                json!({"floating_network_id": ext, "port_id": lab.vm.meta.id, "fixed_ip_address": "10.0.0.99"}),
                400,
                "BadRequest",
            ),
            (
                json!({"floating_network_id": ext, "port_id": "nope"}),
                404,
                "PortNotFound",
            ),
        ];
        for (body, status, kind) in cases {
            refused(
                controller.create_floating_ip(create(body)).await,
                status,
                kind,
            );
        }
        // A port no router reaches from the external network.
        let (alone, _) = network_with_subnet(&controller, json!({}), "10.9.0.0/24").await;
        let stray = controller
            .create_ports(&[port(json!({"network_id": alone.meta.id}))])
            .await
            .unwrap();
        let before_stray = snapshot(&controller).await;
        refused(
            controller
                .create_floating_ip(create(
                    json!({"floating_network_id": ext, "port_id": stray[0].meta.id}),
                ))
                .await,
            404,
            "ExternalGatewayForFloatingIPNotFound",
        );
        assert_eq!(snapshot(&controller).await, before_stray);
        controller
            .delete_port(&stray[0].meta.id, None)
            .await
            .unwrap();
        controller
            .delete_network(&alone.meta.id, None)
            .await
            .unwrap();
        assert_eq!(
            snapshot(&controller).await,
            before,
            "refused: nothing written"
        );

        // The router's interface and gateway stay while the floating IP needs them.
        refused(
            controller
                .remove_router_interface(
                    &lab.router.meta.id,
                    &InterfaceRequest::Subnet(lab.inside.meta.id.clone()),
                )
                .await,
            409,
            "RouterInterfaceInUseByFloatingIP",
        );
        let clear = RouterUpdate::parse(
            resource(
                &json!({"router": {"external_gateway_info": null}}),
                "router",
            )
            .unwrap(),
        )
        .unwrap();
        refused(
            controller
                .update_router(&lab.router.meta.id, clear, None)
                .await,
            409,
            "RouterExternalGatewayInUseByFloatingIp",
        );
        refused(
            controller.delete_port(&fip.floating_port_id, None).await,
            409,
            "L3PortInUse",
        );
        assert_eq!(snapshot(&controller).await, before);

        // Off and on again; then the port goes, and the floating IP stays, on nothing.
        let off = controller
            .update_floating_ip(&fip.meta.id, update(json!({"port_id": null})), None)
            .await
            .unwrap();
        assert_eq!(off.association, None);
        assert!(
            controller
                .store
                .get(&router_fips_key(&lab.router.meta.id))
                .await
                .unwrap()
                .is_none()
        );
        let on = controller
            .update_floating_ip(
                &fip.meta.id,
                update(json!({"port_id": lab.vm.meta.id})),
                None,
            )
            .await
            .unwrap();
        assert_eq!(on.association, fip.association);
        controller.delete_port(&lab.vm.meta.id, None).await.unwrap();
        let orphan = controller.show::<FloatingIp>(&fip.meta.id).await.unwrap();
        assert_eq!(orphan.association, None);
        assert_eq!(orphan.view()["port_id"], Value::Null);

        // Deleting it gives the address back; then everything can go.
        let allocated = controller.allocated(&lab.public.meta.id).await.unwrap();
        controller
            .delete_floating_ip(&fip.meta.id, None)
            .await
            .unwrap();
        assert_eq!(
            controller.allocated(&lab.public.meta.id).await.unwrap(),
            allocated - 1
        );
        controller
            .remove_router_interface(
                &lab.router.meta.id,
                &InterfaceRequest::Subnet(lab.inside.meta.id.clone()),
            )
            .await
            .unwrap();
        delete_all(&controller).await;
    }

    /// Several floating IPs associated with one port at once: one gets
    /// it; and deleting the port while they try leaves no association to
    /// a port that is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_associations_keep_one_per_fixed_ip() {
        let (_dir, controller) = controller();
        let controller = Arc::new(controller);
        let lab = lab(&controller).await;
        let mut fips = Vec::new();
        for _ in 0..4 {
            let fip = controller
                .create_floating_ip(create(json!({"floating_network_id": lab.external.meta.id})))
                .await
                .unwrap();
            fips.push(fip.meta.id);
        }
        let associate_all = || -> Vec<_> {
            fips.iter()
                .map(|id| {
                    let (controller, id, port) =
                        (controller.clone(), id.clone(), lab.vm.meta.id.clone());
                    tokio::spawn(async move {
                        let update = update(json!({"port_id": port}));
                        controller.update_floating_ip(&id, update, None).await
                    })
                })
                .collect()
        };
        let mut won = 0;
        for task in associate_all() {
            match task.await.unwrap() {
                Ok(_) => won += 1,
                Err(error) => assert_eq!(error.kind, "FloatingIPPortAlreadyAssociated"),
            }
        }
        assert_eq!(won, 1);

        // All free again; then they try once more while the port goes.
        for id in &fips {
            let free = update(json!({"port_id": null}));
            controller.update_floating_ip(id, free, None).await.unwrap();
        }
        let tasks = associate_all();
        controller.delete_port(&lab.vm.meta.id, None).await.unwrap();
        for task in tasks {
            // One may get it before the port goes: the delete frees it.
            let _ = task.await.unwrap();
        }
        for fip in controller.list::<FloatingIp>().await.unwrap() {
            assert_eq!(fip.association, None, "associated with a port that is gone");
        }
        assert!(keys(&controller, "/alcor/port-fip/").await == 0);
        assert!(keys(&controller, "/alcor/router-fip/").await == 0);
    }
}
