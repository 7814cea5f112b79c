//! The daemon's own metric families, beside the pool's (`gcma_*`, registered by the pool): per
//! disk, labelled `disk`, `guest` and `kind` (swap or cache), and per guest. Read from the disks'
//! counters and the pool's per-client statistics on every scrape.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use balloon::blk::{ReqStatus, ReqType};
use gcma_host::pool::Pool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::disk::{Disk, DiskKind};

/// Encodes the per-disk and per-guest families.
#[derive(Debug)]
pub struct DiskCollector {
    /// The pool the disks' clients belong to.
    pub pool: Arc<Pool>,
    /// Every configured disk.
    pub disks: Vec<Arc<Disk>>,
}

/// One sample: extra labels and a value.
type Sample = (Vec<(&'static str, String)>, Value);

#[derive(Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// Encodes one family whose samples carry `labels` plus their own.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: &[Sample],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in samples {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut f = m.encode_family(&labels)?;
        match (ty, *v) {
            (MetricType::Counter, Value::Int(v)) => {
                f.encode_counter::<NoLabelSet, _, u64>(&v, None)?
            }
            (MetricType::Counter, Value::Float(v)) => {
                f.encode_counter::<NoLabelSet, _, u64>(&v, None)?
            }
            (_, Value::Int(v)) => f.encode_gauge(&(v as i64))?,
            (_, Value::Float(v)) => f.encode_gauge(&v)?,
        }
    }
    Ok(())
}

impl DiskCollector {
    fn base(d: &Disk) -> Vec<(&'static str, String)> {
        vec![
            ("disk", d.name.clone()),
            ("guest", d.guest.clone()),
            ("kind", d.kind.name().to_string()),
        ]
    }
}

impl Collector for DiskCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut e;
        let mut requests = Vec::new();
        let mut seconds = Vec::new();
        let mut bytes = Vec::new();
        let mut guest_errors = Vec::new();
        let mut unanswerable = Vec::new();
        let mut hits = Vec::new();
        let mut misses = Vec::new();
        let mut pool_pages = Vec::new();
        let mut host_pages = Vec::new();
        let mut cap_pages = Vec::new();
        let mut cap_rejections = Vec::new();
        let mut retries = Vec::new();
        let mut file_writes = Vec::new();
        let mut connected = Vec::new();
        let mut connections = Vec::new();
        let mut per_guest: BTreeMap<String, u64> = BTreeMap::new();
        for d in &self.disks {
            let base = Self::base(d);
            let with = |extra: &[(&'static str, &str)]| {
                let mut l = base.clone();
                l.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
                l
            };
            let c = d.metrics.snapshot();
            for ty in ReqType::ALL {
                for st in ReqStatus::ALL {
                    requests.push((
                        with(&[("type", ty.name()), ("status", st.name())]),
                        Value::Int(c.count(ty, st)),
                    ));
                }
                seconds.push((
                    with(&[("type", ty.name())]),
                    Value::Float(c.busy_ns[ty as usize] as f64 / 1e9),
                ));
            }
            for (op, v) in [
                ("read", c.bytes_read),
                ("write", c.bytes_written),
                ("discard", c.bytes_discarded),
                ("write_zeroes", c.bytes_zeroed),
            ] {
                bytes.push((with(&[("op", op)]), Value::Int(v)));
            }
            guest_errors.push((base.clone(), Value::Int(c.guest_errors)));
            unanswerable.push((base.clone(), Value::Int(c.unanswerable)));
            connected.push((
                base.clone(),
                Value::Int(d.connected.load(Ordering::Relaxed) as u64),
            ));
            connections.push((
                base.clone(),
                Value::Int(d.connections.load(Ordering::Relaxed)),
            ));
            // The pool's view of the disk's client (gone only if the pool dropped it).
            let Ok(s) = self.pool.client_stats(d.client) else {
                continue;
            };
            let (hit, miss, pages, cap, rejected) = match d.kind {
                DiskKind::Swap => (
                    s.frontswap_loads_pool + s.frontswap_loads_host,
                    s.frontswap_loads_backing,
                    s.frontswap_pool_pages,
                    s.frontswap_cap_pages,
                    s.frontswap_cap_hits,
                ),
                DiskKind::Cache => (
                    s.cleancache_hits,
                    s.cleancache_misses,
                    s.cleancache_pages,
                    s.cleancache_cap_pages,
                    s.cleancache_cap_drops,
                ),
            };
            hits.push((base.clone(), Value::Int(hit)));
            misses.push((base.clone(), Value::Int(miss)));
            pool_pages.push((base.clone(), Value::Int(pages)));
            host_pages.push((base.clone(), Value::Int(s.frontswap_host_pages)));
            cap_pages.push((base.clone(), Value::Int(cap.unwrap_or(0))));
            cap_rejections.push((base.clone(), Value::Int(rejected)));
            retries.push((base.clone(), Value::Int(s.writeback_retries)));
            file_writes.push((base.clone(), Value::Int(s.file_writes)));
            *per_guest.entry(d.guest.clone()).or_default() += pages;
        }
        use MetricType::{Counter, Gauge};
        family(
            e,
            "gcma_disk_requests",
            "Requests answered, by type and status.",
            Counter,
            &requests,
        )?;
        family(
            e,
            "gcma_disk_request_seconds",
            "Host time spent answering requests, by type (from taking a chain to its answer).",
            Counter,
            &seconds,
        )?;
        family(
            e,
            "gcma_disk_bytes",
            "Bytes moved by successful requests, by operation.",
            Counter,
            &bytes,
        )?;
        family(
            e,
            "gcma_disk_guest_errors",
            "Requests refused because of what the guest sent (IOERR or UNSUPP).",
            Counter,
            &guest_errors,
        )?;
        family(
            e,
            "gcma_disk_unanswerable_chains",
            "Chains returned unused (no status byte, buffers outside guest memory).",
            Counter,
            &unanswerable,
        )?;
        family(
            e,
            "gcma_disk_pool_hits",
            "Page reads served from the pool (swap: pool or host memory; cache: cleancache hits).",
            Counter,
            &hits,
        )?;
        family(
            e,
            "gcma_disk_pool_misses",
            "Page reads served from the file (swap: backing file; cache: the image).",
            Counter,
            &misses,
        )?;
        family(
            e,
            "gcma_disk_pool_pages",
            "Pool pages holding the disk's data.",
            Gauge,
            &pool_pages,
        )?;
        family(
            e,
            "gcma_disk_host_pages",
            "Swap pages held in host memory outside the pool (put back, or waiting for a write).",
            Gauge,
            &host_pages,
        )?;
        family(
            e,
            "gcma_disk_cap_pages",
            "The disk's cap on pool pages.",
            Gauge,
            &cap_pages,
        )?;
        family(
            e,
            "gcma_disk_cap_rejections",
            "Stores and puts that found the disk at its cap (swap: written to the file; cache: dropped).",
            Counter,
            &cap_rejections,
        )?;
        family(
            e,
            "gcma_disk_writeback_retries",
            "Failed write-backs of the disk's pages retried.",
            Counter,
            &retries,
        )?;
        family(
            e,
            "gcma_disk_file_writes",
            "Pages written to the swap disk's backing file.",
            Counter,
            &file_writes,
        )?;
        family(
            e,
            "gcma_disk_connected",
            "Whether a frontend is connected.",
            Gauge,
            &connected,
        )?;
        family(
            e,
            "gcma_disk_connections",
            "Frontend connections accepted.",
            Counter,
            &connections,
        )?;
        let guests: Vec<Sample> = per_guest
            .into_iter()
            .map(|(g, v)| (vec![("guest", g)], Value::Int(v)))
            .collect();
        family(
            e,
            "gcma_guest_pool_pages",
            "Pool pages holding a guest's data, over all its disks.",
            Gauge,
            &guests,
        )
    }
}

/// Encodes the `gcma_vmm_*` families: the virtio-gcma service and the VMMs attached to it.
#[derive(Debug)]
pub struct VmmCollector {
    /// The service.
    pub service: Arc<crate::gcma_dev::GcmaService>,
}

impl Collector for VmmCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let c = self.service.counters();
        let g = self.service.grants();
        let n = |v: u64| [(Vec::new(), Value::Int(v))];
        let load = |a: &std::sync::atomic::AtomicU64| n(a.load(Ordering::Relaxed));
        let e = &mut e;
        family(
            e,
            "gcma_vmm_connected",
            "VMMs connected to the virtio-gcma socket.",
            Gauge,
            &load(&c.connected),
        )?;
        family(
            e,
            "gcma_vmm_connections",
            "VMM connections accepted.",
            Counter,
            &load(&c.connections),
        )?;
        family(
            e,
            "gcma_vmm_refused_connections",
            "Connections closed unserved: the peer's identity (SO_PEERCRED, pidfd) was unavailable.",
            Counter,
            &load(&c.refused),
        )?;
        family(
            e,
            "gcma_vmm_released_clients",
            "Pool clients of VMMs released: everything they held went back to the pool.",
            Counter,
            &load(&c.released_clients),
        )?;
        family(
            e,
            "gcma_vmm_retired_clients",
            "Disconnected VMMs whose grants may still be mapped, kept until their process exits.",
            Gauge,
            &load(&c.retired_clients),
        )?;
        family(
            e,
            "gcma_vmm_resets",
            "Guest resets that released what the guest held.",
            Counter,
            &load(&c.resets),
        )?;
        family(
            e,
            "gcma_vmm_shmem_failures",
            "SHMEM_MAP/SHMEM_UNMAP requests that failed (refused, unanswered, channel broken).",
            Counter,
            &load(&c.shmem_failures),
        )?;
        family(
            e,
            "gcma_vmm_grants",
            "Grants mapped in VMMs' windows.",
            Gauge,
            &n(g.grants),
        )?;
        family(
            e,
            "gcma_vmm_granted_pages",
            "Pages of those grants.",
            Gauge,
            &n(g.granted_pages),
        )?;
        family(
            e,
            "gcma_vmm_stuck_grants",
            "Grants whose unmap a VMM has not acknowledged; never reused until it does or exits.",
            Gauge,
            &n(g.stuck_grants),
        )
    }
}
