//! The HTTP server that carries [`crate::control`]: the control endpoint on a Unix socket (grants
//! change what guests keep, so only local users with access to the socket may take them) and
//! `/metrics` on TCP for scrapers. Built on `tiny_http`; everything else is in `control.rs`, so
//! that another server can carry the same routing functions.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::control::{Control, Reply, Request};

/// Largest request body accepted, in bytes; larger requests get `413`.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// Which requests a listener passes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the control socket).
    All,
    /// `GET /metrics` only (the TCP listener).
    MetricsOnly,
}

/// A running server; dropping it stops its thread and removes its socket file.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket_path: Option<PathBuf>,
    /// The bound TCP address, for TCP servers.
    pub local_addr: Option<SocketAddr>,
}

impl HttpServer {
    /// Serves `control` on a Unix socket (a stale socket file is replaced; a live one is an
    /// error).
    pub fn unix(path: &Path, control: Arc<Control>) -> Result<HttpServer, String> {
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!("{} is in use by a running server", path.display()));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
        }
        let server = tiny_http::Server::http_unix(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        Ok(Self::spawn(
            server,
            control,
            Scope::All,
            Some(path.to_path_buf()),
            None,
        ))
    }

    /// Serves `/metrics` on a TCP address (port 0 picks a free one).
    pub fn tcp(addr: SocketAddr, control: Arc<Control>) -> Result<HttpServer, String> {
        let server =
            tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = server.server_addr().to_ip();
        Ok(Self::spawn(
            server,
            control,
            Scope::MetricsOnly,
            None,
            local,
        ))
    }

    fn spawn(
        server: tiny_http::Server,
        control: Arc<Control>,
        scope: Scope,
        socket_path: Option<PathBuf>,
        local_addr: Option<SocketAddr>,
    ) -> HttpServer {
        let server = Arc::new(server);
        let srv = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in srv.incoming_requests() {
                    serve_one(request, &control, scope);
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
}

fn serve_one(mut request: tiny_http::Request, control: &Control, scope: Scope) {
    let method = request.method().as_str().to_ascii_uppercase();
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_end(&mut body);
    let reply = match read {
        Err(e) => Reply::error(400, format!("cannot read request body: {e}")),
        Ok(_) if body.len() as u64 > MAX_BODY_BYTES => Reply::error(413, "request body too large"),
        Ok(_) if scope == Scope::MetricsOnly && path != "/metrics" => {
            Reply::error(404, "only /metrics is served here")
        }
        Ok(_) => control.handle(&Request {
            method: &method,
            path,
            body: &body,
        }),
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
