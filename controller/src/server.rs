//! The controller as it runs: its store opened, the API, the agents'
//! registry and the metrics served and goal states pushed until SIGTERM or
//! Ctrl-C, requests in flight finished and its agents handed over to the
//! other instances.

use std::sync::Arc;

use anyhow::Context;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};

use crate::{
    api::{self, App},
    config::{AgentTls, Config, StoreSpec},
    metrics::{self, Metrics},
    registry::Registry,
    service::Controller,
    southbound::Southbound,
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
    let controller = Arc::new(Controller::new(store, config.policy.clone()));
    let tls = config.agent_tls.as_ref().map(read_tls).transpose()?;
    let metrics = Arc::new(Metrics::default());
    // A new id at every start: a restarted instance is a new member, and
    // whatever its last life owned goes with that life's lease.
    let instance = uuid::Uuid::new_v4().to_string();
    tracing::info!(%instance, "controller instance");
    let southbound = Southbound::new(
        controller.clone(),
        tls.as_ref().map(|tls| {
            ClientTlsConfig::new()
                .ca_certificate(tls.ca.clone())
                .identity(tls.identity.clone())
        }),
        instance,
        metrics.clone(),
    );
    tokio::spawn(southbound.clone().run());
    serve_agents(&config, tls, Registry::new(controller.clone())).await?;
    let app = Arc::new(App {
        controller,
        auth: config.auth.clone(),
    });
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
        .context("serving the API")?;
    // Handed over now rather than when the lease runs out.
    southbound.leave().await;
    Ok(())
}

/// The controller's TLS towards the agents, read.
struct Tls {
    identity: Identity,
    ca: Certificate,
}

fn read_tls(tls: &AgentTls) -> anyhow::Result<Tls> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    Ok(Tls {
        identity: Identity::from_pem(read(&tls.cert)?, read(&tls.key)?),
        ca: Certificate::from_pem(read(&tls.ca)?),
    })
}

/// Serves the agents' registrations and state requests on --grpc-listen.
async fn serve_agents(config: &Config, tls: Option<Tls>, registry: Registry) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("cannot listen for agents on {}", config.grpc_listen))?;
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(
                ServerTlsConfig::new()
                    .identity(tls.identity)
                    .client_ca_root(tls.ca),
            )
            .context("the agents' TLS configuration")?;
    }
    let (agents, provisioner) = registry.services();
    let router = server.add_service(agents).add_service(provisioner);
    tracing::info!(listen = %config.grpc_listen, tls = config.agent_tls.is_some(), "serving the agents");
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(error) = router.serve_with_incoming(incoming).await {
            tracing::error!(%error, "serving the agents failed");
        }
    });
    Ok(())
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
