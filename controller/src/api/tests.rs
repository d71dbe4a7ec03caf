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
        let app = Arc::new(App {
            controller: Arc::new(controller),
            auth,
        });
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
                // The asked address first: a random one could take it.
                {"network_id": net, "name": "b", "fixed_ips": [{"ip_address": "10.1.0.50"}]},
                {"network_id": net, "name": "a"},
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

impl Client {
    /// Sends a request that must be refused with Neutron's `kind`; the
    /// error body.
    async fn refused(
        &self,
        method: &str,
        uri: &str,
        body: Option<Value>,
        status: StatusCode,
        kind: &str,
    ) -> Value {
        let (got, answer) = self.call(method, uri, body).await;
        assert_eq!((got, error_type(&answer)), (status, kind), "{answer}");
        answer
    }

    /// Creates a resource; the created object (`{"network": {...}}`'s
    /// inside).
    async fn create(&self, collection: &str, kind: &str, body: Value) -> Value {
        let (status, created) = self
            .call(
                "POST",
                &format!("/v2.0/{collection}"),
                Some(json!({ kind: body })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{collection}: {created}");
        created[kind].clone()
    }

    /// A network with a subnet of `cidr`: their ids.
    async fn network_with_subnet(&self, network: Value, cidr: &str) -> (String, String) {
        let network = self.create("networks", "network", network).await;
        let id = network["id"].as_str().unwrap().to_string();
        let subnet = self
            .create(
                "subnets",
                "subnet",
                json!({"network_id": id, "cidr": cidr, "ip_version": 4}),
            )
            .await;
        (id, subnet["id"].as_str().unwrap().to_string())
    }
}

fn id(resource: &Value) -> String {
    resource["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn routers_and_interfaces_as_the_cli_drives_them() {
    let client = Client::new(Auth::None);
    let (external, _) = client
        .network_with_subnet(
            json!({"name": "public", "router:external": true}),
            "203.0.113.0/28",
        )
        .await;
    let (internal, inside) = client
        .network_with_subnet(json!({"name": "private"}), "10.0.0.0/24")
        .await;
    let router = client
        .create(
            "routers",
            "router",
            json!({"name": "r1", "external_gateway_info": {"network_id": external}}),
        )
        .await;
    let router_id = id(&router);
    assert_eq!(router["status"], "ACTIVE");
    assert_eq!(router["routes"], json!([]));
    let gateway = &router["external_gateway_info"];
    assert_eq!(
        (
            gateway["network_id"].as_str(),
            gateway["enable_snat"].as_bool()
        ),
        (Some(external.as_str()), Some(true))
    );
    assert_eq!(gateway["external_fixed_ips"].as_array().unwrap().len(), 1);

    let add = format!("/v2.0/routers/{router_id}/add_router_interface");
    let remove = format!("/v2.0/routers/{router_id}/remove_router_interface");
    let (status, info) = client
        .call("PUT", &add, Some(json!({"subnet_id": inside})))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["id"], router_id.as_str());
    assert_eq!(
        (info["subnet_id"].as_str(), info["network_id"].as_str()),
        (Some(inside.as_str()), Some(internal.as_str()))
    );
    assert_eq!(info["subnet_ids"], json!([inside]));
    let port_id = info["port_id"].as_str().unwrap().to_string();
    assert_eq!(info["project_id"], info["tenant_id"]);

    let before = client.snapshot().await;
    let body = client
        .refused(
            "PUT",
            &add,
            Some(json!({"subnet_id": inside})),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        )
        .await;
    assert_eq!(
        body["NeutronError"]["message"],
        format!("Bad router request: Router already has a port on subnet {inside}.")
    );
    client
        .refused(
            "PUT",
            &add,
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        )
        .await;
    let (status, body) = client
        .call("DELETE", &format!("/v2.0/ports/{port_id}"), None)
        .await;
    assert_eq!(
        (status, error_type(&body)),
        (StatusCode::CONFLICT, "L3PortInUse")
    );
    assert_eq!(
        body["NeutronError"]["message"],
        format!(
            "Port {port_id} cannot be deleted directly via the port API: has device owner network:router_interface."
        )
    );
    client
        .refused(
            "DELETE",
            &format!("/v2.0/routers/{router_id}"),
            None,
            StatusCode::CONFLICT,
            "RouterInUse",
        )
        .await;
    assert_eq!(client.snapshot().await, before, "refused: nothing written");

    // What `openstack router show` lists as its interfaces.
    let (_, ports) = client
        .call("GET", &format!("/v2.0/ports?device_id={router_id}"), None)
        .await;
    let mut owners: Vec<&str> = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["device_owner"].as_str().unwrap())
        .collect();
    owners.sort();
    assert_eq!(
        owners,
        ["network:router_gateway", "network:router_interface"]
    );

    let (status, info) = client
        .call("PUT", &remove, Some(json!({"subnet_id": inside})))
        .await;
    assert_eq!(
        (status, info["port_id"].as_str()),
        (StatusCode::OK, Some(port_id.as_str()))
    );
    client
        .refused(
            "PUT",
            &remove,
            Some(json!({"subnet_id": inside})),
            StatusCode::NOT_FOUND,
            "RouterInterfaceNotFoundForSubnet",
        )
        .await;
    client
        .refused(
            "PUT",
            &remove,
            Some(json!({"port_id": port_id})),
            StatusCode::NOT_FOUND,
            "RouterInterfaceNotFound",
        )
        .await;
    let (status, _) = client
        .call(
            "PUT",
            &format!("/v2.0/routers/{router_id}"),
            Some(json!({"router": {"external_gateway_info": {}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = client
        .call("DELETE", &format!("/v2.0/routers/{router_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    client
        .refused(
            "GET",
            &format!("/v2.0/routers/{router_id}"),
            None,
            StatusCode::NOT_FOUND,
            "RouterNotFound",
        )
        .await;
    let (_, ports) = client.call("GET", "/v2.0/ports", None).await;
    assert_eq!(ports["ports"], json!([]), "the router's ports went with it");
}

#[tokio::test]
async fn security_groups_as_the_cli_drives_them() {
    let client = Client::new(Auth::None);
    let (status, body) = client
        .call("GET", "/v2.0/extensions/security-group", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Listing makes the project's default group, once.
    for _ in 0..2 {
        let (_, listed) = client
            .call("GET", "/v2.0/security-groups?name=default", None)
            .await;
        let groups = listed["security_groups"].as_array().unwrap();
        assert_eq!(groups.len(), 1, "{listed}");
        assert_eq!(
            groups[0]["security_group_rules"].as_array().unwrap().len(),
            4
        );
        assert_eq!(groups[0]["stateful"], true);
    }
    let (_, listed) = client
        .call("GET", "/v2.0/security-groups?name=default", None)
        .await;
    let default = id(&listed["security_groups"][0]);

    let web = client
        .create(
            "security-groups",
            "security_group",
            json!({"name": "web", "description": "front"}),
        )
        .await;
    let web_id = id(&web);
    assert_eq!(web["security_group_rules"].as_array().unwrap().len(), 2);
    let ssh = json!({"security_group_id": web_id, "direction": "ingress", "ethertype": "IPv4",
        "protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"});
    let rule = client
        .create("security-group-rules", "security_group_rule", ssh.clone())
        .await;
    let rule_id = id(&rule);
    assert_eq!(
        (rule["protocol"].as_str(), rule["port_range_min"].as_u64()),
        (Some("tcp"), Some(22))
    );
    assert_eq!(rule["remote_group_id"], Value::Null);
    let before = client.snapshot().await;
    client
        .refused(
            "POST",
            "/v2.0/security-group-rules",
            Some(json!({"security_group_rule": ssh})),
            StatusCode::CONFLICT,
            "SecurityGroupRuleExists",
        )
        .await;
    client.refused("POST", "/v2.0/security-group-rules", Some(json!({"security_group_rule": {
            "security_group_id": web_id, "direction": "ingress", "protocol": "icmp", "port_range_min": 300}})), StatusCode::BAD_REQUEST, "SecurityGroupInvalidIcmpValue").await;
    assert_eq!(client.snapshot().await, before);
    let (status, shown) = client
        .call(
            "GET",
            &format!("/v2.0/security-group-rules/{rule_id}"),
            None,
        )
        .await;
    assert_eq!(
        (status, id(&shown["security_group_rule"])),
        (StatusCode::OK, rule_id.clone())
    );
    let (_, rules) = client
        .call(
            "GET",
            &format!("/v2.0/security-group-rules?security_group_id={web_id}"),
            None,
        )
        .await;
    assert_eq!(rules["security_group_rules"].as_array().unwrap().len(), 3);

    // A port: the default group unless it names others.
    let (network, _) = client.network_with_subnet(json!({}), "10.0.0.0/24").await;
    let plain = client
        .create("ports", "port", json!({"network_id": network}))
        .await;
    assert_eq!(plain["security_groups"], json!([default]));
    let served = client
        .create(
            "ports",
            "port",
            json!({"network_id": network, "security_groups": [web_id]}),
        )
        .await;
    assert_eq!(served["security_groups"], json!([web_id]));
    client
        .refused(
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": network, "security_groups": ["nope"]}})),
            StatusCode::NOT_FOUND,
            "SecurityGroupNotFound",
        )
        .await;
    client
        .refused(
            "DELETE",
            &format!("/v2.0/security-groups/{web_id}"),
            None,
            StatusCode::CONFLICT,
            "SecurityGroupInUse",
        )
        .await;
    client
        .refused(
            "DELETE",
            &format!("/v2.0/security-groups/{default}"),
            None,
            StatusCode::CONFLICT,
            "SecurityGroupCannotRemoveDefault",
        )
        .await;

    let (status, _) = client
        .call(
            "DELETE",
            &format!("/v2.0/security-group-rules/{rule_id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    client
        .refused(
            "GET",
            &format!("/v2.0/security-group-rules/{rule_id}"),
            None,
            StatusCode::NOT_FOUND,
            "SecurityGroupRuleNotFound",
        )
        .await;
    let (status, _) = client
        .call("DELETE", &format!("/v2.0/ports/{}", id(&served)), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = client
        .call("DELETE", &format!("/v2.0/security-groups/{web_id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn floating_ips_as_the_cli_drives_them() {
    let client = Client::new(Auth::None);
    let (external, _) = client
        .network_with_subnet(json!({"router:external": true}), "203.0.113.0/28")
        .await;
    let (internal, inside) = client.network_with_subnet(json!({}), "10.0.0.0/24").await;
    let router = client
        .create(
            "routers",
            "router",
            json!({"external_gateway_info": {"network_id": external}}),
        )
        .await;
    let router_id = id(&router);
    let (status, _) = client
        .call(
            "PUT",
            &format!("/v2.0/routers/{router_id}/add_router_interface"),
            Some(json!({"subnet_id": inside})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let vm = client
        .create("ports", "port", json!({"network_id": internal}))
        .await;
    let vm_id = id(&vm);

    client
        .refused(
            "POST",
            "/v2.0/floatingips",
            Some(json!({"floatingip": {"floating_network_id": internal}})),
            StatusCode::BAD_REQUEST,
            "BadRequest",
        )
        .await;
    let fip = client
        .create(
            "floatingips",
            "floatingip",
            json!({"floating_network_id": external}),
        )
        .await;
    let fip_id = id(&fip);
    assert_eq!(fip["status"], "DOWN");
    assert_eq!(
        (fip["port_id"].clone(), fip["router_id"].clone()),
        (Value::Null, Value::Null)
    );
    assert!(
        fip["floating_ip_address"]
            .as_str()
            .unwrap()
            .starts_with("203.0.113.")
    );
    assert!(fip.get("name").is_none());

    let uri = format!("/v2.0/floatingips/{fip_id}");
    let (status, set) = client
        .call("PUT", &uri, Some(json!({"floatingip": {"port_id": vm_id}})))
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    let set = &set["floatingip"];
    assert_eq!(
        (set["port_id"].as_str(), set["router_id"].as_str()),
        (Some(vm_id.as_str()), Some(router_id.as_str()))
    );
    assert_eq!(set["fixed_ip_address"], vm["fixed_ips"][0]["ip_address"]);
    let (_, listed) = client
        .call("GET", &format!("/v2.0/floatingips?port_id={vm_id}"), None)
        .await;
    assert_eq!(listed["floatingips"].as_array().unwrap().len(), 1);
    let (status, unset) = client
        .call("PUT", &uri, Some(json!({"floatingip": {"port_id": null}})))
        .await;
    assert_eq!(
        (status, unset["floatingip"]["port_id"].clone()),
        (StatusCode::OK, Value::Null)
    );
    assert_eq!(unset["floatingip"]["router_id"], Value::Null);

    let (status, _) = client.call("DELETE", &uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    client
        .refused(
            "GET",
            &uri,
            None,
            StatusCode::NOT_FOUND,
            "FloatingIPNotFound",
        )
        .await;
    let (_, ports) = client
        .call("GET", &format!("/v2.0/ports?network_id={external}"), None)
        .await;
    let owners: Vec<&str> = ports["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["device_owner"].as_str().unwrap())
        .collect();
    assert_eq!(
        owners,
        ["network:router_gateway"],
        "the floating IP's port went with it"
    );
}
