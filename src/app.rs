//! Builds the store and the router, binds, serves, and shuts down in a
//! written order. Tests start exactly what production starts, on port 0.

use std::future::Future;
use std::net::SocketAddr;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::alerts::{Alerts, Severity};
use crate::auth::{AuthMode, Keyring};
use crate::config::ServeConfig;
use crate::http::{self, AppState};
use crate::jetstream::JetStream;
use crate::jobs::{self, FirstTick, Jobs};
use crate::monitor::{self, MonitorSettings};
use crate::store::handle::WriterThread;
use crate::store::StoreHandle;
use crate::tls::Tls;
use tokio::signal::unix::{Signal, SignalKind};

/// Errors that stop the server from starting or running.
pub type AppError = Box<dyn std::error::Error + Send + Sync>;

/// The store a server runs on (`--backend`).
enum Backend {
    /// The data directory's file store and its writer thread.
    File {
        store: StoreHandle,
        writer: WriterThread,
    },
    /// A NATS JetStream stream.
    Nats(JetStream),
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    backend: Backend,
    state: AppState,
    shutdown_tx: watch::Sender<bool>,
    config: ServeConfig,
    tls: Option<Arc<Tls>>,
    /// SIGHUP: rereads the TLS certificate (when serving HTTPS) and the
    /// token file at once. Installed before the port answers, so a SIGHUP
    /// never takes its default action (ending the process).
    hangup: Signal,
}

impl Application {
    /// Opens the store (recovery included) and binds the listener.
    pub async fn build(config: ServeConfig) -> Result<Application, AppError> {
        // Before the store opens: a bad certificate or key is refused at
        // once, naming the flag and the file.
        let hangup = tokio::signal::unix::signal(SignalKind::hangup())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let tls = Tls::load(cert, key)?;
                let loaded = tls.current();
                tracing::info!(
                    cert = %cert.display(),
                    key = %key.display(),
                    fingerprint_sha256 = %loaded.fingerprint,
                    chain_len = loaded.chain_len,
                    "serving HTTPS"
                );
                Some(Arc::new(tls))
            }
            _ => None,
        };
        // A wrong alert setting is refused before the store opens, naming it.
        let channels = crate::alerts::Channels::from_config(&config.alert_settings())?;
        let alerts = Arc::new(
            Alerts::with_channels(config.alert_capacity, channels)
                .hiding(crate::http::error::HidePaths::new(&config.data_dir)),
        );
        if config.backend == crate::config::Backend::Nats {
            return Self::build_nats(config, alerts, tls, hangup).await;
        }
        let (store, writer) = match StoreHandle::open(&config.store(), alerts.clone()) {
            Ok(opened) => opened,
            Err(e) => {
                // A refusal to start is an alert too: logged, and posted to
                // the webhook before the process exits.
                if matches!(e, crate::store::StoreError::Corrupt(_)) {
                    alerts.raise(
                        crate::alerts::Severity::Error,
                        "start_refused",
                        None,
                        e.to_string(),
                    );
                    alerts.flush(std::time::Duration::from_secs(10)).await;
                }
                return Err(e.into());
            }
        };
        // Start-up's transient buffers (the active segment read whole) are
        // freed by now; hand them back before the store answers "ready".
        crate::memory::release_freed();
        // Before the first request: a server started on a full disk must
        // refuse the very first publish, not the one after the first tick.
        monitor::check_disk(&store, config.min_free_bytes);
        let keyring = Arc::new(open_keyring(&config)?);
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = AppState::new(store.clone(), &config, keyring, shutdown_rx);
        Ok(Application {
            listener,
            backend: Backend::File { store, writer },
            state,
            shutdown_tx,
            config,
            tls,
            hangup,
        })
    }

    /// [`Application::build`] for `--backend nats`: connects, checks the
    /// server version, finds or creates the stream. No data directory
    /// lock, file store, monitor, backups or retention ticker (the
    /// stream's replicas and limits do that work); the data directory
    /// holds only the token file.
    async fn build_nats(
        config: ServeConfig,
        alerts: Arc<Alerts>,
        tls: Option<Arc<Tls>>,
        hangup: Signal,
    ) -> Result<Application, AppError> {
        let js = JetStream::open(config.jetstream()).await?;
        let keyring = Arc::new(open_keyring(&config)?);
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let queues: Arc<dyn crate::queue::QueueService> =
            Arc::new(crate::queue::nats::NatsQueues::new(
                js.queues(),
                alerts.clone(),
                crate::queue::QueueLimits::of(&config),
            ));
        let state = AppState::with_store(
            Arc::new(js.clone()),
            None,
            alerts,
            Some(queues),
            &config,
            keyring,
            shutdown_rx,
        );
        Ok(Application {
            listener,
            backend: Backend::Nats(js),
            state,
            shutdown_tx,
            config,
            tls,
            hangup,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `stop` resolves, then shuts down in order: stop
    /// accepting, wake long-polls and streams, drain in-flight requests (up
    /// to the shutdown timeout), stop the monitor and the backup timer, let
    /// the writer commit what is queued and finish a running backup, join
    /// it, which releases the data directory's lock.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Application {
            listener,
            backend,
            state,
            shutdown_tx,
            config,
            tls,
            hangup,
        } = self;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(addr = %addr, scheme, data_dir = %config.data_dir.display(), "msgbus listening");
        let verifications = state.verifications.clone();
        let keyring = state.auth.keyring.clone();
        let queues = state.queues.clone();
        let alerts = state.alerts.clone();
        let schema_follower = schema_follower(&state, shutdown_tx.subscribe());
        let router = http::router(state);
        let mut jobs = Jobs::default();
        jobs.add(schema_follower);
        jobs.add(Some(jobs::every(
            "queue reaper",
            crate::queue::REAP_EVERY,
            FirstTick::AfterInterval,
            shutdown_tx.subscribe(),
            move |_| {
                let queues = queues.clone();
                async move { queues.reap().await }
            },
        )));
        if let Backend::File { store, .. } = &backend {
            jobs.add(Some(monitor::spawn(
                store.clone(),
                MonitorSettings {
                    interval: config.monitor_interval,
                    min_free_bytes: config.min_free_bytes,
                    read_rate: config.monitor_read_rate,
                },
                shutdown_tx.subscribe(),
            )));
            jobs.add(Some(crate::backup_timer::spawn(
                store.clone(),
                config.backup_interval,
                shutdown_tx.subscribe(),
            )));
            jobs.add(store.retention_tick().map(|every| {
                let store = store.clone();
                jobs::every(
                    "retention ticker",
                    every,
                    FirstTick::AfterInterval,
                    shutdown_tx.subscribe(),
                    move |_| {
                        store.enforce_retention();
                        std::future::ready(())
                    },
                )
            }));
        }
        let state_keyring = keyring.clone();
        jobs.add(Some(keyring_refresh(keyring, shutdown_tx.subscribe())));
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        jobs.add(Some(jobs::task(
            "SIGHUP reloader",
            tokio::spawn(reload_on_sighup(
                hangup,
                tls,
                state_keyring,
                alerts.clone(),
                shutdown_tx.subscribe(),
            )),
        )));
        let limits = crate::server::ConnLimits {
            max_connections: crate::server::connection_limit(
                config.max_connections,
                config.segment_fd_cache as u64 + crate::server::STORE_DESCRIPTOR_RESERVE,
            ),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
        };
        let mut server = tokio::spawn(crate::server::serve(
            listener,
            router,
            limits,
            acceptor,
            shutdown_tx.subscribe(),
        ));
        let served = tokio::select! {
            () = stop => None,
            r = &mut server => Some(r),
        };
        let _ = shutdown_tx.send(true);
        match served {
            Some(r) => r?,
            None => {
                tracing::info!(timeout = ?config.shutdown_timeout, "shutting down: draining requests");
                match tokio::time::timeout(config.shutdown_timeout, &mut server).await {
                    Ok(r) => r?,
                    Err(_) => {
                        tracing::warn!("drain timeout reached; closing remaining connections");
                        server.abort();
                    }
                }
            }
        }
        jobs.stop().await;
        // A running `POST /admin/verify` check stops at its next file.
        verifications.stopped(config.shutdown_timeout).await;
        // Alerts still queued (a mail waiting for its interval) go out now,
        // for at most the shutdown timeout.
        alerts.flush(config.shutdown_timeout).await;
        match backend {
            Backend::File { store, writer } => {
                store.close().await;
                drop(store);
                writer.join().await;
            }
            Backend::Nats(js) => js.close().await,
        }
        tracing::info!("msgbus stopped");
        Ok(())
    }
}

/// How often the token file is looked at: a change takes effect within
/// this (plus the time to read it).
const KEYRING_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// How often `last_used` times are written back, in refresh ticks.
const LAST_USED_EVERY: usize = 60;

/// With a store whose payload schemas other instances change too (the
/// NATS backend), the job that recompiles the validators at every change
/// its copy applies, so a schema registered through another instance is
/// enforced here within about a second (the time its KV watch takes).
/// `None` with the file store: the handlers refresh after each change
/// they make, the only changes there are.
fn schema_follower(state: &AppState, mut shutdown: watch::Receiver<bool>) -> Option<jobs::Job> {
    let mut changes = state.store.schema_changes()?;
    let (store, registry) = (state.store.clone(), state.schemas.clone());
    Some(jobs::task(
        "schema follower",
        tokio::spawn(async move {
            loop {
                changes.borrow_and_update();
                registry.refresh(&store.schema_catalog());
                tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() {
                            return;
                        }
                    }
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }),
    ))
}

/// The job that re-reads the token file when it changes and writes
/// `last_used` back once a minute.
fn keyring_refresh(keyring: Arc<Keyring>, shutdown: watch::Receiver<bool>) -> jobs::Job {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    jobs::every(
        "token file watcher",
        KEYRING_REFRESH,
        FirstTick::AfterInterval,
        shutdown,
        move |n| {
            let (keyring, failing) = (keyring.clone(), failing.clone());
            async move {
                let _ = tokio::task::spawn_blocking(move || {
                    match keyring.refresh() {
                        Ok(true) => tracing::info!(tokens = keyring.len(), "token file reloaded"),
                        Ok(false) => {}
                        // Once per failure, not every second.
                        Err(e) if !failing.swap(true, std::sync::atomic::Ordering::Relaxed) => {
                            tracing::error!(error = %e, "cannot reload the token file; the tokens loaded before stay in force")
                        }
                        Err(_) => return,
                    }
                    failing.store(false, std::sync::atomic::Ordering::Relaxed);
                    if n % LAST_USED_EVERY == LAST_USED_EVERY - 1 {
                        if let Err(e) = keyring.flush_last_used() {
                            tracing::warn!(error = %e, "cannot record tokens' last use");
                        }
                    }
                })
                .await;
            }
        },
    )
}

/// Loads the tokens and applies `--auth auto`'s rule: with no token and
/// no `MSGBUS_ADMIN_TOKEN`, refuse any address but a loopback one.
fn open_keyring(config: &ServeConfig) -> Result<Keyring, AppError> {
    let bootstrap = std::env::var("MSGBUS_ADMIN_TOKEN")
        .ok()
        .filter(|s| !s.is_empty());
    let keyring = Keyring::open(&config.data_dir, config.auth, bootstrap.as_deref())?;
    let loopback = config.addr.ip().is_loopback();
    match config.auth {
        AuthMode::Auto if !keyring.required() && !loopback => {
            return Err(format!(
                "refusing to listen on {} with no access tokens: anyone who can reach it could \
                 read, publish and delete. Create a token first (`msgbus token create --data-dir {} \
                 --name admin --role admin`), set MSGBUS_ADMIN_TOKEN (32+ characters), listen on \
                 127.0.0.1, or pass `--auth off` to run open on purpose",
                config.addr,
                config.data_dir.display()
            )
            .into())
        }
        AuthMode::Off if !loopback => tracing::warn!(
            addr = %config.addr,
            "access control is off (--auth off) on a non-loopback address: anyone who can reach it may do everything"
        ),
        _ => {}
    }
    tracing::info!(
        mode = ?config.auth,
        tokens = keyring.len(),
        required = keyring.required(),
        "access control"
    );
    Ok(keyring)
}

/// On every SIGHUP until shutdown: rereads the token file (at once,
/// rather than at the watcher's next tick) and, when serving HTTPS, the
/// certificate and key. A certificate reload that fails keeps the
/// certificate in use and raises an alert (resolved by the next reload that
/// succeeds).
async fn reload_on_sighup(
    mut hangup: Signal,
    tls: Option<Arc<Tls>>,
    keyring: Arc<Keyring>,
    alerts: Arc<Alerts>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            got = hangup.recv() => if got.is_none() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let k = keyring.clone();
        match tokio::task::spawn_blocking(move || k.refresh()).await {
            Ok(Ok(changed)) => tracing::info!(
                changed,
                tokens = keyring.len(),
                "SIGHUP: token file checked"
            ),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "SIGHUP: cannot reload the token file; the tokens loaded before stay in force")
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: token file reload failed"),
        }
        let Some(tls) = tls.clone() else {
            continue;
        };
        // Reading two small files: quick, but still off the async threads.
        match tokio::task::spawn_blocking(move || tls.reload()).await {
            Ok(Ok(loaded)) => {
                tracing::info!(
                    fingerprint_sha256 = %loaded.fingerprint,
                    chain_len = loaded.chain_len,
                    "reloaded TLS certificate"
                );
                alerts.resolve(&[TLS_RELOAD_FAILED], None);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "TLS certificate reload failed; still serving the previous certificate");
                alerts.raise(
                    Severity::Error,
                    TLS_RELOAD_FAILED,
                    None,
                    format!(
                        "SIGHUP: the file of {} could not be loaded; still serving the previous \
                         TLS certificate (the log names the file and the reason)",
                        e.flag()
                    ),
                );
            }
            Err(e) => tracing::error!(error = %e, "TLS certificate reload failed"),
        }
    }
}

/// The alert kind of a failed certificate reload.
const TLS_RELOAD_FAILED: &str = "tls_reload_failed";

/// Runs the server until SIGTERM or SIGINT.
pub async fn serve(config: ServeConfig) -> Result<(), AppError> {
    // Install the handlers before the store opens and the port answers, so
    // a SIGTERM that arrives as soon as the server is ready still drains.
    // (The open-file limit was raised by `main`, before the runtime.)
    let stop = shutdown_signal()?;
    let app = Application::build(config).await?;
    app.run_until(stop).await
}

/// Installs SIGTERM and SIGINT handlers now; the returned future resolves
/// on the first of them.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
