//! Assembling a microVM with the project's devices, in one place: `vmm run` and the demo both
//! build their VMs with [`VmBuilder`].
//!
//! The order is fixed: the VM and its grant window; the grant window bound to the pool; the
//! virtio-gcma device (one pool client) and the virtio-balloon in the next virtio slots; their
//! ioeventfds on a device thread if asked; the [`VmHandle`] the control API and `/metrics` see.

use std::path::PathBuf;
use std::sync::Arc;

use balloon::gcma::GcmaDevice;
use balloon::transport::VirtioDevice;
use balloon::virtio_balloon::{Balloon, BalloonConfig};
use gcma_host::pool::Pool;

use crate::api::runtime::{GcmaParts, VmHandle};
use crate::devices::vhost_gcma::{GcmaKick, VhostGcma, VhostGcmaLink};
use crate::devices::VirtioSlot;
use crate::error::{Error, Result};
use crate::kvm::events::{DeviceEventLoop, DeviceSubscriber, QueueNotifier};
use crate::kvm::{Hypervisor, MicroVm, VmConfig};

/// What to build.
#[derive(Debug)]
pub struct VmBuilder {
    name: String,
    config: VmConfig,
    payload: String,
    gcma: Option<Arc<Pool>>,
    gcma_socket: Option<PathBuf>,
    balloon: Option<BalloonConfig>,
    ioeventfd: bool,
    gcma_kick: GcmaKick,
}

/// A built microVM, not running yet: load a payload into [`BuiltVm::vm`] and run it.
pub struct BuiltVm {
    /// The VM.
    pub vm: MicroVm,
    /// What the control API and `/metrics` see of it.
    pub handle: Arc<VmHandle>,
    /// The virtio-gcma device's slot, if any.
    pub gcma: Option<VirtioSlot<GcmaDevice>>,
    /// The balloon's slot, if any.
    pub balloon: Option<VirtioSlot<Balloon>>,
    /// The vhost-user gcma device's slot and link, if the pool is `gcma-hostd`'s.
    pub vhost_gcma: Option<(VirtioSlot<VhostGcma>, VhostGcmaLink)>,
    /// The device thread serving ioeventfd notifications, if asked for. Stop it after the VM.
    pub events: Option<DeviceEventLoop>,
}

impl VmBuilder {
    /// A VM called `name` (in logs, the API and metrics) built from `config`, that will run
    /// `payload` (a label for the API).
    pub fn new(name: impl Into<String>, config: VmConfig, payload: impl Into<String>) -> Self {
        VmBuilder {
            name: name.into(),
            config,
            payload: payload.into(),
            gcma: None,
            gcma_socket: None,
            balloon: None,
            ioeventfd: false,
            gcma_kick: GcmaKick::default(),
        }
    }

    /// Adds a virtio-gcma device drawing from `pool` (the config needs a grant window).
    pub fn gcma(mut self, pool: Arc<Pool>) -> Self {
        self.gcma = Some(pool);
        self
    }

    /// Adds a virtio-gcma device served by `gcma-hostd` over vhost-user at `socket`, instead of
    /// an embedded pool. The grant window is sized to the daemon's (its shared-memory region 0),
    /// rounded up to 2 MiB; `VmConfig::grant_window_bytes` is ignored.
    pub fn gcma_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.gcma_socket = Some(socket.into());
        self
    }

    /// How the guest's notifications of the `gcma_socket` device reach the daemon (KVM
    /// ioeventfds by default; independent of [`ioeventfd`](Self::ioeventfd), which is about the
    /// devices this process serves).
    pub fn gcma_kick(mut self, kick: GcmaKick) -> Self {
        self.gcma_kick = kick;
        self
    }

    /// Adds a virtio-balloon.
    pub fn balloon(mut self, cfg: BalloonConfig) -> Self {
        self.balloon = Some(cfg);
        self
    }

    /// Serves the virtio devices' queue notifications through ioeventfds on a device thread
    /// instead of on the vCPU thread at each MMIO exit.
    pub fn ioeventfd(mut self, on: bool) -> Self {
        self.ioeventfd = on;
        self
    }

    /// Builds the VM and its devices.
    pub fn build(self, hv: &Hypervisor) -> Result<BuiltVm> {
        if self.gcma.is_some() && self.config.grant_window_bytes == 0 {
            return Err(Error::Config(
                "a virtio-gcma device needs a grant window (grant_window_bytes)".into(),
            ));
        }
        if self.gcma.is_some() && self.gcma_socket.is_some() {
            return Err(Error::Config(
                "a VM has one virtio-gcma device: an embedded pool or gcma-hostd's, not both"
                    .into(),
            ));
        }
        let mut config = self.config.clone();
        let vhost = match &self.gcma_socket {
            Some(path) => {
                let (device, link) = VhostGcma::connect(path, &self.name)?;
                config.grant_window_bytes = link.shm_len().div_ceil(2 << 20) * (2 << 20);
                Some((device, link))
            }
            None => None,
        };
        let mut vm = MicroVm::new(hv, &config)?;
        let vhost_gcma = match vhost {
            Some((mut device, link)) => {
                let (Some(range), Some(host)) = (vm.grant_window_range(), vm.grant_host_window())
                else {
                    return Err(Error::Config(
                        "a vhost-user gcma device needs the one-slot grant window".into(),
                    ));
                };
                device.set_window(range, host);
                let slot = vm.add_virtio_device(device)?;
                link.set_transport(&slot.transport);
                if self.gcma_kick == GcmaKick::Ioeventfd {
                    if let Err(e) = link.register_ioeventfds(vm.vm_fd(), slot.base) {
                        log::warn!(
                            "virtio-gcma {}: {e}; kicks go through the VMM instead",
                            self.name
                        );
                    }
                }
                Some((slot, link))
            }
            None => None,
        };
        let mut notifiers: Vec<DeviceSubscriber> = Vec::new();
        let mut parts = None;
        let gcma = match &self.gcma {
            Some(pool) => {
                let window = vm.bind_grant_window(pool.clone())?;
                let device = GcmaDevice::new(window.clone(), self.name.clone());
                let metrics = device.metrics();
                let slot = vm.add_virtio_device(device)?;
                if self.ioeventfd {
                    notifiers.push(notifier(&vm, &slot)?);
                }
                parts = Some(GcmaParts {
                    metrics,
                    window,
                    pool: pool.clone(),
                });
                Some(slot)
            }
            None => None,
        };
        let balloon = match self.balloon {
            Some(cfg) => {
                let slot = vm.add_virtio_device(Balloon::new(cfg))?;
                if self.ioeventfd {
                    notifiers.push(notifier(&vm, &slot)?);
                }
                Some(slot)
            }
            None => None,
        };
        let events = if notifiers.is_empty() {
            None
        } else {
            Some(DeviceEventLoop::start(notifiers)?)
        };
        let handle = Arc::new(
            VmHandle::new(
                self.name,
                self.config.mem_bytes,
                self.payload,
                vm.exit_counters(),
                vm.stop_handle(),
                balloon.clone(),
                parts,
            )
            .with_guest_io(vm.log_limiter().clone(), vm.output_counters().clone()),
        );
        Ok(BuiltVm {
            vm,
            handle,
            gcma,
            balloon,
            vhost_gcma,
            events,
        })
    }
}

/// Queue notifications of the device in `slot` through ioeventfds.
fn notifier<D: VirtioDevice + 'static>(
    vm: &MicroVm,
    slot: &VirtioSlot<D>,
) -> Result<DeviceSubscriber> {
    Ok(Box::new(QueueNotifier::new(
        vm.shared_vm_fd(),
        slot.base,
        slot.transport.clone(),
    )?))
}
