//! Alert email: a real detected damage reaches a real SMTP server over
//! STARTTLS with a private CA and a password, grouped, retried, counted.

use std::time::Duration;

use crate::common::files::{flip_pad, rel, sealed_segments, DataDir};
use crate::common::integrity::{acked, assert_all_intact, fill_until_sealed, prefill};
use crate::common::monitor::wait_backup_holding;
use crate::common::note;
use crate::harness::{
    damage_manifest, make_pki, metric, python, spawn_with_env, wait_metric, Smtp, PASSWORD,
};

const SENT: &str = "msgbus_alert_deliveries_total{channel=\"email\",outcome=\"sent\"}";
const RETRIED: &str = "msgbus_alert_deliveries_total{channel=\"email\",outcome=\"retried\"}";
const FAILED: &str = "msgbus_alert_deliveries_total{channel=\"email\",outcome=\"failed\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sealed_segment_is_mailed_over_starttls_retried_and_counted() {
    let Some(py) = python().await else { return };
    let pki = make_pki();
    let (cert, key, ca) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
        pki.ca.display().to_string(),
    );
    // STARTTLS required, AUTH required, and the first mail answered 451.
    let smtp = Smtp::start(
        &py,
        &[
            "--starttls",
            &cert,
            &key,
            "--auth",
            "alerts",
            PASSWORD,
            "--transient",
            "1",
        ],
    )
    .await;
    let dir = DataDir::temp();
    let url = format!("smtp://alerts@localhost:{}", smtp.port);
    let app = spawn_with_env(
        &dir,
        &[
            "--smtp-url",
            &url,
            "--smtp-ca-file",
            &ca,
            "--alert-email-from",
            "msgbus <bus@example.test>",
            "--alert-email-to",
            "ops@example.test,oncall@example.test",
            "--alert-email-interval",
            "1s",
        ],
        &[("MSGBUS_SMTP_PASSWORD", PASSWORD)],
    )
    .await;
    let acked = acked();
    fill_until_sealed(&app, dir.path(), "eml", 1, 200, &acked).await;
    let seg = sealed_segments(dir.path())[0].clone();
    let file = rel(&seg);
    wait_backup_holding(&app, &seg).await;
    let len = std::fs::metadata(&seg).unwrap().len();
    let (offset, seq) = flip_pad(&seg, len / 2);
    note(format!(
        "flipped 8 bytes at {offset} of sealed {file} (seq {seq})"
    ));

    let mail = smtp
        .expect(
            "the detection and repair of the segment",
            Duration::from_secs(20),
            |m| m.contains("detection") && m.contains("repair") && m.contains(&file),
        )
        .await;
    let subject = mail["subject"].as_str().unwrap();
    let text = mail["text"].as_str().unwrap();
    note(format!("mail: {subject}\n{text}"));
    assert!(subject.starts_with("[msgbus "), "{subject}");
    assert_eq!(mail["tls"], true, "sent after STARTTLS: {mail}");
    assert_eq!(mail["auth"], true, "sent after AUTH: {mail}");
    assert_eq!(mail["mail_from"], "bus@example.test");
    assert_eq!(
        mail["rcpt_tos"],
        serde_json::json!(["ops@example.test", "oncall@example.test"])
    );
    assert!(
        text.contains("Cleared:"),
        "the repair clears the detection: {text}"
    );
    // No event payloads, no absolute paths, no password.
    let raw = mail["data"].as_str().unwrap();
    for secret in [PASSWORD, &dir.path().display().to_string(), "xxxxxxxx"] {
        assert!(
            !raw.contains(secret) && !text.contains(secret),
            "{secret:?} in the mail:\n{raw}"
        );
    }
    assert!(
        !app.stderr_text().contains(PASSWORD),
        "the password is never logged"
    );

    // The 451 was retried; one mail sent; none failed.
    assert_eq!(
        wait_metric(&app, RETRIED, 1.0, Duration::from_secs(5)).await,
        1.0
    );
    assert!(metric(&app, SENT).await >= 1.0);
    assert_eq!(metric(&app, FAILED).await, 0.0);
    assert_all_intact(&app, &acked).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_refused_for_good_is_counted_failed_and_not_retried() {
    let Some(py) = python().await else { return };
    // A plain local relay that refuses every message with 550.
    let smtp = Smtp::start(&py, &["--reject"]).await;
    let dir = DataDir::temp();
    let url = format!("smtp://127.0.0.1:{}?tls=none", smtp.port);
    let app = spawn_with_env(
        &dir,
        &[
            "--smtp-url",
            &url,
            "--alert-email-from",
            "bus@example.test",
            "--alert-email-to",
            "ops@example.test",
            "--alert-email-interval",
            "0.2s",
        ],
        &[],
    )
    .await;
    let acked = acked();
    prefill(&app, "rej", 1, 5, 20, &acked).await;
    damage_manifest(dir.path());
    wait_metric(&app, FAILED, 1.0, Duration::from_secs(10)).await;
    assert_eq!(metric(&app, RETRIED).await, 0.0, "a 550 is final");
    assert_eq!(metric(&app, SENT).await, 0.0);
    // The server goes on serving and storing.
    prefill(&app, "rej", 6, 5, 20, &acked).await;
    assert_all_intact(&app, &acked).await;
    assert!(smtp.mails().is_empty());
    app.stop().await;
}
