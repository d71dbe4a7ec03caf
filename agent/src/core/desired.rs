//! The desired state: every resource the controller asked for, validated,
//! with the configuration it came in (persisted and dumped as received).
//!
//! Tables keep a journal of what a goal-state message changed, so that the
//! engine can persist exactly those entries, or undo them when the kernel or
//! the disk refuses.

use std::collections::{HashMap, HashSet};

/// The tables' hasher: ids are hashed for every resource of every message
/// (a million neighbors are a million lookups), where SipHash showed up as
/// the agent's top cost. foldhash is several times faster and still seeded
/// per process.
type Hasher = foldhash::fast::RandomState;

use alcor_proto::schema::{self, OperationType, ResourceType};
use prost::Message;

use crate::core::model::{DhcpEntry, Gateway, Neighbor, Port, Router, SecurityGroup, Subnet, Vpc};

/// One resource for the store to write, borrowed from the desired state.
#[derive(Clone, Copy, Debug)]
pub struct StoreWrite<'a> {
    pub kind: i32,
    pub id: &'a str,
    /// The operation (wire value) and the encoded configuration, or `None`
    /// to delete.
    pub record: Option<(i32, &'a [u8])>,
}

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
    /// The table transaction that wrote it (see [`Table::upsert`]).
    written_in: u64,
}

impl<R: Resource> Entry<R> {
    /// An entry with its configuration, encoded (as received, or as the
    /// store holds it).
    pub fn new(spec: R, operation: OperationType, revision: u32, config: Box<[u8]>) -> Self {
        Entry {
            spec,
            operation,
            revision,
            config,
            written_in: 0,
        }
    }

    pub fn revision(&self) -> u32 {
        self.revision
    }

    /// The configuration as it was received.
    pub fn config(&self) -> R::Config {
        // Encoded from a decoded message, or read from the store after
        // decoding there: it decodes.
        R::Config::decode(&*self.config).unwrap_or_default()
    }

    /// The configuration, encoded.
    pub fn encoded_config(&self) -> &[u8] {
        &self.config
    }

    /// What the store keeps of it: its operation and configuration.
    fn store_record(&self) -> (i32, &[u8]) {
        (self.operation as i32, &self.config)
    }
}

/// Entries are boxed: a neighbor's is a couple of hundred bytes, and the
/// table of a million neighbors moved all of them each time it grew (an
/// eighth of the agent's time), and held twice their size in empty slots.
#[derive(Debug)]
pub struct Table<R: Resource> {
    entries: HashMap<String, Box<Entry<R>>, Hasher>,
    /// Entries changed since the last `commit`, each once, with its value
    /// before the transaction.
    journal: Vec<(String, Option<Box<Entry<R>>>)>,
    /// Ids removed by the transaction (and journaled): written again, they
    /// need no second journal entry.
    removed: HashSet<String, Hasher>,
    /// The transaction in progress; what it writes carries its number.
    transaction: u64,
}

impl<R: Resource> Default for Table<R> {
    fn default() -> Self {
        Table {
            entries: HashMap::default(),
            journal: Vec::new(),
            removed: HashSet::default(),
            transaction: 1,
        }
    }
}

impl<R: Resource> Table<R> {
    pub fn get(&self, id: &str) -> Option<&Entry<R>> {
        self.entries.get(id).map(Box::as_ref)
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

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry<R>)> {
        self.entries.iter().map(|(id, entry)| (id, entry.as_ref()))
    }

    pub fn specs(&self) -> impl Iterator<Item = &R> {
        self.entries.values().map(|entry| &entry.spec)
    }

    pub fn upsert(&mut self, id: String, mut entry: Entry<R>) {
        entry.written_in = self.transaction;
        let previous = self.entries.insert(id.clone(), Box::new(entry));
        let journaled = match &previous {
            Some(previous) => previous.written_in == self.transaction,
            None => !self.removed.is_empty() && self.removed.contains(&id),
        };
        if !journaled {
            self.journal.push((id, previous));
        }
    }

    pub fn remove(&mut self, id: &str) {
        let Some(previous) = self.entries.remove(id) else {
            return;
        };
        if previous.written_in != self.transaction {
            self.journal.push((id.to_string(), Some(previous)));
        }
        self.removed.insert(id.to_string());
    }

    /// The ids the transaction changed, each once.
    pub fn changed_ids(&self) -> impl Iterator<Item = &str> {
        self.journal.iter().map(|(id, _)| id.as_str())
    }

    /// How many ids the transaction changed.
    pub fn changed(&self) -> usize {
        self.journal.len()
    }

    /// What the transaction changed: for each id, its entry before and
    /// after (`None`: absent).
    pub fn changes(&self) -> impl Iterator<Item = (Option<&Entry<R>>, Option<&Entry<R>>)> {
        self.journal
            .iter()
            .map(|(id, before)| (before.as_deref(), self.get(id)))
    }

    /// Whether the transaction changed nothing.
    pub fn unchanged(&self) -> bool {
        self.journal.is_empty()
    }

    /// Ends the transaction, keeping its changes.
    pub fn commit(&mut self) {
        self.journal.clear();
        self.removed.clear();
        self.transaction += 1;
    }

    /// Undoes every change of the transaction to `id`.
    pub fn rollback_id(&mut self, id: &str) {
        let Some(position) = self.journal.iter().position(|(changed, _)| changed == id) else {
            return;
        };
        let (_, original) = self.journal.swap_remove(position);
        self.removed.remove(id);
        match original {
            Some(entry) => self.entries.insert(id.to_string(), entry),
            None => self.entries.remove(id),
        };
    }

    /// Undoes the whole transaction.
    pub fn rollback(&mut self) {
        for (id, original) in self.journal.drain(..) {
            match original {
                Some(entry) => self.entries.insert(id, entry),
                None => self.entries.remove(&id),
            };
        }
        self.removed.clear();
        self.transaction += 1;
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

/// Calls `$body` with `$table` bound to each table of `$state`, mutably, or
/// shared when the state is written `&$state`.
macro_rules! for_each_table {
    (@($($borrow:tt)+) $state:expr, |$table:ident| $body:expr) => {{
        {
            let $table = $($borrow)+ $state.vpcs;
            $body;
        }
        {
            let $table = $($borrow)+ $state.subnets;
            $body;
        }
        {
            let $table = $($borrow)+ $state.ports;
            $body;
        }
        {
            let $table = $($borrow)+ $state.neighbors;
            $body;
        }
        {
            let $table = $($borrow)+ $state.security_groups;
            $body;
        }
        {
            let $table = $($borrow)+ $state.dhcp;
            $body;
        }
        {
            let $table = $($borrow)+ $state.routers;
            $body;
        }
        {
            let $table = $($borrow)+ $state.gateways;
            $body;
        }
    }};
    (&$state:expr, |$table:ident| $body:expr) => {
        for_each_table!(@(&) $state, |$table| $body)
    };
    ($state:expr, |$table:ident| $body:expr) => {
        for_each_table!(@(&mut) $state, |$table| $body)
    };
}

impl DesiredState {
    /// What the current transaction changed, as writes for the store.
    pub fn pending_writes(&self) -> Vec<StoreWrite<'_>> {
        let mut writes = Vec::new();
        for_each_table!(&self, |table| table.pending_writes(&mut writes));
        writes
    }

    /// What undoes the current transaction's writes in the store: the
    /// values from before it (for when the store took them and the
    /// datapath did not).
    pub fn undo_writes(&self) -> Vec<StoreWrite<'_>> {
        let mut writes = Vec::new();
        for_each_table!(&self, |table| table.undo_writes(&mut writes));
        writes
    }

    /// Subnet id → the id of the router that has an interface in it.
    pub fn router_of_subnets(&self) -> HashMap<&str, &str> {
        self.routers
            .specs()
            .flat_map(|router| {
                router
                    .subnet_tables
                    .iter()
                    .map(move |table| (table.subnet_id.as_str(), router.id.as_str()))
            })
            .collect()
    }

    /// Whether the current transaction changed anything.
    pub fn has_pending_writes(&self) -> bool {
        let mut pending = false;
        for_each_table!(&self, |table| pending |= !table.unchanged());
        pending
    }

    pub fn commit(&mut self) {
        for_each_table!(self, |table| table.commit());
    }

    /// Whether the transaction changed neighbors and nothing else.
    pub fn only_neighbors_changed(&self) -> bool {
        let mut others = 0;
        for_each_table!(&self, |table| others += table.journal.len());
        let neighbors = self.neighbors.journal.len();
        neighbors > 0 && others == neighbors
    }

    pub fn rollback(&mut self) {
        for_each_table!(self, |table| table.rollback());
    }
}

impl<R: Resource> Table<R> {
    fn pending_writes<'a>(&'a self, writes: &mut Vec<StoreWrite<'a>>) {
        for id in self.changed_ids() {
            writes.push(StoreWrite {
                kind: R::KIND as i32,
                id,
                record: self.get(id).map(Entry::store_record),
            });
        }
    }

    fn undo_writes<'a>(&'a self, writes: &mut Vec<StoreWrite<'a>>) {
        for (id, before) in &self.journal {
            writes.push(StoreWrite {
                kind: R::KIND as i32,
                id,
                record: before.as_deref().map(Entry::store_record),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{Vni, Vpc};

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
        let encoded = config.encode_to_vec().into_boxed_slice();
        Entry::new(spec, OperationType::Create, revision, encoded)
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
        assert_eq!(table.changed_ids().collect::<Vec<_>>(), vec!["b"]);
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
        assert!(table.unchanged());
    }

    #[test]
    fn a_transaction_journals_each_id_once_with_its_value_before() {
        let mut table = Table::default();
        table.upsert("a".into(), vpc("a", 1));
        table.upsert("c".into(), vpc("c", 1));
        table.commit();

        table.upsert("a".into(), vpc("a", 2));
        table.upsert("a".into(), vpc("a", 3));
        table.remove("c");
        table.upsert("c".into(), vpc("c", 2));
        table.upsert("b".into(), vpc("b", 1));
        table.remove("b");
        let revisions = |entry: Option<&Entry<Vpc>>| entry.map(Entry::revision);
        let changes: Vec<_> = table
            .changes()
            .map(|(before, after)| (revisions(before), revisions(after)))
            .collect();
        assert_eq!(
            changes,
            vec![(Some(1), Some(3)), (Some(1), Some(2)), (None, None)]
        );
        table.rollback();
        assert_eq!(table.get("a").map(Entry::revision), Some(1));
        assert_eq!(table.get("c").map(Entry::revision), Some(1));
        assert!(!table.contains("b"));
    }

    #[test]
    fn undo_writes_give_the_values_from_before_the_transaction() {
        let mut state = DesiredState::default();
        state.vpcs.upsert("a".into(), vpc("a", 1));
        state.commit();
        let before = state.vpcs.get("a").unwrap().encoded_config().to_vec();

        state.vpcs.upsert("a".into(), vpc("a", 2));
        state.vpcs.upsert("b".into(), vpc("b", 1));
        let undo: Vec<_> = state
            .undo_writes()
            .into_iter()
            .map(|write| (write.id, write.record.map(|(_, config)| config.to_vec())))
            .collect();
        assert_eq!(undo, vec![("a", Some(before)), ("b", None)]);
    }
}
