//! Networks: a VNI each, allocated from the policy's range.

use std::collections::HashSet;

use alcor_types::Vni;

use super::{Controller, Try, check_revision, encode, resource_key, retrying};
use crate::{
    error::{ApiError, ApiResult},
    model::{
        Meta, Network, Resource, Subnet,
        network::{NetworkCreate, NetworkUpdate},
    },
    store::Txn,
};

pub fn vni_key(vni: Vni) -> String {
    format!("/alcor/vni/{vni}")
}

/// The network's ports (`network-port/{network}/`).
pub fn ports_prefix(network_id: &str) -> String {
    format!("/alcor/network-port/{network_id}/")
}

impl Controller {
    fn check_mtu(&self, mtu: u32) -> ApiResult<()> {
        if mtu > self.policy.mtu {
            return Err(ApiError::invalid_input(format!(
                "MTU {mtu} is more than the {} the underlay allows",
                self.policy.mtu
            )));
        }
        Ok(())
    }

    /// A VNI of the range no network has, at random; `None` if all are
    /// taken.
    async fn free_vni(&self) -> ApiResult<Option<Vni>> {
        let used: HashSet<String> = self
            .store
            .list("/alcor/vni/")
            .await?
            .into_iter()
            .map(|entry| entry.key)
            .collect();
        let range = self.policy.vni_range.clone();
        let size = u64::from(range.end() - range.start()) + 1;
        if used.len() as u64 >= size {
            return Ok(None);
        }
        // Random probes first (the range is large, networks few), then the
        // first free in order.
        let candidates = (0..16)
            .map(|_| rand::random_range(range.clone()))
            .chain(range.clone());
        Ok(candidates
            .filter_map(|n| Vni::try_from(u64::from(n)).ok())
            .find(|vni| !used.contains(&vni_key(*vni))))
    }

    pub async fn create_network(&self, create: NetworkCreate) -> ApiResult<Network> {
        let mtu = create.mtu.unwrap_or(self.policy.mtu);
        self.check_mtu(mtu)?;
        // An admin may ask for any VNI, in the range or not (a provider
        // network); the range is for those allocated.
        let project = create
            .project_id
            .clone()
            .unwrap_or_else(|| self.policy.default_project.clone());
        let create = &create;
        let project = &project;
        retrying(|| Box::pin(async move {
            let vni = match create.vni {
                Some(vni) => vni,
                None => self.free_vni().await?.ok_or_else(|| {
                    ApiError::new(
                        503,
                        "NoNetworkAvailable",
                        "Unable to create the network. No tenant network is available for allocation.",
                    )
                })?,
            };
            let network = Network {
                meta: Meta::new(create.name.clone(), create.description.clone(), project.clone()),
                admin_state_up: create.admin_state_up,
                shared: create.shared,
                external: create.external,
                mtu,
                vni,
                port_security_enabled: create.port_security_enabled,
                subnets: Vec::new(),
                deleting: false,
            };
            let key = resource_key(Network::KIND, &network.meta.id);
            let mut txn = Txn::default();
            txn.require_absent(vni_key(vni))
                .require_absent(&key)
                .put(key, encode(&network))
                .put(vni_key(vni), network.meta.id.clone().into_bytes());
            match self.commit(txn).await? {
                Try::Done(()) => Ok(Try::Done(network)),
                Try::Again if create.vni.is_some() => Err(ApiError::conflict(
                    "TunnelIdInUse",
                    format!("Unable to create the network. The tunnel ID {vni} is in use."),
                )),
                Try::Again => Ok(Try::Again),
            }
        }))
        .await
    }

    pub async fn update_network(
        &self,
        id: &str,
        update: NetworkUpdate,
        if_match: Option<u64>,
    ) -> ApiResult<Network> {
        if let Some(mtu) = update.mtu {
            self.check_mtu(mtu)?;
        }
        let update = &update;
        retrying(|| {
            Box::pin(async move {
                let (mut network, entry) = self.load::<Network>(id).await?;
                if network.deleting {
                    return Err(ApiError::not_found(Network::KIND, id));
                }
                check_revision(&network.meta, if_match)?;
                if !update.apply(&mut network) {
                    return Ok(Try::Done(network));
                }
                network.meta.touch();
                let mut txn = Txn::default();
                txn.require_unchanged(&entry)
                    .put(entry.key.clone(), encode(&network));
                Ok(match self.commit(txn).await? {
                    Try::Done(()) => Try::Done(network),
                    Try::Again => Try::Again,
                })
            })
        })
        .await
    }

    /// Deletes a network without ports, and its subnets.
    pub async fn delete_network(&self, id: &str, if_match: Option<u64>) -> ApiResult<()> {
        let in_use = ApiError::conflict(
            "NetworkInUse",
            format!(
                "Unable to complete operation on network {id}. There are one or more ports still \
                 in use on the network."
            ),
        );
        let flag: fn(&mut Network) -> &mut bool = |network| &mut network.deleting;
        self.mark_unused(id, if_match, flag, &ports_prefix(id), in_use)
            .await?;
        retrying(|| {
            Box::pin(async move {
                let (network, entry) = self.load::<Network>(id).await?;
                let mut txn = Txn::default();
                txn.require_unchanged(&entry)
                    .delete(entry.key.clone())
                    .delete(vni_key(network.vni));
                for subnet_id in &network.subnets {
                    if let Some((_, subnet)) = self.find::<Subnet>(subnet_id).await? {
                        txn.require_unchanged(&subnet).delete(subnet.key.clone());
                    }
                }
                self.commit(txn).await
            })
        })
        .await
    }

    /// Networks as the API lists them (not those being deleted).
    pub async fn networks(&self) -> ApiResult<Vec<Network>> {
        let mut networks = self.list::<Network>().await?;
        networks.retain(|network| !network.deleting);
        Ok(networks)
    }

    /// The number of networks, for tests of what the store holds.
    #[cfg(test)]
    pub async fn network_count(&self) -> usize {
        self.store
            .list(&super::resource_prefix(Network::KIND))
            .await
            .unwrap()
            .len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{body::resource, service::testing::*};

    fn create(body: serde_json::Value) -> NetworkCreate {
        NetworkCreate::parse(resource(&json!({ "network": body }), "network").unwrap()).unwrap()
    }

    #[tokio::test]
    async fn networks_get_distinct_vnis_and_a_taken_one_is_refused() {
        let (_dir, controller) = controller();
        let a = controller
            .create_network(create(json!({"name": "a"})))
            .await
            .unwrap();
        let b = controller
            .create_network(create(json!({"name": "b"})))
            .await
            .unwrap();
        assert_ne!(a.vni, b.vni);
        assert_eq!(a.mtu, 1450);
        let before = snapshot(&controller).await;
        let error = controller
            .create_network(create(json!({"provider:segmentation_id": a.vni.get()})))
            .await
            .unwrap_err();
        assert_eq!((error.status, error.kind), (409, "TunnelIdInUse"));
        let error = controller
            .create_network(create(json!({"mtu": 9000})))
            .await
            .unwrap_err();
        assert_eq!(error.status, 400);
        assert_eq!(
            snapshot(&controller).await,
            before,
            "refused: nothing written"
        );
    }

    #[tokio::test]
    async fn updates_honour_if_match_and_deletes_free_the_vni() {
        let (_dir, controller) = controller();
        let network = controller
            .create_network(create(json!({"name": "a"})))
            .await
            .unwrap();
        let id = network.meta.id.clone();
        let update = |body| {
            NetworkUpdate::parse(resource(&json!({ "network": body }), "network").unwrap()).unwrap()
        };
        let stale = controller
            .update_network(&id, update(json!({"name": "b"})), Some(7))
            .await
            .unwrap_err();
        assert_eq!(stale.status, 412);
        let renamed = controller
            .update_network(&id, update(json!({"name": "b"})), Some(1))
            .await
            .unwrap();
        assert_eq!(
            (renamed.meta.name.as_str(), renamed.meta.revision_number),
            ("b", 2)
        );
        controller.delete_network(&id, None).await.unwrap();
        assert_eq!(controller.network_count().await, 0);
        assert!(
            controller
                .store
                .list("/alcor/vni/")
                .await
                .unwrap()
                .is_empty()
        );
        let again = controller.delete_network(&id, None).await.unwrap_err();
        assert_eq!(again.status, 404);
    }
}
