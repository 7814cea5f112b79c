//! Stock Linux guests (Debian's cloud kernel, our initramfs) under QEMU with software emulation,
//! against QEMU's own block backends: the harness and kit that our vhost-user devices are tested
//! with. Each guest has a wall-clock budget; QEMU is killed when it runs out, and the test fails.

use std::time::Duration;

use e2e_tests::linux_guest::{
    image, linux_guest_or_skip, or_skip, CacheArgs, Discard, Disk, GuestRun, Kit, Mode, QemuGuest,
    QsdExport, SwapArgs,
};

/// The smallest guest Debian's kernel boots with this initramfs, with some room.
const GUEST_MIB: u64 = 80;

fn guest(kit: &Kit, name: &str) -> QemuGuest {
    QemuGuest::new(kit).name(name).memory_mib(GUEST_MIB)
}

fn summary_u64(run: &GuestRun, key: &str) -> u64 {
    run.summary()
        .and_then(|s| s.get_u64(key))
        .unwrap_or_else(|| panic!("summary has no {key}\n{}", run.diagnostics()))
}

fn report(run: &GuestRun) {
    println!(
        "{}: wall {:.1?}, userspace after {:.1?}, summary: {}",
        run.name,
        run.wall,
        run.userspace_at(),
        run.summary().map(|s| s.to_line()).unwrap_or_default()
    );
}

#[test]
fn boots_to_the_checker() {
    let Some(kit) = linux_guest_or_skip("linux guest boot") else {
        return;
    };
    let run = guest(&kit, "boot")
        .timeout(Duration::from_secs(120))
        .run()
        .expect("qemu runs");
    report(&run);
    assert!(run.clean_exit(), "{}", run.diagnostics());
    let start = run.event("start").expect("a start line");
    assert_eq!(start.get("kernel"), Some(kit.release.as_str()));
    let total_kib = start.get_u64("mem_total_kib").expect("mem_total_kib");
    assert!(
        total_kib > 0 && total_kib < GUEST_MIB * 1024,
        "{}",
        start.to_line()
    );
    assert!(
        run.summary().is_some_and(|s| s.ok()),
        "{}",
        run.diagnostics()
    );
}

/// 160 MiB of anonymous memory in an 80 MiB guest, swapped to qemu-storage-daemon's
/// vhost-user-blk export of a sparse file: every page reads back intact, twice.
#[test]
fn swap_storm_on_qsd_vhost_user_blk() {
    let Some(kit) = linux_guest_or_skip("swap storm on qsd") else {
        return;
    };
    if or_skip("swap storm on qsd", QsdExport::binary()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("swap.img");
    image::sparse(&img, 256 << 20).unwrap();
    let qsd = QsdExport::start(&img, &dir.path().join("vu.sock")).expect("qsd starts");

    let run = guest(&kit, "swap-qsd")
        .disk(Disk::vhost_user_blk(qsd.socket()))
        .checker(Mode::Swap(SwapArgs {
            mib: 2 * GUEST_MIB,
            seed: 7,
            ..SwapArgs::default()
        }))
        .timeout(Duration::from_secs(360))
        .run()
        .expect("qemu runs");
    report(&run);
    let qsd_log = qsd.log_text();
    let qsd_status = qsd.stop().expect("qsd stops");

    assert!(run.clean_exit(), "{}\nqsd: {qsd_log}", run.diagnostics());
    assert!(qsd_status.success(), "qsd exited {qsd_status}: {qsd_log}");
    let s = run.summary().unwrap();
    assert!(s.ok(), "{}", run.diagnostics());
    assert_eq!(summary_u64(&run, "pages"), 2 * GUEST_MIB * 256);
    assert_eq!(summary_u64(&run, "corrupt"), 0, "{}", s.to_line());
    // More memory than the guest has: pages went out to the disk and came back.
    assert!(summary_u64(&run, "pswpout") > 0, "{}", s.to_line());
    assert!(summary_u64(&run, "pswpin") > 0, "{}", s.to_line());
    // The image's blocks hold what was swapped out.
    assert!(image::allocated_bytes(&img).unwrap() > 0);
}

/// `swapon -d` (busybox's spelling) reaches the device as DISCARD: over a fully written image,
/// qemu-storage-daemon punches the discarded range out of the file.
#[test]
fn swapon_discard_reaches_qsd() {
    let Some(kit) = linux_guest_or_skip("swapon discard on qsd") else {
        return;
    };
    if or_skip("swapon discard on qsd", QsdExport::binary()).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("swap.img");
    let size = 64u64 << 20;
    image::filled(&img, size, 0xa5).unwrap();
    assert!(image::allocated_bytes(&img).unwrap() >= size);
    let qsd = QsdExport::start(&img, &dir.path().join("vu.sock")).expect("qsd starts");

    let run = guest(&kit, "discard-qsd")
        .disk(Disk::vhost_user_blk(qsd.socket()))
        .checker(Mode::Swap(SwapArgs {
            mib: 8,
            discard: Discard::Once,
            verify_passes: 1,
            ..SwapArgs::default()
        }))
        .timeout(Duration::from_secs(180))
        .run()
        .expect("qemu runs");
    report(&run);
    qsd.stop().expect("qsd stops");

    assert!(run.clean_exit(), "{}", run.diagnostics());
    let s = run.summary().unwrap();
    assert!(s.ok(), "{}", run.diagnostics());
    assert_ne!(
        s.get("disk_discard_max_bytes"),
        Some("0"),
        "{}",
        s.to_line()
    );
    let left = image::allocated_bytes(&img).unwrap();
    assert!(
        left < size / 4,
        "{left} of {size} bytes still allocated after swapon -donce\n{}",
        s.to_line()
    );
}

/// The page-cache reads on a virtio-blk ext2 image: three reads of a 16 MiB file, `drop_caches`
/// before the second and third, the host released from a pause before the third; every read
/// matches the host's checksum and, after `drop_caches`, comes from the device again.
#[test]
fn cache_reads_on_virtio_blk_ext2() {
    let Some(kit) = linux_guest_or_skip("cache reads on virtio-blk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file_bytes = 16 << 20;
    let img = or_skip(
        "cache reads on virtio-blk",
        image::ext2_with_random_file(&dir.path().join("fs.img"), "data.bin", file_bytes, 11),
    );
    let Some(img) = img else {
        return;
    };

    let mut g = guest(&kit, "cache-virtio-blk")
        .disk(Disk::file(&img.path).read_only())
        .checker(Mode::Cache(CacheArgs {
            disk: "/dev/vda".into(),
            fstype: "ext2".into(),
            file: img.file_name.clone().into(),
            sha256: Some(img.sha256.clone()),
            reads: 3,
            pause_before: vec![3],
        }))
        .timeout(Duration::from_secs(180))
        .spawn()
        .expect("qemu starts");
    let paused = g
        .wait_for_pause(1, Duration::from_secs(150))
        .unwrap_or_else(|e| panic!("{e}\n{}", g.console()));
    assert_eq!(paused.record.get("before_read"), Some("3"));
    // Two reads done, the third waits for us.
    let reads_before = g
        .records()
        .iter()
        .filter(|r| r.record.event == "read")
        .count();
    assert_eq!(reads_before, 2, "{}", g.console());
    g.resume().unwrap();
    let run = g.wait().expect("qemu exits");
    report(&run);

    assert!(run.clean_exit(), "{}", run.diagnostics());
    let s = run.summary().unwrap();
    assert!(s.ok(), "{}", run.diagnostics());
    assert_eq!(s.get("expected"), Some("match"));
    assert_eq!(s.get("sha256"), Some(img.sha256.as_str()));
    let reads: Vec<_> = run
        .records
        .iter()
        .filter(|r| r.record.event == "read")
        .map(|r| &r.record)
        .collect();
    assert_eq!(reads.len(), 3, "{}", run.diagnostics());
    for r in &reads {
        assert_eq!(r.get_u64("bytes"), Some(file_bytes as u64), "{r}");
        assert_eq!(r.get("match_expected"), Some("1"), "{r}");
        // Each read comes from the device: the first because the cache is cold, the others
        // because drop_caches emptied it.
        let kib = r.get_u64("dev_read_kib").unwrap();
        assert!(kib * 1024 >= file_bytes as u64 * 9 / 10, "{r}");
    }
}
