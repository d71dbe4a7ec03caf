//! Where the controller keeps everything: a key-value store with
//! transactions that commit only if what they read is unchanged
//! (compare-and-swap), the way etcd's are. Two implementations share this
//! trait and one test suite: [`embedded`] (one file, one controller) and
//! [`etcd`] (several controllers).
//!
//! Every committed transaction gets the next store revision; every key
//! remembers the revision that last wrote it (its `mod_revision`). A
//! writer reads, decides, and commits with [`Compare`]s on what it read:
//! if another writer got there first, the commit reports a conflict and
//! nothing of it is applied.
//!
//! Two more things, for several controller instances sharing the agents:
//! leases (keys written with one are deleted when it ends: revoked, or not
//! kept alive within its TTL, as when its instance dies) and a watch (the
//! keys each commit changes, so that an instance hears of another's
//! changes without polling).

pub mod embedded;
pub mod etcd;

use std::time::Duration;

use futures::{future::BoxFuture, stream::BoxStream};

/// A key and its value as last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the transaction that last wrote it.
    pub mod_revision: u64,
}

/// A condition a transaction commits under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last written at this revision (it is as read).
    Unchanged { key: String, mod_revision: u64 },
}

/// A lease, as the store granted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// A write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        /// The key goes when the lease ends; `None`: it stays until
        /// deleted (a put without a lease detaches the key from any).
        lease: Option<LeaseId>,
    },
    /// Deleting a key that does not exist is not an error.
    Delete { key: String },
}

/// Writes that apply together, if every compare holds, or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn require_absent(&mut self, key: impl Into<String>) -> &mut Self {
        self.compares.push(Compare::Absent(key.into()));
        self
    }

    pub fn require_unchanged(&mut self, entry: &Entry) -> &mut Self {
        self.compares.push(Compare::Unchanged {
            key: entry.key.clone(),
            mod_revision: entry.mod_revision,
        });
        self
    }

    pub fn put(&mut self, key: impl Into<String>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value,
            lease: None,
        });
        self
    }

    /// A put whose key is deleted when `lease` ends. A lease that has
    /// already ended fails the commit (an error, not a conflict).
    pub fn put_with_lease(
        &mut self,
        key: impl Into<String>,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> &mut Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value,
            lease: Some(lease),
        });
        self
    }

    pub fn delete(&mut self, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
}

/// What became of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, as the store's revision `revision`.
    Committed { revision: u64 },
    /// A compare did not hold: nothing was written.
    Conflict,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("the store failed: {0}")]
    Backend(String),
}

/// Keys as they all were at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The store's revision the entries are as of: every transaction up
    /// to it is in them, none after it.
    pub revision: u64,
    pub entries: Vec<Entry>,
}

/// The keys under a watched prefix that one revision changed (put or
/// deleted: a commit, or a lease's end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub revision: u64,
    pub keys: Vec<String>,
}

/// What a watch reports, in revision order. An error, or the end, means
/// changes may have been missed: read again, and watch again.
pub type Changes = BoxStream<'static, Result<Change, StoreError>>;

/// The store, shared by every request handler.
pub trait Store: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>>;

    /// Every key that starts with `prefix`, in key order, at one revision.
    fn snapshot<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Snapshot, StoreError>>;

    /// Every key that starts with `prefix`, in key order.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, StoreError>> {
        Box::pin(async move { Ok(self.snapshot(prefix).await?.entries) })
    }

    fn commit(&self, txn: Txn) -> BoxFuture<'_, Result<Outcome, StoreError>>;

    /// A new lease that ends unless kept alive within `ttl`.
    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>>;

    /// Renews `lease` for its whole TTL: false if it has ended (its keys
    /// are gone; a new lease is needed).
    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Ends `lease` now: its keys are deleted, in one revision. Ending a
    /// lease that has already ended is not an error.
    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The changes to keys under `prefix` from now on: every change
    /// committed after this returns is reported.
    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Changes, StoreError>>;
}

/// The test suite every store passes: the guarantees the controller's
/// logic relies on.
#[cfg(test)]
pub(crate) mod suite {
    use std::sync::Arc;

    use futures::StreamExt;

    use super::*;

    /// How long a watch may take to report a change.
    const WATCH_LIMIT: Duration = Duration::from_secs(10);

    async fn committed(store: &dyn Store, txn: Txn) -> u64 {
        match store.commit(txn).await.unwrap() {
            Outcome::Committed { revision } => revision,
            Outcome::Conflict => panic!("an unconditional transaction conflicted"),
        }
    }

    async fn next_change(changes: &mut Changes) -> Change {
        tokio::time::timeout(WATCH_LIMIT, changes.next())
            .await
            .expect("the watch reports the change")
            .expect("the watch goes on")
            .expect("the watch does not fail")
    }

    fn key(entry: &Entry) -> &str {
        &entry.key
    }

    pub async fn puts_and_gets(store: &dyn Store) {
        assert_eq!(store.get("/a").await.unwrap(), None);
        let mut txn = Txn::default();
        txn.put("/a", b"1".to_vec()).put("/b/x", b"2".to_vec());
        let Outcome::Committed { revision } = store.commit(txn).await.unwrap() else {
            panic!("an unconditional transaction conflicted");
        };
        let a = store.get("/a").await.unwrap().unwrap();
        assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], revision));
        let mut txn = Txn::default();
        txn.put("/b/y", b"3".to_vec()).put("/c", b"4".to_vec());
        let Outcome::Committed { revision: next } = store.commit(txn).await.unwrap() else {
            panic!("conflict");
        };
        assert!(next > revision, "revisions grow");
        let listed = store.list("/b/").await.unwrap();
        assert_eq!(listed.iter().map(key).collect::<Vec<_>>(), ["/b/x", "/b/y"]);
        assert_eq!(listed[1].mod_revision, next);
        let snapshot = store.snapshot("/b/").await.unwrap();
        assert_eq!(snapshot.entries, listed);
        // Another store user (etcd's tests share one) may have written since.
        assert!(
            snapshot.revision >= next,
            "a snapshot is as of the last commit or later"
        );
        let mut txn = Txn::default();
        txn.delete("/b/x").delete("/nothing");
        store.commit(txn).await.unwrap();
        assert_eq!(store.list("/b/").await.unwrap().len(), 1);

        // Writes apply in order: a key is left as its last write left it.
        let mut txn = Txn::default();
        txn.put("/d", b"1".to_vec())
            .put("/d", b"2".to_vec())
            .put("/e", b"1".to_vec())
            .delete("/e")
            .delete("/c")
            .put("/c", b"5".to_vec());
        store.commit(txn).await.unwrap();
        assert_eq!(store.get("/d").await.unwrap().unwrap().value, b"2");
        assert_eq!(store.get("/e").await.unwrap(), None);
        assert_eq!(store.get("/c").await.unwrap().unwrap().value, b"5");
    }

    pub async fn compares_decide_all_or_nothing(store: &dyn Store) {
        let mut txn = Txn::default();
        txn.put("/k", b"v1".to_vec());
        store.commit(txn).await.unwrap();
        let read = store.get("/k").await.unwrap().unwrap();

        // Absent fails on an existing key: nothing of it is written.
        let mut txn = Txn::default();
        txn.require_absent("/k").put("/other", b"x".to_vec());
        assert_eq!(store.commit(txn).await.unwrap(), Outcome::Conflict);
        assert_eq!(store.get("/other").await.unwrap(), None);

        // Unchanged holds for what was read, once.
        let mut first = Txn::default();
        first.require_unchanged(&read).put("/k", b"v2".to_vec());
        let mut second = Txn::default();
        second.require_unchanged(&read).put("/k", b"v3".to_vec());
        assert!(matches!(
            store.commit(first).await.unwrap(),
            Outcome::Committed { .. }
        ));
        assert_eq!(store.commit(second).await.unwrap(), Outcome::Conflict);
        assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"v2");

        // Unchanged fails on a deleted key.
        let read = store.get("/k").await.unwrap().unwrap();
        let mut txn = Txn::default();
        txn.delete("/k");
        store.commit(txn).await.unwrap();
        let mut txn = Txn::default();
        txn.require_unchanged(&read).put("/k", b"back".to_vec());
        assert_eq!(store.commit(txn).await.unwrap(), Outcome::Conflict);

        // No key was ever written at revision 0, present or absent.
        for key in ["/k", "/other", "/b/y"] {
            let mut txn = Txn::default();
            txn.require_unchanged(&Entry {
                key: key.into(),
                value: vec![],
                mod_revision: 0,
            })
            .put("/zero", vec![]);
            assert_eq!(store.commit(txn).await.unwrap(), Outcome::Conflict, "{key}");
        }
    }

    /// Many writers race to create the same keys: each key is created by
    /// exactly one of them.
    pub async fn racing_creates_have_one_winner(store: Arc<dyn Store>) {
        const WRITERS: usize = 16;
        const KEYS: usize = 50;
        let tasks: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut won = 0;
                    for n in 0..KEYS {
                        let mut txn = Txn::default();
                        let key = format!("/race/{n:03}");
                        txn.require_absent(&key)
                            .put(&key, writer.to_string().into_bytes());
                        if matches!(store.commit(txn).await.unwrap(), Outcome::Committed { .. }) {
                            won += 1;
                        }
                    }
                    won
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            won += task.await.unwrap();
        }
        assert_eq!(won, KEYS);
        assert_eq!(store.list("/race/").await.unwrap().len(), KEYS);
    }

    /// Keys written with a lease go when it is revoked, in one revision; a
    /// put without the lease detaches a key from it; an ended lease is not
    /// kept alive and takes no more keys.
    pub async fn leased_keys_go_with_their_lease(store: &dyn Store) {
        let ttl = Duration::from_secs(60);
        let lease = store.grant_lease(ttl).await.unwrap();
        let other = store.grant_lease(ttl).await.unwrap();
        assert_ne!(lease, other);
        let mut txn = Txn::default();
        txn.put_with_lease("/lease/a", b"1".to_vec(), lease)
            .put_with_lease("/lease/b", b"2".to_vec(), lease)
            .put_with_lease("/lease/other", b"3".to_vec(), other)
            .put("/lease/plain", b"4".to_vec());
        committed(store, txn).await;
        assert!(store.keep_alive(lease).await.unwrap());
        let mut txn = Txn::default();
        txn.put("/lease/b", b"kept".to_vec());
        let detached = committed(store, txn).await;

        let mut changes = store.watch("/lease/").await.unwrap();
        store.revoke_lease(lease).await.unwrap();
        let change = next_change(&mut changes).await;
        assert_eq!(
            change.keys,
            ["/lease/a"],
            "the lease's keys, in one revision"
        );
        assert!(change.revision > detached);
        let left = store.list("/lease/").await.unwrap();
        assert_eq!(
            left.iter().map(key).collect::<Vec<_>>(),
            ["/lease/b", "/lease/other", "/lease/plain"]
        );
        assert!(!store.keep_alive(lease).await.unwrap());
        assert!(store.keep_alive(other).await.unwrap());
        store.revoke_lease(lease).await.unwrap();

        // An ended lease takes no key, and nothing of its transaction applies.
        let mut txn = Txn::default();
        txn.put("/lease/late-plain", vec![])
            .put_with_lease("/lease/late", vec![], lease);
        assert!(store.commit(txn).await.is_err());
        assert_eq!(store.get("/lease/late-plain").await.unwrap(), None);
        assert_eq!(store.get("/lease/late").await.unwrap(), None);
    }

    /// A watch reports each commit that changes keys under its prefix,
    /// once, in order, with its revision and those keys (in key order).
    pub async fn a_watch_reports_every_change_under_its_prefix(store: &dyn Store) {
        let mut changes = store.watch("/w/").await.unwrap();
        let mut txn = Txn::default();
        txn.put("/w/b", vec![])
            .put("/w/a", vec![])
            .put("/x", vec![]);
        let first = committed(store, txn).await;
        let mut txn = Txn::default();
        txn.put("/x", b"elsewhere".to_vec());
        committed(store, txn).await;
        let mut txn = Txn::default();
        txn.delete("/w/a").put("/w/c/d", vec![]).put("/x", vec![]);
        let third = committed(store, txn).await;
        assert_eq!(
            next_change(&mut changes).await,
            Change {
                revision: first,
                keys: vec!["/w/a".into(), "/w/b".into()]
            }
        );
        // Nothing for the commit outside the prefix.
        assert_eq!(
            next_change(&mut changes).await,
            Change {
                revision: third,
                keys: vec!["/w/a".into(), "/w/c/d".into()]
            }
        );
        // Deleting what is not there changes nothing, and is not reported.
        let mut txn = Txn::default();
        txn.delete("/w/none");
        store.commit(txn).await.unwrap();
        let mut txn = Txn::default();
        txn.put("/w/last", vec![]);
        let last = committed(store, txn).await;
        assert_eq!(
            next_change(&mut changes).await,
            Change {
                revision: last,
                keys: vec!["/w/last".into()]
            }
        );
    }
}
