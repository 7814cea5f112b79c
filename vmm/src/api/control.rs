//! The control API: HTTP/JSON over a Unix socket, described by `vmm/api/openapi.yaml`.
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | `GET` | `/vm` | — | `200` [`VmInfo`] |
//! | `GET` | `/gcma` | — | `200` [`GcmaInfo`] |
//! | `GET` | `/balloon` | — | `200` [`BalloonDeviceConfig`] |
//! | `PUT` | `/balloon` | [`BalloonDeviceConfig`] | `204` |
//! | `PATCH` | `/balloon` | [`BalloonUpdate`] | `204` |
//! | `GET` | `/balloon/statistics` | — | `200` [`BalloonStats`] |
//! | `PATCH` | `/balloon/statistics` | [`BalloonStatsUpdate`] | `204` |
//! | `PUT` | `/actions` | [`ActionRequest`] | `204`; the VM stops |
//!
//! The balloon calls are Firecracker's (README.md lists the differences). Every error, here or in
//! the HTTP server underneath, has the body `{"fault_message": "..."}`: `400` for input that is
//! not acceptable (including a device the VM does not have, as Firecracker answers), `404` for an
//! unknown path, `405` (with `Allow`) for a method a path does not take, `500` if the host fails.
//! A refused request changes nothing. The router is independent of how a VM is built: it talks
//! to a [`VmControl`].

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::http::{Handler, Reply, Request};
use crate::api::model::{
    Action, ActionRequest, BalloonDeviceConfig, BalloonStats, BalloonStatsUpdate, BalloonUpdate,
    GcmaInfo, VmInfo,
};

/// Why a control operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request is well-formed but its values are not acceptable (answered with `400`).
    #[error("{0}")]
    BadRequest(String),
    /// The VM has no such device or feature (answered with `400`, as Firecracker does).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed on the host (answered with `500`).
    #[error("{0}")]
    Internal(String),
}

/// What the control API can ask of a running microVM.
pub trait VmControl: Send + Sync {
    /// The VM's description.
    fn vm_info(&self) -> VmInfo;
    /// Contiguous grants of this VM and pool usage.
    fn gcma_info(&self) -> Result<GcmaInfo, ControlError>;
    /// The balloon's settings.
    fn balloon_config(&self) -> Result<BalloonDeviceConfig, ControlError>;
    /// Applies balloon settings: the target always, features only while the guest driver has
    /// not negotiated them yet (otherwise a change is refused and nothing changes).
    fn put_balloon(&self, cfg: &BalloonDeviceConfig) -> Result<(), ControlError>;
    /// Sets a new balloon target (and polling interval, if given).
    fn patch_balloon(&self, update: &BalloonUpdate) -> Result<(), ControlError>;
    /// Balloon sizes and the guest's latest statistics.
    fn balloon_stats(&self) -> Result<BalloonStats, ControlError>;
    /// Sets the statistics polling interval.
    fn patch_balloon_stats(&self, update: &BalloonStatsUpdate) -> Result<(), ControlError>;
    /// Asks the VM to stop.
    fn shutdown(&self) -> Result<(), ControlError>;
}

/// The operations of the control API (`operationId` in `vmm/api/openapi.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `GET /vm`.
    DescribeVm,
    /// `GET /gcma`.
    DescribeGcma,
    /// `GET /balloon`.
    DescribeBalloonConfig,
    /// `PUT /balloon`.
    PutBalloon,
    /// `PATCH /balloon`.
    PatchBalloon,
    /// `GET /balloon/statistics`.
    DescribeBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStatsInterval,
    /// `PUT /actions`.
    CreateSyncAction,
}

/// The route table: method, path, operation and its `operationId`. [`route`] dispatches through
/// it, and a test checks that `vmm/api/openapi.yaml` documents exactly these.
pub const ROUTES: &[(&str, &str, Operation, &str)] = &[
    ("GET", "/vm", Operation::DescribeVm, "describeVm"),
    ("GET", "/gcma", Operation::DescribeGcma, "describeGcma"),
    (
        "GET",
        "/balloon",
        Operation::DescribeBalloonConfig,
        "describeBalloonConfig",
    ),
    ("PUT", "/balloon", Operation::PutBalloon, "putBalloon"),
    ("PATCH", "/balloon", Operation::PatchBalloon, "patchBalloon"),
    (
        "GET",
        "/balloon/statistics",
        Operation::DescribeBalloonStats,
        "describeBalloonStats",
    ),
    (
        "PATCH",
        "/balloon/statistics",
        Operation::PatchBalloonStatsInterval,
        "patchBalloonStatsInterval",
    ),
    (
        "PUT",
        "/actions",
        Operation::CreateSyncAction,
        "createSyncAction",
    ),
];

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Reply::error(400, "request body is empty; expected JSON"));
    }
    serde_json::from_slice(body).map_err(|e| Reply::error(400, format!("invalid JSON body: {e}")))
}

fn json<T: Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(v) => Reply::json(200, &v),
        Err(e) => Reply::error(500, format!("encoding the answer failed: {e}")),
    }
}

fn answer(result: Result<Reply, ControlError>) -> Reply {
    match result {
        Ok(r) => r,
        Err(ControlError::BadRequest(m) | ControlError::Unavailable(m)) => Reply::error(400, m),
        Err(ControlError::Internal(m)) => Reply::error(500, m),
    }
}

fn with_body<T: DeserializeOwned>(
    req: &Request,
    f: impl FnOnce(T) -> Result<(), ControlError>,
) -> Reply {
    match parse::<T>(&req.body) {
        Ok(v) => answer(f(v).map(|()| Reply::no_content())),
        Err(r) => r,
    }
}

/// Answers one control API request.
pub fn route(ctl: &dyn VmControl, req: &Request) -> Reply {
    let Some(&(_, _, op, _)) = ROUTES
        .iter()
        .find(|(m, p, _, _)| *m == req.method && *p == req.path)
    else {
        let allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|(_, p, _, _)| *p == req.path)
            .map(|(m, _, _, _)| *m)
            .collect();
        return if allowed.is_empty() {
            Reply::error(404, format!("no such endpoint: {}", req.path))
        } else {
            Reply::error(
                405,
                format!(
                    "method {} is not allowed on {} (allowed: {})",
                    req.method,
                    req.path,
                    allowed.join(", ")
                ),
            )
            .with_header("allow", allowed.join(", "))
        };
    };
    match op {
        Operation::DescribeVm => json(&ctl.vm_info()),
        Operation::DescribeGcma => answer(ctl.gcma_info().map(|v| json(&v))),
        Operation::DescribeBalloonConfig => answer(ctl.balloon_config().map(|v| json(&v))),
        Operation::PutBalloon => with_body(req, |c: BalloonDeviceConfig| ctl.put_balloon(&c)),
        Operation::PatchBalloon => with_body(req, |u: BalloonUpdate| ctl.patch_balloon(&u)),
        Operation::DescribeBalloonStats => answer(ctl.balloon_stats().map(|v| json(&v))),
        Operation::PatchBalloonStatsInterval => {
            with_body(req, |u: BalloonStatsUpdate| ctl.patch_balloon_stats(&u))
        }
        Operation::CreateSyncAction => with_body(req, |a: ActionRequest| match a.action {
            Action::Shutdown => ctl.shutdown(),
        }),
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
    Arc::new(move |req| match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/metrics") => Reply::bytes(200, METRICS_CONTENT_TYPE, render().into_bytes()),
        (_, "/metrics") => {
            Reply::error(405, "only GET is allowed on /metrics").with_header("allow", "GET")
        }
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
    use crate::api::model::{ApiError, VmExits};

    #[derive(Default)]
    struct FakeVm {
        target: Mutex<Option<u32>>,
        interval: Mutex<u16>,
        stopped: Mutex<bool>,
    }

    impl VmControl for FakeVm {
        fn vm_info(&self) -> VmInfo {
            VmInfo {
                id: "vm0".into(),
                state: "running".into(),
                mem_mib: 64,
                vcpus: 1,
                payload: "spin".into(),
                devices: vec![],
                exits: VmExits::default(),
            }
        }
        fn gcma_info(&self) -> Result<GcmaInfo, ControlError> {
            Err(ControlError::Unavailable(
                "this VM has no gcma device".into(),
            ))
        }
        fn balloon_config(&self) -> Result<BalloonDeviceConfig, ControlError> {
            Ok(BalloonDeviceConfig {
                amount_mib: self.target.lock().unwrap().unwrap_or(0),
                deflate_on_oom: true,
                stats_polling_interval_s: *self.interval.lock().unwrap(),
                free_page_hinting: false,
                free_page_reporting: false,
            })
        }
        fn put_balloon(&self, cfg: &BalloonDeviceConfig) -> Result<(), ControlError> {
            self.patch_balloon(&BalloonUpdate {
                amount_mib: cfg.amount_mib,
                stats_polling_interval_s: Some(cfg.stats_polling_interval_s),
            })
        }
        fn patch_balloon(&self, u: &BalloonUpdate) -> Result<(), ControlError> {
            if u.amount_mib > 64 {
                return Err(ControlError::BadRequest(format!(
                    "amount_mib {} exceeds guest memory (64 MiB)",
                    u.amount_mib
                )));
            }
            *self.target.lock().unwrap() = Some(u.amount_mib);
            if let Some(i) = u.stats_polling_interval_s {
                *self.interval.lock().unwrap() = i;
            }
            Ok(())
        }
        fn balloon_stats(&self) -> Result<BalloonStats, ControlError> {
            Ok(BalloonStats {
                target_mib: self.target.lock().unwrap().unwrap_or(0),
                ..BalloonStats::default()
            })
        }
        fn patch_balloon_stats(&self, u: &BalloonStatsUpdate) -> Result<(), ControlError> {
            *self.interval.lock().unwrap() = u.stats_polling_interval_s;
            Ok(())
        }
        fn shutdown(&self) -> Result<(), ControlError> {
            *self.stopped.lock().unwrap() = true;
            Ok(())
        }
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: None,
            content_type: Some("application/json".into()),
            body: body.as_bytes().to_vec(),
        }
    }

    fn fault(r: &Reply) -> String {
        let e: ApiError = serde_json::from_slice(&r.body).expect("error shape");
        assert!(!e.fault_message.is_empty());
        e.fault_message
    }

    #[test]
    fn routes_and_validates() {
        let vm = FakeVm::default();
        let r = route(&vm, &req("GET", "/vm", ""));
        assert_eq!(r.status, 200);
        let info: VmInfo = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(info.id, "vm0");

        let r = route(&vm, &req("PATCH", "/balloon", r#"{"amount_mib": 16}"#));
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        assert_eq!(*vm.target.lock().unwrap(), Some(16));

        for bad in [
            "",
            " ",
            "{",
            r#"{"amount_mib": -1}"#,
            r#"{"amount_mib": "many"}"#,
            r#"{"amount_mib": 1.5}"#,
            r#"{"amount_mib": 4294967296}"#,
            r#"{"amount_mib": 1e99}"#,
            r#"{"target_mib": 1}"#,
            r#"{"amount_mib": 1, "extra": 2}"#,
            r#"{"amount_mib": 1, "stats_polling_interval_s": 65536}"#,
            "[]",
            "null",
        ] {
            let r = route(&vm, &req("PATCH", "/balloon", bad));
            assert_eq!(r.status, 400, "body {bad:?}");
            fault(&r);
        }
        assert_eq!(
            *vm.target.lock().unwrap(),
            Some(16),
            "bad input changed state"
        );

        let r = route(&vm, &req("PATCH", "/balloon", r#"{"amount_mib": 65}"#));
        assert_eq!(r.status, 400);
        assert!(fault(&r).contains("exceeds"));

        let r = route(&vm, &req("PUT", "/balloon", r#"{"amount_mib": 8}"#));
        assert_eq!(r.status, 400, "deflate_on_oom is required");
        assert!(fault(&r).contains("deflate_on_oom"));

        let r = route(&vm, &req("GET", "/gcma", ""));
        assert_eq!(r.status, 400);
        fault(&r);

        let r = route(&vm, &req("DELETE", "/balloon", ""));
        assert_eq!(r.status, 405);
        assert_eq!(r.headers, vec![("allow", "GET, PUT, PATCH".to_string())]);
        fault(&r);
        let r = route(&vm, &req("GET", "/nope", ""));
        assert_eq!(r.status, 404);
        fault(&r);
        let r = route(&vm, &req("put", "/actions", r#"{"action": "shutdown"}"#));
        assert_eq!(r.status, 405, "methods are case-sensitive");
        let r = route(&vm, &req("PUT", "/actions", r#"{"action": "reboot"}"#));
        assert_eq!(r.status, 400);
        assert!(!*vm.stopped.lock().unwrap());
        let r = route(&vm, &req("PUT", "/actions", r#"{"action": "shutdown"}"#));
        assert_eq!(r.status, 204);
        assert!(*vm.stopped.lock().unwrap());
    }

    #[test]
    fn every_route_is_dispatched_to_its_own_operation() {
        for (i, (m, p, op, id)) in ROUTES.iter().enumerate() {
            assert!(
                ROUTES[..i]
                    .iter()
                    .all(|(m2, p2, op2, id2)| (m2, p2) != (m, p) && op2 != op && id2 != id),
                "duplicate route {m} {p}"
            );
        }
    }

    #[test]
    fn metrics_endpoint_errors_have_the_error_shape() {
        let h = metrics_handler(Arc::new(|| "# EOF\n".into()));
        let r = h(&req("GET", "/metrics", ""));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"# EOF\n"[..]));
        let r = h(&req("POST", "/metrics", ""));
        assert_eq!(r.status, 405);
        fault(&r);
        let r = h(&req("GET", "/", ""));
        assert_eq!(r.status, 404);
        fault(&r);
    }
}
