//! `cargo xtask test`: everything CI checks, in order, with a summary of
//! which step failed and how long each took.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use alcor_tests::topology::{NetnsSet, namespaces_with_prefix};
use anyhow::bail;

use crate::{
    setup,
    util::{cargo, run_status},
};

struct Step {
    name: &'static str,
    /// Later steps are pointless if this one fails.
    required: bool,
    run: fn() -> anyhow::Result<()>,
}

const STEPS: &[Step] = &[
    Step {
        name: "setup",
        required: true,
        run: setup::run,
    },
    Step {
        name: "fmt",
        required: false,
        run: || run_status(cargo().args(["fmt", "--all", "--", "--check"])),
    },
    Step {
        name: "clippy",
        required: false,
        run: || {
            run_status(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        },
    },
    Step {
        name: "modules",
        required: false,
        run: crate::modules::run,
    },
    Step {
        name: "build",
        required: true,
        run: || run_status(cargo().args(["build", "--workspace", "--bins"])),
    },
    Step {
        name: "test",
        required: false,
        run: || run_status(cargo().args(["test", "--workspace"])),
    },
];

pub fn run() -> anyhow::Result<()> {
    let before = leftovers_snapshot();
    let started = Instant::now();
    let mut results: Vec<(&str, Duration, Result<(), String>)> = Vec::new();
    for step in STEPS {
        println!("\n==> xtask test: {}", step.name);
        let began = Instant::now();
        let result = (step.run)().map_err(|e| format!("{e:#}"));
        let failed = result.is_err();
        if let Err(error) = &result {
            eprintln!("==> step {} FAILED: {error}", step.name);
        }
        results.push((step.name, began.elapsed(), result));
        if failed && step.required {
            break;
        }
    }
    results.push(("no leftovers", Duration::ZERO, check_leftovers(&before)));

    println!(
        "\n==> xtask test summary ({:.0?} in all)",
        started.elapsed()
    );
    for (name, took, result) in &results {
        match result {
            Ok(()) => println!("  ok      {name:<14} {took:>8.1?}"),
            Err(error) => println!("  FAILED  {name:<14} {took:>8.1?}  {error}"),
        }
    }
    let skipped: Vec<&str> = STEPS[results.len() - 1..].iter().map(|s| s.name).collect();
    if !skipped.is_empty() {
        println!("  skipped {}", skipped.join(", "));
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, _, result)| result.is_err())
        .map(|(name, _, _)| *name)
        .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Namespaces, and pin directories of test agents, that exist now.
fn leftovers_snapshot() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = namespaces_with_prefix("")
        .unwrap_or_default()
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
    if let Ok(pins) = std::fs::read_dir("/sys/fs/bpf") {
        names.extend(
            pins.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("alcor-test-"))
                .map(|n| format!("pins /sys/fs/bpf/{n}")),
        );
    }
    names
}

/// Fails if the tests left namespaces or pins behind, in CI (a fresh machine
/// nobody else uses), after removing them. Elsewhere they may belong to a
/// concurrent run of somebody else's, and are only listed.
fn check_leftovers(before: &BTreeSet<String>) -> Result<(), String> {
    let new: Vec<String> = leftovers_snapshot().difference(before).cloned().collect();
    if new.is_empty() {
        return Ok(());
    }
    let listed = new.join(", ");
    if std::env::var_os("CI").is_some() {
        let namespaces = new
            .iter()
            .filter_map(|n| n.strip_prefix("netns "))
            .map(str::to_string)
            .collect();
        drop(NetnsSet::adopt(namespaces));
        for pins in new.iter().filter_map(|n| n.strip_prefix("pins ")) {
            let _ = std::fs::remove_dir_all(pins);
        }
        return Err(format!("left behind (now removed): {listed}"));
    }
    println!(
        "warning: appeared during the run and are still there (this run's, or a concurrent \
         run's): {listed}"
    );
    Ok(())
}
