//! Routers, their gateways and interfaces. Each is a port made (or taken)
//! in the router's own transaction, which compares the router: an
//! interface's port, with its address key, and the router's list of
//! interfaces appear together or not at all, and two interfaces racing
//! onto one router see each other. The gateway address of a subnet is a
//! key like any port address, so two routers cannot both have it.

use super::{
    Controller, Try, check_revision, encode,
    floating_ips::IdLists,
    ports::{Plan, already_allocated},
    retrying,
    subnets::ip_key,
};
use crate::{
    error::{ApiError, ApiResult},
    model::{
        Meta, Port, Resource, Router, Subnet,
        port::{FixedIpRequest, PortCreate},
        router::{
            Gateway, GatewayRequest, InterfaceRequest, ROUTER_GATEWAY, ROUTER_INTERFACE,
            RouterCreate, RouterUpdate, bad_router_request,
        },
    },
    store::Txn,
};

impl Controller {
    /// The gateway port on an external network, made by the plan.
    async fn plan_gateway(
        &self,
        plan: &mut Plan,
        router_id: &str,
        request: &GatewayRequest,
    ) -> ApiResult<Gateway> {
        let network = self.plan_network(plan, &request.network_id).await?;
        if !network.external {
            return Err(bad_router_request(format!(
                "Network {} is not an external network",
                request.network_id
            )));
        }
        // Neutron's gateway ports belong to no project.
        let create = PortCreate::owned(
            &request.network_id,
            "",
            ROUTER_GATEWAY,
            router_id,
            request.external_fixed_ips.clone(),
        );
        let port = self.plan_port(plan, &create).await?;
        Ok(Gateway {
            network_id: request.network_id.clone(),
            enable_snat: request.enable_snat.unwrap_or(true),
            port_id: port.meta.id,
            external_fixed_ips: port.fixed_ips,
        })
    }

    /// Adds the deletion of the router's gateway port to the plan, unless
    /// a floating IP needs the gateway; the port, to release its
    /// addresses once committed.
    async fn plan_gateway_removal(
        &self,
        plan: &mut Plan,
        lists: &mut IdLists,
        router: &Router,
    ) -> ApiResult<Option<Port>> {
        let Some(gateway) = &router.gateway else {
            return Ok(None);
        };
        if !self.router_fips(lists, &router.meta.id).await?.is_empty() {
            return Err(ApiError::conflict(
                "RouterExternalGatewayInUseByFloatingIp",
                format!(
                    "Gateway cannot be updated for router {}, since a gateway to external network \
                     {} is required by one or more floating IPs.",
                    router.meta.id, gateway.network_id
                ),
            ));
        }
        let Some((port, entry)) = self.find::<Port>(&gateway.port_id).await? else {
            return Ok(None);
        };
        self.plan_port_deletion(&mut plan.txn, &port, &entry)
            .await?;
        Ok(Some(port))
    }

    pub async fn create_router(&self, create: RouterCreate) -> ApiResult<Router> {
        let create = &create;
        retrying(|| {
            Box::pin(async move {
                let project = create
                    .project_id
                    .clone()
                    .unwrap_or_else(|| self.policy.default_project.clone());
                let mut router = Router {
                    meta: Meta::new(create.name.clone(), create.description.clone(), project),
                    admin_state_up: create.admin_state_up,
                    gateway: None,
                    interfaces: Vec::new(),
                };
                let mut plan = Plan::default();
                if let Some(request) = &create.gateway {
                    router.gateway = Some(
                        self.plan_gateway(&mut plan, &router.meta.id, request)
                            .await?,
                    );
                }
                self.commit_created(&mut plan, router).await
            })
        })
        .await
    }

    pub async fn update_router(
        &self,
        id: &str,
        update: RouterUpdate,
        if_match: Option<u64>,
    ) -> ApiResult<Router> {
        let update = &update;
        let (router, released) = retrying(|| {
            Box::pin(async move {
                let (mut router, entry) = self.load::<Router>(id).await?;
                check_revision(&router.meta, if_match)?;
                let mut changed = update.apply(&mut router);
                let mut plan = Plan::default();
                let mut lists = IdLists::default();
                let mut released = None;
                // The same network, no addresses asked for: SNAT only.
                let same_network = match (&router.gateway, &update.gateway) {
                    (Some(gateway), Some(Some(request))) => {
                        gateway.network_id == request.network_id
                            && request.external_fixed_ips.is_none()
                    }
                    _ => false,
                };
                match &update.gateway {
                    None => {}
                    Some(None) if router.gateway.is_none() => {}
                    Some(Some(request)) if same_network => {
                        if let Some(gateway) = &mut router.gateway {
                            let snat = request.enable_snat.unwrap_or(true);
                            changed |= gateway.enable_snat != snat;
                            gateway.enable_snat = snat;
                        }
                    }
                    Some(request) => {
                        released = self
                            .plan_gateway_removal(&mut plan, &mut lists, &router)
                            .await?;
                        router.gateway = match request {
                            Some(request) => Some(self.plan_gateway(&mut plan, id, request).await?),
                            None => None,
                        };
                        changed = true;
                    }
                }
                if !changed {
                    return Ok(Try::Done((router, None)));
                }
                router.meta.touch();
                lists.write(&mut plan.txn);
                plan.txn
                    .require_unchanged(&entry)
                    .put(entry.key.clone(), encode(&router));
                if !self.commit_plan(&plan).await? {
                    return self.diagnose(&plan).await;
                }
                Ok(Try::Done((router, released)))
            })
        })
        .await?;
        if let Some(port) = &released {
            self.released(port);
        }
        Ok(router)
    }

    /// Deletes a router without interfaces, and its gateway port.
    pub async fn delete_router(&self, id: &str, if_match: Option<u64>) -> ApiResult<()> {
        let released = retrying(|| {
            Box::pin(async move {
                let (router, entry) = self.load::<Router>(id).await?;
                check_revision(&router.meta, if_match)?;
                if !router.interfaces.is_empty() {
                    return Err(ApiError::conflict(
                        "RouterInUse",
                        format!("Router {id} still has ports"),
                    ));
                }
                let mut plan = Plan::default();
                let mut lists = IdLists::default();
                let released = self
                    .plan_gateway_removal(&mut plan, &mut lists, &router)
                    .await?;
                lists.write(&mut plan.txn);
                plan.txn.require_unchanged(&entry).delete(entry.key.clone());
                Ok(match self.commit(plan.txn).await? {
                    Try::Done(()) => Try::Done(released),
                    Try::Again => Try::Again,
                })
            })
        })
        .await?;
        if let Some(port) = &released {
            self.released(port);
        }
        Ok(())
    }

    /// Refuses a subnet the router has already, or one that overlaps one
    /// of its subnets (Neutron's checks; the interfaces are as of the
    /// router's compared read).
    async fn check_router_subnet(&self, router: &Router, subnet: &Subnet) -> ApiResult<()> {
        for port_id in &router.interfaces {
            let Some((port, _)) = self.find::<Port>(port_id).await? else {
                continue;
            };
            for fixed in &port.fixed_ips {
                if fixed.subnet_id == subnet.meta.id {
                    return Err(bad_router_request(format!(
                        "Router already has a port on subnet {}",
                        subnet.meta.id
                    )));
                }
                let Some((other, _)) = self.find::<Subnet>(&fixed.subnet_id).await? else {
                    continue;
                };
                if other.cidr.contains(&subnet.cidr.network())
                    || subnet.cidr.contains(&other.cidr.network())
                {
                    return Err(bad_router_request(format!(
                        "Cidr {} of subnet {} overlaps with cidr {} of subnet {}",
                        subnet.cidr, subnet.meta.id, other.cidr, other.meta.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// The interface port a subnet asks for: the subnet's gateway address,
    /// on its network, owned by the router.
    async fn plan_subnet_interface(
        &self,
        plan: &mut Plan,
        router: &Router,
        subnet_id: &str,
    ) -> ApiResult<Port> {
        let subnet = match self.find::<Subnet>(subnet_id).await? {
            Some((subnet, _)) if !subnet.deleting => subnet,
            _ => return Err(ApiError::not_found(Subnet::KIND, subnet_id)),
        };
        let Some(gateway) = subnet.gateway_ip else {
            return Err(bad_router_request(
                "Subnet for router interface must have a gateway IP",
            ));
        };
        self.check_router_subnet(router, &subnet).await?;
        // Another router's: a 409 now; one taken meanwhile fails the
        // commit's compare, and the next try finds it here.
        if self.store.get(&ip_key(subnet_id, gateway)).await?.is_some() {
            return Err(already_allocated(gateway, subnet_id));
        }
        let create = PortCreate::owned(
            &subnet.network_id,
            &subnet.meta.project_id,
            ROUTER_INTERFACE,
            &router.meta.id,
            Some(vec![FixedIpRequest::Address {
                subnet_id: Some(subnet_id.into()),
                ip_address: gateway,
            }]),
        );
        self.plan_port(plan, &create).await
    }

    /// A client's port made the router's interface: it must be nobody's
    /// and have one address, of a subnet the router is not on.
    async fn plan_port_interface(
        &self,
        plan: &mut Plan,
        router: &Router,
        port_id: &str,
    ) -> ApiResult<Port> {
        let (mut port, entry) = self.load::<Port>(port_id).await?;
        if !port.device_id.is_empty() {
            return Err(ApiError::conflict(
                "PortInUse",
                format!(
                    "Unable to complete operation on port {port_id} for network {}. Port already \
                     has an attached device {}.",
                    port.network_id, port.device_id
                ),
            ));
        }
        let subnet_id = match port.fixed_ips.as_slice() {
            [] => {
                return Err(bad_router_request(
                    "Router port must have at least one fixed IP",
                ));
            }
            [only] => only.subnet_id.clone(),
            _ => {
                return Err(bad_router_request(
                    "Cannot have multiple IPv4 subnets on router port",
                ));
            }
        };
        let (subnet, _) = self.load::<Subnet>(&subnet_id).await?;
        self.check_router_subnet(router, &subnet).await?;
        port.device_id = router.meta.id.clone();
        port.device_owner = ROUTER_INTERFACE.into();
        port.meta.touch();
        plan.txn
            .require_unchanged(&entry)
            .put(entry.key.clone(), encode(&port));
        Ok(port)
    }

    /// `PUT /routers/{id}/add_router_interface`: the interface's port.
    pub async fn add_router_interface(
        &self,
        id: &str,
        request: &InterfaceRequest,
    ) -> ApiResult<Port> {
        retrying(|| {
            Box::pin(async move {
                let (mut router, entry) = self.load::<Router>(id).await?;
                let mut plan = Plan::default();
                let port = match request {
                    InterfaceRequest::Subnet(subnet_id) => {
                        self.plan_subnet_interface(&mut plan, &router, subnet_id)
                            .await?
                    }
                    InterfaceRequest::Port(port_id) => {
                        self.plan_port_interface(&mut plan, &router, port_id)
                            .await?
                    }
                };
                router.interfaces.push(port.meta.id.clone());
                router.meta.touch();
                plan.txn
                    .require_unchanged(&entry)
                    .put(entry.key.clone(), encode(&router));
                // Lost a race (the router changed, the address or a random
                // MAC was taken): the next try decides again.
                Ok(match self.commit_plan(&plan).await? {
                    true => Try::Done(port),
                    false => Try::Again,
                })
            })
        })
        .await
    }

    /// `PUT /routers/{id}/remove_router_interface`: deletes the interface's
    /// port, unless a floating IP reaches its port through it; the port
    /// as it was.
    pub async fn remove_router_interface(
        &self,
        id: &str,
        request: &InterfaceRequest,
    ) -> ApiResult<Port> {
        let port = retrying(|| {
            Box::pin(async move {
                let (mut router, entry) = self.load::<Router>(id).await?;
                let mut found = None;
                for port_id in &router.interfaces {
                    if let Some((port, port_entry)) = self.find::<Port>(port_id).await? {
                        let wanted = match request {
                            InterfaceRequest::Subnet(subnet_id) => port
                                .fixed_ips
                                .iter()
                                .any(|fixed| fixed.subnet_id == *subnet_id),
                            InterfaceRequest::Port(wanted) => port.meta.id == *wanted,
                        };
                        if wanted {
                            found = Some((port, port_entry));
                            break;
                        }
                    }
                }
                let Some((port, port_entry)) = found else {
                    return Err(match request {
                        InterfaceRequest::Subnet(subnet_id) => ApiError::new(
                            404,
                            "RouterInterfaceNotFoundForSubnet",
                            format!("Router {id} has no interface on subnet {subnet_id}"),
                        ),
                        InterfaceRequest::Port(port_id) => ApiError::new(
                            404,
                            "RouterInterfaceNotFound",
                            format!("Router {id} does not have an interface with id {port_id}"),
                        ),
                    });
                };
                let mut lists = IdLists::default();
                for fip in self.router_fips(&mut lists, id).await? {
                    let Some(association) = fip.association else {
                        continue;
                    };
                    if let Some(fixed) = port
                        .fixed_ips
                        .iter()
                        .find(|fixed| fixed.subnet_id == association.subnet_id)
                    {
                        return Err(ApiError::conflict(
                            "RouterInterfaceInUseByFloatingIP",
                            format!(
                                "Router interface for subnet {} on router {id} cannot be deleted, \
                                 as it is required by one or more floating IPs.",
                                fixed.subnet_id
                            ),
                        ));
                    }
                }
                router.interfaces.retain(|other| *other != port.meta.id);
                router.meta.touch();
                let mut txn = Txn::default();
                lists.write(&mut txn);
                txn.require_unchanged(&entry)
                    .put(entry.key.clone(), encode(&router));
                self.plan_port_deletion(&mut txn, &port, &port_entry)
                    .await?;
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(port),
                    Try::Again => Try::Again,
                })
            })
        })
        .await?;
        self.released(&port);
        Ok(port)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::{body::resource, service::testing::*};

    fn create(body: Value) -> RouterCreate {
        RouterCreate::parse(resource(&json!({ "router": body }), "router").unwrap()).unwrap()
    }

    fn subnet(id: &str) -> InterfaceRequest {
        InterfaceRequest::Subnet(id.into())
    }

    #[tokio::test]
    async fn a_gateway_is_a_port_on_an_external_network() {
        let (_dir, controller) = controller();
        let (external, public) = network_with_subnet(
            &controller,
            json!({"router:external": true}),
            "203.0.113.0/28",
        )
        .await;
        let (internal, _) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let before = snapshot(&controller).await;
        let error = refused(
            controller
                .create_router(create(
                    json!({"external_gateway_info": {"network_id": internal.meta.id}}),
                ))
                .await,
            400,
            "BadRequest",
        );
        assert!(error.message.contains("not an external network"), "{error}");
        assert_eq!(snapshot(&controller).await, before);

        let router = controller
            .create_router(create(json!({"name": "r", "external_gateway_info": {
                "network_id": external.meta.id, "external_fixed_ips": [{"ip_address": "203.0.113.5"}],
            }})))
            .await
            .unwrap();
        let gateway = router.gateway.clone().unwrap();
        assert!(gateway.enable_snat);
        assert_eq!(
            gateway.external_fixed_ips[0].ip_address.to_string(),
            "203.0.113.5"
        );
        let port = controller.show::<Port>(&gateway.port_id).await.unwrap();
        assert_eq!(
            (port.device_owner.as_str(), port.device_id.as_str()),
            (ROUTER_GATEWAY, router.meta.id.as_str())
        );
        assert!(
            port.security_groups.is_empty(),
            "a router's port is trusted"
        );
        refused(
            controller.delete_port(&port.meta.id, None).await,
            409,
            "L3PortInUse",
        );
        refused(
            controller.delete_network(&external.meta.id, None).await,
            409,
            "NetworkInUse",
        );

        // SNAT off, then the gateway cleared: its port and address go.
        let update = |body: Value| {
            RouterUpdate::parse(resource(&json!({ "router": body }), "router").unwrap()).unwrap()
        };
        let snat = json!({"external_gateway_info": {"network_id": external.meta.id, "enable_snat": false}});
        let updated = controller
            .update_router(&router.meta.id, update(snat), None)
            .await
            .unwrap();
        assert_eq!(
            updated
                .gateway
                .as_ref()
                .map(|g| (g.enable_snat, g.port_id.clone())),
            Some((false, gateway.port_id.clone()))
        );
        let cleared = controller
            .update_router(
                &router.meta.id,
                update(json!({"external_gateway_info": {}})),
                None,
            )
            .await
            .unwrap();
        assert_eq!(cleared.gateway, None);
        assert_eq!(controller.allocated(&public.meta.id).await.unwrap(), 0);
        delete_all(&controller).await;
    }

    #[tokio::test]
    async fn interfaces_come_and_go_and_leave_no_key() {
        let (_dir, controller) = controller();
        let (_, inside) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let router = controller
            .create_router(create(json!({"name": "r"})))
            .await
            .unwrap();
        let id = router.meta.id.as_str();
        let port = controller
            .add_router_interface(id, &subnet(&inside.meta.id))
            .await
            .unwrap();
        assert_eq!(port.fixed_ips[0].ip_address, inside.gateway_ip.unwrap());
        assert_eq!(
            (port.device_owner.as_str(), port.device_id.as_str()),
            (ROUTER_INTERFACE, id)
        );
        assert_eq!(
            controller.show::<Router>(id).await.unwrap().interfaces,
            std::slice::from_ref(&port.meta.id)
        );

        let before = snapshot(&controller).await;
        let error = refused(
            controller
                .add_router_interface(id, &subnet(&inside.meta.id))
                .await,
            400,
            "BadRequest",
        );
        assert!(
            error.message.contains("already has a port on subnet"),
            "{error}"
        );
        let other = controller
            .create_router(create(json!({"name": "other"})))
            .await
            .unwrap();
        let before_other = snapshot(&controller).await;
        refused(
            controller
                .add_router_interface(&other.meta.id, &subnet(&inside.meta.id))
                .await,
            409,
            "IpAddressAlreadyAllocated",
        );
        assert_eq!(snapshot(&controller).await, before_other);
        controller
            .delete_router(&other.meta.id, None)
            .await
            .unwrap();
        assert_eq!(snapshot(&controller).await, before);
        for (action, kind) in [
            (controller.delete_router(id, None).await, "RouterInUse"),
            (
                controller.delete_port(&port.meta.id, None).await,
                "L3PortInUse",
            ),
            (
                controller.delete_subnet(&inside.meta.id, None).await,
                "SubnetInUse",
            ),
        ] {
            refused(action, 409, kind);
        }
        let unowned = crate::model::port::PortUpdate::parse(
            resource(&json!({"port": {"device_owner": ""}}), "port").unwrap(),
        )
        .unwrap();
        let update = controller.update_port(&port.meta.id, &unowned, None).await;
        refused(update, 409, "L3PortInUse");
        assert_eq!(
            snapshot(&controller).await,
            before,
            "refused: nothing written"
        );

        // The interface keeps the subnet's gateway where it is.
        let gateway = crate::model::subnet::SubnetUpdate::parse(
            resource(
                &json!({"subnet": {"gateway_ip": "10.0.0.254",
                    "allocation_pools": [{"start": "10.0.0.2", "end": "10.0.0.200"}]}}),
                "subnet",
            )
            .unwrap(),
        )
        .unwrap();
        let update = controller
            .update_subnet(&inside.meta.id, gateway, None)
            .await;
        refused(update, 409, "GatewayIpInUse");
        assert_eq!(snapshot(&controller).await, before);

        // A subnet without a gateway, or overlapping one of the router's.
        let create_subnet = |body: Value| {
            crate::model::subnet::SubnetCreate::parse(
                resource(&json!({ "subnet": body }), "subnet").unwrap(),
            )
            .unwrap()
        };
        let (elsewhere, _) = network_with_subnet(&controller, json!({}), "10.1.0.0/24").await;
        let bare = controller
            .create_subnet(create_subnet(
                json!({"network_id": elsewhere.meta.id, "cidr": "10.2.0.0/24", "gateway_ip": null}),
            ))
            .await
            .unwrap();
        let (_, overlapping) = network_with_subnet(&controller, json!({}), "10.0.0.0/16").await;
        let before = snapshot(&controller).await;
        for (request, words) in [
            (&bare, "must have a gateway IP"),
            (&overlapping, "overlaps"),
        ] {
            let error = refused(
                controller
                    .add_router_interface(id, &subnet(&request.meta.id))
                    .await,
                400,
                "BadRequest",
            );
            assert!(error.message.contains(words), "{error}");
        }
        assert_eq!(snapshot(&controller).await, before);

        // A client's port as an interface.
        let mine = controller
            .create_ports(&[crate::service::testing::port(
                json!({"network_id": elsewhere.meta.id}),
            )])
            .await
            .unwrap();
        let taken = controller
            .add_router_interface(id, &InterfaceRequest::Port(mine[0].meta.id.clone()))
            .await
            .unwrap();
        assert_eq!(
            (taken.meta.id.as_str(), taken.device_owner.as_str()),
            (mine[0].meta.id.as_str(), ROUTER_INTERFACE)
        );
        refused(
            controller
                .add_router_interface(
                    &controller
                        .create_router(create(json!({})))
                        .await
                        .unwrap()
                        .meta
                        .id,
                    &InterfaceRequest::Port(taken.meta.id.clone()),
                )
                .await,
            409,
            "PortInUse",
        );

        // Removed by subnet and by port: the ports go.
        refused(
            controller
                .remove_router_interface(id, &subnet(&bare.meta.id))
                .await,
            404,
            "RouterInterfaceNotFoundForSubnet",
        );
        refused(
            controller
                .remove_router_interface(id, &InterfaceRequest::Port("nope".into()))
                .await,
            404,
            "RouterInterfaceNotFound",
        );
        let removed = controller
            .remove_router_interface(id, &subnet(&inside.meta.id))
            .await
            .unwrap();
        assert_eq!(removed.meta.id, port.meta.id);
        controller
            .remove_router_interface(id, &InterfaceRequest::Port(taken.meta.id.clone()))
            .await
            .unwrap();
        assert_eq!(
            controller
                .show::<Port>(&taken.meta.id)
                .await
                .unwrap_err()
                .status,
            404
        );
        delete_all(&controller).await;
    }

    /// Routers racing for one subnet: one gets it, the others are told
    /// its gateway address is taken; one interface port in the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_routers_share_no_subnet() {
        let (_dir, controller) = controller();
        let controller = Arc::new(controller);
        let (_, inside) = network_with_subnet(&controller, json!({}), "10.0.0.0/24").await;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let router = controller.create_router(create(json!({}))).await.unwrap();
            let controller = controller.clone();
            let request = subnet(&inside.meta.id);
            tasks.push(tokio::spawn(async move {
                controller
                    .add_router_interface(&router.meta.id, &request)
                    .await
            }));
        }
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => won += 1,
                Err(error) => assert_eq!(error.kind, "IpAddressAlreadyAllocated"),
            }
        }
        assert_eq!(won, 1);
        assert_eq!(controller.list::<Port>().await.unwrap().len(), 1);
        let with_interfaces = controller
            .list::<Router>()
            .await
            .unwrap()
            .into_iter()
            .filter(|router| !router.interfaces.is_empty())
            .count();
        assert_eq!(with_interfaces, 1);
    }
}
