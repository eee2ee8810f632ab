//! Every webhook format, checked as received by a real HTTP receiver from
//! a real `msgbus` that detected and repaired real damage (its manifest
//! deleted): a condition raised, then cleared.

use std::time::Duration;

use serde_json::Value;

use crate::common::files::DataDir;
use crate::common::integrity::{acked, prefill};
use crate::common::process::TestProcess;
use crate::harness::{damage_manifest, spawn_with_env, wait_metric, Receiver};

const ROUTING_KEY: &str = "R0UTING-key-0123456789abcdef";

/// A server posting to `hook` in `format`, with some events stored and
/// its manifest then deleted.
async fn damaged(format: &str, hook: &Receiver, dir: &DataDir) -> TestProcess {
    let app = spawn_with_env(
        dir,
        &[
            "--alert-webhook",
            &hook.url,
            "--alert-webhook-format",
            format,
        ],
        &[("MSGBUS_PAGERDUTY_ROUTING_KEY", ROUTING_KEY)],
    )
    .await;
    prefill(&app, format, 1, 5, 20, &acked()).await;
    damage_manifest(dir.path());
    app
}

const DEADLINE: Duration = Duration::from_secs(10);

fn is_detection(text: &str) -> bool {
    text.contains("detection") && text.contains("manifest.json")
}

/// The webhook counters say what was posted; the URL's secret path is
/// never logged.
async fn check_and_stop(app: TestProcess, posts: usize) {
    let sent = "msgbus_alert_deliveries_total{channel=\"webhook\",outcome=\"sent\"}";
    wait_metric(&app, sent, posts as f64, DEADLINE).await;
    assert!(
        !app.stderr_text().contains("T0KEN-in-path"),
        "the webhook URL's path is a secret"
    );
    assert!(
        !app.stderr_text().contains(ROUTING_KEY),
        "the routing key is a secret"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_discord_and_teams_bodies() {
    let (slack, discord, teams) = (
        Receiver::start(200).await,
        Receiver::start(204).await,
        Receiver::start(202).await,
    );
    let dirs = [DataDir::temp(), DataDir::temp(), DataDir::temp()];
    let (a, b, c) = tokio::join!(
        damaged("slack", &slack, &dirs[0]),
        damaged("discord", &discord, &dirs[1]),
        damaged("teams", &teams, &dirs[2]),
    );

    let p = slack
        .expect("a Slack detection", DEADLINE, |b| {
            b["text"].as_str().is_some_and(is_detection)
        })
        .await;
    assert_eq!(p.content_type, "application/json");
    assert_eq!(p.body["alert"]["kind"], "detection");
    assert_eq!(p.body["alert"]["file"], "manifest.json");

    let p = discord
        .expect("a Discord detection", DEADLINE, |b| {
            b["content"].as_str().is_some_and(is_detection)
        })
        .await;
    let keys: Vec<&String> = p.body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["content", "allowed_mentions"], "{}", p.body);
    assert_eq!(p.body["allowed_mentions"]["parse"], serde_json::json!([]));

    let p = teams
        .expect("a Teams card of the detection", DEADLINE, |b| {
            b["attachments"][0]["content"]["body"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("detection"))
        })
        .await;
    assert_eq!(p.body["type"], "message");
    let att = &p.body["attachments"][0];
    assert_eq!(
        att["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(att["content"]["type"], "AdaptiveCard");
    let facts = att["content"]["body"][2]["facts"].as_array().unwrap();
    assert!(
        facts
            .iter()
            .any(|f| f["title"] == "File" && f["value"] == "manifest.json"),
        "{facts:?}"
    );
    // Chat formats get raised alerts only: the detection and its repair.
    check_and_stop(a, 2).await;
    check_and_stop(b, 2).await;
    check_and_stop(c, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_triggers_and_resolves_with_one_dedup_key_and_cloudevents_both() {
    let (pd, ce) = (Receiver::start(202).await, Receiver::start(200).await);
    let dirs = [DataDir::temp(), DataDir::temp()];
    let (a, b) = tokio::join!(
        damaged("pagerduty", &pd, &dirs[0]),
        damaged("cloudevents", &ce, &dirs[1]),
    );

    let trigger = pd
        .expect("a PagerDuty trigger of the detection", DEADLINE, |b| {
            b["event_action"] == "trigger" && b["payload"]["class"] == "detection"
        })
        .await
        .body;
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert!(
        trigger["payload"]["summary"]
            .as_str()
            .is_some_and(is_detection),
        "{trigger}"
    );
    assert_eq!(trigger["payload"]["severity"], "warning");
    assert!(trigger["payload"]["source"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let key = trigger["dedup_key"].as_str().unwrap().to_string();
    assert!(
        key.contains("detection") && key.contains("manifest.json"),
        "{key}"
    );
    let resolve = pd
        .expect("a PagerDuty resolve", DEADLINE, |b| {
            b["event_action"] == "resolve"
        })
        .await
        .body;
    assert_eq!(
        resolve["dedup_key"],
        key.as_str(),
        "resolve names the trigger's dedup_key"
    );
    assert_eq!(resolve["routing_key"], ROUTING_KEY);
    // The repair is the resolve, not an incident of its own.
    let posts: Vec<Value> = pd.posts().into_iter().map(|p| p.body).collect();
    assert!(
        !posts.iter().any(|b| b["payload"]["class"] == "repair"),
        "{posts:#?}"
    );

    let raised = ce
        .expect("a CloudEvent of the detection", DEADLINE, |b| {
            b["type"] == "msgbus.alert.raised" && b["data"]["kind"] == "detection"
        })
        .await;
    assert_eq!(raised.content_type, "application/cloudevents+json");
    let ev = &raised.body;
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["subject"], "manifest.json");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert!(ev["id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(ev["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("urn:msgbus:")));
    let cleared = ce
        .expect("a CloudEvent of the detection cleared", DEADLINE, |b| {
            b["type"] == "msgbus.alert.cleared" && b["data"]["kind"] == "detection"
        })
        .await;
    assert_eq!(cleared.body["data"]["alert_id"], ev["data"]["id"]);
    assert_ne!(
        cleared.body["id"], ev["id"],
        "each CloudEvent has its own id"
    );

    check_and_stop(a, 2).await; // trigger + resolve
    check_and_stop(b, 3).await; // detection, repair, cleared
}
