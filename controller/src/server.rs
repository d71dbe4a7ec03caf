//! The controller as it runs: its store opened, the API and the metrics
//! served until SIGTERM or Ctrl-C, requests in flight finished.

use std::sync::Arc;

use anyhow::Context;

use crate::{
    api::{self, App},
    config::{Config, StoreSpec},
    metrics::{self, Metrics},
    service::Controller,
    store::{Store, embedded::Embedded, etcd::Etcd},
};

pub async fn open_store(spec: &StoreSpec) -> anyhow::Result<Arc<dyn Store>> {
    match spec {
        StoreSpec::File(path) => {
            if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            Ok(Arc::new(Embedded::open(path)?))
        }
        StoreSpec::Etcd(urls) => Ok(Arc::new(Etcd::connect(urls).await?)),
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config.store)
        .await
        .context("opening the store")?;
    let app = Arc::new(App {
        controller: Controller::new(store, config.policy.clone()),
        auth: config.auth.clone(),
    });
    let metrics = Arc::new(Metrics::default());
    let router = api::router(app).layer(axum::middleware::from_fn_with_state(
        metrics.clone(),
        metrics::count,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, store = ?config.store, "serving the Neutron API");
    tokio::spawn(async move {
        if let Err(error) = metrics::serve(config.metrics_listen, metrics).await {
            tracing::error!("{error:#}");
        }
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving the API")
}

/// SIGTERM (systemd) or Ctrl-C.
async fn shutdown() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing the requests in flight");
}
