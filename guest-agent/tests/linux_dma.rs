//! DMA memory of the Linux agent, on the host: locked memory of this very process translated
//! through `/proc/self/pagemap`, with and without `CAP_SYS_ADMIN`.

#![cfg(all(feature = "std", target_os = "linux"))]

use guest_agent::linux::dma::{find_contiguous_run, DmaAllocator, DmaError, HugePages, Pagemap};

const CAP_SYS_ADMIN: u32 = 21;

/// The tests of this file lock memory and one of them counts it: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `VmLck` of this process, in KiB.
fn locked_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Whether the calling thread has `CAP_SYS_ADMIN` in its effective set.
fn has_sys_admin() -> bool {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << CAP_SYS_ADMIN) != 0
}

/// `KPF_MLOCKED` and `KPF_UNEVICTABLE` in `/proc/kpageflags` (Documentation/admin-guide/mm/pagemap.rst).
const KPF_UNEVICTABLE: u64 = 1 << 18;
const KPF_MLOCKED: u64 = 1 << 33;

fn kpageflags(pfn: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open("/proc/kpageflags").ok()?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, pfn * 8).ok()?;
    Some(u64::from_le_bytes(b))
}

#[test]
fn locked_memory_translates_to_locked_physical_pages() {
    let _g = serial();
    if !has_sys_admin() {
        // Covered by the test below, which then sees the same error on this thread.
        let e = DmaAllocator::new(HugePages::Auto).unwrap_err();
        assert!(matches!(e, DmaError::PfnHidden), "{e}");
        eprintln!("not CAP_SYS_ADMIN: checked the PfnHidden error only");
        return;
    }
    let mut a = DmaAllocator::new(HugePages::Auto).unwrap();
    let one = a.alloc(1).unwrap();
    let two = a.alloc(1).unwrap();
    assert_ne!(one.phys(), 0);
    assert_eq!(one.phys() % 4096, 0);
    assert_ne!(
        one.phys() & !0xfff,
        two.phys() & !0xfff,
        "two buffers, one frame"
    );
    // The buffer is zeroed and writable, and the frame really is a locked page of this process.
    // SAFETY: `one` owns 4096 writable bytes at `as_ptr()`.
    let bytes = unsafe { std::slice::from_raw_parts_mut(one.as_ptr().as_ptr(), 4096) };
    assert!(bytes.iter().all(|b| *b == 0));
    bytes.fill(0xa5);
    assert_eq!(
        a.pagemap()
            .translate(one.as_ptr().as_ptr() as usize)
            .unwrap(),
        one.phys(),
        "the frame must not move when written"
    );
    if !one.is_huge() {
        let flags = kpageflags(one.phys() / 4096).expect("/proc/kpageflags readable as root");
        assert_ne!(flags & KPF_MLOCKED, 0, "flags {flags:#x}");
        assert_ne!(flags & KPF_UNEVICTABLE, 0, "flags {flags:#x}");
    }

    // Multi-page buffers are physically contiguous, checked independently of the allocator.
    match a.alloc(4) {
        Ok(b) => {
            let pm = Pagemap::open_self().unwrap();
            let phys = pm.translate_pages(b.as_ptr().as_ptr() as usize, 4).unwrap();
            assert_eq!(phys[0], b.phys());
            assert_eq!(find_contiguous_run(&phys, 4, 4096), Some(0), "{phys:x?}");
        }
        // Allowed outcome on a fragmented host, but it must be this error.
        Err(DmaError::NotContiguous { nr_pages: 4, .. }) => {
            eprintln!("no 4 contiguous pages found on this host (allowed, clear error)")
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert!(matches!(a.alloc(0), Err(DmaError::BadSize(0))));
}

#[test]
fn hugetlb_required_fails_clearly_or_gives_huge_pages() {
    let _g = serial();
    if !has_sys_admin() {
        eprintln!("not CAP_SYS_ADMIN: skipped (needs visible PFNs)");
        return;
    }
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    let mut a = DmaAllocator::new(HugePages::Require).unwrap();
    match a.alloc(2) {
        Ok(b) => {
            assert!(free > 0);
            assert!(b.is_huge());
            assert_eq!(b.phys() % (2 << 20), 0);
        }
        Err(e) => {
            assert_eq!(free, 0, "huge pages are free but allocation failed: {e}");
            assert!(matches!(e, DmaError::NoHugePages(_)), "{e}");
            assert!(e.to_string().contains("nr_hugepages"), "{e}");
            eprintln!("no free huge pages on this host: checked the clear error ({e})");
        }
    }
}

/// Opens the pagemap from a thread that dropped `CAP_SYS_ADMIN` (capabilities are per thread
/// and the kernel checks the opener's), so the hidden-PFN path runs even as root.
#[test]
fn without_cap_sys_admin_the_error_is_clear() {
    let _g = serial();
    let r = std::thread::spawn(|| {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        // _LINUX_CAPABILITY_VERSION_3
        let mut h = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let mut d = [Data::default(); 2];
        // SAFETY: capget writes two Data structs for version 3; both pointers are valid.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
        assert_eq!(rc, 0, "capget");
        d[0].effective &= !(1 << CAP_SYS_ADMIN);
        // SAFETY: capset reads the structs just filled in; it only affects this thread.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
        assert_eq!(rc, 0, "capset");
        assert!(!has_sys_admin());
        let pm = Pagemap::open_self().unwrap();
        DmaAllocator::with_pagemap(pm, HugePages::Never).map(|_| ())
    })
    .join()
    .unwrap();
    let e = r.unwrap_err();
    assert!(matches!(e, DmaError::PfnHidden), "{e}");
    assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
}

/// Multi-page buffers are assembled out of a larger locked scratch area; everything not kept
/// must be released, and dropping the buffers must release the rest.
#[test]
fn scratch_pages_and_dropped_buffers_are_released() {
    let _g = serial();
    if !has_sys_admin() {
        eprintln!("not CAP_SYS_ADMIN: skipped (needs visible PFNs)");
        return;
    }
    let before = locked_kib();
    let mut a = DmaAllocator::new(HugePages::Never).unwrap();
    let mut bufs = Vec::new();
    for n in [2usize, 3, 8] {
        match a.alloc(n) {
            Ok(b) => bufs.push(b),
            Err(DmaError::NotContiguous { .. }) => eprintln!("{n} pages: none contiguous"),
            Err(e) => panic!("{e}"),
        }
    }
    let held: u64 = bufs.iter().map(|b| b.len_bytes() as u64 / 1024).sum();
    assert_eq!(locked_kib() - before, held, "only the buffers stay locked");
    drop(bufs);
    drop(a);
    assert_eq!(locked_kib(), before);
}
