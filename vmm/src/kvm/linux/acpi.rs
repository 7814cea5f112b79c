//! The ACPI tables of a Linux guest, built with rust-vmm's `acpi_tables` crate: RSDP → XSDT →
//! FACP (hardware-reduced, with sleep registers so the guest can power off) → DSDT, and the
//! MADT (APIC). The DSDT describes what the guest cannot probe for: each virtio-mmio device
//! (`LNRO0005`, the ID Linux's virtio_mmio driver matches) with its register window and
//! interrupt, the COM1 UART, and the `\_S5_` sleep type.
//!
//! The tables live in [`ACPI_AREA`], RSDP first; [`AcpiTables::dump`] writes each as a file for
//! `iasl -d` (Debian's `acpica-tools`).

use std::path::Path;

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Name, Package, ResourceTemplate, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_AREA, COM1_IRQ, COM1_PORT, IOAPIC_ADDR, LAPIC_ADDR, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use crate::error::{Error, Result};

/// The OEM ID in every table (Linux prints it: `ACPI: RSDP ... (v02 GCMAVM)`).
pub const OEM_ID: [u8; 6] = *b"GCMAVM";
/// The OEM table ID in every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"GCMA-VMM";
/// The OEM revision in every table.
pub const OEM_REVISION: u32 = 1;
/// The ACPI hardware ID of a virtio-mmio device (Linux's `virtio_mmio_acpi_match`).
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// `SLP_TYP` for S5 (soft off) in `\_S5_`, written to the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;

/// Devices the DSDT can name (`VR00` to `VRFF`).
pub const MAX_DEVICES: usize = 256;
/// MADT flag: the PC's dual 8259 PICs are present (KVM's in-kernel irqchip has them).
const MADT_PCAT_COMPAT: u32 = 1;
/// FADT IA-PC boot architecture flags: no VGA, no CMOS RTC (and, by omission, no 8042).
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const IAPC_BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

/// A virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioMmioDevice {
    /// Guest-physical base of its register window.
    pub base: u64,
    /// Window length in bytes.
    pub len_bytes: u64,
    /// Its interrupt (a GSI of the IOAPIC; edge-triggered, active high).
    pub gsi: u32,
    /// Its virtio device ID (not in the DSDT: the guest's driver reads it from the registers;
    /// kept for logs and reports).
    pub device_id: u32,
}

impl VirtioMmioDevice {
    /// The AML device name of the device in slot `n` (`\_SB_.VR00`, `VR01`, ...).
    pub fn acpi_name(n: usize) -> String {
        format!("VR{n:02X}")
    }
}

/// One table, where it goes in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTable {
    /// The signature (`RSDP` for the root pointer, whose real signature is `RSD PTR `).
    pub signature: String,
    /// Guest-physical address.
    pub addr: u64,
    /// The table's bytes, checksummed.
    pub bytes: Vec<u8>,
}

/// A guest's ACPI tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// RSDP, XSDT, FACP, DSDT, APIC, in address order.
    pub tables: Vec<AcpiTable>,
}

fn to_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn u32_of(len: u64) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::Config(format!("{len:#x} does not fit an ACPI field")))
}

/// The DSDT's AML body: `Scope (\_SB_)` with the virtio-mmio devices and COM1, then `\_S5_`.
fn dsdt_body(devices: &[VirtioMmioDevice]) -> Result<Vec<u8>> {
    let mut sb = Vec::new();
    for (n, d) in devices.iter().enumerate() {
        let hid = Name::new("_HID".into(), &VIRTIO_MMIO_HID);
        let uid = Name::new("_UID".into(), &u32_of(n as u64)?);
        // Coherent DMA: the device reads and writes guest memory directly.
        let cca = Name::new("_CCA".into(), &aml::ONE);
        let window = Memory32Fixed::new(true, u32_of(d.base)?, u32_of(d.len_bytes)?);
        let irq = Interrupt::new(true, true, false, false, d.gsi);
        let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&window, &irq]));
        let name = VirtioMmioDevice::acpi_name(n);
        sb.extend(to_bytes(&Device::new(
            name.as_str().into(),
            vec![&hid, &uid, &cca, &crs],
        )));
    }
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0501"));
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let ports = IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let irq = Interrupt::new(true, true, false, false, COM1_IRQ);
    let crs = Name::new("_CRS".into(), &ResourceTemplate::new(vec![&ports, &irq]));
    sb.extend(to_bytes(&Device::new(
        "COM1".into(),
        vec![&hid, &uid, &crs],
    )));
    // `_SB_` at the root of the DSDT is `\_SB_`; written without the root prefix, as iasl
    // writes it, so that the disassembled and recompiled DSDT is the same AML.
    let mut body = aml::Scope::raw("_SB_".into(), sb);
    // \_S5_: Package { SLP_TYPa }, what Linux writes to the sleep control register for S5.
    body.extend(to_bytes(&Name::new(
        "_S5_".into(),
        &Package::new(vec![&S5_SLEEP_TYPE]),
    )));
    Ok(body)
}

/// Sets the 32-bit field at `offset` of a table and fixes its checksum (byte 9).
fn patch_u32(table: &mut [u8], offset: usize, value: u32) {
    table[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    table[9] = 0;
    let sum = table.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    table[9] = sum.wrapping_neg();
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

impl AcpiTables {
    /// Builds the tables for a guest with the given virtio-mmio devices (one vCPU with APIC ID 0,
    /// the in-kernel IOAPIC with GSIs 0-23, COM1).
    pub fn build(devices: &[VirtioMmioDevice]) -> Result<AcpiTables> {
        if devices.len() > MAX_DEVICES {
            return Err(Error::Config(format!(
                "{} virtio devices: the DSDT names at most {MAX_DEVICES}",
                devices.len()
            )));
        }
        let rsdp_addr = ACPI_AREA.start;
        let xsdt_addr = align16(rsdp_addr + Rsdp::len() as u64);
        // XSDT: header + two 8-byte entries (FACP, APIC).
        let facp_addr = align16(xsdt_addr + 36 + 2 * 8);
        let facp_len = acpi_tables::fadt::FADT::len() as u64;
        let dsdt_addr = align16(facp_addr + facp_len);

        let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        dsdt.append_slice(&dsdt_body(devices)?);
        let dsdt = dsdt.as_slice().to_vec();
        let madt_addr = align16(dsdt_addr + dsdt.len() as u64);

        let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
            .dsdt_64(dsdt_addr)
            .flag(Flags::HwReducedAcpi)
            // Power and sleep buttons, if any, are control-method devices (there are none).
            .flag(Flags::PwrButton)
            .flag(Flags::SlpButton);
        fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_NO_VGA | IAPC_BOOT_ARCH_NO_CMOS_RTC).into();
        fadt.sleep_control_reg = GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(SLEEP_CONTROL_PORT),
        );
        fadt.sleep_status_reg = GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(SLEEP_STATUS_PORT),
        );
        let facp = to_bytes(&fadt.finalize());

        let mut madt = MADT::new(
            OEM_ID,
            OEM_TABLE_ID,
            OEM_REVISION,
            LocalInterruptController::Address(u32_of(LAPIC_ADDR)?),
        );
        madt.add_structure(ProcessorLocalApic::new(0, 0, EnabledStatus::Enabled));
        madt.add_structure(IoApic::new(0, u32_of(IOAPIC_ADDR)?, 0));
        let mut apic = to_bytes(&madt);
        // The crate leaves the MADT flags zero; the PICs are there.
        patch_u32(&mut apic, 40, MADT_PCAT_COMPAT);

        let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
        xsdt.add_entry(facp_addr);
        xsdt.add_entry(madt_addr);
        let xsdt = to_bytes(&xsdt);
        let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

        let tables = vec![
            AcpiTable {
                signature: "RSDP".into(),
                addr: rsdp_addr,
                bytes: rsdp,
            },
            AcpiTable {
                signature: "XSDT".into(),
                addr: xsdt_addr,
                bytes: xsdt,
            },
            AcpiTable {
                signature: "FACP".into(),
                addr: facp_addr,
                bytes: facp,
            },
            AcpiTable {
                signature: "DSDT".into(),
                addr: dsdt_addr,
                bytes: dsdt,
            },
            AcpiTable {
                signature: "APIC".into(),
                addr: madt_addr,
                bytes: apic,
            },
        ];
        let end = tables.iter().map(|t| t.addr + t.bytes.len() as u64).max();
        if end.is_some_and(|e| e > ACPI_AREA.end) {
            return Err(Error::Config(format!(
                "the ACPI tables of {} virtio devices do not fit below {:#x}",
                devices.len(),
                ACPI_AREA.end
            )));
        }
        Ok(AcpiTables { tables })
    }

    /// The RSDP's guest-physical address (`boot_params.acpi_rsdp_addr`).
    pub fn rsdp_addr(&self) -> u64 {
        ACPI_AREA.start
    }

    /// The table with this signature.
    pub fn table(&self, signature: &str) -> Option<&AcpiTable> {
        self.tables.iter().find(|t| t.signature == signature)
    }

    /// Writes every table to guest memory.
    pub fn write(&self, mem: &GuestMemoryMmap) -> Result<()> {
        for t in &self.tables {
            mem.write_slice(&t.bytes, GuestAddress(t.addr))
                .map_err(|e| Error::Memory(format!("writing ACPI table {}: {e}", t.signature)))?;
        }
        Ok(())
    }

    /// Writes each table to `dir/<signature>.dat` (`rsdp.dat`, `xsdt.dat`, `facp.dat`,
    /// `dsdt.dat`, `apic.dat`), the names `acpixtract` gives, for `iasl -d`. Creates `dir`.
    pub fn dump(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            op: "creating the ACPI dump directory",
            source,
        })?;
        for t in &self.tables {
            let path = dir.join(format!("{}.dat", t.signature.to_ascii_lowercase()));
            std::fs::write(&path, &t.bytes).map_err(|source| Error::Io {
                op: "writing an ACPI table file",
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn devices() -> Vec<VirtioMmioDevice> {
        (0..2)
            .map(|n| VirtioMmioDevice {
                base: 0xd010_0000 + n * 0x1000,
                len_bytes: 0x1000,
                gsi: 5 + n as u32,
                device_id: 5,
            })
            .collect()
    }

    #[test]
    fn tables_chain_from_the_rsdp_and_checksum_to_zero() {
        let t = AcpiTables::build(&devices()).unwrap();
        for table in &t.tables {
            assert_eq!(sum(&table.bytes), 0, "{} checksum", table.signature);
            assert!(ACPI_AREA.contains(&table.addr));
            if table.signature != "RSDP" {
                assert_eq!(&table.bytes[0..4], table.signature.as_bytes());
                assert_eq!(u32_at(&table.bytes, 4) as usize, table.bytes.len());
                assert_eq!(&table.bytes[10..16], &OEM_ID);
            }
        }
        let rsdp = t.table("RSDP").unwrap();
        assert_eq!(&rsdp.bytes[0..8], b"RSD PTR ");
        assert_eq!(rsdp.bytes[15], 2, "revision 2: XSDT");
        assert_eq!(sum(&rsdp.bytes[..20]), 0, "ACPI 1.0 checksum");
        let xsdt = t.table("XSDT").unwrap();
        assert_eq!(u64_at(&rsdp.bytes, 24), xsdt.addr);
        let facp = t.table("FACP").unwrap();
        let apic = t.table("APIC").unwrap();
        assert_eq!(u64_at(&xsdt.bytes, 36), facp.addr);
        assert_eq!(u64_at(&xsdt.bytes, 44), apic.addr);
        // FADT: X_DSDT at 140, flags at 112 with HW_REDUCED_ACPI (bit 20).
        assert_eq!(u64_at(&facp.bytes, 140), t.table("DSDT").unwrap().addr);
        assert_ne!(u32_at(&facp.bytes, 112) & (1 << 20), 0);
        // MADT: local APIC address, PCAT_COMPAT, then the local APIC and the IOAPIC entries.
        assert_eq!(u32_at(&apic.bytes, 36), LAPIC_ADDR as u32);
        assert_eq!(u32_at(&apic.bytes, 40), MADT_PCAT_COMPAT);
        assert_eq!(&apic.bytes[44..46], &[0, 8]);
        assert_eq!(&apic.bytes[52..54], &[1, 12]);
        assert_eq!(u32_at(&apic.bytes, 56), IOAPIC_ADDR as u32);
        // Non-overlapping, in order.
        for w in t.tables.windows(2) {
            assert!(w[0].addr + w[0].bytes.len() as u64 <= w[1].addr);
        }
    }

    #[test]
    fn dsdt_names_every_device_with_its_window_and_interrupt() {
        let t = AcpiTables::build(&devices()).unwrap();
        let dsdt = &t.table("DSDT").unwrap().bytes;
        let find = |needle: &[u8]| dsdt.windows(needle.len()).position(|w| w == needle);
        for (n, d) in devices().iter().enumerate() {
            assert!(find(VirtioMmioDevice::acpi_name(n).as_bytes()).is_some());
            // Memory32Fixed descriptor: 0x86, length 9, read-write, base, length.
            let mut m = vec![0x86, 9, 0, 1];
            m.extend((d.base as u32).to_le_bytes());
            m.extend((d.len_bytes as u32).to_le_bytes());
            assert!(find(&m).is_some(), "window of device {n}");
            // Extended interrupt descriptor: 0x89, length 6, consumer|edge, one GSI.
            let mut i = vec![0x89, 6, 0, 0b11, 1];
            i.extend(d.gsi.to_le_bytes());
            assert!(find(&i).is_some(), "interrupt of device {n}");
        }
        assert!(find(b"LNRO0005").is_some());
        assert!(find(b"_S5_").is_some());
    }

    #[test]
    fn too_many_devices_do_not_fit() {
        let many: Vec<_> = (0..MAX_DEVICES as u64 + 1)
            .map(|n| VirtioMmioDevice {
                base: 0xd010_0000 + n * 0x1000,
                len_bytes: 0x1000,
                gsi: 5,
                device_id: 5,
            })
            .collect();
        assert!(AcpiTables::build(&many).is_err());
    }
}
