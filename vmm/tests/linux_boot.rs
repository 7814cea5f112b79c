//! Debian's cloud kernel (the Linux guest kit's, tests/linux-guest) under our VMM, as deep as
//! the host allows.
//!
//! On a kvm-pvm host (the development machines) guest ring-0 code is emulated at a few million
//! instructions per second: the kernel gets through its early set-up, printing what it made of
//! everything the VMM handed it (command line, e820 map, initrd, ACPI tables, IOAPIC), and then
//! stops on an instruction the host's emulator cannot execute (its `int3` self-test, once the
//! VMM's work-arounds have taken it past `cmpxchg16b` and `xrstors`); the VMM must end the run
//! with that emulation failure. With hardware virtualization the same test expects userspace:
//! `Run /init`, a shell command's output and the guest agent's scan finding the gcma device.
//!
//! The kernel boots from the kit's uncompressed `vmlinux` (the same kernel as its bzImage): on
//! these hosts the bzImage's emulated decompressor alone takes minutes. The bzImage is checked
//! up to the start of its decompressor, which reads our zero page and command line.
//!
//! Each boot has a 3-minute budget: past it the VMM is killed and the test fails.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use e2e_tests::linux_guest::{or_skip, GuestError, Kit};
use linux_loader::loader::bootparam::boot_params;
use support::linux::{decompile, dsdt_devices, iasl, kvm_pvm, linux_vm_with_devices, scratch_dir};
use vm_memory::{Bytes, GuestAddress};
use vmm::kvm::linux::acpi::{AcpiTables, VirtioMmioDevice};
use vmm::kvm::linux::layout::{
    e820_map, ACPI_AREA, CMDLINE_ADDR, HIMEM_START, IOAPIC_ADDR, ZERO_PAGE_ADDR,
};
use vmm::kvm::linux::{KernelFormat, LinuxBoot, Quirks};
use vmm::kvm::vm::SharedBuffer;
use vmm::VmOutcome;

/// Wall-clock budget of one boot: a hang guard, not a performance check. A boot takes two to
/// three minutes of emulated ring-0 code on kvm-pvm when the machine is quiet and more under CI's
/// parallel test load, so the guard sits well above that.
const BOOT_BUDGET: Duration = Duration::from_secs(420);
/// Guest RAM: enough for the kernel (62 MiB while it boots), the initrd and its early
/// allocations; less RAM is less emulated struct-page set-up.
const MEM_MIB: u64 = 96;
/// The test's command line. `percpu_alloc=page` spares the emulated kernel zeroing a 2 MiB
/// per-CPU unit.
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial pci=off panic=-1 percpu_alloc=page";

/// Boots take minutes of one host CPU each; running two at once would only make both late.
static ONE_BOOT_AT_A_TIME: Mutex<()> = Mutex::new(());

fn kit_or_skip(test: &str) -> Option<(vmm::Hypervisor, Kit)> {
    let hv = support::hypervisor_or_skip(test)?;
    let kit = or_skip(test, Kit::ensure())?;
    Some((hv, kit))
}

/// The kernel's log lines without their `[    1.234567] ` timestamps.
fn messages(serial: &str) -> Vec<String> {
    serial
        .lines()
        .map(|l| {
            let l = l.trim_end_matches('\r');
            match (l.starts_with('['), l.find("] ")) {
                (true, Some(i)) => l[i + 2..].to_string(),
                _ => l.to_string(),
            }
        })
        .collect()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One expected log line: what it is (for the failure message) and the test for it.
type Expectation = (String, Box<dyn Fn(&str) -> bool>);

/// Finds each expectation after the previous one; panics naming the first one missing.
fn expect_in_order(msgs: &[String], expected: &[Expectation], serial: &str) {
    let mut from = 0;
    for (what, matches) in expected {
        match msgs[from..].iter().position(|m| matches(m)) {
            Some(i) => from += i + 1,
            None => panic!(
                "the kernel's log lacks, after line {from}: {what}\n--- serial (last lines) ---\n{}",
                tail(serial, 40)
            ),
        }
    }
}

fn exactly(line: String) -> Expectation {
    let l = line.clone();
    (line, Box::new(move |m: &str| m == l))
}

fn starting(prefix: &str) -> Expectation {
    let p = prefix.to_string();
    (
        format!("a line starting {prefix:?}"),
        Box::new(move |m: &str| m.starts_with(&p)),
    )
}

/// How Linux (ACPICA) prints a table it found: `ACPI: XSDT 0x00000000000E0030 000034 (v01 ...)`.
fn acpi_line(sig: &str, addr: u64, bytes: &[u8]) -> String {
    let s = |r: std::ops::Range<usize>| String::from_utf8_lossy(&bytes[r]).to_string();
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    if sig == "RSDP" {
        return format!(
            "ACPI: RSDP 0x{addr:016X} {:06X} (v{:02} {:<6})",
            u32_at(20),
            bytes[15],
            s(9..15)
        );
    }
    format!(
        "ACPI: {sig} 0x{addr:016X} {:06X} (v{:02} {:<6} {:<8} {:08X} {:<4} {:08X})",
        u32_at(4),
        bytes[8],
        s(10..16),
        s(16..24),
        u32_at(24),
        s(28..32),
        u32_at(32)
    )
}

/// Parses `[0x1000, 0x2000)` from a log line.
fn range_in(line: &str) -> (u64, u64) {
    let inner = &line[line.find('[').unwrap() + 1..line.find(')').unwrap()];
    let (a, b) = inner.split_once(", ").unwrap();
    let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap();
    (hex(a), hex(b))
}

/// The VMM's own account of the virtio devices it placed (`linux: virtio-mmio device ...`).
fn logged_devices(stderr: &str) -> Vec<VirtioMmioDevice> {
    stderr
        .lines()
        .filter_map(|l| {
            l.split_once("linux: virtio-mmio device id ")
                .map(|(_, r)| r)
        })
        .map(|r| {
            let id: u32 = r.split_whitespace().next().unwrap().parse().unwrap();
            let (base, end) = range_in(r);
            let gsi: u32 = r.rsplit("gsi ").next().unwrap().trim().parse().unwrap();
            VirtioMmioDevice {
                base,
                len_bytes: end - base,
                gsi,
                device_id: id,
            }
        })
        .collect()
}

struct Finished {
    code: Option<i32>,
    serial: String,
    stderr: String,
}

/// Runs `vmm run ARGS` (serial to `dir/serial.txt`, logs at info level) within the budget.
fn run_vmm(dir: &Path, args: &[String]) -> Finished {
    let serial_path = dir.join("serial.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .arg("run")
        .args(args)
        .arg("--serial-file")
        .arg(&serial_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmm runs");
    let mut stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > BOOT_BUDGET {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = reader.join().unwrap();
    let serial = std::fs::read_to_string(&serial_path).unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "the boot did not end within its budget of {BOOT_BUDGET:?}\n--- serial ---\n{}\n--- vmm ---\n{}",
            tail(&serial, 30),
            tail(&stderr, 10)
        );
    };
    println!(
        "boot ended after {:.1} s: {status}",
        start.elapsed().as_secs_f64()
    );
    Finished {
        code: status.code(),
        serial,
        stderr,
    }
}

#[test]
fn debian_kernel_boots_as_deep_as_this_host_allows() {
    const TEST: &str = "linux boot";
    let _one = ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((_hv, kit)) = kit_or_skip(TEST) else {
        return;
    };
    let Some(iasl) = or_skip(TEST, iasl()) else {
        return;
    };
    let dir = scratch_dir("linux-boot");
    let userspace = !kvm_pvm();
    let initrd = if userspace {
        let Some(initrd) = or_skip(TEST, userspace_initrd(&kit, &dir)) else {
            return;
        };
        initrd
    } else {
        kit.initrd.clone()
    };
    let acpi_dir = dir.join("acpi");
    let args: Vec<String> = [
        "--kernel",
        &kit.vmlinux.display().to_string(),
        "--initrd",
        &initrd.display().to_string(),
        "--mem-mib",
        &MEM_MIB.to_string(),
        "--cmdline",
        CMDLINE,
        "--gcma-pool-mib",
        "16",
        "--grant-window-mib",
        "64",
        "--balloon-pages",
        "0",
        "--dump-acpi",
        &acpi_dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let run = run_vmm(&dir, &args);
    let msgs = messages(&run.serial);

    // What the VMM says it built.
    let vmm_lines: Vec<&str> = run.stderr.lines().collect();
    let logged = |prefix: &str| -> Vec<String> {
        vmm_lines
            .iter()
            .filter_map(|l| l.split_once(prefix).map(|(_, r)| r.to_string()))
            .collect()
    };
    let quirks = Quirks::for_host(kvm_pvm());
    assert_eq!(
        run.stderr.matches("kvm-pvm host").count(),
        usize::from(quirks.kvm_pvm),
        "one log line about the work-arounds on kvm-pvm, none elsewhere:\n{}",
        run.stderr
    );
    let mut cmdline = CMDLINE.to_string();
    for extra in &quirks.extra_cmdline {
        cmdline = format!("{cmdline} {extra}");
    }
    let e820: Vec<String> = e820_map(MEM_MIB << 20)
        .iter()
        .map(|e| e.linux_line())
        .collect();
    assert_eq!(
        logged("linux: e820 "),
        e820,
        "the VMM's own account of the map"
    );
    let initrd_line = logged("linux: initrd at ");
    assert_eq!(initrd_line.len(), 1, "{}", run.stderr);
    let (initrd_start, initrd_end) = range_in(&initrd_line[0]);
    let initrd_len = std::fs::metadata(&initrd).unwrap().len();
    assert_eq!(initrd_end - initrd_start, initrd_len);
    let ramdisk_end = initrd_end.next_multiple_of(0x1000);
    assert_eq!(
        ramdisk_end,
        MEM_MIB << 20,
        "the initrd ends at the top of RAM"
    );
    let devices = logged_devices(&run.stderr);
    assert_eq!(
        devices.iter().map(|d| d.device_id).collect::<Vec<_>>(),
        vec![gcma_proto::gcma::VIRTIO_ID_GCMA, 5],
        "{}",
        run.stderr
    );

    // The tables the VMM wrote are the ones these devices call for; iasl decompiles the DSDT
    // it dumped and finds each device with the window and interrupt the VMM serves.
    let tables = AcpiTables::build(&devices).unwrap();
    for t in &tables.tables {
        let dumped =
            std::fs::read(acpi_dir.join(format!("{}.dat", t.signature.to_lowercase()))).unwrap();
        assert_eq!(dumped, t.bytes, "{} as dumped by --dump-acpi", t.signature);
    }
    let dsdt = decompile(&iasl, &acpi_dir, "dsdt").unwrap_or_else(|e| panic!("{e}"));
    let in_dsdt = dsdt_devices(&dsdt);
    assert_eq!(in_dsdt.len(), devices.len(), "{dsdt}");
    for (n, (d, v)) in in_dsdt.iter().zip(&devices).enumerate() {
        assert_eq!(d.name, VirtioMmioDevice::acpi_name(n));
        assert_eq!(d.hid, "LNRO0005");
        assert_eq!(d.window, (v.base, v.len_bytes));
        assert_eq!(d.gsi, v.gsi);
    }

    // What the kernel made of it, in the order it says so.
    let mut expected = vec![
        starting("Linux version 6."),
        exactly(format!("Command line: {cmdline}")),
        exactly("BIOS-provided physical RAM map:".into()),
    ];
    expected.extend(e820.iter().map(|l| exactly(format!("BIOS-e820: {l}"))));
    expected.push(exactly(format!(
        "RAMDISK: [mem {initrd_start:#010x}-{:#010x}]",
        ramdisk_end - 1
    )));
    let oem = String::from_utf8_lossy(&vmm::kvm::linux::acpi::OEM_ID).to_string();
    for t in &tables.tables {
        let line = acpi_line(&t.signature, t.addr, &t.bytes);
        assert!(line.contains(&format!(" {oem} ")) || line.ends_with(&format!(" {oem})")));
        expected.push(exactly(line));
    }
    assert_eq!(
        tables
            .tables
            .iter()
            .map(|t| t.signature.as_str())
            .collect::<Vec<_>>(),
        ["RSDP", "XSDT", "FACP", "DSDT", "APIC"],
        "the tables in the order Linux lists them"
    );
    let ioapic = format!("address {IOAPIC_ADDR:#x}, GSI 0-23");
    expected.push((
        format!("IOAPIC[0]: apic_id 0, ... {ioapic}"),
        Box::new(move |m: &str| m.starts_with("IOAPIC[0]: apic_id 0,") && m.ends_with(&ioapic)),
    ));
    expected.push(exactly("Booting paravirtualized kernel on KVM".into()));
    expect_in_order(&msgs, &expected, &run.serial);
    let bios_e820: Vec<&String> = msgs
        .iter()
        .filter(|m| m.starts_with("BIOS-e820: "))
        .collect();
    assert_eq!(bios_e820.len(), e820.len(), "no other e820 entries");

    if userspace {
        // Hardware virtualization: the kernel reaches userspace, the shell runs, the agent
        // finds the gcma device at the window the VMM serves, and the guest powers off.
        let gcma = devices[0];
        let scan = format!("{:#x}+{:#x}", gcma.base, gcma.len_bytes);
        let expected = vec![
            starting("Run /init as init process"),
            exactly(format!("GCMA-SHELL uname={}", kit.release)),
            (
                format!("a scan line for {scan} ending `<- virtio-gcma`"),
                Box::new(move |m: &str| m.starts_with(&scan) && m.ends_with("<- virtio-gcma"))
                    as Box<dyn Fn(&str) -> bool>,
            ),
            exactly("GCMA-AGENT status=0".into()),
        ];
        expect_in_order(&msgs, &expected, &run.serial);
        assert_eq!(run.code, Some(0), "powered off\n{}", tail(&run.stderr, 5));
    } else {
        // kvm-pvm: the run ends on an instruction the host cannot emulate, reported by the
        // VMM as an error with the RIP and the instruction's bytes: never a hang.
        assert_eq!(run.code, Some(125), "{}", tail(&run.stderr, 5));
        let report = run
            .stderr
            .lines()
            .find(|l| {
                l.starts_with(
                    "vmm: emulation failure: KVM cannot execute the guest instruction at rip 0x",
                )
            })
            .unwrap_or_else(|| panic!("no emulation-failure report:\n{}", tail(&run.stderr, 5)));
        assert!(
            report.contains("(bytes: ") && !report.contains("unreadable"),
            "{report}"
        );
        println!("{report}");
        println!(
            "SKIPPED: {TEST} (userspace part): kvm-pvm host: guest ring 0 is emulated and the \
             kernel stops before userspace; `Run /init`, a shell command and `guest-agent scan` \
             need hardware virtualization"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> GuestError + '_ {
    move |source| GuestError::Io {
        what: what.to_string(),
        source,
    }
}

/// The kit's initramfs with an overlay (a second cpio archive: later files replace earlier
/// ones) holding a static `guest-agent` and an `/init` that prints a shell command's output,
/// runs `guest-agent --unbind scan` and powers off. For hosts where the guest reaches userspace.
fn userspace_initrd(kit: &Kit, dir: &Path) -> Result<PathBuf, GuestError> {
    let root = Kit::workspace_root();
    let target_dir = Kit::dir().join("agent-cargo");
    let triple = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--quiet",
            "--release",
            "--locked",
            "-p",
            "guest-agent",
            "--bin",
            "guest-agent",
            "--target",
            triple,
            "--target-dir",
        ])
        .arg(&target_dir)
        .output()
        .map_err(io_err("running cargo build for guest-agent"))?;
    if !out.status.success() {
        return Err(GuestError::Tool {
            tool: "cargo build -p guest-agent".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let overlay = dir.join("overlay");
    std::fs::create_dir_all(overlay.join("bin")).map_err(io_err("overlay dir"))?;
    std::fs::copy(
        target_dir.join(triple).join("release/guest-agent"),
        overlay.join("bin/guest-agent"),
    )
    .map_err(io_err("copying guest-agent"))?;
    let init = overlay.join("init");
    std::fs::write(
        &init,
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         exec 0</dev/console 1>/dev/console 2>&1\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         while read -r module; do insmod \"/lib/modules/$module.ko\"; done </etc/gcmatest/modules\n\
         echo \"GCMA-SHELL uname=$(uname -r)\"\n\
         guest-agent --unbind scan\n\
         echo \"GCMA-AGENT status=$?\"\n\
         poweroff -f\n",
    )
    .map_err(io_err("writing the overlay's init"))?;
    use std::os::unix::fs::PermissionsExt;
    for f in [&init, &overlay.join("bin/guest-agent")] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod"))?;
    }
    let packed = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -n")
        .current_dir(&overlay)
        .output()
        .map_err(io_err("packing the overlay with cpio"))?;
    if !packed.status.success() || packed.stdout.is_empty() {
        return Err(GuestError::Tool {
            tool: "cpio".into(),
            detail: String::from_utf8_lossy(&packed.stderr).into_owned(),
        });
    }
    let mut initrd = std::fs::read(&kit.initrd).map_err(io_err("reading the kit's initrd"))?;
    initrd.extend_from_slice(&packed.stdout);
    let path = dir.join("initrd-agent.gz");
    std::fs::write(&path, initrd).map_err(io_err("writing the initrd"))?;
    Ok(path)
}

#[test]
fn bzimage_decompressor_starts_from_our_zero_page_and_command_line() {
    const TEST: &str = "linux bzImage entry";
    let _one = ONE_BOOT_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((hv, kit)) = kit_or_skip(TEST) else {
        return;
    };
    let out = SharedBuffer::default();
    let mut built = linux_vm_with_devices(&hv, MEM_MIB, &out);
    let vm = &mut built.vm;
    let guest = vm
        .load_linux(&LinuxBoot {
            kernel: kit.kernel.clone(),
            initrd: Some(kit.initrd.clone()),
            cmdline: CMDLINE.into(),
        })
        .unwrap()
        .clone();
    let image = std::fs::read(&kit.kernel).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes(image[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
    assert_eq!(
        guest.kernel.format,
        KernelFormat::BzImage {
            protocol: u16_at(0x206)
        }
    );
    assert_eq!(guest.kernel.entry, HIMEM_START + 0x200, "the 64-bit entry");

    // The zero page: the image's setup header, our loader fields, command line, initrd, e820
    // map and RSDP.
    let mem = vm.ram().memory();
    let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
    let hdr = p.hdr;
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.version }, u16_at(0x206));
    assert_eq!({ hdr.init_size }, u32_at(0x260));
    assert_eq!({ hdr.xloadflags }, u16_at(0x236));
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!({ hdr.code32_start }, HIMEM_START as u32);
    assert_eq!(u64::from(hdr.cmd_line_ptr), CMDLINE_ADDR);
    let mut line = vec![0u8; guest.kernel.cmdline.len() + 1];
    mem.read_slice(&mut line, GuestAddress(CMDLINE_ADDR))
        .unwrap();
    assert_eq!(line.pop(), Some(0), "NUL-terminated");
    assert_eq!(String::from_utf8(line).unwrap(), guest.kernel.cmdline);
    assert!(guest.kernel.cmdline.starts_with(CMDLINE));
    let initrd = std::fs::read(&kit.initrd).unwrap();
    let r = guest.kernel.initrd.clone().unwrap();
    assert_eq!(
        (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size)),
        (r.start, initrd.len() as u64)
    );
    let mut back = vec![0u8; initrd.len()];
    mem.read_slice(&mut back, GuestAddress(r.start)).unwrap();
    assert!(back == initrd, "the initrd's bytes at {:#x}", r.start);
    let table = p.e820_table;
    let entries: Vec<(u64, u64, u32)> = table[..usize::from(p.e820_entries)]
        .iter()
        .map(|e| ({ e.addr }, { e.size }, { e.r#type }))
        .collect();
    let map: Vec<(u64, u64, u32)> = e820_map(MEM_MIB << 20)
        .iter()
        .map(|e| (e.addr, e.size, e.kind.code()))
        .collect();
    assert_eq!(entries, map);
    assert_eq!({ p.acpi_rsdp_addr }, ACPI_AREA.start);
    // The protected-mode part of the image at 1 MiB.
    let setup = (usize::from(image[0x1f1]).max(4) + 1) * 512;
    let mut loaded = vec![0u8; image.len() - setup];
    mem.read_slice(&mut loaded, GuestAddress(HIMEM_START))
        .unwrap();
    assert!(loaded == image[setup..], "the kernel's bytes at 1 MiB");

    // Run it until its decompressor has set COM1 up for `earlyprintk=serial`, which it found in
    // our command line through the zero page (nine port accesses): then stop it.
    let counters = vm.exit_counters();
    let stop = vm.stop_handle();
    let watcher = std::thread::spawn(move || {
        let start = Instant::now();
        while counters.snapshot().port_io < 9 && start.elapsed() < BOOT_BUDGET {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.stop();
        start.elapsed()
    });
    let outcome = support::run_vcpu(vm).unwrap();
    let took = watcher.join().unwrap();
    let stats = vm.stats();
    assert!(
        matches!(outcome, VmOutcome::Stopped { .. }),
        "the decompressor must still be running: {outcome:?}"
    );
    assert!(
        stats.port_io >= 9,
        "no serial set-up within {BOOT_BUDGET:?}: {stats:?}"
    );
    assert_eq!(
        stats.mmio_reads + stats.mmio_writes + stats.mmio_unclaimed,
        0
    );
    println!("decompressor set up COM1 after {:.1} s", took.as_secs_f64());
}

#[test]
fn kernel_flags_fail_with_one_clear_line() {
    let vmm = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .arg("run")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = vmm(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot read kernel /nonexistent/vmlinuz"),
        "{err}"
    );
    let (code, err) = vmm(&["--kernel", "/dev/null", "--initrd", "/nonexistent/initrd"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot read initrd /nonexistent/initrd"),
        "{err}"
    );
    // Kernel options without a kernel, and both guest kinds at once, are usage errors.
    for args in [
        &["--payload", "hello", "--initrd", "/dev/null"][..],
        &["--payload", "hello", "--cmdline", "quiet"],
        &["--payload", "hello", "--kernel", "/dev/null"],
        &[],
    ] {
        let (code, err) = vmm(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
    }
}
