//! Prometheus metrics, served in the text format on `--metrics-listen`:
//! the API's requests by method and status, and how long they took.

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
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    seconds: Histogram,
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
        Metrics {
            registry,
            requests,
            seconds,
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
