//! The command-line client: `msgbus pub`, `msgbus sub`, and the online
//! transport of `msgbus import`/`export` ([`HttpClient`]). It speaks the
//! HTTP API only: nothing here names the store.
//!
//! - this file: [`HttpClient`] (base URL, bearer token, the [`Transport`])
//! - `publish`: `msgbus pub`, one event or NDJSON batches
//! - `subscribe`: `msgbus sub`, the live stream resumed with
//!   `Last-Event-ID` after a dropped connection, or a durable consumer

pub mod publish;
pub mod subscribe;

use std::time::Duration;

use crate::transfer::{Pending, Reply, Transport, TransportError};

/// Exit status when the server refused (the problem's detail is printed).
pub const EXIT_REFUSED: u8 = 1;
/// Exit status when the command could not run (bad arguments, no server,
/// a file that cannot be read).
pub const EXIT_CANNOT_RUN: u8 = 2;

/// Where the server is and how to authenticate (`--url`/`MSGBUS_URL`,
/// `--token`/`MSGBUS_TOKEN`).
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    #[arg(long, env = "MSGBUS_URL")]
    pub url: String,
    /// An access token (`mb_<id>_<secret>`), sent as `Authorization: Bearer`.
    #[arg(long, env = "MSGBUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// An HTTP client of one server.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl HttpClient {
    /// A client of `conn`'s server. Requests time out after 5 minutes
    /// (a long-poll is at most 60 s); streams are not timed out.
    pub fn new(conn: &Connection) -> Result<HttpClient, TransportError> {
        let base = conn.url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(TransportError(format!(
                "--url {:?}: expected http://HOST:PORT or https://HOST:PORT",
                conn.url
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| TransportError(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpClient {
            base,
            token: conn.token.clone().filter(|t| !t.is_empty()),
            http,
        })
    }

    /// A request to `path` (with its query) with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// Words a failed request: what could not be reached and why.
pub fn unreachable(base: &str, e: &reqwest::Error) -> TransportError {
    let mut why = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        why.push_str(&format!(": {s}"));
        src = s.source();
    }
    TransportError(format!("cannot reach {base}: {why}"))
}

impl Transport for HttpClient {
    fn send<'a>(&'a self, method: &'a str, path: &'a str, body: Option<Vec<u8>>) -> Pending<'a> {
        Box::pin(async move {
            let m = reqwest::Method::from_bytes(method.as_bytes())
                .map_err(|e| TransportError(e.to_string()))?;
            let mut req = self.request(m, path).timeout(Duration::from_secs(300));
            if let Some(b) = body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b);
            }
            let res = req.send().await.map_err(|e| unreachable(&self.base, &e))?;
            let status = res.status().as_u16();
            let body = res
                .bytes()
                .await
                .map_err(|e| unreachable(&self.base, &e))?
                .to_vec();
            Ok(Reply { status, body })
        })
    }
}
