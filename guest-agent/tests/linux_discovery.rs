//! Device discovery and probing of the Linux agent, on the host: a fixture sysfs/proc tree, a
//! fake register file mapped the way `/dev/mem` is, and byte-array register windows.

#![cfg(all(feature = "std", target_os = "linux"))]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use balloon::gcma::proto::VIRTIO_ID_GCMA;
use guest_agent::linux::device::{open_registers_with, FindOptions};
use guest_agent::linux::discovery::{parse_device_arg, scan, Source};
use guest_agent::linux::locate::{find_gcma, Finding};
use guest_agent::linux::regs::{
    probe, DevMemWindow, MapError, ProbeError, RegisterWindow, VecWindow, REG_DEVICE_ID,
    REG_STATUS, VIRTIO_MMIO_MAGIC,
};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("guest-agent-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn write(&self, rel: &str, data: &[u8]) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest that has a block device on the kernel command line, two ACPI devices (one bound to
/// the kernel's virtio-mmio driver), a device-tree node and a device whose address is unknown.
fn fixture() -> Scratch {
    let s = Scratch::new("discovery");
    s.write(
        "proc/cmdline",
        b"console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 root=/dev/vda\n",
    );
    s.write(
        "proc/iomem",
        b"00100000-3fffffff : System RAM\n\
          a0000000-a00001ff : LNRO0005:00\n\
          \x20 a0000000-a00001ff : virtio-mmio\n\
          a0000200-a00003ff : LNRO0005:01\n\
          d0000000-d0000fff : virtio-mmio.0\n",
    );
    let dev = "sys/bus/platform/devices";
    s.write(&format!("{dev}/LNRO0005:00/modalias"), b"acpi:LNRO0005:\n");
    s.write(&format!("{dev}/LNRO0005:01/modalias"), b"acpi:LNRO0005:\n");
    s.write(
        &format!("{dev}/virtio-mmio.0/modalias"),
        b"platform:virtio-mmio\n",
    );
    s.write(
        &format!("{dev}/c0000000.virtio_mmio/of_node/compatible"),
        b"virtio,mmio\0",
    );
    s.write(
        &format!("{dev}/c0000000.virtio_mmio/of_node/reg"),
        &[0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0],
    );
    s.write(&format!("{dev}/LNRO0005:07/modalias"), b"acpi:LNRO0005:\n");
    s.write(
        &format!("{dev}/serial8250/modalias"),
        b"platform:serial8250\n",
    );
    // Both ACPI devices are bound to the kernel's driver, which says what they are.
    s.write(&format!("{dev}/LNRO0005:00/virtio0/device"), b"0x0002\n");
    s.write(&format!("{dev}/LNRO0005:01/virtio1/device"), b"0x4743\n");
    s.write("sys/bus/platform/drivers/virtio-mmio/unbind", b"");
    for d in ["LNRO0005:00", "LNRO0005:01"] {
        std::os::unix::fs::symlink(
            "../../../bus/platform/drivers/virtio-mmio",
            s.path().join(format!("{dev}/{d}/driver")),
        )
        .unwrap();
    }
    s
}

#[test]
fn scan_merges_every_source_by_address() {
    let s = fixture();
    let r = scan(s.path());
    let got: Vec<_> = r.candidates.iter().map(|c| (c.base, c.len_bytes)).collect();
    assert_eq!(
        got,
        vec![
            (0xa000_0000, 0x200),
            (0xa000_0200, 0x200),
            (0xc000_0000, 0x200),
            (0xd000_0000, 0x1000)
        ]
    );
    let a0 = &r.candidates[0];
    assert_eq!(a0.sysfs_name.as_deref(), Some("LNRO0005:00"));
    assert_eq!(a0.bound_driver.as_deref(), Some("virtio-mmio"));
    assert_eq!(a0.kernel_device_id, Some(2));
    assert_eq!(r.candidates[1].kernel_device_id, Some(VIRTIO_ID_GCMA));
    assert_eq!(r.candidates[2].bound_driver, None);
    assert!(a0.sources.contains(&Source::Sysfs("LNRO0005:00".into())));
    let d0 = &r.candidates[3];
    assert_eq!(
        d0.sources,
        vec![
            Source::KernelCmdline,
            Source::Iomem("virtio-mmio.0".into()),
            Source::Sysfs("virtio-mmio.0".into())
        ]
    );
    assert_eq!(r.unlocated, vec!["LNRO0005:07".to_string()]);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
}

#[test]
fn scan_of_an_empty_root_reports_what_it_could_not_read() {
    let s = Scratch::new("empty");
    let r = scan(s.path());
    assert!(r.candidates.is_empty());
    assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    let e = find_gcma(r, |_| -> Result<VecWindow, MapError> { unreachable!() }).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("no virtio-mmio devices found"), "{msg}");
    assert!(msg.contains("--device"), "{msg}");
}

/// Register windows keyed by base: a block device, a legacy gcma, a gcma at 0xc0000000.
fn fake_window(base: u64) -> Result<VecWindow, MapError> {
    Ok(match base {
        0xa000_0000 => VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 2, 2),
        0xa000_0200 => VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 1, VIRTIO_ID_GCMA),
        0xc000_0000 => VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 2, VIRTIO_ID_GCMA),
        _ => VecWindow::new(0x200),
    })
}

#[test]
fn find_gcma_picks_the_gcma_device() {
    let s = fixture();
    let mut opened = Vec::new();
    let (c, mut w) = find_gcma(scan(s.path()), |c| {
        opened.push(c.base);
        fake_window(c.base)
    })
    .unwrap();
    assert_eq!(c.base, 0xc000_0000);
    assert_eq!(w.read32(REG_DEVICE_ID), VIRTIO_ID_GCMA);
    assert_eq!(opened, vec![0xa000_0000, 0xa000_0200, 0xc000_0000]);
    // Probing only reads.
    assert!(w.writes.is_empty());
}

#[test]
fn find_gcma_names_everything_it_found_when_there_is_no_gcma() {
    let s = fixture();
    let e = find_gcma(scan(s.path()), |c| {
        if c.base == 0xc000_0000 {
            Err(MapError::BadWindow {
                base: c.base,
                len: 1,
            })
        } else {
            fake_window(c.base)
        }
    })
    .unwrap_err();
    assert_eq!(e.findings.len(), 4);
    assert!(matches!(
        e.findings[0].1,
        Finding::Other(_, ProbeError::NotGcma(2))
    ));
    assert!(matches!(
        e.findings[1].1,
        Finding::Other(_, ProbeError::BadVersion(1))
    ));
    assert!(matches!(e.findings[2].1, Finding::Unmappable(_)));
    assert!(matches!(
        e.findings[3].1,
        Finding::Other(_, ProbeError::BadMagic(0))
    ));
    let msg = e.to_string();
    for want in [
        "no virtio-gcma device (DeviceID 0x4743)",
        "0xa0000000+0x200",
        "(block)",
        "version 1",
        "not \"virt\"",
        "LNRO0005:07",
    ] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    assert!(!msg.contains('\n'), "one line: {msg}");
}

/// The `/dev/mem` path with a regular file standing in for physical memory: the registers of a
/// device at a base that is not page-aligned (device trees space devices 0x200 apart).
#[test]
fn devmem_window_maps_unaligned_bases_through_a_fake_register_file() {
    let s = Scratch::new("devmem");
    let path = s.path().join("mem");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(0x3000).unwrap();
    let base = 0x1200u64;
    f.write_all_at(&VIRTIO_MMIO_MAGIC.to_le_bytes(), base)
        .unwrap();
    f.write_all_at(&2u32.to_le_bytes(), base + 4).unwrap();
    f.write_all_at(&VIRTIO_ID_GCMA.to_le_bytes(), base + 8)
        .unwrap();
    // A neighbouring device's magic, which must not be what we read.
    f.write_all_at(&0xdead_beefu32.to_le_bytes(), 0x1000)
        .unwrap();
    drop(f);

    let mut w = DevMemWindow::open_path(&path, base, 0x200).unwrap();
    assert_eq!(w.len_bytes(), 0x200);
    let (id, r) = probe(&mut w);
    assert_eq!(r, Ok(()), "{id}");
    // Writes go to the file at base + offset (MAP_SHARED), and nowhere else.
    w.write32(REG_STATUS, 0x0f);
    w.write32(0x200, 0x55); // outside the window: dropped
    assert_eq!(w.read32(0x200), u32::MAX);
    drop(w);
    let f = std::fs::File::open(&path).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, base + REG_STATUS as u64).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0x0f);
    f.read_exact_at(&mut b, base + 0x200).unwrap();
    assert_eq!(u32::from_le_bytes(b), 0);

    // A window that cannot hold the registers, and a missing device file.
    assert!(matches!(
        DevMemWindow::open_path(&path, base, 0x80),
        Err(MapError::BadWindow { .. })
    ));
    assert!(matches!(
        DevMemWindow::open_path(&path, base + 2, 0x200),
        Err(MapError::BadWindow { .. })
    ));
    let e = DevMemWindow::open_path(&s.path().join("nope"), base, 0x200).unwrap_err();
    assert!(matches!(e, MapError::Open { .. }));
    assert!(e.to_string().contains("CONFIG_DEVMEM"), "{e}");
}

#[test]
fn unbind_touches_only_the_gcma_device() {
    let s = fixture();
    let unbind_file = s.path().join("sys/bus/platform/drivers/virtio-mmio/unbind");
    let opts = FindOptions {
        device: None,
        root: s.path().to_path_buf(),
        unbind: true,
    };
    let (c, _) = open_registers_with(&opts, |c| fake_window(c.base)).unwrap();
    assert_eq!(c.base, 0xc000_0000);
    // The kernel-identified gcma device was unbound; the block device was left alone.
    assert_eq!(
        std::fs::read_to_string(&unbind_file).unwrap(),
        "LNRO0005:01"
    );

    // Named by the operator: exactly that device, found through its address.
    std::fs::write(&unbind_file, b"").unwrap();
    let opts = FindOptions {
        device: Some(parse_device_arg("0xa0000200@0x200").unwrap()),
        root: s.path().to_path_buf(),
        unbind: true,
    };
    let e = open_registers_with(&opts, |c| fake_window(c.base)).unwrap_err();
    assert_eq!(
        std::fs::read_to_string(&unbind_file).unwrap(),
        "LNRO0005:01"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("version 1") && !msg.contains("0xa0000000"),
        "{msg}"
    );

    // Without --unbind nothing is written.
    std::fs::write(&unbind_file, b"").unwrap();
    let opts = FindOptions {
        device: None,
        root: s.path().to_path_buf(),
        unbind: false,
    };
    open_registers_with(&opts, |c| fake_window(c.base)).unwrap();
    assert_eq!(std::fs::read_to_string(&unbind_file).unwrap(), "");
}
