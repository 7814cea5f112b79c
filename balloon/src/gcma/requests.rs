//! Request handling of the virtio-gcma device: checks a chain against the request it carries,
//! runs the request against the pool or the grant window, and writes the response.
//!
//! Data pages travel through the device's bounce page with `vm-memory`'s volatile copies: the
//! pool never sees a reference to guest memory, which the guest may change at any time.

use std::sync::Arc;

use gcma_host::api::{CleancacheKey, FrontswapKey, GcmaBackend, PoolError, RejectReason};
use gcma_host::guest_warn;
use log::debug;

use super::device::GcmaDevice;
use super::metrics::Tmem;
use super::proto::{
    self, no_space, reject, status, DataDir, PageKey, Request, Response, SwapKey, PAGE_SIZE,
    REQUEST_HEADER_LEN, RESPONSE_LEN, STAT_ENTRY_LEN,
};
use super::window::GrantError;
use crate::log_kinds;
use crate::transport::chain::{ChainRef, Desc};
use crate::transport::drain::{Chain, Completion};
use crate::transport::stream::{read_stream, stream_len, write_stream};
use crate::transport::GuestMemoryMmap;

impl GcmaDevice {
    /// Answers one chain of `queue`; returns how it is completed.
    pub(super) fn answer(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: u16,
        chain: Chain<'_>,
    ) -> Completion {
        let (chain, valid) = match chain {
            Chain::Valid(c) => (c, true),
            Chain::Rejected { chain, error } => {
                self.metrics.rejected_chain();
                guest_warn!(
                    self.logs,
                    log_kinds::GCMA_REJECTED_CHAIN,
                    "virtio-gcma {}: queue {queue}: chain {}: {error}",
                    self.name,
                    chain.head
                );
                (chain, false)
            }
        };
        let descs = chain.descs;
        let w_len = stream_len(descs, true);
        if w_len < RESPONSE_LEN as u64 {
            self.metrics.unanswerable(queue);
            debug!(
                "virtio-gcma {}: queue {queue}: chain without room for a response",
                self.name
            );
            return Completion::Used(0);
        }
        // A chain with a buffer outside guest memory is answered BAD_REQUEST, if its response
        // bytes are writable guest memory.
        let (resp, data_len) = if valid {
            self.execute(mem, queue, chain, w_len)
        } else {
            (Response::status(status::BAD_REQUEST), 0)
        };
        let at = w_len - RESPONSE_LEN as u64;
        if !write_stream(mem, descs, at, &resp.encode()) {
            self.metrics.unanswerable(queue);
            return Completion::Used(0);
        }
        self.metrics.answered(queue, resp.status);
        Completion::Used(data_len + RESPONSE_LEN as u32)
    }

    /// Validates and runs one request; returns the response and how many data bytes were
    /// written before it.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: u16,
        chain: ChainRef<'_>,
        w_len: u64,
    ) -> (Response, u32) {
        let bad = (Response::status(status::BAD_REQUEST), 0);
        if !chain.is_ordered() {
            return bad;
        }
        let descs = chain.descs;
        let r_len = stream_len(descs, false);
        let mut header = [0u8; REQUEST_HEADER_LEN];
        if r_len < REQUEST_HEADER_LEN as u64 || !read_stream(mem, descs, 0, &mut header) {
            return bad;
        }
        let req = match Request::parse(&header) {
            Ok(r) => r,
            Err(e) => {
                debug!(
                    "virtio-gcma {}: queue {queue}: bad header: {e:?}",
                    self.name
                );
                return bad;
            }
        };
        let data_len = (w_len - RESPONSE_LEN as u64) as usize;
        if req.queue() != queue
            || r_len != req.readable_len() as u64
            || !req.writable_len_ok(w_len as usize)
        {
            debug!(
                "virtio-gcma {}: queue {queue}: {req:?} with {r_len} readable, {w_len} writable bytes",
                self.name
            );
            return bad;
        }
        if req.feature() & !self.features != 0 {
            return (Response::status(status::UNSUPPORTED), 0);
        }
        let mut page = std::mem::take(&mut self.page);
        let r = self.execute_valid(mem, descs, req, data_len, &mut page);
        self.page = page;
        r.unwrap_or(bad)
    }

    /// Runs a request whose chain has the right shape; `None` means guest memory could not be
    /// read or written after all (answered `BAD_REQUEST`).
    fn execute_valid(
        &mut self,
        mem: &GuestMemoryMmap,
        descs: &[Desc],
        req: Request,
        data_len: usize,
        page: &mut [u8],
    ) -> Option<(Response, u32)> {
        match req.data() {
            DataDir::ToDevice => {
                if !read_stream(mem, descs, REQUEST_HEADER_LEN as u64, page) {
                    return None;
                }
                Some((self.run(req, data_len, PageArg::In(page)), 0))
            }
            DataDir::FromDevice => {
                let resp = self.run(req, data_len, PageArg::Out(page));
                if resp.status != status::OK {
                    return Some((resp, 0));
                }
                if !write_stream(mem, descs, 0, page) {
                    return None;
                }
                Some((resp, PAGE_SIZE as u32))
            }
            DataDir::Stats => {
                let resp = self.run(req, data_len, PageArg::None);
                let entries = self.metrics.stat_entries(
                    self.window.pool().nr_pages(),
                    self.window.range().nr_pages(),
                );
                let n = (resp.value0 as usize).min(entries.len());
                let mut buf = Vec::with_capacity(n * STAT_ENTRY_LEN);
                for e in &entries[..n] {
                    buf.extend_from_slice(&e.encode());
                }
                if !write_stream(mem, descs, 0, &buf) {
                    return None;
                }
                Some((resp, buf.len() as u32))
            }
            DataDir::None => Some((self.run(req, data_len, PageArg::None), 0)),
        }
    }

    /// Performs a validated request against the pool.
    fn run(&mut self, req: Request, data_len: usize, page: PageArg<'_>) -> Response {
        let pool = Arc::clone(self.window.pool());
        let b: &dyn GcmaBackend = &*pool;
        let c = self.client;
        let ok = Response::status(status::OK);
        let ok_or_miss = |hit: bool| Response::status(if hit { status::OK } else { status::MISS });
        let mut page = page;
        match req {
            Request::AllocContig {
                nr_pages,
                align_pages,
            } => self.alloc_contig(nr_pages, align_pages),
            Request::FreeContig { offset } => self.free_contig(offset),
            Request::Stats => Response {
                status: status::OK,
                value0: (data_len / STAT_ENTRY_LEN).min(proto::stat::COUNT) as u64,
                value1: proto::stat::COUNT as u64,
            },
            Request::NewPool => match b.cleancache_new_pool(c) {
                Ok(id) => Response {
                    value0: u64::from(id),
                    ..ok
                },
                Err(e) => self.pool_error(e),
            },
            Request::Put(k) => match b.cleancache_put(c, cc_key(k), page.input()) {
                Ok(true) => {
                    self.metrics.tmem(Tmem::Put);
                    ok
                }
                Ok(false) => Response::status(status::NOT_STORED),
                Err(e) => self.pool_error(e),
            },
            Request::Get(k) => match b.cleancache_get(c, cc_key(k), page.output()) {
                Ok(hit) => {
                    self.metrics
                        .tmem(if hit { Tmem::SuccGet } else { Tmem::FailedGet });
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::FlushPage(k) => match b.cleancache_flush_page(c, cc_key(k)) {
                Ok(hit) => {
                    self.metrics.tmem(Tmem::Flush);
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::FlushObject { pool, object } => {
                match b.cleancache_flush_object(c, pool, object) {
                    Ok(n) => {
                        self.metrics.tmem(Tmem::Flush);
                        Response { value0: n, ..ok }
                    }
                    Err(e) => self.pool_error(e),
                }
            }
            Request::DestroyPool { pool } => match b.cleancache_destroy_pool(c, pool) {
                Ok(()) => {
                    self.metrics.tmem(Tmem::Flush);
                    ok
                }
                Err(e) => self.pool_error(e),
            },
            Request::Store(k) => match b.frontswap_store(c, fs_key(k), page.input()) {
                Ok(()) => {
                    self.metrics.tmem(Tmem::SuccStore);
                    ok
                }
                Err(e) => {
                    if matches!(e, PoolError::Rejected(_)) {
                        self.metrics.tmem(Tmem::FailedStore);
                    }
                    self.pool_error(e)
                }
            },
            Request::Load(k) => match b.frontswap_load(c, fs_key(k), page.output()) {
                Ok(hit) => {
                    if hit {
                        self.metrics.tmem(Tmem::Load);
                    }
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::InvalidatePage(k) => match b.frontswap_invalidate_page(c, fs_key(k)) {
                Ok(hit) => {
                    self.metrics.tmem(Tmem::Invalidate);
                    ok_or_miss(hit)
                }
                Err(e) => self.pool_error(e),
            },
            Request::InvalidateArea { area } => match b.frontswap_invalidate_area(c, area) {
                Ok(n) => {
                    self.metrics.tmem(Tmem::Invalidate);
                    Response { value0: n, ..ok }
                }
                Err(e) => self.pool_error(e),
            },
        }
    }

    fn alloc_contig(&mut self, nr_pages: u64, align_pages: u64) -> Response {
        let r = self.window.alloc(self.client, nr_pages, align_pages);
        self.metrics.set_grants(&self.window.usage());
        match r {
            // The guest learns where the grant lies inside shared-memory region 0; it adds the
            // region's base itself (`balloon/PROTOCOL.md`), so a device whose window base only
            // the VMM knows (vhost-user) answers the same as the embedded one.
            Ok((gpa, grant)) => Response {
                status: status::OK,
                value0: gpa - self.window.range().gpa,
                value1: grant.nr_pages,
            },
            Err(GrantError::WindowFull { .. }) => Response {
                status: status::NO_SPACE,
                value0: no_space::WINDOW_FULL,
                value1: self.window.usage().free_bytes / PAGE_SIZE as u64,
            },
            Err(GrantError::Pool(e)) => self.pool_error(e),
            Err(e) => {
                self.metrics.map_failed();
                guest_warn!(
                    self.logs,
                    log_kinds::GCMA_MAP_FAILED,
                    "virtio-gcma {}: mapping a grant failed: {e}",
                    self.name
                );
                Response::status(status::MAP_FAILED)
            }
        }
    }

    fn free_contig(&mut self, offset: u64) -> Response {
        let Some(gpa) = self.window.range().gpa.checked_add(offset) else {
            return Response::status(status::UNKNOWN_GRANT);
        };
        let r = self.window.free(self.client, gpa);
        self.metrics.set_grants(&self.window.usage());
        match r {
            Ok(n) => Response {
                status: status::OK,
                value0: n,
                value1: 0,
            },
            Err(GrantError::UnknownGrant(_)) => Response::status(status::UNKNOWN_GRANT),
            Err(GrantError::Pool(e)) => self.pool_error(e),
            Err(e) => {
                // The unmap failed: the guest keeps the grant rather than share it with anyone.
                self.metrics.map_failed();
                guest_warn!(
                    self.logs,
                    log_kinds::GCMA_MAP_FAILED,
                    "virtio-gcma {}: freeing the grant at window offset {offset:#x}: {e}",
                    self.name
                );
                Response::status(status::IO_ERROR)
            }
        }
    }

    fn pool_error(&self, e: PoolError) -> Response {
        match e {
            PoolError::UnknownPool(_) => Response::status(status::UNKNOWN_POOL),
            PoolError::UnknownGrant(_) => Response::status(status::UNKNOWN_GRANT),
            PoolError::Invalid(_) => Response::status(status::BAD_REQUEST),
            // The pool's own numbers (pages left, longest run) would tell this guest how much
            // its neighbours hold: it learns only what it holds itself.
            PoolError::Exhausted { .. } => Response {
                status: status::NO_SPACE,
                value0: no_space::EXHAUSTED,
                value1: self.window.usage().granted_pages,
            },
            PoolError::Fragmented { .. } => Response {
                status: status::NO_SPACE,
                value0: no_space::FRAGMENTED,
                value1: self.window.usage().granted_pages,
            },
            PoolError::Rejected(r) => Response {
                status: status::REJECTED,
                value0: match r {
                    RejectReason::PoolFull => reject::POOL_FULL,
                    RejectReason::PutBackLimit => reject::PUT_BACK_LIMIT,
                    RejectReason::BackingIo => reject::BACKING_IO,
                    RejectReason::ClientLimit => reject::CLIENT_LIMIT,
                },
                value1: 0,
            },
            PoolError::UnknownClient(_) | PoolError::Io { .. } => {
                self.metrics.pool_error();
                guest_warn!(
                    self.logs,
                    log_kinds::GCMA_POOL_ERROR,
                    "virtio-gcma {}: pool error: {}",
                    self.name,
                    gcma_host::api::ErrorChain(&e)
                );
                Response::status(status::IO_ERROR)
            }
        }
    }
}

/// The data page of a request as the pool sees it.
enum PageArg<'a> {
    None,
    In(&'a [u8]),
    Out(&'a mut [u8]),
}

impl PageArg<'_> {
    /// The page to read; empty (which the pool refuses as invalid) if there is none.
    fn input(&self) -> &[u8] {
        match self {
            PageArg::In(p) => p,
            _ => &[],
        }
    }

    /// The page to fill; empty (refused as invalid) if there is none.
    fn output(&mut self) -> &mut [u8] {
        match self {
            PageArg::Out(p) => p,
            _ => &mut [],
        }
    }
}

fn cc_key(k: PageKey) -> CleancacheKey {
    CleancacheKey {
        pool: k.pool,
        object: k.object,
        index: k.index,
    }
}

fn fs_key(k: SwapKey) -> FrontswapKey {
    FrontswapKey {
        area: k.area,
        offset: k.offset,
    }
}
