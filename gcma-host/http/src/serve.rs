//! The server core: one single-threaded `tokio` runtime per server, an accept loop with a
//! connection cap, `hyper` HTTP/1 connections with head limits and deadlines, handlers on a
//! small blocking pool, and a bounded graceful stop.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use crate::{Handler, HttpError, Limits, Reply, Request, HANDLER_THREADS};

/// A bound listener, before it is handed to the runtime.
pub(crate) enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// A connected stream of either kind.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn try_read_now(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn try_write_now(&self, buf: &[u8]) -> std::io::Result<usize>;
}

impl Stream for tokio::net::TcpStream {
    fn try_read_now(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.try_read(buf)
    }
    fn try_write_now(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.try_write(buf)
    }
}

impl Stream for tokio::net::UnixStream {
    fn try_read_now(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.try_read(buf)
    }
    fn try_write_now(&self, buf: &[u8]) -> std::io::Result<usize> {
        self.try_write(buf)
    }
}

/// What every connection task shares.
struct Shared {
    name: String,
    limits: Limits,
    handler: Handler,
}

/// A started server thread and the way to stop it.
pub(crate) struct Running {
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    /// Signals the accept loop and waits for the thread, which itself waits at most
    /// `shutdown_grace` for requests in flight.
    pub(crate) fn stop(self) {
        // The receiver is gone only if the thread already ended.
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            log::error!("http server thread panicked");
        }
    }
}

/// Builds the runtime and starts the server thread.
pub(crate) fn spawn(
    name: &str,
    listener: StdListener,
    limits: Limits,
    handler: Handler,
) -> Result<Running, HttpError> {
    match &listener {
        StdListener::Tcp(l) => l.set_nonblocking(true),
        StdListener::Unix(l) => l.set_nonblocking(true),
    }
    .map_err(HttpError::Thread)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(HANDLER_THREADS)
        .thread_name(format!("{name}-handler"))
        // Handler threads start from the server thread and inherit its filter; this only lets
        // a violation name the kind.
        .on_thread_start(|| gcma_seccomp::mark(gcma_seccomp::ThreadKind::Http))
        .build()
        .map_err(HttpError::Thread)?;
    let shared = Arc::new(Shared {
        name: name.to_string(),
        limits,
        handler,
    });
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            gcma_seccomp::enter_or_exit(gcma_seccomp::ThreadKind::Http);
            rt.block_on(run(listener, shared, stopped));
            // Handlers still running (stuck on a lock, say) are left to finish on their own:
            // the caller's shutdown does not wait for them.
            rt.shutdown_timeout(Duration::ZERO);
        })
        .map_err(HttpError::Thread)?;
    Ok(Running { stop, thread })
}

async fn run(listener: StdListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let listener = match listener {
        StdListener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(Listener::Tcp),
        StdListener::Unix(l) => tokio::net::UnixListener::from_std(l).map(Listener::Unix),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            log::error!("{}: cannot register the listener: {e}", shared.name);
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            _ = &mut stopped => break,
            a = accept(&listener) => a,
        };
        match accepted {
            Ok(Accepted::Tcp(s)) => admit(s, &permits, &graceful, &shared),
            Ok(Accepted::Unix(s)) => admit(s, &permits, &graceful, &shared),
            Err(e) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                log::warn!("{}: accept failed: {e}", shared.name);
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(shared.limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        log::debug!(
            "{}: dropping connections still open after the shutdown grace",
            shared.name
        );
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(l: &Listener) -> std::io::Result<Accepted> {
    match l {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Serves `io` if a connection slot is free, else refuses it at once.
fn admit<S: Stream>(
    io: S,
    permits: &Arc<Semaphore>,
    graceful: &GracefulShutdown,
    shared: &Arc<Shared>,
) {
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        refuse(io, shared);
        return;
    };
    let shared = shared.clone();
    // When the server began waiting for the connection's current request: its accept, then the
    // end of each response. The head timeout (hyper's) and the body deadline (ours) both count
    // from it, so a whole request gets `request_timeout`.
    let waiting_since = Arc::new(Mutex::new(Instant::now()));
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let waiting_since = waiting_since.clone();
        async move { Ok::<_, Infallible>(respond(req, &shared, &waiting_since).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.request_timeout)
        .max_header_size(shared.limits.max_header_bytes)
        .max_buf_size(shared.limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let conn = graceful.watch(conn);
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("{}: connection ended: {e}", shared.name);
        }
        drop(permit);
    });
}

/// Answers a connection over the cap with `503` without waiting for anything: whatever it sent
/// so far is discarded, the answer goes into the (empty) send buffer, and the socket is closed.
/// A client whose request arrives later may see a reset instead; either way it is not served and
/// costs the server nothing.
fn refuse<S: Stream>(io: S, shared: &Shared) {
    let body = serde_json::json!({
        "fault_message": format!(
            "too many connections (at most {} at once); try again later",
            shared.limits.max_connections
        )
    })
    .to_string();
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match io.try_read_now(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    if let Err(e) = io.try_write_now(msg.as_bytes()) {
        log::debug!(
            "{}: could not answer a refused connection: {e}",
            shared.name
        );
    }
    log::debug!(
        "{}: refused a connection: {} already open",
        shared.name,
        shared.limits.max_connections
    );
}

async fn respond(
    req: hyper::Request<Incoming>,
    shared: &Shared,
    waiting_since: &Mutex<Instant>,
) -> Response<Full<Bytes>> {
    let deadline = *lock(waiting_since) + shared.limits.request_timeout;
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let max = shared.limits.max_body_bytes;
    let too_large = || Reply::error(413, format!("request body too large (at most {max} bytes)"));
    let reply = if body.size_hint().lower() > max as u64 {
        // The declared length is already too much: answer without reading any of it.
        Err(too_large())
    } else {
        match tokio::time::timeout_at(deadline, Limited::new(body, max).collect()).await {
            Err(_) => Err(Reply::error(
                408,
                format!(
                    "request not received within {} ms",
                    shared.limits.request_timeout.as_millis()
                ),
            )),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => Err(Reply::error(
                400,
                format!("cannot read the request body: {e}"),
            )),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    };
    let (reply, close) = match reply {
        // The rest of the body is unread: the connection cannot carry another request.
        Err(r) => (r, true),
        Ok(body) => {
            let request = Request {
                method: method.clone(),
                path: path.clone(),
                query: parts.uri.query().map(str::to_string),
                content_type: parts
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                body: body.to_vec(),
            };
            let handler = shared.handler.clone();
            match tokio::task::spawn_blocking(move || handler(&request)).await {
                Ok(r) => (r, false),
                Err(e) => {
                    log::error!("{}: handler for {method} {path} failed: {e}", shared.name);
                    (
                        Reply::error(500, "internal error: the request handler failed"),
                        false,
                    )
                }
            }
        }
    };
    log::debug!("{}: {method} {path} -> {}", shared.name, reply.status);
    *lock(waiting_since) = Instant::now();
    to_response(reply, close, &shared.name)
}

fn lock(m: &Mutex<Instant>) -> std::sync::MutexGuard<'_, Instant> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_response(reply: Reply, close: bool, name: &str) -> Response<Full<Bytes>> {
    let has_body = !reply.body.is_empty();
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if has_body {
        match HeaderValue::from_str(&reply.content_type) {
            Ok(v) => {
                headers.insert(CONTENT_TYPE, v);
            }
            Err(_) => log::warn!("{name}: invalid content type {:?}", reply.content_type),
        }
    }
    for (k, v) in reply.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            (Ok(k), Ok(v)) => {
                headers.append(k, v);
            }
            _ => log::warn!("{name}: dropping invalid header {k}: {v:?}"),
        }
    }
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
