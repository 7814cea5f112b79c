//! Picking the gcma device among discovered candidates: map each window, probe it, keep the
//! first virtio-gcma device, and otherwise say exactly what was found where.

use std::fmt;

use gcma_proto::gcma::VIRTIO_ID_GCMA;

use super::discovery::{Candidate, ScanResult};
use super::regs::{probe, Identity, MapError, ProbeError, RegisterWindow};

/// What probing one candidate gave.
#[derive(Debug)]
pub enum Finding {
    /// The window could not be mapped.
    Unmappable(MapError),
    /// The window was read but holds no usable gcma device.
    Other(Identity, ProbeError),
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unmappable(e) => write!(f, "{e}"),
            Finding::Other(_, e) => write!(f, "{e}"),
        }
    }
}

/// No gcma device among the candidates.
#[derive(Debug)]
pub struct NotFound {
    /// Every candidate with what probing it gave.
    pub findings: Vec<(Candidate, Finding)>,
    /// Devices seen in sysfs whose window is unknown.
    pub unlocated: Vec<String>,
    /// Problems met while scanning.
    pub notes: Vec<String>,
}

impl std::error::Error for NotFound {}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.findings.is_empty() {
            write!(
                f,
                "no virtio-mmio devices found in /proc/cmdline, /proc/iomem or \
                 /sys/bus/platform/devices; pass --device BASE@SIZE"
            )?;
        } else {
            write!(
                f,
                "no virtio-gcma device (DeviceID {VIRTIO_ID_GCMA:#x}) found; probed "
            )?;
            for (i, (c, r)) in self.findings.iter().enumerate() {
                if i > 0 {
                    write!(f, "; ")?;
                }
                write!(f, "{c}: {r}")?;
            }
        }
        if !self.unlocated.is_empty() {
            write!(
                f,
                "; virtio-mmio devices with unknown address: {}",
                self.unlocated.join(", ")
            )?;
        }
        if !self.notes.is_empty() {
            write!(f, " [{}]", self.notes.join("; "))?;
        }
        Ok(())
    }
}

/// Maps and probes each candidate of `scan` in order with `open` (which maps a candidate's
/// window, e.g. [`super::regs::DevMemWindow::open`]) and returns the first that holds a
/// virtio-mmio version 2 gcma device, with its mapped window.
pub fn find_gcma<W, F>(scan: ScanResult, mut open: F) -> Result<(Candidate, W), NotFound>
where
    W: RegisterWindow,
    F: FnMut(&Candidate) -> Result<W, MapError>,
{
    let mut findings = Vec::new();
    for c in scan.candidates {
        match open(&c) {
            Err(e) => findings.push((c, Finding::Unmappable(e))),
            Ok(mut w) => match probe(&mut w) {
                (_, Ok(())) => return Ok((c, w)),
                (id, Err(e)) => findings.push((c, Finding::Other(id, e))),
            },
        }
    }
    Err(NotFound {
        findings,
        unlocated: scan.unlocated,
        notes: scan.notes,
    })
}
