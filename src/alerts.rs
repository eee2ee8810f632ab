//! Alerts: every detection, repair, failed repair, read-only switch, low-disk
//! event and poisoning becomes (1) a structured `tracing` event, (2) an entry
//! in a bounded list served at `GET /alerts`, (3) a counter in `/metrics`, and
//! (4) when a webhook is configured, a Slack-compatible POST sent by its own
//! task with retries, so raising an alert never blocks the caller.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::ToSchema;

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something was wrong and has been handled (e.g. a repair).
    Warning,
    /// Something is wrong and needs attention.
    Error,
}

/// One alert.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Alert {
    /// Increasing id.
    pub id: u64,
    /// RFC 3339 time it was raised.
    pub time: String,
    /// Severity.
    pub severity: Severity,
    /// Kind, e.g. `detection`, `repair`, `repair_failed`, `read_only`, `low_disk`, `poisoned`.
    pub kind: String,
    /// The file concerned, if any.
    pub file: Option<String>,
    /// What happened.
    pub detail: String,
    /// True once the condition was repaired or cleared.
    pub resolved: bool,
}

/// The bounded alert list, its counters and the webhook queue.
#[derive(Debug)]
pub struct Alerts {
    inner: Mutex<Inner>,
    webhook: Option<mpsc::Sender<Alert>>,
    /// Alerts queued for the webhook and not yet posted or given up on.
    unsent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    capacity: usize,
    /// Takes the data directory's path out of listed and posted alerts.
    hide: crate::redact::HidePaths,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    list: VecDeque<Alert>,
    counts: BTreeMap<String, u64>,
}

impl Alerts {
    /// An alert list holding at most `capacity` alerts, posting each to
    /// `webhook` when set. Must be called inside a tokio runtime when a
    /// webhook is given (it spawns the sender task).
    pub fn new(capacity: usize, webhook: Option<String>) -> Self {
        let unsent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let webhook = webhook.filter(|u| !u.is_empty()).map(|url| {
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(send_webhooks(url, rx, unsent.clone()));
            tx
        });
        Alerts {
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            webhook,
            unsent,
            capacity: capacity.max(1),
            hide: Default::default(),
        }
    }

    /// Names files relative to the data directory in listed and posted
    /// alerts (the log keeps the full paths, for operators).
    pub fn hiding(mut self, hide: crate::redact::HidePaths) -> Self {
        self.hide = hide;
        self
    }

    /// Raises an alert. Never blocks: a full webhook queue drops the POST
    /// (the alert is still listed, logged and counted).
    pub fn raise(
        &self,
        severity: Severity,
        kind: &str,
        file: Option<String>,
        detail: impl Into<String>,
    ) -> Alert {
        let detail = detail.into();
        match severity {
            Severity::Warning => {
                tracing::warn!(kind, file = file.as_deref().unwrap_or("-"), detail = %detail, "alert")
            }
            Severity::Error => {
                tracing::error!(kind, file = file.as_deref().unwrap_or("-"), detail = %detail, "alert")
            }
        }
        let file = file.map(|f| self.hide.apply(&f).into_owned());
        let detail = self.hide.apply(&detail).into_owned();
        let alert = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let alert = Alert {
                id: inner.next_id,
                time: crate::clock::now_rfc3339(),
                severity,
                kind: kind.to_string(),
                file,
                detail,
                resolved: false,
            };
            inner.next_id += 1;
            *inner.counts.entry(kind.to_string()).or_default() += 1;
            inner.list.push_back(alert.clone());
            while inner.list.len() > self.capacity {
                inner.list.pop_front();
            }
            alert
        };
        if let Some(tx) = &self.webhook {
            self.unsent
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if tx.try_send(alert.clone()).is_err() {
                self.unsent
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(
                    id = alert.id,
                    "alert webhook queue full; this alert is not posted"
                );
            }
        }
        alert
    }

    /// Waits (at most `within`) until every queued alert was posted to the
    /// webhook or given up on: a server that refuses to start still tells
    /// the people watching the webhook why.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.unsent.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks unresolved alerts about `file` (or, with `None`, of `kind`) resolved.
    pub fn resolve(&self, kinds: &[&str], file: Option<&str>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for a in inner.list.iter_mut() {
            if !a.resolved
                && kinds.contains(&a.kind.as_str())
                && (file.is_none() || a.file.as_deref() == file)
            {
                a.resolved = true;
            }
        }
    }

    /// The listed alerts, newest last.
    pub fn list(&self) -> Vec<Alert> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .iter()
            .cloned()
            .collect()
    }

    /// Alerts raised since start, per kind.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .clone()
    }
}

/// Posts alerts to the webhook one by one, retrying each with exponential
/// backoff (1 s, 2 s, 4 s, 8 s, 16 s) before giving up on it.
async fn send_webhooks(
    url: String,
    mut rx: mpsc::Receiver<Alert>,
    unsent: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    // The URL is a secret (Slack's carries the token in its path): the
    // log names only its scheme, host and port, and errors drop it.
    let target = reqwest::Url::parse(&url)
        .map(|u| {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            )
        })
        .unwrap_or_else(|_| "an unparsable URL".to_string());
    tracing::info!(webhook = %target, "alert webhook configured");
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.without_url(), webhook = %target, "cannot build the webhook client; alerts are not posted");
            return;
        }
    };
    while let Some(alert) = rx.recv().await {
        let body = serde_json::json!({
            "text": format!(
                "msgbus {}: {}{} — {}",
                match alert.severity { Severity::Warning => "warning", Severity::Error => "ERROR" },
                alert.kind,
                alert.file.as_deref().map(|f| format!(" ({f})")).unwrap_or_default(),
                alert.detail
            ),
            "alert": alert,
        });
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=6 {
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => {
                    tracing::warn!(status = %r.status(), attempt, webhook = %target, "alert webhook refused the alert")
                }
                Err(e) => {
                    tracing::warn!(error = %e.without_url(), attempt, webhook = %target, "alert webhook unreachable")
                }
            }
            if attempt == 6 {
                tracing::error!(
                    id = alert.id,
                    "alert webhook failed 6 times; giving up on this alert"
                );
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        unsent.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
