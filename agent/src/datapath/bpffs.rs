//! The bpf filesystem that pins live on.

use std::{
    path::Path,
    sync::{Mutex, PoisonError},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use super::DatapathError;

pub(super) const MOUNT_POINT: &str = "/sys/fs/bpf";

/// Serialises check-then-mount within the process: two datapaths opening at
/// once on a fresh machine must not stack two bpffs instances, the second
/// hiding what the first pinned.
static MOUNTING: Mutex<()> = Mutex::new(());

/// Mounts bpffs at /sys/fs/bpf unless it already is there (on a fresh machine
/// nothing mounts it).
pub(super) fn ensure_mounted() -> Result<(), DatapathError> {
    let _mounting = MOUNTING.lock().unwrap_or_else(PoisonError::into_inner);
    if contains(Path::new(MOUNT_POINT))? {
        return Ok(());
    }
    mount(
        Some("bpf"),
        MOUNT_POINT,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        // Pinned maps and links are the agent's alone.
        Some("mode=0700"),
    )
    .map_err(DatapathError::MountBpffs)
}

/// Whether `path` lives on a bpf filesystem.
pub(super) fn contains(path: &Path) -> Result<bool, DatapathError> {
    let stat = statfs(path).map_err(|errno| DatapathError::Io {
        what: format!("cannot statfs {}", path.display()),
        source: errno.into(),
    })?;
    Ok(stat.filesystem_type() == BPF_FS_MAGIC)
}
