//! The Linux guest kind's platform under KVM, with tiny hand-assembled kernels entered through
//! the 64-bit boot protocol: COM1 at port 0x3f8, power-off through the ACPI sleep registers,
//! and emulation failures reported with the RIP and the instruction bytes (never a hang).

mod support;

use support::linux::{boot_file, kvm_pvm, linux_config, tiny_kernel, TINY_KERNEL_ENTRY};
use vmm::kvm::vm::SharedBuffer;
use vmm::{MicroVm, VmOutcome};

/// `mov dx, PORT`.
fn mov_dx(port: u16) -> Vec<u8> {
    let mut v = vec![0x66, 0xba];
    v.extend(port.to_le_bytes());
    v
}

/// `mov al, VALUE; out dx, al`.
fn out_al(value: u8) -> [u8; 3] {
    [0xb0, value, 0xee]
}

const UD2: [u8; 2] = [0x0f, 0x0b];
/// `lock cmpxchg16b [rsi]` (rsi holds the zero page's address at entry: 16-byte aligned).
const LOCK_CMPXCHG16B_RSI: [u8; 5] = [0xf0, 0x48, 0x0f, 0xc7, 0x0e];

#[test]
fn kernel_writes_to_com1_and_powers_off_through_the_sleep_registers() {
    let Some(hv) = support::hypervisor_or_skip("linux com1 and power-off") else {
        return;
    };
    let mut code = mov_dx(0x3f8);
    for b in b"ok\n" {
        code.extend(out_al(*b));
    }
    code.extend(mov_dx(0x600));
    // SLP_TYP 5 (the DSDT's \_S5_) << 2 | SLP_EN.
    code.extend(out_al((5 << 2) | (1 << 5)));
    code.extend(UD2);
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &linux_config(64, &out)).unwrap();
    let guest = vm
        .load_linux(&boot_file("com1-poweroff", &tiny_kernel(&code), "quiet"))
        .unwrap();
    assert_eq!(guest.kernel.entry, TINY_KERNEL_ENTRY);
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );
    assert_eq!(out.contents(), b"ok\n");
    assert_eq!(vm.stats().port_io, 4, "three bytes and the sleep command");
}

#[test]
fn sleep_states_other_than_s5_and_unclaimed_ports_do_not_stop_the_guest() {
    let Some(hv) = support::hypervisor_or_skip("linux other sleep states") else {
        return;
    };
    // S3 request (ignored), a write to a port nobody decodes, then `in al, dx` from it (reads
    // 0xff) written to COM1, then a triple fault (ud2 with no IDT).
    let mut code = mov_dx(0x600);
    code.extend(out_al((3 << 2) | (1 << 5)));
    code.extend(mov_dx(0x80));
    code.extend(out_al(0x42));
    code.push(0xec); // in al, dx
    code.extend(mov_dx(0x3f8));
    code.push(0xee); // out dx, al
    let ud2_at = TINY_KERNEL_ENTRY + code.len() as u64;
    code.extend(UD2);
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &linux_config(64, &out)).unwrap();
    vm.load_linux(&boot_file("s3-ports", &tiny_kernel(&code), ""))
        .unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Shutdown { rip: ud2_at }
    );
    assert_eq!(out.contents(), [0xff]);
}

#[test]
fn instruction_fetch_from_mmio_is_an_emulation_failure_not_a_hang() {
    let Some(hv) = support::hypervisor_or_skip("linux emulation failure (mmio fetch)") else {
        return;
    };
    // mov eax, 0xd0000000; jmp rax: code in the MMIO window, which no memory backs, so KVM
    // must emulate the fetch and cannot.
    let target = vmm::abi::MMIO_BASE;
    let mut code = vec![0xb8];
    code.extend((target as u32).to_le_bytes());
    code.extend([0xff, 0xe0]);
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &linux_config(64, &out)).unwrap();
    vm.load_linux(&boot_file("mmio-fetch", &tiny_kernel(&code), ""))
        .unwrap();
    match support::run(&mut vm).unwrap() {
        VmOutcome::EmulationFailure { rip, insn, .. } => {
            assert_eq!(rip, target);
            assert_eq!(insn.to_string(), "unreadable", "no memory at {rip:#x}");
        }
        other => panic!("expected an emulation failure, got {other:?}"),
    }
}

#[test]
fn cmpxchg16b_stops_the_guest_with_its_rip_and_bytes_on_kvm_pvm() {
    let Some(hv) = support::hypervisor_or_skip("linux emulation failure (cmpxchg16b)") else {
        return;
    };
    let mut code = LOCK_CMPXCHG16B_RSI.to_vec();
    let ud2_at = TINY_KERNEL_ENTRY + code.len() as u64;
    code.extend(UD2);
    let out = SharedBuffer::default();
    let mut vm = MicroVm::new(&hv, &linux_config(64, &out)).unwrap();
    vm.load_linux(&boot_file("cmpxchg16b", &tiny_kernel(&code), ""))
        .unwrap();
    let outcome = support::run(&mut vm).unwrap();
    if kvm_pvm() {
        // What stops Debian's kernel in SLUB's set-up on these hosts when CX16 is not hidden.
        match outcome {
            VmOutcome::EmulationFailure { rip, insn, .. } => {
                assert_eq!(rip, TINY_KERNEL_ENTRY);
                assert_eq!(&insn.as_slice()[..5], &LOCK_CMPXCHG16B_RSI);
                assert_eq!(&insn.as_slice()[5..7], &UD2, "bytes after it follow");
            }
            other => panic!("expected an emulation failure, got {other:?}"),
        }
    } else {
        // Hardware executes it; the ud2 after it faults.
        assert_eq!(outcome, VmOutcome::Shutdown { rip: ud2_at });
    }
}
