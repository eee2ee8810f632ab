//! The offline transport of `msgbus import --data-dir` and `msgbus export
//! --data-dir`: the store opened as `app` opens it (the data directory's
//! lock first, so a directory a running server holds is refused; recovery;
//! the writer thread), and the server's own router, sent requests in
//! process without a socket. An offline import therefore runs exactly the
//! server's validation, payload schemas, idempotency and group commit;
//! nothing writes a segment file by hand. The settings are the server's
//! (`MSGBUS_*` variables apply, e.g. `MSGBUS_MAX_EVENT_BYTES`); access
//! control is off: whoever may open the data directory may do anything.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::app::AppError;
use crate::auth::{AuthMode, Keyring};
use crate::http::{self, AppState};
use crate::store::handle::WriterThread;
use crate::store::StoreHandle;
use crate::transfer::{Pending, Reply, Transport, TransportError};

/// A stopped store, opened for requests in process.
pub struct Local {
    router: axum::Router,
    store: StoreHandle,
    writer: WriterThread,
    _shutdown: watch::Sender<bool>,
}

impl Local {
    /// Opens the store in `data_dir` (created if missing). Fails with
    /// [`crate::store::StoreError::Locked`] while a server holds it.
    pub fn open(data_dir: &Path) -> Result<Local, AppError> {
        let (config, store, writer) = open_store(data_dir)?;
        let keyring = Arc::new(Keyring::open(&config.data_dir, AuthMode::Off, None)?);
        let (shutdown, rx) = watch::channel(false);
        let state = AppState::new(store.clone(), &config, keyring, rx);
        Ok(Local {
            router: http::router(state),
            store,
            writer,
            _shutdown: shutdown,
        })
    }

    /// Lets the writer commit what is queued and stop, which releases the
    /// data directory's lock.
    pub async fn close(self) {
        let Local {
            router,
            store,
            writer,
            _shutdown,
        } = self;
        drop(router);
        store.close().await;
        drop(store);
        writer.join().await;
    }
}

impl Transport for Local {
    fn send<'a>(&'a self, method: &'a str, path: &'a str, body: Option<Vec<u8>>) -> Pending<'a> {
        Box::pin(async move {
            let mut req = axum::http::Request::builder().method(method).uri(path);
            if body.is_some() {
                req = req.header(axum::http::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(body.map(Body::from).unwrap_or_else(Body::empty))
                .map_err(|e| TransportError(format!("a request that cannot be built: {e}")))?;
            let res = self
                .router
                .clone()
                .oneshot(req)
                .await
                .map_err(|e| TransportError(e.to_string()))?;
            let status = res.status().as_u16();
            let body = axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .map_err(|e| TransportError(format!("cannot read the answer: {e}")))?;
            Ok(Reply {
                status,
                body: body.to_vec(),
            })
        })
    }
}

/// Opens a stopped store as the offline tools do, with the server's
/// settings (its `MSGBUS_*` variables; no flags): the directory's lock
/// first, then recovery and the writer thread. Answers the settings too.
pub fn open_store(
    data_dir: &Path,
) -> Result<(crate::config::ServeConfig, StoreHandle, WriterThread), AppError> {
    use clap::Parser;
    /// The server's settings alone.
    #[derive(Parser)]
    struct Settings {
        #[command(flatten)]
        serve: crate::config::ServeConfig,
    }
    let cli = Settings::try_parse_from([
        std::ffi::OsStr::new("msgbus"),
        std::ffi::OsStr::new("--data-dir"),
        data_dir.as_os_str(),
    ])
    .map_err(|e| format!("the server settings in MSGBUS_* variables: {e}"))?;
    let config = cli.serve;
    let alerts = Arc::new(
        crate::alerts::Alerts::new(config.alert_capacity, None)
            .hiding(crate::http::error::HidePaths::new(&config.data_dir)),
    );
    let (store, writer) = StoreHandle::open(&config.store(), alerts)?;
    Ok((config, store, writer))
}
