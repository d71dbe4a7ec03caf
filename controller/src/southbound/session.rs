//! One agent's session: a long-lived `PushGoalStatesStream` to its
//! GoalStateProvisioner, carrying the difference between what the agent
//! acknowledged and what its host should have, one message at a time, and
//! the ports' statuses from the replies back to the store.
//!
//! A new connection starts from nothing acknowledged (the agent may have
//! restarted without its state), so its first message is the whole state;
//! the agent finds most of it already applied. A lost connection is dialled
//! again with a growing pause; a resource the agent could not apply for now
//! (FAILURE) is sent again after a pause; one it refused (INVALID_ARG) is
//! not, until it changes. Ports whose device is not there yet (PENDING) are
//! asked about again every few seconds, until their agent says they are up.
//!
//! A session runs only while its instance owns the host: it writes port
//! statuses under the owner key it was started with (a fence), and when
//! the host is given up it is stopped between two messages, so that the
//! agent has answered everything it was sent before the next owner starts.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use alcor_proto::schema::{GoalStateOperationReply, OperationStatus, OperationType, ResourceType};
use futures::StreamExt;
use prost::Message as _;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tonic::{
    Request, Status, Streaming,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    goalstate::{self, HostState, Message},
    service::{Controller, agents::PortStatus},
    store::Entry,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an agent may take to answer one message (a whole state of
/// thousands of ports included).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const LONGEST_PAUSE: Duration = Duration::from_secs(10);
/// How often ports waiting for their device are asked about.
const PENDING_POLL: Duration = Duration::from_secs(2);
/// The most goal state (encoded bytes) on its way to all agents at once: a
/// host's whole state in a big VPC is megabytes, and a thousand hosts may
/// start together. A message waits for its share before it is sent and
/// holds it until its reply (one bigger than all of it takes all of it).
const IN_FLIGHT_BYTES: usize = 256 << 20;
static IN_FLIGHT: Semaphore = Semaphore::const_new(IN_FLIGHT_BYTES);

/// What a host should have, as of a store revision.
#[derive(Clone, Debug)]
pub struct Desired {
    pub revision: u64,
    /// Where its agent listens.
    pub endpoint: String,
    pub state: Arc<HostState>,
}

/// The handle the southbound keeps: the session's task ends when it is
/// dropped (at once) or stopped (between two messages).
pub struct Session {
    desired: watch::Sender<Desired>,
    resync: Arc<Notify>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Session {
    /// Starts pushing to `host`'s agent; `owner` is the host's owner key
    /// as this instance claimed it.
    pub fn start(
        host: String,
        desired: Desired,
        owner: Entry,
        tls: Option<ClientTlsConfig>,
        controller: Arc<Controller>,
    ) -> Session {
        let (sender, receiver) = watch::channel(desired);
        let resync = Arc::new(Notify::new());
        let (stop, stopped) = oneshot::channel();
        let statuses = status_writer(host.clone(), owner, controller);
        let task = tokio::spawn(
            Pusher {
                host,
                desired: receiver,
                resync: resync.clone(),
                stop: stopped,
                tls,
                statuses,
                acked: HostState::default(),
                pending_ports: Vec::new(),
                stream: None,
                pause: FIRST_PAUSE,
            }
            .run(),
        );
        Session {
            desired: sender,
            resync,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Ends the session once the message in flight, if any, is answered
    /// (or within `limit`, at once): after this, nothing more reaches the
    /// agent from it.
    pub async fn stop(mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return;
        };
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
            // Aborted: it ends at its next await, its connection dropped.
            let _ = task.await;
        }
    }

    pub fn want(&self, desired: Desired) {
        self.desired.send_if_modified(|current| {
            let changed =
                current.endpoint != desired.endpoint || !current.state.surely_same(&desired.state);
            // The revision moves with every change in the store, most of
            // them not this host's: only a different state is news.
            if changed {
                *current = desired;
            }
            changed
        });
    }

    pub fn resync(&self) {
        self.resync.notify_one();
    }
}

/// An open stream to the agent.
struct Stream {
    endpoint: String,
    messages: mpsc::Sender<Arc<Message>>,
    replies: Streaming<GoalStateOperationReply>,
}

/// What went wrong with a push: the connection is dropped.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error("cannot reach the agent at {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("the agent's stream failed: {0}")]
    Stream(String),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
}

struct Pusher {
    host: String,
    desired: watch::Receiver<Desired>,
    resync: Arc<Notify>,
    /// Resolves when the session is to end (or its handle is gone).
    stop: oneshot::Receiver<()>,
    tls: Option<ClientTlsConfig>,
    /// The ports' statuses from the replies, to be written.
    statuses: mpsc::UnboundedSender<Vec<PortStatus>>,
    /// What the agent acknowledged, as of this connection.
    acked: HostState,
    /// Ports the agent is waiting for a device for.
    pending_ports: Vec<String>,
    stream: Option<Stream>,
    pause: Duration,
}

/// Whether a session goes on after a wait.
#[derive(PartialEq, Eq)]
enum Next {
    GoOn,
    Stop,
}

impl Pusher {
    async fn run(mut self) {
        // Stopped only between messages: a message sent is answered first.
        while self.stop.try_recv() == Err(oneshot::error::TryRecvError::Empty) {
            let desired = self.desired.borrow_and_update().clone();
            let revision = u32::try_from(desired.revision).unwrap_or(u32::MAX);
            let message = goalstate::diff(&self.acked, &desired.state, revision)
                .or_else(|| self.pending_poll(&desired.state, revision));
            let Some(message) = message else {
                if self.wait_for_news().await == Next::Stop {
                    break;
                }
                continue;
            };
            let next = match self.push(&desired, message).await {
                Ok(all_done) => {
                    self.pause = FIRST_PAUSE;
                    if all_done {
                        Next::GoOn
                    } else {
                        // Something to try again: not at once.
                        self.sleep_or_resync(LONGEST_PAUSE.min(self.pause * 10))
                            .await
                    }
                }
                Err(error) => {
                    tracing::warn!(host = %self.host, %error, pause = ?self.pause, "goal-state push failed");
                    self.stream = None;
                    let next = self.sleep_or_resync(self.pause).await;
                    self.pause = (self.pause * 2).min(LONGEST_PAUSE);
                    next
                }
            };
            if next == Next::Stop {
                break;
            }
        }
        tracing::debug!(host = %self.host, "session stopped");
    }

    /// Waits for a new desired state, a resync, the next poll of pending
    /// ports, or the end.
    async fn wait_for_news(&mut self) -> Next {
        let poll = async {
            if self.pending_ports.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(PENDING_POLL).await;
        };
        tokio::select! {
            changed = self.desired.changed() => {
                if changed.is_err() {
                    return Next::Stop;
                }
            }
            () = self.resync.notified() => self.forget(),
            () = poll => {}
            _ = &mut self.stop => return Next::Stop,
        }
        Next::GoOn
    }

    async fn sleep_or_resync(&mut self, pause: Duration) -> Next {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = self.resync.notified() => self.forget(),
            _ = &mut self.stop => return Next::Stop,
        }
        Next::GoOn
    }

    /// The agent has nothing we know of: everything goes again.
    fn forget(&mut self) {
        self.acked = HostState::default();
        self.pending_ports.clear();
    }

    /// The ports still waiting for their device, sent again so that the
    /// agent says how they are doing.
    fn pending_poll(&self, desired: &HostState, revision: u32) -> Option<Message> {
        if self.pending_ports.is_empty() {
            return None;
        }
        let mut acked = self.acked.clone();
        for id in &self.pending_ports {
            acked.ports.remove(id);
        }
        let mut message = goalstate::diff(&acked, desired, revision)?;
        message
            .states
            .port_states
            .retain(|id, _| self.pending_ports.contains(id));
        Some(message)
    }

    /// Sends one message and takes in its reply: whether every resource
    /// was applied or refused for good (nothing to try again).
    async fn push(&mut self, desired: &Desired, message: Message) -> Result<bool, PushError> {
        let _in_flight;
        let sent = match self.stream.as_mut() {
            Some(stream) if stream.endpoint == desired.endpoint => {
                _in_flight = in_flight(&message).await;
                let message = Arc::new(message);
                stream
                    .messages
                    .send(message.clone())
                    .await
                    .map_err(|_| PushError::Stream("the stream closed".into()))?;
                message
            }
            _ => {
                // A new connection: the whole state, sent with the call.
                self.stream = None;
                self.forget();
                let revision = u32::try_from(desired.revision).unwrap_or(u32::MAX);
                let Some(whole) = goalstate::diff(&self.acked, &desired.state, revision) else {
                    return Ok(true);
                };
                _in_flight = in_flight(&whole).await;
                let whole = Arc::new(whole);
                self.stream = Some(self.connect(&desired.endpoint, whole.clone()).await?);
                whole
            }
        };
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| PushError::Stream("not connected".into()))?;
        let reply = match tokio::time::timeout(REPLY_TIMEOUT, stream.replies.message()).await {
            Err(_) => return Err(PushError::Timeout(REPLY_TIMEOUT)),
            Ok(Err(status)) => return Err(PushError::Stream(status.message().to_string())),
            Ok(Ok(None)) => return Err(PushError::Stream("the agent ended the stream".into())),
            Ok(Ok(Some(reply))) => reply,
        };
        Ok(self.take_reply(&desired.state, &sent, &reply))
    }

    /// Dials the agent and opens the stream with its first message.
    async fn connect(&self, endpoint: &str, first: Arc<Message>) -> Result<Stream, PushError> {
        let failed = |reason: String| PushError::Connect {
            endpoint: endpoint.to_string(),
            reason,
        };
        let mut target = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| failed(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if endpoint.starts_with("https://") {
            let tls = self
                .tls
                .clone()
                .ok_or_else(|| failed("the endpoint is https:// but the controller has no agent TLS configured (--agent-tls-cert)".into()))?;
            target = target.tls_config(tls).map_err(|e| failed(e.to_string()))?;
        }
        let channel: Channel = tokio::time::timeout(CONNECT_TIMEOUT, target.connect())
            .await
            .map_err(|_| failed("timed out".into()))?
            .map_err(|e| {
                failed(format!(
                    "{e}: {}",
                    std::error::Error::source(&e).map_or(String::new(), |s| s.to_string())
                ))
            })?;
        let mut client = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let (messages, outgoing) = mpsc::channel(1);
        // The first message goes with the call: the agent answers the call
        // once it has a message.
        let _ = messages.try_send(first);
        let call = async {
            client
                .ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            client
                .streaming(
                    Request::new(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
                    PathAndQuery::from_static(STREAM_PATH),
                    MessageCodec,
                )
                .await
        };
        let replies = tokio::time::timeout(CONNECT_TIMEOUT, call)
            .await
            .map_err(|_| failed("the agent did not open the stream".into()))?
            .map_err(|status| failed(status.message().to_string()))?
            .into_inner();
        Ok(Stream {
            endpoint: endpoint.to_string(),
            messages,
            replies,
        })
    }

    /// Takes the reply to `sent` in: what was applied (or refused for good)
    /// is acknowledged, ports get their statuses.
    fn take_reply(
        &mut self,
        desired: &HostState,
        sent: &Message,
        reply: &GoalStateOperationReply,
    ) -> bool {
        let mut all_done = true;
        let mut ports = Vec::new();
        let mut neighbors = HashSet::new();
        self.pending_ports.clear();
        for status in &reply.operation_statuses {
            let outcome = OperationStatus::try_from(status.operation_status)
                .unwrap_or(OperationStatus::Failure);
            let kind = ResourceType::try_from(status.resource_type).ok();
            let id = status.resource_id.as_str();
            let operation =
                OperationType::try_from(status.operation_type).unwrap_or(OperationType::Info);
            let settled = match outcome {
                OperationStatus::Success | OperationStatus::Pending => true,
                // Refused for what it is: sending it again changes nothing.
                OperationStatus::InvalidArg | OperationStatus::OutOfOrder => {
                    tracing::warn!(host = %self.host, resource = id, reason = %status.message, "the agent refused a resource");
                    true
                }
                OperationStatus::Failure => {
                    tracing::warn!(host = %self.host, resource = id, reason = %status.message, "the agent could not apply a resource");
                    all_done = false;
                    false
                }
            };
            if kind == Some(ResourceType::Port) && operation != OperationType::Delete {
                if outcome == OperationStatus::Pending {
                    self.pending_ports.push(id.to_string());
                }
                ports.push(PortStatus {
                    port_id: id.to_string(),
                    status: match outcome {
                        OperationStatus::Success => "ACTIVE",
                        OperationStatus::Pending => "DOWN",
                        _ => "ERROR",
                    },
                    detail: status.message.clone(),
                });
            }
            match kind {
                Some(ResourceType::Neighbor) if settled => {
                    neighbors.insert(id);
                }
                Some(kind) if settled => acknowledge(&mut self.acked, desired, kind, id),
                _ => {}
            }
        }
        // Every message carries all its host's neighbors that differ from
        // what it acknowledged (`diff` from the same states): all of them
        // settled, it has `desired`'s.
        self.acked.neighbors = if sent.neighbors.iter().all(|n| neighbors.contains(&*n.id)) {
            desired.neighbors.clone()
        } else {
            self.acked
                .neighbors
                .acknowledged(&desired.neighbors, &neighbors)
        };
        // Whatever the reply did not mention is not acknowledged: it goes
        // again with the next message.
        if !ports.is_empty() {
            let _ = self.statuses.send(ports);
        }
        all_done
    }
}

/// Commits of port statuses on their way at once, at most, for one session.
const STATUS_COMMITS: usize = 4;

/// Writes the port statuses of a session's replies beside its pushes rather
/// than between them: a reply of a thousand ports would otherwise hold the
/// next message up for a thousand writes. The statuses of the replies that
/// wait are written together (the latest of each port), a few commits at
/// once, each under the owner key the session was started with: once
/// another instance serves the host, nothing more is written (`NotTheOwner`),
/// and that instance's session records the statuses again. Ends once the
/// session is gone and what it sent is written.
fn status_writer(
    host: String,
    owner: Entry,
    controller: Arc<Controller>,
) -> mpsc::UnboundedSender<Vec<PortStatus>> {
    let (sender, mut batches) = mpsc::unbounded_channel::<Vec<PortStatus>>();
    tokio::spawn(async move {
        while let Some(mut statuses) = batches.recv().await {
            while let Ok(more) = batches.try_recv() {
                statuses.extend(more);
            }
            let latest: Vec<PortStatus> = statuses
                .into_iter()
                .map(|status| (status.port_id.clone(), status))
                .collect::<HashMap<_, _>>()
                .into_values()
                .collect();
            let share = latest.len().div_ceil(STATUS_COMMITS).max(1);
            let (controller, owner) = (&controller, &owner);
            let mut writes = futures::stream::iter(latest.chunks(share).map(<[_]>::to_vec))
                .map(|chunk| async move { controller.set_port_statuses(&chunk, Some(owner)).await })
                .buffer_unordered(STATUS_COMMITS);
            while let Some(written) = writes.next().await {
                if let Err(error) = written {
                    tracing::warn!(%host, %error, "cannot record port statuses");
                }
            }
        }
    });
    sender
}

/// Waits for `message`'s share of [`IN_FLIGHT_BYTES`].
async fn in_flight(message: &Message) -> tokio::sync::SemaphorePermit<'static> {
    let bytes = message.encoded_len().clamp(1, IN_FLIGHT_BYTES);
    IN_FLIGHT
        .acquire_many(u32::try_from(bytes).unwrap_or(u32::MAX))
        .await
        .expect("the semaphore is never closed")
}

/// Records that the agent has `kind` `id` as `desired` has it (or, gone
/// from `desired`, that it has it no more). (Neighbors are acknowledged
/// together: [`goalstate::Neighbors::acknowledged`].)
fn acknowledge(acked: &mut HostState, desired: &HostState, kind: ResourceType, id: &str) {
    fn copy<C: Clone>(acked: &mut BTreeMap<String, C>, desired: &BTreeMap<String, C>, id: &str) {
        match desired.get(id) {
            Some(config) => {
                acked.insert(id.to_string(), config.clone());
            }
            None => {
                acked.remove(id);
            }
        }
    }
    match kind {
        ResourceType::Vpc => copy(&mut acked.vpcs, &desired.vpcs, id),
        ResourceType::Subnet => copy(&mut acked.subnets, &desired.subnets, id),
        ResourceType::Port => copy(&mut acked.ports, &desired.ports, id),
        ResourceType::Dhcp => copy(&mut acked.dhcp, &desired.dhcp, id),
        ResourceType::Router => copy(&mut acked.routers, &desired.routers, id),
        ResourceType::Neighbor | ResourceType::Securitygroup | ResourceType::Gateway => {}
    }
}

/// The path of the agent's stream method.
const STREAM_PATH: &str = "/alcor.schema.GoalStateProvisioner/PushGoalStatesStream";

/// Sends [`Message`]s as the `GoalStateV2`s they are; reads replies with
/// prost.
#[derive(Clone, Copy)]
struct MessageCodec;

impl Codec for MessageCodec {
    type Encode = Arc<Message>;
    type Decode = GoalStateOperationReply;
    type Encoder = MessageCodec;
    type Decoder = MessageCodec;

    fn encoder(&mut self) -> MessageCodec {
        *self
    }

    fn decoder(&mut self) -> MessageCodec {
        *self
    }
}

impl Encoder for MessageCodec {
    type Item = Arc<Message>;
    type Error = Status;

    fn encode(&mut self, message: Arc<Message>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(message.encoded_len());
        message
            .encode(dst)
            .map_err(|e| Status::internal(format!("encoding a goal state: {e}")))
    }
}

impl Decoder for MessageCodec {
    type Item = GoalStateOperationReply;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        GoalStateOperationReply::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("failed to decode the agent's reply: {e}")))
    }
}
