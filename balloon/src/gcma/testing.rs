//! A grant window for tests (feature `test-utils`): grants are mapped into this process exactly as
//! the VMM maps them ([`HostWindow`] + [`PoolMapping`]), so a test can read and write a grant's
//! "guest" bytes and see exactly what the pool holds. Map and unmap failures can be injected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gcma_host::api::{ContigGrant, GcmaBackend};

use super::host_window::{HostWindow, PoolMapping};
use super::window::{GrantWindow, WindowMapper, WindowRange};

/// One grant as mapped: where it appeared in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedGrant {
    /// Guest-physical address of the grant.
    pub gpa: u64,
    /// Its offset inside shared-memory region 0 (what `ALLOC_CONTIG` answers and `FREE_CONTIG`
    /// takes).
    pub offset: u64,
    /// The grant.
    pub grant: ContigGrant,
}

/// A [`PoolMapping`] whose map and unmap can be told to fail.
#[derive(Debug)]
struct FaultyMapping {
    inner: PoolMapping,
    fail_next_map: AtomicBool,
    fail_unmaps: AtomicBool,
}

impl WindowMapper for FaultyMapping {
    fn map(&self, offset: u64, pool_offset: u64, len: u64) -> std::io::Result<()> {
        if self.fail_next_map.swap(false, Ordering::SeqCst) {
            return Err(std::io::Error::other("injected map failure"));
        }
        self.inner.map(offset, pool_offset, len)
    }

    fn unmap(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if self.fail_unmaps.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected unmap failure"));
        }
        self.inner.unmap(offset, len)
    }
}

/// A grant window at a fixed guest-physical base whose grants are mapped into this process.
pub struct MemfdGrantMapper {
    window: Arc<GrantWindow>,
    mapping: Arc<FaultyMapping>,
}

impl std::fmt::Debug for MemfdGrantMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemfdGrantMapper")
            .field("window", &self.window)
            .finish()
    }
}

impl MemfdGrantMapper {
    /// A window of `len_bytes` at `gpa` (both page-aligned) for grants of `pool`.
    ///
    /// # Panics
    /// If the window cannot be reserved or the range is not page-aligned (test set-up errors).
    pub fn new(pool: Arc<dyn GcmaBackend>, gpa: u64, len_bytes: u64) -> Self {
        let host = Arc::new(HostWindow::reserve(len_bytes).expect("reserving the test window"));
        let inner = PoolMapping::new(host, pool.memfd()).expect("duplicating the pool memfd");
        let mapping = Arc::new(FaultyMapping {
            inner,
            fail_next_map: AtomicBool::new(false),
            fail_unmaps: AtomicBool::new(false),
        });
        let window = Arc::new(
            GrantWindow::new(WindowRange { gpa, len_bytes }, pool, mapping.clone())
                .expect("test window range"),
        );
        MemfdGrantMapper { window, mapping }
    }

    /// The grant window (hand it to a `GcmaDevice`).
    pub fn window(&self) -> Arc<GrantWindow> {
        Arc::clone(&self.window)
    }

    /// Makes the next map fail with a host error (to test `MAP_FAILED`).
    pub fn fail_next_map(&self) {
        self.mapping.fail_next_map.store(true, Ordering::SeqCst);
    }

    /// Makes every unmap fail while `fail` is set.
    pub fn fail_unmaps(&self, fail: bool) {
        self.mapping.fail_unmaps.store(fail, Ordering::SeqCst);
    }

    /// The grants the guest holds now, in address order.
    pub fn mapped(&self) -> Vec<MappedGrant> {
        self.window
            .grants()
            .into_iter()
            .map(|(gpa, grant)| MappedGrant {
                gpa,
                offset: gpa - self.window.range().gpa,
                grant,
            })
            .collect()
    }

    /// The host address of `len` guest-physical bytes at `gpa`, if they lie in one grant mapped
    /// in the window (held by the guest, or stuck after a failed unmap).
    fn locate(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let mut all = self.window.grants();
        all.extend(self.window.stuck());
        let (start, grant) = all
            .into_iter()
            .filter(|(g, _)| *g <= gpa)
            .max_by_key(|(g, _)| *g)?;
        let end = gpa.checked_add(len as u64)?;
        if end > start + grant.len_bytes() {
            return None;
        }
        let offset = usize::try_from(gpa - self.window.range().gpa).ok()?;
        Some((self.mapping.inner.host().host_addr() + offset) as *mut u8)
    }

    /// Reads guest-physical bytes of a mapped grant (through the mapping, as the guest would),
    /// stuck grants included. `None` if the range is not inside one mapped grant.
    pub fn read(&self, gpa: u64, out: &mut [u8]) -> Option<()> {
        let host = self.locate(gpa, out.len())?;
        // SAFETY: `locate` checked that the bytes lie inside a grant mapped in the window (shared,
        // readable pool memory); a copy through raw pointers forms no reference to it.
        unsafe { std::ptr::copy_nonoverlapping(host, out.as_mut_ptr(), out.len()) };
        Some(())
    }

    /// Writes guest-physical bytes of a mapped grant. `None` if not inside one mapped grant.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Option<()> {
        let host = self.locate(gpa, data.len())?;
        // SAFETY: as in `read`; the mapping is writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), host, data.len()) };
        Some(())
    }
}
