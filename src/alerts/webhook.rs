//! The alert webhook: alerts POSTed to one URL in one of five body formats
//! (`--alert-webhook-format`), by one task, each retried with backoff.
//!
//! | format | raised alert | cleared condition |
//! |---|---|---|
//! | `slack` | `{"text": summary, "alert": {...}}` | nothing |
//! | `discord` | `{"content": summary}` (at most 2000 characters, no mentions) | nothing |
//! | `teams` | a message with one Adaptive Card: summary and facts | nothing |
//! | `pagerduty` | Events v2 `trigger` with a `dedup_key` (not for `repair`, `read_write`, `disk_ok`: they clear) | Events v2 `resolve` with the trigger's `dedup_key` |
//! | `cloudevents` | a CloudEvent `msgbus.alert.raised` (structured JSON) with the alert as `data` | a CloudEvent `msgbus.alert.cleared` |
//!
//! Bodies carry what `/alerts` lists (kind, severity, file relative to the
//! data directory, detail), never event payloads or secrets. The URL can
//! be a secret (Slack's and Discord's carry a token in the path): logs name
//! only its scheme, host and port.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    backoff, condition_key, summary, Alert, AlertSettings, Cleared, Deliveries, Error, Notice,
    Severity, Shared, ATTEMPTS, CLEARING, CONDITIONS,
};

/// The body format of the alert webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WebhookFormat {
    /// Slack incoming webhook: `{"text"}` plus the structured `alert`.
    #[default]
    Slack,
    /// Discord webhook: `{"content"}`.
    Discord,
    /// Microsoft Teams (incoming webhook or workflow): an Adaptive Card message.
    Teams,
    /// PagerDuty Events API v2: `trigger` and `resolve` with a `dedup_key`.
    Pagerduty,
    /// A CloudEvent in structured JSON mode.
    Cloudevents,
}

impl WebhookFormat {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WebhookFormat::Slack => "slack",
            WebhookFormat::Discord => "discord",
            WebhookFormat::Teams => "teams",
            WebhookFormat::Pagerduty => "pagerduty",
            WebhookFormat::Cloudevents => "cloudevents",
        }
    }
}

/// PagerDuty's Events API v2 endpoint: the webhook URL of the `pagerduty`
/// format when `--alert-webhook` is not set.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// The environment variable holding the PagerDuty routing (integration) key.
pub const PAGERDUTY_KEY_ENV: &str = "MSGBUS_PAGERDUTY_ROUTING_KEY";

/// A checked webhook setting.
#[derive(Clone)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: String,
    /// The body format.
    pub format: WebhookFormat,
    /// PagerDuty's routing key (the `pagerduty` format only).
    pub routing_key: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL and the routing key are secrets.
        f.debug_struct("WebhookConfig")
            .field("url", &describe_url(&self.url))
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl WebhookConfig {
    /// The webhook `config` asks for, if any.
    pub fn from_config(config: &AlertSettings) -> Result<Option<WebhookConfig>, Error> {
        let url = config
            .alert_webhook
            .clone()
            .filter(|u| !u.trim().is_empty());
        let format = config.alert_webhook_format;
        let routing_key = match format {
            WebhookFormat::Pagerduty => Some(
                std::env::var(PAGERDUTY_KEY_ENV)
                    .ok()
                    .filter(|k| !k.trim().is_empty())
                    .ok_or_else(|| {
                        format!(
                            "--alert-webhook-format pagerduty needs the routing key in {PAGERDUTY_KEY_ENV}"
                        )
                    })?,
            ),
            _ => None,
        };
        let url = match (url, format) {
            (Some(u), _) => u,
            (None, WebhookFormat::Pagerduty) => PAGERDUTY_URL.to_string(),
            (None, _) => return Ok(None),
        };
        match reqwest::Url::parse(&url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return Err(Error::from(
                    "--alert-webhook: not an http:// or https:// URL (the value is not shown: \
                     it may hold a token)"
                        .to_string(),
                ))
            }
        }
        Ok(Some(WebhookConfig {
            url,
            format,
            routing_key,
        }))
    }
}

/// `scheme://host:port` of `url`, for logs (the path and query may hold a
/// token).
pub fn describe_url(url: &str) -> String {
    reqwest::Url::parse(url)
        .map(|u| {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or("?"),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            )
        })
        .unwrap_or_else(|_| "an unparsable URL".to_string())
}

/// What the bodies name besides the alert.
struct Context {
    host: String,
    routing_key: Option<String>,
}

/// PagerDuty's `dedup_key` of a condition, or of a one-off notice.
fn dedup_key(host: &str, key: &str) -> String {
    format!("msgbus/{host}/{key}")
}

/// The body for `notice` in `format`, or `None` when the format does not
/// carry this notice.
fn body(format: WebhookFormat, notice: &Notice, ctx: &Context) -> Option<Value> {
    match (format, notice) {
        (WebhookFormat::Slack, Notice::Raised(a)) => Some(json!({
            "text": summary(a),
            "alert": a,
        })),
        (WebhookFormat::Discord, Notice::Raised(a)) => Some(json!({
            "content": truncate(&summary(a), 2000),
            "allowed_mentions": {"parse": []},
        })),
        (WebhookFormat::Teams, Notice::Raised(a)) => Some(teams_card(a, &ctx.host)),
        (WebhookFormat::Pagerduty, Notice::Raised(a)) => {
            if CLEARING.contains(&a.kind.as_str()) {
                return None;
            }
            let key = if CONDITIONS.contains(&a.kind.as_str()) {
                condition_key(&a.kind, a.file.as_deref())
            } else {
                // A one-off notice: an incident of its own (ids start
                // again at 1 after a restart, so the time is part of it).
                format!("alert:{}:{}", a.id, a.time)
            };
            Some(pagerduty_trigger(a, &dedup_key(&ctx.host, &key), ctx))
        }
        (WebhookFormat::Pagerduty, Notice::Cleared(c)) => {
            Some(pagerduty_resolve(&dedup_key(&ctx.host, &c.key()), ctx))
        }
        (WebhookFormat::Cloudevents, Notice::Raised(a)) => Some(cloudevent(
            "msgbus.alert.raised",
            &a.time,
            a.file.as_deref(),
            json!(a),
            ctx,
        )),
        (WebhookFormat::Cloudevents, Notice::Cleared(c)) => Some(cloudevent(
            "msgbus.alert.cleared",
            &c.time,
            c.file.as_deref(),
            json!(c),
            ctx,
        )),
        (_, Notice::Cleared(_)) => None,
    }
}

/// At most `max` characters of `s`.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

fn teams_card(a: &Alert, host: &str) -> Value {
    let mut facts = vec![
        json!({"title": "Severity", "value": severity_name(a.severity)}),
        json!({"title": "Kind", "value": a.kind}),
        json!({"title": "Host", "value": host}),
        json!({"title": "Time", "value": a.time}),
    ];
    if let Some(f) = &a.file {
        facts.push(json!({"title": "File", "value": f}));
    }
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "text": format!("msgbus {}: {}", severity_name(a.severity), a.kind),
                        "weight": "Bolder",
                        "size": "Medium",
                        "color": if a.severity == Severity::Error { "Attention" } else { "Warning" },
                        "wrap": true,
                    },
                    {"type": "TextBlock", "text": a.detail, "wrap": true},
                    {"type": "FactSet", "facts": facts},
                ],
            },
        }],
    })
}

fn pagerduty_trigger(a: &Alert, dedup_key: &str, ctx: &Context) -> Value {
    json!({
        "routing_key": ctx.routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "msgbus",
        "payload": {
            "summary": truncate(&summary(a), 1024),
            "source": ctx.host,
            "severity": severity_name(a.severity),
            "timestamp": a.time,
            "component": "msgbus",
            "class": a.kind,
            "custom_details": a,
        },
    })
}

fn pagerduty_resolve(dedup_key: &str, ctx: &Context) -> Value {
    json!({
        "routing_key": ctx.routing_key,
        "event_action": "resolve",
        "dedup_key": dedup_key,
    })
}

fn cloudevent(ty: &str, time: &str, subject: Option<&str>, data: Value, ctx: &Context) -> Value {
    let mut ev = json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": format!("urn:msgbus:{}", ctx.host),
        "type": ty,
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(s) = subject {
        ev["subject"] = json!(s);
    }
    ev
}

/// One attempt failed: may it be tried again?
struct Failure {
    retry: bool,
    /// False when the receiver could not be reached at all.
    answered: bool,
    reason: String,
}

fn client() -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| {
            Error(format!(
                "cannot build the webhook client: {}",
                e.without_url()
            ))
        })
}

/// POSTs `body` once. 2xx is success; 408, 429 and 5xx answers and
/// transport errors may be retried; other answers are final (the body
/// would be refused again).
async fn post_once(
    client: &reqwest::Client,
    config: &WebhookConfig,
    body: &Value,
) -> Result<(), Failure> {
    let content_type = match config.format {
        WebhookFormat::Cloudevents => "application/cloudevents+json",
        _ => "application/json",
    };
    let sent = client
        .post(&config.url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body.to_string())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => {
            let s = r.status();
            Err(Failure {
                retry: s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429,
                answered: true,
                reason: format!("answered {s}"),
            })
        }
        Err(e) => Err(Failure {
            retry: true,
            answered: false,
            reason: format!("unreachable: {}", e.without_url()),
        }),
    }
}

/// Delivers `body` with retries, counting the outcome.
async fn deliver(
    client: &reqwest::Client,
    config: &WebhookConfig,
    body: &Value,
    target: &str,
    counts: &Deliveries,
) {
    use std::sync::atomic::Ordering::Relaxed;
    for attempt in 1..=ATTEMPTS {
        let f = match post_once(client, config, body).await {
            Ok(()) => {
                counts.sent.fetch_add(1, Relaxed);
                return;
            }
            Err(f) => f,
        };
        if f.answered {
            tracing::warn!(reason = %f.reason, attempt, webhook = %target, "alert webhook refused the alert");
        } else {
            tracing::warn!(reason = %f.reason, attempt, webhook = %target, "alert webhook unreachable");
        }
        if !f.retry {
            tracing::error!(webhook = %target, "the answer will not change; giving up on this alert");
            counts.failed.fetch_add(1, Relaxed);
            return;
        }
        if attempt == ATTEMPTS {
            tracing::error!(webhook = %target, "alert webhook failed {ATTEMPTS} times; giving up on this alert");
            counts.failed.fetch_add(1, Relaxed);
            return;
        }
        counts.retried.fetch_add(1, Relaxed);
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// The webhook's task: POSTs notices one by one, in order.
pub(super) async fn run(
    config: WebhookConfig,
    mut rx: tokio::sync::mpsc::Receiver<Notice>,
    shared: std::sync::Arc<Shared>,
) {
    let target = describe_url(&config.url);
    tracing::info!(webhook = %target, format = config.format.name(), "alert webhook configured");
    let client = match client() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, webhook = %target, "alerts are not posted");
            None
        }
    };
    let ctx = Context {
        host: super::host_name(),
        routing_key: config.routing_key.clone(),
    };
    while let Some(notice) = rx.recv().await {
        if let (Some(client), Some(body)) = (&client, body(config.format, &notice, &ctx)) {
            deliver(client, &config, &body, &target, &shared.webhook).await;
        }
        shared.done(1);
    }
}

/// `msgbus alert test`: posts `alert` once (PagerDuty: a `trigger`, then
/// its `resolve`, so no incident stays open).
pub(super) async fn send_test(config: &WebhookConfig, alert: &Alert) -> Result<(), Error> {
    let client = client()?;
    let ctx = Context {
        host: super::host_name(),
        routing_key: config.routing_key.clone(),
    };
    let bodies = match config.format {
        WebhookFormat::Pagerduty => {
            let key = dedup_key(&ctx.host, &format!("test:{}", alert.time));
            vec![
                pagerduty_trigger(alert, &key, &ctx),
                pagerduty_resolve(&key, &ctx),
            ]
        }
        WebhookFormat::Cloudevents => vec![
            body(config.format, &Notice::Raised(alert.clone()), &ctx).unwrap_or_default(),
            body(
                config.format,
                &Notice::Cleared(Cleared {
                    kind: alert.kind.clone(),
                    file: None,
                    alert_id: alert.id,
                    time: crate::clock::now_rfc3339(),
                }),
                &ctx,
            )
            .unwrap_or_default(),
        ],
        f => vec![body(f, &Notice::Raised(alert.clone()), &ctx).unwrap_or_default()],
    };
    for b in &bodies {
        post_once(&client, config, b).await.map_err(|f| f.reason)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str, file: Option<&str>) -> Alert {
        Alert {
            id: 7,
            time: "2026-01-01T00:00:00Z".into(),
            severity: Severity::Error,
            kind: kind.into(),
            file: file.map(Into::into),
            detail: "d".into(),
            resolved: false,
        }
    }

    #[test]
    fn pagerduty_resolves_a_condition_with_its_trigger_key_and_skips_clearing_notices() {
        let ctx = Context {
            host: "h".into(),
            routing_key: Some("k".into()),
        };
        let f = WebhookFormat::Pagerduty;
        let t = body(
            f,
            &Notice::Raised(alert("detection", Some("segments/a"))),
            &ctx,
        )
        .unwrap();
        let r = body(
            f,
            &Notice::Cleared(Cleared {
                kind: "detection".into(),
                file: Some("segments/a".into()),
                alert_id: 7,
                time: "t".into(),
            }),
            &ctx,
        )
        .unwrap();
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(r["event_action"], "resolve");
        assert_eq!(t["dedup_key"], r["dedup_key"]);
        assert_eq!(t["routing_key"], "k");
        assert!(body(
            f,
            &Notice::Raised(alert("repair", Some("segments/a"))),
            &ctx
        )
        .is_none());
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
