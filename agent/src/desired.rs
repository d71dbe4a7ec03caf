//! The desired state: every resource the controller asked for, validated,
//! with the configuration it came in (persisted and dumped as received).
//!
//! Tables keep a journal of what a goal-state message changed, so that the
//! engine can persist exactly those entries, or undo them when the kernel or
//! the disk refuses.

use std::collections::{HashMap, hash_map};

/// The tables' hasher: ids are hashed for every resource of every message
/// (a million neighbors are a million lookups), where SipHash showed up as
/// the agent's top cost. foldhash is several times faster and still seeded
/// per process.
type Hasher = foldhash::fast::RandomState;

use alcor_proto::schema::{self, OperationType, ResourceType};
use prost::Message;

use crate::model::{DhcpEntry, Gateway, Neighbor, Port, Router, SecurityGroup, Subnet, Vpc};
use crate::store::{Record, StoreWrite};

/// A resource kind of the goal state: its configuration message, and where
/// its table is.
pub trait Resource: Clone + Send + Sync + 'static {
    const KIND: ResourceType;
    type Config: prost::Message + Default + Clone + PartialEq + std::fmt::Debug + 'static;

    fn config_id(config: &Self::Config) -> &str;
    fn config_revision(config: &Self::Config) -> u32;
    fn table(state: &DesiredState) -> &Table<Self>;
    fn table_mut(state: &mut DesiredState) -> &mut Table<Self>;
}

macro_rules! resource {
    ($model:ty, $kind:ident, $config:ty, $field:ident) => {
        impl Resource for $model {
            const KIND: ResourceType = ResourceType::$kind;
            type Config = $config;

            fn config_id(config: &Self::Config) -> &str {
                &config.id
            }
            fn config_revision(config: &Self::Config) -> u32 {
                config.revision_number
            }
            fn table(state: &DesiredState) -> &Table<Self> {
                &state.$field
            }
            fn table_mut(state: &mut DesiredState) -> &mut Table<Self> {
                &mut state.$field
            }
        }
    };
}

resource!(Vpc, Vpc, schema::VpcConfiguration, vpcs);
resource!(Subnet, Subnet, schema::SubnetConfiguration, subnets);
resource!(Port, Port, schema::PortConfiguration, ports);
resource!(Neighbor, Neighbor, schema::NeighborConfiguration, neighbors);
resource!(
    SecurityGroup,
    Securitygroup,
    schema::SecurityGroupConfiguration,
    security_groups
);
resource!(DhcpEntry, Dhcp, schema::DhcpConfiguration, dhcp);
resource!(Router, Router, schema::RouterConfiguration, routers);
resource!(Gateway, Gateway, schema::GatewayConfiguration, gateways);

/// A desired resource: the validated model, and the operation and
/// configuration it came in (its meaning can depend on the operation: an
/// UPDATE without device id and owner unbinds a port).
///
/// The configuration is kept encoded, as it is persisted: it is read only
/// to dump or persist it, and a decoded one costs a dozen allocations per
/// resource (a million neighbors took gigabytes).
#[derive(Clone, Debug)]
pub struct Entry<R: Resource> {
    pub spec: R,
    pub operation: OperationType,
    revision: u32,
    config: Box<[u8]>,
}

impl<R: Resource> Entry<R> {
    pub fn new(spec: R, operation: OperationType, config: &R::Config) -> Self {
        Entry {
            spec,
            operation,
            revision: R::config_revision(config),
            config: config.encode_to_vec().into_boxed_slice(),
        }
    }

    /// An entry from a configuration as the store holds it (encoded).
    pub fn from_stored(
        spec: R,
        operation: OperationType,
        config: &R::Config,
        encoded: Vec<u8>,
    ) -> Self {
        Entry {
            spec,
            operation,
            revision: R::config_revision(config),
            config: encoded.into_boxed_slice(),
        }
    }

    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// The configuration as it was received.
    pub fn config(&self) -> R::Config {
        // Encoded by `new`, or read from the store after decoding there:
        // it decodes.
        R::Config::decode(&*self.config).unwrap_or_default()
    }

    /// The configuration, encoded.
    pub fn encoded_config(&self) -> &[u8] {
        &self.config
    }
}

#[derive(Debug)]
pub struct Table<R: Resource> {
    entries: HashMap<String, Entry<R>, Hasher>,
    /// Entries changed since the last `commit`, with their previous value.
    journal: Vec<(String, Option<Entry<R>>)>,
}

impl<R: Resource> Default for Table<R> {
    fn default() -> Self {
        Table {
            entries: HashMap::default(),
            journal: Vec::new(),
        }
    }
}

impl<R: Resource> Table<R> {
    pub fn get(&self, id: &str) -> Option<&Entry<R>> {
        self.entries.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> hash_map::Iter<'_, String, Entry<R>> {
        self.entries.iter()
    }

    pub fn specs(&self) -> impl Iterator<Item = &R> {
        self.entries.values().map(|entry| &entry.spec)
    }

    pub fn upsert(&mut self, id: String, entry: Entry<R>) {
        let previous = self.entries.insert(id.clone(), entry);
        self.journal.push((id, previous));
    }

    pub fn remove(&mut self, id: &str) {
        if let Some(previous) = self.entries.remove(id) {
            self.journal.push((id.to_string(), Some(previous)));
        }
    }

    /// The ids the transaction changed, each once.
    pub fn changed_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.journal.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Ends the transaction, keeping its changes.
    pub fn commit(&mut self) {
        self.journal.clear();
    }

    /// Undoes every change of the transaction to `id`.
    pub fn rollback_id(&mut self, id: &str) {
        // The oldest journal entry for `id` holds its value before the transaction.
        let Some(first) = self.journal.iter().position(|(changed, _)| changed == id) else {
            return;
        };
        let (_, original) = self.journal.remove(first);
        self.journal.retain(|(changed, _)| changed != id);
        match original {
            Some(entry) => self.entries.insert(id.to_string(), entry),
            None => self.entries.remove(id),
        };
    }

    /// Undoes the whole transaction.
    pub fn rollback(&mut self) {
        while let Some((id, previous)) = self.journal.pop() {
            match previous {
                Some(entry) => self.entries.insert(id, entry),
                None => self.entries.remove(&id),
            };
        }
    }
}

/// Everything the controller asked this host for.
#[derive(Debug, Default)]
pub struct DesiredState {
    pub vpcs: Table<Vpc>,
    pub subnets: Table<Subnet>,
    pub ports: Table<Port>,
    pub neighbors: Table<Neighbor>,
    pub security_groups: Table<SecurityGroup>,
    pub dhcp: Table<DhcpEntry>,
    pub routers: Table<Router>,
    pub gateways: Table<Gateway>,
}

/// Calls `$body` with `$table` bound to each table of `$state`.
macro_rules! for_each_table {
    ($state:expr, |$table:ident| $body:expr) => {{
        {
            let $table = &mut $state.vpcs;
            $body;
        }
        {
            let $table = &mut $state.subnets;
            $body;
        }
        {
            let $table = &mut $state.ports;
            $body;
        }
        {
            let $table = &mut $state.neighbors;
            $body;
        }
        {
            let $table = &mut $state.security_groups;
            $body;
        }
        {
            let $table = &mut $state.dhcp;
            $body;
        }
        {
            let $table = &mut $state.routers;
            $body;
        }
        {
            let $table = &mut $state.gateways;
            $body;
        }
    }};
}

impl DesiredState {
    /// What the current transaction changed, as writes for the store.
    pub fn pending_writes(&mut self) -> Vec<StoreWrite> {
        let mut writes = Vec::new();
        for_each_table!(self, |table| table.pending_writes(&mut writes));
        writes
    }

    pub fn commit(&mut self) {
        for_each_table!(self, |table| table.commit());
    }

    pub fn rollback(&mut self) {
        for_each_table!(self, |table| table.rollback());
    }
}

impl<R: Resource> Table<R> {
    fn pending_writes(&self, writes: &mut Vec<StoreWrite>) {
        for id in self.changed_ids() {
            writes.push(StoreWrite {
                kind: R::KIND as i32,
                id: id.to_string(),
                record: self.get(id).map(|entry| Record {
                    operation: entry.operation as i32,
                    config: entry.encoded_config().to_vec(),
                }),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Vni, Vpc};

    fn vpc(id: &str, revision: u32) -> Entry<Vpc> {
        let spec = Vpc {
            id: id.into(),
            name: String::new(),
            project_id: String::new(),
            cidr: None,
            vni: Vni::try_from(7).unwrap(),
        };
        let config = schema::VpcConfiguration {
            id: id.into(),
            revision_number: revision,
            ..Default::default()
        };
        Entry::new(spec, OperationType::Create, &config)
    }

    #[test]
    fn rollback_of_one_id_restores_its_value_before_the_transaction() {
        let mut table = Table::default();
        table.upsert("a".into(), vpc("a", 1));
        table.commit();

        table.upsert("a".into(), vpc("a", 2));
        table.upsert("a".into(), vpc("a", 3));
        table.upsert("b".into(), vpc("b", 1));
        table.rollback_id("a");
        assert_eq!(table.get("a").unwrap().revision(), 1);
        assert_eq!(table.changed_ids(), vec!["b"]);
    }

    #[test]
    fn rollback_undoes_creates_and_deletes() {
        let mut table = Table::default();
        table.upsert("a".into(), vpc("a", 1));
        table.commit();

        table.remove("a");
        table.upsert("b".into(), vpc("b", 1));
        table.rollback();
        assert!(table.contains("a"));
        assert!(!table.contains("b"));
        assert!(table.changed_ids().is_empty());
    }
}
