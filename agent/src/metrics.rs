//! Prometheus metrics, served in the text format on `--metrics-listen`.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, http::header, routing::get};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::Histogram,
    },
    registry::Registry,
};

use crate::{
    datapath::{DatapathReader, UnderlayDropReason},
    dhcp::{
        self,
        counters::{ClientMessage, DropReason, ServerMessage},
    },
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub messages: Family<ApiLabels, Counter>,
    pub resources: Family<ResourceLabels, Counter>,
    pub apply_seconds: Histogram,
    pub ports: Family<PhaseLabels, Gauge>,
    /// The link to the controller ([`crate::registration`]).
    pub controller_heartbeats: Family<ResultLabels, Counter>,
    pub controller_state_requests: Family<ResultLabels, Counter>,
    pub controller_registered: Gauge,
    /// Goal-state streams open now: one per controller session pushing to
    /// this agent (one at a time, when controller instances share agents).
    pub goalstate_streams: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    pub message: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

impl Metrics {
    /// The agent's metrics, including the DHCP responder's `dhcp` counters.
    pub fn new(dhcp: Arc<dhcp::Counters>) -> Self {
        let mut registry = Registry::with_prefix("alcor_agent");
        registry.register_collector(Box::new(DhcpCollector(dhcp)));
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
        let controller_heartbeats = Family::<ResultLabels, Counter>::default();
        registry.register(
            "controller_heartbeats",
            "Heartbeats sent to the controller (--controller), by result",
            controller_heartbeats.clone(),
        );
        let controller_state_requests = Family::<ResultLabels, Counter>::default();
        registry.register(
            "controller_state_requests",
            "Requests for this host's whole state (RequestGoalStates, AGENT_RESTARTED), by result",
            controller_state_requests.clone(),
        );
        let controller_registered = Gauge::default();
        registry.register(
            "controller_registered",
            "1 while the controller answers heartbeats, else 0",
            controller_registered.clone(),
        );
        let goalstate_streams = Gauge::default();
        registry.register(
            "goalstate_streams",
            "Goal-state streams (PushGoalStatesStream) open now: one per controller pushing",
            goalstate_streams.clone(),
        );
        Metrics {
            registry,
            messages,
            resources,
            apply_seconds,
            ports,
            controller_heartbeats,
            controller_state_requests,
            controller_registered,
            goalstate_streams,
        }
    }
}

/// The DHCP responder counts with plain atomics on its packet path; they
/// are read at scrape time.
#[derive(Debug)]
struct DhcpCollector(Arc<dhcp::Counters>);

impl Collector for DhcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = &self.0;
        let mut family = encoder.encode_descriptor(
            "dhcp_received",
            "DHCP messages received from VMs, by type",
            None,
            MetricType::Counter,
        )?;
        for message in ClientMessage::ALL {
            let labels = MessageLabels {
                message: message.as_str(),
            };
            ConstCounter::new(counters.received(message)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "dhcp_sent",
            "DHCP messages sent to VMs, by type",
            None,
            MetricType::Counter,
        )?;
        for message in ServerMessage::ALL {
            let labels = MessageLabels {
                message: message.as_str(),
            };
            ConstCounter::new(counters.sent(message)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "dhcp_dropped",
            "DHCP frames dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for reason in DropReason::ALL {
            let labels = ReasonLabels {
                reason: reason.as_str(),
            };
            ConstCounter::new(counters.dropped(reason)).encode(family.encode_family(&labels)?)?;
        }
        for (name, help, value) in [
            (
                "dhcp_leases_declined",
                "Addresses VMs declined (DHCPDECLINE)",
                counters.leases_declined(),
            ),
            (
                "dhcp_leases_released",
                "Leases VMs released (DHCPRELEASE)",
                counters.leases_released(),
            ),
            (
                "dhcp_send_errors",
                "DHCP replies the socket refused",
                counters.send_errors(),
            ),
        ] {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        Ok(())
    }
}

/// The host's tunnel counters live in a per-CPU map the programs write;
/// they are read (and summed) at scrape time.
struct UnderlayCollector(DatapathReader);

impl std::fmt::Debug for UnderlayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnderlayCollector")
    }
}

impl Collector for UnderlayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match self.0.underlay_stats() {
            Ok(stats) => stats,
            Err(error) => {
                tracing::warn!(%error, "metrics: cannot read the underlay counters");
                return Ok(());
            }
        };
        for (name, help, value) in [
            (
                "underlay_encap_packets",
                "Packets encapsulated in VXLAN to other hosts",
                stats.encap_packets,
            ),
            (
                "underlay_encap_bytes",
                "Bytes (inner frames) encapsulated in VXLAN to other hosts",
                stats.encap_bytes,
            ),
            (
                "underlay_decap_packets",
                "VXLAN packets from other hosts decapsulated and delivered",
                stats.decap_packets,
            ),
            (
                "underlay_decap_bytes",
                "Bytes (inner frames) decapsulated and delivered",
                stats.decap_bytes,
            ),
            (
                "underlay_device_encap_packets",
                "Of the packets encapsulated, those sent through the VXLAN device to be \
                 fragmented (too big for the underlay, DF clear)",
                stats.device_encap_packets,
            ),
            (
                "underlay_device_decap_packets",
                "Of the packets decapsulated, those the VXLAN device decapsulated \
                 (reassembled outer fragments, GSO packets for taps)",
                stats.device_decap_packets,
            ),
        ] {
            let metric = ConstCounter::new(value);
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let mut family = encoder.encode_descriptor(
            "underlay_dropped",
            "Frames the underlay's programs (tc and XDP) dropped, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in UnderlayDropReason::ALL.into_iter().zip(stats.drops) {
            let labels = ReasonLabels {
                reason: reason.name(),
            };
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds the datapath's tunnel counters, read at each scrape through a
    /// reader of its own.
    pub fn with_datapath(mut self, datapath: DatapathReader) -> Self {
        self.registry
            .register_collector(Box::new(UnderlayCollector(datapath)));
        self
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` until the listener fails or `stopping` resolves.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
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
    axum::serve(listener, app)
        .with_graceful_shutdown(stopping)
        .await?;
    Ok(())
}
