//! `qemu-storage-daemon` exporting an image file as a vhost-user-blk device: the backend a QEMU
//! user would pick, and the baseline our swap disk is measured against.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use super::{find_tool, GuestError};

/// How the export is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QsdOptions {
    /// Accept writes.
    pub writable: bool,
    /// Honour DISCARD by punching holes in the file (`discard=unmap`).
    pub discard: bool,
    /// Virtqueues of the export (`num-queues`); must be at least the guest device's.
    pub num_queues: u16,
    /// Run under `nice -n N`.
    pub nice: Option<i32>,
}

impl Default for QsdOptions {
    fn default() -> Self {
        Self {
            writable: true,
            discard: true,
            num_queues: 1,
            nice: Some(10),
        }
    }
}

/// A running `qemu-storage-daemon`. Dropping it kills the daemon.
pub struct QsdExport {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl QsdExport {
    /// The daemon's binary, or why it is missing.
    pub fn binary() -> Result<PathBuf, GuestError> {
        find_tool("qemu-storage-daemon")
    }

    /// Exports `image` on `socket` with [`QsdOptions::default`].
    pub fn start(image: &Path, socket: &Path) -> Result<QsdExport, GuestError> {
        Self::start_with(image, socket, &QsdOptions::default())
    }

    /// Exports `image` on `socket` and waits until the socket accepts connections. The daemon's
    /// output goes to `<socket>.log`.
    pub fn start_with(
        image: &Path,
        socket: &Path,
        opts: &QsdOptions,
    ) -> Result<QsdExport, GuestError> {
        let bin = Self::binary()?;
        let esc = |p: &Path| p.display().to_string().replace(',', ",,");
        let blockdev = format!(
            "driver=file,node-name=file0,filename={}{}",
            esc(image),
            if opts.discard { ",discard=unmap" } else { "" }
        );
        let export = format!(
            "type=vhost-user-blk,id=export0,node-name=file0,addr.type=unix,addr.path={},writable={},num-queues={}",
            esc(socket),
            if opts.writable { "on" } else { "off" },
            opts.num_queues
        );
        let _ = std::fs::remove_file(socket);
        let log = PathBuf::from(format!("{}.log", socket.display()));
        let log_file = std::fs::File::create(&log)
            .map_err(GuestError::io(format!("create {}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(GuestError::io("clone a file handle"))?;
        let mut cmd = match opts.nice {
            Some(n) => {
                let mut c = Command::new("nice");
                c.arg("-n").arg(n.to_string()).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(["--blockdev", &blockdev, "--export", &export])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .map_err(GuestError::io(format!("spawn {}", bin.display())))?;
        let mut qsd = QsdExport {
            child: Some(child),
            socket: socket.to_path_buf(),
            log,
        };
        qsd.wait_for_socket(Duration::from_secs(10))?;
        Ok(qsd)
    }

    fn wait_for_socket(&mut self, limit: Duration) -> Result<(), GuestError> {
        let t = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(GuestError::Tool {
                        tool: "qemu-storage-daemon".into(),
                        detail: format!("exited ({status}): {}", self.log_text().trim()),
                    });
                }
            }
            if t.elapsed() > limit {
                return Err(GuestError::Timeout {
                    what: format!("qemu-storage-daemon's socket {}", self.socket.display()),
                    after: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The socket a guest's vhost-user-blk device connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the daemon printed.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill(&mut self) -> Result<ExitStatus, GuestError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| GuestError::Exited("qemu-storage-daemon was killed".into()))?;
        let _ = child.kill();
        child
            .wait()
            .map_err(GuestError::io("wait for qemu-storage-daemon"))
    }

    /// Stops the daemon with SIGTERM (SIGKILL after 5 s) and returns its exit status.
    pub fn stop(mut self) -> Result<ExitStatus, GuestError> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| GuestError::Exited("qemu-storage-daemon was stopped".into()))?;
        let _ = kill_process(Pid::from_child(&child), Signal::TERM);
        let t = Instant::now();
        loop {
            if let Some(s) = child
                .try_wait()
                .map_err(GuestError::io("wait for qemu-storage-daemon"))?
            {
                return Ok(s);
            }
            if t.elapsed() > Duration::from_secs(5) {
                let _ = child.kill();
                return child
                    .wait()
                    .map_err(GuestError::io("wait for qemu-storage-daemon"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for QsdExport {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
