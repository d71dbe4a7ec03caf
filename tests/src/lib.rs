//! Test harness: topologies of network namespaces, agents running inside
//! them, gRPC clients that connect from inside a namespace, and the real
//! `openstack` CLI.
//!
//! Network safety: nothing is configured in the root namespace; every
//! namespace name starts with a per-test unique prefix and is deleted when
//! its guard drops, panics included.

pub mod agent;
pub mod cloud;
pub mod controller;
pub mod dhcp;
pub mod etcd;
/// Goal-state message builders (alcor-proto's, shared with the agent's
/// unit tests).
pub use alcor_proto::builders as goalstate;
pub mod guest;
pub mod lab;
pub mod netns;
pub mod openstack;
pub mod pki;
pub mod suite;
pub mod tap;
pub mod topology;
pub mod traffic;

use std::time::{Duration, Instant};

pub use agent::{Agent, AgentOptions};
pub use netns::Netns;

/// True when privileged tests can run. Outside CI, a non-root run skips them
/// loudly; in CI (env `CI` set) a non-root run is a failure.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must run the privileged tests as root"
    );
    eprintln!("\n*** SKIPPED {test}: needs root (network namespaces, eBPF) ***\n");
    false
}

/// Polls `check` until it returns `Some`, for at most `timeout`.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A prefix unique to this test process and call, short enough to leave
/// room in namespace and interface names.
pub fn unique_prefix(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("at{}{}{tag}", std::process::id() % 100_000, n)
}
