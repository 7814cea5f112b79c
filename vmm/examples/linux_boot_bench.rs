//! Time from starting `vmm run --kernel` to the Linux banner (`Linux version ...`) on the serial
//! console, beside QEMU (`-accel kvm -M microvm`) booting the same kernel and initramfs with the
//! same memory on the same `/dev/kvm`, in one run.
//!
//! The kernel is Debian's cloud kernel from the Linux guest kit (tests/linux-guest/README.md,
//! built on first use). Two images of it are timed:
//! * `bzImage`: both VMMs enter it through the boot protocol and its decompressor runs first;
//! * `vmlinux`: the uncompressed ELF; our VMM enters it at its 64-bit entry, QEMU at its PVH
//!   entry (the kernel has `CONFIG_PVH=y`).
//!
//! QEMU runs twice per round: as usually run (anonymous guest RAM, transparent huge pages where
//! the host allows) and with its guest RAM in a memfd like ours, which tells how much of a gap
//! is the memory backing. Rounds rotate which VMM goes first, so machine noise hits both alike; each boot is killed
//! once the banner is out. Both get the same command line and CPUID features, including what our
//! VMM changes on a kvm-pvm host (README.md, "Linux guests"), so the kernel does the same work
//! before its banner. The banner reaches the serial port only once `earlyprintk=serial` has been
//! parsed in the kernel's `setup_arch`, so the time includes the kernel's first steps.
//! On kvm-pvm hosts guest ring 0 is instruction-emulated and the bzImage's decompressor takes
//! most of a minute under either VMM.
//!
//! Run (after `cargo build --release -p vmm`, which builds the `vmm` binary timed here):
//! `nice -n 10 cargo run --release -p vmm --example linux_boot_bench -- --rounds 1`.
//! Ends with one `RESULT linux_banner_<image> vmm_s=<x> qemu_s=<y> ratio=<x/y> qemu_memfd_s=<z>
//! ratio_vs_qemu_memfd=<x/z>` line per image (medians over the rounds; goal: ratio <= 1.0).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e_tests::linux_guest::{Kit, QemuGuest};
use vmm::kvm::linux::Quirks;

/// Times `vmm run --kernel` and QEMU microvm to the Linux banner.
#[derive(Parser)]
struct Args {
    /// Boots per VMM and image; the medians are reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// Guest RAM of both VMMs, in MiB.
    #[arg(long, default_value_t = 96)]
    mem_mib: u64,
    /// Give up on a boot that has not printed the banner after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Which images to time (on kvm-pvm hosts the bzImage's emulated decompressor takes
    /// minutes per boot).
    #[arg(long, value_enum, default_value_t = Images::Both)]
    images: Images,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Images {
    Vmlinux,
    Bzimage,
    Both,
}

/// The kernel command line both VMMs pass.
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial pci=off panic=-1";
const BANNER: &str = "Linux version ";

#[derive(Clone, Copy, PartialEq)]
enum Vmm {
    Ours,
    /// QEMU as it is usually run: guest RAM is anonymous memory, which it asks to be backed by
    /// transparent huge pages.
    Qemu,
    /// QEMU with guest RAM in a memfd, as ours is (`vmm/src/kvm/memory.rs`): shmem gets huge
    /// pages only where `/sys/kernel/mm/transparent_hugepage/shmem_enabled` allows.
    QemuMemfd,
}

/// Starts `vmm` on `kernel` with its serial console going to `serial`.
fn spawn(which: Vmm, bins: &Bins, kernel: &Path, kit: &Kit, mem_mib: u64, serial: &Path) -> Child {
    let mut c = match which {
        Vmm::Ours => {
            let mut c = Command::new(&bins.vmm);
            c.arg("run")
                .arg("--kernel")
                .arg(kernel)
                .arg("--initrd")
                .arg(&kit.initrd)
                .args(["--cmdline", CMDLINE, "--mem-mib", &mem_mib.to_string()])
                .arg("--serial-file")
                .arg(serial);
            c
        }
        Vmm::Qemu | Vmm::QemuMemfd => {
            // Our VMM applies its host work-arounds itself; QEMU gets them spelled out: the
            // same command line and the same CPUID features hidden, so that both guests run
            // the same code. kvm-pvm also refuses QEMU's write of IA32_ARCH_CAPABILITIES
            // (QEMU aborts), so that feature is off there.
            let quirks = Quirks::for_host(kvm_pvm());
            let mut cmdline = CMDLINE.to_string();
            for extra in &quirks.extra_cmdline {
                cmdline = format!("{cmdline} {extra}");
            }
            let mut cpu = String::from("host");
            if quirks.kvm_pvm {
                cpu.push_str(",-arch-capabilities");
            }
            if quirks.hide_cx16 {
                cpu.push_str(",-cx16");
            }
            if quirks.hide_fast_strings {
                cpu.push_str(",-erms,-fsrm");
            }
            let mut c = Command::new(&bins.qemu);
            c.args(["-accel", "kvm", "-M", "microvm", "-cpu", &cpu, "-smp", "1"])
                .args(["-m", &format!("{mem_mib}M")])
                .args(["-nodefaults", "-no-user-config", "-display", "none"])
                .args(["-no-reboot", "-nic", "none"])
                .arg("-serial")
                .arg(format!("file:{}", serial.display()))
                .arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(&kit.initrd)
                .args(["-append", &cmdline]);
            if which == Vmm::QemuMemfd {
                c.arg("-object")
                    .arg(format!("memory-backend-memfd,id=ram,size={mem_mib}M"))
                    .args(["-machine", "memory-backend=ram"]);
            }
            c
        }
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("linux_boot_bench: cannot start {}: {e}", bins.name(which));
            std::process::exit(1)
        })
}

fn kvm_pvm() -> bool {
    Path::new(vmm::kvm::linux::quirks::KVM_PVM_SYSFS).exists()
}

struct Bins {
    vmm: PathBuf,
    qemu: PathBuf,
}

impl Bins {
    fn name(&self, which: Vmm) -> String {
        match which {
            Vmm::Ours => self.vmm.display().to_string(),
            Vmm::Qemu | Vmm::QemuMemfd => self.qemu.display().to_string(),
        }
    }
}

/// Boots once and returns the time from spawning the VMM to the banner in its serial output.
fn time_to_banner(
    which: Vmm,
    bins: &Bins,
    kernel: &Path,
    kit: &Kit,
    args: &Args,
    dir: &Path,
) -> Duration {
    let serial = dir.join("serial.txt");
    let _ = std::fs::remove_file(&serial);
    let start = Instant::now();
    let mut child = spawn(which, bins, kernel, kit, args.mem_mib, &serial);
    let budget = Duration::from_secs(args.timeout_secs);
    let result = loop {
        let out = std::fs::read(&serial).unwrap_or_default();
        if String::from_utf8_lossy(&out).contains(BANNER) {
            break Ok(start.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("exited ({status}) before the banner"));
        }
        if start.elapsed() > budget {
            break Err(format!("no banner within {budget:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap_or_else(|e| {
        let out = std::fs::read_to_string(&serial).unwrap_or_default();
        eprintln!(
            "linux_boot_bench: {} on {}: {e}; its serial output:\n{out}",
            bins.name(which),
            kernel.display()
        );
        std::process::exit(1)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let vmm = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("vmm")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| {
            eprintln!(
                "linux_boot_bench: no vmm binary next to this example; run `cargo build -p vmm` \
                 with the same profile first"
            );
            std::process::exit(1)
        });
    let qemu = QemuGuest::qemu_binary().unwrap_or_else(|e| {
        eprintln!("linux_boot_bench: {e}");
        std::process::exit(1)
    });
    let kit = Kit::ensure().unwrap_or_else(|e| {
        eprintln!("linux_boot_bench: {e}");
        std::process::exit(1)
    });
    let bins = Bins { vmm, qemu };
    let dir = std::env::temp_dir().join(format!("linux-boot-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "kernel {} ({}), {} MiB, kvm-pvm host: {}",
        kit.release,
        kit.kernel.display(),
        args.mem_mib,
        kvm_pvm()
    );
    let mut images = Vec::new();
    if args.images != Images::Bzimage {
        images.push(("vmlinux", kit.vmlinux.clone()));
    }
    if args.images != Images::Vmlinux {
        images.push(("bzimage", kit.kernel.clone()));
    }
    let mut results = Vec::new();
    for (name, kernel) in &images {
        let (mut ours, mut qemu, mut qemu_memfd) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let mut order = [Vmm::Ours, Vmm::Qemu, Vmm::QemuMemfd];
            order.rotate_left(usize::from(round % 3));
            for which in order {
                let t = time_to_banner(which, &bins, kernel, &kit, &args, &dir).as_secs_f64();
                let (label, times) = match which {
                    Vmm::Ours => ("vmm", &mut ours),
                    Vmm::Qemu => ("qemu", &mut qemu),
                    Vmm::QemuMemfd => ("qemu (memfd RAM)", &mut qemu_memfd),
                };
                println!("{name} round {round}: {label} {t:.3} s to the banner");
                use std::io::Write;
                let _ = std::io::stdout().flush();
                times.push(t);
            }
        }
        results.push((name, median(ours), median(qemu), median(qemu_memfd)));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    for (name, ours, qemu, qemu_memfd) in results {
        println!(
            "RESULT linux_banner_{name} vmm_s={ours:.3} qemu_s={qemu:.3} ratio={:.3} \
             qemu_memfd_s={qemu_memfd:.3} ratio_vs_qemu_memfd={:.3}",
            ours / qemu,
            ours / qemu_memfd
        );
    }
}
