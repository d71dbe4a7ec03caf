//! Neutron's v2.0 REST API over the service: version discovery at `/`,
//! the resources under `/v2.0`, the extensions that say what is served,
//! Neutron's status codes and error bodies. Handlers parse (`body`), call
//! the service, and show the result (`Resource::view`).

mod agents;
mod l3;
pub mod query;
mod resources;
mod security_groups;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::{
    error::{ApiError, ApiResult},
    service::Controller,
};

/// The largest request body taken (a bulk create of a few thousand ports).
pub const MAX_BODY: usize = 4 << 20;

/// Who may call the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Everyone, as an admin (Neutron's `noauth`; the CLI sends
    /// `X-Auth-Token: notused`).
    None,
    /// Whoever sends this token in `X-Auth-Token`.
    Token(String),
}

pub struct App {
    pub controller: Arc<Controller>,
    pub auth: Auth,
}

/// The extensions served, as `GET /v2.0/extensions` lists them: clients
/// look attributes up by these aliases.
const EXTENSIONS: &[(&str, &str, &str)] = &[
    ("agent", "agent", "The agent management extension."),
    (
        "binding",
        "Port Binding",
        "Expose port bindings of a virtual port to external application",
    ),
    (
        "provider",
        "Provider Network",
        "Expose mapping of virtual networks to physical networks",
    ),
    (
        "external-net",
        "Neutron external network",
        "Adds external network attribute to network resource.",
    ),
    (
        "allowed-address-pairs",
        "Allowed Address Pairs",
        "Provides allowed address pairs",
    ),
    ("port-security", "Port Security", "Provides port security"),
    (
        "network-ip-availability",
        "Network IP Availability",
        "Provides IP availability data for each network and subnet.",
    ),
    (
        "network-mtu",
        "Network MTU",
        "Provides MTU attribute for a network resource.",
    ),
    (
        "project-id",
        "project_id field enabled",
        "Extension that indicates that project_id field is enabled.",
    ),
    (
        "standard-attr-description",
        "standard-attr-description",
        "Extension to add descriptions to standard attributes",
    ),
    (
        "standard-attr-revisions",
        "Resource revision numbers",
        "This extension will display the revision number of neutron resources.",
    ),
    (
        "standard-attr-timestamp",
        "Resource timestamps",
        "Adds created_at and updated_at fields to all Neutron resources that have Neutron standard attributes.",
    ),
    (
        "revision-if-match",
        "If-Match constraints based on revision_number",
        "Extension indicating that If-Match based on revision_number is supported.",
    ),
    (
        "pagination",
        "Pagination support",
        "Extension that indicates that pagination is enabled.",
    ),
    (
        "sorting",
        "Sorting support",
        "Extension that indicates that sorting is enabled.",
    ),
    (
        "fields",
        "Fields",
        "Extension that indicates that the fields parameter is supported.",
    ),
    (
        "router",
        "Neutron L3 Router",
        "Router abstraction for basic L3 forwarding between L2 Neutron networks and access to \
         external networks via a NAT gateway.",
    ),
    (
        "ext-gw-mode",
        "Neutron L3 Configurable external gateway mode",
        "Extension of the router abstraction for specifying whether SNAT should occur on the \
         external gateway",
    ),
    (
        "security-group",
        "security-group",
        "The security groups extension.",
    ),
];

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

/// The API, ready to serve.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/v2.0", get(version))
        .route("/v2.0/", get(version))
        .route("/v2.0/extensions", get(extensions))
        .route("/v2.0/extensions/{alias}", get(extension))
        .route("/openapi.json", get(openapi))
        .merge(resources::routes())
        .merge(l3::routes())
        .merge(agents::routes())
        .merge(security_groups::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .with_state(app)
}

/// Refuses requests without the token (when one is configured) before
/// anything is read or written. Version discovery is open, as Neutron's is:
/// the CLI asks for it without a token.
async fn authenticate(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let discovery = matches!(request.uri().path(), "/" | "/v2.0" | "/v2.0/");
    if let Auth::Token(token) = &app.auth
        && !discovery
    {
        let given = request
            .headers()
            .get("x-auth-token")
            .and_then(|value| value.to_str().ok());
        if given != Some(token.as_str()) {
            return ApiError::new(
                401,
                "HTTPUnauthorized",
                "Authentication required: a valid X-Auth-Token.",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// This host's URL as the client named it, for links.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn version_view(headers: &HeaderMap) -> Value {
    json!({
        "id": "v2.0",
        "status": "CURRENT",
        "links": [{"href": format!("{}/v2.0/", base_url(headers)), "rel": "self"}],
    })
}

async fn versions(headers: HeaderMap) -> Json<Value> {
    Json(json!({"versions": [version_view(&headers)]}))
}

/// `GET /v2.0`: the version document openstacksdk's discovery reads
/// (Neutron's own list of resources there makes the CLI fail).
async fn version(headers: HeaderMap) -> Json<Value> {
    Json(json!({"version": version_view(&headers)}))
}

fn extension_view((alias, name, description): &(&str, &str, &str)) -> Value {
    json!({
        "alias": alias,
        "name": name,
        "description": description,
        "updated": "2026-01-01T00:00:00-00:00",
        "links": [],
    })
}

async fn extensions() -> Json<Value> {
    Json(json!({"extensions": EXTENSIONS.iter().map(extension_view).collect::<Vec<_>>()}))
}

async fn extension(
    axum::extract::Path(alias): axum::extract::Path<String>,
) -> ApiResult<Json<Value>> {
    EXTENSIONS
        .iter()
        .find(|(known, ..)| *known == alias)
        .map(|extension| Json(json!({ "extension": extension_view(extension) })))
        .ok_or_else(|| {
            ApiError::new(
                404,
                "ExtensionNotFound",
                format!("Extension with alias {alias} does not exist"),
            )
        })
}

async fn openapi() -> Json<Value> {
    Json(resources::openapi())
}

async fn not_found() -> ApiError {
    ApiError::new(404, "HTTPNotFound", "The resource could not be found.")
}

/// A request body as JSON: 413 past [`MAX_BODY`], 400 if it is not JSON.
pub async fn json_body(body: Body) -> ApiResult<Value> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::new(
            413,
            "HTTPRequestEntityTooLarge",
            format!("Request is too large: at most {MAX_BODY} bytes."),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON in request body: {e}")))
}

/// `If-Match: revision_number=N`, if given.
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default();
    text.split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("revision_number="))
        .map(|number| {
            number.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "If-Match header {text:?} has no valid revision_number"
                ))
            })
        })
        .transpose()
}
