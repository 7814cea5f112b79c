//! The control endpoint as plain request → reply functions, carried by `gcma-http` (the server the
//! VMM's API uses too; `http.rs` starts its listeners):
//! * `POST /grants` with `{"pages": N, "align": A}` (`align` in pages, a power of two, default 1)
//!   takes a contiguous grant from the pool, evicting the cache and swap pages in its way under
//!   the pool's policy and zeroing what held data, exactly as a guest's grant would; answers
//!   `201 {"id", "first_page", "nr_pages"}`.
//! * `DELETE /grants/{id}` returns it: `200 {"id", "nr_pages"}`.
//! * `GET /grants` lists the grants taken here: `200 [{"id", "first_page", "nr_pages"}, ...]`.
//! * `GET /metrics`: the daemon's metrics in the OpenMetrics text format.
//!
//! Bad input gets a `4xx` with `{"fault_message": "..."}` naming the problem (the VMM API's error
//! shape) and changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gcma_host::api::{ClientId, ContigGrant, GcmaBackend, PoolError};
use gcma_host::pool::Pool;
use gcma_http::{Reply, Request};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::json;

/// The content type of `/metrics`.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Grants taken through the control endpoint, and the metrics registry.
pub struct Control {
    pool: Arc<Pool>,
    client: ClientId,
    grants: Mutex<Grants>,
    registry: Arc<Registry>,
}

#[derive(Default)]
struct Grants {
    next_id: u64,
    live: BTreeMap<u64, ContigGrant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantRequest {
    pages: u64,
    #[serde(default = "one")]
    align: u64,
}

fn one() -> u64 {
    1
}

impl Control {
    /// Grants are taken by a pool client of their own, `operator`.
    pub fn new(pool: Arc<Pool>, registry: Arc<Registry>) -> Self {
        let client = pool.register_client("operator");
        Control {
            pool,
            client,
            grants: Mutex::new(Grants::default()),
            registry,
        }
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, Grants> {
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes one request.
    pub fn handle(&self, req: &Request) -> Reply {
        let path = req.path.trim_end_matches('/');
        match (req.method.as_str(), path) {
            ("GET", "/metrics") => self.metrics(),
            ("GET", "/grants") => self.list(),
            ("POST", "/grants") => self.take(&req.body),
            ("DELETE", p) if p.starts_with("/grants/") => self.give_back(&p["/grants/".len()..]),
            (_, "/metrics" | "/grants") => Reply::error(405, format!("{} not allowed", req.method)),
            (_, p) if p.starts_with("/grants/") => {
                Reply::error(405, format!("{} not allowed", req.method))
            }
            _ => Reply::error(404, format!("no such endpoint: {}", req.path)),
        }
    }

    /// The metrics text.
    pub fn metrics(&self) -> Reply {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => Reply::bytes(200, METRICS_CONTENT_TYPE, text.into_bytes()),
            Err(e) => Reply::error(500, format!("cannot encode metrics: {e}")),
        }
    }

    fn list(&self) -> Reply {
        let g = self.grants();
        let list: Vec<serde_json::Value> = g
            .live
            .iter()
            .map(|(id, gr)| json!({ "id": id, "first_page": gr.first_page, "nr_pages": gr.nr_pages }))
            .collect();
        Reply::json(200, &serde_json::Value::Array(list))
    }

    fn take(&self, body: &[u8]) -> Reply {
        let req: GrantRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Reply::error(400, format!("expected {{\"pages\": N, \"align\": A}}: {e}"))
            }
        };
        if req.pages == 0 {
            return Reply::error(400, "pages must be at least 1");
        }
        if !req.align.is_power_of_two() {
            return Reply::error(400, format!("align {} is not a power of two", req.align));
        }
        match self.pool.alloc_contig(self.client, req.pages, req.align) {
            Ok(gr) => {
                let mut g = self.grants();
                g.next_id += 1;
                let id = g.next_id;
                g.live.insert(id, gr);
                log::info!(
                    "control: grant {id} of {} pages at pool page {}",
                    gr.nr_pages,
                    gr.first_page
                );
                Reply::json(
                    201,
                    &json!({ "id": id, "first_page": gr.first_page, "nr_pages": gr.nr_pages }),
                )
            }
            Err(e @ (PoolError::Exhausted { .. } | PoolError::Fragmented { .. })) => {
                Reply::error(409, e.to_string())
            }
            Err(e @ PoolError::Invalid(_)) => Reply::error(400, e.to_string()),
            Err(e) => Reply::error(500, e.to_string()),
        }
    }

    fn give_back(&self, id: &str) -> Reply {
        let Ok(id) = id.parse::<u64>() else {
            return Reply::error(400, format!("grant id {id:?} is not a number"));
        };
        let mut g = self.grants();
        let Some(gr) = g.live.get(&id).copied() else {
            return Reply::error(404, format!("no grant {id}"));
        };
        match self.pool.free_contig(self.client, gr.first_page) {
            Ok(n) => {
                g.live.remove(&id);
                log::info!("control: grant {id} returned");
                Reply::json(200, &json!({ "id": id, "nr_pages": n }))
            }
            Err(e) => Reply::error(500, e.to_string()),
        }
    }
}
