//! Prometheus metrics, served in the text format on `--metrics-listen`:
//! the API's requests by method and status, and how long they took; which
//! agents this instance serves, and how often it took over or gave up one.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{Request, State},
    http::header,
    middleware::Next,
    response::Response,
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub id: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    seconds: Histogram,
    /// 1 for each host whose agent this instance pushes to.
    pub agent_sessions: Family<HostLabels, Gauge>,
    pub agent_claims: Counter,
    pub agent_releases: Counter,
    /// This instance's id (what its owner keys say), as a label.
    pub instance: Family<InstanceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("alcor_controller");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests answered, by method and status",
            requests.clone(),
        );
        // 100 µs to ~3 s.
        let seconds = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1e-4, 2.0, 15,
        ));
        registry.register(
            "api_request_seconds",
            "Time to answer an API request",
            seconds.clone(),
        );
        let agent_sessions = Family::<HostLabels, Gauge>::default();
        registry.register(
            "agent_sessions",
            "Agents this instance pushes goal state to (1 per host it serves)",
            agent_sessions.clone(),
        );
        let agent_claims = Counter::default();
        registry.register(
            "agent_claims",
            "Hosts this instance took on (unowned, or its owner died)",
            agent_claims.clone(),
        );
        let agent_releases = Counter::default();
        registry.register(
            "agent_releases",
            "Hosts this instance gave up to even out the load",
            agent_releases.clone(),
        );
        let instance = Family::<InstanceLabels, Gauge>::default();
        registry.register(
            "instance",
            "This instance's id, as its owner keys and `network agent show` name it",
            instance.clone(),
        );
        Metrics {
            registry,
            requests,
            seconds,
            agent_sessions,
            agent_claims,
            agent_releases,
            instance,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Counts and times every API request.
pub async fn count(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    metrics.seconds.observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Serves `GET /metrics` until the listener fails.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics: cannot listen on {listen}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
