//! Where agents reach the controller (`--grpc-listen`): `AgentRegistry`
//! (registration and heartbeat) and `GoalStateProvisioner.RequestGoalStates`
//! (an agent asking for its whole state). The goal state itself goes the
//! other way, over the agent's own service (`southbound`), from whichever
//! controller instance serves the agent: these calls may arrive at any.

use std::sync::Arc;

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
use futures::stream::BoxStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    error::ApiError,
    model::agent::{HEARTBEAT_INTERVAL, Heartbeat, Registration},
    service::Controller,
};

#[derive(Clone)]
pub struct Registry {
    controller: Arc<Controller>,
}

impl Registry {
    pub fn new(controller: Arc<Controller>) -> Registry {
        Registry { controller }
    }

    pub fn services(
        self,
    ) -> (
        AgentRegistryServer<Registry>,
        GoalStateProvisionerServer<Registry>,
    ) {
        (
            AgentRegistryServer::new(self.clone()),
            GoalStateProvisionerServer::new(self),
        )
    }
}

fn unavailable(error: ApiError) -> Status {
    Status::unavailable(error.to_string())
}

#[tonic::async_trait]
impl AgentRegistry for Registry {
    async fn heartbeat(
        &self,
        request: Request<AgentHeartbeat>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let beat = request.into_inner();
        let registration = Registration::parse(
            &beat.host_id,
            &beat.underlay_ip,
            &beat.underlay_mac,
            &beat.goal_state_endpoint,
            &beat.agent_version,
        )
        .map_err(Status::invalid_argument)?;
        let changed = self
            .controller
            .register_agent(
                &registration,
                beat.started,
                Heartbeat::now(beat.ports, beat.ports_ready),
            )
            .await
            .map_err(unavailable)?;
        if changed {
            tracing::info!(
                host = %registration.host_id,
                underlay = %registration.underlay_ip,
                endpoint = %registration.endpoint,
                started = beat.started,
                "agent registered"
            );
        }
        Ok(Response::new(HeartbeatReply {
            heartbeat_interval_ms: u32::try_from(HEARTBEAT_INTERVAL.as_millis())
                .unwrap_or(u32::MAX),
        }))
    }
}

#[tonic::async_trait]
impl GoalStateProvisioner for Registry {
    type PushGoalStatesStreamStream = BoxStream<'static, Result<GoalStateOperationReply, Status>>;

    async fn push_network_resource_states(
        &self,
        _request: Request<GoalState>,
    ) -> Result<Response<GoalStateOperationReply>, Status> {
        Err(pushes_go_to_agents())
    }

    async fn push_goal_states_stream(
        &self,
        _request: Request<Streaming<GoalStateV2>>,
    ) -> Result<Response<Self::PushGoalStatesStreamStream>, Status> {
        Err(pushes_go_to_agents())
    }

    /// An agent asks for its whole state: the request is recorded in the
    /// store, where the instance that serves the agent (this one or
    /// another) sees it, and its session sends the whole state again. The
    /// state comes over the agent's own stream; the reply only says the
    /// request was taken.
    async fn request_goal_states(
        &self,
        request: Request<HostRequest>,
    ) -> Result<Response<HostRequestReply>, Status> {
        let request = request.into_inner();
        if request.host_id.is_empty() {
            return Err(Status::invalid_argument(
                "host_id is empty: the controller needs to know whose state to send",
            ));
        }
        let registered = self
            .controller
            .agent_registered(&request.host_id)
            .await
            .map_err(unavailable)?;
        if !registered {
            return Err(Status::failed_precondition(format!(
                "host {} has not registered: send AgentRegistry.Heartbeat first",
                request.host_id
            )));
        }
        self.controller
            .request_resync(&request.host_id)
            .await
            .map_err(unavailable)?;
        let statuses = request
            .state_requests
            .iter()
            .map(|state| HostRequestOperationStatus {
                request_id: state.request_id.clone(),
                operation_status: OperationStatus::Success as i32,
            })
            .collect();
        tracing::info!(
            host = %request.host_id,
            restarted = request
                .state_requests
                .iter()
                .any(|state| state.request_type == RequestType::AgentRestarted as i32),
            "agent asked for its whole state"
        );
        Ok(Response::new(HostRequestReply {
            format_version: request.format_version,
            operation_statuses: statuses,
            total_operation_time: 0,
        }))
    }
}

fn pushes_go_to_agents() -> Status {
    Status::unimplemented(
        "the controller pushes goal state to agents; it does not take any (push to an agent)",
    )
}
