//! Answering requests: [`handle`] maps a method and URL to a [`Reply`]
//! (pure apart from reading the state), and [`AdminServer`] runs it on one
//! thread of its own behind tiny_http.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;

use super::build::{conntrack_view, delete_flows, services_view, status_view};
use super::query::query_pairs;
use super::{AdminState, ConntrackQuery};
use crate::metrics;

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

pub(super) const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: TEXT,
            body: body.into(),
        }
    }

    fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_string_pretty(value) {
            Ok(mut body) => {
                body.push('\n');
                Self {
                    status: 200,
                    content_type: JSON,
                    body,
                }
            }
            Err(e) => Self::error(500, &format!("encoding the answer: {e}")),
        }
    }

    fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string() + "\n";
        Self {
            status,
            content_type: JSON,
            body,
        }
    }
}

/// Which paths a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything: metrics, health, the JSON views and
    /// `DELETE /api/conntrack` (`--admin`).
    Admin,
    /// `/metrics`, `/healthz` and `/readyz` only (`--metrics-address`).
    Metrics,
}

/// Answers one request on the admin address, in OpenMetrics.
pub fn handle(state: &AdminState, method: &str, url: &str) -> Reply {
    handle_request(state, method, url, None, Scope::Admin)
}

/// Answers one request: `accept` is the request's `Accept` header (the
/// metrics format), `scope` what the listener serves. Pure apart from
/// reading `state`, so it is what the unit tests exercise.
pub fn handle_request(
    state: &AdminState,
    method: &str,
    url: &str,
    accept: Option<&str>,
    scope: Scope,
) -> Reply {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    if method == "DELETE" && path == "/api/conntrack" && scope == Scope::Admin {
        return match ConntrackQuery::parse_delete(query) {
            Ok(q) => {
                let deleted = delete_flows(state, &q);
                tracing::info!(
                    query,
                    deleted = deleted.deleted,
                    "deleted flows (DELETE /api/conntrack)"
                );
                Reply::json(&deleted)
            }
            Err(e) => Reply::error(400, &e),
        };
    }
    if method != "GET" && method != "HEAD" {
        return Reply::text(
            405,
            match scope {
                Scope::Admin => "only GET and HEAD, and DELETE on /api/conntrack\n",
                Scope::Metrics => "only GET and HEAD\n",
            },
        );
    }
    let no_params = |view: fn(&AdminState) -> Reply| match query_pairs(query) {
        Ok(p) if p.is_empty() => view(state),
        Ok(p) => Reply::error(
            400,
            &format!("{path} takes no parameters, got {:?}", p[0].0),
        ),
        Err(e) => Reply::error(400, &e),
    };
    if scope == Scope::Metrics && !matches!(path, "/metrics" | "/healthz" | "/readyz" | "/") {
        return Reply::text(
            404,
            format!("{path}: this address serves /metrics, /healthz and /readyz only\n"),
        );
    }
    match path {
        "/metrics" => {
            let format = metrics::Format::negotiate(accept);
            Reply {
                status: 200,
                content_type: format.content_type(),
                body: metrics::encode_as(state.snapshot(), format),
            }
        }
        "/healthz" => match state.health() {
            Ok(()) => Reply::text(200, "ok\n"),
            Err(why) => Reply::text(503, format!("unhealthy: {why}\n")),
        },
        "/readyz" if state.is_ready() => Reply::text(200, "ready\n"),
        "/readyz" => Reply::text(503, "not ready\n"),
        "/api/status" => no_params(|s| Reply::json(&status_view(s))),
        "/api/services" => no_params(|s| Reply::json(&services_view(s))),
        "/api/conntrack" => match ConntrackQuery::parse(query) {
            Ok(q) => Reply::json(&conntrack_view(state, &q, state.conntrack_now())),
            Err(e) => Reply::error(400, &e),
        },
        "/" if scope == Scope::Metrics => {
            Reply::text(200, "cipgw metrics: /metrics /healthz /readyz\n")
        }
        "/" => Reply::text(
            200,
            "cipgw admin: /metrics /healthz /readyz /api/status /api/services /api/conntrack\n",
        ),
        _ => Reply::text(404, format!("no such path: {path}\n")),
    }
}

/// The admin HTTP server: one thread answering requests until dropped.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin endpoint: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("admin endpoint on {addr}: {message}")]
    Start { addr: SocketAddr, message: String },
}

impl AdminError {
    /// Whether another socket holds the address (a gateway that is
    /// handing over lets go of it a moment later).
    pub fn is_address_in_use(&self) -> bool {
        matches!(self, AdminError::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse)
    }
}

impl AdminServer {
    /// Listens on `addr` (port 0 picks a free one) and answers requests
    /// from `state` on a thread of its own.
    pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> Result<AdminServer, AdminError> {
        Self::start_scoped(addr, state, Scope::Admin)
    }

    /// [`AdminServer::start`] for `/metrics`, `/healthz` and `/readyz`
    /// only (`--metrics-address`).
    pub fn start_metrics(
        addr: SocketAddr,
        state: Arc<AdminState>,
    ) -> Result<AdminServer, AdminError> {
        Self::start_scoped(addr, state, Scope::Metrics)
    }

    fn start_scoped(
        addr: SocketAddr,
        state: Arc<AdminState>,
        scope: Scope,
    ) -> Result<AdminServer, AdminError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(|e| AdminError::Start {
                addr,
                message: e.to_string(),
            })?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name(match scope {
                Scope::Admin => "cipgw-admin".into(),
                Scope::Metrics => "cipgw-metrics".into(),
            })
            .spawn(move || serve(&serving, &state, scope))
            .map_err(|e| AdminError::Start {
                addr,
                message: format!("spawning its thread: {e}"),
            })?;
        match scope {
            Scope::Admin => tracing::info!(addr = %bound, "admin endpoint listening"),
            Scope::Metrics => tracing::info!(
                addr = %bound,
                "metrics endpoint listening (/metrics, /healthz, /readyz)"
            ),
        }
        Ok(AdminServer {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        // Ends `incoming_requests` after the requests already queued.
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, state: &AdminState, scope: Scope) {
    for request in server.incoming_requests() {
        let accept = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Accept"))
            .map(|h| h.value.as_str().to_owned());
        let reply = handle_request(
            state,
            request.method().as_str(),
            request.url(),
            accept.as_deref(),
            scope,
        );
        tracing::trace!(url = request.url(), status = reply.status, "admin request");
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type)
            .unwrap_or_else(|()| unreachable!("static header is valid"));
        let response = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.status)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "admin client went away");
        }
    }
}
