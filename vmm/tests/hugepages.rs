//! `--hugepages`: guest RAM and the gcma pool on 2 MiB pages, and the clear errors when the host
//! cannot back them. Needs the host set up as `ci/setup.sh` does (hugetlb pages reserved, shmem
//! THP at `advise`); without it these print `SKIPPED` (and fail under `CI=true`).

mod support;

use std::process::Command;

use gcma_host::huge::{self, HugePages};

fn vmm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn have(test: &str, backing: HugePages, bytes: u64) -> bool {
    match huge::available(backing, bytes) {
        Ok(()) => true,
        Err(why) => {
            e2e_tests::skip(test, why);
            false
        }
    }
}

#[test]
fn gcma_grant_on_hugetlb_pool_and_ram() {
    let test = "hugetlb gcma run";
    if support::hypervisor_or_skip(test).is_none() || !have(test, HugePages::Hugetlb, 96 << 20) {
        return;
    }
    for kind in ["hugetlb", "thp", "off"] {
        if kind == "thp" && !have("thp gcma run", HugePages::Thp, 0) {
            continue;
        }
        // 700 pages: a 2 MiB-aligned grant of two huge pages on hugetlb (the guest is told 700).
        let (code, out, err) = vmm(&[
            "run",
            "--payload",
            "gcma",
            "--arg",
            "700",
            "--mem-mib",
            "32",
            "--gcma-pool-mib",
            "64",
            "--grant-window-mib",
            "16",
            "--hugepages",
            kind,
        ]);
        assert_eq!(code, 0, "--hugepages {kind}: {out}{err}");
        assert!(
            out.contains("gcma: granted 700 pages at 0x") && out.contains("gcma: freed"),
            "--hugepages {kind}: {out}"
        );
    }
}

#[test]
fn balloon_on_hugetlb_ram() {
    let test = "hugetlb balloon run";
    if support::hypervisor_or_skip(test).is_none() || !have(test, HugePages::Hugetlb, 32 << 20) {
        return;
    }
    let (code, out, err) = vmm(&[
        "run",
        "--payload",
        "balloon",
        "--balloon-pages",
        "1536",
        "--mem-mib",
        "32",
        "--hugepages",
        "hugetlb",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("balloon: inflated 1536 pages"), "{out}");
}

#[test]
fn sizes_that_are_not_whole_huge_pages_are_refused_clearly() {
    if support::hypervisor_or_skip("hugetlb sizes").is_none() {
        return;
    }
    let (code, _, err) = vmm(&[
        "run",
        "--payload",
        "hello",
        "--mem-mib",
        "9",
        "--hugepages",
        "hugetlb",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a multiple of 2 MiB"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let (code, _, err) = vmm(&[
        "run",
        "--payload",
        "gcma",
        "--gcma-pool-mib",
        "3",
        "--hugepages",
        "hugetlb",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("multiple of 512 pages"), "{err}");
}

#[test]
fn too_few_hugetlb_pages_name_the_knob() {
    if support::hypervisor_or_skip("hugetlb shortage").is_none() {
        return;
    }
    // 64 GiB of hugetlb pool: more than any test host reserves.
    let (code, _, err) = vmm(&[
        "run",
        "--payload",
        "gcma",
        "--gcma-pool-mib",
        "65536",
        "--hugepages",
        "hugetlb",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("/proc/sys/vm/nr_hugepages") && err.contains("HugePages_Free"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
