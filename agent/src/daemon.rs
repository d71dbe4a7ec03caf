//! Wires the agent together: state, datapath, netlink, the engine, the
//! three listeners (goal state, control socket, metrics) and, with a
//! controller, the link to it; and stops it all gracefully ([`Tasks`]).
//! The netlink connections' tasks end with their handles.

use std::{
    fs,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use alcor_proto::control::agent_control_server::AgentControlServer;
use anyhow::Context;
use futures::{TryStreamExt, future::BoxFuture};
use tokio::{net::UnixListener, signal::unix::SignalKind};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::{
    config::Config,
    control::ControlService,
    core::status::{AgentState, SharedState},
    datapath::Datapath,
    dhcp::{self, DhcpSettings, DhcpView, Leases, Responder},
    engine::Engine,
    linger::Lingering,
    metrics::{self, Metrics},
    plumbing::{self, Plumber},
    provisioner::{GoalStateRoutes, GoalStateService},
    registration::{self, Registration},
    store::Store,
    tasks::Tasks,
    underlay::{self, Underlay, neighbours},
};

/// How long a stopping agent waits for its tasks (an apply in progress, its
/// reply) before it exits anyway. Within systemd's default stop timeout.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// HTTP/2 flow-control windows of the goal-state server, bytes.
const GRPC_STREAM_WINDOW: u32 = 8 << 20;
const GRPC_CONNECTION_WINDOW: u32 = 16 << 20;

pub async fn run(config: Config) -> anyhow::Result<()> {
    let tasks = Tasks::default();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let store = Arc::new(Store::open(&config.state_dir)?);
    let mut datapath = Datapath::open(&config.bpf_pin_dir).with_context(|| {
        format!(
            "loading the datapath (pins in {})",
            config.bpf_pin_dir.display()
        )
    })?;

    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tasks.spawn_until_stopped(connection);
    let underlay = Underlay::start(&handle, &mut datapath, &config).await?;
    // The engine will own the datapath, its one writer; the control socket
    // and the metrics read through handles of their own.
    let reader = || datapath.reader().context("opening the datapath's maps");
    let (control_reader, metrics_reader) = (reader()?, reader()?);
    let port_mtu = underlay::port_mtu(underlay.as_ref());
    // Subscribe before adopting, so that no device appearing meanwhile is missed.
    let mut link_events = plumbing::watch_links(&tasks).context("subscribing to link events")?;
    // The other hosts' MACs: the first sync writes those known now.
    let (host_macs, neighbour_changes) = match &underlay {
        Some(underlay) => {
            let (macs, changes) = neighbours::watch(&handle, underlay.spec.ifindex, &tasks)
                .await
                .with_context(|| format!("following the neighbours of {}", underlay.device))?;
            (macs, Some(changes))
        }
        None => Default::default(),
    };

    let dhcp_counters = Arc::new(dhcp::Counters::default());
    let metrics = Arc::new(Metrics::new(dhcp_counters.clone()).with_datapath(metrics_reader));
    // The tunnel endpoint is set once: the forwarding model carries it into
    // every sync.
    let state: SharedState = Arc::new(RwLock::new(AgentState {
        underlay: underlay.as_ref().map(|underlay| underlay.spec),
        port_mtu,
        host_macs,
        ..AgentState::default()
    }));
    let plumber = Plumber::new(handle, port_mtu);
    let dhcp_view = DhcpView::default().into_shared();
    let dhcp_settings = DhcpSettings {
        port_mtu,
        lease_time: config.dhcp_lease_time,
        domain: config.dhcp_domain.clone(),
    };
    let leases = Arc::new(Leases::load(store.clone())?);
    let state_changed = dhcp::publisher::spawn(
        &tasks,
        state.clone(),
        dhcp_view.clone(),
        leases.clone(),
        dhcp_settings,
    );
    let mut engine = Engine::new(
        state.clone(),
        store,
        plumber,
        datapath,
        metrics.clone(),
        state_changed,
    );
    let loaded = engine.load()?;
    engine.adopt().await?;
    tracing::info!(
        resources = loaded,
        port_mtu,
        "desired state loaded and adopted"
    );
    let responder = Responder::start(dhcp_view, leases.clone(), dhcp_counters.clone())?;
    let engine = Arc::new(tokio::sync::Mutex::new(engine));

    let events_engine = engine.clone();
    tasks.spawn_until_stopped(async move {
        while let Some(event) = link_events.recv().await {
            events_engine.lock().await.on_link_event(event).await;
        }
        tracing::error!("link events stopped; pending taps will not be noticed");
    });
    if let Some(mut changes) = neighbour_changes {
        let engine = engine.clone();
        tasks.spawn_until_stopped(async move {
            while let Some(change) = changes.recv().await {
                // What piled up meanwhile goes in one call.
                let mut batch = vec![change];
                while let Ok(more) = changes.try_recv() {
                    batch.push(more);
                }
                engine.lock().await.on_neighbour_changes(&batch);
            }
        });
    }

    let registration = Registration::prepare(&config, &state)?;
    let link_status = registration.as_ref().map(Registration::status);
    // A listener that ends on its own failed: the agent stops with its error.
    let (failed, mut failures) = tokio::sync::mpsc::unbounded_channel();
    let serve = |name: &'static str, server: BoxFuture<'static, anyhow::Result<()>>| {
        let failed = failed.clone();
        tasks.spawn(async move {
            if let Err(error) = server.await {
                let _ = failed.send(error.context(name));
            }
        });
    };
    let goal_state = GoalStateService::new(engine.clone(), metrics.clone(), tasks.clone());
    serve(
        "goal-state server",
        serve_goal_state(&config, goal_state, &tasks).await?,
    );
    let control = ControlService::new(
        state.clone(),
        control_reader,
        leases,
        dhcp_counters,
        config.clone(),
        port_mtu,
        underlay,
    )
    .with_controller(link_status.clone());
    serve(
        "control server",
        serve_control(&config.control_socket, control, tasks.stopping())?,
    );
    serve(
        "metrics server",
        Box::pin(metrics::serve(
            config.metrics_listen,
            metrics.clone(),
            tasks.stopping(),
        )),
    );
    // After the goal-state listener is bound: the controller dials back.
    if let (Some(registration), Some(status)) = (registration, link_status) {
        tasks.spawn_until_stopped(registration::run(registration, state, metrics, status));
    }

    notify_systemd(&tasks);
    tracing::info!(
        grpc = %config.grpc_listen,
        mutual_tls = config.tls.is_some(),
        control = %config.control_socket.display(),
        metrics = %config.metrics_listen,
        controller = config.controller.as_ref().map_or("none".into(), |link| link.urls()),
        "alcor-agent ready"
    );
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    let outcome = tokio::select! {
        Some(error) = failures.recv() => Err(error),
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping (the datapath keeps forwarding)");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::info!("terminated; stopping (the datapath keeps forwarding)");
            Ok(())
        }
    };
    // The listeners stop taking requests; an apply in progress finishes and
    // its reply goes out; the other tasks end.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if !tasks.stop(SHUTDOWN_GRACE).await {
        tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "some tasks were still running when the agent stopped"
        );
    }
    // Flushes the leases one last time.
    tokio::task::block_in_place(|| responder.stop());
    outcome
}

/// Binds the goal-state listener now, so that a bind error stops the agent
/// and readiness means the port accepts connections.
async fn serve_goal_state(
    config: &Config,
    service: GoalStateService,
    tasks: &Tasks,
) -> anyhow::Result<BoxFuture<'static, anyhow::Result<()>>> {
    let (tasks, stopping) = (tasks.clone(), tasks.stopping());
    // Goal-state messages run to megabytes: HTTP/2's default 64 KiB windows
    // would make the controller wait for a window update every 64 KiB.
    let mut server = Server::builder()
        .initial_stream_window_size(GRPC_STREAM_WINDOW)
        .initial_connection_window_size(GRPC_CONNECTION_WINDOW);
    match &config.tls {
        Some(tls) => {
            let read =
                |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
            let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
            let tls_config = ServerTlsConfig::new()
                .identity(identity)
                .client_ca_root(Certificate::from_pem(read(&tls.client_ca)?));
            server = server.tls_config(tls_config).context("TLS configuration")?;
        }
        None if !config.grpc_listen.ip().is_loopback() => tracing::warn!(
            listen = %config.grpc_listen,
            "--insecure: goal state is served without TLS; anyone who reaches this port can program the host"
        ),
        None => {}
    }
    let service = GoalStateRoutes::new(service, config.max_message_size);
    let listener = tokio::net::TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("listening on {}", config.grpc_listen))?;
    let connections = TcpListenerStream::new(listener)
        .map_ok(move |stream| Lingering::new(stream, tasks.clone()));
    let serving = server
        .add_service(service)
        .serve_with_incoming_shutdown(connections, stopping);
    Ok(Box::pin(async move { Ok(serving.await?) }))
}

fn serve_control(
    path: &Path,
    service: ControlService,
    stopping: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<BoxFuture<'static, anyhow::Result<()>>> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing stale socket {}", path.display()));
        }
        _ => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    let serving = Server::builder()
        .add_service(AgentControlServer::new(service))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stopping);
    Ok(Box::pin(async move { Ok(serving.await?) }))
}

/// Tells systemd (Type=notify) the agent is ready, and keeps its watchdog fed
/// until the agent stops.
fn notify_systemd(tasks: &Tasks) {
    if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%error, "could not notify systemd");
    }
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        tasks.spawn_until_stopped(async move {
            let mut ticks = tokio::time::interval(timeout / 2);
            loop {
                ticks.tick().await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}
