//! Port plumbing: makes the kernel devices behind ports match the desired
//! state, through rtnetlink (the engine then attaches the datapath to them).
//! Also the host's VXLAN device ([`vxlan`]).
//!
//! Reconciling is level-triggered and idempotent: `apply` and `remove` look
//! at what exists and change only what differs, so the same calls serve a
//! goal-state push, a device appearing, and adoption after a restart.

mod error;
pub mod link;
pub mod vxlan;
mod watch;

use std::{
    fs::File,
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    time::Instant,
};

use futures::{StreamExt, stream};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use nix::{errno::Errno, fcntl::OFlag, sys::stat::Mode};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth};

pub use self::error::PlumbingError;
pub use self::watch::{LinkEvent, watch_links};
use self::{error::netlink, link::Link};
use crate::core::{
    devices::{AgentDevice, Plugged, PortPlan, Unplugged},
    model::{Binding, NetnsRef, device_name},
};

/// How many ports are plumbed at once: enough to keep netlink busy while
/// each request waits for the kernel.
const CONCURRENCY: usize = 8;

/// The name of the VM-side end of a netns-bound port's veth pair.
pub const VM_DEVICE: &str = "eth0";

/// Prefix of the alias the agent gives to the devices it creates: the alias
/// says which port a device belongs to and with which spec, so a restarted
/// agent can tell its own devices, and stale ones, from anybody else's.
const ALIAS_PREFIX: &str = "alcor:";

pub struct Plumber {
    handle: Handle,
    /// MTU of port devices: the underlay's minus the VXLAN overhead.
    mtu: u32,
}

/// The MTU of a veth's host side: the most a veth takes (64 KiB). A veth
/// drops a frame bigger than its peer's MTU before any program sees it, so
/// that a VM ignoring its MTU (static address, MTU 1500) would lose its
/// big frames unseen; taken by the host side, they reach the port program,
/// which answers them with ICMP "fragmentation needed" (or sends them to
/// be fragmented). Nothing is sent out of the host side but to the VM,
/// whose own `eth0` keeps the port MTU.
const HOST_SIDE_MTU: u32 = 65535;

/// What [`Plumber::prepare`] did for a port, and how long it took.
struct Preparation {
    prepared: Result<Prepared, PlumbingError>,
    replaced: Option<u32>,
    micros: u32,
}

/// How far [`Plumber::prepare`] took a port's device.
enum Prepared {
    /// A tap that does not exist yet.
    Pending,
    /// The agent's veth, as planned (IPv6 was turned off at its creation).
    Ready(u32),
    /// A device to turn IPv6 off on: a veth just created (`new`: still
    /// down), or a tap.
    Silence { ifindex: u32, new: bool },
}

/// Who owns the port device called by a port's name.
enum Owner {
    /// Created by the agent for this port, with this spec.
    Agent { spec_matches: bool },
    /// Created by somebody else (a hypervisor's tap, usually).
    Other,
}

impl Plumber {
    pub fn new(handle: Handle, mtu: u32) -> Plumber {
        Plumber { handle, mtu }
    }

    /// The devices the agent made for ports (by their alias), whichever
    /// ports they were for.
    pub async fn agent_devices(&self) -> Result<Vec<AgentDevice>, PlumbingError> {
        let links = link::all(&self.handle)
            .await
            .map_err(netlink("listing links"))?;
        Ok(links
            .iter()
            .filter_map(|link| {
                Some(AgentDevice {
                    ifindex: link.index,
                    name: link.name.clone(),
                    port_id: Self::owner_port_id(link)?.to_owned(),
                })
            })
            .collect())
    }

    /// Makes the ports' devices exist as planned, concurrently; the results
    /// come in the order of `plans`.
    ///
    /// IPv6 goes off on new devices between their creation and their
    /// bringing up ([`Ipv6Settings`]), for all of them in one pass once
    /// every device of the batch exists. That write takes the rtnl lock
    /// with a trylock, which the kernel retries at once: a busy loop as long
    /// as a netlink request holds the lock. Between the batch's own
    /// creates, it spun against them (stalling an async worker meanwhile);
    /// after them, only other users of the lock are left. (16 agents on one
    /// kernel, 150 veths each, create to up: 3.4-7.6 s with the write
    /// between, 1.3-1.4 s in one pass after, 1.3-1.7 s without it.)
    pub async fn plug_all(&self, plans: &[PortPlan]) -> Vec<Plugged<PlumbingError>> {
        // Futures made up front (run `CONCURRENCY` at a time): a stream
        // closure over borrowed plans is not `Send` for the compiler.
        let preparing: Vec<_> = plans.iter().map(|plan| self.prepare_timed(plan)).collect();
        let prepared: Vec<Preparation> = stream::iter(preparing)
            .buffered(CONCURRENCY)
            .collect()
            .await;

        let silence = |preparation: &Preparation| {
            matches!(preparation.prepared, Ok(Prepared::Silence { .. }))
        };
        let silence_us: Vec<u32> = if prepared.iter().any(silence) {
            tokio::task::block_in_place(|| {
                let ipv6 = Ipv6Settings::open();
                plans
                    .iter()
                    .zip(&prepared)
                    .map(|(plan, preparation)| {
                        if !silence(preparation) {
                            return 0;
                        }
                        let started = Instant::now();
                        ipv6.turn_off(&plan.device);
                        micros_since(started)
                    })
                    .collect()
            })
        } else {
            vec![0; plans.len()]
        };

        let finishing: Vec<_> = plans
            .iter()
            .zip(prepared)
            .zip(silence_us)
            .map(|((plan, preparation), silence_us)| self.finish(plan, preparation, silence_us))
            .collect();
        stream::iter(finishing)
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    async fn prepare_timed(&self, plan: &PortPlan) -> Preparation {
        let started = Instant::now();
        let mut replaced = None;
        let prepared = self.prepare(plan, &mut replaced).await;
        Preparation {
            prepared,
            replaced,
            micros: micros_since(started),
        }
    }

    /// Brings a prepared port's device up if new; `silence_us`: the time
    /// IPv6 took to go off on it.
    async fn finish(
        &self,
        plan: &PortPlan,
        preparation: Preparation,
        silence_us: u32,
    ) -> Plugged<PlumbingError> {
        let started = Instant::now();
        let device = match preparation.prepared {
            Ok(Prepared::Pending) => Ok(None),
            Ok(
                Prepared::Ready(ifindex)
                | Prepared::Silence {
                    ifindex,
                    new: false,
                },
            ) => Ok(Some(ifindex)),
            Ok(Prepared::Silence { ifindex, new: true }) => {
                self.finish_veth(plan, ifindex).await.map(Some)
            }
            Err(reason) => Err(reason),
        };
        Plugged {
            device,
            replaced: preparation.replaced,
            network_us: preparation
                .micros
                .saturating_add(silence_us)
                .saturating_add(micros_since(started)),
        }
    }

    /// Undoes what [`Self::plug_all`] did for these ports: deletes the
    /// devices the agent created, leaves those it adopted (taps) to their
    /// owner. The results come in the order of `port_ids`.
    pub async fn unplug_all(&self, port_ids: &[&str]) -> Vec<Unplugged<PlumbingError>> {
        let devices: Vec<String> = port_ids.iter().map(|id| device_name(id)).collect();
        let finding: Vec<_> = devices.iter().map(|device| self.find(device)).collect();
        let found: Vec<_> = stream::iter(finding).buffered(CONCURRENCY).collect().await;
        let mut results = Vec::with_capacity(port_ids.len());
        let (mut doomed, mut positions) = (Vec::new(), Vec::new());
        for (port_id, found) in port_ids.iter().zip(found) {
            let (device, error) = match found {
                Ok(Some(found)) => {
                    if Self::created_for(port_id, &found) {
                        positions.push(results.len());
                        doomed.push(AgentDevice {
                            ifindex: found.index,
                            name: found.name,
                            port_id: (*port_id).to_owned(),
                        });
                    }
                    (Some(found.index), None)
                }
                Ok(None) => (None, None),
                Err(error) => (None, Some(error)),
            };
            results.push(Unplugged { device, error });
        }
        for (position, deleted) in positions.into_iter().zip(self.delete(&doomed).await) {
            results[position].error = deleted.err();
        }
        results
    }

    /// Deletes a device the agent created for a port, whose spec changed.
    async fn delete_one(&self, found: &Link) -> Result<(), PlumbingError> {
        link::delete(&self.handle, found.index)
            .await
            .map_err(netlink(format!("deleting {}", found.name)))
    }

    /// Deletes devices the agent created, all in one request when there are
    /// several ([`link::delete_all`]); their datapath filters go with them.
    /// The results come in the order of `devices`.
    pub async fn delete(&self, devices: &[AgentDevice]) -> Vec<Result<(), PlumbingError>> {
        let indexes: Vec<u32> = devices.iter().map(|device| device.ifindex).collect();
        let deleted = link::delete_all(&self.handle, &indexes, CONCURRENCY).await;
        devices
            .iter()
            .zip(deleted)
            .map(|(device, deleted)| deleted.map_err(netlink(format!("deleting {}", device.name))))
            .collect()
    }

    /// The port id in the alias of a device the agent created.
    fn owner_port_id(found: &Link) -> Option<&str> {
        let rest = found.alias.as_deref()?.strip_prefix(ALIAS_PREFIX)?;
        Some(rest.rsplit_once(':').map_or(rest, |(id, _spec)| id))
    }

    async fn find(&self, device: &str) -> Result<Option<Link>, PlumbingError> {
        link::by_name(&self.handle, device)
            .await
            .map_err(netlink(format!("looking up {device}")))
    }

    /// Makes the port's device exist, as far as it can before IPv6 is
    /// turned off on it; `replaced`: the agent's device it deleted on the
    /// way.
    async fn prepare(
        &self,
        plan: &PortPlan,
        replaced: &mut Option<u32>,
    ) -> Result<Prepared, PlumbingError> {
        let found = self.find(&plan.device).await?;
        match (&plan.binding, found) {
            (Binding::Unbound, _) => Err(PlumbingError::Unbound),
            (Binding::Tap, None) => Ok(Prepared::Pending),
            (Binding::Tap, Some(found)) => match self.owner(plan, &found) {
                Owner::Other => Ok(Prepared::Silence {
                    ifindex: found.index,
                    new: false,
                }),
                // The port was netns-bound before: its veth goes, the tap will come.
                Owner::Agent { .. } => {
                    self.delete_one(&found).await?;
                    *replaced = Some(found.index);
                    Ok(Prepared::Pending)
                }
            },
            (Binding::Netns(netns), found) => {
                if let Some(found) = found {
                    match self.owner(plan, &found) {
                        Owner::Agent { spec_matches: true } => {
                            return Ok(Prepared::Ready(found.index));
                        }
                        Owner::Agent {
                            spec_matches: false,
                        } => {
                            self.delete_one(&found).await?;
                            *replaced = Some(found.index);
                        }
                        Owner::Other => {
                            return Err(PlumbingError::NotOurs {
                                device: plan.device.clone(),
                                hint: "",
                            });
                        }
                    }
                }
                let ifindex = self.create_veth(plan, netns).await?;
                Ok(Prepared::Silence { ifindex, new: true })
            }
        }
    }

    fn created_for(port_id: &str, found: &Link) -> bool {
        found.kind == Some(InfoKind::Veth) && Self::owner_port_id(found) == Some(port_id)
    }

    fn owner(&self, plan: &PortPlan, found: &Link) -> Owner {
        if Self::created_for(&plan.id, found) {
            Owner::Agent {
                spec_matches: found.alias.as_deref() == Some(self.alias(plan).as_str()),
            }
        } else {
            Owner::Other
        }
    }

    /// `alcor:<port id>:<hash of what the VM side was created with>`.
    fn alias(&self, plan: &PortPlan) -> String {
        let netns = match &plan.binding {
            Binding::Netns(netns) => netns.as_str(),
            _ => "",
        };
        let spec = format!("{netns}\0{}\0{}\0{HOST_SIDE_MTU}", plan.mac, self.mtu);
        format!("{ALIAS_PREFIX}{}:{:016x}", plan.id, fnv1a(spec.as_bytes()))
    }

    /// Creates the veth pair in one netlink request whose main device is the
    /// VM side, created directly in its namespace, named, addressed, sized
    /// and up; its peer, the host side, stays here, down. (The other way
    /// round fails: a veth cannot go up at creation before its peer
    /// exists.) Then the host side is labelled at once, so that an agent
    /// that dies before it is up still knows it for its own.
    async fn create_veth(&self, plan: &PortPlan, netns: &NetnsRef) -> Result<u32, PlumbingError> {
        let path = netns.path();
        let namespace = File::open(&path).map_err(|source| PlumbingError::Netns {
            netns: netns.as_str().into(),
            path: path.clone(),
            source,
        })?;
        let host_side = LinkUnspec::new_with_name(&plan.device)
            .mtu(HOST_SIDE_MTU)
            .build();
        let vm_side = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(VM_DEVICE)
            .address(plan.mac.octets().to_vec())
            .mtu(self.mtu)
            .setns_by_fd(namespace.as_raw_fd())
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(host_side)))
            .build();
        self.handle
            .link()
            .add(vm_side)
            .execute()
            .await
            .map_err(|e| match link::errno(&e) {
                Some(nix::libc::EEXIST) => PlumbingError::Taken {
                    device: plan.device.clone(),
                    netns: netns.as_str().into(),
                },
                _ => netlink(format!("creating veth {}", plan.device))(e),
            })?;
        let created = self
            .find(&plan.device)
            .await?
            .ok_or_else(|| PlumbingError::Vanished {
                device: format!("veth {}", plan.device),
            })?;
        // The kernel ignores an alias given at creation.
        let label = LinkUnspec::new_with_index(created.index)
            .append_extra_attribute(LinkAttribute::IfAlias(self.alias(plan)))
            .build();
        self.set_or_delete(label, created.index, "labelling", plan)
            .await
    }

    /// Brings a new veth's host side up, once IPv6 is off on it (so that it
    /// never sends anything of its own).
    async fn finish_veth(&self, plan: &PortPlan, ifindex: u32) -> Result<u32, PlumbingError> {
        let up = LinkUnspec::new_with_index(ifindex).up().build();
        self.set_or_delete(up, ifindex, "bringing up", plan).await
    }

    /// Changes a new veth; deletes it if that fails.
    async fn set_or_delete(
        &self,
        change: LinkMessage,
        ifindex: u32,
        what: &str,
        plan: &PortPlan,
    ) -> Result<u32, PlumbingError> {
        if let Err(error) = self.handle.link().set(change).execute().await {
            let _ = link::delete(&self.handle, ifindex).await;
            return Err(netlink(format!("{what} veth {}", plan.device))(error));
        }
        Ok(ifindex)
    }
}

/// The IPv6 settings of this network namespace's devices, to turn IPv6 off
/// on those that are not interfaces of this host: a port's host side is a
/// wire into the VM (with IPv6 on, the host's kernel would send the VM its
/// own router solicitations and MLD reports, and take addresses and a
/// default route from its router advertisements), the VXLAN device only
/// holds a socket.
///
/// Only `disable_ipv6` does all of it. (Checked on 6.18: with
/// `addrgenmode none`, the one IPv6 setting netlink takes, the host side
/// still sends MLD reports for ff02::2 when forwarding is on, and takes a
/// SLAAC address and a default route from the VM's advertisements.)
///
/// Files are opened relative to the `conf` directory, opened once: each
/// directory of a path from `/proc/sys/net` has an entry per network
/// namespace that looked into it, and a lookup compares them all (0.4 ms a
/// path with 2,400 VM namespaces, 3 µs relative).
struct Ipv6Settings {
    /// `None` on a kernel without IPv6: nothing to turn off.
    conf: Option<OwnedFd>,
}

impl Ipv6Settings {
    fn open() -> Ipv6Settings {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let conf = match nix::fcntl::open("/proc/sys/net/ipv6/conf", flags, Mode::empty()) {
            Ok(conf) => Some(conf),
            Err(Errno::ENOENT) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot open /proc/sys/net/ipv6/conf: IPv6 stays on");
                None
            }
        };
        Ipv6Settings { conf }
    }

    fn turn_off(&self, device: &str) {
        let Some(conf) = &self.conf else {
            return;
        };
        let path = format!("{device}/disable_ipv6");
        let written = nix::fcntl::openat(
            conf,
            path.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .and_then(|file| File::from(file).write_all(b"1"));
        match written {
            // The device is gone already.
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(%error, device, "could not turn IPv6 off on a device");
            }
            _ => {}
        }
    }
}

/// 64-bit FNV-1a: a stable hash (std's is not guaranteed across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn micros_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rtnetlink::LinkVeth;

    use super::*;

    /// Runs `test` with rtnetlink inside a new network namespace, on a thread
    /// of its own (namespaces are per thread); the namespace goes away with
    /// its devices when the thread ends. False, without running it, where
    /// it cannot run: it needs root, which CI must give.
    fn in_new_netns(test: impl FnOnce(&tokio::runtime::Runtime, &Handle) + Send + 'static) -> bool {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run these as root"
            );
            return false;
        }
        let thread = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let (runtime, handle) = crate::testing::rtnetlink();
            test(&runtime, &handle);
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
        true
    }

    fn add_veth(runtime: &tokio::runtime::Runtime, handle: &Handle, name: &str) -> u32 {
        let peer = format!("{name}-peer");
        let veth = LinkVeth::new(name, &peer).build();
        runtime.block_on(handle.link().add(veth).execute()).unwrap();
        index_of(runtime, handle, name)
    }

    fn index_of(runtime: &tokio::runtime::Runtime, handle: &Handle, name: &str) -> u32 {
        let found = runtime.block_on(link::by_name(handle, name)).unwrap();
        found.unwrap().index
    }

    fn names(runtime: &tokio::runtime::Runtime, handle: &Handle) -> BTreeSet<String> {
        let links = runtime.block_on(link::all(handle)).unwrap();
        links.into_iter().map(|link| link.name).collect()
    }

    #[test]
    fn several_links_are_deleted_at_once_and_no_other() {
        let ran = in_new_netns(|runtime, handle| {
            let doomed: Vec<u32> = ["port0", "port1", "port2"]
                .map(|name| add_veth(runtime, handle, name))
                .into();
            let kept = add_veth(runtime, handle, "port3");
            let bystander = add_veth(runtime, handle, "other");
            let gone = add_veth(runtime, handle, "gone");
            runtime.block_on(link::delete(handle, gone)).unwrap();

            // With one that is gone already, which is not an error.
            let indexes = [doomed.as_slice(), &[gone]].concat();
            let deleted = runtime.block_on(link::delete_all(handle, &indexes, 2));
            assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
            let left = ["lo", "other", "other-peer", "port3", "port3-peer"];
            assert_eq!(names(runtime, handle), left.map(String::from).into());
            assert_eq!(index_of(runtime, handle, "other"), bystander);

            // One alone, the plain way.
            let deleted = runtime.block_on(link::delete_all(handle, &[kept], 2));
            assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
            let left = ["lo", "other", "other-peer"];
            assert_eq!(names(runtime, handle), left.map(String::from).into());
        });
        if !ran {
            eprintln!("SKIPPED: needs root");
        }
    }

    #[test]
    fn ipv6_goes_off_on_the_devices_named_only() {
        let ran = in_new_netns(|runtime, handle| {
            add_veth(runtime, handle, "port0");
            let ipv6 = Ipv6Settings::open();
            ipv6.turn_off("port0");
            // A device that is gone is no error.
            ipv6.turn_off("gone");
            let setting = |device: &str| {
                let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
                std::fs::read_to_string(path).unwrap()
            };
            assert_eq!(setting("port0").trim(), "1");
            assert_eq!(setting("port0-peer").trim(), "0");
        });
        if !ran {
            eprintln!("SKIPPED: needs root");
        }
    }

    #[test]
    fn the_vxlan_device_is_not_taken_for_a_port_device() {
        let device = |alias: &str| Link {
            index: 9,
            name: "dev".into(),
            alias: Some(alias.into()),
            kind: None,
            mtu: None,
            mac: None,
            up: true,
            vxlan: None,
        };
        assert_eq!(Plumber::owner_port_id(&device(vxlan::VXLAN_ALIAS)), None);
        assert!(vxlan::is_ours(&device(vxlan::VXLAN_ALIAS)));
        let port = device("alcor:port-1:0123456789abcdef");
        assert_eq!(Plumber::owner_port_id(&port), Some("port-1"));
        assert!(!vxlan::is_ours(&port));
    }
}
