//! An `alcor-agent` process running inside a host namespace, and clients to
//! reach it from outside.

use std::{
    fs::{File, OpenOptions},
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use alcor_proto::{
    control::{ListRequest, Port, agent_control_client::AgentControlClient},
    schema::{
        GoalState, GoalStateOperationReply,
        goal_state_provisioner_client::GoalStateProvisionerClient,
    },
};
use anyhow::Context;
use hyper_util::rt::TokioIo;
use nix::sched::{CloneFlags, setns};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tower::service_fn;

use crate::{Netns, wait_for};

/// The goal-state port agents listen on in tests (inside their namespace).
pub const GRPC_PORT: u16 = 50001;

#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// Flags added to the defaults (e.g. TLS material, --underlay-dev).
    pub args: Vec<String>,
    /// Listen on this address instead of 127.0.0.1:50001.
    pub grpc_listen: Option<SocketAddr>,
    /// Extra environment (e.g. what systemd would set).
    pub env: Vec<(String, String)>,
}

pub struct Agent {
    netns: PathBuf,
    options: AgentOptions,
    dir: tempfile::TempDir,
    pin_dir: PathBuf,
    child: Option<Child>,
}

/// Where cargo put this workspace's binaries: next to the test executable's
/// `deps/` directory, unless `ALCOR_BIN_DIR` says otherwise.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("ALCOR_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.to_path_buf())
        })
        .expect("cannot locate the target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first (`cargo xtask test` does)",
        path.display()
    );
    path
}

impl Agent {
    /// Starts an agent in `host` and waits until its control socket answers.
    pub async fn start(host: &Netns, options: AgentOptions) -> Agent {
        let mut agent = Agent::new(host, options);
        agent.spawn().await;
        agent
    }

    /// Runs an agent in `host` that must refuse to start: its exit status
    /// and what it printed (its log), once it exited (within 30 s).
    pub async fn refused(host: &Netns, options: AgentOptions) -> Output {
        let agent = Agent::new(host, options);
        let mut child = agent
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning alcor-agent");
        wait_for("the agent to exit", Duration::from_secs(30), async || {
            child.try_wait().expect("waiting for the agent")
        })
        .await;
        child.wait_with_output().expect("the agent's output")
    }

    fn new(host: &Netns, options: AgentOptions) -> Agent {
        let dir = tempfile::Builder::new()
            .prefix(&format!("alcor-{}-", host.name()))
            .tempdir()
            .expect("temp dir");
        Agent {
            netns: host.path(),
            options,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/alcor-test-{}", host.name())),
            dir,
            child: None,
        }
    }

    pub fn grpc_listen(&self) -> SocketAddr {
        self.options
            .grpc_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], GRPC_PORT)))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Everything the agent logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent's command line, run in its host's network namespace.
    fn command(&self) -> Command {
        let namespace = File::open(&self.netns).expect("host namespace");
        let mut command = Command::new(bin("alcor-agent"));
        command
            .arg("--grpc-listen")
            .arg(self.grpc_listen().to_string())
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--control-socket")
            .arg(self.control_socket())
            .arg("--bpf-pin-dir")
            .arg(&self.pin_dir)
            .args(&self.options.args)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,alcor_agent=debug");
        // Only the network namespace changes: the agent shares the mount
        // namespace (and so bpffs) with the test, unlike `ip netns exec`.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        command
    }

    async fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .expect("agent log");
        let mut command = self.command();
        command.stdout(log.try_clone().expect("log")).stderr(log);
        self.child = Some(command.spawn().expect("spawning alcor-agent"));
        let socket = self.control_socket();
        let child = self.child.as_mut().expect("just spawned");
        wait_for(
            "the agent to serve its control socket",
            Duration::from_secs(30),
            async || {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("alcor-agent exited early ({status})");
                }
                tokio::net::UnixStream::connect(&socket).await.ok()
            },
        )
        .await;
    }

    /// Kills the agent at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent as systemd does (SIGTERM) and waits, 30 s at most,
    /// for it to exit: its exit status.
    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the agent runs");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        wait_for("the agent to exit", Duration::from_secs(30), async || {
            child.try_wait().expect("waiting for the agent")
        })
        .await
    }

    /// The options the agent runs with; changes take effect at the next
    /// restart.
    pub fn options_mut(&mut self) -> &mut AgentOptions {
        &mut self.options
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A goal-state client connected from inside the agent's namespace.
    pub async fn client(&self) -> GoalStateProvisionerClient<Channel> {
        GoalStateProvisionerClient::new(self.channel().await).max_decoding_message_size(usize::MAX)
    }

    /// A gRPC channel to the agent's goal-state listener, from inside its
    /// namespace (for clients other than the generated one).
    pub async fn channel(&self) -> Channel {
        connect_in(&self.netns, self.grpc_listen(), None)
            .await
            .expect("connecting to the agent")
    }

    /// Pushes a V1 goal state and returns the reply.
    pub async fn push(&self, message: GoalState) -> GoalStateOperationReply {
        self.client()
            .await
            .push_network_resource_states(message)
            .await
            .expect("push")
            .into_inner()
    }

    /// The ports as the agent reports them.
    pub async fn ports(&self) -> Vec<Port> {
        self.control()
            .await
            .list_ports(ListRequest {})
            .await
            .expect("list ports")
            .into_inner()
            .ports
    }

    /// The control service, over its Unix socket.
    pub async fn control(&self) -> AgentControlClient<Channel> {
        let socket = self.control_socket();
        let channel = Endpoint::from_static("http://agent.sock")
            .connect_with_connector(service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connecting to the control socket");
        AgentControlClient::new(channel)
    }

    /// `GET /metrics` from the agent's metrics listener (127.0.0.1:9490 in
    /// its namespace unless `--metrics-listen` moved it): the Prometheus text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        let addr = self
            .options
            .args
            .iter()
            .position(|arg| arg == "--metrics-listen")
            .and_then(|i| self.options.args.get(i + 1))
            .map_or(Ok(SocketAddr::from(([127, 0, 0, 1], 9490))), |a| a.parse())
            .context("--metrics-listen")?;
        let namespace = File::open(&self.netns).context("host namespace")?;
        std::thread::spawn(move || -> anyhow::Result<String> {
            use std::io::{Read, Write};
            setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the metrics thread panicked"))?
    }

    /// Runs `agentctl --socket <this agent's socket> ARGS`.
    pub fn agentctl(&self, args: &[&str]) -> Output {
        Command::new(bin("agentctl"))
            .arg("--socket")
            .arg(self.control_socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running agentctl")
    }

    /// `agentctl --json ARGS`, which must succeed, parsed.
    pub fn agentctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let output = self.agentctl(&full);
        assert!(
            output.status.success(),
            "agentctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("agentctl {}: {e}", args.join(" ")))
    }
}

/// A 64-bit count from agentctl's JSON: protobuf's JSON writes 64-bit
/// integers as strings, 32-bit ones as numbers.
pub fn json_count(value: &serde_json::Value) -> u64 {
    value
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(|| value.as_u64())
        .unwrap_or_else(|| panic!("not a count: {value}"))
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        // Removing the pins detaches the agent's programs.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Opens a gRPC channel whose TCP connections are made from inside the
/// namespace at `netns`; with `tls`, over mutual TLS.
pub async fn connect_in(
    netns: &Path,
    addr: SocketAddr,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?
        .connect_timeout(Duration::from_secs(10));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    let netns = netns.to_path_buf();
    let channel = endpoint
        .connect_with_connector(service_fn(move |_| {
            let netns = netns.clone();
            async move {
                let stream = tokio::task::spawn_blocking(move || tcp_connect_in(&netns, addr))
                    .await
                    .map_err(std::io::Error::other)??;
                stream.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
            }
        }))
        .await
        .context("connecting")?;
    Ok(channel)
}

/// Connects from a thread that entered the namespace: the socket belongs to
/// the namespace it was created in.
fn tcp_connect_in(netns: &Path, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let namespace = File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET)?;
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            })
            .join()
            .map_err(|_| std::io::Error::other("connect thread panicked"))?
    })
}
