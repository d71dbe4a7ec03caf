//! Routers (with their interfaces) and floating IPs.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::{get, put},
};
use serde_json::Value;

use super::{
    App, if_match, json_body,
    resources::{created, listing, show, shown},
};
use crate::{
    body::resource,
    error::ApiResult,
    model::{
        FloatingIp,
        floating_ip::{FloatingIpCreate, FloatingIpUpdate},
        router::{self, InterfaceRequest, RouterCreate, RouterUpdate},
    },
};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2.0/routers", get(list_routers).post(create_router))
        .route(
            "/v2.0/routers/{id}",
            get(show::<router::Router>)
                .put(update_router)
                .delete(delete_router),
        )
        .route(
            "/v2.0/routers/{id}/add_router_interface",
            put(add_router_interface),
        )
        .route(
            "/v2.0/routers/{id}/remove_router_interface",
            put(remove_router_interface),
        )
        .route(
            "/v2.0/floatingips",
            get(list_floating_ips).post(create_floating_ip),
        )
        .route(
            "/v2.0/floatingips/{id}",
            get(show::<FloatingIp>)
                .put(update_floating_ip)
                .delete(delete_floating_ip),
        )
}

async fn list_routers(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let routers = app.controller.list::<router::Router>().await?;
    listing(&headers, "routers", &routers, raw)
}

async fn create_router(State(app): State<Arc<App>>, body: Body) -> ApiResult<Response> {
    let create = RouterCreate::parse(resource(&json_body(body).await?, "router")?)?;
    Ok(created(&app.controller.create_router(create).await?))
}

async fn update_router(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let update = RouterUpdate::parse(resource(&json_body(body).await?, "router")?)?;
    let if_match = if_match(&headers)?;
    shown(
        &app.controller.update_router(&id, update, if_match).await?,
        None,
    )
}

async fn delete_router(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    app.controller
        .delete_router(&id, if_match(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn add_router_interface(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let request = InterfaceRequest::parse(&json_body(body).await?)?;
    let port = app.controller.add_router_interface(&id, &request).await?;
    Ok(Json(router::interface_info(&id, &port)))
}

async fn remove_router_interface(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let request = InterfaceRequest::parse(&json_body(body).await?)?;
    let port = app
        .controller
        .remove_router_interface(&id, &request)
        .await?;
    Ok(Json(router::interface_info(&id, &port)))
}

async fn list_floating_ips(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let fips = app.controller.list::<FloatingIp>().await?;
    listing(&headers, "floatingips", &fips, raw)
}

async fn create_floating_ip(State(app): State<Arc<App>>, body: Body) -> ApiResult<Response> {
    let create = FloatingIpCreate::parse(resource(&json_body(body).await?, "floatingip")?)?;
    Ok(created(&app.controller.create_floating_ip(create).await?))
}

async fn update_floating_ip(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let update = FloatingIpUpdate::parse(resource(&json_body(body).await?, "floatingip")?)?;
    let if_match = if_match(&headers)?;
    let fip = app
        .controller
        .update_floating_ip(&id, update, if_match)
        .await?;
    shown(&fip, None)
}

async fn delete_floating_ip(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    app.controller
        .delete_floating_ip(&id, if_match(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
