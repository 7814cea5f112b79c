//! Page-cache reads of one file (`guest-checker cache`).

use std::io::{BufRead, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use guest_checker::cli::CacheArgs;
use guest_checker::report::Record;
use sha2::{Digest, Sha256};

use crate::sys::{self, emit, ms, DiskInfo, Error};

const MOUNT_POINT: &str = "/mnt/gcmatest";

fn sha256_file(path: &Path) -> Result<(String, u64), Error> {
    let mut f = std::fs::File::open(path).map_err(Error::io(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(Error::io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, total))
}

/// Waits for the host's line on the console.
fn pause(phase: u32, read: u32) -> Result<(), Error> {
    emit(
        &Record::new("waiting")
            .field("phase", phase)
            .field("before_read", read),
    );
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(Error::io("read the console"))?;
    if n == 0 {
        return Err(Error::Io {
            what: "read the console".into(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        });
    }
    emit(&Record::new("resumed").field("phase", phase));
    Ok(())
}

pub fn run(args: &CacheArgs) -> Result<Record, Error> {
    sys::wait_for(&args.disk, Duration::from_secs(10))?;
    let disk = DiskInfo::of(&args.disk)?;
    std::fs::create_dir_all(MOUNT_POINT).map_err(Error::io(format!("mkdir {MOUNT_POINT}")))?;
    let dev = args.disk.to_string_lossy().into_owned();
    sys::run(
        "mount",
        &["-t", &args.fstype, "-o", "ro", &dev, MOUNT_POINT],
    )?;
    let path = Path::new(MOUNT_POINT).join(&args.file);

    let mut first: Option<String> = None;
    let mut all_match = true;
    let mut expected_match = true;
    let mut bytes = 0;
    let result = (|| {
        for read in 1..=args.total_reads() {
            if let Some(phase) = args.pause_phase(read) {
                pause(phase, read)?;
            }
            if read > 1 {
                sys::drop_caches()?;
            }
            let (sectors0, _) = disk.sectors()?;
            let t = Instant::now();
            let (sum, n) = sha256_file(&path)?;
            let took = t.elapsed();
            let (sectors1, _) = disk.sectors()?;
            bytes = n;
            let same = first.get_or_insert_with(|| sum.clone()) == &sum;
            all_match &= same;
            let exp = match &args.sha256 {
                Some(want) => {
                    expected_match &= *want == sum;
                    u8::from(*want == sum).to_string()
                }
                None => "-".to_string(),
            };
            emit(
                &Record::new("read")
                    .field("read", read)
                    .field("bytes", n)
                    .field("ms", ms(took))
                    .field("dev_read_kib", (sectors1 - sectors0) / 2)
                    .field("sha256", &sum)
                    .field("match_first", u8::from(same))
                    .field("match_expected", exp),
            );
        }
        Ok::<(), Error>(())
    })();
    let umount = sys::run("umount", &[MOUNT_POINT]);
    result?;
    umount?;

    let expected = match &args.sha256 {
        None => "none",
        Some(_) if expected_match => "match",
        Some(_) => "mismatch",
    };
    Ok(Record::new("summary")
        .field("reads", args.total_reads())
        .field("bytes", bytes)
        .field("sha256", first.unwrap_or_default())
        .field("all_match", u8::from(all_match))
        .field("expected", expected)
        .field("ok", u8::from(all_match && expected_match)))
}
