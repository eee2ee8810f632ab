//! Alert email over SMTP (`--smtp-url`), sent by its own task with
//! [`lettre`] over rustls (no OpenSSL).
//!
//! Notices are grouped: the first one after a quiet spell is mailed after a
//! short gathering pause (2 s, or the interval if shorter) so that alerts
//! raised together, such as a detection and its repair, share one mail; no
//! mail follows the previous one sooner than `--alert-email-interval`
//! (default 60 s). A mail that fails is retried with backoff (1 s, 2 s, 4 s,
//! 8 s, 16 s) unless the server refused it for good (a 5xx answer); the
//! outcomes are counted in `/metrics`. The password comes from
//! `MSGBUS_SMTP_PASSWORD` and is never logged or shown.

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::time::Instant;

use super::{
    backoff, summary, Alert, AlertSettings, Cleared, Error, Notice, Severity, Shared, ATTEMPTS,
};

/// The environment variable holding the SMTP password.
pub const PASSWORD_ENV: &str = "MSGBUS_SMTP_PASSWORD";

/// Most notices one mail lists; the rest are counted.
const MAX_LISTED: usize = 100;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `smtp://`: STARTTLS, required (a server that does not offer it is
    /// an error, never a plain fallback).
    StartTls,
    /// `smtps://`: TLS from the first byte.
    Implicit,
    /// `smtp://…?tls=none`: plain, for a local relay.
    None,
}

/// A checked email setting.
#[derive(Clone)]
pub struct EmailConfig {
    host: String,
    port: u16,
    tls: TlsMode,
    user: Option<String>,
    password: Option<String>,
    ca_pem: Option<Vec<u8>>,
    from: Mailbox,
    to_boxes: Vec<Mailbox>,
    /// The recipients, as given.
    pub to: Vec<String>,
    /// Shortest time between two mails.
    pub interval: Duration,
}

impl std::fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailConfig")
            .field("server", &self.describe())
            .field("to", &self.to)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

fn decode_percent(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl EmailConfig {
    /// The email channel `config` asks for, if any.
    pub fn from_config(config: &AlertSettings) -> Result<Option<EmailConfig>, Error> {
        let Some(url) = config.smtp_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            if config.alert_email_from.is_some()
                || !config.alert_email_to.is_empty()
                || config.smtp_ca_file.is_some()
            {
                return Err(Error::from(
                    "--alert-email-from, --alert-email-to and --smtp-ca-file need --smtp-url"
                        .to_string(),
                ));
            }
            return Ok(None);
        };
        let password = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty());
        Self::parse(
            url,
            password,
            config.smtp_ca_file.as_deref(),
            config.alert_email_from.as_deref(),
            &config.alert_email_to,
            config.alert_email_interval,
        )
        .map(Some)
    }

    fn parse(
        url: &str,
        password: Option<String>,
        ca_file: Option<&Path>,
        from: Option<&str>,
        to: &[String],
        interval: Duration,
    ) -> Result<EmailConfig, Error> {
        let bad = |why: &str| format!("--smtp-url: {why}");
        let u = reqwest::Url::parse(url)
            .map_err(|_| bad("not a URL such as smtp://user@mail.example.com:587"))?;
        if u.password().is_some() {
            return Err(Error::from(bad(&format!(
                "put the password in {PASSWORD_ENV}, not in the URL (command lines and \
                 the environment listing of a flag are visible to other users)"
            ))));
        }
        let mut tls = match u.scheme() {
            "smtp" => TlsMode::StartTls,
            "smtps" => TlsMode::Implicit,
            _ => {
                return Err(Error::from(bad(
                    "the scheme must be smtp:// (STARTTLS) or smtps:// (TLS)",
                )))
            }
        };
        for (k, v) in u.query_pairs() {
            match (k.as_ref(), v.as_ref(), tls) {
                ("tls", "none", TlsMode::StartTls) => tls = TlsMode::None,
                ("tls", "required" | "starttls", TlsMode::StartTls) => {}
                ("tls", _, _) => {
                    return Err(Error::from(bad(
                        "?tls= takes `none` (a plain local relay, smtp:// only) or `required`",
                    )))
                }
                _ => {
                    return Err(Error::from(bad(&format!(
                        "unknown parameter `{k}` (only ?tls=)"
                    ))))
                }
            }
        }
        if !matches!(u.path(), "" | "/") {
            return Err(Error::from(bad("no path is allowed")));
        }
        let host = match u.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_string(),
            _ => return Err(Error::from(bad("no host"))),
        };
        let port = u.port().unwrap_or(match tls {
            TlsMode::Implicit => 465,
            _ => 587,
        });
        let user = Some(decode_percent(u.username())).filter(|s| !s.is_empty());
        match (&user, &password) {
            (Some(_), None) => {
                return Err(Error::from(bad(&format!(
                    "a user is given but {PASSWORD_ENV} is not set"
                ))))
            }
            (None, Some(_)) => {
                return Err(Error::from(format!(
                    "{PASSWORD_ENV} is set but --smtp-url names no user (smtp://user@host)"
                )))
            }
            _ => {}
        }
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if tls == TlsMode::None && user.is_some() && !loopback {
            return Err(Error::from(bad(
                "?tls=none would send the password in clear text: allowed only to a \
                 relay on a loopback address",
            )));
        }
        let ca_pem = match ca_file {
            Some(_) if tls == TlsMode::None => {
                return Err(Error::from(
                    "--smtp-ca-file is for TLS; --smtp-url has ?tls=none".to_string(),
                ))
            }
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--smtp-ca-file: cannot read {}: {e}", path.display()))?;
                Certificate::from_pem(&pem).map_err(|e| {
                    format!(
                        "--smtp-ca-file: {} holds no PEM certificate: {e}",
                        path.display()
                    )
                })?;
                Some(pem)
            }
            None => None,
        };
        let from_box: Mailbox = from
            .ok_or("--smtp-url needs --alert-email-from")?
            .parse()
            .map_err(|e| format!("--alert-email-from: not an email address: {e}"))?;
        if to.is_empty() {
            return Err(Error::from(
                "--smtp-url needs at least one --alert-email-to".to_string(),
            ));
        }
        let to_boxes = to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| format!("--alert-email-to: {t:?} is not an email address: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EmailConfig {
            host,
            port,
            tls,
            user,
            password,
            ca_pem,
            from: from_box,
            to_boxes,
            to: to.to_vec(),
            interval,
        })
    }

    /// `smtp://host:port (STARTTLS)`, for logs and `msgbus alert test`
    /// (never the password).
    pub fn describe(&self) -> String {
        let (scheme, how) = match self.tls {
            TlsMode::StartTls => ("smtp", "STARTTLS"),
            TlsMode::Implicit => ("smtps", "TLS"),
            TlsMode::None => ("smtp", "no TLS"),
        };
        format!("{scheme}://{}:{} {how}", self.host, self.port)
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, Error> {
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .timeout(Some(Duration::from_secs(30)));
        if self.tls != TlsMode::None {
            let mut p = TlsParameters::builder(self.host.clone());
            if let Some(pem) = &self.ca_pem {
                p = p.add_root_certificate(Certificate::from_pem(pem).map_err(|e| e.to_string())?);
            }
            let params = p
                .build_rustls()
                .map_err(|e| format!("cannot set up TLS for SMTP: {e}"))?;
            b = b.tls(match self.tls {
                TlsMode::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(b.build())
    }

    fn message(&self, subject: &str, text: String) -> Result<Message, Error> {
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for t in &self.to_boxes {
            b = b.to(t.clone());
        }
        b.body(text)
            .map_err(|e| Error(format!("cannot build the mail: {e}")))
    }
}

/// The subject and text of one mail for `raised` and `cleared` (`more`
/// further notices were not listed).
fn compose(host: &str, raised: &[Alert], cleared: &[Cleared], more: usize) -> (String, String) {
    use std::fmt::Write;
    let errors = raised.iter().any(|a| a.severity == Severity::Error);
    let mut kinds: Vec<&str> = Vec::new();
    for k in raised.iter().map(|a| a.kind.as_str()) {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let mut subject = match (raised, cleared.len()) {
        ([a], 0) => summary(a),
        _ => format!(
            "{}{} alert(s){}{}{}",
            if errors { "ERROR: " } else { "" },
            raised.len(),
            if kinds.is_empty() { "" } else { ": " },
            kinds.join(", "),
            if cleared.is_empty() {
                String::new()
            } else {
                format!("; {} cleared", cleared.len())
            },
        ),
    };
    if subject.chars().count() > 160 {
        subject = subject.chars().take(159).collect::<String>() + "…";
    }
    let subject = format!("[msgbus {host}] {subject}");
    let mut text = format!(
        "msgbus on {host} raised {} alert(s) and cleared {} condition(s).\n\n",
        raised.len(),
        cleared.len()
    );
    for a in raised {
        let _ = writeln!(text, "{}", summary(a));
        let _ = writeln!(
            text,
            "    id {}, {}{}\n",
            a.id,
            a.time,
            a.file
                .as_deref()
                .map(|f| format!(", file {f}"))
                .unwrap_or_default()
        );
    }
    if !cleared.is_empty() {
        let _ = writeln!(text, "Cleared:");
        for c in cleared {
            let _ = writeln!(
                text,
                "    {}{} (raised by alert {}) cleared at {}",
                c.kind,
                c.file
                    .as_deref()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default(),
                c.alert_id,
                c.time
            );
        }
        text.push('\n');
    }
    if more > 0 {
        let _ = writeln!(text, "… and {more} more; GET /alerts lists them.\n");
    }
    text.push_str(
        "These are the alerts GET /alerts lists: files are named relative to the data \
         directory, and no event payload is ever included.\n",
    );
    (subject, text)
}

/// Sends `msg`, retrying with backoff; counts the outcome.
async fn deliver(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    msg: &Message,
    server: &str,
    shared: &Shared,
) {
    let counts = &shared.email;
    for attempt in 1..=ATTEMPTS {
        match transport.send(msg.clone()).await {
            Ok(_) => {
                counts.sent.fetch_add(1, Relaxed);
                tracing::info!(server, attempt, "alert mail sent");
                return;
            }
            Err(e) if e.is_permanent() => {
                tracing::error!(error = %e, server, "the SMTP server refused the alert mail for good; giving up on it");
                counts.failed.fetch_add(1, Relaxed);
                return;
            }
            Err(e) if attempt == ATTEMPTS => {
                tracing::error!(error = %e, server, attempt, "alert mail failed {ATTEMPTS} times; giving up on it");
                counts.failed.fetch_add(1, Relaxed);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, server, attempt, "alert mail failed; retrying");
                counts.retried.fetch_add(1, Relaxed);
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
}

/// The email task: gathers notices into one mail per interval at most.
pub(super) async fn run(
    config: EmailConfig,
    mut rx: tokio::sync::mpsc::Receiver<Notice>,
    shared: Arc<Shared>,
) {
    let server = config.describe();
    tracing::info!(server = %server, recipients = config.to.len(), interval = ?config.interval, "alert email configured");
    let transport = match config.transport() {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, server = %server, "alerts are not mailed");
            None
        }
    };
    let host = super::host_name();
    let gather = config.interval.min(Duration::from_secs(2));
    let mut last_sent: Option<Instant> = None;
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut batch = vec![first];
        let mut taken = 1;
        let now = Instant::now();
        let due = (now + gather).max(last_sent.map_or(now, |t| t + config.interval));
        let wait = tokio::time::sleep_until(due);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                () = &mut wait => break,
                () = shared.urgent.notified() => break,
                n = rx.recv() => match n {
                    Some(n) => {
                        taken += 1;
                        if batch.len() < MAX_LISTED {
                            batch.push(n);
                        }
                    }
                    None => {
                        open = false;
                        break;
                    }
                },
            }
        }
        let (mut raised, mut cleared) = (Vec::new(), Vec::new());
        for n in batch {
            match n {
                Notice::Raised(a) => raised.push(a),
                Notice::Cleared(c) => cleared.push(c),
            }
        }
        let (subject, text) = compose(
            &host,
            &raised,
            &cleared,
            taken - raised.len() - cleared.len(),
        );
        match (&transport, config.message(&subject, text)) {
            (Some(t), Ok(msg)) => deliver(t, &msg, &server, &shared).await,
            (_, Err(e)) => {
                tracing::error!(error = %e, "alert mail not sent");
                shared.email.failed.fetch_add(1, Relaxed);
            }
            (None, _) => {
                shared.email.failed.fetch_add(1, Relaxed);
            }
        }
        last_sent = Some(Instant::now());
        shared.done(taken);
    }
}

/// `msgbus alert test`: one mail, one attempt.
pub(super) async fn send_test(config: &EmailConfig, alert: &Alert) -> Result<(), Error> {
    let host = super::host_name();
    let (_, text) = compose(&host, std::slice::from_ref(alert), &[], 0);
    let msg = config.message(&format!("[msgbus {host}] test alert"), text)?;
    config
        .transport()?
        .send(msg)
        .await
        .map(|_| ())
        .map_err(|e| Error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, password: Option<&str>) -> Result<EmailConfig, Error> {
        EmailConfig::parse(
            url,
            password.map(Into::into),
            None,
            Some("msgbus <bus@example.com>"),
            &["ops@example.com".to_string()],
            Duration::from_secs(60),
        )
    }

    #[test]
    fn smtp_urls_choose_tls_and_keep_passwords_out() {
        let c = parse("smtp://alice%40corp@mail.example.com", Some("pw")).unwrap();
        assert_eq!(
            (c.tls, c.port, c.user.as_deref()),
            (TlsMode::StartTls, 587, Some("alice@corp"))
        );
        assert!(!format!("{c:?}").contains("pw"));
        let c = parse("smtps://mail.example.com", None).unwrap();
        assert_eq!((c.tls, c.port), (TlsMode::Implicit, 465));
        let c = parse("smtp://127.0.0.1:2525?tls=none", None).unwrap();
        assert_eq!(c.tls, TlsMode::None);
        assert!(parse("smtp://u:secret@mail.example.com", Some("x"))
            .unwrap_err()
            .0
            .contains("MSGBUS_SMTP_PASSWORD"));
        assert!(parse("smtp://u@mail.example.com?tls=none", Some("x")).is_err());
        assert!(parse("smtp://u@127.0.0.1?tls=none", Some("x")).is_ok());
        assert!(parse("smtps://mail.example.com?tls=none", None).is_err());
        assert!(parse("smtp://u@mail.example.com", None).is_err());
        assert!(parse("http://mail.example.com", None).is_err());
    }
}
