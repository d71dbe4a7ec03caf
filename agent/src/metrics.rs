//! Prometheus metrics, served in the text format on `--metrics-listen`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, http::header, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// `v1` (PushNetworkResourceStates) or `v2` (PushGoalStatesStream).
    pub api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub kind: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub messages: Family<ApiLabels, Counter>,
    pub resources: Family<ResourceLabels, Counter>,
    pub apply_seconds: Histogram,
    pub ports: Family<PhaseLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("alcor_agent");
        let messages = Family::<ApiLabels, Counter>::default();
        registry.register(
            "goalstate_messages",
            "Goal-state messages applied",
            messages.clone(),
        );
        let resources = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "goalstate_resources",
            "Resource operations applied, by kind and status",
            resources.clone(),
        );
        // 100 µs to ~6.5 s.
        let apply_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-4, 2.0, 17),
        );
        registry.register(
            "goalstate_apply_seconds",
            "Time to apply one goal-state message",
            apply_seconds.clone(),
        );
        let ports = Family::<PhaseLabels, Gauge>::default();
        registry.register("ports", "Ports by phase", ports.clone());
        Metrics {
            registry,
            messages,
            resources,
            apply_seconds,
            ports,
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
        .map_err(|e| anyhow::anyhow!("metrics listener on {listen}: {e}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}
