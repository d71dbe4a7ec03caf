//! The eBPF datapath: loads the programs built from `ebpf/` (embedded in the
//! agent binary by build.rs), attaches the port program to port devices with
//! tcx links and reads its maps.
//!
//! Maps and links are pinned under a per-agent directory on bpffs, so that a
//! stopped or crashed agent leaves forwarding running and its successor adopts
//! what it finds there. Several agents (one per network namespace, as in the
//! tests) can share a machine as long as their pin directories differ.
//!
//! Every method is synchronous and quick (a few bpf syscalls, no waiting).

mod bpffs;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeSet,
    ffi::CStr,
    fs, io,
    path::{Path, PathBuf},
};

use alcor_ebpf_common::{maps, programs};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Map, MapData, MapError, PerCpuHashMap},
    pin::PinError,
    programs::{
        LinkOrder, Program, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
    sys::SyscallError,
};

pub use alcor_ebpf_common::PortCounters;

/// Where the agent pins its maps and links unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/alcor";

/// The object agent/build.rs built from ebpf/: every program and map.
static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/alcor-datapath"));

/// Subdirectory of the pin directory holding one link per port and hook.
const LINKS_DIR: &str = "links";
const PORT_LINK_PREFIX: &str = "port-";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A filesystem operation (on bpffs or the pin directory) failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount bpffs at {}", bpffs::MOUNT_POINT)]
    MountBpffs(#[source] nix::Error),
    #[error("{0} is not on a bpf filesystem")]
    NotBpffs(PathBuf),
    #[error("cannot load the datapath object")]
    Load(#[source] Box<EbpfError>),
    #[error("the datapath object has no {0}")]
    Missing(&'static str),
    #[error("program {name} is of a type the agent cannot load yet")]
    UnsupportedProgram { name: String },
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "map {name} pinned at {} has another layout than this agent's; \
         remove it to start over",
        path.display()
    )]
    IncompatiblePinnedMap { name: &'static str, path: PathBuf },
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("link pinned at {}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("cannot pin link at {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    /// The port's device does not exist (yet): nothing was attached.
    #[error("no network device with ifindex {0}")]
    NoSuchDevice(u32),
}

/// The two tc hooks of a port device and the program that runs on each.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// Ingress of the device: frames the VM sent.
    FromVm,
    /// Egress of the device: frames on their way to the VM.
    ToVm,
}

impl Hook {
    const ALL: [Self; 2] = [Self::FromVm, Self::ToVm];

    const fn program(self) -> &'static str {
        match self {
            Self::FromVm => programs::PORT_FROM_VM,
            Self::ToVm => programs::PORT_TO_VM,
        }
    }

    const fn attach_type(self) -> TcAttachType {
        match self {
            Self::FromVm => TcAttachType::Ingress,
            Self::ToVm => TcAttachType::Egress,
        }
    }

    const fn pin_suffix(self) -> &'static str {
        match self {
            Self::FromVm => "ingress",
            Self::ToVm => "egress",
        }
    }
}

/// One agent's datapath: its loaded programs and their maps. Dropping it
/// leaves everything pinned, and so attached and counting.
pub struct Datapath {
    ebpf: Ebpf,
    counters: PerCpuHashMap<MapData, u32, PortCounters>,
    links_dir: PathBuf,
}

impl Datapath {
    /// Loads the embedded programs; maps are pinned under `pin_dir` (default used by the
    /// agent: /sys/fs/bpf/alcor) and reused if already pinned there, so counters survive
    /// agent restarts. Mounts bpffs at /sys/fs/bpf if it is not mounted. Creates pin_dir.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        bpffs::ensure_mounted()?;
        let links_dir = pin_dir.join(LINKS_DIR);
        fs::create_dir_all(&links_dir).map_err(|source| DatapathError::Io {
            what: format!("cannot create {}", links_dir.display()),
            source,
        })?;
        if !bpffs::contains(pin_dir)? {
            return Err(DatapathError::NotBpffs(pin_dir.to_owned()));
        }

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(DATAPATH_OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        // Before loading programs: against an old map the verifier would
        // reject them with a much less helpful message.
        if let Some(Map::PerCpuHashMap(counters)) = ebpf.map(maps::PORT_COUNTERS) {
            check_pinned_layout(counters, &pin_dir.join(maps::PORT_COUNTERS))?;
        }
        for (name, program) in ebpf.programs_mut() {
            let loaded = match program {
                Program::SchedClassifier(program) => program.load(),
                _ => {
                    return Err(DatapathError::UnsupportedProgram { name: name.into() });
                }
            };
            loaded.map_err(program_error(name))?;
        }

        let counters = ebpf
            .take_map(maps::PORT_COUNTERS)
            .ok_or(DatapathError::Missing(maps::PORT_COUNTERS))?;
        let counters = PerCpuHashMap::try_from(counters).map_err(map_error(maps::PORT_COUNTERS))?;
        Ok(Self {
            ebpf,
            counters,
            links_dir,
        })
    }

    /// Attaches the port program to the device (tcx ingress and egress), links pinned
    /// under pin_dir (so a crash/restart of the agent leaves them attached). Idempotent: if a
    /// pinned link for this ifindex already exists and is still attached to it, it is kept
    /// (and updated in place to the newly loaded program, so a new agent binary upgrades
    /// programs atomically without detaching); a stale pin (device gone) is replaced.
    ///
    /// Counters are keyed by ifindex and kept until [`Self::detach_port`].
    pub fn attach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let ifname = ifname(ifindex)?;
        for hook in Hook::ALL {
            self.attach_hook(ifindex, &ifname, hook)?;
        }
        Ok(())
    }

    /// Detaches and unpins the port's links and removes its counters. Ok if nothing is attached.
    pub fn detach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        for hook in Hook::ALL {
            let path = self.link_path(ifindex, hook);
            if let Some(pinned) = pinned_link(&path)? {
                let link = pinned.unpin().map_err(|source| DatapathError::Io {
                    what: format!("cannot unpin {}", path.display()),
                    source,
                })?;
                // Ours is now the last reference: closing it detaches the
                // link before `drop` returns, so no program still runs when
                // the counters go.
                drop(link);
            }
        }
        match self.counters.remove(&ifindex) {
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            removed => removed.map_err(map_error(maps::PORT_COUNTERS)),
        }
    }

    /// Ifindexes that have pinned links under pin_dir (lets the agent clean up ports
    /// that are no longer desired after a restart).
    pub fn attached_ports(&self) -> Result<Vec<u32>, DatapathError> {
        let io_error = |source| DatapathError::Io {
            what: format!("cannot list {}", self.links_dir.display()),
            source,
        };
        let mut ports = BTreeSet::new();
        for entry in fs::read_dir(&self.links_dir).map_err(io_error)? {
            let name = entry.map_err(io_error)?.file_name();
            let ifindex: Option<u32> = name
                .to_str()
                .and_then(|name| name.strip_prefix(PORT_LINK_PREFIX))
                .and_then(|rest| rest.split_once('-'))
                .and_then(|(ifindex, _hook)| ifindex.parse().ok());
            ports.extend(ifindex);
        }
        Ok(ports.into_iter().collect())
    }

    /// Counters summed over CPUs; zero if the port has none.
    pub fn port_counters(&self, ifindex: u32) -> Result<PortCounters, DatapathError> {
        let per_cpu = match self.counters.get(&ifindex, 0) {
            Ok(per_cpu) => per_cpu,
            Err(MapError::KeyNotFound) => return Ok(PortCounters::default()),
            Err(e) => return Err(map_error(maps::PORT_COUNTERS)(e)),
        };
        Ok(per_cpu
            .iter()
            .fold(PortCounters::default(), |sum, cpu| PortCounters {
                rx_packets: sum.rx_packets.wrapping_add(cpu.rx_packets),
                rx_bytes: sum.rx_bytes.wrapping_add(cpu.rx_bytes),
                tx_packets: sum.tx_packets.wrapping_add(cpu.tx_packets),
                tx_bytes: sum.tx_bytes.wrapping_add(cpu.tx_bytes),
            }))
    }

    fn attach_hook(&mut self, ifindex: u32, ifname: &str, hook: Hook) -> Result<(), DatapathError> {
        let path = self.link_path(ifindex, hook);
        let name = hook.program();
        let program = self.program_mut(hook)?;
        let program_id = program.info().map_err(program_error(name))?.id();

        if let Some(pinned) = pinned_link(&path)? {
            let link = FdLink::from(pinned);
            let link_program = link.info().map_err(link_error(&path))?.program_id();
            let (_, attached) = SchedClassifier::query_tcx(ifname, hook.attach_type())
                .map_err(program_error(name))?;
            if attached.iter().any(|p| p.id() == link_program) {
                if link_program != program_id {
                    // Swaps the program under the link: the device is never
                    // without one.
                    let link = SchedClassifierLink::try_from(link).map_err(link_error(&path))?;
                    let id = program.attach_to_link(link).map_err(program_error(name))?;
                    // The pin keeps the link; our handle is not needed.
                    program.take_link(id).map_err(program_error(name))?;
                }
                return Ok(());
            }
            // Stale: its device is gone (this ifindex is a new device) or
            // someone detached it. Dropping the last handles frees it.
            fs::remove_file(&path).map_err(|source| DatapathError::Io {
                what: format!("cannot remove stale link {}", path.display()),
                source,
            })?;
        }

        // aya 0.14 attaches by name; the agent names its port devices itself
        // (or the hypervisor does), so the name cannot change under us.
        let id = program
            .attach_with_options(
                ifname,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(program_error(name))?;
        let link = program.take_link(id).map_err(program_error(name))?;
        let link = FdLink::try_from(link).map_err(link_error(&path))?;
        link.pin(&path)
            .map_err(|source| DatapathError::Pin { path, source })?;
        Ok(())
    }

    fn program_mut(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
        let name = hook.program();
        self.ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()
            .map_err(program_error(name))
    }

    fn link_path(&self, ifindex: u32, hook: Hook) -> PathBuf {
        self.links_dir
            .join(format!("{PORT_LINK_PREFIX}{ifindex}-{}", hook.pin_suffix()))
    }
}

/// The link pinned at `path`, if any.
fn pinned_link(path: &Path) -> Result<Option<PinnedLink>, DatapathError> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => Ok(Some(pinned)),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(source) => Err(DatapathError::Link {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Maps are reused as found in the pin directory; one pinned by an agent
/// with another value layout would be misread, so refuse it.
fn check_pinned_layout(counters: &MapData, path: &Path) -> Result<(), DatapathError> {
    let info = counters.info().map_err(map_error(maps::PORT_COUNTERS))?;
    let expected = (size_of::<u32>(), size_of::<PortCounters>());
    if (info.key_size() as usize, info.value_size() as usize) != expected {
        return Err(DatapathError::IncompatiblePinnedMap {
            name: maps::PORT_COUNTERS,
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// The name of device `ifindex` in this thread's network namespace.
fn ifname(ifindex: u32) -> Result<String, DatapathError> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return Err(DatapathError::NoSuchDevice(ifindex));
    }
    CStr::from_bytes_until_nul(&buf)
        .ok()
        .and_then(|name| name.to_str().ok())
        .map(str::to_owned)
        .ok_or(DatapathError::NoSuchDevice(ifindex))
}

fn program_error(name: &str) -> impl FnOnce(ProgramError) -> DatapathError + '_ {
    move |source| DatapathError::Program {
        name: name.to_owned(),
        source: Box::new(source),
    }
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn link_error(path: &Path) -> impl FnOnce(LinkError) -> DatapathError + '_ {
    move |source| DatapathError::Link {
        path: path.to_owned(),
        source,
    }
}
