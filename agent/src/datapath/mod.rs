//! The eBPF datapath: loads the programs built from `ebpf/` (embedded in the
//! agent binary by build.rs), attaches the port program to port devices as tc
//! filters, programs its maps from a [`DatapathModel`](crate::core::spec::DatapathModel) ([`Datapath::sync`]),
//! runs frames through it for a trace ([`Datapath::trace`]) and reads the
//! maps back (listings, counters).
//!
//! What the programs do is told in `ebpf/datapath/src/port.rs`: from each
//! VM, anti-spoofing, ARP and gateway ping answered in place, DHCP passed up,
//! delivery to local ports (redirect to peer for veths, to egress for taps),
//! routing between subnets of a router, drops counted by reason. Their maps
//! (`alcor-ebpf-common` names them and defines their keys and values):
//! PORTS (ifindex → VNI, MAC, first IP and its subnet), SOURCES (LPM:
//! ifindex, MAC, prefix a port may send from), ENDPOINTS ((VNI, IP) → MAC and
//! location), SUBNETS (LPM: (VNI, prefix) → gateway, router) and
//! PORT_COUNTERS (per CPU: traffic and drops by reason). A port device with
//! no PORTS entry is not programmed: its frames pass untouched, as before the
//! agent knew it.
//!
//! Across hosts (VXLAN, `ebpf/datapath/src/encap.rs` and `underlay.rs`):
//! the port program encapsulates frames for remote endpoints and sends them
//! to the underlay device; `underlay_in`, a tc filter on the underlay
//! device's ingress ([`Datapath::attach_underlay`]), decapsulates VXLAN for
//! the VNIs served here and delivers it to its port; `underlay_xdp`
//! ([`Datapath::attach_xdp`], optional) drops VXLAN for unknown VNIs or from
//! unknown hosts before the kernel allocates anything. Their maps: UNDERLAY
//! (this host's tunnel endpoint), VNIS (served here: the ports' VNIs), HOSTS
//! (the other hosts, with the next hop's MAC where known) and
//! UNDERLAY_STATS (per CPU: tunnel traffic and the underlay's drops by
//! reason). [`DatapathModel::underlay`](crate::core::spec::DatapathModel::underlay) and [`DatapathModel::hosts`](crate::core::spec::DatapathModel::hosts) say what
//! they hold.
//!
//! Port programs are cls_bpf filters in direct-action mode on the device's
//! clsact qdisc (legacy netlink tc), not tcx links: attaching a tcx link
//! waits for an RCU grace period while holding the rtnl lock (~13 ms per
//! hook on this machine kind, stalling every other netlink user of the host),
//! adding a filter does not (~0.2 ms per port, both hooks). A filter belongs
//! to its device, so it keeps running when the agent stops or crashes,
//! without any pin.
//!
//! Maps are pinned under a per-agent directory on bpffs, so that forwarding
//! state and counters survive restarts: a successor adopts them, checks their
//! layout, and its first sync writes only what changed meanwhile. Several
//! agents (one per network namespace, as in the tests) can share a machine as
//! long as their pin directories differ.
//!
//! Every method is synchronous and quick (a few bpf and netlink syscalls, no
//! waiting). Devices are looked up in the calling thread's network namespace.

mod bpf;
mod bpffs;
mod entries;
mod sync;
#[cfg(test)]
mod tests;
mod trace;

use std::{
    ffi::CStr,
    fs, io, mem,
    path::{Path, PathBuf},
};

use alcor_ebpf_common::{
    EndpointKey, HostInfo, MAX_ENDPOINTS, MAX_HOSTS, MAX_PORTS, MAX_SOURCES, MAX_SUBNETS, MAX_VNIS,
    NO_PREALLOC, PortInfo, SourceKey, SubnetInfo, SubnetKey, UnderlayInfo, maps, programs,
};
use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, MapType, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    pin::PinError,
    programs::{
        Link, Program, ProgramError, ProgramFd, SchedClassifier, TcAttachType, TcError, TcHandle,
        Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
    sys::SyscallError,
};

pub use alcor_ebpf_common::{
    DropReason, NextHop, PortCounters, PortStats, Redirect, TunnelCounters, UnderlayDropReason,
    UnderlayStats,
};
pub use aya::programs::XdpMode;
pub use sync::{
    EndpointEntry, HostEntry, MapChanges, PortEntry, RouteEntry, SubnetEntry, SyncStats,
    UnderlayEntry, drops_by_reason, underlay_drops_by_reason,
};
pub use trace::{
    Answer, PassReason, TraceResult, UnderlayTrace, UnderlayVerdict, Verdict, delivery_words,
    next_hop_words,
};

/// Where the agent pins its maps unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/alcor";

/// The object agent/build.rs built from ebpf/: every program and map.
static DATAPATH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/alcor-datapath"));

/// Our filter on each hook of a port device's clsact qdisc is at priority 1,
/// handle 1. Fixed, so that a successor addresses it without listing filters
/// and swaps its program in place. Priority 1 runs before anything tc adds
/// with its default priorities (49152 and down); our program's verdict is
/// final (direct action), as the port's datapath must be.
const FILTER_PRIORITY: u16 = 1;
const FILTER_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Pinned hash of the ports the agent attached: ifindex → 1, from the start
/// of `attach_port` to the end of `detach_port`. The agent's own record (no
/// program reads it), so it is created here rather than in the object.
const ATTACHED_PORTS: &str = "ATTACHED_PORTS";

/// Where the XDP program's link to an underlay device is pinned:
/// `xdp-<ifindex>-<native|generic>`. Pinned, the link (and the program)
/// stays attached when the agent stops; a successor swaps its own program
/// into it.
const XDP_LINK_PREFIX: &str = "xdp-";

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
    #[error("cannot pin map at {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    /// A pinned link: the XDP program's on an underlay device.
    #[error("link pinned at {}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("cannot add a clsact qdisc to device {ifindex}")]
    Clsact {
        ifindex: u32,
        #[source]
        source: TcError,
    },
    #[error("tc filter of {program} on device {ifindex}")]
    Filter {
        ifindex: u32,
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    /// The port's device does not exist (yet): nothing was attached.
    #[error("no network device with ifindex {0}")]
    NoSuchDevice(u32),
    #[error("cannot attach XDP to device {ifindex}")]
    Xdp {
        ifindex: u32,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot trace this frame: {0}")]
    InvalidFrame(String),
    #[error("tracing a frame from port {ifindex}")]
    Trace {
        ifindex: u32,
        #[source]
        source: Box<ProgramError>,
    },
}

impl DatapathError {
    /// Whether the same call may succeed if tried again shortly: the kernel
    /// was short of memory for a map entry, or busy. A map without
    /// preallocation (PORT_COUNTERS, per CPU) allocates at each insert from
    /// a cache the kernel refills in the background, which a burst of
    /// attaches can empty for a moment.
    pub fn is_transient(&self) -> bool {
        let errno = match self {
            Self::Map {
                source: MapError::SyscallError(SyscallError { io_error, .. }),
                ..
            } => io_error.raw_os_error(),
            _ => None,
        };
        matches!(errno, Some(libc::ENOMEM | libc::EBUSY | libc::EAGAIN))
    }
}

/// The tc hooks the datapath uses and the program that runs on each.
#[derive(Debug, Clone, Copy)]
enum Hook {
    /// Ingress of a port device: frames the VM sent.
    FromVm,
    /// Egress of a port device: frames on their way to the VM.
    ToVm,
    /// Ingress of the underlay device: VXLAN from other hosts.
    FromUnderlay,
    /// Ingress of the agent's VXLAN device: what the kernel decapsulated.
    FromVxlanDevice,
}

impl Hook {
    /// The hooks of a port device.
    const ALL: [Self; 2] = [Self::FromVm, Self::ToVm];

    const fn program(self) -> &'static str {
        match self {
            Self::FromVm => programs::PORT_FROM_VM,
            Self::ToVm => programs::PORT_TO_VM,
            Self::FromUnderlay => programs::UNDERLAY_IN,
            Self::FromVxlanDevice => programs::VXLAN_IN,
        }
    }

    const fn attach_type(self) -> TcAttachType {
        match self {
            Self::FromVm | Self::FromUnderlay | Self::FromVxlanDevice => TcAttachType::Ingress,
            Self::ToVm => TcAttachType::Egress,
        }
    }

    /// Our filter on this hook of device `ifname`, as aya addresses it.
    fn filter(self, ifname: &str) -> Result<SchedClassifierLink, ProgramError> {
        SchedClassifierLink::attached(
            ifname,
            self.attach_type(),
            FILTER_PRIORITY,
            FILTER_HANDLE,
            None,
        )
        .map_err(ProgramError::from)
    }
}

/// Handles on the programs' pinned maps. The writer ([`Datapath`]) has
/// its own, and so has each reader ([`DatapathReader`]): the kernel keeps
/// each entry's reads and writes atomic, so neither waits on the other.
struct Maps {
    counters: PerCpuHashMap<MapData, u32, PortStats>,
    ports: HashMap<MapData, u32, PortInfo>,
    sources: LpmTrie<MapData, SourceKey, u32>,
    endpoints: HashMap<MapData, EndpointKey, alcor_ebpf_common::Endpoint>,
    subnets: LpmTrie<MapData, SubnetKey, SubnetInfo>,
    underlay: Array<MapData, UnderlayInfo>,
    vnis: HashMap<MapData, u32, u32>,
    hosts: HashMap<MapData, u32, HostInfo>,
    underlay_stats: PerCpuArray<MapData, alcor_ebpf_common::UnderlayStats>,
}

impl Maps {
    /// Opens the maps pinned under `pin_dir`.
    fn open(pin_dir: &Path) -> Result<Maps, DatapathError> {
        Ok(Maps {
            counters: pinned(pin_dir, maps::PORT_COUNTERS)?,
            ports: pinned(pin_dir, maps::PORTS)?,
            sources: pinned(pin_dir, maps::SOURCES)?,
            endpoints: pinned(pin_dir, maps::ENDPOINTS)?,
            subnets: pinned(pin_dir, maps::SUBNETS)?,
            underlay: pinned(pin_dir, maps::UNDERLAY)?,
            vnis: pinned(pin_dir, maps::VNIS)?,
            hosts: pinned(pin_dir, maps::HOSTS)?,
            underlay_stats: pinned(pin_dir, maps::UNDERLAY_STATS)?,
        })
    }
}

/// The map pinned under `pin_dir` by its name, as the typed map `T`.
fn pinned<T: TryFrom<Map, Error = MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, DatapathError> {
    MapData::from_pin(pin_dir.join(name))
        .and_then(Map::from_map_data)
        .and_then(T::try_from)
        .map_err(map_error(name))
}

/// What the control socket and the metrics read of the datapath: the maps
/// (listings, counters), XDP attachments, and traces, through handles of
/// its own ([`Datapath::reader`]), so that a read never waits on the
/// engine's programming, nor the engine on a read.
pub struct DatapathReader {
    maps: Maps,
    /// The programs a trace runs.
    port_from_vm: ProgramFd,
    underlay_in: ProgramFd,
    pin_dir: PathBuf,
}

/// One agent's datapath: its loaded programs and their maps; the engine
/// owns it, the only writer. Dropping it leaves the filters attached and
/// counting, and the maps pinned.
pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    attached: HashMap<MapData, u32, u8>,
    /// What the forwarding maps hold as of the last successful sync; `None`
    /// until the first one, which reads them from the kernel.
    held: Option<entries::Entries>,
    /// The endpoints [`Datapath::sync_endpoints`] replaced last time, whose
    /// memory it merges the next ones into: a fresh vector of tens of
    /// megabytes for each transaction cost more in page faults than the
    /// merge itself.
    spare_endpoints: Vec<(alcor_ebpf_common::EndpointKey, alcor_ebpf_common::Endpoint)>,
    pin_dir: PathBuf,
}

impl Datapath {
    /// Loads the embedded programs; maps are pinned under `pin_dir` (default used by the
    /// agent: /sys/fs/bpf/alcor) and reused if already pinned there, so counters survive
    /// agent restarts. Mounts bpffs at /sys/fs/bpf if it is not mounted. Creates pin_dir.
    ///
    /// Forgets the ports (and counters) of devices deleted while no agent ran.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        bpffs::ensure_mounted()?;
        fs::create_dir_all(pin_dir).map_err(|source| DatapathError::Io {
            what: format!("cannot create {}", pin_dir.display()),
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
        // reject them with a much less helpful message, or accept them and
        // misread it.
        for layout in &MAP_LAYOUTS {
            check_pinned_layout(&ebpf, layout, pin_dir)?;
        }
        for (name, program) in ebpf.programs_mut() {
            let loaded = match program {
                Program::SchedClassifier(program) => program.load(),
                Program::Xdp(program) => program.load(),
                _ => {
                    return Err(DatapathError::UnsupportedProgram { name: name.into() });
                }
            };
            loaded.map_err(program_error(name))?;
        }

        // Loading pinned every map (or reused its pin).
        let maps = Maps::open(pin_dir)?;
        let attached = attached_ports_map(&pin_dir.join(ATTACHED_PORTS))?;
        let mut datapath = Self {
            ebpf,
            maps,
            attached,
            held: None,
            spare_endpoints: Vec::new(),
            pin_dir: pin_dir.to_owned(),
        };
        datapath.forget_deleted_devices()?;
        Ok(datapath)
    }

    /// Attaches the port program to the device: a filter on each hook (ingress and egress)
    /// of its clsact qdisc, added if missing. The filters belong to the device, so they keep
    /// running when the agent stops. Idempotent: where our filter already is (at a
    /// fixed priority and handle), it is kept and its program replaced in place by the one this
    /// agent loaded, atomically, so a new agent binary upgrades programs without a gap.
    ///
    /// Counters are keyed by ifindex and kept until [`Self::detach_port`].
    ///
    /// The port's frames pass untouched until [`Self::sync`] gives it a
    /// record (a model with a [`PortSpec`](crate::core::spec::PortSpec) of this ifindex).
    pub fn attach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let ifname = ifname(ifindex)?.ok_or(DatapathError::NoSuchDevice(ifindex))?;
        // Recorded first: should the agent die halfway, its successor still
        // lists the port, and can detach it.
        self.attached
            .insert(ifindex, 1, 0)
            .map_err(map_error(ATTACHED_PORTS))?;
        self.create_counters(ifindex)?;
        let new_qdisc = add_clsact(ifindex, &ifname)?;
        for hook in Hook::ALL {
            self.attach_hook(ifindex, &ifname, hook, new_qdisc)?;
        }
        Ok(())
    }

    /// Attaches `underlay_in` to the underlay device's ingress (a tc
    /// filter, as on ports: it stays when the agent stops, and attaching
    /// again swaps the program in place). From then on VXLAN addressed to
    /// this host ([`DatapathModel::underlay`](crate::core::spec::DatapathModel::underlay)) for the VNIs of its ports is
    /// decapsulated and delivered; everything else passes untouched. The
    /// device must be the one the model's underlay names.
    pub fn attach_underlay(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let ifname = ifname(ifindex)?.ok_or(DatapathError::NoSuchDevice(ifindex))?;
        let new_qdisc = add_clsact(ifindex, &ifname)?;
        self.attach_hook(ifindex, &ifname, Hook::FromUnderlay, new_qdisc)
    }

    /// Attaches `vxlan_in` to the ingress of the agent's VXLAN device (a tc
    /// filter, swapped in place when attached again): what the kernel
    /// decapsulates there (reassembled outer fragments, GSO packets
    /// `underlay_in` leaves to it for taps) is delivered to its port with
    /// the checks `underlay_in` makes. The device must be the one the
    /// model's underlay names.
    pub fn attach_vxlan(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let ifname = ifname(ifindex)?.ok_or(DatapathError::NoSuchDevice(ifindex))?;
        let new_qdisc = add_clsact(ifindex, &ifname)?;
        self.attach_hook(ifindex, &ifname, Hook::FromVxlanDevice, new_qdisc)
    }

    /// Removes `underlay_in` from the device, if there. VXLAN then goes to
    /// the host stack (the kernel's VXLAN device, if any).
    pub fn detach_underlay(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let Some(ifname) = ifname(ifindex)? else {
            return Ok(());
        };
        let hook = Hook::FromUnderlay;
        match hook.filter(&ifname).and_then(Link::detach) {
            Err(e) if matches!(errno(&e), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => {
                Ok(())
            }
            deleted => deleted.map_err(filter_error(ifindex, hook)),
        }
    }

    /// Attaches the XDP early-drop program (`underlay_xdp`) to the underlay
    /// device in `mode`: VXLAN to this host for a VNI not served here or
    /// from an unknown host is dropped before the kernel allocates anything
    /// for it; everything else passes. Its link is pinned, so it stays when
    /// the agent stops; attaching again swaps this agent's program in
    /// (atomically if the mode is the same; in another mode the old
    /// attachment goes first).
    ///
    /// [`XdpMode::Driver`] (native) is the cheap one on real NICs; on a
    /// veth it makes the peer give up GSO (see the report in the tests).
    /// [`XdpMode::Skb`] (generic) runs after the kernel has built the
    /// packet.
    pub fn attach_xdp(&mut self, ifindex: u32, mode: XdpMode) -> Result<(), DatapathError> {
        let xdp_error = |source| DatapathError::Xdp {
            ifindex,
            source: Box::new(source),
        };
        if ifname(ifindex)?.is_none() {
            return Err(DatapathError::NoSuchDevice(ifindex));
        }
        let path = xdp_pin(&self.pin_dir, ifindex, mode);
        for (existing, existing_mode) in xdp_pins(&self.pin_dir, ifindex) {
            if existing_mode == mode
                && let Ok(link) = PinnedLink::from_pin(&existing)
                && let Ok(link) = XdpLink::try_from(FdLink::from(link))
            {
                let program = self.xdp_program()?;
                if program.attach_to_link(link).is_ok() {
                    // The link is pinned: this handle may go.
                    return Ok(());
                }
            }
            // Another mode, or a link that no longer works (its device
            // went): let it go, now (dropping the last reference would
            // detach it later, from a work queue, and the new attachment
            // would find it still there).
            detach_pinned_link(&existing)?;
        }
        let program = self.xdp_program()?;
        let id = program
            .attach_to_if_index(ifindex, mode)
            .map_err(xdp_error)?;
        let link = program.take_link(id).map_err(xdp_error)?;
        let link = FdLink::try_from(link).map_err(link_error(&path))?;
        link.pin(&path).map_err(|source| DatapathError::Pin {
            path: path.clone(),
            source,
        })?;
        Ok(())
    }

    /// Removes the XDP program from the device, if attached (in any mode).
    /// When this returns, the program no longer runs there.
    pub fn detach_xdp(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        for (path, _) in xdp_pins(&self.pin_dir, ifindex) {
            detach_pinned_link(&path)?;
        }
        Ok(())
    }

    /// A reader of this datapath with handles of its own: its maps
    /// reopened from their pins, its traced programs' descriptors
    /// duplicated.
    pub fn reader(&self) -> Result<DatapathReader, DatapathError> {
        let program_fd = |name: &'static str| {
            let program = self
                .ebpf
                .program(name)
                .ok_or(DatapathError::Missing(name))?;
            let fd = program.fd().map_err(program_error(name))?;
            fd.try_clone().map_err(|source| DatapathError::Io {
                what: format!("cannot duplicate the descriptor of program {name}"),
                source,
            })
        };
        Ok(DatapathReader {
            maps: Maps::open(&self.pin_dir)?,
            port_from_vm: program_fd(programs::PORT_FROM_VM)?,
            underlay_in: program_fd(programs::UNDERLAY_IN)?,
            pin_dir: self.pin_dir.clone(),
        })
    }

    fn xdp_program(&mut self) -> Result<&mut Xdp, DatapathError> {
        let name = programs::UNDERLAY_XDP;
        self.ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()
            .map_err(program_error(name))
    }

    /// Removes our filters from the device (if it still exists) and forgets the port and its
    /// counters. Ok if nothing is attached. The clsact qdisc stays: it may hold filters of
    /// others, costs nothing empty, and a later attach reuses it.
    ///
    /// Unlike a tcx detach, deleting a filter does not wait for programs running on other
    /// CPUs: a frame in flight at that very moment may still count into a fresh counters
    /// entry, kept until the next detach or, once the device is gone, the next open.
    pub fn detach_port(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        if let Some(ifname) = ifname(ifindex)? {
            for hook in Hook::ALL {
                let deleted = hook.filter(&ifname).and_then(Link::detach);
                match deleted {
                    // No such filter, no clsact qdisc (or a filter of another
                    // protocol at our priority), the device just went: in
                    // every case, none of ours is left.
                    Err(e)
                        if matches!(
                            errno(&e),
                            Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
                        ) => {}
                    deleted => deleted.map_err(filter_error(ifindex, hook))?,
                }
            }
        }
        self.forget(ifindex)
    }

    /// Ports attached and not detached since, whose device still exists, in ifindex order
    /// (lets the agent clean up ports that are no longer desired after a restart). Read from
    /// a pinned map, so it survives restarts.
    pub fn attached_ports(&self) -> Result<Vec<u32>, DatapathError> {
        let mut ports = Vec::new();
        for ifindex in self.attached.keys() {
            let ifindex = ifindex.map_err(map_error(ATTACHED_PORTS))?;
            // The device still exists. (Taking a deleted device's ifindex
            // takes asking for it: the kernel hands them out cyclically.)
            if ifname(ifindex)?.is_some() {
                ports.push(ifindex);
            }
        }
        ports.sort_unstable();
        Ok(ports)
    }

    /// Zeroed counters for the port unless it has some, so that the
    /// programs never have to allocate them while forwarding.
    fn create_counters(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DatapathError::Io {
            what: format!("cannot count CPUs ({what})"),
            source,
        })?;
        let zeroes =
            PerCpuValues::try_from(vec![PortStats::default(); cpus]).map_err(|source| {
                DatapathError::Io {
                    what: "cannot size per-CPU counters".into(),
                    source,
                }
            })?;
        const NOEXIST: u64 = 1;
        match self.maps.counters.insert(ifindex, zeroes, NOEXIST) {
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == io::ErrorKind::AlreadyExists =>
            {
                Ok(())
            }
            result => result.map_err(map_error(maps::PORT_COUNTERS)),
        }
    }

    /// Puts the hook's program in our filter: a change of the existing filter
    /// if there is one (the device is never without a program), else a new
    /// filter. `new_qdisc`: the clsact qdisc was just added, so it is empty.
    fn attach_hook(
        &mut self,
        ifindex: u32,
        ifname: &str,
        hook: Hook,
        new_qdisc: bool,
    ) -> Result<(), DatapathError> {
        let program = self.program_mut(hook)?;
        let changed = if new_qdisc {
            None
        } else {
            // Without NLM_F_CREATE: ENOENT if there is no such filter.
            match hook
                .filter(ifname)
                .and_then(|filter| program.attach_to_link(filter))
            {
                Ok(id) => Some(id),
                Err(e) if errno(&e) == Some(libc::ENOENT) => None,
                Err(e) => return Err(filter_error(ifindex, hook)(e)),
            }
        };
        let id = match changed {
            Some(id) => id,
            None => program
                .attach_with_options(
                    ifname,
                    hook.attach_type(),
                    TcAttachOptions::Netlink(NlOptions {
                        priority: FILTER_PRIORITY,
                        handle: FILTER_HANDLE,
                        classid: None,
                    }),
                )
                .map_err(filter_error(ifindex, hook))?,
        };
        let filter = program.take_link(id).map_err(filter_error(ifindex, hook))?;
        // The filter is the device's, not this process's: aya's handle
        // deletes it when dropped, and so would the program holding it.
        mem::forget(filter);
        Ok(())
    }

    /// Drops the entries of devices that are gone: `attached_ports` does
    /// not list them, so nothing would detach them.
    fn forget_deleted_devices(&mut self) -> Result<(), DatapathError> {
        let mut gone = Vec::new();
        for ifindex in self.attached.keys() {
            let ifindex = ifindex.map_err(map_error(ATTACHED_PORTS))?;
            gone.extend(ifname(ifindex)?.is_none().then_some(ifindex));
        }
        for ifindex in self.maps.counters.keys() {
            let ifindex = ifindex.map_err(map_error(maps::PORT_COUNTERS))?;
            gone.extend(ifname(ifindex)?.is_none().then_some(ifindex));
        }
        gone.into_iter()
            .try_for_each(|ifindex| self.forget(ifindex))
    }

    /// Drops the port's counters, then its entry in the attached ports.
    fn forget(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        removed(self.maps.counters.remove(&ifindex)).map_err(map_error(maps::PORT_COUNTERS))?;
        // Last: should the agent die halfway, its successor still lists the
        // port, and can detach it again.
        removed(self.attached.remove(&ifindex)).map_err(map_error(ATTACHED_PORTS))
    }

    fn program_mut(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DatapathError> {
        let name = hook.program();
        self.ebpf
            .program_mut(name)
            .ok_or(DatapathError::Missing(name))?
            .try_into()
            .map_err(program_error(name))
    }
}

impl DatapathReader {
    /// Counters summed over CPUs; zero if the port has none. (Drops by
    /// reason: [`Self::port_stats`].)
    pub fn port_counters(&self, ifindex: u32) -> Result<PortCounters, DatapathError> {
        Ok(self.port_stats(ifindex)?.traffic)
    }

    /// The mode the XDP program is attached to the device in, if it is.
    pub fn xdp_mode(&self, ifindex: u32) -> Option<XdpMode> {
        xdp_pins(&self.pin_dir, ifindex)
            .first()
            .map(|&(_, mode)| mode)
    }
}

/// Where the XDP link of the device in `mode` is pinned.
fn xdp_pin(pin_dir: &Path, ifindex: u32, mode: XdpMode) -> PathBuf {
    let mode = match mode {
        XdpMode::Driver => "native",
        XdpMode::Skb => "generic",
        XdpMode::Hardware => "offload",
        XdpMode::Default => "default",
    };
    pin_dir.join(format!("{XDP_LINK_PREFIX}{ifindex}-{mode}"))
}

/// The pinned XDP links of the device, with their modes.
fn xdp_pins(pin_dir: &Path, ifindex: u32) -> Vec<(PathBuf, XdpMode)> {
    [
        XdpMode::Driver,
        XdpMode::Skb,
        XdpMode::Hardware,
        XdpMode::Default,
    ]
    .into_iter()
    .map(|mode| (xdp_pin(pin_dir, ifindex, mode), mode))
    .filter(|(path, _)| path.exists())
    .collect()
}

/// Adds a clsact qdisc to the device unless it has one; true if added.
fn add_clsact(ifindex: u32, ifname: &str) -> Result<bool, DatapathError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(source) => Err(DatapathError::Clsact { ifindex, source }),
    }
}

/// Detaches the link pinned at `path` at once (BPF_LINK_DETACH), then
/// removes the pin. Letting the last reference go would detach it too, but
/// later: the kernel frees links from a work queue.
fn detach_pinned_link(path: &Path) -> Result<(), DatapathError> {
    match bpf::detach_pinned_link(path) {
        // Detached already (its device went), or no pin: fine.
        Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOLINK | libc::ENOENT)) => {
            return Err(DatapathError::Io {
                what: format!("cannot detach the link pinned at {}", path.display()),
                source: e,
            });
        }
        _ => {}
    }
    remove_pin(path)
}

/// Removes a pin (and with it, if it held the last reference, the object).
fn remove_pin(path: &Path) -> Result<(), DatapathError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DatapathError::Io {
            what: format!("cannot remove {}", path.display()),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The map of attached ports pinned at `path`, created if there is none.
fn attached_ports_map(path: &Path) -> Result<HashMap<MapData, u32, u8>, DatapathError> {
    let map = match MapData::from_pin(path) {
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            HashMap::<_, u32, u8>::create(MAX_PORTS, NO_PREALLOC)
                .map_err(map_error(ATTACHED_PORTS))?
                .pin(path)
                .map_err(|source| DatapathError::Pin {
                    path: path.to_owned(),
                    source,
                })?;
            MapData::from_pin(path)
        }
        map => map,
    };
    let map = map.and_then(Map::from_map_data);
    match map.and_then(HashMap::try_from) {
        Err(
            MapError::InvalidMapType { .. }
            | MapError::InvalidKeySize { .. }
            | MapError::InvalidValueSize { .. },
        ) => Err(DatapathError::IncompatiblePinnedMap {
            name: ATTACHED_PORTS,
            path: path.to_owned(),
        }),
        map => map.map_err(map_error(ATTACHED_PORTS)),
    }
}

/// A map entry's removal, where none to remove is fine.
fn removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        result => result,
    }
}

/// What a map of the object looks like in the kernel.
struct MapLayout {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    flags: u32,
}

/// The layout of every map of the object, from the same types and
/// constants the programs declare them with.
const MAP_LAYOUTS: [MapLayout; 9] = [
    MapLayout {
        name: maps::PORT_COUNTERS,
        map_type: MapType::PerCpuHash,
        key_size: size_of::<u32>(),
        value_size: size_of::<PortStats>(),
        max_entries: MAX_PORTS,
        flags: NO_PREALLOC,
    },
    MapLayout {
        name: maps::PORTS,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<PortInfo>(),
        max_entries: MAX_PORTS,
        flags: NO_PREALLOC,
    },
    MapLayout {
        name: maps::SOURCES,
        map_type: MapType::LpmTrie,
        key_size: size_of::<u32>() + size_of::<SourceKey>(),
        value_size: size_of::<u32>(),
        max_entries: MAX_SOURCES,
        flags: NO_PREALLOC,
    },
    MapLayout {
        name: maps::ENDPOINTS,
        map_type: MapType::Hash,
        key_size: size_of::<EndpointKey>(),
        value_size: size_of::<alcor_ebpf_common::Endpoint>(),
        max_entries: MAX_ENDPOINTS,
        flags: NO_PREALLOC,
    },
    MapLayout {
        name: maps::SUBNETS,
        map_type: MapType::LpmTrie,
        key_size: size_of::<u32>() + size_of::<SubnetKey>(),
        value_size: size_of::<SubnetInfo>(),
        max_entries: MAX_SUBNETS,
        flags: NO_PREALLOC,
    },
    MapLayout {
        name: maps::UNDERLAY,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<UnderlayInfo>(),
        max_entries: 1,
        flags: 0,
    },
    MapLayout {
        name: maps::VNIS,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        max_entries: MAX_VNIS,
        flags: NO_PREALLOC,
    },
    MapLayout {
        name: maps::HOSTS,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<HostInfo>(),
        max_entries: MAX_HOSTS,
        flags: NO_PREALLOC,
    },
    MapLayout {
        name: maps::UNDERLAY_STATS,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>(),
        value_size: size_of::<alcor_ebpf_common::UnderlayStats>(),
        max_entries: 1,
        flags: 0,
    },
];

/// Maps are reused as found in the pin directory; one pinned by an agent
/// with another layout would be misread, so refuse it.
fn check_pinned_layout(
    ebpf: &Ebpf,
    layout: &MapLayout,
    pin_dir: &Path,
) -> Result<(), DatapathError> {
    let map = ebpf
        .map(layout.name)
        .ok_or(DatapathError::Missing(layout.name))?;
    let data: &MapData = match map {
        Map::PerCpuHashMap(data)
        | Map::HashMap(data)
        | Map::LpmTrie(data)
        | Map::Array(data)
        | Map::PerCpuArray(data) => data,
        _ => {
            return Err(DatapathError::IncompatiblePinnedMap {
                name: layout.name,
                path: pin_dir.join(layout.name),
            });
        }
    };
    let info = data.info().map_err(map_error(layout.name))?;
    let map_type = info.map_type().map_err(map_error(layout.name))?;
    let found = (
        map_type,
        info.key_size() as usize,
        info.value_size() as usize,
        info.max_entries(),
        info.map_flags(),
    );
    let expected = (
        layout.map_type,
        layout.key_size,
        layout.value_size,
        layout.max_entries,
        layout.flags,
    );
    if found != expected {
        return Err(DatapathError::IncompatiblePinnedMap {
            name: layout.name,
            path: pin_dir.join(layout.name),
        });
    }
    Ok(())
}

/// The name of device `ifindex` in this thread's network namespace; `None`
/// if there is no such device.
fn ifname(ifindex: u32) -> Result<Option<String>, DatapathError> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    let lookup_error = |source| DatapathError::Io {
        what: format!("cannot look up device {ifindex}"),
        source,
    };
    if name.is_null() {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENXIO | libc::ENODEV) => Ok(None),
            _ => Err(lookup_error(error)),
        };
    }
    // aya addresses devices by (UTF-8) name; the agent names its own.
    CStr::from_bytes_until_nul(&buf)
        .ok()
        .and_then(|name| name.to_str().ok())
        .map(|name| Some(name.to_owned()))
        .ok_or_else(|| lookup_error(io::ErrorKind::InvalidData.into()))
}

/// The errno a failed tc netlink request (or device lookup) returned.
fn errno(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::NetlinkError(e) | ProgramError::TcError(TcError::NetlinkError(e)) => {
            e.raw_os_error()
        }
        ProgramError::IOError(e) | ProgramError::TcError(TcError::IoError(e)) => e.raw_os_error(),
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error.raw_os_error(),
        _ => None,
    }
}

fn filter_error(ifindex: u32, hook: Hook) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Filter {
        ifindex,
        program: hook.program(),
        source: Box::new(source),
    }
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
