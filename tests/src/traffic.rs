//! Traffic between VM namespaces with real tools, every run bounded in time:
//! static addressing, ping (with each reply's time), iperf3 (TCP and UDP,
//! its JSON report), iputils' arping, and raw `AF_PACKET` sockets to see
//! what reaches a VM and to send frames no socket of the kernel's would.
//!
//! Used by the namespace tests and by `cargo xtask bench datapath-local`.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::{
    Netns,
    dhcp::{output_within, require},
};

/// Gives `eth0` of `vm` an address (`10.0.1.10/24`), brings it up, and
/// adds a default route through `gateway` when there is one.
pub fn configure(vm: &Netns, address: &str, gateway: Option<&str>) -> anyhow::Result<()> {
    vm.exec("ip", &["addr", "add", address, "dev", "eth0"])?;
    vm.exec("ip", &["link", "set", "eth0", "up"])?;
    if let Some(gateway) = gateway {
        vm.exec("ip", &["route", "add", "default", "via", gateway])?;
    }
    Ok(())
}

/// Turns IPv6 off in `vm`, for devices there and those that come later
/// (a port's `eth0` moved in by the agent), so that only the test's own
/// IPv4 is on the wire: no router solicitations, no duplicate address
/// detection.
pub fn disable_ipv6(vm: &Netns) -> anyhow::Result<()> {
    vm.exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )?;
    Ok(())
}

/// What one ping run saw.
#[derive(Debug, Clone, Default)]
pub struct Ping {
    pub transmitted: u32,
    pub received: u32,
    /// Round-trip time of each reply, in milliseconds, in order.
    pub rtts_ms: Vec<f64>,
    /// The IP TTL each reply arrived with, in order.
    pub ttls: Vec<u8>,
    /// ping's own summary lines.
    pub summary: String,
}

impl Ping {
    /// Every request answered, and at least one sent.
    pub fn all_answered(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }

    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }

    /// Parses iputils ping's output (without `-q`, for the times).
    pub fn parse(output: &str) -> anyhow::Result<Ping> {
        let mut ping = Ping::default();
        for line in output.lines() {
            if line.contains(" bytes from ") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|word| word.strip_prefix(name))
                };
                if let Some(time) = field("time=") {
                    ping.rtts_ms.push(time.parse().context("reply time")?);
                }
                if let Some(ttl) = field("ttl=") {
                    ping.ttls.push(ttl.parse().context("reply TTL")?);
                }
            }
            if let Some((sent, rest)) = line.split_once(" packets transmitted, ") {
                ping.transmitted = sent.trim().parse().context("transmitted")?;
                let received = rest.split_whitespace().next().unwrap_or_default();
                ping.received = received.parse().context("received")?;
                ping.summary = line.to_string();
            }
            if line.starts_with("rtt ") {
                ping.summary = format!("{}\n{line}", ping.summary);
            }
        }
        ensure!(
            !ping.summary.is_empty(),
            "no summary in ping's output:\n{output}"
        );
        Ok(ping)
    }
}

/// Pings `target` from `vm` once a second or so until one is answered,
/// for at most `timeout` (a path that is still converging).
pub async fn wait_ping(vm: &Netns, target: &str, timeout: Duration) {
    crate::wait_for(
        &format!("{} pinging {target}", vm.name()),
        timeout,
        async || {
            let ping =
                self::ping(vm, target, &["-c", "1", "-W", "1"], Duration::from_secs(5)).ok()?;
            ping.all_answered().then_some(())
        },
    )
    .await;
}

/// Pings `target` from `vm` (`args` add count, interval, TTL...); gives up
/// (SIGKILL) after `limit`.
pub fn ping(vm: &Netns, target: &str, args: &[&str], limit: Duration) -> anyhow::Result<Ping> {
    let mut full = vec!["netns", "exec", vm.name(), "ping", "-n"];
    full.extend_from_slice(args);
    full.push(target);
    let output = output_within(limit, "ip", &full)?;
    Ping::parse(&String::from_utf8_lossy(&output.stdout)).with_context(|| {
        format!(
            "ping {target} from {}: {}",
            vm.name(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}

/// A bounded ping running in the background: its report once it ends.
pub struct PingRun {
    child: Option<Child>,
    deadline: Instant,
}

impl PingRun {
    /// Starts `ping -n ARGS TARGET` in `vm`; `limit` bounds the whole run
    /// (pass `-c` and `-w` too).
    pub fn start(vm: &Netns, target: &str, args: &[&str], limit: Duration) -> anyhow::Result<Self> {
        let child = Command::new("ip")
            .args(["netns", "exec", vm.name(), "ping", "-n"])
            .args(args)
            .arg(target)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ping")?;
        Ok(PingRun {
            child: Some(child),
            deadline: Instant::now() + limit,
        })
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Waits for the end (killing it at the deadline) and parses the report.
    pub fn finish(mut self) -> anyhow::Result<Ping> {
        let mut child = self.child.take().context("finished already")?;
        // ping's output (a summary with -q, 70 bytes a reply without) is
        // read as it comes, so that a full pipe never blocks it.
        let stdout = child.stdout.take().context("ping's stdout")?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = io::Read::read_to_string(&mut { stdout }, &mut text);
            text
        });
        while child.try_wait()?.is_none() {
            if Instant::now() >= self.deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = child.wait()?;
        let text = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?;
        Ping::parse(&text).with_context(|| format!("ping ended with {status}"))
    }
}

impl Drop for PingRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An iperf3 server in a VM (`iperf3 -s`), killed when dropped.
pub struct Iperf3Server {
    child: Child,
    pub port: u16,
}

impl Iperf3Server {
    /// Starts a server bound to `address`:`port` in `vm` and waits (5 s at
    /// most) until it listens. With `one_off`, it ends after one test.
    pub fn start(vm: &Netns, address: &str, port: u16, one_off: bool) -> anyhow::Result<Self> {
        require("iperf3", "iperf3")?;
        let port_text = port.to_string();
        let mut args = vec![
            "netns",
            "exec",
            vm.name(),
            "iperf3",
            "-s",
            "-B",
            address,
            "-p",
            &port_text,
        ];
        if one_off {
            args.push("-1");
        }
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?;
        let mut server = Iperf3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        let filter = format!("sport = :{port}");
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("iperf3 -s exited at once ({status})");
            }
            let listening = vm.exec("ss", &["-Hltn", &filter])?;
            if !listening.trim().is_empty() {
                return Ok(server);
            }
            ensure!(
                Instant::now() < deadline,
                "iperf3 -s does not listen after 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments of an iperf3 client run against `server`:`port` with a
/// JSON report (`args` add -t, -P, -u ...).
fn iperf3_args(vm: &Netns, server: &str, port: u16, args: &[&str]) -> Vec<String> {
    let mut full: Vec<String> = ["netns", "exec", vm.name(), "iperf3", "-J", "-c", server]
        .iter()
        .map(|s| s.to_string())
        .collect();
    full.extend(["-p".into(), port.to_string()]);
    full.extend(["--connect-timeout".into(), "3000".into()]);
    full.extend(args.iter().map(|s| s.to_string()));
    full
}

/// Runs an iperf3 client in `vm` for at most `limit`; fails unless it
/// exits 0, and returns its JSON report.
pub fn iperf3(
    vm: &Netns,
    server: &str,
    port: u16,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    let full = iperf3_args(vm, server, port, args);
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let output = output_within(limit, "ip", &full)?;
    parse_iperf3(&output.stdout, output.status.success())
}

/// Starts an iperf3 client in the background (bounded by `limit`, through
/// coreutils' `timeout`); [`Iperf3Client::finish`] returns its report.
pub struct Iperf3Client {
    child: Option<Child>,
}

impl Iperf3Client {
    pub fn start(
        vm: &Netns,
        server: &str,
        port: u16,
        args: &[&str],
        limit: Duration,
    ) -> anyhow::Result<Self> {
        let secs = limit.as_secs().max(1).to_string();
        let child = Command::new("timeout")
            .args(["-s", "KILL", &secs, "ip"])
            .args(iperf3_args(vm, server, port, args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -c")?;
        Ok(Iperf3Client { child: Some(child) })
    }

    pub fn finish(mut self) -> anyhow::Result<serde_json::Value> {
        let child = self.child.take().context("finished already")?;
        let output = child.wait_with_output()?;
        parse_iperf3(&output.stdout, output.status.success())
    }
}

impl Drop for Iperf3Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn parse_iperf3(stdout: &[u8], success: bool) -> anyhow::Result<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_slice(stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON report: {}",
            String::from_utf8_lossy(stdout)
        )
    })?;
    if let Some(error) = report.get("error") {
        bail!("iperf3: {error}");
    }
    ensure!(success, "iperf3 failed: {report}");
    Ok(report)
}

/// Bytes the receiving end of a TCP test got (`end.sum_received.bytes`).
pub fn tcp_received_bytes(report: &serde_json::Value) -> u64 {
    report["end"]["sum_received"]["bytes"]
        .as_u64()
        .unwrap_or_default()
}

/// Bits per second the receiving end of a TCP test got.
pub fn tcp_received_bps(report: &serde_json::Value) -> f64 {
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_default()
}

/// A UDP test's datagrams: (sent, received by the server). iperf3 3.12
/// reports the server's view in `end.sum`: `packets` sent and
/// `lost_packets` among them.
pub fn udp_packets(report: &serde_json::Value) -> (u64, u64) {
    let sum = &report["end"]["sum"];
    let sent = sum["packets"].as_u64().unwrap_or_default();
    let lost = sum["lost_packets"].as_u64().unwrap_or_default();
    (sent, sent.saturating_sub(lost))
}

/// Sends `bytes` over one TCP connection from `client` to `addr`, where a
/// listener of `server`'s takes them, and returns how many the server read
/// before the client's end of stream: exact, unlike iperf3's report of a
/// `-n` run, which stops counting when the client has written the last
/// byte. The bytes follow a pattern the server checks (on veths nothing
/// verifies TCP checksums, so a datapath that damaged payloads would go
/// unseen otherwise). Every step is bounded by `limit`.
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    addr: std::net::SocketAddr,
    bytes: usize,
    limit: Duration,
) -> anyhow::Result<usize> {
    use std::{
        io::{Read, Write},
        net::{Shutdown, TcpListener, TcpStream},
    };
    let pattern = |offset: usize| (offset % 251) as u8;
    let deadline = Instant::now() + limit;
    let listener = server.enter(move || TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    // What any read of up to 64 KiB must equal, from its offset modulo 251.
    let reference: Vec<u8> = (0..251 + (1 << 16)).map(pattern).collect();
    let reader = std::thread::spawn(move || -> io::Result<usize> {
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(limit))?;
        let mut buf = vec![0u8; 1 << 16];
        let mut read = 0;
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Ok(read);
            }
            let start = read % 251;
            if buf[..n] != reference[start..start + n] {
                let at = (0..n)
                    .find(|i| buf[*i] != pattern(read + i))
                    .unwrap_or_default();
                return Err(io::Error::other(format!(
                    "byte {} is {:#04x}, not {:#04x}",
                    read + at,
                    buf[at],
                    pattern(read + at)
                )));
            }
            read += n;
        }
    });
    let written = (|| -> io::Result<()> {
        let mut stream = client
            .enter(move || TcpStream::connect_timeout(&addr, limit))
            .map_err(io::Error::other)??;
        stream.set_write_timeout(Some(limit))?;
        // 251 is prime: the pattern repeats every 251 bytes, out of step
        // with chunks, segments and pages.
        let chunk: Vec<u8> = (0..251 * 256).map(pattern).collect();
        let mut sent = 0;
        while sent < bytes {
            let n = (bytes - sent).min(chunk.len());
            stream.write_all(&chunk[..n])?;
            sent += n;
        }
        stream.shutdown(Shutdown::Write)
    })();
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    written.with_context(|| format!("sending to {addr}"))?;
    read.with_context(|| format!("receiving on {addr}"))
}

/// Sends `count` ARP requests for `target` out of `dev` of `vm` (iputils
/// arping, a second apart at most, `limit` in all) and returns the MAC of
/// every reply, lowercase.
pub fn arping(
    vm: &Netns,
    dev: &str,
    target: &str,
    count: u32,
    limit: Duration,
) -> anyhow::Result<Vec<String>> {
    require("arping", "iputils-arping")?;
    let count = count.to_string();
    let deadline = limit.as_secs().max(1).to_string();
    let output = output_within(
        limit + Duration::from_secs(2),
        "ip",
        &[
            "netns",
            "exec",
            vm.name(),
            "arping",
            "-I",
            dev,
            "-c",
            &count,
            "-w",
            &deadline,
            target,
        ],
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    ensure!(
        text.contains("ARPING"),
        "arping did not run: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(text
        .lines()
        .filter(|line| line.contains("reply from"))
        .filter_map(|line| {
            let start = line.find('[')?;
            let end = line[start..].find(']')?;
            Some(line[start + 1..start + end].to_lowercase())
        })
        .collect())
}

/// The `ip neigh` entry of `ip` on `eth0` of `vm`: (state, MAC if known).
pub fn neighbour(vm: &Netns, ip: &str) -> anyhow::Result<Option<(String, Option<String>)>> {
    let out = vm.exec("ip", &["-j", "neigh", "show", "to", ip, "dev", "eth0"])?;
    let entries: serde_json::Value = serde_json::from_str(&out)?;
    Ok(entries.get(0).map(|entry| {
        let state = entry["state"]
            .as_array()
            .map(|states| {
                states
                    .iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        (state, entry["lladdr"].as_str().map(str::to_string))
    }))
}

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

/// A raw `AF_PACKET` socket bound to `dev` in `netns`, made on a thread
/// that entered the namespace (the socket stays there).
fn packet_socket(netns: &Netns, dev: &str) -> anyhow::Result<(OwnedFd, i32)> {
    let dev = std::ffi::CString::new(dev)?;
    netns.enter(move || -> anyhow::Result<(OwnedFd, i32)> {
        // SAFETY (all): plain socket calls with matching sizes on a
        // descriptor owned here.
        let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) } as i32;
        ensure!(ifindex != 0, "no device {dev:?}");
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        ensure!(fd >= 0, "socket(AF_PACKET): {}", io::Error::last_os_error());
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let address = link_address(ifindex);
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(bound == 0, "bind: {}", io::Error::last_os_error());
        Ok((fd, ifindex))
    })?
}

fn link_address(ifindex: i32) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: ETH_P_ALL.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

/// Every frame that arrives on a device of a VM, from [`Capture::start`]
/// until [`Capture::stop`] (frames the VM sends are left out). The socket
/// exists when `start` returns: nothing sent afterwards is missed, and
/// `stop` reads what the socket still holds before it returns.
pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Capture {
    pub fn start(vm: &Netns, dev: &str) -> anyhow::Result<Capture> {
        let (fd, _) = packet_socket(vm, dev)?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 50_000,
        };
        // SAFETY: a valid option of the right size on our descriptor.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (stopping, captured) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                // Once asked to stop, what is queued is still read, without
                // waiting for more.
                let last = stopping.load(Ordering::Relaxed);
                let flags = if last { libc::MSG_DONTWAIT } else { 0 };
                // SAFETY: zeroed sockaddr_ll is valid; sizes match.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        flags,
                        (&raw mut from).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    let error = io::Error::last_os_error();
                    match error.kind() {
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if last => {
                            return Ok(());
                        }
                        io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted => continue,
                        _ => return Err(error),
                    }
                }
                if from.sll_pkttype != PACKET_OUTGOING {
                    let frame = buf[..n as usize].to_vec();
                    captured.lock().expect("capture lock").push(frame);
                }
            }
        });
        Ok(Capture {
            stop,
            frames,
            thread: Some(thread),
        })
    }

    /// The frames received so far, in order; capturing goes on.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().expect("capture lock").clone()
    }

    /// Stops capturing and returns the frames received, in order.
    pub fn stop(mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().context("stopped already")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("capture thread panicked"))??;
        Ok(std::mem::take(
            &mut *self.frames.lock().expect("capture lock"),
        ))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `frame` (a whole Ethernet frame) `count` times out of `dev` of
/// `vm` through a raw socket: whatever its source MAC and IP say.
pub fn send_frames(vm: &Netns, dev: &str, frame: &[u8], count: usize) -> anyhow::Result<()> {
    let (fd, ifindex) = packet_socket(vm, dev)?;
    let address = link_address(ifindex);
    for _ in 0..count {
        // SAFETY: the frame and address outlive the call; sizes match.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            sent == frame.len() as isize,
            "sendto: {}",
            io::Error::last_os_error()
        );
    }
    Ok(())
}

/// An Ethernet frame carrying an IPv4 UDP datagram (TTL 64, UDP checksum
/// left at 0, which IPv4 allows).
pub fn udp_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src_ip, dst_ip): (std::net::Ipv4Addr, std::net::Ipv4Addr),
    (src_port, dst_port): (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut frame = Vec::with_capacity(14 + ip_len);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = frame.len();
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&(ip_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    frame.extend_from_slice(&src_ip.octets());
    frame.extend_from_slice(&dst_ip.octets());
    let checksum = internet_checksum(&frame[ip_start..]);
    frame[ip_start + 10..ip_start + 12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&src_port.to_be_bytes());
    frame.extend_from_slice(&dst_port.to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// The Internet checksum (RFC 1071) of `bytes`. (The agent's
/// `packet::checksum`, which this harness cannot use: xtask builds it
/// before the eBPF toolchain the agent needs is installed.)
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses `fa:16:3e:00:00:01`.
pub fn mac_bytes(text: &str) -> anyhow::Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|octet| u8::from_str_radix(octet, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {text}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC {text}: not 6 bytes"))
}

/// The IPv4 source and destination of an Ethernet frame, if it is IPv4.
pub fn ipv4_addresses(frame: &[u8]) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let src: [u8; 4] = frame[26..30].try_into().ok()?;
    let dst: [u8; 4] = frame[30..34].try_into().ok()?;
    Some((src.into(), dst.into()))
}

/// A counter of `eth0` in `vm` (`rx_packets`, `tx_packets`, ...).
pub fn eth0_stat(vm: &Netns, counter: &str) -> anyhow::Result<u64> {
    let text = vm.exec(
        "cat",
        &[&format!("/sys/class/net/eth0/statistics/{counter}")],
    )?;
    text.trim().parse().context(counter.to_string())
}

/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;

/// A VXLAN datagram as the underlay carries it (outer Ethernet, IPv4 and
/// UDP), parsed.
#[derive(Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub outer_src: std::net::Ipv4Addr,
    pub outer_dst: std::net::Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub vni: u32,
    /// The encapsulated Ethernet frame.
    pub inner: Vec<u8>,
}

impl Vxlan {
    /// The VXLAN in an Ethernet frame: IPv4, UDP to port 4789, a VXLAN
    /// header with the VNI flag. None for anything else.
    pub fn parse(frame: &[u8]) -> Option<Vxlan> {
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14] >> 4 != 4 {
            return None;
        }
        let udp = 14 + usize::from(frame[14] & 0x0f) * 4;
        let port = |at: usize| Some(u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?));
        if frame[23] != 17 || port(udp + 2)? != VXLAN_PORT {
            return None;
        }
        let header = frame.get(udp + 8..udp + 16)?;
        if header[0] & 0x08 == 0 {
            return None;
        }
        let (outer_src, outer_dst) = ipv4_addresses(frame)?;
        Some(Vxlan {
            outer_src,
            outer_dst,
            src_port: port(udp)?,
            dst_port: VXLAN_PORT,
            vni: u32::from_be_bytes([0, header[4], header[5], header[6]]),
            inner: frame[udp + 16..].to_vec(),
        })
    }

    /// The inner frame's IPv4 source and destination, if it is IPv4.
    pub fn inner_ipv4(&self) -> Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
        ipv4_addresses(&self.inner)
    }

    /// The inner frame's (source, destination) MACs.
    pub fn inner_macs(&self) -> Option<([u8; 6], [u8; 6])> {
        Some((
            self.inner.get(6..12)?.try_into().ok()?,
            self.inner.get(0..6)?.try_into().ok()?,
        ))
    }

    /// The inner IPv4 packet's TTL.
    pub fn inner_ttl(&self) -> Option<u8> {
        self.inner_ipv4()?;
        self.inner.get(22).copied()
    }
}

/// One line: outer addresses and ports, VNI, and the inner frame's MACs,
/// addresses, TTL and length.
impl std::fmt::Debug for Vxlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        write!(
            f,
            "VXLAN {}:{} -> {}:{} VNI {}: ",
            self.outer_src, self.src_port, self.outer_dst, self.dst_port, self.vni
        )?;
        if let Some((src, dst)) = self.inner_macs() {
            write!(f, "{} -> {} ", mac(src), mac(dst))?;
        }
        if let Some((src, dst)) = self.inner_ipv4() {
            let proto = self.inner.get(23).copied().unwrap_or_default();
            let ttl = self.inner_ttl().unwrap_or_default();
            write!(f, "IPv4 {src} -> {dst} proto {proto} TTL {ttl} ")?;
        }
        write!(f, "({} bytes)", self.inner.len())
    }
}

/// A VXLAN datagram's payload: the header with `vni`, then `inner` (an
/// Ethernet frame).
pub fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    payload
}
