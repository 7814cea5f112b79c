//! Work-arounds for hosts whose KVM cannot run a stock kernel as it stands.
//!
//! On a host whose `/dev/kvm` comes from kvm-pvm (nested, no hardware virtualization; README.md,
//! "What is verified where"), guest ring-0 code is instruction-emulated and the emulator fails on
//! instructions a stock kernel uses early: `lock cmpxchg16b` (the kernel uses it only when CPUID
//! says CX16) and `xrstors` (avoided with the kernel's `noxsave` parameter). The VMM hides CX16
//! and appends `noxsave` there. It also hides the fast-string features (ERMS, FSRM, and FZRM,
//! FSRS, FSRC): with them Linux clears and copies memory with `rep stosb`/`rep movsb`, one
//! emulated iteration per byte; without them it uses `rep stosq`/`rep movsq` (REP_GOOD) or
//! unrolled 8-byte moves, which the emulator gets through several times faster. It says so in
//! one log line.

use std::path::Path;

/// Where the kvm-pvm module shows up when loaded.
pub const KVM_PVM_SYSFS: &str = "/sys/module/kvm_pvm";

/// Changes the VMM makes to a Linux guest for the host it runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quirks {
    /// The host is kvm-pvm (detected through [`KVM_PVM_SYSFS`]).
    pub kvm_pvm: bool,
    /// Clear CPUID.1:ECX.CX16, so the kernel does not use `cmpxchg16b`.
    pub hide_cx16: bool,
    /// Clear the fast-string CPUID bits (leaf 7: ERMS, FSRM, FZRM, FSRS, FSRC), so the kernel's
    /// memset/memcpy/clear_page move 8 bytes per step.
    pub hide_fast_strings: bool,
    /// Parameters appended to the kernel command line.
    pub extra_cmdline: Vec<&'static str>,
}

impl Quirks {
    /// The work-arounds for this host.
    pub fn detect() -> Quirks {
        Self::for_host(Path::new(KVM_PVM_SYSFS).exists())
    }

    /// The work-arounds for a host that is (or is not) kvm-pvm.
    pub fn for_host(kvm_pvm: bool) -> Quirks {
        if kvm_pvm {
            Quirks {
                kvm_pvm,
                hide_cx16: true,
                hide_fast_strings: true,
                extra_cmdline: vec!["noxsave"],
            }
        } else {
            Quirks::default()
        }
    }

    /// The one log line that says what was changed, if anything was.
    pub fn describe(&self) -> Option<String> {
        self.kvm_pvm.then(|| {
            format!(
                "kvm-pvm host ({KVM_PVM_SYSFS} exists): hiding CPUID CX16 and the fast-string \
                 features (ERMS, FSRM) from the guest and appending `{}` to its command line \
                 (the host's instruction emulator fails on cmpxchg16b and xrstors, and is slow \
                 on byte-wise rep movs/stos)",
                self.extra_cmdline.join(" ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_pvm_hides_cx16_and_adds_noxsave() {
        let q = Quirks::for_host(true);
        assert!(q.hide_cx16 && q.hide_fast_strings);
        assert_eq!(q.extra_cmdline, vec!["noxsave"]);
        assert!(q.describe().unwrap().contains("noxsave"));
        let q = Quirks::for_host(false);
        assert_eq!(q, Quirks::default());
        assert_eq!(q.describe(), None);
    }
}
