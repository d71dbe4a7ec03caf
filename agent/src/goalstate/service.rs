//! Alcor's `GoalStateProvisioner` over gRPC. Every message goes through the
//! engine one at a time, so replies follow the order of messages.

use std::sync::Arc;

use alcor_proto::schema::{
    GoalState, GoalStateOperationReply, GoalStateV2, HostRequest, HostRequestReply,
    goal_state_provisioner_server::GoalStateProvisioner,
};
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::batch::Batch;
use crate::{
    engine::Engine,
    metrics::{ApiLabels, Metrics},
};

/// Replies a stream may have in flight before the agent waits for the
/// controller to read them.
const STREAM_REPLY_BACKLOG: usize = 16;

pub struct GoalStateService {
    engine: Arc<Mutex<Engine>>,
    metrics: Arc<Metrics>,
}

impl GoalStateService {
    pub fn new(engine: Arc<Mutex<Engine>>, metrics: Arc<Metrics>) -> Self {
        GoalStateService { engine, metrics }
    }
}

/// Applies a message to completion even if the caller goes away: a message
/// is applied whole or not at all.
async fn apply(
    engine: &Arc<Mutex<Engine>>,
    metrics: &Metrics,
    api: &'static str,
    batch: Batch,
) -> Result<GoalStateOperationReply, Status> {
    let engine = engine.clone();
    let reply = tokio::spawn(async move { engine.lock().await.apply(batch).await })
        .await
        .map_err(|e| Status::internal(format!("applying the goal state failed: {e}")))?;
    metrics.messages.get_or_create(&ApiLabels { api }).inc();
    Ok(reply)
}

#[tonic::async_trait]
impl GoalStateProvisioner for GoalStateService {
    async fn push_network_resource_states(
        &self,
        request: Request<GoalState>,
    ) -> Result<Response<GoalStateOperationReply>, Status> {
        let batch = Batch::from(request.into_inner());
        apply(&self.engine, &self.metrics, "v1", batch)
            .await
            .map(Response::new)
    }

    type PushGoalStatesStreamStream = ReceiverStream<Result<GoalStateOperationReply, Status>>;

    async fn push_goal_states_stream(
        &self,
        request: Request<Streaming<GoalStateV2>>,
    ) -> Result<Response<Self::PushGoalStatesStreamStream>, Status> {
        let mut messages = request.into_inner();
        let (replies, outbound) = mpsc::channel(STREAM_REPLY_BACKLOG);
        let engine = self.engine.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            loop {
                let reply = match messages.message().await {
                    Ok(Some(message)) => apply(&engine, &metrics, "v2", message.into()).await,
                    Ok(None) => break,
                    // A message the transport refused (too large, malformed):
                    // the stream ends with the reason.
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if replies.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(outbound)))
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
