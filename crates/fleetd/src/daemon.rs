//! Wiring: registry, unit manager, API server, machine presence, agent and engine, and the
//! signals that stop, reload or dump them.

use crate::config::{self, Config, ListenAddr, RegistryKind, UnitManagerKind};
use agent::{Agent, Presence, Shutdown, UnitManager};
use anyhow::Context;
use registry::{MachineState, Registry, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// The options a SIGHUP applies at once (the machine record); every other changed option is
/// named in the log as waiting for the next start of fleetd.
const RELOADABLE: [&str; 2] = ["metadata", "public_ip"];

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Opens the configured registry backend.
pub async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match cfg.registry {
        RegistryKind::Embedded => {
            let dir = cfg.state_dir.join("registry");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            Arc::new(registry::embedded::EmbeddedStore::open(&dir)?)
        }
        RegistryKind::Etcd => {
            let opts = registry::etcd::EtcdOptions {
                endpoints: cfg.etcd_servers.clone(),
                request_timeout: cfg.etcd_request_timeout,
                ca_file: cfg.etcd_cafile.clone(),
                cert_file: cfg.etcd_certfile.clone(),
                key_file: cfg.etcd_keyfile.clone(),
                username: cfg.etcd_username.clone(),
                password: cfg.etcd_password.as_ref().map(|p| p.expose().to_string()),
            };
            Arc::new(registry::etcd::EtcdStore::connect(opts).await?)
        }
    })
}

/// Opens the configured unit manager.
pub async fn open_manager(cfg: &Config) -> anyhow::Result<Arc<dyn UnitManager>> {
    let kind = cfg.unit_manager.resolve(config::systemd_booted());
    tracing::info!(unit_manager = ?kind, "unit manager chosen");
    Ok(match kind {
        UnitManagerKind::Systemd => {
            let opts = agent::systemd::SystemdOptions {
                units_directory: cfg.units_directory.clone(),
                user: cfg.systemd_user,
                ..Default::default()
            };
            Arc::new(agent::systemd::SystemdManager::connect(opts).await?)
        }
        // Run records and unit files live beside systemd's unit files, in fleet's runtime
        // directory; logs stay under the state directory.
        UnitManagerKind::Process => Arc::new(agent::process::ProcessUnitManager::open(
            supervisor::ProcessManager::builder(cfg.state_dir.join("process"))
                .runtime_dir(cfg.units_directory.join("process")),
        )?),
    })
}

fn machine_state(cfg: &Config, id: &str) -> MachineState {
    MachineState {
        id: id.to_string(),
        public_ip: cfg
            .public_ip
            .map(|ip| ip.to_string())
            .or_else(agent::presence::detect_public_ip)
            .unwrap_or_default(),
        metadata: cfg.metadata.clone(),
        version: VERSION.to_string(),
        disable_engine: cfg.disable_engine,
    }
}

/// Whether `passed` (a socket from systemd) listens on `wanted`. `/var/run/fleet.sock` and
/// `/run/fleet.sock` are one socket, so unix paths are compared with their directories resolved.
fn passed_by_systemd(passed: &server::listen::Listener, wanted: &server::listen::Listen) -> bool {
    use server::listen::{Listen, Listener};
    match (passed, wanted) {
        (Listener::Unix { listener, .. }, Listen::Unix(path)) => {
            let resolved = |p: &Path| match (p.parent(), p.file_name()) {
                (Some(dir), Some(name)) => std::fs::canonicalize(dir)
                    .map(|d| d.join(name))
                    .unwrap_or_else(|_| p.to_path_buf()),
                _ => p.to_path_buf(),
            };
            listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(resolved))
                .is_some_and(|bound| bound == resolved(path))
        }
        (Listener::Tcp(listener), Listen::Tcp(addr)) => {
            match (listener.local_addr(), addr.parse::<std::net::SocketAddr>()) {
                (Ok(bound), Ok(want)) => bound == want,
                _ => false,
            }
        }
        _ => false,
    }
}

/// The GID `api_socket_group` names: a group name, or a number.
fn socket_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => anyhow::bail!(
            "api_socket_group {group:?}: no such group; create it (groupadd {group}) or give a GID"
        ),
        Err(e) => anyhow::bail!("api_socket_group {group:?}: looking the group up failed: {e}"),
    }
}

/// The tokens file, if one is configured.
fn load_tokens(file: Option<&Path>) -> anyhow::Result<Option<server::access::Tokens>> {
    let Some(path) = file else {
        return Ok(None);
    };
    let tokens =
        server::access::Tokens::load(path).map_err(|e| anyhow::anyhow!("api_tokens_file: {e}"))?;
    if tokens.is_empty() {
        tracing::warn!(file = %path.display(), "api_tokens_file lists no token: every TCP request will be refused with 401");
    }
    Ok(Some(tokens))
}

/// Tells systemd (`Type=notify`) that fleetd is ready, if it runs under systemd.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    // Abstract socket names start with '@' in the variable.
    let result = if let Some(name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(b"READY=1", &addr))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "notifying systemd of readiness failed");
    }
}

/// Runs fleetd until a signal stops it.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    for o in cfg.describe() {
        tracing::debug!(option = o.name, value = %o.value, source = ?o.source, "configuration");
    }
    let machine_id = cfg.resolve_machine_id(Path::new(config::MACHINE_ID_FILE))?;
    tracing::info!(machine = %machine_id, version = VERSION, registry = ?cfg.registry, "starting fleetd");
    // Taken at once, before anything slow: by default these signals end a process, and a dump
    // or a reload asked for while fleetd starts must wait for it instead (SIGTERM and SIGINT
    // keep their default until the registry is open, so a fleetd stuck connecting can still be
    // stopped).
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;

    // One set of families for the whole process, served at /metrics: each part registers its
    // own and keeps them current.
    let mut exposition = prometheus_client::registry::Registry::default();
    let store_metrics = server::metrics::StoreMetrics::register(&mut exposition);
    let engine_metrics = engine::EngineMetrics::register(&mut exposition);
    let agent_metrics = agent::AgentMetrics::register(&mut exposition);

    let store = open_store(&cfg).await?;
    let registry =
        Registry::new(store, &cfg.etcd_key_prefix).with_observer(Arc::new(store_metrics));
    // What the agent and the engine follow: read every engine_reconcile_interval instead of
    // watched with disable_watches, as fleet did.
    let followed = if cfg.disable_watches {
        tracing::info!(
            interval = ?cfg.engine_reconcile_interval,
            "disable_watches: the agent and the engine read the registry every engine_reconcile_interval instead of watching it"
        );
        registry.clone().polling(cfg.engine_reconcile_interval)
    } else {
        registry.clone()
    };
    let manager = open_manager(&cfg).await?;

    // Everything the API's protection needs is read before anything listens, so that a bad
    // file stops fleetd instead of leaving the API open or unusable.
    // The file named at start is the one SIGHUP reads again: the listeners were vetted with
    // tokens in force, so a reload never drops them.
    let tokens_file = cfg.api_tokens_file.clone();
    let access = Arc::new(server::access::Access::new(load_tokens(
        tokens_file.as_deref(),
    )?));
    let tls = match (&cfg.api_tls_cert, &cfg.api_tls_key) {
        (Some(cert), Some(key)) => Some(
            server::tls::ServerTls::load(&server::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: cfg.api_tls_client_ca.clone(),
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        _ => None,
    };
    let gid = cfg
        .api_socket_group
        .as_deref()
        .map(socket_group)
        .transpose()?;
    // The API answers 503 until this machine is registered, as fleet's did.
    let mut api_state = server::ApiState::new(registry.clone(), cfg.token_limit)
        .with_access(access.clone())
        .with_metrics(exposition);
    // The process supervisor keeps each unit's output in files here: the API serves their end
    // (`GET /fleet/v1/output/<unit>`, the dashboard's unit page). systemd's go to the journal.
    if matches!(
        cfg.unit_manager.resolve(config::systemd_booted()),
        UnitManagerKind::Process
    ) {
        let dirs = supervisor::inspect::Dirs::new(
            cfg.state_dir.join("process"),
            cfg.units_directory.join("process"),
        );
        api_state = api_state.with_output(Arc::new(move |unit: &str, lines: usize| {
            let kept = dirs.log_path(unit).exists();
            kept.then(|| dirs.log_tail(unit, lines))
        }));
    }
    // Sockets passed by systemd (fleet.socket) are served as they are; a configured address
    // among them is not bound again: binding would find systemd's socket alive and refuse, as
    // if another fleetd served it (the default api_listen is fleet.socket's path).
    let activated =
        server::listen::systemd_listeners().context("taking sockets passed by systemd")?;
    let listens: Vec<server::listen::Listen> = cfg
        .api_listen
        .iter()
        .map(|l| match l {
            ListenAddr::Unix(p) => server::listen::Listen::Unix(p.clone()),
            ListenAddr::Tcp(a) => server::listen::Listen::Tcp(a.clone()),
        })
        .filter(|l| !activated.iter().any(|a| passed_by_systemd(a, l)))
        .collect();
    let mut listeners = server::listen::bind_with_group(&listens, gid)
        .await
        .context("opening the API listeners (api_listen)")?;
    listeners.extend(activated);
    let exposure = server::listen::Exposure {
        tls: tls.is_some(),
        client_certs: cfg.api_tls_client_ca.is_some(),
        tokens: access.has_tokens(),
        insecure_tcp: cfg.api_insecure_tcp,
    };
    for warning in
        server::listen::check_exposure(&listeners, exposure).map_err(|e| anyhow::anyhow!("{e}"))?
    {
        tracing::warn!("{warning}");
    }
    let (api_stop_tx, mut api_stop_rx) = watch::channel(false);
    let api_task = tokio::spawn(server::listen::serve_with(
        listeners,
        server::router(api_state.clone()),
        tls,
        async move {
            let _ = api_stop_rx.wait_for(|s| *s).await;
        },
    ));

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;

    let machine = machine_state(&cfg, &machine_id);
    let presence = {
        let mut backoff =
            registry::Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let attempt = Presence::register(
                followed.clone(),
                machine.clone(),
                cfg.agent_ttl,
                &cfg.state_dir,
            );
            tokio::select! {
                r = attempt => match r {
                    Ok(p) => break p.with_lease_losses(agent_metrics.lease_losses.clone()),
                    Err(e) if e.downcast_ref::<agent::presence::DuplicateMachine>().is_some() => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "registering this machine failed; retrying");
                        tokio::time::sleep(backoff.wait()).await;
                    }
                },
                _ = sigterm.recv() => return Ok(()),
                _ = sigint.recv() => return Ok(()),
            }
        }
    };
    tracing::info!(machine = %machine_id, ip = %machine.public_ip, "machine registered");
    api_state.set_available(true);

    let (agent_stop_tx, agent_stop_rx) = watch::channel(None);
    let (machine_tx, machine_rx) = watch::channel(machine.clone());
    let (agent_dumps_tx, agent_dumps) = mpsc::channel(1);
    let agent_task = tokio::spawn(
        Agent::new(presence, manager)
            .with_metrics(agent_metrics)
            .with_machine_updates(machine_rx)
            .with_dump_requests(agent_dumps)
            .run(agent_stop_rx),
    );
    // Without a configured public_ip, the address is found again on each heartbeat (a third of
    // agent_ttl, as the lease is refreshed), as fleet did: DHCP may move it.
    let (ip_configured_tx, ip_configured) = watch::channel(cfg.public_ip.is_some());
    tokio::spawn(agent::presence::redetect_public_ip(
        machine_tx.clone(),
        std::sync::Arc::new(agent::presence::detect_public_ip),
        (cfg.agent_ttl / 3).max(Duration::from_millis(100)),
        ip_configured,
    ));
    let (engine_stop_tx, engine_stop_rx) = watch::channel(false);
    let (engine_dumps_tx, engine_dumps) = mpsc::channel(1);
    let engine_task = if cfg.disable_engine {
        None
    } else {
        let ecfg = engine::EngineConfig {
            machine_id: machine_id.clone(),
            interval: cfg.engine_reconcile_interval,
            agent_ttl: cfg.agent_ttl,
        };
        Some(tokio::spawn(engine::run_observed(
            followed.clone(),
            ecfg,
            engine_stop_rx,
            Some(engine_dumps),
            engine_metrics,
        )))
    };
    let dumpers = crate::dump::Dumpers {
        agent: agent_dumps_tx,
        engine: engine_task.as_ref().map(|_| engine_dumps_tx),
    };
    notify_ready();

    let mut cfg = cfg;
    let mode = loop {
        tokio::select! {
            _ = sigterm.recv() => break Shutdown::Leave,
            _ = sigint.recv() => break Shutdown::Leave,
            _ = sigusr2.recv() => break Shutdown::Upgrade,
            _ = sigusr1.recv() => {
                // In a task of its own: a slow registry must not hold up the other signals.
                let registry = registry.clone();
                let machine_id = machine_id.clone();
                let dumpers = dumpers.clone();
                tokio::spawn(async move {
                    let text = crate::dump::dump(&registry, &machine_id, &dumpers).await;
                    tracing::info!("SIGUSR1: {}", text.trim_end());
                });
            }
            _ = sighup.recv() => {
                tracing::info!("Reloading configuration");
                // The tokens file fleetd started with is read again: tokens added or revoked
                // apply now. A broken file keeps the tokens in force.
                if tokens_file.is_some() {
                    match load_tokens(tokens_file.as_deref()) {
                        Ok(tokens) => {
                            let n = tokens.as_ref().map_or(0, |t| t.len());
                            access.set_tokens(tokens);
                            tracing::info!(tokens = n, "api_tokens_file reloaded");
                        }
                        Err(e) => tracing::error!(error = %format!("{e:#}"), "reloading api_tokens_file failed; keeping the tokens in force"),
                    }
                }
                match cfg.reload(&config::process_env) {
                    Ok(newer) => {
                        let changed = cfg.changed_options(&newer);
                        // Metadata and the public IP apply at once; the rest at the next start.
                        let updated = machine_state(&newer, &machine_id);
                        if updated != *machine_tx.borrow() {
                            let _ = machine_tx.send(updated);
                        }
                        let _ = ip_configured_tx.send(newer.public_ip.is_some());
                        for option in changed.iter().filter(|o| !RELOADABLE.contains(o)) {
                            tracing::warn!(option = %option, "{option} changed, but cannot change while fleetd runs: it applies at the next start of fleetd");
                        }
                        tracing::info!(changed = ?changed, "configuration reloaded; metadata and public_ip apply now, other options at the next start of fleetd");
                        cfg = newer;
                    }
                    Err(e) => tracing::error!(error = %e, "reloading the configuration failed; keeping the running one"),
                }
            }
        }
    };
    tracing::info!(mode = ?mode, "stopping fleetd");
    let _ = engine_stop_tx.send(true);
    if let Some(t) = engine_task {
        if let Ok(Err(e)) = t.await {
            tracing::warn!(error = %format!("{e:#}"), "engine stopped with an error");
        }
    }
    let _ = agent_stop_tx.send(Some(mode));
    let agent_result = agent_task.await;
    let _ = api_stop_tx.send(true);
    let _ = api_task.await;
    match agent_result {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("agent task failed: {e}")),
    }
}
