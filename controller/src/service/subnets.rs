//! Subnets: joined to their network's record, never overlapping another
//! of the network, deleted only when no port has one of their addresses.

use std::net::Ipv4Addr;

use super::{Controller, Try, check_revision, encode, resource_key, retrying};
use crate::{
    error::{ApiError, ApiResult},
    model::{
        Meta, Network, Resource, Subnet,
        subnet::{Pool, SubnetCreate, SubnetUpdate},
    },
    store::Txn,
};

pub fn ip_key(subnet_id: &str, ip: Ipv4Addr) -> String {
    format!("/alcor/ip/{subnet_id}/{ip}")
}

/// The addresses given out in a subnet (`ip/{subnet}/`).
pub fn ips_prefix(subnet_id: &str) -> String {
    format!("/alcor/ip/{subnet_id}/")
}

impl Controller {
    /// The network, unless it is missing or being deleted (404 either way).
    pub(super) async fn live_network(&self, id: &str) -> ApiResult<(Network, crate::store::Entry)> {
        match self.find::<Network>(id).await? {
            Some((network, entry)) if !network.deleting => Ok((network, entry)),
            _ => Err(ApiError::not_found(Network::KIND, id)),
        }
    }

    pub async fn create_subnet(&self, create: SubnetCreate) -> ApiResult<Subnet> {
        let create = &create;
        retrying(|| {
            Box::pin(async move {
                let (mut network, network_entry) = self.live_network(&create.network_id).await?;
                let project = create
                    .project_id
                    .clone()
                    .unwrap_or_else(|| network.meta.project_id.clone());
                let meta = Meta::new(create.name.clone(), create.description.clone(), project);
                let subnet = create.clone().subnet(meta)?;
                for other in &network.subnets {
                    let (other, _) = self.load::<Subnet>(other).await?;
                    let overlaps = other.cidr.contains(&subnet.cidr.network())
                        || subnet.cidr.contains(&other.cidr.network());
                    if overlaps {
                        return Err(ApiError::invalid_input(format!(
                            "Requested subnet with cidr: {} for network: {} overlaps with another \
                         subnet",
                            subnet.cidr, network.meta.id
                        )));
                    }
                }
                network.subnets.push(subnet.meta.id.clone());
                network.meta.touch();
                let key = resource_key(Subnet::KIND, &subnet.meta.id);
                let mut txn = Txn::default();
                txn.require_unchanged(&network_entry)
                    .require_absent(&key)
                    .put(key, encode(&subnet))
                    .put(network_entry.key.clone(), encode(&network));
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(subnet),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    pub async fn update_subnet(
        &self,
        id: &str,
        update: SubnetUpdate,
        if_match: Option<u64>,
    ) -> ApiResult<Subnet> {
        let update = &update;
        retrying(|| {
            Box::pin(async move {
                let (mut subnet, entry) = self.load::<Subnet>(id).await?;
                if subnet.deleting {
                    return Err(ApiError::not_found(Subnet::KIND, id));
                }
                check_revision(&subnet.meta, if_match)?;
                let gateway = subnet.gateway_ip;
                if !update.apply(&mut subnet)? {
                    return Ok(Try::Done(subnet));
                }
                subnet.meta.touch();
                let mut txn = Txn::default();
                txn.require_unchanged(&entry);
                if let Some(new) = subnet.gateway_ip.filter(|new| Some(*new) != gateway) {
                    // The gateway must not be a port's address, now or by the commit.
                    if self.store.get(&ip_key(id, new)).await?.is_some() {
                        return Err(ApiError::conflict(
                            "GatewayIpInUse",
                            format!("Gateway ip {new} is in use by a port of subnet {id}"),
                        ));
                    }
                    txn.require_absent(ip_key(id, new));
                }
                if let Some(old) = gateway.filter(|old| subnet.gateway_ip != Some(*old)) {
                    // A router's interface has the gateway address: it
                    // stays the gateway while it does (Neutron's check),
                    // and no interface may take it before the commit.
                    if let Some(holder) = self.store.get(&ip_key(id, old)).await? {
                        return Err(ApiError::conflict(
                            "GatewayIpInUse",
                            format!(
                                "Current gateway ip {old} already in use by port {}. Unable to \
                                 update.",
                                String::from_utf8_lossy(&holder.value)
                            ),
                        ));
                    }
                    txn.require_absent(ip_key(id, old));
                }
                txn.put(entry.key.clone(), encode(&subnet));
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(subnet),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    /// Deletes a subnet none of whose addresses a port has.
    pub async fn delete_subnet(&self, id: &str, if_match: Option<u64>) -> ApiResult<()> {
        let in_use = ApiError::conflict(
            "SubnetInUse",
            format!(
                "Unable to complete operation on subnet {id}: One or more ports have an IP \
                 allocation from this subnet."
            ),
        );
        let flag: fn(&mut Subnet) -> &mut bool = |subnet| &mut subnet.deleting;
        self.mark_unused(id, if_match, flag, &ips_prefix(id), in_use)
            .await?;
        retrying(|| {
            Box::pin(async move {
                let (subnet, entry) = self.load::<Subnet>(id).await?;
                let mut txn = Txn::default();
                txn.require_unchanged(&entry).delete(entry.key.clone());
                if let Some((mut network, network_entry)) =
                    self.find::<Network>(&subnet.network_id).await?
                {
                    network.subnets.retain(|other| other != id);
                    network.meta.touch();
                    txn.require_unchanged(&network_entry)
                        .put(network_entry.key.clone(), encode(&network));
                }
                let done = self.commit(txn).await?;
                if matches!(done, Try::Done(())) {
                    self.forget_book(id);
                }
                Ok(done)
            })
        })
        .await
    }

    /// How many of the subnet's pool addresses are given out (to ports,
    /// router interfaces, floating IPs) and how many there are: Neutron's
    /// network IP availability, counted from the store.
    pub async fn ip_availability(&self, subnet: &Subnet) -> ApiResult<(u64, u64)> {
        let total = subnet.allocation_pools.iter().map(Pool::size).sum();
        let used = self.store.list(&ips_prefix(&subnet.meta.id)).await?.len() as u64;
        Ok((used, total))
    }

    /// Subnets as the API lists them (not those being deleted).
    pub async fn subnets(&self) -> ApiResult<Vec<Subnet>> {
        let mut subnets = self.list::<Subnet>().await?;
        subnets.retain(|subnet| !subnet.deleting);
        Ok(subnets)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{body::resource, model::network::NetworkCreate, service::testing::*};

    async fn network(controller: &Controller) -> Network {
        let create =
            NetworkCreate::parse(resource(&json!({"network": {"name": "n"}}), "network").unwrap())
                .unwrap();
        controller.create_network(create).await.unwrap()
    }

    fn create(network: &Network, cidr: &str) -> SubnetCreate {
        SubnetCreate::parse(
            resource(
                &json!({"subnet": {"network_id": network.meta.id, "cidr": cidr}}),
                "subnet",
            )
            .unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn subnets_join_their_network_and_never_overlap() {
        let (_dir, controller) = controller();
        let network = network(&controller).await;
        let subnet = controller
            .create_subnet(create(&network, "10.0.0.0/24"))
            .await
            .unwrap();
        let joined = controller.show::<Network>(&network.meta.id).await.unwrap();
        assert_eq!(joined.subnets, std::slice::from_ref(&subnet.meta.id));
        assert_eq!(subnet.meta.project_id, network.meta.project_id);
        let before = snapshot(&controller).await;
        for cidr in ["10.0.0.128/25", "10.0.0.0/16"] {
            let error = controller
                .create_subnet(create(&network, cidr))
                .await
                .unwrap_err();
            assert_eq!(error.status, 400, "{cidr}: {error}");
            assert!(error.message.contains("overlaps"), "{error}");
        }
        assert_eq!(snapshot(&controller).await, before);
        controller
            .create_subnet(create(&network, "10.0.1.0/24"))
            .await
            .unwrap();

        let mut missing = create(&network, "10.9.0.0/24");
        missing.network_id = "nope".into();
        assert_eq!(
            controller.create_subnet(missing).await.unwrap_err().status,
            404
        );

        controller
            .delete_subnet(&subnet.meta.id, None)
            .await
            .unwrap();
        let left = controller.show::<Network>(&network.meta.id).await.unwrap();
        assert_eq!(left.subnets.len(), 1);
    }
}
