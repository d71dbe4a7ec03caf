//! A real `alcor-controller` process for end-to-end tests: on a free
//! loopback port, over an embedded store in a temporary directory or over
//! etcd, killed (and its store removed) when dropped.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use alcor_proto::registry::{AgentHeartbeat, agent_registry_client::AgentRegistryClient};
use anyhow::{Context, bail};

use crate::{Netns, agent::bin, netns};

/// Where a controller keeps its state.
#[derive(Clone, Debug)]
pub enum StoreKind {
    /// An embedded store in the controller's own temporary directory.
    Embedded,
    /// etcd at these client URLs.
    Etcd(Vec<String>),
}

pub struct Controller {
    listen: SocketAddr,
    /// Where agents register (gRPC).
    grpc_listen: SocketAddr,
    /// Where its metrics are served (chosen at each start).
    metrics_listen: SocketAddr,
    /// The network namespace it runs in; `None`: this one (loopback).
    netns: Option<String>,
    store: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A loopback port nobody listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Controller {
    /// Starts a controller over `store` with `args` besides, and waits
    /// (bounded) until its API answers.
    pub fn start(store: StoreKind, args: &[&str]) -> anyhow::Result<Controller> {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Controller::make(
            None,
            loopback(free_port()?),
            loopback(free_port()?),
            store,
            args,
        )
    }

    /// Starts a controller in the namespace `netns` (a host of a test
    /// topology), its API on `ip:9696` and its agents' service on
    /// `ip:9697`.
    pub fn start_in(
        netns: &Netns,
        ip: Ipv4Addr,
        store: StoreKind,
        args: &[&str],
    ) -> anyhow::Result<Controller> {
        Controller::start_in_at(netns, ip, (9696, 9697), store, args)
    }

    /// As [`Controller::start_in`], its API and agents' service on the
    /// `ports` given: several instances in one namespace.
    pub fn start_in_at(
        netns: &Netns,
        ip: Ipv4Addr,
        ports: (u16, u16),
        store: StoreKind,
        args: &[&str],
    ) -> anyhow::Result<Controller> {
        Controller::make(
            Some(netns.name().to_string()),
            SocketAddr::from((ip, ports.0)),
            SocketAddr::from((ip, ports.1)),
            store,
            args,
        )
    }

    fn make(
        netns: Option<String>,
        listen: SocketAddr,
        grpc_listen: SocketAddr,
        store: StoreKind,
        args: &[&str],
    ) -> anyhow::Result<Controller> {
        let dir = tempfile::Builder::new()
            .prefix("alcor-controller-")
            .tempdir()?;
        let store = match store {
            StoreKind::Embedded => format!("file:{}", dir.path().join("store.redb").display()),
            StoreKind::Etcd(urls) => format!("etcd:{}", urls.join(",")),
        };
        let mut controller = Controller {
            listen,
            grpc_listen,
            metrics_listen: SocketAddr::from((listen.ip(), 0)),
            netns,
            store,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            dir,
            child: None,
        };
        controller.spawn()?;
        Ok(controller)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.log_path())?;
        let metrics = SocketAddr::from((self.listen.ip(), free_port()?));
        self.metrics_listen = metrics;
        let mut command = match &self.netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", netns])
                    .arg(bin("alcor-controller"));
                command
            }
            None => Command::new(bin("alcor-controller")),
        };
        let child = command
            .args(["--listen", &self.listen.to_string()])
            .args(["--grpc-listen", &self.grpc_listen.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--store", &self.store])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting alcor-controller")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.answers()? {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "alcor-controller exited at once ({status}):\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "alcor-controller does not listen after 15 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether the API accepts connections (from its namespace).
    fn answers(&self) -> anyhow::Result<bool> {
        let listen = self.listen;
        let connect = move || std::net::TcpStream::connect(listen).is_ok();
        match &self.netns {
            Some(name) => netns::enter(name, connect),
            None => Ok(connect()),
        }
    }

    /// `GET /metrics` (from its namespace): the Prometheus text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let listen = self.metrics_listen;
        let get = move || -> anyhow::Result<String> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(5))
                .with_context(|| format!("connecting to {listen}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: controller\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        };
        match &self.netns {
            Some(name) => netns::enter(name, get)?,
            None => get(),
        }
    }

    /// The hosts whose agents this instance pushes to now, and its id, as
    /// its metrics say: `None` if it does not answer.
    pub fn serving(&self) -> Option<(String, Vec<String>)> {
        let text = self.metrics().ok()?;
        let label = |line: &str, name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            let end = start + line[start..].find('"')?;
            Some(line[start..end].to_string())
        };
        let mut id = None;
        let mut hosts = Vec::new();
        for line in text.lines() {
            if line.starts_with("alcor_controller_instance{") {
                id = label(line, "id");
            } else if line.starts_with("alcor_controller_agent_sessions{") && line.ends_with(" 1") {
                hosts.extend(label(line, "host"));
            }
        }
        hosts.sort();
        Some((id?, hosts))
    }

    /// Where agents register: `http://IP:PORT`.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_listen)
    }

    /// Registers a stand-in agent for `host` (its goal-state endpoint
    /// listens nowhere: pushes to it fail and wait), so that ports can be
    /// bound to the host.
    pub fn register_stand_in(&self, host: &str) -> anyhow::Result<()> {
        let endpoint = self.grpc_endpoint();
        let heartbeat = AgentHeartbeat {
            host_id: host.to_string(),
            underlay_ip: "198.18.255.1".into(),
            underlay_mac: "02:00:00:00:00:01".into(),
            // Port 1 (tcpmux) listens nowhere.
            goal_state_endpoint: "http://127.0.0.1:1".into(),
            agent_version: "stand-in".into(),
            started: true,
            ..Default::default()
        };
        tokio::runtime::Runtime::new()?.block_on(async move {
            let mut client = AgentRegistryClient::connect(endpoint).await?;
            client.heartbeat(heartbeat).await?;
            anyhow::Ok(())
        })
    }

    /// The API's root: `http://127.0.0.1:PORT/v2.0`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v2.0", self.listen)
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("controller.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Killed and started again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

/// One HTTP/1.1 request to the API at `listen`, on a connection of its
/// own (`Connection: close`): the status and the JSON body (`null` if
/// none). Enough for tests that send many requests from many threads; the
/// CLI is the client that matters, this one only counts.
pub fn request(
    listen: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&listen, Duration::from_secs(5))
        .with_context(|| format!("connecting to {listen}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {listen}\r\nX-Auth-Token: notused\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("a response without headers: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).with_context(|| format!("not JSON: {body:?}"))?
    };
    Ok((status, body))
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}
