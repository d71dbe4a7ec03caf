//! The file under each table of the store: an append-only log of checksummed
//! batches of key → value records (see the `store` module for the format and
//! its guarantees). This module knows bytes only; `store` gives keys and
//! values their meaning.

use std::{
    collections::{HashMap, hash_map},
    ffi::OsString,
    fs::{self, File, OpenOptions},
    hash::BuildHasher,
    io::{self, Read},
    ops::Range,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    thread::{self, JoinHandle},
    time::Instant,
};

use super::{Cause, StoreError};

type Hasher = foldhash::fast::RandomState;

const MAGIC: [u8; 8] = *b"ALCORLOG";
const VERSION: u32 = 1;
/// Magic, format version, table tag.
pub const FILE_HEADER: usize = 16;
/// Body length, body CRC, CRC of those two.
const BATCH_HEADER: usize = 12;
/// Operation, key length, value length.
const RECORD_HEADER: usize = 9;
const PUT: u8 = 1;
const DELETE: u8 = 2;
/// Compaction writes the live records in batches of about this size.
const COMPACT_BATCH_BYTES: usize = 64 << 20;
/// Compaction copies the batches appended while it ran without holding up
/// commits, until fewer than this many bytes are left to copy.
const CATCH_UP_BYTES: u64 = 1 << 20;
const CATCH_UP_ROUNDS: usize = 16;
/// Compactions in a row at most, when commits keep the log over the
/// threshold while it is compacted.
const COMPACT_PASSES: usize = 3;

/// Commits write their batch in chunks of this size as they encode it, so
/// that a million records are not first copied to a buffer of their own.
const WRITE_CHUNK: usize = 4 << 20;

/// The records of one commit, written as they are encoded: in chunks after
/// the place of the batch header, which is written last.
pub struct Batch<'f> {
    file: &'f File,
    /// Where the batch starts in the file.
    start: u64,
    /// Records not written yet.
    buf: Vec<u8>,
    /// How many bytes of the body are written, and their CRC.
    written: u64,
    crc: crc32fast::Hasher,
    /// What the batch does to the live-size index: (key hash, record
    /// size), the size 0 for a delete.
    changes: Vec<(u64, u32)>,
    hasher: &'f Hasher,
    /// The first write that failed; the records that follow are dropped.
    error: Option<io::Error>,
}

impl Batch<'_> {
    /// Puts the key made of `key`'s parts, with the value made of `value`'s.
    pub fn put(&mut self, key: &[&[u8]], value: &[&[u8]]) {
        self.record(PUT, key, value);
    }

    pub fn delete(&mut self, key: &[&[u8]]) {
        self.record(DELETE, key, &[]);
    }

    fn record(&mut self, op: u8, key: &[&[u8]], value: &[&[u8]]) {
        let start = self.buf.len();
        let key_len: usize = key.iter().map(|part| part.len()).sum();
        let value_len: usize = value.iter().map(|part| part.len()).sum();
        // Lengths past u32 make the batch too large for `finish`, which
        // refuses it.
        self.buf.push(op);
        self.buf.extend_from_slice(&(key_len as u32).to_le_bytes());
        self.buf
            .extend_from_slice(&(value_len as u32).to_le_bytes());
        let key_start = self.buf.len();
        for part in key {
            self.buf.extend_from_slice(part);
        }
        let hash = self.hasher.hash_one(&self.buf[key_start..]);
        for part in value {
            self.buf.extend_from_slice(part);
        }
        let size = if op == PUT {
            (self.buf.len() - start) as u32
        } else {
            0
        };
        self.changes.push((hash, size));
        if self.buf.len() >= WRITE_CHUNK {
            self.write_buf();
        }
    }

    fn write_buf(&mut self) {
        if self.error.is_none() {
            self.crc.update(&self.buf);
            let at = self.start + (BATCH_HEADER as u64) + self.written;
            match self.file.write_all_at(&self.buf, at) {
                Ok(()) => self.written += self.buf.len() as u64,
                Err(error) => self.error = Some(error),
            }
        }
        self.buf.clear();
    }

    /// Writes the rest and the header, and makes the batch durable;
    /// returns its length.
    fn finish(&mut self) -> io::Result<u64> {
        self.write_buf();
        if let Some(error) = self.error.take() {
            return Err(error);
        }
        let len = u32::try_from(self.written).map_err(|_| {
            io::Error::other(format!("a batch of {} bytes is over 4 GiB", self.written))
        })?;
        let mut header = [0; BATCH_HEADER];
        header[0..4].copy_from_slice(&len.to_le_bytes());
        header[4..8].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        let header_crc = crc32fast::hash(&header[0..8]);
        header[8..12].copy_from_slice(&header_crc.to_le_bytes());
        self.file.write_all_at(&header, self.start)?;
        self.file.sync_data()?;
        Ok(BATCH_HEADER as u64 + self.written)
    }
}

/// Fills in the header of a batch whose records follow it in `buf`.
fn seal(buf: &mut [u8]) -> Result<(), String> {
    let body = buf.len() - BATCH_HEADER;
    let len = u32::try_from(body).map_err(|_| format!("a batch of {body} bytes is over 4 GiB"))?;
    let body_crc = crc32fast::hash(&buf[BATCH_HEADER..]);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32fast::hash(&buf[0..8]);
    buf[8..12].copy_from_slice(&header_crc.to_le_bytes());
    Ok(())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// A record as replay finds it.
#[derive(Clone, Copy)]
pub struct Found<'a> {
    /// Where the record starts in the file.
    pub offset: u64,
    pub key: &'a [u8],
    /// `None` for a delete.
    pub value: Option<&'a [u8]>,
    /// The whole record as it is in the file.
    raw: &'a [u8],
}

enum BatchAt {
    /// Intact; its body is this range.
    Intact(Range<usize>),
    /// The header is intact and says the batch runs past the end of the
    /// file: the rest of the file is the start of this batch.
    Cut,
    /// Not a batch.
    Bad(&'static str),
}

fn batch_at(bytes: &[u8], at: usize) -> BatchAt {
    if bytes.len() - at < BATCH_HEADER {
        return BatchAt::Bad("an incomplete batch header");
    }
    let len = u32_at(bytes, at) as usize;
    if crc32fast::hash(&bytes[at..at + 8]) != u32_at(bytes, at + 8) || len < RECORD_HEADER {
        return BatchAt::Bad("a batch header that fails its checksum");
    }
    let body = at + BATCH_HEADER..at + BATCH_HEADER + len;
    if body.end > bytes.len() {
        return BatchAt::Cut;
    }
    if crc32fast::hash(&bytes[body.clone()]) != u32_at(bytes, at + 4) {
        return BatchAt::Bad("a batch that fails its checksum");
    }
    BatchAt::Intact(body)
}

/// Whether an intact batch starts anywhere in `bytes` after `at`.
fn intact_batch_after(bytes: &[u8], at: usize) -> bool {
    (at + 1..bytes.len().saturating_sub(BATCH_HEADER - 1)).any(|start| {
        // The length test first: it rules out most offsets without a CRC.
        let len = u32_at(bytes, start) as usize;
        len >= RECORD_HEADER
            && len <= bytes.len() - start - BATCH_HEADER
            && matches!(batch_at(bytes, start), BatchAt::Intact(_))
    })
}

/// Calls `each` with every record of the intact batches of `bytes` (a
/// whole log file, header checked), in order. Returns where they end: the
/// length of the file, or where its torn tail starts.
///
/// An invalid batch is a torn tail if no intact batch follows it (the last
/// append, never acknowledged, reached the disk in part); otherwise it is
/// corruption, and an error.
fn replay<'a>(bytes: &'a [u8], mut each: impl FnMut(Found<'a>)) -> Result<usize, Cause> {
    let mut at = FILE_HEADER;
    while at < bytes.len() {
        match batch_at(bytes, at) {
            BatchAt::Intact(body) => {
                records(bytes, body.clone(), &mut each)?;
                at = body.end;
            }
            BatchAt::Cut => return Ok(at),
            BatchAt::Bad(what) => {
                if intact_batch_after(bytes, at) {
                    return Err(Cause::Corrupt {
                        offset: at as u64,
                        reason: format!("{what}, followed by intact batches"),
                    });
                }
                return Ok(at);
            }
        }
    }
    Ok(at)
}

fn records<'a>(
    bytes: &'a [u8],
    body: Range<usize>,
    each: &mut impl FnMut(Found<'a>),
) -> Result<(), Cause> {
    let mut at = body.start;
    while at < body.end {
        let malformed = || Cause::Corrupt {
            offset: at as u64,
            reason: "a malformed record in an intact batch".into(),
        };
        if body.end - at < RECORD_HEADER {
            return Err(malformed());
        }
        let key_start = at + RECORD_HEADER;
        let key_end = key_start + u32_at(bytes, at + 1) as usize;
        let end = key_end + u32_at(bytes, at + 5) as usize;
        if end > body.end {
            return Err(malformed());
        }
        let value = match bytes[at] {
            PUT => Some(&bytes[key_end..end]),
            DELETE if end == key_end => None,
            _ => return Err(malformed()),
        };
        each(Found {
            offset: at as u64,
            key: &bytes[key_start..key_end],
            value,
            raw: &bytes[at..end],
        });
        at = end;
    }
    Ok(())
}

/// The live records of a log, in the order their keys first appeared.
struct Live<'a> {
    slots: Vec<Option<Found<'a>>>,
    by_key: HashMap<&'a [u8], usize, Hasher>,
}

impl<'a> Live<'a> {
    fn with_capacity(capacity: usize) -> Self {
        Live {
            slots: Vec::with_capacity(capacity),
            by_key: HashMap::with_capacity_and_hasher(capacity, Hasher::default()),
        }
    }

    fn apply(&mut self, found: Found<'a>) {
        let live = found.value.is_some().then_some(found);
        match self.by_key.entry(found.key) {
            hash_map::Entry::Occupied(slot) => self.slots[*slot.get()] = live,
            hash_map::Entry::Vacant(slot) => {
                if live.is_some() {
                    slot.insert(self.slots.len());
                    self.slots.push(live);
                }
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Found<'a>> {
        self.slots.iter().flatten()
    }
}

/// An open log.
pub struct Log {
    shared: Arc<Shared>,
    /// The running or last compaction.
    compactor: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    path: PathBuf,
    dir: PathBuf,
    /// Which table the file holds (checked at open).
    tag: u32,
    /// The log is compacted when it is larger than this and than twice its
    /// live records.
    compact_min: u64,
    hasher: Hasher,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// The length of the file: every byte of it is an acknowledged batch.
    len: u64,
    /// Hash of each live key → the size of its record: an estimate of the
    /// live data (two keys of one hash count as one), to know when to
    /// compact.
    index: HashMap<u64, u32, Hasher>,
    /// The sum of the index's sizes.
    live: u64,
    compacting: bool,
    /// After a failed compaction, the next waits for the log to reach this.
    retry_at: u64,
    /// Why appends are refused: a failed append could not be undone, or a
    /// compaction's rename could not be made durable. Reopening recovers.
    broken: Option<String>,
    /// How many records of the file are not live (overwritten, deleted, or
    /// deletes); 0 means each record is live and of a key of its own, as
    /// after a first push or a compaction. When unsure (after a compaction
    /// that copied appended batches), it errs high.
    dead: u64,
    /// How many compactions replaced the file, and how many of them ran
    /// while commits appended.
    #[cfg(test)]
    compactions: (u32, u32),
}

impl State {
    fn account(&mut self, hash: u64, size: u32) {
        let previous = if size == 0 {
            self.dead += 1;
            self.index.remove(&hash)
        } else {
            self.live += u64::from(size);
            self.index.insert(hash, size)
        };
        if let Some(previous) = previous {
            self.live -= u64::from(previous);
            self.dead += 1;
        }
    }

    fn wants_compaction(&self, min: u64) -> bool {
        !self.compacting
            && self.len >= self.retry_at
            && self.len > min
            && self.len > 2 * (self.live + FILE_HEADER as u64)
    }
}

/// `path` with `.compact` appended: where compaction writes the new file.
fn compact_path(path: &Path) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(".compact");
    PathBuf::from(name)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_range(file: &File, range: Range<u64>) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; (range.end - range.start) as usize];
    file.read_exact_at(&mut bytes, range.start)?;
    Ok(bytes)
}

/// Copies `range` of `from` to `to` at `at`.
fn copy_range(from: &File, range: Range<u64>, to: &File, mut at: u64) -> io::Result<()> {
    const CHUNK: u64 = 8 << 20;
    let mut start = range.start;
    while start < range.end {
        let chunk = read_range(from, start..range.end.min(start + CHUNK))?;
        to.write_all_at(&chunk, at)?;
        start += chunk.len() as u64;
        at += chunk.len() as u64;
    }
    Ok(())
}

fn file_header(tag: u32) -> [u8; FILE_HEADER] {
    let mut header = [0; FILE_HEADER];
    header[0..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&tag.to_le_bytes());
    header
}

fn check_header(bytes: &[u8], tag: u32) -> Result<(), Cause> {
    let corrupt = |reason: String| Cause::Corrupt { offset: 0, reason };
    if bytes.len() < FILE_HEADER || bytes[0..8] != MAGIC {
        return Err(corrupt("not an Alcor state log".into()));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(corrupt(format!(
            "format version {version}; this agent reads version {VERSION}"
        )));
    }
    let found = u32_at(bytes, 12);
    if found != tag {
        return Err(corrupt(format!("holds table {found}, not table {tag}")));
    }
    Ok(())
}

impl Log {
    /// Opens the log `name` in `dir` (creating it empty if there is none),
    /// truncates a torn tail, and compacts it if it is mostly dead records.
    pub fn open(dir: &Path, name: &str, tag: u32, compact_min: u64) -> Result<Log, StoreError> {
        let path = dir.join(name);
        let fail = |cause: Cause| StoreError::new(&path, cause);
        let io = |what: &'static str| {
            move |source| {
                fail(Cause::Io {
                    what,
                    error: source,
                })
            }
        };

        // A compaction that did not finish: the log is the file it started from.
        match fs::remove_file(compact_path(&path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io("removing an unfinished compaction")(e));
            }
            _ => {}
        }
        if !path.exists() {
            create(&path, dir, tag).map_err(io("creating"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("opening"))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("reading"))?;
        check_header(&bytes, tag).map_err(fail)?;

        let hasher = Hasher::default();
        let mut state = State {
            file,
            len: 0,
            index: HashMap::with_hasher(Hasher::default()),
            live: 0,
            compacting: false,
            retry_at: 0,
            broken: None,
            dead: 0,
            #[cfg(test)]
            compactions: (0, 0),
        };
        let end = replay(&bytes, |found| {
            let size = found.value.map_or(0, |_| found.raw.len() as u32);
            state.account(hasher.hash_one(found.key), size);
        })
        .map_err(fail)?;
        if end < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                offset = end,
                bytes = bytes.len() - end,
                "the state store ends in a torn batch (a write that was never acknowledged); \
                 truncated"
            );
            state.file.set_len(end as u64).map_err(io("truncating"))?;
            state.file.sync_data().map_err(io("truncating"))?;
        }
        state.len = end as u64;
        drop(bytes);

        let compact = state.wants_compaction(compact_min);
        let log = Log {
            shared: Arc::new(Shared {
                path: path.clone(),
                dir: dir.to_path_buf(),
                tag,
                compact_min,
                hasher,
                state: Mutex::new(state),
            }),
            compactor: Mutex::new(None),
        };
        if compact {
            log.shared.compact_and_report();
        }
        Ok(log)
    }

    /// Appends the batch that `fill` makes (of about `records` records)
    /// and makes it durable (fdatasync). Other appends wait meanwhile.
    pub fn append(
        &self,
        records: usize,
        fill: impl FnOnce(&mut Batch<'_>),
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        let mut state = shared.lock();
        if let Some(reason) = &state.broken {
            return Err(shared.error(Cause::Broken(reason.clone())));
        }
        let at = state.len;
        let mut batch = Batch {
            file: &state.file,
            start: at,
            buf: Vec::with_capacity(WRITE_CHUNK.min(records * 256) + (64 << 10)),
            written: 0,
            crc: crc32fast::Hasher::new(),
            changes: Vec::with_capacity(records),
            hasher: &shared.hasher,
            error: None,
        };
        fill(&mut batch);
        if batch.changes.is_empty() {
            // Nothing was written.
            return Ok(());
        }
        let written = batch.finish();
        let changes = batch.changes;
        let len = match written {
            Ok(len) => len,
            Err(error) => {
                // Not acknowledged: cut it off, or a later batch would
                // follow it and make it count at the next open.
                if let Err(e) = state.file.set_len(at).and_then(|()| state.file.sync_data()) {
                    state.broken = Some(format!("a failed append could not be undone: {e}"));
                }
                return Err(shared.error(Cause::Io {
                    what: "appending",
                    error,
                }));
            }
        };
        state.len += len;
        state.index.reserve(changes.len());
        for (hash, size) in changes {
            state.account(hash, size);
        }
        if state.wants_compaction(shared.compact_min) {
            state.compacting = true;
            drop(state);
            self.spawn_compaction();
        }
        Ok(())
    }

    fn spawn_compaction(&self) {
        let mut compactor = self
            .compactor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The previous compaction, if any, has ended: `compacting` was off.
        if let Some(done) = compactor.take() {
            let _ = done.join();
        }
        let shared = self.shared.clone();
        let spawned = thread::Builder::new()
            .name("store-compact".into())
            .spawn(move || shared.compact_and_report());
        match spawned {
            Ok(handle) => *compactor = Some(handle),
            Err(error) => {
                tracing::warn!(%error, "could not start compacting the state store");
                let mut state = self.shared.lock();
                state.compacting = false;
                state.retry_at = state.len + self.shared.compact_min;
            }
        }
    }

    /// Waits for a running compaction to end.
    #[cfg(test)]
    pub fn wait_compaction(&self) {
        let handle = self.compactor.lock().unwrap().take();
        if let Some(handle) = handle {
            handle.join().unwrap();
        }
    }

    /// The length of the file, the estimate of its live data, the count of
    /// its dead records, and the compactions so far (all, and those that
    /// copied appended batches).
    #[cfg(test)]
    pub fn stats(&self) -> (u64, u64, u64, (u32, u32)) {
        let state = self.shared.lock();
        (state.len, state.live, state.dead, state.compactions)
    }

    /// Calls `each` with the key and value of every live record, in the
    /// order the keys were first written; an error it returns is reported
    /// as corruption at that record's offset.
    pub fn for_each_live(
        &self,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        let (bytes, live, dead) = {
            let state = shared.lock();
            let bytes = read_range(&state.file, 0..state.len).map_err(|source| {
                shared.error(Cause::Io {
                    what: "reading",
                    error: source,
                })
            })?;
            (bytes, state.index.len(), state.dead)
        };
        let mut failed = None;
        let mut emit = |found: &Found<'_>| {
            if failed.is_none()
                && let Err(reason) = each(found.key, found.value.unwrap_or_default())
            {
                failed = Some(Cause::Corrupt {
                    offset: found.offset,
                    reason,
                });
            }
        };
        let end = if dead == 0 {
            // No record to sort out: each is live, of a key of its own.
            replay(&bytes, |found| emit(&found))
        } else {
            let mut records = Live::with_capacity(live);
            let end = replay(&bytes, |found| records.apply(found));
            records.iter().for_each(emit);
            end
        }
        .map_err(|cause| shared.error(cause))?;
        if end != bytes.len() {
            return Err(shared.error(Cause::Corrupt {
                offset: end as u64,
                reason: "an acknowledged batch no longer reads back intact".into(),
            }));
        }
        failed.map_or(Ok(()), |cause| Err(shared.error(cause)))
    }

    /// How many records are live (an estimate, see `State::index`).
    pub fn live_records(&self) -> usize {
        self.shared.lock().index.len()
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        // A compaction renames over the file: it must end before another
        // `Log` can open it.
        let handle = self
            .compactor
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Creates an empty log at `path`, whole or not at all.
fn create(path: &Path, dir: &Path, tag: u32) -> io::Result<()> {
    let temporary = compact_path(path);
    let file = File::create(&temporary)?;
    file.write_all_at(&file_header(tag), 0)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    sync_dir(dir)
}

/// What a compaction did.
struct Compacted {
    before: u64,
    after: u64,
    records: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn error(&self, cause: Cause) -> StoreError {
        StoreError::new(&self.path, cause)
    }

    /// Compacts the log, and again while what commits appended meanwhile
    /// leaves it over the threshold (no commit may come to start another).
    fn compact_and_report(&self) {
        for _ in 0..COMPACT_PASSES {
            let started = Instant::now();
            let temporary = compact_path(&self.path);
            match self.compact(&temporary) {
                Ok(done) => tracing::info!(
                    path = %self.path.display(),
                    before = done.before,
                    after = done.after,
                    records = done.records,
                    millis = started.elapsed().as_millis() as u64,
                    "compacted the state store"
                ),
                Err(error) => {
                    let _ = fs::remove_file(&temporary);
                    tracing::warn!(%error, "compacting the state store failed; it goes on growing");
                    let mut state = self.lock();
                    state.retry_at = state.len + self.compact_min;
                    break;
                }
            }
            let mut state = self.lock();
            state.compacting = false;
            if !state.wants_compaction(self.compact_min) {
                return;
            }
            state.compacting = true;
        }
        self.lock().compacting = false;
    }

    /// Rewrites the log as its live records, then renames the new file over
    /// it. Commits go on meanwhile: the batches they append are copied to
    /// the new file, the last of them with the log held, so that the new
    /// file has everything when it replaces the old one.
    fn compact(&self, temporary: &Path) -> Result<Compacted, StoreError> {
        let io = |what: &'static str| {
            move |source| {
                self.error(Cause::Io {
                    what,
                    error: source,
                })
            }
        };
        let (source, snapshot, live) = {
            let state = self.lock();
            let source = state.file.try_clone().map_err(io("compacting"))?;
            (source, state.len, state.index.len())
        };
        let bytes = read_range(&source, 0..snapshot).map_err(io("compacting: reading"))?;
        let mut records = Live::with_capacity(live);
        replay(&bytes, |found| records.apply(found)).map_err(|cause| self.error(cause))?;

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(temporary)
            .map_err(io("compacting: creating"))?;
        let mut len = write_records(&file, self.tag, records.iter().map(|found| found.raw))
            .map_err(io("compacting: writing"))?;
        let count = records.iter().count();
        drop(records);
        drop(bytes);

        // Catch up with the commits made meanwhile, without the lock: copy
        // what they appended until little is new (unless they keep
        // outpacing the copy), sync, and copy what came during the sync.
        let mut copied = snapshot;
        let catch_up = |copied: &mut u64, len: &mut u64| -> Result<(), StoreError> {
            for _ in 0..CATCH_UP_ROUNDS {
                let end = self.lock().len;
                if end - *copied <= CATCH_UP_BYTES {
                    break;
                }
                copy_range(&source, *copied..end, &file, *len)
                    .map_err(io("compacting: copying"))?;
                *len += end - *copied;
                *copied = end;
            }
            Ok(())
        };
        catch_up(&mut copied, &mut len)?;
        file.sync_data().map_err(io("compacting: syncing"))?;
        catch_up(&mut copied, &mut len)?;

        // The rest with the log held, then the swap.
        let mut state = self.lock();
        let end = state.len;
        copy_range(&source, copied..end, &file, len).map_err(io("compacting: copying"))?;
        len += end - copied;
        file.sync_data().map_err(io("compacting: syncing"))?;
        fs::rename(temporary, &self.path).map_err(io("compacting: renaming"))?;
        // The new file is the log from here on, whatever happens next.
        state.file = file;
        state.len = len;
        if end == snapshot {
            state.dead = 0;
        } else {
            // The copied batches may overwrite records of the compacted
            // part: unknown.
            state.dead = state.dead.max(1);
        }
        #[cfg(test)]
        {
            state.compactions.0 += 1;
            state.compactions.1 += u32::from(end > snapshot);
        }
        if let Err(e) = sync_dir(&self.dir) {
            // A crash could bring back the old file, without what is
            // appended to the new one from now on.
            state.broken = Some(format!("the compacted file's rename is not durable: {e}"));
            return Err(io("compacting: syncing the directory")(e));
        }
        Ok(Compacted {
            before: end,
            after: len,
            records: count,
        })
    }
}

/// Writes a file header and `records` (raw, as found in a log) to `file`,
/// in batches; returns the length written.
fn write_records<'a>(
    file: &File,
    tag: u32,
    records: impl Iterator<Item = &'a [u8]>,
) -> io::Result<u64> {
    file.write_all_at(&file_header(tag), 0)?;
    let mut len = FILE_HEADER as u64;
    let mut buf = Vec::with_capacity(COMPACT_BATCH_BYTES + (1 << 20));
    let flush = |buf: &mut Vec<u8>, len: &mut u64| -> io::Result<()> {
        if buf.len() > BATCH_HEADER {
            seal(buf).map_err(io::Error::other)?;
            file.write_all_at(buf, *len)?;
            // A batch at a time: the commits' own syncs can wait for the
            // file system's journal behind this one, so not all at once.
            file.sync_data()?;
            *len += buf.len() as u64;
        }
        buf.clear();
        buf.resize(BATCH_HEADER, 0);
        Ok(())
    };
    flush(&mut buf, &mut len)?;
    for raw in records {
        buf.extend_from_slice(raw);
        if buf.len() >= COMPACT_BATCH_BYTES {
            flush(&mut buf, &mut len)?;
        }
    }
    flush(&mut buf, &mut len)?;
    Ok(len)
}
