//! The ACPI tables a Linux guest gets, checked with Debian's `acpica-tools`: every table
//! decompiles without errors or warnings (`iasl -d`), the decompiled DSDT names each virtio-mmio
//! device with the register window and interrupt the VMM serves there, and compiling the DSDT
//! back gives our AML byte for byte.

mod support;

use support::linux::{decompile, dsdt_devices, iasl, linux_vm_with_devices, scratch_dir};
use vmm::abi::VIRTIO_MMIO_SIZE;
use vmm::kvm::linux::acpi::{OEM_ID, OEM_TABLE_ID};
use vmm::kvm::linux::layout::{IOAPIC_ADDR, LAPIC_ADDR};
use vmm::kvm::linux::VirtioMmioDevice;
use vmm::kvm::vm::SharedBuffer;

fn u32_at(bus: &vmm::MmioBus, addr: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.read(addr, &mut b), "nothing serves {addr:#x}");
    u32::from_le_bytes(b)
}

#[test]
fn tables_decompile_cleanly_and_the_dsdt_names_the_devices_we_serve() {
    let Some(hv) = support::hypervisor_or_skip("acpi tables") else {
        return;
    };
    let Some(iasl) = e2e_tests::linux_guest::or_skip("acpi tables", iasl()) else {
        return;
    };
    let out = SharedBuffer::default();
    let mut built = linux_vm_with_devices(&hv, 64, &out);
    let tables = built.vm.acpi_tables().unwrap();
    let dir = scratch_dir("acpi-tables");
    tables.dump(&dir).unwrap();

    // Every table iasl can disassemble, disassembled without a complaint. (iasl 20200925, in
    // Debian 12, has no disassembler for the RSDP: its checksums and pointer are checked by the
    // unit tests, and by Linux in the boot test.)
    let dsl = |name: &str| decompile(&iasl, &dir, name).unwrap_or_else(|e| panic!("{e}"));
    let (xsdt, facp, dsdt, apic) = (dsl("xsdt"), dsl("facp"), dsl("dsdt"), dsl("apic"));
    let oem = String::from_utf8_lossy(&OEM_ID).to_string();
    let oem_table = String::from_utf8_lossy(&OEM_TABLE_ID).to_string();
    for text in [&xsdt, &facp, &dsdt, &apic] {
        assert!(text.contains(&oem) && text.contains(&oem_table), "{text}");
    }

    // The DSDT's devices are the ones the VMM serves: same windows, same interrupts, and a
    // virtio-mmio device of the expected ID answers at each window.
    let gcma = built.gcma.as_ref().unwrap();
    let balloon = built.balloon.as_ref().unwrap();
    let served = [
        (gcma.base, gcma.irq.gsi(), gcma_proto::gcma::VIRTIO_ID_GCMA),
        (balloon.base, balloon.irq.gsi(), 5),
    ];
    let found = dsdt_devices(&dsdt);
    assert_eq!(found.len(), served.len(), "{dsdt}");
    let bus = built.vm.bus_mut();
    for (n, (dev, (base, gsi, id))) in found.iter().zip(served).enumerate() {
        assert_eq!(dev.name, VirtioMmioDevice::acpi_name(n));
        assert_eq!(dev.hid, "LNRO0005");
        assert_eq!(dev.window, (base, VIRTIO_MMIO_SIZE), "{}", dev.name);
        assert_eq!(dev.gsi, gsi, "{}", dev.name);
        assert_eq!(
            u32_at(bus, base),
            0x7472_6976,
            "magic \"virt\" at {base:#x}"
        );
        assert_eq!(u32_at(bus, base + 4), 2, "virtio-mmio version 2");
        assert_eq!(u32_at(bus, base + 8), id, "device id at {base:#x}");
    }
    assert_eq!(
        built
            .vm
            .virtio_windows()
            .iter()
            .map(|w| (w.base, w.gsi))
            .collect::<Vec<_>>(),
        served.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>()
    );
    assert!(
        dsdt.contains("EisaId (\"PNP0501\")") && dsdt.contains("0x03F8"),
        "{dsdt}"
    );
    assert!(dsdt.contains("Name (_S5, Package"), "{dsdt}");

    // The MADT: the local APIC and the in-kernel IOAPIC where KVM has them.
    assert!(
        apic.contains(&format!("Local Apic Address : {LAPIC_ADDR:08X}")),
        "{apic}"
    );
    assert!(apic.contains("[I/O APIC]"), "{apic}");
    assert!(
        apic.contains(&format!("Address : {IOAPIC_ADDR:08X}")),
        "{apic}"
    );
    // The FADT: hardware-reduced, the DSDT where we put it, the sleep registers.
    assert!(facp.contains("Hardware Reduced (V5) : 1"), "{facp}");
    let dsdt_addr = tables.table("DSDT").unwrap().addr;
    assert!(
        facp.contains(&format!("DSDT Address : {dsdt_addr:016X}")),
        "{facp}"
    );
    for port in ["0000000000000600", "0000000000000601"] {
        assert!(facp.contains(&format!("Address : {port}")), "{facp}");
    }
    // The XSDT points at the FADT and the MADT.
    for sig in ["FACP", "APIC"] {
        let addr = tables.table(sig).unwrap().addr;
        assert!(xsdt.contains(&format!("{addr:016X}")), "{sig} in {xsdt}");
    }

    // Compiled back, the decompiled DSDT is our AML.
    let status = std::process::Command::new(&iasl)
        .args(["-p", "recompiled", "dsdt.dsl"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let ours = &tables.table("DSDT").unwrap().bytes;
    let back = std::fs::read(dir.join("recompiled.aml")).unwrap();
    assert_eq!(&back[36..], &ours[36..], "AML body");
    std::fs::remove_dir_all(&dir).unwrap();
}
