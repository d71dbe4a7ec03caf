use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use super::*;

fn put<'a>(id: &'a str, config: &'a [u8]) -> StoreWrite<'a> {
    StoreWrite {
        kind: 2,
        id,
        record: Some((2, config)),
    }
}

fn delete(id: &str) -> StoreWrite<'_> {
    StoreWrite {
        kind: 2,
        id,
        record: None,
    }
}

/// The stored resources as (kind, id) → (operation, config).
fn contents(store: &Store) -> BTreeMap<(i32, String), (i32, Vec<u8>)> {
    store
        .load()
        .unwrap()
        .into_iter()
        .map(|s| ((s.kind, s.id), (s.record.operation, s.record.config)))
        .collect()
}

fn expected(items: &[(&str, &[u8])]) -> BTreeMap<(i32, String), (i32, Vec<u8>)> {
    items
        .iter()
        .map(|(id, config)| ((2, id.to_string()), (2, config.to_vec())))
        .collect()
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join(Store::FILE_NAME)
}

fn file_len(dir: &Path) -> u64 {
    fs::metadata(log_path(dir)).unwrap().len()
}

fn append_bytes(dir: &Path, bytes: &[u8]) {
    let mut contents = fs::read(log_path(dir)).unwrap();
    contents.extend_from_slice(bytes);
    fs::write(log_path(dir), contents).unwrap();
}

#[test]
fn committed_ops_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.commit([put("p1", &[1, 2]), put("p2", &[3])]).unwrap();
        store.commit([delete("p1")]).unwrap();
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
fn later_writes_win_and_kinds_are_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .commit([
            put("a", b"1"),
            put("b", b"1"),
            StoreWrite {
                kind: 3,
                id: "a",
                record: Some((1, b"other kind")),
            },
            put("a", b"2"),
        ])
        .unwrap();
    store.commit([delete("b"), delete("never")]).unwrap();
    store.commit([put("b", b"back")]).unwrap();
    store.commit(std::iter::empty()).unwrap();

    let loaded = store.load().unwrap();
    let found: Vec<_> = loaded
        .iter()
        .map(|s| {
            (
                s.kind,
                s.id.as_str(),
                s.record.operation,
                s.record.config.as_slice(),
            )
        })
        .collect();
    // In the order the keys were first written.
    assert_eq!(
        found,
        vec![
            (2, "a", 2, &b"2"[..]),
            (2, "b", 2, b"back"),
            (3, "a", 1, b"other kind"),
        ]
    );
    drop(store);
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(reopened.load().unwrap().len(), 3);
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
        store.commit([put("p1", b"port")]).unwrap();
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
    assert_eq!(contents(&store), expected(&[("p1", b"port")]));
}

#[test]
fn a_torn_tail_is_truncated_and_the_log_goes_on() {
    // What the end of the file can look like after a crash during an
    // append that was never acknowledged.
    type Tear = fn(&[u8]) -> Vec<u8>;
    let tails: [(&str, Tear); 6] = [
        ("a partial batch header", |batch| batch[..7].to_vec()),
        ("a partial batch", |batch| batch[..batch.len() - 3].to_vec()),
        ("zeros", |_| vec![0; 4096]),
        ("garbage", |_| {
            (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect()
        }),
        ("a whole batch with a bad body", |batch| {
            let mut batch = batch.to_vec();
            *batch.last_mut().unwrap() ^= 1;
            batch
        }),
        ("a batch whose header did not make it", |batch| {
            let mut batch = batch.to_vec();
            batch[..12].fill(0);
            batch
        }),
    ];
    for (what, tail) in tails {
        let dir = tempfile::tempdir().unwrap();
        // A batch as the log writes it, to tear.
        let batch = {
            let scratch = tempfile::tempdir().unwrap();
            Store::open(scratch.path())
                .unwrap()
                .commit([put("torn", &[9; 100]), put("torn2", b"x")])
                .unwrap();
            fs::read(log_path(scratch.path())).unwrap()[log::FILE_HEADER..].to_vec()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.commit([put("a", b"1"), put("b", b"2")]).unwrap();
            store.commit([put("a", b"3")]).unwrap();
        }
        let good = file_len(dir.path());
        append_bytes(dir.path(), &tail(&batch));

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(file_len(dir.path()), good, "{what}: truncated");
        assert_eq!(
            contents(&store),
            expected(&[("a", b"3"), ("b", b"2")]),
            "{what}"
        );
        store.commit([put("c", b"4")]).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            contents(&store),
            expected(&[("a", b"3"), ("b", b"2"), ("c", b"4")]),
            "{what}: after the next commit"
        );
    }
}

#[test]
fn corruption_before_intact_batches_is_an_error() {
    for (what, at_in_batch) in [("header", 2), ("body", 20)] {
        let dir = tempfile::tempdir().unwrap();
        let second = {
            let store = Store::open(dir.path()).unwrap();
            store.commit([put("a", b"1")]).unwrap();
            let second = file_len(dir.path());
            store.commit([put("b", &[7; 64])]).unwrap();
            store.commit([put("c", b"3")]).unwrap();
            second
        };
        let mut bytes = fs::read(log_path(dir.path())).unwrap();
        let at = second as usize + at_in_batch;
        bytes[at] ^= 0x40;
        fs::write(log_path(dir.path()), &bytes).unwrap();

        let error = Store::open(dir.path()).err().expect(what).to_string();
        assert!(
            error.contains(Store::FILE_NAME) && error.contains(&format!("offset {second}")),
            "{what}: {error}"
        );
        // Nothing was truncated.
        assert_eq!(fs::read(log_path(dir.path())).unwrap(), bytes);
    }
}

#[test]
fn a_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(log_path(dir.path()), b"SQLite format 3\0 and more").unwrap();
    let error = Store::open(dir.path()).err().unwrap().to_string();
    assert!(error.contains("not an Alcor state log"), "{error}");
    // Nor is one table's file taken for the other's.
    fs::remove_file(log_path(dir.path())).unwrap();
    drop(Store::open(dir.path()).unwrap());
    fs::copy(
        log_path(dir.path()),
        dir.path().join(Store::LEASES_FILE_NAME),
    )
    .unwrap();
    assert!(Store::open(dir.path()).is_err());
}

#[test]
fn the_state_dir_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let error = Store::open(dir.path()).err().unwrap().to_string();
    assert!(error.contains("locking"), "{error}");
    drop(store);
    Store::open(dir.path()).unwrap();
}

/// Rewrites `keys` keys `rounds` times (deleting every third in the last
/// round); returns what must be live.
fn churn(store: &Store, keys: usize, rounds: usize) -> BTreeMap<(i32, String), (i32, Vec<u8>)> {
    let mut model = BTreeMap::new();
    let ids: Vec<String> = (0..keys).map(|i| format!("neighbor-{i:04}")).collect();
    for round in 0..rounds {
        let config = vec![round as u8; 100];
        let last = round + 1 == rounds;
        let writes = ids.iter().enumerate().map(|(i, id)| {
            if last && i % 3 == 0 {
                delete(id)
            } else {
                put(id, &config)
            }
        });
        store.commit(writes).unwrap();
        for (i, id) in ids.iter().enumerate() {
            if last && i % 3 == 0 {
                model.remove(&(2, id.clone()));
            } else {
                model.insert((2, id.clone()), (2, config.clone()));
            }
        }
    }
    model
}

#[test]
fn compaction_keeps_exactly_the_live_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), 16 << 10).unwrap();
    let model = churn(&store, 100, 50);
    store.resources.wait_compaction();
    let (len, live, _, (compactions, _)) = store.resources.stats();
    assert!(compactions > 0);
    assert_eq!(len, file_len(dir.path()));
    // 50 rounds of 13 KiB were written; compactions kept the file near its
    // live data (twice it, and what commits appended during the last one).
    assert!(len < 100 << 10, "{len} bytes for {live} live");
    assert_eq!(contents(&store), model);
    assert!(!dir.path().join("desired-state.log.compact").exists());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(contents(&store), model);
}

#[test]
fn compaction_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let model = churn(&Store::open(dir.path()).unwrap(), 100, 30);
    let before = file_len(dir.path());
    let store = Store::open_with(dir.path(), 16 << 10).unwrap();
    let after = file_len(dir.path());
    assert!(after * 10 < before, "{before} → {after}");
    // Only live records are left, each of its own key: they load without
    // sorting out.
    assert_eq!(store.resources.stats(), (after, after - 16 - 12, 0, (1, 0)));
    assert_eq!(contents(&store), model);
    store.commit([put("new", b"1")]).unwrap();
    drop(store);
    let mut model = model;
    model.insert((2, "new".into()), (2, b"1".to_vec()));
    assert_eq!(contents(&Store::open(dir.path()).unwrap()), model);
}

#[test]
fn commits_go_on_while_compacting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), 8 << 10).unwrap();
    let mut model = BTreeMap::new();
    // Many small commits: compactions start along the way and run while
    // the next commits append.
    for i in 0..1500u32 {
        let id = format!("r{}", i % 40);
        let config = i.to_le_bytes().repeat(8);
        if i % 7 == 0 {
            store.commit([delete(&id)]).unwrap();
            model.remove(&(2, id));
        } else {
            store.commit([put(&id, &config)]).unwrap();
            model.insert((2, id), (2, config));
        }
        if i % 300 == 0 {
            assert_eq!(contents(&store), model, "at {i}");
        }
    }
    store.resources.wait_compaction();
    let (_, _, _, (compactions, overlapped)) = store.resources.stats();
    eprintln!("{compactions} compactions, {overlapped} beside commits");
    assert!(
        overlapped > 0,
        "{compactions} compactions, none beside commits"
    );
    assert_eq!(contents(&store), model);
    assert!(file_len(dir.path()) < 64 << 10);
    drop(store);
    assert_eq!(contents(&Store::open(dir.path()).unwrap()), model);
}

#[test]
fn an_unfinished_compaction_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap().commit([put("a", b"1")]));
    fs::write(dir.path().join("desired-state.log.compact"), b"half").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(!dir.path().join("desired-state.log.compact").exists());
    assert_eq!(contents(&store), expected(&[("a", b"1")]));
}

/// Neighbor-sized records: a 40-byte key, about 180 bytes in all.
fn neighbor_ids(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            format!(
                "{:08x}-0000-4000-8000-{:012x}",
                i * 2654435761 % (1 << 32),
                i
            )
        })
        .collect()
}

fn commit_in_batches(store: &Store, ids: &[String], config: &[u8], batches: &[usize]) {
    let mut start = 0;
    for &size in batches {
        let end = (start + size).min(ids.len());
        store
            .commit(ids[start..end].iter().map(|id| put(id, config)))
            .unwrap();
        start = end;
    }
}

#[test]
fn a_hundred_thousand_records() {
    let dir = tempfile::tempdir().unwrap();
    let ids = neighbor_ids(100_000);
    let config = [0x5a; 130];
    {
        let store = Store::open(dir.path()).unwrap();
        commit_in_batches(&store, &ids, &config, &[1_000, 9_000, 30_000, 60_000]);
    }
    let loaded = Store::open(dir.path()).unwrap().load().unwrap();
    assert_eq!(loaded.len(), ids.len());
    assert!(
        loaded
            .iter()
            .zip(&ids)
            .all(|(stored, id)| stored.id == *id && stored.record.config == config)
    );
}

/// Times a million neighbors as the engine commits them, and reading them
/// back. Run in release, on the disk the agent would use:
/// `TMPDIR=/var/tmp cargo test --release -p alcor-agent --lib million -- --ignored --nocapture`
#[test]
#[ignore]
fn a_million_records_timed() {
    let dir = tempfile::tempdir().unwrap();
    let ids = neighbor_ids(1_000_000);
    let config = [0x5a; 130];
    let batches = [10_000, 90_000, 300_000, 600_000];
    let seconds = |started: Instant| started.elapsed().as_secs_f64();

    let store = Store::open(dir.path()).unwrap();
    let started = Instant::now();
    let mut start = 0;
    for size in batches {
        let batch = Instant::now();
        commit_in_batches(&store, &ids[start..], &config, &[size]);
        start += size;
        eprintln!("commit of {size}: {:.3} s", seconds(batch));
    }
    eprintln!(
        "1M records committed in {:.3} s; the file is {} MB",
        seconds(started),
        file_len(dir.path()) >> 20
    );
    drop(store);

    let started = Instant::now();
    let store = Store::open(dir.path()).unwrap();
    let opened = seconds(started);
    let loaded = store.load().unwrap();
    eprintln!(
        "open {opened:.3} s, load {:.3} s ({} records)",
        seconds(started) - opened,
        loaded.len()
    );
    assert_eq!(loaded.len(), ids.len());
    drop(loaded);

    // Rewrite them all: the log doubles and a compaction starts, while
    // commits of 1,000 records go on beside it: paced as the engine could
    // make them (100k records/s), then back to back (capped, to spare the
    // disk).
    for (how, pause, cap) in [
        ("paced", Duration::from_millis(10), 3000),
        ("back to back", Duration::ZERO, 2000),
    ] {
        let (_, _, _, (before, _)) = store.resources.stats();
        commit_in_batches(&store, &ids, &config, &batches);
        let started = Instant::now();
        let (mut slowest, mut commits) = (0f64, 0);
        loop {
            let commit = Instant::now();
            if store.resources.stats().3.0 > before || commits == cap {
                break;
            }
            commit_in_batches(&store, &ids[commits % 1000 * 1000..], &config, &[1000]);
            slowest = slowest.max(seconds(commit));
            commits += 1;
            std::thread::sleep(pause.saturating_sub(commit.elapsed()));
        }
        while store.resources.stats().3.0 == before {
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = seconds(started);
        store.resources.wait_compaction();
        eprintln!(
            "{how}: compacted in {took:.3} s, {commits} commits of 1k meanwhile, the slowest \
             {slowest:.3} s; {} MB after",
            file_len(dir.path()) >> 20
        );
    }
    assert_eq!(store.load().unwrap().len(), ids.len());
}
