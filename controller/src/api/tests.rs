//! The API through its router, as a client sees it: status codes, bodies,
//! Neutron's errors, and a store left as it was by a refused request.

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{App, Auth, MAX_BODY, router};
use crate::service::testing;

struct Client {
    router: Router,
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

impl Client {
    fn new(auth: Auth) -> Client {
        let (dir, controller) = testing::controller();
        let app = Arc::new(App { controller, auth });
        Client {
            router: router(app.clone()),
            app,
            _dir: dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
        };
        (status, body)
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-auth-token", "notused")
            .header("content-type", "application/json");
        let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
        self.send(request.body(body).unwrap()).await
    }

    async fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        testing::snapshot(&self.app.controller).await
    }
}

fn error_type(body: &Value) -> &str {
    body["NeutronError"]["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn discovery_and_extensions() {
    let client = Client::new(Auth::None);
    let (status, body) = client.call("GET", "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["versions"][0]["id"], "v2.0");
    let (_, body) = client.call("GET", "/v2.0", None).await;
    assert_eq!(body["version"]["status"], "CURRENT");
    let (_, body) = client.call("GET", "/v2.0/extensions", None).await;
    assert!(
        body["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["alias"] == "binding")
    );
    let (status, body) = client.call("GET", "/v2.0/extensions/provider", None).await;
    assert_eq!(
        (status, body["extension"]["alias"].clone()),
        (StatusCode::OK, json!("provider"))
    );
    let (status, body) = client
        .call("GET", "/v2.0/extensions/dns-integration", None)
        .await;
    assert_eq!(
        (status, error_type(&body)),
        (StatusCode::NOT_FOUND, "ExtensionNotFound")
    );
    let (status, body) = client.call("GET", "/v2.0/nothing", None).await;
    assert_eq!(
        (status, error_type(&body)),
        (StatusCode::NOT_FOUND, "HTTPNotFound")
    );
    let (status, body) = client.call("GET", "/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["paths"]["/v2.0/ports/{id}"]["put"].is_object());
}

#[tokio::test]
async fn a_network_from_create_to_delete() {
    let client = Client::new(Auth::None);
    let (status, body) = client
        .call(
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": "demo", "admin_state_up": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let network = &body["network"];
    let id = network["id"].as_str().unwrap().to_string();
    assert_eq!(network["status"], "ACTIVE");
    assert!(network["provider:segmentation_id"].as_u64().unwrap() > 0);
    assert_eq!(network["revision_number"], 1);

    let (_, listed) = client
        .call(
            "GET",
            "/v2.0/networks?name=demo&fields=id&fields=name",
            None,
        )
        .await;
    assert_eq!(listed, json!({"networks": [{"id": id, "name": "demo"}]}));
    let (_, listed) = client.call("GET", "/v2.0/networks?name=other", None).await;
    assert_eq!(listed, json!({"networks": []}));

    let uri = format!("/v2.0/networks/{id}");
    let update = json!({"network": {"name": "renamed"}});
    let request = Request::builder()
        .method("PUT")
        .uri(&uri)
        .header("if-match", "revision_number=5")
        .body(Body::from(update.to_string()))
        .unwrap();
    let (status, body) = client.send(request).await;
    assert_eq!(
        (status, error_type(&body)),
        (
            StatusCode::PRECONDITION_FAILED,
            "RevisionNumberConstraintFailed"
        )
    );
    let (status, body) = client.call("PUT", &uri, Some(update)).await;
    assert_eq!(
        (status, body["network"]["revision_number"].clone()),
        (StatusCode::OK, json!(2))
    );

    let (status, _) = client.call("DELETE", &uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = client.call("GET", &uri, None).await;
    assert_eq!(
        (status, error_type(&body)),
        (StatusCode::NOT_FOUND, "NetworkNotFound")
    );
    assert_eq!(
        body["NeutronError"]["message"],
        format!("Network {id} could not be found.")
    );
}

#[tokio::test]
async fn bad_requests_say_why_and_write_nothing() {
    let client = Client::new(Auth::None);
    let (_, network) = client
        .call("POST", "/v2.0/networks", Some(json!({"network": {}})))
        .await;
    let network_id = network["network"]["id"].as_str().unwrap().to_string();
    let before = client.snapshot().await;
    let raw = |text: &str| {
        Request::builder()
            .method("POST")
            .uri("/v2.0/networks")
            .body(Body::from(text.to_string()))
            .unwrap()
    };
    let (status, body) = client.send(raw("{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = client.send(raw(&" ".repeat(MAX_BODY + 1))).await;
    assert_eq!(
        (status, error_type(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "HTTPRequestEntityTooLarge")
    );
    let cases = [
        (
            "/v2.0/networks",
            json!({"network": {"name": "x", "colour": "blue"}}),
            400,
            "Unrecognized attribute(s) 'colour'",
        ),
        ("/v2.0/networks", json!({"nets": {}}), 400, "network"),
        (
            "/v2.0/networks",
            json!({"network": {"admin_state_up": "maybe"}}),
            400,
            "boolean",
        ),
        (
            "/v2.0/subnets",
            json!({"subnet": {"network_id": network_id, "cidr": "10.0.0.0/33"}}),
            400,
            "CIDR",
        ),
        (
            "/v2.0/subnets",
            json!({"subnet": {"network_id": "missing", "cidr": "10.0.0.0/24"}}),
            404,
            "missing",
        ),
        (
            "/v2.0/ports",
            json!({"port": {"network_id": network_id, "mac_address": "zz"}}),
            400,
            "MAC",
        ),
    ];
    for (uri, body, status, words) in cases {
        let (got, answer) = client.call("POST", uri, Some(body.clone())).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
        let message = answer["NeutronError"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
    }
    assert_eq!(
        client.snapshot().await,
        before,
        "refused requests wrote nothing"
    );
}

#[tokio::test]
async fn ports_in_bulk_are_all_or_nothing_and_taken_addresses_are_409() {
    let client = Client::new(Auth::None);
    let (_, network) = client
        .call("POST", "/v2.0/networks", Some(json!({"network": {}})))
        .await;
    let net = network["network"]["id"].as_str().unwrap().to_string();
    let (status, subnet) = client
        .call(
            "POST",
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{subnet}");
    let (status, ports) = client
        .call(
            "POST",
            "/v2.0/ports",
            Some(json!({"ports": [
                {"network_id": net, "name": "a"},
                {"network_id": net, "name": "b", "fixed_ips": [{"ip_address": "10.1.0.50"}]},
            ]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ports}");
    assert_eq!(ports["ports"].as_array().unwrap().len(), 2);
    let before = client.snapshot().await;
    let (status, body) = client
        .call(
            "POST",
            "/v2.0/ports",
            Some(json!({"ports": [
                {"network_id": net, "name": "c"},
                {"network_id": net, "name": "d", "fixed_ips": [{"ip_address": "10.1.0.50"}]},
            ]})),
        )
        .await;
    assert_eq!(
        (status, error_type(&body)),
        (StatusCode::CONFLICT, "IpAddressAlreadyAllocated")
    );
    assert_eq!(client.snapshot().await, before);
    let (_, listed) = client
        .call("GET", "/v2.0/ports?fixed_ips=ip_address%3D10.1.0.50", None)
        .await;
    assert_eq!(listed["ports"][0]["name"], "b");
    let uri = format!("/v2.0/network-ip-availabilities/{net}");
    let (_, availability) = client.call("GET", &uri, None).await;
    let availability = &availability["network_ip_availability"];
    assert_eq!(availability["used_ips"], 2, "{availability}");
    assert_eq!(availability["total_ips"], 253, "{availability}");
    let (status, body) = client
        .call("DELETE", &format!("/v2.0/networks/{net}"), None)
        .await;
    assert_eq!(
        (status, error_type(&body)),
        (StatusCode::CONFLICT, "NetworkInUse")
    );
}

#[tokio::test]
async fn a_token_guards_everything() {
    let client = Client::new(Auth::Token("s3cret".into()));
    let before = client.snapshot().await;
    let request = |token: Option<&str>| {
        let mut request = Request::builder().method("POST").uri("/v2.0/networks");
        if let Some(token) = token {
            request = request.header("x-auth-token", token);
        }
        request
            .body(Body::from(json!({"network": {}}).to_string()))
            .unwrap()
    };
    for token in [None, Some("notused"), Some("s3cre")] {
        let (status, body) = client.send(request(token)).await;
        assert_eq!(
            (status, error_type(&body)),
            (StatusCode::UNAUTHORIZED, "HTTPUnauthorized")
        );
    }
    assert_eq!(
        client.snapshot().await,
        before,
        "nothing written without the token"
    );
    // Discovery needs none: the CLI asks before it sends its token.
    let discovery = Request::builder().uri("/v2.0").body(Body::empty()).unwrap();
    assert_eq!(client.send(discovery).await.0, StatusCode::OK);
    let (status, _) = client.send(request(Some("s3cret"))).await;
    assert_eq!(status, StatusCode::CREATED);
}
