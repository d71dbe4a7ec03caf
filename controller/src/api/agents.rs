//! `GET /v2.0/agents` and `/v2.0/agents/{id}`: the registered agents, as
//! `openstack network agent list` shows them. They register over gRPC
//! (`registry`), not through this API.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::HeaderMap,
    routing::get,
};
use serde_json::{Value, json};

use super::{App, query::ListQuery, resources::listing_views};
use crate::error::{ApiError, ApiResult};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2.0/agents", get(list_agents))
        .route("/v2.0/agents/{id}", get(show_agent))
}

async fn list_agents(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    listing_views(&headers, "agents", app.controller.agent_views().await?, raw)
}

async fn show_agent(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(raw.as_deref())?;
    let agent = app
        .controller
        .agent_views()
        .await?
        .into_iter()
        .find(|view| view["id"] == id.as_str())
        .ok_or_else(|| {
            ApiError::new(
                404,
                "AgentNotFound",
                format!("Agent {id} could not be found."),
            )
        })?;
    Ok(Json(json!({ "agent": query.select(agent) })))
}
