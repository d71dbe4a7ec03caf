//! Real DHCP clients in VM namespaces: busybox's udhcpc, ISC's dhclient and
//! dhcpcd, each bounded in time and tries.
//!
//! The clients run with scripts of ours that configure `eth0` (address,
//! MTU, option 121's routes, else the router) and record what they were
//! told, one file per event: their stock scripts would rewrite the
//! machine's /etc/resolv.conf and hostname, which network namespaces do not
//! isolate. The scripts and records live in a [`ClientDir`].

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::Netns;

/// Records the environment of each event as `NAME.EVENT.env`, and
/// configures eth0 as a stock script would: address, MTU, and option 121's
/// routes (which include the default route), else the router. The record
/// appears once eth0 is configured.
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
set -u
event=$1
env | sort > "@DIR@/.@NAME@.$event.env"
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    ip addr replace "$ip/${mask:-$subnet}" dev "$interface"
    [ -n "${mtu:-}" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "${staticroutes:-}" ]; then
      set -- $staticroutes
      while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done
    elif [ -n "${router:-}" ]; then
      ip route replace default via "${router%% *}" dev "$interface"
    fi
    ;;
esac
# Renamed once eth0 is configured: the caller waits for the file.
mv "@DIR@/.@NAME@.$event.env" "@DIR@/@NAME@.$event.env"
"#;

/// The same for dhclient, which gives option 121 as bytes (RFC 3442).
pub const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
env | sort > "@DIR@/.@NAME@.$reason.env"
case "$reason" in
  PREINIT)
    ip link set "$interface" up
    ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
    [ -n "$new_interface_mtu" ] && ip link set "$interface" mtu "$new_interface_mtu"
    if [ -n "$new_rfc3442_classless_static_routes" ]; then
      set -- $new_rfc3442_classless_static_routes
      while [ $# -gt 0 ]; do
        len=$1; shift
        dest=""
        for octet in 1 2 3 4; do
          if [ $(( (octet - 1) * 8 )) -lt "$len" ]; then value=$1; shift; else value=0; fi
          dest="$dest${dest:+.}$value"
        done
        ip route replace "$dest/$len" via "$1.$2.$3.$4" dev "$interface"
        shift 4
      done
    elif [ -n "$new_routers" ]; then
      ip route replace default via "${new_routers%% *}" dev "$interface"
    fi
    ;;
  EXPIRE|FAIL|RELEASE|STOP)
    ip -4 addr flush dev "$interface"
    ;;
esac
mv "@DIR@/.@NAME@.$reason.env" "@DIR@/@NAME@.$reason.env"
"#;

/// dhclient asks for option 121 and gives up after 15 s, retrying every
/// second (its defaults: 60 s, and 5 minutes between tries).
pub const DHCLIENT_CONF: &str = "\
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers,
        domain-search, host-name, interface-mtu, rfc3442-classless-static-routes, ntp-servers;
timeout 15;
retry 1;
initial-interval 1;
";

/// dhcpcd configures address and routes itself; its stock hooks set the
/// MTU, which this script does.
pub const DHCPCD_SCRIPT: &str = r#"#!/bin/sh
env | sort > "@DIR@/.@NAME@.$reason.env"
case "$reason" in
  BOUND|REBOOT|RENEW|REBIND)
    [ -n "$new_interface_mtu" ] && ip link set "$interface" mtu "$new_interface_mtu"
    ;;
esac
mv "@DIR@/.@NAME@.$reason.env" "@DIR@/@NAME@.$reason.env"
"#;

pub const DHCPCD_CONF: &str = "\
clientid
option subnet_mask, routers, domain_name_servers, domain_name, host_name, interface_mtu
option classless_static_routes, ntp_servers, domain_search
require dhcp_server_identifier
noipv4ll
noarp
";

/// What a client script recorded for an event: its variables.
pub type Record = HashMap<String, String>;

/// A directory for client scripts, configurations, lease files and what
/// the scripts record; removed when dropped.
pub struct ClientDir {
    dir: tempfile::TempDir,
}

impl ClientDir {
    pub fn new() -> anyhow::Result<ClientDir> {
        Ok(ClientDir {
            dir: tempfile::Builder::new().prefix("alcor-dhcp-").tempdir()?,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes script `NAME.sh` (executable); in it, `@DIR@` becomes this
    /// directory (dhclient runs scripts with an environment of its own) and
    /// `@NAME@` the name, which prefixes the records.
    pub fn script(&self, name: &str, body: &str) -> anyhow::Result<PathBuf> {
        let path = self.path().join(format!("{name}.sh"));
        let dir = self.path().display().to_string();
        fs::write(&path, body.replace("@DIR@", &dir).replace("@NAME@", name))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// Writes `file` with `text`.
    pub fn file(&self, file: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.path().join(file);
        fs::write(&path, text)?;
        Ok(path)
    }

    /// The record `NAME.EVENT.env`, if the script wrote it.
    pub fn recorded(&self, file: &str) -> Option<Record> {
        let text = fs::read_to_string(self.path().join(file)).ok()?;
        Some(
            text.lines()
                .filter_map(|line| line.split_once('='))
                .map(|(key, value)| (key.to_string(), value.trim_matches('\'').to_string()))
                .collect(),
        )
    }

    /// Forgets a record, so that the next event of its kind can be waited for.
    pub fn forget(&self, file: &str) {
        let _ = fs::remove_file(self.path().join(file));
    }

    /// Waits up to `timeout` for record `file`.
    pub fn wait_for(&self, file: &str, timeout: Duration) -> anyhow::Result<Record> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.recorded(file) {
                return Ok(record);
            }
            ensure!(
                Instant::now() < deadline,
                "{file} was not recorded within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Fails with what to install when a client is missing.
pub fn require(program: &str, package: &str) -> anyhow::Result<()> {
    let installed = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|dir| Path::new(dir).join(program).exists());
    ensure!(
        installed,
        "{program} is not installed: `cargo xtask setup` installs Debian's {package}"
    );
    Ok(())
}

/// Runs `command` for at most `limit` (SIGKILL afterwards, by coreutils'
/// `timeout`) and returns its output, whatever its exit status.
pub fn output_within(limit: Duration, program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let secs = limit.as_secs().max(1).to_string();
    Command::new("timeout")
        .args(["-s", "KILL", &secs, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))
}

/// udhcpc's arguments: foreground, `tries` DISCOVERs a second apart, our
/// script, and the options beyond its defaults that the tests look at. The
/// MTU among them, as images that want a jumbo MTU ask for it: the agent
/// sends it unasked only below 1500 (see [`udhcpc_stock`]).
pub fn udhcpc_args(script: &Path, tries: u32) -> Vec<String> {
    let mut args: Vec<String> = [
        "-i",
        "eth0",
        "-f",
        "-t",
        &tries.to_string(),
        "-T",
        "1",
        "-s",
    ]
    .map(String::from)
    .to_vec();
    args.push(script.display().to_string());
    for option in ["mtu", "staticroutes", "ntpsrv", "search"] {
        args.extend(["-O".to_string(), option.to_string()]);
    }
    args
}

/// `udhcpc -q -n`: one lease, then exit; `tries` DISCOVERs a second apart
/// before it gives up. True if it got a lease.
pub fn udhcpc_once(vm: &Netns, script: &Path, tries: u32) -> anyhow::Result<bool> {
    require("udhcpc", "udhcpc")?;
    let mut args = vec!["netns".to_string(), "exec".into(), vm.name().into()];
    args.push("udhcpc".into());
    args.extend(udhcpc_args(script, tries));
    args.extend(["-q".to_string(), "-n".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let limit = Duration::from_secs(u64::from(tries) * 3 + 10);
    Ok(output_within(limit, "ip", &args)?.status.success())
}

/// busybox udhcpc as a distribution runs it: its default request list and
/// the distribution's default script (Debian's `/etc/udhcpc/default.script`,
/// which sets the address, the MTU, the default route and resolv.conf);
/// one lease, then exit, after `tries` DISCOVERs a second apart. The
/// script's resolv.conf goes to the namespace's own /etc (see
/// [`Netns::etc_dir`]). True if it got a lease.
pub fn udhcpc_stock(vm: &Netns, tries: u32) -> anyhow::Result<bool> {
    require("udhcpc", "udhcpc")?;
    fs::create_dir_all(vm.etc_dir())?;
    fs::write(vm.etc_dir().join("resolv.conf"), "")?;
    let tries = tries.to_string();
    let args = [
        "netns",
        "exec",
        vm.name(),
        "udhcpc",
        "-i",
        "eth0",
        "-q",
        "-n",
        "-t",
        &tries,
        "-T",
        "1",
    ];
    let limit = Duration::from_secs(u64::from(tries.parse::<u32>()?) * 3 + 10);
    Ok(output_within(limit, "ip", &args)?.status.success())
}

/// Leases `expected` (an address) for `vm`'s eth0 with [`udhcpc_stock`],
/// or says what went wrong.
pub fn lease_stock(vm: &Netns, expected: &str) -> anyhow::Result<()> {
    if !udhcpc_stock(vm, 5)? {
        bail!("{} got no lease", vm.name());
    }
    let eth0 = Eth0::of(vm)?;
    if !eth0
        .addresses
        .iter()
        .any(|a| a.starts_with(&format!("{expected}/")))
    {
        bail!(
            "{} leased {:?}, its port has {expected}",
            vm.name(),
            eth0.addresses
        );
    }
    Ok(())
}

/// A client left running in a VM (udhcpc in the foreground, say); killed
/// when dropped.
pub struct Running {
    child: Child,
}

impl Running {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal` (udhcpc: SIGUSR1 renews, SIGUSR2 releases).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(self.pid(), signal).with_context(|| format!("sending {signal}"))
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts udhcpc in the foreground in `vm` (`ip netns exec` execs it, so
/// the child is udhcpc itself and takes its signals).
pub fn spawn_udhcpc(vm: &Netns, script: &Path, tries: u32) -> anyhow::Result<Running> {
    require("udhcpc", "udhcpc")?;
    let child = Command::new("ip")
        .args(["netns", "exec", vm.name(), "udhcpc"])
        .args(udhcpc_args(script, tries))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running udhcpc")?;
    Ok(Running { child })
}

/// Files of one dhclient in a [`ClientDir`].
pub struct Dhclient {
    pub conf: PathBuf,
    pub script: PathBuf,
    pub leases: PathBuf,
    pub pid: PathBuf,
}

impl Dhclient {
    /// Writes configuration and script named `name`.
    pub fn new(dir: &ClientDir, name: &str) -> anyhow::Result<Dhclient> {
        Ok(Dhclient {
            conf: dir.file(&format!("{name}.conf"), DHCLIENT_CONF)?,
            script: dir.script(name, DHCLIENT_SCRIPT)?,
            leases: dir.path().join(format!("{name}.leases")),
            pid: dir.path().join(format!("{name}.pid")),
        })
    }

    /// Leaves a lease of `ip` from `server` in the lease file, valid until
    /// 2099: dhclient asks for it first (INIT-REBOOT).
    pub fn remember(&self, ip: &str, server: &str) -> anyhow::Result<()> {
        fs::write(
            &self.leases,
            format!(
                "lease {{\n  interface \"eth0\";\n  fixed-address {ip};\n  \
                 option subnet-mask 255.255.255.0;\n  option dhcp-server-identifier {server};\n  \
                 renew 4 2099/01/01 00:00:00;\n  rebind 4 2099/01/01 00:00:00;\n  \
                 expire 4 2099/01/01 00:00:00;\n}}\n"
            ),
        )?;
        Ok(())
    }

    /// `dhclient -1 ARGS eth0` in `vm`: returns once bound (and goes on
    /// renewing in the background) or after its 15-second timeout.
    pub fn run(&self, vm: &Netns, args: &[&str]) -> anyhow::Result<Output> {
        require("dhclient", "isc-dhcp-client")?;
        let path = |p: &Path| p.display().to_string();
        let mut full = vec![
            "netns".to_string(),
            "exec".into(),
            vm.name().into(),
            "dhclient".into(),
            "-1".into(),
            "-v".into(),
            "-cf".into(),
            path(&self.conf),
            "-sf".into(),
            path(&self.script),
            "-lf".into(),
            path(&self.leases),
            "-pf".into(),
            path(&self.pid),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        full.push("eth0".into());
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        output_within(Duration::from_secs(30), "ip", &full)
    }
}

/// Runs `dhcpcd -4 -1 -B ARGS eth0` in `vm`, once, bounded. dhcpcd keeps its
/// leases and sockets in fixed system directories: it runs in a mount
/// namespace of its own where they are empty tmpfs, so that it neither sees
/// nor leaves state outside. Records are `dhcpcd.REASON.env`.
pub fn dhcpcd_once(dir: &ClientDir, vm: &Netns, args: &[&str]) -> anyhow::Result<Output> {
    require("dhcpcd", "dhcpcd5")?;
    let script = dir.script("dhcpcd", DHCPCD_SCRIPT)?;
    let conf = dir.file("dhcpcd.conf", DHCPCD_CONF)?;
    let command = format!(
        "mkdir -p /var/lib/dhcpcd /run/dhcpcd && mount -t tmpfs none /var/lib/dhcpcd && \
         mount -t tmpfs none /run/dhcpcd && exec ip netns exec {} dhcpcd -4 -1 -B -t 15 -f {} -c {} {} eth0",
        vm.name(),
        conf.display(),
        script.display(),
        args.join(" "),
    );
    output_within(
        Duration::from_secs(30),
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &command],
    )
}

/// Gives `vm` a permanent neighbour entry for the gateway, for unicast
/// renewals while nothing answers ARP for it.
pub fn gateway_neighbour(vm: &Netns, ip: &str, mac: &str) -> anyhow::Result<()> {
    vm.exec(
        "ip",
        &[
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )?;
    Ok(())
}

/// How `eth0` is configured inside a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eth0 {
    /// `ADDRESS/PREFIXLEN` of each IPv4 address.
    pub addresses: Vec<String>,
    pub mtu: u64,
    /// `ip -4 route show dev eth0`, one route a line.
    pub routes: Vec<String>,
}

impl Eth0 {
    pub fn of(vm: &Netns) -> anyhow::Result<Eth0> {
        let links: serde_json::Value =
            serde_json::from_str(&vm.exec("ip", &["-j", "-4", "addr", "show", "dev", "eth0"])?)?;
        let Some(link) = links.get(0) else {
            bail!("no eth0 in {}", vm.name());
        };
        let addresses = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"])))
            .collect();
        let mtu = match vm.link("eth0")? {
            Some(link) => link["mtu"].as_u64().unwrap_or(0),
            None => bail!("no eth0 in {}", vm.name()),
        };
        let routes = vm
            .exec("ip", &["-4", "route", "show", "dev", "eth0"])?
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        Ok(Eth0 {
            addresses,
            mtu,
            routes,
        })
    }

    /// Whether a route starts with `prefix` ("default via 10.0.1.1").
    pub fn has_route(&self, prefix: &str) -> bool {
        self.routes.iter().any(|route| route.starts_with(prefix))
    }
}
