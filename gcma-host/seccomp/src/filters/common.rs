//! What every filtered thread calls: the Rust runtime, glibc's allocator, locks, logging, the
//! SIGSYS handler itself, and thread exit.

use super::{any, when, Allow, ArgEq};

pub(crate) const ALLOW: &[Allow] = &[
    // Mutexes, condvars, channels, thread joins (std, parking_lot, crossbeam).
    any(libc::SYS_futex),
    // Spin-then-yield in crossbeam and std's mpmc channels.
    any(libc::SYS_sched_yield),
    // glibc malloc: arenas and large blocks (mmap/munmap/mprotect/madvise/brk/mremap).
    any(libc::SYS_mmap),
    any(libc::SYS_munmap),
    any(libc::SYS_mprotect),
    any(libc::SYS_madvise),
    any(libc::SYS_brk),
    any(libc::SYS_mremap),
    // glibc malloc reads /proc/sys/vm/overcommit_memory when it first trims an arena: read-only
    // opens only (O_RDONLY|O_CLOEXEC; `openat(AT_FDCWD, path, flags)`).
    when(
        libc::SYS_openat,
        &[ArgEq {
            index: 2,
            value: (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        }],
    ),
    // Reading that file; eventfds (kicks, stop signals); pipes of the logger.
    any(libc::SYS_read),
    // Logging to stderr (env_logger), the console, eventfd signals, the SIGSYS message.
    any(libc::SYS_write),
    any(libc::SYS_writev),
    // Dropping files, eventfds, mappings' fds.
    any(libc::SYS_close),
    // std's debug check that an fd it closes is open (`fcntl(fd, F_GETFD)`), and O_NONBLOCK
    // probes.
    when(
        libc::SYS_fcntl,
        &[ArgEq {
            index: 1,
            value: libc::F_GETFD as u64,
        }],
    ),
    when(
        libc::SYS_fcntl,
        &[ArgEq {
            index: 1,
            value: libc::F_GETFL as u64,
        }],
    ),
    // Sleeps and timeouts (std::thread::sleep, condvar waits fall back to it); clock reads the
    // vDSO cannot serve.
    any(libc::SYS_clock_nanosleep),
    any(libc::SYS_nanosleep),
    any(libc::SYS_clock_gettime),
    // Rust's thread exit: the guard page's alternate signal stack, blocked signals, the thread
    // itself, the process (the SIGSYS handler's _exit too).
    any(libc::SYS_sigaltstack),
    any(libc::SYS_rt_sigprocmask),
    any(libc::SYS_rt_sigreturn),
    any(libc::SYS_exit),
    any(libc::SYS_exit_group),
    // std::thread::current().id() and log records; HashMap seeds.
    any(libc::SYS_gettid),
    any(libc::SYS_getpid),
    any(libc::SYS_getrandom),
    // A panic's backtrace and abort: raise SIGABRT on this thread.
    any(libc::SYS_tgkill),
];
