//! `GET /events`: filters, cursor paging, limits.

use serde_json::{json, Value};

use crate::common::http::{error_fields, Api};
use crate::common::server::{on_both, TestApp};

fn seqs(page: &Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .expect("events array")
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// Follows `next_after` from `after=0` with `query` and `limit`, returning
/// every page's seqs and the final cursor.
async fn pages(api: &Api, query: &str, limit: u64) -> (Vec<Vec<u64>>, u64) {
    let mut out = Vec::new();
    let mut after = 0;
    for _ in 0..100 {
        let sep = if query.is_empty() { "" } else { "&" };
        let page = api
            .get_json(&format!("/events?after={after}&limit={limit}{sep}{query}"))
            .await;
        let s = seqs(&page);
        let next = page["next_after"].as_u64().unwrap();
        assert!(
            next >= after,
            "the cursor never goes back: {after} -> {next}"
        );
        if s.is_empty() {
            return (out, next);
        }
        assert!(
            s.iter().all(|&q| q > after && q <= next),
            "page {s:?} must lie in ({after}, {next}]"
        );
        out.push(s);
        after = next;
    }
    panic!("paging did not end");
}

/// 30 events: types `com.a.x` / `com.a.y` / `com.b.x` in turn, sources
/// `/s0`../s2` every 5, subject `odd`/`even`.
async fn seed(api: &Api) -> Vec<Value> {
    let events: Vec<Value> = (1..=30u64)
        .map(|i| {
            let ty = ["com.a.x", "com.a.y", "com.b.x"][(i % 3) as usize];
            json!({
                "type": ty,
                "source": format!("/s{}", (i - 1) / 10),
                "subject": if i % 2 == 1 { "odd" } else { "even" },
                "id": format!("e{i}"),
                "data": {"i": i}
            })
        })
        .collect();
    // Half as a batch, half one by one.
    let res = api.batch(&json!(events[..15])).await;
    assert_eq!(res.status, 201);
    for ev in &events[15..] {
        api.publish_ok(ev).await;
    }
    events
}

fn expect(events: &[Value], keep: impl Fn(&Value) -> bool) -> Vec<u64> {
    events
        .iter()
        .enumerate()
        .filter(|(_, e)| keep(e))
        .map(|(i, _)| i as u64 + 1)
        .collect()
}

async fn filters_select_exactly_the_matching_events(app: TestApp) {
    let events = seed(&app).await;

    let cases: Vec<(&str, Vec<u64>)> = vec![
        ("type=com.a.x", expect(&events, |e| e["type"] == "com.a.x")),
        (
            "type_prefix=com.a.",
            expect(&events, |e| {
                e["type"].as_str().unwrap().starts_with("com.a.")
            }),
        ),
        ("type_prefix=com.", (1..=30).collect()),
        ("source=/s1", (11..=20).collect()),
        ("subject=odd", expect(&events, |e| e["subject"] == "odd")),
        (
            "type=com.b.x&source=/s2&subject=even",
            expect(&events, |e| {
                e["type"] == "com.b.x" && e["source"] == "/s2" && e["subject"] == "even"
            }),
        ),
        (
            "type_prefix=com.a&subject=even",
            expect(&events, |e| {
                e["type"].as_str().unwrap().starts_with("com.a") && e["subject"] == "even"
            }),
        ),
        ("type=com.a.x&type_prefix=com.b", vec![]),
        ("type=nope", vec![]),
        ("source=/nowhere", vec![]),
        ("subject=neither", vec![]),
        ("type_prefix=org.", vec![]),
    ];
    for (query, want) in cases {
        let page = app.get_json(&format!("/events?limit=1000&{query}")).await;
        assert_eq!(seqs(&page), want, "GET /events?{query}");
        assert_eq!(page["last_seq"], 30);
        assert_eq!(
            page["next_after"], 30,
            "{query}: an exhausted read's cursor is the head"
        );
        for e in page["events"].as_array().unwrap() {
            let i = e["seq"].as_u64().unwrap() as usize;
            assert_eq!(e["event"], {
                let mut sent = events[i - 1].clone();
                sent["specversion"] = json!("1.0");
                sent["time"] = e["event"]["time"].clone();
                sent
            });
        }
    }
    // Empty filter values count as absent.
    assert_eq!(seqs(&app.get_json("/events?type=&source=").await).len(), 30);
}

async fn cursor_paging_visits_everything_once(app: TestApp) {
    let events = seed(&app).await;

    let (pages_, end) = pages(&app, "", 7).await;
    let sizes: Vec<usize> = pages_.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![7, 7, 7, 7, 2]);
    assert_eq!(pages_.concat(), (1..=30).collect::<Vec<_>>());
    assert_eq!(end, 30);

    // Filtered paging skips what does not match and still ends at the head.
    let want = expect(&events, |e| e["type"] == "com.a.y");
    let (pages_, end) = pages(&app, "type=com.a.y", 3).await;
    assert!(pages_.iter().all(|p| p.len() <= 3));
    assert!(pages_.len() >= 3, "{pages_:?}");
    assert_eq!(pages_.concat(), want);
    assert_eq!(end, 30);

    let (pages_, _) = pages(&app, "source=/s2&subject=odd", 2).await;
    assert_eq!(pages_.concat(), vec![21, 23, 25, 27, 29]);

    // after= in the middle and past the head.
    assert_eq!(
        seqs(&app.get_json("/events?after=25").await),
        vec![26, 27, 28, 29, 30]
    );
    let past = app.get_json("/events?after=1000").await;
    assert_eq!(seqs(&past), Vec::<u64>::new());
    assert_eq!(past["last_seq"], 30);
}

async fn limit_defaults_and_bounds(app: TestApp) {
    let items: Vec<Value> = (0..1005)
        .map(|i| json!({"type": "t.many", "source": "/m", "id": format!("{i}")}))
        .collect();
    // The most one batch may hold, then the rest.
    assert_eq!(app.batch(&json!(items[..1000])).await.status, 201);
    assert_eq!(app.batch(&json!(items[1000..])).await.status, 201);

    let page = app.get_json("/events").await;
    assert_eq!(
        seqs(&page),
        (1..=100).collect::<Vec<_>>(),
        "default limit 100"
    );
    assert_eq!(page["next_after"], 100);
    assert_eq!(page["last_seq"], 1005);

    assert_eq!(seqs(&app.get_json("/events?limit=1").await), vec![1]);
    let max = app.get_json("/events?limit=1000").await;
    assert_eq!(seqs(&max).len(), 1000);
    assert_eq!(max["next_after"], 1000);
    assert_eq!(
        seqs(&app.get_json("/events?after=1000&limit=1000").await),
        vec![1001, 1002, 1003, 1004, 1005]
    );

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "after=-1",
        "after=x",
    ] {
        let problem = app.get(&format!("/events?{bad}")).await.assert_problem(400);
        let name = bad.split('=').next().unwrap();
        assert_eq!(error_fields(&problem), vec![name], "{bad}: {problem}");
    }
}

on_both!(
    filters_select_exactly_the_matching_events,
    cursor_paging_visits_everything_once,
    limit_defaults_and_bounds,
);
