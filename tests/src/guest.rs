//! A real guest: QEMU under TCG (CI machines have no usable KVM) boots the
//! distribution's kernel with a virtio-net NIC on a tap that QEMU creates
//! in a given namespace, as Nova's libvirt does on a compute host. QEMU's
//! default virtio-net offloads are left as they are: the guest negotiates
//! checksum offload and TSO, and the tap takes the offloads the guest
//! accepts, as in production.
//!
//! The guest boots the kernel uncompressed, from an initramfs made of the
//! host's own files: busybox (static), the distribution's stock udhcpc
//! script, iperf3 and its libraries, and the kernel's modules that
//! virtio-net needs. Both are made once per test process. The kernel console goes to a log file (quoted when
//! something fails); a shell reads commands from the second serial port,
//! a unix socket on the host: [`Guest::run`] writes a command between
//! numbered markers and reads up to the closing one, within a deadline.
//!
//! Nothing is configured in the root namespace: QEMU runs inside the
//! caller's namespace. It is killed when the `Guest` drops, and with its
//! namespace (`Netns` and `NetnsSet` kill what runs in those they delete).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fs::{self, File},
    io::{self, Read, Write},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail, ensure};

use crate::{
    Netns,
    dhcp::{Eth0, require},
    netns::run,
    traffic::{mac_bytes, parse_iperf3, tcp_received_bps, tcp_received_bytes},
};

/// From QEMU's start to the shell answering. A boot takes under 2 s on an
/// idle 2-core machine; CI runs other tests beside it.
pub const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// Bounds a command of [`Guest::run`].
pub const COMMAND_LIMIT: Duration = Duration::from_secs(30);
/// How long past a command's limit the guest may take to report that it
/// killed it, before the host gives up waiting.
const REPORT_GRACE: Duration = Duration::from_secs(10);
/// udhcpc's defaults: 3 DISCOVERs 3 s apart, then it gives up (`-n`).
const UDHCPC_LIMIT: Duration = Duration::from_secs(30);

/// The modules eth0 needs (with those they depend on).
const MODULES: &[&str] = &["virtio_pci", "virtio_net"];
/// Where this busybox's udhcpc runs its script from when given none:
/// Debian builds it with the path its udhcpc package installs, not
/// busybox's own default (/usr/share/udhcpc/default.script).
const UDHCPC_SCRIPT: &str = "/etc/udhcpc/default.script";
/// panic=-1 with QEMU's -no-reboot: a guest that panics ends QEMU, which
/// `boot` notices at once instead of waiting for its deadline.
const KERNEL_ARGS: &str = "console=ttyS0 rdinit=/init panic=-1 quiet";
const READY: &str = "ALCOR-GUEST-READY\n";
/// Printed around each command's output. The shell is told to print it
/// in two quoted pieces, so that the typed text never matches it.
const MARK: &str = "@@alcor-guest-";
/// A line of a terminal in canonical mode holds 4095 bytes.
const MAX_COMMAND: usize = 3000;

/// PID 1: mounts, loads the NIC's modules, then runs a shell reading
/// commands from ttyS1. The port neither echoes nor turns LF into CRLF,
/// so the host reads exactly what commands print. Reading a script from
/// the device (rather than stdin) keeps the shell non-interactive: no
/// prompt, no job control; a syntax error ends it and it starts again.
const INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
@INSMOD@ip link set lo up
exec </dev/null >/dev/ttyS1 2>&1
stty -F /dev/ttyS1 -echo -onlcr
echo ALCOR-GUEST-READY
while :; do sh /dev/ttyS1; done
"#;

/// A booted guest: its QEMU process (killed on drop), and a shell.
pub struct Guest {
    shell: UnixStream,
    /// Bytes read from the shell past the last command's output.
    unread: Vec<u8>,
    commands: u32,
    netns: String,
    tap: String,
    boot_time: Duration,
    // Dropped (QEMU killed) before its directory goes.
    qemu: Qemu,
    dir: tempfile::TempDir,
}

/// Which way a TCP test sends its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    FromGuest,
    ToGuest,
}

/// What a TCP test moved, as its receiver counted.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    pub bytes: u64,
    pub bits_per_second: f64,
}

impl Guest {
    /// Boots a guest in `netns`, whose NIC (MAC `mac`) is the tap `tap`
    /// that QEMU creates there, down and in no bridge: plugging it is the
    /// caller's (the agent's, a bridge's). Returns once the guest's shell
    /// answers and its eth0 has that MAC, within [`BOOT_LIMIT`].
    pub fn boot(netns: &Netns, tap: &str, mac: &str) -> anyhow::Result<Guest> {
        require("qemu-system-x86_64", "qemu-system-x86")?;
        ensure!(
            !tap.is_empty()
                && tap.len() <= 15
                && tap
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{tap:?} is not a tap name"
        );
        let mac = mac_bytes(mac)?.map(|b| format!("{b:02x}")).join(":");
        let image = image()?;
        let started = Instant::now();
        let deadline = started + BOOT_LIMIT;
        let dir = tempfile::Builder::new().prefix("alcor-guest-").tempdir()?;
        let kernel = dir.path().join("kernel");
        fs::write(&kernel, &image.kernel).context("writing the kernel")?;
        let initramfs = dir.path().join("initramfs.cpio");
        fs::write(&initramfs, &image.initramfs).context("writing the initramfs")?;
        let socket = dir.path().join("shell.sock");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name(), "qemu-system-x86_64"])
            .args(["-accel", "tcg", "-nodefaults", "-no-user-config"])
            .args(["-display", "none", "-no-reboot", "-m", "256", "-smp", "1"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initramfs)
            .args(["-append", KERNEL_ARGS])
            .args(["-serial", &format!("file:{}", path("console.log"))])
            // QEMU waits for the harness to connect before it starts the
            // guest: nothing the guest prints is lost.
            .args([
                "-chardev",
                &format!(
                    "socket,id=shell,path={},server=on,wait=on",
                    socket.display()
                ),
                "-serial",
                "chardev:shell",
            ])
            .args([
                "-netdev",
                &format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
                "-device",
                &format!("virtio-net-pci,netdev=net0,mac={mac}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(path("qemu.log"))?)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let mut qemu = Qemu(child);
        let shell = connect(&socket, &mut qemu, deadline).with_context(|| logs(dir.path()))?;
        let mut guest = Guest {
            shell,
            unread: Vec::new(),
            commands: 0,
            netns: netns.name().to_string(),
            tap: tap.to_string(),
            boot_time: Duration::ZERO,
            qemu,
            dir,
        };
        guest
            .read_until(deadline, "the guest's shell", |bytes| {
                Some(((), find(bytes, READY.as_bytes())? + READY.len()))
            })
            .with_context(|| logs(guest.dir.path()))?;
        let address = guest
            .exec("cat /sys/class/net/eth0/address")
            .with_context(|| logs(guest.dir.path()))?;
        ensure!(
            address.trim() == mac,
            "the guest's eth0 has MAC {:?}, not {mac}\n{}",
            address.trim(),
            logs(guest.dir.path())
        );
        guest.boot_time = started.elapsed();
        Ok(guest)
    }

    /// From QEMU's start to the shell answering.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The hypervisor's tap, in the namespace given to `boot`.
    pub fn tap(&self) -> &str {
        &self.tap
    }

    /// Runs `command` (a line of `sh`) in the guest within
    /// [`COMMAND_LIMIT`]: its exit status and output (stdout and stderr).
    pub fn run(&mut self, command: &str) -> anyhow::Result<(i32, String)> {
        self.run_within(command, COMMAND_LIMIT)
    }

    /// [`Guest::run`] within `limit`: the guest kills a command that
    /// overruns it (SIGKILL, status 137), so that the shell is free for the
    /// next one. Fails if the guest does not answer within `limit` and a
    /// grace; later commands then run once that one has ended.
    pub fn run_within(&mut self, command: &str, limit: Duration) -> anyhow::Result<(i32, String)> {
        ensure!(
            command.len() <= MAX_COMMAND
                && command
                    .chars()
                    .all(|c| c == '\n' || c == '\t' || !c.is_control()),
            "command {command:?}: too long, or control characters a terminal would act on"
        );
        self.commands += 1;
        let n = self.commands;
        // `sh -c`: a syntax error ends that shell, not the one reading.
        // busybox's timeout execs the command, whose status it keeps.
        let line = format!(
            "echo '{MARK}'begin-{n}; timeout -s KILL {} sh -c '{}' </dev/null 2>&1; \
             echo '{MARK}'end-{n} $?\n",
            limit.as_secs_f64().ceil().max(1.0),
            command.replace('\'', r"'\''")
        );
        self.shell
            .write_all(line.as_bytes())
            .context("writing to the guest's shell")?;
        let begin = format!("{MARK}begin-{n}\n");
        let end = format!("{MARK}end-{n} ");
        let deadline = Instant::now() + limit + REPORT_GRACE;
        self.read_until(deadline, &format!("`{command}`"), |bytes| {
            let start = find(bytes, begin.as_bytes())? + begin.len();
            let stop = start + find(&bytes[start..], end.as_bytes())?;
            let status_at = stop + end.len();
            let newline = status_at + bytes[status_at..].iter().position(|&b| b == b'\n')?;
            let status = std::str::from_utf8(&bytes[status_at..newline])
                .ok()?
                .parse()
                .ok()?;
            let output = String::from_utf8_lossy(&bytes[start..stop]).into_owned();
            Some(((status, output), newline + 1))
        })
    }

    /// Runs `command` in the guest; fails unless it exits 0. Its output.
    pub fn exec(&mut self, command: &str) -> anyhow::Result<String> {
        self.exec_within(command, COMMAND_LIMIT)
    }

    fn exec_within(&mut self, command: &str, limit: Duration) -> anyhow::Result<String> {
        let (status, output) = self.run_within(command, limit)?;
        ensure!(
            status == 0,
            "`{command}` in the guest exited {status}: {output}"
        );
        Ok(output)
    }

    /// Runs udhcpc as Debian's ifupdown does (`udhcpc -n -p PIDFILE -i
    /// eth0`): busybox's default request list and the distribution's stock
    /// script, which sets address, MTU and default route. Once bound it
    /// goes on in the background and renews. Returns eth0 as it then is.
    pub fn udhcpc(&mut self) -> anyhow::Result<Eth0> {
        self.exec_within("udhcpc -n -p /run/udhcpc.eth0.pid -i eth0", UDHCPC_LIMIT)?;
        self.eth0()
    }

    /// The guest's eth0: IPv4 addresses, MTU, routes.
    pub fn eth0(&mut self) -> anyhow::Result<Eth0> {
        let addresses = self
            .exec("ip -4 addr show dev eth0")?
            .lines()
            .filter_map(|line| line.trim().strip_prefix("inet ")?.split_whitespace().next())
            .map(str::to_string)
            .collect();
        let mtu = self.exec("cat /sys/class/net/eth0/mtu")?;
        let mtu = mtu.trim().parse().context("eth0's MTU")?;
        let routes = self
            .exec("ip -4 route show dev eth0")?
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|route| !route.is_empty())
            .collect();
        Ok(Eth0 {
            addresses,
            mtu,
            routes,
        })
    }

    /// One TCP test of iperf3 for `duration`, the guest being the client of
    /// an iperf3 server at `server`:`port` (in another namespace, say a
    /// [`crate::traffic::Iperf3Server`]); `direction` says who sends. Give
    /// each run a server of its own (`one_off`): once, under load, a test
    /// hung after a reverse test on the same server.
    pub fn iperf3(
        &mut self,
        server: Ipv4Addr,
        port: u16,
        direction: Direction,
        duration: Duration,
    ) -> anyhow::Result<Transfer> {
        let reverse = match direction {
            Direction::FromGuest => "",
            Direction::ToGuest => " -R",
        };
        let command = format!(
            "iperf3 -J -i 0 --connect-timeout 3000 -c {server} -p {port} -t {}{reverse}",
            duration.as_secs().max(1)
        );
        let (status, output) = self.run_within(&command, duration + Duration::from_secs(15))?;
        let report = parse_iperf3(output.as_bytes(), status == 0)?;
        Ok(Transfer {
            bytes: tcp_received_bytes(&report),
            bits_per_second: tcp_received_bps(&report),
        })
    }

    /// The counters of the hypervisor's tap: what it sent went to the
    /// guest, what it received came from the guest.
    pub fn tap_counters(&self) -> anyhow::Result<LinkCounters> {
        LinkCounters::of(&self.netns, &self.tap)
    }

    /// Reads from the shell until `done` finds, in what was read and not
    /// yet taken, what it waits for (and says how many bytes it took);
    /// fails at `deadline`, or as soon as QEMU exits.
    fn read_until<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut done: impl FnMut(&[u8]) -> Option<(T, usize)>,
    ) -> anyhow::Result<T> {
        let mut buf = [0u8; 16384];
        loop {
            if let Some((value, taken)) = done(&self.unread) {
                self.unread.drain(..taken);
                return Ok(value);
            }
            let now = Instant::now();
            if now >= deadline {
                let tail = &self.unread[self.unread.len().saturating_sub(2000)..];
                bail!(
                    "timed out waiting for {what}; the guest printed:\n{}",
                    String::from_utf8_lossy(tail)
                );
            }
            if let Some(status) = self.qemu.0.try_wait()? {
                bail!("QEMU exited ({status}) while waiting for {what}");
            }
            // Short reads, so that QEMU's end is seen soon.
            let wait = (deadline - now).min(Duration::from_millis(200));
            self.shell.set_read_timeout(Some(wait))?;
            match self.shell.read(&mut buf) {
                Ok(0) => bail!("the guest's serial port closed while waiting for {what}"),
                Ok(n) => self.unread.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e).context("reading the guest's shell"),
            }
        }
    }
}

/// The QEMU process, killed when dropped.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to the shell's socket once QEMU has made it.
fn connect(socket: &Path, qemu: &mut Qemu, deadline: Instant) -> anyhow::Result<UnixStream> {
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                if let Some(status) = qemu.0.try_wait()? {
                    bail!("QEMU exited ({status})");
                }
                ensure!(
                    Instant::now() < deadline,
                    "QEMU made no socket {} in time: {e}",
                    socket.display()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The end of the guest's console and QEMU's own messages.
fn logs(dir: &Path) -> String {
    let console = fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    let lines: Vec<&str> = console.lines().collect();
    let tail = lines[lines.len().saturating_sub(40)..].join("\n");
    let qemu = fs::read_to_string(dir.join("qemu.log")).unwrap_or_default();
    format!(
        "guest console (last lines):\n{tail}\nQEMU says:\n{}",
        qemu.trim()
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Counters of a network device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

impl LinkCounters {
    /// `dev`'s counters in namespace `netns` (`ip -s -j link show`).
    pub fn of(netns: &str, dev: &str) -> anyhow::Result<LinkCounters> {
        let out = run("ip", &["-n", netns, "-s", "-j", "link", "show", "dev", dev])?;
        let links: serde_json::Value = serde_json::from_str(&out)?;
        let stats = &links[0]["stats64"];
        let counter = |dir: &str, name: &str| {
            stats[dir][name]
                .as_u64()
                .with_context(|| format!("no {dir} {name} for {dev} in {netns}: {out}"))
        };
        Ok(LinkCounters {
            tx_packets: counter("tx", "packets")?,
            tx_bytes: counter("tx", "bytes")?,
            tx_dropped: counter("tx", "dropped")?,
            rx_packets: counter("rx", "packets")?,
            rx_bytes: counter("rx", "bytes")?,
        })
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &LinkCounters) -> LinkCounters {
        LinkCounters {
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_dropped: self.tx_dropped.saturating_sub(earlier.tx_dropped),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
        }
    }

    /// The average size of the packets sent (for a tap: delivered to its
    /// guest, GSO packets counting once each), 0 if none.
    pub fn average_tx_size(&self) -> u64 {
        self.tx_bytes.checked_div(self.tx_packets).unwrap_or(0)
    }

    /// The average size of the packets received, 0 if none.
    pub fn average_rx_size(&self) -> u64 {
        self.rx_bytes.checked_div(self.rx_packets).unwrap_or(0)
    }
}

/// The kernel and initramfs every guest of this process boots.
struct Image {
    kernel: Vec<u8>,
    initramfs: Vec<u8>,
}

fn image() -> anyhow::Result<&'static Image> {
    static IMAGE: OnceLock<Result<Image, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| build_image().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the guest's initramfs: {e}"))
}

fn build_image() -> anyhow::Result<Image> {
    let (version, bzimage) = installed_kernel()?;
    let bzimage = fs::read(&bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let kernel = match vmlinux(&bzimage)? {
        Some(vmlinux) => vmlinux,
        None => bzimage,
    };
    let mut cpio = Cpio::default();
    for dir in ["proc", "sys", "dev", "tmp", "run", "root", "etc"] {
        cpio.dir(dir);
    }
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox")?;
    ensure!(
        find(&busybox, UDHCPC_SCRIPT.as_bytes()).is_some(),
        "this busybox's udhcpc does not run {UDHCPC_SCRIPT}: not Debian's busybox-static?"
    );
    cpio.file("bin/busybox", 0o755, &busybox)?;
    for applet in run("/bin/busybox", &["--list-full"])?.lines() {
        if applet != "bin/busybox" {
            cpio.symlink(applet, "/bin/busybox");
        }
    }
    require("iperf3", "iperf3")?;
    cpio.file("usr/bin/iperf3", 0o755, &fs::read("/usr/bin/iperf3")?)?;
    let mut libraries = BTreeSet::new();
    for binary in ["/bin/busybox", "/usr/bin/iperf3"] {
        libraries.extend(shared_libraries(binary)?);
    }
    for library in &libraries {
        let bytes = fs::read(library).with_context(|| format!("reading {library}"))?;
        cpio.file(library.trim_start_matches('/'), 0o755, &bytes)?;
    }
    require("udhcpc", "udhcpc")?;
    let script = fs::read(UDHCPC_SCRIPT).with_context(|| format!("reading {UDHCPC_SCRIPT}"))?;
    cpio.file(UDHCPC_SCRIPT.trim_start_matches('/'), 0o755, &script)?;
    let modules = Path::new("/lib/modules").join(&version);
    let mut insmod = String::new();
    for module in module_order(&modules, MODULES)? {
        let bytes = fs::read(modules.join(&module))?;
        let path = format!("lib/modules/{version}/{module}");
        cpio.file(&path, 0o644, &bytes)?;
        insmod.push_str(&format!("insmod /{path}\n"));
    }
    cpio.file("init", 0o755, INIT.replace("@INSMOD@", &insmod).as_bytes())?;
    Ok(Image {
        kernel,
        initramfs: cpio.finish(),
    })
}

/// The newest kernel in /boot whose modules are installed: its version
/// and image.
fn installed_kernel() -> anyhow::Result<(String, PathBuf)> {
    let mut kernels = Vec::new();
    for entry in fs::read_dir("/boot").context("reading /boot")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-")
            && Path::new("/lib/modules")
                .join(version)
                .join("modules.dep")
                .exists()
        {
            kernels.push((version.to_string(), entry.path()));
        }
    }
    // "6.1.0-57-amd64" sorts by its numbers: 6, 1, 0, 57, 64.
    kernels.sort_by_key(|(version, _)| {
        version
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    kernels.pop().context(
        "no kernel in /boot with modules in /lib/modules: `cargo xtask setup` installs \
         Debian's linux-image-amd64",
    )
}

/// The kernel of a bzImage uncompressed (an ELF image), if it is
/// compressed with xz as Debian's are: QEMU boots it by its PVH entry
/// point, which saves decompressing it under TCG, 3 s of a 4.5 s boot.
fn vmlinux(bzimage: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    // The x86 boot protocol's header: "HdrS" at 0x202, the count of setup
    // sectors at 0x1f1 (0 means 4) after the boot sector, then the
    // protected-mode code, in which the compressed payload lies at the
    // offset (and with the length) given at 0x248.
    let u32_at = |at: usize| {
        let bytes = bzimage.get(at..at + 4).context("not a bzImage")?;
        anyhow::Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
    };
    ensure!(bzimage.get(0x202..0x206) == Some(b"HdrS"), "not a bzImage");
    let setup_sectors = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sectors + 1) * 512 + u32_at(0x248)?;
    // The payload ends with its uncompressed size (4 bytes), not xz's.
    let payload = u32_at(0x24c)?
        .checked_sub(4)
        .and_then(|length| bzimage.get(start..start + length))
        .context("bzImage payload out of bounds")?;
    if !payload.starts_with(b"\xfd7zXZ\0") {
        return Ok(None);
    }
    let mut xz = Command::new("xz")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running xz (Debian's xz-utils)")?;
    let mut stdin = xz.stdin.take().context("xz's stdin")?;
    // Written while xz's output is read, so that no pipe fills up.
    let output = std::thread::scope(|scope| {
        scope.spawn(move || stdin.write_all(payload));
        xz.wait_with_output()
    })?;
    ensure!(
        output.status.success() && output.stdout.starts_with(b"\x7fELF"),
        "xz -dc of the kernel: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(Some(output.stdout))
}

/// The shared libraries `binary` loads, the dynamic loader included, by
/// the paths ldd gives: the guest gets them at the same paths.
fn shared_libraries(binary: &str) -> anyhow::Result<Vec<String>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let error = String::from_utf8_lossy(&output.stderr);
        ensure!(
            error.contains("not a dynamic executable"),
            "ldd {binary}: {error}"
        );
        return Ok(Vec::new());
    }
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", and
    // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path.
    Ok(text
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=> ") {
                Some((_, rest)) => rest,
                None => line.trim(),
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect())
}

/// The files (relative to `dir`, a kernel's modules directory) of the
/// modules `wanted` and of those they depend on, each after its
/// dependencies: the order to insmod them in. modules.dep names what each
/// module needs; modules built into the kernel are not in it.
fn module_order(dir: &Path, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    let name = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split('.').next().unwrap_or(file).replace('-', "_")
    };
    let dep = fs::read_to_string(dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
    let mut modules: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((path, needs)) = line.split_once(':') else {
            continue;
        };
        let needs = needs.split_whitespace().map(name).collect();
        modules.insert(name(path), (path.to_string(), needs));
    }
    let builtin: HashSet<String> = fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(name)
        .collect();
    let mut order = Vec::new();
    let mut placed = HashSet::new();
    // Depth first: a module goes in after everything it needs.
    let mut stack: Vec<(String, bool)> = wanted
        .iter()
        .rev()
        .map(|m| (m.to_string(), false))
        .collect();
    while let Some((module, needs_placed)) = stack.pop() {
        if placed.contains(&module) {
            continue;
        }
        let Some((path, needs)) = modules.get(&module) else {
            ensure!(
                builtin.contains(&module),
                "kernel module {module} is neither in {}/modules.dep nor built in",
                dir.display()
            );
            placed.insert(module);
            continue;
        };
        if needs_placed {
            ensure!(
                path.ends_with(".ko"),
                "{path} is compressed: busybox's insmod loads plain .ko files"
            );
            order.push(path.clone());
            placed.insert(module);
        } else {
            ensure!(stack.len() < 1000, "modules.dep has a dependency cycle");
            stack.push((module.clone(), true));
            stack.extend(
                needs
                    .iter()
                    .filter(|need| !placed.contains(*need))
                    .map(|need| (need.clone(), false)),
            );
        }
    }
    Ok(order)
}

/// An initramfs in the cpio "newc" format the kernel unpacks: per entry an
/// ASCII header of 13 hexadecimal fields, the name and the data, each
/// padded to 4 bytes; a trailer entry ends it. Uncompressed: the kernel
/// takes it as is, and saves unpacking it under TCG.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    entries: u32,
    dirs: HashSet<String>,
}

impl Cpio {
    /// Adds directory `path` and its parents, unless there.
    fn dir(&mut self, path: &str) {
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        self.parent(path);
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040_755, 2, b"");
    }

    fn file(&mut self, path: &str, permissions: u32, data: &[u8]) -> anyhow::Result<()> {
        ensure!(u32::try_from(data.len()).is_ok(), "{path} is too large");
        self.parent(path);
        self.entry(path, 0o100_000 | permissions, 1, data);
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, 0o120_777, 1, target.as_bytes());
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, links: u32, data: &[u8]) {
        self.entries += 1;
        // ino, mode, uid, gid, nlink, mtime, filesize, dev major and
        // minor, rdev major and minor, namesize (with its NUL), check.
        let fields = [
            self.entries,
            mode,
            0,
            0,
            links,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.bytes.resize(self.bytes.len().next_multiple_of(4), 0);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, b"");
        self.bytes
    }
}
