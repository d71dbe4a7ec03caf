//! Controller instances sharing the agents, in the store. Keys:
//!
//! - `controller/{instance}`: a live instance, under its lease;
//! - `agent-owner/{host}`: the instance that serves the host's agent (its
//!   id), created only where there is none and under that instance's
//!   lease, so that it goes when the instance dies;
//! - `agent-resync/{host}`: rewritten when the host's agent asks for its
//!   whole state, at whichever instance it asked: the owner sees its
//!   revision move and sends the whole state again.
//!
//! Port statuses are written only by the owner: each write compares the
//! owner key unchanged since the claim ([`Controller::set_port_statuses`]),
//! so that an instance that lost a host, however late it learns it, cannot
//! overwrite what the new owner's agent says.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use super::{Controller, decode, resource_key, resource_prefix};
use crate::{
    error::ApiResult,
    goalstate::Inventory,
    model::{Network, Port, Resource, Router, Subnet},
    service::AGENT,
    store::{Changes, Entry, LeaseId, Outcome, Txn},
};

pub const INSTANCE: &str = "controller";
pub const OWNER: &str = "agent-owner";
pub const RESYNC: &str = "agent-resync";

/// What the southbound works from: the resources and who serves which
/// host, as of one store revision.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub revision: u64,
    pub inventory: Inventory,
    /// Host → its owner key (the value is the owner's id).
    pub owners: BTreeMap<String, Entry>,
    /// The live instances.
    pub instances: BTreeSet<String>,
    /// Host → the revision of its agent's last request for its whole state.
    pub resyncs: BTreeMap<String, u64>,
}

impl View {
    /// Host → the id of the instance that serves it.
    pub fn owner_ids(&self) -> BTreeMap<String, String> {
        self.owners
            .iter()
            .map(|(host, entry)| (host.clone(), owner_id(entry)))
            .collect()
    }
}

/// Whose an owner key says it is.
pub fn owner_id(entry: &Entry) -> String {
    String::from_utf8_lossy(&entry.value).into_owned()
}

impl Controller {
    pub async fn grant_lease(&self, ttl: Duration) -> ApiResult<LeaseId> {
        Ok(self.store.grant_lease(ttl).await?)
    }

    /// Renews the lease: false if it ended (its keys are gone).
    pub async fn keep_lease(&self, lease: LeaseId) -> ApiResult<bool> {
        Ok(self.store.keep_alive(lease).await?)
    }

    pub async fn revoke_lease(&self, lease: LeaseId) -> ApiResult<()> {
        Ok(self.store.revoke_lease(lease).await?)
    }

    /// Says that `instance` is live, for as long as `lease` is.
    pub async fn announce(&self, instance: &str, lease: LeaseId) -> ApiResult<()> {
        let since = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let value = serde_json::json!({"id": instance, "since": since});
        let mut txn = Txn::default();
        txn.put_with_lease(
            resource_key(INSTANCE, instance),
            value.to_string().into_bytes(),
            lease,
        );
        self.store.commit(txn).await?;
        Ok(())
    }

    /// Makes `instance` the owner of `host` if it has none: the owner key
    /// (the fence of the owner's writes) if it did.
    pub async fn claim_host(
        &self,
        host: &str,
        instance: &str,
        lease: LeaseId,
    ) -> ApiResult<Option<Entry>> {
        let key = resource_key(OWNER, host);
        let mut txn = Txn::default();
        txn.require_absent(&key)
            .put_with_lease(&key, instance.as_bytes().to_vec(), lease);
        Ok(match self.store.commit(txn).await? {
            Outcome::Committed { revision } => Some(Entry {
                key,
                value: instance.as_bytes().to_vec(),
                mod_revision: revision,
            }),
            Outcome::Conflict => None,
        })
    }

    /// Gives a host up, if `owner` is still its owner key: the revision
    /// that deleted it, if it did.
    pub async fn release_host(&self, owner: &Entry) -> ApiResult<Option<u64>> {
        let mut txn = Txn::default();
        txn.require_unchanged(owner).delete(owner.key.clone());
        Ok(match self.store.commit(txn).await? {
            Outcome::Committed { revision } => Some(revision),
            Outcome::Conflict => None,
        })
    }

    /// Every change to the store from now on (another instance's too).
    pub async fn watch_store(&self) -> ApiResult<Changes> {
        Ok(self.store.watch("/alcor/").await?)
    }

    /// Whether `owner` is still the host's owner key, as claimed.
    pub async fn still_owner(&self, owner: &Entry) -> ApiResult<bool> {
        Ok(self
            .store
            .get(&owner.key)
            .await?
            .is_some_and(|now| now.mod_revision == owner.mod_revision))
    }

    /// The agent of `host` asks for its whole state: its owner, whichever
    /// instance that is, sees the request's key move.
    pub async fn request_resync(&self, host: &str) -> ApiResult<()> {
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut txn = Txn::default();
        txn.put(resource_key(RESYNC, host), at.into_bytes());
        // Through `commit`: this instance's southbound hears of it at once.
        self.commit(txn).await?;
        Ok(())
    }

    /// The resources and who serves which host, as of one store revision
    /// (so that the same revision always means the same state).
    pub async fn view(&self) -> ApiResult<View> {
        let snapshot = self.store.snapshot("/alcor/").await?;
        let mut view = View {
            revision: snapshot.revision,
            ..View::default()
        };
        /// What a key under `/alcor/` holds, by its prefix.
        enum Record {
            Network,
            Subnet,
            Port,
            Router,
            Agent,
            Owner,
            Instance,
            Resync,
        }
        let prefixes = [
            (Network::KIND, Record::Network),
            (Subnet::KIND, Record::Subnet),
            (Port::KIND, Record::Port),
            (Router::KIND, Record::Router),
            (AGENT, Record::Agent),
            (OWNER, Record::Owner),
            (INSTANCE, Record::Instance),
            (RESYNC, Record::Resync),
        ]
        .map(|(kind, record)| (resource_prefix(kind), record));
        let inventory = &mut view.inventory;
        for entry in snapshot.entries {
            let Some((record, prefix_len)) = prefixes
                .iter()
                .find(|(prefix, _)| entry.key.starts_with(prefix.as_str()))
                .map(|(prefix, record)| (record, prefix.len()))
            else {
                continue;
            };
            // Only the agents' ownership records are kept by name: not a
            // string for every port of every round.
            let name = |entry: &Entry| entry.key[prefix_len..].to_string();
            match record {
                Record::Network => inventory.networks.push(decode(&entry)?),
                Record::Subnet => inventory.subnets.push(decode(&entry)?),
                Record::Port => inventory.ports.push(decode(&entry)?),
                Record::Router => inventory.routers.push(decode(&entry)?),
                Record::Agent => inventory.agents.push(decode(&entry)?),
                Record::Owner => {
                    view.owners.insert(name(&entry), entry);
                }
                Record::Instance => {
                    view.instances.insert(name(&entry));
                }
                Record::Resync => {
                    view.resyncs.insert(name(&entry), entry.mod_revision);
                }
            }
        }
        Ok(view)
    }

    /// The resources goal states are computed from, as of one store
    /// revision.
    pub async fn inventory(&self) -> ApiResult<(u64, Inventory)> {
        let view = self.view().await?;
        Ok((view.revision, view.inventory))
    }
}
