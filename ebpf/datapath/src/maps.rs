//! The maps the agent pins and fills, shared by the programs: what the
//! ports are, what the VPCs hold, this host as a tunnel endpoint, and the
//! counters. (Maps a single program keeps for itself live beside it.)

use alcor_ebpf_common::{
    DropReason, Endpoint, EndpointKey, HostInfo, MAX_ENDPOINTS, MAX_HOSTS, MAX_PORTS, MAX_SOURCES,
    MAX_SUBNETS, MAX_VNIS, NO_PREALLOC, PortCounters, PortInfo, PortStats, SourceKey, SubnetInfo,
    SubnetKey, TunnelCounters, UnderlayInfo, UnderlayStats,
};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap},
};

/// Port ifindex → the port's VNI, MAC, first IP and its subnet.
#[map]
pub(crate) static PORTS: HashMap<u32, PortInfo> = HashMap::pinned(MAX_PORTS, NO_PREALLOC);

/// (ifindex, MAC, IPv4 prefix) → SOURCE_ALLOWED, or SOURCE_MAC_ONLY for the
/// /0 entry of every MAC the port may use.
#[map]
pub(crate) static SOURCES: LpmTrie<SourceKey, u32> = LpmTrie::pinned(MAX_SOURCES, 0);

/// (VNI, IPv4) → MAC and location of every address known in the VPC.
#[map]
pub(crate) static ENDPOINTS: HashMap<EndpointKey, Endpoint> =
    HashMap::pinned(MAX_ENDPOINTS, NO_PREALLOC);

/// (VNI, IPv4 prefix) → subnet: gateway and router.
#[map]
pub(crate) static SUBNETS: LpmTrie<SubnetKey, SubnetInfo> = LpmTrie::pinned(MAX_SUBNETS, 0);

/// This host as a tunnel endpoint (one entry).
#[map]
pub(crate) static UNDERLAY: Array<UnderlayInfo> = Array::pinned(1, 0);

/// VNIs served here → VNI_SERVED.
#[map]
pub(crate) static VNIS: HashMap<u32, u32> = HashMap::pinned(MAX_VNIS, NO_PREALLOC);

/// Known hosts (underlay IPv4) → next-hop MAC, if known.
#[map]
pub(crate) static HOSTS: HashMap<u32, HostInfo> = HashMap::pinned(MAX_HOSTS, NO_PREALLOC);

/// Port ifindex → counters. Pinned so that counts survive agent restarts.
#[map]
pub(crate) static PORT_COUNTERS: PerCpuHashMap<u32, PortStats> =
    PerCpuHashMap::pinned(MAX_PORTS, NO_PREALLOC);

/// Tunnel traffic and underlay drops (one entry per CPU).
#[map]
pub(crate) static UNDERLAY_STATS: PerCpuArray<UnderlayStats> = PerCpuArray::pinned(1, 0);

/// Zeroes for a port's first counters: inserted from here rather than from
/// the stack, which has no room for them.
static ZERO_STATS: PortStats = PortStats {
    traffic: PortCounters {
        rx_packets: 0,
        rx_bytes: 0,
        tx_packets: 0,
        tx_bytes: 0,
    },
    tunnel: TunnelCounters {
        encap_packets: 0,
        encap_bytes: 0,
        decap_packets: 0,
        decap_bytes: 0,
    },
    drops: [0; DropReason::COUNT],
};

/// Adds to the counters of port `ifindex` (this CPU's).
#[inline(always)]
pub(crate) fn with_stats(ifindex: u32, add: impl Fn(&mut PortStats)) {
    if let Some(stats) = PORT_COUNTERS.get_ptr_mut(ifindex) {
        // SAFETY: the value is this CPU's slot of a per-CPU map, and tc
        // programs do not preempt each other on a CPU.
        add(unsafe { &mut *stats });
        return;
    }
    // The agent creates the entry when it attaches the port; a frame may
    // still come first (or after a detach). NOEXIST: a program on another
    // CPU may have created it since our lookup.
    // By reference: a copy would take the stack this avoids.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let _ = PORT_COUNTERS.insert(ifindex, &ZERO_STATS, u64::from(BPF_NOEXIST));
    if let Some(stats) = PORT_COUNTERS.get_ptr_mut(ifindex) {
        // SAFETY: as above.
        add(unsafe { &mut *stats });
    }
}

/// Adds to this host's tunnel counters (this CPU's).
#[inline(always)]
pub(crate) fn with_underlay_stats(add: impl FnOnce(&mut UnderlayStats)) {
    if let Some(stats) = UNDERLAY_STATS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        add(unsafe { &mut *stats });
    }
}
