//! Parsers for the kernel's text files the checker reads. Pure functions over the text, so they
//! are tested on the host; the checker passes them what it read.

/// A counter from `/proc/vmstat` (`pswpout 123` lines).
pub fn vmstat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A figure in KiB from `/proc/meminfo` (`MemTotal:   81234 kB` lines).
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// Milliseconds since boot from `/proc/uptime` (`12.34 5.67`).
pub fn uptime_ms(text: &str) -> Option<u64> {
    let secs = text.split_whitespace().next()?;
    let (whole, frac) = secs.split_once('.').unwrap_or((secs, "0"));
    let frac_ms: u64 = format!("{frac:0<3}")[..3].parse().ok()?;
    Some(whole.parse::<u64>().ok()? * 1000 + frac_ms)
}

/// Sectors (512 bytes) read and written, from `/sys/block/<dev>/stat`.
pub fn block_sectors(text: &str) -> Option<(u64, u64)> {
    let f: Vec<&str> = text.split_whitespace().collect();
    Some((f.get(2)?.parse().ok()?, f.get(6)?.parse().ok()?))
}

/// The `/sys/block` name of a device node path (`/dev/vda` → `vda`).
pub fn block_name(dev: &std::path::Path) -> Option<String> {
    Some(dev.file_name()?.to_str()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_files() {
        let vm = "nr_free_pages 100\npswpin 7\npswpout 12345\npswpout_x 1\n";
        assert_eq!(vmstat(vm, "pswpout"), Some(12345));
        assert_eq!(vmstat(vm, "pswpin"), Some(7));
        assert_eq!(vmstat(vm, "pgfault"), None);

        let mi = "MemTotal:          73452 kB\nMemFree:           50000 kB\nSwapTotal:             0 kB\n";
        assert_eq!(meminfo_kib(mi, "MemTotal"), Some(73452));
        assert_eq!(meminfo_kib(mi, "SwapTotal"), Some(0));
        assert_eq!(meminfo_kib(mi, "Mem"), None);

        assert_eq!(uptime_ms("3.07 2.50\n"), Some(3070));
        assert_eq!(uptime_ms("12.5 1.0"), Some(12500));
        assert_eq!(uptime_ms("9 1"), Some(9000));
        assert_eq!(uptime_ms("x"), None);

        let st = "     120        0     9000      10        4        0       32        1        0       20       11";
        assert_eq!(block_sectors(st), Some((9000, 32)));
        assert_eq!(block_sectors("1 2"), None);
        assert_eq!(
            block_name(std::path::Path::new("/dev/vdb")).as_deref(),
            Some("vdb")
        );
    }
}
