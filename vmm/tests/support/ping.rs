//! The "ping" guest shared by `tests/ioeventfd.rs` and `examples/notify_bench.rs` (which includes
//! this file with `#[path]`): a null virtio device that returns every buffer at once, the host-side
//! driver set-up of its one queue, and a hand-assembled ring-3 guest that kicks it and polls the
//! used ring; plus a minimal static-ELF builder for such code.

use std::sync::Arc;

use balloon::error::DeviceError;
use balloon::transport::drain::{drain_queue, Completion, Drained};
use balloon::transport::mmio::{regs, MmioTransport};
use balloon::transport::{
    Activation, GuestMemoryMmap, InterruptHandle, Queue, VirtioDevice, VIRTIO_F_VERSION_1,
};
use vmm::abi::{EXIT_BASE, EXIT_REG_CODE, PAYLOAD_LOAD_ADDR};

/// Where the ping queue lives in guest RAM (clear of boot structures, payload and stack).
pub const RING: u64 = 0x80_0000;
pub const QUEUE_SIZE: u16 = 16;
const DESC: u64 = RING;
const AVAIL: u64 = RING + 0x100;
const USED: u64 = RING + 0x800;
const BUFFER: u64 = RING + 0xc00;

/// A device with one queue that returns every buffer at once.
#[derive(Default)]
pub struct NullDevice {
    running: Option<(Arc<GuestMemoryMmap>, Queue, InterruptHandle)>,
    /// Posts the buffer again (bumps the avail index) for every buffer served, as another vCPU
    /// of a hostile guest could while the device works: the ring is never empty.
    repost: bool,
}

impl NullDevice {
    /// A null device that re-posts every buffer it serves (see [`flood_once_code`]).
    pub fn reposting() -> Self {
        NullDevice {
            running: None,
            repost: true,
        }
    }
}

impl VirtioDevice for NullDevice {
    fn device_id(&self) -> u32 {
        0xfff0
    }
    fn device_features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self, _features: u64) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, a: Activation) -> Result<(), DeviceError> {
        let queue = a
            .queues
            .into_iter()
            .next()
            .ok_or(DeviceError::QueueNotReady(0))?;
        self.running = Some((a.mem, queue, a.interrupt));
        Ok(())
    }
    fn process_queue(&mut self, index: u16, budget: u32) -> Result<Drained, DeviceError> {
        let (mem, queue, interrupt) = self.running.as_mut().ok_or(DeviceError::NotActivated)?;
        // Every chain goes straight back, with nothing written.
        let mut descs = Vec::new();
        let repost = self.repost;
        let mem_ref: &GuestMemoryMmap = mem;
        drain_queue(queue, mem, interrupt, &mut descs, budget, |_| {
            if repost {
                use vm_memory::{Bytes, GuestAddress};
                let idx: u16 = mem_ref.read_obj(GuestAddress(AVAIL + 2)).unwrap();
                mem_ref
                    .write_obj(idx.wrapping_add(1), GuestAddress(AVAIL + 2))
                    .unwrap();
            }
            Completion::Used(0)
        })
        .map_err(|source| DeviceError::BrokenRing {
            queue: index,
            source,
        })
    }
    fn reset(&mut self) {
        self.running = None;
    }
}

/// Drives the transport's registers from the host as a driver would, so the guest only has to
/// kick and poll: negotiate VERSION_1, one queue of [`QUEUE_SIZE`] at [`RING`], DRIVER_OK.
pub fn host_driver_setup(t: &mut MmioTransport<NullDevice>, mem: &GuestMemoryMmap) {
    use vm_memory::{Bytes, GuestAddress};
    let mut w = |off: u64, v: u32| t.write(off, &v.to_le_bytes());
    w(regs::STATUS, 1);
    w(regs::STATUS, 3);
    w(regs::DRIVER_FEATURES_SEL, 1);
    w(regs::DRIVER_FEATURES, (VIRTIO_F_VERSION_1 >> 32) as u32);
    w(regs::STATUS, 11);
    w(regs::QUEUE_SEL, 0);
    w(regs::QUEUE_NUM, u32::from(QUEUE_SIZE));
    w(regs::QUEUE_DESC_LOW, DESC as u32);
    w(regs::QUEUE_DESC_HIGH, 0);
    w(regs::QUEUE_DRIVER_LOW, AVAIL as u32);
    w(regs::QUEUE_DRIVER_HIGH, 0);
    w(regs::QUEUE_DEVICE_LOW, USED as u32);
    w(regs::QUEUE_DEVICE_HIGH, 0);
    w(regs::QUEUE_READY, 1);
    w(regs::STATUS, 15);
    assert!(t.is_activated(), "null device did not activate");
    // Descriptor 0: an 8-byte device-readable buffer; every avail slot offers it.
    let mut desc = [0u8; 16];
    desc[..8].copy_from_slice(&BUFFER.to_le_bytes());
    desc[8..12].copy_from_slice(&8u32.to_le_bytes());
    mem.write_slice(&desc, GuestAddress(DESC)).unwrap();
    mem.write_slice(&[0u8; 4 + 2 * QUEUE_SIZE as usize], GuestAddress(AVAIL))
        .unwrap();
}

/// A tiny assembler for the ping guest: bytes plus rel8 jump patching.
struct Code {
    bytes: Vec<u8>,
}

impl Code {
    fn emit(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    fn movabs(&mut self, opcode: u8, imm: u64) -> &mut Self {
        self.emit(&[0x48, opcode]).emit(&imm.to_le_bytes())
    }
    fn here(&self) -> usize {
        self.bytes.len()
    }
    /// Emits a short jump with opcode `op` to `target` (a known label).
    fn jump_back(&mut self, op: u8, target: usize) -> &mut Self {
        let rel = target as i64 - (self.here() as i64 + 2);
        self.emit(&[op, i8::try_from(rel).unwrap() as u8])
    }
}

/// The ping guest: `for i in 1..=rsi { avail.idx = i; *QueueNotify = 0; while used.idx != i {} }`,
/// then writes exit code 0.
pub fn ping_code(notify_addr: u64) -> Vec<u8> {
    ping_batch_code(notify_addr, 1)
}

/// The ping guest posting `batch` (1..=127) buffers per kick: `rsi` times, `avail.idx +=
/// batch; *QueueNotify = 0; while used.idx != avail.idx {}`, then exit code 0. One kick per
/// batch, as a driver does: the device must serve the whole batch without another one.
pub fn ping_batch_code(notify_addr: u64, batch: u8) -> Vec<u8> {
    assert!((1..=127).contains(&batch));
    let mut c = Code { bytes: Vec::new() };
    c.emit(&[0x48, 0x89, 0xf1]) // mov rcx, rsi (kick count)
        .emit(&[0x31, 0xc0]) // xor eax, eax
        .movabs(0xbb, AVAIL + 2) // mov rbx, &avail.idx
        .movabs(0xba, USED + 2) // mov rdx, &used.idx
        .movabs(0xbf, notify_addr); // mov rdi, &QueueNotify
    let top = c.here();
    c.emit(&[0x48, 0x39, 0xc8]); // cmp rax, rcx
    let jae_at = c.here();
    c.emit(&[0x73, 0x00]) // jae done (patched)
        .emit(&[0xff, 0xc0]) // inc eax (the kick count)
        .emit(&[0x89, 0xc6]) // mov esi, eax
        .emit(&[0x6b, 0xf6, batch]) // imul esi, esi, batch (the avail index)
        .emit(&[0x66, 0x89, 0x33]) // mov [rbx], si
        .emit(&[0xc7, 0x07, 0, 0, 0, 0]); // mov dword [rdi], 0  (kick queue 0)
    let spin = c.here();
    c.emit(&[0xf3, 0x90]) // pause
        .emit(&[0x66, 0x39, 0x32]) // cmp [rdx], si
        .jump_back(0x75, spin) // jne spin
        .jump_back(0xeb, top); // jmp top
    let done = c.here();
    c.bytes[jae_at + 1] = u8::try_from(done - (jae_at + 2)).unwrap();
    c.movabs(0xbf, EXIT_BASE + EXIT_REG_CODE) // mov rdi, &exit
        .emit(&[0xc7, 0x07, 0, 0, 0, 0]) // mov dword [rdi], 0
        .emit(&[0xeb, 0xfe]); // jmp $ (not reached: the exit write ends the run)
    c.bytes
}

/// The guest of a [`NullDevice::reposting`] device: posts one buffer, kicks once and spins
/// forever. The device keeps re-posting what it serves, so the ring never empties (as with a
/// hostile guest whose other vCPUs post as fast as the device serves, but deterministic). Never
/// exits: stop it from the host.
pub fn flood_once_code(notify_addr: u64) -> Vec<u8> {
    let mut c = Code { bytes: Vec::new() };
    c.movabs(0xbb, AVAIL + 2) // mov rbx, &avail.idx
        .movabs(0xbf, notify_addr) // mov rdi, &QueueNotify
        .emit(&[0x66, 0xc7, 0x03, 1, 0]) // mov word [rbx], 1
        .emit(&[0xc7, 0x07, 0, 0, 0, 0]); // mov dword [rdi], 0  (the only kick)
    let top = c.here();
    c.emit(&[0xf3, 0x90]) // pause
        .jump_back(0xeb, top); // jmp top
    c.bytes
}

/// A static ELF with `code` as its only (executable) segment, entered at its first byte.
pub fn elf(code: &[u8]) -> Vec<u8> {
    let hdrs = 64 + 56;
    let mut elf = vec![0u8; hdrs];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes());
    elf[18..20].copy_from_slice(&62u16.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[24..32].copy_from_slice(&(PAYLOAD_LOAD_ADDR + hdrs as u64).to_le_bytes());
    elf[32..40].copy_from_slice(&64u64.to_le_bytes());
    elf[52..54].copy_from_slice(&64u16.to_le_bytes());
    elf[54..56].copy_from_slice(&56u16.to_le_bytes());
    elf[56..58].copy_from_slice(&1u16.to_le_bytes());
    let len = (hdrs + code.len()) as u64;
    let ph = &mut elf[64..];
    ph[..4].copy_from_slice(&1u32.to_le_bytes());
    ph[4..8].copy_from_slice(&5u32.to_le_bytes());
    ph[16..24].copy_from_slice(&PAYLOAD_LOAD_ADDR.to_le_bytes());
    ph[24..32].copy_from_slice(&PAYLOAD_LOAD_ADDR.to_le_bytes());
    ph[32..40].copy_from_slice(&len.to_le_bytes());
    ph[40..48].copy_from_slice(&len.to_le_bytes());
    ph[48..56].copy_from_slice(&4096u64.to_le_bytes());
    elf.extend_from_slice(code);
    elf
}
