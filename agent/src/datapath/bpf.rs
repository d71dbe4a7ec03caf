//! The bpf(2) calls aya 0.14 does not offer: batched map operations
//! (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`, `BPF_MAP_LOOKUP_BATCH`,
//! Linux 5.6), `BPF_LINK_DETACH` ([`detach_pinned_link`]), and a test run
//! of a program known only by a descriptor ([`test_run`]: aya's needs the
//! program object, which the datapath's writer keeps).
//!
//! Batches: one
//! bpf(2) call writes, removes or reads thousands of entries, where one
//! call per entry makes a million neighbors cost seconds of syscalls.
//!
//! The kernel's hash maps do a batch update or delete as a loop of the
//! ordinary per-entry operation (each entry replaced atomically, as with
//! single updates; no lock over the whole batch), so programs see the same
//! states in between as with single calls. A failure stops the loop; the
//! kernel reports how many entries it did, and [`update`] and [`delete`]
//! report the error with the offset of the entry that failed.
//!
//! Safety rests on two facts checked before every call: the map's key and
//! value sizes are those of `K` and `V` (the kernel reads and writes
//! `count × size` bytes through the pointers we pass), and `K` and `V` are
//! [`aya::Pod`] (any bytes the kernel writes are valid values).

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::{
        fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::maps::MapData;

/// bpf(2) commands (uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Entries per bpf(2) call: big enough that the syscall costs nothing per
/// entry, small enough that one call holds the CPU only a few milliseconds
/// (the kernel also reschedules between entries) and its buffers stay small.
pub const CHUNK: usize = 16 * 1024;

/// `union bpf_attr`'s `batch` member, as the kernel reads it. Padded to
/// the size of the union's largest member the kernel checks against (it
/// requires the bytes past what a command uses to be zero).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A batch operation failed at entry `done` (the entries before it were
/// done).
#[derive(Debug, thiserror::Error)]
#[error("batch operation failed after {done} entries")]
pub struct BatchError {
    pub done: usize,
    #[source]
    pub source: io::Error,
}

/// Checks that the map's keys and values are `K` and `V` as the kernel
/// sees them (sizes), which makes the raw pointers below sound.
fn check_sizes<K, V>(map: &MapData) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    if info.key_size() as usize != size_of::<K>() || info.value_size() as usize != size_of::<V>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "map has {}-byte keys and {}-byte values, not {} and {}",
                info.key_size(),
                info.value_size(),
                size_of::<K>(),
                size_of::<V>()
            ),
        ));
    }
    Ok(())
}

/// One bpf(2) batch call; returns the kernel's count (entries done).
///
/// # Safety
/// `attr`'s pointers must be valid for what `cmd` reads and writes through
/// them: `count` keys (and values) of the map's sizes.
unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<u32> {
    // SAFETY: the attribute is a valid `bpf_attr` prefix of the size given;
    // its pointers are valid per the caller.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(attr.count)
    }
}

/// `union bpf_attr`'s `test` member (`BPF_PROG_TEST_RUN`), as the kernel
/// reads it.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What a test run returned: the program's return value, and how many
/// bytes of `data_out` it filled.
pub struct TestRun {
    pub return_value: u32,
    pub data_size_out: u32,
}

/// Runs the program `program` once on `data_in` with the context `ctx_in`
/// (`BPF_PROG_TEST_RUN`, Linux 4.12); the frame it leaves goes to
/// `data_out`, the context to `ctx_out`.
pub fn test_run(
    program: BorrowedFd<'_>,
    data_in: &[u8],
    data_out: &mut [u8],
    ctx_in: &[u8],
    ctx_out: &mut [u8],
) -> io::Result<TestRun> {
    let size = |buffer: &[u8]| {
        u32::try_from(buffer.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let mut attr = TestRunAttr {
        prog_fd: program.as_raw_fd() as u32,
        data_size_in: size(data_in)?,
        data_size_out: size(data_out)?,
        data_in: data_in.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        ctx_size_in: size(ctx_in)?,
        ctx_size_out: size(ctx_out)?,
        ctx_in: ctx_in.as_ptr() as u64,
        ctx_out: ctx_out.as_mut_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: the attribute is a valid `bpf_attr` prefix of the size given;
    // its buffers are valid for the sizes given, which the kernel honours
    // (it fails with ENOSPC rather than write past `data_size_out`).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::from_mut(&mut attr),
            size_of::<TestRunAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TestRun {
        return_value: attr.retval,
        data_size_out: attr.data_size_out,
    })
}

/// Detaches the link pinned at `path` from its hook now (Linux 5.9; XDP,
/// tcx, netns and a few more link types support it). The link object lives
/// on, defunct, until its last reference (the pin) goes. `ENOLINK`: it was
/// detached already (its device went).
pub fn detach_pinned_link(path: &Path) -> io::Result<()> {
    /// `union bpf_attr`'s `BPF_OBJ_*` member.
    #[repr(C)]
    #[derive(Default)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit, so that it is zero: the kernel refuses non-zero
        /// bytes past the fields it knows.
        _pad: u32,
    }
    /// `union bpf_attr`'s `link_detach` member.
    #[repr(C)]
    struct LinkDetachAttr {
        link_fd: u32,
    }
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        ..ObjAttr::default()
    };
    // SAFETY: the attribute is a valid `bpf_attr` prefix of the size given;
    // `pathname` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            std::ptr::from_mut(&mut attr),
            size_of::<ObjAttr>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = LinkDetachAttr {
        link_fd: link.as_raw_fd() as u32,
    };
    // SAFETY: as above, without pointers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            std::ptr::from_mut(&mut attr),
            size_of::<LinkDetachAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `entries` (BPF_ANY: added or replaced), [`CHUNK`] per call.
pub fn update<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    entries: &[(K, V)],
) -> Result<(), BatchError> {
    let fail = |done, source| BatchError { done, source };
    check_sizes::<K, V>(map).map_err(|e| fail(0, e))?;
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut keys: Vec<K> = Vec::with_capacity(CHUNK.min(entries.len()));
    let mut values: Vec<V> = Vec::with_capacity(CHUNK.min(entries.len()));
    for (index, chunk) in entries.chunks(CHUNK).enumerate() {
        keys.clear();
        values.clear();
        keys.extend(chunk.iter().map(|(key, _)| *key));
        values.extend(chunk.iter().map(|(_, value)| *value));
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` hold `count` contiguous keys and
        // values of the map's sizes (checked above), read by the kernel
        // only during the call.
        if let Err(source) = unsafe { bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) } {
            return Err(fail(index * CHUNK + attr.count as usize, source));
        }
    }
    Ok(())
}

/// Removes `keys`; keys that are not there are fine. [`CHUNK`] per call.
pub fn delete<K: aya::Pod, V: aya::Pod>(map: &MapData, keys: &[K]) -> Result<(), BatchError> {
    let fail = |done, source| BatchError { done, source };
    check_sizes::<K, V>(map).map_err(|e| fail(0, e))?;
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut start = 0;
    while start < keys.len() {
        let chunk = &keys[start..keys.len().min(start + CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `chunk` holds `count` contiguous keys of the map's key
        // size (checked above), read by the kernel only during the call.
        match unsafe { bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr) } {
            Ok(_) => start += chunk.len(),
            // The kernel stops at a key that is not there: skip it, go on
            // with the next.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                start += attr.count as usize + 1;
            }
            Err(source) => return Err(fail(start + attr.count as usize, source)),
        }
    }
    Ok(())
}

/// Reads every entry of a hash map, [`CHUNK`] (or more, should a bucket
/// need it) per call. Entries written meanwhile may or may not be seen, as
/// with any iteration of a live map.
pub fn read<K: aya::Pod, V: aya::Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    check_sizes::<K, V>(map)?;
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut entries = Vec::new();
    let mut capacity = CHUNK;
    // SAFETY (zeroed): K and V are Pod, so all-zero bytes are valid values.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; capacity];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; capacity];
    // The position tokens: opaque to us, as big as a key at most (hash
    // maps use a u32 bucket index), kept 8-byte aligned.
    let token_words = size_of::<K>().div_ceil(8).max(1);
    let mut in_token = vec![0u64; token_words];
    let mut out_token = vec![0u64; token_words];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { in_token.as_ptr() as u64 },
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: capacity as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` have room for `count` keys and values
        // of the map's sizes (checked above); the tokens for a key's size.
        // All are ours for the call's duration, and any bytes are valid.
        let result = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let done = match &result {
            Ok(count) => *count as usize,
            // The last batch: ENOENT, with what it found.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => attr.count as usize,
            // A bucket holds more than fits: try again with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                capacity *= 2;
                keys.resize(capacity, keys[0]);
                values.resize(capacity, values[0]);
                continue;
            }
            Err(e) => return Err(io::Error::new(e.kind(), e.to_string())),
        };
        entries.extend(
            keys[..done]
                .iter()
                .copied()
                .zip(values[..done].iter().copied()),
        );
        if result.is_err() {
            return Ok(entries);
        }
        std::mem::swap(&mut in_token, &mut out_token);
        first = false;
    }
}
