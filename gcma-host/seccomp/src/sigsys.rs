//! The `SIGSYS` handler: a filter violation becomes one line on standard error and an exit.
//!
//! Runs in signal context on the offending thread, so it only does async-signal-safe things:
//! a TLS load, formatting into a stack buffer, `write(2)` and `_exit(2)` (both in every list).

use std::sync::OnceLock;

use crate::names::syscall_name;

/// The exit status of a process ended by a filter violation: 128 + `SIGSYS`, what a shell
/// reports for a process the signal killed.
pub const SIGSYS_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Set once by [`install_handler`], read by the handler.
static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// `siginfo_t` as the kernel fills it for `SIGSYS` (`_sigsys` in the union at offset 16 on
/// 64-bit Linux; `include/uapi/asm-generic/siginfo.h`). The `libc` crate has no accessor for it.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// `AUDIT_ARCH_X86_64` (`include/uapi/linux/audit.h`: `EM_X86_64 | __AUDIT_ARCH_64BIT |
/// __AUDIT_ARCH_LE`); the `libc` crate does not export it.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// `si_code` of a seccomp trap.
const SYS_SECCOMP: libc::c_int = 1;

pub(crate) fn install_handler(program: &'static str) -> std::io::Result<()> {
    let _ = PROGRAM.set(program);
    // SAFETY: a zeroed sigaction is a valid value to fill in; the handler has the
    // SA_SIGINFO signature; sigemptyset and sigaction get valid pointers.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut act.sa_mask);
        if libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A fixed buffer to format the message in without allocating.
struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn push_hex(&mut self, v: u32) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.push(b"0x");
        let mut started = false;
        for shift in (0..8).rev() {
            let d = ((v >> (shift * 4)) & 0xf) as usize;
            if d != 0 || started || shift == 0 {
                started = true;
                self.push(&[HEX[d]]);
            }
        }
    }
}

/// The message for a trapped `nr` on a thread of `kind`.
pub(crate) fn message(
    program: &str,
    kind: Option<&str>,
    nr: i64,
    arch: u32,
    code: i32,
) -> ([u8; 512], usize) {
    let mut line = Line {
        buf: [0; 512],
        len: 0,
    };
    line.push(program.as_bytes());
    line.push(b": seccomp: ");
    match kind {
        Some(k) => {
            line.push(b"a ");
            line.push(k.as_bytes());
            line.push(b" thread");
        }
        None => line.push(b"a filtered thread"),
    }
    if code != SYS_SECCOMP {
        line.push(b" got SIGSYS not raised by its filter (si_code ");
        line.push_u64(code as u64);
        line.push(b"); exiting\n");
        return (line.buf, line.len);
    }
    line.push(b" made system call ");
    if nr < 0 {
        line.push(b"-");
    }
    line.push_u64(nr.unsigned_abs());
    line.push(b" (");
    match syscall_name(nr).filter(|_| arch == AUDIT_ARCH_X86_64) {
        Some(name) => line.push(name.as_bytes()),
        None => {
            line.push(b"unknown, audit arch ");
            line.push_hex(arch);
        }
    }
    line.push(b"), which its filter does not allow; exiting (--no-seccomp turns filters off)\n");
    (line.buf, line.len)
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; for SIGSYS it holds
    // the `_sigsys` member laid out as `SigsysInfo`.
    let (nr, arch, code) = unsafe {
        let si = &*(info as *const SigsysInfo);
        (i64::from(si.syscall), si.arch, si.code)
    };
    let program = PROGRAM.get().copied().unwrap_or("seccomp");
    let kind = crate::current_kind().map(crate::ThreadKind::name);
    let (buf, len) = message(program, kind, nr, arch, code);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf[..len]` is initialised.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(SIGSYS_EXIT_STATUS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: Option<&str>, nr: i64, arch: u32, code: i32) -> String {
        let (buf, len) = message("vmm", kind, nr, arch, code);
        String::from_utf8(buf[..len].to_vec()).unwrap()
    }

    #[test]
    fn names_the_call_and_the_thread() {
        let t = text(Some("vcpu"), 121, AUDIT_ARCH_X86_64, SYS_SECCOMP);
        assert!(
            t.starts_with("vmm: seccomp: a vcpu thread made system call 121 (getpgid), "),
            "{t}"
        );
        assert!(t.ends_with('\n'));
        let t = text(None, 1000, AUDIT_ARCH_X86_64, SYS_SECCOMP);
        assert!(
            t.contains("a filtered thread made system call 1000 (unknown, audit arch 0xc000003e)"),
            "{t}"
        );
        let t = text(Some("http"), 3, 0x4000_0003, SYS_SECCOMP);
        assert!(t.contains("3 (unknown, audit arch 0x40000003)"), "{t}");
        let t = text(Some("http"), 3, AUDIT_ARCH_X86_64, 0);
        assert!(t.contains("not raised by its filter"), "{t}");
    }
}
