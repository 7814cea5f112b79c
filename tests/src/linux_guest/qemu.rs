//! One Linux guest in one QEMU process: command line, console, watchdog.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use guest_checker::cli::Mode;
use guest_checker::report::Record;

use super::{find_tool, GuestError, Kit};

/// A disk of the guest. Disks appear in the guest in the order they are added: `/dev/vda`,
/// `/dev/vdb`, ...
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disk {
    /// `vhost-user-blk-pci` served by a backend listening on a Unix socket.
    VhostUserBlk {
        /// The backend's socket.
        socket: PathBuf,
        /// `reconnect=N` on the chardev: QEMU reconnects every N seconds when the backend goes
        /// away, so a backend can restart under a running guest.
        reconnect_secs: Option<u32>,
        /// Virtqueues (`num-queues`); QEMU's default when `None` (one per vCPU).
        num_queues: Option<u16>,
    },
    /// `virtio-blk-pci` over a raw image file, served by QEMU itself.
    File {
        /// The image file.
        path: PathBuf,
        /// Attach read-only.
        read_only: bool,
    },
}

impl Disk {
    /// A vhost-user-blk disk on `socket`, without reconnect.
    pub fn vhost_user_blk(socket: impl Into<PathBuf>) -> Disk {
        Disk::VhostUserBlk {
            socket: socket.into(),
            reconnect_secs: None,
            num_queues: None,
        }
    }

    /// A writable virtio-blk disk over a raw image file.
    pub fn file(path: impl Into<PathBuf>) -> Disk {
        Disk::File {
            path: path.into(),
            read_only: false,
        }
    }

    /// With `reconnect=secs` on the vhost-user chardev (no effect on a file disk).
    pub fn reconnect(mut self, secs: u32) -> Disk {
        if let Disk::VhostUserBlk { reconnect_secs, .. } = &mut self {
            *reconnect_secs = Some(secs);
        }
        self
    }

    /// With `num-queues=n` on the vhost-user-blk device (no effect on a file disk).
    pub fn num_queues(mut self, n: u16) -> Disk {
        if let Disk::VhostUserBlk { num_queues, .. } = &mut self {
            *num_queues = Some(n);
        }
        self
    }

    /// Read-only (no effect on a vhost-user disk, whose backend decides).
    pub fn read_only(mut self) -> Disk {
        if let Disk::File { read_only, .. } = &mut self {
            *read_only = true;
        }
        self
    }

    fn qemu_args(&self, i: usize) -> Vec<String> {
        match self {
            Disk::VhostUserBlk {
                socket,
                reconnect_secs,
                num_queues,
            } => {
                let mut chardev = format!("socket,id=vu{i},path={}", escape(socket));
                if let Some(s) = reconnect_secs {
                    chardev.push_str(&format!(",reconnect={s}"));
                }
                let mut device = format!("vhost-user-blk-pci,chardev=vu{i}");
                if let Some(n) = num_queues {
                    device.push_str(&format!(",num-queues={n}"));
                }
                vec!["-chardev".into(), chardev, "-device".into(), device]
            }
            Disk::File { path, read_only } => {
                let mut drive = format!(
                    "file={},format=raw,if=none,id=disk{i},cache=writeback,discard=unmap",
                    escape(path)
                );
                if *read_only {
                    drive.push_str(",readonly=on");
                }
                vec![
                    "-drive".into(),
                    drive,
                    "-device".into(),
                    format!("virtio-blk-pci,drive=disk{i}"),
                ]
            }
        }
    }
}

/// QEMU option values separate fields with `,`; a literal comma is written twice.
fn escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Builds and starts one guest. Defaults: 128 MiB, one vCPU, the checker's `boot` mode, a
/// 300 s wall-clock budget, QEMU under `nice -n 10`.
#[derive(Debug, Clone)]
pub struct QemuGuest {
    kit: Kit,
    name: String,
    memory_mib: u64,
    disks: Vec<Disk>,
    mode: Mode,
    cmdline: Vec<String>,
    timeout: Duration,
    nice: Option<i32>,
    console_log: Option<PathBuf>,
    extra_args: Vec<String>,
}

impl QemuGuest {
    /// The QEMU binary (`qemu-system-x86_64`), or why it is missing.
    pub fn qemu_binary() -> Result<PathBuf, GuestError> {
        find_tool("qemu-system-x86_64")
    }

    /// A guest booting `kit`.
    pub fn new(kit: &Kit) -> QemuGuest {
        QemuGuest {
            kit: kit.clone(),
            name: "guest".into(),
            memory_mib: 128,
            disks: Vec::new(),
            mode: Mode::Boot,
            cmdline: Vec::new(),
            timeout: Duration::from_secs(300),
            nice: Some(10),
            console_log: None,
            extra_args: Vec::new(),
        }
    }

    /// A name for messages (and QEMU's `-name`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// Guest RAM in MiB (Debian's cloud kernel with this initramfs needs more than 64).
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Adds a disk (the first is `/dev/vda`).
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// What the guest checker does.
    pub fn checker(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds kernel command-line parameters.
    pub fn cmdline(mut self, params: &str) -> Self {
        self.cmdline.push(params.into());
        self
    }

    /// Wall-clock budget: QEMU is killed when it runs longer, and the run reports `timed_out`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Run QEMU under `nice -n N` (`None`: at this process's priority).
    pub fn nice(mut self, nice: Option<i32>) -> Self {
        self.nice = nice;
        self
    }

    /// Also write the console, as it arrives, to this file.
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.console_log = Some(path.into());
        self
    }

    /// Adds raw QEMU arguments.
    pub fn qemu_arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// The kernel command line.
    pub fn kernel_cmdline(&self) -> String {
        let mut p = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "panic=-1".into(),
            // Under software emulation on a loaded host the kernel's check that the timer
            // interrupt arrives through the IO-APIC can miss its ticks and panic ("IO-APIC +
            // timer doesn't work"; seen here at a load average of 12 on 2 cores). The check
            // proves nothing about our devices: skip it.
            "no_timer_check".into(),
        ];
        p.extend(self.mode.kernel_params());
        p.extend(self.cmdline.iter().cloned());
        p.join(" ")
    }

    /// QEMU's arguments (without the program).
    ///
    /// Guest RAM is a shared memfd (`memory-backend-memfd,share=on` + `-numa node,memdev=mem`):
    /// a vhost-user backend maps it to reach the guest's buffers.
    pub fn qemu_args(&self) -> Vec<String> {
        let mib = self.memory_mib;
        let mut a: Vec<String> = [
            "-name",
            &self.name,
            "-accel",
            "tcg",
            "-m",
            &format!("{mib}M"),
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
            &self.kit.kernel.display().to_string(),
            "-initrd",
            &self.kit.initrd.display().to_string(),
            "-append",
            &self.kernel_cmdline(),
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mib}M,share=on"),
            "-numa",
            "node,memdev=mem",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (i, d) in self.disks.iter().enumerate() {
            a.extend(d.qemu_args(i));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Starts QEMU. The watchdog kills it when the budget runs out, whatever the caller does.
    pub fn spawn(self) -> Result<RunningGuest, GuestError> {
        let qemu = Self::qemu_binary()?;
        let mut command = match self.nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.arg("-n").arg(n.to_string()).arg(&qemu);
                c
            }
            None => Command::new(&qemu),
        };
        let args = self.qemu_args();
        command
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut shown = vec![qemu.display().to_string()];
        shown.extend(args);

        let log = match &self.console_log {
            Some(p) => Some(
                std::fs::File::create(p)
                    .map_err(GuestError::io(format!("create {}", p.display())))?,
            ),
            None => None,
        };
        let started = Instant::now();
        let mut child = command
            .spawn()
            .map_err(GuestError::io(format!("spawn {}", qemu.display())))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");

        let console = Arc::new(Console::default());
        let reader = {
            let console = Arc::clone(&console);
            std::thread::spawn(move || console.read_from(stdout, started, log))
        };
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr_pipe.read_to_string(&mut s);
            s
        });
        let child = Arc::new(Mutex::new(child));
        let timed_out = Arc::new(AtomicBool::new(false));
        let (cancel, cancelled) = mpsc::channel::<()>();
        let deadline = started + self.timeout;
        let watchdog = {
            let child = Arc::clone(&child);
            let timed_out = Arc::clone(&timed_out);
            std::thread::spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) =
                    cancelled.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    timed_out.store(true, Ordering::SeqCst);
                    let mut c = child.lock().unwrap_or_else(|e| e.into_inner());
                    // Already exited (and reaped) is fine: std does not signal a reaped child.
                    let _ = c.kill();
                }
            })
        };
        Ok(RunningGuest {
            name: self.name,
            command: shown,
            child,
            stdin,
            console,
            started,
            deadline,
            timed_out,
            cancel: Some(cancel),
            threads: Some((reader, stderr, watchdog)),
        })
    }

    /// Starts QEMU and waits for it to exit (or for the budget to run out).
    pub fn run(self) -> Result<GuestRun, GuestError> {
        self.spawn()?.wait()
    }
}

/// A `GCMA-CHECK` record and when the host saw it (since QEMU started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleRecord {
    /// Host time since QEMU was started.
    pub at: Duration,
    /// The record.
    pub record: Record,
}

#[derive(Default)]
struct ConsoleState {
    text: String,
    records: Vec<ConsoleRecord>,
    closed: bool,
}

/// The serial console as it arrives, shared between the reader thread and the waiters.
#[derive(Default)]
struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConsoleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_from(&self, stdout: impl Read, started: Instant, mut log: Option<std::fs::File>) {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(f) = log.as_mut() {
                let _ = f.write_all(&buf);
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']);
            let mut st = self.lock();
            st.text.push_str(line);
            st.text.push('\n');
            if let Some(record) = Record::parse(line) {
                st.records.push(ConsoleRecord {
                    at: started.elapsed(),
                    record,
                });
            }
            drop(st);
            self.changed.notify_all();
        }
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// A guest that is running. Dropping it kills QEMU.
pub struct RunningGuest {
    name: String,
    command: Vec<String>,
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
    console: Arc<Console>,
    started: Instant,
    deadline: Instant,
    timed_out: Arc<AtomicBool>,
    cancel: Option<mpsc::Sender<()>>,
    threads: Option<(JoinHandle<()>, JoinHandle<String>, JoinHandle<()>)>,
}

impl RunningGuest {
    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Writes a line to the guest's console (its serial port's input).
    pub fn send_line(&mut self, line: &str) -> Result<(), GuestError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| GuestError::Exited("its console was written".into()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(GuestError::io(format!("write to {}'s console", self.name)))
    }

    /// Waits for the first record (since boot) that `pred` accepts, at most `timeout` and never
    /// past the guest's budget.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Record) -> bool,
    ) -> Result<ConsoleRecord, GuestError> {
        let until = (Instant::now() + timeout).min(self.deadline);
        let mut st = self.console.lock();
        loop {
            if let Some(r) = st.records.iter().find(|r| pred(&r.record)) {
                return Ok(r.clone());
            }
            if st.closed {
                return Err(GuestError::Exited(what.into()));
            }
            let now = Instant::now();
            if now >= until {
                return Err(GuestError::Timeout {
                    what: format!("{what} from {}", self.name),
                    after: timeout,
                });
            }
            st = self
                .console
                .changed
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for the first record of `event` (`start`, `summary`, ...).
    pub fn wait_for_event(
        &self,
        event: &str,
        timeout: Duration,
    ) -> Result<ConsoleRecord, GuestError> {
        self.wait_for(&format!("event={event}"), timeout, |r| r.event == event)
    }

    /// Waits until the checker pauses at `phase` (`event=waiting phase=N`).
    pub fn wait_for_pause(
        &self,
        phase: u32,
        timeout: Duration,
    ) -> Result<ConsoleRecord, GuestError> {
        let p = phase.to_string();
        self.wait_for(&format!("pause phase {phase}"), timeout, |r| {
            r.event == "waiting" && r.get("phase") == Some(p.as_str())
        })
    }

    /// Lets a paused checker go on.
    pub fn resume(&mut self) -> Result<(), GuestError> {
        self.send_line("go")
    }

    /// Records seen so far.
    pub fn records(&self) -> Vec<ConsoleRecord> {
        self.console.lock().records.clone()
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.lock().text.clone()
    }

    /// Kills QEMU now.
    pub fn kill(&mut self) {
        let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).kill();
    }

    /// Waits for QEMU to exit; when the budget runs out the watchdog kills it and the run says
    /// `timed_out`.
    pub fn wait(mut self) -> Result<GuestRun, GuestError> {
        let status = loop {
            let polled = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait()
                .map_err(GuestError::io(format!("wait for {}", self.name)))?;
            if let Some(s) = polled {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let wall = self.started.elapsed();
        self.stdin = None;
        self.cancel = None;
        let (reader, stderr, watchdog) = self.threads.take().expect("threads are joined once");
        let _ = reader.join();
        let stderr = stderr.join().unwrap_or_default();
        let _ = watchdog.join();
        let st = self.console.lock();
        Ok(GuestRun {
            name: self.name.clone(),
            command: self.command.clone(),
            status,
            timed_out: self.timed_out.load(Ordering::SeqCst),
            wall,
            records: st.records.clone(),
            console: st.text.clone(),
            stderr,
        })
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if self.threads.is_some() {
            let mut c = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a finished guest left.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// The guest's name.
    pub name: String,
    /// The command that ran (program and arguments).
    pub command: Vec<String>,
    /// QEMU's exit status (a signal when the watchdog killed it).
    pub status: ExitStatus,
    /// The wall-clock budget ran out and QEMU was killed.
    pub timed_out: bool,
    /// Wall time from start to exit.
    pub wall: Duration,
    /// The `GCMA-CHECK` records, in order.
    pub records: Vec<ConsoleRecord>,
    /// The whole console.
    pub console: String,
    /// QEMU's standard error.
    pub stderr: String,
}

impl GuestRun {
    /// The first record of `event`.
    pub fn event(&self, event: &str) -> Option<&Record> {
        self.records
            .iter()
            .map(|r| &r.record)
            .find(|r| r.event == event)
    }

    /// The checker's summary.
    pub fn summary(&self) -> Option<&Record> {
        self.event("summary")
    }

    /// Host time from QEMU's start to the checker's first line (boot to userspace).
    pub fn userspace_at(&self) -> Option<Duration> {
        self.records
            .iter()
            .find(|r| r.record.event == "start")
            .map(|r| r.at)
    }

    /// The checker's exit status, as /init reported it.
    pub fn checker_status(&self) -> Option<i64> {
        self.event("exit")?.get("status")?.parse().ok()
    }

    /// QEMU exited by itself with status 0 after the checker exited 0.
    pub fn clean_exit(&self) -> bool {
        !self.timed_out && self.status.success() && self.checker_status() == Some(0)
    }

    /// The last `n` lines of the console.
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A report for assertion messages: status, timing, QEMU's stderr and the console's tail.
    pub fn diagnostics(&self) -> String {
        format!(
            "guest {}: status {}, timed out {}, wall {:.1?}\ncommand: {}\nstderr: {}\nconsole tail:\n{}",
            self.name,
            self.status,
            self.timed_out,
            self.wall,
            self.command.join(" "),
            self.stderr.trim(),
            self.console_tail(40)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_checker::cli::SwapArgs;

    fn kit() -> Kit {
        Kit {
            kernel: "/k/vmlinuz".into(),
            vmlinux: "/k/vmlinux".into(),
            initrd: "/k/initrd.gz".into(),
            release: "r".into(),
        }
    }

    fn after<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn command_line_has_shared_memory_and_disks_in_order() {
        let g = QemuGuest::new(&kit())
            .memory_mib(80)
            .disk(
                Disk::vhost_user_blk("/run/a,b.sock")
                    .reconnect(1)
                    .num_queues(2),
            )
            .disk(Disk::file("/img/fs.img").read_only())
            .checker(Mode::Swap(SwapArgs {
                mib: 160,
                seed: 7,
                ..SwapArgs::default()
            }))
            .cmdline("loglevel=4");
        let a = g.qemu_args();
        assert_eq!(after(&a, "-m"), ["80M"]);
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert_eq!(
            after(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=80M,share=on"]
        );
        assert_eq!(after(&a, "-numa"), ["node,memdev=mem"]);
        assert_eq!(
            after(&a, "-chardev"),
            ["socket,id=vu0,path=/run/a,,b.sock,reconnect=1"]
        );
        assert_eq!(
            after(&a, "-device"),
            [
                "vhost-user-blk-pci,chardev=vu0,num-queues=2",
                "virtio-blk-pci,drive=disk1"
            ]
        );
        let drive = after(&a, "-drive");
        assert!(drive[0].starts_with("file=/img/fs.img,format=raw,if=none,id=disk1"));
        assert!(drive[0].ends_with(",readonly=on"));
        assert!(a.iter().any(|x| x == "-no-reboot"));
        let append = after(&a, "-append")[0];
        assert!(
            append.starts_with("console=ttyS0 quiet panic=-1 no_timer_check gcmatest.mode=swap")
        );
        assert!(append.contains("gcmatest.mib=160") && append.contains("gcmatest.seed=7"));
        assert!(append.ends_with(" loglevel=4"));
        // The guest parses back exactly what the host asked for.
        assert_eq!(
            guest_checker::cli::Cli::from_kernel_cmdline(append),
            Ok(Mode::Swap(SwapArgs {
                mib: 160,
                seed: 7,
                ..SwapArgs::default()
            }))
        );
    }

    #[test]
    fn disk_options_apply_only_where_they_mean_something() {
        assert_eq!(
            Disk::file("/f").reconnect(1).num_queues(4),
            Disk::file("/f")
        );
        assert_eq!(
            Disk::vhost_user_blk("/s").read_only(),
            Disk::vhost_user_blk("/s")
        );
    }
}
