//! Opening the gcma device's registers in a real guest: discovery, optional unbinding of the
//! kernel's virtio-mmio driver, `/dev/mem` mapping and probing.
//!
//! Unbinding is how the agent deals with `CONFIG_IO_STRICT_DEVMEM` (Debian's kernels have it):
//! Linux's virtio_mmio driver binds to every virtio-mmio device the firmware describes (ACPI
//! `LNRO0005`), gcma included, and claims its register window even though no virtio driver knows
//! the gcma device ID; `/dev/mem` then refuses to map the window. `--unbind` writes the device's
//! name to `/sys/bus/platform/drivers/virtio-mmio/unbind`, which releases the window (nothing in
//! the kernel was using the device). The alternative, booting with `iomem=relaxed`, weakens
//! `/dev/mem` for every driver and is not what the agent asks for.

use std::path::{Path, PathBuf};

use gcma_proto::gcma::VIRTIO_ID_GCMA;
use log::{info, warn};

use super::agent::Agent;
use super::discovery::{scan, Candidate, ScanResult};
use super::dma::{DmaError, HugePages};
use super::hal::{LinuxHal, PagemapDma};
use super::locate::{find_gcma, NotFound};
use super::regs::{DevMemWindow, MapError};

/// How to find the device.
#[derive(Clone, Debug, Default)]
pub struct FindOptions {
    /// A window given by the operator (`--device`); skips probing other windows.
    pub device: Option<Candidate>,
    /// Root of `/proc` and `/sys` (normally `/`).
    pub root: PathBuf,
    /// Unbind the kernel driver from the gcma device (the one named by `device`, or the one
    /// whose kernel-reported virtio id is gcma) before mapping it. Other devices are never
    /// unbound.
    pub unbind: bool,
}

/// Why the device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No gcma device among the candidates.
    #[error(transparent)]
    NotFound(#[from] NotFound),
    /// Unbinding the kernel driver failed.
    #[error("cannot unbind {device} from kernel driver {driver}: {source}")]
    Unbind {
        /// sysfs device name.
        device: String,
        /// Driver name.
        driver: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Adds what a scan knows (sysfs name, bound driver) to an operator-given window.
fn enrich(mut c: Candidate, found: &ScanResult) -> Candidate {
    if let Some(s) = found.candidates.iter().find(|s| s.base == c.base) {
        c.sysfs_name.clone_from(&s.sysfs_name);
        c.bound_driver.clone_from(&s.bound_driver);
        c.kernel_device_id = s.kernel_device_id;
    }
    c
}

/// Writes the device name to `<root>/sys/bus/platform/drivers/<driver>/unbind`.
pub fn unbind(root: &Path, device: &str, driver: &str) -> std::io::Result<()> {
    let p = root
        .join("sys/bus/platform/drivers")
        .join(driver)
        .join("unbind");
    std::fs::write(p, device)
}

/// Finds the gcma device and maps its registers through `/dev/mem`.
pub fn open_registers(opts: &FindOptions) -> Result<(Candidate, DevMemWindow), OpenError> {
    open_registers_with(opts, |c| DevMemWindow::open(c.base, c.len_bytes))
}

/// The candidates `opts` asks for: the scan of `opts.root`, or only the operator's device
/// (with what the scan knows of it).
pub fn candidates(opts: &FindOptions) -> ScanResult {
    let found = scan(&opts.root);
    match &opts.device {
        Some(d) => ScanResult {
            candidates: vec![enrich(d.clone(), &found)],
            unlocated: Vec::new(),
            notes: Vec::new(),
        },
        None => found,
    }
}

/// With `opts.unbind`, unbinds the kernel driver from the gcma device among `found` (the
/// operator's device, or the one the kernel reports as virtio-gcma; no other device is touched)
/// and clears its `bound_driver`; without it, warns that a bound device may not map.
pub fn release_gcma(opts: &FindOptions, found: &mut ScanResult) -> Result<(), OpenError> {
    for c in &mut found.candidates {
        let (Some(dev), Some(drv)) = (&c.sysfs_name, &c.bound_driver) else {
            continue;
        };
        // Only the gcma device is ever unbound: the operator named it, or the kernel says so.
        let is_gcma = opts.device.is_some() || c.kernel_device_id == Some(VIRTIO_ID_GCMA);
        if !is_gcma {
            continue;
        }
        if opts.unbind {
            unbind(&opts.root, dev, drv).map_err(|source| OpenError::Unbind {
                device: dev.clone(),
                driver: drv.clone(),
                source,
            })?;
            info!("unbound {dev} from kernel driver {drv}");
            c.bound_driver = None;
        } else {
            warn!(
                "{dev} at {:#x} is bound to kernel driver {drv}; if mapping or probing fails, \
                 pass --unbind",
                c.base
            );
        }
    }
    Ok(())
}

/// [`open_registers`] with another way to map a window (tests map a fake register file).
pub fn open_registers_with<W, F>(opts: &FindOptions, open: F) -> Result<(Candidate, W), OpenError>
where
    W: super::regs::RegisterWindow,
    F: FnMut(&Candidate) -> Result<W, MapError>,
{
    let mut found = candidates(opts);
    release_gcma(opts, &mut found)?;
    let (c, w) = find_gcma(found, open)?;
    info!("virtio-gcma device at {c}");
    Ok((c, w))
}

/// The agent of a real guest: the driver over `/dev/mem` registers and pagemap DMA memory.
pub type LinuxAgent = Agent<LinuxHal<DevMemWindow, PagemapDma>>;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenAgentError {
    /// DMA memory is unusable (e.g. physical addresses hidden).
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// The device was not found or not mapped.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Setting the device up failed.
    #[error("setting up the virtio-gcma device at {base:#x} failed: {source}")]
    Driver {
        /// Register base.
        base: u64,
        /// The driver's error.
        source: crate::Error,
    },
    /// Setting the device up failed for want of DMA memory.
    #[error("setting up the virtio-gcma device at {base:#x} failed: {source}")]
    DriverDma {
        /// Register base.
        base: u64,
        /// Why no DMA memory was available.
        source: DmaError,
    },
}

/// Checks that DMA memory is usable (before any device is touched), finds and maps the device,
/// and sets it up.
pub fn open_agent(find: &FindOptions, huge: HugePages) -> Result<LinuxAgent, OpenAgentError> {
    let dma = PagemapDma::new(huge)?;
    let sink = dma.error_sink();
    let (c, regs) = open_registers(find)?;
    Agent::new(LinuxHal::new(regs, dma)).map_err(|source| {
        let dma_err = sink.lock().unwrap_or_else(|p| p.into_inner()).take();
        match (source, dma_err) {
            (crate::Error::DmaExhausted(_), Some(e)) => OpenAgentError::DriverDma {
                base: c.base,
                source: e,
            },
            (source, _) => OpenAgentError::Driver {
                base: c.base,
                source,
            },
        }
    })
}
