//! `msgbus alert test`: a test alert through every configured channel,
//! one line per channel, exit 1 if any failed.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::harness::{make_pki, python, Receiver, Smtp, PASSWORD};

/// `msgbus alert test <args>` with `env` and no inherited `MSGBUS_*`:
/// exit code, stdout, stderr.
async fn alert_test(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_msgbus"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MSGBUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["alert", "test"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("msgbus alert test exits within 60 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_test_reaches_pagerduty_and_email() {
    let Some(py) = python().await else { return };
    let pki = make_pki();
    let (cert, key, ca) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
        pki.ca.display().to_string(),
    );
    // smtps: TLS from the first byte, with AUTH.
    let smtp = Smtp::start(
        &py,
        &["--implicit", &cert, &key, "--auth", "alerts", PASSWORD],
    )
    .await;
    let pd = Receiver::start(202).await;
    let url = format!("smtps://alerts@localhost:{}", smtp.port);
    let (code, out, err) = alert_test(
        &[
            "--alert-webhook",
            &pd.url,
            "--alert-webhook-format",
            "pagerduty",
            "--smtp-url",
            &url,
            "--smtp-ca-file",
            &ca,
            "--alert-email-from",
            "bus@example.test",
            "--alert-email-to",
            "ops@example.test",
        ],
        &[
            ("MSGBUS_SMTP_PASSWORD", PASSWORD),
            ("MSGBUS_PAGERDUTY_ROUTING_KEY", "rk-test"),
        ],
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("webhook (pagerduty, http://127.0.0.1:") && lines[0].ends_with(": ok"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("email (smtps://localhost:") && lines[1].ends_with(": ok"),
        "{out}"
    );
    assert!(!out.contains("T0KEN") && !out.contains(PASSWORD) && !err.contains(PASSWORD));

    let posts = pd.posts();
    assert_eq!(posts.len(), 2, "{posts:#?}");
    assert_eq!(posts[0].body["event_action"], "trigger");
    assert_eq!(posts[0].body["payload"]["class"], "test");
    assert_eq!(posts[1].body["event_action"], "resolve");
    assert_eq!(posts[0].body["dedup_key"], posts[1].body["dedup_key"]);
    let mail = smtp
        .expect("the test alert", Duration::from_secs(5), |m| {
            m.contains("test alert")
        })
        .await;
    assert_eq!(mail["tls"], true);
    assert_eq!(mail["auth"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_test_fails_on_a_failing_channel_or_none() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let refusing = Receiver::start(400).await;
    for (url, why) in [
        (format!("http://{closed}/hook"), "unreachable"),
        (refusing.url.clone(), "400"),
    ] {
        let (code, out, err) = alert_test(
            &["--alert-webhook", &url, "--alert-webhook-format", "discord"],
            &[],
        )
        .await;
        assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
        assert!(
            out.starts_with("webhook (discord, http://127.0.0.1:"),
            "{out}"
        );
        assert!(out.contains("FAILED") && out.contains(why), "{out}");
        assert!(!out.contains("T0KEN"), "{out}");
    }
    assert_eq!(refusing.posts().len(), 1, "one attempt, no retries");

    let (code, out, err) = alert_test(&[], &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no alert channel is configured"), "{err}");
    // A wrong setting is named.
    let (code, _, err) = alert_test(&["--alert-webhook-format", "pagerduty"], &[]).await;
    assert_eq!(code, 1);
    assert!(err.contains("MSGBUS_PAGERDUTY_ROUTING_KEY"), "{err}");
}
