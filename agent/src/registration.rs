//! The agent's link to the controller (`--controller`): it registers and
//! renews with `AgentRegistry.Heartbeat`, and asks for this host's whole
//! state (`GoalStateProvisioner.RequestGoalStates`, AGENT_RESTARTED) at
//! start and whenever the link may have lost it; the controller then pushes
//! that state over the agent's own goal-state service.
//!
//! The link never holds up the agent: it starts after everything else,
//! every call has a deadline, and a controller that cannot be reached only
//! costs a warning per outage and retries with backoff. With several
//! controller instances (`--controller A,B`), a failed call moves the link
//! to the next one: any instance takes heartbeats and state requests, and
//! the one that serves this agent pushes. [`Link`] decides (when to ask for
//! the state, how long to wait, which instance to call) without any I/O;
//! [`run`] does the calls.

use std::{
    fs,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use alcor_proto::{
    registry::{AgentHeartbeat, agent_registry_client::AgentRegistryClient},
    schema::{
        HostRequest, OperationStatus, RequestType,
        goal_state_provisioner_client::GoalStateProvisionerClient,
        host_request::ResourceStateRequest,
    },
};
use anyhow::Context;
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::{
    config::{Config, ControllerLink},
    core::status::{PortPhase, SharedState},
    metrics::{Metrics, ResultLabels},
};

/// Every call's deadline, connecting included.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat interval when the controller does not say (0).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The controller's interval is kept within these bounds, so that a
/// mistaken reply neither floods it nor makes the agent look dead.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Retry delays after a failure: doubling from the first to the last.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
pub const MAX_RETRY: Duration = Duration::from_secs(10);

/// The link's decisions, as a state machine fed with the outcome of each
/// call.
#[derive(Debug)]
pub struct Link {
    /// No heartbeat has been answered since the agent started.
    starting: bool,
    /// The whole state is to be asked for after the next answered heartbeat.
    want_state: bool,
    /// The connection the last answered heartbeat went over.
    connection: Option<u64>,
    /// Failed calls since the link was last whole (heartbeat answered and
    /// the state asked for if needed).
    failures: u32,
    interval: Duration,
    /// How many controller instances there are, and which one is called.
    controllers: usize,
    controller: usize,
}

/// What to do after an answered heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub struct Answered {
    /// Ask for the whole state now.
    pub ask_state: bool,
    /// The link is whole again after failures (nothing more to do).
    pub recovered: bool,
}

/// What to do after a failed call.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    /// Try again after this long.
    pub retry_in: Duration,
    /// The first failure of an outage: the one to log as a warning.
    pub new_outage: bool,
}

impl Default for Link {
    fn default() -> Self {
        Link::new()
    }
}

impl Link {
    /// A link to one controller.
    pub fn new() -> Link {
        Link::with_controllers(1)
    }

    /// A link to `count` controller instances, starting with the first.
    pub fn with_controllers(count: usize) -> Link {
        Link {
            starting: true,
            want_state: true,
            connection: None,
            failures: 0,
            interval: DEFAULT_INTERVAL,
            controllers: count.max(1),
            controller: 0,
        }
    }

    /// Which controller instance to call (an index into `--controller`).
    pub fn controller(&self) -> usize {
        self.controller
    }

    /// The next heartbeat's `started`: true until one is answered, so that
    /// the controller hears it even if the first tries fail.
    pub fn started(&self) -> bool {
        self.starting
    }

    /// How long to wait after the link is whole.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A heartbeat was answered over `connection` (each new connection to
    /// the controller has a new number): a new connection may be a new
    /// controller, or one restarted between two heartbeats, that has
    /// forgotten what it pushed, so the state is asked for again.
    pub fn heartbeat_answered(&mut self, interval_ms: u32, connection: u64) -> Answered {
        self.starting = false;
        self.interval = match interval_ms {
            0 => DEFAULT_INTERVAL,
            ms => Duration::from_millis(ms.into()).clamp(MIN_INTERVAL, MAX_INTERVAL),
        };
        if self.connection != Some(connection) {
            self.want_state = true;
        }
        self.connection = Some(connection);
        if self.want_state {
            return Answered {
                ask_state: true,
                recovered: false,
            };
        }
        Answered {
            ask_state: false,
            recovered: std::mem::take(&mut self.failures) > 0,
        }
    }

    /// The controller accepted the request for the whole state; true if
    /// that ends an outage.
    pub fn state_requested(&mut self) -> bool {
        self.want_state = false;
        std::mem::take(&mut self.failures) > 0
    }

    /// A heartbeat failed: the state is asked for again once the link is
    /// back, since a push may have been lost meanwhile; the next try goes
    /// to the next controller instance (another may answer where this one
    /// died).
    pub fn failed(&mut self) -> Failed {
        self.want_state = true;
        self.failures = self.failures.saturating_add(1);
        self.controller = (self.controller + 1) % self.controllers;
        Failed {
            retry_in: backoff(self.failures),
            new_outage: self.failures == 1,
        }
    }

    /// The heartbeat was answered but the state request failed: tried again
    /// with the next heartbeat, no later than the interval, so that the
    /// controller keeps hearing from the agent while it refuses.
    pub fn state_request_failed(&mut self) -> Failed {
        let failed = self.failed();
        Failed {
            retry_in: failed.retry_in.min(self.interval),
            ..failed
        }
    }
}

/// The delay after `failures` consecutive failures (1 or more).
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_RETRY * 2u32.pow(doublings)).min(MAX_RETRY)
}

/// What `agentctl status` shows of the link.
#[derive(Clone, Debug, Default)]
pub struct LinkStatus {
    pub url: String,
    pub host_id: String,
    pub goal_state_endpoint: String,
    pub registered: bool,
    pub last_heartbeat: Option<SystemTime>,
    pub last_error: Option<(SystemTime, String)>,
    pub heartbeats_ok: u64,
    pub heartbeats_failed: u64,
    pub state_requests: u64,
}

pub type SharedLinkStatus = Arc<Mutex<LinkStatus>>;

/// What the link needs, prepared at start (files read, endpoints derived).
pub struct Registration {
    link: ControllerLink,
    /// One per controller instance, in `--controller`'s order.
    endpoints: Vec<Endpoint>,
    goal_state_endpoint: String,
    underlay_ip: String,
    underlay_mac: String,
}

impl Registration {
    /// Prepares the link `config` asks for, if any; `None` without
    /// `--controller`. Fails only on unreadable TLS material.
    pub fn prepare(config: &Config, state: &SharedState) -> anyhow::Result<Option<Registration>> {
        let Some(link) = config.controller.clone() else {
            return Ok(None);
        };
        let underlay = lock(state).underlay;
        let goal_state_endpoint = config.goal_state_endpoint(underlay.map(|u| u.ip)).context(
            "no address to advertise the goal-state service at: give --advertise-endpoint",
        )?;
        let tls = if link.tls() {
            // Checked at load: https comes with TLS material.
            let tls = config
                .tls
                .as_ref()
                .context("--controller is https but no TLS material is configured")?;
            let read =
                |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
            Some(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(read(&tls.client_ca)?))
                    .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?)),
            )
        } else {
            None
        };
        let mut endpoints = Vec::new();
        for url in &link.urls {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .with_context(|| format!("--controller {url}"))?
                .connect_timeout(RPC_TIMEOUT)
                .timeout(RPC_TIMEOUT);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .context("TLS configuration for the controller")?;
            }
            endpoints.push(endpoint);
        }
        Ok(Some(Registration {
            link,
            endpoints,
            goal_state_endpoint,
            underlay_ip: underlay.map(|u| u.ip.to_string()).unwrap_or_default(),
            underlay_mac: underlay.map(|u| u.mac.to_string()).unwrap_or_default(),
        }))
    }

    /// The status `agentctl` shows, before the first heartbeat.
    pub fn status(&self) -> SharedLinkStatus {
        Arc::new(Mutex::new(LinkStatus {
            url: self.link.urls[0].clone(),
            host_id: self.link.host_id.clone(),
            goal_state_endpoint: self.goal_state_endpoint.clone(),
            ..LinkStatus::default()
        }))
    }
}

fn lock<T>(mutex: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    mutex
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn status_of(status: &SharedLinkStatus) -> std::sync::MutexGuard<'_, LinkStatus> {
    status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One channel to the controller, counting the TCP connections it makes.
fn channel(endpoint: &Endpoint, connections: Arc<AtomicU64>) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
        let connections = connections.clone();
        async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("the controller URL has no host"))?;
            // An IPv6 literal comes bracketed.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            connections.fetch_add(1, Ordering::Relaxed);
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    }))
}

/// A call's outcome, its deadline applied whatever the transport does.
async fn deadline<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(RPC_TIMEOUT, call).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(status_words(&status)),
        Err(_) => Err(format!("no answer within {RPC_TIMEOUT:?}")),
    }
}

/// A gRPC failure in words, with the causes the message does not already
/// say (a transport failure's message is often its innermost cause's).
fn status_words(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut words = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !words.contains(&text) {
            words.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    words
}

/// The controller's two services over one channel.
struct Clients {
    registry: AgentRegistryClient<Channel>,
    provisioner: GoalStateProvisionerClient<Channel>,
}

impl Clients {
    fn new(endpoint: &Endpoint, connections: &Arc<AtomicU64>) -> Clients {
        let channel = channel(endpoint, connections.clone());
        Clients {
            registry: AgentRegistryClient::new(channel.clone()),
            provisioner: GoalStateProvisionerClient::new(channel),
        }
    }
}

/// A call that failed: which, and why.
enum Failure {
    Heartbeat(String),
    StateRequest(String),
}

/// The link's loop: everything it keeps between calls.
struct Runner {
    registration: Registration,
    state: SharedState,
    metrics: Arc<Metrics>,
    status: SharedLinkStatus,
    link: Link,
    connections: Arc<AtomicU64>,
    clients: Clients,
    requests: u64,
}

/// Runs the link until the agent stops.
pub async fn run(
    registration: Registration,
    state: SharedState,
    metrics: Arc<Metrics>,
    status: SharedLinkStatus,
) {
    let connections = Arc::new(AtomicU64::new(0));
    let link = Link::with_controllers(registration.endpoints.len());
    let clients = Clients::new(&registration.endpoints[link.controller()], &connections);
    let mut runner = Runner {
        registration,
        state,
        metrics,
        status,
        link,
        connections,
        clients,
        requests: 0,
    };
    let link = &runner.registration.link;
    tracing::info!(
        controller = link.urls(),
        host_id = link.host_id,
        goal_state_endpoint = runner.registration.goal_state_endpoint,
        "registering with the controller"
    );
    loop {
        let wait = runner.step().await;
        tokio::time::sleep(wait).await;
    }
}

impl Runner {
    /// The controller instance the link calls now.
    fn controller_url(&self) -> &str {
        &self.registration.link.urls[self.link.controller()]
    }

    /// One heartbeat, and the state request if it is due; returns how long
    /// to wait before the next.
    async fn step(&mut self) -> Duration {
        let failure = match self.heartbeat().await {
            Ok(true) => match self.request_state().await {
                Ok(()) => return self.link.interval(),
                Err(error) => error,
            },
            Ok(false) => return self.link.interval(),
            Err(error) => error,
        };
        let (error, failed) = match failure {
            Failure::Heartbeat(error) => (format!("heartbeat: {error}"), self.link.failed()),
            Failure::StateRequest(error) => (
                format!("asking for the whole state (RequestGoalStates): {error}"),
                self.link.state_request_failed(),
            ),
        };
        status_of(&self.status).last_error = Some((SystemTime::now(), error.clone()));
        let controller = self.controller_url().to_string();
        // A connection that failed a call may be half-open (a controller
        // gone without a word): the next try connects afresh, to the next
        // controller instance if there are several.
        self.clients = Clients::new(
            &self.registration.endpoints[self.link.controller()],
            &self.connections,
        );
        status_of(&self.status).url = self.controller_url().to_string();
        if failed.new_outage {
            tracing::warn!(
                controller,
                error,
                "the controller cannot be reached; the agent goes on alone and keeps trying \
                 (the next instance first, if --controller lists several; warned once per \
                 outage)"
            );
        } else {
            tracing::debug!(error, retry_in = ?failed.retry_in, "the controller still fails");
        }
        failed.retry_in
    }

    /// Sends a heartbeat; true if the whole state is to be asked for now.
    async fn heartbeat(&mut self) -> Result<bool, Failure> {
        let (ports, ports_ready) = {
            let state = lock(&self.state);
            let ready = state
                .ports
                .values()
                .filter(|port| port.phase == PortPhase::Ready)
                .count();
            (state.desired.ports.len(), ready)
        };
        let registration = &self.registration;
        let heartbeat = AgentHeartbeat {
            host_id: registration.link.host_id.clone(),
            underlay_ip: registration.underlay_ip.clone(),
            underlay_mac: registration.underlay_mac.clone(),
            goal_state_endpoint: registration.goal_state_endpoint.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            started: self.link.started(),
            ports: u32::try_from(ports).unwrap_or(u32::MAX),
            ports_ready: u32::try_from(ports_ready).unwrap_or(u32::MAX),
        };
        let started = heartbeat.started;
        let reply = deadline(self.clients.registry.heartbeat(heartbeat)).await;
        let result = if reply.is_ok() { "ok" } else { "failed" };
        self.metrics
            .controller_heartbeats
            .get_or_create(&ResultLabels { result })
            .inc();
        self.metrics
            .controller_registered
            .set(i64::from(reply.is_ok()));
        let mut status = status_of(&self.status);
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                status.registered = false;
                status.heartbeats_failed += 1;
                return Err(Failure::Heartbeat(error));
            }
        };
        status.registered = true;
        status.last_heartbeat = Some(SystemTime::now());
        status.heartbeats_ok += 1;
        tracing::debug!(started, "heartbeat answered");
        let answered = self.link.heartbeat_answered(
            reply.heartbeat_interval_ms,
            self.connections.load(Ordering::Relaxed),
        );
        if answered.recovered {
            tracing::info!(
                controller = self.controller_url(),
                "the controller answers again"
            );
        }
        Ok(answered.ask_state)
    }

    async fn request_state(&mut self) -> Result<(), Failure> {
        self.requests += 1;
        let host_id = &self.registration.link.host_id;
        let request_id = format!("{host_id}-restarted-{}", self.requests);
        let outcome = request_state(&mut self.clients.provisioner, host_id, &request_id).await;
        let result = if outcome.is_ok() { "ok" } else { "failed" };
        self.metrics
            .controller_state_requests
            .get_or_create(&ResultLabels { result })
            .inc();
        outcome.map_err(Failure::StateRequest)?;
        status_of(&self.status).state_requests += 1;
        let recovered = self.link.state_requested();
        tracing::info!(
            controller = self.controller_url(),
            request_id,
            recovered,
            "registered; the controller is asked for this host's whole state"
        );
        Ok(())
    }
}

/// Asks for this host's whole state; the controller pushes it over the
/// agent's goal-state service. Accepted unless the call fails or the reply
/// gives the request a status other than SUCCESS or PENDING.
async fn request_state(
    client: &mut GoalStateProvisionerClient<Channel>,
    host_id: &str,
    request_id: &str,
) -> Result<(), String> {
    let request = HostRequest {
        format_version: 1,
        state_requests: vec![ResourceStateRequest {
            request_type: RequestType::AgentRestarted as i32,
            request_id: request_id.to_string(),
            ..Default::default()
        }],
        host_id: host_id.to_string(),
    };
    let reply = deadline(client.request_goal_states(request)).await?;
    for status in &reply.operation_statuses {
        let accepted = [OperationStatus::Success, OperationStatus::Pending]
            .map(|s| s as i32)
            .contains(&status.operation_status);
        if !accepted {
            let word = OperationStatus::try_from(status.operation_status).map_or_else(
                |_| status.operation_status.to_string(),
                |s| s.as_str_name().into(),
            );
            return Err(format!(
                "the controller answered {word} to {}",
                status.request_id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_asked_for_after_the_first_answer() {
        let mut link = Link::new();
        assert!(link.started());
        let answered = link.heartbeat_answered(0, 1);
        assert_eq!(
            answered,
            Answered {
                ask_state: true,
                recovered: false
            }
        );
        assert!(!link.started());
        assert!(!link.state_requested());
        // Then only heartbeats, at the controller's pace.
        for _ in 0..3 {
            assert_eq!(
                link.heartbeat_answered(2_000, 1),
                Answered {
                    ask_state: false,
                    recovered: false
                }
            );
            assert_eq!(link.interval(), Duration::from_secs(2));
        }
    }

    #[test]
    fn started_stays_until_a_heartbeat_is_answered() {
        let mut link = Link::new();
        link.failed();
        link.failed();
        assert!(link.started());
        link.heartbeat_answered(0, 1);
        assert!(!link.started());
        // A later outage is not a restart.
        link.state_requested();
        link.failed();
        assert!(!link.started());
    }

    #[test]
    fn the_state_is_asked_for_again_after_an_outage_and_warned_once() {
        let mut link = Link::new();
        link.heartbeat_answered(0, 1);
        link.state_requested();
        let outage: Vec<Failed> = (0..3).map(|_| link.failed()).collect();
        assert_eq!(
            outage.iter().map(|f| f.new_outage).collect::<Vec<_>>(),
            [true, false, false]
        );
        // The same connection answers again (the controller was only slow):
        // still asked, since a failure may have lost a push.
        let answered = link.heartbeat_answered(0, 1);
        assert!(answered.ask_state);
        assert!(!answered.recovered);
        assert!(link.state_requested(), "the outage ends with the request");
        assert!(!link.heartbeat_answered(0, 1).ask_state);
        assert!(link.failed().new_outage, "a new outage warns again");
    }

    #[test]
    fn a_failed_state_request_is_retried_at_the_heartbeat_pace() {
        let mut link = Link::new();
        assert!(link.heartbeat_answered(1_000, 1).ask_state);
        let first = link.state_request_failed();
        assert!(first.new_outage);
        assert_eq!(first.retry_in, FIRST_RETRY);
        let mut retries = vec![];
        for _ in 0..5 {
            assert!(link.heartbeat_answered(1_000, 1).ask_state);
            let again = link.state_request_failed();
            assert!(!again.new_outage, "one warning for the whole outage");
            retries.push(again.retry_in);
        }
        // Backing off, but never past the interval: heartbeats go on.
        assert_eq!(retries, [Duration::from_secs(1); 5]);
        assert!(link.heartbeat_answered(1_000, 1).ask_state);
        assert!(link.state_requested());
        assert!(!link.heartbeat_answered(1_000, 1).ask_state);
    }

    #[test]
    fn a_new_connection_asks_for_the_state_again() {
        let mut link = Link::new();
        link.heartbeat_answered(0, 1);
        link.state_requested();
        // The controller restarted between two heartbeats: no call failed,
        // but the channel had to connect again.
        let answered = link.heartbeat_answered(0, 2);
        assert!(answered.ask_state);
        assert!(!link.state_requested(), "no outage to end");
        assert!(!link.heartbeat_answered(0, 2).ask_state);
    }

    #[test]
    fn a_failed_call_moves_to_the_next_controller_instance() {
        let mut link = Link::with_controllers(3);
        assert_eq!(link.controller(), 0);
        link.heartbeat_answered(0, 1);
        link.state_requested();
        assert_eq!(link.controller(), 0, "an answering instance is kept");
        let tried: Vec<usize> = (0..4)
            .map(|_| {
                link.failed();
                link.controller()
            })
            .collect();
        assert_eq!(tried, [1, 2, 0, 1], "round the list");
        // Another instance answers: a new connection, so the whole state
        // is asked for there.
        assert!(link.heartbeat_answered(0, 2).ask_state);
        assert_eq!(link.controller(), 1);
        link.state_request_failed();
        assert_eq!(link.controller(), 2, "a refused state request moves on too");
        // One instance: always that one.
        let mut alone = Link::new();
        alone.failed();
        assert_eq!(alone.controller(), 0);
    }

    #[test]
    fn the_interval_is_the_controllers_within_bounds() {
        let mut link = Link::new();
        assert_eq!(link.interval(), DEFAULT_INTERVAL);
        for (ms, expected) in [
            (0, DEFAULT_INTERVAL),
            (1, MIN_INTERVAL),
            (999, MIN_INTERVAL),
            (3_000, Duration::from_secs(3)),
            (60_000, MAX_INTERVAL),
            (u32::MAX, MAX_INTERVAL),
        ] {
            link.heartbeat_answered(ms, 1);
            assert_eq!(link.interval(), expected, "{ms} ms");
        }
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_ten() {
        let delays: Vec<u64> = (1..=8).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(
            delays,
            [500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
        let mut link = Link::new();
        let retries: Vec<Duration> = (0..3).map(|_| link.failed().retry_in).collect();
        assert_eq!(retries, [backoff(1), backoff(2), backoff(3)]);
        // A whole link starts the count again.
        link.heartbeat_answered(0, 1);
        link.state_requested();
        assert_eq!(link.failed().retry_in, FIRST_RETRY);
    }
}
