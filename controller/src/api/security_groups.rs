//! Security groups and their rules.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::get,
};
use serde_json::Value;

use super::{
    App, if_match, json_body,
    query::ListQuery,
    resources::{created, listing, show, shown},
};
use crate::{
    body::resource,
    error::ApiResult,
    model::{
        SecurityGroup,
        security_group::{RuleCreate, SecurityGroupCreate, SecurityGroupUpdate},
    },
};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2.0/security-groups", get(list_groups).post(create_group))
        .route(
            "/v2.0/security-groups/{id}",
            get(show::<SecurityGroup>)
                .put(update_group)
                .delete(delete_group),
        )
        .route(
            "/v2.0/security-group-rules",
            get(list_rules).post(create_rule),
        )
        .route(
            "/v2.0/security-group-rules/{id}",
            get(show_rule).delete(delete_rule),
        )
}

/// Lists the groups, after making the default group of the projects the
/// list is for (those it filters on, else the default project: with no
/// authentication, the caller's), as Neutron makes the caller's.
async fn list_groups(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(raw.as_deref())?;
    let mut projects: Vec<String> = ["project_id", "tenant_id"]
        .iter()
        .flat_map(|name| query.values(name).iter().cloned())
        .collect();
    if projects.is_empty() {
        projects.push(app.controller.policy().default_project.clone());
    }
    let groups = app.controller.security_groups(&projects).await?;
    listing(&headers, "security_groups", &groups, raw)
}

async fn create_group(State(app): State<Arc<App>>, body: Body) -> ApiResult<Response> {
    let create = SecurityGroupCreate::parse(resource(&json_body(body).await?, "security_group")?)?;
    Ok(created(
        &app.controller.create_security_group(create).await?,
    ))
}

async fn update_group(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let update = SecurityGroupUpdate::parse(resource(&json_body(body).await?, "security_group")?)?;
    let if_match = if_match(&headers)?;
    let group = app
        .controller
        .update_security_group(&id, update, if_match)
        .await?;
    shown(&group, None)
}

async fn delete_group(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    app.controller
        .delete_security_group(&id, if_match(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_rules(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let rules = app.controller.rules().await?;
    listing(&headers, "security_group_rules", &rules, raw)
}

async fn create_rule(State(app): State<Arc<App>>, body: Body) -> ApiResult<Response> {
    let create = RuleCreate::parse(resource(&json_body(body).await?, "security_group_rule")?)?;
    Ok(created(&app.controller.create_rule(create).await?))
}

async fn show_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    shown(&app.controller.show_rule(&id).await?, raw)
}

async fn delete_rule(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    app.controller.delete_rule(&id, if_match(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
