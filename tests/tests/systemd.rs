//! Under systemd (Type=notify, WatchdogSec) the agent reports readiness once
//! it serves, and keeps feeding the watchdog.

use std::{os::unix::net::UnixDatagram, time::Duration};

use alcor_tests::{Agent, AgentOptions, Netns, privileged, unique_prefix};

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_notifies_readiness_and_feeds_the_watchdog() {
    if !privileged("the_agent_notifies_readiness_and_feeds_the_watchdog") {
        return;
    }
    let host = Netns::new(format!("{}-h", unique_prefix("sd"))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let env = vec![
        ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
        // The agent pings at half the interval: every 100 ms here.
        ("WATCHDOG_USEC".into(), "200000".into()),
    ];
    let _agent = Agent::start(
        &host,
        AgentOptions {
            env,
            ..Default::default()
        },
    )
    .await;

    let mut received = Vec::new();
    let mut buffer = [0u8; 256];
    // READY first, then watchdog pings; a few messages suffice.
    for _ in 0..3 {
        let n = socket
            .recv(&mut buffer)
            .expect("a notification within 10 s");
        received.push(String::from_utf8_lossy(&buffer[..n]).trim().to_string());
    }
    assert_eq!(received[0], "READY=1", "{received:?}");
    assert!(
        received[1..].iter().all(|m| m == "WATCHDOG=1"),
        "{received:?}"
    );
}
