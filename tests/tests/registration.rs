//! The agent's link to its controller (`--controller`), against a stub
//! controller in a namespace of the topology that records what it hears:
//! the agent registers with its host id, underlay address and MAC and the
//! endpoint of its goal-state service, asks for its whole state
//! (AGENT_RESTARTED), heartbeats at the pace the controller asks, and asks
//! again after the controller was away and after it was itself killed.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use alcor_proto::{
    registry::{
        AgentHeartbeat, HeartbeatReply,
        agent_registry_server::{AgentRegistry, AgentRegistryServer},
    },
    schema::{
        GoalState, GoalStateOperationReply, GoalStateV2, HostRequest, HostRequestReply,
        OperationStatus, RequestType,
        goal_state_provisioner_server::{GoalStateProvisioner, GoalStateProvisionerServer},
        host_request_reply::HostRequestOperationStatus,
    },
};
use alcor_tests::{
    Agent,
    agent::json_count,
    pki::Pki,
    privileged,
    topology::{Host, Topology, UNDERLAY_DEV},
    unique_prefix, wait_for,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Certificate, Identity, Server, ServerTlsConfig},
};

/// The heartbeat interval the stub asks for, ms.
const INTERVAL_MS: u32 = 1_000;
const CONTROLLER_PORT: u16 = 9697;

#[derive(Clone, Debug)]
enum Heard {
    Heartbeat {
        heartbeat: AgentHeartbeat,
        /// A client certificate came with it (mutual TLS).
        client_cert: bool,
    },
    StateRequest(HostRequest),
}

/// What the stub heard, in order, across its restarts; and whether it
/// refuses state requests (FAILURE), as a controller that cannot serve them
/// yet would.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Heard>>>, Arc<AtomicBool>);

impl Recorder {
    fn heard(&self) -> Vec<Heard> {
        self.0.lock().unwrap().clone()
    }

    fn since(&self, mark: usize) -> Vec<Heard> {
        self.heard().split_off(mark)
    }
}

#[tonic::async_trait]
impl AgentRegistry for Recorder {
    async fn heartbeat(
        &self,
        request: Request<AgentHeartbeat>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let client_cert = request.peer_certs().is_some_and(|certs| !certs.is_empty());
        self.0.lock().unwrap().push(Heard::Heartbeat {
            heartbeat: request.into_inner(),
            client_cert,
        });
        Ok(Response::new(HeartbeatReply {
            heartbeat_interval_ms: INTERVAL_MS,
        }))
    }
}

#[tonic::async_trait]
impl GoalStateProvisioner for Recorder {
    async fn push_network_resource_states(
        &self,
        _: Request<GoalState>,
    ) -> Result<Response<GoalStateOperationReply>, Status> {
        Err(Status::unimplemented("a controller is pushed nothing"))
    }

    type PushGoalStatesStreamStream = tokio_stream::Empty<Result<GoalStateOperationReply, Status>>;

    async fn push_goal_states_stream(
        &self,
        _: Request<Streaming<GoalStateV2>>,
    ) -> Result<Response<Self::PushGoalStatesStreamStream>, Status> {
        Err(Status::unimplemented("a controller is pushed nothing"))
    }

    async fn request_goal_states(
        &self,
        request: Request<HostRequest>,
    ) -> Result<Response<HostRequestReply>, Status> {
        let request = request.into_inner();
        let status = if self.1.load(Ordering::Relaxed) {
            OperationStatus::Failure
        } else {
            OperationStatus::Success
        };
        let operation_statuses = request
            .state_requests
            .iter()
            .map(|r| HostRequestOperationStatus {
                request_id: r.request_id.clone(),
                operation_status: status as i32,
            })
            .collect();
        self.0.lock().unwrap().push(Heard::StateRequest(request));
        Ok(Response::new(HostRequestReply {
            format_version: 1,
            operation_statuses,
            total_operation_time: 0,
        }))
    }
}

/// The stub serving in a namespace until stopped.
struct Stub {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Stub {
    /// Serves `recorder` on `addr` in `host`'s namespace: the listener is
    /// bound from a thread that entered it, then served from here.
    fn start(
        host: &Host,
        addr: SocketAddr,
        recorder: Recorder,
        tls: Option<ServerTlsConfig>,
    ) -> Stub {
        let listener = host
            .netns()
            .enter(move || std::net::TcpListener::bind(addr))
            .expect("entering the controller's namespace")
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let mut server = Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).unwrap();
        }
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            server
                .add_service(AgentRegistryServer::new(recorder.clone()))
                .add_service(GoalStateProvisionerServer::new(recorder))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Stub {
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Stops listening and closes the agent's connection (graceful: an
    /// idle HTTP/2 connection gets GOAWAY and is closed).
    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the stub stops within 10 s")
            .expect("the stub's task")
            .expect("the stub's server");
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A topology with a host for the agent (`.1`) and one for the stub
/// controller (`.254`) in `198.18.N.0/24`.
fn topology(tag: &str, net: u8) -> Topology {
    let mut topology = Topology::new(&unique_prefix(tag)).unwrap();
    topology
        .add_host("h1", &format!("198.18.{net}.1/24"))
        .unwrap();
    topology
        .add_host("ctl", &format!("198.18.{net}.254/24"))
        .unwrap();
    topology
}

fn controller_addr(topology: &Topology) -> SocketAddr {
    SocketAddr::from((topology.host("ctl").underlay_ip(), CONTROLLER_PORT))
}

fn underlay_mac(host: &Host) -> String {
    let link = host.netns().link(UNDERLAY_DEV).unwrap().expect("underlay0");
    link["address"].as_str().expect("a MAC").to_string()
}

fn heartbeats(heard: &[Heard]) -> Vec<&AgentHeartbeat> {
    heard
        .iter()
        .filter_map(|h| match h {
            Heard::Heartbeat { heartbeat, .. } => Some(heartbeat),
            Heard::StateRequest(_) => None,
        })
        .collect()
}

/// The position of the first whole-state request in `heard`, checked to be
/// AGENT_RESTARTED for `host_id`.
fn state_request(heard: &[Heard], host_id: &str) -> Option<usize> {
    let index = heard
        .iter()
        .position(|h| matches!(h, Heard::StateRequest(_)))?;
    let Heard::StateRequest(request) = &heard[index] else {
        unreachable!()
    };
    assert_eq!(request.host_id, host_id, "{request:?}");
    assert_eq!(request.state_requests.len(), 1, "{request:?}");
    let asked = &request.state_requests[0];
    assert_eq!(
        asked.request_type,
        RequestType::AgentRestarted as i32,
        "{request:?}"
    );
    assert!(!asked.request_id.is_empty(), "{request:?}");
    Some(index)
}

/// Waits until the stub heard (after `mark`) a heartbeat and then a
/// whole-state request; returns them.
async fn registration_since(
    recorder: &Recorder,
    mark: usize,
    host_id: &str,
    what: &str,
) -> (AgentHeartbeat, Vec<Heard>) {
    wait_for(what, Duration::from_secs(30), async || {
        let heard = recorder.since(mark);
        let index = state_request(&heard, host_id)?;
        let before = heartbeats(&heard[..index]);
        let first = (*before.first().expect("a heartbeat before the request")).clone();
        Some((first, heard))
    })
    .await
}

/// The `controller` object of `agentctl --json status`.
fn link_status(agent: &Agent) -> serde_json::Value {
    agent.agentctl_json(&["status"])["controller"].clone()
}

/// An agent on `host` that registers as `host_id` with the controller at
/// `addr`, in plain text.
async fn plaintext_agent(host: &Host, addr: SocketAddr, host_id: &str) -> Agent {
    let mut options = host.agent_options();
    options.args.extend(
        [
            "--insecure",
            "--controller",
            &format!("http://{addr}"),
            "--host-id",
            host_id,
        ]
        .map(String::from),
    );
    Agent::start(host.netns(), options).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_registers_and_asks_for_its_state_at_start_and_after_outages() {
    if !privileged("the_agent_registers_and_asks_for_its_state_at_start_and_after_outages") {
        return;
    }
    let topology = topology("reg", 40);
    let h1 = topology.host("h1");
    let addr = controller_addr(&topology);
    let recorder = Recorder::default();
    let stub = Stub::start(topology.host("ctl"), addr, recorder.clone(), None);

    let host_id = "compute-reg-1";
    let mut agent = plaintext_agent(h1, addr, host_id).await;

    // Registered as itself, then asked for its whole state.
    let (first, _) = registration_since(&recorder, 0, host_id, "the agent to register").await;
    assert_eq!(first.host_id, host_id);
    assert_eq!(first.underlay_ip, "198.18.40.1");
    assert_eq!(first.underlay_mac, underlay_mac(h1));
    assert_eq!(first.goal_state_endpoint, "http://198.18.40.1:50001");
    assert_eq!(first.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(first.started, "the first heartbeat says the agent started");
    assert_eq!((first.ports, first.ports_ready), (0, 0));

    // Then heartbeats at the stub's pace, no longer `started`, and no
    // second request while the link holds.
    let heard = wait_for("two more heartbeats", Duration::from_secs(15), async || {
        let heard = recorder.heard();
        (heartbeats(&heard).len() >= 3).then_some(heard)
    })
    .await;
    assert!(
        heartbeats(&heard)[1..].iter().all(|h| !h.started),
        "{heard:#?}"
    );
    let requests = |heard: &[Heard]| {
        heard
            .iter()
            .filter(|h| matches!(h, Heard::StateRequest(_)))
            .count()
    };
    assert_eq!(requests(&heard), 1, "{heard:#?}");

    // Visible to the operator.
    let link = link_status(&agent);
    assert_eq!(link["url"], format!("http://{addr}"));
    assert_eq!(link["host_id"], host_id);
    assert_eq!(link["goal_state_endpoint"], "http://198.18.40.1:50001");
    assert_eq!(link["registered"], true);
    assert!(json_count(&link["last_heartbeat_at"]) > 0, "{link}");
    assert_eq!(json_count(&link["state_requests"]), 1, "{link}");
    let text = String::from_utf8(agent.agentctl(&["status"]).stdout).unwrap();
    assert!(
        text.contains(&format!("http://{addr} (registered")),
        "{text}"
    );
    let metrics = agent.metrics().unwrap();
    assert!(
        metrics.contains("alcor_agent_controller_heartbeats_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("alcor_agent_controller_registered 1"),
        "{metrics}"
    );

    // The controller goes away: the agent notices, says so, warns once
    // however many tries fail, and keeps serving.
    stub.stop().await;
    let link = wait_for(
        "the agent to see the controller gone, three tries",
        Duration::from_secs(30),
        async || {
            let link = link_status(&agent);
            (link["registered"] == false && json_count(&link["heartbeats_failed"]) >= 3)
                .then_some(link)
        },
    )
    .await;
    assert!(
        link["last_error"]
            .as_str()
            .unwrap()
            .starts_with("heartbeat: "),
        "{link}"
    );
    assert!(json_count(&link["last_error_at"]) > 0, "{link}");
    let warnings = |log: &str| log.matches("the controller cannot be reached").count();
    assert_eq!(warnings(&agent.log()), 1, "{}", agent.log());
    let metrics = agent.metrics().unwrap();
    assert!(
        metrics.contains("alcor_agent_controller_heartbeats_total{result=\"failed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("alcor_agent_controller_registered 0"),
        "{metrics}"
    );
    assert!(agent.agentctl(&["ports"]).status.success());

    // Back: registered again and asked again, as the same running agent.
    let mark = recorder.heard().len();
    let stub = Stub::start(topology.host("ctl"), addr, recorder.clone(), None);
    let (again, _) =
        registration_since(&recorder, mark, host_id, "the agent to register again").await;
    assert!(!again.started, "the agent did not restart");
    assert_eq!(again.goal_state_endpoint, first.goal_state_endpoint);
    let link = wait_for(
        "the status to say registered",
        Duration::from_secs(10),
        async || {
            let link = link_status(&agent);
            (link["registered"] == true).then_some(link)
        },
    )
    .await;
    assert_eq!(json_count(&link["state_requests"]), 2, "{link}");

    // Killed and started again: `started` again, and asked again. (A
    // heartbeat the old process had in flight may still land after the
    // mark: the new process's is the first that says `started`.)
    agent.kill();
    let mark = recorder.heard().len();
    agent.restart().await;
    let heard = wait_for(
        "the restarted agent to register and ask",
        Duration::from_secs(30),
        async || {
            let mut heard = recorder.since(mark);
            let start = heard.iter().position(
                |h| matches!(h, Heard::Heartbeat { heartbeat, .. } if heartbeat.started),
            )?;
            state_request(&heard[start..], host_id)?;
            Some(heard.split_off(start))
        },
    )
    .await;
    let Heard::Heartbeat {
        heartbeat: restarted,
        ..
    } = &heard[0]
    else {
        unreachable!()
    };
    assert_eq!(restarted.underlay_ip, "198.18.40.1");
    assert_eq!(restarted.goal_state_endpoint, first.goal_state_endpoint);
    assert_eq!(warnings(&agent.log()), 1, "no outage, no new warning");
    stub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_state_request_is_asked_again_while_heartbeats_go_on() {
    if !privileged("a_refused_state_request_is_asked_again_while_heartbeats_go_on") {
        return;
    }
    let topology = topology("regno", 42);
    let h1 = topology.host("h1");
    let addr = controller_addr(&topology);
    let recorder = Recorder::default();
    recorder.1.store(true, Ordering::Relaxed);
    let stub = Stub::start(topology.host("ctl"), addr, recorder.clone(), None);
    let host_id = "compute-refused-1";
    let agent = plaintext_agent(h1, addr, host_id).await;

    // Refused: a heartbeat before every request, the request asked again
    // (backing off no further than the interval), still registered.
    let heard = wait_for(
        "three refused requests",
        Duration::from_secs(30),
        async || {
            let heard = recorder.heard();
            let requests = heard
                .iter()
                .filter(|h| matches!(h, Heard::StateRequest(_)))
                .count();
            (requests >= 3).then_some(heard)
        },
    )
    .await;
    let mut previous_was_heartbeat = false;
    for h in &heard {
        if let Heard::StateRequest(_) = h {
            assert!(previous_was_heartbeat, "{heard:#?}");
        }
        previous_was_heartbeat = matches!(h, Heard::Heartbeat { .. });
    }
    let link = link_status(&agent);
    assert_eq!(link["registered"], true, "{link}");
    assert_eq!(json_count(&link["state_requests"]), 0, "{link}");
    let error = link["last_error"].as_str().unwrap();
    assert!(
        error.contains("RequestGoalStates") && error.contains("FAILURE"),
        "{link}"
    );
    let warnings = agent
        .log()
        .matches("the controller cannot be reached")
        .count();
    assert_eq!(warnings, 1, "{}", agent.log());

    // Accepted at last: asked no more.
    recorder.1.store(false, Ordering::Relaxed);
    let link = wait_for(
        "the request to be accepted",
        Duration::from_secs(30),
        async || {
            let link = link_status(&agent);
            (json_count(&link["state_requests"]) == 1).then_some(link)
        },
    )
    .await;
    assert_eq!(link["registered"], true, "{link}");
    let mark = recorder.heard().len();
    wait_for("two more heartbeats", Duration::from_secs(15), async || {
        (heartbeats(&recorder.since(mark)).len() >= 2).then_some(())
    })
    .await;
    assert!(
        recorder
            .since(mark)
            .iter()
            .all(|h| matches!(h, Heard::Heartbeat { .. })),
        "no request once one is accepted"
    );
    stub.stop().await;
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_agent_trusts_its_ca_and_presents_its_certificate() {
    if !privileged("over_https_the_agent_trusts_its_ca_and_presents_its_certificate") {
        return;
    }
    let topology = topology("regtls", 41);
    let h1 = topology.host("h1");
    let addr = controller_addr(&topology);
    let pki = Pki::new("registration test").unwrap();
    let controller = pki
        .server("controller", "198.18.41.254".parse().unwrap())
        .unwrap();
    // One certificate serves goal state and identifies the agent to the
    // controller, as the demo's PKI issues them.
    let agent_cert = pki.server("agent", "198.18.41.1".parse().unwrap()).unwrap();
    let ca_file = pki.ca_file().display().to_string();
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&controller.cert),
            read(&controller.key),
        ))
        .client_ca_root(Certificate::from_pem(read(&pki.ca_file())));
    let recorder = Recorder::default();
    let stub = Stub::start(topology.host("ctl"), addr, recorder.clone(), Some(tls));

    let host_id = "compute-tls-1";
    let mut options = h1.agent_options();
    options.args.extend(
        [
            "--tls-cert",
            &agent_cert.cert.display().to_string(),
            "--tls-key",
            &agent_cert.key.display().to_string(),
            "--tls-client-ca",
            &ca_file,
            "--controller",
            &format!("https://{addr}"),
            "--host-id",
            host_id,
        ]
        .map(String::from),
    );
    let agent = Agent::start(h1.netns(), options).await;
    let (first, heard) =
        registration_since(&recorder, 0, host_id, "the agent to register over TLS").await;
    assert_eq!(first.goal_state_endpoint, "https://198.18.41.1:50001");
    assert!(
        heard.iter().all(|h| !matches!(
            h,
            Heard::Heartbeat {
                client_cert: false,
                ..
            }
        )),
        "every heartbeat came with the agent's certificate: {heard:#?}"
    );
    assert_eq!(link_status(&agent)["registered"], true);
    stub.stop().await;
}
