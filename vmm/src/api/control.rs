//! The control API: HTTP/JSON over a Unix socket, and the Prometheus `/metrics` endpoint over TCP.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | `GET` | `/vm` | — | `200` VM description |
//! | `PUT` | `/balloon` | `{"target_mib": N}` | `204`; the balloon asks the guest for N MiB |
//! | `GET` | `/balloon/statistics` | — | `200` target, actual and the guest's last statistics |
//! | `GET` | `/gcma` | — | `200` grants of this VM and pool usage |
//! | `PUT` | `/actions` | `{"action": "shutdown"}` | `204`; the VM stops |
//!
//! Bad input gets a `4xx` with `{"error": "..."}` that names the problem; the VM keeps running.
//! The router is independent of how a VM is built: it talks to a [`VmControl`].

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::api::http::{Handler, Reply, Request};

/// Why a control operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request is well-formed but its values are not acceptable (answered with `400`).
    #[error("{0}")]
    BadRequest(String),
    /// The VM has no such device or feature (answered with `409`).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed on the host (answered with `500`).
    #[error("{0}")]
    Internal(String),
}

/// What the control API can ask of a running microVM.
pub trait VmControl: Send + Sync {
    /// A JSON description of the VM (id, state, memory, vCPUs, devices, exit counts).
    fn vm_info(&self) -> Value;
    /// Sets the balloon target in MiB.
    fn set_balloon_target(&self, target_mib: u64) -> Result<(), ControlError>;
    /// Balloon target, actual size and the guest's last statistics.
    fn balloon_statistics(&self) -> Result<Value, ControlError>;
    /// Contiguous grants of this VM and pool usage.
    fn gcma_info(&self) -> Result<Value, ControlError>;
    /// Asks the VM to stop.
    fn shutdown(&self) -> Result<(), ControlError>;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonUpdate {
    target_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionRequest {
    action: Action,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Shutdown,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Reply> {
    if body.is_empty() {
        return Err(Reply::error(400, "request body is empty; expected JSON"));
    }
    serde_json::from_slice(body).map_err(|e| Reply::error(400, format!("invalid JSON body: {e}")))
}

fn answer(result: Result<Reply, ControlError>) -> Reply {
    match result {
        Ok(r) => r,
        Err(ControlError::BadRequest(m)) => Reply::error(400, m),
        Err(ControlError::Unavailable(m)) => Reply::error(409, m),
        Err(ControlError::Internal(m)) => Reply::error(500, m),
    }
}

/// Answers one control API request.
pub fn route(ctl: &dyn VmControl, req: &Request<'_>) -> Reply {
    let known = [
        "/vm",
        "/balloon",
        "/balloon/statistics",
        "/gcma",
        "/actions",
    ];
    match (req.method, req.path) {
        ("GET", "/vm") => Reply::json(200, &ctl.vm_info()),
        ("PUT", "/balloon") => match parse::<BalloonUpdate>(req.body) {
            Ok(u) => answer(
                ctl.set_balloon_target(u.target_mib)
                    .map(|()| Reply::no_content()),
            ),
            Err(r) => r,
        },
        ("GET", "/balloon/statistics") => {
            answer(ctl.balloon_statistics().map(|v| Reply::json(200, &v)))
        }
        ("GET", "/gcma") => answer(ctl.gcma_info().map(|v| Reply::json(200, &v))),
        ("PUT", "/actions") => match parse::<ActionRequest>(req.body) {
            Ok(ActionRequest {
                action: Action::Shutdown,
            }) => answer(ctl.shutdown().map(|()| Reply::no_content())),
            Err(r) => r,
        },
        (m, p) if known.contains(&p) => {
            Reply::error(405, format!("method {m} is not allowed on {p}"))
        }
        (_, p) => Reply::error(404, format!("no such endpoint: {p}")),
    }
}

/// A handler for [`crate::api::http::HttpServer`] serving the control API of `ctl`.
pub fn control_handler(ctl: Arc<dyn VmControl>) -> Handler {
    Arc::new(move |req| route(ctl.as_ref(), req))
}

/// Content type of the OpenMetrics text that `prometheus-client` encodes (Prometheus scrapes it).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A handler serving `GET /metrics` with the text `render` produces at each scrape.
pub fn metrics_handler(render: Arc<dyn Fn() -> String + Send + Sync>) -> Handler {
    Arc::new(move |req| match (req.method, req.path) {
        ("GET", "/metrics") => Reply {
            status: 200,
            content_type: METRICS_CONTENT_TYPE,
            body: render().into_bytes(),
        },
        (_, "/metrics") => Reply::error(405, "only GET is allowed on /metrics"),
        (_, p) => Reply::error(
            404,
            format!("no such endpoint: {p}; metrics are at /metrics"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct FakeVm {
        target: Mutex<Option<u64>>,
        stopped: Mutex<bool>,
    }

    impl VmControl for FakeVm {
        fn vm_info(&self) -> Value {
            serde_json::json!({ "id": "vm0", "mem_mib": 64 })
        }
        fn set_balloon_target(&self, target_mib: u64) -> Result<(), ControlError> {
            if target_mib > 64 {
                return Err(ControlError::BadRequest(format!(
                    "target_mib {target_mib} exceeds guest memory (64 MiB)"
                )));
            }
            *self.target.lock().unwrap() = Some(target_mib);
            Ok(())
        }
        fn balloon_statistics(&self) -> Result<Value, ControlError> {
            Ok(serde_json::json!({ "target_mib": *self.target.lock().unwrap() }))
        }
        fn gcma_info(&self) -> Result<Value, ControlError> {
            Err(ControlError::Unavailable(
                "this VM has no gcma device".into(),
            ))
        }
        fn shutdown(&self) -> Result<(), ControlError> {
            *self.stopped.lock().unwrap() = true;
            Ok(())
        }
    }

    fn req<'a>(method: &'a str, path: &'a str, body: &'a str) -> Request<'a> {
        Request {
            method,
            path,
            body: body.as_bytes(),
        }
    }

    fn error_of(r: &Reply) -> String {
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        v["error"].as_str().unwrap().to_string()
    }

    #[test]
    fn routes_and_validates() {
        let vm = FakeVm::default();
        assert_eq!(route(&vm, &req("GET", "/vm", "")).status, 200);

        let r = route(&vm, &req("PUT", "/balloon", r#"{"target_mib": 16}"#));
        assert_eq!(r.status, 204);
        assert_eq!(*vm.target.lock().unwrap(), Some(16));

        for bad in [
            "",
            "{",
            r#"{"target_mib": -1}"#,
            r#"{"target_mib": "many"}"#,
            r#"{"target_mib": 1e99}"#,
            r#"{"target_mib": 99999999999999999999999}"#,
            r#"{"target": 1}"#,
            r#"{"target_mib": 1, "extra": 2}"#,
            "[]",
        ] {
            let r = route(&vm, &req("PUT", "/balloon", bad));
            assert_eq!(r.status, 400, "body {bad:?}");
            assert!(!error_of(&r).is_empty());
        }
        assert_eq!(
            *vm.target.lock().unwrap(),
            Some(16),
            "bad input changed state"
        );

        let r = route(&vm, &req("PUT", "/balloon", r#"{"target_mib": 65}"#));
        assert_eq!(r.status, 400);
        assert!(error_of(&r).contains("exceeds"));

        let r = route(&vm, &req("GET", "/gcma", ""));
        assert_eq!(r.status, 409);

        assert_eq!(route(&vm, &req("DELETE", "/vm", "")).status, 405);
        assert_eq!(route(&vm, &req("GET", "/nope", "")).status, 404);
        let r = route(&vm, &req("PUT", "/actions", r#"{"action": "reboot"}"#));
        assert_eq!(r.status, 400);
        assert!(!*vm.stopped.lock().unwrap());
        let r = route(&vm, &req("PUT", "/actions", r#"{"action": "shutdown"}"#));
        assert_eq!(r.status, 204);
        assert!(*vm.stopped.lock().unwrap());
    }

    fn http(path: &std::path::Path, raw: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    }

    #[test]
    fn serves_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("vmm-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let vm = Arc::new(FakeVm::default());
        let server =
            crate::api::http::HttpServer::unix(&sock, "api", control_handler(vm.clone())).unwrap();
        // A second server on a live socket is refused.
        assert!(matches!(
            crate::api::http::HttpServer::unix(&sock, "api2", control_handler(vm.clone())),
            Err(crate::api::http::HttpError::SocketInUse(_))
        ));

        let (st, body) = http(
            &sock,
            "GET /vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(st, 200);
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], "vm0");

        let put = "PUT /balloon HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 14\r\n\r\n{\"target_mib\":";
        let (st, body) = http(&sock, put);
        assert_eq!(st, 400, "{body}");
        assert!(body.contains("invalid JSON"));

        let big = format!(
            "PUT /balloon HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
            crate::api::http::MAX_BODY_BYTES + 1,
            " ".repeat(crate::api::http::MAX_BODY_BYTES as usize + 1)
        );
        assert_eq!(http(&sock, &big).0, 413);

        let ok = "PUT /balloon HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 16\r\n\r\n{\"target_mib\":8}";
        assert_eq!(http(&sock, ok).0, 204);
        assert_eq!(*vm.target.lock().unwrap(), Some(8));

        drop(server);
        assert!(!sock.exists(), "socket file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
