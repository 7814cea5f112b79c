//! A guest cannot make the VMM write without bound: console output to a file (as `vmm run
//! --serial-file` does) is capped in rate and in total, and what is dropped is counted.

mod support;

use vm_memory::{Bytes, GuestAddress};
use vmm::abi::{CONSOLE_BASE, CONSOLE_LEN_SHIFT, CONSOLE_REG_WRITE};
use vmm::devices::output::DEFAULT_OUTPUT_BYTES_PER_S;
use vmm::devices::OutputLimits;
use vmm::kvm::vm::SharedBuffer;
use vmm::limits::GuestLimits;
use vmm::payloads::BuiltinPayload;
use vmm::{MicroVm, SerialOutput, VmConfig, VmOutcome};

/// The largest string one batched-console write prints.
const CHUNK: u64 = (1 << 16) - 1;

#[test]
fn a_guest_printing_32_mib_gets_at_most_its_rate_into_the_serial_file() {
    let Some(hv) = support::hypervisor_or_skip("guest output flood") else {
        return;
    };
    let path = std::env::temp_dir().join(format!("vmm-guest-output-{}", std::process::id()));
    let config = VmConfig {
        mem_bytes: 16 << 20,
        serial: SerialOutput::File(path.clone()),
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&hv, &config).unwrap();
    // What a payload does: fill a buffer in its RAM and hand it to the batched console, over and
    // over (each write is one MMIO exit; here the test issues the exits itself).
    let gpa = 8 << 20;
    vm.ram()
        .memory()
        .write_slice(&vec![b'#'; CHUNK as usize], GuestAddress(gpa))
        .unwrap();
    let t0 = std::time::Instant::now();
    let writes = (32 << 20) / CHUNK;
    for _ in 0..writes {
        let v = gpa | (CHUNK << CONSOLE_LEN_SHIFT);
        assert!(vm
            .bus_mut()
            .write(CONSOLE_BASE + CONSOLE_REG_WRITE, &v.to_le_bytes()));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let written = std::fs::metadata(&path).unwrap().len();
    std::fs::remove_file(&path).unwrap();
    // One second's burst, then the rate, for as long as the flood lasted.
    let bound = DEFAULT_OUTPUT_BYTES_PER_S as f64 * (1.0 + elapsed) + 1.0;
    assert!(
        (written as f64) <= bound,
        "{written} bytes reached the serial file in {elapsed:.3} s (at most {bound:.0})"
    );
    let s = vm.output_counters().snapshot();
    assert_eq!(s.written_bytes, written);
    assert_eq!(
        s.written_bytes + s.dropped_rate_bytes + s.dropped_total_bytes,
        writes * CHUNK
    );
}

#[test]
fn a_payloads_output_past_the_total_is_cut_with_a_note() {
    let Some(hv) = support::hypervisor_or_skip("guest output total") else {
        return;
    };
    let out = SharedBuffer::default();
    let config = VmConfig {
        serial: SerialOutput::Buffer(out.clone()),
        limits: GuestLimits {
            output: OutputLimits {
                max_bytes: 16,
                ..OutputLimits::default()
            },
            ..GuestLimits::default()
        },
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&hv, &config).unwrap();
    vm.load_payload(BuiltinPayload::Hello.elf()).unwrap();
    assert_eq!(
        support::run(&mut vm).unwrap(),
        VmOutcome::Exited { code: 0 }
    );
    let text = String::from_utf8(out.contents()).unwrap();
    assert!(text.starts_with("hello from a rin"), "{text}");
    assert!(
        text.contains("console output reached its limit of 16 bytes"),
        "{text}"
    );
    assert!(!text.contains("via uart"), "{text}");
    let s = vm.output_counters().snapshot();
    assert_eq!(s.written_bytes, 16);
    assert!(s.dropped_total_bytes > 0);
}
