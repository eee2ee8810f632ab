//! Alerts: every detection, repair, failed repair, read-only switch, low-disk
//! event and poisoning becomes (1) a structured `tracing` event, (2) an entry
//! in a bounded list served at `GET /alerts`, (3) a counter in `/metrics`, and
//! (4) a notice to each configured channel: a webhook in one of several
//! formats ([`webhook`]) and email over SMTP ([`email`]). Each channel has
//! its own task and bounded queue, so raising an alert never blocks the
//! caller (the writer thread raises some).
//!
//! Some kinds name a *condition* that lasts until it clears ([`CONDITIONS`]);
//! clearing it ([`Alerts::resolve`]) marks its listed alerts resolved and
//! tells the channels (PagerDuty gets a `resolve` with the trigger's
//! `dedup_key`). The other kinds are one-off notices.

pub mod email;
pub mod webhook;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use utoipa::ToSchema;

pub use webhook::WebhookFormat;

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

/// Kinds that name a condition lasting until it clears, and what clears it:
///
/// | kind | clears when |
/// |---|---|
/// | `detection` | the file is repaired (`repair`) |
/// | `repair_failed` | a later repair of the file succeeds (`repair`) |
/// | `read_only` | repairs succeed and writes are accepted again (`read_write`) |
/// | `low_disk` | free space is back above `--min-free-bytes` (`disk_ok`) |
/// | `backup_failed` | a backup is taken and verified |
/// | `tls_reload_failed` | a later certificate reload succeeds |
///
/// Every other kind is a one-off notice.
pub const CONDITIONS: &[&str] = &[
    "detection",
    "repair_failed",
    "read_only",
    "low_disk",
    "backup_failed",
    "tls_reload_failed",
];

/// Notices that announce a condition cleared: PagerDuty gets the
/// condition's `resolve` instead of an incident of their own.
pub const CLEARING: &[&str] = &["repair", "read_write", "disk_ok"];

/// The key naming a condition (and its PagerDuty `dedup_key`, after the
/// host): its kind and file.
pub fn condition_key(kind: &str, file: Option<&str>) -> String {
    format!("{kind}:{}", file.unwrap_or("-"))
}

/// A condition that cleared.
#[derive(Debug, Clone, Serialize)]
pub struct Cleared {
    /// The condition's kind.
    pub kind: String,
    /// Its file, if any.
    pub file: Option<String>,
    /// The id of the alert that raised it (the latest, if raised again).
    pub alert_id: u64,
    /// RFC 3339 time it cleared.
    pub time: String,
}

impl Cleared {
    /// The condition's key ([`condition_key`]).
    pub fn key(&self) -> String {
        condition_key(&self.kind, self.file.as_deref())
    }
}

/// What the channels are told.
#[derive(Debug, Clone)]
pub enum Notice {
    /// An alert was raised.
    Raised(Alert),
    /// A condition cleared.
    Cleared(Cleared),
}

/// Delivery outcomes of one channel, for `/metrics`.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Messages delivered (a webhook POST answered 2xx, a mail accepted by
    /// the SMTP server).
    pub sent: AtomicU64,
    /// Attempts that failed and were tried again.
    pub retried: AtomicU64,
    /// Messages given up on (after the last retry, or refused for good).
    pub failed: AtomicU64,
}

impl Deliveries {
    /// Sent, retried, failed.
    pub fn get(&self) -> [(&'static str, u64); 3] {
        [
            ("sent", self.sent.load(Ordering::Relaxed)),
            ("retried", self.retried.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
        ]
    }
}

/// The alert channel settings of `serve` and `msgbus alert test` (see
/// `config.rs` for each flag, its variable and its default).
#[derive(Debug, Clone, Default)]
pub struct AlertSettings {
    /// `--alert-webhook`.
    pub alert_webhook: Option<String>,
    /// `--alert-webhook-format`.
    pub alert_webhook_format: WebhookFormat,
    /// `--smtp-url`.
    pub smtp_url: Option<String>,
    /// `--smtp-ca-file`.
    pub smtp_ca_file: Option<std::path::PathBuf>,
    /// `--alert-email-from`.
    pub alert_email_from: Option<String>,
    /// `--alert-email-to`.
    pub alert_email_to: Vec<String>,
    /// `--alert-email-interval`.
    pub alert_email_interval: Duration,
}

/// A wrong alert setting (naming the flag or variable and why), or a
/// failed test delivery.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

impl From<String> for Error {
    fn from(s: String) -> Self {
        Error(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Error(s.to_string())
    }
}

/// The configured channels, checked at start ([`Channels::from_config`]).
#[derive(Debug, Clone, Default)]
pub struct Channels {
    /// The webhook, if any.
    pub webhook: Option<webhook::WebhookConfig>,
    /// Email, if any.
    pub email: Option<email::EmailConfig>,
}

impl Channels {
    /// The channels `config` asks for; an error names the setting that is
    /// wrong and why (the server then refuses to start).
    pub fn from_config(config: &AlertSettings) -> Result<Channels, Error> {
        Ok(Channels {
            webhook: webhook::WebhookConfig::from_config(config)?,
            email: email::EmailConfig::from_config(config)?,
        })
    }

    /// True when no channel is configured.
    pub fn is_empty(&self) -> bool {
        self.webhook.is_none() && self.email.is_none()
    }
}

/// One channel's queue: notices wait here for its task.
#[derive(Debug)]
struct Queue {
    name: &'static str,
    tx: mpsc::Sender<Notice>,
}

/// State shared by [`Alerts`] and its channel tasks.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Notices queued to a channel and not yet delivered or given up on.
    unsent: AtomicUsize,
    /// Woken by [`Alerts::flush`]: email sends what it holds at once.
    urgent: Notify,
    /// Webhook outcomes.
    pub(crate) webhook: Deliveries,
    /// Email outcomes.
    pub(crate) email: Deliveries,
}

impl Shared {
    /// One queued notice is done with (delivered or given up on).
    pub(crate) fn done(&self, n: usize) {
        self.unsent.fetch_sub(n, Ordering::SeqCst);
    }
}

/// The bounded alert list, its counters and the channel queues.
#[derive(Debug)]
pub struct Alerts {
    inner: Mutex<Inner>,
    queues: Vec<Queue>,
    shared: Arc<Shared>,
    capacity: usize,
    /// Takes the data directory's path out of listed and posted alerts.
    hide: crate::redact::HidePaths,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    list: VecDeque<Alert>,
    counts: BTreeMap<String, u64>,
    /// Open conditions: key → the alert that raised them (bounded by the
    /// store's files and the handful of store-wide conditions).
    open: BTreeMap<String, Alert>,
}

impl Alerts {
    /// An alert list holding at most `capacity` alerts, posting each to
    /// `webhook` (Slack format) when set. Must be called inside a tokio
    /// runtime when a webhook is given (it spawns the sender task).
    pub fn new(capacity: usize, webhook: Option<String>) -> Self {
        let webhook = webhook
            .filter(|u| !u.is_empty())
            .map(|url| webhook::WebhookConfig {
                url,
                format: WebhookFormat::Slack,
                routing_key: None,
            });
        Alerts::with_channels(
            capacity,
            Channels {
                webhook,
                email: None,
            },
        )
    }

    /// An alert list holding at most `capacity` alerts, telling `channels`.
    /// Must be called inside a tokio runtime when a channel is given (it
    /// spawns one task per channel).
    pub fn with_channels(capacity: usize, channels: Channels) -> Self {
        let shared = Arc::new(Shared::default());
        let mut queues = Vec::new();
        if let Some(config) = channels.webhook {
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(webhook::run(config, rx, shared.clone()));
            queues.push(Queue {
                name: "webhook",
                tx,
            });
        }
        if let Some(config) = channels.email {
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(email::run(config, rx, shared.clone()));
            queues.push(Queue { name: "email", tx });
        }
        Alerts {
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
            queues,
            shared,
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

    /// Raises an alert. Never blocks: a full channel queue drops the
    /// notice for that channel (the alert is still listed, logged and
    /// counted).
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
            if CONDITIONS.contains(&kind) {
                let key = condition_key(kind, alert.file.as_deref());
                inner.open.insert(key, alert.clone());
            }
            alert
        };
        self.notify(Notice::Raised(alert.clone()));
        alert
    }

    /// Queues `notice` to every channel, without waiting.
    fn notify(&self, notice: Notice) {
        for q in &self.queues {
            self.shared.unsent.fetch_add(1, Ordering::SeqCst);
            if q.tx.try_send(notice.clone()).is_err() {
                self.shared.done(1);
                tracing::warn!(
                    channel = q.name,
                    "alert channel queue full; this notice is not delivered to it"
                );
            }
        }
    }

    /// Waits (at most `within`) until every queued notice was delivered
    /// or given up on, and has email send what it holds without waiting
    /// for its grouping interval: a server that refuses to start, or
    /// stops, still tells the people watching why.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.shared.unsent.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            self.shared.urgent.notify_waiters();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clears the open conditions of `kinds` about `file` (or, with
    /// `None`, about any file): marks their listed alerts resolved and
    /// tells the channels once per condition that was open.
    pub fn resolve(&self, kinds: &[&str], file: Option<&str>) {
        let file = file.map(|f| self.hide.apply(f).into_owned());
        let file = file.as_deref();
        let cleared: Vec<Alert> = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            for a in inner.list.iter_mut() {
                if !a.resolved
                    && kinds.contains(&a.kind.as_str())
                    && (file.is_none() || a.file.as_deref() == file)
                {
                    a.resolved = true;
                }
            }
            let keys: Vec<String> = inner
                .open
                .iter()
                .filter(|(_, a)| {
                    kinds.contains(&a.kind.as_str())
                        && (file.is_none() || a.file.as_deref() == file)
                })
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| inner.open.remove(k)).collect()
        };
        let time = crate::clock::now_rfc3339();
        for a in cleared {
            tracing::info!(kind = %a.kind, file = a.file.as_deref().unwrap_or("-"), "alert condition cleared");
            self.notify(Notice::Cleared(Cleared {
                kind: a.kind,
                file: a.file,
                alert_id: a.id,
                time: time.clone(),
            }));
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

    /// Delivery outcomes per channel (`webhook`, `email`), for `/metrics`.
    pub fn deliveries(&self) -> [(&'static str, [(&'static str, u64); 3]); 2] {
        [
            ("webhook", self.shared.webhook.get()),
            ("email", self.shared.email.get()),
        ]
    }
}

/// This machine's host name, naming the sender in mails, PagerDuty's
/// `source` and CloudEvents' `source` (`msgbus` when it cannot be read).
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "msgbus".to_string())
}

/// Attempts of one delivery (a webhook POST, a mail): the first and five
/// retries, 1 s, 2 s, 4 s, 8 s and 16 s apart ([`backoff`]).
pub(crate) const ATTEMPTS: u32 = 6;

/// The delay before attempt `attempt + 1` (1-based `attempt`).
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1 << (attempt - 1).min(4))
}

/// The one-line summary of an alert, for chat messages and mail.
pub fn summary(alert: &Alert) -> String {
    format!(
        "msgbus {}: {}{} — {}",
        match alert.severity {
            Severity::Warning => "warning",
            Severity::Error => "ERROR",
        },
        alert.kind,
        alert
            .file
            .as_deref()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default(),
        alert.detail
    )
}

/// The alert `msgbus alert test` sends.
pub fn test_alert() -> Alert {
    Alert {
        id: 0,
        time: crate::clock::now_rfc3339(),
        severity: Severity::Warning,
        kind: "test".to_string(),
        file: None,
        detail: "a test alert sent by `msgbus alert test`; no action is needed".to_string(),
        resolved: false,
    }
}

/// `msgbus alert test`: sends [`test_alert`] through every channel of
/// `config` at once (one attempt each, no grouping) and writes one line per
/// channel to `out`. Ok(true) when all succeeded.
pub async fn send_test(
    config: &AlertSettings,
    out: &mut impl std::io::Write,
) -> Result<bool, Error> {
    let channels = Channels::from_config(config)?;
    if channels.is_empty() {
        return Err("no alert channel is configured: set --alert-webhook (or \
             --alert-webhook-format pagerduty) and/or --smtp-url with --alert-email-from \
             and --alert-email-to"
            .into());
    }
    let alert = test_alert();
    let mut all_ok = true;
    if let Some(w) = &channels.webhook {
        let r = webhook::send_test(w, &alert).await;
        all_ok &= r.is_ok();
        let _ = writeln!(
            out,
            "webhook ({}, {}): {}",
            w.format.name(),
            webhook::describe_url(&w.url),
            r.map_or_else(|e| format!("FAILED: {e}"), |()| "ok".to_string())
        );
    }
    if let Some(e) = &channels.email {
        let r = email::send_test(e, &alert).await;
        all_ok &= r.is_ok();
        let _ = writeln!(
            out,
            "email ({} to {}): {}",
            e.describe(),
            e.to.join(", "),
            r.map_or_else(|e| format!("FAILED: {e}"), |()| "ok".to_string())
        );
    }
    Ok(all_ok)
}
