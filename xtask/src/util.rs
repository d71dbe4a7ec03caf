//! Paths, commands, and cleanup shared by the subcommands.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use alcor_tests::topology::{NetnsSet, namespaces_with_prefix};
use anyhow::{Context, bail};

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo` (the one that runs xtask), in the workspace root.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// Runs a command with inherited output; fails on a non-zero exit.
pub fn run_status(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Builds `alcor-agent` (`release` or debug) and points the harness at the
/// target directory through `ALCOR_BIN_DIR`.
pub fn build_agent(release: bool) -> anyhow::Result<PathBuf> {
    run_status(cargo_build(release, "alcor-agent").args(["--bin", "alcor-agent"]))?;
    let dir = target_dir().join(if release { "release" } else { "debug" });
    // SAFETY: xtask sets this before it starts any other thread (the tokio
    // runtime starts afterwards).
    unsafe { std::env::set_var("ALCOR_BIN_DIR", &dir) };
    Ok(dir)
}

/// Builds binary `bin` of workspace package `package` (e.g. `agentctl` of
/// `alcor-agentctl`) into the same directory as the agent if it can be
/// built; says why not otherwise.
pub fn try_build(release: bool, package: &str, bin: &str) -> Result<(), String> {
    let output = cargo_build(release, package)
        .args(["--bin", bin])
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(stderr
        .lines()
        .find(|line| line.starts_with("error"))
        .unwrap_or("build failed")
        .to_string())
}

fn cargo_build(release: bool, package: &str) -> Command {
    let mut command = cargo();
    command.args(["build", "--quiet", "-p", package]);
    if release {
        command.arg("--release");
    }
    command
}

/// A namespace prefix for this run: `<tag><pid>`, so that a later run can
/// tell leftovers of a killed run (whose pid is gone) from a live one's.
pub fn run_prefix(tag: &str) -> String {
    format!("{tag}{}", std::process::id())
}

/// Deletes namespaces (and the agents' pin directories) left by runs of
/// `tag` whose process no longer exists, e.g. after a SIGKILL.
pub fn sweep_leftovers(tag: &str) -> anyhow::Result<()> {
    let stale: Vec<String> = namespaces_with_prefix(tag)?
        .into_iter()
        .filter(|name| {
            let digits: String = name[tag.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            !digits.is_empty() && !Path::new("/proc").join(&digits).exists()
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    println!(
        "removing {} namespaces left by an earlier, killed run",
        stale.len()
    );
    for name in &stale {
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/alcor-test-{name}"));
    }
    drop(NetnsSet::adopt(stale));
    Ok(())
}
