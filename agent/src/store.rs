//! Durable desired state: every accepted configuration, as the protobuf bytes
//! it arrived in with its operation, keyed by resource kind and id. One redb
//! transaction per goal-state message, committed before the reply is sent,
//! so what a controller was told is applied survives a crash.
//!
//! A second table holds DHCP leases, written in batches by the responder's
//! flusher (`dhcp::leases`), which owns their encoding.

use std::path::{Path, PathBuf};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// (resource kind as its wire enum value, id) → encoded [`Record`].
const RESOURCES: TableDefinition<(i32, &str), &[u8]> = TableDefinition::new("resources");
/// (VPC id, client MAC) → an encoded lease.
const LEASES: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("leases");

/// A stored resource: its operation and configuration as received.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// The wire value of `OperationType`.
    #[prost(int32, tag = "1")]
    pub operation: i32,
    /// The encoded configuration message.
    #[prost(bytes = "vec", tag = "2")]
    pub config: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {source}")]
pub struct StoreError {
    path: PathBuf,
    #[source]
    source: redb::Error,
}

/// One resource to write, or to delete (`None`).
#[derive(Debug)]
pub struct StoreWrite {
    pub kind: i32,
    pub id: String,
    pub record: Option<Record>,
}

/// One lease to write, or to delete (`None`).
#[derive(Debug)]
pub struct LeaseWrite {
    pub vpc_id: String,
    pub mac: [u8; 6],
    pub record: Option<Vec<u8>>,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

pub struct Stored {
    pub kind: i32,
    pub id: String,
    pub record: Record,
}

/// redb's page cache.
const STORE_CACHE_BYTES: usize = 64 << 20;

impl Store {
    pub const FILE_NAME: &'static str = "desired-state.redb";

    /// Opens (or creates) the store in `state_dir`, which must exist.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(Self::FILE_NAME);
        let fail = |source: redb::Error| StoreError {
            path: path.clone(),
            source,
        };
        // redb caches up to 1 GiB by default; the agent reads the store only
        // at start, so a small cache costs nothing and keeps its memory to
        // what it holds (a million neighbors stay well under a gigabyte).
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| fail(e.into()))?;
        // Create the tables so a fresh store reads as empty.
        let txn = db.begin_write().map_err(|e| fail(e.into()))?;
        txn.open_table(RESOURCES).map_err(|e| fail(e.into()))?;
        txn.open_table(LEASES).map_err(|e| fail(e.into()))?;
        txn.commit().map_err(|e| fail(e.into()))?;
        Ok(Store { db, path })
    }

    pub fn load(&self) -> Result<Vec<Stored>, StoreError> {
        self.read().map_err(|source| self.error(source))
    }

    fn read(&self) -> Result<Vec<Stored>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESOURCES)?;
        let mut configs = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            let (kind, id) = key.value();
            let record = Record::decode(value.value()).map_err(|e| {
                redb::Error::Corrupted(format!("resource {kind}/{id} does not decode: {e}"))
            })?;
            configs.push(Stored {
                kind,
                id: id.to_string(),
                record,
            });
        }
        Ok(configs)
    }

    /// Applies `ops` atomically and durably.
    pub fn commit(&self, writes: &[StoreWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write(writes).map_err(|source| self.error(source))
    }

    fn write(&self, writes: &[StoreWrite]) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RESOURCES)?;
            for write in writes {
                let key = (write.kind, write.id.as_str());
                match &write.record {
                    Some(record) => {
                        table.insert(key, record.encode_to_vec().as_slice())?;
                    }
                    None => {
                        table.remove(key)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every stored lease, encoded.
    pub fn load_leases(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read_leases().map_err(|source| self.error(source))
    }

    fn read_leases(&self) -> Result<Vec<Vec<u8>>, redb::Error> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LEASES)?;
        let mut leases = Vec::new();
        for row in table.iter()? {
            let (_, value) = row?;
            leases.push(value.value().to_vec());
        }
        Ok(leases)
    }

    /// Applies a batch of lease changes atomically and durably.
    pub fn commit_leases(&self, writes: &[LeaseWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.write_leases(writes)
            .map_err(|source| self.error(source))
    }

    fn write_leases(&self, writes: &[LeaseWrite]) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(LEASES)?;
            for write in writes {
                let key = (write.vpc_id.as_str(), write.mac.as_slice());
                match &write.record {
                    Some(record) => {
                        table.insert(key, record.as_slice())?;
                    }
                    None => {
                        table.remove(key)?;
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn error(&self, source: redb::Error) -> StoreError {
        StoreError {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_ops_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let write = |id: &str, config: Option<Vec<u8>>| StoreWrite {
                kind: 2,
                id: id.into(),
                record: config.map(|config| Record {
                    operation: 2,
                    config,
                }),
            };
            store
                .commit(&[write("p1", Some(vec![1, 2])), write("p2", Some(vec![3]))])
                .unwrap();
            store.commit(&[write("p1", None)]).unwrap();
        }
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!((loaded[0].kind, loaded[0].id.as_str()), (2, "p2"));
        assert_eq!(
            loaded[0].record,
            Record {
                operation: 2,
                config: vec![3]
            }
        );
    }

    #[test]
    fn lease_batches_survive_reopening_beside_the_resources() {
        let dir = tempfile::tempdir().unwrap();
        let lease = |vpc: &str, last: u8, record: Option<&[u8]>| LeaseWrite {
            vpc_id: vpc.into(),
            mac: [2, 0, 0, 0, 0, last],
            record: record.map(<[u8]>::to_vec),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .commit_leases(&[
                    lease("vpc-a", 1, Some(b"a1")),
                    lease("vpc-b", 1, Some(b"b1")),
                    lease("vpc-a", 2, Some(b"a2")),
                ])
                .unwrap();
            store
                .commit_leases(&[lease("vpc-a", 2, None), lease("vpc-a", 1, Some(b"a1'"))])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let mut leases = store.load_leases().unwrap();
        leases.sort();
        assert_eq!(leases, vec![b"a1'".to_vec(), b"b1".to_vec()]);
        assert!(store.load().unwrap().is_empty());
    }
}
