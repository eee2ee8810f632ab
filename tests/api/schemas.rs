//! Payload schemas against a real server: registering versions, refusing
//! malformed payloads with pointer-accurate errors (single, batch, binary
//! mode), `dataschema` set and honoured, the backward-compatibility check
//! and its dry run, invalid schemas, roles, and the versions' durability
//! (SIGKILL, backups, restore, the integrity monitor). The tests that use
//! no data directory run on both backends (`on_both!`); what only the
//! NATS backend does (two instances sharing schemas) is in
//! `nats_backend.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::files::DataDir;
use crate::common::http::{error_fields, metric, Api};
use crate::common::monitor::{expect_repair, start_monitored};
use crate::common::process::{create_token, run_msgbus, spawn_process};
use crate::common::server::{on_both, start_app, TestApp};

/// A story with nested objects, arrays, `required`, `enum`, `format` and
/// `oneOf`.
fn story_schema() -> Value {
    json!({
        "type": "object",
        "required": ["title", "points", "owner"],
        "properties": {
            "title": {"type": "string", "minLength": 1},
            "points": {"type": "number"},
            "state": {"enum": ["todo", "doing", "done"]},
            "owner": {
                "type": "object",
                "required": ["email"],
                "properties": {"email": {"type": "string", "format": "email"}}
            },
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["price"],
                    "properties": {"price": {"type": "number"}}
                }
            },
            "estimate": {"oneOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+h$"}]}
        }
    })
}

fn story(data: Value) -> Value {
    json!({"type": "story.created", "source": "/agents/planner", "data": data})
}

fn good_data() -> Value {
    json!({"title": "Login", "points": 5, "state": "todo", "owner": {"email": "a@example.com"},
           "items": [{"price": 1.5}], "estimate": "3h"})
}

async fn register(api: &Api, ty: &str, schema: &Value) -> Value {
    let r = api.put(&format!("/schemas/{ty}"), schema).await;
    assert_eq!(r.status, 201, "PUT /schemas/{ty}: {}", r.text());
    r.json()
}

/// The problem's errors as (field, message) pairs.
fn errors(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap().to_string(),
                        e["message"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn message_of(problem: &Value, field: &str) -> String {
    errors(problem)
        .into_iter()
        .find(|(f, _)| f == field)
        .unwrap_or_else(|| panic!("no error for {field}: {problem:#}"))
        .1
}

async fn a_registered_schema_refuses_malformed_payloads_naming_each_violation(app: TestApp) {
    let put = register(&app, "story.created", &story_schema()).await;
    assert_eq!(put["version"], 1);
    assert_eq!(put["url"], "/schemas/story.created/versions/1");

    // A valid event is stored, with dataschema set to the version's URL.
    let ok = app.publish_ok(&story(good_data())).await;
    let stored = app.get_json(&format!("/events/{}", ok["seq"])).await;
    assert_eq!(
        stored["event"]["dataschema"],
        "/schemas/story.created/versions/1"
    );
    assert_eq!(stored["event"]["data"], good_data());

    // The issue's example, and one violation of every kind at once.
    let r = app.publish(&story(json!({"points": "five"}))).await;
    let p = r.assert_problem_type(422, "schema-mismatch", "points as a string");
    assert_eq!(
        message_of(&p, "data/points"),
        "must be a number, got the string \"five\""
    );
    let bad = json!({"title": "", "points": 1, "state": "later",
                     "owner": {"email": "not-an-email"},
                     "items": [{"price": 2}, {"price": "x"}, {}],
                     "estimate": 1.5});
    let r = app.publish(&story(bad)).await;
    let p = r.assert_problem_type(422, "schema-mismatch", "many violations");
    let mut fields = error_fields(&p);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "data/estimate",
            "data/items/1/price",
            "data/items/2/price",
            "data/owner/email",
            "data/state",
            "data/title",
        ],
        "{p:#}"
    );
    assert!(
        message_of(&p, "data/state")
            .contains(r#"one of ["todo","doing","done"], got the string "later""#),
        "{p:#}"
    );
    assert!(
        message_of(&p, "data/owner/email").contains("valid email"),
        "{p:#}"
    );
    assert!(
        message_of(&p, "data/items/2/price").contains("required"),
        "{p:#}"
    );
    assert!(message_of(&p, "data/estimate").contains("oneOf"), "{p:#}");
    // A missing required member is named where it should be.
    let r = app
        .publish(&story(json!({"title": "x", "points": 1})))
        .await;
    let p = r.assert_problem(422);
    assert_eq!(error_fields(&p), vec!["data/owner"], "{p:#}");
    // Nothing refused was stored.
    assert_eq!(app.read_all().await.len(), 1);
    // Other types are untouched.
    app.publish_ok(&json!({"type": "other", "source": "/s", "data": {"points": "five"}}))
        .await;

    // Listing and reading.
    let list = app.get_json("/schemas").await;
    assert_eq!(
        list["schemas"],
        json!([{"type": "story.created", "latest_version": 1, "status": "active", "versions": 1,
                "url": "/schemas/story.created/versions/1"}])
    );
    let latest = app.get_json("/schemas/story.created").await;
    assert_eq!(latest["schema"], story_schema());
    assert_eq!(latest["version"], 1);
    let v1 = app.get_json("/schemas/story.created/versions/1").await;
    assert_eq!(v1["schema"], story_schema());
    app.get("/schemas/story.created/versions/2")
        .await
        .assert_problem(404);
    app.get("/schemas/nothing").await.assert_problem(404);

    // Counters.
    let stats = app.get_json("/stats").await;
    assert_eq!(stats["schemas"]["validations"], 4, "{:#}", stats["schemas"]);
    assert_eq!(stats["schemas"]["rejections"], 3, "{:#}", stats["schemas"]);
    assert_eq!(
        stats["schemas"]["by_type"]["story.created"]["rejections"],
        3
    );
    let text = app.get("/metrics").await.text();
    assert_eq!(
        metric(
            &text,
            r#"msgbus_schema_rejections_total{type="story.created"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            r#"msgbus_schema_validations_total{type="story.created"}"#
        ),
        4.0
    );
}

async fn a_batch_with_one_bad_item_stores_nothing_and_names_the_item(app: TestApp) {
    register(&app, "story.created", &story_schema()).await;
    let items = json!([
        story(good_data()),
        story(json!({"title": "x", "points": "five", "owner": {"email": "a@example.com"}})),
        {"type": "other", "source": "/s", "data": 1},
        story(json!({"title": "y", "points": 2, "owner": {"email": "a@example.com"}, "items": [{"price": null}]})),
    ]);
    let r = app.batch(&items).await;
    let p = r.assert_problem_type(422, "schema-mismatch", "a bad batch");
    assert_eq!(
        errors(&p),
        vec![
            (
                "[1].data/points".to_string(),
                "must be a number, got the string \"five\"".to_string()
            ),
            (
                "[3].data/items/0/price".to_string(),
                "must be a number, got null".to_string()
            ),
        ]
    );
    assert!(
        p["detail"].as_str().unwrap().contains("2 of the batch's 4"),
        "{p:#}"
    );
    assert!(
        app.read_all().await.is_empty(),
        "nothing of the batch is stored"
    );
    // The good items alone go through, each with its dataschema.
    let seqs = app
        .publish_batch(&[story(good_data()), story(good_data())])
        .await;
    for seq in seqs {
        let e = app.get_json(&format!("/events/{seq}")).await;
        assert_eq!(
            e["event"]["dataschema"],
            "/schemas/story.created/versions/1"
        );
    }
}

async fn binary_mode_is_validated_and_non_json_data_cannot_match(app: TestApp) {
    register(&app, "story.created", &story_schema()).await;
    let binary = |body: &str, ct: &str| {
        app.client
            .post(app.url("/events"))
            .header("ce-specversion", "1.0")
            .header("ce-type", "story.created")
            .header("ce-source", "/agents/planner")
            .header("content-type", ct.to_string())
            .body(body.to_string())
    };
    let r = app
        .send(binary(&good_data().to_string(), "application/json"))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let e = app.get_json(&format!("/events/{}", r.json()["seq"])).await;
    assert_eq!(
        e["event"]["dataschema"],
        "/schemas/story.created/versions/1"
    );
    let r = app
        .send(binary(
            r#"{"title":"t","points":"five","owner":{"email":"a@example.com"}}"#,
            "application/json",
        ))
        .await;
    let p = r.assert_problem(422);
    assert_eq!(error_fields(&p), vec!["data/points"], "{p:#}");
    // Bytes and text cannot match a JSON Schema.
    let r = app
        .send(binary("five points", "application/octet-stream"))
        .await;
    let p = r.assert_problem(422);
    assert_eq!(error_fields(&p), vec!["data_base64"], "{p:#}");
    let r = app
        .publish(&json!({"type": "story.created", "source": "/s",
                         "datacontenttype": "text/plain", "data": "five points"}))
        .await;
    let p = r.assert_problem(422);
    assert_eq!(error_fields(&p), vec!["datacontenttype"], "{p:#}");
    assert!(
        message_of(&p, "datacontenttype").contains("must be JSON"),
        "{p:#}"
    );
    // A +json type is JSON.
    let mut ev = story(good_data());
    ev["datacontenttype"] = json!("application/vnd.story+json");
    app.publish_ok(&ev).await;
}

async fn dataschema_names_the_version_used_and_a_wrong_one_is_refused(app: TestApp) {
    let v1 = json!({"type": "object", "properties": {"points": {"type": "number"}}});
    let v2 = json!({"type": "object", "properties": {"points": {"type": "string"}}});
    register(&app, "t.x", &v1).await;
    app.publish_ok(&json!({"type": "t.x", "source": "/s", "data": {"points": 1}}))
        .await;
    let r = app.put("/schemas/t.x?compatibility=none", &v2).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["version"], 2);
    assert_eq!(
        r.json()["url"],
        "https://bus.example/schemas/t.x/versions/2"
    );
    // No dataschema: the latest (2), and the server says so.
    let ok = app
        .publish_ok(&json!({"type": "t.x", "source": "/s", "data": {"points": "one"}}))
        .await;
    let e = app.get_json(&format!("/events/{}", ok["seq"])).await;
    assert_eq!(
        e["event"]["dataschema"],
        "https://bus.example/schemas/t.x/versions/2"
    );
    let r = app
        .publish(&json!({"type": "t.x", "source": "/s", "data": {"points": 1}}))
        .await;
    assert_eq!(error_fields(&r.assert_problem(422)), vec!["data/points"]);
    // Naming version 1 (absolute or relative) validates against it, and
    // the event keeps the name it was sent with.
    for named in [
        "https://bus.example/schemas/t.x/versions/1",
        "/schemas/t.x/versions/1",
    ] {
        let ok = app
            .publish_ok(
                &json!({"type": "t.x", "source": "/s", "dataschema": named, "data": {"points": 1}}),
            )
            .await;
        let e = app.get_json(&format!("/events/{}", ok["seq"])).await;
        assert_eq!(e["event"]["dataschema"], named);
        let r = app
            .publish(&json!({"type": "t.x", "source": "/s", "dataschema": named, "data": {"points": "one"}}))
            .await;
        assert_eq!(error_fields(&r.assert_problem(422)), vec!["data/points"]);
    }
    // A version that does not exist, another type's, another document.
    for named in [
        "/schemas/t.x/versions/3",
        "/schemas/t.y/versions/1",
        "https://example.com/schemas/story.json",
    ] {
        let r = app
            .publish(
                &json!({"type": "t.x", "source": "/s", "dataschema": named, "data": {"points": 1}}),
            )
            .await;
        let p = r.assert_problem(422);
        assert_eq!(error_fields(&p), vec!["dataschema"], "{named}: {p:#}");
        assert!(
            message_of(&p, "dataschema").contains("versions 1 to 2"),
            "{p:#}"
        );
    }
}

async fn a_new_version_must_accept_every_retained_event_unless_told_otherwise(app: TestApp) {
    let v1 = json!({"type": "object", "properties": {"points": {"type": "number"}}});
    register(&app, "t.x", &v1).await;
    for n in 0..30 {
        app.publish_ok(&json!({"type": "t.x", "source": "/s", "data": {"points": n}}))
            .await;
        app.publish_ok(&json!({"type": "other", "source": "/s", "data": {"points": "x"}}))
            .await;
    }
    // Points must now be at least 10: events 1..10 of t.x fail.
    let strict = json!({"type": "object", "required": ["points"], "properties": {"points": {"type": "number", "minimum": 10}}});
    // Dry run: the report, nothing stored.
    let r = app.put("/schemas/t.x?dry_run=true", &strict).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let report = r.json();
    assert_eq!(report["stored"], false);
    assert_eq!(report["version"], 2);
    assert_eq!(report["check"]["compatible"], false);
    let failures = report["check"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 10, "{report:#}");
    assert_eq!(failures[0]["seq"], 1);
    assert_eq!(failures[0]["field"], "data/points");
    assert_eq!(failures[0]["message"], "must be >= 10, got the number 0");
    assert_eq!(app.get_json("/schemas/t.x").await["version"], 1);
    // For real: 409 with the failures, nothing stored.
    let r = app.put("/schemas/t.x", &strict).await;
    let p = r.assert_problem_type(409, "incompatible-schema", "an incompatible version");
    assert_eq!(p["errors"][0]["field"], "data/points");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("seq 1: must be >= 10"),
        "{p:#}"
    );
    assert_eq!(p["errors"].as_array().unwrap().len(), 10);
    assert_eq!(app.get_json("/schemas/t.x").await["version"], 1);
    // A compatible version is accepted, having checked every event of the type.
    let wider = json!({"type": "object", "properties": {"points": {"type": ["number", "string"]}}});
    let r = app.put("/schemas/t.x?dry_run=true", &wider).await;
    assert_eq!(r.json()["check"]["compatible"], true);
    assert_eq!(r.json()["check"]["checked"], 30);
    let put = register(&app, "t.x", &wider).await;
    assert_eq!(put["version"], 2);
    assert_eq!(put["check"]["checked"], 30);
    assert_eq!(put["check"]["compatibility"], "backward");
    // compatibility=none skips the check.
    let r = app.put("/schemas/t.x?compatibility=none", &strict).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["check"]["checked"], 0);
    app.put("/schemas/t.x?compatibility=later", &strict)
        .await
        .assert_problem(400);
    // An empty value names no choice (the document's enum): refused, not
    // taken for the default (found by schemathesis).
    for q in ["compatibility=", "dry_run="] {
        app.put(&format!("/schemas/t.x?{q}"), &strict)
            .await
            .assert_problem(400);
    }
}

async fn an_invalid_schema_is_refused_saying_why(app: TestApp) {
    for (schema, says) in [
        (json!({"type": "nonsense"}), "not a valid JSON Schema"),
        (
            json!({"properties": {"a": {"minimum": "ten"}}}),
            "not a valid JSON Schema",
        ),
        (
            json!({"$ref": "https://example.com/story.json"}),
            "fetches no remote",
        ),
        (
            json!({"$schema": "http://json-schema.org/draft-04/schema#"}),
            "not supported",
        ),
        (json!([1, 2]), "must be an object"),
        (json!(false), "must be an object"),
    ] {
        let r = app.put("/schemas/t.x", &schema).await;
        let p = r.assert_problem_type(422, "invalid-schema", &schema.to_string());
        assert!(
            p["detail"].as_str().unwrap().contains(says),
            "{schema}: {p:#}"
        );
        assert_eq!(error_fields(&p), vec!["schema"]);
    }
    app.put_text("/schemas/t.x", "{not json")
        .await
        .assert_problem(400);
    // draft-07 when it says so.
    let d7 = json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                    "properties": {"n": {"type": "integer"}}, "definitions": {}});
    register(&app, "t.x", &d7).await;
    let r = app
        .publish(&json!({"type": "t.x", "source": "/s", "data": {"n": 1.5}}))
        .await;
    assert_eq!(error_fields(&r.assert_problem(422)), vec!["data/n"]);
    assert!(
        app.get_json("/schemas").await["schemas"]
            .as_array()
            .unwrap()
            .len()
            == 1
    );
}

async fn delete_stops_validation_and_a_later_version_resumes_it(app: TestApp) {
    let v1 = json!({"type": "object", "properties": {"points": {"type": "number"}}});
    register(&app, "t.x", &v1).await;
    let bad = json!({"type": "t.x", "source": "/s", "data": {"points": "five"}});
    app.publish(&bad).await.assert_problem(422);
    let r = app.delete("/schemas/t.x").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "deleted");
    app.delete("/schemas/t.x").await.assert_problem(404);
    let ok = app.publish_ok(&bad).await;
    let e = app.get_json(&format!("/events/{}", ok["seq"])).await;
    assert!(e["event"].get("dataschema").is_none());
    assert_eq!(
        app.get_json("/schemas").await["schemas"][0]["status"],
        "deleted"
    );
    assert_eq!(app.get_json("/schemas/t.x/versions/1").await["schema"], v1);
    // The stored bad event would fail a backward check: register with none.
    let r = app.put("/schemas/t.x?compatibility=none", &v1).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["version"], 2);
    app.publish(&bad).await.assert_problem(422);
    assert_eq!(
        app.get_json("/schemas").await["schemas"][0]["status"],
        "active"
    );
}

on_both!(
    a_registered_schema_refuses_malformed_payloads_naming_each_violation,
    a_batch_with_one_bad_item_stores_nothing_and_names_the_item,
    binary_mode_is_validated_and_non_json_data_cannot_match,
    dataschema_names_the_version_used_and_a_wrong_one_is_refused(
        "--public-url",
        "https://bus.example/"
    ),
    a_new_version_must_accept_every_retained_event_unless_told_otherwise,
    an_invalid_schema_is_refused_saying_why,
    delete_stops_validation_and_a_later_version_resumes_it,
    admins_change_schemas_and_readers_read_them,
);

async fn admins_change_schemas_and_readers_read_them(app: TestApp) {
    let admin = create_token(app.data_dir(), "ops", "admin", &[]).await;
    let publisher = create_token(app.data_dir(), "agent", "publish", &[]).await;
    let reader = create_token(app.data_dir(), "dash", "read", &[]).await;
    let app = app.restart(&["--auth", "required"]).await;
    let (admin, publisher, reader) = (
        app.with_token(&admin),
        app.with_token(&publisher),
        app.with_token(&reader),
    );
    let schema = json!({"type": "object"});
    for who in [&publisher, &reader] {
        who.put("/schemas/t.x", &schema).await.assert_problem(403);
    }
    app.put("/schemas/t.x", &schema).await.assert_problem(401);
    register(&admin, "t.x", &schema).await;
    for who in [&publisher, &reader] {
        who.delete("/schemas/t.x").await.assert_problem(403);
    }
    reader.get_json("/schemas").await;
    reader.get_json("/schemas/t.x").await;
    reader.get_json("/schemas/t.x/versions/1").await;
    publisher.get("/schemas").await.assert_problem(403);
    let r = publisher
        .publish(&json!({"type": "t.x", "source": "/s", "data": 1}))
        .await;
    assert_eq!(error_fields(&r.assert_problem(422)), vec!["data"]);
    assert_eq!(admin.delete("/schemas/t.x").await.status, 200);
}

#[tokio::test]
async fn versions_survive_sigkill_and_come_back_from_backups() {
    let dir = DataDir::temp();
    let d = dir.path().display().to_string();
    let v1 = json!({"type": "object", "properties": {"points": {"type": "number"}}});
    let v2 = json!({"type": "object", "properties": {"points": {"type": "integer"}}});
    {
        let p = spawn_process(dir.path(), &[]).await;
        register(&p, "t.x", &v1).await;
        register(&p, "t.x", &v2).await;
        p.sigkill();
        p.kill().await;
    }
    let app = start_app(dir, &[]).await;
    assert_eq!(app.get_json("/schemas/t.x/versions/1").await["schema"], v1);
    assert_eq!(app.get_json("/schemas/t.x").await["version"], 2);
    let r = app
        .publish(&json!({"type": "t.x", "source": "/s", "data": {"points": 1.5}}))
        .await;
    assert_eq!(error_fields(&r.assert_problem(422)), vec!["data/points"]);
    // A backup holds them; a damaged file at start is replaced by the
    // backup's copy, with an alert.
    let b = app.post("/admin/backups", None).await;
    assert_eq!(b.status, 201, "{}", b.text());
    let backup = b.json()["name"].as_str().unwrap().to_string();
    let dir = app.stop().await;
    let file = dir.path().join("schemas.json");
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    std::fs::write(&file, &bad).unwrap();
    let app = start_app(dir, &[]).await;
    assert_eq!(app.get_json("/schemas/t.x").await["version"], 2);
    let alerts = app.get_json("/alerts").await;
    assert!(
        alerts["alerts"].as_array().unwrap().iter().any(|a| a["file"] == "schemas.json"
            && a["detail"].as_str().unwrap().contains(&backup)),
        "{alerts:#}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), good);
    // msgbus restore brings the backup's schemas back over a later change.
    app.delete("/schemas/t.x").await;
    let dir = app.stop().await;
    let (code, out, err) = run_msgbus(&["restore", "--data-dir", &d, "--from", &backup]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read(&file).unwrap(), good);
    let app = start_app(dir, &[]).await;
    assert_eq!(
        app.get_json("/schemas").await["schemas"][0]["status"],
        "active"
    );
}

/// A registered version is in a backup at once: `schemas.json` damaged
/// while the server is stopped is restored from the newest backup, which
/// must already hold it (before, no backup was taken until the timer's or a
/// seal's, so the version was lost with the file).
#[tokio::test]
async fn a_registered_version_is_backed_up_before_the_file_can_be_lost() {
    let app = start_app(DataDir::temp(), &[]).await;
    let v1 = json!({"type": "object", "properties": {"points": {"type": "number"}}});
    register(&app, "t.x", &v1).await;
    let t0 = Instant::now();
    loop {
        let backups = app.get_json("/admin/backups").await;
        if backups["backups"].as_array().is_some_and(|b| !b.is_empty()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no backup after registering a schema: {backups:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dir = app.stop().await;
    let file = dir.path().join("schemas.json");
    let mut bad = std::fs::read(&file).unwrap();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    std::fs::write(&file, &bad).unwrap();
    let app = start_app(dir, &[]).await;
    assert_eq!(app.get_json("/schemas/t.x/versions/1").await["schema"], v1);
    let r = app
        .publish(&json!({"type": "t.x", "source": "/s", "data": {"points": "five"}}))
        .await;
    assert_eq!(error_fields(&r.assert_problem(422)), vec!["data/points"]);
}

#[tokio::test]
async fn the_integrity_monitor_rewrites_a_damaged_schemas_file() {
    let app = start_monitored(DataDir::temp(), &[]).await;
    register(&app, "t.x", &json!({"type": "object"})).await;
    let file = app.data_dir().join("schemas.json");
    let good = std::fs::read(&file).unwrap();
    let after = app.last_alert_id().await;
    let t0 = Instant::now();
    std::fs::write(&file, b"{\"crc\":\"00000000\",\"rec\":{}}").unwrap();
    expect_repair(&app, after, t0, "schemas.json", "damaged schemas.json").await;
    assert_eq!(std::fs::read(&file).unwrap(), good);
    assert!(!crate::common::files::quarantined(app.data_dir()).is_empty());
    let _ = Duration::ZERO;
}
