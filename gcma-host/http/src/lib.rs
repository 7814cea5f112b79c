//! `gcma-http`: the HTTP/1.1 server that the VMM's control API, its `/metrics` endpoint and
//! `gcma-hostd` share.
//!
//! A control plane is reachable by anything that can open its socket, so the server assumes
//! clients are careless or hostile and bounds what each one can cost:
//!
//! | limit | default | what happens past it |
//! |---|---|---|
//! | request head (request line + headers) | 8 KiB | `431`, connection closed |
//! | request body | 64 KiB | `413`, connection closed |
//! | time to receive a whole request, counted from when the server starts waiting for it (the connection's accept, or the previous response) | 5 s | head incomplete: connection closed; body incomplete: `408`, connection closed |
//! | connections served at once, per listener | 64 | the next one is answered `503` and closed at once |
//!
//! Everything runs on one thread per server (a single-threaded `tokio` runtime), plus at most
//! [`HANDLER_THREADS`] threads that run handlers, so a flood of connections costs sockets and
//! small tasks, never threads, and the caller's own threads (a VMM's vCPU and device threads)
//! never wait on the server. Stopping the server ([`HttpServer::stop`] or drop) stops accepting,
//! lets requests in flight finish for at most [`Limits::shutdown_grace`], then drops whatever is
//! left: a slow client cannot hold up shutdown.
//!
//! Unix sockets are created with mode `0600` (configurable) without a window where another user
//! could connect: the socket is bound inside a private directory, given its mode, then renamed into
//! place. Whatever sits at the path beforehand is left alone unless it is a stale socket (nobody
//! accepts on it): a live socket is "already in use", anything else is an error naming it.
//!
//! Handlers are plain functions from a [`Request`] (method, path, query, body) to a [`Reply`].
//! Errors the server answers itself carry the body `{"fault_message": "..."}`, the shape the
//! control API uses for every error (Firecracker's); [`Reply::error`] builds the same shape.
//!
//! **Why `hyper` 1.x on `tokio`, and not `axum`:** the callers route requests themselves (the
//! VMM's route table is also what its OpenAPI document is checked against), so a router and
//! `tower` middleware would be unused weight; `hyper`'s HTTP/1 connection builder has exactly the
//! knobs a control plane needs (maximum head size answered with `431`, a head read timeout, graceful
//! shutdown per connection through `hyper-util`), and the body limit, the whole-request deadline
//! and the connection cap are a few lines on top. Both are the most used Rust HTTP and async
//! stacks and are actively maintained. `tiny_http`, used before, had no head limit, no timeouts and
//! a thread per connection.
//!
//! ```no_run
//! use std::sync::Arc;
//! use gcma_http::{HttpServer, Listen, Limits, Reply};
//!
//! let handler = Arc::new(|req: &gcma_http::Request| match (req.method.as_str(), req.path.as_str()) {
//!     ("GET", "/ping") => Reply::json(200, &serde_json::json!({"pong": true})),
//!     _ => Reply::error(404, format!("no such endpoint: {}", req.path)),
//! });
//! let server = HttpServer::start(
//!     "api",
//!     &Listen::Unix { path: "/run/vmm.sock".into(), mode: 0o600 },
//!     &Limits::default(),
//!     handler,
//! )?;
//! // ... serve until the VM stops ...
//! server.stop();
//! # Ok::<(), gcma_http::HttpError>(())
//! ```

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod serve;
mod unix;

pub use unix::DEFAULT_SOCKET_MODE;

/// Threads that run handlers, per server. Handlers may block briefly (a device lock held by a
/// vCPU thread); running them off the server's thread keeps other connections moving meanwhile.
pub const HANDLER_THREADS: usize = 2;

/// The smallest head limit accepted: a request line and a few headers must fit.
pub const MIN_HEADER_BYTES: usize = 1024;

/// What one server accepts from its clients. See the crate documentation for the behaviour at
/// each limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line and headers) in bytes.
    pub max_header_bytes: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Time allowed to receive a whole request, from when the server starts waiting for it.
    pub request_timeout: Duration,
    /// Connections served at once by one listener.
    pub max_connections: usize,
    /// How long a stopping server lets requests in flight finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 8 * 1024,
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(5),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

impl Limits {
    /// Checks that the limits can be served: a head of at least [`MIN_HEADER_BYTES`], a non-zero
    /// timeout and at least one connection.
    pub fn validate(&self) -> Result<(), HttpError> {
        let bad = |m: String| Err(HttpError::InvalidLimits(m));
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return bad(format!(
                "max_header_bytes {} is below the minimum of {MIN_HEADER_BYTES}",
                self.max_header_bytes
            ));
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be non-zero".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        Ok(())
    }
}

/// One request as handlers see it: the body has been received in full (within the limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method as sent (`GET`, `PUT`, ...; methods are case-sensitive).
    pub method: String,
    /// Path, without the query string.
    pub path: String,
    /// Query string, if any, without the `?`.
    pub query: Option<String>,
    /// The `Content-Type` header, if present and readable.
    pub content_type: Option<String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code (an invalid one is answered as `500`).
    pub status: u16,
    /// `Content-Type` value; not sent when the body is empty.
    pub content_type: Cow<'static, str>,
    /// Further headers (for example `Allow` on a `405`); invalid ones are dropped and logged.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: Cow::Borrowed("application/json"),
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }

    /// A JSON error reply in the control API's shape: `{"fault_message": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({ "fault_message": message.into() }),
        )
    }

    /// `204 No Content`.
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: Cow::Borrowed("application/json"),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A reply with a body of any type.
    pub fn bytes(status: u16, content_type: impl Into<Cow<'static, str>>, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type: content_type.into(),
            headers: Vec::new(),
            body,
        }
    }

    /// The same reply with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// The function that answers requests. It runs on one of the server's [`HANDLER_THREADS`].
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (port 0 picks a free port; see [`HttpServer::local_addr`]).
    Tcp(SocketAddr),
    /// A Unix socket at `path`, created with permission bits `mode` (for example `0o600`).
    Unix {
        /// Socket path.
        path: PathBuf,
        /// Permission bits of the socket file (only `0o777` bits).
        mode: u32,
    },
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The limits cannot be served.
    #[error("invalid server limits: {0}")]
    InvalidLimits(String),
    /// The socket mode has bits outside `0o777`.
    #[error("invalid socket mode {0:#o}: only permission bits (0o777) may be set")]
    InvalidMode(u32),
    /// A TCP listener could not be created.
    #[error("cannot listen on {addr}: {source}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A live server already accepts connections on this Unix socket.
    #[error("{}: already in use by a running server", .0.display())]
    SocketInUse(PathBuf),
    /// Something that is not a socket sits at the socket path; it is left alone.
    #[error("{} exists and is a {kind}, not a socket; refusing to replace it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
        /// What it is ("regular file", "directory", ...).
        kind: &'static str,
    },
    /// A Unix socket could not be created, inspected or put in place.
    #[error("cannot {what} {}: {source}", path.display())]
    Unix {
        /// What was being done ("create socket", "remove stale socket", ...).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's thread or runtime could not be started.
    #[error("cannot start the server thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running server. [`HttpServer::stop`] or dropping it stops it and removes its Unix socket.
pub struct HttpServer {
    name: String,
    running: Option<serve::Running>,
    local_addr: Option<SocketAddr>,
    socket: Option<unix::BoundSocket>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("name", &self.name)
            .field("local_addr", &self.local_addr)
            .field("socket", &self.socket_path())
            .finish()
    }
}

impl HttpServer {
    /// Starts serving `handler` on `listen` under `limits`; `name` names the server's thread and
    /// log lines. Returns once the listener exists, so clients may connect at once.
    pub fn start(
        name: &str,
        listen: &Listen,
        limits: &Limits,
        handler: Handler,
    ) -> Result<HttpServer, HttpError> {
        limits.validate()?;
        let (listener, local_addr, socket) = match listen {
            Listen::Tcp(addr) => {
                let l = std::net::TcpListener::bind(addr).map_err(|source| HttpError::Tcp {
                    addr: *addr,
                    source,
                })?;
                let local = l.local_addr().map_err(|source| HttpError::Tcp {
                    addr: *addr,
                    source,
                })?;
                (serve::StdListener::Tcp(l), Some(local), None)
            }
            Listen::Unix { path, mode } => {
                let (l, bound) = unix::bind(path, *mode)?;
                (serve::StdListener::Unix(l), None, Some(bound))
            }
        };
        let running = serve::spawn(name, listener, *limits, handler)?;
        log::debug!("{name}: serving on {listen}");
        Ok(HttpServer {
            name: name.to_string(),
            running: Some(running),
            local_addr,
            socket,
        })
    }

    /// Serves on a TCP address with the default [`Limits`].
    pub fn tcp(addr: SocketAddr, name: &str, handler: Handler) -> Result<HttpServer, HttpError> {
        Self::start(name, &Listen::Tcp(addr), &Limits::default(), handler)
    }

    /// Serves on a Unix socket with mode [`DEFAULT_SOCKET_MODE`] and the default [`Limits`].
    pub fn unix(path: &Path, name: &str, handler: Handler) -> Result<HttpServer, HttpError> {
        let listen = Listen::Unix {
            path: path.to_path_buf(),
            mode: DEFAULT_SOCKET_MODE,
        };
        Self::start(name, &listen, &Limits::default(), handler)
    }

    /// The bound TCP address (for TCP servers).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The socket path (for Unix-socket servers).
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_ref().map(|s| s.path())
    }

    /// Stops the server: no new connections, requests in flight get [`Limits::shutdown_grace`]
    /// to finish, then the rest are dropped. Removes the Unix socket if it is still ours.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
            log::debug!("{}: stopped", self.name);
        }
        // Dropping the socket removes its file (if it is still the one bound here).
        self.socket = None;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
