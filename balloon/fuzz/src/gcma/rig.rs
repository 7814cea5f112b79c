//! One VM of the virtio-gcma target: a `GcmaDevice` on the shared pool behind a virtio-mmio
//! transport, memfd guest memory, the harness driver, and the test grant mapper.
//!
//! Everything the target knows about the device and its grant seam (`GrantMapper`) is in this
//! file, so that a change of that seam is adapted here and nowhere else. The target itself acts
//! through the driver (registers and guest memory) and reads grants only through the methods
//! below.

use std::sync::{Arc, Mutex};

use balloon::gcma::testing::MemfdGrantMapper;
use balloon::gcma::GcmaDevice;
use balloon::testing::{memfd_guest_memory, CountingIrq, Driver};
use balloon::transport::{GuestMemoryMmap, MmioTransport};
use gcma_host::api::{ClientId, ContigGrant, GcmaBackend, PAGE_SIZE};

/// The transport, shared between the driver and the checks.
pub type Shared = Arc<Mutex<MmioTransport<GcmaDevice>>>;

/// Guest-physical base of every VM's grant window (each VM has its own address space, so the
/// windows of the two VMs coincide on purpose: a gpa of one VM means nothing to the other).
pub const WINDOW_GPA: u64 = 1 << 32;
/// Guest RAM per VM.
pub const GUEST_MEM: u64 = 192 << 10;
/// Where the driver puts its rings.
pub const RINGS: std::ops::Range<u64> = 0..(64 << 10);

/// One VM.
pub struct Vm {
    /// The transport (for the device's own view in checks).
    pub t: Shared,
    mem: Arc<GuestMemoryMmap>,
    /// The guest's driver.
    pub d: Driver<Shared>,
    mapper: Arc<MemfdGrantMapper>,
    window_pages: u64,
}

impl Vm {
    /// A VM named `name` whose device is a client of `pool`, with a grant window of
    /// `window_pages` pages.
    pub fn new(pool: Arc<dyn GcmaBackend>, name: &str, window_pages: u64) -> Vm {
        let mem = Arc::new(memfd_guest_memory(&[(0, GUEST_MEM as usize)]).expect("guest memory"));
        let mapper = Arc::new(MemfdGrantMapper::new(
            pool,
            WINDOW_GPA,
            window_pages * PAGE_SIZE as u64,
        ));
        let dev = GcmaDevice::new(mapper.window(), name);
        let t = Arc::new(Mutex::new(MmioTransport::new(
            dev,
            mem.clone(),
            Arc::new(CountingIrq::default()),
        )));
        let d = Driver::new(t.clone(), mem.clone(), RINGS);
        Vm {
            t,
            mem,
            d,
            mapper,
            window_pages,
        }
    }

    /// A fresh driver (its rings start again at the bottom of `RINGS`).
    pub fn restart_driver(&mut self) {
        self.d = Driver::new(self.t.clone(), self.mem.clone(), RINGS);
    }

    /// Pages in the grant window.
    pub fn window_pages(&self) -> u64 {
        self.window_pages
    }

    /// The pool client the device is now.
    pub fn client(&self) -> ClientId {
        self.t.lock().expect("transport").device().client()
    }

    /// Grants as the device's grant window records them: `(gpa, grant)`.
    pub fn device_grants(&self) -> Vec<(u64, ContigGrant)> {
        self.t.lock().expect("transport").device().window().grants()
    }

    /// Grants as mapped into the guest: `(gpa, grant)`.
    pub fn mapped(&self) -> Vec<(u64, ContigGrant)> {
        self.mapper
            .mapped()
            .into_iter()
            .map(|m| (m.gpa, m.grant))
            .collect()
    }

    /// Reads grant bytes as the guest sees them.
    pub fn read_grant(&self, gpa: u64, out: &mut [u8]) -> bool {
        self.mapper.read(gpa, out).is_some()
    }

    /// Writes grant bytes as the guest would.
    pub fn write_grant(&self, gpa: u64, data: &[u8]) -> bool {
        self.mapper.write(gpa, data).is_some()
    }
}
