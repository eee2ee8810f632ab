//! The dashboard at `/`, against the real binary on port 0, in a real
//! headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed when missing; the browser tests are
//! skipped, saying so, only when they cannot be).
//!
//! `MSGBUS_UPDATE_SCREENSHOTS=1` makes the browser test write
//! `docs/dashboard-light.png` and `docs/dashboard-dark.png` (the README
//! shows them); without it the tree is left alone.

#[path = "../common/mod.rs"]
mod common;
mod webdriver;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::files::DataDir;
use common::http::Api;
use common::process::{create_token, spawn_process, TestProcess};
use webdriver::{Driver, Session};

/// Generous bound for what the page shows after a poll (it polls `/stats`
/// every second and `/consumers` every 2 s).
const SHOWS: Duration = Duration::from_secs(15);

fn ev(ty: &str, source: &str, subject: &str) -> Value {
    json!({"type": ty, "source": source, "subject": subject, "data": {"subject": subject}})
}

/// The text of every cell of `table`'s body, row by row.
const TABLE_ROWS: &str = "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]
    .map(r => [...r.cells].map(c => c.textContent));";

async fn rows(s: &Session<'_>, table: &str) -> Vec<Vec<String>> {
    serde_json::from_value(s.js(TABLE_ROWS, json!([table])).await).unwrap()
}

/// Waits until `table`'s rows are `want`.
async fn wait_rows(s: &Session<'_>, table: &str, want: Vec<Vec<&str>>) {
    let deadline = Instant::now() + SHOWS;
    loop {
        let got = rows(s, table).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{table}: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the live tail lists an event whose subject is `subject`
/// and returns how long that took.
async fn wait_in_tail(s: &Session<'_>, subject: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    s.wait_for(
        &format!("{subject} in the live tail"),
        timeout,
        &format!(
            "return [...document.querySelectorAll('#tail .subject')].some(e => e.textContent === {});",
            json!(subject)
        ),
    )
    .await;
    t0.elapsed()
}

/// Failures in the browser log: errors (console errors, failed loads, CSP
/// refusals) and warnings, minus those `allowed` names.
fn failures(log: &[(String, String)], allowed: &[&str]) -> Vec<String> {
    log.iter()
        .filter(|(level, _)| level == "SEVERE" || level == "WARNING")
        .filter(|(_, m)| !allowed.iter().any(|a| m.contains(a)))
        .map(|(l, m)| format!("{l}: {m}"))
        .collect()
}

/// Every resource the page loaded that did not answer 2xx/304 (the
/// Resource Timing entries' statuses).
const FAILED_LOADS: &str = "return performance.getEntriesByType('resource')
    .filter(e => e.responseStatus >= 400 || e.responseStatus === 0 && e.name.includes('/ui/'))
    .map(e => e.name + ' ' + e.responseStatus);";

async fn browser() -> Option<Driver> {
    let (driver, chromium) = webdriver::find_or_install().await?;
    Some(Driver::start(&driver, &chromium).await)
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_types_etags_and_csp_without_a_token() {
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let p = spawn_process(dir.path(), &[]).await;

    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/ui/", "text/html; charset=utf-8"),
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
        ("/ui/favicon.svg", "image/svg+xml"),
        ("/favicon.ico", "image/svg+xml"),
    ] {
        let r = p.get(path).await;
        assert_eq!(r.status, 200, "GET {path} without a token: {}", r.text());
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));
        let etag = r.header("etag").expect("an ETag").to_string();
        let again = p
            .send(p.client.get(p.url(path)).header("if-none-match", &etag))
            .await;
        assert_eq!(again.status, 304, "{path} with If-None-Match");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let other = p
            .send(p.client.get(p.url(path)).header("if-none-match", "\"x\""))
            .await;
        assert_eq!(other.status, 200, "{path} with another ETag");
    }
    let html = p.get("/").await.text();
    assert!(!html.contains("style="), "no style attribute: {html}");
    assert!(!html.contains("<style"), "no inline stylesheet");
    assert!(!html.contains("<script>"), "no inline script");

    // The page holds no data; the data keeps its access rules.
    p.get("/stats")
        .await
        .assert_problem_type(401, "unauthorized", "/stats");
    p.get("/ui/nope.js").await.assert_problem(404);
    let r = p.with_token(&admin).get("/stats").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
    p.kill().await;
}

/// Publishes what the page should show: 3 `order.created` from `/shop`
/// and 1 `sensor.reading` from `/probe`, and a consumer `billing` at 0.
async fn seed(api: &Api) {
    for i in 0..3 {
        api.publish_ok(&ev("order.created", "/shop", &format!("order-{i}")))
            .await;
    }
    api.publish_ok(&ev("sensor.reading", "/probe", "probe-1"))
        .await;
    let r = api.put("/consumers/billing", &json!({})).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text());
}

#[tokio::test]
async fn the_dashboard_shows_the_bus_live_in_a_real_browser() {
    let Some(driver) = browser().await else {
        return;
    };
    let dir = DataDir::temp();
    let p: TestProcess = spawn_process(dir.path(), &[]).await;
    seed(&p).await;
    let profile = tempfile::tempdir().unwrap();
    let s = driver.session(profile.path(), 1280, 2000).await;
    s.goto(&p.url("/")).await;

    // Totals by type and by source, the busiest first.
    s.wait_for(
        "the total",
        SHOWS,
        "return document.getElementById('ev-total').textContent === '4';",
    )
    .await;
    wait_rows(
        &s,
        "#by-type",
        vec![vec!["order.created", "3"], vec!["sensor.reading", "1"]],
    )
    .await;
    wait_rows(
        &s,
        "#by-source",
        vec![vec!["/shop", "3"], vec!["/probe", "1"]],
    )
    .await;
    let health = s
        .js(
            "return document.getElementById('health').textContent;",
            json!([]),
        )
        .await;
    let health = health.as_str().unwrap();
    assert!(health.contains("Ready: ready"), "{health}");
    assert!(health.contains(env!("CARGO_PKG_VERSION")), "{health}");

    // An event published after the page opened reaches the live tail
    // within 2 s.
    s.wait_for(
        "the live tail",
        SHOWS,
        "return document.getElementById('tail-state').textContent === 'live';",
    )
    .await;
    let t0 = Instant::now();
    p.publish_ok(&ev("order.paid", "/shop", "live-1")).await;
    wait_in_tail(&s, "live-1", SHOWS).await;
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "the tail showed the event after {took:?}"
    );

    // The consumer's lag, then the same lag less what an ack covered.
    s.wait_for(
        "billing's lag 5",
        SHOWS,
        "return document.querySelector('#consumers tbody tr .lag')?.textContent === '5';",
    )
    .await;
    let r = p
        .post("/consumers/billing/ack", Some(&json!({"seq": 3})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    s.wait_for(
        "billing's lag 2 after the ack",
        SHOWS,
        "return document.querySelector('#consumers tbody tr .lag')?.textContent === '2';",
    )
    .await;

    // Event content is text, never markup: a type and subject holding
    // HTML show as written and run nothing.
    let evil = "<img src=/x onerror=window.pwned=1>";
    p.publish_ok(&ev(evil, "/agent", evil)).await;
    wait_in_tail(&s, evil, SHOWS).await;
    let injected = s
        .js(
            "return [window.pwned === undefined, document.querySelectorAll('#tail img').length];",
            json!([]),
        )
        .await;
    assert_eq!(
        injected,
        json!([true, 0]),
        "event content was parsed as HTML"
    );

    // Pause stops the tail; resume continues where it stopped.
    s.click("#tail-toggle").await;
    s.wait_for(
        "paused",
        SHOWS,
        "return document.getElementById('tail-state').textContent.startsWith('paused');",
    )
    .await;
    p.publish_ok(&ev("order.paid", "/shop", "while-paused"))
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let shown = s
        .js("return [...document.querySelectorAll('#tail .subject')].some(e => e.textContent === 'while-paused');", json!([]))
        .await;
    assert_eq!(shown, json!(false), "a paused tail showed a new event");
    s.click("#tail-toggle").await;
    wait_in_tail(&s, "while-paused", SHOWS).await;

    // The browser: filters, paging, each event expandable to its JSON.
    s.type_into("#browse input[name=type_prefix]", "order.")
        .await;
    s.click("#browse button[type=submit]").await;
    s.wait_for(
        "the 5 order.* events",
        SHOWS,
        "return document.querySelectorAll('#results > li').length === 5;",
    )
    .await;
    s.click("#results > li:first-child summary").await;
    let json_text = s
        .wait_for(
            "the expanded JSON",
            SHOWS,
            "return document.querySelector('#results > li:first-child pre')?.textContent;",
        )
        .await;
    let shown: Value = serde_json::from_str(json_text.as_str().unwrap()).unwrap();
    assert_eq!(shown["subject"], "order-0");
    assert_eq!(shown["data"], json!({"subject": "order-0"}));

    // Without access control the page is an admin's: backups on demand.
    s.wait_for(
        "the admin buttons",
        SHOWS,
        "return !document.querySelector('.admin-only').classList.contains('hidden');",
    )
    .await;
    s.click("#backup-now").await;
    s.wait_for(
        "a backup in the list",
        Duration::from_secs(30),
        "return document.querySelectorAll('#backups tbody tr').length === 1 && document.getElementById('admin-result').textContent.includes('taken');",
    )
    .await;

    // Every control is labelled (for screen readers and keyboard users).
    let unlabelled = s
        .js("return [...document.querySelectorAll('input, select')].filter(e => e.labels.length === 0).map(e => e.outerHTML);", json!([]))
        .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");

    // Nothing failed: no console error, no failed load (the icon included).
    let icon = s
        .js(
            "return document.querySelector('header img').naturalWidth;",
            json!([]),
        )
        .await;
    assert!(icon.as_u64().unwrap_or(0) > 0, "the icon did not load");
    let failed = s.js(FAILED_LOADS, json!([])).await;
    assert_eq!(failed, json!([]), "failed loads");
    let log = s.log().await;
    assert_eq!(
        failures(&log, &[]),
        Vec::<String>::new(),
        "browser log: {log:?}"
    );

    if std::env::var_os("MSGBUS_UPDATE_SCREENSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        s.js("document.getElementById('results').firstElementChild.querySelector('details').open = false; window.scrollTo(0, 0);", json!([])).await;
        // A few seconds of samples, so the charts hold a line.
        for i in 0..20 {
            let batch: Vec<Value> = (0..(5 + i * 3))
                .map(|j| ev("order.created", "/shop", &format!("shot-{i}-{j}")))
                .collect();
            p.publish_batch(&batch).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        for scheme in ["light", "dark"] {
            s.color_scheme(scheme).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let png = s.screenshot().await;
            std::fs::write(docs.join(format!("dashboard-{scheme}.png")), png).unwrap();
        }
    }
    s.close().await;
    p.kill().await;
}

#[tokio::test]
async fn with_access_control_the_page_asks_for_a_token_and_works_with_a_read_token() {
    let Some(driver) = browser().await else {
        return;
    };
    let dir = DataDir::temp();
    let admin = create_token(dir.path(), "ops", "admin", &[]).await;
    let read = create_token(dir.path(), "dash", "read", &[]).await;
    let p = spawn_process(dir.path(), &[]).await;
    let admin_api = p.with_token(&admin);
    seed(&admin_api).await;

    let profile = tempfile::tempdir().unwrap();
    // A phone-sized window.
    let s = driver.session(profile.path(), 390, 844).await;
    s.goto(&p.url("/")).await;
    s.wait_for(
        "the request for a token",
        SHOWS,
        "return document.getElementById('token-form').classList.contains('needed') \
         && document.getElementById('notice').textContent.includes('token');",
    )
    .await;
    assert_eq!(
        s.js(
            "return document.getElementById('ev-total').textContent;",
            json!([])
        )
        .await,
        json!("–"),
        "data shown without a token"
    );

    s.type_into("#token", &read).await;
    s.click("#token-form button[type=submit]").await;
    s.wait_for(
        "the total",
        SHOWS,
        "return document.getElementById('ev-total').textContent === '4';",
    )
    .await;
    wait_rows(
        &s,
        "#by-type",
        vec![vec!["order.created", "3"], vec!["sensor.reading", "1"]],
    )
    .await;
    s.wait_for(
        "the live tail",
        SHOWS,
        "return document.getElementById('tail-state').textContent === 'live';",
    )
    .await;
    admin_api
        .publish_ok(&ev("order.paid", "/shop", "with-read-token"))
        .await;
    wait_in_tail(&s, "with-read-token", SHOWS).await;

    // A read token: admin work is hidden and said to need an admin token.
    s.wait_for(
        "the admin note",
        SHOWS,
        "return document.getElementById('alerts-note').textContent.includes('admin token');",
    )
    .await;
    let hidden = s
        .js("return [...document.querySelectorAll('.admin-only')].every(e => e.classList.contains('hidden') && e.offsetParent === null);", json!([]))
        .await;
    assert_eq!(hidden, json!(true), "admin buttons shown to a read token");

    // Readable on a phone: nothing wider than the screen.
    let fits = s
        .js(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            json!([]),
        )
        .await;
    assert!(
        fits[0].as_u64() <= fits[1].as_u64(),
        "wider than a phone: {fits}"
    );

    // The token is kept for the tab (sessionStorage): a reload needs no
    // new entry.
    let kept = s
        .js("return sessionStorage.getItem('msgbus.token');", json!([]))
        .await;
    assert_eq!(kept, json!(read));
    s.goto(&p.url("/")).await;
    s.wait_for(
        "the total after a reload",
        SHOWS,
        "return document.getElementById('ev-total').textContent === '5';",
    )
    .await;
    let asked = s
        .js(
            "return document.getElementById('token-form').classList.contains('needed');",
            json!([]),
        )
        .await;
    assert_eq!(asked, json!(false));

    // The only failures are the refusals the page acts on: 401 before the
    // token, 403 for the admin endpoints.
    let log = s.log().await;
    let unexpected = failures(&log, &["status of 401", "status of 403"]);
    assert_eq!(unexpected, Vec::<String>::new(), "browser log: {log:?}");
    s.close().await;
    p.kill().await;
}
