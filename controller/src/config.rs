//! Controller settings: command-line flags, optionally over a TOML file
//! (`--config`) whose keys are the flag names in snake_case. Flags win;
//! unknown keys are refused.

use std::{
    net::SocketAddr,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::{api::Auth, service::Policy};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Flags, and the same settings as read from the config file.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "alcor-controller",
    version,
    about = "Alcor-in-Rust controller: a Neutron-compatible API, with address allocation that \
             holds across controller instances"
)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// TOML file with any of these settings (keys in snake_case); flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Where the Neutron API listens [default: 127.0.0.1:9696]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// The store: `file:PATH` (an embedded store, one controller) or
    /// `etcd:URL[,URL...]` (shared by several controllers)
    /// [default: file:/var/lib/alcor-controller/store.redb]
    #[arg(long, value_name = "STORE")]
    pub store: Option<String>,

    /// Who may call the API: `noauth` (everyone, as an admin, as Neutron's
    /// noauth) or `token:FILE` (whoever sends the token the file holds in
    /// X-Auth-Token) [default: noauth]
    #[arg(long, value_name = "AUTH")]
    pub auth: Option<String>,

    /// Where agents register and ask for their state (gRPC) [default: 127.0.0.1:9697]
    #[arg(long, value_name = "ADDR:PORT")]
    pub grpc_listen: Option<SocketAddr>,

    /// PEM certificate of the controller towards the agents: served on
    /// --grpc-listen, and its client certificate when it dials an agent's
    /// https:// endpoint (mutual TLS both ways; with --agent-tls-key and
    /// --agent-tls-ca)
    #[arg(long, value_name = "FILE")]
    pub agent_tls_cert: Option<PathBuf>,

    /// PEM private key of --agent-tls-cert
    #[arg(long, value_name = "FILE")]
    pub agent_tls_key: Option<PathBuf>,

    /// PEM CA that signs the agents' certificates
    #[arg(long, value_name = "FILE")]
    pub agent_tls_ca: Option<PathBuf>,

    /// Where Prometheus metrics are served (GET /metrics) [default: 127.0.0.1:9698]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format [default: text]
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,

    /// The first three bytes of allocated MACs [default: fa:16:3e]
    #[arg(long, value_name = "XX:XX:XX")]
    pub mac_prefix: Option<String>,

    /// The VNIs networks get, `FIRST:LAST` [default: 1:16777215]
    #[arg(long, value_name = "FIRST:LAST")]
    pub vni_range: Option<String>,

    /// The largest network MTU: the underlay's minus VXLAN's 50 bytes [default: 1450]
    #[arg(long, value_name = "BYTES")]
    pub max_mtu: Option<u32>,
}

/// Where the controller keeps its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreSpec {
    File(PathBuf),
    Etcd(Vec<String>),
}

impl FromStr for StoreSpec {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<StoreSpec> {
        if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                bail!("--store file: needs a path");
            }
            return Ok(StoreSpec::File(path.into()));
        }
        if let Some(urls) = text.strip_prefix("etcd:") {
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(String::from)
                .collect();
            if urls.is_empty() {
                bail!("--store etcd: needs at least one URL (etcd:http://127.0.0.1:2379)");
            }
            for url in &urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("--store etcd: {url} is not an http:// or https:// URL");
                }
            }
            return Ok(StoreSpec::Etcd(urls));
        }
        bail!("--store {text:?}: expected file:PATH or etcd:URL[,URL...]")
    }
}

/// The settings in force, defaults applied and checked.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub store: StoreSpec,
    pub auth: Auth,
    pub metrics_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// Mutual TLS with the agents, if configured.
    pub agent_tls: Option<AgentTls>,
    pub log_format: LogFormat,
    pub policy: Policy,
}

/// The controller's certificate and key, and the CA of the agents'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl Config {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:9696";
    pub const DEFAULT_STORE: &'static str = "file:/var/lib/alcor-controller/store.redb";
    pub const DEFAULT_METRICS_LISTEN: &'static str = "127.0.0.1:9698";
    pub const DEFAULT_GRPC_LISTEN: &'static str = "127.0.0.1:9697";

    /// Reads the config file, if any, under the flags.
    pub fn load(flags: Settings) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        Config::merge(flags, file)
    }

    fn merge(flags: Settings, file: Settings) -> anyhow::Result<Config> {
        let address = |text: &str| text.parse().expect("a valid default address");
        let store = flags
            .store
            .or(file.store)
            .unwrap_or_else(|| Self::DEFAULT_STORE.into());
        let mut policy = Policy::default();
        if let Some(prefix) = flags.mac_prefix.or(file.mac_prefix) {
            policy.mac_prefix =
                mac_prefix(&prefix).with_context(|| format!("--mac-prefix {prefix:?}"))?;
        }
        if let Some(range) = flags.vni_range.or(file.vni_range) {
            policy.vni_range =
                vni_range(&range).with_context(|| format!("--vni-range {range:?}"))?;
        }
        if let Some(mtu) = flags.max_mtu.or(file.max_mtu) {
            if !(576..=65485).contains(&mtu) {
                bail!("--max-mtu {mtu}: 576 to 65485");
            }
            policy.mtu = mtu;
        }
        let agent_tls = match (
            flags.agent_tls_cert.or(file.agent_tls_cert),
            flags.agent_tls_key.or(file.agent_tls_key),
            flags.agent_tls_ca.or(file.agent_tls_ca),
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(AgentTls { cert, key, ca }),
            _ => bail!("--agent-tls-cert, --agent-tls-key and --agent-tls-ca go together"),
        };
        Ok(Config {
            grpc_listen: flags
                .grpc_listen
                .or(file.grpc_listen)
                .unwrap_or_else(|| address(Self::DEFAULT_GRPC_LISTEN)),
            agent_tls,
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| address(Self::DEFAULT_LISTEN)),
            store: store.parse()?,
            auth: auth(&flags.auth.or(file.auth).unwrap_or_else(|| "noauth".into()))?,
            metrics_listen: flags
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| address(Self::DEFAULT_METRICS_LISTEN)),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            policy,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("in the config file {}", path.display()))
}

fn auth(text: &str) -> anyhow::Result<Auth> {
    if text == "noauth" {
        return Ok(Auth::None);
    }
    let Some(path) = text.strip_prefix("token:") else {
        bail!("--auth {text:?}: expected noauth or token:FILE");
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("--auth: reading the token file {path}"))?;
    let token = token.trim();
    if token.is_empty() {
        bail!("--auth: the token file {path} is empty");
    }
    Ok(Auth::Token(token.to_string()))
}

fn mac_prefix(text: &str) -> anyhow::Result<[u8; 3]> {
    let mac: alcor_types::Mac = format!("{text}:00:00:00")
        .parse()
        .map_err(anyhow::Error::msg)?;
    let [a, b, c, ..] = mac.octets();
    if a & 1 == 1 {
        bail!("a multicast prefix: VMs need unicast MACs");
    }
    Ok([a, b, c])
}

fn vni_range(text: &str) -> anyhow::Result<RangeInclusive<u32>> {
    let (first, last) = text.split_once(':').context("expected FIRST:LAST")?;
    let vni = |text: &str| -> anyhow::Result<u32> {
        let number: u64 = text.trim().parse().context("not a number")?;
        Ok(alcor_types::Vni::try_from(number)
            .map_err(anyhow::Error::msg)?
            .get())
    };
    let (first, last) = (vni(first)?, vni(last)?);
    if first > last {
        bail!("{first} is after {last}");
    }
    Ok(first..=last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str], file: &str) -> anyhow::Result<Config> {
        let flags = Settings::try_parse_from(
            std::iter::once("alcor-controller").chain(args.iter().copied()),
        )?;
        let file: Settings = toml::from_str(file)?;
        Config::merge(flags, file)
    }

    #[test]
    fn defaults_flags_and_file() {
        let config = load(&[], "").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9696");
        assert_eq!(
            config.store,
            StoreSpec::File("/var/lib/alcor-controller/store.redb".into())
        );
        assert_eq!(config.auth, Auth::None);
        assert_eq!(config.grpc_listen.to_string(), "127.0.0.1:9697");
        assert_eq!(config.agent_tls, None);
        let config = load(
            &["--store", "etcd:http://127.0.0.1:2379,http://127.0.0.2:2379"],
            "store = \"file:/x\"\nlisten = \"0.0.0.0:9696\"\nvni_range = \"100:200\"\nmac_prefix = \"02:aa:bb\"",
        )
        .unwrap();
        assert_eq!(
            config.store,
            StoreSpec::Etcd(vec![
                "http://127.0.0.1:2379".into(),
                "http://127.0.0.2:2379".into()
            ])
        );
        assert_eq!(config.listen.to_string(), "0.0.0.0:9696");
        assert_eq!(config.policy.vni_range, 100..=200);
        assert_eq!(config.policy.mac_prefix, [2, 0xaa, 0xbb]);
        let config = load(
            &[
                "--grpc-listen",
                "198.18.0.100:9697",
                "--agent-tls-cert",
                "c.pem",
            ],
            "agent_tls_key = \"k.pem\"\nagent_tls_ca = \"ca.pem\"",
        )
        .unwrap();
        assert_eq!(config.grpc_listen.to_string(), "198.18.0.100:9697");
        assert_eq!(
            config.agent_tls,
            Some(AgentTls {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                ca: "ca.pem".into()
            })
        );
        assert!(
            load(&["--agent-tls-cert", "c.pem"], "").is_err(),
            "TLS half set"
        );
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        assert!(
            toml::from_str::<Settings>("colour = \"blue\"").is_err(),
            "unknown keys"
        );
        for args in [
            &["--store", "sqlite:/x"][..],
            &["--store", "etcd:"],
            &["--store", "etcd:127.0.0.1:2379"],
            &["--auth", "password"],
            &["--auth", "token:/nonexistent/token"],
            &["--vni-range", "200:100"],
            &["--vni-range", "0:100"],
            &["--mac-prefix", "01:00:5e"],
            &["--max-mtu", "100"],
        ] {
            assert!(load(args, "").is_err(), "{args:?} accepted");
        }
    }

    /// The example shipped beside the systemd unit is a valid config.
    #[test]
    fn the_example_config_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/controller.toml");
        let file = read_file(Path::new(path)).unwrap();
        assert_eq!(file.listen.unwrap().to_string(), "0.0.0.0:9696");
        assert_eq!(file.max_mtu, Some(1450));
    }

    #[test]
    fn a_token_comes_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let config = load(&["--auth", &format!("token:{}", path.display())], "").unwrap();
        assert_eq!(config.auth, Auth::Token("s3cret".into()));
    }
}
