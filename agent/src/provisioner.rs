//! Alcor's `GoalStateProvisioner` over gRPC. Messages go through the engine
//! in order, so replies follow the order of messages. On a stream, messages
//! are read and decoded ahead while the engine applies earlier ones, and
//! those that arrived meanwhile are applied together, as one transaction
//! (see [`Engine::apply_group`]).

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use alcor_proto::{
    codec::{ReadMessage, ReplyCodec},
    schema::{
        GoalState, GoalStateOperationReply, GoalStateV2, HostRequest, HostRequestReply,
        goal_state_provisioner_server::{GoalStateProvisioner, GoalStateProvisionerServer},
    },
};
use futures::{Stream, StreamExt, future::BoxFuture};
use prost::bytes::Buf;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Response, Status, Streaming,
    body::Body,
    codec::DecodeBuf,
    codegen::{Service, http},
    server::{Grpc, NamedService, StreamingService},
};

use crate::{
    core::goalstate::{batch::Batch, wire::WireError},
    engine::Engine,
    metrics::{ApiLabels, Metrics},
    tasks::Tasks,
};

/// Replies a stream may have in flight before the agent waits for the
/// controller to read them.
const STREAM_REPLY_BACKLOG: usize = 16;
/// Resources of a stream read and checked ahead of the engine (about half a
/// kilobyte each): the most one group applies at once, besides the message
/// that started it. Enough to keep the engine busy; more only
/// costs memory (a group of neighbors costs no pass over the whole
/// datapath).
const STREAM_READ_AHEAD: u32 = 100_000;

/// What applying goal state takes; cloned into each stream's tasks.
#[derive(Clone)]
pub struct GoalStateService {
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
}

impl GoalStateService {
    pub fn new(engine: Arc<Mutex<Engine>>, metrics: Arc<Metrics>, tasks: Tasks) -> Self {
        GoalStateService {
            engine,
            metrics,
            tasks,
        }
    }
}

/// Applies messages to completion even if the caller goes away, or the
/// agent stops meanwhile: a message is applied whole or not at all.
async fn apply(
    service: &GoalStateService,
    api: &'static str,
    group: Vec<Batch>,
) -> Result<Vec<GoalStateOperationReply>, Status> {
    let engine = service.engine.clone();
    let count = group.len() as u64;
    let replies = service
        .tasks
        .spawn(async move { engine.lock().await.apply_group(group).await })
        .await
        .map_err(|e| Status::internal(format!("applying the goal state failed: {e}")))?;
    service
        .metrics
        .messages
        .get_or_create(&ApiLabels { api })
        .inc_by(count);
    Ok(replies)
}

/// A message as read from a stream: a batch, the stream's end, or the
/// reason the transport refused it (too large, malformed); with its share
/// of the read-ahead budget, given back once it is applied.
type Incoming = (Result<Option<Batch>, Status>, Option<OwnedSemaphorePermit>);

/// Applies the messages of one stream in order, a group at a time, and
/// sends a reply for each; stops at the end of the stream, at the first
/// message the transport refused (after replying to those before it), when
/// the controller stops reading, or when the agent stops (after the group
/// in progress and its replies: the controller sends the rest again).
async fn apply_stream(
    service: GoalStateService,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    replies: mpsc::Sender<Result<GoalStateOperationReply, Status>>,
) {
    let stopping = service.tasks.stopping();
    tokio::pin!(stopping);
    let mut held = None;
    loop {
        let next = match held.take() {
            Some(next) => next,
            None => tokio::select! {
                biased;
                () = &mut stopping => return,
                next = incoming.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
            },
        };
        let (next, permit) = next;
        let mut permits = vec![permit];
        let first = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(status) => {
                let _ = replies.send(Err(status)).await;
                return;
            }
        };
        let mut group = vec![first];
        while let Ok(next) = incoming.try_recv() {
            match next {
                (Ok(Some(batch)), permit) if batch.groups_with_previous() => {
                    group.push(batch);
                    permits.push(permit);
                }
                other => {
                    held = Some(other);
                    break;
                }
            }
        }
        let applied = apply(&service, "v2", group).await;
        drop(permits);
        match applied {
            Ok(group_replies) => {
                for reply in group_replies {
                    if replies.send(Ok(reply)).await.is_err() {
                        return;
                    }
                }
            }
            Err(status) => {
                let _ = replies.send(Err(status)).await;
                return;
            }
        }
    }
}

/// Counts a stream as open while it lives.
struct OpenStream(Arc<Metrics>);

impl OpenStream {
    fn new(metrics: &Arc<Metrics>) -> OpenStream {
        metrics.goalstate_streams.inc();
        OpenStream(metrics.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.goalstate_streams.dec();
    }
}

impl GoalStateService {
    /// Applies the messages of a stream, read and decoded ahead (see
    /// [`apply_stream`]); replies as it goes.
    fn stream(
        &self,
        mut messages: impl Stream<Item = Result<Batch, Status>> + Send + Unpin + 'static,
    ) -> ReceiverStream<Result<GoalStateOperationReply, Status>> {
        let (replies, outbound) = mpsc::channel(STREAM_REPLY_BACKLOG);
        let (read, incoming) = mpsc::unbounded_channel();
        // Reads and decodes ahead, on its own task, while the engine works,
        // as far as the budget allows.
        let budget = Arc::new(Semaphore::new(STREAM_READ_AHEAD as usize));
        self.tasks.spawn_until_stopped(async move {
            loop {
                let next = messages.next().await.transpose();
                let last = !matches!(next, Ok(Some(_)));
                let resources = match &next {
                    Ok(Some(batch)) => batch.len().clamp(1, STREAM_READ_AHEAD as usize) as u32,
                    _ => 0,
                };
                // Never closed, so acquiring cannot fail.
                let permit = budget.clone().acquire_many_owned(resources).await.ok();
                if read.send((next, permit)).is_err() || last {
                    break;
                }
            }
        });
        // Open until the controller ends it (or goes) and what it sent is
        // applied.
        let open = OpenStream::new(&self.metrics);
        let service = self.clone();
        self.tasks.spawn(async move {
            apply_stream(service, incoming, replies).await;
            drop(open);
        });
        ReceiverStream::new(outbound)
    }
}

#[tonic::async_trait]
impl GoalStateProvisioner for GoalStateService {
    async fn push_network_resource_states(
        &self,
        request: Request<GoalState>,
    ) -> Result<Response<GoalStateOperationReply>, Status> {
        let batch = Batch::from(request.into_inner());
        let mut replies = apply(self, "v1", vec![batch]).await?;
        Ok(Response::new(replies.pop().unwrap_or_default()))
    }

    type PushGoalStatesStreamStream = ReceiverStream<Result<GoalStateOperationReply, Status>>;

    /// Served by [`GoalStateRoutes`] from the messages' bytes; this is the
    /// same stream from messages prost decoded, for a server without it.
    async fn push_goal_states_stream(
        &self,
        request: Request<Streaming<GoalStateV2>>,
    ) -> Result<Response<Self::PushGoalStatesStreamStream>, Status> {
        let messages = request.into_inner().map(|m| m.map(Batch::from));
        Ok(Response::new(self.stream(messages)))
    }

    async fn request_goal_states(
        &self,
        _request: Request<HostRequest>,
    ) -> Result<Response<HostRequestReply>, Status> {
        Err(Status::unimplemented(
            "RequestGoalStates is served by the controller; agents only send it",
        ))
    }
}

/// The path of the stream method.
const STREAM_PATH: &str = "/alcor.schema.GoalStateProvisioner/PushGoalStatesStream";

/// The goal-state service as the agent serves it: the stream method with a
/// codec that reads each V2 message straight into a batch, its neighbor
/// states left encoded until then ([`Batch::from_encoded_v2`]); the other
/// methods by the generated server.
#[derive(Clone)]
pub struct GoalStateRoutes {
    service: Arc<GoalStateService>,
    generated: GoalStateProvisionerServer<GoalStateService>,
    max_message_size: usize,
}

impl GoalStateRoutes {
    pub fn new(service: GoalStateService, max_message_size: usize) -> Self {
        let service = Arc::new(service);
        let generated = GoalStateProvisionerServer::from_arc(service.clone())
            .max_decoding_message_size(max_message_size);
        GoalStateRoutes {
            service,
            generated,
            max_message_size,
        }
    }
}

impl NamedService for GoalStateRoutes {
    const NAME: &'static str = <GoalStateProvisionerServer<GoalStateService> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for GoalStateRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != STREAM_PATH {
            return Box::pin(self.generated.call(request));
        }
        let method = StreamMethod(self.service.clone());
        let max_message_size = self.max_message_size;
        Box::pin(async move {
            let mut grpc = Grpc::new(ReplyCodec::<Batch>::default())
                .apply_max_message_size_config(Some(max_message_size), None);
            Ok(grpc.streaming(method, request).await)
        })
    }
}

struct StreamMethod(Arc<GoalStateService>);

impl StreamingService<Batch> for StreamMethod {
    type Response = GoalStateOperationReply;
    type ResponseStream = ReceiverStream<Result<GoalStateOperationReply, Status>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Batch>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { Ok(Response::new(service.stream(request.into_inner()))) })
    }
}

/// The agent reads V2 messages straight into batches.
impl ReadMessage for Batch {
    type Error = WireError;

    fn read(message: &mut DecodeBuf<'_>) -> Result<Batch, WireError> {
        // Split off the receive buffer, not copied.
        Batch::from_encoded_v2(&message.copy_to_bytes(message.remaining()))
    }
}
