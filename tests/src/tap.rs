//! VMs on hypervisor taps (Nova with libvirt/QEMU): the port's tap is
//! created outside the agent, in the host's namespace, by a process that
//! holds its descriptor (here the test's), and the agent only adopts it. The
//! guest is a namespace whose `eth0` is a tap held by the test too; two
//! threads carry frames between the two descriptors, as QEMU's backend
//! does.
//!
//! The agent's in-process datapath tests have the same device, with guest
//! offloads and frame accounting (agent/src/datapath/tests/tap.rs); this is
//! the minimal one, for tests that run real agents.

use std::{
    ffi::CString,
    fs::OpenOptions,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use anyhow::{Context, ensure};

use crate::Netns;

/// TUNSETIFF (linux/if_tun.h): `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// A VM on a hypervisor tap: the port's tap in the host, the guest's `eth0`
/// in the VM's namespace, and the frames carried between them. Dropping it
/// stops the carrying and closes both descriptors, which deletes both taps
/// (they are not persistent), as when a VM is destroyed.
pub struct TapVm {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TapVm {
    /// Creates tap `device` in `host` and brings it up with `mtu`, as libvirt
    /// does, and gives `vm` an `eth0` with `mac` and `mtu`, up.
    pub fn plug(
        host: &Netns,
        device: &str,
        vm: &Netns,
        mac: &str,
        mtu: u32,
    ) -> anyhow::Result<TapVm> {
        let port = open_tap(host, device)?;
        let guest = open_tap(vm, "eth0")?;
        let mtu = mtu.to_string();
        host.exec("ip", &["link", "set", device, "mtu", &mtu, "up"])?;
        vm.exec(
            "ip",
            &["link", "set", "eth0", "address", mac, "mtu", &mtu, "up"],
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads = vec![
            carry(port.try_clone()?, guest.try_clone()?, stop.clone()),
            carry(guest, port, stop.clone()),
        ];
        Ok(TapVm { stop, threads })
    }
}

impl Drop for TapVm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Creates tap `name` in `netns` (a tap belongs to the namespace of the
/// thread that opens /dev/net/tun) and returns its descriptor.
fn open_tap(netns: &Netns, name: &str) -> anyhow::Result<OwnedFd> {
    ensure!(name.len() < 16, "tap name {name} is too long");
    let owned = name.to_string();
    netns
        .enter(move || -> anyhow::Result<OwnedFd> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .context("opening /dev/net/tun")?;
            let fd = OwnedFd::from(file);
            // struct ifreq: the name (IFNAMSIZ bytes), then the flags.
            let mut ifreq = [0u8; 40];
            ifreq[..owned.len()].copy_from_slice(owned.as_bytes());
            ifreq[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
            // SAFETY: TUNSETIFF reads and writes a struct ifreq, which
            // `ifreq` is as big as.
            let ret = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, ifreq.as_mut_ptr()) };
            ensure!(ret == 0, "TUNSETIFF: {}", io::Error::last_os_error());
            let name = CString::new(owned)?;
            // SAFETY: a NUL-terminated name.
            ensure!(
                unsafe { libc::if_nametoindex(name.as_ptr()) } != 0,
                "the tap did not appear"
            );
            Ok(fd)
        })?
        .with_context(|| format!("creating tap {name} in {}", netns.name()))
}

/// Copies each frame read from `from` to `to` until `stop`. A frame the
/// other side refuses is dropped, as by a guest whose queue is full.
fn carry(from: OwnedFd, to: OwnedFd, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::SeqCst) {
            let mut poll = libc::pollfd {
                fd: from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY (all three): plain calls on descriptors we own, with a
            // buffer of the size given.
            if unsafe { libc::poll(&raw mut poll, 1, 50) } <= 0 {
                continue;
            }
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let Ok(n) = usize::try_from(n) else {
                continue;
            };
            unsafe { libc::write(to.as_raw_fd(), buf.as_ptr().cast(), n) };
        }
    })
}
