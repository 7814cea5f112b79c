//! The daemon's HTTP listeners: the control endpoint ([`crate::control`]) on a Unix socket (grants
//! change what guests keep, so only local users with access to the socket may take them) and
//! `/metrics` on TCP for scrapers. Both are `gcma-http` servers, the one the VMM's API uses, with
//! its limits (head, body, deadline, connection cap) and its stale-socket handling.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use gcma_http::{HttpError, HttpServer, Reply};

use crate::control::Control;

/// Serves every endpoint of `control` on a Unix socket of mode `0600` (a stale socket file is
/// replaced; a live one, or anything that is not a socket, is an error).
pub fn unix(path: &Path, control: Arc<Control>) -> Result<HttpServer, HttpError> {
    HttpServer::unix(path, "hostd-api", Arc::new(move |req| control.handle(req)))
}

/// Serves `GET /metrics` only on a TCP address (port 0 picks a free one): scrapers reach it
/// from the network, so nothing that changes state is served there.
pub fn tcp(addr: SocketAddr, control: Arc<Control>) -> Result<HttpServer, HttpError> {
    HttpServer::tcp(
        addr,
        "hostd-metrics",
        Arc::new(move |req| {
            if req.path.trim_end_matches('/') == "/metrics" {
                control.handle(req)
            } else {
                Reply::error(404, "only /metrics is served here")
            }
        }),
    )
}
