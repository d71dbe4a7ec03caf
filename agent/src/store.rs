//! Durable desired state: every accepted configuration, as the protobuf
//! bytes it arrived in with its operation, keyed by resource kind and id;
//! and the DHCP leases, written in batches by the responder's flusher
//! (`dhcp::leases`), which owns their encoding.
//!
//! The agent reads the store whole, once, at start, and writes it in
//! batches: one per goal-state transaction, committed before the reply is
//! sent, so that what a controller was told is applied survives a crash.
//! That is a log's workload, so each table is an append-only log in the
//! state directory: `desired-state.log` and `dhcp-leases.log`. A B-tree,
//! redb, took 1.5 s (sorted keys) to 6.6 s (random keys) to insert a
//! million neighbors of ~180 bytes on a shared 2-core host. The log commits
//! them, in batches of 10k, 90k, 300k and 600k, in 0.19–0.32 s with the
//! fdatasyncs (writing and syncing 174 MB alone took 0.1–0.5 s there); it
//! opens the file in 0.19–0.26 s and loads it in 0.34–0.42 s (release
//! build, ext4; `tests::a_million_records_timed`).
//!
//! # Format
//!
//! A file is a 16-byte header (magic `ALCORLOG`, format version, table tag)
//! then batches. A batch is a header of three little-endian u32 — body
//! length, CRC-32 of the body, CRC-32 of those 8 bytes — and a body of
//! records: an operation byte (1 put, 2 delete), key length and value
//! length (u32 LE), the key, the value (empty for a delete). A resource's
//! key is its kind (i32 LE) then its id, its value the operation (i32 LE)
//! then the configuration; a lease's key is the client MAC then the VPC id,
//! its value the encoded lease. Replay applies the records in order, the
//! last one of a key winning.
//!
//! # Durability
//!
//! A commit is one batch, written at the end of the file as it is encoded
//! (in 4 MiB writes, the batch header last, so that a million records are
//! not first copied to a buffer of their own) and made durable with one
//! `fdatasync` before it returns. A failed append is cut off again (if that
//! fails too, appends are refused until the agent restarts), so the file
//! holds acknowledged batches only. At open, an invalid batch that no
//! intact batch follows is a torn tail — the last append, never
//! acknowledged, reached the disk in part — and is truncated with a
//! warning; an invalid batch that an intact one follows is corruption, and
//! opening fails naming the file and the offset. The state directory is
//! locked (`flock`) while a store is open.
//!
//! # Compaction
//!
//! Rewritten and deleted resources leave dead records behind. Each log
//! estimates its live data with a map from a 64-bit hash of each live key
//! to the size of its record (about 35 MB for a million keys; two keys of
//! one hash would count as one). When the file is larger than 64 MiB and
//! than twice its live data, at open or after a commit, the live records
//! are written to `NAME.compact`, which is synced, renamed over the log,
//! and the directory synced: a crash leaves the old file or the new one,
//! never a mix (an unfinished `.compact` is removed at open). After a
//! commit a thread does it while commits go on appending to the old file;
//! it copies what they appended to the new file, the last of it holding
//! commits back, before the rename; it runs again if what they appended
//! leaves the log over the threshold. Rewriting a million neighbors
//! doubles the log (350 MB). Compacting it took 0.8–1.4 s while commits of
//! 1,000 records went on at 100k records/s (the slowest of them 17–80 ms,
//! against 1–3 ms otherwise), and 1.8–2.1 s while 2,000 of them went on
//! back to back (the slowest 7–90 ms; up to 0.3 s on a busier machine):
//! the swap holds commits for at most 4 ms, the rest is the disk they
//! share. Commits that outpace the copy for long make the log grow by what
//! they write meanwhile, until the next pass.
//!
//! Loading needs to sort out dead records with a map of every key, unless
//! the log knows there are none (after a first push, or a compaction that
//! no commit ran beside): then it reads the records as they come.

mod log;

use std::{
    fs::{File, TryLockError},
    path::{Path, PathBuf},
};

use self::log::Log;
use crate::core::desired::StoreWrite;

/// The table tags of the two logs' headers.
const RESOURCES_TAG: u32 = 1;
const LEASES_TAG: u32 = 2;
/// A log is compacted only past this size (and twice its live data).
const COMPACT_MIN_BYTES: u64 = 64 << 20;

/// A stored resource: its operation and configuration as received.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The wire value of `OperationType`.
    pub operation: i32,
    /// The encoded configuration message.
    pub config: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {cause}")]
pub struct StoreError {
    path: PathBuf,
    cause: Cause,
}

impl StoreError {
    fn new(path: &Path, cause: Cause) -> StoreError {
        StoreError {
            path: path.to_path_buf(),
            cause,
        }
    }

    /// What a store that refuses writes says (for fakes of it).
    #[cfg(test)]
    pub(crate) fn refusing(reason: &str) -> StoreError {
        StoreError::new(Path::new("(fake)"), Cause::Broken(reason.into()))
    }
}

#[derive(Debug, thiserror::Error)]
enum Cause {
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("corrupt at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("refusing writes until the agent restarts: {0}")]
    Broken(String),
}

/// One lease to write, or to delete (`None`).
#[derive(Debug)]
pub struct LeaseWrite {
    pub vpc_id: String,
    pub mac: [u8; 6],
    pub record: Option<Vec<u8>>,
}

pub struct Store {
    resources: Log,
    leases: Log,
    /// Holds the state directory's lock: dropped last.
    _lock: File,
}

pub struct Stored {
    pub kind: i32,
    pub id: String,
    pub record: Record,
}

impl Store {
    pub const FILE_NAME: &'static str = "desired-state.log";
    pub const LEASES_FILE_NAME: &'static str = "dhcp-leases.log";

    /// Opens (or creates) the store in `state_dir`, which must exist.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(state_dir, COMPACT_MIN_BYTES)
    }

    fn open_with(state_dir: &Path, compact_min: u64) -> Result<Store, StoreError> {
        let lock_failed = |what, error| StoreError::new(state_dir, Cause::Io { what, error });
        let lock = File::open(state_dir).map_err(|e| lock_failed("opening", e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(lock_failed(
                    "locking",
                    std::io::Error::other("another store (another agent?) has it open"),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(lock_failed("locking", e)),
        }
        Ok(Store {
            resources: Log::open(state_dir, Self::FILE_NAME, RESOURCES_TAG, compact_min)?,
            leases: Log::open(state_dir, Self::LEASES_FILE_NAME, LEASES_TAG, compact_min)?,
            _lock: lock,
        })
    }

    /// Every stored resource, in the order it was first stored.
    pub fn load(&self) -> Result<Vec<Stored>, StoreError> {
        let mut stored = Vec::with_capacity(self.resources.live_records());
        self.resources.for_each_live(|key, value| {
            let (kind, id) = key
                .split_first_chunk::<4>()
                .ok_or("a resource key without a kind")?;
            let id = std::str::from_utf8(id).map_err(|_| "a resource id that is not UTF-8")?;
            let (operation, config) = value
                .split_first_chunk::<4>()
                .ok_or("a resource record without an operation")?;
            stored.push(Stored {
                kind: i32::from_le_bytes(*kind),
                id: id.to_string(),
                record: Record {
                    operation: i32::from_le_bytes(*operation),
                    config: config.to_vec(),
                },
            });
            Ok(())
        })?;
        Ok(stored)
    }

    /// Applies `writes` atomically and durably, in order (the last write of
    /// a resource wins).
    pub fn commit<'a>(
        &self,
        writes: impl IntoIterator<Item = StoreWrite<'a>>,
    ) -> Result<(), StoreError> {
        let writes = writes.into_iter();
        self.resources.append(writes.size_hint().0, |batch| {
            for write in writes {
                let kind = write.kind.to_le_bytes();
                let key = [kind.as_slice(), write.id.as_bytes()];
                match write.record {
                    Some((operation, config)) => {
                        batch.put(&key, &[&operation.to_le_bytes(), config]);
                    }
                    None => batch.delete(&key),
                }
            }
        })
    }

    /// Every stored lease, encoded.
    pub fn load_leases(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut leases = Vec::new();
        self.leases.for_each_live(|_, value| {
            leases.push(value.to_vec());
            Ok(())
        })?;
        Ok(leases)
    }

    /// Applies a batch of lease changes atomically and durably.
    pub fn commit_leases(&self, writes: &[LeaseWrite]) -> Result<(), StoreError> {
        self.leases.append(writes.len(), |batch| {
            for write in writes {
                let key = [write.mac.as_slice(), write.vpc_id.as_bytes()];
                match &write.record {
                    Some(record) => batch.put(&key, &[record]),
                    None => batch.delete(&key),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests;
