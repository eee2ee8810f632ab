//! Talking to a server: [`Api`], a client that knows where the server is,
//! and [`Reply`], a response read whole.
//!
//! Requests panic with the method and path when they cannot be sent or
//! their body cannot be read: in these tests that is always a failure, and
//! the request's name is what the reader needs. Tests that expect the
//! connection to break (a server killed under load) use `Api::client`
//! directly.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::RequestBuilder;
use serde_json::Value;

/// The media type every error must carry.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every request's timeout. Longer than any request a test makes on purpose
/// (a 10 s long-poll, a large batch on a busy 2-core machine); a server that
/// hangs fails the test naming the request instead of hanging the suite.
/// Streams set their own, longer one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client that knows where the server is.
#[derive(Clone, Debug)]
pub struct Api {
    /// Where the server listens.
    pub addr: SocketAddr,
    /// `http://ADDR`.
    pub base: String,
    /// The client: no proxy (the server is on loopback, and a proxy set in
    /// the environment must not be asked), [`REQUEST_TIMEOUT`].
    pub client: reqwest::Client,
}

impl Api {
    /// A client for the server at `addr`.
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("build a reqwest client"),
        }
    }

    /// The same server, every request sending `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Api {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .expect("a token is a valid header value"),
        );
        Api {
            addr: self.addr,
            base: self.base.clone(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .default_headers(headers)
                .build()
                .expect("build a reqwest client"),
        }
    }

    /// Absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request built on `self.client` (for headers or bodies the
    /// helpers below do not cover) and reads the response whole.
    pub async fn send(&self, req: RequestBuilder) -> Reply {
        let (client, req) = req.build_split();
        let req = req.expect("a valid request");
        let what = format!("{} {}", req.method(), req.url());
        let res = client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        Reply::read(res, &what).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    /// `GET path` that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path} -> {}", r.text());
        r.json()
    }

    /// `POST path` with a JSON body (`None`: an empty body).
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Reply {
        let mut req = self.client.post(self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }

    /// `POST path` with `body` sent as is, labelled `application/json`
    /// (for bodies that are not valid JSON).
    pub async fn post_json_text(&self, path: &str, body: &str) -> Reply {
        self.send(
            self.client
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// `PUT path` with `body` sent as is, labelled `application/json`.
    pub async fn put_text(&self, path: &str, body: &str) -> Reply {
        self.send(
            self.client
                .put(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.put(self.url(path)).json(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    /// `POST /events` with a structured JSON event.
    pub async fn publish(&self, event: &Value) -> Reply {
        self.post("/events", Some(event)).await
    }

    /// `POST /events` that must answer 201 with a matching `Location`;
    /// returns the body.
    pub async fn publish_ok(&self, event: &Value) -> Value {
        let res = self.publish(event).await;
        let body = res.json();
        assert_eq!(res.status, 201, "publish of {event} -> {body}");
        let seq = body["seq"].as_u64().expect("seq is a number");
        assert_eq!(
            res.header("location"),
            Some(format!("/events/{seq}").as_str())
        );
        assert_eq!(body["duplicate"], false);
        body
    }

    /// `POST /events/batch` with any JSON body.
    pub async fn batch(&self, items: &Value) -> Reply {
        self.post("/events/batch", Some(items)).await
    }

    /// Publishes `events` as one batch, which must answer 201 with one
    /// result per event; returns their seqs in order.
    pub async fn publish_batch(&self, events: &[Value]) -> Vec<u64> {
        let r = self.batch(&Value::from(events.to_vec())).await;
        assert_eq!(r.status, 201, "batch publish -> {}", r.text());
        let seqs: Vec<u64> = r.json()["results"]
            .as_array()
            .expect("results array")
            .iter()
            .map(|res| res["seq"].as_u64().expect("seq"))
            .collect();
        assert_eq!(seqs.len(), events.len(), "one result per item");
        seqs
    }

    /// Every stored event, oldest first, paging with `limit=1000`.
    pub async fn read_all(&self) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get_json(&format!("/events?after={after}&limit=1000"))
                .await;
            let events = page["events"].as_array().expect("events array");
            if events.is_empty() {
                return out;
            }
            for e in events {
                out.push((e["seq"].as_u64().expect("seq"), e["event"].clone()));
            }
            let next = page["next_after"].as_u64().expect("next_after");
            assert!(next > after, "next_after must advance: {after} -> {next}");
            after = next;
        }
    }
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// `Content-Type` without parameters (empty if none).
    pub content_type: String,
    /// Raw body.
    pub body: Vec<u8>,
}

impl Reply {
    /// Reads `res` whole; `what` names the request in a failure.
    pub async fn read(res: reqwest::Response, what: &str) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        let body = res
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body of a {status}: {e}"))
            .to_vec();
        Reply {
            status,
            headers,
            content_type,
            body,
        }
    }

    /// Header `name` as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("a text header"))
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts an RFC 9457 problem with `status`; returns it.
    pub fn assert_problem(&self, status: u16) -> Value {
        self.check_problem(status, "a problem")
    }

    /// Asserts an RFC 9457 problem with `status` and `type`
    /// `urn:msgbus:problem:<slug>`; `what` names the case in a failure.
    /// Returns it.
    pub fn assert_problem_type(&self, status: u16, slug: &str, what: &str) -> Value {
        let p = self.check_problem(status, what);
        assert_eq!(
            p["type"],
            format!("urn:msgbus:problem:{slug}"),
            "{what}: problem type; body {p}"
        );
        p
    }

    /// The checks every problem must pass: the status (a server error where
    /// a client error was expected is called out as such), problem+json,
    /// the `status` member, and non-empty `type`, `title` and `detail`.
    fn check_problem(&self, status: u16, what: &str) -> Value {
        let text = self.text();
        if status < 500 {
            assert!(
                self.status < 500,
                "{what}: expected {status}, got a server error {}: {text}",
                self.status
            );
        }
        assert_eq!(
            self.status, status,
            "{what}: unexpected status; body {text}"
        );
        assert_eq!(
            self.content_type, PROBLEM_JSON,
            "{what}: an error must be problem+json; body {text}"
        );
        let p: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: problem is not JSON ({e}): {text}"));
        assert_eq!(
            p["status"], status,
            "{what}: problem status member; body {p}"
        );
        for member in ["type", "title", "detail"] {
            assert!(
                p[member].as_str().is_some_and(|s| !s.is_empty()),
                "{what}: problem lacks {member}; body {p}"
            );
        }
        p
    }
}

/// The `field`s named in a problem's `errors`.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errs| {
            errs.iter()
                .map(|e| e["field"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of the unlabelled series `name` in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}
