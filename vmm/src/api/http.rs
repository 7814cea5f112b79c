//! A small blocking HTTP server on a thread, shared by the control API (Unix socket) and the
//! Prometheus endpoint (TCP). Built on `tiny_http`, which handles HTTP/1.1 framing and both kinds of
//! listener; this module only adds a handler signature, a body size limit and a clean shutdown.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Largest request body accepted, in bytes; larger requests get `413`.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// One request as handlers see it.
#[derive(Debug)]
pub struct Request<'a> {
    /// Method, upper case (`GET`, `PUT`, ...).
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Body bytes (at most [`MAX_BODY_BYTES`]).
    pub body: &'a [u8],
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type` header value.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// A JSON reply.
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    /// A JSON error reply: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// `204 No Content`.
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: "application/json",
            body: Vec::new(),
        }
    }
}

/// The function that answers requests. It runs on the server thread.
pub type Handler = Arc<dyn Fn(&Request<'_>) -> Reply + Send + Sync>;

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listener could not be created.
    #[error("cannot listen on {what}: {reason}")]
    Listen {
        /// The address or path.
        what: String,
        /// Why.
        reason: String,
    },
    /// A live server already answers on this Unix socket path.
    #[error("{0} is in use by a running server")]
    SocketInUse(PathBuf),
}

/// A running server; dropping it stops the thread (and removes its Unix socket file).
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    socket_path: Option<PathBuf>,
    local_addr: Option<SocketAddr>,
}

impl HttpServer {
    /// Serves on a TCP address (port 0 picks a free port; see [`Self::local_addr`]).
    pub fn tcp(addr: SocketAddr, name: &str, handler: Handler) -> Result<HttpServer, HttpError> {
        let server = tiny_http::Server::http(addr).map_err(|e| HttpError::Listen {
            what: addr.to_string(),
            reason: e.to_string(),
        })?;
        let local_addr = server.server_addr().to_ip();
        Ok(Self::spawn(server, name, handler, None, local_addr))
    }

    /// Serves on a Unix socket. A stale socket file (nobody listening) is replaced; a live one is
    /// an error.
    pub fn unix(path: &Path, name: &str, handler: Handler) -> Result<HttpServer, HttpError> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(HttpError::SocketInUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(|e| HttpError::Listen {
                what: path.display().to_string(),
                reason: format!("cannot remove stale socket: {e}"),
            })?;
        }
        let server = tiny_http::Server::http_unix(path).map_err(|e| HttpError::Listen {
            what: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self::spawn(
            server,
            name,
            handler,
            Some(path.to_path_buf()),
            None,
        ))
    }

    fn spawn(
        server: tiny_http::Server,
        name: &str,
        handler: Handler,
        socket_path: Option<PathBuf>,
        local_addr: Option<SocketAddr>,
    ) -> HttpServer {
        let server = Arc::new(server);
        let srv = server.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                for request in srv.incoming_requests() {
                    serve_one(request, &handler);
                }
            })
            .ok();
        HttpServer {
            server,
            thread,
            socket_path,
            local_addr,
        }
    }

    /// The bound TCP address (for TCP servers).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

fn serve_one(mut request: tiny_http::Request, handler: &Handler) {
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    let reply = match request.body_length() {
        Some(n) if n as u64 > MAX_BODY_BYTES => Reply::error(413, "request body too large"),
        _ => {
            let mut body = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_BODY_BYTES + 1)
                .read_to_end(&mut body);
            match read {
                Err(e) => Reply::error(400, format!("cannot read request body: {e}")),
                Ok(_) if body.len() as u64 > MAX_BODY_BYTES => {
                    Reply::error(413, "request body too large")
                }
                Ok(_) => handler(&Request {
                    method: &method,
                    path,
                    body: &body,
                }),
            }
        }
    };
    log::debug!("{method} {path} -> {}", reply.status);
    let mut response = tiny_http::Response::from_data(reply.body).with_status_code(reply.status);
    if let Ok(h) = tiny_http::Header::from_bytes("Content-Type", reply.content_type) {
        response = response.with_header(h);
    }
    if let Err(e) = request.respond(response) {
        log::debug!("client went away before the reply to {method} {path}: {e}");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}
