//! Test binaries whose cases share one fixture (`harness = false` in
//! Cargo.toml): a topology that is slow to build (hosts, agents, VMs with
//! DHCP leases) is built once, the cases run on it one after the other in
//! the order given, a failing case is reported and the next one still runs,
//! and the fixture is torn down at the end whatever happened, panics
//! included (its guards drop).
//!
//! The command line is libtest's, as far as it applies: names filter the
//! cases (substrings; whole names with `--exact`), `--skip NAME`, `--list`;
//! other flags (`--test-threads`, `--nocapture`, ...) are accepted and
//! ignored. Output goes straight to the terminal.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    process::ExitCode,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::LocalBoxFuture};

use crate::privileged;

/// A case: it takes the fixture, fails by panicking.
pub type CaseFn<F> = for<'a> fn(&'a mut F) -> LocalBoxFuture<'a, ()>;

/// The cases of a suite from the names of their `async fn(&mut Fixture)`s:
/// `cases![first, second]` is `[("first", ...), ("second", ...)]`, ready
/// for [`run`].
#[macro_export]
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        [$((
            stringify!($case),
            (|fixture| Box::pin($case(fixture))) as $crate::suite::CaseFn<_>,
        )),*]
    };
}

/// libtest's options that take a value.
const OPTIONS_WITH_VALUE: &[&str] = &[
    "--test-threads",
    "--format",
    "--color",
    "--logfile",
    "--shuffle-seed",
    "-Z",
];

struct Selection {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    /// `--ignored`: only ignored cases, and there are none.
    ignored_only: bool,
}

impl Selection {
    fn from_args() -> Selection {
        let mut selection = Selection {
            filters: Vec::new(),
            skips: Vec::new(),
            exact: false,
            list: false,
            ignored_only: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--list" => selection.list = true,
                "--exact" => selection.exact = true,
                "--ignored" => selection.ignored_only = true,
                "--skip" => selection.skips.extend(args.next()),
                option if OPTIONS_WITH_VALUE.contains(&option) => {
                    args.next();
                }
                flag if flag.starts_with('-') => {}
                filter => selection.filters.push(filter.to_string()),
            }
        }
        selection
    }

    fn matches(&self, pattern: &str, name: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    fn selects(&self, name: &str) -> bool {
        !self.ignored_only
            && (self.filters.is_empty() || self.filters.iter().any(|f| self.matches(f, name)))
            && !self.skips.iter().any(|s| self.matches(s, name))
    }
}

/// Runs the selected `cases` of suite `suite` on the fixture `setup` makes
/// (only if some case is selected, and only as root: see
/// [`privileged`]); the exit code says whether all passed.
pub fn run<F, S>(suite: &str, setup: impl FnOnce() -> S, cases: &[(&str, CaseFn<F>)]) -> ExitCode
where
    S: Future<Output = F>,
{
    let selection = Selection::from_args();
    if selection.list {
        for (name, _) in cases.iter().filter(|(name, _)| selection.selects(name)) {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let selected: Vec<&(&str, CaseFn<F>)> = cases
        .iter()
        .filter(|(name, _)| selection.selects(name))
        .collect();
    println!("\nrunning {} tests (one {suite} fixture)", selected.len());
    if selected.is_empty() || !privileged(suite) {
        println!("\ntest result: ok. 0 passed; 0 failed\n");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let failed: Vec<&str> = runtime.block_on(async {
        let began = Instant::now();
        let Ok(mut fixture) = AssertUnwindSafe(setup()).catch_unwind().await else {
            println!("{suite} fixture ... FAILED ({})", seconds(began.elapsed()));
            return selected.iter().map(|(name, _)| *name).collect();
        };
        println!("{suite} fixture ready ({})", seconds(began.elapsed()));
        let mut failed = Vec::new();
        for (name, case) in &selected {
            println!("test {name} ...");
            let began = Instant::now();
            let outcome = AssertUnwindSafe(case(&mut fixture)).catch_unwind().await;
            let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
            println!("test {name} ... {verdict} ({})", seconds(began.elapsed()));
            if outcome.is_err() {
                failed.push(*name);
            }
        }
        let began = Instant::now();
        drop(fixture);
        println!("{suite} fixture removed ({})", seconds(began.elapsed()));
        failed
    });
    drop(runtime);
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed; finished in {}\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len(),
        seconds(started.elapsed())
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.2}s", duration.as_secs_f64())
}
