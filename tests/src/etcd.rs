//! A real etcd for the controller's etcd store: its unit tests and the
//! end-to-end tests. One member on free ports of 127.0.0.1 (loopback exists
//! in every namespace; nothing else is configured), in this network
//! namespace or a test host's, its data in a temporary directory, fsync on
//! as in production. Killed, and its directory removed, when it drops.

use std::{
    fs::OpenOptions,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// Debian's etcd-server installs it in /usr/bin.
const BINARY: &str = "etcd";
/// A single member elects itself within about a second; a loaded machine
/// with fsync on takes longer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A free port found by binding port 0 may be taken again before etcd binds
/// it.
const START_ATTEMPTS: u32 = 3;

/// True when the etcd binary runs. Outside CI a missing one skips the test
/// loudly; in CI (env `CI` set) it is a failure.
pub fn available(test: &str) -> bool {
    let runs = Command::new(BINARY)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if runs {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must have etcd installed (Debian's etcd-server: `cargo xtask setup`)"
    );
    eprintln!(
        "\n*** SKIPPED {test}: no `{BINARY}` binary (Debian's etcd-server: `cargo xtask setup`) ***\n"
    );
    false
}

pub struct EtcdServer {
    /// The namespace it runs in; `None`: this one.
    netns: Option<String>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts a member and waits until it answers its health check.
    pub fn start() -> anyhow::Result<EtcdServer> {
        EtcdServer::start_netns(None)
    }

    /// Starts a member in the namespace `netns` (a test host, whose
    /// processes reach it at [`EtcdServer::client_url`]).
    pub fn start_in(netns: &crate::Netns) -> anyhow::Result<EtcdServer> {
        EtcdServer::start_netns(Some(netns.name().to_string()))
    }

    fn start_netns(netns: Option<String>) -> anyhow::Result<EtcdServer> {
        let mut attempt = 1;
        loop {
            let (client_port, peer_port) = free_ports()?;
            let mut server = EtcdServer {
                netns: netns.clone(),
                dir: tempfile::Builder::new().prefix("etcd").tempdir()?,
                client_port,
                peer_port,
                child: None,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd did not start (attempt {attempt}): {error:#}");
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Where clients connect: `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Kills it at once (SIGKILL), as a crash would; its data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (killing it first if it runs) on the same ports and
    /// data, and waits until it answers. It blocks: with a client connected
    /// in an async test, call it under `tokio::task::block_in_place` on a
    /// multi-thread runtime, so that the client's connection task runs
    /// meanwhile (and sees the old connection close), as in a real process.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Everything it logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("creating etcd's log")?;
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns, BINARY]);
                command
            }
            None => Command::new(BINARY),
        };
        let child = command
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {BINARY}"))?;
        self.child = Some(child);
        self.wait_until_healthy()
    }

    fn wait_until_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let address = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("etcd exited ({status}); its log:\n{}", self.log());
            }
            let answers = match &self.netns {
                Some(netns) => crate::netns::enter(netns, move || healthy(address))?,
                None => healthy(address),
            };
            if answers {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "etcd did not answer at {address} within {START_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two ports nothing listens on, distinct: both are held until both are
/// chosen.
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let first = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    let second = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok((first.local_addr()?.port(), second.local_addr()?.port()))
}

/// etcd's `/health` (served on the client port beside gRPC) is true once
/// the member has a leader and serves reads.
fn healthy(address: SocketAddr) -> bool {
    let limit = Duration::from_secs(1);
    let Ok(mut stream) = TcpStream::connect_timeout(&address, limit) else {
        return false;
    };
    let mut reply = String::new();
    stream.set_read_timeout(Some(limit)).is_ok()
        && stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_ok()
        && stream.read_to_string(&mut reply).is_ok()
        && reply.contains(r#""health":"true""#)
}
