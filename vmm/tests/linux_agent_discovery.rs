//! The guest agent's side of a Linux guest of ours, on the host: a fixture of what Debian's
//! kernel shows for our DSDT (`/proc/iomem`, `/sys/bus/platform/devices/LNRO0005:NN` bound to
//! virtio_mmio, each with the device ID the driver read), and `CONFIG_IO_STRICT_DEVMEM`, under
//! which `/dev/mem` refuses a window a driver claimed. The agent must find the gcma device at the
//! window the VMM serves and, with `--unbind`, release exactly that device before mapping it.

mod support;

use std::path::Path;

use guest_agent::linux::device::{candidates, open_registers_with, release_gcma, FindOptions};
use guest_agent::linux::discovery::Source;
use guest_agent::linux::regs::{MapError, VecWindow, VIRTIO_MMIO_MAGIC};
use support::linux::{linux_vm_with_devices, scratch_dir};
use vmm::kvm::linux::VirtioMmioDevice;
use vmm::kvm::vm::SharedBuffer;

const UNBIND: &str = "sys/bus/platform/drivers/virtio-mmio/unbind";

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// Linux names the n-th ACPI device with a given _HID `<HID>:<n as %02x>`, in namespace order
/// (the DSDT's order).
fn acpi_name(n: usize) -> String {
    format!("LNRO0005:{n:02x}")
}

/// What the guest's /proc and /sys hold for `devices` with virtio_mmio loaded: each window is
/// the platform device's resource and, nested, the driver's claim (busy).
fn guest_tree(root: &Path, devices: &[VirtioMmioDevice]) {
    let mut iomem = String::from(
        "00000000-00000fff : Reserved\n00001000-0009fbff : System RAM\n\
         000e0000-000fffff : ACPI Tables\n00100000-05ffffff : System RAM\n  \
         01000000-01e0ffff : Kernel code\n",
    );
    for (n, d) in devices.iter().enumerate() {
        let (start, end) = (d.base, d.base + d.len_bytes - 1);
        let name = acpi_name(n);
        iomem.push_str(&format!("{start:08x}-{end:08x} : {name}\n"));
        iomem.push_str(&format!("  {start:08x}-{end:08x} : {name}\n"));
        let dev = format!("sys/bus/platform/devices/{name}");
        write(root, &format!("{dev}/modalias"), b"acpi:LNRO0005:\n");
        write(
            root,
            &format!("{dev}/virtio{n}/device"),
            format!("{:#06x}\n", d.device_id).as_bytes(),
        );
        std::os::unix::fs::symlink(
            "../../../bus/platform/drivers/virtio-mmio",
            root.join(format!("{dev}/driver")),
        )
        .unwrap();
    }
    iomem.push_str("fec00000-fec003ff : IOAPIC 0\nfee00000-fee00fff : Local APIC\n");
    write(root, "proc/iomem", iomem.as_bytes());
    write(
        root,
        "proc/cmdline",
        b"console=ttyS0 earlyprintk=serial pci=off panic=-1\n",
    );
    write(root, UNBIND, b"");
}

#[test]
fn agent_finds_our_gcma_device_and_unbinds_only_it_under_strict_devmem() {
    let Some(hv) = support::hypervisor_or_skip("agent discovery of our DSDT") else {
        return;
    };
    let out = SharedBuffer::default();
    let built = linux_vm_with_devices(&hv, 64, &out);
    let devices = built.vm.virtio_windows().to_vec();
    let gcma = built.gcma.as_ref().unwrap().base;
    let root = scratch_dir("agent-discovery");
    guest_tree(&root, &devices);

    // The scan sees both devices at the windows the VMM serves, and knows which is gcma from
    // the ID the kernel's driver read.
    let opts = |unbind| FindOptions {
        device: None,
        root: root.clone(),
        unbind,
    };
    let found = candidates(&opts(false));
    assert_eq!(found.candidates.len(), devices.len());
    for (n, (c, d)) in found.candidates.iter().zip(&devices).enumerate() {
        assert_eq!((c.base, c.len_bytes), (d.base, d.len_bytes));
        assert_eq!(c.sysfs_name.as_deref(), Some(acpi_name(n).as_str()));
        assert_eq!(c.bound_driver.as_deref(), Some("virtio-mmio"));
        assert_eq!(c.kernel_device_id, Some(d.device_id));
        assert!(c.sources.contains(&Source::Sysfs(acpi_name(n))));
        assert_eq!(VirtioMmioDevice::acpi_name(n), format!("VR{n:02X}"));
    }
    let gcma_name = acpi_name(0);
    assert_eq!(found.candidates[0].base, gcma);

    // /dev/mem under CONFIG_IO_STRICT_DEVMEM: a window still claimed by the driver (its device
    // not written to the driver's unbind file) does not map.
    let unbind_file = root.join(UNBIND);
    let strict_devmem = |c: &guest_agent::linux::discovery::Candidate| {
        let released = std::fs::read_to_string(&unbind_file).unwrap();
        let claimed = c.bound_driver.is_some() && c.sysfs_name.as_deref() != Some(&released);
        if claimed {
            return Err(MapError::Map {
                path: "/dev/mem".into(),
                base: c.base,
                len: c.len_bytes as usize,
                source: std::io::Error::from_raw_os_error(libc::EPERM),
                hint: "",
            });
        }
        let id = devices
            .iter()
            .find(|d| d.base == c.base)
            .map_or(0, |d| d.device_id);
        Ok(VecWindow::with_identity(0x200, VIRTIO_MMIO_MAGIC, 2, id))
    };
    let e = open_registers_with(&opts(false), strict_devmem).unwrap_err();
    assert!(e.to_string().contains("cannot map"), "{e}");
    assert_eq!(std::fs::read_to_string(&unbind_file).unwrap(), "");

    // With --unbind the agent releases the gcma device, and only it, then maps it.
    let (c, _) = open_registers_with(&opts(true), strict_devmem).unwrap();
    assert_eq!(c.base, gcma);
    assert_eq!(std::fs::read_to_string(&unbind_file).unwrap(), gcma_name);

    // `scan --unbind` takes the same step before probing.
    write(&root, UNBIND, b"");
    let mut found = candidates(&opts(true));
    release_gcma(&opts(true), &mut found).unwrap();
    assert_eq!(std::fs::read_to_string(&unbind_file).unwrap(), gcma_name);
    assert_eq!(found.candidates[0].bound_driver, None);
    assert_eq!(
        found.candidates[1].bound_driver.as_deref(),
        Some("virtio-mmio")
    );
    std::fs::remove_dir_all(&root).unwrap();
}
