//! A minimal HTTP/1.1 client: one persistent keep-alive connection per
//! [`Conn`] (hyper's connection-level API, no pool, no TLS), `TCP_NODELAY`
//! on, the whole response body read so the connection is reused. A
//! [`Conn`] may carry an `Authorization: Bearer` header ([`bearer`]) that
//! it sends with every request, for a msgbus with access control on.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Errors of this crate.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A response, body fully read.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// The `Authorization` header value `Bearer <token>`, marked sensitive.
pub fn bearer(token: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// One keep-alive connection.
pub struct Conn {
    host: HeaderValue,
    auth: Option<HeaderValue>,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    /// Opens a connection to `addr`.
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        Conn::connect_with(addr, None).await
    }

    /// Opens a connection to `addr` whose every request carries `auth` as
    /// its `Authorization` header (see [`bearer`]), when given.
    pub async fn connect_with(addr: SocketAddr, auth: Option<HeaderValue>) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            host: HeaderValue::from_str(&addr.to_string())?,
            auth,
            sender,
        })
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&'static str>,
        body: Bytes,
    ) -> Result<Response> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(body))?;
        req.headers_mut().insert(HOST, self.host.clone());
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        if let Some(ct) = content_type {
            req.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        self.sender.ready().await?;
        let res = self.sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// `GET path` on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Response> {
    get_with(addr, path, None).await
}

/// `GET path` on a fresh connection, with `auth` as its `Authorization`
/// header when given.
pub async fn get_with(addr: SocketAddr, path: &str, auth: Option<HeaderValue>) -> Result<Response> {
    let mut c = Conn::connect_with(addr, auth).await?;
    c.send(Method::GET, path, None, Bytes::new()).await
}

/// `GET path`, expecting 200 and a JSON body.
pub async fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value> {
    get_json_with(addr, path, None).await
}

/// `GET path` with `auth` as its `Authorization` header when given,
/// expecting 200 and a JSON body.
pub async fn get_json_with(
    addr: SocketAddr,
    path: &str,
    auth: Option<HeaderValue>,
) -> Result<serde_json::Value> {
    let res = tokio::time::timeout(Duration::from_secs(30), get_with(addr, path, auth))
        .await
        .map_err(|_| format!("GET {path} on {addr} timed out"))??;
    if res.status != StatusCode::OK {
        return Err(format!(
            "GET {path} on {addr} answered {}: {}",
            res.status,
            String::from_utf8_lossy(&res.body)
        )
        .into());
    }
    Ok(serde_json::from_slice(&res.body)?)
}
