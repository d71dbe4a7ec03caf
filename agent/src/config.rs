//! Agent settings: command-line flags, optionally over a TOML file
//! (`--config`) whose keys are the flag names in snake_case. Flags win.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Whether and how the XDP early-drop program runs on the underlay device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayXdp {
    /// In the driver, before the kernel allocates anything: the cheap one
    /// on real NICs.
    #[default]
    Native,
    /// After the kernel has built the packet (copies every packet on a
    /// veth): for testing.
    Generic,
    /// None; a program attached before is detached.
    Off,
}

impl UnderlayXdp {
    pub fn as_str(self) -> &'static str {
        match self {
            UnderlayXdp::Native => "native",
            UnderlayXdp::Generic => "generic",
            UnderlayXdp::Off => "off",
        }
    }
}

/// Flags, and the same settings as read from the config file.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "alcor-agent",
    version,
    about = "Alcor-in-Rust data-plane agent: applies goal state pushed by the controller to this host"
)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML file with any of these settings (keys in snake_case); flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Where the goal-state gRPC service listens [default: 0.0.0.0:50001]
    #[arg(long, value_name = "ADDR:PORT")]
    pub grpc_listen: Option<SocketAddr>,

    /// Directory of the persisted desired state [default: /var/lib/alcor]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Unix socket of the local control service used by agentctl (root only)
    /// [default: /run/alcor/agent.sock]
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,

    /// Underlay NIC (in the agent's network namespace): VXLAN to other
    /// hosts leaves through it and is decapsulated on its tc ingress; port
    /// MTU is its MTU minus the 50 bytes of VXLAN. Without it, VMs reach
    /// only VMs of this host (port MTU 1450).
    #[arg(long, value_name = "DEV")]
    pub underlay_dev: Option<String>,

    /// This host's underlay (tunnel endpoint) address [default: the first
    /// IPv4 address of --underlay-dev]
    #[arg(long, value_name = "IP")]
    pub underlay_ip: Option<Ipv4Addr>,

    /// XDP early drop on --underlay-dev (VXLAN for VNIs not served here, or
    /// from unknown hosts, dropped before the kernel allocates anything):
    /// `native` runs in the driver, the cheap one on real NICs, but on a
    /// veth it makes the peer give up GSO/TSO; a driver that refuses it
    /// leaves the agent without XDP, with a warning. `generic` runs after
    /// the kernel has built the packet and copies every packet on a veth:
    /// for testing. `off` detaches it (tc still drops the same frames, a
    /// little later) [default: native]
    #[arg(long, value_enum, value_name = "MODE")]
    pub underlay_xdp: Option<UnderlayXdp>,

    /// Name of the VXLAN device (external mode, UDP 4789) the agent keeps
    /// with --underlay-dev; it holds the socket that turns on the kernel's
    /// VXLAN GRO [default: alcor-vxlan]
    #[arg(long, value_name = "NAME")]
    pub vxlan_dev: Option<String>,

    /// Where Prometheus metrics are served (GET /metrics) [default: 127.0.0.1:9490]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// PEM certificate the goal-state service presents.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: only clients with a certificate it signed may push goal state.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve goal state without TLS on a non-loopback address (anyone who can
    /// reach the port can then program this host).
    #[arg(long)]
    #[serde(default)]
    pub insecure: bool,

    /// bpffs directory where the datapath pins its maps and links
    /// [default: /sys/fs/bpf/alcor]
    #[arg(long, value_name = "DIR")]
    pub bpf_pin_dir: Option<PathBuf>,

    /// Largest goal-state message accepted, in bytes [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,

    /// DHCP lease time handed to VMs, in seconds (T1 and T2 are 1/2 and 7/8
    /// of it) [default: 86400]
    #[arg(long, value_name = "SECONDS")]
    pub dhcp_lease_time: Option<u32>,

    /// DHCP domain name (option 15) handed to VMs; "" sends none
    /// [default: openstacklocal]
    #[arg(long, value_name = "DOMAIN")]
    pub dhcp_domain: Option<String>,

    /// The controller's gRPC endpoint (http://HOST:PORT, or https:// for
    /// mutual TLS with the --tls-* material): the agent registers there,
    /// sends heartbeats and asks for its whole state. Several instances,
    /// comma-separated: the agent uses one and moves to the next when a
    /// call fails. Unset: the agent works alone, programmed only by
    /// whoever pushes to it.
    #[arg(long, value_name = "URL[,URL...]")]
    pub controller: Option<String>,

    /// The name ports of this host are bound to (Neutron's
    /// `binding:host_id`) [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub host_id: Option<String>,

    /// Where the controller reaches this agent's goal-state service, as a
    /// URL [default: --grpc-listen, https with TLS, the underlay address in
    /// place of 0.0.0.0]
    #[arg(long, value_name = "URL")]
    pub advertise_endpoint: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// Where and as whom the agent registers (`--controller`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerLink {
    /// The controller instances, in the order they are tried: all
    /// `http://…` or all `https://…` (then over mutual TLS with
    /// [`Config::tls`]: the client CA is the trust root, the agent's
    /// certificate its identity). Never empty.
    pub urls: Vec<String>,
    pub host_id: String,
    /// Given with `--advertise-endpoint`; otherwise derived at start, once
    /// the underlay address is known ([`Config::goal_state_endpoint`]).
    pub advertise_endpoint: Option<String>,
}

impl ControllerLink {
    pub fn tls(&self) -> bool {
        self.urls.iter().any(|url| url.starts_with("https://"))
    }

    /// The URLs as given: for logs.
    pub fn urls(&self) -> String {
        self.urls.join(",")
    }
}

/// `--controller`'s URLs, each checked; all of one scheme (one TLS
/// configuration serves them all).
fn controller_urls(list: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| check_url(url).with_context(|| format!("{url:?}")))
        .collect::<anyhow::Result<_>>()?;
    if urls.is_empty() {
        bail!("no URL");
    }
    let tls = |url: &String| url.starts_with("https://");
    if urls.iter().any(tls) && !urls.iter().all(tls) {
        bail!("mixes http:// and https://: the instances are all reached one way");
    }
    Ok(urls)
}

/// The settings in force, defaults applied and checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub grpc_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub underlay_dev: Option<String>,
    pub underlay_ip: Option<Ipv4Addr>,
    pub underlay_xdp: UnderlayXdp,
    pub vxlan_dev: String,
    pub metrics_listen: SocketAddr,
    pub log_format: LogFormat,
    pub tls: Option<Tls>,
    pub insecure: bool,
    pub bpf_pin_dir: PathBuf,
    pub max_message_size: usize,
    pub dhcp_lease_time: u32,
    pub dhcp_domain: String,
    /// `None`: no controller, the agent works alone.
    pub controller: Option<ControllerLink>,
}

impl Config {
    pub const DEFAULT_GRPC_LISTEN: &'static str = "0.0.0.0:50001";
    pub const DEFAULT_STATE_DIR: &'static str = "/var/lib/alcor";
    pub const DEFAULT_CONTROL_SOCKET: &'static str = alcor_types::DEFAULT_CONTROL_SOCKET;
    pub const DEFAULT_METRICS_LISTEN: &'static str = "127.0.0.1:9490";
    pub const DEFAULT_BPF_PIN_DIR: &'static str = "/sys/fs/bpf/alcor";
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;
    pub const DEFAULT_DHCP_LEASE_TIME: u32 = 86_400;
    pub const DEFAULT_DHCP_DOMAIN: &'static str = "openstacklocal";
    pub const DEFAULT_VXLAN_DEV: &'static str = "alcor-vxlan";

    /// Reads the config file, if any, under the flags.
    pub fn load(flags: Settings) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        Config::merge(flags, file)
    }

    fn merge(flags: Settings, file: Settings) -> anyhow::Result<Config> {
        let parse = |text: &str| text.parse().expect("valid default address");
        let tls = match (
            flags.tls_cert.or(file.tls_cert),
            flags.tls_key.or(file.tls_key),
            flags.tls_client_ca.or(file.tls_client_ca),
        ) {
            (Some(cert), Some(key), Some(client_ca)) => Some(Tls {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            _ => bail!("mutual TLS needs all of --tls-cert, --tls-key and --tls-client-ca"),
        };
        let host_id = flags.host_id.or(file.host_id);
        let advertise_endpoint = flags.advertise_endpoint.or(file.advertise_endpoint);
        let controller = match flags.controller.or(file.controller) {
            Some(urls) => Some(ControllerLink {
                urls: controller_urls(&urls).with_context(|| format!("--controller {urls:?}"))?,
                host_id: match host_id {
                    Some(id) => id,
                    None => host_name()?,
                },
                advertise_endpoint: match advertise_endpoint {
                    Some(url) => Some(
                        check_url(&url).with_context(|| format!("--advertise-endpoint {url:?}"))?,
                    ),
                    None => None,
                },
            }),
            // Without a controller nobody asks: a commented-out controller
            // may leave its host_id behind.
            None => None,
        };
        let config = Config {
            grpc_listen: flags
                .grpc_listen
                .or(file.grpc_listen)
                .unwrap_or_else(|| parse(Self::DEFAULT_GRPC_LISTEN)),
            state_dir: flags
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| Self::DEFAULT_STATE_DIR.into()),
            control_socket: flags
                .control_socket
                .or(file.control_socket)
                .unwrap_or_else(|| Self::DEFAULT_CONTROL_SOCKET.into()),
            underlay_dev: flags.underlay_dev.or(file.underlay_dev),
            underlay_ip: flags.underlay_ip.or(file.underlay_ip),
            underlay_xdp: flags.underlay_xdp.or(file.underlay_xdp).unwrap_or_default(),
            vxlan_dev: flags
                .vxlan_dev
                .or(file.vxlan_dev)
                .unwrap_or_else(|| Self::DEFAULT_VXLAN_DEV.into()),
            metrics_listen: flags
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| parse(Self::DEFAULT_METRICS_LISTEN)),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            tls,
            insecure: flags.insecure || file.insecure,
            bpf_pin_dir: flags
                .bpf_pin_dir
                .or(file.bpf_pin_dir)
                .unwrap_or_else(|| Self::DEFAULT_BPF_PIN_DIR.into()),
            max_message_size: flags
                .max_message_size
                .or(file.max_message_size)
                .unwrap_or(Self::DEFAULT_MAX_MESSAGE_SIZE),
            dhcp_lease_time: flags
                .dhcp_lease_time
                .or(file.dhcp_lease_time)
                .unwrap_or(Self::DEFAULT_DHCP_LEASE_TIME),
            dhcp_domain: flags
                .dhcp_domain
                .or(file.dhcp_domain)
                .unwrap_or_else(|| Self::DEFAULT_DHCP_DOMAIN.into()),
            controller,
        };
        for (flag, name) in [
            ("--underlay-dev", config.underlay_dev.as_deref()),
            ("--vxlan-dev", Some(config.vxlan_dev.as_str())),
        ] {
            if let Some(name) = name {
                check_device_name(name).with_context(|| format!("{flag} {name:?}"))?;
            }
        }
        if config.underlay_ip.is_some() && config.underlay_dev.is_none() {
            bail!("--underlay-ip needs --underlay-dev, the device tunnels go through");
        }
        if config.underlay_dev.as_deref() == Some(config.vxlan_dev.as_str()) {
            bail!("--vxlan-dev must differ from --underlay-dev");
        }
        if config.dhcp_lease_time < 60 {
            bail!("--dhcp-lease-time must be at least 60 seconds");
        }
        if config.tls.is_none() && !config.grpc_listen.ip().is_loopback() && !config.insecure {
            bail!(
                "refusing to serve goal state on {} without mutual TLS: whoever reaches it \
                 programs this host. Give --tls-cert, --tls-key and --tls-client-ca, listen on \
                 a loopback address, or pass --insecure",
                config.grpc_listen
            );
        }
        if let Some(link) = &config.controller {
            config.check_controller_link(link)?;
        }
        Ok(config)
    }

    fn check_controller_link(&self, link: &ControllerLink) -> anyhow::Result<()> {
        check_host_id(&link.host_id).with_context(|| format!("--host-id {:?}", link.host_id))?;
        if link.tls() && self.tls.is_none() {
            bail!(
                "--controller {} is https: give --tls-cert and --tls-key (the agent's identity) \
                 and --tls-client-ca (which signed the controller's certificate)",
                link.urls()
            );
        }
        match &link.advertise_endpoint {
            Some(url) => {
                let tls = url.starts_with("https://");
                if tls != self.tls.is_some() {
                    bail!(
                        "--advertise-endpoint {url} says {}, but the goal-state service is \
                         served {}",
                        if tls { "https" } else { "http" },
                        if self.tls.is_some() {
                            "with mutual TLS (https)"
                        } else {
                            "without TLS (http)"
                        }
                    );
                }
            }
            None if self.grpc_listen.ip().is_unspecified() && self.underlay_dev.is_none() => bail!(
                "the controller cannot reach --grpc-listen {} at an unspecified address, and \
                 without --underlay-dev the agent knows no address of its own: give \
                 --advertise-endpoint",
                self.grpc_listen
            ),
            None => {}
        }
        Ok(())
    }

    /// Where the controller reaches the goal-state service: the advertised
    /// endpoint, or `--grpc-listen` as a URL (https with TLS) with
    /// `underlay_ip`, this host's tunnel address, in place of an unspecified
    /// address.
    pub fn goal_state_endpoint(&self, underlay_ip: Option<Ipv4Addr>) -> Option<String> {
        let link = self.controller.as_ref()?;
        if let Some(url) = &link.advertise_endpoint {
            return Some(url.clone());
        }
        let mut listen = self.grpc_listen;
        if listen.ip().is_unspecified() {
            // Checked at load: an unspecified address comes with an underlay.
            listen.set_ip(underlay_ip?.into());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Some(format!("{scheme}://{listen}"))
    }
}

/// A gRPC endpoint URL: http or https, a host, no path or query. Returned
/// without a trailing slash.
fn check_url(url: &str) -> anyhow::Result<String> {
    let uri: tonic::transport::Uri = url.parse().context("not a URL")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => bail!("a gRPC endpoint is http://HOST:PORT or https://HOST:PORT"),
    }
    match uri.authority() {
        Some(authority) if !authority.host().is_empty() => {}
        _ => bail!("no host"),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("a gRPC endpoint has no path or query");
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Something a controller can key a host by and show: printable, no spaces.
fn check_host_id(id: &str) -> anyhow::Result<()> {
    if id.is_empty() || id.len() > 255 {
        bail!("a host id has 1 to 255 bytes");
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("a host id has no spaces or control characters");
    }
    Ok(())
}

/// This host's name, the default host id: what Nova binds ports to.
fn host_name() -> anyhow::Result<String> {
    let name = nix::unistd::gethostname().context("reading the host name (give --host-id)")?;
    name.into_string()
        .map_err(|name| anyhow::anyhow!("the host name {name:?} is not UTF-8: give --host-id"))
}

/// A name the kernel accepts for a network device.
fn check_device_name(name: &str) -> anyhow::Result<()> {
    // IFNAMSIZ (16) with the terminating NUL.
    if name.is_empty() || name.len() > 15 {
        bail!("a device name has 1 to 15 bytes");
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        bail!("a device name has no '/', ':' or spaces and is not . or ..");
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Settings {
        Settings::parse_from(std::iter::once("alcor-agent").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_refuse_plain_text_on_every_address() {
        let error = Config::merge(flags(&[]), Settings::default()).unwrap_err();
        assert!(error.to_string().contains("without mutual TLS"), "{error}");
    }

    #[test]
    fn loopback_or_insecure_may_go_without_tls() {
        let config = Config::merge(
            flags(&["--grpc-listen", "127.0.0.1:50001"]),
            Settings::default(),
        )
        .unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.state_dir, PathBuf::from("/var/lib/alcor"));
        assert_eq!(config.max_message_size, 64 << 20);
        assert!(Config::merge(flags(&["--insecure"]), Settings::default()).is_ok());
    }

    #[test]
    fn tls_material_comes_whole() {
        let error =
            Config::merge(flags(&["--tls-cert", "c.pem"]), Settings::default()).unwrap_err();
        assert!(error.to_string().contains("--tls-key"), "{error}");
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_are_errors() {
        let file: Settings = toml::from_str(
            "grpc_listen = \"127.0.0.1:1\"\nstate_dir = \"/tmp/a\"\nlog_format = \"json\"",
        )
        .unwrap();
        let config = Config::merge(flags(&["--grpc-listen", "127.0.0.1:2"]), file).unwrap();
        assert_eq!(config.grpc_listen.port(), 2);
        assert_eq!(config.state_dir, PathBuf::from("/tmp/a"));
        assert_eq!(config.log_format, LogFormat::Json);
        assert!(toml::from_str::<Settings>("grpc_lisen = \"x\"").is_err());
    }

    #[test]
    fn underlay_settings_have_defaults_and_file_keys() {
        let loopback = ["--grpc-listen", "127.0.0.1:1"];
        let config = Config::merge(flags(&loopback), Settings::default()).unwrap();
        assert_eq!(config.underlay_xdp, UnderlayXdp::Native);
        assert_eq!(config.vxlan_dev, "alcor-vxlan");
        assert_eq!(config.underlay_dev, None);

        let file: Settings = toml::from_str(
            "underlay_dev = \"eth1\"\nunderlay_ip = \"198.18.0.1\"\n\
             underlay_xdp = \"generic\"\nvxlan_dev = \"vx0\"",
        )
        .unwrap();
        let config = Config::merge(flags(&loopback), file).unwrap();
        assert_eq!(config.underlay_dev.as_deref(), Some("eth1"));
        assert_eq!(config.underlay_ip, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(config.underlay_xdp, UnderlayXdp::Generic);
        assert_eq!(config.vxlan_dev, "vx0");

        let off = flags(&["--grpc-listen", "127.0.0.1:1", "--underlay-xdp", "off"]);
        let config = Config::merge(off, Settings::default()).unwrap();
        assert_eq!(config.underlay_xdp, UnderlayXdp::Off);
        assert!(toml::from_str::<Settings>("underlay_xdp = \"driver\"").is_err());
    }

    #[test]
    fn no_controller_by_default() {
        let config = Config::merge(
            flags(&["--grpc-listen", "127.0.0.1:1"]),
            Settings::default(),
        )
        .unwrap();
        assert_eq!(config.controller, None);
        assert_eq!(config.goal_state_endpoint(None), None);
    }

    #[test]
    fn controller_link_defaults_to_the_host_name_and_the_listen_address() {
        let args = [
            "--grpc-listen",
            "127.0.0.1:50001",
            "--controller",
            "http://198.18.0.254:9697/",
        ];
        let config = Config::merge(flags(&args), Settings::default()).unwrap();
        let link = config.controller.clone().unwrap();
        assert_eq!(link.urls, ["http://198.18.0.254:9697"]);
        assert!(!link.tls());
        assert_eq!(link.host_id, host_name().unwrap());
        assert_eq!(
            config.goal_state_endpoint(None).as_deref(),
            Some("http://127.0.0.1:50001")
        );
    }

    #[test]
    fn an_unspecified_listen_address_advertises_the_underlay_address() {
        let args = [
            "--insecure",
            "--underlay-dev",
            "eth1",
            "--controller",
            "http://ctl:9697",
            "--host-id",
            "compute-1",
        ];
        let config = Config::merge(flags(&args), Settings::default()).unwrap();
        assert_eq!(config.controller.as_ref().unwrap().host_id, "compute-1");
        let underlay = Some(Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(
            config.goal_state_endpoint(underlay).as_deref(),
            Some("http://198.18.0.1:50001")
        );

        // Without an underlay the agent knows no address of its own.
        let error = Config::merge(
            flags(&["--insecure", "--controller", "http://ctl:9697"]),
            Settings::default(),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("--advertise-endpoint"),
            "{error}"
        );
        let config = Config::merge(
            flags(&[
                "--insecure",
                "--controller",
                "http://ctl:9697",
                "--advertise-endpoint",
                "http://compute-1.example:50001",
            ]),
            Settings::default(),
        )
        .unwrap();
        assert_eq!(
            config.goal_state_endpoint(None).as_deref(),
            Some("http://compute-1.example:50001")
        );
    }

    #[test]
    fn https_controller_needs_the_tls_material_and_advertises_https() {
        let error = Config::merge(
            flags(&[
                "--grpc-listen",
                "127.0.0.1:1",
                "--controller",
                "https://ctl:9697",
            ]),
            Settings::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("--tls-cert"), "{error}");

        let tls = [
            "--tls-cert",
            "a.pem",
            "--tls-key",
            "a-key.pem",
            "--tls-client-ca",
            "ca.pem",
            "--grpc-listen",
            "198.18.0.1:50001",
        ];
        let mut args = tls.to_vec();
        args.extend(["--controller", "https://198.18.0.254:9697"]);
        let config = Config::merge(flags(&args), Settings::default()).unwrap();
        assert!(config.controller.as_ref().unwrap().tls());
        assert_eq!(
            config.goal_state_endpoint(None).as_deref(),
            Some("https://198.18.0.1:50001")
        );

        // What is advertised must be what is served.
        args.extend(["--advertise-endpoint", "http://198.18.0.1:50001"]);
        let error = Config::merge(flags(&args), Settings::default()).unwrap_err();
        assert!(error.to_string().contains("mutual TLS"), "{error}");
    }

    #[test]
    fn controller_urls_and_host_ids_are_checked() {
        for (flag, value) in [
            ("--controller", "198.18.0.254:9697"),
            ("--controller", "ftp://ctl:9697"),
            ("--controller", "http://ctl:9697/v1"),
            ("--controller", "http://"),
            ("--advertise-endpoint", "grpc://h:1"),
            ("--host-id", "two words"),
            ("--host-id", ""),
        ] {
            let mut args = vec!["--grpc-listen", "127.0.0.1:1", flag, value];
            if flag != "--controller" {
                args.extend(["--controller", "http://ctl:9697"]);
            }
            assert!(
                Config::merge(flags(&args), Settings::default()).is_err(),
                "{args:?}"
            );
        }
    }

    #[test]
    fn several_controller_instances_are_tried_in_order() {
        let args = [
            "--grpc-listen",
            "127.0.0.1:1",
            "--controller",
            "http://ctl-a:9697/, http://ctl-b:9697,",
        ];
        let link = Config::merge(flags(&args), Settings::default())
            .unwrap()
            .controller
            .unwrap();
        assert_eq!(link.urls, ["http://ctl-a:9697", "http://ctl-b:9697"]);
        assert_eq!(link.urls(), "http://ctl-a:9697,http://ctl-b:9697");
        assert!(!link.tls());
        for bad in [
            ",",
            "http://ctl-a:9697,ctl-b:9697",
            "http://ctl-a:9697,https://ctl-b:9697",
        ] {
            let args = ["--grpc-listen", "127.0.0.1:1", "--controller", bad];
            let error = Config::merge(flags(&args), Settings::default()).unwrap_err();
            assert!(
                format!("{error:#}").contains("--controller"),
                "{bad}: {error:#}"
            );
        }
    }

    #[test]
    fn controller_keys_come_from_the_file_under_the_flags() {
        let file: Settings = toml::from_str(
            "grpc_listen = \"127.0.0.1:1\"\ncontroller = \"http://ctl:9697\"\n\
             host_id = \"from-file\"\nadvertise_endpoint = \"http://h:1\"",
        )
        .unwrap();
        let config = Config::merge(flags(&["--host-id", "from-flag"]), file).unwrap();
        let link = config.controller.unwrap();
        assert_eq!(link.urls, ["http://ctl:9697"]);
        assert_eq!(link.host_id, "from-flag");
        assert_eq!(link.advertise_endpoint.as_deref(), Some("http://h:1"));
        assert!(toml::from_str::<Settings>("controller_url = \"http://ctl\"").is_err());
    }

    #[test]
    fn device_names_are_checked() {
        for args in [
            &["--vxlan-dev", "a-name-of-sixteen"][..],
            &["--vxlan-dev", ""],
            &["--underlay-dev", "a/b"],
            &["--underlay-dev", "alcor-vxlan"],
            &["--underlay-ip", "198.18.0.1"],
        ] {
            let mut args = args.to_vec();
            args.extend(["--grpc-listen", "127.0.0.1:1"]);
            assert!(
                Config::merge(flags(&args), Settings::default()).is_err(),
                "{args:?}"
            );
        }
    }
}
