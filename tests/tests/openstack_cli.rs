//! The `openstack` CLI harness, proved against a fake Neutron in this test
//! that records every request the real CLI makes: the commands succeed,
//! their JSON is parsed, the token is sent, and nothing goes anywhere but
//! the endpoint.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::Duration,
};

use alcor_tests::openstack::{self, Cli};
use serde_json::{Value, json};

/// One request as the fake received it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    query: String,
    headers: BTreeMap<String, String>,
    body: Value,
}

impl Request {
    /// `METHOD PATH[?QUERY]`, for comparing sequences.
    fn line(&self) -> String {
        match self.query.as_str() {
            "" => format!("{} {}", self.method, self.path),
            query => format!("{} {}?{query}", self.method, self.path),
        }
    }

    fn token(&self) -> Option<&str> {
        self.headers.get("x-auth-token").map(String::as_str)
    }
}

/// Collections the fake serves, with the key of one member.
const COLLECTIONS: &[(&str, &str)] = &[("networks", "network"), ("ports", "port")];

#[derive(Default)]
struct State {
    /// If set, every list has a `next` link there (pagination).
    next_link: Option<String>,
    requests: Vec<Request>,
    /// Members by collection, in creation order.
    stored: BTreeMap<String, Vec<Value>>,
}

/// A Neutron-shaped HTTP server on 127.0.0.1 that answers what the tests
/// below send (version discovery, networks and ports by id and by name, no
/// extensions) and records every request; stopped when dropped. As the
/// CLI's proxy, it records what it is asked for other hosts.
struct FakeNeutron {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl FakeNeutron {
    fn start() -> FakeNeutron {
        FakeNeutron::with_next_link(None)
    }

    fn with_next_link(next_link: Option<&str>) -> FakeNeutron {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            next_link: next_link.map(str::to_string),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, stopping) = (state.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                thread::spawn(move || serve(stream, &shared));
            }
        });
        FakeNeutron { port, state, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn endpoint(&self) -> String {
        format!("{}/v2.0", self.url())
    }

    /// The requests received so far, forgotten.
    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut self.state.lock().unwrap().requests)
    }
}

impl Drop for FakeNeutron {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Serves one connection's requests (the CLI keeps connections alive); a
/// connection idle for 10 s is closed.
fn serve(stream: TcpStream, state: &Mutex<State>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        let (status, body) = {
            let mut state = state.lock().unwrap();
            state.requests.push(request.clone());
            answer(&mut state, &request)
        };
        let body = body.to_string();
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            if status < 400 { "OK" } else { "Error" },
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn read_request(reader: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let (method, target) = (words.next()?.to_string(), words.next()?);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers
        .get("content-length")
        .map_or(Some(0), |l| l.parse().ok())?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Some(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

fn not_found(what: &str) -> (u16, Value) {
    let message = format!("{what} could not be found.");
    (
        404,
        json!({"NeutronError": {"type": "NotFound", "message": message, "detail": ""}}),
    )
}

/// Neutron's answer, as far as these tests need it.
fn answer(state: &mut State, request: &Request) -> (u16, Value) {
    static NEXT_ID: AtomicU32 = AtomicU32::new(1);
    let Some(rest) = request.path.strip_prefix("/v2.0") else {
        return not_found(&request.path);
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    let method = request.method.as_str();
    match (method, parts.as_slice()) {
        // Version discovery: keystoneauth needs `status` and a `self` link.
        ("GET", []) => (
            200,
            json!({"version": {"id": "v2.0", "status": "CURRENT",
                "links": [{"rel": "self", "href": ""}]}}),
        ),
        ("GET", ["extensions"]) => (200, json!({"extensions": []})),
        ("GET", ["extensions", alias]) => not_found(&format!("Extension {alias}")),
        (_, [collection, rest @ ..]) => {
            let Some((_, member)) = COLLECTIONS.iter().find(|(c, _)| c == collection) else {
                return not_found(collection);
            };
            let items = state.stored.entry(collection.to_string()).or_default();
            match (method, rest) {
                ("GET", []) => {
                    let name = request.query.strip_prefix("name=");
                    let listed: Vec<&Value> = items
                        .iter()
                        .filter(|item| name.is_none_or(|name| item["name"] == name))
                        .collect();
                    let links: Vec<Value> = state
                        .next_link
                        .iter()
                        .map(|href| json!({"rel": "next", "href": href}))
                        .collect();
                    (
                        200,
                        json!({ *collection: listed, format!("{collection}_links"): links }),
                    )
                }
                ("POST", []) => {
                    let mut item = request.body[member].clone();
                    let id = format!(
                        "{:08}-0000-4000-8000-000000000000",
                        NEXT_ID.fetch_add(1, Ordering::Relaxed)
                    );
                    let defaults = json!({"id": id, "status": "ACTIVE", "project_id": "p1",
                        "revision_number": 0, "subnets": [], "fixed_ips": []});
                    for (key, value) in defaults.as_object().unwrap() {
                        item.as_object_mut()
                            .unwrap()
                            .entry(key.clone())
                            .or_insert(value.clone());
                    }
                    items.push(item.clone());
                    (201, json!({ *member: item }))
                }
                ("GET", [id]) => match items.iter().find(|item| item["id"] == *id) {
                    Some(item) => (200, json!({ *member: item })),
                    None => not_found(&format!("{member} {id}")),
                },
                _ => not_found(&request.path),
            }
        }
        _ => not_found(&request.path),
    }
}

fn lines(requests: &[Request]) -> Vec<String> {
    requests.iter().map(Request::line).collect()
}

#[test]
fn network_list_discovers_then_lists() {
    if !openstack::available("network_list_discovers_then_lists") {
        return;
    }
    let fake = FakeNeutron::start();
    let world = FakeNeutron::start();
    let cli = Cli::new(&fake.endpoint()).unwrap().proxy(&world.url());

    let networks = cli.json(&["network", "list"]).unwrap();
    assert_eq!(networks, json!([]));
    let requests = fake.take();
    assert_eq!(lines(&requests), ["GET /v2.0", "GET /v2.0/networks"]);
    // Discovery goes without a token; everything else with noauth's.
    assert_eq!(requests[0].token(), None);
    assert_eq!(requests[1].token(), Some("notused"));
    for request in &requests {
        assert_eq!(request.headers["host"], format!("127.0.0.1:{}", fake.port));
    }
    assert!(world.take().is_empty(), "a request left the endpoint");
}

#[test]
fn network_create_then_port_create_by_network_name() {
    if !openstack::available("network_create_then_port_create_by_network_name") {
        return;
    }
    let fake = FakeNeutron::start();
    let world = FakeNeutron::start();
    let cli = Cli::new(&fake.endpoint()).unwrap().proxy(&world.url());

    let network = cli.json(&["network", "create", "demo"]).unwrap();
    assert_eq!(network["name"], "demo");
    let requests = fake.take();
    assert_eq!(lines(&requests), ["GET /v2.0", "POST /v2.0/networks"]);
    assert_eq!(
        requests[1].body,
        json!({"network": {"name": "demo", "admin_state_up": true}})
    );

    let port = cli
        .json(&["port", "create", "--network", "demo", "p1"])
        .unwrap();
    assert_eq!(port["network_id"], network["id"]);
    let requests = fake.take();
    assert_eq!(
        lines(&requests),
        [
            "GET /v2.0",
            // The name is tried as an id first, then looked up by name.
            "GET /v2.0/networks/demo",
            "GET /v2.0/networks?name=demo",
            // A clean 404 for the extension, then the list of them all.
            "GET /v2.0/extensions/tag-ports-during-bulk-creation",
            "GET /v2.0/extensions",
            "POST /v2.0/ports",
        ]
    );
    assert_eq!(
        requests[5].body,
        json!({"port": {"name": "p1", "network_id": network["id"], "admin_state_up": true}})
    );
    assert!(requests[1..].iter().all(|r| r.token() == Some("notused")));
    assert!(world.take().is_empty(), "a request left the endpoint");
}

#[test]
fn requests_for_other_hosts_go_to_the_proxy() {
    if !openstack::available("requests_for_other_hosts_go_to_the_proxy") {
        return;
    }
    // The CLI follows a list's `next` link wherever it points: here to a
    // host that does not exist.
    let fake =
        FakeNeutron::with_next_link(Some("http://neutron.invalid:9696/v2.0/networks?marker=x"));
    let world = FakeNeutron::start();
    let cli = Cli::new(&fake.endpoint()).unwrap().proxy(&world.url());

    // Only a page with something in it has a next one.
    cli.json(&["network", "create", "demo"]).unwrap();
    fake.take();
    let output = cli.run(&["network", "list"]).unwrap();
    assert!(!output.success(), "{output:?}");
    assert_eq!(lines(&fake.take()), ["GET /v2.0", "GET /v2.0/networks"]);
    assert_eq!(
        lines(&world.take()),
        ["GET http://neutron.invalid:9696/v2.0/networks?marker=x"]
    );
}

#[test]
fn token_is_sent_without_discovery() {
    if !openstack::available("token_is_sent_without_discovery") {
        return;
    }
    let fake = FakeNeutron::start();
    // The harness drops the trailing `/` that would make the CLI ask for
    // /v2.0/v2.0/networks.
    let cli = Cli::with_token(&format!("{}/", fake.endpoint()), "s3cret").unwrap();

    assert_eq!(cli.json(&["network", "list"]).unwrap(), json!([]));
    let requests = fake.take();
    assert_eq!(lines(&requests), ["GET /v2.0/networks"]);
    assert_eq!(requests[0].token(), Some("s3cret"));
}

#[test]
fn a_failure_carries_the_cli_message() {
    if !openstack::available("a_failure_carries_the_cli_message") {
        return;
    }
    let fake = FakeNeutron::start();
    let cli = Cli::new(&fake.endpoint()).unwrap();

    let output = cli.run(&["network", "show", "nosuch"]).unwrap();
    assert_eq!(output.status, 1);
    assert!(
        output.stderr.contains("No Network found for nosuch"),
        "{output:?}"
    );
    let error = cli.json(&["network", "show", "nosuch"]).unwrap_err();
    assert!(
        format!("{error:#}").contains("No Network found for nosuch"),
        "{error:#}"
    );
    // A command line the CLI rejects.
    assert_eq!(cli.run(&["network", "frobnicate"]).unwrap().status, 2);
}

#[test]
fn batch_runs_commands_in_one_process() {
    if !openstack::available("batch_runs_commands_in_one_process") {
        return;
    }
    let fake = FakeNeutron::start();
    let cli = Cli::new(&fake.endpoint()).unwrap();

    let outputs = cli
        .batch(&[
            &["network", "create", "a", "-f", "json"],
            &["network", "show", "nosuch"],
            &["network", "list", "-f", "json"],
        ])
        .unwrap();
    let mut outputs = outputs.into_iter();
    let created = outputs.next().unwrap().json().unwrap();
    assert_eq!(created["name"], "a");
    let missing = outputs.next().unwrap();
    assert_eq!(missing.status, 1);
    assert!(
        missing.stderr.contains("No Network found for nosuch"),
        "{missing:?}"
    );
    let listed = outputs.next().unwrap().json().unwrap();
    assert_eq!(listed[0]["ID"], created["id"]);
    // Discovery happens once per process.
    assert_eq!(
        lines(&fake.take()),
        [
            "GET /v2.0",
            "POST /v2.0/networks",
            "GET /v2.0/networks/nosuch",
            "GET /v2.0/networks?name=nosuch",
            "GET /v2.0/networks",
        ]
    );
}
