//! The etcd store: several controller instances share one etcd cluster.
//!
//! The trait is etcd's v3 transaction model, so the mapping is direct:
//!
//! - [`Compare::Absent`] is `create_revision(key) == 0`: etcd compares a
//!   missing key as if all its revisions were 0, and every existing key was
//!   created at a revision above 0.
//! - [`Compare::Unchanged`] is `mod_revision(key) == N`. A missing key
//!   compares as `mod_revision` 0, so for N > 0 (every revision a read
//!   returns) the compare also requires the key to exist. For N = 0 it adds
//!   `version(key) > 0`, which together can never hold: as in the embedded
//!   store, no key was ever written at revision 0.
//! - The writes go in the transaction's success branch; the revision of a
//!   commit is the one in the response's header.
//!
//! Where etcd differs, and what callers should know:
//!
//! - etcd refuses a transaction that writes a key twice. Writes applied in
//!   order leave each key as its last write did, so only that one is sent.
//! - A transaction that changes nothing (no writes, or deletes of absent
//!   keys) creates no revision in etcd: it reports the current one.
//! - etcd refuses transactions of more than `--max-txn-ops` (128 by default)
//!   compares or writes, and requests over `--max-request-bytes` (1.5 MiB):
//!   a [`StoreError::Backend`].
//!
//! - Leases are etcd's: an instance that stops keeping its lease alive
//!   (it died, or lost etcd) loses its keys within the TTL, all in one
//!   revision, which its watchers see as deletes.
//! - A watch is etcd's, on the prefix, from the revision after it is
//!   created; a response's events are reported grouped by revision.
//!
//! Reads are linearizable, and retried a few times when etcd is unavailable
//! (a reconnect, a leader election). Commits are not: a commit whose reply
//! was lost may have applied, so [`StoreError::Unavailable`] from `commit`
//! means "unknown", and the caller decides (re-read; its compares make a
//! repeated create conflict rather than apply twice). The gRPC channel
//! reconnects by itself: once etcd answers again, so does the store. The
//! one request that finds a connection dead before the channel noticed
//! fails as unavailable: a read is retried, a commit reports it.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, KeyValue, KvClient,
    LeaseClient, PutOptions, Txn as EtcdTxn, TxnOp, WatchClient, WatchOptions, WatchStream,
};
use futures::{StreamExt, future::BoxFuture};
use tonic::Code;

use super::{
    Change, Changes, Compare, Entry, LeaseId, Op, Outcome, Snapshot, Store, StoreError, Txn,
};

/// Longest wait for one request's answer, above etcd's own limit for a
/// proposal (7 s with the default election timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings: a connection to a member that vanished without closing it
/// is dropped (and redialled) instead of stalling every request. etcd
/// refuses pings more often than every 5 s by default.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Tries of a read while etcd is unavailable, and the pause after the
/// first (doubling).
const READ_ATTEMPTS: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Keys per page of a list: a million keys do not come in one message.
const PAGE: i64 = 1000;
/// Largest answer accepted (tonic's default is 4 MiB): a page of 1000 keys
/// with values of up to 64 KiB on average.
const MAX_MESSAGE: usize = 64 << 20;
/// The key `connect` reads to see that etcd answers (it need not exist;
/// `etcdctl endpoint health` reads the same).
const PROBE_KEY: &str = "health";

pub struct Etcd {
    kv: KvClient,
    lease: LeaseClient,
    watch: WatchClient,
    /// For errors: which etcd did not answer.
    endpoints: String,
}

impl Etcd {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`), and
    /// reads once to check that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<Etcd, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE);
        let named = endpoints.join(",");
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|error| classify(&named, &error))?;
        let etcd = Etcd {
            kv: client.kv_client().max_decoding_message_size(MAX_MESSAGE),
            lease: client.lease_client(),
            watch: client.watch_client().max_decoding_message_size(MAX_MESSAGE),
            endpoints: named,
        };
        // The client dials lazily: an address nothing answers at is
        // reported here, not at the first request.
        etcd.get(PROBE_KEY).await?;
        Ok(etcd)
    }

    /// One request, bounded by [`REQUEST_TIMEOUT`], its error classified.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
            Ok(answer) => answer.map_err(|error| classify(&self.endpoints, &error)),
            Err(_) => Err(self.no_answer()),
        }
    }

    fn no_answer(&self) -> StoreError {
        StoreError::Unavailable(format!(
            "etcd at {} did not answer within {REQUEST_TIMEOUT:?}",
            self.endpoints
        ))
    }

    /// Runs `read` until it is not unavailable, [`READ_ATTEMPTS`] times at
    /// most: reads change nothing, so trying again is safe.
    async fn read<T, F>(&self, read: impl Fn(KvClient) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 1;
        loop {
            match read(self.kv.clone()).await {
                Err(StoreError::Unavailable(reason)) if attempt < READ_ATTEMPTS => {
                    tracing::debug!(%reason, attempt, "retrying a read of etcd");
                    tokio::time::sleep(RETRY_PAUSE * 2u32.pow(attempt - 1)).await;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// Every key under `prefix`, page by page, all at the revision of the
    /// first page (one snapshot, as one range would be).
    async fn list_pages(&self, mut kv: KvClient, prefix: &str) -> Result<Snapshot, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut entries = Vec::new();
        // etcd has no empty key: every key is at or after "\0".
        let mut from = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut revision = 0;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE)
                .with_revision(revision);
            let mut page = self.call(kv.get(from, Some(options))).await?;
            if revision == 0 {
                revision = page
                    .header()
                    .ok_or_else(|| backend("a range answer without a header"))?
                    .revision();
            }
            let more = page.more();
            for kv in page.take_kvs() {
                entries.push(entry(kv)?);
            }
            match entries.last() {
                // The smallest key after the last one.
                Some(last) if more => from = [last.key.as_bytes(), b"\0"].concat(),
                _ => {
                    return Ok(Snapshot {
                        revision: revision_from_etcd(revision)?,
                        entries,
                    });
                }
            }
        }
    }
}

impl Store for Etcd {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(self.read(move |mut kv| async move {
            let mut answer = self.call(kv.get(key, None)).await?;
            answer.take_kvs().into_iter().next().map(entry).transpose()
        }))
    }

    fn snapshot<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Snapshot, StoreError>> {
        Box::pin(self.read(move |kv| self.list_pages(kv, prefix)))
    }

    fn commit(&self, txn: Txn) -> BoxFuture<'_, Result<Outcome, StoreError>> {
        Box::pin(async move {
            let request = etcd_txn(txn)?;
            let answer = self.call(self.kv.clone().txn(request)).await?;
            if !answer.succeeded() {
                return Ok(Outcome::Conflict);
            }
            let revision = answer
                .header()
                .ok_or_else(|| backend("a transaction's answer without a header"))?
                .revision();
            Ok(Outcome::Committed {
                revision: revision_from_etcd(revision)?,
            })
        })
    }

    fn grant_lease(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId, StoreError>> {
        Box::pin(async move {
            // etcd's TTLs are whole seconds: rounded up, never shorter.
            let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            let seconds = i64::try_from(seconds.max(1))
                .map_err(|_| backend(format!("a lease of {ttl:?}")))?;
            let granted = self.call(self.lease.clone().grant(seconds, None)).await?;
            Ok(LeaseId(granted.id()))
        })
    }

    fn keep_alive(&self, lease: LeaseId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            // One renewal on a stream of its own: etcd answers it with the
            // TTL left, 0 (an error here) when the lease has ended.
            let mut client = self.lease.clone();
            match tokio::time::timeout(REQUEST_TIMEOUT, client.keep_alive(lease.0)).await {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Ok(false),
                Ok(Err(error)) => Err(classify(&self.endpoints, &error)),
                Err(_) => Err(self.no_answer()),
            }
        })
    }

    fn revoke_lease(&self, lease: LeaseId) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, self.lease.clone().revoke(lease.0)).await {
                Ok(Ok(_)) => Ok(()),
                // Ended already (expired, or revoked before).
                Ok(Err(etcd_client::Error::GRpcStatus(status)))
                    if status.code() == Code::NotFound =>
                {
                    Ok(())
                }
                Ok(Err(error)) => Err(classify(&self.endpoints, &error)),
                Err(_) => Err(self.no_answer()),
            }
        })
    }

    fn watch<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Changes, StoreError>> {
        Box::pin(async move {
            let options = WatchOptions::new().with_prefix();
            let mut stream = self
                .call(self.watch.clone().watch(prefix, Some(options)))
                .await?;
            // The first answer says the watch is in place: every later
            // revision is reported from then on.
            match self.call(stream.message()).await? {
                Some(answer) if answer.created() && !answer.canceled() => {}
                _ => return Err(backend("etcd did not create the watch")),
            }
            let endpoints = self.endpoints.clone();
            let state = WatchState {
                stream,
                endpoints,
                ready: std::collections::VecDeque::new(),
            };
            Ok(futures::stream::unfold(Some(state), next_change).boxed())
        })
    }
}

/// An open watch, and the changes of its last answer not yet reported.
struct WatchState {
    stream: WatchStream,
    endpoints: String,
    ready: std::collections::VecDeque<Change>,
}

/// The next change of a watch; after an error, the end.
async fn next_change(
    state: Option<WatchState>,
) -> Option<(Result<Change, StoreError>, Option<WatchState>)> {
    let mut state = state?;
    loop {
        if let Some(change) = state.ready.pop_front() {
            return Some((Ok(change), Some(state)));
        }
        let answer = match state.stream.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                let error =
                    StoreError::Unavailable(format!("etcd at {} ended the watch", state.endpoints));
                return Some((Err(error), None));
            }
            Err(error) => return Some((Err(classify(&state.endpoints, &error)), None)),
        };
        if answer.canceled() {
            // Compacted past the watch's revision, or the watch was
            // refused: it cannot go on.
            let error = StoreError::Unavailable(format!(
                "etcd at {} cancelled the watch: {}",
                state.endpoints,
                answer.cancel_reason()
            ));
            return Some((Err(error), None));
        }
        // One answer may carry several revisions (and a progress report
        // none): one change per revision, its keys in key order.
        let mut by_revision: BTreeMap<i64, std::collections::BTreeSet<String>> = BTreeMap::new();
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                continue;
            };
            by_revision
                .entry(kv.mod_revision())
                .or_default()
                .insert(key.to_string());
        }
        for (revision, keys) in by_revision {
            match revision_from_etcd(revision) {
                Ok(revision) => state.ready.push_back(Change {
                    revision,
                    keys: keys.into_iter().collect(),
                }),
                Err(error) => return Some((Err(error), None)),
            }
        }
    }
}

fn etcd_txn(txn: Txn) -> Result<EtcdTxn, StoreError> {
    let mut compares = Vec::with_capacity(txn.compares.len());
    for compare in txn.compares {
        match compare {
            Compare::Absent(key) => {
                compares.push(EtcdCompare::create_revision(key, CompareOp::Equal, 0));
            }
            Compare::Unchanged { key, mod_revision } => {
                let revision = i64::try_from(mod_revision)
                    .map_err(|_| backend(format!("revision {mod_revision} is beyond etcd's")))?;
                if revision == 0 {
                    compares.push(EtcdCompare::version(key.clone(), CompareOp::Greater, 0));
                }
                compares.push(EtcdCompare::mod_revision(key, CompareOp::Equal, revision));
            }
        }
    }
    // Key → its last write: a value to put (with its lease), or `None` to
    // delete.
    let mut writes = BTreeMap::new();
    for op in txn.ops {
        match op {
            Op::Put { key, value, lease } => writes.insert(key, Some((value, lease))),
            Op::Delete { key } => writes.insert(key, None),
        };
    }
    let ops: Vec<TxnOp> = writes
        .into_iter()
        .map(|(key, write)| match write {
            Some((value, lease)) => TxnOp::put(
                key,
                value,
                lease.map(|lease| PutOptions::new().with_lease(lease.0)),
            ),
            None => TxnOp::delete(key, None),
        })
        .collect();
    Ok(EtcdTxn::new().when(compares).and_then(ops))
}

fn entry(kv: KeyValue) -> Result<Entry, StoreError> {
    let mod_revision = revision_from_etcd(kv.mod_revision())?;
    let (key, value) = kv.into_key_value();
    let key = String::from_utf8(key)
        .map_err(|error| backend(format!("a key that is not UTF-8 ({error})")))?;
    Ok(Entry {
        key,
        value,
        mod_revision,
    })
}

fn revision_from_etcd(revision: i64) -> Result<u64, StoreError> {
    u64::try_from(revision).map_err(|_| backend(format!("etcd answered revision {revision}")))
}

/// The end of the range of keys that start with `prefix` (exclusive): the
/// prefix with its last byte below 0xff incremented, the bytes after it
/// dropped. No such byte (an empty prefix, or all 0xff) means no end, which
/// etcd spells "\0".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&byte| byte < 0xff) {
        Some(last) => {
            let mut end = prefix[..=last].to_vec();
            end[last] += 1;
            end
        }
        None => vec![0],
    }
}

/// Unavailable when etcd could not be reached or could not serve (no
/// leader, a timeout): trying later may work. Anything else is a failure.
fn classify(endpoints: &str, error: &etcd_client::Error) -> StoreError {
    use etcd_client::Error;
    use std::error::Error as _;
    let unavailable = match error {
        // A refused or broken connection comes as status "Unknown" with
        // the transport's error as its source.
        Error::GRpcStatus(status) => {
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
                || std::iter::successors(status.source(), |&error| error.source())
                    .any(|error| error.is::<tonic::transport::Error>())
        }
        Error::TransportError(_) | Error::IoError(_) => true,
        _ => false,
    };
    let reason = format!("etcd at {endpoints}: {error}");
    if unavailable {
        StoreError::Unavailable(reason)
    } else {
        StoreError::Backend(reason)
    }
}

fn backend(reason: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd: {reason}"))
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use alcor_tests::etcd::{EtcdServer, available};
    use futures::StreamExt;

    use super::*;
    use crate::store::suite;

    /// A fresh etcd and a store on it; `None` when etcd is not installed
    /// (outside CI: the test is skipped, loudly).
    async fn start(test: &str) -> Option<(EtcdServer, Etcd)> {
        if !available(test) {
            return None;
        }
        let server = EtcdServer::start().unwrap();
        let store = Etcd::connect(&[server.client_url()]).await.unwrap();
        Some((server, store))
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[tokio::test]
    async fn puts_and_gets() {
        let Some((_server, store)) = start("puts_and_gets").await else {
            return;
        };
        suite::puts_and_gets(&store).await;
    }

    #[tokio::test]
    async fn compares_decide_all_or_nothing() {
        let Some((_server, store)) = start("compares_decide_all_or_nothing").await else {
            return;
        };
        suite::compares_decide_all_or_nothing(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_creates_have_one_winner() {
        let Some((_server, store)) = start("racing_creates_have_one_winner").await else {
            return;
        };
        suite::racing_creates_have_one_winner(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn leased_keys_go_with_their_lease() {
        let Some((_server, store)) = start("leased_keys_go_with_their_lease").await else {
            return;
        };
        suite::leased_keys_go_with_their_lease(&store).await;
    }

    #[tokio::test]
    async fn a_watch_reports_every_change_under_its_prefix() {
        let Some((_server, store)) = start("a_watch_reports_every_change_under_its_prefix").await
        else {
            return;
        };
        suite::a_watch_reports_every_change_under_its_prefix(&store).await;
    }

    /// A lease not kept alive ends by itself within its TTL (and etcd's
    /// check period), its keys with it, as when its instance dies; one kept
    /// alive meanwhile does not.
    #[tokio::test]
    async fn a_lease_not_kept_alive_ends_with_its_keys() {
        let Some((_server, store)) = start("a_lease_not_kept_alive_ends_with_its_keys").await
        else {
            return;
        };
        let ttl = Duration::from_secs(2);
        let dying = store.grant_lease(ttl).await.unwrap();
        let kept = store.grant_lease(ttl).await.unwrap();
        let mut txn = Txn::default();
        txn.put_with_lease("/owner/dying", vec![], dying)
            .put_with_lease("/owner/kept", vec![], kept);
        store.commit(txn).await.unwrap();
        let mut changes = store.watch("/owner/").await.unwrap();
        let started = Instant::now();
        let deleted = tokio::time::timeout(Duration::from_secs(15), async {
            let mut renew = tokio::time::interval(ttl / 4);
            loop {
                tokio::select! {
                    _ = renew.tick() => assert!(store.keep_alive(kept).await.unwrap()),
                    change = changes.next() => return change.unwrap().unwrap(),
                }
            }
        })
        .await
        .expect("the lease ends within 15 s");
        assert_eq!(deleted.keys, ["/owner/dying"]);
        assert!(started.elapsed() >= ttl - Duration::from_millis(500));
        assert!(!store.keep_alive(dying).await.unwrap());
        assert!(store.keep_alive(kept).await.unwrap());
        assert!(store.get("/owner/kept").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_list_comes_in_pages_in_key_order() {
        let Some((_server, store)) = start("a_list_comes_in_pages_in_key_order").await else {
            return;
        };
        let keys = 2 * PAGE + 7;
        // Written out of order, in transactions within etcd's op limit.
        let mut written: Vec<String> = (0..keys).map(|n| format!("/page/{n}")).collect();
        for chunk in written.chunks(100) {
            let mut txn = Txn::default();
            for key in chunk {
                txn.put(key, key.as_bytes().to_vec());
            }
            store.commit(txn).await.unwrap();
        }
        let mut txn = Txn::default();
        txn.put("/page0", vec![]).put("/pag", vec![]);
        store.commit(txn).await.unwrap();
        written.sort();
        let listed = store.list("/page/").await.unwrap();
        assert_eq!(
            listed.iter().map(|e| &e.key).collect::<Vec<_>>(),
            written.iter().collect::<Vec<_>>()
        );
        assert!(listed.iter().all(|e| e.value == e.key.as_bytes()));
        assert_eq!(store.list("").await.unwrap().len(), written.len() + 2);
    }

    /// Two controller instances, each with its own client, race to create
    /// the same keys: each key has one winner, and holds its value.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_clients_racing_creates_have_one_winner() {
        const WRITERS: usize = 8;
        const KEYS: usize = 50;
        let Some((server, first)) = start("two_clients_racing_creates_have_one_winner").await
        else {
            return;
        };
        let second = Etcd::connect(&[server.client_url()]).await.unwrap();
        let stores: [Arc<dyn Store>; 2] = [Arc::new(first), Arc::new(second)];
        let mut tasks = Vec::new();
        for (client, store) in stores.iter().enumerate() {
            for writer in 0..WRITERS {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    let mut won = Vec::new();
                    for n in 0..KEYS {
                        let key = format!("/race/{n:03}");
                        let value = format!("{client}.{writer}").into_bytes();
                        let mut txn = Txn::default();
                        txn.require_absent(&key).put(&key, value.clone());
                        if let Outcome::Committed { .. } = store.commit(txn).await.unwrap() {
                            won.push((key, value));
                        }
                    }
                    won
                }));
            }
        }
        let mut won = Vec::new();
        for task in tasks {
            won.extend(task.await.unwrap());
        }
        won.sort();
        let stored: Vec<_> = stores[1]
            .list("/race/")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(won.len(), KEYS, "one winner per key");
        assert_eq!(won, stored, "each key holds its winner's value");
    }

    /// etcd killed (SIGKILL) and started again: while it is down every
    /// operation fails as unavailable, promptly; after, the same store works
    /// again, its first commit included, and everything committed before
    /// is there. Two workers: while the test blocks on the server, the
    /// client's connection task runs, as it would in a controller.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd_restarts_lose_nothing_and_the_store_comes_back() {
        use tokio::task::block_in_place;
        let Some((mut server, store)) =
            start("etcd_restarts_lose_nothing_and_the_store_comes_back").await
        else {
            return;
        };
        let commit = async |key: &str, value: &[u8]| {
            let mut txn = Txn::default();
            txn.require_absent(key).put(key, value.to_vec());
            let Outcome::Committed { revision } = store.commit(txn).await.unwrap() else {
                panic!("conflict");
            };
            Entry {
                key: key.into(),
                value: value.into(),
                mod_revision: revision,
            }
        };
        let mut committed = Vec::new();
        for n in 0..20 {
            committed.push(commit(&format!("/kept/{n:02}"), &[n]).await);
        }

        let mut changes = store.watch("/kept/").await.unwrap();
        block_in_place(|| server.kill());
        let started = Instant::now();
        // A watch does not go quiet: it fails, so that its watcher reads
        // again once it can.
        match tokio::time::timeout(Duration::from_secs(5), changes.next()).await {
            Ok(None | Some(Err(_))) => {}
            other => panic!("expected the watch to fail, got {other:?}"),
        }
        let unavailable = |result: Result<_, StoreError>| match result {
            Err(StoreError::Unavailable(reason)) => {
                assert!(reason.contains(&server.client_url()), "{reason}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        };
        unavailable(store.get("/kept/00").await.map(drop));
        unavailable(store.list("/kept/").await.map(drop));
        let mut txn = Txn::default();
        txn.put("/lost", vec![]);
        unavailable(store.commit(txn).await.map(drop));
        // Refused connections: no waiting for timeouts.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        block_in_place(|| server.restart()).unwrap();
        // The first operation after the restart is a commit (not retried).
        committed.push(commit("/kept/after-down", b"1").await);
        assert_eq!(store.get("/lost").await.unwrap(), None);

        // Restarted while the store was idle: its connection died under
        // it, and again the first commit applies.
        block_in_place(|| server.restart()).unwrap();
        committed.push(commit("/kept/after-idle", b"2").await);
        let revisions: Vec<_> = committed.iter().map(|e| e.mod_revision).collect();
        assert!(revisions.is_sorted(), "{revisions:?}");
        committed.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(store.list("/kept/").await.unwrap(), committed);
    }

    #[tokio::test]
    async fn connect_names_an_endpoint_that_does_not_answer() {
        // A port nothing listens on once the listener is gone.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let endpoint = format!("http://127.0.0.1:{port}");
        match Etcd::connect(std::slice::from_ref(&endpoint)).await {
            Err(StoreError::Unavailable(reason)) => assert!(reason.contains(&endpoint), "{reason}"),
            Err(other) => panic!("expected unavailable, got {other:?}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }

    #[tokio::test]
    async fn a_transaction_over_etcds_op_limit_fails() {
        let Some((_server, store)) = start("a_transaction_over_etcds_op_limit_fails").await else {
            return;
        };
        let mut txn = Txn::default();
        for n in 0..129 {
            txn.put(format!("/many/{n}"), vec![]);
        }
        match store.commit(txn).await {
            Err(StoreError::Backend(reason)) => {
                assert!(reason.contains("too many operations"), "{reason}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
