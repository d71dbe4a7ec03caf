//! The embedded store: one redb file, for one controller instance.
//!
//! Reads are redb read transactions (snapshots, beside the writer). Writes
//! go to one writer thread, which takes every transaction waiting and
//! applies them in one redb write transaction, in order, each checked
//! against what the ones before it wrote, then commits once (fsync) and
//! answers them all: concurrent requests share a disk flush instead of
//! queueing for one each. A transaction whose compare fails is skipped and
//! answered `Conflict`; the others of the batch still apply.
//!
//! Leases live in memory: there is one instance, so a lease lives as long
//! as the store is open, unless revoked. A key written with a lease is
//! recorded in its own table, so that opening the store deletes the keys
//! of leases that ended with the last process, as etcd deletes those of an
//! instance that died. The watch is fed by the writer after each flush.

use std::{
    collections::{BTreeSet, HashSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{broadcast, oneshot};

use super::{
    Change, Changes, Compare, Entry, LeaseId, Op, Outcome, Snapshot, Store, StoreError, Txn,
};

/// Key → (revision that last wrote it, value).
const KV: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("kv");
/// `revision` → the store's revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Key → the lease it was written with (only keys that have one).
const LEASED: TableDefinition<&str, i64> = TableDefinition::new("leased");
const REVISION: &str = "revision";
/// Most transactions one disk flush carries.
const BATCH: usize = 1024;
/// Changes a watcher may fall behind by before its watch fails (it then
/// reads everything again).
const WATCH_BACKLOG: usize = 4096;

/// What the writer thread is asked to do.
enum Work {
    Commit(Txn, oneshot::Sender<Result<Outcome, StoreError>>),
    Revoke(LeaseId, oneshot::Sender<Result<(), StoreError>>),
}

/// What the writer shares with the store's handle.
struct Shared {
    /// The leases granted and not revoked.
    leases: Mutex<HashSet<i64>>,
    changes: broadcast::Sender<Change>,
}

impl Shared {
    fn leases(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Embedded {
    db: Arc<Database>,
    writer: mpsc::Sender<Work>,
    shared: Arc<Shared>,
    next_lease: AtomicI64,
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store's writer stopped".into())
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
        txn.open_table(LEASED).map_err(backend)?;
        let ended = drop_ended_leases(&txn)?;
        txn.commit().map_err(backend)?;
        if ended > 0 {
            tracing::info!(
                keys = ended,
                "deleted the keys of the leases of the store's last process"
            );
        }
        let db = Arc::new(db);
        let (writer, pending) = mpsc::channel();
        let shared = Arc::new(Shared {
            leases: Mutex::new(HashSet::new()),
            changes: broadcast::Sender::new(WATCH_BACKLOG),
        });
        let db_for_writer = db.clone();
        let shared_for_writer = shared.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_batches(&db_for_writer, &shared_for_writer, &pending))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Embedded {
            db,
            writer,
            shared,
            next_lease: AtomicI64::new(1),
        })
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

/// Deletes every key written with a lease (all of them ended with the
/// process that granted them), in one revision; how many there were.
fn drop_ended_leases(txn: &redb::WriteTransaction) -> Result<usize, StoreError> {
    let mut leased = txn.open_table(LEASED).map_err(backend)?;
    let keys: Vec<String> = leased
        .iter()
        .map_err(backend)?
        .map(|item| item.map(|(key, _)| key.value().to_string()))
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    if keys.is_empty() {
        return Ok(0);
    }
    let mut kv = txn.open_table(KV).map_err(backend)?;
    for key in &keys {
        leased.remove(key.as_str()).map_err(backend)?;
        kv.remove(key.as_str()).map_err(backend)?;
    }
    let mut meta = txn.open_table(META).map_err(backend)?;
    let revision = meta
        .get(REVISION)
        .map_err(backend)?
        .map_or(0, |value| value.value());
    meta.insert(REVISION, revision + 1).map_err(backend)?;
    Ok(keys.len())
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
        let sent = self.writer.send(Work::Commit(txn, answer));
        Box::pin(async move {
            sent.map_err(|_| stopped())?;
            outcome.await.map_err(|_| stopped())?
        })
    }

    /// The TTL does not matter: the only instance lives as long as the
    /// store is open.
    fn grant_lease(&self, _ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        self.shared.leases().insert(id);
        Box::pin(async move { Ok(LeaseId(id)) })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<bool, StoreError>> {
        let alive = self.shared.leases().contains(&lease.0);
        Box::pin(async move { Ok(alive) })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        let (answer, outcome) = oneshot::channel();
        let sent = self.writer.send(Work::Revoke(lease, answer));
        Box::pin(async move {
            sent.map_err(|_| stopped())?;
            outcome.await.map_err(|_| stopped())?
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Changes, StoreError>> {
        // Subscribed before this returns: every later flush is seen.
        let receiver = self.shared.changes.subscribe();
        let prefix = prefix.to_string();
        let changes = futures::stream::unfold(Some(receiver), move |receiver| {
            let prefix = prefix.clone();
            async move {
                let mut receiver = receiver?;
                loop {
                    match receiver.recv().await {
                        Ok(change) => {
                            let keys: Vec<String> = change
                                .keys
                                .into_iter()
                                .filter(|key| key.starts_with(&prefix))
                                .collect();
                            if !keys.is_empty() {
                                let change = Change {
                                    revision: change.revision,
                                    keys,
                                };
                                return Some((Ok(change), Some(receiver)));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let error = StoreError::Unavailable(format!(
                                "the watch fell {missed} changes behind"
                            ));
                            return Some((Err(error), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Box::pin(async move { Ok(changes.boxed()) })
    }
}

/// The writer thread: until every sender is gone, takes what waits and
/// writes it as one redb transaction.
fn write_batches(db: &Database, shared: &Shared, pending: &mpsc::Receiver<Work>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter().take(BATCH - 1));
        // Only built when someone watches.
        let watched = shared.changes.receiver_count() > 0;
        match write_batch(db, shared, &batch, watched) {
            Ok(written) => {
                for change in written.changes {
                    let _ = shared.changes.send(change);
                }
                for (work, outcome) in batch.into_iter().zip(written.outcomes) {
                    match work {
                        Work::Commit(_, answer) => {
                            let _ = answer.send(outcome);
                        }
                        Work::Revoke(_, answer) => {
                            let _ = answer.send(outcome.map(drop));
                        }
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "a store write failed");
                for work in batch {
                    match work {
                        Work::Commit(_, answer) => {
                            let _ = answer.send(Err(backend(&error)));
                        }
                        Work::Revoke(_, answer) => {
                            let _ = answer.send(Err(backend(&error)));
                        }
                    }
                }
            }
        }
    }
}

/// What one flush did: an outcome per work (a revoke's is its revision or
/// `Conflict` if it deleted nothing), and the changes to report.
struct Written {
    outcomes: Vec<Result<Outcome, StoreError>>,
    changes: Vec<Change>,
}

/// Applies the work in order in one redb transaction.
fn write_batch(
    db: &Database,
    shared: &Shared,
    batch: &[Work],
    watched: bool,
) -> Result<Written, StoreError> {
    let write = db.begin_write().map_err(backend)?;
    let mut written = Written {
        outcomes: Vec::with_capacity(batch.len()),
        changes: Vec::new(),
    };
    // Revoked in this batch: later work of it must not use them.
    let mut revoked = Vec::new();
    {
        let mut kv = write.open_table(KV).map_err(backend)?;
        let mut meta = write.open_table(META).map_err(backend)?;
        let mut leased = write.open_table(LEASED).map_err(backend)?;
        let mut revision = meta
            .get(REVISION)
            .map_err(backend)?
            .map_or(0, |value| value.value());
        for work in batch {
            let mut changed = BTreeSet::new();
            match work {
                Work::Commit(txn, _) => {
                    if let Some(ended) = ended_lease(txn, shared, &revoked) {
                        written
                            .outcomes
                            .push(Err(StoreError::Backend(format!("lease {ended} has ended"))));
                        continue;
                    }
                    if !holds(&kv, &txn.compares)? {
                        written.outcomes.push(Ok(Outcome::Conflict));
                        continue;
                    }
                    revision += 1;
                    for op in &txn.ops {
                        match op {
                            Op::Put { key, value, lease } => {
                                kv.insert(key.as_str(), (revision, value.as_slice()))
                                    .map_err(backend)?;
                                match lease {
                                    Some(lease) => {
                                        leased.insert(key.as_str(), lease.0).map_err(backend)?;
                                    }
                                    None => {
                                        leased.remove(key.as_str()).map_err(backend)?;
                                    }
                                }
                                changed.insert(key.clone());
                            }
                            Op::Delete { key } => {
                                leased.remove(key.as_str()).map_err(backend)?;
                                if kv.remove(key.as_str()).map_err(backend)?.is_some() {
                                    changed.insert(key.clone());
                                }
                            }
                        }
                    }
                    written.outcomes.push(Ok(Outcome::Committed { revision }));
                }
                Work::Revoke(lease, _) => {
                    revoked.push(lease.0);
                    let keys: Vec<String> = leased
                        .iter()
                        .map_err(backend)?
                        .filter_map(|item| match item {
                            Ok((key, id)) => {
                                (id.value() == lease.0).then(|| Ok(key.value().to_string()))
                            }
                            Err(error) => Some(Err(backend(error))),
                        })
                        .collect::<Result<_, _>>()?;
                    if keys.is_empty() {
                        written.outcomes.push(Ok(Outcome::Conflict));
                        continue;
                    }
                    revision += 1;
                    for key in keys {
                        leased.remove(key.as_str()).map_err(backend)?;
                        kv.remove(key.as_str()).map_err(backend)?;
                        changed.insert(key);
                    }
                    written.outcomes.push(Ok(Outcome::Committed { revision }));
                }
            }
            if watched && !changed.is_empty() {
                written.changes.push(Change {
                    revision,
                    keys: changed.into_iter().collect(),
                });
            }
        }
        meta.insert(REVISION, revision).map_err(backend)?;
    }
    write.commit().map_err(backend)?;
    // Revoked for good only once the deletions are on disk.
    let mut leases = shared.leases();
    for lease in revoked {
        leases.remove(&lease);
    }
    Ok(written)
}

/// A lease `txn` writes with that has ended (or was never granted), if any.
fn ended_lease(txn: &Txn, shared: &Shared, revoked: &[i64]) -> Option<i64> {
    let mut used = txn.ops.iter().filter_map(|op| match op {
        Op::Put {
            lease: Some(lease), ..
        } => Some(lease.0),
        _ => None,
    });
    // Most transactions use no lease: no lock for them.
    let first = used.next()?;
    let leases = shared.leases();
    std::iter::once(first)
        .chain(used)
        .find(|lease| !leases.contains(lease) || revoked.contains(lease))
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
    async fn leased_keys_go_with_their_lease() {
        let (_dir, store) = open();
        suite::leased_keys_go_with_their_lease(&store).await;
    }

    #[tokio::test]
    async fn a_watch_reports_every_change_under_its_prefix() {
        let (_dir, store) = open();
        suite::a_watch_reports_every_change_under_its_prefix(&store).await;
    }

    /// Opened again (by the next process): the keys of the last process's
    /// leases are gone, in one revision, the others are as they were.
    #[tokio::test]
    async fn leases_end_with_their_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let revision = {
            let store = Embedded::open(&path).unwrap();
            let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
            let mut txn = Txn::default();
            txn.put_with_lease("/owner/h1", b"me".to_vec(), lease)
                .put("/kept", b"yes".to_vec());
            let Outcome::Committed { revision } = store.commit(txn).await.unwrap() else {
                panic!("conflict");
            };
            revision
        };
        let store = reopen(&path).await;
        assert_eq!(store.get("/owner/h1").await.unwrap(), None);
        assert_eq!(store.get("/kept").await.unwrap().unwrap().value, b"yes");
        assert_eq!(store.snapshot("/").await.unwrap().revision, revision + 1);
    }

    /// Opens the store at `path` once the last handle's writer let it go.
    async fn reopen(path: &std::path::Path) -> Embedded {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match Embedded::open(path) {
                    Ok(store) => return store,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        })
        .await
        .expect("the store reopens")
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
        let store = reopen(&path).await;
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
