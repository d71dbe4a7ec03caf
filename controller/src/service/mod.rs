//! What the API's requests do to the store: read, decide with the model
//! and the allocator, commit with compares on everything the decision
//! rests on, and start again from the reads when another writer got there
//! first. Nothing here is HTTP.
//!
//! Keys, all under `/alcor/`:
//! - `{kind}/{id}`: a resource (`network/…`, `subnet/…`, `port/…`);
//! - `vni/{vni}`: the network that has the VNI;
//! - `ip/{subnet}/{address}`: the port that has the address;
//! - `mac/{network}/{mac}`: the port of the network that has the MAC;
//! - `network-port/{network}/{port}`: the ports of a network;
//! - `sg-port/{group}/{port}`: the ports that use a security group;
//! - `sg-rule/{rule}`: the security group that has the rule;
//! - `default-security-group/{project}`: the project's default group;
//! - `port-fip/{port}`, `router-fip/{router}`: the floating IPs
//!   associated with a port, and reaching their port through a router
//!   (a list of ids, one key each, so that a compare covers them all).
//!
//! Deleting a network, subnet or security group marks it `deleting` first
//! (a commit that every writer joining it compares against), then checks
//! that nothing uses it, then deletes it: a port created meanwhile either
//! committed before the mark, and is seen, or fails its compare.

pub mod agents;
pub mod floating_ips;
pub mod networks;
pub mod owners;
pub mod ports;
pub mod routers;
pub mod security_groups;
pub mod subnets;

use std::{collections::HashMap, ops::RangeInclusive, sync::Arc};

use alcor_types::Mac;
use futures::future::BoxFuture;

use crate::{
    allocate::AddressBook,
    error::{ApiError, ApiResult},
    model::Resource,
    store::{Entry, Outcome, Store, Txn},
};

/// How many times a request starts again after losing a race before it
/// gives up (503): enough for heavy contention, bounded.
const ATTEMPTS: usize = 100;

/// Choices the operator makes for every resource.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The first three bytes of every allocated MAC.
    pub mac_prefix: [u8; 3],
    /// Where network VNIs come from.
    pub vni_range: RangeInclusive<u32>,
    /// The MTU of networks that do not ask for less: the underlay's minus
    /// VXLAN's 50 bytes.
    pub mtu: u32,
    /// The project of resources created without one.
    pub default_project: String,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            mac_prefix: [0xfa, 0x16, 0x3e],
            vni_range: 1..=16_777_215,
            mtu: 1450,
            default_project: "admin".into(),
        }
    }
}

/// The controller's state: the store, the policy, the address books.
pub struct Controller {
    store: Arc<dyn Store>,
    policy: Policy,
    /// By subnet id, with the subnet revision its pools are from.
    books: std::sync::Mutex<HashMap<String, (u64, AddressBook)>>,
    /// The revision of the last change committed here, for the
    /// southbound to follow.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The kind agents' registrations are kept under.
pub(crate) const AGENT: &str = "agent";

/// That the port uses the group.
pub fn group_port_key(group_id: &str, port_id: &str) -> String {
    format!("{}{port_id}", group_ports_prefix(group_id))
}

fn group_ports_prefix(group_id: &str) -> String {
    format!("/alcor/sg-port/{group_id}/")
}

pub fn resource_key(kind: &str, id: &str) -> String {
    format!("/alcor/{kind}/{id}")
}

pub fn resource_prefix(kind: &str) -> String {
    format!("/alcor/{kind}/")
}

fn encode<R: Resource>(resource: &R) -> Vec<u8> {
    // Plain data: serialising to a vector cannot fail.
    serde_json::to_vec(resource).unwrap_or_default()
}

fn decode<T: serde::de::DeserializeOwned>(entry: &Entry) -> ApiResult<T> {
    serde_json::from_slice(&entry.value).map_err(|e| {
        ApiError::new(
            500,
            "HTTPInternalServerError",
            format!("{} is damaged in the store: {e}", entry.key),
        )
    })
}

/// What one try of a request came to.
enum Try<T> {
    Done(T),
    /// Lost a race: read again and decide again.
    Again,
}

/// Runs `attempt` until it is done, at most [`ATTEMPTS`] times. (A
/// closure returning a boxed future rather than an async closure: the
/// futures of axum's handlers must be `Send`, which async closures that
/// borrow cannot yet promise.)
async fn retrying<'a, T>(
    mut attempt: impl FnMut() -> BoxFuture<'a, ApiResult<Try<T>>>,
) -> ApiResult<T> {
    for tried in 1..=ATTEMPTS {
        if let Try::Done(value) = attempt().await? {
            return Ok(value);
        }
        tracing::debug!(tried, "lost a race to another writer: reading again");
    }
    Err(ApiError::new(
        503,
        "ServiceUnavailable",
        "Too many concurrent changes to the same resources; try again.",
    ))
}

/// Refuses a change to a resource whose revision is not the one the
/// client's `If-Match` names.
fn check_revision(meta: &crate::model::Meta, if_match: Option<u64>) -> ApiResult<()> {
    match if_match {
        Some(expected) if expected != meta.revision_number => Err(ApiError::new(
            412,
            "RevisionNumberConstraintFailed",
            format!(
                "Constrained to {expected}, but current revision is {}",
                meta.revision_number
            ),
        )),
        _ => Ok(()),
    }
}

impl Controller {
    pub fn new(store: Arc<dyn Store>, policy: Policy) -> Controller {
        Controller {
            store,
            policy,
            books: std::sync::Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Follows the changes committed through this instance.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The resource and its entry, if it exists.
    async fn find<R: Resource>(&self, id: &str) -> ApiResult<Option<(R, Entry)>> {
        let Some(entry) = self.store.get(&resource_key(R::KIND, id)).await? else {
            return Ok(None);
        };
        Ok(Some((decode(&entry)?, entry)))
    }

    /// The resource and its entry; 404 if it does not exist.
    async fn load<R: Resource>(&self, id: &str) -> ApiResult<(R, Entry)> {
        self.find(id)
            .await?
            .ok_or_else(|| ApiError::not_found(R::KIND, id))
    }

    /// One resource, as stored.
    pub async fn show<R: Resource>(&self, id: &str) -> ApiResult<R> {
        Ok(self.load::<R>(id).await?.0)
    }

    /// Every resource of a kind, in id order.
    pub async fn list<R: Resource>(&self) -> ApiResult<Vec<R>> {
        self.store
            .list(&resource_prefix(R::KIND))
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// The first step of a delete: marks the resource `deleting` (`flag`
    /// says where the mark is), then checks that no key is left under
    /// `users` (those of what uses it); if one is, takes the mark off and
    /// fails with `in_use`.
    async fn mark_unused<R: Resource>(
        &self,
        id: &str,
        if_match: Option<u64>,
        flag: fn(&mut R) -> &mut bool,
        users: &str,
        in_use: ApiError,
    ) -> ApiResult<()> {
        self.mark(id, if_match, flag, true).await?;
        if self.store.list(users).await?.is_empty() {
            return Ok(());
        }
        self.mark(id, None, flag, false).await?;
        Err(in_use)
    }

    /// Sets or clears a resource's `deleting` mark.
    async fn mark<R: Resource>(
        &self,
        id: &str,
        if_match: Option<u64>,
        flag: fn(&mut R) -> &mut bool,
        deleting: bool,
    ) -> ApiResult<()> {
        retrying(|| {
            Box::pin(async move {
                let (mut resource, entry) = self.load::<R>(id).await?;
                check_revision(resource.meta(), if_match)?;
                if *flag(&mut resource) == deleting {
                    return Ok(Try::Done(()));
                }
                *flag(&mut resource) = deleting;
                let mut txn = Txn::default();
                txn.require_unchanged(&entry)
                    .put(entry.key.clone(), encode(&resource));
                self.commit(txn).await
            })
        })
        .await
    }

    /// Commits; `Again` if a compare failed.
    async fn commit(&self, txn: Txn) -> ApiResult<Try<()>> {
        Ok(match self.store.commit(txn).await? {
            Outcome::Committed { revision } => {
                self.changes.send_replace(revision);
                Try::Done(())
            }
            Outcome::Conflict => Try::Again,
        })
    }

    /// A MAC under the policy's prefix, at random: 16 million of them, so
    /// a collision in a network is rare and only costs a retry.
    fn random_mac(&self) -> Mac {
        let [a, b, c] = self.policy.mac_prefix;
        let [_, d, e, f] = rand::random::<u32>().to_be_bytes();
        Mac([a, b, c, d, e, f])
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;
    use crate::{
        body::resource,
        model::{
            Network, Router, Subnet, network::NetworkCreate, port::PortCreate, subnet::SubnetCreate,
        },
        store::embedded::Embedded,
    };

    /// A network (attributes `network`) with a subnet of `cidr`.
    pub async fn network_with_subnet(
        controller: &Controller,
        network: Value,
        cidr: &str,
    ) -> (Network, Subnet) {
        let create =
            NetworkCreate::parse(resource(&json!({ "network": network }), "network").unwrap())
                .unwrap();
        let network = controller.create_network(create).await.unwrap();
        let create = SubnetCreate::parse(
            resource(
                &json!({"subnet": {"network_id": network.meta.id, "cidr": cidr}}),
                "subnet",
            )
            .unwrap(),
        )
        .unwrap();
        let subnet = controller.create_subnet(create).await.unwrap();
        (controller.show(&network.meta.id).await.unwrap(), subnet)
    }

    /// The error a refused request gave, checked to be Neutron's `kind`
    /// with `status`.
    pub fn refused<T: std::fmt::Debug>(result: ApiResult<T>, status: u16, kind: &str) -> ApiError {
        let error = result.expect_err("refused");
        assert_eq!((error.status, error.kind), (status, kind), "{error}");
        error
    }

    /// A port create of these attributes.
    pub fn port(body: Value) -> PortCreate {
        PortCreate::parse(resource(&json!({ "port": body }), "port").unwrap()).unwrap()
    }

    /// A controller over a fresh embedded store (dropped with the dir).
    pub fn controller() -> (tempfile::TempDir, Controller) {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("store.redb")).unwrap();
        (dir, Controller::new(Arc::new(store), Policy::default()))
    }

    /// Everything in the store, keys and values, to check that a refused
    /// request left it as it was. (Not the revisions: a network that a
    /// delete marked, found in use and unmarked is as it was, but was
    /// written twice.)
    pub async fn snapshot(controller: &Controller) -> Vec<(String, Vec<u8>)> {
        let entries = controller.store.list("/").await.unwrap();
        entries
            .into_iter()
            .map(|entry| (entry.key, entry.value))
            .collect()
    }

    /// How many keys the store has under `prefix`.
    pub async fn keys(controller: &Controller, prefix: &str) -> usize {
        controller.store.list(prefix).await.unwrap().len()
    }

    /// Deletes every router and network (the test has taken away what
    /// holds them) and checks that the store has nothing left but
    /// security groups (a project's default group stays once made).
    pub async fn delete_all(controller: &Controller) {
        for router in controller.list::<Router>().await.unwrap() {
            controller
                .delete_router(&router.meta.id, None)
                .await
                .unwrap();
        }
        for network in controller.list::<Network>().await.unwrap() {
            controller
                .delete_network(&network.meta.id, None)
                .await
                .unwrap();
        }
        let groups = [
            "/alcor/security_group/",
            "/alcor/sg-rule/",
            "/alcor/default-security-group/",
        ];
        let left: Vec<String> = snapshot(controller)
            .await
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| !groups.iter().any(|prefix| key.starts_with(prefix)))
            .collect();
        assert!(left.is_empty(), "left: {left:?}");
    }
}
