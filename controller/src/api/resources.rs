//! The resource collections: list, create (bulk for ports), show, update,
//! delete, each a thin handler between the body and the service.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use super::{App, base_url, if_match, json_body, query::ListQuery};
use crate::{
    body::{one_or_many, resource},
    error::ApiResult,
    model::{
        Network, Port, Resource, Subnet,
        network::{NetworkCreate, NetworkUpdate},
        port::{PortCreate, PortUpdate},
        subnet::{SubnetCreate, SubnetUpdate},
    },
};

/// (resource, collection) of what is served.
pub const COLLECTIONS: &[(&str, &str)] = &[
    ("network", "networks"),
    ("subnet", "subnets"),
    ("port", "ports"),
    ("router", "routers"),
    ("floatingip", "floatingips"),
    ("security_group", "security-groups"),
    ("security_group_rule", "security-group-rules"),
];

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v2.0/networks", get(list_networks).post(create_network))
        .route(
            "/v2.0/networks/{id}",
            get(show::<Network>)
                .put(update_network)
                .delete(delete_network),
        )
        .route("/v2.0/subnets", get(list_subnets).post(create_subnet))
        .route(
            "/v2.0/subnets/{id}",
            get(show::<Subnet>).put(update_subnet).delete(delete_subnet),
        )
        .route(
            "/v2.0/network-ip-availabilities",
            get(list_ip_availabilities),
        )
        .route(
            "/v2.0/network-ip-availabilities/{id}",
            get(show_ip_availability),
        )
        .route("/v2.0/ports", get(list_ports).post(create_ports))
        .route(
            "/v2.0/ports/{id}",
            get(show::<Port>).put(update_port).delete(delete_port),
        )
}

/// A list response: the page, and a link to the next one if there is one.
pub(super) fn listing<R: Resource>(
    headers: &HeaderMap,
    collection: &str,
    resources: &[R],
    raw: Option<String>,
) -> ApiResult<Json<Value>> {
    listing_views(
        headers,
        collection,
        resources.iter().map(Resource::view).collect(),
        raw,
    )
}

/// A list response of views.
pub(super) fn listing_views(
    headers: &HeaderMap,
    collection: &str,
    views: Vec<Value>,
    raw: Option<String>,
) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(raw.as_deref())?;
    let page = query.apply(views);
    let mut body = serde_json::Map::new();
    body.insert(collection.into(), Value::Array(page.items));
    if let Some(marker) = page.next_marker {
        let base = format!("{}/v2.0/{collection}", base_url(headers));
        body.insert(
            format!("{collection}_links"),
            json!([{"rel": "next", "href": query.next_link(&base, &marker)}]),
        );
    }
    Ok(Json(Value::Object(body)))
}

pub(super) fn shown<R: Resource>(resource: &R, raw: Option<String>) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(raw.as_deref())?;
    Ok(Json(json!({ R::KIND: query.select(resource.view()) })))
}

pub(super) fn created<R: Resource>(resource: &R) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({ R::KIND: resource.view() })),
    )
        .into_response()
}

pub(super) async fn show<R: Resource>(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    shown(&app.controller.show::<R>(&id).await?, raw)
}

async fn list_networks(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    listing(&headers, "networks", &app.controller.networks().await?, raw)
}

async fn create_network(State(app): State<Arc<App>>, body: Body) -> ApiResult<Response> {
    let body = json_body(body).await?;
    let create = NetworkCreate::parse(resource(&body, "network")?)?;
    Ok(created(&app.controller.create_network(create).await?))
}

async fn update_network(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let body = json_body(body).await?;
    let update = NetworkUpdate::parse(resource(&body, "network")?)?;
    let network = app
        .controller
        .update_network(&id, update, if_match(&headers)?)
        .await?;
    shown(&network, None)
}

async fn delete_network(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    app.controller
        .delete_network(&id, if_match(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_subnets(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    listing(&headers, "subnets", &app.controller.subnets().await?, raw)
}

async fn create_subnet(State(app): State<Arc<App>>, body: Body) -> ApiResult<Response> {
    let body = json_body(body).await?;
    let create = SubnetCreate::parse(resource(&body, "subnet")?)?;
    Ok(created(&app.controller.create_subnet(create).await?))
}

async fn update_subnet(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let body = json_body(body).await?;
    let update = SubnetUpdate::parse(resource(&body, "subnet")?)?;
    let subnet = app
        .controller
        .update_subnet(&id, update, if_match(&headers)?)
        .await?;
    shown(&subnet, None)
}

async fn delete_subnet(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    app.controller
        .delete_subnet(&id, if_match(&headers)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Neutron's `network-ip-availability`: per network and subnet, the pool
/// addresses there are and those given out.
async fn ip_availability(app: &App, network: &Network) -> ApiResult<Value> {
    let mut subnets = Vec::new();
    let (mut used, mut total) = (0, 0);
    for id in &network.subnets {
        let subnet = app.controller.show::<Subnet>(id).await?;
        let (subnet_used, subnet_total) = app.controller.ip_availability(&subnet).await?;
        used += subnet_used;
        total += subnet_total;
        subnets.push(json!({
            "subnet_id": subnet.meta.id,
            "subnet_name": subnet.meta.name,
            "cidr": subnet.cidr.to_string(),
            "ip_version": 4,
            "used_ips": subnet_used,
            "total_ips": subnet_total,
        }));
    }
    Ok(json!({
        "network_id": network.meta.id,
        "network_name": network.meta.name,
        "project_id": network.meta.project_id,
        "tenant_id": network.meta.project_id,
        "used_ips": used,
        "total_ips": total,
        "subnet_ip_availability": subnets,
    }))
}

async fn list_ip_availabilities(
    State(app): State<Arc<App>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = ListQuery::parse(raw.as_deref())?;
    let mut views = Vec::new();
    for network in app.controller.networks().await? {
        views.push(ip_availability(&app, &network).await?);
    }
    let page = query.apply(views);
    Ok(Json(json!({ "network_ip_availabilities": page.items })))
}

async fn show_ip_availability(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let network = app.controller.show::<Network>(&id).await?;
    Ok(Json(
        json!({ "network_ip_availability": ip_availability(&app, &network).await? }),
    ))
}

async fn list_ports(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    listing(
        &headers,
        "ports",
        &app.controller.list::<Port>().await?,
        raw,
    )
}

/// One port (`{"port": …}`), or several at once, all or none
/// (`{"ports": […]}`).
async fn create_ports(State(app): State<Arc<App>>, body: Body) -> ApiResult<Response> {
    let body = json_body(body).await?;
    let (items, bulk) = one_or_many(&body, "port", "ports")?;
    let creates = items
        .into_iter()
        .map(PortCreate::parse)
        .collect::<ApiResult<Vec<_>>>()?;
    let ports = app.controller.create_ports(&creates).await?;
    if bulk {
        let views: Vec<Value> = ports.iter().map(Resource::view).collect();
        return Ok((StatusCode::CREATED, Json(json!({ "ports": views }))).into_response());
    }
    Ok(created(&ports[0]))
}

async fn update_port(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let body = json_body(body).await?;
    let update = PortUpdate::parse(resource(&body, "port")?)?;
    let port = app
        .controller
        .update_port(&id, &update, if_match(&headers)?)
        .await?;
    shown(&port, None)
}

async fn delete_port(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    app.controller.delete_port(&id, if_match(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI 3 document of what is served.
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    let error = json!({"description": "A Neutron error: {\"NeutronError\": {\"type\", \"message\", \"detail\"}}"});
    for (resource, collection) in COLLECTIONS {
        let body = json!({"content": {"application/json": {"schema": {"type": "object",
            "properties": {resource.to_string(): {"type": "object"}}, "required": [resource]}}}});
        paths.insert(
            format!("/v2.0/{collection}"),
            json!({
                "get": {"summary": format!("List {collection} (filters on any attribute, fields, sort_key, sort_dir, limit, marker)"),
                        "responses": {"200": {"description": format!("{{\"{collection}\": [...]}}")}}},
                "post": {"summary": format!("Create a {resource}"), "requestBody": body,
                         "responses": {"201": {"description": format!("{{\"{resource}\": {{...}}}}")},
                                       "400": error, "404": error, "409": error, "413": error}},
            }),
        );
        paths.insert(
            format!("/v2.0/{collection}/{{id}}"),
            json!({
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": format!("Show a {resource}"), "responses": {"200": {"description": "the resource"}, "404": error}},
                "put": {"summary": format!("Update a {resource} (If-Match: revision_number=N)"), "requestBody": body,
                        "responses": {"200": {"description": "the resource"}, "400": error, "404": error, "409": error, "412": error}},
                "delete": {"summary": format!("Delete a {resource}"),
                           "responses": {"204": {"description": "deleted"}, "404": error, "409": error, "412": error}},
            }),
        );
    }
    // Rules are created and deleted, never changed.
    if let Some(Value::Object(rule)) = paths.get_mut("/v2.0/security-group-rules/{id}") {
        rule.remove("put");
    }
    for (action, summary) in [
        (
            "add_router_interface",
            "Add an interface on a subnet (a new port with its gateway IP) or a port",
        ),
        (
            "remove_router_interface",
            "Remove an interface (by subnet or port) and delete its port",
        ),
    ] {
        paths.insert(
            format!("/v2.0/routers/{{id}}/{action}"),
            json!({
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "put": {"summary": summary,
                        "requestBody": {"content": {"application/json": {"schema": {"type": "object",
                            "properties": {"subnet_id": {"type": "string"}, "port_id": {"type": "string"}}}}}},
                        "responses": {"200": {"description": "{\"id\", \"subnet_id\", \"subnet_ids\", \"port_id\", \"network_id\", \"project_id\", \"tenant_id\"}"},
                                      "400": error, "404": error, "409": error}},
            }),
        );
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "alcor-controller: Neutron v2.0 API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
    })
}
