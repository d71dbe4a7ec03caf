//! The real, unmodified `openstack` CLI (python-openstackclient), which
//! `cargo xtask setup` installs in a virtualenv at [`venv_dir`], driven
//! against a Neutron-shaped endpoint.
//!
//! Every run starts clean and stays on the endpoint:
//! - no variable of the caller's environment (no `OS_*`, no proxy), a
//!   temporary HOME and working directory, and `OS_CLIENT_CONFIG_FILE` and
//!   `OS_CLIENT_SECURE_FILE` naming empty files that shadow any clouds.yaml
//!   of the machine's (/etc/openstack): only the flags configure it;
//! - requests to any host but the endpoint's go through a proxy at a closed
//!   port ([`Cli::proxy`] changes it), so they fail instead of leaving the
//!   machine;
//! - coreutils' `timeout` kills a run after [`LIMIT`].
//!
//! What the CLI sends, command by command, is in
//! tests/openstack-cli-requests.md.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail, ensure};

/// How long one command may take; a batch gets this per command.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Where `cargo xtask setup` makes the virtualenv: `openstack-venv` in the
/// workspace's target directory (`CARGO_TARGET_DIR` if set, as cargo
/// does). A virtualenv works only where it was made; setup remakes it when
/// the workspace moves.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map(|root| root.join("target"))
                .unwrap_or_else(|| PathBuf::from("target"))
        })
        .join("openstack-venv")
}

/// True when the CLI is installed. Outside CI a missing virtualenv skips
/// the test loudly; in CI (env `CI` set) it is a failure.
pub fn available(test: &str) -> bool {
    let openstack = venv_dir().join("bin/openstack");
    if openstack.exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} is missing in CI: `cargo xtask setup` installs it",
        openstack.display()
    );
    eprintln!(
        "\n*** SKIPPED {test}: no {} (run `cargo xtask setup`) ***\n",
        openstack.display()
    );
    false
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line without the global options, for messages.
    pub command: String,
    /// The exit status: 0 on success, 1 when the server refused, 2 for a
    /// command line argparse rejected.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// Its stdout, if it succeeded; else an error with its stderr.
    pub fn ok(self) -> anyhow::Result<String> {
        ensure!(
            self.success(),
            "`openstack {}` failed (exit {}): {}",
            self.command,
            self.status,
            self.stderr.trim()
        );
        Ok(self.stdout)
    }

    /// Its stdout parsed as JSON, if it succeeded.
    pub fn json(self) -> anyhow::Result<serde_json::Value> {
        let command = self.command.clone();
        let stdout = self.ok()?;
        serde_json::from_str(&stdout)
            .with_context(|| format!("`openstack {command}` printed no JSON: {stdout}"))
    }
}

enum Auth {
    /// `--os-auth-type none`: the CLI sends `X-Auth-Token: notused`.
    None,
    /// `--os-auth-type admin_token`: the CLI sends `X-Auth-Token: TOKEN`.
    Token(String),
}

/// The `openstack` CLI, set up for one endpoint.
pub struct Cli {
    openstack: PathBuf,
    endpoint: String,
    auth: Auth,
    proxy: String,
    /// The network namespace it runs in, if not this one.
    netns: Option<String>,
    /// HOME and working directory of every run, with the empty
    /// configuration files and the batch script.
    home: tempfile::TempDir,
}

/// Runs each line of stdin, a JSON array of arguments, as the `openstack`
/// command would, in this one process, and prints a JSON line per command:
/// its exit status, stdout and stderr. A command reads no stdin.
const BATCH_SCRIPT: &str = r#"import contextlib, io, json, logging, sys
from openstackclient.shell import main

sys.argv[0] = "openstack"
results, commands = sys.stdout, sys.stdin
for line in commands:
    argv = json.loads(line)
    out, err = io.StringIO(), io.StringIO()
    # Each run adds a handler to the root logger: keep them from piling up.
    handlers = list(logging.getLogger().handlers)
    sys.stdin = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
    logging.getLogger().handlers = handlers
    results.write(json.dumps({"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
    results.flush()
"#;

/// `timeout`'s exit status when it had to kill the command (`-s KILL`).
const KILLED: i32 = 128 + 9;

impl Cli {
    /// The CLI without authentication (`--os-auth-type none --os-endpoint
    /// ENDPOINT`). `endpoint` is the API's root, such as
    /// `http://127.0.0.1:9696/v2.0`; a trailing `/` is dropped (with a
    /// token, the CLI would ask for `/v2.0/v2.0/networks`).
    pub fn new(endpoint: &str) -> anyhow::Result<Cli> {
        Cli::make(endpoint, Auth::None)
    }

    /// The CLI sending `token` in `X-Auth-Token` (keystoneauth's
    /// `admin_token` plugin: a fixed token and endpoint, no Keystone; the
    /// token is passed as `OS_TOKEN`, out of the process list).
    pub fn with_token(endpoint: &str, token: &str) -> anyhow::Result<Cli> {
        Cli::make(endpoint, Auth::Token(token.to_string()))
    }

    fn make(endpoint: &str, auth: Auth) -> anyhow::Result<Cli> {
        let openstack = venv_dir().join("bin/openstack");
        ensure!(
            openstack.exists(),
            "{} is missing: run `cargo xtask setup`",
            openstack.display()
        );
        endpoint_host(endpoint)?;
        let home = tempfile::Builder::new()
            .prefix("alcor-openstack-")
            .tempdir()?;
        for file in ["clouds.yaml", "secure.yaml"] {
            std::fs::write(home.path().join(file), "clouds: {}\n")
                .with_context(|| format!("writing {file} in {}", home.path().display()))?;
        }
        Ok(Cli {
            openstack,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            auth,
            // Port 1 (tcpmux) listens nowhere.
            proxy: "http://127.0.0.1:1".to_string(),
            netns: None,
            home,
        })
    }

    /// Runs the CLI in the network namespace `name` (where the controller
    /// of a test topology listens).
    pub fn in_netns(mut self, name: &str) -> Cli {
        self.netns = Some(name.to_string());
        self
    }

    /// Sends requests for any host but the endpoint's to `proxy` (an
    /// `http://HOST:PORT` URL) instead of the closed port.
    pub fn proxy(mut self, proxy: &str) -> Cli {
        self.proxy = proxy.to_string();
        self
    }

    /// How many agents `openstack network agent list` shows alive.
    pub fn alive_agents(&self) -> anyhow::Result<usize> {
        let agents = self.json(&["network", "agent", "list"])?;
        Ok(agents
            .as_array()
            .into_iter()
            .flatten()
            .filter(|agent| agent["Alive"] == true)
            .count())
    }

    /// Runs `openstack GLOBAL-OPTIONS ARGS…`, bounded by [`LIMIT`]. A
    /// command that fails is an `Ok` with its status; only a run that could
    /// not start or finish is an error.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        let command = args.join(" ");
        let output = self
            .command(LIMIT, &self.openstack)?
            .args(self.global_options())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `openstack {command}`"))?;
        let status = exit_status(&command, output.status)?;
        Ok(CliOutput {
            command,
            status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `ARGS… -f json`, which must succeed, and parses what it prints.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut args = args.to_vec();
        args.extend(["-f", "json"]);
        self.run(&args)?.json()
    }

    /// Runs several commands in one Python process, through the CLI's own
    /// entry point (`openstackclient.shell.main`): each `openstack` process
    /// spends most of its second importing Python modules, a batch ~60 ms
    /// per command after the first. The requests are
    /// the same but for version discovery (`GET` of the endpoint with
    /// `--os-auth-type none`), which happens once per process. Bounded by
    /// [`LIMIT`] per command.
    pub fn batch(&self, commands: &[&[&str]]) -> anyhow::Result<Vec<CliOutput>> {
        let script = self.home.path().join("batch.py");
        std::fs::write(&script, BATCH_SCRIPT).context("writing batch.py")?;
        let python = self.openstack.with_file_name("python3");
        let limit = LIMIT * u32::try_from(commands.len().max(1)).unwrap_or(u32::MAX);
        let mut input = String::new();
        for args in commands {
            let mut argv = self.global_options();
            argv.extend(args.iter().map(|a| a.to_string()));
            input.push_str(&serde_json::to_string(&argv)?);
            input.push('\n');
        }
        let mut child = self
            .command(limit, &python)?
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the batch of openstack commands")?;
        // The script reads every line before it ends: a pipe's buffer would
        // not hold all of a long batch, hence a writer beside the reader.
        let mut stdin = child.stdin.take().context("batch stdin")?;
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child
            .wait_with_output()
            .context("waiting for the batch of openstack commands")?;
        let written = writer
            .join()
            .map_err(|_| anyhow::anyhow!("batch writer panicked"));
        let status = exit_status("(batch)", output.status)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(status == 0, "the batch failed (exit {status}): {stderr}");
        written?.context("writing the batch's commands")?;
        let results: Vec<CliOutput> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .zip(commands)
            .map(|(line, args)| {
                let result: serde_json::Value = serde_json::from_str(line)
                    .with_context(|| format!("batch result is no JSON: {line}"))?;
                let text = |key: &str| result[key].as_str().unwrap_or_default().to_string();
                Ok(CliOutput {
                    command: args.join(" "),
                    status: result["status"]
                        .as_i64()
                        .and_then(|s| i32::try_from(s).ok())
                        .with_context(|| format!("batch result has no status: {line}"))?,
                    stdout: text("stdout"),
                    stderr: text("stderr"),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        ensure!(
            results.len() == commands.len(),
            "the batch ran {} of {} commands: {stderr}",
            results.len(),
            commands.len()
        );
        Ok(results)
    }

    fn global_options(&self) -> Vec<String> {
        let auth_type = match self.auth {
            Auth::None => "none",
            Auth::Token(_) => "admin_token",
        };
        ["--os-auth-type", auth_type, "--os-endpoint", &self.endpoint]
            .map(String::from)
            .to_vec()
    }

    /// `timeout -s KILL LIMIT PROGRAM` in a clean environment.
    fn command(&self, limit: Duration, program: &Path) -> anyhow::Result<Command> {
        let home = self.home.path();
        let mut command = Command::new("timeout");
        command.args(["-s", "KILL", &limit.as_secs().max(1).to_string()]);
        if let Some(netns) = &self.netns {
            command.args(["/usr/bin/ip", "netns", "exec", netns]);
        }
        command
            .arg(program)
            .env_clear()
            .current_dir(home)
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CONFIG_DIRS", home.join(".config-dirs"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("OS_CLIENT_CONFIG_FILE", home.join("clouds.yaml"))
            .env("OS_CLIENT_SECURE_FILE", home.join("secure.yaml"))
            .env("PYTHONUTF8", "1")
            .env("NO_PROXY", endpoint_host(&self.endpoint)?)
            .env("HTTP_PROXY", &self.proxy)
            .env("HTTPS_PROXY", &self.proxy);
        if let Auth::Token(token) = &self.auth {
            command.env("OS_TOKEN", token);
        }
        Ok(command)
    }
}

/// The host of an `http://HOST:PORT/…` URL, brackets of IPv6 removed.
fn endpoint_host(endpoint: &str) -> anyhow::Result<&str> {
    let authority = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("endpoint {endpoint:?} is no http(s):// URL"))?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    ensure!(!host.is_empty(), "endpoint {endpoint:?} has no host");
    Ok(host)
}

fn exit_status(command: &str, status: std::process::ExitStatus) -> anyhow::Result<i32> {
    match status.code() {
        Some(KILLED) => {
            bail!("`openstack {command}` was killed: it ran out of time ({LIMIT:?} per command)")
        }
        Some(code) => Ok(code),
        None => bail!("`openstack {command}` ended by a signal ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_host;

    #[test]
    fn endpoint_hosts() {
        assert_eq!(
            endpoint_host("http://127.0.0.1:9696/v2.0").unwrap(),
            "127.0.0.1"
        );
        assert_eq!(endpoint_host("https://ctl/v2.0").unwrap(), "ctl");
        assert_eq!(endpoint_host("http://[::1]:9696/v2.0").unwrap(), "::1");
        assert!(endpoint_host("127.0.0.1:9696").is_err());
        assert!(endpoint_host("http://:9696/").is_err());
    }
}
