//! Network namespaces made and removed by tests, and commands run inside them.

use std::{
    fs::File,
    os::fd::AsFd,
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// A named network namespace (`ip netns add`), deleted on drop with
/// everything in it.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace with its loopback up.
    pub fn new(name: impl Into<String>) -> anyhow::Result<Netns> {
        let name = name.into();
        run("ip", &["netns", "add", &name])?;
        let netns = Netns { name };
        netns.exec("ip", &["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `/etc/netns/NAME`: `ip netns exec` bind-mounts each file in it over
    /// the one of the same name in /etc, for the command it runs. What a
    /// stock client script writes to /etc (resolv.conf) lands there, not in
    /// the machine's. Removed with the namespace.
    pub fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Runs a command in the namespace and returns its stdout; fails on a
    /// non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command in the namespace and returns its whole output, whatever
    /// its exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// `ip -j link show DEV` inside the namespace, parsed.
    pub fn link(&self, device: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let output = self.output("ip", &["-j", "-d", "link", "show", "dev", device])?;
        if !output.status.success() {
            return Ok(None);
        }
        let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        Ok(links.get(0).cloned())
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it
    /// creates stay in the namespace.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        enter(&self.name, f)
    }
}

/// Runs `f` on a thread that has entered the namespace `name` (one this
/// process does not own).
pub fn enter<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let file = File::open(PathBuf::from("/var/run/netns").join(name))?;
    std::thread::spawn(move || {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill whatever still runs inside, then remove the namespace.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        // Files `ip netns exec` mounts over /etc in it (see
        // `dhcp::udhcpc_stock`).
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// Runs a command, returns its stdout, fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
