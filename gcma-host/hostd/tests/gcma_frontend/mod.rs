//! A vhost-user frontend for virtio-gcma tests, standing where a VMM stands: it speaks the
//! vhost-user messages `balloon/PROTOCOL.md` lists to a `gcma-hostd` socket, shares a sealed
//! memfd as guest memory, maps every `SHMEM_MAP` for real into a reserved host window (the grant
//! window, at guest-physical `WINDOW_GPA`) and turns the guest driver's register accesses into
//! messages and eventfd kicks. The guest driver is `guest_agent`'s, unchanged: [`VhostHal`] is its
//! [`Hal`], a minimal virtio-mmio register file over this frontend.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use balloon::gcma::HostWindow;
use guest_agent::mmio::*;
use guest_agent::{DmaExhausted, DmaRegion, Hal};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserMMap, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest-physical base of shared-memory region 0 (as `vmm` places it).
pub const WINDOW_GPA: u64 = 1 << 32;
/// Guest RAM of the test guest.
pub const GUEST_MEM: usize = 8 << 20;
const PAGE: u64 = 4096;

/// What the frontend did with the daemon's `SHMEM_MAP`/`SHMEM_UNMAP` requests.
#[derive(Default)]
pub struct ShmemLog {
    /// Maps acknowledged.
    pub maps: AtomicU64,
    /// Unmaps acknowledged.
    pub unmaps: AtomicU64,
    /// Requests refused.
    pub refused: AtomicU64,
    /// Refuse every map while set (reply -EIO).
    pub fail_maps: AtomicBool,
    /// Refuse every unmap while set (reply -EIO).
    pub fail_unmaps: AtomicBool,
    /// Hold every map request unanswered while set (a VMM that does not reply).
    pub stall_maps: AtomicBool,
    /// Mapped ranges: window offset → (length, pool offset).
    pub mapped: Mutex<BTreeMap<u64, (u64, u64)>>,
}

/// The frontend side of the backend request channel: maps pool memory into the host window.
pub struct ShmemHandler {
    window: Arc<HostWindow>,
    /// What it did.
    pub log: Arc<ShmemLog>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl VhostUserFrontendReqHandler for ShmemHandler {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let (shmid, off, fd_off, len) = (req.shmid, req.shm_offset, req.fd_offset, req.len);
        while self.log.stall_maps.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if self.log.fail_maps.load(Ordering::SeqCst) || shmid != 0 {
            self.log.refused.fetch_add(1, Ordering::SeqCst);
            return Err(eio());
        }
        let mut mapped = self.log.mapped.lock().unwrap();
        let end = off.checked_add(len).ok_or_else(eio)?;
        if mapped
            .range(..end)
            .next_back()
            .is_some_and(|(&o, &(l, _))| o + l > off)
        {
            self.log.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        // SAFETY: the fd is valid for the duration of this call (owned by the handler).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) };
        self.window.map_fd(off, fd, fd_off, len)?;
        mapped.insert(off, (len, fd_off));
        self.log.maps.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let (off, len) = (req.shm_offset, req.len);
        if self.log.fail_unmaps.load(Ordering::SeqCst) {
            self.log.refused.fetch_add(1, Ordering::SeqCst);
            return Err(eio());
        }
        let mut mapped = self.log.mapped.lock().unwrap();
        if mapped.get(&off).map(|m| m.0) != Some(len) {
            self.log.refused.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.window.unmap(off, len)?;
        mapped.remove(&off);
        self.log.unmaps.fetch_add(1, Ordering::SeqCst);
        Ok(0)
    }
}

/// Guest memory: a memfd sealed against shrinking and growing, mapped in this process.
pub fn sealed_guest_memory(len: usize) -> (GuestMemoryMmap, File) {
    let fd = rustix::fs::memfd_create(
        "gcma-test-guest",
        rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING,
    )
    .unwrap();
    rustix::fs::ftruncate(&fd, len as u64).unwrap();
    rustix::fs::fcntl_add_seals(
        &fd,
        rustix::fs::SealFlags::SHRINK | rustix::fs::SealFlags::GROW,
    )
    .unwrap();
    let file = File::from(fd);
    let mem = GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(0),
        len,
        Some(FileOffset::new(file.try_clone().unwrap(), 0)),
    )])
    .unwrap();
    (mem, file)
}

#[derive(Clone, Copy, Default)]
struct QueueRegs {
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
    ready: bool,
}

/// A connected frontend.
pub struct VhostFrontend {
    /// The vhost-user connection.
    pub fe: Frontend,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    mem_file: File,
    /// The grant window as mapped here.
    pub window: Arc<HostWindow>,
    /// Window bytes (from `GET_SHMEM_CONFIG`).
    pub window_len: u64,
    /// The `SHMEM_*` requests seen.
    pub shmem: Arc<ShmemLog>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    errs: Vec<EventFd>,
    channel: Option<JoinHandle<()>>,
    features: u64,
    main: UnixStream,
}

impl VhostFrontend {
    /// Connects to `socket` and runs the start-up sequence up to `GET_CONFIG`.
    pub fn connect(socket: &Path) -> io::Result<Self> {
        let stream = UnixStream::connect(socket)?;
        Self::from_stream(stream)
    }

    /// The start-up sequence on an already connected stream.
    pub fn from_stream(stream: UnixStream) -> io::Result<Self> {
        let main = stream.try_clone()?;
        let mut fe = Frontend::from_stream(stream, 3);
        fe.set_owner().map_err(io::Error::other)?;
        let features = fe.get_features().map_err(io::Error::other)?;
        let proto = fe.get_protocol_features().map_err(io::Error::other)?;
        let want = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::SHMEM;
        assert!(proto.contains(want), "daemon offers {proto:?}");
        fe.set_protocol_features(want).map_err(io::Error::other)?;
        // Every message asks for an acknowledgement: a refusal is an error here, not silence.
        fe.set_hdr_flags(vhost::vhost_user::message::VhostUserHeaderFlag::NEED_REPLY);
        let cfg = fe.get_shmem_config().map_err(io::Error::other)?;
        assert_eq!(cfg.nregions, 1);
        let window_len = cfg.memory_sizes[0];
        let window = Arc::new(HostWindow::reserve(window_len)?);
        let shmem = Arc::new(ShmemLog::default());
        let handler = Arc::new(ShmemHandler {
            window: window.clone(),
            log: shmem.clone(),
        });
        let mut req = FrontendReqHandler::new(handler).map_err(io::Error::other)?;
        req.set_reply_ack_flag(true);
        fe.set_backend_request_fd(&req.get_tx_raw_fd())
            .map_err(io::Error::other)?;
        // A refused request is answered (non-zero) and the channel goes on; only a broken or
        // closed socket ends it.
        let channel = std::thread::spawn(move || loop {
            use vhost::vhost_user::Error as E;
            match req.handle_request() {
                Ok(_) => {}
                Err(
                    E::Disconnected
                    | E::PartialMessage
                    | E::SocketBroken(_)
                    | E::SocketError(_)
                    | E::SocketConnect(_),
                ) => break,
                Err(_) => {}
            }
        });
        let (mem, mem_file) = sealed_guest_memory(GUEST_MEM);
        let mk = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Ok(VhostFrontend {
            fe,
            mem,
            mem_file,
            window,
            window_len,
            shmem,
            kicks: (0..3).map(|_| mk()).collect(),
            calls: (0..3).map(|_| mk()).collect(),
            errs: (0..3).map(|_| mk()).collect(),
            channel: Some(channel),
            features,
            main,
        })
    }

    /// The device's configuration space.
    pub fn config(&mut self) -> Vec<u8> {
        let (_, buf) = self
            .fe
            .get_config(0, 24, VhostUserConfigFlags::empty(), &[0u8; 24])
            .unwrap();
        buf
    }

    fn user_addr(&self, gpa: u64) -> u64 {
        self.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64
    }

    /// What `DRIVER_OK` makes the VMM send: features, memory table, the three rings.
    fn start(&mut self, driver_features: u64, queues: &[QueueRegs; 3]) -> io::Result<()> {
        self.fe
            .set_features(driver_features | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
            .map_err(io::Error::other)?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: GUEST_MEM as u64,
            userspace_addr: self.user_addr(0),
            mmap_offset: 0,
            mmap_handle: self.mem_file.as_raw_fd(),
        };
        self.fe.set_mem_table(&[region]).map_err(io::Error::other)?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            self.fe
                .set_vring_num(i, q.num as u16)
                .map_err(io::Error::other)?;
            let cfg = VringConfigData {
                queue_max_size: 256,
                queue_size: q.num as u16,
                flags: 0,
                desc_table_addr: self.user_addr(q.desc),
                used_ring_addr: self.user_addr(q.device),
                avail_ring_addr: self.user_addr(q.driver),
                log_addr: None,
            };
            self.fe.set_vring_addr(i, &cfg).map_err(io::Error::other)?;
            self.fe.set_vring_base(i, 0).map_err(io::Error::other)?;
            self.fe
                .set_vring_call(i, &self.calls[i])
                .map_err(io::Error::other)?;
            self.fe
                .set_vring_kick(i, &self.kicks[i])
                .map_err(io::Error::other)?;
            self.fe
                .set_vring_err(i, &self.errs[i])
                .map_err(io::Error::other)?;
            self.fe
                .set_vring_enable(i, true)
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// What a guest reset makes the VMM send.
    fn stop(&mut self) -> io::Result<()> {
        for i in 0..3 {
            self.fe.get_vring_base(i).map_err(io::Error::other)?;
        }
        Ok(())
    }

    /// Closes the main socket (both directions) while the backend request channel goes on being
    /// served: a VMM that lost its connection but still runs its guest.
    pub fn shutdown_main_socket(&self) {
        let _ = self.main.shutdown(std::net::Shutdown::Both);
    }

    /// Whether the daemon reported a broken ring on queue `i`.
    pub fn ring_error(&self, i: usize) -> bool {
        self.errs[i].read().is_ok()
    }

    /// Reads `out.len()` bytes of the grant window at guest-physical `gpa` (through this
    /// process's mapping, as the guest would).
    pub fn read_grant(&self, gpa: u64, out: &mut [u8]) {
        let off = gpa - WINDOW_GPA;
        assert!(off + out.len() as u64 <= self.window_len);
        // SAFETY: inside the reserved window; the caller reads only mapped grants (an unmapped
        // part would fault, failing the test loudly).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.window.host_addr() + off as usize) as *const u8,
                out.as_mut_ptr(),
                out.len(),
            )
        };
    }

    /// Writes grant bytes at guest-physical `gpa`.
    pub fn write_grant(&self, gpa: u64, data: &[u8]) {
        let off = gpa - WINDOW_GPA;
        assert!(off + data.len() as u64 <= self.window_len);
        // SAFETY: as in `read_grant`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.window.host_addr() + off as usize) as *mut u8,
                data.len(),
            )
        };
    }

    /// A guest driver's view of this frontend.
    pub fn hal(self) -> VhostHal {
        VhostHal {
            fe: self,
            status: 0,
            dev_sel: 0,
            drv_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: [QueueRegs::default(); 3],
            shm_sel: 0,
            next_dma: 0x10000,
            swallow_kicks: false,
        }
    }
}

impl Drop for VhostFrontend {
    fn drop(&mut self) {
        // Closing the main socket makes the daemon close the channel: its thread ends.
        let _ = self.fe.reset_owner();
        drop(self.channel.take());
    }
}

/// A virtio-mmio register file over a [`VhostFrontend`]: what the VMM's transport does.
pub struct VhostHal {
    /// The frontend.
    pub fe: VhostFrontend,
    status: u32,
    dev_sel: u32,
    drv_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: [QueueRegs; 3],
    shm_sel: u32,
    next_dma: u64,
    /// Drop the guest's `QueueNotify` writes (a driver that posts without kicking).
    pub swallow_kicks: bool,
}

fn set_half(v: &mut u64, high: bool, x: u32) {
    if high {
        *v = (*v & 0xffff_ffff) | (u64::from(x) << 32);
    } else {
        *v = (*v & !0xffff_ffff) | u64::from(x);
    }
}

// SAFETY: DMA pages come once each from a bump pointer over the frontend's guest memory (one
// mapping that lives as long as the HAL), zeroed before being handed out; the daemon sees them
// at the same guest-physical addresses through the memory table.
unsafe impl Hal for VhostHal {
    fn mmio_read32(&mut self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize).copied();
        match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => u32::from(0x4743u16),
            VENDOR_ID => 0x554d_4551,
            DEVICE_FEATURES => {
                let f = self.fe.features & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
                if self.dev_sel == 0 {
                    f as u32
                } else {
                    (f >> 32) as u32
                }
            }
            QUEUE_NUM_MAX => q.map_or(0, |_| 256),
            QUEUE_READY => q.map_or(0, |q| u32::from(q.ready)),
            STATUS => self.status,
            INTERRUPT_STATUS => 0,
            CONFIG_GENERATION => 0,
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => {
                let (len, base) = if self.shm_sel == 0 {
                    (self.fe.window_len, WINDOW_GPA)
                } else {
                    (u64::MAX, u64::MAX)
                };
                match offset {
                    SHM_LEN_LOW => len as u32,
                    SHM_LEN_HIGH => (len >> 32) as u32,
                    SHM_BASE_LOW => base as u32,
                    _ => (base >> 32) as u32,
                }
            }
            o if o >= CONFIG => {
                let cfg = self.fe.config();
                let i = (o - CONFIG) as usize;
                let mut b = [0u8; 4];
                for (k, x) in b.iter_mut().enumerate() {
                    *x = cfg.get(i + k).copied().unwrap_or(0);
                }
                u32::from_le_bytes(b)
            }
            _ => 0,
        }
    }

    fn mmio_write32(&mut self, offset: u64, value: u32) {
        let sel = self.queue_sel as usize;
        match offset {
            DEVICE_FEATURES_SEL => self.dev_sel = value,
            DRIVER_FEATURES_SEL => self.drv_sel = value,
            DRIVER_FEATURES => set_half(&mut self.driver_features, self.drv_sel == 1, value),
            QUEUE_SEL => self.queue_sel = value,
            SHM_SEL => self.shm_sel = value,
            QUEUE_NOTIFY if self.swallow_kicks => {}
            QUEUE_NOTIFY => {
                if let Some(k) = self.fe.kicks.get(value as usize) {
                    k.write(1).unwrap();
                }
            }
            STATUS => {
                if value == 0 {
                    if self.status & STATUS_DRIVER_OK != 0 {
                        self.fe.stop().unwrap();
                    }
                    self.queues = [QueueRegs::default(); 3];
                    self.status = 0;
                    return;
                }
                if value & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0 {
                    let q = self.queues;
                    if let Err(e) = self.fe.start(self.driver_features, &q) {
                        panic!("vhost-user start-up failed: {e}");
                    }
                }
                self.status = value;
            }
            _ => {
                let Some(q) = self.queues.get_mut(sel) else {
                    return;
                };
                match offset {
                    QUEUE_NUM => q.num = value,
                    QUEUE_READY => q.ready = value != 0,
                    QUEUE_DESC_LOW | QUEUE_DESC_HIGH => {
                        set_half(&mut q.desc, offset == QUEUE_DESC_HIGH, value)
                    }
                    QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH => {
                        set_half(&mut q.driver, offset == QUEUE_DRIVER_HIGH, value)
                    }
                    QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => {
                        set_half(&mut q.device, offset == QUEUE_DEVICE_HIGH, value)
                    }
                    _ => {}
                }
            }
        }
    }

    fn dma_alloc(&mut self, pages: usize) -> Result<DmaRegion, DmaExhausted> {
        let len = pages as u64 * PAGE;
        if self.next_dma + len > GUEST_MEM as u64 {
            return Err(DmaExhausted { pages });
        }
        let gpa = self.next_dma;
        self.next_dma += len;
        let host = self
            .fe
            .mem
            .get_host_address(GuestAddress(gpa))
            .map_err(|_| DmaExhausted { pages })?;
        // SAFETY: `gpa..gpa + len` lies inside the one guest memory region (checked above).
        unsafe { std::ptr::write_bytes(host, 0, len as usize) };
        Ok(DmaRegion {
            vaddr: NonNull::new(host).ok_or(DmaExhausted { pages })?,
            gpa,
            pages,
        })
    }

    fn wait_hint(&mut self, _polls: u64) -> bool {
        // The device runs in another thread (or process): let it.
        std::thread::yield_now();
        false
    }
}
