//! `bench api`: port creates per second through the Neutron API, each with
//! an allocated IP and MAC, from 50 concurrent clients, as the store grows:
//! to 1,000,000 ports on the embedded store and 100,000 on etcd, the rate
//! and latencies measured over a window at each size. etcd's own put rate
//! on this machine (`etcdctl check perf`) is measured in the same run: the
//! denominator of what the controller makes of it.
//!
//! The controller is the release binary (or `ALCOR_BIN_DIR`'s), on a
//! loopback port; the clients are this process, one keep-alive HTTP/1.1
//! connection each, on the same 2 cores.

use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use super::{http::Client, load_average, median, write_json};
use alcor_tests::{
    controller::{Controller, StoreKind, request},
    etcd::EtcdServer,
};
use anyhow::{Context, ensure};
use serde_json::json;

const CLIENTS: usize = 50;

/// A store's run: its sizes (ports in the store when a window starts) and
/// the window, in creates.
struct Plan {
    store: &'static str,
    sizes: &'static [u64],
    window: u64,
}

const PLANS: [Plan; 2] = [
    Plan {
        store: "embedded",
        sizes: &[1_000, 10_000, 100_000, 1_000_000],
        window: 10_000,
    },
    Plan {
        store: "etcd",
        sizes: &[1_000, 10_000, 100_000],
        window: 5_000,
    },
];

/// What one window measured.
struct Window {
    size: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    super::release_binaries("api", &[super::Binary::Controller])?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Vec::new();
    let mut etcd_puts = None;
    for plan in PLANS {
        let sizes: Vec<u64> = if quick {
            plan.sizes.iter().copied().take(2).collect()
        } else {
            plan.sizes.to_vec()
        };
        println!(
            "bench api: {} store, up to {} ports",
            plan.store,
            sizes.last().unwrap_or(&0)
        );
        let (windows, puts) = match plan.store {
            "etcd" => {
                let etcd = EtcdServer::start()?;
                let store = StoreKind::Etcd(vec![etcd.client_url()]);
                let windows = runtime.block_on(measure(store, &sizes, plan.window))?;
                // On an etcd of its own: the check's 300,000 writes leave
                // one busy compacting for a while.
                let fresh = EtcdServer::start()?;
                (windows, Some(etcd_put_rate(&fresh.client_url())?))
            }
            _ => (
                runtime.block_on(measure(StoreKind::Embedded, &sizes, plan.window))?,
                None,
            ),
        };
        etcd_puts = etcd_puts.or(puts);
        results.push((plan.store, windows));
    }
    print(&results, etcd_puts);
    let document = json!({
        "clients": CLIENTS,
        "load_average": load_average(),
        "etcd_puts_per_second": etcd_puts,
        "stores": results.iter().map(|(store, windows)| json!({
            "store": store,
            "windows": windows.iter().map(|w| json!({
                "ports": w.size, "creates_per_second": w.rate, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    write_json("api", document)
}

/// etcd's own put rate here: `etcdctl check perf --load=l` (500 clients
/// for 60 s, 1 KiB values), which prints the writes per second it got.
fn etcd_put_rate(url: &str) -> anyhow::Result<f64> {
    println!("bench api: etcdctl check perf (60 s)");
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", url, "check", "perf", "--load=l"])
        .output()
        .context("running etcdctl (Debian's etcd-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find(|line| line.contains("Throughput"))
        .and_then(|line| {
            line.split_whitespace()
                .find_map(|word| word.parse::<f64>().ok())
        })
        .with_context(|| format!("no throughput in etcdctl's report: {text}"))
}

/// Creates ports from [`CLIENTS`] clients until the store holds the last
/// size, measuring `window` creates from each size on.
async fn measure(store: StoreKind, sizes: &[u64], window: u64) -> anyhow::Result<Vec<Window>> {
    let controller = Controller::start(store, &["--log-format", "json"])?;
    let listen = controller.listen();
    let network = tokio::task::spawn_blocking(move || network(listen)).await??;
    let last = sizes.last().copied().unwrap_or(0);
    // Every create, numbered in the order it was sent: when it ended and
    // how long it took.
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let sent = sent.clone();
            let network = network.clone();
            tokio::spawn(async move {
                let mut client = Client::connect(listen).await?;
                let body = json!({"port": {"network_id": network}}).to_string();
                let mut done = Vec::new();
                loop {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= last {
                        return anyhow::Ok(done);
                    }
                    let start = Instant::now();
                    let status = client.post("/v2.0/ports", &body).await?;
                    ensure!(status == 201, "port create answered {status}");
                    done.push((n, start.elapsed(), started.elapsed()));
                }
            })
        })
        .collect();
    let mut done = Vec::new();
    for task in tasks {
        done.extend(task.await??);
    }
    let mut windows = Vec::new();
    for &size in sizes {
        // From `size` on, or the last `window` creates before the last size.
        let from = size.min(last.saturating_sub(window));
        let inside: Vec<_> = done
            .iter()
            .filter(|(n, ..)| (from..from + window).contains(n))
            .collect();
        let first = inside
            .iter()
            .map(|(_, took, at)| *at - *took)
            .min()
            .unwrap_or_default();
        let end = inside.iter().map(|(.., at)| *at).max().unwrap_or_default();
        let latencies: Vec<f64> = inside
            .iter()
            .map(|(_, took, _)| took.as_secs_f64() * 1e3)
            .collect();
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted
            .get(sorted.len() * 99 / 100)
            .copied()
            .unwrap_or(f64::NAN);
        windows.push(Window {
            size,
            rate: inside.len() as f64 / (end - first).as_secs_f64().max(1e-9),
            p50_ms: median(latencies),
            p99_ms: p99,
        });
    }
    Ok(windows)
}

/// A network with a /12: room for a million ports.
fn network(listen: SocketAddr) -> anyhow::Result<String> {
    let (status, network) = request(
        listen,
        "POST",
        "/v2.0/networks",
        Some(&json!({"network": {"name": "bench"}})),
    )?;
    ensure!(status == 201, "network create: {network}");
    let id = network["network"]["id"]
        .as_str()
        .context("a network id")?
        .to_string();
    let subnet = json!({"subnet": {"network_id": id, "cidr": "10.0.0.0/12", "ip_version": 4}});
    let (status, body) = request(listen, "POST", "/v2.0/subnets", Some(&subnet))?;
    ensure!(status == 201, "subnet create: {body}");
    Ok(id)
}

fn print(results: &[(&str, Vec<Window>)], etcd_puts: Option<f64>) {
    println!("\n| store | ports in the store | creates/s | p50 | p99 | creates / etcd puts |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (store, windows) in results {
        for window in windows {
            let ratio = match (*store, etcd_puts) {
                ("etcd", Some(puts)) => format!("{:.2}×", window.rate / puts),
                _ => "–".into(),
            };
            println!(
                "| {store} | {} | {:.0} | {:.1} ms | {:.1} ms | {ratio} |",
                window.size, window.rate, window.p50_ms, window.p99_ms
            );
        }
    }
    if let Some(puts) = etcd_puts {
        println!("\netcd's own put rate (etcdctl check perf --load=l): {puts:.0}/s");
    }
    if let Some((_, windows)) = results.iter().find(|(store, _)| *store == "embedded")
        && let (Some(first), Some(last)) = (windows.first(), windows.last())
    {
        println!(
            "embedded: {:.0}/s at {} ports, {:.0}/s at {} ({:.2}× the first; target ≥ 10,000/s, \
             ≥ 0.8×)",
            first.rate,
            first.size,
            last.rate,
            last.size,
            last.rate / first.rate
        );
    }
}
