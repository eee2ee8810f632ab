//! Moving events in and out of a store as files: `msgbus import` and
//! `msgbus export`, online (over HTTP) and offline (on a stopped data
//! directory) alike. Everything here talks to a store through
//! [`Transport`], the HTTP API's requests and answers: the online transport
//! is [`crate::client`]'s HTTP client, the offline one
//! ([`crate::inprocess`]) sends the same requests to the server's own
//! router in process. So both modes run the same validation and store code
//! as a server, and this module knows nothing of either.
//!
//! - `records`: reading a file: NDJSON, a JSON array (a CloudEvents batch),
//!   or the predecessor's message-bus file (`{"events": [...]}`), gzip or not
//! - `mapping`: one record to the CloudEvent to publish (the predecessor's
//!   field names, `--map`, `--default-source`, `--timezone`, ids from
//!   content), with the reason when it cannot be made valid
//! - `import`: batches of up to 1,000, per-record rejections, `--strict`
//! - `export`: pages of `GET /events` to NDJSON lines

pub mod export;
pub mod import;
pub mod mapping;
pub mod records;

use std::future::Future;
use std::pin::Pin;

/// A request's answer: the status and the body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// True for 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// What a refusal says: the problem's `detail` and each named field,
    /// or the status and the start of the body when it is no problem
    /// document.
    pub fn describe(&self) -> String {
        #[derive(serde::Deserialize)]
        struct Item {
            field: String,
            message: String,
        }
        #[derive(serde::Deserialize)]
        struct Problem {
            #[serde(default)]
            title: String,
            #[serde(default)]
            detail: String,
            #[serde(default)]
            errors: Vec<Item>,
        }
        match serde_json::from_slice::<Problem>(&self.body) {
            Ok(p) => {
                let mut s = format!("{} {}", self.status, p.title);
                if !p.detail.is_empty() {
                    s.push_str(": ");
                    s.push_str(&p.detail);
                }
                // The detail of a single error often is that error.
                for e in p.errors.iter().take(10) {
                    let item = format!("{}: {}", e.field, e.message);
                    if !p.detail.contains(&item) {
                        s.push_str("; ");
                        s.push_str(&item);
                    }
                }
                s
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&self.body);
                let text: String = text.chars().take(200).collect();
                format!("HTTP {}: {}", self.status, text.trim())
            }
        }
    }
}

/// A request that could not be made or answered at all.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// A boxed future of a [`Transport`].
pub type Pending<'a> = Pin<Box<dyn Future<Output = Result<Reply, TransportError>> + Send + 'a>>;

/// One request of the HTTP API: method, path with query, and a JSON body
/// (sent with `Content-Type: application/json`) or none.
pub trait Transport: Send + Sync {
    /// Sends the request and reads the whole answer.
    fn send<'a>(&'a self, method: &'a str, path: &'a str, body: Option<Vec<u8>>) -> Pending<'a>;
}

#[cfg(test)]
mod tests {
    use super::Reply;

    #[test]
    fn a_refusal_reads_as_its_problem() {
        let r = Reply {
            status: 422,
            body: br#"{"title":"Invalid event","detail":"type: must not be empty","errors":[{"field":"type","message":"must not be empty"},{"field":"source","message":"is required"}]}"#.to_vec(),
        };
        assert_eq!(
            r.describe(),
            "422 Invalid event: type: must not be empty; source: is required"
        );
        let r = Reply {
            status: 502,
            body: b"<html>bad gateway</html>".to_vec(),
        };
        assert_eq!(r.describe(), "HTTP 502: <html>bad gateway</html>");
    }
}
