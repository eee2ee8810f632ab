//! Who may do what: roles, the principal a request runs as, and what each
//! route needs.
//!
//! | Role | May |
//! |---|---|
//! | `publish` | `POST /events`, `POST /events/batch` |
//! | `read` | `GET /events`, `/events/{seq}`, `/events/stream`, `/stats`; consumers: list, create, read, ack |
//! | `read` | also `GET /schemas`, `/schemas/{type}`, `/schemas/{type}/versions/{n}` |
//! | `admin` | everything: deleting a consumer or moving its cursor, `/alerts`, `/admin/*`, tokens, `PUT`/`DELETE /schemas/{type}` |
//!
//! A token's [`Scope`] narrows what it publishes and sees (the handlers
//! apply it; see `http::events`, `http::stream`, `http::consumers`).

use std::sync::Arc;

use axum::http::Method;
use serde::{Deserialize, Serialize};

use crate::config::{ByteRate, Protected, Rate};
use crate::store::Scope;

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publish events.
    Publish,
    /// Read events, stats and consumers; create, read and ack consumers.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name as in the file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Publish => "publish",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    /// True when this role may make a request that needs `need`.
    pub fn permits(self, need: Need) -> bool {
        matches!(
            (self, need),
            (_, Need::Nothing)
                | (Role::Admin, _)
                | (Role::Publish, Need::Publish)
                | (Role::Read, Need::Read)
        )
    }
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No token (the health probes, the dashboard's page; metrics and docs
    /// unless protected).
    Nothing,
    /// The `publish` role.
    Publish,
    /// The `read` role.
    Read,
    /// The `admin` role.
    Admin,
}

impl Need {
    /// The role named in a refusal.
    pub fn role(self) -> Option<Role> {
        match self {
            Need::Nothing => None,
            Need::Publish => Some(Role::Publish),
            Need::Read => Some(Role::Read),
            Need::Admin => Some(Role::Admin),
        }
    }
}

/// The dashboard's page and its files (`/`, `/ui/...`, `/favicon.ico`,
/// served by `http::ui`): they hold no data, so they need no token; the
/// page reads the data endpoints with the operator's token.
pub fn is_dashboard_page(path: &str) -> bool {
    path == "/" || path == "/ui" || path.starts_with("/ui/") || path == "/favicon.ico"
}

/// What the request `method path` needs. Finer rules that depend on the
/// body (moving a consumer's cursor back is admin work) are the handlers'.
pub fn need(method: &Method, path: &str, protected: Protected) -> Need {
    if path == "/health"
        || path.starts_with("/health/")
        || method == Method::OPTIONS
        || is_dashboard_page(path)
    {
        return Need::Nothing;
    }
    if path == "/metrics" {
        return if protected.metrics {
            Need::Read
        } else {
            Need::Nothing
        };
    }
    if path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/") {
        return if protected.docs {
            Need::Read
        } else {
            Need::Nothing
        };
    }
    if path == "/alerts" || path == "/admin" || path.starts_with("/admin/") {
        return Need::Admin;
    }
    if (path == "/events" || path == "/events/batch") && method == Method::POST {
        return Need::Publish;
    }
    if path.starts_with("/consumers/") && method == Method::DELETE {
        return Need::Admin;
    }
    // Registering a schema version or stopping validation changes what
    // every publisher may send: admin work. Reading schemas is a read.
    if (path == "/schemas" || path.starts_with("/schemas/"))
        && (method == Method::PUT || method == Method::DELETE || method == Method::POST)
    {
        return Need::Admin;
    }
    // Reads, consumers, and every other path: an unknown route asks for a
    // token too, so the answer to an anonymous caller says nothing of what
    // exists.
    Need::Read
}

/// Who a request runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`anonymous` with access control off).
    pub name: String,
    /// The token's id; none for the anonymous and bootstrap principals.
    pub id: Option<String>,
    /// Its role.
    pub role: Role,
    /// What it may publish and see.
    pub scope: Scope,
    /// Its own rate, if it has one.
    pub rate: Option<Rate>,
    /// Its own read byte rate, if it has one.
    pub read_rate: Option<ByteRate>,
}

impl Principal {
    /// The principal of every request when no token is required: it may
    /// do everything.
    pub fn anonymous() -> Arc<Principal> {
        Arc::new(Principal {
            name: "anonymous".into(),
            id: None,
            role: Role::Admin,
            scope: Scope::default(),
            rate: None,
            read_rate: None,
        })
    }

    /// True when the principal may make a request that needs `need`.
    pub fn may(&self, need: Need) -> bool {
        self.role.permits(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_gets_its_routes_and_admin_gets_all() {
        let p = Protected::default();
        let cases = [
            (Method::POST, "/events", Need::Publish),
            (Method::POST, "/events/batch", Need::Publish),
            (Method::GET, "/events", Need::Read),
            (Method::GET, "/events/7", Need::Read),
            (Method::GET, "/events/stream", Need::Read),
            (Method::GET, "/stats", Need::Read),
            (Method::PUT, "/consumers/w", Need::Read),
            (Method::POST, "/consumers/w/ack", Need::Read),
            (Method::DELETE, "/consumers/w", Need::Admin),
            (Method::PUT, "/schemas/t.x", Need::Admin),
            (Method::DELETE, "/schemas/t.x", Need::Admin),
            (Method::GET, "/schemas", Need::Read),
            (Method::GET, "/schemas/t.x/versions/1", Need::Read),
            (Method::GET, "/alerts", Need::Admin),
            (Method::POST, "/admin/backups", Need::Admin),
            (Method::GET, "/admin/tokens", Need::Admin),
            (Method::GET, "/health/ready", Need::Nothing),
            (Method::GET, "/metrics", Need::Nothing),
            (Method::GET, "/docs/", Need::Nothing),
            (Method::GET, "/", Need::Nothing),
            (Method::GET, "/ui/app.js", Need::Nothing),
            (Method::GET, "/favicon.ico", Need::Nothing),
            (Method::GET, "/uix", Need::Read),
            (Method::GET, "/nothing-here", Need::Read),
        ];
        for (m, path, want) in cases {
            assert_eq!(need(&m, path, p), want, "{m} {path}");
        }
        let all = Protected {
            metrics: true,
            docs: true,
        };
        assert_eq!(need(&Method::GET, "/metrics", all), Need::Read);
        assert_eq!(need(&Method::GET, "/openapi.json", all), Need::Read);
        for need in [Need::Publish, Need::Read, Need::Admin, Need::Nothing] {
            assert!(Role::Admin.permits(need));
        }
        assert!(!Role::Publish.permits(Need::Read));
        assert!(!Role::Read.permits(Need::Publish));
        assert!(!Role::Read.permits(Need::Admin));
    }
}
