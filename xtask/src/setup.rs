//! `cargo xtask setup`: what the tests, the demo and the benchmarks need on
//! this machine. Idempotent, and quick when everything is there.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, bail};

use crate::{ebpf, util::run_status};

/// Debian packages the tests, the demo and the benchmarks use, and who uses
/// each. Add a package here when something starts to need it.
pub const PACKAGES: &[&str] = &[
    // `ip`: namespaces, veths, bridges in the test harness, the demo and the
    // benchmarks; `ip -batch` is the kernel-tooling peer in `bench goalstate`.
    "iproute2",
    // `ping` between VMs in end-to-end tests.
    "iputils-ping",
    // `kill` (the harness kills what runs in a namespace it deletes), `ps`.
    "procps",
    // Real DHCP clients against the agent's responder in tests and the demo:
    // busybox's udhcpc, ISC's dhclient, dhcpcd.
    "udhcpc",
    "isc-dhcp-client",
    "dhcpcd5",
    // `bench dhcp`: Kea's server as a peer, perfdhcp (in kea-admin) as the
    // load generator, dnsmasq as a second peer, and `nft` to let perfdhcp's
    // relay-style datagrams leave its namespace from the client port.
    "kea-dhcp4-server",
    "kea-admin",
    "dnsmasq-base",
    "nftables",
    // Datapath tests and `bench datapath-local`: TCP and UDP (64-byte
    // packets, many clients) between VMs, against the kernel's bridge and
    // routing in the same run.
    "iperf3",
    // Datapath tests: datagrams with a forged source IP (`--spoof`).
    "hping3",
    // Datapath tests: ARP requests from a VM, and whose MAC answers them.
    "iputils-arping",
    // `bench datapath-local`: trafgen sends small UDP packets from a packet
    // ring, so that the path rather than the sender's sockets is measured.
    "netsniff-ng",
    // A real guest (tests/src/guest.rs): QEMU under TCG boots Debian's own
    // kernel, with the virtio-net modules of /lib/modules, from an
    // initramfs the harness builds around busybox (static: it needs no
    // libraries in the guest). busybox-static replaces the dynamic busybox
    // that udhcpc's package pulled in. The kernel's package brings
    // initramfs-tools and udev (and the systemd they match), which build an
    // initrd for /boot that nothing boots. QEMU 7.2 evicts a newer
    // qemu-utils if the machine has one from backports. xz unpacks the
    // kernel once, so that each guest boots it uncompressed.
    "qemu-system-x86",
    "linux-image-amd64",
    "busybox-static",
    "xz-utils",
    // The controller's tests drive the real `openstack` CLI, installed from
    // PyPI into a virtualenv of Debian's python3 (see OPENSTACK_CLI).
    "python3-venv",
    // The controller's etcd store: its tests and the end-to-end tests run a
    // real etcd on loopback (tests/src/etcd.rs); etcdctl's `check perf` is
    // etcd's own put rate, the denominator of the controller's benchmark.
    "etcd-server",
    "etcd-client",
    // etcd-client's build script compiles etcd's .proto files with protoc
    // (no crate of that chain ships one), and they import protobuf's
    // well-known types, which come with libprotobuf-dev.
    "protobuf-compiler",
    "libprotobuf-dev",
];

/// What `pip` installs in the virtualenv at
/// `alcor_tests::openstack::venv_dir()`; it resolves the other
/// dependencies. openstacksdk is pinned too: it builds the requests that
/// tests/openstack-cli-requests.md records.
const OPENSTACK_CLI: &[&str] = &["python-openstackclient==10.5.0", "openstacksdk==4.22.0"];

/// Debian's interpreter, not whichever `python3` comes first in PATH: it
/// is there on every Debian 12 machine once python3-venv is.
const PYTHON: &str = "/usr/bin/python3";

/// Daemons those packages install and enable for boot: dhcpcd would
/// configure every interface of the root namespace, Kea would serve DHCP
/// there. Tests and benchmarks run their own instances inside namespaces;
/// the system's stay disabled and stopped.
///
/// iperf3's package enables a server on port 5201 when debconf says so;
/// etcd-server's, a member on ports 2379 and 2380 with its data in
/// /var/lib/etcd.
const DAEMONS: &[&str] = &["dhcpcd", "kea-dhcp4-server", "nftables", "iperf3", "etcd"];

pub fn run() -> anyhow::Result<()> {
    install_packages()?;
    quiet_daemons()?;
    ebpf::ensure_toolchain()?;
    mount_bpffs()?;
    install_openstack_cli()?;
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn missing_packages() -> anyhow::Result<Vec<&'static str>> {
    // Exits non-zero when a package is unknown to dpkg; its stdout still
    // lists the known ones.
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(PACKAGES)
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let listed = String::from_utf8_lossy(&output.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once(' ')?;
            status.starts_with("ii").then_some(name)
        })
        .collect();
    Ok(PACKAGES
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect())
}

fn install_packages() -> anyhow::Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("setup: Debian packages present ({})", PACKAGES.len());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        run_status(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(&missing);
    {
        // Maintainer scripts may start no service while we install.
        let _guard = NoServiceStarts::install()?;
        apt(&install)?;
    }
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("still missing after apt-get install: {}", still.join(" "));
    }
    check_no_daemon_listens()
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action forbidden") while it
/// lives, so that invoke-rc.d and deb-systemd-invoke start nothing; removed
/// afterwards unless it was there before (container images often ship one).
struct NoServiceStarts {
    created: bool,
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoServiceStarts {
    fn install() -> anyhow::Result<NoServiceStarts> {
        use std::os::unix::fs::PermissionsExt;
        if Path::new(POLICY_RC_D).exists() {
            return Ok(NoServiceStarts { created: false });
        }
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# Written by `cargo xtask setup` while it installs packages.\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC_D}"))?;
        std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))?;
        Ok(NoServiceStarts { created: true })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

/// Disables (and, under systemd, stops) the daemons of [`DAEMONS`] that
/// their packages enabled for boot. Idempotent.
fn quiet_daemons() -> anyhow::Result<()> {
    let systemd_runs = Path::new("/run/systemd/system").exists();
    for daemon in DAEMONS {
        let unit = format!("{daemon}.service");
        let enabled = Command::new("systemctl")
            .args(["is-enabled", "--quiet", &unit])
            .status()
            .is_ok_and(|status| status.success());
        let sysv_links = sysv_start_links(daemon);
        if !enabled && !sysv_links {
            continue;
        }
        if !is_root() {
            println!(
                "setup: {daemon} is enabled at boot; run `cargo xtask setup` as root to disable it"
            );
            continue;
        }
        println!("setup: disabling {daemon} (tests and benchmarks run their own in namespaces)");
        if enabled {
            let mut disable = Command::new("systemctl");
            disable.args(["disable", "--quiet"]);
            if systemd_runs {
                disable.arg("--now");
            }
            run_status(disable.arg(&unit))?;
        }
        if sysv_links {
            run_status(Command::new("update-rc.d").args([daemon, "disable"]))?;
        }
    }
    Ok(())
}

/// Whether a SysV runlevel directory starts `daemon`.
fn sysv_start_links(daemon: &str) -> bool {
    ["0", "1", "2", "3", "4", "5", "6", "S"]
        .iter()
        .any(|level| {
            std::fs::read_dir(format!("/etc/rc{level}.d")).is_ok_and(|entries| {
                entries.flatten().any(|entry| {
                    let name = entry.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with('S') && name.get(3..) == Some(daemon)
                })
            })
        })
}

/// After an install: no DHCP daemon may listen in the root namespace.
fn check_no_daemon_listens() -> anyhow::Result<()> {
    let output = Command::new("ss")
        .args(["-H", "-l", "-u", "-n", "-p"])
        .output()
        .context("running ss")?;
    let listening: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| {
            ["kea-dhcp", "dhcpcd", "dnsmasq"]
                .iter()
                .any(|d| line.contains(d))
        })
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if !listening.is_empty() {
        bail!(
            "a DHCP daemon listens in the root namespace after the install: {}\n\
             stop it (systemctl disable --now kea-dhcp4-server dhcpcd); tests and benchmarks \
             run their own in namespaces",
            listening.join("; ")
        );
    }
    Ok(())
}

pub(crate) fn mount_bpffs() -> anyhow::Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(1) == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
        println!("setup: bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !is_root() {
        println!("setup: bpffs is not mounted at /sys/fs/bpf (needs root; the agent mounts it)");
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    run_status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// The virtualenv with the `openstack` CLI. A file in it records what was
/// installed, and where (a virtualenv's scripts name its absolute path):
/// when either changes, the virtualenv is made anew.
fn install_openstack_cli() -> anyhow::Result<()> {
    let venv = alcor_tests::openstack::venv_dir();
    let stamp = venv.join("alcor-installed");
    let wanted = format!("{}\n{}\n", OPENSTACK_CLI.join("\n"), venv.display());
    let openstack = venv.join("bin/openstack");
    if openstack.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        println!("setup: openstack CLI present ({})", openstack.display());
        return Ok(());
    }
    println!(
        "setup: installing {} in {}",
        OPENSTACK_CLI.join(" "),
        venv.display()
    );
    let started = Instant::now();
    if venv.exists() {
        std::fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    run_status(Command::new(PYTHON).args(["-m", "venv"]).arg(&venv))
        .context("making the virtualenv (Debian's python3-venv)")?;
    run_status(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .args(OPENSTACK_CLI),
    )
    .context("installing the openstack CLI from PyPI")?;
    let version = Command::new(&openstack)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", openstack.display()))?;
    if !version.status.success() {
        bail!(
            "{} --version failed: {}",
            openstack.display(),
            String::from_utf8_lossy(&version.stderr)
        );
    }
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    println!(
        "setup: {} installed in {:.0?}",
        String::from_utf8_lossy(&version.stdout).trim(),
        started.elapsed()
    );
    Ok(())
}
