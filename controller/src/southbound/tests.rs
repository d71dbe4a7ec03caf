//! Several instances on one store, pushing to stand-in agents (gRPC
//! servers that acknowledge everything and log what came over which
//! stream): each agent is served by one instance at a time, changes made
//! through any instance reach every agent, a dead instance's agents are
//! taken over, a new instance gets its share, one that leaves hands its
//! agents over at once; and no agent ever gets a message from an older
//! stream after a newer one began, nor an older revision after a newer.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use alcor_proto::schema::{
    GoalState, GoalStateOperationReply, GoalStateV2, HostRequest, HostRequestReply,
    OperationStatus, ResourceType,
    goal_state_operation_reply::GoalStateOperationStatus,
    goal_state_provisioner_server::{GoalStateProvisioner, GoalStateProvisionerServer},
};
use futures::stream::BoxStream;
use serde_json::json;
use tonic::{Request, Response, Status, Streaming};

use super::Southbound;
use crate::{
    metrics::Metrics,
    model::{
        Port,
        agent::{Heartbeat, Registration},
    },
    service::{Controller, Policy, testing::*},
    store::{Store, embedded::Embedded},
};

/// What a stand-in agent was sent, message by message.
#[derive(Clone, Debug)]
struct Message {
    /// Which stream (1, 2, ... in the order they opened).
    stream: usize,
    revision: u32,
    ports: Vec<String>,
}

#[derive(Default)]
struct Stub {
    streams: AtomicUsize,
    open: AtomicUsize,
    messages: Mutex<Vec<Message>>,
}

impl Stub {
    fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Whether a message carried the port (created or changed).
    fn got_port(&self, port: &str) -> bool {
        self.messages()
            .iter()
            .any(|message| message.ports.iter().any(|id| id == port))
    }

    /// What one pusher at a time means to an agent: once a stream has
    /// delivered a message, no older stream delivers one; revisions never
    /// go back.
    fn check_one_pusher_at_a_time(&self, host: &str) {
        let messages = self.messages();
        for pair in messages.windows(2) {
            assert!(
                pair[0].stream <= pair[1].stream,
                "{host}: a message from stream {} after one from stream {}: {messages:?}",
                pair[1].stream,
                pair[0].stream
            );
            assert!(
                pair[0].revision <= pair[1].revision,
                "{host}: revision {} after {}",
                pair[1].revision,
                pair[0].revision
            );
        }
    }
}

/// Counts a stream open while it lives.
struct OpenStream(Arc<Stub>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct StubService(Arc<Stub>);

/// SUCCESS for every resource of the message; its revision and ports.
fn answer(message: &GoalStateV2) -> (GoalStateOperationReply, u32, Vec<String>) {
    let mut statuses = Vec::new();
    let mut revision = 0;
    macro_rules! each {
        ($($field:ident: $kind:ident),*) => {$(
            for (id, state) in &message.$field {
                if let Some(config) = &state.configuration {
                    revision = revision.max(config.revision_number);
                }
                statuses.push(GoalStateOperationStatus {
                    resource_id: id.clone(),
                    resource_type: ResourceType::$kind as i32,
                    operation_type: state.operation_type,
                    operation_status: OperationStatus::Success as i32,
                    ..Default::default()
                });
            }
        )*};
    }
    each!(vpc_states: Vpc, subnet_states: Subnet, port_states: Port, dhcp_states: Dhcp,
        neighbor_states: Neighbor, router_states: Router);
    let reply = GoalStateOperationReply {
        operation_statuses: statuses,
        ..Default::default()
    };
    (
        reply,
        revision,
        message.port_states.keys().cloned().collect(),
    )
}

#[tonic::async_trait]
impl GoalStateProvisioner for StubService {
    type PushGoalStatesStreamStream = BoxStream<'static, Result<GoalStateOperationReply, Status>>;

    async fn push_network_resource_states(
        &self,
        _request: Request<GoalState>,
    ) -> Result<Response<GoalStateOperationReply>, Status> {
        Err(Status::unimplemented("streams only"))
    }

    async fn push_goal_states_stream(
        &self,
        request: Request<Streaming<GoalStateV2>>,
    ) -> Result<Response<Self::PushGoalStatesStreamStream>, Status> {
        let stub = self.0.clone();
        let stream = stub.streams.fetch_add(1, Ordering::SeqCst) + 1;
        stub.open.fetch_add(1, Ordering::SeqCst);
        let open = OpenStream(stub.clone());
        let mut inbound = request.into_inner();
        let replies = async_stream_of(move |sender| async move {
            let _open = open;
            while let Ok(Some(message)) = inbound.message().await {
                let (reply, revision, ports) = answer(&message);
                stub.messages.lock().unwrap().push(Message {
                    stream,
                    revision,
                    ports,
                });
                if sender.send(Ok(reply)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(replies))
    }

    async fn request_goal_states(
        &self,
        _request: Request<HostRequest>,
    ) -> Result<Response<HostRequestReply>, Status> {
        Err(Status::unimplemented("the controller serves this"))
    }
}

/// A stream of what `produce` sends, `produce` running on its own task.
fn async_stream_of<F, Fut>(
    produce: F,
) -> BoxStream<'static, Result<GoalStateOperationReply, Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<GoalStateOperationReply, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

/// A stand-in agent listening on loopback: its stub and its endpoint.
async fn stand_in() -> (Arc<Stub>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let stub = Arc::new(Stub::default());
    let service = GoalStateProvisionerServer::new(StubService(stub.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (stub, endpoint)
}

/// A controller instance: its own controller over a handle on the shared
/// store, and its southbound running.
struct Instance {
    controller: Arc<Controller>,
    southbound: Arc<Southbound>,
    task: tokio::task::JoinHandle<()>,
}

impl Instance {
    fn start(store: Arc<dyn Store>, id: &str) -> Instance {
        let controller = Arc::new(Controller::new(store, Policy::default()));
        let southbound = Southbound::new(
            controller.clone(),
            None,
            id.into(),
            Arc::new(Metrics::default()),
        );
        let task = tokio::spawn(southbound.clone().run());
        Instance {
            controller,
            southbound,
            task,
        }
    }

    fn serving(&self) -> BTreeSet<String> {
        self.southbound.serving().into_iter().collect()
    }

    /// Dies as a killed process would: nothing more comes from it, its
    /// lease is no longer kept alive (it ends by time on etcd;
    /// `revoke` stands for that time on the embedded store, whose leases
    /// live as long as it is open).
    async fn kill(self, revoke: bool) {
        let lease = self.southbound.held().map(|held| held.id);
        self.task.abort();
        let _ = self.task.await;
        // Its helper tasks went with the run task; its sessions go now.
        self.southbound.state().serving.clear();
        if revoke && let Some(lease) = lease {
            self.controller.revoke_lease(lease).await.unwrap();
        }
    }
}

/// Waits until `check` holds, for at most `limit`: how long it took.
/// `check` says how things are when they are not yet as wanted.
async fn eventually(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    loop {
        match check() {
            Ok(()) => return started.elapsed(),
            Err(state) => assert!(
                started.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Ok` if `holds`, else how things are.
fn state_if(holds: bool, state: impl FnOnce() -> String) -> Result<(), String> {
    if holds { Ok(()) } else { Err(state()) }
}

/// What each instance serves and how many streams each agent has open.
fn describe(instances: &[&Instance], stubs: &[Arc<Stub>]) -> String {
    let served: Vec<_> = instances
        .iter()
        .map(|i| (i.southbound.id().to_string(), i.serving()))
        .collect();
    let open: Vec<usize> = stubs.iter().map(|stub| stub.open()).collect();
    format!("serving {served:?}, streams open {open:?}")
}

async fn register(controller: &Controller, host: &str, n: u8, endpoint: &str) {
    let registration = Registration::parse(
        host,
        &format!("198.18.0.{n}"),
        "02:00:00:00:00:01",
        endpoint,
        "stand-in",
    )
    .unwrap();
    controller
        .register_agent(&registration, true, Heartbeat::now(0, 0))
        .await
        .unwrap();
}

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// The hosts split between `instances`, each served once, and every
/// stand-in agent with one stream open.
fn split_between(instances: &[&Instance], stubs: &[Arc<Stub>]) -> Result<(), String> {
    let served: Vec<BTreeSet<String>> = instances.iter().map(|i| i.serving()).collect();
    let all: BTreeSet<&String> = served.iter().flatten().collect();
    let holds = served.iter().map(BTreeSet::len).sum::<usize>() == HOSTS.len()
        && all.len() == HOSTS.len()
        && served.iter().all(|hosts| !hosts.is_empty())
        && stubs.iter().all(|stub| stub.open() == 1);
    state_if(holds, || describe(instances, stubs))
}

/// `instance` serves every host, each agent with one stream open.
fn serves_all(instance: &Instance, stubs: &[Arc<Stub>]) -> Result<(), String> {
    serves_all_of(instance, &HOSTS, stubs)
}

fn serves_all_of(instance: &Instance, hosts: &[&str], stubs: &[Arc<Stub>]) -> Result<(), String> {
    let holds =
        instance.serving().len() == hosts.len() && stubs.iter().all(|stub| stub.open() == 1);
    state_if(holds, || describe(&[instance], stubs))
}

/// A port bound to `host`, created through `controller`, and shown ACTIVE
/// there once its agent (served by whichever instance) acknowledged it.
async fn port_on(controller: &Controller, network: &str, host: &str, stub: &Stub) -> String {
    let created = controller
        .create_ports(&[port(
            json!({"network_id": network, "binding:host_id": host}),
        )])
        .await
        .unwrap();
    let id = created[0].meta.id.clone();
    let limit = Duration::from_secs(10);
    let started = Instant::now();
    loop {
        let status = controller.show::<Port>(&id).await.unwrap().status;
        if status == "ACTIVE" && stub.got_port(&id) {
            return id;
        }
        assert!(started.elapsed() < limit, "port {id} on {host} is {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The whole story on one store; `stores` gives each instance its handle,
/// `ttl_expires` says whether a dead instance's lease ends by itself.
async fn share_take_over_and_hand_over(stores: impl Fn() -> Arc<dyn Store>, ttl_expires: bool) {
    let a = Instance::start(stores(), "a");
    let b = Instance::start(stores(), "b");
    let mut stubs = Vec::new();
    for (n, host) in HOSTS.iter().enumerate() {
        let (stub, endpoint) = stand_in().await;
        register(&a.controller, host, n as u8 + 1, &endpoint).await;
        stubs.push(stub);
    }
    // A port on every host (a host with nothing to program is not dialled).
    let (network, _) = network_with_subnet(&a.controller, json!({}), "10.0.0.0/24").await;
    let network = network.meta.id;
    let mut ports = Vec::new();
    for (host, stub) in HOSTS.iter().zip(&stubs) {
        ports.push(port_on(&a.controller, &network, host, stub).await);
    }
    eventually(
        "the hosts split between a and b",
        Duration::from_secs(10),
        || split_between(&[&a, &b], &stubs),
    )
    .await;

    // Made through a, pushed by b.
    let on_b = b.serving().into_iter().next().unwrap();
    let index = |host: &str| HOSTS.iter().position(|h| *h == host).unwrap();
    let first = ports[index(&on_b)].clone();
    port_on(&a.controller, &network, &on_b, &stubs[index(&on_b)]).await;

    // The agent asks a for its whole state: b, its owner, sends it.
    let stub = &stubs[index(&on_b)];
    let before = stub.messages().len();
    a.controller.request_resync(&on_b).await.unwrap();
    eventually(
        "the whole state sent again",
        Duration::from_secs(10),
        || {
            let sent = stub.messages()[before..]
                .iter()
                .any(|message| message.ports.contains(&first));
            state_if(sent, || format!("{:?}", stub.messages()))
        },
    )
    .await;

    // b dies: a takes its agents over once its lease has ended.
    b.kill(!ttl_expires).await;
    let took = eventually("a serving every agent", Duration::from_secs(20), || {
        serves_all(&a, &stubs)
    })
    .await;
    eprintln!("a took b's agents over in {took:?}");
    port_on(&a.controller, &network, &on_b, &stubs[index(&on_b)]).await;

    // A new instance gets its share, handed over one at a time.
    let c = Instance::start(stores(), "c");
    eventually(
        "the hosts split between a and c",
        Duration::from_secs(20),
        || split_between(&[&a, &c], &stubs),
    )
    .await;
    let on_c = c.serving().into_iter().next().unwrap();
    port_on(&a.controller, &network, &on_c, &stubs[index(&on_c)]).await;

    // c leaves (SIGTERM): a has its agents at once, not a TTL later.
    c.southbound.leave().await;
    eventually(
        "a serving every agent again",
        super::LEASE_TTL - super::LEASE_MARGIN,
        || serves_all(&a, &stubs),
    )
    .await;
    port_on(&c.controller, &network, &on_c, &stubs[index(&on_c)]).await;

    for (host, stub) in HOSTS.iter().zip(&stubs) {
        stub.check_one_pusher_at_a_time(host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_the_embedded_store_share_take_over_and_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(Embedded::open(&dir.path().join("store.redb")).unwrap());
    share_take_over_and_hand_over(|| store.clone(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_on_etcd_share_take_over_and_hand_over() {
    let test = "instances_on_etcd_share_take_over_and_hand_over";
    if !alcor_tests::etcd::available(test) {
        return;
    }
    let server = alcor_tests::etcd::EtcdServer::start().unwrap();
    // A client per instance, as separate processes have.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let store = crate::store::etcd::Etcd::connect(&[server.client_url()])
            .await
            .unwrap();
        clients.push(Arc::new(store) as Arc<dyn Store>);
    }
    let next = AtomicUsize::new(0);
    share_take_over_and_hand_over(
        || clients[next.fetch_add(1, Ordering::SeqCst)].clone(),
        true,
    )
    .await;
}

/// An instance cut off from etcd cannot know whether its lease still
/// holds: it stops pushing before the lease can have ended (by its own
/// clock), so that whoever takes its agents over is alone; once etcd is
/// back it serves them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_etcd_stops_pushing_before_its_lease_can_end() {
    let test = "an_instance_cut_off_from_etcd_stops_pushing_before_its_lease_can_end";
    if !alcor_tests::etcd::available(test) {
        return;
    }
    let mut server = alcor_tests::etcd::EtcdServer::start().unwrap();
    let store = crate::store::etcd::Etcd::connect(&[server.client_url()])
        .await
        .unwrap();
    let a = Instance::start(Arc::new(store), "a");
    let (stub, endpoint) = stand_in().await;
    register(&a.controller, "h1", 1, &endpoint).await;
    let (network, _) = network_with_subnet(&a.controller, json!({}), "10.0.0.0/24").await;
    port_on(&a.controller, &network.meta.id, "h1", &stub).await;
    let stubs = [stub.clone()];

    tokio::task::block_in_place(|| server.kill());
    let stopped = eventually("a to stop serving", super::LEASE_TTL, || {
        state_if(a.serving().is_empty() && stub.open() == 0, || {
            describe(&[&a], &stubs)
        })
    })
    .await;
    eprintln!("cut off, a stopped serving after {stopped:?}");
    // Its last renewal went before the kill, so its lease ends at the
    // earliest a TTL after that: it stopped before (by LEASE_MARGIN, less
    // however late the timer and the round ran).
    assert!(stopped < super::LEASE_TTL, "{stopped:?}");

    tokio::task::block_in_place(|| server.restart()).unwrap();
    eventually("a serving again", Duration::from_secs(20), || {
        serves_all_of(&a, &["h1"], &stubs)
    })
    .await;
    port_on(&a.controller, &network.meta.id, "h1", &stub).await;
    stub.check_one_pusher_at_a_time("h1");
}
