//! The embedded store: one redb file, for one controller instance.
//!
//! Reads are redb read transactions (snapshots, beside the writer). Writes
//! go to one writer thread, which takes every transaction waiting and
//! applies them in one redb write transaction, in order, each checked
//! against what the ones before it wrote, then commits once (fsync) and
//! answers them all: concurrent requests share a disk flush instead of
//! queueing for one each. A transaction whose compare fails is skipped and
//! answered `Conflict`; the others of the batch still apply.

use std::{
    path::Path,
    sync::{Arc, mpsc},
    thread,
};

use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{Compare, Entry, Op, Outcome, Snapshot, Store, StoreError, Txn};

/// Key → (revision that last wrote it, value).
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// `revision` → the store's revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Most transactions one disk flush carries.
const BATCH: usize = 1024;

type Pending = (Txn, oneshot::Sender<Result<Outcome, StoreError>>);

pub struct Embedded {
    db: Arc<Database>,
    writer: mpsc::Sender<Pending>,
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

impl Embedded {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        // The tables exist from the start, so that readers never miss them.
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(KV).map_err(backend)?;
        txn.open_table(META).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let db = Arc::new(db);
        let (writer, pending) = mpsc::channel();
        let db_for_writer = db.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_batches(&db_for_writer, &pending))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Embedded { db, writer })
    }

    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read(&db))
                .await
                .map_err(backend)?
        })
    }
}

impl Store for Embedded {
    /// Read in place: a lookup in a B-tree whose pages are in memory takes
    /// microseconds, less than handing it to a blocking thread.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            let txn = self.db.begin_read().map_err(backend)?;
            let table = txn.open_table(KV).map_err(backend)?;
            let found = table.get(key).map_err(backend)?;
            Ok(found.map(|value| {
                let (mod_revision, value) = value.value();
                Entry {
                    key: key.to_string(),
                    value: value.to_vec(),
                    mod_revision,
                }
            }))
        })
    }

    fn snapshot<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Snapshot, StoreError>> {
        let prefix = prefix.to_string();
        self.read(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let revision = txn
                .open_table(META)
                .map_err(backend)?
                .get(REVISION)
                .map_err(backend)?
                .map_or(0, |revision| revision.value());
            let table = txn.open_table(KV).map_err(backend)?;
            let mut entries = Vec::new();
            for item in table.range(prefix.as_str()..).map_err(backend)? {
                let (key, value) = item.map_err(backend)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                let (mod_revision, value) = value.value();
                entries.push(Entry {
                    key: key.to_string(),
                    value: value.to_vec(),
                    mod_revision,
                });
            }
            Ok(Snapshot { revision, entries })
        })
    }

    fn commit(&self, txn: Txn) -> BoxFuture<'_, Result<Outcome, StoreError>> {
        let (answer, outcome) = oneshot::channel();
        let sent = self.writer.send((txn, answer));
        Box::pin(async move {
            sent.map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?;
            outcome
                .await
                .map_err(|_| StoreError::Unavailable("the store's writer stopped".into()))?
        })
    }
}

/// The writer thread: until every sender is gone, takes what waits and
/// writes it as one redb transaction.
fn write_batches(db: &Database, pending: &mpsc::Receiver<Pending>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter().take(BATCH - 1));
        match write_batch(db, batch.iter().map(|(txn, _)| txn)) {
            Ok(outcomes) => {
                for ((_, answer), outcome) in batch.into_iter().zip(outcomes) {
                    let _ = answer.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::error!(%error, "a store write failed");
                for (_, answer) in batch {
                    let _ = answer.send(Err(backend(&error)));
                }
            }
        }
    }
}

/// Applies the transactions in order in one redb transaction.
fn write_batch<'a>(
    db: &Database,
    txns: impl Iterator<Item = &'a Txn>,
) -> Result<Vec<Outcome>, StoreError> {
    let write = db.begin_write().map_err(backend)?;
    let mut outcomes = Vec::new();
    {
        let mut kv = write.open_table(KV).map_err(backend)?;
        let mut meta = write.open_table(META).map_err(backend)?;
        let mut revision = meta
            .get(REVISION)
            .map_err(backend)?
            .map_or(0, |value| value.value());
        for txn in txns {
            if !holds(&kv, &txn.compares)? {
                outcomes.push(Outcome::Conflict);
                continue;
            }
            revision += 1;
            for op in &txn.ops {
                match op {
                    Op::Put { key, value } => {
                        kv.insert(key.as_str(), (revision, value.as_slice()))
                            .map_err(backend)?;
                    }
                    Op::Delete { key } => {
                        kv.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
            outcomes.push(Outcome::Committed { revision });
        }
        meta.insert(REVISION, revision).map_err(backend)?;
    }
    write.commit().map_err(backend)?;
    Ok(outcomes)
}

fn holds(
    kv: &impl ReadableTable<&'static str, (u64, &'static [u8])>,
    compares: &[Compare],
) -> Result<bool, StoreError> {
    for compare in compares {
        let holds = match compare {
            Compare::Absent(key) => kv.get(key.as_str()).map_err(backend)?.is_none(),
            Compare::Unchanged { key, mod_revision } => kv
                .get(key.as_str())
                .map_err(backend)?
                .is_some_and(|value| value.value().0 == *mod_revision),
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite;

    fn open() -> (tempfile::TempDir, Embedded) {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("store.redb")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn puts_and_gets() {
        let (_dir, store) = open();
        suite::puts_and_gets(&store).await;
    }

    #[tokio::test]
    async fn compares_decide_all_or_nothing() {
        let (_dir, store) = open();
        suite::compares_decide_all_or_nothing(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_creates_have_one_winner() {
        let (_dir, store) = open();
        suite::racing_creates_have_one_winner(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn what_was_committed_is_there_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let revision = {
            let store = Embedded::open(&path).unwrap();
            let mut txn = Txn::default();
            txn.put("/kept", b"yes".to_vec());
            let Outcome::Committed { revision } = store.commit(txn).await.unwrap() else {
                panic!("conflict");
            };
            revision
        };
        // The writer thread lets the file go once its sender is dropped.
        let store = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match Embedded::open(&path) {
                    Ok(store) => return store,
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .expect("the store reopens");
        let kept = store.get("/kept").await.unwrap().unwrap();
        assert_eq!(kept.mod_revision, revision);
        let mut txn = Txn::default();
        txn.put("/next", vec![]);
        assert_eq!(
            store.commit(txn).await.unwrap(),
            Outcome::Committed {
                revision: revision + 1
            }
        );
    }
}
