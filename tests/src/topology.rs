//! Multi-host topologies: a fabric namespace whose Linux bridge is the
//! underlay, and host namespaces plugged into it by a veth each, with an
//! underlay address in 198.18.0.0/15. Also sets of many namespaces (VMs for
//! benchmarks) made and removed in one `ip -batch` each.
//!
//! Everything lives in namespaces named with the caller's unique prefix;
//! nothing touches the root namespace. Dropping a `Topology` deletes the
//! hosts, then the fabric (a veth goes with either of its namespaces).

use std::{
    collections::HashSet,
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    process::{Command, Stdio},
};

use anyhow::{Context, bail, ensure};

use crate::{AgentOptions, Netns, agent::GRPC_PORT, netns::run};

/// The underlay device of every host.
pub const UNDERLAY_DEV: &str = "underlay0";
/// The fabric's bridge.
pub const BRIDGE: &str = "br0";

/// A host namespace on the fabric.
pub struct Host {
    name: String,
    netns: Netns,
    underlay_ip: Ipv4Addr,
}

impl Host {
    /// The short name given to `add_host` (the namespace is prefixed).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn underlay_ip(&self) -> Ipv4Addr {
        self.underlay_ip
    }

    /// Where an agent of this host serves goal state.
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from((self.underlay_ip, GRPC_PORT))
    }

    /// Options for an agent on this host: listening on its underlay address,
    /// with the underlay device and address given. Add TLS flags (or
    /// `--insecure`) to `args`: the agent refuses plain text off loopback.
    pub fn agent_options(&self) -> AgentOptions {
        AgentOptions {
            args: vec![
                "--underlay-dev".into(),
                UNDERLAY_DEV.into(),
                "--underlay-ip".into(),
                self.underlay_ip.to_string(),
            ],
            grpc_listen: Some(self.grpc_addr()),
            ..Default::default()
        }
    }
}

/// A fabric (bridge) namespace and the hosts plugged into it.
pub struct Topology {
    // Hosts are dropped before the fabric.
    hosts: Vec<Host>,
    fabric: Netns,
    prefix: String,
    /// The fabric's MTU, when not the default 1500.
    mtu: Option<u32>,
}

impl Topology {
    /// Creates `<prefix>-fabric` with a bridge that is up.
    pub fn new(prefix: &str) -> anyhow::Result<Topology> {
        let fabric = Netns::new(format!("{prefix}-fabric"))?;
        fabric.exec("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
        fabric.exec("ip", &["link", "set", BRIDGE, "up"])?;
        Ok(Topology {
            hosts: Vec::new(),
            fabric,
            prefix: prefix.to_string(),
            mtu: None,
        })
    }

    /// Gives the fabric (its bridge and ports) and every host's `underlay0`
    /// this MTU, those of hosts added later too. Agents read their port MTU
    /// from the underlay device when they start.
    pub fn set_mtu(&mut self, mtu: u32) -> anyhow::Result<()> {
        let text = mtu.to_string();
        self.fabric
            .exec("ip", &["link", "set", BRIDGE, "mtu", &text])?;
        for host in &self.hosts {
            set_host_mtu(&self.fabric, host, &text)?;
        }
        self.mtu = Some(mtu);
        Ok(())
    }

    pub fn fabric(&self) -> &Netns {
        &self.fabric
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates host `<prefix>-<name>` whose `underlay0` has `address`
    /// ("198.18.0.1/24": it must lie in 198.18.0.0/15) and is plugged into
    /// the fabric's bridge as port `f-<name>`.
    pub fn add_host(&mut self, name: &str, address: &str) -> anyhow::Result<&Host> {
        let (ip, len) = address
            .split_once('/')
            .with_context(|| format!("{address}: expected ADDRESS/PREFIXLEN"))?;
        let ip: Ipv4Addr = ip.parse().with_context(|| address.to_string())?;
        let len: u8 = len.parse().with_context(|| address.to_string())?;
        ensure!(
            (15..=32).contains(&len) && u32::from(ip) & 0xfffe_0000 == 0xc612_0000,
            "underlay address {address} is outside 198.18.0.0/15"
        );
        let port = format!("f-{name}");
        ensure!(port.len() <= 15, "host name {name} is too long");
        ensure!(
            self.hosts.iter().all(|h| h.name != name),
            "host {name} exists"
        );
        let netns = Netns::new(format!("{}-{name}", self.prefix))?;
        self.fabric.exec(
            "ip",
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_DEV,
                "netns",
                netns.name(),
            ],
        )?;
        self.fabric
            .exec("ip", &["link", "set", &port, "master", BRIDGE, "up"])?;
        netns.exec("ip", &["addr", "add", address, "dev", UNDERLAY_DEV])?;
        netns.exec("ip", &["link", "set", UNDERLAY_DEV, "up"])?;
        let host = Host {
            name: name.to_string(),
            netns,
            underlay_ip: ip,
        };
        if let Some(mtu) = self.mtu {
            set_host_mtu(&self.fabric, &host, &mtu.to_string())?;
        }
        self.hosts.push(host);
        Ok(self.hosts.last().expect("just pushed"))
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the topology"))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

/// Sets the MTU of both ends of a host's veth to the fabric.
fn set_host_mtu(fabric: &Netns, host: &Host, mtu: &str) -> anyhow::Result<()> {
    let port = format!("f-{}", host.name);
    fabric.exec("ip", &["link", "set", &port, "mtu", mtu])?;
    host.netns
        .exec("ip", &["link", "set", UNDERLAY_DEV, "mtu", mtu])?;
    Ok(())
}

/// Many namespaces (VMs, usually) created in one `ip -batch` and deleted in
/// another when dropped, after killing whatever runs in them.
pub struct NetnsSet {
    names: Vec<String>,
}

impl NetnsSet {
    /// Creates the namespaces `names`; on failure, removes those made.
    pub fn create(names: Vec<String>) -> anyhow::Result<NetnsSet> {
        let set = NetnsSet { names };
        let script: String = set
            .names
            .iter()
            .map(|n| format!("netns add {n}\n"))
            .collect();
        ip_batch(None, &script, false).context("creating namespaces")?;
        Ok(set)
    }

    /// Takes charge of namespaces that exist already (left over by a run
    /// that was killed, say): they are deleted on drop.
    pub fn adopt(names: Vec<String>) -> NetnsSet {
        NetnsSet { names }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Drop for NetnsSet {
    fn drop(&mut self) {
        kill_processes_in(&self.names);
        let script: String = self
            .names
            .iter()
            .map(|n| format!("netns del {n}\n"))
            .collect();
        if let Err(error) = ip_batch(None, &script, true) {
            eprintln!("warning: deleting namespaces: {error:#}");
        }
    }
}

/// SIGKILLs every process whose network namespace is one of `names`, by
/// comparing namespace inodes (one pass over /proc instead of one
/// `ip netns pids` per namespace).
fn kill_processes_in(names: &[String]) {
    let inodes: HashSet<u64> = names
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/var/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(meta) = std::fs::metadata(entry.path().join("ns/net"))
            && inodes.contains(&meta.ino())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs `ip [-n NETNS] -batch -` with `script` on stdin; with `force`, goes
/// on past failing lines (and still reports them).
pub fn ip_batch(netns: Option<&str>, script: &str, force: bool) -> anyhow::Result<()> {
    batch("ip", netns, script, force)
}

/// Runs `TOOL [-n NETNS] [-force] -batch -` (`ip` or `bridge`) on `script`.
pub fn batch(tool: &str, netns: Option<&str>, script: &str, force: bool) -> anyhow::Result<()> {
    let mut command = Command::new(tool);
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    if force {
        command.arg("-force");
    }
    let mut child = command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool} -batch"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .with_context(|| format!("writing to {tool} -batch"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {tool} -batch"))?;
    if !output.status.success() {
        bail!(
            "{tool} -batch failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> anyhow::Result<Vec<String>> {
    Ok(run("ip", &["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect())
}
